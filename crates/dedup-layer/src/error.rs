//! Configuration errors reported by the builders' `build()`.

use std::fmt;

/// A builder was given a value it cannot work with; the message names the field.
///
/// ```
/// use dedup_layer::DedupLayer;
///
/// let err = DedupLayer::builder().max_inflight(0).build().unwrap_err();
/// assert!(err.to_string().contains("max_inflight"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    field: &'static str,
    reason: &'static str,
}

impl ConfigError {
    pub(crate) const fn new(field: &'static str, reason: &'static str) -> Self {
        ConfigError { field, reason }
    }

    /// The name of the builder method whose value was rejected.
    pub fn field(&self) -> &'static str {
        self.field
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid `{}`: {}", self.field, self.reason)
    }
}

impl std::error::Error for ConfigError {}
