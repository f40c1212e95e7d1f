//! [`Dedup`]: the coalescing service.
//!
//! Leaders run their inner call in a spawned task on a ready clone of the inner service; waiters wait on its slot.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, header};
use http_body::Body;
use tokio::sync::oneshot;
use tower_service::Service;

use crate::body::{BoxError, Buffered, DedupBody, buffer};
use crate::future::{LeaderResult, ResponseFuture};
use crate::inflight::{self, Joined, Outcome, SharedResponse, SlotGuard, Subscription};
use crate::layer::{OnWaiterTimeout, Shared};
use crate::names;
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

fn count(outcome: &'static str) {
    metrics::counter!(names::DEDUP_REQUESTS_TOTAL, names::LABEL_OUTCOME => outcome).increment(1);
}

/// Takes the service that `poll_ready` made ready, leaving a fresh clone in its place.
fn take_ready<S: Clone>(inner: &mut S) -> S {
    let clone = inner.clone();
    std::mem::replace(inner, clone)
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
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            count(names::OUTCOME_BYPASSED);
            return ResponseFuture::inner(self.inner.call(req));
        };
        match self.shared.inflight.join(key.into_bytes()) {
            Joined::Full => {
                count(names::OUTCOME_BYPASSED);
                tracing::debug!("in-flight map full; request runs uncoalesced");
                ResponseFuture::inner(self.inner.call(req))
            }
            Joined::Leader(subscription, guard) => {
                count(names::OUTCOME_LEADER);
                let service = take_ready(&mut self.inner);
                let (tx, rx) = oneshot::channel();
                let task = runtime.spawn(lead(service, req, guard, tx, config.max_body_bytes));
                subscription.set_abort_handle(task.abort_handle());
                ResponseFuture::leader(rx, subscription)
            }
            Joined::Waiter(subscription, rx) => {
                tracing::trace!("joining an identical request in flight");
                let service = take_ready(&mut self.inner);
                ResponseFuture::waiter(Box::pin(wait(
                    subscription,
                    rx,
                    service,
                    req,
                    config.waiter_timeout,
                    config.on_waiter_timeout,
                )))
            }
        }
    }
}

/// The leader's task: call the inner service, buffer the answer, hand it to the leader's caller and the waiters.
async fn lead<S, B, ResBody>(
    mut service: S,
    req: Request<B>,
    guard: SlotGuard,
    tx: oneshot::Sender<LeaderResult<ResBody, S::Error>>,
    max_body_bytes: usize,
) where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: Body<Data = Bytes> + Unpin,
    ResBody::Error: Into<BoxError>,
{
    let response = match service.call(req).await {
        Ok(response) => response,
        Err(error) => {
            tracing::debug!("inner service failed; waiters get 500");
            guard.publish(Outcome::Failed);
            let _ = tx.send(Err(error));
            return;
        }
    };
    if response.headers().contains_key(header::SET_COOKIE) {
        tracing::debug!("response sets a cookie; waiters run their own request");
        guard.publish(Outcome::Bypass);
        let _ = tx.send(Ok(response.map(DedupBody::inner)));
        return;
    }
    let (parts, body) = response.into_parts();
    match buffer(body, max_body_bytes).await {
        Buffered::Complete { data, trailers } => {
            if guard.close() > 0 {
                let shared = SharedResponse {
                    status: parts.status,
                    version: parts.version,
                    headers: parts.headers.clone(),
                    body: data.clone(),
                    trailers: trailers.clone(),
                };
                guard.publish(Outcome::Shared(Arc::new(shared)));
            } else {
                guard.publish(Outcome::Bypass);
            }
            let body = DedupBody::full_with_trailers(data, trailers);
            let _ = tx.send(Ok(Response::from_parts(parts, body)));
        }
        Buffered::TooLarge { chunks, rest } => {
            tracing::debug!("response body above the buffer limit; waiters run their own request");
            guard.publish(Outcome::Bypass);
            let _ = tx.send(Ok(Response::from_parts(
                parts,
                DedupBody::replay(chunks, None, rest),
            )));
        }
        Buffered::Failed {
            chunks,
            error,
            rest,
        } => {
            tracing::debug!("response body failed; waiters get 500");
            guard.publish(Outcome::Failed);
            let _ = tx.send(Ok(Response::from_parts(
                parts,
                DedupBody::replay(chunks, Some(error), rest),
            )));
        }
    }
}

async fn wait<S, B, ResBody>(
    subscription: Subscription,
    rx: tokio::sync::watch::Receiver<Option<Outcome>>,
    mut service: S,
    req: Request<B>,
    timeout: Option<Duration>,
    on_timeout: OnWaiterTimeout,
) -> LeaderResult<ResBody, S::Error>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
{
    let outcome = match timeout {
        Some(timeout) => tokio::time::timeout(timeout, inflight::outcome(rx))
            .await
            .ok(),
        None => Some(inflight::outcome(rx).await),
    };
    // Leave the slot before running anything of our own, so an abandoned leader can be cancelled.
    drop(subscription);
    match outcome {
        Some(Outcome::Shared(response)) => {
            count(names::OUTCOME_COALESCED);
            Ok(response.to_response())
        }
        Some(Outcome::Failed) => {
            count(names::OUTCOME_COALESCED);
            Ok(Problem::LeaderFailed.response())
        }
        Some(Outcome::Bypass) => {
            count(names::OUTCOME_BYPASSED);
            service
                .call(req)
                .await
                .map(|response| response.map(DedupBody::inner))
        }
        None => {
            count(names::OUTCOME_TIMEOUT);
            tracing::debug!("waiter timed out");
            match on_timeout {
                OnWaiterTimeout::GatewayTimeout => Ok(Problem::WaiterTimeout.response()),
                OnWaiterTimeout::RunOwnRequest => service
                    .call(req)
                    .await
                    .map(|response| response.map(DedupBody::inner)),
            }
        }
    }
}
