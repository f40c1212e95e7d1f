//! In-process idempotency store on a moka cache bounded by entries and bytes.
//!
//! Expiry is checked on tokio's clock (so paused-time tests work); moka's own expiry only reclaims memory.

use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;
use moka::ops::compute::{CompResult, Op};
use moka::policy::EvictionPolicy;
use tokio::time::Instant;

use crate::error::ConfigError;

use super::{Begin, Fingerprint, IdempotencyStore, LockToken, StoreError, StoredResponse};

#[derive(Debug)]
enum Entry {
    Lock {
        token: LockToken,
        fingerprint: Fingerprint,
        expires_at: Instant,
        ttl: Duration,
    },
    Record {
        fingerprint: Fingerprint,
        response: StoredResponse,
        expires_at: Instant,
        ttl: Duration,
    },
}

impl Entry {
    fn expired(&self, now: Instant) -> bool {
        match self {
            Entry::Lock { expires_at, .. } | Entry::Record { expires_at, .. } => *expires_at <= now,
        }
    }

    fn ttl(&self) -> Duration {
        match self {
            Entry::Lock { ttl, .. } | Entry::Record { ttl, .. } => *ttl,
        }
    }

    /// Approximate heap bytes held, key excluded.
    fn bytes(&self) -> u64 {
        let stored = match self {
            Entry::Lock { .. } => 0,
            Entry::Record { response, .. } => {
                let headers: usize = response
                    .headers()
                    .iter()
                    .map(|(name, value)| name.as_str().len() + value.len() + HEADER_OVERHEAD)
                    .sum();
                headers + response.body().len()
            }
        };
        (stored + ENTRY_OVERHEAD) as u64
    }
}

/// Bookkeeping bytes counted per entry (map slot, `Arc`, expiry) and per stored header.
const ENTRY_OVERHEAD: usize = 160;
const HEADER_OVERHEAD: usize = 48;

struct EntryExpiry;

impl moka::Expiry<String, Arc<Entry>> for EntryExpiry {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &Arc<Entry>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.ttl())
    }

    fn expire_after_update(
        &self,
        _key: &String,
        value: &Arc<Entry>,
        _updated_at: std::time::Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.ttl())
    }
}

/// Idempotency records in this process's memory, bounded by entry count and by bytes.
///
/// Fits a single instance; several instances need a shared store such as `RedisStore` (feature `redis`).
/// When a bound is reached, the least recently used entries are evicted, which forgets their keys; a fresh
/// lock is never refused.
///
/// ```
/// use dedup_layer::{IdempotencyLayer, store::MemoryStore};
///
/// let store = MemoryStore::builder()
///     .max_entries(10_000)
///     .max_bytes(32 * 1024 * 1024)
///     .build()
///     .unwrap();
/// let layer = IdempotencyLayer::builder(store).build().unwrap();
/// # let _ = layer;
/// ```
#[derive(Clone)]
pub struct MemoryStore {
    cache: Cache<String, Arc<Entry>>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("entries", &self.cache.entry_count())
            .finish()
    }
}

impl Default for MemoryStore {
    /// Holds up to 100 000 keys and 64 MiB.
    fn default() -> Self {
        MemoryStoreBuilder::default().assemble()
    }
}

impl MemoryStore {
    /// A store holding at most `max_entries` keys (locks and records together) and the default 64 MiB.
    /// A `max_entries` of zero is taken as one.
    pub fn new(max_entries: u64) -> Self {
        MemoryStoreBuilder::default()
            .max_entries(max_entries.max(1))
            .assemble()
    }

    /// A builder to set both bounds.
    pub fn builder() -> MemoryStoreBuilder {
        MemoryStoreBuilder::default()
    }
}

/// Builder for [`MemoryStore`]; every setter documents its default.
#[must_use]
#[derive(Debug)]
pub struct MemoryStoreBuilder {
    max_entries: u64,
    max_bytes: u64,
}

impl Default for MemoryStoreBuilder {
    fn default() -> Self {
        MemoryStoreBuilder {
            max_entries: 100_000,
            max_bytes: 64 * 1024 * 1024,
        }
    }
}

impl MemoryStoreBuilder {
    /// Most keys kept (locks and records together).
    ///
    /// Defaults to 100 000. Must be at least 1.
    pub fn max_entries(mut self, max: u64) -> Self {
        self.max_entries = max;
        self
    }

    /// Most bytes kept: stored bodies and headers plus a fixed per-entry overhead. Keep it well above the
    /// layer's `max_response_bytes`, or large records are evicted as soon as they are stored.
    ///
    /// Defaults to 64 MiB. Must be at least 1.
    pub fn max_bytes(mut self, max: u64) -> Self {
        self.max_bytes = max;
        self
    }

