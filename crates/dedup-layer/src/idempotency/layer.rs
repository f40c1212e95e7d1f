//! [`IdempotencyLayer`]: configuration of the `Idempotency-Key` middleware.
//!
//! Apply one instance per route group (e.g. with `Router::route_layer`) so each operation chooses its own rules.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, header, request::Parts};
use tower_layer::Layer;

use super::service::Idempotency;
use crate::error::ConfigError;
use crate::store::{IdempotencyStore, MemoryStore};

/// What the layer does when its store fails or does not answer within the store timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OnStoreError {
    /// Answer `503 Service Unavailable` problem+json with `Retry-After: 1`; the operation does not run.
    #[default]
    Reject,
    /// Run the request without idempotency protection (logged, counted as `store_error`).
    FailOpen,
}

/// Identifies the client that owns an idempotency key, so two clients' keys never collide.
///
/// The layer stores keys under a SHA-256 digest of the scope bytes. Implemented by [`AuthorizationScope`] and
/// any `Fn(&http::request::Parts) -> Vec<u8>`.
///
/// ```
/// use dedup_layer::IdempotencyLayer;
/// use dedup_layer::store::MemoryStore;
///
/// // Scope keys by an API-key header instead of Authorization.
/// let layer = IdempotencyLayer::builder(MemoryStore::default())
///     .client_scope(|parts: &http::request::Parts| {
///         parts.headers.get("x-api-key").map(|v| v.as_bytes().to_vec()).unwrap_or_default()
///     })
///     .build()
///     .unwrap();
/// # let _ = layer;
/// ```
pub trait ClientScope: Send + Sync + 'static {
    /// The bytes that identify the caller; empty for anonymous callers (who then share one scope).
    fn scope(&self, parts: &Parts) -> Vec<u8>;
}

impl<F> ClientScope for F
where
    F: Fn(&Parts) -> Vec<u8> + Send + Sync + 'static,
{
    fn scope(&self, parts: &Parts) -> Vec<u8> {
        self(parts)
    }
}

/// The default scope: the value of the `Authorization` header.
#[derive(Clone, Copy, Debug, Default)]
pub struct AuthorizationScope;

impl ClientScope for AuthorizationScope {
    fn scope(&self, parts: &Parts) -> Vec<u8> {
        parts
            .headers
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes().to_vec())
            .unwrap_or_default()
    }
}

pub(crate) struct Config<St> {
    pub(crate) store: St,
    pub(crate) methods: Vec<Method>,
    pub(crate) required: bool,
    pub(crate) scope: Arc<dyn ClientScope>,
    pub(crate) max_key_len: usize,
    pub(crate) max_request_bytes: usize,
    pub(crate) max_response_bytes: usize,
    pub(crate) ttl: Duration,
    pub(crate) lock_ttl: Duration,
    pub(crate) store_timeout: Duration,
    pub(crate) on_store_error: OnStoreError,
}

/// Makes unsafe requests carrying an `Idempotency-Key` run once; retries get the stored answer.
///
/// - Missing key where required → `400`; malformed key (not one sf-string of 1..=255 printable characters) → `400`.
/// - Same key, different request (method, path, query or body differ) → `422`.
/// - Same key while the first request is still running → `409` with `Retry-After`.
/// - Same key after completion → the stored status, headers and body with `Idempotent-Replayed: true`.
/// - `5xx` answers and inner errors are not stored: the key is released so the client can retry.
/// - Request bodies are buffered up to [`max_request_bytes`](IdempotencyLayerBuilder::max_request_bytes) (`413` above).
///
/// The first request's inner call runs in its own task: a client that disconnects does not abort a
/// half-done operation, and its retry finds the stored result.
///
/// The request body type must implement `From<Bytes>` so the buffered body can be passed on; axum's `Body` does.
///
/// ```
/// use axum::{Router, routing::post};
/// use dedup_layer::{IdempotencyLayer, store::MemoryStore};
///
/// let app: Router = Router::new()
///     .route("/orders", post(|| async { (http::StatusCode::CREATED, "order 1") }))
///     .route_layer(IdempotencyLayer::new(MemoryStore::default()));
/// ```
pub struct IdempotencyLayer<St> {
    config: Arc<Config<St>>,
}

impl<St> Clone for IdempotencyLayer<St> {
    fn clone(&self) -> Self {
        IdempotencyLayer {
            config: self.config.clone(),
        }
    }
}

impl<St: fmt::Debug> fmt::Debug for IdempotencyLayer<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        f.debug_struct("IdempotencyLayer")
            .field("store", &c.store)
            .field("methods", &c.methods)
            .field("required", &c.required)
            .field("ttl", &c.ttl)
            .field("lock_ttl", &c.lock_ttl)
            .field("on_store_error", &c.on_store_error)
            .finish_non_exhaustive()
    }
}

impl<St: IdempotencyStore> IdempotencyLayer<St> {
    /// A layer over `store` with every default (see [`IdempotencyLayerBuilder`]).
    pub fn new(store: St) -> Self {
        IdempotencyLayerBuilder::new(store).assemble()
    }

