//! Workspace automation, run through the `cargo xtask` alias.
//!
//! `cargo xtask test` is the one command that proves the workspace: it installs what a fresh machine lacks
//! (`redis-server`, `promtool`, `chromium` and `chromedriver`), then runs formatting, lints, docs, the whole test
//! suite and a build of the criterion benches. `cargo xtask bench` measures served throughput of every layer and
//! its peers against bare axum and rewrites docs/performance.md's section with it. `cargo xtask loadtest` builds
//! the chat service, its moderation dependency and the load test in release and runs the load test.

use std::env;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use clap::{CommandFactory, Parser, Subcommand};

/// Workspace automation: `cargo xtask test | bench | loadtest | fuzz | screenshots`.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    task: Option<Task>,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install missing test programs (redis-server, promtool, chromium, chromedriver), then run cargo fmt --check,
    /// clippy -D warnings, cargo doc (warnings denied), doc tests, a build of the criterion benches, fmt and clippy
    /// of benches/peers, and the whole test suite (nextest when installed).
    Test,
    /// Served throughput of every layer, the full stack and the peer crates against bare axum, each server on
    /// a core of its own and wrk on the other (benches/peers `throughput`, release build; about 10 minutes on 2
    /// cores): writes benches/peers/results/throughput.{json,md,svg}, docs/img/throughput.svg and the served
    /// section of docs/performance.md. Installs wrk when missing.
    Bench {
        /// Run the criterion benches instead (the per-call view): the workspace's, then benches/peers'.
        #[arg(long)]
        criterion: bool,
        /// Leave the other projects' middleware out (of the served comparison, or with --criterion of the
        /// benches/peers criterion benches).
        #[arg(long)]
        no_peers: bool,
        /// Write only benches/peers/results; leave docs/ as it is (for a short trial run).
        #[arg(long)]
        no_doc: bool,
        /// Arguments for the `throughput` harness after the defaults (later ones win), for example
        /// `-- --rounds 1 --seconds 2` or `-- --variants cache-hit,stack-hit`; `-- --help` lists them.
        #[arg(last = true)]
        harness_args: Vec<OsString>,
    },
    /// Build the chat service, the moderation service and the load test in release, then run the load test
    /// (bare against stacked); the arguments go to `chat-loadtest` (see `cargo xtask loadtest --help`).
    #[command(disable_help_flag = true)]
    Loadtest {
        /// Arguments for `chat-loadtest`, for example `--max-rate`, `--duration 60s` or `--chaos`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Run every cargo-fuzz target in fuzz/ for a bounded time each, one after the other (needs the nightly
    /// toolchain and cargo-fuzz: `rustup toolchain install nightly`, `cargo install cargo-fuzz`).
    Fuzz {
        /// Seconds each target runs.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// Build the targets in the dev profile (quicker to build, slower to run).
        #[arg(long)]
        dev: bool,
        /// Only these targets [default: every target in fuzz/Cargo.toml].
        targets: Vec<String>,
    },
    /// Take the README's screenshots from the current code with headless Chromium: the chat page after a post
    /// and a reload answered by the cache (docs/img/chat-page.png), and the report of a short load test built
    /// in release like `cargo xtask loadtest` (docs/img/loadtest-report.png).
    Screenshots {
        /// Only the chat page: no release build, no load test.
        #[arg(long)]
        page_only: bool,
    },
}

