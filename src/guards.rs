//! The guards in front of every answering route (`POST /ask`, and the OpenAI-compatible
//! endpoint), as one tower chain. In order, outermost first:
//!
//! ```text
//! request id      every response carries X-Request-Id; HTTP/1.1 without Host is 400
//!                 (app-wide, in `middleware::request_id`)
//! trace span      one DEBUG span per request, with its id (app-wide)
//! client          who is asking (`clients.rs`): a known API key, or an address; 401
//!                 `unauthorized` without a known key when `clients.require_key` is set
//!                 (also in front of `GET /v1/models`)
//! body            the whole body, at most `limits.max_body_bytes` (413), within
//!                 `server.body_read_timeout_ms` (408); a client whose body is still on
//!                 its way holds no load-shedding slot
//! client rate     the client's request rate (`limits/rate.rs`): 429 `rate_limited` with
//!                 Retry-After; the RateLimit fields on every response of a client with
//!                 a limit (the daily budget's too, which the handler checks)
//! load shedding   past `limits.max_concurrent_requests` in flight, 503 `overloaded` with
//!                 Retry-After at once; the slot is held until the response body ends
//!                 (a stream holds it while it streams)
//! handler         content type (415), JSON (400), question (422), the fresh cache,
//!                 the client's daily model-call budget (429 when it is spent and no
//!                 canned or stale answer fits), then the rest of the pipeline
//! ```
//!
//! The header-read timeout and the request-head size limit sit below all of this, in the
//! accept loop (`server.rs`); the answer's deadline sits inside the pipeline.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::OwnedSemaphorePermit;

use crate::clients::Client;
use crate::error::ApiError;
use crate::limits::{DailyState, headers};
use crate::routes::body::read_body;
use crate::state::AppState;

/// Adds the guards to `router`'s routes (apply with `Router::route_layer`).
pub fn answering<S>(state: AppState, router: axum::Router<S>) -> axum::Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    router.route_layer(
        tower::ServiceBuilder::new()
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                identify,
            ))
            .layer(axum::middleware::from_fn_with_state(state.clone(), body))
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                limit_rate,
            ))
            .layer(axum::middleware::from_fn_with_state(state, shed_load)),
    )
}

/// Adds the client guard alone to `router`'s routes: those that need a key when one is
/// required, but answer no question (`GET /v1/models`).
pub fn keyed<S>(state: AppState, router: axum::Router<S>) -> axum::Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    router.route_layer(axum::middleware::from_fn_with_state(state, identify))
}

/// Puts the request's [`Client`] in its extensions; without a known key while
/// `clients.require_key` is set, 401 (with `WWW-Authenticate: Bearer`, RFC 6750). With
/// no key required, no clients file and no limit, there is nobody to tell apart: no
/// client is put.
async fn identify(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    if !state.clients.active() {
        return next.run(req).await;
    }
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    match state.clients.identify(req.headers(), peer) {
        Ok(client) => {
            if let Some(name) = &client.name {
                tracing::debug!(client = %name, "client known by its key");
            }
            req.extensions_mut().insert(client);
            next.run(req).await
        }
        Err(_) => {
            state.reject("unauthorized");
            let mut resp = ApiError::key_required().into_response();
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"resilient-qa\""),
            );
            resp
        }
    }
}

/// The client's request rate: over it, 429 at once. Every response to a client with a
/// limit carries the RateLimit fields: its policies, the rate as checked here and the
/// daily budget as the handler checked it (in the response's extensions).
async fn limit_rate(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(client) = req.extensions().get::<Client>().cloned() else {
        return next.run(req).await;
    };
    if !client.limits.any() {
        return next.run(req).await;
    }
    let rate = state.limiter.check_rate(&client).await;
    let mut resp = match &rate {
        Some(r) if !r.allowed => {
            state.reject("rate_limited");
            let wait = headers::secs_up(r.retry_after).max(1);
            ApiError::rate_limited(
                format!(
                    "too many requests: this client may send {} at once and {} a second; retry in {wait} s",
                    client.limits.burst, client.limits.rps
                ),
                wait,
            )
            .into_response()
        }
        _ => next.run(req).await,
    };
    let daily = resp.extensions().get::<DailyState>().copied();
    headers::write(
        resp.headers_mut(),
        &state.limiter.policies,
        &client.limits,
        rate.as_ref(),
        daily.as_ref(),
    );
    resp
}

/// Reads the whole body under the size and time limits, and hands it on in memory.
async fn body(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let limit = state.config.limits.max_body_bytes;
    let timeout = Duration::from_millis(state.config.server.body_read_timeout_ms);
    match read_body(&parts.headers, body, limit, timeout).await {
        Ok(bytes) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Err(e) => {
            state.reject(e.code);
            e.into_response()
        }
    }
}

/// Takes a slot of `limits.max_concurrent_requests`, or answers 503 at once.
async fn shed_load(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Ok(permit) = state.inflight.clone().try_acquire_owned() else {
        state.reject("overloaded");
        return ApiError::overloaded().into_response();
    };
    next.run(req).await.map(|body| {
        Body::new(Holding {
            body,
            _permit: permit,
        })
    })
}

/// A response body that holds its request's slot until it is dropped (sent whole, or
/// its client gone).
struct Holding {
    body: Body,
    _permit: OwnedSemaphorePermit,
}

impl HttpBody for Holding {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The body the guards read, for the handler.
pub async fn buffered(body: Body) -> axum::body::Bytes {
    // Already in memory: collecting it cannot wait or fail.
    body.collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default()
}
