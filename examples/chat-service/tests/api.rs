//! Every endpoint's happy path through the real router: posting, reading, paginating, listing
//! rooms, and the caching headers and conditional requests of the query side.

mod common;

use common::{app, get_if_none_match, page_ids};
use http::StatusCode;

#[tokio::test]
async fn healthz_answers_without_the_database() {
    let app = app().await;
    let reply = app.get("/healthz").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["status"], "ok");
    assert_eq!(reply.header("cache-control"), "no-store");

    // With the writer stopped the database cannot take writes; health is still fine.
    app.service.clone().close().await;
    assert_eq!(app.get("/healthz").await.status, StatusCode::OK);
}

#[tokio::test]
async fn post_answers_201_with_the_stored_message_and_location() {
    let app = app().await;
    let reply = app
        .send(common::post_json(
            "/rooms/lobby/messages",
            r#"{"author":"ada","text":"hello, world"}"#,
        ))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED);
    assert_eq!(reply.header("content-type"), "application/json");
    let message = reply.json();
    let id = message["id"].as_i64().unwrap();
    assert!(id > 0);
    assert_eq!(message["room"], "lobby");
    assert_eq!(message["author"], "ada");
    assert_eq!(message["text"], "hello, world");
    assert!(message["created_at"].as_i64().unwrap() > 1_600_000_000_000);
    assert_eq!(
        reply.header("location"),
        format!("/rooms/lobby/messages/{id}")
    );

    // The Location resolves to the same message.
    let fetched = app.get(reply.header("location")).await;
    assert_eq!(fetched.status, StatusCode::OK);
    assert_eq!(fetched.json(), message);
}

#[tokio::test]
async fn single_message_carries_immutable_caching_headers() {
    let app = app().await;
    let id = app.post_id("lobby", "ada", "hi").await;
    let uri = format!("/rooms/lobby/messages/{id}");
    let reply = app.get(&uri).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("etag"), format!("\"m{id}\""));
    assert_eq!(reply.header("cache-control"), "public, max-age=3600");
    assert_eq!(reply.header("cache-tag"), "room:lobby");

    let etag = reply.header("etag").to_owned();
    let revalidated = app.send(get_if_none_match(&uri, &etag)).await;
    assert_eq!(revalidated.status, StatusCode::NOT_MODIFIED);
    assert!(revalidated.body.is_empty());
    assert_eq!(revalidated.header("etag"), etag);
    assert_eq!(revalidated.header("cache-control"), "public, max-age=3600");

    let other = app.send(get_if_none_match(&uri, "\"m999\"")).await;
    assert_eq!(other.status, StatusCode::OK);

    // The message exists in its own room only.
    let wrong_room = app.get(&format!("/rooms/elsewhere/messages/{id}")).await;
    wrong_room.assert_problem(StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn list_is_newest_first_with_room_headers() {
    let app = app().await;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(app.post_id("lobby", "ada", &format!("message {n}")).await);
    }
    app.post("other", "bob", "not in lobby").await;

    let reply = app.get("/rooms/lobby/messages").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("content-type"), "application/json");
    assert_eq!(reply.header("etag"), "\"r5\"");
    assert_eq!(
        reply.header("cache-control"),
        "public, max-age=1, stale-while-revalidate=5"
    );
    assert_eq!(reply.header("cache-tag"), "room:lobby");
    let page = reply.json();
    assert_eq!(page["room"], "lobby");
    assert!(page["next_before"].is_null());
    ids.reverse();
    assert_eq!(page_ids(&page), ids);
    assert_eq!(page["messages"][0]["text"], "message 4");
    assert!(
        page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["room"] == "lobby")
    );
}

