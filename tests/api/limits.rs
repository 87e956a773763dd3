//! Clients and their limits, over real HTTP against a real `redis-server`: who a client
//! is (a known API key, or its address, through trusted proxies only), the request rate
//! (429 with Retry-After and the RateLimit fields, common to the instances sharing a
//! Redis, local while Redis is away), the daily model-call budget (cache, canned and
//! stale answers still given, no model call, 429 for a new question), the clients file
//! and its reloads, and metrics that name no client.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use resilient_qa::config::Config;
use resilient_qa::sim::{Behavior, SimServer};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::helpers::*;

const ADMIN: &str = "admin-token-for-limits";

/// The hex SHA-256 of a key, as the clients file holds it.
fn sha256_hex(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A fresh folder of this test's own.
fn temp_dir() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "qa-limits-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A clients file entry: name, key, and extra TOML lines (its own limits).
fn entry(name: &str, key: &str, extra: &str) -> String {
    format!(
        "[[clients]]\nname = \"{name}\"\nkey_sha256 = \"{}\"\n{extra}\n",
        sha256_hex(key)
    )
}

/// A config over `redis` and `sim`, edited by `edit`.
fn config(redis: &Redis, sim: &SimServer, edit: impl FnOnce(&mut Config)) -> Config {
    let mut c = test_config(&redis.url(), Some(sim));
    edit(&mut c);
    c
}

/// `POST /ask` with `question`, a bearer `key` and an `X-Forwarded-For`, when given.
async fn ask_as(
    app: &TestApp,
    key: Option<&str>,
    forwarded: Option<&str>,
    question: &str,
) -> reqwest::Response {
    let mut req = app
        .client
        .post(app.url("/ask"))
        .json(&serde_json::json!({ "question": question }));
    if let Some(key) = key {
        req = req.bearer_auth(key);
    }
    if let Some(xff) = forwarded {
        req = req.header("x-forwarded-for", xff);
    }
    req.send().await.unwrap()
}

fn header(resp: &reqwest::Response, name: &str) -> String {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// The statuses of `n` asks of `question` by `key` from `forwarded`.
async fn statuses(
    app: &TestApp,
    key: Option<&str>,
    forwarded: Option<&str>,
    question: &str,
    n: usize,
) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(
            ask_as(app, key, forwarded, question)
                .await
                .status()
                .as_u16(),
        );
    }
    out
}

/// The sum of the daily counters in Redis (every client's).
async fn daily_calls(redis: &Redis) -> u64 {
    let mut conn = redis.conn().await;
    let mut total = 0;
    for key in redis.keys().await {
        if key.contains("limits:daily:") {
            let n: u64 = deadpool_redis::redis::cmd("GET")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap();
            total += n;
        }
    }
    total
}

