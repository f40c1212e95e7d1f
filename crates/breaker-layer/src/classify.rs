//! Deciding whether a response or error counts against the dependency, and what to answer while the breaker is open.
//!
//! Both are tiny traits with a default struct and a blanket impl for closures, as in tower-http.

use std::fmt;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::breaker::{Outcome, Rejected};

/// Judges the result of one inner call.
///
/// Implemented by [`DefaultClassifier`] and by any `Fn(Result<&Response<B>, &E>) -> Outcome + Clone + Send + Sync`.
/// A classifier that panics is caught and the call counts as a [`Outcome::Failure`].
///
/// ```
/// use breaker_layer::{BreakerLayer, CircuitBreaker, Outcome};
/// use http::{Response, StatusCode};
///
/// let layer = BreakerLayer::new(CircuitBreaker::builder().build()?).classifier(
///     |result: Result<&Response<axum::body::Body>, &std::convert::Infallible>| match result {
///         Ok(res) if res.status() == StatusCode::BAD_GATEWAY => Outcome::Failure,
///         Ok(res) if res.status().is_client_error() => Outcome::Ignored,
///         Ok(_) => Outcome::Success,
///         Err(_) => Outcome::Failure,
///     },
/// );
/// # Ok::<(), breaker_layer::ConfigError>(())
/// ```
pub trait Classify<B, E>: Clone + Send + Sync + 'static {
    /// Judge one result.
    fn classify(&self, result: Result<&Response<B>, &E>) -> Outcome;
}

impl<B, E, F> Classify<B, E> for F
where
    F: Fn(Result<&Response<B>, &E>) -> Outcome + Clone + Send + Sync + 'static,
{
    fn classify(&self, result: Result<&Response<B>, &E>) -> Outcome {
        self(result)
    }
}

/// The default judgement: an inner error or a `5xx` response is a failure, everything else a success.
/// Optionally `429 Too Many Requests` is a failure too.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DefaultClassifier {
    too_many_requests: bool,
}

impl DefaultClassifier {
    /// Errors and `5xx` are failures.
    pub const fn new() -> Self {
        Self {
            too_many_requests: false,
        }
    }

    /// Also count `429 Too Many Requests` as a failure.
    ///
    /// Defaults to `false`.
    pub const fn too_many_requests_as_failure(mut self, yes: bool) -> Self {
        self.too_many_requests = yes;
        self
    }
}

impl<B, E> Classify<B, E> for DefaultClassifier {
    fn classify(&self, result: Result<&Response<B>, &E>) -> Outcome {
        match result {
            Err(_) => Outcome::Failure,
            Ok(res) if res.status().is_server_error() => Outcome::Failure,
            Ok(res) if self.too_many_requests && res.status() == StatusCode::TOO_MANY_REQUESTS => {
                Outcome::Failure
            }
            Ok(_) => Outcome::Success,
        }
    }
}

/// Builds the response sent while the breaker refuses calls.
///
/// Implemented by [`ProblemFallback`] (the default) and by any `Fn(&Rejected) -> Response<Bytes> + Clone + Send + Sync`.
///
/// ```
/// use breaker_layer::{BreakerLayer, CircuitBreaker, Rejected};
/// use bytes::Bytes;
/// use http::{Response, StatusCode};
///
/// let layer = BreakerLayer::new(CircuitBreaker::builder().build()?).fallback(|rejected: &Rejected| {
///     let mut res = Response::new(Bytes::from_static(b"[]"));
///     *res.status_mut() = StatusCode::OK; // serve an empty list instead of an error
///     res.headers_mut().insert("retry-after", rejected.retry_after_secs().into());
///     res
/// });
/// # Ok::<(), breaker_layer::ConfigError>(())
/// ```
pub trait Fallback: Clone + Send + Sync + 'static {
    /// The response for one refused call.
    fn response(&self, rejected: &Rejected) -> Response<Bytes>;
}

impl<F> Fallback for F
where
    F: Fn(&Rejected) -> Response<Bytes> + Clone + Send + Sync + 'static,
{
    fn response(&self, rejected: &Rejected) -> Response<Bytes> {
        self(rejected)
    }
}

/// The default answer while open: `503 Service Unavailable`, `Retry-After` in whole seconds (rounded up) until the
/// next probe, `Cache-Control: no-store` and an `application/problem+json` body (RFC 9457).
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct ProblemFallback;

impl fmt::Debug for ProblemFallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ProblemFallback")
    }
}

const OPEN_BODY: &[u8] = br#"{"type":"about:blank","title":"Service Unavailable","status":503,"detail":"circuit breaker is open"}"#;
const TIMEOUT_BODY: &[u8] = br#"{"type":"about:blank","title":"Gateway Timeout","status":504,"detail":"the call took longer than the circuit breaker's timeout"}"#;

pub(crate) fn problem(status: StatusCode, body: &'static [u8]) -> Response<Bytes> {
    let mut res = Response::new(Bytes::from_static(body));
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

pub(crate) fn timeout_response() -> Response<Bytes> {
    problem(StatusCode::GATEWAY_TIMEOUT, TIMEOUT_BODY)
}

impl Fallback for ProblemFallback {
    fn response(&self, rejected: &Rejected) -> Response<Bytes> {
        let mut res = problem(StatusCode::SERVICE_UNAVAILABLE, OPEN_BODY);
        res.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(rejected.retry_after_secs()),
        );
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(status: u16) -> Response<()> {
        let mut r = Response::new(());
        *r.status_mut() = StatusCode::from_u16(status).unwrap();
        r
    }

    #[test]
    fn default_classifier() {
        let c = DefaultClassifier::new();
        let judge = |s| Classify::<(), ()>::classify(&c, Ok(&res(s)));
        assert_eq!(judge(200), Outcome::Success);
        assert_eq!(judge(404), Outcome::Success);
        assert_eq!(judge(429), Outcome::Success);
        assert_eq!(judge(500), Outcome::Failure);
        assert_eq!(judge(503), Outcome::Failure);
        assert_eq!(Classify::<(), ()>::classify(&c, Err(&())), Outcome::Failure);
        let c = c.too_many_requests_as_failure(true);
        assert_eq!(
            Classify::<(), ()>::classify(&c, Ok(&res(429))),
            Outcome::Failure
        );
    }
}
