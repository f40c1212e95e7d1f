//! telemetry-layer against its peers over loopback HTTP, in one run: bare axum, axum-prometheus
//! (metrics), tower-http's TraceLayer (spans, exported through the same OpenTelemetry pipeline), and
//! telemetry-layer with metrics only and with metrics plus exported spans.

#![allow(missing_docs, clippy::print_stdout, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use telemetry_layer::Telemetry;
use tracing_subscriber::layer::SubscriberExt;

const CONCURRENCY: usize = 32;
const REQUESTS_PER_TASK: usize = 50;

#[derive(Clone, Copy)]
enum Setup {
    Bare,
    AxumPrometheus,
    TelemetryMetrics,
    TowerHttpTraceOtel,
    TelemetryMetricsTracingOtel,
}

const SETUPS: [Setup; 5] = [
    Setup::Bare,
    Setup::AxumPrometheus,
    Setup::TelemetryMetrics,
    Setup::TowerHttpTraceOtel,
    Setup::TelemetryMetricsTracingOtel,
];

impl Setup {
    fn name(self) -> &'static str {
        match self {
            Self::Bare => "bare_axum",
            Self::AxumPrometheus => "axum_prometheus",
            Self::TelemetryMetrics => "telemetry_layer_metrics",
            Self::TowerHttpTraceOtel => "tower_http_trace_otel",
            Self::TelemetryMetricsTracingOtel => "telemetry_layer_metrics_tracing_otel",
        }
    }
}

struct Env {
    runtime: tokio::runtime::Runtime,
    url: http::Uri,
    client: Client<HttpConnector, Empty<Bytes>>,
    _telemetry: Option<Telemetry>,
}

fn telemetry(otlp: bool) -> Telemetry {
    let builder = Telemetry::builder()
        .install_recorder(false)
        .install_subscriber(false)
        .from_env(false);
    let builder = if otlp {
        // A closed port: spans go through the batch pipeline and the export fails fast.
        builder.otlp_endpoint("http://127.0.0.1:9")
    } else {
        builder
    };
    builder.build().unwrap()
}

/// axum-prometheus installs its recorder globally, once per process; telemetry-layer's setups here keep
/// theirs local, so the two never share a registry.
fn axum_prometheus_layer() -> axum_prometheus::PrometheusMetricLayer<'static> {
    static PAIR: std::sync::OnceLock<(
        axum_prometheus::PrometheusMetricLayer<'static>,
        axum_prometheus::metrics_exporter_prometheus::PrometheusHandle,
    )> = std::sync::OnceLock::new();
    PAIR.get_or_init(|| {
        // `pair` spawns its upkeep task on the current runtime; give it one of its own for the process.
        let runtime: &'static tokio::runtime::Runtime = Box::leak(Box::new(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap(),
        ));
        let _entered = runtime.enter();
        axum_prometheus::PrometheusMetricLayer::pair()
    })
    .0
    .clone()
}

impl Env {
    fn start(setup: Setup) -> Self {
        let routes = Router::new().route("/users/{id}", get(|| async { "hello" }));
        let (app, telemetry) = match setup {
            Setup::Bare => (routes, None),
            Setup::AxumPrometheus => (routes.layer(axum_prometheus_layer()), None),
            Setup::TelemetryMetrics => {
                let t = telemetry(false);
                (routes.layer(t.layer()), Some(t))
            }
            Setup::TowerHttpTraceOtel => {
                let t = telemetry(true);
                let trace = tower_http::trace::TraceLayer::new_for_http().make_span_with(
                    tower_http::trace::DefaultMakeSpan::new().level(tracing::Level::INFO),
                );
                (routes.layer(trace), Some(t))
            }
            Setup::TelemetryMetricsTracingOtel => {
                let t = telemetry(true);
                (routes.layer(t.layer()), Some(t))
            }
        };
        let dispatch = telemetry.as_ref().and_then(|t| {
            t.otel_layer()
                .map(|layer| tracing::Dispatch::new(tracing_subscriber::registry().with(layer)))
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .on_thread_start(move || {
                if let Some(dispatch) = &dispatch {
                    std::mem::forget(tracing::dispatcher::set_default(dispatch));
                }
            })
            .build()
            .unwrap();
        let addr = runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move { axum::serve(listener, app).await });
            addr
        });
        let client = runtime.block_on(async {
            Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(CONCURRENCY)
                .build_http()
        });
        Self {
            runtime,
            url: format!("http://{addr}/users/42").parse().unwrap(),
            client,
            _telemetry: telemetry,
        }
    }

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
}

fn loopback(c: &mut Criterion) {
    let mut group = c.benchmark_group("telemetry_peers_loopback");
    group.throughput(Throughput::Elements(
        (CONCURRENCY * REQUESTS_PER_TASK) as u64,
    ));
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    for setup in SETUPS {
        let env = Env::start(setup);
        group.bench_function(setup.name(), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| env.run(REQUESTS_PER_TASK)).sum())
        });
    }
    group.finish();
}

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
            "  {:<40} {:>9.0} req/s  {:.3}x bare axum",
            setup.name(),
            rate,
            rate / bare
        );
    }
}

criterion_group!(benches, loopback, ratios);
criterion_main!(benches);
