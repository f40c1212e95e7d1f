//! A caching reverse proxy: [`cache_layer::CacheLayer`] in front of an HTTP/1 client.
//!
//! Requests are forwarded to the upstream with their method, path, query, headers (less the
//! hop-by-hop ones) and body; responses come back the same way. What the cache may store it
//! stores, and it answers from its store when RFC 9111 allows. Each response carries a
//! `Cache-Status` field saying what the cache did.
//!
//! As a gateway the proxy also:
//! - collapses identical concurrent misses, so a burst on a cold URL reaches the upstream once
//!   (`--collapse-wait`, `--no-collapse`);
//! - obeys `Surrogate-Control` (W3C Edge Architecture) and `CDN-Cache-Control` (RFC 9213), in
//!   that order, over `Cache-Control`, and removes `Surrogate-Control` from what clients see;
//! - answers `502 Bad Gateway` when the upstream cannot be reached, resets the connection or
//!   sends a malformed or incomplete response that was being stored, and `504 Gateway Timeout`
//!   when it does not answer within `--origin-timeout` (or stalls its body that long);
//! - optionally serves stored responses on those failures (`--stale-on-error SECS`).
//!
//! The `Host` field is rewritten to the upstream's authority, so the upstream sees requests
//! addressed to itself. The cache key still uses the `Host` the client sent. Forwarded requests
//! gain a `Via: 1.1 cache-proxy` entry.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = cache_proxy::Config::from_args(["--upstream", "http://127.0.0.1:8080", "--listen", "127.0.0.1:3000"])?;
//! let listener = tokio::net::TcpListener::bind(config.listen).await?;
//! cache_proxy::serve(listener, &config).await?;
//! # Ok(()) }
//! ```

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use bytes::Bytes;
use cache_layer::{CacheLayer, CacheMode};
use clap::Parser;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body::{Frame, SizeHint};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tower_service::Service;

/// Command-line configuration; every flag can also come from the environment variable shown in
/// `--help`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "cache-proxy",
    version,
    about = "A caching reverse proxy: an RFC 9111 cache in front of one HTTP upstream."
)]
pub struct Config {
    /// Where requests go: an http:// URL with a host (an optional path prefix is kept).
    #[arg(long, env = "CACHE_PROXY_UPSTREAM", value_name = "URL", value_parser = parse_upstream)]
    pub upstream: Uri,
    /// Address to listen on.
    #[arg(long, env = "CACHE_PROXY_LISTEN", value_name = "ADDR")]
    pub listen: SocketAddr,
    /// Private-cache semantics (one user behind the proxy) instead of shared.
    #[arg(long, env = "CACHE_PROXY_PRIVATE")]
    pub private: bool,
    /// Bytes the cache may hold: bodies, fields and bookkeeping.
    #[arg(long, env = "CACHE_PROXY_MAX_BYTES", value_name = "N", default_value_t = 64 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_bytes: u64,
    /// Seconds the upstream has to start its answer, and the longest pause within its body;
    /// past it the client gets 504 (or 502 for a body that was being stored).
    #[arg(long, env = "CACHE_PROXY_ORIGIN_TIMEOUT", value_name = "SECS", default_value_t = 30.0, value_parser = parse_positive_secs)]
    pub origin_timeout: f64,
    /// Serve a stored response up to SECS past its freshness when the upstream fails
    /// (unreachable, reset, timeout, 500, 502, 503, 504) even without stale-if-error, unless
    /// must-revalidate, proxy-revalidate, s-maxage or no-cache forbid it. 0 turns it off.
    #[arg(
        long,
        env = "CACHE_PROXY_STALE_ON_ERROR",
        value_name = "SECS",
        default_value_t = 0
    )]
    pub stale_on_error: u64,
    /// Seconds a request that missed waits for an identical one already on its way to the
    /// upstream before it is answered 504 [default: origin timeout + 5].
    #[arg(long, env = "CACHE_PROXY_COLLAPSE_WAIT", value_name = "SECS", value_parser = parse_positive_secs)]
    pub collapse_wait: Option<f64>,
    /// Send every miss to the upstream, even when an identical one is in flight.
    #[arg(long, env = "CACHE_PROXY_NO_COLLAPSE")]
    pub no_collapse: bool,
    /// Seconds a URL whose collapsed miss was answered with something not storable runs its
    /// misses without waiting for each other (0: never remembered).
    #[arg(
        long,
        env = "CACHE_PROXY_HIT_FOR_MISS",
        value_name = "SECS",
        default_value_t = 30
    )]
    pub hit_for_miss: u64,
    /// Device token this proxy answers to in Surrogate-Control (`max-age=60;TOKEN`)
    /// [default: none: only untargeted directives apply].
    #[arg(long, env = "CACHE_PROXY_SURROGATE_DEVICE", value_name = "TOKEN")]
    pub surrogate_device: Option<String>,
}

