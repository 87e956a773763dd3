//! The curated FAQ ("canned answers"): the operators' file of entries, each a question,
//! an answer and aliases in the default language, optionally with tables in other
//! languages; its validation; the per-language matchers; and the reloadable store the
//! pipeline asks.
//!
//! ```toml
//! allow_empty = false            # optional: a file with no entries is refused unless true
//!
//! [[answers]]
//! question = "如何退货?"
//! answer = "请在订单页面点击退货按钮,填写退货原因即可。"
//! aliases = ["怎么退货", "退货流程"]
//!
//! [answers.en]                   # optional, any ISO 639-1 code
//! question = "How do I return an item?"
//! answer = "Open the order page, click Return and give a reason."
//! aliases = ["return an item"]
//! ```
//!
//! A question is matched in its own language ([`lang::detect`]) against each entry's
//! phrasings in that language (the default language's where an entry has none), and
//! answered in that language when the entry has it.

pub mod analyze;
pub mod eval;
pub mod lang;
pub mod lexicon;
pub mod matcher;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, RwLock};

use analyze::analyzer;
use lang::LangCode;
use matcher::{Matcher, Phrasing};

/// One entry in one language.
#[derive(Debug, Clone)]
pub struct Variant {
    pub question: Arc<str>,
    pub answer: Arc<str>,
    pub aliases: Vec<String>,
}

/// One entry: its variants by language; the default language's is always there.
#[derive(Debug, Clone)]
pub struct Entry {
    pub variants: BTreeMap<LangCode, Variant>,
}

/// A parsed, validated FAQ with its matchers.
pub struct Faq {
    entries: Vec<Entry>,
    default_language: LangCode,
    /// Built on first use or by [`Faq::warm`]: building needs the analyzer, whose
    /// dictionary takes a few hundred milliseconds to load, off the start-up path.
    matchers: OnceLock<HashMap<LangCode, Matcher>>,
}

/// One entry's score for a question, with what it would answer.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Position of the entry in the file, from 0.
    pub entry: usize,
    /// In `[0, 1]`: 1 for the entry's question or an alias, once normalized.
    pub score: f64,
    /// The language of the answer (the question's, when the entry has it).
    pub language: LangCode,
    /// The entry's question in that language.
    pub question: Arc<str>,
    pub answer: Arc<str>,
}

impl Faq {
    /// Parses and validates a canned file's text. Errors name the entry (its position
    /// from 1 and its question) and what is wrong with it.
    pub fn parse(text: &str, default_language: LangCode) -> Result<Faq, String> {
        let table: toml::Table = text.parse().map_err(|e| format!("not valid TOML: {e}"))?;
        let mut allow_empty = false;
        let mut raw_entries: Vec<toml::Value> = Vec::new();
        for (key, value) in table {
            match (key.as_str(), value) {
                ("allow_empty", toml::Value::Boolean(b)) => allow_empty = b,
                ("allow_empty", _) => return Err("`allow_empty` must be true or false".into()),
                ("answers", toml::Value::Array(a)) => raw_entries = a,
                ("answers", _) => {
                    return Err("`answers` must be an array of tables ([[answers]])".into());
                }
                (other, _) => {
                    return Err(format!(
                        "unknown key `{other}` at the top of the file (expected `answers` or `allow_empty`)"
                    ));
                }
            }
        }
        if raw_entries.is_empty() && !allow_empty {
            return Err(
                "the file has no entries; if an empty FAQ is meant, put `allow_empty = true` at the top of the file"
                    .into(),
            );
        }
        let mut entries = Vec::with_capacity(raw_entries.len());
        for (i, value) in raw_entries.into_iter().enumerate() {
            entries.push(parse_entry(i, value, default_language)?);
        }
        check_duplicates(&entries, default_language)?;
        Ok(Faq::index(entries, default_language))
    }

