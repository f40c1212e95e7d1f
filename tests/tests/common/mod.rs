//! Helpers shared by the cross-crate tests.

use axum::Router;
use axum::body::Body;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

/// Result of these helpers: any failure is a test failure.
pub(crate) type TestResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Sends `GET uri` through `app` and returns status, headers and the body as text.
pub(crate) async fn get_text(
    app: &Router,
    uri: &str,
) -> TestResult<(StatusCode, HeaderMap, String)> {
    let response = app
        .clone()
        .oneshot(Request::get(uri).body(Body::empty())?)
        .await?;
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, headers, String::from_utf8(body.to_vec())?))
}
