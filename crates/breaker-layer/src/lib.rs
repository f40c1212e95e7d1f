//! A circuit breaker for tower and axum.
#![forbid(unsafe_code)]

mod breaker;
mod config;
pub mod metrics;
mod window;

pub use breaker::{
    BreakerState, CallError, CircuitBreaker, MetricsSnapshot, Outcome, Permit, Rejected,
    StateTransition,
};
pub use config::{Backoff, BreakerBuilder, ConfigError, SlidingWindow};