#[tokio::test]
async fn cursors_walk_every_page_once() {
    let app = app().await;
    let mut expected = Vec::new();
    for n in 0..7 {
        expected.push(app.post_id("lobby", "ada", &format!("m{n}")).await);
    }
    expected.reverse();

    let mut seen = Vec::new();
    let mut sizes = Vec::new();
    let mut uri = "/rooms/lobby/messages?limit=3".to_string();
    for _ in 0..10 {
        let page = app.get(&uri).await.json();
        let ids = page_ids(&page);
        sizes.push(ids.len());
        seen.extend(ids);
        match page["next_before"].as_i64() {
            Some(next) => {
                assert_eq!(Some(&next), seen.last(), "cursor is the last id served");
                uri = format!("/rooms/lobby/messages?limit=3&before={next}");
            }
            None => break,
        }
    }
    assert_eq!(sizes, [3, 3, 1]);
    assert_eq!(seen, expected);

    // A cursor from the middle of the room starts just below it.
    let page = app
        .get(&format!("/rooms/lobby/messages?before={}", expected[1]))
        .await
        .json();
    assert_eq!(page_ids(&page), expected[2..]);
    // An exact final page has no next cursor.
    let page = app.get("/rooms/lobby/messages?limit=7").await.json();
    assert_eq!(page_ids(&page).len(), 7);
    assert!(page["next_before"].is_null());
}

#[tokio::test]
async fn limit_defaults_to_50_and_is_capped_at_200() {
    let app = app().await;
    app.service.seed(1, 250).await.unwrap();
    let page = app.get("/rooms/room-1/messages").await.json();
    assert_eq!(page_ids(&page).len(), 50);
    let page = app.get("/rooms/room-1/messages?limit=1000").await.json();
    let ids = page_ids(&page);
    assert_eq!(ids.len(), 200);
    assert_eq!(page["next_before"].as_i64(), ids.last().copied());
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first");
}

#[tokio::test]
async fn unknown_room_is_an_empty_page() {
    let app = app().await;
    let reply = app.get("/rooms/nobody-here/messages").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("etag"), "\"r0\"");
    let page = reply.json();
    assert_eq!(page["room"], "nobody-here");
    assert_eq!(page["messages"].as_array().unwrap().len(), 0);
    assert!(page["next_before"].is_null());
}

#[tokio::test]
async fn rooms_lists_counts_and_last_ids() {
    let app = app().await;
    let empty = app.get("/rooms").await;
    assert_eq!(empty.status, StatusCode::OK);
    assert_eq!(empty.json()["rooms"].as_array().unwrap().len(), 0);

    app.post("beta", "ada", "1").await;
    app.post("alpha", "ada", "2").await;
    let last_beta = app.post_id("beta", "bob", "3").await;
    let reply = app.get("/rooms").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("cache-control"), "public, max-age=1");
    assert_eq!(reply.header("cache-tag"), "rooms");
    assert_eq!(reply.header("etag"), format!("\"s{last_beta}\""));
    let rooms = reply.json()["rooms"].clone();
    assert_eq!(
        rooms,
        serde_json::json!([
            { "room": "alpha", "message_count": 1, "last_id": 2, "version": 1 },
            { "room": "beta", "message_count": 2, "last_id": last_beta, "version": 2 },
        ])
    );

    let etag = reply.header("etag").to_owned();
    let same = app.send(get_if_none_match("/rooms", &etag)).await;
    assert_eq!(same.status, StatusCode::NOT_MODIFIED);
    assert!(same.body.is_empty());
    app.post("alpha", "ada", "4").await;
    let changed = app.send(get_if_none_match("/rooms", &etag)).await;
    assert_eq!(changed.status, StatusCode::OK);
    assert_ne!(changed.header("etag"), etag);
}

#[tokio::test]
async fn list_etag_moves_with_the_room_and_answers_if_none_match() {
    let app = app().await;
    app.post("lobby", "ada", "first").await;
    let first = app.get("/rooms/lobby/messages").await;
    let etag = first.header("etag").to_owned();
    assert_eq!(etag, "\"r1\"");

    let not_modified = app
        .send(get_if_none_match("/rooms/lobby/messages", &etag))
        .await;
    assert_eq!(not_modified.status, StatusCode::NOT_MODIFIED);
    assert!(not_modified.body.is_empty());
    assert_eq!(not_modified.header("etag"), etag);
    assert_eq!(
        not_modified.header("cache-control"),
        "public, max-age=1, stale-while-revalidate=5"
    );
    assert_eq!(not_modified.header("cache-tag"), "room:lobby");
    assert!(not_modified.headers.get("content-type").is_none());

    // Weak comparison and lists.
    for header in ["W/\"r1\"", "\"r0\", \"r1\"", "*"] {
        let reply = app
            .send(get_if_none_match("/rooms/lobby/messages", header))
            .await;
        assert_eq!(reply.status, StatusCode::NOT_MODIFIED, "{header}");
    }

    // Another room's post leaves this room's version alone.
    app.post("other", "bob", "elsewhere").await;
    let unchanged = app
        .send(get_if_none_match("/rooms/lobby/messages", &etag))
        .await;
    assert_eq!(unchanged.status, StatusCode::NOT_MODIFIED);

    app.post("lobby", "bob", "second").await;
    let stale = app
        .send(get_if_none_match("/rooms/lobby/messages", &etag))
        .await;
    assert_eq!(stale.status, StatusCode::OK);
    assert_eq!(stale.header("etag"), "\"r2\"");
    assert_eq!(stale.json()["messages"][0]["text"], "second");

    // A malformed header counts as absent.
    let malformed = app
        .send(get_if_none_match("/rooms/lobby/messages", "r2"))
        .await;
    assert_eq!(malformed.status, StatusCode::OK);
}

