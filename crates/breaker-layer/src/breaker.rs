//! The circuit breaker itself, usable without tower: admission ([`CircuitBreaker::try_acquire`]), recording
//! ([`Permit`]), control (force open, disable, reset) and observation (state, snapshot, transition stream).
//!
//! The Closed path is one atomic load to admit and one short uncontended critical section to record; nothing allocates.

use std::fmt;
use std::future::IntoFuture;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::config::{BreakerBuilder, Config, SlidingWindow};
use crate::metrics::Handles;
use crate::window::{Sample, Totals, Window};

/// Called (off the lock) when a breaker opens by its own judgement: breaker name, key, Open wait.
pub(crate) type OpenListener = Arc<dyn Fn(&str, Option<&str>, Duration) + Send + Sync>;

/// Retry hint given while HalfOpen has no free probe slot: the probes in flight usually settle quickly.
const HALF_OPEN_RETRY: Duration = Duration::from_secs(1);

/// The state of a breaker as seen from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BreakerState {
    /// Calls pass and are judged by the window.
    Closed,
    /// Calls are rejected until the Open wait has passed.
    Open,
    /// A limited number of probe calls decide between Closed and Open.
    HalfOpen,
    /// Calls pass and nothing is recorded.
    Disabled,
    /// Calls are rejected until the breaker is reset.
    ForcedOpen,
    /// Dry run: calls are judged and transitions reported as usual, but nothing is rejected.
    MetricsOnly,
}

impl BreakerState {
    /// Name used in metric labels and tracing events: `closed`, `open`, `half_open`, `disabled`, `forced_open`,
    /// `metrics_only`.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
            BreakerState::Disabled => "disabled",
            BreakerState::ForcedOpen => "forced_open",
            BreakerState::MetricsOnly => "metrics_only",
        }
    }

    /// Value of the `breaker_state` gauge: 0 closed, 1 open, 2 half-open, 3 disabled, 4 forced open, 5 metrics only.
    pub fn gauge_value(self) -> f64 {
        f64::from(self.code())
    }

    fn code(self) -> u8 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
            BreakerState::Disabled => 3,
            BreakerState::ForcedOpen => 4,
            BreakerState::MetricsOnly => 5,
        }
    }

    fn from_code(code: u8) -> Self {
        match code {
            0 => BreakerState::Closed,
            1 => BreakerState::Open,
            2 => BreakerState::HalfOpen,
            3 => BreakerState::Disabled,
            4 => BreakerState::ForcedOpen,
            _ => BreakerState::MetricsOnly,
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a call ended, as far as the breaker is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The dependency did its job (it may still count as slow).
    Success,
    /// The dependency failed.
    Failure,
    /// The call says nothing about the dependency (e.g. a client error or a cancelled call); it is not judged and a
    /// HalfOpen probe slot it held is freed.
    Ignored,
}

/// The breaker refused a call. Carries how long until it may admit calls again.
///
/// ```
/// # use std::time::Duration;
/// # use breaker_layer::{BreakerState, CircuitBreaker};
/// let breaker = CircuitBreaker::builder().build()?;
/// breaker.force_open();
/// let rejected = breaker.try_acquire().unwrap_err();
/// assert_eq!(rejected.state(), BreakerState::ForcedOpen);
/// assert!(rejected.retry_after() > Duration::ZERO);
/// # Ok::<(), breaker_layer::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    retry_after: Duration,
    state: BreakerState,
}

impl Rejected {
    /// Time until the next probe may be admitted (for a forced-open breaker: the configured Open wait, as a hint).
    pub fn retry_after(&self) -> Duration {
        self.retry_after
    }

    /// [`retry_after`](Self::retry_after) in whole seconds, rounded up and at least 1, as `Retry-After` wants it.
    pub fn retry_after_secs(&self) -> u64 {
        let d = self.retry_after;
        d.as_secs()
            .saturating_add(u64::from(d.subsec_nanos() > 0))
            .max(1)
    }

    /// The state that refused the call: Open, HalfOpen (no free probe slot) or ForcedOpen.
    pub fn state(&self) -> BreakerState {
        self.state
    }
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "circuit breaker is {}; retry after {:?}",
            self.state, self.retry_after
        )
    }
}

impl std::error::Error for Rejected {}

/// The result of [`CircuitBreaker::call`]: the call was refused, or it ran and failed.
#[derive(Debug)]
pub enum CallError<E> {
    /// The breaker did not let the call run.
    Rejected(Rejected),
    /// The call ran and returned this error.
    Inner(E),
}

impl<E: fmt::Display> fmt::Display for CallError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Rejected(r) => r.fmt(f),
            CallError::Inner(e) => e.fmt(f),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for CallError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CallError::Rejected(r) => Some(r),
            CallError::Inner(e) => Some(e),
        }
    }
}

/// A change of state, sent to [`CircuitBreaker::subscribe`]rs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateTransition {
    /// Name of the breaker.
    pub breaker: Arc<str>,
    /// Key of a per-key breaker.
    pub key: Option<Arc<str>>,
    /// State before.
    pub from: BreakerState,
    /// State after.
    pub to: BreakerState,
    /// When it happened (tokio clock).
    pub at: Instant,
    /// In metrics-only mode: a transition the breaker would have made (its visible state stays `MetricsOnly`).
    pub dry_run: bool,
}

