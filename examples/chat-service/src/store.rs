//! SQLite storage: one writer thread for every write, a pool of reader connections, and the
//! projector that keeps the read model in step with the write model.
//!
//! No SQLite call runs on an async worker thread: writes go to the writer thread over a bounded
//! channel, reads run on tokio's blocking pool with a pooled connection.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use tokio::sync::{Semaphore, broadcast, mpsc, oneshot, watch};

use crate::model::{
    Message, MessagePosted, NewMessage, RoomName, RoomProjected, RoomSummary, SeedSummary,
};

/// How long a connection waits for another one's lock before giving up with `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Jobs queued for the writer thread; posts wait for room beyond this.
const WRITER_QUEUE: usize = 1024;
/// Messages projected in one read-model transaction, which bounds its memory and lock time.
const PROJECTION_CHUNK: i64 = 10_000;
/// Prepared statements cached per connection.
const STATEMENT_CACHE: usize = 32;
/// Pause before the projector retries after a failed projection.
const PROJECTION_RETRY: Duration = Duration::from_millis(100);

/// Distinct read queries whose in-flight count is kept; past it a new query is counted but not
/// compared, which keeps the duplicate count cheap and memory bounded under any load.
const MAX_TRACKED_QUERIES: usize = 4096;

/// Most rooms `GET /rooms` lists.
pub const MAX_ROOMS_LISTED: usize = 1000;

/// Counter of read queries that reached SQLite (`db_queries` in `/stats`).
pub const DB_QUERIES_TOTAL: &str = "chat_db_queries_total";
/// Counter of read queries started while an identical one was in flight in the same process
/// (`db_duplicate_queries` in `/stats`): the work request coalescing removes.
pub const DB_DUPLICATE_QUERIES_TOTAL: &str = "chat_db_duplicate_queries_total";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS messages (
    id         INTEGER PRIMARY KEY,
    room       TEXT    NOT NULL,
    author     TEXT    NOT NULL,
    text       TEXT    NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS message_view (
    id         INTEGER PRIMARY KEY,
    room       TEXT    NOT NULL,
    author     TEXT    NOT NULL,
    text       TEXT    NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS message_view_room_id ON message_view (room, id);
CREATE TABLE IF NOT EXISTS room_view (
    room          TEXT    PRIMARY KEY,
    version       INTEGER NOT NULL,
    message_count INTEGER NOT NULL,
    last_id       INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS projection (
    name     TEXT    PRIMARY KEY,
    position INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS post_keys (
    key        TEXT    PRIMARY KEY,
    message_id INTEGER NOT NULL
) WITHOUT ROWID;
INSERT OR IGNORE INTO projection (name, position) VALUES ('messages', 0);
";

/// A storage fault, as the service's callers see it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[error("the writer has stopped")]
    WriterClosed,
    #[error("a reader task failed: {0}")]
    ReaderFailed(String),
    #[error("{0}")]
    Setup(String),
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Sets the connection's page cache to `kib` KiB (the memory budget's SQLite share).
fn limit_page_cache(conn: &Connection, kib: u32) -> rusqlite::Result<()> {
    // A negative cache_size is in KiB rather than pages.
    conn.pragma_update(None, "cache_size", -i64::from(kib))
}

fn open_writer(path: &Path, cache_kib: u32) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    limit_page_cache(&conn, cache_kib)?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Setup(format!(
            "{} cannot use WAL mode (journal_mode is {mode})",
            path.display()
        )));
    }
    // In WAL mode NORMAL keeps the database consistent after a crash; only the last commits
    // before a power loss may be lost.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.execute_batch(SCHEMA)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

fn open_reader(path: &Path, cache_kib: u32) -> rusqlite::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    limit_page_cache(&conn, cache_kib)?;
    conn.pragma_update(None, "query_only", true)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

/// The read model advanced by one projection step.
#[derive(Debug)]
pub(crate) struct Projection {
    /// Id of the newest message now in the read model.
    pub(crate) position: i64,
    /// Whether the read model holds every stored message.
    pub(crate) caught_up: bool,
    /// Rooms changed by this step.
    pub(crate) rooms: Vec<RoomProjected>,
}

/// What storing a post did.
#[derive(Debug)]
pub(crate) enum Stored {
    /// The message was stored now.
    New(Message),
    /// Its key was already stored, with this message.
    Existing(Message),
}

enum Job {
    Post {
        room: RoomName,
        message: NewMessage,
        /// The post's client-scoped idempotency key, stored with it.
        key: Option<String>,
        reply: oneshot::Sender<rusqlite::Result<Stored>>,
    },
    Seed {
        rooms: u32,
        per_room: u32,
        reply: oneshot::Sender<rusqlite::Result<SeedSummary>>,
    },
    Project {
        /// The position this process last saw, to report rooms projected by another process
        /// since; `None` on the first step after opening.
        known: Option<i64>,
        reply: oneshot::Sender<rusqlite::Result<Projection>>,
    },
    Close {
        reply: oneshot::Sender<()>,
    },
}

/// Handle to the writer thread, the only connection that writes.
#[derive(Clone, Debug)]
pub(crate) struct Writer {
    jobs: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Post { .. } => "Post",
            Self::Seed { .. } => "Seed",
            Self::Project { .. } => "Project",
            Self::Close { .. } => "Close",
        })
    }
}

