//! Request spans recorded without the SDK's span machinery, and exported over OTLP by a batching
//! thread of their own.
//!
//! A request span has a fixed shape: a handful of attributes whose values the layer already holds.
//! The SDK would take them as a vector of owned `KeyValue`s, copy the route and path into fresh strings,
//! move a large `SpanData` through a channel and encode every attribute generically. Here
//! [`DirectTracer`] keeps them in typed fields of a [`SpanRecord`], names the span only when it is
//! encoded, and hands finished records to a [`SpanQueue`], whose thread encodes them straight into the
//! OTLP protobuf.
//!
//! The span placed in the request's context ([`LiveSpan`]) implements the OpenTelemetry `Span` API, so
//! handlers, the `tracing` bridge and the client layer see an ordinary span: children take it as their
//! parent, and attributes, events, links, status and a new name set on it are exported, within the
//! SDK's default span limits. Sampling uses the SDK's samplers, configured as the SDK configures them
//! (`OTEL_TRACES_SAMPLER`), and batching follows the `OTEL_BSP_*` settings.

use std::borrow::Cow;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use opentelemetry::trace::{
    Event, Link, SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceId,
};
use opentelemetry::{Context as OtelContext, KeyValue, Value};
use opentelemetry_sdk::trace::{SamplingDecision, ShouldSample};

use crate::attributes::{MethodLabel, Scheme};
use crate::metrics::Route;
use crate::names::HTTP_RESPONSE_STATUS_CODE;
use crate::otlp::OtlpExporter;

/// One request span: the typed request attributes, what was recorded on it, and its timing.
#[derive(Debug)]
pub(crate) struct SpanRecord {
    pub(crate) context: SpanContext,
    pub(crate) parent_span_id: SpanId,
    pub(crate) parent_is_remote: bool,
    pub(crate) method: MethodLabel,
    pub(crate) scheme: Scheme,
    pub(crate) version: &'static str,
    pub(crate) start: SystemTime,
    pub(crate) end: SystemTime,
    pub(crate) route: Option<Route>,
    pub(crate) path: UrlPath,
    pub(crate) status_code: Option<i64>,
    /// Every other attribute, in the order it was set.
    pub(crate) attributes: Vec<KeyValue>,
    /// What most request spans never get, kept apart so that a record stays small to move.
    pub(crate) extras: Option<Box<Extras>>,
}

/// Paths up to this many bytes are kept in the record itself.
const INLINE_PATH: usize = 54;

/// The request path, in place when short: the record is freed on the export thread, and a path that
/// never had an allocation of its own costs neither thread an allocator call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum UrlPath {
    Inline { len: u8, bytes: [u8; INLINE_PATH] },
    Heap(Box<str>),
}

impl UrlPath {
    pub(crate) fn new(path: &str) -> Self {
        match u8::try_from(path.len()) {
            Ok(len) if path.len() <= INLINE_PATH => {
                let mut bytes = [0; INLINE_PATH];
                bytes[..path.len()].copy_from_slice(path.as_bytes());
                Self::Inline { len, bytes }
            }
            _ => Self::Heap(path.into()),
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        match self {
            // Copied whole from a `&str`, so the bytes are UTF-8.
            Self::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default()
            }
            Self::Heap(path) => path,
        }
    }
}

/// The parts of a [`SpanRecord`] that only some spans have.
#[derive(Debug, Default)]
pub(crate) struct Extras {
    /// A name set with `update_name`; otherwise the span is named `{method} {route}`.
    pub(crate) name: Option<Cow<'static, str>>,
    pub(crate) status: Status,
    pub(crate) dropped_attributes: u32,
    pub(crate) events: Vec<Event>,
    pub(crate) dropped_events: u32,
    pub(crate) links: Vec<Link>,
    pub(crate) dropped_links: u32,
}

