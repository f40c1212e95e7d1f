//! Property tests of the W3C trace context the layer reads from every request (`traceparent`,
//! `tracestate`): whatever a client sends, the request is answered as usual, and a valid
//! context survives being written back out and read again. The fuzz target `traceparent` in
//! `fuzz/` runs the same checks on arbitrary bytes.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::collections::HashMap;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::{Request, StatusCode};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use proptest::prelude::*;
use telemetry_layer::Telemetry;
use tower::ServiceExt;

fn app() -> Router {
    let telemetry = Telemetry::builder()
        .service_name("trace-context-props")
        .from_env(false)
        .install_recorder(false)
        .install_subscriber(false)
        .build()
        .unwrap();
    telemetry.instrument(Router::new().route("/", get(|| async { "ok" })))
}

fn answer(app: &Router, traceparent: &str, tracestate: &str) -> StatusCode {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut request = Request::get("/");
    if let Ok(value) = http::HeaderValue::from_str(traceparent) {
        request = request.header("traceparent", value);
    }
    if let Ok(value) = http::HeaderValue::from_str(tracestate) {
        request = request.header("tracestate", value);
    }
    let request = request.body(Body::empty()).unwrap();
    runtime
        .block_on(app.clone().oneshot(request))
        .unwrap()
        .status()
}

fn round_trips(traceparent: &str, tracestate: &str) {
    let propagator = TraceContextPropagator::new();
    let carrier = HashMap::from([
        ("traceparent".to_owned(), traceparent.to_owned()),
        ("tracestate".to_owned(), tracestate.to_owned()),
    ]);
    let cx = propagator.extract(&carrier);
    let span = cx.span().span_context().clone();
    if span.is_valid() {
        let mut written = HashMap::new();
        propagator.inject_context(&cx, &mut written);
        let again = propagator.extract(&written);
        assert_eq!(again.span().span_context(), &span);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn any_trace_context_is_answered(traceparent in "\\PC{0,80}", tracestate in "\\PC{0,120}") {
        let app = app();
        prop_assert_eq!(answer(&app, &traceparent, &tracestate), StatusCode::OK);
        round_trips(&traceparent, &tracestate);
    }

    #[test]
    fn well_formed_contexts_survive_a_round_trip(
        version in "[0-9a-f]{2}",
        trace_id in "[0-9a-f]{32}",
        span_id in "[0-9a-f]{16}",
        flags in "[0-9a-f]{2}",
        members in proptest::collection::vec(("[a-z][a-z0-9_*/-]{0,12}", "[!-+--<>-~]{1,16}"), 0..4),
    ) {
        let traceparent = format!("{version}-{trace_id}-{span_id}-{flags}");
        let tracestate = members
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let app = app();
        prop_assert_eq!(answer(&app, &traceparent, &tracestate), StatusCode::OK);
        round_trips(&traceparent, &tracestate);
    }
}
