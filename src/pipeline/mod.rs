//! The answer pipeline: an ordered walk over the tiers, each failure recorded and the
//! next tier tried, inside one deadline.
//!
//! ```text
//! fresh cache (memory, then Redis) -> primary model (retried) -> secondary model (retried)
//!   -> canned answers -> stale cache -> default reply
//! ```
//!
//! Past the deadline no model call starts and calls still running are abandoned; the
//! tiers after the models cannot fail, so every walk ends with an answer. A model's answer
//! is cached after the walk, off the response path.

pub mod cache;
pub mod canned;
pub mod model;
pub mod normalize;

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::resilience::retry::{GiveUp, retry};
use crate::stats::Stats;
use crate::telemetry::Metrics;

use cache::{AnswerCache, CachedAnswer};
use canned::CannedAnswers;
use model::{ModelClient, UpstreamError};

/// The reply when every other tier has nothing.
pub const DEFAULT_REPLY: &str = "抱歉,系统暂时无法处理您的请求。请稍后重试或联系人工客服。";

/// Which tier gave an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Cache = 0,
    Primary = 1,
    Secondary = 2,
    Canned = 3,
    Stale = 4,
    Default = 5,
}

impl Source {
    pub const COUNT: usize = 6;
    pub const ALL: [Source; Source::COUNT] = [
        Source::Cache,
        Source::Primary,
        Source::Secondary,
        Source::Canned,
        Source::Stale,
        Source::Default,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Source::Cache => "cache",
            Source::Primary => "primary",
            Source::Secondary => "secondary",
            Source::Canned => "canned",
            Source::Stale => "stale",
            Source::Default => "default",
        }
    }

    /// Whether the answer is less than the best the service can give.
    pub fn degraded(self) -> bool {
        !matches!(self, Source::Cache | Source::Primary)
    }
}

/// A model tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Primary,
    Secondary,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Primary => "primary",
            Tier::Secondary => "secondary",
        }
    }

    fn source(self) -> Source {
        match self {
            Tier::Primary => Source::Primary,
            Tier::Secondary => Source::Secondary,
        }
    }
}

/// Why a model tier gave no answer: the `reason` label of `qa_fallbacks_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FallbackReason {
    Exhausted,
    NonRetryable,
    Deadline,
    NotConfigured,
}

impl FallbackReason {
    pub const ALL: [FallbackReason; 4] = [
        FallbackReason::Exhausted,
        FallbackReason::NonRetryable,
        FallbackReason::Deadline,
        FallbackReason::NotConfigured,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FallbackReason::Exhausted => "exhausted",
            FallbackReason::NonRetryable => "non_retryable",
            FallbackReason::Deadline => "deadline",
            FallbackReason::NotConfigured => "not_configured",
        }
    }
}

impl From<GiveUp> for FallbackReason {
    fn from(g: GiveUp) -> Self {
        match g {
            GiveUp::Exhausted => FallbackReason::Exhausted,
            GiveUp::NonRetryable => FallbackReason::NonRetryable,
            GiveUp::Deadline => FallbackReason::Deadline,
        }
    }
}

/// A model tier as configured: a client, or a note that it is skipped.
pub enum TierSlot {
    Configured(ModelClient),
    NotConfigured { tier: Tier, model: String },
}

impl TierSlot {
    pub fn tier(&self) -> Tier {
        match self {
            TierSlot::Configured(c) => c.tier,
            TierSlot::NotConfigured { tier, .. } => *tier,
        }
    }

    pub fn model(&self) -> &str {
        match self {
            TierSlot::Configured(c) => &c.model,
            TierSlot::NotConfigured { model, .. } => model,
        }
    }

    pub fn is_configured(&self) -> bool {
        matches!(self, TierSlot::Configured(_))
    }
}

/// The answer to one question.
#[derive(Debug, Clone)]
pub struct Answer {
    pub text: Arc<str>,
    pub source: Source,
    pub model: Option<Arc<str>>,
}

pub struct Pipeline {
    pub cache: Arc<AnswerCache>,
    pub tiers: Vec<TierSlot>,
    pub canned: Arc<CannedAnswers>,
    pub metrics: Metrics,
    pub stats: Arc<Stats>,
    pub request_timeout: Duration,
}