/// Programs the test suite runs for real, with the Debian package that provides each: Redis servers and their
/// client, Prometheus' `promtool`, which checks the `/metrics` exposition and the alerting rules, and Chromium
/// with its WebDriver, for the chat page's browser tests.
const TEST_PROGRAMS: [(&str, &str); 5] = [
    ("redis-server", "redis-server"),
    ("redis-cli", "redis-tools"),
    ("promtool", "prometheus"),
    ("chromium", "chromium"),
    ("chromedriver", "chromium-driver"),
];

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Some(Task::Test) => test(),
        Some(Task::Bench {
            criterion,
            no_peers,
            no_doc,
            harness_args,
        }) => {
            if criterion {
                bench_criterion(!no_peers)
            } else {
                bench_served(!no_peers, !no_doc, &harness_args)
            }
        }
        Some(Task::Loadtest { args }) => loadtest(&args),
        Some(Task::Screenshots { page_only }) => screenshots(page_only),
        Some(Task::Fuzz {
            seconds,
            dev,
            targets,
        }) => fuzz(seconds, dev, &targets),
        None => {
            // No task is not an error: print what there is, as `help` does.
            let _ = Cli::command().print_help();
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

fn test() -> Result<(), String> {
    ensure_test_programs()?;
    let root = workspace_root()?;

    step("cargo fmt --check");
    cargo(&root, &["fmt", "--all", "--", "--check"], &[])?;

    step("cargo clippy");
    cargo(
        &root,
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--all-features",
            "--",
            "-D",
            "warnings",
        ],
        &[],
    )?;

    step("cargo doc");
    cargo(
        &root,
        &["doc", "--workspace", "--no-deps", "--all-features"],
        &[("RUSTDOCFLAGS", "-D warnings")],
    )?;

    step("doc tests");
    cargo(
        &root,
        &["test", "--workspace", "--all-features", "--doc"],
        &[],
    )?;

    // The criterion benches are only compiled here; `cargo xtask bench --criterion` runs them. The dev profile
    // reuses the dependencies the tests build: `cargo bench --no-run` would build every one of them a second
    // time with optimizations, for the same check that the benches compile and link.
    step("cargo build --benches");
    cargo(
        &root,
        &["build", "--workspace", "--all-features", "--benches"],
        &[],
    )?;

    // benches/peers is a workspace of its own so that CI never builds the peer crates. Type-checking it costs
    // about a minute and a half from nothing (99 s on the shared 2-core machine) and catches a change to a
    // layer's API that would break the served comparison before `cargo xtask bench` does; a release build
    // (`cargo bench --no-run`) would cost several times that.
    let peers = peers_dir(&root)?;
    step("benches/peers: cargo fmt --check, cargo clippy");
    cargo(&peers, &["fmt", "--", "--check"], &[])?;
    cargo(
        &peers,
        &["clippy", "--all-targets", "--", "-D", "warnings"],
        &[],
    )?;

    // The test runner goes last so that its summary is the closing line of the run.
    if has_nextest() {
        step("cargo nextest run");
        cargo(
            &root,
            &[
                "nextest",
                "run",
                "--workspace",
                "--all-features",
                "--no-fail-fast",
            ],
            &[],
        )
    } else {
        step("cargo test (cargo-nextest not installed)");
        cargo(
            &root,
            &[
                "test",
                "--workspace",
                "--all-features",
                "--lib",
                "--bins",
                "--tests",
                "--no-fail-fast",
            ],
            &[],
        )
    }
}

/// Runs the fuzz targets with `cargo +nightly fuzz run TARGET -- -max_total_time=SECONDS`; a crash stops the
/// run with the failing target named (its input is under fuzz/artifacts/TARGET).
fn fuzz(seconds: u64, dev: bool, targets: &[String]) -> Result<(), String> {
    let dir = workspace_root()?.join("fuzz");
    let targets = if targets.is_empty() {
        fuzz_targets(&dir)?
    } else {
        targets.to_vec()
    };
    let max_time = format!("-max_total_time={seconds}");
    for target in &targets {
        step(&format!("cargo fuzz run {target} ({seconds} s)"));
        let mut command = Command::new("rustup");
        command
            .current_dir(&dir)
            .args(["run", "nightly", "cargo", "fuzz", "run"]);
        if dev {
            command.arg("--dev");
        }
        run(command.arg(target).arg("--").arg(&max_time))
            .map_err(|e| format!("fuzz target {target}: {e}"))?;
    }
    eprintln!(
        "\n{} fuzz targets ran {seconds} s each without a crash",
        targets.len()
    );
    Ok(())
}

/// The `[[bin]]` names of fuzz/Cargo.toml, in order.
fn fuzz_targets(dir: &Path) -> Result<Vec<String>, String> {
    let manifest = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest)
        .map_err(|e| format!("reading {}: {e}", manifest.display()))?;
    let mut in_bin = false;
    let mut names = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
        } else if in_bin && let Some(value) = line.strip_prefix("name") {
            let name = value
                .trim_start()
                .trim_start_matches('=')
                .trim()
                .trim_matches('"');
            names.push(name.to_owned());
        }
    }
    if names.is_empty() {
        return Err(format!("no [[bin]] targets in {}", manifest.display()));
    }
    Ok(names)
}

