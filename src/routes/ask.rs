//! `POST /ask`: checks the request in the contract's order (size, content type, JSON,
//! question), looks the question up in the fresh cache, and on a miss runs the rest of
//! the pipeline in a task of its own, so that a client that goes away does not cancel a
//! model call whose answer will be cached, and a panic in the pipeline still ends in an
//! answer.

use std::time::{Duration, Instant};

use axum::Extension;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::middleware::RequestId;
use crate::pipeline::{Answer, Mode, Source};
use crate::routes::body::json_object;
use crate::state::AppState;

const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// The body of `POST /ask`; unknown fields are ignored.
#[derive(Deserialize)]
pub struct AskRequest {
    pub question: String,
    /// Answer as server-sent events when `true` (as `Accept: text/event-stream` asks
    /// too); any other value, or none, is ignored like an unknown field.
    #[serde(default, deserialize_with = "only_true")]
    pub stream: bool,
}

/// `true` for a JSON `true`, `false` for any other value.
fn only_true<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(matches!(
        serde_json::Value::deserialize(d)?,
        serde_json::Value::Bool(true)
    ))
}

/// The `200` answer of `POST /ask`, and the data of a stream's `done` event.
#[derive(Serialize)]
pub struct AskResponse<'a> {
    pub answer: &'a str,
    pub source: &'static str,
    pub model: Option<&'a str>,
    pub degraded: bool,
    pub latency_ms: f64,
    pub request_id: &'a str,
    /// Present (and true) only for an answer written by more than one model call.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub continued: bool,
    /// For a canned answer: the entry that matched and its score.
    #[serde(rename = "match", skip_serializing_if = "Option::is_none")]
    pub matched: Option<MatchBody<'a>>,
}

/// The `match` of a canned answer.
#[derive(Serialize)]
pub struct MatchBody<'a> {
    /// The entry's question, in the answer's language.
    pub question: &'a str,
    /// In `[0, 1]`, rounded to three decimals.
    pub score: f64,
}

impl<'a> AskResponse<'a> {
    fn new(answer: &'a Answer, request_id: &'a str, elapsed: Duration) -> Self {
        AskResponse {
            answer: &answer.text,
            source: answer.source.as_str(),
            model: answer.model.as_deref(),
            degraded: answer.degraded(),
            latency_ms: (elapsed.as_secs_f64() * 1_000_000.0).round() / 1000.0,
            request_id,
            continued: answer.continued,
            matched: answer.canned.as_ref().map(|c| MatchBody {
                question: &c.question,
                score: (c.score * 1000.0).round() / 1000.0,
            }),
        }
    }
}

pub async fn ask(
    State(state): State<AppState>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    req: Request,
) -> Response {
    let started = Instant::now();
    // Taken apart rather than extracted as a HeaderMap, which would copy every header.
    // The guards in front (guards.rs) have read the body and taken a load-shedding slot.
    let (parts, body) = req.into_parts();
    let ask = match read_question(&state, &parts.headers, body).await {
        Ok(q) => q,
        Err(e) => {
            state.reject(e.code);
            return e.into_response();
        }
    };
    let streamed = ask.stream || accepts_event_stream(&parts.headers);
    let question = ask.question;
    let found = state
        .pipeline
        .lookup(&question, started.into(), &request_id)
        .await;
    if streamed {
        return stream::respond(state, request_id, question, started, found);
    }

    let answer = match found {
        Ok(hit) => hit,
        Err(miss) => {
            let external = miss.external();
            let waited = Instant::now();
            match state.pipeline.start(miss, Mode::Whole).answer().await {
                Some(answer) => Answer {
                    external: external + waited.elapsed(),
                    ..answer
                },
                None => walk_failed(&state, &request_id, &question, started),
            }
        }
    };
    let elapsed = finish(&state, &answer, &request_id, started);
    let body = AskResponse::new(&answer, &request_id, elapsed);
    // Sized up front: axum's Json starts small and grows, copying the answer each time.
    let mut buf = Vec::with_capacity(answer.text.len() * 2 + 160);
    match serde_json::to_writer(&mut buf, &body) {
        Ok(()) => ([(header::CONTENT_TYPE, JSON)], buf).into_response(),
        Err(_) => ApiError::internal().into_response(),
    }
}

/// The answer when the walk's task ended without one (a bug around the model tiers,
/// which guard themselves): the tiers that cannot fail still answer.
fn walk_failed(state: &AppState, request_id: &str, question: &str, started: Instant) -> Answer {
    tracing::error!(
        request_id,
        "pipeline task failed; answering from canned answers or the default reply"
    );
    state
        .pipeline
        .last_resort(question, None, None, started.elapsed())
}

/// Counts and logs an answer; returns the time it took.
fn finish(state: &AppState, answer: &Answer, request_id: &str, started: Instant) -> Duration {
    let elapsed = started.elapsed();
    state.record_answer(answer.source, started, elapsed);
    state
        .metrics
        .overhead
        .observe(elapsed.saturating_sub(answer.external).as_secs_f64());
    // Cache hits are the bulk of the traffic and are counted in the metrics; a log line
    // each would cost more than the answer.
    if answer.source == Source::Cache {
        tracing::debug!(
            request_id,
            source = "cache",
            latency_ms = elapsed.as_secs_f64() * 1000.0,
            "answered"
        );
    } else {
        tracing::info!(
            request_id,
            source = answer.source.as_str(),
            model = answer.model.as_deref(),
            continued = answer.continued,
            latency_ms = elapsed.as_secs_f64() * 1000.0,
            "answered"
        );
    }
    elapsed
}

/// Whether the client asks for server-sent events.
fn accepts_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            t.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("text/event-stream"))
        })
}

