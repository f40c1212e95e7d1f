//! A circuit breaker for tower and axum that stops cascading failures.
//!
//! The core [`CircuitBreaker`] works without tower (guard a Redis call with [`CircuitBreaker::call`]);
//! [`BreakerLayer`] puts it in front of any `Service<http::Request<B>>`: an axum `Router`, one route, or an outbound
//! HTTP client. While the breaker is open the layer answers at once with `503 Service Unavailable`, `Retry-After`
//! (seconds until the next probe), `Cache-Control: no-store` and an `application/problem+json` body, or with a
//! fallback of your own. It keeps the inner error type, so it goes straight onto `Router::layer`.
//!
//! ```
//! use std::time::Duration;
//! use axum::{Router, routing::get};
//! use breaker_layer::{Backoff, BreakerLayer, CircuitBreaker};
//!
//! let breaker = CircuitBreaker::builder()
//!     .name("api")
//!     .count_window(50)
//!     .minimum_calls(10)
//!     .failure_rate_threshold(50.0)
//!     .wait_in_open(Duration::from_secs(5))
//!     .open_backoff(Backoff { multiplier: 2.0, max: Duration::from_secs(60) })
//!     .half_open_probes(3)
//!     .build()?;
//!
//! let app: Router = Router::new()
//!     .route("/orders", get(|| async { "[]" }))
//!     .layer(BreakerLayer::new(breaker.clone()));
//!
//! // The breaker is also the control handle.
//! let mut transitions = breaker.subscribe();
//! assert_eq!(breaker.state(), breaker_layer::BreakerState::Closed);
//! # let _ = (app, transitions.try_recv());
//! # Ok::<(), breaker_layer::ConfigError>(())
//! ```
//!
//! # States
//! Closed judges calls in a window ([`SlidingWindow`]: the last N calls, the last N seconds in buckets, or a run of
//! consecutive failures) against a failure-rate and a slow-call-rate threshold, once the window holds
//! `minimum_calls`. Open refuses calls for `wait_in_open` (growing with [`Backoff`] and jitter when it re-opens
//! again and again). HalfOpen admits `half_open_probes` probe calls and decides on them. [`BreakerState::Disabled`],
//! [`BreakerState::ForcedOpen`] and [`BreakerState::MetricsOnly`] (dry run) are set through the handle.
//!
//! # Cost
//! On the Closed path admission is one atomic load and recording one short uncontended critical section; nothing
//! allocates. Slow-call detection adds two clock reads, time windows one.
//!
//! # Time
//! All time goes through tokio's clock, so tests can use `tokio::time::pause()`.
//!
//! # Metrics
//! Recorded through the [`metrics`](https://docs.rs/metrics) facade; names are in [`mod@metrics`]. The call counters
//! are registered when a breaker is built, so install the recorder first.
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod body;
mod breaker;
mod classify;
mod config;
mod future;
mod keyed;
mod layer;
pub mod metrics;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;
mod service;
mod window;

pub use body::BreakerBody;
pub use breaker::{
    BreakerState, CallError, CircuitBreaker, MetricsSnapshot, Outcome, Permit, Rejected,
    StateTransition,
};
pub use classify::{Classify, DefaultClassifier, Fallback, ProblemFallback};
pub use config::{Backoff, BreakerBuilder, ConfigError, SlidingWindow};
pub use future::ResponseFuture;
pub use keyed::{
    HeaderKey, HostKey, KeyExtractor, KeyedBreakers, KeyedBuilder, MAX_KEY_LEN, PerKey,
};
pub use layer::BreakerLayer;
pub use service::{Breaker, SelectBreaker};
