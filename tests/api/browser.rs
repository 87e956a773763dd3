//! The chat page (`GET /`) and the one-tag widget (`GET /widget.js`) in a real browser:
//! Debian's Chromium driven by playwright-core, through tests/browser/chat.mjs (installed
//! by scripts/install-browser.sh). Each test starts a private Redis, the simulator in
//! process with the models' behaviour the scenario needs, and the REAL binary with that
//! configuration in its environment, then runs one scenario of chat.mjs and asserts it
//! exited 0 (its JSON line, and the service's log, are printed when it did not).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use resilient_qa::config::Config;
use resilient_qa::sim::{AnswerStyle, Behavior, SimConfig, SimServer};
use serde_json::Value;
use tokio::process::{Child, Command};

use crate::helpers::*;

const BIN: &str = env!("CARGO_BIN_EXE_resilient-qa");
const CHROMIUM: &str = "/usr/bin/chromium";
/// Longest run of one chat.mjs scenario (its own limit is 60 s).
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(75);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Panics with what to run when Chromium or the node modules are missing.
fn browser_installed() {
    let modules = root().join("tests/browser/node_modules");
    for (path, what) in [
        (PathBuf::from(CHROMIUM), "Debian's chromium"),
        (
            modules.join("playwright-core/package.json"),
            "playwright-core",
        ),
        (modules.join("axe-core/axe.min.js"), "axe-core"),
    ] {
        assert!(
            path.exists(),
            "{what} is missing ({}): run scripts/install-browser.sh",
            path.display()
        );
    }
}

/// The target directory this test binary was built into (target/debug/deps/api-… → target).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| root().join("target"))
}

/// Text pieces paced like a person reads, slow enough for the page to show each.
fn paced(behavior: Behavior) -> Behavior {
    Behavior {
        stream_piece_chars: Some(4),
        stream_interval_ms: Some(40),
        ..behavior
    }
}

/// The simulator's whole answer from the primary (`echo` answers) to a Chinese question.
fn primary_answer(question: &str) -> String {
    format!(
        "[gpt-4o] simulated answer to: {}",
        Config::default()
            .primary
            .prompt
            .replace("{question}", question)
    )
}

/// The real binary on a free port, over its own Redis and the simulator; killed on drop.
struct Service {
    base: String,
    sim: SimServer,
    log: PathBuf,
    child: Child,
    _redis: Redis,
}

