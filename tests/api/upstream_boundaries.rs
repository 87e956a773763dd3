//! An upstream that misbehaves at the edges of the wire format: waits too long to
//! represent, signed or millisecond `Retry-After`s, answers of 50 MB, redirects to other
//! hosts, and content sent as an array of parts.

use std::time::{Duration, Instant};

use resilient_qa::sim::Behavior;

use crate::helpers::*;

async fn app_with_primary(behavior: Behavior) -> (Redis, resilient_qa::sim::SimServer, TestApp) {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    sim.set_behavior("gpt-4o", behavior);
    let app = TestApp::spawn(test_config(&redis.url(), Some(&sim))).await;
    (redis, sim, app)
}

fn retry_after(outcome: &str, value: &str) -> Behavior {
    Behavior {
        retry_after: Some(value.into()),
        ..always(outcome)
    }
}

#[tokio::test]
async fn a_retry_after_too_large_to_represent_gives_the_tier_up_and_the_walk_goes_on() {
    for (outcome, value) in [
        ("429", "18446744073709551615"),
        ("503", "9223372036854775807"),
        ("429", "99999999999999999999999999"),
    ] {
        let (_r, sim, app) = app_with_primary(retry_after(outcome, value)).await;

        let (status, body) = app.ask("how long must I wait?").await;

        assert_eq!(status, 200);
        assert_eq!(body["source"], "secondary", "{outcome} {value}: {body}");
        assert_eq!(sim.calls("gpt-4o"), 1);
        assert_eq!(
            app.metric(r#"qa_fallbacks_total{from="primary",reason="deadline"}"#)
                .await,
            1.0
        );
        assert_eq!(app.metric("qa_walk_panics_total").await, 0.0);
    }
}

#[tokio::test]
async fn identical_questions_with_a_huge_retry_after_all_get_the_secondarys_answer() {
    let (_r, sim, app) = app_with_primary(retry_after("429", "18446744073709551615")).await;

    let answers =
        futures_util::future::join_all((0..5).map(|_| app.ask("five at once, huge wait"))).await;

    for (status, body) in answers {
        assert_eq!(status, 200);
        assert_eq!(body["source"], "secondary", "{body}");
    }
    assert_eq!(sim.calls("gpt-4o"), 1);
}

#[tokio::test]
async fn a_signed_retry_after_is_not_a_number_of_seconds() {
    let (_r, _sim, app) = app_with_primary(Behavior {
        retry_after: Some("+3".into()),
        ..script(&["429"])
    })
    .await;

    let started = Instant::now();
    let (_, body) = app.ask("signed wait").await;

    assert_eq!(body["source"], "primary", "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the backoff, not 3 s, came before the retry"
    );
}

#[tokio::test]
async fn retry_after_ms_wins_over_retry_after() {
    let (_r, sim, app) = app_with_primary(Behavior {
        retry_after: Some("30".into()),
        retry_after_ms: Some(300),
        ..script(&["429"])
    })
    .await;

    let started = Instant::now();
    let (_, body) = app.ask("milliseconds please").await;

    assert_eq!(body["source"], "primary", "{body}");
    assert_eq!(sim.calls("gpt-4o"), 2);
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(300), "{waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
}

#[tokio::test]
async fn a_completion_over_the_size_cap_is_an_invalid_response_and_never_served() {
    let (redis, _sim, app) = app_with_primary(always("huge")).await;

    let (_, body) = app.ask("tell me everything").await;

    assert_eq!(body["source"], "secondary", "{body}");
    assert!(body["answer"].as_str().unwrap().len() < 10_000);
    assert_eq!(
        app.metric(r#"qa_upstream_attempts_total{model="gpt-4o",outcome="invalid_response",tier="primary"}"#)
            .await,
        3.0
    );
    let _ = redis;
}

#[tokio::test]
async fn max_tokens_configured_per_tier_is_sent_upstream() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    let mut config = test_config(&redis.url(), Some(&sim));
    config.primary.max_tokens = Some(321);
    let app = TestApp::spawn(config).await;

    app.ask("short answer please").await;

    let snapshot = sim.snapshot();
    let body = &snapshot.models["gpt-4o"]
        .last_request
        .as_ref()
        .unwrap()
        .body;
    assert_eq!(body["max_tokens"], 321);
}

#[tokio::test]
async fn a_redirect_is_never_followed_nor_retried() {
    let (_r, sim, app) = app_with_primary(always("redirect")).await;

    let (_, body) = app.ask("where do you send me?").await;

    assert_eq!(body["source"], "secondary", "{body}");
    assert_eq!(sim.redirected_calls(), 0);
    assert_eq!(sim.calls("gpt-4o"), 1);
    assert_eq!(
        app.metric(r#"qa_fallbacks_total{from="primary",reason="non_retryable"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn content_sent_as_text_parts_is_joined_into_the_answer() {
    let (_r, _sim, app) = app_with_primary(always("content_parts")).await;

    let (_, body) = app.ask("in parts").await;

    assert_eq!(body["source"], "primary", "{body}");
    let answer = body["answer"].as_str().unwrap();
    assert!(
        answer.starts_with("[gpt-4o] simulated answer to: "),
        "{answer}"
    );
    assert!(answer.contains("in parts"), "{answer}");
}
