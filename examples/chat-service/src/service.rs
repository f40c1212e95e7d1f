//! [`ChatService`]: the open database, the command and query sides, and the event channels.
//! Everything a router, a test or a load generator needs is reached from it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use dedup_layer::store::{MemoryStore, RedisStore};
use dedup_layer::{DedupLayer, IdempotencyLayer};
use telemetry_layer::Telemetry;
use tokio::sync::{broadcast, oneshot, watch};

use crate::cache::Purged;
use crate::config::ConfigError;
use crate::config::{Config, Database, MAX_SEED_MESSAGES};
use crate::error::Error;
use crate::model::{Message, MessagePosted, NewMessage, RoomName, RoomProjected, SeedSummary};
use crate::moderation::ModerationClient;
use crate::store::{Projector, Readers, Stored, Writer};

/// Events buffered per subscriber before a slow one starts losing the oldest.
const EVENT_BUFFER: usize = 4096;
/// Prefix of the idempotency records in Redis.
const IDEMPOTENCY_PREFIX: &str = "chat:idem:";

/// The idempotency layer of `POST /rooms/{room}/messages`, over the store the configuration
/// chose: shared through Redis when `REDIS_URL` is set, so a retry on another instance replays.
#[derive(Clone, Debug)]
enum PostKeys {
    Memory(IdempotencyLayer<MemoryStore>),
    Redis(IdempotencyLayer<RedisStore>),
}

impl PostKeys {
    fn new(config: &Config) -> Result<Self, ConfigError> {
        let bad = |e: dedup_layer::ConfigError| ConfigError::new(format!("idempotency: {e}"));
        Ok(match &config.redis_url {
            Some(url) if !config.bare => {
                let store = RedisStore::builder(url.as_str())
                    .prefix(IDEMPOTENCY_PREFIX)
                    .build()
                    .map_err(|e| ConfigError::new(format!("REDIS_URL: {e}")))?;
                Self::Redis(
                    IdempotencyLayer::builder(store)
                        .required(config.require_idempotency_key)
                        .max_request_bytes(config.body_limit)
                        .build()
                        .map_err(bad)?,
                )
            }
            _ => Self::Memory(
                IdempotencyLayer::builder(memory_store(config)?)
                    .required(config.require_idempotency_key)
                    .max_request_bytes(config.body_limit)
                    .build()
                    .map_err(bad)?,
            ),
        })
    }
}

/// The in-memory idempotency store, bounded by the memory budget.
fn memory_store(config: &Config) -> Result<MemoryStore, ConfigError> {
    let bounds = config.memory_bounds();
    MemoryStore::builder()
        .max_entries(bounds.idempotency_entries)
        .max_bytes(bounds.idempotency_bytes)
        .build()
        .map_err(|e| ConfigError::new(format!("idempotency: {e}")))
}

/// What [`ChatService::post_once`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Posted {
    /// The message was stored now.
    New(Message),
    /// A message was stored earlier with the same key; nothing was stored now.
    Existing(Message),
}

impl Posted {
    /// The stored message.
    pub fn message(&self) -> &Message {
        match self {
            Self::New(message) | Self::Existing(message) => message,
        }
    }
}

