//! Coalescing keys: which requests are "the same" and may share one answer.
//!
//! The default key is the full request identity, never a lossy hash, so two different requests cannot meet.

use std::fmt;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, header, request::Parts};
use sha2::{Digest, Sha256};

/// The identity of a request for coalescing: opaque bytes compared in full.
///
/// Two requests share a response only when their keys are byte-for-byte equal. Keys are kept whole in the
/// in-flight map (no hash stands in for them), so a hash collision can never hand one request another's answer.
///
/// ```
/// use dedup_layer::RequestKey;
///
/// let mut key = RequestKey::new();
/// key.push(b"GET").push(b"/reports/42");
/// assert_ne!(key, RequestKey::from_bytes(b"GET/reports/42".to_vec()));
/// ```
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct RequestKey(Vec<u8>, bool);

impl RequestKey {
    /// An empty key.
    pub fn new() -> Self {
        RequestKey(Vec::new(), false)
    }

    /// A key made of these bytes exactly.
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        RequestKey(bytes, false)
    }

    /// Marks the key as identifying one user: its requests carry a credential that is part of the
    /// key, so an answer marked `Cache-Control: private` may be shared among them. Without it a
    /// `private` answer is never shared (each waiter runs its own request). [`DefaultKey`] sets it
    /// when the request carries one of its credential headers and credentials are not shared.
    pub fn per_user(&mut self) -> &mut Self {
        self.1 = true;
        self
    }

    /// Whether [`per_user`](Self::per_user) was set.
    pub fn is_per_user(&self) -> bool {
        self.1
    }

    /// Appends one length-prefixed field, so that `("ab", "c")` and `("a", "bc")` stay different.
    pub fn push(&mut self, field: &[u8]) -> &mut Self {
        let len = u32::try_from(field.len()).unwrap_or(u32::MAX);
        self.0.extend_from_slice(&len.to_be_bytes());
        self.0.extend_from_slice(&field[..len as usize]);
        self
    }

    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub(crate) fn into_parts(self) -> (Vec<u8>, bool) {
        (self.0, self.1)
    }
}

impl fmt::Debug for RequestKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key may contain a credential digest; print only its size.
        f.debug_struct("RequestKey")
            .field("len", &self.0.len())
            .finish()
    }
}

/// Computes the coalescing key of a request; `None` means "never coalesce this one".
///
/// Implemented by [`DefaultKey`] and by any `Fn(&http::request::Parts) -> Option<RequestKey>`.
///
/// ```
/// use dedup_layer::{DedupLayer, RequestKey};
///
/// // Coalesce by path only (e.g. a public, user-independent endpoint).
/// let layer = DedupLayer::builder()
///     .key_fn(|parts: &http::request::Parts| {
///         let mut key = RequestKey::new();
///         key.push(parts.uri.path().as_bytes());
///         Some(key)
///     })
///     .build()
///     .unwrap();
/// # let _ = layer;
/// ```
pub trait MakeKey: Send + Sync + 'static {
    /// The key of this request, or `None` to let it through without coalescing.
    fn make_key(&self, parts: &Parts) -> Option<RequestKey>;

    /// Whether requests with the same key always carry the same values of the request field
    /// `field`, so an answer whose `Vary` lists it may be shared among them. An answer that
    /// varies on a field the key does not cover (or says `Vary: *`) is not shared: each waiter
    /// runs its own request. Defaults to `false` for every field.
    fn covers(&self, field: &HeaderName) -> bool {
        let _ = field;
        false
    }
}

impl<F> MakeKey for F
where
    F: Fn(&Parts) -> Option<RequestKey> + Send + Sync + 'static,
{
    fn make_key(&self, parts: &Parts) -> Option<RequestKey> {
        self(parts)
    }
}

