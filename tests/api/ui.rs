//! The chat page, the widget script and CORS over HTTP: what is served, with which
//! settings and headers, and which origins a browser may call the service from. (The
//! page's behaviour in a browser is tested in `browser.rs`.)

use resilient_qa::config::Config;
use serde_json::Value;

use crate::helpers::*;

async fn app_with(edit: impl FnOnce(&mut Config)) -> (Redis, TestApp) {
    let redis = Redis::start();
    let mut c = test_config(&redis.url(), None);
    edit(&mut c);
    let app = TestApp::spawn(c).await;
    (redis, app)
}

/// The JSON the page carries in `<script id="qa-chat-config" type="application/json">`.
fn page_config(html: &str) -> Value {
    let start = html
        .find(r#"id="qa-chat-config""#)
        .expect("the page carries its settings");
    let body = &html[start..];
    let body = &body[body.find('>').unwrap() + 1..];
    serde_json::from_str(&body[..body.find("</script>").unwrap()]).unwrap()
}

#[tokio::test]
async fn the_page_is_served_with_its_settings_and_a_content_security_policy() {
    let (_r, app) = app_with(|_| {}).await;

    let resp = app.client.get(app.url("/")).send().await.unwrap();

    assert_eq!(resp.status(), 200);
    let headers = resp.headers().clone();
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'self'"), "{csp}");
    assert!(csp.contains("connect-src 'self'"), "{csp}");
    let html = resp.text().await.unwrap();
    assert!(html.contains("<qa-chat"), "{html}");
    assert!(html.contains(r#"src="/assets/chat.js""#), "{html}");
    assert!(html.contains("<title>在线客服</title>"), "{html}");
    let config = page_config(&html);
    assert_eq!(config["title"]["en"], "Customer service");
    assert!(config["greeting"]["zh"].as_str().unwrap().contains("您好"));
    // The suggestions default to the first canned questions, in each language.
    assert_eq!(config["suggestions"]["zh"][0], "如何退货?");
    assert_eq!(config["suggestions"]["en"][0], "How do I return an item?");
    assert_eq!(config["suggestions"]["zh"].as_array().unwrap().len(), 3);

    let js = app
        .client
        .get(app.url("/assets/chat.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(js.status(), 200);
    assert_eq!(
        js.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    assert!(js.text().await.unwrap().contains("qa-chat"));
}

#[tokio::test]
async fn the_page_settings_come_from_the_config_and_are_escaped() {
    let (_r, app) = app_with(|c| {
        c.ui.title = "Acme <Help> & \"Support\"".into();
        c.ui.greeting = "Hi </script><script>alert(1)</script>".into();
        c.ui.suggestions = vec!["Where is my order?".into(), "退货".into()];
    })
    .await;

    let html = app
        .client
        .get(app.url("/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();

    assert!(
        html.contains("<title>Acme &lt;Help&gt; &amp; &quot;Support&quot;</title>"),
        "{html}"
    );
    assert!(!html.contains("<script>alert(1)"), "{html}");
    let config = page_config(&html);
    assert_eq!(
        config["greeting"]["en"],
        "Hi </script><script>alert(1)</script>"
    );
    assert_eq!(config["title"]["zh"], "Acme <Help> & \"Support\"");
    assert_eq!(
        config["suggestions"]["en"],
        serde_json::json!(["Where is my order?", "退货"])
    );
}

#[tokio::test]
async fn the_widget_script_carries_the_settings_the_chat_and_its_boot_code() {
    let (_r, app) = app_with(|_| {}).await;

    let resp = app.client.get(app.url("/widget.js")).send().await.unwrap();

    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    assert_eq!(
        resp.headers()["cross-origin-resource-policy"],
        "cross-origin"
    );
    let js = resp.text().await.unwrap();
    assert!(js.starts_with("window.QA_CHAT_CONFIG = window.QA_CHAT_CONFIG || {"));
    assert!(js.contains("qa-chat"));
    assert!(js.contains("widget-button"));
}

#[tokio::test]
async fn with_the_ui_disabled_the_page_and_the_scripts_do_not_exist() {
    let (_r, app) = app_with(|c| c.ui.enabled = false).await;

    for path in ["/", "/assets/chat.js", "/widget.js"] {
        let (status, body) = app.get_json(path).await;
        assert_eq!(status, 404, "{path}");
        assert_eq!(body["error"]["code"], "not_found");
    }
    let (status, _) = app.ask("still answering?").await;
    assert_eq!(status, 200);
}

async fn preflight(app: &TestApp, origin: &str) -> reqwest::Response {
    app.client
        .request(reqwest::Method::OPTIONS, app.url("/ask"))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type,accept")
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn an_allowed_origin_passes_the_preflight_and_reads_retry_after_and_the_request_id() {
    let (_r, app) = app_with(|c| {
        c.server.cors_allowed_origins = vec!["http://shop.example:8000".into()];
    })
    .await;

    let resp = preflight(&app, "http://shop.example:8000").await;

    assert!(resp.status().is_success(), "{}", resp.status());
    let h = resp.headers();
    assert_eq!(h["access-control-allow-origin"], "http://shop.example:8000");
    assert_eq!(h["access-control-max-age"], "3600");
    let allowed = h["access-control-allow-headers"].to_str().unwrap();
    assert!(allowed.contains("content-type"), "{allowed}");
    assert!(
        h["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST")
    );

    let resp = app
        .client
        .post(app.url("/ask"))
        .header("origin", "http://shop.example:8000")
        .json(&serde_json::json!({"question": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "http://shop.example:8000"
    );
    let exposed = resp.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    for header in ["retry-after", "x-request-id", "x-qa-source"] {
        assert!(exposed.contains(header), "{header} exposed: {exposed}");
    }
}

#[tokio::test]
async fn an_origin_not_allowed_gets_no_cors_headers() {
    let (_r, app) = app_with(|c| {
        c.server.cors_allowed_origins = vec!["https://shop.example".into()];
    })
    .await;

    let resp = preflight(&app, "https://evil.example").await;

    assert_eq!(resp.status(), 204);
    assert!(
        !resp.headers().contains_key("access-control-allow-origin"),
        "{:?}",
        resp.headers()
    );
}

#[tokio::test]
async fn a_star_allows_every_origin() {
    let (_r, app) = app_with(|c| c.server.cors_allowed_origins = vec!["*".into()]).await;

    let resp = preflight(&app, "http://anything.example:1234").await;

    assert_eq!(resp.headers()["access-control-allow-origin"], "*");
}

#[tokio::test]
async fn with_no_origin_allowed_a_preflight_is_refused_without_a_405() {
    let (_r, app) = app_with(|_| {}).await;

    let resp = preflight(&app, "http://localhost:3000").await;

    assert_eq!(resp.status(), 204);
    assert!(!resp.headers().contains_key("access-control-allow-origin"));
}
