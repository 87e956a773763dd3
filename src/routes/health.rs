//! `GET /healthz` (the process runs) and `GET /readyz` (what it depends on, and whether
//! it is draining).

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};

use crate::state::AppState;

pub async fn healthz() -> Response {
    Json(serde_json::json!({"status": "ok"})).into_response()
}

/// `redis` is `up`, `down` or `auth_failed`; `redis_writes` is `ok`, or `failing` while
/// Redis answers reads but refuses writes (`maxmemory` with `noeviction`, say). `status`
/// is `ready` when Redis is up and the primary closed, as the contract says; failing
/// writes are shown, not counted against readiness.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let cache = &state.pipeline.cache;
    let redis = cache.redis_state();
    let redis_up = redis == crate::pipeline::cache::RedisState::Up;
    let writes_failing = cache.writes_failing();
    // The model tiers' checks, by name, from the walk's own list; the first one decides
    // readiness.
    let tiers: Vec<(&str, &str)> = state
        .pipeline
        .tiers
        .iter()
        .map(|slot| (slot.tier().as_str(), slot.state()))
        .collect();
    let primary = tiers.first().map_or("not_configured", |t| t.1);
    let draining = state.draining.load(Ordering::Relaxed);
    let status = if draining {
        "draining"
    } else if redis_up && primary == "closed" {
        "ready"
    } else {
        "degraded"
    };
    let mut checks = serde_json::Map::new();
    checks.insert("redis".into(), redis.as_str().into());
    checks.insert(
        "redis_writes".into(),
        if writes_failing { "failing" } else { "ok" }.into(),
    );
    for (name, tier_state) in tiers {
        checks.insert(name.into(), tier_state.into());
    }
    let body = Json(serde_json::json!({ "status": status, "checks": checks }));
    let code = if draining {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (code, body).into_response()
}
