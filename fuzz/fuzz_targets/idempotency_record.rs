//! The idempotency record as read back from Redis or memory, corrupted: a record or nothing,
//! and a record that decodes encodes to bytes that decode to it again.
#![no_main]

use dedup_layer::store::StoredResponse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(record) = StoredResponse::decode(data) {
        let again = StoredResponse::decode(&record.encode());
        assert_eq!(again.as_ref(), Some(&record));
    }
});
