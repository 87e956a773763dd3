//! Breakers, the retry budget, coalescing, client disconnects and slow clients.

use std::time::Duration;

use resilient_qa::pipeline::normalize::{cache_key, normalize};
use resilient_qa::sim::Behavior;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

fn slow(ms: u64) -> Behavior {
    Behavior {
        latency_ms: ms,
        ..Default::default()
    }
}

#[tokio::test]
async fn primary_breaker_opens_after_a_run_of_failures_and_skips_the_primary() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    sim.set_behavior("gpt-4o", always("503"));
    let mut config = test_config(&redis.url(), Some(&sim));
    config.breaker.consecutive_failures = 3;
    config.breaker.open_ms = 60_000;
    let app = TestApp::spawn(config).await;

    assert_eq!(app.source_of("first").await, "secondary"); // 3 failures: opens
    let calls_when_open = sim.calls("gpt-4o");
    for i in 0..5 {
        assert_eq!(app.source_of(&format!("while open {i}")).await, "secondary");
    }
    let (_, ready) = app.get_json("/readyz").await;

    assert_eq!(calls_when_open, 3);
    assert_eq!(sim.calls("gpt-4o"), 3, "no call while the breaker is open");
    assert_eq!(ready["checks"]["primary"], "open");
    assert_eq!(ready["status"], "degraded");
    assert_eq!(
        app.metric(r#"qa_circuit_state{dependency="primary"}"#)
            .await,
        2.0
    );
    assert_eq!(
        app.metric(r#"qa_fallbacks_total{from="primary",reason="circuit_open"}"#)
            .await,
        5.0
    );
}

#[tokio::test]
async fn half_open_probe_that_succeeds_closes_the_breaker() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    sim.set_behavior("gpt-4o", always("503"));
    let mut config = test_config(&redis.url(), Some(&sim));
    config.breaker.consecutive_failures = 3;
    config.breaker.open_ms = 300;
    let app = TestApp::spawn(config).await;
    assert_eq!(app.source_of("break it").await, "secondary");
    sim.set_behavior("gpt-4o", Behavior::default());

    assert_eq!(app.source_of("still open").await, "secondary");
    tokio::time::sleep(Duration::from_millis(350)).await;
    let (_, half_open) = app.get_json("/readyz").await;
    let probe = app.source_of("probe").await;
    let (_, closed) = app.get_json("/readyz").await;

    assert_eq!(half_open["checks"]["primary"], "half_open");
    assert_eq!(probe, "primary");
    assert_eq!(closed["checks"]["primary"], "closed");
    assert_eq!(
        app.metric(r#"qa_circuit_state{dependency="primary"}"#)
            .await,
        0.0
    );
}

#[tokio::test]
async fn half_open_probe_that_fails_opens_the_breaker_again() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    sim.set_behavior("gpt-4o", always("503"));
    let mut config = test_config(&redis.url(), Some(&sim));
    config.breaker.consecutive_failures = 3;
    config.breaker.open_ms = 300;
    let app = TestApp::spawn(config).await;
    app.ask("break it").await;
    tokio::time::sleep(Duration::from_millis(350)).await;

    assert_eq!(app.source_of("probe").await, "secondary");

    assert_eq!(sim.calls("gpt-4o"), 4, "exactly one probe call");
    let (_, ready) = app.get_json("/readyz").await;
    assert_eq!(ready["checks"]["primary"], "open");
}

#[tokio::test]
async fn retry_budget_stops_retries_when_spent() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    sim.set_behavior("gpt-4o", always("503"));
    let mut config = test_config(&redis.url(), Some(&sim));
    config.retry_budget.ratio = 0.0;
    config.retry_budget.min_per_sec = 0;
    let app = TestApp::spawn(config).await;

    assert_eq!(app.source_of("no retries left").await, "secondary");

    assert_eq!(sim.calls("gpt-4o"), 1);
    assert_eq!(
        app.metric(r#"qa_fallbacks_total{from="primary",reason="budget"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn retry_budget_bounds_upstream_calls_in_a_hard_outage() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    sim.set_behavior("gpt-4o", always("503"));
    let mut config = test_config(&redis.url(), Some(&sim));
    config.retry_budget.ratio = 0.2;
    config.retry_budget.min_per_sec = 0;
    let app = TestApp::spawn(config).await;

    for i in 0..50 {
        app.ask(&format!("outage {i}")).await;
    }

    let calls = sim.calls("gpt-4o");
    assert!(
        calls <= 60,
        "50 requests, 20% budget: {calls} primary calls"
    );
}

#[tokio::test]
async fn identical_questions_in_flight_share_one_model_call() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    sim.set_behavior("gpt-4o", slow(500));
    let app = TestApp::spawn(test_config(&redis.url(), Some(&sim))).await;

    let mut asks = tokio::task::JoinSet::new();
    for i in 0..5 {
        let (client, url) = (app.client.clone(), app.url("/ask"));
        let q = if i % 2 == 0 {
            "Same question?"
        } else {
            "  same QUESTION? "
        };
        asks.spawn(async move {
            let resp = client
                .post(url)
                .json(&serde_json::json!({ "question": q }))
                .send()
                .await
                .unwrap();
            (
                resp.status().as_u16(),
                resp.json::<serde_json::Value>().await.unwrap(),
            )
        });
    }
    let answers = asks.join_all().await;

    assert_eq!(sim.calls("gpt-4o"), 1);
    for (status, body) in &answers {
        assert_eq!(*status, 200);
        assert_eq!(body["source"], "primary");
    }
    assert_eq!(app.metric("qa_coalesced_total").await, 4.0);
}

