//! The one error type of this crate: every failure names the binary, the port and, when a
//! redis-server refused to come up, the last lines of its log.

use std::io;
use std::process::ExitStatus;
use std::time::Duration;

/// How to get `redis-server` and `redis-cli` onto a machine, quoted in [`Error::MissingBinary`].
pub const INSTALL_HINT: &str = "install it with `apt-get update && apt-get install -y redis-server` \
     (Debian/Ubuntu; this also installs redis-cli), or run `cargo xtask test`, which installs it";

/// Everything that can go wrong while starting, driving or stopping the test infrastructure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `redis-server` or `redis-cli` is not on `PATH`.
    #[error("`{binary}` was not found on PATH; {hint}", hint = INSTALL_HINT)]
    MissingBinary {
        /// The binary that was looked for.
        binary: &'static str,
    },

    /// A process could not be spawned at all.
    #[error("could not run `{binary}`: {source}")]
    Spawn {
        /// The binary that failed to start.
        binary: String,
        /// The operating system's reason.
        #[source]
        source: io::Error,
    },

    /// redis-server exited while starting.
    #[error(
        "redis-server on 127.0.0.1:{port} exited during start-up ({status}); last lines of its log:\n{log_tail}"
    )]
    ServerExited {
        /// The port it was told to listen on.
        port: u16,
        /// How it exited.
        status: ExitStatus,
        /// The end of its log file and standard error.
        log_tail: String,
    },

    /// redis-server kept running but never answered `PING` in time.
    #[error(
        "redis-server on 127.0.0.1:{port} did not answer PING within {waited:?}; last lines of its log:\n{log_tail}"
    )]
    StartTimeout {
        /// The port it was told to listen on.
        port: u16,
        /// How long start-up was given.
        waited: Duration,
        /// The end of its log file and standard error.
        log_tail: String,
    },

    /// The port was taken by another process, on every port that was tried.
    #[error(
        "redis-server could not listen on 127.0.0.1:{port}, the port is taken by another process ({attempts} attempt(s)); last lines of its log:\n{log_tail}"
    )]
    PortTaken {
        /// The last port that was tried.
        port: u16,
        /// How many ports were tried.
        attempts: u32,
        /// The end of the last attempt's log.
        log_tail: String,
    },

    /// No free loopback port could be found.
    #[error("no free 127.0.0.1 port found after {attempts} attempts")]
    NoFreePort {
        /// How many candidate ports were tried.
        attempts: u32,
    },

    /// The operation needs a running redis-server but it was stopped.
    #[error("redis-server on 127.0.0.1:{port} is stopped; call restart() first")]
    NotRunning {
        /// The server's port.
        port: u16,
    },

    /// `redis-cli` ran but exited with a failure status.
    #[error("`redis-cli {args}` against 127.0.0.1:{port} failed ({status}): {stderr}")]
    Cli {
        /// The server's port.
        port: u16,
        /// The arguments after `-h 127.0.0.1 -p PORT`.
        args: String,
        /// How it exited.
        status: ExitStatus,
        /// What it wrote to standard error (and standard output when that was empty).
        stderr: String,
    },

    /// A command did not finish in time and was killed.
    #[error("`{binary} {args}` did not finish within {waited:?} and was killed")]
    CommandTimeout {
        /// The binary that was run.
        binary: String,
        /// Its arguments.
        args: String,
        /// How long it was given.
        waited: Duration,
    },

    /// SIGSTOP or SIGCONT could not be delivered, or the process did not act on it in time.
    #[error("SIG{signal} to redis-server (pid {pid}, port {port}) failed: {detail}")]
    Signal {
        /// `STOP`, `CONT` or `KILL`.
        signal: &'static str,
        /// The process id.
        pid: u32,
        /// The server's port.
        port: u16,
        /// What `kill` reported, or the state the process was left in.
        detail: String,
    },

    /// The cluster did not form.
    #[error("Redis Cluster on ports {ports:?} did not form: {detail}")]
    Cluster {
        /// The ports of every node.
        ports: Vec<u16>,
        /// What was observed.
        detail: String,
    },

    /// A caller passed an argument outside its documented range.
    #[error("invalid argument `{argument}`: {detail}")]
    InvalidArgument {
        /// The argument's name.
        argument: &'static str,
        /// Why it was rejected.
        detail: String,
    },

    /// Any other I/O failure, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The operating system's reason.
        #[source]
        source: io::Error,
    },
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}
