//! Load generator of the streaming benchmarks (`bench/streams.sh` runs it).
//!
//! Raw HTTP/1.1 over tokio sockets (no HTTP client library between the clock and the
//! wire), one new loopback connection per stream (`Connection: close`):
//!
//! ```text
//! stream_load ttft --addr HOST:PORT --target service|sim --rate 1000 --secs 10 --tag T
//!     Opens streams at a fixed rate (open loop: each at its slot of a constant-rate
//!     schedule, whatever the earlier ones are doing) with a question never asked before,
//!     against the service (`POST /ask`, `Accept: text/event-stream`) or straight against
//!     the simulator (`POST /v1/chat/completions`, `"stream": true`, the body the service
//!     sends). Measures, per stream, from just before the connect to the first piece of
//!     answer: the first `event: delta` from the service, the first chunk with content
//!     from the simulator. Reads every stream to its end. Prints one JSON object.
//!
//! stream_load idle --addr HOST:PORT --streams 10000 --per-question 2 --pid PID --tag T
//!     Opens that many streams against the service (each question asked by
//!     `per-question` streams), waits for every response head, then probes
//!     `GET /healthz` on a connection of its own while they stay open, and reads the
//!     service's VmRSS / VmHWM from /proc/PID/status. Prints one JSON object.
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::net::TcpStream;