impl SpanRecord {
    /// The span name in at most two parts: a name set by the application, or the method's span name
    /// and the route, to be joined by a space.
    pub(crate) fn name_parts(&self) -> (&str, Option<&str>) {
        match self.extras.as_ref().and_then(|e| e.name.as_deref()) {
            Some(name) => (name, None),
            None => (
                self.method.span_name(),
                self.route.as_ref().map(|r| r.0.as_str()),
            ),
        }
    }

    fn extras(&mut self) -> &mut Extras {
        self.extras.get_or_insert_with(Box::default)
    }
}

/// The SDK's default span limits, which the SDK's own spans get too.
const MAX_ATTRIBUTES: usize = 128;
const MAX_EVENTS: usize = 128;
const MAX_LINKS: usize = 128;
const MAX_ATTRIBUTES_PER_EVENT: usize = 128;
const MAX_ATTRIBUTES_PER_LINK: usize = 128;

/// What the layer knows of a request when its span starts.
pub(crate) struct RequestFields {
    pub(crate) method: MethodLabel,
    pub(crate) route: Option<Route>,
    pub(crate) path: UrlPath,
    pub(crate) scheme: Scheme,
    pub(crate) version: &'static str,
    /// `http.request.method_original`, `url.query` and captured request headers.
    pub(crate) attributes: Vec<KeyValue>,
}

/// A random, valid trace id from the thread's generator (the SDK's ids are not cryptographic either).
fn new_trace_id() -> TraceId {
    loop {
        let id = fastrand::u128(..);
        if id != 0 {
            return TraceId::from(id);
        }
    }
}

/// A random, valid span id.
fn new_span_id() -> SpanId {
    loop {
        let id = fastrand::u64(..);
        if id != 0 {
            return SpanId::from(id);
        }
    }
}

/// Starts request spans as [`LiveSpan`]s feeding a [`SpanQueue`].
#[derive(Debug)]
pub(crate) struct DirectTracer {
    sampler: Box<dyn ShouldSample>,
    queue: Arc<SpanQueue>,
}

impl DirectTracer {
    pub(crate) fn new(sampler: Box<dyn ShouldSample>, queue: Arc<SpanQueue>) -> Self {
        Self { sampler, queue }
    }

    /// Starts a server span for the request described by `fields` under `parent`, and returns `parent`
    /// with that span active.
    pub(crate) fn start(
        &self,
        parent: &OtelContext,
        start: SystemTime,
        fields: RequestFields,
    ) -> OtelContext {
        let parent_span = parent.span();
        let parent_context = parent_span.span_context();
        let has_parent = parent.has_active_span() && parent_context.is_valid();
        let (trace_id, parent_span_id, parent_is_remote) = if has_parent {
            (
                parent_context.trace_id(),
                parent_context.span_id(),
                parent_context.is_remote(),
            )
        } else {
            (new_trace_id(), SpanId::INVALID, false)
        };
        // The samplers the SDK configures from the environment do not read the name: the method stands
        // for it rather than assembling `{method} {route}` for every request.
        let sampling = self.sampler.should_sample(
            Some(parent),
            trace_id,
            fields.method.span_name(),
            &SpanKind::Server,
            &[],
            &[],
        );
        let flags = match sampling.decision {
            SamplingDecision::RecordAndSample => TraceFlags::SAMPLED,
            SamplingDecision::RecordOnly | SamplingDecision::Drop => TraceFlags::default(),
        };
        let context = SpanContext::new(trace_id, new_span_id(), flags, false, sampling.trace_state);
        let record = (sampling.decision != SamplingDecision::Drop).then(|| {
            let mut attributes = fields.attributes;
            attributes.extend(sampling.attributes);
            SpanRecord {
                context: context.clone(),
                parent_span_id,
                parent_is_remote,
                method: fields.method,
                scheme: fields.scheme,
                version: fields.version,
                start,
                end: start,
                route: fields.route,
                path: fields.path,
                status_code: None,
                attributes,
                extras: None,
            }
        });
        parent.with_span(LiveSpan {
            context,
            record,
            queue: Arc::clone(&self.queue),
        })
    }
}

