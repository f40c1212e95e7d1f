//! Runs the whole comparison: each variant started fresh, warmed up, measured under the chat mix with its
//! outage, checked, then searched for its highest sustainable rate; the pieces go into a [`Report`].

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::Error;
use crate::chaos::{self, ChaosSchedule};
use crate::chaos_report::ChaosReport;
use crate::check;
use crate::churn::{self, ChurnPlan};
use crate::client::Http;
use crate::load::{self, FRESHNESS_BOUND, LoadEnv, LoadPlan, LoadResult, Outage, Target};
use crate::observe::{MetricCounters, Stats};
use crate::procs::{CpuPlan, Memory, find_on_path};
use crate::report::{InstanceReport, Report, VariantReport};
use crate::stack::{Stack, StackConfig, Variant};

/// Everything a run is configured with; the binary fills it from its flags.
#[derive(Clone, Debug, Serialize)]
pub struct Options {
    /// Directory holding `chat-service` and `moderation`.
    pub bin_dir: PathBuf,
    /// Where `report.json` and `report.html` go.
    pub out_dir: PathBuf,
    /// Variants to run, in order.
    pub variants: Vec<Variant>,
    /// Arrival rate of the main phase, requests per second.
    pub rate: f64,
    /// Length of the main phase.
    pub duration: Duration,
    /// Length of the warm-up before it (not measured).
    pub warmup: Duration,
    /// Most requests of one phase.
    pub max_requests: u64,
    /// In-flight cap.
    pub max_in_flight: usize,
    /// Seeded rooms.
    pub rooms: u32,
    /// Seeded messages per room.
    pub messages_per_room: u32,
    /// Identical GETs per page refresh.
    pub burst: u32,
    /// Zipf exponent of room popularity.
    pub zipf_exponent: f64,
    /// Share of acknowledged posts retried.
    pub retry_share: f64,
    /// Moderation outage length in the main phase (none when zero).
    pub outage: Duration,
    /// The max-rate search, if any.
    pub search: Option<RateSearch>,
    /// Seed of the generator.
    pub seed: u64,
    /// Client timeout per request.
    pub timeout: Duration,
    /// CPU pinning (decided before the runtime starts; see [`CpuPlan::pin_this_process`]).
    pub cpus: CpuPlan,
    /// Show progress bars.
    pub progress: bool,
    /// The churn phase of the stacked variants, if any.
    pub churn: Option<ChurnPlan>,
    /// Run the chaos scenario instead of the comparison ([`run_chaos`]).
    pub chaos: bool,
    /// Arguments added to every chat-service command line.
    pub chat_args: Vec<String>,
}

/// How the highest sustainable rate is searched: step up by `factor` from `start` until a step fails (or
/// `ceiling` passes), then bisect between the last good and the first bad rate `bisections` times.
#[derive(Clone, Debug, Serialize)]
pub struct RateSearch {
    /// First rate tried.
    pub start: f64,
    /// Multiplier of the step-up.
    pub factor: f64,
    /// No rate above this is tried.
    pub ceiling: f64,
    /// Bisection steps after the step-up.
    pub bisections: u32,
    /// Length of each step.
    pub step: Duration,
    /// A step passes when its p99 (every class) is at most this, it has no error, and it answered at least
    /// 90 % of the rate.
    pub p99_bound: Duration,
    /// A rate measured as well once the search is over, unless it tried it already: the first variant's
    /// highest sustained rate, so every later variant has a step at the load the first one could just take.
    pub also_at: Option<f64>,
}

/// One step of the search.
#[derive(Clone, Debug, Serialize)]
pub struct RateStep {
    /// Rate offered.
    pub rate: f64,
    /// Answers per second achieved.
    pub achieved: f64,
    /// p99 of every class, ms.
    pub p99_ms: f64,
    /// p99 of the history classes, ms.
    pub history_p99_ms: f64,
    /// Errors.
    pub errors: u64,
    /// Whether the step passed.
    pub sustained: bool,
}

/// Result of the search.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MaxRate {
    /// The p99 bound, ms.
    pub p99_bound_ms: f64,
    /// Steps in the order run.
    pub steps: Vec<RateStep>,
    /// Highest rate that passed.
    pub sustained: Option<f64>,
}

