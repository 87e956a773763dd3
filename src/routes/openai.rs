//! The OpenAI-compatible API: `POST /v1/chat/completions` and `GET /v1/models`, so that
//! OpenAI's SDKs, and what is built on them (LangChain's `ChatOpenAI`), get the
//! pipeline's answers with their base URL set to `http://HOST:PORT/v1`.
//!
//! The route reads OpenAI's request, then hands the question to the handler core
//! `/ask` uses ([`answer`]) behind the same guards; only the wire format differs. Source:
//! OpenAI's API reference, "Chat Completions" and "Models"; the types are in
//! [`crate::wire::openai`].
//!
//! - The question is the last `user` message (its text parts joined by a space).
//!   The `user` and `assistant` messages before it are the conversation, sent to the
//!   models; `system` and `developer` messages only with
//!   `openai_api.allow_client_system`. A request whose only `user` message is its
//!   question (assistant lines before it, a greeting, are dropped) and with no system
//!   message is a one-turn question, answered exactly as `/ask` answers it (cache,
//!   coalescing, stale answers, canned answers first); a conversation goes to the
//!   models, then the canned answers, then the default reply.
//! - Streams never take text back: where `/ask` sends `reset`, the later tier's answer
//!   follows after a blank line, and the last chunk says `"continued": true`.
//! - Errors are OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with
//!   the statuses and codes of `/ask` ([`openai_errors`] rewrites every error under
//!   `/v1/`).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::middleware::Next;
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Response};

use crate::clients::Client;
use crate::error::ApiError;
use crate::middleware::RequestId;
use crate::pipeline::{Answer, Mode, Source};
use crate::routes::answer;
use crate::routes::ask::is_json;
use crate::routes::body::json_object;
use crate::state::AppState;
use crate::telemetry::Api;
use crate::wire::openai::{
    self, CHAT_COMPLETION_CHUNK_OBJECT, CHAT_COMPLETION_OBJECT, ChatCompletion,
    ChatCompletionChunk, ChatMessage, ChatRequest, Choice, ChunkChoice, Delta, ErrorResponse,
    FINISH_STOP, MessageContent, ModelList, ModelObject, ResilientQa, ResponseMessage, STREAM_DONE,
    Usage,
};

/// The one model `GET /v1/models` lists, and the `model` of canned and default answers.
pub const MODEL_ID: &str = "resilient-qa";

/// `X-QA-Source`: the tier that answered (`cache`, `primary`, ... as `/ask`'s `source`).
pub const QA_SOURCE: HeaderName = HeaderName::from_static("x-qa-source");

/// What separates the text parts of one message when they are joined: a space, which
/// the cache key and the canned matcher fold like any white space.
const PART_SEPARATOR: &str = " ";

const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// A chat-completions request, read and checked.
struct Chat {
    /// The last `user` message's text, trimmed.
    question: String,
    /// The messages before it that reach the models; empty for a one-turn question.
    history: Vec<ChatMessage>,
    stream: bool,
    include_usage: bool,
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(state): State<AppState>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    req: Request,
) -> Response {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let chat = match read_chat(&state, &parts.headers, body).await {
        Ok(chat) => chat,
        Err(e) => {
            state.reject(e.code);
            return e.into_response();
        }
    };
    let Chat {
        question,
        history,
        stream,
        include_usage,
    } = chat;
    let found = if history.is_empty() {
        state
            .pipeline
            .lookup(&question, started.into(), &request_id)
            .await
    } else {
        Err(state
            .pipeline
            .conversation(&question, history, started.into(), &request_id))
    };
    let mode = if stream { Mode::Stream } else { Mode::Whole };
    let client = parts.extensions.get::<Client>();
    let (found, daily) = match answer::within_budget(&state, client, found, mode).await {
        Ok(admitted) => admitted,
        Err(refused) => return refused,
    };
    let mut response = answer_chat(
        state,
        request_id,
        question,
        started,
        found,
        stream,
        include_usage,
    )
    .await;
    if let Some(daily) = daily {
        response.extensions_mut().insert(daily);
    }
    response
}

