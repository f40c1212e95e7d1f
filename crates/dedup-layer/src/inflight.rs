//! The bounded map of keys in flight, each with a slot that fans the leader's outcome out to its waiters.
//!
//! Every entry is removed by an RAII guard ([`Lead`]) owned by whoever drives the leader's work, so panics and
//! cancellations never leak keys. A key is removed before its outcome is published, under the map lock, so
//! nobody can join a slot whose outcome has already been handed out.

use std::borrow::Borrow;
use std::collections::HashSet;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher, RandomState};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode, Version};
use tokio::sync::Notify;
use tokio::task::AbortHandle;

use crate::body::DedupBody;
use crate::metric;

/// A response buffered by a leader, ready to be copied for each waiter.
#[derive(Debug)]
pub(crate) struct SharedResponse {
    pub(crate) status: StatusCode,
    pub(crate) version: Version,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    pub(crate) trailers: Option<HeaderMap>,
}

impl SharedResponse {
    pub(crate) fn to_response<B>(&self) -> Response<DedupBody<B>> {
        let mut response = Response::new(DedupBody::full_with_trailers(
            self.body.clone(),
            self.trailers.clone(),
        ));
        *response.status_mut() = self.status;
        *response.version_mut() = self.version;
        *response.headers_mut() = self.headers.clone();
        response
    }
}

/// What a waiter learns when its leader finishes.
#[derive(Clone, Debug)]
pub(crate) enum Outcome {
    /// The buffered answer, to copy.
    Shared(Arc<SharedResponse>),
    /// The answer cannot be shared (too large, `Set-Cookie`): run your own request.
    Bypass,
    /// The leader panicked, errored or was dropped.
    Failed,
}

/// A key with its hash computed once (keyed SipHash), so map operations do not rehash the bytes.
#[derive(Debug, PartialEq, Eq)]
struct HashedKey {
    hash: u64,
    bytes: Vec<u8>,
}

impl Hash for HashedKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// Passes a precomputed `u64` through; only ever fed by [`HashedKey`].
#[derive(Default)]
struct PrehashedHasher(u64);

impl Hasher for PrehashedHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not reached (HashedKey writes a u64); mixes the bytes anyway so the hasher stays correct.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[derive(Debug)]
pub(crate) struct Slot {
    key: HashedKey,
    /// The leader's caller while it is there, plus waiters. Changed only under the map lock.
    subscribers: AtomicUsize,
    /// Waiters only. Changed only under the map lock.
    waiters: AtomicUsize,
    /// Set under the map lock when the entry leaves the map; no one joins after that.
    finished: AtomicBool,
    /// Set under the map lock when the last waiter of a detached leader left and cancelled it.
    abandoned: AtomicBool,
    outcome: OnceLock<Outcome>,
    notify: Notify,
    /// Cancels the detached task driving the leader's work, once its caller has gone.
    abort: Mutex<Option<AbortHandle>>,
}

/// The map's entry: the slot, looked up by its key.
#[derive(Debug)]
struct Entry(Arc<Slot>);

impl Borrow<HashedKey> for Entry {
    fn borrow(&self) -> &HashedKey {
        &self.0.key
    }
}

impl Hash for Entry {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.key.hash(state);
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.0.key == other.0.key
    }
}

impl Eq for Entry {}

// `Entry` hashes and compares only its slot's key, which never changes (the slot's counters do).
type Map = HashSet<Entry, BuildHasherDefault<PrehashedHasher>>;

/// The in-flight map shared by every service built from one layer.
#[derive(Debug)]
pub(crate) struct Inflight {
    map: Mutex<Map>,
    hasher: RandomState,
    max: usize,
    cancel_when_abandoned: bool,
}

impl std::fmt::Debug for PrehashedHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrehashedHasher")
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks; if something ever did, the data is still consistent.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) enum Joined {
    Leader(Lead),
    Waiter(Waiting),
    Full,
}

/// What the leader's departing caller should do with the unfinished work.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Departure {
    /// Nobody else wants it and it may be cancelled: drop it (the key is already free).
    Cancel,
    /// Waiters remain, or abandoned work runs to completion: detach it.
    Detach,
}

impl Inflight {
    pub(crate) fn new(max: usize, cancel_when_abandoned: bool) -> Self {
        Inflight {
            map: Mutex::new(Map::default()),
            hasher: RandomState::new(),
            max,
            cancel_when_abandoned,
        }
    }

    /// Becomes the key's leader, or a waiter on the leader already in flight.
    pub(crate) fn join(self: &Arc<Self>, key: Vec<u8>) -> Joined {
        let key = HashedKey {
            hash: self.hasher.hash_one(key.as_slice()),
            bytes: key,
        };
        let mut map = lock(&self.map);
        if let Some(Entry(slot)) = map.get(&key) {
            slot.subscribers.fetch_add(1, Ordering::Relaxed);
            slot.waiters.fetch_add(1, Ordering::Relaxed);
            let slot = slot.clone();
            drop(map);
            return Joined::Waiter(Waiting {
                inflight: self.clone(),
                slot,
            });
        }
        if map.len() >= self.max {
            return Joined::Full;
        }
        let slot = Arc::new(Slot {
            key,
            subscribers: AtomicUsize::new(1),
            waiters: AtomicUsize::new(0),
            finished: AtomicBool::new(false),
            abandoned: AtomicBool::new(false),
            outcome: OnceLock::new(),
            notify: Notify::new(),
            abort: Mutex::new(None),
        });
        map.insert(Entry(slot.clone()));
        drop(map);
        metric::inflight(1.0);
        Joined::Leader(Lead {
            inflight: self.clone(),
            slot,
            published: false,
        })
    }

