//! A page refresh as a burst of identical concurrent GETs on a cold URL: stacked, it reaches
//! SQLite once; bare, every request runs its own query and many overlap (`/stats` counts them).
//! Bare mode serves the same routes without the layers.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use chat_service::{ChatService, Config};
use common::{get, send_to, stats};
use http::StatusCode;

const BURST: usize = 50;

/// Each read holds its connection this long, so the burst is in flight together however the
/// tasks are scheduled.
const READ_DELAY: Duration = Duration::from_millis(100);

async fn burst(app: &axum::Router, uri: &str) -> Vec<common::Reply> {
    let tasks: Vec<_> = (0..BURST)
        .map(|_| {
            let app = app.clone();
            let uri = uri.to_owned();
            tokio::spawn(async move { send_to(&app, get(&uri)).await })
        })
        .collect();
    let mut replies = Vec::with_capacity(BURST);
    for task in tasks {
        replies.push(task.await.unwrap());
    }
    replies
}

async fn open(bare: bool) -> (ChatService, axum::Router) {
    let config = Config {
        bare,
        read_delay: READ_DELAY,
        ..Config::temporary()
    };
    let service = ChatService::open(&config).await.unwrap();
    service.seed(2, 30).await.unwrap();
    let app = service.app();
    (service, app)
}

/// The answer without `created_at`, which differs between two seeded databases.
fn without_times(mut value: serde_json::Value) -> serde_json::Value {
    match &mut value {
        serde_json::Value::Object(fields) => {
            fields.remove("created_at");
            for field in fields.values_mut() {
                *field = without_times(field.take());
            }
        }
        serde_json::Value::Array(items) => {
            for item in items.iter_mut() {
                *item = without_times(item.take());
            }
        }
        _ => {}
    }
    value
}

fn counts(stats: &serde_json::Value) -> (u64, u64) {
    (
        stats["db_queries"].as_u64().unwrap(),
        stats["db_duplicate_queries"].as_u64().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stacked_an_identical_burst_reaches_sqlite_once() {
    let (_service, app) = open(false).await;
    let before = counts(&stats(&app).await);
    let replies = burst(&app, "/rooms/room-1/messages?limit=20").await;
    let bodies: Vec<_> = replies.iter().map(|r| r.body.clone()).collect();
    for reply in &replies {
        assert_eq!(reply.status, StatusCode::OK);
        assert!(reply.headers.contains_key("cache-status"));
    }
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "every client got the same page"
    );
    // The cache collapses the burst: one miss fills the entry, the others are answered from it.
    let hits = replies
        .iter()
        .filter(|r| {
            r.headers
                .get("cache-status")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains("; hit"))
        })
        .count();
    assert_eq!(hits, BURST - 1, "every request but the first is a hit");
    let after = counts(&stats(&app).await);
    assert_eq!(
        after.0 - before.0,
        1,
        "one query for {BURST} identical requests"
    );
    assert_eq!(after.1 - before.1, 0, "no duplicate query");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bare_every_request_queries_and_identical_queries_overlap() {
    let (_service, app) = open(true).await;
    let before = counts(&stats(&app).await);
    let replies = burst(&app, "/rooms/room-1/messages?limit=20").await;
    for reply in &replies {
        assert_eq!(reply.status, StatusCode::OK);
        assert!(reply.headers.get("cache-status").is_none());
    }
    let after = counts(&stats(&app).await);
    assert_eq!(after.0 - before.0, BURST as u64, "no cache, no coalescing");
    // Four reader connections and a 100 ms query: while the first query runs, the rest of the
    // burst is queued or running behind it.
    assert!(
        after.1 - before.1 > 1,
        "duplicates: {} (stats {after:?})",
        after.1 - before.1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_serves_the_same_routes_without_layers() {
    let stacked = ChatService::open(&Config::temporary()).await.unwrap();
    let bare = ChatService::open(&Config {
        bare: true,
        ..Config::temporary()
    })
    .await
    .unwrap();
    for service in [&stacked, &bare] {
        service.seed(1, 3).await.unwrap();
    }
    let telemetry = telemetry_layer::Telemetry::builder()
        .install_recorder(false)
        .install_subscriber(false)
        .from_env(false)
        .build()
        .unwrap();
    let stacked_app = stacked.app_with(&telemetry);
    let bare_app = bare.app_with(&telemetry);

    for uri in [
        "/rooms",
        "/rooms/room-1/messages",
        "/rooms/room-1/messages/1",
        "/healthz",
    ] {
        let (s, b) = (
            send_to(&stacked_app, get(uri)).await,
            send_to(&bare_app, get(uri)).await,
        );
        assert_eq!(s.status, StatusCode::OK, "{uri}");
        assert_eq!(b.status, StatusCode::OK, "{uri}");
        assert_eq!(
            without_times(s.json()),
            without_times(b.json()),
            "{uri}: same answer"
        );
        assert_eq!(s.headers.get("etag"), b.headers.get("etag"), "{uri}");
        assert!(b.headers.get("cache-status").is_none(), "{uri}");
        if uri != "/healthz" {
            assert!(s.headers.contains_key("cache-status"), "{uri}");
        }
    }
    let missing = send_to(&bare_app, get("/nowhere")).await;
    missing.assert_problem(StatusCode::NOT_FOUND);
    assert_eq!(
        send_to(&stacked_app, get("/metrics")).await.status,
        StatusCode::OK
    );
    send_to(&bare_app, get("/metrics"))
        .await
        .assert_problem(StatusCode::NOT_FOUND);
    assert_eq!(stats(&bare_app).await["mode"], "bare");
    assert_eq!(stats(&stacked_app).await["mode"], "stacked");
    assert!(stats(&stacked_app).await["breaker_state"].is_null());
    // The stacked fallback is still the service's own 404.
    send_to(&stacked_app, get("/nowhere"))
        .await
        .assert_problem(StatusCode::NOT_FOUND);
}
