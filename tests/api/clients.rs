//! The OpenAI-compatible API (`/v1/chat/completions`) through the client libraries users
//! run: the official `openai` SDK for Python (sync, async, streamed) and for Node
//! (streamed), and LangChain's `ChatOpenAI` (invoke, stream). Each runs as a subprocess,
//! one of the scripts in tests/clients/, installed pinned by scripts/install-clients.sh;
//! the script prints one JSON line of what the library showed its user.
//!
//! Each behaviour is one module with one test per client, e.g.
//! `clients::a_stream_cut_once_is_finished_by_the_primary_s_retry::langchain_stream`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use resilient_qa::config::Config;
use resilient_qa::sim::{Behavior, Outcome, SimConfig, SimServer};
use serde_json::Value;
use tokio::process::Command;

use crate::helpers::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Client {
    OpenAiPythonSync,
    OpenAiPythonAsync,
    OpenAiPythonStream,
    OpenAiNodeStream,
    LangChainInvoke,
    LangChainStream,
}

use Client::*;

impl Client {
    fn streams(self) -> bool {
        matches!(
            self,
            OpenAiPythonStream | OpenAiNodeStream | LangChainStream
        )
    }

    /// LangChain drops the body's `resilient_qa`: its user sees the source in the headers.
    fn is_langchain(self) -> bool {
        matches!(self, LangChainInvoke | LangChainStream)
    }