const PROMPT: &str = "你是一个专业的客服助手。请回答用户的问题。\\n\\n问题:{question}\\n\\n回答:";

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn num<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    arg(args, name)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn write_all(s: &TcpStream, mut buf: &[u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        s.writable().await?;
        match s.try_write(buf) {
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads what is there (at least one byte, or 0 at the end).
async fn read_some(s: &TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        s.readable().await?;
        match s.try_read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

fn request(target: &str, question: &str) -> Vec<u8> {
    let (path, body, accept) = if target == "sim" {
        let content = PROMPT.replace("{question}", question);
        (
            "/v1/chat/completions",
            format!(
                r#"{{"model":"gpt-4o","messages":[{{"role":"user","content":"{content}"}}],"temperature":0.0,"stream":true}}"#
            ),
            "",
        )
    } else {
        (
            "/ask",
            format!(r#"{{"question":"{question}"}}"#),
            "Accept: text/event-stream\r\n",
        )
    };
    format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{accept}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Whether the bytes so far hold the first piece of answer.
fn first_piece(target: &str, seen: &[u8]) -> bool {
    if target == "sim" {
        // The first chunk is `"delta":{"role":"assistant","content":""}`; pieces follow
        // as `"delta":{"content":"…"}`.
        contains(seen, br#""delta":{"content":""#)
    } else {
        contains(seen, b"event: delta") || contains(seen, b"event:delta")
    }
}

struct One {
    /// Seconds from the connect to the first piece; `None` if none came.
    first: Option<f64>,
    status_ok: bool,
    /// Seconds the start lagged behind its slot.
    lag: f64,
}

async fn one_stream(addr: SocketAddr, target: &str, question: String, slot: Instant) -> One {
    let start = Instant::now();
    let lag = start.saturating_duration_since(slot).as_secs_f64();
    let mut out = One {
        first: None,
        status_ok: false,
        lag,
    };
    let Ok(s) = TcpStream::connect(addr).await else {
        return out;
    };
    let _ = s.set_nodelay(true);
    if write_all(&s, &request(target, &question)).await.is_err() {
        return out;
    }
    let mut seen: Vec<u8> = Vec::with_capacity(4096);
    let mut buf = vec![0u8; 16384];
    loop {
        match read_some(&s, &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                seen.extend_from_slice(&buf[..n]);
                if !out.status_ok && seen.starts_with(b"HTTP/1.1 200") {
                    out.status_ok = true;
                }
                if out.first.is_none() && first_piece(target, &seen) {
                    out.first = Some(start.elapsed().as_secs_f64());
                    // Only the end is needed from here on.
                    seen.clear();
                }
            }
        }
    }
    out
}

fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn ms(v: Option<f64>) -> serde_json::Value {
    v.map_or(serde_json::Value::Null, |s| json!(s * 1000.0))
}

async fn ttft(args: &[String]) -> Result<serde_json::Value, String> {
    let addr: SocketAddr = arg(args, "--addr")
        .ok_or("--addr needed")?
        .parse()
        .map_err(|e| format!("--addr: {e}"))?;
    let target = arg(args, "--target").unwrap_or_else(|| "service".into());
    let rate: f64 = num(args, "--rate", 1000.0);
    let secs: f64 = num(args, "--secs", 10.0);
    let tag = arg(args, "--tag").unwrap_or_else(|| "ttft".into());
    let total = (rate * secs) as u64;
    let t0 = Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let slot = t0 + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(tokio::time::Instant::from_std(slot)).await;
        let target = target.clone();
        let question = format!("Where is my parcel? [{tag} #{i}]");
        tasks.push(tokio::spawn(async move {
            one_stream(addr, &target, question, slot).await
        }));
    }
    let sent_in = t0.elapsed().as_secs_f64();
    let mut firsts = Vec::new();
    let mut lags = Vec::new();
    let (mut ok, mut no_first) = (0u64, 0u64);
    for t in tasks {
        let one = t.await.map_err(|e| format!("task: {e}"))?;
        lags.push(one.lag);
        if one.status_ok {
            ok += 1;
        }
        match one.first {
            Some(f) => firsts.push(f),
            None => no_first += 1,
        }
    }
    firsts.sort_by(f64::total_cmp);
    lags.sort_by(f64::total_cmp);
    Ok(json!({
        "target": target,
        "rate": rate,
        "streams": total,
        "achieved_rate": total as f64 / sent_in,
        "status_200": ok,
        "without_first_piece": no_first,
        "first_piece_ms": {
            "p50": ms(percentile(&firsts, 0.5)),
            "p90": ms(percentile(&firsts, 0.9)),
            "p99": ms(percentile(&firsts, 0.99)),
            "p999": ms(percentile(&firsts, 0.999)),
            "max": ms(firsts.last().copied()),
        },
        "start_lag_ms": {
            "p50": ms(percentile(&lags, 0.5)),
            "p99": ms(percentile(&lags, 0.99)),
            "max": ms(lags.last().copied()),
        },
    }))
}

fn proc_status(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

fn fds(pid: u32) -> Option<usize> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|d| d.count())
}

/// Opens one stream and waits for its response head; keeps the socket.
async fn hold(addr: SocketAddr, question: String) -> Result<TcpStream, String> {
    let s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    write_all(&s, &request("service", &question))
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 4096];
    while !contains(&seen, b"\r\n\r\n") {
        match read_some(&s, &mut buf).await {
            Ok(0) => return Err("closed before the head".into()),
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    if !seen.starts_with(b"HTTP/1.1 200") || !contains(&seen, b"text/event-stream") {
        return Err(format!(
            "not a stream: {}",
            String::from_utf8_lossy(&seen[..seen.len().min(120)])
        ));
    }
    Ok(s)
}

async fn healthz_probe(addr: SocketAddr, n: usize) -> Result<Vec<f64>, String> {
    let s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = s.set_nodelay(true);
    let req = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    let mut buf = vec![0u8; 4096];
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        write_all(&s, req)
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut seen = Vec::new();
        // /healthz answers a small JSON object: the head, then a body ending in `}`.
        while !(contains(&seen, b"\r\n\r\n") && seen.ends_with(b"}")) {
            match read_some(&s, &mut buf).await {
                Ok(0) => return Err("healthz connection closed".into()),
                Ok(k) => seen.extend_from_slice(&buf[..k]),
                Err(e) => return Err(format!("read: {e}")),
            }
        }
        out.push(start.elapsed().as_secs_f64());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(out)
}

async fn idle(args: &[String]) -> Result<serde_json::Value, String> {
    let addr: SocketAddr = arg(args, "--addr")
        .ok_or("--addr needed")?
        .parse()
        .map_err(|e| format!("--addr: {e}"))?;
    let n: usize = num(args, "--streams", 10_000);
    let per_q: usize = num(args, "--per-question", 1).max(1);
    let pid: u32 = num(args, "--pid", 0);
    let probes: usize = num(args, "--probes", 250);
    let tag = arg(args, "--tag").unwrap_or_else(|| "idle".into());
    let rss = |f: &str| proc_status(pid, f).map_or(serde_json::Value::Null, |k| json!(k));

    let before_probe = healthz_probe(addr, 50).await?;
    let rss_before = rss("VmRSS:");
    let opened = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut held = Vec::with_capacity(n);
    let mut errors: Vec<String> = Vec::new();
    // 250 at a time: the listen backlog is not what is measured.
    for chunk_start in (0..n).step_by(250) {
        let batch: Vec<_> = (chunk_start..(chunk_start + 250).min(n))
            .map(|i| {
                let question = format!("Is anyone there? [{tag} q{}]", i / per_q);
                let opened = opened.clone();
                tokio::spawn(async move {
                    let r = hold(addr, question).await;
                    if r.is_ok() {
                        opened.fetch_add(1, Ordering::Relaxed);
                    }
                    r
                })
            })
            .collect();
        for b in batch {
            match b.await.map_err(|e| format!("task: {e}"))? {
                Ok(s) => held.push(s),
                Err(e) => {
                    if errors.len() < 5 {
                        errors.push(e);
                    }
                }
            }
        }
    }
    let open_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_open = rss("VmRSS:");
    let fds_open = fds(pid);
    let mut during = healthz_probe(addr, probes).await?;
    let rss_after_probe = rss("VmRSS:");
    let hwm = rss("VmHWM:");
    let still_open = held.len();
    drop(held);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_closed = rss("VmRSS:");
    let mut before = before_probe;
    before.sort_by(f64::total_cmp);
    during.sort_by(f64::total_cmp);
    Ok(json!({
        "streams_asked": n,
        "per_question": per_q,
        "streams_open": still_open,
        "opened_in_s": open_secs,
        "errors": errors,
        "service_fds_while_open": fds_open,
        "rss_kib": {
            "before": rss_before,
            "with_streams_open": rss_open,
            "after_probe": rss_after_probe,
            "peak_hwm": hwm,
            "after_closing": rss_closed,
        },
        "healthz_ms_idle": {
            "p50": ms(percentile(&before, 0.5)),
            "p99": ms(percentile(&before, 0.99)),
            "max": ms(before.last().copied()),
        },
        "healthz_ms_with_streams": {
            "n": during.len(),
            "p50": ms(percentile(&during, 0.5)),
            "p99": ms(percentile(&during, 0.99)),
            "max": ms(during.last().copied()),
        },
    }))
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("stream_load: runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        match args.first().map(String::as_str) {
            Some("ttft") => ttft(&args).await,
            Some("idle") => idle(&args).await,
            _ => Err("usage: stream_load ttft|idle --addr HOST:PORT ... (see the source)".into()),
        }
    });
    match result {
        Ok(v) => {
            println!("{v}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("stream_load: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
