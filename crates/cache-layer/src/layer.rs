//! [`CacheLayer`], its builder and the configuration it shares with every service it makes.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderName;
use tower_layer::Layer;

use crate::collapse::Collapser;
use crate::handle::CacheHandle;
use crate::key::{KeyFn, KeyMaker};
use crate::policy::{CacheMode, Heuristic, TargetedField};
use crate::service::Cache;
use crate::store::{Clock, InFlight, MemoryConfig, MemoryTier};
use crate::tags::TagsFn;
use crate::tiered::{Lower, LowerConfig};

/// Layer that puts an HTTP cache in front of a service.
///
/// Every service made by one layer (and every clone of them) shares one store, so the layer
/// can be applied to a `Router` once and purged through [`CacheLayer::handle`].
///
/// ```
/// use axum::{Router, routing::get};
/// use cache_layer::CacheLayer;
///
/// let cache = CacheLayer::builder()
///     .max_capacity_bytes(64 * 1024 * 1024)
///     .build()
///     .expect("valid configuration");
/// let handle = cache.handle();
/// let app: Router = Router::new()
///     .route("/", get(|| async { ([("cache-control", "max-age=60")], "hello") }))
///     .layer(cache);
/// # let _ = (app, handle);
/// ```
#[derive(Clone)]
pub struct CacheLayer {
    pub(crate) shared: Arc<Shared>,
}

impl fmt::Debug for CacheLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheLayer")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

/// Longest cache name: every `Cache-Status` value is formatted in a fixed stack buffer.
const MAX_NAME_LEN: usize = 64;

/// State shared by the layer, its services and its handle.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) l1: MemoryTier,
    pub(crate) clock: Clock,
    pub(crate) in_flight: Arc<InFlight>,
    /// Collapsed misses, when turned on.
    pub(crate) collapser: Option<Arc<Collapser>>,
    /// The shared and persistent tiers, when configured.
    pub(crate) lower: Option<Arc<Lower>>,
}

