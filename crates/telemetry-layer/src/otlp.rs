//! The OTLP/HTTP span exporter: encodes a batch of finished spans straight from the SDK's `SpanData`
//! into an `ExportTraceServiceRequest` protobuf and posts it to the collector.
//!
//! Encoding in one pass, without building the intermediate `opentelemetry-proto` message tree (which
//! copies every attribute key and value into fresh `String`s and frees them again), is what keeps the
//! export thread's share of a span small. The wire format is the one in `opentelemetry/proto/trace/v1`;
//! the integration tests decode it with `opentelemetry-proto`, and a test in this module compares the
//! decoded message with `opentelemetry-proto`'s own conversion of the same spans.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use http::{Method, Request, Uri};
use opentelemetry::trace::{Event, Link, SpanContext, SpanId, SpanKind, Status};
use opentelemetry::{Array, InstrumentationScope, KeyValue, Value};
use opentelemetry_http::HttpClient;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};

use crate::direct::SpanRecord;
use crate::export::ExportClient;
use crate::names::HTTP_RESPONSE_STATUS_CODE;

const PROTOBUF: &str = "application/x-protobuf";

/// Larger request bodies are not sent: collectors refuse them, and a batch that big means the batch size or
/// the span attributes are out of hand.
const MAX_REQUEST_BYTES: usize = 64 * 1024 * 1024;

/// Span flags bit saying the flags carry whether the parent is remote (`SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK`).
const HAS_IS_REMOTE: u32 = 0x100;
/// Span flags bit saying the parent is remote (`SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK`).
const IS_REMOTE: u32 = 0x200;

/// Retries of a failed export: exponential backoff with jitter, bounded by the export timeout. These are
/// the OTLP exporter specification's retryable outcomes and `opentelemetry-otlp`'s recommended policy.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RetryPolicy {
    pub(crate) max_retries: u32,
    pub(crate) initial_delay: Duration,
    pub(crate) max_delay: Duration,
    pub(crate) max_jitter: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 3,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1600),
            max_jitter: Duration::from_millis(100),
        }
    }
}

/// Why one export attempt failed.
#[derive(Debug)]
struct Failure {
    message: String,
    /// Worth another attempt: no response at all, or 429, 502, 503, 504.
    retryable: bool,
    /// The collector's `Retry-After`, in seconds, on 429 and 503.
    retry_after: Option<Duration>,
}

/// Exports spans as OTLP/HTTP protobuf through [`ExportClient`].
pub(crate) struct OtlpExporter {
    client: Arc<ExportClient>,
    endpoint: Uri,
    headers: Vec<(HeaderName, HeaderValue)>,
    retry: RetryPolicy,
    /// The encoded `Resource` message (its fields, without tag and length) and the resource's schema URL.
    resource: Vec<u8>,
    resource_schema_url: String,
    shut_down: AtomicBool,
}

impl std::fmt::Debug for OtlpExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpExporter")
            .field("endpoint", &self.endpoint)
            .field("headers", &self.headers.len())
            .finish_non_exhaustive()
    }
}

impl OtlpExporter {
    pub(crate) fn new(
        client: Arc<ExportClient>,
        endpoint: Uri,
        headers: Vec<(HeaderName, HeaderValue)>,
    ) -> Self {
        Self {
            client,
            endpoint,
            headers,
            retry: RetryPolicy::default(),
            resource: Vec::new(),
            resource_schema_url: String::new(),
            shut_down: AtomicBool::new(false),
        }
    }

    #[cfg(test)]
    fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    async fn attempt(&self, body: Bytes) -> Result<(), Failure> {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(self.endpoint.clone())
            .header(CONTENT_TYPE, PROTOBUF);
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        let request = request.body(body).map_err(|e| Failure {
            message: format!("OTLP request: {e}"),
            retryable: false,
            retry_after: None,
        })?;
        let response = self.client.send_bytes(request).await.map_err(|e| Failure {
            message: format!("OTLP export: {e}"),
            retryable: true,
            retry_after: None,
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let throttled = matches!(status.as_u16(), 429 | 503);
        Err(Failure {
            message: format!("OTLP export: the collector answered {status}"),
            retryable: throttled || matches!(status.as_u16(), 502 | 504),
            retry_after: throttled
                .then(|| response.headers().get(http::header::RETRY_AFTER))
                .flatten()
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs),
        })
    }
}

/// Up to `max_jitter`, from the process's random hash keys.
fn jitter(max_jitter: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let millis = u64::try_from(max_jitter.as_millis()).unwrap_or(u64::MAX);
    if millis == 0 {
        return Duration::ZERO;
    }
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    Duration::from_millis(random % (millis + 1))
}

impl OtlpExporter {
    /// Posts an encoded `ExportTraceServiceRequest`, retrying what the specification allows within the
    /// export timeout.
    async fn send(&self, body: Bytes) -> Result<(), String> {
        if body.len() > MAX_REQUEST_BYTES {
            return Err(format!(
                "OTLP export: a batch of {} bytes exceeds the {MAX_REQUEST_BYTES}-byte limit and is dropped; \
                 lower OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
                body.len()
            ));
        }
        let start = Instant::now();
        let mut delay = self.retry.initial_delay;
        let mut retries = 0;
        loop {
            let failure = match self.attempt(body.clone()).await {
                Ok(()) => return Ok(()),
                Err(failure) => failure,
            };
            if !failure.retryable || retries >= self.retry.max_retries {
                return Err(failure.message);
            }
            // The collector's hint raises the backoff; the export timeout bounds the whole export.
            let wait = failure
                .retry_after
                .map_or(delay, |hint| hint.max(delay))
                .saturating_add(jitter(self.retry.max_jitter));
            let wait = match failure.retry_after {
                Some(_) => wait,
                None => wait.min(self.retry.max_delay),
            };
            if start.elapsed().saturating_add(wait) >= self.client.timeout() {
                return Err(format!("{} (no time left to retry)", failure.message));
            }
            self.client.sleep(wait).await;
            retries += 1;
            delay = delay.saturating_mul(2).min(self.retry.max_delay);
        }
    }

