//! Errors reported while building or shutting down telemetry.

/// What went wrong while setting up or flushing telemetry. Request handling never fails.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TelemetryError {
    /// A setting has a value that cannot work; `field` names the builder method or variable.
    #[error("invalid telemetry setting `{field}`: {reason}")]
    InvalidConfig {
        /// The builder method or environment variable at fault.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A global `metrics` recorder was installed before; build with `install_recorder(false)` and use
    /// [`Telemetry::recorder`](crate::Telemetry::recorder) instead.
    #[error(
        "a global metrics recorder is already installed; use `install_recorder(false)` to keep the recorder local"
    )]
    RecorderAlreadyInstalled,
    /// A global `tracing` subscriber was installed before; build with `install_subscriber(false)` and add
    /// [`Telemetry::otel_layer`](crate::Telemetry::otel_layer) to your own subscriber.
    #[error(
        "a global tracing subscriber is already installed; use `install_subscriber(false)` and add `Telemetry::otel_layer()` to it"
    )]
    SubscriberAlreadyInstalled,
    /// The OTLP exporter could not be built.
    #[error("cannot build the OTLP span exporter: {0}")]
    Exporter(String),
    /// Flushing or shutting down the span pipeline failed (for example the collector is unreachable).
    #[error("cannot flush spans: {0}")]
    Flush(String),
}
