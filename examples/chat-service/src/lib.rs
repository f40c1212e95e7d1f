//! A CQRS chat service on axum and SQLite: the reference application for this workspace's layers.
//!
//! The library holds the whole service so integration tests and load generators can embed it;
//! the `chat-service` binary only reads its configuration ([`Args`], clap), sets up telemetry
//! and logs, and calls [`run`].
//!
//! # Running
//!
//! ```text
//! chat-service --seed 10,1000                      # stacked, embedded defaults
//! chat-service --moderation-url http://127.0.0.1:3001 --redis-url redis://127.0.0.1:6379
//! chat-service --bare                              # same routes, every layer off
//! chat-service --memory-budget 512MB               # a bigger in-process cache
//! ```
//!
//! `--memory-budget` (default 160 MB) sizes every part that holds memory: the in-process cache
//! tier's bytes, the in-memory idempotency records, coalesced reads and SQLite's page caches
//! ([`MemoryBudget::bounds`]); docs/performance.md shows what it holds resident. The binary
//! runs on jemalloc (feature `jemalloc`, on by default).
//!
//! Every flag also reads an environment variable (`LISTEN_ADDR`, `DATABASE_URL`, `REDIS_URL`,
//! `CACHE_DISK_PATH`, `MODERATION_URL`, `CHAT_BARE`, `IDEMPOTENCY_KEY_REQUIRED`,
//! `MEMORY_BUDGET`, ...);
//! `--help` lists them with their defaults. Span export over OTLP turns on with
//! `OTEL_EXPORTER_OTLP_ENDPOINT` and the other standard `OTEL_*` variables. Once bound (after
//! `--seed`), the binary prints one line on stdout, `chat-service listening on ADDR`, so
//! `--listen 127.0.0.1:0` works for scripts. Logs go to stderr.
//!
//! # HTTP interface
//!
//! | Request | Answer |
//! |---|---|
//! | `POST /rooms/{room}/messages` with JSON `{"author", "text"}`, optional `Idempotency-Key: "key"` | `201`, the stored [`Message`], `Location: /rooms/{room}/messages/{id}` |
//! | `GET /rooms/{room}/messages?before=ID&limit=N` | `200`, a [`MessagePage`]: newest first, ids below `before`, `next_before` for the next page |
//! | `GET /rooms/{room}/messages/{id}` | `200`, the [`Message`]; `404` if the room has no such message |
//! | `GET /rooms` | `200`, a [`RoomList`]: up to [`MAX_ROOMS_LISTED`] rooms by name with counts and last ids |
//! | `GET /` | the chat page (see [The chat page](#the-chat-page)); `GET /assets/chat.css`, `GET /assets/chat.js` its style and script |
//! | `GET /healthz` | `200` `{"status":"ok"}`, without touching the database |
//! | `GET /stats` | `200` `{"db_queries", "db_duplicate_queries", "mode": "bare"\|"stacked", "breaker_state": "closed"\|"open"\|"half_open"\|null}`, `Cache-Control: no-store`, outside every layer |
//! | `GET /me/unread` with `Authorization: Bearer {user}` | `200` `{"user", "rooms": [{"room", "unread"}], "total"}`, `Cache-Control: private, no-store`, `Vary: authorization`; `401` without a user (the per-user resource: see below) |
//! | `POST /me/read/{room}` with `Authorization: Bearer {user}` | `204`: every message the room holds now counts as read for that user |
//! | `GET /metrics` (stacked) | Prometheus text: `http_server_*`, `cache_*`, `dedup_*`, `breaker_*`, [`DB_QUERIES_TOTAL`], [`DB_DUPLICATE_QUERIES_TOTAL`] |
//!
//! Stacked, every answer except `/stats` and `/metrics` carries [`TRACERESPONSE`]
//! (`traceresponse: 00-{trace id}-{span id}-{flags}`, W3C Trace Context Level 2) when span
//! export is on, cache hits included.
//!
//! Rooms are created by their first message; a room with no messages lists as an empty page.
//! Room names are 1 to 64 characters of `[A-Za-z0-9_-]`; message ids are positive `i64`s.
//! `limit` defaults to [`DEFAULT_PAGE_LIMIT`] and a larger value than [`MAX_PAGE_LIMIT`] is
//! lowered to it; an empty `before` or `limit` counts as absent.
//!
//! # The chat page
//!
//! `GET /` serves a chat page whose HTML, CSS and JavaScript are compiled into the binary (no
//! build step, nothing loaded from elsewhere; `Content-Security-Policy` allows only the page's
//! own origin). It lists the rooms, shows a room's newest page of history with "Load older
//! messages" (`before=`), posts with a fresh `Idempotency-Key` per message (reused when the
//! same message is sent again after a failure), and polls the newest page every 2 s with
//! `If-None-Match`, so new messages appear without a reload and an unchanged room costs a `304`.
//! The room is in the URL fragment (`/#lobby`).
//!
//! A status line describes the last history load: from cache or not (the `chat` member of
//! `Cache-Status`), its latency (Resource Timing) and its trace id ([`TRACERESPONSE`]). Bare,
//! the page works the same and says there is no cache layer; without span export it says there
//! is no trace id. The assets are sent with `Cache-Control: no-cache` and an `ETag`, so a new
//! binary's page shows at once and an unchanged one costs a `304`. The page goes through the
//! whole stack like any route: telemetry counts it and the cache may answer it.
//!
//! # Errors
//!
//! Every error is an RFC 9457 `application/problem+json` body `{type, title, status, detail}`
//! with `Cache-Control: no-store`:
//!
//! | Cause | Status |
//! |---|---|
//! | room name breaks the rules, message id not a positive integer | `400` |
//! | `before` or `limit` not a positive integer (or several of either) | `400` |
//! | body is not syntactically valid JSON | `400` |
//! | `Content-Type` missing or not JSON | `415` (RFC 9110's code for a media type the resource does not take) |
//! | valid JSON of the wrong shape (missing field, wrong type) | `422` |
//! | `author` empty, blank, over 64 characters or with control characters; `text` empty, blank or over 4000 characters | `422` |
//! | body over [`Config::body_limit`] (64 KiB by default) | `413` |
//! | body stalled for [`Config::body_timeout`] (10 s by default) | `408`, connection closed |
//! | unknown message, unknown path | `404` |
//! | known path, wrong method | `405` |
//! | storage fault / service closing | `500` / `503` |
//! | text rejected by the moderation service | `422` (`/problems/rejected-by-moderation`) |
//! | moderation down, too slow, or its breaker open | `503` + `Retry-After` (`/problems/moderation-unavailable`); nothing stored |
//! | stacked: `Idempotency-Key` malformed, or missing with [`Config::require_idempotency_key`] | `400` |
//! | stacked: a key reused with another body / while its first request runs | `422` / `409` + `Retry-After` |
//! | stacked: a key whose record the idempotency store lost, reused with another message | `422` (`/problems/idempotency-key-reused`) |
//!
//! # Design
//!
//! The service separates commands from queries (CQRS), both in one SQLite database in WAL mode:
//!
//! ```text
//!  POST ──► writer thread ──► messages (write model) ──► MessagePosted ──► projector task
//!   ▲                                                    (broadcast)          │
//!   │  201 once the projected position ≥ id (bounded wait)                    ▼
//!   └────────────── watch<position> ◄──────── message_view, room_view (read model)
//!                                                           ▲
//!  GET ──► reader pool (spawn_blocking) ────────────────────┘
//! ```
//!
//! - **Write side.** One thread owns the only writing connection and takes jobs from a bounded
//!   channel. A post is one `INSERT` into `messages`; right after it commits, the thread publishes
//!   [`MessagePosted`] on a tokio broadcast channel, so events leave in id order.
//!   [`ChatService::subscribe`] hands out receivers.
//! - **Projector.** A task woken by those events moves every message past its stored position
//!   into the read model: `message_view` (what queries serve) and `room_view` (per room: version,
//!   count, last id), and advances the position, all in one transaction. The event is a wake-up,
//!   not the data, so lost or batched events and restarts all converge: on open the projector
//!   first catches up with whatever the write model holds. Its transactions run on the writer
//!   thread too, so SQLite never sees two writers contend. After each step it publishes
//!   [`RoomProjected`] notices ([`ChatService::subscribe_projected`]).
//! - **Read-your-writes.** The projected position is a `tokio::sync::watch`. A post answers `201`
//!   once the position reaches its id, so a `GET` after the `201` sees the message. If the
//!   projector lags past [`Config::projection_wait`] the post still answers `201`: the message is
//!   durable and shows up moments later.
//! - **Read side.** Queries run on tokio's blocking pool with connections from a pool of
//!   [`Config::readers`] `query_only` connections and cached prepared statements; a semaphore
//!   bounds reads in flight. In WAL mode readers never wait for the writer. A list reads the room
//!   version and the page in one transaction, so the `ETag` always describes the body.
//! - **Why a separate read model.** If queries read `messages` directly, a new message could be
//!   served under the previous version's `ETag`, and a cache would keep that body as current.
//!   Serving only projected rows keeps version and content in step.
//!
//! No SQLite call runs on an async worker thread.
//!
//! # The stack
//!
//! [`ChatService::app_with`] stacks the workspace's four layers in the order of
//! `docs/architecture.md`, each through its public API:
//!
//! ```text
//! Router
//!   /stats                      outside every layer: never cached, not instrumented
//!   telemetry (outermost)       HTTP metrics and spans for every request, /metrics
//!     cache                     answers hits (Cache-Status, name "chat"); stores misses;
//!                               identical misses wait for the first and are answered as hits
//!       dedup                   whatever still reaches the routes concurrently runs one query
//!         POST .../messages:    IdempotencyLayer (memory, or Redis with REDIS_URL)
//!           handler ──► moderation client: TraceClientLayer ► BreakerLayer (+ timeout) ► hyper
//! ```
//!
//! The telemetry crate installs the global `metrics` recorder, and every layer registers its
//! series when it is built: build the [`Telemetry`] (see [`telemetry`]) before
//! [`ChatService::open`]. Tests that build several stacked apps in one process build the
//! later telemetries with `install_recorder(false)` (see [`ChatService::app_with`]).
//!
//! With [`Config::bare`] (`--bare`, `CHAT_BARE=1`) the same routes are served with every layer
//! off: no telemetry or `/metrics`, no cache (no `Cache-Status`), no coalescing, no idempotency
//! and no breaker. `/stats` is served in both modes, so a load test can compare them.
//!
//! # Posts and the moderation dependency
//!
//! With [`Config::moderation_url`] each valid post is checked with `POST {url}/v1/check` before
//! it is stored (reads never call it). Stacked, the call goes through `TraceClientLayer`, so
//! the check carries the request's `traceparent`, and a `BreakerLayer` whose timeout
//! ([`Config::moderation_timeout`], 500 ms) counts a slow answer as a failure; see
//! [`ModerationBreaker`] for its window. Bare, the call is made directly with the same timeout.
//!
//! **Degrade choice: `503`, nothing stored.** While the dependency fails, times out or its
//! breaker is open, a post answers `503 Service Unavailable` problem+json with `Retry-After`
//! (the breaker's remaining Open wait when it is open, else 1 s) and `Cache-Control: no-store`,
//! and stores nothing. No message is ever accepted unchecked, and none is lost: a `201` is
//! durable, a `503` means "not stored, retry". The retry may reuse its `Idempotency-Key`,
//! because dedup-layer never stores a `5xx` answer. While the breaker is open the dependency
//! is not called at all, so posts fail in microseconds and the dependency can recover; reads
//! are served as usual. The alternative, accepting posts as "pending moderation", would need a
//! second state in the read model and a retry queue; it is not worth it for an example.
//!
//! # When Redis fails
//!
//! With `REDIS_URL`, Redis holds the shared cache tier, carries purges between instances and
//! keeps the idempotency keys. Its failures (down, frozen, slow, connections reset) cost reads
//! and unkeyed posts nothing but the cache's 50 ms call timeout until its breaker opens; an
//! instance that lost the invalidation subscription flushes its in-process tier, and purges
//! made meanwhile are sent again once Redis answers.
//!
//! **Posts with an `Idempotency-Key` answer `503` + `Retry-After: 1` while the key store is
//! unreachable, and store nothing.** That is the layer's `OnStoreError::Reject`, kept on
//! purpose: the promise of a key is "stored once, whichever instance the retry reaches", and
//! without the shared store no instance can keep it. Running the post unprotected
//! (`FailOpen`) would store a retry twice; a per-instance fallback would too, as soon as the
//! retry reached the other instance. The retry with the same key succeeds once Redis answers.
//! If Redis fails after the post was stored, the post still answers `201` and its record is
//! written in the background as soon as Redis is back (until then the key answers `409`), so a
//! retry replays it rather than storing it again. Posts without a key are never refused because
//! of Redis. `examples/chat-service/tests/faults_redis.rs` holds this under load.
//!
//! **A key is also stored with its message in SQLite** ([`ChatService::post_once`]), scoped per
//! client as the layer scopes it. A retry whose record the store no longer has (Redis restarted
//! empty, the record expired, the in-memory store lost with its process) runs the handler again,
//! which finds the message stored with the key and answers it again (`201`,
//! `Idempotent-Replayed: true`) instead of storing it twice.
//!
//! # The per-user resource
//!
//! `GET /me/unread` is there to show that per-user data never crosses users through any tier:
//! its answers say `private, no-store` and `Vary: authorization`, so no cache tier stores them,
//! and the coalescing layer keys requests with credentials per user. The user is the bearer
//! token itself (a demo, not authentication); read marks are kept in memory per instance for at
//! most 10,000 users. The service exposes no purge or admin route: purges happen only through
//! projections.
//!
//! # Query counts
//!
//! `/stats` and the `chat_db_*` counters count the read queries (a page, a message, the room
//! list) that reach SQLite, and the duplicates among them: queries started while an identical
//! one (same kind and parameters) was in flight in this process, from the moment it asks for
//! a reader connection until it has its rows. That is the work request coalescing removes.
//! Only queries that reach the read side touch the bookkeeping, one short lock each, and it
//! tracks at most 4096 distinct queries at a time.
//!
//! # Several instances
//!
//! Two processes may serve one SQLite file (each opens it with a 5 s busy timeout, so their
//! writers wait for each other instead of failing) and share one Redis: the cache's Redis tier
//! and purges, and the idempotency keys, are then shared. Each projector projects every message
//! past the stored position, whichever process stored it; when a projector finds that the
//! position moved past what it last saw, it reports the rooms the other process projected as
//! [`RoomProjected`] notices too, so its own cache is purged and its own posts among those
//! messages answer at once instead of waiting for a notice that would never come.
//!
//! # HTTP caching
//!
//! Query responses carry the raw material for a response cache:
//!
//! | Response | `ETag` | `Cache-Control` default ([`CacheControl`]) | `Cache-Tag` |
//! |---|---|---|---|
//! | message list | `"r{room version}"` | `public, max-age=1, stale-while-revalidate=5` | `room:{room}` |
//! | one message (immutable) | `"m{id}"` | `public, max-age=3600` | `room:{room}` |
//! | `/rooms` | `"s{projected position}"` | `public, max-age=1` | `rooms` |
//!
//! The message lists and `/rooms` also carry `Surrogate-Control: max-age=60`
//! ([`CacheControl::surrogate`]) for the service's own cache, which purges them on every write and
//! removes the field before the answer leaves: browsers keep a page a second, the cache a minute.
//!
//! [`ChatService::app`] puts `cache-layer` in front of the routes: an in-process tier (entries
//! capped at 5 min alone, 100 ms when instances share Redis: see [`TtlCaps::l1_for`]), a Redis
//! tier shared by every instance (5 min) when `REDIS_URL` is set, and a
//! disk tier (1 h) when `CACHE_DISK_PATH` is set; [`TtlCaps`] (`--l1-ttl-cap`, `--l2-ttl-cap`,
//! `--l3-ttl-cap`) changes the caps. Every [`RoomProjected`] notice purges the tags
//! `room:{room}` and `rooms` on every tier of every instance, and a post answers `201` only once
//! that purge is done, so reads after a `201` are current on every instance that received the
//! invalidation; an instance that missed it serves the old page for at most the 100 ms cap (see
//! [`cache`]).
//!
//! `If-None-Match` (lists of tags, `W/` tags and `*`, compared weakly per RFC 9110) is answered
//! with `304` carrying `ETag`, `Cache-Control` and `Cache-Tag` and no body. A malformed
//! `If-None-Match` counts as absent. A list's `ETag` depends only on the room version: the query
//! string is part of the cache key, and each `(room, before, limit)` has one body per version.
//!
//! # Embedding
//!
//! ```
//! use chat_service::{ChatService, Config};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), chat_service::Error> {
//! let service = ChatService::open(&Config::temporary()).await?;
//! service.seed(2, 5).await?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! // `app_with(&telemetry)` adds telemetry and /metrics; `app()` is the rest of the stack.
//! let server = tokio::spawn(chat_service::serve(listener, service.app(), async move {
//!     let _ = stopped.await;
//! }));
//! // ... send requests ...
//! stop.send(()).ok();
//! server.await.ok();
//! # Ok(())
//! # }
//! ```

