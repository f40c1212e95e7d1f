//! Parsers for `Cache-Control` (RFC 9111 §5.2), targeted cache control such as
//! `CDN-Cache-Control` (RFC 9213), `Surrogate-Control` (W3C Edge Architecture 1.0) and
//! `Pragma`, tolerant of any input.
//!
//! Nothing here panics. Unknown directives are ignored; a directive whose argument is malformed
//! (including whitespace around `=`, which the grammar of RFC 9111 §5.2 has no room for) is
//! treated conservatively: a bad `max-age`/`s-maxage` makes the response stale (RFC 9111 §5.2
//! encourages that for invalid freshness information), a bad `stale-*` window is absent. A
//! response's `max-age`/`s-maxage` given twice takes its first occurrence (RFC 9111 §4.2.1);
//! other repeated directives take the smaller (more conservative) value.

use http::HeaderMap;
use http::header::{CACHE_CONTROL, HeaderName, PRAGMA};

/// Delta-seconds larger than this are clamped to it (RFC 9111 §1.2.2: 2^31).
pub(crate) const DELTA_SECONDS_MAX: u64 = 2_147_483_648;

/// Largest number of directives read from one message; the rest is ignored.
const MAX_DIRECTIVES: usize = 64;

/// One `name[=value]` item of a cache-control list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Directive<'a> {
    /// Directive name, as received (compare with `eq_ignore_ascii_case`).
    pub(crate) name: &'a str,
    /// Unquoted argument, if any.
    pub(crate) value: Option<std::borrow::Cow<'a, str>>,
}

/// Splits a cache-control field value into directives. Commas inside quoted strings do not split.
pub(crate) fn split_directives(input: &str) -> impl Iterator<Item = Directive<'_>> {
    let mut rest = input;
    std::iter::from_fn(move || {
        loop {
            if rest.is_empty() {
                return None;
            }
            let (item, next) = split_item(rest);
            rest = next;
            if let Some(d) = parse_item(item) {
                return Some(d);
            }
        }
    })
    .take(MAX_DIRECTIVES)
}

/// Returns the text up to the next comma that is not inside a quoted string, and the rest.
fn split_item(input: &str) -> (&str, &str) {
    let bytes = input.as_bytes();
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, &b) in bytes.iter().enumerate() {
        if in_quotes {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_quotes = false;
            }
        } else if b == b'"' {
            in_quotes = true;
        } else if b == b',' {
            return (&input[..i], &input[i + 1..]);
        }
    }
    (input, "")
}

fn parse_item(item: &str) -> Option<Directive<'_>> {
    let item = item.trim_matches(|c: char| c == ' ' || c == '\t');
    if item.is_empty() {
        return None;
    }
    let (name, value) = match item.find('=') {
        Some(i) => (&item[..i], Some(&item[i + 1..])),
        None => (item, None),
    };
    let is_ws = |c: char| c == ' ' || c == '\t';
    // `name = value` is outside the grammar: the directive counts, its argument is malformed.
    let spaced =
        value.is_some() && (name.ends_with(is_ws) || value.is_some_and(|v| v.starts_with(is_ws)));
    let name = name.trim_matches(is_ws);
    if name.is_empty() || !name.bytes().all(is_tchar) {
        return None;
    }
    let value = if spaced {
        Some(std::borrow::Cow::Borrowed(""))
    } else {
        value.map(|v| unquote(v.trim_end_matches(is_ws)))
    };
    Some(Directive { name, value })
}

pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Removes the quotes and backslash escapes of a quoted-string; returns tokens unchanged.
fn unquote(v: &str) -> std::borrow::Cow<'_, str> {
    let Some(inner) = v.strip_prefix('"') else {
        return std::borrow::Cow::Borrowed(v);
    };
    let inner = inner.strip_suffix('"').unwrap_or(inner);
    if !inner.contains('\\') {
        return std::borrow::Cow::Borrowed(inner);
    }
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Parses delta-seconds (`1*DIGIT`), clamping large values to 2^31.
pub(crate) fn parse_delta_seconds(v: &str) -> Option<u64> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut n: u64 = 0;
    for b in v.bytes() {
        n = n.saturating_mul(10).saturating_add(u64::from(b - b'0'));
        if n > DELTA_SECONDS_MAX {
            return Some(DELTA_SECONDS_MAX);
        }
    }
    Some(n)
}

