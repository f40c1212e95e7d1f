//! The bounded map of keys in flight; the first waiter on a key adds a slot that fans the outcome out.
//!
//! Every entry is removed by an RAII guard ([`Lead`]) owned by whoever drives the leader's work, so panics and
//! cancellations never leak keys. An entry leaves the map before its outcome is handed out, under the map lock,
//! so nobody can join a slot whose outcome has already been given.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher, RandomState};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// The answer cannot be shared (too large, `Set-Cookie`, `private` without a per-user key,
    /// `Vary` beyond the key): run your own request.
    Bypass,
    /// The leader panicked, errored or was dropped.
    Failed,
}

/// Identifies one map entry: its key's hash and a number unique to its leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct EntryId {
    hash: u64,
    serial: u64,
}

impl Hash for EntryId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// A key with its hash computed once (keyed SipHash), so map operations never rehash the bytes.
///
/// Joiners look entries up by bytes; a leader or waiter finds its own entry by [`EntryId`] (two entries in
/// the map never share bytes or serial, so both lookups agree on equality, as `Borrow` requires).
#[derive(Debug)]
struct MapKey {
    id: EntryId,
    bytes: Vec<u8>,
}

impl Hash for MapKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.id.hash);
    }
}

impl PartialEq for MapKey {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for MapKey {}

impl Borrow<EntryId> for MapKey {
    fn borrow(&self) -> &EntryId {
        &self.id
    }
}

/// Passes a precomputed `u64` through; only ever fed by [`MapKey`] and [`EntryId`].
#[derive(Default)]
struct PrehashedHasher(u64);

impl fmt::Debug for PrehashedHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrehashedHasher")
    }
}

impl Hasher for PrehashedHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not reached (keys write a u64); mixes the bytes anyway so the hasher stays correct.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// One key in flight. Lives inside the map, so a leader that finishes alone allocates nothing for it.
#[derive(Debug)]
struct Entry {
    id: EntryId,
    /// The leader's caller while it is there, plus waiters.
    subscribers: usize,
    waiters: usize,
    /// Created by the first waiter: where the outcome is handed over.
    slot: Option<Arc<Slot>>,
}

/// The waiters' side of an entry: the outcome, once, and the wake-up.
#[derive(Debug, Default)]
pub(crate) struct Slot {
    outcome: OnceLock<Outcome>,
    notify: Notify,
    /// Cancels the detached task driving the leader's work, once its caller has gone.
    abort: Mutex<Option<AbortHandle>>,
    /// Set when the last waiter of a detached leader left and cancelled it.
    abandoned: AtomicBool,
}

impl Slot {
    fn hand_out(&self, outcome: Outcome) {
        let _ = self.outcome.set(outcome);
        self.notify.notify_waiters();
    }
}

#[derive(Debug, Default)]
struct Map {
    entries: HashMap<MapKey, Entry, BuildHasherDefault<PrehashedHasher>>,
    next_serial: u64,
}

/// The in-flight map shared by every service built from one layer.
#[derive(Debug)]
pub(crate) struct Inflight {
    map: Mutex<Map>,
    hasher: RandomState,
    max: usize,
    cancel_when_abandoned: bool,
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
        let mut key = MapKey {
            id: EntryId {
                hash: self.hasher.hash_one(key.as_slice()),
                serial: 0,
            },
            bytes: key,
        };
        let mut map = lock(&self.map);
        if let Some(entry) = map.entries.get_mut(&key) {
            let id = entry.id;
            entry.subscribers += 1;
            entry.waiters += 1;
            let slot = entry.slot.get_or_insert_with(Arc::default).clone();
            drop(map);
            return Joined::Waiter(Waiting {
                inflight: self.clone(),
                id,
                slot,
            });
        }
        if map.entries.len() >= self.max {
            return Joined::Full;
        }
        map.next_serial = map.next_serial.wrapping_add(1);
        key.id.serial = map.next_serial;
        let id = key.id;
        map.entries.insert(
            key,
            Entry {
                id,
                subscribers: 1,
                waiters: 0,
                slot: None,
            },
        );
        drop(map);
        metric::inflight(1.0);
        Joined::Leader(Lead {
            inflight: self.clone(),
            id,
            published: false,
        })
    }

    /// Removes the entry `id` (if still there) and returns its waiter count and slot.
    fn remove(&self, map: &mut Map, id: &EntryId) -> Option<(usize, Option<Arc<Slot>>)> {
        let (_, entry) = map.entries.remove_entry(id)?;
        Some((entry.waiters, entry.slot))
    }

    pub(crate) fn len(&self) -> usize {
        lock(&self.map).entries.len()
    }

    pub(crate) fn waiters(&self) -> usize {
        lock(&self.map).entries.values().map(|e| e.waiters).sum()
    }
}

