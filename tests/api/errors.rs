//! Every error code of the contract, in the contract's order of checks, each with a JSON
//! body, a request id, and a count in `qa_rejected_total`.

use std::time::Duration;

use reqwest::header::CONTENT_TYPE;

use crate::helpers::*;

async fn app() -> (Redis, resilient_qa::sim::SimServer, TestApp) {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    let app = TestApp::spawn(test_config(&redis.url(), Some(&sim))).await;
    (redis, sim, app)
}

async fn post_raw(
    app: &TestApp,
    content_type: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> (u16, serde_json::Value, reqwest::header::HeaderMap) {
    let mut req = app.client.post(app.url("/ask")).body(body);
    if let Some(ct) = content_type {
        req = req.header(CONTENT_TYPE, ct);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, resp.json().await.unwrap(), headers)
}

fn assert_error(status: u16, body: &serde_json::Value, want_status: u16, code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.len() > 10),
        "message should tell a person what was wrong: {body}"
    );
}

#[tokio::test]
async fn body_over_the_limit_is_413_even_without_a_json_content_type() {
    let (_r, _s, app) = app().await;
    let big = "x".repeat(16_385);

    let (status, body, headers) = post_raw(&app, Some("text/plain"), big).await;

    assert_error(status, &body, 413, "payload_too_large");
    assert!(headers.contains_key("x-request-id"));
    assert_eq!(
        app.metric(r#"qa_rejected_total{code="payload_too_large"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn chunked_body_over_the_limit_is_413() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_r, _s, app) = app().await;
    let mut tcp = tokio::net::TcpStream::connect(app.base.trim_start_matches("http://"))
        .await
        .unwrap();
    let mut request = String::from(
        "POST /ask HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
    );
    for _ in 0..20 {
        request.push_str(&format!("3e8\r\n{}\r\n", "y".repeat(1000)));
    }
    request.push_str("0\r\n\r\n");

    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    let _ = tcp.read_to_string(&mut response).await;

    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.contains("payload_too_large"), "{response}");
}

#[tokio::test]
async fn missing_content_type_is_415() {
    let (_r, _s, app) = app().await;

    let (status, body, _) = post_raw(&app, None, r#"{"question":"hi"}"#).await;

    assert_error(status, &body, 415, "unsupported_media_type");
}

#[tokio::test]
async fn non_json_content_type_is_415() {
    let (_r, _s, app) = app().await;

    let (status, body, _) = post_raw(&app, Some("text/plain"), r#"{"question":"hi"}"#).await;

    assert_error(status, &body, 415, "unsupported_media_type");
    assert_eq!(
        app.metric(r#"qa_rejected_total{code="unsupported_media_type"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn json_content_type_with_charset_is_accepted() {
    let (_r, _s, app) = app().await;

    let (status, body, _) = post_raw(
        &app,
        Some("application/json; charset=utf-8"),
        r#"{"question":"hi","extra":{"ignored":true}}"#,
    )
    .await;

    assert_eq!(status, 200, "{body}");
    assert_eq!(body["source"], "primary");
}

#[tokio::test]
async fn body_that_is_not_json_is_400() {
    let (_r, _s, app) = app().await;

    let (status, body, _) = post_raw(&app, Some("application/json"), "{not json").await;

    assert_error(status, &body, 400, "invalid_json");
}

#[tokio::test]
async fn missing_question_field_is_400() {
    let (_r, _s, app) = app().await;

    let (status, body, _) = post_raw(&app, Some("application/json"), r#"{"q":"hi"}"#).await;

    assert_error(status, &body, 400, "invalid_json");
}

#[tokio::test]
async fn question_that_is_not_a_string_is_400() {
    let (_r, _s, app) = app().await;

    let (status, body, _) = post_raw(&app, Some("application/json"), r#"{"question":42}"#).await;

    assert_error(status, &body, 400, "invalid_json");
    assert_eq!(
        app.metric(r#"qa_rejected_total{code="invalid_json"}"#)
            .await,
        1.0
    );
    assert_eq!(
        app.metric(r#"qa_requests_total{source="primary"}"#).await,
        0.0
    );
}

#[tokio::test]
async fn blank_question_is_422() {
    let (_r, _s, app) = app().await;

    let (status, body) = app.ask(" \t\u{3000}\n ").await;

    assert_error(status, &body, 422, "invalid_question");
}

#[tokio::test]
async fn question_over_the_character_limit_is_422_counted_in_characters() {
    let (_r, _s, app) = app().await;

    // 2000 CJK characters are 6000 bytes: within the body limit, at the character limit.
    let (at_limit, _) = app.ask(&"问".repeat(2000)).await;
    let (status, body) = app.ask(&"问".repeat(2001)).await;

    assert_eq!(at_limit, 200);
    assert_error(status, &body, 422, "invalid_question");
    assert_eq!(
        app.metric(r#"qa_rejected_total{code="invalid_question"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn unknown_path_is_a_json_404() {
    let (_r, _s, app) = app().await;

    let (status, body) = app.get_json("/nope").await;

    assert_error(status, &body, 404, "not_found");
}

#[tokio::test]
async fn wrong_method_is_a_json_405() {
    let (_r, _s, app) = app().await;

    let (status, body) = app.get_json("/ask").await;

    assert_error(status, &body, 405, "method_not_allowed");
}

#[tokio::test]
async fn requests_past_the_concurrency_limit_are_shed_with_503_and_retry_after() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    sim.set_behavior(
        "gpt-4o",
        resilient_qa::sim::Behavior {
            latency_ms: 1000,
            ..Default::default()
        },
    );
    let mut config = test_config(&redis.url(), Some(&sim));
    config.limits.max_concurrent_requests = 1;
    let app = TestApp::spawn(config).await;

    let slow = app.ask("slow question");
    let shed = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        app.client
            .post(app.url("/ask"))
            .json(&serde_json::json!({"question": "second"}))
            .send()
            .await
            .unwrap()
    };
    let ((slow_status, _), shed) = tokio::join!(slow, shed);

    assert_eq!(slow_status, 200);
    assert_eq!(shed.status(), 503);
    assert_eq!(shed.headers()["retry-after"], "1");
    let body: serde_json::Value = shed.json().await.unwrap();
    assert_eq!(body["error"]["code"], "overloaded");
    assert_eq!(
        app.metric(r#"qa_rejected_total{code="overloaded"}"#).await,
        1.0
    );
}

#[tokio::test]
async fn service_keeps_answering_after_bad_requests() {
    let (_r, _s, app) = app().await;

    for junk in [
        "",
        "null",
        "[]",
        "\"q\"",
        "{\"question\":null}",
        "\u{0}\u{1}",
    ] {
        let (status, _, _) = post_raw(&app, Some("application/json"), junk).await;
        assert_eq!(status, 400, "{junk:?}");
    }
    let (status, _) = app.ask("still there?").await;

    assert_eq!(status, 200);
}
