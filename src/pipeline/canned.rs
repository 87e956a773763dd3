//! The canned-answers tier: the curated FAQ of [`crate::faq`], matched on what the
//! customer typed and answered in the customer's language.

pub use crate::faq::{Candidate, CannedAnswers, Lookup, MatchResult};
