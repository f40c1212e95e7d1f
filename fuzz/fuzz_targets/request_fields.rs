//! `Vary`, entity-tag lists (`If-None-Match`, `If-Match`) and `Range`: the input is split into
//! three field values; malformed members are skipped, never a panic.
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    let names = ["vary", "if-none-match", "range"];
    for (name, part) in names.iter().zip(data.split(|b| *b == b'\n')) {
        if let Ok(value) = HeaderValue::from_bytes(part) {
            headers.append(HeaderName::from_static(name), value.clone());
            cache_layer::fuzzing::etag_list(&value);
        }
    }
    cache_layer::fuzzing::request_fields(&headers);
});
