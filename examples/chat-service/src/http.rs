//! The HTTP interface: routes, handlers, conditional requests and problem+json errors.
//! Handlers translate HTTP to calls on [`ChatService`] and back; they hold no state of their own.

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Extension, Path, Query, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use dedup_layer::idempotency::{IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED};
use http::header::{
    AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH, LOCATION, RETRY_AFTER,
};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::model::{MessagePage, NewMessage, RoomList, RoomName};
use crate::moderation::Judgement;
use crate::service::{ChatService, Posted};
use crate::store::{Listing, RoomsListing};

/// Messages per page when `limit` is not given.
pub const DEFAULT_PAGE_LIMIT: u32 = 50;
/// Largest page; a larger `limit` is lowered to it.
pub const MAX_PAGE_LIMIT: u32 = 200;

/// Surrogate-key header naming the tags of a cached response (`room:{room}` or `rooms`).
pub const CACHE_TAG: HeaderName = HeaderName::from_static("cache-tag");
/// The field that tells the service's own cache how long to keep an answer
/// ([`CacheControl::surrogate`](crate::CacheControl::surrogate)).
const SURROGATE_CONTROL: HeaderName = HeaderName::from_static("surrogate-control");

const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");
const PROBLEM_JSON: HeaderValue = HeaderValue::from_static("application/problem+json");
const NO_STORE: HeaderValue = HeaderValue::from_static("no-store");
const ROOMS_TAG: HeaderValue = HeaderValue::from_static("rooms");

/// The bare routes of the service, with no middleware.
///
/// Besides the routes it sets the request body limit ([`Config::body_limit`](crate::Config))
/// and answers unknown paths (`404`) and methods (`405`) with problem+json.
pub(crate) fn router(service: ChatService) -> Router {
    router_with_post_layer(service, |post| post)
}

/// [`router`] with `layer` applied to the `POST /rooms/{room}/messages` handler only (the
/// idempotency layer goes there).
pub(crate) fn router_with_post_layer(
    service: ChatService,
    layer: impl FnOnce(MethodRouter<ChatService>) -> MethodRouter<ChatService>,
) -> Router {
    let body_limit = service.config().body_limit;
    // The trace context is captured outside the post's layers: the idempotency layer runs the
    // handler in a task of its own, where the request span is no longer the current context.
    let post_route =
        layer(post(post_message)).route_layer(axum::middleware::from_fn(capture_trace));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/rooms", get(list_rooms))
        .route(
            "/rooms/{room}/messages",
            get(list_messages).merge(post_route),
        )
        .route("/rooms/{room}/messages/{id}", get(get_message))
        .merge(crate::page::routes())
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(service)
}

/// `GET /stats`: the query counts and the mode, outside every layer (never cached, not
/// instrumented).
pub(crate) fn stats_router(service: ChatService) -> Router {
    Router::new()
        .route("/stats", get(stats))
        .with_state(service)
}

/// The body of `GET /stats`.
#[derive(Debug, Serialize)]
struct Stats {
    db_queries: u64,
    db_duplicate_queries: u64,
    mode: &'static str,
    breaker_state: Option<&'static str>,
}

async fn stats(State(service): State<ChatService>) -> Handled {
    let (db_queries, db_duplicate_queries) = service.readers().stats().snapshot();
    let stats = Stats {
        db_queries,
        db_duplicate_queries,
        mode: if service.config().bare {
            "bare"
        } else {
            "stacked"
        },
        breaker_state: service
            .moderation()
            .and_then(|m| m.breaker_state())
            .map(|state| state.as_str()),
    };
    let mut headers = HeaderMap::with_capacity(2);
    headers.insert(CACHE_CONTROL, NO_STORE);
    json_response(StatusCode::OK, &stats, headers)
}

/// The OpenTelemetry context of the request, carried to the post handler in an extension.
#[derive(Clone, Debug)]
struct TraceContext(opentelemetry::Context);

async fn capture_trace(mut request: Request, next: Next) -> Response {
    request
        .extensions_mut()
        .insert(TraceContext(opentelemetry::Context::current()));
    next.run(request).await
}

