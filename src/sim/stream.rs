//! Streamed answers (`"stream": true`): the server-sent events of an
//! OpenAI chat-completions stream, written at the behaviour's pace by a task
//! of their own, and the faults a stream can suffer on the way (cut, stalled,
//! ended by an error event).

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tokio::sync::mpsc;

use super::http::{HUGE_CHUNK_BYTES, HUGE_FILLER, Shared, estimate_tokens, unix_now};
use super::model::Outcome;
use crate::wire::openai::{
    CHAT_COMPLETION_CHUNK_OBJECT, ChatCompletionChunk, ChunkChoice, Delta, ErrorResponse,
    FINISH_STOP, MessageContent, STREAM_DONE, Usage,
};

/// Message of the error event a `stream_error` stream ends with.
pub(crate) const STREAM_ERROR_MESSAGE: &str = "simulated error in the middle of the stream";

/// Time the pieces before a `cut` get to leave the socket: hyper flushes what
/// it buffered once the body has nothing new, and the abort must not
/// overtake them.
const CUT_FLUSH_GRACE: Duration = Duration::from_millis(20);

/// Events buffered between the writing task and the connection.
const CHANNEL_EVENTS: usize = 16;

/// Everything one streamed answer needs.
pub(crate) struct StreamPlan {
    pub outcome: Outcome,
    pub model: String,
    /// The whole text the content pieces carry, concatenated (the one-shot
    /// `ok` answer).
    pub answer: String,
    pub prompt_tokens: u64,
    /// `stream_options.include_usage`: a usage chunk before `[DONE]`.
    pub include_usage: bool,
    pub piece_chars: usize,
    pub interval: Duration,
    pub cut_after: usize,
    pub huge_body_bytes: u64,
}

type Event = Result<Bytes, std::io::Error>;

