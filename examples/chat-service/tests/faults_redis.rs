//! Redis faults under load, through the whole stack: two chat services over one SQLite file
//! share one real `redis-server` (behind a `FaultProxy`), served over TCP, while workers read
//! pages, single messages and the room list and post with and without `Idempotency-Key`.
//!
//! Redis is killed and restarted empty, frozen with SIGSTOP past every timeout, slowed by 1 s
//! per exchange, and its connections are reset. Each test asserts the service's promises:
//!
//! - no read and no unkeyed post fails, and none waits past [`READ_BOUND`] / [`POST_BOUND`]
//!   (derived from the configured Redis timeouts);
//! - keyed posts follow the documented policy: `201`, or `503` + `Retry-After` while the
//!   idempotency store is unreachable, and the retry with the same key is stored once;
//! - every `201` is stored exactly once, nothing unacknowledged is stored;
//! - once Redis is back, a purge made while it was away is honoured on both instances;
//! - afterwards nothing is left: coalescing maps, collapsed misses, refreshes, connections,
//!   tasks, fill leases and idempotency locks in Redis.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod faults_support;

use std::time::{Duration, Instant};

use faults_support::{
    Kind, Load, Pair, ROOMS, Record, alive_tasks, all_texts, assert_nothing_left,
    assert_stored_once, client, drain_keyed, eventually, get, post, send, warm_up,
};
use http::StatusCode;
use test_support::{FaultProxy, RedisServer};

/// Longest a read may take. The cache's Redis calls are bounded by 50 ms each and a miss makes
/// at most a lookup, a lease and 20 lease polls 10 ms apart (about 0.3 s in all) before it asks
/// the database; the rest is room for a shared 2-core CI machine.
const READ_BOUND: Duration = Duration::from_millis(1500);
/// Longest a post may take: the idempotency store's 500 ms per call (begin and complete), the
/// cache purge's 50 ms calls, and the same room for the machine.
const POST_BOUND: Duration = Duration::from_millis(2500);
/// Concurrent clients of the load.
const WORKERS: usize = 8;

struct Setup {
    redis: RedisServer,
    proxy: FaultProxy,
    pair: Pair,
    bases: Vec<String>,
    /// Tasks alive and Redis connections open before the load.
    baseline: (usize, usize),
}

async fn setup() -> Setup {
    let redis = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(redis.addr()).await.unwrap();
    let pair = Pair::start(Some(format!("redis://{}", proxy.addr())), |_| {}).await;
    for instance in pair.instances() {
        let cache = instance.service.cache_handle();
        assert!(
            eventually(Duration::from_secs(5), || cache.tier_stats().subscribed).await,
            "invalidation subscription never came up"
        );
    }
    let bases = vec![pair.a.url(""), pair.b.url("")];
    warm_up(&pair, true).await;
    let baseline = (alive_tasks(), proxy.open_connections());
    Setup {
        redis,
        proxy,
        pair,
        bases,
        baseline,
    }
}

/// Runs the load for `before`, applies `fault`, keeps the load for `during`, applies `heal`,
/// keeps it for `after`, and returns what it saw.
async fn under_load<F, H>(
    setup: &mut Setup,
    before: Duration,
    fault: F,
    during: Duration,
    heal: H,
    after: Duration,
) -> Record
where
    F: FnOnce(&mut Setup),
    H: FnOnce(&mut Setup),
{
    let load = Load::start(setup.bases.clone(), WORKERS);
    tokio::time::sleep(before).await;
    fault(setup);
    tokio::time::sleep(during).await;
    heal(setup);
    tokio::time::sleep(after).await;
    load.stop().await
}

/// The checks every scenario ends with.
async fn assert_promises_kept(setup: &mut Setup, mut record: Record) {
    assert!(record.total() > 100, "the load barely ran: {record:?}");
    assert!(
        record.transport_errors.is_empty(),
        "transport errors: {:?}",
        &record.transport_errors[..record.transport_errors.len().min(5)]
    );
    assert_eq!(
        record.failures(),
        0,
        "failed requests {:?}; unexpected answers {:?}",
        record.outcomes,
        &record.unexpected[..record.unexpected.len().min(5)]
    );
    let slowest_read = record.slowest.get(&Kind::Read).copied().unwrap_or_default();
    assert!(slowest_read <= READ_BOUND, "a read took {slowest_read:?}");
    for kind in [Kind::Post, Kind::KeyedPost] {
        let slowest = record.slowest.get(&kind).copied().unwrap_or_default();
        assert!(slowest <= POST_BOUND, "a {kind:?} took {slowest:?}");
    }
    // The documented policy: a keyed post the store could not record answers 503 and may be
    // retried with the same key; once Redis answers, the retry is stored once.
    let left = drain_keyed(&mut record, &setup.bases, Duration::from_secs(10)).await;
    assert_eq!(
        left, 0,
        "keyed posts never accepted: {:?}",
        record.pending_keyed
    );
    wait_for_purges(setup).await;
    let texts = all_texts(&setup.bases[1], ROOMS).await;
    assert_stored_once(&record, &texts);
    // Read on A as well: both instances serve every stored message.
    let texts_a = all_texts(&setup.bases[0], ROOMS).await;
    assert_eq!(texts_a.len(), texts.len(), "the instances disagree");
    assert_nothing_left(&setup.pair, setup.baseline, || {
        setup.proxy.open_connections()
    })
    .await;
    assert_redis_clean(&setup.redis).await;
    eprintln!(
        "load held: {} requests {:?}, slowest {:?}, keyed retried {}",
        record.total(),
        record.outcomes,
        record.slowest,
        record.retried_keyed
    );
}

