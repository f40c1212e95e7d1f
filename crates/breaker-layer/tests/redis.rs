//! Cross-instance Open sharing through a real redis-server (test-support), with two "instances" in one process.
#![cfg(feature = "redis")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

use std::time::Duration;

use breaker_layer::redis::RedisOpenSync;
use breaker_layer::{BreakerState, CircuitBreaker, KeyedBreakers, StateTransition};
use futures_util::StreamExt;
use test_support::RedisServer;
use tokio::sync::broadcast;

const CHANNEL: &str = "test:breaker:open";

fn breaker(name: &str) -> CircuitBreaker {
    CircuitBreaker::builder()
        .name(name)
        .consecutive_failures(1)
        .wait_in_open(Duration::from_secs(30))
        .build()
        .unwrap()
}

fn sync(server: &RedisServer) -> RedisOpenSync {
    RedisOpenSync::builder(redis::Client::open(server.url()).unwrap())
        .channel(CHANNEL)
        .timeout(Duration::from_millis(500))
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
        .start()
}

/// Poll the real server until `n` clients subscribe to the channel (bounded).
async fn wait_for_subscribers(server: &RedisServer, n: usize) {
    for _ in 0..500 {
        let out = server
            .cli(&["PUBSUB", "NUMSUB", CHANNEL])
            .unwrap_or_default();
        if out
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse::<usize>().ok())
            == Some(n)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{n} subscribers never showed up");
}

async fn next_transition(rx: &mut broadcast::Receiver<StateTransition>) -> StateTransition {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("no transition within 5 s")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_on_one_instance_opens_the_others_without_echo() {
    let server = RedisServer::start().unwrap();
    let (sync_a, sync_b) = (sync(&server), sync(&server));
    let (a, b) = (breaker("payments"), breaker("payments"));
    let (marker_b, other_b) = (breaker("marker"), breaker("unrelated"));
    sync_a.attach(&a);
    sync_b.attach(&b);
    sync_b.attach(&marker_b);
    sync_b.attach(&other_b);
    let client = redis::Client::open(server.url()).unwrap();
    let mut raw = client.get_async_pubsub().await.unwrap();
    raw.subscribe(CHANNEL).await.unwrap();
    wait_for_subscribers(&server, 3).await;

    let mut b_rx = b.subscribe();
    a.try_acquire().unwrap().failure();
    assert_eq!(a.state(), BreakerState::Open);
    let t = next_transition(&mut b_rx).await;
    assert_eq!((t.from, t.to), (BreakerState::Closed, BreakerState::Open));
    let retry = b.try_acquire().unwrap_err().retry_after();
    assert!(
        retry > Duration::from_secs(25) && retry <= Duration::from_secs(30),
        "{retry:?}"
    );
    assert_eq!(
        other_b.state(),
        BreakerState::Closed,
        "only the breaker of the same name opens"
    );

    // B publishes in order; had it echoed the remote open, the echo would come before its marker.
    marker_b.try_acquire().unwrap().failure();
    let mut messages = raw.on_message();
    let mut seen = Vec::new();
    for _ in 0..2 {
        let msg = tokio::time::timeout(Duration::from_secs(5), messages.next())
            .await
            .unwrap()
            .unwrap();
        seen.push(msg.get_payload::<String>().unwrap());
    }
    assert!(
        seen[0].contains(sync_a.instance_id()) && seen[0].ends_with("-payments"),
        "{seen:?}"
    );
    assert!(
        seen[1].contains(sync_b.instance_id()) && seen[1].ends_with("-marker"),
        "{seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_opens_are_shared_by_key() {
    let server = RedisServer::start().unwrap();
    let (sync_a, sync_b) = (sync(&server), sync(&server));
    let registry = || {
        KeyedBreakers::builder(
            CircuitBreaker::builder()
                .name("tenants")
                .consecutive_failures(1),
        )
        .build()
        .unwrap()
    };
    let (a, b) = (registry(), registry());
    sync_a.attach_keyed(&a);
    sync_b.attach_keyed(&b);
    wait_for_subscribers(&server, 2).await;
    let mut b_rx = b.subscribe();
    a.get_or_insert("tenant-7").try_acquire().unwrap().failure();
    let t = next_transition(&mut b_rx).await;
    assert_eq!(t.key.as_deref(), Some("tenant-7"));
    assert_eq!(b.get("tenant-7").unwrap().state(), BreakerState::Open);
    assert!(b.get("tenant-8").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_redis_never_blocks_calls_and_sharing_resumes_after_restart() {
    let mut server = RedisServer::start().unwrap();
    let (sync_a, sync_b) = (sync(&server), sync(&server));
    let (a, b) = (breaker("db"), breaker("db"));
    sync_a.attach(&a);
    sync_b.attach(&b);
    wait_for_subscribers(&server, 2).await;

    server.stop().unwrap();
    // Calls go on at full speed while Redis is gone, opens included.
    let started = std::time::Instant::now();
    for _ in 0..1000 {
        b.try_acquire().unwrap().success();
    }
    a.try_acquire().unwrap().failure();
    assert_eq!(a.state(), BreakerState::Open);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "calls were held up: {:?}",
        started.elapsed()
    );
    a.reset();

    server.restart().unwrap();
    wait_for_subscribers(&server, 2).await;
    let mut b_rx = b.subscribe();
    a.try_acquire().unwrap().failure();
    let t = next_transition(&mut b_rx).await;
    assert_eq!(t.to, BreakerState::Open);
}
