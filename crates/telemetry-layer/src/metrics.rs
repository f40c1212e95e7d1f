//! The HTTP server instruments: handles registered once per label set and cached, so the request path
//! only hashes a small key and bumps atomics.
//!
//! Handles come from an explicit recorder when one is attached (what [`crate::Telemetry`] does) or from the
//! `metrics` facade's current recorder otherwise, so every other crate's `metrics::counter!` lands in the
//! same registry.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, OnceLock, RwLock};

use axum::extract::MatchedPath;
use http::StatusCode;
use metrics::{Gauge, Histogram, Key, Label, Metadata, Recorder, SharedString, Unit};

use crate::attributes::{MethodLabel, Scheme};
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

/// The histogram handles of one series.
#[derive(Debug)]
pub(crate) struct SeriesHandles {
    pub(crate) duration: Histogram,
    pub(crate) request_size: Histogram,
    pub(crate) response_size: Histogram,
}

pub(crate) struct HttpMetrics {
    recorder: Option<SharedRecorder>,
    active: [[OnceLock<Gauge>; 2]; MethodLabel::COUNT],
    series: RwLock<HashMap<SeriesKey, Arc<SeriesHandles>, BuildHasherDefault<SeriesHasher>>>,
    max_cached_series: usize,
    pub(crate) body_sizes: bool,
}

impl std::fmt::Debug for HttpMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpMetrics")
            .field("explicit_recorder", &self.recorder.is_some())
            .field("max_cached_series", &self.max_cached_series)
            .field("body_sizes", &self.body_sizes)
            .finish_non_exhaustive()
    }
}

impl HttpMetrics {
    pub(crate) fn new(
        recorder: Option<SharedRecorder>,
        max_cached_series: usize,
        body_sizes: bool,
    ) -> Self {
        let metrics = Self {
            recorder,
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
            r.describe_histogram(
                HTTP_SERVER_REQUEST_DURATION.into(),
                Some(Unit::Seconds),
                "Duration of HTTP server requests, from the request head to the end of the response body."
                    .into(),
            );
            r.describe_gauge(
                HTTP_SERVER_ACTIVE_REQUESTS.into(),
                Some(Unit::Count),
                "Number of HTTP server requests in flight.".into(),
            );
            if self.body_sizes {
                r.describe_histogram(
                    HTTP_SERVER_REQUEST_BODY_SIZE.into(),
                    Some(Unit::Bytes),
                    "Size of HTTP server request bodies.".into(),
                );
                r.describe_histogram(
                    HTTP_SERVER_RESPONSE_BODY_SIZE.into(),
                    Some(Unit::Bytes),
                    "Size of HTTP server response bodies.".into(),
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

    /// The handles of a series, registered on first use. Past `max_cached_series` distinct series the
    /// handles are registered per call instead of cached, which is slower but keeps this map bounded.
    pub(crate) fn series(&self, key: &SeriesKey) -> Arc<SeriesHandles> {
        if let Ok(map) = self.series.read()
            && let Some(handles) = map.get(key)
        {
            return Arc::clone(handles);
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

    fn register(&self, key: &SeriesKey) -> SeriesHandles {
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
        self.with_recorder(|r| {
            let histogram = |name: &'static str| {
                r.register_histogram(&Key::from_parts(name, labels.clone()), &METADATA)
            };
            SeriesHandles {
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
        let metrics = HttpMetrics::new(None, 3, true);
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
        let metrics = HttpMetrics::new(None, 16, false);
        let first = metrics.series(&key(200));
        let second = metrics.series(&key(200));
        assert!(Arc::ptr_eq(&first, &second));
        assert_eq!(metrics.cached_series(), 1);
    }
}
