//! Breaker configuration: the builder, its validated result and the error `build()` returns.
//!
//! Every setter documents its default; [`BreakerBuilder::build`] rejects impossible values and names the field.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::breaker::{BreakerState, CircuitBreaker, OpenListener};

/// Largest count window or time-window bucket count accepted, so a typo cannot allocate gigabytes.
const MAX_WINDOW: u32 = 1_000_000;
/// Largest number of HalfOpen probes accepted.
const MAX_PROBES: u32 = 100_000;

/// How the breaker decides that a dependency is failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SlidingWindow {
    /// The last `size` calls, whatever their age.
    Count {
        /// Number of calls kept.
        size: u32,
    },
    /// The calls of the last `buckets × bucket_width`, counted per bucket.
    Time {
        /// Number of buckets kept.
        buckets: u32,
        /// Width of one bucket.
        bucket_width: Duration,
    },
    /// Opens after this many failed (or slow) calls in a row; any good call resets the run.
    Consecutive {
        /// Length of the run of bad calls that opens the breaker.
        failures: u32,
    },
}

/// Growth of the Open wait when the breaker re-opens from HalfOpen without closing in between.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Each re-open multiplies the previous wait by this factor (at least 1.0).
    pub multiplier: f64,
    /// The wait never exceeds this.
    pub max: Duration,
}

/// A configuration value that cannot work, reported by [`BreakerBuilder::build`].
///
/// ```
/// use breaker_layer::CircuitBreaker;
///
/// let err = CircuitBreaker::builder().failure_rate_threshold(150.0).build().unwrap_err();
/// assert_eq!(err.field(), "failure_rate_threshold");
/// assert!(err.to_string().contains("failure_rate_threshold"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    field: &'static str,
    message: String,
}

impl ConfigError {
    pub(crate) fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }

    /// The builder method whose value was rejected, e.g. `"failure_rate_threshold"`.
    pub fn field(&self) -> &'static str {
        self.field
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid circuit breaker config: `{}` {}",
            self.field, self.message
        )
    }
}

impl std::error::Error for ConfigError {}

/// The validated settings shared by a breaker (and by every per-key breaker built from the same template).
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) name: Arc<str>,
    pub(crate) window: SlidingWindow,
    pub(crate) failure_rate_threshold: f64,
    pub(crate) slow_call_rate_threshold: f64,
    pub(crate) slow_call_duration: Option<Duration>,
    pub(crate) minimum_calls: u32,
    pub(crate) wait_in_open: Duration,
    pub(crate) backoff: Option<Backoff>,
    pub(crate) jitter: f64,
    pub(crate) half_open_probes: u32,
    pub(crate) max_wait_in_half_open: Option<Duration>,
    pub(crate) initial_state: BreakerState,
    pub(crate) transition_capacity: usize,
    pub(crate) open_listener: Arc<OnceLock<OpenListener>>,
    /// Per-key breakers label their metric series with their key (see `KeyedBuilder::key_label`).
    pub(crate) key_label: bool,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("name", &self.name)
            .field("window", &self.window)
            .field("failure_rate_threshold", &self.failure_rate_threshold)
            .field("slow_call_rate_threshold", &self.slow_call_rate_threshold)
            .field("slow_call_duration", &self.slow_call_duration)
            .field("minimum_calls", &self.minimum_calls)
            .field("wait_in_open", &self.wait_in_open)
            .field("backoff", &self.backoff)
            .field("jitter", &self.jitter)
            .field("half_open_probes", &self.half_open_probes)
            .field("max_wait_in_half_open", &self.max_wait_in_half_open)
            .field("initial_state", &self.initial_state)
            .finish_non_exhaustive()
    }
}

/// Builder for a [`CircuitBreaker`], reached through [`CircuitBreaker::builder`].
///
/// ```
/// use std::time::Duration;
/// use breaker_layer::{Backoff, CircuitBreaker};
///
/// let breaker = CircuitBreaker::builder()
///     .name("payments")
///     .time_window(Duration::from_secs(30))
///     .failure_rate_threshold(50.0)
///     .slow_call_duration(Duration::from_millis(500))
///     .slow_call_rate_threshold(80.0)
///     .minimum_calls(20)
///     .wait_in_open(Duration::from_secs(5))
///     .open_backoff(Backoff { multiplier: 2.0, max: Duration::from_secs(120) })
///     .jitter(0.2)
///     .half_open_probes(3)
///     .build()?;
/// # Ok::<(), breaker_layer::ConfigError>(())
/// ```
#[must_use]
#[derive(Debug, Clone)]
pub struct BreakerBuilder {
    config: Config,
}

