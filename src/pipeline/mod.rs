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
//! is cached after the walk, off the response path. Each model tier sits behind a circuit
//! breaker and a retry budget; identical questions in flight at once share one walk.

pub mod cache;
pub mod canned;
pub mod model;
pub mod normalize;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::resilience::breaker::{Breaker, Permit};
use crate::resilience::budget::RetryBudget;
use crate::resilience::retry::{GiveUp, retry};
use crate::stats::Stats;
use crate::telemetry::Metrics;

use cache::{AnswerCache, CachedAnswer};
use canned::{CannedAnswers, Lookup};
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
    CircuitOpen,
    Budget,
}

impl FallbackReason {
    pub const ALL: [FallbackReason; 6] = [
        FallbackReason::Exhausted,
        FallbackReason::NonRetryable,
        FallbackReason::Deadline,
        FallbackReason::NotConfigured,
        FallbackReason::CircuitOpen,
        FallbackReason::Budget,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FallbackReason::Exhausted => "exhausted",
            FallbackReason::NonRetryable => "non_retryable",
            FallbackReason::Deadline => "deadline",
            FallbackReason::NotConfigured => "not_configured",
            FallbackReason::CircuitOpen => "circuit_open",
            FallbackReason::Budget => "budget",
        }
    }
}

impl From<GiveUp> for FallbackReason {
    fn from(g: GiveUp) -> Self {
        match g {
            GiveUp::Exhausted => FallbackReason::Exhausted,
            GiveUp::NonRetryable => FallbackReason::NonRetryable,
            GiveUp::Deadline => FallbackReason::Deadline,
            GiveUp::CircuitOpen => FallbackReason::CircuitOpen,
            GiveUp::Budget => FallbackReason::Budget,
        }
    }
}

/// A configured model tier with what guards it.
pub struct GuardedTier {
    pub client: ModelClient,
    pub breaker: Breaker,
    pub budget: RetryBudget,
}

/// A model tier as configured: a guarded client, or a note that it is skipped.
pub enum TierSlot {
    Configured(Box<GuardedTier>),
    NotConfigured { tier: Tier, model: String },
}

impl TierSlot {
    pub fn tier(&self) -> Tier {
        match self {
            TierSlot::Configured(g) => g.client.tier,
            TierSlot::NotConfigured { tier, .. } => *tier,
        }
    }

    pub fn model(&self) -> &str {
        match self {
            TierSlot::Configured(g) => &g.client.model,
            TierSlot::NotConfigured { model, .. } => model,
        }
    }

    /// `closed`, `open`, `half_open` or `not_configured`, as `/readyz` shows it.
    pub fn state(&self) -> &'static str {
        match self {
            TierSlot::Configured(g) => g.breaker.state().as_str(),
            TierSlot::NotConfigured { .. } => "not_configured",
        }
    }
}

/// The answer to one question.
#[derive(Debug, Clone)]
pub struct Answer {
    pub text: Arc<str>,
    pub source: Source,
    pub model: Option<Arc<str>>,
    /// Time spent waiting on others (model calls, Redis, an identical request in
    /// flight): the request's duration minus this is the service's own overhead.
    pub external: Duration,
    /// For a canned answer: the entry that matched.
    pub canned: Option<CannedMatch>,
}

/// The canned entry behind an answer.
#[derive(Debug, Clone)]
pub struct CannedMatch {
    /// The entry's question, in the answer's language.
    pub question: Arc<str>,
    /// In `[0, 1]`.
    pub score: f64,
    /// Answered before the models (`canned.answer_first_score`): not degraded.
    pub before_models: bool,
}

impl Answer {
    /// Whether the answer is less than the best the service can give: a canned answer
    /// given before the models, on a sure match, is not.
    pub fn degraded(&self) -> bool {
        self.source.degraded() && !self.canned.as_ref().is_some_and(|c| c.before_models)
    }
}

/// A question the fresh cache did not have, with what the rest of the walk needs.
pub struct Miss {
    question: String,
    key: String,
    stale: Option<CachedAnswer>,
    deadline: Instant,
    external: Duration,
}

/// Identical questions in flight: the leader's answer, once it has one.
type Flights = Mutex<HashMap<String, watch::Receiver<Option<Answer>>>>;

pub struct Pipeline {
    pub cache: Arc<AnswerCache>,
    pub tiers: Vec<TierSlot>,
    pub canned: Arc<CannedAnswers>,
    pub metrics: Metrics,
    pub stats: Arc<Stats>,
    pub request_timeout: Duration,
    flights: Flights,
}