/// Keeps the first occurrence of a delta-seconds directive (RFC 9111 §4.2.1); a malformed one
/// counts as 0.
fn first_seconds(slot: &mut Option<u64>, value: Option<&str>) {
    if slot.is_none() {
        *slot = Some(value.and_then(parse_delta_seconds).unwrap_or(0));
    }
}

/// Merges a repeated delta-seconds directive: the smaller value wins, a malformed one counts as 0.
fn merge_seconds(slot: &mut Option<u64>, value: Option<&str>, malformed_as: Option<u64>) {
    let parsed = value.and_then(parse_delta_seconds).or(malformed_as);
    if let Some(v) = parsed {
        *slot = Some(slot.map_or(v, |old| old.min(v)));
    }
}

/// The response directives a cache acts on (RFC 9111 §5.2.2, RFC 5861, RFC 8246).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseDirectives {
    /// `max-age` in seconds: the first occurrence, a malformed value reads as 0.
    pub max_age: Option<u64>,
    /// `s-maxage` in seconds: the first occurrence, a malformed value reads as 0.
    pub s_maxage: Option<u64>,
    /// `no-store`.
    pub no_store: bool,
    /// `no-cache`, in the plain or the field-qualified form (both force revalidation here).
    pub no_cache: bool,
    /// `private`, in the plain or the field-qualified form (a shared cache stores neither).
    pub private: bool,
    /// `public`.
    pub public: bool,
    /// `must-revalidate`.
    pub must_revalidate: bool,
    /// `proxy-revalidate`.
    pub proxy_revalidate: bool,
    /// `must-understand`.
    pub must_understand: bool,
    /// `no-transform`.
    pub no_transform: bool,
    /// `immutable` (RFC 8246).
    pub immutable: bool,
    /// `stale-while-revalidate` window in seconds (RFC 5861).
    pub stale_while_revalidate: Option<u64>,
    /// `stale-if-error` window in seconds (RFC 5861).
    pub stale_if_error: Option<u64>,
}

impl ResponseDirectives {
    /// Parses every `Cache-Control` line of `headers`.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        Self::from_field(headers, &CACHE_CONTROL)
    }

    /// Parses every line of the field `name`.
    pub fn from_field(headers: &HeaderMap, name: &HeaderName) -> Self {
        let mut out = Self::default();
        for value in headers.get_all(name) {
            if let Ok(s) = value.to_str() {
                out.parse_into(s);
            }
        }
        out
    }

    /// Parses one field value.
    pub fn parse(value: &str) -> Self {
        let mut out = Self::default();
        out.parse_into(value);
        out
    }

    fn parse_into(&mut self, value: &str) {
        for d in split_directives(value) {
            let v = d.value.as_deref();
            let n = d.name;
            if n.eq_ignore_ascii_case("max-age") {
                first_seconds(&mut self.max_age, v);
            } else if n.eq_ignore_ascii_case("s-maxage") {
                first_seconds(&mut self.s_maxage, v);
            } else if n.eq_ignore_ascii_case("no-store") {
                self.no_store = true;
            } else if n.eq_ignore_ascii_case("no-cache") {
                self.no_cache = true;
            } else if n.eq_ignore_ascii_case("private") {
                self.private = true;
            } else if n.eq_ignore_ascii_case("public") {
                self.public = true;
            } else if n.eq_ignore_ascii_case("must-revalidate") {
                self.must_revalidate = true;
            } else if n.eq_ignore_ascii_case("proxy-revalidate") {
                self.proxy_revalidate = true;
            } else if n.eq_ignore_ascii_case("must-understand") {
                self.must_understand = true;
            } else if n.eq_ignore_ascii_case("no-transform") {
                self.no_transform = true;
            } else if n.eq_ignore_ascii_case("immutable") {
                self.immutable = true;
            } else if n.eq_ignore_ascii_case("stale-while-revalidate") {
                merge_seconds(&mut self.stale_while_revalidate, v, None);
            } else if n.eq_ignore_ascii_case("stale-if-error") {
                merge_seconds(&mut self.stale_if_error, v, None);
            }
        }
    }

    /// Parses the targeted field (RFC 9213) when it is present, valid and non-empty.
    ///
    /// Targeted fields are Structured Field Dictionaries: member names are lowercase keys and
    /// values are integers, tokens or strings. A field that does not parse as such is ignored
    /// as a whole, as RFC 9213 §2.1 requires.
    pub fn targeted(headers: &HeaderMap, name: &HeaderName) -> Option<Self> {
        let mut lines = headers.get_all(name).iter().peekable();
        lines.peek()?;
        let mut joined = String::new();
        for line in lines {
            let s = line.to_str().ok()?;
            if !joined.is_empty() {
                joined.push(',');
            }
            joined.push_str(s);
        }
        if !is_valid_sf_dictionary(&joined) || !durations_are_integers(&joined) {
            return None;
        }
        let parsed = Self::parse(&joined);
        if parsed == Self::default() && joined.trim().is_empty() {
            return None;
        }
        Some(parsed)
    }
}

