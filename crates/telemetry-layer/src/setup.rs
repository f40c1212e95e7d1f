//! One-call setup: the Prometheus recorder and `/metrics` route, the OTLP span pipeline configured
//! from the standard `OTEL_*` variables, the tracing subscriber, and the layer bound to all of them.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use http::header::CONTENT_TYPE;
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SpanExporter as _;
use opentelemetry_sdk::trace::{
    BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider, ShouldSample,
};
use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetryLayer;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::direct::{BatchSettings, DirectTracer, SpanQueue};
use crate::error::TelemetryError;
use crate::export::ExportClient;
use crate::histogram::Bounds;
use crate::layer::{TelemetryLayer, TelemetryLayerBuilder};
use crate::metrics::{NativeBuckets, SharedRecorder};
use crate::names::{
    DEFAULT_DURATION_BUCKETS, DEFAULT_SIZE_BUCKETS, HTTP_SERVER_REQUEST_BODY_SIZE,
    HTTP_SERVER_REQUEST_DURATION, HTTP_SERVER_RESPONSE_BODY_SIZE,
};
use crate::otlp::{OtlpExporter, REQUEST_SCOPE};
use crate::span::{RequestEvents, is_twin_span};

/// Content type of the Prometheus text exposition format served by [`Telemetry::metrics_router`].
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4";

const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything telemetry needs, set up by [`Telemetry::builder`]: the layer for the router, the `/metrics`
/// router, and the span pipeline, which is flushed and shut down when this value is dropped (or by
/// [`Telemetry::shutdown`]).
///
/// ```
/// use axum::{Router, routing::get};
/// use telemetry_layer::Telemetry;
///
/// # fn main() -> Result<(), telemetry_layer::TelemetryError> {
/// let telemetry = Telemetry::builder()
///     .service_name("chat")
///     // Doc tests share a process; an application keeps the defaults (global recorder and subscriber).
///     .install_recorder(false)
///     .install_subscriber(false)
///     .build()?;
/// let routes: Router = Router::new().route("/rooms/{id}", get(|| async { "room" }));
/// // The layer goes on the routes and their fallback; `/metrics` is added uninstrumented.
/// let app = telemetry.instrument(routes);
/// // Serve `app`; keep `telemetry` alive until the server stops so spans are flushed at the end.
/// # drop(app);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Telemetry {
    layer: TelemetryLayer,
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
    tracer: Option<SdkTracer>,
    guard: TelemetryGuard,
}

impl Telemetry {
    /// A builder with the defaults documented on each method.
    pub fn builder() -> TelemetryBuilder {
        TelemetryBuilder::default()
    }

    /// The layer to put on the application's `Router` (with `Router::layer`, outermost).
    pub fn layer(&self) -> TelemetryLayer {
        self.layer.clone()
    }

