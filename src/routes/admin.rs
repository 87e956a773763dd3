//! Operator endpoints behind `Authorization: Bearer <ADMIN_TOKEN>`: invalidate a cached
//! answer, reload the canned answers, explain how a question matches them. With no
//! token configured they do not exist (404).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use secrecy::ExposeSecret;
use subtle::ConstantTimeEq;

use crate::app::AppState;
use crate::error::ApiError;
use crate::pipeline::normalize::normalize;

fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = &state.config.admin_token else {
        return Err(ApiError::not_found());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if bool::from(given.as_bytes().ct_eq(token.expose_secret().as_bytes())) {
        Ok(())
    } else {
        Err(ApiError::unauthorized())
    }
}

fn refuse(state: &AppState, e: ApiError) -> Response {
    state.reject(e.code);
    e.into_response()
}

pub async fn delete_cache(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(e) = authorize(&state, &headers) {
        return refuse(&state, e);
    }
    #[derive(serde::Deserialize)]
    struct Req {
        question: String,
    }
    let req: Req = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(_) => {
            return refuse(
                &state,
                ApiError::invalid_json(
                    "body must be a JSON object with a string field \"question\"",
                ),
            );
        }
    };
    let key = state.pipeline.cache.key(&normalize(&req.question));
    match state.pipeline.cache.delete(&key).await {
        Ok(deleted) => {
            tracing::info!(deleted, "admin: cached answer invalidated");
            Json(serde_json::json!({"deleted": deleted})).into_response()
        }
        Err(e) => {
            tracing::warn!(error = %e, "admin: cache invalidation failed");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "redis_unavailable",
                format!("could not reach Redis to delete the answer: {e}"),
            )
            .into_response()
        }
    }
}

pub async fn reload_canned(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&state, &headers) {
        return refuse(&state, e);
    }
    match state.pipeline.canned.reload() {
        Ok(n) => {
            tracing::info!(answers = n, "admin: canned answers reloaded");
            Json(serde_json::json!({"answers": n})).into_response()
        }
        Err(e) => {
            tracing::warn!(error = %e, "admin: canned answers reload refused; old answers kept");
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_canned_file", e)
                .into_response()
        }
    }
}

/// How many entries `POST /admin/canned/explain` shows.
const EXPLAIN_TOP: usize = 5;

/// `POST /admin/canned/explain` with `{"question": "..."}`: the question's language, the
/// entry that matches (or `null`) and the best entries with their scores, so an operator
/// sees why a question matched or did not. Not counted in the match metrics.
pub async fn explain_canned(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(e) = authorize(&state, &headers) {
        return refuse(&state, e);
    }
    #[derive(serde::Deserialize)]
    struct Req {
        question: String,
    }
    let req: Req = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(_) => {
            return refuse(
                &state,
                ApiError::invalid_json(
                    "body must be a JSON object with a string field \"question\"",
                ),
            );
        }
    };
    let canned = &state.pipeline.canned;
    let faq = canned.faq();
    let min_score = canned.settings.min_score;
    let ranked = faq.rank(req.question.trim());
    let show = |c: &crate::faq::Candidate| {
        serde_json::json!({
            "question": &*c.question,
            "score": (c.score * 1000.0).round() / 1000.0,
            "language": c.language,
        })
    };
    let matched = ranked.first().filter(|c| c.score >= min_score).map(&show);
    Json(serde_json::json!({
        "language": faq.language_of(req.question.trim()),
        "min_score": min_score,
        "answer_first_score": canned.settings.answer_first_score,
        "matched": matched,
        "top": ranked.iter().take(EXPLAIN_TOP).map(show).collect::<Vec<_>>(),
    }))
    .into_response()
}
