//! Canned answers: the curated FAQ that operators edit, matched by normalized question
//! (or alias). Reloadable at run time; a file that does not parse leaves the answers in
//! place.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::Deserialize;

use super::normalize::normalize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CannedFile {
    #[serde(default)]
    answers: Vec<CannedEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CannedEntry {
    question: String,
    answer: String,
    #[serde(default)]
    aliases: Vec<String>,
}

/// One parsed file: answers by normalized question or alias, and how many entries.
struct Loaded {
    table: HashMap<String, Arc<str>>,
    entries: usize,
}

pub struct CannedAnswers {
    path: PathBuf,
    loaded: RwLock<Arc<Loaded>>,
}

impl CannedAnswers {
    /// Reads the file; an unreadable or invalid file is an error naming it.
    pub fn load(path: &Path) -> Result<CannedAnswers, String> {
        let loaded = read(path)?;
        Ok(CannedAnswers {
            path: path.to_path_buf(),
            loaded: RwLock::new(Arc::new(loaded)),
        })
    }

    /// The answer for a normalized question, if one is curated.
    pub fn get(&self, normalized: &str) -> Option<Arc<str>> {
        let loaded = self.loaded.read().ok()?.clone();
        loaded.table.get(normalized).cloned()
    }

    /// Re-reads the file. On error the answers in place stay; on success returns the
    /// number of questions (aliases not counted).
    pub fn reload(&self) -> Result<usize, String> {
        let loaded = read(&self.path)?;
        let entries = loaded.entries;
        if let Ok(mut l) = self.loaded.write() {
            *l = Arc::new(loaded);
        }
        Ok(entries)
    }

    /// Entries in the file last loaded.
    pub fn entries(&self) -> usize {
        self.loaded.read().map(|l| l.entries).unwrap_or(0)
    }
}

fn parse(path: &Path) -> Result<CannedFile, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read canned answers {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("canned answers {}: {e}", path.display()))
}

fn read(path: &Path) -> Result<Loaded, String> {
    let file = parse(path)?;
    let entries = file.answers.len();
    let mut table = HashMap::new();
    for (i, entry) in file.answers.into_iter().enumerate() {
        if entry.question.trim().is_empty() || entry.answer.trim().is_empty() {
            return Err(format!(
                "canned answers {}: entry {} has an empty question or answer",
                path.display(),
                i + 1
            ));
        }
        let answer: Arc<str> = Arc::from(entry.answer.trim());
        for q in std::iter::once(&entry.question).chain(&entry.aliases) {
            table.insert(normalize(q), answer.clone());
        }
    }
    Ok(Loaded { table, entries })
}
