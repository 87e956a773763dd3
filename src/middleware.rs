//! Request middleware of our own: request ids. (The rest of the stack comes from
//! tower-http; see `app::router`.)

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Request, State};
use axum::http::header::HOST;
use axum::http::{HeaderValue, Version};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::state::AppState;

pub const REQUEST_ID: &str = "x-request-id";

/// The id of the request being served, as put in its extensions.
#[derive(Debug, Clone)]
pub struct RequestId(pub Arc<str>);

/// Keeps the client's `X-Request-Id` when it is 1 to 128 visible ASCII characters, else
/// makes a new one; the id goes into the request (header and extension) and onto every
/// response. An HTTP/1.1 request without `Host` is refused here, `400 bad_request`. Once shutdown has begun, every response also asks the client to close its
/// connection, so that keep-alive clients go elsewhere instead of sending into a closing
/// socket.
pub async fn request_id(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|s| valid_request_id(s))
        .map(str::to_owned);
    let id = given.unwrap_or_else(new_request_id);
    let header = HeaderValue::from_str(&id).unwrap_or_else(|_| HeaderValue::from_static("invalid"));
    // RFC 9112, section 3.2: an HTTP/1.1 request without a Host header is answered 400.
    let mut resp = if req.version() == Version::HTTP_11 && !req.headers().contains_key(HOST) {
        state.reject("bad_request");
        ApiError::bad_request("HTTP/1.1 requests must carry a Host header").into_response()
    } else {
        req.headers_mut().insert(REQUEST_ID, header.clone());
        req.extensions_mut().insert(RequestId(Arc::from(id)));
        next.run(req).await
    };
    resp.headers_mut().insert(REQUEST_ID, header);
    if state.draining.load(std::sync::atomic::Ordering::Relaxed) {
        resp.headers_mut().insert(
            axum::http::header::CONNECTION,
            HeaderValue::from_static("close"),
        );
    }
    resp
}

fn valid_request_id(s: &str) -> bool {
    (1..=128).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic())
}

/// A ULID: 48 bits of milliseconds then 80 random bits, Crockford base32, so ids sort
/// by time.
pub fn new_request_id() -> String {
    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let value = (ms << 80) | (fastrand::u128(..) >> 48u32);
    (0..26)
        .rev()
        .map(|i| char::from(ALPHABET[((value >> (i * 5)) & 0x1f) as usize]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_ids_are_26_crockford_characters() {
        let id = new_request_id();
        assert_eq!(id.len(), 26);
        assert!(valid_request_id(&id));
        assert!(
            id.starts_with('0'),
            "a ULID of this century starts with 0: {id}"
        );
    }

    #[test]
    fn ids_with_spaces_or_too_long_are_refused() {
        assert!(!valid_request_id("a b"));
        assert!(!valid_request_id(""));
        assert!(!valid_request_id(&"x".repeat(129)));
        assert!(valid_request_id(&"x".repeat(128)));
    }
}