#[tokio::test]
async fn a_leader_whose_client_left_still_answers_its_followers() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    sim.set_behavior("gpt-4o", slow(600));
    let app = TestApp::spawn(test_config(&redis.url(), Some(&sim))).await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(150))
        .build()
        .unwrap();

    let leader = impatient
        .post(app.url("/ask"))
        .json(&serde_json::json!({"question": "who answers?"}))
        .send();
    let follower = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        app.ask("who answers?").await
    };
    let (leader, (status, body)) = tokio::join!(leader, follower);

    assert!(leader.is_err(), "the leader's client gave up");
    assert_eq!(status, 200);
    assert_eq!(body["source"], "primary");
    assert_eq!(sim.calls("gpt-4o"), 1);
}

#[tokio::test]
async fn client_disconnect_does_not_cancel_a_model_call_whose_answer_is_cached() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    sim.set_behavior("gpt-4o", slow(400));
    let app = TestApp::spawn(test_config(&redis.url(), Some(&sim))).await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();

    let gone = impatient
        .post(app.url("/ask"))
        .json(&serde_json::json!({"question": "I will not wait"}))
        .send()
        .await;
    tokio::time::sleep(Duration::from_millis(600)).await;

    assert!(gone.is_err());
    assert_eq!(app.source_of("I will not wait").await, "cache");
    assert_eq!(sim.calls("gpt-4o"), 1);
}

#[tokio::test]
async fn slow_headers_are_cut_off() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    let mut config = test_config(&redis.url(), Some(&sim));
    config.server.header_read_timeout_ms = 300;
    let app = TestApp::spawn(config).await;
    let mut tcp = tokio::net::TcpStream::connect(app.base.trim_start_matches("http://"))
        .await
        .unwrap();

    tcp.write_all(b"POST /ask HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf)).await;

    assert!(
        read.is_ok(),
        "the server kept a connection with unfinished headers"
    );
}

#[tokio::test]
async fn slow_body_gets_408() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    let mut config = test_config(&redis.url(), Some(&sim));
    config.server.body_read_timeout_ms = 300;
    let app = TestApp::spawn(config).await;
    let mut tcp = tokio::net::TcpStream::connect(app.base.trim_start_matches("http://"))
        .await
        .unwrap();

    tcp.write_all(
        b"POST /ask HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"question\"",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 2048];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let response = String::from_utf8_lossy(&buf[..n]);

    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(response.contains("request_timeout"), "{response}");
}

#[tokio::test]
async fn redis_breaker_opens_in_an_outage_and_lookups_stop_waiting() {
    let mut redis = Redis::start();
    let sim = healthy_sim().await;
    let mut config = test_config(&redis.url(), Some(&sim));
    config.breaker.consecutive_failures = 3;
    config.breaker.open_ms = 60_000;
    let app = TestApp::spawn(config).await;

    redis.kill();
    for i in 0..5 {
        app.ask(&format!("no redis {i}")).await;
    }

    assert_eq!(
        app.metric(r#"qa_circuit_state{dependency="redis"}"#).await,
        2.0
    );
}

#[tokio::test]
async fn answers_written_while_redis_is_down_reach_it_when_it_returns() {
    let mut redis = Redis::start();
    let sim = healthy_sim().await;
    let app = TestApp::spawn(test_config(&redis.url(), Some(&sim))).await;

    redis.kill();
    assert_eq!(app.source_of("written during the outage").await, "primary");
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.restart();

    let key = cache_key("qa:v1:", &normalize("written during the outage"));
    assert!(
        eventually(Duration::from_secs(10), || async {
            redis.keys().await.contains(&key)
        })
        .await,
        "the answer never reached Redis"
    );
    assert!(
        app.metric(r#"qa_cache_writes_total{result="retried"}"#)
            .await
            >= 1.0
    );
}
