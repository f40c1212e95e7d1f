//! The layer around an outbound HTTP client (hyper-util's legacy client as a tower service) calling a real flaky
//! server on 127.0.0.1.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use breaker_layer::{BreakerLayer, BreakerState, CircuitBreaker, HostKey, KeyedBreakers};
use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{Layer, Service, ServiceExt};

/// A real HTTP server that answers 500 while `failing` is set.
struct FlakyServer {
    addr: std::net::SocketAddr,
    failing: Arc<AtomicBool>,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl FlakyServer {
    async fn start() -> Self {
        let failing = Arc::new(AtomicBool::new(false));
        let hits = Arc::new(AtomicUsize::new(0));
        let (f, h) = (failing.clone(), hits.clone());
        let app = Router::new().route(
            "/",
            get(move || {
                let (f, h) = (f.clone(), h.clone());
                async move {
                    h.fetch_add(1, Ordering::SeqCst);
                    if f.load(Ordering::SeqCst) {
                        StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        StatusCode::OK
                    }
                }
            }),
        );
        let (addr, task) = test_support::serve(app).await.unwrap();
        Self {
            addr,
            failing,
            hits,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }
}

impl Drop for FlakyServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn request(url: &str) -> Request<Full<Bytes>> {
    Request::get(url).body(Full::new(Bytes::new())).unwrap()
}

/// Sends `GET url` through a clone of `svc`; the call itself must succeed.
async fn call<S>(svc: &S, url: &str) -> S::Response
where
    S: Service<Request<Full<Bytes>>> + Clone,
    S::Error: std::fmt::Debug,
{
    svc.clone().oneshot(request(url)).await.unwrap()
}

#[tokio::test(start_paused = true)]
async fn client_breaker_trips_on_5xx_and_recovers() {
    let server = FlakyServer::start().await;
    let breaker = CircuitBreaker::builder()
        .name("upstream")
        .count_window(4)
        .minimum_calls(4)
        .wait_in_open(Duration::from_secs(5))
        .half_open_probes(1)
        .build()
        .unwrap();
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let svc = BreakerLayer::new(breaker.clone()).layer(client);

    let res = call(&svc, &server.url()).await;
    assert_eq!(res.status(), StatusCode::OK);
    server.failing.store(true, Ordering::SeqCst);
    for _ in 0..2 {
        let res = call(&svc, &server.url()).await;
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!res.into_body().is_local());
    }
    assert_eq!(
        breaker.state(),
        BreakerState::Closed,
        "2 of 3 failed, but the window needs 4 calls"
    );
    let res = call(&svc, &server.url()).await;
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(breaker.state(), BreakerState::Open);

    let hits = server.hits.load(Ordering::SeqCst);
    let res = call(&svc, &server.url()).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()[header::RETRY_AFTER], "5");
    let body = res.into_body();
    assert!(body.is_local());
    let bytes = body.collect().await.unwrap().to_bytes();
    assert!(bytes.starts_with(b"{\"type\""));
    assert_eq!(
        server.hits.load(Ordering::SeqCst),
        hits,
        "the upstream is spared while open"
    );

    server.failing.store(false, Ordering::SeqCst);
    tokio::time::advance(Duration::from_secs(5)).await;
    let res = call(&svc, &server.url()).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(breaker.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn connection_errors_count_as_failures_and_keep_the_error_type() {
    // Bind then drop a listener: nothing listens on that port any more.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let breaker = CircuitBreaker::builder()
        .consecutive_failures(2)
        .build()
        .unwrap();
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let svc = BreakerLayer::new(breaker.clone()).layer(client);
    let url = format!("http://127.0.0.1:{port}/");
    for _ in 0..2 {
        let err: hyper_util::client::legacy::Error =
            svc.clone().oneshot(request(&url)).await.unwrap_err();
        assert!(err.is_connect(), "{err:?}");
    }
    assert_eq!(breaker.state(), BreakerState::Open);
    let res = call(&svc, &url).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test(start_paused = true)]
async fn per_host_breakers_isolate_upstreams() {
    let bad = FlakyServer::start().await;
    let good = FlakyServer::start().await;
    bad.failing.store(true, Ordering::SeqCst);
    let registry = KeyedBreakers::builder(
        CircuitBreaker::builder()
            .name("hosts")
            .consecutive_failures(2),
    )
    .build()
    .unwrap();
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let svc = BreakerLayer::per_key(registry.clone(), HostKey).layer(client);
    // Both listen on 127.0.0.1; key by host name so they get separate breakers.
    let bad_url = format!("http://localhost:{}/", bad.addr.port());
    let good_url = format!("http://127.0.0.1:{}/", good.addr.port());
    for _ in 0..2 {
        assert_eq!(
            call(&svc, &bad_url).await.status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
    assert_eq!(
        call(&svc, &bad_url).await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(call(&svc, &good_url).await.status(), StatusCode::OK);
    assert_eq!(
        registry.get("localhost").unwrap().state(),
        BreakerState::Open
    );
    assert_eq!(
        registry.get("127.0.0.1").unwrap().state(),
        BreakerState::Closed
    );
}
