//! The README's stack on one Router: misses coalesce, hits never reach the handler, and every layer's metrics
//! appear in the one `/metrics` exposition that telemetry-layer serves.
//!
//! This binary installs the global metrics recorder, so it holds a single test.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use breaker_layer::{BreakerLayer, CircuitBreaker};
use cache_layer::CacheLayer;
use common::get_text;
use dedup_layer::DedupLayer;
use http::{StatusCode, header};
use telemetry_layer::Telemetry;
use tokio::sync::Notify;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stack_coalesces_misses_serves_hits_and_exports_every_layers_metrics() {
    let telemetry = Telemetry::builder()
        .service_name("stack-test")
        .from_env(false)
        .install_subscriber(false)
        .build()
        .unwrap();

    let origin_calls = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(Notify::new());
    let handler = {
        let origin_calls = origin_calls.clone();
        let release = release.clone();
        move || {
            let origin_calls = origin_calls.clone();
            let release = release.clone();
            async move {
                let call = origin_calls.fetch_add(1, Ordering::SeqCst) + 1;
                release.notified().await;
                (
                    [(header::CACHE_CONTROL, "public, max-age=60")],
                    format!("history #{call}"),
                )
            }
        }
    };

    let breaker = CircuitBreaker::builder()
        .name("history")
        .count_window(20)
        .build()
        .unwrap();
    let dedup = DedupLayer::new();
    let dedup_handle = dedup.handle();
    let routes = Router::new()
        .route("/rooms/{room}/messages", get(handler))
        .layer(BreakerLayer::new(breaker))
        .layer(dedup)
        .layer(CacheLayer::new());
    let app = telemetry.instrument(routes);

    // Cold cache: 40 identical refreshes at once. The cache misses for each, dedup lets one through.
    const CLIENTS: usize = 40;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let app = app.clone();
        clients.push(tokio::spawn(async move {
            get_text(&app, "/rooms/lobby/messages").await.unwrap()
        }));
    }
    tokio::time::timeout(Duration::from_secs(10), async {
        while dedup_handle.waiters() < CLIENTS - 1 || origin_calls.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("every client joined the one in-flight request");
    release.notify_one();

    for client in clients {
        let (status, _, body) = client.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "history #1");
    }
    assert_eq!(origin_calls.load(Ordering::SeqCst), 1);
    assert_eq!(dedup_handle.inflight(), 0);

    // Warm cache: a refresh is answered by the cache, the handler is not called again.
    let (status, headers, body) = get_text(&app, "/rooms/lobby/messages").await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "history #1");
    let cache_status = headers[cache_layer::CACHE_STATUS].to_str().unwrap();
    assert!(cache_status.contains("hit"), "Cache-Status: {cache_status}");
    assert_eq!(origin_calls.load(Ordering::SeqCst), 1);

    // One exposition carries the HTTP server metrics and each layer's own.
    let (status, headers, exposition) = get_text(&app, "/metrics").await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    test_support::assert_promtool_accepts(&exposition);
    let samples: Vec<(&str, f64)> = exposition
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("`series value` line");
            (series, value.parse::<f64>().expect("numeric sample value"))
        })
        .collect();
    let total = |prefix: &str, needle: &str| -> f64 {
        samples
            .iter()
            .filter(|(series, _)| series.starts_with(prefix) && series.contains(needle))
            .map(|(_, value)| value)
            .sum()
    };
    assert_eq!(
        total(
            "http_server_request_duration_seconds_count",
            "http_route=\"/rooms/{room}/messages\""
        ),
        (CLIENTS + 1) as f64
    );
    assert_eq!(
        total("dedup_requests_total", "outcome=\"coalesced\""),
        (CLIENTS - 1) as f64
    );
    assert_eq!(total("dedup_requests_total", "outcome=\"leader\""), 1.0);
    assert!(total("cache_requests_total", "outcome=\"hit\"") >= 1.0);
    assert_eq!(total("breaker_calls_total", "outcome=\"success\""), 1.0);
}