/// `traceresponse` (W3C Trace Context Level 2): the trace and span this service recorded the
/// request under, so a client (the chat page's status line) can name the trace.
pub const TRACERESPONSE: HeaderName = HeaderName::from_static("traceresponse");

/// Adds [`TRACERESPONSE`] from the request's OpenTelemetry span, when there is one (span export
/// on); answers without it otherwise. Goes above the cache, so hits name their trace too.
pub(crate) async fn trace_response(request: Request, next: Next) -> Response {
    use opentelemetry::trace::TraceContextExt;

    let context = opentelemetry::Context::current();
    let span = context.span();
    let span = span.span_context();
    let value = span.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            span.trace_id(),
            span.span_id(),
            span.trace_flags().to_u8()
        )
    });
    let mut response = next.run(request).await;
    if let Some(value) = value.and_then(|v| HeaderValue::try_from(v).ok()) {
        response.headers_mut().insert(TRACERESPONSE, value);
    }
    response
}

/// An RFC 9457 problem details response.
#[derive(Debug)]
struct Problem {
    status: StatusCode,
    kind: &'static str,
    title: &'static str,
    detail: String,
    /// Seconds for `Retry-After`, on `503`.
    retry_after: Option<u64>,
}

#[derive(Serialize)]
struct ProblemBody<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    title: &'a str,
    status: u16,
    detail: &'a str,
}

impl Problem {
    fn new(
        status: StatusCode,
        kind: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            status,
            kind,
            title,
            detail: detail.into(),
            retry_after: None,
        }
    }

    /// The moderation dependency failed, timed out or its breaker is open: nothing was stored,
    /// so the client may retry (with the same `Idempotency-Key`) after `retry_after_secs`.
    fn dependency_unavailable(retry_after_secs: u64) -> Self {
        Self {
            retry_after: Some(retry_after_secs),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "/problems/moderation-unavailable",
                "Moderation unavailable",
                "the message could not be checked and was not stored; retry later",
            )
        }
    }

    fn rejected(reason: String) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "/problems/rejected-by-moderation",
            "Rejected by moderation",
            reason,
        )
    }

    fn invalid_room(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "/problems/invalid-room",
            "Invalid room name",
            detail,
        )
    }

    fn invalid_query(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "/problems/invalid-query",
            "Invalid query parameter",
            detail,
        )
    }

    fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "/problems/internal",
            "Internal error",
            "the request could not be completed",
        )
    }

    fn not_found(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "/problems/not-found",
            "Not found",
            detail,
        )
    }

    /// Maps a [`Json`] rejection by kind: bad syntax `400`, valid JSON of the wrong shape `422`,
    /// missing or wrong content type `415`, body over the limit `413`.
    fn from_json_rejection(rejection: &JsonRejection) -> Self {
        let detail = rejection.body_text();
        match rejection {
            JsonRejection::JsonSyntaxError(_) => Self::new(
                StatusCode::BAD_REQUEST,
                "/problems/malformed-json",
                "Malformed JSON",
                detail,
            ),
            JsonRejection::JsonDataError(_) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "/problems/invalid-message",
                "Invalid message",
                detail,
            ),
            JsonRejection::MissingJsonContentType(_) => Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "/problems/unsupported-media-type",
                "Unsupported media type",
                "expected Content-Type: application/json",
            ),
            _ if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "/problems/body-too-large",
                "Request body too large",
                detail,
            ),
            _ => Self::new(
                StatusCode::BAD_REQUEST,
                "/problems/unreadable-body",
                "Unreadable request body",
                detail,
            ),
        }
    }

    fn from_error(error: &Error) -> Self {
        match error {
            Error::Invalid(invalid) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "/problems/invalid-message",
                "Invalid message",
                invalid.message(),
            ),
            Error::Closed => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "/problems/unavailable",
                "Service unavailable",
                "the service is shutting down",
            ),
            Error::KeyReused => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "/problems/idempotency-key-reused",
                "Idempotency-Key reused",
                "this Idempotency-Key was already used with a different message",
            ),
            other => {
                tracing::error!(error = %other, "request failed");
                Self::internal()
            }
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = ProblemBody {
            kind: self.kind,
            title: self.title,
            status: self.status.as_u16(),
            detail: &self.detail,
        };
        // Serialising four strings cannot fail; an empty body is still a valid problem response.
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        let mut response = Response::new(Body::from(bytes));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, PROBLEM_JSON);
        headers.insert(CACHE_CONTROL, NO_STORE);
        if let Some(seconds) = self.retry_after {
            headers.insert(RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<Error> for Problem {
    fn from(error: Error) -> Self {
        Self::from_error(&error)
    }
}

impl From<crate::store::StoreError> for Problem {
    fn from(error: crate::store::StoreError) -> Self {
        match error {
            crate::store::StoreError::WriterClosed => Self::from_error(&Error::Closed),
            other => {
                tracing::error!(error = %other, "query failed");
                Self::internal()
            }
        }
    }
}

type Handled = Result<Response, Problem>;

fn room_from_path(path: Result<Path<String>, PathRejection>) -> Result<RoomName, Problem> {
    let Path(room) = path.map_err(|e| Problem::invalid_room(e.body_text()))?;
    RoomName::parse(&room).map_err(|e| Problem::invalid_room(e.message()))
}

/// A JSON response with the given status and headers.
fn json_response<T: Serialize>(status: StatusCode, value: &T, headers: HeaderMap) -> Handled {
    let bytes = serde_json::to_vec(value).map_err(|e| {
        tracing::error!(error = %e, "response serialisation failed");
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "/problems/internal",
            "Internal error",
            "the response could not be encoded",
        )
    })?;
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, APPLICATION_JSON);
    Ok(response)
}

