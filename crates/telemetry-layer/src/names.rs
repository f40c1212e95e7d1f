//! Metric, attribute and span names used by this crate, in one place.
//!
//! The names are the OpenTelemetry HTTP semantic-convention names; the Prometheus exposition rewrites
//! them (dots become underscores, the unit becomes a suffix), as listed on each constant.

/// Histogram of server request durations in seconds, from the request head to the end of the response body.
///
/// Exposed to Prometheus as `http_server_request_duration_seconds`.
pub const HTTP_SERVER_REQUEST_DURATION: &str = "http.server.request.duration";

/// Gauge (OpenTelemetry up-down counter) of requests in flight, labelled by method and scheme only.
///
/// Exposed to Prometheus as `http_server_active_requests`.
pub const HTTP_SERVER_ACTIVE_REQUESTS: &str = "http.server.active_requests";

/// Histogram of request body sizes in bytes (headers excluded).
///
/// Exposed to Prometheus as `http_server_request_body_size_bytes`.
pub const HTTP_SERVER_REQUEST_BODY_SIZE: &str = "http.server.request.body.size";

/// Histogram of response body sizes in bytes (headers excluded), counted as the body streams out.
///
/// Exposed to Prometheus as `http_server_response_body_size_bytes`.
pub const HTTP_SERVER_RESPONSE_BODY_SIZE: &str = "http.server.response.body.size";

/// Attribute: the request method, one of the known methods or `_OTHER`.
pub const HTTP_REQUEST_METHOD: &str = "http.request.method";
/// Span attribute: the original method when `http.request.method` is `_OTHER`.
pub const HTTP_REQUEST_METHOD_ORIGINAL: &str = "http.request.method_original";
/// Attribute: the matched route template (axum's `MatchedPath`); absent when no route matched.
pub const HTTP_ROUTE: &str = "http.route";
/// Attribute: the response status code.
pub const HTTP_RESPONSE_STATUS_CODE: &str = "http.response.status_code";
/// Attribute: the request path (spans only).
pub const URL_PATH: &str = "url.path";
/// Attribute: the query string, recorded only when allowed, sensitive parameters redacted (spans only).
pub const URL_QUERY: &str = "url.query";
/// Attribute: `http` or `https`.
pub const URL_SCHEME: &str = "url.scheme";
/// Attribute: why the request failed; see [`ERROR_TYPE_CLIENT_DISCONNECT`] and the crate docs for the values.
pub const ERROR_TYPE: &str = "error.type";
/// Attribute: the HTTP version, `1.0`, `1.1`, `2` or `3`.
pub const NETWORK_PROTOCOL_VERSION: &str = "network.protocol.version";

/// `error.type` value for a request whose response future was dropped before a response existed,
/// which is what happens when the client goes away while the handler runs.
pub const ERROR_TYPE_CLIENT_DISCONNECT: &str = "client_disconnect";

/// The `tracing` target of the spans this crate creates.
pub const SPAN_TARGET: &str = "telemetry_layer";

/// The value of `http.request.method` for methods outside the known set.
pub const OTHER_METHOD: &str = "_OTHER";

/// Default buckets of [`HTTP_SERVER_REQUEST_DURATION`], in seconds: the semantic conventions' advice.
pub const DEFAULT_DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Default buckets of the body-size histograms, in bytes: powers of four from 64 B to 16 MiB.
pub const DEFAULT_SIZE_BUCKETS: &[f64] = &[
    0.0,
    64.0,
    256.0,
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
];
