//! Per-key breakers: one breaker per upstream host, tenant or route, held in a bounded registry, so one failing key
//! does not trip the others.
//!
//! The registry holds at most `max_keys` breakers; idle ones are dropped first, then the least recently used.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use http::Request;
use http::header::{self, HeaderName};
use metrics::Counter;
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::breaker::{CircuitBreaker, OpenListener, StateTransition};
use crate::config::{BreakerBuilder, Config, ConfigError};
use crate::metrics::{BREAKER_KEYS_EVICTED_TOTAL, LABEL_BREAKER, LABEL_REASON};

/// Keys longer than this are cut (at a character boundary), which bounds the registry's memory.
pub const MAX_KEY_LEN: usize = 256;

/// Picks the key of a request. `None` lets the request through without any breaker.
///
/// Implemented by [`HostKey`], [`HeaderKey`] and any `Fn(&Request<B>) -> Option<String> + Clone + Send + Sync`, e.g.
/// axum's route template:
///
/// ```
/// use axum::extract::MatchedPath;
/// use http::Request;
///
/// let by_route = |req: &Request<axum::body::Body>| {
///     req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned())
/// };
/// # let _ = by_route;
/// ```
pub trait KeyExtractor<B>: Clone + Send + Sync + 'static {
    /// The key of `request`.
    fn extract<'r>(&self, request: &'r Request<B>) -> Option<Cow<'r, str>>;
}

impl<B, F> KeyExtractor<B> for F
where
    F: Fn(&Request<B>) -> Option<String> + Clone + Send + Sync + 'static,
{
    fn extract<'r>(&self, request: &'r Request<B>) -> Option<Cow<'r, str>> {
        self(request).map(Cow::Owned)
    }
}

/// Key by target host: the URI authority's host (outbound client requests) or else the `Host` header (server
/// requests), without the port.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostKey;

impl<B> KeyExtractor<B> for HostKey {
    fn extract<'r>(&self, request: &'r Request<B>) -> Option<Cow<'r, str>> {
        if let Some(host) = request.uri().host() {
            return Some(Cow::Borrowed(host));
        }
        let value = request.headers().get(header::HOST)?.to_str().ok()?;
        let host = match value.rfind(':') {
            Some(i) if !value.ends_with(']') => &value[..i],
            _ => value,
        };
        (!host.is_empty()).then_some(Cow::Borrowed(host))
    }
}

/// Key by the value of one request header (e.g. a tenant id). Requests without it (or with a non-text value) bypass
/// the breakers.
#[derive(Debug, Clone)]
pub struct HeaderKey(HeaderName);

impl HeaderKey {
    /// Key by `name`.
    pub fn new(name: HeaderName) -> Self {
        Self(name)
    }
}

impl<B> KeyExtractor<B> for HeaderKey {
    fn extract<'r>(&self, request: &'r Request<B>) -> Option<Cow<'r, str>> {
        request
            .headers()
            .get(&self.0)?
            .to_str()
            .ok()
            .map(Cow::Borrowed)
    }
}

/// Builder for [`KeyedBreakers`].
#[must_use]
#[derive(Debug)]
pub struct KeyedBuilder {
    template: BreakerBuilder,
    max_keys: usize,
    idle_timeout: Option<Duration>,
    key_label: bool,
}

impl KeyedBuilder {
    /// Label each breaker's metric series with its key (`key="tenant-a"`) and give each its own `breaker_state`
    /// gauge. Turn it on only when the keys come from a small set you control (route templates, configured
    /// upstream hosts): a metrics recorder keeps every series it has seen, even after the registry evicts the
    /// breaker, so keys taken from request headers (`Host`, a tenant header) would let clients grow it without
    /// bound. Off, the registry's breakers share the call and transition series of the registry's name, and
    /// per-key states are visible through [`KeyedBreakers::subscribe`], [`KeyedBreakers::get`] and tracing events
    /// (which always carry the key).
    ///
    /// Defaults to `false`.
    pub fn key_label(mut self, yes: bool) -> Self {
        self.key_label = yes;
        self
    }

