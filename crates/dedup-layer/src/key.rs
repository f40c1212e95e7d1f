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
pub struct RequestKey(Vec<u8>);

impl RequestKey {
    /// An empty key.
    pub fn new() -> Self {
        RequestKey(Vec::new())
    }

    /// A key made of these bytes exactly.
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        RequestKey(bytes)
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

    pub(crate) fn into_bytes(self) -> Vec<u8> {
        self.0
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
}

impl<F> MakeKey for F
where
    F: Fn(&Parts) -> Option<RequestKey> + Send + Sync + 'static,
{
    fn make_key(&self, parts: &Parts) -> Option<RequestKey> {
        self(parts)
    }
}

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

fn push_header_values(key: &mut RequestKey, headers: &HeaderMap, name: &HeaderName) {
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

impl MakeKey for DefaultKey {
    fn make_key(&self, parts: &Parts) -> Option<RequestKey> {
        let mut key = RequestKey(Vec::with_capacity(128));
        key.push(parts.method.as_str().as_bytes());
        let authority = parts
            .uri
            .authority()
            .map(|a| a.as_str().as_bytes())
            .or_else(|| parts.headers.get(header::HOST).map(|h| h.as_bytes()))
            .unwrap_or_default();
        key.push(authority);
        let path_and_query = parts
            .uri
            .path_and_query()
            .map(|pq| pq.as_str())
            .unwrap_or("/");
        key.push(path_and_query.as_bytes());
        for name in self.vary.iter() {
            push_header_values(&mut key, &parts.headers, name);
        }
        if !self.share_across_credentials {
            let present = self
                .credentials
                .iter()
                .any(|name| parts.headers.contains_key(name));
            if present {
                let mut digest = RequestKey(Vec::new());
                for name in self.credentials.iter() {
                    push_header_values(&mut digest, &parts.headers, name);
                }
                key.0.push(1);
                key.0.extend_from_slice(&Sha256::digest(&digest.0));
            } else {
                key.0.push(0);
            }
        }
        Some(key)
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
}
