//! Metrics of the lower tiers through a real recorder (installed globally: this test binary
//! holds only this test, and the tiers record from background tasks).
#![cfg(feature = "redis")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use cache_layer::metrics::{
    CACHE_LEASES_TOTAL, CACHE_PUBSUB_SUBSCRIPTIONS_TOTAL, CACHE_REQUESTS_TOTAL,
    CACHE_TIER_CALL_SECONDS,
};
use cache_layer::{CacheLayer, RedisTier};
use http::Request;
use http_body_util::BodyExt;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use test_support::RedisServer;
use tower::ServiceExt;

type Snapshot = Vec<(
    metrics_util::CompositeKey,
    Option<metrics::Unit>,
    Option<metrics::SharedString>,
    DebugValue,
)>;

fn counter(s: &Snapshot, name: &str, labels: &[(&str, &str)]) -> u64 {
    s.iter()
        .filter(|(k, _, _, _)| {
            let key = k.key();
            key.name() == name
                && labels
                    .iter()
                    .all(|(n, v)| key.labels().any(|l| l.key() == *n && l.value() == *v))
        })
        .map(|(_, _, _, v)| match v {
            DebugValue::Counter(c) => *c,
            DebugValue::Histogram(h) => h.len() as u64,
            DebugValue::Gauge(_) => 0,
        })
        .sum()
}

async fn fetch(app: &Router) {
    let req = Request::get("/x")
        .header("host", "example.com")
        .body(Body::empty())
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    resp.into_body().collect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lower_tiers_report_hits_misses_latency_leases_and_subscriptions() {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    recorder.install().unwrap();

    let server = RedisServer::start().unwrap();
    let layer = |prefix: &str| {
        let cache = CacheLayer::builder()
            .redis(
                RedisTier::builder(server.url())
                    .prefix(prefix)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let handle = cache.handle();
        let app = Router::new()
            .route(
                "/x",
                get(|| async { ([("cache-control", "max-age=60")], "x") }),
            )
            .layer(cache);
        (app, handle)
    };
    let (first, first_handle) = layer("m");
    fetch(&first).await;
    for _ in 0..500 {
        if first_handle.tier_stats().writes == 1 && first_handle.tier_stats().subscribed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A second instance, with its own empty L1, finds it in Redis.
    let (second, handle) = layer("m");
    fetch(&second).await;

    assert_eq!(handle.tier_stats().l2_hits, 1);
    let snap = snap.snapshot().into_vec();
    assert_eq!(
        counter(
            &snap,
            CACHE_REQUESTS_TOTAL,
            &[("tier", "l2"), ("outcome", "miss")]
        ),
        1
    );
    assert_eq!(
        counter(
            &snap,
            CACHE_REQUESTS_TOTAL,
            &[("tier", "l2"), ("outcome", "hit")]
        ),
        1
    );
    assert_eq!(
        counter(&snap, CACHE_LEASES_TOTAL, &[("outcome", "taken")]),
        1
    );
    assert!(counter(&snap, CACHE_TIER_CALL_SECONDS, &[("tier", "l2")]) >= 4);
    assert!(counter(&snap, CACHE_PUBSUB_SUBSCRIPTIONS_TOTAL, &[]) >= 1);
}
