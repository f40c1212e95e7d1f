//! [`Cache`], the service: lookups, hits, forwarding, storing, revalidation and the stale-*
//! fallbacks.

use std::collections::VecDeque;
use std::fmt;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode, Uri};
use http_body::{Body, Frame};
use tokio::time::Instant;
use tower_service::Service;

use crate::body::CacheBody;
use crate::collapse::{Claim, CollapseDone, FillGuard};
use crate::directives::RequestDirectives;
use crate::fields::{Vary, normalized_value, parse_vary};
use crate::future::ResponseFuture;
use crate::key::authority_of;
use crate::layer::Shared;
use crate::metrics::{Outcome, record_request};
use crate::policy::{
    self, CacheMode, EntryState, NotStorable, Usability, check_storable, effective_directives,
    not_modified, usability,
};
use crate::store::{InFlightGuard, StoredResponse};
use crate::tags;

/// The `Cache-Status` field name (RFC 9211).
pub const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// `Surrogate-Control` (W3C Edge Architecture 1.0): addressed to surrogates, removed before
/// clients see it when the cache obeys it.
const SURROGATE_CONTROL: HeaderName = HeaderName::from_static("surrogate-control");

/// Service that answers from its store when it may and otherwise calls the inner service.
///
/// Made by [`CacheLayer`](crate::CacheLayer). The error type is the inner service's; the
/// response body is [`CacheBody`] over the inner body.
pub struct Cache<S> {
    pub(crate) inner: S,
    pub(crate) shared: Arc<Shared>,
}

impl<S: Clone> Clone for Cache<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for Cache<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("inner", &self.inner)
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl<S> Cache<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the cache, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// Why the request went to the inner service (`fwd` in RFC 9211).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fwd {
    Bypass,
    Method,
    UriMiss,
    VaryMiss,
    Request,
    Stale,
}

impl Fwd {
    fn as_str(self) -> &'static str {
        match self {
            Self::Bypass => "bypass",
            Self::Method => "method",
            Self::UriMiss => "uri-miss",
            Self::VaryMiss => "vary-miss",
            Self::Request => "request",
            Self::Stale => "stale",
        }
    }
}

/// The parameters of one `Cache-Status` member.
#[derive(Debug, Default, Clone, Copy)]
struct StatusParams {
    hit: bool,
    fwd: Option<Fwd>,
    fwd_status: Option<u16>,
    stored: bool,
    ttl: Option<i64>,
    detail: Option<&'static str>,
}

fn cache_status_value(name: &str, p: &StatusParams) -> Option<HeaderValue> {
    use std::io::Write;
    // Formatted on the stack and copied once into the header value.
    let mut buf = [0u8; 256];
    let mut w = std::io::Cursor::new(&mut buf[..]);
    let _ = w.write_all(name.as_bytes());
    if p.hit {
        let _ = w.write_all(b"; hit");
    }
    if let Some(f) = p.fwd {
        let _ = write!(w, "; fwd={}", f.as_str());
    }
    if let Some(st) = p.fwd_status {
        let _ = write!(w, "; fwd-status={st}");
    }
    if p.stored {
        let _ = w.write_all(b"; stored");
    }
    if let Some(t) = p.ttl {
        let _ = write!(w, "; ttl={t}");
    }
    if let Some(d) = p.detail {
        let _ = write!(w, "; detail={d}");
    }
    let len = usize::try_from(w.position()).unwrap_or(0);
    HeaderValue::from_bytes(&buf[..len]).ok()
}

/// `Age` values below 100 s come from static strings, so most hits allocate nothing for it.
fn age_value(secs: u64) -> HeaderValue {
    const AGES: [&str; 100] = [
        "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
        "17", "18", "19", "20", "21", "22", "23", "24", "25", "26", "27", "28", "29", "30", "31",
        "32", "33", "34", "35", "36", "37", "38", "39", "40", "41", "42", "43", "44", "45", "46",
        "47", "48", "49", "50", "51", "52", "53", "54", "55", "56", "57", "58", "59", "60", "61",
        "62", "63", "64", "65", "66", "67", "68", "69", "70", "71", "72", "73", "74", "75", "76",
        "77", "78", "79", "80", "81", "82", "83", "84", "85", "86", "87", "88", "89", "90", "91",
        "92", "93", "94", "95", "96", "97", "98", "99",
    ];
    match usize::try_from(secs).ok().and_then(|i| AGES.get(i)) {
        Some(s) => HeaderValue::from_static(s),
        None => HeaderValue::from(secs),
    }
}

fn ttl_of(state: &EntryState) -> i64 {
    let l = i64::try_from(state.lifetime.as_secs()).unwrap_or(i64::MAX);
    let a = i64::try_from(state.current_age.as_secs()).unwrap_or(i64::MAX);
    l.saturating_sub(a)
}

impl<S, B, ResBody> Service<Request<B>> for Cache<S>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Send + 'static,
{
    type Response = Response<CacheBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let shared = self.shared.clone();
        let (parts, body) = req.into_parts();
        let head = parts.method == Method::HEAD;
        if parts.method != Method::GET && !head {
            let inner = self.take_ready();
            return ResponseFuture::boxed(other_method(shared, inner, parts, body));
        }
        // A single byte range of a GET may be cut from a stored complete response; anything
        // else ranged goes to the origin untouched and nothing is stored from it.
        let range = if parts.headers.contains_key(header::RANGE) {
            match (!head)
                .then(|| crate::fields::parse_byte_range(&parts.headers))
                .flatten()
            {
                Some(r) => Some(r),
                None => return self.bypass(shared, parts, body, "range"),
            }
        } else {
            None
        };
        // Preconditions other than the validators the cache evaluates itself go to the origin.
        if parts.headers.contains_key(header::IF_MATCH)
            || parts.headers.contains_key(header::IF_UNMODIFIED_SINCE)
            || parts.headers.contains_key(header::IF_RANGE)
        {
            return self.bypass(shared, parts, body, "precondition");
        }
        let mut key = crate::key::take_buffer();
        if !shared.config.key.key_into(&parts, &mut key) {
            return self.bypass(shared, parts, body, "key");
        }
        let req_dirs = if parts.headers.contains_key(header::CACHE_CONTROL)
            || parts.headers.contains_key(header::PRAGMA)
        {
            RequestDirectives::from_headers(&parts.headers)
        } else {
            RequestDirectives::default()
        };
        let now = shared.clock.now();

