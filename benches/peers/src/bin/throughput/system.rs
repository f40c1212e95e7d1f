//! What the harness reads from the machine: CPU time of processes and threads (`/proc`), resident memory,
//! other processes' load, CPU pinning, and the facts a report records (CPU model, commit, date).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::Result;

/// How long the machine is watched for other processes' CPU use before each window. It is also idle time,
/// so background work of the previous variant (span export, cache housekeeping) is over before the next.
pub const QUIET_SAMPLE: Duration = Duration::from_millis(250);
/// Other processes' CPU use (in cores) that counts as noise when they have no CPU of their own.
const NOISE_CORES: f64 = 0.1;
/// Linux reports `/proc/stat` and `/proc/PID/stat` times in ticks of 1/USER_HZ, 100 per second.
const USER_HZ: f64 = 100.0;

/// Nanoseconds on CPU of every live thread of process `pid`, by thread id, from
/// `/proc/PID/task/TID/schedstat` (nanosecond resolution, unlike the ticks of `/proc/PID/stat`).
pub fn thread_cpu(pid: u32) -> HashMap<u32, u64> {
    let mut threads = HashMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return threads;
    };
    for entry in dir.flatten() {
        let Some(tid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let on_cpu = std::fs::read_to_string(entry.path().join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok());
        if let Some(ns) = on_cpu {
            threads.insert(tid, ns);
        }
    }
    threads
}

/// CPU nanoseconds spent between two snapshots of one process's threads. Threads born in between count
/// from zero; a thread that ended in between loses its last stretch, which is why the servers keep their
/// threads for the whole run.
pub fn cpu_between(before: &HashMap<u32, u64>, after: &HashMap<u32, u64>) -> u64 {
    after
        .iter()
        .map(|(tid, ns)| ns.saturating_sub(before.get(tid).copied().unwrap_or(0)))
        .sum()
}

/// CPU seconds of this process's children that have ended and been waited for (`cutime` + `cstime` of
/// `/proc/self/stat`): the load generator's, read around each run of it.
pub fn waited_children_cpu() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            // The command name may contain spaces; the fields after it are plain numbers. After `) ` come
            // state (field 3) … utime (14), stime (15), cutime (16), cstime (17).
            let rest = &stat[stat.rfind(')')? + 1..];
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let cutime: u64 = fields.get(13)?.parse().ok()?;
            let cstime: u64 = fields.get(14)?.parse().ok()?;
            Some((cutime + cstime) as f64 / USER_HZ)
        })
        .unwrap_or(f64::NAN)
}

/// Busy time of the whole machine (user, nice and system; interrupts excluded, as they are from a thread's
/// run time), in seconds, from `/proc/stat`.
pub fn machine_busy_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(3)
        .filter_map(|t| t.parse().ok())
        .collect();
    (ticks.len() == 3).then(|| ticks.iter().sum::<u64>() as f64 / USER_HZ)
}

/// Resident memory of a process, from `/proc/PID/status`.
#[derive(Clone, Copy, Debug)]
pub struct Memory {
    /// `VmRSS`, MB.
    pub rss_mb: f64,
    /// `VmHWM`: the peak of `VmRSS` over the process's life, MB.
    pub peak_mb: f64,
}

pub fn memory(pid: u32) -> Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("reading /proc/{pid}/status: {e}"))?;
    let field = |name: &str| -> Result<f64> {
        let kb: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| format!("no {name} in /proc/{pid}/status"))?;
        Ok(kb * 1024.0 / 1e6)
    };
    Ok(Memory {
        rss_mb: field("VmRSS:")?,
        peak_mb: field("VmHWM:")?,
    })
}

/// Where the server, the load generator and the OTLP sink run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pinning {
    /// Server on CPU 1; load generator, OTLP sink and the harness on CPU 0, as a load test from another
    /// machine would see the server.
    Split,
    /// Everything on CPU 0: server and generator take turns.
    Shared,
    /// Wherever the scheduler puts them.
    Off,
}

impl Pinning {
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "split" => Some(Self::Split),
            "shared" => Some(Self::Shared),
            "off" => Some(Self::Off),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Split => "split",
            Self::Shared => "shared",
            Self::Off => "off",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Self::Split => {
                "split: each server on CPU 1, wrk, the OTLP sink and the harness on CPU 0"
            }
            Self::Shared => "shared: servers, wrk, the OTLP sink and the harness all on CPU 0",
            Self::Off => "off: processes placed by the scheduler",
        }
    }

    /// The CPU each variant's server is pinned to.
    pub fn server_cpu(self) -> Option<usize> {
        match self {
            Self::Split => Some(1),
            Self::Shared => Some(0),
            Self::Off => None,
        }
    }

    /// The CPU of the load generator, the OTLP sink and the harness itself.
    pub fn client_cpu(self) -> Option<usize> {
        match self {
            Self::Split | Self::Shared => Some(0),
            Self::Off => None,
        }
    }

    /// Other processes' CPU use (in cores) that leaves the CPUs this run uses alone: with everything on
    /// one CPU, the others may have the rest.
    pub fn quiet_cores(self) -> f64 {
        let cpus = cpu_count() as f64;
        match self {
            Self::Shared => (cpus - 1.0 - NOISE_CORES).max(NOISE_CORES),
            Self::Split | Self::Off => NOISE_CORES,
        }
    }
}

