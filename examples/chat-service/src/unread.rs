//! Per-user unread counts, the service's one per-user resource: `GET /me/unread` and
//! `POST /me/read/{room}`. They exist to show that one user's data never reaches another
//! through any tier of the stack, so they say so in HTTP: `Cache-Control: private, no-store`
//! and `Vary: Authorization`.
//!
//! The caller is named by `Authorization: Bearer {user}`. This is a demo: the token *is* the
//! user name (1 to 64 characters of `[A-Za-z0-9_-]`); a real service would verify a token and
//! read the user from it. Without a valid one both routes answer `401` problem+json.
//!
//! A user's read marks (per room, how many messages they had read) live in memory, per
//! instance, for at most [`MAX_USERS`] users; past that the marks start over, which only makes
//! counts larger. Unread = the room's message count minus the marked count.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::{get, post};
use http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, VARY, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, StatusCode};
use serde::Serialize;

use crate::model::RoomName;
use crate::service::ChatService;
use crate::store::RoomsListing;

/// Users whose read marks are remembered per instance.
pub(crate) const MAX_USERS: usize = 10_000;

const PRIVATE: HeaderValue = HeaderValue::from_static("private, no-store");

/// Read marks: user → room → messages read.
#[derive(Debug, Default)]
pub(crate) struct ReadMarks {
    users: Mutex<HashMap<String, HashMap<String, i64>>>,
}

impl ReadMarks {
    fn read_count(&self, user: &str, room: &str) -> i64 {
        self.users
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(user)
            .and_then(|rooms| rooms.get(room))
            .copied()
            .unwrap_or(0)
    }

    fn mark(&self, user: &str, room: &str, count: i64) {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        if users.len() >= MAX_USERS && !users.contains_key(user) {
            users.clear();
        }
        let rooms = users.entry(user.to_owned()).or_default();
        if rooms.len() >= crate::MAX_ROOMS_LISTED && !rooms.contains_key(room) {
            rooms.clear();
        }
        let read = rooms.entry(room.to_owned()).or_insert(0);
        *read = (*read).max(count);
    }
}

/// The body of `GET /me/unread`.
#[derive(Debug, Serialize)]
struct Unread {
    user: String,
    rooms: Vec<RoomUnread>,
    total: i64,
}

#[derive(Debug, Serialize)]
struct RoomUnread {
    room: String,
    unread: i64,
}

/// `GET /me/unread` and `POST /me/read/{room}` over `service`.
pub(crate) fn router(service: ChatService) -> Router {
    Router::new()
        .route("/me/unread", get(unread))
        .route("/me/read/{room}", post(mark_read))
        .with_state(service)
}

/// The user named by `Authorization: Bearer {user}`, if the header is one.
fn user(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    // The room-name rules are the user-name rules too.
    RoomName::parse(token.trim())
        .ok()
        .map(|name| name.to_string())
}

/// A private answer: every one of these routes' answers, errors included, carries it.
fn private(status: StatusCode, body: Vec<u8>, content_type: &'static str) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CACHE_CONTROL, PRIVATE);
    headers.insert(VARY, HeaderValue::from_static("authorization"));
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn problem(status: StatusCode, kind: &str, title: &str, detail: &str) -> Response {
    let body = serde_json::json!({
        "type": kind, "title": title, "status": status.as_u16(), "detail": detail,
    });
    let mut response = private(
        status,
        serde_json::to_vec(&body).unwrap_or_default(),
        "application/problem+json",
    );
    if status == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

fn unauthorized() -> Response {
    problem(
        StatusCode::UNAUTHORIZED,
        "/problems/unauthorized",
        "Unauthorized",
        "send Authorization: Bearer {user}",
    )
}

fn internal() -> Response {
    problem(
        StatusCode::INTERNAL_SERVER_ERROR,
        "/problems/internal",
        "Internal error",
        "the request could not be completed",
    )
}

async fn room_counts(service: &ChatService) -> Option<Vec<(String, i64)>> {
    match service.readers().rooms(|_| false).await {
        Ok(RoomsListing::Rooms { rooms, .. }) => Some(
            rooms
                .into_iter()
                .map(|r| (r.room, r.message_count))
                .collect(),
        ),
        Ok(RoomsListing::NotModified { .. }) => Some(Vec::new()),
        Err(error) => {
            tracing::error!(%error, "room counts failed");
            None
        }
    }
}

async fn unread(State(service): State<ChatService>, headers: HeaderMap) -> Response {
    let Some(user) = user(&headers) else {
        return unauthorized();
    };
    let Some(counts) = room_counts(&service).await else {
        return internal();
    };
    let marks = service.read_marks();
    let rooms: Vec<RoomUnread> = counts
        .into_iter()
        .map(|(room, count)| RoomUnread {
            unread: (count - marks.read_count(&user, &room)).max(0),
            room,
        })
        .collect();
    let total = rooms.iter().map(|r| r.unread).sum();
    let body = Unread { user, rooms, total };
    match serde_json::to_vec(&body) {
        Ok(bytes) => private(StatusCode::OK, bytes, "application/json"),
        Err(_) => internal(),
    }
}

async fn mark_read(
    State(service): State<ChatService>,
    headers: HeaderMap,
    Path(room): Path<String>,
) -> Response {
    let Some(user) = user(&headers) else {
        return unauthorized();
    };
    let Ok(room) = RoomName::parse(&room) else {
        return problem(
            StatusCode::BAD_REQUEST,
            "/problems/invalid-room",
            "Invalid room name",
            "room names are 1 to 64 characters of [A-Za-z0-9_-]",
        );
    };
    let Some(counts) = room_counts(&service).await else {
        return internal();
    };
    let room = room.to_string();
    let count = counts
        .iter()
        .find(|(name, _)| *name == room)
        .map_or(0, |(_, count)| *count);
    service.read_marks().mark(&user, &room, count);
    private(StatusCode::NO_CONTENT, Vec::new(), "application/json")
}

/// Shared by the service: created once in [`ChatService::open`].
pub(crate) fn marks() -> Arc<ReadMarks> {
    Arc::new(ReadMarks::default())
}
