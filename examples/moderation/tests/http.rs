//! The moderation service over real TCP: checks, fault control while it runs, and stats.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use moderation::{Faults, Moderation, Stats};
use serde_json::{Value, json};

struct Running {
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn start(faults: Faults) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Moderation::new(faults).router();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    Running {
        base: format!("http://{addr}"),
        client: Client::builder(TokioExecutor::new()).build_http(),
        server,
    }
}

impl Running {
    async fn send(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Bytes) {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        let body = match body {
            Some(body) => {
                request = request.header("content-type", "application/json");
                Full::new(Bytes::from(body.to_string()))
            }
            None => Full::new(Bytes::new()),
        };
        let response = self
            .client
            .request(request.body(body).unwrap())
            .await
            .unwrap();
        let status = response.status();
        (
            status,
            response.into_body().collect().await.unwrap().to_bytes(),
        )
    }

    async fn check(&self, text: &str) -> (StatusCode, Bytes) {
        self.send(
            Method::POST,
            "/v1/check",
            Some(json!({ "author": "ada", "text": text })),
        )
        .await
    }

    async fn put_faults(&self, update: Value) -> Value {
        let (status, body) = self.send(Method::PUT, "/admin/faults", Some(update)).await;
        assert_eq!(status, StatusCode::OK, "{body:?}");
        serde_json::from_slice(&body).unwrap()
    }

    async fn stats(&self) -> Stats {
        let (status, body) = self.send(Method::GET, "/admin/stats", None).await;
        assert_eq!(status, StatusCode::OK);
        serde_json::from_slice(&body).unwrap()
    }
}

#[tokio::test]
async fn checks_allow_or_reject_by_text() {
    let service = start(Faults::default()).await;
    let (status, body) = service.check("hello there").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap(),
        json!({ "allowed": true })
    );

    let (status, body) = service.check("this has a forbidden-word in it").await;
    assert_eq!(status, StatusCode::OK);
    let verdict: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(verdict["allowed"], false);
    assert!(verdict["reason"].is_string(), "{verdict}");

    let (status, _) = service.send(Method::GET, "/healthz", None).await;
    assert_eq!(status, StatusCode::OK);
    let stats = service.stats().await;
    assert_eq!((stats.checks, stats.failed), (2, 0));
}

#[tokio::test]
async fn faults_change_while_running_and_are_counted() {
    let service = start(Faults::default()).await;
    let (status, body) = service.send(Method::GET, "/admin/faults", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap(),
        json!({ "latency_ms": 0, "failure_rate": 0.0, "down": false })
    );

    // Down: every check answers 503 at once, even with a long latency configured.
    let state = service
        .put_faults(json!({ "down": true, "latency_ms": 10_000 }))
        .await;
    assert_eq!(
        state,
        json!({ "latency_ms": 10_000, "failure_rate": 0.0, "down": true })
    );
    let started = Instant::now();
    assert_eq!(service.check("hi").await.0, StatusCode::SERVICE_UNAVAILABLE);
    assert!(started.elapsed() < Duration::from_secs(5));

    // Every check fails.
    service
        .put_faults(json!({ "down": false, "latency_ms": 0, "failure_rate": 1.0 }))
        .await;
    for _ in 0..3 {
        assert_eq!(
            service.check("hi").await.0,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    // Latency is added before the answer.
    service
        .put_faults(json!({ "failure_rate": 0.0, "latency_ms": 150 }))
        .await;
    let started = Instant::now();
    assert_eq!(service.check("hi").await.0, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(150));

    let stats = service.stats().await;
    assert_eq!((stats.checks, stats.failed), (5, 4));

    // A rate outside 0..=1 and unknown fields are refused; the state is unchanged.
    let (status, _) = service
        .send(
            Method::PUT,
            "/admin/faults",
            Some(json!({ "failure_rate": 2.0 })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = service
        .send(Method::PUT, "/admin/faults", Some(json!({ "slow": true })))
        .await;
    assert!(status.is_client_error(), "{status}");
    let (_, body) = service.send(Method::GET, "/admin/faults", None).await;
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap(),
        json!({ "latency_ms": 150, "failure_rate": 0.0, "down": false })
    );
}

#[tokio::test]
async fn the_last_traceparent_is_recorded() {
    let service = start(Faults::default()).await;
    assert_eq!(service.stats().await.last_traceparent, None);
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let request = Request::post(format!("{}/v1/check", service.base))
        .header("content-type", "application/json")
        .header("traceparent", traceparent)
        .body(Full::new(Bytes::from(
            json!({ "author": "a", "text": "b" }).to_string(),
        )))
        .unwrap();
    let response = service.client.request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        service.stats().await.last_traceparent.as_deref(),
        Some(traceparent)
    );
}

#[tokio::test]
async fn the_binary_prints_its_address_and_serves() {
    use tokio::io::AsyncBufReadExt;

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_moderation"))
        .args(["--listen", "127.0.0.1:0", "--latency-ms", "1"])
        .env_remove("MODERATION_LISTEN")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let addr = line
        .strip_prefix("moderation listening on ")
        .unwrap_or_else(|| panic!("first line: {line:?}"));
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let response = client
        .request(
            Request::get(format!("http://{addr}/admin/faults"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let faults: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(faults["latency_ms"], 1);
    child.kill().await.unwrap();
}
