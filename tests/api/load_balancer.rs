//! Three real service processes behind a real HAProxy (Debian's), sharing one Redis: a
//! question asked at once through the load balancer goes upstream once, and a replica
//! killed under load costs at most the requests it had in flight, never an answer kept
//! in the cache.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use resilient_qa::config::Config;
use resilient_qa::pipeline::normalize::{cache_key, normalize};
use resilient_qa::sim::{Behavior, SimServer};

use crate::helpers::*;

const BIN: &str = env!("CARGO_BIN_EXE_resilient-qa");

/// A child process killed when dropped.
struct Proc(Option<Child>);

impl Proc {
    fn kill(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn haproxy_binary() -> String {
    ["/usr/sbin/haproxy", "/usr/local/sbin/haproxy"]
        .iter()
        .find(|p| std::path::Path::new(p).exists())
        .map(|p| p.to_string())
        .unwrap_or_else(|| "haproxy".into())
}

/// Three replicas and HAProxy in front of them, as `config/haproxy/haproxy.cfg` runs
/// them (its retry and health-check settings), on the test's own ports.
struct Deployment {
    replicas: Vec<(String, Proc)>,
    _haproxy: Proc,
    base: String,
    cfg: std::path::PathBuf,
}

impl Drop for Deployment {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.cfg);
    }
}

