//! Reading request bodies: every body any route reads goes through [`read_body`], so every
//! one has a size limit and a time limit, and a client that declares a body and never
//! sends it holds a connection for `server.body_read_timeout_ms` at most.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::error::ApiError;

/// Reads the whole body: at most `limit` bytes (a larger declared `Content-Length` is
/// refused before anything is read), all of it within `timeout`.
///
/// Errors: `413 payload_too_large` past `limit`, `408 request_timeout` past `timeout`,
/// `400 invalid_json` when the body breaks off.
pub async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::payload_too_large(limit));
    }
    let collected = tokio::time::timeout(timeout, Limited::new(body, limit).collect())
        .await
        .map_err(|_| ApiError::request_timeout(timeout))?;
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ApiError::payload_too_large(limit))
        }
        Err(e) => Err(ApiError::invalid_json(format!(
            "could not read the request body: {e}"
        ))),
    }
}

/// Parses a body that must be a JSON object (serde would also read a struct from an
/// array, `["hi"]`, field by field: that is not the API's shape).
///
/// Errors: `400 invalid_json` naming what is wrong; `shape` describes the expected object.
pub fn json_object<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    shape: &str,
) -> Result<T, ApiError> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    let value: T = serde_json::from_slice(bytes).map_err(|e| {
        if e.is_data() {
            ApiError::invalid_json(format!("body must be {shape}"))
        } else {
            ApiError::invalid_json(format!("body is not valid JSON: {e}"))
        }
    })?;
    if first != Some(&b'{') {
        return Err(ApiError::invalid_json(format!("body must be {shape}")));
    }
    Ok(value)
}
