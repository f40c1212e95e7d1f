//! Every kind of bad input gets its documented status and an `application/problem+json` body,
//! and nothing of it is stored.

mod common;

use axum::body::{Body, Bytes};
use common::{app, post_json};
use http::{Request, StatusCode, header};

#[tokio::test]
async fn malformed_json_is_400() {
    let app = app().await;
    for body in [
        r#"{"author":"ada","text":"#,
        "not json",
        r#"{"author":"ada" "text":"x"}"#,
    ] {
        let reply = app.send(post_json("/rooms/lobby/messages", body)).await;
        reply.assert_problem(StatusCode::BAD_REQUEST);
    }
    let empty = app.send(post_json("/rooms/lobby/messages", "")).await;
    empty.assert_problem(StatusCode::BAD_REQUEST);
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn missing_or_wrong_content_type_is_415() {
    let app = app().await;
    let body = r#"{"author":"ada","text":"hi"}"#;
    let missing = Request::post("/rooms/lobby/messages")
        .body(Body::from(body))
        .unwrap();
    app.send(missing)
        .await
        .assert_problem(StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let text = Request::post("/rooms/lobby/messages")
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from(body))
        .unwrap();
    app.send(text)
        .await
        .assert_problem(StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn wrong_shape_is_422() {
    let app = app().await;
    for body in [
        r#"{"author":"ada"}"#,
        r#"{"text":"hi"}"#,
        r#"{}"#,
        r#"{"author":"ada","text":42}"#,
        r#"{"author":null,"text":"hi"}"#,
        r#"["ada","hi"]"#,
    ] {
        let reply = app.send(post_json("/rooms/lobby/messages", body)).await;
        reply.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    }
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn empty_or_overlong_fields_are_422() {
    let app = app().await;
    let long_text = "x".repeat(4001);
    let long_author = "a".repeat(65);
    let cases = [
        ("ada", ""),
        ("ada", "   \n\t"),
        ("ada", long_text.as_str()),
        ("", "hi"),
        ("  ", "hi"),
        (long_author.as_str(), "hi"),
        ("ada\u{0007}", "hi"),
    ];
    for (author, text) in cases {
        let body = serde_json::json!({ "author": author, "text": text }).to_string();
        let reply = app.send(post_json("/rooms/lobby/messages", &body)).await;
        reply.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
        let detail = reply.json()["detail"].as_str().unwrap().to_owned();
        assert!(
            detail.contains("author") || detail.contains("text"),
            "detail names the field: {detail}"
        );
    }
    assert_nothing_stored(&app).await;

    // The limits themselves are accepted.
    let max_text = "é".repeat(4000);
    let max_author = "a".repeat(64);
    app.post("lobby", &max_author, &max_text).await;
}

#[tokio::test]
async fn oversize_body_is_413() {
    let app = app().await;
    let text = "x".repeat(70 * 1024);
    let body = serde_json::json!({ "author": "ada", "text": text }).to_string();
    app.send(post_json("/rooms/lobby/messages", &body))
        .await
        .assert_problem(StatusCode::PAYLOAD_TOO_LARGE);

    // Without a Content-Length the limit applies while the body streams in.
    let chunks = (0..80).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b' '; 1024])));
    let streamed = Request::post("/rooms/lobby/messages")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(futures_util::stream::iter(chunks)))
        .unwrap();
    app.send(streamed)
        .await
        .assert_problem(StatusCode::PAYLOAD_TOO_LARGE);
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn bad_cursor_or_limit_is_400() {
    let app = app().await;
    app.post("lobby", "ada", "hi").await;
    for query in [
        "before=abc",
        "before=-1",
        "before=0",
        "before=1.5",
        "limit=0",
        "limit=-5",
        "limit=ten",
        "limit=1e3",
        "limit=1&limit=2",
    ] {
        let reply = app.get(&format!("/rooms/lobby/messages?{query}")).await;
        reply.assert_problem(StatusCode::BAD_REQUEST);
    }
    // Empty values count as absent.
    let reply = app.get("/rooms/lobby/messages?before=&limit=").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(common::page_ids(&reply.json()).len(), 1);
}

#[tokio::test]
async fn bad_room_name_is_400() {
    let app = app().await;
    let long = "r".repeat(65);
    for room in ["bad%20room", "caf%C3%A9", "a.b", "%2F", long.as_str()] {
        app.get(&format!("/rooms/{room}/messages"))
            .await
            .assert_problem(StatusCode::BAD_REQUEST);
        app.get(&format!("/rooms/{room}/messages/1"))
            .await
            .assert_problem(StatusCode::BAD_REQUEST);
        app.send(post_json(
            &format!("/rooms/{room}/messages"),
            r#"{"author":"ada","text":"hi"}"#,
        ))
        .await
        .assert_problem(StatusCode::BAD_REQUEST);
    }
    // Percent-encoding that is not UTF-8 is rejected, not decoded lossily.
    app.get("/rooms/%FF/messages")
        .await
        .assert_problem(StatusCode::BAD_REQUEST);
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn unknown_message_is_404_and_bad_id_is_400() {
    let app = app().await;
    app.post("lobby", "ada", "hi").await;
    app.get("/rooms/lobby/messages/999")
        .await
        .assert_problem(StatusCode::NOT_FOUND);
    app.get("/rooms/empty/messages/1")
        .await
        .assert_problem(StatusCode::NOT_FOUND);
    for id in ["abc", "0", "-1", "99999999999999999999"] {
        app.get(&format!("/rooms/lobby/messages/{id}"))
            .await
            .assert_problem(StatusCode::BAD_REQUEST);
    }
}

#[tokio::test]
async fn unknown_route_is_404_and_wrong_method_405() {
    let app = app().await;
    for uri in [
        "/nope",
        "/assets/nope.js",
        "/rooms/lobby",
        "/rooms/lobby/messages/1/extra",
    ] {
        app.get(uri).await.assert_problem(StatusCode::NOT_FOUND);
    }
    let delete = Request::delete("/rooms/lobby/messages")
        .body(Body::empty())
        .unwrap();
    let reply = app.send(delete).await;
    reply.assert_problem(StatusCode::METHOD_NOT_ALLOWED);
    assert!(reply.header("allow").contains("GET"), "{:?}", reply.headers);
    let put = app
        .send(Request::put("/rooms").body(Body::empty()).unwrap())
        .await;
    put.assert_problem(StatusCode::METHOD_NOT_ALLOWED);
}

async fn assert_nothing_stored(app: &common::TestApp) {
    let rooms = app.get("/rooms").await.json();
    assert_eq!(
        rooms["rooms"],
        serde_json::json!([]),
        "bad input was stored"
    );
}