impl Default for BreakerBuilder {
    fn default() -> Self {
        Self {
            config: Config {
                name: Arc::from("default"),
                window: SlidingWindow::Count { size: 100 },
                failure_rate_threshold: 50.0,
                slow_call_rate_threshold: 100.0,
                slow_call_duration: None,
                minimum_calls: 20,
                wait_in_open: Duration::from_secs(30),
                backoff: None,
                jitter: 0.0,
                half_open_probes: 5,
                max_wait_in_half_open: Some(Duration::from_secs(60)),
                initial_state: BreakerState::Closed,
                transition_capacity: 64,
                open_listener: Arc::new(OnceLock::new()),
                key_label: false,
            },
        }
    }
}

impl BreakerBuilder {
    /// Name used in metrics labels, tracing events and Redis messages.
    ///
    /// Defaults to `"default"`.
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.config.name = name.into();
        self
    }

    /// Judge the last `size` calls (a ring of outcomes).
    ///
    /// This is the default, with `size = 100`.
    pub fn count_window(mut self, size: u32) -> Self {
        self.config.window = SlidingWindow::Count { size };
        self
    }

    /// Judge the calls of the last `span`, counted in one-second buckets (`span` is rounded up to whole seconds).
    pub fn time_window(mut self, span: Duration) -> Self {
        let secs = span
            .as_secs()
            .saturating_add(u64::from(span.subsec_nanos() > 0));
        let buckets = u32::try_from(secs).unwrap_or(u32::MAX);
        self.config.window = SlidingWindow::Time {
            buckets,
            bucket_width: Duration::from_secs(1),
        };
        self
    }

    /// Judge the calls of the last `buckets × bucket_width`, with a chosen bucket width.
    pub fn time_window_buckets(mut self, buckets: u32, bucket_width: Duration) -> Self {
        self.config.window = SlidingWindow::Time {
            buckets,
            bucket_width,
        };
        self
    }

    /// Open after `failures` bad calls in a row instead of judging a rate.
    ///
    /// A bad call is a failure, or a slow call when [`slow_call_duration`](Self::slow_call_duration) is set.
    /// In HalfOpen every probe must then be good for the breaker to close.
    pub fn consecutive_failures(mut self, failures: u32) -> Self {
        self.config.window = SlidingWindow::Consecutive { failures };
        self
    }

    /// Set the window directly.
    pub fn window(mut self, window: SlidingWindow) -> Self {
        self.config.window = window;
        self
    }

    /// Open when at least this percentage of the calls in the window failed. Must be in `(0, 100]`.
    ///
    /// Defaults to `50.0`.
    pub fn failure_rate_threshold(mut self, percent: f64) -> Self {
        self.config.failure_rate_threshold = percent;
        self
    }

    /// Open when at least this percentage of the calls in the window were slow. Must be in `(0, 100]`.
    ///
    /// Defaults to `100.0`. Only used when [`slow_call_duration`](Self::slow_call_duration) is set.
    pub fn slow_call_rate_threshold(mut self, percent: f64) -> Self {
        self.config.slow_call_rate_threshold = percent;
        self
    }

    /// A call taking at least this long is slow. Must be non-zero.
    ///
    /// Defaults to off: without it permits do not read the clock, which keeps the closed path cheapest.
    pub fn slow_call_duration(mut self, duration: Duration) -> Self {
        self.config.slow_call_duration = Some(duration);
        self
    }

    /// Rates are not judged until the window holds this many calls. Must be at least 1 and, for a count
    /// window, at most its size.
    ///
    /// Defaults to `20`.
    pub fn minimum_calls(mut self, calls: u32) -> Self {
        self.config.minimum_calls = calls;
        self
    }

    /// Time spent Open before the breaker lets probes through. Must be non-zero.
    ///
    /// Defaults to 30 seconds.
    pub fn wait_in_open(mut self, wait: Duration) -> Self {
        self.config.wait_in_open = wait;
        self
    }

    /// Grow the Open wait each time the breaker re-opens from HalfOpen; a close resets it to
    /// [`wait_in_open`](Self::wait_in_open).
    ///
    /// Defaults to no backoff (every Open waits `wait_in_open`).
    pub fn open_backoff(mut self, backoff: Backoff) -> Self {
        self.config.backoff = Some(backoff);
        self
    }

    /// Spread each Open wait randomly by up to ± this fraction (`0.0..=1.0`), never past the backoff cap,
    /// so instances that opened together do not probe together.
    ///
    /// Defaults to `0.0`.
    pub fn jitter(mut self, fraction: f64) -> Self {
        self.config.jitter = fraction;
        self
    }

    /// Number of probe calls HalfOpen admits; the breaker decides when all of them have completed. Must be non-zero.
    ///
    /// Defaults to `5`.
    pub fn half_open_probes(mut self, probes: u32) -> Self {
        self.config.half_open_probes = probes;
        self
    }

    /// Longest time spent in HalfOpen. When it passes, the breaker decides on the probes that completed: none
    /// completed → Open again; otherwise Closed or Open by the same thresholds. `None` waits for all probes
    /// (probes that are dropped still free their slot, so HalfOpen cannot wedge on cancelled calls).
    ///
    /// Defaults to 60 seconds.
    pub fn max_wait_in_half_open(mut self, max: Option<Duration>) -> Self {
        self.config.max_wait_in_half_open = max;
        self
    }

    /// Start disabled, forced open, or in metrics-only (dry run) mode instead of Closed.
    ///
    /// Defaults to [`BreakerState::Closed`]; `Open` and `HalfOpen` are treated as `Closed`.
    pub fn initial_state(mut self, state: BreakerState) -> Self {
        self.config.initial_state = state;
        self
    }

    /// Capacity of the state-transition broadcast channel; slow subscribers miss the oldest transitions.
    ///
    /// Defaults to `64`.
    pub fn transition_capacity(mut self, capacity: usize) -> Self {
        self.config.transition_capacity = capacity;
        self
    }

    /// Check the settings and build the breaker.
    ///
    /// Must be called with the `metrics` recorder already installed: the call counters are registered here.
    pub fn build(self) -> Result<CircuitBreaker, ConfigError> {
        let config = self.validated()?;
        crate::metrics::describe();
        Ok(CircuitBreaker::from_config(config, None))
    }

    pub(crate) fn validated(mut self) -> Result<Config, ConfigError> {
        // Clones of one builder share the config's fields; each built breaker (or registry) gets its own listener slot.
        self.config.open_listener = Arc::new(OnceLock::new());
        let c = &self.config;
        if c.name.is_empty() {
            return Err(ConfigError::new("name", "must not be empty"));
        }
        check_rate("failure_rate_threshold", c.failure_rate_threshold)?;
        check_rate("slow_call_rate_threshold", c.slow_call_rate_threshold)?;
        match c.window {
            SlidingWindow::Count { size } => {
                if size == 0 || size > MAX_WINDOW {
                    return Err(ConfigError::new(
                        "count_window",
                        format!("size must be in 1..={MAX_WINDOW}, got {size}"),
                    ));
                }
                if c.minimum_calls > size {
                    return Err(ConfigError::new(
                        "minimum_calls",
                        format!(
                            "must not exceed the count window size {size}, got {}",
                            c.minimum_calls
                        ),
                    ));
                }
            }
            SlidingWindow::Time {
                buckets,
                bucket_width,
            } => {
                if buckets == 0 || buckets > MAX_WINDOW {
                    return Err(ConfigError::new(
                        "time_window",
                        format!("bucket count must be in 1..={MAX_WINDOW}, got {buckets}"),
                    ));
                }
                if bucket_width.is_zero() {
                    return Err(ConfigError::new(
                        "time_window",
                        "bucket width must be non-zero",
                    ));
                }
            }
            SlidingWindow::Consecutive { failures } => {
                if failures == 0 {
                    return Err(ConfigError::new(
                        "consecutive_failures",
                        "must be at least 1",
                    ));
                }
            }
        }
        if c.minimum_calls == 0 {
            return Err(ConfigError::new("minimum_calls", "must be at least 1"));
        }
        if c.slow_call_duration.is_some_and(|d| d.is_zero()) {
            return Err(ConfigError::new("slow_call_duration", "must be non-zero"));
        }
        if c.wait_in_open.is_zero() {
            return Err(ConfigError::new("wait_in_open", "must be non-zero"));
        }
        if let Some(b) = c.backoff {
            if !b.multiplier.is_finite() || b.multiplier < 1.0 {
                return Err(ConfigError::new(
                    "open_backoff",
                    format!(
                        "multiplier must be a finite number >= 1.0, got {}",
                        b.multiplier
                    ),
                ));
            }
            if b.max < c.wait_in_open {
                return Err(ConfigError::new(
                    "open_backoff",
                    "max must be at least wait_in_open",
                ));
            }
        }
        if !(0.0..=1.0).contains(&c.jitter) {
            return Err(ConfigError::new(
                "jitter",
                format!("must be in 0.0..=1.0, got {}", c.jitter),
            ));
        }
        if c.half_open_probes == 0 || c.half_open_probes > MAX_PROBES {
            return Err(ConfigError::new(
                "half_open_probes",
                format!("must be in 1..={MAX_PROBES}, got {}", c.half_open_probes),
            ));
        }
        if c.max_wait_in_half_open.is_some_and(|d| d.is_zero()) {
            return Err(ConfigError::new(
                "max_wait_in_half_open",
                "must be non-zero when set",
            ));
        }
        if c.transition_capacity == 0 {
            return Err(ConfigError::new(
                "transition_capacity",
                "must be at least 1",
            ));
        }
        Ok(self.config)
    }
}

