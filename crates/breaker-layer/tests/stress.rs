//! Many threads racing for HalfOpen probe slots: never more than N probes run at once, and once every permit is
//! gone the breaker is not wedged.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use breaker_layer::{BreakerState, CircuitBreaker, Outcome};

const PROBES: u32 = 3;
const THREADS: usize = 8;
const ITERATIONS: usize = 20_000;

#[test]
fn half_open_never_admits_more_than_n_probes_and_never_wedges() {
    // The std clock here (no tokio runtime): a 1 ms Open wait lets the threads cycle through every state many times.
    let breaker = CircuitBreaker::builder()
        .consecutive_failures(2)
        .half_open_probes(PROBES)
        .wait_in_open(Duration::from_millis(1))
        .max_wait_in_half_open(None)
        .build()
        .unwrap();
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let probes_seen = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (b, running, most, seen) = (
                breaker.clone(),
                running.clone(),
                most.clone(),
                probes_seen.clone(),
            );
            std::thread::spawn(move || {
                let mut rng = fastrand::Rng::with_seed(t as u64);
                for _ in 0..ITERATIONS {
                    let Ok(permit) = b.try_acquire() else {
                        continue;
                    };
                    let probe = permit.is_probe();
                    if probe {
                        seen.fetch_add(1, Ordering::Relaxed);
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        for _ in 0..rng.usize(0..50) {
                            std::hint::spin_loop();
                        }
                        // Leave the count before the slot is freed, so the next probe cannot overlap us here.
                        running.fetch_sub(1, Ordering::SeqCst);
                    }
                    match rng.u8(0..10) {
                        0..=3 => permit.record(Outcome::Success),
                        4..=6 => permit.record(Outcome::Failure),
                        7 => permit.record(Outcome::Ignored),
                        _ => drop(permit),
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(
        probes_seen.load(Ordering::Relaxed) > 0,
        "the run went through HalfOpen"
    );
    assert!(
        most.load(Ordering::SeqCst) <= PROBES as usize,
        "at most {PROBES} probes at once"
    );
    let snap = breaker.snapshot();
    assert_eq!(snap.probes_in_flight, 0, "every slot was released");
    match snap.state {
        BreakerState::Closed | BreakerState::HalfOpen => assert!(breaker.try_acquire().is_ok()),
        BreakerState::Open => {
            assert!(snap.retry_after.unwrap_or_default() <= Duration::from_millis(1))
        }
        other => panic!("unexpected state {other}"),
    }
}
