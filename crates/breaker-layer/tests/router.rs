//! The layer through a real axum `Router`: the open answer, recovery through HalfOpen, per-key isolation, custom
//! classifiers and fallbacks, timeouts, and the `Infallible` error kept.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::MatchedPath;
use axum::routing::get;
use breaker_layer::{
    BreakerLayer, BreakerState, CircuitBreaker, HeaderKey, KeyedBreakers, Outcome, Rejected,
};
use bytes::Bytes;
use http::{HeaderName, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use tower::{Layer, Service, ServiceExt};

/// A handler that fails with 500 while `failing` is set and counts its calls.
#[derive(Clone, Default)]
struct Flaky {
    failing: Arc<AtomicBool>,
    calls: Arc<AtomicUsize>,
}

impl Flaky {
    fn router(&self) -> Router {
        let me = self.clone();
        Router::new().route(
            "/",
            get(move || {
                let me = me.clone();
                async move {
                    me.calls.fetch_add(1, Ordering::SeqCst);
                    if me.failing.load(Ordering::SeqCst) {
                        (StatusCode::INTERNAL_SERVER_ERROR, "down")
                    } else {
                        (StatusCode::OK, "up")
                    }
                }
            }),
        )
    }

    fn fail(&self, yes: bool) {
        self.failing.store(yes, Ordering::SeqCst);
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

/// Sends `GET uri` through a clone of `app`.
async fn send_get(app: &Router, uri: &str) -> Response<Body> {
    app.clone()
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap()
}

async fn get_status(app: &Router, uri: &str) -> StatusCode {
    send_get(app, uri).await.status()
}

fn breaker() -> CircuitBreaker {
    CircuitBreaker::builder()
        .name("router-test")
        .count_window(4)
        .minimum_calls(4)
        .wait_in_open(Duration::from_secs(10))
        .half_open_probes(2)
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn open_breaker_answers_503_with_retry_after_no_store_and_problem_json() {
    let flaky = Flaky::default();
    let b = breaker();
    let app = flaky.router().layer(BreakerLayer::new(b.clone()));
    flaky.fail(true);
    for _ in 0..4 {
        assert_eq!(
            get_status(&app, "/").await,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
    assert_eq!(b.state(), BreakerState::Open);
    tokio::time::advance(Duration::from_millis(2_500)).await;

    let res = send_get(&app, "/").await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        res.headers()[header::RETRY_AFTER],
        "8",
        "7.5 s left, rounded up"
    );
    assert_eq!(res.headers()[header::CACHE_CONTROL], "no-store");
    assert_eq!(
        res.headers()[header::CONTENT_TYPE],
        "application/problem+json"
    );
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let json: serde_like::Problem = serde_like::parse(&body);
    assert_eq!(json.status, 503);
    assert_eq!(flaky.calls(), 4, "the handler is not called while open");
}

/// Minimal checks of the problem body without pulling serde into the dev-dependencies.
mod serde_like {
    pub(crate) struct Problem {
        pub(crate) status: u16,
    }

    pub(crate) fn parse(body: &[u8]) -> Problem {
        let text = std::str::from_utf8(body).unwrap();
        assert!(text.starts_with('{') && text.ends_with('}'), "{text}");
        assert!(text.contains(r#""title":"Service Unavailable""#), "{text}");
        let status = text.split(r#""status":"#).nth(1).unwrap();
        Problem {
            status: status[..3].parse().unwrap(),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn recovers_through_half_open() {
    let flaky = Flaky::default();
    let b = breaker();
    let mut transitions = b.subscribe();
    let app = flaky.router().layer(BreakerLayer::new(b.clone()));
    flaky.fail(true);
    for _ in 0..4 {
        get_status(&app, "/").await;
    }
    flaky.fail(false);
    assert_eq!(get_status(&app, "/").await, StatusCode::SERVICE_UNAVAILABLE);
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(get_status(&app, "/").await, StatusCode::OK);
    assert_eq!(b.state(), BreakerState::HalfOpen);
    assert_eq!(get_status(&app, "/").await, StatusCode::OK);
    assert_eq!(b.state(), BreakerState::Closed);
    let seen: Vec<_> = std::iter::from_fn(|| transitions.try_recv().ok())
        .map(|t| (t.from, t.to))
        .collect();
    assert_eq!(
        seen,
        vec![
            (BreakerState::Closed, BreakerState::Open),
            (BreakerState::Open, BreakerState::HalfOpen),
            (BreakerState::HalfOpen, BreakerState::Closed),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn failed_probe_reopens() {
    let flaky = Flaky::default();
    let b = breaker();
    let app = flaky.router().layer(BreakerLayer::new(b.clone()));
    flaky.fail(true);
    for _ in 0..4 {
        get_status(&app, "/").await;
    }
    tokio::time::advance(Duration::from_secs(10)).await;
    get_status(&app, "/").await;
    get_status(&app, "/").await;
    assert_eq!(b.state(), BreakerState::Open);
    assert_eq!(get_status(&app, "/").await, StatusCode::SERVICE_UNAVAILABLE);
}

fn assert_router_service<S>(_: &S)
where
    S: Service<Request<Body>, Error = Infallible> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
}

#[test]
fn keeps_infallible_and_is_clone_send_sync() {
    fn assert_layer<L: Clone + Send + Sync + 'static>(_: &L) {}
    let layer = BreakerLayer::new(breaker());
    assert_layer(&layer);
    let svc = layer.layer(Flaky::default().router());
    assert_router_service(&svc);
    let keyed = BreakerLayer::per_key(
        KeyedBreakers::builder(CircuitBreaker::builder())
            .build()
            .unwrap(),
        HeaderKey::new(HeaderName::from_static("x-tenant")),
    );
    assert_layer(&keyed);
    assert_router_service(&keyed.layer(Flaky::default().router()));
    // And straight onto Router::layer / route_layer, no HandleErrorLayer.
    let _: Router = Router::new()
        .route("/", get(|| async { "x" }))
        .layer(BreakerLayer::new(breaker()));
    let _: Router = Router::new()
        .route("/", get(|| async { "x" }))
        .route_layer(BreakerLayer::new(breaker()));
}

#[tokio::test(start_paused = true)]
async fn per_key_breakers_isolate_tenants() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let registry = KeyedBreakers::builder(
        CircuitBreaker::builder()
            .name("tenants")
            .consecutive_failures(2),
    )
    .max_keys(8)
    .build()
    .unwrap();
    let app = Router::new()
        .route(
            "/",
            get(move |req: Request<Body>| {
                let c = c.clone();
                async move {
                    c.fetch_add(1, Ordering::SeqCst);
                    if req.headers()["x-tenant"] == "bad" {
                        StatusCode::BAD_GATEWAY
                    } else {
                        StatusCode::OK
                    }
                }
            }),
        )
        .layer(BreakerLayer::per_key(
            registry.clone(),
            HeaderKey::new(HeaderName::from_static("x-tenant")),
        ));
    let send = |tenant: &'static str| {
        let app = app.clone();
        async move {
            app.oneshot(
                Request::get("/")
                    .header("x-tenant", tenant)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap()
            .status()
        }
    };
    assert_eq!(send("bad").await, StatusCode::BAD_GATEWAY);
    assert_eq!(send("bad").await, StatusCode::BAD_GATEWAY);
    assert_eq!(send("bad").await, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(send("good").await, StatusCode::OK);
    assert_eq!(registry.get("bad").unwrap().state(), BreakerState::Open);
    assert_eq!(registry.get("good").unwrap().state(), BreakerState::Closed);
    // No key: passes unguarded.
    let res = app
        .clone()
        .oneshot(
            Request::get("/")
                .header("x-tenant", "")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(res.unwrap().status(), StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}

#[tokio::test(start_paused = true)]
async fn registry_stays_bounded_under_many_keys() {
    let registry = KeyedBreakers::builder(CircuitBreaker::builder().consecutive_failures(1))
        .max_keys(16)
        .build()
        .unwrap();
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(BreakerLayer::per_key(
            registry.clone(),
            HeaderKey::new(HeaderName::from_static("x-tenant")),
        ));
    for i in 0..200 {
        let req = Request::get("/")
            .header("x-tenant", format!("t{i}"))
            .body(Body::empty())
            .unwrap();
        assert_eq!(
            app.clone().oneshot(req).await.unwrap().status(),
            StatusCode::OK
        );
    }
    assert_eq!(registry.len(), 16);
}

#[tokio::test(start_paused = true)]
async fn route_template_key_from_matched_path() {
    let registry = KeyedBreakers::builder(
        CircuitBreaker::builder()
            .name("routes")
            .consecutive_failures(1),
    )
    .build()
    .unwrap();
    let by_route = |req: &Request<Body>| {
        req.extensions()
            .get::<MatchedPath>()
            .map(|p| p.as_str().to_owned())
    };
    let app = Router::new()
        .route(
            "/items/{id}",
            get(|| async { StatusCode::INTERNAL_SERVER_ERROR }),
        )
        .route("/health", get(|| async { "ok" }))
        .layer(BreakerLayer::per_key(registry.clone(), by_route));
    assert_eq!(
        get_status(&app, "/items/1").await,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(
        get_status(&app, "/items/2").await,
        StatusCode::SERVICE_UNAVAILABLE,
        "same template, same breaker"
    );
    assert_eq!(get_status(&app, "/health").await, StatusCode::OK);
    assert_eq!(
        registry.get("/items/{id}").unwrap().state(),
        BreakerState::Open
    );
}

#[tokio::test(start_paused = true)]
async fn custom_fallback_and_classifier() {
    let b = CircuitBreaker::builder()
        .consecutive_failures(2)
        .build()
        .unwrap();
    let app = Router::new()
        .route("/", get(|| async { StatusCode::NOT_FOUND }))
        .layer(
            BreakerLayer::new(b.clone())
                .classifier(|r: Result<&Response<Body>, &Infallible>| match r {
                    Ok(res) if res.status() == StatusCode::NOT_FOUND => Outcome::Failure,
                    _ => Outcome::Success,
                })
                .fallback(|rejected: &Rejected| {
                    let mut res = Response::new(Bytes::from(format!(
                        "cached, retry in {}",
                        rejected.retry_after_secs()
                    )));
                    *res.status_mut() = StatusCode::OK;
                    res
                }),
        );
    get_status(&app, "/").await;
    get_status(&app, "/").await;
    let res = send_get(&app, "/").await;
    assert_eq!(res.status(), StatusCode::OK);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"cached, retry in 30");
}

#[tokio::test(start_paused = true)]
async fn panicking_classifier_counts_as_failure() {
    let b = CircuitBreaker::builder()
        .consecutive_failures(1)
        .build()
        .unwrap();
    let app = Router::new().route("/", get(|| async { "fine" })).layer(
        BreakerLayer::new(b.clone()).classifier(
            |_: Result<&Response<Body>, &Infallible>| -> Outcome { panic!("classifier bug") },
        ),
    );
    assert_eq!(
        get_status(&app, "/").await,
        StatusCode::OK,
        "the response still goes out"
    );
    assert_eq!(b.state(), BreakerState::Open);
    assert_eq!(b.snapshot().failures, 1);
}

#[tokio::test(start_paused = true)]
async fn too_many_requests_counts_only_when_asked() {
    let route = || Router::new().route("/", get(|| async { StatusCode::TOO_MANY_REQUESTS }));
    let plain = CircuitBreaker::builder()
        .consecutive_failures(1)
        .build()
        .unwrap();
    let strict = CircuitBreaker::builder()
        .consecutive_failures(1)
        .build()
        .unwrap();
    let a = route().layer(BreakerLayer::new(plain.clone()));
    let b = route().layer(BreakerLayer::new(strict.clone()).too_many_requests_as_failure(true));
    get_status(&a, "/").await;
    get_status(&b, "/").await;
    assert_eq!(plain.state(), BreakerState::Closed);
    assert_eq!(strict.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn timeout_answers_504_and_counts_as_failure() {
    let b = CircuitBreaker::builder()
        .consecutive_failures(2)
        .build()
        .unwrap();
    let app = Router::new()
        .route(
            "/",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "late"
            }),
        )
        .layer(BreakerLayer::new(b.clone()).timeout(Duration::from_secs(1)));
    let res = send_get(&app, "/").await;
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        res.headers()[header::CONTENT_TYPE],
        "application/problem+json"
    );
    assert_eq!(get_status(&app, "/").await, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(b.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn cancelled_probe_does_not_wedge_half_open() {
    let b = CircuitBreaker::builder()
        .consecutive_failures(1)
        .half_open_probes(1)
        .wait_in_open(Duration::from_secs(1))
        .build()
        .unwrap();
    let slow = Arc::new(AtomicBool::new(true));
    let s = slow.clone();
    let app = Router::new()
        .route(
            "/",
            get(move || {
                let s = s.clone();
                async move {
                    if s.load(Ordering::SeqCst) {
                        std::future::pending::<()>().await;
                    }
                    "ok"
                }
            }),
        )
        .layer(BreakerLayer::new(b.clone()));
    b.try_acquire().unwrap().failure();
    tokio::time::advance(Duration::from_secs(1)).await;
    // The probe's client goes away: its future is dropped mid-call.
    let probe = app
        .clone()
        .oneshot(Request::get("/").body(Body::empty()).unwrap());
    assert!(
        tokio::time::timeout(Duration::from_millis(10), probe)
            .await
            .is_err()
    );
    assert_eq!(b.snapshot().probes_in_flight, 0);
    slow.store(false, Ordering::SeqCst);
    assert_eq!(get_status(&app, "/").await, StatusCode::OK);
    assert_eq!(b.state(), BreakerState::Closed);
}
