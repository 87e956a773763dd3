//! Behaviour of the fault-injecting upstream simulator, over real HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use resilient_qa::sim::cli::{CliCommand, parse_args};
use resilient_qa::sim::{Behavior, ControlSnapshot, Outcome, SimConfig, SimServer, parse_mix};
use serde_json::{Value, json};
use tokio::net::TcpListener;

async fn start(config: SimConfig) -> SimServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    SimServer::start(listener, config).await.unwrap()
}

fn with_model(model: &str, behavior: Behavior) -> SimConfig {
    SimConfig {
        models: BTreeMap::from([(model.to_owned(), behavior)]),
        ..SimConfig::default()
    }
}

fn root(sim: &SimServer) -> String {
    format!("http://{}", sim.addr())
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

async fn chat(
    client: &reqwest::Client,
    sim: &SimServer,
    model: &str,
    question: &str,
) -> reqwest::Result<reqwest::Response> {
    client
        .post(format!("{}/chat/completions", sim.base_url()))
        .bearer_auth("sk-test")
        .json(&json!({
            "model": model,
            "messages": [
                {"role": "system", "content": "You are helpful."},
                {"role": "user", "content": question},
            ],
            "temperature": 0.2,
            "some_future_field": {"ignored": true},
        }))
        .send()
        .await
}

async fn statuses(sim: &SimServer, model: &str, n: usize) -> Vec<u16> {
    let client = client();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let response = chat(&client, sim, model, &format!("q{i}")).await.unwrap();
        out.push(response.status().as_u16());
    }
    out
}

async fn content_of(response: reqwest::Response) -> Value {
    let body: Value = response.json().await.unwrap();
    body["choices"][0]["message"]["content"].clone()
}

