//! L1 hit benchmark.
fn main() {}