    /// Encodes and posts request span records, blocking the calling thread (the request span queue's)
    /// until the export is done.
    pub(crate) fn export_records(&self, records: &[SpanRecord]) -> Result<(), String> {
        if records.is_empty() {
            return Ok(());
        }
        if self.shut_down.load(Ordering::Relaxed) {
            return Err("OTLP export: the exporter is shut down".to_owned());
        }
        let body = encode_records(records, &self.resource, &self.resource_schema_url);
        self.client.block_on(self.send(body))
    }
}

impl SpanExporter for OtlpExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        if self.shut_down.load(Ordering::Relaxed) {
            return Err(OTelSdkError::AlreadyShutdown);
        }
        let body = Bytes::from(encode_request(
            &batch,
            &self.resource,
            &self.resource_schema_url,
        ));
        drop(batch);
        self.send(body).await.map_err(OTelSdkError::InternalFailure)
    }

    fn shutdown(&self) -> OTelSdkResult {
        if self.shut_down.swap(true, Ordering::Relaxed) {
            Err(OTelSdkError::AlreadyShutdown)
        } else {
            Ok(())
        }
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.resource.clear();
        for (key, value) in resource.iter() {
            key_value(&mut self.resource, 1, key.as_str(), value);
        }
        self.resource_schema_url = resource.schema_url().unwrap_or_default().to_owned();
    }
}

/// `ExportTraceServiceRequest { resource_spans: [ResourceSpans { resource, scope_spans, schema_url }] }`,
/// with one `ScopeSpans` per instrumentation scope, in the order the scopes first appear.
pub(crate) fn encode_request(spans: &[SpanData], resource: &[u8], schema_url: &str) -> Vec<u8> {
    let mut scopes: Vec<(&InstrumentationScope, Vec<u8>)> = Vec::new();
    let mut scratch = Vec::with_capacity(512);
    for span in spans {
        let scope = &span.instrumentation_scope;
        let index = match scopes.iter().position(|(s, _)| *s == scope) {
            Some(index) => index,
            None => {
                scopes.push((scope, Vec::with_capacity(spans.len() * 256)));
                scopes.len() - 1
            }
        };
        scratch.clear();
        encode_span(&mut scratch, span);
        let out = &mut scopes[index].1;
        message_header(out, 2, scratch.len());
        out.extend_from_slice(&scratch);
    }

    // ResourceSpans: 1 resource, 2 scope_spans, 3 schema_url.
    let mut scope_headers = Vec::with_capacity(scopes.len());
    let mut resource_spans_len = field_len(1, resource.len()) + string_field_len(3, schema_url);
    for (scope, spans) in &scopes {
        let mut header = Vec::new();
        encode_scope(&mut header, scope);
        let scope_spans_len = field_len(1, header.len())
            + spans.len()
            + string_field_len(3, scope.schema_url().unwrap_or_default());
        resource_spans_len += field_len(2, scope_spans_len);
        scope_headers.push((header, scope_spans_len));
    }

    let mut out = Vec::with_capacity(field_len(1, resource_spans_len));
    message_header(&mut out, 1, resource_spans_len);
    message_header(&mut out, 1, resource.len());
    out.extend_from_slice(resource);
    for ((scope, spans), (header, scope_spans_len)) in scopes.iter().zip(&scope_headers) {
        message_header(&mut out, 2, *scope_spans_len);
        message_header(&mut out, 1, header.len());
        out.extend_from_slice(header);
        out.extend_from_slice(spans);
        string_field(&mut out, 3, scope.schema_url().unwrap_or_default());
    }
    string_field(&mut out, 3, schema_url);
    out
}

/// `InstrumentationScope`: 1 name, 2 version, 3 attributes.
fn encode_scope(out: &mut Vec<u8>, scope: &InstrumentationScope) {
    string_field(out, 1, scope.name());
    string_field(out, 2, scope.version().unwrap_or_default());
    for attribute in scope.attributes() {
        key_value(out, 3, attribute.key.as_str(), &attribute.value);
    }
}

/// `Span`, field numbers as in `trace.proto`.
fn encode_span(out: &mut Vec<u8>, span: &SpanData) {
    let context = &span.span_context;
    bytes_field(out, 1, &context.trace_id().to_bytes());
    bytes_field(out, 2, &context.span_id().to_bytes());
    string_field(out, 3, &context.trace_state().header());
    if span.parent_span_id != SpanId::INVALID {
        bytes_field(out, 4, &span.parent_span_id.to_bytes());
    }
    string_field(out, 5, &span.name);
    varint_field(out, 6, span_kind(&span.span_kind));
    fixed64_field(out, 7, nanos(span.start_time));
    fixed64_field(out, 8, nanos(span.end_time));
    for attribute in &span.attributes {
        key_value(out, 9, attribute.key.as_str(), &attribute.value);
    }
    varint_field(out, 10, u64::from(span.dropped_attributes_count));
    for event in span.events.iter() {
        encode_event(out, event);
    }
    varint_field(out, 12, u64::from(span.events.dropped_count));
    for link in span.links.iter() {
        encode_link(out, link);
    }
    varint_field(out, 14, u64::from(span.links.dropped_count));
    encode_status(out, &span.status);
    fixed32_field(out, 16, flags(context, span.parent_span_is_remote));
}

