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
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::{Deserialize, Serialize};

use crate::app::AppState;
use crate::error::ApiError;
use crate::middleware::RequestId;
use crate::pipeline::{Answer, Source};

const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// The body of `POST /ask`; unknown fields are ignored.
#[derive(Deserialize)]
pub struct AskRequest {
    pub question: String,
}

/// The `200` answer of `POST /ask`.
#[derive(Serialize)]
pub struct AskResponse<'a> {
    pub answer: &'a str,
    pub source: &'static str,
    pub model: Option<&'a str>,
    pub degraded: bool,
    pub latency_ms: f64,
    pub request_id: &'a str,
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

pub async fn ask(
    State(state): State<AppState>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    req: Request,
) -> Response {
    let started = Instant::now();
    // Load shedding: past the limit, 503 at once, rather than a queue without bound.
    let Ok(_permit) = state.inflight.try_acquire() else {
        state.reject("overloaded");
        return ApiError::overloaded().into_response();
    };
    // Taken apart rather than extracted as a HeaderMap, which would copy every header.
    let (parts, body) = req.into_parts();
    let question = match read_question(&state, &parts.headers, body).await {
        Ok(q) => q,
        Err(e) => {
            state.reject(e.code);
            return e.into_response();
        }
    };

    let answer = match state.pipeline.lookup(&question, started.into()).await {
        Ok(hit) => hit,
        Err(miss) => {
            let pipeline = state.pipeline.clone();
            // Every log line of the walk (each model call above all) carries the id.
            let span = tracing::info_span!("pipeline", request_id = %request_id);
            let task = tokio::spawn(async move {
                use tracing::Instrument;
                pipeline.resolve(miss).instrument(span).await
            });
            match task.await {
                Ok(a) => a,
                Err(e) => {
                    tracing::error!(
                        request_id = &*request_id,
                        error = %e,
                        "pipeline task failed; answering with the default reply"
                    );
                    let canned = &state.pipeline.canned;
                    Answer {
                        text: canned.default_reply(canned.faq().language_of(&question)),
                        source: Source::Default,
                        model: None,
                        external: Duration::ZERO,
                        canned: None,
                    }
                }
            }
        }
    };

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
            source = "cache",
            latency_ms = elapsed.as_secs_f64() * 1000.0,
            "answered"
        );
    } else {
        tracing::info!(
            source = answer.source.as_str(),
            model = answer.model.as_deref(),
            latency_ms = elapsed.as_secs_f64() * 1000.0,
            "answered"
        );
    }
    let body = AskResponse {
        answer: &answer.text,
        source: answer.source.as_str(),
        model: answer.model.as_deref(),
        degraded: answer.degraded(),
        latency_ms: (elapsed.as_secs_f64() * 1_000_000.0).round() / 1000.0,
        request_id: &request_id,
        matched: answer.canned.as_ref().map(|c| MatchBody {
            question: &c.question,
            score: (c.score * 1000.0).round() / 1000.0,
        }),
    };
    // Sized up front: axum's Json starts small and grows, copying the answer each time.
    let mut buf = Vec::with_capacity(answer.text.len() * 2 + 160);
    match serde_json::to_writer(&mut buf, &body) {
        Ok(()) => ([(header::CONTENT_TYPE, JSON)], buf).into_response(),
        Err(_) => ApiError::internal().into_response(),
    }
}

async fn read_question(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<String, ApiError> {
    let limits = &state.config.limits;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body_bytes as u64) {
        return Err(ApiError::payload_too_large(limits.max_body_bytes));
    }
    let body_timeout = Duration::from_millis(state.config.server.body_read_timeout_ms);
    let collected = tokio::time::timeout(
        body_timeout,
        Limited::new(body, limits.max_body_bytes).collect(),
    )
    .await
    .map_err(|_| ApiError::request_timeout(body_timeout))?;
    let bytes = match collected {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return Err(ApiError::payload_too_large(limits.max_body_bytes));
        }
        Err(e) => {
            return Err(ApiError::invalid_json(format!(
                "could not read the request body: {e}"
            )));
        }
    };
    if !is_json(headers) {
        return Err(ApiError::unsupported_media_type());
    }
    let req: AskRequest = serde_json::from_slice(&bytes).map_err(|e| {
        if e.is_data() {
            ApiError::invalid_json("body must be a JSON object with a string field \"question\"")
        } else {
            ApiError::invalid_json(format!("body is not valid JSON: {e}"))
        }
    })?;
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
    Ok(question.to_string())
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