        let (variant, miss) = lookup(&shared, &key, &parts.headers, now);
        if let Some(range) = range {
            return match variant {
                Some(v) if is_servable(&usability(&req_dirs, &v.state(&shared.clock, now))) => {
                    let state = v.state(&shared.clock, now);
                    match ranged_hit(&shared, &key, &v, &state, &parts.headers, range) {
                        Some(resp) => {
                            crate::key::recycle_buffer(key);
                            resp
                        }
                        None => self.bypass(shared, parts, body, "range"),
                    }
                }
                _ if req_dirs.only_if_cached => gateway_timeout(&shared, &key, "only-if-cached"),
                _ => self.bypass(shared, parts, body, "range"),
            };
        }
        let Some(v) = variant else {
            let mut parts = parts;
            let mut fill = None;
            if let Some(collapser) = &shared.collapser
                && collapses(&parts, &req_dirs)
            {
                match collapser.claim(&key, now) {
                    Claim::Leader(guard) => {
                        // A leader that goes through the lower tiers comes back here; it must not
                        // wait on its own fill.
                        parts.extensions.insert(CollapseDone);
                        fill = Some(guard);
                    }
                    // A request that will not take a response it did not see validated gains
                    // nothing from waiting: it goes to the origin at once.
                    Claim::Waiter(_) if req_dirs.no_cache || req_dirs.max_age == Some(0) => {}
                    Claim::Waiter(wait_for) => {
                        return self.wait_for_fill(shared, parts, body, key, wait_for);
                    }
                    Claim::Alone => {}
                }
            }
            if crate::tiered::wants_lower(&shared, &parts) {
                let inner = self.take_ready();
                let lead =
                    crate::tiered::through_lower(shared.clone(), inner, parts, body, key.clone());
                return lead_fill(shared, key, fill, lead);
            }
            if req_dirs.only_if_cached {
                return gateway_timeout(&shared, &key, "only-if-cached");
            }
            let ctx = FetchCtx {
                key: key.clone(),
                stale: None,
                fwd: miss,
                req_dirs,
                background: false,
            };
            let inner = self.take_ready();
            let lead = fetch(shared.clone(), inner, parts, body, ctx);
            return lead_fill(shared, key, fill, lead);
        };

        let state = v.state(&shared.clock, now);
        // Every answer from the stored response is a hit whose Cache-Status carries the remaining ttl.
        let serve_stored = |outcome: Outcome, detail: Option<&'static str>| {
            let params = StatusParams {
                hit: true,
                ttl: Some(ttl_of(&state)),
                detail,
                ..StatusParams::default()
            };
            hit(
                &shared,
                &key,
                &v,
                &state,
                &parts.headers,
                head,
                outcome,
                params,
            )
        };
        match usability(&req_dirs, &state) {
            Usability::Fresh => {
                if let Some(beta) = shared.config.early_refresh_beta
                    && should_refresh_early(&v, &state, beta)
                {
                    tracing::debug!(key = %key, "early refresh");
                    self.spawn_refresh(&shared, parts.clone(), body, key.clone(), v.clone());
                }
                let resp = serve_stored(Outcome::Hit, None);
                crate::key::recycle_buffer(key);
                resp
            }
            Usability::StaleAllowed => {
                let resp = serve_stored(Outcome::Stale, Some("max-stale"));
                crate::key::recycle_buffer(key);
                resp
            }
            Usability::RequestForbids => {
                if req_dirs.only_if_cached {
                    return gateway_timeout(&shared, &key, "only-if-cached");
                }
                let ctx = FetchCtx {
                    key,
                    stale: Some(v),
                    fwd: Fwd::Request,
                    req_dirs,
                    background: false,
                };
                let inner = self.take_ready();
                ResponseFuture::boxed(fetch(shared, inner, parts, body, ctx))
            }
            Usability::Stale => {
                let swr = !state.no_cache
                    && !state.must_revalidate
                    && !req_dirs.no_cache
                    && req_dirs.max_age.is_none()
                    && req_dirs.min_fresh.is_none()
                    && !v.stale_while_revalidate.is_zero()
                    && state.staleness() <= v.stale_while_revalidate;
                if swr {
                    tracing::debug!(key = %key, "stale-while-revalidate");
                    let resp = serve_stored(Outcome::Stale, Some("stale-while-revalidate"));
                    self.spawn_refresh(&shared, parts, body, key, v);
                    return resp;
                }
                if req_dirs.only_if_cached {
                    return gateway_timeout(&shared, &key, "only-if-cached");
                }
                let ctx = FetchCtx {
                    key,
                    stale: Some(v),
                    fwd: Fwd::Stale,
                    req_dirs,
                    background: false,
                };
                let inner = self.take_ready();
                ResponseFuture::boxed(fetch(shared, inner, parts, body, ctx))
            }
        }
    }
}

impl<S> Cache<S> {
    /// The ready service, leaving a fresh clone in its place (tower's `mem::replace` idiom).
    fn take_ready(&mut self) -> S
    where
        S: Clone,
    {
        let clone = self.inner.clone();
        std::mem::replace(&mut self.inner, clone)
    }

    fn bypass<B, ResBody>(
        &mut self,
        shared: Arc<Shared>,
        parts: Parts,
        body: B,
        detail: &'static str,
    ) -> ResponseFuture<ResBody, S::Error>
    where
        S: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        B: Send + 'static,
        ResBody: Body<Data = Bytes> + Send + 'static,
    {
        let mut inner = self.take_ready();
        ResponseFuture::boxed(async move {
            let resp = inner.call(Request::from_parts(parts, body)).await?;
            record_request(Outcome::Bypass);
            tracing::debug!(detail, "cache bypass");
            let params = StatusParams {
                fwd: Some(Fwd::Bypass),
                fwd_status: Some(resp.status().as_u16()),
                detail: Some(detail),
                ..StatusParams::default()
            };
            Ok(passthrough(&shared, resp, &params))
        })
    }

