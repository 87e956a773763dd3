//! One model call, measured, counted, logged and reported to its tier's breaker, the
//! same way whether it finished or was abandoned at the deadline.

use super::Pipeline;
use super::model::{self, ModelClient, UpstreamError};
use crate::resilience::breaker::Permit;
use crate::stats::Stats;
use crate::telemetry::Metrics;

impl Pipeline {
    /// One model call (`calling`), measured, counted, logged, and reported to the tier's
    /// breaker; a call cut off by the deadline (its future dropped) is recorded too.
    pub(super) async fn record_attempt(
        &self,
        client: &ModelClient,
        request_id: &str,
        attempt: u32,
        permit: Permit<'_>,
        calling: impl std::future::Future<Output = Result<model::Completion, UpstreamError>>,
    ) -> Result<model::Completion, UpstreamError> {
        let tier = client.tier.as_str();
        let started = std::time::Instant::now();
        let mut guard = AbandonedAttempt {
            metrics: &self.metrics,
            stats: &self.stats,
            request_id,
            client,
            attempt,
            started,
            done: false,
        };
        let result = calling.await;
        guard.done = true;
        match &result {
            Ok(_) => permit.success(),
            // A refused request says nothing of the provider's health.
            Err(e) if e.kind == model::ErrorKind::ClientError => permit.neutral(),
            Err(_) => permit.failure(),
        }
        let elapsed = started.elapsed();
        self.metrics
            .upstream_duration
            .with_label_values(&[tier])
            .observe(elapsed.as_secs_f64());
        let outcome = match &result {
            Ok(_) => "success",
            Err(e) => e.kind.as_str(),
        };
        self.metrics
            .upstream_attempts
            .with_label_values(&[tier, &client.model, outcome])
            .inc();
        match &result {
            Ok(_) => tracing::info!(
                tier,
                model = %client.model,
                attempt,
                outcome,
                duration_ms = elapsed.as_millis() as u64,
                "model call"
            ),
            Err(e) => {
                tracing::warn!(
                    tier,
                    model = %client.model,
                    attempt,
                    outcome,
                    duration_ms = elapsed.as_millis() as u64,
                    error = %e.message,
                    "model call failed"
                );
                self.stats.record_error(
                    request_id,
                    client.tier,
                    &client.model,
                    e.kind,
                    &e.public_message(),
                    attempt,
                );
            }
        }
        result
    }
}

/// Counts a model call cut off by the request deadline (its future dropped mid-flight)
/// as a timeout, so no call goes unrecorded.
struct AbandonedAttempt<'a> {
    metrics: &'a Metrics,
    stats: &'a Stats,
    request_id: &'a str,
    client: &'a ModelClient,
    attempt: u32,
    started: std::time::Instant,
    done: bool,
}

impl Drop for AbandonedAttempt<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let tier = self.client.tier.as_str();
        let kind = model::ErrorKind::Timeout;
        self.metrics
            .upstream_duration
            .with_label_values(&[tier])
            .observe(self.started.elapsed().as_secs_f64());
        self.metrics
            .upstream_attempts
            .with_label_values(&[tier, &self.client.model, kind.as_str()])
            .inc();
        self.stats.record_error(
            self.request_id,
            self.client.tier,
            &self.client.model,
            kind,
            "abandoned at the request deadline",
            self.attempt,
        );
    }
}