/// Settings read on every request.
pub(crate) struct Config {
    pub(crate) name: Arc<str>,
    pub(crate) mode: CacheMode,
    pub(crate) max_body_bytes: usize,
    pub(crate) heuristic: Heuristic,
    /// Targeted cache-control fields in priority order (RFC 9213 §2.2).
    pub(crate) targets: Box<[TargetedField]>,
    /// This cache's device token for `Surrogate-Control` targeting.
    pub(crate) surrogate_device: Option<Box<str>>,
    /// Remove `Surrogate-Control` from what the cache sends: it is obeyed here.
    pub(crate) strip_surrogate: bool,
    pub(crate) tag_header: Option<HeaderName>,
    pub(crate) strip_tag_header: bool,
    pub(crate) tags_fn: Option<TagsFn>,
    pub(crate) key: KeyMaker,
    pub(crate) max_variants: usize,
    pub(crate) early_refresh_beta: Option<f64>,
    pub(crate) cache_status: bool,
    pub(crate) refresh_timeout: Duration,
    /// `serve_stale_on_error`: the longest staleness served on origin failure without
    /// `stale-if-error`; zero when off.
    pub(crate) stale_on_error: Duration,
    /// How long a collapsed miss waits for its leader; `None` when misses are not collapsed.
    pub(crate) collapse_wait: Option<Duration>,
    /// Answer `502` for a body that broke while being read to store it.
    pub(crate) incomplete_as_bad_gateway: bool,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("name", &self.name)
            .field("mode", &self.mode)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("targets", &self.targets)
            .field("surrogate_device", &self.surrogate_device)
            .field("tag_header", &self.tag_header)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl CacheLayer {
    /// A layer with every default (see [`CacheLayerBuilder`]).
    pub fn new() -> Self {
        Self::from_builder(CacheLayerBuilder::default())
    }

    /// Starts a configuration.
    pub fn builder() -> CacheLayerBuilder {
        CacheLayerBuilder::default()
    }

    /// A handle to purge this layer's store.
    pub fn handle(&self) -> CacheHandle {
        CacheHandle {
            shared: self.shared.clone(),
        }
    }

    fn from_builder(mut b: CacheLayerBuilder) -> Self {
        crate::metrics::describe();
        let clock = Clock::new();
        let mut lower_config = std::mem::take(&mut b.lower);
        lower_config.stale_on_error = b.stale_on_error;
        let l1 = MemoryTier::new(
            MemoryConfig {
                max_bytes: b.max_capacity_bytes,
                ttl_cap: b.ttl_cap,
                max_tag_pairs: b.max_tag_entries,
                stale_on_error: b.stale_on_error,
            },
            clock,
        );
        let key = match b.key_fn {
            Some(f) => KeyMaker::Custom(f),
            None => KeyMaker::Default {
                ignored_query: Arc::from(b.ignored_query),
            },
        };
        let config = Config {
            name: Arc::from(b.name),
            mode: b.mode,
            max_body_bytes: b.max_body_bytes,
            heuristic: Heuristic {
                fraction: b.heuristic_fraction,
                cap: b.heuristic_cap,
            },
            strip_surrogate: b.strip_surrogate_control && b.targets.iter().any(|t| t.surrogate),
            targets: b.targets.into_boxed_slice(),
            surrogate_device: b.surrogate_device.map(String::into_boxed_str),
            tag_header: b.tag_header,
            strip_tag_header: b.strip_tag_header,
            tags_fn: b.tags_fn,
            key,
            max_variants: b.max_variants,
            early_refresh_beta: b.early_refresh_beta,
            cache_status: b.cache_status,
            refresh_timeout: b.refresh_timeout,
            stale_on_error: b.stale_on_error,
            collapse_wait: b.collapse_wait,
            incomplete_as_bad_gateway: b.incomplete_as_bad_gateway,
        };
        let lower =
            (!lower_config.is_empty()).then(|| Lower::start(lower_config, l1.clone(), clock));
        Self {
            shared: Arc::new(Shared {
                config,
                l1,
                clock,
                in_flight: Arc::new(InFlight::new(b.max_in_flight_refreshes)),
                collapser: b
                    .collapse_wait
                    .map(|_| Arc::new(Collapser::new(b.hit_for_miss))),
                lower,
            }),
        }
    }
}

impl Default for CacheLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Layer<S> for CacheLayer {
    type Service = Cache<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Cache {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// A configuration mistake found by [`CacheLayerBuilder::build`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    field: &'static str,
    message: String,
}

impl ConfigError {
    pub(crate) fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }

    /// The builder method whose value is wrong.
    pub fn field(&self) -> &'static str {
        self.field
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid cache configuration: {}: {}",
            self.field, self.message
        )
    }
}

impl std::error::Error for ConfigError {}

/// Configuration of a [`CacheLayer`]; every setter documents its default.
#[must_use]
pub struct CacheLayerBuilder {
    name: String,
    mode: CacheMode,
    max_body_bytes: usize,
    max_capacity_bytes: u64,
    ttl_cap: Duration,
    heuristic_fraction: f64,
    heuristic_cap: Duration,
    targets: Vec<TargetedField>,
    target_names: Option<Vec<String>>,
    surrogate_device: Option<String>,
    strip_surrogate_control: bool,
    tag_header: Option<HeaderName>,
    tag_header_name: Option<String>,
    strip_tag_header: bool,
    tags_fn: Option<TagsFn>,
    key_fn: Option<KeyFn>,
    ignored_query: Vec<String>,
    max_variants: usize,
    max_tag_entries: u64,
    max_in_flight_refreshes: usize,
    refresh_timeout: Duration,
    early_refresh_beta: Option<f64>,
    cache_status: bool,
    stale_on_error: Duration,
    collapse_wait: Option<Duration>,
    hit_for_miss: Duration,
    incomplete_as_bad_gateway: bool,
    lower: LowerConfig,
}

impl fmt::Debug for CacheLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheLayerBuilder")
            .field("name", &self.name)
            .field("mode", &self.mode)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_capacity_bytes", &self.max_capacity_bytes)
            .finish_non_exhaustive()
    }
}

