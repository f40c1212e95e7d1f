//! The bounded map of keys in flight, each with a slot that fans the leader's outcome out to its waiters.
//!
//! Every entry is removed by an RAII guard owned by the leader's task, so panics and cancellations never leak keys.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode, Version};
use tokio::sync::watch;
use tokio::task::AbortHandle;

use crate::body::DedupBody;
use crate::names;

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

#[derive(Debug)]
pub(crate) struct Slot {
    key: Arc<[u8]>,
    /// Leader's caller plus waiters still interested. Changed only under the map lock.
    subscribers: AtomicUsize,
    waiters: AtomicUsize,
    /// Set under the map lock when the leader has removed the entry; no one joins after that.
    finished: AtomicBool,
    tx: watch::Sender<Option<Outcome>>,
    abort: Mutex<Option<AbortHandle>>,
}

/// The in-flight map shared by every service built from one layer.
#[derive(Debug)]
pub(crate) struct Inflight {
    map: Mutex<HashMap<Arc<[u8]>, Arc<Slot>>>,
    max: usize,
    cancel_when_abandoned: bool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks; if something ever did, the data is still consistent.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) enum Joined {
    Leader(Subscription, SlotGuard),
    Waiter(Subscription, watch::Receiver<Option<Outcome>>),
    Full,
}

impl Inflight {
    pub(crate) fn new(max: usize, cancel_when_abandoned: bool) -> Self {
        Inflight {
            map: Mutex::new(HashMap::new()),
            max,
            cancel_when_abandoned,
        }
    }

    pub(crate) fn join(self: &Arc<Self>, key: Vec<u8>) -> Joined {
        let mut map = lock(&self.map);
        if let Some(slot) = map.get(key.as_slice()) {
            slot.subscribers.fetch_add(1, Ordering::Relaxed);
            slot.waiters.fetch_add(1, Ordering::Relaxed);
            let rx = slot.tx.subscribe();
            let sub = Subscription {
                inflight: self.clone(),
                slot: slot.clone(),
                waiter: true,
            };
            return Joined::Waiter(sub, rx);
        }
        if map.len() >= self.max {
            return Joined::Full;
        }
        let key: Arc<[u8]> = key.into();
        let (tx, _) = watch::channel(None);
        let slot = Arc::new(Slot {
            key: key.clone(),
            subscribers: AtomicUsize::new(1),
            waiters: AtomicUsize::new(0),
            finished: AtomicBool::new(false),
            tx,
            abort: Mutex::new(None),
        });
        map.insert(key, slot.clone());
        drop(map);
        metrics::gauge!(names::DEDUP_INFLIGHT).increment(1.0);
        Joined::Leader(
            Subscription {
                inflight: self.clone(),
                slot: slot.clone(),
                waiter: false,
            },
            SlotGuard {
                inflight: self.clone(),
                slot,
                published: false,
            },
        )
    }

    /// Removes `slot`'s entry if it is still the one in the map. Call with the map locked.
    fn remove(&self, map: &mut HashMap<Arc<[u8]>, Arc<Slot>>, slot: &Arc<Slot>) {
        if slot.finished.swap(true, Ordering::Relaxed) {
            return;
        }
        if map
            .get(&slot.key)
            .is_some_and(|current| Arc::ptr_eq(current, slot))
        {
            map.remove(&slot.key);
            metrics::gauge!(names::DEDUP_INFLIGHT).decrement(1.0);
        }
    }

    pub(crate) fn len(&self) -> usize {
        lock(&self.map).len()
    }

    pub(crate) fn waiters(&self) -> usize {
        lock(&self.map)
            .values()
            .map(|slot| slot.waiters.load(Ordering::Relaxed))
            .sum()
    }
}

/// One caller's interest in a slot. Dropping the last one cancels the leader's work when so configured.
#[derive(Debug)]
pub(crate) struct Subscription {
    inflight: Arc<Inflight>,
    slot: Arc<Slot>,
    waiter: bool,
}

impl Subscription {
    /// Lets the last subscriber to leave cancel the leader's task.
    pub(crate) fn set_abort_handle(&self, handle: AbortHandle) {
        *lock(&self.slot.abort) = Some(handle);
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut map = lock(&self.inflight.map);
        if self.waiter {
            self.slot.waiters.fetch_sub(1, Ordering::Relaxed);
        }
        let left = self.slot.subscribers.fetch_sub(1, Ordering::Relaxed) - 1;
        if left == 0
            && self.inflight.cancel_when_abandoned
            && !self.slot.finished.load(Ordering::Relaxed)
        {
            self.inflight.remove(&mut map, &self.slot);
            drop(map);
            if let Some(handle) = lock(&self.slot.abort).take() {
                tracing::debug!("every caller left; cancelling the in-flight request");
                handle.abort();
            }
        }
    }
}

/// Owned by the leader's task: removes the key and wakes the waiters exactly once, even on panic or abort.
#[derive(Debug)]
pub(crate) struct SlotGuard {
    inflight: Arc<Inflight>,
    slot: Arc<Slot>,
    published: bool,
}

impl SlotGuard {
    /// Frees the key so later requests start afresh, and returns how many waiters will read the outcome.
    pub(crate) fn close(&self) -> usize {
        let mut map = lock(&self.inflight.map);
        self.inflight.remove(&mut map, &self.slot);
        self.slot.waiters.load(Ordering::Relaxed)
    }

    pub(crate) fn publish(mut self, outcome: Outcome) {
        self.close();
        self.published = true;
        self.slot.tx.send_replace(Some(outcome));
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        if self.published {
            return;
        }
        self.close();
        if std::thread::panicking() {
            tracing::error!("inner service panicked; answering every waiter with 500");
        }
        self.slot.tx.send_replace(Some(Outcome::Failed));
    }
}

/// Waits for the leader's outcome.
pub(crate) async fn outcome(mut rx: watch::Receiver<Option<Outcome>>) -> Outcome {
    loop {
        if let Some(outcome) = rx.borrow_and_update().clone() {
            return outcome;
        }
        if rx.changed().await.is_err() {
            return rx.borrow().clone().unwrap_or(Outcome::Failed);
        }
    }
}
