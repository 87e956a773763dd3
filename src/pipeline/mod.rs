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
//!
//! Files: `source.rs` the vocabulary (sources, tiers, failure kinds, give-up reasons);
//! `events.rs` a walk as events (`delta`, `reset`, `done`); `coalesce.rs` sharing one walk;
//! `stream.rs` streamed calls, continuation and reset; `attempt.rs` one call measured and
//! recorded; `cache.rs`, `model.rs`, `canned.rs` the tiers' own clients.

mod attempt;
pub mod cache;
pub mod canned;
mod coalesce;
pub mod events;
mod lease;
pub mod model;
pub mod normalize;
pub mod source;
mod stream;
pub mod topology;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::resilience::breaker::Breaker;
use crate::resilience::budget::RetryBudget;
use crate::resilience::retry::retry;
use crate::stats::Stats;
use crate::telemetry::Metrics;

use cache::{AnswerCache, CachedAnswer};
use canned::{CannedAnswers, Lookup};
use coalesce::Flights;
use events::{Event, Producer};
use model::ModelClient;

use crate::wire::openai::{ChatMessage, Usage};
pub use source::{GiveUp, Source, Tier};
use stream::Progress;

/// The reply when every other tier has nothing.
pub const DEFAULT_REPLY: &str = "抱歉,系统暂时无法处理您的请求。请稍后重试或联系人工客服。";

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
    /// For a canned answer: the entry that matched.
    pub canned: Option<CannedMatch>,
    /// Tokens the model call that wrote the answer cost, when the upstream said.
    pub usage: Option<Usage>,
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

impl Miss {
    /// Time the lookup spent waiting on Redis.
    pub fn external(&self) -> Duration {
        self.external
    }

    /// Who pays for the model calls of this question's walk: told their number once
    /// the model tiers are done. A request that shares another's walk (the same
    /// question in flight) pays nothing: its payer is dropped uncalled.
    pub fn pay_with(&mut self, payer: Payer) {
        self.payer = Some(payer);
    }

    /// This question may not call the models (its client's daily budget is spent): it
    /// shares the walk of the same question in flight, if there is one, else the tiers
    /// after the models answer it.
    pub fn without_models(&mut self) {
        self.models = false;
    }
}

/// Told the number of model calls (attempts, retries included) a walk made for the
/// request that led it.
pub type Payer = Box<dyn FnOnce(u32) + Send + Sync>;

/// What every model call of one walk shares.
struct Call<'a> {
    request_id: &'a str,
    question: &'a str,
    /// The conversation before the question (empty for a one-turn question).
    history: &'a [ChatMessage],
    /// The question's language when it is not the default one: the models are told to
    /// answer in it.
    language: Option<&'a str>,
    mode: Mode,
    progress: &'a Mutex<Progress>,
    out: &'a Producer,
    /// Model calls started so far.
    attempts: &'a AtomicU32,
}

/// A question the fresh cache did not have, with what the rest of the walk needs; or
/// the last question of a conversation, which no cache answers.
pub struct Miss {
    request_id: Arc<str>,
    question: String,
    key: String,
    stale: Option<CachedAnswer>,
    deadline: Instant,
    external: Duration,
    /// The conversation before the question: `None` for a one-turn question (cached,
    /// shared with identical questions in flight, answered first by a sure canned
    /// match); `Some` for a conversation, which only the models, the canned answers
    /// and the default reply answer.
    history: Option<Arc<[ChatMessage]>>,
    /// Told how many model calls the walk made, when it leads one.
    payer: Option<Payer>,
    /// Whether the walk may call the models (see [`Miss::without_models`]).
    models: bool,
}

