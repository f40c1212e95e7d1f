//! Real infrastructure for this workspace's tests: a `redis-server` per test, a local Redis
//! Cluster, and a TCP proxy that injects network faults. No mocks.
//!
//! # Redis
//!
//! [`RedisServer::start`] spawns Debian's `redis-server` on a free `127.0.0.1` port, in its own
//! temporary directory, and returns once it answers `PING`. Dropping it kills the process and
//! deletes the directory. Fault tests [`stop`](RedisServer::stop),
//! [`restart`](RedisServer::restart) (same port; data kept only with
//! [`persistence`](RedisServerBuilder::persistence)), [`pause`](RedisServer::pause) and
//! [`resume`](RedisServer::resume) it. [`RedisServer::cli`] runs `redis-cli` against it.
//!
//! ```
//! use test_support::RedisServer;
//!
//! let mut redis = RedisServer::start()?;
//! redis.cli(&["SET", "k", "v"])?;
//! assert_eq!(redis.cli(&["GET", "k"])?, "v");
//!
//! redis.restart()?; // same port, empty again
//! assert_eq!(redis.cli(&["GET", "k"])?, "");
//! # Ok::<(), test_support::Error>(())
//! ```
//!
//! Each test owns its servers, so tests run in parallel. All methods are blocking and may be
//! called from async tests; prefer `#[tokio::test(flavor = "multi_thread", worker_threads = 2)]`
//! when a test restarts Redis while traffic flows, so the blocking call does not stall the
//! runtime driving that traffic.
//!
//! [`RedisCluster::start`] forms a cluster of N masters with
//! `redis-cli --cluster create` and waits for `cluster_state:ok` on every node.
//!
//! # Faults on the wire
//!
//! [`FaultProxy`] sits between a client and any TCP server (Redis or an HTTP origin) and adds
//! latency, blackholes traffic, refuses connections or resets them with a TCP RST.
//!
//! # HTTP
//!
//! [`serve`] runs an axum app on a fresh `127.0.0.1` port from a spawned task, for tests that
//! need a real HTTP server on the other end of a socket.
//!
//! # Ports
//!
//! [`free_port`] hands out loopback ports for servers a test starts itself (an axum app, a
//! second service). Ports come from below the kernel's ephemeral range and are never handed
//! out twice by one process.
//!
//! # Browsers
//!
//! With the `browser` feature, `browser::Chromedriver` starts Debian's `chromedriver` on a
//! free loopback port and opens headless Chromium sessions (`browser::Browser`) that record
//! the console, so a test can fail on any script error or failed request.
//!
//! # Requirements
//!
//! `redis-server` and `redis-cli` must be on `PATH`. When they are not, every constructor
//! fails with [`Error::MissingBinary`], whose message says how to install them:
//! `apt-get update && apt-get install -y redis-server` on Debian/Ubuntu, or `cargo xtask test`,
//! which installs them. Tests never skip silently.
//!
//! Processes are also cleaned up when a test binary is killed outright (for example by a test
//! runner's timeout): each server has a small `sh` watchdog that kills it once this process's
//! end of a pipe closes.

#![forbid(unsafe_code)]

#[cfg(feature = "browser")]
pub mod browser;
mod cluster;
mod error;
mod http;
mod port;
mod process;
mod promtool;
mod proxy;
mod resp;
mod server;

pub use cluster::RedisCluster;
pub use error::{Error, INSTALL_HINT};
pub use http::serve;
pub use port::{free_port, try_free_port};
pub use process::process_state;
pub use promtool::assert_promtool_accepts;
pub use proxy::FaultProxy;
pub use server::{RedisServer, RedisServerBuilder};

#[cfg(test)]
mod tests {
    use super::*;

    /// Tests share these across threads and tasks (`Arc<RedisServer>`, a proxy in a spawned task).
    #[test]
    fn handles_are_send_and_sync() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<RedisServer>();
        send_sync::<RedisCluster>();
        send_sync::<FaultProxy>();
        send_sync::<Error>();
    }
}
