//! breaker-layer vs bare axum vs tower-resilience's circuit breaker, same handler, same run.

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use breaker_layer::{BreakerLayer, CircuitBreaker};
use criterion::{Criterion, Throughput};
use http::{Request, Response};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_resilience_circuitbreaker::CircuitBreakerLayer;

fn ours() -> BreakerLayer {
    BreakerLayer::new(CircuitBreaker::builder().name("peers").build().unwrap())
}

fn theirs() -> CircuitBreakerLayer {
    CircuitBreakerLayer::builder()
        .failure_rate_threshold(0.5)
        .sliding_window_size(100)
        .build()
        .unwrap()
}

fn app() -> Router {
    Router::new().route("/", get(|| async { "hello" }))
}

fn request() -> Request<Body> {
    Request::get("/").body(Body::empty()).unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The cheapest possible inner service, so the breaker's own cost dominates.
fn trivial()
-> impl Service<Request<()>, Response = Response<Body>, Error = Infallible, Future: Send> + Clone + Send
{
    service_fn(|_req: Request<()>| async { Ok::<_, Infallible>(Response::new(Body::empty())) })
}

async fn drive<S, R, F>(svc: &mut S, make: F)
where
    S: Service<R>,
    S::Error: std::fmt::Debug,
    F: Fn() -> R,
{
    let ready = svc.ready().await.unwrap();
    black_box(ready.call(make()).await.unwrap());
}

fn closed_path(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("closed_path");
    g.throughput(Throughput::Elements(1));
    let core = CircuitBreaker::builder().name("core").build().unwrap();
    g.bench_function("breaker-layer core try_acquire+record", |b| {
        b.iter(|| {
            if let Ok(p) = black_box(&core).try_acquire() {
                p.success();
            }
        })
    });
    let mk = || Request::new(());
    let mut bare = trivial();
    g.bench_function("service bare", |b| {
        b.to_async(&rt).iter(|| drive_ref(&mut bare, mk))
    });
    let mut with_ours = ours().layer(trivial());
    g.bench_function("service breaker-layer", |b| {
        b.to_async(&rt).iter(|| drive_ref(&mut with_ours, mk))
    });
    let mut with_theirs = theirs().layer(trivial());
    g.bench_function("service tower-resilience", |b| {
        b.to_async(&rt).iter(|| drive_ref(&mut with_theirs, mk))
    });
    g.finish();
}

/// `to_async().iter` wants a future per iteration that does not borrow across iterations; the services are cheap
/// to clone (an `Arc` each), so clone like a server would per connection.
fn drive_ref<S, R, F>(svc: &mut S, make: F) -> impl Future<Output = ()> + use<S, R, F>
where
    S: Service<R> + Clone,
    S::Error: std::fmt::Debug,
    F: Fn() -> R,
{
    let mut svc = svc.clone();
    async move { drive(&mut svc, make).await }
}

fn axum_group(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("axum");
    g.throughput(Throughput::Elements(1));
    let mut bare = app();
    g.bench_function("bare", |b| {
        b.to_async(&rt).iter(|| drive_ref(&mut bare, request))
    });
    let mut with_ours = app().layer(ours());
    g.bench_function("breaker-layer", |b| {
        b.to_async(&rt).iter(|| drive_ref(&mut with_ours, request))
    });
    let mut ours_outside = ours().layer(app());
    g.bench_function("breaker-layer around the router", |b| {
        b.to_async(&rt)
            .iter(|| drive_ref(&mut ours_outside, request))
    });
    let mut identity = app().layer(tower::layer::util::Identity::new());
    g.bench_function("Router::layer(Identity)", |b| {
        b.to_async(&rt).iter(|| drive_ref(&mut identity, request))
    });
    let mut with_theirs = theirs().layer(app());
    g.bench_function("tower-resilience", |b| {
        b.to_async(&rt)
            .iter(|| drive_ref(&mut with_theirs, request))
    });
    g.finish();
}

/// Every variant of the ratio report as one type, so they can be driven in turn.
type BoxedApp = tower::util::BoxCloneService<Request<Body>, http::Response<Body>, Infallible>;

/// Interleaved rounds; the median per-request time of each variant gives the ratios.
fn ratio_report() {
    const ROUNDS: usize = 15;
    const REQUESTS: usize = 20_000;
    let rt = runtime();
    let mut variants: Vec<(&str, BoxedApp)> = vec![
        ("bare axum", tower::util::BoxCloneService::new(app())),
        (
            "Router::layer(Identity)",
            tower::util::BoxCloneService::new(app().layer(tower::layer::util::Identity::new())),
        ),
        (
            "Router::layer(BreakerLayer)",
            tower::util::BoxCloneService::new(app().layer(ours())),
        ),
        (
            "BreakerLayer around the router",
            tower::util::BoxCloneService::new(ServiceExt::<Request<Body>>::map_response(
                ours().layer(app()),
                |r| r.map(Body::new),
            )),
        ),
        (
            "tower-resilience around the router",
            tower::util::BoxCloneService::new(ServiceExt::<Request<Body>>::map_err(
                theirs().layer(app()),
                |e| -> Infallible { panic!("breaker error: {e:?}") },
            )),
        ),
    ];
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); variants.len()];
    rt.block_on(async {
        for _ in 0..ROUNDS {
            for (i, (_, svc)) in variants.iter_mut().enumerate() {
                let t = Instant::now();
                for _ in 0..REQUESTS {
                    drive(svc, request).await;
                }
                times[i].push(t.elapsed());
            }
        }
    });
    let per: Vec<f64> = times
        .iter_mut()
        .map(|v| {
            v.sort();
            v[ROUNDS / 2].as_secs_f64() * 1e9 / REQUESTS as f64
        })
        .collect();
    for ((name, _), ns) in variants.iter().zip(&per) {
        eprintln!(
            "ratio report: {name:<36} {ns:>6.0} ns/req  throughput vs bare {:.3}",
            per[0] / ns
        );
    }
    eprintln!(
        "ratio report: BreakerLayer vs Router::layer(Identity) (axum's own layering cost removed): {:.3}",
        per[1] / per[2]
    );
}

fn main() {
    let mut c = Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    closed_path(&mut c);
    axum_group(&mut c);
    c.final_summary();
    ratio_report();
}