/// Removes a leader's flight when it ends, however it ends (answer, panic, cancellation),
/// so that no follower waits on a flight that will never land.
struct FlightGuard<'a> {
    flights: &'a Flights,
    key: &'a str,
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut f) = self.flights.lock() {
            f.remove(self.key);
        }
    }
}

enum Role {
    Leader(watch::Sender<Option<Answer>>),
    Follower(watch::Receiver<Option<Answer>>),
}

impl Pipeline {
    pub fn new(
        cache: Arc<AnswerCache>,
        tiers: Vec<TierSlot>,
        canned: Arc<CannedAnswers>,
        metrics: Metrics,
        stats: Arc<Stats>,
        request_timeout: Duration,
    ) -> Pipeline {
        Pipeline {
            cache,
            tiers,
            canned,
            metrics,
            stats,
            request_timeout,
            flights: Mutex::new(HashMap::new()),
        }
    }

    /// Walks the tiers for `question` (already trimmed and checked) and returns the first
    /// answer. Never fails.
    pub async fn answer(&self, question: &str) -> Answer {
        match self.lookup(question, Instant::now()).await {
            Ok(hit) => hit,
            Err(miss) => self.resolve(miss).await,
        }
    }

    /// The fresh cache: an answer, or what the rest of the walk needs. Bounded by the
    /// Redis lookup timeout; the request's deadline runs from `started`.
    pub async fn lookup(&self, question: &str, started: Instant) -> Result<Answer, Miss> {
        let deadline = started + self.request_timeout;
        let normalized = normalize::normalize(question);
        let key = self.cache.key(&normalized);
        let found = self.cache.lookup(&key).await;
        let external = found.redis_time;
        match found.fresh {
            Some(hit) => Ok(Answer {
                text: hit.answer,
                source: Source::Cache,
                model: Some(hit.model),
                external,
                canned: None,
            }),
            None => Err(Miss {
                question: question.to_string(),
                key,
                stale: found.stale,
                deadline,
                external,
            }),
        }
    }

    /// The tiers after the fresh cache, for a question the cache did not have.
    pub async fn resolve(&self, miss: Miss) -> Answer {
        let Miss {
            question,
            key,
            stale,
            deadline,
            mut external,
        } = miss;
        let question = question.as_str();
        // Identical questions in flight share one walk.
        let role = match self.flights.lock() {
            Ok(mut flights) => match flights.get(&key) {
                Some(rx) => Role::Follower(rx.clone()),
                None => {
                    let (tx, rx) = watch::channel(None);
                    flights.insert(key.clone(), rx);
                    Role::Leader(tx)
                }
            },
            Err(_) => Role::Leader(watch::channel(None).0),
        };
        let leader = match role {
            Role::Follower(mut rx) => {
                self.metrics.coalesced.inc();
                let waited = Instant::now();
                let shared: Option<Answer> =
                    match tokio::time::timeout_at(deadline, rx.wait_for(Option::is_some)).await {
                        Ok(Ok(answer)) => answer.clone(),
                        _ => None,
                    };
                if let Some(answer) = shared {
                    return Answer {
                        external: external + waited.elapsed(),
                        ..answer
                    };
                }
                // The leader is gone without an answer, or too slow: walk alone.
                external += waited.elapsed();
                None
            }
            Role::Leader(tx) => Some((
                tx,
                FlightGuard {
                    flights: &self.flights,
                    key: &key,
                },
            )),
        };
        let answer = self
            .walk(question, key.clone(), stale, deadline, external)
            .await;
        if let Some((tx, _guard)) = leader {
            let _ = tx.send(Some(answer.clone()));
        }
        answer
    }

