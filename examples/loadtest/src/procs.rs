//! The processes a load test runs: the moderation dependency, one or two chat-service instances and, for the
//! two-instance variant, a redis-server. Each is killed when its handle drops, so failures and Ctrl-C clean up.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::Error;

/// How long a service gets to print its listening line (the chat service seeds first).
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Lines of a service's log quoted when it fails to start.
const LOG_TAIL_LINES: usize = 15;

/// Which CPU each side runs on, when pinning is possible.
///
/// With two or more CPUs and `taskset` on PATH, the chat-service instances get CPU 1 and everything else
/// (the generator, moderation, redis-server) CPU 0, so the server under test has a core of its own and the
/// generator's work does not show up as server latency.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CpuPlan {
    /// CPU of the load generator and the helpers, if pinned.
    pub generator: Option<usize>,
    /// CPU of the chat-service instances, if pinned.
    pub server: Option<usize>,
    /// CPUs this process could use when the plan was made, before any pinning.
    pub cpus: usize,
}

impl CpuPlan {
    /// No pinning: the kernel places every process.
    pub fn none() -> Self {
        Self {
            generator: None,
            server: None,
            cpus: available_cpus(),
        }
    }

    /// CPUs this process could use when the plan was made.
    pub fn available(&self) -> usize {
        self.cpus.max(1)
    }

    /// Generator on CPU 0, servers on CPU 1, when the machine has two CPUs and `taskset` is installed.
    pub fn detect() -> Self {
        let cpus = available_cpus();
        if cpus >= 2 && find_on_path("taskset").is_some() {
            Self {
                generator: Some(0),
                server: Some(1),
                cpus,
            }
        } else {
            Self::none()
        }
    }

    /// Pins this process, all its threads and every process it starts later to the generator's CPU.
    ///
    /// Call it before the async runtime starts its threads; threads inherit the mask of the thread that
    /// creates them.
    pub fn pin_this_process(&self) -> Result<(), Error> {
        let Some(cpu) = self.generator else {
            return Ok(());
        };
        let status = Command::new("taskset")
            .args([
                "-a",
                "-p",
                "-c",
                &cpu.to_string(),
                &std::process::id().to_string(),
            ])
            .stdout(Stdio::null())
            .status()
            .map_err(|e| Error::Io("running taskset".into(), e))?;
        if status.success() {
            Ok(())
        } else {
            Err(Error::Setup(format!(
                "taskset failed to pin the load test to CPU {cpu}: {status}"
            )))
        }
    }
}

fn available_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// The machine's one-minute load average (`/proc/loadavg`): above the CPU count, other work competed with the
/// run and its figures are not those of a quiet machine.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Measures how much CPU processes other than the load test's own used over an interval, from `/proc/stat`
/// and `/proc/PID/stat`: the figure that says whether a run had the machine to itself.
#[derive(Clone, Debug)]
pub struct OtherCpu {
    pids: Vec<u32>,
    busy: u64,
    total: u64,
    ours: u64,
}

impl OtherCpu {
    /// Starts measuring; `pids` are the run's own processes (this one, the services).
    pub fn start(pids: Vec<u32>) -> Option<Self> {
        let (busy, total) = machine_ticks()?;
        let ours = pids.iter().filter_map(|&pid| process_ticks(pid)).sum();
        Some(Self {
            pids,
            busy,
            total,
            ours,
        })
    }

    /// CPU cores other processes kept busy on average since [`start`](Self::start).
    pub fn cores(&self) -> Option<f64> {
        let (busy, total) = machine_ticks()?;
        let ours: u64 = self.pids.iter().filter_map(|&pid| process_ticks(pid)).sum();
        let cpus = available_cpus_of_machine() as f64;
        let elapsed = total.checked_sub(self.total).filter(|t| *t > 0)? as f64;
        let others = busy
            .saturating_sub(self.busy)
            .saturating_sub(ours.saturating_sub(self.ours)) as f64;
        Some(others / elapsed * cpus)
    }
}

/// CPUs of the machine as `/proc/stat` counts them (`cpuN` lines), whatever this process is pinned to.
fn available_cpus_of_machine() -> usize {
    std::fs::read_to_string("/proc/stat")
        .map(|stat| {
            stat.lines()
                .filter(|l| {
                    l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit)
                })
                .count()
        })
        .unwrap_or(1)
        .max(1)
}

