//! Text analysis: a question (or an FAQ phrasing) becomes the set of terms the matcher
//! scores. The linguistics are libraries': Unicode NFKC (`unicode-normalization`, via
//! [`normalize`]), traditional to simplified Chinese (`fast2s`, character tables with
//! context rules), Chinese word segmentation (`jieba-rs`, its default dictionary plus
//! the lexicon's words) and English stemming (`rust-stemmers`, Snowball English). The
//! shop's vocabulary ([`lexicon`](super::lexicon)) then maps words to concepts, drops
//! padding, and marks foreign topics with a leading `!`.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use jieba_rs::Jieba;
use rust_stemmers::{Algorithm, Stemmer};

use super::lang::is_han;
use super::lexicon::{CONCEPTS, EN_PHRASES, FOREIGN, STOP_EN, STOP_ZH};
use crate::pipeline::normalize::normalize;

/// The shared analyzer, built on first use (loading jieba's dictionary takes a few
/// hundred milliseconds; the service builds it at start, before serving).
pub fn analyzer() -> &'static Analyzer {
    static ANALYZER: OnceLock<Analyzer> = OnceLock::new();
    ANALYZER.get_or_init(Analyzer::new)
}

/// Turns text into terms. See the module notes.
pub struct Analyzer {
    jieba: Jieba,
    stemmer: Stemmer,
    /// Chinese word or English stem -> concepts.
    concepts: HashMap<String, Vec<&'static str>>,
    stop: HashSet<String>,
    foreign: HashSet<String>,
    /// Every one-letter deletion of an English concept word -> the word, for typos.
    deletes: HashMap<String, String>,
}

impl Default for Analyzer {
    fn default() -> Self {
        Analyzer::new()
    }
}

impl Analyzer {
    /// Loads jieba's default dictionary and the lexicon.
    pub fn new() -> Analyzer {
        let mut jieba = Jieba::new();
        let stemmer = Stemmer::create(Algorithm::English);
        let mut concepts: HashMap<String, Vec<&'static str>> = HashMap::new();
        let mut stop = HashSet::new();
        let mut foreign = HashSet::new();
        let key = |w: &str, jieba: &mut Jieba| -> String {
            if w.chars().any(is_han) {
                // A frequency high enough that the word always comes out whole.
                if w.chars().count() > 1 {
                    jieba.add_word(w, Some(200_000), None);
                }
                w.to_string()
            } else {
                stemmer.stem(w).into_owned()
            }
        };
        for (concept, surfaces) in CONCEPTS {
            for s in *surfaces {
                let k = key(s, &mut jieba);
                let list = concepts.entry(k).or_default();
                if !list.contains(concept) {
                    list.push(concept);
                }
            }
        }
        for w in STOP_ZH {
            stop.insert(key(w, &mut jieba));
        }
        for w in STOP_EN {
            stop.insert((*w).to_string());
        }
        for w in FOREIGN {
            foreign.insert(key(w, &mut jieba));
        }
        let mut deletes = HashMap::new();
        for k in concepts.keys() {
            if k.len() >= TYPO_MIN_LEN && k.chars().all(|c| c.is_ascii_lowercase()) {
                for d in one_deletions(k) {
                    deletes.entry(d).or_insert_with(|| k.clone());
                }
            }
        }
        Analyzer {
            jieba,
            stemmer,
            concepts,
            stop,
            foreign,
            deletes,
        }
    }

    /// The matching key of a phrasing: normalized, simplified, without punctuation or
    /// white space. Two texts with the same key are the same question (score 1).
    pub fn exact_key(&self, text: &str) -> String {
        exact_key(text)
    }

