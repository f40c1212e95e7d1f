//! Pre-built metric keys, so recording an outcome allocates nothing (the `metrics` macros build a label
//! vector on every call when the label value is not a literal).

use metrics::{Key, Label, Level, Metadata};

use crate::names;

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

macro_rules! outcome_keys {
    ($($key:ident, $labels:ident => $name:path, $value:path;)*) => {
        $(
            static $labels: [Label; 1] = [Label::from_static_parts(names::LABEL_OUTCOME, $value)];
            pub(crate) static $key: Key = Key::from_static_parts($name, &$labels);
        )*
    };
}

outcome_keys! {
    LEADER, LEADER_LABELS => names::DEDUP_REQUESTS_TOTAL, names::OUTCOME_LEADER;
    COALESCED, COALESCED_LABELS => names::DEDUP_REQUESTS_TOTAL, names::OUTCOME_COALESCED;
    BYPASSED, BYPASSED_LABELS => names::DEDUP_REQUESTS_TOTAL, names::OUTCOME_BYPASSED;
    TIMEOUT, TIMEOUT_LABELS => names::DEDUP_REQUESTS_TOTAL, names::OUTCOME_TIMEOUT;
    IDEM_NEW, IDEM_NEW_LABELS => names::DEDUP_IDEMPOTENCY_TOTAL, names::IDEMPOTENCY_NEW;
    IDEM_REPLAYED, IDEM_REPLAYED_LABELS => names::DEDUP_IDEMPOTENCY_TOTAL, names::IDEMPOTENCY_REPLAYED;
    IDEM_CONFLICT, IDEM_CONFLICT_LABELS => names::DEDUP_IDEMPOTENCY_TOTAL, names::IDEMPOTENCY_CONFLICT;
    IDEM_MISMATCH, IDEM_MISMATCH_LABELS => names::DEDUP_IDEMPOTENCY_TOTAL, names::IDEMPOTENCY_MISMATCH;
    IDEM_MISSING, IDEM_MISSING_LABELS => names::DEDUP_IDEMPOTENCY_TOTAL, names::IDEMPOTENCY_MISSING;
    IDEM_INVALID, IDEM_INVALID_LABELS => names::DEDUP_IDEMPOTENCY_TOTAL, names::IDEMPOTENCY_INVALID;
    IDEM_STORE_ERROR, IDEM_STORE_ERROR_LABELS => names::DEDUP_IDEMPOTENCY_TOTAL, names::IDEMPOTENCY_STORE_ERROR;
}

static INFLIGHT: Key = Key::from_static_name(names::DEDUP_INFLIGHT);

/// Adds one to the counter `key`.
pub(crate) fn count(key: &'static Key) {
    metrics::with_recorder(|recorder| recorder.register_counter(key, &METADATA)).increment(1);
}

/// Moves the in-flight gauge by `delta`.
pub(crate) fn inflight(delta: f64) {
    let gauge = metrics::with_recorder(|recorder| recorder.register_gauge(&INFLIGHT, &METADATA));
    if delta >= 0.0 {
        gauge.increment(delta);
    } else {
        gauge.decrement(-delta);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_the_documented_names_and_labels() {
        assert_eq!(LEADER.name(), names::DEDUP_REQUESTS_TOTAL);
        let label = LEADER.labels().next().map(|l| (l.key(), l.value()));
        assert_eq!(label, Some((names::LABEL_OUTCOME, names::OUTCOME_LEADER)));
        assert_eq!(IDEM_STORE_ERROR.name(), names::DEDUP_IDEMPOTENCY_TOTAL);
        assert_eq!(INFLIGHT.name(), names::DEDUP_INFLIGHT);
    }
}
