//! The model tiers: an OpenAI chat-completions client on reqwest, and the classification
//! of its failures. Every failure is classified once, here, into [`ErrorKind`]; that kind
//! decides the retry, labels the metric and fills the error report.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{CONTENT_LENGTH, HeaderMap, HeaderName, RETRY_AFTER};
use secrecy::{ExposeSecret, SecretString};

use crate::config::TierConfig;
use crate::resilience::retry::{RetryPolicy, Transient};
use crate::wire::openai::{
    ChatCompletion, ChatCompletionChunk, ChatMessage, ChatRequest, MessageContent, STREAM_DONE,
    StreamOptions, Usage,
};

use super::Tier;

pub use super::source::ErrorKind;

/// `retry-after-ms`: the wait in milliseconds, as OpenAI and Azure send it.
const RETRY_AFTER_MS: HeaderName = HeaderName::from_static("retry-after-ms");

/// One failed model call.
#[derive(Debug, Clone)]
pub struct UpstreamError {
    pub kind: ErrorKind,
    /// Whether another attempt may succeed (transient failures only).
    pub transient: bool,
    pub retry_after: Option<Duration>,
    /// For the logs: `HTTP 503`, `timed out after 15000 ms`, a connection error's cause
    /// chain... Never carries a URL (reqwest's errors are stripped of theirs), but may
    /// name internal hosts: [`UpstreamError::public_message`] is what leaves the process.
    pub message: String,
    /// The answer passed the tier's `max_response_bytes`: a runaway answer, which no call
    /// should be asked to continue.
    pub oversized: bool,
}

impl Transient for UpstreamError {
    fn is_transient(&self) -> bool {
        self.transient
    }
    fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

impl UpstreamError {
    /// A call abandoned at the request deadline (its future dropped): a `timeout`.
    pub fn abandoned() -> Self {
        Self::new(
            ErrorKind::Timeout,
            true,
            "abandoned at the request deadline",
        )
    }

    /// A response that is not a usable answer (`invalid_response`, transient).
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidResponse, true, message)
    }

    fn new(kind: ErrorKind, transient: bool, message: impl Into<String>) -> Self {
        UpstreamError {
            kind,
            transient,
            retry_after: None,
            message: message.into(),
            oversized: false,
        }
    }

    /// What `/stats` may show of this failure: the status for HTTP failures, else a
    /// sentence per kind. The detail (hosts, causes) stays in the logs.
    pub fn public_message(&self) -> String {
        if self.message.starts_with("HTTP ") {
            return self.message.clone();
        }
        match self.kind {
            ErrorKind::RateLimited => "rate limited",
            ErrorKind::Timeout => "timed out",
            ErrorKind::ConnectError => "connection failed",
            ErrorKind::ServerError => "server error",
            ErrorKind::ClientError => "request refused",
            ErrorKind::InvalidResponse => "not a valid chat completion",
        }
        .to_string()
    }

    /// Classifies a non-success HTTP status. 408, 429, 500, 502, 503 and 504 are
    /// transient; every other status is not. A redirect (3xx) is never followed: it is a
    /// `client_error`, not retried, since the same request would be redirected again.
    pub fn from_status(status: StatusCode, headers: &HeaderMap) -> Self {
        let code = status.as_u16();
        let kind = match code {
            408 => ErrorKind::Timeout,
            429 => ErrorKind::RateLimited,
            500..=599 => ErrorKind::ServerError,
            _ => ErrorKind::ClientError,
        };
        let transient = matches!(code, 408 | 429 | 500 | 502 | 503 | 504);
        let retry_after = if matches!(code, 429 | 503) {
            retry_after(headers)
        } else {
            None
        };
        let message = if status.is_redirection() {
            format!("HTTP {code} (redirect not followed)")
        } else {
            format!("HTTP {code}")
        };
        UpstreamError {
            kind,
            transient,
            retry_after,
            message,
            oversized: false,
        }
    }

    fn from_reqwest(err: reqwest::Error, timeout: Duration) -> Self {
        // The URL may carry credentials (`http://user:secret@host/v1`): never in a message.
        let err = err.without_url();
        let err = &err;
        if err.is_timeout() {
            UpstreamError::new(
                ErrorKind::Timeout,
                true,
                format!("timed out after {} ms", timeout.as_millis()),
            )
        } else if err.is_decode() || err.is_body() {
            UpstreamError::new(
                ErrorKind::InvalidResponse,
                true,
                format!("unreadable response body: {}", error_chain(err)),
            )
        } else {
            UpstreamError::new(ErrorKind::ConnectError, true, error_chain(err))
        }
    }
}

