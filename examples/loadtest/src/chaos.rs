//! The chaos run (`--chaos`): the load-test mix on two stacked instances while Redis and the moderation
//! dependency fail on a schedule, with what each fault did and what the load met during it.
//!
//! [`ChaosSchedule::spread`] places eight [`Fault`]s over the main phase, each followed by a calm gap so
//! recovery shows. The two chat-service instances reach Redis and moderation through [`FaultProxy`]s that run
//! on a runtime of their own ([`ProxyRuntime`]); [`drive`] applies and heals each fault through
//! [`FaultControls`] and reads the instances' `/metrics` at every boundary, so each [`FaultRecord`] says
//! whether the fault really reached the service ([`FaultRecord::fired`]). The load records every answer into
//! a [`ChaosTally`]: documented refusals ([`Refusal`]) apart from real failures, per period of the schedule.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use serde::{Deserialize, Serialize};
use test_support::{FaultProxy, RedisServer, process_state};
use tokio::time::Instant;

use crate::Error;
use crate::client::{Http, Reply};
use crate::load::Target;
use crate::prom;
use crate::stats::{Errors, Latencies, Percentiles};

/// Main-phase length of `--chaos` when `--duration` is not given: eight faults, each followed by a calm gap
/// longer than the chat service's 5 s breaker wait, so every breaker closes again before the next fault.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(90);

/// Latency the moderation service adds to each check while it is slow: four times the chat service's
/// default 500 ms moderation timeout.
pub const MODERATION_SLOW: Duration = Duration::from_secs(2);

/// Latency the Redis proxy adds to every chunk in each direction while Redis is slow.
pub const REDIS_LATENCY: Duration = Duration::from_secs(1);

/// Interval of the connection resets while that fault lasts.
pub const RESET_INTERVAL: Duration = Duration::from_millis(500);

/// Share of the calm lead-in before the first fault, of the main phase.
const LEAD_IN_SHARE: f64 = 0.07;

/// A fault the chaos run injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// redis-server killed with SIGKILL, restarted empty (no persistence) on the same port at the end.
    RedisKilled,
    /// redis-server stopped with SIGSTOP, past every Redis timeout of the service, and continued at the end.
    RedisFrozen,
    /// Every exchange with Redis 1 s slower in each direction ([`REDIS_LATENCY`]).
    RedisSlow,
    /// Every connection to Redis reset (TCP RST) every [`RESET_INTERVAL`].
    RedisResets,
    /// Moderation answers each check after [`MODERATION_SLOW`], past the service's timeout.
    ModerationSlow,
    /// Moderation answers every check `500`.
    ModerationErrors,
    /// Moderation hangs: connections stay open, nothing is answered.
    ModerationHanging,
    /// Moderation refuses new connections and its open ones are reset.
    ModerationRefusing,
}

impl Fault {
    /// The order of the standard schedule: Redis and moderation faults take turns.
    pub const ORDER: [Fault; 8] = [
        Fault::RedisKilled,
        Fault::ModerationSlow,
        Fault::RedisFrozen,
        Fault::ModerationErrors,
        Fault::RedisSlow,
        Fault::ModerationHanging,
        Fault::RedisResets,
        Fault::ModerationRefusing,
    ];

    /// Short name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Fault::RedisKilled => "Redis killed, restarted empty",
            Fault::RedisFrozen => "Redis frozen (SIGSTOP)",
            Fault::RedisSlow => "Redis 1 s slower",
            Fault::RedisResets => "Redis connections reset",
            Fault::ModerationSlow => "moderation slow",
            Fault::ModerationErrors => "moderation answers 500",
            Fault::ModerationHanging => "moderation hangs",
            Fault::ModerationRefusing => "moderation refuses connections",
        }
    }

    /// What is done, in a sentence.
    pub fn description(self) -> String {
        match self {
            Fault::RedisKilled => {
                "redis-server killed with SIGKILL; restarted empty on the same port at the end".to_owned()
            }
            Fault::RedisFrozen => {
                "redis-server stopped with SIGSTOP (connections open, nothing answered); SIGCONT at the end"
                    .to_owned()
            }
            Fault::RedisSlow => format!(
                "every chunk between the instances and Redis delayed {} ms in each direction",
                REDIS_LATENCY.as_millis()
            ),
            Fault::RedisResets => format!(
                "every connection to Redis reset with a TCP RST every {} ms",
                RESET_INTERVAL.as_millis()
            ),
            Fault::ModerationSlow => format!(
                "moderation answers each check after {} ms",
                MODERATION_SLOW.as_millis()
            ),
            Fault::ModerationErrors => "moderation answers every check 500".to_owned(),
            Fault::ModerationHanging => {
                "connections to moderation black-holed: open, nothing forwarded".to_owned()
            }
            Fault::ModerationRefusing => {
                "new connections to moderation refused, open ones reset".to_owned()
            }
        }
    }

    /// True for the faults of Redis, false for those of the moderation dependency.
    pub fn is_redis(self) -> bool {
        matches!(
            self,
            Fault::RedisKilled | Fault::RedisFrozen | Fault::RedisSlow | Fault::RedisResets
        )
    }

    /// Share of its slot the fault lasts; the rest of the slot is the calm gap after it.
    fn share(self) -> f64 {
        match self {
            Fault::RedisKilled | Fault::RedisFrozen => 0.25,
            _ => 0.4,
        }
    }
}

/// One fault of a schedule: when it starts and how long it lasts, from the start of the main phase.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct ScheduledFault {
    /// The fault.
    pub fault: Fault,
    /// When it is applied.
    pub start: Duration,
    /// How long until it is healed.
    pub length: Duration,
}

impl ScheduledFault {
    /// When it is healed.
    pub fn end(&self) -> Duration {
        self.start + self.length
    }
}

/// When each fault happens in a main phase of `duration`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ChaosSchedule {
    /// Length of the main phase.
    pub duration: Duration,
    /// The faults, in order; they never overlap.
    pub faults: Vec<ScheduledFault>,
}

