//! The server-side service: labels each request, opens its span, and records it when the response
//! body ends or the request is abandoned.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::SystemTime;

use axum::extract::MatchedPath;
use http::header::{CONTENT_LENGTH, HeaderName};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::Body;
use metrics::Gauge;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry::{Key, KeyValue, Value};
use opentelemetry_http::HeaderExtractor;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_service::Service;
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::attributes::SpanName;
use crate::attributes::{MethodLabel, Scheme, protocol_version, redact_query};
use crate::body::{RequestBody, ResponseBody};
use crate::direct::{DirectTracer, RequestFields, UrlPath};
use crate::metrics::{ErrorKind, HttpMetrics, Route, SeriesKey};
use crate::names::{
    ERROR_TYPE, ERROR_TYPE_CLIENT_DISCONNECT, HTTP_REQUEST_METHOD_ORIGINAL,
    HTTP_RESPONSE_STATUS_CODE, URL_QUERY,
};
use crate::span::{RequestSpan, TWIN_SPAN_TARGET, error_status};

static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// A header captured as a span attribute, with its attribute key built once.
#[derive(Clone, Debug)]
pub(crate) struct CapturedHeader {
    pub(crate) name: HeaderName,
    pub(crate) key: opentelemetry::Key,
}

/// State shared by every clone of the layer and service.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) metrics: HttpMetrics,
    pub(crate) propagator: TraceContextPropagator,
    pub(crate) request_headers: Vec<CapturedHeader>,
    pub(crate) response_headers: Vec<CapturedHeader>,
    pub(crate) record_query: bool,
    pub(crate) default_scheme: Scheme,
    pub(crate) trust_forwarded_proto: bool,
    /// Starts request spans directly when set; otherwise they are `tracing` spans.
    pub(crate) tracer: Option<Arc<DirectTracer>>,
    /// Opens a `tracing` twin of each directly started span, for log layers.
    pub(crate) log_request_span: bool,
}

impl Shared {
    fn scheme_of<B>(&self, req: &Request<B>) -> Scheme {
        if let Some(scheme) = req
            .uri()
            .scheme_str()
            .and_then(|s| Scheme::parse(s.as_bytes()))
        {
            return scheme;
        }
        if self.trust_forwarded_proto
            && let Some(scheme) = req
                .headers()
                .get(&X_FORWARDED_PROTO)
                .and_then(|v| Scheme::parse(v.as_bytes()))
        {
            return scheme;
        }
        self.default_scheme
    }
}

/// Tower service recording HTTP server metrics and a span per request; built by
/// [`TelemetryLayer`](crate::TelemetryLayer).
#[derive(Clone, Debug)]
pub struct TelemetryService<S> {
    pub(crate) inner: S,
    pub(crate) shared: Arc<Shared>,
}

impl<S> TelemetryService<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B, ResBody> Service<Request<B>> for TelemetryService<S>
where
    S: Service<Request<RequestBody<B>>, Response = Response<ResBody>>,
    B: Body,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let shared = &self.shared;
        let method = MethodLabel::of(req.method());
        let scheme = shared.scheme_of(&req);
        let version = protocol_version(req.version());
        let route = req.extensions().get::<MatchedPath>().cloned().map(Route);

        let (request_size, counter) = request_size(&req);
        let mut wall_start = SystemTime::UNIX_EPOCH;
        let span = match &shared.tracer {
            Some(tracer) => {
                wall_start = SystemTime::now();
                RequestSpan::Otel(
                    make_otel_span(
                        shared,
                        tracer,
                        &req,
                        wall_start,
                        RequestFields {
                            method,
                            route: route.clone(),
                            path: UrlPath::new(req.uri().path()),
                            scheme,
                            version,
                            attributes: Vec::new(),
                        },
                    ),
                    if shared.log_request_span {
                        make_span(shared, &req, method, scheme, version, route.as_ref(), false)
                    } else {
                        Span::none()
                    },
                )
            }
            None => RequestSpan::Tracing(make_span(
                shared,
                &req,
                method,
                scheme,
                version,
                route.as_ref(),
                true,
            )),
        };

        let active = shared.metrics.active(method, scheme);
        active.increment(1.0);
        let in_flight = InFlight {
            shared: Arc::clone(shared),
            start: Instant::now(),
            wall_start,
            method,
            scheme,
            version,
            route,
            request_size,
            response_bytes: 0,
            status: None,
            error: None,
            active,
            span,
        };

        let req = req.map(|body| RequestBody::new(body, counter));
        let inner = {
            let _entered = in_flight.span.enter();
            self.inner.call(req)
        };
        ResponseFuture {
            inner,
            in_flight: Some(in_flight),
        }
    }
}

