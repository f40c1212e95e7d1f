//! The lower tiers behind the in-process one: the read path L1 → L2 → L3 → origin with
//! promotion, writes off the response path, purges that reach every tier and every instance.
//!
//! The in-process tier stays the only one on the hit path; this module runs only after it missed.
// Without the `redis` feature (purges, leases, the subscriber) parts of this module rest.
#![cfg_attr(
    not(feature = "redis"),
    allow(dead_code, unused_imports, unused_variables)
)]

#[cfg(feature = "redis")]
use std::collections::HashMap;
use std::collections::VecDeque;
use std::fmt;
use std::sync::Weak;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tokio::sync::{Notify, Semaphore, broadcast};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tower_service::Service;

use crate::body::CacheBody;
use crate::codec;
use crate::layer::Shared;
use crate::metrics::{self, TierLabel};
use crate::service::Cache;
use crate::store::{Clock, MemoryTier, StoredEntry};

#[cfg(feature = "disk")]
use crate::disk_tier::DiskTier;
#[cfg(feature = "redis")]
use crate::redis_tier::{CallFailure, LeaseToken, RedisTier, Validity};

/// Marks a request whose lower tiers were already consulted, so the second pass through the
/// service goes to the origin on a miss.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LowerChecked;

/// Writes to lower tiers running at once; more are dropped (and counted).
const MAX_WRITES: usize = 256;
/// Purges propagating at once; more wait in the retry queue.
const MAX_PURGES: usize = 256;
/// Purges kept for a retry after Redis was unreachable; past it they are replaced by one purge of
/// everything.
const MAX_PENDING_PURGES: usize = 1024;
/// How often purges that could not reach the lower tiers are tried again while any are left.
const PENDING_RETRY_INTERVAL: Duration = Duration::from_millis(100);
/// Leases held at once by one instance.
const MAX_LEASES: usize = 10_000;
/// Sequence observations kept.
const SEQ_HISTORY: usize = 64;

/// What a purge applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    Key(String),
    Tag(String),
    Prefix(String),
    All,
}

/// A purge to apply on every tier of every instance, for [`CacheHandle::purge`](crate::CacheHandle::purge).
///
/// ```
/// use cache_layer::Purge;
///
/// let hard = Purge::tag("room:42");
/// let soft = Purge::url("http://example.com/rooms/42").soft();
/// assert!(soft.is_soft() && !hard.is_soft());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purge {
    pub(crate) target: PurgeTarget,
    pub(crate) soft: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PurgeTarget {
    Url(String),
    Resolved(Target),
}

impl Purge {
    /// Every variant stored for an absolute URL.
    pub fn url(url: impl Into<String>) -> Self {
        Self {
            target: PurgeTarget::Url(url.into()),
            soft: false,
        }
    }

    /// Every entry carrying `tag`.
    pub fn tag(tag: impl Into<String>) -> Self {
        Self {
            target: PurgeTarget::Resolved(Target::Tag(tag.into())),
            soft: false,
        }
    }

    /// Every entry whose key starts with `prefix`.
    pub fn prefix(prefix: impl Into<String>) -> Self {
        Self {
            target: PurgeTarget::Resolved(Target::Prefix(prefix.into())),
            soft: false,
        }
    }

    /// Everything.
    pub fn all() -> Self {
        Self {
            target: PurgeTarget::Resolved(Target::All),
            soft: false,
        }
    }

    /// Marks the entries stale instead of removing them.
    pub fn soft(mut self) -> Self {
        self.soft = true;
        self
    }

    /// Whether this purge marks stale instead of removing.
    pub fn is_soft(&self) -> bool {
        self.soft
    }

    /// The tag this purge names, if it is a tag purge.
    pub fn tag_name(&self) -> Option<&str> {
        match &self.target {
            PurgeTarget::Resolved(Target::Tag(t)) => Some(t),
            _ => None,
        }
    }
}

/// Something the lower tiers did that callers (and tests) may wait for.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TierEvent {
    /// The invalidation subscription is (again) in place.
    Subscribed,
    /// The in-process (and persistent) tier was flushed because invalidations may have been
    /// missed while the subscription was down.
    Flushed,
    /// A purge from another instance was applied here.
    RemotePurge(Purge),
}

/// Counters of the lower tiers, from [`CacheHandle::tier_stats`](crate::CacheHandle::tier_stats).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TierStats {
    /// Shared-tier lookups that found a usable entry.
    pub l2_hits: u64,
    /// Shared-tier lookups that found nothing usable (absent, purged, corrupt).
    pub l2_misses: u64,
    /// Shared-tier calls that failed or timed out.
    pub l2_errors: u64,
    /// Shared-tier calls not made because the breaker was open.
    pub l2_rejected: u64,
    /// Persistent-tier lookups that found a usable entry.
    pub l3_hits: u64,
    /// Persistent-tier lookups that found nothing usable.
    pub l3_misses: u64,
    /// Stored entries that failed to decode (deleted).
    pub corrupt: u64,
    /// Entries written to lower tiers.
    pub writes: u64,
    /// Writes dropped because too many were in flight.
    pub dropped_writes: u64,
    /// Fill leases taken by this instance.
    pub leases_taken: u64,
    /// Misses that found another instance's lease and waited.
    pub leases_waited: u64,
    /// Waits that ended with the leader's entry.
    pub lease_fills: u64,
    /// Purges from other instances applied here.
    pub remote_purges: u64,
    /// Purges this instance published.
    pub published_purges: u64,
    /// Times the invalidation subscription was (re)established.
    pub subscriptions: u64,
    /// In-process flushes after a lost subscription.
    pub flushes: u64,
    /// Whether the invalidation subscription is up now.
    pub subscribed: bool,
}

