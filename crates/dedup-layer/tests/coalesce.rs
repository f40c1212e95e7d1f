//! Coalescing behaviour through a real axum `Router`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // helpers of test code

mod common;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use bytes::Bytes;
use common::{send, until};
use dedup_layer::{DedupHandle, DedupLayer, OnWaiterTimeout};
use http::{HeaderMap, Request, StatusCode, header};
use http_body_util::BodyExt;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tower::{Service, ServiceExt};

/// Handler state: counts calls and blocks each call on a gate the test opens.
#[derive(Clone)]
struct Gate {
    calls: Arc<AtomicUsize>,
    permits: Arc<Semaphore>,
}

impl Gate {
    fn new() -> Self {
        Gate {
            calls: Arc::new(AtomicUsize::new(0)),
            permits: Arc::new(Semaphore::new(0)),
        }
    }

    /// Counts the call, waits for the gate, returns the call's number (1-based).
    async fn pass(&self) -> usize {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if let Ok(permit) = self.permits.acquire().await {
            permit.forget();
        }
        n
    }

    fn open(&self, n: usize) {
        self.permits.add_permits(n);
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

fn get_req(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

/// `GET /r` behind `layer`: each call passes `gate`, then answers `respond(call number)`.
fn gated_app<R>(
    layer: &DedupLayer,
    gate: &Gate,
    respond: impl Fn(usize) -> R + Clone + Send + Sync + 'static,
) -> Router
where
    R: IntoResponse + 'static,
{
    let g = gate.clone();
    Router::new()
        .route(
            "/r",
            get(move || {
                let g = g.clone();
                let respond = respond.clone();
                async move { respond(g.pass().await) }
            }),
        )
        .layer(layer.clone())
}

fn counting_app(layer: &DedupLayer, gate: &Gate) -> Router {
    gated_app(layer, gate, |n| format!("answer {n}"))
}

type Answer = (StatusCode, HeaderMap, Bytes);

/// Sends one `GET /r` and, once it is in the handler, `n` identical ones that wait behind it.
async fn leader_then_waiters(
    app: &Router,
    gate: &Gate,
    handle: &DedupHandle,
    n: usize,
) -> (JoinHandle<Answer>, Vec<JoinHandle<Answer>>) {
    let leader = tokio::spawn(send(app.clone(), get_req("/r")));
    until("leader in handler", || gate.calls() == 1).await;
    let waiters: Vec<_> = (0..n)
        .map(|_| tokio::spawn(send(app.clone(), get_req("/r"))))
        .collect();
    until(&format!("{n} waiters"), || handle.waiters() == n).await;
    (leader, waiters)
}

fn assert_empty(handle: &DedupHandle) {
    assert_eq!(handle.inflight(), 0, "in-flight map must be empty");
    assert_eq!(handle.waiters(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_identical_gets_reach_the_handler_once() {
    let layer = DedupLayer::new();
    let handle = layer.handle();
    let gate = Gate::new();
    let app = counting_app(&layer, &gate);

    let tasks: Vec<_> = (0..1000)
        .map(|_| tokio::spawn(send(app.clone(), get_req("/r"))))
        .collect();
    until("999 waiters behind one leader", || {
        gate.calls() == 1 && handle.waiters() == 999
    })
    .await;
    assert_eq!(handle.inflight(), 1);
    gate.open(1);

    for task in tasks {
        let (status, headers, body) = task.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(&body[..], b"answer 1");
        assert_eq!(headers[header::CONTENT_TYPE], "text/plain; charset=utf-8");
    }
    assert_eq!(gate.calls(), 1);
    assert_empty(&handle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_leader_caller_does_not_fail_the_waiters() {
    let layer = DedupLayer::new();
    let handle = layer.handle();
    let gate = Gate::new();
    let app = counting_app(&layer, &gate);

    let (leader, waiters) = leader_then_waiters(&app, &gate, &handle, 3).await;

    leader.abort();
    assert!(leader.await.unwrap_err().is_cancelled());
    assert_eq!(handle.inflight(), 1, "the work goes on for the waiters");
    gate.open(1);

    for waiter in waiters {
        let (status, _, body) = waiter.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(&body[..], b"answer 1");
    }
    assert_eq!(gate.calls(), 1);
    assert_empty(&handle);
}

/// Sets a flag when the handler's future is dropped before finishing.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn abandon_app(
    layer: &DedupLayer,
    gate: &Gate,
    dropped: &Arc<AtomicBool>,
    finished: &Arc<AtomicBool>,
) -> Router {
    let g = gate.clone();
    let dropped = dropped.clone();
    let finished = finished.clone();
    Router::new()
        .route(
            "/r",
            get(move || {
                let g = g.clone();
                let flag = DropFlag(dropped.clone());
                let finished = finished.clone();
                async move {
                    let n = g.pass().await;
                    finished.store(true, Ordering::SeqCst);
                    std::mem::forget(flag);
                    format!("answer {n}")
                }
            }),
        )
        .layer(layer.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_caller_gone_cancels_the_handler() {
    let layer = DedupLayer::new();
    let handle = layer.handle();
    let gate = Gate::new();
    let dropped = Arc::new(AtomicBool::new(false));
    let finished = Arc::new(AtomicBool::new(false));
    let app = abandon_app(&layer, &gate, &dropped, &finished);

    let (leader, waiters) = leader_then_waiters(&app, &gate, &handle, 2).await;

    leader.abort();
    let _ = leader.await;
    assert!(!dropped.load(Ordering::SeqCst), "a waiter is still there");
    for waiter in waiters {
        waiter.abort();
        let _ = waiter.await;
    }
    until("handler future dropped", || dropped.load(Ordering::SeqCst)).await;
    assert!(!finished.load(Ordering::SeqCst));
    assert_empty(&handle);

    // The key is free again: a new request leads afresh.
    gate.open(1);
    let (status, _, body) = send(app.clone(), get_req("/r")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"answer 2");
    assert_empty(&handle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_work_finishes_when_so_configured() {
    let layer = DedupLayer::builder()
        .cancel_when_abandoned(false)
        .build()
        .unwrap();
    let handle = layer.handle();
    let gate = Gate::new();
    let dropped = Arc::new(AtomicBool::new(false));
    let finished = Arc::new(AtomicBool::new(false));
    let app = abandon_app(&layer, &gate, &dropped, &finished);

    let leader = tokio::spawn(send(app.clone(), get_req("/r")));
    until("leader in handler", || gate.calls() == 1).await;
    leader.abort();
    let _ = leader.await;
    assert_eq!(handle.inflight(), 1);
    gate.open(1);
    until("handler finished", || finished.load(Ordering::SeqCst)).await;
    until("key freed", || handle.inflight() == 0).await;
    assert!(!dropped.load(Ordering::SeqCst));
    assert_empty(&handle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_panic_answers_every_caller_with_500() {
    let layer = DedupLayer::new();
    let handle = layer.handle();
    let gate = Gate::new();
    let app = gated_app(&layer, &gate, |n| {
        if n == 1 {
            panic!("handler failure under test");
        }
        "recovered"
    });

    let tasks: Vec<_> = (0..10)
        .map(|_| tokio::spawn(send(app.clone(), get_req("/r"))))
        .collect();
    until("9 waiters", || gate.calls() == 1 && handle.waiters() == 9).await;
    gate.open(1);
    for task in tasks {
        let (status, headers, body) = task.await.unwrap();
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
        let problem: serde_json_lite::Problem = serde_json_lite::parse(&body);
        assert_eq!(problem.status, 500);
    }
    assert_empty(&handle);

    gate.open(1);
    let (status, _, body) = send(app, get_req("/r")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"recovered");
    assert_empty(&handle);
}

/// Just enough JSON reading for problem bodies, without a serde dependency in this crate.
mod serde_json_lite {
    pub(crate) struct Problem {
        pub(crate) status: u16,
    }

    pub(crate) fn parse(body: &[u8]) -> Problem {
        let text = std::str::from_utf8(body).unwrap();
        assert!(
            text.starts_with('{') && text.ends_with('}'),
            "not a JSON object: {text}"
        );
        let at = text.find("\"status\":").unwrap() + "\"status\":".len();
        let digits: String = text[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        assert!(text.contains("\"title\":"));
        Problem {
            status: digits.parse().unwrap(),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn waiter_past_its_timeout_gets_504() {
    let layer = DedupLayer::builder()
        .waiter_timeout(Some(Duration::from_secs(5)))
        .build()
        .unwrap();
    let handle = layer.handle();
    let gate = Gate::new();
    let app = counting_app(&layer, &gate);

    let (leader, mut waiters) = leader_then_waiters(&app, &gate, &handle, 1).await;
    let waiter = waiters.remove(0);

    tokio::time::advance(Duration::from_secs(4)).await;
    assert!(!waiter.is_finished());
    let (status, headers, _) = waiter.await.unwrap();
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
    assert_eq!(handle.waiters(), 0);

    gate.open(1);
    let (status, _, body) = leader.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"answer 1");
    assert_eq!(gate.calls(), 1);
    assert_empty(&handle);
}

#[tokio::test(start_paused = true)]
async fn waiter_past_its_timeout_can_run_its_own_request() {
    let layer = DedupLayer::builder()
        .waiter_timeout(Some(Duration::from_secs(5)))
        .on_waiter_timeout(OnWaiterTimeout::RunOwnRequest)
        .build()
        .unwrap();
    let handle = layer.handle();
    let gate = Gate::new();
    let app = counting_app(&layer, &gate);

    let (leader, mut waiters) = leader_then_waiters(&app, &gate, &handle, 1).await;
    let waiter = waiters.remove(0);
    tokio::time::advance(Duration::from_secs(6)).await;
    until("waiter runs its own request", || gate.calls() == 2).await;
    gate.open(2);

    let (status, _, body) = waiter.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(body.starts_with(b"answer "));
    let (status, _, _) = leader.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(gate.calls(), 2);
    assert_empty(&handle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn different_credentials_never_share() {
    let layer = DedupLayer::new();
    let handle = layer.handle();
    let gate = Gate::new();
    let app = counting_app(&layer, &gate);
    let with = |auth: &str, cookie: Option<&str>| {
        let mut req = Request::get("/r").header(header::AUTHORIZATION, auth);
        if let Some(cookie) = cookie {
            req = req.header(header::COOKIE, cookie);
        }
        req.body(Body::empty()).unwrap()
    };

    let alice = tokio::spawn(send(app.clone(), with("Bearer alice", None)));
    let bob = tokio::spawn(send(app.clone(), with("Bearer bob", None)));
    let alice_cookie = tokio::spawn(send(app.clone(), with("Bearer alice", Some("s=1"))));
    until("three separate leaders", || gate.calls() == 3).await;
    assert_eq!(handle.inflight(), 3);
    // The same credentials do share.
    let alice_again = tokio::spawn(send(app.clone(), with("Bearer alice", None)));
    until("alice's second request waits", || handle.waiters() == 1).await;
    gate.open(3);

    let mut bodies = Vec::new();
    for task in [alice, bob, alice_cookie] {
        let (status, _, body) = task.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        bodies.push(body);
    }
    bodies.sort();
    bodies.dedup();
    assert_eq!(bodies.len(), 3, "each user got their own answer");
    let (_, _, again) = alice_again.await.unwrap();
    assert_eq!(gate.calls(), 3);
    assert!(again.starts_with(b"answer "));
    assert_empty(&handle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_cookie_responses_are_not_fanned_out() {
    let layer = DedupLayer::new();
    let handle = layer.handle();
    let gate = Gate::new();
    let app = gated_app(&layer, &gate, |n| {
        (
            [(header::SET_COOKIE, format!("session={n}"))],
            format!("answer {n}"),
        )
    });

    let (leader, waiters) = leader_then_waiters(&app, &gate, &handle, 2).await;
    gate.open(3);

    let mut cookies = vec![leader.await.unwrap().1[header::SET_COOKIE].clone()];
    for waiter in waiters {
        let (status, headers, _) = waiter.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        cookies.push(headers[header::SET_COOKIE].clone());
    }
    cookies.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    cookies.dedup();
    assert_eq!(cookies.len(), 3, "every caller got its own cookie");
    assert_eq!(gate.calls(), 3);
    assert_empty(&handle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_above_the_limit_make_waiters_run_their_own_request() {
    let layer = DedupLayer::builder().max_body_bytes(16).build().unwrap();
    let handle = layer.handle();
    let gate = Gate::new();
    let app = gated_app(&layer, &gate, |n| {
        let chunks = (0..10).map(move |i| Ok::<_, Infallible>(Bytes::from(format!("{n}-{i:07}|"))));
        Body::from_stream(futures_stream(chunks))
    });

    let (leader, waiters) = leader_then_waiters(&app, &gate, &handle, 2).await;
    gate.open(3);

    let (status, _, body) = leader.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body.len(),
        100,
        "the leader's caller gets the whole streamed body"
    );
    assert!(body.starts_with(b"1-0000000|1-0000001|"));
    for waiter in waiters {
        let (status, _, body) = waiter.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body.len(), 100);
    }
    assert_eq!(gate.calls(), 3);
    assert_empty(&handle);
}

/// A stream over an iterator, without pulling in a stream crate.
fn futures_stream<I: Iterator + Unpin>(iter: I) -> IterStream<I> {
    IterStream(iter)
}

struct IterStream<I>(I);

impl<I: Iterator + Unpin> futures_core_stream::Stream for IterStream<I> {
    type Item = I::Item;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<I::Item>> {
        std::task::Poll::Ready(self.0.next())
    }
}

use futures_util::stream as futures_core_stream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_methods_pass_through() {
    let layer = DedupLayer::new();
    let handle = layer.handle();
    let gate = Gate::new();
    let g = gate.clone();
    let app = Router::new()
        .route(
            "/r",
            post(move || {
                let g = g.clone();
                async move { format!("answer {}", g.pass().await) }
            }),
        )
        .layer(layer.clone());
    let post_req = || Request::post("/r").body(Body::empty()).unwrap();
    let a = tokio::spawn(send(app.clone(), post_req()));
    let b = tokio::spawn(send(app.clone(), post_req()));
    until("both POSTs in the handler", || gate.calls() == 2).await;
    assert_eq!(handle.inflight(), 0);
    gate.open(2);
    assert_eq!(a.await.unwrap().0, StatusCode::OK);
    assert_eq!(b.await.unwrap().0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_map_lets_new_keys_through_uncoalesced() {
    let layer = DedupLayer::builder().max_inflight(1).build().unwrap();
    let handle = layer.handle();
    let gate = Gate::new();
    let app = counting_app(&layer, &gate);
    let first = tokio::spawn(send(app.clone(), get_req("/r?a")));
    until("first in handler", || gate.calls() == 1).await;
    let second = tokio::spawn(send(app.clone(), get_req("/r?b")));
    until("second in handler", || gate.calls() == 2).await;
    assert_eq!(handle.inflight(), 1);
    gate.open(2);
    assert_eq!(first.await.unwrap().0, StatusCode::OK);
    assert_eq!(second.await.unwrap().0, StatusCode::OK);
    assert_empty(&handle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inner_error_goes_to_the_leader_and_waiters_get_500() {
    let layer = DedupLayer::new();
    let handle = layer.handle();
    let gate = Gate::new();
    let g = gate.clone();
    let service = tower::service_fn(move |_req: Request<Body>| {
        let g = g.clone();
        async move {
            g.pass().await;
            Err::<http::Response<Body>, _>(std::io::Error::other("inner failure"))
        }
    });
    let service = tower::Layer::layer(&layer, service);

    let mut leader_svc = service.clone();
    let leader =
        tokio::spawn(async move { leader_svc.ready().await.unwrap().call(get_req("/r")).await });
    until("leader in inner", || gate.calls() == 1).await;
    let mut waiter_svc = service.clone();
    let waiter =
        tokio::spawn(async move { waiter_svc.ready().await.unwrap().call(get_req("/r")).await });
    until("1 waiter", || handle.waiters() == 1).await;
    gate.open(1);

    let error = leader.await.unwrap().unwrap_err();
    assert_eq!(error.to_string(), "inner failure");
    let response = waiter.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_empty(&handle);
}

#[test]
fn layer_and_service_are_send_sync_clone() {
    fn assert_all<T: Send + Sync + Clone + 'static>() {}
    assert_all::<DedupLayer>();
    assert_all::<DedupHandle>();
    assert_all::<dedup_layer::Dedup<axum::routing::Route>>();
    // Goes straight onto a Router with no HandleErrorLayer.
    let _: Router = Router::new()
        .route("/", get(|| async { "" }))
        .layer(DedupLayer::new());
}

#[test]
fn outcomes_are_counted() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || {
        rt.block_on(async {
            let layer = DedupLayer::new();
            let handle = layer.handle();
            let gate = Gate::new();
            let app = counting_app(&layer, &gate);
            let tasks: Vec<_> = (0..5)
                .map(|_| tokio::spawn(send(app.clone(), get_req("/r"))))
                .collect();
            until("4 waiters", || gate.calls() == 1 && handle.waiters() == 4).await;
            gate.open(1);
            for task in tasks {
                assert_eq!(task.await.unwrap().0, StatusCode::OK);
            }
            assert_empty(&handle);
        })
    });
    let mut leader = 0;
    let mut coalesced = 0;
    let mut inflight = None;
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        match (key.name(), value) {
            (dedup_layer::names::DEDUP_REQUESTS_TOTAL, DebugValue::Counter(n)) => {
                match key.labels().next().map(|l| l.value().to_owned()).as_deref() {
                    Some("leader") => leader = n,
                    Some("coalesced") => coalesced = n,
                    other => panic!("unexpected outcome {other:?}"),
                }
            }
            (dedup_layer::names::DEDUP_INFLIGHT, DebugValue::Gauge(g)) => {
                inflight = Some(g.into_inner())
            }
            _ => {}
        }
    }
    assert_eq!((leader, coalesced), (1, 4));
    assert_eq!(inflight, Some(0.0));
}

/// A body of two chunks; the second waits for `gate` (and `reached` is set once it does).
fn gated_body(n: usize, gate: Arc<Semaphore>, reached: Arc<AtomicBool>) -> Body {
    let stream = futures_util::stream::unfold(0u8, move |state| {
        let gate = gate.clone();
        let reached = reached.clone();
        async move {
            match state {
                0 => Some((Ok::<_, Infallible>(Bytes::from(format!("head {n}|"))), 1)),
                1 => {
                    reached.store(true, Ordering::SeqCst);
                    gate.acquire().await.unwrap().forget();
                    Some((Ok(Bytes::from_static(b"tail")), 2))
                }
                _ => None,
            }
        }
    });
    Body::from_stream(stream)
}

fn streaming_app(
    layer: &DedupLayer,
    gate: &Gate,
    body_gate: &Arc<Semaphore>,
    reached: &Arc<AtomicBool>,
) -> Router {
    let body_gate = body_gate.clone();
    let reached = reached.clone();
    gated_app(layer, gate, move |n| {
        gated_body(n, body_gate.clone(), reached.clone())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nobody_waiting_the_body_streams_and_a_later_request_leads_afresh() {
    let layer = DedupLayer::new();
    let handle = layer.handle();
    let gate = Gate::new();
    let body_gate = Arc::new(Semaphore::new(0));
    let reached = Arc::new(AtomicBool::new(false));
    let app = streaming_app(&layer, &gate, &body_gate, &reached);
    gate.open(2);

    // The head arrives while the body is still held: nothing is buffered for an absent audience.
    let first = app.clone().oneshot(get_req("/r")).await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(handle.inflight(), 0, "the key is free once the head is out");

    // An identical request now is not a waiter of a finished slot: it runs its own handler.
    let second = app.clone().oneshot(get_req("/r")).await.unwrap();
    assert_eq!(gate.calls(), 2);
    body_gate.add_permits(2);
    let first = first.into_body().collect().await.unwrap().to_bytes();
    let second = second.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&first[..], b"head 1|tail");
    assert_eq!(&second[..], b"head 2|tail");
    assert_empty(&handle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_caller_leaving_while_its_body_is_buffered_hands_the_work_off() {
    let layer = DedupLayer::new();
    let handle = layer.handle();
    let gate = Gate::new();
    let body_gate = Arc::new(Semaphore::new(0));
    let reached = Arc::new(AtomicBool::new(false));
    let app = streaming_app(&layer, &gate, &body_gate, &reached);

    let (leader, mut waiters) = leader_then_waiters(&app, &gate, &handle, 1).await;
    let waiter = waiters.remove(0);
    gate.open(1);
    until("leader buffering the body", || {
        reached.load(Ordering::SeqCst)
    })
    .await;

    leader.abort();
    assert!(leader.await.unwrap_err().is_cancelled());
    assert_eq!(handle.inflight(), 1, "the buffering goes on for the waiter");
    body_gate.add_permits(1);
    let (status, _, body) = waiter.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"head 1|tail");
    assert_eq!(gate.calls(), 1);
    assert_empty(&handle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpolled_leader_dropped_with_a_waiter_still_answers_it() {
    let layer = DedupLayer::new();
    let handle = layer.handle();
    let gate = Gate::new();
    let g = gate.clone();
    let router: Router = Router::new().route(
        "/r",
        get(move || {
            let g = g.clone();
            async move { format!("answer {}", g.pass().await) }
        }),
    );
    let service = tower::Layer::layer(&layer, router);

    // Alone: dropping frees the key and never runs the handler.
    let mut svc = service.clone();
    let alone = ServiceExt::<Request<Body>>::ready(&mut svc)
        .await
        .unwrap()
        .call(get_req("/r"));
    assert_eq!(handle.inflight(), 1);
    drop(alone);
    assert_eq!(handle.inflight(), 0);
    assert_eq!(gate.calls(), 0);

    // With a waiter: the never-polled work is detached and answers the waiter.
    let leader = ServiceExt::<Request<Body>>::ready(&mut svc)
        .await
        .unwrap()
        .call(get_req("/r"));
    let waiter = tokio::spawn(service.clone().oneshot(get_req("/r")));
    until("1 waiter", || handle.waiters() == 1).await;
    drop(leader);
    gate.open(1);
    let response = waiter.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"answer 1");
    assert_eq!(gate.calls(), 1);
    assert_empty(&handle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_leave_the_inner_readiness_alone() {
    // Two permits: the leader's call holds one. A waiter must not sit on the other while it waits,
    // or every further identical request blocks in `poll_ready` instead of joining.
    let layer = DedupLayer::new();
    let handle = layer.handle();
    let gate = Gate::new();
    let g = gate.clone();
    let inner = tower::limit::ConcurrencyLimit::new(
        tower::service_fn(move |_req: Request<Body>| {
            let g = g.clone();
            async move {
                let n = g.pass().await;
                Ok::<_, Infallible>(http::Response::new(Body::from(format!("answer {n}"))))
            }
        }),
        2,
    );
    let service = tower::Layer::layer(&layer, inner);
    let tasks: Vec<_> = (0..5)
        .map(|_| tokio::spawn(service.clone().oneshot(get_req("/r"))))
        .collect();
    until("4 waiters behind one leader", || {
        gate.calls() == 1 && handle.waiters() == 4
    })
    .await;
    gate.open(1);
    for task in tasks {
        let response = task.await.unwrap().unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"answer 1");
    }
    assert_eq!(gate.calls(), 1);
    assert_empty(&handle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_joins_and_completions_never_hang_or_mix_answers() {
    let layer = DedupLayer::new();
    let handle = layer.handle();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let app = Router::new()
        .route(
            "/r/{round}",
            get(
                move |axum::extract::Path(round): axum::extract::Path<u32>| {
                    let c = c.clone();
                    async move {
                        c.fetch_add(1, Ordering::SeqCst);
                        for _ in 0..round % 4 {
                            tokio::task::yield_now().await;
                        }
                        format!("round {round}")
                    }
                },
            ),
        )
        .layer(layer.clone());
    let run = async {
        let mut requests = 0;
        for round in 0..400u32 {
            let k = 1 + (round as usize % 6);
            requests += k;
            let tasks: Vec<_> = (0..k)
                .map(|_| tokio::spawn(send(app.clone(), get_req(&format!("/r/{round}")))))
                .collect();
            for task in tasks {
                let (status, _, body) = task.await.unwrap();
                assert_eq!(status, StatusCode::OK);
                assert_eq!(body, format!("round {round}").as_bytes());
            }
        }
        requests
    };
    // A bound, not a wait: a lost wake-up would hang here forever.
    let requests = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("every request answered");
    let calls = calls.load(Ordering::SeqCst);
    assert!((400..=requests).contains(&calls), "{calls} calls");
    assert_empty(&handle);
}

#[tokio::test]
async fn hostile_header_values_are_keyed_not_rejected() {
    use http::HeaderValue;

    let layer = DedupLayer::new();
    let handle = layer.handle();
    let gate = Gate::new();
    gate.open(4);
    let app = counting_app(&layer, &gate);
    let long = vec![b'x'; 60 * 1024];
    let values: [&[u8]; 4] = [b"\xff\xfe", b"\xc3\x28", &long, b""];
    for value in values {
        let mut req = get_req("/r");
        for name in [
            header::ACCEPT,
            header::AUTHORIZATION,
            header::COOKIE,
            header::HOST,
        ] {
            req.headers_mut()
                .append(name, HeaderValue::from_bytes(value).unwrap());
        }
        let (status, _, _) = send(app.clone(), req).await;
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(gate.calls(), 4);
    assert_empty(&handle);
}

/// Like [`leader_then_waiters`], with every request built by `req`.
async fn leader_then_waiters_with(
    app: &Router,
    gate: &Gate,
    handle: &DedupHandle,
    n: usize,
    req: impl Fn() -> Request<Body>,
) -> (JoinHandle<Answer>, Vec<JoinHandle<Answer>>) {
    let leader = tokio::spawn(send(app.clone(), req()));
    until("leader in handler", || gate.calls() == 1).await;
    let waiters: Vec<_> = (0..n)
        .map(|_| tokio::spawn(send(app.clone(), req())))
        .collect();
    until(&format!("{n} waiters"), || handle.waiters() == n).await;
    (leader, waiters)
}

/// Distinct bodies among the leader's and the waiters' answers.
async fn distinct_bodies(leader: JoinHandle<Answer>, waiters: Vec<JoinHandle<Answer>>) -> usize {
    let mut bodies = vec![leader.await.unwrap().2];
    for w in waiters {
        let (status, _, body) = w.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        bodies.push(body);
    }
    bodies.sort();
    bodies.dedup();
    bodies.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_answers_are_shared_only_within_one_users_key() {
    let layer = DedupLayer::new();
    let handle = layer.handle();
    let gate = Gate::new();
    let app = gated_app(&layer, &gate, |n| {
        (
            [(header::CACHE_CONTROL, "private, max-age=60")],
            format!("answer {n}"),
        )
    });
    // Anonymous: nothing tells the callers apart, so a private answer is not theirs to share.
    let (leader, waiters) = leader_then_waiters(&app, &gate, &handle, 2).await;
    gate.open(3);
    assert_eq!(distinct_bodies(leader, waiters).await, 3);
    assert_eq!(gate.calls(), 3);
    // One user (the same credential in the key): the answer is that user's, shared.
    let as_alice = || {
        Request::get("/r")
            .header(header::AUTHORIZATION, "Bearer alice")
            .body(Body::empty())
            .unwrap()
    };
    let gate2 = Gate::new();
    let app = gated_app(&layer, &gate2, |n| {
        ([(header::CACHE_CONTROL, "private")], format!("answer {n}"))
    });
    let (leader, waiters) = leader_then_waiters_with(&app, &gate2, &handle, 2, as_alice).await;
    gate2.open(1);
    assert_eq!(distinct_bodies(leader, waiters).await, 1);
    assert_eq!(gate2.calls(), 1);
    assert_empty(&handle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_varying_beyond_the_key_are_not_shared() {
    for (vary, shared) in [
        ("accept-language", true),
        ("Accept-Encoding, accept", true),
        ("x-device", false),
        ("accept, x-device", false),
        ("*", false),
    ] {
        let layer = DedupLayer::new();
        let handle = layer.handle();
        let gate = Gate::new();
        let app = gated_app(&layer, &gate, move |n| {
            ([(header::VARY, vary)], format!("answer {n}"))
        });
        let (leader, waiters) = leader_then_waiters(&app, &gate, &handle, 2).await;
        gate.open(3);
        let distinct = distinct_bodies(leader, waiters).await;
        assert_eq!(distinct, if shared { 1 } else { 3 }, "Vary: {vary}");
        assert_empty(&handle);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranged_and_conditional_requests_share_only_with_the_same_values() {
    for (name, value, other) in [
        ("range", "bytes=0-1", "bytes=2-3"),
        ("if-range", "\"a\"", "\"b\""),
        ("if-none-match", "\"a\"", "\"b\""),
        (
            "if-modified-since",
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Mon, 07 Nov 1994 08:49:37 GMT",
        ),
        ("if-match", "\"a\"", "\"b\""),
        (
            "if-unmodified-since",
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Mon, 07 Nov 1994 08:49:37 GMT",
        ),
    ] {
        let layer = DedupLayer::new();
        let handle = layer.handle();
        let gate = Gate::new();
        let app = counting_app(&layer, &gate);
        let req = |value: Option<&str>| {
            let mut builder = Request::get("/r");
            if let Some(value) = value {
                builder = builder.header(name, value);
            }
            builder.body(Body::empty()).unwrap()
        };
        // Two identical conditional requests, one with another value, one plain: three answers.
        let first = tokio::spawn(send(app.clone(), req(Some(value))));
        until("the first in the handler", || gate.calls() == 1).await;
        let same = tokio::spawn(send(app.clone(), req(Some(value))));
        until("the same request waiting", || handle.waiters() == 1).await;
        let different = tokio::spawn(send(app.clone(), req(Some(other))));
        let plain = tokio::spawn(send(app.clone(), req(None)));
        until("three leaders in the handler", || gate.calls() == 3).await;
        assert_eq!(handle.inflight(), 3, "{name}");
        assert_eq!(handle.waiters(), 1, "{name}");
        gate.open(3);
        let first = first.await.unwrap();
        assert_eq!(
            same.await.unwrap().2,
            first.2,
            "{name}: the same request shares"
        );
        assert_ne!(different.await.unwrap().2, first.2, "{name}");
        assert_ne!(plain.await.unwrap().2, first.2, "{name}");
        assert_eq!(gate.calls(), 3, "{name}");
        assert_empty(&handle);
    }
}