impl ChaosSchedule {
    /// The standard schedule: a calm lead-in of 7 % of `duration`, then one equal slot per fault of
    /// [`Fault::ORDER`]; each fault lasts a quarter (Redis killed or frozen) or 40 % (the others) of its slot
    /// and the rest of the slot is calm.
    ///
    /// ```
    /// use std::time::Duration;
    /// use chat_loadtest::chaos::{ChaosSchedule, Fault};
    ///
    /// let schedule = ChaosSchedule::spread(Duration::from_secs(90));
    /// assert_eq!(schedule.faults.len(), 8);
    /// assert_eq!(schedule.faults[0].fault, Fault::RedisKilled);
    /// // Every moderation fault leaves more than the breaker's 5 s wait before the next fault.
    /// for pair in schedule.faults.windows(2) {
    ///     assert!(pair[1].start - pair[0].end() > Duration::from_secs(5));
    /// }
    /// ```
    pub fn spread(duration: Duration) -> Self {
        Self::with_faults(duration, &Fault::ORDER)
    }

    /// The standard spacing for `faults`, in that order.
    pub fn with_faults(duration: Duration, faults: &[Fault]) -> Self {
        let lead_in = duration.mul_f64(LEAD_IN_SHARE);
        let slots = u32::try_from(faults.len().max(1)).unwrap_or(u32::MAX);
        let slot = duration.saturating_sub(lead_in) / slots;
        let faults = faults
            .iter()
            .enumerate()
            .map(|(i, &fault)| ScheduledFault {
                fault,
                start: lead_in + slot * u32::try_from(i).unwrap_or(u32::MAX),
                length: slot.mul_f64(fault.share()),
            })
            .collect();
        Self { duration, faults }
    }

    /// Periods of the schedule: the calm lead-in, then each fault with the calm gap after it.
    pub fn periods(&self) -> Vec<Period> {
        let mut periods = Vec::with_capacity(self.faults.len() + 1);
        let first = self.faults.first().map_or(self.duration, |f| f.start);
        periods.push(Period {
            fault: None,
            start: Duration::ZERO,
            end: first,
        });
        for (i, fault) in self.faults.iter().enumerate() {
            let end = self
                .faults
                .get(i + 1)
                .map_or(self.duration.max(fault.end()), |next| next.start);
            periods.push(Period {
                fault: Some(*fault),
                start: fault.start,
                end,
            });
        }
        periods
    }

    /// Index into [`periods`](Self::periods) of the period holding `at`; requests sent after the main phase
    /// (resent posts) belong to the last.
    pub fn period_of(&self, at: Duration) -> usize {
        self.faults.iter().take_while(|f| f.start <= at).count()
    }
}

/// A part of the main phase: the calm lead-in (`fault: None`), or one fault and the calm gap after it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Period {
    /// The fault, `None` for the lead-in.
    pub fault: Option<ScheduledFault>,
    /// Start, from the start of the main phase.
    pub start: Duration,
    /// End: the next fault's start, or the end of the main phase.
    pub end: Duration,
}

/// A documented refusal of a post: the service says it cannot take the post now, stores nothing, and the
/// same request (same `Idempotency-Key`) may be sent again after `Retry-After`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Refusal {
    /// `503` + `Retry-After`, `/problems/moderation-unavailable`: moderation down, too slow, or its breaker
    /// open.
    ModerationUnavailable,
    /// `503` + `Retry-After` from the idempotency layer: the key store (Redis) is unreachable.
    KeyStoreUnavailable,
    /// `409` + `Retry-After`: the key's first request is still running, or its record is not written yet.
    KeyInUse,
}

impl Refusal {
    /// Every kind, in report order.
    pub const ALL: [Refusal; 3] = [
        Refusal::KeyStoreUnavailable,
        Refusal::ModerationUnavailable,
        Refusal::KeyInUse,
    ];

    /// The refusal a post's answer is, if it is one of the documented ones.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use chat_loadtest::chaos::Refusal;
    /// use chat_loadtest::client::Reply;
    /// use http::{HeaderMap, StatusCode};
    ///
    /// let mut headers = HeaderMap::new();
    /// headers.insert("retry-after", "5".parse().unwrap());
    /// let body = Bytes::from_static(br#"{"type":"/problems/moderation-unavailable","status":503}"#);
    /// let reply = Reply { status: StatusCode::SERVICE_UNAVAILABLE, headers, body };
    /// assert_eq!(Refusal::of(&reply), Some(Refusal::ModerationUnavailable));
    /// ```
    pub fn of(reply: &Reply) -> Option<Refusal> {
        #[derive(Deserialize)]
        struct Problem {
            #[serde(rename = "type", default)]
            kind: String,
            #[serde(default)]
            detail: String,
        }
        if !reply.headers.contains_key(http::header::RETRY_AFTER) {
            return None;
        }
        let problem: Problem = serde_json::from_slice(&reply.body).ok()?;
        match reply.status {
            StatusCode::SERVICE_UNAVAILABLE
                if problem.kind == "/problems/moderation-unavailable" =>
            {
                Some(Refusal::ModerationUnavailable)
            }
            StatusCode::SERVICE_UNAVAILABLE if problem.detail.contains("idempotency store") => {
                Some(Refusal::KeyStoreUnavailable)
            }
            StatusCode::CONFLICT if problem.detail.contains("Idempotency-Key") => {
                Some(Refusal::KeyInUse)
            }
            _ => None,
        }
    }

    /// Name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Refusal::ModerationUnavailable => "503 moderation unavailable",
            Refusal::KeyStoreUnavailable => "503 idempotency store unreachable",
            Refusal::KeyInUse => "409 key in use",
        }
    }
}

