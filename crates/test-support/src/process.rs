//! Child-process plumbing shared by the server and the cluster: finding binaries on `PATH`,
//! running a command with a deadline, and delivering signals without `unsafe`.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::Error;

/// Finds `binary` in the directories of `PATH`.
pub(crate) fn find_binary(binary: &'static str) -> Result<PathBuf, Error> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(binary))
        .find(|candidate| candidate.is_file())
        .ok_or(Error::MissingBinary { binary })
}

/// What a finished command printed.
#[derive(Debug)]
pub(crate) struct Output {
    pub(crate) status: ExitStatus,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

/// Runs `program args...`, killing it when it outlives `timeout`.
///
/// Output goes to anonymous temporary files rather than pipes so that a chatty child can never
/// block on a full pipe while this thread is polling for its exit.
pub(crate) fn run_with_timeout<I, S>(
    program: &OsStr,
    args: I,
    timeout: Duration,
) -> Result<Output, Error>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let display_args = || {
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let binary = program.to_string_lossy().into_owned();
    let scratch = |what: &str| {
        tempfile::tempfile()
            .map_err(|e| Error::io(format!("creating {what} file for `{binary}`"), e))
    };
    let mut stdout = scratch("stdout")?;
    let mut stderr = scratch("stderr")?;
    let io_err = |e| Error::io(format!("preparing output of `{binary}`"), e);
    let mut child = Command::new(program)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(stdout.try_clone().map_err(io_err)?)
        .stderr(stderr.try_clone().map_err(io_err)?)
        .spawn()
        .map_err(|source| Error::Spawn {
            binary: binary.clone(),
            source,
        })?;

    let status = match wait_with_deadline(&mut child, Instant::now() + timeout)? {
        Some(status) => status,
        None => {
            kill_and_reap(&mut child);
            return Err(Error::CommandTimeout {
                binary,
                args: display_args(),
                waited: timeout,
            });
        }
    };
    Ok(Output {
        status,
        stdout: read_all(&mut stdout, &binary)?,
        stderr: read_all(&mut stderr, &binary)?,
    })
}

fn read_all(file: &mut File, binary: &str) -> Result<String, Error> {
    let mut bytes = Vec::new();
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.read_to_end(&mut bytes))
        .map_err(|e| Error::io(format!("reading output of `{binary}`"), e))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Polls `child` until it exits or `deadline` passes; `None` means it is still running.
pub(crate) fn wait_with_deadline(
    child: &mut Child,
    deadline: Instant,
) -> Result<Option<ExitStatus>, Error> {
    let mut pause = Duration::from_millis(1);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(Some(status)),
            Ok(None) => {}
            Err(e) => return Err(Error::io("waiting for a child process", e)),
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// SIGKILLs `child` and reaps it, so neither the process nor a zombie is left behind.
pub(crate) fn kill_and_reap(child: &mut Child) {
    // Errors mean the process already exited; `wait` still reaps it.
    let _ = child.kill();
    let _ = child.wait();
}

/// Sends `SIG<signal>` to `pid` through the shell's `kill` builtin, which every system with
/// `sh` has, so no `unsafe` libc call is needed.
pub(crate) fn send_signal(pid: u32, signal: &str) -> Result<(), String> {
    let output = Command::new("sh")
        .args([
            "-c",
            "kill -s \"$1\" \"$2\"",
            "sh",
            signal,
            &pid.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("could not run sh: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_owned())
    }
}

/// The state letter of process `pid` (`R` running, `S` sleeping, `T` stopped by a signal, ...)
/// from `/proc/PID/stat`; `None` when there is no such process (or no `/proc`).
pub fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name in parentheses may itself hold spaces or `)`: the state follows the last `)`.
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

/// Waits until `pid`'s state satisfies `wanted`, for up to `timeout`.
///
/// `kill` returns once a signal is queued, not once the process has acted on it, so a process
/// sent SIGSTOP can still be seen running for a while on a busy machine. Without `/proc` there is
/// nothing to wait on and this returns at once.
pub(crate) fn wait_for_state(
    pid: u32,
    wanted: impl Fn(char) -> bool,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_micros(200);
    loop {
        let state = match process_state(pid) {
            None => return Ok(()),
            Some(state) if wanted(state) => return Ok(()),
            Some(state) => state,
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(format!(
                "the signal was sent, but after {} ms the process is still in state {state}",
                timeout.as_millis()
            ));
        }
        thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(10));
    }
}

/// A `sh` process that SIGKILLs `pid` as soon as its standard input closes.
///
/// Standard input is a pipe whose only writer is this process, so the pipe closes when this
/// process exits for any reason, including SIGKILL from a test runner's timeout, where no `Drop`
/// runs. Dropping the guard kills the watchdog first, so it can never signal a recycled pid.
#[derive(Debug)]
pub(crate) struct Watchdog {
    child: Child,
}

impl Watchdog {
    pub(crate) fn spawn(pid: u32) -> Result<Self, Error> {
        let child = Command::new("sh")
            .args([
                "-c",
                "read _ignored; kill -s CONT \"$1\" 2>/dev/null; kill -s KILL \"$1\" 2>/dev/null",
                "sh",
                &pid.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| Error::Spawn {
                binary: "sh".to_owned(),
                source,
            })?;
        Ok(Watchdog { child })
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        kill_and_reap(&mut self.child);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_running_and_a_missing_one_has_no_state() {
        assert!(matches!(
            process_state(std::process::id()),
            Some('R' | 'S' | 'D')
        ));
        assert_eq!(process_state(u32::MAX), None);
    }

    #[test]
    fn waiting_for_a_state_never_reached_fails_with_the_state_seen() {
        let error = wait_for_state(std::process::id(), |s| s == 'T', Duration::from_millis(20))
            .unwrap_err();
        assert!(error.contains("still in state"), "{error}");
        assert!(wait_for_state(std::process::id(), |s| s != 'T', Duration::ZERO).is_ok());
    }

    #[test]
    fn a_missing_binary_error_says_how_to_install_it() {
        let err = find_binary("redis-server-that-is-not-installed").unwrap_err();

        assert!(matches!(err, Error::MissingBinary { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains("`redis-server-that-is-not-installed` was not found on PATH"));
        assert!(message.contains("apt-get update && apt-get install -y redis-server"));
        assert!(message.contains("cargo xtask test"));
    }

    #[test]
    fn installed_binaries_are_found() {
        assert!(find_binary("redis-server").unwrap().is_file());
        assert!(find_binary("redis-cli").unwrap().is_file());
    }

    #[test]
    fn a_command_outliving_its_deadline_is_killed() {
        let err =
            run_with_timeout(OsStr::new("sleep"), ["5"], Duration::from_millis(50)).unwrap_err();

        assert!(matches!(err, Error::CommandTimeout { .. }), "{err:?}");
    }

    #[test]
    fn command_output_is_captured() {
        let output = run_with_timeout(
            OsStr::new("sh"),
            ["-c", "echo out; echo err >&2; exit 3"],
            Duration::from_secs(5),
        )
        .unwrap();

        assert_eq!(output.stdout, "out\n");
        assert_eq!(output.stderr, "err\n");
        assert_eq!(output.status.code(), Some(3));
    }
}
