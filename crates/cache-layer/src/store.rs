//! Stored responses, the [`Tier`] abstraction and the in-process tier on moka.
//!
//! A tier maps a key to a [`StoredEntry`]: every stored variant (per `Vary`) of one URL.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{StatusCode, Version};
use moka::notification::RemovalCause;
use tokio::time::Instant;

use crate::fields::normalized_value;
use crate::policy::EntryState;

/// Wall-clock time derived from tokio's clock, so paused-time tests move `Date` arithmetic too.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    base: Instant,
    base_unix: Duration,
}

impl Clock {
    pub(crate) fn new() -> Self {
        let base_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Self {
            base: Instant::now(),
            base_unix,
        }
    }

    pub(crate) fn now(&self) -> Instant {
        Instant::now()
    }

    /// Unix seconds at `at`.
    pub(crate) fn unix(&self, at: Instant) -> u64 {
        (self.base_unix + at.saturating_duration_since(self.base)).as_secs()
    }

    /// Unix milliseconds at `at`, for tiers that outlive this process.
    pub(crate) fn unix_millis(&self, at: Instant) -> u64 {
        u64::try_from((self.base_unix + at.saturating_duration_since(self.base)).as_millis())
            .unwrap_or(u64::MAX)
    }

    /// Nanoseconds since this clock was made, plus one (0 is reserved for "never").
    pub(crate) fn stamp(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_nanos())
            .unwrap_or(u64::MAX)
            .saturating_add(1)
    }

    pub(crate) fn instant_of_stamp(&self, stamp: u64) -> Instant {
        self.base
            .checked_add(Duration::from_nanos(stamp.saturating_sub(1)))
            .unwrap_or(self.base)
    }
}

/// Selecting header fields of a variant and the normalised request values they had.
pub(crate) type VaryValues = Box<[(HeaderName, Option<Box<[u8]>>)]>;

type TagMap = HashMap<Arc<str>, HashMap<Arc<str>, u64>>;

/// Told about every entry stored from an origin response (the lower tiers' write path).
pub(crate) type StoreHook = Arc<dyn Fn(&Arc<str>, &Arc<StoredEntry>) + Send + Sync>;

/// One stored response: what a hit sends, and what freshness and validation need.
///
/// Times are kept on the tokio clock; a lower tier stores them as Unix times and rebuilds them.
pub struct StoredResponse {
    pub(crate) status: StatusCode,
    pub(crate) version: Version,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    /// Selecting header fields and their normalised request values (`None`: absent).
    pub(crate) vary: VaryValues,
    pub(crate) response_instant: Instant,
    pub(crate) corrected_initial_age: Duration,
    pub(crate) lifetime: Duration,
    pub(crate) no_cache: bool,
    pub(crate) must_revalidate: bool,
    pub(crate) stale_while_revalidate: Duration,
    pub(crate) stale_if_error: Duration,
    pub(crate) etag: Option<HeaderValue>,
    pub(crate) last_modified: Option<HeaderValue>,
    /// `Last-Modified` (else `Date`) in Unix seconds, for `If-Modified-Since`.
    pub(crate) modified_secs: Option<u64>,
    /// How long the origin took to produce it (XFetch's delta).
    pub(crate) fetch_time: Duration,
    pub(crate) tags: Box<[Arc<str>]>,
    /// Clock stamp of a soft purge, 0 when none.
    pub(crate) soft_purged_at: AtomicU64,
    /// Fields of the last plain hit and the age (seconds) they were built for.
    pub(crate) hit_headers: Mutex<Option<(u64, HeaderMap)>>,
}

impl fmt::Debug for StoredResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredResponse")
            .field("status", &self.status)
            .field("body_len", &self.body.len())
            .field("lifetime", &self.lifetime)
            .field("tags", &self.tags)
            .finish_non_exhaustive()
    }
}

impl StoredResponse {
    /// The stored status code.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The stored header fields (without `Age`).
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The stored body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// Surrogate keys attached to the response.
    pub fn tags(&self) -> &[Arc<str>] {
        &self.tags
    }

