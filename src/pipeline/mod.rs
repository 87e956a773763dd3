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
pub mod events;
pub mod model;
pub mod normalize;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::resilience::breaker::{Breaker, Permit};
use crate::resilience::budget::RetryBudget;
use crate::resilience::retry::{GiveUp, retry};
use crate::stats::Stats;
use crate::telemetry::Metrics;

use cache::{AnswerCache, CachedAnswer};
use canned::CannedAnswers;
use events::{Event, EventLog, Producer, Subscriber};
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
    /// The model tiers in the order the walk tries them: the one list that the walk,
    /// the metrics' labels, `/readyz` and the breakers' names are built from.
    pub const ALL: [Tier; 2] = [Tier::Primary, Tier::Secondary];

    /// This tier's section of the configuration.
    pub fn config(self, config: &crate::config::Config) -> &crate::config::TierConfig {
        match self {
            Tier::Primary => &config.primary,
            Tier::Secondary => &config.secondary,
        }
    }

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
    /// Written by more than one model call (a stream broken and continued).
    pub continued: bool,
}

impl Miss {
    /// Time the lookup spent waiting on Redis.
    pub fn external(&self) -> Duration {
        self.external
    }
}

/// What every model call of one walk shares.
struct Call<'a> {
    request_id: &'a str,
    question: &'a str,
    mode: Mode,
    progress: &'a Mutex<Progress>,
    out: &'a Producer,
}

/// A question the fresh cache did not have, with what the rest of the walk needs.
pub struct Miss {
    request_id: Arc<str>,
    question: String,
    normalized: String,
    key: String,
    stale: Option<CachedAnswer>,
    deadline: Instant,
    external: Duration,
}

/// Identical questions in flight: the event log of the walk answering them.
type Flights = Mutex<HashMap<String, Arc<EventLog>>>;

/// How the model tiers are called for a walk: the whole answer at once (JSON `/ask`), or
/// streamed piece by piece, each piece an event as it comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Whole,
    Stream,
}

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
/// so that no later request joins a walk that will never finish.
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

/// What a streamed walk has sent so far, across its attempts and tiers.
#[derive(Default)]
struct Progress {
    /// The text sent to the clients since the walk began.
    sent: String,
    pieces: u32,
    /// Calls that wrote some of `sent`.
    writers: u32,
    /// The tier whose stream broke after text was sent, until the next attempt continues
    /// it (or the walk gives up and resets).
    interrupted: Option<Tier>,
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
    pub async fn answer(self: &Arc<Self>, question: &str, request_id: &Arc<str>) -> Answer {
        let started = Instant::now();
        match self.lookup(question, started, request_id).await {
            Ok(hit) => hit,
            Err(miss) => {
                let normalized = miss.normalized.clone();
                let external = miss.external;
                match self.start(miss, Mode::Whole).answer().await {
                    Some(answer) => Answer {
                        external: external + started.elapsed(),
                        ..answer
                    },
                    None => self.last_resort(&normalized, None, started.elapsed()),
                }
            }
        }
    }

