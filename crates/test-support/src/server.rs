//! A real `redis-server` process on a loopback port, in its own temporary directory, that can be
//! stopped, restarted, paused and resumed by fault tests and is always killed on drop.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::process::{self, Watchdog};
use crate::resp::{self, Connection, Reply};
use crate::{Error, port};

/// How long a redis-server gets to answer `PING` after being spawned.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one `redis-cli` invocation may run before it is killed.
const CLI_TIMEOUT: Duration = Duration::from_secs(10);

/// How many ports are tried when the chosen one was taken by another process.
const PORT_ATTEMPTS: u32 = 5;

/// How long [`RedisServer::pause`] and [`RedisServer::resume`] wait for the process to act on
/// its signal.
const SIGNAL_TIMEOUT: Duration = Duration::from_secs(5);

/// Lines of the server's log quoted in start-up errors.
const LOG_TAIL_LINES: usize = 20;

/// A real `redis-server` on `127.0.0.1`, killed (and its directory deleted) on drop.
///
/// The server runs in a fresh temporary directory, listens only on loopback, logs to
/// `redis.log` in that directory and, unless [`RedisServerBuilder::persistence`] is on, keeps
/// nothing on disk. Every method is blocking and may be called from inside a tokio runtime.
///
/// ```
/// use test_support::RedisServer;
///
/// let redis = RedisServer::start()?;
/// redis.cli(&["SET", "greeting", "hello"])?;
/// assert_eq!(redis.cli(&["GET", "greeting"])?, "hello");
/// assert_eq!(redis.url(), format!("redis://127.0.0.1:{}", redis.port()));
/// # Ok::<(), test_support::Error>(())
/// ```
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    config: RedisServerBuilder,
    binaries: Binaries,
    running: Option<Running>,
    paused: AtomicBool,
    // Declared last so the process is gone before its directory is removed.
    dir: TempDir,
}

/// The live process and the watchdog that kills it should this test process die abruptly.
#[derive(Debug)]
struct Running {
    // Declared first: the watchdog is killed before the server, so it never signals a reused pid.
    watchdog: Watchdog,
    child: Child,
}

#[derive(Debug, Clone)]
struct Binaries {
    server: PathBuf,
    cli: PathBuf,
}

impl Binaries {
    fn locate() -> Result<Self, Error> {
        Ok(Binaries {
            server: process::find_binary("redis-server")?,
            cli: process::find_binary("redis-cli")?,
        })
    }
}

/// Configures a [`RedisServer`] before it starts; made by [`RedisServer::builder`].
///
/// ```
/// use test_support::RedisServer;
///
/// let mut redis = RedisServer::builder()
///     .persistence(true)
///     .arg("--maxmemory")
///     .arg("64mb")
///     .start()?;
/// redis.cli(&["SET", "kept", "yes"])?;
/// redis.restart()?;
/// assert_eq!(redis.cli(&["GET", "kept"])?, "yes");
/// # Ok::<(), test_support::Error>(())
/// ```
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct RedisServerBuilder {
    persistence: bool,
    args: Vec<OsString>,
    cluster: bool,
}

impl RedisServerBuilder {
    /// Keeps data across [`RedisServer::restart`]: append-only file on, fsynced on every write.
    ///
    /// Off by default: no RDB snapshots, no AOF, so a restart starts empty.
    pub fn persistence(mut self, on: bool) -> Self {
        self.persistence = on;
        self
    }

    /// Appends one command-line argument for `redis-server`, after the crate's own, so it
    /// overrides them (`.arg("--maxmemory").arg("64mb")`).
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Appends several command-line arguments, as [`arg`](Self::arg) does one.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Runs the node in cluster mode, on a port whose cluster bus port is free as well.
    pub(crate) fn cluster_node(mut self) -> Self {
        self.cluster = true;
        self
    }

