//! The evaluation behind `faq-eval`: labelled questions (the format of
//! `shared/faq/labelled-questions.json`: `q`, `expect` (an entry's default-language
//! question or null), `lang`, `kind`) run through the matcher with a given store, and
//! the figures the targets are stated in: accuracy on paraphrases and confusables per
//! language, false matches per kind of negative, every miss with its score.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Deserialize;

use super::CannedAnswers;

/// One labelled question.
#[derive(Debug, Clone, Deserialize)]
pub struct Labelled {
    pub q: String,
    pub expect: Option<String>,
    pub lang: String,
    pub kind: String,
}

/// The outcome of one question.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub row: Labelled,
    /// The matched entry's default-language question, if one matched.
    pub got: Option<String>,
    /// The best entry's default-language question and score, matched or not.
    pub best: Option<(String, f64)>,
    pub detected_language: String,
    pub correct: bool,
}

/// Counts of one group: right answers (or, for negatives, correct refusals) of all.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tally {
    pub right: usize,
    pub total: usize,
}

impl Tally {
    /// Share right, 1 for an empty group.
    pub fn rate(self) -> f64 {
        if self.total == 0 {
            1.0
        } else {
            self.right as f64 / self.total as f64
        }
    }
}

/// The figures of a run.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub outcomes: Vec<Outcome>,
    /// Paraphrases and confusables matched to the right entry, by language.
    pub accuracy_by_language: BTreeMap<String, Tally>,
    /// By `(kind, language)`: right answers, or for negatives, questions left unmatched.
    pub by_kind: BTreeMap<(String, String), Tally>,
    /// Negatives matched to an entry, by group: `near` (negative-near), `off`
    /// (negative-off and negative-junk).
    pub false_matches: BTreeMap<&'static str, Tally>,
    /// Questions whose detected language is their label's.
    pub language_detection: Tally,
}

/// Whether a kind labels questions that should match an entry.
pub fn is_positive(kind: &str) -> bool {
    matches!(kind, "paraphrase" | "confusable")
}

/// Runs every row through `canned`.
pub fn evaluate(canned: &CannedAnswers, rows: &[Labelled]) -> Report {
    let faq = canned.faq();
    let default = canned.settings.default_language;
    let name = |entry: usize| -> String {
        faq.entries()
            .get(entry)
            .and_then(|e| e.variants.get(default))
            .map(|v| v.question.to_string())
            .unwrap_or_default()
    };
    let mut report = Report::default();
    for row in rows {
        let lookup = canned.lookup(&row.q);
        let best = lookup.best.as_ref().map(|b| (name(b.entry), b.score));
        let got = lookup.matched().map(|b| name(b.entry));
        let correct = got == row.expect;
        let positive = is_positive(&row.kind);
        let key = (row.kind.clone(), row.lang.clone());
        let t = report.by_kind.entry(key).or_default();
        t.total += 1;
        t.right += usize::from(correct);
        if positive {
            let t = report
                .accuracy_by_language
                .entry(row.lang.clone())
                .or_default();
            t.total += 1;
            t.right += usize::from(correct);
        } else {
            let group = if row.kind == "negative-near" {
                "near"
            } else {
                "off"
            };
            let t = report.false_matches.entry(group).or_default();
            t.total += 1;
            // Here `right` counts the false matches.
            t.right += usize::from(got.is_some());
        }
        report.language_detection.total += 1;
        report.language_detection.right += usize::from(lookup.language == row.lang);
        report.outcomes.push(Outcome {
            row: row.clone(),
            got,
            best,
            detected_language: lookup.language.to_string(),
            correct,
        });
    }
    report
}

impl Report {
    /// The report for people: figures by language and kind, then every miss.
    pub fn render(&self, min_score: f64) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "min_score = {min_score}");
        let _ = writeln!(s, "\nparaphrases + confusables matched to the right entry:");
        for (lang, t) in &self.accuracy_by_language {
            let _ = writeln!(
                s,
                "  {lang}: {}/{} = {:.1}%",
                t.right,
                t.total,
                100.0 * t.rate()
            );
        }
        let _ = writeln!(s, "\nnegatives matched to an entry (false matches):");
        for (group, t) in &self.false_matches {
            let label = if *group == "near" {
                "near misses (negative-near)"
            } else {
                "off-topic + junk"
            };
            let _ = writeln!(
                s,
                "  {label}: {}/{} = {:.1}%",
                t.right,
                t.total,
                100.0 * t.rate()
            );
        }
        let _ = writeln!(s, "\nby kind and language (right / total):");
        for ((kind, lang), t) in &self.by_kind {
            let _ = writeln!(s, "  {kind:<15} {lang}: {}/{}", t.right, t.total);
        }
        let d = self.language_detection;
        let _ = writeln!(
            s,
            "\nlanguage detected as labelled: {}/{}",
            d.right, d.total
        );
        let misses: Vec<&Outcome> = self.outcomes.iter().filter(|o| !o.correct).collect();
        let _ = writeln!(s, "\nmisses ({}):", misses.len());
        for o in misses {
            let best = match &o.best {
                Some((q, score)) => format!("best {q} {score:.3}"),
                None => "no candidate".into(),
            };
            let _ = writeln!(
                s,
                "  [{} {}] {:?}: expected {}, got {} ({best})",
                o.row.kind,
                o.row.lang,
                o.row.q,
                o.row.expect.as_deref().unwrap_or("none"),
                o.got.as_deref().unwrap_or("none"),
            );
        }
        s
    }

    /// The lowest accuracy over the languages (1 with no positives).
    pub fn min_accuracy(&self) -> f64 {
        self.accuracy_by_language
            .values()
            .map(|t| t.rate())
            .fold(1.0, f64::min)
    }

    /// The false-match rate of a group (`near` or `off`).
    pub fn false_match_rate(&self, group: &str) -> f64 {
        self.false_matches
            .get(group)
            .map(|t| {
                if t.total == 0 {
                    0.0
                } else {
                    t.right as f64 / t.total as f64
                }
            })
            .unwrap_or(0.0)
    }
}