/// Request fields that ask for a part of the answer or a conditional one (`206`, `304`, `412`):
/// a request carrying any of them shares only with requests carrying the same values, since its
/// answer fits those alone. A cache above revalidating one entry sends identical conditional
/// requests, and they still coalesce.
const PER_REQUEST: [HeaderName; 6] = [
    header::RANGE,
    header::IF_RANGE,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
];

/// The default key: method, authority (URI or `Host`), path and query, the values of the varying headers,
/// and a SHA-256 digest of the credential headers.
///
/// Requests of different users (different `Authorization` or `Cookie`) get different keys unless
/// [`DedupLayerBuilder::share_across_credentials`](crate::DedupLayerBuilder::share_across_credentials) is set.
#[derive(Clone, Debug)]
pub struct DefaultKey {
    vary: Arc<[HeaderName]>,
    credentials: Arc<[HeaderName]>,
    share_across_credentials: bool,
}

impl DefaultKey {
    pub(crate) fn new(
        vary: Vec<HeaderName>,
        credentials: Vec<HeaderName>,
        share_across_credentials: bool,
    ) -> Self {
        DefaultKey {
            vary: vary.into(),
            credentials: credentials.into(),
            share_across_credentials,
        }
    }

    /// Headers whose values vary the answer by default: `Accept`, `Accept-Encoding`, `Accept-Language`.
    pub fn default_vary() -> Vec<HeaderName> {
        vec![
            header::ACCEPT,
            header::ACCEPT_ENCODING,
            header::ACCEPT_LANGUAGE,
        ]
    }

    /// Headers that identify the caller by default: `Authorization`, `Cookie`.
    pub fn default_credentials() -> Vec<HeaderName> {
        vec![header::AUTHORIZATION, header::COOKIE]
    }
}

/// Which configured headers a request carries, found in one pass over its (few) header names.
///
/// Bit `i` stands for `vary[i]`, bit `32 + j` for `credentials[j]`; names past 32 are reported present, so
/// they are looked up as usual. `host` is the `Host` value, if any.
struct Presence<'a> {
    bits: u64,
    host: Option<&'a [u8]>,
    /// One of [`PER_REQUEST`] is there.
    per_request: bool,
}

impl Presence<'_> {
    fn vary(&self, i: usize) -> bool {
        i >= 32 || self.bits & (1 << i) != 0
    }

    fn credential(&self, j: usize) -> bool {
        j >= 32 || self.bits & (1 << (32 + j)) != 0
    }
}

/// Requests with at most this many header names are scanned once instead of looked up name by name; above
/// it, lookups are cheaper.
const SCAN_AT_MOST: usize = 6;

fn push_header_values(key: &mut RequestKey, headers: &HeaderMap, name: &HeaderName, present: bool) {
    if !present {
        key.0.push(0);
        return;
    }
    let mut values = headers.get_all(name).iter().peekable();
    if values.peek().is_none() {
        // Absent differs from present-but-empty.
        key.0.push(0);
        return;
    }
    key.0.push(1);
    for value in values {
        key.push(value.as_bytes());
    }
    key.0.push(2);
}

impl DefaultKey {
    fn presence<'a>(&self, headers: &'a HeaderMap) -> Option<Presence<'a>> {
        if headers.keys_len() > SCAN_AT_MOST {
            return None;
        }
        let mut presence = Presence {
            bits: 0,
            host: None,
            per_request: false,
        };
        for (name, value) in headers {
            if name == header::HOST {
                presence.host.get_or_insert(value.as_bytes());
            }
            if PER_REQUEST.contains(name) {
                presence.per_request = true;
            }
            for (i, vary) in self.vary.iter().enumerate().take(32) {
                if vary == name {
                    presence.bits |= 1 << i;
                }
            }
            for (j, credential) in self.credentials.iter().enumerate().take(32) {
                if credential == name {
                    presence.bits |= 1 << (32 + j);
                }
            }
        }
        Some(presence)
    }
}

