//! Cache poisoning and data leaks through the real service over TCP: two stacked instances
//! sharing one real Redis (in-process tier, Redis tier, coalescing, idempotency).
//!
//! - Unkeyed forwarding headers (`X-Forwarded-Host`, `X-Forwarded-Scheme`, ...) sent by an
//!   attacker never change what another client is served.
//! - The per-user `GET /me/unread` never serves one user's counts to another, neither from a
//!   cache tier nor by coalescing concurrent requests, and nothing of it is written to Redis.
//! - Answers to requests with `Authorization` or `Cookie` are shared only when the response is
//!   explicitly `public`; no answer carries `Set-Cookie`.
//! - The service exposes no purge or admin route: such requests, with or without a token, are
//!   refused and change nothing.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod faults_support;

use std::time::Duration;

use bytes::Bytes;
use faults_support::{Answer, HttpClient, Pair, client, eventually, send};
use http::{Request, StatusCode};
use http_body_util::Full;
use test_support::RedisServer;

async fn pair_with_redis() -> (RedisServer, Pair) {
    let redis = RedisServer::start().unwrap();
    let pair = Pair::start(Some(redis.url()), |_| {}).await;
    for instance in pair.instances() {
        let cache = instance.service.cache_handle();
        assert!(eventually(Duration::from_secs(5), || cache.tier_stats().subscribed).await);
    }
    (redis, pair)
}

fn request(method: &str, url: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut builder = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Full::default()).unwrap()
}

async fn fetch(http: &HttpClient, url: &str, headers: &[(&str, &str)]) -> Answer {
    send(http, request("GET", url, headers)).await.unwrap()
}

