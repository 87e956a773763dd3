//! Redis as people run it beyond one server: a primary watched by Redis Sentinel, and a
//! Redis Cluster, each made of real `redis-server` processes of the test's own. A node's
//! failure, a failover and a key migration are cache misses for the requests they touch,
//! never errors, and the service finds the new topology by itself.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use resilient_qa::config::{Config, RedisMode};
use resilient_qa::pipeline::normalize::{cache_key, normalize};
use resilient_qa::sim::SimServer;

use crate::helpers::*;

/// A folder of the test's own for config files, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(what: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("qa-{what}-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One `redis-server` process (a data node or a sentinel), killed when dropped.
struct Node {
    port: u16,
    child: Option<Child>,
}

impl Node {
    fn spawn(port: u16, args: &[String]) -> Node {
        let child = Command::new("redis-server")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server not found: run scripts/install-deps.sh");
        let node = Node {
            port,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if node.cli(&["PING"]).is_some_and(|r| r.trim() == "PONG") {
                return node;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not start on port {port}");
    }

    /// A data node on `port` (with `extra` arguments), keeping nothing on disk.
    fn data(port: u16, dir: &Path, extra: &[String]) -> Node {
        let mut args: Vec<String> = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            &dir.display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend_from_slice(extra);
        Node::spawn(port, &args)
    }

    /// `redis-cli -p PORT ARGS...`: its output, or `None` when it failed.
    fn cli(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .stderr(Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).to_string())
            .filter(|s| !s.starts_with("Could not connect"))
    }

    /// SIGKILL: the node vanishes as in a crash.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A primary, a replica and three sentinels watching them (quorum 2, a primary is down
/// after 1 s of silence).
struct SentinelGroup {
    primary: Node,
    _replica: Node,
    sentinels: Vec<Node>,
    _dir: Scratch,
}

const MASTER: &str = "mymaster";

impl SentinelGroup {
    fn start() -> SentinelGroup {
        let dir = Scratch::new("sentinel");
        let primary = Node::data(free_port(), &dir.0, &[]);
        let replica = Node::data(
            free_port(),
            &dir.0,
            &[
                "--replicaof".into(),
                "127.0.0.1".into(),
                primary.port.to_string(),
            ],
        );
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            let conf = dir.0.join(format!("sentinel-{port}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                     sentinel monitor {MASTER} 127.0.0.1 {primary} 2\n\
                     sentinel down-after-milliseconds {MASTER} 1000\n\
                     sentinel failover-timeout {MASTER} 10000\n\
                     sentinel parallel-syncs {MASTER} 1\n",
                    dir = dir.0.display(),
                    primary = primary.port,
                ),
            )
            .unwrap();
            sentinels.push(Node::spawn(
                port,
                &[conf.display().to_string(), "--sentinel".into()],
            ));
        }
        let group = SentinelGroup {
            primary,
            _replica: replica,
            sentinels,
            _dir: dir,
        };
        // Ready once the replica is in sync and every sentinel knows the other two.
        assert!(
            wait_until(Duration::from_secs(20), || {
                let synced = group
                    .primary
                    .cli(&["INFO", "replication"])
                    .is_some_and(|i| {
                        i.contains("connected_slaves:1") && i.contains("state=online")
                    });
                let known = group.sentinels.iter().all(|s| {
                    s.cli(&["SENTINEL", "master", MASTER])
                        .is_some_and(|m| m.contains("num-other-sentinels\n2"))
                });
                synced && known
            }),
            "the sentinel group did not form"
        );
        group
    }

    fn urls(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|s| format!("redis://127.0.0.1:{}", s.port))
            .collect()
    }

    /// The port of the primary the sentinels name now.
    fn primary_port(&self) -> Option<u16> {
        self.sentinels.iter().find_map(|s| {
            let out = s.cli(&["SENTINEL", "get-master-addr-by-name", MASTER])?;
            out.lines().nth(1)?.trim().parse().ok()
        })
    }
}

/// Three primaries and three replicas in cluster mode (a node is failed after 1 s of
/// silence).
struct Cluster {
    nodes: Vec<Node>,
    _dir: Scratch,
}

