//! [`ChatService`]: the open database, the command and query sides, and the event channels.
//! Everything a router, a test or a load generator needs is reached from it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::{broadcast, oneshot, watch};

use crate::cache::Purged;
use crate::config::{Config, Database, MAX_SEED_MESSAGES};
use crate::error::Error;
use crate::model::{Message, MessagePosted, NewMessage, RoomName, RoomProjected, SeedSummary};
use crate::store::{Projector, Readers, Writer};

/// Events buffered per subscriber before a slow one starts losing the oldest.
const EVENT_BUFFER: usize = 4096;

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
        let opened = {
            let path = path.clone();
            let events = events.clone();
            tokio::task::spawn_blocking(move || {
                let writer = Writer::start(&path, events)?;
                let readers = Readers::open(&path, readers_wanted)?;
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

        let cache = crate::cache::layer(config)?;
        let purged = Arc::new(Purged::new());
        tokio::spawn(crate::cache::invalidate_on_projection(
            notices.subscribe(),
            cache.handle(),
            Arc::downgrade(&purged),
            projector.watch_position(),
        ));

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
        self.inner
            .writer
            .post(room.clone(), message)
            .await
            .map_err(|e| Error::from_store(e, &self.inner.path))
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

    /// The service as it is deployed: [`router`](Self::router) plus the middleware stack.
    ///
    /// This is the single place where middleware layers wrap the routes, outermost last:
    ///
    /// 1. the response cache (`cache-layer`): in-process tier capped at 100 ms, plus the Redis
    ///    tier (5 min) with [`Config::redis_url`] and the disk tier (1 h) with
    ///    [`Config::cache_disk`]. Only `GET`/`HEAD` answers are stored; each projection purges
    ///    its room's tag on every instance.
    pub fn app(&self) -> axum::Router {
        self.router().layer(self.inner.cache.clone())
    }

    /// A handle on the response cache of [`app`](Self::app): purge it, read its tier
    /// counters, or wait for invalidations from other instances.
    pub fn cache_handle(&self) -> cache_layer::CacheHandle {
        self.inner.cache.handle()
    }

    /// Waits until the cache purge that follows the projection of message `id` in `room` is
    /// done on every tier, at most [`Config::projection_wait`]. Returns whether it is.
    pub async fn wait_invalidated(&self, room: &RoomName, id: i64) -> bool {
        self.inner
            .purged
            .wait(room, id, self.inner.config.projection_wait)
            .await
    }

    pub(crate) fn readers(&self) -> &Readers {
        &self.inner.readers
    }
}
