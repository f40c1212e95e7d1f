//! Cache keys: which stored responses a request may be answered from.
//!
//! The default key is `scheme://authority/path?query`; a user function can replace it.

use std::fmt;
use std::sync::Arc;

use http::header::HOST;
use http::request::Parts;
use http::{Method, Request, Uri};

/// A function from a request to its cache key; `None` bypasses the cache for that request.
///
/// The method is not part of the key: only `GET` responses are stored and `HEAD` reads them.
pub type KeyFn = Arc<dyn Fn(&Parts) -> Option<String> + Send + Sync>;

/// How keys are made.
#[derive(Clone)]
pub(crate) enum KeyMaker {
    Default { ignored_query: Arc<[String]> },
    Custom(KeyFn),
}

impl fmt::Debug for KeyMaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Default { ignored_query } => f
                .debug_struct("Default")
                .field("ignored_query", ignored_query)
                .finish(),
            Self::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

impl KeyMaker {
    pub(crate) fn key(&self, parts: &Parts) -> Option<String> {
        let mut out = String::new();
        self.key_into(parts, &mut out).then_some(out)
    }

    /// Writes the key into `out` (cleared first); false when the request bypasses the cache.
    pub(crate) fn key_into(&self, parts: &Parts, out: &mut String) -> bool {
        out.clear();
        match self {
            Self::Default { ignored_query } => default_key_into(parts, ignored_query, out),
            Self::Custom(f) => match f(parts) {
                Some(k) => {
                    *out = k;
                    true
                }
                None => false,
            },
        }
    }

    /// The key a `GET` of `uri` would have; relative URIs take the authority of `base`.
    pub(crate) fn key_for_uri(&self, uri: &Uri, base: Option<&Parts>) -> Option<String> {
        let mut builder = Request::builder().method(Method::GET).uri(uri.clone());
        let host = uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| base.and_then(|b| authority_of(b).map(str::to_owned)));
        if let Some(h) = host {
            builder = builder.header(HOST, h);
        }
        if let Some(b) = base {
            for (name, value) in &b.headers {
                if name != HOST {
                    builder = builder.header(name, value);
                }
            }
        }
        let (mut parts, ()) = builder.body(()).ok()?.into_parts();
        if uri.scheme().is_none()
            && let Some(scheme) = base.and_then(|b| b.uri.scheme().cloned())
        {
            let mut p = parts.uri.clone().into_parts();
            p.scheme = Some(scheme);
            if p.authority.is_none() {
                p.authority = base.and_then(|b| b.uri.authority().cloned());
            }
            if p.path_and_query.is_none() {
                p.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
            }
            if let Ok(u) = Uri::from_parts(p) {
                parts.uri = u;
            }
        }
        self.key(&parts)
    }
}

/// The authority a request is addressed to: the URI's, else the `Host` field.
pub(crate) fn authority_of(parts: &Parts) -> Option<&str> {
    parts
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| parts.headers.get(HOST).and_then(|h| h.to_str().ok()))
}

/// `scheme://authority/path?query` with the authority lowercased and the listed query
/// parameters removed.
#[cfg(test)]
pub(crate) fn default_key(parts: &Parts, ignored_query: &[String]) -> String {
    let mut key = String::new();
    default_key_into(parts, ignored_query, &mut key);
    key
}

/// Whether every byte may appear in a URI authority (RFC 3986 §3.2). A `Host` field with `/`,
/// `?`, `#` or spaces would let one URL's key spell another's (`Host: a/b` + `/c` against
/// `Host: a` + `/b/c`), so such requests bypass the cache.
fn is_authority(s: &str) -> bool {
    s.bytes().all(|b| AUTHORITY_BYTES[usize::from(b)])
}

/// The bytes of a URI authority: unreserved, sub-delims, `%`, `:`, `@`, `[` and `]`. A table, because the
/// check runs on every cached request.
static AUTHORITY_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'@'
                    | b'['
                    | b']'
            );
        b += 1;
    }
    table
};

/// Writes the default key; false when the request's authority is not one.
fn default_key_into(parts: &Parts, ignored_query: &[String], key: &mut String) -> bool {
    let scheme = parts.uri.scheme_str().unwrap_or("http");
    let authority = authority_of(parts).unwrap_or("");
    if !is_authority(authority) {
        return false;
    }
    let path = parts.uri.path();
    let query = parts.uri.query().unwrap_or("");
    key.reserve(scheme.len() + 3 + authority.len() + path.len() + query.len() + 2);
    key.push_str(scheme);
    key.push_str("://");
    let host_start = key.len();
    key.push_str(authority);
    key[host_start..].make_ascii_lowercase();
    key.push_str(if path.is_empty() { "/" } else { path });
    if query.is_empty() {
        return true;
    }
    if ignored_query.is_empty() {
        key.push('?');
        key.push_str(query);
        return true;
    }
    let mut first = true;
    for pair in query.split('&') {
        let name = pair.split('=').next().unwrap_or("");
        if ignored_query.iter().any(|i| i == name) {
            continue;
        }
        key.push(if first { '?' } else { '&' });
        key.push_str(pair);
        first = false;
    }
    true
}

thread_local! {
    static KEY_BUFFER: std::cell::Cell<String> = const { std::cell::Cell::new(String::new()) };
}

/// A key buffer reused across requests on this thread, so a hit allocates no key.
pub(crate) fn take_buffer() -> String {
    KEY_BUFFER.with(|b| b.take())
}

/// Returns a buffer for reuse (dropped when it grew unusually large).
pub(crate) fn recycle_buffer(buf: String) {
    if buf.capacity() <= 4096 {
        KEY_BUFFER.with(|b| b.set(buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, host: Option<&str>) -> Parts {
        let mut b = Request::builder().uri(uri);
        if let Some(h) = host {
            b = b.header(HOST, h);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn default_key_shapes() {
        assert_eq!(
            default_key(&parts("/a?b=1", Some("Example.COM")), &[]),
            "http://example.com/a?b=1"
        );
        assert_eq!(
            default_key(&parts("https://h:8080/x", None), &[]),
            "https://h:8080/x"
        );
        assert_eq!(default_key(&parts("/", None), &[]), "http:///");
        let ignored = vec!["utm_source".to_owned(), "fbclid".to_owned()];
        assert_eq!(
            default_key(
                &parts("/p?a=1&utm_source=x&b=2&fbclid", Some("h")),
                &ignored
            ),
            "http://h/p?a=1&b=2"
        );
        assert_eq!(
            default_key(&parts("/p?utm_source=x", Some("h")), &ignored),
            "http://h/p"
        );
    }

    #[test]
    fn keys_for_related_uris() {
        let maker = KeyMaker::Default {
            ignored_query: Arc::from(Vec::new()),
        };
        let base = parts("/posts", Some("h"));
        let rel: Uri = "/posts/1".parse().unwrap();
        assert_eq!(
            maker.key_for_uri(&rel, Some(&base)).as_deref(),
            Some("http://h/posts/1")
        );
        let abs: Uri = "http://other/x".parse().unwrap();
        assert_eq!(
            maker.key_for_uri(&abs, Some(&base)).as_deref(),
            Some("http://other/x")
        );
    }
}
