//! Helpers shared by the integration tests: a service on its own temporary database and
//! one-shot requests through its real router.
#![allow(dead_code)]
// Test helpers: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::Router;
use axum::body::{Body, Bytes};
use chat_service::{ChatService, Config};
use http::{HeaderMap, Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

/// A service on a fresh temporary database, with its router.
pub(crate) struct TestApp {
    pub(crate) service: ChatService,
    pub(crate) router: Router,
}

/// The configuration of instances that share one SQLite file in `dir` and the Redis at `redis_url`, as
/// several instances of one deployment do.
pub(crate) fn shared_config(dir: &std::path::Path, redis_url: String) -> Config {
    Config {
        database: chat_service::Database::File(dir.join("chat.db")),
        redis_url: Some(redis_url),
        ..Config::default()
    }
}

pub(crate) async fn app() -> TestApp {
    app_with(Config::temporary()).await
}

pub(crate) async fn app_with(config: Config) -> TestApp {
    let service = ChatService::open(&config).await.expect("open service");
    let router = service.app();
    TestApp { service, router }
}

/// A response, fully read.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Reply {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    pub(crate) fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
            .to_str()
            .unwrap()
    }

    /// Asserts an RFC 9457 problem response with this status.
    pub(crate) fn assert_problem(&self, status: StatusCode) {
        assert_eq!(self.status, status, "body: {:?}", self.body);
        assert_eq!(self.header("content-type"), "application/problem+json");
        let problem = self.json();
        assert_eq!(problem["status"], status.as_u16(), "{problem}");
        for field in ["type", "title", "detail"] {
            assert!(problem[field].is_string(), "{field} missing: {problem}");
        }
    }
}

impl TestApp {
    pub(crate) async fn send(&self, request: Request<Body>) -> Reply {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        Reply {
            status,
            headers,
            body,
        }
    }

    pub(crate) async fn get(&self, uri: &str) -> Reply {
        self.send(get(uri)).await
    }

    /// Posts `{author, text}` to `room` and asserts `201`.
    pub(crate) async fn post(&self, room: &str, author: &str, text: &str) -> Value {
        let reply = self
            .send(post_json(
                &format!("/rooms/{room}/messages"),
                &serde_json::json!({ "author": author, "text": text }).to_string(),
            ))
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "body: {:?}", reply.body);
        reply.json()
    }

    /// Posts like [`TestApp::post`] and returns the new message's id.
    pub(crate) async fn post_id(&self, room: &str, author: &str, text: &str) -> i64 {
        self.post(room, author, text).await["id"].as_i64().unwrap()
    }
}

pub(crate) fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

pub(crate) fn get_if_none_match(uri: &str, etag: &str) -> Request<Body> {
    Request::get(uri)
        .header(header::IF_NONE_MATCH, etag)
        .body(Body::empty())
        .unwrap()
}

pub(crate) fn post_json(uri: &str, body: &str) -> Request<Body> {
    Request::post(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_owned()))
        .unwrap()
}

/// Ids of a message page, in the order served.
pub(crate) fn page_ids(page: &Value) -> Vec<i64> {
    page["messages"]
        .as_array()
        .expect("messages array")
        .iter()
        .map(|m| m["id"].as_i64().expect("id"))
        .collect()
}

/// Sends `request` through a clone of `router` and reads the whole answer.
pub(crate) async fn send_to(router: &Router, request: Request<Body>) -> Reply {
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}

/// `POST /rooms/{room}/messages` with `{author, text}` and, if given, `Idempotency-Key: "key"`.
pub(crate) fn post_message(room: &str, text: &str, key: Option<&str>) -> Request<Body> {
    let mut request = Request::post(format!("/rooms/{room}/messages"))
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(key) = key {
        request = request.header("idempotency-key", format!("\"{key}\""));
    }
    request
        .body(Body::from(
            serde_json::json!({ "author": "ada", "text": text }).to_string(),
        ))
        .unwrap()
}

/// `GET /stats` as JSON.
pub(crate) async fn stats(router: &Router) -> Value {
    let reply = send_to(router, get("/stats")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("cache-control"), "no-store");
    reply.json()
}

/// A real moderation service on a loopback port, stopped when dropped.
pub(crate) struct ModerationServer {
    pub(crate) url: String,
    pub(crate) service: moderation::Moderation,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Drop for ModerationServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ModerationServer {
    pub(crate) async fn start() -> Self {
        let service = moderation::Moderation::new(moderation::Faults::default());
        let (addr, task) = test_support::serve(service.router()).await.unwrap();
        Self {
            url: format!("http://{addr}"),
            service,
            task,
        }
    }

    /// Checks received so far.
    pub(crate) fn checks(&self) -> u64 {
        self.service.stats().checks
    }

    pub(crate) fn set_down(&self, down: bool) {
        self.service.set_faults(moderation::FaultsUpdate {
            down: Some(down),
            ..Default::default()
        });
    }
}
