//! The persistent tier on redb (feature `disk`): entries survive a restart, bounded by bytes
//! and a TTL cap, with every disk operation on tokio's blocking pool.
//!
//! Writes go through one bounded queue to a single writer that commits them in batches.
// redb's error type is large; these results never leave the blocking tasks.
#![allow(clippy::result_large_err)]

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{
    Database, MultimapTableDefinition, ReadableMultimapTable, ReadableTable, TableDefinition,
    WriteTransaction,
};
use tokio::sync::mpsc;

use crate::layer::ConfigError;
use crate::tiered::Target;

/// key → encoded entry.
const ENTRIES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("entries");
/// key → (expires at, Unix ms; encoded size).
const META: TableDefinition<'_, &str, (u64, u64)> = TableDefinition::new("meta");
/// (expires at, key) → (): expiry order, for the sweep.
const EXPIRY: TableDefinition<'_, (u64, &str), ()> = TableDefinition::new("expiry");
/// tag → keys.
const TAGS: MultimapTableDefinition<'_, &str, &str> = MultimapTableDefinition::new("tags");
/// key → tags.
const KEY_TAGS: MultimapTableDefinition<'_, &str, &str> = MultimapTableDefinition::new("key_tags");

/// Writes waiting for the writer; more are dropped.
const QUEUE: usize = 1024;
/// Writes committed in one transaction at most.
const BATCH: usize = 64;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

enum Op {
    Put {
        key: String,
        bytes: Vec<u8>,
        expires_ms: u64,
        tags: Vec<String>,
    },
    Purge(Target),
}

/// Builder for [`DiskTier`]; every setter documents its default.
#[must_use]
#[derive(Debug)]
pub struct DiskTierBuilder {
    path: PathBuf,
    max_bytes: u64,
    ttl_cap: Duration,
    sweep_interval: Duration,
    page_cache_bytes: usize,
}

impl DiskTierBuilder {
    /// Bytes of encoded entries the tier may hold; past it the sweep removes the entries
    /// closest to expiry first. Defaults to 1 GiB.
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = bytes;
        self
    }

    /// Longest time an entry stays on disk, whatever its freshness. Defaults to 1 hour.
    pub fn ttl_cap(mut self, cap: Duration) -> Self {
        self.ttl_cap = cap;
        self
    }

    /// How often expired entries are removed and the byte bound enforced. Defaults to 10 s.
    pub fn sweep_interval(mut self, interval: Duration) -> Self {
        self.sweep_interval = interval;
        self
    }

    /// Memory redb may use to cache pages. Defaults to 16 MiB.
    pub fn page_cache_bytes(mut self, bytes: usize) -> Self {
        self.page_cache_bytes = bytes;
        self
    }

    /// Opens (or creates) the database file and starts the writer and the sweep on the
    /// current tokio runtime. Blocks while the file opens: call it at startup.
    pub fn open(self) -> Result<DiskTier, ConfigError> {
        if self.ttl_cap < Duration::from_millis(1) {
            return Err(ConfigError::new("disk.ttl_cap", "must be at least 1 ms"));
        }
        if self.max_bytes == 0 {
            return Err(ConfigError::new("disk.max_bytes", "must be above zero"));
        }
        if self.sweep_interval.is_zero() {
            return Err(ConfigError::new(
                "disk.sweep_interval",
                "must be above zero",
            ));
        }
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| ConfigError::new("disk", "must be opened inside a tokio runtime"))?;
        let db = Database::builder()
            .set_cache_size(self.page_cache_bytes)
            .create(&self.path)
            .map_err(|e| {
                ConfigError::new("disk", format!("cannot open {}: {e}", self.path.display()))
            })?;
        let bytes = init(&db).map_err(|e| ConfigError::new("disk", e))?;
        let (queue, rx) = mpsc::channel(QUEUE);
        let inner = Arc::new(DiskInner {
            db,
            bytes: AtomicU64::new(bytes),
            max_bytes: self.max_bytes,
            ttl_cap: self.ttl_cap,
            queue,
            dropped: AtomicU64::new(0),
        });
        runtime.spawn(write_loop(Arc::downgrade(&inner), rx));
        runtime.spawn(sweep_loop(Arc::downgrade(&inner), self.sweep_interval));
        Ok(DiskTier { inner })
    }
}

/// Creates the tables and counts the bytes already stored.
fn init(db: &Database) -> Result<u64, String> {
    let txn = db.begin_write().map_err(|e| e.to_string())?;
    let bytes = {
        let meta = txn.open_table(META).map_err(|e| e.to_string())?;
        txn.open_table(ENTRIES).map_err(|e| e.to_string())?;
        txn.open_table(EXPIRY).map_err(|e| e.to_string())?;
        txn.open_multimap_table(TAGS).map_err(|e| e.to_string())?;
        txn.open_multimap_table(KEY_TAGS)
            .map_err(|e| e.to_string())?;
        let mut total = 0u64;
        for row in meta.iter().map_err(|e| e.to_string())? {
            let (_, v) = row.map_err(|e| e.to_string())?;
            total = total.saturating_add(v.value().1);
        }
        total
    };
    txn.commit().map_err(|e| e.to_string())?;
    Ok(bytes)
}