    /// `router` with [`layer`](Self::layer) on its routes and fallback, merged with
    /// [`metrics_router`](Self::metrics_router).
    ///
    /// Equivalent to `telemetry.metrics_router().merge(router.layer(telemetry.layer()))`. Mind the order
    /// when doing it by hand: `Router::merge` keeps the *argument's* default fallback, so
    /// `router.layer(..).merge(metrics_router)` would replace the instrumented 404 fallback with a bare one.
    pub fn instrument<S>(&self, router: Router<S>) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        self.metrics_router().merge(router.layer(self.layer()))
    }

    /// A router serving `GET /metrics` in the Prometheus text format, with every metric recorded
    /// through the `metrics` facade (this crate's and the other layers').
    pub fn metrics_router<S>(&self) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        let exposition = self.exposition();
        Router::new().route(
            "/metrics",
            get(move || {
                let exposition = exposition.clone();
                async move {
                    (
                        [(CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE)],
                        exposition.render(),
                    )
                }
            }),
        )
    }

    /// The whole Prometheus exposition, as `/metrics` of [`metrics_router`](Self::metrics_router) serves it:
    /// every metric recorded through the `metrics` facade, and the HTTP server histograms.
    ///
    /// ```
    /// # fn main() -> Result<(), telemetry_layer::TelemetryError> {
    /// let telemetry = telemetry_layer::Telemetry::builder()
    ///     .install_recorder(false)
    ///     .install_subscriber(false)
    ///     .from_env(false)
    ///     .build()?;
    /// // For example, written to a file or pushed to a gateway instead of served.
    /// let exposition: String = telemetry.render();
    /// # drop(exposition);
    /// # Ok(())
    /// # }
    /// ```
    pub fn render(&self) -> String {
        self.exposition().render()
    }

    fn exposition(&self) -> Exposition {
        Exposition {
            handle: self.handle.clone(),
            layer: self.layer.clone(),
        }
    }

    /// The Prometheus handle of the `metrics` recorder. Its `render` has every metric recorded through the
    /// facade but not the HTTP server histograms, which the layer counts into buckets itself so that their
    /// memory does not grow with the request rate; [`render`](Self::render) has both.
    pub fn prometheus_handle(&self) -> &PrometheusHandle {
        &self.handle
    }

    /// The Prometheus recorder. With `install_recorder(false)`, install it where you need it, for
    /// example `metrics::with_local_recorder(telemetry.recorder(), || ...)` in a test.
    pub fn recorder(&self) -> &PrometheusRecorder {
        &self.recorder
    }

    /// Whether spans are exported (an OTLP endpoint was configured and tracing is not disabled).
    pub fn tracing_enabled(&self) -> bool {
        self.tracer.is_some()
    }

    /// The `tracing` layer that turns spans into OpenTelemetry spans for the OTLP pipeline, for an
    /// application that builds its own subscriber (`install_subscriber(false)`). `None` when spans are
    /// not exported.
    ///
    /// The request spans of [`layer`](Self::layer) do not need it: they are OpenTelemetry spans started
    /// directly. This layer exports the application's `tracing` spans (children of the request span)
    /// and attaches its events to the request span. Give it its own filter if your log filter is
    /// stricter than `INFO`: a disabled span has no OpenTelemetry span and breaks the trace.
    pub fn otel_layer<S>(&self) -> Option<impl tracing_subscriber::Layer<S>>
    where
        S: Subscriber + for<'span> LookupSpan<'span>,
    {
        self.tracer.clone().map(otel_layer)
    }

    /// Exports the spans ended so far, waiting for the collector, without blocking the async runtime.
    ///
    /// # Errors
    ///
    /// [`TelemetryError::Flush`] when the export fails.
    pub async fn flush(&self) -> Result<(), TelemetryError> {
        self.guard.flush().await
    }

    /// Flushes and stops the span pipeline. Dropping `Telemetry` does the same, ignoring errors.
    ///
    /// # Errors
    ///
    /// [`TelemetryError::Flush`] when the final export fails.
    pub fn shutdown(self) -> Result<(), TelemetryError> {
        self.guard.shutdown()
    }

    /// Keeps only the guard, for applications that moved the layer and router out.
    pub fn into_guard(self) -> TelemetryGuard {
        self.guard
    }
}

/// What `/metrics` renders: the recorder's exposition followed by the layer's own histograms.
#[derive(Clone)]
struct Exposition {
    handle: PrometheusHandle,
    layer: TelemetryLayer,
}

impl Exposition {
    fn render(&self) -> String {
        let mut text = self.handle.render();
        self.layer.render_histograms(&mut text);
        text
    }
}

/// The two span pipelines: the SDK's, for the application's spans (through the `tracing` bridge), and
/// the request spans' own.
struct Pipelines {
    provider: SdkTracerProvider,
    tracer: Arc<DirectTracer>,
    requests: Arc<SpanQueue>,
}

/// Flushes and shuts down the span pipelines and stops metric upkeep when dropped.
#[derive(Debug)]
pub struct TelemetryGuard {
    requests: Option<Arc<SpanQueue>>,
    provider: Option<SdkTracerProvider>,
    _upkeep: mpsc::Sender<()>,
}

impl TelemetryGuard {
    /// Exports the spans ended so far; blocks the calling thread until the collector answers.
    ///
    /// # Errors
    ///
    /// [`TelemetryError::Flush`] when the export fails.
    pub fn force_flush(&self) -> Result<(), TelemetryError> {
        flush(self.requests.as_deref(), self.provider.as_ref())
    }

    /// Like [`force_flush`](Self::force_flush), on Tokio's blocking pool so the runtime keeps running.
    ///
    /// # Errors
    ///
    /// [`TelemetryError::Flush`] when the export fails.
    pub async fn flush(&self) -> Result<(), TelemetryError> {
        if self.requests.is_none() && self.provider.is_none() {
            return Ok(());
        }
        let (requests, provider) = (self.requests.clone(), self.provider.clone());
        tokio::task::spawn_blocking(move || flush(requests.as_deref(), provider.as_ref()))
            .await
            .map_err(|e| TelemetryError::Flush(e.to_string()))?
    }

