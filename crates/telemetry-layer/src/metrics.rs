//! The HTTP server instruments: handles registered once per label set and cached, so the request path
//! only hashes a small key and bumps atomics.
//!
//! Handles come from an explicit recorder when one is attached (what [`crate::Telemetry`] does) or from the
//! `metrics` facade's current recorder otherwise, so every other crate's `metrics::counter!` lands in the
//! same registry.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use axum::extract::MatchedPath;
use http::StatusCode;
use metrics::{Gauge, Histogram, Key, Label, Metadata, Recorder, SharedString, Unit};

use crate::attributes::{MethodLabel, Scheme};
use crate::histogram::{Bounds, BucketHistogram, SumUnit, push_label};
use crate::names::{
    ERROR_TYPE, HTTP_REQUEST_METHOD, HTTP_RESPONSE_STATUS_CODE, HTTP_ROUTE,
    HTTP_SERVER_ACTIVE_REQUESTS, HTTP_SERVER_REQUEST_BODY_SIZE, HTTP_SERVER_REQUEST_DURATION,
    HTTP_SERVER_RESPONSE_BODY_SIZE, NETWORK_PROTOCOL_VERSION, URL_SCHEME,
};

static METADATA: Metadata<'static> = Metadata::new(
    crate::names::SPAN_TARGET,
    metrics::Level::INFO,
    Some(module_path!()),
);

/// A recorder shared between the global facade and this crate's layer.
pub(crate) type SharedRecorder = Arc<dyn Recorder + Send + Sync>;

/// Why a request failed, as far as metrics care.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum ErrorKind {
    /// A 5xx response: `error.type` is the status code.
    ServerStatus,
    /// A named failure: the inner service's error type, or [`crate::names::ERROR_TYPE_CLIENT_DISCONNECT`].
    Named(&'static str),
}

/// The route label value: axum's `MatchedPath`, compared by its text.
#[derive(Clone, Debug)]
pub(crate) struct Route(pub(crate) MatchedPath);

impl PartialEq for Route {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl Eq for Route {}

impl std::hash::Hash for Route {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.as_str().hash(state);
    }
}

/// Everything that selects one series of the per-request histograms.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct SeriesKey {
    pub(crate) method: MethodLabel,
    pub(crate) scheme: Scheme,
    pub(crate) version: &'static str,
    pub(crate) route: Option<Route>,
    pub(crate) status: Option<StatusCode>,
    pub(crate) error: Option<ErrorKind>,
}

/// A multiply-rotate hasher for [`SeriesKey`]s, several times cheaper than SipHash on these short keys.
/// Flooding resistance is not needed: every part of a key comes from a bounded set (methods, schemes,
/// versions, status codes, error names) or from the application's own route templates, never from
/// request text, and the map stops growing at `max_cached_series`.
#[derive(Default)]
pub(crate) struct SeriesHasher(u64);

impl SeriesHasher {
    const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(Self::SEED);
    }
}

impl Hasher for SeriesHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    fn write_u16(&mut self, n: u16) {
        self.add(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        // Fold the high bits down: the table picks buckets with the low bits.
        let folded = (self.0 ^ (self.0 >> 32)).wrapping_mul(Self::SEED);
        folded ^ (folded >> 29)
    }
}

/// Where the three histograms of one series are recorded.
#[derive(Debug)]
pub(crate) enum SeriesHandles {
    /// Handles of the `metrics` recorder (the layer built alone, or past the series bound of a recorder
    /// without native histograms).
    Facade {
        duration: Histogram,
        request_size: Histogram,
        response_size: Histogram,
    },
    /// The layer's own bucket counters, rendered by [`HttpMetrics::render`].
    Native(NativeSeries),
}

/// A series of the layer's own histograms, with its label list rendered once.
#[derive(Debug)]
pub(crate) struct NativeSeries {
    labels: String,
    duration: BucketHistogram,
    request_size: BucketHistogram,
    response_size: BucketHistogram,
}

/// Bucket bounds of the layer's own histograms; [`crate::Telemetry`] sets them from its builder.
#[derive(Clone, Debug)]
pub(crate) struct NativeBuckets {
    pub(crate) duration: Bounds,
    pub(crate) request_size: Bounds,
    pub(crate) response_size: Bounds,
}

/// The overflow series' only label once `max_cached_series` is reached, as OpenTelemetry SDKs name it
/// (`otel.metric.overflow`), so totals stay right while the label sets stop growing.
const OVERFLOW_LABEL: (&str, &str) = ("otel_metric_overflow", "true");

