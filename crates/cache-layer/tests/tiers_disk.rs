//! The persistent tier on a real redb file: it survives a restart of the layer, purges reach
//! it, and it stays within its byte bound.
#![cfg(feature = "disk")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::response::IntoResponse;
use axum::routing::get;
use cache_layer::{CacheHandle, CacheLayer, DiskTier, Purge};
use http::Request;
use http_body_util::BodyExt;
use tower::ServiceExt;

async fn item(
    State(calls): State<Arc<AtomicUsize>>,
    UrlPath(id): UrlPath<u32>,
) -> impl IntoResponse {
    calls.fetch_add(1, Ordering::SeqCst);
    (
        [
            ("cache-control", "public, max-age=600".to_owned()),
            ("cache-tag", format!("item:{id}")),
        ],
        format!("item {id} {}", "x".repeat(1000)),
    )
}

/// Opens the tier, retrying while a previous instance still releases the file (bounded).
async fn open(path: &Path, max_bytes: u64) -> DiskTier {
    for _ in 0..200 {
        match DiskTier::builder(path).max_bytes(max_bytes).open() {
            Ok(t) => return t,
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    panic!("the database file was never released");
}

fn layered(disk: DiskTier, calls: &Arc<AtomicUsize>) -> (Router, CacheHandle) {
    let cache = CacheLayer::builder()
        .ttl_cap(Duration::from_millis(1))
        .disk(disk)
        .build()
        .unwrap();
    let handle = cache.handle();
    let app = Router::new()
        .route("/items/{id}", get(item))
        .with_state(calls.clone())
        .layer(cache);
    (app, handle)
}

async fn fetch(app: &Router, path: &str) -> (String, String) {
    let req = Request::get(path)
        .header("host", "example.com")
        .body(Body::empty())
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp
        .headers()
        .get("cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (String::from_utf8(body.to_vec()).unwrap(), status)
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what} did not happen within 5 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.redb");
    let calls = Arc::new(AtomicUsize::new(0));
    {
        let disk = open(&path, 1 << 20).await;
        let (app, _handle) = layered(disk.clone(), &calls);
        let (body, _) = fetch(&app, "/items/1").await;
        assert!(body.starts_with("item 1 "));
        eventually("the disk write", || disk.bytes() > 0).await;
    }
    let disk = open(&path, 1 << 20).await;
    assert!(disk.bytes() > 0, "the byte count is read back on open");
    let (app, handle) = layered(disk, &calls);
    let (body, status) = fetch(&app, "/items/1").await;
    assert!(body.starts_with("item 1 "));
    assert!(status.contains("; hit"), "{status}");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "answered from disk");
    assert_eq!(handle.tier_stats().l3_hits, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_reaches_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let disk = open(&dir.path().join("cache.redb"), 1 << 20).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let (app, handle) = layered(disk.clone(), &calls);
    fetch(&app, "/items/1").await;
    fetch(&app, "/items/2").await;
    eventually("the disk writes", || disk.bytes() > 2000).await;
    let before = disk.bytes();
    handle.purge(Purge::tag("item:1")).await;
    eventually("the purge", || disk.bytes() < before).await;
    // A second layer over the same file, with an empty L1.
    let (fresh, fresh_handle) = layered(disk.clone(), &calls);
    fetch(&fresh, "/items/1").await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "item 1 came from the origin again"
    );
    fetch(&fresh, "/items/2").await;
    assert_eq!(calls.load(Ordering::SeqCst), 3, "item 2 still on disk");
    assert_eq!(fresh_handle.tier_stats().l3_hits, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tier_stays_within_its_byte_bound() {
    let dir = tempfile::tempdir().unwrap();
    let disk = open(&dir.path().join("cache.redb"), 5_000).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let (app, _handle) = layered(disk.clone(), &calls);
    for i in 0..20 {
        fetch(&app, &format!("/items/{i}")).await;
    }
    // Each entry is about 1.2 KB; the writer sweeps whenever a batch leaves it over the bound.
    eventually("the bound enforced", || {
        disk.bytes() > 0 && disk.bytes() <= 5_000
    })
    .await;
}
