//! Sharing Open transitions across instances through Redis pub/sub.
