//! The `chat-loadtest` binary.

fn main() {}
