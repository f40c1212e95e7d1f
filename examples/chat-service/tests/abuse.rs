//! Abuse through the real service over raw TCP: enormous headers, oversized bodies with and
//! without a length, slowloris-style stalled bodies, and one client reusing another's
//! `Idempotency-Key`. Each gets a clear answer (`431`, `413`, `408`) or its own result, fast,
//! while other clients keep being served.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod faults_support;

use std::time::{Duration, Instant};

use chat_service::{Config, Database};
use faults_support::{Instance, client, get, send};
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BODY_TIMEOUT: Duration = Duration::from_millis(300);

async fn instance() -> (tempfile::TempDir, Instance) {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        database: Database::File(dir.path().join("chat.db")),
        body_timeout: BODY_TIMEOUT,
        ..Config::default()
    };
    let instance = Instance::start(&config).await;
    instance.service.seed(2, 5).await.unwrap();
    (dir, instance)
}

/// Writes `head` then `body` on a fresh connection and reads the status of the answer (`None`
/// when the server closed the connection without one), at most 5 s.
async fn raw(instance: &Instance, head: &[u8], body: &[u8]) -> (Option<u16>, Duration) {
    let started = Instant::now();
    let mut stream = TcpStream::connect(instance.addr).await.unwrap();
    // The server may answer and close before everything is written: that is an answer too.
    let _ = stream.write_all(head).await;
    let _ = stream.write_all(body).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
            if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
    })
    .await;
    let status = std::str::from_utf8(&answer)
        .ok()
        .and_then(|text| text.split(' ').nth(1))
        .and_then(|code| code.parse().ok());
    (status, started.elapsed())
}

async fn still_serving(instance: &Instance) {
    let started = Instant::now();
    let answer = send(&client(), get(&instance.url("/rooms/room-1/messages")))
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enormous_headers_get_431() {
    let (_dir, instance) = instance().await;
    let one_huge = format!(
        "GET /rooms/room-1/messages HTTP/1.1\r\nhost: chat\r\nx-junk: {}\r\n\r\n",
        "a".repeat(512 * 1024)
    );
    let (status, took) = raw(&instance, one_huge.as_bytes(), b"").await;
    assert_eq!(status, Some(431), "one 512 KiB header");
    assert!(took < Duration::from_secs(2), "{took:?}");

    let mut many = String::from("GET /rooms HTTP/1.1\r\nhost: chat\r\n");
    for n in 0..500 {
        many.push_str(&format!("x-h{n}: v\r\n"));
    }
    many.push_str("\r\n");
    let (status, _) = raw(&instance, many.as_bytes(), b"").await;
    assert_eq!(status, Some(431), "500 headers");
    still_serving(&instance).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_get_413_with_or_without_a_length() {
    let (_dir, instance) = instance().await;
    let big = format!(
        "{{\"author\":\"ada\",\"text\":\"{}\"}}",
        "x".repeat(2 * 1024 * 1024)
    );
    for key in [None, Some("big-1")] {
        let key_header = key
            .map(|k| format!("idempotency-key: \"{k}\"\r\n"))
            .unwrap_or_default();
        let with_length = format!(
            "POST /rooms/room-1/messages HTTP/1.1\r\nhost: chat\r\ncontent-type: application/json\r\n\
             {key_header}content-length: {}\r\n\r\n",
            big.len()
        );
        let (status, took) = raw(&instance, with_length.as_bytes(), big.as_bytes()).await;
        assert_eq!(status, Some(413), "with a length, key {key:?}");
        assert!(took < Duration::from_secs(3), "{took:?}");

        let mut chunked = format!(
            "POST /rooms/room-1/messages HTTP/1.1\r\nhost: chat\r\ncontent-type: application/json\r\n\
             {key_header}transfer-encoding: chunked\r\n\r\n"
        )
        .into_bytes();
        for piece in big.as_bytes().chunks(64 * 1024) {
            chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            chunked.extend_from_slice(piece);
            chunked.extend_from_slice(b"\r\n");
        }
        chunked.extend_from_slice(b"0\r\n\r\n");
        let (status, _) = raw(&instance, &chunked, b"").await;
        assert_eq!(status, Some(413), "chunked, key {key:?}");
    }
    still_serving(&instance).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_gets_408_and_ties_nothing_up() {
    let (_dir, instance) = instance().await;
    let body = br#"{"author":"ada","text":"hello"}"#;
    for key in [None, Some("slow-1")] {
        let key_header = key
            .map(|k| format!("idempotency-key: \"{k}\"\r\n"))
            .unwrap_or_default();
        let head = format!(
            "POST /rooms/room-1/messages HTTP/1.1\r\nhost: chat\r\ncontent-type: application/json\r\n\
             {key_header}content-length: {}\r\n\r\n",
            body.len()
        );
        // Half the body, then nothing: ten such clients at once.
        let stalled = (0..10).map(|_| raw(&instance, head.as_bytes(), &body[..10]));
        let (answers, ()) = tokio::join!(futures_util::future::join_all(stalled), async {
            // Others are served meanwhile.
            tokio::time::sleep(Duration::from_millis(50)).await;
            still_serving(&instance).await;
        });
        for (status, took) in answers {
            assert_eq!(status, Some(408), "key {key:?}");
            assert!(
                took >= BODY_TIMEOUT && took < BODY_TIMEOUT + Duration::from_secs(2),
                "{took:?}"
            );
        }
    }
    // The stalled keyed post holds no key: the same key with a whole body is stored.
    let whole = format!(
        "POST /rooms/room-1/messages HTTP/1.1\r\nhost: chat\r\ncontent-type: application/json\r\n\
         idempotency-key: \"slow-1\"\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let (status, _) = raw(&instance, whole.as_bytes(), body).await;
    assert_eq!(status, Some(201));
    let page = send(&client(), get(&instance.url("/rooms/room-1/messages")))
        .await
        .unwrap();
    let hellos = page.json()["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["text"] == "hello")
        .count();
    assert_eq!(hellos, 1, "only the whole post was stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_cannot_replay_or_block_anothers_key() {
    let (_dir, instance) = instance().await;
    let http = client();
    let post_as = |user: &str, text: &str| {
        http::Request::post(instance.url("/rooms/room-2/messages"))
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {user}"))
            .header("idempotency-key", "\"shared-key\"")
            .body(http_body_util::Full::new(bytes::Bytes::from(
                serde_json::json!({ "author": user, "text": text }).to_string(),
            )))
            .unwrap()
    };
    let alice = send(&http, post_as("alice", "from alice")).await.unwrap();
    assert_eq!(alice.status, StatusCode::CREATED);
    // Bob with the same key and the same body: his own post, not Alice's answer.
    let bob_same = send(&http, post_as("bob", "from alice")).await.unwrap();
    assert_eq!(bob_same.status, StatusCode::CREATED);
    assert!(bob_same.headers.get("idempotent-replayed").is_none());
    assert_ne!(bob_same.json()["id"], alice.json()["id"]);
    // Carol with the same key and another body: not blocked by Alice's key (no 422 or 409).
    let carol = send(&http, post_as("carol", "from carol")).await.unwrap();
    assert_eq!(carol.status, StatusCode::CREATED);
    // Alice's retry still replays her own answer.
    let again = send(&http, post_as("alice", "from alice")).await.unwrap();
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(again.json()["id"], alice.json()["id"]);
}
