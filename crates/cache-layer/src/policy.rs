//! The caching rules of RFC 9111 as pure functions: storability, freshness lifetime, age,
//! request directives, conditional requests, 304 merging and invalidation targets.
//!
//! Nothing here does I/O or reads a clock; callers pass the times in.

use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};

use crate::date::parse_http_date;
use crate::directives::{RequestDirectives, ResponseDirectives, parse_delta_seconds};
use crate::fields::{EtagList, parse_etag, parse_etag_list};

/// Whose cache this is (RFC 9111 §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheMode {
    /// A shared cache (a reverse proxy or CDN in front of many users), the default.
    ///
    /// `private` responses, responses with `Set-Cookie` and responses to requests carrying
    /// `Authorization` (unless `public`, `s-maxage` or `must-revalidate` allow it) are not stored;
    /// `s-maxage` and `proxy-revalidate` apply.
    #[default]
    Shared,
    /// A private cache serving a single user: `private` responses and `Set-Cookie` are stored;
    /// `s-maxage` and `proxy-revalidate` are ignored. Use it only when every request that reaches
    /// the layer comes from the same user.
    Private,
}

/// How heuristic freshness is computed (RFC 9111 §4.2.2).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Heuristic {
    /// Fraction of the time since `Last-Modified` (0.1 by default).
    pub(crate) fraction: f64,
    /// Upper bound of a heuristic lifetime.
    pub(crate) cap: Duration,
}

impl Default for Heuristic {
    fn default() -> Self {
        Self {
            fraction: 0.1,
            cap: Duration::from_secs(24 * 3600),
        }
    }
}

/// Why a response was not stored; the name goes into `Cache-Status: detail=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotStorable {
    Method,
    Status,
    RequestNoStore,
    NoStore,
    Private,
    Authorization,
    SetCookie,
    NoFreshness,
    VaryStar,
    VaryUnusable,
    MustUnderstand,
    TooLarge,
    Trailers,
    BodyError,
    LengthMismatch,
}

impl NotStorable {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Method => "method",
            Self::Status => "status",
            Self::RequestNoStore => "request-no-store",
            Self::NoStore => "no-store",
            Self::Private => "private",
            Self::Authorization => "authorization",
            Self::SetCookie => "set-cookie",
            Self::NoFreshness => "no-freshness",
            Self::VaryStar => "vary-star",
            Self::VaryUnusable => "vary-unusable",
            Self::MustUnderstand => "must-understand",
            Self::TooLarge => "too-large",
            Self::Trailers => "trailers",
            Self::BodyError => "body-error",
            Self::LengthMismatch => "length-mismatch",
        }
    }
}

/// One targeted cache-control field the cache obeys, in the builder's priority order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TargetedField {
    pub(crate) name: HeaderName,
    /// `Surrogate-Control` grammar (W3C Edge Architecture) instead of an RFC 9213 dictionary.
    pub(crate) surrogate: bool,
}

impl TargetedField {
    pub(crate) fn new(name: HeaderName) -> Self {
        let surrogate = name.as_str() == "surrogate-control";
        Self { name, surrogate }
    }
}

/// The cache-control directives in force for a response: the first targeted field (in
/// priority order) that is present, valid and non-empty (RFC 9213 §2.2), else
/// `Cache-Control`. The flag says whether a targeted field was used.
pub(crate) fn effective_directives(
    headers: &HeaderMap,
    targets: &[TargetedField],
    device: Option<&str>,
) -> (ResponseDirectives, bool) {
    for t in targets {
        let found = if t.surrogate {
            ResponseDirectives::surrogate(headers, &t.name, device)
        } else {
            ResponseDirectives::targeted(headers, &t.name)
        };
        if let Some(d) = found {
            return (d, true);
        }
    }
    (ResponseDirectives::from_headers(headers), false)
}

