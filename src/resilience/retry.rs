//! The one retry helper of the codebase: exponential backoff with jitter, transient
//! failures only, `Retry-After` honoured, never past the caller's deadline.
//!
//! Every wait here may come from outside (a server's `Retry-After` can say
//! `18446744073709551615` seconds), so instants and durations are only ever combined with
//! checked or saturating arithmetic: a wait that does not fit is a wait past the deadline.
#![deny(clippy::arithmetic_side_effects)]

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

pub use crate::pipeline::source::GiveUp;

/// What the retry helper needs to know of a failure.
pub trait Transient {
    /// Whether trying again may succeed.
    fn is_transient(&self) -> bool;
    /// How long the server asked us to wait, if it did.
    fn retry_after(&self) -> Option<Duration>;
}

#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in all, the first one included; at least 1.
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Randomise each wait within its upper half; off only where tests assert a schedule.
    pub jitter: bool,
}

impl RetryPolicy {
    /// The wait before attempt `attempt + 1`, after `attempt` failures (1-based):
    /// `initial * 2^(attempt-1)`, capped at `max`, and with jitter drawn from its upper
    /// half so that waits still grow while clients spread out.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(31);
        let base = self
            .initial_backoff
            .saturating_mul(1u32.checked_shl(exp).unwrap_or(u32::MAX))
            .min(self.max_backoff);
        if !self.jitter || base.is_zero() {
            return base;
        }
        let half = base.checked_div(2).unwrap_or_default();
        let spread = u64::try_from(base.saturating_sub(half).as_nanos()).unwrap_or(u64::MAX);
        half.saturating_add(Duration::from_nanos(fastrand::u64(0..=spread)))
    }
}

/// The failure of a retried operation: why it stopped, and the last error if any.
#[derive(Debug)]
pub struct RetryError<E> {
    pub give_up: GiveUp,
    pub last: Option<E>,
}

