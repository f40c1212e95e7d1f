//! Surrogate keys (tags): read from a response field or computed by a user function, so that
//! groups of entries can be purged together.

use std::sync::Arc;

use http::HeaderMap;
use http::header::HeaderName;

/// Computes tags from the request head and the response head.
pub type TagsFn =
    Arc<dyn Fn(&http::request::Parts, &http::response::Parts) -> Vec<String> + Send + Sync>;

/// Most tags kept per response; the rest are ignored.
pub(crate) const MAX_TAGS: usize = 32;
/// Longest tag kept; longer ones are ignored.
pub(crate) const MAX_TAG_LEN: usize = 256;

/// Tags listed in `field`, separated by commas and/or whitespace, deduplicated.
pub(crate) fn from_header(headers: &HeaderMap, field: &HeaderName, out: &mut Vec<Arc<str>>) {
    for value in headers.get_all(field) {
        let Ok(s) = value.to_str() else { continue };
        for tag in s.split([',', ' ', '\t']) {
            push(out, tag);
        }
    }
}

/// Adds one tag when it is non-empty, short enough, new, and there is room.
pub(crate) fn push(out: &mut Vec<Arc<str>>, tag: &str) {
    let tag = tag.trim();
    if tag.is_empty() || tag.len() > MAX_TAG_LEN || out.len() >= MAX_TAGS {
        return;
    }
    if !out.iter().any(|t| &**t == tag) {
        out.push(Arc::from(tag));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;

    #[test]
    fn splits_on_commas_and_spaces() {
        let mut h = HeaderMap::new();
        h.insert(
            "cache-tag",
            HeaderValue::from_static("room:1, room:2 user:3,,room:1"),
        );
        let mut out = Vec::new();
        from_header(&h, &HeaderName::from_static("cache-tag"), &mut out);
        let got: Vec<&str> = out.iter().map(|t| &**t).collect();
        assert_eq!(got, ["room:1", "room:2", "user:3"]);
    }

    proptest! {
        #[test]
        fn bounded(s in "[a-z ,]{0,2000}") {
            let mut h = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(&s) { h.insert("cache-tag", v); }
            let mut out = Vec::new();
            from_header(&h, &HeaderName::from_static("cache-tag"), &mut out);
            prop_assert!(out.len() <= MAX_TAGS);
        }
    }
}