/// Status codes that are heuristically cacheable (RFC 9110 §15.1), minus 206, which this cache
/// does not store.
pub(crate) fn heuristically_cacheable(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// Status codes whose caching requirements this cache implements (for `must-understand`).
fn understood(status: StatusCode) -> bool {
    status.as_u16() != 206 && status.as_u16() != 304 && status.canonical_reason().is_some()
}

/// Whether a response to a GET may be stored (RFC 9111 §3, §3.5).
#[allow(clippy::too_many_arguments)]
pub(crate) fn check_storable(
    mode: CacheMode,
    method: &Method,
    request: &RequestDirectives,
    request_has_authorization: bool,
    status: StatusCode,
    headers: &HeaderMap,
    dirs: &ResponseDirectives,
    targeted: bool,
) -> Result<(), NotStorable> {
    if method != Method::GET {
        return Err(NotStorable::Method);
    }
    if status.is_informational()
        || status == StatusCode::PARTIAL_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Err(NotStorable::Status);
    }
    if request.no_store {
        return Err(NotStorable::RequestNoStore);
    }
    if dirs.must_understand {
        if !understood(status) {
            return Err(NotStorable::MustUnderstand);
        }
    } else if dirs.no_store {
        return Err(NotStorable::NoStore);
    }
    let shared = mode == CacheMode::Shared;
    if shared && dirs.private {
        return Err(NotStorable::Private);
    }
    if shared
        && request_has_authorization
        && !(dirs.public || dirs.must_revalidate || dirs.s_maxage.is_some())
    {
        return Err(NotStorable::Authorization);
    }
    if shared && headers.contains_key(header::SET_COOKIE) {
        return Err(NotStorable::SetCookie);
    }
    let explicit = dirs.max_age.is_some()
        || (shared && dirs.s_maxage.is_some())
        || (!targeted && headers.contains_key(header::EXPIRES))
        || dirs.public
        || (!shared && dirs.private);
    if !explicit && !heuristically_cacheable(status) {
        return Err(NotStorable::NoFreshness);
    }
    Ok(())
}

/// The freshness lifetime of a response (RFC 9111 §4.2.1, §4.2.2).
///
/// `response_time` is when the response was received, in Unix seconds; it stands in for a
/// missing `Date`.
pub(crate) fn freshness_lifetime(
    mode: CacheMode,
    status: StatusCode,
    headers: &HeaderMap,
    dirs: &ResponseDirectives,
    targeted: bool,
    response_time: u64,
    heuristic: &Heuristic,
) -> Duration {
    if mode == CacheMode::Shared
        && let Some(s) = dirs.s_maxage
    {
        return Duration::from_secs(s);
    }
    if let Some(s) = dirs.max_age {
        return Duration::from_secs(s);
    }
    let date = date_value(headers).unwrap_or(response_time);
    if !targeted {
        let mut expires = headers.get_all(header::EXPIRES).iter();
        if let Some(first) = expires.next() {
            // Several Expires lines, or an invalid one, mean "already expired" (§4.2.1, §5.3).
            if expires.next().is_some() {
                return Duration::ZERO;
            }
            return match first.to_str().ok().and_then(parse_http_date) {
                Some(exp) => Duration::from_secs(exp.saturating_sub(date)),
                None => Duration::ZERO,
            };
        }
    }
    if !(heuristically_cacheable(status) || dirs.public) {
        return Duration::ZERO;
    }
    let Some(lm) = headers
        .get(header::LAST_MODIFIED)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_http_date)
    else {
        return Duration::ZERO;
    };
    let since = date.saturating_sub(lm);
    let secs = (since as f64 * heuristic.fraction).max(0.0);
    let lifetime = Duration::try_from_secs_f64(secs).unwrap_or(heuristic.cap);
    lifetime.min(heuristic.cap)
}

/// The `Date` of a response in Unix seconds, if present and valid.
pub(crate) fn date_value(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::DATE)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_http_date)
}

/// The `Age` a response arrived with; an invalid value is ignored (RFC 9111 §5.1).
///
/// A list (`Age: 7200, 0`, or several lines) is read by its first member, as every other
/// singleton field: a stale response never passes as fresh because of a later `0`.
pub(crate) fn age_value(headers: &HeaderMap) -> u64 {
    headers
        .get(header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| parse_delta_seconds(s.split(',').next().unwrap_or("").trim()))
        .unwrap_or(0)
}

