//! An axum router for purging over HTTP, guarded by a bearer token (feature `admin`).
//!
//! `POST /purge` with a JSON body `{"urls": [...], "tags": [...], "prefix": "...", "soft": false}`
//! (every field optional) answers `200 {"purged": N}`. Without the right
//! `Authorization: Bearer <token>` it answers `401` and changes nothing; an empty configured
//! token rejects every call.
//!
//! ```
//! use axum::Router;
//! use cache_layer::{CacheLayer, admin};
//!
//! let cache = CacheLayer::new();
//! let admin: Router = admin::router(cache.handle(), "s3cret");
//! let app: Router = Router::new().nest("/admin", admin);
//! # let _ = app;
//! ```

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;

use crate::CacheHandle;

/// What to purge. Every field is optional; all given selectors apply.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurgeRequest {
    /// Absolute URLs whose entries go.
    #[serde(default)]
    pub urls: Vec<String>,
    /// Tags whose entries go.
    #[serde(default)]
    pub tags: Vec<String>,
    /// A key prefix whose entries go.
    #[serde(default)]
    pub prefix: Option<String>,
    /// Mark stale instead of removing.
    #[serde(default)]
    pub soft: bool,
}

#[derive(Clone)]
struct AdminState {
    handle: CacheHandle,
    token: Arc<[u8]>,
}

/// The purge router; mount it wherever suits (for example under `/admin`).
pub fn router(handle: CacheHandle, token: impl Into<String>) -> Router {
    let token: String = token.into();
    Router::new()
        .route("/purge", post(purge))
        .with_state(AdminState {
            handle,
            token: Arc::from(token.into_bytes()),
        })
}

/// Compares two byte strings in time that depends only on `expected`'s length.
pub fn constant_time_eq(given: &[u8], expected: &[u8]) -> bool {
    let mut diff = u8::from(given.len() != expected.len());
    for (i, e) in expected.iter().enumerate() {
        let g = given.get(i).copied().unwrap_or(0);
        diff |= g ^ e;
    }
    std::hint::black_box(diff) == 0
}

fn authorized(headers: &HeaderMap, token: &[u8]) -> bool {
    if token.is_empty() {
        return false;
    }
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return false;
    };
    let v = value.as_bytes();
    if v.len() < 7 || !v[..7].eq_ignore_ascii_case(b"bearer ") {
        return false;
    }
    constant_time_eq(&v[7..], token)
}

fn problem(status: StatusCode, title: &str) -> Response {
    let body =
        serde_json::json!({ "type": "about:blank", "title": title, "status": status.as_u16() });
    let mut resp = (status, body.to_string()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    resp
}

async fn purge(State(state): State<AdminState>, headers: HeaderMap, body: Bytes) -> Response {
    if !authorized(&headers, &state.token) {
        tracing::debug!("purge refused: missing or wrong bearer token");
        let mut resp = problem(StatusCode::UNAUTHORIZED, "missing or invalid bearer token");
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return resp;
    }
    let req: PurgeRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(_) => return problem(StatusCode::BAD_REQUEST, "body must be a JSON purge request"),
    };
    let h = &state.handle;
    let mut purged = 0;
    for url in &req.urls {
        purged += if req.soft {
            h.soft_purge_url(url)
        } else {
            h.purge_url(url)
        };
    }
    for tag in &req.tags {
        purged += if req.soft {
            h.soft_purge_tag(tag)
        } else {
            h.purge_tag(tag)
        };
    }
    if let Some(p) = &req.prefix {
        purged += if req.soft {
            h.soft_purge_prefix(p)
        } else {
            h.purge_prefix(p)
        };
    }
    tracing::debug!(purged, soft = req.soft, "purge over HTTP");
    (
        StatusCode::OK,
        axum::Json(serde_json::json!({ "purged": purged })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_compare() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abd", b"abc"));
        assert!(!constant_time_eq(b"ab", b"abc"));
        assert!(!constant_time_eq(b"abcd", b"abc"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn bearer_parsing() {
        let mut h = HeaderMap::new();
        assert!(!authorized(&h, b"t"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer t"));
        assert!(authorized(&h, b"t"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("bearer t"));
        assert!(authorized(&h, b"t"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic t"));
        assert!(!authorized(&h, b"t"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer t"));
        assert!(!authorized(&h, b""), "an empty token rejects everything");
    }
}