    /// The tiers after the fresh cache.
    async fn walk(
        &self,
        question: &str,
        key: String,
        stale: Option<CachedAnswer>,
        deadline: Instant,
        mut external: Duration,
    ) -> Answer {
        // The canned answers are matched once: before the models when a sure match may
        // answer first, else only when the models gave nothing.
        let mut lookup = None;
        if self.canned.settings.answer_first_score.is_some() {
            let first = self.canned_lookup(question);
            if let Some(m) = first.matched()
                && self.canned.answer_first(m)
            {
                return canned_answer(m, true, external);
            }
            lookup = Some(first);
        }
        let language = self.canned.faq().language_of(question);
        let language = (language != self.canned.settings.default_language).then_some(language);
        for slot in &self.tiers {
            let started = Instant::now();
            let answer = self.try_tier(slot, question, language, deadline).await;
            external += started.elapsed();
            if let Some(mut answer) = answer {
                let entry = CachedAnswer {
                    answer: answer.text.clone(),
                    model: answer.model.clone().unwrap_or_else(|| Arc::from("")),
                    written_at_ms: cache::now_ms(),
                };
                self.cache.store(key, entry).await;
                answer.external = external;
                return answer;
            }
        }

        let lookup = lookup.unwrap_or_else(|| self.canned_lookup(question));
        if let Some(m) = lookup.matched() {
            return canned_answer(m, false, external);
        }
        if let Some(stale) = stale {
            return Answer {
                text: stale.answer,
                source: Source::Stale,
                model: Some(stale.model),
                external,
                canned: None,
            };
        }
        Answer {
            text: self.canned.default_reply(lookup.language),
            source: Source::Default,
            model: None,
            external,
            canned: None,
        }
    }

    /// Matches the question against the canned answers, counted in
    /// `qa_canned_matches_total` and `qa_canned_match_score`.
    pub fn canned_lookup(&self, question: &str) -> Lookup {
        let lookup = self.canned.lookup(question);
        self.metrics
            .canned_matches
            .with_label_values(&[lookup.result().as_str()])
            .inc();
        if let Some(best) = &lookup.best {
            self.metrics.canned_match_score.observe(best.score);
        }
        lookup
    }

    /// One model tier with its retries; `None` when it gives no answer (recorded as a
    /// fallback with its reason).
    async fn try_tier(
        &self,
        slot: &TierSlot,
        question: &str,
        language: Option<&str>,
        deadline: Instant,
    ) -> Option<Answer> {
        let guarded = match slot {
            TierSlot::Configured(g) => g,
            TierSlot::NotConfigured { tier, .. } => {
                self.fallback(*tier, FallbackReason::NotConfigured);
                return None;
            }
        };
        let client = &guarded.client;
        if Instant::now() >= deadline {
            self.fallback(client.tier, FallbackReason::Deadline);
            return None;
        }
        // Before each attempt: a retry must fit in the budget, and the breaker must let
        // the call through. The budget goes first so a refused retry never takes the
        // breaker's one half-open probe.
        let gate = |attempt: u32| {
            if attempt == 1 {
                guarded.budget.deposit();
            } else if !guarded.budget.withdraw() {
                return Err(GiveUp::Budget);
            }
            guarded.breaker.try_acquire().ok_or(GiveUp::CircuitOpen)
        };
        let result = retry(
            &client.retry,
            deadline,
            gate,
            |attempt, time_left, permit| {
                self.attempt(client, question, language, attempt, time_left, permit)
            },
        )
        .await;
        match result {
            Ok(c) => Some(Answer {
                text: Arc::from(c.text),
                source: client.tier.source(),
                model: Some(Arc::from(c.model)),
                external: Duration::ZERO,
                canned: None,
            }),
            Err(e) => {
                let reason = FallbackReason::from(e.give_up);
                tracing::warn!(
                    tier = client.tier.as_str(),
                    model = %client.model,
                    reason = reason.as_str(),
                    last_error = e.last.as_ref().map(|l| l.message.as_str()),
                    "model tier gave no answer; falling back"
                );
                self.fallback(client.tier, reason);
                None
            }
        }
    }

    /// One model call, measured, counted, logged, and reported to the tier's breaker.
    async fn attempt(
        &self,
        client: &ModelClient,
        question: &str,
        language: Option<&str>,
        attempt: u32,
        time_left: Duration,
        permit: Permit<'_>,
    ) -> Result<model::Completion, UpstreamError> {
        let tier = client.tier.as_str();
        let timeout = client.attempt_timeout.min(time_left);
        let started = std::time::Instant::now();
        let mut guard = AbandonedAttempt {
            metrics: &self.metrics,
            stats: &self.stats,
            client,
            attempt,
            started,
            done: false,
        };
        let result = client.complete(question, language, timeout).await;
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
/// The answer of a matched canned entry.
fn canned_answer(m: &canned::Candidate, before_models: bool, external: Duration) -> Answer {
    Answer {
        text: m.answer.clone(),
        source: Source::Canned,
        model: None,
        external,
        canned: Some(CannedMatch {
            question: m.question.clone(),
            score: m.score,
            before_models,
        }),
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