    /// Starts one background refresh of `key` unless one is already running.
    fn spawn_refresh<B, ResBody>(
        &mut self,
        shared: &Arc<Shared>,
        mut parts: Parts,
        body: B,
        key: String,
        v: Arc<StoredResponse>,
    ) where
        S: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Send + 'static,
        B: Send + 'static,
        ResBody: Body<Data = Bytes> + Send + 'static,
        ResBody::Error: Send + 'static,
    {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Some(guard) = shared.in_flight.claim(&key) else {
            tracing::debug!(key = %key, "refresh already in flight");
            return;
        };
        parts.method = Method::GET;
        let mut inner = self.inner.clone();
        let shared = shared.clone();
        let limit = shared.config.refresh_timeout;
        runtime.spawn(async move {
            let _guard: InFlightGuard = guard;
            let refresh = async move {
                if poll_fn(|cx| inner.poll_ready(cx)).await.is_err() {
                    return;
                }
                let ctx = FetchCtx {
                    key,
                    stale: Some(v),
                    fwd: Fwd::Stale,
                    req_dirs: RequestDirectives::default(),
                    background: true,
                };
                if let Ok(resp) = fetch(shared, inner, parts, body, ctx).await {
                    drop(resp);
                }
            };
            if tokio::time::timeout(limit, refresh).await.is_err() {
                tracing::debug!("background refresh timed out");
            }
        });
    }
}

/// Whether a miss takes part in collapsing: a `GET` that may use a stored response and has not
/// taken part already. `HEAD` misses are not stored, `no-store` requests store nothing, and the
/// client's own validators may draw a `304` that is not stored either, so none of them makes
/// others wait or waits itself.
fn collapses(parts: &Parts, req: &RequestDirectives) -> bool {
    parts.method == Method::GET
        && !req.no_store
        && !req.only_if_cached
        && !parts.headers.contains_key(header::IF_NONE_MATCH)
        && !parts.headers.contains_key(header::IF_MODIFIED_SINCE)
        && parts.extensions.get::<CollapseDone>().is_none()
        && tokio::runtime::Handle::try_current().is_ok()
}

/// Runs a miss; when it leads a collapsed fill, releases the waiters once it has answered
/// (after storing what it stores), remembering the key as hit-for-miss when nothing was stored.
fn lead_fill<ResBody, E>(
    shared: Arc<Shared>,
    key: String,
    fill: Option<FillGuard>,
    lead: impl std::future::Future<Output = Result<Response<CacheBody<ResBody>>, E>> + Send + 'static,
) -> ResponseFuture<ResBody, E>
where
    ResBody: Body + Send + 'static,
{
    let Some(fill) = fill else {
        return ResponseFuture::boxed(lead);
    };
    ResponseFuture::boxed(async move {
        let result = lead.await;
        let stored = shared.l1.lookup(&key).is_some();
        let not_error = result.as_ref().is_ok_and(|r| r.status().as_u16() < 500);
        fill.finish(stored, not_error, shared.clock.now());
        result
    })
}

impl<S> Cache<S> {
    /// A collapsed miss: waits for the leader of `key`, then runs again as a request that will
    /// not wait twice; a hit when the leader stored what this request may use, otherwise its
    /// own trip to the origin. Past the wait it is answered `504`.
    fn wait_for_fill<B, ResBody>(
        &mut self,
        shared: Arc<Shared>,
        mut parts: Parts,
        body: B,
        key: String,
        fill: Arc<crate::collapse::Fill>,
    ) -> ResponseFuture<ResBody, S::Error>
    where
        S: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Send + 'static,
        B: Send + 'static,
        ResBody: Body<Data = Bytes> + Send + 'static,
        ResBody::Error: Send + 'static,
    {
        // Readiness stays with this service; the waiter readies its own clone if it runs.
        let mut again = Cache {
            inner: self.inner.clone(),
            shared: shared.clone(),
        };
        let wait = shared
            .config
            .collapse_wait
            .unwrap_or(Duration::from_secs(30));
        tracing::debug!(key = %key, "miss collapsed onto one in flight");
        ResponseFuture::boxed(async move {
            if tokio::time::timeout(wait, fill.wait()).await.is_err() {
                return gateway_timeout::<ResBody, S::Error>(&shared, &key, "collapse-timeout")
                    .await;
            }
            parts.extensions.insert(CollapseDone);
            poll_fn(|cx| again.poll_ready(cx)).await?;
            again.call(Request::from_parts(parts, body)).await
        })
    }
}

/// Finds the stored variant matching the request, or says which kind of miss it is.
fn lookup(
    shared: &Shared,
    key: &str,
    headers: &HeaderMap,
    now: Instant,
) -> (Option<Arc<StoredResponse>>, Fwd) {
    let Some(entry) = shared.l1.lookup(key) else {
        return (None, Fwd::UriMiss);
    };
    let cap = shared.l1.ttl_cap;
    let mut any_live = false;
    for v in entry.variants.iter() {
        if now.saturating_duration_since(v.response_instant) > cap {
            continue;
        }
        any_live = true;
        if v.matches(headers) {
            return (Some(v.clone()), Fwd::UriMiss);
        }
    }
    if any_live {
        (None, Fwd::VaryMiss)
    } else {
        (None, Fwd::UriMiss)
    }
}

fn should_refresh_early(v: &StoredResponse, state: &EntryState, beta: f64) -> bool {
    let remaining = state
        .lifetime
        .saturating_sub(state.current_age)
        .as_secs_f64();
    let delta = v.fetch_time.as_secs_f64().max(0.001);
    let r = fastrand::f64().max(f64::MIN_POSITIVE);
    delta * beta * -r.ln() >= remaining
}

#[allow(clippy::too_many_arguments)]
fn hit<ResBody: Body, E>(
    shared: &Shared,
    key: &str,
    v: &StoredResponse,
    state: &EntryState,
    request: &HeaderMap,
    head: bool,
    outcome: Outcome,
    params: StatusParams,
) -> ResponseFuture<ResBody, E> {
    record_request(outcome);
    tracing::debug!(key, outcome = outcome.as_str(), "cache answer");
    ResponseFuture::ready(from_stored(shared, v, state, request, head, &params))
}

