//! The RateLimit header fields of the IETF draft "RateLimit header fields for HTTP"
//! (draft-ietf-httpapi-ratelimit-headers-11, R. Polli, A. Martinez, D. Miller), lists of
//! Structured Field items (RFC 9651):
//!
//! ```text
//! RateLimit-Policy: "rps";q=<burst>;w=<window>, "daily";q=<calls>;w=86400
//! RateLimit: "rps";r=<remaining>;t=<seconds>, "daily";r=<remaining>;t=<seconds>
//! ```
//!
//! - `"rps"`: the request rate. Its quota `q` is the burst and its window `w` the time
//!   the rate takes to refill a whole burst (`burst / rps`, in whole seconds rounded up:
//!   the draft's windows are Integers), so `q/w` is the sustained rate (less, when the
//!   division is not exact). `r` is what may still be sent at once, `t` the seconds
//!   until a whole burst is available again, or, once limited, until the next request
//!   is.
//! - `"daily"`: the budget of upstream model calls of the UTC day (the unit is a model
//!   call, not a request: a cached answer costs none, a new question one or more). `r`
//!   is what was left when the request was checked (before its own calls), `t` the
//!   seconds until midnight UTC. It shows on responses to questions the cache did not
//!   have, which are the ones that spend it.
//!
//! Seconds are whole and rounded up, so that a client that waits `t` never comes back
//! early.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue};

use super::DailyState;
use super::rate::RateDecision;
use crate::clients::ClientLimits;

/// `RateLimit`: the client's current service limits.
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
/// `RateLimit-Policy`: the client's quota policies.
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

/// Whole seconds, rounded up.
pub fn secs_up(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// The `"rps"` window: the seconds the rate takes to refill a whole burst, rounded up,
/// at least 1 (in whole microseconds first, so that `3 / 0.1` is 30, not 31).
pub fn window_secs(limits: &ClientLimits) -> u64 {
    let micros = u64::from(limits.burst).saturating_mul(super::rate::interval_us(limits.rps));
    micros.div_ceil(1_000_000).max(1)
}

/// `RateLimit-Policy` of a client: one item per limit that applies; `None` when none
/// does.
pub fn policy(limits: &ClientLimits) -> Option<HeaderValue> {
    let mut items = Vec::with_capacity(2);
    if limits.rps > 0.0 {
        items.push(format!(
            "\"rps\";q={};w={}",
            limits.burst,
            window_secs(limits)
        ));
    }
    if limits.model_calls_per_day > 0 {
        items.push(format!(
            "\"daily\";q={};w={}",
            limits.model_calls_per_day,
            super::daily::DAY_SECS
        ));
    }
    (!items.is_empty()).then(|| HeaderValue::from_str(&items.join(", ")).ok())?
}

/// `RateLimit`: the items of the limits checked for this request.
pub fn state(rate: Option<&RateDecision>, daily: Option<&DailyState>) -> Option<HeaderValue> {
    use std::fmt::Write as _;
    let mut items = String::with_capacity(64);
    if let Some(rate) = rate {
        let _ = write!(
            items,
            "\"rps\";r={};t={}",
            rate.remaining,
            secs_up(rate.reset)
        );
    }
    if let Some(daily) = daily {
        if !items.is_empty() {
            items.push_str(", ");
        }
        let _ = write!(
            items,
            "\"daily\";r={};t={}",
            daily.remaining,
            secs_up(daily.reset)
        );
    }
    (!items.is_empty()).then(|| HeaderValue::from_str(&items).ok())?
}

/// The `RateLimit-Policy` values already made, by the limits they describe: every
/// response to a limited client carries one, and clients share a few sets of limits (the
/// defaults, and those of the clients file).
#[derive(Default)]
pub struct Policies {
    made: std::sync::RwLock<Vec<(ClientLimits, HeaderValue)>>,
}

/// How many distinct sets of limits [`Policies`] keeps.
const POLICIES_KEPT: usize = 256;

impl Policies {
    /// `RateLimit-Policy` for `limits`, made once.
    pub fn of(&self, limits: &ClientLimits) -> Option<HeaderValue> {
        if let Ok(made) = self.made.read()
            && let Some((_, v)) = made.iter().find(|(l, _)| l == limits)
        {
            return Some(v.clone());
        }
        let value = policy(limits)?;
        if let Ok(mut made) = self.made.write()
            && made.len() < POLICIES_KEPT
        {
            made.push((*limits, value.clone()));
        }
        Some(value)
    }
}

/// Writes both fields for a client with `limits`, as far as they apply; the policy from
/// `policies`.
pub fn write(
    headers: &mut HeaderMap,
    policies: &Policies,
    limits: &ClientLimits,
    rate: Option<&RateDecision>,
    daily: Option<&DailyState>,
) {
    if let Some(policy) = policies.of(limits) {
        headers.insert(RATELIMIT_POLICY, policy);
    }
    if let Some(state) = state(rate, daily) {
        headers.insert(RATELIMIT, state);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn limits(rps: f64, burst: u32, daily: u64) -> ClientLimits {
        ClientLimits {
            rps,
            burst,
            model_calls_per_day: daily,
        }
    }

    #[test]
    fn policies_name_the_burst_its_refill_window_and_the_daily_budget() {
        let p = policy(&limits(5.0, 10, 0)).unwrap();
        assert_eq!(p, "\"rps\";q=10;w=2");
        let p = policy(&limits(3.0, 10, 500)).unwrap();
        assert_eq!(p, "\"rps\";q=10;w=4, \"daily\";q=500;w=86400");
        let p = policy(&limits(0.0, 10, 500)).unwrap();
        assert_eq!(p, "\"daily\";q=500;w=86400");
        assert!(policy(&limits(0.0, 10, 0)).is_none());
        assert_eq!(window_secs(&limits(100.0, 1, 0)), 1);
        assert_eq!(window_secs(&limits(0.1, 3, 0)), 30);
    }

    #[test]
    fn a_policy_is_made_once_per_set_of_limits() {
        let policies = Policies::default();
        let a = limits(5.0, 10, 0);
        assert_eq!(policies.of(&a).unwrap(), "\"rps\";q=10;w=2");
        assert_eq!(policies.of(&a).unwrap(), "\"rps\";q=10;w=2");
        assert_eq!(policies.made.read().unwrap().len(), 1);
        assert!(policies.of(&limits(0.0, 10, 0)).is_none());
    }

    #[test]
    fn state_rounds_seconds_up() {
        let rate = RateDecision {
            allowed: false,
            remaining: 0,
            reset: Duration::from_millis(1200),
            retry_after: Duration::from_millis(1200),
        };
        let daily = DailyState {
            remaining: 7,
            reset: Duration::from_secs(3600),
        };
        assert_eq!(
            state(Some(&rate), Some(&daily)).unwrap(),
            "\"rps\";r=0;t=2, \"daily\";r=7;t=3600"
        );
        assert_eq!(secs_up(Duration::ZERO), 0);
        assert_eq!(secs_up(Duration::from_nanos(1)), 1);
    }
}