/// The validators and caching headers of a query response, sent with both `200` and `304`.
fn cache_headers(etag: &str, cache_control: &HeaderValue, tag: HeaderValue) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(5);
    if let Ok(etag) = HeaderValue::from_str(etag) {
        headers.insert(ETAG, etag);
    }
    headers.insert(CACHE_CONTROL, cache_control.clone());
    headers.insert(CACHE_TAG, tag);
    headers
}

/// Adds [`CacheControl::surrogate`](crate::CacheControl::surrogate) for the service's own
/// cache, unless bare (no cache to remove it).
fn with_surrogate(mut headers: HeaderMap, service: &ChatService) -> HeaderMap {
    let config = service.config();
    if let Some(value) = config
        .cache_control
        .surrogate
        .as_ref()
        .filter(|_| !config.bare)
    {
        headers.insert(SURROGATE_CONTROL, value.clone());
    }
    headers
}

fn not_modified(headers: HeaderMap) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::NOT_MODIFIED;
    *response.headers_mut() = headers;
    response
}

fn room_tag(room: &RoomName) -> HeaderValue {
    // Room names are validated to header-safe characters, so this never falls back.
    HeaderValue::try_from(room.cache_tag()).unwrap_or(ROOMS_TAG)
}

async fn healthz() -> impl IntoResponse {
    (
        [(CONTENT_TYPE, APPLICATION_JSON), (CACHE_CONTROL, NO_STORE)],
        r#"{"status":"ok"}"#,
    )
}

async fn not_found() -> Problem {
    Problem::not_found("no route for this path")
}

async fn method_not_allowed() -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "/problems/method-not-allowed",
        "Method not allowed",
        "this path does not accept the request's method",
    )
}

/// The post's `Idempotency-Key` scoped to its client as the idempotency layer scopes it (by a
/// hash of the `Authorization` value), kept with the message by [`ChatService::post_once`];
/// `None` without a key, and in bare mode, which has no idempotency.
fn post_key(service: &ChatService, headers: &HeaderMap) -> Option<String> {
    use sha2::{Digest, Sha256};
    use std::fmt::Write as _;

    if service.config().bare {
        return None;
    }
    // The idempotency layer in front has refused malformed keys already.
    let key = headers.get(IDEMPOTENCY_KEY)?.to_str().ok()?;
    let client = headers
        .get(AUTHORIZATION)
        .map_or(&b""[..], HeaderValue::as_bytes);
    let mut scoped = String::with_capacity(65 + key.len());
    for byte in Sha256::digest(client) {
        let _ = write!(scoped, "{byte:02x}");
    }
    scoped.push(':');
    scoped.push_str(key);
    Some(scoped)
}