/// When a refused post is sent again: after its `Retry-After` (seconds), at least 200 ms and at most 5 s.
pub fn resend_delay(reply: &Reply) -> Duration {
    let seconds = reply
        .headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(1);
    Duration::from_secs(seconds).clamp(Duration::from_millis(200), Duration::from_secs(5))
}

/// What happened to one request of the chaos run, for the tally.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Event<'a> {
    /// A read answered `2xx`.
    ReadServed,
    /// A read that failed, with its cause.
    ReadFailed(&'a str),
    /// A post answered `201`.
    PostAccepted,
    /// A post refused as documented.
    PostRefused(Refusal),
    /// A post that failed otherwise, with its cause.
    PostFailed(&'a str),
}

/// What the load met in one [`Period`].
#[derive(Clone, Debug, Serialize)]
pub struct PeriodStats {
    /// The fault of the period, `None` for the calm lead-in.
    pub fault: Option<Fault>,
    /// Start, seconds from the start of the main phase.
    pub start_s: f64,
    /// End, seconds.
    pub end_s: f64,
    /// Requests sent in the period (by scheduled time; resent posts included) that completed.
    pub requests: u64,
    /// Reads answered `2xx`.
    pub reads_served: u64,
    /// Reads that failed.
    pub reads_failed: u64,
    /// Latency of the reads, from each one's scheduled time.
    pub read_latency: Percentiles,
    /// Posts answered `201`.
    pub posts_accepted: u64,
    /// Documented refusals of posts, by kind.
    pub refusals: Errors,
    /// Everything else that failed, by cause.
    pub failures: Errors,
}

impl PeriodStats {
    /// Requests per second over the period.
    pub fn rate(&self) -> f64 {
        let seconds = self.end_s - self.start_s;
        if seconds > 0.0 {
            self.requests as f64 / seconds
        } else {
            0.0
        }
    }
}

#[derive(Debug, Default)]
struct PeriodTally {
    requests: u64,
    reads_served: u64,
    reads_failed: u64,
    read_latency: Latencies,
    posts_accepted: u64,
    refusals: Errors,
    failures: Errors,
}

/// Counts every answer of a chaos run by period of its schedule, refusals apart from failures.
#[derive(Debug)]
pub struct ChaosTally {
    schedule: ChaosSchedule,
    periods: Mutex<Vec<PeriodTally>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl ChaosTally {
    /// An empty tally for `schedule`.
    pub fn new(schedule: ChaosSchedule) -> Self {
        let periods = schedule
            .periods()
            .iter()
            .map(|_| PeriodTally::default())
            .collect();
        Self {
            schedule,
            periods: Mutex::new(periods),
        }
    }

    /// The schedule.
    pub fn schedule(&self) -> &ChaosSchedule {
        &self.schedule
    }

    /// Counts one request sent at `at` (from the start of the main phase) that took `latency`.
    pub(crate) fn record(&self, at: Duration, latency: Duration, event: Event<'_>) {
        let index = self.schedule.period_of(at);
        let mut periods = lock(&self.periods);
        let Some(period) = periods.get_mut(index) else {
            return;
        };
        period.requests += 1;
        match event {
            Event::ReadServed => {
                period.reads_served += 1;
                period.read_latency.record(latency);
            }
            Event::ReadFailed(cause) => {
                period.reads_failed += 1;
                period.failures.add(&format!("read {cause}"));
            }
            Event::PostAccepted => period.posts_accepted += 1,
            Event::PostRefused(refusal) => period.refusals.add(refusal.name()),
            Event::PostFailed(cause) => period.failures.add(cause),
        }
    }

    /// The periods with what was counted in each.
    pub fn periods(&self) -> Vec<PeriodStats> {
        let periods = lock(&self.periods);
        self.schedule
            .periods()
            .iter()
            .zip(periods.iter())
            .map(|(period, tally)| PeriodStats {
                fault: period.fault.map(|f| f.fault),
                start_s: period.start.as_secs_f64(),
                end_s: period.end.as_secs_f64(),
                requests: tally.requests,
                reads_served: tally.reads_served,
                reads_failed: tally.reads_failed,
                read_latency: tally.read_latency.percentiles(),
                posts_accepted: tally.posts_accepted,
                refusals: tally.refusals.clone(),
                failures: tally.failures.clone(),
            })
            .collect()
    }
}

/// A tokio runtime of its own for the fault proxies, so the bytes they forward never wait behind the load
/// generator's tasks. Shut down (with every proxy connection) on drop.
#[derive(Debug)]
pub struct ProxyRuntime {
    runtime: Option<tokio::runtime::Runtime>,
}

impl ProxyRuntime {
    /// Starts a runtime with one worker thread.
    pub fn start() -> Result<Self, Error> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fault-proxy")
            .enable_all()
            .build()
            .map_err(|e| Error::Io("starting the fault proxies' runtime".into(), e))?;
        Ok(Self {
            runtime: Some(runtime),
        })
    }

    /// Starts a [`FaultProxy`] in front of `upstream` on this runtime. Blocking: call it outside async code
    /// (or from `spawn_blocking`).
    pub fn proxy(&self, upstream: SocketAddr) -> Result<FaultProxy, Error> {
        let runtime = self
            .runtime
            .as_ref()
            .ok_or_else(|| Error::Setup("the fault proxies' runtime is gone".into()))?;
        Ok(runtime.block_on(FaultProxy::start(upstream))?)
    }
}

impl Drop for ProxyRuntime {
    fn drop(&mut self) {
        // Without blocking: the stack may be dropped from async code.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// What the fault driver acts on: the real redis-server, the proxies in front of Redis and moderation, and
/// moderation's own admin URL.
#[derive(Clone, Debug)]
pub struct FaultControls {
    /// The redis-server the instances share (through `redis_proxy`).
    pub redis: Arc<Mutex<RedisServer>>,
    /// The proxy the instances reach Redis through.
    pub redis_proxy: Arc<FaultProxy>,
    /// The proxy the instances reach moderation through.
    pub moderation_proxy: Arc<FaultProxy>,
    /// Base URL of the moderation service itself, for `PUT /admin/faults` and `GET /admin/stats`.
    pub moderation: String,
}

impl FaultControls {
    fn redis_pid(&self) -> Option<u32> {
        lock(&self.redis).pid()
    }

    async fn with_redis<T: Send + 'static>(
        &self,
        action: impl FnOnce(&mut RedisServer) -> Result<T, test_support::Error> + Send + 'static,
    ) -> Result<T, String> {
        let redis = self.redis.clone();
        tokio::task::spawn_blocking(move || action(&mut lock(&redis)))
            .await
            .map_err(|e| format!("redis task: {e}"))?
            .map_err(|e| e.to_string())
    }

    async fn moderation_faults(&self, http: &Http, body: &'static str) -> Result<(), String> {
        let url = format!("{}/admin/faults", self.moderation);
        let reply = http
            .put_json(&url, Bytes::from_static(body.as_bytes()))
            .await
            .map_err(|e| format!("PUT {url}: {e}"))?;
        if reply.status.is_success() {
            Ok(())
        } else {
            Err(format!("PUT {url} {body}: {}", reply.status))
        }
    }
}

/// Counters of one instance's `/metrics` that show what a fault did to it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct FaultCounters {
    /// Calls of the moderation breaker that failed or timed out.
    pub moderation_failed_calls: f64,
    /// Posts the open moderation breaker answered without calling the dependency.
    pub moderation_rejected_calls: f64,
    /// Moderation breaker transitions into `open`.
    pub moderation_opened: f64,
    /// Moderation breaker transitions into `closed`.
    pub moderation_closed: f64,
    /// Failed or timed-out calls to the Redis cache tier.
    pub redis_tier_errors: f64,
    /// Transitions of the cache's Redis breaker into `open`.
    pub redis_breaker_opened: f64,
    /// Keyed posts the idempotency store could not serve.
    pub key_store_errors: f64,
    /// Invalidation subscriptions established.
    pub subscriptions: f64,
    /// In-process flushes after a lost subscription.
    pub flushes: f64,
}

impl FaultCounters {
    /// Reads the counters from Prometheus text.
    ///
    /// ```
    /// use chat_loadtest::chaos::FaultCounters;
    ///
    /// let text = "breaker_transitions_total{breaker=\"moderation\",from=\"closed\",to=\"open\"} 2\n\
    ///             cache_tier_errors_total{tier=\"l2\"} 7\n";
    /// let counters = FaultCounters::from_text(text);
    /// assert_eq!((counters.moderation_opened, counters.redis_tier_errors), (2.0, 7.0));
    /// ```
    pub fn from_text(text: &str) -> Self {
        let samples = prom::parse(text);
        let calls = |breaker: &str, outcome: &str| {
            prom::sum(
                &samples,
                "breaker_calls_total",
                &[("breaker", breaker), ("outcome", outcome)],
            )
        };
        let into = |breaker: &str, state: &str| {
            prom::sum(
                &samples,
                "breaker_transitions_total",
                &[("breaker", breaker), ("to", state)],
            )
        };
        Self {
            moderation_failed_calls: calls("moderation", "failure") + calls("moderation", "slow"),
            moderation_rejected_calls: calls("moderation", "rejected"),
            moderation_opened: into("moderation", "open"),
            moderation_closed: into("moderation", "closed"),
            redis_tier_errors: prom::sum(&samples, "cache_tier_errors_total", &[("tier", "l2")]),
            redis_breaker_opened: into("cache-redis", "open"),
            key_store_errors: prom::sum(
                &samples,
                "dedup_idempotency_total",
                &[("outcome", "store_error")],
            ),
            subscriptions: prom::sum(&samples, "cache_pubsub_subscriptions_total", &[]),
            flushes: prom::sum(&samples, "cache_flushes_total", &[]),
        }
    }

    /// Fetches `{base}/metrics`; `None` when it does not answer.
    pub async fn fetch(http: &Http, base: &str) -> Option<Self> {
        let reply = http.get(&format!("{base}/metrics")).await.ok()?;
        reply
            .status
            .is_success()
            .then(|| Self::from_text(&String::from_utf8_lossy(&reply.body)))
    }

    /// Counters of `self` minus those of `earlier`.
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            moderation_failed_calls: self.moderation_failed_calls - earlier.moderation_failed_calls,
            moderation_rejected_calls: self.moderation_rejected_calls
                - earlier.moderation_rejected_calls,
            moderation_opened: self.moderation_opened - earlier.moderation_opened,
            moderation_closed: self.moderation_closed - earlier.moderation_closed,
            redis_tier_errors: self.redis_tier_errors - earlier.redis_tier_errors,
            redis_breaker_opened: self.redis_breaker_opened - earlier.redis_breaker_opened,
            key_store_errors: self.key_store_errors - earlier.key_store_errors,
            subscriptions: self.subscriptions - earlier.subscriptions,
            flushes: self.flushes - earlier.flushes,
        }
    }
}