/// Both instances are subscribed again, so purges reach both.
async fn wait_for_purges(setup: &Setup) {
    for instance in setup.pair.instances() {
        let cache = instance.service.cache_handle();
        assert!(
            eventually(Duration::from_secs(5), || cache.tier_stats().subscribed).await,
            "{} never resubscribed",
            instance.addr
        );
    }
    // Anything the instances cached before that is within the in-process cap of 100 ms.
    tokio::time::sleep(Duration::from_millis(150)).await;
}

/// No fill lease outlives its 2 s TTL (a lease whose answer timed out is left to expire), and
/// no idempotency lock is left: a record the store missed lands once Redis is back.
async fn assert_redis_clean(redis: &RedisServer) {
    let leases = || {
        redis
            .cli(&["--scan", "--pattern", "chat:l:*"])
            .unwrap_or_default()
    };
    let gone = eventually(Duration::from_millis(2500), || leases().trim().is_empty()).await;
    assert!(gone, "fill leases left: {}", leases());
    let locks = redis
        .cli(&[
            "EVAL",
            "local found = {} for _, k in ipairs(redis.call('KEYS', ARGV[1])) do \
             if string.sub(redis.call('GET', k), 1, 1) == 'L' then \
             table.insert(found, k .. ' ttl ' .. redis.call('PTTL', k)) end end return found",
            "0",
            "chat:idem:*",
        ])
        .unwrap();
    assert!(locks.trim().is_empty(), "idempotency locks left: {locks}");
}

/// After Redis comes back, a page cached in Redis before a post made while Redis was away is
/// never served: reads on both instances show the post.
async fn assert_no_stale_read(setup: &Setup, text: &str) {
    let http = client();
    for base in &setup.bases {
        let page = send(&http, get(&format!("{base}/rooms/quiet/messages")))
            .await
            .unwrap();
        assert_eq!(page.status, StatusCode::OK);
        let texts: Vec<String> = page.json()["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["text"].as_str().unwrap().to_owned())
            .collect();
        assert!(
            texts.iter().any(|t| t == text),
            "{base} served a page without {text:?} after Redis came back ({:?}): {texts:?}",
            page.headers.get("cache-status")
        );
    }
}

/// Posts to the room `quiet`, which the load leaves alone, then reads it on both instances
/// until each has answered from a cache tier, so Redis holds the page a later post must
/// invalidate.
async fn cache_quiet_room(setup: &Setup) {
    let http = client();
    let first = send(
        &http,
        post(
            &format!("{}/rooms/quiet/messages", setup.bases[0]),
            "first",
            None,
        ),
    )
    .await
    .unwrap();
    assert_eq!(first.status, StatusCode::CREATED);
    for base in &setup.bases {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let page = send(&http, get(&format!("{base}/rooms/quiet/messages")))
                .await
                .unwrap();
            let status = page
                .headers
                .get("cache-status")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            if status.contains("hit") {
                break;
            }
            assert!(Instant::now() < deadline, "quiet never cached: {status}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_then_restarted_empty() {
    let mut setup = setup().await;
    let record = under_load(
        &mut setup,
        Duration::from_millis(500),
        |s| s.redis.stop().unwrap(),
        Duration::from_millis(1500),
        |s| s.redis.restart().unwrap(),
        Duration::from_millis(1500),
    )
    .await;
    assert!(
        setup.pair.a.service.cache_handle().tier_stats().flushes
            + setup.pair.b.service.cache_handle().tier_stats().flushes
            >= 1,
        "an instance that lost its subscription flushes"
    );
    assert_promises_kept(&mut setup, record).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_frozen_past_every_timeout_and_a_purge_made_meanwhile() {
    let mut setup = setup().await;
    cache_quiet_room(&setup).await;
    let load = Load::start(setup.bases.clone(), WORKERS);
    tokio::time::sleep(Duration::from_millis(300)).await;
    setup.redis.pause().unwrap();
    // Past every timeout: the cache's 50 ms calls, the idempotency store's 500 ms and 1 s.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A post while Redis is frozen: stored, purged here, the Redis purge queued.
    let http = client();
    let posted = send(
        &http,
        post(
            &format!("{}/rooms/quiet/messages", setup.bases[0]),
            "posted while frozen",
            None,
        ),
    )
    .await
    .unwrap();
    assert_eq!(posted.status, StatusCode::CREATED, "{:?}", posted.body);
    assert!(posted.took <= POST_BOUND, "{:?}", posted.took);
    drop(http);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    setup.redis.resume().unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let record = load.stop().await;
    wait_for_purges(&setup).await;
    assert_no_stale_read(&setup, "posted while frozen").await;
    assert_promises_kept(&mut setup, record).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_one_second_slower_then_connections_reset() {
    let mut setup = setup().await;
    let record = under_load(
        &mut setup,
        Duration::from_millis(300),
        |s| s.proxy.set_latency(Duration::from_secs(1)),
        Duration::from_millis(2000),
        |s| {
            s.proxy.heal();
            s.proxy.reset_connections();
        },
        Duration::from_millis(500),
    )
    .await;
    let mut record = record;
    // Resets while the load runs, without latency.
    let load = Load::start(setup.bases.clone(), WORKERS);
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        setup.proxy.reset_connections();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let more = load.stop().await;
    merge(&mut record, more);
    assert_promises_kept(&mut setup, record).await;
}

fn merge(into: &mut Record, from: Record) {
    for (k, v) in from.outcomes {
        *into.outcomes.entry(k).or_default() += v;
    }
    for (k, v) in from.slowest {
        let e = into.slowest.entry(k).or_default();
        *e = (*e).max(v);
    }
    into.transport_errors.extend(from.transport_errors);
    into.stored.extend(from.stored);
    into.pending_keyed.extend(from.pending_keyed);
    into.retried_keyed += from.retried_keyed;
    into.unexpected.extend(from.unexpected);
}
