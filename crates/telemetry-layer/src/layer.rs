//! [`TelemetryLayer`] and its builder: which headers to capture, whether to record the query, how to
//! tell the scheme, and how many label sets to cache.

use std::sync::Arc;

use http::header::HeaderName;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tower_layer::Layer;

use crate::attributes::Scheme;
use crate::error::TelemetryError;
use crate::metrics::{HttpMetrics, SharedRecorder};
use crate::service::{CapturedHeader, Shared, TelemetryService};

/// Headers that are never captured unless [`TelemetryLayerBuilder::allow_sensitive_headers`] is set.
const SENSITIVE_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
];

/// Tower layer recording OpenTelemetry HTTP server metrics and one span per request.
///
/// Put it on an axum [`Router`](axum::Router) with `Router::layer` so that axum's `MatchedPath` is
/// known when the request reaches it; unmatched requests (the fallback) get no `http.route` at all.
///
/// ```
/// use axum::{Router, routing::get};
/// use telemetry_layer::TelemetryLayer;
///
/// let layer = TelemetryLayer::builder()
///     .capture_request_headers(["x-request-id"])
///     .build()
///     .expect("valid telemetry configuration");
/// let app: Router = Router::new()
///     .route("/users/{id}", get(|| async { "user" }))
///     .layer(layer);
/// ```
///
/// Built alone, the layer registers its instruments with the `metrics` facade's recorder at the time of
/// each first use; [`Telemetry`](crate::Telemetry) builds one bound to its Prometheus recorder.
#[derive(Clone, Debug)]
pub struct TelemetryLayer {
    shared: Arc<Shared>,
}

impl TelemetryLayer {
    /// Appends the histograms the layer keeps itself to a Prometheus exposition.
    pub(crate) fn render_histograms(&self, out: &mut String) {
        self.shared.metrics.render(out);
    }

    /// A builder with the defaults documented on each method.
    pub fn builder() -> TelemetryLayerBuilder {
        TelemetryLayerBuilder::default()
    }
}

impl<S> Layer<S> for TelemetryLayer {
    type Service = TelemetryService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TelemetryService {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// Configuration of a [`TelemetryLayer`].
#[derive(Clone)]
#[must_use]
pub struct TelemetryLayerBuilder {
    request_headers: Vec<String>,
    response_headers: Vec<String>,
    allow_sensitive_headers: bool,
    record_query: bool,
    scheme: Scheme,
    trust_forwarded_proto: bool,
    body_size_metrics: bool,
    max_cached_series: usize,
    pub(crate) recorder: Option<SharedRecorder>,
    pub(crate) native: Option<crate::metrics::NativeBuckets>,
    pub(crate) tracer: Option<Arc<crate::direct::DirectTracer>>,
    log_request_span: bool,
}

impl std::fmt::Debug for TelemetryLayerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelemetryLayerBuilder")
            .field("request_headers", &self.request_headers)
            .field("response_headers", &self.response_headers)
            .field("allow_sensitive_headers", &self.allow_sensitive_headers)
            .field("record_query", &self.record_query)
            .field("scheme", &self.scheme)
            .field("trust_forwarded_proto", &self.trust_forwarded_proto)
            .field("body_size_metrics", &self.body_size_metrics)
            .field("max_cached_series", &self.max_cached_series)
            .field("log_request_span", &self.log_request_span)
            .finish_non_exhaustive()
    }
}

impl Default for TelemetryLayerBuilder {
    fn default() -> Self {
        Self {
            request_headers: Vec::new(),
            response_headers: Vec::new(),
            allow_sensitive_headers: false,
            record_query: false,
            scheme: Scheme::Http,
            trust_forwarded_proto: false,
            body_size_metrics: true,
            max_cached_series: 4096,
            recorder: None,
            native: None,
            tracer: None,
            log_request_span: false,
        }
    }
}

impl TelemetryLayerBuilder {
    /// Request headers recorded on the span as `http.request.header.<name>` (lower case). Only these are
    /// captured. `Authorization`, `Proxy-Authorization`, `Cookie` and `Set-Cookie` are refused by
    /// [`build`](Self::build) unless [`allow_sensitive_headers`](Self::allow_sensitive_headers) is set, and
    /// values marked sensitive (`HeaderValue::set_sensitive`) are always skipped. Defaults to none.
    pub fn capture_request_headers<I, H>(mut self, headers: I) -> Self
    where
        I: IntoIterator<Item = H>,
        H: Into<String>,
    {
        self.request_headers = headers.into_iter().map(Into::into).collect();
        self
    }