/// The request span as the OpenTelemetry API sees it. Ending it (or dropping it unended) queues its
/// record for export when it is sampled.
#[derive(Debug)]
pub(crate) struct LiveSpan {
    context: SpanContext,
    /// `None` for a span the sampler dropped, and once ended.
    record: Option<SpanRecord>,
    queue: Arc<SpanQueue>,
}

fn count(value: usize) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

impl opentelemetry::trace::Span for LiveSpan {
    fn add_event_with_timestamp<T>(
        &mut self,
        name: T,
        timestamp: SystemTime,
        mut attributes: Vec<KeyValue>,
    ) where
        T: Into<Cow<'static, str>>,
    {
        let Some(record) = &mut self.record else {
            return;
        };
        let extras = record.extras();
        if extras.events.len() < MAX_EVENTS {
            let dropped = attributes.len().saturating_sub(MAX_ATTRIBUTES_PER_EVENT);
            attributes.truncate(MAX_ATTRIBUTES_PER_EVENT);
            extras
                .events
                .push(Event::new(name, timestamp, attributes, count(dropped)));
        } else {
            extras.dropped_events = extras.dropped_events.saturating_add(1);
        }
    }

    fn span_context(&self) -> &SpanContext {
        &self.context
    }

    fn is_recording(&self) -> bool {
        self.record.is_some()
    }

    fn set_attribute(&mut self, attribute: KeyValue) {
        let Some(record) = &mut self.record else {
            return;
        };
        if let (HTTP_RESPONSE_STATUS_CODE, Value::I64(code)) =
            (attribute.key.as_str(), &attribute.value)
        {
            record.status_code = Some(*code);
        } else if record.attributes.len() < MAX_ATTRIBUTES {
            record.attributes.push(attribute);
        } else {
            let extras = record.extras();
            extras.dropped_attributes = extras.dropped_attributes.saturating_add(1);
        }
    }

    fn set_status(&mut self, status: Status) {
        if let Some(record) = &mut self.record {
            let extras = record.extras();
            if status > extras.status {
                extras.status = status;
            }
        }
    }

    fn update_name<T>(&mut self, new_name: T)
    where
        T: Into<Cow<'static, str>>,
    {
        if let Some(record) = &mut self.record {
            record.extras().name = Some(new_name.into());
        }
    }

    fn add_link(&mut self, span_context: SpanContext, mut attributes: Vec<KeyValue>) {
        let Some(record) = &mut self.record else {
            return;
        };
        let extras = record.extras();
        if extras.links.len() < MAX_LINKS {
            let dropped = attributes.len().saturating_sub(MAX_ATTRIBUTES_PER_LINK);
            attributes.truncate(MAX_ATTRIBUTES_PER_LINK);
            extras
                .links
                .push(Link::new(span_context, attributes, count(dropped)));
        } else {
            extras.dropped_links = extras.dropped_links.saturating_add(1);
        }
    }

    fn end_with_timestamp(&mut self, timestamp: SystemTime) {
        if let Some(mut record) = self.record.take() {
            record.end = timestamp;
            if record.context.is_sampled() {
                self.queue.push(record);
            }
        }
    }
}

impl Drop for LiveSpan {
    fn drop(&mut self) {
        if self.record.is_some() {
            opentelemetry::trace::Span::end(self);
        }
    }
}

/// Batching settings, as the SDK's batch span processor reads them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BatchSettings {
    /// Spans held at most; more are dropped and counted.
    pub(crate) max_queue: usize,
    /// Spans per export request; a full batch is exported at once.
    pub(crate) max_batch: usize,
    /// The longest a span waits for its batch to fill.
    pub(crate) delay: Duration,
    /// The longest a flush waits for its export.
    pub(crate) flush_timeout: Duration,
}