/// `Event` as repeated field 11 of `Span`: 1 time_unix_nano, 2 name, 3 attributes,
/// 4 dropped_attributes_count.
fn encode_event(out: &mut Vec<u8>, event: &Event) {
    let len = fixed64_field_len(1, nanos(event.timestamp))
        + string_field_len(2, &event.name)
        + attributes_len(3, &event.attributes)
        + varint_field_len(4, u64::from(event.dropped_attributes_count));
    message_header(out, 11, len);
    fixed64_field(out, 1, nanos(event.timestamp));
    string_field(out, 2, &event.name);
    for attribute in &event.attributes {
        key_value(out, 3, attribute.key.as_str(), &attribute.value);
    }
    varint_field(out, 4, u64::from(event.dropped_attributes_count));
}

/// `Link` as repeated field 13 of `Span`: 1 trace_id, 2 span_id, 3 trace_state, 4 attributes,
/// 5 dropped_attributes_count, 6 flags.
fn encode_link(out: &mut Vec<u8>, link: &Link) {
    let state = link.span_context.trace_state().header();
    let flags = flags(&link.span_context, link.span_context.is_remote());
    let len = bytes_field_len(1, 16)
        + bytes_field_len(2, 8)
        + string_field_len(3, &state)
        + attributes_len(4, &link.attributes)
        + varint_field_len(5, u64::from(link.dropped_attributes_count))
        + fixed32_field_len(6, flags);
    message_header(out, 13, len);
    bytes_field(out, 1, &link.span_context.trace_id().to_bytes());
    bytes_field(out, 2, &link.span_context.span_id().to_bytes());
    string_field(out, 3, &state);
    for attribute in &link.attributes {
        key_value(out, 4, attribute.key.as_str(), &attribute.value);
    }
    varint_field(out, 5, u64::from(link.dropped_attributes_count));
    fixed32_field(out, 6, flags);
}

/// `Status` as field 15 of `Span`: 2 message, 3 code (0 unset, 1 ok, 2 error). Always present, as the
/// reference exporter does.
fn encode_status(out: &mut Vec<u8>, status: &Status) {
    let (code, message) = match status {
        Status::Unset => (0, ""),
        Status::Ok => (1, ""),
        Status::Error { description } => (2, description.as_ref()),
    };
    message_header(
        out,
        15,
        string_field_len(2, message) + varint_field_len(3, code),
    );
    string_field(out, 2, message);
    varint_field(out, 3, code);
}

/// The instrumentation scope of request spans: the name of the SDK tracer their children come from.
pub(crate) const REQUEST_SCOPE: &str = "telemetry-layer";

/// `ExportTraceServiceRequest` holding request span records, all in the [`REQUEST_SCOPE`] scope.
///
/// The spans are written once, into the buffer that becomes the request body: room is left before them
/// for the enclosing messages' headers, which are written into its end once the spans' length is known.
pub(crate) fn encode_records(records: &[SpanRecord], resource: &[u8], schema_url: &str) -> Bytes {
    // ScopeSpans: 1 scope (InstrumentationScope: 1 name), 2 spans. ResourceSpans: 1 resource,
    // 2 scope_spans, 3 schema_url. Each header is a one-byte tag and a length of at most ten bytes.
    let scope_len = string_field_len(1, REQUEST_SCOPE);
    let room = 2 * 11 + field_len(1, resource.len()) + field_len(1, scope_len);
    let mut out = Vec::with_capacity(room + records.len() * 320 + schema_url.len() + 16);
    out.resize(room, 0);
    for record in records {
        // The span goes straight after a two-byte length, the size of any span under 16 KiB; the
        // content moves when its length takes one byte or more than two.
        tag(&mut out, 2, LEN);
        let at = out.len();
        out.extend_from_slice(&[0, 0]);
        encode_record(&mut out, record);
        let len = out.len() - at - 2;
        if varint_len(len as u64) == 2 {
            // Two bytes: the low seven bits with the continuation bit, then the rest.
            out[at] = (len as u8) | 0x80;
            out[at + 1] = (len >> 7) as u8;
        } else {
            let mut header = Vec::with_capacity(10);
            varint(&mut header, len as u64);
            out.splice(at..at + 2, header);
        }
    }
    let spans_len = out.len() - room;
    string_field(&mut out, 3, schema_url);
    let scope_spans_len = field_len(1, scope_len) + spans_len;
    let resource_spans_len = field_len(1, resource.len())
        + field_len(2, scope_spans_len)
        + string_field_len(3, schema_url);
    let mut prefix = Vec::with_capacity(room);
    message_header(&mut prefix, 1, resource_spans_len);
    message_header(&mut prefix, 1, resource.len());
    prefix.extend_from_slice(resource);
    message_header(&mut prefix, 2, scope_spans_len);
    message_header(&mut prefix, 1, scope_len);
    string_field(&mut prefix, 1, REQUEST_SCOPE);
    let start = room - prefix.len();
    out[start..room].copy_from_slice(&prefix);
    Bytes::from(out).slice(start..)
}