    /// Checks the bounds and builds the store.
    pub fn build(self) -> Result<MemoryStore, ConfigError> {
        if self.max_entries == 0 {
            return Err(ConfigError::new("max_entries", "must be at least 1"));
        }
        if self.max_bytes == 0 {
            return Err(ConfigError::new("max_bytes", "must be at least 1"));
        }
        Ok(self.assemble())
    }

    fn assemble(self) -> MemoryStore {
        let max_bytes = self.max_bytes.max(1);
        // One weight bounds both: every entry weighs at least max_bytes / max_entries (rounded up), so no
        // more than max_entries fit in max_bytes.
        let floor = max_bytes.div_ceil(self.max_entries.max(1));
        MemoryStore {
            cache: Cache::builder()
                .max_capacity(max_bytes)
                .weigher(move |key: &String, entry: &Arc<Entry>| {
                    let bytes = (key.len() as u64).saturating_add(entry.bytes());
                    u32::try_from(bytes.max(floor)).unwrap_or(u32::MAX)
                })
                // LRU rather than TinyLFU admission: a new lock must always be kept, or a concurrent
                // duplicate would find the key free and run the operation twice.
                .eviction_policy(EvictionPolicy::lru())
                .expire_after(EntryExpiry)
                .build(),
        }
    }
}

impl IdempotencyStore for MemoryStore {
    async fn try_begin(
        &self,
        key: &str,
        token: &LockToken,
        fingerprint: &Fingerprint,
        lock_ttl: Duration,
    ) -> Result<Begin, StoreError> {
        let now = Instant::now();
        let token = *token;
        let fingerprint = *fingerprint;
        let result = self
            .cache
            .entry(key.to_owned())
            .and_compute_with(|current| {
                let op = match current {
                    Some(entry) if !entry.value().expired(now) => Op::Nop,
                    _ => Op::Put(Arc::new(Entry::Lock {
                        token,
                        fingerprint,
                        expires_at: now + lock_ttl,
                        ttl: lock_ttl,
                    })),
                };
                std::future::ready(op)
            })
            .await;
        Ok(match result {
            CompResult::Inserted(_) | CompResult::ReplacedWith(_) => Begin::Started,
            CompResult::Unchanged(entry) => match &**entry.value() {
                Entry::Lock { fingerprint: f, .. } if *f == fingerprint => Begin::InProgress,
                Entry::Record {
                    fingerprint: f,
                    response,
                    ..
                } if *f == fingerprint => Begin::Completed(response.clone()),
                _ => Begin::Mismatch,
            },
            CompResult::StillNone(_) | CompResult::Removed(_) => {
                return Err(StoreError::new("entry vanished while taking the lock"));
            }
        })
    }

    async fn complete(
        &self,
        key: &str,
        token: &LockToken,
        fingerprint: &Fingerprint,
        response: &StoredResponse,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let now = Instant::now();
        let record = Arc::new(Entry::Record {
            fingerprint: *fingerprint,
            response: response.clone(),
            expires_at: now + ttl,
            ttl,
        });
        match self.if_locked_by(key, token, Op::Put(record)).await {
            CompResult::ReplacedWith(_) => Ok(()),
            _ => Err(StoreError::new("the lock was lost before completion")),
        }
    }

    async fn release(&self, key: &str, token: &LockToken) -> Result<(), StoreError> {
        self.if_locked_by(key, token, Op::Remove).await;
        Ok(())
    }
}