/// Checks the moderation service received and answered `5xx` (its `GET /admin/stats`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModerationCounts {
    /// Checks received.
    pub checks: u64,
    /// Checks answered `5xx`.
    pub failed: u64,
}

impl ModerationCounts {
    async fn fetch(http: &Http, base: &str) -> Option<Self> {
        let reply = http.get(&format!("{base}/admin/stats")).await.ok()?;
        serde_json::from_slice(&reply.body).ok()
    }
}

/// Everything read at one boundary of the schedule.
#[derive(Clone, Debug, Default)]
struct Boundary {
    instances: Vec<Option<FaultCounters>>,
    moderation: Option<ModerationCounts>,
}

async fn boundary(http: &Http, targets: &[Target], moderation: &str) -> Boundary {
    let mut instances = Vec::with_capacity(targets.len());
    for target in targets {
        instances.push(FaultCounters::fetch(http, &target.base).await);
    }
    Boundary {
        instances,
        moderation: ModerationCounts::fetch(http, moderation).await,
    }
}

/// One fault as it happened, with the evidence that it reached the service.
#[derive(Clone, Debug, Serialize)]
pub struct FaultRecord {
    /// The fault.
    pub fault: Fault,
    /// What was done.
    pub description: String,
    /// Planned start, seconds from the start of the main phase.
    pub planned_start_s: f64,
    /// Applied at, seconds.
    pub start_s: f64,
    /// Healed at, seconds.
    pub end_s: f64,
    /// End of its period (the next fault's start, or the end of the main phase), seconds.
    pub period_end_s: f64,
    /// How applying and healing went, such as the pids of a killed and a restarted Redis.
    pub detail: Vec<String>,
    /// Errors while applying or healing it; empty when both worked.
    pub errors: Vec<String>,
    /// Per instance: counters over the period (fault and calm gap after it), from `/metrics`.
    pub instances: Vec<Option<FaultCounters>>,
    /// Moderation's own counts over the period.
    pub moderation: Option<ModerationCounts>,
    /// Whether the fault demonstrably reached the service.
    pub fired: bool,
    /// The evidence, or what was missing.
    pub evidence: String,
}