/// `corrected_initial_age` of RFC 9111 §4.2.3.
///
/// `request_time`/`response_time` are Unix seconds when the request was sent and the response
/// received; `response_delay` is the same interval measured on a monotonic clock.
pub(crate) fn corrected_initial_age(
    headers: &HeaderMap,
    response_time: u64,
    response_delay: Duration,
) -> Duration {
    let apparent_age = date_value(headers)
        .map(|date| response_time.saturating_sub(date))
        .unwrap_or(0);
    let corrected_age_value =
        Duration::from_secs(age_value(headers)).saturating_add(response_delay);
    Duration::from_secs(apparent_age).max(corrected_age_value)
}

/// What a request's directives and a stored response's state allow (RFC 9111 §4.2, §4.2.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Usability {
    /// Serve it.
    Fresh,
    /// Stale but the client's `max-stale` accepts it.
    StaleAllowed,
    /// Fresh, but the request's directives forbid using it without validation.
    RequestForbids,
    /// Stale: validate (or apply a stale-* extension).
    Stale,
}

/// Inputs describing a stored response at the time of a lookup.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EntryState {
    pub(crate) current_age: Duration,
    pub(crate) lifetime: Duration,
    /// `no-cache` on the response: every use needs validation.
    pub(crate) no_cache: bool,
    /// `must-revalidate`, or in a shared cache `proxy-revalidate`/`s-maxage`.
    pub(crate) must_revalidate: bool,
}

impl EntryState {
    pub(crate) fn is_fresh(&self) -> bool {
        self.lifetime > self.current_age
    }

    /// How far past its lifetime the entry is (zero while fresh).
    pub(crate) fn staleness(&self) -> Duration {
        self.current_age.saturating_sub(self.lifetime)
    }
}

/// Decides whether a stored response can answer a request without contacting the origin.
pub(crate) fn usability(req: &RequestDirectives, entry: &EntryState) -> Usability {
    let fresh = entry.is_fresh();
    if entry.no_cache {
        return Usability::Stale;
    }
    if req.no_cache {
        return if fresh {
            Usability::RequestForbids
        } else {
            Usability::Stale
        };
    }
    if let Some(max_age) = req.max_age
        && entry.current_age > Duration::from_secs(max_age)
    {
        return if fresh {
            Usability::RequestForbids
        } else {
            Usability::Stale
        };
    }
    if let Some(min_fresh) = req.min_fresh {
        let remaining = entry.lifetime.saturating_sub(entry.current_age);
        if remaining < Duration::from_secs(min_fresh) {
            return if fresh {
                Usability::RequestForbids
            } else {
                Usability::Stale
            };
        }
    }
    if fresh {
        return Usability::Fresh;
    }
    if !entry.must_revalidate
        && let Some(max_stale) = req.max_stale
    {
        let ok = match max_stale {
            None => true,
            Some(limit) => entry.staleness() <= Duration::from_secs(limit),
        };
        if ok {
            return Usability::StaleAllowed;
        }
    }
    Usability::Stale
}

/// Whether the client's own conditional request is satisfied by a stored response, so the
/// cache can answer `304 Not Modified` (RFC 9110 §13.1.2, §13.1.3, §13.2.2; RFC 9111 §4.3.2).
pub(crate) fn not_modified(
    request: &HeaderMap,
    etag: Option<&HeaderValue>,
    last_modified: Option<u64>,
) -> bool {
    if let Some(inm) = request.get(header::IF_NONE_MATCH) {
        let Some(list) = parse_etag_list(inm) else {
            return false;
        };
        return match list {
            EtagList::Any => true,
            EtagList::Tags(tags) => {
                let Some(stored) = etag.and_then(|v| v.to_str().ok()).and_then(parse_etag) else {
                    return false;
                };
                tags.iter().any(|t| t.weak_eq(&stored))
            }
        };
    }
    if let Some(ims) = request
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_http_date)
        && let Some(lm) = last_modified
    {
        return lm <= ims;
    }
    false
}

/// Fields never copied from a 304 (or a `200` to `HEAD`) into the stored response (RFC 9111
/// §3.2): hop-by-hop fields, and the fields that describe the stored bytes themselves. The body
/// is kept, so its length, coding, range and digests must stay the ones it came with; a
/// validator's answer cannot re-describe bytes it never sent.
fn excluded_from_update(name: &HeaderName) -> bool {
    name == header::CONTENT_LENGTH
        || name == header::CONTENT_ENCODING
        || name == header::CONTENT_RANGE
        || name == header::TRANSFER_ENCODING
        || name == header::CONNECTION
        || name == header::TE
        || name == header::TRAILER
        || name == header::UPGRADE
        || matches!(
            name.as_str(),
            "content-md5"
                | "content-digest"
                | "repr-digest"
                | "digest"
                | "keep-alive"
                | "proxy-connection"
        )
}

