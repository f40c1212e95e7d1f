//! The CQRS machinery and storage: domain events, the projector, read-your-writes, seeding,
//! concurrent writers, persistence, and serving over real TCP.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use axum::body::Bytes;
use chat_service::{ChatService, Config, Database, MessagePosted, RoomName};
use common::{app, app_with, page_ids, post_json};
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use tower::ServiceExt;

/// Upper bound on waiting for something that should happen at once; only reached on failure.
const SAFETY: Duration = Duration::from_secs(10);

#[tokio::test]
async fn post_publishes_message_posted() {
    let app = app().await;
    let mut events = app.service.subscribe();
    let id = app.post_id("lobby", "ada", "hi").await;
    let event = tokio::time::timeout(SAFETY, events.recv())
        .await
        .expect("event in time")
        .expect("event");
    assert_eq!(
        event,
        MessagePosted {
            room: RoomName::parse("lobby").unwrap(),
            id
        }
    );

    // Rejected input publishes nothing.
    let rejected = app
        .send(post_json(
            "/rooms/lobby/messages",
            r#"{"author":"","text":"x"}"#,
        ))
        .await;
    assert_eq!(rejected.status, StatusCode::UNPROCESSABLE_ENTITY);
    let next = app.post_id("lobby", "ada", "again").await;
    let event = tokio::time::timeout(SAFETY, events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(event.id, next);
}

#[tokio::test]
async fn projector_announces_room_versions_after_applying() {
    let app = app().await;
    let mut notices = app.service.subscribe_projected();
    let first = app.post_id("lobby", "ada", "one").await;
    let notice = tokio::time::timeout(SAFETY, notices.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(notice.room.as_str(), "lobby");
    assert_eq!(notice.version, 1);
    assert_eq!(notice.last_id, first);
    // By the time of the notice, queries see the new version.
    let reply = app.get("/rooms/lobby/messages").await;
    assert_eq!(reply.header("etag"), "\"r1\"");
    assert_eq!(app.service.projected_position(), first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_after_a_201_see_the_write() {
    let app = app().await;
    for n in 0..30 {
        let message = app.post("lobby", "ada", &format!("m{n}")).await;
        let id = message["id"].as_i64().unwrap();
        let by_id = app.get(&format!("/rooms/lobby/messages/{id}")).await;
        assert_eq!(by_id.status, StatusCode::OK, "message {id} not visible");
        let page = app.get("/rooms/lobby/messages?limit=1").await;
        assert_eq!(page_ids(&page.json()), [id]);
        assert_eq!(page.header("etag"), format!("\"r{}\"", n + 1));
    }
}

#[tokio::test]
async fn a_post_past_the_projection_wait_is_still_201() {
    let config = Config {
        projection_wait: Duration::ZERO,
        ..Config::temporary()
    };
    let app = app_with(config).await;
    let mut notices = app.service.subscribe_projected();
    let mut last = 0;
    for n in 0..20 {
        last = app.post_id("lobby", "ada", &format!("m{n}")).await;
    }
    // The projector catches up on its own.
    loop {
        let notice = tokio::time::timeout(SAFETY, notices.recv())
            .await
            .unwrap()
            .unwrap();
        if notice.last_id == last {
            assert_eq!(notice.version, 20);
            break;
        }
    }
    let page = app.get("/rooms/lobby/messages").await.json();
    assert_eq!(page_ids(&page).len(), 20);
}

#[tokio::test]
async fn seed_fills_rooms_and_the_read_model() {
    let app = app().await;
    let summary = app.service.seed(3, 40).await.unwrap();
    assert_eq!(summary.rooms, 3);
    assert_eq!(summary.messages, 120);
    assert_eq!(summary.last_id, Some(120));
    assert_eq!(app.service.projected_position(), 120);

    let rooms = app.get("/rooms").await.json();
    let rooms = rooms["rooms"].as_array().unwrap();
    assert_eq!(rooms.len(), 3);
    for (n, room) in rooms.iter().enumerate() {
        assert_eq!(room["room"], format!("room-{}", n + 1));
        assert_eq!(room["message_count"], 40);
        assert_eq!(room["version"], 40);
    }
    assert_eq!(rooms[2]["last_id"], 120);

    let page = app.get("/rooms/room-2/messages?limit=200").await;
    assert_eq!(page.header("etag"), "\"r40\"");
    assert_eq!(page_ids(&page.json()).len(), 40);

    // Later posts continue the same room versions.
    app.post("room-2", "ada", "live").await;
    let page = app.get("/rooms/room-2/messages").await;
    assert_eq!(page.header("etag"), "\"r41\"");

    assert!(app.service.seed(0, 10).await.unwrap().last_id.is_none());
    assert!(app.service.seed(100_000, 1_000).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_posts_are_all_stored_with_unique_ids() {
    let app = app().await;
    let mut tasks = Vec::new();
    for task in 0..20 {
        let router = app.router.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for n in 0..10 {
                let body = format!(r#"{{"author":"task{task}","text":"message {n}"}}"#);
                let response = router
                    .clone()
                    .oneshot(post_json("/rooms/busy/messages", &body))
                    .await
                    .unwrap();
                assert_eq!(response.status(), StatusCode::CREATED);
                let body = response.into_body().collect().await.unwrap().to_bytes();
                let message: serde_json::Value = serde_json::from_slice(&body).unwrap();
                ids.push(message["id"].as_i64().unwrap());
            }
            ids
        }));
    }
    let mut ids = HashSet::new();
    for task in tasks {
        for id in task.await.unwrap() {
            assert!(ids.insert(id), "id {id} handed out twice");
        }
    }
    assert_eq!(ids.len(), 200);

    let page = app.get("/rooms/busy/messages?limit=200").await;
    assert_eq!(page.header("etag"), "\"r200\"");
    let served: HashSet<i64> = page_ids(&page.json()).into_iter().collect();
    assert_eq!(served, ids);
    let rooms = app.get("/rooms").await.json();
    assert_eq!(rooms["rooms"][0]["message_count"], 200);
    assert_eq!(rooms["rooms"][0]["version"], 200);
}

#[tokio::test]
async fn data_persists_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        database: Database::File(dir.path().join("chat.db")),
        ..Config::default()
    };
    let first = app_with(config.clone()).await;
    let id = first.post_id("lobby", "ada", "remember me").await;
    first.service.clone().close().await;
    drop(first);

    let second = app_with(config).await;
    let reply = second.get(&format!("/rooms/lobby/messages/{id}")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["text"], "remember me");
    let next = second.post_id("lobby", "bob", "and me").await;
    assert!(next > id);
    let page = second.get("/rooms/lobby/messages").await;
    assert_eq!(page.header("etag"), "\"r2\"");
    assert_eq!(page_ids(&page.json()), [next, id]);
}

#[tokio::test]
async fn reopening_projects_messages_the_read_model_missed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.db");
    let config = Config {
        database: Database::File(path.clone()),
        ..Config::default()
    };
    let first = app_with(config.clone()).await;
    first.post("lobby", "ada", "projected").await;
    first.service.clone().close().await;
    drop(first);

    // A write that committed but whose projection never ran, as after a crash between the two.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "INSERT INTO messages (room, author, text, created_at) VALUES ('lobby', 'bob', 'orphan', 0)",
        [],
    )
    .unwrap();
    drop(conn);

    let second = app_with(config).await;
    let page = second.get("/rooms/lobby/messages").await;
    assert_eq!(page.header("etag"), "\"r2\"");
    assert_eq!(page.json()["messages"][0]["text"], "orphan");
}