    /// Flushes and stops the span pipelines.
    ///
    /// # Errors
    ///
    /// [`TelemetryError::Flush`] when the final export fails.
    pub fn shutdown(mut self) -> Result<(), TelemetryError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), TelemetryError> {
        // Request spans first: their children are in the SDK's pipeline, and both finish either way.
        let requests = match self.requests.take() {
            Some(queue) => queue.shutdown().map_err(TelemetryError::Flush),
            None => Ok(()),
        };
        let provider = match self.provider.take() {
            Some(provider) => provider
                .shutdown()
                .map_err(|e| TelemetryError::Flush(e.to_string())),
            None => Ok(()),
        };
        requests.and(provider)
    }
}

fn flush(
    requests: Option<&SpanQueue>,
    provider: Option<&SdkTracerProvider>,
) -> Result<(), TelemetryError> {
    let requests = requests.map_or(Ok(()), |queue| {
        queue.force_flush().map_err(TelemetryError::Flush)
    });
    let provider = provider.map_or(Ok(()), |provider| {
        provider
            .force_flush()
            .map_err(|e| TelemetryError::Flush(e.to_string()))
    });
    requests.and(provider)
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        // Nothing to report to at this point; the exporters log their own failures.
        let _ = self.stop();
    }
}

/// Configuration of [`Telemetry`].
#[derive(Debug, Clone)]
#[must_use]
pub struct TelemetryBuilder {
    service_name: String,
    install_recorder: bool,
    install_subscriber: bool,
    log_to_stdout: bool,
    span_level: tracing::Level,
    otlp_endpoint: Option<String>,
    read_env: bool,
    duration_buckets: Vec<f64>,
    size_buckets: Vec<f64>,
    extra_buckets: Vec<(String, Vec<f64>)>,
    upkeep_interval: Duration,
    layer: TelemetryLayerBuilder,
}

impl Default for TelemetryBuilder {
    fn default() -> Self {
        Self {
            service_name: "unknown_service".to_owned(),
            install_recorder: true,
            install_subscriber: true,
            log_to_stdout: false,
            span_level: tracing::Level::INFO,
            otlp_endpoint: None,
            read_env: true,
            duration_buckets: DEFAULT_DURATION_BUCKETS.to_vec(),
            size_buckets: DEFAULT_SIZE_BUCKETS.to_vec(),
            extra_buckets: Vec::new(),
            upkeep_interval: Duration::from_secs(5),
            layer: TelemetryLayerBuilder::default(),
        }
    }
}

impl TelemetryBuilder {
    /// The `service.name` resource attribute of exported spans. `OTEL_SERVICE_NAME` overrides it.
    /// Defaults to `unknown_service`.
    pub fn service_name(mut self, name: impl Into<String>) -> Self {
        self.service_name = name.into();
        self
    }

    /// Installs the Prometheus recorder as the global `metrics` recorder, so every crate's metrics reach
    /// `/metrics`. Turn it off in tests and use [`Telemetry::recorder`] locally. Defaults to `true`.
    pub fn install_recorder(mut self, install: bool) -> Self {
        self.install_recorder = install;
        self
    }

    /// Installs a global `tracing` subscriber with the OpenTelemetry layer (when spans are exported) and
    /// the stdout log layer (when [`log_to_stdout`](Self::log_to_stdout) is on); nothing is installed when
    /// neither is. Turn it off to compose [`Telemetry::otel_layer`] into your own subscriber. Defaults to
    /// `true`.
    pub fn install_subscriber(mut self, install: bool) -> Self {
        self.install_subscriber = install;
        self
    }

    /// Adds a log layer printing events and spans to stdout, filtered by `RUST_LOG` (default `info`).
    /// Its filter does not affect span export. Defaults to `false`.
    pub fn log_to_stdout(mut self, enabled: bool) -> Self {
        self.log_to_stdout = enabled;
        self
    }

    /// The most verbose level of spans exported over OTLP, independent of the log filter. Request spans
    /// are `INFO`. Defaults to `INFO`.
    pub fn span_level(mut self, level: tracing::Level) -> Self {
        self.span_level = level;
        self
    }