/// The persistent tier: a redb file that outlives the process.
///
/// Give it to [`CacheLayerBuilder::disk`](crate::CacheLayerBuilder::disk). Cheap to clone.
///
/// ```no_run
/// use std::time::Duration;
/// use cache_layer::{CacheLayer, DiskTier};
///
/// # async fn demo() -> Result<(), cache_layer::ConfigError> {
/// let l3 = DiskTier::builder("/var/cache/myapp/cache.redb")
///     .max_bytes(512 * 1024 * 1024)
///     .ttl_cap(Duration::from_secs(3600))
///     .open()?;
/// let cache = CacheLayer::builder().disk(l3).build()?;
/// # let _ = cache; Ok(()) }
/// ```
#[derive(Clone)]
pub struct DiskTier {
    inner: Arc<DiskInner>,
}

struct DiskInner {
    db: Database,
    bytes: AtomicU64,
    max_bytes: u64,
    ttl_cap: Duration,
    queue: mpsc::Sender<Op>,
    dropped: AtomicU64,
}

impl fmt::Debug for DiskTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiskTier")
            .field("bytes", &self.inner.bytes.load(Ordering::Relaxed))
            .field("max_bytes", &self.inner.max_bytes)
            .finish_non_exhaustive()
    }
}

impl DiskTier {
    /// Starts a configuration for the database file at `path`.
    pub fn builder(path: impl Into<PathBuf>) -> DiskTierBuilder {
        DiskTierBuilder {
            path: path.into(),
            max_bytes: 1024 * 1024 * 1024,
            ttl_cap: Duration::from_secs(3600),
            sweep_interval: Duration::from_secs(10),
            page_cache_bytes: 16 * 1024 * 1024,
        }
    }

    /// Bytes of encoded entries held.
    pub fn bytes(&self) -> u64 {
        self.inner.bytes.load(Ordering::Relaxed)
    }

    pub(crate) fn ttl_cap(&self) -> Duration {
        self.inner.ttl_cap
    }

    /// Reads an entry on the blocking pool; `Err` when the file could not be read.
    pub(crate) async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, ()> {
        let inner = self.inner.clone();
        let key = key.to_owned();
        let started = tokio::time::Instant::now();
        let r = tokio::task::spawn_blocking(move || read(&inner.db, &key))
            .await
            .map_err(|_| ())
            .and_then(|r| r.map_err(|e| tracing::debug!(error = %e, "disk tier read failed")));
        crate::metrics::record_tier_latency(crate::metrics::TierLabel::L3, started.elapsed());
        if r.is_err() {
            crate::metrics::record_tier_error(crate::metrics::TierLabel::L3);
        }
        r
    }

    /// Queues a write; dropped (and counted) when the writer is behind.
    pub(crate) async fn put(&self, key: &str, bytes: Vec<u8>, ttl: Duration, tags: &[Arc<str>]) {
        let ttl = ttl.min(self.inner.ttl_cap);
        let op = Op::Put {
            key: key.to_owned(),
            bytes,
            expires_ms: now_ms().saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(0)),
            tags: tags.iter().map(|t| t.to_string()).collect(),
        };
        if self.inner.queue.try_send(op).is_err() {
            self.inner.dropped.fetch_add(1, Ordering::Relaxed);
            crate::metrics::record_dropped_write();
        }
    }

    /// Applies a purge (soft purges remove too: this tier keeps no stale copies).
    pub(crate) async fn purge(&self, target: &Target) {
        // Purges wait for room rather than being dropped.
        let _ = self.inner.queue.send(Op::Purge(target.clone())).await;
    }

    pub(crate) fn spawn_remove(&self, key: String) {
        let _ = self.inner.queue.try_send(Op::Purge(Target::Key(key)));
    }
}

fn read(db: &Database, key: &str) -> Result<Option<Vec<u8>>, redb::Error> {
    let txn = db.begin_read()?;
    let meta = txn.open_table(META)?;
    match meta.get(key)? {
        Some(m) if m.value().0 > now_ms() => {}
        _ => return Ok(None),
    }
    let entries = txn.open_table(ENTRIES)?;
    Ok(entries.get(key)?.map(|v| v.value().to_vec()))
}

