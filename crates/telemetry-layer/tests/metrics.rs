//! HTTP server metrics through a real axum Router, read back by parsing the `/metrics` exposition.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod common;

use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::{get, post};
use http_body_util::BodyExt;
use telemetry_layer::{PROMETHEUS_CONTENT_TYPE, Telemetry, TelemetryError, TelemetryLayer};
use tower::ServiceExt;

const DURATION: &str = "http_server_request_duration_seconds";

fn telemetry() -> Telemetry {
    Telemetry::builder()
        .install_recorder(false)
        .install_subscriber(false)
        .from_env(false)
        .build()
        .unwrap()
}

fn app(telemetry: &Telemetry) -> Router {
    // `/metrics` first: `merge` keeps the fallback of its argument, here the instrumented one.
    let app = Router::new()
        .route("/users/{id}", get(|| async { "hello" }))
        .route(
            "/items",
            post(|body: String| async move { (StatusCode::CREATED, body) }),
        )
        .route(
            "/boom",
            get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "down") }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(30)).await;
                "slow"
            }),
        )
        .route("/forever", get(std::future::pending::<&'static str>))
        .layer(telemetry.layer());
    telemetry.metrics_router().merge(app)
}

async fn send(app: &Router, req: Request<Body>) -> (StatusCode, bytes::Bytes) {
    let response = app.clone().oneshot(req).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, body)
}

async fn get_path(app: &Router, path: &str) -> StatusCode {
    send(app, Request::get(path).body(Body::empty()).unwrap())
        .await
        .0
}

async fn scrape(app: &Router) -> common::Exposition {
    let response = app
        .clone()
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        PROMETHEUS_CONTENT_TYPE,
        "Prometheus text content type"
    );
    let body = response.into_body().collect().await.unwrap().to_bytes();
    common::parse(std::str::from_utf8(&body).unwrap())
}

fn labels<'a>(
    method: &'a str,
    route: Option<&'a str>,
    status: Option<&'a str>,
) -> Vec<(&'a str, &'a str)> {
    let mut labels = vec![
        ("http_request_method", method),
        ("url_scheme", "http"),
        ("network_protocol_version", "1.1"),
    ];
    if let Some(route) = route {
        labels.push(("http_route", route));
    }
    if let Some(status) = status {
        labels.push(("http_response_status_code", status));
    }
    labels
}

fn with<'a>(
    mut labels: Vec<(&'a str, &'a str)>,
    extra: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    labels.extend_from_slice(extra);
    labels
}