/// Runs `op(attempt, time_left, pass)` until it succeeds, fails for good, runs out of
/// attempts, or the deadline comes. Before each attempt `gate(attempt)` must hand out a
/// pass (a breaker permit, say) or say why not. Each attempt is itself cut off at the
/// deadline.
pub async fn retry<T, E, P, G, F, Fut>(
    policy: &RetryPolicy,
    deadline: Instant,
    mut gate: G,
    mut op: F,
) -> Result<T, RetryError<E>>
where
    E: Transient,
    G: FnMut(u32) -> Result<P, GiveUp>,
    F: FnMut(u32, Duration, P) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut last = None;
    for attempt in 1..=policy.max_attempts.max(1) {
        let now = Instant::now();
        if now >= deadline {
            return Err(RetryError {
                give_up: GiveUp::Deadline,
                last,
            });
        }
        let pass = match gate(attempt) {
            Ok(p) => p,
            Err(give_up) => return Err(RetryError { give_up, last }),
        };
        let time_left = deadline.saturating_duration_since(now);
        let result = match tokio::time::timeout_at(deadline, op(attempt, time_left, pass)).await {
            Ok(r) => r,
            Err(_) => {
                return Err(RetryError {
                    give_up: GiveUp::Deadline,
                    last,
                });
            }
        };
        let err = match result {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        if !err.is_transient() {
            return Err(RetryError {
                give_up: GiveUp::NonRetryable,
                last: Some(err),
            });
        }
        if attempt == policy.max_attempts {
            return Err(RetryError {
                give_up: GiveUp::Exhausted,
                last: Some(err),
            });
        }
        let wait = err.retry_after().unwrap_or_else(|| policy.backoff(attempt));
        // `checked_add` is `None` for a wait too large to represent: past any deadline.
        if Instant::now()
            .checked_add(wait)
            .is_none_or(|resume| resume >= deadline)
        {
            return Err(RetryError {
                give_up: GiveUp::Deadline,
                last: Some(err),
            });
        }
        last = Some(err);
        tokio::time::sleep(wait).await;
    }
    Err(RetryError {
        give_up: GiveUp::Exhausted,
        last,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::arithmetic_side_effects)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[derive(Debug)]
    struct Fail {
        transient: bool,
        after: Option<Duration>,
    }
    impl Transient for Fail {
        fn is_transient(&self) -> bool {
            self.transient
        }
        fn retry_after(&self) -> Option<Duration> {
            self.after
        }
    }

    fn open(_: u32) -> Result<(), GiveUp> {
        Ok(())
    }

    fn policy(attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts: attempts,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(300),
            jitter: false,
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = policy(5);
        let waits: Vec<u64> = (1..=4).map(|a| p.backoff(a).as_millis() as u64).collect();
        assert_eq!(waits, [100, 200, 300, 300]);
    }

    #[test]
    fn jittered_backoff_stays_in_the_upper_half() {
        let p = RetryPolicy {
            jitter: true,
            ..policy(5)
        };
        for _ in 0..200 {
            let w = p.backoff(2);
            assert!(w >= Duration::from_millis(100) && w <= Duration::from_millis(200));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_until_success() {
        let calls = AtomicU32::new(0);
        let deadline = Instant::now() + Duration::from_secs(10);
        let out = retry(&policy(3), deadline, open, |_, _, _| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 2 {
                    Err(Fail {
                        transient: true,
                        after: None,
                    })
                } else {
                    Ok(n)
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(out, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn non_transient_failure_stops_at_once() {
        let calls = AtomicU32::new(0);
        let deadline = Instant::now() + Duration::from_secs(10);
        let err = retry(&policy(3), deadline, open, |_, _, _| {
            calls.fetch_add(1, Ordering::SeqCst);
            async {
                Err::<(), _>(Fail {
                    transient: false,
                    after: None,
                })
            }
        })
        .await
        .unwrap_err();
        assert_eq!(err.give_up, GiveUp::NonRetryable);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_past_the_deadline_gives_up_without_waiting() {
        let start = Instant::now();
        let deadline = start + Duration::from_secs(2);
        let err = retry(&policy(3), deadline, open, |_, _, _| async {
            Err::<(), _>(Fail {
                transient: true,
                after: Some(Duration::from_secs(30)),
            })
        })
        .await
        .unwrap_err();
        assert_eq!(err.give_up, GiveUp::Deadline);
        assert!(Instant::now() - start < Duration::from_millis(1));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_too_large_for_an_instant_gives_up_at_the_deadline() {
        let deadline = Instant::now() + Duration::from_secs(2);
        let err = retry(&policy(3), deadline, open, |_, _, _| async {
            Err::<(), _>(Fail {
                transient: true,
                after: Some(Duration::from_secs(u64::MAX)),
            })
        })
        .await
        .unwrap_err();
        assert_eq!(err.give_up, GiveUp::Deadline);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_waited_exactly() {
        let start = Instant::now();
        let calls = AtomicU32::new(0);
        let deadline = start + Duration::from_secs(10);
        retry(&policy(2), deadline, open, |_, _, _| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    Err(Fail {
                        transient: true,
                        after: Some(Duration::from_secs(3)),
                    })
                } else {
                    Ok(())
                }
            }
        })
        .await
        .unwrap();
        assert_eq!((Instant::now() - start).as_secs(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_gate_stops_before_the_attempt() {
        let calls = AtomicU32::new(0);
        let deadline = Instant::now() + Duration::from_secs(10);
        let gate = |attempt: u32| {
            if attempt < 2 {
                Ok(())
            } else {
                Err(GiveUp::Budget)
            }
        };
        let err = retry(&policy(3), deadline, gate, |_, _, _| {
            calls.fetch_add(1, Ordering::SeqCst);
            async {
                Err::<(), _>(Fail {
                    transient: true,
                    after: None,
                })
            }
        })
        .await
        .unwrap_err();
        assert_eq!(err.give_up, GiveUp::Budget);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(err.last.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn all_attempts_failing_reports_exhausted() {
        let deadline = Instant::now() + Duration::from_secs(10);
        let err = retry(&policy(3), deadline, open, |_, _, _| async {
            Err::<(), _>(Fail {
                transient: true,
                after: None,
            })
        })
        .await
        .unwrap_err();
        assert_eq!(err.give_up, GiveUp::Exhausted);
        assert!(err.last.is_some());
    }
}