/// The request body size as far as it is known before the body is read.
fn request_size<B: Body>(req: &Request<B>) -> (RequestSize, Option<Arc<AtomicU64>>) {
    if let Some(length) = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        return (RequestSize::Known(length), None);
    }
    if let Some(length) = req.body().size_hint().exact() {
        return (RequestSize::Known(length), None);
    }
    let counter = Arc::new(AtomicU64::new(0));
    (RequestSize::Counted(Arc::clone(&counter)), Some(counter))
}

fn make_span<B>(
    shared: &Shared,
    req: &Request<B>,
    method: MethodLabel,
    scheme: Scheme,
    version: &'static str,
    route: Option<&Route>,
    bridged: bool,
) -> Span {
    // No subscriber wants `INFO` spans (none is set, or all filter them out): build nothing. The span macro
    // would still format every field for the `log` crate when `tracing`'s `log` feature is on and no
    // subscriber was ever set, a few hundred instructions a request for records nobody reads as spans.
    if !tracing::level_enabled!(tracing::Level::INFO) {
        return Span::none();
    }
    let route_str = route.map(|r| r.0.as_str());
    // One callsite per target: a span's target is static.
    macro_rules! request_span {
        ($target:expr) => {
            tracing::info_span!(
                target: $target,
                "HTTP request",
                otel.name = SpanName::new(method, route_str).as_str(),
                otel.kind = "server",
                otel.status_code = Empty,
                http.request.method = method.as_str(),
                http.request.method_original = Empty,
                http.route = route_str,
                http.response.status_code = Empty,
                url.path = req.uri().path(),
                url.query = Empty,
                url.scheme = scheme.as_str(),
                network.protocol.version = version,
                error.type = Empty,
            )
        };
    }
    let span = if bridged {
        request_span!("telemetry_layer")
    } else {
        request_span!(TWIN_SPAN_TARGET)
    };
    if span.is_disabled() {
        return span;
    }
    if method == MethodLabel::Other {
        span.record("http.request.method_original", req.method().as_str());
    }
    if shared.record_query
        && let Some(query) = req.uri().query()
    {
        span.record("url.query", redact_query(query).as_str());
    }
    // Only the bridge reads the parent and the captured headers; otherwise the span is for logs.
    if !bridged {
        return span;
    }
    if req.headers().contains_key(&TRACEPARENT) {
        // A malformed header extracts to an empty context, which leaves the span a new root.
        let parent = shared.propagator.extract(&HeaderExtractor(req.headers()));
        let _ = span.set_parent(parent);
    }
    for_captured(req.headers(), &shared.request_headers, |key, value| {
        span.set_attribute(key, value);
    });
    span
}

fn make_otel_span<B>(
    shared: &Shared,
    tracer: &DirectTracer,
    req: &Request<B>,
    start: SystemTime,
    mut fields: RequestFields,
) -> opentelemetry::Context {
    if fields.method == MethodLabel::Other {
        fields.attributes.push(KeyValue::new(
            Key::from_static_str(HTTP_REQUEST_METHOD_ORIGINAL),
            Value::from(req.method().as_str().to_owned()),
        ));
    }
    if shared.record_query
        && let Some(query) = req.uri().query()
    {
        fields.attributes.push(KeyValue::new(
            Key::from_static_str(URL_QUERY),
            Value::from(redact_query(query)),
        ));
    }
    for_captured(req.headers(), &shared.request_headers, |key, value| {
        fields.attributes.push(KeyValue::new(key, value));
    });
    // A malformed header extracts to the current context without a remote span, which leaves the span
    // a root (or a child of the caller's current span, as without the header).
    let parent = if req.headers().contains_key(&TRACEPARENT) {
        shared.propagator.extract(&HeaderExtractor(req.headers()))
    } else {
        opentelemetry::Context::current()
    };
    tracer.start(&parent, start, fields)
}

fn capture_headers(span: &RequestSpan, headers: &HeaderMap, captured: &[CapturedHeader]) {
    match span {
        RequestSpan::Tracing(span) => for_captured(headers, captured, |key, value| {
            span.set_attribute(key, value);
        }),
        RequestSpan::Otel(cx, _) => {
            let span = cx.span();
            for_captured(headers, captured, |key, value| {
                span.set_attribute(KeyValue::new(key, value));
            });
        }
    }
}

/// Calls `record` with the attribute key and the joined non-sensitive values of each captured header
/// present in `headers`.
fn for_captured(
    headers: &HeaderMap,
    captured: &[CapturedHeader],
    mut record: impl FnMut(Key, String),
) {
    for header in captured {
        let mut values = headers
            .get_all(&header.name)
            .iter()
            .filter(|v| !v.is_sensitive())
            .filter_map(|v| v.to_str().ok());
        if let Some(first) = values.next() {
            let mut value = first.to_owned();
            for more in values {
                value.push_str(", ");
                value.push_str(more);
            }
            record(header.key.clone(), value);
        }
    }
}

