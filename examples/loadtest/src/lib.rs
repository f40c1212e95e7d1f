//! Load test of the chat service: bare against stacked, on the same seeded data and the same load.
//!
//! `cargo xtask loadtest` builds the binaries in release and runs `chat-loadtest`, which for each variant
//! ([`Variant::Bare`], [`Variant::Stacked`] and, with `redis-server` installed, [`Variant::Stacked2`]):
//!
//! 1. starts the moderation dependency and the chat service on a fresh SQLite file seeded the same way
//!    ([`stack`], [`procs`]), pinning the servers to a core of their own when the machine has two;
//! 2. sends an open-loop, constant-arrival-rate chat mix ([`load`], [`schedule`], [`zipf`]): page refreshes
//!    as bursts of identical GETs, pagination, single messages, the room list, 5 % posts with
//!    `Idempotency-Key` (some retried, on the other instance too) and a moderation outage;
//! 3. checks correctness under load ([`check`]): every acknowledged post visible on every instance within
//!    [`load::FRESHNESS_BOUND`], stored exactly once, no `5xx` the outage does not explain, identical
//!    concurrent requests reaching SQLite once;
//! 4. finds the highest rate each variant sustains within a p99 bound ([`runner::find_max_rate`]), and
//!    measures every later variant at the first one's (bare's) highest sustained rate too: the latency
//!    verdict is taken there, where the bare service is at its limit;
//! 5. stacked, churns the cache with distinct URLs as fast as the instances answer ([`churn`]) and samples
//!    each instance's resident memory: peak, final, and whether it levelled off;
//! 6. prints a verdict per target and writes `report.json` and a self-contained `report.html` ([`report`],
//!    [`html`]); `--open` prints the report's `file://` URL, `--screenshot PNG` writes a picture of it taken
//!    with headless Chromium ([`html::screenshot`]).
//!
//! With `--chaos` it runs only the two-instance variant, with Redis and moderation behind fault proxies, and
//! injects the faults of a [`chaos::ChaosSchedule`] while the mix runs ([`runner::run_chaos`]): Redis killed and
//! restarted empty, frozen, slowed and its connections reset; moderation slow, erroring, hanging and refusing
//! connections. Refused posts are sent again with their key until accepted; the report counts requests
//! served, documented refusals apart from failures, lost and duplicated posts, stale reads, breaker
//! transitions and peak memory, with a verdict per guarantee and the fault timeline.
//!
//! Every request goes to a loopback address; the client refuses anything else ([`client::is_loopback`]).

pub mod chaos;
pub mod chaos_report;
pub mod check;
pub mod churn;
pub mod client;
pub mod html;
pub mod load;
pub mod observe;
pub mod procs;
pub mod prom;
pub mod report;
pub mod runner;
pub mod schedule;
pub mod stack;
pub mod stats;
pub mod zipf;

use std::path::PathBuf;

pub use crate::schedule::Pacer;
pub use crate::stack::Variant;
pub use crate::zipf::Zipf;

/// Why a load test could not run or finish.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A binary the run needs is not built.
    #[error(
        "{} not found: build it (`cargo build --release -p chat-service -p moderation`, or run `cargo xtask \
         loadtest`, which does) or pass --bin-dir",
        .0.display()
    )]
    MissingBinary(PathBuf),
    /// A service did not come up, or died.
    #[error("{name}: {detail}\n--- end of its log ---\n{log_tail}")]
    Startup {
        /// The service.
        name: String,
        /// What went wrong.
        detail: String,
        /// The last lines of its stderr.
        log_tail: String,
    },
    /// A file or process operation failed.
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    /// The redis-server of the two-instance variant did not start.
    #[error("redis-server: {0}")]
    Redis(#[from] test_support::Error),
    /// Anything else that stops the run, with its explanation.
    #[error("{0}")]
    Setup(String),
    /// Ctrl-C.
    #[error("interrupted")]
    Interrupted,
}
