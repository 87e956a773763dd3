//! The answer and error monitor: totals by source, the four ratios over a sliding window,
//! the recent model errors, and the error-ratio alert (logged once when it starts firing
//! and once when it resolves). `/stats` shows it; `/metrics` copies the ratios to gauges.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use serde::Serialize;

use crate::pipeline::source::ErrorKind;
use crate::pipeline::source::{Source, Tier};
use crate::telemetry::Api;

/// How many error events `/stats` keeps.
pub const RECENT_ERRORS: usize = 50;

#[derive(Debug, Clone, Serialize)]
pub struct ErrorEvent {
    pub time: String,
    /// The request whose walk made the call (the leader's, for coalesced requests).
    pub request_id: String,
    pub tier: &'static str,
    pub model: String,
    pub kind: &'static str,
    pub message: String,
    pub attempt: u32,
}

/// Counts per source over the last `window_secs`, in one-second buckets.
struct Window {
    secs: u64,
    /// The second the alert was last evaluated on the answer path.
    evaluated: u64,
    /// `(second, counts by source)`; a bucket whose second is too old counts as empty.
    buckets: Vec<(u64, [u64; Source::COUNT])>,
}

impl Window {
    fn new(secs: u64) -> Self {
        Window {
            secs,
            evaluated: u64::MAX,
            buckets: vec![(0, [0; Source::COUNT]); secs as usize],
        }
    }

    fn record(&mut self, now: u64, source: Source) {
        let i = (now % self.secs) as usize;
        let bucket = &mut self.buckets[i];
        if bucket.0 != now {
            *bucket = (now, [0; Source::COUNT]);
        }
        bucket.1[source as usize] += 1;
    }

    fn counts(&self, now: u64) -> [u64; Source::COUNT] {
        let mut total = [0; Source::COUNT];
        for (second, counts) in &self.buckets {
            if *second + self.secs > now && *second <= now {
                for (t, c) in total.iter_mut().zip(counts) {
                    *t += c;
                }
            }
        }
        total
    }
}

/// The four ratios of the contract.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Ratios {
    pub success_ratio: f64,
    pub cache_hit_ratio: f64,
    pub fallback_ratio: f64,
    pub error_ratio: f64,
}

impl Ratios {
    fn from_counts(c: &[u64; Source::COUNT]) -> Ratios {
        let total: u64 = c.iter().sum();
        if total == 0 {
            return Ratios {
                success_ratio: 1.0,
                cache_hit_ratio: 0.0,
                fallback_ratio: 0.0,
                error_ratio: 0.0,
            };
        }
        let n = |s: Source| c[s as usize] as f64;
        let t = total as f64;
        let errors = n(Source::Default);
        Ratios {
            success_ratio: (t - errors) / t,
            cache_hit_ratio: n(Source::Cache) / t,
            fallback_ratio: (n(Source::Secondary) + n(Source::Canned) + n(Source::Stale) + errors)
                / t,
            error_ratio: errors / t,
        }
    }
}

#[derive(Default)]
struct Errors {
    total: u64,
    by_kind: BTreeMap<&'static str, u64>,
    by_tier: BTreeMap<&'static str, u64>,
    recent: VecDeque<ErrorEvent>,
}

pub struct Stats {
    started: Instant,
    window_secs: u64,
    threshold: f64,
    totals: [AtomicU64; Source::COUNT],
    /// Answers by API, by `Api as usize`.
    by_api: [AtomicU64; 2],
    window: Mutex<Window>,
    errors: Mutex<Errors>,
    firing: AtomicBool,
}

impl Stats {
    pub fn new(window_secs: u64, threshold: f64) -> Self {
        Stats {
            started: Instant::now(),
            window_secs,
            threshold,
            totals: Default::default(),
            by_api: Default::default(),
            window: Mutex::new(Window::new(window_secs.max(1))),
            errors: Mutex::new(Errors::default()),
            firing: AtomicBool::new(false),
        }
    }

