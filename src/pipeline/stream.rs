//! The walk as a stream of pieces: a streamed model call sends its pieces out as they
//! come; after a break with text sent, the next call is asked to continue that text
//! (counted and logged as an interruption, `continued`), and when no model can, the
//! walk resets (`reset`) and a later tier answers.

use std::sync::Arc;
use std::time::Duration;

use super::events::Event;
use super::model::{self, ModelClient, UpstreamError};
use super::{Call, Pipeline, Tier};

/// What a streamed walk has sent so far, across its attempts and tiers.
#[derive(Default)]
pub(super) struct Progress {
    /// The text sent to the clients since the walk began.
    pub(super) sent: String,
    pub(super) pieces: u32,
    /// Calls that wrote some of `sent`.
    pub(super) writers: u32,
    /// The tier of the last call that wrote some of `sent`.
    pub(super) last_writer: Option<Tier>,
    /// A call's answer ran past its size cap: no later call is asked to continue it.
    pub(super) runaway: bool,
    /// A break after text was sent, not yet counted: the tier whose call broke. Counted
    /// as `continued` once a later call writes on (or finishes the answer), or as `reset`
    /// when the walk gives up.
    pub(super) interrupted: Option<Tier>,
}

impl Progress {
    /// The break to count when the walk gives up on the text sent: the one pending, or
    /// (for a call cut off by the deadline, which had no chance to say so) the last
    /// writer's.
    pub(super) fn unfinished(&mut self) -> Option<Tier> {
        if self.sent.is_empty() {
            return None;
        }
        self.interrupted.take().or(self.last_writer)
    }
}

impl Pipeline {
    /// One streamed call: its pieces go out as they come. After a break with text sent,
    /// this call is asked to go on from that text (and says so in the metrics and logs).
    /// The completion it returns is the whole text sent by the walk.
    pub(super) async fn stream_call(
        &self,
        client: &ModelClient,
        call: &Call<'_>,
        time_left: Duration,
    ) -> Result<model::Completion, UpstreamError> {
        let continue_from = match call.progress.lock() {
            Ok(p) if !p.sent.is_empty() => Some(p.sent.clone()),
            _ => None,
        };
        let mut stream = client
            .open_stream(
                call.question,
                call.language,
                call.history,
                continue_from.as_deref(),
                client.first_token_timeout.min(time_left),
                client.stream_idle_timeout,
            )
            .await?;
        let mut wrote = false;
        // White space before the first real text is held back: a call whose answer is
        // only white space is no answer, and must fail before anything goes out.
        let mut held = String::new();
        loop {
            let piece = match stream.next_piece().await {
                Ok(Some(piece)) => piece,
                Ok(None) => break,
                Err(e) => {
                    if let Ok(mut p) = call.progress.lock() {
                        // A call that broke before writing anything changed nothing: a
                        // break still pending stays the one to count.
                        if wrote {
                            p.interrupted = Some(client.tier);
                        }
                        p.runaway |= e.oversized;
                    }
                    return Err(e);
                }
            };
            if !wrote && piece.trim().is_empty() {
                held.push_str(&piece);
                continue;
            }
            let piece: Arc<str> = if held.is_empty() {
                Arc::from(piece)
            } else {
                held.push_str(&piece);
                Arc::from(std::mem::take(&mut held))
            };
            if let Ok(mut p) = call.progress.lock() {
                if !wrote {
                    p.writers = p.writers.saturating_add(1);
                    p.last_writer = Some(client.tier);
                    self.continued(call.request_id, &mut p);
                }
                p.sent.push_str(&piece);
                p.pieces = p.pieces.saturating_add(1);
            }
            if !wrote {
                call.out.push(Event::Source(client.tier.source()));
            }
            wrote = true;
            call.out.push(Event::Delta(piece));
        }
        if !wrote {
            // No text, or only white space: not an answer, nor the rest of one (serving
            // the text so far as whole could serve, and cache, a truncated answer).
            return Err(UpstreamError::invalid(if continue_from.is_some() {
                "the continuation had no text"
            } else {
                "stream ended with no text"
            }));
        }
        let text = call
            .progress
            .lock()
            .map(|p| p.sent.clone())
            .unwrap_or_default();
        Ok(model::Completion {
            text,
            model: client.model.clone(),
            usage: stream.usage(),
        })
    }

    /// Counts the pending break, if any, as continued.
    fn continued(&self, request_id: &str, p: &mut Progress) {
        if let Some(tier) = p.interrupted.take() {
            self.interruption(request_id, tier, p.pieces, "continued");
        }
    }

    /// Counts and logs a stream that broke after text was sent, with what was done.
    pub(super) fn interruption(
        &self,
        request_id: &str,
        tier: Tier,
        pieces: u32,
        action: &'static str,
    ) {
        self.metrics
            .stream_interruptions
            .with_label_values(&[tier.as_str(), action])
            .inc();
        tracing::warn!(
            request_id,
            tier = tier.as_str(),
            pieces_sent = pieces,
            action,
            "stream interrupted after text was sent"
        );
    }
}
