//! Micro-benchmarks of the per-request hot paths, in process, without the network:
//!
//! - `normalize/*`, `cache_key`: the question key every /ask computes;
//! - `memory_cache/lookup_hit`: `AnswerCache::lookup` answered by the moka layer (a memory
//!   hit returns before Redis, so the Redis URL here points at a closed port on purpose);
//! - `json/*`: parsing the request body and encoding the response, the same shapes as
//!   `routes::ask` (whose structs are private, so mirrored here);
//! - `per_request/*`: the small fixed costs every answer pays (request id, metric labels,
//!   the sliding window of `/stats`);
//! - `router/*`: the whole axum stack (request id, trace span, load shedding, handler,
//!   pipeline, JSON) driven with `tower::ServiceExt::oneshot`, for `GET /healthz` and for
//!   `POST /ask` answered from memory: the service's CPU cost per request, without
//!   sockets and without a load generator sharing the CPU.
//!
//! Run: `cargo bench --bench hot_paths -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::http::Request;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

use tower::ServiceExt;

use resilient_qa::app::{App, router};
use resilient_qa::config::Config;
use resilient_qa::pipeline::Source;
use resilient_qa::pipeline::cache::{AnswerCache, CacheOptions, CachedAnswer, now_ms};
use resilient_qa::pipeline::normalize::{cache_key, normalize};
use resilient_qa::routes::ask::{AskRequest, AskResponse};
use resilient_qa::stats::Stats;
use resilient_qa::telemetry::Metrics;

/// A Redis nobody listens on: only memory hits are measured, and they never reach it.
const NO_REDIS: &str = "redis://127.0.0.1:1";

const SHORT_ASCII: &str = "Where is my order?";
const MIXED: &str = "  如何退货？ Where IS my   ORDER　ＡＢＣ ";

fn long_question() -> String {
    "Where is my order? 我的订单在哪里？ ".repeat(40)
}

fn runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("tokio runtime: {e}"),
    }
}

fn bench_normalize(c: &mut Criterion) {
    let long = long_question();
    let mut g = c.benchmark_group("normalize");
    for (name, q) in [
        ("short_ascii", SHORT_ASCII),
        ("mixed_cjk_fullwidth", MIXED),
        ("long_720_chars", long.as_str()),
    ] {
        g.throughput(Throughput::Bytes(q.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(name), q, |b, q| {
            b.iter(|| normalize(black_box(q)))
        });
    }
    g.finish();

    let normalized = normalize(MIXED);
    c.bench_function("cache_key/sha256_hex", |b| {
        b.iter(|| cache_key(black_box("qa:v1:"), black_box(&normalized)))
    });
    c.bench_function("normalize+cache_key/mixed", |b| {
        b.iter(|| cache_key("qa:v1:", &normalize(black_box(MIXED))))
    });
}

fn bench_memory_cache(c: &mut Criterion) {
    let rt = runtime();
    let mut cfg = Config::default();
    cfg.redis.url = NO_REDIS.into();
    let cache = rt.block_on(async {
        let metrics = match Metrics::new(&[]) {
            Ok(m) => m,
            Err(e) => panic!("metrics: {e}"),
        };
        let options = CacheOptions {
            fingerprint: cfg.answer_fingerprint(),
            max_answer_bytes: cfg.primary.max_response_bytes,
        };
        match AnswerCache::new(&cfg.cache, &cfg.redis, &cfg.breaker, options, metrics) {
            Ok((cache, _writer)) => cache,
            Err(e) => panic!("cache: {e}"),
        }
    });
    let key = cache.key(&normalize(SHORT_ASCII));
    // Fill the memory layer with 5,000 answers, ours among them.
    rt.block_on(async {
        for i in 0..5_000 {
            let k = cache.key(&format!("question {i}"));
            cache
                .store(
                    k,
                    CachedAnswer {
                        answer: Arc::from(format!("answer {i}")),
                        model: Arc::from("gpt-4o"),
                        written_at_ms: now_ms(),
                        config: Some(cache.fingerprint()),
                    },
                )
                .await;
        }
        cache
            .store(
                key.clone(),
                CachedAnswer {
                    answer: Arc::from("Your order ships tomorrow."),
                    model: Arc::from("gpt-4o"),
                    written_at_ms: now_ms(),
                    config: Some(cache.fingerprint()),
                },
            )
            .await;
        assert!(
            cache.lookup(&key).await.fresh.is_some(),
            "memory hit expected"
        );
    });

    c.bench_function("memory_cache/lookup_hit", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(cache.lookup(black_box(&key)).await);
                }
                start.elapsed()
            })
        })
    });
    c.bench_function("memory_cache/normalize+key+lookup_hit", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let k = cache.key(&normalize(black_box(SHORT_ASCII)));
                    black_box(cache.lookup(&k).await);
                }
                start.elapsed()
            })
        })
    });
}

