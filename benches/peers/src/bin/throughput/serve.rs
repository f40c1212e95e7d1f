//! The hidden `serve` mode: one variant's server in a process of its own, so that its CPU time and peak
//! resident memory are its own. The parent starts it as `throughput serve VARIANT [--sink ADDR]`.
//!
//! It prints `ready ADDR` on stdout once it listens, then answers one line per command read from stdin:
//! `calls` (`calls N`: requests that reached the handler), `check` (`ok`, or `error WHY` when a probe fails:
//! breaker not closed, dedup's in-flight map not empty, a metric not recorded, nothing logged) and `flush`
//! (exports the ended spans and waits for the sink). End of stdin ends the process, so it never outlives
//! the parent, however the parent ends.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::io::{self, BufRead, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::serve::ListenerExt;
use axum_prometheus::metrics_exporter_prometheus::PrometheusHandle;
use breaker_layer::{BreakerLayer, BreakerState, CircuitBreaker};
use bytes::Bytes;
use http::HeaderValue;
use http::StatusCode;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use telemetry_layer::Telemetry;
use tokio::runtime::Runtime;
use tower::ServiceBuilder;
use tower::layer::util::Identity;
use tracing::Level;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;

use crate::Result;
use crate::variants::Variant;

/// How long the slow origin of `origin-2ms` and `stack-miss` takes to answer.
const ORIGIN_DELAY: Duration = Duration::from_millis(2);

/// The fixed response body: about 1 KiB of chat history as JSON.
pub fn body() -> &'static Bytes {
    static BODY: OnceLock<Bytes> = OnceLock::new();
    BODY.get_or_init(|| {
        let mut json = String::from(r#"{"room":"lobby","messages":["#);
        for id in 0..9 {
            if id > 0 {
                json.push(',');
            }
            let _ = write!(
                json,
                r#"{{"id":{id},"author":"ada","sent_at":"2025-01-01T12:00:0{id}Z","text":"Refreshing the page sends this query again; message number {id}."}}"#
            );
        }
        json.push_str("]}");
        Bytes::from(json)
    })
}

/// Runs the `serve` mode with the arguments after `serve`.
pub fn run(args: &[String]) -> Result<()> {
    let usage = "usage: throughput serve VARIANT [--sink ADDR]";
    let name = args.first().ok_or(usage)?;
    let variant = Variant::parse(name).ok_or_else(|| format!("unknown variant `{name}`"))?;
    let sink = match args.get(1..) {
        Some([flag, addr]) if flag == "--sink" => Some(addr.parse::<SocketAddr>()?),
        Some([]) => None,
        _ => return Err(usage.into()),
    };
    let server = Server::start(variant, sink)?;

    let mut out = io::stdout().lock();
    writeln!(out, "ready {}", server.addr)?;
    out.flush()?;
    for line in io::stdin().lock().lines() {
        let reply = match line?.trim() {
            "calls" => format!("calls {}", server.calls.load(Ordering::Relaxed)),
            "check" => match server.check() {
                Ok(()) => "ok".to_owned(),
                Err(why) => format!("error {why}"),
            },
            "flush" => match server.flush() {
                Ok(()) => "ok".to_owned(),
                Err(why) => format!("error {why}"),
            },
            other => format!("error unknown command `{other}`"),
        };
        writeln!(out, "{reply}")?;
        out.flush()?;
    }
    Ok(())
}

/// What a variant keeps alive and what `check` and `flush` inspect beyond the handler's call count.
#[derive(Default)]
struct Probe {
    breaker: Option<CircuitBreaker>,
    dedup: Option<dedup_layer::DedupHandle>,
    telemetry: Option<Box<Telemetry>>,
    /// The global recorder's handle, checked for axum-prometheus' counter.
    prometheus: Option<PrometheusHandle>,
    /// Bytes the `fmt` subscriber wrote.
    fmt: Option<Arc<AtomicU64>>,
}

/// One variant's server: its runtime (one worker thread) and listener.
struct Server {
    addr: SocketAddr,
    /// Calls that reached the handler.
    calls: Arc<AtomicU64>,
    probe: Probe,
    runtime: Runtime,
    _upkeep: Runtime,
}

fn response() -> impl IntoResponse {
    (
        [
            (
                CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=60"),
            ),
            (CONTENT_TYPE, HeaderValue::from_static("application/json")),
        ],
        body().clone(),
    )
}

