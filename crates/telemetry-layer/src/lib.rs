//! OpenTelemetry HTTP server telemetry for axum: metrics by the HTTP semantic conventions, exposed to
//! Prometheus, and one span per request exported over OTLP, with W3C trace context in and out.
//!
//! # Setup
//!
//! ```no_run
//! use axum::{Router, routing::get};
//! use telemetry_layer::Telemetry;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // Installs the global `metrics` recorder and, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, the OTLP
//! // span pipeline and a global `tracing` subscriber.
//! let telemetry = Telemetry::builder().service_name("chat").build()?;
//!
//! let routes = Router::new().route("/rooms/{id}/messages", get(|| async { "[]" }));
//! // The telemetry layer goes outermost (added last, it runs first and sees every request, including
//! // the ones answered by cache or dedup layers below it) on the routes and the 404 fallback; `/metrics`
//! // is merged in uninstrumented. Same as
//! // `telemetry.metrics_router().merge(routes.layer(telemetry.layer()))`.
//! let app = telemetry.instrument(routes);
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app).await?;
//! telemetry.shutdown()?; // flushes the last spans
//! # Ok(())
//! # }
//! ```
//!
//! # Metrics
//!
//! | name (Prometheus) | type | labels |
//! |---|---|---|
//! | `http_server_request_duration_seconds` | histogram | method, route, status, scheme, version, error |
//! | `http_server_active_requests` | gauge | `http_request_method`, `url_scheme` |
//! | `http_server_request_body_size_bytes` | histogram | as duration |
//! | `http_server_response_body_size_bytes` | histogram | as duration |
//!
//! Labels are the OpenTelemetry attribute names with dots turned into underscores:
//! `http_request_method` (the nine standard methods, else `_OTHER`), `http_route` (axum's `MatchedPath`;
//! absent for unmatched requests, so a flood of random paths adds no series), `http_response_status_code`,
//! `url_scheme`, `network_protocol_version` and `error_type`.
//!
//! `error.type` takes these values: the status code (`"500"`, ...) for 5xx responses;
//! `client_disconnect` when the response future was dropped before a response existed; the type name of
//! the inner service's error (or of the response body's error) when one was returned. It is absent on
//! success and on 4xx.
//!
//! Duration and sizes are recorded when the response body ends (or is dropped), so the duration covers
//! streaming bodies and equals the span's. No exemplars: `metrics-exporter-prometheus` has no exemplar
//! support (metrics-rs/metrics#175), see `docs/telemetry.md`.
//!
//! # Spans
//!
//! One `INFO` span per request, target `telemetry_layer`, named `{method} {route}` (`{method}` without a
//! route, `HTTP` for unknown methods), kind server, with the same attributes plus `url.path`; status
//! `ERROR` for 5xx and errors only. An incoming `traceparent`/`tracestate` becomes the parent; a malformed
//! one is ignored. [`TraceClientLayer`] does the client side. Captured headers come from an allowlist
//! ([`TelemetryLayerBuilder::capture_request_headers`]); credentials and the query string are not recorded
//! unless allowed.
//!
//! Set up by [`Telemetry`] with span export on, the request span is recorded by the layer itself (no
//! `tracing` span, no SDK span) and exported by a batching thread of its own, sampled like the SDK's
//! spans. It implements the OpenTelemetry span API and is current in the OpenTelemetry context while the
//! inner service runs:
//! `opentelemetry::Context::current()` in a handler returns it, `tracing` spans opened there become its
//! children and `tracing` events outside any span become its events. A [`TelemetryLayer`] built alone
//! opens a `tracing` span instead, for whatever subscriber is installed; so does the layer with
//! [`TelemetryLayerBuilder::log_request_span`], for log layers, next to the exported span.

#![forbid(unsafe_code)]

mod attributes;
mod body;
mod client;
mod direct;
mod error;
mod export;
mod histogram;
mod layer;
mod metrics;
pub mod names;
mod otlp;
mod service;
mod setup;
mod span;

pub use body::{RequestBody, ResponseBody};
pub use client::{ClientResponseFuture, TraceClient, TraceClientLayer};
pub use error::TelemetryError;
pub use layer::{TelemetryLayer, TelemetryLayerBuilder};
pub use service::{ResponseFuture, TelemetryService};
pub use setup::{PROMETHEUS_CONTENT_TYPE, Telemetry, TelemetryBuilder, TelemetryGuard};
