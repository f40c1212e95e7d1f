//! The response body of both layers: the inner body, a buffered copy, or a buffered prefix followed by the rest.
//!
//! One enum instead of a boxed body keeps the inner service's body type visible and avoids an allocation.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

/// Error type of [`DedupBody`]: the inner body's error, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pin_project! {
    /// Response body returned by [`Dedup`](crate::Dedup) and [`Idempotency`](crate::Idempotency).
    ///
    /// It is either the inner service's body untouched, a body buffered by the layer (a shared, replayed or
    /// problem+json answer), or, when a leader's body outgrew the buffer limit, the buffered prefix followed
    /// by the rest of the inner body. Data is [`Bytes`]; errors are the inner body's, boxed.
    ///
    /// ```
    /// use dedup_layer::DedupBody;
    /// use http_body_util::Full;
    /// use bytes::Bytes;
    ///
    /// fn assert_body<B: http_body::Body<Data = Bytes>>() {}
    /// assert_body::<DedupBody<Full<Bytes>>>();
    /// ```
    pub struct DedupBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Full {
            data: Option<Bytes>,
            trailers: Option<HeaderMap>,
        },
        Inner {
            #[pin]
            body: B,
        },
        Replay {
            chunks: VecDeque<Bytes>,
            error: Option<BoxError>,
            rest_done: bool,
            #[pin]
            rest: B,
        },
    }
}

impl<B> DedupBody<B> {
    pub(crate) fn full(data: Bytes) -> Self {
        Self::full_with_trailers(data, None)
    }

    pub(crate) fn full_with_trailers(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        DedupBody {
            kind: Kind::Full {
                data: Some(data),
                trailers,
            },
        }
    }

    pub(crate) fn inner(body: B) -> Self {
        DedupBody {
            kind: Kind::Inner { body },
        }
    }

    /// Replays `chunks`, then yields `error` if any, otherwise continues with `rest`.
    pub(crate) fn replay(chunks: VecDeque<Bytes>, error: Option<BoxError>, rest: B) -> Self {
        DedupBody {
            kind: Kind::Replay {
                rest_done: error.is_some(),
                chunks,
                error,
                rest,
            },
        }
    }
}

impl<B> fmt::Debug for DedupBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Full { .. } => "Full",
            Kind::Inner { .. } => "Inner",
            Kind::Replay { .. } => "Replay",
        };
        f.debug_struct("DedupBody").field("kind", &kind).finish()
    }
}

impl<B> Body for DedupBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.project().kind.project() {
            KindProj::Full { data, trailers } => {
                if let Some(data) = data.take().filter(|d| !d.is_empty()) {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t))))
            }
            KindProj::Inner { body } => body.poll_frame(cx).map_err(Into::into),
            KindProj::Replay {
                chunks,
                error,
                rest_done,
                rest,
            } => {
                if let Some(chunk) = chunks.pop_front() {
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                if let Some(error) = error.take() {
                    return Poll::Ready(Some(Err(error)));
                }
                if *rest_done {
                    return Poll::Ready(None);
                }
                rest.poll_frame(cx).map_err(Into::into)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full { data, trailers } => {
                data.as_ref().is_none_or(Bytes::is_empty) && trailers.is_none()
            }
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Replay {
                chunks,
                error,
                rest_done,
                rest,
            } => chunks.is_empty() && error.is_none() && (*rest_done || rest.is_end_stream()),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Inner { body } => body.size_hint(),
            Kind::Replay {
                chunks,
                rest_done,
                rest,
                ..
            } => {
                let buffered: u64 = chunks.iter().map(|c| c.len() as u64).sum();
                if *rest_done {
                    return SizeHint::with_exact(buffered);
                }
                let hint = rest.size_hint();
                let mut out = SizeHint::new();
                out.set_lower(hint.lower().saturating_add(buffered));
                if let Some(upper) = hint.upper() {
                    out.set_upper(upper.saturating_add(buffered));
                }
                out
            }
        }
    }
}

/// The result of reading a body up to a limit.
pub(crate) enum Buffered<B> {
    /// The whole body fit.
    Complete {
        data: Bytes,
        trailers: Option<HeaderMap>,
    },
    /// The body is larger than the limit: what was read, then the rest.
    TooLarge { chunks: VecDeque<Bytes>, rest: B },
    /// The body failed after `chunks`.
    Failed {
        chunks: VecDeque<Bytes>,
        error: BoxError,
        rest: B,
    },
}

/// Reads `body` until it ends or more than `limit` bytes have arrived.
pub(crate) async fn buffer<B>(mut body: B, limit: usize) -> Buffered<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    use http_body_util::BodyExt;

    let mut chunks = VecDeque::new();
    let mut total = 0usize;
    if body.size_hint().lower() > limit as u64 {
        return Buffered::TooLarge { chunks, rest: body };
    }
    let mut trailers = None;
    loop {
        match body.frame().await {
            None => break,
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    if data.is_empty() {
                        continue;
                    }
                    total = total.saturating_add(data.len());
                    chunks.push_back(data);
                    if total > limit {
                        return Buffered::TooLarge { chunks, rest: body };
                    }
                }
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        match &mut trailers {
                            None => trailers = Some(t),
                            Some(existing) => existing.extend(t),
                        }
                    }
                }
            },
            Some(Err(error)) => {
                return Buffered::Failed {
                    chunks,
                    error: error.into(),
                    rest: body,
                };
            }
        }
    }
    let data = match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop_front().unwrap_or_default(),
        _ => {
            let mut joined = Vec::with_capacity(total);
            for chunk in &chunks {
                joined.extend_from_slice(chunk);
            }
            Bytes::from(joined)
        }
    };
    Buffered::Complete { data, trailers }
}
