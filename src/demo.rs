//! `--demo`: an in-process simulator behind both model tiers, with a mild mix of
//! failures, so a newcomer sees retries and fallbacks live with one command.
//!
//! The demo never mixes its answers with real ones: it caches under its own key
//! prefix ([`KEY_PREFIX`]), so a real instance sharing the Redis never serves a
//! simulated answer. Its simulator listens on a fixed port ([`DEFAULT_SIM_PORT`],
//! `--demo-sim-port`) so the control URL the banner prints stays the same from run
//! to run.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};

use crate::config::Config;
use crate::sim::{AnswerStyle, Behavior, Outcome, SimConfig, SimServer};

/// Port of the demo's simulator unless `--demo-sim-port` says otherwise; not the
/// stand-alone `upstream-sim`'s 9090, so both can run at once.
pub const DEFAULT_SIM_PORT: u16 = 8081;

/// Cache key prefix of the demo, apart from the real answers' (`qa:v1:` by default).
pub const KEY_PREFIX: &str = "qa:demo:v1:";

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The simulator's port could not be bound (taken, or not allowed).
    #[error(
        "the demo simulator cannot listen on 127.0.0.1:{port}: {source}; \
         choose another port with --demo-sim-port N (0 picks a free one)"
    )]
    SimPort {
        /// The port asked for (`--demo-sim-port`).
        port: u16,
        /// Why binding it failed.
        #[source]
        source: std::io::Error,
    },
    /// The simulator refused its configuration or could not start.
    #[error("cannot start the demo simulator: {0}")]
    Sim(#[from] std::io::Error),
}

/// Starts the simulator on `127.0.0.1:sim_port` (0: any free port), points both
/// tiers at it and moves the cache to [`KEY_PREFIX`].
pub async fn start(config: &mut Config, sim_port: u16) -> Result<SimServer, DemoError> {
    // Streamed answers arrive a few characters at a time at about a person's
    // reading pace, so the chat page shows text arriving; a few streams break
    // off half-way (`cut`, `stream_error`) so continuation shows too. Outside a
    // stream those two are a reset and a 500.
    let primary = Behavior {
        latency_ms: 300,
        jitter_ms: 400,
        mix: BTreeMap::from([
            (Outcome::Status(503), 0.12),
            (Outcome::Status(429), 0.05),
            (Outcome::Malformed, 0.03),
            (Outcome::Hang, 0.02),
            (Outcome::Cut, 0.03),
            (Outcome::StreamError, 0.02),
        ]),
        retry_after_secs: Some(1),
        stream_piece_chars: Some(3),
        stream_interval_ms: Some(50),
        stream_cut_after: Some(6),
        ..Behavior::default()
    };
    let secondary = Behavior {
        latency_ms: 150,
        jitter_ms: 150,
        mix: BTreeMap::from([(Outcome::Status(500), 0.1)]),
        stream_piece_chars: Some(4),
        stream_interval_ms: Some(40),
        ..Behavior::default()
    };
    let sim_config = SimConfig {
        default: Behavior::default(),
        models: BTreeMap::from([
            (config.primary.model.clone(), primary),
            (config.secondary.model.clone(), secondary),
        ]),
        seed: crate::pipeline::cache::now_ms(),
        // Answers that read like answers, in the question's language, marked simulated.
        answers: AnswerStyle::Demo,
    };
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, sim_port))
        .await
        .map_err(|source| DemoError::SimPort {
            port: sim_port,
            source,
        })?;
    let sim = SimServer::start(listener, sim_config).await?;
    // A hung call should not hold a demo request for the production default of 15 s.
    config.primary.attempt_timeout_ms = config.primary.attempt_timeout_ms.min(3000);
    config.secondary.attempt_timeout_ms = config.secondary.attempt_timeout_ms.min(3000);
    config.openai.base_url = sim.base_url();
    config.primary.base_url = None;
    config.secondary.base_url = None;
    config.cache.key_prefix = KEY_PREFIX.to_owned();
    // A real model needs the tiers' prompts; the simulated one answers the question it
    // is given, so it is given the question alone (else its answer would quote the
    // prompt back).
    for tier in [&mut config.primary, &mut config.secondary] {
        tier.prompt = "{question}".to_owned();
        tier.language_instruction = String::new();
    }
    Ok(sim)
}

/// Logs that the demo is running and prints a banner for people on stderr: where
/// the service answers, that its answers are simulated and cached apart from real
/// ones, and where the simulator's control API is.
pub fn announce(service: SocketAddr, sim: &SimServer) {
    let service_url = format!("http://{}", reachable(service));
    let control_url = format!("http://{}/control", sim.addr());
    tracing::warn!(
        service = %service_url,
        simulator = %sim.base_url(),
        control = %control_url,
        key_prefix = KEY_PREFIX,
        "DEMO MODE: both model tiers are SIMULATED (upstream-sim in process); failures you see are injected on purpose; answers are cached apart from real ones"
    );
    eprintln!("{}", banner(&service_url, &control_url));
}

fn banner(service_url: &str, control_url: &str) -> String {
    format!(
        "\n\
         ==== resilient-qa DEMO MODE ====\n\
         service:    {service_url}   (POST {service_url}/ask)\n\
         chat page:  {service_url}/\n\
         models:     SIMULATED by an in-process upstream-sim; failures are injected on purpose\n\
         cache:      simulated answers are kept apart from real ones (key prefix {KEY_PREFIX})\n\
         simulator:  {control_url}   (e.g. curl -XPUT {control_url}/models/gpt-4o -d '{{\"mix\":{{\"503\":1.0}}}}')\n\
         ================================\n"
    )
}

/// An address a person can paste: a wildcard listen address becomes loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
    } else {
        addr
    }
}