    /// Reads and parses a file; errors name the file.
    pub fn load(path: &Path, default_language: LangCode) -> Result<Faq, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read canned answers {}: {e}", path.display()))?;
        Faq::parse(&text, default_language)
            .map_err(|e| format!("canned answers {}: {e}", path.display()))
    }

    /// A FAQ of validated entries; its matchers are built on first use.
    pub fn index(entries: Vec<Entry>, default_language: LangCode) -> Faq {
        Faq {
            entries,
            default_language,
            matchers: OnceLock::new(),
        }
    }

    /// Builds the matchers now (loading the analyzer if need be), so that the first
    /// question does not wait for them.
    pub fn warm(&self) {
        self.matchers();
    }

    /// The matchers: one per language the file uses (and the default language).
    fn matchers(&self) -> &HashMap<LangCode, Matcher> {
        self.matchers.get_or_init(|| self.build_matchers())
    }

    fn build_matchers(&self) -> HashMap<LangCode, Matcher> {
        let a = analyzer();
        let (entries, default_language) = (&self.entries, self.default_language);
        let mut languages: Vec<LangCode> = vec![default_language];
        for e in entries {
            for l in e.variants.keys() {
                if !languages.contains(l) {
                    languages.push(l);
                }
            }
        }
        languages
            .into_iter()
            .map(|lang| {
                let phrasings = entries.iter().enumerate().flat_map(|(i, e)| {
                    let v = e
                        .variants
                        .get(lang)
                        .or_else(|| e.variants.get(default_language));
                    v.into_iter().flat_map(move |v| {
                        std::iter::once(&*v.question)
                            .chain(v.aliases.iter().map(String::as_str))
                            .map(move |text| Phrasing { entry: i, text })
                    })
                });
                (lang, Matcher::build(a, phrasings))
            })
            .collect()
    }

    /// Entries in the file.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the file has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries, in file order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The question's language, or the default language when its text has none.
    pub fn language_of(&self, question: &str) -> LangCode {
        lang::detect(question).unwrap_or(self.default_language)
    }

    /// Every entry sharing a word with the question (or equal to it), best first.
    pub fn rank(&self, question: &str) -> Vec<Candidate> {
        let language = self.language_of(question);
        let Some(m) = self.matcher(language) else {
            return Vec::new();
        };
        m.rank(analyzer(), question)
            .into_iter()
            .filter_map(|s| self.candidate(s.entry, s.score, language))
            .collect()
    }

    /// The best entry for the question, whatever its score.
    pub fn best(&self, question: &str) -> Option<Candidate> {
        let language = self.language_of(question);
        let s = self.matcher(language)?.best(analyzer(), question)?;
        self.candidate(s.entry, s.score, language)
    }

    fn matcher(&self, language: LangCode) -> Option<&Matcher> {
        let matchers = self.matchers();
        matchers
            .get(language)
            .or_else(|| matchers.get(self.default_language))
    }

    fn candidate(&self, entry: usize, score: f64, language: LangCode) -> Option<Candidate> {
        let e = self.entries.get(entry)?;
        let (language, v) = match e.variants.get(language) {
            Some(v) => (language, v),
            None => (
                self.default_language,
                e.variants.get(self.default_language)?,
            ),
        };
        Some(Candidate {
            entry,
            score: score.clamp(0.0, 1.0),
            language,
            question: v.question.clone(),
            answer: v.answer.clone(),
        })
    }
}

fn entry_name(i: usize, question: Option<&str>) -> String {
    match question {
        Some(q) => format!("entry {} ({q:?})", i + 1),
        None => format!("entry {}", i + 1),
    }
}

fn parse_entry(i: usize, value: toml::Value, default_language: LangCode) -> Result<Entry, String> {
    let toml::Value::Table(table) = value else {
        return Err(format!("{} is not a table", entry_name(i, None)));
    };
    let top_question = table
        .get("question")
        .and_then(|v| v.as_str())
        .map(str::to_string);
    let name = entry_name(i, top_question.as_deref());
    let mut top = toml::Table::new();
    let mut variants = BTreeMap::new();
    for (key, value) in table {
        match key.as_str() {
            "question" | "answer" | "aliases" => {
                top.insert(key, value);
            }
            code => {
                let Some(lang) = lang::iso_639_1(code) else {
                    return Err(format!(
                        "{name}: unknown key or language code `{code}` (language tables are named by ISO 639-1 codes such as `en`)"
                    ));
                };
                if lang == default_language {
                    return Err(format!(
                        "{name}: table `{code}` repeats the default language, which is the entry's top level"
                    ));
                }
                let toml::Value::Table(t) = value else {
                    return Err(format!(
                        "{name}: `{code}` must be a table ([answers.{code}])"
                    ));
                };
                variants.insert(
                    lang,
                    parse_variant(&format!("{name}, language `{code}`"), t)?,
                );
            }
        }
    }
    variants.insert(default_language, parse_variant(&name, top)?);
    Ok(Entry { variants })
}

