//! OpenAI chat-completions wire types: the request, the one-shot response
//! (`chat.completion`), the streamed chunk (`chat.completion.chunk`), the
//! error object and the model list.
//!
//! Source: OpenAI's API reference, "Chat Completions" (`POST
//! /v1/chat/completions`, the chat completion object, the chat completion
//! chunk object, streaming) and "Models" (`GET /v1/models`).
//!
//! Input is read permissively: unknown fields are ignored and a message's
//! `content` may be a string or an array of parts. Output is written exactly:
//! fields OpenAI always sends are always written (`null` included), fields it
//! sends only sometimes are left out when unset.

use serde::{Deserialize, Serialize};

/// `object` of a one-shot answer.
pub const CHAT_COMPLETION_OBJECT: &str = "chat.completion";

/// `object` of every streamed chunk.
pub const CHAT_COMPLETION_CHUNK_OBJECT: &str = "chat.completion.chunk";

/// The data of the server-sent event that ends a successful stream
/// (`data: [DONE]`).
pub const STREAM_DONE: &str = "[DONE]";

/// `finish_reason` of an answer the model ended by itself.
pub const FINISH_STOP: &str = "stop";

/// `POST /v1/chat/completions` request body. Only the fields this crate
/// reads or sends are typed; any other field is ignored on input.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// The model asked for; OpenAI requires it (an empty string when absent
    /// on input, for the receiver to reject).
    #[serde(default)]
    pub model: String,
    /// The conversation, oldest first.
    #[serde(default)]
    pub messages: Vec<ChatMessage>,
    /// `true` asks for server-sent events of [`ChatCompletionChunk`]s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// Options of a streamed answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    /// Upper bound of the answer's length, in tokens (read as unset when it is not a
    /// number of tokens).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient"
    )]
    pub max_tokens: Option<u64>,
    /// Sampling temperature, `0..=2` (read as unset when it is not a number).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient"
    )]
    pub temperature: Option<f64>,
}

/// A value of type `T`, or `None` for any other JSON value: for fields that are read only
/// as hints, so that a client's odd value for one is not a refused request.
fn lenient<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    Ok(serde_json::from_value(serde_json::Value::deserialize(d)?).ok())
}

impl ChatRequest {
    /// Whether the request asks for a streamed answer.
    pub fn is_stream(&self) -> bool {
        self.stream == Some(true)
    }

    /// Whether a streamed answer must end with a usage chunk
    /// (`stream_options.include_usage`).
    pub fn wants_stream_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .is_some_and(|options| options.include_usage == Some(true))
    }

    /// The content of the last `user` message (text parts joined with
    /// `separator`), or `""` if there is none.
    pub fn last_user_text(&self, separator: &str) -> String {
        self.messages
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .and_then(|m| m.content.as_ref())
            .map(|c| c.to_text(separator))
            .unwrap_or_default()
    }
}

/// `stream_options` of a [`ChatRequest`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamOptions {
    /// `true`: one more chunk before `[DONE]`, with `"choices": []` and the
    /// whole call's [`Usage`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_usage: Option<bool>,
}

/// One message of a conversation: `{"role": "user", "content": "..."}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `developer`, `user`, `assistant` or `tool`.
    #[serde(default)]
    pub role: String,
    /// The text; `null` or absent for an assistant message that only calls
    /// tools.
    #[serde(default)]
    pub content: Option<MessageContent>,
}

/// A message's `content`: a string, or an array of parts of which the
/// `text` ones carry text (as OpenAI accepts and vLLM or Mistral answer).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    /// `"content": "..."`.
    Text(String),
    /// `"content": [{"type": "text", "text": "..."}, ...]`.
    Parts(Vec<ContentPart>),
}

impl MessageContent {
    /// The text: the string itself, or the text parts joined with
    /// `separator` (other parts are skipped).
    pub fn to_text(&self, separator: &str) -> String {
        match self {
            MessageContent::Text(text) => text.clone(),
            MessageContent::Parts(parts) => parts
                .iter()
                .filter_map(|p| p.text.as_deref())
                .collect::<Vec<_>>()
                .join(separator),
        }
    }
}

/// One part of an array `content`: `{"type": "text", "text": "..."}`.
/// Parts of other types (`image_url`, ...) are read with `text` unset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContentPart {
    /// `text`, `image_url`, `input_audio`, ...
    #[serde(rename = "type", default)]
    pub kind: String,
    /// The text of a `text` part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

impl ContentPart {
    /// A `text` part.
    pub fn text(text: impl Into<String>) -> ContentPart {
        ContentPart {
            kind: "text".to_owned(),
            text: Some(text.into()),
        }
    }
}

/// A one-shot answer: `{"id", "object": "chat.completion", "created",
/// "model", "choices": [...], "usage": {...}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletion {
    /// `chatcmpl-...`.
    #[serde(default)]
    pub id: String,
    /// Always [`CHAT_COMPLETION_OBJECT`].
    #[serde(default)]
    pub object: String,
    /// Unix time of the answer, in seconds.
    #[serde(default)]
    pub created: u64,
    /// The model that wrote the answer.
    #[serde(default)]
    pub model: String,
    /// The answers; one unless the request asked for more (`n`).
    #[serde(default)]
    pub choices: Vec<Choice>,
    /// Tokens the call cost, when reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// How resilient-qa answered (its extension field; absent from other servers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resilient_qa: Option<ResilientQa>,
}