/// A free port whose cluster bus port (port + 10000) is free too.
fn free_cluster_port() -> u16 {
    loop {
        let port = free_port();
        if port < 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

impl Cluster {
    fn start() -> Cluster {
        let dir = Scratch::new("cluster");
        let mut nodes = Vec::new();
        for _ in 0..6 {
            let port = free_cluster_port();
            nodes.push(Node::data(
                port,
                &dir.0,
                &[
                    "--cluster-enabled".into(),
                    "yes".into(),
                    "--cluster-config-file".into(),
                    format!("nodes-{port}.conf"),
                    "--cluster-node-timeout".into(),
                    "1000".into(),
                ],
            ));
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(created.success(), "redis-cli --cluster create failed");
        let cluster = Cluster { nodes, _dir: dir };
        assert!(
            wait_until(Duration::from_secs(30), || cluster.healthy()
                && cluster.replicas_synced()),
            "the cluster did not form"
        );
        cluster
    }

    /// Every replica is in sync with its primary (a replica that never synced may not
    /// take over).
    fn replicas_synced(&self) -> bool {
        let mut replicas = 0;
        for n in self.nodes.iter().filter(|n| n.child.is_some()) {
            let Some(info) = n.cli(&["INFO", "replication"]) else {
                return false;
            };
            if info.contains("role:slave") {
                if !info.contains("master_link_status:up") {
                    return false;
                }
                replicas += 1;
            }
        }
        replicas == 3
    }

    /// Every live node sees the cluster `ok`, with three primaries serving.
    fn healthy(&self) -> bool {
        self.nodes.iter().filter(|n| n.child.is_some()).all(|n| {
            n.cli(&["CLUSTER", "INFO"])
                .is_some_and(|i| i.contains("cluster_state:ok"))
        }) && self.primaries().len() == 3
    }

    fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }

    /// `(node id, port)` of each primary serving slots, as a live node sees them.
    fn primaries(&self) -> Vec<(String, u16)> {
        let Some(out) = self
            .nodes
            .iter()
            .filter(|n| n.child.is_some())
            .find_map(|n| n.cli(&["CLUSTER", "NODES"]))
        else {
            return Vec::new();
        };
        out.lines()
            .filter(|l| l.contains("master") && !l.contains("fail") && l.split(' ').count() > 8)
            .filter_map(|l| {
                let mut f = l.split(' ');
                let id = f.next()?.to_string();
                let addr = f.next()?;
                let port = addr.split(['@', ':']).nth(1)?.parse().ok()?;
                Some((id, port))
            })
            .collect()
    }

    fn node(&mut self, port: u16) -> &mut Node {
        self.nodes.iter_mut().find(|n| n.port == port).unwrap()
    }
}

fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// Waits (off the runtime's threads: the checks run `redis-cli`) up to 30 s for
/// `promoted` to hold of `topology`: whether it did, when, and the topology back.
async fn promotion<T: Send + 'static>(
    topology: T,
    promoted: impl Fn(&T) -> bool + Send + 'static,
) -> (bool, Instant, T) {
    tokio::task::spawn_blocking(move || {
        let ok = wait_until(Duration::from_secs(30), || promoted(&topology));
        (ok, Instant::now(), topology)
    })
    .await
    .unwrap()
}

/// The service over `sim` in `mode` with `urls`: no memory layer, so every lookup is a
/// Redis lookup and what Redis does shows in every answer.
fn config(mode: RedisMode, urls: Vec<String>, sim: &SimServer) -> Config {
    let mut c = test_config("redis://127.0.0.1:1", Some(sim));
    c.redis.mode = mode;
    c.redis.urls = urls;
    c.cache.memory_max_entries = 0;
    c
}

const QUESTIONS: usize = 20;

fn question(i: usize) -> String {
    format!("topology question {i}")
}

/// Asks every question once and waits until each is a cache hit.
async fn warm(app: &TestApp) {
    for i in 0..QUESTIONS {
        let (status, body) = app.ask(&question(i)).await;
        assert_eq!(status, 200, "{body}");
    }
    for i in 0..QUESTIONS {
        assert!(
            eventually(Duration::from_secs(5), || async {
                app.source_of(&question(i)).await == "cache"
            })
            .await,
            "question {i} never became a cache hit"
        );
    }
}

/// What clients saw while the load ran: every answer's status and source, with when
/// it came.
struct Load {
    answers: Vec<(Instant, u16, String, usize)>,
}

impl Load {
    fn errors(&self) -> Vec<&(Instant, u16, String, usize)> {
        self.answers
            .iter()
            .filter(|(_, status, source, _)| *status != 200 || source == "default")
            .collect()
    }

    /// Every answer was a 200 from a tier before the default reply.
    fn assert_no_errors(&self) {
        let errors = self.errors();
        assert!(
            errors.is_empty(),
            "{} errors, e.g. {:?}",
            errors.len(),
            errors.first()
        );
    }

    /// The first cache hit at or after `t` of one of `questions`.
    fn first_hit_after(&self, t: Instant, questions: &[usize]) -> Option<Instant> {
        self.answers
            .iter()
            .filter(|(at, _, source, q)| *at >= t && source == "cache" && questions.contains(q))
            .map(|(at, _, _, _)| *at)
            .min()
    }
}

/// `clients` loops asking the warm questions until `stop` is set.
async fn run_load(app: Arc<TestApp>, clients: usize, stop: Arc<AtomicBool>) -> Load {
    let tasks = (0..clients).map(|c| {
        let app = app.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut i = c;
            while !stop.load(Ordering::Relaxed) {
                let q = i % QUESTIONS;
                let (status, body) = app.ask(&question(q)).await;
                let source = body["source"].as_str().unwrap_or("").to_string();
                seen.push((Instant::now(), status, source, q));
                i += clients;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            seen
        })
    });
    let mut answers = Vec::new();
    for t in futures_util::future::join_all(tasks).await {
        answers.extend(t.unwrap());
    }
    Load { answers }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_mode_answers_from_the_primary_the_sentinels_name() {
    let group = SentinelGroup::start();
    let sim = healthy_sim().await;
    let app = TestApp::spawn(config(RedisMode::Sentinel, group.urls(), &sim)).await;
    warm(&app).await;
    let (_, ready) = app.get_json("/readyz").await;
    assert_eq!(ready["checks"]["redis"], "up", "{ready}");
    // The answers live on the primary (and its replica), where the sentinels point.
    let keys = group.primary.cli(&["DBSIZE"]).unwrap();
    assert!(keys.trim().parse::<usize>().unwrap() >= QUESTIONS, "{keys}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_under_load_makes_no_errors_and_hits_return_within_ten_seconds() {
    let mut group = SentinelGroup::start();
    let sim = healthy_sim().await;
    let app = Arc::new(TestApp::spawn(config(RedisMode::Sentinel, group.urls(), &sim)).await);
    warm(&app).await;
    // Answers written to the primary reach the replica before it is killed.
    let first = group.primary.port;
    std::thread::sleep(Duration::from_millis(300));

    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(run_load(app.clone(), 8, stop.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed = Instant::now();
    group.primary.kill();
    let (ok, failed_over, _group) = promotion(group, move |g: &SentinelGroup| {
        g.primary_port().is_some_and(|p| p != first)
    })
    .await;
    assert!(ok, "the sentinels did not promote the replica");
    tokio::time::sleep(Duration::from_secs(12)).await;
    stop.store(true, Ordering::Relaxed);
    let load = load.await.unwrap();

    load.assert_no_errors();
    let all: Vec<usize> = (0..QUESTIONS).collect();
    let hit = load
        .first_hit_after(failed_over, &all)
        .expect("no cache hit after the failover");
    let back = hit.duration_since(failed_over);
    println!(
        "sentinel failover: {} answers, 0 errors; primary killed, replica promoted after {:?}, \
         first cache hit {:?} after the promotion",
        load.answers.len(),
        failed_over.duration_since(killed),
        back
    );
    assert!(
        back <= Duration::from_secs(10),
        "hits came back after {back:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_mode_spreads_answers_over_the_primaries_and_deletes_reach_them() {
    let cluster = Cluster::start();
    let sim = healthy_sim().await;
    let mut c = config(RedisMode::Cluster, cluster.urls()[..1].to_vec(), &sim);
    c.admin_token = Some("cluster-admin-token".to_string().into());
    let app = TestApp::spawn(c).await;
    warm(&app).await;
    let holding = cluster
        .primaries()
        .iter()
        .filter(|(_, port)| {
            let n = cluster.nodes.iter().find(|n| n.port == *port).unwrap();
            n.cli(&["DBSIZE"])
                .is_some_and(|d| d.trim().parse::<usize>().unwrap_or(0) > 0)
        })
        .count();
    assert!(holding >= 2, "answers on {holding} primaries");

    let resp = app
        .client
        .delete(app.url("/admin/cache"))
        .bearer_auth("cluster-admin-token")
        .json(&serde_json::json!({ "question": question(3) }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["deleted"], true, "{body}");
    assert_eq!(app.source_of(&question(3)).await, "primary");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_failover_under_load_makes_no_errors_and_hits_return_within_ten_seconds() {
    let mut cluster = Cluster::start();
    let sim = healthy_sim().await;
    let app = Arc::new(TestApp::spawn(config(RedisMode::Cluster, cluster.urls(), &sim)).await);
    warm(&app).await;
    std::thread::sleep(Duration::from_millis(300));
    let before = cluster.primaries();
    let (victim_id, victim_port) = before[0].clone();
    let victim_keys = cluster.node(victim_port).cli(&["KEYS", "*"]).unwrap();
    let on_victim: Vec<usize> = (0..QUESTIONS)
        .filter(|i| {
            let key = cache_key(
                &Config::default().cache.key_prefix,
                &normalize(&question(*i)),
            );
            victim_keys.lines().any(|k| k.trim() == key)
        })
        .collect();
    assert!(!on_victim.is_empty(), "no answer on the primary to kill");

    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(run_load(app.clone(), 8, stop.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed = Instant::now();
    cluster.node(victim_port).kill();
    let (ok, failed_over, _cluster) = promotion(cluster, move |c: &Cluster| {
        c.healthy() && c.primaries().iter().all(|(id, _)| *id != victim_id)
    })
    .await;
    assert!(ok, "the cluster did not promote a replica");
    tokio::time::sleep(Duration::from_secs(12)).await;
    stop.store(true, Ordering::Relaxed);
    let load = load.await.unwrap();

    load.assert_no_errors();
    // The questions whose answers lived on the killed primary: hits again once its
    // replica serves their slots.
    let back = load
        .first_hit_after(failed_over, &on_victim)
        .expect("no hit after the failover on the killed primary's slots")
        .duration_since(failed_over);
    println!(
        "cluster failover: {} answers, 0 errors; primary killed, replica promoted after {:?}, \
         first cache hit on its {} questions {:?} after the promotion",
        load.answers.len(),
        failed_over.duration_since(killed),
        on_victim.len(),
        back
    );
    assert!(
        back <= Duration::from_secs(10),
        "hits came back after {back:?}"
    );
    // Every question's slot is served again: the answers the promoted replica holds
    // are hits once more.
    for i in 0..QUESTIONS {
        assert_eq!(app.source_of(&question(i)).await, "cache", "question {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_migration_between_cluster_primaries_makes_no_errors() {
    let cluster = Cluster::start();
    let sim = healthy_sim().await;
    let app = Arc::new(TestApp::spawn(config(RedisMode::Cluster, cluster.urls(), &sim)).await);
    warm(&app).await;
    let primaries = cluster.primaries();
    let (from, _) = &primaries[0];
    let (to, _) = &primaries[1];

    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(run_load(app.clone(), 8, stop.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seed = format!("127.0.0.1:{}", cluster.nodes[0].port);
    let (from, to) = (from.clone(), to.clone());
    let moved = tokio::task::spawn_blocking(move || {
        Command::new("redis-cli")
            .args(["--cluster", "reshard", &seed])
            .args(["--cluster-from", &from, "--cluster-to", &to])
            .args(["--cluster-slots", "5461", "--cluster-yes"])
            .args(["--cluster-pipeline", "1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(moved.success(), "redis-cli --cluster reshard failed");
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let load = load.await.unwrap();

    load.assert_no_errors();
    // The moved answers are still there, on their new owner.
    for i in 0..QUESTIONS {
        assert_eq!(app.source_of(&question(i)).await, "cache", "question {i}");
    }
    drop(cluster);
}
