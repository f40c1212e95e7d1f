//! HTTP telemetry.
