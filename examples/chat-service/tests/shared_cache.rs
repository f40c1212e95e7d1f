//! Two instances over the same database file, sharing one real Redis: a post on one is seen by
//! the other as soon as the invalidation arrives, even though both cached the old page.
// Test helpers: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use cache_layer::TierEvent;
use chat_service::{ChatService, Config};
use http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::Value;
use test_support::RedisServer;
use tokio::sync::broadcast;
use tower::ServiceExt;

async fn get(app: &Router, path: &str) -> (StatusCode, String, Value) {
    let req = Request::get(path)
        .header(header::HOST, "chat.test")
        .body(Body::empty())
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let cache = resp
        .headers()
        .get("cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, cache, serde_json::from_slice(&body).unwrap())
}

async fn post(app: &Router, room: &str, text: &str) -> StatusCode {
    let req = Request::post(format!("/rooms/{room}/messages"))
        .header(header::HOST, "chat.test")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(
            serde_json::json!({"author": "ada", "text": text}).to_string(),
        ))
        .unwrap();
    app.clone().oneshot(req).await.unwrap().status()
}

fn texts(page: &Value) -> Vec<String> {
    page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_owned())
        .collect()
}

async fn wait_for(rx: &mut broadcast::Receiver<TierEvent>, want: impl Fn(&TierEvent) -> bool) {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match rx.recv().await {
                Ok(e) if want(&e) => return,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("events closed"),
            }
        }
    })
    .await
    .expect("no event within 10 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_on_one_instance_is_served_by_the_other() {
    let redis = RedisServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = common::shared_config(dir.path(), redis.url());
    let a = ChatService::open(&config).await.unwrap();
    let b = ChatService::open(&config).await.unwrap();
    let (app_a, app_b) = (a.app(), b.app());
    let mut events_b = b.cache_handle().tier_events().unwrap();
    if !b.cache_handle().tier_stats().subscribed {
        wait_for(&mut events_b, |e| *e == TierEvent::Subscribed).await;
    }

    assert_eq!(post(&app_a, "lobby", "first").await, StatusCode::CREATED);
    let lobby = |e: &TierEvent| matches!(e, TierEvent::RemotePurge(p) if p.tag_name() == Some("room:lobby"));
    wait_for(&mut events_b, lobby).await;
    // B caches the page (and writes it to Redis); a second read is a hit.
    let (status, _, page) = get(&app_b, "/rooms/lobby/messages").await;
    assert_eq!(
        (status, texts(&page)),
        (StatusCode::OK, vec!["first".to_owned()])
    );
    for _ in 0..500 {
        if b.cache_handle().tier_stats().writes >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (_, cache_status, _) = get(&app_b, "/rooms/lobby/messages").await;
    assert!(cache_status.contains("hit"), "{cache_status}");

    let mut events_b = b.cache_handle().tier_events().unwrap();
    assert_eq!(post(&app_a, "lobby", "second").await, StatusCode::CREATED);
    wait_for(&mut events_b, lobby).await;
    let (status, _, page) = get(&app_b, "/rooms/lobby/messages").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(texts(&page), ["second", "first"]);
    let (_, _, rooms) = get(&app_b, "/rooms").await;
    assert_eq!(rooms["rooms"][0]["message_count"], 2);
    // A's own read right after its post is current too (the post waited for the purge).
    let (_, _, page_a) = get(&app_a, "/rooms/lobby/messages").await;
    assert_eq!(texts(&page_a), ["second", "first"]);
}

#[tokio::test]
async fn without_redis_the_cache_is_in_process_only() {
    let service = ChatService::open(&Config::temporary()).await.unwrap();
    let app = service.app();
    assert_eq!(post(&app, "lobby", "hello").await, StatusCode::CREATED);
    let (_, first, page) = get(&app, "/rooms/lobby/messages").await;
    assert!(first.starts_with("chat; fwd=uri-miss"), "{first}");
    assert_eq!(texts(&page), ["hello"]);
    assert_eq!(service.cache_handle().entry_count(), 1);
    assert!(service.cache_handle().tier_events().is_none());
    // A post purges the room at once: the next read shows it.
    assert_eq!(post(&app, "lobby", "again").await, StatusCode::CREATED);
    let (_, _, page) = get(&app, "/rooms/lobby/messages").await;
    assert_eq!(texts(&page), ["again", "hello"]);
}
