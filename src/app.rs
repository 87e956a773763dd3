//! Building and running the service: the shared state, the router with its layers, the
//! background tasks and graceful shutdown. `App::build` binds the listener first, so
//! tests (and the caller) can read the real port back before serving.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};
use tower_http::trace::{DefaultOnFailure, TraceLayer};

use crate::config::{Config, OPENAI_OFFICIAL_BASE_URL};
use crate::error::ApiError;
use crate::middleware::{self, REQUEST_ID};
use crate::pipeline::cache::{AnswerCache, CacheOptions, CacheWriter, RedisState};
use crate::pipeline::canned::CannedAnswers;
use crate::pipeline::model::ModelClient;
use crate::pipeline::{GuardedTier, Pipeline, Tier, TierSlot};
use crate::resilience::breaker::Breaker;
use crate::resilience::budget::RetryBudget;
use crate::routes;
use crate::state::{AppState, Shared};
use crate::stats::Stats;
use crate::telemetry::Metrics;

/// A built service, bound to its port, not yet serving.
pub struct App {
    listener: TcpListener,
    router: Router,
    state: AppState,
    writer: CacheWriter,
    background: Vec<JoinHandle<()>>,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    /// A configuration problem found while building (a file named by the config that
    /// cannot be read, say): the process exits 2, as for any configuration error.
    #[error("configuration error: {0}")]
    Config(String),
    #[error("{0}")]
    Setup(String),
}

impl App {
    pub async fn build(config: Config) -> Result<App, BuildError> {
        let config = Arc::new(config);
        let api_key = config.api_key.clone();
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(90))
            .connect_timeout(Duration::from_secs(5))
            // A redirect would send the prompt (and the API key) to another host and cache
            // that host's answer as the tier's: never followed, a failed attempt instead.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("resilient-qa/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| BuildError::Setup(format!("HTTP client: {e}")))?;

        let models: Vec<(Tier, String)> = Tier::ALL
            .iter()
            .map(|t| (*t, t.config(&config).model.clone()))
            .collect();
        let metrics =
            Metrics::new(&models).map_err(|e| BuildError::Setup(format!("metrics: {e}")))?;

        let mut tiers = Vec::new();
        for tier in Tier::ALL {
            let tc = tier.config(&config);
            let base = tc.effective_base_url(&config.openai);
            let official = base.trim_end_matches('/') == OPENAI_OFFICIAL_BASE_URL;
            if api_key.is_none() && official {
                tracing::warn!(
                    tier = tier.as_str(),
                    model = %tc.model,
                    "OPENAI_API_KEY is unset and the tier points at the official OpenAI API: tier not configured, it will be skipped"
                );
                tiers.push(TierSlot::NotConfigured {
                    tier,
                    model: tc.model.clone(),
                });
            } else {
                tracing::info!(tier = tier.as_str(), model = %tc.model, base_url = %crate::redact::url(base), "model tier configured");
                tiers.push(TierSlot::Configured(Box::new(GuardedTier {
                    client: ModelClient::new(tier, tc, base, api_key.clone(), http.clone())
                        .map_err(|e| {
                            BuildError::Config(format!(
                                "{}.base_url: {}",
                                tier.as_str(),
                                crate::redact::url(&e)
                            ))
                        })?,
                    breaker: Breaker::new(
                        tier.as_str(),
                        &config.breaker,
                        metrics.circuit_state.with_label_values(&[tier.as_str()]),
                    ),
                    budget: RetryBudget::new(&config.retry_budget),
                })));
            }
        }

