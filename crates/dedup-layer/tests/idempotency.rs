//! `Idempotency-Key` behaviour through a real axum `Router`, with the in-memory store.
#![allow(clippy::unwrap_used, clippy::expect_used)] // helpers of test code

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Path;
use axum::routing::post;
use bytes::Bytes;
use common::{send, until};
use dedup_layer::IdempotencyLayer;
use dedup_layer::store::{
    Begin, Fingerprint, IdempotencyStore, LockToken, MemoryStore, StoreError, StoredResponse,
};
use http::{HeaderMap, Request, StatusCode, header};
use tokio::sync::Semaphore;

#[derive(Clone)]
struct Handler {
    calls: Arc<AtomicUsize>,
    gate: Arc<Semaphore>,
    gated: bool,
}

impl Handler {
    fn open() -> Self {
        Handler {
            calls: Arc::new(AtomicUsize::new(0)),
            gate: Arc::new(Semaphore::new(0)),
            gated: false,
        }
    }

    fn gated() -> Self {
        Handler {
            gated: true,
            ..Self::open()
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// `POST /orders/{id}`: answers 201 with the call number, or what the `x-want` header asks for.
    fn app<St: IdempotencyStore>(&self, layer: IdempotencyLayer<St>) -> Router {
        let h = self.clone();
        Router::new()
            .route(
                "/orders/{id}",
                post(
                    move |Path(id): Path<String>, headers: HeaderMap, body: Bytes| {
                        let h = h.clone();
                        async move {
                            let n = h.calls.fetch_add(1, Ordering::SeqCst) + 1;
                            if h.gated
                                && let Ok(p) = h.gate.acquire().await
                            {
                                p.forget();
                            }
                            let want = headers
                                .get("x-want")
                                .map(|v| v.to_str().unwrap().to_owned());
                            match want.as_deref() {
                                Some("500") => {
                                    (StatusCode::INTERNAL_SERVER_ERROR, "boom".to_owned())
                                }
                                Some("panic") => panic!("handler failure under test"),
                                _ => (
                                    StatusCode::CREATED,
                                    format!("order {id} call {n} body {}", body.len()),
                                ),
                            }
                        }
                    },
                )
                .get(|| async { "listing" }),
            )
            .route_layer(layer)
    }
}

fn post_req(path: &str, key: Option<&str>) -> http::request::Builder {
    let mut req = Request::post(path);
    if let Some(key) = key {
        req = req.header("idempotency-key", key);
    }
    req
}

fn req(path: &str, key: Option<&str>, body: &'static str) -> Request<Body> {
    post_req(path, key).body(Body::from(body)).unwrap()
}

fn assert_problem(status: StatusCode, headers: &HeaderMap, body: &[u8], expected: StatusCode) {
    assert_eq!(status, expected);
    assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
    let text = std::str::from_utf8(body).unwrap();
    assert!(
        text.contains(&format!("\"status\":{}", expected.as_u16())),
        "{text}"
    );
}

#[tokio::test]
async fn missing_key_is_400_and_the_handler_does_not_run() {
    let h = Handler::open();
    let app = h.app(IdempotencyLayer::new(MemoryStore::default()));
    let (status, headers, body) = send(app.clone(), req("/orders/1", None, "{}")).await;
    assert_problem(status, &headers, &body, StatusCode::BAD_REQUEST);
    assert_eq!(h.calls(), 0);
    // Safe methods are not concerned.
    let (status, _, body) = send(app, Request::get("/orders/1").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"listing");
}

#[tokio::test]
async fn keyless_requests_pass_when_not_required() {
    let h = Handler::open();
    let layer = IdempotencyLayer::builder(MemoryStore::default())
        .required(false)
        .build()
        .unwrap();
    let app = h.app(layer);
    assert_eq!(
        send(app.clone(), req("/orders/1", None, "{}")).await.0,
        StatusCode::CREATED
    );
    assert_eq!(
        send(app, req("/orders/1", None, "{}")).await.0,
        StatusCode::CREATED
    );
    assert_eq!(h.calls(), 2);
}

#[tokio::test]
async fn malformed_keys_are_400() {
    let h = Handler::open();
    let app = h.app(IdempotencyLayer::new(MemoryStore::default()));
    let long = format!("\"{}\"", "k".repeat(256));
    for bad in [
        "bare-token",
        "\"\"",
        "\"open",
        long.as_str(),
        "\"a\", \"b\"",
    ] {
        let (status, headers, body) = send(app.clone(), req("/orders/1", Some(bad), "{}")).await;
        assert_problem(status, &headers, &body, StatusCode::BAD_REQUEST);
    }
    let two = Request::post("/orders/1")
        .header("idempotency-key", "\"a\"")
        .header("idempotency-key", "\"b\"")
        .body(Body::empty())
        .unwrap();
    let (status, headers, body) = send(app, two).await;
    assert_problem(status, &headers, &body, StatusCode::BAD_REQUEST);
    assert_eq!(h.calls(), 0);
}

#[tokio::test]
async fn completed_key_is_replayed_with_a_marker() {
    let h = Handler::open();
    let app = h.app(IdempotencyLayer::new(MemoryStore::default()));
    let (status, headers, body) = send(
        app.clone(),
        req("/orders/7", Some("\"k-1\""), "{\"qty\":2}"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(headers.get("idempotent-replayed").is_none());
    assert_eq!(&body[..], b"order 7 call 1 body 9");

    let (status2, headers2, body2) = send(
        app.clone(),
        req("/orders/7", Some("\"k-1\""), "{\"qty\":2}"),
    )
    .await;
    assert_eq!(status2, StatusCode::CREATED);
    assert_eq!(headers2["idempotent-replayed"], "true");
    assert_eq!(
        headers2[header::CONTENT_TYPE],
        headers[header::CONTENT_TYPE]
    );
    assert_eq!(body2, body);
    assert_eq!(h.calls(), 1);
}

#[tokio::test]
async fn same_key_with_a_different_request_is_422() {
    let h = Handler::open();
    let app = h.app(IdempotencyLayer::new(MemoryStore::default()));
    assert_eq!(
        send(app.clone(), req("/orders/1", Some("\"k\""), "a"))
            .await
            .0,
        StatusCode::CREATED
    );
    for other in [
        req("/orders/1", Some("\"k\""), "b"),
        req("/orders/2", Some("\"k\""), "a"),
        req("/orders/1?x=1", Some("\"k\""), "a"),
    ] {
        let (status, headers, body) = send(app.clone(), other).await;
        assert_problem(status, &headers, &body, StatusCode::UNPROCESSABLE_ENTITY);
    }
    assert_eq!(h.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_key_while_running_is_409() {
    let h = Handler::gated();
    let app = h.app(IdempotencyLayer::new(MemoryStore::default()));
    let first = tokio::spawn(send(app.clone(), req("/orders/1", Some("\"k\""), "a")));
    until("first in handler", || h.calls() == 1).await;
    let (status, headers, body) = send(app.clone(), req("/orders/1", Some("\"k\""), "a")).await;
    assert_problem(status, &headers, &body, StatusCode::CONFLICT);
    assert_eq!(headers[header::RETRY_AFTER], "1");
    // A different fingerprint is reported as a mismatch even while running.
    let (status, _, _) = send(app.clone(), req("/orders/1", Some("\"k\""), "b")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    h.gate.add_permits(1);
    assert_eq!(first.await.unwrap().0, StatusCode::CREATED);
    assert_eq!(h.calls(), 1);
}

#[tokio::test]
async fn keys_are_scoped_per_client() {
    let h = Handler::open();
    let app = h.app(IdempotencyLayer::new(MemoryStore::default()));
    let as_user = |user: &str| {
        Request::post("/orders/1")
            .header("idempotency-key", "\"shared\"")
            .header(header::AUTHORIZATION, format!("Bearer {user}"))
            .body(Body::from("a"))
            .unwrap()
    };
    let (_, _, alice) = send(app.clone(), as_user("alice")).await;
    let (_, headers, bob) = send(app.clone(), as_user("bob")).await;
    assert!(headers.get("idempotent-replayed").is_none());
    assert_ne!(alice, bob);
    assert_eq!(h.calls(), 2);
    let (_, headers, alice_again) = send(app, as_user("alice")).await;
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(alice_again, alice);
}

#[tokio::test]
async fn server_errors_are_not_stored() {
    let h = Handler::open();
    let app = h.app(IdempotencyLayer::new(MemoryStore::default()));
    let failing = post_req("/orders/1", Some("\"k\""))
        .header("x-want", "500")
        .body(Body::from("a"))
        .unwrap();
    assert_eq!(
        send(app.clone(), failing).await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    let (status, headers, _) = send(app, req("/orders/1", Some("\"k\""), "a")).await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(headers.get("idempotent-replayed").is_none());
    assert_eq!(h.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_answers_500_and_frees_the_key() {
    let h = Handler::open();
    let app = h.app(IdempotencyLayer::new(MemoryStore::default()));
    let panicking = post_req("/orders/1", Some("\"k\""))
        .header("x-want", "panic")
        .body(Body::from("a"))
        .unwrap();
    let (status, headers, body) = send(app.clone(), panicking).await;
    assert_problem(status, &headers, &body, StatusCode::INTERNAL_SERVER_ERROR);
    // The release runs in a task spawned by the lock's Drop; retry until the key is free.
    let mut last = StatusCode::CONFLICT;
    for _ in 0..10_000 {
        last = send(app.clone(), req("/orders/1", Some("\"k\""), "a"))
            .await
            .0;
        if last != StatusCode::CONFLICT {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(last, StatusCode::CREATED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnected_client_finds_its_result_on_retry() {
    let h = Handler::gated();
    let app = h.app(IdempotencyLayer::new(MemoryStore::default()));
    let first = tokio::spawn(send(app.clone(), req("/orders/1", Some("\"k\""), "a")));
    until("first in handler", || h.calls() == 1).await;
    first.abort();
    let _ = first.await;
    h.gate.add_permits(1);
    let mut replayed = None;
    for _ in 0..10_000 {
        let (status, headers, body) = send(app.clone(), req("/orders/1", Some("\"k\""), "a")).await;
        if status != StatusCode::CONFLICT {
            replayed = Some((status, headers, body));
            break;
        }
        tokio::task::yield_now().await;
    }
    let (status, headers, body) = replayed.unwrap();
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(&body[..], b"order 1 call 1 body 1");
    assert_eq!(h.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn records_expire_after_the_ttl() {
    let h = Handler::open();
    let layer = IdempotencyLayer::builder(MemoryStore::default())
        .ttl(Duration::from_secs(3600))
        .build()
        .unwrap();
    let app = h.app(layer);
    send(app.clone(), req("/orders/1", Some("\"k\""), "a")).await;
    tokio::time::advance(Duration::from_secs(3599)).await;
    let (_, headers, _) = send(app.clone(), req("/orders/1", Some("\"k\""), "a")).await;
    assert_eq!(headers["idempotent-replayed"], "true");
    tokio::time::advance(Duration::from_secs(2)).await;
    let (status, headers, body) = send(app.clone(), req("/orders/1", Some("\"k\""), "b")).await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(headers.get("idempotent-replayed").is_none());
    assert_eq!(&body[..], b"order 1 call 2 body 1");
}

#[tokio::test]
async fn oversized_request_bodies_are_413() {
    let h = Handler::open();
    let layer = IdempotencyLayer::builder(MemoryStore::default())
        .max_request_bytes(4)
        .build()
        .unwrap();
    let app = h.app(layer);
    let (status, headers, body) = send(app, req("/orders/1", Some("\"k\""), "too long")).await;
    assert_problem(status, &headers, &body, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(h.calls(), 0);
}

#[tokio::test]
async fn large_responses_are_streamed_and_replayed_without_body() {
    let h = Handler::open();
    let layer = IdempotencyLayer::builder(MemoryStore::default())
        .max_response_bytes(4)
        .build()
        .unwrap();
    let app = h.app(layer);
    let (status, _, body) = send(app.clone(), req("/orders/1", Some("\"k\""), "a")).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(&body[..], b"order 1 call 1 body 1");
    let (status, headers, body) = send(app, req("/orders/1", Some("\"k\""), "a")).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(headers["idempotent-replayed"], "true");
    assert!(body.is_empty());
    assert_eq!(h.calls(), 1);
}

/// A memory store whose `try_begin` answers late while `late` is set: the lock is taken, but the reply
/// arrives after the layer's store timeout (as when Redis runs the script and the network then stalls).
#[derive(Clone)]
struct LateReplies {
    inner: MemoryStore,
    late: Arc<std::sync::atomic::AtomicBool>,
}

impl IdempotencyStore for LateReplies {
    async fn try_begin(
        &self,
        key: &str,
        token: &LockToken,
        fingerprint: &Fingerprint,
        lock_ttl: Duration,
    ) -> Result<Begin, StoreError> {
        let begun = self
            .inner
            .try_begin(key, token, fingerprint, lock_ttl)
            .await;
        if self.late.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
        begun
    }

    async fn complete(
        &self,
        key: &str,
        token: &LockToken,
        fingerprint: &Fingerprint,
        response: &StoredResponse,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.inner
            .complete(key, token, fingerprint, response, ttl)
            .await
    }

    async fn release(&self, key: &str, token: &LockToken) -> Result<(), StoreError> {
        self.inner.release(key, token).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_lock_taken_after_the_store_timeout_is_released() {
    let h = Handler::open();
    let late = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let store = LateReplies {
        inner: MemoryStore::default(),
        late: late.clone(),
    };
    let layer = IdempotencyLayer::builder(store)
        .store_timeout(Duration::from_secs(1))
        .lock_ttl(Duration::from_secs(60))
        .build()
        .unwrap();
    let app = h.app(layer);
    let (status, headers, body) = send(app.clone(), req("/orders/1", Some("\"k\""), "a")).await;
    assert_problem(status, &headers, &body, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(h.calls(), 0);

    // The store answers on time again. The lock the timed-out call took must not block the retry
    // for the whole lock TTL.
    late.store(false, Ordering::SeqCst);
    tokio::time::advance(Duration::from_secs(2)).await;
    let (status, headers, body) = send(app, req("/orders/1", Some("\"k\""), "a")).await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "{:?}",
        String::from_utf8_lossy(&body)
    );
    assert!(headers.get("idempotent-replayed").is_none());
    assert_eq!(h.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_requests_with_one_key_run_once() {
    let h = Handler::gated();
    let app = h.app(IdempotencyLayer::new(MemoryStore::default()));
    let tasks: Vec<_> = (0..50)
        .map(|_| tokio::spawn(send(app.clone(), req("/orders/1", Some("\"same\""), "a"))))
        .collect();
    // Every request but the one holding the lock is answered without the handler.
    until("49 answered", || {
        tasks.iter().filter(|t| t.is_finished()).count() == 49
    })
    .await;
    assert_eq!(h.calls(), 1);
    let mut conflicts = 0;
    let mut running = Vec::new();
    for task in tasks {
        if task.is_finished() {
            let (status, headers, body) = task.await.unwrap();
            assert_problem(status, &headers, &body, StatusCode::CONFLICT);
            conflicts += 1;
        } else {
            running.push(task);
        }
    }
    h.gate.add_permits(1);
    assert_eq!(running.len(), 1);
    for task in running {
        assert_eq!(task.await.unwrap().0, StatusCode::CREATED);
    }
    assert_eq!(conflicts, 49);
    assert_eq!(h.calls(), 1);
}

#[tokio::test]
async fn hostile_header_values_get_answers_not_panics() {
    use http::HeaderValue;

    let h = Handler::open();
    let app = h.app(IdempotencyLayer::new(MemoryStore::default()));
    let huge = format!("\"{}\"", "a".repeat(64 * 1024));
    let bad_keys: [&[u8]; 5] = [
        b"\"\xff\xfe\"",
        b"\"a\"\xff",
        b"\xc3\x28",
        huge.as_bytes(),
        b"\"a\";p=\"\xff\"",
    ];
    for key in bad_keys {
        let mut req = req("/orders/1", None, "a");
        req.headers_mut()
            .insert("idempotency-key", HeaderValue::from_bytes(key).unwrap());
        let (status, headers, body) = send(app.clone(), req).await;
        assert_problem(status, &headers, &body, StatusCode::BAD_REQUEST);
    }
    // Non-UTF-8 credentials only scope the key.
    let mut req = req("/orders/1", Some("\"k\""), "a");
    req.headers_mut().insert(
        header::AUTHORIZATION,
        HeaderValue::from_bytes(b"Bearer \xff\xfe").unwrap(),
    );
    assert_eq!(send(app, req).await.0, StatusCode::CREATED);
    assert_eq!(h.calls(), 1);
}

/// A memory store whose `complete` fails while `down` is set, as Redis does when it goes away
/// between the lock and the record.
#[derive(Clone)]
struct FailingCompletion {
    inner: MemoryStore,
    down: Arc<std::sync::atomic::AtomicBool>,
}

impl IdempotencyStore for FailingCompletion {
    async fn try_begin(
        &self,
        key: &str,
        token: &LockToken,
        fingerprint: &Fingerprint,
        lock_ttl: Duration,
    ) -> Result<Begin, StoreError> {
        self.inner
            .try_begin(key, token, fingerprint, lock_ttl)
            .await
    }

    async fn complete(
        &self,
        key: &str,
        token: &LockToken,
        fingerprint: &Fingerprint,
        response: &StoredResponse,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::new("store down under test"));
        }
        self.inner
            .complete(key, token, fingerprint, response, ttl)
            .await
    }

    async fn release(&self, key: &str, token: &LockToken) -> Result<(), StoreError> {
        self.inner.release(key, token).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_record_the_store_missed_is_stored_when_it_is_back_so_a_retry_never_runs_twice() {
    let h = Handler::open();
    let down = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let store = FailingCompletion {
        inner: MemoryStore::default(),
        down: down.clone(),
    };
    let layer = IdempotencyLayer::builder(store)
        .lock_ttl(Duration::from_secs(10))
        .build()
        .unwrap();
    let app = h.app(layer);
    let (status, _, first) = send(app.clone(), req("/orders/1", Some("\"k\""), "a")).await;
    assert_eq!(status, StatusCode::CREATED);

    // The record could not be stored: the lock keeps retries out meanwhile.
    let (status, headers, body) = send(app.clone(), req("/orders/1", Some("\"k\""), "a")).await;
    assert_problem(status, &headers, &body, StatusCode::CONFLICT);

    // The store is back: the record lands in the background, and a retry long after the lock's
    // TTL replays it instead of running the operation again.
    down.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(2)).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    let (status, headers, body) = send(app, req("/orders/1", Some("\"k\""), "a")).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(body, first);
    assert_eq!(h.calls(), 1);
}

/// A memory store whose `try_begin` takes the lock only after a delay, as a frozen Redis runs a
/// queued begin after the release that followed its timeout.
#[derive(Clone)]
struct LateBegin {
    inner: MemoryStore,
    delay: Duration,
}

impl IdempotencyStore for LateBegin {
    async fn try_begin(
        &self,
        key: &str,
        token: &LockToken,
        fingerprint: &Fingerprint,
        lock_ttl: Duration,
    ) -> Result<Begin, StoreError> {
        let (inner, key, token, fingerprint, delay) = (
            self.inner.clone(),
            key.to_owned(),
            *token,
            *fingerprint,
            self.delay,
        );
        // The store runs the begin later whether or not anyone still waits for its answer.
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = inner.try_begin(&key, &token, &fingerprint, lock_ttl).await;
        });
        std::future::pending().await
    }

    async fn complete(
        &self,
        key: &str,
        token: &LockToken,
        fingerprint: &Fingerprint,
        response: &StoredResponse,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.inner
            .complete(key, token, fingerprint, response, ttl)
            .await
    }

    async fn release(&self, key: &str, token: &LockToken) -> Result<(), StoreError> {
        self.inner.release(key, token).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_lock_taken_after_its_release_is_released_again() {
    let h = Handler::open();
    let store = LateBegin {
        inner: MemoryStore::default(),
        delay: Duration::from_millis(1500),
    };
    let layer = IdempotencyLayer::builder(store.clone())
        .store_timeout(Duration::from_secs(1))
        .lock_ttl(Duration::from_secs(60))
        .build()
        .unwrap();
    let app = h.app(layer);
    let (status, headers, body) = send(app, req("/orders/1", Some("\"k\""), "a")).await;
    assert_problem(status, &headers, &body, StatusCode::SERVICE_UNAVAILABLE);
    // The release ran at 1 s and found nothing; the begin took the lock at 1.5 s. The second
    // release, a second after the first, frees it, long before the lock's 60 s.
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Keys are stored under the SHA-256 of the client scope (empty here) and the key.
    let stored_key = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855:k";
    let begun = store
        .inner
        .try_begin(
            stored_key,
            &LockToken::random(),
            &Fingerprint::from_bytes([0; 32]),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert_eq!(begun, Begin::Started, "the late lock was released");
}
