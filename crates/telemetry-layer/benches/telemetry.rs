//! Throughput of an axum app over real loopback HTTP: bare, with the telemetry layer recording metrics,
//! and with metrics plus spans exported through the OTLP batch pipeline (to a closed port, so export
//! work happens and fails fast). Also the per-request cost in process, without the network.
//!
//! After the criterion groups, a same-run A/B prints the throughput ratios against bare axum.

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)] // a benchmark reports on stdout

use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_main};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use telemetry_layer::Telemetry;
use tower::ServiceExt;
use tracing_subscriber::layer::SubscriberExt;

const CONCURRENCY: usize = 32;
const REQUESTS_PER_TASK: usize = 50;

#[derive(Clone, Copy, Debug)]
enum Setup {
    Bare,
    Metrics,
    MetricsAndTracing,
}

impl Setup {
    fn name(self) -> &'static str {
        match self {
            Self::Bare => "bare_axum",
            Self::Metrics => "telemetry_metrics",
            Self::MetricsAndTracing => "telemetry_metrics_tracing_otlp",
        }
    }
}

fn routes() -> Router {
    Router::new().route("/users/{id}", get(|| async { "hello" }))
}

/// A runtime with the app served on 127.0.0.1 and a keep-alive client pool.
struct Env {
    runtime: tokio::runtime::Runtime,
    app: Router,
    url: hyper::Uri,
    client: Client<HttpConnector, Empty<Bytes>>,
    dispatch: Option<tracing::Dispatch>,
    _telemetry: Option<Telemetry>,
}

impl Env {
    fn start(setup: Setup) -> Self {
        let telemetry = match setup {
            Setup::Bare => None,
            Setup::Metrics => Some(
                Telemetry::builder()
                    .install_recorder(false)
                    .install_subscriber(false)
                    .from_env(false)
                    .build()
                    .unwrap(),
            ),
            Setup::MetricsAndTracing => Some(
                Telemetry::builder()
                    .install_recorder(false)
                    .install_subscriber(false)
                    .from_env(false)
                    .otlp_endpoint("http://127.0.0.1:9")
                    .build()
                    .unwrap(),
            ),
        };
        // Spans are recorded only on this runtime's threads, so the setups don't affect each other.
        let dispatch = telemetry.as_ref().and_then(|t| {
            t.otel_layer()
                .map(|layer| tracing::Dispatch::new(tracing_subscriber::registry().with(layer)))
        });
        let thread_dispatch = dispatch.clone();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .on_thread_start(move || {
                if let Some(dispatch) = &thread_dispatch {
                    std::mem::forget(tracing::dispatcher::set_default(dispatch));
                }
            })
            .build()
            .unwrap();
        let app = match &telemetry {
            Some(t) => routes().layer(t.layer()),
            None => routes(),
        };
        let served = app.clone();
        let addr = runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move { axum::serve(listener, served).await });
            addr
        });
        let client = runtime.block_on(async {
            Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(CONCURRENCY)
                .build_http()
        });
        Self {
            runtime,
            app,
            url: format!("http://{addr}/users/42").parse().unwrap(),
            client,
            dispatch,
            _telemetry: telemetry,
        }
    }

    /// Sends `CONCURRENCY * per_task` requests and returns how long they took.
    fn run(&self, per_task: usize) -> Duration {
        self.runtime.block_on(async {
            let start = Instant::now();
            let tasks: Vec<_> = (0..CONCURRENCY)
                .map(|_| {
                    let client = self.client.clone();
                    let url = self.url.clone();
                    tokio::spawn(async move {
                        for _ in 0..per_task {
                            let response = client.get(url.clone()).await.unwrap();
                            assert!(response.status().is_success());
                            response.into_body().collect().await.unwrap();
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
            start.elapsed()
        })
    }

    fn in_process(&self) {
        // `block_on` runs on the bench thread, which needs the same subscriber as the workers.
        let _default = self.dispatch.as_ref().map(tracing::dispatcher::set_default);
        self.runtime.block_on(async {
            let response = self
                .app
                .clone()
                .oneshot(http::Request::get("/users/42").body(Body::empty()).unwrap())
                .await
                .unwrap();
            response.into_body().collect().await.unwrap();
        });
    }
}

const SETUPS: [Setup; 3] = [Setup::Bare, Setup::Metrics, Setup::MetricsAndTracing];

fn loopback(c: &mut Criterion) {
    let mut group = c.benchmark_group("loopback_http");
    group.throughput(Throughput::Elements(
        (CONCURRENCY * REQUESTS_PER_TASK) as u64,
    ));
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(4));
    for setup in SETUPS {
        let env = Env::start(setup);
        group.bench_function(setup.name(), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| env.run(REQUESTS_PER_TASK)).sum())
        });
    }
    group.finish();
}

fn in_process(c: &mut Criterion) {
    let mut group = c.benchmark_group("in_process");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(3));
    for setup in SETUPS {
        let env = Env::start(setup);
        group.bench_function(setup.name(), |b| b.iter(|| env.in_process()));
    }
    group.finish();
}

/// Interleaved rounds in one run, so drift affects every setup alike; prints requests/s and ratios.
fn ratios(_: &mut Criterion) {
    let envs: Vec<(Setup, Env)> = SETUPS.iter().map(|&s| (s, Env::start(s))).collect();
    let mut totals = vec![Duration::ZERO; envs.len()];
    for (_, env) in &envs {
        env.run(20);
    }
    for _ in 0..5 {
        for (i, (_, env)) in envs.iter().enumerate() {
            totals[i] += env.run(REQUESTS_PER_TASK);
        }
    }
    let requests = (5 * CONCURRENCY * REQUESTS_PER_TASK) as f64;
    let bare = requests / totals[0].as_secs_f64();
    println!("\nsame-run loopback throughput ({CONCURRENCY} concurrent keep-alive clients):");
    for (i, (setup, _)) in envs.iter().enumerate() {
        let rate = requests / totals[i].as_secs_f64();
        println!(
            "  {:<32} {:>9.0} req/s  {:.3}x bare axum",
            setup.name(),
            rate,
            rate / bare
        );
    }
}

// The macro generates an undocumented `benches` function.
#[allow(missing_docs)]
mod group {
    criterion::criterion_group!(benches, super::loopback, super::in_process, super::ratios);
}
use group::benches;
criterion_main!(benches);