#[derive(Debug)]
pub(crate) enum RequestSize {
    Known(u64),
    Counted(Arc<AtomicU64>),
}

/// One request's telemetry, from the call until the response body ends. Dropping it records the
/// request, so an abandoned future or body is counted like a finished one.
#[derive(Debug)]
pub(crate) struct InFlight {
    shared: Arc<Shared>,
    start: Instant,
    /// When the span started; its end is this plus the monotonic duration.
    wall_start: SystemTime,
    method: MethodLabel,
    scheme: Scheme,
    version: &'static str,
    route: Option<Route>,
    request_size: RequestSize,
    response_bytes: u64,
    status: Option<StatusCode>,
    error: Option<ErrorKind>,
    active: Gauge,
    pub(crate) span: RequestSpan,
}

impl InFlight {
    pub(crate) fn add_response_bytes(&mut self, bytes: usize) {
        self.response_bytes = self.response_bytes.saturating_add(bytes as u64);
    }

    pub(crate) fn fail(&mut self, error: ErrorKind) {
        if self.error.is_none() {
            self.error = Some(error);
            if let ErrorKind::Named(name) = error {
                self.record_error(name);
            }
        }
    }

    fn on_response<B>(&mut self, response: &Response<B>) {
        let status = response.status();
        self.status = Some(status);
        // An `i64` becomes an integer attribute, as the conventions type it; the bridge would format
        // an unsigned value into a string.
        let code = i64::from(status.as_u16());
        match &self.span {
            RequestSpan::Tracing(span) => {
                span.record(HTTP_RESPONSE_STATUS_CODE, code);
            }
            RequestSpan::Otel(cx, logged) => {
                cx.span().set_attribute(KeyValue::new(
                    Key::from_static_str(HTTP_RESPONSE_STATUS_CODE),
                    Value::I64(code),
                ));
                logged.record(HTTP_RESPONSE_STATUS_CODE, code);
            }
        }
        // Server spans are errors for 5xx only: a 4xx is the client's fault, not the server's.
        if status.is_server_error() {
            self.error = Some(ErrorKind::ServerStatus);
            self.record_error(status.as_str());
        }
        if self.span.is_recording() {
            capture_headers(
                &self.span,
                response.headers(),
                &self.shared.response_headers,
            );
        }
    }
}

impl InFlight {
    /// Sets `error.type` and the error status on the span.
    fn record_error(&self, error_type: &str) {
        match &self.span {
            RequestSpan::Tracing(span) => {
                span.record(ERROR_TYPE, error_type);
                span.record("otel.status_code", "ERROR");
            }
            RequestSpan::Otel(cx, logged) => {
                let span = cx.span();
                span.set_attribute(KeyValue::new(
                    Key::from_static_str(ERROR_TYPE),
                    Value::from(error_type.to_owned()),
                ));
                span.set_status(error_status());
                logged.record(ERROR_TYPE, error_type);
                logged.record("otel.status_code", "ERROR");
            }
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.active.decrement(1.0);
        if self.status.is_none() && self.error.is_none() {
            self.fail(ErrorKind::Named(ERROR_TYPE_CLIENT_DISCONNECT));
        }
        let elapsed = self.start.elapsed();
        let key = SeriesKey {
            method: self.method,
            scheme: self.scheme,
            version: self.version,
            route: self.route.take(),
            status: self.status,
            error: self.error,
        };
        let request_bytes = match &self.request_size {
            RequestSize::Known(n) => *n,
            RequestSize::Counted(counter) => counter.load(Ordering::Relaxed),
        };
        let response_bytes = self.status.is_some().then_some(self.response_bytes);
        self.shared
            .metrics
            .record_request(&key, elapsed, Some(request_bytes), response_bytes);
        if let RequestSpan::Otel(cx, _) = &self.span {
            let end = self
                .wall_start
                .checked_add(elapsed)
                .unwrap_or_else(SystemTime::now);
            cx.span().end_with_timestamp(end);
        }
    }
}

pin_project! {
    /// Response future of [`TelemetryService`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        in_flight: Option<InFlight>,
    }
}

impl<F: std::fmt::Debug> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<ResponseBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = {
            let _entered = this.in_flight.as_ref().map(|f| f.span.enter());
            ready!(this.inner.poll(cx))
        };
        let mut in_flight = this.in_flight.take();
        Poll::Ready(match result {
            Ok(response) => {
                if let Some(in_flight) = in_flight.as_mut() {
                    in_flight.on_response(&response);
                }
                Ok(response.map(|body| ResponseBody::new(body, in_flight)))
            }
            Err(error) => {
                if let Some(in_flight) = in_flight.as_mut() {
                    in_flight.fail(ErrorKind::Named(std::any::type_name::<E>()));
                }
                Err(error)
            }
        })
    }
}