/// A `Content-Type` reduced to what describes the bytes: the lowercased media type and the
/// parameters, names lowercased, values unquoted (charset values lowercased), sorted.
/// `None` when it is not a `type/subtype` at all.
fn media_type_of(value: &HeaderValue) -> Option<(String, Vec<(String, String)>)> {
    let s = value.to_str().ok()?;
    let mut parts = s.split(';');
    let essence = parts.next()?.trim().to_ascii_lowercase();
    let (t, sub) = essence.split_once('/')?;
    if t.is_empty()
        || sub.is_empty()
        || !essence
            .bytes()
            .all(|b| b == b'/' || crate::directives::is_tchar(b))
    {
        return None;
    }
    let mut params = Vec::new();
    for p in parts {
        let p = p.trim();
        if p.is_empty() {
            continue;
        }
        let (n, v) = p.split_once('=')?;
        let n = n.trim().to_ascii_lowercase();
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(v);
        let v = if n == "charset" {
            v.to_ascii_lowercase()
        } else {
            v.to_owned()
        };
        params.push((n, v));
    }
    params.sort();
    Some((essence, params))
}

/// Whether a 304's `Content-Type` says the same as the stored one, so taking it cannot
/// misdescribe the stored body: the same media type and parameters, written differently.
fn same_content_type(stored: Option<&HeaderValue>, new: &HeaderValue) -> bool {
    match stored {
        Some(old) => match (media_type_of(old), media_type_of(new)) {
            (Some(a), Some(b)) => a == b,
            _ => false,
        },
        None => false,
    }
}

/// Applies a 304 to stored headers (RFC 9111 §3.2, §4.3.4): every field of the 304 replaces
/// the stored field of the same name, except those excluded above and a `Content-Type` that
/// would describe the stored body differently.
pub(crate) fn merge_not_modified(stored: &HeaderMap, not_modified: &HeaderMap) -> HeaderMap {
    let mut merged = stored.clone();
    let mut last: Option<&HeaderName> = None;
    for (name, value) in not_modified {
        if excluded_from_update(name) {
            continue;
        }
        if name == header::CONTENT_TYPE {
            // Several lines, or one that changes the media type or a parameter, keep the
            // stored field.
            let single = not_modified.get_all(header::CONTENT_TYPE).iter().count() == 1;
            if !single || !same_content_type(stored.get(header::CONTENT_TYPE), value) {
                continue;
            }
        }
        if last != Some(name) {
            merged.remove(name);
            last = Some(name);
        }
        merged.append(name.clone(), value.clone());
    }
    merged
}

/// Whether a 304 can refresh a stored response with this validator (RFC 9111 §4.3.4): a
/// 304 carrying an entity-tag must match the stored one.
pub(crate) fn not_modified_matches(
    stored_etag: Option<&HeaderValue>,
    not_modified: &HeaderMap,
) -> bool {
    let Some(new) = not_modified
        .get(header::ETAG)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_etag)
    else {
        return true;
    };
    match stored_etag
        .and_then(|v| v.to_str().ok())
        .and_then(parse_etag)
    {
        Some(old) => old.weak_eq(&new),
        None => false,
    }
}

/// Whether a `200` answer to HEAD describes a stored GET response, so it may update it
/// (RFC 9111 §4.3.5): each validator it carries equals the stored one, and its
/// `Content-Length`, when present, is the stored length.
pub(crate) fn head_matches(
    stored_etag: Option<&HeaderValue>,
    stored_last_modified: Option<&HeaderValue>,
    stored_len: usize,
    head: &HeaderMap,
) -> bool {
    if let Some(e) = head.get(header::ETAG)
        && stored_etag.map(|s| s.as_bytes().trim_ascii()) != Some(e.as_bytes().trim_ascii())
    {
        return false;
    }
    if let Some(lm) = head.get(header::LAST_MODIFIED) {
        let date = |v: &HeaderValue| v.to_str().ok().and_then(parse_http_date);
        let same = match (stored_last_modified, date(lm)) {
            (Some(s), Some(d)) => date(s) == Some(d),
            (Some(s), None) => s == lm,
            (None, _) => false,
        };
        if !same {
            return false;
        }
    }
    match head.get(header::CONTENT_LENGTH) {
        None => true,
        Some(cl) => cl
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .is_some_and(|n| n == stored_len as u64),
    }
}