impl ResponseDirectives {
    /// Parses `Surrogate-Control` (W3C Edge Architecture 1.0) as seen by the surrogate whose
    /// device token is `device`, when the field is present, well-formed and has at least one
    /// directive for that surrogate.
    ///
    /// Directives are `no-store`, `no-store-remote` (read as `no-store`: a cache cannot tell
    /// whether it is remote, and not storing is always allowed), `max-age=N` and
    /// `max-age=N+M` (M seconds of serving stale when the origin fails, read as
    /// `stale-if-error=M`); others (`content=`, extensions) are ignored. A directive may end
    /// in `;token` to address one device: it applies only when `token` equals `device`
    /// (ASCII case-insensitively) and then overrides the untargeted directive of the same
    /// kind. A malformed `max-age` makes the whole field invalid, like a malformed targeted
    /// field (RFC 9213 §2.1), so the next field in priority order applies.
    pub fn surrogate(headers: &HeaderMap, name: &HeaderName, device: Option<&str>) -> Option<Self> {
        let mut general = SurrogateDirectives::default();
        let mut targeted = SurrogateDirectives::default();
        let mut any_line = false;
        for line in headers.get_all(name) {
            any_line = true;
            let line = line.to_str().ok()?;
            let mut rest = line;
            let mut items = 0usize;
            while !rest.is_empty() {
                let (item, next) = split_item(rest);
                rest = next;
                let item = item.trim_matches(|c: char| c == ' ' || c == '\t');
                if item.is_empty() {
                    continue;
                }
                items += 1;
                if items > MAX_DIRECTIVES {
                    break;
                }
                let (control, token) = match item.split_once(';') {
                    Some((c, t)) => (c.trim_end(), Some(t.trim())),
                    None => (item, None),
                };
                if let Some(t) = token
                    && (t.is_empty() || !t.bytes().all(is_tchar))
                {
                    return None;
                }
                let slot = match token {
                    None => &mut general,
                    Some(t) if device.is_some_and(|d| d.eq_ignore_ascii_case(t)) => &mut targeted,
                    // Addressed to another device: not ours, but still checked for syntax.
                    Some(_) => &mut SurrogateDirectives::default(),
                };
                slot.apply(control)?;
            }
        }
        if !any_line {
            return None;
        }
        let merged = general.overridden_by(targeted);
        if !merged.any {
            return None;
        }
        Some(Self {
            max_age: merged.max_age,
            no_store: merged.no_store,
            stale_if_error: merged.stale_if_error,
            ..Self::default()
        })
    }
}

/// The directives of `Surrogate-Control` addressed to one scope (every device, or this one).
#[derive(Debug, Default, Clone, Copy)]
struct SurrogateDirectives {
    max_age: Option<u64>,
    stale_if_error: Option<u64>,
    no_store: bool,
    /// Whether any directive, known or not, addressed this scope.
    any: bool,
}