        let stats = Arc::new(Stats::new(
            config.metrics.window_secs,
            config.metrics.error_alert_threshold,
        ));
        let canned = CannedAnswers::load(&config.canned.file, config.canned_settings())
            .map_err(|e| BuildError::Config(format!("canned.file: {e}")))?;
        tracing::info!(answers = canned.entries(), file = %config.canned.file.display(), "canned answers loaded");
        let canned = Arc::new(canned);
        // The matcher's dictionaries load off the start-up path; a canned lookup in the
        // meantime waits for them.
        {
            let canned = canned.clone();
            std::thread::spawn(move || canned.faq().warm());
        }
        let options = CacheOptions {
            fingerprint: config.answer_fingerprint(),
            max_answer_bytes: config
                .primary
                .max_response_bytes
                .max(config.secondary.max_response_bytes),
        };
        let (cache, writer) = AnswerCache::new(
            &config.cache,
            &config.redis,
            &config.breaker,
            options,
            metrics.clone(),
        )
        .map_err(BuildError::Config)?;
        if let Some(token) = &config.admin_token {
            let len = secrecy::ExposeSecret::expose_secret(token).chars().count();
            if len < MIN_ADMIN_TOKEN_CHARS {
                tracing::warn!(
                    length = len,
                    "ADMIN_TOKEN is shorter than {MIN_ADMIN_TOKEN_CHARS} characters: easy to guess; use a long random one"
                );
            }
        }

        let clients = Arc::new(
            crate::clients::Clients::new(&config)
                .map_err(|e| BuildError::Config(format!("clients.file: {e}")))?,
        );
        if config.clients.file.is_some() {
            tracing::info!(
                clients = clients.len(),
                require_key = config.clients.require_key,
                "clients loaded"
            );
        }
        let limiter = Arc::new(crate::limits::Limiter::new(
            cache.clone(),
            &config.cache.key_prefix,
            metrics.clone(),
        ));

        let pipeline = Arc::new(Pipeline::new(
            cache.clone(),
            tiers,
            canned,
            metrics.clone(),
            stats.clone(),
            config.request_timeout(),
        ));
        let state = AppState(Arc::new(Shared {
            config: config.clone(),
            pipeline,
            metrics,
            stats,
            draining: AtomicBool::new(false),
            inflight: Arc::new(Semaphore::new(config.limits.max_concurrent_requests)),
            clients: clients.clone(),
            limiter: limiter.clone(),
        }));

        // First Redis check before serving, so /readyz is right from the start; then
        // one a second. A down Redis is logged, never fatal.
        let redis_url = match config.redis.mode {
            crate::config::RedisMode::Standalone => crate::redact::url(&config.redis.url),
            _ if config.redis.urls.is_empty() => crate::redact::url(&config.redis.url),
            _ => config
                .redis
                .urls
                .iter()
                .map(|u| crate::redact::url(u))
                .collect::<Vec<_>>()
                .join(","),
        };
        let mode = config.redis.mode.as_str();
        match cache.ping().await {
            RedisState::Up => tracing::info!(mode, url = %redis_url, "redis is reachable"),
            RedisState::AuthFailed => tracing::error!(
                mode,
                url = %redis_url,
                "redis refused the credentials (authentication failed); serving without it until they are fixed"
            ),
            RedisState::Down => tracing::warn!(
                mode,
                url = %redis_url,
                "redis is unreachable; serving without it until it returns"
            ),
        }
        let background = vec![
            tokio::spawn(cache.clone().follow_invalidations()),
            tokio::spawn(watch_redis(cache)),
            tokio::spawn(clients.watch(Duration::from_millis(config.clients.reload_check_ms))),
            tokio::spawn(limiter.tidy()),
        ];

