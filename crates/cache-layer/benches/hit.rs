//! L1 hit through `CacheLayer` against a bare axum handler returning the same bytes, measured in
//! the same run: in process (`Router::oneshot`) and over HTTP/1.1 on loopback.
//!
//! Besides criterion's report, the run prints the throughput ratio cached / bare for both.
//!
//! The `miss` group measures what collapsing costs a miss: every request is a new URL, with
//! collapsing off and on, for a response that is stored and for one that is not (the latter
//! also records the URL as hit-for-miss).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    missing_docs
)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use bytes::Bytes;
use cache_layer::CacheLayer;
use criterion::{Criterion, criterion_group};
use http::Request;
use http_body_util::BodyExt;
use tower::ServiceExt;

static PAYLOAD: [u8; 1024] = [b'x'; 1024];

fn bare() -> Router {
    Router::new().route(
        "/item",
        get(|| async {
            (
                [
                    ("cache-control", "max-age=3600"),
                    ("content-type", "application/json"),
                ],
                Bytes::from_static(&PAYLOAD),
            )
        }),
    )
}

fn cached() -> Router {
    bare().layer(CacheLayer::new())
}

fn request() -> Request<Body> {
    Request::get("/item")
        .header("host", "bench.local")
        .body(Body::empty())
        .unwrap()
}

async fn once(app: &Router) -> usize {
    let resp = app.clone().oneshot(request()).await.unwrap();
    resp.into_body().collect().await.unwrap().to_bytes().len()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn in_process(c: &mut Criterion) {
    let rt = runtime();
    let bare_app = bare();
    let cached_app = cached();
    rt.block_on(once(&cached_app));
    let mut g = c.benchmark_group("in_process");
    g.bench_function("bare_axum", |b| b.to_async(&rt).iter(|| once(&bare_app)));
    g.bench_function("l1_hit", |b| b.to_async(&rt).iter(|| once(&cached_app)));
    g.finish();
}

fn miss_app(cache: CacheLayer, cache_control: &'static str) -> Router {
    Router::new()
        .fallback(move || async move {
            (
                [
                    ("cache-control", cache_control),
                    ("content-type", "application/json"),
                ],
                Bytes::from_static(&PAYLOAD),
            )
        })
        .layer(cache)
}

static NEXT_URL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

async fn miss_once(app: &Router) -> usize {
    let n = NEXT_URL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let req = Request::get(format!("/item/{n}"))
        .header("host", "bench.local")
        .body(Body::empty())
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    resp.into_body().collect().await.unwrap().to_bytes().len()
}

fn misses(c: &mut Criterion) {
    let rt = runtime();
    let collapsing = || {
        CacheLayer::builder()
            .collapse_misses(Some(Duration::from_secs(30)))
            .build()
            .unwrap()
    };
    let mut g = c.benchmark_group("miss");
    for (name, app) in [
        ("stored", miss_app(CacheLayer::new(), "max-age=3600")),
        ("stored_collapsing", miss_app(collapsing(), "max-age=3600")),
        ("not_stored", miss_app(CacheLayer::new(), "no-store")),
        ("not_stored_collapsing", miss_app(collapsing(), "no-store")),
    ] {
        g.bench_function(name, |b| b.to_async(&rt).iter(|| miss_once(&app)));
    }
    g.finish();
}

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

type Client =
    hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Body>;

fn client() -> Client {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

async fn over_tcp(client: &Client, addr: SocketAddr) -> usize {
    let req = Request::get(format!("http://{addr}/item"))
        .body(Body::empty())
        .unwrap();
    let resp = client.request(req).await.unwrap();
    resp.into_body().collect().await.unwrap().to_bytes().len()
}

fn loopback(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (bare_addr, cached_addr) =
        rt.block_on(async { (serve(bare()).await, serve(cached()).await) });
    let client = client();
    rt.block_on(over_tcp(&client, cached_addr));
    let mut g = c.benchmark_group("loopback_http1");
    g.bench_function("bare_axum", |b| {
        b.to_async(&rt).iter(|| over_tcp(&client, bare_addr))
    });
    g.bench_function("l1_hit", |b| {
        b.to_async(&rt).iter(|| over_tcp(&client, cached_addr))
    });
    g.finish();
}

/// Requests per second for `f`, best of several interleaved rounds.
fn ratio_report() {
    let rt = runtime();
    let bare_app = bare();
    let cached_app = cached();
    rt.block_on(once(&cached_app));
    let n = 100_000;
    let round = |app: &Router| {
        let start = Instant::now();
        rt.block_on(async {
            for _ in 0..n {
                std::hint::black_box(once(app).await);
            }
        });
        n as f64 / start.elapsed().as_secs_f64()
    };
    let (mut best_bare, mut best_cached) = (0f64, 0f64);
    for _ in 0..5 {
        best_bare = best_bare.max(round(&bare_app));
        best_cached = best_cached.max(round(&cached_app));
    }
    println!(
        "in-process throughput: bare axum {best_bare:.0} req/s, L1 hit {best_cached:.0} req/s, ratio {:.3}",
        best_cached / best_bare
    );

    let mt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (bare_addr, cached_addr) =
        mt.block_on(async { (serve(bare()).await, serve(cached()).await) });
    let client = client();
    let n = 20_000;
    let concurrency = 16;
    let tcp_round = |addr: SocketAddr| {
        let start = Instant::now();
        mt.block_on(async {
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..concurrency {
                let client = client.clone();
                set.spawn(async move {
                    for _ in 0..n / concurrency {
                        std::hint::black_box(over_tcp(&client, addr).await);
                    }
                });
            }
            while set.join_next().await.is_some() {}
        });
        n as f64 / start.elapsed().as_secs_f64()
    };
    let (mut best_bare, mut best_cached) = (0f64, 0f64);
    for _ in 0..3 {
        best_bare = best_bare.max(tcp_round(bare_addr));
        best_cached = best_cached.max(tcp_round(cached_addr));
    }
    println!(
        "loopback HTTP/1.1 throughput ({concurrency} concurrent): bare axum {best_bare:.0} req/s, L1 hit {best_cached:.0} req/s, ratio {:.3}",
        best_cached / best_bare
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1));
    targets = in_process, misses, loopback
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    ratio_report();
}