#[cfg(test)]
impl FaultRecord {
    /// A record of `scheduled` applied and healed as planned, fired, with no counters: the base the
    /// report tests fill in.
    pub(crate) fn as_planned(scheduled: &ScheduledFault) -> Self {
        Self {
            fault: scheduled.fault,
            description: scheduled.fault.description(),
            planned_start_s: scheduled.start.as_secs_f64(),
            start_s: scheduled.start.as_secs_f64(),
            end_s: scheduled.end().as_secs_f64(),
            period_end_s: 0.0,
            detail: Vec::new(),
            errors: Vec::new(),
            instances: Vec::new(),
            moderation: None,
            fired: true,
            evidence: "seen".into(),
        }
    }
}

impl FaultRecord {
    /// Judges from the counters whether the fault reached the service, and says why: Redis restarted
    /// with a new pid or seen stopped, Redis calls failing, subscriptions replaced, or moderation calls
    /// failing on every instance (whether they were enough to open a breaker depends on the load, and
    /// is reported).
    fn judge(&mut self, facts: &Facts) {
        let instances: Vec<FaultCounters> = self.instances.iter().flatten().copied().collect();
        let complete = !instances.is_empty() && instances.len() == self.instances.len();
        let every = |f: &dyn Fn(&FaultCounters) -> bool| complete && instances.iter().all(f);
        let total = |f: &dyn Fn(&FaultCounters) -> f64| instances.iter().map(f).sum::<f64>();
        let tier_errors = total(&|c| c.redis_tier_errors);
        let store_errors = total(&|c| c.key_store_errors);
        let resubscribed = total(&|c| c.subscriptions);
        let (fired, evidence) = match self.fault {
            Fault::RedisKilled => (
                facts.restarted
                    && tier_errors + store_errors > 0.0
                    && every(&|c| c.subscriptions >= 1.0),
                format!(
                    "{}; {tier_errors:.0} Redis tier errors, {store_errors:.0} idempotency store errors, \
                     {resubscribed:.0} resubscriptions, {:.0} in-process flushes",
                    if facts.restarted {
                        "restarted with a new pid"
                    } else {
                        "NOT restarted"
                    },
                    total(&|c| c.flushes)
                ),
            ),
            Fault::RedisFrozen => (
                facts.stopped_seen && tier_errors + store_errors > 0.0,
                format!(
                    "{}; {tier_errors:.0} Redis tier errors, {store_errors:.0} idempotency store errors",
                    if facts.stopped_seen {
                        "process state T (stopped) seen"
                    } else {
                        "process NOT seen stopped"
                    }
                ),
            ),
            Fault::RedisSlow => (
                tier_errors + store_errors > 0.0,
                format!(
                    "{tier_errors:.0} Redis tier errors (timeouts), {store_errors:.0} idempotency store \
                     errors, cache Redis breaker opened {:.0} times",
                    total(&|c| c.redis_breaker_opened)
                ),
            ),
            Fault::RedisResets => (
                facts.resets_with_connections > 0 && every(&|c| c.subscriptions >= 1.0),
                format!(
                    "{} resets, {} with connections open; {resubscribed:.0} resubscriptions, \
                     {tier_errors:.0} Redis tier errors",
                    facts.resets, facts.resets_with_connections
                ),
            ),
            Fault::ModerationSlow
            | Fault::ModerationErrors
            | Fault::ModerationHanging
            | Fault::ModerationRefusing => {
                let failed_everywhere = every(&|c| c.moderation_failed_calls > 0.0);
                let opened = total(&|c| c.moderation_opened);
                let moderation_side = match self.fault {
                    Fault::ModerationErrors => self.moderation.is_some_and(|m| m.failed > 0),
                    _ => true,
                };
                (
                    failed_everywhere && moderation_side,
                    format!(
                        "moderation breaker: {:.0} failed or timed-out calls, {:.0} posts answered while open, \
                         opened {opened:.0} and closed {:.0} times (both instances); moderation received \
                         {} checks, answered {} with 5xx",
                        total(&|c| c.moderation_failed_calls),
                        total(&|c| c.moderation_rejected_calls),
                        total(&|c| c.moderation_closed),
                        self.moderation.map_or(0, |m| m.checks),
                        self.moderation.map_or(0, |m| m.failed),
                    ),
                )
            }
        };
        self.fired = fired && self.errors.is_empty();
        self.evidence = if self.errors.is_empty() {
            evidence
        } else {
            format!("{evidence}; errors: {}", self.errors.join("; "))
        };
    }
}

/// What the driver itself saw while a fault lasted.
#[derive(Clone, Copy, Debug, Default)]
struct Facts {
    restarted: bool,
    stopped_seen: bool,
    resets: u32,
    resets_with_connections: u32,
}

