//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`, not a public API): each
//! runs one of the crate's private parsers or decoders on arbitrary input and checks what must
//! hold for any input.

use tokio::time::Instant;

use http::{HeaderMap, HeaderValue};

use crate::store::Clock;

/// Decodes `bytes` as a stored cache entry (what the Redis and disk tiers read back): any
/// input is an entry or an error, never a panic.
pub fn entry(bytes: &[u8]) {
    let clock = Clock::new();
    let now = Instant::now();
    let _ = crate::codec::decode(bytes, &clock, now);
}

/// Decodes `payload` framed with a valid header and checksum: what a well-formed but
/// malicious or buggy writer could store, so the payload parser itself is fuzzed.
pub fn entry_payload(payload: &[u8]) {
    entry(&crate::codec::frame_for_fuzzing(payload));
}

/// Parses `Vary`, the `If-None-Match`-style entity-tag lists and `Range` from `headers`.
pub fn request_fields(headers: &HeaderMap) {
    let _ = crate::fields::parse_vary(headers);
    let _ = crate::fields::parse_byte_range(headers);
    for value in headers.values() {
        let _ = crate::fields::parse_etag_list(value);
        if let Ok(text) = value.to_str()
            && let Some(tag) = crate::fields::parse_etag(text)
        {
            assert!(tag.weak_eq(&tag), "a tag matches itself weakly");
        }
    }
}

/// Parses one header value as an entity-tag list.
pub fn etag_list(value: &HeaderValue) {
    let _ = crate::fields::parse_etag_list(value);
}
