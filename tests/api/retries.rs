//! Retries: transient failures only, within max_attempts and the deadline, Retry-After
//! honoured, and nothing that is not a valid completion ever returned as an answer.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use resilient_qa::config::Config;
use resilient_qa::sim::Behavior;

use crate::helpers::*;

#[tokio::test]
async fn transient_failures_then_success_are_retried_to_a_primary_answer() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    sim.set_behavior("gpt-4o", script(&["503", "500"]));
    let app = TestApp::spawn(test_config(&redis.url(), Some(&sim))).await;

    let (_, body) = app.ask("Where is my refund?").await;

    assert_eq!(body["source"], "primary");
    assert_eq!(sim.calls("gpt-4o"), 3);
    assert_eq!(sim.calls("gpt-3.5-turbo"), 0);
    let m = app.metrics().await;
    let attempts = |outcome: &str| {
        metric_value(
            &m,
            &format!(
                r#"qa_upstream_attempts_total{{model="gpt-4o",outcome="{outcome}",tier="primary"}}"#
            ),
        )
    };
    assert_eq!(attempts("server_error"), 2.0);
    assert_eq!(attempts("success"), 1.0);
}

#[tokio::test]
async fn every_transient_kind_is_retried() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    let kinds = [
        "408",
        "429",
        "500",
        "502",
        "503",
        "504",
        "reset",
        "malformed",
    ];
    sim.set_behavior("gpt-4o", script(&kinds));
    let mut config = test_config(&redis.url(), Some(&sim));
    config.primary.max_attempts = kinds.len() as u32 + 1;
    let app = TestApp::spawn(config).await;

    let (_, body) = app.ask("Is this retried?").await;

    assert_eq!(body["source"], "primary");
    assert_eq!(sim.calls("gpt-4o"), kinds.len() as u64 + 1);
}