fn parse_variant(name: &str, t: toml::Table) -> Result<Variant, String> {
    let mut question = None;
    let mut answer = None;
    let mut aliases = Vec::new();
    for (key, value) in t {
        match (key.as_str(), value) {
            ("question", toml::Value::String(s)) => question = Some(s),
            ("answer", toml::Value::String(s)) => answer = Some(s),
            ("aliases", toml::Value::Array(a)) => {
                for v in a {
                    match v {
                        toml::Value::String(s) if !s.trim().is_empty() => aliases.push(s),
                        _ => return Err(format!("{name}: every alias must be a non-empty string")),
                    }
                }
            }
            ("question" | "answer", _) => return Err(format!("{name}: `{key}` must be a string")),
            ("aliases", _) => return Err(format!("{name}: `aliases` must be an array of strings")),
            (other, _) => return Err(format!("{name}: unknown key `{other}`")),
        }
    }
    let question = question
        .filter(|q| !q.trim().is_empty())
        .ok_or_else(|| format!("{name}: empty or missing question"))?;
    let answer = answer
        .filter(|a| !a.trim().is_empty())
        .ok_or_else(|| format!("{name}: empty or missing answer"))?;
    Ok(Variant {
        question: Arc::from(question.trim()),
        answer: Arc::from(answer.trim()),
        aliases,
    })
}

/// A question or alias may belong to one entry only (per language, once normalized):
/// otherwise which entry answers it would depend on the order of the file.
fn check_duplicates(entries: &[Entry], default_language: LangCode) -> Result<(), String> {
    let mut seen: HashMap<(LangCode, String), usize> = HashMap::new();
    let name = |i: usize| {
        entry_name(
            i,
            entries[i]
                .variants
                .get(default_language)
                .map(|v| &*v.question),
        )
    };
    for (i, e) in entries.iter().enumerate() {
        for (lang, v) in &e.variants {
            for text in std::iter::once(&*v.question).chain(v.aliases.iter().map(String::as_str)) {
                let key = analyze::exact_key(text);
                if key.is_empty() {
                    continue;
                }
                match seen.get(&(*lang, key.clone())) {
                    Some(j) if *j != i => {
                        return Err(format!(
                            "{}: {text:?} ({lang}) is already a question or alias of {}",
                            name(i),
                            name(*j)
                        ));
                    }
                    Some(_) => {}
                    None => {
                        seen.insert((*lang, key), i);
                    }
                }
            }
        }
    }
    Ok(())
}

/// What matching settles for one question.
#[derive(Debug, Clone)]
pub struct Lookup {
    /// The question's language.
    pub language: LangCode,
    /// The best entry, whatever its score.
    pub best: Option<Candidate>,
    /// Whether `best` is at or above `canned.min_score`.
    pub matched: bool,
}

impl Lookup {
    /// The matched entry, if any.
    pub fn matched(&self) -> Option<&Candidate> {
        self.best.as_ref().filter(|_| self.matched)
    }
}

/// How the store matches and what it answers with nothing matched.
#[derive(Debug, Clone)]
pub struct Settings {
    pub min_score: f64,
    pub answer_first_score: Option<f64>,
    pub default_language: LangCode,
    /// Default reply by language.
    pub default_reply: BTreeMap<String, Arc<str>>,
}

/// The FAQ the pipeline asks: reloadable at run time; a file that does not parse or
/// validate leaves the entries in place.
pub struct CannedAnswers {
    path: PathBuf,
    pub settings: Settings,
    faq: RwLock<Arc<Faq>>,
}

impl CannedAnswers {
    /// Reads the file; an unreadable or invalid file is an error naming it.
    pub fn load(path: &Path, settings: Settings) -> Result<CannedAnswers, String> {
        let faq = Faq::load(path, settings.default_language)?;
        Ok(CannedAnswers {
            path: path.to_path_buf(),
            settings,
            faq: RwLock::new(Arc::new(faq)),
        })
    }