/// `/ask` as server-sent events: `delta`, `reset`, `done`.
mod stream {
    use std::convert::Infallible;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
    use axum::response::{IntoResponse, Response};
    use futures_util::StreamExt;

    use super::{AskResponse, finish, walk_failed};
    use crate::pipeline::events::{Event, Subscriber};
    use crate::pipeline::{Answer, Miss, Mode};
    use crate::state::AppState;

    /// A comment line (`: ping`) on a stream quiet this long.
    const KEEP_ALIVE: Duration = Duration::from_secs(15);

    /// Everything one stream holds until it ends (or its client leaves): its place in the
    /// walk and its share of the in-flight gauge. (Its load-shedding slot is held by the
    /// guards, for as long as the response body lives.)
    struct Streaming {
        state: AppState,
        request_id: Arc<str>,
        question: String,
        started: Instant,
        feed: Feed,
        first_delta: Option<Duration>,
        external: Duration,
        waited: Instant,
        finished: bool,
    }

    /// Where a stream's events come from: a walk, or a cached answer sent whole.
    enum Feed {
        Walk(Subscriber),
        Hit(Option<Answer>),
    }

    impl Drop for Streaming {
        fn drop(&mut self) {
            self.state.metrics.streams_in_flight.dec();
        }
    }

    pub(super) fn respond(
        state: AppState,
        request_id: Arc<str>,
        question: String,
        started: Instant,
        found: Result<Answer, Miss>,
    ) -> Response {
        state.metrics.streams_in_flight.inc();
        let (feed, external) = match found {
            Ok(hit) => {
                let external = hit.external;
                (Feed::Hit(Some(hit)), external)
            }
            Err(miss) => {
                let external = miss.external();
                (
                    Feed::Walk(state.pipeline.start(miss, Mode::Stream)),
                    external,
                )
            }
        };
        let streaming = Streaming {
            state,
            request_id,
            question,
            started,
            feed,
            first_delta: None,
            external,
            waited: Instant::now(),
            finished: false,
        };
        let events = futures_util::stream::unfold(streaming, |mut s| async move {
            let batch = s.next_batch().await?;
            Some((batch, s))
        })
        .flat_map(|batch| futures_util::stream::iter(batch.into_iter().map(Ok::<_, Infallible>)));
        Sse::new(events)
            .keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("ping"))
            .into_response()
    }

    impl Streaming {
        /// The next events to send; `None` once `done` has gone out.
        async fn next_batch(&mut self) -> Option<Vec<SseEvent>> {
            if self.finished {
                return None;
            }
            let event = match &mut self.feed {
                Feed::Hit(hit) => match hit.take() {
                    Some(answer) => {
                        // A whole answer at once: one piece, then done.
                        let mut out = vec![self.delta(&answer.text)];
                        out.push(self.done(answer));
                        return Some(out);
                    }
                    None => return None,
                },
                Feed::Walk(sub) => sub.next().await,
            };
            Some(match event {
                Some(Event::Delta(text)) => vec![self.delta(&text)],
                Some(Event::Reset(reason)) => vec![
                    SseEvent::default()
                        .event("reset")
                        .data(serde_json::json!({ "reason": reason }).to_string()),
                ],
                Some(Event::Done(answer)) => {
                    let answer = Answer {
                        external: self.external + self.waited.elapsed(),
                        ..answer
                    };
                    vec![self.done(answer)]
                }
                None => {
                    // The walk ended without an answer (a bug): answer by ourselves, after
                    // taking back whatever was sent.
                    let answer =
                        walk_failed(&self.state, &self.request_id, &self.question, self.started);
                    let mut out = Vec::new();
                    if self.first_delta.is_some() {
                        out.push(
                            SseEvent::default()
                                .event("reset")
                                .data(r#"{"reason":"the answer broke off"}"#),
                        );
                    }
                    out.push(self.delta(&answer.text));
                    out.push(self.done(answer));
                    out
                }
            })
        }

        fn delta(&mut self, text: &str) -> SseEvent {
            if self.first_delta.is_none() {
                self.first_delta = Some(self.started.elapsed());
            }
            SseEvent::default()
                .event("delta")
                .data(serde_json::json!({ "text": text }).to_string())
        }

        fn done(&mut self, answer: Answer) -> SseEvent {
            self.finished = true;
            let elapsed = finish(&self.state, &answer, &self.request_id, self.started);
            if let Some(ttft) = self.first_delta {
                self.state
                    .metrics
                    .time_to_first_token
                    .with_label_values(&[answer.source.as_str()])
                    .observe(ttft.as_secs_f64());
            }
            let body = AskResponse::new(&answer, &self.request_id, elapsed);
            let data = serde_json::to_string(&body).unwrap_or_default();
            SseEvent::default().event("done").data(data)
        }
    }
}

async fn read_question(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<AskRequest, ApiError> {
    let limits = &state.config.limits;
    let bytes = crate::guards::buffered(body).await;
    if !is_json(headers) {
        return Err(ApiError::unsupported_media_type());
    }
    let req: AskRequest = json_object(&bytes, "a JSON object with a string field \"question\"")?;
    let question = req.question.trim();
    if question.is_empty() {
        return Err(ApiError::invalid_question("question is empty"));
    }
    let chars = question.chars().count();
    if chars > limits.max_question_chars {
        return Err(ApiError::invalid_question(format!(
            "question is {chars} characters long; the limit is {}",
            limits.max_question_chars
        )));
    }
    Ok(AskRequest {
        question: question.to_string(),
        stream: req.stream,
    })
}

/// `application/json`, with or without parameters, or any `+json` type.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}