    /// A builder over `store`.
    pub fn builder(store: St) -> IdempotencyLayerBuilder<St> {
        IdempotencyLayerBuilder::new(store)
    }
}

impl Default for IdempotencyLayer<MemoryStore> {
    fn default() -> Self {
        Self::new(MemoryStore::default())
    }
}

impl<S, St> Layer<S> for IdempotencyLayer<St> {
    type Service = Idempotency<S, St>;

    fn layer(&self, inner: S) -> Self::Service {
        Idempotency::new(inner, self.config.clone())
    }
}

/// Builder for [`IdempotencyLayer`]; every setter documents its default.
#[must_use]
pub struct IdempotencyLayerBuilder<St> {
    config: Config<St>,
}

impl<St: fmt::Debug> fmt::Debug for IdempotencyLayerBuilder<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyLayerBuilder")
            .field("store", &self.config.store)
            .field("methods", &self.config.methods)
            .finish_non_exhaustive()
    }
}

impl<St: IdempotencyStore> IdempotencyLayerBuilder<St> {
    fn new(store: St) -> Self {
        IdempotencyLayerBuilder {
            config: Config {
                store,
                methods: vec![Method::POST, Method::PATCH],
                required: true,
                scope: Arc::new(AuthorizationScope),
                max_key_len: 255,
                max_request_bytes: 1024 * 1024,
                max_response_bytes: 1024 * 1024,
                ttl: Duration::from_secs(24 * 60 * 60),
                lock_ttl: Duration::from_secs(60),
                store_timeout: Duration::from_secs(1),
                on_store_error: OnStoreError::Reject,
            },
        }
    }

    /// Methods the layer handles; others pass through untouched.
    ///
    /// Defaults to `POST` and `PATCH`.
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.config.methods = methods.into_iter().collect();
        self
    }

    /// Whether requests of those methods must carry a key (`400` without one); when `false`, keyless
    /// requests pass through unprotected.
    ///
    /// Defaults to `true`.
    pub fn required(mut self, required: bool) -> Self {
        self.config.required = required;
        self
    }

    /// How the owning client is identified.
    ///
    /// Defaults to [`AuthorizationScope`].
    pub fn client_scope(mut self, scope: impl ClientScope) -> Self {
        self.config.scope = Arc::new(scope);
        self
    }

    /// Longest accepted key, in characters after unescaping.
    ///
    /// Defaults to 255. Must be at least 1.
    pub fn max_key_len(mut self, len: usize) -> Self {
        self.config.max_key_len = len;
        self
    }

    /// Largest request body buffered for the fingerprint; larger requests get `413`.
    ///
    /// Defaults to 1 MiB.
    pub fn max_request_bytes(mut self, max: usize) -> Self {
        self.config.max_request_bytes = max;
        self
    }

    /// Largest response body stored for replay. A larger response is streamed to its caller and stored with
    /// its status and headers only, so a replay has an empty body.
    ///
    /// Defaults to 1 MiB.
    pub fn max_response_bytes(mut self, max: usize) -> Self {
        self.config.max_response_bytes = max;
        self
    }

    /// How long a completed key is remembered.
    ///
    /// Defaults to 24 hours. Must not be zero.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.config.ttl = ttl;
        self
    }

    /// How long the in-flight lock lives; it is refreshed by completion or released on failure, so this only
    /// matters when an instance dies mid-request. Keep it above the slowest handler.
    ///
    /// Defaults to 60 seconds. Must not be zero.
    pub fn lock_ttl(mut self, ttl: Duration) -> Self {
        self.config.lock_ttl = ttl;
        self
    }

    /// Deadline for each store call; past it the call counts as a store error.
    ///
    /// Defaults to 1 second. Must not be zero.
    pub fn store_timeout(mut self, timeout: Duration) -> Self {
        self.config.store_timeout = timeout;
        self
    }

    /// What to do when the store fails.
    ///
    /// Defaults to [`OnStoreError::Reject`]: running an unprotected write twice is usually worse than a retryable 503.
    pub fn on_store_error(mut self, action: OnStoreError) -> Self {
        self.config.on_store_error = action;
        self
    }

    /// Checks the configuration and builds the layer.
    pub fn build(self) -> Result<IdempotencyLayer<St>, ConfigError> {
        let c = &self.config;
        if c.max_key_len == 0 {
            return Err(ConfigError::new("max_key_len", "must be at least 1"));
        }
        if c.ttl.is_zero() {
            return Err(ConfigError::new("ttl", "must be positive"));
        }
        if c.lock_ttl.is_zero() {
            return Err(ConfigError::new("lock_ttl", "must be positive"));
        }
        if c.store_timeout.is_zero() {
            return Err(ConfigError::new("store_timeout", "must be positive"));
        }
        Ok(self.assemble())
    }

    fn assemble(self) -> IdempotencyLayer<St> {
        crate::names::describe();
        IdempotencyLayer {
            config: Arc::new(self.config),
        }
    }
}