/// Settings of the default served comparison: 9 rounds of a 2 s window after a 1 s warm-up, each window on
/// a fresh server process, for the 17 variants about 9 minutes of load, start-up and validation, and at most
/// 2.5 minutes of waiting for other processes to leave the CPUs (1 s a window): about 10 minutes on 2 cores
/// when the release build is up to date. On the shared development machine a variant's req/s moves by ±15 %
/// between windows and by up to 40 % between processes, so many short rounds give medians and paired ratios
/// that one disturbed window or one unlucky process cannot move.
const SERVED_DEFAULTS: [&str; 8] = [
    "--rounds",
    "9",
    "--seconds",
    "2",
    "--warmup",
    "1",
    "--quiet-wait",
    "1",
];

/// The load generator of the served comparison and `taskset`, which pins it and the servers to their cores.
const BENCH_PROGRAMS: [(&str, &str); 2] = [("wrk", "wrk"), ("taskset", "util-linux")];

fn peers_dir(root: &Path) -> Result<PathBuf, String> {
    let dir = root.join("benches").join("peers");
    if dir.join("Cargo.toml").is_file() {
        Ok(dir)
    } else {
        Err(format!("no peer benchmarks at {}", dir.display()))
    }
}

/// Builds benches/peers' `throughput` harness in release and runs the served comparison with
/// [`SERVED_DEFAULTS`], then `harness_args`.
fn bench_served(peers: bool, doc: bool, harness_args: &[OsString]) -> Result<(), String> {
    ensure_programs(&BENCH_PROGRAMS, "cargo xtask bench")?;
    let root = workspace_root()?;
    let dir = peers_dir(&root)?;
    step("cargo build --release --bin throughput (benches/peers)");
    cargo(&dir, &["build", "--release", "--bin", "throughput"], &[])?;
    step("throughput (served comparison)");
    // The report records the command a reader would run again, not the harness's own arguments.
    let mut shown = String::from("cargo xtask bench");
    if !peers {
        shown.push_str(" --no-peers");
    }
    if !doc {
        shown.push_str(" --no-doc");
    }
    if !harness_args.is_empty() {
        shown.push_str(" --");
        for arg in harness_args {
            shown.push(' ');
            shown.push_str(&arg.to_string_lossy());
        }
    }
    let mut command = Command::new(dir.join("target").join("release").join("throughput"));
    command
        .current_dir(&dir)
        .args(SERVED_DEFAULTS)
        .arg("--command")
        .arg(&shown);
    if !peers {
        command.arg("--no-peers");
    }
    if doc {
        command
            .arg("--doc")
            .arg(root.join("docs").join("performance.md"));
    }
    run(command.args(harness_args))
}

/// The criterion benches, the per-call view: the workspace's, then (with `peers`) benches/peers'.
fn bench_criterion(peers: bool) -> Result<(), String> {
    let root = workspace_root()?;
    step("cargo bench --workspace");
    cargo(&root, &["bench", "--workspace", "--all-features"], &[])?;
    if peers {
        step("cargo bench (benches/peers)");
        cargo(&peers_dir(&root)?, &["bench"], &[])?;
    }
    Ok(())
}

/// Builds the three binaries in release and runs the load test with `args`, from the workspace root so its
/// reports land in `target/loadtest/`.
fn loadtest(args: &[OsString]) -> Result<(), String> {
    let root = workspace_root()?;
    step("cargo build --release (chat-service, moderation, chat-loadtest)");
    cargo(
        &root,
        &[
            "build",
            "--release",
            "-p",
            "chat-service",
            "-p",
            "moderation",
            "-p",
            "chat-loadtest",
        ],
        &[],
    )?;
    let release = root.join("target").join("release");
    step("chat-loadtest");
    run(Command::new(release.join("chat-loadtest"))
        .current_dir(&root)
        .arg("--bin-dir")
        .arg(&release)
        .args(args))
}

