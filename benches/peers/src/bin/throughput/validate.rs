//! Before any window, each variant must do what it is measured for: answer 2xx with the expected body,
//! answer from its cache when it has one, pass distinct URLs through dedup, export spans, record metrics.
//! The requests go through a small hyper client; the OTLP sink the span variants export to lives here too.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::routing::post;
use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST};
use http::{HeaderMap, HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::runtime::Runtime;

use crate::serve::body;
use crate::server::ServerProcess;
use crate::variants::{CacheStatus, Urls};
use crate::{Error, Result};

/// Requests sent one after another to each variant before it is measured.
const VALIDATION_REQUESTS: u64 = 5;
/// Concurrent distinct requests sent to the variants with a `DedupLayer`.
const DEDUP_BURST: usize = 32;

/// An in-process OTLP/HTTP collector that accepts span exports and drops them, on its own runtime (on the
/// client's CPU, so the servers' CPU time does not include it).
pub struct OtlpSink {
    pub addr: SocketAddr,
    exports: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
    _runtime: Runtime,
}

impl OtlpSink {
    pub fn start() -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("otlp-sink")
            .enable_all()
            .build()?;
        let exports = Arc::new(AtomicU64::new(0));
        let bytes = Arc::new(AtomicU64::new(0));
        let (counter, received) = (exports.clone(), bytes.clone());
        let app = Router::new().route(
            "/v1/traces",
            post(move |body: Bytes| {
                counter.fetch_add(1, Ordering::Relaxed);
                received.fetch_add(body.len() as u64, Ordering::Relaxed);
                async move { ([(CONTENT_TYPE, "application/x-protobuf")], Bytes::new()) }
            }),
        );
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        runtime.spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("otlp sink stopped: {e}");
            }
        });
        Ok(Self {
            addr,
            exports,
            bytes,
            _runtime: runtime,
        })
    }

    /// Exports and bytes received so far.
    pub fn received(&self) -> (u64, u64) {
        (
            self.exports.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }
}

/// OTLP message sizes of one variant's spans, to tell how many of the measured requests' spans were
/// exported rather than dropped by the SDK's bounded queue (which would make a variant look cheaper).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct SpanSize {
    pub per_span: f64,
    pub per_export: f64,
}

impl SpanSize {
    /// Spans in `bytes` received in `exports` messages.
    pub fn spans(&self, exports: u64, bytes: u64) -> f64 {
        (bytes as f64 - exports as f64 * self.per_export) / self.per_span
    }
}

type Sender = SendRequest<Empty<Bytes>>;

async fn connect(addr: SocketAddr) -> Result<Sender> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// The validation requests' URLs: one fixed URL, or a distinct query string each time. They differ from
/// the load generator's, so validation leaves no cache entry the measurement would use.
struct Requests {
    host: HeaderValue,
    urls: Urls,
    connection: usize,
    sent: u64,
}

impl Requests {
    fn new(addr: SocketAddr, urls: Urls, connection: usize) -> Result<Self> {
        Ok(Self {
            host: HeaderValue::try_from(addr.to_string())?,
            urls,
            connection,
            sent: 0,
        })
    }

    fn next_uri(&mut self) -> Result<Uri> {
        self.sent += 1;
        Ok(match self.urls {
            Urls::Rotating => Uri::from_static("/rooms/validate/messages"),
            Urls::Unique => Uri::try_from(format!(
                "/rooms/validate/messages?req=validate-{}-{}",
                self.connection, self.sent
            ))?,
        })
    }

    fn request(&self, uri: Uri) -> Request<Empty<Bytes>> {
        let mut request = Request::new(Empty::new());
        *request.uri_mut() = uri;
        request.headers_mut().insert(HOST, self.host.clone());
        request
    }
}

/// One response, read to its end.
async fn exchange(
    sender: &mut Sender,
    request: Request<Empty<Bytes>>,
) -> Result<(StatusCode, HeaderMap, Bytes)> {
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok((parts.status, parts.headers, body))
}

fn is_hit(headers: &HeaderMap) -> (bool, String) {
    let status = headers
        .get(cache_layer::CACHE_STATUS)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    (status.split(';').any(|p| p.trim() == "hit"), status)
}