    /// The OTLP/HTTP base endpoint (`http://host:4318`); `/v1/traces` is appended. Overrides
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`. Without either (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), no span is
    /// exported. Defaults to none.
    pub fn otlp_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.otlp_endpoint = Some(endpoint.into());
        self
    }

    /// Reads the standard `OTEL_*` variables (`OTEL_EXPORTER_OTLP_ENDPOINT`,
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_EXPORTER_OTLP_PROTOCOL`, `OTEL_EXPORTER_OTLP_HEADERS`,
    /// `OTEL_EXPORTER_OTLP_TIMEOUT`, `OTEL_EXPORTER_OTLP_COMPRESSION`, each also in its `..._TRACES_...`
    /// form, `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_EXPORTER`, `OTEL_SDK_DISABLED`).
    /// It also reads `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` (the sampler of request spans and
    /// of the application's spans) and `OTEL_BSP_*` (batching of request spans). With `false`, only
    /// [`otlp_endpoint`](Self::otlp_endpoint) turns export on, none of these is read, the sampler is
    /// `parentbased_always_on` and batching keeps its defaults; the SDK's batch processor, which exports
    /// the application's `tracing` spans, reads `OTEL_BSP_*` itself either way. Defaults to `true`.
    pub fn from_env(mut self, read: bool) -> Self {
        self.read_env = read;
        self
    }

    /// Buckets of `http.server.request.duration`, in seconds. Defaults to the semantic conventions'
    /// `[0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10]`, which are also the
    /// default for every other histogram recorded through the facade.
    pub fn duration_buckets(mut self, buckets: &[f64]) -> Self {
        self.duration_buckets = buckets.to_vec();
        self
    }

    /// Buckets of the two body-size histograms, in bytes. Defaults to powers of four from 64 B to 16 MiB
    /// (and 0).
    pub fn size_buckets(mut self, buckets: &[f64]) -> Self {
        self.size_buckets = buckets.to_vec();
        self
    }

    /// Buckets for another histogram, by its name as recorded (e.g. `cache_lookup_duration_seconds`).
    pub fn buckets_for_metric(mut self, name: impl Into<String>, buckets: &[f64]) -> Self {
        self.extra_buckets.push((name.into(), buckets.to_vec()));
        self
    }

    /// How often histogram samples are folded into buckets when `/metrics` is not scraped, which bounds
    /// their memory. Defaults to 5 seconds.
    pub fn upkeep_interval(mut self, interval: Duration) -> Self {
        self.upkeep_interval = interval;
        self
    }

    /// The layer's own settings (captured headers, query recording, scheme, ...).
    pub fn layer_config(mut self, layer: TelemetryLayerBuilder) -> Self {
        self.layer = layer;
        self
    }

    /// Sets everything up.
    ///
    /// # Errors
    ///
    /// - [`TelemetryError::InvalidConfig`] for empty or unsorted buckets, an unsupported
    ///   `OTEL_EXPORTER_OTLP_PROTOCOL` (only `http/protobuf` is built in) or
    ///   `OTEL_EXPORTER_OTLP_COMPRESSION` (only `none`), an `https` or malformed endpoint, or a bad layer
    ///   setting;
    /// - [`TelemetryError::RecorderAlreadyInstalled`] / [`TelemetryError::SubscriberAlreadyInstalled`] when
    ///   a global one exists;
    /// - [`TelemetryError::Exporter`] when the OTLP exporter cannot be created.
    pub fn build(self) -> Result<Telemetry, TelemetryError> {
        let recorder = Arc::new(self.prometheus_recorder()?);
        let handle = recorder.handle();

        let pipelines = self.tracer_provider()?;
        let tracer = pipelines.as_ref().map(|p| p.provider.tracer(REQUEST_SCOPE));

        let mut layer = self.layer.clone();
        layer.recorder = Some(Arc::clone(&recorder) as SharedRecorder);
        layer.native = Some(self.native_buckets());
        if self.install_subscriber && self.log_to_stdout {
            layer = layer.log_request_span(true);
        }
        // Request spans are `INFO`: below a stricter span level they are not exported at all.
        layer.tracer = pipelines
            .as_ref()
            .map(|p| Arc::clone(&p.tracer))
            .filter(|_| self.span_level >= tracing::Level::INFO);
        let layer = layer.build()?;

        if self.install_recorder {
            metrics::set_global_recorder(Arc::clone(&recorder))
                .map_err(|_| TelemetryError::RecorderAlreadyInstalled)?;
        }
        if self.install_subscriber && (tracer.is_some() || self.log_to_stdout) {
            let level = tracing_subscriber::filter::LevelFilter::from_level(self.span_level);
            let logs = self.log_to_stdout.then(|| {
                let filter = tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
                tracing_subscriber::fmt::layer().with_filter(filter)
            });
            // With a log layer, each layer gets its own filter so `RUST_LOG` cannot detach traces.
            // Without one, the span level is the only filter and applies globally, which spares every
            // span callback the per-layer filter bookkeeping.
            let (global_level, global_twins, otel_alone, otel_filtered) = match tracer.clone() {
                // No log layer wants the request spans' `tracing` twins: a global filter turns them off
                // at the callsite.
                Some(tracer) if logs.is_none() => (
                    Some(level),
                    Some(tracing_subscriber::filter::filter_fn(not_twin_span)),
                    Some(unfiltered_otel_layer(tracer)),
                    None,
                ),
                Some(tracer) => (
                    None,
                    None,
                    None,
                    Some(otel_layer(tracer).with_filter(level)),
                ),
                None => (None, None, None, None),
            };
            tracing_subscriber::registry()
                .with(global_level)
                .with(global_twins)
                .with(otel_alone)
                .with(otel_filtered)
                .with(logs)
                .try_init()
                .map_err(|_| TelemetryError::SubscriberAlreadyInstalled)?;
            if let Some(pipelines) = &pipelines {
                opentelemetry::global::set_tracer_provider(pipelines.provider.clone());
                opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
            }
        }

        let upkeep = spawn_upkeep(handle.clone(), self.upkeep_interval)?;
        Ok(Telemetry {
            layer,
            recorder,
            handle,
            tracer,
            guard: TelemetryGuard {
                requests: pipelines.as_ref().map(|p| Arc::clone(&p.requests)),
                provider: pipelines.map(|p| p.provider),
                _upkeep: upkeep,
            },
        })
    }

