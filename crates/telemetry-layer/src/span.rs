//! The request span: a span recorded by [`DirectTracer`](crate::direct::DirectTracer) when the layer has
//! one, else a `tracing` span for whatever subscriber is installed.
//!
//! The direct span skips the `tracing` bridge (registry slot, field visitors, one string copy per
//! attribute, context activation on each enter and exit). Its context is attached while the inner
//! service runs, so `opentelemetry::Context::current()` in handlers sees it, `tracing` spans opened
//! there take it as parent (the bridge falls back to the current OpenTelemetry context), and
//! [`RequestEvents`] attaches `tracing` events emitted outside any `tracing` span to it.

use opentelemetry::trace::{Status, TraceContextExt as _};
use opentelemetry::{Context as OtelContext, ContextGuard, Key, KeyValue, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// The span of one request.
#[derive(Debug)]
pub(crate) enum RequestSpan {
    /// A `tracing` span (possibly disabled), used when the layer has no tracer of its own.
    Tracing(tracing::Span),
    /// The context holding the direct span, and a `tracing` span of the same request for
    /// subscribers other than the bridge (a log layer), which the bridge filters out (see
    /// [`is_twin_span`]); `Span::none()` unless the layer was built with `log_request_span(true)`.
    Otel(OtelContext, tracing::Span),
}

/// Keeps the request span current while held.
pub(crate) enum Entered<'a> {
    /// The request has no span (no subscriber wants one): nothing to enter.
    Nothing,
    Tracing {
        _entered: tracing::span::Entered<'a>,
    },
    Otel {
        _guard: ContextGuard,
        _entered: tracing::span::Entered<'a>,
    },
}

impl RequestSpan {
    pub(crate) fn enter(&self) -> Entered<'_> {
        match self {
            Self::Tracing(span) if span.is_none() => Entered::Nothing,
            Self::Tracing(span) => Entered::Tracing {
                _entered: span.enter(),
            },
            Self::Otel(cx, span) => Entered::Otel {
                _guard: cx.clone().attach(),
                _entered: span.enter(),
            },
        }
    }

    /// Whether attributes recorded on the span are kept.
    pub(crate) fn is_recording(&self) -> bool {
        match self {
            Self::Tracing(span) => !span.is_disabled(),
            Self::Otel(cx, _) => cx.span().is_recording(),
        }
    }
}

/// The target of the `tracing` twin of a request span started directly (under [`SPAN_TARGET`], so log
/// filters naming that target cover it).
///
/// [`SPAN_TARGET`]: crate::names::SPAN_TARGET
pub(crate) const TWIN_SPAN_TARGET: &str = "telemetry_layer::request";

/// Whether `meta` is the `tracing` twin of a request span started directly, which the bridge must not
/// turn into a second OpenTelemetry span.
pub(crate) fn is_twin_span(meta: &tracing::Metadata<'_>) -> bool {
    meta.is_span() && meta.target() == TWIN_SPAN_TARGET
}

/// Sets an error status with no description, as the bridge does for `otel.status_code = "ERROR"`.
pub(crate) fn error_status() -> Status {
    Status::error("")
}

/// `tracing` layer attaching events emitted outside any `tracing` span to the current OpenTelemetry
/// span (a request span started directly), the way the bridge attaches events to their `tracing` span.
#[derive(Debug, Default)]
pub(crate) struct RequestEvents;

impl<S> Layer<S> for RequestEvents
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        // Events with a `tracing` span are the bridge's.
        if event.parent().is_some() || !event.is_contextual() || ctx.lookup_current().is_some() {
            return;
        }
        let cx = OtelContext::current();
        if !cx.has_active_span() {
            return;
        }
        let span = cx.span();
        if !span.is_recording() {
            return;
        }
        let meta = event.metadata();
        let mut fields = EventFields {
            name: None,
            attributes: vec![
                KeyValue::new("level", meta.level().as_str()),
                KeyValue::new("target", Value::String(meta.target().to_owned().into())),
            ],
        };
        event.record(&mut fields);
        let name = fields.name.unwrap_or_else(|| meta.name().to_owned());
        span.add_event(name, fields.attributes);
        if *meta.level() == tracing::Level::ERROR {
            span.set_status(error_status());
        }
    }
}

struct EventFields {
    name: Option<String>,
    attributes: Vec<KeyValue>,
}

impl EventFields {
    fn push(&mut self, field: &Field, value: Value) {
        self.attributes
            .push(KeyValue::new(Key::from_static_str(field.name()), value));
    }
}

impl Visit for EventFields {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.push(field, Value::F64(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.push(field, Value::I64(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        match i64::try_from(value) {
            Ok(value) => self.push(field, Value::I64(value)),
            Err(_) => self.push(field, Value::String(value.to_string().into())),
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.push(field, Value::Bool(value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.name = Some(value.to_owned());
        } else {
            self.push(field, Value::String(value.to_owned().into()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.name = Some(text);
        } else {
            self.push(field, Value::String(text.into()));
        }
    }
}
