//! An RFC 9111 HTTP response cache for tower and axum.
#![forbid(unsafe_code)]

mod date;
pub mod directives;
mod fields;
mod policy;

pub use policy::CacheMode;