impl MemoryStore {
    /// Applies `op` to `key` only while it holds the lock taken with `token`; otherwise leaves it alone.
    async fn if_locked_by(
        &self,
        key: &str,
        token: &LockToken,
        op: Op<Arc<Entry>>,
    ) -> CompResult<String, Arc<Entry>> {
        self.cache
            .entry(key.to_owned())
            .and_compute_with(|current| {
                let op = match current.as_ref().map(|e| &**e.value()) {
                    Some(Entry::Lock { token: t, .. }) if t == token => op,
                    _ => Op::Nop,
                };
                std::future::ready(op)
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, StatusCode};

    fn fp(n: u8) -> Fingerprint {
        Fingerprint::from_bytes([n; 32])
    }

    /// `try_begin` by another caller: a fresh token that holds no lock.
    async fn stranger_begins(
        store: &MemoryStore,
        key: &str,
        fingerprint: &Fingerprint,
        ttl: Duration,
    ) -> Begin {
        store
            .try_begin(key, &LockToken::random(), fingerprint, ttl)
            .await
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn lock_complete_replay_expire() {
        let store = MemoryStore::new(100);
        let ttl = Duration::from_secs(60);
        let token = LockToken::random();
        assert_eq!(
            store.try_begin("k", &token, &fp(1), ttl).await.unwrap(),
            Begin::Started
        );
        assert_eq!(
            stranger_begins(&store, "k", &fp(1), ttl).await,
            Begin::InProgress
        );
        assert_eq!(
            stranger_begins(&store, "k", &fp(2), ttl).await,
            Begin::Mismatch
        );
        assert!(
            store
                .complete("k", &LockToken::random(), &fp(1), &resp(), ttl)
                .await
                .is_err()
        );
        store
            .complete("k", &token, &fp(1), &resp(), Duration::from_secs(3600))
            .await
            .unwrap();
        assert_eq!(
            stranger_begins(&store, "k", &fp(1), ttl).await,
            Begin::Completed(resp())
        );
        assert_eq!(
            stranger_begins(&store, "k", &fp(2), ttl).await,
            Begin::Mismatch
        );
        tokio::time::advance(Duration::from_secs(3601)).await;
        assert!(matches!(
            stranger_begins(&store, "k", &fp(2), ttl).await,
            Begin::Started
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn release_needs_the_token_and_locks_expire() {
        let store = MemoryStore::new(100);
        let ttl = Duration::from_secs(60);
        let token = LockToken::random();
        assert_eq!(
            store.try_begin("k", &token, &fp(1), ttl).await.unwrap(),
            Begin::Started
        );
        store.release("k", &LockToken::random()).await.unwrap();
        assert_eq!(
            stranger_begins(&store, "k", &fp(1), ttl).await,
            Begin::InProgress
        );
        store.release("k", &token).await.unwrap();
        assert_eq!(
            stranger_begins(&store, "k", &fp(1), ttl).await,
            Begin::Started,
            "released key must be free"
        );
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(matches!(
            stranger_begins(&store, "k", &fp(1), ttl).await,
            Begin::Started
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_lock_survives_a_full_store() {
        let store = MemoryStore::new(500);
        let ttl = Duration::from_secs(60);
        for n in 0..500 {
            let key = format!("old-{n}");
            let token = LockToken::random();
            store.try_begin(&key, &token, &fp(1), ttl).await.unwrap();
            store
                .complete(&key, &token, &fp(1), &resp(), ttl)
                .await
                .unwrap();
            // Retries make the old records look popular.
            for _ in 0..5 {
                stranger_begins(&store, &key, &fp(1), ttl).await;
            }
        }
        store.cache.run_pending_tasks().await;
        assert_eq!(
            stranger_begins(&store, "new", &fp(1), ttl).await,
            Begin::Started
        );
        store.cache.run_pending_tasks().await;
        assert_eq!(
            stranger_begins(&store, "new", &fp(1), ttl).await,
            Begin::InProgress,
            "a lock must not be dropped on admission, or the operation runs twice"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn records_are_bounded_by_bytes_and_entries() {
        let store = MemoryStore::builder()
            .max_entries(1_000)
            .max_bytes(1024 * 1024)
            .build()
            .unwrap();
        let ttl = Duration::from_secs(60);
        let big = StoredResponse::new(
            StatusCode::OK,
            HeaderMap::new(),
            bytes::Bytes::from(vec![b'x'; 64 * 1024]),
        );
        for n in 0..100 {
            let key = format!("k{n}");
            let token = LockToken::random();
            store.try_begin(&key, &token, &fp(1), ttl).await.unwrap();
            store
                .complete(&key, &token, &fp(1), &big, ttl)
                .await
                .unwrap();
        }
        store.cache.run_pending_tasks().await;
        let stored: usize = store
            .cache
            .iter()
            .map(|(_, entry)| match &*entry {
                Entry::Record { response, .. } => response.body().len(),
                Entry::Lock { .. } => 0,
            })
            .sum();
        assert!(stored <= 1024 * 1024, "{stored} bytes kept");
        assert!(
            stored >= 512 * 1024,
            "the bound is used, not undershot: {stored}"
        );

        let few = MemoryStore::builder().max_entries(5).build().unwrap();
        for n in 0..50 {
            let key = format!("k{n}");
            stranger_begins(&few, &key, &fp(1), ttl).await;
        }
        few.cache.run_pending_tasks().await;
        assert!(few.cache.entry_count() <= 5, "{}", few.cache.entry_count());
    }

    #[test]
    fn zero_bounds_are_rejected() {
        assert_eq!(
            MemoryStore::builder()
                .max_entries(0)
                .build()
                .unwrap_err()
                .field(),
            "max_entries"
        );
        assert_eq!(
            MemoryStore::builder()
                .max_bytes(0)
                .build()
                .unwrap_err()
                .field(),
            "max_bytes"
        );
    }

    fn resp() -> StoredResponse {
        StoredResponse::new(
            StatusCode::CREATED,
            HeaderMap::new(),
            bytes::Bytes::from_static(b"x"),
        )
    }
}
