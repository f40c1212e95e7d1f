//! The open-loop generator and the chat mix it sends: page refreshes as bursts of identical GETs, pagination,
//! single messages, the room list and posts with `Idempotency-Key` (some retried), plus a dependency outage.
//!
//! Requests leave at the times a [`Pacer`] gives, whatever the server does; each latency is measured from the
//! request's scheduled time, so a stalled server shows as the latency it caused (no coordinated omission). A
//! request that would exceed the in-flight cap is counted as an error, never dropped silently.

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::chaos::{
    self, ChaosSchedule, ChaosTally, Event, FaultControls, FaultRecord, PeriodStats, Refusal,
};
use crate::client::{Http, Reply, RequestError};
use crate::observe::Stats;
use crate::procs::Memory;
use crate::schedule::Pacer;
use crate::stack::Seeded;
use crate::stats::{ClassLatencies, Endpoint, Errors, Timeline};
use crate::zipf::Zipf;

/// A post acknowledged at time t is on the first page of its room, on every instance, for any GET that starts
/// after t + this bound (the chat service's documented freshness bound).
pub const FRESHNESS_BOUND: Duration = Duration::from_secs(1);

/// Attempts of one post (the first one and its retries) before it is given up, outside chaos runs.
const MAX_POST_ATTEMPTS: u32 = 4;

/// In a chaos run, how long after the main phase refused posts are still sent again until accepted.
pub const RESEND_DEADLINE: Duration = Duration::from_secs(30);

/// In a chaos run, when a post that got no answer (or an undocumented `5xx`) is sent again.
const RESEND_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// Stale reads kept as examples in a result.
const STALE_EXAMPLES: usize = 10;

/// A chat-service instance the load is sent to.
#[derive(Clone, Debug, Serialize)]
pub struct Target {
    /// Name in reports.
    pub name: String,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// Process id, for memory readings; `None` when not known.
    pub pid: Option<u32>,
}

/// A dependency outage during the run: moderation answers `503` to every check for `length`, from `start`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Outage {
    /// When the outage begins, from the start of the run.
    pub start: Duration,
    /// How long it lasts.
    pub length: Duration,
    /// How long after it ends a `503` on a post is still explained by it (an open breaker waits before it
    /// tries the dependency again).
    pub grace: Duration,
}

/// One run of the load at a constant rate.
#[derive(Clone, Debug, Serialize)]
pub struct LoadPlan {
    /// Arrival rate, requests per second.
    pub rate: f64,
    /// How long requests are sent.
    pub duration: Duration,
    /// Most requests sent, whatever the duration.
    pub max_requests: u64,
    /// Most requests in flight; one more is counted as an error.
    pub max_in_flight: usize,
    /// Identical GETs in one page refresh.
    pub burst: u32,
    /// Exponent of the Zipf distribution of room popularity.
    pub zipf_exponent: f64,
    /// Share of acknowledged posts retried with the same key and body.
    pub retry_share: f64,
    /// Dependency outage, if any.
    pub outage: Option<Outage>,
    /// Faults injected on this schedule (a chaos run), if any: posts refused as documented are sent again
    /// with their key until accepted, and answers are counted per period of the schedule.
    pub chaos: Option<ChaosSchedule>,
    /// Whether each acknowledged post is looked for on every instance after [`FRESHNESS_BOUND`].
    pub check_freshness: bool,
    /// Seed of the generator's random choices.
    pub seed: u64,
    /// Label of the progress bar.
    pub label: String,
}

/// Where the load goes.
#[derive(Clone, Debug)]
pub struct LoadEnv {
    /// The client.
    pub http: Http,
    /// Chat-service instances; the load is split evenly between them.
    pub targets: Vec<Target>,
    /// Base URL of the moderation service, for the outage.
    pub moderation: String,
    /// What the faults of a chaos plan act on.
    pub faults: Option<FaultControls>,
    /// The seeded data.
    pub seeded: Seeded,
    /// Unique per run: part of every post's token, so tokens of different runs never match.
    pub run_id: String,
}

/// What one request class looks like in the mix, per action (a refresh is `burst` requests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ActionKind {
    Refresh,
    First,
    Older,
    Message,
    Rooms,
    Post,
}

/// Action weights out of 60: with bursts of five, the actions make 100 requests, 5 of them posts.
const ACTION_WEIGHTS: [(ActionKind, u32); 6] = [
    (ActionKind::Refresh, 10),
    (ActionKind::First, 15),
    (ActionKind::Older, 15),
    (ActionKind::Message, 10),
    (ActionKind::Rooms, 5),
    (ActionKind::Post, 5),
];

fn pick_action(rng: &mut fastrand::Rng) -> ActionKind {
    let total: u32 = ACTION_WEIGHTS.iter().map(|(_, w)| w).sum();
    let mut draw = rng.u32(0..total);
    for (kind, weight) in ACTION_WEIGHTS {
        if draw < weight {
            return kind;
        }
        draw -= weight;
    }
    ActionKind::Post
}

/// Expected share of posts among requests for a burst size, for reports.
pub fn post_share(burst: u32) -> f64 {
    let mut requests = 0.0;
    let mut posts = 0.0;
    for (kind, weight) in ACTION_WEIGHTS {
        let size = if kind == ActionKind::Refresh {
            f64::from(burst.max(1))
        } else {
            1.0
        };
        requests += f64::from(weight) * size;
        if kind == ActionKind::Post {
            posts += f64::from(weight);
        }
    }
    posts / requests
}