    /// Bounds of the HTTP server histograms the layer keeps itself: the duration and size buckets, or a
    /// `buckets_for_metric` override of their name (the last one given wins, as with the exporter's).
    /// Called after `prometheus_recorder`, which checked every list.
    fn native_buckets(&self) -> NativeBuckets {
        let chosen = |name: &str, default: &[f64]| {
            let buckets = self
                .extra_buckets
                .iter()
                .rev()
                .find(|(metric, _)| metric == name)
                .map_or(default, |(_, buckets)| buckets.as_slice());
            Bounds::new(buckets)
        };
        NativeBuckets {
            duration: chosen(HTTP_SERVER_REQUEST_DURATION, &self.duration_buckets),
            request_size: chosen(HTTP_SERVER_REQUEST_BODY_SIZE, &self.size_buckets),
            response_size: chosen(HTTP_SERVER_RESPONSE_BODY_SIZE, &self.size_buckets),
        }
    }

    fn prometheus_recorder(&self) -> Result<PrometheusRecorder, TelemetryError> {
        let mut builder = PrometheusBuilder::new().with_recommended_naming(true);
        builder = builder
            .set_buckets(&checked_buckets(
                "duration_buckets",
                &self.duration_buckets,
            )?)
            .map_err(|e| invalid("duration_buckets", e))?;
        let overrides = [
            (
                HTTP_SERVER_REQUEST_DURATION,
                "duration_buckets",
                &self.duration_buckets,
            ),
            (
                HTTP_SERVER_REQUEST_BODY_SIZE,
                "size_buckets",
                &self.size_buckets,
            ),
            (
                HTTP_SERVER_RESPONSE_BODY_SIZE,
                "size_buckets",
                &self.size_buckets,
            ),
        ];
        for (name, field, buckets) in overrides {
            builder = builder
                .set_buckets_for_metric(
                    Matcher::Full(name.to_owned()),
                    &checked_buckets(field, buckets)?,
                )
                .map_err(|e| invalid(field, e))?;
        }
        for (name, buckets) in &self.extra_buckets {
            builder = builder
                .set_buckets_for_metric(
                    Matcher::Full(name.clone()),
                    &checked_buckets("buckets_for_metric", buckets)?,
                )
                .map_err(|e| invalid("buckets_for_metric", e))?;
        }
        Ok(builder.build_recorder())
    }