    /// The terms of `text`, each once, in order of first appearance: concepts (`@return`),
    /// foreign topics (`!运费`), other Chinese words and English stems. Numbers (order
    /// numbers, sizes) and single letters are dropped.
    pub fn terms(&self, text: &str) -> Vec<String> {
        let mut text = simplified(&normalize(text));
        for (phrase, concept) in EN_PHRASES {
            if text.contains(phrase) {
                text = text.replace(phrase, &format!(" {concept} "));
            }
        }
        let mut out: Vec<String> = Vec::new();
        let mut push = |t: String, out: &mut Vec<String>| {
            if !out.contains(&t) {
                out.push(t);
            }
        };
        let mut rest = text.as_str();
        while !rest.is_empty() {
            let han = rest.chars().next().is_some_and(is_han);
            let end = rest
                .char_indices()
                .find(|(_, c)| is_han(*c) != han)
                .map_or(rest.len(), |(i, _)| i);
            let (run, tail) = rest.split_at(end);
            rest = tail;
            if han {
                for token in self.jieba.cut(run, false) {
                    self.word(token.word, &mut out, &mut push);
                }
            } else {
                for word in run
                    .split(|c: char| {
                        !(c.is_alphanumeric() || c == '@' || c == '!' || c == '_' || c == '\'')
                    })
                    .map(|w| w.trim_matches('\''))
                {
                    if word.starts_with('@') || word.starts_with('!') {
                        if word.len() > 1 {
                            push(word.to_string(), &mut out);
                        }
                        continue;
                    }
                    if word.chars().count() < 2
                        || word.chars().all(|c| c.is_ascii_digit())
                        || self.stop.contains(word)
                    {
                        continue;
                    }
                    let stem = self.stemmer.stem(word);
                    self.word(&stem, &mut out, &mut push);
                }
            }
        }
        out
    }

    fn word(
        &self,
        w: &str,
        out: &mut Vec<String>,
        push: &mut impl FnMut(String, &mut Vec<String>),
    ) {
        if w.trim().is_empty() || self.stop.contains(w) {
            return;
        }
        if let Some(concepts) = self.concepts.get(w).or_else(|| self.typo(w)) {
            for c in concepts {
                push((*c).to_string(), out);
            }
        } else if self.foreign.contains(w) {
            push(format!("!{w}"), out);
        } else if !w.chars().all(|c| c.is_ascii_digit()) {
            push(w.to_string(), out);
        }
    }

    /// The concepts of the English word `w` is one typo away from: a letter deleted,
    /// inserted, substituted or (nearly) two swapped. Words under [`TYPO_MIN_LEN`]
    /// letters are left alone: `shop` is not a typo of `ship`.
    fn typo(&self, w: &str) -> Option<&Vec<&'static str>> {
        if w.len() < TYPO_MIN_LEN
            || !w.chars().all(|c| c.is_ascii_lowercase())
            || self.foreign.contains(w)
        {
            return None;
        }
        let word = self.deletes.get(w).or_else(|| {
            one_deletions(w).into_iter().find_map(|d| {
                self.concepts
                    .get_key_value(&d)
                    .map(|(k, _)| k)
                    .or_else(|| self.deletes.get(&d))
            })
        })?;
        self.concepts.get(word)
    }
}

/// The matching key of a phrasing (see [`Analyzer::exact_key`]); needs no dictionary.
pub fn exact_key(text: &str) -> String {
    let n = simplified(&normalize(text));
    n.chars().filter(|c| c.is_alphanumeric()).collect()
}

/// The shortest English word (stem) corrected as a typo.
pub const TYPO_MIN_LEN: usize = 5;

/// `word` (ASCII) with each of its letters deleted in turn.
pub fn one_deletions(word: &str) -> Vec<String> {
    (0..word.len())
        .filter(|i| word.is_char_boundary(*i) && word.is_char_boundary(i + 1))
        .map(|i| {
            let mut s = String::with_capacity(word.len());
            s.push_str(&word[..i]);
            s.push_str(&word[i + 1..]);
            s
        })
        .collect()
}

/// Traditional characters replaced by simplified ones (`退貨` -> `退货`); text without
/// Han characters is returned as it is.
pub fn simplified(text: &str) -> String {
    if text.chars().any(is_han) {
        fast2s::convert(text)
    } else {
        text.to_string()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn traditional_and_simplified_give_the_same_terms() {
        let a = analyzer();
        assert_eq!(a.terms("退貨要怎麼申請?"), a.terms("退货要怎么申请?"));
    }

    #[test]
    fn padding_is_dropped() {
        let a = analyzer();
        assert!(a.terms("你好 请问 亲").is_empty());
    }

    #[test]
    fn colloquial_words_map_to_the_entry_concept() {
        let a = analyzer();
        assert!(a.terms("我想把卫衣退掉").contains(&"@return".to_string()));
        assert!(
            a.terms("i want to send back the shoes")
                .contains(&"@return".to_string())
        );
    }

    #[test]
    fn order_numbers_are_dropped() {
        let a = analyzer();
        assert_eq!(
            a.terms("订单2026112900123怎么取消"),
            a.terms("订单怎么取消")
        );
    }

    #[test]
    fn english_inflections_share_a_stem() {
        let a = analyzer();
        assert_eq!(a.terms("cancelling orders"), a.terms("cancel order"));
    }
}
