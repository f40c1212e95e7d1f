//! Request coalescing and idempotency keys for tower and axum.
//!
//! - [`DedupLayer`] makes identical concurrent requests of safe methods (`GET`, `HEAD`) reach the handler once:
//!   the first runs, the others wait and receive a copy of its status, headers and body.
//! - [`IdempotencyLayer`] makes a retried unsafe request (`POST`, `PATCH`) with the same `Idempotency-Key`
//!   replay the first attempt's stored response instead of running twice.
//!
//! ```
//! use axum::{Router, routing::{get, post}};
//! use dedup_layer::{DedupLayer, IdempotencyLayer, store::MemoryStore};
//!
//! let app: Router = Router::new()
//!     .route("/report", get(|| async { "expensive" }))
//!     .route(
//!         "/orders",
//!         post(|| async { (http::StatusCode::CREATED, "order 1") })
//!             .route_layer(IdempotencyLayer::new(MemoryStore::default())),
//!     )
//!     .layer(DedupLayer::new());
//! ```
//!
//! Both layers keep the inner service's error type; their own answers (`504` for a waiter timeout, `400`, `409`,
//! `422`, `413`, `503` for idempotency) are `application/problem+json` responses. Metric names are in [`names`].
//!
//! # Differences from other singleflight crates
//! - The leader's work survives its caller: it runs inline while that caller is there and moves into a task
//!   if the caller leaves with waiters remaining, so the first client disconnecting does not fail the others;
//!   when every caller is gone the work is cancelled (configurable).
//! - With nothing to coalesce (the common case) the response streams through untouched: no task, no
//!   channel, no buffering.
//! - A panic frees the key at once and answers every waiter with `500` problem+json; nothing leaks.
//! - Responses need no `Clone`: bodies are buffered up to a limit and shared as [`Bytes`](bytes::Bytes); above
//!   the limit, waiters run their own request instead of failing.
//! - Keys are compared in full, so a hash collision cannot hand one user another's answer.

#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod body;
mod error;
mod future;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod idempotency;
mod inflight;
mod key;
mod layer;
mod metric;
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
