//! The retry budget of a tier, after tower's `retry/budget`: every first attempt deposits
//! `ratio` of a retry, every retry withdraws one, over a sliding window, with a floor of
//! `min_per_sec` retries a second. When the provider is down, retries stop at that share
//! instead of multiplying its load.

#![deny(clippy::arithmetic_side_effects)]

use std::sync::Mutex;
use std::time::Instant;

use crate::config::RetryBudgetConfig;

pub struct RetryBudget {
    ratio: f64,
    floor: f64,
    started: Instant,
    /// Per-second `(second, first attempts, retries)` buckets.
    buckets: Mutex<Vec<(u64, u32, u32)>>,
}

impl RetryBudget {
    pub fn new(cfg: &RetryBudgetConfig) -> RetryBudget {
        let window = cfg.window_secs.max(1);
        RetryBudget {
            ratio: cfg.ratio,
            floor: f64::from(cfg.min_per_sec) * window as f64,
            started: Instant::now(),
            buckets: Mutex::new(vec![(u64::MAX, 0, 0); window as usize]),
        }
    }

    fn with_bucket<T>(&self, f: impl FnOnce(&mut (u64, u32, u32), u32, u32) -> T) -> Option<T> {
        let mut buckets = self.buckets.lock().ok()?;
        let now = self.started.elapsed().as_secs();
        let len = buckets.len() as u64;
        let (firsts, retries) = buckets
            .iter()
            .filter(|(s, _, _)| *s != u64::MAX && s.saturating_add(len) > now)
            .fold((0u32, 0u32), |(f, r), (_, bf, br)| {
                (f.saturating_add(*bf), r.saturating_add(*br))
            });
        let slot = now.checked_rem(len).unwrap_or(0) as usize;
        let bucket = buckets.get_mut(slot)?;
        if bucket.0 != now {
            *bucket = (now, 0, 0);
        }
        Some(f(bucket, firsts, retries))
    }

    /// Counts a first attempt.
    pub fn deposit(&self) {
        self.with_bucket(|b, _, _| b.1 = b.1.saturating_add(1));
    }

    /// Takes one retry from the budget; `false` when it is spent.
    pub fn withdraw(&self) -> bool {
        let (ratio, floor) = (self.ratio, self.floor);
        self.with_bucket(|b, firsts, retries| {
            let allowed = floor + ratio * f64::from(firsts);
            if f64::from(retries) + 1.0 <= allowed {
                b.2 = b.2.saturating_add(1);
                true
            } else {
                false
            }
        })
        .unwrap_or(true)
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_capped_at_the_floor_plus_a_share_of_first_attempts() {
        let b = RetryBudget::new(&RetryBudgetConfig {
            ratio: 0.2,
            min_per_sec: 1,
            window_secs: 10,
        });
        for _ in 0..100 {
            b.deposit();
        }
        let granted = (0..100).filter(|_| b.withdraw()).count();
        assert_eq!(granted, 10 + 20, "floor 1/s x 10 s, plus 20% of 100");
    }

    #[test]
    fn a_zero_budget_allows_no_retry() {
        let b = RetryBudget::new(&RetryBudgetConfig {
            ratio: 0.0,
            min_per_sec: 0,
            window_secs: 1,
        });
        b.deposit();
        assert!(!b.withdraw());
    }
}
