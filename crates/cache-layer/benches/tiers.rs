//! The lower tiers against a real redis-server, in process (`Router::oneshot`), in one run:
//!
//! - `bare_axum`: the handler alone;
//! - `l1_hit`: an in-process hit;
//! - `l2_hit`: a hit from Redis (the L1 copy is past its 1 ms cap), promotion included;
//! - `miss_l1_only` / `miss_redis_down`: an L1 miss answered by the origin and stored, without
//!   lower tiers and with a Redis that is down (the breaker open), to show what a dead Redis costs.
//!
//! Requests rotate over 2,000 URLs so every `l2_hit` and `miss_*` request finds its L1 copy
//! expired. The run prints the throughput ratios.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    missing_docs
)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::Path;
use axum::routing::get;
use breaker_layer::{BreakerState, CircuitBreaker};
use bytes::Bytes;
use cache_layer::{CacheHandle, CacheLayer, RedisTier};
use criterion::{Criterion, criterion_group};
use http::Request;
use http_body_util::BodyExt;
use test_support::RedisServer;
use tower::ServiceExt;

static PAYLOAD: [u8; 1024] = [b'x'; 1024];
const URLS: usize = 2000;

fn bare() -> Router {
    Router::new().route(
        "/item/{id}",
        get(|Path(id): Path<u32>| async move {
            (
                [
                    ("cache-control", "max-age=3600".to_owned()),
                    ("cache-tag", format!("item:{id}")),
                    ("content-type", "application/json".to_owned()),
                ],
                Bytes::from_static(&PAYLOAD),
            )
        }),
    )
}

struct Rotation {
    paths: Vec<String>,
    next: AtomicUsize,
}

impl Rotation {
    fn new() -> Self {
        Self {
            paths: (0..URLS).map(|i| format!("/item/{i}")).collect(),
            next: AtomicUsize::new(0),
        }
    }
    fn request(&self) -> Request<Body> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % URLS;
        Request::get(self.paths[i].as_str())
            .header("host", "bench.local")
            .body(Body::empty())
            .unwrap()
    }
}

async fn once(app: &Router, rot: &Rotation) -> usize {
    let resp = app.clone().oneshot(rot.request()).await.unwrap();
    resp.into_body().collect().await.unwrap().to_bytes().len()
}

fn layered(l1_cap: Duration, l2: Option<RedisTier>) -> (Router, CacheHandle) {
    let mut b = CacheLayer::builder().ttl_cap(l1_cap);
    if let Some(l2) = l2 {
        b = b.redis(l2);
    }
    let cache = b.build().unwrap();
    let handle = cache.handle();
    (bare().layer(cache), handle)
}

/// Requests per second over `n` sequential requests, best of three.
async fn throughput(app: &Router, rot: &Rotation, n: usize) -> f64 {
    let mut best = 0f64;
    for _ in 0..3 {
        let start = Instant::now();
        for _ in 0..n {
            once(app, rot).await;
        }
        best = best.max(n as f64 / start.elapsed().as_secs_f64());
    }
    best
}

fn tiers(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = RedisServer::start().unwrap();
    let rot = Rotation::new();

    let bare_app = bare();
    let (l1_app, _) = rt.block_on(async { layered(Duration::from_secs(3600), None) });
    let (l2_app, l2_handle) = rt.block_on(async {
        let l2 = RedisTier::builder(server.url())
            .prefix("bench")
            .build()
            .unwrap();
        layered(Duration::from_millis(1), Some(l2))
    });
    let (miss_app, _) = rt.block_on(async { layered(Duration::from_millis(1), None) });
    let dead = CircuitBreaker::builder()
        .name("bench-dead")
        .consecutive_failures(1)
        .wait_in_open(Duration::from_secs(3600))
        .build()
        .unwrap();
    let (down_app, _) = rt.block_on(async {
        let port = test_support::free_port();
        let l2 = RedisTier::builder(format!("redis://127.0.0.1:{port}"))
            .breaker(dead.clone())
            .build()
            .unwrap();
        layered(Duration::from_millis(1), Some(l2))
    });

    rt.block_on(async {
        for _ in 0..URLS {
            once(&l1_app, &rot).await;
            once(&l2_app, &rot).await;
        }
        // Wait for the background writes to reach Redis.
        for _ in 0..1000 {
            if l2_handle.tier_stats().writes >= URLS as u64 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        once(&down_app, &rot).await;
        once(&down_app, &rot).await;
    });
    assert_eq!(
        dead.state(),
        BreakerState::Open,
        "the dead Redis opened the breaker"
    );

    let mut g = c.benchmark_group("tiers");
    g.bench_function("bare_axum", |b| {
        b.to_async(&rt).iter(|| once(&bare_app, &rot))
    });
    g.bench_function("l1_hit", |b| b.to_async(&rt).iter(|| once(&l1_app, &rot)));
    g.bench_function("l2_hit", |b| b.to_async(&rt).iter(|| once(&l2_app, &rot)));
    g.bench_function("miss_l1_only", |b| {
        b.to_async(&rt).iter(|| once(&miss_app, &rot))
    });
    g.bench_function("miss_redis_down", |b| {
        b.to_async(&rt).iter(|| once(&down_app, &rot))
    });
    g.finish();

    let (bare, l1, l2, miss, down) = rt.block_on(async {
        let n = 20_000;
        (
            throughput(&bare_app, &rot, n).await,
            throughput(&l1_app, &rot, n).await,
            throughput(&l2_app, &rot, n).await,
            throughput(&miss_app, &rot, n).await,
            throughput(&down_app, &rot, n).await,
        )
    });
    let s = l2_handle.tier_stats();
    println!(
        "req/s: bare {bare:.0}, l1 hit {l1:.0}, l2 hit {l2:.0}, miss L1-only {miss:.0}, miss Redis down {down:.0}"
    );
    println!(
        "ratios: l1 hit / bare {:.3}, l2 hit / bare {:.3}, miss Redis down / miss L1-only {:.3}",
        l1 / bare,
        l2 / bare,
        down / miss
    );
    println!(
        "l2 over the run: {} hits, {} misses, {} errors",
        s.l2_hits, s.l2_misses, s.l2_errors
    );
    drop(server);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = tiers
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