/// The calling thread's id, from `/proc/thread-self` (a link to `/proc/<pid>/task/<tid>`).
pub fn current_tid() -> Option<u32> {
    std::fs::read_link("/proc/thread-self")
        .ok()?
        .file_name()?
        .to_str()?
        .parse()
        .ok()
}

/// Sets the CPU affinity of one thread with `taskset`; threads it creates afterwards inherit it.
pub fn pin_thread(tid: u32, cpu: usize) -> Result<()> {
    let output = Command::new("taskset")
        .args(["-p", "-c", &cpu.to_string(), &tid.to_string()])
        .output()
        .map_err(|e| format!("cannot run taskset (use --pin off): {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "taskset failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )
        .into());
    }
    Ok(())
}

/// A command that runs `program` on `cpu` (through `taskset`, which execs it: the process id is the
/// program's), or unpinned.
pub fn pinned_command(program: impl AsRef<std::ffi::OsStr>, cpu: Option<usize>) -> Command {
    match cpu {
        Some(cpu) => {
            let mut command = Command::new("taskset");
            command.arg("-c").arg(cpu.to_string()).arg(program);
            command
        }
        None => Command::new(program),
    }
}

pub fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// A moment of the machine, for telling our processes' CPU use from everybody else's.
pub struct Usage {
    pub wall: Instant,
    machine: Option<f64>,
    /// Thread CPU time of the harness and of each server, by process id.
    pub processes: HashMap<u32, HashMap<u32, u64>>,
    /// CPU seconds of the load generator runs that have ended.
    pub generator: f64,
}

impl Usage {
    /// Takes the snapshot; `pids` are the harness's own process and the servers'.
    pub fn now(pids: &[u32]) -> Self {
        Self {
            wall: Instant::now(),
            machine: machine_busy_seconds(),
            processes: pids.iter().map(|&pid| (pid, thread_cpu(pid))).collect(),
            generator: waited_children_cpu(),
        }
    }

    /// CPU nanoseconds of process `pid` since `earlier`.
    pub fn cpu_ns_since(&self, earlier: &Usage, pid: u32) -> u64 {
        match (earlier.processes.get(&pid), self.processes.get(&pid)) {
            (Some(before), Some(after)) => cpu_between(before, after),
            _ => 0,
        }
    }

    /// Cores used by other processes since `earlier` (`/proc/stat` counts in 10 ms ticks, so short spans
    /// are coarse).
    pub fn others_since(&self, earlier: &Usage) -> f64 {
        let (Some(now), Some(then)) = (self.machine, earlier.machine) else {
            return f64::NAN;
        };
        let ours: u64 = self
            .processes
            .keys()
            .map(|&pid| self.cpu_ns_since(earlier, pid))
            .sum();
        let generator = (self.generator - earlier.generator).max(0.0);
        let wall = (self.wall - earlier.wall).as_secs_f64();
        ((now - then - ours as f64 / 1e9 - generator) / wall).max(0.0)
    }
}

/// Watches the machine until other processes leave our CPUs alone (use less than `quiet_cores`) or
/// `max_wait` has passed; returns the time waited beyond the first look.
pub fn wait_for_quiet(pids: &[u32], quiet_cores: f64, max_wait: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let before = Usage::now(pids);
        std::thread::sleep(QUIET_SAMPLE);
        let others = Usage::now(pids).others_since(&before);
        let waited = start.elapsed().saturating_sub(QUIET_SAMPLE);
        if others.is_nan() || others < quiet_cores || waited >= max_wait {
            return waited;
        }
    }
}

/// CPUs of the machine, as counted when the process starts (pinning narrows what
/// `available_parallelism` reports afterwards).
pub fn cpu_count() -> usize {
    static CPUS: OnceLock<usize> = OnceLock::new();
    *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

pub fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| format!("Linux {}", s.trim()))
        .unwrap_or_else(|_| "unknown".to_owned())
}

pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// `YYYY-MM-DD HH:MM UTC` from the system clock (days to civil date after Howard Hinnant).
pub fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// The commit measured, and which of the measured crates had uncommitted changes.
pub fn source_state() -> String {
    let dir = env!("CARGO_MANIFEST_DIR");
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let Some(head) = git(&["rev-parse", "--short", "HEAD"]) else {
        return "unknown (not a git checkout)".to_owned();
    };
    let dirty: Vec<String> = git(&["status", "--porcelain", "--", "../../crates"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.get(3..))
        .filter_map(|path| path.split('/').nth(1).map(str::to_owned))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if dirty.is_empty() {
        head
    } else {
        format!("{head}, with uncommitted changes in {}", dirty.join(", "))
    }
}
