//! Test harness: a private `redis-server` per test on a free port, the simulator in
//! process behind real HTTP, and the service built from the library on port 0.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener as StdListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use deadpool_redis::redis;
use resilient_qa::app::App;
use resilient_qa::config::Config;
use resilient_qa::sim::{Behavior, SimConfig, SimServer};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `redis-server` of the test's own, killed when dropped.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    /// Extra arguments of `redis-server` (a password, TLS, a memory limit...).
    args: Vec<String>,
    /// Serving TLS only on `port`: ready once it accepts connections.
    tls: bool,
}

impl Redis {
    pub fn start() -> Redis {
        Self::start_with(&[])
    }

    /// Starts with extra `redis-server` arguments, e.g. `["--requirepass", "pw"]`.
    pub fn start_with(args: &[&str]) -> Redis {
        let mut r = Redis {
            port: free_port(),
            child: None,
            args: args.iter().map(|a| a.to_string()).collect(),
            tls: false,
        };
        r.restart();
        r
    }

    /// Serves TLS only, on `port`, with the certificate and key given and clients not
    /// asked for certificates.
    pub fn start_tls(cert: &std::path::Path, key: &std::path::Path) -> Redis {
        let port = free_port();
        let mut r = Redis {
            port,
            child: None,
            args: vec![
                "--port".into(),
                "0".into(),
                "--tls-port".into(),
                port.to_string(),
                "--tls-cert-file".into(),
                cert.display().to_string(),
                "--tls-key-file".into(),
                key.display().to_string(),
                "--tls-auth-clients".into(),
                "no".into(),
            ],
            tls: true,
        };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port and waits until it answers.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "redis already running");
        let mut cmd = Command::new("redis-server");
        if !self.tls {
            cmd.args(["--port", &self.port.to_string()]);
        }
        let child = cmd
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server not found: run scripts/install-deps.sh");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.tls && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                use std::io::{Read, Write};
                let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
                let mut buf = [0u8; 16];
                if s.write_all(b"PING\r\n").is_ok() && s.read(&mut buf).is_ok_and(|n| n > 0) {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not start on port {}", self.port);
    }

