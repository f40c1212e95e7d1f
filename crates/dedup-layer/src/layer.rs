//! [`DedupLayer`]: configuration and construction of the coalescing middleware.
//!
//! One layer value owns one in-flight map; every service it makes (one per route in axum) shares it.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method};
use tower_layer::Layer;

use crate::error::ConfigError;
use crate::inflight::Inflight;
use crate::key::{DefaultKey, MakeKey};
use crate::service::Dedup;

/// What a waiter does when its leader has not answered within the waiter timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OnWaiterTimeout {
    /// Answer `504 Gateway Timeout` with a problem+json body.
    #[default]
    GatewayTimeout,
    /// Stop waiting and send the waiter's own request to the inner service.
    RunOwnRequest,
}

pub(crate) struct Config {
    pub(crate) methods: Vec<Method>,
    pub(crate) key: Arc<dyn MakeKey>,
    pub(crate) max_body_bytes: usize,
    pub(crate) waiter_timeout: Option<Duration>,
    pub(crate) on_waiter_timeout: OnWaiterTimeout,
}

pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) inflight: Arc<Inflight>,
}

/// Coalesces identical concurrent requests of safe methods: the first (the leader) reaches the inner
/// service, the others (waiters) get a copy of its status, headers and body.
///
/// - The leader's inner call runs inline in its caller's response future (no task, no channel). If that
///   caller goes away while waiters remain, the unfinished work moves into a task of its own, so the first
///   client disconnecting does not fail the others; when every caller has gone the call is cancelled (see
///   [`cancel_when_abandoned`](DedupLayerBuilder::cancel_when_abandoned)).
/// - When nobody has joined by the time the response head arrives, the key is freed and the body streams
///   through untouched: the layer costs a key and a map entry, nothing more. Requests arriving later lead afresh.
/// - The response needs no `Clone`: with waiters, the leader buffers the body up to
///   [`max_body_bytes`](DedupLayerBuilder::max_body_bytes) (the key stays joinable meanwhile) and waiters get
///   copies of the [`Bytes`](bytes::Bytes). Above the limit, when the response sets a cookie, when it is
///   `Cache-Control: private` and the key does not identify one user, or when its `Vary` names a request
///   field the key does not cover (or `*`), waiters run their own request instead. Requests carrying `Range`,
///   `If-Range` or a conditional field (`If-None-Match`, `If-Modified-Since`, `If-Match`,
///   `If-Unmodified-Since`) share only with requests carrying the same values: the default key includes
///   them, since a `206`, `304` or `412` fits only the request it answers.
/// - Readiness is forwarded: the leader calls the service `poll_ready` readied; a waiter leaves that readiness
///   with its caller and, if it ends up running its own request, drives a clone to readiness first.
/// - A panic in the inner service answers the leader's caller and every waiter with `500` problem+json; an
///   inner `Err` goes to the leader's caller and the waiters get `500` problem+json (the error is not `Clone`).
///   The key is freed at once in both cases.
///
/// ```
/// use axum::{Router, routing::get};
/// use dedup_layer::DedupLayer;
///
/// let app: Router = Router::new()
///     .route("/report", get(|| async { "expensive" }))
///     .layer(DedupLayer::new());
/// ```
#[derive(Clone)]
pub struct DedupLayer {
    shared: Arc<Shared>,
}

impl fmt::Debug for DedupLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DedupLayer")
            .field("methods", &self.shared.config.methods)
            .field("max_body_bytes", &self.shared.config.max_body_bytes)
            .field("waiter_timeout", &self.shared.config.waiter_timeout)
            .field("on_waiter_timeout", &self.shared.config.on_waiter_timeout)
            .field("inflight", &self.shared.inflight.len())
            .finish_non_exhaustive()
    }
}

impl Default for DedupLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl DedupLayer {
    /// A layer with every default (see [`DedupLayerBuilder`]).
    pub fn new() -> Self {
        DedupLayerBuilder::default().assemble()
    }

    /// A builder to change the defaults.
    pub fn builder() -> DedupLayerBuilder {
        DedupLayerBuilder::default()
    }

    /// A handle that observes this layer's in-flight map (for health checks and tests).
    pub fn handle(&self) -> DedupHandle {
        DedupHandle {
            inflight: self.shared.inflight.clone(),
        }
    }
}

impl<S> Layer<S> for DedupLayer {
    type Service = Dedup<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Dedup::new(inner, self.shared.clone())
    }
}

/// Observes the in-flight map of one [`DedupLayer`].
///
/// ```
/// use dedup_layer::DedupLayer;
///
/// let layer = DedupLayer::new();
/// let handle = layer.handle();
/// assert_eq!(handle.inflight(), 0);
/// assert_eq!(handle.waiters(), 0);
/// ```
#[derive(Clone, Debug)]
pub struct DedupHandle {
    inflight: Arc<Inflight>,
}

impl DedupHandle {
    /// Number of keys whose leader is running.
    pub fn inflight(&self) -> usize {
        self.inflight.len()
    }

    /// Number of callers waiting on a leader (leaders' own callers not counted).
    pub fn waiters(&self) -> usize {
        self.inflight.waiters()
    }
}

/// Builder for [`DedupLayer`]; every setter documents its default.
#[must_use]
pub struct DedupLayerBuilder {
    methods: Vec<Method>,
    vary: Vec<HeaderName>,
    credentials: Vec<HeaderName>,
    share_across_credentials: bool,
    key: Option<Arc<dyn MakeKey>>,
    max_inflight: usize,
    max_body_bytes: usize,
    waiter_timeout: Option<Duration>,
    on_waiter_timeout: OnWaiterTimeout,
    cancel_when_abandoned: bool,
}

