//! `Idempotency-Key` on posts: a retry replays the first answer and is stored once, a reused
//! key with another body is refused, the required mode refuses posts without a key, and with
//! two instances on one database and one real Redis a retry on the other instance replays.
//! Posts on either instance answer quickly and are read on both.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use chat_service::{ChatService, Config, Database};
use common::{get, page_ids, post_message, send_to};
use http::StatusCode;
use test_support::RedisServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_replays_and_is_stored_once() {
    let service = ChatService::open(&Config::temporary()).await.unwrap();
    let app = service.app();

    let first = send_to(&app, post_message("lobby", "hello", Some("key-1"))).await;
    assert_eq!(first.status, StatusCode::CREATED, "{:?}", first.body);
    assert!(first.headers.get("idempotent-replayed").is_none());
    let retry = send_to(&app, post_message("lobby", "hello", Some("key-1"))).await;
    assert_eq!(retry.status, StatusCode::CREATED);
    assert_eq!(retry.header("idempotent-replayed"), "true");
    assert_eq!(retry.json(), first.json());

    let other_body = send_to(&app, post_message("lobby", "other", Some("key-1"))).await;
    other_body.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);

    // Without a key each post is its own.
    for _ in 0..2 {
        let reply = send_to(&app, post_message("lobby", "no key", None)).await;
        assert_eq!(reply.status, StatusCode::CREATED);
    }
    let page = send_to(&app, get("/rooms/lobby/messages")).await;
    assert_eq!(page_ids(&page.json()).len(), 3, "{}", page.json());

    let bad_key = send_to(&app, {
        let mut request = post_message("lobby", "x", None);
        request
            .headers_mut()
            .insert("idempotency-key", "not-quoted".parse().unwrap());
        request
    })
    .await;
    bad_key.assert_problem(StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_required_mode_refuses_posts_without_a_key() {
    let config = Config {
        require_idempotency_key: true,
        ..Config::temporary()
    };
    let service = ChatService::open(&config).await.unwrap();
    let app = service.app();
    let reply = send_to(&app, post_message("lobby", "hello", None)).await;
    reply.assert_problem(StatusCode::BAD_REQUEST);
    let reply = send_to(&app, post_message("lobby", "hello", Some("k"))).await;
    assert_eq!(reply.status, StatusCode::CREATED);
    // Reads are not affected.
    assert_eq!(
        send_to(&app, get("/rooms/lobby/messages")).await.status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_keys_and_see_each_others_posts() {
    let redis = RedisServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = common::shared_config(dir.path(), redis.url());
    let a = ChatService::open(&config).await.unwrap();
    let b = ChatService::open(&config).await.unwrap();
    let (app_a, app_b) = (a.app(), b.app());

    let first = send_to(&app_a, post_message("lobby", "once", Some("shared-1"))).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let retry = send_to(&app_b, post_message("lobby", "once", Some("shared-1"))).await;
    assert_eq!(retry.status, StatusCode::CREATED, "{:?}", retry.body);
    assert_eq!(retry.header("idempotent-replayed"), "true");
    assert_eq!(retry.json()["id"], first.json()["id"]);
    let mismatch = send_to(&app_b, post_message("lobby", "twice", Some("shared-1"))).await;
    mismatch.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);

    // Posts alternate between the instances, so each one's projector sometimes projects the
    // other's message: every post still answers well within the projection wait, and reads on
    // both instances see it within the freshness bound.
    let mut ids = vec![first.json()["id"].as_i64().unwrap()];
    for n in 0..12 {
        let (poster, other) = if n % 2 == 0 {
            (&app_a, &app_b)
        } else {
            (&app_b, &app_a)
        };
        let started = Instant::now();
        let reply = send_to(poster, post_message("lobby", &format!("m{n}"), None)).await;
        assert_eq!(reply.status, StatusCode::CREATED);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "post {n} took {:?}",
            started.elapsed()
        );
        let id = reply.json()["id"].as_i64().unwrap();
        ids.push(id);
        for app in [poster, other] {
            let deadline = Instant::now() + Duration::from_secs(1);
            loop {
                let page = send_to(app, get("/rooms/lobby/messages")).await;
                if page_ids(&page.json()).contains(&id) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "message {id} not served within 1 s"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    // Both at once: one projector often projects both messages, and the other instance's post
    // must not wait for a notice of its own.
    for n in 0..10 {
        let started = Instant::now();
        let (from_a, from_b) = tokio::join!(
            send_to(&app_a, post_message("lobby", &format!("a{n}"), None)),
            send_to(&app_b, post_message("lobby", &format!("b{n}"), None)),
        );
        assert_eq!(
            (from_a.status, from_b.status),
            (StatusCode::CREATED, StatusCode::CREATED)
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "round {n} took {:?}",
            started.elapsed()
        );
        ids.push(from_a.json()["id"].as_i64().unwrap());
        ids.push(from_b.json()["id"].as_i64().unwrap());
    }

    let page = send_to(&app_b, get("/rooms/lobby/messages")).await;
    let mut served = page_ids(&page.json());
    served.sort_unstable();
    ids.sort_unstable();
    assert_eq!(served, ids, "every post stored once");
}

/// Redis killed and restarted empty forgets every idempotency record: a retry of an acknowledged
/// post then runs the handler again, which finds the key stored with its message in SQLite and
/// answers with that message instead of storing it twice. Keys stay scoped per client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_that_redis_forgot_is_still_stored_once() {
    let mut redis = RedisServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = common::shared_config(dir.path(), redis.url());
    let a = ChatService::open(&config).await.unwrap();
    let b = ChatService::open(&config).await.unwrap();
    let (app_a, app_b) = (a.app(), b.app());
    let as_user = |mut request: http::Request<axum::body::Body>, user: &str| {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {user}").parse().unwrap());
        request
    };

    let first = send_to(
        &app_a,
        as_user(post_message("lobby", "once", Some("k-1")), "alice"),
    )
    .await;
    assert_eq!(first.status, StatusCode::CREATED, "{:?}", first.body);

    let _redis = tokio::task::spawn_blocking(move || {
        redis.restart().unwrap();
        redis
    })
    .await
    .unwrap();
    // The breakers of both instances let calls through again within their waits.
    let deadline = Instant::now() + Duration::from_secs(10);
    let retry = loop {
        let retry = send_to(
            &app_b,
            as_user(post_message("lobby", "once", Some("k-1")), "alice"),
        )
        .await;
        if retry.status != StatusCode::SERVICE_UNAVAILABLE || Instant::now() > deadline {
            break retry;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(retry.status, StatusCode::CREATED, "{:?}", retry.body);
    assert_eq!(
        retry.json(),
        first.json(),
        "the first answer, not a new message"
    );
    assert_eq!(retry.header("idempotent-replayed"), "true");
    // And from then on the record is in Redis again: a second retry replays it on A.
    let again = send_to(
        &app_a,
        as_user(post_message("lobby", "once", Some("k-1")), "alice"),
    )
    .await;
    assert_eq!(again.json()["id"], first.json()["id"]);

    // The same key with another body is refused, also once Redis has forgotten it.
    let other = send_to(
        &app_b,
        as_user(post_message("lobby", "other", Some("k-1")), "alice"),
    )
    .await;
    other.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    // Another client's use of the same key is a post of its own.
    let bob = send_to(
        &app_b,
        as_user(post_message("lobby", "once", Some("k-1")), "bob"),
    )
    .await;
    assert_eq!(bob.status, StatusCode::CREATED);
    assert_ne!(bob.json()["id"], first.json()["id"]);

    let page = send_to(&app_a, get("/rooms/lobby/messages")).await;
    assert_eq!(page_ids(&page.json()).len(), 2, "{}", page.json());
}

/// Two services on one database file, posting with one key at the same time: one message is
/// stored, every other call gets it back; the key with another text is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_once_stores_one_message_per_key_across_processes() {
    use chat_service::{Error, NewMessage, Posted, RoomName};

    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        database: Database::File(dir.path().join("chat.db")),
        ..Config::default()
    };
    let a = ChatService::open(&config).await.unwrap();
    let b = ChatService::open(&config).await.unwrap();
    let room = RoomName::parse("lobby").unwrap();
    let message = |text: &str| NewMessage {
        author: "ada".into(),
        text: text.into(),
    };
    let calls = (0..20).map(|n| {
        let service = if n % 2 == 0 { a.clone() } else { b.clone() };
        let (room, message) = (room.clone(), message("hello"));
        tokio::spawn(async move { service.post_once(&room, message, "scope:k").await })
    });
    let posted: Vec<Posted> = futures_util::future::join_all(calls)
        .await
        .into_iter()
        .map(|r| r.unwrap().unwrap())
        .collect();
    let new: Vec<&Posted> = posted
        .iter()
        .filter(|p| matches!(p, Posted::New(_)))
        .collect();
    assert_eq!(new.len(), 1, "{posted:?}");
    let id = new[0].message().id;
    assert!(posted.iter().all(|p| p.message().id == id));
    let reused = a.post_once(&room, message("other"), "scope:k").await;
    assert!(matches!(reused, Err(Error::KeyReused)), "{reused:?}");
    let other_key = b.post_once(&room, message("hello"), "scope:k2").await;
    assert!(matches!(other_key, Ok(Posted::New(m)) if m.id != id));
}
