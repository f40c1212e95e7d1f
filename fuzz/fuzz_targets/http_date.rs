//! HTTP dates (`Date`, `Expires`, `Last-Modified`): any text is a date or nothing, and a date
//! formatted as IMF-fixdate reads back as the same second.
#![no_main]

use cache_layer::date::{format_http_date, parse_http_date};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(secs) = parse_http_date(text) {
        let formatted = format_http_date(secs);
        assert_eq!(
            parse_http_date(&formatted),
            Some(secs),
            "{text:?} -> {formatted}"
        );
    }
});
