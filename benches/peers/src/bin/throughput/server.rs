//! The harness's handle on one variant's server process (the same binary in `serve` mode): starting it
//! pinned, its commands, and its CPU time and memory. Dropping the handle kills the process, so an error
//! anywhere in the harness leaves no server behind.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, ChildStdout, Stdio};

use crate::Result;
use crate::system::{Memory, pinned_command};
use crate::variants::Variant;

pub struct ServerProcess {
    pub variant: Variant,
    pub addr: SocketAddr,
    pub pid: u32,
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl ServerProcess {
    /// Starts `variant`'s server on `cpu` (any when `None`), exporting spans to `sink`, and waits until it
    /// listens.
    pub fn spawn(variant: Variant, cpu: Option<usize>, sink: SocketAddr) -> Result<Self> {
        let exe = std::env::current_exe()
            .map_err(|e| format!("cannot find the harness's own binary: {e}"))?;
        let mut child = pinned_command(&exe, cpu)
            .arg("serve")
            .arg(variant.name())
            .arg("--sink")
            .arg(sink.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("{}: cannot start its server: {e}", variant.name()))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{}: server started without pipes", variant.name()).into());
        };
        let pid = child.id();
        let mut server = Self {
            variant,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            pid,
            child,
            stdin,
            stdout: BufReader::new(stdout),
        };
        let line = server.read_line()?;
        server.addr = line
            .strip_prefix("ready ")
            .and_then(|addr| addr.parse().ok())
            .ok_or_else(|| {
                format!(
                    "{}: server said `{line}` instead of `ready ADDR`",
                    variant.name()
                )
            })?;
        Ok(server)
    }

    fn read_line(&mut self) -> Result<String> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            let status = self
                .child
                .try_wait()
                .ok()
                .flatten()
                .map_or_else(|| "still running".to_owned(), |s| s.to_string());
            return Err(format!(
                "{}: server closed its stdout ({status}); its stderr is above",
                self.variant.name()
            )
            .into());
        }
        Ok(line.trim_end().to_owned())
    }

    /// Sends one command and returns the answer; `error …` answers become errors.
    fn command(&mut self, command: &str) -> Result<String> {
        writeln!(self.stdin, "{command}")?;
        self.stdin.flush()?;
        let reply = self.read_line()?;
        match reply.strip_prefix("error ") {
            Some(why) => Err(format!("{}: {why}", self.variant.name()).into()),
            None => Ok(reply),
        }
    }

    /// Requests that have reached the handler so far.
    pub fn calls(&mut self) -> Result<u64> {
        let reply = self.command("calls")?;
        reply
            .strip_prefix("calls ")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("{}: `calls` answered `{reply}`", self.variant.name()).into())
    }

    /// The variant's probes: breaker closed, dedup's in-flight map empty, metrics recorded, logs written.
    pub fn check(&mut self) -> Result<()> {
        self.command("check").map(drop)
    }

    /// [`check`](Self::check) right after a window: wrk stops with requests in flight, and the server drops
    /// them (and their in-flight entries) only once it reads the closed connections, so a failed check is
    /// asked again for up to `patience` before it counts.
    pub fn check_settled(&mut self, patience: std::time::Duration) -> Result<()> {
        let deadline = std::time::Instant::now() + patience;
        loop {
            match self.check() {
                Ok(()) => return Ok(()),
                Err(e) if std::time::Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
            }
        }
    }

    /// Exports the spans ended so far and waits for the sink's answer.
    pub fn flush(&mut self) -> Result<()> {
        self.command("flush").map(drop)
    }

    pub fn memory(&self) -> Result<Memory> {
        crate::system::memory(self.pid)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // Closing stdin alone would end it too, but not one stuck in a request.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