impl MakeKey for DefaultKey {
    fn make_key(&self, parts: &Parts) -> Option<RequestKey> {
        let headers = &parts.headers;
        let presence = self.presence(headers);
        let per_request = match &presence {
            Some(p) => p.per_request,
            None => PER_REQUEST.iter().any(|n| headers.contains_key(n)),
        };
        let mut key = RequestKey(Vec::with_capacity(128), false);
        key.push(parts.method.as_str().as_bytes());
        let authority = match (parts.uri.authority(), &presence) {
            (Some(authority), _) => authority.as_str().as_bytes(),
            (None, Some(presence)) => presence.host.unwrap_or_default(),
            (None, None) => headers
                .get(header::HOST)
                .map(|h| h.as_bytes())
                .unwrap_or_default(),
        };
        key.push(authority);
        let path_and_query = parts
            .uri
            .path_and_query()
            .map(|pq| pq.as_str())
            .unwrap_or("/");
        key.push(path_and_query.as_bytes());
        for (i, name) in self.vary.iter().enumerate() {
            let present = presence.as_ref().is_none_or(|p| p.vary(i));
            push_header_values(&mut key, headers, name, present);
        }
        if per_request {
            key.0.push(1);
            for name in &PER_REQUEST {
                push_header_values(&mut key, headers, name, true);
            }
        } else {
            key.0.push(0);
        }
        if !self.share_across_credentials {
            // Each present credential header's position and values, length-prefixed, into one digest.
            let mut digest: Option<Sha256> = None;
            for (j, name) in self.credentials.iter().enumerate() {
                if presence.as_ref().is_some_and(|p| !p.credential(j)) {
                    continue;
                }
                for value in headers.get_all(name) {
                    let hasher = digest.get_or_insert_with(Sha256::new);
                    hasher.update((j as u64).to_be_bytes());
                    hasher.update((value.len() as u64).to_be_bytes());
                    hasher.update(value.as_bytes());
                }
            }
            match digest {
                Some(hasher) => {
                    key.0.push(1);
                    key.0.extend_from_slice(&hasher.finalize());
                    key.1 = true;
                }
                None => key.0.push(0),
            }
        }
        Some(key)
    }

