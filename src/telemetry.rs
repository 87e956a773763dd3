//! Telemetry: the tracing subscriber and the Prometheus registry with every metric
//! handle. Metrics are registered once, at start, with help text; their labels come from
//! closed enums, and every label combination is created up front so each family shows in
//! the exposition from the first scrape.

use prometheus::{
    Gauge, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};
use crate::faq::MatchResult;
use crate::pipeline::source::ErrorKind;
use crate::pipeline::source::{GiveUp, Source, Tier};

/// Installs the global tracing subscriber (JSON lines or human-readable; colours only
/// when stdout is a terminal) and a panic hook that reports panics as log events, so
/// that a panic's text never breaks the JSON lines. A filter that does not parse falls
/// back to `info`, and says so.
pub fn init_tracing(log: &LogConfig) {
    use std::io::IsTerminal;
    let (filter, bad_filter) = match EnvFilter::try_new(&log.filter) {
        Ok(f) => (f, None),
        Err(e) => (EnvFilter::new("info"), Some(e.to_string())),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal())
        .with_writer(std::io::stdout);
    // A second initialisation (tests building several apps) is harmless: keep the first.
    let installed = match log.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Pretty => builder.try_init(),
    }
    .is_ok();
    if !installed {
        return;
    }
    if let Some(error) = bad_filter {
        tracing::warn!(
            filter = %log.filter,
            error = %error,
            "log filter (RUST_LOG / log.filter) does not parse; logging at info instead"
        );
    }
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".into());
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        tracing::error!(panic = %message, %location, "panic");
    }));
}

/// Rejection codes, the `code` label of `qa_rejected_total`.
pub const REJECTION_CODES: &[&str] = &[
    "invalid_json",
    "payload_too_large",
    "unsupported_media_type",
    "invalid_question",
    "overloaded",
    "not_found",
    "method_not_allowed",
    "unauthorized",
    "request_timeout",
    "bad_request",
    "header_too_large",
    "rate_limited",
];

/// Dependencies guarded by a circuit breaker besides the model tiers (whose names come
/// from [`Tier::ALL`]): the `dependency` label of `qa_circuit_state`.
pub const OTHER_DEPENDENCIES: &[&str] = &["redis"];

pub const CACHE_LAYERS: &[&str] = &["memory", "redis"];
pub const CACHE_RESULTS: &[&str] = &["hit", "miss", "stale", "error"];
pub const CACHE_WRITE_RESULTS: &[&str] = &["ok", "retried", "error", "dropped"];

/// The API a question came in through: the `api` label of `qa_api_requests_total` and
/// `qa_api_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Api {
    /// `POST /ask`.
    Ask,
    /// `POST /v1/chat/completions`.
    OpenAi,
}

impl Api {
    pub const ALL: [Api; 2] = [Api::Ask, Api::OpenAi];

    pub fn as_str(self) -> &'static str {
        match self {
            Api::Ask => "ask",
            Api::OpenAi => "openai",
        }
    }
}

/// Every metric handle of the service.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub rejected: IntCounterVec,
    pub cache_lookups: IntCounterVec,
    pub cache_writes: IntCounterVec,
    pub upstream_attempts: IntCounterVec,
    pub upstream_duration: HistogramVec,
    pub fallbacks: IntCounterVec,
    pub success_ratio: Gauge,
    pub cache_hit_ratio: Gauge,
    pub fallback_ratio: Gauge,
    pub error_ratio: Gauge,
    pub redis_up: Gauge,
    pub build_info: IntGaugeVec,
    pub circuit_state: IntGaugeVec,
    pub overhead: prometheus::Histogram,
    pub coalesced: prometheus::IntCounter,
    /// `qa_cache_write_backlog`: answers waiting for Redis to take them.
    pub cache_write_backlog: prometheus::IntGauge,
    /// `qa_walk_panics_total`: walks that failed unexpectedly and went on with the tiers
    /// after the models.
    pub walk_panics: prometheus::IntCounter,
    /// `qa_time_to_first_token_seconds{source}`: from a streamed request's arrival to its
    /// first `delta`.
    pub time_to_first_token: HistogramVec,
    /// `qa_stream_interruptions_total{tier,action}`: streams broken after text was sent,
    /// and whether the text was `continued` or `reset`.
    pub stream_interruptions: IntCounterVec,
    /// `qa_streams_in_flight`: streamed answers being sent now.
    pub streams_in_flight: prometheus::IntGauge,
    /// `qa_canned_matches_total{result}`.
    pub canned_matches: IntCounterVec,
    /// `qa_canned_match_score`: the best entry's score of each canned lookup.
    pub canned_match_score: prometheus::Histogram,
    /// `qa_requests_total` and `qa_request_duration_seconds` children, by `Source as
    /// usize`: resolved once, not hashed on every answer.
    pub answers: Vec<(prometheus::IntCounter, prometheus::Histogram)>,
    /// `qa_api_requests_total{api,source}`: the answers of `qa_requests_total` by the
    /// API they went out through.
    pub api_requests: IntCounterVec,
    /// Its children, by `Api as usize`, then `Source as usize`.
    pub api_answers: Vec<Vec<prometheus::IntCounter>>,
    /// `qa_api_rejected_total{api,code}`: the refusals of `qa_rejected_total` on the
    /// answering routes, by API.
    pub api_rejected: IntCounterVec,
    /// `qa_question_leases_total{result}`: how each new one-turn question was shared
    /// across the instances of one Redis (see `pipeline/lease.rs`).
    pub question_leases: IntCounterVec,
    /// `qa_rate_limit_checks_total{limit,store,result}`: per-client limit checks (see
    /// `limits/`); no label names a client.
    pub rate_limit_checks: IntCounterVec,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0,
    30.0,
];