/// A running chat service: storage, projector and event channels.
///
/// Cheap to clone; every clone is the same service. The storage stops when the last clone (the
/// routers hold some) is dropped, or at once with [`close`](Self::close).
///
/// ```
/// use chat_service::{ChatService, Config, NewMessage, RoomName};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), chat_service::Error> {
/// let service = ChatService::open(&Config::temporary()).await?;
/// let mut events = service.subscribe();
///
/// let room = RoomName::parse("lobby")?;
/// let message = NewMessage { author: "ada".into(), text: "hello".into() };
/// let stored = service.post(&room, message).await?;
/// assert_eq!(events.recv().await.unwrap().id, stored.id);
///
/// // Serve it: `chat_service::serve(listener, service.app(), shutdown).await`.
/// let app: axum::Router = service.app();
/// # drop(app);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct ChatService {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    path: PathBuf,
    writer: Writer,
    readers: Readers,
    projector: Projector,
    position: watch::Receiver<i64>,
    events: broadcast::Sender<MessagePosted>,
    notices: broadcast::Sender<RoomProjected>,
    /// The response cache of [`ChatService::app`], purged from projection notices.
    cache: cache_layer::CacheLayer,
    purged: Arc<Purged>,
    /// Coalescing of identical reads, under the cache.
    dedup: DedupLayer,
    post_keys: PostKeys,
    moderation: Option<ModerationClient>,
    /// Per-user read marks behind `GET /me/unread`.
    read_marks: Arc<crate::unread::ReadMarks>,
    /// Dropping this stops the projector task, which releases the writer.
    _stop_projector: oneshot::Sender<()>,
    /// Declared last so the directory outlives the connections in it.
    _temp_dir: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for ChatService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatService")
            .field("database", &self.inner.path)
            .field("projected", &*self.inner.position.borrow())
            .finish_non_exhaustive()
    }
}

impl ChatService {
    /// Opens (or creates) the database, brings the read model up to date and starts the
    /// projector.
    ///
    /// Must be called within a tokio runtime.
    pub async fn open(config: &Config) -> Result<Self, Error> {
        let (temp_dir, path) = match &config.database {
            Database::File(path) => (None, path.clone()),
            Database::Temporary => {
                let dir = tempfile::Builder::new().prefix("chat-service-").tempdir()?;
                let path = dir.path().join("chat.db");
                (Some(dir), path)
            }
        };
        let (events, projector_events) = broadcast::channel(EVENT_BUFFER);
        let (notices, _) = broadcast::channel(EVENT_BUFFER);
        let readers_wanted = config.readers;
        let read_delay = config.read_delay;
        let page_cache_kib = config.memory_bounds().sqlite_cache_kib;
        let opened = {
            let path = path.clone();
            let events = events.clone();
            tokio::task::spawn_blocking(move || {
                let writer = Writer::start(&path, events, page_cache_kib)?;
                let readers = Readers::open(&path, readers_wanted, read_delay, page_cache_kib)?;
                Ok::<_, crate::store::StoreError>((writer, readers))
            })
            .await
            .map_err(|e| Error::Io(std::io::Error::other(e)))?
        };
        let (writer, readers) = opened.map_err(|e| Error::from_store(e, &path))?;

        let projector = Projector::new(writer.clone(), notices.clone());
        projector
            .catch_up()
            .await
            .map_err(|e| Error::from_store(e, &path))?;
        let (stop_projector, stop) = oneshot::channel();
        tokio::spawn(projector.clone().run(projector_events, stop));

        // Layers register their metrics when built: the recorder, if any, is installed by now.
        let cache = crate::cache::layer(config)?;
        let purged = Arc::new(Purged::new());
        if !config.bare {
            tokio::spawn(crate::cache::invalidate_on_projection(
                notices.subscribe(),
                cache.handle(),
                Arc::downgrade(&purged),
                projector.watch_position(),
            ));
        }
        let bounds = config.memory_bounds();
        let dedup = DedupLayer::builder()
            .max_inflight(bounds.dedup_inflight)
            .max_body_bytes(bounds.dedup_body_bytes)
            .build()
            .map_err(|e| ConfigError::new(format!("dedup: {e}")))?;
        let post_keys = PostKeys::new(config)?;
        let moderation = ModerationClient::new(config)?;

        tracing::info!(database = %path.display(), "chat service storage open");
        Ok(Self {
            inner: Arc::new(Inner {
                config: config.clone(),
                position: projector.watch_position(),
                path,
                writer,
                readers,
                projector,
                events,
                notices,
                cache,
                purged,
                dedup,
                post_keys,
                moderation,
                read_marks: crate::unread::marks(),
                _stop_projector: stop_projector,
                _temp_dir: temp_dir,
            }),
        })
    }

    /// The configuration the service was opened with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Path of the SQLite database file.
    pub fn database_path(&self) -> &Path {
        &self.inner.path
    }

