//! Metric names and label values recorded by this crate through the `metrics` facade.
//!
//! Every name lives here so dashboards and alerts have one place to look; the crate README lists them too.

/// Counter of requests seen by [`DedupLayer`](crate::DedupLayer) for a coalescable method, labelled by `outcome`.
///
/// Label values: [`OUTCOME_LEADER`], [`OUTCOME_COALESCED`], [`OUTCOME_BYPASSED`], [`OUTCOME_TIMEOUT`].
pub const DEDUP_REQUESTS_TOTAL: &str = "dedup_requests_total";

/// Gauge of keys currently in flight (one per distinct running leader).
pub const DEDUP_INFLIGHT: &str = "dedup_inflight";

/// Counter of requests handled by [`IdempotencyLayer`](crate::IdempotencyLayer), labelled by `outcome`.
///
/// Label values: [`IDEMPOTENCY_NEW`], [`IDEMPOTENCY_REPLAYED`], [`IDEMPOTENCY_CONFLICT`], [`IDEMPOTENCY_MISMATCH`],
/// [`IDEMPOTENCY_MISSING`], [`IDEMPOTENCY_INVALID`], [`IDEMPOTENCY_STORE_ERROR`].
pub const DEDUP_IDEMPOTENCY_TOTAL: &str = "dedup_idempotency_total";

/// Label key carried by both counters.
pub const LABEL_OUTCOME: &str = "outcome";

/// The request started the inner call for its key.
pub const OUTCOME_LEADER: &str = "leader";
/// The request received the response of a leader that was already running.
pub const OUTCOME_COALESCED: &str = "coalesced";
/// The request ran on its own: the in-flight map was full, the leader's answer could not be shared
/// (body above the limit, `Set-Cookie`), or no runtime was available.
pub const OUTCOME_BYPASSED: &str = "bypassed";
/// The request waited longer than the waiter timeout.
pub const OUTCOME_TIMEOUT: &str = "timeout";

/// First use of an idempotency key: the inner service ran.
pub const IDEMPOTENCY_NEW: &str = "new";
/// A completed key was replayed from the store.
pub const IDEMPOTENCY_REPLAYED: &str = "replayed";
/// The key is still being processed by an earlier request (409).
pub const IDEMPOTENCY_CONFLICT: &str = "conflict";
/// The key was reused with a different request fingerprint (422).
pub const IDEMPOTENCY_MISMATCH: &str = "mismatch";
/// The key was required but absent (400).
pub const IDEMPOTENCY_MISSING: &str = "missing";
/// The key was malformed, or the body could not be read or was too large (400/413).
pub const IDEMPOTENCY_INVALID: &str = "invalid";
/// The store failed or timed out; the request failed open or was answered with 503.
pub const IDEMPOTENCY_STORE_ERROR: &str = "store_error";

/// Registers the help text of every metric above with the installed recorder, so exporters such as Prometheus
/// print `# HELP` lines. Building a layer calls it; call it yourself after installing a recorder late.
pub fn describe() {
    metrics::describe_counter!(
        DEDUP_REQUESTS_TOTAL,
        "Requests of coalescable methods by outcome: leader, coalesced, bypassed, timeout"
    );
    metrics::describe_gauge!(
        DEDUP_INFLIGHT,
        "Keys in flight: distinct requests running with other callers able to join"
    );
    metrics::describe_counter!(
        DEDUP_IDEMPOTENCY_TOTAL,
        "Idempotency-Key decisions by outcome: new, replayed, conflict, mismatch, missing, invalid, store_error"
    );
}