    /// SIGKILL: the server vanishes as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    /// Every key but the questions' leases (`…:lease`, which live a second or two
    /// while instances share a walk): the cached answers, mostly.
    pub async fn keys(&self) -> Vec<String> {
        let mut c = self.conn().await;
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query_async(&mut c)
            .await
            .unwrap();
        keys.into_iter()
            .filter(|k| !k.ends_with(":lease"))
            .collect()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

pub async fn start_sim(config: SimConfig) -> SimServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    SimServer::start(listener, config).await.unwrap()
}

/// A simulator whose models answer at once, until told otherwise.
pub async fn healthy_sim() -> SimServer {
    start_sim(SimConfig::default()).await
}

/// Test defaults: loopback port 0, the given Redis and simulator, short backoffs.
pub fn test_config(redis_url: &str, sim: Option<&SimServer>) -> Config {
    let mut c = Config::default();
    c.server.listen_addr = "127.0.0.1:0".into();
    c.server.shutdown_grace_secs = 5;
    c.redis.url = redis_url.into();
    if let Some(sim) = sim {
        c.openai.base_url = sim.base_url();
    }
    for t in [&mut c.primary, &mut c.secondary] {
        t.initial_backoff_ms = 5;
        t.max_backoff_ms = 20;
        t.attempt_timeout_ms = 2000;
    }
    c.server.request_timeout_ms = 10_000;
    // Tests of retries and fallbacks see every attempt: breakers and the retry budget
    // are out of the way unless a test turns them on.
    c.breaker.consecutive_failures = 1_000_000;
    c.breaker.min_calls = 1_000_000;
    c.retry_budget.min_per_sec = 1_000_000;
    c
}

/// A test service over `sim` for streams: the test defaults, and 500 ms to the first
/// token and between two pieces.
pub fn stream_config(redis: &Redis, sim: &SimServer) -> Config {
    let mut c = test_config(&redis.url(), Some(sim));
    for t in [&mut c.primary, &mut c.secondary] {
        t.first_token_timeout_ms = 500;
        t.stream_idle_timeout_ms = 500;
    }
    c
}

/// `outcome` streamed in small pieces at a quick pace (3 characters every 5 ms), a
/// stream fault after two of them.
pub fn paced(outcome: Behavior) -> Behavior {
    Behavior {
        stream_piece_chars: Some(3),
        stream_interval_ms: Some(5),
        stream_cut_after: Some(2),
        ..outcome
    }
}

/// A private Redis, a simulator whose primary and secondary behave as given, `paced`,
/// and a service on [`stream_config`].
pub async fn app_with(primary: Behavior, secondary: Behavior) -> (Redis, SimServer, TestApp) {
    paced_app_with(primary, secondary, |_| {}).await
}

/// [`app_with`], with the service's config edited by `edit` first.
pub async fn paced_app_with(
    primary: Behavior,
    secondary: Behavior,
    edit: impl FnOnce(&mut Config),
) -> (Redis, SimServer, TestApp) {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    sim.set_behavior("gpt-4o", paced(primary));
    sim.set_behavior("gpt-3.5-turbo", paced(secondary));
    let mut config = stream_config(&redis, &sim);
    edit(&mut config);
    let app = TestApp::spawn(config).await;
    (redis, sim, app)
}

/// `program script` run in `dir`, with nothing from the caller's environment that would
/// send the libraries elsewhere (a base URL, a proxy, LangSmith tracing).
pub fn sandboxed(
    program: impl AsRef<std::ffi::OsStr>,
    script: &std::path::Path,
    dir: &std::path::Path,
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(program);
    cmd.arg(script)
        .current_dir(dir)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .kill_on_drop(true);
    for var in [
        "OPENAI_BASE_URL",
        "OPENAI_API_BASE",
        "OPENAI_API_KEY",
        "OPENAI_ORG_ID",
        "OPENAI_PROJECT_ID",
        "LANGSMITH_TRACING",
        "LANGCHAIN_TRACING_V2",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// A running service.
pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestApp {
    pub async fn spawn(config: Config) -> TestApp {
        config.validate().unwrap();
        let app = App::build(config).await.unwrap();
        let addr = app.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run(async move {
            let _ = rx.await;
        }));
        TestApp {
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// `POST /ask` with a JSON question; returns the status and the JSON body.
    pub async fn ask(&self, question: &str) -> (u16, Value) {
        let resp = self
            .client
            .post(self.url("/ask"))
            .json(&serde_json::json!({ "question": question }))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap())
    }

    /// The answer's source, asserting a 200.
    pub async fn source_of(&self, question: &str) -> String {
        let (status, body) = self.ask(question).await;
        assert_eq!(status, 200, "{body}");
        body["source"].as_str().unwrap().to_string()
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let resp = self.client.get(self.url(path)).send().await.unwrap();
        (resp.status().as_u16(), resp.json().await.unwrap())
    }

    pub async fn metrics(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of one sample of `/metrics`, e.g. `qa_requests_total{source="cache"}`.
    pub async fn metric(&self, sample: &str) -> f64 {
        metric_value(&self.metrics().await, sample)
    }

    /// Graceful stop; waits for the drain.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Reads one sample from an exposition; labels must be written in the order the
/// exposition uses (alphabetical). A missing sample is 0.
pub fn metric_value(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(sample)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

pub fn always(outcome: &str) -> Behavior {
    Behavior::always(outcome.parse().unwrap())
}

pub fn script(outcomes: &[&str]) -> Behavior {
    Behavior::scripted(outcomes.iter().map(|o| o.parse().unwrap()))
}

/// Polls `check` every 50 ms until it holds or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}