/// Counters of the posts of a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PostStats {
    /// Distinct posts (first attempts).
    pub posts: u64,
    /// Posts acknowledged with `201`.
    pub acked: u64,
    /// Retries sent (same key, same body).
    pub retries: u64,
    /// Retries sent to the other instance.
    pub retries_on_other_instance: u64,
    /// Retries of an acknowledged post answered with the same message (a replay).
    pub replayed: u64,
    /// Of those, answers carrying `Idempotent-Replayed: true`.
    pub replayed_header: u64,
    /// Retries of an acknowledged post answered `201` with a new id: stored twice.
    pub stored_again: u64,
    /// `503` answers explained by the outage.
    pub unavailable: u64,
    /// Posts given up after four attempts without a `201` (outside chaos runs).
    pub given_up: u64,
    /// Documented refusals (chaos runs): `503` or `409` with `Retry-After`.
    pub refused: u64,
    /// Posts sent again after a refusal or a failure (chaos runs).
    pub resent: u64,
    /// Posts never answered `201` however often they were sent (chaos runs: by the resend deadline).
    pub never_accepted: u64,
}

/// One post: its token, body and key, and its acknowledgement.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PostRecord {
    /// Unique text token, found again in the history.
    pub token: String,
    /// Room number (1-based).
    pub room: u32,
    /// Idempotency key (without quotes).
    pub key: String,
    /// Instance of the first attempt.
    pub instance: usize,
    /// Attempts so far.
    pub attempts: u32,
    /// Id and time of the first `201`.
    #[serde(default)]
    pub acked: Option<Acked>,
    #[serde(skip)]
    body: Bytes,
}

/// The first `201` of a post.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Acked {
    /// Message id.
    pub id: i64,
    /// When it was acknowledged, from the start of the run.
    pub at: Duration,
    /// Instance that acknowledged it.
    pub instance: usize,
}

/// A read that missed an acknowledged post after the freshness bound.
#[derive(Clone, Debug, Serialize)]
pub struct StaleRead {
    /// Room.
    pub room: u32,
    /// The missing message.
    pub id: i64,
    /// Instance that served the page.
    pub instance: String,
    /// Newest id on the page served.
    pub newest_on_page: Option<i64>,
    /// Time between the acknowledgement and the GET.
    pub after_ms: f64,
    /// When the post was acknowledged, seconds from the start of the run.
    pub acked_at_s: f64,
    /// `Cache-Status` and `Age` of the page served, which tell where it came from.
    pub cache_status: String,
}

/// Results of the freshness checks.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Freshness {
    /// Pages checked (one per acknowledged post and instance).
    pub checks: u64,
    /// Pages that held the post.
    pub contained: u64,
    /// Pages where newer posts had pushed it off the first page.
    pub pushed_off: u64,
    /// Pages that missed it: served stale past the bound.
    pub stale: u64,
    /// Some of the stale reads.
    pub stale_examples: Vec<StaleRead>,
    /// Checks that got no usable answer, by cause.
    pub failed: Errors,
}

/// A change of an instance's breaker state seen by polling `/stats`.
#[derive(Clone, Debug, Serialize)]
pub struct BreakerChange {
    /// Instance.
    pub instance: String,
    /// Seconds from the start of the run.
    pub at_s: f64,
    /// New state.
    pub state: String,
}

/// When the outage actually began and ended, from the start of the run.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct OutageRecord {
    /// Seconds to `down: true`.
    pub began_s: f64,
    /// Seconds to `down: false`.
    pub ended_s: f64,
    /// Whether both `PUT /admin/faults` calls were answered `200`.
    pub switched: bool,
}

/// Everything one run measured.
#[derive(Clone, Debug)]
pub struct LoadResult {
    /// The plan it ran.
    pub plan: LoadPlan,
    /// From the start to the last completion.
    pub elapsed: Duration,
    /// Requests scheduled.
    pub scheduled: u64,
    /// Requests that got an answer (any status).
    pub answered: u64,
    /// Latencies by class.
    pub latencies: ClassLatencies,
    /// Counts per second.
    pub timeline: Timeline,
    /// Errors by cause (not counting explained `503`s).
    pub errors: Errors,
    /// History responses.
    pub history: u64,
    /// History responses answered by the cache.
    pub history_hits: u64,
    /// Responses of every class answered by the cache.
    pub hits: u64,
    /// GETs sent to each target, the checks' included.
    pub reads_per_target: Vec<u64>,
    /// Posts.
    pub posts: PostStats,
    /// Every post, for the history check.
    pub ledger: Vec<PostRecord>,
    /// Rooms posted to.
    pub touched_rooms: BTreeSet<u32>,
    /// Freshness checks.
    pub freshness: Freshness,
    /// Breaker changes seen.
    pub breaker: Vec<BreakerChange>,
    /// Peak memory of each target seen while running.
    pub memory: Vec<Memory>,
    /// The outage, if the plan had one.
    pub outage: Option<OutageRecord>,
    /// The faults and what each period met, if the plan was a chaos plan.
    pub chaos: Option<ChaosResult>,
}