    /// Starts the server and waits until it answers `PING`.
    ///
    /// # Errors
    ///
    /// [`Error::MissingBinary`] when `redis-server` or `redis-cli` is not installed, with the
    /// command that installs them; [`Error::ServerExited`], [`Error::StartTimeout`] or
    /// [`Error::PortTaken`] with the end of the server's log when it did not come up.
    pub fn start(self) -> Result<RedisServer, Error> {
        RedisServer::start_with(self)
    }
}

impl RedisServer {
    /// Starts a redis-server without persistence on a free port and waits until it answers.
    ///
    /// # Errors
    ///
    /// See [`RedisServerBuilder::start`].
    pub fn start() -> Result<RedisServer, Error> {
        Self::builder().start()
    }

    /// A builder for a server with persistence or extra arguments.
    pub fn builder() -> RedisServerBuilder {
        RedisServerBuilder::default()
    }

    fn start_with(config: RedisServerBuilder) -> Result<RedisServer, Error> {
        let binaries = Binaries::locate()?;
        let mut last_taken = None;
        for _ in 0..PORT_ATTEMPTS {
            let port = if config.cluster {
                port::free_cluster_port()?
            } else {
                port::try_free_port()?
            };
            let mut server = RedisServer::unstarted(port, config.clone(), binaries.clone())?;
            match server.spawn() {
                Ok(()) => return Ok(server),
                Err(Error::PortTaken { log_tail, .. }) => {
                    tracing::debug!(port, "redis-server port was taken, trying another");
                    last_taken = Some((port, log_tail));
                }
                Err(e) => return Err(e),
            }
        }
        let (port, log_tail) = last_taken.unwrap_or_default();
        Err(Error::PortTaken {
            port,
            attempts: PORT_ATTEMPTS,
            log_tail,
        })
    }

    /// A server for `port` with a fresh directory and no process yet.
    fn unstarted(
        port: u16,
        config: RedisServerBuilder,
        binaries: Binaries,
    ) -> Result<RedisServer, Error> {
        let dir = tempfile::Builder::new()
            .prefix("redis-test-")
            .tempdir()
            .map_err(|e| Error::io("creating a temporary directory for redis-server", e))?;
        Ok(RedisServer {
            port,
            config,
            binaries,
            running: None,
            paused: AtomicBool::new(false),
            dir,
        })
    }