#[derive(Debug, Default)]
struct Stats {
    l2_hits: AtomicU64,
    l2_misses: AtomicU64,
    l2_errors: AtomicU64,
    l2_rejected: AtomicU64,
    l3_hits: AtomicU64,
    l3_misses: AtomicU64,
    corrupt: AtomicU64,
    writes: AtomicU64,
    dropped_writes: AtomicU64,
    leases_taken: AtomicU64,
    leases_waited: AtomicU64,
    lease_fills: AtomicU64,
    remote_purges: AtomicU64,
    published_purges: AtomicU64,
    subscriptions: AtomicU64,
    flushes: AtomicU64,
    subscribed: AtomicBool,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// When this instance learnt which purge sequence numbers: an entry fetched from the origin
/// at time `t` is valid at the sequence known at `t`, never at one learnt later.
#[derive(Debug, Default)]
struct SeqHistory {
    points: Mutex<SeqPoints>,
}

#[derive(Debug, Default)]
struct SeqPoints {
    known: VecDeque<(Instant, u64)>,
    /// Set by [`SeqHistory::forget_before`]: no sequence is known for times before it.
    void_before: Option<Instant>,
}

impl SeqHistory {
    fn observe(&self, at: Instant, seq: u64) {
        let mut p = self.points.lock().unwrap_or_else(|e| e.into_inner());
        if p.known.back().map(|b| b.1) == Some(seq) {
            return;
        }
        // A lower value than before means Redis lost its sequence (or a stale reply): later
        // fetches use the lower one, which can only make entries look older.
        p.known.push_back((at, seq));
        if p.known.len() > SEQ_HISTORY {
            p.known.pop_front();
        }
    }

    /// Voids what was learnt before `at`, when Redis may have lost its sequence: a time before
    /// `at` has no sequence any more, and from `at` on it is 0 (the oldest stamp there is) until
    /// Redis tells a current one.
    fn forget_before(&self, at: Instant) {
        let mut p = self.points.lock().unwrap_or_else(|e| e.into_inner());
        p.known.clear();
        p.known.push_back((at, 0));
        p.void_before = Some(at);
    }

    /// The sequence known at `t`; `None` when what was known then has been voided.
    fn at(&self, t: Instant) -> Option<u64> {
        let p = self.points.lock().unwrap_or_else(|e| e.into_inner());
        if p.void_before.is_some_and(|v| t < v) {
            return None;
        }
        Some(
            p.known
                .iter()
                .rev()
                .find(|(i, _)| *i <= t)
                .map_or(0, |(_, s)| *s),
        )
    }
}

/// The lower tiers of one layer and their background machinery.
pub(crate) struct Lower {
    clock: Clock,
    l1: MemoryTier,
    #[cfg(feature = "redis")]
    l2: Option<RedisTier>,
    #[cfg(feature = "disk")]
    l3: Option<DiskTier>,
    writes: Arc<Semaphore>,
    purges: Arc<Semaphore>,
    stats: Stats,
    seq: SeqHistory,
    #[cfg(feature = "redis")]
    leases: Mutex<HashMap<Arc<str>, LeaseToken>>,
    pending: Mutex<VecDeque<(Target, bool)>>,
    /// Length of `pending`, readable without its lock.
    pending_len: AtomicUsize,
    /// Retries of pending purges running now (their purges are off the queue meanwhile).
    retrying: AtomicUsize,
    /// Wakes the task that retries pending purges.
    retry_wake: Arc<Notify>,
    events: broadcast::Sender<TierEvent>,
    instance: String,
    compress_above: Option<usize>,
    /// `serve_stale_on_error`: lower tiers keep entries that long past freshness too.
    stale_on_error: Duration,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl fmt::Debug for Lower {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lower")
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

impl Drop for Lower {
    fn drop(&mut self) {
        for t in self.tasks.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            t.abort();
        }
    }
}

/// Lower tiers chosen on the builder.
#[derive(Default)]
pub(crate) struct LowerConfig {
    #[cfg(feature = "redis")]
    pub(crate) l2: Option<RedisTier>,
    #[cfg(feature = "disk")]
    pub(crate) l3: Option<DiskTier>,
    pub(crate) compress_above: Option<usize>,
    pub(crate) stale_on_error: Duration,
}

impl LowerConfig {
    pub(crate) fn is_empty(&self) -> bool {
        #[allow(unused_mut)]
        let mut empty = true;
        #[cfg(feature = "redis")]
        {
            empty &= self.l2.is_none();
        }
        #[cfg(feature = "disk")]
        {
            empty &= self.l3.is_none();
        }
        empty
    }
}

/// An entry found below L1.
enum Found {
    Entry(
        StoredEntry,
        #[cfg_attr(not(feature = "disk"), allow(dead_code))] u64,
    ),
    Nothing,
    /// The tier could not be asked (breaker open, timeout, error).
    Unavailable,
}

impl Lower {
    /// Builds the lower tiers, hooks them to L1's stores and starts the subscriber.
    pub(crate) fn start(config: LowerConfig, l1: MemoryTier, clock: Clock) -> Arc<Self> {
        let (events, _) = broadcast::channel(256);
        let lower = Arc::new(Self {
            clock,
            l1: l1.clone(),
            #[cfg(feature = "redis")]
            l2: config.l2,
            #[cfg(feature = "disk")]
            l3: config.l3,
            writes: Arc::new(Semaphore::new(MAX_WRITES)),
            purges: Arc::new(Semaphore::new(MAX_PURGES)),
            stats: Stats::default(),
            seq: SeqHistory::default(),
            #[cfg(feature = "redis")]
            leases: Mutex::new(HashMap::new()),
            pending: Mutex::new(VecDeque::new()),
            pending_len: AtomicUsize::new(0),
            retrying: AtomicUsize::new(0),
            retry_wake: Arc::new(Notify::new()),
            events,
            instance: format!("{:016x}", fastrand::u64(..)),
            compress_above: config.compress_above,
            stale_on_error: config.stale_on_error,
            tasks: Mutex::new(Vec::new()),
        });
        let weak = Arc::downgrade(&lower);
        l1.set_store_hook(Arc::new(move |key: &Arc<str>, entry: &Arc<StoredEntry>| {
            if let Some(lower) = weak.upgrade() {
                lower.on_store(key, entry);
            }
        }));
        #[cfg(feature = "redis")]
        if let Some(l2) = &lower.l2
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let task = rt.spawn(subscribe_loop(l2.clone(), Arc::downgrade(&lower)));
            lower
                .tasks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(task);
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let task = rt.spawn(retry_loop(Arc::downgrade(&lower), lower.retry_wake.clone()));
            lower
                .tasks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(task);
        }
        lower
    }

