//! Metric names and labels recorded through the `metrics` facade, in one place.
//!
//! Keys are built at compile time so recording a request allocates nothing.

use metrics::{Key, Label, Level, Metadata};

/// Counter: requests seen by the cache, labelled `tier` and `outcome`.
pub const CACHE_REQUESTS_TOTAL: &str = "cache_requests_total";
/// Gauge: bytes held by a tier (label `tier`).
pub const CACHE_BYTES: &str = "cache_bytes";
/// Gauge: entries (URLs, each with its variants) held by a tier (label `tier`).
pub const CACHE_ENTRIES: &str = "cache_entries";
/// Counter: entries removed by a tier, labelled `tier` and `cause`
/// (`size`, `expired`, `explicit`, `replaced`).
pub const CACHE_EVICTIONS_TOTAL: &str = "cache_evictions_total";

/// Counter: failed or timed-out calls to a lower tier (label `tier`).
pub const CACHE_TIER_ERRORS_TOTAL: &str = "cache_tier_errors_total";
/// Histogram: duration of calls to a lower tier in seconds (label `tier`).
pub const CACHE_TIER_CALL_SECONDS: &str = "cache_tier_call_seconds";
/// Counter: writes to lower tiers dropped because too many were in flight.
pub const CACHE_DROPPED_WRITES_TOTAL: &str = "cache_dropped_writes_total";
/// Counter: fill leases, labelled `outcome` (`taken`, `waited`, `filled`, `gave_up`).
pub const CACHE_LEASES_TOTAL: &str = "cache_leases_total";
/// Counter: invalidation subscriptions established (the first one included).
pub const CACHE_PUBSUB_SUBSCRIPTIONS_TOTAL: &str = "cache_pubsub_subscriptions_total";
/// Counter: in-process flushes after a lost invalidation subscription.
pub const CACHE_FLUSHES_TOTAL: &str = "cache_flushes_total";
/// Counter: purges received from other instances and applied here.
pub const CACHE_REMOTE_PURGES_TOTAL: &str = "cache_remote_purges_total";

/// Label naming the tier (`l1` for the in-process tier, `l2` shared, `l3` persistent).
pub const LABEL_TIER: &str = "tier";
/// Label naming the outcome of a request.
pub const LABEL_OUTCOME: &str = "outcome";
/// Label naming why an entry left a tier.
pub const LABEL_CAUSE: &str = "cause";

/// Registers the help text and unit of every metric above with the installed recorder, so exporters such as
/// Prometheus print `# HELP` lines. Building a layer calls it; call it yourself after installing a recorder late.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        CACHE_REQUESTS_TOTAL,
        "Requests seen by the cache by tier and outcome: hit, miss, stale, revalidated, uncacheable, bypass"
    );
    describe_gauge!(CACHE_BYTES, Unit::Bytes, "Bytes held by a cache tier");
    describe_gauge!(
        CACHE_ENTRIES,
        "Entries (URLs with their variants) held by a cache tier"
    );
    describe_counter!(
        CACHE_EVICTIONS_TOTAL,
        "Entries removed from a cache tier by cause: size, expired, explicit, replaced"
    );
    describe_counter!(
        CACHE_TIER_ERRORS_TOTAL,
        "Failed or timed-out calls to a lower cache tier"
    );
    describe_histogram!(
        CACHE_TIER_CALL_SECONDS,
        Unit::Seconds,
        "Duration of calls to a lower cache tier"
    );
    describe_counter!(
        CACHE_DROPPED_WRITES_TOTAL,
        "Writes to lower cache tiers dropped because too many were in flight"
    );
    describe_counter!(
        CACHE_LEASES_TOTAL,
        "Fill leases for stampede protection by outcome: taken, waited, filled, gave_up"
    );
    describe_counter!(
        CACHE_PUBSUB_SUBSCRIPTIONS_TOTAL,
        "Invalidation subscriptions established, the first one included"
    );
    describe_counter!(
        CACHE_FLUSHES_TOTAL,
        "In-process cache flushes after a lost invalidation subscription"
    );
    describe_counter!(
        CACHE_REMOTE_PURGES_TOTAL,
        "Purges received from other instances and applied here"
    );
}

/// What the cache did with a request: the values of the `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Answered from a stored response without contacting the inner service.
    Hit,
    /// Nothing usable stored; the inner service answered.
    Miss,
    /// A stale stored response was served (stale-while-revalidate, stale-if-error, max-stale).
    Stale,
    /// A stored response was validated with the inner service (304) and served.
    Revalidated,
    /// The inner service answered and the response could not be stored.
    Uncacheable,
    /// The cache did not take part (method, `Range`, request `no-store`).
    Bypass,
}

impl Outcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
            Self::Stale => "stale",
            Self::Revalidated => "revalidated",
            Self::Uncacheable => "uncacheable",
            Self::Bypass => "bypass",
        }
    }
}

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

macro_rules! request_key {
    ($labels:ident, $key:ident, $outcome:literal) => {
        static $labels: [Label; 2] = [
            Label::from_static_parts(LABEL_TIER, "l1"),
            Label::from_static_parts(LABEL_OUTCOME, $outcome),
        ];
        static $key: Key = Key::from_static_parts(CACHE_REQUESTS_TOTAL, &$labels);
    };
}

