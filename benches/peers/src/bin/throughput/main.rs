//! Served-HTTP throughput of the workspace's layers and their peers, as ratios against bare axum measured
//! in the same run.
//!
//! Every variant is the same axum `Router` (one route, one handler returning a fixed ~1 KiB JSON body with
//! `Cache-Control: public, max-age=60`) wrapped differently, served on its own `127.0.0.1:0` listener by its
//! own Tokio runtime with one worker thread. The load generator runs on the main thread (a current-thread
//! runtime) and drives `--connections` keep-alive HTTP/1.1 connections made with hyper's client for
//! `--seconds`, after `--warmup`. Rounds visit the variants in a shuffled order, so drift of the machine's
//! load spreads over all of them; the report takes medians over rounds.
//!
//! Besides requests per second it reads the CPU time of every thread of the process from
//! `/proc/self/task/*/schedstat`: the server side's CPU time per request is the measure of what a layer
//! costs that other processes' load disturbs least. Threads are pinned with `taskset` (`--pin`): by default
//! server and generator share CPU 0 and take turns, which keeps that figure steady to a few percent; `split`
//! gives the generator a CPU of its own. Before each window the harness waits (bounded) for other processes
//! to leave its CPUs alone, and reports how much CPU they used.
//!
//! ```text
//! cargo run --release --bin throughput -- [--variants a,b,c] [--rounds N] [--seconds S] [--connections C]
//!                                         [--warmup S] [--seed N] [--pin shared|split|off] [--quiet-wait S]
//!                                         [--out PATH]
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::convert::Infallible;
use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use breaker_layer::{BreakerLayer, BreakerState, CircuitBreaker};
use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HOST};
use http::{HeaderMap, HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use telemetry_layer::Telemetry;
use tokio::runtime::Runtime;
use tokio::time::Instant;
use tower::ServiceBuilder;
use tower::layer::util::Identity;
use tracing::Level;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;

type Error = Box<dyn std::error::Error + Send + Sync>;
type Result<T, E = Error> = std::result::Result<T, E>;

/// The path every variant serves.
const PATH: &str = "/rooms/lobby/messages";
/// Latency samples kept per connection and window; beyond it requests still count, their latency not.
const MAX_SAMPLES_PER_CONNECTION: usize = 1 << 18;
/// Requests sent one after another to each variant before it is measured.
const VALIDATION_REQUESTS: u64 = 5;
/// How long the machine is watched for other processes' CPU use before each window. It is also idle time,
/// so background work of the previous variant (span export, cache housekeeping) does not land in the next
/// one's CPU account.
const QUIET_SAMPLE: Duration = Duration::from_millis(250);
/// Other processes' CPU use (in cores) that counts as noise when they have no CPU of their own.
const NOISE_CORES: f64 = 0.1;

/// The fixed response body: about 1 KiB of chat history as JSON.
fn body() -> &'static Bytes {
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

// ---------------------------------------------------------------------------------------------------------
// Variants

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Variant {
    Bare,
    Identity,
    Breaker,
    Dedup,
    CacheHit,
    Telemetry,
    TelemetryMetrics,
    TowerResilience,
    AxumResponseCache,
    HttpCacheTower,
    AxumPrometheus,
    TraceLayer,
}

const ALL: [Variant; 12] = [
    Variant::Bare,
    Variant::Identity,
    Variant::Breaker,
    Variant::Dedup,
    Variant::CacheHit,
    Variant::Telemetry,
    Variant::TelemetryMetrics,
    Variant::TowerResilience,
    Variant::AxumResponseCache,
    Variant::HttpCacheTower,
    Variant::AxumPrometheus,
    Variant::TraceLayer,
];

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Self::Bare => "bare",
            Self::Identity => "identity",
            Self::Breaker => "breaker",
            Self::Dedup => "dedup",
            Self::CacheHit => "cache-hit",
            Self::Telemetry => "telemetry",
            Self::TelemetryMetrics => "telemetry-metrics",
            Self::TowerResilience => "tower-resilience",
            Self::AxumResponseCache => "axum-response-cache",
            Self::HttpCacheTower => "http-cache-tower",
            Self::AxumPrometheus => "axum-prometheus",
            Self::TraceLayer => "trace-layer",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Self::Bare => "the router alone",
            Self::Identity => "`Router::layer(Identity)`: the cost every `Router::layer` pays",
            Self::Breaker => "breaker-layer `BreakerLayer`, closed",
            Self::Dedup => {
                "dedup-layer `DedupLayer`, every request a distinct query string (nothing to coalesce)"
            }
            Self::CacheHit => "cache-layer `CacheLayer`, L1 hit (same URL every request)",
            Self::Telemetry => {
                "telemetry-layer: HTTP metrics + one span per request exported over OTLP (batched)"
            }
            Self::TelemetryMetrics => {
                "telemetry-layer: HTTP metrics only (no span export, no subscriber)"
            }
            Self::TowerResilience => {
                "tower-resilience `CircuitBreakerLayer`, closed (behind `HandleErrorLayer`)"
            }
            Self::AxumResponseCache => "axum-response-cache `CacheLayer`, hit",
            Self::HttpCacheTower => {
                "http-cache-tower-server `ServerCacheLayer` (moka), hit (behind `HandleErrorLayer`)"
            }
            Self::AxumPrometheus => "axum-prometheus `PrometheusMetricLayer`",
            Self::TraceLayer => {
                "tower-http `TraceLayer`, INFO spans + response event formatted by `fmt` into a sink"
            }
        }
    }

    fn parse(name: &str) -> Option<Self> {
        if name == "http-cache-tower-server" {
            return Some(Self::HttpCacheTower);
        }
        ALL.into_iter().find(|v| v.name() == name)
    }

    /// Whether each request carries a distinct query string.
    fn unique_urls(self) -> bool {
        self == Self::Dedup
    }

    /// Whether the measured requests are answered from a cache.
    fn cached(self) -> bool {
        matches!(
            self,
            Self::CacheHit | Self::AxumResponseCache | Self::HttpCacheTower
        )
    }
}

