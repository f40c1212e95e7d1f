//! Posts and the moderation dependency, a real moderation server on a loopback port: rejection,
//! outage (503 + Retry-After, nothing stored, the breaker opens and then spares the dependency),
//! timeouts, recovery, and reads that never depend on it.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use chat_service::{ChatService, Config, ModerationBreaker};
use common::{ModerationServer, get, page_ids, post_message, send_to, stats};
use http::StatusCode;

/// Breaker timings short enough for a test: opens after 3 failed calls, probes after 300 ms.
fn quick_breaker() -> ModerationBreaker {
    ModerationBreaker {
        window: 4,
        minimum_calls: 3,
        failure_rate_threshold: 50.0,
        wait_in_open: Duration::from_millis(300),
        half_open_probes: 1,
    }
}

async fn stacked(moderation: &ModerationServer) -> (ChatService, axum::Router) {
    let config = Config {
        moderation_url: Some(moderation.url.clone()),
        moderation_breaker: quick_breaker(),
        moderation_timeout: Duration::from_millis(300),
        ..Config::temporary()
    };
    let service = ChatService::open(&config).await.unwrap();
    let app = service.app();
    (service, app)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_posts_get_422_and_invalid_ones_never_reach_moderation() {
    let moderation = ModerationServer::start().await;
    let (_service, app) = stacked(&moderation).await;

    let reply = send_to(
        &app,
        post_message("lobby", "a forbidden-word here", Some("r-1")),
    )
    .await;
    reply.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.json()["type"], "/problems/rejected-by-moderation");
    assert_eq!(moderation.checks(), 1);

    let reply = send_to(&app, post_message("lobby", "   ", None)).await;
    reply.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(moderation.checks(), 1, "invalid input is refused first");

    let page = send_to(&app, get("/rooms/lobby/messages")).await;
    assert!(page_ids(&page.json()).is_empty());
    assert_eq!(moderation.checks(), 1, "reads never call moderation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_answers_503_stores_nothing_opens_the_breaker_and_recovers() {
    let moderation = ModerationServer::start().await;
    let (service, app) = stacked(&moderation).await;
    let breaker = service.moderation_breaker().unwrap();
    let mut transitions = breaker.subscribe();

    let reply = send_to(&app, post_message("lobby", "before", None)).await;
    assert_eq!(reply.status, StatusCode::CREATED);
    let before = send_to(&app, get("/rooms/lobby/messages")).await;
    assert_eq!(page_ids(&before.json()).len(), 1);

    moderation.set_down(true);
    // Each failed check answers 503 with Retry-After; the key is not stored, so it can be
    // retried later.
    for attempt in 0..3 {
        let reply = send_to(&app, post_message("lobby", "during", Some("outage-1"))).await;
        reply.assert_problem(StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(reply.json()["type"], "/problems/moderation-unavailable");
        assert_eq!(reply.header("cache-control"), "no-store");
        let retry_after: u64 = reply.header("retry-after").parse().unwrap();
        assert!(retry_after >= 1, "attempt {attempt}: {retry_after}");
        assert!(reply.headers.get("idempotent-replayed").is_none());
    }
    // One success and two failures in a window of at least 3 calls: the breaker opened, and
    // the third attempt was refused without a call.
    assert_eq!(moderation.checks(), 3);
    assert_eq!(stats(&app).await["breaker_state"], "open");
    let transition = transitions.try_recv().unwrap();
    assert_eq!(transition.to, breaker_layer::BreakerState::Open);

    // Open: posts fail fast and the dependency is not called at all.
    let started = Instant::now();
    for _ in 0..5 {
        let reply = send_to(&app, post_message("lobby", "during", None)).await;
        reply.assert_problem(StatusCode::SERVICE_UNAVAILABLE);
        assert!(reply.headers.contains_key("retry-after"));
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        moderation.checks(),
        3,
        "the open breaker spares the dependency"
    );

    // Reads keep being served, and nothing was stored.
    let during = send_to(&app, get("/rooms/lobby/messages")).await;
    assert_eq!(during.status, StatusCode::OK);
    assert_eq!(page_ids(&during.json()), page_ids(&before.json()));
    assert_eq!(moderation.checks(), 3);

    // Back up: once the breaker probes, the retry with the same key is stored once.
    moderation.set_down(false);
    let deadline = Instant::now() + Duration::from_secs(10);
    let stored = loop {
        let reply = send_to(&app, post_message("lobby", "during", Some("outage-1"))).await;
        if reply.status == StatusCode::CREATED {
            break reply;
        }
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(Instant::now() < deadline, "the breaker did not recover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(stats(&app).await["breaker_state"], "closed");
    let replay = send_to(&app, post_message("lobby", "during", Some("outage-1"))).await;
    assert_eq!(replay.status, StatusCode::CREATED);
    assert_eq!(replay.header("idempotent-replayed"), "true");
    assert_eq!(replay.json()["id"], stored.json()["id"]);
    let after = send_to(&app, get("/rooms/lobby/messages")).await;
    assert_eq!(page_ids(&after.json()).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_dependency_times_out_and_counts_as_failing() {
    let moderation = ModerationServer::start().await;
    let (_service, app) = stacked(&moderation).await;
    moderation.service.set_faults(moderation::FaultsUpdate {
        latency_ms: Some(5_000),
        ..Default::default()
    });
    for _ in 0..3 {
        let started = Instant::now();
        let reply = send_to(&app, post_message("lobby", "slow", None)).await;
        reply.assert_problem(StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "bounded by the timeout"
        );
    }
    assert_eq!(stats(&app).await["breaker_state"], "open");
    let page = send_to(&app, get("/rooms/lobby/messages")).await;
    assert!(page_ids(&page.json()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_calls_the_dependency_directly_with_the_same_timeout() {
    let moderation = ModerationServer::start().await;
    let config = Config {
        bare: true,
        moderation_url: Some(moderation.url.clone()),
        moderation_timeout: Duration::from_millis(300),
        ..Config::temporary()
    };
    let service = ChatService::open(&config).await.unwrap();
    let app = service.app();
    assert!(service.moderation_breaker().is_none());

    moderation.set_down(true);
    for _ in 0..6 {
        let reply = send_to(&app, post_message("lobby", "x", None)).await;
        reply.assert_problem(StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(moderation.checks(), 6, "no breaker: every post calls");
    let stats = stats(&app).await;
    assert_eq!(stats["mode"], "bare");
    assert!(stats["breaker_state"].is_null());

    moderation.set_down(false);
    let reply = send_to(&app, post_message("lobby", "x", None)).await;
    assert_eq!(reply.status, StatusCode::CREATED);
}
