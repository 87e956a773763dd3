//! The HTTP/1.1 accept loop: hyper's connection builder with a header-read timeout (a
//! client that trickles its headers is cut off instead of holding a task), keep-alive,
//! `TCP_NODELAY`, and graceful shutdown: once the signal comes, no new connection is
//! accepted; connections already open keep being served for a short notice period (a
//! load balancer polling `/readyz` on one sees the 503, and every response says
//! `Connection: close`, so busy clients move off at once without a request lost in a
//! closing socket); then the remaining connections finish what is in flight and close.
//! All within the grace period.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceExt;

/// How long open connections keep being served after the signal, unless nothing is in
/// flight sooner.
const DRAIN_NOTICE: Duration = Duration::from_secs(1);

/// What a client may cost before its request reaches a route.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The request head must arrive within this long.
    pub header_read_timeout: Duration,
    /// The request head (request line and headers) may take at most this many bytes
    /// (at least 8192, hyper's floor); past it hyper answers `431` and closes.
    pub max_header_bytes: usize,
}

/// Serves `router` until `shutdown` completes, then drains for at most `grace`;
/// `idle()` tells when no request is in flight; `on_error` sees every connection that
/// ended with an error (a malformed or oversized request head among them).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    grace: Duration,
    shutdown: impl Future<Output = ()>,
    idle: impl Fn() -> bool,
    on_error: impl Fn(&hyper::Error) + Clone + Send + 'static,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: wait, never exit the loop.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        // The peer's address, for the routes that tell clients apart by it.
        let service = TowerToHyperService::new(router.clone().map_request(
            move |mut req: axum::http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                req
            },
        ));
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        let on_error = on_error.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                on_error(&e);
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    let drain = async {
        let notice = async {
            while !idle() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        let _ = tokio::time::timeout(DRAIN_NOTICE.min(grace), notice).await;
        graceful.shutdown().await;
    };
    if tokio::time::timeout(grace, drain).await.is_err() {
        tracing::warn!("shutdown grace elapsed with requests still in flight");
    }
}
