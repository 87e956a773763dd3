//! Question keys: two questions that differ only in white space, letter case or
//! full-width versus half-width forms are the same question for the cache and for the
//! canned answers.

use sha2::{Digest, Sha256};
use unicode_normalization::UnicodeNormalization;

/// NFKC, then lower case, then runs of white space folded to one space (and trimmed).
pub fn normalize(question: &str) -> String {
    if question.is_ascii() {
        // ASCII is its own NFKC form: skip the Unicode tables.
        return fold_white_space(&question.to_ascii_lowercase());
    }
    let lowered: String = question.nfkc().flat_map(char::to_lowercase).collect();
    fold_white_space(&lowered)
}

fn fold_white_space(lowered: &str) -> String {
    let mut out = String::with_capacity(lowered.len());
    for word in lowered.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// The Redis key of a normalized question: a fixed-length digest, so that long
/// questions make short keys.
pub fn cache_key(prefix: &str, normalized: &str) -> String {
    let digest = Sha256::digest(normalized.as_bytes());
    let mut key = String::with_capacity(prefix.len() + 64);
    key.push_str(prefix);
    for byte in digest {
        key.push(char::from(HEX[usize::from(byte >> 4)]));
        key.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    key
}

const HEX: &[u8; 16] = b"0123456789abcdef";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_width_punctuation_matches_half_width() {
        assert_eq!(normalize("如何退货？"), normalize("如何退货?"));
    }

    #[test]
    fn case_and_white_space_are_folded() {
        assert_eq!(
            normalize("  Where IS\t\u{3000}my   ORDER "),
            "where is my order"
        );
    }

    #[test]
    fn full_width_latin_letters_fold_to_ascii() {
        assert_eq!(normalize("ＡＢＣ"), "abc");
    }

    #[test]
    fn ascii_fast_path_agrees_with_the_unicode_path() {
        for q in ["Where IS my Order?", " a\tb\n\u{b}c ", "ABC xyz 123 !?"] {
            let slow: String = q.nfkc().flat_map(char::to_lowercase).collect();
            assert_eq!(normalize(q), fold_white_space(&slow), "{q:?}");
        }
    }

    #[test]
    fn cache_key_is_stable_and_prefixed() {
        let k = cache_key("qa:v1:", "abc");
        assert_eq!(
            k,
            "qa:v1:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