fn check_rate(field: &'static str, percent: f64) -> Result<(), ConfigError> {
    if percent.is_finite() && percent > 0.0 && percent <= 100.0 {
        Ok(())
    } else {
        Err(ConfigError::new(
            field,
            format!("must be a percentage in (0, 100], got {percent}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(builder: BreakerBuilder) -> &'static str {
        builder.build().unwrap_err().field()
    }

    #[test]
    fn defaults_are_valid() {
        assert!(BreakerBuilder::default().build().is_ok());
    }

    #[test]
    fn each_bad_value_names_its_field() {
        let b = BreakerBuilder::default;
        assert_eq!(
            field_of(b().failure_rate_threshold(100.5)),
            "failure_rate_threshold"
        );
        assert_eq!(
            field_of(b().failure_rate_threshold(0.0)),
            "failure_rate_threshold"
        );
        assert_eq!(
            field_of(b().failure_rate_threshold(f64::NAN)),
            "failure_rate_threshold"
        );
        assert_eq!(
            field_of(b().slow_call_rate_threshold(-1.0)),
            "slow_call_rate_threshold"
        );
        assert_eq!(field_of(b().count_window(0)), "count_window");
        assert_eq!(
            field_of(b().count_window(10).minimum_calls(11)),
            "minimum_calls"
        );
        assert_eq!(field_of(b().minimum_calls(0)), "minimum_calls");
        assert_eq!(field_of(b().time_window(Duration::ZERO)), "time_window");
        assert_eq!(
            field_of(b().time_window_buckets(10, Duration::ZERO)),
            "time_window"
        );
        assert_eq!(
            field_of(b().consecutive_failures(0)),
            "consecutive_failures"
        );
        assert_eq!(field_of(b().half_open_probes(0)), "half_open_probes");
        assert_eq!(field_of(b().wait_in_open(Duration::ZERO)), "wait_in_open");
        assert_eq!(
            field_of(b().slow_call_duration(Duration::ZERO)),
            "slow_call_duration"
        );
        assert_eq!(field_of(b().jitter(1.5)), "jitter");
        assert_eq!(field_of(b().name("")), "name");
        assert_eq!(
            field_of(b().open_backoff(Backoff {
                multiplier: 0.5,
                max: Duration::from_secs(60)
            })),
            "open_backoff"
        );
        assert_eq!(
            field_of(b().open_backoff(Backoff {
                multiplier: 2.0,
                max: Duration::from_secs(1)
            })),
            "open_backoff"
        );
        assert_eq!(
            field_of(b().max_wait_in_half_open(Some(Duration::ZERO))),
            "max_wait_in_half_open"
        );
    }

    #[test]
    fn message_names_the_field_and_value() {
        let err = BreakerBuilder::default()
            .failure_rate_threshold(101.0)
            .build()
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("`failure_rate_threshold`"), "{text}");
        assert!(text.contains("101"), "{text}");
    }

    #[test]
    fn the_longest_time_window_is_rejected_not_a_panic() {
        assert_eq!(
            field_of(BreakerBuilder::default().time_window(Duration::MAX)),
            "time_window"
        );
    }

    #[test]
    fn time_window_rounds_up_to_whole_seconds() {
        let b = BreakerBuilder::default().time_window(Duration::from_millis(2500));
        assert_eq!(
            b.config.window,
            SlidingWindow::Time {
                buckets: 3,
                bucket_width: Duration::from_secs(1)
            }
        );
    }
}
