//! [`ResponseFuture`] of the coalescing service, and the leader's state machine.
//!
//! The leader's inner call runs inline in its caller's future: no task, no channel. Only if that caller goes away
//! while waiters remain (or abandoned work must finish) is the unfinished work moved into a spawned task.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, Response, header};
use http_body::Body;
use pin_project_lite::pin_project;

use crate::body::{BoxError, DedupBody};
use crate::inflight::{Departure, Lead, Outcome, SharedResponse};
use crate::key::MakeKey;
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
            leading: Leading<F, B, E>,
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

    pub(crate) fn leader(leading: Leading<F, B, E>) -> Self {
        ResponseFuture {
            state: State::Leader { leading },
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
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<DedupBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Inner { future } => {
                let response = ready!(future.poll(cx))?;
                Poll::Ready(Ok(response.map(DedupBody::inner)))
            }
            StateProj::Leader { leading } => leading.poll_lead(cx),
            StateProj::Waiter { future } => future.as_mut().poll(cx),
        }
    }
}

/// Where the leader's work stands. The inner future is boxed so it can be moved into a task if its caller leaves.
enum Stage<F, B> {
    Calling(Pin<Box<F>>),
    // Boxed: only reached when waiters joined, and it keeps the common path's future small.
    Buffering(Box<Buffering<B>>),
    Done,
}

struct Buffering<B> {
    parts: http::response::Parts,
    body: B,
    chunks: VecDeque<Bytes>,
    total: usize,
    trailers: Option<HeaderMap>,
}

/// What decides whether an answer may go to the waiters besides its size and `Set-Cookie`.
#[derive(Clone)]
pub(crate) struct Sharing {
    /// The key identifies one user, so a `private` answer may be shared.
    pub(crate) per_user: bool,
    /// Says which request fields every request of the key has in common (for `Vary`).
    pub(crate) key: Arc<dyn MakeKey>,
}

impl Sharing {
    /// Whether the waiters, whose requests have the leader's key, may all receive this answer:
    /// not when it is `private` and the key does not identify one user, nor when it varies on a
    /// request field the key does not cover (or on `*`).
    fn allows(&self, headers: &HeaderMap) -> bool {
        if !self.per_user && says_private(headers) {
            return false;
        }
        for line in headers.get_all(header::VARY) {
            let Ok(line) = line.to_str() else {
                return false;
            };
            for member in line.split(',') {
                let member = member.trim_matches(|c: char| c == ' ' || c == '\t');
                if member.is_empty() {
                    continue;
                }
                match HeaderName::from_bytes(member.as_bytes()) {
                    Ok(name) if self.key.covers(&name) => {}
                    _ => return false,
                }
            }
        }
        true
    }
}

/// Whether any `Cache-Control` line carries `private` (plain or field-qualified); an unreadable
/// line counts as private.
fn says_private(headers: &HeaderMap) -> bool {
    headers.get_all(header::CACHE_CONTROL).iter().any(|line| {
        let Ok(line) = line.to_str() else {
            return true;
        };
        line.split(',').any(|d| {
            let name = d.split('=').next().unwrap_or("");
            name.trim_matches(|c: char| c == ' ' || c == '\t')
                .eq_ignore_ascii_case("private")
        })
    })
}

/// Moves unfinished leader work into a task; instantiated in `Dedup::call`, where the `Send + 'static` bounds hold.
pub(crate) type Detach<F, B, E> = fn(Leading<F, B, E>);

/// The leader's work: the inner call, then (only if waiters joined) buffering the body to share it.
///
/// - Nobody waiting when the response head arrives: the key is freed and the body streams through untouched;
///   later identical requests lead afresh.
/// - Waiters present: the body is buffered up to the limit while the key stays joinable, then shared.
pub(crate) struct Leading<F, B, E> {
    stage: Stage<F, B>,
    lead: Option<Lead>,
    max_body_bytes: usize,
    sharing: Sharing,
    /// Present while this value is owned by the leader's caller; `None` once detached.
    detach: Option<Detach<F, B, E>>,
    _error: PhantomData<fn() -> E>,
}

