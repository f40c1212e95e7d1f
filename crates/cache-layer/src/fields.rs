//! Parsers for list-valued fields the cache compares: `Vary` (RFC 9110 §12.5.5) and entity-tag
//! lists of `If-None-Match` (RFC 9110 §13.1.2), plus header value normalisation for `Vary`.
//!
//! Malformed members are skipped; nothing here panics.

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};

/// Most field names a stored `Vary` may list; a response varying on more is not stored.
pub(crate) const MAX_VARY_FIELDS: usize = 16;

/// The parsed `Vary` of a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Vary {
    /// No `Vary` field, or an empty one.
    None,
    /// `Vary: *`: the response never matches a later request.
    Star,
    /// The listed (lowercased, deduplicated) field names.
    Fields(Vec<HeaderName>),
    /// More names than [`MAX_VARY_FIELDS`] or names that are not valid field names.
    Unusable,
}

pub(crate) fn parse_vary(headers: &HeaderMap) -> Vary {
    let mut names: Vec<HeaderName> = Vec::new();
    for value in headers.get_all(http::header::VARY) {
        let Ok(s) = value.to_str() else {
            return Vary::Unusable;
        };
        for member in s.split(',') {
            let member = member.trim_matches(|c: char| c == ' ' || c == '\t');
            if member.is_empty() {
                continue;
            }
            if member == "*" {
                return Vary::Star;
            }
            let Ok(name) = HeaderName::from_bytes(member.as_bytes()) else {
                return Vary::Unusable;
            };
            if !names.contains(&name) {
                if names.len() == MAX_VARY_FIELDS {
                    return Vary::Unusable;
                }
                names.push(name);
            }
        }
    }
    if names.is_empty() {
        Vary::None
    } else {
        Vary::Fields(names)
    }
}

/// The normalised value of every line of `name` in `headers`, or `None` when absent.
///
/// Lines are joined with `", "`; each member is trimmed and runs of whitespace collapse to a
/// single space, so `"gzip,  br"` and `"gzip, br"` select the same variant. Fields made of
/// case-insensitive tokens (`Accept-Language`, `Accept-Encoding`) are also lowercased; the
/// order of members is kept, since an origin may prefer the first one listed.
pub(crate) fn normalized_value(headers: &HeaderMap, name: &HeaderName) -> Option<Box<[u8]>> {
    let mut iter = headers.get_all(name).iter().peekable();
    iter.peek()?;
    let mut out: Vec<u8> = Vec::new();
    for line in iter {
        for member in line.as_bytes().split(|b| *b == b',') {
            let trimmed = trim_ows(member);
            if trimmed.is_empty() {
                continue;
            }
            if !out.is_empty() {
                out.extend_from_slice(b", ");
            }
            let mut prev_space = false;
            for &b in trimmed {
                if b == b' ' || b == b'\t' {
                    if !prev_space {
                        out.push(b' ');
                    }
                    prev_space = true;
                } else {
                    out.push(b);
                    prev_space = false;
                }
            }
        }
    }
    if name == http::header::ACCEPT_LANGUAGE || name == http::header::ACCEPT_ENCODING {
        out.make_ascii_lowercase();
    }
    Some(out.into_boxed_slice())
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// An entity-tag (RFC 9110 §8.8.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EntityTag<'a> {
    pub(crate) weak: bool,
    /// The opaque tag without its quotes.
    pub(crate) tag: &'a str,
}

impl EntityTag<'_> {
    /// Weak comparison: opaque tags equal, weakness ignored.
    pub(crate) fn weak_eq(&self, other: &EntityTag<'_>) -> bool {
        self.tag == other.tag
    }

    /// Strong comparison: both strong and opaque tags equal.
    #[cfg(test)]
    pub(crate) fn strong_eq(&self, other: &EntityTag<'_>) -> bool {
        !self.weak && !other.weak && self.tag == other.tag
    }
}

/// Parses one entity-tag; `None` when malformed.
pub(crate) fn parse_etag(s: &str) -> Option<EntityTag<'_>> {
    let s = s.trim_matches(|c: char| c == ' ' || c == '\t');
    let (weak, rest) = match s.strip_prefix("W/") {
        Some(r) => (true, r),
        None => (false, s),
    };
    let inner = rest.strip_prefix('"')?.strip_suffix('"')?;
    if inner.bytes().any(|b| b == b'"' || b < 0x21 || b == 0x7f) {
        return None;
    }
    Some(EntityTag { weak, tag: inner })
}

/// The parsed `If-None-Match` (or `If-Match`) of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EtagList<'a> {
    /// `*`.
    Any,
    /// The well-formed entity-tags listed.
    Tags(Vec<EntityTag<'a>>),
}