/// The wait a 429 or 503 asks for: `retry-after-ms` (milliseconds, as OpenAI and Azure
/// send it) when present and valid, else `Retry-After`. `None` when neither says anything
/// usable.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let header = |name: &HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    header(&RETRY_AFTER_MS)
        .and_then(|v| parse_digits(v.trim()))
        .map(Duration::from_millis)
        .or_else(|| header(&RETRY_AFTER).and_then(parse_retry_after))
}

/// A `Retry-After` value (RFC 9110, section 10.2.3): `delay-seconds` (digits only, so
/// `+3` or `-1` is not one) or an HTTP date. A number of seconds too large for a `u64`
/// is the longest wait there is; the caller compares it with its deadline.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return Some(parse_digits(value).map_or(Duration::MAX, Duration::from_secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// A non-empty run of ASCII digits as a number; `None` for anything else, or on overflow.
fn parse_digits(value: &str) -> Option<u64> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// A model's answer.
#[derive(Debug, Clone)]
pub struct Completion {
    pub text: String,
    pub model: String,
    /// Tokens the call cost, as the upstream reported them (`None` when it did not).
    pub usage: Option<Usage>,
}

/// A message of `role` with `text`.
fn text_message(role: &str, text: impl Into<String>) -> ChatMessage {
    ChatMessage {
        role: role.to_owned(),
        content: Some(MessageContent::Text(text.into())),
    }
}

fn first_token_timeout(limit: Duration) -> UpstreamError {
    UpstreamError::new(
        ErrorKind::Timeout,
        true,
        format!("no first token within {} ms", limit.as_millis()),
    )
}

type EventStream = std::pin::Pin<
    Box<
        dyn futures_util::Stream<
                Item = Result<
                    eventsource_stream::Event,
                    eventsource_stream::EventStreamError<reqwest::Error>,
                >,
            > + Send,
    >,
>;

/// A streamed answer being read: its text pieces, in order, each within its timeout.
pub struct CompletionStream {
    events: EventStream,
    /// The first text must come before this.
    first_deadline: tokio::time::Instant,
    first_token: Duration,
    /// Longest quiet between two pieces once the first has come.
    idle: Duration,
    started: bool,
    /// When the last text came.
    last_text: tokio::time::Instant,
    /// A choice said `finish_reason`: the stream may end without `[DONE]`.
    finished: bool,
    bytes: usize,
    max_bytes: usize,
    /// The call's token counts, once a chunk has carried them.
    usage: Option<Usage>,
}

impl CompletionStream {
    /// The token counts the upstream reported (on its last chunk), if it did.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// The next piece of text; `Ok(None)` once the answer is complete (`[DONE]`, or the
    /// end of the stream after a `finish_reason`).
    ///
    /// Errors (each a failed attempt, classified by [`ErrorKind`]): no first text within
    /// the first-token timeout or no piece within the idle timeout (`timeout`); the
    /// connection cut before the answer's end (`connect_error`); an error event inside
    /// the stream (`server_error`); a chunk that is not JSON, or more than the tier's
    /// `max_response_bytes` in all (`invalid_response`).
    pub async fn next_piece(&mut self) -> Result<Option<String>, UpstreamError> {
        use futures_util::StreamExt;
        loop {
            let next = if self.started {
                // Measured from the last text, not the last event: chunks with no text
                // (keep-alives, usage) do not keep an idle stream alive.
                let idle_until = self
                    .last_text
                    .checked_add(self.idle)
                    .unwrap_or_else(tokio::time::Instant::now);
                match tokio::time::timeout_at(idle_until, self.events.next()).await {
                    Ok(n) => n,
                    Err(_) => {
                        return Err(UpstreamError::new(
                            ErrorKind::Timeout,
                            true,
                            format!("stream idle for {} ms", self.idle.as_millis()),
                        ));
                    }
                }
            } else {
                match tokio::time::timeout_at(self.first_deadline, self.events.next()).await {
                    Ok(n) => n,
                    Err(_) => return Err(first_token_timeout(self.first_token)),
                }
            };
            let event = match next {
                None if self.finished => return Ok(None),
                None => {
                    return Err(UpstreamError::new(
                        ErrorKind::ConnectError,
                        true,
                        "stream ended before the answer did",
                    ));
                }
                Some(Err(eventsource_stream::EventStreamError::Transport(e))) => {
                    if self.finished {
                        return Ok(None);
                    }
                    let e = e.without_url();
                    return Err(UpstreamError::new(
                        ErrorKind::ConnectError,
                        true,
                        format!("stream broken: {}", error_chain(&e)),
                    ));
                }
                Some(Err(e)) => {
                    return Err(UpstreamError::new(
                        ErrorKind::InvalidResponse,
                        true,
                        format!("not a server-sent event stream: {e}"),
                    ));
                }
                Some(Ok(event)) => event,
            };
            self.bytes = self.bytes.saturating_add(event.data.len());
            if self.bytes > self.max_bytes {
                return Err(UpstreamError {
                    oversized: true,
                    ..UpstreamError::new(
                        ErrorKind::InvalidResponse,
                        false,
                        format!("streamed answer larger than {} bytes", self.max_bytes),
                    )
                });
            }
            let data = event.data.trim();
            if data == STREAM_DONE {
                return Ok(None);
            }
            if data.is_empty() {
                continue;
            }
            let chunk: ChatCompletionChunk = serde_json::from_str(data).map_err(|e| {
                UpstreamError::new(
                    ErrorKind::InvalidResponse,
                    true,
                    format!("not a chat.completion.chunk: {e}"),
                )
            })?;
            if let Some(error) = chunk.error {
                let message = if error.message.is_empty() {
                    "(no message)"
                } else {
                    &error.message
                };
                return Err(UpstreamError::new(
                    ErrorKind::ServerError,
                    true,
                    format!("error event in the stream: {message}"),
                ));
            }
            if chunk.usage.is_some() {
                self.usage = chunk.usage;
            }
            let mut text = String::new();
            for choice in chunk.choices {
                if choice.finish_reason.is_some() {
                    self.finished = true;
                }
                if let Some(content) = choice.delta.content {
                    text.push_str(&content.to_text(""));
                }
            }
            if !text.is_empty() {
                self.started = true;
                self.last_text = tokio::time::Instant::now();
                return Ok(Some(text));
            }
        }
    }
}