fn parse_upstream(v: &str) -> Result<Uri, String> {
    let uri: Uri = v.parse().map_err(|e| format!("{e}"))?;
    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
        return Err("must be an http:// URL with a host".to_owned());
    }
    Ok(uri)
}

fn parse_positive_secs(v: &str) -> Result<f64, String> {
    let secs: f64 = v.trim().parse().map_err(|e| format!("{e}"))?;
    if !(secs.is_finite() && secs > 0.0 && secs <= 1e9) {
        return Err("must be a number of seconds above zero".to_owned());
    }
    Ok(secs)
}

/// Usage text, for callers that print it themselves.
pub const USAGE: &str = "usage: cache-proxy --upstream URL --listen ADDR [OPTIONS] (see --help)";

impl Config {
    /// Parses flags (without the program name). The error is the message clap would print,
    /// or the help text for `--help`.
    pub fn from_args<I, T>(args: I) -> Result<Self, String>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let args = std::iter::once(std::ffi::OsString::from("cache-proxy"))
            .chain(args.into_iter().map(Into::into));
        Self::try_parse_from(args).map_err(|e| e.render().to_string())
    }

    /// How long the upstream has to answer.
    pub fn origin_timeout(&self) -> Duration {
        Duration::try_from_secs_f64(self.origin_timeout).unwrap_or(Duration::from_secs(30))
    }

    /// The cache layer this configuration asks for.
    pub fn cache_layer(&self) -> Result<CacheLayer, cache_layer::ConfigError> {
        let collapse = (!self.no_collapse).then(|| {
            self.collapse_wait
                .and_then(|s| Duration::try_from_secs_f64(s).ok())
                .unwrap_or_else(|| self.origin_timeout() + Duration::from_secs(5))
        });
        CacheLayer::builder()
            .mode(if self.private {
                CacheMode::Private
            } else {
                CacheMode::Shared
            })
            .max_capacity_bytes(self.max_bytes)
            .targeted_cache_controls(["Surrogate-Control", "CDN-Cache-Control"])
            .surrogate_device(self.surrogate_device.as_deref())
            .serve_stale_on_error(Duration::from_secs(self.stale_on_error))
            .collapse_misses(collapse)
            .hit_for_miss(Duration::from_secs(self.hit_for_miss))
            .incomplete_as_bad_gateway(true)
            .build()
    }
}

/// The upstream client as a tower service: never fails, answers 502 when the upstream does
/// not.
#[derive(Clone)]
pub struct Upstream {
    client: Client<HttpConnector, Body>,
    base: Uri,
    timeout: Duration,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// A client for `base` (an `http://` URL) that waits at most `timeout` for an answer to
    /// start and for each part of its body.
    pub fn new(base: Uri, timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout));
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Self {
            client,
            base,
            timeout,
        }
    }

    fn target(&self, uri: &Uri) -> Option<Uri> {
        let prefix = self.base.path().trim_end_matches('/');
        let pq = uri.path_and_query().map_or("/", |p| p.as_str());
        let scheme = self.base.scheme_str().unwrap_or("http");
        let authority = self.base.authority()?.as_str();
        format!("{scheme}://{authority}{prefix}{pq}").parse().ok()
    }
}