async fn post_message(
    State(service): State<ChatService>,
    trace: Option<Extension<TraceContext>>,
    room: Result<Path<String>, PathRejection>,
    request_headers: HeaderMap,
    body: Result<Json<NewMessage>, JsonRejection>,
) -> Handled {
    use opentelemetry::context::FutureExt;

    let room = room_from_path(room)?;
    let Json(message) = body.map_err(|e| Problem::from_json_rejection(&e))?;
    // Invalid input is refused before the dependency is asked.
    message.validate().map_err(Error::from)?;
    if let Some(moderation) = service.moderation() {
        let check = moderation.check(&message.author, &message.text);
        let judgement = match trace {
            Some(Extension(TraceContext(cx))) => check.with_context(cx).await,
            None => check.await,
        };
        match judgement {
            Judgement::Allowed => {}
            Judgement::Rejected(reason) => return Err(Problem::rejected(reason)),
            Judgement::Unavailable { retry_after_secs } => {
                return Err(Problem::dependency_unavailable(retry_after_secs));
            }
        }
    }
    // With a key, a post whose idempotency record was lost (Redis restarted empty) finds the
    // message stored with its key instead of storing it again.
    let (stored, replayed) = match post_key(&service, &request_headers) {
        Some(key) => match service.post_once(&room, message, &key).await? {
            Posted::New(stored) => (stored, false),
            Posted::Existing(stored) => (stored, true),
        },
        None => (service.post(&room, message).await?, false),
    };
    // Read-your-writes: answer once a GET would see the message. Past the bound the message is
    // still stored, so the answer is still 201.
    service.wait_projected(stored.id).await;
    // ... and once no cache tier of any instance still holds the page without it.
    service.wait_invalidated(&room, stored.id).await;
    let mut headers = HeaderMap::with_capacity(4);
    let location = format!("/rooms/{}/messages/{}", room, stored.id);
    if let Ok(location) = HeaderValue::try_from(location) {
        headers.insert(LOCATION, location);
    }
    headers.insert(CACHE_CONTROL, NO_STORE);
    if replayed {
        headers.insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    json_response(StatusCode::CREATED, &stored, headers)
}

#[derive(Debug, Deserialize)]
struct ListParams {
    before: Option<String>,
    limit: Option<String>,
}

/// Reads `before` (a positive message id) and `limit` (a positive count, lowered to
/// [`MAX_PAGE_LIMIT`]). Empty values count as absent.
fn page_params(params: &ListParams) -> Result<(Option<i64>, u32), Problem> {
    let before = match params.before.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(raw) => match raw.parse::<i64>() {
            Ok(id) if id > 0 => Some(id),
            _ => {
                return Err(Problem::invalid_query(format!(
                    "before must be a positive message id, got {:?}",
                    truncated(raw)
                )));
            }
        },
    };
    let limit = match params.limit.as_deref().map(str::trim) {
        None | Some("") => DEFAULT_PAGE_LIMIT,
        Some(raw) => match raw.parse::<u64>() {
            Ok(n) if n > 0 => u32::try_from(n)
                .unwrap_or(MAX_PAGE_LIMIT)
                .min(MAX_PAGE_LIMIT),
            _ => {
                return Err(Problem::invalid_query(format!(
                    "limit must be a positive number, got {:?}",
                    truncated(raw)
                )));
            }
        },
    };
    Ok((before, limit))
}

/// Keeps echoed input short in error details.
fn truncated(raw: &str) -> &str {
    match raw.char_indices().nth(32) {
        Some((at, _)) => &raw[..at],
        None => raw,
    }
}

async fn list_messages(
    State(service): State<ChatService>,
    room: Result<Path<String>, PathRejection>,
    query: Result<Query<ListParams>, QueryRejection>,
    headers: HeaderMap,
) -> Handled {
    let room = room_from_path(room)?;
    let Query(params) = query.map_err(|e| Problem::invalid_query(e.body_text()))?;
    let (before, limit) = page_params(&params)?;
    let preconditions = IfNoneMatch::from_headers(&headers);
    let listing = service
        .readers()
        .list(room.clone(), before, limit, move |version| {
            preconditions.is_some_and(|p| p.matches(&list_etag(version)))
        })
        .await?;
    let cache_control = &service.config().cache_control.list;
    match listing {
        Listing::NotModified { version } => Ok(not_modified(with_surrogate(
            cache_headers(&list_etag(version), cache_control, room_tag(&room)),
            &service,
        ))),
        Listing::Page {
            version,
            messages,
            next_before,
        } => {
            let headers = with_surrogate(
                cache_headers(&list_etag(version), cache_control, room_tag(&room)),
                &service,
            );
            let page = MessagePage {
                room: room.to_string(),
                messages,
                next_before,
            };
            json_response(StatusCode::OK, &page, headers)
        }
    }
}