    fn tracer_provider(&self) -> Result<Option<Pipelines>, TelemetryError> {
        let env = |name: &str| {
            if self.read_env {
                std::env::var(name).ok().filter(|v| !v.trim().is_empty())
            } else {
                None
            }
        };
        if env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        match env("OTEL_TRACES_EXPORTER").as_deref().map(str::trim) {
            None | Some("otlp") => {}
            Some("none") => return Ok(None),
            Some(other) => {
                return Err(TelemetryError::InvalidConfig {
                    field: "OTEL_TRACES_EXPORTER",
                    reason: format!("`{other}` is not supported; use `otlp` or `none`"),
                });
            }
        }
        // The builder's base endpoint, else the traces endpoint as is, else the base endpoint from the
        // environment, the last two as the OTLP exporter specification resolves them.
        let target = match (
            &self.otlp_endpoint,
            env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
        ) {
            (Some(base), _) => traces_url(base),
            (None, Some(traces)) => traces.trim().to_owned(),
            (None, None) => match env("OTEL_EXPORTER_OTLP_ENDPOINT") {
                Some(base) => traces_url(&base),
                None => return Ok(None),
            },
        };
        if target.to_ascii_lowercase().starts_with("https:") {
            return Err(TelemetryError::InvalidConfig {
                field: "OTEL_EXPORTER_OTLP_ENDPOINT",
                reason: format!(
                    "`{target}` uses https; the built-in OTLP client speaks plain http (send to a local collector or Jaeger on port 4318)"
                ),
            });
        }
        let endpoint: http::Uri = target.parse().map_err(|e| TelemetryError::InvalidConfig {
            field: "OTEL_EXPORTER_OTLP_ENDPOINT",
            reason: format!("`{target}` is not a valid URL: {e}"),
        })?;
        if endpoint.scheme_str() != Some("http") || endpoint.host().is_none() {
            return Err(TelemetryError::InvalidConfig {
                field: "OTEL_EXPORTER_OTLP_ENDPOINT",
                reason: format!("`{target}` is not an http:// URL"),
            });
        }
        let protocol = env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"));
        if let Some(protocol) = protocol.as_deref().map(str::trim)
            && protocol != "http/protobuf"
        {
            return Err(TelemetryError::InvalidConfig {
                field: "OTEL_EXPORTER_OTLP_PROTOCOL",
                reason: format!("`{protocol}` is not supported; use `http/protobuf` (port 4318)"),
            });
        }
        let compression = env("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION")
            .or_else(|| env("OTEL_EXPORTER_OTLP_COMPRESSION"));
        if let Some(compression) = compression.as_deref().map(str::trim)
            && compression != "none"
        {
            return Err(TelemetryError::InvalidConfig {
                field: "OTEL_EXPORTER_OTLP_COMPRESSION",
                reason: format!("`{compression}` is not supported; spans are sent uncompressed"),
            });
        }
        let headers = env("OTEL_EXPORTER_OTLP_TRACES_HEADERS")
            .or_else(|| env("OTEL_EXPORTER_OTLP_HEADERS"))
            .map(|list| parse_headers(&list))
            .unwrap_or_default();
        let timeout = env("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")
            .or_else(|| env("OTEL_EXPORTER_OTLP_TIMEOUT"))
            .and_then(|ms| ms.trim().parse::<u64>().ok())
            .map_or(DEFAULT_EXPORT_TIMEOUT, Duration::from_millis);

        let client = Arc::new(
            ExportClient::new(timeout).map_err(|e| TelemetryError::Exporter(e.to_string()))?,
        );
        let exporter = OtlpExporter::new(Arc::clone(&client), endpoint.clone(), headers.clone());
        let mut request_exporter = OtlpExporter::new(client, endpoint, headers);

        let service_name = env("OTEL_SERVICE_NAME").unwrap_or_else(|| self.service_name.clone());
        let resource = if self.read_env {
            Resource::builder()
        } else {
            Resource::builder_empty()
        }
        .with_service_name(service_name)
        .build();
        // Request spans and the SDK's spans sample alike: the SDK reads `OTEL_TRACES_SAMPLER` when its
        // configuration is created.
        let sampler: Box<dyn ShouldSample> = if self.read_env {
            opentelemetry_sdk::trace::Config::default().sampler
        } else {
            Box::new(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
        };
        request_exporter.set_resource(&resource);
        let queue = SpanQueue::start(BatchSettings::from_env(env), request_exporter)
            .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
        let provider = SdkTracerProvider::builder()
            .with_resource(resource)
            .with_sampler(sampler.box_clone())
            .with_span_processor(BatchSpanProcessor::builder(exporter).build())
            .build();
        Ok(Some(Pipelines {
            provider,
            tracer: Arc::new(DirectTracer::new(sampler, Arc::clone(&queue))),
            requests: queue,
        }))
    }
}

/// The bridge and the event layer, filtered so that the `tracing` twin of a request span (for log
/// layers) does not become a second OpenTelemetry span.
fn otel_layer<S>(tracer: SdkTracer) -> impl tracing_subscriber::Layer<S>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    unfiltered_otel_layer(tracer).with_filter(tracing_subscriber::filter::filter_fn(not_twin_span))
}

