//! Client side of trace propagation: a span per outgoing request and its W3C `traceparent` injected
//! into the request headers, so the next service continues the trace.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry_http::HeaderInjector;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::attributes::MethodLabel;

/// Layer for HTTP clients (any `Service<http::Request<B>>`, e.g. a hyper-util client): opens a client
/// span (`otel.kind = client`) per request and injects `traceparent`/`tracestate` for it.
///
/// `url.full` is recorded without the query string, which often carries credentials.
///
/// ```
/// use telemetry_layer::TraceClientLayer;
/// use tower::{ServiceBuilder, service_fn};
///
/// let client = ServiceBuilder::new().layer(TraceClientLayer::new()).service(service_fn(
///     |req: http::Request<String>| async move {
///         // The request now carries the `traceparent` of the client span (when tracing is on).
///         Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
///     },
/// ));
/// # drop(client);
/// ```
#[derive(Clone, Debug, Default)]
pub struct TraceClientLayer {
    _private: (),
}

impl TraceClientLayer {
    /// The layer; it has no settings.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S> Layer<S> for TraceClientLayer {
    type Service = TraceClient<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TraceClient {
            inner,
            propagator: TraceContextPropagator::new(),
        }
    }
}

/// Client service built by [`TraceClientLayer`].
#[derive(Clone, Debug)]
pub struct TraceClient<S> {
    inner: S,
    propagator: TraceContextPropagator,
}

impl<S> TraceClient<S> {
    /// The wrapped client.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the inner client.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

struct FullUrl<'a>(&'a http::Uri);

impl std::fmt::Display for FullUrl<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(scheme) = self.0.scheme_str() {
            write!(f, "{scheme}://")?;
        }
        if let Some(authority) = self.0.authority() {
            // Userinfo (`user:password@`) is dropped like the query.
            f.write_str(authority.host())?;
            if let Some(port) = authority.port() {
                write!(f, ":{port}")?;
            }
        }
        f.write_str(self.0.path())
    }
}

impl<S, B, ResBody> Service<Request<B>> for TraceClient<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ClientResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let method = MethodLabel::of(req.method());
        let uri = req.uri();
        let span = tracing::info_span!(
            target: "telemetry_layer",
            "HTTP client request",
            otel.name = method.span_name(),
            otel.kind = "client",
            otel.status_code = Empty,
            http.request.method = method.as_str(),
            http.response.status_code = Empty,
            server.address = uri.host(),
            server.port = uri.port_u16(),
            url.full = %FullUrl(uri),
            error.type = Empty,
        );
        if !span.is_disabled() {
            let cx = span.context();
            self.propagator
                .inject_context(&cx, &mut HeaderInjector(req.headers_mut()));
        }
        let inner = {
            let _entered = span.enter();
            self.inner.call(req)
        };
        ClientResponseFuture { inner, span }
    }
}

pin_project! {
    /// Response future of [`TraceClient`]; the client span ends when the response head arrives.
    pub struct ClientResponseFuture<F> {
        #[pin]
        inner: F,
        span: Span,
    }
}

impl<F: std::fmt::Debug> std::fmt::Debug for ClientResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientResponseFuture")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<F, ResBody, E> Future for ClientResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = {
            let _entered = this.span.enter();
            ready!(this.inner.poll(cx))
        };
        match &result {
            Ok(response) => {
                let status = response.status();
                this.span
                    .record("http.response.status_code", i64::from(status.as_u16()));
                // Client spans are errors for 4xx too: the call did not get what it asked for.
                if status.is_client_error() || status.is_server_error() {
                    this.span.record("error.type", status.as_str());
                    this.span.record("otel.status_code", "ERROR");
                }
            }
            Err(_) => {
                this.span.record("error.type", std::any::type_name::<E>());
                this.span.record("otel.status_code", "ERROR");
            }
        }
        Poll::Ready(result)
    }
}