    pub(crate) fn matches(&self, request: &HeaderMap) -> bool {
        self.vary
            .iter()
            .all(|(name, value)| normalized_value(request, name).as_deref() == value.as_deref())
    }

    pub(crate) fn same_variant(&self, other: &StoredResponse) -> bool {
        self.vary == other.vary
    }

    pub(crate) fn state(&self, clock: &Clock, now: Instant) -> EntryState {
        let resident = now.saturating_duration_since(self.response_instant);
        let current_age = self.corrected_initial_age.saturating_add(resident);
        let mut lifetime = self.lifetime;
        let purged = self.soft_purged_at.load(Ordering::Relaxed);
        if purged != 0 {
            // A soft purge ends freshness at the purge time; the stale-* windows start there.
            let at = clock.instant_of_stamp(purged);
            let age_at_purge = self
                .corrected_initial_age
                .saturating_add(at.saturating_duration_since(self.response_instant));
            lifetime = lifetime.min(age_at_purge);
        }
        EntryState {
            current_age,
            lifetime,
            no_cache: self.no_cache,
            must_revalidate: self.must_revalidate,
        }
    }

    /// How long past freshness this response may still be served by some stale rule:
    /// `stale-while-revalidate`, `stale-if-error`, or the layer's `serve_stale_on_error`
    /// window when no directive forbids stale use.
    pub(crate) fn stale_windows(&self, stale_on_error: Duration) -> Duration {
        let own = self.stale_while_revalidate.max(self.stale_if_error);
        if self.must_revalidate || self.no_cache {
            own
        } else {
            own.max(stale_on_error)
        }
    }

    pub(crate) fn weight(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 32)
            .sum();
        let vary: usize = self
            .vary
            .iter()
            .map(|(k, v)| k.as_str().len() + v.as_ref().map_or(0, |v| v.len()) + 32)
            .sum();
        // Fields count twice: the stored map and the reusable map of the last hit.
        self.body
            .len()
            .saturating_add(headers.saturating_mul(2))
            .saturating_add(vary)
            .saturating_add(256)
    }

    pub(crate) fn has_validator(&self) -> bool {
        self.etag.is_some() || self.last_modified.is_some()
    }
}

/// Every stored variant of one key, newest first, with the union of their tags.
pub struct StoredEntry {
    pub(crate) id: u64,
    pub(crate) variants: Box<[Arc<StoredResponse>]>,
    pub(crate) tags: Box<[Arc<str>]>,
    pub(crate) weight: u32,
    pub(crate) stored_at: Instant,
}

impl fmt::Debug for StoredEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredEntry")
            .field("variants", &self.variants.len())
            .field("weight", &self.weight)
            .finish_non_exhaustive()
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl StoredEntry {
    pub(crate) fn new(variants: Vec<Arc<StoredResponse>>, stored_at: Instant) -> Self {
        let mut tags: Vec<Arc<str>> = Vec::new();
        let mut weight = 0usize;
        for v in &variants {
            weight = weight.saturating_add(v.weight());
            for t in v.tags.iter() {
                if !tags.contains(t) {
                    tags.push(t.clone());
                }
            }
        }
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            variants: variants.into_boxed_slice(),
            tags: tags.into_boxed_slice(),
            weight: u32::try_from(weight).unwrap_or(u32::MAX),
            stored_at,
        }
    }

    /// The stored variants, newest first.
    pub fn variants(&self) -> &[Arc<StoredResponse>] {
        &self.variants
    }

    /// Approximate bytes held.
    pub fn weight(&self) -> u32 {
        self.weight
    }
}

