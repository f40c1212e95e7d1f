//! Collapsed misses: identical concurrent misses of one key reach the origin once; the others
//! wait for that leader and then look the key up again, as Varnish's waiting list and nginx's
//! `proxy_cache_lock` do.
//!
//! A waiter is answered from the store, so it gets exactly what a hit would give it: the cache's
//! own rules (`Vary`, `private`, `no-store`, `Set-Cookie`, `Authorization`, targeted fields)
//! decide what is shared. A leader whose answer was not stored releases its waiters to go to
//! the origin on their own, and marks the key "hit-for-miss" for a while so later misses of that
//! key do not wait at all: a hot URL that cannot be cached must not serialise its callers.

use std::collections::HashMap;
use std::fmt;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Most keys with a collapsed miss in flight, and most keys remembered as hit-for-miss; past
/// either bound, misses simply run uncollapsed.
pub(crate) const MAX_KEYS: usize = 16 * 1024;

/// Marks a request that already took part in collapsing (a leader on its way through the lower
/// tiers, or a woken waiter), so it never waits on a key again.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CollapseDone;

/// The fills in flight and the keys known not to be cacheable.
pub(crate) struct Collapser {
    fills: Mutex<HashMap<Arc<str>, Arc<Fill>>>,
    hit_for_miss: Mutex<HitForMiss>,
    hit_for_miss_ttl: Duration,
}

/// Keys remembered as hit-for-miss, until when.
#[derive(Default)]
struct HitForMiss {
    until: HashMap<Arc<str>, Instant>,
    /// When the full map was last swept of expired keys: at most once a second, so a flood of
    /// distinct uncacheable URLs costs one sweep a second, not one per miss.
    last_sweep: Option<Instant>,
}

impl fmt::Debug for Collapser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Collapser")
            .field("fills", &lock(&self.fills).len())
            .field("hit_for_miss_ttl", &self.hit_for_miss_ttl)
            .finish_non_exhaustive()
    }
}

/// One leader's fill: done once the leader has answered (or gone).
#[derive(Debug, Default)]
pub(crate) struct Fill {
    done: AtomicBool,
    notify: Notify,
}

