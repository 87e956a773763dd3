//! The handler core every answering route shares (`POST /ask` and `POST
//! /v1/chat/completions`): the walk after the fresh cache, awaited whole or streamed as
//! server-sent events, and the counting and logging of each answer. A route reads and
//! checks its own request format, then hands the question here; only the wire format of
//! the answer differs between routes ([`Format`] for streams).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;

use crate::clients::Client;
use crate::error::ApiError;
use crate::limits::{DailyState, headers};
use crate::pipeline::events::{Event, Subscriber};
use crate::pipeline::{Answer, Miss, Mode, Source};
use crate::state::AppState;
use crate::telemetry::Api;

/// A comment line (`: ping`) on a stream quiet this long.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The answer to a question the route has looked up (`found`: a fresh cache hit, or the
/// miss to walk), awaited whole. Never fails: a walk that ends without an answer (a bug)
/// is answered by the tiers that cannot fail.
pub async fn whole(
    state: &AppState,
    request_id: &str,
    question: &str,
    started: Instant,
    found: Result<Answer, Miss>,
) -> Answer {
    match found {
        Ok(hit) => hit,
        Err(miss) => {
            let external = miss.external();
            let waited = Instant::now();
            match state.pipeline.start(miss, Mode::Whole).answer().await {
                Some(answer) => Answer {
                    external: external + waited.elapsed(),
                    ..answer
                },
                None => walk_failed(state, request_id, question, started),
            }
        }
    }
}

/// A question as the client's daily model-call budget lets it go on (`found` as the
/// fresh cache left it), with the budget as checked (for the RateLimit fields; `None`
/// when the client has none, or the cache answered).
///
/// - A cache hit costs nothing and is not checked.
/// - With calls left, the walk's model calls are charged to the client once it is done
///   (a question that shares the walk of the same question in flight pays nothing).
/// - With none left, the question shares the walk in flight for it if there is one (it
///   costs nothing more), else a canned or stale answer answers it, else the client gets
///   `429 rate_limited` until midnight UTC: the default reply is the service's own
///   failure, and a client's spent budget is none.
pub async fn within_budget(
    state: &AppState,
    client: Option<&Client>,
    found: Result<Answer, Miss>,
    mode: Mode,
) -> Result<(Result<Answer, Miss>, Option<DailyState>), Response> {
    let mut miss = match found {
        Ok(hit) => return Ok((Ok(hit), None)),
        Err(miss) => miss,
    };
    let Some(client) = client else {
        return Ok((Err(miss), None));
    };
    let Some(daily) = state.limiter.daily_left(client).await else {
        return Ok((Err(miss), None));
    };
    if daily.remaining > 0 {
        let limiter = state.limiter.clone();
        let payer = client.clone();
        // Pending until charged (or dropped uncalled: the question shared another walk).
        let pending = limiter.admit(client);
        miss.pay_with(Box::new(move |calls| {
            tokio::spawn(async move {
                limiter.charge(&payer, calls).await;
                drop(pending);
            });
        }));
        return Ok((Err(miss), Some(daily)));
    }
    if state.pipeline.in_flight(&miss, mode) {
        miss.without_models();
        return Ok((Err(miss), Some(daily)));
    }
    if let Some(answer) = state.pipeline.answer_without_models(&miss) {
        return Ok((Ok(answer), Some(daily)));
    }
    state.reject("rate_limited");
    let wait = headers::secs_up(daily.reset).max(1);
    let mut resp = ApiError::rate_limited(
        format!(
            "this client's budget of {} model calls for today is spent, and no cached or curated answer fits this question; it is renewed at midnight UTC, in {wait} s",
            client.limits.model_calls_per_day
        ),
        wait,
    )
    .into_response();
    resp.extensions_mut().insert(daily);
    Err(resp)
}

/// The answer when the walk's task ended without one (a bug around the model tiers,
/// which guard themselves): the tiers that cannot fail still answer.
pub fn walk_failed(state: &AppState, request_id: &str, question: &str, started: Instant) -> Answer {
    tracing::error!(
        request_id,
        "pipeline task failed; answering from canned answers or the default reply"
    );
    state
        .pipeline
        .last_resort(question, None, None, started.elapsed())
}

/// Counts and logs an answer given through `api`; returns the time it took.
pub fn finish(
    state: &AppState,
    api: Api,
    answer: &Answer,
    request_id: &str,
    started: Instant,
) -> Duration {
    let elapsed = started.elapsed();
    state.record_answer(api, answer.source, started, elapsed);
    state
        .metrics
        .overhead
        .observe(elapsed.saturating_sub(answer.external).as_secs_f64());
    // Cache hits are the bulk of the traffic and are counted in the metrics; a log line
    // each would cost more than the answer.
    if answer.source == Source::Cache {
        tracing::debug!(
            request_id,
            api = api.as_str(),
            source = "cache",
            latency_ms = elapsed.as_secs_f64() * 1000.0,
            "answered"
        );
    } else {
        tracing::info!(
            request_id,
            api = api.as_str(),
            source = answer.source.as_str(),
            model = answer.model.as_deref(),
            continued = answer.continued,
            latency_ms = elapsed.as_secs_f64() * 1000.0,
            "answered"
        );
    }
    elapsed
}

