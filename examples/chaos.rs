//! Chaos suite: the real release binaries under steady load, one fault at a time.
//!
//! Run it through `scripts/chaos.sh` (which builds the release binaries first), or
//! directly: `cargo run --release --example chaos -- [--quick] [--scenario NAME]...`.
//!
//! For every scenario it starts FRESH processes on free loopback ports: a private
//! `redis-server`, the release `upstream-sim` and the release `resilient-qa`, drives 50
//! keep-alive clients that loop `POST /ask` (about 80% unique questions that reach the
//! models, 20% from a small hot set that the cache answers; in `stream_cut` and
//! `stream_hang` they ask for server-sent events and check every stream), injects one fault, and
//! measures what the clients saw plus the simulator's call counts and the service's
//! `/metrics` sampled every 250 ms. Two scenarios run more than one of a kind:
//! `replica_killed` (three services sharing one Redis behind a real HAProxy, one of them
//! killed) and `redis_failover` (the service in Sentinel mode over a primary, a replica
//! and three sentinels; the primary killed). Every child process is killed on exit, on
//! panic and on Ctrl-C / SIGTERM (guards with `Drop`). The results are printed as a table and
//! written to `docs/CHAOS.md`; the exit code is 1 if any check fails.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use deadpool_redis::redis;
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------
// Parameters of the suite

/// `server.request_timeout_ms` the suite runs the service with.
const DEADLINE_MS: u64 = 5000;
/// `breaker.open_ms` the suite runs the service with (the documented default).
const OPEN_MS: u64 = 5000;
/// Attempt timeouts of both tiers, scaled to fit the 5 s deadline the way the defaults
/// (15 s / 10 s) fit the default 20 s deadline: a hung primary leaves time for the rest.
const ATTEMPT_TIMEOUT_MS: u64 = 2000;
/// `server.shutdown_grace_secs` for the suite.
const GRACE_SECS: u64 = 10;
/// What the client may add to the server's deadline (scheduling, loopback, parsing) when
/// checking that the p99 is "within the deadline".
const DEADLINE_SLACK_MS: f64 = 250.0;
/// Concurrent looping clients.
const CLIENTS: usize = 50;
/// Share of questions drawn from the hot set.
const HOT_SHARE: f64 = 0.2;
/// Seed of the simulator's draws and of the clients' question choices.
const SEED: u64 = 42;
/// Upstream latency of the simulator.
const SIM_LATENCY_MS: u64 = 50;
/// Burst scenario: concurrency limit, simulator latency, burst size.
const BURST_LIMIT: u64 = 64;
const BURST_SIM_LATENCY_MS: u64 = 300;
const BURST_SIZE: usize = 500;
/// A `503 overloaded` must come back at once: within this, measured at the client.
const OVERLOADED_MAX_MS: f64 = 100.0;
/// Client timeout of one request: the deadline plus a margin, so that a request the
/// service never answers shows up as a transport error instead of stalling a client.
const CLIENT_TIMEOUT: Duration = Duration::from_millis(DEADLINE_MS + 5000);
/// Monitor period (`/metrics` and the simulator's call counts).
const SAMPLE_EVERY: Duration = Duration::from_millis(250);
/// Whole-suite safety net: past it everything is killed and the run fails.
const SUITE_BUDGET: Duration = Duration::from_secs(420);

// Scenario targets.
const TARGET_CALLS_PER_REQUEST: f64 = 1.2;
const TARGET_DOWN_P99_MS: f64 = 150.0;
const TARGET_FLAKY_PRIMARY_SHARE: f64 = 0.85;
const TARGET_FLAKY_P99_MS: f64 = 1000.0;
const TARGET_RECOVERY_MS: f64 = (OPEN_MS + 2000) as f64;

// Multi-replica scenarios.
/// `resilient-qa` processes behind HAProxy in `replica_killed`, named `r1`…`r3`.
const REPLICAS: usize = 3;
/// The replica killed: `r2`.
const KILLED_REPLICA: u8 = 2;
/// Clients per group that ask the same new questions at about the same time, so that
/// the replicas meet on a question and its lease in Redis decides who asks upstream.
const QUESTION_GROUP: usize = 5;
/// Upstream calls per distinct question across the replicas.
const TARGET_CALLS_PER_QUESTION: f64 = 1.05;
/// HAProxy checks `/readyz` every 500 ms and takes a replica out after one failure.
const TARGET_MARKED_DOWN_MS: f64 = 1000.0;
/// p99 of the requests started after the kill.
const TARGET_AFTER_KILL_P99_MS: f64 = 1000.0;
/// Redis hits again within this of the sentinels' promotion.
const TARGET_HITS_BACK_MS: f64 = 10_000.0;
/// The primary's name as the sentinels know it (`redis.sentinel_master`).
const SENTINEL_MASTER: &str = "mymaster";

// Streaming scenarios: the simulator's pace, and the stream timeouts of both tiers
// (the defaults, 5 s and 10 s, scaled to the 5 s deadline as the attempt timeouts are).
const STREAM_PIECE_CHARS: usize = 8;
const STREAM_INTERVAL_MS: u64 = 10;
const STREAM_CUT_AFTER: usize = 4;
const STREAM_CUT_SHARE: f64 = 0.3;
const FIRST_TOKEN_TIMEOUT_MS: u64 = 1250;
const STREAM_IDLE_TIMEOUT_MS: u64 = 2500;

const PRIMARY: &str = "gpt-4o";
const SECONDARY: &str = "gpt-3.5-turbo";

/// Questions asked over and over, so the cache has something to hit. None of them is a
/// canned question.
const HOT: [&str; 10] = [
    "Where is my order right now?",
    "How long does standard shipping take?",
    "Can I change the delivery address after ordering?",
    "How do I reset my account password?",
    "Do you offer gift wrapping?",
    "What payment methods do you accept?",
    "How do I apply a discount code?",
    "Can I cancel an order that has shipped?",
    "Do you ship to Canada?",
    "How do I contact a human agent?",
];

// ---------------------------------------------------------------------------------------
// Scenarios

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    RedisKilled,
    PrimaryDown,
    PrimaryHang,
    PrimaryFlaky,
    Burst,
    Sigterm,
    StreamCut,
    StreamHang,
    ReplicaKilled,
    RedisFailover,
}

impl Scenario {
    const ALL: [Scenario; 10] = [
        Scenario::RedisKilled,
        Scenario::PrimaryDown,
        Scenario::PrimaryHang,
        Scenario::PrimaryFlaky,
        Scenario::Burst,
        Scenario::Sigterm,
        Scenario::StreamCut,
        Scenario::StreamHang,
        Scenario::ReplicaKilled,
        Scenario::RedisFailover,
    ];