    /// Most breakers held at once; when full, a new key evicts an idle breaker, else the least recently used
    /// Closed one, else the least recently used. Must be non-zero.
    ///
    /// Defaults to `1024`.
    pub fn max_keys(mut self, max: usize) -> Self {
        self.max_keys = max;
        self
    }

    /// Breakers unused for this long are dropped (checked when a new key arrives and by
    /// [`KeyedBreakers::evict_idle`]). `None` keeps them until capacity forces them out.
    ///
    /// Defaults to 10 minutes.
    pub fn idle_timeout(mut self, idle: Option<Duration>) -> Self {
        self.idle_timeout = idle;
        self
    }

    /// Check the settings (the template's too) and build the registry.
    pub fn build(self) -> Result<KeyedBreakers, ConfigError> {
        if self.max_keys == 0 {
            return Err(ConfigError::new("max_keys", "must be at least 1"));
        }
        crate::metrics::describe();
        if self.idle_timeout.is_some_and(|d| d.is_zero()) {
            return Err(ConfigError::new(
                "idle_timeout",
                "must be non-zero when set",
            ));
        }
        let mut config = self.template.validated()?;
        config.key_label = self.key_label;
        let (transitions, _) = broadcast::channel(config.transition_capacity);
        let evicted = |reason: &'static str| {
            metrics::counter!(
                BREAKER_KEYS_EVICTED_TOTAL,
                LABEL_BREAKER => config.name.to_string(),
                LABEL_REASON => reason
            )
        };
        Ok(KeyedBreakers {
            inner: Arc::new(Registry {
                evicted_idle: evicted("idle"),
                evicted_capacity: evicted("capacity"),
                config,
                max_keys: self.max_keys,
                idle_timeout: self.idle_timeout,
                base: Instant::now(),
                map: Mutex::new(HashMap::new()),
                transitions,
            }),
        })
    }
}

struct Entry {
    breaker: CircuitBreaker,
    last_used: u64,
}

struct Registry {
    config: Config,
    max_keys: usize,
    idle_timeout: Option<Duration>,
    base: Instant,
    map: Mutex<HashMap<Arc<str>, Entry>>,
    transitions: broadcast::Sender<StateTransition>,
    evicted_idle: Counter,
    evicted_capacity: Counter,
}

/// A bounded set of breakers, one per key, all configured from one template. Cheap to clone.
///
/// ```
/// use std::time::Duration;
/// use breaker_layer::{CircuitBreaker, KeyedBreakers};
///
/// let breakers = KeyedBreakers::builder(CircuitBreaker::builder().name("upstreams").consecutive_failures(5))
///     .max_keys(256)
///     .idle_timeout(Some(Duration::from_secs(300)))
///     .build()?;
/// let a = breakers.get_or_insert("a.example");
/// assert_eq!(a.key(), Some("a.example"));
/// assert_eq!(breakers.len(), 1);
/// # Ok::<(), breaker_layer::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct KeyedBreakers {
    inner: Arc<Registry>,
}

impl fmt::Debug for KeyedBreakers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedBreakers")
            .field("name", &self.inner.config.name)
            .field("max_keys", &self.inner.max_keys)
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

fn cut(key: &str) -> &str {
    if key.len() <= MAX_KEY_LEN {
        return key;
    }
    let mut end = MAX_KEY_LEN;
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    &key[..end]
}

impl KeyedBreakers {
    /// Start a registry whose breakers are configured by `template` (its name labels all of them).
    pub fn builder(template: BreakerBuilder) -> KeyedBuilder {
        KeyedBuilder {
            template,
            max_keys: 1024,
            idle_timeout: Some(Duration::from_secs(600)),
            key_label: false,
        }
    }

    fn map(&self) -> MutexGuard<'_, HashMap<Arc<str>, Entry>> {
        self.inner
            .map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn now(&self) -> u64 {
        u64::try_from(
            Instant::now()
                .saturating_duration_since(self.inner.base)
                .as_nanos(),
        )
        .unwrap_or(u64::MAX)
    }

