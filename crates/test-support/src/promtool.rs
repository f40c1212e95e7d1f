//! Prometheus' own checker for tests: `promtool check metrics` on a text exposition, so tests
//! judge `/metrics` output by the real parser and linter rather than by a reading of the format.

use std::io::Write;
use std::process::{Command, Stdio};

/// Asserts that `promtool check metrics` accepts `exposition` (Prometheus text format).
///
/// `promtool` comes with Debian's `prometheus` package; `cargo xtask test` installs it. Panics,
/// as a failed assertion does, when promtool is missing or rejects the exposition; the message
/// carries promtool's findings and the exposition.
///
/// ```no_run
/// test_support::assert_promtool_accepts("# TYPE up gauge\nup 1\n");
/// ```
pub fn assert_promtool_accepts(exposition: &str) {
    let mut child = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => panic!(
            "could not run promtool ({e}): `apt-get install prometheus`, or run `cargo xtask test`, \
             which installs it"
        ),
    };
    if let Some(mut stdin) = child.stdin.take()
        && let Err(e) = stdin.write_all(exposition.as_bytes())
    {
        panic!("writing the exposition to promtool failed: {e}");
    }
    let output = match child.wait_with_output() {
        Ok(output) => output,
        Err(e) => panic!("promtool did not finish: {e}"),
    };
    assert!(
        output.status.success(),
        "promtool check metrics rejected the exposition:\n{}{}\n--- exposition ---\n{exposition}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
}
