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
    Event, Link, SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags,
};
use opentelemetry::{Context as OtelContext, KeyValue, Value};
use opentelemetry_sdk::trace::{
    IdGenerator, RandomIdGenerator, SamplingDecision, ShouldSample, SpanLimits,
};

use crate::attributes::{MethodLabel, Scheme, SpanName};
use crate::metrics::Route;
use crate::names::HTTP_RESPONSE_STATUS_CODE;
use crate::otlp::OtlpExporter;

/// One request span: the typed request attributes, what was recorded on it, and its timing.
#[derive(Debug)]
pub(crate) struct SpanRecord {
    pub(crate) context: SpanContext,
    pub(crate) parent_span_id: SpanId,
    pub(crate) parent_is_remote: bool,
    pub(crate) start: SystemTime,
    pub(crate) end: SystemTime,
    /// A name set with `update_name`; otherwise the span is named `{method} {route}`.
    pub(crate) name: Option<Cow<'static, str>>,
    pub(crate) method: MethodLabel,
    pub(crate) route: Option<Route>,
    pub(crate) path: String,
    pub(crate) scheme: Scheme,
    pub(crate) version: &'static str,
    pub(crate) status_code: Option<i64>,
    /// Every other attribute, in the order it was set.
    pub(crate) attributes: Vec<KeyValue>,
    pub(crate) dropped_attributes: u32,
    pub(crate) status: Status,
    pub(crate) events: Vec<Event>,
    pub(crate) dropped_events: u32,
    pub(crate) links: Vec<Link>,
    pub(crate) dropped_links: u32,
}

impl SpanRecord {
    /// Calls `f` with the name the span is exported under.
    pub(crate) fn with_name<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        match &self.name {
            Some(name) => f(name),
            None => {
                f(SpanName::new(self.method, self.route.as_ref().map(|r| r.0.as_str())).as_str())
            }
        }
    }
}

/// What the layer knows of a request when its span starts.
pub(crate) struct RequestFields {
    pub(crate) method: MethodLabel,
    pub(crate) route: Option<Route>,
    pub(crate) path: String,
    pub(crate) scheme: Scheme,
    pub(crate) version: &'static str,
    /// `http.request.method_original`, `url.query` and captured request headers.
    pub(crate) attributes: Vec<KeyValue>,
}

/// Starts request spans as [`LiveSpan`]s feeding a [`SpanQueue`].
#[derive(Debug)]
pub(crate) struct DirectTracer {
    sampler: Box<dyn ShouldSample>,
    ids: RandomIdGenerator,
    limits: SpanLimits,
    queue: Arc<SpanQueue>,
}

impl DirectTracer {
    pub(crate) fn new(sampler: Box<dyn ShouldSample>, queue: Arc<SpanQueue>) -> Self {
        Self {
            sampler,
            ids: RandomIdGenerator::default(),
            limits: SpanLimits::default(),
            queue,
        }
    }

    /// Starts a server span for the request described by `fields` under `parent`, and returns `parent`
    /// with that span active.
    pub(crate) fn start(&self, parent: &OtelContext, fields: RequestFields) -> OtelContext {
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
            (self.ids.new_trace_id(), SpanId::INVALID, false)
        };
        let name = SpanName::new(fields.method, fields.route.as_ref().map(|r| r.0.as_str()));
        let sampling = self.sampler.should_sample(
            Some(parent),
            trace_id,
            name.as_str(),
            &SpanKind::Server,
            &[],
            &[],
        );
        let flags = match sampling.decision {
            SamplingDecision::RecordAndSample => TraceFlags::SAMPLED,
            SamplingDecision::RecordOnly | SamplingDecision::Drop => TraceFlags::default(),
        };
        let context = SpanContext::new(
            trace_id,
            self.ids.new_span_id(),
            flags,
            false,
            sampling.trace_state,
        );
        let record = (sampling.decision != SamplingDecision::Drop).then(|| {
            let mut attributes = fields.attributes;
            attributes.extend(sampling.attributes);
            SpanRecord {
                context: context.clone(),
                parent_span_id,
                parent_is_remote,
                start: opentelemetry::time::now(),
                end: SystemTime::UNIX_EPOCH,
                name: None,
                method: fields.method,
                route: fields.route,
                path: fields.path,
                scheme: fields.scheme,
                version: fields.version,
                status_code: None,
                attributes,
                dropped_attributes: 0,
                status: Status::Unset,
                events: Vec::new(),
                dropped_events: 0,
                links: Vec::new(),
                dropped_links: 0,
            }
        });
        parent.with_span(LiveSpan {
            context,
            record,
            limits: self.limits,
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
    limits: SpanLimits,
    queue: Arc<SpanQueue>,
}

fn limit(value: u32) -> usize {
    usize::try_from(value).unwrap_or(usize::MAX)
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
        if record.events.len() < limit(self.limits.max_events_per_span) {
            let keep = limit(self.limits.max_attributes_per_event);
            let dropped = attributes.len().saturating_sub(keep);
            attributes.truncate(keep);
            record
                .events
                .push(Event::new(name, timestamp, attributes, count(dropped)));
        } else {
            record.dropped_events = record.dropped_events.saturating_add(1);
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
        } else if record.attributes.len() < limit(self.limits.max_attributes_per_span) {
            record.attributes.push(attribute);
        } else {
            record.dropped_attributes = record.dropped_attributes.saturating_add(1);
        }
    }

    fn set_status(&mut self, status: Status) {
        if let Some(record) = &mut self.record
            && status > record.status
        {
            record.status = status;
        }
    }

    fn update_name<T>(&mut self, new_name: T)
    where
        T: Into<Cow<'static, str>>,
    {
        if let Some(record) = &mut self.record {
            record.name = Some(new_name.into());
        }
    }

    fn add_link(&mut self, span_context: SpanContext, mut attributes: Vec<KeyValue>) {
        let Some(record) = &mut self.record else {
            return;
        };
        if record.links.len() < limit(self.limits.max_links_per_span) {
            let keep = limit(self.limits.max_attributes_per_link);
            let dropped = attributes.len().saturating_sub(keep);
            attributes.truncate(keep);
            record
                .links
                .push(Link::new(span_context, attributes, count(dropped)));
        } else {
            record.dropped_links = record.dropped_links.saturating_add(1);
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
