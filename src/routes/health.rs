//! `GET /healthz` (the process runs) and `GET /readyz` (what it depends on, and whether
//! it is draining).

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};

use crate::app::AppState;

pub async fn healthz() -> Response {
    Json(serde_json::json!({"status": "ok"})).into_response()
}

/// `redis` is `up`, `down` or `auth_failed`; `redis_writes` is `ok`, or `failing` while
/// Redis answers reads but refuses writes (`maxmemory` with `noeviction`, say), which also
/// makes the status `degraded`.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let cache = &state.pipeline.cache;
    let redis = cache.redis_state();
    let redis_up = redis == crate::pipeline::cache::RedisState::Up;
    let writes_failing = cache.writes_failing();
    let tier_state = |i: usize| {
        state
            .pipeline
            .tiers
            .get(i)
            .map_or("not_configured", |slot| slot.state())
    };
    let (primary, secondary) = (tier_state(0), tier_state(1));
    let draining = state.draining.load(Ordering::Relaxed);
    let status = if draining {
        "draining"
    } else if redis_up && !writes_failing && primary == "closed" {
        "ready"
    } else {
        "degraded"
    };
    let body = Json(serde_json::json!({
        "status": status,
        "checks": {
            "redis": redis.as_str(),
            "redis_writes": if writes_failing { "failing" } else { "ok" },
            "primary": primary,
            "secondary": secondary,
        }
    }));
    let code = if draining {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (code, body).into_response()
}
