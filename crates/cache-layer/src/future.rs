//! The response future of [`Cache`](crate::Cache).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Response;

use crate::body::CacheBody;

type BoxedResponse<B, E> = Pin<Box<dyn Future<Output = Result<Response<CacheBody<B>>, E>> + Send>>;

/// Future returned by [`Cache`](crate::Cache).
///
/// A hit is ready at once and allocates no future. Every path that calls the inner service is
/// one boxed `async` block: it buffers bodies, revalidates and falls back to stale responses,
/// and the cost of a box is small next to a call to the origin.
pub struct ResponseFuture<B: http_body::Body, E> {
    kind: Kind<B, E>,
}

// Neither variant is structurally pinned: an Option moved out of and a Box.
impl<B: http_body::Body, E> Unpin for ResponseFuture<B, E> {}

enum Kind<B: http_body::Body, E> {
    Ready {
        response: Option<Response<CacheBody<B>>>,
    },
    Boxed {
        future: BoxedResponse<B, E>,
    },
}

impl<B: http_body::Body, E> fmt::Debug for ResponseFuture<B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            Kind::Ready { .. } => "Ready",
            Kind::Boxed { .. } => "Boxed",
        };
        f.debug_struct("ResponseFuture")
            .field("kind", &kind)
            .finish()
    }
}

impl<B: http_body::Body, E> ResponseFuture<B, E> {
    pub(crate) fn ready(response: Response<CacheBody<B>>) -> Self {
        Self {
            kind: Kind::Ready {
                response: Some(response),
            },
        }
    }

    pub(crate) fn boxed(
        future: impl Future<Output = Result<Response<CacheBody<B>>, E>> + Send + 'static,
    ) -> Self {
        Self {
            kind: Kind::Boxed {
                future: Box::pin(future),
            },
        }
    }
}

impl<B: http_body::Body, E> Future for ResponseFuture<B, E> {
    type Output = Result<Response<CacheBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match &mut this.kind {
            Kind::Ready { response } => match response.take() {
                Some(r) => Poll::Ready(Ok(r)),
                None => Poll::Pending,
            },
            Kind::Boxed { future } => future.as_mut().poll(cx),
        }
    }
}