impl SurrogateDirectives {
    /// Reads one control directive; `None` when it is malformed.
    fn apply(&mut self, control: &str) -> Option<()> {
        let (name, value) = match control.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (control, None),
        };
        if name.is_empty() || !name.bytes().all(is_tchar) {
            return None;
        }
        self.any = true;
        if name.eq_ignore_ascii_case("no-store") || name.eq_ignore_ascii_case("no-store-remote") {
            self.no_store = true;
        } else if name.eq_ignore_ascii_case("max-age") {
            let v = value?;
            let (fresh, stale) = match v.split_once('+') {
                Some((f, s)) => (f, Some(s)),
                None => (v, None),
            };
            let fresh = parse_delta_seconds(fresh)?;
            let stale = match stale {
                Some(s) => Some(parse_delta_seconds(s)?),
                None => None,
            };
            // The first max-age of a scope counts, as in Cache-Control (RFC 9111 §4.2.1).
            if self.max_age.is_none() {
                self.max_age = Some(fresh);
                self.stale_if_error = stale;
            }
        }
        Some(())
    }

    fn overridden_by(self, device: SurrogateDirectives) -> SurrogateDirectives {
        if !device.any {
            return self;
        }
        let (max_age, stale_if_error) = if device.max_age.is_some() {
            (device.max_age, device.stale_if_error)
        } else {
            (self.max_age, self.stale_if_error)
        };
        SurrogateDirectives {
            max_age,
            stale_if_error,
            no_store: self.no_store || device.no_store,
            any: true,
        }
    }
}

/// A lenient check of the Structured Fields dictionary grammar (RFC 8941 §3.2) sufficient to
/// reject garbage: keys are lcalpha/`*` then lcalpha, digits, `_-.*`; values are integers,
/// tokens, quoted strings or booleans; parameters are accepted and ignored.
fn is_valid_sf_dictionary(s: &str) -> bool {
    if s.trim().is_empty() {
        return false;
    }
    let mut rest = s;
    while !rest.is_empty() {
        let (item, next) = split_item(rest);
        rest = next;
        let item = item.trim_matches(|c: char| c == ' ' || c == '\t');
        if item.is_empty() {
            return false;
        }
        let mut parts = item.split(';');
        let member = parts.next().unwrap_or("");
        let (key, value) = match member.find('=') {
            Some(i) => (&member[..i], Some(&member[i + 1..])),
            None => (member, None),
        };
        if !is_sf_key(key) {
            return false;
        }
        if let Some(v) = value
            && !is_sf_bare_item(v)
        {
            return false;
        }
    }
    true
}

/// Whether every duration member of a targeted field is an Integer: `max-age="60"` is a String,
/// the wrong type, and makes the field invalid (RFC 9213 §2.1), so `Cache-Control` applies.
fn durations_are_integers(s: &str) -> bool {
    let mut rest = s;
    while !rest.is_empty() {
        let (item, next) = split_item(rest);
        rest = next;
        let member = item.split(';').next().unwrap_or("").trim();
        let (key, value) = member.split_once('=').unwrap_or((member, ""));
        let duration = [
            "max-age",
            "s-maxage",
            "stale-while-revalidate",
            "stale-if-error",
        ]
        .contains(&key);
        if duration && (value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit())) {
            return false;
        }
    }
    true
}

fn is_sf_key(k: &str) -> bool {
    let b = k.as_bytes();
    match b.first() {
        Some(c) if c.is_ascii_lowercase() || *c == b'*' => {}
        _ => return false,
    }
    b.iter()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"_-.*".contains(c))
}

fn is_sf_bare_item(v: &str) -> bool {
    let b = v.as_bytes();
    match b.first() {
        None => false,
        Some(b'"') => b.len() >= 2 && b[b.len() - 1] == b'"',
        Some(b'?') => v == "?0" || v == "?1",
        Some(c) if c.is_ascii_digit() || *c == b'-' => {
            b[1..].iter().all(|c| c.is_ascii_digit() || *c == b'.')
        }
        Some(c) if c.is_ascii_alphabetic() || *c == b'*' => {
            b.iter().all(|c| is_tchar(*c) || *c == b':' || *c == b'/')
        }
        _ => false,
    }
}