/// Builds a response from a stored one: `Age`, `Cache-Status`, and a 304 when the client's
/// own conditional request matches.
fn from_stored<ResBody: Body>(
    shared: &Shared,
    v: &StoredResponse,
    state: &EntryState,
    request: &HeaderMap,
    head: bool,
    params: &StatusParams,
) -> Response<CacheBody<ResBody>> {
    let age = state.current_age.as_secs();
    // Plain fresh hits in the same second send the same fields: reuse the last map built.
    let reusable = params.hit && params.fwd.is_none() && params.detail.is_none();
    let snapshot = if reusable {
        v.hit_headers.try_lock().ok().and_then(|g| {
            g.as_ref()
                .filter(|(a, _)| *a == age)
                .map(|(_, h)| h.clone())
        })
    } else {
        None
    };
    let mut headers = match snapshot {
        Some(h) => h,
        None => {
            // A stored response can hold as many fields as a header map allows, so nothing here may assume room
            // for two more: the fallible calls keep an absurdly large response from panicking the hit path.
            let mut headers = v.headers.clone();
            if shared.config.strip_surrogate {
                headers.remove(SURROGATE_CONTROL);
            }
            let _ = headers.try_insert(header::AGE, age_value(age));
            if shared.config.cache_status
                && let Some(value) = cache_status_value(&shared.config.name, params)
            {
                let _ = headers.try_append(CACHE_STATUS, value);
            }
            if reusable && let Ok(mut g) = v.hit_headers.try_lock() {
                *g = Some((age, headers.clone()));
            }
            headers
        }
    };
    let conditional = (v.status == StatusCode::OK)
        && (request.contains_key(header::IF_NONE_MATCH)
            || request.contains_key(header::IF_MODIFIED_SINCE))
        && not_modified(request, v.etag.as_ref(), v.modified_secs);
    let (status, body) = if conditional {
        let names: Vec<HeaderName> = headers
            .keys()
            .filter(|n| policy::omitted_from_304(n))
            .cloned()
            .collect();
        for n in names {
            headers.remove(n);
        }
        (StatusCode::NOT_MODIFIED, None)
    } else if head {
        (v.status, None)
    } else {
        (v.status, Some(v.body.clone()))
    };
    let mut resp = Response::new(CacheBody::full(body));
    *resp.status_mut() = status;
    *resp.version_mut() = v.version;
    *resp.headers_mut() = headers;
    resp
}

/// Whether a stored response may answer the request without contacting the origin.
fn is_servable(u: &Usability) -> bool {
    matches!(u, Usability::Fresh | Usability::StaleAllowed)
}

/// A `206` cut from a stored complete `200` for one byte range (RFC 9110 §14.2, §15.3.7), or
/// the `304` the client's own conditions call for. `None` when the stored response is not a
/// `200` or the range is not satisfiable by it: the origin answers those.
fn ranged_hit<ResBody: Body, E>(
    shared: &Shared,
    key: &str,
    v: &StoredResponse,
    state: &EntryState,
    request: &HeaderMap,
    range: crate::fields::ByteRange,
) -> Option<ResponseFuture<ResBody, E>> {
    if v.status != StatusCode::OK {
        return None;
    }
    let len = v.body.len() as u64;
    let (first, last) = range.resolve(len)?;
    let params = StatusParams {
        hit: true,
        ttl: Some(ttl_of(state)),
        ..StatusParams::default()
    };
    let mut resp = from_stored::<ResBody>(shared, v, state, request, true, &params);
    if resp.status() == StatusCode::OK {
        let start = usize::try_from(first).ok()?;
        let end = usize::try_from(last).ok()?;
        let part = v.body.slice(start..=end);
        let content_range = HeaderValue::from_str(&format!("bytes {first}-{last}/{len}")).ok()?;
        let headers = resp.headers_mut();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(part.len()));
        headers.insert(header::CONTENT_RANGE, content_range);
        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
        *resp.body_mut() = CacheBody::full(Some(part));
    }
    record_request(Outcome::Hit);
    tracing::debug!(key, first, last, "range answered from cache");
    Some(ResponseFuture::ready(resp))
}

fn gateway_timeout<ResBody: Body, E>(
    shared: &Shared,
    key: &str,
    detail: &'static str,
) -> ResponseFuture<ResBody, E> {
    record_request(Outcome::Miss);
    tracing::debug!(key, detail, "answered 504 without the origin");
    let mut resp = Response::new(CacheBody::empty());
    *resp.status_mut() = StatusCode::GATEWAY_TIMEOUT;
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if shared.config.cache_status
        && let Some(v) = cache_status_value(
            &shared.config.name,
            &StatusParams {
                detail: Some(detail),
                ..StatusParams::default()
            },
        )
    {
        resp.headers_mut().append(CACHE_STATUS, v);
    }
    ResponseFuture::ready(resp)
}

/// The inner response with its own body, plus `Cache-Status` and without the tag field.
fn passthrough<ResBody: Body>(
    shared: &Shared,
    resp: Response<ResBody>,
    params: &StatusParams,
) -> Response<CacheBody<ResBody>> {
    let mut resp = resp.map(CacheBody::inner);
    decorate(shared, resp.headers_mut(), params);
    resp
}

fn decorate(shared: &Shared, headers: &mut HeaderMap, params: &StatusParams) {
    if shared.config.strip_tag_header
        && let Some(t) = &shared.config.tag_header
    {
        headers.remove(t);
    }
    if shared.config.strip_surrogate {
        headers.remove(SURROGATE_CONTROL);
    }
    if shared.config.cache_status
        && let Some(v) = cache_status_value(&shared.config.name, params)
    {
        headers.append(CACHE_STATUS, v);
    }
}

struct FetchCtx {
    key: String,
    stale: Option<Arc<StoredResponse>>,
    fwd: Fwd,
    req_dirs: RequestDirectives,
    background: bool,
}

/// Which rule lets a stored response answer for a failed origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StaleOnError {
    /// The response's or the request's `stale-if-error` window (RFC 5861 §4).
    StaleIfError,
    /// The layer's `serve_stale_on_error` window.
    Configured,
}