#[tokio::test]
async fn ok_answer_names_the_model_and_echoes_the_question() {
    let sim = start(SimConfig::default()).await;
    assert_eq!(sim.base_url(), format!("http://{}/v1", sim.addr()));
    let response = chat(&client(), &sim, "gpt-4o", "where is my order?")
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "gpt-4o");
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-sim-"));
    assert!(body["created"].as_u64().unwrap() > 0);
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "[gpt-4o] simulated answer to: where is my order?"
    );
    let usage = &body["usage"];
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    );
    assert_eq!(sim.calls("gpt-4o"), 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn script_503_503_ok_gives_exactly_those_statuses_in_order() {
    let script = vec![Outcome::Status(503), Outcome::Status(503), Outcome::Ok];
    let sim = start(with_model("gpt-4o", Behavior::scripted(script))).await;
    assert_eq!(statuses(&sim, "gpt-4o", 3).await, [503, 503, 200]);
    let response = chat(&client(), &sim, "gpt-4o", "again").await.unwrap();
    assert_eq!(
        response.status(),
        200,
        "after the script, the (empty) mix means ok"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn error_status_has_openai_style_error_body() {
    let sim = start(with_model("gpt-4o", Behavior::always(Outcome::Status(500)))).await;
    let response = chat(&client(), &sim, "gpt-4o", "hi").await.unwrap();
    assert_eq!(response.status(), 500);
    assert!(response.headers().get("retry-after").is_none());
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["message"], "simulated 500");
    assert_eq!(body["error"]["type"], "server_error");
    assert!(body["error"]["code"].is_null());
    sim.shutdown().await;
}

#[tokio::test]
async fn status_429_carries_retry_after_when_configured() {
    let behavior = Behavior {
        retry_after_secs: Some(7),
        script: vec![
            Outcome::Status(429),
            Outcome::Status(503),
            Outcome::Status(500),
        ],
        ..Behavior::default()
    };
    let sim = start(with_model("gpt-4o", behavior)).await;
    let client = client();
    let first = chat(&client, &sim, "gpt-4o", "a").await.unwrap();
    assert_eq!(first.status(), 429);
    assert_eq!(first.headers()["retry-after"], "7");
    let body: Value = first.json().await.unwrap();
    assert_eq!(body["error"]["type"], "rate_limit_error");
    let second = chat(&client, &sim, "gpt-4o", "b").await.unwrap();
    assert_eq!(second.status(), 503);
    assert_eq!(second.headers()["retry-after"], "7");
    let third = chat(&client, &sim, "gpt-4o", "c").await.unwrap();
    assert_eq!(third.status(), 500);
    assert!(
        third.headers().get("retry-after").is_none(),
        "only 429 and 503 carry it"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn same_seed_gives_same_outcomes_and_a_half_mix_fails_about_half() {
    let config = |seed| SimConfig {
        seed,
        ..with_model(
            "gpt-4o",
            Behavior {
                mix: BTreeMap::from([(Outcome::Status(503), 0.5)]),
                ..Behavior::default()
            },
        )
    };
    let first = start(config(42)).await;
    let second = start(config(42)).await;
    let other_seed = start(config(43)).await;
    let a = statuses(&first, "gpt-4o", 100).await;
    let b = statuses(&second, "gpt-4o", 100).await;
    let c = statuses(&other_seed, "gpt-4o", 100).await;
    assert_eq!(a, b, "same seed, same calls, same outcomes");
    assert_ne!(a, c, "another seed draws another sequence");
    assert!(a.iter().all(|s| *s == 200 || *s == 503));
    let failures = a.iter().filter(|s| **s == 503).count();
    assert!(
        (35..=65).contains(&failures),
        "{failures} failures out of 100"
    );
    let snapshot = first.snapshot();
    let report = &snapshot.models["gpt-4o"];
    assert_eq!(report.outcomes[&Outcome::Status(503)], failures as u64);
    assert_eq!(report.outcomes[&Outcome::Ok], 100 - failures as u64);
    for sim in [first, second, other_seed] {
        sim.shutdown().await;
    }
}

#[tokio::test]
async fn reset_gives_the_client_a_connection_error_not_an_http_response() {
    let sim = start(with_model("gpt-4o", Behavior::always(Outcome::Reset))).await;
    let err = chat(&client(), &sim, "gpt-4o", "hi").await.unwrap_err();
    assert!(!err.is_timeout(), "{err:?}");
    assert!(err.status().is_none(), "{err:?}");
    assert!(err.is_request(), "{err:?}");
    // The RST surfaces as ECONNRESET somewhere in the error chain.
    let mut source: Option<&dyn std::error::Error> = Some(&err);
    let mut saw_reset = false;
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            saw_reset |= io.kind() == std::io::ErrorKind::ConnectionReset;
        }
        source = e.source();
    }
    assert!(saw_reset, "expected a connection reset, got {err:?}");
    // The simulator itself keeps serving.
    sim.set_behavior("gpt-4o", Behavior::default());
    let response = chat(&client(), &sim, "gpt-4o", "hi").await.unwrap();
    assert_eq!(response.status(), 200);
    sim.shutdown().await;
}

#[tokio::test]
async fn hang_makes_a_client_with_a_200ms_timeout_time_out() {
    let sim = start(with_model("gpt-4o", Behavior::always(Outcome::Hang))).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let started = Instant::now();
    let err = chat(&client, &sim, "gpt-4o", "hi").await.unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(
        sim.calls("gpt-4o"),
        1,
        "counted on arrival, before answering"
    );
    // Shutdown does not wait for the hung call.
    let started = Instant::now();
    sim.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn malformed_answer_is_200_json_that_does_not_parse() {
    let sim = start(with_model("gpt-4o", Behavior::always(Outcome::Malformed))).await;
    let response = chat(&client(), &sim, "gpt-4o", "hi").await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let text = response.text().await.unwrap();
    assert!(serde_json::from_str::<Value>(&text).is_err(), "{text}");
    sim.shutdown().await;
}

#[tokio::test]
async fn empty_null_content_and_no_choices_are_valid_json_without_an_answer() {
    let script = vec![Outcome::Empty, Outcome::NullContent, Outcome::NoChoices];
    let sim = start(with_model("gpt-4o", Behavior::scripted(script))).await;
    let client = client();
    let empty = chat(&client, &sim, "gpt-4o", "hi").await.unwrap();
    assert_eq!(empty.status(), 200);
    assert_eq!(content_of(empty).await, json!(""));
    let null = chat(&client, &sim, "gpt-4o", "hi").await.unwrap();
    assert_eq!(null.status(), 200);
    let body: Value = null.json().await.unwrap();
    assert!(
        body["choices"][0]["message"]
            .get("content")
            .unwrap()
            .is_null()
    );
    let none = chat(&client, &sim, "gpt-4o", "hi").await.unwrap();
    assert_eq!(none.status(), 200);
    let body: Value = none.json().await.unwrap();
    assert_eq!(body["choices"], json!([]));
    sim.shutdown().await;
}

#[tokio::test]
async fn latency_delays_the_answer() {
    let behavior = Behavior {
        latency_ms: 80,
        jitter_ms: 20,
        ..Behavior::default()
    };
    let sim = start(SimConfig {
        default: behavior,
        ..SimConfig::default()
    })
    .await;
    let started = Instant::now();
    let response = chat(&client(), &sim, "any-model", "hi").await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(response.status(), 200);
    assert!(elapsed >= Duration::from_millis(80), "{elapsed:?}");
    assert_eq!(
        content_of(response).await,
        json!("[any-model] simulated answer to: hi"),
        "unconfigured models follow the default behaviour"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn invalid_json_or_missing_model_is_a_400_openai_error() {
    let sim = start(SimConfig::default()).await;
    let client = client();
    let url = format!("{}/chat/completions", sim.base_url());
    let bad_json = client.post(&url).body("{not json").send().await.unwrap();
    assert_eq!(bad_json.status(), 400);
    let body: Value = bad_json.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");
    let no_model = client
        .post(&url)
        .json(&json!({"messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(no_model.status(), 400);
    let body: Value = no_model.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("model"));
    assert!(
        sim.snapshot().models.is_empty(),
        "invalid requests are not counted"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn control_put_changes_behavior_and_get_reports_calls_and_last_request() {
    let sim = start(SimConfig::default()).await;
    let client = client();
    assert_eq!(
        chat(&client, &sim, "gpt-4o", "first")
            .await
            .unwrap()
            .status(),
        200
    );

    let put = client
        .put(format!("{}/control/models/gpt-4o", root(&sim)))
        .json(&json!({"script": ["401"], "latency_ms": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let state: Value = put.json().await.unwrap();
    assert_eq!(state["calls"], 1, "counts are kept");
    assert_eq!(state["behavior"]["script"], json!(["401"]));

    assert_eq!(
        chat(&client, &sim, "gpt-4o", "second")
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        chat(&client, &sim, "gpt-4o", "third")
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        chat(&client, &sim, "gpt-3.5-turbo", "x")
            .await
            .unwrap()
            .status(),
        200
    );

    let snapshot: Value = client
        .get(format!("{}/control", root(&sim)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let model = &snapshot["models"]["gpt-4o"];
    assert_eq!(model["calls"], 3);
    assert_eq!(model["outcomes"], json!({"ok": 2, "401": 1}));
    assert_eq!(model["last_request"]["authorization"], "Bearer ***");
    assert_eq!(
        model["last_request"]["body"]["messages"][1]["content"],
        "third"
    );
    assert_eq!(model["last_request"]["body"]["temperature"], 0.2);
    assert_eq!(snapshot["seed"], 0);
    // The typed view parses the same document.
    let typed: ControlSnapshot = serde_json::from_value(snapshot).unwrap();
    assert_eq!(typed, sim.snapshot());

    let calls: Value = client
        .get(format!("{}/control/calls", root(&sim)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(calls, json!({"gpt-4o": 3, "gpt-3.5-turbo": 1}));

    let unauthenticated = client
        .post(format!("{}/chat/completions", sim.base_url()))
        .json(&json!({"model": "gpt-4o", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 200);
    let last = sim.snapshot().models["gpt-4o"]
        .last_request
        .clone()
        .unwrap();
    assert_eq!(last.authorization, None);
    sim.shutdown().await;
}

#[tokio::test]
async fn control_put_default_changes_unconfigured_models() {
    let sim = start(with_model("gpt-4o", Behavior::default())).await;
    let client = client();
    let put = client
        .put(format!("{}/control/default", root(&sim)))
        .json(&json!({"mix": {"503": 1.0}}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    assert_eq!(
        chat(&client, &sim, "other", "hi").await.unwrap().status(),
        503
    );
    assert_eq!(
        chat(&client, &sim, "gpt-4o", "hi").await.unwrap().status(),
        200
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn control_put_rejects_a_bad_behavior_with_a_clear_400() {
    let sim = start(SimConfig::default()).await;
    let client = client();
    let url = format!("{}/control/models/gpt-4o", root(&sim));
    for (body, needle) in [
        (json!({"mix": {"teapot": 0.5}}), "unknown outcome"),
        (json!({"mix": {"200": 0.5}}), "unknown outcome"),
        (json!({"latency": 5}), "unknown field"),
        (json!({"mix": {"503": 0.8, "hang": 0.5}}), "sum to"),
        (json!({"mix": {"503": -0.1}}), "0..=1"),
        (json!({"retry_after": "1\n2"}), "retry_after"),
        (
            json!({"redirect_location": "http://x/\r\n"}),
            "redirect_location",
        ),
        (json!({"huge_body_bytes": -1}), "expected u64"),
    ] {
        let response = client.put(&url).json(&body).send().await.unwrap();
        assert_eq!(response.status(), 400, "{body}");
        let error: Value = response.json().await.unwrap();
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{body}: {message}");
    }
    assert!(sim.snapshot().models.is_empty(), "nothing was changed");
    sim.shutdown().await;
}

#[tokio::test]
async fn models_endpoint_lists_configured_and_builtin_models() {
    let sim = start(with_model("acme/support-7b", Behavior::default())).await;
    let body: Value = client()
        .get(format!("{}/models", sim.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["object"], "list");
    let ids: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["gpt-4o", "gpt-3.5-turbo", "acme/support-7b"]);
    assert_eq!(body["data"][0]["object"], "model");
    assert_eq!(body["data"][0]["owned_by"], "upstream-sim");
    sim.shutdown().await;
}

#[tokio::test]
async fn control_reset_clears_counts_and_restores_start_up_behavior() {
    let sim = start(with_model(
        "gpt-4o",
        Behavior::scripted([Outcome::Status(503)]),
    ))
    .await;
    let client = client();
    assert_eq!(
        chat(&client, &sim, "gpt-4o", "a").await.unwrap().status(),
        503
    );
    assert_eq!(
        chat(&client, &sim, "stray", "b").await.unwrap().status(),
        200
    );
    sim.set_behavior("gpt-4o", Behavior::always(Outcome::Status(500)));
    assert_eq!(
        chat(&client, &sim, "gpt-4o", "c").await.unwrap().status(),
        500
    );
    assert_eq!(sim.calls("gpt-4o"), 2);

    let reset = client
        .post(format!("{}/control/reset", root(&sim)))
        .send()
        .await
        .unwrap();
    assert_eq!(reset.status(), 200);
    assert_eq!(sim.calls("gpt-4o"), 0);
    assert_eq!(sim.calls("stray"), 0);
    let snapshot = sim.snapshot();
    assert_eq!(snapshot.models.keys().collect::<Vec<_>>(), ["gpt-4o"]);
    assert!(snapshot.models["gpt-4o"].last_request.is_none());
    assert!(snapshot.models["gpt-4o"].outcomes.is_empty());
    // The start-up script plays again from its beginning.
    assert_eq!(
        chat(&client, &sim, "gpt-4o", "d").await.unwrap().status(),
        503
    );
    assert_eq!(
        chat(&client, &sim, "gpt-4o", "e").await.unwrap().status(),
        200
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn shutdown_stops_accepting_connections() {
    let sim = start(SimConfig::default()).await;
    let addr = sim.addr();
    sim.shutdown().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn invalid_start_up_config_is_refused() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = with_model(
        "gpt-4o",
        Behavior {
            mix: BTreeMap::from([(Outcome::Hang, 1.5)]),
            ..Behavior::default()
        },
    );
    let err = SimServer::start(listener, config).await.err().unwrap();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("gpt-4o"), "{err}");
}

#[test]
fn outcomes_round_trip_as_strings_and_unknown_ones_are_rejected() {
    for text in [
        "ok",
        "hang",
        "reset",
        "malformed",
        "empty",
        "null_content",
        "no_choices",
        "huge",
        "redirect",
        "content_parts",
        "400",
        "401",
        "429",
        "500",
        "503",
        "599",
    ] {
        let outcome: Outcome = text.parse().unwrap();
        assert_eq!(outcome.to_string(), text);
        assert_eq!(serde_json::to_value(outcome).unwrap(), json!(text));
        assert_eq!(
            serde_json::from_value::<Outcome>(json!(text)).unwrap(),
            outcome
        );
    }
    for bad in ["", "OK", "200", "600", "399", "timeout", "5o3"] {
        let err = bad.parse::<Outcome>().unwrap_err().to_string();
        assert!(err.contains("unknown outcome"), "{bad}: {err}");
    }
    assert!(serde_json::from_value::<Outcome>(json!("nope")).is_err());
    assert!(serde_json::from_value::<Behavior>(json!({"script": ["ok", "slow"]})).is_err());
}

#[test]
fn toml_config_parses_with_quoted_outcome_keys() {
    let config = SimConfig::from_toml_str(
        r#"
        seed = 7
        [default]
        latency_ms = 50
        [models."gpt-4o"]
        mix = { "503" = 0.5, hang = 0.1 }
        retry_after_secs = 2
        script = ["429", 500, "ok"]
        "#,
    )
    .unwrap();
    assert_eq!(config.seed, 7);
    assert_eq!(config.default.latency_ms, 50);
    let gpt = &config.models["gpt-4o"];
    assert_eq!(
        gpt.mix,
        BTreeMap::from([(Outcome::Status(503), 0.5), (Outcome::Hang, 0.1)])
    );
    assert_eq!(gpt.retry_after_secs, Some(2));
    assert_eq!(
        gpt.script,
        [Outcome::Status(429), Outcome::Status(500), Outcome::Ok]
    );
    let err = SimConfig::from_toml_str("sed = 7").unwrap_err();
    assert!(err.contains("unknown field"), "{err}");
    let err = SimConfig::from_toml_str("[default]\nmix = { \"503\" = 2.0 }").unwrap_err();
    assert!(err.contains("default"), "{err}");
}

#[test]
fn cli_flags_override_and_bad_flags_are_named() {
    let args = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let CliCommand::Run(options) = parse_args(
        args(&[
            "--listen",
            "127.0.0.1:0",
            "--latency-ms=25",
            "--seed",
            "9",
            "--mix",
            "503=0.5,hang=0.1",
        ]),
        Some("0.0.0.0:1".to_owned()),
    )
    .unwrap() else {
        panic!("expected run");
    };
    assert_eq!(options.listen.to_string(), "127.0.0.1:0");
    assert_eq!(options.config.seed, 9);
    assert_eq!(options.config.default.latency_ms, 25);
    assert_eq!(
        options.config.default.mix,
        parse_mix("503=0.5,hang=0.1").unwrap()
    );

    let CliCommand::Run(options) =
        parse_args(Vec::new(), Some("127.0.0.1:7777".to_owned())).unwrap()
    else {
        panic!("expected run");
    };
    assert_eq!(
        options.listen.to_string(),
        "127.0.0.1:7777",
        "SIM_LISTEN applies"
    );
    let CliCommand::Run(options) = parse_args(Vec::new(), None).unwrap() else {
        panic!("expected run");
    };
    assert_eq!(options.listen.to_string(), "127.0.0.1:9090");
    assert_eq!(
        parse_args(args(&["--help"]), None).unwrap(),
        CliCommand::Help
    );

    for (bad, needle) in [
        (&["--frobnicate"][..], "--frobnicate"),
        (&["--seed"][..], "--seed"),
        (&["--seed", "x"][..], "--seed"),
        (&["--mix", "503"][..], "503"),
        (&["--mix", "teapot=0.1"][..], "teapot"),
        (&["--mix", "503=0.9,500=0.9"][..], "sum"),
        (&["--listen", "nowhere"][..], "nowhere"),
        (
            &["--config", "/nonexistent/sim.toml"][..],
            "/nonexistent/sim.toml",
        ),
    ] {
        let err = parse_args(args(bad), None).unwrap_err();
        assert!(err.contains(needle), "{bad:?}: {err}");
    }
}

#[test]
fn binary_exits_2_naming_a_bad_flag() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_upstream-sim"))
        .arg("--bogus")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--bogus"), "{stderr}");
}

#[cfg(unix)]
#[test]
fn binary_serves_and_ends_cleanly_on_sigterm() {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::process::{Command, Stdio};
    use std::sync::mpsc;

    let mut child = Command::new(env!("CARGO_BIN_EXE_upstream-sim"))
        .args(["--listen", "127.0.0.1:0", "--seed", "3"])
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let line = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(
        line.contains("simulated") || line.contains("SIMULATED"),
        "{line}"
    );
    let start = line.find("http://").unwrap() + "http://".len();
    let addr = &line[start..start + line[start..].find("/v1").unwrap()];

    // A raw HTTP/1.1 request keeps the test free of an async runtime.
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .write_all(b"GET /v1/models HTTP/1.1\r\nHost: sim\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("gpt-4o"), "{response}");

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "upstream-sim did not exit on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn put_behavior(sim: &SimServer, model: &str, behavior: Value) {
    let response = client()
        .put(format!("{}/control/models/{model}", root(sim)))
        .json(&behavior)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{behavior}");
}

#[tokio::test]
async fn huge_answer_is_a_chunked_valid_completion_with_content_of_the_configured_size() {
    let sim = start(SimConfig::default()).await;
    // Not a multiple of the simulator's write size, so the last piece is partial.
    put_behavior(
        &sim,
        "gpt-4o",
        json!({"script": ["huge"], "huge_body_bytes": 1_000_003}),
    )
    .await;

    let response = chat(&client(), &sim, "gpt-4o", "hi").await.unwrap();

    assert_eq!(response.status(), 200);
    assert!(
        response.headers().get("content-length").is_none(),
        "a huge answer announces no length: {:?}",
        response.headers()
    );
    assert_eq!(response.headers()["transfer-encoding"], "chunked");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    let content = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(content.len(), 1_000_003);
    assert!(
        content.starts_with("simulated huge answer. "),
        "{}",
        &content[..40]
    );
    assert_eq!(sim.snapshot().models["gpt-4o"].outcomes[&Outcome::Huge], 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn huge_answer_without_a_size_sends_50_mib_of_content() {
    let sim = start(with_model("gpt-4o", Behavior::always(Outcome::Huge))).await;
    assert_eq!(resilient_qa::sim::DEFAULT_HUGE_BODY_BYTES, 50 * 1024 * 1024);

    let mut response = chat(&client(), &sim, "gpt-4o", "hi").await.unwrap();

    assert_eq!(response.status(), 200);
    let mut received = 0usize;
    let mut tail = Vec::new();
    while let Some(piece) = response.chunk().await.unwrap() {
        received += piece.len();
        tail.extend_from_slice(&piece);
        let keep = tail.len().saturating_sub(512);
        tail.drain(..keep);
    }
    // The content plus an envelope of a few hundred bytes.
    let content = 50 * 1024 * 1024;
    assert!(
        (content..content + 1024).contains(&received),
        "{received} bytes"
    );
    let tail = String::from_utf8(tail).unwrap();
    assert!(tail.contains(r#""finish_reason":"stop""#), "{tail}");
    assert!(tail.ends_with('}'), "{tail}");
    sim.shutdown().await;
}

#[tokio::test]
async fn redirect_answers_307_to_the_redirect_target_which_is_not_called_unless_followed() {
    let sim = start(with_model("gpt-4o", Behavior::always(Outcome::Redirect))).await;

    let response = chat(&no_redirects(), &sim, "gpt-4o", "hi").await.unwrap();

    assert_eq!(response.status(), 307);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(
        location,
        format!("http://{}/redirected/v1/chat/completions", sim.addr())
    );
    assert_eq!(sim.redirected_calls(), 0, "not followed, so never called");
    assert_eq!(sim.calls("gpt-4o"), 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn redirect_target_answers_a_following_client_and_is_counted_apart() {
    let sim = start(with_model("gpt-4o", Behavior::always(Outcome::Redirect))).await;

    // reqwest follows a 307 by default, re-sending the POST and its body.
    let response = chat(&client(), &sim, "gpt-4o", "where is my order?")
        .await
        .unwrap();

    assert_eq!(response.status(), 200);
    assert_eq!(response.url().path(), "/redirected/v1/chat/completions");
    assert_eq!(
        content_of(response).await,
        json!("[gpt-4o] simulated answer from the redirect target to: where is my order?")
    );
    assert_eq!(sim.redirected_calls(), 1);
    assert_eq!(
        sim.calls("gpt-4o"),
        1,
        "the target's call is not the model's"
    );
    let snapshot: Value = client()
        .get(format!("{}/control", root(&sim)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(snapshot["redirected_calls"], 1);
    client()
        .post(format!("{}/control/reset", root(&sim)))
        .send()
        .await
        .unwrap();
    assert_eq!(sim.redirected_calls(), 0, "reset clears the count");
    sim.shutdown().await;
}

#[tokio::test]
async fn redirect_location_sets_the_location_header() {
    let sim = start(SimConfig::default()).await;
    put_behavior(
        &sim,
        "gpt-4o",
        json!({"script": ["redirect"], "redirect_location": "http://elsewhere.invalid/v1/chat/completions"}),
    )
    .await;

    let response = chat(&no_redirects(), &sim, "gpt-4o", "hi").await.unwrap();

    assert_eq!(response.status(), 307);
    assert_eq!(
        response.headers()["location"],
        "http://elsewhere.invalid/v1/chat/completions"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn retry_after_is_sent_verbatim_on_429_and_503() {
    let sim = start(SimConfig::default()).await;
    let client = client();
    for value in [
        "18446744073709551615",
        "9223372036854775807",
        "+3",
        "-1",
        "1.5",
        "Wed, 21 Oct 2015 07:28:00 GMT",
        "soon",
    ] {
        for status in [429, 503] {
            put_behavior(
                &sim,
                "gpt-4o",
                json!({"script": [status.to_string()], "retry_after": value}),
            )
            .await;

            let response = chat(&client, &sim, "gpt-4o", "hi").await.unwrap();

            assert_eq!(response.status(), status);
            assert_eq!(response.headers()["retry-after"], value, "{status}");
            assert!(response.headers().get("retry-after-ms").is_none());
        }
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn retry_after_wins_over_retry_after_secs_and_skips_other_statuses() {
    let behavior = Behavior {
        retry_after_secs: Some(7),
        retry_after: Some("+3".to_owned()),
        script: vec![Outcome::Status(429), Outcome::Status(500)],
        ..Behavior::default()
    };
    let sim = start(with_model("gpt-4o", behavior)).await;
    let client = client();

    let limited = chat(&client, &sim, "gpt-4o", "a").await.unwrap();
    let failed = chat(&client, &sim, "gpt-4o", "b").await.unwrap();

    assert_eq!(limited.headers()["retry-after"], "+3");
    assert_eq!(failed.status(), 500);
    assert!(failed.headers().get("retry-after").is_none());
    sim.shutdown().await;
}

#[tokio::test]
async fn retry_after_ms_is_sent_as_the_retry_after_ms_header_on_429_and_503_only() {
    let sim = start(SimConfig::default()).await;
    put_behavior(
        &sim,
        "gpt-4o",
        json!({"script": ["429", "503", "500"], "retry_after_ms": 1500, "retry_after_secs": 9}),
    )
    .await;
    let client = client();

    let limited = chat(&client, &sim, "gpt-4o", "a").await.unwrap();
    let unavailable = chat(&client, &sim, "gpt-4o", "b").await.unwrap();
    let failed = chat(&client, &sim, "gpt-4o", "c").await.unwrap();

    assert_eq!(limited.status(), 429);
    assert_eq!(limited.headers()["retry-after-ms"], "1500");
    assert_eq!(
        limited.headers()["retry-after"],
        "9",
        "both headers, as OpenAI sends"
    );
    assert_eq!(unavailable.status(), 503);
    assert_eq!(unavailable.headers()["retry-after-ms"], "1500");
    assert_eq!(failed.status(), 500);
    assert!(failed.headers().get("retry-after-ms").is_none());
    sim.shutdown().await;
}

#[tokio::test]
async fn content_parts_answer_is_an_array_of_text_parts_joining_to_the_ok_answer() {
    let sim = start(SimConfig::default()).await;
    put_behavior(&sim, "gpt-4o", json!({"mix": {"content_parts": 1.0}})).await;

    let response = chat(&client(), &sim, "gpt-4o", "where is my order?")
        .await
        .unwrap();

    assert_eq!(response.status(), 200);
    let content = content_of(response).await;
    let parts = content.as_array().unwrap();
    assert_eq!(parts.len(), 2, "{content}");
    assert!(parts.iter().all(|p| p["type"] == "text"), "{content}");
    let joined: String = parts.iter().map(|p| p["text"].as_str().unwrap()).collect();
    assert_eq!(joined, "[gpt-4o] simulated answer to: where is my order?");
    sim.shutdown().await;
}

#[tokio::test]
async fn control_api_reports_authorization_redacted_to_its_scheme() {
    let sim = start(SimConfig::default()).await;
    let client = client();
    let send = |model: &'static str, authorization: &'static str| {
        client
            .post(format!("{}/chat/completions", sim.base_url()))
            .header("authorization", authorization)
            .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
    };
    send("gpt-4o", "Bearer sk-live-0123456789secret")
        .await
        .unwrap();
    send("bare", "sk-bare-0123456789secret").await.unwrap();

    let text = client
        .get(format!("{}/control", root(&sim)))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();

    assert!(!text.contains("0123456789secret"), "{text}");
    let snapshot: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        snapshot["models"]["gpt-4o"]["last_request"]["authorization"],
        "Bearer ***"
    );
    assert_eq!(
        snapshot["models"]["bare"]["last_request"]["authorization"],
        "***"
    );
    // In process, a test can still check which credentials were sent.
    assert!(sim.last_authorization_is("gpt-4o", Some("Bearer sk-live-0123456789secret")));
    assert!(!sim.last_authorization_is("gpt-4o", Some("Bearer sk-other")));
    sim.shutdown().await;
}

#[test]
fn new_behavior_fields_parse_from_toml_and_cli() {
    let config = SimConfig::from_toml_str(
        r#"
        [models."gpt-4o"]
        retry_after = "Wed, 21 Oct 2015 07:28:00 GMT"
        retry_after_ms = 250
        huge_body_bytes = 1024
        redirect_location = "http://127.0.0.1:1/elsewhere"
        script = ["huge", "redirect", "content_parts"]
        "#,
    )
    .unwrap();
    let gpt = &config.models["gpt-4o"];
    assert_eq!(
        gpt.retry_after.as_deref(),
        Some("Wed, 21 Oct 2015 07:28:00 GMT")
    );
    assert_eq!(gpt.retry_after_ms, Some(250));
    assert_eq!(gpt.huge_body_bytes, Some(1024));
    assert_eq!(
        gpt.redirect_location.as_deref(),
        Some("http://127.0.0.1:1/elsewhere")
    );
    assert_eq!(
        gpt.script,
        [Outcome::Huge, Outcome::Redirect, Outcome::ContentParts]
    );

    let args = [
        "--retry-after=+3",
        "--retry-after-ms",
        "40",
        "--huge-body-bytes",
        "2048",
        "--redirect-location",
        "http://127.0.0.1:2/x",
        "--script",
        "huge,redirect,content_parts",
    ];
    let CliCommand::Run(options) = parse_args(args.iter().map(|s| (*s).to_owned()), None).unwrap()
    else {
        panic!("expected run");
    };
    let default = &options.config.default;
    assert_eq!(default.retry_after.as_deref(), Some("+3"));
    assert_eq!(default.retry_after_ms, Some(40));
    assert_eq!(default.huge_body_bytes, Some(2048));
    assert_eq!(
        default.redirect_location.as_deref(),
        Some("http://127.0.0.1:2/x")
    );
    assert_eq!(
        default.script,
        [Outcome::Huge, Outcome::Redirect, Outcome::ContentParts]
    );
    let err = parse_args(["--retry-after-ms".to_owned(), "soon".to_owned()], None).unwrap_err();
    assert!(err.contains("--retry-after-ms"), "{err}");
}

// ---- Streaming (`"stream": true`) ----

async fn chat_stream(
    client: &reqwest::Client,
    sim: &SimServer,
    model: &str,
    question: &str,
    include_usage: bool,
) -> reqwest::Result<reqwest::Response> {
    let mut body = json!({
        "model": model,
        "messages": [
            {"role": "system", "content": "You are helpful."},
            {"role": "user", "content": question},
        ],
        "stream": true,
    });
    if include_usage {
        body["stream_options"] = json!({"include_usage": true});
    }
    client
        .post(format!("{}/chat/completions", sim.base_url()))
        .bearer_auth("sk-test")
        .json(&body)
        .send()
        .await
}

/// How reading a stream ended.
#[derive(Debug)]
enum StreamEnd {
    /// The body ended normally.
    Finished,
    /// The body broke off (connection closed or reset mid-body).
    Failed(reqwest::Error),
    /// Nothing arrived for the quiet period; the connection was still open.
    Quiet,
}

/// Reads server-sent events until the body ends, fails, or `quiet` passes
/// without a byte; returns the `data` of each complete event.
async fn read_events(mut response: reqwest::Response, quiet: Duration) -> (Vec<String>, StreamEnd) {
    let mut buffer = String::new();
    let end = loop {
        match tokio::time::timeout(quiet, response.chunk()).await {
            Err(_) => break StreamEnd::Quiet,
            Ok(Err(e)) => break StreamEnd::Failed(e),
            Ok(Ok(None)) => break StreamEnd::Finished,
            Ok(Ok(Some(bytes))) => buffer.push_str(std::str::from_utf8(&bytes).unwrap()),
        }
    };
    let mut events = Vec::new();
    while let Some(at) = buffer.find("\n\n") {
        let event: String = buffer.drain(..at + 2).collect();
        let data = event
            .trim_end_matches('\n')
            .strip_prefix("data: ")
            .unwrap_or_else(|| panic!("not a data event: {event:?}"));
        events.push(data.to_owned());
    }
    assert!(buffer.is_empty(), "unterminated event: {buffer:?}");
    (events, end)
}

fn json_events(events: &[String]) -> Vec<Value> {
    events
        .iter()
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str(e).unwrap())
        .collect()
}

/// The `delta.content` pieces of the chunks after the first, in order.
fn pieces(events: &[String]) -> Vec<String> {
    json_events(events)
        .iter()
        .skip(1)
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

fn streaming(cut_after: usize) -> Behavior {
    Behavior {
        stream_piece_chars: Some(4),
        stream_interval_ms: Some(5),
        stream_cut_after: Some(cut_after),
        ..Behavior::default()
    }
}

#[tokio::test]
async fn stream_is_event_stream_of_role_chunk_pieces_stop_chunk_then_done() {
    let sim = start(SimConfig::default()).await;
    let response = chat_stream(&client(), &sim, "gpt-4o", "where is my order?", false)
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let (events, end) = read_events(response, Duration::from_secs(2)).await;
    assert!(matches!(end, StreamEnd::Finished), "{end:?}");
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks = json_events(&events);
    assert_eq!(chunks.len(), events.len() - 1, "one [DONE], at the end");
    let id = chunks[0]["id"].as_str().unwrap();
    assert!(id.starts_with("chatcmpl-sim-"), "{id}");
    for chunk in &chunks {
        assert_eq!(chunk["id"], id);
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["model"], "gpt-4o");
        assert!(chunk["created"].as_u64().unwrap() > 0);
        assert!(
            chunk.get("usage").is_none(),
            "no usage unless asked: {chunk}"
        );
    }
    assert_eq!(
        chunks[0]["choices"],
        json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}])
    );
    let last = chunks.last().unwrap();
    assert_eq!(
        last["choices"],
        json!([{"index": 0, "delta": {}, "finish_reason": "stop"}])
    );
    for chunk in &chunks[1..chunks.len() - 1] {
        assert!(chunk["choices"][0]["finish_reason"].is_null());
        assert!(chunk["choices"][0]["delta"].get("role").is_none());
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn streamed_pieces_have_the_configured_characters_and_join_to_the_one_shot_answer() {
    let behavior = Behavior {
        stream_piece_chars: Some(3),
        stream_interval_ms: Some(1),
        ..Behavior::default()
    };
    let sim = start(with_model("gpt-4o", behavior)).await;
    let client = client();
    let question = "我的订单在哪里?";
    let one_shot = content_of(chat(&client, &sim, "gpt-4o", question).await.unwrap()).await;
    let response = chat_stream(&client, &sim, "gpt-4o", question, false)
        .await
        .unwrap();
    let (events, _) = read_events(response, Duration::from_secs(2)).await;
    let pieces = pieces(&events);
    let (last, full) = pieces.split_last().unwrap();
    assert!(full.iter().all(|p| p.chars().count() == 3), "{pieces:?}");
    assert!((1..=3).contains(&last.chars().count()), "{pieces:?}");
    assert_eq!(pieces.concat(), one_shot.as_str().unwrap());
    assert_eq!(
        pieces.concat(),
        format!("[gpt-4o] simulated answer to: {question}")
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn include_usage_adds_a_usage_chunk_without_choices_just_before_done() {
    let sim = start(SimConfig::default()).await;
    let response = chat_stream(&client(), &sim, "gpt-4o", "hi", true)
        .await
        .unwrap();
    let (events, end) = read_events(response, Duration::from_secs(2)).await;
    assert!(matches!(end, StreamEnd::Finished), "{end:?}");
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks = json_events(&events);
    let (usage_chunk, rest) = chunks.split_last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(rest.last().unwrap()["choices"][0]["finish_reason"], "stop");
    // "You are helpful." is 16 characters, "hi" 2: 4 + 1 tokens; the answer
    // "[gpt-4o] simulated answer to: hi" is 32: 8 tokens.
    assert_eq!(
        usage_chunk["usage"],
        json!({"prompt_tokens": 5, "completion_tokens": 8, "total_tokens": 13})
    );
    assert!(rest.iter().all(|c| c.get("usage").is_none()));
    sim.shutdown().await;
}

#[tokio::test]
async fn one_shot_usage_counts_characters_over_four_rounded_up() {
    let sim = start(SimConfig::default()).await;
    let response = chat(&client(), &sim, "gpt-4o", "您好").await.unwrap();
    let body: Value = response.json().await.unwrap();
    // "You are helpful." 16 characters -> 4, "您好" 2 -> 1; the answer
    // "[gpt-4o] simulated answer to: 您好" is 32 characters -> 8.
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 5, "completion_tokens": 8, "total_tokens": 13})
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn stream_interval_spaces_the_pieces_and_latency_delays_the_headers() {
    let behavior = Behavior {
        latency_ms: 150,
        stream_piece_chars: Some(8),
        stream_interval_ms: Some(60),
        ..Behavior::default()
    };
    let sim = start(with_model("gpt-4o", behavior)).await;
    let started = Instant::now();
    let mut response = chat_stream(&client(), &sim, "gpt-4o", "0123456789", false)
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(150));
    // "[gpt-4o] simulated answer to: 0123456789" is 40 characters: 5 pieces,
    // 4 intervals between them.
    let mut arrivals = Vec::new();
    let mut text = String::new();
    while let Some(bytes) = response.chunk().await.unwrap() {
        let bytes = std::str::from_utf8(&bytes).unwrap();
        for _ in bytes.matches(r#""delta":{"content""#) {
            arrivals.push(Instant::now());
        }
        text.push_str(bytes);
    }
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert_eq!(arrivals.len(), 5, "{text}");
    let spread = *arrivals.last().unwrap() - arrivals[0];
    assert!(spread >= Duration::from_millis(4 * 60 - 20), "{spread:?}");
    sim.shutdown().await;
}

#[tokio::test]
async fn cut_closes_the_connection_after_n_pieces_without_final_chunk_or_done() {
    let behavior = Behavior {
        script: vec![Outcome::Cut],
        ..streaming(3)
    };
    let sim = start(with_model("gpt-4o", behavior)).await;
    let response = chat_stream(&client(), &sim, "gpt-4o", "where is my order?", true)
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (events, end) = read_events(response, Duration::from_secs(2)).await;
    let StreamEnd::Failed(error) = end else {
        panic!("expected the body to break off, got {end:?}");
    };
    assert!(!error.is_timeout(), "{error:?}");
    assert!(!events.contains(&"[DONE]".to_owned()), "{events:?}");
    assert_eq!(pieces(&events), ["[gpt", "-4o]", " sim"]);
    assert!(
        json_events(&events)
            .iter()
            .all(|c| c["choices"][0]["finish_reason"].is_null() && c.get("usage").is_none())
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn stall_first_sends_event_stream_headers_and_then_nothing() {
    let sim = start(with_model("gpt-4o", Behavior::always(Outcome::StallFirst))).await;
    let response = chat_stream(&client(), &sim, "gpt-4o", "hi", false)
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let (events, end) = read_events(response, Duration::from_millis(300)).await;
    assert!(matches!(end, StreamEnd::Quiet), "{end:?}");
    assert!(events.is_empty(), "{events:?}");
    // Shutdown does not wait for the stalled stream.
    let started = Instant::now();
    sim.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn stall_sends_n_pieces_then_nothing_with_the_connection_open() {
    let behavior = Behavior {
        script: vec![Outcome::Stall],
        ..streaming(2)
    };
    let sim = start(with_model("gpt-4o", behavior)).await;
    let response = chat_stream(&client(), &sim, "gpt-4o", "hi", false)
        .await
        .unwrap();
    let (events, end) = read_events(response, Duration::from_millis(300)).await;
    assert!(matches!(end, StreamEnd::Quiet), "{end:?}");
    assert_eq!(pieces(&events), ["[gpt", "-4o]"]);
    assert_eq!(events.len(), 3, "role chunk and two pieces: {events:?}");
    sim.shutdown().await;
}

#[tokio::test]
async fn stream_error_sends_an_openai_error_event_after_n_pieces_and_no_done() {
    let behavior = Behavior {
        script: vec![Outcome::StreamError],
        ..streaming(1)
    };
    let sim = start(with_model("gpt-4o", behavior)).await;
    let response = chat_stream(&client(), &sim, "gpt-4o", "hi", true)
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (events, end) = read_events(response, Duration::from_secs(2)).await;
    assert!(matches!(end, StreamEnd::Finished), "{end:?}");
    assert_eq!(
        events.len(),
        3,
        "role chunk, one piece, the error: {events:?}"
    );
    assert_eq!(pieces(&events[..2]), ["[gpt"]);
    let error: Value = serde_json::from_str(&events[2]).unwrap();
    assert_eq!(
        error,
        json!({"error": {
            "message": "simulated error in the middle of the stream",
            "type": "server_error",
            "param": null,
            "code": null,
        }})
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn failures_before_the_answer_look_the_same_to_a_stream() {
    let behavior = Behavior {
        retry_after_secs: Some(2),
        script: vec![Outcome::Status(503), Outcome::Reset, Outcome::Hang],
        ..Behavior::default()
    };
    let sim = start(with_model("gpt-4o", behavior)).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let unavailable = chat_stream(&client, &sim, "gpt-4o", "hi", false)
        .await
        .unwrap();
    assert_eq!(unavailable.status(), 503);
    assert_eq!(unavailable.headers()["content-type"], "application/json");
    assert_eq!(unavailable.headers()["retry-after"], "2");
    let body: Value = unavailable.json().await.unwrap();
    assert_eq!(body["error"]["type"], "server_error");
    let reset = chat_stream(&client, &sim, "gpt-4o", "hi", false)
        .await
        .unwrap_err();
    assert!(!reset.is_timeout() && reset.status().is_none(), "{reset:?}");
    let hang = chat_stream(&client, &sim, "gpt-4o", "hi", false)
        .await
        .unwrap_err();
    assert!(hang.is_timeout(), "{hang:?}");
    sim.shutdown().await;
}

#[tokio::test]
async fn malformed_stream_has_a_data_line_that_is_not_json() {
    let sim = start(with_model("gpt-4o", Behavior::always(Outcome::Malformed))).await;
    let response = chat_stream(&client(), &sim, "gpt-4o", "hi", false)
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (events, _) = read_events(response, Duration::from_secs(2)).await;
    let broken: Vec<_> = events
        .iter()
        .filter(|e| *e != "[DONE]" && serde_json::from_str::<Value>(e).is_err())
        .collect();
    assert_eq!(broken.len(), 1, "{events:?}");
    sim.shutdown().await;
}

#[tokio::test]
async fn empty_null_content_and_no_choices_streams_carry_no_text_and_end_with_done() {
    let script = vec![Outcome::Empty, Outcome::NullContent, Outcome::NoChoices];
    let sim = start(with_model("gpt-4o", Behavior::scripted(script))).await;
    let client = client();
    let mut streams = Vec::new();
    for _ in 0..3 {
        let response = chat_stream(&client, &sim, "gpt-4o", "hi", false)
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let (events, end) = read_events(response, Duration::from_secs(2)).await;
        assert!(matches!(end, StreamEnd::Finished), "{end:?}");
        assert_eq!(events.last().unwrap(), "[DONE]");
        streams.push(json_events(&events));
    }
    let text = |chunks: &[Value]| -> String {
        chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect()
    };
    let [empty, null, none] = &streams[..] else {
        unreachable!()
    };
    assert_eq!(text(empty), "");
    assert_eq!(empty.last().unwrap()["choices"][0]["finish_reason"], "stop");
    assert!(
        null.iter()
            .all(|c| c["choices"][0]["delta"].get("content").is_none())
    );
    assert_eq!(null.last().unwrap()["choices"][0]["finish_reason"], "stop");
    assert!(none.iter().all(|c| c["choices"] == json!([])), "{none:?}");
    sim.shutdown().await;
}

#[tokio::test]
async fn stream_faults_outside_a_stream_are_a_reset_a_500_and_hangs() {
    let script = vec![
        Outcome::Cut,
        Outcome::StreamError,
        Outcome::StallFirst,
        Outcome::Stall,
    ];
    let sim = start(with_model("gpt-4o", Behavior::scripted(script))).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let cut = chat(&client, &sim, "gpt-4o", "hi").await.unwrap_err();
    assert!(!cut.is_timeout() && cut.status().is_none(), "{cut:?}");
    let error = chat(&client, &sim, "gpt-4o", "hi").await.unwrap();
    assert_eq!(error.status(), 500);
    let body: Value = error.json().await.unwrap();
    assert_eq!(body["error"]["type"], "server_error");
    for _ in 0..2 {
        let stalled = chat(&client, &sim, "gpt-4o", "hi").await.unwrap_err();
        assert!(stalled.is_timeout(), "{stalled:?}");
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn stream_faults_in_a_mix_replay_from_the_seed() {
    let config = |seed| SimConfig {
        seed,
        ..with_model(
            "gpt-4o",
            Behavior {
                mix: parse_mix("cut=0.3,stream_error=0.3").unwrap(),
                ..streaming(1)
            },
        )
    };
    let mut runs = Vec::new();
    for sim in [start(config(9)).await, start(config(9)).await] {
        let client = client();
        let mut kinds = Vec::new();
        for _ in 0..20 {
            let response = chat_stream(&client, &sim, "gpt-4o", "hi", false)
                .await
                .unwrap();
            let (events, end) = read_events(response, Duration::from_secs(2)).await;
            kinds.push(match end {
                StreamEnd::Failed(_) => "cut",
                _ if events.last().is_some_and(|e| e.contains("\"error\"")) => "stream_error",
                _ => "ok",
            });
        }
        let snapshot = sim.snapshot();
        let outcomes = &snapshot.models["gpt-4o"].outcomes;
        for (outcome, name) in [
            (Outcome::Cut, "cut"),
            (Outcome::StreamError, "stream_error"),
        ] {
            let seen = kinds.iter().filter(|k| **k == name).count() as u64;
            assert_eq!(outcomes.get(&outcome).copied().unwrap_or(0), seen);
        }
        runs.push(kinds);
        sim.shutdown().await;
    }
    assert_eq!(runs[0], runs[1], "same seed, same faults");
    assert!(runs[0].contains(&"cut") && runs[0].contains(&"stream_error"));
}

#[tokio::test]
async fn control_api_sets_and_reports_the_stream_fields() {
    let sim = start(SimConfig::default()).await;
    put_behavior(
        &sim,
        "gpt-4o",
        json!({"script": ["stall"], "stream_piece_chars": 2, "stream_interval_ms": 0, "stream_cut_after": 1}),
    )
    .await;
    let snapshot: ControlSnapshot = client()
        .get(format!("{}/control", root(&sim)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let behavior = &snapshot.models["gpt-4o"].behavior;
    assert_eq!(behavior.stream_piece_chars, Some(2));
    assert_eq!(behavior.stream_interval_ms, Some(0));
    assert_eq!(behavior.stream_cut_after, Some(1));
    assert_eq!(behavior.script, [Outcome::Stall]);
    let response = chat_stream(&client(), &sim, "gpt-4o", "hi", false)
        .await
        .unwrap();
    let (events, end) = read_events(response, Duration::from_millis(300)).await;
    assert!(matches!(end, StreamEnd::Quiet), "{end:?}");
    assert_eq!(pieces(&events), ["[g"]);
    let refused = client()
        .put(format!("{}/control/models/gpt-4o", root(&sim)))
        .json(&json!({"stream_piece_chars": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    let body: Value = refused.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("stream_piece_chars"),
        "{body}"
    );
    sim.shutdown().await;
}

#[test]
fn stream_outcomes_and_fields_parse_from_toml_and_cli() {
    let config = SimConfig::from_toml_str(
        r#"
        [models."gpt-4o"]
        stream_piece_chars = 6
        stream_interval_ms = 45
        stream_cut_after = 2
        mix = { cut = 0.1, stream_error = 0.05 }
        script = ["stall_first", "stall", "cut", "stream_error"]
        "#,
    )
    .unwrap();
    let gpt = &config.models["gpt-4o"];
    assert_eq!(gpt.stream_piece_chars, Some(6));
    assert_eq!(gpt.stream_interval_ms, Some(45));
    assert_eq!(gpt.stream_cut_after, Some(2));
    assert_eq!(gpt.mix[&Outcome::Cut], 0.1);
    assert_eq!(
        gpt.script,
        [
            Outcome::StallFirst,
            Outcome::Stall,
            Outcome::Cut,
            Outcome::StreamError
        ]
    );
    let args = [
        "--stream-piece-chars",
        "3",
        "--stream-interval-ms=50",
        "--stream-cut-after",
        "4",
        "--mix",
        "cut=0.2,stall=0.1",
    ];
    let CliCommand::Run(options) = parse_args(args.iter().map(|s| (*s).to_owned()), None).unwrap()
    else {
        panic!("expected run");
    };
    let default = &options.config.default;
    assert_eq!(default.stream_piece_chars, Some(3));
    assert_eq!(default.stream_interval_ms, Some(50));
    assert_eq!(default.stream_cut_after, Some(4));
    assert_eq!(default.mix[&Outcome::Stall], 0.1);
    let err = parse_args(["--stream-piece-chars".to_owned(), "0".to_owned()], None).unwrap_err();
    assert!(err.contains("stream_piece_chars"), "{err}");
    assert!(SimConfig::from_toml_str("[default]\nstream_piece_chars = 0").is_err());
}