    fn name(self) -> &'static str {
        match self {
            Scenario::RedisKilled => "redis_killed",
            Scenario::PrimaryDown => "primary_down",
            Scenario::PrimaryHang => "primary_hang",
            Scenario::PrimaryFlaky => "primary_flaky",
            Scenario::Burst => "burst",
            Scenario::Sigterm => "sigterm",
            Scenario::StreamCut => "stream_cut",
            Scenario::StreamHang => "stream_hang",
            Scenario::ReplicaKilled => "replica_killed",
            Scenario::RedisFailover => "redis_failover",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Scenario::RedisKilled => {
                "memory cache off; `kill -9` Redis mid-run, restart it on the same port"
            }
            Scenario::PrimaryDown => "primary answers 100% 503, then healed",
            Scenario::PrimaryHang => "primary never answers (hang), then healed",
            Scenario::PrimaryFlaky => "primary fails 50% (503) at random, seeded",
            Scenario::Burst => "limit 64 in flight, sim at 300 ms; 500 concurrent requests at once",
            Scenario::Sigterm => "SIGTERM to the service under load",
            Scenario::StreamCut => "streaming clients; the primary cuts 30% of its streams mid-way",
            Scenario::StreamHang => {
                "streaming clients; the primary hangs (stall_first / hang), then healed"
            }
            Scenario::ReplicaKilled => {
                "3 replicas sharing one Redis behind HAProxy; `kill -9` one replica mid-run"
            }
            Scenario::RedisFailover => {
                "Sentinel mode, memory cache off; `kill -9` the Redis primary, a sentinel failover"
            }
        }
    }

    /// Phases in seconds: before the fault, the fault, after it.
    fn phases(self, quick: bool) -> (f64, f64, f64) {
        match (self, quick) {
            (Scenario::RedisKilled, false) => (4.0, 6.0, 10.0),
            (Scenario::RedisKilled, true) => (2.5, 3.0, 6.0),
            (Scenario::PrimaryDown | Scenario::PrimaryHang, false) => (3.0, 11.0, 9.0),
            (Scenario::PrimaryDown | Scenario::PrimaryHang, true) => (2.0, 6.0, 8.0),
            (Scenario::PrimaryFlaky, false) => (2.0, 16.0, 0.0),
            (Scenario::PrimaryFlaky, true) => (2.0, 8.0, 0.0),
            (Scenario::Burst, false) => (4.0, 0.0, 6.0),
            (Scenario::Burst, true) => (2.0, 0.0, 4.0),
            (Scenario::Sigterm, false) => (4.0, 0.0, 1.0),
            (Scenario::Sigterm, true) => (2.0, 0.0, 1.0),
            (Scenario::StreamCut, false) => (2.0, 14.0, 0.0),
            (Scenario::StreamCut, true) => (2.0, 7.0, 0.0),
            (Scenario::StreamHang, false) => (3.0, 10.0, 9.0),
            (Scenario::StreamHang, true) => (2.0, 6.0, 8.0),
            // The kill at the end of the first phase; the last runs from the kill.
            (Scenario::ReplicaKilled, false) => (4.0, 0.0, 8.0),
            (Scenario::ReplicaKilled, true) => (3.0, 0.0, 5.0),
            // The kill at the end of the first phase; the last runs from the promotion (and
            // on, up to 10.5 s, until Redis hits are seen again).
            (Scenario::RedisFailover, false) => (4.0, 0.0, 8.0),
            (Scenario::RedisFailover, true) => (3.0, 0.0, 5.0),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Child processes

/// A child process killed (SIGKILL) and reaped when dropped.
struct Proc {
    name: String,
    child: Option<Child>,
}

impl Proc {
    fn spawn(name: &str, cmd: &mut Command) -> Result<Proc, String> {
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {name} ({:?}): {e}", cmd.get_program()))?;
        Ok(Proc {
            name: name.to_owned(),
            child: Some(child),
        })
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The exit status if it has exited (and reaps it).
    fn try_wait(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status)
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Err(e) = child.kill() {
                // Already exited: nothing to do but reap.
                if e.kind() != std::io::ErrorKind::InvalidInput {
                    eprintln!("chaos: cannot kill {}: {e}", self.name);
                }
            }
            let _ = child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> Result<u16, String> {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

fn log_file(path: &Path) -> Result<Stdio, String> {
    File::create(path)
        .map(Stdio::from)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))
}

/// A private `redis-server` on a fixed port; can be killed and started again there.
struct Redis {
    port: u16,
    dir: PathBuf,
    /// What its logs are named after (`redis`, `primary`, `replica`).
    name: &'static str,
    /// More arguments of `redis-server` (`--replicaof 127.0.0.1 PORT` for a replica).
    extra: Vec<String>,
    proc: Option<Proc>,
    starts: u32,
}

impl Redis {
    async fn start(dir: &Path) -> Result<Redis, String> {
        Redis::start_as(dir, "redis", Vec::new()).await
    }

    async fn start_as(dir: &Path, name: &'static str, extra: Vec<String>) -> Result<Redis, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let mut redis = Redis {
            port: free_port()?,
            dir: dir.to_owned(),
            name,
            extra,
            proc: None,
            starts: 0,
        };
        redis.restart().await?;
        Ok(redis)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn restart(&mut self) -> Result<(), String> {
        self.starts += 1;
        let log = self.dir.join(format!("{}-{}.log", self.name, self.starts));
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log_file(&log)?)
            .stderr(Stdio::null());
        let proc =
            self.proc
                .insert(Proc::spawn("redis-server", &mut cmd).map_err(|e| {
                    format!("{e} (redis-server is needed: run scripts/install-deps.sh)")
                })?);
        wait_redis(self.port, proc, &log).await
    }

    /// SIGKILL, as in a crash.
    fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }
}

/// Waits until the `redis-server` (data node or sentinel) `proc` answers `PING` on `port`.
async fn wait_redis(port: u16, proc: &mut Proc, log: &Path) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if redis_ping(port).await {
            return Ok(());
        }
        if let Some(status) = proc.try_wait() {
            return Err(format!(
                "{} exited at start ({status}); see {}",
                proc.name,
                log.display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(format!("{} did not answer on port {port}", proc.name))
}

/// One command to the `redis-server` (or sentinel) on `port`, on a connection of its own;
/// `None` when it cannot be reached or the reply is not a `T`.
async fn redis_cmd<T: redis::FromRedisValue>(port: u16, args: &[&str]) -> Option<T> {
    let (name, rest) = args.split_first()?;
    let run = async {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).ok()?;
        let mut conn = client.get_multiplexed_async_connection().await.ok()?;
        redis::cmd(name)
            .arg(rest)
            .query_async::<T>(&mut conn)
            .await
            .ok()
    };
    tokio::time::timeout(Duration::from_secs(1), run)
        .await
        .ok()
        .flatten()
}

/// A primary, one replica (`--replicaof`) and three sentinels watching them (quorum 2,
/// the primary down after 1 s of silence), as `tests/api/topologies.rs` runs them.
struct SentinelGroup {
    primary: Redis,
    /// Held for its `Drop`.
    _replica: Redis,
    sentinels: Vec<(u16, Proc)>,
}

impl SentinelGroup {
    /// Starts the group and waits until it has formed: the replica in sync, and each
    /// sentinel seeing the other two. Returns it with how long forming took.
    async fn start(dir: &Path) -> Result<(SentinelGroup, f64), String> {
        let started = Instant::now();
        let primary = Redis::start_as(&dir.join("primary"), "primary", Vec::new()).await?;
        let replicaof = vec![
            "--replicaof".to_owned(),
            "127.0.0.1".to_owned(),
            primary.port.to_string(),
        ];
        let replica = Redis::start_as(&dir.join("replica"), "replica", replicaof).await?;
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            sentinels.push(start_sentinel(dir, primary.port).await?);
        }
        let group = SentinelGroup {
            primary,
            _replica: replica,
            sentinels,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (synced, knowing) = group.formation().await;
            if synced && knowing == group.sentinels.len() {
                return Ok((group, started.elapsed().as_secs_f64()));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the Sentinel group did not form within 20 s: replica in sync: {synced}; \
                     {knowing} of 3 sentinels see the other two"
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether the replica is in sync (`INFO replication` on the primary), and how many
    /// sentinels see two others (`SENTINEL master` → `num-other-sentinels`).
    async fn formation(&self) -> (bool, usize) {
        let synced = redis_cmd::<String>(self.primary.port, &["INFO", "replication"])
            .await
            .is_some_and(|i| i.contains("connected_slaves:1") && i.contains("state=online"));
        let mut knowing = 0;
        for (port, _) in &self.sentinels {
            let master: Option<Vec<String>> =
                redis_cmd(*port, &["SENTINEL", "master", SENTINEL_MASTER]).await;
            let others = master.and_then(|m| {
                let at = m.iter().position(|f| f == "num-other-sentinels")?;
                m.get(at + 1)?.parse::<usize>().ok()
            });
            if others == Some(2) {
                knowing += 1;
            }
        }
        (synced, knowing)
    }

    /// `QA__REDIS__URLS`: the sentinels.
    fn urls(&self) -> String {
        self.sentinels
            .iter()
            .map(|(port, _)| format!("redis://127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The port of the primary the first sentinel that answers names now.
    async fn named_primary(&self) -> Option<u16> {
        for (port, _) in &self.sentinels {
            let addr: Option<Vec<String>> = redis_cmd(
                *port,
                &["SENTINEL", "get-master-addr-by-name", SENTINEL_MASTER],
            )
            .await;
            if let Some(port) = addr.and_then(|a| a.get(1)?.parse().ok()) {
                return Some(port);
            }
        }
        None
    }
}

/// A Redis Sentinel (`redis-server CONF --sentinel`) watching the primary on
/// `primary_port`: its port and process.
async fn start_sentinel(dir: &Path, primary_port: u16) -> Result<(u16, Proc), String> {
    let port = free_port()?;
    let conf = dir.join(format!("sentinel-{port}.conf"));
    std::fs::write(
        &conf,
        format!(
            "port {port}\nbind 127.0.0.1\ndir {dir}\n\
             sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {primary_port} 2\n\
             sentinel down-after-milliseconds {SENTINEL_MASTER} 1000\n\
             sentinel failover-timeout {SENTINEL_MASTER} 10000\n",
            dir = dir.display(),
        ),
    )
    .map_err(|e| format!("write {}: {e}", conf.display()))?;
    let log = dir.join(format!("sentinel-{port}.log"));
    let mut cmd = Command::new("redis-server");
    cmd.arg(&conf)
        .arg("--sentinel")
        .stdin(Stdio::null())
        .stdout(log_file(&log)?)
        .stderr(Stdio::null());
    let mut proc = Proc::spawn("redis-sentinel", &mut cmd)
        .map_err(|e| format!("{e} (redis-server is needed: run scripts/install-deps.sh)"))?;
    wait_redis(port, &mut proc, &log).await?;
    Ok((port, proc))
}

/// `PING` over a raw socket (tokio's `io-util` is not enabled, so try_read/try_write).
async fn redis_ping(port: u16) -> bool {
    let connect = tokio::net::TcpStream::connect(("127.0.0.1", port));
    let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_millis(200), connect).await else {
        return false;
    };
    let io = async {
        stream.writable().await.ok()?;
        stream.try_write(b"PING\r\n").ok()?;
        let mut buf = [0u8; 16];
        loop {
            stream.readable().await.ok()?;
            match stream.try_read(&mut buf) {
                Ok(n) => return Some(buf[..n].starts_with(b"+PONG")),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(_) => return None,
            }
        }
    };
    matches!(
        tokio::time::timeout(Duration::from_millis(300), io).await,
        Ok(Some(true))
    )
}

/// Where the release binaries are: next to this example's `examples/` directory,
/// unless `CHAOS_BIN_DIR` says otherwise.
fn bin_dir() -> Result<PathBuf, String> {
    if let Ok(dir) = std::env::var("CHAOS_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_owned)
        .ok_or_else(|| format!("cannot locate the target directory from {}", exe.display()))
}

/// The processes of one scenario.
struct World {
    redis: Redis,
    /// Held for its `Drop`.
    _sim: Proc,
    sim_base: String,
    svc: Proc,
    svc_base: String,
    svc_log: PathBuf,
    svc_err: PathBuf,
    http: reqwest::Client,
}

struct WorldOpts {
    sim_latency_ms: u64,
    /// Extra command-line flags of the simulator (its default behaviour).
    sim_args: Vec<String>,
    env: Vec<(&'static str, String)>,
}

impl World {
    async fn start(ctx: &Ctx, sc: Scenario, opts: WorldOpts) -> Result<World, String> {
        let dir = scenario_dir(ctx, sc)?;
        let http = control_client()?;
        let redis = Redis::start(&dir).await?;
        let (sim, sim_base) = start_sim(ctx, &dir, &opts, &http).await?;
        let mut env = vec![("REDIS_URL", redis.url())];
        env.extend(opts.env);
        let svc = Service::start(ctx, &dir, "service", &sim_base, &env, &http).await?;
        Ok(World {
            redis,
            _sim: sim,
            sim_base,
            svc: svc.proc,
            svc_base: svc.base,
            svc_log: svc.log,
            svc_err: svc.err,
            http,
        })
    }

    /// Where the clients post, and what the monitor samples.
    fn target(&self) -> Target {
        Target {
            http: self.http.clone(),
            ask_url: format!("{}/ask", self.svc_base),
            sim_base: self.sim_base.clone(),
            metrics: vec![self.svc_base.clone()],
        }
    }

    /// Replaces a model's behaviour in the simulator.
    async fn put_model(&self, model: &str, behavior: Value) -> Result<(), String> {
        let url = format!("{}/control/models/{model}", self.sim_base);
        let resp = self
            .http
            .put(&url)
            .json(&behavior)
            .send()
            .await
            .map_err(|e| format!("PUT {url}: {e}"))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(format!("PUT {url}: HTTP {}", resp.status()))
        }
    }

    /// WARN/ERROR lines of the service by message (the most frequent first) and panics,
    /// for the notes.
    fn log_summary(&self) -> String {
        log_summary(&self.svc_log, &self.svc_err)
    }
}

/// The scenario's folder of logs (and config files).
fn scenario_dir(ctx: &Ctx, sc: Scenario) -> Result<PathBuf, String> {
    let dir = ctx.tmp.join(sc.name());
    std::fs::create_dir_all(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    Ok(dir)
}

/// The runner's own client for the control and metrics endpoints.
fn control_client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(3))
        .build()
        .map_err(|e| format!("http client: {e}"))
}

/// The release `upstream-sim` on a free port: its process and base URL.
async fn start_sim(
    ctx: &Ctx,
    dir: &Path,
    opts: &WorldOpts,
    http: &reqwest::Client,
) -> Result<(Proc, String), String> {
    let sim_port = free_port()?;
    let mut cmd = Command::new(ctx.bins.join("upstream-sim"));
    cmd.args(["--listen", &format!("127.0.0.1:{sim_port}")])
        .args(["--latency-ms", &opts.sim_latency_ms.to_string()])
        .args(["--seed", &SEED.to_string()])
        .args(&opts.sim_args)
        .env_clear()
        .envs(base_env())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log_file(&dir.join("sim.log"))?)
        .stderr(log_file(&dir.join("sim.err"))?);
    let sim = Proc::spawn("upstream-sim", &mut cmd)?;
    let sim_base = format!("http://127.0.0.1:{sim_port}");
    wait_http(http, &format!("{sim_base}/control/calls"), "upstream-sim").await?;
    Ok((sim, sim_base))
}

/// One release `resilient-qa` process on a free port.
struct Service {
    proc: Proc,
    base: String,
    log: PathBuf,
    err: PathBuf,
}

impl Service {
    /// Starts `resilient-qa` (logs `NAME.log` / `NAME.err` in `dir`) over the simulator,
    /// with the suite's settings and `env` (which names its Redis: `REDIS_URL`, or the
    /// `QA__REDIS__*` keys), and waits for `/healthz`.
    async fn start(
        ctx: &Ctx,
        dir: &Path,
        name: &str,
        sim_base: &str,
        env: &[(&'static str, String)],
        http: &reqwest::Client,
    ) -> Result<Service, String> {
        let port = free_port()?;
        let log = dir.join(format!("{name}.log"));
        let err = dir.join(format!("{name}.err"));
        let mut cmd = Command::new(ctx.bins.join("resilient-qa"));
        cmd.current_dir(&ctx.root)
            .env_clear()
            .envs(base_env())
            .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env("OPENAI_BASE_URL", format!("{sim_base}/v1"))
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "warn")
            .env("QA__SERVER__REQUEST_TIMEOUT_MS", DEADLINE_MS.to_string())
            .env("QA__SERVER__SHUTDOWN_GRACE_SECS", GRACE_SECS.to_string())
            .env("QA__BREAKER__OPEN_MS", OPEN_MS.to_string())
            .env(
                "QA__PRIMARY__ATTEMPT_TIMEOUT_MS",
                ATTEMPT_TIMEOUT_MS.to_string(),
            )
            .env(
                "QA__SECONDARY__ATTEMPT_TIMEOUT_MS",
                ATTEMPT_TIMEOUT_MS.to_string(),
            )
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(log_file(&log)?)
            .stderr(log_file(&err)?);
        let mut proc = Proc::spawn("resilient-qa", &mut cmd)?;
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = http.get(format!("{base}/healthz")).send().await
                && r.status().is_success()
            {
                break;
            }
            if let Some(status) = proc.try_wait() {
                return Err(format!(
                    "resilient-qa ({name}) exited at start ({status}): {}",
                    [tail(&err, 5), tail(&log, 5)].join(" ").trim()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "resilient-qa ({name}) did not answer /healthz within 20 s"
                ));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Ok(Service {
            proc,
            base,
            log,
            err,
        })
    }
}

/// WARN/ERROR lines of a service's log by message (the most frequent first) and panics.
fn log_summary(log: &Path, err: &Path) -> String {
    let out = std::fs::read_to_string(log).unwrap_or_default();
    let err = std::fs::read_to_string(err).unwrap_or_default();
    let mut by: BTreeMap<(String, String), usize> = BTreeMap::new();
    for line in out.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let level = v["level"].as_str().unwrap_or("?");
        if level == "WARN" || level == "ERROR" {
            let msg = v["message"].as_str().unwrap_or("?").to_owned();
            *by.entry((level.to_owned(), msg)).or_default() += 1;
        }
    }
    let mut top: Vec<_> = by.into_iter().collect();
    top.sort_by_key(|entry| std::cmp::Reverse(entry.1));
    let panics = out.matches("panicked").count() + err.matches("panicked").count();
    let listed: Vec<String> = top
        .iter()
        .take(4)
        .map(|((level, msg), n)| format!("{n}× {level} \"{msg}\""))
        .collect();
    format!(
        "service log: {}{}; {panics} panics",
        if listed.is_empty() {
            "no WARN/ERROR lines".to_owned()
        } else {
            listed.join(", ")
        },
        if top.len() > 4 {
            format!(" (+{} other messages)", top.len() - 4)
        } else {
            String::new()
        }
    )
}

/// The environment children get: nothing inherited but the basics, so a stray
/// `OPENAI_API_KEY`, `QA__…` or proxy variable cannot change what is measured.
fn base_env() -> Vec<(String, String)> {
    ["PATH", "HOME", "TMPDIR", "LANG"]
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| ((*k).to_owned(), v)))
        .collect()
}

async fn wait_http(http: &reqwest::Client, url: &str, what: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(r) = http.get(url).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Err(format!("{what} did not answer {url} within 10 s"))
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Debian's HAProxy (`/usr/sbin`, which a normal user's PATH may lack), or one on PATH.
fn haproxy_binary() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default();
    ["/usr/sbin", "/usr/local/sbin"]
        .iter()
        .map(PathBuf::from)
        .chain(on_path)
        .map(|dir| dir.join("haproxy"))
        .find(|p| p.is_file())
}

/// A real HAProxy in front of the replicas, with the shipped settings of
/// `config/haproxy/haproxy.cfg` (round robin, `retries 3`, `option redispatch`,
/// `retry-on conn-failure empty-response`, `option httpchk GET /readyz`) on the scenario's
/// addresses, faster checks (`inter 500ms fall 1 rise 2`), `X-Served-By` naming the
/// replica that answered, and a CSV stats page.
struct Balancer {
    /// Held for its `Drop`.
    _proc: Proc,
    base: String,
    stats_url: String,
}

/// One server as HAProxy's stats see it.
struct ServerState {
    /// `UP`, `DOWN`, `UP 1/2`, …
    status: String,
    /// Requests HAProxy sent it, tried on it or took away from it: `stot` + `econ` +
    /// `wretr` + `wredis`.
    routed: u64,
}

impl Balancer {
    /// Starts HAProxy over `servers` (`(name, "127.0.0.1:PORT")`) and waits until each of
    /// them has answered through it.
    async fn start(
        dir: &Path,
        servers: &[(String, String)],
        http: &reqwest::Client,
    ) -> Result<Balancer, String> {
        let bin = haproxy_binary().ok_or(
            "haproxy not found (looked in /usr/sbin, /usr/local/sbin and PATH): \
             install it with `scripts/install-deps.sh haproxy`",
        )?;
        let (front, stats) = (free_port()?, free_port()?);
        let lines: String = servers
            .iter()
            .map(|(name, addr)| format!("    server {name} {addr}\n"))
            .collect();
        let cfg_text = format!(
            "global\n    maxconn 4096\n\n\
             defaults\n    mode http\n    retries 3\n    option redispatch\n\
             \x20   retry-on conn-failure empty-response\n\
             \x20   timeout connect 5s\n    timeout client 60s\n    timeout server 60s\n\
             \x20   timeout http-request 10s\n    timeout http-keep-alive 10s\n\
             \x20   timeout queue 10s\n    timeout check 2s\n\n\
             frontend resilient_qa\n    bind 127.0.0.1:{front}\n\
             \x20   default_backend resilient_qa_replicas\n\n\
             frontend stats\n    bind 127.0.0.1:{stats}\n    stats enable\n    stats uri /stats\n\n\
             backend resilient_qa_replicas\n    balance roundrobin\n\
             \x20   option httpchk GET /readyz\n    http-check expect status 200\n\
             \x20   http-response set-header X-Served-By %[srv_name]\n\
             \x20   default-server inter 500ms fall 1 rise 2 check\n{lines}"
        );
        let cfg = dir.join("haproxy.cfg");
        std::fs::write(&cfg, cfg_text).map_err(|e| format!("write {}: {e}", cfg.display()))?;
        let check = Command::new(&bin)
            .args(["-c", "-q", "-f"])
            .arg(&cfg)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
        if !check.status.success() {
            return Err(format!(
                "haproxy -c refused {}: {}",
                cfg.display(),
                String::from_utf8_lossy(&check.stderr).trim()
            ));
        }
        let log = dir.join("haproxy.log");
        let mut cmd = Command::new(&bin);
        cmd.args(["-db", "-f"])
            .arg(&cfg)
            .env_clear()
            .envs(base_env())
            .stdin(Stdio::null())
            .stdout(log_file(&log)?)
            .stderr(log_file(&dir.join("haproxy.err"))?);
        let mut proc = Proc::spawn("haproxy", &mut cmd)?;
        let base = format!("http://127.0.0.1:{front}");
        let mut seen = std::collections::BTreeSet::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while seen.len() < servers.len() {
            if let Ok(r) = http.get(format!("{base}/healthz")).send().await
                && let Some(n) = served_by(r.headers())
            {
                seen.insert(n);
            }
            if let Some(status) = proc.try_wait() {
                return Err(format!(
                    "haproxy exited at start ({status}): {}",
                    tail(&dir.join("haproxy.err"), 5)
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "haproxy balanced over {} of {} replicas within 20 s",
                    seen.len(),
                    servers.len()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Balancer {
            _proc: proc,
            base,
            stats_url: format!("http://127.0.0.1:{stats}/stats;csv;norefresh"),
        })
    }

    /// The server `name` of the backend, from the CSV stats.
    async fn server(&self, http: &reqwest::Client, name: &str) -> Option<ServerState> {
        let text = http
            .get(&self.stats_url)
            .timeout(Duration::from_secs(1))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next()?.trim_start_matches("# ").split(',').collect();
        let col = |field: &str| header.iter().position(|h| *h == field);
        let (px, sv, status) = (col("pxname")?, col("svname")?, col("status")?);
        let counters: Vec<usize> = ["stot", "econ", "wretr", "wredis"]
            .iter()
            .filter_map(|f| col(f))
            .collect();
        lines.find_map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            if f.get(px) != Some(&"resilient_qa_replicas") || f.get(sv) != Some(&name) {
                return None;
            }
            Some(ServerState {
                status: f.get(status)?.to_string(),
                routed: counters
                    .iter()
                    .filter_map(|i| f.get(*i)?.parse::<u64>().ok())
                    .sum(),
            })
        })
    }
}

/// Calls the simulator has received, both models together.
async fn sim_calls(http: &reqwest::Client, sim_base: &str) -> Option<u64> {
    let calls: BTreeMap<String, u64> = http
        .get(format!("{sim_base}/control/calls"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    Some(calls.get(PRIMARY).copied().unwrap_or(0) + calls.get(SECONDARY).copied().unwrap_or(0))
}

/// Redis-layer cache hits a service has counted (`qa_cache_lookups_total{layer="redis",
/// result="hit"}`); 0 before the first.
async fn redis_hits(http: &reqwest::Client, svc_base: &str) -> Option<f64> {
    let text = http
        .get(format!("{svc_base}/metrics"))
        .timeout(Duration::from_secs(1))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    Some(
        metric_sum(
            &text,
            "qa_cache_lookups_total",
            &[("layer", "redis"), ("result", "hit")],
        )
        .unwrap_or(0.0),
    )
}

// ---------------------------------------------------------------------------------------
// Load

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Source {
    Cache,
    Primary,
    Secondary,
    Canned,
    Stale,
    Default,
    Other,
}

impl Source {
    fn parse(s: &str) -> Source {
        match s {
            "cache" => Source::Cache,
            "primary" => Source::Primary,
            "secondary" => Source::Secondary,
            "canned" => Source::Canned,
            "stale" => Source::Stale,
            "default" => Source::Default,
            _ => Source::Other,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Source::Cache => "cache",
            Source::Primary => "primary",
            Source::Secondary => "secondary",
            Source::Canned => "canned",
            Source::Stale => "stale",
            Source::Default => "default",
            Source::Other => "other",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Connect,
    Timeout,
    Other,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// 200 with a non-empty answer.
    Answered(Source),
    /// 200 whose body is not a proper answer.
    BadAnswer,
    /// 503 `overloaded`; whether `Retry-After` was set.
    Overloaded {
        retry_after: bool,
    },
    /// Any other status.
    Status(u16),
    Transport(Transport),
}

#[derive(Clone, Debug)]
struct Rec {
    /// Seconds since the load started.
    start: f64,
    end: f64,
    outcome: Outcome,
    burst: bool,
    question: Arc<str>,
    /// The replica that answered, from the load balancer's `X-Served-By: rN` (`N`).
    replica: Option<u8>,
    /// What a streamed request saw (`None` for a one-shot request, or a stream refused
    /// with a JSON error before any event).
    stream: Option<StreamRec>,
}

/// One server-sent-event answer, as the client assembled it.
#[derive(Clone, Copy, Debug)]
struct StreamRec {
    /// Seconds from sending the request to the first `delta` event.
    ttft: Option<f64>,
    /// The stream ended with exactly one `done`, as its last event.
    done: bool,
    /// The `delta` texts after the last `reset`, concatenated, equal `done.answer`.
    assembled_ok: bool,
    /// For answers from a model or the cache: `done.answer` is the simulator's whole
    /// answer (for a continued answer too: the simulator continues a cut text with the
    /// rest of the answer it began).
    whole: Option<bool>,
    continued: bool,
    resets: u32,
}

impl Rec {
    fn ms(&self) -> f64 {
        (self.end - self.start) * 1000.0
    }

    fn source(&self) -> Option<Source> {
        match self.outcome {
            Outcome::Answered(s) => Some(s),
            _ => None,
        }
    }

    fn is_5xx(&self) -> bool {
        match self.outcome {
            Outcome::Overloaded { .. } => true,
            Outcome::Status(s) => s >= 500,
            _ => false,
        }
    }
}

fn secs(t0: Instant) -> f64 {
    t0.elapsed().as_secs_f64()
}

fn classify_error(e: &reqwest::Error) -> Transport {
    if e.is_connect() {
        Transport::Connect
    } else if e.is_timeout() {
        Transport::Timeout
    } else {
        Transport::Other
    }
}

/// The replica named by the load balancer's `X-Served-By: rN` header: `N`.
fn served_by(headers: &reqwest::header::HeaderMap) -> Option<u8> {
    headers
        .get("x-served-by")?
        .to_str()
        .ok()?
        .strip_prefix('r')?
        .parse()
        .ok()
}

async fn ask(client: &reqwest::Client, url: &str, question: &str, t0: Instant, burst: bool) -> Rec {
    let start = secs(t0);
    let mut replica = None;
    let outcome = match client
        .post(url)
        .json(&json!({ "question": question }))
        .send()
        .await
    {
        Err(e) => Outcome::Transport(classify_error(&e)),
        Ok(resp) => {
            let status = resp.status().as_u16();
            let retry_after = resp.headers().contains_key("retry-after");
            replica = served_by(resp.headers());
            match resp.bytes().await {
                Err(e) => Outcome::Transport(classify_error(&e)),
                Ok(body) => {
                    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    match status {
                        200 => match (v["answer"].as_str(), v["source"].as_str()) {
                            (Some(a), Some(s)) if !a.trim().is_empty() => {
                                Outcome::Answered(Source::parse(s))
                            }
                            _ => Outcome::BadAnswer,
                        },
                        503 if v["error"]["code"] == "overloaded" => {
                            Outcome::Overloaded { retry_after }
                        }
                        other => Outcome::Status(other),
                    }
                }
            }
        }
    };
    Rec {
        start,
        end: secs(t0),
        outcome,
        burst,
        question: Arc::from(question),
        replica,
        stream: None,
    }
}

/// The simulator's answers, to tell a whole answer from a truncated one: the `ok` answer
/// of each model to each tier's prompt (with the service's language instruction).
struct Expect {
    primary_prompt: String,
    secondary_prompt: String,
    secondary_continue: String,
    primary_language: String,
    secondary_language: String,
    default_language: String,
}

impl Expect {
    /// The prompts of `config/default.toml`, which the service runs with.
    fn load(root: &Path) -> Result<Expect, String> {
        let file = root.join("config/default.toml");
        let cfg =
            resilient_qa::config::Config::load(Some(&file), &std::collections::HashMap::new())
                .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        Ok(Expect {
            primary_prompt: cfg.primary.prompt,
            secondary_prompt: cfg.secondary.prompt,
            secondary_continue: cfg.secondary.continue_prompt,
            primary_language: cfg.primary.language_instruction,
            secondary_language: cfg.secondary.language_instruction,
            default_language: cfg.canned.default_language,
        })
    }

    /// The simulator's whole `ok` answer of `model` to `question`: to the tier's prompt,
    /// with the language instruction the service adds for a question in another language
    /// than the default one.
    fn answer(&self, model: &str, question: &str) -> String {
        let (prompt, instruction) = if model == SECONDARY {
            (&self.secondary_prompt, &self.secondary_language)
        } else {
            (&self.primary_prompt, &self.primary_language)
        };
        let mut message = prompt.replace("{question}", question);
        let language =
            resilient_qa::faq::lang::detect(question).unwrap_or(self.default_language.as_str());
        if language != self.default_language && !instruction.is_empty() {
            message.push_str(&instruction.replace(
                "{language}",
                resilient_qa::faq::lang::english_name(language),
            ));
        }
        format!("[{model}] simulated answer to: {message}")
    }

    /// Whether `answer` is whole: `None` for sources the simulator did not write.
    fn whole(
        &self,
        question: &str,
        source: Source,
        model: Option<&str>,
        answer: &str,
        continued: bool,
    ) -> Option<bool> {
        let firsts = [
            self.answer(PRIMARY, question),
            self.answer(SECONDARY, question),
        ];
        match source {
            // Stitched answers are never cached: a hit is one model's whole answer.
            Source::Cache => Some(firsts.iter().any(|a| a == answer)),
            Source::Primary | Source::Secondary => {
                let model = model.unwrap_or(if source == Source::Primary {
                    PRIMARY
                } else {
                    SECONDARY
                });
                if !continued {
                    return Some(answer == self.answer(model, question));
                }
                // Text cut off by one call and continued by the next: the simulator
                // writes the rest of the answer the text began, so a stitched answer is
                // one model's whole answer, with nothing lost or repeated. Except when
                // the secondary continues the primary's text: it was sent its own prompt,
                // so the simulator cannot know the rest and answers the continuation
                // prompt; then the answer is a cut prefix of the primary's whole answer
                // followed by that answer.
                if firsts.iter().any(|a| a == answer) {
                    return Some(true);
                }
                let across = format!(
                    "[{SECONDARY}] simulated answer to: {}",
                    self.secondary_continue
                );
                Some(
                    model == SECONDARY
                        && answer.strip_suffix(across.as_str()).is_some_and(|cut| {
                            !cut.is_empty() && self.answer(PRIMARY, question).starts_with(cut)
                        }),
                )
            }
            _ => None,
        }
    }
}

/// `POST /ask` with `Accept: text/event-stream`, read event by event.
async fn ask_stream(
    client: &reqwest::Client,
    url: &str,
    question: &str,
    t0: Instant,
    expect: &Expect,
) -> Rec {
    use futures_util::StreamExt as _;
    let start = secs(t0);
    let sent = Instant::now();
    let mut stream = None;
    let mut replica = None;
    let outcome = match client
        .post(url)
        .header("accept", "text/event-stream")
        .json(&json!({ "question": question }))
        .send()
        .await
    {
        Err(e) => Outcome::Transport(classify_error(&e)),
        Ok(resp) => {
            let status = resp.status().as_u16();
            let retry_after = resp.headers().contains_key("retry-after");
            replica = served_by(resp.headers());
            let is_stream = resp
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("text/event-stream"));
            if status != 200 || !is_stream {
                match resp.bytes().await {
                    Err(e) => Outcome::Transport(classify_error(&e)),
                    Ok(body) => {
                        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                        match status {
                            200 => Outcome::BadAnswer,
                            503 if v["error"]["code"] == "overloaded" => {
                                Outcome::Overloaded { retry_after }
                            }
                            other => Outcome::Status(other),
                        }
                    }
                }
            } else {
                let mut body = resp.bytes_stream();
                let mut buf: Vec<u8> = Vec::new();
                let mut events: Vec<(String, Value)> = Vec::new();
                let mut ttft = None;
                let mut failed = None;
                while let Some(chunk) = body.next().await {
                    match chunk {
                        Err(e) => {
                            failed = Some(classify_error(&e));
                            break;
                        }
                        Ok(bytes) => {
                            buf.extend_from_slice(&bytes);
                            while let Some(pos) = buf.windows(2).position(|w| w == b"\n\n") {
                                let block: Vec<u8> = buf.drain(..pos + 2).collect();
                                if let Some(event) = parse_event(&block) {
                                    if ttft.is_none() && event.0 == "delta" {
                                        ttft = Some(sent.elapsed().as_secs_f64());
                                    }
                                    events.push(event);
                                }
                            }
                        }
                    }
                }
                let dones = events.iter().filter(|e| e.0 == "done").count();
                let done = dones == 1 && events.last().is_some_and(|e| e.0 == "done");
                let after_reset = events
                    .iter()
                    .rposition(|e| e.0 == "reset")
                    .map_or(0, |i| i + 1);
                let assembled: String = events[after_reset..]
                    .iter()
                    .filter(|e| e.0 == "delta")
                    .filter_map(|e| e.1["text"].as_str())
                    .collect();
                let resets = events.iter().filter(|e| e.0 == "reset").count() as u32;
                let data = events.last().map(|e| &e.1).filter(|_| done);
                let answer = data.and_then(|d| d["answer"].as_str()).unwrap_or("");
                let source = data.and_then(|d| d["source"].as_str()).map(Source::parse);
                let continued = data.is_some_and(|d| d["continued"] == true);
                let whole = source.and_then(|s| {
                    expect.whole(
                        question,
                        s,
                        data.and_then(|d| d["model"].as_str()),
                        answer,
                        continued,
                    )
                });
                stream = Some(StreamRec {
                    ttft,
                    done,
                    assembled_ok: done && assembled == answer,
                    whole,
                    continued,
                    resets,
                });
                match (done, source, failed) {
                    (true, Some(s), _) if !answer.trim().is_empty() => Outcome::Answered(s),
                    (false, _, Some(t)) => Outcome::Transport(t),
                    _ => Outcome::BadAnswer,
                }
            }
        }
    };
    Rec {
        start,
        end: secs(t0),
        outcome,
        burst: false,
        question: Arc::from(question),
        replica,
        stream,
    }
}

/// One server-sent event block: its name and its data (JSON); comments give `None`.
fn parse_event(block: &[u8]) -> Option<(String, Value)> {
    let text = String::from_utf8_lossy(block);
    let mut event = None;
    let mut data = String::new();
    for line in text.lines() {
        if let Some(e) = line.strip_prefix("event:") {
            event = Some(e.trim().to_owned());
        } else if let Some(d) = line.strip_prefix("data:") {
            data.push_str(d.strip_prefix(' ').unwrap_or(d));
        }
    }
    Some((event?, serde_json::from_str(&data).unwrap_or(Value::Null)))
}

fn load_client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(4)
        .connect_timeout(Duration::from_secs(2))
        .timeout(CLIENT_TIMEOUT)
        .build()
        .map_err(|e| format!("http client: {e}"))
}

/// What the looping clients ask, and how.
#[derive(Clone, Default)]
struct ClientOpts {
    /// Server-sent events, each stream checked against the simulator's answers.
    stream: Option<Arc<Expect>>,
    /// Clients `0..n`, `n..2n`, … form groups that make the same draws and so ask the same
    /// new questions in the same order, at about the same time (0 or 1: each on its own).
    group: usize,
}

/// One looping client: ~80% new questions, ~20% from the hot set.
async fn client_loop(
    id: usize,
    url: String,
    tag: String,
    t0: Instant,
    stop: Arc<AtomicBool>,
    opts: ClientOpts,
) -> Result<Vec<Rec>, String> {
    let client = load_client()?;
    let group = (opts.group > 1).then(|| id / opts.group);
    let seed = group.unwrap_or(id) as u64;
    let mut rng = fastrand::Rng::with_seed(SEED.wrapping_mul(1000) + seed);
    let mut recs = Vec::with_capacity(4096);
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let question = if rng.f64() < HOT_SHARE {
            HOT[rng.usize(..HOT.len())].to_owned()
        } else {
            n += 1;
            let asker = match group {
                Some(g) => format!("group {g}"),
                None => format!("client {id}"),
            };
            format!(
                "[{tag}] {asker} question {n}: what is the status of order #{}?",
                rng.u32(100_000..1_000_000)
            )
        };
        let rec = match &opts.stream {
            Some(expect) => ask_stream(&client, &url, &question, t0, expect).await,
            None => ask(&client, &url, &question, t0, false).await,
        };
        let answered = rec.source().is_some();
        recs.push(rec);
        if !answered {
            // No busy loop against a port nobody listens on, or against a service that
            // sheds load (a real client would back off too; this one does not wait for
            // the whole Retry-After, to keep the pressure on).
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(recs)
}

/// `size` concurrent requests with unique questions, fired together at `fire_at` (seconds
/// since `t0`). Each goes on a connection of its own opened beforehand (a `GET /healthz`,
/// 50 at a time), so the latency measured is the service's, not the kernel's accept queue
/// absorbing 500 handshakes at once.
async fn burst(
    url: String,
    health: String,
    tag: String,
    size: usize,
    t0: Instant,
    fire_at: f64,
) -> Result<Vec<Rec>, String> {
    let mut clients = Vec::with_capacity(size);
    for _ in 0..size {
        clients.push(
            reqwest::Client::builder()
                .no_proxy()
                .tcp_nodelay(true)
                .pool_max_idle_per_host(1)
                .connect_timeout(Duration::from_secs(5))
                .timeout(CLIENT_TIMEOUT)
                .build()
                .map_err(|e| format!("http client: {e}"))?,
        );
    }
    for chunk in clients.chunks(50) {
        let warm: Vec<_> = chunk
            .iter()
            .map(|c| {
                let (c, health) = (c.clone(), health.clone());
                tokio::spawn(async move { c.get(health).send().await.is_ok() })
            })
            .collect();
        for w in warm {
            let _ = w.await;
        }
    }
    let at = t0 + Duration::from_secs_f64(fire_at);
    let fire = Arc::new(tokio::sync::Barrier::new(size));
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, client)| {
            let (url, fire) = (url.clone(), fire.clone());
            let question = format!("[{tag}] burst question {i}: is my parcel insured?");
            tokio::spawn(async move {
                tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
                fire.wait().await;
                ask(&client, &url, &question, t0, true).await
            })
        })
        .collect();
    let mut recs = Vec::with_capacity(size);
    for t in tasks {
        recs.push(t.await.map_err(|e| format!("burst task: {e}"))?);
    }
    Ok(recs)
}

// ---------------------------------------------------------------------------------------
// Monitor: the simulator's call counts and the service's metrics, every 250 ms

#[derive(Clone, Debug, Default)]
struct Sample {
    t: f64,
    /// Calls the simulator received, both models together; `None` if unreachable.
    calls: Option<u64>,
    redis_hits: Option<f64>,
    /// `qa_circuit_state{dependency="primary"|"redis"}`, when exported.
    primary_circuit: Option<f64>,
    redis_circuit: Option<f64>,
}

/// Samples the simulator and the `/metrics` of every service in `metrics` (their
/// counters summed, their circuits' highest state; a service that does not answer
/// counts for nothing).
async fn monitor(
    http: reqwest::Client,
    sim_base: String,
    metrics: Vec<String>,
    t0: Instant,
    stop: Arc<AtomicBool>,
) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let before = secs(t0);
        let calls = async {
            let r = http
                .get(format!("{sim_base}/control/calls"))
                .timeout(Duration::from_secs(1))
                .send()
                .await
                .ok()?;
            r.json::<BTreeMap<String, u64>>().await.ok()
        };
        let texts = futures_util::future::join_all(metrics.iter().map(|base| {
            let http = &http;
            async move {
                let r = http
                    .get(format!("{base}/metrics"))
                    .timeout(Duration::from_secs(1))
                    .send()
                    .await
                    .ok()?;
                r.text().await.ok()
            }
        }));
        let (calls, texts) = tokio::join!(calls, texts);
        let t = (before + secs(t0)) / 2.0;
        let texts: Vec<String> = texts.into_iter().flatten().collect();
        let over = |name: &str, labels: &[(&str, &str)], fold: fn(f64, f64) -> f64| {
            texts
                .iter()
                .filter_map(|text| metric_sum(text, name, labels))
                .reduce(fold)
        };
        samples.push(Sample {
            t,
            calls: calls.as_ref().map(|c| {
                c.get(PRIMARY).copied().unwrap_or(0) + c.get(SECONDARY).copied().unwrap_or(0)
            }),
            redis_hits: over(
                "qa_cache_lookups_total",
                &[("layer", "redis"), ("result", "hit")],
                |a, b| a + b,
            ),
            primary_circuit: over("qa_circuit_state", &[("dependency", "primary")], f64::max),
            redis_circuit: over("qa_circuit_state", &[("dependency", "redis")], f64::max),
        });
    }
    samples
}

/// Sum of the samples of `name` whose labels include `labels`; `None` when there is none.
fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut sum = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series_name, label_text, rest) = match line.find('{') {
            Some(open) => {
                let Some(close) = line.rfind('}') else {
                    continue;
                };
                (&line[..open], &line[open + 1..close], &line[close + 1..])
            }
            None => match line.split_once(char::is_whitespace) {
                Some((n, rest)) => (n, "", rest),
                None => continue,
            },
        };
        if series_name != name {
            continue;
        }
        let found = parse_labels(label_text);
        if !labels
            .iter()
            .all(|(k, v)| found.get(*k).is_some_and(|f| f == v))
        {
            continue;
        }
        if let Some(Ok(value)) = rest.split_whitespace().next().map(str::parse::<f64>) {
            *sum.get_or_insert(0.0) += value;
        }
    }
    sum
}

