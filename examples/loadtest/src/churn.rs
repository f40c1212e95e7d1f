//! The churn phase: distinct history URLs as fast as the instances answer, long enough for resident memory to
//! level off, with each instance's RSS sampled from `/proc/PID/status`; the "under 200 MB" verdict comes from it.
//!
//! Every request is a history page nobody asked for before (`?limit=50&before=B&x=N`), so each one misses,
//! is stored in the in-process cache tier and, once the tier is full, evicts an older entry: the load that
//! shows an allocator's fragmentation and the memory budget's bound (docs/performance.md).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::client::Http;
use crate::load::Target;
use crate::procs::Memory;
use crate::stack::Seeded;

/// How often RSS is sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(250);
/// Growth of the last third's peak over the middle third's that still counts as level: sampling noise and the
/// allocator settling, far below what fragmentation or a leak adds over the same time.
pub const GROWTH_TOLERANCE: f64 = 0.08;
/// Growth that counts as level whatever the ratio, MB.
pub const GROWTH_TOLERANCE_MB: f64 = 6.0;

/// What the churn phase sends.
#[derive(Clone, Debug, Serialize)]
pub struct ChurnPlan {
    /// How long it runs.
    pub duration: Duration,
    /// Concurrent requests per instance, each sent as soon as the previous one is answered (closed loop, the
    /// highest rate the instance sustains).
    pub connections: usize,
    /// Most requests in all, whatever the duration.
    pub max_requests: u64,
    /// Messages per page.
    pub limit: u32,
    /// Makes the URLs of this run distinct from any earlier run's.
    pub run_id: String,
}

/// What one instance did under churn.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ChurnInstance {
    /// The instance.
    pub name: String,
    /// Answers with a success status.
    pub answered: u64,
    /// Failed requests and error statuses.
    pub errors: u64,
    /// Answers per second.
    pub rate: f64,
    /// `(seconds since the start of the phase, RSS MB)` every [`SAMPLE_EVERY`].
    pub rss_mb: Vec<(f64, f64)>,
    /// Peak resident memory (`VmHWM` at the end of the phase: the most the process ever held), MB.
    pub peak_rss_mb: f64,
    /// Resident memory at the end of the phase, MB.
    pub final_rss_mb: f64,
    /// Whether RSS was still growing after its plateau ([`still_growing`]).
    pub still_growing: bool,
}

/// Whether `samples` (MB, in time order) still grow after their plateau: the peak of the last third against the
/// peak of the middle third, with [`GROWTH_TOLERANCE`] and [`GROWTH_TOLERANCE_MB`]. Fewer than 6 samples never
/// count as growing.
///
/// ```
/// use chat_loadtest::churn::still_growing;
///
/// assert!(!still_growing(&[50.0, 90.0, 100.0, 101.0, 99.0, 103.0, 100.0, 102.0, 104.0]));
/// assert!(still_growing(&[50.0, 80.0, 100.0, 110.0, 120.0, 130.0, 140.0, 150.0, 160.0]));
/// ```
pub fn still_growing(samples: &[f64]) -> bool {
    if samples.len() < 6 {
        return false;
    }
    let third = samples.len() / 3;
    let peak = |part: &[f64]| part.iter().copied().fold(0.0, f64::max);
    let middle = peak(&samples[third..2 * third]);
    let last = peak(&samples[2 * third..]);
    last > middle + GROWTH_TOLERANCE_MB && last > middle * (1.0 + GROWTH_TOLERANCE)
}

/// The path and query of distinct URL number `n`: a `limit`-message page of one of the seeded rooms, before one
/// of its seeded messages.
pub fn churn_path(seeded: Seeded, limit: u32, run_id: &str, n: u64) -> String {
    let rooms = u64::from(seeded.rooms.max(1));
    let room = u32::try_from(n % rooms).unwrap_or(0) + 1;
    let per_room = seeded.messages_per_room;
    let before = if per_room > limit {
        let span = u64::from(per_room - limit);
        let k = u32::try_from((n / rooms) % span).unwrap_or(0) + limit + 1;
        seeded.message_id(room, k)
    } else {
        seeded.message_id(room, per_room) + 1
    };
    format!("/rooms/room-{room}/messages?limit={limit}&before={before}&x={run_id}-{n}")
}

