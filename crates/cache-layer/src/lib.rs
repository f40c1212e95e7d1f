//! HTTP response cache.
