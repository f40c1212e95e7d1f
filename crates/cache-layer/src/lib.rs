//! An RFC 9111 HTTP response cache for tower and axum.
//!
//! [`CacheLayer`] answers `GET` and `HEAD` requests from stored responses when the rules of
//! RFC 9111 allow it, and otherwise calls the inner service and stores what may be stored. It
//! implements shared-cache semantics by default (a private mode exists), targeted cache
//! control (`CDN-Cache-Control`, RFC 9213, and `Surrogate-Control`), `Cache-Status` (RFC 9211),
//! `stale-while-revalidate` and `stale-if-error` (RFC 5861), opt-in stale content on origin
//! failure, collapsed misses, surrogate-key tags and purging.
//!
//! ```
//! use axum::{Router, routing::get};
//! use cache_layer::CacheLayer;
//!
//! let app: Router = Router::new()
//!     .route("/", get(|| async { ([("cache-control", "max-age=60")], "hello") }))
//!     .layer(CacheLayer::new());
//! # let _ = app;
//! ```
//!
//! Below the in-process tier, `RedisTier` (feature `redis`) adds a tier shared by every
//! instance, with purges that reach all of them, and `DiskTier` (feature `disk`) a tier that
//! survives restarts. See `docs/cache.md` in the repository for the rules, tags, purging, the
//! stale rules and the tiers.
#![forbid(unsafe_code)]

#[cfg(feature = "admin")]
pub mod admin;
mod body;
mod codec;
mod collapse;
pub mod date;
pub mod directives;
#[cfg(feature = "disk")]
mod disk_tier;
mod fields;
mod future;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod handle;
mod key;
mod layer;
pub mod metrics;
mod policy;
#[cfg(feature = "redis")]
mod redis_tier;
mod service;
mod store;
mod tags;
mod tiered;

pub use body::CacheBody;
#[cfg(feature = "disk")]
pub use disk_tier::{DiskTier, DiskTierBuilder};
pub use future::ResponseFuture;
pub use handle::CacheHandle;
pub use key::KeyFn;
pub use layer::{CacheLayer, CacheLayerBuilder, ConfigError};
pub use policy::CacheMode;
#[cfg(feature = "redis")]
pub use redis_tier::{RedisTier, RedisTierBuilder};
pub use service::{CACHE_STATUS, Cache};
pub use store::{MemoryTier, StoredEntry, StoredResponse, Tier};
pub use tags::TagsFn;
pub use tiered::{Purge, TierEvent, TierStats};