    /// Receives a [`MessagePosted`] for every message stored from now on, in id order.
    ///
    /// A receiver that falls more than 4096 events behind loses the oldest ones and is told so
    /// by [`RecvError::Lagged`](tokio::sync::broadcast::error::RecvError::Lagged). Seeded
    /// messages publish no events.
    pub fn subscribe(&self) -> broadcast::Receiver<MessagePosted> {
        self.inner.events.subscribe()
    }

    /// Receives a [`RoomProjected`] each time the read model of a room changes, after the
    /// change is visible to queries. Seeds publish these too.
    pub fn subscribe_projected(&self) -> broadcast::Receiver<RoomProjected> {
        self.inner.notices.subscribe()
    }

    /// Id of the newest message visible to queries.
    pub fn projected_position(&self) -> i64 {
        *self.inner.position.borrow()
    }

    /// Validates and stores a message: the command side of `POST /rooms/{room}/messages`.
    ///
    /// Returns once the message is durable. It becomes visible to queries when the projector
    /// has applied it; [`wait_projected`](Self::wait_projected) waits for that.
    pub async fn post(&self, room: &RoomName, message: NewMessage) -> Result<Message, Error> {
        message.validate()?;
        match self
            .inner
            .writer
            .post(room.clone(), message, None)
            .await
            .map_err(|e| Error::from_store(e, &self.inner.path))?
        {
            Stored::New(stored) | Stored::Existing(stored) => Ok(stored),
        }
    }

    /// Stores a message once per `key`: the first post with a key stores it, a later one with the
    /// same key returns that message ([`Posted::Existing`]) and stores nothing, whichever process
    /// sharing the database it reaches. The key is kept with the message in SQLite, so this holds
    /// when the idempotency store in front (Redis, or memory) has lost its record: Redis
    /// restarted empty, the record expired, the process restarted. Scope `key` per client, as the
    /// idempotency layer does.
    ///
    /// Fails with [`Error::KeyReused`] when the key was stored with another room, author or text.
    pub async fn post_once(
        &self,
        room: &RoomName,
        message: NewMessage,
        key: &str,
    ) -> Result<Posted, Error> {
        message.validate()?;
        let stored = self
            .inner
            .writer
            .post(room.clone(), message.clone(), Some(key.to_owned()))
            .await
            .map_err(|e| Error::from_store(e, &self.inner.path))?;
        match stored {
            Stored::New(stored) => Ok(Posted::New(stored)),
            Stored::Existing(stored)
                if stored.room == room.as_str()
                    && stored.author == message.author
                    && stored.text == message.text =>
            {
                Ok(Posted::Existing(stored))
            }
            Stored::Existing(_) => Err(Error::KeyReused),
        }
    }

    /// Waits until the message with `id` is visible to queries, at most
    /// [`Config::projection_wait`]. Returns whether it is.
    pub async fn wait_projected(&self, id: i64) -> bool {
        let mut position = self.inner.position.clone();
        let wait = position.wait_for(|seen| *seen >= id);
        match tokio::time::timeout(self.inner.config.projection_wait, wait).await {
            Ok(Ok(_)) => true,
            Ok(Err(_)) | Err(_) => {
                tracing::warn!(
                    id,
                    "read model has not caught up within the projection wait"
                );
                false
            }
        }
    }