impl Writer {
    /// Opens the database (creating the schema) with a page cache of `cache_kib` KiB and starts
    /// the writer thread.
    pub(crate) fn start(
        path: &Path,
        events: broadcast::Sender<MessagePosted>,
        cache_kib: u32,
    ) -> Result<Self, StoreError> {
        let conn = open_writer(path, cache_kib)?;
        let (jobs, rx) = mpsc::channel(WRITER_QUEUE);
        std::thread::Builder::new()
            .name("chat-sqlite-writer".into())
            .spawn(move || writer_loop(conn, rx, events))
            .map_err(|e| StoreError::Setup(format!("cannot start the writer thread: {e}")))?;
        Ok(Self { jobs })
    }

    async fn call<T>(&self, job: impl FnOnce(oneshot::Sender<T>) -> Job) -> Result<T, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.jobs
            .send(job(reply))
            .await
            .map_err(|_| StoreError::WriterClosed)?;
        rx.await.map_err(|_| StoreError::WriterClosed)
    }

    /// Stores a message; with a `key`, only if no message was stored with that key yet, else
    /// returns that one.
    pub(crate) async fn post(
        &self,
        room: RoomName,
        message: NewMessage,
        key: Option<String>,
    ) -> Result<Stored, StoreError> {
        Ok(self
            .call(|reply| Job::Post {
                room,
                message,
                key,
                reply,
            })
            .await??)
    }

    pub(crate) async fn seed(&self, rooms: u32, per_room: u32) -> Result<SeedSummary, StoreError> {
        Ok(self
            .call(|reply| Job::Seed {
                rooms,
                per_room,
                reply,
            })
            .await??)
    }

    pub(crate) async fn project(&self, known: Option<i64>) -> Result<Projection, StoreError> {
        Ok(self.call(|reply| Job::Project { known, reply }).await??)
    }

    /// Stops the writer thread after the jobs queued before this one; its connection closes.
    pub(crate) async fn close(&self) {
        // An error means the thread has already stopped.
        let _ = self.call(|reply| Job::Close { reply }).await;
    }
}

