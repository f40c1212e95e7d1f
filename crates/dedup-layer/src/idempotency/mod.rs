//! `Idempotency-Key` support for unsafe methods (draft-ietf-httpapi-idempotency-key-header, Stripe's behaviour).
//!
//! A retried `POST` with the same key gets the first attempt's stored response instead of running twice.

pub(crate) mod header;
mod layer;
mod service;

pub use layer::{
    AuthorizationScope, ClientScope, IdempotencyLayer, IdempotencyLayerBuilder, OnStoreError,
};
pub use service::{Idempotency, ResponseFuture};

/// The request header carrying the key.
pub const IDEMPOTENCY_KEY: http::HeaderName = http::HeaderName::from_static("idempotency-key");

/// The response header marking a replayed answer; its value is `true`.
pub const IDEMPOTENT_REPLAYED: http::HeaderName =
    http::HeaderName::from_static("idempotent-replayed");