/// A request span record as a `Span`, its typed attributes first, in the order the layer sets them.
fn encode_record(out: &mut Vec<u8>, record: &SpanRecord) {
    let context = &record.context;
    bytes_field(out, 1, &context.trace_id().to_bytes());
    bytes_field(out, 2, &context.span_id().to_bytes());
    if let Some(state) = trace_state(context) {
        string_field(out, 3, &state);
    }
    if record.parent_span_id != SpanId::INVALID {
        bytes_field(out, 4, &record.parent_span_id.to_bytes());
    }
    match record.name_parts() {
        (name, None) => string_field(out, 5, name),
        (method, Some(route)) => {
            message_header(out, 5, method.len() + 1 + route.len());
            out.extend_from_slice(method.as_bytes());
            out.push(b' ');
            out.extend_from_slice(route.as_bytes());
        }
    }
    varint_field(out, 6, span_kind(&SpanKind::Server));
    fixed64_field(out, 7, nanos(record.start));
    fixed64_field(out, 8, nanos(record.end));
    span_attribute(out, KEY_METHOD, record.method.as_str());
    if let Some(route) = &record.route {
        span_attribute(out, KEY_ROUTE, route.0.as_str());
    }
    span_attribute(out, KEY_PATH, record.path.as_str());
    span_attribute(out, KEY_SCHEME, record.scheme.as_str());
    span_attribute(out, KEY_VERSION, record.version);
    if let Some(code) = record.status_code {
        key_value(out, 9, HTTP_RESPONSE_STATUS_CODE, &Value::I64(code));
    }
    for attribute in &record.attributes {
        key_value(out, 9, attribute.key.as_str(), &attribute.value);
    }
    match &record.extras {
        None => encode_status(out, &Status::Unset),
        Some(extras) => {
            varint_field(out, 10, u64::from(extras.dropped_attributes));
            for event in &extras.events {
                encode_event(out, event);
            }
            varint_field(out, 12, u64::from(extras.dropped_events));
            for link in &extras.links {
                encode_link(out, link);
            }
            varint_field(out, 14, u64::from(extras.dropped_links));
            encode_status(out, &extras.status);
        }
    }
    fixed32_field(out, 16, flags(context, record.parent_is_remote));
}

/// The `tracestate` header of `context`, `None` when empty (the usual case, which allocates nothing).
fn trace_state(context: &SpanContext) -> Option<String> {
    let state = context.trace_state().header();
    (!state.is_empty()).then_some(state)
}

/// The `key` field (1) of a `KeyValue`, encoded, for the attributes every request span has.
const KEY_METHOD: &[u8] = b"\x0a\x13http.request.method";
const KEY_ROUTE: &[u8] = b"\x0a\x0ahttp.route";
const KEY_PATH: &[u8] = b"\x0a\x08url.path";
const KEY_SCHEME: &[u8] = b"\x0a\x0aurl.scheme";
const KEY_VERSION: &[u8] = b"\x0a\x18network.protocol.version";

/// A span attribute (`Span` field 9) with an encoded key and a string value.
#[inline]
fn span_attribute(out: &mut Vec<u8>, key: &[u8], value: &str) {
    // AnyValue: 1 string_value, written even when empty (a oneof member).
    let value_len = 1 + varint_len(value.len() as u64) + value.len();
    let len = key.len() + 1 + varint_len(value_len as u64) + value_len;
    out.reserve(2 + len);
    out.push(0x4a);
    varint(out, len as u64);
    out.extend_from_slice(key);
    out.push(0x12);
    varint(out, value_len as u64);
    out.push(0x0a);
    varint(out, value.len() as u64);
    out.extend_from_slice(value.as_bytes());
}

fn span_kind(kind: &SpanKind) -> u64 {
    match kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

fn flags(context: &SpanContext, remote: bool) -> u32 {
    let mut flags = u32::from(context.trace_flags().to_u8()) | HAS_IS_REMOTE;
    if remote {
        flags |= IS_REMOTE;
    }
    flags
}

fn nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A `KeyValue` message (1 key, 2 value) as repeated field `field`.
#[inline]
fn key_value(out: &mut Vec<u8>, field: u32, key: &str, value: &Value) {
    let value_len = any_value_len(value);
    message_header(
        out,
        field,
        string_field_len(1, key) + field_len(2, value_len),
    );
    string_field(out, 1, key);
    message_header(out, 2, value_len);
    any_value(out, value);
}

fn attributes_len(field: u32, attributes: &[KeyValue]) -> usize {
    attributes
        .iter()
        .map(|kv| {
            field_len(
                field,
                string_field_len(1, kv.key.as_str()) + field_len(2, any_value_len(&kv.value)),
            )
        })
        .sum()
}

/// `AnyValue` oneof: 1 string, 2 bool, 3 int, 4 double, 5 array (`ArrayValue { 1 values }`). A oneof
/// member is written even when it holds the default value.
fn any_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Bool(b) => {
            tag(out, 2, VARINT);
            varint(out, u64::from(*b));
        }
        Value::I64(i) => {
            tag(out, 3, VARINT);
            varint(out, *i as u64);
        }
        Value::F64(f) => {
            tag(out, 4, FIXED64);
            out.extend_from_slice(&f.to_bits().to_le_bytes());
        }
        Value::String(s) => {
            message_header(out, 1, s.as_str().len());
            out.extend_from_slice(s.as_str().as_bytes());
        }
        Value::Array(array) => {
            message_header(out, 5, array_len(array));
            match array {
                Array::Bool(values) => values
                    .iter()
                    .for_each(|v| array_element(out, &Value::Bool(*v))),
                Array::I64(values) => values
                    .iter()
                    .for_each(|v| array_element(out, &Value::I64(*v))),
                Array::F64(values) => values
                    .iter()
                    .for_each(|v| array_element(out, &Value::F64(*v))),
                Array::String(values) => values
                    .iter()
                    .for_each(|v| array_element(out, &Value::String(v.clone()))),
                other => array_element(out, &Value::from(other.to_string())),
            }
        }
        other => {
            let text = other.to_string();
            message_header(out, 1, text.len());
            out.extend_from_slice(text.as_bytes());
        }
    }
}

