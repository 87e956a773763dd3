//! What a client can make the service spend, and what it can learn from it: bodies that
//! never arrive, oversized heads, requests the HTTP rules refuse, admin routes that must
//! not exist, and secrets that must stay inside.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::helpers::*;

const TOKEN: &str = "an-admin-token-long-enough";

/// Opens a raw connection to `app` and sends `head` (and nothing more).
fn raw(app: &TestApp, head: &str) -> TcpStream {
    let addr = app.base.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    s
}

/// Reads one response (head and body) from `s`: status, head and body text.
fn read_response(s: &mut TcpStream) -> (u16, String, String) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf);
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap())
                        })
                        .unwrap_or(0);
                    if body.len() >= len {
                        break;
                    }
                }
            }
            Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

async fn app_with(f: impl FnOnce(&mut resilient_qa::config::Config)) -> (Redis, TestApp) {
    let redis = Redis::start();
    let mut config = test_config(&redis.url(), None);
    f(&mut config);
    (redis, TestApp::spawn(config).await)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test]
async fn admin_request_with_a_body_that_never_comes_is_refused_at_once_when_admin_is_disabled() {
    let (_r, app) = app_with(|_| {}).await;
    let mut s = raw(
        &app,
        "DELETE /admin/cache HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n",
    );

    let started = Instant::now();
    let (status, head, body) = blocking(move || read_response(&mut s)).await;

    assert_eq!(status, 404, "{head}\n{body}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(body.contains("not_found"), "{body}");
}

#[tokio::test]
async fn admin_request_with_a_wrong_token_is_refused_before_its_body_is_read() {
    let (_r, app) = app_with(|c| c.admin_token = Some(TOKEN.to_string().into())).await;
    let mut s = raw(
        &app,
        "DELETE /admin/cache HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nope\r\nContent-Length: 1000\r\n\r\n",
    );

    let (status, _head, body) = blocking(move || read_response(&mut s)).await;

    assert_eq!(status, 401, "{body}");
}

#[tokio::test]
async fn admin_body_that_never_comes_gets_408_after_the_body_timeout() {
    let (_r, app) = app_with(|c| {
        c.admin_token = Some(TOKEN.to_string().into());
        c.server.body_read_timeout_ms = 300;
    })
    .await;
    let mut s = raw(
        &app,
        &format!(
            "DELETE /admin/cache HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
        ),
    );

    let (status, _head, body) = blocking(move || read_response(&mut s)).await;

    assert_eq!(status, 408, "{body}");
    assert!(body.contains("request_timeout"), "{body}");
}

#[tokio::test]
async fn admin_routes_answer_404_to_every_method_while_admin_is_disabled() {
    let (_r, app) = app_with(|_| {}).await;
    for (method, path) in [
        (reqwest::Method::GET, "/admin/cache"),
        (reqwest::Method::PUT, "/admin/cache"),
        (reqwest::Method::GET, "/admin/canned/reload"),
    ] {
        let resp = app
            .client
            .request(method.clone(), app.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404, "{method} {path}");
        assert!(resp.headers().get("allow").is_none(), "{method} {path}");
    }
}

#[tokio::test]
async fn admin_bearer_scheme_is_case_insensitive() {
    let (_r, app) = app_with(|c| c.admin_token = Some(TOKEN.to_string().into())).await;

    let resp = app
        .client
        .delete(app.url("/admin/cache"))
        .header("authorization", format!("bearer {TOKEN}"))
        .json(&serde_json::json!({"question": "q"}))
        .send()
        .await
        .unwrap();

    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn clients_whose_bodies_never_come_take_no_load_shedding_slot() {
    let (_r, app) = app_with(|c| {
        c.limits.max_concurrent_requests = 2;
        c.server.body_read_timeout_ms = 5000;
    })
    .await;
    let stalled: Vec<TcpStream> = (0..6)
        .map(|_| {
            raw(
                &app,
                "POST /ask HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n",
            )
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let (status, body) = app.ask("still served?").await;

    assert_eq!(status, 200, "{body}");
    drop(stalled);
}

#[tokio::test]
async fn a_request_head_over_the_limit_gets_431_and_is_counted() {
    let (_r, app) = app_with(|_| {}).await;
    let big = "a".repeat(400 * 1024);
    let mut s = raw(
        &app,
        &format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n"),
    );

    let (status, head, _body) = blocking(move || read_response(&mut s)).await;

    assert_eq!(status, 431, "{head}");
    assert!(
        eventually(Duration::from_secs(2), || async {
            app.metric(r#"qa_rejected_total{code="header_too_large"}"#)
                .await
                == 1.0
        })
        .await
    );
}

#[tokio::test]
async fn http11_request_without_host_is_a_json_400_with_a_request_id() {
    let (_r, app) = app_with(|_| {}).await;
    let mut s = raw(&app, "GET /healthz HTTP/1.1\r\n\r\n");

    let (status, head, body) = blocking(move || read_response(&mut s)).await;

    assert_eq!(status, 400, "{head}");
    assert!(
        head.to_ascii_lowercase().contains("x-request-id:"),
        "{head}"
    );
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["error"]["code"], "bad_request");
}

#[tokio::test]
async fn json_array_body_is_400_invalid_json() {
    let (_r, app) = app_with(|_| {}).await;

    let resp = app
        .client
        .post(app.url("/ask"))
        .header("content-type", "application/json")
        .body(r#"["hi"]"#)
        .send()
        .await
        .unwrap();

    assert_eq!(resp.status(), 400);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_json");
}

#[tokio::test]
async fn stats_show_kinds_of_upstream_failures_never_hosts_or_credentials() {
    // Nothing listens on port 1: every call is a connection failure.
    let (_r, app) = app_with(|c| {
        c.openai.base_url = "http://user:s3cret-pw@127.0.0.1:1/v1".into();
        c.primary.max_attempts = 1;
        c.secondary.max_attempts = 1;
    })
    .await;
    app.ask("anyone there?").await;

    let (_, stats) = app.get_json("/stats").await;

    let recent = stats["errors"]["recent"].as_array().unwrap();
    assert!(!recent.is_empty(), "{stats}");
    let text = stats.to_string();
    assert!(!text.contains("s3cret"), "{text}");
    assert!(!text.contains("127.0.0.1"), "{text}");
    assert_eq!(recent[0]["kind"], "connect_error");
    assert!(
        recent[0]["request_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty())
    );
}
