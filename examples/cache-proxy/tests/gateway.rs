//! cache-proxy as a gateway, over real TCP on 127.0.0.1 against real local origins: collapsed
//! misses under 300 concurrent requests, origins that misbehave during a collapsed miss,
//! Surrogate-Control, 304 updates and stale content on origin failure.
//!
//! The clock is real (timers and sockets both matter here), so every delay is short.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::routing::get;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// How long the slow origin takes to answer.
const ORIGIN_DELAY: Duration = Duration::from_millis(300);
const BURST: usize = 300;

async fn spawn_proxy(upstream: SocketAddr, extra: &[&str]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut args = vec![
        "--upstream".to_owned(),
        format!("http://{upstream}"),
        "--listen".to_owned(),
        addr.to_string(),
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let config = cache_proxy::Config::from_args(args).unwrap();
    tokio::spawn(async move { cache_proxy::serve(listener, &config).await });
    addr
}

#[derive(Debug)]
struct Got {
    status: StatusCode,
    headers: HeaderMap,
    /// `None` when the body broke off.
    body: Option<Bytes>,
}

impl Got {
    fn text(&self) -> &str {
        self.body
            .as_deref()
            .map_or("<broken>", |b| std::str::from_utf8(b).unwrap_or("<binary>"))
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    fn cache_status(&self) -> &str {
        self.header("cache-status").unwrap_or("")
    }
}

fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn fetch(addr: SocketAddr, path: &str, headers: &[(&str, String)]) -> Got {
    fetch_with(&client(), addr, path, headers).await
}

async fn fetch_with(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, String)],
) -> Got {
    let mut b = Request::get(format!("http://{addr}{path}"));
    for (k, v) in headers {
        b = b.header(*k, v);
    }
    let resp = client
        .request(b.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    Got {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.ok().map(|c| c.to_bytes()),
    }
}

/// `n` concurrent GETs of `path`, each on its own connection; `headers(i)` for request `i`.
async fn burst(
    addr: SocketAddr,
    path: &'static str,
    n: usize,
    headers: impl Fn(usize) -> Vec<(&'static str, String)>,
) -> (Vec<Got>, Duration) {
    let started = Instant::now();
    let client = client();
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let client = client.clone();
            let h = headers(i);
            tokio::spawn(async move { fetch_with(&client, addr, path, &h).await })
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(
            tokio::time::timeout(Duration::from_secs(20), t)
                .await
                .expect("no request hangs")
                .unwrap(),
        );
    }
    (out, started.elapsed())
}

fn none(_: usize) -> Vec<(&'static str, String)> {
    Vec::new()
}

/// An origin that takes [`ORIGIN_DELAY`] for every answer and counts its calls per path.
async fn slow_origin() -> (SocketAddr, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let route = |cc: &'static str, calls: Arc<AtomicUsize>| {
        get(move |headers: HeaderMap| {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                tokio::time::sleep(ORIGIN_DELAY).await;
                let who = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("anonymous")
                    .to_owned();
                ([("cache-control", cc)], format!("call {n} for {who}"))
            }
        })
    };
    let app = Router::new()
        .route("/cacheable", route("max-age=60", calls.clone()))
        .route("/private", route("private, max-age=60", calls.clone()))
        .route("/uncacheable", route("no-store", calls.clone()))
        .route("/personal", route("max-age=60", calls.clone()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_on_a_cold_cacheable_url_reaches_the_origin_once() {
    let (origin, calls) = slow_origin().await;
    let proxy = spawn_proxy(origin, &[]).await;
    let (all, elapsed) = burst(proxy, "/cacheable", BURST, none).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(
        all.iter()
            .all(|g| g.status == 200 && g.text() == "call 1 for anonymous")
    );
    let stored = all
        .iter()
        .filter(|g| {
            g.cache_status()
                .contains("fwd=uri-miss; fwd-status=200; stored")
        })
        .count();
    let hits = all
        .iter()
        .filter(|g| g.cache_status().contains("; hit"))
        .count();
    assert_eq!((stored, hits), (1, BURST - 1));
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_on_a_private_url_is_not_shared_nor_serialised() {
    let (origin, calls) = slow_origin().await;
    let proxy = spawn_proxy(origin, &[]).await;
    let (all, elapsed) = burst(proxy, "/private", BURST, none).await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        BURST,
        "every caller its own answer"
    );
    let mut bodies: Vec<&str> = all.iter().map(Got::text).collect();
    bodies.sort_unstable();
    bodies.dedup();
    assert_eq!(bodies.len(), BURST, "no answer given to two callers");
    assert!(
        all.iter()
            .all(|g| g.status == 200 && g.cache_status().contains("detail=private"))
    );
    // One origin round for the leader, one for the released waiters; serialised callers
    // would take 300 rounds (90 s).
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    // Hit-for-miss: the next burst runs without waiting for a leader.
    let (again, _) = burst(proxy, "/private", 50, none).await;
    assert_eq!(calls.load(Ordering::SeqCst), BURST + 50);
    assert!(again.iter().all(|g| g.status == 200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_on_an_uncacheable_url_is_not_shared_nor_serialised() {
    let (origin, calls) = slow_origin().await;
    let proxy = spawn_proxy(origin, &[]).await;
    let (all, elapsed) = burst(proxy, "/uncacheable", BURST, none).await;
    assert_eq!(calls.load(Ordering::SeqCst), BURST);
    assert!(
        all.iter()
            .all(|g| g.status == 200 && g.cache_status().contains("detail=no-store"))
    );
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_never_receive_another_clients_answer() {
    let (origin, calls) = slow_origin().await;
    let proxy = spawn_proxy(origin, &[]).await;
    // max-age without public: a shared cache does not store answers to Authorization.
    let (all, _) = burst(proxy, "/personal", BURST, |i| {
        vec![("authorization", format!("Bearer user-{i}"))]
    })
    .await;
    assert_eq!(calls.load(Ordering::SeqCst), BURST);
    for (i, g) in all.iter().enumerate() {
        assert_eq!(g.status, 200);
        assert!(
            g.text().ends_with(&format!("for Bearer user-{i}")),
            "request {i} got {}",
            g.text()
        );
    }
}

// ---- origins that misbehave during a collapsed miss ----

/// What a raw origin does with each request it reads.
#[derive(Clone)]
enum Behaviour {
    /// Writes these bytes, then closes.
    Send(&'static [u8]),
    /// Writes these bytes, then keeps the connection open without a word more.
    SendThenStall(&'static [u8]),
    /// Resets the connection (RST) instead of answering.
    Reset,
    /// Reads the request and never answers.
    Hang,
}

/// A TCP origin that reads one request per connection, waits a little (so the burst collapses
/// onto the first) and then behaves as told.
async fn raw_origin(behaviour: Behaviour) -> (SocketAddr, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let c = calls.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let behaviour = behaviour.clone();
            let c = c.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                c.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
                match behaviour {
                    Behaviour::Send(bytes) => {
                        let _ = conn.write_all(bytes).await;
                        let _ = conn.shutdown().await;
                    }
                    Behaviour::SendThenStall(bytes) => {
                        let _ = conn.write_all(bytes).await;
                        tokio::time::sleep(Duration::from_secs(60)).await;
                    }
                    Behaviour::Reset => {
                        let _ = conn.set_zero_linger();
                        drop(conn);
                    }
                    Behaviour::Hang => tokio::time::sleep(Duration::from_secs(60)).await,
                }
            });
        }
    });
    (addr, calls)
}

/// Every caller of a collapsed burst against `behaviour` gets `502` or `504` with an intact
/// body, and nothing is stored: a later request reaches the origin again. (Which of the two a
/// caller gets depends on timing: 300 connections at once on two shared cores can push a
/// connect or a first byte past the 0.3 s origin timeout.)
async fn misbehaving(behaviour: Behaviour) {
    let statuses = [502, 504];
    let (origin, calls) = raw_origin(behaviour).await;
    let proxy = spawn_proxy(origin, &["--origin-timeout", "0.3", "--collapse-wait", "5"]).await;
    let (all, elapsed) = burst(proxy, "/x", BURST, none).await;
    for g in &all {
        assert!(
            statuses.contains(&g.status.as_u16()),
            "{} {:?}",
            g.status,
            g.headers
        );
        assert!(g.body.is_some(), "intact message: {:?}", g.headers);
    }
    // Bounded: the leader's timeout, then the released waiters' own.
    assert!(elapsed < Duration::from_secs(8), "{elapsed:?}");
    let before = calls.load(Ordering::SeqCst);
    assert!(before >= 1);
    let _ = tokio::time::timeout(Duration::from_secs(5), fetch(proxy, "/x", &[]))
        .await
        .expect("no hang");
    assert_eq!(calls.load(Ordering::SeqCst), before + 1, "nothing stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_that_resets() {
    misbehaving(Behaviour::Reset).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_that_closes_without_answering() {
    misbehaving(Behaviour::Send(b"")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_that_half_sends_a_body() {
    misbehaving(Behaviour::Send(
        b"HTTP/1.1 200 OK\r\ncache-control: max-age=60\r\ncontent-length: 100\r\n\r\nonly half",
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_that_half_sends_a_chunked_body() {
    misbehaving(
        Behaviour::Send(
            b"HTTP/1.1 200 OK\r\ncache-control: max-age=60\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
        ),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_with_an_invalid_content_length() {
    for bytes in [
        &b"HTTP/1.1 200 OK\r\ncache-control: max-age=60\r\ncontent-length: abc\r\n\r\nhello"[..],
        &b"HTTP/1.1 200 OK\r\ncache-control: max-age=60\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!"[..],
    ] {
        misbehaving(Behaviour::Send(bytes)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_that_never_answers() {
    misbehaving(Behaviour::Hang).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_that_stalls_its_body() {
    misbehaving(Behaviour::SendThenStall(
        b"HTTP/1.1 200 OK\r\ncache-control: max-age=60\r\ncontent-length: 100\r\n\r\nsome",
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_content_length_shorter_than_the_body_frames_the_message() {
    // HTTP/1.1 framing ends the message at Content-Length; the extra bytes are never part of
    // any answer, so the stored message and every copy agree with their own length.
    let (origin, calls) = raw_origin(Behaviour::Send(
        b"HTTP/1.1 200 OK\r\ncache-control: max-age=60\r\ncontent-length: 5\r\n\r\nhelloEXTRA BYTES",
    ))
    .await;
    let proxy = spawn_proxy(origin, &["--origin-timeout", "0.3"]).await;
    let (all, _) = burst(proxy, "/x", BURST, none).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    for g in &all {
        assert_eq!((g.status.as_u16(), g.text()), (200, "hello"));
        assert_eq!(g.header("content-length"), Some("5"));
    }
}

// ---- Surrogate-Control ----

async fn header_origin(
    headers: &'static [(&'static str, &'static str)],
) -> (SocketAddr, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let app = Router::new().fallback(move || {
        let n = c.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            let mut h = HeaderMap::new();
            for (k, v) in headers {
                h.append(*k, v.parse().unwrap());
            }
            (h, format!("call {n}"))
        }
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, calls)
}

#[tokio::test]
async fn surrogate_control_is_obeyed_and_removed() {
    let (origin, calls) = header_origin(&[
        ("cache-control", "no-store"),
        ("surrogate-control", "max-age=60"),
    ])
    .await;
    let proxy = spawn_proxy(origin, &[]).await;
    let a = fetch(proxy, "/", &[]).await;
    assert!(
        a.cache_status().contains("stored; ttl=60"),
        "{}",
        a.cache_status()
    );
    let b = fetch(proxy, "/", &[]).await;
    assert_eq!(b.text(), "call 1");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    for g in [&a, &b] {
        assert_eq!(g.header("surrogate-control"), None);
        assert_eq!(
            g.header("cache-control"),
            Some("no-store"),
            "clients keep theirs"
        );
    }
}

#[tokio::test]
async fn surrogate_control_targets_the_configured_device() {
    let (origin, calls) = header_origin(&[
        ("cache-control", "no-store"),
        ("surrogate-control", "max-age=60;edge, no-store;other"),
    ])
    .await;
    let edge = spawn_proxy(origin, &["--surrogate-device", "edge"]).await;
    fetch(edge, "/", &[]).await;
    assert!(fetch(edge, "/", &[]).await.cache_status().contains("hit"));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let other = spawn_proxy(origin, &["--surrogate-device", "other"]).await;
    let g = fetch(other, "/", &[]).await;
    assert!(
        g.cache_status().contains("detail=no-store"),
        "{}",
        g.cache_status()
    );
    let anonymous = spawn_proxy(origin, &[]).await;
    let g = fetch(anonymous, "/", &[]).await;
    assert!(
        g.cache_status().contains("detail=no-store"),
        "no directive for this proxy: Cache-Control applies: {}",
        g.cache_status()
    );
}

#[tokio::test]
async fn surrogate_control_before_cdn_cache_control() {
    let (origin, calls) = header_origin(&[
        ("cache-control", "max-age=5"),
        ("cdn-cache-control", "no-store"),
        ("surrogate-control", "max-age=60"),
    ])
    .await;
    let proxy = spawn_proxy(origin, &[]).await;
    let g = fetch(proxy, "/", &[]).await;
    assert!(g.cache_status().contains("ttl=60"), "{}", g.cache_status());
    assert_eq!(g.header("cdn-cache-control"), Some("no-store"), "passed on");
    fetch(proxy, "/", &[]).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

// ---- 304 updates ----

#[tokio::test]
async fn a_304_updates_fields_but_never_the_description_of_the_body() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let app = Router::new().fallback(move |headers: HeaderMap| {
        let n = c.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            if n == 1 {
                return http::Response::builder()
                    .header("cache-control", "max-age=60")
                    .header("etag", "\"v1\"")
                    .header("content-type", "text/plain; charset=utf-8")
                    .header("content-encoding", "gzip")
                    .header("content-md5", "Q2hlY2sgSW50ZWdyaXR5IQ==")
                    .header("x-version", "1")
                    .body(axum::body::Body::from("stored bytes"))
                    .unwrap();
            }
            assert_eq!(headers["if-none-match"], "\"v1\"");
            http::Response::builder()
                .status(304)
                .header("cache-control", "max-age=120")
                .header("etag", "\"v1\"")
                .header("content-type", "application/json")
                .header("content-encoding", "br")
                .header("content-range", "bytes 0-1/2")
                .header("content-md5", "AAAAAAAAAAAAAAAAAAAAAA==")
                .header("x-version", "2")
                .body(axum::body::Body::empty())
                .unwrap()
        }
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let proxy = spawn_proxy(origin, &[]).await;
    fetch(proxy, "/", &[]).await;
    // The client asks for a validated answer: the proxy revalidates with its ETag.
    let g = fetch(proxy, "/", &[("cache-control", "max-age=0".to_owned())]).await;
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert!(
        g.cache_status()
            .contains("fwd=request; fwd-status=304; stored; ttl=120"),
        "{}",
        g.cache_status()
    );
    assert_eq!(g.text(), "stored bytes");
    assert_eq!(g.header("content-length"), Some("12"));
    assert_eq!(g.header("content-type"), Some("text/plain; charset=utf-8"));
    assert_eq!(g.header("content-encoding"), Some("gzip"));
    assert_eq!(g.header("content-md5"), Some("Q2hlY2sgSW50ZWdyaXR5IQ=="));
    assert_eq!(g.header("content-range"), None);
    assert_eq!(g.header("x-version"), Some("2"), "other fields are taken");
    assert_eq!(g.header("cache-control"), Some("max-age=120"));
    // And the stored response keeps the merged fields.
    let h = fetch(proxy, "/", &[]).await;
    assert_eq!(
        (h.header("x-version"), h.header("content-encoding")),
        (Some("2"), Some("gzip"))
    );
}

// ---- stale on origin failure ----

#[tokio::test]
async fn stale_on_error_covers_each_kind_of_origin_failure() {
    // One origin whose behaviour changes between requests: first a storable answer that is
    // stale at once (it has a validator), then each kind of failure.
    let step = Arc::new(AtomicUsize::new(0));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = listener.local_addr().unwrap();
    let s = step.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let n = s.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let _ = conn.read(&mut buf).await;
                let reply: &[u8] = match n {
                    0 => b"HTTP/1.1 200 OK\r\ncache-control: max-age=0\r\netag: \"a\"\r\ncontent-length: 4\r\nconnection: close\r\n\r\ngood",
                    1 => b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    2 => b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    3 => b"",
                    4 => {
                        let _ = conn.set_zero_linger();
                        return;
                    }
                    5 => b"HTTP/1.1 200 OK\r\ncache-control: max-age=60\r\ncontent-length: 10\r\nconnection: close\r\n\r\nhal",
                    _ => {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        return;
                    }
                };
                let _ = conn.write_all(reply).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    let proxy = spawn_proxy(
        origin,
        &["--stale-on-error", "600", "--origin-timeout", "0.3"],
    )
    .await;
    assert_eq!(fetch(proxy, "/", &[]).await.text(), "good");
    for (what, fwd) in [
        ("503", "fwd-status=503"),
        ("500", "fwd-status=500"),
        ("closed", "fwd-status=502"),
        ("reset", "fwd-status=502"),
        ("half a body", "fwd-status=200"),
        ("no answer", "fwd-status=504"),
    ] {
        let g = fetch(proxy, "/", &[]).await;
        assert_eq!((g.status.as_u16(), g.text()), (200, "good"), "{what}");
        let cs = g.cache_status();
        assert!(cs.contains("fwd=stale") && cs.contains(fwd), "{what}: {cs}");
        assert!(cs.contains("detail=stale-on-error"), "{what}: {cs}");
    }
}

#[tokio::test]
async fn stale_on_error_yields_to_must_revalidate() {
    let step = Arc::new(AtomicUsize::new(0));
    let s = step.clone();
    let app = Router::new().fallback(move || {
        let n = s.fetch_add(1, Ordering::SeqCst);
        async move {
            if n == 0 {
                http::Response::builder()
                    .header("cache-control", "max-age=0, must-revalidate")
                    .header("etag", "\"a\"")
                    .body(axum::body::Body::from("good"))
                    .unwrap()
            } else {
                http::Response::builder()
                    .status(503)
                    .body(axum::body::Body::from("down"))
                    .unwrap()
            }
        }
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let proxy = spawn_proxy(origin, &["--stale-on-error", "600"]).await;
    fetch(proxy, "/", &[]).await;
    let g = fetch(proxy, "/", &[]).await;
    assert_eq!((g.status.as_u16(), g.text()), (503, "down"));
}
