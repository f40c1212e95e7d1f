//! cache-layer's L1 hit against peers on the same handler, in one run: bare axum,
//! `cache_layer::CacheLayer`, `http_cache_tower_server::ServerCacheLayer` (moka manager) and
//! `axum_response_cache::CacheLayer`. Each cached variant is warmed so every measured request is a hit.
#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::print_stderr,
    missing_docs
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use bytes::Bytes;
use criterion::{Criterion, criterion_group};
use http::Request;
use http_body_util::BodyExt;
use tower::ServiceExt;

static PAYLOAD: [u8; 1024] = [b'x'; 1024];

fn handler(calls: Arc<AtomicUsize>) -> Router {
    Router::new().route(
        "/item",
        get(move || async move {
            calls.fetch_add(1, Ordering::Relaxed);
            (
                [
                    ("cache-control", "public, max-age=3600"),
                    ("content-type", "application/json"),
                ],
                Bytes::from_static(&PAYLOAD),
            )
        }),
    )
}

/// Each variant with the counter of calls that reached its handler.
fn variants() -> Vec<(&'static str, Router, Arc<AtomicUsize>)> {
    let counters: Vec<Arc<AtomicUsize>> = (0..4).map(|_| Arc::new(AtomicUsize::new(0))).collect();
    let handler = |i: usize| handler(counters[i].clone());
    let apps = vec![
        ("bare_axum", handler(0)),
        (
            "cache_layer",
            handler(1).layer(cache_layer::CacheLayer::new()),
        ),
        (
            "http_cache_tower_server",
            // Its error type is a BoxError, so axum needs HandleErrorLayer in front of it.
            handler(2).layer(
                tower::ServiceBuilder::new()
                    .layer(axum::error_handling::HandleErrorLayer::new(
                        |_: tower::BoxError| async { http::StatusCode::INTERNAL_SERVER_ERROR },
                    ))
                    .layer(http_cache_tower_server::ServerCacheLayer::new(
                        http_cache::MokaManager::default(),
                    )),
            ),
        ),
        (
            "axum_response_cache",
            handler(3).layer(axum_response_cache::CacheLayer::with_lifespan(
                Duration::from_secs(3600),
            )),
        ),
    ];
    apps.into_iter()
        .zip(counters)
        .map(|((name, app), calls)| (name, app, calls))
        .collect()
}

fn request() -> Request<Body> {
    Request::get("http://bench.local/item")
        .header("host", "bench.local")
        .body(Body::empty())
        .unwrap()
}

async fn once(app: &Router) -> usize {
    let resp = app.clone().oneshot(request()).await.unwrap();
    assert!(resp.status().is_success());
    resp.into_body().collect().await.unwrap().to_bytes().len()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn hits(c: &mut Criterion) {
    let rt = runtime();
    let apps = variants();
    let mut g = c.benchmark_group("cache_hit");
    for (name, app, _) in &apps {
        rt.block_on(once(app));
        rt.block_on(once(app));
        g.bench_function(*name, |b| b.to_async(&rt).iter(|| once(app)));
    }
    g.finish();
}

fn ratio_report() {
    let rt = runtime();
    let apps = variants();
    for (_, app, _) in &apps {
        rt.block_on(once(app));
        rt.block_on(once(app));
    }
    let warm: Vec<usize> = apps
        .iter()
        .map(|(_, _, c)| c.load(Ordering::Relaxed))
        .collect();
    let n = 50_000;
    let mut best = vec![0f64; apps.len()];
    for _ in 0..5 {
        for (i, (_, app, _)) in apps.iter().enumerate() {
            let start = Instant::now();
            rt.block_on(async {
                for _ in 0..n {
                    std::hint::black_box(once(app).await);
                }
            });
            best[i] = best[i].max(n as f64 / start.elapsed().as_secs_f64());
        }
    }
    for (i, (name, _, calls)) in apps.iter().enumerate() {
        let reached = calls.load(Ordering::Relaxed) - warm[i];
        eprintln!(
            "{name:>24}: {:>9.0} req/s, ratio to bare axum {:.3}, handler calls while measured {reached}",
            best[i],
            best[i] / best[0]
        );
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    targets = hits
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    ratio_report();
}