#[tokio::test]
async fn non_retryable_statuses_go_to_the_secondary_after_one_call() {
    for status in ["400", "401", "403", "404", "422"] {
        let redis = Redis::start();
        let sim = healthy_sim().await;
        sim.set_behavior("gpt-4o", always(status));
        let app = TestApp::spawn(test_config(&redis.url(), Some(&sim))).await;

        let (_, body) = app.ask("Can I change my address?").await;

        assert_eq!(body["source"], "secondary", "status {status}");
        assert_eq!(
            sim.calls("gpt-4o"),
            1,
            "status {status} must not be retried"
        );
        assert_eq!(
            app.metric(r#"qa_fallbacks_total{from="primary",reason="non_retryable"}"#)
                .await,
            1.0
        );
    }
}

#[tokio::test]
async fn exhausted_primary_is_counted_and_falls_back() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    sim.set_behavior("gpt-4o", always("503"));
    let app = TestApp::spawn(test_config(&redis.url(), Some(&sim))).await;

    let (_, body) = app.ask("Is the primary down?").await;

    assert_eq!(body["source"], "secondary");
    assert_eq!(sim.calls("gpt-4o"), 3, "primary.max_attempts defaults to 3");
    assert_eq!(
        app.metric(r#"qa_fallbacks_total{from="primary",reason="exhausted"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn retry_after_is_waited_before_the_next_attempt() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    sim.set_behavior(
        "gpt-4o",
        Behavior {
            retry_after_secs: Some(1),
            ..script(&["429"])
        },
    );
    let app = TestApp::spawn(test_config(&redis.url(), Some(&sim))).await;
    let started = Instant::now();

    let (_, body) = app.ask("Rate limited?").await;

    assert_eq!(body["source"], "primary");
    assert_eq!(sim.calls("gpt-4o"), 2);
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "the second attempt came before Retry-After: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn retry_after_past_the_deadline_gives_up_the_tier_at_once() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    sim.set_behavior(
        "gpt-4o",
        Behavior {
            retry_after_secs: Some(60),
            ..always("503")
        },
    );
    let mut config = test_config(&redis.url(), Some(&sim));
    config.server.request_timeout_ms = 5000;
    let app = TestApp::spawn(config).await;

    let (_, body) = app.ask("Busy?").await;

    assert_eq!(body["source"], "secondary");
    assert_eq!(sim.calls("gpt-4o"), 1);
    assert!(body["latency_ms"].as_f64().unwrap() < 4000.0, "{body}");
    assert_eq!(
        app.metric(r#"qa_fallbacks_total{from="primary",reason="deadline"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn max_attempts_comes_from_the_environment() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    sim.set_behavior("gpt-4o", always("503"));
    let env: HashMap<String, String> = [
        ("QA__PRIMARY__MAX_ATTEMPTS", "5"),
        ("QA__PRIMARY__INITIAL_BACKOFF_MS", "1"),
        ("QA__PRIMARY__MAX_BACKOFF_MS", "5"),
        ("LISTEN_ADDR", "127.0.0.1:0"),
        ("REDIS_URL", redis.url().as_str()),
        ("OPENAI_BASE_URL", sim.base_url().as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let config = Config::from_layers(None, &env).unwrap();
    let app = TestApp::spawn(config).await;

    let (_, body) = app.ask("How many tries?").await;

    assert_eq!(body["source"], "secondary");
    assert_eq!(sim.calls("gpt-4o"), 5);
}

#[tokio::test]
async fn hung_upstream_is_cut_off_by_the_attempt_timeout() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    sim.set_behavior("gpt-4o", always("hang"));
    let mut config = test_config(&redis.url(), Some(&sim));
    config.primary.attempt_timeout_ms = 300;
    config.primary.max_attempts = 2;
    let app = TestApp::spawn(config).await;

    let (_, body) = app.ask("Hello, anyone?").await;

    assert_eq!(body["source"], "secondary");
    assert_eq!(sim.calls("gpt-4o"), 2);
    assert!(body["latency_ms"].as_f64().unwrap() < 5000.0, "{body}");
    assert_eq!(
        app.metric(
            r#"qa_upstream_attempts_total{model="gpt-4o",outcome="timeout",tier="primary"}"#
        )
        .await,
        2.0
    );
}

#[tokio::test]
async fn malformed_or_empty_completions_are_never_returned_as_answers() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    let bad = ["malformed", "empty", "null_content", "no_choices"];
    sim.set_default_behavior(script(&bad));
    sim.set_behavior("gpt-4o", script(&bad));
    sim.set_behavior("gpt-3.5-turbo", script(&bad));
    let mut config = test_config(&redis.url(), Some(&sim));
    config.primary.max_attempts = 4;
    config.secondary.max_attempts = 4;
    let app = TestApp::spawn(config).await;

    let (_, body) = app.ask("如何换货?").await;

    assert_eq!(body["source"], "canned", "{body}");
    assert_eq!(sim.calls("gpt-4o"), 4);
    assert_eq!(sim.calls("gpt-3.5-turbo"), 4);
    assert_eq!(
        app.metric(
            r#"qa_upstream_attempts_total{model="gpt-4o",outcome="invalid_response",tier="primary"}"#
        )
        .await,
        4.0
    );
}

#[tokio::test]
async fn reset_connection_is_a_retried_connect_error() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    sim.set_behavior("gpt-4o", script(&["reset"]));
    let app = TestApp::spawn(test_config(&redis.url(), Some(&sim))).await;

    let (_, body) = app.ask("Reset?").await;

    assert_eq!(body["source"], "primary");
    assert_eq!(
        app.metric(
            r#"qa_upstream_attempts_total{model="gpt-4o",outcome="connect_error",tier="primary"}"#
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn unreachable_upstream_is_a_connect_error_and_falls_back() {
    let redis = Redis::start();
    let mut config = test_config(&redis.url(), None);
    config.openai.base_url = format!("http://127.0.0.1:{}/v1", free_port());
    let app = TestApp::spawn(config).await;

    let (_, body) = app.ask("如何退货?").await;

    assert_eq!(body["source"], "canned");
    assert_eq!(
        app.metric(
            r#"qa_upstream_attempts_total{model="gpt-4o",outcome="connect_error",tier="primary"}"#
        )
        .await,
        3.0
    );
}