        let listener = TcpListener::bind(&config.server.listen_addr)
            .await
            .map_err(|source| BuildError::Bind {
                addr: config.server.listen_addr.clone(),
                source,
            })?;
        let router = router(state.clone());
        Ok(App {
            listener,
            router,
            state,
            writer,
            background,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` completes, then drains: no new connections, requests in
    /// flight finish (within `server.shutdown_grace_secs`), queued cache writes are
    /// flushed.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let App {
            listener,
            router,
            state,
            writer,
            background,
        } = self;
        let grace = Duration::from_secs(state.config.server.shutdown_grace_secs);
        let addr = listener.local_addr()?;
        tracing::info!(%addr, "serving");

        // One grace period for all of shutdown: the drain, then the cache flush in what
        // is left of it.
        let signalled = Arc::new(std::sync::OnceLock::<std::time::Instant>::new());
        let on_signal = {
            let state = state.clone();
            let signalled = signalled.clone();
            async move {
                shutdown.await;
                let _ = signalled.set(std::time::Instant::now());
                state.draining.store(true, Ordering::SeqCst);
                tracing::info!(
                    grace_secs = grace.as_secs(),
                    "shutdown: draining requests in flight"
                );
            }
        };
        let header_timeout = Duration::from_millis(state.config.server.header_read_timeout_ms);
        let idle = {
            let state = state.clone();
            move || {
                state.inflight.available_permits() == state.config.limits.max_concurrent_requests
            }
        };
        let on_error = {
            let state = state.clone();
            move |e: &hyper::Error| {
                // hyper answers these itself (400, 431) before any route runs: counted
                // here, so that they show in `qa_rejected_total` like every refusal.
                if e.is_parse_too_large() {
                    state.reject("header_too_large");
                } else if e.is_parse() {
                    state.reject("bad_request");
                }
            }
        };
        crate::server::serve(
            listener,
            router,
            crate::server::Limits {
                header_read_timeout: header_timeout,
                max_header_bytes: MAX_HEADER_BYTES,
            },
            grace,
            on_signal,
            idle,
            on_error,
        )
        .await;
        let spent = signalled.get().map_or(Duration::ZERO, |t| t.elapsed());
        writer.flush(grace.saturating_sub(spent)).await;
        for task in background {
            task.abort();
        }
        tracing::info!("shutdown complete");
        Ok(())
    }
}

/// The most a request's head (request line and headers) may take: 32 KiB, eight times
/// what browsers send with their cookies; past it hyper answers `431`.
const MAX_HEADER_BYTES: usize = 32 * 1024;

/// `ADMIN_TOKEN`s shorter than this are accepted, with a warning at start.
const MIN_ADMIN_TOKEN_CHARS: usize = 16;

async fn watch_redis(cache: Arc<AnswerCache>) {
    let mut was = cache.redis_state();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = cache.ping().await;
        if now != was {
            match now {
                RedisState::Up => tracing::info!("redis is reachable again"),
                RedisState::Down => tracing::warn!("redis is unreachable; serving without it"),
                RedisState::AuthFailed => tracing::error!(
                    "redis refused the credentials (authentication failed); serving without it"
                ),
            }
            was = now;
        }
    }
}

/// The routes and the middleware stack. Layers, outermost first:
/// request id (every response carries one; `Connection: close` once draining; no Host on
/// HTTP/1.1 is 400) -> trace span (with the id, at DEBUG) -> CORS (when origins are
/// configured) -> OpenAI error shape (every error under `/v1/` rewritten, refusals counted
/// by API) -> catch-panic (a panic becomes a JSON 500) -> routes; the answering routes
/// (`/ask`, `/v1/chat/completions`) add the guards of `guards.rs` (client, body limits,
/// client rate, load shedding); `/v1/models` the client guard alone.
pub fn router(state: AppState) -> Router {
    // The answering routes, behind the guards (`guards.rs` lists them in order).
    let answering = crate::guards::answering(
        state.clone(),
        Router::new().route("/ask", post(routes::ask::ask)).route(
            "/v1/chat/completions",
            post(routes::openai::chat_completions),
        ),
    );
    let mut app = Router::new()
        .merge(answering)
        .route("/healthz", get(routes::health::healthz))
        .route("/readyz", get(routes::health::readyz))
        .route("/metrics", get(routes::metrics::metrics))
        .route("/stats", get(routes::metrics::stats))
        .route("/", get(routes::ui::page))
        .route("/assets/chat.js", get(routes::ui::chat_js))
        .route("/widget.js", get(routes::ui::widget_js))
        .merge(crate::guards::keyed(
            state.clone(),
            Router::new()
                .route("/v1/models", get(routes::openai::models))
                .route("/v1/models/{model}", get(routes::openai::model)),
        ))
        // Every method: with admin disabled each answers 404, so nothing tells they exist.
        .route("/admin/cache", any(routes::admin::delete_cache))
        .route("/admin/canned/reload", any(routes::admin::reload_canned))
        .route("/admin/canned/explain", any(routes::admin::explain_canned))
        .route("/admin/clients/reload", any(routes::admin::reload_clients))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(CatchPanicLayer::custom(
            |_: Box<dyn std::any::Any + Send>| ApiError::internal().into_response(),
        ))
        // Errors under /v1/ in OpenAI's shape; refusals counted by API.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            routes::openai::openai_errors,
        ))
        .with_state(state.clone());

    let origins = Arc::new(state.config.server.cors_allowed_origins.clone());
    if let Some(cors) = cors_layer(&origins) {
        app = app.layer(cors);
    }
    // Outside CORS, which answers the allowed preflights itself.
    app = app.layer(axum::middleware::from_fn_with_state(
        origins,
        refuse_preflight,
    ));
    app.layer(
        ServiceBuilder::new()
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                middleware::request_id,
            ))
            // Shed and failed requests are counted in metrics; an ERROR line for each
            // would flood the logs exactly when they matter most.
            .layer(
                TraceLayer::new_for_http()
                    .make_span_with(request_span)
                    .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
            ),
    )
}

/// How long a browser may cache a preflight's answer (`Access-Control-Max-Age`).
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(3600);

/// CORS for `server.cors_allowed_origins` (validated at start: origins, or `*` alone);
/// `None` when the list is empty. The headers a page needs are exposed: `X-Request-Id`,
/// `Retry-After` (for a `503 overloaded` or `429 rate_limited` countdown), `X-QA-Source`,
/// and `RateLimit` and `RateLimit-Policy`; the request headers
/// a browser asks for are allowed (the OpenAI SDKs send their own); preflights are cached
/// for [`PREFLIGHT_MAX_AGE`].
fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow_origin = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o.trim_end_matches('/')).ok()),
        )
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow_origin)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers(AllowHeaders::mirror_request())
            .expose_headers([
                HeaderName::from_static(REQUEST_ID),
                axum::http::header::RETRY_AFTER,
                routes::openai::QA_SOURCE,
                crate::limits::headers::RATELIMIT,
                crate::limits::headers::RATELIMIT_POLICY,
            ])
            .max_age(PREFLIGHT_MAX_AGE),
    )
}

/// A CORS preflight from an origin `server.cors_allowed_origins` does not allow (all of
/// them, when it is empty): logged at DEBUG with the origin, the one hint a web developer
/// whose page is refused gets, and answered `204` with no CORS header, which the browser
/// reports as the missing `Access-Control-Allow-Origin` it is (not as a `405` that would
/// send the developer looking at the method).
async fn refuse_preflight(
    State(origins): State<Arc<Vec<String>>>,
    req: Request,
    next: Next,
) -> Response {
    if req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(axum::http::header::ACCESS_CONTROL_REQUEST_METHOD)
        && let Some(origin) = req
            .headers()
            .get(axum::http::header::ORIGIN)
            .and_then(|o| o.to_str().ok())
        && !origins
            .iter()
            .any(|allowed| allowed == "*" || allowed.trim_end_matches('/') == origin)
    {
        tracing::debug!(
            origin,
            path = req.uri().path(),
            "CORS preflight refused: the origin is not in server.cors_allowed_origins (or CORS_ALLOWED_ORIGINS)"
        );
        return axum::http::StatusCode::NO_CONTENT.into_response();
    }
    next.run(req).await
}

/// The span of one request, at DEBUG: at the default level it costs nothing, and the
/// lines that matter (answers, model calls) carry the request id themselves.
fn request_span(req: &Request) -> tracing::Span {
    let id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    tracing::debug_span!("request", method = %req.method(), path = req.uri().path(), request_id = id)
}

async fn not_found(State(state): State<AppState>) -> Response {
    state.reject("not_found");
    ApiError::not_found().into_response()
}

async fn method_not_allowed(State(state): State<AppState>) -> Response {
    state.reject("method_not_allowed");
    ApiError::method_not_allowed().into_response()
}
