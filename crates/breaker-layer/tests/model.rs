//! Property test: the breaker against a small reference model of the state machine, over random sequences of
//! acquire / record / drop / advance-time / reset, for count and consecutive windows, with backoff.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

use std::collections::VecDeque;
use std::time::Duration;

use breaker_layer::{Backoff, BreakerState, CircuitBreaker, Outcome, Permit};
use proptest::prelude::*;

#[derive(Debug, Clone, Copy)]
struct Params {
    consecutive: bool,
    size: u32,
    min_calls: u32,
    threshold: u32,
    probes: u32,
    wait_ms: u64,
    max_half_open_ms: Option<u64>,
}

#[derive(Debug, Clone)]
enum Op {
    Acquire,
    Record(usize, Outcome),
    Drop(usize),
    Advance(u64),
    Reset,
}

#[derive(Debug)]
enum State {
    Closed {
        window: VecDeque<bool>,
        run: u32,
    },
    Open {
        until: u64,
    },
    HalfOpen {
        in_flight: u32,
        done: u32,
        fails: u32,
        deadline: Option<u64>,
    },
}

/// The reference: plain data, no atomics, no locks, no epochs hidden in bits.
struct Model {
    p: Params,
    now: u64,
    state: State,
    epoch: u64,
    reopens: u32,
}

const MAX_WAIT_FACTOR: u64 = 8;

impl Model {
    fn closed() -> State {
        State::Closed {
            window: VecDeque::new(),
            run: 0,
        }
    }

    fn visible(&self) -> BreakerState {
        match self.state {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    fn open(&mut self) {
        let wait = (self.p.wait_ms << self.reopens.min(10)).min(self.p.wait_ms * MAX_WAIT_FACTOR);
        self.reopens += 1;
        self.state = State::Open {
            until: self.now + wait,
        };
        self.epoch += 1;
    }

    fn close(&mut self) {
        self.reopens = 0;
        self.state = Self::closed();
        self.epoch += 1;
    }

    fn decide(&mut self) {
        if let State::HalfOpen { done, fails, .. } = self.state {
            let reopen = done == 0
                || if self.p.consecutive {
                    fails > 0
                } else {
                    fails * 100 >= self.p.threshold * done
                };
            if reopen { self.open() } else { self.close() }
        }
    }

    /// Some((epoch, probe)) when admitted; None when refused (with the expected Retry-After in ms for Open).
    fn acquire(&mut self) -> Result<(u64, bool), Option<u64>> {
        if let State::HalfOpen {
            deadline: Some(d), ..
        } = self.state
            && self.now >= d
        {
            self.decide();
        }
        if let State::Open { until } = self.state {
            if self.now < until {
                return Err(Some(until - self.now));
            }
            self.state = State::HalfOpen {
                in_flight: 0,
                done: 0,
                fails: 0,
                deadline: self.p.max_half_open_ms.map(|m| self.now + m),
            };
            self.epoch += 1;
        }
        match &mut self.state {
            State::Closed { .. } => Ok((self.epoch, false)),
            State::HalfOpen {
                in_flight, done, ..
            } => {
                if *in_flight + *done < self.p.probes {
                    *in_flight += 1;
                    Ok((self.epoch, true))
                } else {
                    Err(None)
                }
            }
            State::Open { .. } => unreachable!(),
        }
    }

    fn complete(&mut self, epoch: u64, outcome: Outcome) {
        if epoch != self.epoch {
            return;
        }
        let p = self.p;
        let now = self.now;
        match &mut self.state {
            State::Closed { window, run } => {
                if outcome == Outcome::Ignored {
                    return;
                }
                let fail = outcome == Outcome::Failure;
                let trip = if p.consecutive {
                    *run = if fail { *run + 1 } else { 0 };
                    *run >= p.size
                } else {
                    window.push_back(fail);
                    if window.len() > p.size as usize {
                        window.pop_front();
                    }
                    let calls = window.len() as u32;
                    let fails = window.iter().filter(|f| **f).count() as u32;
                    calls >= p.min_calls && fails * 100 >= p.threshold * calls
                };
                if trip {
                    self.open();
                }
            }
            State::HalfOpen {
                in_flight,
                done,
                fails,
                deadline,
            } => {
                *in_flight -= 1;
                if outcome != Outcome::Ignored {
                    *done += 1;
                    *fails += u32::from(outcome == Outcome::Failure);
                }
                if *done >= p.probes || deadline.is_some_and(|d| now >= d) {
                    self.decide();
                }
            }
            State::Open { .. } => {}
        }
    }
}

fn params() -> impl Strategy<Value = Params> {
    (
        any::<bool>(),
        1u32..6,
        1u32..6,
        1u32..=100,
        1u32..4,
        1u64..5,
        proptest::option::of(1u64..6),
    )
        .prop_map(
            |(consecutive, size, min_calls, threshold, probes, wait_s, half_open_s)| Params {
                consecutive,
                size,
                min_calls: min_calls.min(size),
                threshold,
                probes,
                wait_ms: wait_s * 1000,
                max_half_open_ms: half_open_s.map(|s| s * 1000),
            },
        )
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        Just(Outcome::Success),
        Just(Outcome::Failure),
        Just(Outcome::Failure),
        Just(Outcome::Ignored)
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Acquire),
        4 => (any::<usize>(), outcome()).prop_map(|(i, o)| Op::Record(i, o)),
        1 => any::<usize>().prop_map(Op::Drop),
        2 => (0u64..4000).prop_map(Op::Advance),
        1 => (0u64..2).prop_map(|_| Op::Reset),
    ]
}