/// One level of storage (in-process, shared, persistent), all behind the same interface.
///
/// The in-process tier answers synchronously; the methods return futures so that network and
/// disk tiers fit the same shape.
pub trait Tier: Send + Sync + fmt::Debug + 'static {
    /// Short name used as the `tier` metric label.
    fn name(&self) -> &'static str;
    /// Looks a key up.
    fn get(&self, key: &str) -> impl Future<Output = Option<Arc<StoredEntry>>> + Send;
    /// Stores an entry, replacing the key's previous one.
    fn put(&self, key: &str, entry: Arc<StoredEntry>) -> impl Future<Output = ()> + Send;
    /// Removes a key.
    fn remove(&self, key: &str) -> impl Future<Output = ()> + Send;
    /// Removes (or, when `soft`, marks stale) every key starting with `prefix`; returns how many.
    fn purge_prefix(&self, prefix: &str, soft: bool) -> impl Future<Output = usize> + Send;
}

/// Maps tags to the keys whose entries carry them; bounded in pairs.
#[derive(Debug, Default)]
pub(crate) struct TagIndex {
    map: Mutex<TagMap>,
    pairs: AtomicU64,
    max_pairs: u64,
}

impl TagIndex {
    fn with_limit(max_pairs: u64) -> Self {
        Self {
            max_pairs,
            ..Self::default()
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TagMap> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Indexes an entry; false when the index is full (the entry must then not be stored).
    fn add(&self, key: &Arc<str>, entry: &StoredEntry) -> bool {
        if entry.tags.is_empty() {
            return true;
        }
        let mut map = self.lock();
        if self.pairs.load(Ordering::Relaxed) + entry.tags.len() as u64 > self.max_pairs {
            return false;
        }
        for tag in entry.tags.iter() {
            let keys = map.entry(tag.clone()).or_default();
            if keys.insert(key.clone(), entry.id).is_none() {
                self.pairs.fetch_add(1, Ordering::Relaxed);
            }
        }
        true
    }

    fn remove(&self, key: &str, entry: &StoredEntry) {
        if entry.tags.is_empty() {
            return;
        }
        let mut map = self.lock();
        for tag in entry.tags.iter() {
            if let Some(keys) = map.get_mut(tag) {
                if keys.get(key) == Some(&entry.id) {
                    keys.remove(key);
                    self.pairs.fetch_sub(1, Ordering::Relaxed);
                }
                if keys.is_empty() {
                    map.remove(tag);
                }
            }
        }
    }

    fn keys(&self, tag: &str) -> Vec<Arc<str>> {
        self.lock()
            .get(tag)
            .map(|k| k.keys().cloned().collect())
            .unwrap_or_default()
    }

    pub(crate) fn len(&self) -> u64 {
        self.pairs.load(Ordering::Relaxed)
    }
}

/// Sizes of the in-process tier.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MemoryConfig {
    pub(crate) max_bytes: u64,
    pub(crate) ttl_cap: Duration,
    pub(crate) max_tag_pairs: u64,
    /// `serve_stale_on_error`: how long past freshness a response stays servable on origin
    /// failure, for responses that allow stale use at all.
    pub(crate) stale_on_error: Duration,
}

struct EntryExpiry {
    ttl_cap: Duration,
    stale_on_error: Duration,
}

impl moka::Expiry<Arc<str>, Arc<StoredEntry>> for EntryExpiry {
    fn expire_after_create(
        &self,
        _key: &Arc<str>,
        value: &Arc<StoredEntry>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(self.keep_for(value))
    }

