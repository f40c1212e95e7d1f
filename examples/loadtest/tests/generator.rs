//! The generator against a small fake chat server in this process: it sends exactly what the schedule holds,
//! page refreshes as identical concurrent GETs, posts with quoted Idempotency-Keys, and counts requests over
//! the in-flight cap as errors instead of dropping them. Counts only; no assertion on speed.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use chat_loadtest::client::Http;
use chat_loadtest::load::{self, LoadEnv, LoadPlan, OVERFLOW, Target};
use chat_loadtest::stack::Seeded;
use indicatif::ProgressBar;

/// What the fake server saw.
#[derive(Default)]
struct Seen {
    /// Requests by `METHOD path?query`.
    requests: HashMap<String, u32>,
    /// Idempotency-Key values of posts.
    keys: Vec<String>,
    /// Requests in flight now, and the most at once.
    in_flight: u32,
    most_in_flight: u32,
}

#[derive(Clone)]
struct Fake {
    seen: Arc<Mutex<Seen>>,
    delay: Duration,
}

impl Fake {
    async fn enter(&self, what: String) {
        {
            let mut seen = self.seen.lock().unwrap();
            *seen.requests.entry(what).or_insert(0) += 1;
            seen.in_flight += 1;
            seen.most_in_flight = seen.most_in_flight.max(seen.in_flight);
        }
        tokio::time::sleep(self.delay).await;
        self.seen.lock().unwrap().in_flight -= 1;
    }
}

async fn page(
    State(fake): State<Fake>,
    Path(room): Path<String>,
    uri: axum::http::Uri,
) -> impl IntoResponse {
    fake.enter(format!("GET {uri}")).await;
    axum::Json(
        serde_json::json!({ "room": room, "messages": [{"id": 1_000_000, "text": "x"}], "next_before": 900 }),
    )
}

async fn post(
    State(fake): State<Fake>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> impl IntoResponse {
    fake.enter(format!("POST {uri}")).await;
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let id = {
        let mut seen = fake.seen.lock().unwrap();
        seen.keys.push(key);
        2_000_000 + seen.keys.len() as i64
    };
    (
        StatusCode::CREATED,
        axum::Json(serde_json::json!({ "id": id })),
    )
}

async fn other(State(fake): State<Fake>, uri: axum::http::Uri) -> impl IntoResponse {
    fake.enter(format!("GET {uri}")).await;
    axum::Json(serde_json::json!({ "rooms": [] }))
}

async fn start(delay: Duration) -> (Arc<Mutex<Seen>>, LoadEnv) {
    let fake = Fake {
        seen: Arc::default(),
        delay,
    };
    let app = Router::new()
        .route("/rooms", get(other))
        .route("/rooms/{room}/messages", get(page).post(post))
        .route("/rooms/{room}/messages/{id}", get(other))
        .route(
            "/stats",
            get(|| async {
                axum::Json(serde_json::json!({"db_queries": 0, "db_duplicate_queries": 0}))
            }),
        )
        .with_state(fake.clone());
    let (addr, _server) = test_support::serve(app).await.unwrap();
    let env = LoadEnv {
        http: Http::new(Duration::from_secs(5)),
        targets: vec![Target {
            name: "fake".into(),
            base: format!("http://{addr}"),
            pid: None,
        }],
        moderation: format!("http://{addr}"),
        faults: None,
        seeded: Seeded {
            rooms: 5,
            messages_per_room: 100,
        },
        run_id: "gen".into(),
    };
    (fake.seen, env)
}

fn plan(rate: f64, duration: Duration, max_requests: u64, max_in_flight: usize) -> LoadPlan {
    LoadPlan {
        rate,
        duration,
        max_requests,
        max_in_flight,
        burst: 5,
        zipf_exponent: 1.0,
        retry_share: 0.0,
        outage: None,
        chaos: None,
        check_freshness: false,
        seed: 3,
        label: "test".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_what_the_schedule_holds_with_bursts_and_keyed_posts() {
    let (seen, env) = start(Duration::ZERO).await;
    let result = load::run(
        &env,
        &plan(400.0, Duration::from_secs(1), 100_000, 1_000),
        &ProgressBar::hidden(),
    )
    .await;
    let seen = seen.lock().unwrap();
    let received: u32 = seen.requests.values().sum();
    // 400 slots in the second; the last action may be a burst that starts inside it and spills over.
    assert!(
        (400..=404).contains(&result.scheduled),
        "{}",
        result.scheduled
    );
    assert_eq!(
        u64::from(received),
        result.scheduled,
        "every scheduled request reached the server"
    );
    assert_eq!(result.answered, result.scheduled);
    assert!(result.errors.0.is_empty(), "{:?}", result.errors.0);
    // Refreshes ask for the same first page five times at once, so a popular room's page is asked often.
    let first_pages: u32 = seen
        .requests
        .iter()
        .filter(|(what, _)| what.starts_with("GET /rooms/room-") && what.ends_with("/messages"))
        .map(|(_, n)| n)
        .sum();
    assert!(first_pages > 100, "{first_pages}");
    assert!(
        seen.requests
            .keys()
            .any(|what| what.contains("/messages?before=900")),
        "pagination follows next_before"
    );
    assert!(!seen.keys.is_empty(), "posts were sent");
    assert!(
        seen.keys
            .iter()
            .all(|k| k.starts_with("\"lt-gen-") && k.ends_with('"')),
        "{:?}",
        seen.keys
    );
    assert_eq!(result.posts.posts, seen.keys.len() as u64);
    assert_eq!(result.posts.acked, result.posts.posts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_count_bounds_a_run() {
    let (seen, env) = start(Duration::ZERO).await;
    let result = load::run(
        &env,
        &plan(2_000.0, Duration::from_secs(60), 50, 1_000),
        &ProgressBar::hidden(),
    )
    .await;
    let received: u32 = seen.lock().unwrap().requests.values().sum();
    assert!(
        (50..=54).contains(&result.scheduled),
        "{}",
        result.scheduled
    );
    assert_eq!(u64::from(received), result.scheduled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_the_in_flight_cap_are_errors_not_dropped() {
    // Every answer takes 300 ms, so at 100 requests/s about 30 would be in flight: the cap of 4 overflows.
    let (seen, env) = start(Duration::from_millis(300)).await;
    let result = load::run(
        &env,
        &plan(100.0, Duration::from_millis(500), 100_000, 4),
        &ProgressBar::hidden(),
    )
    .await;
    let seen = seen.lock().unwrap();
    let received: u32 = seen.requests.values().sum();
    let overflow = result.errors.0.get(OVERFLOW).copied().unwrap_or(0);
    assert!(seen.most_in_flight <= 4, "{}", seen.most_in_flight);
    assert!(overflow > 0);
    assert_eq!(
        u64::from(received) + overflow,
        result.scheduled,
        "each scheduled request was either sent or counted as an error"
    );
    assert_eq!(result.errors.total(), overflow);
}
