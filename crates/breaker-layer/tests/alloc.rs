//! The Closed path allocates nothing: `try_acquire` + `record` under a counting global allocator.
//! Alone in its test binary, so no other test allocates while it measures.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

use std::alloc::System;
use std::time::Duration;

use breaker_layer::{CircuitBreaker, Outcome};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn assert_no_allocation(breaker: &CircuitBreaker) {
    // Warm up once (lazy statics of the clock, the metrics facade).
    breaker.try_acquire().unwrap().success();
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
    assert_eq!(
        stats.allocations, 0,
        "{} closed-path allocations in 10 000 calls",
        stats.allocations
    );
    assert_eq!(stats.reallocations, 0);
}

#[test]
fn closed_path_does_not_allocate() {
    let count = CircuitBreaker::builder()
        .name("alloc-count")
        .failure_rate_threshold(90.0)
        .build()
        .unwrap();
    assert_no_allocation(&count);
    let time = CircuitBreaker::builder()
        .name("alloc-time")
        .time_window(Duration::from_secs(10))
        .failure_rate_threshold(90.0)
        .slow_call_duration(Duration::from_secs(1))
        .build()
        .unwrap();
    assert_no_allocation(&time);
    let run = CircuitBreaker::builder()
        .name("alloc-run")
        .consecutive_failures(5)
        .build()
        .unwrap();
    assert_no_allocation(&run);
}