fn array_element(out: &mut Vec<u8>, value: &Value) {
    message_header(out, 1, any_value_len(value));
    any_value(out, value);
}

#[inline]
fn any_value_len(value: &Value) -> usize {
    match value {
        Value::Bool(b) => 1 + varint_len(u64::from(*b)),
        Value::I64(i) => 1 + varint_len(*i as u64),
        Value::F64(_) => 1 + 8,
        Value::String(s) => field_len(1, s.as_str().len()),
        Value::Array(array) => field_len(5, array_len(array)),
        other => field_len(1, other.to_string().len()),
    }
}

fn array_len(array: &Array) -> usize {
    let element = |value: Value| field_len(1, any_value_len(&value));
    match array {
        Array::Bool(values) => values.iter().map(|v| element(Value::Bool(*v))).sum(),
        Array::I64(values) => values.iter().map(|v| element(Value::I64(*v))).sum(),
        Array::F64(values) => values.iter().map(|v| element(Value::F64(*v))).sum(),
        Array::String(values) => values
            .iter()
            .map(|v| element(Value::String(v.clone())))
            .sum(),
        other => element(Value::from(other.to_string())),
    }
}

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

#[inline]
fn tag(out: &mut Vec<u8>, field: u32, wire_type: u8) {
    varint(out, (u64::from(field) << 3) | u64::from(wire_type));
}

#[inline]
fn tag_len(field: u32) -> usize {
    varint_len(u64::from(field) << 3)
}