/// The request directives a cache acts on (RFC 9111 §5.2.1, RFC 5861).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestDirectives {
    /// `max-age`: the client accepts responses no older than this.
    pub max_age: Option<u64>,
    /// `max-stale`: `Some(None)` accepts any staleness, `Some(Some(n))` up to `n` seconds.
    pub max_stale: Option<Option<u64>>,
    /// `min-fresh`: the response must stay fresh for at least this long.
    pub min_fresh: Option<u64>,
    /// `no-cache` (or `Pragma: no-cache` without `Cache-Control`).
    pub no_cache: bool,
    /// `no-store`.
    pub no_store: bool,
    /// `only-if-cached`.
    pub only_if_cached: bool,
    /// `stale-if-error` window the client accepts, in seconds.
    pub stale_if_error: Option<u64>,
}

impl RequestDirectives {
    /// Parses `Cache-Control` (and `Pragma: no-cache` when `Cache-Control` is absent,
    /// RFC 9111 §5.4) from request headers.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let mut out = Self::default();
        let mut any = false;
        for value in headers.get_all(CACHE_CONTROL) {
            any = true;
            if let Ok(s) = value.to_str() {
                out.parse_into(s);
            }
        }
        if !any {
            for value in headers.get_all(PRAGMA) {
                if let Ok(s) = value.to_str()
                    && split_directives(s).any(|d| d.name.eq_ignore_ascii_case("no-cache"))
                {
                    out.no_cache = true;
                }
            }
        }
        out
    }

    /// Parses one field value.
    pub fn parse(value: &str) -> Self {
        let mut out = Self::default();
        out.parse_into(value);
        out
    }

    fn parse_into(&mut self, value: &str) {
        for d in split_directives(value) {
            let v = d.value.as_deref();
            let n = d.name;
            if n.eq_ignore_ascii_case("max-age") {
                // A malformed max-age asks for a response of age 0: revalidate.
                merge_seconds(&mut self.max_age, v, Some(0));
            } else if n.eq_ignore_ascii_case("max-stale") {
                match v {
                    None => self.max_stale = Some(None),
                    Some(s) => match parse_delta_seconds(s) {
                        Some(n) => {
                            self.max_stale = Some(match self.max_stale {
                                Some(Some(old)) => Some(old.min(n)),
                                _ => Some(n),
                            })
                        }
                        // A malformed max-stale accepts no staleness.
                        None => self.max_stale = Some(Some(0)),
                    },
                }
            } else if n.eq_ignore_ascii_case("min-fresh") {
                merge_seconds(&mut self.min_fresh, v, None);
            } else if n.eq_ignore_ascii_case("no-cache") {
                self.no_cache = true;
            } else if n.eq_ignore_ascii_case("no-store") {
                self.no_store = true;
            } else if n.eq_ignore_ascii_case("only-if-cached") {
                self.only_if_cached = true;
            } else if n.eq_ignore_ascii_case("stale-if-error") {
                merge_seconds(&mut self.stale_if_error, v, None);
            }
        }
    }

    /// True when the request carries no directive at all (the common case).
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;

    #[test]
    fn parses_common_response_directives() {
        let d = ResponseDirectives::parse(
            "public, max-age=60, s-maxage=\"120\", stale-while-revalidate=30, stale-if-error=600",
        );
        assert!(d.public);
        assert_eq!(d.max_age, Some(60));
        assert_eq!(d.s_maxage, Some(120));
        assert_eq!(d.stale_while_revalidate, Some(30));
        assert_eq!(d.stale_if_error, Some(600));
    }

    #[test]
    fn names_are_case_insensitive_and_whitespace_tolerated() {
        let d = ResponseDirectives::parse("  No-Store ,MAX-AGE=5 ,, private");
        assert!(d.no_store);
        assert!(d.private);
        assert_eq!(d.max_age, Some(5));
    }

    #[test]
    fn whitespace_around_equals_makes_the_argument_malformed() {
        assert_eq!(ResponseDirectives::parse("max-age =3600").max_age, Some(0));
        assert_eq!(ResponseDirectives::parse("max-age= 3600").max_age, Some(0));
        assert_eq!(
            ResponseDirectives::parse("s-maxage = 60, no-store").s_maxage,
            Some(0)
        );
        assert!(ResponseDirectives::parse("no-store =1").no_store);
        assert_eq!(RequestDirectives::parse("max-age= 60").max_age, Some(0));
    }

    #[test]
    fn qualified_forms_count() {
        let d = ResponseDirectives::parse("no-cache=\"set-cookie, x-foo\", private=\"a\"");
        assert!(d.no_cache);
        assert!(d.private);
    }

    #[test]
    fn malformed_max_age_is_stale_and_duplicates_take_the_first() {
        assert_eq!(ResponseDirectives::parse("max-age=abc").max_age, Some(0));
        assert_eq!(ResponseDirectives::parse("max-age").max_age, Some(0));
        assert_eq!(
            ResponseDirectives::parse("max-age=100, max-age=10").max_age,
            Some(100)
        );
        assert_eq!(
            ResponseDirectives::parse("max-age=1, max-age=1800").max_age,
            Some(1)
        );
        let mut lines = HeaderMap::new();
        lines.append(CACHE_CONTROL, HeaderValue::from_static("s-maxage=1800"));
        lines.append(CACHE_CONTROL, HeaderValue::from_static("s-maxage=1"));
        assert_eq!(
            ResponseDirectives::from_headers(&lines).s_maxage,
            Some(1800)
        );
        assert_eq!(
            RequestDirectives::parse("max-age=100, max-age=10").max_age,
            Some(10),
            "a request's repeated max-age takes the stricter value"
        );
        assert_eq!(
            ResponseDirectives::parse("max-age=-1").max_age,
            Some(0),
            "negative is malformed"
        );
        assert_eq!(
            ResponseDirectives::parse("stale-if-error=x").stale_if_error,
            None
        );
    }

    #[test]
    fn huge_values_clamp() {
        let d = ResponseDirectives::parse("max-age=99999999999999999999999999");
        assert_eq!(d.max_age, Some(DELTA_SECONDS_MAX));
    }

    #[test]
    fn commas_in_quotes_do_not_split() {
        let d: Vec<_> = split_directives("a=\"x, y\", b").collect();
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].value.as_deref(), Some("x, y"));
        assert_eq!(d[1].name, "b");
    }

    #[test]
    fn request_directives() {
        let r = RequestDirectives::parse("max-age=5, max-stale, min-fresh=3, only-if-cached");
        assert_eq!(r.max_age, Some(5));
        assert_eq!(r.max_stale, Some(None));
        assert_eq!(r.min_fresh, Some(3));
        assert!(r.only_if_cached);
        assert_eq!(
            RequestDirectives::parse("max-stale=10").max_stale,
            Some(Some(10))
        );
    }

    #[test]
    fn pragma_no_cache_only_without_cache_control() {
        let mut h = HeaderMap::new();
        h.insert(PRAGMA, HeaderValue::from_static("no-cache"));
        assert!(RequestDirectives::from_headers(&h).no_cache);
        h.insert(CACHE_CONTROL, HeaderValue::from_static("max-age=5"));
        assert!(!RequestDirectives::from_headers(&h).no_cache);
    }

    #[test]
    fn targeted_field_rules() {
        let name = HeaderName::from_static("cdn-cache-control");
        let mut h = HeaderMap::new();
        assert!(ResponseDirectives::targeted(&h, &name).is_none());
        h.insert(
            &name,
            HeaderValue::from_static("max-age=30, stale-if-error=5"),
        );
        let t = ResponseDirectives::targeted(&h, &name).unwrap();
        assert_eq!(t.max_age, Some(30));
        h.insert(&name, HeaderValue::from_static("Max-Age=30"));
        assert!(
            ResponseDirectives::targeted(&h, &name).is_none(),
            "uppercase keys are invalid SF"
        );
        h.insert(&name, HeaderValue::from_static("max-age=\"30"));
        assert!(ResponseDirectives::targeted(&h, &name).is_none());
        h.insert(&name, HeaderValue::from_static("max-age=\"30\""));
        assert!(
            ResponseDirectives::targeted(&h, &name).is_none(),
            "a String where an Integer belongs makes the field invalid"
        );
        h.insert(&name, HeaderValue::from_static("no-store"));
        assert!(ResponseDirectives::targeted(&h, &name).unwrap().no_store);
        h.insert(&name, HeaderValue::from_static("  "));
        assert!(ResponseDirectives::targeted(&h, &name).is_none());
    }

    #[test]
    fn surrogate_control_rules() {
        let name = HeaderName::from_static("surrogate-control");
        let parse = |v: &'static str, device: Option<&str>| {
            let mut h = HeaderMap::new();
            h.insert(&name, HeaderValue::from_static(v));
            ResponseDirectives::surrogate(&h, &name, device)
        };
        assert!(ResponseDirectives::surrogate(&HeaderMap::new(), &name, None).is_none());
        let d = parse("max-age=60", None).unwrap();
        assert_eq!(
            (d.max_age, d.stale_if_error, d.no_store),
            (Some(60), None, false)
        );
        let d = parse("max-age=60+600", None).unwrap();
        assert_eq!((d.max_age, d.stale_if_error), (Some(60), Some(600)));
        assert!(parse("no-store", None).unwrap().no_store);
        assert!(parse("no-store-remote", None).unwrap().no_store);
        // Device targeting: only the configured device, overriding the untargeted value.
        assert!(
            parse("max-age=60;edge", None).is_none(),
            "nothing for this cache"
        );
        assert!(parse("max-age=60;edge", Some("other")).is_none());
        assert_eq!(
            parse("max-age=60;edge", Some("edge")).unwrap().max_age,
            Some(60)
        );
        assert_eq!(
            parse("max-age=60;EDGE", Some("edge")).unwrap().max_age,
            Some(60)
        );
        let both = "max-age=10, max-age=60;edge";
        assert_eq!(parse(both, Some("edge")).unwrap().max_age, Some(60));
        assert_eq!(parse(both, Some("other")).unwrap().max_age, Some(10));
        assert_eq!(parse(both, None).unwrap().max_age, Some(10));
        let d = parse("max-age=60, no-store;edge", Some("edge")).unwrap();
        assert!(d.no_store);
        assert!(
            !parse("max-age=60, no-store;edge", Some("x"))
                .unwrap()
                .no_store
        );
        // Unknown directives count as present; ESI's content= is ignored.
        let d = parse("content=\"ESI/1.0\", max-age=5", None).unwrap();
        assert_eq!(d.max_age, Some(5));
        // Malformed: the field is ignored as a whole.
        for bad in [
            "max-age=abc",
            "max-age=",
            "max-age",
            "max-age=60+",
            "max-age=+5",
            "max-age=-1",
            "max-age=60;",
            "max-age=60;a b",
            "max age=60",
            "max-age=60;other, max-age=x",
        ] {
            assert!(parse(bad, Some("edge")).is_none(), "{bad}");
        }
        assert!(parse(" , ", None).is_none());
    }

    proptest! {
        #[test]
        fn surrogate_never_panics(bytes in proptest::collection::vec(0x20u8..0x7f, 0..120), device in "[a-z]{0,5}") {
            if let Ok(v) = HeaderValue::from_bytes(&bytes) {
                let mut h = HeaderMap::new();
                let name = HeaderName::from_static("surrogate-control");
                h.insert(&name, v);
                let _ = ResponseDirectives::surrogate(&h, &name, Some(&device));
            }
        }

        #[test]
        fn response_parser_never_panics(s in "\\PC{0,200}") {
            let _ = ResponseDirectives::parse(&s);
        }

        #[test]
        fn request_parser_never_panics(s in "[a-z=,\" \\\\\\-0-9]{0,120}") {
            let _ = RequestDirectives::parse(&s);
        }

        #[test]
        fn targeted_never_panics(bytes in proptest::collection::vec(0x20u8..0x7f, 0..120)) {
            if let Ok(v) = HeaderValue::from_bytes(&bytes) {
                let mut h = HeaderMap::new();
                let name = HeaderName::from_static("cdn-cache-control");
                h.insert(&name, v);
                let _ = ResponseDirectives::targeted(&h, &name);
            }
        }

        #[test]
        fn max_age_roundtrips(n in 0u64..DELTA_SECONDS_MAX) {
            prop_assert_eq!(ResponseDirectives::parse(&format!("max-age={n}")).max_age, Some(n));
        }
    }
}
