//! The shared tier against a real redis-server: L2 hits across instances, purges that reach
//! every instance, stampede leases, corrupt entries, and Redis failing under traffic.
#![cfg(feature = "redis")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::IntoResponse;
use axum::routing::get;
use breaker_layer::{BreakerState, CircuitBreaker};
use cache_layer::{CacheHandle, CacheLayer, Purge, RedisTier, TierEvent};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use test_support::{FaultProxy, RedisServer};
use tokio::sync::{Notify, broadcast};
use tower::ServiceExt;

/// The origin: a version number standing for the database, a call counter, and a gate that
/// holds `/slow` responses until opened.
#[derive(Clone, Default)]
struct Origin {
    version: Arc<AtomicU64>,
    calls: Arc<AtomicUsize>,
    gate: Arc<Notify>,
}

async fn item(State(o): State<Origin>, Path(id): Path<u32>) -> impl IntoResponse {
    o.calls.fetch_add(1, Ordering::SeqCst);
    let v = o.version.load(Ordering::SeqCst);
    (
        [
            ("cache-control", "public, max-age=60".to_owned()),
            ("cache-tag", format!("item:{id} items")),
        ],
        format!("item {id} v{v}"),
    )
}

async fn update(State(o): State<Origin>) -> StatusCode {
    o.version.fetch_add(1, Ordering::SeqCst);
    StatusCode::NO_CONTENT
}

async fn slow(State(o): State<Origin>) -> impl IntoResponse {
    o.calls.fetch_add(1, Ordering::SeqCst);
    o.gate.notified().await;
    ([("cache-control", "public, max-age=60")], "slow")
}

fn breaker() -> CircuitBreaker {
    CircuitBreaker::builder()
        .name("cache-l2-test")
        .consecutive_failures(3)
        .wait_in_open(Duration::from_millis(200))
        .half_open_probes(1)
        .build()
        .unwrap()
}

struct Instance {
    app: Router,
    handle: CacheHandle,
    breaker: CircuitBreaker,
    events: broadcast::Receiver<TierEvent>,
}

fn instance(url: &str, prefix: &str, origin: &Origin, l1_cap: Duration) -> Instance {
    let breaker = breaker();
    let l2 = RedisTier::builder(url)
        .prefix(prefix)
        .timeout(Duration::from_millis(100))
        .breaker(breaker.clone())
        .lease_wait(200, Duration::from_millis(10))
        .heartbeat(Duration::from_millis(200))
        .build()
        .unwrap();
    let cache = CacheLayer::builder()
        .ttl_cap(l1_cap)
        .redis(l2)
        .build()
        .unwrap();
    let handle = cache.handle();
    let events = handle.tier_events().unwrap();
    let app = Router::new()
        .route("/items/{id}", get(item).post(update))
        .route("/slow", get(slow))
        .with_state(origin.clone())
        .layer(cache);
    Instance {
        app,
        handle,
        breaker,
        events,
    }
}

struct Resp {
    status: StatusCode,
    cache_status: String,
    body: String,
}

async fn fetch(app: &Router, path: &str) -> Resp {
    let req = Request::get(path)
        .header("host", "example.com")
        .body(Body::empty())
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let cache_status = resp
        .headers()
        .get("cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Resp {
        status,
        cache_status,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

/// Waits (bounded, on real time: Redis is a real process) for an event.
async fn wait_event(
    rx: &mut broadcast::Receiver<TierEvent>,
    want: impl Fn(&TierEvent) -> bool,
) -> TierEvent {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match rx.recv().await {
                Ok(e) if want(&e) => return e,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("event channel closed"),
            }
        }
    })
    .await
    .expect("event did not arrive within 10 s")
}

async fn subscribed(i: &mut Instance) {
    if !i.handle.tier_stats().subscribed {
        wait_event(&mut i.events, |e| *e == TierEvent::Subscribed).await;
    }
}