/// The router every variant wraps: one route, one handler counting its calls.
fn routes(calls: Arc<AtomicU64>) -> Router {
    Router::new().route(
        "/rooms/{room}/messages",
        get(move || {
            calls.fetch_add(1, Ordering::Relaxed);
            async { response() }
        }),
    )
}

/// The same route with a handler that takes [`ORIGIN_DELAY`], as one that queries a database would.
fn slow_routes(calls: Arc<AtomicU64>) -> Router {
    Router::new().route(
        "/rooms/{room}/messages",
        get(move || {
            calls.fetch_add(1, Ordering::Relaxed);
            async {
                tokio::time::sleep(ORIGIN_DELAY).await;
                response()
            }
        }),
    )
}

/// Writes nowhere, counting the bytes it was given.
struct CountingSink(Arc<AtomicU64>);

impl io::Write for CountingSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.fetch_add(buf.len() as u64, Ordering::Relaxed);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// telemetry-layer as the stack uses it: its own Prometheus recorder, and spans exported to `sink` when
/// given (with the `tracing` subscriber the server's threads need for them).
fn telemetry(sink: Option<SocketAddr>) -> Result<(Telemetry, Option<tracing::Dispatch>)> {
    let mut builder = Telemetry::builder()
        .service_name("throughput")
        .install_recorder(false)
        .install_subscriber(false)
        .log_to_stdout(false)
        .from_env(false);
    if let Some(sink) = sink {
        builder = builder.otlp_endpoint(format!("http://{sink}"));
    }
    let telemetry = builder.build()?;
    if sink.is_none() {
        return Ok((telemetry, None));
    }
    if !telemetry.tracing_enabled() {
        return Err("telemetry: span export is not enabled".into());
    }
    let dispatch = tracing::Dispatch::new(
        tracing_subscriber::registry().with(
            telemetry
                .otel_layer()
                .map(|layer| layer.with_filter(LevelFilter::INFO)),
        ),
    );
    Ok((telemetry, Some(dispatch)))
}