fn unfiltered_otel_layer<S>(tracer: SdkTracer) -> impl tracing_subscriber::Layer<S>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    bridge(tracer).and_then(RequestEvents)
}

fn not_twin_span(meta: &tracing::Metadata<'_>) -> bool {
    !is_twin_span(meta)
}

fn bridge<S>(tracer: SdkTracer) -> OpenTelemetryLayer<S, SdkTracer>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    // Source locations, thread ids and the target cost attributes on every span and say nothing about
    // HTTP.
    tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_tracked_inactivity(false)
}

/// `{base}/v1/traces`, the OTLP/HTTP traces path under a base endpoint.
fn traces_url(base: &str) -> String {
    format!("{}/v1/traces", base.trim().trim_end_matches('/'))
}

/// `OTEL_EXPORTER_OTLP_HEADERS`: `key=value` pairs separated by commas, values percent-encoded. Entries that
/// are not a valid header are skipped.
fn parse_headers(list: &str) -> Vec<(http::HeaderName, http::HeaderValue)> {
    list.split(',')
        .filter_map(|entry| {
            let (name, value) = entry.split_once('=')?;
            let name = http::HeaderName::from_bytes(name.trim().as_bytes()).ok()?;
            let value = http::HeaderValue::from_bytes(&percent_decode(value.trim())).ok()?;
            Some((name, value))
        })
        .collect()
}

fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied(),
            bytes.get(i + 2).copied(),
        ) {
            (b'%', Some(hi), Some(lo)) if hex(hi).is_some() && hex(lo).is_some() => {
                let value = hex(hi).unwrap_or(0) * 16 + hex(lo).unwrap_or(0);
                out.push(value as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

fn checked_buckets(field: &'static str, buckets: &[f64]) -> Result<Vec<f64>, TelemetryError> {
    if buckets.is_empty() {
        return Err(TelemetryError::InvalidConfig {
            field,
            reason: "no buckets given".to_owned(),
        });
    }
    if buckets.iter().any(|b| !b.is_finite()) || buckets.windows(2).any(|w| w[0] >= w[1]) {
        return Err(TelemetryError::InvalidConfig {
            field,
            reason: format!("buckets must be finite and strictly increasing, got {buckets:?}"),
        });
    }
    Ok(buckets.to_vec())
}

fn invalid(field: &'static str, error: impl std::fmt::Display) -> TelemetryError {
    TelemetryError::InvalidConfig {
        field,
        reason: error.to_string(),
    }
}

/// Folds histogram samples into buckets periodically; stops when the returned sender is dropped.
fn spawn_upkeep(
    handle: PrometheusHandle,
    interval: Duration,
) -> Result<mpsc::Sender<()>, TelemetryError> {
    if interval.is_zero() {
        return Err(invalid("upkeep_interval", "must be greater than zero"));
    }
    let (stop, stopped) = mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("metrics-upkeep".to_owned())
        .spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                handle.run_upkeep();
            }
        })
        .map_err(|e| TelemetryError::Exporter(format!("cannot start metric upkeep: {e}")))?;
    Ok(stop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_list_is_split_trimmed_and_percent_decoded() {
        let headers =
            parse_headers(" api-key = s3cr%3Dt%2C1 ,x-tenant=a b, broken, bad name=x,empty=");
        let pairs: Vec<(&str, &[u8])> = headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_bytes()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("api-key", b"s3cr=t,1".as_slice()),
                ("x-tenant", b"a b".as_slice()),
                ("empty", b"".as_slice()),
            ]
        );
        assert_eq!(percent_decode("100%"), b"100%");
        assert_eq!(percent_decode("%zz%4"), b"%zz%4");
    }

    #[test]
    fn traces_path_is_appended_once() {
        assert_eq!(traces_url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(traces_url(" http://c:4318/ "), "http://c:4318/v1/traces");
    }
}