impl Default for BatchSettings {
    fn default() -> Self {
        use opentelemetry_sdk::trace::{
            OTEL_BSP_EXPORT_TIMEOUT_DEFAULT, OTEL_BSP_MAX_EXPORT_BATCH_SIZE_DEFAULT,
            OTEL_BSP_MAX_QUEUE_SIZE_DEFAULT, OTEL_BSP_SCHEDULE_DELAY_DEFAULT,
        };
        Self {
            max_queue: OTEL_BSP_MAX_QUEUE_SIZE_DEFAULT,
            max_batch: OTEL_BSP_MAX_EXPORT_BATCH_SIZE_DEFAULT,
            delay: OTEL_BSP_SCHEDULE_DELAY_DEFAULT,
            flush_timeout: OTEL_BSP_EXPORT_TIMEOUT_DEFAULT,
        }
    }
}

impl BatchSettings {
    /// The defaults, overridden by `OTEL_BSP_MAX_QUEUE_SIZE`, `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`,
    /// `OTEL_BSP_SCHEDULE_DELAY` and `OTEL_BSP_EXPORT_TIMEOUT` (milliseconds) as `env` returns them.
    /// Unparsable or zero values keep the default; a batch is never larger than the queue.
    pub(crate) fn from_env(env: impl Fn(&str) -> Option<String>) -> Self {
        use opentelemetry_sdk::trace::{
            OTEL_BSP_EXPORT_TIMEOUT, OTEL_BSP_MAX_EXPORT_BATCH_SIZE, OTEL_BSP_MAX_QUEUE_SIZE,
            OTEL_BSP_SCHEDULE_DELAY,
        };
        let number = |name: &str| {
            env(name)
                .and_then(|v| v.trim().parse::<u64>().ok())
                .filter(|n| *n > 0)
        };
        let defaults = Self::default();
        let max_queue = number(OTEL_BSP_MAX_QUEUE_SIZE)
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(defaults.max_queue);
        let max_batch = number(OTEL_BSP_MAX_EXPORT_BATCH_SIZE)
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(defaults.max_batch)
            .min(max_queue);
        Self {
            max_queue,
            max_batch,
            delay: number(OTEL_BSP_SCHEDULE_DELAY).map_or(defaults.delay, Duration::from_millis),
            flush_timeout: number(OTEL_BSP_EXPORT_TIMEOUT)
                .map_or(defaults.flush_timeout, Duration::from_millis),
        }
    }
}

#[derive(Debug)]
struct QueueState {
    spans: Vec<SpanRecord>,
    /// Spans refused because the queue was full, since the last export reported them.
    dropped: u64,
    flush_requested: u64,
    flush_done: u64,
    /// The outcome of the export that completed flush number `flush_done`.
    last_result: Result<(), String>,
    shut_down: bool,
}