    /// The breaker of `key`, created if absent (possibly evicting another to stay within `max_keys`).
    pub fn get_or_insert(&self, key: &str) -> CircuitBreaker {
        let key = cut(key);
        let now = self.now();
        let mut map = self.map();
        if let Some(entry) = map.get_mut(key) {
            entry.last_used = now;
            return entry.breaker.clone();
        }
        if map.len() >= self.inner.max_keys {
            self.evict_idle_locked(&mut map, now);
        }
        if map.len() >= self.inner.max_keys {
            self.evict_one_locked(&mut map);
        }
        let key: Arc<str> = Arc::from(key);
        let breaker = CircuitBreaker::with_channel(
            self.inner.config.clone(),
            Some(key.clone()),
            self.inner.transitions.clone(),
        );
        map.insert(
            key,
            Entry {
                breaker: breaker.clone(),
                last_used: now,
            },
        );
        breaker
    }

    /// The breaker of `key`, if the registry holds one.
    pub fn get(&self, key: &str) -> Option<CircuitBreaker> {
        self.map().get(cut(key)).map(|e| e.breaker.clone())
    }

    /// Drop the breaker of `key`; returns whether there was one.
    pub fn remove(&self, key: &str) -> bool {
        self.map().remove(cut(key)).is_some()
    }

    /// Number of breakers held.
    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// Whether no breaker is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The keys held, in no particular order.
    pub fn keys(&self) -> Vec<Arc<str>> {
        self.map().keys().cloned().collect()
    }

    /// Drop breakers idle for longer than the idle timeout; returns how many were dropped.
    pub fn evict_idle(&self) -> usize {
        let now = self.now();
        let mut map = self.map();
        self.evict_idle_locked(&mut map, now)
    }

    /// Transitions of every breaker in the registry (each carries its key).
    pub fn subscribe(&self) -> broadcast::Receiver<StateTransition> {
        self.inner.transitions.subscribe()
    }