/// A `200 text/event-stream` response whose events a spawned task writes.
/// The headers leave as soon as the response is returned; the task stops when
/// the client goes away or the simulator shuts down.
pub(crate) fn respond(shared: Arc<Shared>, plan: StreamPlan) -> Response {
    let (tx, rx) = mpsc::channel::<Event>(CHANNEL_EVENTS);
    tokio::spawn(async move {
        let writer = Writer {
            chunk: ChunkMaker {
                id: shared.next_completion_id(),
                created: unix_now(),
                model: plan.model.clone(),
            },
            tx,
            shared,
        };
        writer.run(plan).await;
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|event| (event, rx))
    });
    (
        StatusCode::OK,
        [
            (CONTENT_TYPE, HeaderValue::from_static("text/event-stream")),
            (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

/// Builds the chunks of one stream: same id, time and model on each.
struct ChunkMaker {
    id: String,
    created: u64,
    model: String,
}

impl ChunkMaker {
    fn chunk(&self, choices: Vec<ChunkChoice>, usage: Option<Usage>) -> ChatCompletionChunk {
        ChatCompletionChunk {
            id: self.id.clone(),
            object: CHAT_COMPLETION_CHUNK_OBJECT.to_owned(),
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
            error: None,
            resilient_qa: None,
        }
    }

    fn delta(&self, delta: Delta, finish_reason: Option<&str>) -> ChatCompletionChunk {
        self.chunk(
            vec![ChunkChoice {
                index: 0,
                delta,
                finish_reason: finish_reason.map(str::to_owned),
            }],
            None,
        )
    }

    /// The first chunk: the role, and `""` as content unless `content` is
    /// false (then no content key at all).
    fn role(&self, content: bool) -> ChatCompletionChunk {
        self.delta(
            Delta {
                role: Some("assistant".to_owned()),
                content: content.then(|| MessageContent::Text(String::new())),
            },
            None,
        )
    }

    fn piece(&self, text: &str) -> ChatCompletionChunk {
        self.delta(Delta::text(text), None)
    }

    fn finish(&self) -> ChatCompletionChunk {
        self.delta(Delta::default(), Some(FINISH_STOP))
    }
}

/// `data: <json>\n\n`.
fn event(data: &impl Serialize) -> Bytes {
    let mut out = b"data: ".to_vec();
    if let Err(e) = serde_json::to_writer(&mut out, data) {
        // Cannot happen for these types; the event is sent empty rather than lost.
        tracing::warn!(error = %e, "could not serialize a stream event");
    }
    out.extend_from_slice(b"\n\n");
    out.into()
}

fn raw_event(data: &str) -> Bytes {
    Bytes::from(format!("data: {data}\n\n"))
}

/// Splits `text` into pieces of `chars` characters (the last may be
/// shorter), never inside a character.
fn pieces(text: &str, chars: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let end = rest
            .char_indices()
            .nth(chars.max(1))
            .map_or(rest.len(), |(i, _)| i);
        let (piece, tail) = rest.split_at(end);
        out.push(piece);
        rest = tail;
    }
    out
}

/// Why a stream ended early: the client went away, or the simulator is
/// shutting down (the connection is then aborted).
struct Stopped;

struct Writer {
    chunk: ChunkMaker,
    tx: mpsc::Sender<Event>,
    shared: Arc<Shared>,
}

impl Writer {
    async fn send(&self, bytes: Bytes) -> Result<(), Stopped> {
        self.tx.send(Ok(bytes)).await.map_err(|_| Stopped)
    }

    /// Ends the body with an error: hyper closes the connection in the
    /// middle of the chunked body, without its terminating chunk.
    async fn abort(&self, why: &str) {
        let error = std::io::Error::new(std::io::ErrorKind::ConnectionAborted, why.to_owned());
        // The client may be gone already; nothing to abort then.
        let _ = self.tx.send(Err(error)).await;
    }

    /// Waits `delay` unless the simulator stops first.
    async fn pause(&self, delay: Duration) -> Result<(), Stopped> {
        if self.shared.sleep_unless_shutdown(delay).await {
            Ok(())
        } else {
            Err(Stopped)
        }
    }

    /// Sends nothing until the client goes away or the simulator stops.
    async fn stall(&self) {
        tokio::select! {
            () = self.tx.closed() => {}
            () = self.shared.stopped() => self.abort("simulator shutting down").await,
        }
    }

    async fn run(self, plan: StreamPlan) {
        match self.write(&plan).await {
            Ok(()) => {}
            Err(Stopped) => {
                if !self.tx.is_closed() {
                    self.abort("simulator shutting down").await;
                }
            }
        }
    }

    async fn write(&self, plan: &StreamPlan) -> Result<(), Stopped> {
        let chunk = &self.chunk;
        let usage = Usage::new(plan.prompt_tokens, estimate_tokens(&plan.answer));
        match plan.outcome {
            Outcome::StallFirst => {
                self.stall().await;
                return Ok(());
            }
            Outcome::NoChoices => {
                self.send(event(&chunk.chunk(Vec::new(), None))).await?;
                return self.end(plan, Usage::new(plan.prompt_tokens, 0)).await;
            }
            Outcome::Malformed => {
                self.send(event(&chunk.role(true))).await?;
                self.send(raw_event(r#"{"choices": ["#)).await?;
                return self.send(raw_event(STREAM_DONE)).await;
            }
            Outcome::Huge => return self.huge(plan).await,
            _ => {}
        }

        self.send(event(&chunk.role(plan.outcome != Outcome::NullContent)))
            .await?;
        let text = match plan.outcome {
            Outcome::Empty | Outcome::NullContent => "",
            _ => plan.answer.as_str(),
        };
        let limit = match plan.outcome {
            Outcome::Cut | Outcome::Stall | Outcome::StreamError => plan.cut_after,
            _ => usize::MAX,
        };
        for (i, piece) in pieces(text, plan.piece_chars)
            .into_iter()
            .take(limit)
            .enumerate()
        {
            if i > 0 {
                self.pause(plan.interval).await?;
            }
            self.send(event(&chunk.piece(piece))).await?;
        }

        match plan.outcome {
            Outcome::Cut => {
                self.pause(CUT_FLUSH_GRACE).await?;
                self.abort("simulated cut").await;
                Ok(())
            }
            Outcome::Stall => {
                self.stall().await;
                Ok(())
            }
            Outcome::StreamError => {
                let error = ErrorResponse::new("server_error", STREAM_ERROR_MESSAGE);
                // Dropping the sender afterwards ends the body normally.
                self.send(event(&error)).await
            }
            Outcome::Empty | Outcome::NullContent => {
                self.end(plan, Usage::new(plan.prompt_tokens, 0)).await
            }
            _ => self.end(plan, usage).await,
        }
    }

    /// The final chunk (unless the stream had no choices), the usage chunk
    /// when asked for, and `[DONE]`.
    async fn end(&self, plan: &StreamPlan, usage: Usage) -> Result<(), Stopped> {
        if plan.outcome != Outcome::NoChoices {
            self.send(event(&self.chunk.finish())).await?;
        }
        if plan.include_usage {
            self.send(event(&self.chunk.chunk(Vec::new(), Some(usage))))
                .await?;
        }
        self.send(raw_event(STREAM_DONE)).await
    }

    /// `huge_body_bytes` of filler as content, in pieces of
    /// `HUGE_CHUNK_BYTES` sent back to back; one piece's event is built once
    /// and shared by every send.
    async fn huge(&self, plan: &StreamPlan) -> Result<(), Stopped> {
        self.send(event(&self.chunk.role(true))).await?;
        let filler: String = HUGE_FILLER
            .iter()
            .map(|&b| char::from(b))
            .cycle()
            .take(HUGE_CHUNK_BYTES)
            .collect();
        let full = event(&self.chunk.piece(&filler));
        let chunk = u64::try_from(HUGE_CHUNK_BYTES).unwrap_or(u64::MAX);
        for _ in 0..plan.huge_body_bytes / chunk {
            self.send(full.clone()).await?;
        }
        let rest = usize::try_from(plan.huge_body_bytes % chunk).unwrap_or(0);
        if rest > 0 {
            self.send(event(&self.chunk.piece(filler.get(..rest).unwrap_or(""))))
                .await?;
        }
        let usage = Usage::new(plan.prompt_tokens, plan.huge_body_bytes.div_ceil(4));
        self.end(plan, usage).await
    }
}

#[cfg(test)]
mod tests {
    use super::pieces;

    #[test]
    fn pieces_split_on_characters_and_join_to_the_text() {
        assert_eq!(pieces("abcdefghij", 4), ["abcd", "efgh", "ij"]);
        assert_eq!(pieces("您好,订单在哪", 3), ["您好,", "订单在", "哪"]);
        assert!(pieces("", 4).is_empty());
    }
}
