//! Circuit breakers, one per dependency (each model tier, Redis).
//!
//! Closed: calls go through; a run of `consecutive_failures` failures, or a failure share
//! of at least `failure_ratio` over the last `window_secs` (once it holds `min_calls`
//! calls), opens it. Open: calls are refused without touching the dependency. After
//! `open_ms` it turns half-open and lets exactly one probe through: success closes it,
//! failure (or a probe abandoned midway) opens it again. Every transition is logged once
//! and mirrored in `qa_circuit_state`.

#![deny(clippy::arithmetic_side_effects)]

use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus::IntGauge;

use crate::config::BreakerConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    HalfOpen,
    Open,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::HalfOpen => "half_open",
            State::Open => "open",
        }
    }

    fn gauge_value(self) -> i64 {
        match self {
            State::Closed => 0,
            State::HalfOpen => 1,
            State::Open => 2,
        }
    }
}

struct Inner {
    state: State,
    consecutive: u32,
    /// Per-second `(second, calls, failures)` buckets of the failure-share window.
    buckets: Vec<(u64, u32, u32)>,
    opened_at: Instant,
    probe_in_flight: bool,
}

pub struct Breaker {
    name: &'static str,
    cfg: BreakerConfig,
    started: Instant,
    inner: Mutex<Inner>,
    gauge: IntGauge,
}

/// Leave to make one call. Record the outcome with [`Permit::success`] or
/// [`Permit::failure`]; dropping it unrecorded counts as a failure when it was the
/// half-open probe (the probe was abandoned), and as nothing otherwise.
pub struct Permit<'a> {
    breaker: &'a Breaker,
    probe: bool,
    recorded: bool,
}

impl Permit<'_> {
    pub fn success(mut self) {
        self.recorded = true;
        self.breaker.record(true, self.probe);
    }

    pub fn failure(mut self) {
        self.recorded = true;
        self.breaker.record(false, self.probe);
    }

    /// The call ended in a way that says nothing of the dependency's health.
    pub fn neutral(mut self) {
        self.recorded = true;
        if self.probe
            && let Ok(mut inner) = self.breaker.inner.lock()
        {
            inner.probe_in_flight = false;
        }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.recorded && self.probe {
            self.breaker.record(false, true);
        }
    }
}

impl Breaker {
    pub fn new(name: &'static str, cfg: &BreakerConfig, gauge: IntGauge) -> Breaker {
        gauge.set(0);
        Breaker {
            name,
            cfg: cfg.clone(),
            started: Instant::now(),
            inner: Mutex::new(Inner {
                state: State::Closed,
                consecutive: 0,
                buckets: vec![(u64::MAX, 0, 0); cfg.window_secs.max(1) as usize],
                opened_at: Instant::now(),
                probe_in_flight: false,
            }),
            gauge,
        }
    }

    /// The state as of now (an open breaker past its delay reads half-open).
    pub fn state(&self) -> State {
        match self.inner.lock() {
            Ok(inner) => match inner.state {
                State::Open if inner.opened_at.elapsed() >= self.open_for() => State::HalfOpen,
                s => s,
            },
            Err(_) => State::Closed,
        }
    }

    fn open_for(&self) -> Duration {
        Duration::from_millis(self.cfg.open_ms)
    }

