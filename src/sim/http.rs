//! The HTTP surface: the OpenAI-compatible wire API and the control API.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{Extension, Path, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, HOST, LOCATION, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::watch;

use super::model::{
    AnswerStyle, Behavior, DEFAULT_HUGE_BODY_BYTES, DEFAULT_STREAM_CUT_AFTER,
    DEFAULT_STREAM_INTERVAL_MS, DEFAULT_STREAM_PIECE_CHARS, Outcome,
};
use super::state::{Decision, SimState};
use super::stream::{self, StreamPlan};
use crate::wire::openai::{
    CHAT_COMPLETION_OBJECT, ChatCompletion, ChatRequest, Choice, ContentPart, ErrorResponse,
    FINISH_STOP, MessageContent, ModelList, ModelObject, ResponseMessage, Usage,
};

/// Long enough that only the client's timeout (or shutdown) ends a hang.
const HANG: Duration = Duration::from_secs(3600);

/// Path of the redirect target, which `redirect` answers point at by default.
pub(crate) const REDIRECT_TARGET_PATH: &str = "/redirected/v1/chat/completions";

/// Size of the pieces a `huge` answer is written in; the only part of it the
/// simulator holds in memory.
pub(crate) const HUGE_CHUNK_BYTES: usize = 64 * 1024;

/// Text a `huge` answer's content repeats (plain ASCII, nothing to escape).
pub(crate) const HUGE_FILLER: &[u8] = b"simulated huge answer. ";

/// Message of the `500` a one-shot request gets for `stream_error`.
const ONE_SHOT_STREAM_ERROR_MESSAGE: &str = "simulated 500 (stream_error outside a stream)";

/// State shared by every connection of one simulator.
pub(crate) struct Shared {
    pub sim: SimState,
    /// Flipped to `true` once, by `SimServer::shutdown`.
    pub shutdown: watch::Sender<bool>,
    next_id: AtomicU64,
    /// Where the simulator listens, for redirect locations when a request
    /// has no usable `Host`.
    addr: SocketAddr,
}

impl Shared {
    pub fn new(sim: SimState, addr: SocketAddr) -> Shared {
        Shared {
            sim,
            shutdown: watch::Sender::new(false),
            next_id: AtomicU64::new(1),
            addr,
        }
    }

    /// Resolves once shutdown has begun.
    pub async fn stopped(&self) {
        let mut shutdown = self.shutdown.subscribe();
        // Dropped at once: the guard `wait_for` returns is not `Send`. An
        // error (sender gone) cannot happen while `self` is alive.
        let _ = shutdown.wait_for(|stopped| *stopped).await;
    }

    /// A fresh completion id, `chatcmpl-sim-N`.
    pub fn next_completion_id(&self) -> String {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("chatcmpl-sim-{id}")
    }

    /// Sleeps for `delay`; returns false if the simulator shut down first.
    pub async fn sleep_unless_shutdown(&self, delay: Duration) -> bool {
        if delay.is_zero() {
            return true;
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => true,
            () = self.stopped() => false,
        }
    }
}

/// Per-connection handle, put into every request's extensions by the
/// connection loop: setting the flag makes the connection's next write fail
/// and the socket close with RST (see `conn::ResettableStream`).
#[derive(Clone)]
pub(crate) struct ConnReset(pub Arc<AtomicBool>);

impl ConnReset {
    fn reset(&self) -> Response {
        self.0.store(true, Ordering::SeqCst);
        // Never reaches the client: writing it is what triggers the reset.
        StatusCode::INTERNAL_SERVER_ERROR.into_response()
    }
}

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route(REDIRECT_TARGET_PATH, post(redirect_target))
        .route("/v1/models", get(list_models))
        .route("/control", get(control_snapshot))
        .route("/control/calls", get(control_calls))
        .route("/control/default", put(control_set_default))
        // Wildcard so model names with slashes (`org/model`) can be addressed.
        .route("/control/models/{*model}", put(control_set_model))
        .route("/control/reset", post(control_reset))
        .fallback(not_found)
        .with_state(shared)
}

fn error_type(status: u16) -> &'static str {
    match status {
        400 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        500..=599 => "server_error",
        _ => "api_error",
    }
}

fn error_response(status: StatusCode, message: impl Into<String>) -> Response {
    let body = ErrorResponse::new(error_type(status.as_u16()), message);
    (status, Json(body)).into_response()
}

async fn not_found() -> Response {
    error_response(StatusCode::NOT_FOUND, "no such endpoint on upstream-sim")
}

/// Separator of the text parts of an array `content` when the simulator
/// reads it.
const PART_SEPARATOR: &str = " ";

/// A rough token estimate, characters / 4 rounded up, so `usage` looks
/// plausible; nothing should depend on its exact value.
pub(crate) fn estimate_tokens(text: &str) -> u64 {
    u64::try_from(text.chars().count().div_ceil(4)).unwrap_or(u64::MAX)
}