/// Whether `v` may be served because the origin failed: within `stale-if-error` (RFC 5861
/// §4), or within the layer's `serve_stale_on_error` window unless a directive forbids
/// serving stale (RFC 9111 §4.2.4).
fn stale_if_error_allows(
    shared: &Shared,
    ctx: &FetchCtx,
    now: Instant,
) -> Option<(Arc<StoredResponse>, EntryState, StaleOnError)> {
    let v = ctx.stale.as_ref()?;
    let state = v.state(&shared.clock, now);
    if state.must_revalidate || state.no_cache {
        return None;
    }
    let window = match (ctx.req_dirs.stale_if_error, v.stale_if_error.is_zero()) {
        (Some(r), _) => Duration::from_secs(r).max(v.stale_if_error),
        (None, false) => v.stale_if_error,
        (None, true) => Duration::ZERO,
    };
    let staleness = state.staleness();
    if !window.is_zero() && staleness <= window {
        return Some((v.clone(), state, StaleOnError::StaleIfError));
    }
    // The response's own stale-if-error is the origin's word on the matter and replaces the
    // layer's window.
    let configured = shared.config.stale_on_error;
    if !configured.is_zero()
        && v.stale_if_error.is_zero()
        && !ctx.req_dirs.no_cache
        && staleness <= configured
    {
        return Some((v.clone(), state, StaleOnError::Configured));
    }
    None
}

#[allow(clippy::too_many_arguments)]
fn serve_stale_on_error<ResBody: Body>(
    shared: &Shared,
    ctx: &FetchCtx,
    v: &StoredResponse,
    state: &EntryState,
    rule: StaleOnError,
    request: &HeaderMap,
    head: bool,
    fwd_status: Option<u16>,
) -> Response<CacheBody<ResBody>> {
    record_request(Outcome::Stale);
    let detail = match rule {
        StaleOnError::StaleIfError => "stale-if-error",
        StaleOnError::Configured => "stale-on-error",
    };
    tracing::debug!(key = %ctx.key, ?fwd_status, detail, "stale served for a failed origin");
    let params = StatusParams {
        fwd: Some(Fwd::Stale),
        fwd_status,
        ttl: Some(ttl_of(state)),
        detail: Some(detail),
        ..StatusParams::default()
    };
    from_stored(shared, v, state, request, head, &params)
}

/// Calls the inner service for a GET or HEAD, revalidating `ctx.stale` when it has
/// validators, and stores what may be stored.
async fn fetch<S, B, ResBody>(
    shared: Arc<Shared>,
    mut inner: S,
    parts: Parts,
    body: B,
    ctx: FetchCtx,
) -> Result<Response<CacheBody<ResBody>>, S::Error>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    B: 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
{
    let client = parts.clone();
    let head = client.method == Method::HEAD;
    let mut parts = parts;
    let mut sent_validators = false;
    if let Some(v) = &ctx.stale
        && v.has_validator()
        && !head
    {
        parts.headers.remove(header::IF_NONE_MATCH);
        parts.headers.remove(header::IF_MODIFIED_SINCE);
        if let Some(e) = &v.etag {
            parts.headers.insert(header::IF_NONE_MATCH, e.clone());
        }
        if let Some(lm) = &v.last_modified {
            parts.headers.insert(header::IF_MODIFIED_SINCE, lm.clone());
        }
        sent_validators = true;
    }
    let mut request_instant = shared.clock.now();
    let result = inner.call(Request::from_parts(parts, body)).await;
    let mut response_instant = shared.clock.now();

    let mut resp = match result {
        Ok(resp) => resp,
        Err(e) => {
            if let Some((v, state, rule)) = stale_if_error_allows(&shared, &ctx, response_instant) {
                return Ok(serve_stale_on_error(
                    &shared,
                    &ctx,
                    &v,
                    &state,
                    rule,
                    &client.headers,
                    head,
                    None,
                ));
            }
            return Err(e);
        }
    };
    let mut status = resp.status();
    if matches!(status.as_u16(), 500 | 502 | 503 | 504)
        && let Some((v, state, rule)) = stale_if_error_allows(&shared, &ctx, response_instant)
    {
        return Ok(serve_stale_on_error(
            &shared,
            &ctx,
            &v,
            &state,
            rule,
            &client.headers,
            head,
            Some(status.as_u16()),
        ));
    }

    if status == StatusCode::NOT_MODIFIED
        && sent_validators
        && let Some(v) = &ctx.stale
    {
        if policy::not_modified_matches(v.etag.as_ref(), resp.headers()) {
            return Ok(revalidated(
                &shared,
                &ctx,
                &client,
                v,
                resp,
                request_instant,
                response_instant,
            ));
        }
        // The 304 names another representation (RFC 9111 §4.3.4): nothing stored may be
        // updated with it, and it answers validators the client never sent. Ask again with the
        // client's own request.
        shared.l1.invalidate(&ctx.key);
        tracing::debug!(key = %ctx.key, "304 with a different validator; asking again");
        let Some(body) = empty_body::<B>() else {
            return Ok(answer_despite_mismatch(
                &shared,
                &ctx,
                &client,
                v,
                response_instant,
            ));
        };
        drop(resp);
        poll_fn(|cx| inner.poll_ready(cx)).await?;
        request_instant = shared.clock.now();
        resp = inner
            .call(Request::from_parts(client.clone(), body))
            .await?;
        response_instant = shared.clock.now();
        status = resp.status();
        sent_validators = false;
    }

    let fwd_status = Some(status.as_u16());
    let fail = |reason: NotStorable, resp: Response<ResBody>| {
        record_request(Outcome::Uncacheable);
        tracing::debug!(key = %ctx.key, reason = reason.as_str(), "response not stored");
        let params = StatusParams {
            fwd: Some(ctx.fwd),
            fwd_status,
            detail: Some(reason.as_str()),
            ..StatusParams::default()
        };
        passthrough(&shared, resp, &params)
    };
    if head {
        // A 200 to HEAD freshens the stored GET it describes, and makes any other stale
        // (RFC 9111 §4.3.5).
        if status == StatusCode::OK
            && let Some(v) = &ctx.stale
        {
            if policy::head_matches(
                v.etag.as_ref(),
                v.last_modified.as_ref(),
                v.body.len(),
                resp.headers(),
            ) {
                return Ok(revalidated(
                    &shared,
                    &ctx,
                    &client,
                    v,
                    resp,
                    request_instant,
                    response_instant,
                ));
            }
            shared.l1.invalidate(&ctx.key);
        }
        return Ok(fail(NotStorable::Method, resp));
    }
    let (dirs, targeted) = effective_directives(
        resp.headers(),
        &shared.config.targets,
        shared.config.surrogate_device.as_deref(),
    );
    if let Err(reason) = check_storable(
        shared.config.mode,
        &client.method,
        &ctx.req_dirs,
        client.headers.contains_key(header::AUTHORIZATION),
        status,
        resp.headers(),
        &dirs,
        targeted,
    ) {
        return Ok(fail(reason, resp));
    }
    let vary = match parse_vary(resp.headers()) {
        Vary::None => Vec::new(),
        Vary::Fields(names) => names,
        Vary::Star => return Ok(fail(NotStorable::VaryStar, resp)),
        Vary::Unusable => return Ok(fail(NotStorable::VaryUnusable, resp)),
    };
    // A response that is stale on arrival and has no validator could never be used again.
    let has_validator = resp.headers().contains_key(header::ETAG)
        || resp.headers().contains_key(header::LAST_MODIFIED);
    if !has_validator
        && dirs.stale_while_revalidate.is_none()
        && dirs.stale_if_error.is_none()
        && policy::freshness_lifetime(
            shared.config.mode,
            status,
            resp.headers(),
            &dirs,
            targeted,
            shared.clock.unix(response_instant),
            &shared.config.heuristic,
        )
        .is_zero()
    {
        return Ok(fail(NotStorable::NoFreshness, resp));
    }
    let max = shared.config.max_body_bytes;
    let declared = resp
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) || resp.body().size_hint().lower() > max as u64 {
        return Ok(fail(NotStorable::TooLarge, resp));
    }

    let (resp_parts, body) = resp.into_parts();
    let bytes = match buffer(body, max).await {
        Buffered::Complete(bytes) => bytes,
        Buffered::Partial {
            frames,
            rest,
            error,
            reason,
        } => {
            // The origin broke off the body before anything reached the client: a stored
            // response the stale rules allow is a better answer than a truncated one.
            if error.is_some()
                && let Some((v, state, rule)) =
                    stale_if_error_allows(&shared, &ctx, shared.clock.now())
            {
                return Ok(serve_stale_on_error(
                    &shared,
                    &ctx,
                    &v,
                    &state,
                    rule,
                    &client.headers,
                    head,
                    fwd_status,
                ));
            }
            record_request(Outcome::Uncacheable);
            tracing::debug!(key = %ctx.key, reason = reason.as_str(), "response not stored");
            let params = StatusParams {
                fwd: Some(ctx.fwd),
                fwd_status,
                detail: Some(reason.as_str()),
                ..StatusParams::default()
            };
            if error.is_some() && shared.config.incomplete_as_bad_gateway {
                // Nothing reached the client yet: a gateway says the upstream answer was
                // invalid (RFC 9110 §15.6.3) rather than relaying half of it.
                drop((frames, rest, error));
                let mut out = Response::new(CacheBody::empty());
                *out.status_mut() = StatusCode::BAD_GATEWAY;
                let h = out.headers_mut();
                h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
                h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                decorate(&shared, out.headers_mut(), &params);
                return Ok(out);
            }
            let mut out = Response::from_parts(resp_parts, CacheBody::replay(frames, rest, error));
            decorate(&shared, out.headers_mut(), &params);
            return Ok(out);
        }
    };
    // A `Content-Length` the body does not match would make every hit a broken message; the
    // response goes to the client as it came and nothing is stored.
    if !content_length_matches(&resp_parts.headers, bytes.len()) {
        let reason = NotStorable::LengthMismatch;
        record_request(Outcome::Uncacheable);
        tracing::debug!(key = %ctx.key, reason = reason.as_str(), "response not stored");
        let params = StatusParams {
            fwd: Some(ctx.fwd),
            fwd_status,
            detail: Some(reason.as_str()),
            ..StatusParams::default()
        };
        let mut out = Response::from_parts(resp_parts, CacheBody::full(Some(bytes)));
        decorate(&shared, out.headers_mut(), &params);
        return Ok(out);
    }

    let stored = build_stored(
        &shared,
        &client,
        &resp_parts,
        resp_parts.headers.clone(),
        bytes,
        &dirs,
        targeted,
        &vary,
        request_instant,
        response_instant,
    );
    let stored = Arc::new(stored);
    let inserted = shared.l1.insert_variant(
        &ctx.key,
        stored.clone(),
        shared.config.max_variants,
        response_instant,
    );
    let state = stored.state(&shared.clock, response_instant);
    record_request(Outcome::Miss);
    tracing::debug!(key = %ctx.key, stored = inserted, background = ctx.background, "response stored");
    let params = StatusParams {
        fwd: Some(ctx.fwd),
        fwd_status,
        stored: inserted,
        ttl: Some(ttl_of(&state)),
        ..StatusParams::default()
    };
    // Validators the cache added replaced the client's; answer the client's own conditions here.
    let request = if sent_validators {
        &client.headers
    } else {
        &HeaderMap::new()
    };
    Ok(from_stored(
        &shared, &stored, &state, request, false, &params,
    ))
}

