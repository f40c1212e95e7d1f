//! The HTTP/1 client the load and the checks send requests with: pooled keep-alive connections, a timeout per
//! request, and loopback targets only.

use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// `Idempotency-Key` request header (draft-ietf-httpapi-idempotency-key-header), an RFC 8941 sf-string.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// `Idempotent-Replayed` response header: the answer is a replay of the first one.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
/// `Cache-Status` response header (RFC 9211).
pub const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// Why a request got no answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// No complete answer within the client's timeout.
    #[error("timeout")]
    Timeout,
    /// Connecting, sending or reading failed.
    #[error("transport: {0}")]
    Transport(String),
    /// The URL is not an `http://` URL on a loopback address.
    #[error("refusing a non-loopback target: {0}")]
    NotLoopback(String),
}

impl RequestError {
    /// Short cause for error counts.
    pub fn cause(&self) -> &'static str {
        match self {
            RequestError::Timeout => "timeout",
            RequestError::Transport(_) => "transport error",
            RequestError::NotLoopback(_) => "not loopback",
        }
    }
}

/// A complete answer.
#[derive(Clone, Debug)]
pub struct Reply {
    /// Status code.
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl Reply {
    /// True when `Cache-Status` says a cache answered from storage (`; hit`).
    pub fn is_cache_hit(&self) -> bool {
        self.headers
            .get(CACHE_STATUS)
            .and_then(|v| v.to_str().ok())
            .is_some_and(cache_status_is_hit)
    }

    /// True when the response carries `Idempotent-Replayed: true`.
    pub fn is_replayed(&self) -> bool {
        self.headers
            .get(IDEMPOTENT_REPLAYED)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"))
    }
}

/// Whether a `Cache-Status` value reports a hit in any cache: a member with the `hit` parameter (RFC 9211).
///
/// ```
/// use chat_loadtest::client::cache_status_is_hit;
///
/// assert!(cache_status_is_hit("chat; hit; ttl=1"));
/// assert!(!cache_status_is_hit("chat; fwd=miss; stored"));
/// assert!(!cache_status_is_hit("hit"));
/// ```
pub fn cache_status_is_hit(value: &str) -> bool {
    value.split(',').any(|member| {
        member
            .split(';')
            .skip(1)
            .any(|param| param.trim().eq_ignore_ascii_case("hit"))
    })
}

/// A pooled HTTP/1 client with a timeout on every request; cheap to clone.
#[derive(Clone, Debug)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

impl Http {
    /// A client whose requests fail with [`RequestError::Timeout`] after `timeout`.
    pub fn new(timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Self { client, timeout }
    }

    /// `GET url`.
    pub async fn get(&self, url: &str) -> Result<Reply, RequestError> {
        self.send(Method::GET, url, None, None).await
    }

    /// `POST url` with a JSON body and an optional `Idempotency-Key` (given without quotes; sent as an sf-string).
    pub async fn post_json(
        &self,
        url: &str,
        body: Bytes,
        idempotency_key: Option<&str>,
    ) -> Result<Reply, RequestError> {
        self.send(Method::POST, url, Some(body), idempotency_key)
            .await
    }

    /// `PUT url` with a JSON body.
    pub async fn put_json(&self, url: &str, body: Bytes) -> Result<Reply, RequestError> {
        self.send(Method::PUT, url, Some(body), None).await
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        body: Option<Bytes>,
        idempotency_key: Option<&str>,
    ) -> Result<Reply, RequestError> {
        let uri: http::Uri = url
            .parse()
            .map_err(|_| RequestError::NotLoopback(url.to_owned()))?;
        if !is_loopback(&uri) {
            return Err(RequestError::NotLoopback(url.to_owned()));
        }
        let mut request = Request::builder().method(method).uri(uri);
        if body.is_some() {
            request = request.header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        if let Some(key) = idempotency_key {
            let value = HeaderValue::from_str(&format!("\"{key}\""))
                .map_err(|e| RequestError::Transport(format!("bad idempotency key: {e}")))?;
            request = request.header(IDEMPOTENCY_KEY, value);
        }
        let request = request
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|e| RequestError::Transport(e.to_string()))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| RequestError::Transport(e.to_string()))?;
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| RequestError::Transport(e.to_string()))?
                .to_bytes();
            Ok(Reply {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .unwrap_or(Err(RequestError::Timeout))
    }
}

/// True for `http://` URIs whose host is a loopback IP address or `localhost`: the load never leaves the machine.
pub fn is_loopback(uri: &http::Uri) -> bool {
    if uri.scheme_str() != Some("http") {
        return false;
    }
    match uri.host() {
        Some("localhost") => true,
        Some(host) => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_http_targets_pass() {
        for ok in [
            "http://127.0.0.1:3000/x",
            "http://127.3.4.5/",
            "http://[::1]:80/",
            "http://localhost:1/",
        ] {
            assert!(is_loopback(&ok.parse().unwrap()), "{ok}"); // test input is a valid URI
        }
        for bad in [
            "http://10.0.0.1/",
            "https://127.0.0.1/",
            "http://example.com/",
            "http://192.168.1.1:3000/",
        ] {
            assert!(!is_loopback(&bad.parse().unwrap()), "{bad}"); // test input is a valid URI
        }
    }

    #[test]
    fn cache_status_hits_and_misses() {
        assert!(cache_status_is_hit("chat; hit"));
        assert!(cache_status_is_hit("edge; fwd=uri-miss, chat; HIT; ttl=0"));
        assert!(!cache_status_is_hit("chat; fwd=stale; fwd-status=200"));
        assert!(!cache_status_is_hit(""));
    }

    #[tokio::test]
    async fn refuses_other_hosts_without_sending() {
        let http = Http::new(Duration::from_secs(1));
        let err = http.get("http://192.0.2.1:80/").await.unwrap_err(); // the error is the point of the test
        assert_eq!(err.cause(), "not loopback");
    }
}