    /// True while a purge made here has not reached the lower tiers: queued, or being retried.
    fn purges_unapplied(&self) -> bool {
        self.pending_len.load(Ordering::SeqCst) > 0 || self.retrying.load(Ordering::SeqCst) > 0
    }

    pub(crate) fn stats(&self) -> TierStats {
        let s = &self.stats;
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TierStats {
            l2_hits: g(&s.l2_hits),
            l2_misses: g(&s.l2_misses),
            l2_errors: g(&s.l2_errors),
            l2_rejected: g(&s.l2_rejected),
            l3_hits: g(&s.l3_hits),
            l3_misses: g(&s.l3_misses),
            corrupt: g(&s.corrupt),
            writes: g(&s.writes),
            dropped_writes: g(&s.dropped_writes),
            leases_taken: g(&s.leases_taken),
            leases_waited: g(&s.leases_waited),
            lease_fills: g(&s.lease_fills),
            remote_purges: g(&s.remote_purges),
            published_purges: g(&s.published_purges),
            subscriptions: g(&s.subscriptions),
            flushes: g(&s.flushes),
            subscribed: s.subscribed.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<TierEvent> {
        self.events.subscribe()
    }

    #[cfg(feature = "redis")]
    fn count_failure(&self, f: CallFailure) {
        match f {
            CallFailure::Rejected => bump(&self.stats.l2_rejected),
            CallFailure::Timeout | CallFailure::Error => bump(&self.stats.l2_errors),
        }
    }

    /// Decodes what a lower tier returned; a corrupt entry is deleted and is a miss.
    fn decode(&self, bytes: &[u8], now: Instant) -> Option<(StoredEntry, u64)> {
        match codec::decode(bytes, &self.clock, now) {
            Ok(d) => Some((d.entry, d.seq)),
            Err(e) => {
                bump(&self.stats.corrupt);
                tracing::debug!(error = %e, "corrupt entry in a lower tier: deleted");
                None
            }
        }
    }

    #[cfg(feature = "redis")]
    async fn l2_lookup(&self, l2: &RedisTier, key: &str) -> Found {
        // An entry in Redis may be one that a purge made here, and not yet delivered, removes:
        // none is trusted until every such purge has reached Redis.
        if self.purges_unapplied() {
            self.retry_wake.notify_one();
            return Found::Unavailable;
        }
        let (bytes, seq) = match l2.inner.get(key).await {
            Ok(r) => r,
            Err(f) => {
                self.count_failure(f);
                return Found::Unavailable;
            }
        };
        let now = self.clock.now();
        self.seq.observe(now, seq);
        let Some(bytes) = bytes else {
            return Found::Nothing;
        };
        let Some((entry, entry_seq)) = self.decode(&bytes, now) else {
            self.spawn_l2_delete(l2, key);
            return Found::Nothing;
        };
        match self.check(l2, &entry, entry_seq).await {
            Some(Validity::Valid) => Found::Entry(entry, entry_seq),
            Some(Validity::SoftPurged) => {
                self.mark_soft(&entry, now);
                Found::Entry(entry, entry_seq)
            }
            Some(Validity::Purged) => {
                self.spawn_l2_delete(l2, key);
                Found::Nothing
            }
            None => Found::Unavailable,
        }
    }

    #[cfg(feature = "redis")]
    async fn check(&self, l2: &RedisTier, entry: &StoredEntry, seq: u64) -> Option<Validity> {
        match l2.inner.validity(&entry.tags, seq).await {
            Ok(v) => Some(v),
            Err(f) => {
                self.count_failure(f);
                None
            }
        }
    }

    fn mark_soft(&self, entry: &StoredEntry, now: Instant) {
        let stamp = self.clock.stamp(now);
        for v in entry.variants.iter() {
            let _ =
                v.soft_purged_at
                    .compare_exchange(0, stamp, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    #[cfg(feature = "redis")]
    fn spawn_l2_delete(&self, l2: &RedisTier, key: &str) {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (l2, key) = (l2.clone(), key.to_owned());
            rt.spawn(async move {
                let _ = l2.inner.delete(&key).await;
            });
        }
    }

    /// L2, then L3; on a full miss, the fill lease (and a short wait for another leader).
    async fn lookup(self: &Arc<Self>, key: &str, lease: bool) -> Option<StoredEntry> {
        #[allow(unused_mut)]
        let mut l2_up = false;
        #[cfg(feature = "redis")]
        if let Some(l2) = &self.l2 {
            match self.l2_lookup(l2, key).await {
                Found::Entry(e, _) => {
                    bump(&self.stats.l2_hits);
                    metrics::record_tier_lookup(TierLabel::L2, true);
                    return Some(e);
                }
                Found::Nothing => {
                    bump(&self.stats.l2_misses);
                    metrics::record_tier_lookup(TierLabel::L2, false);
                    l2_up = true;
                }
                Found::Unavailable => {}
            }
        }
        #[cfg(feature = "disk")]
        if let Some(l3) = &self.l3 {
            match self.l3_lookup(l3, key).await {
                Found::Entry(e, seq) => {
                    bump(&self.stats.l3_hits);
                    metrics::record_tier_lookup(TierLabel::L3, true);
                    if l2_up {
                        self.promote_to_l2(key, &e, seq);
                    }
                    return Some(e);
                }
                Found::Nothing | Found::Unavailable => {
                    bump(&self.stats.l3_misses);
                    metrics::record_tier_lookup(TierLabel::L3, false);
                }
            }
        }
        #[cfg(feature = "redis")]
        if l2_up
            && lease
            && let Some(l2) = &self.l2
        {
            return self.lease_or_wait(l2, key).await;
        }
        let _ = (l2_up, lease);
        None
    }

    #[cfg(feature = "redis")]
    async fn lease_or_wait(&self, l2: &RedisTier, key: &str) -> Option<StoredEntry> {
        let inner = &l2.inner;
        if inner.lease_polls == 0 {
            return None;
        }
        if self.leases.lock().unwrap_or_else(|e| e.into_inner()).len() >= MAX_LEASES {
            return None;
        }
        match inner.take_lease(key).await {
            Ok(Some(token)) => {
                bump(&self.stats.leases_taken);
                metrics::record_lease("taken");
                self.leases
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(Arc::from(key), token);
                None
            }
            Ok(None) => {
                bump(&self.stats.leases_waited);
                metrics::record_lease("waited");
                for _ in 0..inner.lease_polls {
                    tokio::time::sleep(inner.lease_poll_interval).await;
                    match self.l2_lookup(l2, key).await {
                        Found::Entry(e, _) => {
                            bump(&self.stats.lease_fills);
                            bump(&self.stats.l2_hits);
                            metrics::record_lease("filled");
                            metrics::record_tier_lookup(TierLabel::L2, true);
                            return Some(e);
                        }
                        Found::Nothing => {}
                        Found::Unavailable => return None,
                    }
                }
                metrics::record_lease("gave_up");
                None
            }
            Err(f) => {
                self.count_failure(f);
                None
            }
        }
    }

    #[cfg(feature = "redis")]
    fn release_lease(&self, key: &str) {
        let Some(l2) = &self.l2 else { return };
        let token = self
            .leases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
        if let Some(token) = token
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let l2 = l2.clone();
            rt.spawn(async move {
                let _ = l2.inner.release_lease(&token).await;
            });
        }
    }

    #[cfg(feature = "disk")]
    async fn l3_lookup(&self, l3: &DiskTier, key: &str) -> Found {
        let bytes = match l3.get(key).await {
            Ok(Some(b)) => b,
            Ok(None) => return Found::Nothing,
            Err(()) => return Found::Unavailable,
        };
        let now = self.clock.now();
        let Some((entry, seq)) = self.decode(&bytes, now) else {
            l3.spawn_remove(key.to_owned());
            return Found::Nothing;
        };
        #[cfg(feature = "redis")]
        if let Some(l2) = &self.l2 {
            // With Redis reachable, purges missed while this copy sat on disk still count.
            match self.check(l2, &entry, seq).await {
                Some(Validity::Purged) => {
                    l3.spawn_remove(key.to_owned());
                    return Found::Nothing;
                }
                Some(Validity::SoftPurged) => self.mark_soft(&entry, now),
                Some(Validity::Valid) | None => {}
            }
        }
        Found::Entry(entry, seq)
    }

    #[cfg(all(feature = "disk", feature = "redis"))]
    fn promote_to_l2(self: &Arc<Self>, key: &str, entry: &StoredEntry, seq: u64) {
        let Some(l2) = self.l2.clone() else { return };
        let Ok(permit) = self.writes.clone().try_acquire_owned() else {
            bump(&self.stats.dropped_writes);
            metrics::record_dropped_write();
            return;
        };
        let Some(bytes) = codec::encode(entry, &self.clock, seq, self.compress_above) else {
            return;
        };
        let ttl = keep_for(entry, l2.inner.ttl_cap, self.stale_on_error);
        let key = key.to_owned();
        tokio::spawn(async move {
            if bytes.len() <= l2.inner.max_entry_bytes && !ttl.is_zero() {
                let _ = l2.inner.put(&key, bytes, ttl).await;
            }
            drop(permit);
        });
    }

    #[cfg(all(feature = "disk", not(feature = "redis")))]
    fn promote_to_l2(self: &Arc<Self>, _key: &str, _entry: &StoredEntry, _seq: u64) {}

    /// Called by L1 for every entry built from an origin response: queue the lower writes.
    fn on_store(self: &Arc<Self>, key: &Arc<str>, entry: &Arc<StoredEntry>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // With the shared tier refusing calls and no persistent tier, there is nothing to do.
        #[allow(unused_mut)]
        let mut useful = false;
        #[cfg(feature = "redis")]
        {
            useful |= self.l2.as_ref().is_some_and(|l2| !l2.inner.refusing());
        }
        #[cfg(feature = "disk")]
        {
            useful |= self.l3.is_some();
        }
        if !useful {
            #[cfg(feature = "redis")]
            self.leases
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&**key);
            return;
        }
        #[cfg(feature = "redis")]
        let lease = self
            .leases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
        let Ok(permit) = self.writes.clone().try_acquire_owned() else {
            bump(&self.stats.dropped_writes);
            metrics::record_dropped_write();
            return;
        };
        // The sequence known when the oldest variant's request left: purges after that may
        // not be reflected in it.
        let requested = entry
            .variants
            .iter()
            .map(|v| {
                v.response_instant
                    .checked_sub(v.fetch_time)
                    .unwrap_or(v.response_instant)
            })
            .min()
            .unwrap_or(entry.stored_at);
        // Fetched before a flush, it has no sequence that later purges are sure to reach: it is
        // not written (see `flush`).
        let Some(seq) = self.seq.at(requested) else {
            bump(&self.stats.dropped_writes);
            metrics::record_dropped_write();
            return;
        };
        let me = self.clone();
        let (key, entry) = (key.clone(), entry.clone());
        rt.spawn(async move {
            #[cfg(feature = "redis")]
            me.write(&key, &entry, seq, lease).await;
            #[cfg(not(feature = "redis"))]
            me.write(&key, &entry, seq).await;
            drop(permit);
        });
    }

    async fn write(
        &self,
        key: &str,
        entry: &StoredEntry,
        seq: u64,
        #[cfg(feature = "redis")] lease: Option<LeaseToken>,
    ) {
        let Some(bytes) = codec::encode(entry, &self.clock, seq, self.compress_above) else {
            return;
        };
        bump(&self.stats.writes);
        #[cfg(feature = "redis")]
        if let Some(l2) = &self.l2 {
            let ttl = keep_for(entry, l2.inner.ttl_cap, self.stale_on_error);
            if bytes.len() <= l2.inner.max_entry_bytes
                && !ttl.is_zero()
                && let Err(f) = l2.inner.put(key, bytes.clone(), ttl).await
            {
                self.count_failure(f);
            }
            if let Some(lease) = lease
                && let Err(f) = l2.inner.release_lease(&lease).await
            {
                self.count_failure(f);
            }
        }
        #[cfg(feature = "disk")]
        if let Some(l3) = &self.l3 {
            let ttl = keep_for(entry, l3.ttl_cap(), self.stale_on_error);
            if !ttl.is_zero() {
                let _ = l3.put(key, bytes, ttl, &entry.tags).await;
            }
        }
    }

    /// Applies a purge to the lower tiers and tells the other instances (in the background).
    pub(crate) fn propagate(self: &Arc<Self>, target: Target, soft: bool) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.queue_pending(target, soft);
            return;
        };
        let Ok(permit) = self.purges.clone().try_acquire_owned() else {
            self.queue_pending(target, soft);
            return;
        };
        let me = self.clone();
        rt.spawn(async move {
            me.purge_lower(target, soft).await;
            drop(permit);
        });
    }