/// Removes one key from every table; returns the bytes freed.
fn remove_key(txn: &WriteTransaction, key: &str) -> Result<u64, redb::Error> {
    let mut meta = txn.open_table(META)?;
    let Some((expires, size)) = meta.remove(key)?.map(|g| g.value()) else {
        return Ok(0);
    };
    txn.open_table(ENTRIES)?.remove(key)?;
    txn.open_table(EXPIRY)?.remove((expires, key))?;
    let mut key_tags = txn.open_multimap_table(KEY_TAGS)?;
    let mut tags = txn.open_multimap_table(TAGS)?;
    let mut names = Vec::new();
    for t in key_tags.remove_all(key)? {
        names.push(t?.value().to_owned());
    }
    for t in names {
        tags.remove(t.as_str(), key)?;
    }
    Ok(size)
}

fn apply(inner: &DiskInner, ops: Vec<Op>) -> Result<(), redb::Error> {
    let txn = inner.db.begin_write()?;
    let mut freed = 0u64;
    let mut added = 0u64;
    for op in ops {
        match op {
            Op::Put {
                key,
                bytes,
                expires_ms,
                tags,
            } => {
                freed += remove_key(&txn, &key)?;
                let size = bytes.len() as u64;
                txn.open_table(ENTRIES)?
                    .insert(key.as_str(), bytes.as_slice())?;
                txn.open_table(META)?
                    .insert(key.as_str(), (expires_ms, size))?;
                txn.open_table(EXPIRY)?
                    .insert((expires_ms, key.as_str()), ())?;
                let mut t = txn.open_multimap_table(TAGS)?;
                let mut kt = txn.open_multimap_table(KEY_TAGS)?;
                for tag in &tags {
                    t.insert(tag.as_str(), key.as_str())?;
                    kt.insert(key.as_str(), tag.as_str())?;
                }
                added += size;
            }
            Op::Purge(target) => {
                let keys: Vec<String> = match &target {
                    Target::Key(k) => vec![k.clone()],
                    Target::Tag(tag) => {
                        let t = txn.open_multimap_table(TAGS)?;
                        let mut keys = Vec::new();
                        for k in t.get(tag.as_str())? {
                            keys.push(k?.value().to_owned());
                        }
                        keys
                    }
                    Target::Prefix(p) => {
                        let m = txn.open_table(META)?;
                        let mut keys = Vec::new();
                        for row in m.range(p.as_str()..)? {
                            let (k, _) = row?;
                            if !k.value().starts_with(p.as_str()) {
                                break;
                            }
                            keys.push(k.value().to_owned());
                        }
                        keys
                    }
                    Target::All => {
                        let m = txn.open_table(META)?;
                        let mut keys = Vec::new();
                        for row in m.iter()? {
                            keys.push(row?.0.value().to_owned());
                        }
                        keys
                    }
                };
                for k in keys {
                    freed += remove_key(&txn, &k)?;
                }
            }
        }
    }
    txn.commit()?;
    inner.bytes.fetch_add(added, Ordering::Relaxed);
    let _ = inner
        .bytes
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
            Some(b.saturating_sub(freed))
        });
    Ok(())
}

/// Removes expired entries, then the ones closest to expiry while over the byte bound.
fn sweep(inner: &DiskInner) -> Result<(), redb::Error> {
    let now = now_ms();
    let txn = inner.db.begin_write()?;
    let mut freed = 0u64;
    let mut over = inner
        .bytes
        .load(Ordering::Relaxed)
        .saturating_sub(inner.max_bytes);
    loop {
        let next = {
            let expiry = txn.open_table(EXPIRY)?;
            let first = expiry.first()?;
            first.map(|(k, _)| {
                let (at, key) = k.value();
                (at, key.to_owned())
            })
        };
        let Some((at, key)) = next else { break };
        if at > now && over == 0 {
            break;
        }
        let n = remove_key(&txn, &key)?;
        if n == 0 {
            // An expiry row without its entry: drop the row alone.
            txn.open_table(EXPIRY)?.remove((at, key.as_str()))?;
        }
        freed += n;
        over = over.saturating_sub(n);
    }
    txn.commit()?;
    let _ = inner
        .bytes
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
            Some(b.saturating_sub(freed))
        });
    Ok(())
}

async fn write_loop(inner: Weak<DiskInner>, mut rx: mpsc::Receiver<Op>) {
    while let Some(op) = rx.recv().await {
        let mut ops = vec![op];
        while ops.len() < BATCH {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        let Some(inner) = inner.upgrade() else { return };
        let done = tokio::task::spawn_blocking(move || {
            let r = apply(&inner, ops);
            if inner.bytes.load(Ordering::Relaxed) > inner.max_bytes {
                let _ = sweep(&inner);
            }
            r
        })
        .await;
        if let Ok(Err(e)) = done {
            tracing::debug!(error = %e, "disk tier write failed");
            crate::metrics::record_tier_error(crate::metrics::TierLabel::L3);
        }
    }
}

async fn sweep_loop(inner: Weak<DiskInner>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let r = tokio::task::spawn_blocking(move || sweep(&inner)).await;
        if let Ok(Err(e)) = r {
            tracing::debug!(error = %e, "disk tier sweep failed");
        }
    }
}
