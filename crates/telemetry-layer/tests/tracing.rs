//! Spans exported over OTLP/HTTP to a real in-test receiver, with W3C trace context in and out.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Request, StatusCode};
use axum::routing::{get, post};
use http_body_util::BodyExt;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::{Span, status::StatusCode as SpanStatus};
use prost::Message;
use telemetry_layer::{Telemetry, TelemetryLayer, TraceClientLayer};
use tower::{ServiceBuilder, ServiceExt};
use tracing_subscriber::layer::SubscriberExt;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

/// An OTLP/HTTP collector on 127.0.0.1 keeping every span it receives, with its resource's service name.
struct Receiver {
    addr: std::net::SocketAddr,
    spans: Arc<Mutex<Vec<(String, Span)>>>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn receiver() -> Receiver {
    let spans: Arc<Mutex<Vec<(String, Span)>>> = Arc::default();
    let store = Arc::clone(&spans);
    let app = Router::new().route(
        "/v1/traces",
        post(move |headers: HeaderMap, body: Bytes| {
            let store = Arc::clone(&store);
            async move {
                assert_eq!(headers["content-type"], "application/x-protobuf");
                let request = ExportTraceServiceRequest::decode(body).unwrap();
                for resource_spans in request.resource_spans {
                    let service = resource_spans
                        .resource
                        .iter()
                        .flat_map(|r| &r.attributes)
                        .find(|kv| kv.key == "service.name")
                        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
                        .map(value_string)
                        .unwrap_or_default();
                    for scope in resource_spans.scope_spans {
                        let mut store = store.lock().unwrap();
                        store.extend(scope.spans.into_iter().map(|s| (service.clone(), s)));
                    }
                }
                (
                    [("content-type", "application/x-protobuf")],
                    ExportTraceServiceResponse::default().encode_to_vec(),
                )
            }
        }),
    );
    let (addr, server) = test_support::serve(app).await.unwrap();
    Receiver {
        addr,
        spans,
        server,
    }
}

fn value_string(value: &Value) -> String {
    match value {
        Value::StringValue(s) => s.clone(),
        Value::IntValue(i) => i.to_string(),
        Value::BoolValue(b) => b.to_string(),
        Value::DoubleValue(d) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
        .map(value_string)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn telemetry(receiver: &Receiver, layer: telemetry_layer::TelemetryLayerBuilder) -> Telemetry {
    Telemetry::builder()
        .service_name("test-svc")
        .install_recorder(false)
        .install_subscriber(false)
        .from_env(false)
        .otlp_endpoint(format!("http://{}", receiver.addr))
        .layer_config(layer)
        .build()
        .unwrap()
}

/// Installs the OpenTelemetry layer for this (current-thread) test only.
fn subscribe(telemetry: &Telemetry) -> tracing::subscriber::DefaultGuard {
    assert!(telemetry.tracing_enabled());
    let subscriber = tracing_subscriber::registry().with(telemetry.otel_layer());
    tracing::subscriber::set_default(subscriber)
}

fn routes() -> Router {
    Router::new()
        .route("/users/{id}", get(|| async { "user" }))
        .route(
            "/boom",
            get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "down") }),
        )
        .route(
            "/login",
            get(|| async { ([("set-cookie", "session=s3cr3t"), ("x-trace", "t1")], "ok") }),
        )
}

async fn call(app: &Router, req: Request<Body>) -> StatusCode {
    let response = app.clone().oneshot(req).await.unwrap();
    let status = response.status();
    response.into_body().collect().await.unwrap();
    status
}

async fn flushed_spans(telemetry: &Telemetry, receiver: &Receiver) -> Vec<(String, Span)> {
    telemetry.flush().await.unwrap();
    receiver.spans.lock().unwrap().clone()
}

fn find<'a>(spans: &'a [(String, Span)], name: &str) -> &'a Span {
    &spans
        .iter()
        .find(|(_, s)| s.name == name)
        .unwrap_or_else(|| {
            panic!(
                "no span {name} in {:?}",
                spans.iter().map(|(_, s)| &s.name).collect::<Vec<_>>()
            )
        })
        .1
}