    /// Stores `per_room` messages in each of `rooms` rooms named `room-1` to `room-{rooms}`, in
    /// one transaction, and waits until the read model shows them.
    ///
    /// For load tests and demos: it is a bulk path that publishes no [`MessagePosted`] events.
    /// At most 10 million messages per call.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), chat_service::Error> {
    /// let service = chat_service::ChatService::open(&chat_service::Config::temporary()).await?;
    /// let seeded = service.seed(3, 10).await?;
    /// assert_eq!(seeded.messages, 30);
    /// assert_eq!(service.projected_position(), 30);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn seed(&self, rooms: u32, per_room: u32) -> Result<SeedSummary, Error> {
        let total = u64::from(rooms) * u64::from(per_room);
        if total > MAX_SEED_MESSAGES {
            return Err(Error::Config(crate::ConfigError::new(format!(
                "seed of {total} messages is over the limit of {MAX_SEED_MESSAGES}"
            ))));
        }
        let summary = self
            .inner
            .writer
            .seed(rooms, per_room)
            .await
            .map_err(|e| Error::from_store(e, &self.inner.path))?;
        self.inner
            .projector
            .catch_up()
            .await
            .map_err(|e| Error::from_store(e, &self.inner.path))?;
        Ok(summary)
    }

    /// Stops the writer after the writes already queued and closes its connection.
    ///
    /// Later posts through any clone fail with [`Error::Closed`]; queries keep working until
    /// the last clone is dropped. Use it before reopening the same file in one process.
    pub async fn close(self) {
        self.inner.writer.close().await;
    }

    /// The bare routes of the service, with no middleware.
    ///
    /// Besides the routes it applies the request body limit ([`Config::body_limit`]) and
    /// answers unknown paths (`404`) and methods (`405`) with problem+json.
    pub fn router(&self) -> axum::Router {
        crate::http::router(self.clone())
    }

    /// The service with the layers its [`Config::bare`] mode asks for, and `GET /stats`, but
    /// without telemetry (no `/metrics`): [`app_with`](Self::app_with) adds it.
    ///
    /// Stacked, this is the single place where middleware wraps the routes, outermost last:
    ///
    /// 1. the response cache (`cache-layer`): in-process tier capped at [`TtlCaps::l1_for`]
    ///    (5 min alone, 100 ms with Redis), plus the Redis tier with [`Config::redis_url`] and
    ///    the disk tier with
    ///    [`Config::cache_disk`]. Only `GET`/`HEAD` answers are stored; each projection purges
    ///    its room's tag on every instance;
    /// 2. request coalescing (`dedup-layer`'s `DedupLayer`): identical reads that miss the cache
    ///    at the same time run one query;
    /// 3. on `POST /rooms/{room}/messages` only, `IdempotencyLayer`: a retry with the same
    ///    `Idempotency-Key` replays the first answer (in memory, or in Redis with
    ///    [`Config::redis_url`] so every instance replays it); required with
    ///    [`Config::require_idempotency_key`].
    ///
    /// The post handler calls the moderation service through a breaker (see the crate docs).
    /// Bare, the routes are served as they are.
    ///
    /// [`TtlCaps::l1_for`]: crate::TtlCaps::l1_for
    pub fn app(&self) -> axum::Router {
        let stats = crate::http::stats_router(self.clone());
        if self.inner.config.bare {
            return stats.merge(
                self.body_deadline(self.router().merge(crate::unread::router(self.clone()))),
            );
        }
        stats.merge(self.stacked_routes(None))
    }

    /// [`app`](Self::app) with `telemetry` outermost: HTTP server metrics and spans for every
    /// request (including those the cache answers) and `GET /metrics`. `/stats` stays outside
    /// it. Bare, `telemetry` is not used and this is [`app`](Self::app).
    ///
    /// The layers' own metrics (`cache_`, `dedup_`, `breaker_`, `chat_db_`) go through the
    /// global `metrics` recorder, which the first [`Telemetry`] built with the default
    /// `install_recorder(true)` installs; build it before [`open`](Self::open), because the
    /// layers register their series when built. A process that builds several apps (tests)
    /// builds the later telemetries with `install_recorder(false)`: their `/metrics` then show
    /// the HTTP series only, and every layer's series land in the first one's.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let telemetry = telemetry_layer::Telemetry::builder()
    ///     .service_name("chat-service")
    ///     // Doc tests share a process; the binary keeps the default and installs it.
    ///     .install_recorder(false)
    ///     .install_subscriber(false)
    ///     .build()?;
    /// let service = chat_service::ChatService::open(&chat_service::Config::temporary()).await?;
    /// let app: axum::Router = service.app_with(&telemetry);
    /// # drop(app);
    /// # Ok(())
    /// # }
    /// ```
    pub fn app_with(&self, telemetry: &Telemetry) -> axum::Router {
        let stats = crate::http::stats_router(self.clone());
        if self.inner.config.bare {
            return stats.merge(
                self.body_deadline(self.router().merge(crate::unread::router(self.clone()))),
            );
        }
        stats.merge(self.stacked_routes(Some(telemetry)))
    }

    fn stacked_routes(&self, telemetry: Option<&Telemetry>) -> axum::Router {
        let routes = match self.inner.post_keys.clone() {
            PostKeys::Memory(keys) => {
                crate::http::router_with_post_layer(self.clone(), move |post| {
                    post.route_layer(keys)
                })
            }
            PostKeys::Redis(keys) => {
                crate::http::router_with_post_layer(self.clone(), move |post| {
                    post.route_layer(keys)
                })
            }
        };
        let routes = routes.merge(crate::unread::router(self.clone()));
        // Outermost first. Telemetry (when given) sees every request; the body deadline cuts off a
        // stalled body wherever it is being read; every answer (hits too) names the request's trace;
        // the cache answers hits and dedup coalesces the misses below it. The per-user routes sit
        // under all of them, so their private answers pass every tier. One `Router::layer` for the
        // whole stack: each call boxes every route's service and future once more, which on the hit
        // path costs about as much as a layer's own work.
        let stack = tower::ServiceBuilder::new()
            .layer(axum::middleware::from_fn_with_state(
                self.inner.config.body_timeout,
                crate::limits::body_timeout,
            ))
            .layer(axum::middleware::from_fn(crate::http::trace_response))
            .layer(self.inner.cache.clone())
            .layer(self.inner.dedup.clone());
        let Some(telemetry) = telemetry else {
            return routes.layer(stack);
        };
        let stack = tower::ServiceBuilder::new()
            .layer(telemetry.layer())
            // The middleware below takes axum's body type; telemetry hands on its counting wrapper.
            .map_request(|req: axum::http::Request<_>| req.map(axum::body::Body::new))
            .layer(stack);
        // `merge` keeps the argument's fallback: the instrumented one, not `/metrics`' default.
        telemetry.metrics_router().merge(routes.layer(stack))
    }

    /// `routes` with the request body deadline ([`Config::body_timeout`]) around them.
    fn body_deadline(&self, routes: axum::Router) -> axum::Router {
        routes.layer(axum::middleware::from_fn_with_state(
            self.inner.config.body_timeout,
            crate::limits::body_timeout,
        ))
    }

    /// The breaker around the moderation client: stacked with [`Config::moderation_url`] only.
    /// Observe or control it (`state()`, `subscribe()`, `force_open()`, `reset()`).
    pub fn moderation_breaker(&self) -> Option<breaker_layer::CircuitBreaker> {
        self.moderation()?.breaker().cloned()
    }

    /// `(db_queries, db_duplicate_queries)` as `GET /stats` reports them.
    pub fn query_counts(&self) -> (u64, u64) {
        self.inner.readers.stats().snapshot()
    }

    /// A handle on the response cache of [`app`](Self::app): purge it, read its tier
    /// counters, or wait for invalidations from other instances.
    pub fn cache_handle(&self) -> cache_layer::CacheHandle {
        self.inner.cache.handle()
    }

    /// A handle on the read coalescing of [`app`](Self::app): how many queries lead and how
    /// many callers wait on them right now (both zero when the service is idle).
    pub fn dedup_handle(&self) -> dedup_layer::DedupHandle {
        self.inner.dedup.handle()
    }

    /// Waits until the cache purge that follows the projection of message `id` in `room` is
    /// done on every tier, at most [`Config::projection_wait`]. Returns whether it is.
    pub async fn wait_invalidated(&self, room: &RoomName, id: i64) -> bool {
        if self.inner.config.bare {
            // Bare, nothing is cached and no purge runs.
            return true;
        }
        self.inner
            .purged
            .wait(room, id, self.inner.config.projection_wait)
            .await
    }

    pub(crate) fn readers(&self) -> &Readers {
        &self.inner.readers
    }

    pub(crate) fn read_marks(&self) -> &crate::unread::ReadMarks {
        &self.inner.read_marks
    }

    pub(crate) fn moderation(&self) -> Option<&ModerationClient> {
        self.inner.moderation.as_ref()
    }
}