/// Removes the fields that describe one connection, not the message (RFC 9110 §7.6.1).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in listed {
        headers.remove(n);
    }
    let fixed: Vec<HeaderName> = headers
        .keys()
        .filter(|n| {
            let s = n.as_str();
            matches!(
                s,
                "connection" | "keep-alive" | "te" | "trailer" | "transfer-encoding" | "upgrade"
            ) || s.starts_with("proxy-")
        })
        .cloned()
        .collect();
    for n in fixed {
        headers.remove(n);
    }
}

fn bad_gateway(detail: &str) -> Response<Body> {
    problem(StatusCode::BAD_GATEWAY, "Bad Gateway", detail)
}

fn problem(status: StatusCode, title: &str, detail: &str) -> Response<Body> {
    let body = format!(
        "{{\"type\":\"about:blank\",\"title\":{},\"status\":{},\"detail\":{}}}",
        json_string(title),
        status.as_u16(),
        json_string(detail)
    );
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The upstream's body, failing when the upstream pauses longer than the timeout between two
/// frames, so a stalled upstream cannot hold a client (or a collapsed miss) forever.
struct IdleTimeout {
    inner: hyper::body::Incoming,
    timeout: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl http_body::Body for IdleTimeout {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                let deadline = tokio::time::Instant::now() + this.timeout;
                this.sleep.as_mut().reset(deadline);
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => match this.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err("upstream body stalled".into()))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        http_body::Body::is_end_stream(&self.inner)
    }

    fn size_hint(&self) -> SizeHint {
        http_body::Body::size_hint(&self.inner)
    }
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl Service<Request<Body>> for Upstream {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The pooled client has no readiness of its own.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let (mut parts, body) = req.into_parts();
        let Some(target) = self.target(&parts.uri) else {
            return Box::pin(async { Ok(bad_gateway("upstream URL could not be built")) });
        };
        strip_hop_by_hop(&mut parts.headers);
        if let Some(a) = target.authority()
            && let Ok(v) = HeaderValue::from_str(a.as_str())
        {
            parts.headers.insert(header::HOST, v);
        }
        // RFC 9110 §7.6.3: a gateway adds itself to Via on requests it forwards.
        let via = match parts.version {
            http::Version::HTTP_10 => "1.0 cache-proxy",
            http::Version::HTTP_2 => "2 cache-proxy",
            _ => "1.1 cache-proxy",
        };
        parts
            .headers
            .append(header::VIA, HeaderValue::from_static(via));
        parts.uri = target;
        parts.version = http::Version::HTTP_11;
        let client = self.client.clone();
        let timeout = self.timeout;
        Box::pin(async move {
            let answer =
                tokio::time::timeout(timeout, client.request(Request::from_parts(parts, body)))
                    .await;
            match answer {
                Ok(Ok(resp)) => {
                    let (mut parts, body) = resp.into_parts();
                    strip_hop_by_hop(&mut parts.headers);
                    let body = IdleTimeout {
                        inner: body,
                        timeout,
                        sleep: Box::pin(tokio::time::sleep(timeout)),
                    };
                    Ok(Response::from_parts(parts, Body::new(body)))
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "upstream request failed");
                    Ok(bad_gateway(
                        "the upstream could not be reached or sent no valid answer",
                    ))
                }
                Err(_) => {
                    tracing::debug!(?timeout, "upstream did not answer in time");
                    Ok(problem(
                        StatusCode::GATEWAY_TIMEOUT,
                        "Gateway Timeout",
                        "the upstream did not answer in time",
                    ))
                }
            }
        })
    }
}

/// The proxy as a router: the cache in front of the upstream client, for every method and path.
pub fn router(config: &Config) -> Result<Router, cache_layer::ConfigError> {
    let cache = config.cache_layer()?;
    let upstream = Upstream::new(config.upstream.clone(), config.origin_timeout());
    let svc = tower_layer::Layer::layer(&cache, upstream);
    Ok(Router::new().fallback_service(svc))
}

/// Serves the proxy on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, config: &Config) -> std::io::Result<()> {
    let app = router(config).map_err(std::io::Error::other)?;
    axum::serve(listener, app).await
}