/// What a variant keeps alive and what its validation inspects beyond the handler's call count.
enum Probe {
    None,
    Breaker(CircuitBreaker),
    Dedup(dedup_layer::DedupHandle),
    Telemetry(Box<Telemetry>),
    TelemetryMetrics(Box<Telemetry>),
    Prometheus,
    Fmt(Arc<AtomicU64>),
}

/// One variant's server: its own runtime (one worker thread) and listener.
struct Server {
    variant: Variant,
    addr: SocketAddr,
    /// Calls that reached the handler.
    calls: Arc<AtomicU64>,
    probe: Probe,
    _runtime: Runtime,
}

/// The router every variant wraps: one route, one handler counting its calls.
fn routes(calls: Arc<AtomicU64>) -> Router {
    Router::new().route(
        "/rooms/{room}/messages",
        get(move || {
            calls.fetch_add(1, Ordering::Relaxed);
            async {
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

impl Server {
    fn start(variant: Variant, env: &Env) -> Result<Self> {
        let calls = Arc::new(AtomicU64::new(0));
        let routes = routes(calls.clone());
        let mut dispatch = None;
        let (app, probe) = match variant {
            Variant::Bare => (routes, Probe::None),
            Variant::Identity => (routes.layer(Identity::new()), Probe::None),
            Variant::Breaker => {
                let breaker = CircuitBreaker::builder().name("throughput").build()?;
                (
                    routes.layer(BreakerLayer::new(breaker.clone())),
                    Probe::Breaker(breaker),
                )
            }
            Variant::Dedup => {
                let layer = dedup_layer::DedupLayer::new();
                let handle = layer.handle();
                (routes.layer(layer), Probe::Dedup(handle))
            }
            Variant::CacheHit => (routes.layer(cache_layer::CacheLayer::new()), Probe::None),
            Variant::Telemetry => {
                let telemetry = Telemetry::builder()
                    .service_name("throughput")
                    .install_recorder(false)
                    .install_subscriber(false)
                    .from_env(false)
                    .otlp_endpoint(format!("http://{}", env.sink.addr))
                    .build()?;
                if !telemetry.tracing_enabled() {
                    return Err("telemetry: span export is not enabled".into());
                }
                dispatch = Some(tracing::Dispatch::new(
                    tracing_subscriber::registry().with(
                        telemetry
                            .otel_layer()
                            .map(|layer| layer.with_filter(LevelFilter::INFO)),
                    ),
                ));
                (
                    telemetry.instrument(routes),
                    Probe::Telemetry(Box::new(telemetry)),
                )
            }
            Variant::TelemetryMetrics => {
                let telemetry = Telemetry::builder()
                    .service_name("throughput")
                    .install_recorder(false)
                    .install_subscriber(false)
                    .from_env(false)
                    .build()?;
                (
                    telemetry.instrument(routes),
                    Probe::TelemetryMetrics(Box::new(telemetry)),
                )
            }
            Variant::TowerResilience => {
                let breaker = tower_resilience_circuitbreaker::CircuitBreakerLayer::builder()
                    .failure_rate_threshold(0.5)
                    .sliding_window_size(100)
                    .build()?;
                let app = routes.layer(
                    ServiceBuilder::new()
                        .layer(HandleErrorLayer::new(
                            |_: tower_resilience_circuitbreaker::CircuitBreakerError<
                                Infallible,
                            >| async {
                                StatusCode::SERVICE_UNAVAILABLE
                            },
                        ))
                        .layer(breaker),
                );
                (app, Probe::None)
            }
            Variant::AxumResponseCache => (
                routes.layer(axum_response_cache::CacheLayer::with_lifespan(
                    Duration::from_secs(60),
                )),
                Probe::None,
            ),
            Variant::HttpCacheTower => {
                let app = routes.layer(
                    ServiceBuilder::new()
                        .layer(HandleErrorLayer::new(|_: tower::BoxError| async {
                            StatusCode::INTERNAL_SERVER_ERROR
                        }))
                        .layer(http_cache_tower_server::ServerCacheLayer::new(
                            http_cache::MokaManager::default(),
                        )),
                );
                (app, Probe::None)
            }
            Variant::AxumPrometheus => (
                routes.layer(axum_prometheus::PrometheusMetricLayer::new()),
                Probe::Prometheus,
            ),
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
                let trace = tower_http::trace::TraceLayer::new_for_http()
                    .make_span_with(tower_http::trace::DefaultMakeSpan::new().level(Level::INFO))
                    .on_response(tower_http::trace::DefaultOnResponse::new().level(Level::INFO));
                (routes.layer(trace), Probe::Fmt(written))
            }
        };

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(format!("srv-{}", variant.name()))
            .enable_all()
            .on_thread_start(move || {
                if let Some(dispatch) = &dispatch {
                    // The server's threads live as long as the process; the default stays set on each.
                    std::mem::forget(tracing::dispatcher::set_default(dispatch));
                }
            })
            .build()?;
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let name = variant.name();
        runtime.spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("{name}: server stopped: {e}");
            }
        });
        Ok(Self {
            variant,
            addr,
            calls,
            probe,
            _runtime: runtime,
        })
    }

    fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }
}