pub mod cache;
mod config;
mod error;
mod http;
mod limits;
mod memory;
mod model;
mod moderation;
mod page;
mod service;
mod store;
mod unread;

use std::future::Future;

pub use crate::config::{
    Args, CacheControl, Config, ConfigError, Database, MAX_SEED_MESSAGES, ModerationBreaker,
    TtlCaps,
};
pub use crate::error::Error;
pub use crate::http::{CACHE_TAG, DEFAULT_PAGE_LIMIT, MAX_PAGE_LIMIT, TRACERESPONSE};
pub use crate::memory::{MemoryBounds, MemoryBudget};
pub use crate::model::{
    InvalidInput, MAX_AUTHOR_LEN, MAX_ROOM_LEN, MAX_TEXT_LEN, Message, MessagePage, MessagePosted,
    NewMessage, RoomList, RoomName, RoomProjected, RoomSummary, SeedSummary,
};
pub use crate::service::{ChatService, Posted};
pub use crate::store::{DB_DUPLICATE_QUERIES_TOTAL, DB_QUERIES_TOTAL, MAX_ROOMS_LISTED};
pub use telemetry_layer::Telemetry;

/// Serves `router` on `listener` until `shutdown` completes, then lets open requests finish.
///
/// ```no_run
/// # async fn demo(service: chat_service::ChatService) -> std::io::Result<()> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
/// chat_service::serve(listener, service.app(), chat_service::shutdown_signal()).await
/// # }
/// ```
pub async fn serve<F>(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    shutdown: F,
) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Completes on the first SIGINT (Ctrl-C) or, on Unix, SIGTERM.
///
/// If a signal handler cannot be installed, that signal is ignored and the others still count.
pub async fn shutdown_signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => tracing::info!("SIGINT received, shutting down"),
        () = terminate => tracing::info!("SIGTERM received, shutting down"),
    }
}