fn bench_json(c: &mut Criterion) {
    let body = br#"{"question":"Where is my order? \u6211\u7684\u8ba2\u5355\u5728\u54ea\u91cc"}"#;
    c.bench_function("json/parse_ask_request", |b| {
        b.iter(|| serde_json::from_slice::<AskRequest>(black_box(body)))
    });
    let answer = "[gpt-4o] simulated answer to: 你是一个专业的客服助手。请回答用户的问题。问题:Where is my order? 回答:";
    c.bench_function("json/encode_ask_response", |b| {
        b.iter(|| {
            serde_json::to_vec(black_box(&AskResponse {
                answer,
                source: "cache",
                model: Some("gpt-4o"),
                degraded: false,
                latency_ms: 0.416,
                request_id: "01M8BWZFEAV4S2JZAYBHMR9FFX",
                matched: None,
                continued: false,
            }))
        })
    });
    let entry = CachedAnswer {
        answer: Arc::from(answer),
        model: Arc::from("gpt-4o"),
        written_at_ms: now_ms(),
        config: Some(Arc::from(Config::default().answer_fingerprint())),
    };
    let raw = match serde_json::to_string(&entry) {
        Ok(s) => s,
        Err(e) => panic!("encode: {e}"),
    };
    c.bench_function("json/decode_redis_entry", |b| {
        b.iter(|| serde_json::from_str::<CachedAnswer>(black_box(&raw)))
    });
}

fn bench_per_request(c: &mut Criterion) {
    c.bench_function("per_request/new_request_id", |b| {
        b.iter(resilient_qa::middleware::new_request_id)
    });
    let metrics = match Metrics::new(&[]) {
        Ok(m) => m,
        Err(e) => panic!("metrics: {e}"),
    };
    c.bench_function("per_request/metrics_record_answer", |b| {
        b.iter(|| {
            let s = black_box(Source::Cache).as_str();
            metrics.requests.with_label_values(&[s]).inc();
            metrics
                .request_duration
                .with_label_values(&[s])
                .observe(black_box(0.0004));
            metrics
                .cache_lookups
                .with_label_values(&["memory", "hit"])
                .inc();
        })
    });
    let stats = Stats::new(300, 0.01);
    c.bench_function("per_request/stats_record_answer", |b| {
        b.iter(|| {
            stats.record_answer(
                resilient_qa::telemetry::Api::Ask,
                black_box(Source::Cache),
                std::time::Instant::now(),
            )
        })
    });
}

