//! The real binary: start-up refusal of a bad configuration, and graceful shutdown on
//! real signals.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::helpers::*;

const BIN: &str = env!("CARGO_BIN_EXE_resilient-qa");

fn service(port: u16, redis: &Redis, sim_url: &str) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("REDIS_URL", redis.url())
        .env("OPENAI_BASE_URL", sim_url)
        .env("QA__SERVER__SHUTDOWN_GRACE_SECS", "10")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

async fn wait_ready(client: &reqwest::Client, base: &str) {
    let ok = eventually(Duration::from_secs(20), || async {
        client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(ok, "service did not come up at {base}");
}

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// The real binary, ready, with a primary that takes 1.5 s: time to signal it mid-request.
struct SlowService {
    redis: Redis,
    _sim: resilient_qa::sim::SimServer,
    child: std::process::Child,
    base: String,
}

async fn slow_service(client: &reqwest::Client) -> SlowService {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    sim.set_behavior(
        "gpt-4o",
        resilient_qa::sim::Behavior {
            latency_ms: 1500,
            ..Default::default()
        },
    );
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let child = service(port, &redis, &sim.base_url()).spawn().unwrap();
    wait_ready(client, &base).await;
    SlowService {
        redis,
        _sim: sim,
        child,
        base,
    }
}

async fn in_flight_request_completes_on(sig: &str) {
    let client = reqwest::Client::new();
    let SlowService {
        redis,
        _sim,
        mut child,
        base,
    } = slow_service(&client).await;

    let in_flight = {
        let client = client.clone();
        let url = format!("{base}/ask");
        tokio::spawn(async move {
            let resp = client
                .post(url)
                .json(&serde_json::json!({"question": "still answered at shutdown?"}))
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<serde_json::Value>().await.unwrap())
        })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    signal(child.id(), sig);
    let (status, body) = in_flight.await.unwrap();
    let exit = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();

    assert_eq!(status, 200);
    assert_eq!(body["source"], "primary");
    assert_eq!(exit.code(), Some(0), "exit status {exit:?}");
    assert_eq!(
        redis.keys().await.len(),
        1,
        "the answer's cache write was flushed before exit"
    );
}

#[tokio::test]
async fn request_in_flight_at_sigterm_completes_and_exit_code_is_zero() {
    in_flight_request_completes_on("TERM").await;
}

#[tokio::test]
async fn request_in_flight_at_sigint_completes_and_exit_code_is_zero() {
    in_flight_request_completes_on("INT").await;
}

#[tokio::test]
async fn new_connections_are_refused_once_draining() {
    let client = reqwest::Client::new();
    let SlowService {
        _sim,
        mut child,
        base,
        redis: _redis,
    } = slow_service(&client).await;
    let in_flight = tokio::spawn(
        client
            .post(format!("{base}/ask"))
            .json(&serde_json::json!({"question": "slow"}))
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    signal(child.id(), "TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fresh = reqwest::Client::new()
        .get(format!("{base}/readyz"))
        .send()
        .await;

    assert!(
        fresh.is_err(),
        "a new connection was accepted while draining"
    );
    assert_eq!(in_flight.await.unwrap().unwrap().status(), 200);
    let exit = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(exit.code(), Some(0));
}

#[test]
fn invalid_configuration_stops_start_up_naming_the_key() {
    let out = Command::new(BIN)
        .env("QA__PRIMARY__MAX_ATTEMPTS", "0")
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();

    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("primary.max_attempts"), "{stderr}");
}

#[test]
fn unknown_config_file_key_stops_start_up_naming_it() {
    let dir = std::env::temp_dir().join(format!("qa-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(&file, "[cache]\nttl_secondz = 5\n").unwrap();

    let out = Command::new(BIN)
        .arg("--config")
        .arg(&file)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();

    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ttl_secondz"), "{stderr}");
}

#[test]
fn api_key_never_appears_in_logs() {
    let dead_redis = format!("redis://127.0.0.1:{}", free_port());
    let mut cmd = Command::new(BIN);
    cmd.env("OPENAI_API_KEY", "sk-very-secret-value")
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("REDIS_URL", dead_redis)
        .env("RUST_LOG", "debug")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = run_briefly(cmd);

    let logs = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(logs.contains("serving"), "{logs}");
    assert!(!logs.contains("sk-very-secret-value"));
}

/// Runs the binary for 1.5 s, stops it with SIGTERM and returns what it wrote.
fn run_briefly(mut cmd: Command) -> std::process::Output {
    let child = cmd.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    signal(child.id(), "TERM");
    child.wait_with_output().unwrap()
}

#[tokio::test]
async fn readyz_answers_503_draining_on_an_open_connection_during_shutdown() {
    let prober = reqwest::Client::new();
    // Leaves a keep-alive connection in prober's pool.
    let SlowService {
        _sim,
        mut child,
        base,
        redis: _redis,
    } = slow_service(&prober).await;
    let asker = reqwest::Client::new();
    let in_flight = tokio::spawn(
        asker
            .post(format!("{base}/ask"))
            .json(&serde_json::json!({"question": "slow"}))
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    signal(child.id(), "TERM");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let resp = prober.get(format!("{base}/readyz")).send().await.unwrap();
    let status = resp.status().as_u16();
    assert_eq!(
        resp.headers()["connection"],
        "close",
        "clients are asked to move off"
    );
    let body: serde_json::Value = resp.json().await.unwrap();

    assert_eq!(status, 503);
    assert_eq!(body["status"], "draining");
    assert_eq!(in_flight.await.unwrap().unwrap().status(), 200);
    let exit = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(exit.code(), Some(0));
}

/// Runs the binary with `extra` env, lets `drive` talk to it, stops it with SIGTERM and
/// returns its stdout lines.
async fn logs_of<F, Fut>(
    extra: &[(&str, &str)],
    sim: &resilient_qa::sim::SimServer,
    drive: F,
) -> Vec<String>
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let redis = Redis::start();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let log = std::env::temp_dir().join(format!("qa-log-{}-{port}.txt", std::process::id()));
    let file = std::fs::File::create(&log).unwrap();
    let mut cmd = service(port, &redis, &sim.base_url());
    cmd.stdout(file);
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    wait_ready(&reqwest::Client::new(), &base).await;
    drive(base).await;
    signal(child.id(), "TERM");
    tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    text.lines().map(str::to_string).collect()
}

async fn ask_with_id(base: &str, question: &str, id: &str) {
    let resp = reqwest::Client::new()
        .post(format!("{base}/ask"))
        .header("x-request-id", id)
        .json(&serde_json::json!({ "question": question }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn every_model_call_is_logged_as_json_with_request_id_tier_attempt_and_outcome() {
    let sim = healthy_sim().await;
    sim.set_behavior("gpt-4o", script(&["503"]));

    let lines = logs_of(
        &[
            ("QA__PRIMARY__INITIAL_BACKOFF_MS", "1"),
            ("QA__PRIMARY__MAX_BACKOFF_MS", "2"),
        ],
        &sim,
        |base| async move {
            ask_with_id(&base, "log me", "trace-42").await;
        },
    )
    .await;

    let events: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    let calls: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["tier"] == "primary" && e["attempt"].is_u64())
        .collect();
    assert_eq!(calls.len(), 2, "{lines:#?}");
    assert_eq!(calls[0]["attempt"], 1);
    assert_eq!(calls[0]["outcome"], "server_error");
    assert_eq!(calls[1]["attempt"], 2);
    assert_eq!(calls[1]["outcome"], "success");
    for c in calls {
        assert_eq!(c["span"]["request_id"], "trace-42", "{c}");
    }
}

#[tokio::test]
async fn pretty_log_format_is_for_people() {
    let sim = healthy_sim().await;

    let lines = logs_of(&[("LOG_FORMAT", "pretty")], &sim, |base| async move {
        ask_with_id(&base, "pretty", "trace-7").await;
    })
    .await;

    assert!(lines.iter().any(|l| l.contains("model call")), "{lines:#?}");
    assert!(
        lines.iter().all(|l| !l.trim_start().starts_with('{')),
        "{lines:#?}"
    );
}

#[tokio::test]
async fn error_alert_logs_once_when_it_fires_and_once_when_it_resolves() {
    let sim = healthy_sim().await;
    sim.set_behavior("gpt-4o", always("500"));
    sim.set_behavior("gpt-3.5-turbo", always("500"));
    let sim_ref = &sim;

    let lines = logs_of(
        &[
            ("QA__METRICS__WINDOW_SECS", "2"),
            ("QA__PRIMARY__INITIAL_BACKOFF_MS", "1"),
            ("QA__PRIMARY__MAX_BACKOFF_MS", "2"),
        ],
        &sim,
        |base| async move {
            for i in 0..3 {
                ask_with_id(&base, &format!("unknowable {i}"), "e").await;
            }
            sim_ref.set_behavior("gpt-4o", resilient_qa::sim::Behavior::default());
            tokio::time::sleep(Duration::from_millis(2500)).await;
            for i in 0..3 {
                ask_with_id(&base, &format!("fine {i}"), "ok").await;
            }
        },
    )
    .await;

    let count = |needle: &str| lines.iter().filter(|l| l.contains(needle)).count();
    assert_eq!(count("alert firing"), 1, "{lines:#?}");
    assert_eq!(count("alert resolved"), 1, "{lines:#?}");
    let firing = lines.iter().find(|l| l.contains("alert firing")).unwrap();
    assert!(firing.contains("\"level\":\"ERROR\""), "{firing}");
}

#[test]
fn numbers_too_large_to_use_stop_start_up_naming_the_key_with_exit_2() {
    for (var, value, key) in [
        ("QA__CACHE__TTL_SECS", "40000000000", "cache.ttl_secs"),
        (
            "QA__LIMITS__MAX_CONCURRENT_REQUESTS",
            "9223372036854775807",
            "limits.max_concurrent_requests",
        ),
    ] {
        let out = Command::new(BIN)
            .env(var, value)
            .env("LISTEN_ADDR", "127.0.0.1:0")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();

        assert_eq!(out.status.code(), Some(2), "{var}={value}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(key), "{stderr}");
    }
}

#[test]
fn started_outside_the_repository_a_missing_canned_file_is_a_config_error_naming_it() {
    let dir = std::env::temp_dir().join(format!("qa-elsewhere-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    let out = Command::new(BIN)
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("REDIS_URL", format!("redis://127.0.0.1:{}", free_port()))
        .current_dir(&dir)
        .output()
        .unwrap();

    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("canned.file"), "{stderr}");
    assert!(stderr.contains("canned_answers.toml"), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("no configuration file"), "{stdout}");
}

#[test]
fn the_config_file_is_found_from_any_folder_with_its_relative_paths() {
    let dir = std::env::temp_dir().join(format!("qa-anywhere-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/config/default.toml");
    let dead_redis = format!("redis://127.0.0.1:{}", free_port());
    let mut cmd = Command::new(BIN);
    cmd.args(["--config", config])
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("REDIS_URL", dead_redis)
        .current_dir(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = run_briefly(cmd);

    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("canned answers loaded"), "{stdout}");
}

#[tokio::test]
async fn credentials_in_a_model_url_never_reach_the_logs() {
    let sim = healthy_sim().await;
    let with_password = sim
        .base_url()
        .replacen("http://", "http://user:model-url-secret@", 1);

    let lines = logs_of(
        &[
            ("OPENAI_BASE_URL", with_password.as_str()),
            ("QA__SECONDARY__BASE_URL", with_password.as_str()),
            ("RUST_LOG", "debug"),
        ],
        &sim,
        |base| async move {
            ask_with_id(&base, "secret?", "id-1").await;
        },
    )
    .await;

    let logs = lines.join("\n");
    assert!(logs.contains("model tier configured"), "{logs}");
    assert!(!logs.contains("model-url-secret"), "{logs}");
}

#[tokio::test]
async fn an_invalid_log_filter_is_reported_at_start() {
    let sim = healthy_sim().await;

    let lines = logs_of(&[("RUST_LOG", "info,=[bad")], &sim, |_| async {}).await;

    assert!(lines.iter().any(|l| l.contains("log filter")), "{lines:#?}");
}

#[tokio::test]
async fn pretty_logs_into_a_pipe_carry_no_colour_codes() {
    let sim = healthy_sim().await;

    let lines = logs_of(&[("LOG_FORMAT", "pretty")], &sim, |_| async {}).await;

    assert!(lines.iter().any(|l| l.contains("serving")), "{lines:#?}");
    assert!(!lines.iter().any(|l| l.contains('\u{1b}')), "{lines:#?}");
}

#[tokio::test]
async fn a_short_admin_token_is_warned_about_at_start() {
    let sim = healthy_sim().await;

    let lines = logs_of(&[("ADMIN_TOKEN", "x")], &sim, |_| async {}).await;

    assert!(
        lines.iter().any(|l| l.contains("ADMIN_TOKEN is shorter")),
        "{lines:#?}"
    );
}

#[tokio::test]
async fn answered_log_lines_carry_the_request_id() {
    let sim = healthy_sim().await;

    let lines = logs_of(&[], &sim, |base| async move {
        ask_with_id(&base, "who asked?", "answered-id-7").await;
    })
    .await;

    let answered: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("\"answered\""))
        .collect();
    assert!(!answered.is_empty(), "{lines:#?}");
    assert!(
        answered.iter().all(|l| l.contains("answered-id-7")),
        "{answered:#?}"
    );
}