/// Counters and window figures at one moment, from [`CircuitBreaker::snapshot`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct MetricsSnapshot {
    /// Visible state.
    pub state: BreakerState,
    /// Judged state behind a metrics-only breaker (equal to `state` otherwise, or Closed when disabled/forced).
    pub machine_state: BreakerState,
    /// Calls in the window now.
    pub window_calls: u64,
    /// Failed calls in the window now.
    pub window_failures: u64,
    /// Slow calls in the window now.
    pub window_slow_calls: u64,
    /// Failure percentage of the window now.
    pub failure_rate: f64,
    /// Slow-call percentage of the window now.
    pub slow_call_rate: f64,
    /// Calls recorded as successes (not slow) since the breaker was built.
    pub successes: u64,
    /// Calls recorded as failures since the breaker was built.
    pub failures: u64,
    /// Successful calls that were slow since the breaker was built.
    pub slow_successes: u64,
    /// Calls recorded as ignored or dropped unrecorded since the breaker was built.
    pub ignored: u64,
    /// Calls refused since the breaker was built.
    pub rejected: u64,
    /// HalfOpen probes currently running.
    pub probes_in_flight: u32,
    /// Time until Open lets probes through, while Open.
    pub retry_after: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Normal,
    Disabled,
    ForcedOpen,
    MetricsOnly,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Machine {
    Closed,
    Open,
    HalfOpen,
}

