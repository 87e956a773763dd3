//! The seed experiment: a primary failing 50% of calls at random (seeded), 5 attempts,
//! 100 questions. Retries must bring the share answered by the primary to 90% or more.

use std::collections::BTreeMap;

use resilient_qa::sim::{Behavior, Outcome, SimConfig};

use crate::helpers::*;

#[tokio::test]
async fn retries_lift_a_half_failing_primary_to_at_least_90_percent() {
    let redis = Redis::start();
    let flaky = Behavior {
        mix: BTreeMap::from([(Outcome::Status(503), 0.5)]),
        ..Default::default()
    };
    let sim = start_sim(SimConfig {
        models: BTreeMap::from([("gpt-4o".to_string(), flaky)]),
        seed: 42,
        ..Default::default()
    })
    .await;
    let mut config = test_config(&redis.url(), Some(&sim));
    config.primary.max_attempts = 5;
    config.primary.initial_backoff_ms = 1;
    config.primary.max_backoff_ms = 5;
    let app = TestApp::spawn(config).await;

    let mut by_source: BTreeMap<String, u32> = BTreeMap::new();
    for i in 0..100 {
        let source = app
            .source_of(&format!("seed experiment question {i}"))
            .await;
        *by_source.entry(source).or_default() += 1;
    }

    let primary = by_source.get("primary").copied().unwrap_or(0);
    println!(
        "seed experiment: 100 questions, primary 50% failures (seed 42), 5 attempts: \
         {primary}% answered by the primary, {} primary calls; by source {by_source:?}",
        sim.calls("gpt-4o")
    );
    assert!(
        primary >= 90,
        "only {primary}% from the primary: {by_source:?}"
    );
    assert_eq!(by_source.values().sum::<u32>(), 100);
}