/// Parses an entity-tag list; `None` when absent or when no member is well-formed.
pub(crate) fn parse_etag_list(value: &HeaderValue) -> Option<EtagList<'_>> {
    let s = value.to_str().ok()?;
    if s.trim() == "*" {
        return Some(EtagList::Any);
    }
    let mut tags = Vec::new();
    let mut rest = s;
    // Entity-tags may contain commas inside quotes, so walk quote by quote.
    while let Some(start) = rest.find('"') {
        let prefix = &rest[..start];
        let weak = prefix.trim_end().ends_with("W/");
        let after = &rest[start + 1..];
        let Some(end) = after.find('"') else {
            break;
        };
        let tag = &after[..end];
        if !tag.bytes().any(|b| b < 0x21 || b == 0x7f) {
            tags.push(EntityTag { weak, tag });
        }
        rest = &after[end + 1..];
        if tags.len() >= 64 {
            break;
        }
    }
    if tags.is_empty() {
        None
    } else {
        Some(EtagList::Tags(tags))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn vary_variants() {
        let mut h = HeaderMap::new();
        assert_eq!(parse_vary(&h), Vary::None);
        h.insert(
            "vary",
            HeaderValue::from_static("Accept-Encoding, accept-language"),
        );
        h.append("vary", HeaderValue::from_static("ACCEPT-ENCODING"));
        assert_eq!(
            parse_vary(&h),
            Vary::Fields(vec![
                HeaderName::from_static("accept-encoding"),
                HeaderName::from_static("accept-language")
            ])
        );
        h.append("vary", HeaderValue::from_static("*"));
        assert_eq!(parse_vary(&h), Vary::Star);
        h.insert("vary", HeaderValue::from_static("a b"));
        assert_eq!(parse_vary(&h), Vary::Unusable);
    }

    #[test]
    fn huge_vary_is_unusable() {
        let list: Vec<String> = (0..100).map(|i| format!("x-h{i}")).collect();
        let mut h = HeaderMap::new();
        h.insert("vary", HeaderValue::from_str(&list.join(",")).unwrap());
        assert_eq!(parse_vary(&h), Vary::Unusable);
    }

    #[test]
    fn normalisation() {
        let n = HeaderName::from_static("accept-encoding");
        let mut a = HeaderMap::new();
        a.insert(&n, HeaderValue::from_static("  gzip,   br  "));
        let mut b = HeaderMap::new();
        b.insert(&n, HeaderValue::from_static("gzip"));
        b.append(&n, HeaderValue::from_static("br"));
        assert_eq!(normalized_value(&a, &n), normalized_value(&b, &n));
        let mut c = HeaderMap::new();
        c.insert(&n, HeaderValue::from_static("x  \t y"));
        assert_eq!(normalized_value(&c, &n).as_deref(), Some(&b"x y"[..]));
        assert_eq!(normalized_value(&HeaderMap::new(), &n), None);
        let l = HeaderName::from_static("accept-language");
        let mut d = HeaderMap::new();
        d.insert(&l, HeaderValue::from_static("eN, De"));
        assert_eq!(normalized_value(&d, &l).as_deref(), Some(&b"en, de"[..]));
        let x = HeaderName::from_static("x-custom");
        let mut e = HeaderMap::new();
        e.insert(&x, HeaderValue::from_static("Ab"));
        assert_eq!(normalized_value(&e, &x).as_deref(), Some(&b"Ab"[..]));
    }

    #[test]
    fn etags() {
        assert_eq!(
            parse_etag("W/\"x\""),
            Some(EntityTag {
                weak: true,
                tag: "x"
            })
        );
        assert_eq!(parse_etag("\"x"), None);
        assert_eq!(parse_etag("x"), None);
        let v = HeaderValue::from_static("\"a\", W/\"b,c\" , \"d\"");
        match parse_etag_list(&v).unwrap() {
            EtagList::Tags(t) => {
                assert_eq!(t.len(), 3);
                assert_eq!(t[1].tag, "b,c");
                assert!(t[1].weak);
            }
            EtagList::Any => panic!("not any"),
        }
        assert_eq!(
            parse_etag_list(&HeaderValue::from_static(" * ")),
            Some(EtagList::Any)
        );
        assert_eq!(parse_etag_list(&HeaderValue::from_static("garbage")), None);
        let a = parse_etag("W/\"1\"").unwrap();
        let b = parse_etag("\"1\"").unwrap();
        assert!(a.weak_eq(&b));
        assert!(!a.strong_eq(&b));
        assert!(b.strong_eq(&b));
    }

    proptest! {
        #[test]
        fn etag_list_never_panics(bytes in proptest::collection::vec(0x20u8..0x7f, 0..200)) {
            if let Ok(v) = HeaderValue::from_bytes(&bytes) {
                let _ = parse_etag_list(&v);
                if let Ok(s) = v.to_str() { let _ = parse_etag(s); }
            }
        }

        #[test]
        fn vary_never_panics(bytes in proptest::collection::vec(0x20u8..0xff, 0..300)) {
            if let Ok(v) = HeaderValue::from_bytes(&bytes) {
                let mut h = HeaderMap::new();
                h.insert("vary", v.clone());
                let _ = parse_vary(&h);
                h.insert("accept", v);
                let _ = normalized_value(&h, &HeaderName::from_static("accept"));
            }
        }
    }
}