#[tokio::test]
async fn closed_service_answers_503_to_posts_and_still_serves_reads() {
    let app = app().await;
    app.post("lobby", "ada", "before close").await;
    app.service.clone().close().await;
    let reply = app
        .send(post_json(
            "/rooms/lobby/messages",
            r#"{"author":"ada","text":"late"}"#,
        ))
        .await;
    reply.assert_problem(StatusCode::SERVICE_UNAVAILABLE);
    let page = app.get("/rooms/lobby/messages").await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page_ids(&page.json()).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_over_tcp_and_shuts_down_gracefully() {
    let service = ChatService::open(&Config::temporary()).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(chat_service::serve(listener, service.app(), async move {
        let _ = stopped.await;
    }));

    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let post = http::Request::post(format!("http://{addr}/rooms/tcp/messages"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"author":"ada","text":"over the wire"}"#,
        )))
        .unwrap();
    let response = client.request(post).await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let created = response.into_body().collect().await.unwrap().to_bytes();

    let get = http::Request::get(format!("http://{addr}{location}"))
        .body(Full::default())
        .unwrap();
    let response = client.request(get).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let etag = response.headers()["etag"].clone();
    let fetched = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(fetched, created);

    let revalidate = http::Request::get(format!("http://{addr}{location}"))
        .header("if-none-match", etag)
        .body(Full::default())
        .unwrap();
    let response = client.request(revalidate).await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_MODIFIED);

    drop(client);
    stop.send(()).unwrap();
    tokio::time::timeout(SAFETY, server)
        .await
        .expect("server stops after the shutdown signal")
        .unwrap()
        .unwrap();
}