#[tokio::test]
async fn server_span_continues_the_incoming_trace() {
    let receiver = receiver().await;
    let telemetry = telemetry(&receiver, TelemetryLayer::builder());
    let _subscriber = subscribe(&telemetry);
    let app = telemetry.instrument(routes());

    let req = Request::get("/users/42")
        .header("traceparent", format!("00-{TRACE_ID}-{PARENT_ID}-01"))
        .header("tracestate", "vendor=value")
        .body(Body::empty())
        .unwrap();
    assert_eq!(call(&app, req).await, StatusCode::OK);

    let spans = flushed_spans(&telemetry, &receiver).await;
    let span = find(&spans, "GET /users/{id}");
    assert_eq!(spans[0].0, "test-svc", "service.name resource");
    assert_eq!(hex(&span.trace_id), TRACE_ID);
    assert_eq!(hex(&span.parent_span_id), PARENT_ID);
    assert_eq!(span.trace_state, "vendor=value");
    assert_eq!(span.kind, SpanKind::Server as i32);
    assert_eq!(attr(span, "http.request.method").as_deref(), Some("GET"));
    assert_eq!(attr(span, "http.route").as_deref(), Some("/users/{id}"));
    assert_eq!(
        attr(span, "http.response.status_code").as_deref(),
        Some("200")
    );
    let status_code = span
        .attributes
        .iter()
        .find(|kv| kv.key == "http.response.status_code")
        .and_then(|kv| kv.value.as_ref()?.value.as_ref());
    assert_eq!(
        status_code,
        Some(&Value::IntValue(200)),
        "an integer, as the conventions type it"
    );
    assert_eq!(attr(span, "url.path").as_deref(), Some("/users/42"));
    assert_eq!(attr(span, "url.scheme").as_deref(), Some("http"));
    assert_eq!(
        attr(span, "network.protocol.version").as_deref(),
        Some("1.1")
    );
    assert_eq!(attr(span, "error.type"), None);
    let status = span.status.clone().unwrap_or_default();
    assert_eq!(status.code, SpanStatus::Unset as i32);
    assert!(span.end_time_unix_nano >= span.start_time_unix_nano);
}

