//! In-process idempotency store on a bounded moka cache.
//!
//! Expiry is checked on tokio's clock (so paused-time tests work); moka's own expiry only reclaims memory.

use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;
use moka::ops::compute::{CompResult, Op};
use tokio::time::Instant;

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
}

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

/// Idempotency records in this process's memory, bounded by entry count.
///
/// Fits a single instance; several instances need a shared store such as `RedisStore` (feature `redis`).
/// When the bound is reached, the least useful entries are evicted, which forgets their keys.
///
/// ```
/// use dedup_layer::{IdempotencyLayer, store::MemoryStore};
///
/// let layer = IdempotencyLayer::builder(MemoryStore::new(10_000)).build().unwrap();
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
    /// Holds up to 100 000 keys.
    fn default() -> Self {
        Self::new(100_000)
    }
}

impl MemoryStore {
    /// A store holding at most `max_entries` keys (locks and records together).
    pub fn new(max_entries: u64) -> Self {
        MemoryStore {
            cache: Cache::builder()
                .max_capacity(max_entries)
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
        let result = self
            .cache
            .entry(key.to_owned())
            .and_compute_with(|current| {
                let op = match current.as_ref().map(|e| &**e.value()) {
                    Some(Entry::Lock { token: t, .. }) if t == token => Op::Put(record),
                    _ => Op::Nop,
                };
                std::future::ready(op)
            })
            .await;
        match result {
            CompResult::ReplacedWith(_) => Ok(()),
            _ => Err(StoreError::new("the lock was lost before completion")),
        }
    }

    async fn release(&self, key: &str, token: &LockToken) -> Result<(), StoreError> {
        self.cache
            .entry(key.to_owned())
            .and_compute_with(|current| {
                let op = match current.as_ref().map(|e| &**e.value()) {
                    Some(Entry::Lock { token: t, .. }) if t == token => Op::Remove,
                    _ => Op::Nop,
                };
                std::future::ready(op)
            })
            .await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, StatusCode};

    fn fp(n: u8) -> Fingerprint {
        Fingerprint::from_bytes([n; 32])
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
            store
                .try_begin("k", &LockToken::random(), &fp(1), ttl)
                .await
                .unwrap(),
            Begin::InProgress
        );
        assert_eq!(
            store
                .try_begin("k", &LockToken::random(), &fp(2), ttl)
                .await
                .unwrap(),
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
            store
                .try_begin("k", &LockToken::random(), &fp(1), ttl)
                .await
                .unwrap(),
            Begin::Completed(resp())
        );
        assert_eq!(
            store
                .try_begin("k", &LockToken::random(), &fp(2), ttl)
                .await
                .unwrap(),
            Begin::Mismatch
        );
        tokio::time::advance(Duration::from_secs(3601)).await;
        assert!(matches!(
            store
                .try_begin("k", &LockToken::random(), &fp(2), ttl)
                .await
                .unwrap(),
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
            store
                .try_begin("k", &LockToken::random(), &fp(1), ttl)
                .await
                .unwrap(),
            Begin::InProgress
        );
        store.release("k", &token).await.unwrap();
        assert_eq!(
            store
                .try_begin("k", &LockToken::random(), &fp(1), ttl)
                .await
                .unwrap(),
            Begin::Started,
            "released key must be free"
        );
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(matches!(
            store
                .try_begin("k", &LockToken::random(), &fp(1), ttl)
                .await
                .unwrap(),
            Begin::Started
        ));
    }

    fn resp() -> StoredResponse {
        StoredResponse::new(
            StatusCode::CREATED,
            HeaderMap::new(),
            bytes::Bytes::from_static(b"x"),
        )
    }
}
