//! `Idempotency-Key` field values (an RFC 8941 sf-string with optional parameters).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    dedup_layer::fuzzing::idempotency_key(data, 255);
    dedup_layer::fuzzing::idempotency_key(data, 8);
});