    fn now(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// Counts an answer. The alert is re-evaluated (a sum over the whole window) at most
    /// once a second on this path, and at once when an error might start it firing.
    pub fn record_answer(&self, api: Api, source: Source, at: Instant) {
        self.totals[source as usize].fetch_add(1, Ordering::Relaxed);
        if let Some(n) = self.by_api.get(api as usize) {
            n.fetch_add(1, Ordering::Relaxed);
        }
        let now = at.saturating_duration_since(self.started).as_secs();
        let new_second = match self.window.lock() {
            Ok(mut w) => {
                w.record(now, source);
                let new = w.evaluated != now;
                w.evaluated = now;
                new
            }
            Err(_) => false,
        };
        let may_fire = source == Source::Default && !self.firing.load(Ordering::Relaxed);
        if new_second || may_fire {
            self.evaluate_alert();
        }
    }

    /// Records a failed model call. `message` is shown to anyone who reads `/stats`: a
    /// status or a kind's sentence, never a host or a cause chain.
    pub fn record_error(
        &self,
        request_id: &str,
        tier: Tier,
        model: &str,
        kind: ErrorKind,
        message: &str,
        attempt: u32,
    ) {
        let event = ErrorEvent {
            time: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            request_id: request_id.to_string(),
            tier: tier.as_str(),
            model: model.to_string(),
            kind: kind.as_str(),
            message: message.to_string(),
            attempt,
        };
        if let Ok(mut e) = self.errors.lock() {
            e.total += 1;
            *e.by_kind.entry(kind.as_str()).or_default() += 1;
            *e.by_tier.entry(tier.as_str()).or_default() += 1;
            if e.recent.len() == RECENT_ERRORS {
                e.recent.pop_front();
            }
            e.recent.push_back(event);
        }
    }

    /// The ratios over the window as of now.
    pub fn ratios(&self) -> Ratios {
        let counts = match self.window.lock() {
            Ok(w) => w.counts(self.now()),
            Err(_) => [0; Source::COUNT],
        };
        Ratios::from_counts(&counts)
    }

    /// Re-evaluates the error alert; logs once on each change of state. Returns whether
    /// it fires.
    pub fn evaluate_alert(&self) -> bool {
        let error_ratio = self.ratios().error_ratio;
        let firing = error_ratio > self.threshold;
        let was = self.firing.swap(firing, Ordering::Relaxed);
        if firing && !was {
            tracing::error!(
                alert = "error_ratio",
                error_ratio,
                threshold = self.threshold,
                window_secs = self.window_secs,
                "alert firing: error ratio over threshold"
            );
        } else if !firing && was {
            tracing::error!(
                alert = "error_ratio",
                error_ratio,
                threshold = self.threshold,
                window_secs = self.window_secs,
                "alert resolved: error ratio back under threshold"
            );
        }
        firing
    }

    /// The `/stats` document.
    pub fn snapshot(&self) -> serde_json::Value {
        let firing = self.evaluate_alert();
        let ratios = self.ratios();
        let mut by_source = serde_json::Map::new();
        let mut total = 0;
        for s in Source::ALL {
            let n = self.totals[s as usize].load(Ordering::Relaxed);
            total += n;
            by_source.insert(s.as_str().into(), n.into());
        }
        let mut by_api = serde_json::Map::new();
        for api in Api::ALL {
            let n = self.by_api[api as usize].load(Ordering::Relaxed);
            by_api.insert(api.as_str().into(), n.into());
        }
        let (errors_total, by_kind, by_tier, recent) = match self.errors.lock() {
            Ok(e) => (
                e.total,
                e.by_kind.clone(),
                e.by_tier.clone(),
                e.recent.iter().rev().cloned().collect::<Vec<_>>(),
            ),
            Err(_) => Default::default(),
        };
        serde_json::json!({
            "total": total,
            "by_source": by_source,
            "by_api": by_api,
            "window_secs": self.window_secs,
            "success_ratio": ratios.success_ratio,
            "cache_hit_ratio": ratios.cache_hit_ratio,
            "fallback_ratio": ratios.fallback_ratio,
            "error_ratio": ratios.error_ratio,
            "errors": {
                "total": errors_total,
                "by_kind": by_kind,
                "by_tier": by_tier,
                "recent": recent,
            },
            "alert": {"threshold": self.threshold, "firing": firing},
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_window_reports_full_success() {
        let w = Window::new(10);
        let r = Ratios::from_counts(&w.counts(5));
        assert_eq!(r.success_ratio, 1.0);
        assert_eq!(r.error_ratio, 0.0);
    }

    #[test]
    fn ratios_follow_the_mix_of_sources() {
        let mut w = Window::new(10);
        for s in [
            Source::Cache,
            Source::Primary,
            Source::Secondary,
            Source::Default,
        ] {
            w.record(3, s);
        }
        let r = Ratios::from_counts(&w.counts(3));
        assert_eq!(r.cache_hit_ratio, 0.25);
        assert_eq!(r.fallback_ratio, 0.5);
        assert_eq!(r.error_ratio, 0.25);
        assert_eq!(r.success_ratio, 0.75);
    }

    #[test]
    fn answers_leave_the_window_after_it_passes() {
        let mut w = Window::new(10);
        w.record(3, Source::Default);
        assert_eq!(Ratios::from_counts(&w.counts(12)).error_ratio, 1.0);
        assert_eq!(Ratios::from_counts(&w.counts(13)).error_ratio, 0.0);
    }

    #[test]
    fn a_reused_bucket_forgets_its_old_second() {
        let mut w = Window::new(10);
        w.record(3, Source::Default);
        w.record(13, Source::Primary);
        let r = Ratios::from_counts(&w.counts(13));
        assert_eq!(r.error_ratio, 0.0);
        assert_eq!(r.success_ratio, 1.0);
    }
}