/// One configured model tier.
pub struct ModelClient {
    pub tier: Tier,
    pub model: String,
    url: reqwest::Url,
    api_key: Option<SecretString>,
    prompt: String,
    language_instruction: String,
    temperature: f64,
    max_tokens: Option<u32>,
    /// Largest response body read, in bytes; a larger one is an `invalid_response`.
    max_response_bytes: usize,
    /// The instruction that asks a streamed call to go on from text already sent.
    continue_prompt: String,
    /// Streams: the longest wait for the first text, and between two pieces.
    pub first_token_timeout: Duration,
    pub stream_idle_timeout: Duration,
    pub attempt_timeout: Duration,
    pub retry: RetryPolicy,
    http: reqwest::Client,
}

impl ModelClient {
    pub fn new(
        tier: Tier,
        cfg: &TierConfig,
        base_url: &str,
        api_key: Option<SecretString>,
        http: reqwest::Client,
    ) -> Result<Self, String> {
        // Parsed once here, not on every call.
        let url = format!("{}/chat/completions", base_url.trim_end_matches('/'));
        let url = reqwest::Url::parse(&url).map_err(|e| format!("{url}: {e}"))?;
        Ok(ModelClient {
            tier,
            model: cfg.model.clone(),
            url,
            api_key,
            prompt: cfg.prompt.clone(),
            language_instruction: cfg.language_instruction.clone(),
            temperature: cfg.temperature,
            max_tokens: cfg.max_tokens,
            max_response_bytes: cfg.max_response_bytes,
            continue_prompt: cfg.continue_prompt.clone(),
            first_token_timeout: Duration::from_millis(cfg.first_token_timeout_ms),
            stream_idle_timeout: Duration::from_millis(cfg.stream_idle_timeout_ms),
            attempt_timeout: Duration::from_millis(cfg.attempt_timeout_ms),
            retry: RetryPolicy {
                max_attempts: cfg.max_attempts,
                initial_backoff: Duration::from_millis(cfg.initial_backoff_ms),
                max_backoff: Duration::from_millis(cfg.max_backoff_ms),
                jitter: true,
            },
            http,
        })
    }

    /// The user message for `question`: the prompt, followed by the language
    /// instruction when `language` (the question's, when not the default) is given.
    pub fn message(&self, question: &str, language: Option<&str>) -> String {
        let mut content = self.prompt.replace("{question}", question);
        if let Some(lang) = language
            && !self.language_instruction.is_empty()
        {
            content.push_str(
                &self
                    .language_instruction
                    .replace("{language}", crate::faq::lang::english_name(lang)),
            );
        }
        content
    }

