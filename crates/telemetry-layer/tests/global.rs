//! The default setup installs the global recorder and subscriber: metrics recorded by any crate through
//! the `metrics` facade reach `/metrics`, and request spans are exported without extra wiring.
//! One test per binary, since globals are per process.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod common;

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{Request, StatusCode};
use axum::routing::{get, post};
use http_body_util::BodyExt;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use telemetry_layer::{Telemetry, TelemetryError};
use tower::ServiceExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_setup_installs_global_recorder_and_subscriber() {
    let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
    let store = Arc::clone(&spans);
    let collector = Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| {
            let store = Arc::clone(&store);
            async move {
                let request = ExportTraceServiceRequest::decode(body).unwrap();
                let mut store = store.lock().unwrap();
                for rs in request.resource_spans {
                    for ss in rs.scope_spans {
                        store.extend(ss.spans);
                    }
                }
                StatusCode::OK
            }
        }),
    );
    let (addr, server) = test_support::serve(collector).await.unwrap();

    let telemetry = Telemetry::builder()
        .service_name("global-test")
        .from_env(false)
        .otlp_endpoint(format!("http://{addr}"))
        .build()
        .unwrap();

    // A second setup in the same process is refused with a clear error.
    let again = Telemetry::builder()
        .from_env(false)
        .install_subscriber(false)
        .build()
        .unwrap_err();
    assert!(
        matches!(again, TelemetryError::RecorderAlreadyInstalled),
        "{again}"
    );
    let again = Telemetry::builder()
        .from_env(false)
        .install_recorder(false)
        .log_to_stdout(true)
        .build()
        .unwrap_err();
    assert!(
        matches!(again, TelemetryError::SubscriberAlreadyInstalled),
        "{again}"
    );

    let app = telemetry.instrument(Router::new().route(
        "/rooms/{id}",
        get(|| async {
            // What the cache, dedup and breaker layers do: record through the facade, nothing else.
            metrics::counter!("cache_requests_total", "tier" => "l1", "outcome" => "miss")
                .increment(1);
            // Events and spans of the application and inner layers nest under the request span; the
            // DEBUG span is below the default span level and is not exported.
            tracing::info!(room = 9, "loading room");
            tracing::debug_span!("cache probe").in_scope(|| ());
            tracing::info_span!("db query").in_scope(|| ());
            "room"
        }),
    ));
    for _ in 0..2 {
        let response = app
            .clone()
            .oneshot(Request::get("/rooms/9").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.into_body().collect().await.unwrap();
    }

    let text = telemetry.render();
    let m = common::parse(&text);
    assert_eq!(
        m.value(
            "cache_requests_total",
            &[("tier", "l1"), ("outcome", "miss")]
        ),
        Some(2.0)
    );
    assert_eq!(
        m.value(
            "http_server_request_duration_seconds_count",
            &[
                ("http_request_method", "GET"),
                ("http_route", "/rooms/{id}"),
                ("http_response_status_code", "200"),
                ("url_scheme", "http"),
                ("network_protocol_version", "1.1"),
            ]
        ),
        Some(2.0)
    );

    telemetry.flush().await.unwrap();
    let spans = spans.lock().unwrap().clone();
    let mut names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["GET /rooms/{id}", "GET /rooms/{id}", "db query", "db query"]
    );
    for query in spans.iter().filter(|s| s.name == "db query") {
        let request = spans
            .iter()
            .find(|s| s.span_id == query.parent_span_id)
            .expect("the query's parent was exported");
        assert_eq!(request.name, "GET /rooms/{id}");
        assert_eq!(request.trace_id, query.trace_id);
        let events: Vec<&str> = request.events.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(events, ["loading room"]);
    }
    server.abort();
}
