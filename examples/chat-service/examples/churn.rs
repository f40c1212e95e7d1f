//! Cache churn against built `chat-service` binaries, interleaved, with resident memory per round:
//! how docs/performance.md compares allocators and checks the memory budget.
//!
//! Each variant is one binary (and optional environment), started seeded (`--seed 5,2000`) on a
//! free loopback port. Every round drives each variant in turn for `--round` with `--connections`
//! keep-alive connections cycling through `--urls` distinct history pages
//! (`/rooms/room-R/messages?limit=50&before=B&x=N`, about 5 KB each), so with the default 100,000
//! URLs nearly every request misses, stores an entry and evicts an older one. A small `--urls`
//! (say 64) measures the hit path instead. After each round the tool reads `VmRSS` and `VmHWM`
//! from `/proc/PID/status`. The order of the variants rotates every round, so a busy machine
//! slows every variant alike; compare variants within one run.
//!
//! ```text
//! cargo build --release -p chat-service --example churn
//! target/release/examples/churn \
//!     --variant glibc=/tmp/alloc-bins/chat-glibc \
//!     --variant 'glibc-arena1=MALLOC_ARENA_MAX=1 /tmp/alloc-bins/chat-glibc' \
//!     --variant jemalloc=/tmp/alloc-bins/chat-jemalloc --rounds 9 --round 8s
//! ```
//!
//! Loopback only, bounded in time (`--rounds` × `--round` per variant) and stops by itself.
// A command-line tool: its report goes to stdout; a failed setup ends it with a message.
#![allow(clippy::print_stdout, clippy::expect_used)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::io::AsyncBufReadExt;

/// Interleaved cache churn against chat-service binaries, with RSS per round.
#[derive(Debug, Parser)]
#[command(name = "churn")]
struct Args {
    /// `NAME=[ENV=VALUE ...] PATH`: a binary to measure, with optional environment. Repeat it.
    #[arg(long = "variant", value_name = "SPEC", required = true, value_parser = parse_variant)]
    variants: Vec<Variant>,
    /// Rounds; each drives every variant once.
    #[arg(long, default_value_t = 9)]
    rounds: u32,
    /// How long one variant is driven per round.
    #[arg(long, default_value = "8s", value_parser = parse_secs)]
    round: Duration,
    /// Distinct URLs cycled through (100000 for churn, a few dozen for the hit path).
    #[arg(long, default_value_t = 100_000)]
    urls: u64,
    /// Messages per page (`limit`): 50 makes pages of about 5 KB, 10 about 1 KB.
    #[arg(long, default_value_t = 50)]
    limit: u32,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// More arguments for every service, e.g. `--service-arg=--memory-budget=160MB`.
    #[arg(long = "service-arg", value_name = "ARG", allow_hyphen_values = true)]
    service_args: Vec<String>,
}

#[derive(Clone, Debug)]
struct Variant {
    name: String,
    env: Vec<(String, String)>,
    path: PathBuf,
}

fn parse_variant(raw: &str) -> Result<Variant, String> {
    let (name, rest) = raw
        .split_once('=')
        .ok_or("expected NAME=[ENV=VALUE ...] PATH")?;
    let mut words: Vec<&str> = rest.split_whitespace().collect();
    let path = words.pop().ok_or("no binary path")?;
    let env = words
        .into_iter()
        .map(|word| {
            word.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| format!("{word:?} is not ENV=VALUE"))
        })
        .collect::<Result<_, _>>()?;
    Ok(Variant {
        name: name.to_owned(),
        env,
        path: PathBuf::from(path),
    })
}

fn parse_secs(raw: &str) -> Result<Duration, String> {
    let secs = raw.strip_suffix('s').unwrap_or(raw);
    match secs.parse::<u64>() {
        Ok(0) | Err(_) => Err(format!("expected whole seconds like 8s, got {raw:?}")),
        Ok(secs) => Ok(Duration::from_secs(secs)),
    }
}

/// A started service.
struct Instance {
    variant: Variant,
    child: tokio::process::Child,
    pid: u32,
    base: String,
}

async fn start(variant: &Variant, extra: &[String]) -> Instance {
    let mut command = tokio::process::Command::new(&variant.path);
    command
        .args(["--listen", "127.0.0.1:0", "--database-url", ":memory:"])
        .args(["--seed", "5,2000"])
        .args(extra)
        .env_remove("REDIS_URL")
        .env_remove("CACHE_DISK_PATH")
        .env_remove("CHAT_BARE")
        .env_remove("MEMORY_BUDGET")
        .envs(variant.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", variant.path.display()));
    let pid = child.id().expect("a running child has a pid");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(120), lines.next_line())
        .await
        .expect("the service prints its address within 120 s")
        .expect("stdout readable")
        .expect("a listening line");
    let addr = line
        .strip_prefix("chat-service listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    Instance {
        variant: variant.clone(),
        child,
        pid,
        base: format!("http://{addr}"),
    }
}

/// A number field of `/proc/PID/status`, with `kB` values in bytes.
fn status_field(pid: u32, name: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let Some(value) = status.lines().find_map(|line| line.strip_prefix(name)) else {
        return 0;
    };
    let value = value.trim();
    match value.strip_suffix("kB") {
        Some(kib) => kib.trim().parse::<u64>().map_or(0, |kib| kib * 1024),
        None => value.parse().unwrap_or(0),
    }
}

/// `(VmRSS, VmHWM)` of `pid` in bytes.
fn memory(pid: u32) -> (u64, u64) {
    (status_field(pid, "VmRSS:"), status_field(pid, "VmHWM:"))
}

