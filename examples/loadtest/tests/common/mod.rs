//! Helpers of the tests that run the real binaries.

#![allow(clippy::expect_used)] // test helpers outside #[test] fns

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The debug `chat-service` and `moderation` next to this test executable (`target/debug/deps/..`), built with
/// `$CARGO build` when they are missing (a run of this package's tests alone does not build other packages).
pub(crate) fn bin_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable path");
        let deps = exe.parent().expect("deps directory");
        let dir = deps.parent().expect("profile directory").to_path_buf();
        let missing = ["chat-service", "moderation"]
            .iter()
            .any(|name| !dir.join(name).is_file());
        if missing {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "-p", "chat-service", "-p", "moderation"])
                .status()
                .expect("running cargo build");
            assert!(
                status.success(),
                "cargo build -p chat-service -p moderation failed"
            );
        }
        dir
    })
    .clone()
}