// ---------------------------------------------------------------------------------------------------------
// Process-wide set-up shared by the variants

/// What every variant shares: the OTLP sink the telemetry variant exports to, and the global `metrics`
/// recorder (installed for every run, as in a service that exposes `/metrics`).
struct Env {
    sink: OtlpSink,
    prometheus: axum_prometheus::metrics_exporter_prometheus::PrometheusHandle,
    /// Threads that are neither server nor load generator (the OTLP sink).
    excluded_threads: Arc<Mutex<HashSet<u32>>>,
    /// OTLP message sizes measured while validating the telemetry variant.
    span_size: Mutex<Option<SpanSize>>,
    _upkeep: Runtime,
}

#[derive(Clone, Copy)]
struct SpanSize {
    per_span: f64,
    per_export: f64,
}

/// An in-process OTLP/HTTP collector that accepts span exports and drops them.
struct OtlpSink {
    addr: SocketAddr,
    exports: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
    _runtime: Runtime,
}

impl Env {
    fn start() -> Result<Self> {
        let excluded_threads = Arc::new(Mutex::new(HashSet::new()));
        let record = excluded_threads.clone();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("otlp-sink")
            .enable_all()
            .on_thread_start(move || {
                if let (Some(tid), Ok(mut set)) = (current_tid(), record.lock()) {
                    set.insert(tid);
                }
            })
            .build()?;
        let exports = Arc::new(AtomicU64::new(0));
        let bytes = Arc::new(AtomicU64::new(0));
        let (counter, received) = (exports.clone(), bytes.clone());
        let app = Router::new().route(
            "/v1/traces",
            post(move |body: Bytes| {
                counter.fetch_add(1, Ordering::Relaxed);
                received.fetch_add(body.len() as u64, Ordering::Relaxed);
                async move { ([(CONTENT_TYPE, "application/x-protobuf")], Bytes::new()) }
            }),
        );
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        runtime.spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("otlp sink stopped: {e}");
            }
        });

        // axum-prometheus records through the global recorder; its `pair` installs one and spawns the
        // recorder's upkeep on the current runtime, here a small one of its own.
        let upkeep = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("metrics-upkeep")
            .enable_all()
            .build()?;
        let prometheus = {
            let _entered = upkeep.enter();
            axum_prometheus::PrometheusMetricLayer::pair().1
        };
        Ok(Self {
            sink: OtlpSink {
                addr,
                exports,
                bytes,
                _runtime: runtime,
            },
            prometheus,
            excluded_threads,
            span_size: Mutex::new(None),
            _upkeep: upkeep,
        })
    }
}

// ---------------------------------------------------------------------------------------------------------
// CPU accounting from /proc

/// The calling thread's id, from `/proc/thread-self` (a link to `/proc/<pid>/task/<tid>`).
fn current_tid() -> Option<u32> {
    std::fs::read_link("/proc/thread-self")
        .ok()?
        .file_name()?
        .to_str()?
        .parse()
        .ok()
}

/// Nanoseconds on CPU of every live thread of this process.
fn cpu_snapshot() -> HashMap<u32, u64> {
    let mut threads = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return threads;
    };
    for entry in dir.flatten() {
        let Some(tid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let on_cpu = std::fs::read_to_string(entry.path().join("schedstat"))
            .ok()
            .and_then(|s| {
                s.split_whitespace()
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
            });
        if let Some(ns) = on_cpu {
            threads.insert(tid, ns);
        }
    }
    threads
}

/// CPU nanoseconds spent between two snapshots by the threads `select` accepts (threads born in between
/// count from zero).
fn cpu_between(
    before: &HashMap<u32, u64>,
    after: &HashMap<u32, u64>,
    select: impl Fn(u32) -> bool,
) -> u64 {
    after
        .iter()
        .filter(|(tid, _)| select(**tid))
        .map(|(tid, ns)| ns.saturating_sub(before.get(tid).copied().unwrap_or(0)))
        .sum()
}

/// Where the threads run. Pinning keeps the scheduler from moving the server and the generator between
/// sharing one core and having one each in the middle of a run, which changes the cost per request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pinning {
    /// Server threads on CPU 1, load generator and OTLP sink on CPU 0.
    Split,
    /// Everything on CPU 0: server and generator take turns, the server works through full batches.
    Shared,
    /// Wherever the scheduler puts them.
    Off,
}

impl Pinning {
    fn parse(value: &str) -> Option<Self> {
        match value {
            "split" => Some(Self::Split),
            "shared" => Some(Self::Shared),
            "off" => Some(Self::Off),
            _ => None,
        }
    }

    /// Other processes' CPU use (in cores) that leaves the CPUs this run uses alone: with everything on
    /// one CPU, the others may have the rest.
    fn quiet_cores(self) -> f64 {
        let cpus = cpu_count() as f64;
        match self {
            Self::Shared => (cpus - 1.0 - NOISE_CORES).max(NOISE_CORES),
            Self::Split | Self::Off => NOISE_CORES,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::Split => "split: server threads on CPU 1, load generator and OTLP sink on CPU 0",
            Self::Shared => "shared: server threads, load generator and OTLP sink all on CPU 0",
            Self::Off => "off: threads placed by the scheduler",
        }
    }
}

