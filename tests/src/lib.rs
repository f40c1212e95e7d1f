//! Cross-crate tests for the workspace's layers; the tests live in `tests/tests`.
//!
//! The README is included below so that its example is compiled as a doc test and cannot drift from the APIs.
#![doc = include_str!("../../README.md")]
