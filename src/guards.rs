//! The guards in front of every answering route (`POST /ask`, and the OpenAI-compatible
//! endpoint), as one tower chain. In order, outermost first:
//!
//! ```text
//! request id      every response carries X-Request-Id; HTTP/1.1 without Host is 400
//!                 (app-wide, in `middleware::request_id`)
//! trace span      one DEBUG span per request, with its id (app-wide)
//! body            the whole body, at most `limits.max_body_bytes` (413), within
//!                 `server.body_read_timeout_ms` (408); a client whose body is still on
//!                 its way holds no load-shedding slot
//! load shedding   past `limits.max_concurrent_requests` in flight, 503 `overloaded` with
//!                 Retry-After at once; the slot is held until the response body ends
//!                 (a stream holds it while it streams)
//! handler         content type (415), JSON (400), question (422), then the pipeline
//! ```
//!
//! The header-read timeout and the request-head size limit sit below all of this, in the
//! accept loop (`server.rs`); the answer's deadline sits inside the pipeline.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::OwnedSemaphorePermit;

use crate::error::ApiError;
use crate::routes::body::read_body;
use crate::state::AppState;

/// Adds the guards to `router`'s routes (apply with `Router::route_layer`).
pub fn answering<S>(state: AppState, router: axum::Router<S>) -> axum::Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    router.route_layer(
        tower::ServiceBuilder::new()
            .layer(axum::middleware::from_fn_with_state(state.clone(), body))
            .layer(axum::middleware::from_fn_with_state(state, shed_load)),
    )
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
