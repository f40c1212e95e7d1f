//! Trace propagation: with span export on, a post's moderation check carries a `traceparent`
//! that continues the incoming request's trace, so the dependency's spans join it.
//!
//! This binary installs the global `tracing` subscriber, so it holds a single test.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use axum::Router;
use axum::routing::post;
use chat_service::{ChatService, Config};
use common::{ModerationServer, post_message, send_to};
use http::StatusCode;
use telemetry_layer::Telemetry;
use tracing_subscriber::prelude::*;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_moderation_check_continues_the_request_trace() {
    // A collector that accepts every export, so the span pipeline runs as in production.
    let collector = Router::new().route(
        "/v1/traces",
        post(|| async {
            (
                [("content-type", "application/x-protobuf")],
                Vec::<u8>::new(),
            )
        }),
    );
    let (collector_addr, collector_task) = test_support::serve(collector).await.unwrap();
    let telemetry = Telemetry::builder()
        .service_name("chat-service-test")
        .install_recorder(false)
        .install_subscriber(false)
        .from_env(false)
        .otlp_endpoint(format!("http://{collector_addr}"))
        .build()
        .unwrap();
    assert!(telemetry.tracing_enabled());
    tracing::subscriber::set_global_default(
        tracing_subscriber::registry().with(telemetry.otel_layer()),
    )
    .unwrap();

    let moderation = ModerationServer::start().await;
    let config = Config {
        moderation_url: Some(moderation.url.clone()),
        ..Config::temporary()
    };
    let service = ChatService::open(&config).await.unwrap();
    let app = service.app_with(&telemetry);

    let mut request = post_message("lobby", "traced", Some("t-1"));
    request.headers_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-{PARENT_ID}-01").parse().unwrap(),
    );
    let reply = send_to(&app, request).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);

    let seen = moderation
        .service
        .stats()
        .last_traceparent
        .expect("the check carried a traceparent");
    let parts: Vec<&str> = seen.split('-').collect();
    assert_eq!(parts.len(), 4, "{seen}");
    assert_eq!(
        parts[1], TRACE_ID,
        "same trace as the incoming request: {seen}"
    );
    assert_ne!(
        parts[2], PARENT_ID,
        "a span of this service is the parent: {seen}"
    );

    // Without an incoming trace the check still starts one the dependency can join.
    let reply = send_to(&app, post_message("lobby", "untraced", None)).await;
    assert_eq!(reply.status, StatusCode::CREATED);
    let seen = moderation.service.stats().last_traceparent.unwrap();
    assert!(!seen.contains(TRACE_ID), "{seen}");

    telemetry.flush().await.unwrap();
    collector_task.abort();
}
