//! Each source of the contract, reached on purpose, and the response shape.

use std::time::Duration;

use resilient_qa::pipeline::DEFAULT_REPLY;

use crate::helpers::*;

#[tokio::test]
async fn primary_answer_has_the_contract_shape() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    let app = TestApp::spawn(test_config(&redis.url(), Some(&sim))).await;

    let resp = app
        .client
        .post(app.url("/ask"))
        .json(&serde_json::json!({"question": "Where is my parcel?"}))
        .send()
        .await
        .unwrap();

    assert_eq!(resp.status(), 200);
    let header_id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["source"], "primary");
    assert_eq!(body["model"], "gpt-4o");
    assert_eq!(body["degraded"], false);
    assert!(body["answer"].as_str().unwrap().contains("[gpt-4o]"));
    assert!(body["latency_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(body["request_id"], header_id.as_str());
}

#[tokio::test]
async fn repeated_question_is_answered_from_cache_without_a_model_call() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    let app = TestApp::spawn(test_config(&redis.url(), Some(&sim))).await;

    assert_eq!(app.source_of("How do I track my order?").await, "primary");
    let (_, body) = app.ask("How do I track my order?").await;

    assert_eq!(body["source"], "cache");
    assert_eq!(body["model"], "gpt-4o");
    assert_eq!(body["degraded"], false);
    assert_eq!(sim.calls("gpt-4o"), 1);
}

#[tokio::test]
async fn secondary_answers_when_the_primary_fails() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    sim.set_behavior("gpt-4o", always("500"));
    let app = TestApp::spawn(test_config(&redis.url(), Some(&sim))).await;

    let (_, body) = app.ask("Can I pay by card?").await;

    assert_eq!(body["source"], "secondary");
    assert_eq!(body["model"], "gpt-3.5-turbo");
    assert_eq!(body["degraded"], true);
    assert!(body["answer"].as_str().unwrap().contains("[gpt-3.5-turbo]"));
}

#[tokio::test]
async fn canned_answer_when_both_models_fail_matches_full_width_variant() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    sim.set_default_behavior(always("500"));
    let app = TestApp::spawn(test_config(&redis.url(), Some(&sim))).await;

    let (_, body) = app.ask("  如何退货？ ").await;

    assert_eq!(body["source"], "canned");
    assert_eq!(
        body["answer"],
        "请在订单页面点击退货按钮,填写退货原因即可。"
    );
    assert_eq!(body["model"], serde_json::Value::Null);
    assert_eq!(body["degraded"], true);
}

#[tokio::test]
async fn canned_answer_matches_an_alias() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    sim.set_default_behavior(always("503"));
    let app = TestApp::spawn(test_config(&redis.url(), Some(&sim))).await;

    let (_, body) = app.ask("换货流程").await;

    assert_eq!(body["source"], "canned");
    assert_eq!(body["answer"], "请联系客服申请换货,我们会尽快处理。");
}

#[tokio::test]
async fn default_reply_when_nothing_else_answers() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    sim.set_default_behavior(always("500"));
    let app = TestApp::spawn(test_config(&redis.url(), Some(&sim))).await;

    let (status, body) = app.ask("今天天气怎么样?").await;

    assert_eq!(status, 200);
    assert_eq!(body["source"], "default");
    assert_eq!(body["answer"], DEFAULT_REPLY);
    assert_eq!(body["model"], serde_json::Value::Null);
    assert_eq!(body["degraded"], true);
}

#[tokio::test]
async fn stale_answer_is_served_only_when_the_models_fail() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    let mut config = test_config(&redis.url(), Some(&sim));
    config.cache.ttl_secs = 1;
    config.cache.stale_ttl_secs = 600;
    let app = TestApp::spawn(config).await;
    assert_eq!(app.source_of("Do you ship abroad?").await, "primary");
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // Expired but models healthy: a fresh model answer, not the stale one.
    assert_eq!(app.source_of("Do you ship abroad?").await, "primary");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    sim.set_default_behavior(always("503"));
    let (_, body) = app.ask("Do you ship abroad?").await;

    assert_eq!(body["source"], "stale");
    assert_eq!(body["model"], "gpt-4o");
    assert_eq!(body["degraded"], true);
    assert!(
        body["answer"]
            .as_str()
            .unwrap()
            .contains("Do you ship abroad?")
    );
}