    fn queue_pending(&self, target: Target, soft: bool) {
        {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            if p.len() >= MAX_PENDING_PURGES {
                // Too many to keep: one purge of everything covers them all, in every tier and
                // on every instance.
                p.clear();
                p.push_back((Target::All, false));
            } else {
                p.push_back((target, soft));
            }
            self.pending_len.store(p.len(), Ordering::SeqCst);
        }
        self.retry_wake.notify_one();
    }

    /// Purges L3 and L2 and publishes the purge; returns false when Redis could not be told.
    pub(crate) async fn purge_lower(&self, target: Target, soft: bool) -> bool {
        #[cfg(feature = "disk")]
        if let Some(l3) = &self.l3 {
            l3.purge(&target).await;
        }
        #[cfg(feature = "redis")]
        if let Some(l2) = &self.l2 {
            let inner = &l2.inner;
            let seq = match &target {
                Target::Key(k) => inner.delete(k).await.map(|_| 0),
                Target::Tag(t) => inner.purge_generations(Some(&[t.as_str()]), soft).await,
                Target::Prefix(p) if p.is_empty() => inner.purge_generations(None, soft).await,
                Target::All => inner.purge_generations(None, soft).await,
                Target::Prefix(p) => inner.delete_prefix(p).await.map(|_| 0),
            };
            let seq = match seq {
                Ok(s) => s,
                Err(f) => {
                    self.count_failure(f);
                    self.queue_pending(target, soft);
                    return false;
                }
            };
            if seq > 0 {
                self.seq.observe(self.clock.now(), seq);
            }
            let message = encode_message(&self.instance, seq, &target, soft);
            if let Err(f) = inner.publish(message).await {
                self.count_failure(f);
                self.queue_pending(target, soft);
                return false;
            }
            bump(&self.stats.published_purges);
        }
        let _ = (target, soft);
        true
    }