/// What the faults of a chaos plan did and what the load met meanwhile.
#[derive(Clone, Debug, Serialize)]
pub struct ChaosResult {
    /// The faults as they happened.
    pub faults: Vec<FaultRecord>,
    /// The calm lead-in and each fault with the calm gap after it.
    pub periods: Vec<PeriodStats>,
    /// Seconds after the main phase until the last refused post was accepted (or the deadline passed).
    pub resend_drain_s: f64,
}

impl LoadResult {
    /// Requests answered per second over the run.
    pub fn throughput(&self) -> f64 {
        crate::stats::per_second(self.answered, self.elapsed)
    }

    /// History hit rate from `Cache-Status`.
    pub fn history_hit_rate(&self) -> Option<f64> {
        crate::stats::ratio(self.history_hits, self.history)
    }
}

#[derive(Default)]
struct Recorder {
    latencies: ClassLatencies,
    timeline: Timeline,
    errors: Errors,
    answered: u64,
    history: u64,
    history_hits: u64,
    hits: u64,
    last_completion: Duration,
}

/// What a post waits for in the retry queue.
struct PendingRetry {
    post: usize,
    not_before: Duration,
}

#[derive(Default)]
struct Ledger {
    posts: Vec<PostRecord>,
    retries: VecDeque<PendingRetry>,
    /// Chaos runs: posts without a `201` yet, sent again when due.
    resend: Vec<PendingRetry>,
    stats: PostStats,
    touched: BTreeSet<u32>,
}

struct Shared {
    env: LoadEnv,
    plan: LoadPlan,
    start: Instant,
    recorder: Mutex<Recorder>,
    ledger: Mutex<Ledger>,
    freshness: Mutex<Freshness>,
    /// `next_before` of the latest first page seen, per room (index room - 1).
    next_before: Mutex<Vec<Option<i64>>>,
    reads: Vec<AtomicU64>,
    in_flight: Arc<Semaphore>,
    checks: Mutex<Vec<JoinHandle<()>>>,
    chaos: Option<ChaosTally>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking task must not take the whole report down with it; the data stays usable.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    fn explained_503(&self, scheduled: Duration) -> bool {
        self.plan.outage.is_some_and(|outage| {
            scheduled >= outage.start && scheduled <= outage.start + outage.length + outage.grace
        })
    }

    fn complete(&self, endpoint: Endpoint, scheduled: Duration, outcome: Outcome) {
        let now = self.elapsed();
        let latency = now.saturating_sub(scheduled);
        if let Some(tally) = &self.chaos {
            let read = endpoint != Endpoint::Post;
            let post_cause;
            let event = match &outcome {
                Outcome::Answered { error: None, .. } if read => Event::ReadServed,
                Outcome::Answered { error: None, .. } => Event::PostAccepted,
                Outcome::Answered {
                    error: Some(cause), ..
                } if read => Event::ReadFailed(cause),
                Outcome::Answered {
                    error: Some(cause), ..
                } => Event::PostFailed(cause),
                Outcome::Failed(cause) if read => Event::ReadFailed(cause),
                Outcome::Failed(cause) => {
                    post_cause = format!("post {cause}");
                    Event::PostFailed(&post_cause)
                }
                Outcome::Refused(refusal) => Event::PostRefused(*refusal),
                Outcome::Explained => Event::PostRefused(Refusal::ModerationUnavailable),
            };
            tally.record(scheduled, latency, event);
        }
        let mut recorder = lock(&self.recorder);
        recorder.last_completion = recorder.last_completion.max(now);
        match outcome {
            Outcome::Answered { hit, error } => {
                recorder.answered += 1;
                recorder.latencies.record(endpoint, latency, hit);
                if endpoint.is_history() {
                    recorder.history += 1;
                    recorder.history_hits += u64::from(hit);
                }
                recorder.hits += u64::from(hit);
                recorder
                    .timeline
                    .record(now, endpoint, hit, error.is_some());
                if let Some(cause) = error {
                    recorder.errors.add(&cause);
                }
            }
            Outcome::Failed(cause) => {
                recorder.errors.add(cause);
                recorder.timeline.record(now, endpoint, false, true);
            }
            Outcome::Explained | Outcome::Refused(_) => {
                recorder.answered += 1;
                recorder.latencies.record(endpoint, latency, false);
                recorder.timeline.record(now, endpoint, false, false);
                recorder.timeline.record_refused(now);
            }
        }
        if endpoint != Endpoint::Post {
            recorder.timeline.record_read_latency(now, latency);
        }
    }

    fn room_url(&self, target: usize, room: u32) -> String {
        format!(
            "{}/rooms/room-{room}/messages",
            self.env.targets[target].base
        )
    }

    async fn get(&self, target: usize, url: &str) -> Result<Reply, RequestError> {
        self.reads[target].fetch_add(1, Ordering::Relaxed);
        self.env.http.get(url).await
    }
}

