//! Caching reverse proxy.
fn main() {}