/// An empty request body of type `B`, for the body types GET and HEAD requests have in
/// practice (axum's, `Empty`, `Full`, `String`, `()`), found by type id so the service needs no
/// extra bound on `B`.
fn empty_body<B: 'static>() -> Option<B> {
    use std::any::{Any, TypeId};
    fn cast<B: 'static, T: 'static>(value: T) -> Option<B> {
        let boxed: Box<dyn Any> = Box::new(value);
        boxed.downcast::<B>().ok().map(|b| *b)
    }
    let id = TypeId::of::<B>();
    #[cfg(feature = "admin")]
    if id == TypeId::of::<axum::body::Body>() {
        return cast(axum::body::Body::empty());
    }
    if id == TypeId::of::<http_body_util::Empty<Bytes>>() {
        return cast(http_body_util::Empty::<Bytes>::new());
    }
    if id == TypeId::of::<http_body_util::Full<Bytes>>() {
        return cast(http_body_util::Full::new(Bytes::new()));
    }
    if id == TypeId::of::<String>() {
        return cast(String::new());
    }
    if id == TypeId::of::<()>() {
        return cast(());
    }
    None
}

/// The answer to a request whose revalidation got a 304 for another representation, when the
/// request cannot be sent again: the stored response, as the 304's status vouches for it, and
/// never the 304 itself. Nothing is stored.
fn answer_despite_mismatch<ResBody: Body>(
    shared: &Shared,
    ctx: &FetchCtx,
    client: &Parts,
    v: &StoredResponse,
    now: Instant,
) -> Response<CacheBody<ResBody>> {
    record_request(Outcome::Uncacheable);
    let state = v.state(&shared.clock, now);
    let params = StatusParams {
        fwd: Some(ctx.fwd),
        fwd_status: Some(304),
        detail: Some("validator-mismatch"),
        ..StatusParams::default()
    };
    from_stored(
        shared,
        v,
        &state,
        &client.headers,
        client.method == Method::HEAD,
        &params,
    )
}