    /// Applies a purge to this instance's L1 (and L3) only.
    fn apply_local(&self, target: &Target, soft: bool) -> usize {
        let keys = match target {
            Target::Key(k) => vec![Arc::<str>::from(k.as_str())],
            Target::Tag(t) => self.l1.keys_with_tag(t),
            Target::Prefix(p) => self.l1.keys_with_prefix(p),
            Target::All => self.l1.keys_with_prefix(""),
        };
        let stamp = self.clock.stamp(self.clock.now());
        keys.iter()
            .filter(|k| {
                if soft {
                    self.l1.soft_purge(k, stamp)
                } else {
                    self.l1.invalidate(k)
                }
            })
            .count()
    }

    #[cfg(feature = "redis")]
    async fn apply_remote(&self, payload: &str) {
        let Some((instance, seq, target, soft)) = decode_message(payload) else {
            tracing::debug!(payload, "unreadable invalidation message ignored");
            return;
        };
        if seq > 0 {
            self.seq.observe(self.clock.now(), seq);
        }
        if instance == self.instance {
            return;
        }
        let n = self.apply_local(&target, soft);
        #[cfg(feature = "disk")]
        if let Some(l3) = &self.l3 {
            l3.purge(&target).await;
        }
        bump(&self.stats.remote_purges);
        metrics::record_remote_purge();
        tracing::debug!(?target, soft, removed = n, "remote purge applied");
        let purge = Purge {
            target: PurgeTarget::Resolved(target),
            soft,
        };
        let _ = self.events.send(TierEvent::RemotePurge(purge));
    }