/// Polls a condition on real time (bounded): for effects of background tasks on Redis.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what} did not happen within 5 s");
}

fn exists(server: &RedisServer, key: &str) -> bool {
    server.cli(&["EXISTS", key]).unwrap().trim() == "1"
}

const KEY: &str = "http://example.com/items/1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_stored_by_one_instance_is_an_l2_hit_on_another() {
    let server = RedisServer::start().unwrap();
    let origin = Origin::default();
    let a = instance(&server.url(), "t1", &origin, Duration::from_secs(60));
    let b = instance(&server.url(), "t1", &origin, Duration::from_secs(60));

    let first = fetch(&a.app, "/items/1").await;
    assert_eq!(first.body, "item 1 v0");
    assert!(
        first.cache_status.contains("fwd=uri-miss"),
        "{}",
        first.cache_status
    );
    eventually("the L2 write", || exists(&server, &format!("t1:e:{KEY}"))).await;
    let ttl: i64 = server
        .cli(&["PTTL", &format!("t1:e:{KEY}")])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        ttl > 50_000 && ttl <= 60_000,
        "TTL follows freshness: {ttl}"
    );

    let second = fetch(&b.app, "/items/1").await;
    assert_eq!(second.body, "item 1 v0");
    assert!(
        second.cache_status.contains("; hit"),
        "{}",
        second.cache_status
    );
    assert_eq!(origin.calls.load(Ordering::SeqCst), 1, "B answered from L2");
    assert_eq!(b.handle.tier_stats().l2_hits, 1);
    // Promoted into B's L1: the next request does not reach Redis.
    let third = fetch(&b.app, "/items/1").await;
    assert!(third.cache_status.contains("; hit"));
    assert_eq!(b.handle.tier_stats().l2_hits, 1);
    assert_eq!(b.handle.entry_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_purge_on_one_instance_reaches_the_others() {
    let server = RedisServer::start().unwrap();
    let origin = Origin::default();
    let mut a = instance(&server.url(), "t2", &origin, Duration::from_secs(60));
    let mut b = instance(&server.url(), "t2", &origin, Duration::from_secs(60));
    subscribed(&mut a).await;
    subscribed(&mut b).await;

    assert_eq!(fetch(&a.app, "/items/1").await.body, "item 1 v0");
    eventually("the L2 write", || exists(&server, &format!("t2:e:{KEY}"))).await;
    assert_eq!(fetch(&b.app, "/items/1").await.body, "item 1 v0");
    assert_eq!(origin.calls.load(Ordering::SeqCst), 1);
    assert_eq!(b.handle.entry_count(), 1, "B holds it in L1");

    origin.version.store(1, Ordering::SeqCst);
    a.handle.purge(Purge::tag("item:1")).await;
    let event = wait_event(&mut b.events, |e| matches!(e, TierEvent::RemotePurge(_))).await;
    let TierEvent::RemotePurge(p) = event else {
        unreachable!()
    };
    assert_eq!(p.tag_name(), Some("item:1"));

    // B's L1 lost it, and the copy in Redis is older than the tag's generation.
    let after = fetch(&b.app, "/items/1").await;
    assert_eq!(after.body, "item 1 v1");
    assert_eq!(origin.calls.load(Ordering::SeqCst), 2);
    let a_after = fetch(&a.app, "/items/1").await;
    assert_eq!(a_after.body, "item 1 v1", "A purged its own L1 at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generations_catch_an_instance_that_missed_the_message() {
    let server = RedisServer::start().unwrap();
    let origin = Origin::default();
    let a = instance(&server.url(), "t3", &origin, Duration::from_secs(60));
    // B has a tiny L1 cap: whatever it holds expires before the next request.
    let b = instance(&server.url(), "t3", &origin, Duration::from_millis(1));

    fetch(&a.app, "/items/1").await;
    eventually("the L2 write", || exists(&server, &format!("t3:e:{KEY}"))).await;
    // The purge bumps the generations without A or B publishing: as if B missed it.
    server
        .cli(&[
            "EVAL",
            "local n = redis.call('INCR', KEYS[1]); redis.call('SET', KEYS[2], n); return n",
            "2",
            "{t3:gen}:seq",
            "{t3:gen}:h:items",
        ])
        .unwrap();
    origin.version.store(7, Ordering::SeqCst);
    let r = fetch(&b.app, "/items/1").await;
    assert_eq!(
        r.body, "item 1 v7",
        "an entry older than its tag's generation is a miss"
    );
    assert_eq!(b.handle.tier_stats().l2_hits, 0);
    eventually("the stale entry replaced", || {
        server
            .cli(&["GET", &format!("t3:e:{KEY}")])
            .unwrap()
            .contains("v7")
    })
    .await;
}

/// A purge made while this instance's Redis calls were refused (its breaker open) reaches Redis
/// as soon as calls go through again, although the invalidation subscription never dropped; until
/// then this instance does not trust the shared tier, and no instance serves the purged entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_redis_refused_is_applied_once_calls_go_through_again() {
    let server = RedisServer::start().unwrap();
    let origin = Origin::default();
    // Tiny L1 caps: every read after the first asks Redis.
    let mut a = instance(&server.url(), "t12", &origin, Duration::from_millis(1));
    let mut b = instance(&server.url(), "t12", &origin, Duration::from_millis(1));
    subscribed(&mut a).await;
    subscribed(&mut b).await;
    assert_eq!(fetch(&a.app, "/items/1").await.body, "item 1 v0");
    eventually("the L2 write", || exists(&server, &format!("t12:e:{KEY}"))).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(fetch(&b.app, "/items/1").await.body, "item 1 v0");
    assert_eq!(b.handle.tier_stats().l2_hits, 1);

    // A's calls are refused while the item changes: its purge cannot reach Redis.
    a.breaker.force_open();
    origin.version.store(1, Ordering::SeqCst);
    a.handle.purge(Purge::tag("item:1")).await;
    a.breaker.reset();
    assert!(a.handle.tier_stats().subscribed, "the subscription held");

    // A does not trust the shared tier while its purge is pending...
    assert_eq!(fetch(&a.app, "/items/1").await.body, "item 1 v1");
    // ...and the purge reaches Redis without waiting for a new subscription: B never
    // serves the old entry once it has.
    eventually("the generation bump in Redis", || {
        server
            .cli(&["EXISTS", "{t12:gen}:h:item:1"])
            .unwrap()
            .trim()
            == "1"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(fetch(&b.app, "/items/1").await.body, "item 1 v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_entry_is_a_miss_and_is_replaced() {
    let server = RedisServer::start().unwrap();
    let origin = Origin::default();
    let a = instance(&server.url(), "t4", &origin, Duration::from_secs(60));
    server
        .cli(&["SET", &format!("t4:e:{KEY}"), "TCE\u{1}garbage"])
        .unwrap();
    let r = fetch(&a.app, "/items/1").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, "item 1 v0");
    assert_eq!(a.handle.tier_stats().corrupt, 1);
    eventually("the corrupt entry replaced", || {
        server
            .cli(&["GET", &format!("t4:e:{KEY}")])
            .unwrap()
            .contains("item 1 v0")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_on_two_instances_reach_the_origin_once() {
    let server = RedisServer::start().unwrap();
    let origin = Origin::default();
    let a = instance(&server.url(), "t5", &origin, Duration::from_secs(60));
    let b = instance(&server.url(), "t5", &origin, Duration::from_secs(60));

    let app_a = a.app.clone();
    let leader = tokio::spawn(async move { fetch(&app_a, "/slow").await });
    eventually("the leader at the origin", || {
        origin.calls.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(a.handle.tier_stats().leases_taken, 1);
    let app_b = b.app.clone();
    let follower = tokio::spawn(async move { fetch(&app_b, "/slow").await });
    eventually("the follower waiting", || {
        b.handle.tier_stats().leases_waited == 1
    })
    .await;
    origin.gate.notify_one();
    let (l, f) = (leader.await.unwrap(), follower.await.unwrap());
    assert_eq!((l.body.as_str(), f.body.as_str()), ("slow", "slow"));
    assert_eq!(origin.calls.load(Ordering::SeqCst), 1, "one origin call");
    assert_eq!(b.handle.tier_stats().lease_fills, 1);
    assert!(f.cache_status.contains("; hit"), "{}", f.cache_status);
    eventually("the lease released", || {
        !exists(&server, "t5:l:http://example.com/slow")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_leaders_lease_expires() {
    let server = RedisServer::start().unwrap();
    let origin = Origin::default();
    let a = instance(&server.url(), "t6", &origin, Duration::from_secs(60));
    // A lease nobody will release, with a short life.
    server
        .cli(&[
            "SET",
            "t6:l:http://example.com/items/1",
            "gone",
            "PX",
            "150",
        ])
        .unwrap();
    let r = fetch(&a.app, "/items/1").await;
    assert_eq!(r.body, "item 1 v0", "after waiting, the origin answers");
    let s = a.handle.tier_stats();
    assert_eq!((s.leases_waited, s.lease_fills), (1, 0));
    assert_eq!(origin.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_paused_and_restarted_under_traffic() {
    let mut server = RedisServer::start().unwrap();
    let origin = Origin::default();
    let mut a = instance(&server.url(), "t7", &origin, Duration::from_millis(1));
    subscribed(&mut a).await;
    fetch(&a.app, "/items/1").await;
    eventually("the L2 write", || exists(&server, &format!("t7:e:{KEY}"))).await;
    assert_eq!(fetch(&a.app, "/items/1").await.body, "item 1 v0");
    assert_eq!(a.handle.tier_stats().l2_hits, 1);

    // Killed: every request is still answered (by the origin); the breaker opens.
    server.stop().unwrap();
    for i in 10..20 {
        let r = fetch(&a.app, &format!("/items/{i}")).await;
        assert_eq!((r.status, r.body), (StatusCode::OK, format!("item {i} v0")));
    }
    assert_eq!(a.breaker.state(), BreakerState::Open);
    let s = a.handle.tier_stats();
    assert!(s.l2_errors >= 3 && s.l2_rejected >= 1, "{s:?}");

    // Restarted (empty): the pool reconnects, writes and hits resume.
    server.restart().unwrap();
    let before = a.handle.tier_stats().l2_hits;
    for _ in 0..500 {
        fetch(&a.app, "/items/1").await;
        if a.handle.tier_stats().l2_hits > before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(a.handle.tier_stats().l2_hits > before, "L2 hits resumed");
    assert_eq!(a.breaker.state(), BreakerState::Closed);
    // The subscription came back too, and flushed L1 for what it may have missed.
    wait_event(&mut a.events, |e| *e == TierEvent::Flushed).await;

    // Paused: calls time out, the breaker opens, requests keep being answered.
    server.pause().unwrap();
    let calls = origin.calls.load(Ordering::SeqCst);
    let before = a.handle.tier_stats();
    for i in 20..30 {
        let r = fetch(&a.app, &format!("/items/{i}")).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    assert_eq!(a.breaker.state(), BreakerState::Open);
    let s = a.handle.tier_stats();
    // A handful of calls paid the timeout; the rest were not even tried.
    assert!(s.l2_errors - before.l2_errors <= 5, "{s:?}");
    assert!(s.l2_rejected - before.l2_rejected >= 6, "{s:?}");
    assert_eq!(origin.calls.load(Ordering::SeqCst), calls + 10);
    server.resume().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_or_reset_connection_is_replaced_and_l1_flushed() {
    let server = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(server.addr()).await.unwrap();
    let origin = Origin::default();
    let url = format!("redis://{}", proxy.addr());
    let mut a = instance(&url, "t8", &origin, Duration::from_secs(60));
    subscribed(&mut a).await;
    fetch(&a.app, "/items/1").await;
    assert_eq!(a.handle.entry_count(), 1);

    // Reset: the subscription drops; on reconnect the L1 is flushed.
    proxy.reset_connections();
    wait_event(&mut a.events, |e| *e == TierEvent::Flushed).await;
    a.handle.run_pending_tasks();
    assert_eq!(a.handle.entry_count(), 0);

    // Blackhole: calls time out and the breaker opens; requests are still answered.
    fetch(&a.app, "/items/2").await;
    proxy.blackhole();
    for i in 3..10 {
        let r = fetch(&a.app, &format!("/items/{i}")).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    assert_eq!(a.breaker.state(), BreakerState::Open);
    proxy.heal();
    // The heartbeat notices the dead subscription; after healing it comes back and flushes.
    wait_event(&mut a.events, |e| *e == TierEvent::Flushed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsafe_request_through_one_instance_invalidates_everywhere() {
    let server = RedisServer::start().unwrap();
    let origin = Origin::default();
    let mut a = instance(&server.url(), "t9", &origin, Duration::from_secs(60));
    let mut b = instance(&server.url(), "t9", &origin, Duration::from_secs(60));
    subscribed(&mut a).await;
    subscribed(&mut b).await;
    fetch(&a.app, "/items/1").await;
    eventually("the L2 write", || exists(&server, &format!("t9:e:{KEY}"))).await;
    assert_eq!(fetch(&b.app, "/items/1").await.body, "item 1 v0");

    let req = Request::post("/items/1")
        .header("host", "example.com")
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        a.app.clone().oneshot(req).await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
    wait_event(&mut b.events, |e| matches!(e, TierEvent::RemotePurge(_))).await;
    assert!(!exists(&server, &format!("t9:e:{KEY}")), "gone from Redis");
    assert_eq!(fetch(&b.app, "/items/1").await.body, "item 1 v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_purge_empties_redis_and_every_l1() {
    let server = RedisServer::start().unwrap();
    let origin = Origin::default();
    let mut a = instance(&server.url(), "t10", &origin, Duration::from_secs(60));
    let mut b = instance(&server.url(), "t10", &origin, Duration::from_secs(60));
    subscribed(&mut a).await;
    subscribed(&mut b).await;
    for id in 1..=3 {
        fetch(&a.app, &format!("/items/{id}")).await;
    }
    eventually("the L2 writes", || {
        (1..=3).all(|id| exists(&server, &format!("t10:e:http://example.com/items/{id}")))
    })
    .await;
    for id in 1..=3 {
        fetch(&b.app, &format!("/items/{id}")).await;
    }
    assert_eq!(b.handle.entry_count(), 3);
    // Glob characters in the prefix are matched literally.
    a.handle
        .purge(Purge::prefix("http://example.com/it*"))
        .await;
    assert!(exists(&server, &format!("t10:e:{KEY}")), "no literal match");
    a.handle
        .purge(Purge::prefix("http://example.com/items/"))
        .await;
    // B empties its L1 through the purge message, or, if a loaded machine cost it its subscription meanwhile,
    // through the flush that follows a reconnect; either way it must end empty. Its entry count settles once the
    // store's maintenance has run, so poll rather than judge at the moment the event arrives.
    eventually("B's L1 emptied by A's prefix purge", || {
        b.handle.run_pending_tasks();
        b.handle.entry_count() == 0
    })
    .await;
    for id in 1..=3 {
        assert!(!exists(
            &server,
            &format!("t10:e:http://example.com/items/{id}")
        ));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_client_went_away_releases_its_lease() {
    let server = RedisServer::start().unwrap();
    let origin = Origin::default();
    let l2 = RedisTier::builder(server.url())
        .prefix("t11")
        .timeout(Duration::from_millis(100))
        .lease_ttl(Duration::from_secs(60))
        .lease_wait(200, Duration::from_millis(10))
        .build()
        .unwrap();
    let cache = CacheLayer::builder().redis(l2).build().unwrap();
    let handle = cache.handle();
    let app = Router::new()
        .route("/slow", get(slow))
        .with_state(origin.clone())
        .layer(cache);
    let lease = "t11:l:http://example.com/slow";

    let app_a = app.clone();
    let leader = tokio::spawn(async move { fetch(&app_a, "/slow").await });
    eventually("the leader at the origin", || {
        origin.calls.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(handle.tier_stats().leases_taken, 1);
    assert!(exists(&server, lease));
    // The client disconnects: the response future is dropped mid-miss.
    leader.abort();
    let _ = leader.await;
    eventually("the lease released", || !exists(&server, lease)).await;

    // The next miss leads again instead of waiting out a lease nobody holds.
    let app_b = app.clone();
    let next = tokio::spawn(async move { fetch(&app_b, "/slow").await });
    eventually("the second leader at the origin", || {
        origin.calls.load(Ordering::SeqCst) == 2
    })
    .await;
    let s = handle.tier_stats();
    assert_eq!((s.leases_taken, s.leases_waited), (2, 0), "{s:?}");
    origin.gate.notify_one();
    assert_eq!(next.await.unwrap().body, "slow");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_killed_again_and_again_is_retried_with_growing_pauses() {
    let server = RedisServer::start().unwrap();
    let origin = Origin::default();
    let a = instance(&server.url(), "t12", &origin, Duration::from_secs(60));
    let handle = a.handle.clone();
    let subscriptions = |n: u64| {
        let handle = handle.clone();
        move || handle.tier_stats().subscriptions >= n
    };
    eventually("the first subscription", subscriptions(1)).await;
    let started = std::time::Instant::now();
    for n in 2..=5 {
        server.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]).unwrap();
        eventually("a new subscription", subscriptions(n)).await;
    }
    // Pauses of 50, 100, 200 and 400 ms: a server that keeps killing subscribers is not
    // reconnected to (and L1 not flushed) in a tight loop.
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(600), "{elapsed:?}");
    assert!(a.handle.tier_stats().flushes <= 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collapsed_misses_go_through_the_shared_tier_once() {
    let server = RedisServer::start().unwrap();
    let origin = Origin::default();
    let l2 = RedisTier::builder(server.url())
        .prefix("tc13")
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let cache = CacheLayer::builder()
        .redis(l2)
        .collapse_misses(Some(Duration::from_secs(5)))
        .build()
        .unwrap();
    let handle = cache.handle();
    let app = Router::new()
        .route("/slow", get(slow))
        .with_state(origin.clone())
        .layer(cache);
    // The leader reaches the origin after its L2 miss and waits at the gate; everyone else
    // collapses onto it (and would wait forever on its own fill if the leader waited on it).
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { fetch(&app, "/slow").await })
        })
        .collect();
    eventually("the leader at the origin", || {
        origin.calls.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(handle.collapsed_in_flight(), 1);
    // Opens the gate until the leader has passed it (it may not be waiting yet).
    let gate = origin.gate.clone();
    let opener = tokio::spawn(async move {
        loop {
            gate.notify_waiters();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    for t in tasks {
        let r = tokio::time::timeout(Duration::from_secs(5), t)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "slow"));
    }
    opener.abort();
    assert_eq!(origin.calls.load(Ordering::SeqCst), 1);
    assert_eq!(handle.collapsed_in_flight(), 0);
    let stats = handle.tier_stats();
    assert!(
        stats.l2_misses <= 1,
        "one L2 lookup for the burst: {stats:?}"
    );
}