async fn get_message(
    State(service): State<ChatService>,
    path: Result<Path<(String, String)>, PathRejection>,
    request_headers: HeaderMap,
) -> Handled {
    let Path((room, id)) = path.map_err(|e| Problem::invalid_room(e.body_text()))?;
    let room = RoomName::parse(&room).map_err(|e| Problem::invalid_room(e.message()))?;
    let id = match id.parse::<i64>() {
        Ok(id) if id > 0 => id,
        _ => {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "/problems/invalid-message-id",
                "Invalid message id",
                format!(
                    "message ids are positive integers, got {:?}",
                    truncated(&id)
                ),
            ));
        }
    };
    let message = service
        .readers()
        .get(room.clone(), id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("room {room} has no message {id}")))?;
    // Messages never change, so the id is a strong validator for the representation.
    let etag = message_etag(id);
    let headers = cache_headers(
        &etag,
        &service.config().cache_control.message,
        room_tag(&room),
    );
    if IfNoneMatch::from_headers(&request_headers).is_some_and(|p| p.matches(&etag)) {
        return Ok(not_modified(headers));
    }
    json_response(StatusCode::OK, &message, headers)
}

async fn list_rooms(State(service): State<ChatService>, headers: HeaderMap) -> Handled {
    let preconditions = IfNoneMatch::from_headers(&headers);
    let listing = service
        .readers()
        .rooms(move |position| preconditions.is_some_and(|p| p.matches(&rooms_etag(position))))
        .await?;
    let cache_control = &service.config().cache_control.rooms;
    match listing {
        RoomsListing::NotModified { position } => Ok(not_modified(with_surrogate(
            cache_headers(&rooms_etag(position), cache_control, ROOMS_TAG),
            &service,
        ))),
        RoomsListing::Rooms { position, rooms } => {
            let headers = with_surrogate(
                cache_headers(&rooms_etag(position), cache_control, ROOMS_TAG),
                &service,
            );
            json_response(StatusCode::OK, &RoomList { rooms }, headers)
        }
    }
}

fn list_etag(version: i64) -> String {
    format!("\"r{version}\"")
}

fn message_etag(id: i64) -> String {
    format!("\"m{id}\"")
}

fn rooms_etag(position: i64) -> String {
    format!("\"s{position}\"")
}

/// The `If-None-Match` field of a request (RFC 9110 §13.1.2), evaluated with weak comparison.
///
/// A field that does not parse counts as absent, so a malformed header gets the full response.
#[derive(Debug)]
pub(crate) struct IfNoneMatch {
    values: Vec<HeaderValue>,
}

impl IfNoneMatch {
    pub(crate) fn from_headers(headers: &HeaderMap) -> Option<Self> {
        let values: Vec<HeaderValue> = headers.get_all(IF_NONE_MATCH).iter().cloned().collect();
        (!values.is_empty()).then_some(Self { values })
    }

    /// Whether the client's copy matches `etag` (a quoted strong entity tag such as `"r5"`).
    pub(crate) fn matches(&self, etag: &str) -> bool {
        let Some(opaque) = etag.strip_prefix('"').and_then(|t| t.strip_suffix('"')) else {
            return false;
        };
        let mut any = false;
        for value in &self.values {
            let Ok(value) = value.to_str() else {
                return false;
            };
            match list_matches(value, opaque) {
                Some(true) => any = true,
                Some(false) => {}
                None => return false,
            }
        }
        any
    }
}

