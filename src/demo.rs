//! `--demo`: an in-process simulator behind both model tiers, with a mild mix of
//! failures, so a newcomer sees retries and fallbacks live with one command.

use std::collections::BTreeMap;

use crate::config::Config;
use crate::sim::{Behavior, Outcome, SimConfig, SimServer};

/// Starts the simulator on a free loopback port and points both tiers at it.
pub async fn start(config: &mut Config) -> std::io::Result<SimServer> {
    let primary = Behavior {
        latency_ms: 300,
        jitter_ms: 400,
        mix: BTreeMap::from([
            (Outcome::Status(503), 0.15),
            (Outcome::Status(429), 0.05),
            (Outcome::Malformed, 0.03),
            (Outcome::Hang, 0.02),
        ]),
        retry_after_secs: Some(1),
        ..Behavior::default()
    };
    let secondary = Behavior {
        latency_ms: 150,
        jitter_ms: 150,
        mix: BTreeMap::from([(Outcome::Status(500), 0.1)]),
        ..Behavior::default()
    };
    let sim_config = SimConfig {
        default: Behavior::default(),
        models: BTreeMap::from([
            (config.primary.model.clone(), primary),
            (config.secondary.model.clone(), secondary),
        ]),
        seed: crate::pipeline::cache::now_ms(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let sim = SimServer::start(listener, sim_config).await?;
    // A hung call should not hold a demo request for the production default of 15 s.
    config.primary.attempt_timeout_ms = config.primary.attempt_timeout_ms.min(3000);
    config.secondary.attempt_timeout_ms = config.secondary.attempt_timeout_ms.min(3000);
    config.openai.base_url = sim.base_url();
    config.primary.base_url = None;
    config.secondary.base_url = None;
    tracing::warn!(
        simulator = %sim.base_url(),
        "DEMO MODE: both model tiers are SIMULATED (upstream-sim in process); failures you see are injected on purpose"
    );
    Ok(sim)
}
