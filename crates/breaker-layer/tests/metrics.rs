//! Metrics through the `metrics` facade, captured by a real `DebuggingRecorder` installed for this test binary.
//! One test function: snapshots reset counters, so parallel tests would steal each other's figures.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

use std::collections::HashMap;
use std::time::Duration;

use breaker_layer::metrics::{
    BREAKER_CALLS_TOTAL, BREAKER_KEYS_EVICTED_TOTAL, BREAKER_STATE, BREAKER_TRANSITIONS_TOTAL,
};
use breaker_layer::{BreakerState, CircuitBreaker, KeyedBreakers};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

/// Series name plus sorted `label=value` pairs, e.g. `breaker_calls_total{breaker=m,outcome=failure}`.
fn collect(snapshotter: &Snapshotter, into: &mut HashMap<String, f64>) {
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        let mut labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        labels.sort();
        let id = format!("{}{{{}}}", key.name(), labels.join(","));
        match value {
            DebugValue::Counter(n) => *into.entry(id).or_default() += n as f64,
            DebugValue::Gauge(g) => {
                into.insert(id, g.into_inner());
            }
            DebugValue::Histogram(_) => {}
        }
    }
}

#[tokio::test(start_paused = true)]
async fn calls_states_transitions_and_evictions_are_recorded() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();
    let mut seen = HashMap::new();

    let b = CircuitBreaker::builder()
        .name("m")
        .consecutive_failures(2)
        .half_open_probes(1)
        .slow_call_duration(Duration::from_secs(1))
        .wait_in_open(Duration::from_secs(1))
        .build()
        .unwrap();
    b.try_acquire().unwrap().success();
    let slow = b.try_acquire().unwrap();
    tokio::time::advance(Duration::from_secs(2)).await;
    slow.success(); // slow: counts towards the run of bad calls
    drop(b.try_acquire().unwrap()); // ignored
    b.try_acquire().unwrap().failure(); // second bad call in a row: open
    assert_eq!(b.state(), BreakerState::Open);
    assert!(b.try_acquire().is_err());
    assert!(b.try_acquire().is_err());
    collect(&snapshotter, &mut seen);
    assert_eq!(seen["breaker_state{breaker=m}"], 1.0);
    tokio::time::advance(Duration::from_secs(1)).await;
    b.try_acquire().unwrap().success();
    assert_eq!(b.state(), BreakerState::Closed);
    collect(&snapshotter, &mut seen);

    let calls =
        |outcome: &str| seen[&format!("{BREAKER_CALLS_TOTAL}{{breaker=m,outcome={outcome}}}")];
    assert_eq!(calls("success"), 2.0);
    assert_eq!(calls("slow"), 1.0);
    assert_eq!(calls("failure"), 1.0);
    assert_eq!(calls("ignored"), 1.0);
    assert_eq!(calls("rejected"), 2.0);
    let transitions = |from: &str, to: &str| {
        seen[&format!("{BREAKER_TRANSITIONS_TOTAL}{{breaker=m,from={from},to={to}}}")]
    };
    assert_eq!(transitions("closed", "open"), 1.0);
    assert_eq!(transitions("open", "half_open"), 1.0);
    assert_eq!(transitions("half_open", "closed"), 1.0);
    b.force_open();
    collect(&snapshotter, &mut seen);
    assert_eq!(seen[&format!("{BREAKER_STATE}{{breaker=m}}")], 4.0);
    assert_eq!(
        seen[&format!("{BREAKER_TRANSITIONS_TOTAL}{{breaker=m,from=closed,to=forced_open}}")],
        1.0
    );

    // Per-key breakers asked to carry their key do; the registry counts evictions.
    let keyed = KeyedBreakers::builder(CircuitBreaker::builder().name("k").consecutive_failures(1))
        .max_keys(1)
        .key_label(true)
        .build()
        .unwrap();
    keyed
        .get_or_insert("tenant-a")
        .try_acquire()
        .unwrap()
        .failure();
    keyed
        .get_or_insert("tenant-b")
        .try_acquire()
        .unwrap()
        .success();
    collect(&snapshotter, &mut seen);
    assert_eq!(
        seen[&format!("{BREAKER_CALLS_TOTAL}{{breaker=k,key=tenant-a,outcome=failure}}")],
        1.0
    );
    assert_eq!(
        seen[&format!("{BREAKER_CALLS_TOTAL}{{breaker=k,key=tenant-b,outcome=success}}")],
        1.0
    );
    assert_eq!(
        seen[&format!("{BREAKER_TRANSITIONS_TOTAL}{{breaker=k,from=closed,key=tenant-a,to=open}}")],
        1.0
    );
    assert_eq!(
        seen[&format!("{BREAKER_KEYS_EVICTED_TOTAL}{{breaker=k,reason=capacity}}")],
        1.0
    );
    assert_eq!(keyed.len(), 1);

    // Dry run: calls that would have been refused are counted, nothing is refused.
    let dry = CircuitBreaker::builder()
        .name("dry")
        .consecutive_failures(1)
        .initial_state(BreakerState::MetricsOnly)
        .build()
        .unwrap();
    dry.try_acquire().unwrap().failure();
    dry.try_acquire().unwrap().success();
    collect(&snapshotter, &mut seen);
    assert_eq!(
        seen[&format!("{BREAKER_CALLS_TOTAL}{{breaker=dry,outcome=would_reject}}")],
        1.0
    );
    assert_eq!(seen[&format!("{BREAKER_STATE}{{breaker=dry}}")], 5.0);
}
