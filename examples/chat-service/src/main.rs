//! Chat service binary.
fn main() {}