/// Runs the churn phase against every target at once and reports each; targets without a pid get no memory
/// figures.
pub async fn run(
    http: &Http,
    targets: &[Target],
    seeded: Seeded,
    plan: &ChurnPlan,
) -> Vec<ChurnInstance> {
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    let mut counters = Vec::new();
    for target in targets {
        let answered = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        counters.push((answered.clone(), errors.clone()));
        for _ in 0..plan.connections.max(1) {
            let (http, stop, sent, answered, errors) = (
                http.clone(),
                stop.clone(),
                sent.clone(),
                answered.clone(),
                errors.clone(),
            );
            let base = target.base.clone();
            let (limit, run_id, max_requests) =
                (plan.limit, plan.run_id.clone(), plan.max_requests);
            workers.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let n = sent.fetch_add(1, Ordering::Relaxed);
                    if n >= max_requests {
                        break;
                    }
                    let url = format!("{base}{}", churn_path(seeded, limit, &run_id, n));
                    match http.get(&url).await {
                        Ok(reply) if reply.status.is_success() => {
                            answered.fetch_add(1, Ordering::Relaxed)
                        }
                        _ => errors.fetch_add(1, Ordering::Relaxed),
                    };
                }
            }));
        }
    }
    let mut samples: Vec<Vec<(f64, f64)>> = vec![Vec::new(); targets.len()];
    let deadline = started + plan.duration;
    loop {
        let now = Instant::now();
        if now >= deadline || workers.iter().all(tokio::task::JoinHandle::is_finished) {
            break;
        }
        tokio::time::sleep(SAMPLE_EVERY.min(deadline - now)).await;
        let at = started.elapsed().as_secs_f64();
        for (target, series) in targets.iter().zip(samples.iter_mut()) {
            if let Some(memory) = target.pid.and_then(Memory::of) {
                series.push((at, kib_to_mb(memory.rss_kib)));
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        let _ = worker.await;
    }
    let elapsed = started.elapsed().as_secs_f64().max(1e-9);
    targets
        .iter()
        .zip(samples)
        .zip(counters)
        .map(|((target, rss_mb), (answered, errors))| {
            let memory = target.pid.and_then(Memory::of).unwrap_or_default();
            let values: Vec<f64> = rss_mb.iter().map(|&(_, mb)| mb).collect();
            let answered = answered.load(Ordering::Relaxed);
            ChurnInstance {
                name: target.name.clone(),
                answered,
                errors: errors.load(Ordering::Relaxed),
                rate: answered as f64 / elapsed,
                peak_rss_mb: kib_to_mb(memory.peak_kib)
                    .max(values.iter().copied().fold(0.0, f64::max)),
                final_rss_mb: kib_to_mb(memory.rss_kib),
                still_growing: still_growing(&values),
                rss_mb,
            }
        })
        .collect()
}

fn kib_to_mb(kib: u64) -> f64 {
    kib as f64 * 1024.0 / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_after_the_plateau_is_caught_and_noise_is_not() {
        assert!(!still_growing(&[
            20.0, 25.0, 30.0, 33.0, 30.0, 31.0, 36.0, 34.0, 35.0
        ]));
        assert!(!still_growing(&[10.0, 20.0, 300.0]));
        assert!(still_growing(&[
            100.0, 120.0, 140.0, 142.0, 150.0, 160.0, 170.0, 185.0, 200.0
        ]));
        // A drop is never growth.
        assert!(!still_growing(&[
            100.0, 120.0, 140.0, 140.0, 141.0, 139.0, 90.0, 92.0, 95.0
        ]));
    }

    #[test]
    fn urls_are_distinct_and_within_the_seed() {
        let seeded = Seeded {
            rooms: 5,
            messages_per_room: 2000,
        };
        let paths: std::collections::HashSet<String> = (0..10_000)
            .map(|n| churn_path(seeded, 50, "r1", n))
            .collect();
        assert_eq!(paths.len(), 10_000);
        let path = churn_path(seeded, 50, "r1", 7);
        assert!(
            path.starts_with("/rooms/room-3/messages?limit=50&before="),
            "{path}"
        );
        for n in 0..10_000 {
            let path = churn_path(seeded, 50, "r", n);
            let before: i64 = path
                .split("before=")
                .nth(1)
                .and_then(|rest| rest.split('&').next())
                .and_then(|b| b.parse().ok())
                .unwrap();
            // At least a full page of the room's messages lies below `before`.
            assert!(before > 50 * 5 && before <= 2000 * 5, "{path}");
        }
        // A seed smaller than a page asks past the room's last message.
        let small = Seeded {
            rooms: 2,
            messages_per_room: 10,
        };
        assert!(churn_path(small, 50, "r", 0).contains("before=20&"));
    }
}
