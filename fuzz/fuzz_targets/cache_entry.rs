//! The cache entry codec fed what a corrupted Redis value or disk record could hold: an entry
//! or an error, never a panic or an allocation past the codec's bound. Each input is tried as
//! the whole record and, framed with a valid checksum, as its payload.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    cache_layer::fuzzing::entry(data);
    cache_layer::fuzzing::entry_payload(data);
});