pub(crate) struct HttpMetrics {
    recorder: Option<SharedRecorder>,
    native: Option<NativeBuckets>,
    overflow: OnceLock<Arc<SeriesHandles>>,
    active: [[OnceLock<Gauge>; 2]; MethodLabel::COUNT],
    series: RwLock<HashMap<SeriesKey, Arc<SeriesHandles>, BuildHasherDefault<SeriesHasher>>>,
    max_cached_series: usize,
    pub(crate) body_sizes: bool,
}

impl NativeSeries {
    fn new(buckets: &NativeBuckets, labels: &[(String, SharedString)]) -> Self {
        let mut rendered = String::new();
        for (name, value) in labels {
            push_label(&mut rendered, name, value);
        }
        Self {
            labels: rendered,
            duration: BucketHistogram::new(&buckets.duration),
            request_size: BucketHistogram::new(&buckets.request_size),
            response_size: BucketHistogram::new(&buckets.response_size),
        }
    }
}

const DURATION_HELP: &str =
    "Duration of HTTP server requests, from the request head to the end of the response body.";
const REQUEST_SIZE_HELP: &str = "Size of HTTP server request bodies.";
const RESPONSE_SIZE_HELP: &str = "Size of HTTP server response bodies.";
/// The Prometheus names the exporter gives the three histograms (dots to underscores, unit suffix).
const DURATION_FAMILY: &str = "http_server_request_duration_seconds";
const REQUEST_SIZE_FAMILY: &str = "http_server_request_body_size_bytes";
const RESPONSE_SIZE_FAMILY: &str = "http_server_response_body_size_bytes";

impl std::fmt::Debug for HttpMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpMetrics")
            .field("explicit_recorder", &self.recorder.is_some())
            .field("native_histograms", &self.native.is_some())
            .field("max_cached_series", &self.max_cached_series)
            .field("body_sizes", &self.body_sizes)
            .finish_non_exhaustive()
    }
}

impl HttpMetrics {
    pub(crate) fn new(
        recorder: Option<SharedRecorder>,
        native: Option<NativeBuckets>,
        max_cached_series: usize,
        body_sizes: bool,
    ) -> Self {
        let metrics = Self {
            recorder,
            native,
            overflow: OnceLock::new(),
            active: Default::default(),
            series: RwLock::new(HashMap::default()),
            max_cached_series,
            body_sizes,
        };
        metrics.describe();
        metrics
    }

    fn with_recorder<T>(&self, f: impl FnOnce(&dyn Recorder) -> T) -> T {
        match &self.recorder {
            Some(recorder) => f(recorder.as_ref()),
            None => metrics::with_recorder(f),
        }
    }

    /// Units and help texts; the Prometheus exporter turns the units into name suffixes.
    fn describe(&self) {
        self.with_recorder(|r| {
            r.describe_gauge(
                HTTP_SERVER_ACTIVE_REQUESTS.into(),
                Some(Unit::Count),
                "Number of HTTP server requests in flight.".into(),
            );
            if self.native.is_some() {
                return;
            }
            r.describe_histogram(
                HTTP_SERVER_REQUEST_DURATION.into(),
                Some(Unit::Seconds),
                DURATION_HELP.into(),
            );
            if self.body_sizes {
                r.describe_histogram(
                    HTTP_SERVER_REQUEST_BODY_SIZE.into(),
                    Some(Unit::Bytes),
                    REQUEST_SIZE_HELP.into(),
                );
                r.describe_histogram(
                    HTTP_SERVER_RESPONSE_BODY_SIZE.into(),
                    Some(Unit::Bytes),
                    RESPONSE_SIZE_HELP.into(),
                );
            }
        });
    }

    /// The in-flight gauge for a method and scheme (the only attributes the convention gives it).
    pub(crate) fn active(&self, method: MethodLabel, scheme: Scheme) -> Gauge {
        self.active[method.index()][scheme.index()]
            .get_or_init(|| {
                let key = Key::from_parts(
                    HTTP_SERVER_ACTIVE_REQUESTS,
                    vec![
                        Label::from_static_parts(HTTP_REQUEST_METHOD, method.as_str()),
                        Label::from_static_parts(URL_SCHEME, scheme.as_str()),
                    ],
                );
                self.with_recorder(|r| r.register_gauge(&key, &METADATA))
            })
            .clone()
    }

    /// Records one request in the series of `key`: its duration, and its body sizes where known and
    /// enabled. A known series is recorded under the read lock, without touching its reference count.
    pub(crate) fn record_request(
        &self,
        key: &SeriesKey,
        elapsed: Duration,
        request_bytes: Option<u64>,
        response_bytes: Option<u64>,
    ) {
        if let Ok(map) = self.series.read()
            && let Some(handles) = map.get(key)
        {
            self.record(handles, elapsed, request_bytes, response_bytes);
            return;
        }
        let handles = self.series(key);
        self.record(&handles, elapsed, request_bytes, response_bytes);
    }

