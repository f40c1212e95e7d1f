//! The response cache in front of the routes, and its invalidation: every [`RoomProjected`]
//! notice purges the room's tag (and the room list's) on every tier of every instance.
//!
//! Purging on the projection, not on [`MessagePosted`](crate::MessagePosted), matters: a purge
//! before the read model changed would let the next query store the old page again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use cache_layer::{CacheHandle, CacheLayer, Purge};
use tokio::sync::{broadcast, watch};

use crate::config::{Config, ConfigError};
use crate::model::{RoomName, RoomProjected};

/// Default longest time a response stays in the in-process tier when instances share Redis: the
/// bound on how long an instance that missed an invalidation can serve an old page from it (see
/// [`TtlCaps::l1_for`](crate::TtlCaps::l1_for)).
pub const L1_TTL_CAP_SHARED: Duration = Duration::from_millis(100);
/// Default longest time a response stays in the in-process tier of an instance without Redis,
/// whose purges cannot be missed: each response then lives as long as its own freshness allows,
/// up to this.
pub const L1_TTL_CAP_ALONE: Duration = Duration::from_secs(300);
/// Default longest time a response stays in the shared (Redis) tier.
pub const L2_TTL_CAP: Duration = Duration::from_secs(300);
/// Default longest time a response stays in the persistent tier.
pub const L3_TTL_CAP: Duration = Duration::from_secs(3600);

/// Longest a request waits for an identical miss in flight before it is answered `504`.
const COLLAPSE_WAIT: Duration = Duration::from_secs(5);

/// Rooms whose purge progress is remembered; past it the memory starts over.
const MAX_TRACKED_ROOMS: usize = 10_000;

/// Builds the cache for `config`: in-process always, Redis with `redis_url`, disk with
/// `cache_disk`, each tier capped by [`Config::ttl_caps`]. Bare, only the (unused) in-process
/// tier is built, so no Redis connection or disk file is opened. Must run inside a tokio runtime.
pub(crate) fn layer(config: &Config) -> Result<CacheLayer, ConfigError> {
    let caps = config.ttl_caps;
    let bounds = config.memory_bounds();
    let mut builder = CacheLayer::builder()
        .cache_name("chat")
        .ttl_cap(caps.l1_for(config.redis_url.is_some()))
        // Stale entries stay charged until moka reclaims them, so these bytes bound them too.
        .max_capacity_bytes(bounds.l1_bytes)
        .max_body_bytes(bounds.l1_max_body_bytes)
        .max_tag_entries(bounds.l1_tag_entries)
        // Clients and CDNs in front may purge by tag too.
        .strip_tag_header(false)
        // The lists say in Surrogate-Control how long this cache, which every write purges, keeps
        // them; it is removed before answers leave (see `CacheControl::surrogate`).
        .targeted_cache_controls(["Surrogate-Control", "CDN-Cache-Control"]);
    if config.bare {
        return builder.build().map_err(|e| ConfigError::new(e.to_string()));
    }
    // A page refresh is a burst of identical GETs: the first misses and fills the entry, the rest
    // wait for it and are answered from the store as hits. DedupLayer below still makes sure
    // that whatever reaches the routes concurrently (an answer the cache did not store, a
    // waiter released by a failed leader) runs one query. With the disk tier, collapsed
    // waiters stalled up to the whole wait under load (first pages at p50 3.8 s in the load
    // test, 3 ms without collapsing), so there the misses are coalesced by DedupLayer alone.
    if config.cache_disk.is_none() {
        builder = builder.collapse_misses(Some(COLLAPSE_WAIT));
    }
    if let Some(url) = &config.redis_url {
        let l2 = cache_layer::RedisTier::builder(url.as_str())
            .prefix("chat")
            .ttl_cap(caps.l2)
            // No cross-instance fill leases: every instance reads the same SQLite file, where a
            // page costs about a millisecond, while an instance that loses a lease polls Redis
            // for the leader's entry and, when a post purges that entry meanwhile, gives up only
            // after the whole wait. Identical misses within an instance still collapse.
            .lease_wait(0, Duration::from_millis(10))
            .build()
            .map_err(|e| ConfigError::new(format!("REDIS_URL: {e}")))?;
        builder = builder.redis(l2);
    }
    if let Some(path) = &config.cache_disk {
        let l3 = cache_layer::DiskTier::builder(path)
            .ttl_cap(caps.l3)
            .open()
            .map_err(|e| ConfigError::new(format!("CACHE_DISK_PATH: {e}")))?;
        builder = builder.disk(l3);
    }
    builder.build().map_err(|e| ConfigError::new(e.to_string()))
}

/// How far the purges have got: per room, the newest message id whose projection was purged.
#[derive(Debug)]
pub(crate) struct Purged {
    rooms: Mutex<HashMap<RoomName, i64>>,
    /// Every message up to this id is covered (after a lagged receiver purged everything).
    floor: Mutex<i64>,
    changed: watch::Sender<u64>,
}

impl Purged {
    pub(crate) fn new() -> Self {
        Self {
            rooms: Mutex::new(HashMap::new()),
            floor: Mutex::new(0),
            changed: watch::channel(0).0,
        }
    }

    fn covers(&self, room: &RoomName, id: i64) -> bool {
        if *self.floor.lock().unwrap_or_else(|e| e.into_inner()) >= id {
            return true;
        }
        self.rooms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(room)
            .is_some_and(|done| *done >= id)
    }

    fn mark(&self, room: RoomName, last_id: i64) {
        {
            let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
            if rooms.len() >= MAX_TRACKED_ROOMS && !rooms.contains_key(&room) {
                // Forgetting is safe: a waiter then runs into its bound instead.
                rooms.clear();
            }
            let done = rooms.entry(room).or_insert(0);
            *done = (*done).max(last_id);
        }
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn mark_all(&self, through: i64) {
        {
            let mut floor = self.floor.lock().unwrap_or_else(|e| e.into_inner());
            *floor = (*floor).max(through);
        }
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Waits until the purge for message `id` in `room` has been applied, at most `limit`.
    pub(crate) async fn wait(&self, room: &RoomName, id: i64, limit: Duration) -> bool {
        let mut rx = self.changed.subscribe();
        let wait = async {
            while !self.covers(room, id) {
                if rx.changed().await.is_err() {
                    return false;
                }
            }
            true
        };
        tokio::time::timeout(limit, wait).await.unwrap_or(false)
    }
}

/// Purges the tags of every projected room, in order, until the service closes.
pub(crate) async fn invalidate_on_projection(
    mut notices: broadcast::Receiver<RoomProjected>,
    handle: CacheHandle,
    purged: std::sync::Weak<Purged>,
    position: watch::Receiver<i64>,
) {
    loop {
        match notices.recv().await {
            Ok(notice) => {
                handle
                    .purge(Purge::tag(format!("room:{}", notice.room)))
                    .await;
                handle.purge(Purge::tag("rooms")).await;
                let Some(purged) = purged.upgrade() else {
                    return;
                };
                purged.mark(notice.room, notice.last_id);
            }
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                // Which rooms changed is lost: drop everything.
                let through = *position.borrow();
                tracing::warn!(missed, "projection notices lagged; purging the whole cache");
                handle.purge(Purge::all()).await;
                let Some(purged) = purged.upgrade() else {
                    return;
                };
                purged.mark_all(through);
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}