/// Applies a 304 from the origin (or a 200 to HEAD) to the stored response and answers from
/// the result; the response's validators match the stored ones.
fn revalidated<ResBody: Body>(
    shared: &Shared,
    ctx: &FetchCtx,
    client: &Parts,
    v: &Arc<StoredResponse>,
    resp: Response<ResBody>,
    request_instant: Instant,
    response_instant: Instant,
) -> Response<CacheBody<ResBody>> {
    let (resp_parts, _body) = resp.into_parts();
    let fwd_status = resp_parts.status.as_u16();
    let merged = policy::merge_not_modified(&v.headers, &resp_parts.headers);
    let (dirs, targeted) = effective_directives(
        &merged,
        &shared.config.targets,
        shared.config.surrogate_device.as_deref(),
    );
    let mut head_parts = resp_parts;
    head_parts.status = v.status;
    let vary: Vec<HeaderName> = v.vary.iter().map(|(n, _)| n.clone()).collect();
    let storable = check_storable(
        shared.config.mode,
        &Method::GET,
        &ctx.req_dirs,
        client.headers.contains_key(header::AUTHORIZATION),
        v.status,
        &merged,
        &dirs,
        targeted,
    )
    .is_ok();
    let mut fresh = build_stored(
        shared,
        client,
        &head_parts,
        merged,
        v.body.clone(),
        &dirs,
        targeted,
        &vary,
        request_instant,
        response_instant,
    );
    // The variant keeps the selecting values it was stored with.
    fresh.vary = v.vary.clone();
    let fresh = Arc::new(fresh);
    let inserted = storable
        && shared.l1.insert_variant(
            &ctx.key,
            fresh.clone(),
            shared.config.max_variants,
            response_instant,
        );
    if !storable {
        shared.l1.invalidate(&ctx.key);
    }
    let state = fresh.state(&shared.clock, response_instant);
    record_request(Outcome::Revalidated);
    tracing::debug!(key = %ctx.key, fwd_status, "stored response updated");
    let params = StatusParams {
        fwd: Some(ctx.fwd),
        fwd_status: Some(fwd_status),
        stored: inserted,
        ttl: Some(ttl_of(&state)),
        ..StatusParams::default()
    };
    from_stored(
        shared,
        &fresh,
        &state,
        &client.headers,
        client.method == Method::HEAD,
        &params,
    )
}

/// Fields that describe the connection, not the response (RFC 9110 §7.6.1).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