    /// The handles of a series, registered on first use. Past `max_cached_series` distinct series, the
    /// layer's own histograms go to the overflow series, and a recorder's handles are registered per call
    /// instead of cached, which is slower; either way this map stays bounded.
    pub(crate) fn series(&self, key: &SeriesKey) -> Arc<SeriesHandles> {
        if let Ok(map) = self.series.read()
            && let Some(handles) = map.get(key)
        {
            return Arc::clone(handles);
        }
        if let Some(native) = &self.native {
            let Ok(mut map) = self.series.write() else {
                return self.overflow_series(native);
            };
            if let Some(handles) = map.get(key) {
                return Arc::clone(handles);
            }
            if map.len() >= self.max_cached_series {
                return self.overflow_series(native);
            }
            let handles = Arc::new(SeriesHandles::Native(NativeSeries::new(
                native,
                &self.label_pairs(key),
            )));
            map.insert(key.clone(), Arc::clone(&handles));
            return handles;
        }
        let handles = Arc::new(self.register(key));
        if let Ok(mut map) = self.series.write()
            && map.len() < self.max_cached_series
        {
            map.entry(key.clone())
                .or_insert_with(|| Arc::clone(&handles));
        }
        handles
    }

    fn overflow_series(&self, native: &NativeBuckets) -> Arc<SeriesHandles> {
        Arc::clone(self.overflow.get_or_init(|| {
            let label = [(
                OVERFLOW_LABEL.0.to_owned(),
                SharedString::const_str(OVERFLOW_LABEL.1),
            )];
            Arc::new(SeriesHandles::Native(NativeSeries::new(native, &label)))
        }))
    }

    fn record(
        &self,
        handles: &SeriesHandles,
        elapsed: Duration,
        request_bytes: Option<u64>,
        response_bytes: Option<u64>,
    ) {
        let request_bytes = request_bytes.filter(|_| self.body_sizes);
        let response_bytes = response_bytes.filter(|_| self.body_sizes);
        match (handles, &self.native) {
            (SeriesHandles::Native(series), Some(native)) => {
                let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
                series
                    .duration
                    .record(&native.duration, elapsed.as_secs_f64(), nanos);
                if let Some(bytes) = request_bytes {
                    series
                        .request_size
                        .record(&native.request_size, bytes as f64, bytes);
                }
                if let Some(bytes) = response_bytes {
                    series
                        .response_size
                        .record(&native.response_size, bytes as f64, bytes);
                }
            }
            (
                SeriesHandles::Facade {
                    duration,
                    request_size,
                    response_size,
                },
                _,
            ) => {
                duration.record(elapsed.as_secs_f64());
                if let Some(bytes) = request_bytes {
                    request_size.record(bytes as f64);
                }
                if let Some(bytes) = response_bytes {
                    response_size.record(bytes as f64);
                }
            }
            (SeriesHandles::Native(_), None) => {}
        }
    }