/// Runs chat-service's ignored `readme_screenshot` browser test, which serves the current code, drives Chromium
/// through a post and a cached reload, and writes the PNG into `docs/img/`; then, unless `page_only`, a short
/// release load test whose report `chat-loadtest --screenshot` photographs into `docs/img/` too.
fn screenshots(page_only: bool) -> Result<(), String> {
    ensure_test_programs()?;
    let root = workspace_root()?;
    let img = root.join("docs").join("img");
    let out = img
        .to_str()
        .ok_or_else(|| format!("{} is not UTF-8", img.display()))?;
    step("chat page (cargo test -p chat-service --test browser readme_screenshot)");
    cargo(
        &root,
        &[
            "test",
            "-p",
            "chat-service",
            "--test",
            "browser",
            "--",
            "--ignored",
            "--exact",
            "readme_screenshot",
            "--nocapture",
        ],
        &[("SCREENSHOT_DIR", out)],
    )?;
    if page_only {
        return Ok(());
    }
    let report = img.join("loadtest-report.png");
    let args: Vec<OsString> = [
        "--duration",
        "10s",
        "--warmup",
        "2s",
        "--no-max-rate",
        "--churn",
        "5s",
        "--quiet",
        "--out-dir",
        "target/loadtest-screenshot",
        "--screenshot",
    ]
    .into_iter()
    .map(OsString::from)
    .chain([report.into_os_string()])
    .collect();
    loadtest(&args)
}

fn ensure_test_programs() -> Result<(), String> {
    ensure_programs(&TEST_PROGRAMS, "cargo xtask test")
}

/// Makes sure every program of `programs` (program, Debian package) is on PATH, installing the packages when
/// running as root; `task` is the command to run again after a manual install.
fn ensure_programs(programs: &[(&str, &str)], task: &str) -> Result<(), String> {
    let missing: Vec<(&str, &str)> = programs
        .iter()
        .copied()
        .filter(|(program, _)| find_on_path(program).is_none())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = missing.iter().map(|(program, _)| *program).collect();
    let mut packages: Vec<&str> = missing.iter().map(|(_, package)| *package).collect();
    packages.dedup();
    let how = format!(
        "install with `apt-get update && apt-get install -y {}` (Debian/Ubuntu) or your system's package \
         manager, then run `{task}` again",
        packages.join(" ")
    );
    if !is_root() || find_on_path("apt-get").is_none() {
        return Err(format!(
            "{} not found on PATH; `{task}` runs them for real: {how}",
            names.join(", ")
        ));
    }
    step(&format!("installing {} (apt-get)", packages.join(" ")));
    run(Command::new("apt-get").arg("update").arg("-qq"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&packages)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    // Debian's packages may start system services (Redis on 6379, Prometheus on 9090); the tests never use them:
    // they start their own servers on free ports.
    match programs
        .iter()
        .find(|(program, _)| find_on_path(program).is_none())
    {
        Some((program, _)) => Err(format!(
            "`{program}` still missing after apt-get install; {how}"
        )),
        None => Ok(()),
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|out| out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}

fn has_nextest() -> bool {
    Command::new(cargo_bin())
        .args(["nextest", "--version"])
        .output()
        .map(|out| out.status.success())
        .unwrap_or(false)
}

fn find_on_path(binary: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(binary))
        .find(|candidate| candidate.is_file())
}

fn workspace_root() -> Result<PathBuf, String> {
    let manifest_dir = env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .ok_or("CARGO_MANIFEST_DIR is not set: run through `cargo xtask`")?;
    manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| format!("{} has no parent", manifest_dir.display()))
}

fn cargo_bin() -> std::ffi::OsString {
    env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

fn cargo(dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Result<(), String> {
    let mut command = Command::new(cargo_bin());
    command.current_dir(dir).args(args);
    for (key, value) in envs {
        command.env(key, value);
    }
    run(&mut command)
}

fn run(command: &mut Command) -> Result<(), String> {
    let program = command.get_program().to_string_lossy().into_owned();
    let shown: Vec<String> = command
        .get_args()
        .map(OsStr::to_string_lossy)
        .map(|arg| arg.into_owned())
        .collect();
    let status = command
        .status()
        .map_err(|err| format!("could not start `{program}`: {err}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{program} {}` failed with {status}",
            shown.join(" ")
        ))
    }
}

fn step(name: &str) {
    eprintln!("\n==> {name}");
}
