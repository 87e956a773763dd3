//! The strict ceiling of `bench/run.sh`: `POST /ask` answered with a fixed JSON body the
//! size and shape of a cache hit's, on `axum::serve` with default settings; nothing else.
//! It reads no body field, keeps no cache, writes no log and no metric: what is left is
//! the accept loop, HTTP/1.1 parsing and the response, as fast as axum and tokio make
//! them. The service's cache hits are measured against it.
//!
//! Usage: `qa-ceiling ADDR BODY_FILE` (the body the service answered, saved by the
//! benchmark, so that both send the same bytes).

use axum::Router;
use axum::body::Bytes;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::post;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8099".into());
    let body = match args.next() {
        Some(path) => std::fs::read(path)?,
        None => br#"{"answer":"ok","source":"cache"}"#.to_vec(),
    };
    let body = Bytes::from(body);
    let app = Router::new().route(
        "/ask",
        post(move |_: Bytes| {
            let body = body.clone();
            async move { ([(header::CONTENT_TYPE, "application/json")], body).into_response() }
        }),
    );
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    axum::serve(listener, app).await
}