fn writer_loop(
    mut conn: Connection,
    mut jobs: mpsc::Receiver<Job>,
    events: broadcast::Sender<MessagePosted>,
) {
    while let Some(job) = jobs.blocking_recv() {
        match job {
            Job::Post {
                room,
                message,
                key,
                reply,
            } => {
                let result = match key {
                    Some(key) => insert_keyed(&mut conn, &room, &message, &key),
                    None => insert_message(&conn, &room, &message).map(Stored::New),
                };
                if let Ok(Stored::New(stored)) = &result {
                    // Sent from this thread right after the commit, events leave in id order.
                    // No subscriber is not an error: the projector resubscribes by catching up.
                    let _ = events.send(MessagePosted {
                        room,
                        id: stored.id,
                    });
                }
                let _ = reply.send(result);
            }
            Job::Seed {
                rooms,
                per_room,
                reply,
            } => {
                let _ = reply.send(seed(&mut conn, rooms, per_room));
            }
            Job::Project { known, reply } => {
                let _ = reply.send(project(&mut conn, known));
            }
            Job::Close { reply } => {
                drop(conn);
                let _ = reply.send(());
                return;
            }
        }
    }
}

fn insert_message(
    conn: &Connection,
    room: &RoomName,
    message: &NewMessage,
) -> rusqlite::Result<Message> {
    let created_at = now_millis();
    conn.prepare_cached(
        "INSERT INTO messages (room, author, text, created_at) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute((room.as_str(), &message.author, &message.text, created_at))?;
    Ok(Message {
        id: conn.last_insert_rowid(),
        room: room.as_str().to_owned(),
        author: message.author.clone(),
        text: message.text.clone(),
        created_at,
    })
}

/// Stores `message` with `key`, in one transaction that takes the write lock first, so that two
/// processes sharing the database never both store a message for one key. When the key is
/// already stored, nothing is written and its message is returned.
fn insert_keyed(
    conn: &mut Connection,
    room: &RoomName,
    message: &NewMessage,
    key: &str,
) -> rusqlite::Result<Stored> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let existing = tx
        .prepare_cached(
            "SELECT m.id, m.room, m.author, m.text, m.created_at
             FROM post_keys k JOIN messages m ON m.id = k.message_id WHERE k.key = ?1",
        )?
        .query_row([key], |row| {
            Ok(Message {
                id: row.get(0)?,
                room: row.get(1)?,
                author: row.get(2)?,
                text: row.get(3)?,
                created_at: row.get(4)?,
            })
        })
        .optional()?;
    if let Some(existing) = existing {
        tx.commit()?;
        return Ok(Stored::Existing(existing));
    }
    let stored = insert_message(&tx, room, message)?;
    tx.prepare_cached("INSERT INTO post_keys (key, message_id) VALUES (?1, ?2)")?
        .execute((key, stored.id))?;
    tx.commit()?;
    Ok(Stored::New(stored))
}

fn seed(conn: &mut Connection, rooms: u32, per_room: u32) -> rusqlite::Result<SeedSummary> {
    let names: Vec<String> = (1..=rooms).map(|r| format!("room-{r}")).collect();
    let created_at = now_millis();
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut last_id = None;
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO messages (room, author, text, created_at) VALUES (?1, ?2, ?3, ?4)",
        )?;
        // Rooms take turns, so ids interleave across rooms as live traffic would.
        for n in 1..=per_room {
            let text = format!("seeded message {n}");
            for (r, name) in names.iter().enumerate() {
                let author = format!("seeder-{}", r % 16);
                insert.execute((name, &author, &text, created_at))?;
                last_id = Some(tx.last_insert_rowid());
            }
        }
    }
    tx.commit()?;
    Ok(SeedSummary {
        rooms,
        messages: u64::from(rooms) * u64::from(per_room),
        last_id,
    })
}

