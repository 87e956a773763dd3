//! `--demo`, the real binary: its banner, its simulator's control URL, and its cache
//! kept apart from real answers.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;

const BIN: &str = env!("CARGO_BIN_EXE_resilient-qa");

fn demo_command(port: u16, sim_port: u16, redis_url: &str) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["--demo", "--demo-sim-port", &sim_port.to_string()])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("REDIS_URL", redis_url)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// Two distinct free ports.
fn two_free_ports() -> (u16, u16) {
    let first = free_port();
    loop {
        let second = free_port();
        if second != first {
            return (first, second);
        }
    }
}

/// The demo binary, killed when dropped; its stderr is collected as it comes.
struct Demo {
    child: Child,
    stderr: Arc<Mutex<String>>,
}

impl Demo {
    fn spawn(mut cmd: Command) -> Demo {
        let mut child = cmd.spawn().unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().unwrap();
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut text = sink.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        });
        Demo { child, stderr }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn ask(client: &reqwest::Client, base: &str, question: &str) -> Value {
    let response = client
        .post(format!("{base}/ask"))
        .json(&json!({ "question": question }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

async fn put(client: &reqwest::Client, url: &str, behavior: Value) {
    let response = client.put(url).json(&behavior).send().await.unwrap();
    assert_eq!(response.status(), 200, "PUT {url}");
}

#[tokio::test]
async fn demo_banner_names_the_urls_and_its_answers_are_cached_under_the_demo_prefix() {
    let redis = Redis::start();
    let (port, sim_port) = two_free_ports();
    let demo = Demo::spawn(demo_command(port, sim_port, &redis.url()));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let control = format!("http://127.0.0.1:{sim_port}/control");
    let ready = eventually(Duration::from_secs(20), || async {
        client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(ready, "demo did not come up; stderr:\n{}", demo.stderr());

    // The banner's control URL works: make the primary reliable, then ask.
    put(&client, &format!("{control}/models/gpt-4o"), json!({})).await;
    let answer = ask(&client, &base, "Where is my order?").await;

    assert_eq!(answer["source"], "primary", "{answer}");
    // It reads like an answer, in the question's language, marked as simulated; it does
    // not quote the tiers' prompt back.
    let text = answer["answer"].as_str().unwrap();
    assert!(text.starts_with("[gpt-4o · simulated]"), "{text}");
    assert!(text.contains("Where is my order?"), "{text}");
    assert!(!text.contains("客服助手"), "{text}");
    let cached = eventually(Duration::from_secs(5), || async {
        !redis.keys().await.is_empty()
    })
    .await;
    assert!(cached, "the demo's answer never reached Redis");
    let keys = redis.keys().await;
    assert!(
        keys.iter().all(|k| k.starts_with("qa:demo:v1:")),
        "keys outside the demo prefix: {keys:?}"
    );
    let banner = demo.stderr();
    for needle in [
        "DEMO MODE".to_owned(),
        "SIMULATED".to_owned(),
        "qa:demo:v1:".to_owned(),
        format!("{base}/ask"),
        format!("chat page:  {base}/"),
        control.clone(),
    ] {
        assert!(
            banner.contains(&needle),
            "banner lacks {needle:?}:\n{banner}"
        );
    }

    // And a fault injected there shows in the next answer.
    put(
        &client,
        &format!("{control}/models/gpt-4o"),
        json!({"mix": {"503": 1.0}}),
    )
    .await;
    put(
        &client,
        &format!("{control}/models/gpt-3.5-turbo"),
        json!({}),
    )
    .await;
    let answer = ask(&client, &base, "Do you ship to Canada?").await;
    assert_eq!(answer["source"], "secondary", "{answer}");
}

#[tokio::test]
async fn demo_refuses_a_taken_simulator_port_with_exit_2_naming_the_flag() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let sim_port = taken.local_addr().unwrap().port();
    let mut cmd = demo_command(free_port(), sim_port, "redis://127.0.0.1:1");
    cmd.stderr(Stdio::piped());

    let output = tokio::time::timeout(Duration::from_secs(20), async {
        tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap()
    })
    .await
    .expect("the demo did not exit");

    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--demo-sim-port"), "{stderr}");
    assert!(stderr.contains(&sim_port.to_string()), "{stderr}");
}
