//! What every handler shares: the configuration, the pipeline, the metrics and the
//! monitor, the draining flag, the load-shedding slots, the clients and their limits. `app.rs` builds it; the routes,
//! guards and middleware read it (and import nothing from `app.rs`).

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::clients::Clients;
use crate::config::Config;
use crate::limits::Limiter;
use crate::pipeline::{Pipeline, Source};
use crate::stats::Stats;
use crate::telemetry::{Api, Metrics};

/// What every handler shares.
#[derive(Clone)]
pub struct AppState(pub(crate) Arc<Shared>);

pub struct Shared {
    pub config: Arc<Config>,
    pub pipeline: Arc<Pipeline>,
    pub metrics: Metrics,
    pub stats: Arc<Stats>,
    /// Set once shutdown has begun: `/readyz` answers 503.
    pub draining: AtomicBool,
    /// Permits for requests in flight on the answering routes.
    pub inflight: Arc<Semaphore>,
    /// Who the clients are (`clients.file`, addresses).
    pub clients: Arc<Clients>,
    /// Their rate and daily budget.
    pub limiter: Arc<Limiter>,
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    /// Counts a refused request.
    pub fn reject(&self, code: &str) {
        self.metrics.rejected.with_label_values(&[code]).inc();
    }

    /// Counts a refused request to an answering route, by API too.
    pub fn reject_api(&self, api: Api, code: &str) {
        self.metrics
            .api_rejected
            .with_label_values(&[api.as_str(), code])
            .inc();
    }

    /// Counts an answer, in the metrics and in the monitor.
    pub fn record_answer(
        &self,
        api: Api,
        source: Source,
        started: std::time::Instant,
        elapsed: Duration,
    ) {
        if let Some((count, duration)) = self.metrics.answers.get(source as usize) {
            count.inc();
            duration.observe(elapsed.as_secs_f64());
        }
        if let Some(count) = self
            .metrics
            .api_answers
            .get(api as usize)
            .and_then(|by_source| by_source.get(source as usize))
        {
            count.inc();
        }
        self.stats.record_answer(api, source, started + elapsed);
    }
}