/// Moves up to [`PROJECTION_CHUNK`] messages past the projection's position into the read model.
///
/// The position lives in the same database and moves in the same transaction as the read model,
/// so a crash at any point leaves them consistent and the next step resumes where this one ended.
///
/// Several processes may share the database, and each one's projector projects every message
/// past the stored position, its own or not. When the stored position is past `known` (what this
/// process saw last), another process projected `(known, position]`: the rooms it changed are
/// reported too, so this process purges its cache for them and its posts among them stop
/// waiting for a notice that would otherwise never come.
fn project(conn: &mut Connection, known: Option<i64>) -> rusqlite::Result<Projection> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let from: i64 = tx
        .prepare_cached("SELECT position FROM projection WHERE name = 'messages'")?
        .query_row([], |row| row.get(0))?;
    let mut rooms = match known {
        Some(known) if known < from => projected_elsewhere(&tx, known, from)?,
        _ => Vec::new(),
    };
    let newest: i64 = tx
        .prepare_cached("SELECT COALESCE(MAX(id), 0) FROM messages")?
        .query_row([], |row| row.get(0))?;
    if newest <= from {
        return Ok(Projection {
            position: from,
            caught_up: true,
            rooms,
        });
    }
    let to = newest.min(from.saturating_add(PROJECTION_CHUNK));
    tx.prepare_cached(
        "INSERT INTO message_view (id, room, author, text, created_at)
         SELECT id, room, author, text, created_at FROM messages WHERE id > ?1 AND id <= ?2",
    )?
    .execute((from, to))?;
    let changes: Vec<(String, i64, i64)> = tx
        .prepare_cached(
            "SELECT room, COUNT(*), MAX(id) FROM messages WHERE id > ?1 AND id <= ?2 GROUP BY room",
        )?
        .query_map((from, to), |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    rooms.reserve(changes.len());
    {
        let mut upsert = tx.prepare_cached(
            "INSERT INTO room_view (room, version, message_count, last_id) VALUES (?1, ?2, ?2, ?3)
             ON CONFLICT (room) DO UPDATE SET
                 version = version + excluded.version,
                 message_count = message_count + excluded.message_count,
                 last_id = excluded.last_id
             RETURNING version",
        )?;
        for (room, count, last_id) in changes {
            let version: i64 = upsert.query_row((&room, count, last_id), |row| row.get(0))?;
            // Only validated names are ever stored; anything else came from outside the
            // service and gets no notice.
            if let Ok(room) = RoomName::parse(&room) {
                rooms.push(RoomProjected {
                    room,
                    version,
                    last_id,
                });
            }
        }
    }
    tx.prepare_cached("UPDATE projection SET position = ?1 WHERE name = 'messages'")?
        .execute([to])?;
    tx.commit()?;
    Ok(Projection {
        position: to,
        caught_up: to == newest,
        rooms,
    })
}