    /// Name shared by the registry's breakers.
    pub fn name(&self) -> &str {
        &self.inner.config.name
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn set_open_listener(&self, listener: OpenListener) {
        let _ = self.inner.config.open_listener.set(listener);
    }

    fn evict_idle_locked(&self, map: &mut HashMap<Arc<str>, Entry>, now: u64) -> usize {
        let Some(idle) = self.inner.idle_timeout else {
            return 0;
        };
        let idle = u64::try_from(idle.as_nanos()).unwrap_or(u64::MAX);
        let before = map.len();
        map.retain(|_, e| now.saturating_sub(e.last_used) < idle);
        let dropped = before - map.len();
        self.inner.evicted_idle.increment(dropped as u64);
        dropped
    }

    fn evict_one_locked(&self, map: &mut HashMap<Arc<str>, Entry>) {
        // Prefer a Closed breaker: evicting an Open one would forget that its key is failing.
        let victim = map
            .iter()
            .filter(|(_, e)| e.breaker.state() == crate::BreakerState::Closed)
            .min_by_key(|(_, e)| e.last_used)
            .or_else(|| map.iter().min_by_key(|(_, e)| e.last_used))
            .map(|(k, _)| k.clone());
        if let Some(k) = victim {
            map.remove(&k);
            self.inner.evicted_capacity.increment(1);
        }
    }
}

/// The per-key policy of a [`BreakerLayer`](crate::BreakerLayer): a registry and the extractor feeding it.
#[derive(Debug, Clone)]
pub struct PerKey<X> {
    pub(crate) registry: KeyedBreakers,
    pub(crate) extractor: X,
}

impl<X> PerKey<X> {
    /// The registry, to observe or control individual breakers.
    pub fn registry(&self) -> &KeyedBreakers {
        &self.registry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(max: usize) -> KeyedBreakers {
        KeyedBreakers::builder(CircuitBreaker::builder().consecutive_failures(1))
            .max_keys(max)
            .idle_timeout(Some(Duration::from_secs(60)))
            .build()
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn bounded_with_lru_eviction_preferring_closed() {
        let r = registry(2);
        let a = r.get_or_insert("a");
        a.try_acquire().unwrap().failure(); // a is Open
        tokio::time::advance(Duration::from_secs(1)).await;
        r.get_or_insert("b");
        tokio::time::advance(Duration::from_secs(1)).await;
        r.get_or_insert("c");
        assert_eq!(r.len(), 2);
        assert!(r.get("a").is_some(), "the open breaker is kept");
        assert!(
            r.get("b").is_none(),
            "the least recently used closed one goes"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn idle_breakers_are_dropped() {
        let r = registry(10);
        r.get_or_insert("a");
        tokio::time::advance(Duration::from_secs(30)).await;
        r.get_or_insert("b");
        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(r.evict_idle(), 1);
        assert_eq!(r.keys(), vec![Arc::<str>::from("b")]);
    }

    #[test]
    fn long_keys_are_cut_at_a_char_boundary() {
        let long = "é".repeat(200);
        let r = registry(2);
        let b = r.get_or_insert(&long);
        assert!(b.key().unwrap().len() <= MAX_KEY_LEN);
        assert!(r.get(&long).is_some());
    }

    #[test]
    fn extractors() {
        let req = Request::builder()
            .uri("http://api.example:8080/x")
            .body(())
            .unwrap();
        assert_eq!(HostKey.extract(&req).as_deref(), Some("api.example"));
        let req = Request::builder()
            .uri("/x")
            .header("host", "svc.local:3000")
            .header("x-tenant", "t1")
            .body(())
            .unwrap();
        assert_eq!(HostKey.extract(&req).as_deref(), Some("svc.local"));
        assert_eq!(
            HeaderKey::new(HeaderName::from_static("x-tenant"))
                .extract(&req)
                .as_deref(),
            Some("t1")
        );
        assert_eq!(
            HeaderKey::new(HeaderName::from_static("x-other")).extract(&req),
            None
        );
        let req = Request::builder()
            .uri("/x")
            .header("host", "[::1]")
            .body(())
            .unwrap();
        assert_eq!(HostKey.extract(&req).as_deref(), Some("[::1]"));
    }

    /// Distinct metric series the recorder holds, and whether any carries a `key` label.
    fn series(snapshotter: &metrics_util::debugging::Snapshotter) -> (usize, bool) {
        let all = snapshotter.snapshot().into_vec();
        let keyed = all.iter().any(|(k, ..)| {
            k.key()
                .labels()
                .any(|l| l.key() == crate::metrics::LABEL_KEY)
        });
        (all.len(), keyed)
    }

    #[test]
    fn flooding_keys_does_not_grow_the_metrics_recorder_by_default() {
        let recorder = metrics_util::debugging::DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            let r = KeyedBreakers::builder(
                CircuitBreaker::builder()
                    .name("flood")
                    .consecutive_failures(1),
            )
            .max_keys(4)
            .build()
            .unwrap();
            for i in 0..50 {
                r.get_or_insert(&format!("attacker-{i}"))
                    .try_acquire()
                    .unwrap()
                    .failure();
            }
            let (count, keyed) = series(&snapshotter);
            assert!(
                !keyed,
                "keys from requests must not become label values unless asked for"
            );
            assert!(count < 20, "{count} series for one registry");

            let labelled = KeyedBreakers::builder(CircuitBreaker::builder().name("upstreams"))
                .key_label(true)
                .build()
                .unwrap();
            labelled
                .get_or_insert("a.example")
                .try_acquire()
                .unwrap()
                .success();
            assert!(
                series(&snapshotter).1,
                "key_label(true) labels series with the key"
            );
        });
    }

    #[test]
    fn zero_max_keys_is_rejected() {
        let err = KeyedBreakers::builder(CircuitBreaker::builder())
            .max_keys(0)
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "max_keys");
    }
}
