//! The `chat-service` binary over TCP, as the load test starts it: seeded, on a free port
//! printed as one stdout line; stacked with `/metrics`, or bare (`CHAT_BARE=1`) without it.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::io::AsyncBufReadExt;

struct Running {
    child: tokio::process::Child,
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

async fn start(args: &[&str], env: &[(&str, &str)]) -> Running {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_chat-service"));
    command
        .args(["--listen", "127.0.0.1:0", "--database-url", ":memory:"])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    for name in [
        "LISTEN_ADDR",
        "DATABASE_URL",
        "REDIS_URL",
        "CACHE_DISK_PATH",
        "MODERATION_URL",
        "CHAT_BARE",
        "IDEMPOTENCY_KEY_REQUIRED",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ] {
        command.env_remove(name);
    }
    command.envs(env.iter().copied());
    let mut child = command.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("listening line within 60 s")
        .unwrap()
        .expect("a stdout line");
    let addr = line
        .strip_prefix("chat-service listening on ")
        .unwrap_or_else(|| panic!("first stdout line: {line:?}"));
    Running {
        base: format!("http://{addr}"),
        child,
        client: Client::builder(TokioExecutor::new()).build_http(),
    }
}

impl Running {
    async fn get(&self, path: &str) -> (StatusCode, Bytes) {
        let request = Request::get(format!("{}{path}", self.base))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = self.client.request(request).await.unwrap();
        let status = response.status();
        (
            status,
            response.into_body().collect().await.unwrap().to_bytes(),
        )
    }

    async fn stats(&self) -> Value {
        let (status, body) = self.get("/stats").await;
        assert_eq!(status, StatusCode::OK);
        serde_json::from_slice(&body).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stacked_binary_prints_its_address_seeds_and_serves_metrics() {
    let mut running = start(&["--seed", "2,3"], &[]).await;
    let (status, body) = running.get("/rooms/room-2/messages").await;
    assert_eq!(status, StatusCode::OK);
    let page: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(page["messages"].as_array().unwrap().len(), 3);
    let stats = running.stats().await;
    assert_eq!(stats["mode"], "stacked");
    assert_eq!(stats["db_queries"], 1);
    assert!(stats["breaker_state"].is_null());
    let (status, body) = running.get("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    let exposition = String::from_utf8(body.to_vec()).unwrap();
    for series in [
        "http_server_request_duration_seconds",
        "cache_requests_total",
        "chat_db_queries_total",
    ] {
        assert!(exposition.contains(series), "{series} missing");
    }
    running.child.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_binary_from_the_environment() {
    let mut running = start(&["--seed", "1,1"], &[("CHAT_BARE", "1")]).await;
    assert_eq!(running.stats().await["mode"], "bare");
    let (status, _) = running.get("/metrics").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = running.get("/rooms/room-1/messages").await;
    assert_eq!(status, StatusCode::OK);
    running.child.kill().await.unwrap();
}

#[tokio::test]
async fn bad_flags_fail_the_clap_way() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_chat-service"))
        .args(["--l1-ttl-cap", "soon"])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--l1-ttl-cap"), "{stderr}");
    assert!(output.stdout.is_empty());
}
