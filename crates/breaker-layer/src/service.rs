//! The [`Breaker`] service: asks the breaker before each call, answers at once while it refuses, and judges the inner
//! result when it arrives.

use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use tower_service::Service;

use crate::body::BreakerBody;
use crate::breaker::{CircuitBreaker, Permit, Rejected};
use crate::classify::{Classify, DefaultClassifier, Fallback, ProblemFallback};
use crate::future::ResponseFuture;
use crate::keyed::{KeyExtractor, PerKey};

/// Chooses the breaker guarding a request: one shared [`CircuitBreaker`], or a per-key one ([`PerKey`]).
pub trait SelectBreaker<B>: Clone + Send + Sync + 'static {
    /// Ask the chosen breaker for a permit; `None` lets the request through unguarded.
    fn acquire(&self, request: &Request<B>) -> Option<Result<Permit, Rejected>>;
}

impl<B> SelectBreaker<B> for CircuitBreaker {
    #[inline]
    fn acquire(&self, _request: &Request<B>) -> Option<Result<Permit, Rejected>> {
        Some(self.try_acquire())
    }
}

impl<B, X: KeyExtractor<B>> SelectBreaker<B> for PerKey<X> {
    fn acquire(&self, request: &Request<B>) -> Option<Result<Permit, Rejected>> {
        let key = self.extractor.extract(request)?;
        Some(self.registry.get_or_insert(&key).try_acquire())
    }
}

/// A service guarded by a circuit breaker, made by [`BreakerLayer`](crate::BreakerLayer).
///
/// It keeps the inner error type; its response body is [`BreakerBody<ResBody>`](BreakerBody).
#[derive(Debug, Clone)]
pub struct Breaker<S, P = CircuitBreaker, C = DefaultClassifier, F = ProblemFallback> {
    pub(crate) inner: S,
    pub(crate) policy: P,
    pub(crate) classifier: C,
    pub(crate) fallback: F,
    pub(crate) timeout: Option<Duration>,
}

impl<S, P, C, F> Breaker<S, P, C, F> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwrap the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The breaker policy (the shared breaker, or the per-key registry).
    pub fn policy(&self) -> &P {
        &self.policy
    }
}

impl<S, P, C, F, ReqBody, ResBody> Service<Request<ReqBody>> for Breaker<S, P, C, F>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    P: SelectBreaker<ReqBody>,
    C: Classify<ResBody, S::Error>,
    F: Fallback,
{
    type Response = Response<BreakerBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, C>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let judge = match self.policy.acquire(&request) {
            Some(Ok(permit)) => Some((permit, self.classifier.clone())),
            Some(Err(rejected)) => return ResponseFuture::local(self.fallback.response(&rejected)),
            None => None,
        };
        let future = self.inner.call(request);
        match self.timeout {
            Some(limit) => ResponseFuture::timed(future, tokio::time::sleep(limit), judge),
            None => ResponseFuture::called(future, judge),
        }
    }
}