impl Server {
    fn start(variant: Variant, sink: Option<SocketAddr>) -> Result<Self> {
        let sink = if variant.exports_spans() {
            Some(sink.ok_or("this variant exports spans: pass --sink ADDR")?)
        } else {
            None
        };
        // axum-prometheus records through the global recorder; its `pair` installs one and spawns the
        // recorder's upkeep on the current runtime, here a small one of its own. It is installed for every
        // variant, as in a service that exposes `/metrics`: the layers' own `breaker_*`, `cache_*`,
        // `dedup_*` metrics then cost what they cost there. It goes first, so layers built below that
        // register metrics register them with it.
        let upkeep = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("metrics-upkeep")
            .enable_all()
            .build()?;
        let prometheus = {
            let _entered = upkeep.enter();
            axum_prometheus::PrometheusMetricLayer::pair().1
        };

        let calls = Arc::new(AtomicU64::new(0));
        let routes = if variant.slow_origin() {
            slow_routes(calls.clone())
        } else {
            routes(calls.clone())
        };
        let mut dispatch = None;
        let mut probe = Probe::default();
        let app = match variant {
            Variant::Bare | Variant::Origin2ms => routes,
            Variant::Identity => routes.layer(Identity::new()),
            Variant::Breaker => {
                let breaker = CircuitBreaker::builder().name("throughput").build()?;
                probe.breaker = Some(breaker.clone());
                routes.layer(BreakerLayer::new(breaker))
            }
            Variant::Dedup | Variant::DedupRotating => {
                let layer = dedup_layer::DedupLayer::new();
                probe.dedup = Some(layer.handle());
                routes.layer(layer)
            }
            Variant::CacheHit => routes.layer(cache_layer::CacheLayer::new()),
            Variant::TelemetryMetrics | Variant::TelemetrySpans => {
                let (telemetry, subscriber) = telemetry(sink)?;
                dispatch = subscriber;
                let app = telemetry.instrument(routes);
                probe.telemetry = Some(Box::new(telemetry));
                app
            }
            Variant::StackHit | Variant::StackHitSpans | Variant::StackMiss => {
                let (telemetry, subscriber) = telemetry(sink)?;
                dispatch = subscriber;
                let breaker = CircuitBreaker::builder().name("throughput").build()?;
                let dedup = dedup_layer::DedupLayer::new();
                probe.breaker = Some(breaker.clone());
                probe.dedup = Some(dedup.handle());
                // The README's composition: the whole stack, outermost first, in one `Router::layer`.
                let stack = ServiceBuilder::new()
                    .layer(telemetry.layer())
                    .layer(cache_layer::CacheLayer::new())
                    .layer(dedup)
                    .layer(BreakerLayer::new(breaker));
                let app = telemetry.metrics_router().merge(routes.layer(stack));
                probe.telemetry = Some(Box::new(telemetry));
                app
            }
            Variant::TowerResilience => {
                let breaker = tower_resilience_circuitbreaker::CircuitBreakerLayer::builder()
                    .failure_rate_threshold(0.5)
                    .sliding_window_size(100)
                    .build()?;
                routes.layer(
                    ServiceBuilder::new()
                        .layer(HandleErrorLayer::new(
                            |_: tower_resilience_circuitbreaker::CircuitBreakerError<
                                Infallible,
                            >| async {
                                StatusCode::SERVICE_UNAVAILABLE
                            },
                        ))
                        .layer(breaker),
                )
            }
            Variant::AxumResponseCache => routes.layer(
                axum_response_cache::CacheLayer::with_lifespan(Duration::from_secs(60)),
            ),
            Variant::HttpCacheTower => routes.layer(
                ServiceBuilder::new()
                    .layer(HandleErrorLayer::new(|_: tower::BoxError| async {
                        StatusCode::INTERNAL_SERVER_ERROR
                    }))
                    .layer(http_cache_tower_server::ServerCacheLayer::new(
                        http_cache::MokaManager::default(),
                    )),
            ),
            Variant::AxumPrometheus => {
                probe.prometheus = Some(prometheus);
                routes.layer(axum_prometheus::PrometheusMetricLayer::new())
            }
            Variant::TraceLayer => {
                let written = Arc::new(AtomicU64::new(0));
                let sink = written.clone();
                dispatch = Some(tracing::Dispatch::new(
                    tracing_subscriber::registry().with(
                        tracing_subscriber::fmt::layer()
                            .with_writer(move || CountingSink(sink.clone()))
                            .with_filter(LevelFilter::INFO),
                    ),
                ));
                probe.fmt = Some(written);
                let trace = tower_http::trace::TraceLayer::new_for_http()
                    .make_span_with(tower_http::trace::DefaultMakeSpan::new().level(Level::INFO))
                    .on_response(tower_http::trace::DefaultOnResponse::new().level(Level::INFO));
                routes.layer(trace)
            }
        };

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(format!("srv-{}", variant.name()))
            .enable_all()
            .on_thread_start(move || {
                if let Some(dispatch) = &dispatch {
                    // The subscriber is the server runtime's only, as it was when several variants shared a
                    // process; the threads live as long as the process, so the default stays set on each.
                    std::mem::forget(tracing::dispatcher::set_default(dispatch));
                }
            })
            .build()?;
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        runtime.spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("server stopped: {e}");
            }
        });
        Ok(Self {
            addr,
            calls,
            probe,
            runtime,
            _upkeep: upkeep,
        })
    }

    fn check(&self) -> Result<(), String> {
        let probe = &self.probe;
        if let Some(breaker) = &probe.breaker
            && breaker.state() != BreakerState::Closed
        {
            return Err(format!("breaker is {:?}, not closed", breaker.state()));
        }
        if let Some(dedup) = &probe.dedup
            && (dedup.inflight() != 0 || dedup.waiters() != 0)
        {
            return Err(format!(
                "dedup's in-flight map is not empty: {} keys, {} waiters",
                dedup.inflight(),
                dedup.waiters()
            ));
        }
        if let Some(telemetry) = &probe.telemetry
            && !telemetry
                .render()
                .contains("http_server_request_duration_seconds_count")
        {
            return Err("telemetry recorded no request duration metric".to_owned());
        }
        if let Some(prometheus) = &probe.prometheus
            && !prometheus.render().contains("axum_http_requests_total")
        {
            return Err("axum-prometheus recorded no axum_http_requests_total".to_owned());
        }
        if let Some(written) = &probe.fmt
            && written.load(Ordering::Relaxed) == 0
        {
            return Err("the fmt subscriber wrote nothing".to_owned());
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), String> {
        match &self.probe.telemetry {
            Some(telemetry) => self
                .runtime
                .block_on(telemetry.flush())
                .map_err(|e| e.to_string()),
            None => Ok(()),
        }
    }
}