    /// The messages of one call for `question`, asked after `history` (earlier messages
    /// of a conversation, oldest first; empty for a one-turn question).
    ///
    /// The conversation's first `user` message is written in the tier's prompt (with the
    /// language instruction), exactly as it was sent when it was asked alone, and the rest
    /// of the conversation follows it as the client sent it, `question` last as a plain
    /// `user` message. A one-turn question is thus the prompt with the question, alone.
    /// With `continue_from`, the text already sent follows as the assistant's message,
    /// then the tier's `continue_prompt`.
    pub fn messages(
        &self,
        question: &str,
        language: Option<&str>,
        history: &[ChatMessage],
        continue_from: Option<&str>,
    ) -> Vec<ChatMessage> {
        let mut messages = Vec::with_capacity(history.len() + 3);
        messages.extend_from_slice(history);
        messages.push(text_message("user", question));
        if let Some(first) = messages.iter_mut().find(|m| m.role == "user") {
            let text = first
                .content
                .as_ref()
                .map(|c| c.to_text("\n"))
                .unwrap_or_default();
            first.content = Some(MessageContent::Text(self.message(&text, language)));
        }
        if let Some(sent) = continue_from {
            messages.push(text_message("assistant", sent));
            messages.push(text_message("user", self.continue_prompt.as_str()));
        }
        messages
    }

    /// The request body of one call.
    fn request(&self, messages: Vec<ChatMessage>, stream: bool) -> ChatRequest {
        ChatRequest {
            model: self.model.clone(),
            messages,
            // Streams ask for the token counts, which come on the last chunk.
            stream: stream.then_some(true),
            stream_options: stream.then_some(StreamOptions {
                include_usage: Some(true),
            }),
            max_tokens: self.max_tokens.map(u64::from),
            temperature: Some(self.temperature),
        }
    }

