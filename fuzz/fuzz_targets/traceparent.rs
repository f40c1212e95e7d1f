//! `traceparent` and `tracestate` as telemetry-layer reads them (OpenTelemetry's W3C trace
//! context propagator): the input's first line is `traceparent`, the second `tracestate`. A
//! context that is read is written back and read again unchanged.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.splitn(2, '\n');
    let mut carrier = HashMap::new();
    if let Some(parent) = lines.next() {
        carrier.insert("traceparent".to_owned(), parent.to_owned());
    }
    if let Some(state) = lines.next() {
        carrier.insert("tracestate".to_owned(), state.to_owned());
    }
    let propagator = TraceContextPropagator::new();
    let cx = propagator.extract(&carrier);
    let span = cx.span().span_context().clone();
    if span.is_valid() {
        let mut written = HashMap::new();
        propagator.inject_context(&cx, &mut written);
        let again = propagator.extract(&written);
        assert_eq!(again.span().span_context(), &span);
    }
});