    /// The fresh cache: an answer, or what the rest of the walk needs. Bounded by the
    /// Redis lookup timeout; the request's deadline runs from `started`.
    pub async fn lookup(
        &self,
        question: &str,
        started: Instant,
        request_id: &Arc<str>,
    ) -> Result<Answer, Miss> {
        // `request_timeout` is bounded by config validation; a far instant still never
        // overflows: it saturates to "no deadline sooner than an hour from now".
        let deadline = started
            .checked_add(self.request_timeout)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
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
                continued: false,
            }),
            None => Err(Miss {
                request_id: request_id.clone(),
                question: question.to_string(),
                normalized,
                key,
                stale: found.stale,
                deadline,
                external,
            }),
        }
    }

    /// The tiers after the fresh cache, for a question the cache did not have: joins the
    /// walk already answering the same question, or starts one in a task of its own (so
    /// that a client that leaves never stops it, and its answer is still cached). Read
    /// the walk through the returned subscriber, from its first event on.
    pub fn start(self: &Arc<Self>, miss: Miss, mode: Mode) -> Subscriber {
        let producer = match self.flights.lock() {
            Ok(mut flights) => match flights.get(&miss.key) {
                Some(log) => {
                    self.metrics.coalesced.inc();
                    return log.subscribe();
                }
                None => {
                    let (producer, log) = EventLog::channel();
                    flights.insert(miss.key.clone(), log);
                    producer
                }
            },
            // A poisoned map: walk alone, uncoalesced.
            Err(_) => EventLog::channel().0,
        };
        let subscriber = producer.log().subscribe();
        let pipeline = self.clone();
        // Every log line of the walk (each model call above all) carries the id.
        let span = tracing::info_span!("pipeline", request_id = %miss.request_id);
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let key = miss.key.clone();
                let _flight = FlightGuard {
                    flights: &pipeline.flights,
                    key: &key,
                };
                let answer = pipeline.walk(miss, mode, &producer).await;
                producer.push(Event::Done(answer));
            },
            span,
        ));
        subscriber
    }

    /// The tiers after the fresh cache. A panic in the model tiers (a bug) does not skip
    /// the tiers after them: it is counted, logged, and the walk goes on.
    async fn walk(&self, miss: Miss, mode: Mode, out: &Producer) -> Answer {
        let Miss {
            request_id,
            question,
            normalized,
            key,
            stale,
            deadline,
            mut external,
        } = miss;
        let started = Instant::now();
        let progress = Mutex::new(Progress::default());
        let models = self.walk_models(&request_id, &question, deadline, mode, &progress, out);
        let answered = catch_panic(models, &self.metrics).await.flatten();
        external += started.elapsed();
        if let Some(mut answer) = answered {
            if mode == Mode::Whole {
                out.push(Event::Delta(answer.text.clone()));
            }
            // A stitched answer was written by several calls: served, never cached.
            if !answer.continued {
                let entry = CachedAnswer {
                    answer: answer.text.clone(),
                    model: answer.model.clone().unwrap_or_else(|| Arc::from("")),
                    written_at_ms: cache::now_ms(),
                    config: Some(self.cache.fingerprint()),
                };
                self.cache.store(key, entry).await;
            }
            answer.external = external;
            return answer;
        }
        let sent = progress.lock().map(|p| p.pieces).unwrap_or(0);
        if sent > 0 {
            // Text went out that no model could finish: take it back.
            if let Ok(mut p) = progress.lock()
                && let Some(tier) = p.interrupted.take()
            {
                self.interruption(&request_id, tier, p.pieces, "reset");
            }
            out.push(Event::Reset("the models could not finish the answer"));
        }
        let answer = self.last_resort(&normalized, stale, external);
        out.push(Event::Delta(answer.text.clone()));
        answer
    }

    /// The model tiers in order: the first answer, or `None`.
    async fn walk_models(
        &self,
        request_id: &str,
        question: &str,
        deadline: Instant,
        mode: Mode,
        progress: &Mutex<Progress>,
        out: &Producer,
    ) -> Option<Answer> {
        for slot in &self.tiers {
            let call = Call {
                request_id,
                question,
                mode,
                progress,
                out,
            };
            if let Some(answer) = self.try_tier(slot, &call, deadline).await {
                return Some(answer);
            }
        }
        None
    }

    /// Counts and logs a stream that broke after text was sent, with what was done.
    fn interruption(&self, request_id: &str, tier: Tier, pieces: u32, action: &'static str) {
        self.metrics
            .stream_interruptions
            .with_label_values(&[tier.as_str(), action])
            .inc();
        tracing::warn!(
            request_id,
            tier = tier.as_str(),
            pieces_sent = pieces,
            action,
            "stream interrupted after text was sent"
        );
    }

    /// The tiers that cannot fail: canned answers, the stale answer, the default reply.
    pub fn last_resort(
        &self,
        normalized: &str,
        stale: Option<CachedAnswer>,
        external: Duration,
    ) -> Answer {
        if let Some(text) = self.canned.get(normalized) {
            return Answer {
                text,
                source: Source::Canned,
                model: None,
                external,
                continued: false,
            };
        }
        if let Some(stale) = stale {
            return Answer {
                text: stale.answer,
                source: Source::Stale,
                model: Some(stale.model),
                external,
                continued: false,
            };
        }
        Answer {
            text: Arc::from(DEFAULT_REPLY),
            source: Source::Default,
            model: None,
            external,
            continued: false,
        }
    }

    /// One model tier with its retries; `None` when it gives no answer (recorded as a
    /// fallback with its reason).
    async fn try_tier(
        &self,
        slot: &TierSlot,
        call: &Call<'_>,
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
            |attempt, time_left, permit| async move {
                let calling = async {
                    match call.mode {
                        Mode::Whole => {
                            let timeout = client.attempt_timeout.min(time_left);
                            client.complete(call.question, timeout).await
                        }
                        Mode::Stream => self.stream_call(client, call, time_left).await,
                    }
                };
                self.record_attempt(client, call.request_id, attempt, permit, calling)
                    .await
            },
        )
        .await;
        match result {
            Ok(c) => {
                let continued = call.progress.lock().map(|p| p.writers > 1).unwrap_or(false);
                Some(Answer {
                    text: Arc::from(c.text),
                    source: client.tier.source(),
                    model: Some(Arc::from(c.model)),
                    external: Duration::ZERO,
                    continued,
                })
            }
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

    /// One streamed call: its pieces go out as they come. After a break with text sent,
    /// this call is asked to go on from that text (and says so in the metrics and logs).
    /// The completion it returns is the whole text sent by the walk.
    async fn stream_call(
        &self,
        client: &ModelClient,
        call: &Call<'_>,
        time_left: Duration,
    ) -> Result<model::Completion, UpstreamError> {
        let continue_from = match call.progress.lock() {
            Ok(mut p) if !p.sent.is_empty() => {
                if let Some(tier) = p.interrupted.take() {
                    self.interruption(call.request_id, tier, p.pieces, "continued");
                }
                Some(p.sent.clone())
            }
            _ => None,
        };
        let mut stream = client
            .open_stream(
                call.question,
                continue_from.as_deref(),
                client.first_token_timeout.min(time_left),
                client.stream_idle_timeout,
            )
            .await?;
        let mut wrote = false;
        loop {
            let piece = match stream.next_piece().await {
                Ok(Some(piece)) => piece,
                Ok(None) => break,
                Err(e) => {
                    if let Ok(mut p) = call.progress.lock()
                        && !p.sent.is_empty()
                    {
                        p.interrupted = Some(client.tier);
                    }
                    return Err(e);
                }
            };
            let piece: Arc<str> = Arc::from(piece);
            if let Ok(mut p) = call.progress.lock() {
                if !wrote {
                    p.writers = p.writers.saturating_add(1);
                }
                p.sent.push_str(&piece);
                p.pieces = p.pieces.saturating_add(1);
            }
            wrote = true;
            call.out.push(Event::Delta(piece));
        }
        if !wrote && continue_from.is_none() {
            return Err(UpstreamError::invalid("stream ended with no text"));
        }
        let text = call
            .progress
            .lock()
            .map(|p| p.sent.clone())
            .unwrap_or_default();
        Ok(model::Completion {
            text,
            model: client.model.clone(),
        })
    }

    /// One model call (`calling`), measured, counted, logged, and reported to the tier's
    /// breaker; a call cut off by the deadline (its future dropped) is recorded too.
    async fn record_attempt(
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

    fn fallback(&self, tier: Tier, reason: FallbackReason) {
        self.metrics
            .fallbacks
            .with_label_values(&[tier.as_str(), reason.as_str()])
            .inc();
    }
}
/// Runs `fut`, turning a panic inside it into `None`: counted in
/// `qa_walk_panics_total` and logged once (the panic hook has logged the panic itself).
pub async fn catch_panic<T>(
    fut: impl std::future::Future<Output = T>,
    metrics: &Metrics,
) -> Option<T> {
    use futures_util::FutureExt;
    match std::panic::AssertUnwindSafe(fut).catch_unwind().await {
        Ok(v) => Some(v),
        Err(_) => {
            metrics.walk_panics.inc();
            tracing::error!(
                "the walk failed unexpectedly; answering from canned, stale or default"
            );
            None
        }
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