/// The rooms whose messages in `(after, through]` another process projected, with their
/// current version and newest id.
fn projected_elsewhere(
    tx: &rusqlite::Transaction<'_>,
    after: i64,
    through: i64,
) -> rusqlite::Result<Vec<RoomProjected>> {
    let changed: Vec<String> = tx
        .prepare_cached("SELECT DISTINCT room FROM messages WHERE id > ?1 AND id <= ?2")?
        .query_map((after, through), |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut current =
        tx.prepare_cached("SELECT version, last_id FROM room_view WHERE room = ?1")?;
    let mut rooms = Vec::with_capacity(changed.len());
    for room in changed {
        let Some((version, last_id)) = current
            .query_row([&room], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()?
        else {
            continue;
        };
        if let Ok(room) = RoomName::parse(&room) {
            rooms.push(RoomProjected {
                room,
                version,
                last_id,
            });
        }
    }
    Ok(rooms)
}

/// Advances the read model and tells waiters and subscribers how far it got.
#[derive(Clone, Debug)]
pub(crate) struct Projector {
    writer: Writer,
    position: Arc<watch::Sender<i64>>,
    notices: broadcast::Sender<RoomProjected>,
    /// Set after the first step: from then on a jump of the stored position past ours means
    /// another process projected (see [`project`]).
    primed: Arc<AtomicBool>,
}

impl Projector {
    pub(crate) fn new(writer: Writer, notices: broadcast::Sender<RoomProjected>) -> Self {
        Self {
            writer,
            position: Arc::new(watch::channel(0).0),
            notices,
            primed: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Receives the id of the newest message visible to readers.
    pub(crate) fn watch_position(&self) -> watch::Receiver<i64> {
        self.position.subscribe()
    }

    /// Projects until the read model holds every message stored so far.
    pub(crate) async fn catch_up(&self) -> Result<i64, StoreError> {
        loop {
            let known = self
                .primed
                .load(Ordering::Acquire)
                .then(|| *self.position.borrow());
            let step = self.writer.project(known).await?;
            self.primed.store(true, Ordering::Release);
            for notice in step.rooms {
                let _ = self.notices.send(notice);
            }
            // Several catch-ups may race (the projector task and a seed); the position only grows.
            self.position.send_if_modified(|seen| {
                let newer = step.position > *seen;
                if newer {
                    *seen = step.position;
                }
                newer
            });
            if step.caught_up {
                return Ok(step.position);
            }
        }
    }

    /// The projector task: wakes on each [`MessagePosted`] and catches up, until `stop` fires or
    /// the writer closes.
    ///
    /// Events are a wake-up, not the data: the projector reads the messages themselves from the
    /// write model, so a lagged receiver, a batch of events or a restart all end in the same state.
    pub(crate) async fn run(
        self,
        mut events: broadcast::Receiver<MessagePosted>,
        mut stop: oneshot::Receiver<()>,
    ) {
        loop {
            tokio::select! {
                _ = &mut stop => return,
                received = events.recv() => match received {
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
            // Everything already queued is covered by this catch-up.
            for _ in 0..events.len() {
                if let Err(
                    broadcast::error::TryRecvError::Empty | broadcast::error::TryRecvError::Closed,
                ) = events.try_recv()
                {
                    break;
                }
            }
            loop {
                match self.catch_up().await {
                    Ok(_) => break,
                    Err(StoreError::WriterClosed) => return,
                    Err(error) => {
                        tracing::error!(%error, "projection failed; retrying");
                        tokio::select! {
                            _ = &mut stop => return,
                            () = tokio::time::sleep(PROJECTION_RETRY) => {}
                        }
                    }
                }
            }
        }
    }
}

/// A page of a room's messages, or proof that the client's copy is current.
#[derive(Debug)]
pub(crate) enum Listing {
    NotModified {
        version: i64,
    },
    Page {
        version: i64,
        messages: Vec<Message>,
        next_before: Option<i64>,
    },
}

/// `GET /rooms` data: the rooms and the projection position they reflect.
#[derive(Debug)]
pub(crate) enum RoomsListing {
    NotModified {
        position: i64,
    },
    Rooms {
        position: i64,
        rooms: Vec<RoomSummary>,
    },
}

/// What a read query asks for: two queries with equal keys return the same rows.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum QueryKey {
    List {
        room: RoomName,
        before: Option<i64>,
        limit: u32,
    },
    Get {
        room: RoomName,
        id: i64,
    },
    Rooms,
}

/// Counts of the read queries that reached SQLite, and of the duplicates among them: queries
/// started while an identical one was in flight in this process.
///
/// A query is in flight from the moment it asks for a reader connection until it has its rows.
/// Only queries that reach the read side touch the map, so a cache hit costs nothing here.
#[derive(Debug)]
pub(crate) struct ReadStats {
    queries: AtomicU64,
    duplicates: AtomicU64,
    inflight: Mutex<HashMap<QueryKey, u32>>,
    queries_total: metrics::Counter,
    duplicates_total: metrics::Counter,
}

impl ReadStats {
    /// Registers the counters with the `metrics` recorder installed now (if any).
    fn new() -> Self {
        metrics::describe_counter!(
            DB_QUERIES_TOTAL,
            metrics::Unit::Count,
            "Read queries of the chat service that reached SQLite"
        );
        metrics::describe_counter!(
            DB_DUPLICATE_QUERIES_TOTAL,
            metrics::Unit::Count,
            "Read queries started while an identical one was in flight in the same process"
        );
        Self {
            queries: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            inflight: Mutex::new(HashMap::new()),
            queries_total: metrics::counter!(DB_QUERIES_TOTAL),
            duplicates_total: metrics::counter!(DB_DUPLICATE_QUERIES_TOTAL),
        }
    }

    /// `(queries, duplicates)` so far.
    pub(crate) fn snapshot(&self) -> (u64, u64) {
        (
            self.queries.load(Ordering::Relaxed),
            self.duplicates.load(Ordering::Relaxed),
        )
    }

    fn start(self: &Arc<Self>, key: QueryKey) -> InFlight {
        self.queries.fetch_add(1, Ordering::Relaxed);
        self.queries_total.increment(1);
        let mut inflight = self.inflight.lock().unwrap_or_else(PoisonError::into_inner);
        let room_left = inflight.len() < MAX_TRACKED_QUERIES;
        let tracked = match inflight.get_mut(&key) {
            Some(running) => {
                *running += 1;
                self.duplicates.fetch_add(1, Ordering::Relaxed);
                self.duplicates_total.increment(1);
                true
            }
            None if room_left => {
                inflight.insert(key.clone(), 1);
                true
            }
            None => false,
        };
        InFlight {
            stats: Arc::clone(self),
            key: tracked.then_some(key),
        }
    }
}

/// A read query in flight; dropping it (done, failed or cancelled) ends it.
struct InFlight {
    stats: Arc<ReadStats>,
    key: Option<QueryKey>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else {
            return;
        };
        let mut inflight = self
            .stats
            .inflight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(running) = inflight.get_mut(&key) {
            *running -= 1;
            if *running == 0 {
                inflight.remove(&key);
            }
        }
    }
}

/// Reader connections for the query side.
///
/// A semaphore bounds the reads in flight to the number of connections; each read runs on the
/// blocking pool with a connection taken from the idle list and put back afterwards.
#[derive(Clone, Debug)]
pub(crate) struct Readers {
    inner: Arc<ReadersInner>,
}

#[derive(Debug)]
struct ReadersInner {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
    stats: Arc<ReadStats>,
    delay: Duration,
    cache_kib: u32,
}

impl Readers {
    /// Opens `size` reader connections with a page cache of `cache_kib` KiB each. `delay` is
    /// added to every query while it holds its connection (see
    /// [`Config::read_delay`](crate::Config::read_delay)).
    pub(crate) fn open(
        path: &Path,
        size: usize,
        delay: Duration,
        cache_kib: u32,
    ) -> Result<Self, StoreError> {
        let size = size.max(1);
        let idle = (0..size)
            .map(|_| open_reader(path, cache_kib))
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(Self {
            inner: Arc::new(ReadersInner {
                path: path.to_owned(),
                idle: Mutex::new(idle),
                permits: Arc::new(Semaphore::new(size)),
                stats: Arc::new(ReadStats::new()),
                delay,
                cache_kib,
            }),
        })
    }

    /// The query counts behind `/stats`.
    pub(crate) fn stats(&self) -> &ReadStats {
        &self.inner.stats
    }

    async fn run<T, F>(&self, key: QueryKey, read: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let in_flight = self.inner.stats.start(key);
        let permit = Arc::clone(&self.inner.permits)
            .acquire_owned()
            .await
            .map_err(|_| StoreError::ReaderFailed("reader pool closed".into()))?;
        let inner = Arc::clone(&self.inner);
        let task = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let _in_flight = in_flight;
            if !inner.delay.is_zero() {
                std::thread::sleep(inner.delay);
            }
            let pooled = inner
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop();
            // A connection is missing only if a read panicked while holding it: replace it.
            let mut conn = match pooled {
                Some(conn) => conn,
                None => open_reader(&inner.path, inner.cache_kib)?,
            };
            let result = read(&mut conn);
            inner
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(conn);
            result
        });
        task.await
            .map_err(|e| StoreError::ReaderFailed(e.to_string()))?
            .map_err(StoreError::from)
    }

    /// A page of `room`, newest first, of messages with ids below `before`.
    ///
    /// `fresh(version)` is asked first; when it says the client's copy is current, no messages
    /// are read. Both reads share one transaction, so the version always matches the page.
    pub(crate) async fn list(
        &self,
        room: RoomName,
        before: Option<i64>,
        limit: u32,
        fresh: impl FnOnce(i64) -> bool + Send + 'static,
    ) -> Result<Listing, StoreError> {
        let key = QueryKey::List {
            room: room.clone(),
            before,
            limit,
        };
        self.run(key, move |conn| {
            let tx = conn.transaction()?;
            let version: i64 = tx
                .prepare_cached("SELECT version FROM room_view WHERE room = ?1")?
                .query_row([room.as_str()], |row| row.get(0))
                .optional()?
                .unwrap_or(0);
            if fresh(version) {
                return Ok(Listing::NotModified { version });
            }
            let mut messages = if version == 0 {
                Vec::new()
            } else {
                tx.prepare_cached(
                    "SELECT id, author, text, created_at FROM message_view
                     WHERE room = ?1 AND id < ?2 ORDER BY id DESC LIMIT ?3",
                )?
                .query_map(
                    (
                        room.as_str(),
                        before.unwrap_or(i64::MAX),
                        i64::from(limit) + 1,
                    ),
                    |row| {
                        Ok(Message {
                            id: row.get(0)?,
                            room: room.as_str().to_owned(),
                            author: row.get(1)?,
                            text: row.get(2)?,
                            created_at: row.get(3)?,
                        })
                    },
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?
            };
            let next_before = if messages.len() > limit as usize {
                messages.truncate(limit as usize);
                messages.last().map(|m| m.id)
            } else {
                None
            };
            Ok(Listing::Page {
                version,
                messages,
                next_before,
            })
        })
        .await
    }

    /// One message of `room`, if the read model has it.
    pub(crate) async fn get(&self, room: RoomName, id: i64) -> Result<Option<Message>, StoreError> {
        let key = QueryKey::Get {
            room: room.clone(),
            id,
        };
        self.run(key, move |conn| {
            conn.prepare_cached(
                "SELECT id, author, text, created_at FROM message_view WHERE id = ?1 AND room = ?2",
            )?
            .query_row((id, room.as_str()), |row| {
                Ok(Message {
                    id: row.get(0)?,
                    room: room.as_str().to_owned(),
                    author: row.get(1)?,
                    text: row.get(2)?,
                    created_at: row.get(3)?,
                })
            })
            .optional()
        })
        .await
    }

    /// Up to [`MAX_ROOMS_LISTED`] rooms by name, unless `fresh(position)` says the client's copy
    /// is current.
    pub(crate) async fn rooms(
        &self,
        fresh: impl FnOnce(i64) -> bool + Send + 'static,
    ) -> Result<RoomsListing, StoreError> {
        self.run(QueryKey::Rooms, move |conn| {
            let tx = conn.transaction()?;
            let position: i64 = tx
                .prepare_cached("SELECT position FROM projection WHERE name = 'messages'")?
                .query_row([], |row| row.get(0))?;
            if fresh(position) {
                return Ok(RoomsListing::NotModified { position });
            }
            let rooms = tx
                .prepare_cached(
                    "SELECT room, message_count, last_id, version FROM room_view ORDER BY room LIMIT ?1",
                )?
                .query_map([MAX_ROOMS_LISTED as i64], |row| {
                    Ok(RoomSummary {
                        room: row.get(0)?,
                        message_count: row.get(1)?,
                        last_id: row.get(2)?,
                        version: row.get(3)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(RoomsListing::Rooms { position, rooms })
        })
        .await
    }
}
