//! [`BreakerLayer`]: wraps any `Service<http::Request<B>>` (an axum router or route, or an outbound HTTP client) in a
//! [`Breaker`].

use std::time::Duration;

use tower_layer::Layer;

use crate::breaker::CircuitBreaker;
use crate::classify::{DefaultClassifier, ProblemFallback};
use crate::keyed::{KeyedBreakers, PerKey};
use crate::service::Breaker;

/// Layer applying a circuit breaker to HTTP services. Cheap to clone; clones share the breaker(s).
///
/// ```
/// use axum::{Router, routing::get};
/// use breaker_layer::{BreakerLayer, CircuitBreaker};
///
/// let breaker = CircuitBreaker::builder().name("api").build()?;
/// let app: Router = Router::new()
///     .route("/", get(|| async { "hello" }))
///     .layer(BreakerLayer::new(breaker.clone()));
/// // `breaker` is the control handle: state(), force_open(), reset(), snapshot(), subscribe().
/// # Ok::<(), breaker_layer::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
pub struct BreakerLayer<P = CircuitBreaker, C = DefaultClassifier, F = ProblemFallback> {
    policy: P,
    classifier: C,
    fallback: F,
    timeout: Option<Duration>,
}

impl BreakerLayer {
    /// Guard every request with `breaker`.
    pub fn new(breaker: CircuitBreaker) -> Self {
        Self {
            policy: breaker,
            classifier: DefaultClassifier::new(),
            fallback: ProblemFallback,
            timeout: None,
        }
    }

    /// The breaker, to observe or control it.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.policy
    }
}

impl<X> BreakerLayer<PerKey<X>> {
    /// Guard each request with the breaker of its key, chosen by `extractor` from `registry`.
    ///
    /// ```
    /// use breaker_layer::{BreakerLayer, CircuitBreaker, HostKey, KeyedBreakers};
    ///
    /// let upstreams = KeyedBreakers::builder(CircuitBreaker::builder().name("upstreams")).max_keys(64).build()?;
    /// let layer = BreakerLayer::per_key(upstreams.clone(), HostKey);
    /// # Ok::<(), breaker_layer::ConfigError>(())
    /// ```
    pub fn per_key(registry: KeyedBreakers, extractor: X) -> Self {
        Self {
            policy: PerKey {
                registry,
                extractor,
            },
            classifier: DefaultClassifier::new(),
            fallback: ProblemFallback,
            timeout: None,
        }
    }

    /// The registry, to observe or control individual breakers.
    pub fn registry(&self) -> &KeyedBreakers {
        &self.policy.registry
    }
}

impl<P, F> BreakerLayer<P, DefaultClassifier, F> {
    /// With the default classifier, also count `429 Too Many Requests` as a failure.
    ///
    /// Defaults to `false`.
    pub fn too_many_requests_as_failure(mut self, yes: bool) -> Self {
        self.classifier = self.classifier.too_many_requests_as_failure(yes);
        self
    }
}

impl<P, C, F> BreakerLayer<P, C, F> {
    /// Judge results with `classifier` (a [`Classify`](crate::Classify) implementation or a closure
    /// `Fn(Result<&Response<B>, &E>) -> Outcome`).
    ///
    /// Defaults to [`DefaultClassifier`].
    pub fn classifier<C2>(self, classifier: C2) -> BreakerLayer<P, C2, F> {
        BreakerLayer {
            policy: self.policy,
            classifier,
            fallback: self.fallback,
            timeout: self.timeout,
        }
    }

    /// Answer refused calls with `fallback` (a [`Fallback`](crate::Fallback) implementation or a closure
    /// `Fn(&Rejected) -> Response<Bytes>`).
    ///
    /// Defaults to [`ProblemFallback`] (503 + `Retry-After` + problem+json).
    pub fn fallback<F2>(self, fallback: F2) -> BreakerLayer<P, C, F2> {
        BreakerLayer {
            policy: self.policy,
            classifier: self.classifier,
            fallback,
            timeout: self.timeout,
        }
    }

    /// Give up on a call after `limit`: the caller gets `504 Gateway Timeout` (problem+json, `no-store`), the inner
    /// future is dropped and the call counts as a failure.
    ///
    /// Defaults to no timeout.
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.timeout = Some(limit);
        self
    }
}

impl<S, P: Clone, C: Clone, F: Clone> Layer<S> for BreakerLayer<P, C, F> {
    type Service = Breaker<S, P, C, F>;

    fn layer(&self, inner: S) -> Self::Service {
        Breaker {
            inner,
            policy: self.policy.clone(),
            classifier: self.classifier.clone(),
            fallback: self.fallback.clone(),
            timeout: self.timeout,
        }
    }
}