/// The chat completion (whole, or as chunks) of a question the budget let through.
async fn answer_chat(
    state: AppState,
    request_id: std::sync::Arc<str>,
    question: String,
    started: Instant,
    found: Result<Answer, crate::pipeline::Miss>,
    stream: bool,
    include_usage: bool,
) -> Response {
    if stream {
        let chunks = Chunks {
            id: completion_id(&request_id),
            created: unix_now(),
            include_usage,
            reset: false,
        };
        // The head waits for the first text, to name its tier in X-QA-Source (what
        // LangChain shows of a stream); the last chunk names the answer's source.
        let (mut resp, first_source) = answer::stream(
            state,
            Api::OpenAi,
            request_id,
            question,
            started,
            found,
            chunks,
            answer::Head::WithFirstText,
        )
        .await;
        if let Some(source) = first_source {
            resp.headers_mut().insert(QA_SOURCE, source_header(source));
        }
        return resp;
    }
    let answer = answer::whole(&state, &request_id, &question, started, found).await;
    answer::finish(&state, Api::OpenAi, &answer, &request_id, started);
    let body = ChatCompletion {
        id: completion_id(&request_id),
        object: CHAT_COMPLETION_OBJECT.to_owned(),
        created: unix_now(),
        model: model_of(&answer).to_owned(),
        choices: vec![Choice {
            index: 0,
            message: ResponseMessage {
                role: "assistant".to_owned(),
                content: Some(MessageContent::Text(answer.text.to_string())),
            },
            finish_reason: Some(FINISH_STOP.to_owned()),
        }],
        usage: Some(answer.usage.unwrap_or_default()),
        resilient_qa: Some(extension(&answer, &request_id, false)),
    };
    let mut buf = Vec::with_capacity(answer.text.len() * 2 + 320);
    match serde_json::to_writer(&mut buf, &body) {
        Ok(()) => (
            [
                (header::CONTENT_TYPE, JSON),
                (QA_SOURCE, source_header(answer.source)),
            ],
            buf,
        )
            .into_response(),
        Err(_) => ApiError::internal().into_response(),
    }
}

/// `GET /v1/models`: the one model, `resilient-qa`.
pub async fn models() -> Response {
    axum::Json(ModelList {
        object: "list".to_owned(),
        data: vec![model_object()],
    })
    .into_response()
}

/// `GET /v1/models/{model}`: `resilient-qa`, or `404 not_found`.
pub async fn model(State(state): State<AppState>, Path(model): Path<String>) -> Response {
    if model == MODEL_ID {
        return axum::Json(model_object()).into_response();
    }
    state.reject("not_found");
    ApiError::new(
        axum::http::StatusCode::NOT_FOUND,
        "not_found",
        format!("the model '{model}' does not exist; this service serves '{MODEL_ID}'"),
    )
    .with_param("model")
    .into_response()
}

fn model_object() -> ModelObject {
    ModelObject {
        id: MODEL_ID.to_owned(),
        object: "model".to_owned(),
        created: Some(unix_now()),
        owned_by: MODEL_ID.to_owned(),
    }
}

/// Rewrites every error under `/v1/` in OpenAI's shape, `{"error": {"message", "type",
/// "param", "code"}}` (`type` `invalid_request_error` for a 4xx, `server_error` for a
/// 5xx; `code` the code `/ask` gives), keeping the status and headers; and counts the
/// refusals of both answering routes by API in `qa_api_rejected_total`.
pub async fn openai_errors(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let api = if path.starts_with("/v1/") {
        Some(Api::OpenAi)
    } else if path == "/ask" {
        Some(Api::Ask)
    } else {
        None
    };
    let resp = next.run(req).await;
    let Some(api) = api else {
        return resp;
    };
    let Some(error) = resp.extensions().get::<ApiError>().cloned() else {
        return resp;
    };
    state.reject_api(api, error.code);
    if api != Api::OpenAi {
        return resp;
    }
    let (parts, _) = resp.into_parts();
    let kind = if error.status.is_client_error() {
        "invalid_request_error"
    } else {
        "server_error"
    };
    let body = ErrorResponse {
        error: openai::ApiError {
            message: error.message,
            kind: kind.to_owned(),
            param: error.param.map(str::to_owned),
            code: Some(error.code.to_owned()),
        },
    };
    let json = serde_json::to_vec(&body).unwrap_or_default();
    Response::from_parts(parts, Body::from(json))
}

/// Reads and checks the request in `/ask`'s order: content type (415), JSON and field
/// types (400), the question's rules (422).
async fn read_chat(state: &AppState, headers: &HeaderMap, body: Body) -> Result<Chat, ApiError> {
    let bytes = crate::guards::buffered(body).await;
    if !is_json(headers) {
        return Err(ApiError::unsupported_media_type());
    }
    let req: ChatRequest = json_object(
        &bytes,
        "a chat-completions request: a JSON object with \"model\" (a string) and \"messages\" (an array of messages)",
    )?;
    if req.model.is_empty() {
        return Err(
            ApiError::invalid_json("you must provide a model parameter (any name)")
                .with_param("model"),
        );
    }
    let Some(last) = req.messages.iter().rposition(|m| m.role == "user") else {
        return Err(ApiError::invalid_json(
            "messages must hold at least one message with role \"user\"",
        )
        .with_param("messages"));
    };
    let question = text_of(&req.messages[last]);
    let question = question.trim();
    if question.is_empty() {
        return Err(
            ApiError::invalid_question("the last user message has no text").with_param("messages"),
        );
    }
    let limit = state.config.limits.max_question_chars;
    let chars = question.chars().count();
    if chars > limit {
        return Err(ApiError::invalid_question(format!(
            "the last user message is {chars} characters long; the limit is {limit}"
        ))
        .with_param("messages"));
    }
    let allow_system = state.config.openai_api.allow_client_system;
    let history = req.messages[..last]
        .iter()
        .filter_map(|m| {
            let role = match m.role.as_str() {
                "user" | "assistant" => m.role.as_str(),
                "system" | "developer" if allow_system => "system",
                _ => return None,
            };
            let text = text_of(m);
            (!text.trim().is_empty()).then(|| ChatMessage {
                role: role.to_owned(),
                content: Some(MessageContent::Text(text)),
            })
        })
        .collect::<Vec<_>>();
    // A conversation of one `user` message is a one-turn question (the contract): the
    // assistant's lines before it (a greeting) do not make it one, and are not sent. A
    // client's system message does: it shapes the answer, which must not then be served
    // from the cache to others.
    let history = if history.iter().all(|m| m.role == "assistant") {
        Vec::new()
    } else {
        history
    };
    Ok(Chat {
        question: question.to_owned(),
        history,
        stream: req.is_stream(),
        include_usage: req.wants_stream_usage(),
    })
}