    fn expire_after_update(
        &self,
        _key: &Arc<str>,
        value: &Arc<StoredEntry>,
        _updated_at: std::time::Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(self.keep_for(value))
    }
}

impl EntryExpiry {
    /// Memory is reclaimed once no variant can be used any more: past freshness and the
    /// stale-* windows, unless a validator keeps it useful for revalidation; never past the cap.
    fn keep_for(&self, entry: &StoredEntry) -> Duration {
        let mut keep = Duration::ZERO;
        for v in entry.variants.iter() {
            if v.has_validator() {
                return self.ttl_cap;
            }
            let remaining = v.lifetime.saturating_sub(v.corrected_initial_age);
            keep = keep.max(remaining.saturating_add(v.stale_windows(self.stale_on_error)));
        }
        keep.min(self.ttl_cap)
    }
}

/// Bytes an entry costs in the in-process tier: its own weight and its key (one allocation,
/// shared with the tag index).
fn charge(key: &str, entry: &StoredEntry) -> u32 {
    let key = u32::try_from(key.len()).unwrap_or(u32::MAX);
    entry.weight.saturating_add(key)
}

/// The in-process tier: a moka cache bounded by bytes with TinyLFU admission.
#[derive(Clone)]
pub struct MemoryTier {
    cache: moka::sync::Cache<Arc<str>, Arc<StoredEntry>>,
    pub(crate) tags: Arc<TagIndex>,
    bytes: Arc<AtomicU64>,
    entries: Arc<AtomicU64>,
    pub(crate) ttl_cap: Duration,
    clock: Clock,
    store_hook: Arc<std::sync::OnceLock<StoreHook>>,
}

impl fmt::Debug for MemoryTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryTier")
            .field("bytes", &self.bytes.load(Ordering::Relaxed))
            .field("entries", &self.entries.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl MemoryTier {
    pub(crate) fn new(config: MemoryConfig, clock: Clock) -> Self {
        let tags = Arc::new(TagIndex::with_limit(config.max_tag_pairs));
        let bytes = Arc::new(AtomicU64::new(0));
        let entries = Arc::new(AtomicU64::new(0));
        let (t, b, e) = (tags.clone(), bytes.clone(), entries.clone());
        let cache = moka::sync::Cache::builder()
            .max_capacity(config.max_bytes)
            .weigher(|k: &Arc<str>, v: &Arc<StoredEntry>| charge(k, v))
            .expire_after(EntryExpiry {
                ttl_cap: config.ttl_cap,
                stale_on_error: config.stale_on_error,
            })
            .eviction_listener(move |key: Arc<Arc<str>>, value: Arc<StoredEntry>, cause| {
                t.remove(&key, &value);
                let _ = b.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |x| {
                    Some(x.saturating_sub(u64::from(charge(&key, &value))))
                });
                if cause != RemovalCause::Replaced {
                    let _ = e.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |x| {
                        Some(x.saturating_sub(1))
                    });
                }
                crate::metrics::record_eviction(cause);
                crate::metrics::record_size(b.load(Ordering::Relaxed), e.load(Ordering::Relaxed));
                tracing::debug!(key = &**key, ?cause, "cache entry removed");
            })
            .build();
        Self {
            cache,
            tags,
            bytes,
            entries,
            ttl_cap: config.ttl_cap,
            clock,
            store_hook: Arc::default(),
        }
    }

    /// Installs the hook told about entries built from origin responses (set once).
    pub(crate) fn set_store_hook(&self, hook: StoreHook) {
        let _ = self.store_hook.set(hook);
    }

    pub(crate) fn lookup(&self, key: &str) -> Option<Arc<StoredEntry>> {
        self.cache.get(key)
    }

    /// Stores `variant` under `key`, replacing the variant with the same `Vary` values and
    /// keeping at most `max_variants`. Returns false when the tag index is full.
    pub(crate) fn insert_variant(
        &self,
        key: &str,
        variant: Arc<StoredResponse>,
        max_variants: usize,
        now: Instant,
    ) -> bool {
        let key: Arc<str> = Arc::from(key);
        let mut variants = vec![variant.clone()];
        if let Some(old) = self.cache.get(&key)
            && now.saturating_duration_since(old.stored_at) <= self.ttl_cap
        {
            variants.extend(
                old.variants
                    .iter()
                    .filter(|v| !v.same_variant(&variant))
                    .take(max_variants.saturating_sub(1))
                    .cloned(),
            );
        }
        let entry = Arc::new(StoredEntry::new(variants, now));
        let inserted = self.insert_entry(key.clone(), entry.clone());
        if inserted && let Some(hook) = self.store_hook.get() {
            hook(&key, &entry);
        }
        inserted
    }

