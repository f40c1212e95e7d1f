//! The variants measured: what each wraps around the handler, which URLs the load generator sends it, what
//! it is compared against, and the targets issue 14 sets for it.

/// One way of serving the same route.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Variant {
    Bare,
    Identity,
    Breaker,
    Dedup,
    DedupRotating,
    CacheHit,
    TelemetryMetrics,
    TelemetrySpans,
    StackHit,
    StackHitSpans,
    Origin2ms,
    StackMiss,
    TowerResilience,
    AxumResponseCache,
    HttpCacheTower,
    AxumPrometheus,
    TraceLayer,
}

/// Every variant, in the order the tables list them: this workspace's layers, the stacks, then the peers.
pub const ALL: [Variant; 17] = [
    Variant::Bare,
    Variant::Identity,
    Variant::Breaker,
    Variant::Dedup,
    Variant::DedupRotating,
    Variant::CacheHit,
    Variant::TelemetryMetrics,
    Variant::TelemetrySpans,
    Variant::StackHit,
    Variant::StackHitSpans,
    Variant::Origin2ms,
    Variant::StackMiss,
    Variant::TowerResilience,
    Variant::AxumResponseCache,
    Variant::HttpCacheTower,
    Variant::AxumPrometheus,
    Variant::TraceLayer,
];

/// The URLs the load generator sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Urls {
    /// `/rooms/room-N/messages` for N in 0..100, in turn: a cache holds all of them after the first 100
    /// requests, as the hot rooms of a chat service would be.
    Rotating,
    /// The rotating paths with a query string no other request carries: nothing coalesces and every
    /// request misses a cache.
    Unique,
}

/// What a cache in front of the handler must answer during validation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheStatus {
    /// cache-layer's `Cache-Status` says `hit` from the second request for a URL on.
    HitAfterFirst,
    /// Every request of a new URL is a miss, and the answer is stored: asking for it again is a hit.
    MissStored,
}

/// A minimum throughput ratio against bare axum (server on its own core) set by issue 14.
pub struct Target {
    pub variant: Variant,
    pub min_ratio: f64,
}

/// The throughput targets; each also has `p99 ≤ P99_MAX_RATIO × bare`.
pub const TARGETS: [Target; 6] = [
    Target {
        variant: Variant::CacheHit,
        min_ratio: 0.95,
    },
    Target {
        variant: Variant::TelemetryMetrics,
        min_ratio: 0.93,
    },
    Target {
        variant: Variant::TelemetrySpans,
        min_ratio: 0.90,
    },
    Target {
        variant: Variant::Breaker,
        min_ratio: 0.97,
    },
    Target {
        variant: Variant::Dedup,
        min_ratio: 0.95,
    },
    Target {
        variant: Variant::StackHit,
        min_ratio: 0.85,
    },
];

/// The most a targeted variant's p99 latency may be, as a multiple of bare's.
pub const P99_MAX_RATIO: f64 = 1.2;
/// The most resident memory the telemetry variants may add to bare's peak, in MB.
pub const TELEMETRY_EXTRA_RSS_MB: f64 = 10.0;

