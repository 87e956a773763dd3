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
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::clients::Client;
use crate::error::ApiError;
use crate::middleware::RequestId;
use crate::pipeline::{Answer, Mode};
use crate::routes::answer;
use crate::routes::body::json_object;
use crate::state::AppState;
use crate::telemetry::Api;

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
    let mode = if streamed { Mode::Stream } else { Mode::Whole };
    let client = parts.extensions.get::<Client>();
    let (found, daily) = match answer::within_budget(&state, client, found, mode).await {
        Ok(admitted) => admitted,
        Err(refused) => return refused,
    };
    let mut response = if streamed {
        let (response, _) = answer::stream(
            state,
            Api::Ask,
            request_id,
            question,
            started,
            found,
            AskEvents,
            answer::Head::AtOnce,
        )
        .await;
        response
    } else {
        let answer = answer::whole(&state, &request_id, &question, started, found).await;
        let elapsed = answer::finish(&state, Api::Ask, &answer, &request_id, started);
        let body = AskResponse::new(&answer, &request_id, elapsed);
        // Sized up front: axum's Json starts small and grows, copying the answer each
        // time.
        let mut buf = Vec::with_capacity(answer.text.len() * 2 + 160);
        match serde_json::to_writer(&mut buf, &body) {
            Ok(()) => ([(header::CONTENT_TYPE, JSON)], buf).into_response(),
            Err(_) => ApiError::internal().into_response(),
        }
    };
    if let Some(daily) = daily {
        response.extensions_mut().insert(daily);
    }
    response
}

/// Whether the client asks for server-sent events.
pub(crate) fn accepts_event_stream(headers: &HeaderMap) -> bool {
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

/// `/ask` as server-sent events: `delta` (`{"text"}`), `reset` (`{"reason"}`), then
/// `done` with the `/ask` body.
struct AskEvents;

impl answer::Format for AskEvents {
    fn delta(&mut self, text: &str) -> SseEvent {
        SseEvent::default()
            .event("delta")
            .data(serde_json::json!({ "text": text }).to_string())
    }

    fn reset(&mut self, reason: &str) -> SseEvent {
        SseEvent::default()
            .event("reset")
            .data(serde_json::json!({ "reason": reason }).to_string())
    }

    fn done(&mut self, answer: &Answer, request_id: &str, elapsed: Duration) -> Vec<SseEvent> {
        let body = AskResponse::new(answer, request_id, elapsed);
        let data = serde_json::to_string(&body).unwrap_or_default();
        vec![SseEvent::default().event("done").data(data)]
    }
}

/// The `/ask` body, checked in the contract's order: content type, JSON, question.
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
pub(crate) fn is_json(headers: &HeaderMap) -> bool {
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