/// A message's text: its string, or its text parts joined.
fn text_of(message: &ChatMessage) -> String {
    message
        .content
        .as_ref()
        .map(|c| c.to_text(PART_SEPARATOR))
        .unwrap_or_default()
}

/// `chatcmpl-<request id>`.
fn completion_id(request_id: &str) -> String {
    format!("chatcmpl-{request_id}")
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The model that wrote the answer; `resilient-qa` for canned and default answers.
fn model_of(answer: &Answer) -> &str {
    answer.model.as_deref().unwrap_or(MODEL_ID)
}

fn source_header(source: Source) -> HeaderValue {
    HeaderValue::from_static(source.as_str())
}

/// The `resilient_qa` extension field for `answer`.
fn extension(answer: &Answer, request_id: &str, reset: bool) -> ResilientQa {
    ResilientQa {
        source: answer.source.as_str().to_owned(),
        degraded: answer.degraded(),
        request_id: request_id.to_owned(),
        continued: answer.continued || reset,
    }
}

/// A walk as `chat.completion.chunk` events: the role first, a chunk per piece, the
/// finishing chunk with `resilient_qa`, the usage chunk when asked for, then `[DONE]`.
/// A `reset` takes nothing back: the answer that follows comes after a blank line.
struct Chunks {
    id: String,
    created: u64,
    include_usage: bool,
    /// A reset happened: the text is the start of one answer, then another.
    reset: bool,
}

impl Chunks {
    fn chunk(
        &self,
        model: &str,
        choices: Vec<ChunkChoice>,
        usage: Option<Usage>,
    ) -> ChatCompletionChunk {
        ChatCompletionChunk {
            id: self.id.clone(),
            object: CHAT_COMPLETION_CHUNK_OBJECT.to_owned(),
            created: self.created,
            model: model.to_owned(),
            choices,
            usage,
            error: None,
            resilient_qa: None,
        }
    }

    fn piece(&self, delta: Delta, finish_reason: Option<&str>) -> ChatCompletionChunk {
        self.chunk(
            MODEL_ID,
            vec![ChunkChoice {
                index: 0,
                delta,
                finish_reason: finish_reason.map(str::to_owned),
            }],
            None,
        )
    }
}

/// One `data: {json}` event.
fn event(chunk: &ChatCompletionChunk) -> SseEvent {
    SseEvent::default().data(serde_json::to_string(chunk).unwrap_or_default())
}

impl answer::Format for Chunks {
    fn open(&mut self) -> Vec<SseEvent> {
        let role = Delta {
            role: Some("assistant".to_owned()),
            content: Some(MessageContent::Text(String::new())),
        };
        vec![event(&self.piece(role, None))]
    }

    fn delta(&mut self, text: &str) -> SseEvent {
        event(&self.piece(Delta::text(text), None))
    }

    fn reset(&mut self, _reason: &str) -> SseEvent {
        self.reset = true;
        event(&self.piece(Delta::text("\n\n"), None))
    }

    fn done(&mut self, answer: &Answer, request_id: &str, _elapsed: Duration) -> Vec<SseEvent> {
        let extension = extension(answer, request_id, self.reset);
        let mut last = self.piece(Delta::default(), Some(FINISH_STOP));
        last.model = model_of(answer).to_owned();
        last.resilient_qa = Some(extension.clone());
        let mut out = vec![event(&last)];
        if self.include_usage {
            let mut usage = self.chunk(
                model_of(answer),
                Vec::new(),
                Some(answer.usage.unwrap_or_default()),
            );
            usage.resilient_qa = Some(extension);
            out.push(event(&usage));
        }
        out.push(SseEvent::default().data(STREAM_DONE));
        out
    }
}
