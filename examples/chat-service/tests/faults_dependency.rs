//! Dependency and handler faults through the whole stack over TCP: the moderation service
//! slow, erroring, hanging (black-holed) and refusing connections while reads and posts run
//! on two instances; identical reads coalesced onto one query; a handler that panics under the
//! same layers. Each test ends by checking that nothing is left: coalescing maps, collapsed
//! misses, probe permits, connections and tasks.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod faults_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use breaker_layer::BreakerState;
use chat_service::ModerationBreaker;
use common::ModerationServer;
use faults_support::{
    Pair, alive_tasks, assert_nothing_left, client, established_to, eventually, get, post, send,
    warm_up,
};
use http::StatusCode;
use test_support::FaultProxy;

/// The moderation timeout of these tests: a post never waits much longer for the dependency.
const MODERATION_TIMEOUT: Duration = Duration::from_millis(300);
/// Longest a post may take while the dependency misbehaves: the timeout plus room for a busy
/// 2-core machine.
const POST_BOUND: Duration = Duration::from_millis(1500);

fn quick_breaker() -> ModerationBreaker {
    ModerationBreaker {
        window: 4,
        minimum_calls: 3,
        failure_rate_threshold: 50.0,
        wait_in_open: Duration::from_millis(400),
        half_open_probes: 1,
    }
}

/// Reads one page on every instance while `posts` posts are made, and returns the statuses of
/// the posts; every read must be `200` within [`POST_BOUND`].
async fn posts_and_reads(pair: &Pair, room: &str, posts: usize) -> Vec<(StatusCode, bool)> {
    let http = client();
    let mut answers = Vec::new();
    for n in 0..posts {
        let base = pair.instances()[n % 2].url("");
        let (posted, read) = tokio::join!(
            send(
                &http,
                post(
                    &format!("{base}/rooms/{room}/messages"),
                    &format!("{room}-{n}"),
                    None
                )
            ),
            send(&http, get(&format!("{base}/rooms/room-1/messages"))),
        );
        let (posted, read) = (posted.unwrap(), read.unwrap());
        assert_eq!(
            read.status,
            StatusCode::OK,
            "reads never depend on moderation"
        );
        assert!(read.took <= POST_BOUND, "read took {:?}", read.took);
        assert!(posted.took <= POST_BOUND, "post took {:?}", posted.took);
        if posted.status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(posted.json()["type"], "/problems/moderation-unavailable");
            let retry_after: u64 = posted.headers["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!(retry_after >= 1);
            assert_eq!(posted.headers["cache-control"], "no-store");
        }
        answers.push((posted.status, posted.headers.contains_key("retry-after")));
    }
    answers
}

/// Posts until one is accepted, on both instances, at most 10 s: the breakers recovered.
async fn until_accepted(pair: &Pair, room: &str) -> usize {
    let http = client();
    let mut accepted = 0;
    for instance in pair.instances() {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let reply = send(
                &http,
                post(
                    &instance.url(&format!("/rooms/{room}/messages")),
                    &format!("{room}-recovered-{}", instance.addr.port()),
                    None,
                ),
            )
            .await
            .unwrap();
            if reply.status == StatusCode::CREATED {
                accepted += 1;
                break;
            }
            assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
            assert!(
                Instant::now() < deadline,
                "{} never recovered",
                instance.addr
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            instance.service.moderation_breaker().unwrap().state(),
            BreakerState::Closed
        );
    }
    accepted
}