impl Metrics {
    /// Builds the registry. `models` are the `(tier, model)` pairs configured, the only
    /// values the `model` label takes.
    pub fn new(models: &[(Tier, String)]) -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let counter =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
                let c = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let histogram =
            |name: &str, help: &str, labels: &[&str]| -> Result<HistogramVec, prometheus::Error> {
                let h = HistogramVec::new(
                    HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
                    labels,
                )?;
                registry.register(Box::new(h.clone()))?;
                Ok(h)
            };
        let gauge = |name: &str, help: &str| -> Result<Gauge, prometheus::Error> {
            let g = Gauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };

        let mut m = Metrics {
            requests: counter(
                "qa_requests_total",
                "Answers given by /ask, by the tier that gave them.",
                &["source"],
            )?,
            request_duration: histogram(
                "qa_request_duration_seconds",
                "Time spent answering one /ask, by the tier that answered.",
                &["source"],
            )?,
            rejected: counter(
                "qa_rejected_total",
                "Requests refused with an error, by error code.",
                &["code"],
            )?,
            cache_lookups: counter(
                "qa_cache_lookups_total",
                "Cache lookups by layer and result.",
                &["layer", "result"],
            )?,
            cache_writes: counter(
                "qa_cache_writes_total",
                "Answers written to Redis, by result (ok: at once; error: not at once, so it waits in the backlog, counted once per answer; retried: written from the backlog; dropped: given up).",
                &["result"],
            )?,
            upstream_attempts: counter(
                "qa_upstream_attempts_total",
                "Model calls by tier, model and outcome.",
                &["tier", "model", "outcome"],
            )?,
            upstream_duration: histogram(
                "qa_upstream_duration_seconds",
                "Duration of one model call, by tier.",
                &["tier"],
            )?,
            fallbacks: counter(
                "qa_fallbacks_total",
                "Times a model tier gave no answer and the next tier was tried, by tier and reason.",
                &["from", "reason"],
            )?,
            success_ratio: gauge(
                "qa_success_ratio",
                "Share of answers in the window not from the default reply.",
            )?,
            cache_hit_ratio: gauge(
                "qa_cache_hit_ratio",
                "Share of answers in the window served from a fresh cache entry.",
            )?,
            fallback_ratio: gauge(
                "qa_fallback_ratio",
                "Share of answers in the window from secondary, canned, stale or default.",
            )?,
            error_ratio: gauge(
                "qa_error_ratio",
                "Share of answers in the window that were the default reply.",
            )?,
            redis_up: gauge(
                "qa_redis_up",
                "1 when the last Redis check succeeded, else 0.",
            )?,
            build_info: {
                let g = IntGaugeVec::new(
                    Opts::new("qa_build_info", "Build information; the value is always 1."),
                    &["version"],
                )?;
                registry.register(Box::new(g.clone()))?;
                g
            },
            circuit_state: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "qa_circuit_state",
                        "Circuit breaker state by dependency: 0 closed, 1 half-open, 2 open.",
                    ),
                    &["dependency"],
                )?;
                registry.register(Box::new(g.clone()))?;
                g
            },
            overhead: {
                let h = prometheus::Histogram::with_opts(
                    HistogramOpts::new(
                        "qa_overhead_seconds",
                        "Time one /ask spent in the service itself: its duration minus model calls and Redis.",
                    )
                    .buckets(vec![
                        0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                    ]),
                )?;
                registry.register(Box::new(h.clone()))?;
                h
            },
            coalesced: {
                let c = prometheus::IntCounter::new(
                    "qa_coalesced_total",
                    "Requests that shared the answer of an identical question already in flight.",
                )?;
                registry.register(Box::new(c.clone()))?;
                c
            },
            cache_write_backlog: {
                let g = prometheus::IntGauge::new(
                    "qa_cache_write_backlog",
                    "Answers whose write to Redis failed and waits for a retry.",
                )?;
                registry.register(Box::new(g.clone()))?;
                g
            },
            walk_panics: {
                let c = prometheus::IntCounter::new(
                    "qa_walk_panics_total",
                    "Walks that failed unexpectedly (a bug) and went on with canned, stale and default.",
                )?;
                registry.register(Box::new(c.clone()))?;
                c
            },
            time_to_first_token: histogram(
                "qa_time_to_first_token_seconds",
                "Time from a streamed request's arrival to its first piece of answer, by the tier that answered.",
                &["source"],
            )?,
            stream_interruptions: counter(
                "qa_stream_interruptions_total",
                "Streams broken after text was sent, by tier and what was done (continued by the next attempt, or reset).",
                &["tier", "action"],
            )?,
            streams_in_flight: {
                let g = prometheus::IntGauge::new(
                    "qa_streams_in_flight",
                    "Streamed answers being sent now.",
                )?;
                registry.register(Box::new(g.clone()))?;
                g
            },
            canned_matches: counter(
                "qa_canned_matches_total",
                "Questions looked up in the canned answers (those the models did not answer, and all of them with canned.answer_first_score set), by result (matched: best entry at or above canned.min_score; below_threshold: best entry under it; none: no entry shared a word).",
                &["result"],
            )?,
            canned_match_score: {
                let h = prometheus::Histogram::with_opts(
                    HistogramOpts::new(
                        "qa_canned_match_score",
                        "Score in [0, 1] of the best canned entry for each question that had one, matched or not: where to set canned.min_score.",
                    )
                    .buckets(vec![
                        0.1, 0.2, 0.3, 0.4, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95,
                        0.99, 1.0,
                    ]),
                )?;
                registry.register(Box::new(h.clone()))?;
                h
            },
            answers: Vec::new(),
            api_requests: counter(
                "qa_api_requests_total",
                "Answers given, by the API they went out through (ask: POST /ask; openai: POST /v1/chat/completions) and the tier that gave them.",
                &["api", "source"],
            )?,
            api_answers: Vec::new(),
            api_rejected: counter(
                "qa_api_rejected_total",
                "Requests to the answering routes refused with an error, by API and error code.",
                &["api", "code"],
            )?,
            question_leases: counter(
                "qa_question_leases_total",
                "New one-turn questions by what their instance did across the instances sharing the Redis: led (asked the models), followed (served another instance's answer), took_over (its leader vanished), models_gave_up (the leader's models had no answer), deadline (no time left to wait), unavailable (Redis could not be asked: walked alone).",
                &["result"],
            )?,
            rate_limit_checks: counter(
                "qa_rate_limit_checks_total",
                "Per-client limit checks, by limit (rate: the request rate of /ask and /v1/chat/completions; daily: the model-call budget, checked for questions the cache did not have), store (redis: common to the instances; local: this instance alone, while Redis cannot say) and result (allowed, limited).",
                &["limit", "store", "result"],
            )?,
            registry,
        };
        m.api_answers = Api::ALL
            .iter()
            .map(|api| {
                Source::ALL
                    .iter()
                    .map(|s| {
                        m.api_requests
                            .with_label_values(&[api.as_str(), s.as_str()])
                    })
                    .collect()
            })
            .collect();
        for s in Source::ALL {
            m.time_to_first_token.with_label_values(&[s.as_str()]);
        }
        m.answers = Source::ALL
            .iter()
            .map(|s| {
                (
                    m.requests.with_label_values(&[s.as_str()]),
                    m.request_duration.with_label_values(&[s.as_str()]),
                )
            })
            .collect();
        let tiers = Tier::ALL.iter().map(|t| t.as_str());
        for dependency in tiers.chain(OTHER_DEPENDENCIES.iter().copied()) {
            m.circuit_state.with_label_values(&[dependency]).set(0);
        }
        #[cfg(target_os = "linux")]
        m.registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;

        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        for code in REJECTION_CODES {
            m.rejected.with_label_values(&[code]);
            for api in Api::ALL {
                m.api_rejected.with_label_values(&[api.as_str(), code]);
            }
        }
        for result in [
            "led",
            "followed",
            "took_over",
            "models_gave_up",
            "deadline",
            "unavailable",
        ] {
            m.question_leases.with_label_values(&[result]);
        }
        for limit in crate::limits::Limit::ALL {
            for store in crate::limits::Store::ALL {
                for result in ["allowed", "limited"] {
                    m.rate_limit_checks.with_label_values(&[
                        limit.as_str(),
                        store.as_str(),
                        result,
                    ]);
                }
            }
        }
        for layer in CACHE_LAYERS {
            for result in CACHE_RESULTS {
                m.cache_lookups.with_label_values(&[layer, result]);
            }
        }
        for result in MatchResult::ALL {
            m.canned_matches.with_label_values(&[result.as_str()]);
        }
        for result in CACHE_WRITE_RESULTS {
            m.cache_writes.with_label_values(&[result]);
        }
        for (tier, model) in models {
            m.upstream_duration.with_label_values(&[tier.as_str()]);
            for kind in ErrorKind::ALL {
                m.upstream_attempts
                    .with_label_values(&[tier.as_str(), model, kind.as_str()]);
            }
            m.upstream_attempts
                .with_label_values(&[tier.as_str(), model, "success"]);
            for reason in GiveUp::ALL {
                m.fallbacks
                    .with_label_values(&[tier.as_str(), reason.as_str()]);
            }
            for action in ["continued", "reset"] {
                m.stream_interruptions
                    .with_label_values(&[tier.as_str(), action]);
            }
        }
        m.success_ratio.set(1.0);
        Ok(m)
    }

    /// The text exposition of every family.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# metrics encoding failed: {e}\n"))
    }
}