fn run(p: Params, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut builder = CircuitBreaker::builder()
            .wait_in_open(Duration::from_millis(p.wait_ms))
            .open_backoff(Backoff {
                multiplier: 2.0,
                max: Duration::from_millis(p.wait_ms * MAX_WAIT_FACTOR),
            })
            .half_open_probes(p.probes)
            .max_wait_in_half_open(p.max_half_open_ms.map(Duration::from_millis))
            .failure_rate_threshold(f64::from(p.threshold));
        builder = if p.consecutive {
            builder.consecutive_failures(p.size)
        } else {
            builder.count_window(p.size).minimum_calls(p.min_calls)
        };
        let real = builder.build().unwrap();
        let mut model = Model {
            p,
            now: 0,
            state: Model::closed(),
            epoch: 0,
            reopens: 0,
        };
        let mut permits: Vec<(Permit, u64)> = Vec::new();
        for op in ops {
            match op {
                Op::Acquire => match (real.try_acquire(), model.acquire()) {
                    (Ok(permit), Ok((epoch, probe))) => {
                        prop_assert_eq!(permit.is_probe(), probe);
                        permits.push((permit, epoch));
                    }
                    (Err(rejected), Err(retry_ms)) => {
                        if let Some(ms) = retry_ms {
                            prop_assert_eq!(rejected.retry_after(), Duration::from_millis(ms));
                        }
                    }
                    (r, m) => prop_assert!(false, "real {:?} vs model {:?}", r.map(|_| ()), m),
                },
                Op::Record(i, outcome) if !permits.is_empty() => {
                    let (permit, epoch) = permits.remove(i % permits.len());
                    permit.record(outcome);
                    model.complete(epoch, outcome);
                }
                Op::Drop(i) if !permits.is_empty() => {
                    let (permit, epoch) = permits.remove(i % permits.len());
                    drop(permit);
                    model.complete(epoch, Outcome::Ignored);
                }
                Op::Record(..) | Op::Drop(_) => {}
                Op::Advance(ms) => {
                    tokio::time::advance(Duration::from_millis(ms)).await;
                    model.now += ms;
                }
                Op::Reset => {
                    real.reset();
                    model.reopens = 0;
                    model.state = Model::closed();
                    model.epoch += 1;
                }
            }
            prop_assert_eq!(real.state(), model.visible());
            if let State::HalfOpen { in_flight, .. } = model.state {
                prop_assert_eq!(real.snapshot().probes_in_flight, in_flight);
            }
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn breaker_matches_reference_model(p in params(), ops in proptest::collection::vec(op(), 1..120)) {
        run(p, ops)?;
    }
}
