//! Request costs of the bare service through its router, in process: the baseline that the
//! workspace's layers are compared against.
//!
//! `concurrent/*` runs 64 requests at once on a 2-worker runtime and reports requests per second.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use axum::Router;
use axum::body::Body;
use chat_service::{ChatService, Config};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

async fn call(router: &Router, request: Request<Body>) -> StatusCode {
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    // Read the body, as a client would.
    let _ = response.into_body().collect().await.unwrap();
    status
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (service, router) = rt.block_on(async {
        let service = ChatService::open(&Config::temporary()).await.unwrap();
        service.seed(10, 1000).await.unwrap();
        let router = service.app();
        (service, router)
    });

    let mut group = c.benchmark_group("sequential");
    group.bench_function("list_page_50", |b| {
        b.to_async(&rt).iter(|| async {
            assert_eq!(
                call(&router, get("/rooms/room-3/messages")).await,
                StatusCode::OK
            )
        });
    });
    group.bench_function("list_not_modified", |b| {
        b.to_async(&rt).iter(|| async {
            let request = Request::get("/rooms/room-3/messages")
                .header("if-none-match", "\"r1000\"")
                .body(Body::empty())
                .unwrap();
            assert_eq!(call(&router, request).await, StatusCode::NOT_MODIFIED);
        });
    });
    group.bench_function("get_message", |b| {
        b.to_async(&rt).iter(|| async {
            assert_eq!(
                call(&router, get("/rooms/room-3/messages/5003")).await,
                StatusCode::OK
            )
        });
    });
    group.bench_function("rooms", |b| {
        b.to_async(&rt)
            .iter(|| async { assert_eq!(call(&router, get("/rooms")).await, StatusCode::OK) });
    });
    group.bench_function("post_message", |b| {
        b.to_async(&rt).iter(|| async {
            let request = Request::post("/rooms/bench/messages")
                .header("content-type", "application/json")
                .body(Body::from(
                    r#"{"author":"bench","text":"a benchmark message"}"#,
                ))
                .unwrap();
            assert_eq!(call(&router, request).await, StatusCode::CREATED);
        });
    });
    group.finish();

    let mut group = c.benchmark_group("concurrent");
    const BATCH: u64 = 64;
    group.throughput(Throughput::Elements(BATCH));
    group.bench_function("list_page_50_x64", |b| {
        b.to_async(&rt).iter(|| async {
            let mut tasks = tokio::task::JoinSet::new();
            for n in 0..BATCH {
                let router = router.clone();
                let uri = format!("/rooms/room-{}/messages", n % 10 + 1);
                tasks.spawn(async move { call(&router, get(&uri)).await });
            }
            while let Some(status) = tasks.join_next().await {
                assert_eq!(status.unwrap(), StatusCode::OK);
            }
        });
    });
    group.finish();
    drop(service);
}

criterion_group!(chat_service, benches);
criterion_main!(chat_service);