impl Service {
    /// Starts the binary with `env` on top of the test defaults and waits for /healthz.
    async fn start(sim: SimServer, env: &[(&str, &str)]) -> Service {
        browser_installed();
        let redis = Redis::start();
        let port = free_port();
        let base = format!("http://127.0.0.1:{port}");
        let logs = target_dir().join("browser-logs");
        std::fs::create_dir_all(&logs).unwrap();
        let log = logs.join(format!("service-{port}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env("OPENAI_BASE_URL", sim.base_url())
            .env("REDIS_URL", redis.url())
            .env("LOG_FORMAT", "json")
            // Retries and fallbacks in milliseconds, not seconds.
            .env("QA__PRIMARY__INITIAL_BACKOFF_MS", "5")
            .env("QA__PRIMARY__MAX_BACKOFF_MS", "20")
            .env("QA__SECONDARY__INITIAL_BACKOFF_MS", "5")
            .env("QA__SECONDARY__MAX_BACKOFF_MS", "20")
            .env("QA__SERVER__SHUTDOWN_GRACE_SECS", "1");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .current_dir(root())
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut service = Service {
            base,
            sim,
            log,
            child,
            _redis: redis,
        };
        service.wait_healthy().await;
        service
    }

    async fn wait_healthy(&mut self) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("the service exited ({status}):\n{}", self.log_tail());
            }
            let up = client
                .get(format!("{}/healthz", self.base))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            if up {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "the service did not answer /healthz at {}:\n{}",
            self.base,
            self.log_tail()
        );
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Runs `chat.mjs SCENARIO BASE_URL ARGS…`; asserts it exited 0 and returns its JSON line.
    async fn scenario(&self, scenario: &str, args: &[&str]) -> Value {
        let script = root().join("tests/browser/chat.mjs");
        let mut cmd = sandboxed("node", &script, &root().join("tests/browser"));
        cmd.arg(scenario)
            .arg(&self.base)
            .args(args)
            .stdin(Stdio::null());
        let output = tokio::time::timeout(SCENARIO_TIMEOUT, cmd.output())
            .await
            .unwrap_or_else(|_| {
                panic!("chat.mjs {scenario}: no result within {SCENARIO_TIMEOUT:?}")
            })
            .unwrap_or_else(|e| panic!("chat.mjs {scenario}: node could not start ({e}): node 20 must be on PATH, then run scripts/install-browser.sh"));
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let line = stdout.lines().rev().find(|l| !l.trim().is_empty());
        let result: Value = line
            .and_then(|l| serde_json::from_str(l).ok())
            .unwrap_or(Value::Null);
        assert!(
            output.status.success() && result["ok"] == true,
            "chat.mjs {scenario} failed ({}): {}\n\nstdout: {stdout}\nstderr: {stderr}\n\
             service log ({}), last lines:\n{}",
            output.status,
            result["error"].as_str().unwrap_or("(no JSON result)"),
            self.log.display(),
            self.log_tail()
        );
        result
    }
}

impl Drop for Service {
    /// The log stays behind only for a test that failed (its path is in the failure).
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

async fn sim_with(primary: Behavior, secondary: Behavior) -> SimServer {
    let sim = healthy_sim().await;
    sim.set_behavior("gpt-4o", primary);
    sim.set_behavior("gpt-3.5-turbo", secondary);
    sim
}

/// Both model tiers answer 503, once each: the answer comes from the tiers after them.
async fn models_down(env: &mut Vec<(&str, &str)>) -> SimServer {
    env.extend([
        ("QA__PRIMARY__MAX_ATTEMPTS", "1"),
        ("QA__SECONDARY__MAX_ATTEMPTS", "1"),
    ]);
    sim_with(always("503"), always("503")).await
}

#[tokio::test]
async fn the_page_streams_an_answer_piece_by_piece_and_ends_with_the_done_text() {
    let sim = sim_with(
        paced(Behavior {
            latency_ms: 400, // time to see the typing indicator before the first piece
            ..Behavior::default()
        }),
        Behavior::default(),
    )
    .await;
    let service = Service::start(sim, &[]).await;
    let question = "请问订单多久能送到?";

    let result = service.scenario("stream", &["--question", question]).await;

    assert_eq!(result["source"], "primary", "{result}");
    assert_eq!(result["answer"], primary_answer(question), "{result}");
    assert!(
        result["intermediateTexts"].as_u64().unwrap() >= 3,
        "{result}"
    );
}

#[tokio::test]
async fn a_stream_cut_mid_way_and_continued_shows_the_whole_answer_once() {
    let sim = sim_with(
        paced(Behavior {
            stream_cut_after: Some(4),
            ..script(&["cut"])
        }),
        Behavior::default(),
    )
    .await;
    let service = Service::start(sim, &[]).await;
    let question = "退货要多久才能退款?";
    let expected = primary_answer(question);

    let result = service
        .scenario("whole", &["--question", question, "--expected", &expected])
        .await;

    assert_eq!(result["continued"], true, "the stream was cut: {result}");
    assert_eq!(result["resets"], 0, "{result}");
    assert_eq!(service.sim.snapshot().models["gpt-4o"].calls, 2);
}

#[tokio::test]
async fn a_stream_reset_by_the_service_shows_only_the_answer_after_the_reset() {
    // Both models cut their streams: the text already shown is thrown away and the canned
    // answer follows.
    let cut = || {
        paced(Behavior {
            stream_cut_after: Some(3),
            ..always("cut")
        })
    };
    let sim = sim_with(cut(), cut()).await;
    let service = Service::start(
        sim,
        &[
            ("QA__PRIMARY__MAX_ATTEMPTS", "1"),
            ("QA__SECONDARY__MAX_ATTEMPTS", "1"),
        ],
    )
    .await;

    let result = service
        .scenario(
            "whole",
            &[
                "--question",
                "退货流程",
                "--expected",
                "请在订单页面点击退货按钮,填写退货原因即可。",
            ],
        )
        .await;

    assert_eq!(result["source"], "canned", "{result}");
    assert!(result["resets"].as_u64().unwrap() >= 1, "{result}");
}

#[tokio::test]
async fn a_canned_answer_shows_its_related_question_and_a_calm_degraded_mark() {
    let mut env = Vec::new();
    let sim = models_down(&mut env).await;
    let service = Service::start(sim, &env).await;

    let result = service
        .scenario(
            "canned",
            &[
                "--question",
                "退货流程",
                "--related",
                "如何退货?",
                "--expected",
                "请在订单页面点击退货按钮,填写退货原因即可。",
            ],
        )
        .await;

    assert!(
        result["related"].as_str().unwrap().contains("如何退货?"),
        "{result}"
    );
}

#[tokio::test]
async fn an_overloaded_service_shows_a_countdown_then_the_answer() {
    // One /ask at a time; chat.mjs holds that slot with a question whose primary call
    // hangs until its 3 s timeout (the secondary then answers), and asks meanwhile: the
    // page gets 503 (Retry-After: 1) two or three times, then the answer.
    let sim = sim_with(script(&["hang"]), Behavior::default()).await;
    let service = Service::start(
        sim,
        &[
            ("QA__LIMITS__MAX_CONCURRENT_REQUESTS", "1"),
            ("QA__PRIMARY__ATTEMPT_TIMEOUT_MS", "3000"),
            ("QA__PRIMARY__MAX_ATTEMPTS", "1"),
        ],
    )
    .await;

    let result = service
        .scenario(
            "overloaded",
            &[
                "--hold",
                "这个问题占着唯一的名额",
                "--question",
                "现在人多吗?",
            ],
        )
        .await;

    assert!(
        result["countdown"]
            .as_str()
            .unwrap()
            .contains(char::is_numeric),
        "{result}"
    );
    assert_eq!(result["hold"], 200, "{result}");
}

/// The service with the widget's host page (127.0.0.1:`host_port`, served by chat.mjs)
/// allowed or not by `CORS_ALLOWED_ORIGINS`.
async fn widget_service(host_port: u16, allowed: bool) -> Service {
    let sim = sim_with(paced(Behavior::default()), Behavior::default()).await;
    let origins = if allowed {
        format!("https://shop.example.com,http://127.0.0.1:{host_port}")
    } else {
        // Another port on the same host is another origin.
        format!("https://shop.example.com,http://127.0.0.1:{}", free_port())
    };
    Service::start(
        sim,
        &[
            ("CORS_ALLOWED_ORIGINS", &origins),
            ("QA__PRIMARY__MAX_ATTEMPTS", "1"),
        ],
    )
    .await
}

#[tokio::test]
async fn the_widget_opens_from_its_button_on_another_site_and_streams_an_answer() {
    let host_port = free_port();
    let service = widget_service(host_port, true).await;

    let result = service
        .scenario("widget", &["--host-port", &host_port.to_string()])
        .await;

    assert_eq!(
        result["hostOrigin"],
        format!("http://127.0.0.1:{host_port}")
    );
    assert_eq!(result["source"], "primary", "{result}");
}

#[tokio::test]
async fn the_widget_on_a_site_whose_origin_is_not_allowed_says_unreachable_without_hanging() {
    let host_port = free_port();
    let service = widget_service(host_port, false).await;

    let result = service
        .scenario("widget-refused", &["--host-port", &host_port.to_string()])
        .await;

    assert!(
        result["unreachableAfterMs"].as_u64().unwrap() <= 15_000,
        "{result}"
    );
    assert_eq!(
        service.sim.snapshot().models["gpt-4o"].calls,
        0,
        "a refused origin's question never reaches the models: {result}"
    );
}

#[tokio::test]
async fn an_english_browser_gets_the_english_page_and_the_english_default_reply() {
    let mut env = Vec::new();
    let sim = models_down(&mut env).await;
    let service = Service::start(sim, &env).await;
    let reply = Config::default().default_reply["en"].clone();

    let result = service
        .scenario(
            "english",
            &[
                "--question",
                "Can your robots paint my garage purple on Sunday?",
                "--expected",
                &reply,
            ],
        )
        .await;

    assert_eq!(result["source"], "default", "{result}");
}

#[tokio::test]
async fn the_page_has_no_serious_or_critical_accessibility_violation() {
    let sim = sim_with(paced(Behavior::default()), Behavior::default()).await;
    let service = Service::start(sim, &[]).await;

    let result = service.scenario("axe", &[]).await;

    // Printed for the record (`cargo test -- --nocapture`): minor and moderate ones too.
    println!("axe violations: {}", result["axe"]);
}

#[tokio::test]
async fn screenshots_of_the_page_on_desktop_and_phone_in_light_and_dark() {
    // As the demo shows it: answers that read like answers (the question alone as the
    // prompt, the simulator's demo answers), paced.
    let sim = start_sim(SimConfig {
        answers: AnswerStyle::Demo,
        ..SimConfig::default()
    })
    .await;
    sim.set_behavior("gpt-4o", paced(Behavior::default()));
    let service = Service::start(
        sim,
        &[
            ("QA__PRIMARY__PROMPT", "{question}"),
            ("QA__PRIMARY__LANGUAGE_INSTRUCTION", ""),
        ],
    )
    .await;
    let out = target_dir().join("screenshots");

    let result = service
        .scenario(
            "screenshots",
            &[
                "--out",
                out.to_str().unwrap(),
                "--question",
                "我的订单什么时候发货?",
            ],
        )
        .await;

    // The README's pictures (docs/screenshots) are refreshed only when asked for, so that
    // a test run never changes tracked files: QA_UPDATE_SCREENSHOTS=1.
    let update = std::env::var_os("QA_UPDATE_SCREENSHOTS").is_some_and(|v| v == "1");
    let docs = root().join("docs/screenshots");
    for name in [
        "chat-desktop-light.png",
        "chat-desktop-dark.png",
        "chat-phone-light.png",
        "chat-phone-dark.png",
    ] {
        let png = std::fs::read(out.join(name)).unwrap_or_else(|e| panic!("{name}: {e}: {result}"));
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "{name} is not a PNG");
        if update {
            std::fs::create_dir_all(&docs).unwrap();
            std::fs::write(docs.join(name), png).unwrap();
        }
    }
}
