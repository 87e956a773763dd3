//! `GET /metrics` (Prometheus text format) and `GET /stats` (JSON for people).

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Json, Response};

use crate::state::AppState;

pub async fn metrics(State(state): State<AppState>) -> Response {
    let r = state.stats.ratios();
    state.stats.evaluate_alert();
    let m = &state.metrics;
    m.success_ratio.set(r.success_ratio);
    m.cache_hit_ratio.set(r.cache_hit_ratio);
    m.fallback_ratio.set(r.fallback_ratio);
    m.error_ratio.set(r.error_ratio);
    let mut resp = m.render().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

pub async fn stats(State(state): State<AppState>) -> Response {
    Json(state.stats.snapshot()).into_response()
}