    /// The Prometheus text of the layer's own histograms (nothing when it records through a recorder).
    pub(crate) fn render(&self, out: &mut String) {
        let Some(native) = &self.native else {
            return;
        };
        let mut series: Vec<Arc<SeriesHandles>> = self
            .series
            .read()
            .map(|map| map.values().cloned().collect())
            .unwrap_or_default();
        series.extend(self.overflow.get().cloned());
        let native_series: Vec<&NativeSeries> = series
            .iter()
            .filter_map(|handles| match handles.as_ref() {
                SeriesHandles::Native(series) => Some(series),
                SeriesHandles::Facade { .. } => None,
            })
            .collect();
        if native_series.is_empty() {
            return;
        }
        let mut families = vec![(
            DURATION_FAMILY,
            DURATION_HELP,
            &native.duration,
            SumUnit::Nanoseconds,
            (|s: &NativeSeries| &s.duration) as fn(&NativeSeries) -> &BucketHistogram,
        )];
        if self.body_sizes {
            families.push((
                REQUEST_SIZE_FAMILY,
                REQUEST_SIZE_HELP,
                &native.request_size,
                SumUnit::Bytes,
                |s: &NativeSeries| &s.request_size,
            ));
            families.push((
                RESPONSE_SIZE_FAMILY,
                RESPONSE_SIZE_HELP,
                &native.response_size,
                SumUnit::Bytes,
                |s: &NativeSeries| &s.response_size,
            ));
        }
        for (name, help, bounds, unit, histogram) in families {
            if !out.is_empty() && !out.ends_with("\n\n") {
                out.push('\n');
            }
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} histogram");
            for series in &native_series {
                histogram(series).render(out, name, &series.labels, bounds, unit);
            }
        }
    }

    /// The labels of a series, by their Prometheus names (the exporter's: dots become underscores).
    fn label_pairs(&self, key: &SeriesKey) -> Vec<(String, SharedString)> {
        self.labels(key)
            .into_iter()
            .map(|label| {
                let (name, value) = label.into_parts();
                (name.replace('.', "_"), value)
            })
            .collect()
    }

    fn register(&self, key: &SeriesKey) -> SeriesHandles {
        let labels = self.labels(key);
        self.with_recorder(|r| {
            let histogram = |name: &'static str| {
                r.register_histogram(&Key::from_parts(name, labels.clone()), &METADATA)
            };
            SeriesHandles::Facade {
                duration: histogram(HTTP_SERVER_REQUEST_DURATION),
                request_size: if self.body_sizes {
                    histogram(HTTP_SERVER_REQUEST_BODY_SIZE)
                } else {
                    Histogram::noop()
                },
                response_size: if self.body_sizes {
                    histogram(HTTP_SERVER_RESPONSE_BODY_SIZE)
                } else {
                    Histogram::noop()
                },
            }
        })
    }

    fn labels(&self, key: &SeriesKey) -> Vec<Label> {
        let mut labels = Vec::with_capacity(6);
        labels.push(Label::from_static_parts(
            HTTP_REQUEST_METHOD,
            key.method.as_str(),
        ));
        labels.push(Label::from_static_parts(URL_SCHEME, key.scheme.as_str()));
        labels.push(Label::from_static_parts(
            NETWORK_PROTOCOL_VERSION,
            key.version,
        ));
        if let Some(route) = &key.route {
            labels.push(Label::new(
                HTTP_ROUTE,
                SharedString::from(route.0.as_str().to_owned()),
            ));
        }
        if let Some(status) = key.status {
            labels.push(Label::new(
                HTTP_RESPONSE_STATUS_CODE,
                SharedString::from(status.as_str().to_owned()),
            ));
        }
        match (key.error, key.status) {
            (Some(ErrorKind::ServerStatus), Some(status)) => labels.push(Label::new(
                ERROR_TYPE,
                SharedString::from(status.as_str().to_owned()),
            )),
            (Some(ErrorKind::Named(name)), _) => {
                labels.push(Label::from_static_parts(ERROR_TYPE, name));
            }
            _ => {}
        }
        labels
    }

    #[cfg(test)]
    pub(crate) fn cached_series(&self) -> usize {
        self.series.read().map(|m| m.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(status: u16) -> SeriesKey {
        SeriesKey {
            method: MethodLabel::Get,
            scheme: Scheme::Http,
            version: "1.1",
            route: None,
            status: StatusCode::from_u16(status).ok(),
            error: None,
        }
    }

    #[test]
    fn handle_cache_is_bounded() {
        let metrics = HttpMetrics::new(None, None, 3, true);
        for status in 200..260 {
            metrics.series(&key(status));
        }
        assert_eq!(metrics.cached_series(), 3);
    }

    #[test]
    fn series_hashes_spread_over_routes_and_statuses() {
        use std::hash::BuildHasher;
        let build = BuildHasherDefault::<SeriesHasher>::default();
        let mut hashes = std::collections::HashSet::new();
        let mut low_bits = std::collections::HashSet::new();
        // Hashed like a `SeriesKey` (a derived `Hash` writes the fields in order; `Route` writes its text).
        for route in [
            "/users/{id}",
            "/users/{id}/posts",
            "/a",
            "/b",
            "/health",
            "/rooms/{id}/messages",
        ] {
            for status in 100..600 {
                let key = (
                    MethodLabel::Get,
                    Scheme::Http,
                    "1.1",
                    Some(route),
                    StatusCode::from_u16(status).ok(),
                    None::<ErrorKind>,
                );
                let hash = build.hash_one(key);
                hashes.insert(hash);
                low_bits.insert(hash & 0xfff);
            }
        }
        assert_eq!(hashes.len(), 6 * 500, "no collisions");
        // 3000 random values hit about 2127 of 4096 buckets.
        assert!(low_bits.len() > 2000, "buckets spread: {}", low_bits.len());
    }

    #[test]
    fn cached_handles_are_reused() {
        let metrics = HttpMetrics::new(None, None, 16, false);
        let first = metrics.series(&key(200));
        let second = metrics.series(&key(200));
        assert!(Arc::ptr_eq(&first, &second));
        assert_eq!(metrics.cached_series(), 1);
    }
}