/// The binary's telemetry: service name `chat-service`, the global `metrics` recorder installed
/// (so every layer's series reach `/metrics`), OTLP span export when `OTEL_EXPORTER_OTLP_ENDPOINT`
/// or another standard `OTEL_*` variable says so. No `tracing` subscriber is installed: combine
/// [`Telemetry::otel_layer`] with your own log layer, as the binary does.
///
/// Build it before [`ChatService::open`]: the layers register their metrics when built.
pub fn telemetry() -> Result<Telemetry, Error> {
    Ok(Telemetry::builder()
        .service_name("chat-service")
        .install_subscriber(false)
        .build()?)
}

/// Runs the service as the binary does: open the database, seed it if asked, bind
/// [`Config::listen`], print `chat-service listening on ADDR` as one line on stdout, serve
/// [`ChatService::app_with`] (or, bare or without `telemetry`, [`ChatService::app`]) until
/// SIGINT or SIGTERM, then close the database and flush the spans.
pub async fn run(config: Config, telemetry: Option<Telemetry>) -> Result<(), Error> {
    use std::io::Write;

    let service = ChatService::open(&config).await?;
    if let Some((rooms, per_room)) = config.seed {
        let seeded = service.seed(rooms, per_room).await?;
        tracing::info!(rooms, messages = seeded.messages, "seeded");
    }
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    {
        // One line, flushed at once: a load test starting this process reads the port from it.
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "chat-service listening on {addr}")?;
        stdout.flush()?;
    }
    let mode = if config.bare { "bare" } else { "stacked" };
    tracing::info!(%addr, mode, "listening");
    let app = match &telemetry {
        Some(telemetry) => service.app_with(telemetry),
        None => service.app(),
    };
    serve(listener, app, shutdown_signal()).await?;
    service.close().await;
    if let Some(telemetry) = telemetry
        && let Err(error) = telemetry.shutdown()
    {
        tracing::warn!(%error, "spans could not be flushed at exit");
    }
    tracing::info!("stopped");
    Ok(())
}
