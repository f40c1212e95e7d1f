//! Throughput of `DedupLayer` against bare axum over real loopback TCP, and handler calls per identical burst.
//!
//! Run with `cargo bench -p dedup-layer --bench dedup`. Besides criterion's figures it prints the
//! dedup/bare throughput ratio measured in the same run and the handler calls per burst.
#![allow(
    missing_docs,
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dedup_layer::{DedupHandle, DedupLayer};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::runtime::Runtime;
use tokio::sync::Semaphore;

const CONCURRENCY: usize = 64;
const BURST: usize = 100;

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn app() -> Router {
    Router::new().route(
        "/r",
        get(|| async { "a small answer of a few dozen bytes...." }),
    )
}

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(CONCURRENCY)
        .build_http()
}

/// `CONCURRENCY` concurrent GETs with distinct query strings (nothing to coalesce).
async fn unique_round(client: &HttpClient, addr: SocketAddr, counter: &AtomicUsize) {
    let mut tasks = Vec::with_capacity(CONCURRENCY);
    for _ in 0..CONCURRENCY {
        let n = counter.fetch_add(1, Ordering::Relaxed);
        let uri: http::Uri = format!("http://{addr}/r?n={n}").parse().unwrap();
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let response = client.get(uri).await.unwrap();
            assert!(response.status().is_success());
            response.into_body().collect().await.unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

fn unique_keys(c: &mut Criterion) {
    let rt = runtime();
    let (bare, dedup) = rt.block_on(async {
        (
            serve(app()).await,
            serve(app().layer(DedupLayer::new())).await,
        )
    });
    let client = rt.block_on(async { client() });
    let counter = AtomicUsize::new(0);

    let mut group = c.benchmark_group("unique_keys");
    group.throughput(Throughput::Elements(CONCURRENCY as u64));
    group.measurement_time(Duration::from_secs(5));
    group.sample_size(30);
    group.bench_function("bare_axum", |b| {
        b.to_async(&rt)
            .iter(|| unique_round(&client, bare, &counter))
    });
    group.bench_function("dedup_layer", |b| {
        b.to_async(&rt)
            .iter(|| unique_round(&client, dedup, &counter))
    });
    group.finish();

    // Ratio in the same run: alternate the two servers and keep each one's best of several trials.
    let rounds = 300;
    let mut best = [Duration::MAX; 2];
    for _ in 0..6 {
        for (i, addr) in [bare, dedup].into_iter().enumerate() {
            let start = Instant::now();
            rt.block_on(async {
                for _ in 0..rounds {
                    unique_round(&client, addr, &counter).await;
                }
            });
            best[i] = best[i].min(start.elapsed());
        }
    }
    let per_sec = |d: Duration| (rounds * CONCURRENCY) as f64 / d.as_secs_f64();
    println!(
        "unique keys over TCP: bare {:.0} req/s, dedup {:.0} req/s, ratio {:.3}",
        per_sec(best[0]),
        per_sec(best[1]),
        per_sec(best[1]) / per_sec(best[0])
    );
}

fn burst_app(layer: &DedupLayer, calls: &Arc<AtomicUsize>, gate: &Arc<Semaphore>) -> Router {
    let calls = calls.clone();
    let gate = gate.clone();
    Router::new()
        .route(
            "/r",
            get(move || {
                let calls = calls.clone();
                let gate = gate.clone();
                async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    gate.acquire().await.unwrap().forget();
                    "burst answer"
                }
            }),
        )
        .layer(layer.clone())
}

/// `BURST` identical GETs; the handler is held until all of them have joined, then released.
async fn burst_round(
    client: &HttpClient,
    addr: SocketAddr,
    handle: &DedupHandle,
    gate: &Semaphore,
) {
    let uri: http::Uri = format!("http://{addr}/r").parse().unwrap();
    let tasks: Vec<_> = (0..BURST)
        .map(|_| {
            let client = client.clone();
            let uri = uri.clone();
            tokio::spawn(async move {
                let response = client.get(uri).await.unwrap();
                response.into_body().collect().await.unwrap().to_bytes()
            })
        })
        .collect();
    while handle.waiters() < BURST - 1 {
        tokio::task::yield_now().await;
    }
    gate.add_permits(1);
    for task in tasks {
        assert_eq!(&task.await.unwrap()[..], b"burst answer");
    }
}

fn identical_bursts(c: &mut Criterion) {
    let rt = runtime();
    let layer = DedupLayer::new();
    let handle = layer.handle();
    let calls = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(0));
    let addr = rt.block_on(serve(burst_app(&layer, &calls, &gate)));
    let client = rt.block_on(async { client() });

    let bursts = AtomicUsize::new(0);
    let mut group = c.benchmark_group("identical_burst");
    group.throughput(Throughput::Elements(BURST as u64));
    group.sample_size(20);
    group.bench_function("100_identical_gets", |b| {
        b.to_async(&rt).iter(|| async {
            bursts.fetch_add(1, Ordering::Relaxed);
            burst_round(&client, addr, &handle, &gate).await;
        })
    });
    group.finish();

    let bursts = bursts.load(Ordering::Relaxed);
    let calls = calls.load(Ordering::SeqCst);
    println!(
        "identical bursts: {bursts} bursts of {BURST}, {calls} handler calls, {:.3} calls per burst",
        calls as f64 / bursts as f64
    );
    assert_eq!(
        calls, bursts,
        "each burst must reach the handler exactly once"
    );
    assert_eq!(handle.inflight(), 0);
}

criterion_group!(benches, unique_keys, identical_bursts);
criterion_main!(benches);
