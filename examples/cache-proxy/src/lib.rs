//! A caching reverse proxy: [`cache_layer::CacheLayer`] in front of an HTTP/1 client.
//!
//! Requests are forwarded to the upstream with their method, path, query, headers (less the
//! hop-by-hop ones) and body; responses come back the same way. What the cache may store it
//! stores, and it answers from its store when RFC 9111 allows. Each response carries a
//! `Cache-Status` field saying what the cache did; nothing else is added.
//!
//! The `Host` field is rewritten to the upstream's authority, so the upstream sees requests
//! addressed to itself. The cache key still uses the `Host` the client sent. Forwarded requests
//! gain a `Via: 1.1 cache-proxy` entry; responses are not changed.
//!
//! An unreachable upstream gets `502 Bad Gateway` as `application/problem+json`.
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

use axum::Router;
use axum::body::Body;
use cache_layer::{CacheLayer, CacheMode};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tower_service::Service;

/// Command-line configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where requests go, e.g. `http://127.0.0.1:8080` (an optional path prefix is kept).
    pub upstream: Uri,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Private-cache semantics instead of shared (`--private`).
    pub private: bool,
    /// Bytes the cache may hold (`--max-bytes`); the cache's default when absent.
    pub max_bytes: Option<u64>,
}

/// Usage text printed on bad arguments.
pub const USAGE: &str =
    "usage: cache-proxy --upstream URL --listen ADDR [--private] [--max-bytes N]";

impl Config {
    /// Parses flags (without the program name).
    pub fn from_args<I, T>(args: I) -> Result<Self, String>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<str>,
    {
        let mut upstream = None;
        let mut listen = None;
        let mut private = false;
        let mut max_bytes = None;
        let mut it = args.into_iter();
        while let Some(arg) = it.next() {
            let arg = arg.as_ref();
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f, Some(v.to_owned())),
                _ => (arg, None),
            };
            let mut value = |name: &str| -> Result<String, String> {
                match inline.clone() {
                    Some(v) => Ok(v),
                    None => it
                        .next()
                        .map(|v| v.as_ref().to_owned())
                        .ok_or_else(|| format!("{name} needs a value")),
                }
            };
            match flag {
                "--upstream" => {
                    let v = value("--upstream")?;
                    let uri: Uri = v.parse().map_err(|e| format!("--upstream {v:?}: {e}"))?;
                    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
                        return Err(format!(
                            "--upstream {v:?}: must be an http:// URL with a host"
                        ));
                    }
                    upstream = Some(uri);
                }
                "--listen" => {
                    let v = value("--listen")?;
                    listen = Some(v.parse().map_err(|e| format!("--listen {v:?}: {e}"))?);
                }
                "--private" => private = true,
                "--max-bytes" => {
                    let v = value("--max-bytes")?;
                    let n: u64 = v.parse().map_err(|e| format!("--max-bytes {v:?}: {e}"))?;
                    if n == 0 {
                        return Err("--max-bytes must be above zero".to_owned());
                    }
                    max_bytes = Some(n);
                }
                "-h" | "--help" => return Err(USAGE.to_owned()),
                other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
            }
        }
        Ok(Self {
            upstream: upstream.ok_or_else(|| format!("--upstream is required\n{USAGE}"))?,
            listen: listen.ok_or_else(|| format!("--listen is required\n{USAGE}"))?,
            private,
            max_bytes,
        })
    }

    /// The cache layer this configuration asks for.
    pub fn cache_layer(&self) -> Result<CacheLayer, cache_layer::ConfigError> {
        let mut b = CacheLayer::builder().mode(if self.private {
            CacheMode::Private
        } else {
            CacheMode::Shared
        });
        if let Some(n) = self.max_bytes {
            b = b.max_capacity_bytes(n);
        }
        b.build()
    }
}

/// The upstream client as a tower service: never fails, answers 502 when the upstream does
/// not.
#[derive(Clone)]
pub struct Upstream {
    client: Client<HttpConnector, Body>,
    base: Uri,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// A client for `base` (an `http://` URL).
    pub fn new(base: Uri) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Self { client, base }
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
    let body = format!(
        "{{\"type\":\"about:blank\",\"title\":\"Bad Gateway\",\"status\":502,\"detail\":{}}}",
        json_string(detail)
    );
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = StatusCode::BAD_GATEWAY;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
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
        Box::pin(async move {
            match client.request(Request::from_parts(parts, body)).await {
                Ok(resp) => {
                    let (mut parts, body) = resp.into_parts();
                    strip_hop_by_hop(&mut parts.headers);
                    Ok(Response::from_parts(parts, Body::new(body)))
                }
                Err(e) => {
                    tracing::debug!(error = %e, "upstream request failed");
                    Ok(bad_gateway("upstream unreachable"))
                }
            }
        })
    }
}

/// The proxy as a router: the cache in front of the upstream client, for every method and path.
pub fn router(config: &Config) -> Result<Router, cache_layer::ConfigError> {
    let cache = config.cache_layer()?;
    let svc = tower_layer::Layer::layer(&cache, Upstream::new(config.upstream.clone()));
    Ok(Router::new().fallback_service(svc))
}

/// Serves the proxy on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, config: &Config) -> std::io::Result<()> {
    let app = router(config).map_err(std::io::Error::other)?;
    axum::serve(listener, app).await
}