#[tokio::test]
async fn a_client_over_its_rate_gets_429_with_retry_after_and_the_ratelimit_fields() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    let app = TestApp::spawn(config(&redis, &sim, |c| {
        c.limits.per_client_rps = 0.5;
        c.limits.per_client_burst = 2;
    }))
    .await;

    let first = ask_as(&app, None, None, "how fast may I ask?").await;
    let second = ask_as(&app, None, None, "how fast may I ask?").await;
    let third = ask_as(&app, None, None, "how fast may I ask?").await;

    assert_eq!(first.status(), 200);
    assert_eq!(header(&first, "ratelimit-policy"), "\"rps\";q=2;w=4");
    assert_eq!(header(&first, "ratelimit"), "\"rps\";r=1;t=2");
    assert_eq!(second.status(), 200);
    assert_eq!(header(&second, "ratelimit"), "\"rps\";r=0;t=4");
    assert_eq!(third.status(), 429);
    let retry: u64 = header(&third, "retry-after").parse().unwrap();
    assert!((1..=2).contains(&retry), "Retry-After: {retry}");
    assert_eq!(header(&third, "ratelimit-policy"), "\"rps\";q=2;w=4");
    assert_eq!(
        header(&third, "ratelimit"),
        format!("\"rps\";r=0;t={retry}")
    );
    let body: Value = third.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("retry"),
        "{body}"
    );
    assert_eq!(
        app.metric(r#"qa_rejected_total{code="rate_limited"}"#)
            .await,
        1.0
    );
    assert_eq!(
        app.metric(r#"qa_rate_limit_checks_total{limit="rate",result="limited",store="redis"}"#)
            .await,
        1.0
    );
}

/// Two instances sharing `redis`, every client held to `rps` with bursts of `burst`.
async fn two_instances(redis: &Redis, sim: &SimServer, rps: f64, burst: u32) -> (TestApp, TestApp) {
    let limited = |c: &mut Config| {
        c.limits.per_client_rps = rps;
        c.limits.per_client_burst = burst;
    };
    let a = TestApp::spawn(config(redis, sim, limited)).await;
    let b = TestApp::spawn(config(redis, sim, limited)).await;
    (a, b)
}

#[tokio::test]
async fn the_rate_holds_across_two_instances_sharing_a_redis() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    let (a, b) = two_instances(&redis, &sim, 0.1, 4).await;

    let mut seen = Vec::new();
    for i in 0..6 {
        let app = if i % 2 == 0 { &a } else { &b };
        seen.push(
            ask_as(app, None, None, "shared rate")
                .await
                .status()
                .as_u16(),
        );
    }

    assert_eq!(seen, [200, 200, 200, 200, 429, 429]);
    for app in [&a, &b] {
        assert_eq!(
            app.metric(
                r#"qa_rate_limit_checks_total{limit="rate",result="allowed",store="redis"}"#
            )
            .await,
            2.0
        );
    }
}

#[tokio::test]
async fn a_fast_client_taking_cells_in_batches_is_held_to_its_rate_across_two_instances() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    // 200 a second with bursts of 100: each instance takes 4 cells from Redis at once.
    let (a, b) = two_instances(&redis, &sim, 200.0, 100).await;
    ask_as(&a, None, None, "a fast client").await;

    let started = std::time::Instant::now();
    let asks = (0..300).map(|i| {
        let app = if i % 2 == 0 { &a } else { &b };
        async move {
            ask_as(app, None, None, "a fast client")
                .await
                .status()
                .as_u16()
        }
    });
    let statuses = futures_util::future::join_all(asks).await;
    let elapsed = started.elapsed().as_secs_f64();

    let allowed = statuses.iter().filter(|s| **s == 200).count() as f64;
    let limited = statuses.iter().filter(|s| **s == 429).count() as f64;
    assert_eq!(allowed + limited, 300.0, "{statuses:?}");
    // Never more than the burst and what the rate refilled meanwhile (the first request
    // took one cell before the clock started); at most a batch per instance unused.
    assert!(
        allowed <= 100.0 + (200.0 * elapsed).ceil(),
        "{allowed} allowed in {elapsed:.3} s"
    );
    assert!(
        allowed >= 100.0 - 1.0 - 8.0,
        "{allowed} allowed in {elapsed:.3} s"
    );
}

#[tokio::test]
async fn with_redis_away_each_instance_limits_on_its_own() {
    let mut redis = Redis::start();
    let sim = healthy_sim().await;
    let (a, b) = two_instances(&redis, &sim, 0.1, 2).await;
    redis.kill();

    let on_a = statuses(&a, None, None, "redis is away", 3).await;
    let on_b = statuses(&b, None, None, "redis is away", 3).await;

    assert_eq!(on_a, [200, 200, 429]);
    assert_eq!(on_b, [200, 200, 429], "b keeps its own count");
    assert_eq!(
        a.metric(r#"qa_rate_limit_checks_total{limit="rate",result="limited",store="local"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn x_forwarded_for_is_believed_from_a_trusted_proxy() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    let app = TestApp::spawn(config(&redis, &sim, |c| {
        c.server.trusted_proxies = vec!["127.0.0.0/8".into(), "10.0.0.0/8".into()];
        c.limits.per_client_rps = 0.1;
        c.limits.per_client_burst = 1;
    }))
    .await;

    let one = statuses(&app, None, Some("198.51.100.1"), "who am I?", 2).await;
    let two = statuses(&app, None, Some("198.51.100.2"), "who am I?", 1).await;
    // Behind two proxies: the right-most address that is not a proxy is the client;
    // what the client wrote left of it proves nothing.
    let chained = statuses(
        &app,
        None,
        Some("6.6.6.6, 198.51.100.1, 10.1.1.1"),
        "who am I?",
        1,
    )
    .await;
    let spoofed_left = statuses(
        &app,
        None,
        Some("198.51.100.9, 198.51.100.3"),
        "who am I?",
        1,
    )
    .await;

    assert_eq!(one, [200, 429], "one client, one burst");
    assert_eq!(two, [200], "another address is another client");
    assert_eq!(chained, [429], "198.51.100.1 again, behind a second proxy");
    assert_eq!(spoofed_left, [200], "198.51.100.3 is the client");
}

