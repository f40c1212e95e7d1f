//! The Redis idempotency store against a real redis-server: sharing across instances, lock expiry, outages.
#![cfg(feature = "redis")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // helpers of test code

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::post;
use bytes::Bytes;
use common::{send, until};
use dedup_layer::store::{Begin, Fingerprint, IdempotencyStore, LockToken, RedisStore};
use dedup_layer::{IdempotencyLayer, OnStoreError};
use http::{Request, StatusCode, header};
use test_support::RedisServer;
use tokio::sync::Semaphore;

fn store(server: &RedisServer) -> RedisStore {
    RedisStore::builder(server.url())
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap()
}

#[derive(Clone)]
struct Handler {
    calls: Arc<AtomicUsize>,
    gate: Option<Arc<Semaphore>>,
}

impl Handler {
    fn new(gated: bool) -> Self {
        Handler {
            calls: Arc::new(AtomicUsize::new(0)),
            gate: gated.then(|| Arc::new(Semaphore::new(0))),
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn app(&self, layer: IdempotencyLayer<RedisStore>) -> Router {
        let h = self.clone();
        Router::new()
            .route(
                "/orders",
                post(move |body: Bytes| {
                    let h = h.clone();
                    async move {
                        let n = h.calls.fetch_add(1, Ordering::SeqCst) + 1;
                        if let Some(gate) = &h.gate
                            && let Ok(p) = gate.acquire().await
                        {
                            p.forget();
                        }
                        (
                            StatusCode::CREATED,
                            [("location", format!("/orders/{n}"))],
                            format!("call {n} body {}", body.len()),
                        )
                    }
                }),
            )
            .route_layer(layer)
    }
}

fn req(key: &str, body: &'static str) -> Request<Body> {
    Request::post("/orders")
        .header("idempotency-key", key)
        .header(header::AUTHORIZATION, "Bearer alice")
        .body(Body::from(body))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_is_replayed_by_another_instance_sharing_redis() {
    let server = RedisServer::start().unwrap();
    let handler = Handler::new(false);
    // Two instances: separate layers, separate pools, one Redis.
    let a = handler.app(IdempotencyLayer::new(store(&server)));
    let b = handler.app(IdempotencyLayer::new(store(&server)));

    let (status, headers, body) = send(a, req("\"order-1\"", "{\"qty\":1}")).await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(headers.get("idempotent-replayed").is_none());

    let (status2, headers2, body2) = send(b.clone(), req("\"order-1\"", "{\"qty\":1}")).await;
    assert_eq!(status2, StatusCode::CREATED);
    assert_eq!(headers2["idempotent-replayed"], "true");
    assert_eq!(headers2["location"], headers["location"]);
    assert_eq!(body2, body);
    assert_eq!(handler.calls(), 1);

    let (status, _, _) = send(b, req("\"order-1\"", "{\"qty\":2}")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(handler.calls(), 1);

    // The record carries the 24 h default TTL.
    let keys = server.cli(&["KEYS", "idem:*"]).unwrap();
    let key = keys.lines().next().unwrap().trim().to_owned();
    let ttl: i64 = server.cli(&["PTTL", &key]).unwrap().trim().parse().unwrap();
    assert!(
        ttl > 23 * 3600 * 1000 && ttl <= 24 * 3600 * 1000,
        "ttl {ttl}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_key_is_409_on_another_instance() {
    let server = RedisServer::start().unwrap();
    let handler = Handler::new(true);
    let a = handler.app(IdempotencyLayer::new(store(&server)));
    let b = handler.app(IdempotencyLayer::new(store(&server)));

    let first = tokio::spawn(send(a, req("\"k\"", "x")));
    until("first in handler", || handler.calls() == 1).await;
    let (status, headers, _) = send(b.clone(), req("\"k\"", "x")).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
    handler.gate.as_ref().unwrap().add_permits(1);
    assert_eq!(first.await.unwrap().0, StatusCode::CREATED);
    let (_, headers, _) = send(b, req("\"k\"", "x")).await;
    assert_eq!(headers["idempotent-replayed"], "true");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_expire_and_only_their_holder_releases_them() {
    let server = RedisServer::start().unwrap();
    let store = store(&server);
    let fp = Fingerprint::from_bytes([1; 32]);
    let token = LockToken::random();
    assert_eq!(
        store
            .try_begin("k", &token, &fp, Duration::from_secs(30))
            .await
            .unwrap(),
        Begin::Started
    );
    // A crashed holder's lock is bounded by its PX.
    let ttl: i64 = server
        .cli(&["PTTL", "idem:k"])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(ttl > 0 && ttl <= 30_000, "ttl {ttl}");

    assert_eq!(
        store
            .try_begin("k", &LockToken::random(), &fp, Duration::from_secs(30))
            .await
            .unwrap(),
        Begin::InProgress
    );
    assert_eq!(
        store
            .try_begin(
                "k",
                &LockToken::random(),
                &Fingerprint::from_bytes([2; 32]),
                Duration::from_secs(30)
            )
            .await
            .unwrap(),
        Begin::Mismatch
    );
    store.release("k", &LockToken::random()).await.unwrap();
    assert_eq!(
        store
            .try_begin("k", &LockToken::random(), &fp, Duration::from_secs(30))
            .await
            .unwrap(),
        Begin::InProgress
    );
    store.release("k", &token).await.unwrap();
    assert!(matches!(
        store
            .try_begin("k", &LockToken::random(), &fp, Duration::from_secs(30))
            .await
            .unwrap(),
        Begin::Started
    ));

    // Garbage in the key is a store error, not a panic or a replay.
    server.cli(&["SET", "idem:bad", "Rxx"]).unwrap();
    assert!(
        store
            .try_begin("bad", &LockToken::random(), &fp, Duration::from_secs(30))
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_redis_fails_open_or_answers_503() {
    let mut server = RedisServer::start().unwrap();
    let handler = Handler::new(false);
    let reject = handler.app(IdempotencyLayer::new(store(&server)));
    let open = handler.app(
        IdempotencyLayer::builder(store(&server))
            .on_store_error(OnStoreError::FailOpen)
            .build()
            .unwrap(),
    );
    assert_eq!(
        send(reject.clone(), req("\"warm\"", "x")).await.0,
        StatusCode::CREATED
    );
    server.stop().unwrap();

    let (status, headers, body) = send(reject, req("\"k\"", "x")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers[header::RETRY_AFTER], "1");
    assert!(
        std::str::from_utf8(&body)
            .unwrap()
            .contains("\"status\":503")
    );
    assert_eq!(handler.calls(), 1);

    let (status, headers, _) = send(open, req("\"k\"", "x")).await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(headers.get("idempotent-replayed").is_none());
    assert_eq!(handler.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_redis_times_out_then_fails_open_or_answers_503() {
    let server = RedisServer::start().unwrap();
    let handler = Handler::new(false);
    let reject = handler.app(
        IdempotencyLayer::builder(store(&server))
            .store_timeout(Duration::from_millis(200))
            .build()
            .unwrap(),
    );
    let open = handler.app(
        IdempotencyLayer::builder(store(&server))
            .store_timeout(Duration::from_millis(200))
            .on_store_error(OnStoreError::FailOpen)
            .build()
            .unwrap(),
    );
    // Connect both pools first, so the pause hits established connections.
    assert_eq!(
        send(reject.clone(), req("\"a\"", "x")).await.0,
        StatusCode::CREATED
    );
    assert_eq!(
        send(open.clone(), req("\"b\"", "x")).await.0,
        StatusCode::CREATED
    );
    server.pause().unwrap();

    let (status, _, _) = send(reject.clone(), req("\"k\"", "x")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let (status, _, _) = send(open, req("\"k\"", "x")).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(handler.calls(), 3);

    server.resume().unwrap();
    let mut recovered = StatusCode::SERVICE_UNAVAILABLE;
    for _ in 0..50 {
        recovered = send(reject.clone(), req("\"after\"", "x")).await.0;
        if recovered == StatusCode::CREATED {
            break;
        }
    }
    assert_eq!(recovered, StatusCode::CREATED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_lands_after_redis_lost_the_lock_but_never_over_another_lock() {
    let mut server = RedisServer::start().unwrap();
    let store = store(&server);
    let fp = Fingerprint::from_bytes([1; 32]);
    let response = dedup_layer::store::StoredResponse::new(
        StatusCode::CREATED,
        http::HeaderMap::new(),
        Bytes::from_static(b"done"),
    );
    let token = LockToken::random();
    let begun = store
        .try_begin("k", &token, &fp, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(begun, Begin::Started);
    // Redis restarts empty while the operation runs: the record still lands, so a retry
    // replays instead of running the operation again.
    server.restart().unwrap();
    let mut stored = Err(dedup_layer::store::StoreError::new("not tried"));
    for _ in 0..50 {
        stored = store
            .complete("k", &token, &fp, &response, Duration::from_secs(60))
            .await;
        if stored.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stored.unwrap();
    // An attempt whose answer was lost and is made again finds its own record: done, not lost.
    store
        .complete("k", &token, &fp, &response, Duration::from_secs(60))
        .await
        .unwrap();
    let replay = store
        .try_begin("k", &LockToken::random(), &fp, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(matches!(replay, Begin::Completed(ref r) if r.body() == "done"));

    // Another request's lock is never overwritten.
    let other = LockToken::random();
    let begun = store
        .try_begin("k2", &other, &fp, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(begun, Begin::Started);
    assert!(
        store
            .complete("k2", &token, &fp, &response, Duration::from_secs(60))
            .await
            .is_err()
    );
}