    /// Drops everything held locally: invalidations may have been missed.
    ///
    /// Redis may also have lost its purge sequence (restarted empty), and its new sequence starts
    /// again from zero: an entry stamped with the sequence this instance knew before would look
    /// newer than every purge to come, and outlive them. So entries fetched from now on are
    /// stamped with 0 until Redis tells a current sequence (the oldest stamp there is, which any
    /// purge of their tags reaches), and entries fetched before now are not written at all.
    async fn flush(&self) {
        self.seq.forget_before(self.clock.now());
        self.apply_local(&Target::All, false);
        #[cfg(feature = "disk")]
        if let Some(l3) = &self.l3 {
            l3.purge(&Target::All).await;
        }
        bump(&self.stats.flushes);
        metrics::record_flush();
        let _ = self.events.send(TierEvent::Flushed);
    }

    /// Tries the pending purges again, in order; at the first that fails (and is queued again by
    /// [`purge_lower`](Self::purge_lower)) the rest go back to the queue behind it.
    async fn retry_pending(&self) {
        // Counted before the queue is emptied, so the purges are never unaccounted for.
        self.retrying.fetch_add(1, Ordering::SeqCst);
        let pending: Vec<(Target, bool)> = {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let drained = p.drain(..).collect();
            self.pending_len.store(0, Ordering::SeqCst);
            drained
        };
        let mut rest = pending.into_iter();
        while let Some((target, soft)) = rest.next() {
            if !self.purge_lower(target, soft).await {
                for (target, soft) in rest {
                    self.queue_pending(target, soft);
                }
                break;
            }
        }
        self.retrying.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Tries pending purges again as soon as they are queued and then every
/// [`PENDING_RETRY_INTERVAL`] until none is left, whatever the invalidation subscription does.
async fn retry_loop(lower: Weak<Lower>, wake: Arc<Notify>) {
    loop {
        wake.notified().await;
        loop {
            let Some(me) = lower.upgrade() else { return };
            me.retry_pending().await;
            let done = me.pending_len.load(Ordering::SeqCst) == 0;
            drop(me);
            if done {
                break;
            }
            tokio::time::sleep(PENDING_RETRY_INTERVAL).await;
        }
    }
}

/// How long a lower tier keeps an entry: until no variant can be used any more (freshness
/// plus the stale windows; the cap when a validator keeps it useful), never past `cap`.
fn keep_for(entry: &StoredEntry, cap: Duration, stale_on_error: Duration) -> Duration {
    let mut keep = Duration::ZERO;
    for v in entry.variants.iter() {
        if v.has_validator() {
            return cap;
        }
        let remaining = v.lifetime.saturating_sub(v.corrected_initial_age);
        keep = keep.max(remaining.saturating_add(v.stale_windows(stale_on_error)));
    }
    keep.min(cap)
}

fn encode_message(instance: &str, seq: u64, target: &Target, soft: bool) -> String {
    let (kind, arg) = match target {
        Target::Key(k) => ("k", k.as_str()),
        Target::Tag(t) => ("t", t.as_str()),
        Target::Prefix(p) => ("p", p.as_str()),
        Target::All => ("a", ""),
    };
    format!("1 {instance} {seq} {kind} {} {arg}", u8::from(soft))
}

#[cfg_attr(not(feature = "redis"), allow(dead_code))]
fn decode_message(payload: &str) -> Option<(&str, u64, Target, bool)> {
    let mut it = payload.splitn(6, ' ');
    if it.next()? != "1" {
        return None;
    }
    let instance = it.next()?;
    let seq = it.next()?.parse().ok()?;
    let kind = it.next()?;
    let soft = match it.next()? {
        "0" => false,
        "1" => true,
        _ => return None,
    };
    let arg = it.next().unwrap_or("").to_owned();
    let target = match kind {
        "k" => Target::Key(arg),
        "t" => Target::Tag(arg),
        "p" => Target::Prefix(arg),
        "a" => Target::All,
        _ => return None,
    };
    Some((instance, seq, target, soft))
}

#[cfg(feature = "redis")]
async fn subscribe_loop(l2: RedisTier, lower: Weak<Lower>) {
    use futures_util::StreamExt;

    let inner = l2.inner.clone();
    let mut first = true;
    let mut backoff = Duration::from_millis(50);
    loop {
        let connect = async {
            let mut pubsub = inner.pubsub.get_async_pubsub().await?;
            pubsub.subscribe(&inner.channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let limit = inner.heartbeat.max(Duration::from_millis(200));
        let pubsub = match tokio::time::timeout(limit, connect).await {
            Ok(Ok(p)) => p,
            Ok(Err(_)) | Err(_) => {
                first = false;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        let Some(me) = lower.upgrade() else { return };
        if !first {
            me.flush().await;
        }
        first = false;
        bump(&me.stats.subscriptions);
        metrics::record_subscription();
        me.stats.subscribed.store(true, Ordering::Relaxed);
        let _ = me.events.send(TierEvent::Subscribed);
        me.retry_pending().await;
        drop(me);

        let up_since = Instant::now();
        let (mut sink, mut stream) = pubsub.split();
        let mut heartbeat = tokio::time::interval(inner.heartbeat);
        heartbeat.tick().await;
        loop {
            tokio::select! {
                msg = stream.next() => {
                    let Some(msg) = msg else { break };
                    let Some(me) = lower.upgrade() else { return };
                    if let Ok(payload) = std::str::from_utf8(msg.get_payload_bytes()) {
                        me.apply_remote(payload).await;
                    }
                }
                _ = heartbeat.tick() => {
                    let ping = sink.ping::<String>();
                    match tokio::time::timeout(inner.heartbeat, ping).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(_)) | Err(_) => break,
                    }
                }
            }
        }
        if let Some(me) = lower.upgrade() {
            me.stats.subscribed.store(false, Ordering::Relaxed);
        }
        tracing::debug!("invalidation subscription lost");
        // A subscription that keeps dropping right after it was made (a server that kills
        // subscribers, a proxy that resets) is retried with growing pauses, not in a loop that
        // reconnects and flushes L1 as fast as the network allows.
        if up_since.elapsed() < STABLE_SUBSCRIPTION {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        } else {
            backoff = Duration::from_millis(50);
        }
    }
}

/// How long a subscription must have lasted for its loss to be retried at once.
#[cfg(feature = "redis")]
const STABLE_SUBSCRIPTION: Duration = Duration::from_secs(5);

/// The miss path with lower tiers: look below L1, promote what is found, then let the service
/// answer (from L1 now, or from the origin).
pub(crate) async fn through_lower<S, B, ResBody>(
    shared: Arc<Shared>,
    inner: S,
    mut parts: http::request::Parts,
    body: B,
    key: String,
) -> Result<Response<CacheBody<ResBody>>, S::Error>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Send + 'static,
{
    parts.extensions.insert(LowerChecked);
    let lower = shared.lower.clone();
    // Released when this future ends or is dropped (a client that went away mid-miss), so no
    // lease outlives its request, in Redis or in this instance's table.
    #[cfg(feature = "redis")]
    let _release = lower.clone().map(|lower| LeaseRelease {
        lower,
        key: key.clone(),
    });
    // Only a GET fills the shared tier, so only a GET leads a fill.
    let lease = parts.method == http::Method::GET;
    if let Some(lower) = &lower
        && let Some(entry) = lower.lookup(&key, lease).await
    {
        // Promotion: the entry restarts its L1 residence now, with its age carried over.
        shared
            .l1
            .insert_entry(Arc::from(key.as_str()), Arc::new(entry));
    }
    let mut cache = Cache {
        inner,
        shared: shared.clone(),
    };
    cache.call(Request::from_parts(parts, body)).await
}

/// Releases the fill lease a miss may hold on `key` when dropped.
#[cfg(feature = "redis")]
struct LeaseRelease {
    lower: Arc<Lower>,
    key: String,
}

#[cfg(feature = "redis")]
impl Drop for LeaseRelease {
    fn drop(&mut self) {
        self.lower.release_lease(&self.key);
    }
}

/// Whether a request that missed L1 should look in the lower tiers first: not when it already
/// did, and not when the only lower tier is a Redis whose breaker is open (the miss then costs
/// what it costs without lower tiers).
pub(crate) fn wants_lower(shared: &Shared, parts: &http::request::Parts) -> bool {
    match &shared.lower {
        Some(lower) => parts.extensions.get::<LowerChecked>().is_none() && lower.reachable(),
        None => false,
    }
}

impl Lower {
    fn reachable(&self) -> bool {
        #[cfg(feature = "disk")]
        if self.l3.is_some() {
            return true;
        }
        #[cfg(feature = "redis")]
        if let Some(l2) = &self.l2 {
            if !l2.inner.refusing() {
                return true;
            }
            // Asking the breaker lets an Open one move to HalfOpen when its wait is over.
            return match l2.inner.breaker.try_acquire() {
                Ok(_probe) => true,
                Err(_) => {
                    bump(&self.stats.l2_rejected);
                    false
                }
            };
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        for (t, soft) in [
            (Target::Tag("room:1".into()), false),
            (Target::Key("http://h/a b".into()), true),
            (Target::Prefix("http://h/".into()), false),
            (Target::All, false),
        ] {
            let m = encode_message("abc", 7, &t, soft);
            let (i, s, t2, soft2) = decode_message(&m).unwrap();
            assert_eq!((i, s, &t2, soft2), ("abc", 7, &t, soft));
        }
        assert!(decode_message("2 x 1 t 0 a").is_none());
        assert!(decode_message("1 x y t 0 a").is_none());
        assert!(decode_message("1 x 1 q 0 a").is_none());
        assert!(decode_message("").is_none());
    }

    #[test]
    fn too_many_pending_purges_become_one_purge_of_everything() {
        let clock = Clock::new();
        let l1 = MemoryTier::new(
            crate::store::MemoryConfig {
                max_bytes: 1 << 20,
                ttl_cap: Duration::from_secs(1),
                max_tag_pairs: 1000,
                stale_on_error: Duration::ZERO,
            },
            clock,
        );
        // Outside a runtime: no task retries them, so the queue is what is left.
        let lower = Lower::start(LowerConfig::default(), l1, clock);
        assert!(!lower.purges_unapplied());
        for n in 0..MAX_PENDING_PURGES {
            lower.queue_pending(Target::Tag(format!("t{n}")), false);
        }
        assert!(lower.purges_unapplied());
        lower.queue_pending(Target::Tag("one too many".into()), true);
        let pending: Vec<(Target, bool)> = lower.pending.lock().unwrap().iter().cloned().collect();
        assert_eq!(pending, vec![(Target::All, false)]);
        assert_eq!(lower.pending_len.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn sequence_known_at_a_time() {
        let h = SeqHistory::default();
        let t0 = Instant::now();
        assert_eq!(h.at(t0), Some(0));
        h.observe(t0, 3);
        tokio::time::advance(Duration::from_secs(1)).await;
        let t1 = Instant::now();
        h.observe(t1, 5);
        assert_eq!(h.at(t0), Some(3));
        assert_eq!(h.at(t1), Some(5));
        assert_eq!(h.at(t0 + Duration::from_millis(500)), Some(3));
        assert_eq!(
            h.at(t0.checked_sub(Duration::from_millis(1)).unwrap()),
            Some(0)
        );
        for i in 0..200 {
            h.observe(Instant::now(), 10 + i);
        }
        assert_eq!(
            h.at(t0),
            Some(0),
            "history is bounded; older times are unknown"
        );
    }

    /// After Redis restarted empty its sequence starts again from 1: an entry stamped with the
    /// old, higher sequence would look newer than every purge on the new server.
    #[tokio::test(start_paused = true)]
    async fn a_flush_voids_the_sequences_learnt_before_it() {
        let h = SeqHistory::default();
        let fetched = Instant::now();
        h.observe(fetched, 500);
        tokio::time::advance(Duration::from_secs(1)).await;
        let flushed = Instant::now();
        h.forget_before(flushed);
        assert_eq!(h.at(fetched), None, "fetched before the flush: not written");
        tokio::time::advance(Duration::from_millis(10)).await;
        assert_eq!(
            h.at(Instant::now()),
            Some(0),
            "until Redis tells a current one"
        );
        h.observe(Instant::now(), 2);
        assert_eq!(h.at(Instant::now()), Some(2));
    }
}