/// Estimated tokens of every message's text.
fn prompt_tokens(request: &ChatRequest) -> u64 {
    request
        .messages
        .iter()
        .filter_map(|m| m.content.as_ref())
        .map(|c| estimate_tokens(&c.to_text(PART_SEPARATOR)))
        .fold(0, u64::saturating_add)
}

/// The text of the `ok` answer to `request` from `model`.
///
/// A request to continue an answer that broke off (`user` question, the `assistant`
/// text so far, then a `user` instruction) gets what a good model would write: the rest
/// of the answer the assistant text began (`[X] simulated answer to: QUESTION`, with `X`
/// this model, the name the text starts with, or a built-in model), so that the stitched
/// answer is that whole answer. Assistant text that begins no simulated answer gets the
/// ordinary answer to the last user message.
fn ok_answer(style: AnswerStyle, model: &str, request: &ChatRequest) -> String {
    if let Some(rest) = continuation(style, model, request) {
        return rest;
    }
    style.answer(model, &request.last_user_text(PART_SEPARATOR))
}

/// The rest of the answer a continuation request's assistant text began, if it began one.
fn continuation(style: AnswerStyle, model: &str, request: &ChatRequest) -> Option<String> {
    let n = request.messages.len();
    let [.., question, sent, instruction] = request.messages.as_slice() else {
        return None;
    };
    if n < 3 || question.role != "user" || sent.role != "assistant" || instruction.role != "user" {
        return None;
    }
    let text = |m: &crate::wire::openai::ChatMessage| {
        m.content
            .as_ref()
            .map(|c| c.to_text(PART_SEPARATOR))
            .unwrap_or_default()
    };
    let sent = text(sent);
    let question = text(question);
    let named = sent
        .strip_prefix('[')
        .and_then(|s| s.split_once(']'))
        .map(|(writer, _)| writer.to_owned());
    std::iter::once(model.to_owned())
        .chain(named)
        .chain(super::state::BUILTIN_MODELS.iter().map(|m| (*m).to_owned()))
        .find_map(|writer| {
            let whole = style.answer(&writer, &question);
            // A whole earlier answer (a conversation's history, not a broken-off one)
            // leaves nothing to continue: the last question gets its own answer.
            whole
                .strip_prefix(sent.as_str())
                .filter(|rest| !rest.is_empty())
                .map(str::to_owned)
        })
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn chat_completions(
    State(shared): State<Arc<Shared>>,
    Extension(conn): Extension<ConnReset>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body: Value = match serde_json::from_slice(&body) {
        Ok(value) => value,
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                format!("We could not parse the JSON body of your request: {e}"),
            );
        }
    };
    let request = match ChatRequest::deserialize(&body) {
        Ok(request) if !request.model.is_empty() => request,
        Ok(_) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "you must provide a model parameter (a non-empty string)",
            );
        }
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                format!("invalid chat completion request (model, messages): {e}"),
            );
        }
    };
    let model = request.model.clone();
    let authorization = headers
        .get(AUTHORIZATION)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let prompt_tokens = prompt_tokens(&request);

    let decision = shared.sim.record_call(&model, body, authorization);
    tracing::debug!(%model, outcome = %decision.outcome, stream = request.is_stream(), delay_ms = decision.delay.as_millis(), "simulated call");

    if !shared.sleep_unless_shutdown(decision.delay).await {
        return conn.reset();
    }
    // Failures that happen before any response look the same to a streamed
    // and a one-shot request.
    match decision.outcome {
        Outcome::Redirect => return redirect_response(&shared, &headers, &decision),
        Outcome::Status(code) => return status_response(code, &decision),
        Outcome::Hang => return hang(&shared, &conn).await,
        Outcome::Reset => return conn.reset(),
        _ => {}
    }
    let answer = ok_answer(shared.sim.answer_style(), &model, &request);
    if request.is_stream() {
        let plan = StreamPlan {
            outcome: decision.outcome,
            model,
            answer,
            prompt_tokens,
            include_usage: request.wants_stream_usage(),
            piece_chars: decision.stream_piece_chars,
            interval: decision.stream_interval,
            cut_after: decision.stream_cut_after,
            huge_body_bytes: decision.huge_body_bytes,
        };
        return stream::respond(shared, plan);
    }
    let content = match decision.outcome {
        Outcome::Empty => MessageContent::Text(String::new()),
        Outcome::NullContent => {
            return completion(&shared, &model, prompt_tokens, one_choice(None));
        }
        // The two parts joined are exactly the `ok` answer.
        Outcome::ContentParts => MessageContent::Parts(vec![
            ContentPart::text(format!("[{model}] ")),
            ContentPart::text(format!(
                "simulated answer to: {}",
                request.last_user_text(PART_SEPARATOR)
            )),
        ]),
        Outcome::NoChoices => {
            return completion(&shared, &model, prompt_tokens, Vec::new());
        }
        Outcome::Huge => {
            return huge_completion(&shared, &model, prompt_tokens, decision.huge_body_bytes);
        }
        // Stream faults outside a stream: a cut connection is a reset, a
        // stalled one a hang, an error event a 500.
        Outcome::Cut => return conn.reset(),
        Outcome::StallFirst | Outcome::Stall => return hang(&shared, &conn).await,
        Outcome::StreamError => {
            return error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                ONE_SHOT_STREAM_ERROR_MESSAGE,
            );
        }
        Outcome::Malformed => {
            return (
                StatusCode::OK,
                [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
                Body::from(r#"{"choices": ["#),
            )
                .into_response();
        }
        Outcome::Ok | Outcome::Redirect | Outcome::Status(_) | Outcome::Hang | Outcome::Reset => {
            MessageContent::Text(answer)
        }
    };
    completion(&shared, &model, prompt_tokens, one_choice(Some(content)))
}

