//! The response body of [`Cache`](crate::Cache): stored bytes, the inner body, or a replay of a
//! buffered prefix followed by the rest of the inner body.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// Body of every response that passes through the cache.
    ///
    /// - a hit (or a response the cache just stored) is one `Bytes` chunk shared with the store,
    ///   with no copy;
    /// - a response the cache does not store is the inner body, untouched;
    /// - a response that turned out larger than `max_body_bytes` while being buffered replays the
    ///   chunks already read, then streams the rest of the inner body.
    ///
    /// Its error type is the inner body's.
    pub struct CacheBody<B>
    where
        B: Body,
    {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B>
    where
        B: Body,
    {
        Full { data: Option<Bytes> },
        Inner { #[pin] body: B },
        Replay {
            frames: VecDeque<Frame<Bytes>>,
            rest: Option<Pin<Box<B>>>,
            error: Option<B::Error>,
        },
    }
}

impl<B: Body> std::fmt::Debug for CacheBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.kind {
            Kind::Full { .. } => "Full",
            Kind::Inner { .. } => "Inner",
            Kind::Replay { .. } => "Replay",
        };
        f.debug_struct("CacheBody").field("kind", &kind).finish()
    }
}

impl<B: Body> CacheBody<B> {
    /// A body holding `data` (empty for `None`).
    pub fn full(data: Option<Bytes>) -> Self {
        Self {
            kind: Kind::Full {
                data: data.filter(|d| !d.is_empty()),
            },
        }
    }

    /// An empty body.
    pub fn empty() -> Self {
        Self::full(None)
    }

    /// The inner service's body, passed through.
    pub fn inner(body: B) -> Self {
        Self {
            kind: Kind::Inner { body },
        }
    }

    pub(crate) fn replay(
        frames: VecDeque<Frame<Bytes>>,
        rest: Option<Pin<Box<B>>>,
        error: Option<B::Error>,
    ) -> Self {
        Self {
            kind: Kind::Replay {
                frames,
                rest,
                error,
            },
        }
    }
}

impl<B> Body for CacheBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            KindProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            KindProj::Inner { body } => body.poll_frame(cx),
            KindProj::Replay {
                frames,
                rest,
                error,
            } => {
                if let Some(frame) = frames.pop_front() {
                    return Poll::Ready(Some(Ok(frame)));
                }
                if let Some(e) = error.take() {
                    *rest = None;
                    return Poll::Ready(Some(Err(e)));
                }
                match rest {
                    Some(body) => body.as_mut().poll_frame(cx),
                    None => Poll::Ready(None),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full { data } => data.is_none(),
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Replay {
                frames,
                rest,
                error,
            } => {
                frames.is_empty()
                    && error.is_none()
                    && rest.as_ref().is_none_or(|b| b.is_end_stream())
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Inner { body } => body.size_hint(),
            Kind::Replay { frames, rest, .. } => {
                let buffered: u64 = frames
                    .iter()
                    .filter_map(|f| f.data_ref())
                    .map(|d| d.len() as u64)
                    .sum();
                let mut hint = rest
                    .as_ref()
                    .map(|b| b.size_hint())
                    .unwrap_or_else(|| SizeHint::with_exact(0));
                let lower = hint.lower().saturating_add(buffered);
                let upper = hint.upper().map(|u| u.saturating_add(buffered));
                hint.set_lower(0);
                if let Some(u) = upper {
                    hint.set_upper(u);
                }
                hint.set_lower(lower);
                hint
            }
        }
    }
}
