//! Cost of `DedupLayer` against bare axum, measured in-process, and handler calls per identical burst.
//!
//! Run with `cargo bench -p dedup-layer --bench dedup`. The `Router` is driven through `tower::ServiceExt`
//! on a current-thread runtime (no TCP, no scheduler noise), so the figures are the layer's own cost:
//!
//! - `unique_keys/{bare_axum,noop_layer,dedup_layer}`: sequential GETs with distinct query strings (nothing to
//!   coalesce); `noop_layer` is the floor any `Router::layer` costs.
//! - `unique_keys_concurrent/…`: the same with 64 requests in flight at once on the one thread.
//! - `unique_keys_tcp/…`: end to end over loopback TCP, for scale (noisier: the kernel and the client dominate).
//! - `identical_burst`: 100 identical GETs held in the handler until all have joined; asserts one call per burst.
//!
//! After criterion's figures it prints the dedup/bare throughput ratio from interleaved trials in the same run.
//! For instruction counts (stable on a shared machine) see `benches/request_cost.rs`.
#![allow(
    missing_docs,
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dedup_layer::{DedupHandle, DedupLayer};
use http::{Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::runtime::Runtime;
use tokio::sync::Semaphore;
use tower::ServiceExt;

const BATCH: usize = 64;
const BURST: usize = 100;
const DISTINCT_URIS: usize = 4096;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn app() -> Router {
    Router::new().route(
        "/r",
        get(|| async { "a small answer of a few dozen bytes...." }),
    )
}

/// Pre-parsed distinct URIs, so both variants pay the same (tiny) cost to build a request.
fn uris() -> Vec<Uri> {
    (0..DISTINCT_URIS)
        .map(|n| format!("/r?n={n}").parse().unwrap())
        .collect()
}

async fn one(app: &Router, uri: Uri) {
    let req = Request::get(uri).body(Body::empty()).unwrap();
    let response = app.clone().oneshot(req).await.unwrap();
    assert!(response.status().is_success());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len(), 39);
}

/// `BATCH` requests one after the other.
async fn sequential(app: &Router, uris: &[Uri], next: &mut usize) {
    for _ in 0..BATCH {
        *next = (*next + 1) % uris.len();
        one(app, uris[*next].clone()).await;
    }
}

/// `BATCH` requests in flight at once, interleaved on the current thread.
async fn concurrent(app: &Router, uris: &[Uri], next: &mut usize) {
    let futures = (0..BATCH).map(|_| {
        *next = (*next + 1) % uris.len();
        one(app, uris[*next].clone())
    });
    futures_util::future::join_all(futures).await;
}

