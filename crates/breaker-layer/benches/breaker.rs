//! Closed-path and axum throughput benchmarks.
fn main() {}