fn cache_status(answer: &Answer) -> String {
    answer
        .headers
        .get("cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

fn mentions(answer: &Answer, needle: &str) -> bool {
    String::from_utf8_lossy(&answer.body).contains(needle)
        || answer
            .headers
            .values()
            .any(|v| String::from_utf8_lossy(v.as_bytes()).contains(needle))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_cannot_poison_another_clients_answer() {
    let (_redis, pair) = pair_with_redis().await;
    let http = client();
    let attacks: &[(&str, &str)] = &[
        ("x-forwarded-host", "evil.example"),
        ("x-forwarded-scheme", "evil-scheme"),
        ("x-forwarded-proto", "evil-proto"),
        ("x-forwarded-port", "6666"),
        ("x-original-url", "/rooms/evil/messages"),
        ("x-rewrite-url", "/rooms/evil/messages"),
        ("x-http-method-override", "DELETE"),
        ("forwarded", "host=evil.example;proto=evil"),
    ];
    for path in [
        "/rooms/room-1/messages",
        "/rooms/room-2/messages/2",
        "/rooms",
    ] {
        // The attacker goes first on each instance, so any poisoned answer would be cached.
        for instance in pair.instances() {
            let poisoned = fetch(&http, &instance.url(path), attacks).await;
            assert_eq!(poisoned.status, StatusCode::OK);
            assert!(
                !mentions(&poisoned, "evil"),
                "{path}: reflected {poisoned:?}"
            );
        }
        for instance in pair.instances() {
            let clean = fetch(&http, &instance.url(path), &[]).await;
            assert_eq!(clean.status, StatusCode::OK);
            assert!(!mentions(&clean, "evil"), "{path}: {clean:?}");
            assert!(!mentions(&clean, "6666"), "{path}: {clean:?}");
        }
    }
    // A post's Location never takes the attacker's host either.
    let posted = send(&http, {
        let mut request =
            faults_support::post(&pair.a.url("/rooms/room-1/messages"), "hello", None);
        request
            .headers_mut()
            .insert("x-forwarded-host", "evil.example".parse().unwrap());
        request
    })
    .await
    .unwrap();
    assert_eq!(posted.status, StatusCode::CREATED);
    assert!(
        posted.headers["location"]
            .to_str()
            .unwrap()
            .starts_with("/rooms/")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_users_unread_counts_never_reach_another() {
    let (redis, pair) = pair_with_redis().await;
    let http = client();
    let alice = [("authorization", "Bearer alice")];
    let bob = [("authorization", "Bearer bob")];
    // Alice reads room-1 on instance A; Bob reads nothing.
    let marked = send(
        &http,
        request("POST", &pair.a.url("/me/read/room-1"), &alice),
    )
    .await
    .unwrap();
    assert_eq!(marked.status, StatusCode::NO_CONTENT);

    let unread = |answer: &Answer| {
        let body = answer.json();
        let room_1 = body["rooms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["room"] == "room-1")
            .map(|r| r["unread"].as_i64().unwrap());
        (body["user"].as_str().unwrap_or("").to_owned(), room_1)
    };
    for round in 0..3 {
        // Concurrent requests of both users, so coalescing would mix them if it could.
        let requests = (0..16).map(|n| {
            let (user, headers) = if n % 2 == 0 {
                ("alice", &alice[..])
            } else {
                ("bob", &bob[..])
            };
            let url = pair.a.url("/me/unread");
            let http = http.clone();
            async move { (user, fetch(&http, &url, headers).await) }
        });
        for (user, answer) in futures_util::future::join_all(requests).await {
            assert_eq!(answer.status, StatusCode::OK);
            assert_eq!(answer.headers["cache-control"], "private, no-store");
            assert!(
                !cache_status(&answer).contains("hit"),
                "round {round}: {user} got a cached answer: {}",
                cache_status(&answer)
            );
            let (named, room_1) = unread(&answer);
            assert_eq!(named, user, "round {round}: {user} got {named}'s counts");
            match user {
                "alice" => assert_eq!(room_1, Some(0)),
                _ => assert_eq!(room_1, Some(20)),
            }
        }
    }
    // Marks are per instance, and B has none for Alice: its answers are hers, never A's cached
    // copy of them.
    let on_b = fetch(&http, &pair.b.url("/me/unread"), &bob).await;
    assert_eq!(unread(&on_b), ("bob".to_owned(), Some(20)));
    // Without a user the route says so, and is not served anyone's counts.
    let anonymous = fetch(&http, &pair.a.url("/me/unread"), &[]).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    assert!(!mentions(&anonymous, "alice") && !mentions(&anonymous, "bob"));
    let cookie_only = fetch(
        &http,
        &pair.a.url("/me/unread"),
        &[("cookie", "user=alice")],
    )
    .await;
    assert_eq!(cookie_only.status, StatusCode::UNAUTHORIZED);

    // Nothing per-user is in the shared tier.
    let keys = redis.cli(&["--scan", "--pattern", "*me/unread*"]).unwrap();
    assert!(keys.trim().is_empty(), "per-user answers in Redis: {keys}");
    for instance in pair.instances() {
        instance.service.cache_handle().run_pending_tasks();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_share_only_public_answers_and_no_cookie_is_ever_set() {
    let (_redis, pair) = pair_with_redis().await;
    let http = client();
    let url = pair.a.url("/rooms/room-3/messages?limit=5");
    // The message pages are explicitly public, so an answer to a request with credentials
    // may be shared (RFC 9111 §3.5); the per-user route is private and never is.
    let with_auth = fetch(&http, &url, &[("authorization", "Bearer alice")]).await;
    let with_cookie = fetch(&http, &url, &[("cookie", "session=alice")]).await;
    let plain = fetch(&http, &url, &[]).await;
    for answer in [&with_auth, &with_cookie, &plain] {
        assert_eq!(answer.status, StatusCode::OK);
        assert!(
            answer.headers["cache-control"]
                .to_str()
                .unwrap()
                .contains("public")
        );
        assert_eq!(answer.body, plain.body, "public pages are the same for all");
        assert!(answer.headers.get("set-cookie").is_none());
    }
    for path in ["/rooms", "/healthz", "/stats", "/me/unread", "/nope"] {
        for instance in pair.instances() {
            let answer = fetch(
                &http,
                &instance.url(path),
                &[
                    ("cookie", "session=alice"),
                    ("authorization", "Bearer alice"),
                ],
            )
            .await;
            assert!(answer.headers.get("set-cookie").is_none(), "{path}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_and_admin_requests_are_refused_and_change_nothing() {
    let (_redis, pair) = pair_with_redis().await;
    let http = client();
    let page = pair.a.url("/rooms/room-1/messages");
    // Cache the page on A.
    let cached = async || {
        for _ in 0..50 {
            let answer = fetch(&http, &page, &[]).await;
            if cache_status(&answer).contains("hit") {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    };
    assert!(cached().await);
    // (method, URL, headers)
    type Attempt<'a> = (&'a str, String, Vec<(&'a str, &'a str)>);
    let attempts: Vec<Attempt<'_>> = vec![
        ("POST", pair.a.url("/admin/purge"), vec![]),
        (
            "POST",
            pair.a.url("/admin/purge"),
            vec![("authorization", "Bearer s3cret")],
        ),
        ("POST", pair.a.url("/purge"), vec![]),
        ("PURGE", page.clone(), vec![]),
        (
            "PURGE",
            page.clone(),
            vec![("authorization", "Bearer s3cret")],
        ),
        ("DELETE", page.clone(), vec![]),
        ("BAN", page.clone(), vec![]),
    ];
    for (method, url, headers) in &attempts {
        let answer = send(&http, request(method, url, headers)).await.unwrap();
        assert!(
            answer.status == StatusCode::NOT_FOUND
                || answer.status == StatusCode::METHOD_NOT_ALLOWED,
            "{method} {url}: {}",
            answer.status
        );
        assert_eq!(answer.headers["cache-control"], "no-store");
    }
    // The cached page is still there: nothing was purged.
    let after = fetch(&http, &page, &[]).await;
    assert!(
        cache_status(&after).contains("hit"),
        "purged: {}",
        cache_status(&after)
    );
}