fn unique_keys(c: &mut Criterion) {
    let rt = runtime();
    let uris = uris();
    let layer = DedupLayer::new();
    let handle = layer.handle();
    let bare = app();
    let dedup = app().layer(layer);
    // The floor any `Router::layer` pays (axum wraps the route once more), for scale.
    let noop = app().layer(tower::layer::layer_fn(|service| service));
    let mut next = 0;

    for (name, concurrently) in [("unique_keys", false), ("unique_keys_concurrent", true)] {
        let mut group = c.benchmark_group(name);
        group.throughput(Throughput::Elements(BATCH as u64));
        group.measurement_time(Duration::from_secs(4));
        for (variant, router) in [
            ("bare_axum", &bare),
            ("noop_layer", &noop),
            ("dedup_layer", &dedup),
        ] {
            group.bench_function(variant, |b| {
                b.iter(|| {
                    rt.block_on(async {
                        if concurrently {
                            concurrent(router, &uris, &mut next).await;
                        } else {
                            sequential(router, &uris, &mut next).await;
                        }
                    })
                })
            });
        }
        group.finish();
    }
    assert_eq!(handle.inflight(), 0);

    // Ratio in the same run: interleave short trials of both and keep each one's best.
    let rounds = 200;
    let mut best = [Duration::MAX; 3];
    for _ in 0..15 {
        for (i, router) in [&bare, &noop, &dedup].into_iter().enumerate() {
            let start = Instant::now();
            rt.block_on(async {
                for _ in 0..rounds {
                    sequential(router, &uris, &mut next).await;
                }
            });
            best[i] = best[i].min(start.elapsed());
        }
    }
    let per_sec = |d: Duration| (rounds * BATCH) as f64 / d.as_secs_f64();
    println!(
        "unique keys in-process: bare {:.0} req/s, noop layer {:.0} req/s ({:.3}), dedup {:.0} req/s, ratio {:.3}",
        per_sec(best[0]),
        per_sec(best[1]),
        per_sec(best[1]) / per_sec(best[0]),
        per_sec(best[2]),
        per_sec(best[2]) / per_sec(best[0])
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
async fn burst_round(app: &Router, handle: &DedupHandle, gate: &Semaphore) {
    let tasks: Vec<_> = (0..BURST)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move {
                let req = Request::get("/r").body(Body::empty()).unwrap();
                let response = app.oneshot(req).await.unwrap();
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
    let app = burst_app(&layer, &calls, &gate);

    let mut bursts = 0usize;
    let mut group = c.benchmark_group("identical_burst");
    group.throughput(Throughput::Elements(BURST as u64));
    group.sample_size(20);
    group.bench_function("100_identical_gets", |b| {
        b.iter(|| {
            bursts += 1;
            rt.block_on(burst_round(&app, &handle, &gate));
        })
    });
    group.finish();

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

/// End to end over loopback TCP (hyper client, `axum::serve`), where the kernel's share dilutes any layer's:
/// `CONCURRENCY` requests in flight on a 2-thread runtime. Noisier than the in-process figures.
fn unique_keys_tcp(c: &mut Criterion) {
    const CONCURRENCY: usize = 32;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let serve = |app: Router| async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        addr
    };
    let (bare, dedup) = rt.block_on(async {
        (
            serve(app()).await,
            serve(app().layer(DedupLayer::new())).await,
        )
    });
    let client: Client<HttpConnector, Empty<Bytes>> = rt.block_on(async {
        Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(CONCURRENCY)
            .build_http()
    });
    let uris = |addr: std::net::SocketAddr| -> Vec<Uri> {
        (0..DISTINCT_URIS)
            .map(|n| format!("http://{addr}/r?n={n}").parse().unwrap())
            .collect()
    };
    let (bare_uris, dedup_uris) = (uris(bare), uris(dedup));
    let next = AtomicUsize::new(0);
    let round = |uris: &[Uri]| {
        let uris: Vec<Uri> = (0..CONCURRENCY)
            .map(|_| uris[next.fetch_add(1, Ordering::Relaxed) % uris.len()].clone())
            .collect();
        let client = client.clone();
        // Spawned inside `block_on`, so on the runtime's workers.
        async move {
            let tasks: Vec<_> = uris
                .into_iter()
                .map(|uri| {
                    let client = client.clone();
                    tokio::spawn(async move {
                        let response = client.get(uri).await.unwrap();
                        assert!(response.status().is_success());
                        response.into_body().collect().await.unwrap();
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
        }
    };

    let mut group = c.benchmark_group("unique_keys_tcp");
    group.throughput(Throughput::Elements(CONCURRENCY as u64));
    group.measurement_time(Duration::from_secs(4));
    group.sample_size(30);
    group.bench_function("bare_axum", |b| b.iter(|| rt.block_on(round(&bare_uris))));
    group.bench_function("dedup_layer", |b| {
        b.iter(|| rt.block_on(round(&dedup_uris)))
    });
    group.finish();

    let rounds = 100;
    let mut best = [Duration::MAX; 2];
    for _ in 0..10 {
        for (i, uris) in [&bare_uris, &dedup_uris].into_iter().enumerate() {
            let start = Instant::now();
            rt.block_on(async {
                for _ in 0..rounds {
                    round(uris).await;
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

criterion_group!(benches, unique_keys, unique_keys_tcp, identical_bursts);
criterion_main!(benches);