impl Machine {
    fn state(self) -> BreakerState {
        match self {
            Machine::Closed => BreakerState::Closed,
            Machine::Open => BreakerState::Open,
            Machine::HalfOpen => BreakerState::HalfOpen,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PermitKind {
    /// Admitted while Closed: judged by the window.
    Closed,
    /// A HalfOpen probe holding a slot.
    Probe,
    /// Admitted by a disabled breaker, or by a metrics-only one that would have refused: not judged.
    Unjudged,
}

#[derive(Debug)]
struct Transition {
    from: BreakerState,
    to: BreakerState,
    at_nanos: u64,
    dry_run: bool,
    /// Set when the breaker opened by its own judgement (the Open wait), for the cross-instance listener.
    opened_for: Option<Duration>,
}

#[derive(Debug, Default)]
struct Counts {
    success: u64,
    failure: u64,
    slow: u64,
    ignored: u64,
}

#[derive(Debug)]
struct Core {
    mode: Mode,
    machine: Machine,
    /// Bumped on every change; permits from an older epoch are not judged.
    epoch: u64,
    window: Window,
    probes_in_flight: u32,
    probes_done: u32,
    probe_failures: u32,
    probe_slow: u32,
    half_open_deadline: Option<u64>,
    open_until: u64,
    /// Opens since the last close, for the backoff.
    reopens: u32,
    counts: Counts,
    rng: fastrand::Rng,
}

impl Core {
    fn visible(&self) -> BreakerState {
        match self.mode {
            Mode::Normal => self.machine.state(),
            Mode::Disabled => BreakerState::Disabled,
            Mode::ForcedOpen => BreakerState::ForcedOpen,
            Mode::MetricsOnly => BreakerState::MetricsOnly,
        }
    }
}

struct Shared {
    /// Visible state code in the low 8 bits, the epoch above.
    word: AtomicU64,
    /// Nanoseconds since `base` when Open lets probes through.
    open_until: AtomicU64,
    rejected: AtomicU64,
    base: Instant,
    config: Config,
    key: Option<Arc<str>>,
    core: Mutex<Core>,
    metrics: Handles,
    transitions: broadcast::Sender<StateTransition>,
}

/// A circuit breaker. Cheap to clone: clones share one state.
///
/// ```
/// use breaker_layer::{CircuitBreaker, Outcome};
///
/// let breaker = CircuitBreaker::builder().name("redis").consecutive_failures(3).build()?;
/// for _ in 0..3 {
///     let permit = breaker.try_acquire().expect("closed");
///     permit.record(Outcome::Failure);
/// }
/// let rejected = breaker.try_acquire().unwrap_err();
/// println!("open, retry in {}s", rejected.retry_after_secs());
/// # Ok::<(), breaker_layer::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct CircuitBreaker {
    shared: Arc<Shared>,
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("name", &self.shared.config.name)
            .field("key", &self.shared.key)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

fn lock(core: &Mutex<Core>) -> MutexGuard<'_, Core> {
    // Nothing panics while the lock is held; should that change, the data stays consistent enough to go on.
    core.lock().unwrap_or_else(PoisonError::into_inner)
}

fn word(state: BreakerState, epoch: u64) -> u64 {
    u64::from(state.code()) | (epoch << 8)
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl CircuitBreaker {
    /// Start configuring a breaker.
    pub fn builder() -> BreakerBuilder {
        BreakerBuilder::default()
    }

    pub(crate) fn from_config(config: Config, key: Option<Arc<str>>) -> Self {
        let (transitions, _) = broadcast::channel(config.transition_capacity);
        Self::with_channel(config, key, transitions)
    }

    pub(crate) fn with_channel(
        config: Config,
        key: Option<Arc<str>>,
        transitions: broadcast::Sender<StateTransition>,
    ) -> Self {
        let mode = match config.initial_state {
            BreakerState::Disabled => Mode::Disabled,
            BreakerState::ForcedOpen => Mode::ForcedOpen,
            BreakerState::MetricsOnly => Mode::MetricsOnly,
            _ => Mode::Normal,
        };
        let core = Core {
            mode,
            machine: Machine::Closed,
            epoch: 0,
            window: Window::new(config.window),
            probes_in_flight: 0,
            probes_done: 0,
            probe_failures: 0,
            probe_slow: 0,
            half_open_deadline: None,
            open_until: 0,
            reopens: 0,
            counts: Counts::default(),
            rng: fastrand::Rng::new(),
        };
        let visible = core.visible();
        let metrics = Handles::register(
            &config.name,
            key.as_deref().filter(|_| config.key_label),
            key.is_some(),
        );
        metrics.state.set(visible.gauge_value());
        Self {
            shared: Arc::new(Shared {
                word: AtomicU64::new(word(visible, 0)),
                open_until: AtomicU64::new(0),
                rejected: AtomicU64::new(0),
                base: Instant::now(),
                config,
                key,
                core: Mutex::new(core),
                metrics,
                transitions,
            }),
        }
    }

    /// Name given to [`BreakerBuilder::name`].
    pub fn name(&self) -> &str {
        &self.shared.config.name
    }

    /// Key of a per-key breaker.
    pub fn key(&self) -> Option<&str> {
        self.shared.key.as_deref()
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn set_open_listener(&self, listener: OpenListener) {
        let _ = self.shared.config.open_listener.set(listener);
    }

    fn now_nanos(&self) -> u64 {
        nanos(Instant::now().saturating_duration_since(self.shared.base))
    }

    fn instant_at(&self, at_nanos: u64) -> Instant {
        self.shared.base + Duration::from_nanos(at_nanos)
    }

    /// Ask to make a call. Keep the [`Permit`] for the duration of the call and record how it went; a permit dropped
    /// without a record counts as [`Outcome::Ignored`] and frees its HalfOpen probe slot.
    ///
    /// An Open breaker whose wait has passed moves to HalfOpen here; no timer task is involved.
    #[inline]
    pub fn try_acquire(&self) -> Result<Permit, Rejected> {
        let w = self.shared.word.load(Ordering::Acquire);
        if w & 0xff == u64::from(BreakerState::Closed.code()) {
            return Ok(self.permit(PermitKind::Closed, w >> 8));
        }
        self.acquire_slow(w)
    }

    #[inline]
    fn permit(&self, kind: PermitKind, epoch: u64) -> Permit {
        let started = match self.shared.config.slow_call_duration {
            Some(_) if kind != PermitKind::Unjudged => Some(Instant::now()),
            _ => None,
        };
        Permit {
            breaker: self.clone(),
            epoch,
            kind,
            started,
            done: false,
        }
    }

    #[cold]
    fn acquire_slow(&self, w: u64) -> Result<Permit, Rejected> {
        let state = BreakerState::from_code((w & 0xff) as u8);
        match state {
            BreakerState::Closed => Ok(self.permit(PermitKind::Closed, w >> 8)),
            BreakerState::Disabled => Ok(self.permit(PermitKind::Unjudged, w >> 8)),
            BreakerState::ForcedOpen => {
                Err(self.reject(BreakerState::ForcedOpen, self.shared.config.wait_in_open))
            }
            BreakerState::Open => {
                let now = self.now_nanos();
                let until = self.shared.open_until.load(Ordering::Acquire);
                if now < until {
                    return Err(self.reject(BreakerState::Open, Duration::from_nanos(until - now)));
                }
                self.acquire_locked(now)
            }
            BreakerState::HalfOpen | BreakerState::MetricsOnly => {
                self.acquire_locked(self.now_nanos())
            }
        }
    }

    fn acquire_locked(&self, now: u64) -> Result<Permit, Rejected> {
        let mut transitions = Vec::new();
        let admitted = {
            let mut core = lock(&self.shared.core);
            let admitted = match core.mode {
                Mode::Normal | Mode::MetricsOnly => self.admit(&mut core, now, &mut transitions),
                Mode::Disabled => Ok((PermitKind::Unjudged, core.epoch)),
                Mode::ForcedOpen => {
                    Err((BreakerState::ForcedOpen, self.shared.config.wait_in_open))
                }
            };
            match admitted {
                Err(_) if core.mode == Mode::MetricsOnly => {
                    self.shared.metrics.would_reject.increment(1);
                    Ok((PermitKind::Unjudged, core.epoch))
                }
                other => other,
            }
        };
        self.emit(transitions);
        match admitted {
            Ok((kind, epoch)) => Ok(self.permit(kind, epoch)),
            Err((state, retry_after)) => Err(self.reject(state, retry_after)),
        }
    }

    fn reject(&self, state: BreakerState, retry_after: Duration) -> Rejected {
        self.shared.rejected.fetch_add(1, Ordering::Relaxed);
        self.shared.metrics.rejected.increment(1);
        Rejected { retry_after, state }
    }

    /// The state machine's admission decision (Normal and MetricsOnly modes).
    fn admit(
        &self,
        core: &mut Core,
        now: u64,
        out: &mut Vec<Transition>,
    ) -> Result<(PermitKind, u64), (BreakerState, Duration)> {
        if core.machine == Machine::HalfOpen && core.half_open_deadline.is_some_and(|d| now >= d) {
            self.decide_half_open(core, now, out);
        }
        match core.machine {
            Machine::Closed => Ok((PermitKind::Closed, core.epoch)),
            Machine::Open if now < core.open_until => Err((
                BreakerState::Open,
                Duration::from_nanos(core.open_until - now),
            )),
            Machine::Open | Machine::HalfOpen => {
                if core.machine == Machine::Open {
                    self.to_half_open(core, now, out);
                }
                if core.probes_in_flight + core.probes_done < self.shared.config.half_open_probes {
                    core.probes_in_flight += 1;
                    Ok((PermitKind::Probe, core.epoch))
                } else {
                    Err((BreakerState::HalfOpen, HALF_OPEN_RETRY))
                }
            }
        }
    }

    fn finish(&self, kind: PermitKind, epoch: u64, started: Option<Instant>, outcome: Outcome) {
        let config = &self.shared.config;
        let slow = match (started, config.slow_call_duration) {
            (Some(started), Some(limit)) if outcome != Outcome::Ignored => {
                started.elapsed() >= limit
            }
            _ => false,
        };
        let m = &self.shared.metrics;
        match kind {
            PermitKind::Unjudged => {
                // A disabled breaker records nothing; a metrics-only breaker still counts what happened.
                if self.shared.word.load(Ordering::Relaxed) & 0xff
                    == u64::from(BreakerState::Disabled.code())
                {
                    return;
                }
            }
            PermitKind::Closed | PermitKind::Probe => {}
        }
        match outcome {
            Outcome::Success if slow => m.slow.increment(1),
            Outcome::Success => m.success.increment(1),
            Outcome::Failure => m.failure.increment(1),
            Outcome::Ignored => m.ignored.increment(1),
        }
        let sample = Sample {
            failure: outcome == Outcome::Failure,
            slow,
        };
        let mut transitions = Vec::new();
        {
            let mut core = lock(&self.shared.core);
            match outcome {
                Outcome::Success if slow => core.counts.slow += 1,
                Outcome::Success => core.counts.success += 1,
                Outcome::Failure => core.counts.failure += 1,
                Outcome::Ignored => core.counts.ignored += 1,
            }
            if epoch != core.epoch || kind == PermitKind::Unjudged {
                return;
            }
            match (kind, core.machine) {
                (PermitKind::Closed, Machine::Closed) if outcome != Outcome::Ignored => {
                    let now = if core.window.needs_clock() {
                        self.now_nanos()
                    } else {
                        0
                    };
                    core.window.record(sample, now);
                    if core.window.should_open(config) {
                        let now = if now == 0 { self.now_nanos() } else { now };
                        self.to_open(&mut core, now, true, &mut transitions);
                    }
                }
                (PermitKind::Probe, Machine::HalfOpen) => {
                    core.probes_in_flight = core.probes_in_flight.saturating_sub(1);
                    if outcome != Outcome::Ignored {
                        core.probes_done += 1;
                        core.probe_failures += u32::from(sample.failure);
                        core.probe_slow += u32::from(sample.slow);
                    }
                    let now = self.now_nanos();
                    if core.probes_done >= config.half_open_probes
                        || core.half_open_deadline.is_some_and(|d| now >= d)
                    {
                        self.decide_half_open(&mut core, now, &mut transitions);
                    }
                }
                _ => {}
            }
        }
        self.emit(transitions);
    }

    fn decide_half_open(&self, core: &mut Core, now: u64, out: &mut Vec<Transition>) {
        let config = &self.shared.config;
        let totals = Totals {
            calls: core.probes_done.into(),
            failures: core.probe_failures.into(),
            slow: core.probe_slow.into(),
        };
        let reopen = match config.window {
            _ if totals.calls == 0 => true,
            SlidingWindow::Consecutive { .. } => totals.failures > 0 || totals.slow > 0,
            _ => totals.exceeds(config),
        };
        if reopen {
            self.to_open(core, now, true, out);
        } else {
            self.to_closed(core, now, out);
        }
    }

    fn open_wait(&self, core: &mut Core) -> Duration {
        let config = &self.shared.config;
        let base = config.wait_in_open.as_secs_f64();
        let (mut wait, cap) = match config.backoff {
            Some(b) => {
                let exp = i32::try_from(core.reopens).unwrap_or(i32::MAX);
                let cap = b.max.as_secs_f64();
                ((base * b.multiplier.powi(exp)).min(cap), cap)
            }
            None => (base, f64::INFINITY),
        };
        if config.jitter > 0.0 {
            wait = (wait * (1.0 + config.jitter * (2.0 * core.rng.f64() - 1.0))).min(cap);
        }
        // The only failure left is a wait past Duration::MAX (a huge cap or wait_in_open): keep the longest wait.
        Duration::try_from_secs_f64(wait.max(0.001))
            .unwrap_or_else(|_| config.backoff.map_or(config.wait_in_open, |b| b.max))
    }

    fn change(
        &self,
        core: &mut Core,
        machine: Machine,
        now: u64,
        opened_for: Option<Duration>,
        out: &mut Vec<Transition>,
    ) {
        let from = core.visible();
        let from_machine = core.machine.state();
        core.machine = machine;
        core.epoch += 1;
        let to = core.visible();
        self.shared
            .word
            .store(word(to, core.epoch), Ordering::Release);
        let dry_run = core.mode == Mode::MetricsOnly;
        if dry_run {
            out.push(Transition {
                from: from_machine,
                to: machine.state(),
                at_nanos: now,
                dry_run,
                opened_for: None,
            });
        } else if from != to {
            out.push(Transition {
                from,
                to,
                at_nanos: now,
                dry_run,
                opened_for,
            });
        }
    }

    fn to_open(&self, core: &mut Core, now: u64, local: bool, out: &mut Vec<Transition>) {
        let wait = self.open_wait(core);
        core.reopens = core.reopens.saturating_add(1);
        core.open_until = now.saturating_add(nanos(wait));
        self.shared
            .open_until
            .store(core.open_until, Ordering::Release);
        core.half_open_deadline = None;
        self.change(core, Machine::Open, now, local.then_some(wait), out);
    }

    fn to_half_open(&self, core: &mut Core, now: u64, out: &mut Vec<Transition>) {
        core.probes_in_flight = 0;
        core.probes_done = 0;
        core.probe_failures = 0;
        core.probe_slow = 0;
        core.half_open_deadline = self
            .shared
            .config
            .max_wait_in_half_open
            .map(|d| now.saturating_add(nanos(d)));
        self.change(core, Machine::HalfOpen, now, None, out);
    }

    fn to_closed(&self, core: &mut Core, now: u64, out: &mut Vec<Transition>) {
        core.reopens = 0;
        core.window.clear();
        core.half_open_deadline = None;
        self.change(core, Machine::Closed, now, None, out);
    }

    fn set_mode(&self, mode: Mode) {
        let mut out = Vec::new();
        {
            let mut core = lock(&self.shared.core);
            let from = core.visible();
            core.mode = mode;
            if mode != Mode::ForcedOpen {
                // Leaving a forced or dry-run mode (or resetting) starts the judgement afresh.
                core.machine = Machine::Closed;
                core.reopens = 0;
                core.window.clear();
                core.half_open_deadline = None;
                core.probes_in_flight = 0;
                core.probes_done = 0;
            }
            core.epoch += 1;
            let to = core.visible();
            self.shared
                .word
                .store(word(to, core.epoch), Ordering::Release);
            if from != to {
                out.push(Transition {
                    from,
                    to,
                    at_nanos: self.now_nanos(),
                    dry_run: false,
                    opened_for: None,
                });
            }
        }
        self.emit(out);
    }

    /// Reject every call until [`reset`](Self::reset). Calls in flight are no longer judged.
    pub fn force_open(&self) {
        self.set_mode(Mode::ForcedOpen);
    }

    /// Let every call through and record nothing (forced closed) until [`reset`](Self::reset).
    pub fn disable(&self) {
        self.set_mode(Mode::Disabled);
    }

    /// Dry run: judge calls and report the transitions the breaker would make, never reject.
    pub fn metrics_only(&self) {
        self.set_mode(Mode::MetricsOnly);
    }

    /// Back to normal operation in Closed with an empty window and no backoff.
    pub fn reset(&self) {
        self.set_mode(Mode::Normal);
    }

    /// Open for `wait` because another instance found the dependency failing. Does nothing unless the breaker is
    /// operating normally; never reported to the open listener, so instances do not echo each other. Returns whether
    /// the breaker is now Open.
    pub fn trip_for(&self, wait: Duration) -> bool {
        let mut out = Vec::new();
        let opened = {
            let mut core = lock(&self.shared.core);
            if core.mode != Mode::Normal {
                false
            } else {
                let now = self.now_nanos();
                let until = now.saturating_add(nanos(wait));
                if core.machine == Machine::Open {
                    if until > core.open_until {
                        core.open_until = until;
                        self.shared.open_until.store(until, Ordering::Release);
                    }
                } else {
                    core.open_until = until;
                    self.shared.open_until.store(until, Ordering::Release);
                    core.half_open_deadline = None;
                    self.change(&mut core, Machine::Open, now, None, &mut out);
                }
                true
            }
        };
        self.emit(out);
        opened
    }

    /// Current visible state. An Open breaker whose wait has passed reports Open until the next call moves it to
    /// HalfOpen.
    pub fn state(&self) -> BreakerState {
        BreakerState::from_code((self.shared.word.load(Ordering::Acquire) & 0xff) as u8)
    }

    /// Counters and window figures now.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let now = self.now_nanos();
        let mut core = lock(&self.shared.core);
        core.window.advance(now);
        let totals = core.window.totals();
        MetricsSnapshot {
            state: core.visible(),
            machine_state: core.machine.state(),
            window_calls: totals.calls,
            window_failures: totals.failures,
            window_slow_calls: totals.slow,
            failure_rate: totals.failure_rate(),
            slow_call_rate: totals.slow_call_rate(),
            successes: core.counts.success,
            failures: core.counts.failure,
            slow_successes: core.counts.slow,
            ignored: core.counts.ignored,
            rejected: self.shared.rejected.load(Ordering::Relaxed),
            probes_in_flight: core.probes_in_flight,
            retry_after: (core.machine == Machine::Open && core.open_until > now)
                .then(|| Duration::from_nanos(core.open_until - now)),
        }
    }

    /// A stream of state transitions from now on (a lagging receiver misses the oldest ones).
    pub fn subscribe(&self) -> broadcast::Receiver<StateTransition> {
        self.shared.transitions.subscribe()
    }

    fn emit(&self, transitions: Vec<Transition>) {
        for t in transitions {
            let shared = &self.shared;
            let name = &shared.config.name;
            let key = shared.key.as_deref().unwrap_or("");
            if !t.dry_run {
                shared.metrics.state.set(t.to.gauge_value());
            }
            shared.metrics.transition(t.from.as_str(), t.to.as_str());
            match t.to {
                BreakerState::Open | BreakerState::ForcedOpen => tracing::warn!(
                    breaker = %name, key, from = t.from.as_str(), to = t.to.as_str(), dry_run = t.dry_run,
                    "circuit breaker opened"
                ),
                _ => tracing::info!(
                    breaker = %name, key, from = t.from.as_str(), to = t.to.as_str(), dry_run = t.dry_run,
                    "circuit breaker state changed"
                ),
            }
            let _ = shared.transitions.send(StateTransition {
                breaker: name.clone(),
                key: shared.key.clone(),
                from: t.from,
                to: t.to,
                at: self.instant_at(t.at_nanos),
                dry_run: t.dry_run,
            });
            if let (Some(wait), Some(listener)) = (t.opened_for, shared.config.open_listener.get())
            {
                listener(name, shared.key.as_deref(), wait);
            }
        }
    }

    /// Run `future` if the breaker admits it, judging `Ok` as success and `Err` as failure.
    ///
    /// ```
    /// # async fn demo() -> Result<(), breaker_layer::ConfigError> {
    /// use breaker_layer::{CallError, CircuitBreaker};
    ///
    /// let breaker = CircuitBreaker::builder().name("redis").build()?;
    /// let value: Result<u32, CallError<std::io::Error>> = breaker.call(async { Ok(7) }).await;
    /// assert_eq!(value.unwrap(), 7);
    /// # Ok(()) }
    /// ```
    pub async fn call<F, T, E>(&self, future: F) -> Result<T, CallError<E>>
    where
        F: IntoFuture<Output = Result<T, E>>,
    {
        match self
            .call_with(future, |r: &Result<T, E>| {
                if r.is_ok() {
                    Outcome::Success
                } else {
                    Outcome::Failure
                }
            })
            .await
        {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(CallError::Inner(e)),
            Err(rejected) => Err(CallError::Rejected(rejected)),
        }
    }

    /// Run `future` if the breaker admits it and judge its output with `classify`. A panicking classifier counts
    /// as a failure; a future dropped before it completes counts as ignored.
    ///
    /// ```
    /// # async fn demo() -> Result<(), breaker_layer::ConfigError> {
    /// use breaker_layer::{CircuitBreaker, Outcome};
    ///
    /// let breaker = CircuitBreaker::builder().build()?;
    /// // A "not found" answer says nothing bad about the dependency.
    /// let out = breaker
    ///     .call_with(async { Err::<u32, &str>("not found") }, |r| match r {
    ///         Ok(_) | Err("not found") => Outcome::Success,
    ///         Err(_) => Outcome::Failure,
    ///     })
    ///     .await;
    /// assert_eq!(out, Ok(Err("not found")));
    /// # Ok(()) }
    /// ```
    pub async fn call_with<F, C>(&self, future: F, classify: C) -> Result<F::Output, Rejected>
    where
        F: IntoFuture,
        C: FnOnce(&F::Output) -> Outcome,
    {
        let permit = self.try_acquire()?;
        let output = future.into_future().await;
        let outcome =
            catch_unwind(AssertUnwindSafe(|| classify(&output))).unwrap_or(Outcome::Failure);
        permit.record(outcome);
        Ok(output)
    }
}

/// Leave to make one call, from [`CircuitBreaker::try_acquire`]. Record the outcome with [`record`](Self::record),
/// [`success`](Self::success) or [`failure`](Self::failure); dropping it unrecorded counts as [`Outcome::Ignored`]
/// and frees a HalfOpen probe slot. When slow-call detection is on, the permit times the call from its creation.
#[must_use = "record the outcome, or drop the permit to mark the call as ignored"]
pub struct Permit {
    breaker: CircuitBreaker,
    epoch: u64,
    kind: PermitKind,
    started: Option<Instant>,
    done: bool,
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("breaker", &self.breaker.name())
            .field("probe", &(self.kind == PermitKind::Probe))
            .finish_non_exhaustive()
    }
}

impl Permit {
    /// Record how the call went.
    #[inline]
    pub fn record(mut self, outcome: Outcome) {
        self.done = true;
        self.breaker
            .finish(self.kind, self.epoch, self.started, outcome);
    }

    /// Record a success (slow if it took longer than the slow-call duration).
    #[inline]
    pub fn success(self) {
        self.record(Outcome::Success);
    }

    /// Record a failure.
    #[inline]
    pub fn failure(self) {
        self.record(Outcome::Failure);
    }

    /// Whether this permit is one of HalfOpen's probes.
    pub fn is_probe(&self) -> bool {
        self.kind == PermitKind::Probe
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.done {
            self.breaker
                .finish(self.kind, self.epoch, None, Outcome::Ignored);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Backoff;

    fn fail_n(b: &CircuitBreaker, n: usize) {
        for _ in 0..n {
            b.try_acquire().unwrap().failure();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn closed_opens_at_failure_rate_and_rejects_with_retry_after() {
        let b = CircuitBreaker::builder()
            .count_window(4)
            .minimum_calls(4)
            .wait_in_open(Duration::from_secs(10))
            .build()
            .unwrap();
        b.try_acquire().unwrap().success();
        b.try_acquire().unwrap().success();
        b.try_acquire().unwrap().failure();
        assert_eq!(b.state(), BreakerState::Closed);
        b.try_acquire().unwrap().failure();
        assert_eq!(b.state(), BreakerState::Open, "2 of 4 failed = 50%");
        let r = b.try_acquire().unwrap_err();
        assert_eq!(r.state(), BreakerState::Open);
        assert_eq!(r.retry_after(), Duration::from_secs(10));
        tokio::time::advance(Duration::from_millis(9_500)).await;
        let r = b.try_acquire().unwrap_err();
        assert_eq!(r.retry_after(), Duration::from_millis(500));
        assert_eq!(r.retry_after_secs(), 1);
        assert_eq!(b.snapshot().rejected, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_admits_exactly_n_probes_then_closes() {
        let b = CircuitBreaker::builder()
            .consecutive_failures(1)
            .half_open_probes(2)
            .wait_in_open(Duration::from_secs(1))
            .build()
            .unwrap();
        fail_n(&b, 1);
        tokio::time::advance(Duration::from_secs(1)).await;
        let p1 = b.try_acquire().unwrap();
        let p2 = b.try_acquire().unwrap();
        assert!(p1.is_probe() && p2.is_probe());
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert_eq!(b.try_acquire().unwrap_err().state(), BreakerState::HalfOpen);
        p1.success();
        assert_eq!(b.state(), BreakerState::HalfOpen);
        p2.success();
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_probe_frees_its_slot() {
        let b = CircuitBreaker::builder()
            .consecutive_failures(1)
            .half_open_probes(1)
            .wait_in_open(Duration::from_secs(1))
            .build()
            .unwrap();
        fail_n(&b, 1);
        tokio::time::advance(Duration::from_secs(1)).await;
        let probe = b.try_acquire().unwrap();
        assert!(b.try_acquire().is_err());
        drop(probe);
        assert_eq!(b.snapshot().probes_in_flight, 0);
        b.try_acquire().unwrap().success();
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_probe_reopens_with_backoff_capped_and_close_resets_it() {
        let b = CircuitBreaker::builder()
            .consecutive_failures(1)
            .half_open_probes(1)
            .wait_in_open(Duration::from_secs(1))
            .open_backoff(Backoff {
                multiplier: 2.0,
                max: Duration::from_secs(5),
            })
            .build()
            .unwrap();
        fail_n(&b, 1);
        let mut waits = Vec::new();
        for _ in 0..5 {
            let wait = b.try_acquire().unwrap_err().retry_after();
            waits.push(wait.as_secs());
            tokio::time::advance(wait).await;
            b.try_acquire().unwrap().failure();
        }
        assert_eq!(waits, vec![1, 2, 4, 5, 5]);
        let wait = b.try_acquire().unwrap_err().retry_after();
        tokio::time::advance(wait).await;
        b.try_acquire().unwrap().success();
        assert_eq!(b.state(), BreakerState::Closed);
        fail_n(&b, 1);
        assert_eq!(
            b.try_acquire().unwrap_err().retry_after(),
            Duration::from_secs(1)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn jitter_stays_within_bounds() {
        let b = CircuitBreaker::builder()
            .consecutive_failures(1)
            .wait_in_open(Duration::from_secs(10))
            .jitter(0.5)
            .build()
            .unwrap();
        for _ in 0..50 {
            fail_n(&b, 1);
            let wait = b.try_acquire().unwrap_err().retry_after();
            assert!(
                wait >= Duration::from_secs(5) && wait <= Duration::from_secs(15),
                "{wait:?}"
            );
            b.reset();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_deadline_decides_on_recorded_probes() {
        let b = CircuitBreaker::builder()
            .consecutive_failures(1)
            .half_open_probes(3)
            .wait_in_open(Duration::from_secs(1))
            .max_wait_in_half_open(Some(Duration::from_secs(5)))
            .build()
            .unwrap();
        fail_n(&b, 1);
        tokio::time::advance(Duration::from_secs(1)).await;
        // No probe completes in time: Open again.
        let _stuck = b.try_acquire().unwrap();
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(b.try_acquire().unwrap_err().state(), BreakerState::Open);
        tokio::time::advance(Duration::from_secs(10)).await;
        // One good probe completes, the others hang: Closed at the deadline.
        b.try_acquire().unwrap().success();
        let _hung = b.try_acquire().unwrap();
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(b.try_acquire().is_ok());
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn slow_calls_trip_the_slow_rate() {
        let b = CircuitBreaker::builder()
            .count_window(4)
            .minimum_calls(4)
            .slow_call_duration(Duration::from_millis(100))
            .slow_call_rate_threshold(50.0)
            .build()
            .unwrap();
        for slow in [false, true, false, true] {
            let p = b.try_acquire().unwrap();
            if slow {
                tokio::time::advance(Duration::from_millis(150)).await;
            }
            p.success();
        }
        assert_eq!(b.state(), BreakerState::Open);
        let s = b.snapshot();
        assert_eq!((s.successes, s.slow_successes), (2, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn time_window_forgets_old_failures() {
        let b = CircuitBreaker::builder()
            .time_window(Duration::from_secs(10))
            .minimum_calls(4)
            .build()
            .unwrap();
        fail_n(&b, 3);
        tokio::time::advance(Duration::from_secs(11)).await;
        b.try_acquire().unwrap().failure();
        assert_eq!(
            b.state(),
            BreakerState::Closed,
            "old failures left the window"
        );
        assert_eq!(b.snapshot().window_calls, 1);
        fail_n(&b, 3);
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn control_modes() {
        let b = CircuitBreaker::builder()
            .consecutive_failures(1)
            .build()
            .unwrap();
        let mut rx = b.subscribe();
        b.force_open();
        assert_eq!(
            b.try_acquire().unwrap_err().state(),
            BreakerState::ForcedOpen
        );
        b.disable();
        fail_n(&b, 5);
        assert_eq!(b.state(), BreakerState::Disabled);
        assert_eq!(b.snapshot().failures, 0, "disabled records nothing");
        b.reset();
        assert_eq!(b.state(), BreakerState::Closed);
        let seen: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|t| (t.from, t.to))
            .collect();
        assert_eq!(
            seen,
            vec![
                (BreakerState::Closed, BreakerState::ForcedOpen),
                (BreakerState::ForcedOpen, BreakerState::Disabled),
                (BreakerState::Disabled, BreakerState::Closed),
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn metrics_only_never_rejects_but_reports() {
        let b = CircuitBreaker::builder()
            .consecutive_failures(2)
            .initial_state(BreakerState::MetricsOnly)
            .build()
            .unwrap();
        let mut rx = b.subscribe();
        fail_n(&b, 10);
        assert_eq!(b.state(), BreakerState::MetricsOnly);
        let s = b.snapshot();
        assert_eq!(s.machine_state, BreakerState::Open);
        assert_eq!(s.failures, 10);
        let t = rx.try_recv().unwrap();
        assert!(t.dry_run);
        assert_eq!((t.from, t.to), (BreakerState::Closed, BreakerState::Open));
    }

    #[tokio::test(start_paused = true)]
    async fn stale_permits_are_not_judged() {
        let b = CircuitBreaker::builder()
            .consecutive_failures(2)
            .build()
            .unwrap();
        let old = b.try_acquire().unwrap();
        b.reset();
        old.failure();
        b.try_acquire().unwrap().failure();
        assert_eq!(
            b.state(),
            BreakerState::Closed,
            "the failure from before the reset does not count"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn call_helpers_classify_and_reject() {
        let b = CircuitBreaker::builder()
            .consecutive_failures(2)
            .build()
            .unwrap();
        assert_eq!(b.call(async { Ok::<_, &str>(1) }).await.unwrap(), 1);
        assert!(matches!(
            b.call(async { Err::<u8, _>("x") }).await,
            Err(CallError::Inner("x"))
        ));
        let out = b.call_with(async { 5 }, |_| panic!("classifier bug")).await;
        assert_eq!(out, Ok(5));
        assert_eq!(
            b.state(),
            BreakerState::Open,
            "a panicking classifier counts as a failure"
        );
        assert!(matches!(
            b.call(async { Ok::<_, ()>(1) }).await,
            Err(CallError::Rejected(_))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_capped_at_the_largest_duration_stays_at_the_cap() {
        let b = CircuitBreaker::builder()
            .consecutive_failures(1)
            .half_open_probes(1)
            .wait_in_open(Duration::from_secs(1))
            .open_backoff(Backoff {
                multiplier: 1e300,
                max: Duration::MAX,
            })
            .build()
            .unwrap();
        fail_n(&b, 1);
        let first = b.try_acquire().unwrap_err();
        tokio::time::advance(first.retry_after()).await;
        b.try_acquire().unwrap().failure();
        let r = b.try_acquire().unwrap_err();
        assert!(
            r.retry_after() > Duration::from_secs(1 << 30),
            "the grown wait must not fall back to wait_in_open: {:?}",
            r.retry_after()
        );
        assert!(r.retry_after_secs() > 1 << 30);
    }

    #[tokio::test(start_paused = true)]
    async fn breakers_built_from_one_builder_have_their_own_open_listener() {
        let template = CircuitBreaker::builder().consecutive_failures(1);
        let a = template.clone().name("a").build().unwrap();
        let b = template.name("b").build().unwrap();
        let called = Arc::new(AtomicU64::new(0));
        let c = called.clone();
        a.set_open_listener(Arc::new(move |_, _, _| {
            c.fetch_add(1, Ordering::Relaxed);
        }));
        fail_n(&b, 1);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(called.load(Ordering::Relaxed), 0, "b was never attached");
        fail_n(&a, 1);
        assert_eq!(called.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_of_the_longest_wait_does_not_overflow() {
        let b = CircuitBreaker::builder()
            .wait_in_open(Duration::MAX)
            .build()
            .unwrap();
        b.force_open();
        let r = b.try_acquire().unwrap_err();
        assert_eq!(r.retry_after(), Duration::MAX);
        assert_eq!(r.retry_after_secs(), u64::MAX);
    }

    #[tokio::test(start_paused = true)]
    async fn trip_for_opens_without_calling_the_listener() {
        let b = CircuitBreaker::builder().build().unwrap();
        let called = Arc::new(AtomicU64::new(0));
        let c = called.clone();
        b.set_open_listener(Arc::new(move |_, _, _| {
            c.fetch_add(1, Ordering::Relaxed);
        }));
        assert!(b.trip_for(Duration::from_secs(3)));
        assert_eq!(
            b.try_acquire().unwrap_err().retry_after(),
            Duration::from_secs(3)
        );
        assert_eq!(called.load(Ordering::Relaxed), 0);
    }
}
