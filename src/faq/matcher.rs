//! Scoring a question against the FAQ entries.
//!
//! Each entry is indexed per language by its phrasings (question and aliases), each
//! phrasing analyzed into terms ([`analyze`](super::analyze)). A term's weight is BM25's
//! inverse document frequency over entries (Robertson & Zaragoza, "The Probabilistic
//! Relevance Framework: BM25 and Beyond", 2009), `ln(1 + (N - n + 0.5) / (n + 0.5))`,
//! with term frequency saturated at one: phrasings are a few words long. The score of an
//! entry is ours, calibrated on the kinds of questions customers send:
//!
//! - coverage of the question, `P`: the weight of the question's terms that the entry
//!   uses (in any phrasing) over the weight of all its terms. Terms no entry uses count
//!   [`UNKNOWN_WEIGHT`] (a product name, an order detail), foreign topics
//!   [`FOREIGN_WEIGHT`] (a question about shipping fees that mentions returns), and
//!   asking *when* counts [`INTENT_WEIGHT`] times its idf;
//! - coverage of the entry, `R`: for the entry's best phrasing, the weight of its terms
//!   the question has over the weight of all of them;
//! - score `= sqrt(P * R)`, capped at [`MAX_FUZZY_SCORE`]: only the question or an alias
//!   itself (same key once normalized, simplified and stripped of punctuation) scores 1.
//!
//! The constants and `canned.min_score` (0.65) were set with `faq-eval` on the
//! development set and on a second set of questions written apart from it, looking at
//! kinds of mistakes rather than rows.
//!
//! English words no entry uses are tried once more as typos of the entries' words (and
//! the analyzer does the same for the lexicon's): one deleted, inserted, substituted or
//! swapped letter, found by the symmetric-delete idea of SymSpell (Garbe, 2012).

use std::collections::HashMap;

use super::analyze::{Analyzer, one_deletions};

/// Weight of a question term that no entry uses.
pub const UNKNOWN_WEIGHT: f32 = 0.6;
/// Weight of a foreign topic (`!运费`) that no entry uses.
pub const FOREIGN_WEIGHT: f32 = 8.0;
/// How much more a question's asking *when* (`多久`, `几天`, `how long`: `@when`) weighs
/// on the question's side: only an entry that answers when covers such a question
/// (`换货需要多长时间` is not `如何换货?`).
pub const INTENT_WEIGHT: f32 = 3.0;
/// The highest score of a question that is not an entry's question or alias.
pub const MAX_FUZZY_SCORE: f64 = 0.99;

/// One phrasing to index: the entry it belongs to (an index into the caller's entries)
/// and its text.
pub struct Phrasing<'a> {
    pub entry: usize,
    pub text: &'a str,
}

/// An entry's score for a question.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    /// Index of the entry, as given in [`Phrasing::entry`].
    pub entry: usize,
    /// In `[0, 1]`; 1 only for an exact question or alias.
    pub score: f64,
}

struct IndexedEntry {
    /// Per phrasing: sorted term ids and their total weight.
    phrasings: Vec<(Vec<u32>, f32)>,
}

/// The index of one language's phrasings.
pub struct Matcher {
    exact: HashMap<String, usize>,
    term_ids: HashMap<String, u32>,
    idf: Vec<f32>,
    postings: Vec<Vec<u32>>,
    /// Indexed entries; postings hold positions in this list.
    slots: Vec<(usize, IndexedEntry)>,
    /// Every one-letter deletion of an English term -> the term.
    deletes: HashMap<String, u32>,
    /// The id of `@when`, if an entry uses it.
    when: Option<u32>,
}