/// Sets the CPU affinity of one thread with `taskset`; threads it creates afterwards inherit it.
fn pin(tid: u32, cpu: usize) -> Result<()> {
    let output = std::process::Command::new("taskset")
        .args(["-p", "-c", &cpu.to_string(), &tid.to_string()])
        .output()
        .map_err(|e| format!("cannot run taskset (use --pin off): {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "taskset failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )
        .into());
    }
    Ok(())
}

/// Busy time of the whole machine (user, nice and system; interrupts excluded, as they are from a thread's
/// run time), in seconds, from `/proc/stat`.
fn machine_busy_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(3)
        .filter_map(|t| t.parse().ok())
        .collect();
    // USER_HZ is 100 on Linux.
    (ticks.len() == 3).then(|| ticks.iter().sum::<u64>() as f64 / 100.0)
}

/// A point in time for telling this process's CPU use from everybody else's.
struct Usage {
    wall: std::time::Instant,
    machine: Option<f64>,
    threads: HashMap<u32, u64>,
}

impl Usage {
    fn now() -> Self {
        Self {
            wall: std::time::Instant::now(),
            machine: machine_busy_seconds(),
            threads: cpu_snapshot(),
        }
    }

    /// Cores used by other processes since `earlier` (`/proc/stat` counts in 10 ms ticks, so short spans
    /// are coarse).
    fn others_since(&self, earlier: &Usage) -> f64 {
        let (Some(now), Some(then)) = (self.machine, earlier.machine) else {
            return f64::NAN;
        };
        let ours = cpu_between(&earlier.threads, &self.threads, |_| true) as f64 / 1e9;
        let wall = (self.wall - earlier.wall).as_secs_f64();
        ((now - then - ours) / wall).max(0.0)
    }
}

