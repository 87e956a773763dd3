//! The request deadline: past it no model call starts, calls running are abandoned, and
//! the answer comes from the tiers after the models.

use crate::helpers::*;

#[tokio::test]
async fn both_models_hanging_still_answer_within_the_deadline() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    sim.set_default_behavior(always("hang"));
    sim.set_behavior("gpt-4o", always("hang"));
    sim.set_behavior("gpt-3.5-turbo", always("hang"));
    let mut config = test_config(&redis.url(), Some(&sim));
    config.server.request_timeout_ms = 1500;
    config.primary.attempt_timeout_ms = 10_000;
    config.secondary.attempt_timeout_ms = 10_000;
    let app = TestApp::spawn(config).await;

    let (status, body) = app.ask("如何退货?").await;

    assert_eq!(status, 200);
    assert_eq!(body["source"], "canned");
    let latency = body["latency_ms"].as_f64().unwrap();
    assert!(
        (1400.0..2500.0).contains(&latency),
        "answer should come at the 1500 ms deadline: {latency} ms"
    );
    assert_eq!(
        sim.calls("gpt-3.5-turbo"),
        0,
        "no model call starts past the deadline"
    );
    assert_eq!(
        app.metric(
            r#"qa_upstream_attempts_total{model="gpt-4o",outcome="timeout",tier="primary"}"#
        )
        .await,
        1.0,
        "the abandoned call is counted"
    );
    assert_eq!(
        app.metric(r#"qa_fallbacks_total{from="secondary",reason="deadline"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn deadline_with_no_canned_answer_gives_the_default_reply() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    sim.set_behavior("gpt-4o", always("hang"));
    let mut config = test_config(&redis.url(), Some(&sim));
    config.server.request_timeout_ms = 800;
    config.primary.attempt_timeout_ms = 10_000;
    let app = TestApp::spawn(config).await;

    let (status, body) = app.ask("An unusual question").await;

    assert_eq!(status, 200);
    assert_eq!(body["source"], "default");
}