#[tokio::test]
async fn head_requests_get_headers_only() {
    let app = app().await;
    app.post("lobby", "ada", "hi").await;
    let reply = app
        .send(
            http::Request::head("/rooms/lobby/messages")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("etag"), "\"r1\"");
    assert!(reply.body.is_empty());
}

#[tokio::test]
async fn the_chat_page_and_its_assets_are_served_with_validators() {
    for (mode, bare) in [("stacked", false), ("bare", true)] {
        let app = common::app_with(chat_service::Config {
            bare,
            ..chat_service::Config::temporary()
        })
        .await;
        for (uri, content_type) in [
            ("/", "text/html; charset=utf-8"),
            ("/assets/chat.css", "text/css; charset=utf-8"),
            ("/assets/chat.js", "text/javascript; charset=utf-8"),
        ] {
            let reply = app.get(uri).await;
            assert_eq!(reply.status, StatusCode::OK, "{mode} {uri}");
            assert_eq!(reply.header("content-type"), content_type, "{mode} {uri}");
            assert_eq!(reply.header("cache-control"), "no-cache", "{mode} {uri}");
            assert!(
                reply
                    .header("content-security-policy")
                    .contains("default-src 'none'"),
                "{mode} {uri}"
            );
            let etag = reply.header("etag").to_owned();
            let again = app.send(get_if_none_match(uri, &etag)).await;
            assert_eq!(again.status, StatusCode::NOT_MODIFIED, "{mode} {uri}");
            assert!(again.body.is_empty());
            assert_eq!(again.header("etag"), etag);
        }
        let page = app.get("/").await;
        let html = std::str::from_utf8(&page.body).unwrap();
        assert!(html.contains("<script src=\"/assets/chat.js\" defer></script>"));
        assert!(html.contains("<label for=\"compose-text\">"));
    }
}

/// Seconds of freshness left that `Cache-Status` reports (`ttl=N`).
fn cache_ttl(reply: &common::Reply) -> i64 {
    let status = reply.header("cache-status");
    status
        .split(';')
        .find_map(|param| param.trim().strip_prefix("ttl="))
        .and_then(|ttl| ttl.parse().ok())
        .unwrap_or_else(|| panic!("no ttl in {status}"))
}

#[tokio::test]
async fn the_cache_keeps_lists_as_surrogate_control_says_and_clients_never_see_the_field() {
    let app = app().await;
    app.post("lobby", "ada", "hello").await;
    for uri in ["/rooms/lobby/messages", "/rooms"] {
        let stored = app.get(uri).await;
        let hit = app.get(uri).await;
        for reply in [&stored, &hit] {
            assert!(
                !reply.headers.contains_key("surrogate-control"),
                "{uri}: {:?}",
                reply.headers
            );
        }
        assert!(hit.header("cache-status").contains("hit"), "{uri}");
        // max-age=60 from Surrogate-Control, not Cache-Control's max-age=1.
        assert!(
            (55..=60).contains(&cache_ttl(&hit)),
            "{uri}: {:?}",
            hit.headers
        );
        assert!(hit.header("cache-control").contains("max-age=1"), "{uri}");
    }

    let bare = common::app_with(chat_service::Config {
        bare: true,
        ..chat_service::Config::temporary()
    })
    .await;
    bare.post("lobby", "ada", "hello").await;
    let reply = bare.get("/rooms/lobby/messages").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        !reply.headers.contains_key("surrogate-control"),
        "{:?}",
        reply.headers
    );
}