/// A waiter's interest in an entry. Dropping the last interest in a detached leader cancels it when so configured.
#[derive(Debug)]
pub(crate) struct Waiting {
    inflight: Arc<Inflight>,
    id: EntryId,
    slot: Arc<Slot>,
}

impl Waiting {
    /// Waits for the leader's outcome. The outcome is always handed out (the [`Lead`] guard does it on drop),
    /// so this ends as soon as the leader does.
    pub(crate) async fn outcome(&self) -> Outcome {
        loop {
            let mut notified = pin!(self.slot.notify.notified());
            // Register before checking, so a hand-out between the check and the await is not missed.
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
        let Some(entry) = map.entries.get_mut(&self.id) else {
            return;
        };
        entry.waiters -= 1;
        entry.subscribers -= 1;
        if entry.subscribers > 0 || !self.inflight.cancel_when_abandoned {
            return;
        }
        self.inflight.remove(&mut map, &self.id);
        self.slot.abandoned.store(true, Ordering::Relaxed);
        drop(map);
        metric::inflight(-1.0);
        if let Some(handle) = lock(&self.slot.abort).take() {
            tracing::debug!("every caller left; cancelling the in-flight request");
            handle.abort();
        }
    }
}

/// The leader's guard: removes the key and wakes the waiters exactly once, even on panic or cancellation.
#[derive(Debug)]
pub(crate) struct Lead {
    inflight: Arc<Inflight>,
    id: EntryId,
    published: bool,
}

impl Lead {
    /// Frees the key and consumes the guard if nobody waits on it; with waiters, gives the guard back and
    /// leaves the key in the map (later identical requests still join).
    pub(crate) fn finish_if_alone(mut self) -> Option<Lead> {
        let mut map = lock(&self.inflight.map);
        if map
            .entries
            .get(&self.id)
            .is_some_and(|entry| entry.waiters > 0)
        {
            drop(map);
            return Some(self);
        }
        let removed = self.inflight.remove(&mut map, &self.id).is_some();
        drop(map);
        if removed {
            metric::inflight(-1.0);
        }
        self.published = true;
        None
    }

    /// Frees the key and hands `outcome` to the waiters.
    pub(crate) fn publish(self, outcome: Outcome) {
        self.publish_with(|| outcome);
    }

    /// Frees the key and, if anyone waits, hands them the outcome `make` builds.
    pub(crate) fn publish_with(mut self, make: impl FnOnce() -> Outcome) {
        self.published = true;
        if let Some(slot) = self.close() {
            slot.hand_out(make());
        }
    }

    /// Frees the key; returns the slot if waiters are there to read an outcome.
    fn close(&self) -> Option<Arc<Slot>> {
        let mut map = lock(&self.inflight.map);
        let removed = self.inflight.remove(&mut map, &self.id);
        drop(map);
        let (waiters, slot) = removed?;
        metric::inflight(-1.0);
        slot.filter(|_| waiters > 0)
    }

    /// The leader's caller leaves before the work is done: decides whether the work goes on without it.
    pub(crate) fn caller_left(&self) -> Departure {
        let mut map = lock(&self.inflight.map);
        let Some(entry) = map.entries.get_mut(&self.id) else {
            return Departure::Cancel;
        };
        entry.subscribers -= 1;
        if entry.subscribers > 0 || !self.inflight.cancel_when_abandoned {
            return Departure::Detach;
        }
        self.inflight.remove(&mut map, &self.id);
        drop(map);
        metric::inflight(-1.0);
        Departure::Cancel
    }

    /// Where the task driving this detached work registers its abort handle, if waiters can cancel it.
    pub(crate) fn abort_registry(&self) -> Option<AbortRegistry> {
        let map = lock(&self.inflight.map);
        let slot = map.entries.get(&self.id)?.slot.clone()?;
        Some(AbortRegistry(slot))
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
        if let Some(slot) = self.close() {
            slot.hand_out(Outcome::Failed);
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
