//! OpenAI-compatible, fault-injecting upstream simulator (`upstream-sim`).
//!
//! This module owns everything the service is tested against instead of a
//! real LLM provider: an HTTP server speaking the chat-completions wire API
//! (`POST /v1/chat/completions`, `GET /v1/models`) whose answers are chosen
//! per model by a [`Behavior`] — scripted or randomly mixed outcomes such as
//! error statuses (with any `Retry-After` or `retry-after-ms`), hangs, real
//! TCP resets, malformed or empty completions, huge completions, redirects,
//! content as an array of parts, with latency and jitter; streamed answers
//! (`"stream": true`) as server-sent events at a set pace, and their faults:
//! cut, stalled or ended by an error event — reproducibly from
//! a seed; a redirect target (`/redirected/v1/chat/completions`); a JSON
//! control API
//! (`/control…`) to inspect call counts and last requests and to change
//! behaviour at run time; the [`SimServer`] handle used in-process by tests
//! and the service's demo mode; and the CLI of the `upstream-sim` binary
//! ([`cli`]).

pub mod cli;
mod conn;
mod http;
mod model;
mod state;
mod stream;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use model::{
    AnswerStyle, Behavior, DEFAULT_HUGE_BODY_BYTES, DEFAULT_STREAM_CUT_AFTER,
    DEFAULT_STREAM_INTERVAL_MS, DEFAULT_STREAM_PIECE_CHARS, Outcome, ParseOutcomeError,
    STATUS_RANGE, SimConfig, parse_mix,
};
pub use state::{BUILTIN_MODELS, ControlSnapshot, LastRequest, ModelReport};

use http::Shared;
use state::SimState;

/// Handle to a running simulator.
///
/// Dropping the handle without calling [`SimServer::shutdown`] leaves the
/// server running until its tokio runtime stops.
pub struct SimServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl SimServer {
    /// Spawns the server on `listener` and returns at once.
    ///
    /// Fails with [`std::io::ErrorKind::InvalidInput`] if a behaviour in
    /// `config` is invalid (see [`Behavior::validate`]).
    pub async fn start(listener: TcpListener, config: SimConfig) -> std::io::Result<SimServer> {
        config
            .validate()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(SimState::new(config), addr));
        let task = tokio::spawn(conn::accept_loop(listener, Arc::clone(&shared)));
        Ok(SimServer { addr, shared, task })
    }

    /// The address the simulator listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Base URL for OpenAI clients, e.g. `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Chat-completion calls `model` received since start-up or the last
    /// reset.
    pub fn calls(&self, model: &str) -> u64 {
        self.shared.sim.calls(model)
    }

    /// Calls the redirect target (`/redirected/v1/chat/completions`) received
    /// since start-up or the last reset.
    pub fn redirected_calls(&self) -> u64 {
        self.shared.sim.redirected_calls()
    }

    /// Whether `model`'s last chat-completion request carried exactly this
    /// `Authorization` header (`None`: none). The control API only shows it
    /// redacted; this lets an in-process test check the credentials sent
    /// without the simulator ever echoing them.
    pub fn last_authorization_is(&self, model: &str, expected: Option<&str>) -> bool {
        self.shared.sim.last_authorization_is(model, expected)
    }

    /// Replaces `model`'s behaviour, as `PUT /control/models/{model}` does:
    /// counts are kept, the script and random sequence start afresh. The
    /// behaviour is not validated; an over-full mix is simply truncated.
    pub fn set_behavior(&self, model: &str, b: Behavior) {
        self.shared.sim.set_behavior(model, b);
    }

    /// Replaces the default behaviour, as `PUT /control/default` does.
    pub fn set_default_behavior(&self, b: Behavior) {
        self.shared.sim.set_default(b);
    }

    /// Back to the start-up configuration, as `POST /control/reset` does.
    pub fn reset(&self) {
        self.shared.sim.reset();
    }

    /// What `GET /control` reports.
    pub fn snapshot(&self) -> ControlSnapshot {
        self.shared.sim.snapshot()
    }

    /// Stops accepting connections, lets in-flight requests finish for up to
    /// a second (hung calls are reset at once), and ends.
    pub async fn shutdown(self) {
        self.shared.shutdown.send_replace(true);
        if let Err(e) = self.task.await {
            tracing::warn!(error = %e, "simulator task ended abnormally");
        }
    }
}