/// A per-client rate check decided without a trip to Redis: a cell the instance holds
/// from a batch (the common case with Redis up), and the `governor` limiter used while
/// Redis is away (issue 14's target: ≤ 1 µs).
fn bench_rate_limit(c: &mut Criterion) {
    use resilient_qa::clients::{ClientId, ClientLimits};
    use resilient_qa::limits::RateDecision;
    use resilient_qa::limits::rate::{Local, Reservations};
    let limits = ClientLimits {
        rps: 1_000_000.0,
        burst: 1_000_000,
        model_calls_per_day: 0,
    };
    let id = ClientId([9; 16]);
    let held = Reservations::default();
    let granted = RateDecision {
        allowed: true,
        remaining: 1_000_000,
        reset: std::time::Duration::from_secs(1),
        retry_after: std::time::Duration::ZERO,
    };
    c.bench_function("rate_limit/held_cell", |b| {
        b.iter(|| {
            // Keep cells in hand: a batch of 10^6 lasts the whole measurement.
            if held.decide(black_box(id), 20_000).is_none() {
                held.keep(id, &granted, 1_000_000, 0, false);
            }
        })
    });
    let local = Local::default();
    c.bench_function("rate_limit/local_governor", |b| {
        b.iter(|| black_box(local.check(black_box(id), &limits)))
    });
}

fn bench_router(c: &mut Criterion) {
    // One thread runs everything, the spawned pipeline task included: pure CPU cost,
    // without the cross-thread wake-ups a multi-threaded runtime adds.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("tokio runtime: {e}"),
    };
    let mut cfg = Config::default();
    cfg.server.listen_addr = "127.0.0.1:0".into();
    cfg.redis.url = NO_REDIS.into();
    cfg.redis.timeout_ms = 10;
    // Models are never reached: every /ask below is a memory hit.
    cfg.openai.base_url = "http://127.0.0.1:1/v1".into();
    let app = rt.block_on(async {
        let app = match App::build(cfg).await {
            Ok(a) => a,
            Err(e) => panic!("App::build: {e}"),
        };
        let pipeline = &app.state().pipeline;
        let key = pipeline.cache.key(&normalize(SHORT_ASCII));
        pipeline
            .cache
            .store(
                key,
                CachedAnswer {
                    answer: Arc::from("Your order ships tomorrow."),
                    model: Arc::from("gpt-4o"),
                    written_at_ms: now_ms(),
                    config: Some(pipeline.cache.fingerprint()),
                },
            )
            .await;
        app
    });
    let svc = router(app.state().clone());

    let healthz = || {
        Request::get("/healthz")
            .header("host", "localhost")
            .body(Body::empty())
            .unwrap_or_else(|e| panic!("request: {e}"))
    };
    let ask = || {
        Request::post("/ask")
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Body::from(r#"{"question":"Where is my order?"}"#))
            .unwrap_or_else(|e| panic!("request: {e}"))
    };
    // Check once that /ask is really a cache hit.
    rt.block_on(async {
        let Ok(resp) = svc.clone().oneshot(ask()).await;
        let bytes = match axum::body::to_bytes(resp.into_body(), 1 << 16).await {
            Ok(b) => b,
            Err(e) => panic!("body: {e}"),
        };
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            text.contains(r#""source":"cache""#),
            "not a cache hit: {text}"
        );
    });

    let mut g = c.benchmark_group("router");
    let run = |b: &mut criterion::Bencher, ask_route: bool| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let req = if ask_route { ask() } else { healthz() };
                    let Ok(resp) = svc.clone().oneshot(req).await;
                    black_box(axum::body::to_bytes(resp.into_body(), 1 << 16).await.ok());
                }
                start.elapsed()
            })
        })
    };
    g.bench_function("get_healthz", |b| run(b, false));
    g.bench_function("post_ask_memory_hit", |b| run(b, true));
    // The same two with the service's log format on (JSON lines, current span, level
    // info), written to a sink: the cost of its per-request logging and spans.
    let json_logs = || {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
            .with_writer(std::io::sink)
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .finish()
    };
    g.bench_function("get_healthz+json_logs", |b| {
        tracing::subscriber::with_default(json_logs(), || run(b, false))
    });
    g.bench_function("post_ask_memory_hit+json_logs", |b| {
        tracing::subscriber::with_default(json_logs(), || run(b, true))
    });
    g.finish();
    drop(app);
}

criterion_group!(
    benches,
    bench_normalize,
    bench_memory_cache,
    bench_json,
    bench_per_request,
    bench_rate_limit,
    bench_router
);
criterion_main!(benches);