/// Answers nothing until shutdown, then resets the connection.
async fn hang(shared: &Shared, conn: &ConnReset) -> Response {
    shared.sleep_unless_shutdown(HANG).await;
    conn.reset()
}

/// The one choice of a completion, its content any [`MessageContent`] or
/// `null` for `None`.
fn one_choice(content: Option<MessageContent>) -> Vec<Choice> {
    vec![Choice {
        index: 0,
        message: ResponseMessage {
            role: "assistant".to_owned(),
            content,
        },
        finish_reason: Some(FINISH_STOP.to_owned()),
    }]
}

/// A chat completion with `choices`, its `usage` estimated from their text.
fn completion(shared: &Shared, model: &str, prompt_tokens: u64, choices: Vec<Choice>) -> Response {
    let completion_tokens = choices
        .iter()
        .filter_map(|c| c.message.content.as_ref())
        .map(|c| estimate_tokens(&c.to_text("")))
        .fold(0, u64::saturating_add);
    let body = ChatCompletion {
        id: shared.next_completion_id(),
        object: CHAT_COMPLETION_OBJECT.to_owned(),
        created: unix_now(),
        model: model.to_owned(),
        choices,
        usage: Some(Usage::new(prompt_tokens, completion_tokens)),
        resilient_qa: None,
    };
    Json(body).into_response()
}

/// A valid completion whose content is `content_bytes` bytes of filler,
/// written as a chunked body (no `Content-Length`) in pieces of
/// [`HUGE_CHUNK_BYTES`]: one piece is shared by every write, so memory use
/// does not grow with the size.
fn huge_completion(
    shared: &Shared,
    model: &str,
    prompt_tokens: u64,
    content_bytes: u64,
) -> Response {
    let id = shared.next_completion_id();
    let completion_tokens = content_bytes.div_ceil(4);
    let head = format!(
        r#"{{"id":"{id}","object":"chat.completion","created":{created},"model":{model},"choices":[{{"index":0,"message":{{"role":"assistant","content":""#,
        created = unix_now(),
        model = Value::String(model.to_owned()),
    );
    let tail = format!(
        r#""}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":{prompt_tokens},"completion_tokens":{completion_tokens},"total_tokens":{total}}}}}"#,
        total = prompt_tokens.saturating_add(completion_tokens),
    );
    let piece: Bytes = HUGE_FILLER
        .iter()
        .copied()
        .cycle()
        .take(HUGE_CHUNK_BYTES)
        .collect::<Vec<u8>>()
        .into();
    let chunk = u64::try_from(HUGE_CHUNK_BYTES).unwrap_or(u64::MAX);
    let full_pieces = usize::try_from(content_bytes / chunk).unwrap_or(usize::MAX);
    let last_piece = piece.slice(..usize::try_from(content_bytes % chunk).unwrap_or(0));
    let pieces = std::iter::once(Bytes::from(head))
        .chain(std::iter::repeat_n(piece, full_pieces))
        .chain(std::iter::once(last_piece))
        .chain(std::iter::once(Bytes::from(tail)))
        .filter(|piece| !piece.is_empty())
        .map(Ok::<Bytes, Infallible>);
    (
        StatusCode::OK,
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        Body::from_stream(futures_util::stream::iter(pieces)),
    )
        .into_response()
}

