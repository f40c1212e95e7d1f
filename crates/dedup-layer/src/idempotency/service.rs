//! [`Idempotency`]: the `Idempotency-Key` service and its response future.
//!
//! Non-handled methods take an unboxed path; handled requests run a boxed future (body buffering and store I/O).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use pin_project_lite::pin_project;
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;
use tower_service::Service;

use super::header::parse_key;
use super::layer::{Config, OnStoreError};
use super::{IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED};
use crate::body::{BoxError, Buffered, DedupBody, buffer};
use crate::metric;
use crate::problem::Problem;
use crate::store::{Begin, Fingerprint, IdempotencyStore, LockToken, StoredResponse};

type Output<B, E> = Result<Response<DedupBody<B>>, E>;
type BoxFuture<B, E> = Pin<Box<dyn Future<Output = Output<B, E>> + Send>>;

/// The service made by [`IdempotencyLayer`](super::IdempotencyLayer).
pub struct Idempotency<S, St> {
    inner: S,
    config: Arc<Config<St>>,
}

impl<S, St> Idempotency<S, St> {
    pub(crate) fn new(inner: S, config: Arc<Config<St>>) -> Self {
        Idempotency { inner, config }
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

impl<S: Clone, St> Clone for Idempotency<S, St> {
    fn clone(&self) -> Self {
        Idempotency {
            inner: self.inner.clone(),
            config: self.config.clone(),
        }
    }
}

impl<S: fmt::Debug, St> fmt::Debug for Idempotency<S, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Idempotency")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

fn count(key: &'static metrics::Key) {
    metric::count(key);
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

fn fingerprint(parts: &http::request::Parts, body: &[u8]) -> Fingerprint {
    let mut hasher = Sha256::new();
    for field in [
        parts.method.as_str().as_bytes(),
        parts.uri.path().as_bytes(),
        parts.uri.query().unwrap_or("").as_bytes(),
    ] {
        hasher.update((field.len() as u64).to_be_bytes());
        hasher.update(field);
    }
    hasher.update(body);
    Fingerprint::from_bytes(hasher.finalize().into())
}

impl<S, St, B, ResBody> Service<Request<B>> for Idempotency<S, St>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    St: IdempotencyStore,
    B: Body<Data = Bytes> + From<Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
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
        let config = &self.config;
        if !config.methods.contains(req.method()) {
            return ResponseFuture::inner(self.inner.call(req));
        }
        let mut values = req.headers().get_all(IDEMPOTENCY_KEY).iter();
        let key = match (values.next(), values.next()) {
            (None, _) if config.required => {
                count(&metric::IDEM_MISSING);
                return ResponseFuture::problem(Problem::MissingKey);
            }
            (None, _) => return ResponseFuture::inner(self.inner.call(req)),
            (Some(value), None) => parse_key(value.as_bytes(), config.max_key_len),
            (Some(_), Some(_)) => None,
        };
        let Some(key) = key else {
            count(&metric::IDEM_INVALID);
            return ResponseFuture::problem(Problem::InvalidKey);
        };
        let (parts, body) = req.into_parts();
        let scope = Sha256::digest(config.scope.scope(&parts));
        let store_key = format!("{}:{}", hex(&scope), key);
        let clone = self.inner.clone();
        let service = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::boxed(Box::pin(process(
            self.config.clone(),
            service,
            store_key,
            parts,
            body,
        )))
    }
}

async fn process<S, St, B, ResBody>(
    config: Arc<Config<St>>,
    service: S,
    key: String,
    parts: http::request::Parts,
    body: B,
) -> Output<ResBody, S::Error>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    St: IdempotencyStore,
    B: Body<Data = Bytes> + From<Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Unpin + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let bytes = match Limited::new(body, config.max_request_bytes).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => {
            count(&metric::IDEM_INVALID);
            return Ok(if error.is::<LengthLimitError>() {
                Problem::BodyTooLarge.response()
            } else {
                Problem::BodyUnreadable.response()
            });
        }
    };
    let fingerprint = fingerprint(&parts, &bytes);
    // Armed before asking: if the store takes the lock but its answer is lost (timeout, error, this future
    // dropped), the lock is released rather than blocking the client's retries for the whole lock TTL.
    let mut lock = Lock {
        config: config.clone(),
        key,
        token: LockToken::random(),
        armed: true,
        held: false,
    };
    let begin = tokio::time::timeout(
        config.store_timeout,
        config
            .store
            .try_begin(&lock.key, &lock.token, &fingerprint, config.lock_ttl),
    )
    .await;
    let begin = match begin {
        Ok(Ok(begin)) => begin,
        Ok(Err(error)) => {
            drop(lock);
            return store_failed(&config, service, parts, bytes, &error).await;
        }
        Err(_) => {
            drop(lock);
            return store_failed(&config, service, parts, bytes, &"timed out").await;
        }
    };
    if begin != Begin::Started {
        // Someone else's lock or record: ours was never taken.
        lock.armed = false;
    }
    match begin {
        Begin::Started => {
            count(&metric::IDEM_NEW);
            lock.held = true;
            let (tx, rx) = oneshot::channel();
            let req = Request::from_parts(parts, B::from(bytes));
            // Detached so a disconnecting client does not abort a half-done write.
            tokio::spawn(run_first(service, req, lock, fingerprint, tx));
            match rx.await {
                Ok(result) => result,
                Err(_) => Ok(Problem::LeaderFailed.response()),
            }
        }
        Begin::InProgress => {
            count(&metric::IDEM_CONFLICT);
            Ok(Problem::KeyInUse.response())
        }
        Begin::Mismatch => {
            count(&metric::IDEM_MISMATCH);
            Ok(Problem::KeyMismatch.response())
        }
        Begin::Completed(stored) => {
            count(&metric::IDEM_REPLAYED);
            tracing::debug!("replaying a stored idempotent response");
            let mut response = stored.to_response();
            response
                .headers_mut()
                .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
            Ok(response)
        }
    }
}