/// `a="x",b="y\"z"` → map.
fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() || chars.next() != Some('"') {
            break;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => break,
                },
                '"' => break,
                c => value.push(c),
            }
        }
        out.insert(key.trim().to_owned(), value);
    }
    out
}

// ---------------------------------------------------------------------------------------
// One run of load against a world

struct Load {
    t0: Instant,
    stop: Arc<AtomicBool>,
    clients: Vec<tokio::task::JoinHandle<Result<Vec<Rec>, String>>>,
    monitor: Option<tokio::task::JoinHandle<Vec<Sample>>>,
    extra: Vec<tokio::task::JoinHandle<Result<Vec<Rec>, String>>>,
    url: String,
    tag: String,
}

/// A scenario that bails out early (`?`) must not leave its clients looping.
impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for handle in self.clients.iter().chain(&self.extra) {
            handle.abort();
        }
        if let Some(monitor) = &self.monitor {
            monitor.abort();
        }
    }
}

struct Data {
    recs: Vec<Rec>,
    samples: Vec<Sample>,
}

/// Where a load goes: the URL the clients post to, and what the monitor samples.
struct Target {
    http: reqwest::Client,
    ask_url: String,
    sim_base: String,
    /// Base URLs of the services whose `/metrics` the monitor reads.
    metrics: Vec<String>,
}