    pub(crate) fn insert_entry(&self, key: Arc<str>, entry: Arc<StoredEntry>) -> bool {
        if !self.tags.add(&key, &entry) {
            tracing::debug!(key = &*key, "tag index full: response not stored");
            return false;
        }
        let existed = self.cache.contains_key(&key);
        self.bytes
            .fetch_add(u64::from(charge(&key, &entry)), Ordering::Relaxed);
        if !existed {
            self.entries.fetch_add(1, Ordering::Relaxed);
        }
        self.cache.insert(key, entry);
        crate::metrics::record_size(
            self.bytes.load(Ordering::Relaxed),
            self.entries.load(Ordering::Relaxed),
        );
        true
    }

    pub(crate) fn invalidate(&self, key: &str) -> bool {
        self.cache.remove(key).is_some()
    }

    pub(crate) fn keys_with_prefix(&self, prefix: &str) -> Vec<Arc<str>> {
        self.cache
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| (*k).clone())
            .collect()
    }

    pub(crate) fn keys_with_tag(&self, tag: &str) -> Vec<Arc<str>> {
        self.tags.keys(tag)
    }

    /// Marks every variant of `key` stale from `stamp` on.
    pub(crate) fn soft_purge(&self, key: &str, stamp: u64) -> bool {
        match self.cache.get(key) {
            Some(entry) => {
                for v in entry.variants.iter() {
                    let _ = v.soft_purged_at.compare_exchange(
                        0,
                        stamp,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                }
                true
            }
            None => false,
        }
    }

    /// Flushes pending maintenance (evictions, listener calls).
    pub(crate) fn run_pending_tasks(&self) {
        self.cache.run_pending_tasks();
    }

    /// Bytes held, as counted by this tier.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Keys held.
    pub(crate) fn entry_count(&self) -> u64 {
        self.entries.load(Ordering::Relaxed)
    }
}

impl Tier for MemoryTier {
    fn name(&self) -> &'static str {
        "l1"
    }

    fn get(&self, key: &str) -> impl Future<Output = Option<Arc<StoredEntry>>> + Send {
        std::future::ready(self.lookup(key))
    }

    fn put(&self, key: &str, entry: Arc<StoredEntry>) -> impl Future<Output = ()> + Send {
        self.insert_entry(Arc::from(key), entry);
        std::future::ready(())
    }

    fn remove(&self, key: &str) -> impl Future<Output = ()> + Send {
        self.invalidate(key);
        std::future::ready(())
    }

    fn purge_prefix(&self, prefix: &str, soft: bool) -> impl Future<Output = usize> + Send {
        let keys = self.keys_with_prefix(prefix);
        let stamp = self.clock.stamp(self.clock.now());
        let mut n = 0;
        for k in keys {
            let done = if soft {
                self.soft_purge(&k, stamp)
            } else {
                self.invalidate(&k)
            };
            n += usize::from(done);
        }
        std::future::ready(n)
    }
}

/// Keys with a background refresh in flight; bounded so a flood of stale keys cannot grow it.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    keys: Mutex<HashSet<Arc<str>>>,
    max: usize,
}

impl InFlight {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            keys: Mutex::default(),
            max,
        }
    }

    /// Claims `key`; `None` when a refresh is already running or the set is full.
    pub(crate) fn claim(self: &Arc<Self>, key: &str) -> Option<InFlightGuard> {
        let mut set = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if set.len() >= self.max || set.contains(key) {
            return None;
        }
        let key: Arc<str> = Arc::from(key);
        set.insert(key.clone());
        Some(InFlightGuard {
            set: self.clone(),
            key,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.keys.lock().map(|s| s.len()).unwrap_or(0)
    }
}

/// Releases an in-flight claim when dropped, even if the refresh task panics.
#[derive(Debug)]
pub(crate) struct InFlightGuard {
    set: Arc<InFlight>,
    key: Arc<str>,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let mut set = self.set.keys.lock().unwrap_or_else(|p| p.into_inner());
        set.remove(&self.key);
    }
}