#[tokio::test(start_paused = true)]
async fn known_request_mix_gives_semconv_series() {
    let telemetry = telemetry();
    let app = app(&telemetry);

    assert_eq!(get_path(&app, "/users/1").await, StatusCode::OK);
    assert_eq!(get_path(&app, "/users/2").await, StatusCode::OK);
    assert_eq!(
        get_path(&app, "/boom").await,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(get_path(&app, "/nope").await, StatusCode::NOT_FOUND);
    assert_eq!(get_path(&app, "/slow").await, StatusCode::OK);
    let (status, _) = send(
        &app,
        Request::post("/items")
            .header("content-length", "11")
            .body(Body::from("hello world"))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let purge = Request::builder()
        .method("PURGE")
        .uri("/users/1")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&app, purge).await.0, StatusCode::METHOD_NOT_ALLOWED);

    let m = scrape(&app).await;
    assert_eq!(m.types[DURATION], "histogram");
    assert_eq!(m.types["http_server_active_requests"], "gauge");
    assert_eq!(m.types["http_server_request_body_size_bytes"], "histogram");
    assert_eq!(m.types["http_server_response_body_size_bytes"], "histogram");

    let users = labels("GET", Some("/users/{id}"), Some("200"));
    assert_eq!(m.value(&format!("{DURATION}_count"), &users), Some(2.0));
    assert_eq!(
        m.value("http_server_response_body_size_bytes_sum", &users),
        Some(10.0),
        "two 5-byte bodies"
    );
    assert_eq!(
        m.value("http_server_request_body_size_bytes_sum", &users),
        Some(0.0)
    );

    // 5xx: error.type is the status code.
    let boom = with(
        labels("GET", Some("/boom"), Some("500")),
        &[("error_type", "500")],
    );
    assert_eq!(m.value(&format!("{DURATION}_count"), &boom), Some(1.0));

    // Unmatched: no route label at all, and no error.type for a 4xx.
    assert_eq!(
        m.value(
            &format!("{DURATION}_count"),
            &labels("GET", None, Some("404"))
        ),
        Some(1.0)
    );
    assert!(
        m.samples
            .iter()
            .all(|s| s.labels.get("http_route").is_none_or(|r| r != "/nope")),
        "raw paths never become labels"
    );

    // Request body size from Content-Length.
    let items = labels("POST", Some("/items"), Some("201"));
    assert_eq!(
        m.value("http_server_request_body_size_bytes_sum", &items),
        Some(11.0)
    );
    assert_eq!(
        m.value("http_server_response_body_size_bytes_sum", &items),
        Some(11.0)
    );

    // Unknown method.
    assert_eq!(
        m.value(
            &format!("{DURATION}_count"),
            &labels("_OTHER", Some("/users/{id}"), Some("405"))
        ),
        Some(1.0)
    );

    // Paused clock: the slow handler took exactly 30 ms, which lands between the 0.025 and 0.05 buckets.
    let slow = labels("GET", Some("/slow"), Some("200"));
    let bucket = |le: &str| {
        m.value(
            &format!("{DURATION}_bucket"),
            &with(slow.clone(), &[("le", le)]),
        )
    };
    assert_eq!(bucket("0.025"), Some(0.0));
    assert_eq!(bucket("0.05"), Some(1.0));
    assert_eq!(bucket("+Inf"), Some(1.0));
    let sum = m.value(&format!("{DURATION}_sum"), &slow).unwrap();
    assert!((sum - 0.03).abs() < 1e-9, "duration sum {sum}");

    // The semantic conventions' buckets are the default.
    let les: Vec<&str> = m
        .all(&format!("{DURATION}_bucket"))
        .iter()
        .filter(|s| s.labels.get("http_route").map(String::as_str) == Some("/slow"))
        .map(|s| s.labels["le"].as_str())
        .collect();
    assert_eq!(
        les,
        [
            "0.005", "0.01", "0.025", "0.05", "0.075", "0.1", "0.25", "0.5", "0.75", "1", "2.5",
            "5", "7.5", "10", "+Inf"
        ]
    );

    for (method, value) in [("GET", 0.0), ("POST", 0.0), ("_OTHER", 0.0)] {
        assert_eq!(
            m.value(
                "http_server_active_requests",
                &[("http_request_method", method), ("url_scheme", "http")]
            ),
            Some(value)
        );
    }
}