/// How the model tiers are called for a walk: the whole answer at once (JSON `/ask`), or
/// streamed piece by piece, each piece an event as it comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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

    /// The fresh cache: an answer, or what the rest of the walk needs. Bounded by the
    /// Redis lookup timeout; the request's deadline runs from `started`.
    pub async fn lookup(
        &self,
        question: &str,
        started: Instant,
        request_id: &Arc<str>,
    ) -> Result<Answer, Miss> {
        let deadline = self.deadline(started);
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
                canned: None,
                usage: None,
            }),
            None => Err(Miss {
                request_id: request_id.clone(),
                question: question.to_string(),
                key,
                stale: found.stale,
                deadline,
                external,
                history: None,
                payer: None,
                models: true,
            }),
        }
    }

    /// The walk for the last question of a conversation (`history`: the messages before
    /// it, oldest first): no cache, no sharing with other requests, no stale answer.
    pub fn conversation(
        &self,
        question: &str,
        history: Vec<ChatMessage>,
        started: Instant,
        request_id: &Arc<str>,
    ) -> Miss {
        Miss {
            request_id: request_id.clone(),
            question: question.to_string(),
            key: String::new(),
            stale: None,
            deadline: self.deadline(started),
            external: Duration::ZERO,
            history: Some(history.into()),
            payer: None,
            models: true,
        }
    }

    /// The request's deadline: `started` plus `server.request_timeout_ms`.
    fn deadline(&self, started: Instant) -> Instant {
        // `request_timeout` is bounded by config validation; a far instant still never
        // overflows: it saturates to "no deadline sooner than an hour from now".
        started
            .checked_add(self.request_timeout)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))
    }

    /// The tiers after the fresh cache. A panic in the model tiers (a bug) does not skip
    /// the tiers after them: it is counted, logged, and the walk goes on.
    async fn walk(&self, miss: Miss, mode: Mode, out: &Producer) -> Answer {
        let Miss {
            request_id,
            question,
            key,
            stale,
            deadline,
            mut external,
            history,
            payer,
            models: _,
        } = miss;
        let conversation = history.is_some();
        let history = history.as_deref().unwrap_or(&[]);
        // The canned answers are matched once: before the models when a sure match may
        // answer first (a one-turn question only: in a conversation the question may
        // only make sense with what came before), else only when the models gave
        // nothing.
        let mut lookup = None;
        if self.canned.settings.answer_first_score.is_some() && !conversation {
            let first = self.canned_lookup(&question);
            if let Some(m) = first.matched()
                && self.canned.answer_first(m)
            {
                let answer = canned_answer(m, true, external);
                out.push(Event::Source(answer.source));
                out.push(Event::Delta(answer.text.clone()));
                return answer;
            }
            lookup = Some(first);
        }
        let language = self.canned.faq().language_of(&question);
        let language = (language != self.canned.settings.default_language).then_some(language);
        let started = Instant::now();
        let progress = Mutex::new(Progress::default());
        let attempts = AtomicU32::new(0);
        let call = Call {
            request_id: &request_id,
            question: &question,
            history,
            language,
            mode,
            progress: &progress,
            out,
            attempts: &attempts,
        };
        let models = self.walk_models(&call, deadline);
        let answered = catch_panic(models, &self.metrics).await.flatten();
        external += started.elapsed();
        let calls = attempts.load(Ordering::Relaxed);
        if let Some(pay) = payer
            && calls > 0
        {
            pay(calls);
        }
        if let Some(mut answer) = answered {
            if mode == Mode::Whole {
                out.push(Event::Source(answer.source));
                out.push(Event::Delta(answer.text.clone()));
            }
            // A stitched answer was written by several calls: served, never cached; nor
            // is the answer to a conversation, which depends on more than the question.
            if !answer.continued && !conversation {
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
                && let Some(tier) = p.unfinished()
            {
                self.interruption(&request_id, tier, p.pieces, "reset");
            }
            out.push(Event::Reset("the models could not finish the answer"));
        }
        let answer = self.last_resort(&question, lookup, stale, external);
        out.push(Event::Source(answer.source));
        out.push(Event::Delta(answer.text.clone()));
        answer
    }

    /// The model tiers in order: the first answer, or `None`.
    async fn walk_models(&self, call: &Call<'_>, deadline: Instant) -> Option<Answer> {
        for slot in &self.tiers {
            if let Some(answer) = self.try_tier(slot, call, deadline).await {
                return Some(answer);
            }
        }
        None
    }

    /// The tiers that cannot fail: the canned answer that matches `question` (`lookup`,
    /// when it was matched already), the stale answer, the default reply in the
    /// question's language.
    pub fn last_resort(
        &self,
        question: &str,
        lookup: Option<Lookup>,
        stale: Option<CachedAnswer>,
        external: Duration,
    ) -> Answer {
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
                continued: false,
                canned: None,
                usage: None,
            };
        }
        Answer {
            text: self.canned.default_reply(lookup.language),
            source: Source::Default,
            model: None,
            external,
            continued: false,
            canned: None,
            usage: None,
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
        call: &Call<'_>,
        deadline: Instant,
    ) -> Option<Answer> {
        let guarded = match slot {
            TierSlot::Configured(g) => g,
            TierSlot::NotConfigured { tier, .. } => {
                self.fallback(*tier, GiveUp::NotConfigured);
                return None;
            }
        };
        let client = &guarded.client;
        // An answer that ran past a size cap is not continued by anyone: the walk resets
        // and the tiers after the models answer.
        if call.progress.lock().is_ok_and(|p| p.runaway) {
            self.fallback(client.tier, GiveUp::NonRetryable);
            return None;
        }
        if Instant::now() >= deadline {
            self.fallback(client.tier, GiveUp::Deadline);
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
                call.attempts.fetch_add(1, Ordering::Relaxed);
                let calling = async {
                    match call.mode {
                        Mode::Whole => {
                            let timeout = client.attempt_timeout.min(time_left);
                            client
                                .complete(call.question, call.language, call.history, timeout)
                                .await
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
                    canned: None,
                    usage: c.usage,
                })
            }
            Err(e) => {
                let reason = e.give_up;
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

    /// Whether a walk for `miss`'s question is in flight here, in `mode`: one it can
    /// share.
    pub fn in_flight(&self, miss: &Miss, mode: Mode) -> bool {
        miss.history.is_none()
            && self
                .flights
                .lock()
                .is_ok_and(|f| f.contains_key(&(mode, miss.key.clone())))
    }

    /// The answer to `miss` without the models (its client's daily budget is spent): a
    /// canned answer (answered first on a sure match, as the walk would), else the stale
    /// one; `None` when neither has one. The skipped models are counted as a fallback
    /// from the primary, reason `budget`.
    pub fn answer_without_models(&self, miss: &Miss) -> Option<Answer> {
        self.fallback(Tier::Primary, GiveUp::Budget);
        let lookup = self.canned_lookup(&miss.question);
        if let Some(m) = lookup.matched() {
            let first = miss.history.is_none() && self.canned.answer_first(m);
            return Some(canned_answer(m, first, miss.external));
        }
        miss.stale.clone().map(|stale| Answer {
            text: stale.answer,
            source: Source::Stale,
            model: Some(stale.model),
            external: miss.external,
            continued: false,
            canned: None,
            usage: None,
        })
    }

    fn fallback(&self, tier: Tier, reason: GiveUp) {
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
        continued: false,
        canned: Some(CannedMatch {
            question: m.question.clone(),
            score: m.score,
            before_models,
        }),
        usage: None,
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