    /// Removes `slot`'s entry if it is still in the map. Call with the map locked.
    #[allow(clippy::mutable_key_type)] // see `Map`
    fn remove(&self, map: &mut Map, slot: &Slot) -> bool {
        if slot.finished.swap(true, Ordering::Relaxed) {
            return false;
        }
        map.remove(&slot.key);
        true
    }

    pub(crate) fn len(&self) -> usize {
        lock(&self.map).len()
    }

    pub(crate) fn waiters(&self) -> usize {
        lock(&self.map)
            .iter()
            .map(|Entry(slot)| slot.waiters.load(Ordering::Relaxed))
            .sum()
    }
}

/// A waiter's interest in a slot. Dropping the last interest in a detached leader cancels it when so configured.
#[derive(Debug)]
pub(crate) struct Waiting {
    inflight: Arc<Inflight>,
    slot: Arc<Slot>,
}

impl Waiting {
    /// Waits for the leader's outcome. The outcome is always published (the [`Lead`] guard does it on drop),
    /// so this ends as soon as the leader does.
    pub(crate) async fn outcome(&self) -> Outcome {
        loop {
            let mut notified = pin!(self.slot.notify.notified());
            // Register before checking, so a publish between the check and the await is not missed.
            notified.as_mut().enable();
            if let Some(outcome) = self.slot.outcome.get() {
                return outcome.clone();
            }
            notified.await;
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let mut map = lock(&self.inflight.map);
        self.slot.waiters.fetch_sub(1, Ordering::Relaxed);
        let left = self.slot.subscribers.fetch_sub(1, Ordering::Relaxed) - 1;
        if left == 0
            && self.inflight.cancel_when_abandoned
            && self.inflight.remove(&mut map, &self.slot)
        {
            self.slot.abandoned.store(true, Ordering::Relaxed);
            drop(map);
            metric::inflight(-1.0);
            if let Some(handle) = lock(&self.slot.abort).take() {
                tracing::debug!("every caller left; cancelling the in-flight request");
                handle.abort();
            }
        }
    }
}

/// The leader's guard: removes the key and wakes the waiters exactly once, even on panic or cancellation.
#[derive(Debug)]
pub(crate) struct Lead {
    inflight: Arc<Inflight>,
    slot: Arc<Slot>,
    published: bool,
}

impl Lead {
    /// Frees the key and consumes the guard if nobody waits on it; with waiters, gives the guard back and
    /// leaves the key in the map (later identical requests still join).
    pub(crate) fn finish_if_alone(mut self) -> Option<Lead> {
        let mut map = lock(&self.inflight.map);
        if self.slot.waiters.load(Ordering::Relaxed) > 0 {
            drop(map);
            return Some(self);
        }
        let removed = self.inflight.remove(&mut map, &self.slot);
        drop(map);
        if removed {
            metric::inflight(-1.0);
        }
        self.published = true;
        None
    }

    /// Frees the key so later requests start afresh, and returns how many waiters will read the outcome.
    pub(crate) fn close(&self) -> usize {
        let mut map = lock(&self.inflight.map);
        let removed = self.inflight.remove(&mut map, &self.slot);
        let waiters = self.slot.waiters.load(Ordering::Relaxed);
        drop(map);
        if removed {
            metric::inflight(-1.0);
        }
        waiters
    }

    /// Frees the key and hands `outcome` to the waiters.
    pub(crate) fn publish(self, outcome: Outcome) {
        self.publish_with(|| outcome);
    }

    /// Frees the key and, if anyone waits, hands them the outcome `make` builds.
    pub(crate) fn publish_with(mut self, make: impl FnOnce() -> Outcome) {
        self.published = true;
        if self.close() > 0 {
            let _ = self.slot.outcome.set(make());
            self.slot.notify.notify_waiters();
        }
    }

    /// The leader's caller leaves before the work is done: decides whether the work goes on without it.
    pub(crate) fn caller_left(&self) -> Departure {
        let mut map = lock(&self.inflight.map);
        let left = self.slot.subscribers.fetch_sub(1, Ordering::Relaxed) - 1;
        if left > 0 || !self.inflight.cancel_when_abandoned {
            return Departure::Detach;
        }
        let removed = self.inflight.remove(&mut map, &self.slot);
        drop(map);
        if removed {
            metric::inflight(-1.0);
        }
        Departure::Cancel
    }

    /// A handle to register the detached task's [`AbortHandle`] with, once it is spawned.
    pub(crate) fn abort_registry(&self) -> AbortRegistry {
        AbortRegistry(self.slot.clone())
    }
}

impl Drop for Lead {
    fn drop(&mut self) {
        if self.published {
            return;
        }
        if std::thread::panicking() {
            tracing::error!("inner service panicked; answering every waiter with 500");
        }
        if self.close() > 0 {
            let _ = self.slot.outcome.set(Outcome::Failed);
            self.slot.notify.notify_waiters();
        }
    }
}

/// Where a detached leader's abort handle goes, so the last waiter to leave can cancel it.
#[derive(Debug)]
pub(crate) struct AbortRegistry(Arc<Slot>);

impl AbortRegistry {
    pub(crate) fn register(self, handle: AbortHandle) {
        let mut abort = lock(&self.0.abort);
        // The last waiter may have left between the spawn and now; it set `abandoned` before looking here.
        if self.0.abandoned.load(Ordering::Relaxed) {
            drop(abort);
            handle.abort();
        } else {
            *abort = Some(handle);
        }
    }
}
