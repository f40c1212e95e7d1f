//! The chat web page: HTML, CSS and JavaScript compiled into the binary and served at `/` and
//! under `/assets/`, with no build step and nothing fetched from elsewhere.

use std::sync::LazyLock;

use axum::Router;
use axum::body::Body;
use axum::response::Response;
use axum::routing::get;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, X_CONTENT_TYPE_OPTIONS};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use crate::http::IfNoneMatch;

/// `Content-Security-Policy` of the page: its own scripts, styles and requests only.
const CSP: HeaderValue = HeaderValue::from_static(
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
     img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
);
const CONTENT_SECURITY_POLICY: HeaderName = HeaderName::from_static("content-security-policy");
/// Revalidated on every use: a new binary's page shows at once, an unchanged one costs a `304`.
const REVALIDATE: HeaderValue = HeaderValue::from_static("no-cache");
const NOSNIFF: HeaderValue = HeaderValue::from_static("nosniff");

/// One embedded file with its media type and entity tag.
struct Asset {
    body: &'static str,
    content_type: HeaderValue,
    etag: String,
}

impl Asset {
    fn new(body: &'static str, content_type: &'static str) -> Self {
        Self {
            body,
            content_type: HeaderValue::from_static(content_type),
            etag: format!("\"p{:016x}\"", fnv1a(body.as_bytes())),
        }
    }
}

/// FNV-1a: a stable content hash for the entity tags, computed once per asset.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

static INDEX: LazyLock<Asset> =
    LazyLock::new(|| Asset::new(include_str!("page/index.html"), "text/html; charset=utf-8"));
static STYLE: LazyLock<Asset> =
    LazyLock::new(|| Asset::new(include_str!("page/chat.css"), "text/css; charset=utf-8"));
static SCRIPT: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        include_str!("page/chat.js"),
        "text/javascript; charset=utf-8",
    )
});

/// `GET /`, `GET /assets/chat.css` and `GET /assets/chat.js`, for any router state.
pub(crate) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/",
            get(|headers: HeaderMap| async move { serve(&INDEX, &headers) }),
        )
        .route(
            "/assets/chat.css",
            get(|headers: HeaderMap| async move { serve(&STYLE, &headers) }),
        )
        .route(
            "/assets/chat.js",
            get(|headers: HeaderMap| async move { serve(&SCRIPT, &headers) }),
        )
}

fn serve(asset: &Asset, request: &HeaderMap) -> Response {
    let not_modified = IfNoneMatch::from_headers(request).is_some_and(|p| p.matches(&asset.etag));
    let mut response = if not_modified {
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        response
    } else {
        Response::new(Body::from(asset.body))
    };
    let headers = response.headers_mut();
    if let Ok(etag) = HeaderValue::from_str(&asset.etag) {
        headers.insert(ETAG, etag);
    }
    headers.insert(CACHE_CONTROL, REVALIDATE);
    if !not_modified {
        headers.insert(CONTENT_TYPE, asset.content_type.clone());
    }
    headers.insert(X_CONTENT_TYPE_OPTIONS, NOSNIFF);
    headers.insert(CONTENT_SECURITY_POLICY, CSP);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_have_distinct_stable_tags() {
        assert_eq!(INDEX.etag, Asset::new(INDEX.body, "text/html").etag);
        assert_ne!(INDEX.etag, SCRIPT.etag);
        assert_ne!(STYLE.etag, SCRIPT.etag);
    }

    #[test]
    fn the_page_loads_only_its_own_assets() {
        for asset in ["/assets/chat.css", "/assets/chat.js"] {
            assert!(INDEX.body.contains(asset), "{asset}");
        }
        assert!(!INDEX.body.contains("http://") && !INDEX.body.contains("https://"));
        assert!(!SCRIPT.body.contains("http://") && !SCRIPT.body.contains("https://"));
    }
}