impl Variant {
    pub fn name(self) -> &'static str {
        match self {
            Self::Bare => "bare",
            Self::Identity => "identity",
            Self::Breaker => "breaker",
            Self::Dedup => "dedup",
            Self::DedupRotating => "dedup-rotating",
            Self::CacheHit => "cache-hit",
            Self::TelemetryMetrics => "telemetry-metrics",
            Self::TelemetrySpans => "telemetry-spans",
            Self::StackHit => "stack-hit",
            Self::StackHitSpans => "stack-hit-spans",
            Self::Origin2ms => "origin-2ms",
            Self::StackMiss => "stack-miss",
            Self::TowerResilience => "tower-resilience",
            Self::AxumResponseCache => "axum-response-cache",
            Self::HttpCacheTower => "http-cache-tower",
            Self::AxumPrometheus => "axum-prometheus",
            Self::TraceLayer => "trace-layer",
        }
    }

    pub fn what(self) -> &'static str {
        match self {
            Self::Bare => "the router alone",
            Self::Identity => "`Router::layer(Identity)`: the cost every `Router::layer` pays",
            Self::Breaker => "breaker-layer `BreakerLayer`, closed",
            Self::Dedup => {
                "dedup-layer `DedupLayer`, every request a distinct query string (pass-through: nothing to coalesce)"
            }
            Self::DedupRotating => "dedup-layer `DedupLayer`, the 100 rotating URLs",
            Self::CacheHit => "cache-layer `CacheLayer`, L1 hits (100 rotating URLs)",
            Self::TelemetryMetrics => {
                "telemetry-layer: HTTP metrics only (no span export, no subscriber)"
            }
            Self::TelemetrySpans => {
                "telemetry-layer: HTTP metrics + one span per request exported over OTLP (batched)"
            }
            Self::StackHit => {
                "the full stack on the hit path: telemetry (metrics) outermost, then `CacheLayer`, `DedupLayer`, \
                 `BreakerLayer`, handler, in one `Router::layer` (a `ServiceBuilder`, as the README composes it); 100 rotating \
                 URLs, so every request after the first 100 is an L1 hit"
            }
            Self::StackHitSpans => "`stack-hit` with every request's span exported over OTLP",
            Self::Origin2ms => {
                "the router alone, its handler taking 2 ms (a slow origin); every URL distinct. Baseline of \
                 `stack-miss`"
            }
            Self::StackMiss => {
                "the full stack of `stack-hit` in front of the 2 ms handler, every URL distinct: each request \
                 misses, reaches the handler and is stored; compared with `origin-2ms`"
            }
            Self::TowerResilience => {
                "tower-resilience `CircuitBreakerLayer`, closed (behind `HandleErrorLayer`)"
            }
            Self::AxumResponseCache => "axum-response-cache `CacheLayer`, hits",
            Self::HttpCacheTower => {
                "http-cache-tower-server `ServerCacheLayer` (moka), hits (behind `HandleErrorLayer`)"
            }
            Self::AxumPrometheus => "axum-prometheus `PrometheusMetricLayer`",
            Self::TraceLayer => {
                "tower-http `TraceLayer`, INFO spans + response event formatted by `fmt` into a sink"
            }
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "http-cache-tower-server" => Some(Self::HttpCacheTower),
            "telemetry" => Some(Self::TelemetrySpans),
            _ => ALL.into_iter().find(|v| v.name() == name),
        }
    }

    pub fn urls(self) -> Urls {
        match self {
            Self::Dedup | Self::Origin2ms | Self::StackMiss => Urls::Unique,
            _ => Urls::Rotating,
        }
    }

    /// The variant this one's ratios are taken against, measured in the same run.
    pub fn baseline(self) -> Self {
        match self {
            Self::StackMiss => Self::Origin2ms,
            _ => Self::Bare,
        }
    }

    /// Whether this is a baseline rather than something measured against one.
    pub fn is_baseline(self) -> bool {
        matches!(self, Self::Bare | Self::Origin2ms)
    }

    /// Another project's middleware.
    pub fn is_peer(self) -> bool {
        matches!(
            self,
            Self::TowerResilience
                | Self::AxumResponseCache
                | Self::HttpCacheTower
                | Self::AxumPrometheus
                | Self::TraceLayer
        )
    }

    /// Whether repeated requests for one URL are answered from a cache (the handler sees the first only).
    pub fn cached(self) -> bool {
        matches!(
            self,
            Self::CacheHit
                | Self::StackHit
                | Self::StackHitSpans
                | Self::AxumResponseCache
                | Self::HttpCacheTower
        )
    }

    /// What cache-layer's `Cache-Status` header must say while validating, for variants that have it.
    pub fn cache_status(self) -> Option<CacheStatus> {
        match self {
            Self::CacheHit | Self::StackHit | Self::StackHitSpans => {
                Some(CacheStatus::HitAfterFirst)
            }
            Self::StackMiss => Some(CacheStatus::MissStored),
            _ => None,
        }
    }

    /// Whether a `DedupLayer` is in front of the handler.
    pub fn has_dedup(self) -> bool {
        matches!(
            self,
            Self::Dedup
                | Self::DedupRotating
                | Self::StackHit
                | Self::StackHitSpans
                | Self::StackMiss
        )
    }

    /// Whether every request's span is exported to the OTLP sink.
    pub fn exports_spans(self) -> bool {
        matches!(self, Self::TelemetrySpans | Self::StackHitSpans)
    }

    /// Whether the handler takes 2 ms.
    pub fn slow_origin(self) -> bool {
        matches!(self, Self::Origin2ms | Self::StackMiss)
    }

    /// The minimum throughput ratio issue 14 sets, if any.
    pub fn target(self) -> Option<f64> {
        TARGETS
            .iter()
            .find(|t| t.variant == self)
            .map(|t| t.min_ratio)
    }
}
