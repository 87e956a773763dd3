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
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::trace::{DefaultOnFailure, TraceLayer};

use crate::config::{Config, OPENAI_OFFICIAL_BASE_URL};
use crate::error::ApiError;
use crate::middleware::{self, REQUEST_ID};
use crate::pipeline::cache::{AnswerCache, CacheWriter};
use crate::pipeline::canned::CannedAnswers;
use crate::pipeline::model::ModelClient;
use crate::pipeline::{GuardedTier, Pipeline, Source, Tier, TierSlot};
use crate::resilience::breaker::Breaker;
use crate::resilience::budget::RetryBudget;
use crate::routes;
use crate::stats::Stats;
use crate::telemetry::Metrics;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

pub struct Shared {
    pub config: Arc<Config>,
    pub pipeline: Arc<Pipeline>,
    pub metrics: Metrics,
    pub stats: Arc<Stats>,
    /// Set once shutdown has begun: `/readyz` answers 503.
    pub draining: AtomicBool,
    /// Permits for requests in flight on `/ask`.
    pub inflight: Arc<Semaphore>,
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    /// Counts a refused request.
    pub fn reject(&self, code: &str) {
        self.metrics.rejected.with_label_values(&[code]).inc();
    }

    /// Counts an answer, in the metrics and in the monitor.
    pub fn record_answer(&self, source: Source, started: std::time::Instant, elapsed: Duration) {
        if let Some((count, duration)) = self.metrics.answers.get(source as usize) {
            count.inc();
            duration.observe(elapsed.as_secs_f64());
        }
        self.stats.record_answer(source, started + elapsed);
    }
}

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
            .user_agent(concat!("resilient-qa/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| BuildError::Setup(format!("HTTP client: {e}")))?;

        let models: Vec<(Tier, String)> = [
            (Tier::Primary, config.primary.model.clone()),
            (Tier::Secondary, config.secondary.model.clone()),
        ]
        .into();
        let metrics =
            Metrics::new(&models).map_err(|e| BuildError::Setup(format!("metrics: {e}")))?;

        let mut tiers = Vec::new();
        for (tier, tc) in [
            (Tier::Primary, &config.primary),
            (Tier::Secondary, &config.secondary),
        ] {
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
                tracing::info!(tier = tier.as_str(), model = %tc.model, base_url = base, "model tier configured");
                tiers.push(TierSlot::Configured(Box::new(GuardedTier {
                    client: ModelClient::new(tier, tc, base, api_key.clone(), http.clone())
                        .map_err(|e| {
                            BuildError::Setup(format!("{}.base_url: {e}", tier.as_str()))
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
            .map_err(|e| BuildError::Setup(format!("canned.file: {e}")))?;
        tracing::info!(answers = canned.entries(), file = %config.canned.file.display(), "canned answers loaded");
        let canned = Arc::new(canned);
        // The matcher's dictionaries load off the start-up path; a canned lookup in the
        // meantime waits for them.
        {
            let canned = canned.clone();
            std::thread::spawn(move || canned.faq().warm());
        }
        let (cache, writer) = AnswerCache::new(
            &config.cache,
            &config.redis,
            &config.breaker,
            metrics.clone(),
        )
        .map_err(BuildError::Setup)?;

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
        }));

        // First Redis check before serving, so /readyz is right from the start; then
        // one a second. A down Redis is logged, never fatal.
        if !cache.ping().await {
            tracing::warn!(url = %redact_url(&config.redis.url), "redis is unreachable; serving without it until it returns");
        }
        let background = vec![
            tokio::spawn(cache.clone().follow_invalidations(config.redis.url.clone())),
            tokio::spawn(watch_redis(cache)),
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

        let on_signal = {
            let state = state.clone();
            async move {
                shutdown.await;
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
        crate::server::serve(listener, router, header_timeout, grace, on_signal, idle).await;
        writer.flush(grace).await;
        for task in background {
            task.abort();
        }
        tracing::info!("shutdown complete");
        Ok(())
    }
}

async fn watch_redis(cache: Arc<AnswerCache>) {
    let mut was_up = cache.redis_is_up();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let up = cache.ping().await;
        if up != was_up {
            if up {
                tracing::info!("redis is reachable again");
            } else {
                tracing::warn!("redis is unreachable; serving without it");
            }
            was_up = up;
        }
    }
}

/// The Redis URL without its password, for logs.
fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

/// The routes and the middleware stack. Layers, outermost first:
/// request id (every response carries one; `Connection: close` once draining) -> trace
/// span (with the id, at DEBUG) -> CORS (when origins are configured) -> catch-panic (a
/// panic becomes a JSON 500) -> routes. `/ask` sheds load past
/// `limits.max_concurrent_requests` itself, before reading the body.
pub fn router(state: AppState) -> Router {
    let mut app = Router::new()
        .route("/ask", post(routes::ask::ask))
        .route("/healthz", get(routes::health::healthz))
        .route("/readyz", get(routes::health::readyz))
        .route("/metrics", get(routes::metrics::metrics))
        .route("/stats", get(routes::metrics::stats))
        .route("/admin/cache", delete(routes::admin::delete_cache))
        .route("/admin/canned/reload", post(routes::admin::reload_canned))
        .route("/admin/canned/explain", post(routes::admin::explain_canned))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(CatchPanicLayer::custom(
            |_: Box<dyn std::any::Any + Send>| ApiError::internal().into_response(),
        ))
        .with_state(state.clone());

    let origins = &state.config.server.cors_allowed_origins;
    if !origins.is_empty() {
        let allowed: Vec<HeaderValue> = origins
            .iter()
            .filter_map(|o| HeaderValue::from_str(o.trim_end_matches('/')).ok())
            .collect();
        app = app.layer(
            CorsLayer::new()
                .allow_origin(AllowOrigin::list(allowed))
                .allow_methods([Method::GET, Method::POST])
                .allow_headers([
                    axum::http::header::CONTENT_TYPE,
                    HeaderName::from_static(REQUEST_ID),
                ])
                .expose_headers([HeaderName::from_static(REQUEST_ID)]),
        );
    }
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
