//! The model tiers: an OpenAI chat-completions client on reqwest, and the classification
//! of its failures. Every failure is classified once, here, into [`ErrorKind`]; that kind
//! decides the retry, labels the metric and fills the error report.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::config::TierConfig;
use crate::resilience::retry::{RetryPolicy, Transient};

use super::Tier;

/// The outcome of a failed model call: the `outcome` label of
/// `qa_upstream_attempts_total` and the `kind` of an error event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ErrorKind {
    RateLimited,
    Timeout,
    ConnectError,
    ServerError,
    ClientError,
    InvalidResponse,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 6] = [
        ErrorKind::RateLimited,
        ErrorKind::Timeout,
        ErrorKind::ConnectError,
        ErrorKind::ServerError,
        ErrorKind::ClientError,
        ErrorKind::InvalidResponse,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::Timeout => "timeout",
            ErrorKind::ConnectError => "connect_error",
            ErrorKind::ServerError => "server_error",
            ErrorKind::ClientError => "client_error",
            ErrorKind::InvalidResponse => "invalid_response",
        }
    }
}

/// One failed model call.
#[derive(Debug, Clone)]
pub struct UpstreamError {
    pub kind: ErrorKind,
    /// Whether another attempt may succeed (transient failures only).
    pub transient: bool,
    pub retry_after: Option<Duration>,
    /// For people: `HTTP 503`, `timed out after 15000 ms`, ...
    pub message: String,
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
    fn new(kind: ErrorKind, transient: bool, message: impl Into<String>) -> Self {
        UpstreamError {
            kind,
            transient,
            retry_after: None,
            message: message.into(),
        }
    }

    /// Classifies a non-success HTTP status. 408, 429, 500, 502, 503 and 504 are
    /// transient; every other status is not.
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
            headers
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after)
        } else {
            None
        };
        UpstreamError {
            kind,
            transient,
            retry_after,
            message: format!("HTTP {code}"),
        }
    }

    fn from_reqwest(err: &reqwest::Error, timeout: Duration) -> Self {
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

/// A `Retry-After` value: delay seconds or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
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
}

#[derive(Serialize)]
struct ChatRequest<'a> {
    model: &'a str,
    messages: [ChatMessage<'a>; 1],
    temperature: f64,
}

#[derive(Serialize)]
struct ChatMessage<'a> {
    role: &'a str,
    content: &'a str,
}

#[derive(Deserialize)]
struct ChatResponse {
    #[serde(default)]
    choices: Vec<Choice>,
}

#[derive(Deserialize)]
struct Choice {
    message: Option<ResponseMessage>,
}

#[derive(Deserialize)]
struct ResponseMessage {
    content: Option<String>,
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

    /// One call, bounded by `timeout`. `language`: the question's language when it is
    /// not the default one (the model is told to answer in it). A completion with no
    /// choices, or with empty or null content, is an `invalid_response`: it is never
    /// returned as an answer.
    pub async fn complete(
        &self,
        question: &str,
        language: Option<&str>,
        timeout: Duration,
    ) -> Result<Completion, UpstreamError> {
        let content = self.message(question, language);
        let body = ChatRequest {
            model: &self.model,
            messages: [ChatMessage {
                role: "user",
                content: &content,
            }],
            temperature: self.temperature,
        };
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
            .map_err(|e| UpstreamError::from_reqwest(&e, timeout))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(UpstreamError::from_status(status, resp.headers()));
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| UpstreamError::from_reqwest(&e, timeout))?;
        let parsed: ChatResponse = serde_json::from_slice(&bytes).map_err(|e| {
            UpstreamError::new(
                ErrorKind::InvalidResponse,
                true,
                format!("not a chat completion: {e}"),
            )
        })?;
        let text = parsed
            .choices
            .into_iter()
            .next()
            .and_then(|c| c.message)
            .and_then(|m| m.content)
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
        })
    }
}

#[cfg(test)]
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
    fn retry_after_accepts_seconds_and_http_dates() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        let soon = std::time::SystemTime::now() + Duration::from_secs(120);
        let d = parse_retry_after(&httpdate::fmt_http_date(soon)).unwrap_or_default();
        assert!(d > Duration::from_secs(100) && d <= Duration::from_secs(120));
        assert_eq!(parse_retry_after("soon"), None);
    }
}