    /// Response headers recorded on the span as `http.response.header.<name>`, with the same rules as
    /// [`capture_request_headers`](Self::capture_request_headers). Defaults to none.
    pub fn capture_response_headers<I, H>(mut self, headers: I) -> Self
    where
        I: IntoIterator<Item = H>,
        H: Into<String>,
    {
        self.response_headers = headers.into_iter().map(Into::into).collect();
        self
    }

    /// Lets the capture lists name credential headers (`Authorization`, `Cookie`, ...). Defaults to `false`.
    pub fn allow_sensitive_headers(mut self, allow: bool) -> Self {
        self.allow_sensitive_headers = allow;
        self
    }

    /// Records the query string as `url.query` on the span, with the values of signature parameters
    /// (`sig`, `Signature`, `X-Amz-Signature`, ...) replaced by `REDACTED`. Defaults to `false`: query
    /// strings often carry tokens.
    pub fn record_query(mut self, record: bool) -> Self {
        self.record_query = record;
        self
    }

    /// Labels requests `url.scheme="https"` instead of `http`, for servers behind TLS termination in the
    /// same process. Defaults to `false`.
    pub fn https(mut self, https: bool) -> Self {
        self.scheme = if https { Scheme::Https } else { Scheme::Http };
        self
    }

    /// Takes `url.scheme` from `X-Forwarded-Proto` (only the values `http` and `https`) when a trusted
    /// proxy sets it. Defaults to `false`.
    pub fn trust_forwarded_proto(mut self, trust: bool) -> Self {
        self.trust_forwarded_proto = trust;
        self
    }

    /// Records `http.server.request.body.size` and `http.server.response.body.size`. Defaults to `true`.
    pub fn body_size_metrics(mut self, enabled: bool) -> Self {
        self.body_size_metrics = enabled;
        self
    }

    /// How many label sets (method, route, status, ...) keep their metric handles cached. Past that,
    /// handles are looked up in the recorder per request. Defaults to 4096.
    pub fn max_cached_series(mut self, max: usize) -> Self {
        self.max_cached_series = max;
        self
    }

    /// When [`Telemetry`](crate::Telemetry) exports spans, the request span is an OpenTelemetry span the
    /// layer records itself, and no `tracing` span exists for it. With this set, the layer also opens a
    /// `tracing` span per request (target `telemetry_layer::request`, the same fields) so that log layers
    /// show the request's fields on the lines logged while it is handled. [`Telemetry::otel_layer`]
    /// filters it out, so it is never exported twice. It costs about 3,000 instructions per request.
    /// `Telemetry` turns it on with `log_to_stdout(true)`; without a tracer it changes nothing. Defaults to
    /// `false`.
    ///
    /// [`Telemetry::otel_layer`]: crate::Telemetry::otel_layer
    pub fn log_request_span(mut self, enabled: bool) -> Self {
        self.log_request_span = enabled;
        self
    }

    /// Builds the layer.
    ///
    /// # Errors
    ///
    /// [`TelemetryError::InvalidConfig`] when a captured header name is not a valid header name, or
    /// names a credential header without [`allow_sensitive_headers`](Self::allow_sensitive_headers).
    pub fn build(self) -> Result<TelemetryLayer, TelemetryError> {
        let request_headers = captured(
            "capture_request_headers",
            "http.request.header.",
            &self.request_headers,
            self.allow_sensitive_headers,
        )?;
        let response_headers = captured(
            "capture_response_headers",
            "http.response.header.",
            &self.response_headers,
            self.allow_sensitive_headers,
        )?;
        let shared = Shared {
            metrics: HttpMetrics::new(
                self.recorder,
                self.native,
                self.max_cached_series,
                self.body_size_metrics,
            ),
            propagator: TraceContextPropagator::new(),
            request_headers,
            response_headers,
            record_query: self.record_query,
            default_scheme: self.scheme,
            trust_forwarded_proto: self.trust_forwarded_proto,
            tracer: self.tracer,
            log_request_span: self.log_request_span,
        };
        Ok(TelemetryLayer {
            shared: Arc::new(shared),
        })
    }
}

fn captured(
    field: &'static str,
    prefix: &str,
    names: &[String],
    allow_sensitive: bool,
) -> Result<Vec<CapturedHeader>, TelemetryError> {
    names
        .iter()
        .map(|name| {
            let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                TelemetryError::InvalidConfig {
                    field,
                    reason: format!("`{name}` is not a valid header name"),
                }
            })?;
            if !allow_sensitive && SENSITIVE_HEADERS.contains(&header.as_str()) {
                return Err(TelemetryError::InvalidConfig {
                    field,
                    reason: format!(
                        "`{header}` carries credentials; call `allow_sensitive_headers(true)` to record it"
                    ),
                });
            }
            let key = opentelemetry::Key::from(format!("{prefix}{}", header.as_str()));
            Ok(CapturedHeader { name: header, key })
        })
        .collect()
}