/// Methods whose non-error responses invalidate stored responses (RFC 9111 §4.4).
pub(crate) fn is_unsafe(method: &Method) -> bool {
    !matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// Fields a 304 generated from cache leaves out (RFC 9110 §15.4.5).
pub(crate) fn omitted_from_304(name: &HeaderName) -> bool {
    name == header::CONTENT_LENGTH
        || name == header::CONTENT_TYPE
        || name == header::CONTENT_ENCODING
        || name == header::CONTENT_LANGUAGE
        || name == header::CONTENT_RANGE
        || name == header::TRANSFER_ENCODING
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn h(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_static(v));
        }
        m
    }

    fn storable(
        mode: CacheMode,
        auth: bool,
        status: u16,
        headers: &HeaderMap,
    ) -> Result<(), NotStorable> {
        let (d, t) = effective_directives(headers, &[], None);
        check_storable(
            mode,
            &Method::GET,
            &RequestDirectives::default(),
            auth,
            StatusCode::from_u16(status).unwrap(),
            headers,
            &d,
            t,
        )
    }

    #[test]
    fn storability() {
        let s = CacheMode::Shared;
        assert_eq!(storable(s, false, 200, &h(&[])), Ok(()));
        assert_eq!(
            storable(s, false, 200, &h(&[("cache-control", "no-store")])),
            Err(NotStorable::NoStore)
        );
        assert_eq!(
            storable(s, false, 200, &h(&[("cache-control", "private")])),
            Err(NotStorable::Private)
        );
        assert_eq!(
            storable(
                CacheMode::Private,
                false,
                200,
                &h(&[("cache-control", "private")])
            ),
            Ok(())
        );
        assert_eq!(
            storable(s, false, 302, &h(&[])),
            Err(NotStorable::NoFreshness)
        );
        assert_eq!(
            storable(s, false, 302, &h(&[("cache-control", "max-age=5")])),
            Ok(())
        );
        assert_eq!(storable(s, false, 500, &h(&[("expires", "0")])), Ok(()));
        assert_eq!(
            storable(s, false, 206, &h(&[("cache-control", "max-age=5")])),
            Err(NotStorable::Status)
        );
        assert_eq!(
            storable(s, true, 200, &h(&[("cache-control", "max-age=5")])),
            Err(NotStorable::Authorization)
        );
        assert_eq!(
            storable(s, true, 200, &h(&[("cache-control", "s-maxage=5")])),
            Ok(())
        );
        assert_eq!(
            storable(s, true, 200, &h(&[("cache-control", "public")])),
            Ok(())
        );
        assert_eq!(
            storable(s, true, 200, &h(&[("cache-control", "must-revalidate")])),
            Ok(())
        );
        assert_eq!(
            storable(s, false, 200, &h(&[("set-cookie", "a=b")])),
            Err(NotStorable::SetCookie)
        );
        assert_eq!(
            storable(CacheMode::Private, false, 200, &h(&[("set-cookie", "a=b")])),
            Ok(())
        );
        assert_eq!(
            storable(
                s,
                false,
                200,
                &h(&[("cache-control", "must-understand, no-store")])
            ),
            Ok(())
        );
        assert_eq!(
            storable(
                s,
                false,
                299,
                &h(&[("cache-control", "must-understand, no-store, max-age=5")])
            ),
            Err(NotStorable::MustUnderstand)
        );
    }

    fn lifetime(headers: &HeaderMap, now: u64) -> Duration {
        let targets = [
            TargetedField::new(HeaderName::from_static("cdn-cache-control")),
            TargetedField::new(HeaderName::from_static("surrogate-control")),
        ];
        let (d, t) = effective_directives(headers, &targets, Some("edge"));
        freshness_lifetime(
            CacheMode::Shared,
            StatusCode::OK,
            headers,
            &d,
            t,
            now,
            &Heuristic::default(),
        )
    }

    #[test]
    fn freshness_sources() {
        let now = 784_111_777;
        assert_eq!(
            lifetime(&h(&[("cache-control", "max-age=10, s-maxage=20")]), now),
            Duration::from_secs(20)
        );
        assert_eq!(
            lifetime(&h(&[("cache-control", "max-age=10")]), now),
            Duration::from_secs(10)
        );
        assert_eq!(
            lifetime(
                &h(&[
                    ("date", "Sun, 06 Nov 1994 08:49:37 GMT"),
                    ("expires", "Sun, 06 Nov 1994 08:50:37 GMT")
                ]),
                now + 1000
            ),
            Duration::from_secs(60),
            "Expires minus Date, not minus now"
        );
        assert_eq!(lifetime(&h(&[("expires", "0")]), now), Duration::ZERO);
        assert_eq!(
            lifetime(
                &h(&[
                    ("date", "Sun, 06 Nov 1994 08:49:37 GMT"),
                    ("last-modified", "Sun, 06 Nov 1994 06:02:57 GMT")
                ]),
                now
            ),
            Duration::from_secs(1000),
            "10% of 10000 s"
        );
        assert_eq!(
            lifetime(
                &h(&[
                    ("date", "Sun, 06 Nov 1994 08:49:37 GMT"),
                    ("last-modified", "Thu, 01 Jan 1970 00:00:00 GMT")
                ]),
                now
            ),
            Duration::from_secs(24 * 3600),
            "heuristic capped"
        );
        assert_eq!(
            lifetime(
                &h(&[
                    ("cache-control", "max-age=10"),
                    ("cdn-cache-control", "max-age=99")
                ]),
                now
            ),
            Duration::from_secs(99),
            "targeted field wins"
        );
        assert_eq!(
            lifetime(
                &h(&[
                    ("cache-control", "max-age=10"),
                    ("cdn-cache-control", "MAX-AGE=99")
                ]),
                now
            ),
            Duration::from_secs(10),
            "invalid targeted field ignored"
        );
        // Priority order (RFC 9213 §2.2): the first present and valid field wins.
        assert_eq!(
            lifetime(
                &h(&[
                    ("cache-control", "max-age=10"),
                    ("cdn-cache-control", "max-age=99"),
                    ("surrogate-control", "max-age=77")
                ]),
                now
            ),
            Duration::from_secs(99)
        );
        assert_eq!(
            lifetime(
                &h(&[
                    ("cache-control", "max-age=10"),
                    ("cdn-cache-control", "MAX-AGE=99"),
                    ("surrogate-control", "max-age=77")
                ]),
                now
            ),
            Duration::from_secs(77),
            "an invalid first field passes to the next"
        );
        assert_eq!(
            lifetime(
                &h(&[
                    ("cache-control", "max-age=10"),
                    ("surrogate-control", "max-age=5, max-age=77;edge")
                ]),
                now
            ),
            Duration::from_secs(77),
            "the device's own directive"
        );
        assert_eq!(
            lifetime(
                &h(&[
                    ("cache-control", "max-age=10"),
                    ("surrogate-control", "max-age=77;other")
                ]),
                now
            ),
            Duration::from_secs(10),
            "nothing for this device: Cache-Control"
        );
        assert_eq!(
            lifetime(
                &h(&[
                    ("expires", "Thu, 01 Jan 1970 00:00:00 GMT"),
                    ("surrogate-control", "max-age=77")
                ]),
                now
            ),
            Duration::from_secs(77),
            "Expires yields to a targeted field"
        );
    }

    #[test]
    fn age_calculation() {
        let headers = h(&[("date", "Sun, 06 Nov 1994 08:49:37 GMT"), ("age", "30")]);
        let t = 784_111_777;
        assert_eq!(
            corrected_initial_age(&headers, t + 10, Duration::from_secs(2)),
            Duration::from_secs(32)
        );
        assert_eq!(
            corrected_initial_age(&headers, t + 100, Duration::from_secs(2)),
            Duration::from_secs(100)
        );
        let listed = h(&[("age", "7200, 0")]);
        assert_eq!(
            corrected_initial_age(&listed, t, Duration::ZERO),
            Duration::from_secs(7200)
        );
        let bad = h(&[("age", "abc")]);
        assert_eq!(
            corrected_initial_age(&bad, t, Duration::ZERO),
            Duration::ZERO
        );
    }

    #[test]
    fn request_directive_usability() {
        let e = EntryState {
            current_age: Duration::from_secs(10),
            lifetime: Duration::from_secs(60),
            no_cache: false,
            must_revalidate: false,
        };
        let r = |s: &str| RequestDirectives::parse(s);
        assert_eq!(usability(&r(""), &e), Usability::Fresh);
        assert_eq!(usability(&r("max-age=5"), &e), Usability::RequestForbids);
        assert_eq!(usability(&r("min-fresh=55"), &e), Usability::RequestForbids);
        assert_eq!(usability(&r("no-cache"), &e), Usability::RequestForbids);
        let stale = EntryState {
            current_age: Duration::from_secs(70),
            ..e
        };
        assert_eq!(usability(&r(""), &stale), Usability::Stale);
        assert_eq!(usability(&r("max-stale"), &stale), Usability::StaleAllowed);
        assert_eq!(usability(&r("max-stale=5"), &stale), Usability::Stale);
        assert_eq!(
            usability(&r("max-stale=10"), &stale),
            Usability::StaleAllowed
        );
        let mr = EntryState {
            must_revalidate: true,
            ..stale
        };
        assert_eq!(usability(&r("max-stale"), &mr), Usability::Stale);
        let nc = EntryState {
            no_cache: true,
            ..e
        };
        assert_eq!(usability(&r(""), &nc), Usability::Stale);
    }

    #[test]
    fn conditionals() {
        let etag = HeaderValue::from_static("W/\"v1\"");
        assert!(not_modified(
            &h(&[("if-none-match", "\"v1\"")]),
            Some(&etag),
            None
        ));
        assert!(not_modified(
            &h(&[("if-none-match", "\"x\", W/\"v1\"")]),
            Some(&etag),
            None
        ));
        assert!(!not_modified(
            &h(&[("if-none-match", "\"v2\"")]),
            Some(&etag),
            None
        ));
        assert!(not_modified(&h(&[("if-none-match", "*")]), None, None));
        let lm = 784_111_777;
        assert!(not_modified(
            &h(&[("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT")]),
            None,
            Some(lm)
        ));
        assert!(!not_modified(
            &h(&[("if-modified-since", "Sun, 06 Nov 1994 08:49:36 GMT")]),
            None,
            Some(lm)
        ));
        assert!(!not_modified(
            &h(&[("if-modified-since", "garbage")]),
            None,
            Some(lm)
        ));
        assert!(
            !not_modified(
                &h(&[
                    ("if-none-match", "\"v2\""),
                    ("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT")
                ]),
                Some(&etag),
                Some(lm)
            ),
            "If-None-Match takes precedence"
        );
    }

    #[test]
    fn merge_304() {
        let stored = h(&[
            ("content-length", "5"),
            ("etag", "\"a\""),
            ("x-old", "1"),
            ("cache-control", "max-age=1"),
        ]);
        let nm = h(&[
            ("content-length", "0"),
            ("cache-control", "max-age=100"),
            ("x-new", "2"),
        ]);
        let m = merge_not_modified(&stored, &nm);
        assert_eq!(m["content-length"], "5");
        assert_eq!(m["cache-control"], "max-age=100");
        assert_eq!(m["x-old"], "1");
        assert_eq!(m["x-new"], "2");
        assert!(not_modified_matches(
            Some(&HeaderValue::from_static("\"a\"")),
            &h(&[("etag", "\"a\"")])
        ));
        assert!(!not_modified_matches(
            Some(&HeaderValue::from_static("\"a\"")),
            &h(&[("etag", "\"b\"")])
        ));
        assert!(not_modified_matches(None, &h(&[])));
    }

    #[test]
    fn merge_304_keeps_what_describes_the_stored_body() {
        let stored = h(&[
            ("content-length", "5"),
            ("content-encoding", "gzip"),
            ("content-type", "text/html; charset=utf-8"),
            ("content-md5", "Q2hlY2sgSW50ZWdyaXR5IQ=="),
            ("content-digest", "sha-256=:aaa=:"),
            ("etag", "\"a\""),
            ("cache-control", "max-age=1"),
        ]);
        let taken = |nm: &HeaderMap, name: &str| -> Option<String> {
            merge_not_modified(&stored, nm)
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
        };
        for (name, value, kept) in [
            ("content-length", "999", Some("5")),
            ("content-encoding", "br", Some("gzip")),
            ("content-encoding", "identity", Some("gzip")),
            ("content-range", "bytes 0-4/5", None),
            (
                "content-md5",
                "AAAAAAAAAAAAAAAAAAAAAA==",
                Some("Q2hlY2sgSW50ZWdyaXR5IQ=="),
            ),
            ("content-digest", "sha-256=:bbb=:", Some("sha-256=:aaa=:")),
            ("repr-digest", "sha-256=:bbb=:", None),
            ("transfer-encoding", "chunked", None),
            (
                "content-type",
                "application/json",
                Some("text/html; charset=utf-8"),
            ),
            (
                "content-type",
                "text/html; charset=latin1",
                Some("text/html; charset=utf-8"),
            ),
            (
                "content-type",
                "text/html",
                Some("text/html; charset=utf-8"),
            ),
            ("content-type", "garbage", Some("text/html; charset=utf-8")),
            // Only the spelling differs: nothing about the body changes, so the 304's is taken.
            (
                "content-type",
                "TEXT/HTML;charset=\"UTF-8\"",
                Some("TEXT/HTML;charset=\"UTF-8\""),
            ),
            // Fields that do not describe the bytes are taken.
            ("cache-control", "max-age=100", Some("max-age=100")),
            ("content-language", "de", Some("de")),
            ("content-location", "/x", Some("/x")),
            (
                "expires",
                "Thu, 01 Dec 1994 16:00:00 GMT",
                Some("Thu, 01 Dec 1994 16:00:00 GMT"),
            ),
            (
                "last-modified",
                "Thu, 01 Dec 1994 16:00:00 GMT",
                Some("Thu, 01 Dec 1994 16:00:00 GMT"),
            ),
            ("x-new", "2", Some("2")),
        ] {
            let mut nm = HeaderMap::new();
            nm.insert(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
            assert_eq!(taken(&nm, name).as_deref(), kept, "{name}: {value}");
        }
        let mut two = HeaderMap::new();
        two.append(
            "content-type",
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        two.append("content-type", HeaderValue::from_static("text/plain"));
        assert_eq!(
            taken(&two, "content-type").as_deref(),
            Some("text/html; charset=utf-8")
        );
        let no_type = h(&[("content-length", "5")]);
        let m = merge_not_modified(&no_type, &h(&[("content-type", "text/plain")]));
        assert!(
            m.get("content-type").is_none(),
            "a type the body never had is not added"
        );
    }

    #[test]
    fn head_responses_that_describe_the_stored_one() {
        let etag = HeaderValue::from_static("\"a\"");
        let lm = HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT");
        let m = |h: &HeaderMap| head_matches(Some(&etag), Some(&lm), 5, h);
        assert!(m(&h(&[])));
        assert!(m(&h(&[("etag", "\"a\""), ("content-length", "5")])));
        assert!(m(&h(&[(
            "last-modified",
            "Sunday, 06-Nov-94 08:49:37 GMT"
        )])));
        assert!(!m(&h(&[("etag", "\"b\"")])));
        assert!(!m(&h(&[("content-length", "6")])));
        assert!(!m(&h(&[(
            "last-modified",
            "Sun, 06 Nov 1994 08:49:38 GMT"
        )])));
        assert!(!head_matches(None, None, 5, &h(&[("etag", "\"a\"")])));
    }

    proptest! {
        #[test]
        fn lifetime_never_panics(cc in "[a-z=,\" 0-9-]{0,60}", exp in "\\PC{0,40}", lm in "\\PC{0,40}", now in any::<u64>()) {
            let mut m = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(&cc) { m.insert("cache-control", v); }
            if let Ok(v) = HeaderValue::from_str(&exp) { m.insert("expires", v); }
            if let Ok(v) = HeaderValue::from_str(&lm) { m.insert("last-modified", v); }
            let _ = lifetime(&m, now);
            let _ = corrected_initial_age(&m, now, Duration::from_secs(now % 1000));
        }
    }
}