impl Load {
    fn start(world: &World, sc: Scenario) -> Load {
        Load::start_with(world, sc, None)
    }

    /// With `stream`, the clients ask for server-sent events and check every answer.
    fn start_with(world: &World, sc: Scenario, stream: Option<Arc<Expect>>) -> Load {
        let opts = ClientOpts {
            stream,
            ..ClientOpts::default()
        };
        Load::start_on(world.target(), sc, opts)
    }

    fn start_on(target: Target, sc: Scenario, opts: ClientOpts) -> Load {
        let t0 = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let url = target.ask_url;
        let tag = format!("{}-{}", sc.name(), unix_secs());
        let clients = (0..CLIENTS)
            .map(|id| {
                tokio::spawn(client_loop(
                    id,
                    url.clone(),
                    tag.clone(),
                    t0,
                    stop.clone(),
                    opts.clone(),
                ))
            })
            .collect();
        let monitor = tokio::spawn(monitor(
            target.http,
            target.sim_base,
            target.metrics,
            t0,
            stop.clone(),
        ));
        Load {
            t0,
            stop,
            clients,
            monitor: Some(monitor),
            extra: Vec::new(),
            url,
            tag,
        }
    }

    fn now(&self) -> f64 {
        secs(self.t0)
    }

    async fn sleep_to(&self, t: f64) {
        let at = self.t0 + Duration::from_secs_f64(t.max(0.0));
        tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
    }

    /// Prepares `size` connections now and fires one request on each at `fire_at`.
    fn burst(&mut self, size: usize, fire_at: f64) {
        self.extra.push(tokio::spawn(burst(
            self.url.clone(),
            self.url.replace("/ask", "/healthz"),
            self.tag.clone(),
            size,
            self.t0,
            fire_at,
        )));
    }

    /// Stops the clients (each finishes its request in flight) and the monitor.
    async fn finish(mut self) -> Result<Data, String> {
        self.stop.store(true, Ordering::Relaxed);
        let mut recs = Vec::new();
        let limit = CLIENT_TIMEOUT + Duration::from_secs(5);
        let handles = std::mem::take(&mut self.clients)
            .into_iter()
            .chain(std::mem::take(&mut self.extra));
        for handle in handles {
            let abort = handle.abort_handle();
            match tokio::time::timeout(limit, handle).await {
                Ok(Ok(Ok(r))) => recs.extend(r),
                Ok(Ok(Err(e))) => return Err(e),
                Ok(Err(e)) => return Err(format!("load task failed: {e}")),
                Err(_) => {
                    abort.abort();
                    return Err("a load client did not stop".into());
                }
            }
        }
        let samples = match self.monitor.take() {
            Some(monitor) => monitor
                .await
                .map_err(|e| format!("monitor task failed: {e}"))?,
            None => Vec::new(),
        };
        recs.sort_by(|a, b| a.start.total_cmp(&b.start));
        Ok(Data { recs, samples })
    }
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

// ---------------------------------------------------------------------------------------
// Analysis

#[derive(Clone, Debug)]
struct Check {
    name: String,
    measured: String,
    target: String,
    pass: bool,
}

fn check(name: &str, measured: String, target: &str, pass: bool) -> Check {
    Check {
        name: name.to_owned(),
        measured,
        target: target.to_owned(),
        pass,
    }
}

#[derive(Clone, Debug, Default)]
struct Report {
    name: &'static str,
    requests: usize,
    ok: usize,
    s5xx: usize,
    overloaded: usize,
    transport: usize,
    p50: Option<f64>,
    p99: Option<f64>,
    max: Option<f64>,
    calls_per_request: Option<f64>,
    primary_share: Option<f64>,
    recovery_ms: Option<f64>,
    /// Streaming scenarios: client-measured p99 from sending to the first `delta`, over
    /// the streams started in the fault's window.
    ttft_p99: Option<f64>,
    /// Streaming scenarios: share of the model answers that carry `continued`.
    continued_share: Option<f64>,
    checks: Vec<Check>,
    notes: Vec<String>,
}

impl Report {
    fn failed(name: &'static str, error: String) -> Report {
        Report {
            name,
            checks: vec![check("scenario ran", error, "ran to completion", false)],
            ..Report::default()
        }
    }

    fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.pass)
    }
}

/// Nearest-rank percentile of latencies in ms.
fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn latencies<'a>(recs: impl Iterator<Item = &'a Rec>) -> Vec<f64> {
    let mut v: Vec<f64> = recs.filter(|r| r.source().is_some()).map(Rec::ms).collect();
    v.sort_by(f64::total_cmp);
    v
}

fn in_window(r: &Rec, from: f64, to: f64) -> bool {
    r.start >= from && r.start < to
}

/// Sources of the answers, for the notes.
fn sources_note<'a>(label: &str, recs: impl Iterator<Item = &'a Rec>) -> String {
    let mut by: BTreeMap<Source, usize> = BTreeMap::new();
    for r in recs {
        if let Some(s) = r.source() {
            *by.entry(s).or_default() += 1;
        }
    }
    let parts: Vec<String> = by
        .iter()
        .map(|(s, n)| format!("{} {n}", s.name()))
        .collect();
    format!(
        "{label}: {}",
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join(", ")
        }
    )
}

/// Model-bound answers (not from the cache) in a window, and the share from the primary.
fn primary_share(recs: &[Rec], from: f64, to: f64) -> (usize, Option<f64>) {
    let answered: Vec<Source> = recs
        .iter()
        .filter(|r| in_window(r, from, to))
        .filter_map(Rec::source)
        .filter(|s| *s != Source::Cache)
        .collect();
    let primary = answered.iter().filter(|s| **s == Source::Primary).count();
    let share = (!answered.is_empty()).then(|| primary as f64 / answered.len() as f64);
    (answered.len(), share)
}

/// Upstream calls (both models) per answered request over `[from, to]`, using the monitor
/// samples nearest inside the window and the answers completed between them. Returns
/// (calls per answer that needed a model, calls per answer of any source, calls, answers).
fn calls_per_request(data: &Data, from: f64, to: f64) -> Option<(f64, f64, u64, usize)> {
    let inside: Vec<&Sample> = data
        .samples
        .iter()
        .filter(|s| s.t >= from && s.t <= to && s.calls.is_some())
        .collect();
    let (a, b) = (inside.first()?, inside.last()?);
    if b.t - a.t < 0.5 {
        return None;
    }
    let calls = b.calls? - a.calls?;
    let done = |model_only: bool| {
        data.recs
            .iter()
            .filter(|r| r.end >= a.t && r.end < b.t)
            .filter_map(Rec::source)
            .filter(|s| !model_only || *s != Source::Cache)
            .count()
    };
    let (model_bound, all) = (done(true), done(false));
    if model_bound == 0 || all == 0 {
        return None;
    }
    Some((
        calls as f64 / model_bound as f64,
        calls as f64 / all as f64,
        calls,
        model_bound,
    ))
}

/// First answer from the primary among requests started after `t`: its completion time
/// minus `t`, in ms.
fn recovery_after(recs: &[Rec], t: f64, source: Source) -> Option<f64> {
    recs.iter()
        .filter(|r| r.start >= t && r.source() == Some(source))
        .map(|r| r.end)
        .min_by(f64::total_cmp)
        .map(|end| (end - t) * 1000.0)
}

fn max_circuit(samples: &[Sample], from: f64, to: f64, pick: fn(&Sample) -> Option<f64>) -> String {
    let values: Vec<f64> = samples
        .iter()
        .filter(|s| s.t >= from && s.t <= to)
        .filter_map(pick)
        .collect();
    if values.is_empty() {
        "not exported".into()
    } else {
        let max = values.iter().copied().fold(0.0, f64::max);
        let name = match max as i64 {
            0 => "closed",
            1 => "half-open",
            _ => "open",
        };
        format!("max {max} ({name})")
    }
}

/// How a record counts toward "every accepted request answered".
#[derive(PartialEq, Eq)]
enum Verdict {
    Answered,
    /// Not a failure in this scenario (e.g. `overloaded` in the burst, refusals after
    /// SIGTERM).
    Excused,
    Failure,
}

/// The counts, percentiles and the three checks every scenario gets.
fn common(report: &mut Report, recs: &[Rec], verdict: impl Fn(&Rec) -> Verdict, overload_ok: bool) {
    report.requests = recs.len();
    report.ok = recs.iter().filter(|r| r.source().is_some()).count();
    report.overloaded = recs
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Overloaded { .. }))
        .count();
    report.s5xx = recs.iter().filter(|r| r.is_5xx()).count();
    let excused = recs
        .iter()
        .filter(|r| verdict(r) == Verdict::Excused)
        .count();
    let failures: Vec<&Rec> = recs
        .iter()
        .filter(|r| verdict(r) == Verdict::Failure)
        .collect();
    report.transport = recs
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Transport(_)) && verdict(r) == Verdict::Failure)
        .count();
    let lat = latencies(recs.iter());
    report.p50 = percentile(&lat, 0.50);
    report.p99 = percentile(&lat, 0.99);
    report.max = lat.last().copied();

    // A 5xx the scenario excuses (an `overloaded` in the burst, a request in flight on a
    // replica killed under it) is not held against it.
    let bad_5xx = recs
        .iter()
        .filter(|r| r.is_5xx() && verdict(r) != Verdict::Excused)
        .count();
    report.checks.push(check(
        if overload_ok {
            "no 5xx but overloaded"
        } else {
            "no 5xx"
        },
        format!("{bad_5xx}"),
        "0",
        bad_5xx == 0,
    ));
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for r in &failures {
        let k = match r.outcome {
            Outcome::Transport(t) => format!("transport {t:?}").to_lowercase(),
            Outcome::Status(s) => format!("HTTP {s}"),
            Outcome::Overloaded { .. } => "HTTP 503 overloaded".into(),
            Outcome::BadAnswer => "200 without an answer".into(),
            Outcome::Answered(s) => format!("{} answer", s.name()),
        };
        *kinds.entry(k).or_default() += 1;
    }
    let detail = kinds
        .iter()
        .map(|(k, n)| format!("{k}: {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    report.checks.push(check(
        "every accepted request answered",
        if failures.is_empty() {
            format!("{} failed ({excused} not accepted, excused)", 0)
        } else {
            format!("{} failed ({detail}); {excused} excused", failures.len())
        },
        "0 failed",
        failures.is_empty(),
    ));
    let limit = DEADLINE_MS as f64 + DEADLINE_SLACK_MS;
    report.checks.push(check(
        "p99 within deadline",
        fmt_ms(report.p99),
        &format!("≤ {DEADLINE_MS} ms (+{DEADLINE_SLACK_MS:.0} ms client slack)"),
        report.p99.is_some_and(|p| p <= limit),
    ));
}

fn default_verdict(r: &Rec) -> Verdict {
    if r.source().is_some() {
        Verdict::Answered
    } else {
        Verdict::Failure
    }
}

fn fmt_ms(v: Option<f64>) -> String {
    match v {
        None => "—".into(),
        Some(v) if v < 10.0 => format!("{v:.1} ms"),
        Some(v) => format!("{v:.0} ms"),
    }
}

fn fmt_pct(v: Option<f64>) -> String {
    v.map_or("—".into(), |v| format!("{:.1}%", v * 100.0))
}

// ---------------------------------------------------------------------------------------
// The scenarios

struct Ctx {
    root: PathBuf,
    bins: PathBuf,
    tmp: PathBuf,
    quick: bool,
    expect: Arc<Expect>,
}

fn default_opts() -> WorldOpts {
    WorldOpts {
        sim_latency_ms: SIM_LATENCY_MS,
        sim_args: Vec::new(),
        env: Vec::new(),
    }
}

/// CPU time in clock ticks: (busy ticks of the whole machine, ticks of this process and
/// of its reaped children), from `/proc`. `None` off Linux.
fn cpu_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let busy = cpu.iter().take(8).sum::<u64>() - cpu.get(3)? - cpu.get(4)?;
    let own = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command: state is field 3, utime 14 … cstime 17.
    let fields: Vec<&str> = own.rsplit_once(')')?.1.split_whitespace().collect();
    let ours = fields
        .get(11..15)?
        .iter()
        .filter_map(|v| v.parse::<u64>().ok())
        .sum();
    Some((busy, ours))
}

/// How much CPU the suite (runner and its children) and everything else on the machine
/// used during a scenario, in cores.
fn cpu_note(before: Option<(u64, u64)>, after: Option<(u64, u64)>, secs: f64) -> Option<String> {
    let ((b0, o0), (b1, o1)) = (before?, after?);
    // USER_HZ is 100 on every Linux the suite runs on.
    let cores = |ticks: u64| ticks as f64 / 100.0 / secs.max(0.001);
    let ours = cores(o1.saturating_sub(o0));
    let others = cores((b1.saturating_sub(b0)).saturating_sub(o1.saturating_sub(o0)));
    let n = std::thread::available_parallelism().map_or(0, |n| n.get());
    Some(format!(
        "CPU: the suite used {ours:.2} cores on average, other processes {others:.2} (of {n}){}",
        if others > 0.5 {
            " — the machine was shared: latency figures are inflated"
        } else {
            ""
        }
    ))
}