/// The step-up-then-bisect state machine of the search, apart from any load so it can be tested.
#[derive(Clone, Debug)]
pub struct SearchState {
    search: RateSearch,
    good: Option<f64>,
    bad: Option<f64>,
    bisections_left: u32,
}

impl SearchState {
    /// A search that has tried nothing yet.
    pub fn new(search: RateSearch) -> Self {
        let bisections_left = search.bisections;
        Self {
            search,
            good: None,
            bad: None,
            bisections_left,
        }
    }

    /// The next rate to try, `None` when the search is over.
    pub fn next_rate(&self) -> Option<f64> {
        match (self.good, self.bad) {
            (None, None) => Some(self.search.start),
            (Some(good), None) => (good < self.search.ceiling)
                .then(|| (good * self.search.factor).min(self.search.ceiling)),
            (good, Some(bad)) => {
                let low = good.unwrap_or(0.0);
                // Stop bisecting once the interval is within 5 % of the good rate, or on budget.
                let narrow = good.is_some_and(|g| bad - g <= g * 0.05);
                (self.bisections_left > 0 && !narrow).then(|| (low + bad) / 2.0)
            }
        }
    }

    /// Records the outcome of a step at `rate`.
    pub fn record(&mut self, rate: f64, sustained: bool) {
        if self.bad.is_some() {
            self.bisections_left = self.bisections_left.saturating_sub(1);
        }
        if sustained {
            self.good = Some(self.good.map_or(rate, |g| g.max(rate)));
        } else {
            self.bad = Some(self.bad.map_or(rate, |b| b.min(rate)));
        }
    }

    /// Highest rate that passed so far.
    pub fn sustained(&self) -> Option<f64> {
        self.good
    }
}

/// Whether a search step passed: p99 within `bound`, no errors, and at least 90 % of `rate` answered per second.
pub fn step_passes(rate: f64, result: &LoadResult, bound: Duration) -> bool {
    let p99 = result.latencies.all().quantile_ms(0.99);
    p99 <= bound.as_secs_f64() * 1000.0
        && result.errors.total() == 0
        && result.throughput() >= 0.9 * rate
}

/// Runs every variant of `options` and builds the report. Processes are stopped when each variant ends, and
/// also when this future is dropped (Ctrl-C).
pub async fn run(options: &Options) -> Result<Report, Error> {
    if options.chaos {
        return run_chaos(options).await;
    }
    let bars = progress_bars(options);
    let mut report = Report::new(options);
    let run_id = run_id();
    let mut options = options.clone();
    for (index, &variant) in options.variants.clone().iter().enumerate() {
        let variant_report =
            run_variant(&options, variant, &format!("{run_id}v{index}"), &bars).await?;
        // Latency compares best where the first variant (bare) is at its limit: see `RateSearch::also_at`.
        if index == 0
            && let Some(search) = options.search.as_mut()
        {
            search.also_at = variant_report.max_sustained();
        }
        report.variants.push(variant_report);
    }
    report.finish();
    Ok(report)
}

fn progress_bars(options: &Options) -> MultiProgress {
    MultiProgress::with_draw_target(if options.progress {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    })
}