impl Fill {
    /// Waits until the leader has finished.
    pub(crate) async fn wait(&self) {
        loop {
            let mut notified = pin!(self.notify.notified());
            // Registered before the check, so a release between the two is not missed.
            notified.as_mut().enable();
            if self.done.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }
}

/// What a miss does about collapsing.
pub(crate) enum Claim {
    /// Go to the origin; waiters are released when the guard finishes or drops.
    Leader(FillGuard),
    /// Wait for the leader of this key, then look again.
    Waiter(Arc<Fill>),
    /// Go to the origin without collapsing (hit-for-miss, or the map is full).
    Alone,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while these locks are held; a poisoned map is still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Collapser {
    pub(crate) fn new(hit_for_miss_ttl: Duration) -> Self {
        Self {
            fills: Mutex::default(),
            hit_for_miss: Mutex::default(),
            hit_for_miss_ttl,
        }
    }

    /// Leads, joins or skips the fill of `key`.
    pub(crate) fn claim(self: &Arc<Self>, key: &str, now: Instant) -> Claim {
        {
            let mut hfm = lock(&self.hit_for_miss);
            if !hfm.until.is_empty()
                && let Some(until) = hfm.until.get(key)
            {
                if *until > now {
                    return Claim::Alone;
                }
                hfm.until.remove(key);
            }
        }
        let mut fills = lock(&self.fills);
        if let Some(fill) = fills.get(key) {
            return Claim::Waiter(fill.clone());
        }
        if fills.len() >= MAX_KEYS {
            return Claim::Alone;
        }
        let key: Arc<str> = Arc::from(key);
        let fill = Arc::new(Fill::default());
        fills.insert(key.clone(), fill.clone());
        Claim::Leader(FillGuard {
            collapser: self.clone(),
            key,
            fill,
        })
    }

    fn remember_uncacheable(&self, key: &Arc<str>, now: Instant) {
        if self.hit_for_miss_ttl.is_zero() {
            return;
        }
        let mut hfm = lock(&self.hit_for_miss);
        if hfm.until.len() >= MAX_KEYS {
            let due = hfm
                .last_sweep
                .is_none_or(|at| now.saturating_duration_since(at) >= Duration::from_secs(1));
            if !due {
                return;
            }
            hfm.last_sweep = Some(now);
            hfm.until.retain(|_, until| *until > now);
            if hfm.until.len() >= MAX_KEYS {
                return;
            }
        }
        hfm.until.insert(key.clone(), now + self.hit_for_miss_ttl);
    }

    /// Keys whose fill is in flight.
    pub(crate) fn in_flight(&self) -> usize {
        lock(&self.fills).len()
    }
}

/// A leader's claim on a key. Dropping it (the leader answered, failed, panicked or its client
/// went away) frees the key and wakes every waiter.
pub(crate) struct FillGuard {
    collapser: Arc<Collapser>,
    key: Arc<str>,
    fill: Arc<Fill>,
}

impl fmt::Debug for FillGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FillGuard")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl FillGuard {
    /// The leader answered: when nothing was stored for the key and the origin's answer was not
    /// an error, the key is remembered as hit-for-miss so later misses do not wait on it.
    /// Errors are not remembered: the next burst against a failing origin collapses again.
    pub(crate) fn finish(self, stored: bool, status_below_500: bool, now: Instant) {
        if !stored && status_below_500 {
            self.collapser.remember_uncacheable(&self.key, now);
        }
    }
}

impl Drop for FillGuard {
    fn drop(&mut self) {
        {
            let mut fills = lock(&self.collapser.fills);
            if fills
                .get(&self.key)
                .is_some_and(|f| Arc::ptr_eq(f, &self.fill))
            {
                fills.remove(&self.key);
            }
        }
        self.fill.done.store(true, Ordering::Release);
        self.fill.notify.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_leader_then_waiters_released() {
        let c = Arc::new(Collapser::new(Duration::from_secs(10)));
        let now = Instant::now();
        let Claim::Leader(guard) = c.claim("k", now) else {
            panic!("first is the leader");
        };
        let Claim::Waiter(fill) = c.claim("k", now) else {
            panic!("second waits");
        };
        assert!(matches!(c.claim("other", now), Claim::Leader(_)));
        let waiting = tokio::spawn(async move { fill.wait().await });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        guard.finish(true, true, now);
        waiting.await.unwrap();
        assert_eq!(c.in_flight(), 0);
        assert!(matches!(c.claim("k", now), Claim::Leader(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn hit_for_miss_skips_waiting_until_it_expires() {
        let c = Arc::new(Collapser::new(Duration::from_secs(10)));
        let now = Instant::now();
        let Claim::Leader(guard) = c.claim("k", now) else {
            panic!("leader");
        };
        guard.finish(false, true, now);
        assert!(matches!(c.claim("k", now), Claim::Alone));
        assert!(matches!(
            c.claim("k", now + Duration::from_secs(11)),
            Claim::Leader(_)
        ));
        // A failed origin is not remembered.
        let Claim::Leader(guard) = c.claim("e", now) else {
            panic!("leader");
        };
        guard.finish(false, false, now);
        assert!(matches!(c.claim("e", now), Claim::Leader(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn hit_for_miss_memory_is_bounded() {
        let c = Arc::new(Collapser::new(Duration::from_secs(10)));
        let now = Instant::now();
        for i in 0..=MAX_KEYS {
            let key: Arc<str> = Arc::from(i.to_string());
            c.remember_uncacheable(&key, now);
        }
        assert_eq!(lock(&c.hit_for_miss).until.len(), MAX_KEYS);
        // Once the remembered keys expire, a sweep (at most once a second) makes room.
        let later = now + Duration::from_secs(11);
        c.remember_uncacheable(&Arc::from("new"), later);
        assert_eq!(lock(&c.hit_for_miss).until.len(), 1);
        assert!(matches!(c.claim("new", later), Claim::Alone));
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_leader_releases_waiters() {
        let c = Arc::new(Collapser::new(Duration::ZERO));
        let now = Instant::now();
        let guard = c.claim("k", now);
        let Claim::Waiter(fill) = c.claim("k", now) else {
            panic!("waiter");
        };
        drop(guard);
        fill.wait().await;
        assert_eq!(c.in_flight(), 0);
    }
}
