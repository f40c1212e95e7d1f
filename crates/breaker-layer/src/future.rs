//! The response future of [`Breaker`](crate::Breaker): the inner call judged on completion, the inner call under a
//! timeout, or the layer's own answer when the breaker refused the call.

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Response, StatusCode};
use pin_project_lite::pin_project;
use tokio::time::Sleep;

use crate::body::BreakerBody;
use crate::breaker::{Outcome, Permit};
use crate::classify::{Classify, timeout_response};

pin_project! {
    /// Response future of [`Breaker`](crate::Breaker). The permit it holds is recorded when the inner response head
    /// (or error) arrives; if the future is dropped first, the call counts as ignored and a probe slot is freed.
    #[derive(Debug)]
    pub struct ResponseFuture<F, C> {
        #[pin]
        kind: Kind<F, C>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<F, C> {
        Called { #[pin] future: F, judge: Option<(Permit, C)> },
        Timed { #[pin] future: F, #[pin] sleep: Sleep, judge: Option<(Permit, C)> },
        Local { response: Option<Response<Bytes>> },
    }
}

impl<F, C> ResponseFuture<F, C> {
    pub(crate) fn called(future: F, judge: Option<(Permit, C)>) -> Self {
        Self {
            kind: Kind::Called { future, judge },
        }
    }

    pub(crate) fn timed(future: F, sleep: Sleep, judge: Option<(Permit, C)>) -> Self {
        Self {
            kind: Kind::Timed {
                future,
                sleep,
                judge,
            },
        }
    }

    pub(crate) fn local(response: Response<Bytes>) -> Self {
        Self {
            kind: Kind::Local {
                response: Some(response),
            },
        }
    }
}

fn judge<B, E, C: Classify<B, E>>(
    judge: &mut Option<(Permit, C)>,
    result: &Result<Response<B>, E>,
) {
    if let Some((permit, classifier)) = judge.take() {
        let outcome = catch_unwind(AssertUnwindSafe(|| classifier.classify(result.as_ref())))
            .unwrap_or(Outcome::Failure);
        permit.record(outcome);
    }
}

impl<F, C, B, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<Response<B>, E>>,
    C: Classify<B, E>,
{
    type Output = Result<Response<BreakerBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Called { future, judge: j } => {
                let result = ready!(future.poll(cx));
                judge(j, &result);
                Poll::Ready(result.map(|res| res.map(BreakerBody::inner)))
            }
            KindProj::Timed {
                future,
                sleep,
                judge: j,
            } => {
                if let Poll::Ready(result) = future.poll(cx) {
                    judge(j, &result);
                    return Poll::Ready(result.map(|res| res.map(BreakerBody::inner)));
                }
                ready!(sleep.poll(cx));
                if let Some((permit, _)) = j.take() {
                    permit.failure();
                }
                Poll::Ready(Ok(timeout_response().map(BreakerBody::local)))
            }
            KindProj::Local { response } => {
                // Polled again after completion: answer 503 rather than panic.
                let res = response.take().unwrap_or_else(|| {
                    let mut res = Response::new(Bytes::new());
                    *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                    res
                });
                Poll::Ready(Ok(res.map(BreakerBody::local)))
            }
        }
    }
}
