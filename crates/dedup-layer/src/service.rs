//! [`Dedup`]: the coalescing service.
//!
//! A leader calls the inner service itself and drives the work inline; waiters wait on its slot.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tokio::runtime::Handle;
use tower_service::Service;

use crate::body::{BoxError, DedupBody};
use crate::future::{Detached, LeaderResult, Leading, ResponseFuture, Sharing};
use crate::inflight::{Joined, Outcome, Waiting};
use crate::layer::{OnWaiterTimeout, Shared};
use crate::metric;
use crate::problem::Problem;

/// The coalescing service made by [`DedupLayer`](crate::DedupLayer).
///
/// ```
/// use dedup_layer::{Dedup, DedupLayer};
/// use tower_layer::Layer;
///
/// let service = DedupLayer::new().layer(tower::service_fn(|_req: http::Request<()>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::new())))
/// }));
/// let _: &Dedup<_> = &service;
/// ```
pub struct Dedup<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Dedup<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Dedup { inner, shared }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone> Clone for Dedup<S> {
    fn clone(&self) -> Self {
        Dedup {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for Dedup<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dedup")
            .field("inner", &self.inner)
            .field("inflight", &self.shared.inflight.len())
            .finish()
    }
}

impl<S, B, ResBody> Service<Request<B>> for Dedup<S>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    ResBody: Body<Data = Bytes> + Unpin + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<DedupBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let config = &self.shared.config;
        if !config.methods.contains(req.method()) {
            return ResponseFuture::inner(self.inner.call(req));
        }
        let (parts, body) = req.into_parts();
        let key = config.key.make_key(&parts);
        let req = Request::from_parts(parts, body);
        let Some(key) = key else {
            return ResponseFuture::inner(self.inner.call(req));
        };
        let (key, per_user) = key.into_parts();
        match self.shared.inflight.join(key) {
            Joined::Full => {
                metric::count(&metric::BYPASSED);
                tracing::debug!("in-flight map full; request runs uncoalesced");
                ResponseFuture::inner(self.inner.call(req))
            }
            Joined::Leader(lead) => {
                metric::count(&metric::LEADER);
                // The ready service is called right here; the work runs inline in the caller's future.
                let future = Box::pin(self.inner.call(req));
                ResponseFuture::leader(Leading::new(
                    future,
                    lead,
                    config.max_body_bytes,
                    Sharing {
                        per_user,
                        key: config.key.clone(),
                    },
                    detach::<S::Future, ResBody, S::Error>,
                ))
            }
            Joined::Waiter(waiting) => {
                if config.waiter_timeout.is_some() && Handle::try_current().is_err() {
                    // No runtime to time the wait with: run alone rather than wait unbounded.
                    drop(waiting);
                    metric::count(&metric::BYPASSED);
                    return ResponseFuture::inner(self.inner.call(req));
                }
                tracing::trace!("joining an identical request in flight");
                // Readiness stays with `self.inner`; the waiter drives its own clone to readiness if it
                // ends up calling it.
                let service = self.inner.clone();
                ResponseFuture::waiter(Box::pin(wait(
                    waiting,
                    service,
                    req,
                    config.waiter_timeout,
                    config.on_waiter_timeout,
                )))
            }
        }
    }
}

/// Moves a leader whose caller left into its own task, so the waiters still get the answer.
fn detach<F, B, E>(leading: Leading<F, B, E>)
where
    F: Future<Output = Result<Response<B>, E>> + Send + 'static,
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
    E: Send + 'static,
{
    let Ok(runtime) = Handle::try_current() else {
        tracing::debug!("no runtime to finish the detached request on; waiters get 500");
        return;
    };
    let registry = leading.abort_registry();
    let task = runtime.spawn(Detached(leading));
    if let Some(registry) = registry {
        registry.register(task.abort_handle());
    }
}

/// Runs the inner service on `service`, first driving it to readiness.
async fn call_own<S, B, ResBody>(mut service: S, req: Request<B>) -> LeaderResult<ResBody, S::Error>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
{
    std::future::poll_fn(|cx| service.poll_ready(cx)).await?;
    service
        .call(req)
        .await
        .map(|response| response.map(DedupBody::inner))
}

async fn wait<S, B, ResBody>(
    waiting: Waiting,
    service: S,
    req: Request<B>,
    timeout: Option<Duration>,
    on_timeout: OnWaiterTimeout,
) -> LeaderResult<ResBody, S::Error>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
{
    let outcome = match timeout {
        Some(timeout) => tokio::time::timeout(timeout, waiting.outcome()).await.ok(),
        None => Some(waiting.outcome().await),
    };
    // Leave the slot before running anything of our own, so an abandoned leader can be cancelled.
    drop(waiting);
    match outcome {
        Some(Outcome::Shared(response)) => {
            metric::count(&metric::COALESCED);
            Ok(response.to_response())
        }
        Some(Outcome::Failed) => {
            metric::count(&metric::COALESCED);
            Ok(Problem::LeaderFailed.response())
        }
        Some(Outcome::Bypass) => {
            metric::count(&metric::BYPASSED);
            call_own(service, req).await
        }
        None => {
            metric::count(&metric::TIMEOUT);
            tracing::debug!("waiter timed out");
            match on_timeout {
                OnWaiterTimeout::GatewayTimeout => Ok(Problem::WaiterTimeout.response()),
                OnWaiterTimeout::RunOwnRequest => call_own(service, req).await,
            }
        }
    }
}