/// Busy and total clock ticks of all CPUs together (the `cpu` line of `/proc/stat`).
fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal [guest guest_nice, already in user and nice]
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// User and system clock ticks of one process, all its threads (`/proc/PID/stat` fields 14 and 15).
fn process_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses; the fields after its closing parenthesis do not.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Finds `program` in the directories of `PATH`.
pub fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Peak and current resident memory of a process, from `/proc/PID/status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Memory {
    /// `VmHWM`: the most resident memory the process ever had, in KiB.
    pub peak_kib: u64,
    /// `VmRSS`: resident memory now, in KiB.
    pub rss_kib: u64,
}

impl Memory {
    /// Reads the memory of `pid`; `None` when the process is gone or `/proc` is not Linux's.
    pub fn of(pid: u32) -> Option<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        Self::parse(&status)
    }

    /// Parses the text of a `/proc/PID/status` file.
    pub fn parse(status: &str) -> Option<Self> {
        let field = |name: &str| {
            status.lines().find_map(|line| {
                let rest = line.strip_prefix(name)?.strip_prefix(':')?;
                rest.split_whitespace().next()?.parse::<u64>().ok()
            })
        };
        Some(Self {
            peak_kib: field("VmHWM")?,
            rss_kib: field("VmRSS")?,
        })
    }

    /// Peak in MiB.
    pub fn peak_mib(&self) -> f64 {
        self.peak_kib as f64 / 1024.0
    }
}

/// A running service: killed and reaped on drop.
#[derive(Debug)]
pub struct Service {
    name: String,
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Service {
    /// Starts `program args` (through `taskset -c CPU` when `cpu` is given) in its own process group, with its
    /// stderr in `log`, and waits until it prints `... listening on ADDR` on stdout.
    ///
    /// The address must be a loopback address: the load test sends nothing anywhere else.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[OsString],
        envs: &[(&str, &OsStr)],
        cpu: Option<usize>,
        log: &Path,
    ) -> Result<Self, Error> {
        if !program.is_file() {
            return Err(Error::MissingBinary(program.to_path_buf()));
        }
        let mut command = match cpu {
            Some(cpu) => {
                let mut command = Command::new("taskset");
                command.arg("-c").arg(cpu.to_string()).arg(program);
                command
            }
            None => Command::new(program),
        };
        let stderr =
            File::create(log).map_err(|e| Error::Io(format!("creating {}", log.display()), e))?;
        command
            .args(args)
            // Settings of the environment this runs in must not leak into the services under test.
            .env_remove("REDIS_URL")
            .env_remove("DATABASE_URL")
            .env_remove("LISTEN_ADDR")
            .env_remove("CACHE_DISK_PATH")
            .env_remove("CHAT_BARE")
            .env_remove("MODERATION_URL")
            .env_remove("MODERATION_TIMEOUT")
            .env_remove("MODERATION_BREAKER_WAIT")
            .env_remove("IDEMPOTENCY_KEY_REQUIRED")
            .env("RUST_LOG", "warn")
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            // Its own process group: a Ctrl-C in the terminal reaches only the load test, which then stops the
            // services in order instead of racing them.
            .process_group(0);
        let mut child = command
            .spawn()
            .map_err(|e| Error::Io(format!("starting {}", program.display()), e))?;
        let Some(stdout) = child.stdout.take() else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::Setup(format!("{name}: no stdout pipe")));
        };
        let (found, listening) = mpsc::channel();
        std::thread::Builder::new()
            .name(format!("{name}-stdout"))
            .spawn(move || {
                let mut sent = false;
                // Keeps reading after the listening line so the service never blocks on a full pipe.
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if !sent && let Some(addr) = listening_addr(&line) {
                        sent = true;
                        let _ = found.send(addr);
                    }
                }
            })
            .map_err(|e| Error::Io("starting a reader thread".into(), e))?;
        let mut service = Service {
            name: name.to_owned(),
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log: log.to_path_buf(),
        };
        match listening.recv_timeout(START_TIMEOUT) {
            Ok(addr) if addr.ip().is_loopback() => {
                service.addr = addr;
                Ok(service)
            }
            Ok(addr) => Err(Error::Setup(format!(
                "{name} listens on {addr}, not on loopback; the load test only targets loopback"
            ))),
            Err(reason) => {
                if reason == mpsc::RecvTimeoutError::Disconnected {
                    // Stdout closed: the process is exiting; give it a moment so its status can be reported.
                    std::thread::sleep(Duration::from_millis(200));
                }
                let exited = service.child.try_wait().ok().flatten();
                Err(Error::Startup {
                    name: name.to_owned(),
                    detail: match exited {
                        Some(status) => format!("exited with {status} before listening"),
                        None => {
                            format!("printed no `listening on ADDR` line within {START_TIMEOUT:?}")
                        }
                    },
                    log_tail: service.log_tail(),
                })
            }
        }
    }

    /// The service's name in reports.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`, without a trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The process id (the service itself: `taskset` replaces itself with it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Memory of the process now.
    pub fn memory(&self) -> Option<Memory> {
        Memory::of(self.pid())
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The last lines of its stderr log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        // SIGKILL: the data of a run is thrown away with its temporary directory, so nothing needs a clean stop.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address in a line such as `chat-service listening on 127.0.0.1:4000`.
///
/// ```
/// use chat_loadtest::procs::listening_addr;
///
/// let addr = listening_addr("moderation listening on 127.0.0.1:41234").unwrap();
/// assert_eq!(addr.port(), 41234);
/// assert!(listening_addr("seeded 10 rooms").is_none());
/// ```
pub fn listening_addr(line: &str) -> Option<SocketAddr> {
    let (_, rest) = line.split_once("listening on ")?;
    rest.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_memory_from_proc_status() {
        let status = "Name:\tchat\nVmPeak:\t 9000 kB\nVmHWM:\t   51200 kB\nVmRSS:\t   40960 kB\n";
        let memory = Memory::parse(status).unwrap();
        assert_eq!(
            memory,
            Memory {
                peak_kib: 51_200,
                rss_kib: 40_960
            }
        );
        assert_eq!(memory.peak_mib(), 50.0);
        assert!(Memory::parse("Name: x\n").is_none());
    }

    #[test]
    fn this_process_has_memory() {
        let memory = Memory::of(std::process::id()).unwrap();
        assert!(memory.peak_kib >= memory.rss_kib && memory.rss_kib > 0);
    }

    #[test]
    fn other_cpu_is_measured_apart_from_our_own() {
        let meter = OtherCpu::start(vec![std::process::id()]).unwrap();
        assert!(process_ticks(std::process::id()).is_some());
        // Busy work in this process counts as ours, not as other work.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(200) {
            x = x.wrapping_mul(31).wrapping_add(1);
        }
        assert!(x != 1);
        let cores = meter.cores().unwrap();
        assert!(
            cores >= 0.0 && cores <= available_cpus_of_machine() as f64,
            "{cores}"
        );
    }

    #[test]
    fn the_load_average_is_a_number() {
        assert!(load_average().is_some_and(|l| l >= 0.0));
    }

    #[test]
    fn listening_lines() {
        assert_eq!(
            listening_addr("chat-service listening on 127.0.0.1:3000"),
            Some(SocketAddr::from(([127, 0, 0, 1], 3000)))
        );
        assert_eq!(
            listening_addr("listening on [::1]:80 (stacked)").map(|a| a.port()),
            Some(80)
        );
        assert!(listening_addr("listening on nowhere").is_none());
    }

    #[test]
    fn a_missing_binary_is_reported_by_path() {
        let dir = tempfile::tempdir().unwrap();
        let err = Service::spawn(
            "x",
            &dir.path().join("nope"),
            &[],
            &[],
            None,
            &dir.path().join("log"),
        )
        .unwrap_err();
        assert!(matches!(err, Error::MissingBinary(_)), "{err}");
    }

    #[test]
    fn a_service_that_exits_early_is_reported_with_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("fails.sh");
        std::fs::write(&script, "#!/bin/sh\necho 'bad flag' >&2\nexit 3\n").unwrap();
        let status = Command::new("chmod")
            .arg("+x")
            .arg(&script)
            .status()
            .unwrap();
        assert!(status.success());
        let err =
            Service::spawn("fails", &script, &[], &[], None, &dir.path().join("log")).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("bad flag") && text.contains("fails"),
            "{text}"
        );
    }

    #[test]
    fn a_service_is_killed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("serve.sh");
        std::fs::write(
            &script,
            "#!/bin/sh\necho 'fake listening on 127.0.0.1:9'\nexec sleep 600\n",
        )
        .unwrap();
        let status = Command::new("chmod")
            .arg("+x")
            .arg(&script)
            .status()
            .unwrap();
        assert!(status.success());
        let service =
            Service::spawn("fake", &script, &[], &[], None, &dir.path().join("log")).unwrap();
        assert_eq!(service.addr().port(), 9);
        let pid = service.pid();
        assert!(Path::new(&format!("/proc/{pid}")).exists());
        drop(service);
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "reaped after drop"
        );
    }
}
