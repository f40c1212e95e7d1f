//! Resident memory of the stacked `chat-service` binary under cache churn: distinct history URLs
//! fill the in-process tier to its budget and keep evicting, and RSS must level off, not climb.
//! Also: a bad `--memory-budget` is refused at start.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::io::AsyncBufReadExt;

/// Longest the churn may take to fill the cache tier (about a second on an idle machine).
const FILL_LIMIT: Duration = Duration::from_secs(60);
/// How long RSS is sampled once the tier is full; the verdict compares the last third of the
/// samples with the middle third.
const CHURN: Duration = Duration::from_secs(9);
const CONNECTIONS: usize = 16;
/// Growth of the last third's peak over the middle third's that still counts as flat: sampling
/// noise, the allocator's caches settling and a busy machine, but far below what a leak or
/// fragmentation adds over the same time.
const TOLERANCE_BYTES: u64 = 6_000_000;
const TOLERANCE_RATIO: f64 = 1.08;

fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kib * 1024
}

/// Whether RSS kept growing after its plateau: the last third's peak against the middle third's.
fn still_growing(samples: &[u64]) -> bool {
    let third = samples.len() / 3;
    let middle = samples[third..2 * third].iter().max().copied().unwrap_or(0);
    let last = samples[2 * third..].iter().max().copied().unwrap_or(0);
    #[allow(clippy::cast_precision_loss)]
    let ratio = last as f64 / middle.max(1) as f64;
    last > middle + TOLERANCE_BYTES && ratio > TOLERANCE_RATIO
}

/// Entries the cache tier has evicted for size, from `/metrics`.
async fn size_evictions(client: &Client<HttpConnector, Empty<Bytes>>, base: &str) -> f64 {
    let Ok(response) = client.get(format!("{base}/metrics").parse().unwrap()).await else {
        return 0.0;
    };
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&body)
        .lines()
        .find(|line| line.starts_with("cache_evictions_total") && line.contains("\"size\""))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn the_verdict_ignores_noise_and_catches_growth() {
    let flat = [50, 80, 100, 101, 99, 103, 100, 102, 104].map(|mb: u64| mb * 1_000_000);
    assert!(!still_growing(&flat));
    let climbing = [50, 80, 100, 110, 120, 130, 140, 150, 160].map(|mb: u64| mb * 1_000_000);
    assert!(still_growing(&climbing));
    let small_and_noisy = [20, 25, 30, 33, 30, 31, 36, 34, 35].map(|mb: u64| mb * 1_000_000);
    assert!(!still_growing(&small_and_noisy));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rss_levels_off_under_cache_churn() {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_chat-service"))
        .args(["--listen", "127.0.0.1:0", "--database-url", ":memory:"])
        .args(["--seed", "5,2000"])
        // The smallest budget, and entries kept long enough that the in-process tier fills to
        // its byte bound within a second and then evicts on every store.
        .args(["--memory-budget", "64MB", "--l1-ttl-cap", "1h"])
        .env_remove("REDIS_URL")
        .env_remove("CACHE_DISK_PATH")
        .env_remove("CHAT_BARE")
        .env_remove("MEMORY_BUDGET")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("listening line within 60 s")
        .unwrap()
        .unwrap();
    let base = format!(
        "http://{}",
        line.strip_prefix("chat-service listening on ").unwrap()
    );

    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(CONNECTIONS)
        .build_http();
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let (client, stop, next, failed, base) = (
                client.clone(),
                stop.clone(),
                next.clone(),
                failed.clone(),
                base.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    // Every request a URL not seen before: each one misses and is stored.
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let uri = format!(
                        "{base}/rooms/room-{}/messages?limit=50&before={}&x={n}",
                        n % 5 + 1,
                        51 + (n / 5) % 1950
                    );
                    let ok = match client.get(uri.parse().unwrap()).await {
                        Ok(response) => {
                            response.status().is_success()
                                && response.into_body().collect().await.is_ok()
                        }
                        Err(_) => false,
                    };
                    if !ok {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();

    // Measure from the moment the tier is full (it has evicted for size), however slow the
    // machine is, so the samples show the plateau and not the filling.
    let filling = Instant::now();
    let mut filled_after = None;
    while filling.elapsed() < FILL_LIMIT {
        if size_evictions(&client, &base).await > 0.0 {
            filled_after = Some(filling.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut samples = Vec::new();
    let started = Instant::now();
    while filled_after.is_some() && started.elapsed() < CHURN {
        tokio::time::sleep(Duration::from_millis(200)).await;
        samples.push(rss(pid));
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    let requests = next.load(Ordering::Relaxed);
    // SIGTERM, so the service removes its temporary database; killed if it does not stop.
    let _ = tokio::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await;
    if tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .is_err()
    {
        child.kill().await.unwrap();
    }

    let mb: Vec<u64> = samples.iter().map(|bytes| bytes / 1_000_000).collect();
    eprintln!("{requests} requests, RSS MB every 200 ms: {mb:?}");
    let filled_after = filled_after.unwrap_or_else(|| {
        panic!("the churn did not fill the cache tier within {FILL_LIMIT:?} ({requests} requests)")
    });
    eprintln!("tier full after {filled_after:?}");
    assert_eq!(failed.load(Ordering::Relaxed), 0, "failed requests");
    assert!(
        !still_growing(&samples),
        "RSS kept growing after its plateau over {requests} requests: MB every 200 ms {mb:?}"
    );
    // The budget holds, even with a debug build's larger code.
    let peak = samples.iter().max().copied().unwrap_or(0);
    assert!(
        peak < 64_000_000,
        "peak RSS {peak} with a 64 MB budget: {mb:?}"
    );
}

#[tokio::test]
async fn a_bad_budget_is_refused_at_start() {
    for (value, expected) in [
        ("12MB", "below the smallest budget"),
        ("plenty", "expected a size like 160MB"),
    ] {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_chat-service"))
            .args(["--database-url", ":memory:"])
            .env("MEMORY_BUDGET", value)
            .output()
            .await
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{value}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("--memory-budget"), "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
        assert!(output.stdout.is_empty());
    }
}