/// How a route writes a walk's events as server-sent events.
pub trait Format: Send + 'static {
    /// Events sent at once, before the walk's first.
    fn open(&mut self) -> Vec<SseEvent> {
        Vec::new()
    }
    /// The next piece of the answer.
    fn delta(&mut self, text: &str) -> SseEvent;
    /// The walk starts the answer again (`reason` is for people): the text sent so far
    /// was not finished by any model.
    fn reset(&mut self, reason: &str) -> SseEvent;
    /// The last events of the stream, for the whole `answer` (given in `elapsed`).
    fn done(&mut self, answer: &Answer, request_id: &str, elapsed: Duration) -> Vec<SseEvent>;
}

/// When a stream's response head goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    /// At once; the answer's source is only in the last events.
    AtOnce,
    /// With the first text (or the answer, if that comes first), so that the head can
    /// name the tier that wrote it: the stream's time to first byte is its time to first
    /// token.
    WithFirstText,
}

/// The answer to a question the route has looked up (`found`), streamed as server-sent
/// events written by `format`; with the tier of the first text, when `head` waited for
/// it (a cache hit's is known at once). Every stream that starts ends with `format`'s
/// `done` events, whatever fails behind it.
#[allow(clippy::too_many_arguments)]
pub async fn stream<F: Format>(
    state: AppState,
    api: Api,
    request_id: Arc<str>,
    question: String,
    started: Instant,
    found: Result<Answer, Miss>,
    mut format: F,
    head: Head,
) -> (Response, Option<Source>) {
    state.metrics.streams_in_flight.inc();
    let mut first_source = None;
    let (feed, external) = match found {
        Ok(hit) => {
            let external = hit.external;
            first_source = Some(hit.source);
            (Feed::Hit(Some(hit)), external)
        }
        Err(miss) => {
            let external = miss.external();
            let mut walk = state.pipeline.start(miss, Mode::Stream);
            if head == Head::WithFirstText {
                first_source = walk.first_source().await;
            }
            (Feed::Walk(walk), external)
        }
    };
    let opening = format.open();
    let streaming = Streaming {
        state,
        api,
        request_id,
        question,
        started,
        feed,
        first_delta: None,
        external,
        waited: Instant::now(),
        finished: false,
        format,
    };
    let events = futures_util::stream::once(async move { opening })
        .chain(futures_util::stream::unfold(
            streaming,
            |mut s| async move {
                let batch = s.next_batch().await?;
                Some((batch, s))
            },
        ))
        .flat_map(|batch| futures_util::stream::iter(batch.into_iter().map(Ok::<_, Infallible>)));
    let response = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("ping"))
        .into_response();
    (response, first_source)
}

/// Everything one stream holds until it ends (or its client leaves): its place in the
/// walk and its share of the in-flight gauge. (Its load-shedding slot is held by the
/// guards, for as long as the response body lives.)
struct Streaming<F> {
    state: AppState,
    api: Api,
    request_id: Arc<str>,
    question: String,
    started: Instant,
    feed: Feed,
    first_delta: Option<Duration>,
    external: Duration,
    waited: Instant,
    finished: bool,
    format: F,
}

/// Where a stream's events come from: a walk, or a cached answer sent whole.
enum Feed {
    Walk(Subscriber),
    Hit(Option<Answer>),
}

impl<F> Drop for Streaming<F> {
    fn drop(&mut self) {
        self.state.metrics.streams_in_flight.dec();
    }
}

impl<F: Format> Streaming<F> {
    /// The next events to send; `None` once the last has gone out.
    async fn next_batch(&mut self) -> Option<Vec<SseEvent>> {
        if self.finished {
            return None;
        }
        let event = match &mut self.feed {
            Feed::Hit(hit) => {
                // A whole answer at once: one piece, then done.
                let answer = hit.take()?;
                let mut out = vec![self.delta(&answer.text)];
                out.extend(self.done(answer));
                return Some(out);
            }
            Feed::Walk(sub) => sub.next().await,
        };
        Some(match event {
            Some(Event::Source(_)) => Vec::new(),
            Some(Event::Delta(text)) => vec![self.delta(&text)],
            Some(Event::Reset(reason)) => vec![self.format.reset(reason)],
            Some(Event::Done(answer)) => {
                let answer = Answer {
                    external: self.external + self.waited.elapsed(),
                    ..answer
                };
                self.done(answer)
            }
            None => {
                // The walk ended without an answer (a bug): answer by ourselves, after
                // taking back whatever was sent.
                let answer =
                    walk_failed(&self.state, &self.request_id, &self.question, self.started);
                let mut out = Vec::new();
                if self.first_delta.is_some() {
                    out.push(self.format.reset("the answer broke off"));
                }
                out.push(self.delta(&answer.text));
                out.extend(self.done(answer));
                out
            }
        })
    }

    fn delta(&mut self, text: &str) -> SseEvent {
        if self.first_delta.is_none() {
            self.first_delta = Some(self.started.elapsed());
        }
        self.format.delta(text)
    }

    fn done(&mut self, answer: Answer) -> Vec<SseEvent> {
        self.finished = true;
        let elapsed = finish(
            &self.state,
            self.api,
            &answer,
            &self.request_id,
            self.started,
        );
        if let Some(ttft) = self.first_delta {
            self.state
                .metrics
                .time_to_first_token
                .with_label_values(&[answer.source.as_str()])
                .observe(ttft.as_secs_f64());
        }
        self.format.done(&answer, &self.request_id, elapsed)
    }
}