async fn stored_in(pair: &Pair, room: &str) -> usize {
    let page = send(
        &client(),
        get(&pair.a.url(&format!("/rooms/{room}/messages?limit=200"))),
    )
    .await
    .unwrap();
    page.json()["messages"].as_array().map_or(0, Vec::len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moderation_slow_erroring_hanging_and_refusing() {
    let moderation = ModerationServer::start().await;
    let upstream = moderation
        .url
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let proxy = FaultProxy::start(upstream).await.unwrap();
    let pair = Pair::start(None, |config| {
        config.moderation_url = Some(format!("http://{}", proxy.addr()));
        config.moderation_timeout = MODERATION_TIMEOUT;
        config.moderation_breaker = quick_breaker();
    })
    .await;
    warm_up(&pair, true).await;
    let baseline = (alive_tasks(), proxy.open_connections());

    type Fault = Box<dyn Fn(&ModerationServer, &FaultProxy)>;
    let faults: Vec<(&str, Fault)> = vec![
        (
            "slow",
            Box::new(|m, _| {
                m.service.set_faults(moderation::FaultsUpdate {
                    latency_ms: Some(5_000),
                    ..Default::default()
                });
            }),
        ),
        (
            "erroring",
            Box::new(|m, _| {
                m.service.set_faults(moderation::FaultsUpdate {
                    failure_rate: Some(1.0),
                    ..Default::default()
                });
            }),
        ),
        ("hanging", Box::new(|_, p| p.blackhole())),
        (
            "refusing",
            Box::new(|_, p| {
                // New connections are refused, and the pooled ones are gone.
                p.refuse();
                p.reset_connections();
            }),
        ),
    ];
    let mut accepted = 0;
    let mut attempted_rooms = Vec::new();
    for (name, fault) in faults {
        let room = format!("fault-{name}");
        fault(&moderation, &proxy);
        let checks_before = moderation.checks();
        let answers = posts_and_reads(&pair, &room, 12).await;
        assert!(
            answers
                .iter()
                .all(|(s, retry)| *s == StatusCode::SERVICE_UNAVAILABLE && *retry),
            "{name}: {answers:?}"
        );
        for instance in pair.instances() {
            assert_eq!(
                instance.service.moderation_breaker().unwrap().state(),
                BreakerState::Open,
                "{name}: the breaker opens"
            );
        }
        // Twelve posts, but the open breakers spared the dependency most of them.
        let checks = moderation.checks() - checks_before;
        assert!(
            checks < 12,
            "{name}: {checks} checks reached the dependency"
        );
        assert_eq!(stored_in(&pair, &room).await, 0, "{name}: nothing stored");

        // Healed: the breakers probe and close, and posts are stored again.
        moderation.service.set_faults(moderation::FaultsUpdate {
            latency_ms: Some(0),
            failure_rate: Some(0.0),
            down: Some(false),
        });
        proxy.heal();
        proxy.reset_connections();
        accepted += until_accepted(&pair, &room).await;
        attempted_rooms.push(room);
    }
    let mut stored = 0;
    for room in &attempted_rooms {
        stored += stored_in(&pair, room).await;
    }
    assert_eq!(stored, accepted, "exactly the accepted posts are stored");
    // Pooled connections to the dependency stay open, each with its client task and its proxy
    // task, as the Redis connections do in the Redis fault tests.
    assert_nothing_left(&pair, baseline, || proxy.open_connections()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalesced_readers_all_get_the_one_answer() {
    let pair = Pair::start(None, |config| {
        config.read_delay = Duration::from_millis(300);
    })
    .await;
    warm_up(&pair, false).await;
    let baseline = (alive_tasks(), 0);
    let (queries_before, _) = pair.a.service.query_counts();
    let http = client();
    let url = pair.a.url("/rooms/room-2/messages?limit=7");
    let answers = futures_util::future::join_all((0..24).map(|_| send(&http, get(&url)))).await;
    let answers: Vec<_> = answers.into_iter().map(Result::unwrap).collect();
    let first = &answers[0];
    assert_eq!(first.status, StatusCode::OK);
    for answer in &answers {
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.body, first.body, "every waiter gets the same body");
        assert_eq!(answer.headers["etag"], first.headers["etag"]);
    }
    let (queries_after, _) = pair.a.service.query_counts();
    assert_eq!(queries_after - queries_before, 1, "24 readers, one query");
    drop(http);
    assert_nothing_left(&pair, baseline, || 0).await;
}

/// A handler that panics, under the chat service's layers (cache, coalescing, idempotency on
/// the post) and served over TCP: coalesced readers all get `500`, a keyed post gets `500` and
/// its key is free for the retry, an unkeyed post loses its connection, and the server keeps
/// serving with nothing left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_under_the_stack() {
    use axum::routing::get as get_route;
    use dedup_layer::{DedupLayer, IdempotencyLayer, store::MemoryStore};

    let calls = Arc::new(AtomicUsize::new(0));
    let panics = {
        let calls = calls.clone();
        move || {
            let calls = calls.clone();
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(200)).await;
                if calls.load(Ordering::SeqCst) < 1_000 {
                    panic!("handler failure under test");
                }
                "unreachable"
            }
        }
    };
    let post_panics = {
        let calls = calls.clone();
        move || {
            let calls = calls.clone();
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                panic!("post failure under test");
                #[allow(unreachable_code)]
                ""
            }
        }
    };
    let dedup = DedupLayer::new();
    let cache = cache_layer::CacheLayer::builder()
        .cache_name("chat")
        .build()
        .unwrap();
    let app = axum::Router::new()
        .route("/boom", get_route(panics))
        .route(
            "/orders",
            axum::routing::post(post_panics.clone())
                .route_layer(IdempotencyLayer::new(MemoryStore::default())),
        )
        .route("/plain", axum::routing::post(post_panics))
        .route("/healthz", get_route(|| async { "ok" }))
        .layer(dedup.clone())
        .layer(cache.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(chat_service::serve(
        listener,
        app,
        std::future::pending::<()>(),
    ));
    let base = format!("http://{addr}");
    let warm_up = client();
    let health = send(&warm_up, get(&format!("{base}/healthz")))
        .await
        .unwrap();
    assert_eq!(health.status, StatusCode::OK);
    drop(warm_up);
    assert!(eventually(Duration::from_secs(3), || established_to(addr.port()) == 0).await);
    let baseline = alive_tasks();
    let http = client();

    let answers =
        futures_util::future::join_all((0..10).map(|_| send(&http, get(&format!("{base}/boom")))))
            .await;
    for answer in answers {
        let answer = answer.unwrap();
        assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(answer.headers["cache-control"], "no-store");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "ten readers, one call");

    let keyed = |n: &str| {
        http::Request::post(format!("{base}/orders"))
            .header("idempotency-key", format!("\"{n}\""))
            .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
            .unwrap()
    };
    let first = send(&http, keyed("k1")).await.unwrap();
    assert_eq!(first.status, StatusCode::INTERNAL_SERVER_ERROR);
    // The key is released right after the panic (in the background): a retry gets 409 with
    // Retry-After until then, and then runs (and fails) again.
    let deadline = Instant::now() + Duration::from_secs(2);
    let retry = loop {
        let retry = send(&http, keyed("k1")).await.unwrap();
        if retry.status != StatusCode::CONFLICT || Instant::now() > deadline {
            break retry;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(
        retry.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "the key was freed"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    // No layer catches an unkeyed post's panic: hyper drops that connection only.
    let plain = send(
        &http,
        http::Request::post(format!("{base}/plain"))
            .body(http_body_util::Full::default())
            .unwrap(),
    )
    .await;
    assert!(plain.is_err(), "{plain:?}");

    let health = send(&http, get(&format!("{base}/healthz"))).await.unwrap();
    assert_eq!(health.status, StatusCode::OK);
    drop(http);
    let handle = dedup.handle();
    let cache_handle = cache.handle();
    let settled = eventually(Duration::from_secs(3), || {
        handle.inflight() == 0
            && handle.waiters() == 0
            && cache_handle.collapsed_in_flight() == 0
            && established_to(addr.port()) == 0
            && alive_tasks() <= baseline
    })
    .await;
    assert!(
        settled,
        "left: inflight {} waiters {} collapsed {} connections {} tasks {} (baseline {baseline})",
        handle.inflight(),
        handle.waiters(),
        cache_handle.collapsed_in_flight(),
        established_to(addr.port()),
        alive_tasks()
    );
    server.abort();
}