/// Whether a field value `* / #entity-tag` matches the opaque tag; `None` if it is malformed.
fn list_matches(value: &str, opaque: &str) -> Option<bool> {
    let mut found = false;
    let mut rest = value;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            return Some(found);
        }
        let after = if let Some(after) = rest.strip_prefix('*') {
            found = true;
            after
        } else {
            let tag = rest.strip_prefix("W/").unwrap_or(rest).strip_prefix('"')?;
            let end = tag.find('"')?;
            if &tag[..end] == opaque {
                found = true;
            }
            &tag[end + 1..]
        };
        // Elements are separated by commas, with optional whitespace.
        let after_space = after.trim_start_matches([' ', '\t']);
        if !(after_space.is_empty() || after_space.starts_with(',')) {
            return None;
        }
        rest = after_space;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inm(values: &[&str]) -> IfNoneMatch {
        IfNoneMatch {
            values: values
                .iter()
                .map(|v| HeaderValue::from_str(v).unwrap())
                .collect(),
        }
    }

    #[test]
    fn weak_comparison() {
        assert!(inm(&["\"r5\""]).matches("\"r5\""));
        assert!(inm(&["W/\"r5\""]).matches("\"r5\""));
        assert!(inm(&["\"r4\", W/\"r5\""]).matches("\"r5\""));
        assert!(inm(&["\"r4\"", "\"r5\""]).matches("\"r5\""));
        assert!(inm(&["\"a,b\", \"r5\""]).matches("\"r5\""));
        assert!(!inm(&["\"r4\""]).matches("\"r5\""));
        assert!(!inm(&["\"r55\""]).matches("\"r5\""));
        assert!(!inm(&[""]).matches("\"r5\""));
    }

    #[test]
    fn star_matches_anything() {
        assert!(inm(&["*"]).matches("\"r0\""));
        assert!(inm(&[" * "]).matches("\"m1\""));
    }

    #[test]
    fn malformed_counts_as_absent() {
        for bad in ["r5", "\"r5", "\"r5\"x", "W/r5", "\"r5\" \"r6\"", "**"] {
            assert!(!inm(&[bad]).matches("\"r5\""), "{bad}");
        }
        assert!(!inm(&["\"r5\"", "junk"]).matches("\"r5\""));
    }

    proptest::proptest! {
        #[test]
        fn any_field_value_is_safe(value in "\\PC{0,40}", opaque in "[a-z0-9]{0,6}") {
            let _ = list_matches(&value, &opaque);
        }

        #[test]
        fn a_listed_tag_always_matches(
            others in proptest::collection::vec("[!#-~&&[^,\"]]{0,8}", 0..4),
            target in "[a-z0-9]{1,8}",
            weak: bool,
            position in 0usize..4,
        ) {
            let mut tags: Vec<String> = others.iter().map(|t| format!("\"{t}\"")).collect();
            let prefix = if weak { "W/" } else { "" };
            tags.insert(position.min(tags.len()), format!("{prefix}\"{target}\""));
            proptest::prop_assert_eq!(list_matches(&tags.join(", "), &target), Some(true));
        }
    }

    #[test]
    fn page_params_rules() {
        let params = |before: Option<&str>, limit: Option<&str>| ListParams {
            before: before.map(String::from),
            limit: limit.map(String::from),
        };
        assert_eq!(
            page_params(&params(None, None)).unwrap(),
            (None, DEFAULT_PAGE_LIMIT)
        );
        assert_eq!(
            page_params(&params(Some(""), Some(""))).unwrap(),
            (None, DEFAULT_PAGE_LIMIT)
        );
        assert_eq!(
            page_params(&params(Some("7"), Some("3"))).unwrap(),
            (Some(7), 3)
        );
        assert_eq!(
            page_params(&params(None, Some("1000"))).unwrap().1,
            MAX_PAGE_LIMIT
        );
        assert_eq!(
            page_params(&params(None, Some("99999999999999999999"))).ok(),
            None,
            "numbers past u64 do not parse"
        );
        for (before, limit) in [
            (Some("x"), None),
            (Some("0"), None),
            (Some("-3"), None),
            (None, Some("0")),
            (None, Some("-1")),
            (None, Some("ten")),
        ] {
            assert!(
                page_params(&params(before, limit)).is_err(),
                "{before:?} {limit:?}"
            );
        }
    }
}