async fn store_failed<S, St, B, ResBody>(
    config: &Config<St>,
    mut service: S,
    parts: http::request::Parts,
    bytes: Bytes,
    error: &(dyn fmt::Display + Sync),
) -> Output<ResBody, S::Error>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    B: From<Bytes>,
{
    count(&metric::IDEM_STORE_ERROR);
    match config.on_store_error {
        OnStoreError::Reject => {
            tracing::warn!(%error, "idempotency store unavailable; answering 503");
            Ok(Problem::StoreUnavailable.response())
        }
        OnStoreError::FailOpen => {
            tracing::warn!(%error, "idempotency store unavailable; running without protection");
            service
                .call(Request::from_parts(parts, B::from(bytes)))
                .await
                .map(|response| response.map(DedupBody::inner))
        }
    }
}

/// The lock of one key, taken or being taken; released on drop unless completed, so panics and aborts free the key.
struct Lock<St: IdempotencyStore> {
    config: Arc<Config<St>>,
    key: String,
    token: LockToken,
    armed: bool,
    /// The store confirmed the lock; before that a failed release is expected (the store may be down).
    held: bool,
}

impl<St: IdempotencyStore> Lock<St> {
    async fn complete(mut self, fingerprint: &Fingerprint, stored: &StoredResponse) {
        self.armed = false;
        let c = &self.config;
        let result = tokio::time::timeout(
            c.store_timeout,
            c.store
                .complete(&self.key, &self.token, fingerprint, stored, c.ttl),
        )
        .await;
        let failure = match result {
            Ok(Ok(())) => return,
            Ok(Err(error)) => error.to_string(),
            Err(_) => "timed out".to_owned(),
        };
        count(&metric::IDEM_STORE_ERROR);
        tracing::warn!(error = %failure, "could not store the idempotent response; retrying in the background");
        // The operation ran and its answer is on its way: if the lock simply expired, a retry
        // whose answer was lost would run the operation a second time. Until the lock's TTL is
        // over the lock answers retries with 409, and the record is stored as soon as the store
        // answers again.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(complete_later(
            self.config.clone(),
            std::mem::take(&mut self.key),
            self.token,
            *fingerprint,
            stored.clone(),
        ));
    }

    async fn release(mut self) {
        self.armed = false;
        release(
            self.config.clone(),
            std::mem::take(&mut self.key),
            self.token,
            self.held,
        )
        .await;
    }
}

