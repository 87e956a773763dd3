//! Operator endpoints behind `Authorization: Bearer <ADMIN_TOKEN>`: invalidate a cached
//! answer, reload the canned answers, explain how a question matches them, reload the
//! clients file. With no
//! token configured they do not exist: `404` to every method, so nothing tells that the
//! route is there. The token is checked before any body is read, and a body is read with
//! the same size and time limits as `/ask`'s.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use secrecy::ExposeSecret;
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::pipeline::normalize::normalize;
use crate::routes::body::{json_object, read_body};
use crate::state::AppState;

/// Admin is enabled (a token is set), the method is the route's, and the request carries
/// the token (scheme `Bearer` in any case, as RFC 9110 says; the token compared in
/// constant time). Errors: `404`, `405`, `401`, in that order.
fn authorize(
    state: &AppState,
    method: &Method,
    allowed: &Method,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    let Some(token) = &state.config.admin_token else {
        return Err(ApiError::not_found());
    };
    if method != allowed {
        return Err(ApiError::method_not_allowed());
    }
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .unwrap_or("");
    if bool::from(given.as_bytes().ct_eq(token.expose_secret().as_bytes())) {
        Ok(())
    } else {
        Err(ApiError::unauthorized())
    }
}

/// The token of an `Authorization: Bearer <token>` value; the scheme is matched without
/// regard to case.
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start())
}

fn refuse(state: &AppState, e: ApiError) -> Response {
    state.reject(e.code);
    e.into_response()
}

/// The body of the admin routes that take a question.
#[derive(serde::Deserialize)]
struct QuestionBody {
    question: String,
}

/// Authorizes `req` for `method` (before anything of its body is read), then reads its
/// `{"question": ...}` body under the size and time limits.
async fn authorized_question(
    state: &AppState,
    method: &Method,
    req: Request,
) -> Result<QuestionBody, ApiError> {
    let (parts, body) = req.into_parts();
    authorize(state, &parts.method, method, &parts.headers)?;
    let timeout = Duration::from_millis(state.config.server.body_read_timeout_ms);
    let limit = state.config.limits.max_body_bytes;
    let bytes = read_body(&parts.headers, body, limit, timeout).await?;
    json_object(&bytes, "a JSON object with a string field \"question\"")
}

pub async fn delete_cache(State(state): State<AppState>, req: Request) -> Response {
    let req = match authorized_question(&state, &Method::DELETE, req).await {
        Ok(r) => r,
        Err(e) => return refuse(&state, e),
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

pub async fn reload_canned(State(state): State<AppState>, req: Request) -> Response {
    // No body is read: whatever a client sends is left unread and the connection closed
    // after the answer.
    if let Err(e) = authorize(&state, req.method(), &Method::POST, req.headers()) {
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

/// `POST /admin/clients/reload`: re-reads `clients.file`, `200 {"clients": N}`; a file
/// that cannot be used (or none configured) leaves the clients as they were and answers
/// `422 invalid_clients_file` with the reason.
pub async fn reload_clients(State(state): State<AppState>, req: Request) -> Response {
    if let Err(e) = authorize(&state, req.method(), &Method::POST, req.headers()) {
        return refuse(&state, e);
    }
    match state.clients.reload() {
        Ok(n) => {
            tracing::info!(clients = n, "admin: clients reloaded");
            Json(serde_json::json!({"clients": n})).into_response()
        }
        Err(e) => {
            tracing::warn!(error = %e, "admin: clients reload refused; old clients kept");
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_clients_file", e)
                .into_response()
        }
    }
}

/// How many entries `POST /admin/canned/explain` shows.
const EXPLAIN_TOP: usize = 5;

/// `POST /admin/canned/explain` with `{"question": "..."}`: the question's language, the
/// entry that matches (or `null`) and the best entries with their scores, so an operator
/// sees why a question matched or did not. Not counted in the match metrics.
pub async fn explain_canned(State(state): State<AppState>, req: Request) -> Response {
    let req = match authorized_question(&state, &Method::POST, req).await {
        Ok(r) => r,
        Err(e) => return refuse(&state, e),
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

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("BEARER abc"), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearerabc"), None);
    }
}