impl Default for CacheLayerBuilder {
    fn default() -> Self {
        Self {
            name: "tower-cache".to_owned(),
            mode: CacheMode::Shared,
            max_body_bytes: 1024 * 1024,
            max_capacity_bytes: 64 * 1024 * 1024,
            ttl_cap: Duration::from_secs(24 * 3600),
            heuristic_fraction: 0.1,
            heuristic_cap: Duration::from_secs(24 * 3600),
            targets: vec![TargetedField::new(HeaderName::from_static(
                "cdn-cache-control",
            ))],
            target_names: None,
            surrogate_device: None,
            strip_surrogate_control: true,
            tag_header: Some(HeaderName::from_static("cache-tag")),
            tag_header_name: None,
            strip_tag_header: true,
            tags_fn: None,
            key_fn: None,
            ignored_query: Vec::new(),
            max_variants: 8,
            max_tag_entries: 1_000_000,
            max_in_flight_refreshes: 1024,
            refresh_timeout: Duration::from_secs(30),
            early_refresh_beta: None,
            cache_status: true,
            stale_on_error: Duration::ZERO,
            collapse_wait: None,
            hit_for_miss: Duration::from_secs(30),
            incomplete_as_bad_gateway: false,
            lower: LowerConfig::default(),
        }
    }
}

impl CacheLayerBuilder {
    /// Name of this cache in `Cache-Status`. Defaults to `tower-cache`.
    pub fn cache_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Shared (proxy) or private (single user) semantics. Defaults to [`CacheMode::Shared`].
    pub fn mode(mut self, mode: CacheMode) -> Self {
        self.mode = mode;
        self
    }