    /// The FAQ in place.
    pub fn faq(&self) -> Arc<Faq> {
        match self.faq.read() {
            Ok(f) => f.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Matches a question.
    pub fn lookup(&self, question: &str) -> Lookup {
        let faq = self.faq();
        let best = faq.best(question);
        let matched = best
            .as_ref()
            .is_some_and(|b| b.score >= self.settings.min_score);
        Lookup {
            language: faq.language_of(question),
            best,
            matched,
        }
    }

    /// Whether a match is sure enough to be answered before the models.
    pub fn answer_first(&self, candidate: &Candidate) -> bool {
        self.settings
            .answer_first_score
            .is_some_and(|s| candidate.score >= s)
    }

    /// The default reply in `language`, else in the default language.
    pub fn default_reply(&self, language: &str) -> Arc<str> {
        self.settings
            .default_reply
            .get(language)
            .or_else(|| {
                self.settings
                    .default_reply
                    .get(self.settings.default_language)
            })
            .cloned()
            .unwrap_or_else(|| Arc::from(crate::pipeline::DEFAULT_REPLY))
    }

    /// Re-reads the file. On error the entries in place stay; on success returns the
    /// number of entries.
    pub fn reload(&self) -> Result<usize, String> {
        let faq = Faq::load(&self.path, self.settings.default_language)?;
        faq.warm();
        let n = faq.len();
        match self.faq.write() {
            Ok(mut f) => *f = Arc::new(faq),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(faq),
        }
        Ok(n)
    }

    /// Entries in the file last loaded.
    pub fn entries(&self) -> usize {
        self.faq().len()
    }
}

/// The `result` label of `qa_canned_matches_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchResult {
    /// The best entry scored at or above `canned.min_score`.
    Matched,
    /// Some entry shared words with the question, none scored enough.
    BelowThreshold,
    /// No entry shared a word with the question.
    None,
}

impl MatchResult {
    pub const ALL: [MatchResult; 3] = [
        MatchResult::Matched,
        MatchResult::BelowThreshold,
        MatchResult::None,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MatchResult::Matched => "matched",
            MatchResult::BelowThreshold => "below_threshold",
            MatchResult::None => "none",
        }
    }
}

impl Lookup {
    /// What this lookup counts as in `qa_canned_matches_total`.
    pub fn result(&self) -> MatchResult {
        match (&self.best, self.matched) {
            (Some(_), true) => MatchResult::Matched,
            (Some(_), false) => MatchResult::BelowThreshold,
            (None, _) => MatchResult::None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Faq, String> {
        Faq::parse(text, lang::ZH)
    }

    #[test]
    fn the_shipped_file_loads_with_english_for_every_entry() {
        let faq = Faq::load(Path::new("config/canned_answers.toml"), lang::ZH);
        let faq = match faq {
            Ok(f) => f,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(faq.len(), 16);
        for e in faq.entries() {
            let en = e.variants.get(lang::EN);
            assert!(en.is_some_and(|v| !v.aliases.is_empty()), "{e:?}");
        }
    }

    #[test]
    fn a_question_repeated_in_another_entry_is_refused() {
        let err = parse(
            "[[answers]]\nquestion = \"a?\"\nanswer = \"x\"\n[[answers]]\nquestion = \"b\"\nanswer = \"y\"\naliases = [\"A\"]\n",
        )
        .err()
        .unwrap_or_default();
        assert!(err.contains("entry 2") && err.contains("entry 1"), "{err}");
    }

    #[test]
    fn the_same_alias_twice_in_one_entry_is_fine() {
        assert!(
            parse("[[answers]]\nquestion = \"a?\"\nanswer = \"x\"\naliases = [\"a\", \"a!\"]\n")
                .is_ok()
        );
    }

    #[test]
    fn a_table_for_the_default_language_is_refused() {
        let err = parse("[[answers]]\nquestion = \"a\"\nanswer = \"x\"\n[answers.zh]\nquestion = \"b\"\nanswer = \"y\"\n")
            .err()
            .unwrap_or_default();
        assert!(err.contains("default language"), "{err}");
    }

    #[test]
    fn an_unknown_key_in_an_entry_is_refused_by_name() {
        let err = parse("[[answers]]\nquestion = \"a\"\nanswer = \"x\"\nalias = [\"b\"]\n")
            .err()
            .unwrap_or_default();
        assert!(err.contains("`alias`") && err.contains("entry 1"), "{err}");
    }

    #[test]
    fn an_empty_file_needs_allow_empty() {
        assert!(parse("").is_err());
        assert!(parse("allow_empty = true").is_ok_and(|f| f.is_empty()));
    }
}