    /// One call, bounded by `timeout`. `language`: the question's language when it is
    /// not the default one (the model is told to answer in it). A completion with no
    /// choices, or with empty or null content, is an `invalid_response`: it is never
    /// returned as an answer.
    pub async fn complete(
        &self,
        question: &str,
        language: Option<&str>,
        history: &[ChatMessage],
        timeout: Duration,
    ) -> Result<Completion, UpstreamError> {
        let body = self.request(self.messages(question, language, history, None), false);
        let mut req = self
            .http
            .post(self.url.clone())
            .timeout(timeout)
            .json(&body);
        if let Some(key) = &self.api_key {
            req = req.bearer_auth(key.expose_secret());
        }
        let resp = req
            .send()
            .await
            .map_err(|e| UpstreamError::from_reqwest(e, timeout))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(UpstreamError::from_status(status, resp.headers()));
        }
        let bytes = self.read_capped(resp, timeout).await?;
        let parsed: ChatCompletion = serde_json::from_slice(&bytes).map_err(|e| {
            UpstreamError::new(
                ErrorKind::InvalidResponse,
                true,
                format!("not a chat completion: {e}"),
            )
        })?;
        let usage = parsed.usage;
        let text = parsed
            .choices
            .into_iter()
            .next()
            .and_then(|c| c.message.content)
            .map(|c| c.to_text(""))
            .filter(|t| !t.trim().is_empty())
            .ok_or_else(|| {
                UpstreamError::new(
                    ErrorKind::InvalidResponse,
                    true,
                    "completion has no choices or empty content",
                )
            })?;
        Ok(Completion {
            text,
            // The configured name, not the provider's dated variant, so clients and
            // metrics see one stable name per tier.
            model: self.model.clone(),
            usage,
        })
    }

    /// Opens a streamed call (`stream: true`). With `continue_from`, the call is asked to
    /// go on from text already sent: that text as the assistant's message, then the
    /// tier's `continue_prompt`. The response's head must come within `first_token`, as
    /// must the first text of the answer (see [`CompletionStream::next_piece`]).
    ///
    /// Errors: every failure before the stream starts, classified as for
    /// [`ModelClient::complete`].
    pub async fn open_stream(
        &self,
        question: &str,
        language: Option<&str>,
        history: &[ChatMessage],
        continue_from: Option<&str>,
        first_token: Duration,
        idle: Duration,
    ) -> Result<CompletionStream, UpstreamError> {
        let messages = self.messages(question, language, history, continue_from);
        let body = self.request(messages, true);
        let first_deadline = tokio::time::Instant::now()
            .checked_add(first_token)
            .unwrap_or_else(tokio::time::Instant::now);
        let mut req = self.http.post(self.url.clone()).json(&body);
        if let Some(key) = &self.api_key {
            req = req.bearer_auth(key.expose_secret());
        }
        let resp = match tokio::time::timeout_at(first_deadline, req.send()).await {
            Ok(r) => r.map_err(|e| UpstreamError::from_reqwest(e, first_token))?,
            Err(_) => return Err(first_token_timeout(first_token)),
        };
        let status = resp.status();
        if !status.is_success() {
            return Err(UpstreamError::from_status(status, resp.headers()));
        }
        use eventsource_stream::Eventsource;
        Ok(CompletionStream {
            events: Box::pin(resp.bytes_stream().eventsource()),
            first_deadline,
            first_token,
            idle,
            started: false,
            last_text: tokio::time::Instant::now(),
            finished: false,
            bytes: 0,
            max_bytes: self.max_response_bytes,
            usage: None,
        })
    }

    /// The response body, read piece by piece and given up on (connection dropped) as
    /// soon as it passes `max_response_bytes`, so that an endless or huge answer costs at
    /// most that much memory and transfer.
    async fn read_capped(
        &self,
        mut resp: reqwest::Response,
        timeout: Duration,
    ) -> Result<Vec<u8>, UpstreamError> {
        let cap = self.max_response_bytes;
        let too_large = || {
            UpstreamError::new(
                ErrorKind::InvalidResponse,
                true,
                format!("response body larger than {cap} bytes"),
            )
        };
        let declared = resp
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > cap as u64) {
            return Err(too_large());
        }
        let mut body = Vec::with_capacity(declared.map_or(4096, |n| n as usize));
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| UpstreamError::from_reqwest(e, timeout))?
        {
            if body.len().saturating_add(chunk.len()) > cap {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn transient_statuses_are_exactly_the_contracts() {
        let h = HeaderMap::new();
        for code in [408u16, 429, 500, 502, 503, 504] {
            let e = UpstreamError::from_status(StatusCode::from_u16(code).unwrap_or_default(), &h);
            assert!(e.transient, "{code} should be transient");
        }
        for code in [400u16, 401, 403, 404, 422, 501] {
            let e = UpstreamError::from_status(StatusCode::from_u16(code).unwrap_or_default(), &h);
            assert!(!e.transient, "{code} should not be transient");
        }
    }

    #[test]
    fn retry_after_takes_digits_only() {
        assert_eq!(parse_retry_after("+3"), None);
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(parse_retry_after("1.5"), None);
        assert_eq!(parse_retry_after(""), None);
        assert_eq!(
            parse_retry_after("18446744073709551615"),
            Some(Duration::from_secs(u64::MAX))
        );
        assert_eq!(
            parse_retry_after("99999999999999999999999"),
            Some(Duration::MAX)
        );
    }

    #[test]
    fn retry_after_ms_wins_over_retry_after() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, "30".parse().unwrap());
        h.insert(RETRY_AFTER_MS, "300".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_millis(300)));
        h.insert(RETRY_AFTER_MS, "soon".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(30)));
    }

    #[test]
    fn redirects_are_not_retried() {
        let e = UpstreamError::from_status(StatusCode::TEMPORARY_REDIRECT, &HeaderMap::new());
        assert!(!e.transient);
        assert_eq!(e.kind, ErrorKind::ClientError);
    }

    #[test]
    fn content_parts_are_joined() {
        let r: ChatCompletion = serde_json::from_str(
            r#"{"choices":[{"message":{"content":[{"type":"text","text":"a"},{"type":"image_url"},{"type":"text","text":"b"}]}}]}"#,
        )
        .unwrap();
        let text = r
            .choices
            .into_iter()
            .next()
            .unwrap()
            .message
            .content
            .unwrap();
        assert_eq!(text.to_text(""), "ab");
    }

    proptest::proptest! {
        #[test]
        fn retry_after_never_panics(value in ".{0,40}", digits in "[0-9]{1,40}") {
            let _ = parse_retry_after(&value);
            proptest::prop_assert!(parse_retry_after(&digits).is_some());
            if let Ok(v) = reqwest::header::HeaderValue::from_str(&value) {
                let mut h = HeaderMap::new();
                h.insert(RETRY_AFTER_MS, v.clone());
                h.insert(RETRY_AFTER, v);
                let _ = retry_after(&h);
            }
        }
    }

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        let soon = std::time::SystemTime::now() + Duration::from_secs(120);
        let d = parse_retry_after(&httpdate::fmt_http_date(soon)).unwrap_or_default();
        assert!(d > Duration::from_secs(100) && d <= Duration::from_secs(120));
        assert_eq!(parse_retry_after("soon"), None);
    }
}