/// The `resilient_qa` extension field of a [`ChatCompletion`], and of the last chunk(s)
/// of a stream: `{"source", "degraded", "request_id"}`, plus `"continued": true` for an
/// answer written by more than one call (or, in a stream, finished by a later tier after
/// a blank line). Clients that do not know it ignore it, as OpenAI's SDKs do.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResilientQa {
    /// `cache`, `primary`, `secondary`, `canned`, `stale` or `default`, as `/ask` says.
    pub source: String,
    /// Whether the answer is a fallback (as `/ask`'s `degraded`).
    pub degraded: bool,
    /// The request's id, as in its `X-Request-Id` header.
    pub request_id: String,
    /// Present (and true) only when the answer was written by more than one call.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub continued: bool,
}

/// One answer of a [`ChatCompletion`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    /// Position among the choices, from 0.
    #[serde(default)]
    pub index: u32,
    /// The answer (read as empty when absent).
    #[serde(default)]
    pub message: ResponseMessage,
    /// Why the model stopped: `stop`, `length`, `content_filter`,
    /// `tool_calls`; `null` when unknown.
    #[serde(default)]
    pub finish_reason: Option<String>,
}

/// The message of a [`Choice`]: `{"role": "assistant", "content": ...}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ResponseMessage {
    /// `assistant`.
    #[serde(default)]
    pub role: String,
    /// The answer's text; written as `null` when unset (a refusal or tool
    /// call has no text).
    #[serde(default)]
    pub content: Option<MessageContent>,
}

/// Token counts of one call: `{"prompt_tokens", "completion_tokens",
/// "total_tokens"}`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens of the request's messages.
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Tokens of the answer.
    #[serde(default)]
    pub completion_tokens: u64,
    /// The sum of both.
    #[serde(default)]
    pub total_tokens: u64,
}

impl Usage {
    /// Counts with `total_tokens` their (saturating) sum.
    pub fn new(prompt_tokens: u64, completion_tokens: u64) -> Usage {
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens.saturating_add(completion_tokens),
        }
    }
}

/// One server-sent event of a streamed answer (`data: {...}`):
/// `{"id", "object": "chat.completion.chunk", "created", "model",
/// "choices": [...]}`, plus `usage` on the last chunk when the request set
/// `stream_options.include_usage` (that chunk has `"choices": []`).
///
/// OpenAI also writes `"usage": null` on the other chunks of such a stream;
/// here `usage` is left out when unset, which readers treat alike.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionChunk {
    /// `chatcmpl-...`, the same on every chunk of a stream.
    #[serde(default)]
    pub id: String,
    /// Always [`CHAT_COMPLETION_CHUNK_OBJECT`].
    #[serde(default)]
    pub object: String,
    /// Unix time of the stream's start, in seconds, the same on every chunk.
    #[serde(default)]
    pub created: u64,
    /// The model that writes the answer.
    #[serde(default)]
    pub model: String,
    /// The pieces this chunk adds, one per choice; empty on the usage chunk.
    #[serde(default)]
    pub choices: Vec<ChunkChoice>,
    /// Tokens of the whole call, on the usage chunk only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// An error some providers send inside a stream (`data: {"error": {...}}`) in place
    /// of a chunk: the stream failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
    /// resilient-qa's extension, on the last chunk(s) of its streams.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resilient_qa: Option<ResilientQa>,
}

/// One choice's piece in a [`ChatCompletionChunk`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChunkChoice {
    /// Position among the choices, from 0.
    #[serde(default)]
    pub index: u32,
    /// What this chunk adds to the message.
    #[serde(default)]
    pub delta: Delta,
    /// `null` until the choice's last chunk, which says why it ended
    /// (`stop`, `length`, ...).
    #[serde(default)]
    pub finish_reason: Option<String>,
}

/// What a chunk adds: the role on the first chunk, a piece of text on the
/// following ones, nothing (`{}`) on the one with the `finish_reason`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    /// `assistant`, on the first chunk only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// The next piece of the text (`""` on the first chunk): a string, or (some
    /// providers) an array of text parts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<MessageContent>,
}

impl Delta {
    /// A delta that adds `text`.
    pub fn text(text: impl Into<String>) -> Delta {
        Delta {
            role: None,
            content: Some(MessageContent::Text(text.into())),
        }
    }
}

/// An error answer, as a response body or as an event inside a stream:
/// `{"error": {"message", "type", "code"}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorResponse {
    /// What went wrong.
    pub error: ApiError,
}

/// The `error` object of an [`ErrorResponse`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApiError {
    /// A sentence for people.
    #[serde(default)]
    pub message: String,
    /// The class: `invalid_request_error`, `rate_limit_error`,
    /// `server_error`, ...
    #[serde(rename = "type", default)]
    pub kind: String,
    /// The request field at fault, when there is one; written as `null` otherwise, as
    /// OpenAI writes it.
    #[serde(default)]
    pub param: Option<String>,
    /// A machine-readable code (`rate_limit_exceeded`, ...), or `null`. Read from a
    /// string or a number (some providers send numbers).
    #[serde(default, deserialize_with = "string_or_number")]
    pub code: Option<String>,
}

/// A JSON string, number or `null` as an optional string.
fn string_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    })
}

impl ErrorResponse {
    /// An error of class `kind` with `message`, no `param` and `code` `null`.
    pub fn new(kind: impl Into<String>, message: impl Into<String>) -> ErrorResponse {
        ErrorResponse {
            error: ApiError {
                message: message.into(),
                kind: kind.into(),
                param: None,
                code: None,
            },
        }
    }
}

/// `GET /v1/models` body: `{"object": "list", "data": [...]}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelList {
    /// Always `list`.
    pub object: String,
    /// The models.
    pub data: Vec<ModelObject>,
}

/// One entry of a [`ModelList`]: `{"id", "object": "model", "owned_by"}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelObject {
    /// The name to put in a request's `model`.
    pub id: String,
    /// Always `model`.
    pub object: String,
    /// Unix time the model was created, in seconds, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<u64>,
    /// Who serves it.
    pub owned_by: String,
}
