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

/// One byte range of a `Range` request field (RFC 9110 §14.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ByteRange {
    /// `first-last`, or `first-` when `last` is `None`.
    From { first: u64, last: Option<u64> },
    /// `-n`: the last `n` bytes.
    Suffix(u64),
}

impl ByteRange {
    /// The first and last byte positions within a representation of `len` bytes, or `None`
    /// when the range is not satisfiable (RFC 9110 §14.1.1).
    pub(crate) fn resolve(self, len: u64) -> Option<(u64, u64)> {
        if len == 0 {
            return None;
        }
        match self {
            Self::From { first, last } => {
                if first >= len {
                    return None;
                }
                Some((first, last.map_or(len - 1, |l| l.min(len - 1))))
            }
            Self::Suffix(0) => None,
            Self::Suffix(n) => Some((len - n.min(len), len - 1)),
        }
    }
}

/// The `Range` of a request when it is a single, well-formed byte range; `None` for several
/// lines, several ranges, other units or malformed values.
pub(crate) fn parse_byte_range(headers: &HeaderMap) -> Option<ByteRange> {
    let mut lines = headers.get_all(http::header::RANGE).iter();
    let value = lines.next()?.to_str().ok()?;
    if lines.next().is_some() {
        return None;
    }
    let (unit, set) = value.trim().split_once('=')?;
    if !unit.trim().eq_ignore_ascii_case("bytes") || set.contains(',') {
        return None;
    }
    let (first, last) = set.trim().split_once('-')?;
    let number = |s: &str| -> Option<u64> {
        if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        return number(last).map(ByteRange::Suffix);
    }
    let first = number(first)?;
    if last.is_empty() {
        return Some(ByteRange::From { first, last: None });
    }
    let last = number(last)?;
    (last >= first).then_some(ByteRange::From {
        first,
        last: Some(last),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn range(v: &'static str) -> Option<ByteRange> {
        let mut h = HeaderMap::new();
        h.insert(http::header::RANGE, HeaderValue::from_static(v));
        parse_byte_range(&h)
    }

    #[test]
    fn byte_ranges() {
        assert_eq!(range("bytes=0-1").and_then(|r| r.resolve(11)), Some((0, 1)));
        assert_eq!(
            range("Bytes = 1-").and_then(|r| r.resolve(11)),
            Some((1, 10))
        );
        assert_eq!(
            range("bytes=-1").and_then(|r| r.resolve(11)),
            Some((10, 10))
        );
        assert_eq!(
            range("bytes=-50").and_then(|r| r.resolve(11)),
            Some((0, 10))
        );
        assert_eq!(
            range("bytes=5-99").and_then(|r| r.resolve(11)),
            Some((5, 10))
        );
        assert_eq!(range("bytes=11-").and_then(|r| r.resolve(11)), None);
        assert_eq!(range("bytes=-0").and_then(|r| r.resolve(11)), None);
        assert_eq!(range("bytes=0-0").and_then(|r| r.resolve(0)), None);
        for bad in [
            "bytes=2-1",
            "bytes=0-1,3-4",
            "items=0-1",
            "bytes=a-b",
            "bytes=-",
            "bytes 0-1",
        ] {
            assert_eq!(range(bad), None, "{bad}");
        }
    }

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

        #[test]
        fn byte_range_stays_inside(set in "[0-9-]{0,24}", len in 0u64..1000) {
            let mut h = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes={set}")) {
                h.insert(http::header::RANGE, v);
            }
            if let Some((first, last)) = parse_byte_range(&h).and_then(|r| r.resolve(len)) {
                prop_assert!(first <= last && last < len);
            }
        }
    }
}