request_key!(HIT_LABELS, HIT, "hit");
request_key!(MISS_LABELS, MISS, "miss");
request_key!(STALE_LABELS, STALE, "stale");
request_key!(REVALIDATED_LABELS, REVALIDATED, "revalidated");
request_key!(UNCACHEABLE_LABELS, UNCACHEABLE, "uncacheable");
request_key!(BYPASS_LABELS, BYPASS, "bypass");

static L1_LABELS: [Label; 1] = [Label::from_static_parts(LABEL_TIER, "l1")];
static BYTES: Key = Key::from_static_parts(CACHE_BYTES, &L1_LABELS);
static ENTRIES: Key = Key::from_static_parts(CACHE_ENTRIES, &L1_LABELS);

macro_rules! eviction_key {
    ($labels:ident, $key:ident, $cause:literal) => {
        static $labels: [Label; 2] = [
            Label::from_static_parts(LABEL_TIER, "l1"),
            Label::from_static_parts(LABEL_CAUSE, $cause),
        ];
        static $key: Key = Key::from_static_parts(CACHE_EVICTIONS_TOTAL, &$labels);
    };
}

eviction_key!(EV_SIZE_LABELS, EV_SIZE, "size");
eviction_key!(EV_EXPIRED_LABELS, EV_EXPIRED, "expired");
eviction_key!(EV_EXPLICIT_LABELS, EV_EXPLICIT, "explicit");
eviction_key!(EV_REPLACED_LABELS, EV_REPLACED, "replaced");

pub(crate) fn record_request(outcome: Outcome) {
    let key = match outcome {
        Outcome::Hit => &HIT,
        Outcome::Miss => &MISS,
        Outcome::Stale => &STALE,
        Outcome::Revalidated => &REVALIDATED,
        Outcome::Uncacheable => &UNCACHEABLE,
        Outcome::Bypass => &BYPASS,
    };
    metrics::with_recorder(|r| r.register_counter(key, &METADATA)).increment(1);
}

pub(crate) fn record_size(bytes: u64, entries: u64) {
    metrics::with_recorder(|r| {
        r.register_gauge(&BYTES, &METADATA).set(bytes as f64);
        r.register_gauge(&ENTRIES, &METADATA).set(entries as f64);
    });
}

pub(crate) fn record_eviction(cause: moka::notification::RemovalCause) {
    use moka::notification::RemovalCause;
    let key = match cause {
        RemovalCause::Size => &EV_SIZE,
        RemovalCause::Expired => &EV_EXPIRED,
        RemovalCause::Explicit => &EV_EXPLICIT,
        RemovalCause::Replaced => &EV_REPLACED,
    };
    metrics::with_recorder(|r| r.register_counter(key, &METADATA)).increment(1);
}

/// A lower tier, for labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(any(feature = "redis", feature = "disk")), allow(dead_code))]
pub(crate) enum TierLabel {
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    L2,
    #[cfg_attr(not(feature = "disk"), allow(dead_code))]
    L3,
}

impl TierLabel {
    fn as_str(self) -> &'static str {
        match self {
            Self::L2 => "l2",
            Self::L3 => "l3",
        }
    }
}

#[cfg_attr(not(any(feature = "redis", feature = "disk")), allow(dead_code))]
pub(crate) fn record_tier_lookup(tier: TierLabel, hit: bool) {
    let outcome = if hit { "hit" } else { "miss" };
    metrics::counter!(CACHE_REQUESTS_TOTAL, LABEL_TIER => tier.as_str(), LABEL_OUTCOME => outcome)
        .increment(1);
}

#[cfg_attr(not(any(feature = "redis", feature = "disk")), allow(dead_code))]
pub(crate) fn record_tier_latency(tier: TierLabel, took: std::time::Duration) {
    metrics::histogram!(CACHE_TIER_CALL_SECONDS, LABEL_TIER => tier.as_str())
        .record(took.as_secs_f64());
}

#[cfg_attr(not(any(feature = "redis", feature = "disk")), allow(dead_code))]
pub(crate) fn record_tier_error(tier: TierLabel) {
    metrics::counter!(CACHE_TIER_ERRORS_TOTAL, LABEL_TIER => tier.as_str()).increment(1);
}

pub(crate) fn record_dropped_write() {
    metrics::counter!(CACHE_DROPPED_WRITES_TOTAL).increment(1);
}

#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) fn record_lease(outcome: &'static str) {
    metrics::counter!(CACHE_LEASES_TOTAL, LABEL_OUTCOME => outcome).increment(1);
}

#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) fn record_subscription() {
    metrics::counter!(CACHE_PUBSUB_SUBSCRIPTIONS_TOTAL).increment(1);
}

#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) fn record_flush() {
    metrics::counter!(CACHE_FLUSHES_TOTAL).increment(1);
}

#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) fn record_remote_purge() {
    metrics::counter!(CACHE_REMOTE_PURGES_TOTAL).increment(1);
}
