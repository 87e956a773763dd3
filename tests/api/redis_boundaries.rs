//! Redis as it misbehaves in the field, and what the cache may serve: answers of another
//! configuration, values planted or corrupted at a key, a wrong password, TLS, a Redis
//! that refuses every write, and a Redis that returns just before shutdown.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use deadpool_redis::redis;
use resilient_qa::config::Config;
use resilient_qa::pipeline::cache::now_ms;
use resilient_qa::pipeline::normalize::normalize;
use serde_json::Value;

use crate::helpers::*;

/// A config whose answers come only from the models, the canned answers or Redis (no
/// memory layer), so each lookup reaches Redis.
fn redis_only(redis_url: &str, sim: &resilient_qa::sim::SimServer) -> Config {
    let mut c = test_config(redis_url, Some(sim));
    c.cache.memory_max_entries = 0;
    c
}

fn key_of(config: &Config, question: &str) -> String {
    resilient_qa::pipeline::normalize::cache_key(&config.cache.key_prefix, &normalize(question))
}

async fn set_raw(redis: &Redis, key: &str, value: &str) {
    let mut c = redis.conn().await;
    redis::cmd("SET")
        .arg(key)
        .arg(value)
        .query_async::<()>(&mut c)
        .await
        .unwrap();
}

#[tokio::test]
async fn an_answer_of_another_model_configuration_is_not_fresh() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    let first = TestApp::spawn(redis_only(&redis.url(), &sim)).await;
    assert_eq!(first.source_of("which config wrote me?").await, "primary");
    first.stop().await;

    let mut config = redis_only(&redis.url(), &sim);
    config.primary.prompt = "Answer briefly: {question}".into();
    let second = TestApp::spawn(config).await;
    let (_, body) = second.ask("which config wrote me?").await;

    assert_eq!(body["source"], "primary", "{body}");
}

#[tokio::test]
async fn an_answer_of_another_configuration_still_serves_as_stale() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    let first = TestApp::spawn(redis_only(&redis.url(), &sim)).await;
    assert_eq!(
        first.source_of("old but better than nothing").await,
        "primary"
    );
    first.stop().await;

    sim.set_behavior("gpt-4o", always("500"));
    sim.set_behavior("gpt-3.5-turbo", always("500"));
    let mut config = redis_only(&redis.url(), &sim);
    config.primary.model = "gpt-4o".into();
    config.primary.prompt = "Another prompt: {question}".into();
    let second = TestApp::spawn(config).await;
    let (_, body) = second.ask("old but better than nothing").await;

    assert_eq!(body["source"], "stale", "{body}");
}

/// Plants a value with `answer` and `written_at_ms` at `question`'s key (of this
/// configuration's fingerprint), asks `question`, and returns the body.
async fn ask_over_planted(question: &str, answer: &str, written_at_ms: u64) -> Value {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    let config = redis_only(&redis.url(), &sim);
    let value = serde_json::json!({
        "answer": answer, "model": "gpt-4o",
        "written_at_ms": written_at_ms,
        "config": config.answer_fingerprint(),
    });
    set_raw(&redis, &key_of(&config, question), &value.to_string()).await;
    let app = TestApp::spawn(config).await;
    app.ask(question).await.1
}

#[tokio::test]
async fn a_planted_empty_answer_is_a_miss() {
    let body = ask_over_planted("planted empty", "", now_ms()).await;

    assert_eq!(body["source"], "primary", "{body}");
    assert!(!body["answer"].as_str().unwrap().is_empty());
}

#[tokio::test]
async fn a_value_written_in_the_future_is_a_miss() {
    let ten_years_ms = 10 * 365 * 86_400_000;

    let body = ask_over_planted("time traveller", "from the future", now_ms() + ten_years_ms).await;

    assert_eq!(body["source"], "primary", "{body}");
}

#[tokio::test]
async fn a_value_of_the_wrong_type_at_one_key_never_opens_the_redis_breaker() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    let mut config = redis_only(&redis.url(), &sim);
    config.breaker.consecutive_failures = 5;
    config.breaker.min_calls = 5;
    let list_key = key_of(&config, "a list lives here");
    let app = TestApp::spawn(config).await;
    // A good answer, cached in Redis only.
    assert_eq!(app.source_of("a good question").await, "primary");
    assert!(
        eventually(Duration::from_secs(3), || async {
            redis.keys().await.len() == 1
        })
        .await
    );
    let mut c = redis.conn().await;
    redis::cmd("RPUSH")
        .arg(&list_key)
        .arg("x")
        .query_async::<()>(&mut c)
        .await
        .unwrap();
    sim.set_behavior("gpt-4o", always("500"));
    sim.set_behavior("gpt-3.5-turbo", always("500"));

    for _ in 0..25 {
        app.ask("a list lives here").await;
    }
    let (_, body) = app.ask("a good question").await;

    assert_eq!(body["source"], "cache", "{body}");
    assert_eq!(
        app.metric(r#"qa_circuit_state{dependency="redis"}"#).await,
        0.0
    );
}

