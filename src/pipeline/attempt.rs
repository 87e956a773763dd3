//! One model call, measured, counted, logged and reported to its tier's breaker, the
//! same way whether it finished or was abandoned at the deadline.

use super::Pipeline;
use super::model::{self, ModelClient, UpstreamError};
use crate::resilience::breaker::Permit;
use crate::stats::Stats;
use crate::telemetry::Metrics;

impl Pipeline {
    /// One model call (`calling`), measured, counted, logged, and reported to the tier's
    /// breaker; a call cut off by the deadline (its future dropped) is recorded too, by
    /// the same [`Attempt::record`].
    pub(super) async fn record_attempt(
        &self,
        client: &ModelClient,
        request_id: &str,
        attempt: u32,
        permit: Permit<'_>,
        calling: impl std::future::Future<Output = Result<model::Completion, UpstreamError>>,
    ) -> Result<model::Completion, UpstreamError> {
        let mut call = Attempt {
            metrics: &self.metrics,
            stats: &self.stats,
            request_id,
            client,
            attempt,
            started: std::time::Instant::now(),
            recorded: false,
        };
        let result = calling.await;
        match &result {
            Ok(_) => permit.success(),
            // A refused request says nothing of the provider's health.
            Err(e) if e.kind == model::ErrorKind::ClientError => permit.neutral(),
            Err(_) => permit.failure(),
        }
        call.record(result.as_ref().err());
        result
    }
}

/// One model call being made. Dropped before it was recorded (its future abandoned at the
/// request deadline), it records itself as a timeout, so no call goes unrecorded.
struct Attempt<'a> {
    metrics: &'a Metrics,
    stats: &'a Stats,
    request_id: &'a str,
    client: &'a ModelClient,
    attempt: u32,
    started: std::time::Instant,
    recorded: bool,
}

impl Attempt<'_> {
    /// Counts the call in `qa_upstream_attempts_total` and `qa_upstream_duration_seconds`,
    /// logs it, and puts a failure in the monitor. `error` is `None` for a success.
    fn record(&mut self, error: Option<&UpstreamError>) {
        self.recorded = true;
        let client = self.client;
        let tier = client.tier.as_str();
        let elapsed = self.started.elapsed();
        self.metrics
            .upstream_duration
            .with_label_values(&[tier])
            .observe(elapsed.as_secs_f64());
        let outcome = error.map_or("success", |e| e.kind.as_str());
        self.metrics
            .upstream_attempts
            .with_label_values(&[tier, &client.model, outcome])
            .inc();
        let duration_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        let attempt = self.attempt;
        match error {
            None => tracing::info!(
                tier,
                model = %client.model,
                attempt,
                outcome,
                duration_ms,
                "model call"
            ),
            Some(e) => {
                tracing::warn!(
                    tier,
                    model = %client.model,
                    attempt,
                    outcome,
                    duration_ms,
                    error = %e.message,
                    "model call failed"
                );
                self.stats.record_error(
                    self.request_id,
                    client.tier,
                    &client.model,
                    e.kind,
                    &e.public_message(),
                    attempt,
                );
            }
        }
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.recorded {
            let abandoned = UpstreamError::abandoned();
            self.record(Some(&abandoned));
        }
    }
}
