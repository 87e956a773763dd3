//! The language of a question, from its script: any Han character makes it Chinese
//! (customers mix English words into Chinese sentences, `这个订单怎么cancel掉`, never the
//! other way round), else Latin letters make it English. On the labelled questions
//! (`faq-eval` reports it) the check agrees with every label, so a statistical detector
//! such as `whatlang` could not do better there; it would cost a dependency and
//! microseconds, and short questions are where trigram models are least sure.

/// A language code: ISO 639-1, lower case (`zh`, `en`).
pub type LangCode = &'static str;

/// Chinese.
pub const ZH: LangCode = "zh";
/// English.
pub const EN: LangCode = "en";

/// Whether `c` is a Han (CJK ideograph) character, the basic block and extension A plus
/// the compatibility ideographs.
pub fn is_han(c: char) -> bool {
    matches!(c, '\u{4E00}'..='\u{9FFF}' | '\u{3400}'..='\u{4DBF}' | '\u{F900}'..='\u{FAFF}')
}

/// The language of `text`: `Some("zh")` when it holds a Han character, else `Some("en")`
/// when it holds a Latin letter, else `None` (digits, punctuation, emoji: no language).
pub fn detect(text: &str) -> Option<LangCode> {
    let mut latin = false;
    for c in text.chars() {
        if is_han(c) {
            return Some(ZH);
        }
        if c.is_ascii_alphabetic() || matches!(c, '\u{C0}'..='\u{24F}' | '\u{FF21}'..='\u{FF5A}') {
            latin = true;
        }
    }
    latin.then_some(EN)
}

/// ISO 639-1 codes, the names a language table of the canned file may take.
pub const ISO_639_1: &[&str] = &[
    "aa", "ab", "ae", "af", "ak", "am", "an", "ar", "as", "av", "ay", "az", "ba", "be", "bg", "bh",
    "bi", "bm", "bn", "bo", "br", "bs", "ca", "ce", "ch", "co", "cr", "cs", "cu", "cv", "cy", "da",
    "de", "dv", "dz", "ee", "el", "en", "eo", "es", "et", "eu", "fa", "ff", "fi", "fj", "fo", "fr",
    "fy", "ga", "gd", "gl", "gn", "gu", "gv", "ha", "he", "hi", "ho", "hr", "ht", "hu", "hy", "hz",
    "ia", "id", "ie", "ig", "ii", "ik", "io", "is", "it", "iu", "ja", "jv", "ka", "kg", "ki", "kj",
    "kk", "kl", "km", "kn", "ko", "kr", "ks", "ku", "kv", "kw", "ky", "la", "lb", "lg", "li", "ln",
    "lo", "lt", "lu", "lv", "mg", "mh", "mi", "mk", "ml", "mn", "mr", "ms", "mt", "my", "na", "nb",
    "nd", "ne", "ng", "nl", "nn", "no", "nr", "nv", "ny", "oc", "oj", "om", "or", "os", "pa", "pi",
    "pl", "ps", "pt", "qu", "rm", "rn", "ro", "ru", "rw", "sa", "sc", "sd", "se", "sg", "si", "sk",
    "sl", "sm", "sn", "so", "sq", "sr", "ss", "st", "su", "sv", "sw", "ta", "te", "tg", "th", "ti",
    "tk", "tl", "tn", "to", "tr", "ts", "tt", "tw", "ty", "ug", "uk", "ur", "uz", "ve", "vi", "vo",
    "wa", "wo", "xh", "yi", "yo", "za", "zh", "zu",
];

/// The code as a `'static` string when it is an ISO 639-1 code.
pub fn iso_639_1(code: &str) -> Option<LangCode> {
    ISO_639_1.iter().copied().find(|c| *c == code)
}

/// An English name of the language, for prompts (`"English"`), or the code itself.
pub fn english_name(code: &str) -> &str {
    match code {
        "zh" => "Chinese",
        "en" => "English",
        "fr" => "French",
        "de" => "German",
        "es" => "Spanish",
        "ja" => "Japanese",
        "ko" => "Korean",
        "ru" => "Russian",
        "pt" => "Portuguese",
        "it" => "Italian",
        _ => code,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn any_han_character_makes_a_question_chinese() {
        assert_eq!(detect("这个订单怎么cancel掉"), Some(ZH));
        assert_eq!(detect("退貨要怎麼申請?"), Some(ZH));
    }

    #[test]
    fn latin_letters_without_han_are_english() {
        assert_eq!(detect("where is my order 2026112900791?"), Some(EN));
    }

    #[test]
    fn digits_and_punctuation_have_no_language() {
        assert_eq!(detect("123456 ?!"), None);
    }

    #[test]
    fn only_iso_codes_are_known() {
        assert_eq!(iso_639_1("en"), Some("en"));
        assert_eq!(iso_639_1("english"), None);
        assert_eq!(iso_639_1("xx"), None);
    }
}