enum Outcome {
    /// An answer; `error` names the cause when the status was not the expected one.
    Answered { hit: bool, error: Option<String> },
    /// No answer.
    Failed(&'static str),
    /// A `503` on a post during the outage: measured, not an error.
    Explained,
    /// A documented refusal of a post in a chaos run: measured, counted apart, sent again.
    Refused(Refusal),
}

fn status_error(status: StatusCode) -> Option<String> {
    (!status.is_success()).then(|| format!("status {}", status.as_u16()))
}

/// ` (TYPE)` of a problem+json body, for error causes; empty for other bodies.
fn problem_type(reply: &Reply) -> String {
    #[derive(Deserialize)]
    struct Problem {
        #[serde(rename = "type")]
        kind: String,
    }
    serde_json::from_slice::<Problem>(&reply.body)
        .map_or_else(|_| String::new(), |p| format!(" ({})", p.kind))
}

#[derive(Deserialize)]
struct PageHead {
    next_before: Option<i64>,
}

#[derive(Deserialize)]
struct PageIds {
    messages: Vec<IdOnly>,
}

#[derive(Deserialize)]
struct IdOnly {
    id: i64,
}

/// Runs `plan` against `env` and returns what it measured. `progress` shows the elapsed part of the run.
pub async fn run(env: &LoadEnv, plan: &LoadPlan, progress: &ProgressBar) -> LoadResult {
    let rooms = env.seeded.rooms.max(1);
    let shared = Arc::new(Shared {
        env: env.clone(),
        plan: plan.clone(),
        start: Instant::now(),
        recorder: Mutex::default(),
        ledger: Mutex::default(),
        freshness: Mutex::default(),
        next_before: Mutex::new(vec![None; rooms as usize]),
        reads: env.targets.iter().map(|_| AtomicU64::new(0)).collect(),
        in_flight: Arc::new(Semaphore::new(plan.max_in_flight.max(1))),
        checks: Mutex::default(),
        chaos: plan.chaos.clone().map(ChaosTally::new),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let poller = tokio::spawn(poll_instances(shared.clone(), stop.clone()));
    let outage = plan
        .outage
        .map(|outage| tokio::spawn(run_outage(shared.clone(), outage)));
    let faults = match (&plan.chaos, &env.faults) {
        (Some(schedule), Some(controls)) => Some(tokio::spawn(chaos::drive(
            shared.start,
            schedule.clone(),
            controls.clone(),
            env.targets.clone(),
        ))),
        _ => None,
    };
    let stop_resends = Arc::new(AtomicBool::new(false));
    let resender = plan
        .chaos
        .is_some()
        .then(|| tokio::spawn(resend_due(shared.clone(), stop_resends.clone())));

    let scheduled = {
        let (shared, progress) = (shared.clone(), progress.clone());
        // On a thread of its own: see `wait_until`.
        tokio::task::spawn_blocking(move || generate(&shared, &progress))
            .await
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic.into_panic()))
    };

    let permits = u32::try_from(plan.max_in_flight.max(1)).unwrap_or(u32::MAX);
    let mut resend_drain = Duration::ZERO;
    if let Some(resender) = resender {
        // Refused posts are sent again until accepted, as a client holding their keys would.
        let end = shared.elapsed();
        loop {
            let idle = lock(&shared.ledger).resend.is_empty()
                && shared.in_flight.available_permits() == permits as usize;
            if idle || shared.elapsed() >= end + RESEND_DEADLINE {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        resend_drain = shared.elapsed().saturating_sub(end);
        stop_resends.store(true, Ordering::Relaxed);
        let _ = resender.await;
    }
    // Drain: every permit back means every request has completed (each has the client's timeout).
    let _all = shared.in_flight.acquire_many(permits).await;
    let outage = match outage {
        Some(task) => task.await.ok(),
        None => None,
    };
    let faults = match faults {
        Some(task) => task.await.unwrap_or_default(),
        None => Vec::new(),
    };
    loop {
        let pending: Vec<JoinHandle<()>> = std::mem::take(&mut *lock(&shared.checks));
        if pending.is_empty() {
            break;
        }
        for check in pending {
            let _ = check.await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (breaker, memory) = poller.await.unwrap_or_default();

    let recorder = std::mem::take(&mut *lock(&shared.recorder));
    let mut ledger = std::mem::take(&mut *lock(&shared.ledger));
    let freshness = std::mem::take(&mut *lock(&shared.freshness));
    let chaos = shared.chaos.as_ref().map(|tally| {
        ledger.stats.never_accepted =
            ledger.posts.iter().filter(|p| p.acked.is_none()).count() as u64;
        ChaosResult {
            faults,
            periods: tally.periods(),
            resend_drain_s: resend_drain.as_secs_f64(),
        }
    });
    LoadResult {
        plan: plan.clone(),
        elapsed: recorder.last_completion.max(Duration::from_millis(1)),
        scheduled,
        answered: recorder.answered,
        latencies: recorder.latencies,
        timeline: recorder.timeline,
        errors: recorder.errors,
        history: recorder.history,
        history_hits: recorder.history_hits,
        hits: recorder.hits,
        reads_per_target: shared
            .reads
            .iter()
            .map(|r| r.load(Ordering::Relaxed))
            .collect(),
        posts: ledger.stats,
        ledger: ledger.posts,
        touched_rooms: ledger.touched,
        freshness,
        breaker,
        memory,
        outage,
        chaos,
    }
}

/// Sends every post of the resend queue that is due, each to the instance after the one it last went to,
/// until `stop`.
async fn resend_due(shared: Arc<Shared>, stop: Arc<AtomicBool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let targets = shared.env.targets.len().max(1);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let now = shared.elapsed();
        let due: Vec<(usize, usize)> = {
            let mut ledger = lock(&shared.ledger);
            let mut due = Vec::new();
            let mut waiting = Vec::new();
            for pending in std::mem::take(&mut ledger.resend) {
                if pending.not_before <= now {
                    due.push(pending.post);
                } else {
                    waiting.push(pending);
                }
            }
            ledger.resend = waiting;
            ledger.stats.resent += due.len() as u64;
            due.into_iter()
                .map(|index| {
                    let post = &ledger.posts[index];
                    (index, (post.instance + post.attempts as usize) % targets)
                })
                .collect()
        };
        for (index, target) in due {
            send_post(&shared, index, target, false, now);
        }
    }
}

/// Error cause of a request refused by the in-flight cap.
pub const OVERFLOW: &str = "in-flight cap";

/// Blocks the calling thread until `deadline`.
///
/// Tokio's timer wheel has a resolution of one millisecond and rounds every deadline up to its
/// next tick, so a generator paced with `tokio::time::sleep_until` sends each request up to a
/// millisecond late, and since latencies count from the scheduled time, every request carries that
/// delay of the generator's own. A thread sleep uses the kernel's high-resolution timers (about
/// 50 µs of slack on Linux), which keeps the schedule within a tenth of that.
fn wait_until(deadline: Instant) {
    let now = Instant::now();
    if deadline > now {
        std::thread::sleep(deadline - now);
    }
}

/// Sends the load from a blocking thread (requests go out as tasks on the runtime); returns the
/// number of requests scheduled.
fn generate(shared: &Arc<Shared>, progress: &ProgressBar) -> u64 {
    let plan = &shared.plan;
    let Some(mut pacer) = Pacer::new(plan.rate) else {
        return 0;
    };
    let rooms = shared.env.seeded.rooms.max(1) as usize;
    let Some(zipf) = Zipf::new(rooms, plan.zipf_exponent) else {
        return 0;
    };
    let mut rng = fastrand::Rng::with_seed(plan.seed);
    let targets = shared.env.targets.len().max(1);
    let mut next_post = 0u64;
    let mut last_tick = Duration::ZERO;
    loop {
        let due = pacer.peek();
        if due >= plan.duration || pacer.scheduled() >= plan.max_requests {
            break;
        }
        let kind = pick_action(&mut rng);
        let size = if kind == ActionKind::Refresh {
            u64::from(plan.burst.max(1))
        } else {
            1
        };
        let at = pacer.next(size);
        wait_until(shared.start + at);
        let room = zipf.sample(&mut rng) as u32 + 1;
        let target = rng.usize(0..targets);
        match kind {
            ActionKind::Refresh | ActionKind::First => {
                let url = shared.room_url(target, room);
                for _ in 0..size {
                    dispatch_get(
                        shared,
                        Endpoint::HistoryFirst,
                        target,
                        room,
                        url.clone(),
                        at,
                    );
                }
            }
            ActionKind::Older => {
                let seeded = shared.env.seeded;
                let fallback = seeded.message_id(room, seeded.messages_per_room.saturating_sub(49));
                let before = lock(&shared.next_before)[room as usize - 1].unwrap_or(fallback);
                let url = format!("{}?before={before}", shared.room_url(target, room));
                dispatch_get(shared, Endpoint::HistoryOlder, target, room, url, at);
            }
            ActionKind::Message => {
                let seeded = shared.env.seeded;
                let n = rng.u32(1..=seeded.messages_per_room.max(1));
                let url = format!(
                    "{}/{}",
                    shared.room_url(target, room),
                    seeded.message_id(room, n)
                );
                dispatch_get(shared, Endpoint::Message, target, room, url, at);
            }
            ActionKind::Rooms => {
                let url = format!("{}/rooms", shared.env.targets[target].base);
                dispatch_get(shared, Endpoint::Rooms, target, room, url, at);
            }
            ActionKind::Post => {
                let retry = rng.f64() < 0.5 && {
                    let ledger = lock(&shared.ledger);
                    ledger.retries.front().is_some_and(|r| r.not_before <= at)
                };
                if retry {
                    let other = targets > 1 && rng.bool();
                    dispatch_retry(shared, at, other);
                } else {
                    next_post += 1;
                    let retry_later = rng.f64() < plan.retry_share;
                    dispatch_post(shared, room, target, next_post, retry_later, at);
                }
            }
        }
        if at.saturating_sub(last_tick) >= Duration::from_millis(100) {
            last_tick = at;
            progress.set_position(u64::try_from(at.as_millis()).unwrap_or(u64::MAX));
            let (answered, errors) = {
                let recorder = lock(&shared.recorder);
                (recorder.answered, recorder.errors.total())
            };
            progress.set_message(format!("{answered} answered, {errors} errors"));
        }
    }
    progress.set_position(u64::try_from(plan.duration.as_millis()).unwrap_or(u64::MAX));
    pacer.scheduled()
}

fn dispatch_get(
    shared: &Arc<Shared>,
    endpoint: Endpoint,
    target: usize,
    room: u32,
    url: String,
    at: Duration,
) {
    let Ok(permit) = shared.in_flight.clone().try_acquire_owned() else {
        shared.complete(endpoint, at, Outcome::Failed(OVERFLOW));
        return;
    };
    let shared = shared.clone();
    tokio::spawn(async move {
        let outcome = match shared.get(target, &url).await {
            Ok(reply) => {
                if endpoint == Endpoint::HistoryFirst
                    && reply.status == StatusCode::OK
                    && let Ok(head) = serde_json::from_slice::<PageHead>(&reply.body)
                    && let Some(slot) = lock(&shared.next_before).get_mut(room as usize - 1)
                {
                    *slot = head.next_before.or(*slot);
                }
                Outcome::Answered {
                    hit: reply.is_cache_hit(),
                    error: status_error(reply.status),
                }
            }
            Err(e) => Outcome::Failed(e.cause()),
        };
        shared.complete(endpoint, at, outcome);
        drop(permit);
    });
}

fn dispatch_post(
    shared: &Arc<Shared>,
    room: u32,
    target: usize,
    n: u64,
    retry_later: bool,
    at: Duration,
) {
    // The plan's seed differs between the phases of a run, so no two phases share a token or a key.
    let token = format!("{}-{:x}-{n}", shared.env.run_id, shared.plan.seed);
    let body = serde_json::json!({
        "author": format!("load-{}", n % 97),
        "text": format!("load test post {token}"),
    });
    let record = PostRecord {
        key: format!("lt-{token}"),
        token,
        room,
        instance: target,
        attempts: 0,
        acked: None,
        body: Bytes::from(body.to_string()),
    };
    let index = {
        let mut ledger = lock(&shared.ledger);
        ledger.posts.push(record);
        ledger.stats.posts += 1;
        ledger.touched.insert(room);
        ledger.posts.len() - 1
    };
    send_post(shared, index, target, retry_later, at);
}

fn dispatch_retry(shared: &Arc<Shared>, at: Duration, other_instance: bool) {
    let (index, target) = {
        let mut ledger = lock(&shared.ledger);
        let Some(pending) = ledger.retries.pop_front() else {
            return;
        };
        let first = ledger.posts[pending.post].instance;
        let targets = shared.env.targets.len().max(1);
        let target = if other_instance {
            (first + 1) % targets
        } else {
            first
        };
        ledger.stats.retries += 1;
        if target != first {
            ledger.stats.retries_on_other_instance += 1;
        }
        (pending.post, target)
    };
    send_post(shared, index, target, false, at);
}

fn send_post(shared: &Arc<Shared>, index: usize, target: usize, retry_later: bool, at: Duration) {
    let Ok(permit) = shared.in_flight.clone().try_acquire_owned() else {
        if shared.chaos.is_some() {
            resend(
                &mut lock(&shared.ledger),
                index,
                shared.elapsed() + RESEND_AFTER_FAILURE,
            );
        }
        shared.complete(Endpoint::Post, at, Outcome::Failed(OVERFLOW));
        return;
    };
    let (body, key, room) = {
        let mut ledger = lock(&shared.ledger);
        let post = &mut ledger.posts[index];
        post.attempts += 1;
        (post.body.clone(), post.key.clone(), post.room)
    };
    let shared = shared.clone();
    tokio::spawn(async move {
        let url = shared.room_url(target, room);
        let reply = shared.env.http.post_json(&url, body, Some(&key)).await;
        let outcome = match reply {
            Ok(reply) if reply.status != StatusCode::CREATED && shared.chaos.is_some() => {
                chaos_refusal_or_failure(&shared, index, &reply)
            }
            Err(e) if shared.chaos.is_some() => {
                resend(
                    &mut lock(&shared.ledger),
                    index,
                    shared.elapsed() + RESEND_AFTER_FAILURE,
                );
                Outcome::Failed(e.cause())
            }
            Ok(reply) if reply.status == StatusCode::CREATED => {
                on_created(&shared, index, target, &reply, retry_later);
                Outcome::Answered {
                    hit: false,
                    error: None,
                }
            }
            Ok(reply)
                if reply.status == StatusCode::SERVICE_UNAVAILABLE && shared.explained_503(at) =>
            {
                let mut ledger = lock(&shared.ledger);
                ledger.stats.unavailable += 1;
                requeue(
                    &mut ledger,
                    index,
                    shared.elapsed() + Duration::from_secs(1),
                );
                Outcome::Explained
            }
            Ok(reply) => {
                let mut ledger = lock(&shared.ledger);
                if reply.status.is_server_error() {
                    requeue(
                        &mut ledger,
                        index,
                        shared.elapsed() + Duration::from_secs(1),
                    );
                }
                Outcome::Answered {
                    hit: false,
                    error: status_error(reply.status)
                        .map(|cause| format!("post {cause}{}", problem_type(&reply))),
                }
            }
            Err(e) => {
                let mut ledger = lock(&shared.ledger);
                requeue(
                    &mut ledger,
                    index,
                    shared.elapsed() + Duration::from_secs(1),
                );
                Outcome::Failed(e.cause())
            }
        };
        shared.complete(Endpoint::Post, at, outcome);
        drop(permit);
    });
}

/// In a chaos run, a post's answer other than `201`: a documented refusal, sent again after its
/// `Retry-After`, or a failure (a `5xx` is sent again too, so nothing stays unaccepted for want of trying).
fn chaos_refusal_or_failure(shared: &Shared, index: usize, reply: &Reply) -> Outcome {
    let now = shared.elapsed();
    let mut ledger = lock(&shared.ledger);
    match Refusal::of(reply) {
        Some(refusal) => {
            ledger.stats.refused += 1;
            resend(&mut ledger, index, now + chaos::resend_delay(reply));
            Outcome::Refused(refusal)
        }
        None => {
            if reply.status.is_server_error() {
                resend(&mut ledger, index, now + RESEND_AFTER_FAILURE);
            }
            Outcome::Answered {
                hit: false,
                error: status_error(reply.status)
                    .map(|cause| format!("post {cause}{}", problem_type(reply))),
            }
        }
    }
}

/// Queues a post without a `201` for [`resend_due`], however many attempts it took.
fn resend(ledger: &mut Ledger, index: usize, not_before: Duration) {
    if ledger.posts[index].acked.is_none() && !ledger.resend.iter().any(|p| p.post == index) {
        ledger.resend.push(PendingRetry {
            post: index,
            not_before,
        });
    }
}

/// Queues another attempt of a post that got no `201`, or gives it up.
fn requeue(ledger: &mut Ledger, index: usize, not_before: Duration) {
    let post = &ledger.posts[index];
    if post.acked.is_some() {
        return;
    }
    if post.attempts >= MAX_POST_ATTEMPTS {
        ledger.stats.given_up += 1;
    } else {
        ledger.retries.push_back(PendingRetry {
            post: index,
            not_before,
        });
    }
}

fn on_created(shared: &Arc<Shared>, index: usize, target: usize, reply: &Reply, retry_later: bool) {
    let id = serde_json::from_slice::<IdOnly>(&reply.body)
        .ok()
        .map(|m| m.id);
    let now = shared.elapsed();
    let mut ledger = lock(&shared.ledger);
    let Some(id) = id else {
        drop(ledger);
        lock(&shared.recorder).errors.add("post 201 without an id");
        return;
    };
    let room = ledger.posts[index].room;
    match ledger.posts[index].acked {
        None => {
            ledger.posts[index].acked = Some(Acked {
                id,
                at: now,
                instance: target,
            });
            ledger.stats.acked += 1;
            if retry_later {
                // Retried a little later, as a client that lost the answer would.
                ledger.retries.push_back(PendingRetry {
                    post: index,
                    not_before: now + Duration::from_millis(200),
                });
            }
            drop(ledger);
            if shared.plan.check_freshness {
                let check = tokio::spawn(check_freshness(shared.clone(), room, id, now));
                lock(&shared.checks).push(check);
            }
        }
        Some(first) if first.id == id => {
            ledger.stats.replayed += 1;
            ledger.stats.replayed_header += u64::from(reply.is_replayed());
        }
        Some(_) => ledger.stats.stored_again += 1,
    }
}

/// After the bound, every instance's first page of `room` must hold `id` or only newer messages.
async fn check_freshness(shared: Arc<Shared>, room: u32, id: i64, acked_at: Duration) {
    tokio::time::sleep_until(shared.start + acked_at + FRESHNESS_BOUND).await;
    for (target, instance) in shared.env.targets.iter().enumerate() {
        let sent_at = shared.elapsed();
        let reply = shared.get(target, &shared.room_url(target, room)).await;
        let mut freshness = lock(&shared.freshness);
        freshness.checks += 1;
        let mut served_from = String::new();
        let page = match reply {
            Ok(reply) if reply.status == StatusCode::OK => {
                for name in [crate::client::CACHE_STATUS, http::header::AGE] {
                    if let Some(value) = reply.headers.get(&name).and_then(|v| v.to_str().ok()) {
                        served_from.push_str(&format!("{name}: {value}; "));
                    }
                }
                serde_json::from_slice::<PageIds>(&reply.body).ok()
            }
            Ok(reply) => {
                freshness
                    .failed
                    .add(&format!("status {}", reply.status.as_u16()));
                continue;
            }
            Err(e) => {
                freshness.failed.add(e.cause());
                continue;
            }
        };
        let Some(page) = page else {
            freshness.failed.add("unreadable page");
            continue;
        };
        let ids: Vec<i64> = page.messages.iter().map(|m| m.id).collect();
        match judge_page(&ids, id) {
            PageVerdict::Contains => freshness.contained += 1,
            PageVerdict::PushedOff => freshness.pushed_off += 1,
            PageVerdict::Stale => {
                freshness.stale += 1;
                if freshness.stale_examples.len() < STALE_EXAMPLES {
                    freshness.stale_examples.push(StaleRead {
                        room,
                        id,
                        instance: instance.name.clone(),
                        newest_on_page: ids.iter().copied().max(),
                        after_ms: sent_at.saturating_sub(acked_at).as_secs_f64() * 1000.0,
                        acked_at_s: acked_at.as_secs_f64(),
                        cache_status: served_from.trim_end_matches("; ").to_owned(),
                    });
                }
            }
        }
    }
}

/// How a first page relates to a message that must be visible.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageVerdict {
    /// The page holds it.
    Contains,
    /// Newer messages fill the page: its oldest id is above it.
    PushedOff,
    /// Neither: the page is older than the message.
    Stale,
}

/// Judges a first page (its ids) against message `id`.
///
/// ```
/// use chat_loadtest::load::{judge_page, PageVerdict};
///
/// assert_eq!(judge_page(&[9, 7, 5], 7), PageVerdict::Contains);
/// assert_eq!(judge_page(&[30, 20], 10), PageVerdict::PushedOff);
/// assert_eq!(judge_page(&[6, 4], 10), PageVerdict::Stale);
/// ```
pub fn judge_page(ids: &[i64], id: i64) -> PageVerdict {
    if ids.contains(&id) {
        PageVerdict::Contains
    } else if ids.iter().min().is_some_and(|&oldest| oldest > id) {
        PageVerdict::PushedOff
    } else {
        PageVerdict::Stale
    }
}

/// Puts moderation down at the outage's start and back up at its end.
async fn run_outage(shared: Arc<Shared>, outage: Outage) -> OutageRecord {
    let faults = format!("{}/admin/faults", shared.env.moderation);
    tokio::time::sleep_until(shared.start + outage.start).await;
    let began = shared.elapsed();
    let down = shared
        .env
        .http
        .put_json(&faults, Bytes::from_static(br#"{"down":true}"#))
        .await;
    tokio::time::sleep_until(shared.start + outage.start + outage.length).await;
    let ended = shared.elapsed();
    let up = shared
        .env
        .http
        .put_json(&faults, Bytes::from_static(br#"{"down":false}"#))
        .await;
    let ok = |r: &Result<Reply, RequestError>| r.as_ref().is_ok_and(|r| r.status.is_success());
    OutageRecord {
        began_s: began.as_secs_f64(),
        ended_s: ended.as_secs_f64(),
        switched: ok(&down) && ok(&up),
    }
}

/// Polls every instance's `/stats` for breaker changes and its memory, until `stop`.
async fn poll_instances(
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
) -> (Vec<BreakerChange>, Vec<Memory>) {
    let targets = &shared.env.targets;
    let mut states: Vec<Option<String>> = vec![None; targets.len()];
    let mut changes = Vec::new();
    let mut memory = vec![Memory::default(); targets.len()];
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        for (i, target) in targets.iter().enumerate() {
            if let Some(now) = target.pid.and_then(Memory::of) {
                memory[i].peak_kib = memory[i].peak_kib.max(now.peak_kib);
                memory[i].rss_kib = memory[i].rss_kib.max(now.rss_kib);
            }
            let Ok(stats) = Stats::fetch(&shared.env.http, &target.base).await else {
                continue;
            };
            let Some(state) = stats.breaker_state else {
                continue;
            };
            if states[i].as_deref() != Some(state.as_str()) {
                if states[i].is_some() {
                    changes.push(BreakerChange {
                        instance: target.name.clone(),
                        at_s: shared.elapsed().as_secs_f64(),
                        state: state.clone(),
                    });
                }
                states[i] = Some(state);
            }
        }
    }
    (changes, memory)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn posts_are_about_five_percent_of_requests() {
        let share = post_share(5);
        assert!((share - 0.05).abs() < 1e-12, "{share}");
        assert!(
            (post_share(1) - 5.0 / 60.0).abs() < 1e-12,
            "no bursts: one action, one request"
        );
    }

    #[test]
    fn the_action_mix_follows_its_weights() {
        let mut rng = fastrand::Rng::with_seed(11);
        let mut counts = BTreeMap::new();
        let draws = 60_000;
        for _ in 0..draws {
            *counts
                .entry(format!("{:?}", pick_action(&mut rng)))
                .or_insert(0u32) += 1;
        }
        for (kind, weight) in ACTION_WEIGHTS {
            let observed = f64::from(counts[&format!("{kind:?}")]) / f64::from(draws);
            let expected = f64::from(weight) / 60.0;
            assert!(
                (observed - expected).abs() < 0.01,
                "{kind:?}: {observed} vs {expected}"
            );
        }
    }

    #[test]
    fn pages_are_judged_against_the_message() {
        assert_eq!(judge_page(&[], 5), PageVerdict::Stale);
        assert_eq!(judge_page(&[5], 5), PageVerdict::Contains);
        assert_eq!(judge_page(&[8, 6], 5), PageVerdict::PushedOff);
        assert_eq!(
            judge_page(&[8, 4], 5),
            PageVerdict::Stale,
            "a gap where it should be"
        );
    }

    #[test]
    fn requeue_gives_up_after_the_last_attempt() {
        let mut ledger = Ledger::default();
        ledger.posts.push(PostRecord {
            token: "t".into(),
            room: 1,
            key: "k".into(),
            instance: 0,
            attempts: 1,
            acked: None,
            body: Bytes::new(),
        });
        requeue(&mut ledger, 0, Duration::ZERO);
        assert_eq!(ledger.retries.len(), 1);
        ledger.posts[0].attempts = MAX_POST_ATTEMPTS;
        requeue(&mut ledger, 0, Duration::ZERO);
        assert_eq!((ledger.retries.len(), ledger.stats.given_up), (1, 1));
    }
}