#[allow(clippy::too_many_arguments)]
fn build_stored(
    shared: &Shared,
    client: &Parts,
    resp: &http::response::Parts,
    mut headers: HeaderMap,
    body: Bytes,
    dirs: &crate::directives::ResponseDirectives,
    targeted: bool,
    vary: &[HeaderName],
    request_instant: Instant,
    response_instant: Instant,
) -> StoredResponse {
    let config = &shared.config;
    let response_time = shared.clock.unix(response_instant);
    let delay = response_instant.saturating_duration_since(request_instant);
    let corrected_initial_age = policy::corrected_initial_age(&headers, response_time, delay);
    let lifetime = policy::freshness_lifetime(
        config.mode,
        resp.status,
        &headers,
        dirs,
        targeted,
        response_time,
        &config.heuristic,
    );
    let mut tag_list = Vec::new();
    if let Some(t) = &config.tag_header {
        tags::from_header(&headers, t, &mut tag_list);
        if config.strip_tag_header {
            headers.remove(t);
        }
    }
    if let Some(f) = &config.tags_fn {
        for t in f(client, resp) {
            tags::push(&mut tag_list, &t);
        }
    }
    headers.remove(header::AGE);
    if let Some(conn) = headers
        .get(header::CONNECTION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
    {
        for name in conn.split(',') {
            if let Ok(n) = HeaderName::from_bytes(name.trim().as_bytes()) {
                headers.remove(n);
            }
        }
    }
    let hop: Vec<HeaderName> = headers
        .keys()
        .filter(|n| is_hop_by_hop(n))
        .cloned()
        .collect();
    for n in hop {
        headers.remove(n);
    }
    if !headers.contains_key(header::CONTENT_LENGTH) {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    let etag = headers.get(header::ETAG).cloned();
    let last_modified = headers.get(header::LAST_MODIFIED).cloned();
    let modified_secs = last_modified
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .and_then(crate::date::parse_http_date)
        .or_else(|| policy::date_value(&headers));
    let shared_mode = config.mode == CacheMode::Shared;
    StoredResponse {
        status: resp.status,
        version: resp.version,
        vary: vary
            .iter()
            .map(|n| (n.clone(), normalized_value(&client.headers, n)))
            .collect(),
        response_instant,
        corrected_initial_age,
        lifetime,
        no_cache: dirs.no_cache,
        must_revalidate: dirs.must_revalidate
            || (shared_mode && (dirs.proxy_revalidate || dirs.s_maxage.is_some())),
        stale_while_revalidate: Duration::from_secs(dirs.stale_while_revalidate.unwrap_or(0)),
        stale_if_error: Duration::from_secs(dirs.stale_if_error.unwrap_or(0)),
        etag,
        last_modified,
        modified_secs,
        fetch_time: delay,
        tags: tag_list.into_boxed_slice(),
        soft_purged_at: AtomicU64::new(0),
        hit_headers: std::sync::Mutex::new(None),
        headers,
        body,
    }
}

enum Buffered<B: Body> {
    Complete(Bytes),
    Partial {
        frames: VecDeque<Frame<Bytes>>,
        rest: Option<Pin<Box<B>>>,
        error: Option<B::Error>,
        reason: NotStorable,
    },
}

/// Reads the body up to `max` bytes. Past that, or on trailers or an error, hands back what
/// was read and the rest so the client still gets the whole body.
async fn buffer<B: Body<Data = Bytes>>(body: B, max: usize) -> Buffered<B> {
    let mut body = Box::pin(body);
    let mut frames: VecDeque<Frame<Bytes>> = VecDeque::new();
    let mut total = 0usize;
    loop {
        match poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
            None => break,
            Some(Ok(frame)) => {
                if let Some(d) = frame.data_ref() {
                    total = total.saturating_add(d.len());
                    let too_large = total > max;
                    frames.push_back(frame);
                    if too_large {
                        return Buffered::Partial {
                            frames,
                            rest: Some(body),
                            error: None,
                            reason: NotStorable::TooLarge,
                        };
                    }
                } else {
                    frames.push_back(frame);
                    return Buffered::Partial {
                        frames,
                        rest: Some(body),
                        error: None,
                        reason: NotStorable::Trailers,
                    };
                }
            }
            Some(Err(e)) => {
                return Buffered::Partial {
                    frames,
                    rest: None,
                    error: Some(e),
                    reason: NotStorable::BodyError,
                };
            }
        }
    }
    let bytes = if frames.len() == 1 {
        frames
            .pop_front()
            .and_then(|f| f.into_data().ok())
            .unwrap_or_default()
    } else {
        let mut buf = BytesMut::with_capacity(total);
        for f in frames {
            if let Ok(d) = f.into_data() {
                buf.extend_from_slice(&d);
            }
        }
        buf.freeze()
    };
    Buffered::Complete(bytes)
}

/// Whether every `Content-Length` line (absent is fine) states exactly `len`.
fn content_length_matches(headers: &HeaderMap, len: usize) -> bool {
    headers.get_all(header::CONTENT_LENGTH).iter().all(|v| {
        v.to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .is_some_and(|n| usize::try_from(n).is_ok_and(|n| n == len))
    })
}

/// Methods other than GET and HEAD: forwarded; unsafe ones invalidate on success (§4.4).
async fn other_method<S, B, ResBody>(
    shared: Arc<Shared>,
    mut inner: S,
    parts: Parts,
    body: B,
) -> Result<Response<CacheBody<ResBody>>, S::Error>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: Body<Data = Bytes>,
{
    let target = policy::is_unsafe(&parts.method).then(|| invalidation_base(&parts));
    let resp = inner.call(Request::from_parts(parts, body)).await?;
    let status = resp.status();
    if let Some(Some(base)) = target
        && (status.is_success() || status.is_redirection())
    {
        invalidate_after_unsafe(&shared, &base, resp.headers());
    }
    record_request(Outcome::Bypass);
    let params = StatusParams {
        fwd: Some(Fwd::Method),
        fwd_status: Some(status.as_u16()),
        ..StatusParams::default()
    };
    Ok(passthrough(&shared, resp, &params))
}

/// A GET for the request's target, carrying only its `Host`: the base for invalidation keys.
fn invalidation_base(parts: &Parts) -> Option<Parts> {
    let mut b = Request::builder()
        .method(Method::GET)
        .uri(parts.uri.clone());
    if let Some(a) = authority_of(parts) {
        b = b.header(header::HOST, a);
    }
    b.body(()).ok().map(|r| r.into_parts().0)
}

fn invalidate_after_unsafe(shared: &Shared, base: &Parts, headers: &HeaderMap) {
    let keys = &shared.config.key;
    let mut removed = Vec::new();
    if let Some(k) = keys.key(base) {
        shared.l1.invalidate(&k);
        removed.push(k);
    }
    let origin_scheme = base.uri.scheme_str().unwrap_or("http");
    let origin_authority = authority_of(base).unwrap_or("");
    for field in [header::LOCATION, header::CONTENT_LOCATION] {
        let Some(value) = headers.get(&field).and_then(|v| v.to_str().ok()) else {
            continue;
        };
        let Some(uri) = resolve(value, base) else {
            continue;
        };
        if let Some(a) = uri.authority() {
            // Only the same origin (§4.4): another host's entries are not ours to drop.
            let same = a.as_str().eq_ignore_ascii_case(origin_authority)
                && uri
                    .scheme_str()
                    .unwrap_or("http")
                    .eq_ignore_ascii_case(origin_scheme);
            if !same {
                continue;
            }
        }
        if let Some(k) = keys.key_for_uri(&uri, Some(base)) {
            shared.l1.invalidate(&k);
            removed.push(k);
        }
    }
    if let Some(lower) = &shared.lower {
        // The shared and persistent tiers, and the other instances, drop them too.
        for k in &removed {
            lower.propagate(crate::tiered::Target::Key(k.clone()), false);
        }
    }
    tracing::debug!(?removed, "invalidated after unsafe method");
}

/// Resolves a URI reference against the request target (absolute, absolute-path or
/// relative-path references).
fn resolve(reference: &str, base: &Parts) -> Option<Uri> {
    let reference = reference.trim();
    if reference.is_empty() || reference.len() > 8192 {
        return None;
    }
    if reference.contains("://") || reference.starts_with('/') && !reference.starts_with("//") {
        return reference.parse().ok();
    }
    if reference.starts_with("//") {
        return format!("{}:{}", base.uri.scheme_str().unwrap_or("http"), reference)
            .parse()
            .ok();
    }
    let path = base.uri.path();
    let dir = path.rfind('/').map_or("/", |i| &path[..=i]);
    format!("{dir}{reference}").parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_status_format() {
        let v = cache_status_value(
            "tower-cache",
            &StatusParams {
                fwd: Some(Fwd::UriMiss),
                fwd_status: Some(200),
                stored: true,
                ttl: Some(60),
                ..StatusParams::default()
            },
        )
        .unwrap();
        assert_eq!(
            v,
            "tower-cache; fwd=uri-miss; fwd-status=200; stored; ttl=60"
        );
        let v = cache_status_value(
            "c",
            &StatusParams {
                hit: true,
                ttl: Some(-3),
                detail: Some("stale-while-revalidate"),
                ..StatusParams::default()
            },
        )
        .unwrap();
        assert_eq!(v, "c; hit; ttl=-3; detail=stale-while-revalidate");
    }

    #[test]
    fn resolves_references() {
        let base = Request::get("/a/b")
            .header("host", "h")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        assert_eq!(resolve("/x", &base).unwrap(), "/x");
        assert_eq!(resolve("c", &base).unwrap(), "/a/c");
        assert_eq!(resolve("http://h/y", &base).unwrap(), "http://h/y");
        assert_eq!(resolve("//h/z", &base).unwrap(), "http://h/z");
        assert!(resolve("", &base).is_none());
    }
}
