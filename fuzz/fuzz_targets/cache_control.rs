//! `Cache-Control` in requests and responses, and the targeted fields (`CDN-Cache-Control`,
//! `Surrogate-Control`): any text parses to some set of directives, never a panic.
#![no_main]

use cache_layer::directives::{RequestDirectives, ResponseDirectives};
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = ResponseDirectives::parse(text);
    let _ = RequestDirectives::parse(text);
    let Ok(value) = HeaderValue::from_bytes(data) else {
        return;
    };
    let mut headers = HeaderMap::new();
    for name in ["cache-control", "cdn-cache-control", "surrogate-control"] {
        headers.append(HeaderName::from_static(name), value.clone());
    }
    let _ = ResponseDirectives::from_headers(&headers);
    let _ = RequestDirectives::from_headers(&headers);
    let _ = ResponseDirectives::targeted(&headers, &HeaderName::from_static("cdn-cache-control"));
    let _ = ResponseDirectives::surrogate(
        &headers,
        &HeaderName::from_static("surrogate-control"),
        Some("edge"),
    );
});
