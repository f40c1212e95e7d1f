//! The library's error type.

use std::path::Path;

use crate::config::ConfigError;
use crate::model::InvalidInput;
use crate::store::StoreError;

/// Why an operation of [`ChatService`](crate::ChatService) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The input breaks a validation rule.
    #[error("invalid input: {0}")]
    Invalid(#[from] InvalidInput),
    /// The configuration cannot be used.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// SQLite failed on the named database.
    #[error("database {path}: {source}")]
    Database {
        /// The database file.
        path: String,
        /// What SQLite reported.
        source: rusqlite::Error,
    },
    /// The post's idempotency key was stored with another message (another room, author or
    /// text): the key was reused for a different post.
    #[error("the idempotency key was already used for another message")]
    KeyReused,
    /// The writer has stopped ([`ChatService::close`](crate::ChatService::close) was called).
    #[error("the service is closed")]
    Closed,
    /// Starting a thread, binding a socket or serving failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Telemetry could not be set up (a bad `OTEL_*` variable, a recorder already installed).
    #[error("telemetry: {0}")]
    Telemetry(#[from] telemetry_layer::TelemetryError),
}

impl Error {
    pub(crate) fn from_store(error: StoreError, path: &Path) -> Self {
        match error {
            StoreError::Sqlite(source) => Self::Database {
                path: path.display().to_string(),
                source,
            },
            StoreError::WriterClosed => Self::Closed,
            StoreError::ReaderFailed(reason) | StoreError::Setup(reason) => {
                Self::Io(std::io::Error::other(reason))
            }
        }
    }
}