/// One gauge of the service's `/metrics`, or 0 (bare services have none).
async fn gauge(client: &Client<HttpConnector, Empty<Bytes>>, base: &str, series: &str) -> f64 {
    let Ok(uri) = format!("{base}/metrics").parse::<http::Uri>() else {
        return 0.0;
    };
    let Ok(response) = client.get(uri).await else {
        return 0.0;
    };
    let Ok(body) = response.into_body().collect().await else {
        return 0.0;
    };
    String::from_utf8_lossy(&body.to_bytes())
        .lines()
        .find(|line| line.starts_with(series))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0.0)
}

/// The path of URL number `n`: a `limit`-message history page, distinct per `n`.
fn url(base: &str, limit: u32, n: u64) -> String {
    let room = n % 5 + 1;
    let before = 51 + (n / 5) % 1950;
    format!("{base}/rooms/room-{room}/messages?limit={limit}&before={before}&x={n}")
}

struct Round {
    requests: u64,
    errors: u64,
    elapsed: Duration,
    rss: u64,
    peak_sampled: u64,
    /// `(charged bytes, entries)` of the in-process cache tier at the end of the round.
    l1: (f64, f64),
}

async fn drive(instance: &Instance, args: &Args, next: &Arc<AtomicU64>) -> Round {
    let client: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(args.connections)
        .build_http();
    let stop = Arc::new(AtomicBool::new(false));
    let requests = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..args.connections)
        .map(|_| {
            let (client, stop, requests, errors, next) = (
                client.clone(),
                stop.clone(),
                requests.clone(),
                errors.clone(),
                next.clone(),
            );
            let base = instance.base.clone();
            let (urls, limit) = (args.urls, args.limit);
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let n = next.fetch_add(1, Ordering::Relaxed) % urls;
                    let Ok(uri) = url(&base, limit, n).parse::<http::Uri>() else {
                        errors.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    let ok = match client.get(uri).await {
                        Ok(response) => {
                            let status = response.status();
                            response.into_body().collect().await.is_ok() && status.is_success()
                        }
                        Err(_) => false,
                    };
                    let counter = if ok { &requests } else { &errors };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let mut peak_sampled = 0;
    let deadline = started + args.round;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250).min(deadline - Instant::now())).await;
        peak_sampled = peak_sampled.max(memory(instance.pid).0);
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        let _ = worker.await;
    }
    let elapsed = started.elapsed();
    let rss = memory(instance.pid).0;
    let l1 = (
        gauge(&client, &instance.base, "cache_bytes{tier=\"l1\"}").await,
        gauge(&client, &instance.base, "cache_entries{tier=\"l1\"}").await,
    );
    Round {
        requests: requests.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        elapsed,
        rss,
        peak_sampled,
        l1,
    }
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1_000_000.0
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let mut instances = Vec::new();
    for variant in &args.variants {
        let instance = start(variant, &args.service_args).await;
        let (rss, _) = memory(instance.pid);
        println!(
            "{:<14} pid {} on {}, RSS after seed {:.1} MB",
            variant.name,
            instance.pid,
            instance.base,
            mb(rss)
        );
        instances.push(instance);
    }
    // Every variant walks the same URL sequence from the same place.
    let cursors: Vec<Arc<AtomicU64>> = instances
        .iter()
        .map(|_| Arc::new(AtomicU64::new(0)))
        .collect();
    let mut table: BTreeMap<String, Vec<Round>> = BTreeMap::new();
    for round in 0..args.rounds {
        for offset in 0..instances.len() {
            let index = (offset + round as usize) % instances.len();
            let instance = &instances[index];
            let result = drive(instance, &args, &cursors[index]).await;
            println!(
                "round {:>2} {:<14} {:>8.0} req/s {:>6} errors  RSS {:>6.1} MB (max sampled {:.1}, \
                 anon {:.1}, file {:.1})  threads {:>3}  L1 {:.1} MB in {:.0} entries",
                round + 1,
                instance.variant.name,
                result.requests as f64 / result.elapsed.as_secs_f64(),
                result.errors,
                mb(result.rss),
                mb(result.peak_sampled),
                mb(status_field(instance.pid, "RssAnon:")),
                mb(status_field(instance.pid, "RssFile:")),
                status_field(instance.pid, "Threads:"),
                mb(result.l1.0 as u64),
                result.l1.1
            );
            table
                .entry(instance.variant.name.clone())
                .or_default()
                .push(result);
        }
    }
    let mut summary = String::from(
        "\n| variant | req/s (median round) | errors | RSS round 1 | RSS last round | peak RSS (VmHWM) |\n\
         |---|---|---|---|---|---|\n",
    );
    for instance in &instances {
        let rounds = &table[&instance.variant.name];
        let mut rates: Vec<f64> = rounds
            .iter()
            .map(|r| r.requests as f64 / r.elapsed.as_secs_f64())
            .collect();
        rates.sort_by(f64::total_cmp);
        let median = rates.get(rates.len() / 2).copied().unwrap_or_default();
        let errors: u64 = rounds.iter().map(|r| r.errors).sum();
        let first = rounds.first().map_or(0, |r| r.rss);
        let last = rounds.last().map_or(0, |r| r.rss);
        let (_, hwm) = memory(instance.pid);
        let _ = writeln!(
            summary,
            "| {} | {median:.0} | {errors} | {:.1} MB | {:.1} MB | {:.1} MB |",
            instance.variant.name,
            mb(first),
            mb(last),
            mb(hwm)
        );
    }
    println!("{summary}");
    for mut instance in instances {
        // SIGTERM first: a service stopped that way removes its temporary database.
        let _ = tokio::process::Command::new("kill")
            .args(["-TERM", &instance.pid.to_string()])
            .status()
            .await;
        if tokio::time::timeout(Duration::from_secs(10), instance.child.wait())
            .await
            .is_err()
        {
            let _ = instance.child.kill().await;
        }
    }
}