    fn covers(&self, field: &HeaderName) -> bool {
        self.vary.contains(field)
            || PER_REQUEST.contains(field)
            || (!self.share_across_credentials && self.credentials.contains(field))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn key_of(req: Request<()>) -> RequestKey {
        let key = DefaultKey::new(
            DefaultKey::default_vary(),
            DefaultKey::default_credentials(),
            false,
        );
        key.make_key(&req.into_parts().0).unwrap()
    }

    #[test]
    fn same_request_same_key() {
        let a = key_of(
            Request::get("/a?x=1")
                .header("accept", "text/html")
                .body(())
                .unwrap(),
        );
        let b = key_of(
            Request::get("/a?x=1")
                .header("accept", "text/html")
                .body(())
                .unwrap(),
        );
        assert_eq!(a, b);
    }

    #[test]
    fn every_component_changes_the_key() {
        let base = key_of(Request::get("/a?x=1").body(()).unwrap());
        assert_ne!(base, key_of(Request::head("/a?x=1").body(()).unwrap()));
        assert_ne!(base, key_of(Request::get("/a?x=2").body(()).unwrap()));
        assert_ne!(base, key_of(Request::get("/b?x=1").body(()).unwrap()));
        assert_ne!(
            base,
            key_of(
                Request::get("/a?x=1")
                    .header("host", "other")
                    .body(())
                    .unwrap()
            )
        );
        assert_ne!(
            base,
            key_of(
                Request::get("/a?x=1")
                    .header("accept", "")
                    .body(())
                    .unwrap()
            )
        );
        assert_ne!(
            base,
            key_of(
                Request::get("/a?x=1")
                    .header("accept-language", "fr")
                    .body(())
                    .unwrap()
            )
        );
    }

    #[test]
    fn credentials_separate_users() {
        let alice = key_of(
            Request::get("/a")
                .header("authorization", "Bearer a")
                .body(())
                .unwrap(),
        );
        let bob = key_of(
            Request::get("/a")
                .header("authorization", "Bearer b")
                .body(())
                .unwrap(),
        );
        let anon = key_of(Request::get("/a").body(()).unwrap());
        let cookie = key_of(
            Request::get("/a")
                .header("cookie", "Bearer a")
                .body(())
                .unwrap(),
        );
        assert_ne!(alice, bob);
        assert_ne!(alice, anon);
        assert_ne!(alice, cookie);
        assert_eq!(
            alice,
            key_of(
                Request::get("/a")
                    .header("authorization", "Bearer a")
                    .body(())
                    .unwrap()
            )
        );
    }

    #[test]
    fn sharing_across_credentials_ignores_them() {
        let key = DefaultKey::new(vec![], DefaultKey::default_credentials(), true);
        let a = key
            .make_key(
                &Request::get("/a")
                    .header("authorization", "x")
                    .body(())
                    .unwrap()
                    .into_parts()
                    .0,
            )
            .unwrap();
        let b = key
            .make_key(&Request::get("/a").body(()).unwrap().into_parts().0)
            .unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn fields_are_length_prefixed() {
        let mut a = RequestKey::new();
        a.push(b"ab").push(b"c");
        let mut b = RequestKey::new();
        b.push(b"a").push(b"bc");
        assert_ne!(a, b);
    }

    /// The key computed with plain lookups only: the one-pass scan must never change it.
    fn reference_key(key: &DefaultKey, parts: &Parts) -> RequestKey {
        let mut out = RequestKey::new();
        out.push(parts.method.as_str().as_bytes());
        let authority = parts
            .headers
            .get(header::HOST)
            .map(|h| h.as_bytes())
            .unwrap_or_default();
        out.push(authority);
        out.push(
            parts
                .uri
                .path_and_query()
                .map_or("/", |pq| pq.as_str())
                .as_bytes(),
        );
        for name in key.vary.iter() {
            push_header_values(&mut out, &parts.headers, name, true);
        }
        if PER_REQUEST.iter().any(|n| parts.headers.contains_key(n)) {
            out.0.push(1);
            for name in &PER_REQUEST {
                push_header_values(&mut out, &parts.headers, name, true);
            }
        } else {
            out.0.push(0);
        }
        let mut digest: Option<Sha256> = None;
        for (j, name) in key.credentials.iter().enumerate() {
            for value in parts.headers.get_all(name) {
                let hasher = digest.get_or_insert_with(Sha256::new);
                hasher.update((j as u64).to_be_bytes());
                hasher.update((value.len() as u64).to_be_bytes());
                hasher.update(value.as_bytes());
            }
        }
        match digest {
            Some(hasher) => {
                out.0.push(1);
                out.0.extend_from_slice(&hasher.finalize());
                out.1 = true;
            }
            None => out.0.push(0),
        }
        out
    }

    proptest::proptest! {
        #[test]
        fn scanning_few_headers_gives_the_lookup_key(
            headers in proptest::collection::vec((0usize..11, "[a-z0-9]{0,3}"), 0..14)
        ) {
            const NAMES: [&str; 11] = [
                "host", "accept", "accept-encoding", "accept-language", "authorization", "cookie",
                "x-a", "x-b", "x-c", "x-d", "range",
            ];
            let mut req = Request::get("/p?q=1");
            for (name, value) in &headers {
                req = req.header(NAMES[*name], value.as_str());
            }
            let parts = req.body(()).unwrap().into_parts().0;
            let key = DefaultKey::new(DefaultKey::default_vary(), DefaultKey::default_credentials(), false);
            proptest::prop_assert_eq!(key.make_key(&parts).unwrap(), reference_key(&key, &parts));
        }
    }
}