impl<F, B, E> Leading<F, B, E> {
    pub(crate) fn new(
        future: Pin<Box<F>>,
        lead: Lead,
        max_body_bytes: usize,
        sharing: Sharing,
        detach: Detach<F, B, E>,
    ) -> Self {
        Leading {
            stage: Stage::Calling(future),
            lead: Some(lead),
            max_body_bytes,
            sharing,
            detach: Some(detach),
            _error: PhantomData,
        }
    }

    fn publish(&mut self, outcome: Outcome) {
        if let Some(lead) = self.lead.take() {
            lead.publish(outcome);
        }
    }

    /// The inner future or body panicked: drop it, answer 500 here and to every waiter.
    fn panicked(&mut self) -> Response<DedupBody<B>> {
        tracing::error!("inner service panicked; answering every waiter with 500");
        self.stage = Stage::Done;
        self.publish(Outcome::Failed);
        Problem::LeaderFailed.response()
    }

    /// Where the task driving this detached work registers its abort handle.
    pub(crate) fn abort_registry(&self) -> Option<crate::inflight::AbortRegistry> {
        self.lead.as_ref().and_then(Lead::abort_registry)
    }
}

impl<F, B, E> Leading<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    pub(crate) fn poll_lead(&mut self, cx: &mut Context<'_>) -> Poll<LeaderResult<B, E>> {
        loop {
            match &mut self.stage {
                Stage::Calling(future) => {
                    let polled = catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx)));
                    let response = match polled {
                        Ok(Poll::Pending) => return Poll::Pending,
                        Ok(Poll::Ready(Ok(response))) => response,
                        Ok(Poll::Ready(Err(error))) => {
                            tracing::debug!("inner service failed; waiters get 500");
                            self.stage = Stage::Done;
                            self.publish(Outcome::Failed);
                            return Poll::Ready(Err(error));
                        }
                        Err(_) => return Poll::Ready(Ok(self.panicked())),
                    };
                    self.stage = Stage::Done;
                    if let Some(start) = self.start_buffering(response) {
                        return Poll::Ready(Ok(start));
                    }
                }
                Stage::Buffering(buffering) => {
                    let Buffering {
                        body,
                        chunks,
                        total,
                        trailers,
                        ..
                    } = &mut **buffering;
                    let polled =
                        catch_unwind(AssertUnwindSafe(|| Pin::new(&mut *body).poll_frame(cx)));
                    match polled {
                        Err(_) => return Poll::Ready(Ok(self.panicked())),
                        Ok(Poll::Pending) => return Poll::Pending,
                        Ok(Poll::Ready(Some(Ok(frame)))) => match frame.into_data() {
                            Ok(data) => {
                                if data.is_empty() {
                                    continue;
                                }
                                *total = total.saturating_add(data.len());
                                chunks.push_back(data);
                                if *total > self.max_body_bytes {
                                    return Poll::Ready(Ok(self.too_large()));
                                }
                            }
                            Err(frame) => {
                                if let Ok(t) = frame.into_trailers() {
                                    match trailers {
                                        None => *trailers = Some(t),
                                        Some(existing) => existing.extend(t),
                                    }
                                }
                            }
                        },
                        Ok(Poll::Ready(Some(Err(error)))) => {
                            return Poll::Ready(Ok(self.body_failed(error.into())));
                        }
                        Ok(Poll::Ready(None)) => return Poll::Ready(Ok(self.complete())),
                    }
                }
                // Polled after completion: answer rather than panic.
                Stage::Done => return Poll::Ready(Ok(Problem::LeaderFailed.response())),
            }
        }
    }

    /// Decides what the response head allows; `Some` is the caller's answer, `None` means "buffer the body".
    fn start_buffering(&mut self, response: Response<B>) -> Option<Response<DedupBody<B>>> {
        if response.headers().contains_key(header::SET_COOKIE) {
            tracing::debug!("response sets a cookie; waiters run their own request");
            self.publish(Outcome::Bypass);
            return Some(response.map(DedupBody::inner));
        }
        let Some(lead) = self.lead.take() else {
            return Some(response.map(DedupBody::inner));
        };
        // The common case, nobody joined: free the key and stream the body through untouched.
        let lead = match lead.finish_if_alone() {
            None => return Some(response.map(DedupBody::inner)),
            Some(lead) => lead,
        };
        self.lead = Some(lead);
        if !self.sharing.allows(response.headers()) {
            tracing::debug!(
                "answer is private or varies beyond the key; waiters run their own request"
            );
            self.publish(Outcome::Bypass);
            return Some(response.map(DedupBody::inner));
        }
        let (parts, body) = response.into_parts();
        if body.size_hint().lower() > self.max_body_bytes as u64 {
            tracing::debug!("response body above the buffer limit; waiters run their own request");
            self.publish(Outcome::Bypass);
            return Some(Response::from_parts(parts, DedupBody::inner(body)));
        }
        self.stage = Stage::Buffering(Box::new(Buffering {
            parts,
            body,
            chunks: VecDeque::new(),
            total: 0,
            trailers: None,
        }));
        None
    }

    fn take_buffering(&mut self) -> Option<Buffering<B>> {
        match std::mem::replace(&mut self.stage, Stage::Done) {
            Stage::Buffering(buffering) => Some(*buffering),
            other => {
                self.stage = other;
                None
            }
        }
    }

    fn too_large(&mut self) -> Response<DedupBody<B>> {
        tracing::debug!("response body above the buffer limit; waiters run their own request");
        self.publish(Outcome::Bypass);
        match self.take_buffering() {
            Some(b) => Response::from_parts(b.parts, DedupBody::replay(b.chunks, None, b.body)),
            None => Problem::LeaderFailed.response(),
        }
    }

    fn body_failed(&mut self, error: BoxError) -> Response<DedupBody<B>> {
        tracing::debug!("response body failed; waiters get 500");
        self.publish(Outcome::Failed);
        match self.take_buffering() {
            Some(b) => {
                Response::from_parts(b.parts, DedupBody::replay(b.chunks, Some(error), b.body))
            }
            None => Problem::LeaderFailed.response(),
        }
    }

    fn complete(&mut self) -> Response<DedupBody<B>> {
        let Some(Buffering {
            parts,
            mut chunks,
            trailers,
            ..
        }) = self.take_buffering()
        else {
            return Problem::LeaderFailed.response();
        };
        let data = match chunks.len() {
            0 => Bytes::new(),
            1 => chunks.pop_front().unwrap_or_default(),
            _ => {
                let mut joined = Vec::with_capacity(chunks.iter().map(Bytes::len).sum());
                for chunk in &chunks {
                    joined.extend_from_slice(chunk);
                }
                Bytes::from(joined)
            }
        };
        if let Some(lead) = self.lead.take() {
            lead.publish_with(|| {
                Outcome::Shared(Arc::new(SharedResponse {
                    status: parts.status,
                    version: parts.version,
                    headers: parts.headers.clone(),
                    body: data.clone(),
                    trailers: trailers.clone(),
                }))
            });
        }
        Response::from_parts(parts, DedupBody::full_with_trailers(data, trailers))
    }
}

impl<F, B, E> Drop for Leading<F, B, E> {
    fn drop(&mut self) {
        // Only the caller's copy decides; a detached copy (or finished work) just drops, and `Lead` fails
        // whoever still waits.
        let Some(detach) = self.detach.take() else {
            return;
        };
        let Some(lead) = self.lead.as_ref() else {
            return;
        };
        if matches!(self.stage, Stage::Done) {
            return;
        }
        match lead.caller_left() {
            // The key is already free; the inner future is dropped with `self`, outside any lock.
            Departure::Cancel => {}
            Departure::Detach => detach(self.take_detached()),
        }
    }
}

impl<F, B, E> Leading<F, B, E> {
    fn take_detached(&mut self) -> Self {
        Leading {
            stage: std::mem::replace(&mut self.stage, Stage::Done),
            lead: self.lead.take(),
            max_body_bytes: self.max_body_bytes,
            sharing: self.sharing.clone(),
            detach: None,
            _error: PhantomData,
        }
    }
}

/// A detached leader, driven to completion by its own task; its answer goes to the waiters only.
pub(crate) struct Detached<F, B, E>(pub(crate) Leading<F, B, E>);

impl<F, B, E> Future for Detached<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.poll_lead(cx).map(drop)
    }
}
