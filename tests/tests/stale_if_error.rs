//! The contract between breaker-layer and cache-layer: while the breaker is open, the cache answers from its stale
//! copy inside `stale-if-error`, and only requests with nothing cached see the breaker's `503`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use breaker_layer::{BreakerLayer, BreakerState, CircuitBreaker};
use cache_layer::CacheLayer;
use common::get_text;
use dedup_layer::DedupLayer;
use http::{StatusCode, header};

#[tokio::test(start_paused = true)]
async fn open_breaker_turns_into_stale_answers_for_cached_pages() {
    let healthy = Arc::new(AtomicBool::new(true));
    let origin_calls = Arc::new(AtomicUsize::new(0));
    let handler = {
        let healthy = healthy.clone();
        let origin_calls = origin_calls.clone();
        move || {
            let healthy = healthy.clone();
            let origin_calls = origin_calls.clone();
            async move {
                origin_calls.fetch_add(1, Ordering::SeqCst);
                if healthy.load(Ordering::SeqCst) {
                    Ok((
                        [(header::CACHE_CONTROL, "max-age=1, stale-if-error=300")],
                        "history v1",
                    ))
                } else {
                    Err(StatusCode::INTERNAL_SERVER_ERROR)
                }
            }
        }
    };
    let breaker = CircuitBreaker::builder()
        .name("history")
        .consecutive_failures(2)
        .wait_in_open(Duration::from_secs(30))
        .build()
        .unwrap();
    let app = Router::new()
        .route("/rooms/{room}/messages", get(handler))
        .layer(BreakerLayer::new(breaker.clone()))
        .layer(DedupLayer::new())
        .layer(CacheLayer::new());

    let (status, _, body) = get_text(&app, "/rooms/lobby/messages").await.unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "history v1"));

    // The page goes stale and the dependency fails: each failure reaches the breaker, the client gets the stale copy.
    tokio::time::advance(Duration::from_secs(2)).await;
    healthy.store(false, Ordering::SeqCst);
    for _ in 0..2 {
        let (status, _, body) = get_text(&app, "/rooms/lobby/messages").await.unwrap();
        assert_eq!((status, body.as_str()), (StatusCode::OK, "history v1"));
    }
    assert_eq!(origin_calls.load(Ordering::SeqCst), 3);
    assert_eq!(breaker.state(), BreakerState::Open);

    // Open: the breaker answers 503 without calling the origin, and the cache turns that into its stale copy.
    let (status, headers, body) = get_text(&app, "/rooms/lobby/messages").await.unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "history v1"));
    assert_eq!(origin_calls.load(Ordering::SeqCst), 3);
    let cache_status = headers[cache_layer::CACHE_STATUS].to_str().unwrap();
    assert!(
        cache_status.contains("fwd-status=503") && cache_status.contains("stale-if-error"),
        "Cache-Status: {cache_status}"
    );

    // Nothing cached for this room: the breaker's own answer reaches the client.
    let (status, headers, _) = get_text(&app, "/rooms/other/messages").await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(headers.contains_key(header::RETRY_AFTER));
    assert_eq!(headers[header::CACHE_CONTROL], "no-store");
    assert_eq!(origin_calls.load(Ordering::SeqCst), 3);
}