/// Retries storing a completed record until the store takes it or the lock's TTL has passed
/// (then the lock is gone and `complete` can only fail), backing off from 50 ms to 1 s.
async fn complete_later<St: IdempotencyStore>(
    config: Arc<Config<St>>,
    key: String,
    token: LockToken,
    fingerprint: Fingerprint,
    stored: StoredResponse,
) {
    let deadline = tokio::time::Instant::now() + config.lock_ttl;
    let mut pause = Duration::from_millis(50);
    loop {
        tokio::time::sleep(pause).await;
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!("the idempotency store stayed unavailable; the lock will expire");
            return;
        }
        let attempt = tokio::time::timeout(
            config.store_timeout,
            config
                .store
                .complete(&key, &token, &fingerprint, &stored, config.ttl),
        )
        .await;
        if matches!(attempt, Ok(Ok(()))) {
            tracing::info!("stored the idempotent response after a store outage");
            return;
        }
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

/// Releases our lock. When the store does not answer, tries again with a backoff (250 ms up to
/// 2 s) until the lock's TTL, which bounds it anyway.
///
/// A lock whose `try_begin` went unanswered (`held` false) may still be taken after this
/// release ran: a store that was frozen runs the queued begin and release in any order once it
/// is back. So such a release is made once more a second after the first answered one, by which
/// time whatever was queued has run. Only our token's lock is ever deleted, so repeating is safe.
async fn release<St: IdempotencyStore>(
    config: Arc<Config<St>>,
    key: String,
    token: LockToken,
    held: bool,
) {
    let deadline = tokio::time::Instant::now() + config.lock_ttl;
    let mut answered_once = false;
    let mut pause = Duration::from_millis(250);
    loop {
        let result =
            tokio::time::timeout(config.store_timeout, config.store.release(&key, &token)).await;
        let wait = if matches!(result, Ok(Ok(()))) {
            if held || answered_once {
                return;
            }
            answered_once = true;
            Duration::from_secs(1)
        } else {
            let wait = pause;
            pause = (pause * 2).min(Duration::from_secs(2));
            wait
        };
        if tokio::time::Instant::now() + wait >= deadline {
            if held {
                count(&metric::IDEM_STORE_ERROR);
                tracing::warn!("could not release an idempotency lock; it will expire");
            }
            return;
        }
        tokio::time::sleep(wait).await;
    }
}

impl<St: IdempotencyStore> Drop for Lock<St> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if std::thread::panicking() {
            tracing::error!("inner service panicked; releasing the idempotency key");
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(release(
                self.config.clone(),
                std::mem::take(&mut self.key),
                self.token,
                self.held,
            ));
        }
    }
}

async fn run_first<S, St, B, ResBody>(
    mut service: S,
    req: Request<B>,
    lock: Lock<St>,
    fingerprint: Fingerprint,
    tx: oneshot::Sender<Output<ResBody, S::Error>>,
) where
    S: Service<Request<B>, Response = Response<ResBody>>,
    St: IdempotencyStore,
    ResBody: Body<Data = Bytes> + Unpin,
    ResBody::Error: Into<BoxError>,
{
    let response = match service.call(req).await {
        Ok(response) => response,
        Err(error) => {
            lock.release().await;
            let _ = tx.send(Err(error));
            return;
        }
    };
    if response.status().is_server_error() {
        tracing::debug!(status = %response.status(), "not storing a server error; key released");
        lock.release().await;
        let _ = tx.send(Ok(response.map(DedupBody::inner)));
        return;
    }
    let max = lock.config.max_response_bytes;
    let (parts, body) = response.into_parts();
    match buffer(body, max).await {
        Buffered::Complete { data, trailers } => {
            let stored = StoredResponse::new(parts.status, parts.headers.clone(), data.clone());
            lock.complete(&fingerprint, &stored).await;
            let body = DedupBody::full_with_trailers(data, trailers);
            let _ = tx.send(Ok(Response::from_parts(parts, body)));
        }
        Buffered::TooLarge { chunks, rest } => {
            let mut headers = parts.headers.clone();
            headers.remove(http::header::CONTENT_LENGTH);
            let stored = StoredResponse::new(parts.status, headers, Bytes::new());
            lock.complete(&fingerprint, &stored).await;
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
            lock.release().await;
            let _ = tx.send(Ok(Response::from_parts(
                parts,
                DedupBody::replay(chunks, Some(error), rest),
            )));
        }
    }
}

pin_project! {
    /// Response future of [`Idempotency`].
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
        Problem {
            problem: Problem,
        },
        Boxed {
            future: BoxFuture<B, E>,
        },
    }
}

impl<F, B, E> ResponseFuture<F, B, E> {
    fn inner(future: F) -> Self {
        ResponseFuture {
            state: State::Inner { future },
        }
    }

    fn problem(problem: Problem) -> Self {
        ResponseFuture {
            state: State::Problem { problem },
        }
    }

    fn boxed(future: BoxFuture<B, E>) -> Self {
        ResponseFuture {
            state: State::Boxed { future },
        }
    }
}

impl<F, B, E> fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Inner { .. } => "Inner",
            State::Problem { .. } => "Problem",
            State::Boxed { .. } => "Boxed",
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
    type Output = Output<B, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Inner { future } => {
                let response = ready!(future.poll(cx))?;
                Poll::Ready(Ok(response.map(DedupBody::inner)))
            }
            StateProj::Problem { problem } => Poll::Ready(Ok(problem.response())),
            StateProj::Boxed { future } => future.as_mut().poll(cx),
        }
    }
}