#[tokio::test]
async fn chunked_request_bodies_are_counted_as_they_stream() {
    let telemetry = telemetry();
    let app = app(&telemetry);
    let chunks = futures_util::stream::iter([
        Ok::<_, Infallible>(bytes::Bytes::from_static(b"abc")),
        Ok(bytes::Bytes::from_static(b"defgh")),
    ]);
    let (status, body) = send(
        &app,
        Request::post("/items")
            .body(Body::from_stream(chunks))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(&body[..], b"abcdefgh");
    let m = scrape(&app).await;
    let items = labels("POST", Some("/items"), Some("201"));
    assert_eq!(
        m.value("http_server_request_body_size_bytes_sum", &items),
        Some(8.0)
    );
}

#[tokio::test]
async fn a_404_flood_adds_no_series() {
    let telemetry = telemetry();
    let app = app(&telemetry);
    assert_eq!(get_path(&app, "/missing").await, StatusCode::NOT_FOUND);
    let before = scrape(&app).await.samples.len();

    for _ in 0..300 {
        let path = format!("/{:x}/{:x}", fastrand::u64(..), fastrand::u32(..));
        assert_eq!(get_path(&app, &path).await, StatusCode::NOT_FOUND);
    }
    let m = scrape(&app).await;
    assert_eq!(
        m.samples.len(),
        before,
        "series count is flat under random paths"
    );
    assert_eq!(
        m.value(
            &format!("{DURATION}_count"),
            &labels("GET", None, Some("404"))
        ),
        Some(301.0)
    );
}

fn poll_once<F: Future>(future: std::pin::Pin<&mut F>) -> Poll<F::Output> {
    future.poll(&mut Context::from_waker(Waker::noop()))
}

#[tokio::test]
async fn abandoned_requests_leave_active_requests_at_zero() {
    let telemetry = telemetry();
    let app = app(&telemetry);
    let active = [("http_request_method", "GET"), ("url_scheme", "http")];

    // The client goes away while the handler runs: the response future is dropped.
    {
        let mut pending = pin!(
            app.clone()
                .oneshot(Request::get("/forever").body(Body::empty()).unwrap())
        );
        assert!(poll_once(pending.as_mut()).is_pending());
        let m = scrape(&app).await;
        assert_eq!(m.value("http_server_active_requests", &active), Some(1.0));
    }
    let m = scrape(&app).await;
    assert_eq!(m.value("http_server_active_requests", &active), Some(0.0));
    let aborted = with(
        labels("GET", Some("/forever"), None),
        &[("error_type", "client_disconnect")],
    );
    assert_eq!(m.value(&format!("{DURATION}_count"), &aborted), Some(1.0));

    // The client goes away during the body: the body is dropped before its end.
    let response = app
        .clone()
        .oneshot(Request::get("/users/1").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let m = scrape(&app).await;
    assert_eq!(m.value("http_server_active_requests", &active), Some(1.0));
    drop(response);
    let m = scrape(&app).await;
    assert_eq!(m.value("http_server_active_requests", &active), Some(0.0));
    assert_eq!(
        m.value(
            &format!("{DURATION}_count"),
            &labels("GET", Some("/users/{id}"), Some("200"))
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn other_crates_metrics_share_the_exposition() {
    let telemetry = telemetry();
    let app = app(&telemetry);
    assert_eq!(get_path(&app, "/users/1").await, StatusCode::OK);
    metrics::with_local_recorder(telemetry.recorder(), || {
        metrics::counter!("cache_requests_total", "tier" => "l1", "outcome" => "hit").increment(3);
        metrics::counter!("dedup_coalesced").increment(2);
        metrics::gauge!("breaker_state", "breaker" => "redis").set(1.0);
        metrics::histogram!("cache_lookup_duration_seconds").record(0.002);
    });
    let m = scrape(&app).await;
    assert_eq!(
        m.value(
            "cache_requests_total",
            &[("tier", "l1"), ("outcome", "hit")]
        ),
        Some(3.0)
    );
    assert_eq!(m.types["cache_requests_total"], "counter");
    assert_eq!(
        m.value("dedup_coalesced_total", &[]),
        Some(2.0),
        "counters get _total"
    );
    assert_eq!(m.value("breaker_state", &[("breaker", "redis")]), Some(1.0));
    assert_eq!(
        m.types["cache_lookup_duration_seconds"], "histogram",
        "every histogram gets buckets, none becomes a summary"
    );
    assert!(
        m.value(
            &format!("{DURATION}_count"),
            &labels("GET", Some("/users/{id}"), Some("200"))
        )
        .is_some()
    );
}

#[tokio::test]
async fn metrics_are_served_over_real_http() {
    let telemetry = telemetry();
    let app = app(&telemetry);
    let (addr, server) = test_support::serve(app).await.unwrap();

    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    for path in ["/users/7", "/users/8", "/nope"] {
        let response = client
            .get(format!("http://{addr}{path}").parse().unwrap())
            .await
            .unwrap();
        response.into_body().collect().await.unwrap();
    }
    let response = client
        .get(format!("http://{addr}/metrics").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], PROMETHEUS_CONTENT_TYPE);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let m = common::parse(std::str::from_utf8(&body).unwrap());
    assert_eq!(
        m.value(
            &format!("{DURATION}_count"),
            &labels("GET", Some("/users/{id}"), Some("200"))
        ),
        Some(2.0)
    );
    assert_eq!(
        m.value(
            &format!("{DURATION}_count"),
            &labels("GET", None, Some("404"))
        ),
        Some(1.0)
    );
    server.abort();
}

#[tokio::test]
async fn standalone_layer_uses_the_facade_recorder() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_recommended_naming(true)
        .build_recorder();
    let handle = recorder.handle();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let layer = TelemetryLayer::builder()
        .body_size_metrics(false)
        .build()
        .unwrap();
    let app = Router::new()
        .route("/a", get(|| async { "a" }))
        .layer(layer);
    assert_eq!(get_path(&app, "/a").await, StatusCode::OK);
    let m = common::parse(&handle.render());
    assert!(m.types.contains_key(DURATION));
    assert!(!m.types.contains_key("http_server_response_body_size_bytes"));
}

#[test]
fn invalid_settings_are_reported_with_their_field() {
    let err = Telemetry::builder()
        .install_recorder(false)
        .install_subscriber(false)
        .from_env(false)
        .duration_buckets(&[1.0, 0.5])
        .build()
        .unwrap_err();
    assert!(
        matches!(
            err,
            TelemetryError::InvalidConfig {
                field: "duration_buckets",
                ..
            }
        ),
        "{err}"
    );

    let err = TelemetryLayer::builder()
        .capture_request_headers(["authorization"])
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("allow_sensitive_headers"), "{err}");
    assert!(
        TelemetryLayer::builder()
            .capture_request_headers(["authorization"])
            .allow_sensitive_headers(true)
            .build()
            .is_ok()
    );

    let err = TelemetryLayer::builder()
        .capture_request_headers(["bad header"])
        .build()
        .unwrap_err();
    assert!(matches!(
        err,
        TelemetryError::InvalidConfig {
            field: "capture_request_headers",
            ..
        }
    ));

    let err = Telemetry::builder()
        .install_recorder(false)
        .install_subscriber(false)
        .from_env(false)
        .otlp_endpoint("https://collector.example:4318")
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("https"), "{err}");

    for endpoint in ["not a url", "collector:4318", "ftp://collector:4318"] {
        let err = Telemetry::builder()
            .install_recorder(false)
            .install_subscriber(false)
            .from_env(false)
            .otlp_endpoint(endpoint)
            .build()
            .unwrap_err();
        assert!(
            matches!(
                err,
                TelemetryError::InvalidConfig {
                    field: "OTEL_EXPORTER_OTLP_ENDPOINT",
                    ..
                }
            ),
            "{endpoint}: {err}"
        );
    }
}

#[test]
fn exposition_parser_handles_braces_and_escapes() {
    let text = "# TYPE x_total counter\nx_total{route=\"/u/{id}\",q=\"a\\\"b\\\\\"} 3\n";
    let parsed = common::parse(text);
    assert_eq!(
        parsed.value("x_total", &[("route", "/u/{id}"), ("q", "a\"b\\")]),
        Some(3.0)
    );
}

#[test]
#[should_panic(expected = "bad metric name")]
fn exposition_parser_rejects_bad_names() {
    common::parse("# TYPE x.y counter\nx.y 1\n");
}

/// Past `max_cached_series` label sets, requests land in one overflow series marked
/// `otel_metric_overflow="true"`: the totals stay exact, the number of series stops growing, and the
/// exposition stays valid (each histogram family once, by promtool).
#[tokio::test]
async fn series_past_the_bound_go_to_one_overflow_series() {
    let telemetry = Telemetry::builder()
        .install_recorder(false)
        .install_subscriber(false)
        .from_env(false)
        .layer_config(TelemetryLayer::builder().max_cached_series(3))
        .build()
        .unwrap();
    let routes = Router::new().route(
        "/status/{code}",
        get(
            |axum::extract::Path(code): axum::extract::Path<u16>| async move {
                StatusCode::from_u16(code).unwrap_or(StatusCode::IM_A_TEAPOT)
            },
        ),
    );
    let app = telemetry.instrument(routes);
    let codes = [200u16, 201, 202, 203, 204, 205, 206, 207];
    for round in 0..5 {
        for code in codes {
            let status = get_path(&app, &format!("/status/{code}")).await;
            assert_eq!(status.as_u16(), code, "round {round}");
        }
    }
    let text = telemetry.render();
    test_support::assert_promtool_accepts(&text);
    let m = common::parse(&text);
    let counts = m.all(&format!("{DURATION}_count"));
    assert_eq!(
        counts.len(),
        4,
        "three series and the overflow one: {counts:?}"
    );
    let total: f64 = counts.iter().map(|s| s.value).sum();
    assert_eq!(total, 40.0, "every request counted once");
    assert_eq!(
        m.value(
            &format!("{DURATION}_count"),
            &[("otel_metric_overflow", "true")]
        ),
        Some(25.0),
        "five of the eight statuses overflowed, five rounds each"
    );
    let sizes = m.all("http_server_response_body_size_bytes_count");
    assert_eq!(sizes.len(), 4);
    assert_eq!(
        text.matches(&format!("# TYPE {DURATION} histogram"))
            .count(),
        1,
        "one family"
    );
}

/// The histograms are counted into buckets when recorded: the `+Inf` bucket, `_count` and `_sum` agree
/// with what was sent, with no upkeep or scrape in between, and `/metrics` shows the same as `render`.
#[tokio::test]
async fn histograms_are_bucketed_when_recorded() {
    let telemetry = Telemetry::builder()
        .install_recorder(false)
        .install_subscriber(false)
        .from_env(false)
        .upkeep_interval(Duration::from_secs(3600))
        .size_buckets(&[0.0, 10.0, 100.0])
        .buckets_for_metric("http.server.response.body.size", &[1.0, 2000.0])
        .build()
        .unwrap();
    let app = app(&telemetry);
    for len in [0usize, 5, 50, 500] {
        let (status, _) = send(
            &app,
            Request::post("/items")
                .body(Body::from("x".repeat(len)))
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let m = common::parse(&telemetry.render());
    let labels = [
        ("http_request_method", "POST"),
        ("http_route", "/items"),
        ("http_response_status_code", "201"),
        ("network_protocol_version", "1.1"),
        ("url_scheme", "http"),
    ];
    let bucket = |le: &str| {
        let mut with_le = labels.to_vec();
        with_le.push(("le", le));
        m.value("http_server_request_body_size_bytes_bucket", &with_le)
    };
    assert_eq!(bucket("0"), Some(1.0));
    assert_eq!(bucket("10"), Some(2.0));
    assert_eq!(bucket("100"), Some(3.0));
    assert_eq!(bucket("+Inf"), Some(4.0));
    assert_eq!(
        m.value("http_server_request_body_size_bytes_sum", &labels),
        Some(555.0)
    );
    assert_eq!(m.value(&format!("{DURATION}_count"), &labels), Some(4.0));
    // The response sizes take their own override; the request sizes kept `size_buckets` above.
    let response_bucket = |le: &str| {
        let mut with_le = labels.to_vec();
        with_le.push(("le", le));
        m.value("http_server_response_body_size_bytes_bucket", &with_le)
    };
    assert_eq!(response_bucket("1"), Some(1.0));
    assert_eq!(response_bucket("2000"), Some(4.0));
    assert_eq!(response_bucket("10"), None);
    let served = scrape(&app).await;
    assert_eq!(
        served.value("http_server_request_body_size_bytes_sum", &labels),
        Some(555.0)
    );
}