    fn command(self, base_url: &str, question: &str) -> Command {
        let (program, script, mode) = match self {
            OpenAiPythonSync => (python(), "openai_python.py", Some("sync")),
            OpenAiPythonAsync => (python(), "openai_python.py", Some("async")),
            OpenAiPythonStream => (python(), "openai_python.py", Some("stream")),
            OpenAiNodeStream => (node(), "openai_node.mjs", None),
            LangChainInvoke => (python(), "langchain_client.py", Some("invoke")),
            LangChainStream => (python(), "langchain_client.py", Some("stream")),
        };
        let mut cmd = client_command(program, script);
        cmd.args(mode).args([base_url, question]);
        cmd
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn installed(path: PathBuf) -> PathBuf {
    assert!(
        path.exists(),
        "{} is missing: run scripts/install-clients.sh (it installs the pinned client \
         libraries these tests drive)",
        path.display()
    );
    path
}

fn python() -> PathBuf {
    installed(root().join(".clients/venv/bin/python"))
}

fn node() -> PathBuf {
    installed(root().join("tests/clients/node_modules/openai/package.json"));
    PathBuf::from("node")
}

/// `program tests/clients/<script>`, with nothing from the caller's environment that
/// would send the libraries elsewhere.
fn client_command(program: PathBuf, script: &str) -> Command {
    sandboxed(program, &root().join("tests/clients").join(script), &root())
}

/// Runs a client script to its end; asserts it exited 0 and returns its last stdout line
/// as JSON.
async fn run(mut cmd: Command, what: &str, timeout: Duration) -> Value {
    let output = tokio::time::timeout(timeout, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {timeout:?}"))
        .unwrap_or_else(|e| panic!("{what}: could not start: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{stderr}\nstdout: {stdout}",
        output.status
    );
    let line = stdout.lines().rev().find(|l| !l.trim().is_empty());
    serde_json::from_str(line.unwrap_or_default())
        .unwrap_or_else(|e| panic!("{what}: last line is not JSON ({e}):\n{stdout}\n{stderr}"))
}

/// What one client saw of one answer.
struct Seen {
    client: Client,
    out: Value,
}

impl Seen {
    async fn ask(app: &TestApp, client: Client, question: &str) -> Seen {
        let cmd = client.command(&format!("{}/v1", app.base), question);
        let out = run(cmd, &format!("{client:?}"), Duration::from_secs(60)).await;
        Seen { client, out }
    }

    fn text(&self) -> &str {
        self.out["text"]
            .as_str()
            .unwrap_or_else(|| panic!("{:?}: no text: {}", self.client, self.out))
    }

    /// The answer's source as the client's user sees it: the body's `resilient_qa.source`,
    /// or for LangChain the `X-QA-Source` header.
    fn source(&self) -> &str {
        let source = if self.client.is_langchain() {
            &self.out["x_qa_source"]
        } else {
            &self.out["resilient_qa"]["source"]
        };
        source
            .as_str()
            .unwrap_or_else(|| panic!("{:?}: no source: {}", self.client, self.out))
    }

    /// What every answer shows, whatever its source: the request id, the end of the
    /// answer, usage where asked for; for LangChain, metadata merged across chunks
    /// without doubling (a second `finish_reason` would make it `stopstop`).
    fn check_shape(&self) {
        let (client, out) = (self.client, &self.out);
        assert!(
            out["x_request_id"]
                .as_str()
                .is_some_and(|id| !id.is_empty()),
            "{client:?}: X-Request-Id: {out}"
        );
        if client.is_langchain() {
            let meta = &out["response_metadata"];
            assert_eq!(meta["finish_reason"], "stop", "{client:?}: {out}");
            assert!(meta["model_name"].is_string(), "{client:?}: {out}");
            if client.streams() {
                assert!(out["chunks"].as_u64().unwrap() > 1, "{client:?}: {out}");
            }
            return;
        }
        let qa = &out["resilient_qa"];
        assert_eq!(
            qa["request_id"], out["x_request_id"],
            "{client:?}: resilient_qa.request_id is the X-Request-Id: {out}"
        );
        assert!(qa["degraded"].is_boolean(), "{client:?}: {out}");
        assert_eq!(out["finish_reason"], "stop", "{client:?}: {out}");
        assert!(out["model"].is_string(), "{client:?}: {out}");
        let usage = &out["usage"];
        for key in ["prompt_tokens", "completion_tokens", "total_tokens"] {
            assert!(usage[key].is_u64(), "{client:?}: usage.{key}: {out}");
        }
        if client.streams() {
            assert!(out["chunks"].as_u64().unwrap() > 1, "{client:?}: {out}");
        } else {
            assert_eq!(
                out["x_qa_source"], qa["source"],
                "{client:?}: X-QA-Source is the body's source: {out}"
            );
        }
    }

    /// `resilient_qa.continued`, which the streamed body carries when more than one
    /// call wrote the answer (LangChain never shows it).
    fn continued(&self) -> bool {
        self.out["resilient_qa"]["continued"] == true
    }
}

/// The simulator's answer from `model` to a question asked as is.
fn simulated(model: &str, question: &str) -> String {
    format!("[{model}] simulated answer to: {question}")
}

fn question(behaviour: &str, client: Client) -> String {
    format!("我的包裹在哪里? ({behaviour}, {client:?})")
}

/// The model tiers are asked the bare question (so the simulated answer ends with it).
fn bare_question(c: &mut Config) {
    for t in [&mut c.primary, &mut c.secondary] {
        t.prompt = "{question}".into();
        t.language_instruction = String::new();
    }
}

/// The simulator and a service as `helpers::paced_app_with` makes them, asked the bare
/// question.
async fn app_with(primary: Behavior, secondary: Behavior) -> (Redis, SimServer, TestApp) {
    paced_app_with(primary, secondary, bare_question).await
}

/// One test per client for a behaviour `async fn name(client: Client)`.
macro_rules! for_each_client {
    ($behaviour:ident) => {
        mod $behaviour {
            use super::Client::*;

            #[tokio::test]
            async fn openai_python_sync() {
                super::$behaviour(OpenAiPythonSync).await
            }

            #[tokio::test]
            async fn openai_python_async() {
                super::$behaviour(OpenAiPythonAsync).await
            }

            #[tokio::test]
            async fn openai_python_stream() {
                super::$behaviour(OpenAiPythonStream).await
            }

            #[tokio::test]
            async fn openai_node_stream() {
                super::$behaviour(OpenAiNodeStream).await
            }

            #[tokio::test]
            async fn langchain_invoke() {
                super::$behaviour(LangChainInvoke).await
            }

            #[tokio::test]
            async fn langchain_stream() {
                super::$behaviour(LangChainStream).await
            }
        }
    };
}

for_each_client!(a_healthy_primary_answers_and_the_client_sees_it_as_primary);
async fn a_healthy_primary_answers_and_the_client_sees_it_as_primary(client: Client) {
    let (_r, sim, app) = app_with(Behavior::default(), Behavior::default()).await;
    let q = question("healthy", client);

    let seen = Seen::ask(&app, client, &q).await;

    seen.check_shape();
    assert_eq!(seen.text(), simulated("gpt-4o", &q), "{}", seen.out);
    assert_eq!(seen.source(), "primary", "{}", seen.out);
    if client.is_langchain() {
        assert_eq!(
            seen.out["response_metadata"]["model_name"], "gpt-4o",
            "{}",
            seen.out
        );
    } else {
        assert_eq!(seen.out["resilient_qa"]["degraded"], false, "{}", seen.out);
        assert_eq!(seen.out["model"], "gpt-4o", "{}", seen.out);
        assert!(!seen.continued(), "{}", seen.out);
    }
    assert_eq!(sim.calls("gpt-4o"), 1);
}

for_each_client!(a_stream_cut_once_is_finished_by_the_primary_s_retry);
/// The primary's first call breaks after two pieces (a streamed call is cut; a one-shot
/// call is reset); its retry continues, or answers afresh: the client gets the whole
/// answer, once, from the primary.
async fn a_stream_cut_once_is_finished_by_the_primary_s_retry(client: Client) {
    let (_r, sim, app) = app_with(script(&["cut"]), Behavior::default()).await;
    let q = question("cut once", client);

    let seen = Seen::ask(&app, client, &q).await;

    seen.check_shape();
    assert_eq!(
        seen.text(),
        simulated("gpt-4o", &q),
        "nothing lost, nothing repeated: {}",
        seen.out
    );
    assert!(seen.text().ends_with(&q));
    assert_eq!(seen.source(), "primary", "{}", seen.out);
    if client.streams() && !client.is_langchain() {
        assert!(seen.continued(), "{}", seen.out);
    }
    assert_eq!(sim.calls("gpt-4o"), 2, "the cut call and its retry");
    assert_eq!(sim.calls("gpt-3.5-turbo"), 0);
}

for_each_client!(a_primary_whose_streams_always_break_is_finished_by_the_secondary);
/// Every primary call breaks after two pieces. A stream already under way is continued
/// by the secondary, whose text completes the primary's (the simulator's continuation):
/// the stitched text is the primary's whole answer, reported as the secondary's and
/// `continued`. A one-shot answer is the secondary's own, or the same stitched text if
/// the service streams from the models underneath; either way it ends with the question.
async fn a_primary_whose_streams_always_break_is_finished_by_the_secondary(client: Client) {
    let (_r, sim, app) = app_with(always("cut"), Behavior::default()).await;
    let q = question("always cut", client);

    let seen = Seen::ask(&app, client, &q).await;

    seen.check_shape();
    let text = seen.text();
    assert!(text.ends_with(&q), "a complete answer: {}", seen.out);
    if client.streams() {
        assert_eq!(text, simulated("gpt-4o", &q), "{}", seen.out);
    } else {
        assert!(
            text == simulated("gpt-3.5-turbo", &q) || text == simulated("gpt-4o", &q),
            "{}",
            seen.out
        );
    }
    if client == LangChainStream {
        // The headers went out before the secondary took over: they can only name the
        // tier that began the answer.
        assert!(
            ["primary", "secondary"].contains(&seen.source()),
            "{}",
            seen.out
        );
    } else {
        assert_eq!(seen.source(), "secondary", "{}", seen.out);
    }
    if client.streams() && !client.is_langchain() {
        assert!(seen.continued(), "{}", seen.out);
    }
    assert!(sim.calls("gpt-4o") >= 2, "the primary was retried");
    assert!(sim.calls("gpt-3.5-turbo") >= 1);
}

/// The seed's benchmark (python-langchain-design.md 9.1) through LangChain, against a
/// primary that fails half its calls at random: the client, which does not retry, sees
/// 100 answers and no error, each with its source in `X-QA-Source`.
#[tokio::test]
async fn the_seed_benchmark_through_langchain_gets_100_answers_over_a_half_failing_primary() {
    let redis = Redis::start();
    let flaky = Behavior {
        mix: BTreeMap::from([(Outcome::Status(503), 0.5)]),
        ..Default::default()
    };
    let sim = start_sim(SimConfig {
        models: BTreeMap::from([("gpt-4o".to_string(), flaky)]),
        seed: 42,
        ..Default::default()
    })
    .await;
    let mut config = stream_config(&redis, &sim);
    bare_question(&mut config);
    let app = TestApp::spawn(config).await;
    let mut cmd = client_command(python(), "langchain_bench.py");
    cmd.arg(format!("{}/v1", app.base));

    let report = run(cmd, "langchain_bench.py", Duration::from_secs(180)).await;

    println!("langchain benchmark, primary failing 50% (seed 42): {report}");
    assert_eq!(report["total"], 100, "{report}");
    assert_eq!(report["success"], 100, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    let sources = report["sources"].as_object().unwrap();
    let from_models: u64 = ["primary", "secondary"]
        .iter()
        .filter_map(|s| sources.get(*s).and_then(Value::as_u64))
        .sum();
    assert_eq!(
        from_models, 100,
        "every answer from a model tier, named in X-QA-Source: {report}"
    );
    assert!(
        sim.calls("gpt-4o") > 100,
        "the primary failed and was retried"
    );
}

/// The code block that follows `<!-- snippet: NAME -->` in the README.
fn readme_snippet(name: &str) -> String {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let marker = format!("<!-- snippet: {name} -->");
    let after = &readme[readme
        .find(&marker)
        .unwrap_or_else(|| panic!("README.md has no {marker}"))..];
    let start = after.find("```").unwrap();
    let body = &after[start..];
    let body = &body[body.find('\n').unwrap() + 1..];
    body[..body.find("```").unwrap()].to_string()
}

/// The README's client snippets, exactly as written but for the service's address: each
/// runs to its end and prints the answer's source.
#[tokio::test]
async fn the_readme_snippets_run_as_shown() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    let app = TestApp::spawn(test_config(&redis.url(), Some(&sim))).await;
    let dir = std::env::temp_dir().join(format!("qa-readme-snippets-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Node finds `openai` in a node_modules beside the script.
    let modules = dir.join("node_modules");
    if !modules.exists() {
        std::os::unix::fs::symlink(
            installed(root().join("tests/clients/node_modules")),
            &modules,
        )
        .unwrap();
    }
    let base = format!("{}/v1", app.base);
    for (name, file, program) in [
        ("openai-python", "openai_snippet.py", python()),
        ("openai-node", "openai_snippet.mjs", node()),
        ("langchain", "langchain_snippet.py", python()),
    ] {
        let code = readme_snippet(name).replace("http://localhost:8080/v1", &base);
        assert!(
            code.contains(&base),
            "{name}: the snippet names the service's URL"
        );
        let path = dir.join(file);
        std::fs::write(&path, code).unwrap();
        let mut cmd = sandboxed(program, &path, &dir);
        let output = tokio::time::timeout(Duration::from_secs(60), cmd.output())
            .await
            .unwrap_or_else(|_| panic!("{name}: no end within 60 s"))
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "{name} failed:\n{stderr}\n{stdout}"
        );
        assert!(
            stdout.contains("simulated answer to:"),
            "{name}: prints the answer:\n{stdout}"
        );
        // The first snippet's questions come from the primary, the later ones' from the
        // cache it filled.
        assert!(
            stdout
                .lines()
                .any(|l| ["primary", "cache"].contains(&l.trim_start_matches("source: "))),
            "{name}: prints the source:\n{stdout}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