/// `/readyz` of a service that logs in with `password` to a Redis requiring
/// `right-password`.
async fn readyz_with_password(password: &str) -> Value {
    let redis = Redis::start_with(&["--requirepass", "right-password"]);
    let sim = healthy_sim().await;
    let url = format!("redis://:{password}@127.0.0.1:{}", redis.port);
    let app = TestApp::spawn(test_config(&url, Some(&sim))).await;
    app.get_json("/readyz").await.1
}

#[tokio::test]
async fn a_wrong_redis_password_is_reported_as_auth_failed() {
    let ready = readyz_with_password("wrong-password").await;

    assert_eq!(ready["checks"]["redis"], "auth_failed", "{ready}");
    assert_eq!(ready["status"], "degraded");
}

#[tokio::test]
async fn the_right_redis_password_is_up() {
    let ready = readyz_with_password("right-password").await;

    assert_eq!(ready["checks"]["redis"], "up", "{ready}");
}

/// A certificate authority and a server certificate for 127.0.0.1 it signed, made with
/// the `openssl` command in a folder of the test's own.
struct Certs {
    dir: PathBuf,
}

impl Certs {
    fn make() -> Certs {
        let dir =
            std::env::temp_dir().join(format!("qa-tls-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).unwrap();
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .output()
                .expect("openssl not found: run scripts/install-deps.sh");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        for name in ["ca", "other-ca"] {
            run(&[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.crt"),
                "-days",
                "2",
                "-subj",
                &format!("/CN={name}"),
            ]);
        }
        run(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        std::fs::write(
            dir.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
        )
        .unwrap();
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ]);
        Certs { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn tls_app(
    certs: &Certs,
    redis: &Redis,
    ca: &Path,
) -> (resilient_qa::sim::SimServer, TestApp) {
    let _ = certs;
    let sim = healthy_sim().await;
    let url = format!("rediss://127.0.0.1:{}", redis.port);
    let mut config = redis_only(&url, &sim);
    config.redis.ca_file = Some(ca.to_path_buf());
    config.redis.timeout_ms = 1000;
    let app = TestApp::spawn(config).await;
    (sim, app)
}

#[tokio::test]
async fn the_cache_works_over_tls_with_the_configured_authority() {
    let certs = Certs::make();
    let redis = Redis::start_tls(&certs.path("server.crt"), &certs.path("server.key"));
    let (_sim, app) = tls_app(&certs, &redis, &certs.path("ca.crt")).await;

    let first = app.source_of("over tls").await;
    let cached = eventually(Duration::from_secs(5), || async {
        app.source_of("over tls").await == "cache"
    })
    .await;

    let (_, ready) = app.get_json("/readyz").await;
    assert_eq!(first, "primary");
    assert!(cached, "the answer never came back from Redis over TLS");
    assert_eq!(ready["checks"]["redis"], "up", "{ready}");
}

#[tokio::test]
async fn a_tls_server_signed_by_another_authority_is_refused_and_reported_down() {
    let certs = Certs::make();
    let redis = Redis::start_tls(&certs.path("server.crt"), &certs.path("server.key"));
    let (_sim, app) = tls_app(&certs, &redis, &certs.path("other-ca.crt")).await;

    let (_, body) = app.ask("over untrusted tls").await;
    let (_, ready) = app.get_json("/readyz").await;

    assert_eq!(
        body["source"], "primary",
        "answers go on without Redis: {body}"
    );
    assert_eq!(ready["checks"]["redis"], "down", "{ready}");
}

#[tokio::test]
async fn writes_refused_by_a_full_redis_are_counted_once_per_answer_and_shown_in_readyz() {
    let redis = Redis::start_with(&["--maxmemory", "1", "--maxmemory-policy", "noeviction"]);
    let sim = healthy_sim().await;
    let app = TestApp::spawn(redis_only(&redis.url(), &sim)).await;

    for i in 0..5 {
        app.ask(&format!("nowhere to keep answer {i}")).await;
    }
    let counted = eventually(Duration::from_secs(3), || async {
        app.metric(r#"qa_cache_writes_total{result="error"}"#).await == 5.0
    })
    .await;
    // Backlog retries come every 500 ms: the count must not grow with them.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    assert!(counted, "{}", app.metrics().await);
    assert_eq!(
        app.metric(r#"qa_cache_writes_total{result="error"}"#).await,
        5.0
    );
    assert_eq!(app.metric("qa_cache_write_backlog").await, 5.0);
    let (_, ready) = app.get_json("/readyz").await;
    assert_eq!(ready["checks"]["redis"], "up", "{ready}");
    assert_eq!(ready["checks"]["redis_writes"], "failing", "{ready}");
}

#[tokio::test]
async fn answers_queued_while_redis_was_away_are_flushed_at_shutdown_once_it_is_back() {
    let mut redis = Redis::start();
    let sim = healthy_sim().await;
    let mut config = redis_only(&redis.url(), &sim);
    // One failure opens the Redis breaker for a minute: only the flush can write.
    config.breaker.consecutive_failures = 1;
    config.breaker.open_ms = 60_000;
    let app = TestApp::spawn(config).await;
    redis.kill();
    for i in 0..3 {
        assert_eq!(
            app.source_of(&format!("kept for later {i}")).await,
            "primary"
        );
    }
    redis.restart();

    app.stop().await;

    assert_eq!(redis.keys().await.len(), 3);
}