    /// Largest body stored; larger bodies stream through uncached. Defaults to 1 MiB.
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body_bytes = bytes;
        self
    }

    /// Bytes the in-process tier may hold (bodies, headers and bookkeeping). Defaults to 64 MiB.
    pub fn max_capacity_bytes(mut self, bytes: u64) -> Self {
        self.max_capacity_bytes = bytes;
        self
    }

    /// Longest time an entry stays in the in-process tier, whatever its freshness.
    /// Defaults to 24 hours.
    pub fn ttl_cap(mut self, cap: Duration) -> Self {
        self.ttl_cap = cap;
        self
    }

    /// Fraction of the time since `Last-Modified` used as heuristic freshness, and its cap.
    /// Defaults to 0.1 and 24 hours.
    pub fn heuristic(mut self, fraction: f64, cap: Duration) -> Self {
        self.heuristic_fraction = fraction;
        self.heuristic_cap = cap;
        self
    }

    /// Targeted cache-control field this cache obeys (RFC 9213), or `None` to obey only
    /// `Cache-Control`. Defaults to `CDN-Cache-Control`. Shorthand for
    /// [`targeted_cache_controls`](Self::targeted_cache_controls) with one field or none.
    pub fn targeted_cache_control(self, field: Option<&str>) -> Self {
        self.targeted_cache_controls(field)
    }

    /// Targeted cache-control fields this cache obeys, highest priority first (RFC 9213 §2.2):
    /// the first one present, valid and non-empty in a response is used and `Cache-Control`
    /// and `Expires` are ignored; when none is, `Cache-Control` applies. Defaults to
    /// `["CDN-Cache-Control"]`; an empty list obeys only `Cache-Control`.
    ///
    /// `Surrogate-Control` is read with the W3C Edge Architecture 1.0 grammar (`max-age=N`,
    /// `max-age=N+M`, `no-store`, `no-store-remote`, each optionally targeted with `;device`,
    /// see [`surrogate_device`](Self::surrogate_device)) and removed from the responses the
    /// cache sends (see [`strip_surrogate_control`](Self::strip_surrogate_control)); every
    /// other field is an RFC 9213 Structured Fields dictionary. [`build`](Self::build) rejects
    /// invalid or repeated names and `Cache-Control` itself.
    ///
    /// ```
    /// use cache_layer::CacheLayer;
    ///
    /// // A gateway in front of origins that speak either dialect.
    /// let cache = CacheLayer::builder()
    ///     .targeted_cache_controls(["Surrogate-Control", "CDN-Cache-Control"])
    ///     .surrogate_device(Some("edge"))
    ///     .build()
    ///     .expect("valid configuration");
    /// # let _ = cache;
    /// ```
    pub fn targeted_cache_controls<I, T>(mut self, fields: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: AsRef<str>,
    {
        self.targets.clear();
        self.target_names = Some(fields.into_iter().map(|f| f.as_ref().to_owned()).collect());
        self
    }

    /// The device token this cache answers to in `Surrogate-Control` (`max-age=60;edge`
    /// addresses the device `edge`); directives without a token apply to every device.
    /// Defaults to `None`: only untargeted directives apply.
    pub fn surrogate_device(mut self, token: Option<&str>) -> Self {
        self.surrogate_device = token.map(str::to_owned);
        self
    }

    /// Whether `Surrogate-Control` is removed from responses before they reach the client when
    /// it is one of the targeted fields (the Edge Architecture addresses it to surrogates
    /// only). Defaults to true.
    pub fn strip_surrogate_control(mut self, strip: bool) -> Self {
        self.strip_surrogate_control = strip;
        self
    }

    /// Response field carrying surrogate keys (comma or space separated), or `None`.
    /// Defaults to `Cache-Tag`.
    pub fn tag_header(mut self, field: Option<&str>) -> Self {
        self.tag_header = None;
        self.tag_header_name = field.map(str::to_owned);
        self
    }

    /// Whether the tag field is removed before responses reach the client. Defaults to true.
    pub fn strip_tag_header(mut self, strip: bool) -> Self {
        self.strip_tag_header = strip;
        self
    }

    /// Computes tags from the request and the response head, in addition to the tag field.
    /// Defaults to none.
    pub fn tags_fn<F>(mut self, f: F) -> Self
    where
        F: Fn(&http::request::Parts, &http::response::Parts) -> Vec<String> + Send + Sync + 'static,
    {
        self.tags_fn = Some(Arc::new(f));
        self
    }

    /// Replaces the key function; returning `None` bypasses the cache for that request.
    /// Defaults to `scheme://authority/path?query`.
    pub fn key_fn<F>(mut self, f: F) -> Self
    where
        F: Fn(&http::request::Parts) -> Option<String> + Send + Sync + 'static,
    {
        self.key_fn = Some(Arc::new(f));
        self
    }

    /// Query parameters left out of the default key (for example `utm_source`).
    /// Defaults to none.
    pub fn ignore_query_params<I, T>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.ignored_query = names.into_iter().map(Into::into).collect();
        self
    }

    /// Variants (per `Vary`) kept for one URL; the oldest is dropped. Defaults to 8.
    pub fn max_variants(mut self, n: usize) -> Self {
        self.max_variants = n;
        self
    }

    /// Bound on (tag, key) pairs in the tag index; a response that would exceed it is not
    /// stored. Defaults to 1,000,000.
    pub fn max_tag_entries(mut self, n: u64) -> Self {
        self.max_tag_entries = n;
        self
    }

    /// Bound on background refreshes running at once. Defaults to 1024.
    pub fn max_in_flight_refreshes(mut self, n: usize) -> Self {
        self.max_in_flight_refreshes = n;
        self
    }

    /// Longest a background refresh may take; past it the refresh is dropped and its key may
    /// be refreshed again, so an origin that never answers cannot hold a key's (or every)
    /// refresh slot forever. Defaults to 30 s.
    pub fn refresh_timeout(mut self, timeout: Duration) -> Self {
        self.refresh_timeout = timeout;
        self
    }

    /// Turns on probabilistic early refresh (XFetch) with this beta (1.0 is the usual value):
    /// a fresh hit close to expiry starts one background refresh. Defaults to off.
    pub fn early_refresh(mut self, beta: Option<f64>) -> Self {
        self.early_refresh_beta = beta;
        self
    }

    /// Whether responses carry a `Cache-Status` field. Defaults to true.
    pub fn cache_status(mut self, on: bool) -> Self {
        self.cache_status = on;
        self
    }

    /// Collapses identical concurrent misses: the first `GET` that misses a key goes to the
    /// inner service, the others wait (at most `wait`) for it to finish and then look the key
    /// up again, so a burst on a cold URL reaches the origin once (Varnish's waiting list,
    /// nginx's `proxy_cache_lock`). Defaults to `None` (off).
    ///
    /// Waiters are answered from the store, so they get exactly what a hit would give them.
    /// When the leader's answer was not stored (`private`, `no-store`, `Set-Cookie`, another
    /// `Vary` variant, too large, an error...) the waiters go to the inner service on their
    /// own, at once and concurrently; when that answer was not an error the key is remembered
    /// for [`hit_for_miss`](Self::hit_for_miss) so later misses do not wait on it. A waiter
    /// still waiting after `wait` is answered `504 Gateway Timeout` (`Cache-Status:
    /// ...; detail=collapse-timeout`). Requests that say `no-store` or `only-if-cached`, carry
    /// `If-None-Match`/`If-Modified-Since`, and `HEAD` requests, never wait. At most 16 384 keys
    /// are collapsed at once; past that, misses run on their own.
    ///
    /// ```
    /// use std::time::Duration;
    /// use cache_layer::CacheLayer;
    ///
    /// let cache = CacheLayer::builder()
    ///     .collapse_misses(Some(Duration::from_secs(10)))
    ///     .build()
    ///     .expect("valid configuration");
    /// # let _ = cache;
    /// ```
    pub fn collapse_misses(mut self, wait: Option<Duration>) -> Self {
        self.collapse_wait = wait;
        self
    }

    /// How long a key whose collapsed miss was answered with something not stored (and not an
    /// error) runs its misses without collapsing, so a hot URL that cannot be cached never
    /// makes its callers wait for each other (Varnish's "hit-for-miss"). Zero turns the memory
    /// off. Defaults to 30 s.
    pub fn hit_for_miss(mut self, ttl: Duration) -> Self {
        self.hit_for_miss = ttl;
        self
    }

    /// For a gateway: when the inner response's body fails while the cache reads it to store
    /// it, nothing has reached the client yet, and no stale response may answer, the client
    /// gets `502 Bad Gateway` (empty, `Cache-Control: no-store`, `Cache-Status:
    /// ...; detail=body-error`) instead of the part that arrived followed by the error
    /// (RFC 9110 §15.6.3). Bodies that are not being stored stream through as they come.
    /// Defaults to false.
    pub fn incomplete_as_bad_gateway(mut self, on: bool) -> Self {
        self.incomplete_as_bad_gateway = on;
        self
    }

    /// Serves a stored response up to `max_staleness` past its freshness when the origin
    /// fails (the inner service returns an error, or answers `500`, `502`, `503` or `504`;
    /// behind a proxy that includes an unreachable origin, a reset connection and an origin
    /// timeout the proxy answers `502`/`504` for), even when the response has no
    /// `stale-if-error`. Never for a response whose `must-revalidate`, `no-cache`, or (in
    /// shared mode) `proxy-revalidate` or `s-maxage` forbids stale use (RFC 9111 §4.2.4), nor
    /// for a request that says `no-cache`; a response's own `stale-if-error` window replaces
    /// this one (the origin said how long). `Cache-Status` reports `detail=stale-on-error`
    /// (`detail=stale-if-error` when the response's own window covers it). Entries are then
    /// kept in memory that much longer past freshness (never past [`ttl_cap`](Self::ttl_cap)).
    ///
    /// Like nginx's `proxy_cache_use_stale error timeout` and Varnish's grace, this goes beyond
    /// what the origin asked for: it hides outages. Defaults to zero (off).
    ///
    /// ```
    /// use std::time::Duration;
    /// use cache_layer::CacheLayer;
    ///
    /// let cache = CacheLayer::builder()
    ///     .serve_stale_on_error(Duration::from_secs(3600))
    ///     .build()
    ///     .expect("valid configuration");
    /// # let _ = cache;
    /// ```
    pub fn serve_stale_on_error(mut self, max_staleness: Duration) -> Self {
        self.stale_on_error = max_staleness;
        self
    }

    /// Adds the shared tier on Redis below the in-process one (feature `redis`): misses look
    /// there before the origin, stored responses are written there in the background, and
    /// purges reach every instance sharing it. Defaults to none.
    ///
    /// [`build`](Self::build) must then run inside a tokio runtime (it starts the invalidation
    /// subscriber).
    #[cfg(feature = "redis")]
    pub fn redis(mut self, tier: crate::RedisTier) -> Self {
        self.lower.l2 = Some(tier);
        self
    }

    /// Adds the persistent tier below the shared one (feature `disk`). Defaults to none.
    #[cfg(feature = "disk")]
    pub fn disk(mut self, tier: crate::DiskTier) -> Self {
        self.lower.l3 = Some(tier);
        self
    }

    /// Entries of at least this many encoded bytes are LZ4-compressed in the lower tiers
    /// (feature `lz4`; without it, or with `None`, nothing is compressed). Defaults to `None`.
    pub fn compress_above(mut self, bytes: Option<usize>) -> Self {
        self.lower.compress_above = bytes;
        self
    }

    /// Checks the configuration and builds the layer.
    pub fn build(mut self) -> Result<CacheLayer, ConfigError> {
        if !self.lower.is_empty() && tokio::runtime::Handle::try_current().is_err() {
            return Err(ConfigError::new(
                "redis",
                "lower tiers must be built inside a tokio runtime",
            ));
        }
        if self.name.is_empty()
            || self.name.len() > MAX_NAME_LEN
            || !self.name.bytes().all(crate::directives::is_tchar)
        {
            return Err(ConfigError::new(
                "cache_name",
                "must be a non-empty token of at most 64 bytes",
            ));
        }
        if self.collapse_wait.is_some_and(|w| w.is_zero()) {
            return Err(ConfigError::new(
                "collapse_misses",
                "the wait must be above zero",
            ));
        }
        if self.refresh_timeout.is_zero() {
            return Err(ConfigError::new("refresh_timeout", "must be above zero"));
        }
        if let Some(names) = self.target_names.take() {
            let mut targets: Vec<TargetedField> = Vec::with_capacity(names.len());
            for n in names {
                let name = HeaderName::from_bytes(n.as_bytes()).map_err(|_| {
                    ConfigError::new("targeted_cache_controls", "not a valid field name")
                })?;
                if name == http::header::CACHE_CONTROL {
                    return Err(ConfigError::new(
                        "targeted_cache_controls",
                        "Cache-Control is the fallback, not a targeted field",
                    ));
                }
                if targets.iter().any(|t| t.name == name) {
                    return Err(ConfigError::new(
                        "targeted_cache_controls",
                        "a field is listed twice",
                    ));
                }
                targets.push(TargetedField::new(name));
            }
            self.targets = targets;
        }
        if let Some(d) = &self.surrogate_device
            && (d.is_empty() || !d.bytes().all(crate::directives::is_tchar))
        {
            return Err(ConfigError::new("surrogate_device", "must be a token"));
        }
        if let Some(n) = self.tag_header_name.take() {
            self.tag_header = Some(
                HeaderName::from_bytes(n.as_bytes())
                    .map_err(|_| ConfigError::new("tag_header", "not a valid field name"))?,
            );
        }
        if self.max_capacity_bytes == 0 {
            return Err(ConfigError::new("max_capacity_bytes", "must be above zero"));
        }
        if self.max_variants == 0 {
            return Err(ConfigError::new("max_variants", "must be above zero"));
        }
        if self.ttl_cap.is_zero() {
            return Err(ConfigError::new("ttl_cap", "must be above zero"));
        }
        if !(0.0..=1.0).contains(&self.heuristic_fraction) {
            return Err(ConfigError::new(
                "heuristic",
                "fraction must be within 0..=1",
            ));
        }
        if let Some(b) = self.early_refresh_beta
            && !(b.is_finite() && b > 0.0)
        {
            return Err(ConfigError::new(
                "early_refresh",
                "beta must be a positive number",
            ));
        }
        Ok(CacheLayer::from_builder(self))
    }
}