async fn deploy(redis: &Redis, sim: &SimServer) -> Deployment {
    let client = reqwest::Client::new();
    let mut replicas = Vec::new();
    for i in 1..=3 {
        let port = free_port();
        let child = Command::new(BIN)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env("REDIS_URL", redis.url())
            .env("OPENAI_BASE_URL", sim.base_url())
            .env("QA__SERVER__SHUTDOWN_GRACE_SECS", "10")
            .env("RUST_LOG", "warn")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        replicas.push((format!("r{i}"), Proc(Some(child))));
        let base = format!("http://127.0.0.1:{port}");
        assert!(
            eventually(Duration::from_secs(20), || async {
                client
                    .get(format!("{base}/readyz"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200)
            })
            .await,
            "replica {i} did not come up"
        );
        replicas.last_mut().unwrap().0 = format!("r{i}:{port}");
    }
    // HAProxy on a free port; started again on another if the port was taken meanwhile
    // (by a test running beside this one) and it could not bind.
    let mut started = None;
    for _ in 0..3 {
        let front = free_port();
        let cfg = write_haproxy_config(front, &replicas);
        let mut haproxy = Proc(Some(
            Command::new(haproxy_binary())
                .args(["-db", "-f"])
                .arg(&cfg)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        ));
        let base = format!("http://127.0.0.1:{front}");
        // Up once every replica has answered through it.
        let mut seen = BTreeSet::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while seen.len() < 3 && Instant::now() < deadline {
            if haproxy
                .0
                .as_mut()
                .is_some_and(|c| c.try_wait().ok().flatten().is_some())
            {
                break;
            }
            if let Ok(r) = client.get(format!("{base}/healthz")).send().await
                && let Some(s) = r.headers().get("x-served-by")
            {
                seen.insert(s.to_str().unwrap_or("").to_string());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if seen.len() == 3 {
            started = Some((haproxy, base, cfg));
            break;
        }
        haproxy.kill();
        let _ = std::fs::remove_file(&cfg);
    }
    let (haproxy, base, cfg) = started.expect("haproxy did not balance over the three replicas");
    Deployment {
        replicas,
        _haproxy: haproxy,
        base,
        cfg,
    }
}

/// Writes HAProxy's configuration for `replicas` behind `front`: the shipped
/// configuration's balancing, retries and health check (config/haproxy/haproxy.cfg), with
/// the test's addresses and faster checks than production needs; checked with
/// `haproxy -c`.
fn write_haproxy_config(front: u16, replicas: &[(String, Proc)]) -> std::path::PathBuf {
    let servers: String = replicas
        .iter()
        .map(|(name, _)| {
            let (n, port) = name.split_once(':').unwrap();
            format!("    server {n} 127.0.0.1:{port}\n")
        })
        .collect();
    let cfg_text = format!(
        "global\n    maxconn 4096\n\
         defaults\n    mode http\n    retries 3\n    option redispatch\n\
         \x20   retry-on conn-failure empty-response\n\
         \x20   timeout connect 1s\n    timeout client 30s\n    timeout server 30s\n\
         frontend fe\n    bind 127.0.0.1:{front}\n    default_backend be\n\
         backend be\n    balance roundrobin\n    option httpchk GET /readyz\n\
         \x20   http-check expect status 200\n\
         \x20   http-response set-header X-Served-By %[srv_name]\n\
         \x20   default-server inter 500ms fall 2 rise 2 check\n{servers}"
    );
    let cfg = std::env::temp_dir().join(format!("qa-haproxy-{}-{front}.cfg", std::process::id()));
    std::fs::write(&cfg, cfg_text).unwrap();
    let check = Command::new(haproxy_binary())
        .args(["-c", "-q", "-f"])
        .arg(&cfg)
        .status()
        .expect("haproxy not found: run scripts/install-deps.sh");
    assert!(check.success(), "haproxy -c refused the test configuration");
    cfg
}

async fn ask(client: &reqwest::Client, base: &str, question: &str) -> (u16, String, String) {
    match client
        .post(format!("{base}/ask"))
        .json(&serde_json::json!({ "question": question }))
        .send()
        .await
    {
        Ok(r) => {
            let status = r.status().as_u16();
            let by = r
                .headers()
                .get("x-served-by")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let body: serde_json::Value = r.json().await.unwrap_or_default();
            let source = body["source"].as_str().unwrap_or("").to_string();
            (status, source, by)
        }
        // No answer at all: the error, in place of the source, for the assertion message.
        Err(e) => (0, format!("no answer: {e}"), String::new()),
    }
}

fn slow_sim(sim: &SimServer, latency_ms: u64) {
    sim.set_behavior(
        "gpt-4o",
        Behavior {
            latency_ms,
            ..Behavior::default()
        },
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_clients_asking_twenty_new_questions_through_haproxy_cause_one_call_each() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    slow_sim(&sim, 300);
    let deployment = deploy(&redis, &sim).await;
    let client = reqwest::Client::new();

    let asks = (0..200).map(|i| {
        let client = &client;
        let base = &deployment.base;
        async move {
            ask(
                client,
                base,
                &format!("balanced question number {}", i % 20),
            )
            .await
        }
    });
    let answers = futures_util::future::join_all(asks).await;

    let mut replicas = BTreeSet::new();
    for (status, source, by) in &answers {
        assert_eq!(*status, 200, "{source} from {by}");
        assert!(["primary", "cache"].contains(&source.as_str()), "{source}");
        replicas.insert(by.clone());
    }
    assert_eq!(replicas.len(), 3, "answered by {replicas:?}");
    let calls = sim.calls("gpt-4o");
    // What each replica's leases did, for the message.
    let mut leases = Vec::new();
    for (name, _) in &deployment.replicas {
        let port = name.split_once(':').unwrap().1;
        let text = client
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let lines: Vec<String> = text
            .lines()
            .filter(|l| l.starts_with("qa_question_leases_total"))
            .map(|l| l.trim_start_matches("qa_question_leases_total").to_string())
            .collect();
        leases.push(format!("{name}: {}", lines.join(" ")));
    }
    println!(
        "haproxy + 3 replicas: 200 clients, 20 new questions: {calls} upstream calls; leases {leases:?}"
    );
    assert!(
        calls <= 21,
        "{calls} upstream calls for 20 questions; leases {leases:?}"
    );
}

/// Clients asking new and repeated questions through the load balancer until `stop`:
/// each answer's start, end, status, source, replica and question.
type Seen = Vec<(Instant, Instant, u16, String, String, String)>;

async fn load(base: String, clients: usize, stop: Arc<AtomicBool>) -> Seen {
    let client = reqwest::Client::new();
    let tasks = (0..clients).map(|c| {
        let client = client.clone();
        let base = base.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let question = format!("failover question {c}-{n}");
                n += 1;
                let start = Instant::now();
                let (status, source, by) = ask(&client, &base, &question).await;
                seen.push((start, Instant::now(), status, source, by, question));
            }
            seen
        })
    });
    let mut all = Vec::new();
    for t in futures_util::future::join_all(tasks).await {
        all.extend(t.unwrap());
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_under_load_costs_at_most_its_requests_in_flight_and_no_kept_answer() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    slow_sim(&sim, 50);
    let mut deployment = deploy(&redis, &sim).await;

    let stop = Arc::new(AtomicBool::new(false));
    let running = tokio::spawn(load(deployment.base.clone(), 12, stop.clone()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed = Instant::now();
    let (victim, _) = &mut deployment.replicas[1];
    let victim = victim.split_once(':').unwrap().0.to_string();
    deployment.replicas[1].1.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let seen = running.await.unwrap();

    let failed: Vec<_> = seen.iter().filter(|s| s.2 != 200).collect();
    // Only requests in flight when the replica died may fail: started before the kill,
    // not finished by then.
    for (start, end, status, _, _, question) in &failed {
        assert!(
            *start <= killed && *end >= killed,
            "{question} failed with {status} without being in flight at the kill"
        );
    }
    let after: Vec<_> = seen.iter().filter(|s| s.0 > killed).collect();
    assert!(!after.is_empty());
    assert!(
        after.iter().all(|s| s.4 != victim),
        "the load balancer still sent requests to the dead replica"
    );
    // Every answer a live replica gave a model's answer for is kept in Redis.
    let config = Config::default();
    let conn = redis.conn().await;
    let mut kept = 0;
    for (_, _, status, source, by, question) in &seen {
        if *status == 200 && source == "primary" && *by != victim {
            let key = cache_key(&config.cache.key_prefix, &normalize(question));
            let found: bool = eventually(Duration::from_secs(5), || {
                let mut conn = conn.clone();
                let key = key.clone();
                async move {
                    deadpool_redis::redis::cmd("EXISTS")
                        .arg(&key)
                        .query_async::<bool>(&mut conn)
                        .await
                        .unwrap_or(false)
                }
            })
            .await;
            assert!(found, "the answer to {question} ({by}) is not in Redis");
            kept += 1;
        }
    }
    println!(
        "replica {victim} killed under load: {} answers, {} failed (in flight at the kill), \
         {kept} model answers kept in Redis",
        seen.len(),
        failed.len()
    );
}