/// `307` to the behaviour's `redirect_location`, or else to this
/// simulator's redirect target, addressed the way the client addressed us.
fn redirect_response(shared: &Shared, headers: &HeaderMap, decision: &Decision) -> Response {
    let location = match &decision.redirect_location {
        Some(location) => location.clone(),
        None => {
            let host = headers
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .filter(|h| !h.is_empty())
                .map_or_else(|| shared.addr.to_string(), str::to_owned);
            format!("http://{host}{REDIRECT_TARGET_PATH}")
        }
    };
    let mut response = error_response(
        StatusCode::TEMPORARY_REDIRECT,
        format!("simulated redirect to {location}"),
    );
    match HeaderValue::from_str(&location) {
        Ok(value) => {
            response.headers_mut().insert(LOCATION, value);
        }
        // Only an unvalidated `set_behavior` can get here.
        Err(_) => {
            tracing::warn!(%location, "redirect location is not a header value; sent without it")
        }
    }
    response
}

/// The target of simulated redirects: always a valid completion saying where
/// it came from, counted apart from the models' calls.
async fn redirect_target(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    shared.sim.record_redirected_call();
    let request: ChatRequest = serde_json::from_slice(&body).unwrap_or_default();
    let model = if request.model.is_empty() {
        "unknown-model".to_owned()
    } else {
        request.model.clone()
    };
    let prompt_tokens = prompt_tokens(&request);
    tracing::debug!(%model, "call to the redirect target");
    let answer = format!(
        "[{model}] simulated answer from the redirect target to: {}",
        request.last_user_text(PART_SEPARATOR)
    );
    if request.is_stream() {
        let plan = StreamPlan {
            outcome: Outcome::Ok,
            model,
            answer,
            prompt_tokens,
            include_usage: request.wants_stream_usage(),
            piece_chars: DEFAULT_STREAM_PIECE_CHARS,
            interval: Duration::from_millis(DEFAULT_STREAM_INTERVAL_MS),
            cut_after: DEFAULT_STREAM_CUT_AFTER,
            huge_body_bytes: DEFAULT_HUGE_BODY_BYTES,
        };
        return stream::respond(shared, plan);
    }
    let content = MessageContent::Text(answer);
    completion(&shared, &model, prompt_tokens, one_choice(Some(content)))
}

fn status_response(code: u16, decision: &Decision) -> Response {
    // Out-of-range codes only arrive through unvalidated `set_behavior`;
    // answer 500 rather than fail.
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = error_response(status, format!("simulated {}", status.as_u16()));
    if !matches!(status.as_u16(), 429 | 503) {
        return response;
    }
    if let Some(value) = &decision.retry_after {
        match HeaderValue::from_str(value) {
            Ok(value) => {
                response.headers_mut().insert(RETRY_AFTER, value);
            }
            // Only an unvalidated `set_behavior` can get here.
            Err(_) => tracing::warn!(%value, "retry_after is not a header value; not sent"),
        }
    }
    if let Some(ms) = decision.retry_after_ms {
        response
            .headers_mut()
            .insert("retry-after-ms", HeaderValue::from(ms));
    }
    response
}

async fn list_models(State(shared): State<Arc<Shared>>) -> Response {
    let data = shared
        .sim
        .listed_models()
        .into_iter()
        .map(|id| ModelObject {
            id,
            object: "model".to_owned(),
            created: None,
            owned_by: "upstream-sim".to_owned(),
        })
        .collect();
    Json(ModelList {
        object: "list".to_owned(),
        data,
    })
    .into_response()
}

async fn control_snapshot(State(shared): State<Arc<Shared>>) -> Response {
    Json(shared.sim.snapshot()).into_response()
}

async fn control_calls(State(shared): State<Arc<Shared>>) -> Response {
    Json(shared.sim.call_counts()).into_response()
}

fn parse_behavior(body: &[u8]) -> Result<Behavior, String> {
    let behavior: Behavior =
        serde_json::from_slice(body).map_err(|e| format!("invalid behavior JSON: {e}"))?;
    behavior
        .validate()
        .map_err(|e| format!("invalid behavior: {e}"))?;
    Ok(behavior)
}

async fn control_set_model(
    State(shared): State<Arc<Shared>>,
    Path(model): Path<String>,
    body: Bytes,
) -> Response {
    match parse_behavior(&body) {
        Ok(behavior) => {
            tracing::info!(%model, ?behavior, "behaviour replaced via control API");
            Json(shared.sim.set_behavior(&model, behavior)).into_response()
        }
        Err(message) => error_response(StatusCode::BAD_REQUEST, message),
    }
}

async fn control_set_default(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    match parse_behavior(&body) {
        Ok(behavior) => {
            tracing::info!(?behavior, "default behaviour replaced via control API");
            shared.sim.set_default(behavior);
            Json(shared.sim.snapshot()).into_response()
        }
        Err(message) => error_response(StatusCode::BAD_REQUEST, message),
    }
}

async fn control_reset(State(shared): State<Arc<Shared>>) -> Response {
    tracing::info!("simulator reset to start-up configuration via control API");
    shared.sim.reset();
    Json(shared.sim.snapshot()).into_response()
}