impl Matcher {
    /// Indexes `phrasings` with `analyzer`.
    pub fn build<'a>(
        analyzer: &Analyzer,
        phrasings: impl IntoIterator<Item = Phrasing<'a>>,
    ) -> Matcher {
        let mut exact = HashMap::new();
        let mut term_ids: HashMap<String, u32> = HashMap::new();
        let mut raw: HashMap<usize, Vec<Vec<u32>>> = HashMap::new();
        for p in phrasings {
            exact.entry(analyzer.exact_key(p.text)).or_insert(p.entry);
            let mut ids: Vec<u32> = analyzer
                .terms(p.text)
                .into_iter()
                .map(|t| {
                    let next = term_ids.len() as u32;
                    *term_ids.entry(t).or_insert(next)
                })
                .collect();
            ids.sort_unstable();
            ids.dedup();
            raw.entry(p.entry).or_default().push(ids);
        }
        // Entries in a fixed order (their index), so that ties break the same way.
        let mut raw: Vec<(usize, Vec<Vec<u32>>)> = raw.into_iter().collect();
        raw.sort_by_key(|(entry, _)| *entry);
        let mut postings: Vec<Vec<u32>> = vec![Vec::new(); term_ids.len()];
        for (slot, (_, list)) in raw.iter().enumerate() {
            let mut union: Vec<u32> = list.iter().flatten().copied().collect();
            union.sort_unstable();
            union.dedup();
            for t in &union {
                if let Some(p) = postings.get_mut(*t as usize) {
                    p.push(slot as u32);
                }
            }
        }
        let n = raw.len() as f32;
        let idf: Vec<f32> = postings
            .iter()
            .map(|p| {
                let df = p.len() as f32;
                (1.0 + (n - df + 0.5) / (df + 0.5)).ln()
            })
            .collect();
        let weight = |ids: &[u32]| -> f32 { ids.iter().map(|t| idf[*t as usize]).sum() };
        let slots = raw
            .into_iter()
            .map(|(entry, list)| {
                let phrasings = list
                    .into_iter()
                    .map(|ids| {
                        let w = weight(&ids);
                        (ids, w)
                    })
                    .collect();
                (entry, IndexedEntry { phrasings })
            })
            .collect();
        let mut deletes = HashMap::new();
        for (term, id) in &term_ids {
            if term.len() >= 4 && term.chars().all(|c| c.is_ascii_lowercase()) {
                for d in one_deletions(term) {
                    deletes.entry(d).or_insert(*id);
                }
            }
        }
        let when = term_ids.get("@when").copied();
        Matcher {
            when,
            exact,
            term_ids,
            idf,
            postings,
            slots,
            deletes,
        }
    }

    /// Entries indexed.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether no entry is indexed.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Every entry that shares a term with `question` (or is it), best first.
    pub fn rank(&self, analyzer: &Analyzer, question: &str) -> Vec<Scored> {
        if let Some(entry) = self.exact.get(&analyzer.exact_key(question)) {
            let mut ranked = vec![Scored {
                entry: *entry,
                score: 1.0,
            }];
            ranked.extend(
                self.fuzzy(analyzer, question, true)
                    .into_iter()
                    .filter(|s| s.entry != *entry),
            );
            return ranked;
        }
        self.fuzzy(analyzer, question, true)
    }

    /// The best entry, if any scores above zero.
    pub fn best(&self, analyzer: &Analyzer, question: &str) -> Option<Scored> {
        if let Some(entry) = self.exact.get(&analyzer.exact_key(question)) {
            return Some(Scored {
                entry: *entry,
                score: 1.0,
            });
        }
        self.fuzzy(analyzer, question, false).into_iter().next()
    }

    /// Entries sharing a term with the question, best first: all of them, or (`all`
    /// false) enough to be sure of the first.
    fn fuzzy(&self, analyzer: &Analyzer, question: &str, all: bool) -> Vec<Scored> {
        let terms = analyzer.terms(question);
        let mut known: Vec<u32> = Vec::with_capacity(terms.len());
        let mut mass = 0.0f32;
        for t in &terms {
            match self.lookup(t) {
                Some(id) => {
                    if !known.contains(&id) {
                        known.push(id);
                        mass += self.question_weight(id);
                    }
                }
                None if t.starts_with('!') => mass += FOREIGN_WEIGHT,
                None => mass += UNKNOWN_WEIGHT,
            }
        }
        if known.is_empty() || mass <= 0.0 {
            return Vec::new();
        }
        // Coverage of the question, per candidate entry.
        let mut covered = vec![0.0f32; self.slots.len()];
        let mut touched: Vec<u32> = Vec::new();
        for id in &known {
            let w = self.question_weight(*id);
            for slot in &self.postings[*id as usize] {
                let c = &mut covered[*slot as usize];
                if *c == 0.0 {
                    touched.push(*slot);
                }
                *c += w;
            }
        }
        let mut candidates: Vec<(u32, f64)> = touched
            .into_iter()
            .map(|slot| {
                let p = f64::from(covered[slot as usize] / mass).min(1.0);
                (slot, p)
            })
            .collect();
        // Best coverage of the question first: as the score is at most sqrt(P), the
        // search for the best entry stops at the first candidate that cannot beat it.
        candidates.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut out: Vec<Scored> = Vec::new();
        let mut best = -1.0f64;
        for (slot, p) in candidates {
            if !all && p.sqrt() < best {
                break;
            }
            let Some((entry, e)) = self.slots.get(slot as usize) else {
                continue;
            };
            let r = e
                .phrasings
                .iter()
                .filter(|(_, w)| *w > 0.0)
                .map(|(ids, w)| {
                    let hit: f32 = ids
                        .iter()
                        .filter(|t| known.contains(t))
                        .map(|t| self.idf[*t as usize])
                        .sum();
                    f64::from(hit / w)
                })
                .fold(0.0f64, f64::max)
                .min(1.0);
            let score = (p * r).sqrt().clamp(0.0, MAX_FUZZY_SCORE);
            best = best.max(score);
            out.push(Scored {
                entry: *entry,
                score,
            });
        }
        out.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.entry.cmp(&b.entry)));
        out
    }

    /// A known term's weight on the question's side: its idf, times
    /// [`INTENT_WEIGHT`] for a question that asks when.
    fn question_weight(&self, id: u32) -> f32 {
        let w = self.idf[id as usize];
        if self.when == Some(id) {
            w * INTENT_WEIGHT
        } else {
            w
        }
    }

    fn lookup(&self, term: &str) -> Option<u32> {
        if let Some(id) = self.term_ids.get(term) {
            return Some(*id);
        }
        if term.len() < 4 || !term.chars().all(|c| c.is_ascii_lowercase()) {
            return None;
        }
        // A typo: the term with one letter deleted is a term (an inserted letter), the
        // term is a term with one letter deleted (a deleted letter), or both lose one
        // letter alike (a substituted or, nearly, a swapped letter).
        if let Some(id) = self.deletes.get(term) {
            return Some(*id);
        }
        one_deletions(term).into_iter().find_map(|d| {
            self.term_ids
                .get(&d)
                .or_else(|| self.deletes.get(&d))
                .copied()
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::faq::analyze::analyzer;

    fn matcher() -> Matcher {
        let phrasings = [
            (0, "如何退货?"),
            (0, "退货流程"),
            (1, "如何申请退款?"),
            (2, "退款多久到账?"),
            (3, "How do I cancel an order?"),
        ];
        Matcher::build(
            analyzer(),
            phrasings.iter().map(|(entry, text)| Phrasing {
                entry: *entry,
                text,
            }),
        )
    }

    #[test]
    fn an_alias_once_normalized_scores_one() {
        let best = matcher().best(analyzer(), "  退貨流程！").unwrap();
        assert_eq!(
            best,
            Scored {
                entry: 0,
                score: 1.0
            }
        );
    }

    #[test]
    fn a_paraphrase_scores_under_one_for_the_right_entry() {
        let best = matcher().best(analyzer(), "退款一般几天能到账啊").unwrap();
        assert_eq!(best.entry, 2);
        assert!(best.score < 1.0 && best.score > 0.6, "{best:?}");
    }

    #[test]
    fn a_foreign_topic_lowers_the_score() {
        let m = matcher();
        let plain = m.best(analyzer(), "退货怎么弄").unwrap();
        let fee = m.best(analyzer(), "退货运费怎么弄").unwrap();
        assert!(fee.score < plain.score - 0.2, "{plain:?} {fee:?}");
    }

    #[test]
    fn an_english_typo_still_finds_its_word() {
        let m = matcher();
        let typo = m.best(analyzer(), "how do i cancle an order").unwrap();
        assert_eq!(typo.entry, 3);
        assert!(typo.score > 0.6, "{typo:?}");
    }

    #[test]
    fn padding_alone_matches_nothing() {
        assert_eq!(matcher().best(analyzer(), "你好 在吗 亲"), None);
    }

    #[test]
    fn rank_is_best_first() {
        let ranked = matcher().rank(analyzer(), "退货以后退款多久到账");
        assert!(
            ranked.windows(2).all(|w| w[0].score >= w[1].score),
            "{ranked:?}"
        );
        assert_eq!(ranked.first().map(|s| s.entry), Some(2));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn any_input_scores_in_the_unit_interval_without_panicking(q in "\\PC{0,60}") {
            let m = matcher();
            for s in m.rank(analyzer(), &q) {
                prop_assert!((0.0..=1.0).contains(&s.score), "{s:?}");
            }
        }

        #[test]
        fn mixed_scripts_score_in_the_unit_interval(q in "[退货款如何到账 a-zA-Z0-9?？！,。]{0,40}") {
            let m = matcher();
            if let Some(s) = m.best(analyzer(), &q) {
                prop_assert!((0.0..=1.0).contains(&s.score), "{s:?}");
            }
        }
    }
}