/// Watches the machine until other processes leave our CPUs alone (use less than `quiet_cores`) or
/// `max_wait` has passed; returns the time waited beyond the first look.
fn wait_for_quiet(quiet_cores: f64, max_wait: Duration) -> Duration {
    let start = std::time::Instant::now();
    loop {
        let before = Usage::now();
        std::thread::sleep(QUIET_SAMPLE);
        let others = Usage::now().others_since(&before);
        let waited = start.elapsed().saturating_sub(QUIET_SAMPLE);
        if others.is_nan() || others < quiet_cores || waited >= max_wait {
            return waited;
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Load generator

type Sender = SendRequest<Empty<Bytes>>;

async fn connect(addr: SocketAddr) -> Result<Sender> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// Builds the requests of one connection: the same URL every time, or a distinct query string each time.
struct Requests {
    host: HeaderValue,
    fixed: Uri,
    unique: Option<(usize, u64)>,
}

impl Requests {
    fn new(addr: SocketAddr, unique: bool, connection: usize) -> Result<Self> {
        Ok(Self {
            host: HeaderValue::try_from(addr.to_string())?,
            fixed: Uri::from_static(PATH),
            unique: unique.then_some((connection, 0)),
        })
    }

    fn next(&mut self) -> Result<Request<Empty<Bytes>>> {
        let uri = match &mut self.unique {
            None => self.fixed.clone(),
            Some((connection, n)) => {
                *n += 1;
                Uri::try_from(format!("{PATH}?req={connection}-{n}"))?
            }
        };
        let mut request = Request::new(Empty::new());
        *request.uri_mut() = uri;
        request.headers_mut().insert(HOST, self.host.clone());
        Ok(request)
    }
}

/// One response, read to its end.
async fn exchange(
    sender: &mut Sender,
    request: Request<Empty<Bytes>>,
) -> Result<(StatusCode, HeaderMap, Bytes)> {
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok((parts.status, parts.headers, body))
}

/// What one connection saw during a window.
#[derive(Default)]
struct ConnectionResult {
    /// Requests that started after the warm-up and ended inside the window.
    measured: u64,
    latencies_ns: Vec<u64>,
}

async fn drive(
    mut sender: Sender,
    mut requests: Requests,
    window_start: Instant,
    window_end: Instant,
) -> Result<ConnectionResult> {
    let mut result = ConnectionResult::default();
    let expected = body().len();
    while Instant::now() < window_end {
        let request = requests.next()?;
        let started = Instant::now();
        let (status, _, body) = exchange(&mut sender, request).await?;
        let ended = Instant::now();
        if !status.is_success() {
            return Err(format!("answered {status}").into());
        }
        if body.len() != expected {
            return Err(format!("answered {} body bytes instead of {expected}", body.len()).into());
        }
        if started >= window_start && ended <= window_end {
            result.measured += 1;
            if result.latencies_ns.len() < MAX_SAMPLES_PER_CONNECTION {
                result
                    .latencies_ns
                    .push((ended - started).as_nanos() as u64);
            }
        }
    }
    Ok(result)
}

/// One variant's measurement in one round.
#[derive(Clone, Copy, Debug)]
struct Sample {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    /// Server-side CPU time per measured request (every thread but the load generator and the OTLP sink).
    server_cpu_us: f64,
    /// Server-side CPU time over wall time (1.0 = one core busy).
    server_busy: f64,
    /// Load generator's CPU time over wall time.
    generator_busy: f64,
    /// Handler calls per measured request.
    origin_calls: f64,
    /// Cores used by other processes during the window.
    others: f64,
}

struct Settings {
    connections: usize,
    warmup: Duration,
    window: Duration,
}

async fn measure(
    server: &Server,
    env: &Env,
    generator_tid: u32,
    settings: &Settings,
) -> Result<Sample> {
    let mut senders = Vec::with_capacity(settings.connections);
    for _ in 0..settings.connections {
        senders.push(connect(server.addr).await?);
    }
    let window_start = Instant::now() + settings.warmup;
    let window_end = window_start + settings.window;
    let mut tasks = Vec::with_capacity(senders.len());
    for (i, sender) in senders.into_iter().enumerate() {
        let requests = Requests::new(server.addr, server.variant.unique_urls(), i)?;
        tasks.push(tokio::spawn(drive(
            sender,
            requests,
            window_start,
            window_end,
        )));
    }

    tokio::time::sleep_until(window_start).await;
    let before = Usage::now();
    let calls_before = server.calls();
    tokio::time::sleep_until(window_end).await;
    let after = Usage::now();
    let calls_after = server.calls();
    let wall = (after.wall - before.wall).as_secs_f64();
    let (cpu_before, cpu_after) = (&before.threads, &after.threads);

    let mut measured = 0;
    let mut latencies = Vec::new();
    for task in tasks {
        let result = task.await??;
        measured += result.measured;
        latencies.extend(result.latencies_ns);
    }
    if measured == 0 {
        return Err("no request completed inside the window".into());
    }
    let excluded = env
        .excluded_threads
        .lock()
        .map(|set| set.clone())
        .unwrap_or_default();
    let server_ns = cpu_between(cpu_before, cpu_after, |tid| {
        tid != generator_tid && !excluded.contains(&tid)
    });
    let generator_ns = cpu_between(cpu_before, cpu_after, |tid| tid == generator_tid);
    let p50_us = percentile(&mut latencies, 0.50) / 1e3;
    let p99_us = percentile(&mut latencies, 0.99) / 1e3;
    Ok(Sample {
        rps: measured as f64 / settings.window.as_secs_f64(),
        p50_us,
        p99_us,
        server_cpu_us: server_ns as f64 / 1e3 / measured as f64,
        server_busy: server_ns as f64 / 1e9 / wall,
        generator_busy: generator_ns as f64 / 1e9 / wall,
        origin_calls: calls_after.saturating_sub(calls_before) as f64 / measured as f64,
        others: after.others_since(&before),
    })
}

fn percentile(values: &mut [u64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let index = ((values.len() - 1) as f64 * q).round() as usize;
    let (_, value, _) = values.select_nth_unstable(index);
    *value as f64
}

// ---------------------------------------------------------------------------------------------------------
// Validation: each variant does what it is measured for before it is measured

async fn validate(server: &Server, env: &Env) -> Result<()> {
    let name = server.variant.name();
    let fail = |what: String| -> Error { format!("{name}: {what}").into() };
    let mut sender = connect(server.addr).await?;
    let mut requests = Requests::new(server.addr, server.variant.unique_urls(), usize::MAX)?;
    let calls_before = server.calls();
    let fmt_before = match &server.probe {
        Probe::Fmt(written) => written.load(Ordering::Relaxed),
        _ => 0,
    };
    for i in 0..VALIDATION_REQUESTS {
        let (status, headers, body) = exchange(&mut sender, requests.next()?).await?;
        if !status.is_success() {
            return Err(fail(format!("answered {status}")));
        }
        if body != *crate::body() {
            return Err(fail("answered a different body".to_owned()));
        }
        if server.variant == Variant::CacheHit {
            let cache_status = headers
                .get(cache_layer::CACHE_STATUS)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let hit = cache_status.split(';').any(|p| p.trim() == "hit");
            if hit != (i > 0) {
                return Err(fail(format!(
                    "request {i} answered Cache-Status `{cache_status}`"
                )));
            }
        }
    }
    let reached = server.calls() - calls_before;
    let expected = if server.variant.cached() {
        1
    } else {
        VALIDATION_REQUESTS
    };
    if reached != expected {
        return Err(fail(format!(
            "{reached} of {VALIDATION_REQUESTS} requests reached the handler, expected {expected}"
        )));
    }

    match &server.probe {
        Probe::None => {}
        Probe::Breaker(breaker) => {
            if breaker.state() != BreakerState::Closed {
                return Err(fail(format!(
                    "breaker is {:?}, not closed",
                    breaker.state()
                )));
            }
        }
        Probe::Dedup(handle) => {
            // A concurrent burst of distinct URLs: every request must reach the handler, none coalesce.
            let burst = 32;
            let before = server.calls();
            let mut tasks = Vec::new();
            for i in 0..burst {
                let mut sender = connect(server.addr).await?;
                let mut requests = Requests::new(server.addr, true, usize::MAX - 1 - i)?;
                let request = requests.next()?;
                tasks.push(tokio::spawn(
                    async move { exchange(&mut sender, request).await },
                ));
            }
            for task in tasks {
                let (status, _, _) = task.await??;
                if !status.is_success() {
                    return Err(fail(format!("burst request answered {status}")));
                }
            }
            let reached = server.calls() - before;
            if reached != burst as u64 {
                return Err(fail(format!(
                    "{reached} of {burst} distinct concurrent requests reached the handler"
                )));
            }
            if handle.inflight() != 0 || handle.waiters() != 0 {
                return Err(fail("in-flight map not empty after the burst".to_owned()));
            }
        }
        Probe::Telemetry(telemetry) => {
            let exports = env.sink.exports.load(Ordering::Relaxed);
            telemetry.flush().await?;
            if env.sink.exports.load(Ordering::Relaxed) == exports {
                return Err(fail("no span export reached the OTLP sink".to_owned()));
            }
            // Bytes per span and per export, from two exports of 1 and 11 spans, to tell later how many of
            // the measured requests' spans were exported rather than dropped by the SDK's bounded queue.
            let mut sizes = [0u64; 2];
            for (size, spans) in sizes.iter_mut().zip([1, 11]) {
                let before = env.sink.bytes.load(Ordering::Relaxed);
                for _ in 0..spans {
                    exchange(&mut sender, requests.next()?).await?;
                }
                telemetry.flush().await?;
                *size = env.sink.bytes.load(Ordering::Relaxed) - before;
            }
            let per_span = (sizes[1].saturating_sub(sizes[0])) as f64 / 10.0;
            if let Ok(mut size) = env.span_size.lock() {
                *size = Some(SpanSize {
                    per_span,
                    per_export: sizes[0] as f64 - per_span,
                });
            }
            let text = telemetry.prometheus_handle().render();
            if !text.contains("http_server_request_duration_seconds_count") {
                return Err(fail("no request duration metric recorded".to_owned()));
            }
        }
        Probe::TelemetryMetrics(telemetry) => {
            let text = telemetry.prometheus_handle().render();
            if !text.contains("http_server_request_duration_seconds_count") {
                return Err(fail("no request duration metric recorded".to_owned()));
            }
        }
        Probe::Prometheus => {
            if !env.prometheus.render().contains("axum_http_requests_total") {
                return Err(fail("no axum_http_requests_total recorded".to_owned()));
            }
        }
        Probe::Fmt(written) => {
            if written.load(Ordering::Relaxed) == fmt_before {
                return Err(fail("the fmt subscriber wrote nothing".to_owned()));
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// Arguments

struct Args {
    variants: Vec<Variant>,
    rounds: usize,
    seconds: f64,
    warmup: f64,
    connections: usize,
    seed: u64,
    pinning: Pinning,
    quiet_wait: f64,
    out: std::path::PathBuf,
}

const USAGE: &str = "usage: throughput [--variants a,b,c] [--rounds N] [--seconds S] [--connections C] \
                     [--warmup S] [--seed N] [--pin shared|split|off] [--quiet-wait S] [--out PATH]";

fn parse_args() -> Result<Args> {
    let mut args = Args {
        variants: ALL.to_vec(),
        rounds: 7,
        seconds: 2.0,
        warmup: 0.3,
        connections: 32,
        seed: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
        pinning: Pinning::Shared,
        quiet_wait: 3.0,
        out: std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("results/throughput.md"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            println!("{USAGE}\nvariants: {}", ALL.map(Variant::name).join(", "));
            std::process::exit(0);
        }
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--variants" => {
                let mut chosen = vec![Variant::Bare, Variant::Identity];
                for name in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    let v = Variant::parse(name).ok_or_else(|| {
                        format!(
                            "unknown variant `{name}`; known: {}",
                            ALL.map(Variant::name).join(", ")
                        )
                    })?;
                    if !chosen.contains(&v) {
                        chosen.push(v);
                    }
                }
                args.variants = chosen;
            }
            "--rounds" => args.rounds = value.parse()?,
            "--seconds" => args.seconds = value.parse()?,
            "--warmup" => args.warmup = value.parse()?,
            "--connections" => args.connections = value.parse()?,
            "--seed" => args.seed = value.parse()?,
            "--quiet-wait" => args.quiet_wait = value.parse()?,
            "--pin" => {
                args.pinning = Pinning::parse(&value)
                    .ok_or_else(|| format!("--pin takes shared, split or off\n{USAGE}"))?
            }
            "--out" => args.out = value.into(),
            _ => return Err(format!("unknown option {flag}\n{USAGE}").into()),
        }
    }
    if !(1..=50).contains(&args.rounds) {
        return Err("--rounds must be 1..=50".into());
    }
    if !(0.1..=30.0).contains(&args.seconds) {
        return Err("--seconds must be 0.1..=30".into());
    }
    if !(0.0..=10.0).contains(&args.warmup) {
        return Err("--warmup must be 0..=10".into());
    }
    if !(0.0..=60.0).contains(&args.quiet_wait) {
        return Err("--quiet-wait must be 0..=60".into());
    }
    if !(1..=512).contains(&args.connections) {
        return Err("--connections must be 1..=512".into());
    }
    if args.pinning == Pinning::Split && cpu_count() < 2 {
        return Err("--pin split needs 2 CPUs; use --pin shared or off".into());
    }
    Ok(args)
}

/// SplitMix64: enough randomness to shuffle the order of variants, reproducible from `--seed`.
struct Shuffle(u64);

impl Shuffle {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            items.swap(i, j);
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Report

fn median(values: &[f64]) -> f64 {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    }
}

fn column(samples: &[Sample], f: impl Fn(&Sample) -> f64) -> Vec<f64> {
    samples.iter().map(f).collect()
}

/// The smallest and largest of `values`.
fn range(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}

/// Median of each round's `value(variant) / value(bare)`: the two windows of a round are seconds apart, so
/// slow drift of the machine cancels out.
fn paired(samples: &[Sample], bare: &[Sample], value: impl Fn(&Sample) -> f64) -> f64 {
    median(
        &samples
            .iter()
            .zip(bare)
            .map(|(s, b)| value(s) / value(b))
            .collect::<Vec<_>>(),
    )
}

/// Requests per second and latency, medians over rounds.
fn throughput_table(args: &Args, results: &BTreeMap<Variant, Vec<Sample>>) -> String {
    let rps = |v: Variant| {
        results
            .get(&v)
            .map_or(f64::NAN, |s| median(&column(s, |x| x.rps)))
    };
    let (bare_rps, identity_rps) = (rps(Variant::Bare), rps(Variant::Identity));
    let bare = results
        .get(&Variant::Bare)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let mut out = String::from(
        "| variant | req/s (median) | min | max | × bare | × identity | × bare, paired | p50 µs | p99 µs |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for &variant in &args.variants {
        let Some(samples) = results.get(&variant) else {
            continue;
        };
        let r = column(samples, |x| x.rps);
        let (min, max) = range(&r);
        let m = median(&r);
        let _ = writeln!(
            out,
            "| {} | {m:.0} | {min:.0} | {max:.0} | {:.3} | {:.3} | {:.3} | {:.0} | {:.0} |",
            variant.name(),
            m / bare_rps,
            m / identity_rps,
            paired(samples, bare, |x| x.rps),
            median(&column(samples, |x| x.p50_us)),
            median(&column(samples, |x| x.p99_us)),
        );
    }
    out
}

/// Server-side CPU time per request, medians over rounds; ratios are bare's cost over the variant's, so
/// they read like throughput ratios.
fn cost_table(args: &Args, results: &BTreeMap<Variant, Vec<Sample>>) -> String {
    let cpu = |v: Variant| {
        results
            .get(&v)
            .map_or(f64::NAN, |s| median(&column(s, |x| x.server_cpu_us)))
    };
    let (bare_cpu, identity_cpu) = (cpu(Variant::Bare), cpu(Variant::Identity));
    let bare = results
        .get(&Variant::Bare)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let mut out = String::from(
        "| variant | server CPU µs/req (median) | min | max | CPU × bare | CPU × identity | CPU × bare, paired \
         | server busy | generator busy | others' CPU (cores) | handler calls/req |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for &variant in &args.variants {
        let Some(samples) = results.get(&variant) else {
            continue;
        };
        let c = column(samples, |x| x.server_cpu_us);
        let (min, max) = range(&c);
        let m = median(&c);
        let _ = writeln!(
            out,
            "| {} | {m:.2} | {min:.2} | {max:.2} | {:.3} | {:.3} | {:.3} | {:.2} | {:.2} | {:.2} | {:.2} |",
            variant.name(),
            bare_cpu / m,
            identity_cpu / m,
            paired(samples, bare, |x| 1.0 / x.server_cpu_us),
            median(&column(samples, |x| x.server_busy)),
            median(&column(samples, |x| x.generator_busy)),
            median(&column(samples, |x| x.others)),
            median(&column(samples, |x| x.origin_calls)),
        );
    }
    out
}

fn rounds_table(
    args: &Args,
    results: &BTreeMap<Variant, Vec<Sample>>,
    cell: impl Fn(&Sample) -> String,
) -> String {
    let mut out = String::from("| variant |");
    for round in 1..=args.rounds {
        let _ = write!(out, " {round} |");
    }
    out.push_str("\n|---|");
    out.push_str(&"---:|".repeat(args.rounds));
    out.push('\n');
    for &variant in &args.variants {
        let Some(samples) = results.get(&variant) else {
            continue;
        };
        let _ = write!(out, "| {} |", variant.name());
        for s in samples {
            let _ = write!(out, " {} |", cell(s));
        }
        out.push('\n');
    }
    out
}

/// `YYYY-MM-DD HH:MM UTC` from the system clock (days to civil date after Howard Hinnant).
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// CPUs of the machine, as `nproc` counts them when the process starts (pinning narrows what
/// `available_parallelism` reports afterwards).
fn cpu_count() -> usize {
    static CPUS: OnceLock<usize> = OnceLock::new();
    *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// The commit measured, and which of the measured crates had uncommitted changes.
fn source_state() -> String {
    let dir = env!("CARGO_MANIFEST_DIR");
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let Some(head) = git(&["rev-parse", "--short", "HEAD"]) else {
        return "unknown (not a git checkout)".to_owned();
    };
    let dirty: Vec<String> = git(&["status", "--porcelain", "--", "../../crates"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.get(3..))
        .filter_map(|path| path.split('/').nth(1).map(str::to_owned))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if dirty.is_empty() {
        head
    } else {
        format!("{head}, with uncommitted changes in {}", dirty.join(", "))
    }
}

// ---------------------------------------------------------------------------------------------------------

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args = parse_args()?;
    let command = format!(
        "cargo run --release --bin throughput --{}",
        std::env::args()
            .skip(1)
            .map(|a| format!(" {a}"))
            .collect::<String>()
    );
    let settings = Settings {
        connections: args.connections,
        warmup: Duration::from_secs_f64(args.warmup),
        window: Duration::from_secs_f64(args.seconds),
    };
    let per_window = QUIET_SAMPLE.as_secs_f64() + args.warmup + args.seconds;
    let windows = args.variants.len() as f64 * args.rounds as f64;
    eprintln!(
        "{} variants × {} rounds × {per_window:.2} s ≈ {:.0} s of load, at most {:.0} s more waiting for other \
         processes to leave the CPUs alone (plus connection set-up and validation), seed {}",
        args.variants.len(),
        args.rounds,
        windows * per_window,
        windows * args.quiet_wait,
        args.seed
    );

    let generator_tid = current_tid().ok_or("cannot read /proc/thread-self")?;
    let load_before = load_average();
    // Read before anything is pinned or measured: the binary was built from this state.
    let source = source_state();
    let _ = cpu_count();
    // Threads inherit the affinity of the thread that creates them: every runtime and helper thread is made
    // by this one, so pin it where the servers go first, then move the sink's threads and itself.
    match args.pinning {
        Pinning::Split => pin(generator_tid, 1)?,
        Pinning::Shared => pin(generator_tid, 0)?,
        Pinning::Off => {}
    }
    let env = Env::start()?;
    let mut servers = Vec::new();
    for &variant in &args.variants {
        servers.push(Server::start(variant, &env)?);
    }
    if args.pinning == Pinning::Split {
        let sink_threads = env
            .excluded_threads
            .lock()
            .map(|set| set.clone())
            .unwrap_or_default();
        for tid in sink_threads {
            pin(tid, 0)?;
        }
        pin(generator_tid, 0)?;
    }
    let generator = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    for server in &servers {
        generator.block_on(validate(server, &env))?;
        eprintln!("validated {:<22} on {}", server.variant.name(), server.addr);
    }

    let telemetry = servers
        .iter()
        .find(|s| matches!(s.probe, Probe::Telemetry(_)));
    let sink_before = (
        env.sink.bytes.load(Ordering::Relaxed),
        env.sink.exports.load(Ordering::Relaxed),
    );
    let telemetry_calls_before = telemetry.map_or(0, Server::calls);

    let mut results: BTreeMap<Variant, Vec<Sample>> = BTreeMap::new();
    let mut waited = Duration::ZERO;
    let mut shuffle = Shuffle(args.seed);
    let mut order: Vec<usize> = (0..servers.len()).collect();
    for round in 1..=args.rounds {
        shuffle.shuffle(&mut order);
        for &i in &order {
            let server = &servers[i];
            waited += wait_for_quiet(
                args.pinning.quiet_cores(),
                Duration::from_secs_f64(args.quiet_wait),
            );
            let sample = generator
                .block_on(measure(server, &env, generator_tid, &settings))
                .map_err(|e| format!("{} (round {round}): {e}", server.variant.name()))?;
            eprintln!(
                "round {round}/{} {:<22} {:>8.0} req/s  server {:>6.2} µs/req  busy server {:.2} generator {:.2}  \
                 others {:.2}",
                args.rounds,
                server.variant.name(),
                sample.rps,
                sample.server_cpu_us,
                sample.server_busy,
                sample.generator_busy,
                sample.others,
            );
            results.entry(server.variant).or_default().push(sample);
        }
    }
    for server in &servers {
        if let Probe::Breaker(breaker) = &server.probe
            && breaker.state() != BreakerState::Closed
        {
            return Err(format!("breaker ended {:?}, not closed", breaker.state()).into());
        }
    }

    let mut notes = String::new();
    if let Some(server) = telemetry {
        if let Probe::Telemetry(t) = &server.probe {
            generator.block_on(t.flush())?;
        }
        let bytes = env.sink.bytes.load(Ordering::Relaxed) - sink_before.0;
        let exports = env.sink.exports.load(Ordering::Relaxed) - sink_before.1;
        let requests = server.calls() - telemetry_calls_before;
        if let Ok(Some(size)) = env.span_size.lock().map(|s| *s) {
            let spans = (bytes as f64 - exports as f64 * size.per_export) / size.per_span;
            let share = 100.0 * spans / requests.max(1) as f64;
            let _ = writeln!(
                notes,
                "telemetry: the OTLP sink received {exports} exports of {bytes} bytes in all, about {spans:.0} spans of \
                 {:.0} bytes each for {requests} requests served: {share:.0}% of the spans were exported.",
                size.per_span,
            );
        }
    }

    let throughput = throughput_table(&args, &results);
    let cost = cost_table(&args, &results);
    let summary = format!(
        "Throughput, medians over rounds:\n\n{throughput}\nServer-side CPU per request:\n\n{cost}"
    );
    println!("\n{summary}\n{notes}");
    let mut file = String::from("# Served-HTTP throughput\n\n");
    let _ = writeln!(file, "- date: {}", utc_now());
    let _ = writeln!(
        file,
        "- machine: {} CPUs (nproc), {}; load average {load_before} before, {} after",
        cpu_count(),
        cpu_model(),
        load_average()
    );
    let _ = writeln!(file, "- source: {source}");
    let _ = writeln!(file, "- command (in benches/peers): `{command}`");
    let _ = writeln!(
        file,
        "- settings: {} rounds × {} variants, {} s window after {} s warm-up, {} keep-alive connections, seed {}, \
         pinning {}; before each window up to {} s waiting for other processes to use less than {:.1} \
         core (waited {:.0} s in all)",
        args.rounds,
        args.variants.len(),
        args.seconds,
        args.warmup,
        args.connections,
        args.seed,
        args.pinning.describe(),
        args.quiet_wait,
        args.pinning.quiet_cores(),
        waited.as_secs_f64()
    );
    file.push_str("\nEvery variant serves `GET /rooms/lobby/messages`, a fixed ");
    let _ = write!(
        file,
        "{}-byte JSON body with `Cache-Control: public, max-age=60`:\n\n",
        body().len()
    );
    for &variant in &args.variants {
        let _ = writeln!(file, "- `{}`: {}", variant.name(), variant.what());
    }
    file.push_str("\n## Throughput (medians over rounds)\n\n");
    file.push_str(&throughput);
    file.push_str("\n## Server-side CPU per request (medians over rounds)\n\n");
    file.push_str(&cost);
    if !notes.is_empty() {
        file.push('\n');
        file.push_str(&notes);
    }
    file.push_str("\n## req/s per round\n\n");
    file.push_str(&rounds_table(&args, &results, |x| format!("{:.0}", x.rps)));
    file.push_str("\n## Server CPU µs/req per round\n\n");
    file.push_str(&rounds_table(&args, &results, |x| {
        format!("{:.2}", x.server_cpu_us)
    }));
    file.push_str("\nSee README.md for how the figures are taken and how to read them.\n");
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, file)?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}
