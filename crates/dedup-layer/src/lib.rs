//! Request coalescing and idempotency keys.