#[tokio::test]
async fn model_receives_the_trimmed_question_as_written_with_temperature_zero() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    let mut config = test_config(&redis.url(), Some(&sim));
    config.api_key = Some("sk-test-key".to_string().into());
    let app = TestApp::spawn(config).await;

    app.ask("  Where is  MY Ｏrder?\n").await;

    let snap = sim.snapshot();
    let last = snap.models["gpt-4o"].last_request.clone().unwrap();
    let content = last.body["messages"][0]["content"].as_str().unwrap();
    assert!(
        content.contains("问题:Where is  MY Ｏrder?\n\n回答:"),
        "{content}"
    );
    assert_eq!(last.body["temperature"], 0.0);
    assert_eq!(last.body["model"], "gpt-4o");
    assert_eq!(last.authorization.as_deref(), Some("Bearer ***"));
    assert!(sim.last_authorization_is("gpt-4o", Some("Bearer sk-test-key")));
}

#[tokio::test]
async fn without_a_key_a_custom_base_url_gets_no_authorization_header() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    let app = TestApp::spawn(test_config(&redis.url(), Some(&sim))).await;

    assert_eq!(app.source_of("Hello?").await, "primary");

    let last = sim.snapshot().models["gpt-4o"]
        .last_request
        .clone()
        .unwrap();
    assert_eq!(last.authorization, None);
}

#[tokio::test]
async fn without_a_key_the_official_api_is_not_configured_and_never_called() {
    let redis = Redis::start();
    let app = TestApp::spawn(test_config(&redis.url(), None)).await;

    let (_, body) = app.ask("如何换货?").await;
    let (_, ready) = app.get_json("/readyz").await;
    let metrics = app.metrics().await;

    assert_eq!(body["source"], "canned");
    assert_eq!(ready["checks"]["primary"], "not_configured");
    assert_eq!(ready["checks"]["secondary"], "not_configured");
    assert_eq!(ready["status"], "degraded");
    for from in ["primary", "secondary"] {
        let sample = format!("qa_fallbacks_total{{from=\"{from}\",reason=\"not_configured\"}}");
        assert_eq!(metric_value(&metrics, &sample), 1.0, "{sample}");
    }
}

#[tokio::test]
async fn client_request_id_is_kept_and_an_invalid_one_replaced() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    let app = TestApp::spawn(test_config(&redis.url(), Some(&sim))).await;
    let ask = |id: &'static str| {
        app.client
            .post(app.url("/ask"))
            .header("x-request-id", id)
            .json(&serde_json::json!({"question": "hi"}))
            .send()
    };

    let kept = ask("trace-abc-123").await.unwrap();
    let replaced = ask("has space").await.unwrap();

    assert_eq!(kept.headers()["x-request-id"], "trace-abc-123");
    let body: serde_json::Value = kept.json().await.unwrap();
    assert_eq!(body["request_id"], "trace-abc-123");
    let new_id = replaced.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert_ne!(new_id, "has space");
    assert_eq!(new_id.len(), 26);
}

#[tokio::test]
async fn readyz_is_ready_with_redis_up_and_a_configured_primary() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    let app = TestApp::spawn(test_config(&redis.url(), Some(&sim))).await;

    let (status, body) = app.get_json("/readyz").await;
    let (hstatus, health) = app.get_json("/healthz").await;

    assert_eq!(status, 200);
    assert_eq!(
        body,
        serde_json::json!({"status": "ready", "checks": {"redis": "up", "redis_writes": "ok", "primary": "closed", "secondary": "closed"}})
    );
    assert_eq!(
        (hstatus, health),
        (200, serde_json::json!({"status": "ok"}))
    );
}

#[tokio::test]
async fn cors_allows_only_configured_origins() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    let mut config = test_config(&redis.url(), Some(&sim));
    config.server.cors_allowed_origins = vec!["https://support.example.com".into()];
    let app = TestApp::spawn(config).await;
    let preflight = |origin: &'static str| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url("/ask"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .send()
    };

    let allowed = preflight("https://support.example.com").await.unwrap();
    let other = preflight("https://evil.example.com").await.unwrap();

    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://support.example.com"
    );
    assert!(other.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn no_cors_headers_by_default() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    let app = TestApp::spawn(test_config(&redis.url(), Some(&sim))).await;

    let resp = app
        .client
        .post(app.url("/ask"))
        .header("origin", "https://support.example.com")
        .json(&serde_json::json!({"question": "hi"}))
        .send()
        .await
        .unwrap();

    assert!(resp.headers().get("access-control-allow-origin").is_none());
}