#[inline]
fn varint(out: &mut Vec<u8>, mut value: u64) {
    if value < 0x80 {
        out.push(value as u8);
        return;
    }
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

#[inline]
fn varint_len(value: u64) -> usize {
    // One byte per started group of seven bits; zero takes one byte.
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

/// Tag and length of a length-delimited field whose content follows.
#[inline]
fn message_header(out: &mut Vec<u8>, field: u32, len: usize) {
    tag(out, field, LEN);
    varint(out, len as u64);
}

/// Encoded size of a length-delimited field with `len` bytes of content.
#[inline]
fn field_len(field: u32, len: usize) -> usize {
    tag_len(field) + varint_len(len as u64) + len
}

#[inline]
fn bytes_field(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    if !bytes.is_empty() {
        message_header(out, field, bytes.len());
        out.extend_from_slice(bytes);
    }
}

#[inline]
fn bytes_field_len(field: u32, len: usize) -> usize {
    if len == 0 { 0 } else { field_len(field, len) }
}

#[inline]
fn string_field(out: &mut Vec<u8>, field: u32, value: &str) {
    bytes_field(out, field, value.as_bytes());
}

#[inline]
fn string_field_len(field: u32, value: &str) -> usize {
    bytes_field_len(field, value.len())
}

#[inline]
fn varint_field(out: &mut Vec<u8>, field: u32, value: u64) {
    if value != 0 {
        tag(out, field, VARINT);
        varint(out, value);
    }
}

#[inline]
fn varint_field_len(field: u32, value: u64) -> usize {
    if value == 0 {
        0
    } else {
        tag_len(field) + varint_len(value)
    }
}

#[inline]
fn fixed64_field(out: &mut Vec<u8>, field: u32, value: u64) {
    if value != 0 {
        tag(out, field, FIXED64);
        out.extend_from_slice(&value.to_le_bytes());
    }
}

#[inline]
fn fixed64_field_len(field: u32, value: u64) -> usize {
    if value == 0 { 0 } else { tag_len(field) + 8 }
}

#[inline]
fn fixed32_field(out: &mut Vec<u8>, field: u32, value: u32) {
    if value != 0 {
        tag(out, field, FIXED32);
        out.extend_from_slice(&value.to_le_bytes());
    }
}

#[inline]
fn fixed32_field_len(field: u32, value: u32) -> usize {
    if value == 0 { 0 } else { tag_len(field) + 4 }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use opentelemetry::trace::{Event, Link, SpanId, TraceFlags, TraceId, TraceState};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
    use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
    use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};
    use prost::Message;

    use super::*;
    use crate::names::HTTP_REQUEST_METHOD_ORIGINAL as HTTP_REQUEST_METHOD_ORIGINAL_KEY;
    use crate::names::{
        HTTP_REQUEST_METHOD, HTTP_ROUTE, NETWORK_PROTOCOL_VERSION, URL_PATH, URL_SCHEME,
    };

    fn context(trace: u128, span: u64, remote: bool, state: &str) -> SpanContext {
        let state = if state.is_empty() {
            TraceState::default()
        } else {
            state.parse().unwrap()
        };
        SpanContext::new(
            TraceId::from(trace),
            SpanId::from(span),
            TraceFlags::SAMPLED,
            remote,
            state,
        )
    }

    fn span(scope: &InstrumentationScope, n: u64) -> SpanData {
        let start = UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789 + n);
        let mut events = SpanEvents::default();
        let mut links = SpanLinks::default();
        if n % 2 == 1 {
            events.events.push(Event::new(
                "exception",
                start + Duration::from_micros(5),
                vec![
                    KeyValue::new("exception.message", "boom"),
                    KeyValue::new("retry", false),
                ],
                2,
            ));
            events.events.push(Event::new("empty", start, vec![], 0));
            events.dropped_count = 3;
            links.links.push(Link::new(
                context(7, 8, true, "vendor=value"),
                vec![KeyValue::new("link.kind", "follows")],
                1,
            ));
            links.dropped_count = 4;
        }
        SpanData {
            span_context: context(
                0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736,
                100 + n,
                false,
                "a=b,c=d",
            ),
            parent_span_id: if n == 0 {
                SpanId::INVALID
            } else {
                SpanId::from(0x00f0_67aa_0ba9_02b7)
            },
            parent_span_is_remote: n == 1,
            span_kind: [
                SpanKind::Server,
                SpanKind::Client,
                SpanKind::Internal,
                SpanKind::Producer,
                SpanKind::Consumer,
            ][(n % 5) as usize]
                .clone(),
            name: format!("GET /users/{{id}} {n}").into(),
            start_time: start,
            end_time: start + Duration::from_millis(3),
            attributes: vec![
                KeyValue::new("http.request.method", "GET"),
                KeyValue::new("http.response.status_code", 200_i64 + n as i64),
                KeyValue::new("negative", -5_i64),
                KeyValue::new("zero", 0_i64),
                KeyValue::new("ratio", 0.25),
                KeyValue::new("flag", true),
                KeyValue::new("empty", ""),
                KeyValue::new("ids", Value::Array(Array::I64(vec![1, -2, 300]))),
                KeyValue::new(
                    "names",
                    Value::Array(Array::String(vec!["a".into(), "".into()])),
                ),
                KeyValue::new("bits", Value::Array(Array::Bool(vec![true, false]))),
                KeyValue::new("floats", Value::Array(Array::F64(vec![1.5, 0.0]))),
                KeyValue::new("long", "x".repeat(300)),
            ],
            dropped_attributes_count: n as u32,
            events,
            links,
            status: match n % 3 {
                0 => Status::Unset,
                1 => Status::error("server error"),
                _ => Status::Ok,
            },
            instrumentation_scope: scope.clone(),
        }
    }

    /// `resource` as the exporter encodes it, and its schema URL.
    fn encoded_resource(resource: &Resource) -> (Vec<u8>, String) {
        let mut exporter = OtlpExporter::new(
            Arc::new(ExportClient::new(Duration::from_secs(1)).unwrap()),
            Uri::from_static("http://127.0.0.1:9/v1/traces"),
            Vec::new(),
        );
        exporter.set_resource(resource);
        (exporter.resource, exporter.resource_schema_url)
    }

    #[test]
    fn encoding_matches_the_reference_conversion() {
        let scopes = [
            InstrumentationScope::builder("telemetry-layer").build(),
            InstrumentationScope::builder("other")
                .with_version("1.2.3")
                .with_schema_url("https://opentelemetry.io/schemas/1.26.0")
                .with_attributes([KeyValue::new("scope.attr", 9_i64)])
                .build(),
        ];
        let spans: Vec<SpanData> = (0..7)
            .map(|n| span(&scopes[(n % 3 == 2) as usize], n))
            .collect();
        let resource = Resource::builder_empty()
            .with_service_name("test-svc")
            .with_attribute(KeyValue::new("deployment.environment", "ci"))
            .with_schema_url([], "https://opentelemetry.io/schemas/1.25.0")
            .build();

        let (encoded, schema_url) = encoded_resource(&resource);
        let body = encode_request(&spans, &encoded, &schema_url);
        let decoded = ExportTraceServiceRequest::decode(body.as_slice()).unwrap();

        let reference = ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(
                spans.clone(),
                &ResourceAttributesWithSchema::from(&resource),
            ),
        };
        assert_eq!(decoded, reference);
        // Byte-for-byte too: same field order and the same defaults left out.
        assert_eq!(body, reference.encode_to_vec());
    }

    /// A `MatchedPath` as axum makes it, from a request routed to `template`.
    async fn matched_path(template: &'static str, uri: &'static str) -> axum::extract::MatchedPath {
        use std::sync::Mutex;
        use tower::ServiceExt as _;
        let slot: Arc<Mutex<Option<axum::extract::MatchedPath>>> = Arc::default();
        let seen = Arc::clone(&slot);
        let app = axum::Router::new().route(
            template,
            axum::routing::get(move |path: axum::extract::MatchedPath| {
                *seen.lock().unwrap() = Some(path);
                async {}
            }),
        );
        app.oneshot(
            http::Request::get(uri)
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
        slot.lock().unwrap().take().unwrap()
    }

    /// The `SpanData` the SDK would export for `record`, attributes in the encoder's order.
    fn as_span_data(record: &SpanRecord) -> SpanData {
        let (first, route) = record.name_parts();
        let name = match route {
            Some(route) => format!("{first} {route}"),
            None => first.to_owned(),
        };
        let mut attributes = vec![KeyValue::new(HTTP_REQUEST_METHOD, record.method.as_str())];
        if let Some(route) = &record.route {
            attributes.push(KeyValue::new(HTTP_ROUTE, route.0.as_str().to_owned()));
        }
        attributes.push(KeyValue::new(URL_PATH, record.path.as_str().to_owned()));
        attributes.push(KeyValue::new(URL_SCHEME, record.scheme.as_str()));
        attributes.push(KeyValue::new(NETWORK_PROTOCOL_VERSION, record.version));
        if let Some(code) = record.status_code {
            attributes.push(KeyValue::new(HTTP_RESPONSE_STATUS_CODE, code));
        }
        attributes.extend(record.attributes.iter().cloned());
        let mut events = SpanEvents::default();
        let mut links = SpanLinks::default();
        let (mut dropped_attributes_count, mut status) = (0, Status::Unset);
        if let Some(extras) = &record.extras {
            events.events = extras.events.clone();
            events.dropped_count = extras.dropped_events;
            links.links = extras.links.clone();
            links.dropped_count = extras.dropped_links;
            dropped_attributes_count = extras.dropped_attributes;
            status = extras.status.clone();
        }
        SpanData {
            span_context: record.context.clone(),
            parent_span_id: record.parent_span_id,
            parent_span_is_remote: record.parent_is_remote,
            span_kind: SpanKind::Server,
            name: name.into(),
            start_time: record.start,
            end_time: record.end,
            attributes,
            dropped_attributes_count,
            events,
            links,
            status,
            instrumentation_scope: InstrumentationScope::builder(REQUEST_SCOPE).build(),
        }
    }

    #[tokio::test]
    async fn request_records_encode_as_the_reference_conversion_of_the_same_spans() {
        use crate::attributes::{MethodLabel, Scheme};
        use crate::direct::{Extras, UrlPath};
        use crate::metrics::Route;

        let start = UNIX_EPOCH + Duration::from_nanos(1_700_000_000_000_000_001);
        let plain = SpanRecord {
            context: context(0x0102, 0x0304, false, ""),
            parent_span_id: SpanId::INVALID,
            parent_is_remote: false,
            method: MethodLabel::Get,
            scheme: Scheme::Http,
            version: "1.1",
            start,
            end: start + Duration::from_micros(250),
            route: Some(Route(matched_path("/users/{id}", "/users/7").await)),
            path: UrlPath::new("/users/7"),
            status_code: Some(200),
            attributes: Vec::new(),
            extras: None,
        };
        let mut events = vec![Event::new(
            "retrying",
            start + Duration::from_micros(3),
            vec![KeyValue::new("attempt", 2_i64)],
            1,
        )];
        events.push(Event::new("empty", start, vec![], 0));
        let detailed = SpanRecord {
            context: context(0xffee, 0xddcc, false, "vendor=abc"),
            parent_span_id: SpanId::from(0x0abc),
            parent_is_remote: true,
            method: MethodLabel::Other,
            scheme: Scheme::Https,
            version: "2",
            start,
            end: start + Duration::from_secs(2),
            route: None,
            // Longer than a one-byte length, and a span over 16 KiB moves its content for a three-byte one.
            path: UrlPath::new(&format!("/{}", "p".repeat(20_000))),
            status_code: Some(503),
            attributes: vec![
                KeyValue::new(HTTP_REQUEST_METHOD_ORIGINAL_KEY, "PURGE"),
                KeyValue::new("error.type", "503"),
                KeyValue::new("retries", 3_i64),
            ],
            extras: Some(Box::new(Extras {
                name: Some("purge everything".into()),
                status: Status::error("upstream down"),
                dropped_attributes: 4,
                events,
                dropped_events: 5,
                links: vec![Link::new(
                    context(7, 8, true, "a=b"),
                    vec![KeyValue::new("link.kind", "follows")],
                    0,
                )],
                dropped_links: 6,
            })),
        };
        let short = SpanRecord {
            context: context(0x05, 0x06, false, ""),
            path: UrlPath::new(""),
            route: None,
            status_code: None,
            method: MethodLabel::Head,
            extras: Some(Box::new(Extras {
                status: Status::Ok,
                ..Extras::default()
            })),
            ..SpanRecord {
                context: context(1, 1, false, ""),
                parent_span_id: SpanId::INVALID,
                parent_is_remote: false,
                method: MethodLabel::Get,
                scheme: Scheme::Http,
                version: "1.0",
                start,
                end: start,
                route: None,
                path: UrlPath::new(""),
                status_code: None,
                attributes: Vec::new(),
                extras: None,
            }
        };
        let records = [plain, detailed, short];
        let resource = Resource::builder_empty()
            .with_service_name("records")
            .with_schema_url([], "https://opentelemetry.io/schemas/1.25.0")
            .build();
        let (encoded, schema_url) = encoded_resource(&resource);
        let body = encode_records(&records, &encoded, &schema_url);
        let decoded = ExportTraceServiceRequest::decode(body.as_ref()).unwrap();
        let reference = ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(
                records.iter().map(as_span_data).collect(),
                &ResourceAttributesWithSchema::from(&resource),
            ),
        };
        assert_eq!(decoded, reference);
        assert_eq!(body.as_ref(), reference.encode_to_vec().as_slice());
        let spans = &decoded.resource_spans[0].scope_spans[0].spans;
        assert_eq!(spans[0].name, "GET /users/{id}");
        assert_eq!(spans[1].name, "purge everything");
        assert_eq!(spans[2].name, "HEAD");
    }

    #[tokio::test]
    async fn export_posts_protobuf_with_headers_and_retries_what_the_spec_allows() {
        use std::collections::HashMap;
        use std::sync::{Arc, Mutex};

        // The collector answers by span name: `ok` 200, `flaky` 503 once then 200, `throttled` 429 with
        // `Retry-After: 0` once then 200, `down` 503 always, `bad` 400.
        let attempts: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
        let headers_seen: Arc<Mutex<Vec<http::HeaderMap>>> = Arc::default();
        let (counts, seen) = (Arc::clone(&attempts), Arc::clone(&headers_seen));
        let collector = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |headers: http::HeaderMap, body: Bytes| {
                let (counts, seen) = (Arc::clone(&counts), Arc::clone(&seen));
                async move {
                    let request = ExportTraceServiceRequest::decode(body).unwrap();
                    let name = request.resource_spans[0].scope_spans[0].spans[0]
                        .name
                        .clone();
                    seen.lock().unwrap().push(headers);
                    let attempt = {
                        let mut counts = counts.lock().unwrap();
                        let n = counts.entry(name.clone()).or_default();
                        *n += 1;
                        *n
                    };
                    let status = match (name.as_str(), attempt) {
                        ("flaky", 1) | ("down", _) => 503,
                        ("throttled", 1) => 429,
                        ("bad", _) => 400,
                        _ => 200,
                    };
                    (
                        http::StatusCode::from_u16(status).unwrap(),
                        [(http::header::RETRY_AFTER, "0")],
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, collector).await });

        let exporter = OtlpExporter::new(
            Arc::new(ExportClient::new(Duration::from_secs(5)).unwrap()),
            format!("http://{addr}/v1/traces").parse().unwrap(),
            vec![(
                HeaderName::from_static("api-key"),
                HeaderValue::from_static("k1"),
            )],
        )
        .with_retry(RetryPolicy {
            max_retries: 2,
            initial_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
            max_jitter: Duration::ZERO,
        });
        let scope = InstrumentationScope::builder("telemetry-layer").build();
        let named = |name: &'static str| {
            let mut span = span(&scope, 0);
            span.name = name.into();
            vec![span]
        };
        exporter.export(named("ok")).await.unwrap();
        exporter.export(named("flaky")).await.unwrap();
        exporter.export(named("throttled")).await.unwrap();
        let err = exporter.export(named("down")).await.unwrap_err();
        assert!(err.to_string().contains("503"), "{err}");
        let err = exporter.export(named("bad")).await.unwrap_err();
        assert!(err.to_string().contains("400"), "{err}");

        let attempts = attempts.lock().unwrap().clone();
        assert_eq!(attempts["ok"], 1);
        assert_eq!(attempts["flaky"], 2);
        assert_eq!(attempts["throttled"], 2);
        assert_eq!(attempts["down"], 3, "first attempt and two retries");
        assert_eq!(attempts["bad"], 1, "4xx other than 429 is not retried");
        {
            let seen = headers_seen.lock().unwrap();
            assert!(
                seen.iter()
                    .all(|h| h["content-type"] == PROTOBUF && h["api-key"] == "k1")
            );
        }

        exporter.shutdown().unwrap();
        assert!(matches!(
            exporter.export(named("ok")).await,
            Err(OTelSdkError::AlreadyShutdown)
        ));
        server.abort();
    }

    #[tokio::test]
    async fn an_unreachable_collector_is_retried_within_the_timeout() {
        // A port nothing listens on: connection refused, which is retryable.
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let exporter = OtlpExporter::new(
            Arc::new(ExportClient::new(Duration::from_secs(5)).unwrap()),
            format!("http://127.0.0.1:{port}/v1/traces")
                .parse()
                .unwrap(),
            Vec::new(),
        )
        .with_retry(RetryPolicy {
            max_retries: 2,
            initial_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
            max_jitter: Duration::ZERO,
        });
        let scope = InstrumentationScope::builder("telemetry-layer").build();
        let err = exporter.export(vec![span(&scope, 0)]).await.unwrap_err();
        assert!(err.to_string().contains("OTLP export"), "{err}");
    }

    #[test]
    fn empty_batch_encodes_an_empty_resource_spans() {
        let decoded =
            ExportTraceServiceRequest::decode(encode_request(&[], &[], "").as_slice()).unwrap();
        assert_eq!(decoded.resource_spans.len(), 1);
        assert!(decoded.resource_spans[0].scope_spans.is_empty());
    }

    #[test]
    fn encoded_keys_are_the_attribute_names_as_key_fields() {
        for (encoded, key) in [
            (KEY_METHOD, HTTP_REQUEST_METHOD),
            (KEY_ROUTE, HTTP_ROUTE),
            (KEY_PATH, URL_PATH),
            (KEY_SCHEME, URL_SCHEME),
            (KEY_VERSION, NETWORK_PROTOCOL_VERSION),
        ] {
            let mut expected = Vec::new();
            string_field(&mut expected, 1, key);
            assert_eq!(encoded, expected.as_slice(), "{key}");
        }
    }

    #[test]
    fn varint_lengths() {
        for value in [
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut out = Vec::new();
            varint(&mut out, value);
            assert_eq!(out.len(), varint_len(value), "{value}");
        }
    }
}