/// Unique per run: part of every post's token.
fn run_id() -> String {
    format!(
        "{}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    )
}

/// Runs the chaos scenario: two stacked instances sharing a redis-server, with Redis and moderation behind
/// fault proxies, under the chat mix at the main rate while the faults of
/// [`ChaosSchedule::spread`]`(duration)` happen; then the history of every touched room is read back on both
/// instances. Refused posts are sent again with their key until accepted.
///
/// Needs `redis-server` and `redis-cli` on `PATH`.
pub async fn run_chaos(options: &Options) -> Result<Report, Error> {
    for program in ["redis-server", "redis-cli"] {
        if find_on_path(program).is_none() {
            return Err(Error::Setup(format!(
                "--chaos runs two chat-service instances sharing a redis-server, and {program} is not on PATH: \
                 install it (apt-get install -y redis-server; `cargo xtask test` installs it too)"
            )));
        }
    }
    let bars = progress_bars(options);
    let variant = Variant::Stacked2;
    let mut config = stack_config(options);
    config.fault_proxies = true;
    let starting = bars.add(ProgressBar::new_spinner());
    starting.set_message(format!(
        "{variant}: starting and seeding, with fault proxies"
    ));
    starting.enable_steady_tick(Duration::from_millis(200));
    let stack = tokio::task::spawn_blocking(move || Stack::start(variant, &config))
        .await
        .map_err(|e| Error::Setup(format!("starting {variant}: {e}")))??;
    starting.finish_and_clear();
    let mut stack = stack;
    let env = load_env(&stack, Http::new(options.timeout), format!("{}x", run_id()));
    let http = &env.http;
    warm_up(options, &env, &bars, variant).await;
    let own: Vec<u32> = std::iter::once(std::process::id())
        .chain(std::iter::once(stack.moderation().pid()))
        .chain(stack.instances().iter().map(|s| s.pid()))
        .chain(stack.redis_pid())
        .collect();
    let load_before = crate::procs::load_average();
    let other_cpu = crate::procs::OtherCpu::start(own);
    let before = snapshot(http, &env.targets).await?;
    let mut transitions_before = Vec::new();
    for target in &env.targets {
        transitions_before.push(chaos::breaker_transitions(http, &target.base).await);
    }
    let mut plan = main_plan(options, "chaos");
    plan.outage = None;
    plan.chaos = Some(ChaosSchedule::spread(options.duration));
    let pb = bar(
        &bars,
        &format!("{variant} chaos {:.0} req/s", options.rate),
        plan.duration,
    );
    let mut main = load::run(&env, &plan, &pb).await;
    pb.finish();
    let after = snapshot(http, &env.targets).await?;
    let mut transitions = Vec::new();
    for (target, before) in env.targets.iter().zip(&transitions_before) {
        let after = chaos::breaker_transitions(http, &target.base).await;
        transitions.push((
            target.name.clone(),
            chaos::transitions_since(&after, before),
        ));
    }
    let load_after = crate::procs::load_average();
    let other_cpu_cores = other_cpu.and_then(|m| m.cores());
    tokio::time::sleep(FRESHNESS_BOUND).await;
    let history =
        check::verify_history(http, &env.targets, &main.ledger, &main.touched_rooms).await;
    stack.check_alive()?;
    let chaos_result = main.chaos.take();
    let mut instances = instance_reports(&env.targets, &before, &after, &main);
    for (instance, service) in instances.iter_mut().zip(stack.instances()) {
        if let Some(memory) = service.memory() {
            instance.peak_rss_mib = instance.peak_rss_mib.max(memory.peak_mib());
        }
    }
    let mut variant_report = VariantReport::new(variant, main, history, None, instances, None);
    variant_report.load_average = (load_before, load_after);
    variant_report.other_cpu_cores = other_cpu_cores;
    let mut report = Report::new(options);
    report.chaos = Some(ChaosReport::new(
        plan.chaos
            .unwrap_or_else(|| ChaosSchedule::spread(options.duration)),
        chaos_result,
        &variant_report,
        transitions,
    ));
    report.variants.push(variant_report);
    report.finish();
    Ok(report)
}

fn bar(bars: &MultiProgress, label: &str, length: Duration) -> ProgressBar {
    let bar = bars.add(ProgressBar::new(
        u64::try_from(length.as_millis()).unwrap_or(u64::MAX),
    ));
    let style = ProgressStyle::with_template("{prefix:>24} [{bar:30}] {elapsed:>4} {msg}")
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_prefix(label.to_owned());
    bar
}

/// The services every variant of a run starts: the binaries, the seed, the CPUs and the
/// `--chat-arg` arguments.
fn stack_config(options: &Options) -> StackConfig {
    let mut config = StackConfig::new(
        options.bin_dir.clone(),
        options.rooms,
        options.messages_per_room,
        options.cpus,
    );
    config.chat_args = options.chat_args.iter().map(Into::into).collect();
    config
}

async fn run_variant(
    options: &Options,
    variant: Variant,
    run_id: &str,
    bars: &MultiProgress,
) -> Result<VariantReport, Error> {
    let config = stack_config(options);
    let starting = bars.add(ProgressBar::new_spinner());
    starting.set_message(format!("{variant}: starting and seeding"));
    starting.enable_steady_tick(Duration::from_millis(200));
    let stack = tokio::task::spawn_blocking(move || Stack::start(variant, &config))
        .await
        .map_err(|e| Error::Setup(format!("starting {variant}: {e}")))??;
    starting.finish_and_clear();
    let http = Http::new(options.timeout);
    let env = load_env(&stack, http.clone(), run_id.to_owned());
    let mut stack = stack;
    let mut own = vec![std::process::id(), stack.moderation().pid()];
    own.extend(stack.instances().iter().map(|s| s.pid()));
    own.extend(stack.redis_pid());
    let result = measure_variant(options, variant, &env, &own, bars).await;
    let alive = stack.check_alive();
    let mut report = result?;
    alive?;
    for (instance, service) in report.instances.iter_mut().zip(stack.instances()) {
        if let Some(memory) = service.memory() {
            instance.peak_rss_mib = instance.peak_rss_mib.max(memory.peak_mib());
        }
    }
    if let Some(plan) = options.churn.as_ref().filter(|_| variant.is_stacked()) {
        let plan = ChurnPlan {
            run_id: format!("{run_id}c"),
            ..plan.clone()
        };
        let pb = bar(bars, &format!("{variant} churn"), plan.duration);
        pb.enable_steady_tick(Duration::from_millis(200));
        let churned = churn::run(&env.http, &env.targets, env.seeded, &plan).await;
        pb.finish_and_clear();
        stack.check_alive()?;
        for (instance, churned) in report.instances.iter_mut().zip(churned) {
            instance.churn = Some(churned);
        }
    }
    Ok(report)
}

/// What the generator needs to load a started stack: its instances, moderation, the fault
/// controls when it has fault proxies, and its seed.
pub fn load_env(stack: &Stack, http: Http, run_id: String) -> LoadEnv {
    LoadEnv {
        http,
        targets: targets(stack),
        moderation: stack.moderation().base_url(),
        faults: stack.fault_controls(),
        seeded: stack.seeded(),
        run_id,
    }
}

/// The targets of a started stack.
pub fn targets(stack: &Stack) -> Vec<Target> {
    stack
        .instances()
        .iter()
        .map(|service| Target {
            name: service.name().to_owned(),
            base: service.base_url(),
            pid: Some(service.pid()),
        })
        .collect()
}

/// The unmeasured warm-up of `options` (none when its length is zero): the main mix without the outage
/// or freshness checks, on a seed of its own.
async fn warm_up(options: &Options, env: &LoadEnv, bars: &MultiProgress, variant: Variant) {
    if options.warmup.is_zero() {
        return;
    }
    let mut warmup = main_plan(options, "warm-up");
    warmup.duration = options.warmup;
    warmup.outage = None;
    warmup.check_freshness = false;
    warmup.seed = options.seed ^ 0x5eed;
    let pb = bar(bars, &format!("{variant} warm-up"), warmup.duration);
    load::run(env, &warmup, &pb).await;
    pb.finish_and_clear();
}

/// The load plan of the main phase for `options`.
pub fn main_plan(options: &Options, label: &str) -> LoadPlan {
    let outage = (options.outage > Duration::ZERO).then(|| Outage {
        // In the middle of the run, so the load before and after it is measured too.
        start: options.duration.mul_f64(0.4),
        length: options.outage,
        grace: Duration::from_secs(10),
    });
    LoadPlan {
        rate: options.rate,
        duration: options.duration,
        max_requests: options.max_requests,
        max_in_flight: options.max_in_flight,
        burst: options.burst,
        zipf_exponent: options.zipf_exponent,
        retry_share: options.retry_share,
        outage,
        chaos: None,
        check_freshness: true,
        seed: options.seed,
        label: label.to_owned(),
    }
}

async fn measure_variant(
    options: &Options,
    variant: Variant,
    env: &LoadEnv,
    own_pids: &[u32],
    bars: &MultiProgress,
) -> Result<VariantReport, Error> {
    let http = &env.http;
    // Identical GETs for a URL nobody asked for, before any other traffic, so /stats counts only them.
    let cold = match env.targets.first() {
        Some(target) if variant != Variant::Bare || options.burst > 1 => check::cold_burst(
            http,
            target,
            1,
            options.burst.max(2) * 4,
            options.seed as u32,
        )
        .await
        .ok(),
        _ => None,
    };
    warm_up(options, env, bars, variant).await;
    let load_before = crate::procs::load_average();
    let other_cpu = crate::procs::OtherCpu::start(own_pids.to_vec());
    let before = snapshot(http, &env.targets).await?;
    let plan = main_plan(options, "main");
    let pb = bar(
        bars,
        &format!("{variant} {:.0} req/s", options.rate),
        plan.duration,
    );
    let main = load::run(env, &plan, &pb).await;
    pb.finish();
    let after = snapshot(http, &env.targets).await?;
    let load_after = crate::procs::load_average();
    let other_cpu_cores = other_cpu.and_then(|m| m.cores());
    // Posts acknowledged in the last moments must have had their bound before the history is read.
    tokio::time::sleep(FRESHNESS_BOUND).await;
    let history =
        check::verify_history(http, &env.targets, &main.ledger, &main.touched_rooms).await;

    let max_rate = match &options.search {
        Some(search) => Some(find_max_rate(env, &plan, search, bars, variant).await),
        None => None,
    };

    let instances = instance_reports(&env.targets, &before, &after, &main);
    let mut report = VariantReport::new(variant, main, history, cold, instances, max_rate);
    report.load_average = (load_before, load_after);
    report.other_cpu_cores = other_cpu_cores;
    Ok(report)
}

/// What each instance did in a main phase, from `/stats` and `/metrics` read `before` and `after` it.
fn instance_reports(
    targets: &[Target],
    before: &[(Stats, Option<MetricCounters>)],
    after: &[(Stats, Option<MetricCounters>)],
    main: &LoadResult,
) -> Vec<InstanceReport> {
    targets
        .iter()
        .enumerate()
        .map(|(i, target)| {
            let (stats_before, metrics_before) = &before[i];
            let (stats_after, metrics_after) = &after[i];
            let stats = stats_after.since(stats_before);
            let metrics = match (metrics_after, metrics_before) {
                (Some(after), Some(before)) => Some(after.since(before)),
                _ => None,
            };
            let memory = main.memory.get(i).copied().unwrap_or_default();
            let reads = main.reads_per_target.get(i).copied().unwrap_or(0);
            InstanceReport {
                name: target.name.clone(),
                reads,
                db_queries: stats.db_queries,
                db_duplicate_queries: stats.db_duplicate_queries,
                queries_per_read: crate::stats::ratio(stats.db_queries, reads),
                metrics_hit_rate: metrics.and_then(|m| m.hit_rate()),
                breaker_transitions_metrics: metrics.map(|m| m.breaker_transitions),
                leases_waited_gave_up: metrics.map(|m| (m.leases_waited, m.leases_gave_up)),
                peak_rss_mib: Memory::peak_mib(&memory),
                churn: None,
            }
        })
        .collect()
}

async fn snapshot(
    http: &Http,
    targets: &[Target],
) -> Result<Vec<(Stats, Option<MetricCounters>)>, Error> {
    let mut out = Vec::new();
    for target in targets {
        let stats = Stats::fetch(http, &target.base)
            .await
            .map_err(Error::Setup)?;
        let metrics = MetricCounters::fetch(http, &target.base).await;
        out.push((stats, metrics));
    }
    Ok(out)
}

/// Searches the highest rate `env` sustains with the mix of `template` (no outage, no freshness checks).
pub async fn find_max_rate(
    env: &LoadEnv,
    template: &LoadPlan,
    search: &RateSearch,
    bars: &MultiProgress,
    variant: Variant,
) -> MaxRate {
    let mut state = SearchState::new(search.clone());
    let mut result = MaxRate {
        p99_bound_ms: search.p99_bound.as_secs_f64() * 1000.0,
        ..MaxRate::default()
    };
    let mut step_seed = template.seed;
    let mut step = async |rate: f64, label: &str| {
        step_seed = step_seed.wrapping_add(1);
        let plan = LoadPlan {
            rate,
            duration: search.step,
            outage: None,
            check_freshness: false,
            seed: step_seed,
            label: format!("max-rate {rate:.0}"),
            ..template.clone()
        };
        let pb = bar(
            bars,
            &format!("{variant} {label} {rate:.0}/s"),
            plan.duration,
        );
        let run = load::run(env, &plan, &pb).await;
        pb.finish_and_clear();
        RateStep {
            rate,
            achieved: run.throughput(),
            p99_ms: run.latencies.all().quantile_ms(0.99),
            history_p99_ms: run.latencies.history().quantile_ms(0.99),
            errors: run.errors.total(),
            sustained: step_passes(rate, &run, search.p99_bound),
        }
    };
    while let Some(rate) = state.next_rate() {
        let recorded = step(rate, "max-rate").await;
        state.record(rate, recorded.sustained);
        result.steps.push(recorded);
        // A failed step leaves a queue behind in the server; let it drain before the next step.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    result.sustained = state.sustained();
    if let Some(rate) = search
        .also_at
        .filter(|rate| !result.steps.iter().any(|step| step.rate == *rate))
    {
        // A measurement only: the search's outcome stays as it was.
        result.steps.push(step(rate, "at").await);
    }
    result
}

/// Reads a duration such as `30s`, `500ms`, `2m` or `1.5s`; a bare number is seconds.
///
/// ```
/// use std::time::Duration;
/// use chat_loadtest::runner::parse_duration;
///
/// assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
/// assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
/// assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
/// assert!(parse_duration("soon").is_err());
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 30s, 500ms or 2m"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?}: use ms, s, m or h"
            ));
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_gets_the_chat_args() {
        let mut options = crate::report::tests::options(vec![Variant::Bare, Variant::Stacked]);
        options.chat_args = vec!["--l1-ttl-cap=1s".to_owned()];
        assert_eq!(
            stack_config(&options).chat_args,
            vec![std::ffi::OsString::from("--l1-ttl-cap=1s")]
        );
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration(" 10ms "), Ok(Duration::from_millis(10)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    fn search(bisections: u32) -> RateSearch {
        RateSearch {
            start: 500.0,
            factor: 2.0,
            ceiling: 100_000.0,
            bisections,
            step: Duration::from_secs(1),
            p99_bound: Duration::from_millis(100),
            also_at: None,
        }
    }

    /// Runs the state machine against a server that sustains rates up to `capacity`.
    fn simulate(search: RateSearch, capacity: f64) -> (Vec<f64>, Option<f64>) {
        let mut state = SearchState::new(search);
        let mut tried = Vec::new();
        while let Some(rate) = state.next_rate() {
            assert!(tried.len() < 100, "the search ends");
            tried.push(rate);
            state.record(rate, rate <= capacity);
        }
        (tried, state.sustained())
    }

    #[test]
    fn steps_up_then_bisects() {
        let (tried, best) = simulate(search(3), 3_000.0);
        assert_eq!(
            tried,
            vec![500.0, 1000.0, 2000.0, 4000.0, 3000.0, 3500.0, 3250.0]
        );
        assert_eq!(best, Some(3000.0));
    }

    #[test]
    fn a_failing_first_step_searches_below_it() {
        let (tried, best) = simulate(search(2), 200.0);
        assert_eq!(tried, vec![500.0, 250.0, 125.0]);
        assert_eq!(best, Some(125.0));
    }

    #[test]
    fn nothing_sustained_is_reported_as_none() {
        let (_, best) = simulate(search(2), 0.0);
        assert_eq!(best, None);
    }

    #[test]
    fn the_ceiling_ends_the_step_up() {
        let mut s = search(2);
        s.ceiling = 1500.0;
        let (tried, best) = simulate(s, f64::INFINITY);
        assert_eq!(tried, vec![500.0, 1000.0, 1500.0]);
        assert_eq!(best, Some(1500.0));
    }

    #[test]
    fn bisection_stops_when_the_interval_is_narrow() {
        let (tried, best) = simulate(search(10), 1990.0);
        let last = *tried.last().unwrap();
        assert!(tried.len() < 14, "{tried:?}");
        assert!(
            best.unwrap() <= 1990.0 && best.unwrap() >= 1990.0 * 0.95,
            "{best:?} {last}"
        );
    }
}