/// Finished request spans waiting for export, bounded by [`BatchSettings::max_queue`], and the thread
/// exporting them.
#[derive(Debug)]
pub(crate) struct SpanQueue {
    state: Mutex<QueueState>,
    /// Wakes the export thread: a full batch, a flush or shutdown.
    work: Condvar,
    /// Wakes flushers when an export finishes.
    done: Condvar,
    settings: BatchSettings,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl SpanQueue {
    /// A queue whose thread exports through `exporter`.
    pub(crate) fn start(
        settings: BatchSettings,
        exporter: OtlpExporter,
    ) -> std::io::Result<Arc<Self>> {
        let queue = Arc::new(Self {
            state: Mutex::new(QueueState {
                spans: Vec::new(),
                dropped: 0,
                flush_requested: 0,
                flush_done: 0,
                last_result: Ok(()),
                shut_down: false,
            }),
            work: Condvar::new(),
            done: Condvar::new(),
            settings,
            thread: Mutex::new(None),
        });
        let worker = Arc::clone(&queue);
        let handle = std::thread::Builder::new()
            .name("otlp-request-spans".to_owned())
            .spawn(move || worker.run(&exporter))?;
        *lock(&queue.thread) = Some(handle);
        Ok(queue)
    }

    fn push(&self, record: SpanRecord) {
        let mut state = lock(&self.state);
        if state.shut_down || state.spans.len() >= self.settings.max_queue {
            state.dropped = state.dropped.saturating_add(1);
            return;
        }
        state.spans.push(record);
        if state.spans.len() == self.settings.max_batch {
            self.work.notify_one();
        }
    }

    /// The export thread: waits for a full batch, a flush, shutdown or the schedule delay, then exports
    /// everything queued.
    fn run(&self, exporter: &OtlpExporter) {
        let mut spare = Vec::new();
        loop {
            let (mut batch, flush_target, shut_down, dropped) = {
                let mut state = lock(&self.state);
                let deadline = Instant::now() + self.settings.delay;
                loop {
                    if state.shut_down
                        || state.flush_requested > state.flush_done
                        || state.spans.len() >= self.settings.max_batch
                    {
                        break;
                    }
                    let now = Instant::now();
                    if now >= deadline {
                        break;
                    }
                    state = self
                        .work
                        .wait_timeout(state, deadline - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
                let batch = std::mem::replace(&mut state.spans, std::mem::take(&mut spare));
                (
                    batch,
                    state.flush_requested,
                    state.shut_down,
                    std::mem::take(&mut state.dropped),
                )
            };
            if dropped > 0 {
                tracing::warn!(
                    target: "telemetry_layer::export",
                    dropped,
                    "request spans dropped: the export queue was full (raise OTEL_BSP_MAX_QUEUE_SIZE)"
                );
            }
            let mut result = Ok(());
            for chunk in batch.chunks(self.settings.max_batch.max(1)) {
                if let Err(error) = exporter.export_records(chunk) {
                    tracing::warn!(target: "telemetry_layer::export", %error, "request span export failed");
                    result = Err(error);
                }
            }
            batch.clear();
            spare = batch;
            {
                let mut state = lock(&self.state);
                state.flush_done = flush_target;
                state.last_result = result;
                self.done.notify_all();
            }
            if shut_down {
                return;
            }
        }
    }

    /// Exports every span ended before the call and waits for the outcome, at most the export timeout.
    pub(crate) fn force_flush(&self) -> Result<(), String> {
        let mut state = lock(&self.state);
        if state.shut_down {
            return Ok(());
        }
        state.flush_requested += 1;
        let target = state.flush_requested;
        self.work.notify_one();
        let deadline = Instant::now() + self.settings.flush_timeout;
        while state.flush_done < target {
            let now = Instant::now();
            if now >= deadline {
                return Err(format!(
                    "request spans were not exported within {:?}",
                    self.settings.flush_timeout
                ));
            }
            state = self
                .done
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        state.last_result.clone()
    }

    /// Exports what is queued, stops the export thread and drops spans ended later. Only the first call
    /// does anything.
    pub(crate) fn shutdown(&self) -> Result<(), String> {
        {
            let mut state = lock(&self.state);
            if state.shut_down {
                return Ok(());
            }
            state.shut_down = true;
            self.work.notify_one();
        }
        let handle = lock(&self.thread).take();
        if let Some(handle) = handle
            && handle.join().is_err()
        {
            return Err("the request span export thread panicked".to_owned());
        }
        lock(&self.state).last_result.clone()
    }

    #[cfg(test)]
    fn queued(&self) -> usize {
        lock(&self.state).spans.len()
    }
}

/// A poisoned lock still holds consistent data here: every critical section only moves whole values.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use opentelemetry::trace::{SpanContext, TraceContextExt as _, TraceId, TraceState};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use opentelemetry_sdk::trace::Sampler;
    use prost::Message as _;

    use super::*;
    use crate::export::ExportClient;

    fn exporter(port: u16) -> OtlpExporter {
        OtlpExporter::new(
            Arc::new(ExportClient::new(Duration::from_millis(200)).unwrap()),
            format!("http://127.0.0.1:{port}/v1/traces")
                .parse()
                .unwrap(),
            Vec::new(),
        )
    }

    /// A port nothing listens on.
    fn closed_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// Settings under which nothing is exported until a flush or shutdown.
    fn manual(max_queue: usize) -> BatchSettings {
        BatchSettings {
            max_queue,
            max_batch: max_queue + 1,
            delay: Duration::from_secs(3600),
            flush_timeout: Duration::from_secs(10),
        }
    }

    fn fields(path: &str) -> RequestFields {
        RequestFields {
            method: MethodLabel::Get,
            route: None,
            path: UrlPath::new(path),
            scheme: Scheme::Http,
            version: "1.1",
            attributes: Vec::new(),
        }
    }

    fn tracer(sampler: Sampler, queue: &Arc<SpanQueue>) -> DirectTracer {
        DirectTracer::new(Box::new(sampler), Arc::clone(queue))
    }

    fn always_on() -> Sampler {
        Sampler::ParentBased(Box::new(Sampler::AlwaysOn))
    }

    fn remote_parent(sampled: bool) -> OtelContext {
        OtelContext::new().with_remote_span_context(SpanContext::new(
            TraceId::from(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736),
            SpanId::from(0x00f0_67aa_0ba9_02b7),
            if sampled {
                TraceFlags::SAMPLED
            } else {
                TraceFlags::default()
            },
            true,
            TraceState::default(),
        ))
    }

    #[test]
    fn short_paths_are_kept_in_place_and_long_ones_on_the_heap() {
        for path in ["", "/", "/rooms/lobby/messages", "/é/ü/€", &"/x".repeat(27)] {
            let kept = UrlPath::new(path);
            assert!(matches!(kept, UrlPath::Inline { .. }), "{path}");
            assert_eq!(kept.as_str(), path);
        }
        let long = format!("/{}", "€".repeat(20));
        let kept = UrlPath::new(&long);
        assert!(matches!(kept, UrlPath::Heap(_)));
        assert_eq!(kept.as_str(), long);
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_growing() {
        let queue = SpanQueue::start(manual(4), exporter(closed_port())).unwrap();
        let tracer = tracer(always_on(), &queue);
        for n in 0..10 {
            let cx = tracer.start(
                &OtelContext::new(),
                SystemTime::now(),
                fields(&format!("/{n}")),
            );
            cx.span().end();
        }
        assert_eq!(queue.queued(), 4);
        assert_eq!(lock(&queue.state).dropped, 6);
        // The collector is unreachable: shutdown reports the failed export, and later spans are dropped.
        let error = queue.shutdown().unwrap_err();
        assert!(error.contains("OTLP export"), "{error}");
        let cx = tracer.start(&OtelContext::new(), SystemTime::now(), fields("/late"));
        cx.span().end();
        assert_eq!(queue.queued(), 0);
        assert_eq!(queue.shutdown(), Ok(()), "a second shutdown does nothing");
        assert_eq!(queue.force_flush(), Ok(()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn flush_exports_every_ended_span_and_drop_ends_an_unended_one() {
        let received = Arc::new(AtomicUsize::new(0));
        let bodies: Arc<Mutex<Vec<ExportTraceServiceRequest>>> = Arc::default();
        let (count, seen) = (Arc::clone(&received), Arc::clone(&bodies));
        let collector = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: Bytes| {
                let request = ExportTraceServiceRequest::decode(body).unwrap();
                let spans: usize = request.resource_spans[0].scope_spans[0].spans.len();
                count.fetch_add(spans, Ordering::SeqCst);
                seen.lock().unwrap().push(request);
                async {}
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move { axum::serve(listener, collector).await });

        let queue = SpanQueue::start(manual(64), exporter(port)).unwrap();
        let tracer = tracer(always_on(), &queue);
        let parent = remote_parent(true);
        for n in 0..3 {
            let cx = tracer.start(&parent, SystemTime::now(), fields(&format!("/{n}")));
            cx.span()
                .set_attribute(KeyValue::new(HTTP_RESPONSE_STATUS_CODE, 200_i64));
            cx.span().add_event("handled", vec![]);
            cx.span().end();
        }
        // Never ended: dropping the last context holding it ends it.
        drop(tracer.start(&parent, SystemTime::now(), fields("/dropped")));
        assert_eq!(queue.queued(), 4);
        let flushing = Arc::clone(&queue);
        tokio::task::spawn_blocking(move || flushing.force_flush())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(received.load(Ordering::SeqCst), 4);
        let spans = bodies.lock().unwrap()[0].resource_spans[0].scope_spans[0]
            .spans
            .clone();
        let mut paths: Vec<String> = spans
            .iter()
            .filter_map(|s| {
                match s
                    .attributes
                    .iter()
                    .find(|a| a.key == "url.path")?
                    .value
                    .clone()?
                    .value?
                {
                    Value::StringValue(path) => Some(path),
                    _ => None,
                }
            })
            .collect();
        paths.sort();
        assert_eq!(paths, ["/0", "/1", "/2", "/dropped"]);
        for span in &spans {
            assert_eq!(hex(&span.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
            assert_eq!(hex(&span.parent_span_id), "00f067aa0ba902b7");
            assert_eq!(span.flags & 0x300, 0x300, "the parent is remote");
        }
        assert_eq!(spans[0].events.len(), 1);
        assert!(spans[3].events.is_empty());
        let blocking = Arc::clone(&queue);
        tokio::task::spawn_blocking(move || blocking.shutdown())
            .await
            .unwrap()
            .unwrap();
        server.abort();
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn sampling_follows_the_sdk_sampler_and_the_parent() {
        let queue = SpanQueue::start(manual(16), exporter(closed_port())).unwrap();

        // An unsampled parent: the span is not recorded, but its context carries the trace on.
        let on = tracer(always_on(), &queue);
        let cx = on.start(&remote_parent(false), SystemTime::now(), fields("/a"));
        let span = cx.span();
        assert!(!span.is_recording());
        assert!(!span.span_context().is_sampled());
        assert_eq!(
            span.span_context().trace_id(),
            TraceId::from(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736)
        );
        span.end();

        // No parent: a new trace, recorded.
        let cx = on.start(&OtelContext::new(), SystemTime::now(), fields("/b"));
        assert!(cx.span().is_recording());
        assert!(cx.span().span_context().is_valid());
        cx.span().end();

        // Always off: nothing recorded even under a sampled parent.
        let off = tracer(Sampler::AlwaysOff, &queue);
        let cx = off.start(&remote_parent(true), SystemTime::now(), fields("/c"));
        assert!(!cx.span().is_recording());
        cx.span().end();

        assert_eq!(queue.queued(), 1);
        assert!(queue.shutdown().is_err(), "the collector is unreachable");
    }

    #[test]
    fn span_api_calls_keep_the_sdk_limits_and_status_order() {
        let queue = SpanQueue::start(manual(4), exporter(closed_port())).unwrap();
        let tracer = tracer(always_on(), &queue);
        let cx = tracer.start(&OtelContext::new(), SystemTime::now(), fields("/limits"));
        let span = cx.span();
        for n in 0..130 {
            span.add_event(format!("e{n}"), vec![]);
            span.set_attribute(KeyValue::new(format!("a{n}"), n));
        }
        span.set_status(Status::error("first"));
        span.set_status(Status::Unset);
        span.update_name("renamed");
        span.end();
        let state = lock(&queue.state);
        let record = &state.spans[0];
        let extras = record.extras.as_ref().unwrap();
        assert_eq!(record.attributes.len(), MAX_ATTRIBUTES);
        assert_eq!(extras.dropped_attributes, 2);
        assert_eq!(extras.events.len(), MAX_EVENTS);
        assert_eq!(extras.dropped_events, 2);
        assert_eq!(
            extras.status,
            Status::error("first"),
            "Unset never replaces a status"
        );
        assert_eq!(record.name_parts(), ("renamed", None));
        drop(state);
        let _ = queue.shutdown();
    }
}
