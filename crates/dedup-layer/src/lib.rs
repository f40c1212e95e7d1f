//! Request coalescing and idempotency keys for tower and axum.
//!
//! [`DedupLayer`] makes identical concurrent requests of safe methods (`GET`, `HEAD`) reach the handler once:
//! the first runs, the others wait and receive a copy of its status, headers and body.
//!
//! ```
//! use axum::{Router, routing::get};
//! use dedup_layer::DedupLayer;
//!
//! let app: Router = Router::new()
//!     .route("/report", get(|| async { "expensive" }))
//!     .layer(DedupLayer::new());
//! ```
//!
//! # Differences from other singleflight crates
//! - The leader's work is detached from its caller: the first client disconnecting does not fail the others.
//! - A panic frees the key at once and answers every waiter with `500` problem+json.
//! - Responses need no `Clone`: bodies are buffered up to a limit and shared as [`Bytes`](bytes::Bytes).

#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod body;
mod error;
mod future;
pub mod idempotency;
mod inflight;
mod key;
mod layer;
pub mod names;
mod problem;
mod service;
pub mod store;

pub use body::{BoxError, DedupBody};
pub use error::ConfigError;
pub use future::ResponseFuture;
pub use idempotency::{Idempotency, IdempotencyLayer, IdempotencyLayerBuilder, OnStoreError};
pub use key::{DefaultKey, MakeKey, RequestKey};
pub use layer::{DedupHandle, DedupLayer, DedupLayerBuilder, OnWaiterTimeout};
pub use service::Dedup;