async fn run_scenario(ctx: &Ctx, sc: Scenario) -> Report {
    let started = Instant::now();
    let cpu_before = cpu_ticks();
    eprintln!("chaos: {} — {}", sc.name(), sc.describe());
    let result = match sc {
        Scenario::RedisKilled => redis_killed(ctx).await,
        Scenario::PrimaryDown => primary_fault(ctx, sc).await,
        Scenario::PrimaryHang => primary_fault(ctx, sc).await,
        Scenario::PrimaryFlaky => primary_flaky(ctx).await,
        Scenario::Burst => burst_scenario(ctx).await,
        Scenario::Sigterm => sigterm(ctx).await,
        Scenario::StreamCut | Scenario::StreamHang => stream_fault(ctx, sc).await,
        Scenario::ReplicaKilled => replica_killed(ctx).await,
        Scenario::RedisFailover => redis_failover(ctx).await,
    };
    let mut report = result.unwrap_or_else(|e| Report::failed(sc.name(), e));
    report.name = sc.name();
    if report.requests > 0
        && let Some(note) = cpu_note(cpu_before, cpu_ticks(), started.elapsed().as_secs_f64())
    {
        report.notes.push(note);
    }
    report.notes.push(format!(
        "wall time {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    let failed: Vec<&str> = report
        .checks
        .iter()
        .filter(|c| !c.pass)
        .map(|c| c.name.as_str())
        .collect();
    eprintln!(
        "chaos: {} → {} requests, {}",
        sc.name(),
        report.requests,
        if failed.is_empty() {
            "PASS".to_owned()
        } else {
            format!("FAIL ({})", failed.join("; "))
        }
    );
    report
}

async fn redis_killed(ctx: &Ctx) -> Result<Report, String> {
    let sc = Scenario::RedisKilled;
    let (warm, fault, after) = sc.phases(ctx.quick);
    let mut opts = default_opts();
    // With the memory layer on, hot questions would keep hitting memory and hide whether
    // Redis is used again after it returns.
    opts.env.push(("QA__CACHE__MEMORY_MAX_ENTRIES", "0".into()));
    let mut world = World::start(ctx, sc, opts).await?;
    let load = Load::start(&world, sc);
    load.sleep_to(warm).await;
    let t_kill = load.now();
    world.redis.kill();
    load.sleep_to(warm + fault).await;
    world.redis.restart().await?;
    let t_back = load.now();
    load.sleep_to(warm + fault + after).await;
    let data = load.finish().await?;
    let log = world.log_summary();
    drop(world);

    let mut r = Report::default();
    common(&mut r, &data.recs, default_verdict, false);
    let hits_at = |t: f64, last: bool| {
        let mut it = data
            .samples
            .iter()
            .filter(|s| s.t >= t && s.redis_hits.is_some());
        if last { it.next_back() } else { it.next() }.and_then(|s| s.redis_hits)
    };
    let before = hits_at(0.0, false)
        .zip(hits_at(t_kill, false))
        .map(|(a, b)| b - a);
    let after_delta = hits_at(t_back, false)
        .zip(hits_at(t_back, true))
        .map(|(a, b)| b - a);
    let cache_after = data
        .recs
        .iter()
        .filter(|x| x.start >= t_back && x.source() == Some(Source::Cache))
        .count();
    r.recovery_ms = recovery_after(&data.recs, t_back, Source::Cache);
    r.checks.push(check(
        "redis hits before the kill (sanity)",
        before.map_or("not exported".into(), |d| format!("+{d:.0}")),
        "> 0",
        before.is_some_and(|d| d > 0.0),
    ));
    r.checks.push(check(
        "cache hits resume after Redis returns",
        format!(
            "redis-layer hits +{}, {cache_after} \"cache\" answers after restart; first after {}",
            after_delta.map_or("?".into(), |d| format!("{d:.0}")),
            fmt_ms(r.recovery_ms)
        ),
        "both > 0",
        after_delta.is_some_and(|d| d > 0.0) && cache_after > 0,
    ));
    let down: Vec<&Rec> = data
        .recs
        .iter()
        .filter(|x| in_window(x, t_kill, t_back))
        .collect();
    let lat = latencies(down.iter().copied());
    r.primary_share = primary_share(&data.recs, t_kill, t_back).1;
    r.notes.push(format!(
        "Redis killed at {t_kill:.1} s, back at {t_back:.1} s; while down: {} requests, p50 {}, p99 {}",
        down.len(),
        fmt_ms(percentile(&lat, 0.5)),
        fmt_ms(percentile(&lat, 0.99))
    ));
    r.notes.push(sources_note(
        "answers while Redis was down",
        down.into_iter(),
    ));
    r.notes.push(format!(
        "redis circuit while down: {}",
        max_circuit(&data.samples, t_kill, t_back, |s| s.redis_circuit)
    ));
    r.notes.push(sources_note("all answers", data.recs.iter()));
    r.notes.push(log);
    Ok(r)
}

async fn primary_fault(ctx: &Ctx, sc: Scenario) -> Result<Report, String> {
    let (warm, fault, after) = sc.phases(ctx.quick);
    let world = World::start(ctx, sc, default_opts()).await?;
    let load = Load::start(&world, sc);
    load.sleep_to(warm).await;
    let broken = match sc {
        Scenario::PrimaryHang => json!({ "mix": { "hang": 1.0 } }),
        _ => json!({ "latency_ms": SIM_LATENCY_MS, "mix": { "503": 1.0 } }),
    };
    world.put_model(PRIMARY, broken).await?;
    let t_fault = load.now();
    load.sleep_to(warm + fault).await;
    // Recovery is measured from before the heal is sent: the slower, honest side.
    let t_heal = load.now();
    world
        .put_model(PRIMARY, json!({ "latency_ms": SIM_LATENCY_MS }))
        .await?;
    load.sleep_to(warm + fault + after).await;
    let data = load.finish().await?;
    let log = world.log_summary();
    drop(world);

    let mut r = Report::default();
    common(&mut r, &data.recs, default_verdict, false);
    // The steady part of the outage: skip the first 2 s (the breaker opening).
    let (from, to) = (t_fault + 2.0, t_heal);
    let cpr = calls_per_request(&data, from, to);
    r.calls_per_request = cpr.map(|c| c.0);
    r.primary_share = primary_share(&data.recs, from, to).1;
    r.recovery_ms = recovery_after(&data.recs, t_heal, Source::Primary);
    let down: Vec<&Rec> = data
        .recs
        .iter()
        .filter(|x| in_window(x, from, to))
        .collect();
    let lat = latencies(down.iter().copied());
    let p99_down = percentile(&lat, 0.99);
    if sc == Scenario::PrimaryDown {
        r.checks.push(check(
            "upstream calls/request while down (breaker open)",
            cpr.map_or("no data".into(), |(per_model, per_any, calls, n)| {
                format!("{per_model:.2} ({calls} calls / {n} model-bound answers; {per_any:.2} per answer of any source)")
            }),
            &format!("≤ {TARGET_CALLS_PER_REQUEST}"),
            cpr.is_some_and(|c| c.0 <= TARGET_CALLS_PER_REQUEST),
        ));
        r.checks.push(check(
            "p99 while down (breaker open)",
            fmt_ms(p99_down),
            &format!("< {TARGET_DOWN_P99_MS:.0} ms"),
            p99_down.is_some_and(|p| p < TARGET_DOWN_P99_MS),
        ));
    } else if let Some((per_model, per_any, calls, n)) = cpr {
        r.notes.push(format!(
            "upstream calls while hung: {per_model:.2} per model-bound answer ({calls} / {n}), {per_any:.2} per answer"
        ));
    }
    r.checks.push(check(
        "primary answers again after heal",
        fmt_ms(r.recovery_ms),
        &format!("≤ {TARGET_RECOVERY_MS:.0} ms (open_ms + 2 s)"),
        r.recovery_ms.is_some_and(|v| v <= TARGET_RECOVERY_MS),
    ));
    r.notes.push(format!(
        "fault at {t_fault:.1} s, healed at {t_heal:.1} s; steady window {from:.1}–{to:.1} s: {} requests, p50 {}, p99 {}, max {}",
        down.len(),
        fmt_ms(percentile(&lat, 0.5)),
        fmt_ms(p99_down),
        fmt_ms(lat.last().copied())
    ));
    r.notes.push(sources_note(
        "answers in the steady window",
        down.into_iter(),
    ));
    r.notes.push(format!(
        "primary circuit in the steady window: {}",
        max_circuit(&data.samples, from, to, |s| s.primary_circuit)
    ));
    let healed: Vec<&Rec> = data.recs.iter().filter(|x| x.start >= t_heal).collect();
    r.notes
        .push(sources_note("answers after heal", healed.into_iter()));
    r.notes.push(log);
    Ok(r)
}

async fn primary_flaky(ctx: &Ctx) -> Result<Report, String> {
    let sc = Scenario::PrimaryFlaky;
    let (warm, fault, _) = sc.phases(ctx.quick);
    let world = World::start(ctx, sc, default_opts()).await?;
    let load = Load::start(&world, sc);
    load.sleep_to(warm).await;
    world
        .put_model(
            PRIMARY,
            json!({ "latency_ms": SIM_LATENCY_MS, "mix": { "503": 0.5 } }),
        )
        .await?;
    let t_fault = load.now();
    load.sleep_to(warm + fault).await;
    let t_end = load.now();
    let data = load.finish().await?;
    let log = world.log_summary();
    drop(world);

    let mut r = Report::default();
    common(&mut r, &data.recs, default_verdict, false);
    // Requests started while the primary was flaky; the end is cut 0.5 s early so every
    // one of them finished under the same conditions.
    let (from, to) = (t_fault, t_end - 0.5);
    let window: Vec<&Rec> = data
        .recs
        .iter()
        .filter(|x| in_window(x, from, to))
        .collect();
    let model_bound: Vec<Source> = window
        .iter()
        .filter_map(|x| x.source())
        .filter(|s| *s != Source::Cache)
        .collect();
    let by_model = model_bound
        .iter()
        .filter(|s| matches!(s, Source::Primary | Source::Secondary))
        .count();
    let (n, share) = primary_share(&data.recs, from, to);
    r.primary_share = share;
    let lat = latencies(window.iter().copied());
    let p99 = percentile(&lat, 0.99);
    r.calls_per_request = calls_per_request(&data, from, to).map(|c| c.0);
    let unanswered = window.iter().filter(|x| x.source().is_none()).count();
    r.checks.push(check(
        "every request answered by a model",
        format!(
            "{by_model} of {n} model-bound answers from primary/secondary; {unanswered} unanswered"
        ),
        "100%",
        n > 0 && by_model == n && unanswered == 0,
    ));
    r.checks.push(check(
        "share answered by the primary",
        fmt_pct(share),
        &format!("≥ {:.0}%", TARGET_FLAKY_PRIMARY_SHARE * 100.0),
        share.is_some_and(|s| s >= TARGET_FLAKY_PRIMARY_SHARE),
    ));
    r.checks.push(check(
        "p99 while flaky",
        fmt_ms(p99),
        &format!("< {TARGET_FLAKY_P99_MS:.0} ms"),
        p99.is_some_and(|p| p < TARGET_FLAKY_P99_MS),
    ));
    r.notes.push(format!(
        "flaky from {t_fault:.1} s to the end ({t_end:.1} s): {} requests, p50 {}, p99 {}, max {}",
        window.len(),
        fmt_ms(percentile(&lat, 0.5)),
        fmt_ms(p99),
        fmt_ms(lat.last().copied())
    ));
    r.notes
        .push(sources_note("answers while flaky", window.into_iter()));
    r.notes.push(format!(
        "primary circuit while flaky: {}",
        max_circuit(&data.samples, from, to, |s| s.primary_circuit)
    ));
    r.notes.push(log);
    Ok(r)
}

async fn burst_scenario(ctx: &Ctx) -> Result<Report, String> {
    let sc = Scenario::Burst;
    let (warm, _, after) = sc.phases(ctx.quick);
    let opts = WorldOpts {
        sim_latency_ms: BURST_SIM_LATENCY_MS,
        sim_args: Vec::new(),
        env: vec![(
            "QA__LIMITS__MAX_CONCURRENT_REQUESTS",
            BURST_LIMIT.to_string(),
        )],
    };
    let world = World::start(ctx, sc, opts).await?;
    let mut load = Load::start(&world, sc);
    load.burst(BURST_SIZE, warm);
    load.sleep_to(warm + after).await;
    let data = load.finish().await?;
    let log = world.log_summary();
    drop(world);

    let mut r = Report::default();
    let verdict = |x: &Rec| match x.outcome {
        Outcome::Answered(_) => Verdict::Answered,
        Outcome::Overloaded { .. } => Verdict::Excused,
        _ => Verdict::Failure,
    };
    common(&mut r, &data.recs, verdict, true);
    let mut shed: Vec<f64> = data
        .recs
        .iter()
        .filter(|x| matches!(x.outcome, Outcome::Overloaded { .. }))
        .map(Rec::ms)
        .collect();
    shed.sort_by(f64::total_cmp);
    let no_retry_after = data
        .recs
        .iter()
        .filter(|x| matches!(x.outcome, Outcome::Overloaded { retry_after: false }))
        .count();
    let bursts: Vec<&Rec> = data.recs.iter().filter(|x| x.burst).collect();
    let t_burst = bursts
        .iter()
        .map(|x| x.start)
        .min_by(f64::total_cmp)
        .unwrap_or(warm);
    let burst_ok = bursts.iter().filter(|x| x.source().is_some()).count();
    let burst_shed = bursts
        .iter()
        .filter(|x| matches!(x.outcome, Outcome::Overloaded { .. }))
        .count();
    r.checks.push(check(
        "load shed past the limit",
        format!(
            "{} overloaded ({burst_shed} of the {} burst requests; {burst_ok} of them answered)",
            shed.len(),
            bursts.len()
        ),
        "> 0",
        !shed.is_empty(),
    ));
    let shed_max = shed.last().copied();
    r.checks.push(check(
        "overloaded returned at once",
        format!(
            "p50 {}, p99 {}, max {}",
            fmt_ms(percentile(&shed, 0.5)),
            fmt_ms(percentile(&shed, 0.99)),
            fmt_ms(shed_max)
        ),
        &format!("max ≤ {OVERLOADED_MAX_MS:.0} ms"),
        shed_max.is_some_and(|m| m <= OVERLOADED_MAX_MS),
    ));
    r.checks.push(check(
        "Retry-After on every overloaded",
        format!("{no_retry_after} without"),
        "0 without",
        no_retry_after == 0,
    ));
    // After the burst drained (1 s), the steady clients are served again.
    let settle = t_burst + 1.5;
    let late: Vec<&Rec> = data
        .recs
        .iter()
        .filter(|x| !x.burst && x.start >= settle)
        .collect();
    let late_ok = late.iter().filter(|x| x.source().is_some()).count();
    r.checks.push(check(
        "served again after the burst",
        format!("{late_ok} of {} answered from {settle:.1} s on", late.len()),
        "all",
        !late.is_empty() && late_ok == late.len(),
    ));
    let lat = latencies(bursts.iter().copied());
    r.primary_share = primary_share(&data.recs, 0.0, f64::MAX).1;
    r.notes.push(format!(
        "burst of {BURST_SIZE} at {t_burst:.1} s (limit {BURST_LIMIT}, sim {BURST_SIM_LATENCY_MS} ms): answered ones p50 {}, p99 {}",
        fmt_ms(percentile(&lat, 0.5)),
        fmt_ms(percentile(&lat, 0.99))
    ));
    r.notes.push(sources_note("all answers", data.recs.iter()));
    r.notes.push(log);
    Ok(r)
}

async fn sigterm(ctx: &Ctx) -> Result<Report, String> {
    let sc = Scenario::Sigterm;
    let (warm, _, after) = sc.phases(ctx.quick);
    let mut world = World::start(ctx, sc, default_opts()).await?;
    let load = Load::start(&world, sc);
    load.sleep_to(warm).await;
    let pid = world.svc.pid().ok_or("the service exited before SIGTERM")?;
    let t_sig = load.now();
    let sent = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .map_err(|e| format!("kill -TERM: {e}"))?;
    if !sent.success() {
        return Err(format!("kill -TERM {pid}: {sent}"));
    }
    let give_up = t_sig + GRACE_SECS as f64 + 5.0;
    let status = loop {
        if let Some(status) = world.svc.try_wait() {
            break Some(status);
        }
        if load.now() > give_up {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let t_exit = load.now();
    load.sleep_to(t_exit + after).await;
    let data = load.finish().await?;
    let log = world.log_summary();
    drop(world);

    let mut r = Report::default();
    // Every request the service took must be answered. After the signal, a refused
    // connection is the expected way to say "not taken" and is excused; any other
    // transport error (a connection closed or reset under a request it had accepted)
    // is a failure, whenever the request started.
    // A request started once the process was seen gone cannot have been taken either.
    let verdict = |x: &Rec| match x.outcome {
        Outcome::Answered(_) => Verdict::Answered,
        Outcome::Transport(Transport::Connect) if x.start >= t_sig => Verdict::Excused,
        Outcome::Transport(_) if x.start >= t_exit => Verdict::Excused,
        _ => Verdict::Failure,
    };
    common(&mut r, &data.recs, verdict, false);
    let cut: Vec<&Rec> = data
        .recs
        .iter()
        .filter(|x| {
            matches!(x.outcome, Outcome::Transport(t) if t != Transport::Connect)
                && x.start < t_exit
        })
        .collect();
    if !cut.is_empty() {
        let ends_near_exit = cut.iter().filter(|x| (x.end - t_exit).abs() < 0.1).count();
        let oldest = cut.iter().map(|x| t_exit - x.start).fold(0.0, f64::max);
        r.notes.push(format!(
            "{} requests taken on kept-alive connections were cut (closed/reset, not refused): \
             {ends_near_exit} of them failed within 100 ms of the exit; the oldest had started \
             {:.0} ms before it",
            cut.len(),
            oldest * 1000.0
        ));
    }
    let in_flight = data
        .recs
        .iter()
        .filter(|x| x.start < t_sig && x.end > t_sig)
        .count();
    let in_flight_ok = data
        .recs
        .iter()
        .filter(|x| x.start < t_sig && x.end > t_sig && x.source().is_some())
        .count();
    r.checks.push(check(
        "in-flight requests at SIGTERM answered",
        format!("{in_flight_ok} of {in_flight}"),
        "all (and > 0)",
        in_flight > 0 && in_flight_ok == in_flight,
    ));
    r.checks.push(check(
        "exit code 0 after SIGTERM",
        match status {
            Some(s) => format!("{s} after {:.2} s", t_exit - t_sig),
            None => format!("still running after {:.0} s", give_up - t_sig),
        },
        &format!("0, within grace ({GRACE_SECS} s)"),
        status.is_some_and(|s| s.success()) && t_exit - t_sig <= GRACE_SECS as f64 + 1.0,
    ));
    let after_sig: Vec<&Rec> = data.recs.iter().filter(|x| x.start >= t_sig).collect();
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for x in &after_sig {
        let k = match x.outcome {
            Outcome::Answered(_) => "answered".to_owned(),
            Outcome::Transport(t) => format!("{t:?}").to_lowercase(),
            Outcome::Status(s) => format!("HTTP {s}"),
            other => format!("{other:?}"),
        };
        *kinds.entry(k).or_default() += 1;
    }
    r.notes.push(format!(
        "SIGTERM at {t_sig:.2} s, {in_flight} requests in flight; started after it: {}",
        kinds
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let drain = t_exit - t_sig;
    if status.is_some() && drain >= GRACE_SECS as f64 - 0.1 {
        r.notes.push(format!(
            "the service exited {drain:.2} s after SIGTERM, i.e. when the {GRACE_SECS} s grace ran out: \
             the drain did not complete on its own under keep-alive load"
        ));
    }
    r.notes.push(sources_note("all answers", data.recs.iter()));
    r.notes.push(log);
    Ok(r)
}

/// The simulator's behaviour in the streaming scenarios, with `extra` keys added.
fn stream_behavior(extra: Value) -> Value {
    let mut b = json!({
        "latency_ms": SIM_LATENCY_MS,
        "stream_piece_chars": STREAM_PIECE_CHARS,
        "stream_interval_ms": STREAM_INTERVAL_MS,
        "stream_cut_after": STREAM_CUT_AFTER,
    });
    if let (Some(b), Value::Object(extra)) = (b.as_object_mut(), extra) {
        b.extend(extra);
    }
    b
}

fn stream_opts() -> WorldOpts {
    let mut opts = default_opts();
    opts.sim_args = vec![
        "--stream-piece-chars".into(),
        STREAM_PIECE_CHARS.to_string(),
        "--stream-interval-ms".into(),
        STREAM_INTERVAL_MS.to_string(),
        "--stream-cut-after".into(),
        STREAM_CUT_AFTER.to_string(),
    ];
    for (key, value) in [
        (
            "QA__PRIMARY__FIRST_TOKEN_TIMEOUT_MS",
            FIRST_TOKEN_TIMEOUT_MS,
        ),
        (
            "QA__SECONDARY__FIRST_TOKEN_TIMEOUT_MS",
            FIRST_TOKEN_TIMEOUT_MS,
        ),
        (
            "QA__PRIMARY__STREAM_IDLE_TIMEOUT_MS",
            STREAM_IDLE_TIMEOUT_MS,
        ),
        (
            "QA__SECONDARY__STREAM_IDLE_TIMEOUT_MS",
            STREAM_IDLE_TIMEOUT_MS,
        ),
    ] {
        opts.env.push((key, value.to_string()));
    }
    opts
}

/// Client-measured times to the first `delta`, in ms, sorted.
fn ttfts<'a>(recs: impl Iterator<Item = &'a Rec>) -> Vec<f64> {
    let mut v: Vec<f64> = recs
        .filter_map(|r| r.stream.and_then(|s| s.ttft))
        .map(|t| t * 1000.0)
        .collect();
    v.sort_by(f64::total_cmp);
    v
}

/// The correctness checks every streaming scenario gets.
fn stream_checks(r: &mut Report, recs: &[Rec]) {
    let streams = recs.iter().filter(|x| x.stream.is_some()).count();
    let no_done: Vec<&Rec> = recs
        .iter()
        .filter(|x| match x.stream {
            Some(s) => !s.done,
            None => matches!(x.outcome, Outcome::Transport(_)),
        })
        .collect();
    r.checks.push(check(
        "every stream ends with done",
        format!(
            "{} of {streams} streams without a final done ({} transport errors)",
            no_done.len(),
            no_done
                .iter()
                .filter(|x| matches!(x.outcome, Outcome::Transport(_)))
                .count()
        ),
        "0",
        no_done.is_empty() && streams > 0,
    ));
    let mismatched = recs
        .iter()
        .filter(|x| x.stream.is_some_and(|s| s.done && !s.assembled_ok))
        .count();
    r.checks.push(check(
        "no truncation: deltas after the last reset = done.answer",
        format!("{mismatched} differ"),
        "0",
        mismatched == 0,
    ));
    let judged = recs
        .iter()
        .filter(|x| x.stream.is_some_and(|s| s.whole.is_some()))
        .count();
    let partial = recs
        .iter()
        .filter(|x| x.stream.is_some_and(|s| s.whole == Some(false)))
        .count();
    r.checks.push(check(
        "model and cache answers are the simulator's whole text",
        format!("{partial} of {judged} not whole"),
        "0",
        partial == 0 && judged > 0,
    ));
}

/// The streaming scenarios: 50 clients ask for server-sent events while the primary
/// cuts 30% of its streams mid-way (`stream_cut`) or hangs (`stream_hang`).
async fn stream_fault(ctx: &Ctx, sc: Scenario) -> Result<Report, String> {
    let (warm, fault, after) = sc.phases(ctx.quick);
    let world = World::start(ctx, sc, stream_opts()).await?;
    world.put_model(PRIMARY, stream_behavior(json!({}))).await?;
    world
        .put_model(SECONDARY, stream_behavior(json!({})))
        .await?;
    let load = Load::start_with(&world, sc, Some(ctx.expect.clone()));
    load.sleep_to(warm).await;
    let broken = match sc {
        Scenario::StreamCut => json!({ "mix": { "cut": STREAM_CUT_SHARE } }),
        _ => json!({ "mix": { "stall_first": 0.5, "hang": 0.5 } }),
    };
    world.put_model(PRIMARY, stream_behavior(broken)).await?;
    let t_fault = load.now();
    load.sleep_to(warm + fault).await;
    let t_heal = load.now();
    if after > 0.0 {
        world.put_model(PRIMARY, stream_behavior(json!({}))).await?;
        load.sleep_to(warm + fault + after).await;
    }
    let data = load.finish().await?;
    let metrics = match world
        .http
        .get(format!("{}/metrics", world.svc_base))
        .send()
        .await
    {
        Ok(resp) => resp.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    let log = world.log_summary();
    drop(world);

    let mut r = Report::default();
    common(&mut r, &data.recs, default_verdict, false);
    stream_checks(&mut r, &data.recs);
    // The fault's window; the last 0.5 s cut so that its requests finished under it.
    let (from, to) = (t_fault, t_heal - 0.5);
    let window: Vec<&Rec> = data
        .recs
        .iter()
        .filter(|x| in_window(x, from, to))
        .collect();
    let model_answers: Vec<&Rec> = window
        .iter()
        .copied()
        .filter(|x| matches!(x.source(), Some(Source::Primary | Source::Secondary)))
        .collect();
    let continued = model_answers
        .iter()
        .filter(|x| x.stream.is_some_and(|s| s.continued))
        .count();
    r.continued_share =
        (!model_answers.is_empty()).then(|| continued as f64 / model_answers.len() as f64);
    r.primary_share = primary_share(&data.recs, from, to).1;
    let all_ttft = ttfts(data.recs.iter());
    let win_ttft = ttfts(window.iter().copied());
    r.ttft_p99 = percentile(&win_ttft, 0.99);
    let model_ttft = ttfts(model_answers.iter().copied());
    if sc == Scenario::StreamCut {
        r.checks.push(check(
            "streams broken mid-way were continued (sanity)",
            format!(
                "{continued} continued of {} model answers in the fault window",
                model_answers.len()
            ),
            "> 0",
            continued > 0,
        ));
    } else {
        r.recovery_ms = recovery_after(&data.recs, t_heal, Source::Primary);
    }
    let resets: u32 = data
        .recs
        .iter()
        .filter_map(|x| x.stream.map(|s| s.resets))
        .sum();
    r.notes.push(format!(
        "fault at {t_fault:.1} s{}; window {from:.1}–{to:.1} s: {} streams, latency to done p50 {}, p99 {}",
        if after > 0.0 {
            format!(", healed at {t_heal:.1} s")
        } else {
            " to the end".to_owned()
        },
        window.len(),
        fmt_ms(percentile(&latencies(window.iter().copied()), 0.5)),
        fmt_ms(percentile(&latencies(window.iter().copied()), 0.99))
    ));
    r.notes.push(format!(
        "time to first token (send → first delta): all streams p50 {}, p99 {}, max {}; in the window p50 {}, p99 {}; model answers in the window p50 {}, p99 {}",
        fmt_ms(percentile(&all_ttft, 0.5)),
        fmt_ms(percentile(&all_ttft, 0.99)),
        fmt_ms(all_ttft.last().copied()),
        fmt_ms(percentile(&win_ttft, 0.5)),
        fmt_ms(percentile(&win_ttft, 0.99)),
        fmt_ms(percentile(&model_ttft, 0.5)),
        fmt_ms(percentile(&model_ttft, 0.99)),
    ));
    r.notes.push(format!(
        "continued answers in the window: {continued} of {} model answers ({}); resets seen by clients: {resets}; qa_stream_interruptions_total: {}",
        model_answers.len(),
        fmt_pct(r.continued_share),
        ["continued", "reset"]
            .iter()
            .flat_map(|action| [PRIMARY_TIER, SECONDARY_TIER].map(|tier| (tier, *action)))
            .map(|(tier, action)| format!(
                "{tier}/{action} {}",
                metric_sum(
                    &metrics,
                    "qa_stream_interruptions_total",
                    &[("tier", tier), ("action", action)]
                )
                .map_or("—".into(), |v| format!("{v:.0}"))
            ))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    r.notes.push(sources_note(
        "answers in the window",
        window.iter().copied(),
    ));
    if after > 0.0 {
        let healed: Vec<&Rec> = data.recs.iter().filter(|x| x.start >= t_heal).collect();
        r.notes.push(format!(
            "{}; primary answers again {} after the heal",
            sources_note("answers after heal", healed.into_iter()),
            fmt_ms(r.recovery_ms)
        ));
    }
    r.notes.push(format!(
        "primary circuit in the window: {}",
        max_circuit(&data.samples, from, to, |s| s.primary_circuit)
    ));
    r.notes.push(log);
    Ok(r)
}

/// The `result` label of `qa_question_leases_total`.
const LEASE_RESULTS: [&str; 6] = [
    "led",
    "followed",
    "took_over",
    "models_gave_up",
    "deadline",
    "unavailable",
];

/// Multi-replica scenarios: what a client counts as an error, a non-200 or a `default`
/// answer (the service had nothing better to say).
fn is_client_error(r: &Rec) -> bool {
    !matches!(r.source(), Some(s) if s != Source::Default)
}

/// `cache.key_prefix` of `config/default.toml`, which the services run with.
fn cache_prefix(root: &Path) -> Result<String, String> {
    let file = root.join("config/default.toml");
    resilient_qa::config::Config::load(Some(&file), &std::collections::HashMap::new())
        .map(|c| c.cache.key_prefix)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))
}

/// Answers per replica (`rN n`), for the notes.
fn per_replica<'a>(recs: impl Iterator<Item = &'a Rec>) -> String {
    let mut by: BTreeMap<u8, usize> = BTreeMap::new();
    for r in recs.filter(|r| r.source().is_some()) {
        if let Some(n) = r.replica {
            *by.entry(n).or_default() += 1;
        }
    }
    by.iter()
        .map(|(n, count)| format!("r{n} {count}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Three replicas sharing one Redis behind a real HAProxy; clients in groups of
/// [`QUESTION_GROUP`] ask the same new questions at once (and the hot set); one replica is
/// killed (`kill -9`) mid-run.
async fn replica_killed(ctx: &Ctx) -> Result<Report, String> {
    use resilient_qa::pipeline::normalize::{cache_key, normalize};
    use std::collections::BTreeSet;
    let sc = Scenario::ReplicaKilled;
    let (warm, _, after) = sc.phases(ctx.quick);
    let prefix = cache_prefix(&ctx.root)?;
    let dir = scenario_dir(ctx, sc)?;
    let http = control_client()?;
    let redis = Redis::start(&dir).await?;
    let (_sim, sim_base) = start_sim(ctx, &dir, &default_opts(), &http).await?;
    let mut replicas = Vec::with_capacity(REPLICAS);
    for i in 1..=REPLICAS {
        let env = [("REDIS_URL", redis.url())];
        replicas.push(Service::start(ctx, &dir, &format!("r{i}"), &sim_base, &env, &http).await?);
    }
    let servers: Vec<(String, String)> = replicas
        .iter()
        .enumerate()
        .map(|(i, svc)| {
            let addr = svc.base.trim_start_matches("http://").to_owned();
            (format!("r{}", i + 1), addr)
        })
        .collect();
    let balancer = Balancer::start(&dir, &servers, &http).await?;
    let victim = format!("r{KILLED_REPLICA}");
    let target = Target {
        http: http.clone(),
        ask_url: format!("{}/ask", balancer.base),
        sim_base: sim_base.clone(),
        metrics: replicas.iter().map(|svc| svc.base.clone()).collect(),
    };
    let opts = ClientOpts {
        stream: None,
        group: QUESTION_GROUP,
    };
    let load = Load::start_on(target, sc, opts);
    load.sleep_to(warm).await;
    let routed_before = balancer.server(&http, &victim).await.map(|s| s.routed);
    let t_kill = load.now();
    if let Some(svc) = replicas.get_mut(usize::from(KILLED_REPLICA) - 1) {
        svc.proc.kill();
    }
    // HAProxy's view of the dead replica, polled until its check marks it down: when, and
    // how many requests it had been sent by then.
    let mut marked_down = None;
    while load.now() < t_kill + 5.0 {
        if let Some(state) = balancer.server(&http, &victim).await
            && state.status.starts_with("DOWN")
        {
            marked_down = Some((load.now(), state.routed));
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    load.sleep_to(t_kill + after).await;
    let data = load.finish().await?;
    let routed_at_end = balancer.server(&http, &victim).await.map(|s| s.routed);
    let calls = sim_calls(&http, &sim_base).await;

    // Every model answer a surviving replica gave is in Redis (the writes are queued:
    // they get up to 5 s to land).
    let key_of = |q: &str| cache_key(&prefix, &normalize(q));
    let model_answers = |killed: bool| -> Vec<&Rec> {
        data.recs
            .iter()
            .filter(|r| matches!(r.source(), Some(Source::Primary | Source::Secondary)))
            .filter(|r| r.replica.is_some_and(|n| (n == KILLED_REPLICA) == killed))
            .collect()
    };
    let (kept_answers, victim_answers) = (model_answers(false), model_answers(true));
    let must_keep: BTreeSet<String> = kept_answers.iter().map(|r| key_of(&r.question)).collect();
    let victim_keys: BTreeSet<String> =
        victim_answers.iter().map(|r| key_of(&r.question)).collect();
    let pattern = format!("{prefix}*");
    let deadline = Instant::now() + Duration::from_secs(5);
    let stored = loop {
        let stored: BTreeSet<String> = redis_cmd::<Vec<String>>(redis.port, &["KEYS", &pattern])
            .await
            .unwrap_or_default()
            .into_iter()
            .collect();
        if must_keep.is_subset(&stored) || Instant::now() > deadline {
            break stored;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let lost = must_keep.difference(&stored).count();
    // How the surviving replicas shared the new questions through their leases.
    let mut leases: BTreeMap<&str, f64> = BTreeMap::new();
    for svc in &replicas {
        let Ok(resp) = http.get(format!("{}/metrics", svc.base)).send().await else {
            continue;
        };
        let text = resp.text().await.unwrap_or_default();
        for result in LEASE_RESULTS {
            if let Some(v) = metric_sum(&text, "qa_question_leases_total", &[("result", result)]) {
                *leases.entry(result).or_default() += v;
            }
        }
    }
    let log: Vec<String> = replicas
        .iter()
        .enumerate()
        .map(|(i, svc)| format!("r{}: {}", i + 1, log_summary(&svc.log, &svc.err)))
        .collect();
    drop(balancer);
    drop(replicas);

    let mut r = Report::default();
    let in_flight = |x: &Rec| x.start <= t_kill && x.end >= t_kill;
    let verdict = |x: &Rec| {
        if !is_client_error(x) {
            Verdict::Answered
        } else if in_flight(x) {
            Verdict::Excused
        } else {
            Verdict::Failure
        }
    };
    common(&mut r, &data.recs, verdict, false);
    let flying: Vec<&Rec> = data.recs.iter().filter(|x| in_flight(x)).collect();
    let flying_failed = flying.iter().filter(|x| is_client_error(x)).count();
    let outside = data
        .recs
        .iter()
        .filter(|x| is_client_error(x) && !in_flight(x))
        .count();
    r.checks.push(check(
        "client errors only among requests in flight at the kill",
        format!(
            "{outside} outside them; {flying_failed} of the {} in flight at the kill failed",
            flying.len()
        ),
        "0 outside",
        outside == 0,
    ));
    let down_ms = marked_down.map(|(t, _)| (t - t_kill) * 1000.0);
    let routed_after = marked_down
        .zip(routed_at_end)
        .map(|((_, at_down), at_end)| at_end.saturating_sub(at_down));
    let answers_after = data
        .recs
        .iter()
        .filter(|x| x.start >= t_kill && x.replica == Some(KILLED_REPLICA))
        .count();
    r.checks.push(check(
        "dead replica out of rotation",
        format!(
            "{victim} seen DOWN in HAProxy's stats {} after the kill; then {} requests routed \
             to it (stot+econ+wretr+wredis); {answers_after} answers from it after the kill",
            fmt_ms(down_ms),
            routed_after.map_or("?".into(), |n| n.to_string()),
        ),
        &format!("DOWN ≤ {TARGET_MARKED_DOWN_MS:.0} ms, then 0 routed"),
        down_ms.is_some_and(|d| d <= TARGET_MARKED_DOWN_MS)
            && routed_after == Some(0)
            && answers_after == 0,
    ));
    let after_kill: Vec<&Rec> = data.recs.iter().filter(|x| x.start > t_kill).collect();
    let lat = latencies(after_kill.iter().copied());
    let p99_after = percentile(&lat, 0.99);
    r.checks.push(check(
        "p99 of the requests started after the kill",
        format!(
            "{} (p50 {}, max {}; {} requests)",
            fmt_ms(p99_after),
            fmt_ms(percentile(&lat, 0.5)),
            fmt_ms(lat.last().copied()),
            after_kill.len()
        ),
        &format!("≤ {TARGET_AFTER_KILL_P99_MS:.0} ms"),
        p99_after.is_some_and(|p| p <= TARGET_AFTER_KILL_P99_MS),
    ));
    r.checks.push(check(
        "no answer lost: surviving replicas' model answers in Redis",
        format!(
            "{lost} of {} questions missing ({} model answers from r1/r3; {} keys in Redis)",
            must_keep.len(),
            kept_answers.len(),
            stored.len()
        ),
        "0 missing",
        lost == 0 && !must_keep.is_empty(),
    ));
    // Upstream calls per distinct question: every question is new to the empty Redis
    // once (the hot ones too); the groups' new questions are asked at once on several
    // replicas, where only the lease keeps them to one call.
    let distinct: BTreeSet<String> = data.recs.iter().map(|x| normalize(&x.question)).collect();
    let hot_asked = HOT
        .iter()
        .filter(|h| distinct.contains(&normalize(h)))
        .count();
    let mut new_questions: BTreeMap<&str, (usize, BTreeSet<u8>)> = BTreeMap::new();
    for x in data.recs.iter().filter(|x| !HOT.contains(&&*x.question)) {
        let entry = new_questions.entry(&x.question).or_default();
        entry.0 += 1;
        entry.1.extend(x.replica);
    }
    let mean = |f: fn(&(usize, BTreeSet<u8>)) -> usize| {
        new_questions.values().map(f).sum::<usize>() as f64 / new_questions.len().max(1) as f64
    };
    let per_question = calls
        .filter(|_| !distinct.is_empty())
        .map(|c| c as f64 / distinct.len() as f64);
    r.checks.push(check(
        "upstream calls per distinct question (3 replicas)",
        format!(
            "{} ({} calls / {} questions, {hot_asked} of them hot; a new question asked {:.1} \
             times, on {:.1} replicas, on average)",
            per_question.map_or("?".into(), |v| format!("{v:.3}")),
            calls.map_or("?".into(), |c| c.to_string()),
            distinct.len(),
            mean(|q| q.0),
            mean(|q| q.1.len()),
        ),
        &format!("≤ {TARGET_CALLS_PER_QUESTION}"),
        per_question.is_some_and(|v| v <= TARGET_CALLS_PER_QUESTION),
    ));
    r.primary_share = primary_share(&data.recs, 0.0, f64::MAX).1;
    let before: Vec<&Rec> = data.recs.iter().filter(|x| x.start < t_kill).collect();
    r.notes.push(format!(
        "{victim} killed at {t_kill:.1} s; answers per replica before the kill: {}; after it: {}; \
         HAProxy had sent {victim} {} requests before the kill",
        per_replica(before.iter().copied()),
        per_replica(after_kill.iter().copied()),
        routed_before.map_or("?".into(), |n| n.to_string()),
    ));
    let flying_lat = latencies(flying.iter().copied());
    r.notes.push(format!(
        "requests in flight at the kill: {}, answered in p50 {}, max {}; new questions by \
         lease on r1/r3 (qa_question_leases_total): {}",
        flying.len(),
        fmt_ms(percentile(&flying_lat, 0.5)),
        fmt_ms(flying_lat.last().copied()),
        if leases.is_empty() {
            "not exported".to_owned()
        } else {
            leases
                .iter()
                .map(|(k, v)| format!("{k} {v:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    ));
    r.notes.push(format!(
        "{victim}'s own model answers: {} questions, {} of them in Redis (written before it died)",
        victim_keys.len(),
        victim_keys.intersection(&stored).count()
    ));
    r.notes.push(sources_note(
        "answers after the kill",
        after_kill.into_iter(),
    ));
    r.notes.push(sources_note("all answers", data.recs.iter()));
    r.notes.extend(log);
    Ok(r)
}

/// The service in Sentinel mode over a primary, a replica and three sentinels, memory
/// cache off; the primary is killed (`kill -9`) mid-run and the sentinels fail over.
async fn redis_failover(ctx: &Ctx) -> Result<Report, String> {
    let sc = Scenario::RedisFailover;
    let (warm, _, after) = sc.phases(ctx.quick);
    let dir = scenario_dir(ctx, sc)?;
    let http = control_client()?;
    let (mut group, formed_in) = SentinelGroup::start(&dir).await?;
    let (_sim, sim_base) = start_sim(ctx, &dir, &default_opts(), &http).await?;
    let env = [
        ("QA__REDIS__MODE", "sentinel".to_owned()),
        ("QA__REDIS__URLS", group.urls()),
        ("QA__REDIS__SENTINEL_MASTER", SENTINEL_MASTER.to_owned()),
        // Every lookup is a Redis lookup: what Redis does shows in every answer.
        ("QA__CACHE__MEMORY_MAX_ENTRIES", "0".to_owned()),
    ];
    let svc = Service::start(ctx, &dir, "service", &sim_base, &env, &http).await?;
    let target = Target {
        http: http.clone(),
        ask_url: format!("{}/ask", svc.base),
        sim_base,
        metrics: vec![svc.base.clone()],
    };
    let load = Load::start_on(target, sc, ClientOpts::default());
    load.sleep_to(warm).await;
    let first = group.primary.port;
    let t_kill = load.now();
    group.primary.kill();
    // The sentinels' failover: until one of them names another primary.
    let mut promoted = None;
    while load.now() < t_kill + 20.0 {
        if let Some(port) = group.named_primary().await
            && port != first
        {
            promoted = Some((load.now(), port));
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Then until the service counts Redis hits again (at most 10.5 s), and on for the
    // last phase (or 2 s past the first hits).
    let from = promoted.map_or(t_kill, |(t, _)| t);
    let base_hits = redis_hits(&http, &svc.base).await.unwrap_or(0.0);
    let mut hits_seen = None;
    while load.now() < from + TARGET_HITS_BACK_MS / 1000.0 + 0.5 {
        if redis_hits(&http, &svc.base)
            .await
            .is_some_and(|h| h > base_hits)
        {
            hits_seen = Some(load.now());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    load.sleep_to((from + after).max(hits_seen.map_or(0.0, |t| t + 2.0)))
        .await;
    let data = load.finish().await?;
    let log = log_summary(&svc.log, &svc.err);
    drop(svc);
    drop(group);

    let mut r = Report::default();
    let verdict = |x: &Rec| {
        if is_client_error(x) {
            Verdict::Failure
        } else {
            Verdict::Answered
        }
    };
    common(&mut r, &data.recs, verdict, false);
    let after_ms = |t: f64| fmt_ms(Some((t - t_kill) * 1000.0));
    r.checks.push(check(
        "the sentinels promote the replica",
        match promoted {
            Some((t, port)) => format!(
                "new primary named {} after the kill (port {first} → {port})",
                after_ms(t)
            ),
            None => "no new primary within 20 s".into(),
        },
        "promoted (time reported; down-after 1 s)",
        promoted.is_some(),
    ));
    let hits_at = |t: f64, last: bool| {
        let mut it = data
            .samples
            .iter()
            .filter(|s| s.t >= t && s.redis_hits.is_some());
        if last { it.next_back() } else { it.next() }.and_then(|s| s.redis_hits)
    };
    let before = hits_at(0.0, false)
        .zip(hits_at(t_kill, false))
        .map(|(a, b)| b - a);
    r.checks.push(check(
        "redis hits before the kill (sanity)",
        before.map_or("not exported".into(), |d| format!("+{d:.0}")),
        "> 0",
        before.is_some_and(|d| d > 0.0),
    ));
    let hits_after = hits_at(from, false)
        .zip(hits_at(from, true))
        .map(|(a, b)| b - a);
    r.recovery_ms = promoted.and_then(|(t, _)| recovery_after(&data.recs, t, Source::Cache));
    r.checks.push(check(
        "Redis cache hits again after the promotion",
        format!(
            "first \"cache\" answer {} after it; redis-layer hits +{} after it (first seen \
             rising in /metrics {} after it)",
            fmt_ms(r.recovery_ms),
            hits_after.map_or("?".into(), |d| format!("{d:.0}")),
            fmt_ms(hits_seen.map(|t| (t - from) * 1000.0)),
        ),
        &format!("≤ {TARGET_HITS_BACK_MS:.0} ms"),
        promoted.is_some()
            && r.recovery_ms.is_some_and(|v| v <= TARGET_HITS_BACK_MS)
            && hits_after.is_some_and(|d| d > 0.0),
    ));
    // The failover's window: from the kill until cache answers come back.
    let back = r.recovery_ms.map_or(f64::MAX, |ms| from + ms / 1000.0);
    let window: Vec<&Rec> = data
        .recs
        .iter()
        .filter(|x| in_window(x, t_kill, back))
        .collect();
    let lat = latencies(window.iter().copied());
    r.primary_share = primary_share(&data.recs, t_kill, back).1;
    r.notes.push(format!(
        "Sentinel group formed in {formed_in:.1} s (replica in sync, each sentinel seeing 2 \
         others); primary killed at {t_kill:.1} s; from the kill until hits came back: {} \
         requests, p50 {}, p99 {}, max {}",
        window.len(),
        fmt_ms(percentile(&lat, 0.5)),
        fmt_ms(percentile(&lat, 0.99)),
        fmt_ms(lat.last().copied())
    ));
    r.notes.push(sources_note(
        "answers from the kill until hits came back",
        window.into_iter(),
    ));
    r.notes.push(format!(
        "redis circuit from the kill until hits came back: {}",
        max_circuit(&data.samples, t_kill, back, |s| s.redis_circuit)
    ));
    r.notes.push(sources_note("all answers", data.recs.iter()));
    r.notes.push(log);
    Ok(r)
}

const PRIMARY_TIER: &str = "primary";
const SECONDARY_TIER: &str = "secondary";

// ---------------------------------------------------------------------------------------
// Output

fn table(reports: &[Report]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| scenario | requests | 200s | 5xx | overloaded | transport errors | p50 | p99 | max | upstream calls/request | primary share | recovery | TTFT p99 | continued | checks |"
    );
    let _ = writeln!(
        out,
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|"
    );
    for r in reports {
        let failed = r.checks.iter().filter(|c| !c.pass).count();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.name,
            r.requests,
            r.ok,
            r.s5xx,
            r.overloaded,
            r.transport,
            fmt_ms(r.p50),
            fmt_ms(r.p99),
            fmt_ms(r.max),
            r.calls_per_request
                .map_or("—".into(), |v| format!("{v:.2}")),
            fmt_pct(r.primary_share),
            fmt_ms(r.recovery_ms),
            fmt_ms(r.ttft_p99),
            fmt_pct(r.continued_share),
            if failed == 0 {
                format!("PASS ({})", r.checks.len())
            } else {
                format!("**FAIL** ({failed} of {})", r.checks.len())
            }
        );
    }
    out
}

fn checks_table(reports: &[Report]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "| scenario | check | measured | target | result |");
    let _ = writeln!(out, "|---|---|---|---|---|");
    for r in reports {
        for c in &r.checks {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                r.name,
                c.name,
                c.measured.replace('|', "/"),
                c.target,
                if c.pass { "PASS" } else { "**FAIL**" }
            );
        }
    }
    out
}

fn notes(reports: &[Report]) -> String {
    let mut out = String::new();
    for r in reports {
        let _ = writeln!(out, "- **{}**", r.name);
        for n in &r.notes {
            let _ = writeln!(out, "  - {n}");
        }
    }
    out
}

fn read_first_line(path: &str, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = read_first_line("/proc/cpuinfo", "model name").unwrap_or_else(|| "?".into());
    let mem = read_first_line("/proc/meminfo", "MemTotal").unwrap_or_else(|| "?".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "?".into());
    format!(
        "{} {} ({kernel}), {cpus} CPUs ({model}), {mem} RAM",
        std::env::consts::OS,
        std::env::consts::ARCH
    )
}

fn git_rev(root: &Path) -> String {
    let out = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(root)
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    match out(&["rev-parse", "--short", "HEAD"]) {
        Some(rev) => {
            let dirty = out(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{rev} + uncommitted changes")
            } else {
                rev
            }
        }
        None => "unknown".into(),
    }
}

const METHOD: &str = "\
## What it does

For each scenario the runner starts fresh processes on free `127.0.0.1` ports (the
multi-replica scenarios below start more of them): a private
`redis-server --save \"\" --appendonly no`, the release `upstream-sim` (50 ms latency,
seed 42) and the release `resilient-qa` (`LOG_FORMAT=json`, `RUST_LOG=warn`; its logs go to
a temporary directory, kept and printed when a check fails). The service runs with
`QA__SERVER__REQUEST_TIMEOUT_MS=5000`, `QA__BREAKER__OPEN_MS=5000`,
`QA__SERVER__SHUTDOWN_GRACE_SECS=10` and `QA__PRIMARY__ATTEMPT_TIMEOUT_MS` /
`QA__SECONDARY__ATTEMPT_TIMEOUT_MS` = 2000 (scaled to the 5 s deadline the way the defaults
fit 20 s); everything else comes from `config/default.toml`, and the children inherit no
`QA__*`, `OPENAI_*` or proxy variables. 50 clients, each with its own keep-alive
connection, loop `POST /ask` with no think time (20 ms pause after anything but a 200):
about 80% unique questions (they reach the models) and 20% from a hot set of 10 (the cache
answers them). A monitor samples the simulator's `GET /control/calls` and the service's
`/metrics` every 250 ms. One fault per scenario:

| scenario | fault |
|---|---|
| `redis_killed` | `QA__CACHE__MEMORY_MAX_ENTRIES=0` (so hits must come from Redis); `kill -9` Redis, restart it on the same port (empty) 6 s later |
| `primary_down` | `PUT /control/models/gpt-4o {\"latency_ms\":50,\"mix\":{\"503\":1.0}}` for 11 s, then healed with `{\"latency_ms\":50}` |
| `primary_hang` | `{\"mix\":{\"hang\":1.0}}` for 11 s, then healed |
| `primary_flaky` | `{\"latency_ms\":50,\"mix\":{\"503\":0.5}}` (seeded draws) for 16 s |
| `burst` | `QA__LIMITS__MAX_CONCURRENT_REQUESTS=64`, simulator at 300 ms; 500 requests with unique questions fired at once (each on a connection opened beforehand, so the kernel's accept queue is not what is measured) on top of the 50 clients |
| `sigterm` | `kill -TERM` the service under load; wait for it to exit (at most grace + 5 s) |
| `stream_cut` | streaming clients (below); `{\"mix\":{\"cut\":0.3}}` on the primary for 14 s: 30% of its streams are cut after 4 pieces |
| `stream_hang` | streaming clients; `{\"mix\":{\"stall_first\":0.5,\"hang\":0.5}}` on the primary for 10 s (headers then nothing, or nothing at all), then healed |
| `replica_killed` | three services (`r1`–`r3`) sharing one Redis behind a real HAProxy (below); clients in groups of 5 ask the same new questions at once; `kill -9` `r2` after 4 s, 8 s more |
| `redis_failover` | Sentinel mode (below), `QA__CACHE__MEMORY_MAX_ENTRIES=0`; `kill -9` the Redis primary after 4 s; the sentinels promote the replica; 8 s more from the promotion (up to 10.5 s, until hits are seen) |

**Streaming scenarios.** The 50 clients send `Accept: text/event-stream` and read every
event as it arrives. The simulator streams both models at a pace
(`--stream-piece-chars 8 --stream-interval-ms 10 --stream-cut-after 4`, on top of its
50 ms latency; an answer is some 15–20 pieces), and the service runs with
`QA__{PRIMARY,SECONDARY}__FIRST_TOKEN_TIMEOUT_MS=1250` and `…__STREAM_IDLE_TIMEOUT_MS=2500`
(the defaults, 5 s and 10 s, scaled to the 5 s deadline as the attempt timeouts are). For
every stream the runner checks: exactly one `done`, as the last event; the `delta` texts
after the last `reset`, concatenated, equal `done.answer`; and the answer is whole: a
model answer is the simulator's whole answer to the tier's prompt (from
`config/default.toml`, with the language instruction for an English question), and so is
a `continued` one (the simulator continues a cut text with the rest of the answer it
began: the stitched answer must be that whole answer, nothing lost or repeated), but for
the secondary continuing the primary's text (sent with its own prompt, the simulator
cannot know the rest: a cut prefix of the primary's answer, then the secondary's answer
to the continuation prompt); a cache answer is one model's whole answer. **TTFT p99** is client-measured, from
sending the request to the first `delta` event, over the streams started in the fault's
window (cache hits included; the notes give it over the whole run and for model answers
alone). **continued** is the share of model answers, in the fault
window, that `done` marks `continued`.

**Multi-replica scenarios.** In `replica_killed` three `resilient-qa` processes share
one `redis-server` and one simulator, behind Debian's HAProxy (`scripts/install-deps.sh
haproxy`; the config is checked with `haproxy -c` first) run with the shipped settings of
`config/haproxy/haproxy.cfg` (`balance roundrobin`, `retries 3`, `option redispatch`,
`retry-on conn-failure empty-response`, `option httpchk GET /readyz`) on the run's
addresses, with faster checks (`inter 500ms fall 1 rise 2`), `http-response set-header
X-Served-By %[srv_name]` (so each answer names its replica) and a CSV stats page. The 50
clients post to HAProxy; they form 10 groups of 5 that make the same draws, so a group asks
each new question at about the same time, through different replicas: only the lease the
replicas share in Redis keeps it to one upstream call. In `redis_failover` the service runs
with `QA__REDIS__MODE=sentinel`, `QA__REDIS__URLS` = the three sentinels and
`QA__REDIS__SENTINEL_MASTER=mymaster`, over a primary, one replica (`--replicaof`) and
three sentinels (`redis-server CONF --sentinel`: `sentinel monitor mymaster 127.0.0.1 PORT
2`, `down-after-milliseconds 1000`, `failover-timeout 10000`), started once the replica is
in sync (`state=online`) and each sentinel sees the other two (`num-other-sentinels` 2).
In both, a `default` answer counts as a client error, as a non-200 does.

`--quick` shortens the phases (the heal phases stay ≥ `open_ms` + 3 s so recovery can be
seen).

## How it is measured

- **requests / 200s / 5xx / overloaded**: every `POST /ask` the clients sent; a 200 counts
  only with a non-empty `answer` and a `source`.
- **transport errors**: connection errors, resets and client timeouts (10 s) that count as
  failures. In `sigterm` only a connection *refused* after the signal (and anything started
  once the process was seen gone) is excused as \"not accepted\"; a request the service
  took on a kept-alive connection and then dropped is a failure whenever it started.
- **p50 / p99 / max**: client-measured latency of the 200s over the whole scenario
  (nearest rank). The deadline check allows 250 ms of client-side slack over the 5 s
  deadline.
- **upstream calls/request**: over the steady part of the fault (from 2 s after it was
  injected, when a breaker would be open, until the heal): the simulator's calls to both
  models between two monitor samples, divided by the answers completed between the same
  samples that needed a model (source other than `cache`). This is stricter than dividing
  by all answers (the hot-set cache hits would dilute it); both are in the check.
- **primary share**: answers from `primary` among answers not from the cache, over the
  fault's window.
- **recovery**: from just before the heal is sent (or Redis restarted) until the first
  answer with source `primary` (or `cache` for `redis_killed`) among requests started
  after it.
- **replica_killed**: a client error (non-200 or `default`) is excused only for a request
  in flight at the kill (started before it, ended after it); HAProxy's stats are polled
  every 25 ms after the kill until they show the dead replica `DOWN`, and its counters
  (`stot`+`econ`+`wretr`+`wredis`) must not move after that; every question a surviving
  replica answered from a model (`primary`/`secondary`) must have its key
  (`cache_key(cache.key_prefix, normalize(question))`) in Redis at the end (`KEYS`, up to
  5 s for the queued writes); upstream calls per distinct question are the simulator's
  calls to both models over the distinct questions asked (each is new to the empty Redis
  once, the hot ones too).
- **redis_failover**: the sentinels are asked every 50 ms after the kill
  (`SENTINEL get-master-addr-by-name mymaster`) until they name another primary;
  **recovery** is then from that promotion until the first `cache` answer among requests
  started after it (with the memory layer off, a Redis hit); the redis-layer hit counter
  in `/metrics` must rise after it too.
- **circuit**: the highest `qa_circuit_state` the monitor saw in the window (0 closed,
  1 half-open, 2 open), in the notes.

Targets: no 5xx (but `overloaded` in `burst`); every accepted request answered; p99 within
the deadline; every stream ends with `done`, no truncated or partial answer (streaming
scenarios; their time to first token and continued share are reported, not asserted); primary down with the breaker open → ≤ 1.2 upstream calls per request and
p99 < 150 ms; primary 50% flaky → every request answered by a model, ≥ 85% by the primary,
p99 < 1 s; healed → primary answers again within `breaker.open_ms` + 2 s; cache hits resume
after Redis returns; `overloaded` returned at once (≤ 100 ms) with `Retry-After`, and the
service serves again after the burst; SIGTERM → in-flight requests answered and exit code
0 within the grace period; a replica killed behind HAProxy → client errors only among the
requests in flight at the kill, the replica out of HAProxy's rotation within 1 s and sent
nothing after, p99 of the requests started after the kill ≤ 1 s, no model answer of a
surviving replica missing from Redis, ≤ 1.05 upstream calls per distinct question across
the replicas; a Sentinel failover → 0 client errors and Redis hits again within 10 s of
the promotion (the time from the kill to the promotion is reported).

All the processes (load generator included) share one machine, so latency figures carry
its CPU contention (and that of anything else running): compare runs on the same machine.
Every child is killed when the runner exits, panics, or gets SIGINT/SIGTERM/SIGHUP; a
`kill -9` of the runner itself would orphan them. The whole suite is bounded by 420 s.
";

fn write_doc(
    path: &Path,
    command: &str,
    reports: &[Report],
    ctx: &Ctx,
    elapsed: f64,
) -> Result<(), String> {
    let date = humantime::format_rfc3339_seconds(SystemTime::now());
    let passed = reports.iter().filter(|r| r.passed()).count();
    let mut doc = String::new();
    let _ = writeln!(doc, "# Chaos suite\n");
    let _ = writeln!(
        doc,
        "Generated by `examples/chaos.rs`; do not edit by hand: run `bash scripts/chaos.sh` \
         (add `--quick` for a shorter run, `--scenario NAME` for one scenario).\n"
    );
    let _ = writeln!(doc, "## Last run\n");
    let _ = writeln!(doc, "- command: `{command}`");
    let _ = writeln!(doc, "- date: {date}");
    let _ = writeln!(doc, "- machine: {}", machine());
    let _ = writeln!(doc, "- commit: {}", git_rev(&ctx.root));
    let _ = writeln!(
        doc,
        "- mode: {}; {elapsed:.0} s in all; {passed} of {} scenarios passed\n",
        if ctx.quick { "quick" } else { "full" },
        reports.len()
    );
    let _ = writeln!(doc, "{}", table(reports));
    let _ = writeln!(doc, "### Checks\n\n{}", checks_table(reports));
    let _ = writeln!(doc, "### Notes\n\n{}", notes(reports));
    doc.push_str(METHOD);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    }
    std::fs::write(path, doc).map_err(|e| format!("write {}: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------
// Entry point

const USAGE: &str = "\
usage: chaos [--quick] [--scenario NAME]... [--out PATH] [--keep-logs]

  --quick          shorter phases (about half the time)
  --scenario NAME  run only this scenario (repeatable, or comma-separated):
                   redis_killed, primary_down, primary_hang, primary_flaky, burst, sigterm,
                   stream_cut, stream_hang, replica_killed, redis_failover
  --out PATH       where to write the report (default docs/CHAOS.md)
  --keep-logs      keep the temporary directory of logs even when every check passed

Needs redis-server on PATH, haproxy (replica_killed; scripts/install-deps.sh haproxy) and
the release binaries (scripts/chaos.sh builds them).
Exit code: 0 all checks passed, 1 a check failed, 2 bad usage or setup.
";

struct Args {
    quick: bool,
    scenarios: Vec<Scenario>,
    out: Option<PathBuf>,
    keep_logs: bool,
}

fn parse_args() -> Result<Option<Args>, String> {
    let mut args = Args {
        quick: false,
        scenarios: Vec::new(),
        out: None,
        keep_logs: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--quick" => args.quick = true,
            "--keep-logs" => args.keep_logs = true,
            "--scenario" | "--out" => {
                let value = inline
                    .or_else(|| it.next())
                    .ok_or_else(|| format!("{flag} needs a value"))?;
                if flag == "--out" {
                    args.out = Some(PathBuf::from(value));
                    continue;
                }
                for name in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    let sc = Scenario::ALL
                        .into_iter()
                        .find(|s| s.name() == name)
                        .ok_or_else(|| format!("unknown scenario {name:?}"))?;
                    if !args.scenarios.contains(&sc) {
                        args.scenarios.push(sc);
                    }
                }
            }
            _ => return Err(format!("unknown argument {arg:?}")),
        }
    }
    if args.scenarios.is_empty() {
        args.scenarios = Scenario::ALL.to_vec();
    }
    Ok(Some(args))
}

async fn run(args: Args) -> Result<bool, String> {
    let started = Instant::now();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let bins = bin_dir()?;
    for bin in ["resilient-qa", "upstream-sim"] {
        if !bins.join(bin).is_file() {
            return Err(format!(
                "{} is missing: run `cargo build --release --bins` (scripts/chaos.sh does)",
                bins.join(bin).display()
            ));
        }
    }
    let tmp = std::env::temp_dir().join(format!(
        "resilient-qa-chaos-{}-{}",
        std::process::id(),
        unix_secs()
    ));
    std::fs::create_dir_all(&tmp).map_err(|e| format!("mkdir {}: {e}", tmp.display()))?;
    let ctx = Ctx {
        expect: Arc::new(Expect::load(&root)?),
        root: root.clone(),
        bins,
        tmp,
        quick: args.quick,
    };
    let mut reports = Vec::new();
    for sc in &args.scenarios {
        reports.push(run_scenario(&ctx, *sc).await);
    }
    let elapsed = started.elapsed().as_secs_f64();

    println!();
    println!("{}", table(&reports));
    println!("{}", checks_table(&reports));
    println!("{}", notes(&reports));

    let command = std::env::var("CHAOS_COMMAND").unwrap_or_else(|_| {
        let rest: Vec<String> = std::env::args().skip(1).collect();
        format!("cargo run --release --example chaos -- {}", rest.join(" "))
            .trim_end()
            .to_owned()
    });
    let out = args.out.unwrap_or_else(|| root.join("docs/CHAOS.md"));
    write_doc(&out, &command, &reports, &ctx, elapsed)?;
    let all_passed = reports.iter().all(Report::passed);
    println!("report written to {}", out.display());
    if all_passed && !args.keep_logs {
        let _ = std::fs::remove_dir_all(&ctx.tmp);
    } else {
        println!("logs kept in {}", ctx.tmp.display());
    }
    let failed: Vec<String> = reports
        .iter()
        .flat_map(|r| {
            r.checks
                .iter()
                .filter(|c| !c.pass)
                .map(move |c| format!("{}: {}", r.name, c.name))
        })
        .collect();
    if failed.is_empty() {
        println!("chaos: all checks passed in {elapsed:.0} s");
    } else {
        println!("chaos: {} check(s) FAILED in {elapsed:.0} s:", failed.len());
        for f in &failed {
            println!("  - {f}");
        }
    }
    Ok(all_passed)
}

/// Completes on SIGINT, SIGTERM or SIGHUP, so the guards get dropped.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let wait = |kind: SignalKind| async move {
        match signal(kind) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = wait(SignalKind::interrupt()) => "SIGINT",
        () = wait(SignalKind::terminate()) => "SIGTERM",
        () = wait(SignalKind::hangup()) => "SIGHUP",
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(args)) => args,
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("chaos: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chaos: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    // Dropping the `run` future (signal, budget) drops every guard: children are killed.
    let code = runtime.block_on(async {
        tokio::select! {
            result = tokio::time::timeout(SUITE_BUDGET, run(args)) => match result {
                Ok(Ok(true)) => ExitCode::SUCCESS,
                Ok(Ok(false)) => ExitCode::FAILURE,
                Ok(Err(e)) => {
                    eprintln!("chaos: {e}");
                    ExitCode::from(2)
                }
                Err(_) => {
                    eprintln!("chaos: the suite ran past {} s; stopped", SUITE_BUDGET.as_secs());
                    ExitCode::FAILURE
                }
            },
            signal = interrupted() => {
                eprintln!("chaos: {signal}: stopping every child process");
                ExitCode::from(130)
            }
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    code
}
