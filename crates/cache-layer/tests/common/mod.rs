//! Helpers shared by the integration tests: a counting origin and request shortcuts.
#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

/// Counts origin calls.
#[derive(Clone, Default)]
pub struct Counter(pub Arc<AtomicUsize>);

impl Counter {
    pub fn hit(&self) -> usize {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }
    pub fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// Wall-clock Unix seconds that follow tokio's paused clock.
#[derive(Clone, Copy)]
pub struct VirtualClock {
    base: Duration,
    start: tokio::time::Instant,
}

impl VirtualClock {
    pub fn new() -> Self {
        Self {
            base: SystemTime::now().duration_since(UNIX_EPOCH).unwrap(),
            start: tokio::time::Instant::now(),
        }
    }
    pub fn unix(&self) -> u64 {
        (self.base + self.start.elapsed()).as_secs()
    }
    pub fn http_date(&self, offset: i64) -> String {
        cache_layer::date::format_http_date(self.unix().saturating_add_signed(offset))
    }
}

pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn cache_status(&self) -> &str {
        self.header("cache-status").unwrap_or("")
    }
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }
}

pub async fn send(app: &Router, req: Request<Body>) -> Resp {
    let resp = app.clone().oneshot(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Resp {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

pub async fn get(app: &Router, path: &str) -> Resp {
    send(
        app,
        Request::get(path)
            .header("host", "example.com")
            .body(Body::empty())
            .unwrap(),
    )
    .await
}

pub async fn get_with(app: &Router, path: &str, headers: &[(&str, &str)]) -> Resp {
    let mut b = Request::get(path).header("host", "example.com");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(app, b.body(Body::empty()).unwrap()).await
}

pub async fn advance(secs: f64) {
    tokio::time::advance(Duration::from_secs_f64(secs)).await;
}

/// An origin that counts calls and answers with `f(call_number, request)`, behind `layer`.
pub fn origin<F>(layer: cache_layer::CacheLayer, f: F) -> (Router, Counter)
where
    F: Fn(usize, &Request<Body>) -> http::Response<Body> + Clone + Send + Sync + 'static,
{
    let counter = Counter::default();
    let c = counter.clone();
    let app = Router::new()
        .fallback(move |req: Request<Body>| {
            let f = f.clone();
            let c = c.clone();
            async move {
                let n = c.hit();
                f(n, &req)
            }
        })
        .layer(layer);
    (app, counter)
}

/// A response with these headers and body.
pub fn reply(status: u16, headers: &[(&str, &str)], body: &'static str) -> http::Response<Body> {
    let mut b = http::Response::builder().status(status);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Body::from(body)).unwrap()
}

/// A cacheable response whose body says which call produced it.
pub fn numbered(n: usize, headers: &[(&str, &str)]) -> http::Response<Body> {
    let mut b = http::Response::builder().status(200);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Body::from(format!("call {n}"))).unwrap()
}