impl fmt::Debug for DedupLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DedupLayerBuilder")
            .field("methods", &self.methods)
            .field("vary", &self.vary)
            .field("credentials", &self.credentials)
            .field("share_across_credentials", &self.share_across_credentials)
            .field("custom_key", &self.key.is_some())
            .field("max_inflight", &self.max_inflight)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("waiter_timeout", &self.waiter_timeout)
            .field("on_waiter_timeout", &self.on_waiter_timeout)
            .field("cancel_when_abandoned", &self.cancel_when_abandoned)
            .finish()
    }
}

impl Default for DedupLayerBuilder {
    fn default() -> Self {
        DedupLayerBuilder {
            methods: vec![Method::GET, Method::HEAD],
            vary: DefaultKey::default_vary(),
            credentials: DefaultKey::default_credentials(),
            share_across_credentials: false,
            key: None,
            max_inflight: 10_000,
            max_body_bytes: 4 * 1024 * 1024,
            waiter_timeout: Some(Duration::from_secs(30)),
            on_waiter_timeout: OnWaiterTimeout::GatewayTimeout,
            cancel_when_abandoned: true,
        }
    }
}

impl DedupLayerBuilder {
    /// Methods whose requests are coalesced; others pass straight through.
    ///
    /// Defaults to `GET` and `HEAD`. Only add methods whose repetition is harmless.
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.methods = methods.into_iter().collect();
        self
    }

    /// Request headers whose values change the answer, so they are part of the default key.
    ///
    /// Defaults to `Accept`, `Accept-Encoding`, `Accept-Language`.
    pub fn vary_headers(mut self, headers: impl IntoIterator<Item = HeaderName>) -> Self {
        self.vary = headers.into_iter().collect();
        self
    }

    /// Request headers that identify the caller; the default key includes a SHA-256 digest of their values.
    ///
    /// Defaults to `Authorization` and `Cookie`.
    pub fn credential_headers(mut self, headers: impl IntoIterator<Item = HeaderName>) -> Self {
        self.credentials = headers.into_iter().collect();
        self
    }

    /// Lets requests of different callers share one answer (credentials are left out of the key).
    ///
    /// Defaults to `false`. Only for endpoints whose answer does not depend on who asks.
    pub fn share_across_credentials(mut self, share: bool) -> Self {
        self.share_across_credentials = share;
        self
    }

    /// Replaces the default key with `key` (a [`MakeKey`] or a closure); the header settings above are then unused.
    ///
    /// Defaults to [`DefaultKey`].
    pub fn key_fn(mut self, key: impl MakeKey) -> Self {
        self.key = Some(Arc::new(key));
        self
    }

    /// Most keys in flight at once; beyond it, new keys run uncoalesced (outcome `bypassed`) rather than fail.
    ///
    /// Defaults to 10 000. Must be at least 1.
    pub fn max_inflight(mut self, max: usize) -> Self {
        self.max_inflight = max;
        self
    }

    /// Largest response body the leader buffers to share (only when waiters joined); above it the leader's
    /// caller gets the response streamed and waiters run their own request.
    ///
    /// Defaults to 4 MiB.
    pub fn max_body_bytes(mut self, max: usize) -> Self {
        self.max_body_bytes = max;
        self
    }

    /// How long a waiter waits for its leader; `None` waits as long as the leader runs.
    ///
    /// Defaults to 30 seconds. Must not be zero.
    pub fn waiter_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.waiter_timeout = timeout;
        self
    }

    /// What a waiter does past its timeout.
    ///
    /// Defaults to [`OnWaiterTimeout::GatewayTimeout`].
    pub fn on_waiter_timeout(mut self, action: OnWaiterTimeout) -> Self {
        self.on_waiter_timeout = action;
        self
    }

    /// Cancels the leader's inner call once its caller and every waiter have gone.
    ///
    /// Defaults to `true`. With `false` the call runs to completion (warming whatever it warms) and its
    /// answer is dropped.
    pub fn cancel_when_abandoned(mut self, cancel: bool) -> Self {
        self.cancel_when_abandoned = cancel;
        self
    }

    /// Checks the configuration and builds the layer.
    pub fn build(self) -> Result<DedupLayer, ConfigError> {
        if self.max_inflight == 0 {
            return Err(ConfigError::new("max_inflight", "must be at least 1"));
        }
        if self.waiter_timeout == Some(Duration::ZERO) {
            return Err(ConfigError::new(
                "waiter_timeout",
                "must be positive or None",
            ));
        }
        Ok(self.assemble())
    }

    fn assemble(self) -> DedupLayer {
        crate::names::describe();
        let key: Arc<dyn MakeKey> = match self.key {
            Some(key) => key,
            None => Arc::new(DefaultKey::new(
                self.vary,
                self.credentials,
                self.share_across_credentials,
            )),
        };
        DedupLayer {
            shared: Arc::new(Shared {
                config: Config {
                    methods: self.methods,
                    key,
                    max_body_bytes: self.max_body_bytes,
                    waiter_timeout: self.waiter_timeout,
                    on_waiter_timeout: self.on_waiter_timeout,
                },
                inflight: Arc::new(Inflight::new(
                    self.max_inflight.max(1),
                    self.cancel_when_abandoned,
                )),
            }),
        }
    }
}