/// Applies each fault of `schedule` at its time from `start` and heals it at its end, reading every
/// instance's `/metrics` and moderation's counts at each boundary. Returns when the main phase is over.
pub async fn drive(
    start: Instant,
    schedule: ChaosSchedule,
    controls: FaultControls,
    targets: Vec<Target>,
) -> Vec<FaultRecord> {
    // Short timeouts: a boundary reading must not hold up the next fault.
    let http = Http::new(Duration::from_secs(2));
    let elapsed = || start.elapsed().as_secs_f64();
    let mut boundaries = Vec::with_capacity(schedule.faults.len() + 1);
    let mut records = Vec::with_capacity(schedule.faults.len());
    let periods = schedule.periods();
    for (scheduled, period) in schedule.faults.iter().zip(periods.iter().skip(1)) {
        tokio::time::sleep_until(start + scheduled.start).await;
        boundaries.push(boundary(&http, &targets, &controls.moderation).await);
        let mut record = FaultRecord {
            fault: scheduled.fault,
            description: scheduled.fault.description(),
            planned_start_s: scheduled.start.as_secs_f64(),
            start_s: elapsed(),
            end_s: 0.0,
            period_end_s: period.end.as_secs_f64(),
            detail: Vec::new(),
            errors: Vec::new(),
            instances: Vec::new(),
            moderation: None,
            fired: false,
            evidence: String::new(),
        };
        let facts = run_fault(scheduled, start, &controls, &http, &mut record, &elapsed).await;
        records.push((record, facts));
    }
    tokio::time::sleep_until(start + schedule.duration).await;
    boundaries.push(boundary(&http, &targets, &controls.moderation).await);
    records
        .into_iter()
        .enumerate()
        .map(|(i, (mut record, facts))| {
            let (before, after) = (&boundaries[i], &boundaries[i + 1]);
            record.instances = before
                .instances
                .iter()
                .zip(&after.instances)
                .map(|(b, a)| Some(a.as_ref()?.since(b.as_ref()?)))
                .collect();
            record.moderation =
                before
                    .moderation
                    .zip(after.moderation)
                    .map(|(b, a)| ModerationCounts {
                        checks: a.checks.saturating_sub(b.checks),
                        failed: a.failed.saturating_sub(b.failed),
                    });
            record.judge(&facts);
            record
        })
        .collect()
}