/// Validates one server; for the span-exporting variants, returns the size of their spans.
pub async fn validate(server: &mut ServerProcess, sink: &OtlpSink) -> Result<Option<SpanSize>> {
    let variant = server.variant;
    let name = variant.name();
    let fail = |what: String| -> Error { format!("{name}: {what}").into() };
    let mut sender = connect(server.addr).await?;
    let mut requests = Requests::new(server.addr, variant.urls(), 0)?;
    let calls_before = server.calls()?;
    let mut first = None;
    for i in 0..VALIDATION_REQUESTS {
        let uri = requests.next_uri()?;
        first.get_or_insert_with(|| uri.clone());
        let (status, headers, answer) = exchange(&mut sender, requests.request(uri)).await?;
        if !status.is_success() {
            return Err(fail(format!("answered {status}")));
        }
        if answer != *body() {
            return Err(fail("answered a different body".to_owned()));
        }
        let (hit, cache_status) = is_hit(&headers);
        let expected = match variant.cache_status() {
            Some(CacheStatus::HitAfterFirst) => i > 0,
            Some(CacheStatus::MissStored) => false,
            None => continue,
        };
        if hit != expected {
            return Err(fail(format!(
                "request {i} answered Cache-Status `{cache_status}`"
            )));
        }
    }
    if variant.cache_status() == Some(CacheStatus::MissStored)
        && let Some(uri) = first
    {
        let (_, headers, _) = exchange(&mut sender, requests.request(uri)).await?;
        let (hit, cache_status) = is_hit(&headers);
        if !hit {
            return Err(fail(format!(
                "a miss was not stored: asked again, it answered Cache-Status `{cache_status}`"
            )));
        }
    }
    let reached = server.calls()? - calls_before;
    let expected = if variant.cached() {
        1
    } else {
        VALIDATION_REQUESTS
    };
    if reached != expected {
        return Err(fail(format!(
            "{reached} of {VALIDATION_REQUESTS} requests reached the handler, expected {expected}"
        )));
    }

    if variant.has_dedup() {
        // A concurrent burst of distinct URLs: every request must reach the handler, none coalesce, and
        // the in-flight map must end empty (`check` below).
        let before = server.calls()?;
        let mut tasks = Vec::new();
        for i in 0..DEDUP_BURST {
            let mut sender = connect(server.addr).await?;
            let mut requests = Requests::new(server.addr, Urls::Unique, 1 + i)?;
            let uri = requests.next_uri()?;
            let request = requests.request(uri);
            tasks.push(tokio::spawn(
                async move { exchange(&mut sender, request).await },
            ));
        }
        for task in tasks {
            let (status, _, answer) = task.await??;
            if !status.is_success() || answer != *body() {
                return Err(fail(format!(
                    "a burst request answered {status} with {} body bytes",
                    answer.len()
                )));
            }
        }
        let reached = server.calls()? - before;
        if reached != DEDUP_BURST as u64 {
            return Err(fail(format!(
                "{reached} of {DEDUP_BURST} distinct concurrent requests reached the handler"
            )));
        }
    }

    let mut span_size = None;
    if variant.exports_spans() {
        let (exports, _) = sink.received();
        server.flush()?;
        if sink.received().0 == exports {
            return Err(fail("no span export reached the OTLP sink".to_owned()));
        }
        // Bytes per span and per export, from two exports of 1 and 11 spans.
        let mut sizes = [0u64; 2];
        for (size, spans) in sizes.iter_mut().zip([1, 11]) {
            let (_, before) = sink.received();
            for _ in 0..spans {
                let uri = requests.next_uri()?;
                exchange(&mut sender, requests.request(uri)).await?;
            }
            server.flush()?;
            *size = sink.received().1 - before;
        }
        let per_span = sizes[1].saturating_sub(sizes[0]) as f64 / 10.0;
        if per_span <= 0.0 {
            return Err(fail(format!(
                "exports of 1 and 11 spans took {} and {} bytes",
                sizes[0], sizes[1]
            )));
        }
        span_size = Some(SpanSize {
            per_span,
            per_export: sizes[0] as f64 - per_span,
        });
    }
    server.check()?;
    Ok(span_size)
}