    /// The port the server listens on; it stays the same across [`restart`](Self::restart).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.port))
    }

    /// `redis://127.0.0.1:port`, for redis-rs and deadpool-redis.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The process id of the running server, `None` while stopped.
    pub fn pid(&self) -> Option<u32> {
        self.running.as_ref().map(|running| running.child.id())
    }

    /// The server's working directory (its log, and its data files with persistence).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The full path of the server's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// Whether the server process is running (it may be paused).
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Kills the server (SIGKILL, no shutdown save). The port and directory are kept for
    /// [`restart`](Self::restart). Stopping a stopped server does nothing.
    ///
    /// # Errors
    ///
    /// Killing an owned child process does not fail on Linux; the `Result` keeps room for
    /// reporting a kill that did not take.
    pub fn stop(&mut self) -> Result<(), Error> {
        if let Some(mut running) = self.running.take() {
            // SIGKILL ends a stopped process too, but a resumed one leaves no doubt.
            if self.paused.swap(false, Ordering::SeqCst) {
                let _ = process::send_signal(running.child.id(), "CONT");
            }
            drop(running.watchdog);
            process::kill_and_reap(&mut running.child);
        }
        Ok(())
    }

    /// Stops the server if it runs, then starts it again on the same port and waits until it
    /// answers. Without persistence the data is gone; with it, every acknowledged write is back.
    ///
    /// # Errors
    ///
    /// As [`RedisServerBuilder::start`], except that the port is never changed: if another
    /// process took it meanwhile, the result is [`Error::PortTaken`].
    pub fn restart(&mut self) -> Result<(), Error> {
        self.stop()?;
        self.spawn()
    }

    /// Freezes the server with SIGSTOP: connections stay open and nothing is answered, as
    /// with a server stuck in a long fork or a swapped-out host. Returns once the process is
    /// seen stopped (state `T` in `/proc`), not merely signalled.
    ///
    /// # Errors
    ///
    /// [`Error::NotRunning`] after [`stop`](Self::stop); [`Error::Signal`] if `kill` failed or
    /// the process was not seen stopped within 5 s.
    pub fn pause(&self) -> Result<(), Error> {
        self.signal("STOP", |state| state == 'T')?;
        self.paused.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Lets a paused server continue with SIGCONT.
    ///
    /// # Errors
    ///
    /// [`Error::NotRunning`] after [`stop`](Self::stop); [`Error::Signal`] if `kill` failed or
    /// the process was still seen stopped after 5 s.
    pub fn resume(&self) -> Result<(), Error> {
        self.signal("CONT", |state| state != 'T')?;
        self.paused.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Sends `SIG<signal>` and waits until the process's state satisfies `reached`.
    fn signal(&self, signal: &'static str, reached: impl Fn(char) -> bool) -> Result<(), Error> {
        let pid = self.pid().ok_or(Error::NotRunning { port: self.port })?;
        process::send_signal(pid, signal)
            .and_then(|()| process::wait_for_state(pid, reached, SIGNAL_TIMEOUT))
            .map_err(|detail| Error::Signal {
                signal,
                pid,
                port: self.port,
                detail,
            })
    }

    /// Runs `redis-cli -h 127.0.0.1 -p PORT args...` and returns its standard output without
    /// the final line break (`""` for a nil reply).
    ///
    /// Redis error replies are output too (`"ERR ..."`), as redis-cli exits successfully for
    /// them. The call is killed after 10 seconds, so a paused server yields an error rather
    /// than a hung test.
    ///
    /// # Errors
    ///
    /// [`Error::Cli`] with redis-cli's standard error when it fails (for example when the
    /// server is down), [`Error::CommandTimeout`] when it hangs.
    pub fn cli(&self, args: &[&str]) -> Result<String, Error> {
        run_cli(&self.binaries.cli, self.port, &[], args)
    }

    /// The `redis-cli` binary this server was started with.
    pub(crate) fn cli_path(&self) -> &Path {
        &self.binaries.cli
    }

    /// Spawns the process on `self.port` and waits until it, and not some other process,
    /// answers `PING`.
    fn spawn(&mut self) -> Result<(), Error> {
        let dir = self.dir.path();
        let log = self.log_path();
        let stderr_path = dir.join("redis.stderr");
        let stderr = File::create(&stderr_path)
            .map_err(|e| Error::io(format!("creating {}", stderr_path.display()), e))?;

        let mut args: Vec<OsString> = vec![
            "--port".into(),
            self.port.to_string().into(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--protected-mode".into(),
            "no".into(),
            "--daemonize".into(),
            "no".into(),
            "--dir".into(),
            dir.as_os_str().to_owned(),
            "--logfile".into(),
            log.as_os_str().to_owned(),
            "--save".into(),
            "".into(),
        ];
        if self.config.persistence {
            args.extend(["--appendonly", "yes", "--appendfsync", "always"].map(Into::into));
        } else {
            args.extend(["--appendonly", "no"].map(Into::into));
        }
        if self.config.cluster {
            args.extend(
                [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ]
                .map(Into::into),
            );
        }
        args.extend(self.config.args.iter().cloned());

        let child = Command::new(&self.binaries.server)
            .args(&args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|source| Error::Spawn {
                binary: self.binaries.server.display().to_string(),
                source,
            })?;
        let mut running = match Watchdog::spawn(child.id()) {
            Ok(watchdog) => Running { watchdog, child },
            Err(e) => {
                let mut child = child;
                process::kill_and_reap(&mut child);
                return Err(e);
            }
        };

        match self.wait_ready(&mut running.child) {
            Ok(()) => {
                self.running = Some(running);
                Ok(())
            }
            Err(e) => {
                drop(running.watchdog);
                process::kill_and_reap(&mut running.child);
                Err(e)
            }
        }
    }

    fn wait_ready(&self, child: &mut Child) -> Result<(), Error> {
        let started = Instant::now();
        let deadline = started + START_TIMEOUT;
        let mut pause = Duration::from_millis(2);
        loop {
            if let Some(status) = child
                .try_wait()
                .map_err(|e| Error::io("waiting for redis-server", e))?
            {
                let log_tail = self.log_tail();
                return Err(if log_tail.contains("Address already in use") {
                    Error::PortTaken {
                        port: self.port,
                        attempts: 1,
                        log_tail,
                    }
                } else {
                    Error::ServerExited {
                        port: self.port,
                        status,
                        log_tail,
                    }
                });
            }
            match answering_pid(self.addr()) {
                Some(pid) if pid == child.id() => return Ok(()),
                // Another server answers on this port: ours will fail to bind and exit.
                Some(_) | None => {}
            }
            if Instant::now() >= deadline {
                return Err(Error::StartTimeout {
                    port: self.port,
                    waited: START_TIMEOUT,
                    log_tail: self.log_tail(),
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// The last lines of the server's log and standard error.
    fn log_tail(&self) -> String {
        let mut tail = String::new();
        for path in [self.log_path(), self.dir.path().join("redis.stderr")] {
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            let lines: Vec<&str> = text.lines().collect();
            for line in &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..] {
                let _ = writeln!(tail, "    {line}");
            }
        }
        if tail.is_empty() {
            tail.push_str("    (empty)");
        }
        tail
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// The pid of the redis-server answering `PING` on `addr`, if one does.
pub(crate) fn answering_pid(addr: SocketAddr) -> Option<u32> {
    let mut connection = Connection::open(addr, Duration::from_millis(500)).ok()?;
    if connection.command(&["PING"]).ok()? != Reply::Simple("PONG".to_owned()) {
        return None;
    }
    match connection.command(&["INFO", "server"]).ok()? {
        Reply::Bulk(Some(info)) => resp::info_field(&info, "process_id")?.parse().ok(),
        _ => None,
    }
}

/// Runs redis-cli against `127.0.0.1:port` with `flags` before `-h`.
pub(crate) fn run_cli(
    cli: &Path,
    port: u16,
    flags: &[&str],
    args: &[&str],
) -> Result<String, Error> {
    let port_text = port.to_string();
    let full: Vec<&str> = flags
        .iter()
        .copied()
        .chain(["-h", "127.0.0.1", "-p", &port_text])
        .chain(args.iter().copied())
        .collect();
    let output = process::run_with_timeout(cli.as_os_str(), &full, CLI_TIMEOUT)?;
    if !output.status.success() {
        let stderr = if output.stderr.trim().is_empty() {
            output.stdout.trim().to_owned()
        } else {
            output.stderr.trim().to_owned()
        };
        return Err(Error::Cli {
            port,
            args: args.join(" "),
            status: output.status,
            stderr,
        });
    }
    Ok(output.stdout.trim_end_matches(['\r', '\n']).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_held_by_another_server_is_reported_as_taken_not_as_ready() {
        let holder = RedisServer::start().unwrap();
        let mut intruder = RedisServer::unstarted(
            holder.port(),
            RedisServer::builder(),
            Binaries::locate().unwrap(),
        )
        .unwrap();

        // The holder answers PING on this port; the intruder must not take that for its own.
        let err = intruder.spawn().unwrap_err();

        assert!(matches!(err, Error::PortTaken { .. }), "{err:?}");
        assert!(err.to_string().contains("Address already in use"), "{err}");
        assert!(intruder.pid().is_none());
        assert_eq!(holder.cli(&["PING"]).unwrap(), "PONG");
    }

    #[test]
    fn restart_on_a_port_taken_meanwhile_fails_with_port_taken() {
        let mut redis = RedisServer::start().unwrap();
        redis.stop().unwrap();
        let squatter = std::net::TcpListener::bind(redis.addr()).unwrap();

        let err = redis.restart().unwrap_err();

        assert!(
            matches!(err, Error::PortTaken { port, .. } if port == redis.port()),
            "{err:?}"
        );
        drop(squatter);
        redis.restart().unwrap();
        assert_eq!(redis.cli(&["PING"]).unwrap(), "PONG");
    }
}
