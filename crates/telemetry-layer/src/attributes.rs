//! Low-cardinality attribute values derived from a request: method, scheme and protocol version.
//!
//! Every value is a `&'static str`, so labelling a request never allocates.

use http::{Method, Version};

use crate::names::OTHER_METHOD;

/// A request method as the semantic conventions label it: the nine RFC 9110/5789 methods, else `_OTHER`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum MethodLabel {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Connect,
    Options,
    Trace,
    Patch,
    Other,
}

impl MethodLabel {
    pub(crate) const COUNT: usize = 10;

    pub(crate) fn of(method: &Method) -> Self {
        match *method {
            Method::GET => Self::Get,
            Method::HEAD => Self::Head,
            Method::POST => Self::Post,
            Method::PUT => Self::Put,
            Method::DELETE => Self::Delete,
            Method::CONNECT => Self::Connect,
            Method::OPTIONS => Self::Options,
            Method::TRACE => Self::Trace,
            Method::PATCH => Self::Patch,
            _ => Self::Other,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Head => "HEAD",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Delete => "DELETE",
            Self::Connect => "CONNECT",
            Self::Options => "OPTIONS",
            Self::Trace => "TRACE",
            Self::Patch => "PATCH",
            Self::Other => OTHER_METHOD,
        }
    }

    /// The method part of a span name: `HTTP` stands in for unknown methods.
    pub(crate) fn span_name(self) -> &'static str {
        match self {
            Self::Other => "HTTP",
            known => known.as_str(),
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// `url.scheme`: only two values, so a forged header cannot create new series.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    pub(crate) fn parse(value: &[u8]) -> Option<Self> {
        if value.eq_ignore_ascii_case(b"https") {
            Some(Self::Https)
        } else if value.eq_ignore_ascii_case(b"http") {
            Some(Self::Http)
        } else {
            None
        }
    }
}

/// `network.protocol.version` of a request.
pub(crate) fn protocol_version(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_11 => "1.1",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "_OTHER",
    }
}

/// Query parameters whose values the semantic conventions redact even when query recording is allowed.
const REDACTED_QUERY_KEYS: &[&str] = &[
    "AWSAccessKeyId",
    "Signature",
    "sig",
    "X-Goog-Signature",
    "X-Amz-Signature",
    "X-Amz-Credential",
    "X-Amz-Security-Token",
];

/// The query string with the values of signature-like parameters replaced by `REDACTED`.
pub(crate) fn redact_query(query: &str) -> String {
    let mut out = String::with_capacity(query.len());
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        match pair.split_once('=') {
            Some((key, _))
                if REDACTED_QUERY_KEYS
                    .iter()
                    .any(|k| k.eq_ignore_ascii_case(key)) =>
            {
                out.push_str(key);
                out.push_str("=REDACTED");
            }
            _ => out.push_str(pair),
        }
    }
    out
}

/// The span name `{method} {route}` (or `{method}` alone), assembled on the stack for the usual route
/// lengths, so naming a span costs one copy instead of a formatting pass and a growing `String`.
pub(crate) struct SpanName {
    buf: [u8; SPAN_NAME_INLINE],
    len: usize,
    long: Option<String>,
}

const SPAN_NAME_INLINE: usize = 128;

impl SpanName {
    pub(crate) fn new(method: MethodLabel, route: Option<&str>) -> Self {
        let method = method.span_name();
        let mut name = Self {
            buf: [0; SPAN_NAME_INLINE],
            len: 0,
            long: None,
        };
        match route {
            None => name.push(method),
            Some(route) if method.len() + 1 + route.len() <= SPAN_NAME_INLINE => {
                name.push(method);
                name.push(" ");
                name.push(route);
            }
            Some(route) => name.long = Some(format!("{method} {route}")),
        }
        name
    }

    fn push(&mut self, part: &str) {
        let end = self.len + part.len();
        self.buf[self.len..end].copy_from_slice(part.as_bytes());
        self.len = end;
    }

    pub(crate) fn as_str(&self) -> &str {
        match &self.long {
            Some(long) => long,
            // Whole `&str`s were copied in, so the bytes are UTF-8.
            None => std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_methods_are_other() {
        let purge = Method::from_bytes(b"PURGE").unwrap();
        assert_eq!(MethodLabel::of(&purge).as_str(), "_OTHER");
        assert_eq!(MethodLabel::of(&purge).span_name(), "HTTP");
        assert_eq!(MethodLabel::of(&Method::PATCH).as_str(), "PATCH");
    }

    #[test]
    fn method_indexes_are_dense() {
        assert_eq!(MethodLabel::Other.index(), MethodLabel::COUNT - 1);
    }

    #[test]
    fn signature_values_are_redacted() {
        assert_eq!(
            redact_query("a=1&sig=secret&X-Amz-Signature=abc&b"),
            "a=1&sig=REDACTED&X-Amz-Signature=REDACTED&b"
        );
    }

    #[test]
    fn scheme_parse_accepts_only_http_and_https() {
        assert_eq!(Scheme::parse(b"HTTPS"), Some(Scheme::Https));
        assert_eq!(Scheme::parse(b"gopher"), None);
    }
}