impl Pipeline {
    /// Walks the tiers for `question` (already trimmed and checked) and returns the first
    /// answer. Never fails.
    #[tracing::instrument(name = "pipeline", skip_all)]
    pub async fn answer(&self, question: &str) -> Answer {
        let deadline = Instant::now() + self.request_timeout;
        let normalized = normalize::normalize(question);
        let key = self.cache.key(&normalized);

        // A lookup stuck past the deadline yields nothing rather than holding the request.
        let found = tokio::time::timeout_at(deadline, self.cache.lookup(&key))
            .await
            .unwrap_or_default();
        if let Some(hit) = found.fresh {
            return Answer {
                text: hit.answer,
                source: Source::Cache,
                model: Some(hit.model),
            };
        }

        for slot in &self.tiers {
            if let Some(answer) = self.try_tier(slot, question, deadline).await {
                let entry = CachedAnswer {
                    answer: answer.text.clone(),
                    model: answer.model.clone().unwrap_or_else(|| Arc::from("")),
                    written_at_ms: cache::now_ms(),
                };
                self.cache.store(key, entry).await;
                return answer;
            }
        }

        if let Some(text) = self.canned.get(&normalized) {
            return Answer {
                text,
                source: Source::Canned,
                model: None,
            };
        }
        if let Some(stale) = found.stale {
            return Answer {
                text: stale.answer,
                source: Source::Stale,
                model: Some(stale.model),
            };
        }
        Answer {
            text: Arc::from(DEFAULT_REPLY),
            source: Source::Default,
            model: None,
        }
    }

    /// One model tier with its retries; `None` when it gives no answer (recorded as a
    /// fallback with its reason).
    async fn try_tier(&self, slot: &TierSlot, question: &str, deadline: Instant) -> Option<Answer> {
        let client = match slot {
            TierSlot::Configured(c) => c,
            TierSlot::NotConfigured { tier, .. } => {
                self.fallback(*tier, FallbackReason::NotConfigured);
                return None;
            }
        };
        if Instant::now() >= deadline {
            self.fallback(client.tier, FallbackReason::Deadline);
            return None;
        }
        let result = retry(&client.retry, deadline, |attempt, time_left| {
            self.attempt(client, question, attempt, time_left)
        })
        .await;
        match result {
            Ok(c) => Some(Answer {
                text: Arc::from(c.text),
                source: client.tier.source(),
                model: Some(Arc::from(c.model)),
            }),
            Err(e) => {
                tracing::warn!(
                    tier = client.tier.as_str(),
                    model = %client.model,
                    reason = FallbackReason::from(e.give_up).as_str(),
                    last_error = e.last.as_ref().map(|l| l.message.as_str()),
                    "model tier gave no answer; falling back"
                );
                self.fallback(client.tier, e.give_up.into());
                None
            }
        }
    }

    /// One model call, measured, counted and logged.
    async fn attempt(
        &self,
        client: &ModelClient,
        question: &str,
        attempt: u32,
        time_left: Duration,
    ) -> Result<model::Completion, UpstreamError> {
        let tier = client.tier.as_str();
        let timeout = client.attempt_timeout.min(time_left);
        let started = std::time::Instant::now();
        let guard = AbandonedAttempt {
            metrics: &self.metrics,
            stats: &self.stats,
            client,
            attempt,
            started,
            done: false,
        };
        let result = client.complete(question, timeout).await;
        let mut guard = guard;
        guard.done = true;
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
                self.stats
                    .record_error(client.tier, &client.model, e.kind, &e.message, attempt);
            }
        }
        result
    }

    fn fallback(&self, tier: Tier, reason: FallbackReason) {
        self.metrics
            .fallbacks
            .with_label_values(&[tier.as_str(), reason.as_str()])
            .inc();
    }
}

/// Counts a model call cut off by the request deadline (its future dropped mid-flight)
/// as a timeout, so no call goes unrecorded.
struct AbandonedAttempt<'a> {
    metrics: &'a Metrics,
    stats: &'a Stats,
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
            self.client.tier,
            &self.client.model,
            kind,
            "abandoned at the request deadline",
            self.attempt,
        );
    }
}
