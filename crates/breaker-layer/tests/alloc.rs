//! The Closed path allocates nothing: `try_acquire` + `record` under a counting global allocator.
//! Alone in its test binary, so no other test allocates while it measures.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

use std::alloc::System;
use std::time::Duration;

use breaker_layer::{CircuitBreaker, Outcome};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Rounds of 10 000 calls measured per breaker. The counting allocator sees every thread of the process, and the
/// test harness's own thread allocates a few bytes now and then (seen as 4 allocations in about one run in 30, for
/// any window type). A closed path that allocates does so on every call, so it fails every round; the harness's
/// occasional allocation cannot land in all of them.
const ROUNDS: usize = 3;

fn assert_no_allocation(breaker: &CircuitBreaker, which: &str) {
    // Warm up once (lazy statics of the clock, the metrics facade).
    breaker.try_acquire().unwrap().success();
    let mut seen = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let region = Region::new(GLOBAL);
        for i in 0..10_000u32 {
            let permit = breaker.try_acquire().unwrap();
            permit.record(if i % 3 == 0 {
                Outcome::Failure
            } else {
                Outcome::Success
            });
        }
        drop(breaker.try_acquire().unwrap());
        let stats = region.change();
        if stats.allocations == 0 && stats.reallocations == 0 {
            return;
        }
        seen.push((stats.allocations, stats.reallocations));
    }
    panic!(
        "{which} window: the closed path allocated in every round of 10 000 calls \
         (allocations, reallocations per round: {seen:?})"
    );
}

#[test]
fn closed_path_does_not_allocate() {
    let count = CircuitBreaker::builder()
        .name("alloc-count")
        .failure_rate_threshold(90.0)
        .build()
        .unwrap();
    assert_no_allocation(&count, "count");
    let time = CircuitBreaker::builder()
        .name("alloc-time")
        .time_window(Duration::from_secs(10))
        .failure_rate_threshold(90.0)
        .slow_call_duration(Duration::from_secs(1))
        .build()
        .unwrap();
    assert_no_allocation(&time, "time");
    let run = CircuitBreaker::builder()
        .name("alloc-run")
        .consecutive_failures(5)
        .build()
        .unwrap();
    assert_no_allocation(&run, "consecutive");
}
