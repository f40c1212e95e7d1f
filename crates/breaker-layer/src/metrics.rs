//! Metric names and labels recorded through the `metrics` facade, all in one place.
//!
//! The crate README lists them with their meaning; every series carries the `breaker` label, per-key breakers also `key`.

use metrics::{Counter, Gauge, Label};

/// Gauge: current state, see [`BreakerState::gauge_value`](crate::BreakerState::gauge_value)
/// (0 closed, 1 open, 2 half-open, 3 disabled, 4 forced open, 5 metrics only).
pub const BREAKER_STATE: &str = "breaker_state";
/// Counter: calls by `outcome` (`success`, `failure`, `slow`, `rejected`, `ignored`, `would_reject`).
pub const BREAKER_CALLS_TOTAL: &str = "breaker_calls_total";
/// Counter: state transitions by `from` and `to` (state names as in [`BreakerState::as_str`](crate::BreakerState::as_str)).
pub const BREAKER_TRANSITIONS_TOTAL: &str = "breaker_transitions_total";
/// Counter: per-key breakers dropped from a bounded registry, by `reason` (`idle`, `capacity`).
pub const BREAKER_KEYS_EVICTED_TOTAL: &str = "breaker_keys_evicted_total";

/// Label naming the breaker.
pub const LABEL_BREAKER: &str = "breaker";
/// Label naming the key of a per-key breaker.
pub const LABEL_KEY: &str = "key";
/// Label of [`BREAKER_CALLS_TOTAL`].
pub const LABEL_OUTCOME: &str = "outcome";
/// Labels of [`BREAKER_TRANSITIONS_TOTAL`].
pub const LABEL_FROM: &str = "from";
/// Labels of [`BREAKER_TRANSITIONS_TOTAL`].
pub const LABEL_TO: &str = "to";
/// Label of [`BREAKER_KEYS_EVICTED_TOTAL`].
pub const LABEL_REASON: &str = "reason";

/// Handles registered once per breaker, so recording a call neither formats nor allocates.
#[derive(Debug, Clone)]
pub(crate) struct Handles {
    pub(crate) labels: Vec<Label>,
    pub(crate) state: Gauge,
    pub(crate) success: Counter,
    pub(crate) failure: Counter,
    pub(crate) slow: Counter,
    pub(crate) rejected: Counter,
    pub(crate) ignored: Counter,
    pub(crate) would_reject: Counter,
}

impl Handles {
    /// `label_key` is the key to put in the labels, if any; a keyed breaker without it shares the aggregate call
    /// and transition series of its registry and sets no state gauge (one gauge cannot hold many states).
    pub(crate) fn register(name: &str, label_key: Option<&str>, keyed: bool) -> Self {
        let mut labels = vec![Label::new(LABEL_BREAKER, name.to_owned())];
        if let Some(key) = label_key {
            labels.push(Label::new(LABEL_KEY, key.to_owned()));
        }
        let calls = |outcome: &'static str| {
            let mut l = labels.clone();
            l.push(Label::new(LABEL_OUTCOME, outcome));
            metrics::counter!(BREAKER_CALLS_TOTAL, l)
        };
        Self {
            state: if keyed && label_key.is_none() {
                Gauge::noop()
            } else {
                metrics::gauge!(BREAKER_STATE, labels.clone())
            },
            success: calls("success"),
            failure: calls("failure"),
            slow: calls("slow"),
            rejected: calls("rejected"),
            ignored: calls("ignored"),
            would_reject: calls("would_reject"),
            labels,
        }
    }

    /// Count a transition; transitions are rare, so this one registers its series on the spot.
    pub(crate) fn transition(&self, from: &'static str, to: &'static str) {
        let mut l = self.labels.clone();
        l.push(Label::new(LABEL_FROM, from));
        l.push(Label::new(LABEL_TO, to));
        metrics::counter!(BREAKER_TRANSITIONS_TOTAL, l).increment(1);
    }
}

/// Registers the help text and unit of every metric above with the installed recorder, so exporters such as
/// Prometheus print `# HELP` lines. Building a breaker calls it; call it yourself after installing a recorder late.
pub fn describe() {
    metrics::describe_gauge!(
        BREAKER_STATE,
        "Circuit breaker state: 0 closed, 1 open, 2 half-open, 3 disabled, 4 forced open, 5 metrics only"
    );
    metrics::describe_counter!(
        BREAKER_CALLS_TOTAL,
        "Calls through a circuit breaker by outcome: success, failure, slow, rejected, ignored, would_reject"
    );
    metrics::describe_counter!(
        BREAKER_TRANSITIONS_TOTAL,
        "Circuit breaker state transitions by from and to state"
    );
    metrics::describe_counter!(
        BREAKER_KEYS_EVICTED_TOTAL,
        "Per-key circuit breakers dropped from a bounded registry, by reason: idle, capacity"
    );
}
