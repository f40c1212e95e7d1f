//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`, not a public API).

/// Parses an `Idempotency-Key` field value: any bytes are a key or refused, never a panic;
/// a key accepted is 1 to `max_len` characters.
pub fn idempotency_key(value: &[u8], max_len: usize) {
    if let Some(key) = crate::idempotency::header::parse_key(value, max_len) {
        assert!(!key.is_empty() && key.len() <= max_len, "{key:?}");
    }
}