#[tokio::test]
async fn status_is_error_for_5xx_only() {
    let receiver = receiver().await;
    let telemetry = telemetry(&receiver, TelemetryLayer::builder());
    let _subscriber = subscribe(&telemetry);
    let app = telemetry.instrument(routes());

    assert_eq!(
        call(&app, Request::get("/boom").body(Body::empty()).unwrap()).await,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(
        call(&app, Request::get("/absent").body(Body::empty()).unwrap()).await,
        StatusCode::NOT_FOUND
    );

    let spans = flushed_spans(&telemetry, &receiver).await;
    let boom = find(&spans, "GET /boom");
    assert_eq!(boom.status.clone().unwrap().code, SpanStatus::Error as i32);
    assert_eq!(attr(boom, "error.type").as_deref(), Some("500"));

    // No route: the name is the method alone and there is no http.route (never the raw path).
    let missing = find(&spans, "GET");
    assert_eq!(attr(missing, "http.route"), None);
    assert_eq!(
        attr(missing, "http.response.status_code").as_deref(),
        Some("404")
    );
    assert_eq!(
        missing.status.clone().unwrap_or_default().code,
        SpanStatus::Unset as i32
    );
    assert_eq!(attr(missing, "error.type"), None);
}

#[tokio::test]
async fn malformed_traceparent_starts_a_new_trace() {
    let receiver = receiver().await;
    let telemetry = telemetry(&receiver, TelemetryLayer::builder());
    let _subscriber = subscribe(&telemetry);
    let app = telemetry.instrument(routes());

    for bad in [
        "garbage",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-zzzzzzzzzzzzzzzz-01",
    ] {
        let req = Request::get("/users/1")
            .header("traceparent", bad)
            .body(Body::empty())
            .unwrap();
        assert_eq!(call(&app, req).await, StatusCode::OK, "{bad}");
    }
    let spans = flushed_spans(&telemetry, &receiver).await;
    assert_eq!(spans.len(), 3);
    for (_, span) in &spans {
        assert!(span.parent_span_id.is_empty(), "root span");
        assert_eq!(span.trace_id.len(), 16);
        assert_ne!(hex(&span.trace_id), "0".repeat(32));
        assert_ne!(hex(&span.trace_id), TRACE_ID);
    }
}

#[tokio::test]
async fn credentials_and_queries_are_not_recorded_by_default() {
    let receiver = receiver().await;
    let telemetry = telemetry(
        &receiver,
        TelemetryLayer::builder()
            .capture_request_headers(["x-request-id", "user-agent"])
            .capture_response_headers(["x-trace"]),
    );
    let _subscriber = subscribe(&telemetry);
    let app = telemetry.instrument(routes());
    let req = Request::get("/login?token=hunter2")
        .header("authorization", "Bearer hunter2")
        .header("cookie", "session=hunter2")
        .header("x-request-id", "req-1")
        .body(Body::empty())
        .unwrap();
    assert_eq!(call(&app, req).await, StatusCode::OK);

    let spans = flushed_spans(&telemetry, &receiver).await;
    let span = find(&spans, "GET /login");
    assert_eq!(
        attr(span, "http.request.header.x-request-id").as_deref(),
        Some("req-1")
    );
    assert_eq!(
        attr(span, "http.response.header.x-trace").as_deref(),
        Some("t1")
    );
    assert_eq!(attr(span, "url.query"), None);
    assert_eq!(attr(span, "url.path").as_deref(), Some("/login"));
    for kv in &span.attributes {
        let value = kv
            .value
            .as_ref()
            .and_then(|v| v.value.as_ref())
            .map(value_string)
            .unwrap_or_default();
        assert!(
            !value.contains("hunter2") && !value.contains("s3cr3t"),
            "{} = {value}",
            kv.key
        );
        assert!(
            !kv.key.contains("authorization") && !kv.key.contains("cookie"),
            "{}",
            kv.key
        );
    }
}

#[tokio::test]
async fn allowed_query_is_recorded_with_signatures_redacted() {
    let receiver = receiver().await;
    let telemetry = telemetry(
        &receiver,
        TelemetryLayer::builder()
            .record_query(true)
            .capture_request_headers(["authorization"])
            .allow_sensitive_headers(true),
    );
    let _subscriber = subscribe(&telemetry);
    let app = telemetry.instrument(routes());
    let req = Request::get("/users/1?page=2&sig=abcdef")
        .header("authorization", "Bearer visible")
        .body(Body::empty())
        .unwrap();
    assert_eq!(call(&app, req).await, StatusCode::OK);
    let spans = flushed_spans(&telemetry, &receiver).await;
    let span = find(&spans, "GET /users/{id}");
    assert_eq!(
        attr(span, "url.query").as_deref(),
        Some("page=2&sig=REDACTED")
    );
    assert_eq!(
        attr(span, "http.request.header.authorization").as_deref(),
        Some("Bearer visible")
    );
}

#[tokio::test]
async fn client_layer_injects_traceparent_into_a_real_request() {
    let receiver = receiver().await;
    let telemetry = telemetry(&receiver, TelemetryLayer::builder());
    let _subscriber = subscribe(&telemetry);

    // Downstream service: instrumented too, and echoes the traceparent it got.
    let downstream = telemetry.instrument(Router::new().route(
        "/echo",
        get(|headers: HeaderMap| async move {
            headers
                .get("traceparent")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default()
        }),
    ));
    let (addr, server) = test_support::serve(downstream).await.unwrap();

    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<Bytes>>();
    let client = ServiceBuilder::new()
        .layer(TraceClientLayer::new())
        .service(http);

    let parent = tracing::info_span!("job");
    let echoed = {
        let request = Request::get(format!("http://{addr}/echo?key=secret"))
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let response = tracing::Instrument::instrument(client.oneshot(request), parent.clone())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(body.to_vec()).unwrap()
    };
    drop(parent);
    server.abort();

    let spans = flushed_spans(&telemetry, &receiver).await;
    let job = find(&spans, "job");
    let client_span = spans
        .iter()
        .map(|(_, s)| s)
        .find(|s| s.kind == SpanKind::Client as i32)
        .expect("client span");
    let server_span = find(&spans, "GET /echo");

    assert_eq!(client_span.name, "GET");
    assert_eq!(client_span.parent_span_id, job.span_id);
    assert_eq!(client_span.trace_id, job.trace_id);
    assert_eq!(
        echoed,
        format!(
            "00-{}-{}-01",
            hex(&client_span.trace_id),
            hex(&client_span.span_id)
        ),
        "the downstream got the client span as parent"
    );
    assert_eq!(server_span.trace_id, job.trace_id);
    assert_eq!(server_span.parent_span_id, client_span.span_id);
    assert_eq!(
        attr(client_span, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(
        attr(client_span, "url.full"),
        Some(format!("http://{addr}/echo")),
        "no query"
    );
    assert_eq!(
        attr(client_span, "server.address").as_deref(),
        Some("127.0.0.1")
    );
}

#[tokio::test]
async fn nothing_is_exported_unless_configured() {
    let telemetry = Telemetry::builder()
        .install_recorder(false)
        .install_subscriber(false)
        .from_env(false)
        .build()
        .unwrap();
    assert!(!telemetry.tracing_enabled());
    assert!(
        telemetry
            .otel_layer::<tracing_subscriber::Registry>()
            .is_none()
    );
    telemetry.flush().await.unwrap();
}

#[tokio::test]
async fn handler_context_spans_and_events_belong_to_the_request_span() {
    use opentelemetry::trace::TraceContextExt;

    let receiver = receiver().await;
    let telemetry = telemetry(&receiver, TelemetryLayer::builder());
    let _subscriber = subscribe(&telemetry);
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let store = Arc::clone(&seen);
    let app = telemetry.instrument(Router::new().route(
        "/work",
        get(move || {
            let store = Arc::clone(&store);
            async move {
                let current = || {
                    let cx = opentelemetry::Context::current();
                    hex(&cx.span().span_context().span_id().to_bytes())
                };
                store.lock().unwrap().push(current());
                tracing::info!(step = 1, "working");
                // Across a suspension the request span is current again when the handler resumes.
                tokio::task::yield_now().await;
                store.lock().unwrap().push(current());
                tracing::info_span!("inner").in_scope(|| tracing::info!("inside"));
                "done"
            }
        }),
    ));
    assert_eq!(
        call(&app, Request::get("/work").body(Body::empty()).unwrap()).await,
        StatusCode::OK
    );
    // Outside the request, no span is current.
    assert!(!opentelemetry::Context::current().has_active_span());

    let spans = flushed_spans(&telemetry, &receiver).await;
    let request = find(&spans, "GET /work");
    let inner = find(&spans, "inner");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen, [hex(&request.span_id), hex(&request.span_id)]);
    assert_eq!(inner.parent_span_id, request.span_id);
    assert_eq!(inner.trace_id, request.trace_id);
    let events: Vec<&str> = request.events.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(events, ["working"]);
    let step = request.events[0]
        .attributes
        .iter()
        .find(|kv| kv.key == "step")
        .and_then(|kv| kv.value.as_ref()?.value.as_ref());
    assert_eq!(step, Some(&Value::IntValue(1)));
    let inner_events: Vec<&str> = inner.events.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(inner_events, ["inside"]);
}

/// Collects what a `fmt` layer writes.
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn log_layers_see_the_request_span_and_only_one_span_is_exported() {
    let receiver = receiver().await;
    let telemetry = telemetry(&receiver, TelemetryLayer::builder().log_request_span(true));
    let logs = LogBuffer::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::registry()
        .with(telemetry.otel_layer())
        .with(tracing_subscriber::fmt::layer().with_writer(move || writer.clone()));
    let _subscriber = tracing::subscriber::set_default(subscriber);
    let app = telemetry.instrument(Router::new().route(
        "/items/{id}",
        get(|| async {
            tracing::info!("fetching item");
            "item"
        }),
    ));
    assert_eq!(
        call(&app, Request::get("/items/7").body(Body::empty()).unwrap()).await,
        StatusCode::OK
    );

    let spans = flushed_spans(&telemetry, &receiver).await;
    let names: Vec<&str> = spans.iter().map(|(_, s)| s.name.as_str()).collect();
    assert_eq!(
        names,
        ["GET /items/{id}"],
        "no second span from the log twin"
    );
    let events: Vec<&str> = spans[0].1.events.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(events, ["fetching item"]);

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("fetching item"))
        .unwrap_or_else(|| panic!("no log line in {text:?}"));
    assert!(line.contains("HTTP request"), "{line}");
    assert!(line.contains("/items/{id}"), "{line}");
}