async fn run_fault(
    scheduled: &ScheduledFault,
    start: Instant,
    controls: &FaultControls,
    http: &Http,
    record: &mut FaultRecord,
    elapsed: &impl Fn() -> f64,
) -> Facts {
    let mut facts = Facts::default();
    let end = start + scheduled.end();
    match scheduled.fault {
        Fault::RedisKilled => {
            let before = controls.redis_pid();
            let killed = controls.with_redis(RedisServer::stop).await;
            let gone = before.is_some_and(|pid| process_state(pid).is_none());
            note(
                killed.map(|()| {
                    format!(
                        "pid {} killed{}",
                        before.map_or_else(|| "?".to_owned(), |p| p.to_string()),
                        if gone { ", gone" } else { "" }
                    )
                }),
                record,
            );
            tokio::time::sleep_until(end).await;
            record.end_s = elapsed();
            let began = Instant::now();
            let restarted = controls.with_redis(RedisServer::restart).await;
            let after = controls.redis_pid();
            facts.restarted = restarted.is_ok() && gone && after.is_some() && after != before;
            note(
                restarted.map(|()| {
                    format!(
                        "restarted empty as pid {} in {} ms",
                        after.map_or_else(|| "?".to_owned(), |p| p.to_string()),
                        began.elapsed().as_millis()
                    )
                }),
                record,
            );
        }
        Fault::RedisFrozen => {
            let paused = controls.with_redis(|r| r.pause()).await;
            facts.stopped_seen = controls
                .redis_pid()
                .and_then(process_state)
                .is_some_and(|state| state == 'T');
            note(paused.map(|()| "SIGSTOP".to_owned()), record);
            tokio::time::sleep_until(end).await;
            record.end_s = elapsed();
            note(
                controls
                    .with_redis(|r| r.resume())
                    .await
                    .map(|()| "SIGCONT".to_owned()),
                record,
            );
        }
        Fault::RedisSlow => {
            controls.redis_proxy.set_latency(REDIS_LATENCY);
            tokio::time::sleep_until(end).await;
            record.end_s = elapsed();
            controls.redis_proxy.heal();
        }
        Fault::RedisResets => {
            loop {
                facts.resets += 1;
                if controls.redis_proxy.open_connections() > 0 {
                    facts.resets_with_connections += 1;
                }
                controls.redis_proxy.reset_connections();
                let next = Instant::now() + RESET_INTERVAL;
                if next >= end {
                    break;
                }
                tokio::time::sleep_until(next).await;
            }
            tokio::time::sleep_until(end).await;
            record.end_s = elapsed();
        }
        Fault::ModerationSlow | Fault::ModerationErrors => {
            let (on, off) = if scheduled.fault == Fault::ModerationSlow {
                (r#"{"latency_ms":2000}"#, r#"{"latency_ms":0}"#)
            } else {
                (r#"{"failure_rate":1.0}"#, r#"{"failure_rate":0.0}"#)
            };
            note(
                controls
                    .moderation_faults(http, on)
                    .await
                    .map(|()| format!("PUT /admin/faults {on}")),
                record,
            );
            tokio::time::sleep_until(end).await;
            record.end_s = elapsed();
            note(
                controls
                    .moderation_faults(http, off)
                    .await
                    .map(|()| format!("PUT /admin/faults {off}")),
                record,
            );
        }
        Fault::ModerationHanging => {
            controls.moderation_proxy.blackhole();
            tokio::time::sleep_until(end).await;
            record.end_s = elapsed();
            controls.moderation_proxy.heal();
            // Connections that held requests during the blackhole are dropped, as a healed network would
            // after the client gave up on them.
            controls.moderation_proxy.reset_connections();
        }
        Fault::ModerationRefusing => {
            controls.moderation_proxy.refuse();
            controls.moderation_proxy.reset_connections();
            tokio::time::sleep_until(end).await;
            record.end_s = elapsed();
            controls.moderation_proxy.heal();
        }
    }
    facts
}

/// Keeps what applying or healing a fault said: a detail, or an error.
fn note(result: Result<String, String>, record: &mut FaultRecord) {
    match result {
        Ok(detail) if !detail.is_empty() => record.detail.push(detail),
        Ok(_) => {}
        Err(error) => record.errors.push(error),
    }
}

/// Breaker transitions of one instance over the main phase, from `/metrics`: `breaker: from -> to` and
/// how many.
pub async fn breaker_transitions(http: &Http, base: &str) -> BTreeMap<String, f64> {
    let Ok(reply) = http.get(&format!("{base}/metrics")).await else {
        return BTreeMap::new();
    };
    let text = String::from_utf8_lossy(&reply.body);
    let mut transitions = BTreeMap::new();
    for sample in prom::parse(&text) {
        if sample.name != "breaker_transitions_total" {
            continue;
        }
        let label = |name: &str| sample.labels.get(name).map_or("?", String::as_str);
        *transitions
            .entry(format!(
                "{}: {} -> {}",
                label("breaker"),
                label("from"),
                label("to")
            ))
            .or_insert(0.0) += sample.value;
    }
    transitions
}

/// `after - before` for each transition, leaving out those that did not happen in between.
pub fn transitions_since(
    after: &BTreeMap<String, f64>,
    before: &BTreeMap<String, f64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter_map(|(name, value)| {
            let delta = value - before.get(name).copied().unwrap_or(0.0);
            (delta >= 0.5).then(|| (name.clone(), delta.round() as u64))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    fn reply(status: u16, retry_after: Option<&str>, body: &str) -> Reply {
        let mut headers = HeaderMap::new();
        if let Some(value) = retry_after {
            headers.insert(http::header::RETRY_AFTER, value.parse().unwrap());
        }
        Reply {
            status: StatusCode::from_u16(status).unwrap(),
            headers,
            body: Bytes::from(body.to_owned()),
        }
    }

    #[test]
    fn documented_refusals_are_told_apart_from_failures() {
        let moderation = r#"{"type":"/problems/moderation-unavailable","title":"x","status":503}"#;
        let store = r#"{"type":"about:blank","title":"Service Unavailable","status":503,"detail":"the idempotency store is unavailable"}"#;
        let in_use = r#"{"type":"about:blank","title":"Conflict","status":409,"detail":"a request with this Idempotency-Key is still being processed"}"#;
        assert_eq!(
            Refusal::of(&reply(503, Some("4"), moderation)),
            Some(Refusal::ModerationUnavailable)
        );
        assert_eq!(
            Refusal::of(&reply(503, Some("1"), store)),
            Some(Refusal::KeyStoreUnavailable)
        );
        assert_eq!(
            Refusal::of(&reply(409, Some("1"), in_use)),
            Some(Refusal::KeyInUse)
        );
        assert_eq!(
            Refusal::of(&reply(503, None, moderation)),
            None,
            "no Retry-After"
        );
        assert_eq!(Refusal::of(&reply(500, Some("1"), moderation)), None);
        assert_eq!(Refusal::of(&reply(503, Some("1"), "busy")), None);
    }

    #[test]
    fn resends_wait_for_retry_after_within_bounds() {
        assert_eq!(
            resend_delay(&reply(503, Some("3"), "")),
            Duration::from_secs(3)
        );
        assert_eq!(
            resend_delay(&reply(503, Some("0"), "")),
            Duration::from_millis(200)
        );
        assert_eq!(
            resend_delay(&reply(503, Some("60"), "")),
            Duration::from_secs(5)
        );
        assert_eq!(resend_delay(&reply(503, None, "")), Duration::from_secs(1));
    }

    #[test]
    fn the_schedule_never_overlaps_and_ends_within_the_phase() {
        for seconds in [10, 20, 60, 90, 300] {
            let duration = Duration::from_secs(seconds);
            let schedule = ChaosSchedule::spread(duration);
            assert_eq!(schedule.faults.len(), Fault::ORDER.len());
            for pair in schedule.faults.windows(2) {
                assert!(pair[0].end() < pair[1].start, "{seconds}s: {pair:?}");
            }
            let last = schedule.faults.last().unwrap();
            assert!(last.end() < duration);
            assert!(schedule.faults[0].start > Duration::ZERO, "a calm lead-in");
        }
    }

    #[test]
    fn periods_cover_the_phase_and_requests_fall_into_them() {
        let schedule = ChaosSchedule::spread(Duration::from_secs(20));
        let periods = schedule.periods();
        assert_eq!(periods.len(), 9);
        assert_eq!(periods[0].start, Duration::ZERO);
        assert_eq!(periods.last().unwrap().end, Duration::from_secs(20));
        for pair in periods.windows(2) {
            assert_eq!(pair[0].end, pair[1].start);
        }
        assert_eq!(schedule.period_of(Duration::ZERO), 0);
        let third = schedule.faults[2];
        assert_eq!(schedule.period_of(third.start), 3);
        assert_eq!(schedule.period_of(third.end()), 3, "the calm gap after it");
        assert_eq!(schedule.period_of(Duration::from_secs(99)), 8);
    }

    #[test]
    fn the_tally_keeps_refusals_apart_from_failures() {
        let schedule = ChaosSchedule::spread(Duration::from_secs(20));
        let tally = ChaosTally::new(schedule.clone());
        let during = schedule.faults[1].start + Duration::from_millis(10);
        let ms = Duration::from_millis;
        tally.record(Duration::ZERO, ms(2), Event::ReadServed);
        tally.record(during, ms(3), Event::ReadServed);
        tally.record(during, ms(1), Event::ReadFailed("timeout"));
        tally.record(
            during,
            ms(1),
            Event::PostRefused(Refusal::ModerationUnavailable),
        );
        tally.record(during, ms(1), Event::PostFailed("post status 500"));
        tally.record(during, ms(1), Event::PostAccepted);
        let periods = tally.periods();
        assert_eq!(
            (periods[0].requests, periods[0].reads_served),
            (1, 1),
            "calm"
        );
        let second = &periods[2];
        assert_eq!(second.fault, Some(schedule.faults[1].fault));
        assert_eq!(
            (
                second.requests,
                second.reads_served,
                second.reads_failed,
                second.posts_accepted
            ),
            (5, 1, 1, 1)
        );
        assert_eq!(second.refusals.0["503 moderation unavailable"], 1);
        assert_eq!(second.failures.0["read timeout"], 1);
        assert_eq!(second.failures.0["post status 500"], 1);
        assert_eq!(second.read_latency.count, 1);
    }

    fn counters(failed: f64, opened: f64, subscriptions: f64) -> Option<FaultCounters> {
        Some(FaultCounters {
            moderation_failed_calls: failed,
            moderation_opened: opened,
            redis_tier_errors: failed,
            subscriptions,
            ..FaultCounters::default()
        })
    }

    fn record(fault: Fault, instances: Vec<Option<FaultCounters>>) -> FaultRecord {
        FaultRecord {
            fault,
            description: String::new(),
            planned_start_s: 0.0,
            start_s: 0.0,
            end_s: 1.0,
            period_end_s: 2.0,
            detail: Vec::new(),
            errors: Vec::new(),
            instances,
            moderation: Some(ModerationCounts {
                checks: 10,
                failed: 10,
            }),
            fired: false,
            evidence: String::new(),
        }
    }

    #[test]
    fn a_fault_fired_only_with_evidence_from_every_instance() {
        let mut opened = record(
            Fault::ModerationErrors,
            vec![counters(5.0, 1.0, 0.0), counters(4.0, 0.0, 0.0)],
        );
        opened.judge(&Facts::default());
        assert!(opened.fired, "{}", opened.evidence);
        assert!(opened.evidence.contains("opened 1 "), "{}", opened.evidence);
        let mut unanswered = opened.clone();
        unanswered.moderation = Some(ModerationCounts::default());
        unanswered.judge(&Facts::default());
        assert!(!unanswered.fired, "500s the moderation service never sent");
        let mut one_quiet = record(
            Fault::ModerationHanging,
            vec![counters(5.0, 1.0, 0.0), counters(0.0, 0.0, 0.0)],
        );
        one_quiet.judge(&Facts::default());
        assert!(!one_quiet.fired);
        let mut unread = record(Fault::ModerationSlow, vec![counters(5.0, 1.0, 0.0), None]);
        unread.judge(&Facts::default());
        assert!(!unread.fired, "an instance without /metrics proves nothing");

        let killed = || {
            record(
                Fault::RedisKilled,
                vec![counters(3.0, 0.0, 1.0), counters(2.0, 0.0, 1.0)],
            )
        };
        let mut not_restarted = killed();
        not_restarted.judge(&Facts::default());
        assert!(!not_restarted.fired);
        let mut restarted = killed();
        restarted.judge(&Facts {
            restarted: true,
            ..Facts::default()
        });
        assert!(restarted.fired, "{}", restarted.evidence);
        let mut failed_to_heal = killed();
        failed_to_heal.errors.push("restart failed".into());
        failed_to_heal.judge(&Facts {
            restarted: true,
            ..Facts::default()
        });
        assert!(!failed_to_heal.fired);
        assert!(failed_to_heal.evidence.contains("restart failed"));
    }

    #[test]
    fn counters_and_transitions_from_metrics() {
        let text = "\
breaker_calls_total{breaker=\"moderation\",outcome=\"failure\"} 3
breaker_calls_total{breaker=\"moderation\",outcome=\"slow\"} 2
breaker_calls_total{breaker=\"moderation\",outcome=\"rejected\"} 40
breaker_calls_total{breaker=\"cache-redis\",outcome=\"failure\"} 9
breaker_transitions_total{breaker=\"moderation\",from=\"closed\",to=\"open\"} 1
breaker_transitions_total{breaker=\"moderation\",from=\"half_open\",to=\"closed\"} 1
breaker_transitions_total{breaker=\"cache-redis\",from=\"closed\",to=\"open\"} 2
cache_tier_errors_total{tier=\"l2\"} 12
dedup_idempotency_total{outcome=\"store_error\"} 4
cache_pubsub_subscriptions_total 3
cache_flushes_total 2
";
        let c = FaultCounters::from_text(text);
        assert_eq!(c.moderation_failed_calls, 5.0);
        assert_eq!(c.moderation_rejected_calls, 40.0);
        assert_eq!((c.moderation_opened, c.moderation_closed), (1.0, 1.0));
        assert_eq!((c.redis_tier_errors, c.redis_breaker_opened), (12.0, 2.0));
        assert_eq!(
            (c.key_store_errors, c.subscriptions, c.flushes),
            (4.0, 3.0, 2.0)
        );
        assert_eq!(c.since(&c), FaultCounters::default());

        let before: BTreeMap<String, f64> = [("moderation: closed -> open".to_owned(), 1.0)].into();
        let after: BTreeMap<String, f64> = [
            ("moderation: closed -> open".to_owned(), 3.0),
            ("cache-redis: closed -> open".to_owned(), 0.0),
        ]
        .into();
        let delta = transitions_since(&after, &before);
        assert_eq!(
            delta,
            BTreeMap::from([("moderation: closed -> open".to_owned(), 2)])
        );
    }
}
