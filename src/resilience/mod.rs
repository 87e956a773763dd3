//! Resilience mechanisms shared by the tiers.

pub mod retry;
