//! Resilience mechanisms shared by the tiers: the retry helper, circuit breakers and the
//! retry budget.

pub mod breaker;
pub mod budget;
pub mod retry;
