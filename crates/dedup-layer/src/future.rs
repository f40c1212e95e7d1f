//! [`ResponseFuture`] of the coalescing service.
//!
//! Pass-through and leader paths are unboxed; a waiter's future is boxed (it only exists when work was saved).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::Response;
use pin_project_lite::pin_project;
use tokio::sync::oneshot;

use crate::body::DedupBody;
use crate::inflight::Subscription;
use crate::problem::Problem;

pub(crate) type LeaderResult<B, E> = Result<Response<DedupBody<B>>, E>;
type BoxFuture<B, E> = Pin<Box<dyn Future<Output = LeaderResult<B, E>> + Send>>;

pin_project! {
    /// Response future of [`Dedup`](crate::Dedup).
    pub struct ResponseFuture<F, B, E> {
        #[pin]
        state: State<F, B, E>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B, E> {
        Inner {
            #[pin]
            future: F,
        },
        Leader {
            rx: oneshot::Receiver<LeaderResult<B, E>>,
            subscription: Option<Subscription>,
        },
        Waiter {
            future: BoxFuture<B, E>,
        },
    }
}

impl<F, B, E> ResponseFuture<F, B, E> {
    pub(crate) fn inner(future: F) -> Self {
        ResponseFuture {
            state: State::Inner { future },
        }
    }

    pub(crate) fn leader(
        rx: oneshot::Receiver<LeaderResult<B, E>>,
        subscription: Subscription,
    ) -> Self {
        ResponseFuture {
            state: State::Leader {
                rx,
                subscription: Some(subscription),
            },
        }
    }

    pub(crate) fn waiter(future: BoxFuture<B, E>) -> Self {
        ResponseFuture {
            state: State::Waiter { future },
        }
    }
}

impl<F, B, E> fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Inner { .. } => "Inner",
            State::Leader { .. } => "Leader",
            State::Waiter { .. } => "Waiter",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<DedupBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Inner { future } => {
                let response = ready!(future.poll(cx))?;
                Poll::Ready(Ok(response.map(DedupBody::inner)))
            }
            StateProj::Leader { rx, subscription } => {
                let result = ready!(Pin::new(rx).poll(cx));
                subscription.take();
                match result {
                    Ok(result) => Poll::Ready(result),
                    // The task panicked or was dropped with the runtime.
                    Err(_) => Poll::Ready(Ok(Problem::LeaderFailed.response())),
                }
            }
            StateProj::Waiter { future } => future.as_mut().poll(cx),
        }
    }
}
