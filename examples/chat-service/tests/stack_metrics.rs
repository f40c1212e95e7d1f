//! The stacked service's one `/metrics`: HTTP server series from telemetry-layer and every
//! layer's own (`cache_`, `dedup_`, `breaker_`) plus the service's `chat_db_` counters, accepted
//! by `promtool check metrics`.
//!
//! This binary installs the global metrics recorder, so it holds a single test.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use chat_service::{ChatService, Config, DB_DUPLICATE_QUERIES_TOTAL, DB_QUERIES_TOTAL};
use common::{ModerationServer, get, post_message, send_to};
use http::StatusCode;
use telemetry_layer::Telemetry;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_every_layer_and_pass_promtool() {
    // Telemetry first: the layers register their series with the recorder it installs.
    let telemetry = Telemetry::builder()
        .service_name("chat-service-test")
        .from_env(false)
        .install_subscriber(false)
        .build()
        .unwrap();
    let moderation = ModerationServer::start().await;
    let config = Config {
        moderation_url: Some(moderation.url.clone()),
        ..Config::temporary()
    };
    let service = ChatService::open(&config).await.unwrap();
    let app = service.app_with(&telemetry);

    let posted = send_to(&app, post_message("lobby", "hello", Some("k-1"))).await;
    assert_eq!(posted.status, StatusCode::CREATED, "{:?}", posted.body);
    let first = send_to(&app, get("/rooms/lobby/messages")).await;
    assert_eq!(first.status, StatusCode::OK);
    assert!(first.header("cache-status").contains("fwd="));
    let second = send_to(&app, get("/rooms/lobby/messages")).await;
    assert!(
        second.header("cache-status").contains("hit"),
        "{:?}",
        second.headers
    );
    assert_eq!(moderation.checks(), 1, "reads never call moderation");

    let reply = send_to(&app, get("/metrics")).await;
    assert_eq!(reply.status, StatusCode::OK);
    let exposition = String::from_utf8(reply.body.to_vec()).unwrap();
    for series in [
        "http_server_request_duration_seconds_bucket",
        "http_server_active_requests",
        "cache_requests_total",
        "dedup_requests_total",
        "breaker_calls_total",
        DB_QUERIES_TOTAL,
        DB_DUPLICATE_QUERIES_TOTAL,
    ] {
        assert!(
            exposition
                .lines()
                .any(|line| !line.starts_with('#') && line.starts_with(series)),
            "no {series} sample in\n{exposition}"
        );
    }
    let value = |series: &str| -> f64 {
        exposition
            .lines()
            .filter(|line| line.starts_with(series))
            .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    };
    assert_eq!(value(DB_QUERIES_TOTAL), 1.0, "one list query, then a hit");
    assert!(value("breaker_calls_total{") >= 1.0);
    test_support::assert_promtool_accepts(&exposition);

    // /stats stays outside the layers: not cached, not counted as an HTTP server request.
    let before = value("http_server_request_duration_seconds_count");
    let stats = common::stats(&app).await;
    assert_eq!(stats["mode"], "stacked");
    assert_eq!(stats["db_queries"], 1);
    assert_eq!(stats["breaker_state"], "closed");
    let reply = send_to(&app, get("/metrics")).await;
    let exposition = String::from_utf8(reply.body.to_vec()).unwrap();
    let after: f64 = exposition
        .lines()
        .filter(|line| line.starts_with("http_server_request_duration_seconds_count"))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert_eq!(after, before, "/stats and /metrics are not instrumented");

    tokio::time::timeout(Duration::from_secs(5), telemetry.flush())
        .await
        .unwrap()
        .unwrap();
}
