//! Closed-path cost of the core breaker and axum throughput with and without the layer, in the same run.
//!
//! `cargo bench -p breaker-layer`; the last lines print the layered/bare throughput ratio.

use std::hint::black_box;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use breaker_layer::{BreakerLayer, CircuitBreaker, Outcome};
use criterion::{Criterion, Throughput};
use http::Request;
use tower::{Service, ServiceExt};

fn breaker(name: &str) -> CircuitBreaker {
    match CircuitBreaker::builder().name(name).build() {
        Ok(b) => b,
        Err(e) => panic!("bench config: {e}"),
    }
}

fn closed_path(c: &mut Criterion) {
    let mut group = c.benchmark_group("closed_path");
    group.throughput(Throughput::Elements(1));
    let b = breaker("bench-count");
    group.bench_function("try_acquire+record count window", |bench| {
        bench.iter(|| {
            if let Ok(permit) = black_box(&b).try_acquire() {
                permit.record(black_box(Outcome::Success));
            }
        })
    });
    let b = match CircuitBreaker::builder()
        .name("bench-consecutive")
        .consecutive_failures(5)
        .build()
    {
        Ok(b) => b,
        Err(e) => panic!("bench config: {e}"),
    };
    group.bench_function("try_acquire+record consecutive", |bench| {
        bench.iter(|| {
            if let Ok(permit) = black_box(&b).try_acquire() {
                permit.success();
            }
        })
    });
    let b = match CircuitBreaker::builder()
        .name("bench-time")
        .time_window(Duration::from_secs(10))
        .build()
    {
        Ok(b) => b,
        Err(e) => panic!("bench config: {e}"),
    };
    group.bench_function("try_acquire+record time window", |bench| {
        bench.iter(|| {
            if let Ok(permit) = black_box(&b).try_acquire() {
                permit.success();
            }
        })
    });
    let b = breaker("bench-open");
    b.force_open();
    group.bench_function("rejected (forced open)", |bench| {
        bench.iter(|| black_box(&b).try_acquire().is_err())
    });
    group.finish();
}

fn app() -> Router {
    Router::new().route("/", get(|| async { "hello" }))
}

fn request() -> Request<Body> {
    Request::get("/").body(Body::empty()).unwrap_or_default()
}

fn runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("runtime: {e}"),
    }
}

fn axum_throughput(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("axum");
    group.throughput(Throughput::Elements(1));
    let bare = app();
    let layered = app().layer(BreakerLayer::new(breaker("bench-axum")));
    group.bench_function("bare", |b| {
        b.to_async(&rt).iter(|| bare.clone().oneshot(request()))
    });
    group.bench_function("breaker-layer", |b| {
        b.to_async(&rt).iter(|| layered.clone().oneshot(request()))
    });
    group.finish();
}

/// Interleaved rounds of bare and layered requests; the median per-request time of each gives the ratio.
fn ratio_report() {
    const ROUNDS: usize = 15;
    const REQUESTS: usize = 20_000;
    let rt = runtime();
    let mut bare = app().into_service::<Body>();
    let mut layered = app()
        .layer(BreakerLayer::new(breaker("bench-ratio")))
        .into_service::<Body>();
    let (mut t_bare, mut t_layered) = (Vec::new(), Vec::new());
    rt.block_on(async {
        for _ in 0..ROUNDS {
            let start = Instant::now();
            for _ in 0..REQUESTS {
                let svc = match bare.ready().await {
                    Ok(s) => s,
                    Err(e) => match e {},
                };
                let _ = black_box(svc.call(request()).await);
            }
            t_bare.push(start.elapsed());
            let start = Instant::now();
            for _ in 0..REQUESTS {
                let svc = match layered.ready().await {
                    Ok(s) => s,
                    Err(e) => match e {},
                };
                let _ = black_box(svc.call(request()).await);
            }
            t_layered.push(start.elapsed());
        }
    });
    t_bare.sort();
    t_layered.sort();
    let per = |d: Duration| d.as_secs_f64() * 1e9 / REQUESTS as f64;
    let (b, l) = (per(t_bare[ROUNDS / 2]), per(t_layered[ROUNDS / 2]));
    eprintln!("axum ratio report: bare {b:.0} ns/req, with BreakerLayer {l:.0} ns/req");
    eprintln!(
        "axum ratio report: throughput with layer / bare = {:.3}",
        b / l
    );
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    closed_path(&mut c);
    axum_throughput(&mut c);
    c.final_summary();
    ratio_report();
}