    /// Leave for one call, or `None` while the breaker is open (or its one probe is out).
    pub fn try_acquire(&self) -> Option<Permit<'_>> {
        let mut inner = self.inner.lock().ok()?;
        let probe = match inner.state {
            State::Closed => false,
            State::Open if inner.opened_at.elapsed() >= self.open_for() => {
                self.transition(&mut inner, State::HalfOpen);
                inner.probe_in_flight = true;
                true
            }
            State::Open => return None,
            State::HalfOpen if inner.probe_in_flight => return None,
            State::HalfOpen => {
                inner.probe_in_flight = true;
                true
            }
        };
        Some(Permit {
            breaker: self,
            probe,
            recorded: false,
        })
    }

    /// A success seen outside a permit (a health check): closes an open breaker early.
    pub fn observe_success(&self) {
        if let Ok(mut inner) = self.inner.lock()
            && inner.state != State::Closed
            && !inner.probe_in_flight
        {
            self.close(&mut inner);
        }
    }

    fn record(&self, success: bool, probe: bool) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        if probe {
            inner.probe_in_flight = false;
        }
        if inner.state != State::Closed {
            if success {
                self.close(&mut inner);
            } else if probe || inner.state == State::HalfOpen {
                inner.opened_at = Instant::now();
                self.transition(&mut inner, State::Open);
            }
            return;
        }
        let now = self.started.elapsed().as_secs();
        let len = inner.buckets.len();
        let slot = now.checked_rem(len as u64).unwrap_or(0) as usize;
        let Some(bucket) = inner.buckets.get_mut(slot) else {
            return;
        };
        if bucket.0 != now {
            *bucket = (now, 0, 0);
        }
        bucket.1 = bucket.1.saturating_add(1);
        if success {
            inner.consecutive = 0;
            return;
        }
        bucket.2 = bucket.2.saturating_add(1);
        inner.consecutive = inner.consecutive.saturating_add(1);
        let window = self.cfg.window_secs;
        let (calls, failures) = inner
            .buckets
            .iter()
            .filter(|(s, _, _)| *s != u64::MAX && s.saturating_add(window) > now)
            .fold((0u32, 0u32), |(c, f), (_, bc, bf)| {
                (c.saturating_add(*bc), f.saturating_add(*bf))
            });
        let by_run = inner.consecutive >= self.cfg.consecutive_failures;
        let by_share = calls >= self.cfg.min_calls
            && f64::from(failures) >= self.cfg.failure_ratio * f64::from(calls);
        if by_run || by_share {
            inner.opened_at = Instant::now();
            self.transition(&mut inner, State::Open);
        }
    }

    fn close(&self, inner: &mut Inner) {
        inner.consecutive = 0;
        for b in inner.buckets.iter_mut() {
            *b = (u64::MAX, 0, 0);
        }
        self.transition(inner, State::Closed);
    }

    fn transition(&self, inner: &mut Inner, to: State) {
        if inner.state == to {
            return;
        }
        let from = inner.state;
        inner.state = to;
        self.gauge.set(to.gauge_value());
        match to {
            State::Open => tracing::warn!(
                dependency = self.name,
                from = from.as_str(),
                to = to.as_str(),
                open_ms = self.cfg.open_ms,
                "circuit breaker opened: skipping the dependency"
            ),
            _ => tracing::info!(
                dependency = self.name,
                from = from.as_str(),
                to = to.as_str(),
                "circuit breaker state changed"
            ),
        }
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn breaker(open_ms: u64) -> Breaker {
        let cfg = BreakerConfig {
            consecutive_failures: 3,
            failure_ratio: 0.5,
            min_calls: 10,
            window_secs: 10,
            open_ms,
        };
        Breaker::new("test", &cfg, IntGauge::new("g", "g").unwrap())
    }

    fn fail(b: &Breaker, n: usize) {
        for _ in 0..n {
            b.try_acquire().unwrap().failure();
        }
    }

    #[test]
    fn a_run_of_failures_opens_it_and_it_refuses_calls() {
        let b = breaker(60_000);
        fail(&b, 2);
        assert_eq!(b.state(), State::Closed);
        fail(&b, 1);
        assert_eq!(b.state(), State::Open);
        assert!(b.try_acquire().is_none());
        assert_eq!(b.gauge.get(), 2);
    }

    #[test]
    fn a_success_resets_the_run() {
        let b = breaker(60_000);
        fail(&b, 2);
        b.try_acquire().unwrap().success();
        fail(&b, 2);
        assert_eq!(b.state(), State::Closed);
    }

    #[test]
    fn a_high_failure_share_opens_it_without_a_run() {
        let b = breaker(60_000);
        for _ in 0..5 {
            b.try_acquire().unwrap().success();
            fail(&b, 1);
        }
        assert_eq!(b.state(), State::Open, "5 of 10 calls failed");
    }

    #[test]
    fn half_open_lets_one_probe_through_and_success_closes_it() {
        let b = breaker(1);
        fail(&b, 3);
        std::thread::sleep(Duration::from_millis(5));
        let probe = b.try_acquire().unwrap();
        assert!(b.try_acquire().is_none(), "only one probe at a time");
        assert_eq!(b.gauge.get(), 1);
        probe.success();
        assert_eq!(b.state(), State::Closed);
        assert!(b.try_acquire().is_some());
    }

    #[test]
    fn a_failed_or_abandoned_probe_opens_it_again() {
        let b = breaker(30);
        fail(&b, 3);
        std::thread::sleep(Duration::from_millis(40));
        b.try_acquire().unwrap().failure();
        assert!(b.try_acquire().is_none());
        std::thread::sleep(Duration::from_millis(40));
        drop(b.try_acquire().unwrap());
        assert!(b.try_acquire().is_none(), "abandoned probe reopens");
    }
}