#[tokio::test]
async fn a_spoofed_x_forwarded_for_from_an_untrusted_peer_is_ignored() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    let app = TestApp::spawn(config(&redis, &sim, |c| {
        c.server.trusted_proxies = vec!["10.0.0.0/8".into()];
        c.limits.per_client_rps = 0.1;
        c.limits.per_client_burst = 1;
    }))
    .await;

    let first = statuses(&app, None, Some("198.51.100.1"), "who am I?", 1).await;
    let second = statuses(&app, None, Some("198.51.100.2"), "who am I?", 1).await;

    assert_eq!(first, [200]);
    assert_eq!(
        second,
        [429],
        "the peer, 127.0.0.1, is the client either way"
    );
}

#[tokio::test]
async fn a_known_key_is_its_own_client_with_its_own_limits() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    let dir = temp_dir();
    let file = dir.join("clients.toml");
    std::fs::write(
        &file,
        entry("acme-web", "sk-acme", "burst = 3\nrps = 0.1") + &entry("beta-app", "sk-beta", ""),
    )
    .unwrap();
    let app = TestApp::spawn(config(&redis, &sim, |c| {
        c.clients.file = Some(file.clone());
        c.limits.per_client_rps = 0.1;
        c.limits.per_client_burst = 1;
    }))
    .await;

    let acme = statuses(&app, Some("sk-acme"), None, "keys", 4).await;
    let beta = statuses(&app, Some("sk-beta"), None, "keys", 2).await;
    let anonymous = statuses(&app, None, None, "keys", 2).await;
    let policy = header(
        &ask_as(&app, Some("sk-acme"), None, "keys").await,
        "ratelimit-policy",
    );

    assert_eq!(acme, [200, 200, 200, 429], "acme-web's own burst of 3");
    assert_eq!(
        beta,
        [200, 429],
        "beta-app has the default burst, on its own"
    );
    assert_eq!(anonymous, [200, 429], "the address is a client of its own");
    assert_eq!(policy, "\"rps\";q=3;w=30");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn an_unknown_key_is_its_address_when_no_key_is_required() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    let dir = temp_dir();
    let file = dir.join("clients.toml");
    std::fs::write(&file, entry("acme-web", "sk-acme", "")).unwrap();
    let app = TestApp::spawn(config(&redis, &sim, |c| {
        c.clients.file = Some(file.clone());
        c.limits.per_client_rps = 0.1;
        c.limits.per_client_burst = 1;
    }))
    .await;

    let without = statuses(&app, None, None, "unknown keys", 1).await;
    let unknown = statuses(&app, Some("sk-made-up"), None, "unknown keys", 1).await;
    let other_unknown = statuses(&app, Some("sk-other"), None, "unknown keys", 1).await;

    assert_eq!(without, [200]);
    assert_eq!(unknown, [429], "an unknown key is the same address");
    assert_eq!(other_unknown, [429]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn require_key_gives_401_without_a_known_key_on_the_answering_routes_only() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    let dir = temp_dir();
    let file = dir.join("clients.toml");
    std::fs::write(&file, entry("acme-web", "sk-acme", "")).unwrap();
    let app = TestApp::spawn(config(&redis, &sim, |c| {
        c.clients.file = Some(file.clone());
        c.clients.require_key = true;
    }))
    .await;
    let chat = serde_json::json!({"model": "any", "messages": [{"role": "user", "content": "hi"}]});

    let no_key = ask_as(&app, None, None, "let me in").await;
    let wrong_key = ask_as(&app, Some("sk-guess"), None, "let me in").await;
    let known = ask_as(&app, Some("sk-acme"), None, "let me in").await;
    let models = app.client.get(app.url("/v1/models")).send().await.unwrap();
    let models_keyed = app
        .client
        .get(app.url("/v1/models"))
        .bearer_auth("sk-acme")
        .send()
        .await
        .unwrap();
    let completions = app
        .client
        .post(app.url("/v1/chat/completions"))
        .json(&chat)
        .send()
        .await
        .unwrap();

    assert_eq!(no_key.status(), 401);
    assert_eq!(
        header(&no_key, "www-authenticate"),
        "Bearer realm=\"resilient-qa\""
    );
    let body: Value = no_key.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized", "{body}");
    assert_eq!(wrong_key.status(), 401);
    assert_eq!(known.status(), 200);
    assert_eq!(models.status(), 401);
    let body: Value = models.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    assert_eq!(body["error"]["code"], "unauthorized", "{body}");
    assert_eq!(models_keyed.status(), 200);
    assert_eq!(completions.status(), 401);
    for path in ["/healthz", "/readyz", "/metrics", "/stats", "/"] {
        let resp = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path} needs no key");
    }
    assert_eq!(
        app.metric(r#"qa_rejected_total{code="unauthorized"}"#)
            .await,
        4.0
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

async fn reload(app: &TestApp) -> (u16, Value) {
    let resp = app
        .client
        .post(app.url("/admin/clients/reload"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

#[tokio::test]
async fn the_admin_endpoint_reloads_the_clients_and_a_bad_file_keeps_the_old_ones_with_422() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    let dir = temp_dir();
    let file = dir.join("clients.toml");
    std::fs::write(&file, entry("acme-web", "sk-acme", "")).unwrap();
    let app = TestApp::spawn(config(&redis, &sim, |c| {
        c.clients.file = Some(file.clone());
        c.clients.require_key = true;
        // Only the endpoint reloads here.
        c.clients.reload_check_ms = 3_600_000;
        c.admin_token = Some(ADMIN.to_string().into());
    }))
    .await;
    let before = ask_as(&app, Some("sk-beta"), None, "reload").await.status();

    std::fs::write(
        &file,
        entry("acme-web", "sk-acme", "") + &entry("beta-app", "sk-beta", ""),
    )
    .unwrap();
    let (status, body) = reload(&app).await;
    let after = ask_as(&app, Some("sk-beta"), None, "reload").await.status();
    std::fs::write(
        &file,
        entry("gamma", "sk-gamma", "")
            + "[[clients]]\nname = \"broken\"\nkey_sha256 = \"sk-plain-key\"\n",
    )
    .unwrap();
    let (bad_status, bad_body) = reload(&app).await;
    let kept = ask_as(&app, Some("sk-beta"), None, "reload").await.status();
    let not_added = ask_as(&app, Some("sk-gamma"), None, "reload")
        .await
        .status();
    let unauthorized = app
        .client
        .post(app.url("/admin/clients/reload"))
        .send()
        .await
        .unwrap()
        .status();

    assert_eq!(before, 401);
    assert_eq!((status, body), (200, serde_json::json!({"clients": 2})));
    assert_eq!(after, 200);
    assert_eq!(bad_status, 422);
    assert_eq!(
        bad_body["error"]["code"], "invalid_clients_file",
        "{bad_body}"
    );
    let message = bad_body["error"]["message"].as_str().unwrap();
    assert!(message.contains("clients[1].key_sha256"), "{message}");
    assert!(
        !message.contains("sk-plain-key"),
        "no key in the message: {message}"
    );
    assert_eq!(kept, 200, "the old clients stay");
    assert_eq!(not_added, 401);
    assert_eq!(unauthorized, 401);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_clients_file_changed_in_place_is_reloaded_by_itself() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    let dir = temp_dir();
    let file = dir.join("clients.toml");
    std::fs::write(&file, entry("acme-web", "sk-acme", "")).unwrap();
    let app = TestApp::spawn(config(&redis, &sim, |c| {
        c.clients.file = Some(file.clone());
        c.clients.require_key = true;
        c.clients.reload_check_ms = 100;
    }))
    .await;
    assert_eq!(
        ask_as(&app, Some("sk-beta"), None, "watch").await.status(),
        401
    );

    std::fs::write(
        &file,
        entry("acme-web", "sk-acme", "") + &entry("beta-app", "sk-beta", ""),
    )
    .unwrap();

    assert!(
        eventually(Duration::from_secs(5), || async {
            ask_as(&app, Some("sk-beta"), None, "watch").await.status() == 200
        })
        .await,
        "the new key was taken up without a restart"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_bad_clients_file_at_start_up_stops_the_service_with_exit_2_naming_the_key() {
    let dir = temp_dir();
    let file = dir.join("clients.toml");
    std::fs::write(
        &file,
        entry("acme-web", "sk-acme", "") + &entry("beta-app", "sk-beta", "rps = -2"),
    )
    .unwrap();

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_resilient-qa"))
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("REDIS_URL", format!("redis://127.0.0.1:{}", free_port()))
        .env("QA__CLIENTS__FILE", &file)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();

    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("clients.file"), "{stderr}");
    assert!(stderr.contains("clients[1].rps"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A service whose clients have a daily budget of `calls` model calls.
async fn budget_app(
    redis: &Redis,
    sim: &SimServer,
    calls: u64,
    edit: impl FnOnce(&mut Config),
) -> TestApp {
    TestApp::spawn(config(redis, sim, |c| {
        c.limits.per_client_model_calls_per_day = calls;
        edit(c);
    }))
    .await
}

/// Waits until the daily counters in Redis add up to `n`.
async fn charged(redis: &Redis, n: u64) -> bool {
    eventually(Duration::from_secs(5), || async {
        daily_calls(redis).await == n
    })
    .await
}

#[tokio::test]
async fn over_its_daily_budget_a_client_still_gets_cached_and_canned_answers_without_a_model_call()
{
    let redis = Redis::start();
    let sim = healthy_sim().await;
    let app = budget_app(&redis, &sim, 1, |_| {}).await;

    let (status, first) = app.ask("What are your opening hours?").await;
    assert_eq!((status, first["source"].as_str()), (200, Some("primary")));
    assert!(charged(&redis, 1).await, "one model call charged");

    let cached = ask_as(&app, None, None, "What are your opening hours?").await;
    let cached_policy = header(&cached, "ratelimit-policy");
    let cached: Value = cached.json().await.unwrap();
    let canned = ask_as(&app, None, None, "如何退货?").await;
    let canned_limit = header(&canned, "ratelimit");
    let canned: Value = canned.json().await.unwrap();

    assert_eq!(cached["source"], "cache", "{cached}");
    assert_eq!(cached_policy, "\"daily\";q=1;w=86400");
    assert_eq!(canned["source"], "canned", "{canned}");
    assert!(
        canned_limit.starts_with("\"daily\";r=0;t="),
        "{canned_limit}"
    );
    assert_eq!(sim.calls("gpt-4o"), 1, "no model call past the budget");
    assert_eq!(sim.calls("gpt-3.5-turbo"), 0);
    assert_eq!(
        app.metric(r#"qa_fallbacks_total{from="primary",reason="budget"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn over_its_daily_budget_a_new_question_gets_429_until_midnight_utc() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    let app = budget_app(&redis, &sim, 1, |_| {}).await;
    app.ask("a question that spends the budget").await;
    assert!(charged(&redis, 1).await);

    let refused = ask_as(&app, None, None, "a brand new question").await;

    assert_eq!(refused.status(), 429);
    let retry: u64 = header(&refused, "retry-after").parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let to_midnight = 86_400 - now % 86_400;
    assert!(
        retry.abs_diff(to_midnight) <= 2,
        "Retry-After {retry}, midnight UTC in {to_midnight}"
    );
    assert_eq!(
        header(&refused, "ratelimit-policy"),
        "\"daily\";q=1;w=86400"
    );
    assert_eq!(
        header(&refused, "ratelimit"),
        format!("\"daily\";r=0;t={retry}")
    );
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    assert_eq!(sim.calls("gpt-4o"), 1, "the new question called no model");
    assert_eq!(
        app.metric(r#"qa_rate_limit_checks_total{limit="daily",result="limited",store="redis"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_burst_of_new_questions_with_one_call_left_makes_one_walk() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    sim.set_behavior(
        "gpt-4o",
        Behavior {
            latency_ms: 300,
            ..Behavior::default()
        },
    );
    let app = budget_app(&redis, &sim, 1, |_| {}).await;

    let asks = (0..10).map(|i| {
        let app = &app;
        async move {
            ask_as(app, None, None, &format!("burst question number {i}"))
                .await
                .status()
                .as_u16()
        }
    });
    let statuses = futures_util::future::join_all(asks).await;

    // The first admitted walk is pending until charged: the others see no call left.
    assert_eq!(sim.calls("gpt-4o"), 1, "{statuses:?}");
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        9,
        "{statuses:?}"
    );
}

#[tokio::test]
async fn over_its_daily_budget_a_client_gets_the_stale_answer() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    let app = budget_app(&redis, &sim, 1, |c| c.cache.ttl_secs = 1).await;
    assert_eq!(app.source_of("will this go stale?").await, "primary");
    assert!(charged(&redis, 1).await);
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let (status, body) = app.ask("will this go stale?").await;

    assert_eq!(status, 200, "{body}");
    assert_eq!(body["source"], "stale", "{body}");
    assert_eq!(sim.calls("gpt-4o"), 1);
}

#[tokio::test]
async fn the_budget_counts_every_model_attempt_retries_included() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    sim.set_behavior("gpt-4o", script(&["500", "500", "ok"]));
    let app = budget_app(&redis, &sim, 10, |_| {}).await;

    let (status, body) = app.ask("an answer that took three tries").await;

    assert_eq!((status, body["source"].as_str()), (200, Some("primary")));
    assert!(
        charged(&redis, 3).await,
        "three attempts: {}",
        daily_calls(&redis).await
    );
    let resp = ask_as(&app, None, None, "yet another question").await;
    let limit = header(&resp, "ratelimit");
    assert!(limit.starts_with("\"daily\";r=7;t="), "{limit}");
}

#[tokio::test]
async fn a_question_shared_with_the_same_question_in_flight_costs_nothing_extra() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    sim.set_behavior(
        "gpt-4o",
        Behavior {
            // Ample for the other two to join the walk, on a busy machine too.
            latency_ms: 1000,
            ..Behavior::default()
        },
    );
    let dir = temp_dir();
    let file = dir.join("clients.toml");
    std::fs::write(
        &file,
        entry("acme-web", "sk-acme", "model_calls_per_day = 100")
            + &entry("spent", "sk-spent", "model_calls_per_day = 1")
            + &entry("beta-app", "sk-beta", "model_calls_per_day = 100"),
    )
    .unwrap();
    let app = TestApp::spawn(config(&redis, &sim, |c| {
        c.clients.file = Some(file.clone());
    }))
    .await;
    // "spent" uses up its one call.
    let spent = ask_as(&app, Some("sk-spent"), None, "spend it").await;
    assert_eq!(spent.status(), 200);
    assert!(charged(&redis, 1).await);

    let question = "a slow question everyone asks";
    let (a, b, c) = tokio::join!(
        ask_as(&app, Some("sk-acme"), None, question),
        async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            ask_as(&app, Some("sk-beta"), None, question).await
        },
        async {
            tokio::time::sleep(Duration::from_millis(150)).await;
            ask_as(&app, Some("sk-spent"), None, question).await
        },
    );

    for resp in [a, b, c] {
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["source"], "primary", "{body}");
    }
    assert_eq!(sim.calls("gpt-4o"), 2, "one call for the shared question");
    assert!(
        charged(&redis, 2).await,
        "only the walk's leader paid: {}",
        daily_calls(&redis).await
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn the_openai_route_gives_the_openai_shaped_429() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    let app = TestApp::spawn(config(&redis, &sim, |c| {
        c.limits.per_client_rps = 0.1;
        c.limits.per_client_burst = 1;
    }))
    .await;
    let chat = serde_json::json!({"model": "resilient-qa", "messages": [{"role": "user", "content": "如何退货?"}]});
    let send = || async {
        app.client
            .post(app.url("/v1/chat/completions"))
            .json(&chat)
            .send()
            .await
            .unwrap()
    };

    let allowed = send().await;
    let refused = send().await;

    assert_eq!(allowed.status(), 200);
    assert_eq!(header(&allowed, "ratelimit"), "\"rps\";r=0;t=10");
    assert_eq!(refused.status(), 429);
    assert!(!header(&refused, "retry-after").is_empty());
    assert_eq!(header(&refused, "ratelimit-policy"), "\"rps\";q=1;w=10");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
    assert!(body["error"].get("param").is_some(), "{body}");
    assert_eq!(
        app.metric(r#"qa_api_rejected_total{api="openai",code="rate_limited"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn browsers_may_read_the_ratelimit_fields() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    let app = TestApp::spawn(config(&redis, &sim, |c| {
        c.server.cors_allowed_origins = vec!["https://shop.example".into()];
        c.limits.per_client_rps = 1.0;
    }))
    .await;

    let resp = app
        .client
        .post(app.url("/ask"))
        .header("origin", "https://shop.example")
        .json(&serde_json::json!({"question": "cors?"}))
        .send()
        .await
        .unwrap();

    let exposed = header(&resp, "access-control-expose-headers").to_ascii_lowercase();
    for name in ["ratelimit", "ratelimit-policy", "retry-after"] {
        assert!(
            exposed.split(',').any(|h| h.trim() == name),
            "{name} in {exposed}"
        );
    }
}

#[tokio::test]
async fn no_metric_label_names_a_client() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    let dir = temp_dir();
    let file = dir.join("clients.toml");
    std::fs::write(&file, entry("acme-web", "sk-acme-secret", "burst = 1")).unwrap();
    let app = TestApp::spawn(config(&redis, &sim, |c| {
        c.clients.file = Some(file.clone());
        c.server.trusted_proxies = vec!["127.0.0.1".into()];
        c.limits.per_client_rps = 0.1;
        c.limits.per_client_burst = 1;
        c.limits.per_client_model_calls_per_day = 5;
    }))
    .await;
    statuses(&app, Some("sk-acme-secret"), None, "metrics", 2).await;
    statuses(&app, None, Some("198.51.100.77"), "metrics", 2).await;

    let text = app.metrics().await;

    for secret in [
        "acme-web",
        "sk-acme-secret",
        &sha256_hex("sk-acme-secret"),
        "198.51.100.77",
        "127.0.0.1",
    ] {
        assert!(!text.contains(secret), "{secret} in /metrics");
    }
    let checks: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("qa_rate_limit_checks_total{"))
        .collect();
    assert_eq!(checks.len(), 8, "{checks:#?}");
    for line in checks {
        let labels = &line[line.find('{').unwrap() + 1..line.find('}').unwrap()];
        let names: Vec<&str> = labels
            .split(',')
            .map(|l| l.split('=').next().unwrap())
            .collect();
        assert_eq!(names, ["limit", "result", "store"], "{line}");
    }
    assert_eq!(
        app.metric(r#"qa_rate_limit_checks_total{limit="rate",result="limited",store="redis"}"#)
            .await,
        2.0
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
