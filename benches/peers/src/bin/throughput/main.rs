//! Served-HTTP throughput of the workspace's layers and their peers, as ratios against bare axum measured
//! in the same run, the way users see it: the server saturated on a core of its own.
//!
//! Every variant is the same axum `Router` (one route, one handler returning a fixed ~1 KiB JSON body with
//! `Cache-Control: public, max-age=60`) wrapped differently. Each variant's server is a process of its own
//! (this binary re-executed in its hidden `serve` mode) with one Tokio worker thread, pinned to CPU 1 by
//! default (`--pin split`); `wrk -t1` pinned to CPU 0 loads it through `--connections` keep-alive
//! connections. Rounds visit the variants in a shuffled order, so drift of the machine's load spreads over
//! all of them; the report takes medians over rounds.
//!
//! Besides wrk's requests per second and latency it reads the server process's CPU time
//! (`/proc/PID/task/*/schedstat`) — its cost per request is the measure other processes' load disturbs
//! least — and its peak resident memory (`VmHWM`). Results go to JSON, a markdown report and an SVG chart
//! (`--out`), and optionally into the marked section of docs/performance.md (`--doc`).
//!
//! ```text
//! cargo run --release --bin throughput -- [--variants a,b,c] [--no-peers] [--rounds N] [--seconds S]
//!     [--warmup S] [--connections C] [--seed N] [--pin split|shared|off] [--quiet-wait S] [--out DIR]
//!     [--doc PATH] [--command TEXT]
//! ```

mod chart;
mod report;
mod serve;
mod server;
mod system;
mod validate;
mod variants;
mod wrk;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use report::{Machine, Report, RunSettings, Sample};
use server::ServerProcess;
use system::{Pinning, Usage};
use validate::{OtlpSink, SpanSize};
use variants::{ALL, Variant};
use wrk::{Load, ScriptDir};

type Error = Box<dyn std::error::Error + Send + Sync>;
type Result<T, E = Error> = std::result::Result<T, E>;

fn main() {
    let args: Result<Vec<String>> = std::env::args_os()
        .skip(1)
        .map(|a| {
            a.into_string()
                .map_err(|a| format!("argument {a:?} is not UTF-8").into())
        })
        .collect();
    let result = args.and_then(|args| match args.split_first() {
        Some((mode, rest)) if mode == "serve" => serve::run(rest),
        _ => run(&args),
    });
    match result {
        // `exit` skips destructors: a server's telemetry would otherwise try a last export to a sink
        // that is gone with the parent.
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Arguments

struct Args {
    variants: Vec<Variant>,
    rounds: usize,
    seconds: u64,
    warmup: u64,
    connections: usize,
    seed: u64,
    pinning: Pinning,
    quiet_wait: f64,
    out: PathBuf,
    doc: Option<PathBuf>,
    /// The command line the report records.
    command: Option<String>,
}

const USAGE: &str = "usage: throughput [--variants a,b,c] [--no-peers] [--rounds N] [--seconds S] [--warmup S] \
                     [--connections C] [--seed N] [--pin split|shared|off] [--quiet-wait S] [--out DIR] \
                     [--doc PATH] [--command TEXT]

  --variants a,b,c   variants to measure (default: all); bare is always added, and origin-2ms with stack-miss
  --no-peers         leave out the other projects' middleware
  --rounds N         rounds; each visits every variant once in a shuffled order (default 3)
  --seconds S        measured wrk run per variant and round, whole seconds (default 5)
  --warmup S         unmeasured wrk run before each measured one, whole seconds, 0 for none (default 1)
  --connections C    wrk's keep-alive connections (default 32)
  --seed N           seed of the shuffle (default: from the clock; printed, so a run can be repeated)
  --pin MODE         split: server on CPU 1, wrk on CPU 0 (default); shared: both on CPU 0; off: unpinned
  --quiet-wait S     before each window, wait up to S s for other processes to leave the CPUs (default 3)
  --out DIR          throughput.json, throughput.md and throughput.svg go here (default benches/peers/results)
  --doc PATH         also rewrite the served-benchmark section of PATH (docs/performance.md) and write the
                     chart to img/throughput.svg beside it
  --command TEXT     the command line the report records (default: this harness's own, through cargo run)";

impl Args {
    fn parse(raw: &[String]) -> Result<Self> {
        let mut args = Self {
            variants: ALL.to_vec(),
            rounds: 3,
            seconds: 5,
            warmup: 1,
            connections: 32,
            seed: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1),
            pinning: Pinning::Split,
            quiet_wait: 3.0,
            out: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results"),
            doc: None,
            command: None,
        };
        let mut peers = true;
        let mut it = raw.iter();
        while let Some(flag) = it.next() {
            match flag.as_str() {
                "--help" | "-h" => {
                    println!("{USAGE}\n\nvariants: {}", ALL.map(Variant::name).join(", "));
                    std::process::exit(0);
                }
                "--no-peers" => {
                    peers = false;
                    continue;
                }
                _ => {}
            }
            let value = it
                .next()
                .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
            let number = |what: &str| format!("{flag} takes {what}, not `{value}`");
            match flag.as_str() {
                "--variants" => {
                    let mut chosen = Vec::new();
                    for name in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                        chosen.push(Variant::parse(name).ok_or_else(|| {
                            format!(
                                "unknown variant `{name}`; known: {}",
                                ALL.map(Variant::name).join(", ")
                            )
                        })?);
                    }
                    args.variants = chosen;
                }
                "--rounds" => args.rounds = value.parse().map_err(|_| number("a count"))?,
                "--seconds" => args.seconds = value.parse().map_err(|_| number("whole seconds"))?,
                "--warmup" => args.warmup = value.parse().map_err(|_| number("whole seconds"))?,
                "--connections" => {
                    args.connections = value.parse().map_err(|_| number("a count"))?
                }
                "--seed" => args.seed = value.parse().map_err(|_| number("a number"))?,
                "--quiet-wait" => args.quiet_wait = value.parse().map_err(|_| number("seconds"))?,
                "--pin" => {
                    args.pinning = Pinning::parse(value)
                        .ok_or_else(|| format!("--pin takes split, shared or off\n{USAGE}"))?
                }
                "--out" => args.out = value.into(),
                "--doc" => args.doc = Some(value.into()),
                "--command" => args.command = Some(value.clone()),
                _ => return Err(format!("unknown option {flag}\n{USAGE}").into()),
            }
        }
        // The ratios need their baselines in the same run.
        args.variants.push(Variant::Bare);
        if args.variants.contains(&Variant::StackMiss) {
            args.variants.push(Variant::Origin2ms);
        }
        if !peers {
            args.variants.retain(|v| !v.is_peer());
        }
        args.variants.sort();
        args.variants.dedup();

        if !(1..=50).contains(&args.rounds) {
            return Err("--rounds must be 1..=50".into());
        }
        if !(1..=60).contains(&args.seconds) {
            return Err("--seconds must be 1..=60 (wrk takes whole seconds)".into());
        }
        if args.warmup > 30 {
            return Err("--warmup must be 0..=30".into());
        }
        if !(0.0..=60.0).contains(&args.quiet_wait) {
            return Err("--quiet-wait must be 0..=60".into());
        }
        if !(1..=1024).contains(&args.connections) {
            return Err("--connections must be 1..=1024".into());
        }
        if args.pinning != Pinning::Off && system::cpu_count() < 2 {
            return Err("--pin split and shared need 2 CPUs; use --pin off".into());
        }
        Ok(args)
    }

    /// Upper bound of the run's load phase, and of the waiting it may add.
    fn bounds(&self) -> (f64, f64) {
        // wrk's start and the harness's commands add a few tens of milliseconds to each run.
        let per_window =
            system::QUIET_SAMPLE.as_secs_f64() + self.warmup as f64 + self.seconds as f64 + 0.1;
        let windows = (self.variants.len() * self.rounds) as f64;
        (windows * per_window, windows * self.quiet_wait)
    }
}

/// SplitMix64: enough randomness to shuffle the order of variants, reproducible from `--seed`.
struct Shuffle(u64);

impl Shuffle {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            items.swap(i, j);
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// The run

fn run(raw: &[String]) -> Result<()> {
    let args = Args::parse(raw)?;
    if system::find_on_path("wrk").is_none() {
        return Err("wrk not found on PATH: it is the load generator; install it with `apt-get install wrk` \
                    (Debian/Ubuntu) or your system's package manager"
            .into());
    }
    if args.pinning != Pinning::Off && system::find_on_path("taskset").is_none() {
        return Err("taskset not found on PATH: install util-linux, or run with --pin off".into());
    }
    let command = args.command.clone().unwrap_or_else(|| {
        format!(
            "cargo run --release --bin throughput --{}",
            raw.iter().map(|a| format!(" {a}")).collect::<String>()
        )
    });
    let (load, waiting) = args.bounds();
    eprintln!(
        "{} variants × {} round{}: about {:.0} s of load, at most {:.0} s more waiting for other processes to \
         leave the CPUs alone (plus start-up and validation); seed {}",
        args.variants.len(),
        args.rounds,
        if args.rounds == 1 { "" } else { "s" },
        load,
        waiting,
        args.seed
    );
    let started = Instant::now();
    let load_before = system::load_average();
    // Read before anything is measured: the binary was built from this state.
    let source = system::source_state();
    let _ = system::cpu_count();
    // Threads inherit the affinity of the thread that creates them: pinning this one first puts the sink's
    // and the validation client's threads on the client's CPU. Servers and wrk are pinned when started.
    if let Some(cpu) = args.pinning.client_cpu() {
        let tid = system::current_tid().ok_or("cannot read /proc/thread-self")?;
        system::pin_thread(tid, cpu)?;
    }
    let sink = OtlpSink::start()?;
    let scripts = ScriptDir::create()?;
    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // A fresh server process for every window: the same binary serving the same variant runs up to 40 %
    // faster or slower from one process to the next on this kind of machine (memory layout, page placement),
    // steadily for the life of the process. Started once and kept, a variant would carry one process's luck
    // through every round; restarted, the rounds sample it and the median evens it out.
    let start = |variant: Variant,
                 span_sizes: &mut HashMap<Variant, validate::SpanSize>|
     -> Result<ServerProcess> {
        let mut server = ServerProcess::spawn(variant, args.pinning.server_cpu(), sink.addr)?;
        if let Some(size) = client.block_on(validate::validate(&mut server, &sink))? {
            span_sizes.entry(variant).or_insert(size);
        }
        Ok(server)
    };
    let mut span_sizes = HashMap::new();
    for &variant in &args.variants {
        let server = start(variant, &mut span_sizes)?;
        eprintln!(
            "validated {:<22} pid {} on {}",
            variant.name(),
            server.pid,
            server.addr
        );
    }

    let settings = Settings {
        connections: args.connections,
        seconds: args.seconds,
        warmup: args.warmup,
        cpu: args.pinning.client_cpu(),
        scripts: &scripts,
    };
    let mut samples: BTreeMap<Variant, Vec<Sample>> = BTreeMap::new();
    let mut peaks: BTreeMap<Variant, f64> = BTreeMap::new();
    let mut waited = Duration::ZERO;
    let mut shuffle = Shuffle(args.seed);
    let mut order: Vec<Variant> = args.variants.clone();
    for round in 1..=args.rounds {
        shuffle.shuffle(&mut order);
        for &variant in &order {
            let name = variant.name();
            let mut server = start(variant, &mut span_sizes)
                .map_err(|e| format!("{name} (round {round}): {e}"))?;
            let pids = [std::process::id(), server.pid];
            waited += system::wait_for_quiet(
                &pids,
                args.pinning.quiet_cores(),
                Duration::from_secs_f64(args.quiet_wait),
            );
            let span_size = span_sizes.get(&variant);
            let sample = measure(&mut server, &pids, &sink, span_size, &settings, round)
                .map_err(|e| format!("{name} (round {round}): {e}"))?;
            // After the load: every probe again (breaker still closed, dedup's map empty), then the peak.
            server
                .check_settled(Duration::from_secs(2))
                .map_err(|e| format!("{name} (round {round}), after the load: {e}"))?;
            let peak = server.memory()?.peak_mb;
            let kept = peaks.entry(variant).or_insert(peak);
            *kept = kept.max(peak);
            eprintln!(
                "round {round}/{} {name:<22} {:>8.0} req/s  p99 {:>6.0} µs  server {:>6.2} µs/req  busy server \
                 {:.2} wrk {:.2}  others {:.2}",
                args.rounds,
                sample.rps,
                sample.p99_us,
                sample.server_cpu_us,
                sample.server_busy,
                sample.generator_busy,
                sample.others_cores,
            );
            samples.entry(variant).or_default().push(sample);
        }
    }

    let mut report = Report {
        date: system::utc_now(),
        source,
        command,
        machine: Machine {
            cpus: system::cpu_count(),
            cpu_model: system::cpu_model(),
            kernel: system::kernel(),
            load_before,
            load_after: system::load_average(),
        },
        settings: RunSettings {
            rounds: args.rounds,
            seconds: args.seconds,
            warmup_seconds: args.warmup,
            connections: args.connections,
            wrk_threads: wrk::THREADS,
            rotating_urls: wrk::ROOMS,
            seed: args.seed,
            pinning: args.pinning.name(),
            pinning_detail: args.pinning.describe(),
            quiet_wait_seconds: args.quiet_wait,
            quiet_cores: args.pinning.quiet_cores(),
            waited_seconds: waited.as_secs_f64(),
            elapsed_seconds: started.elapsed().as_secs_f64(),
        },
        body_bytes: serve::body().len(),
        variants: Report::summarise(&samples, &peaks),
        targets: Vec::new(),
    };
    report.judge_targets();

    println!(
        "\nRequests per second:\n\n{}\nServer CPU per request:\n\n{}",
        report.throughput_table(),
        report.cost_table()
    );
    let notes = report.notes();
    if !notes.is_empty() {
        println!("{notes}");
    }
    if !report.targets.is_empty() {
        println!("Targets:\n\n{}", report.targets_table());
    }
    let svg = chart::render(&report);
    let json = args.out.join("throughput.json");
    report.write_json(&json)?;
    report::write_file(&args.out.join("throughput.svg"), &svg)?;
    let markdown = args.out.join("throughput.md");
    report::write_file(&markdown, &report.markdown(Some("throughput.svg")))?;
    eprintln!(
        "wrote {}, {} and throughput.svg",
        json.display(),
        markdown.display()
    );
    if let Some(doc) = &args.doc {
        let page =
            std::fs::read_to_string(doc).map_err(|e| format!("reading {}: {e}", doc.display()))?;
        let chart = doc
            .parent()
            .unwrap_or(std::path::Path::new("."))
            .join("img")
            .join("throughput.svg");
        report::write_file(&chart, &svg)?;
        let page = report::replace_section(&page, &report.section(Some("img/throughput.svg")))
            .map_err(|e| format!("{}: {e}", doc.display()))?;
        report::write_file(doc, &page)?;
        eprintln!("rewrote {} and {}", doc.display(), chart.display());
    }
    Ok(())
}

/// What every window shares.
struct Settings<'a> {
    connections: usize,
    seconds: u64,
    warmup: u64,
    /// wrk's CPU.
    cpu: Option<usize>,
    scripts: &'a ScriptDir,
}

/// One variant's window in one round: an unmeasured wrk run, then the measured one.
fn measure(
    server: &mut ServerProcess,
    pids: &[u32],
    sink: &OtlpSink,
    span_size: Option<&SpanSize>,
    settings: &Settings,
    round: usize,
) -> Result<Sample> {
    let body_len = serve::body().len();
    let (addr, urls) = (server.addr, server.variant.urls());
    let load = |seconds: u64, tag: &str| {
        Load {
            addr,
            urls,
            connections: settings.connections,
            seconds,
            cpu: settings.cpu,
            tag,
            scripts: settings.scripts,
        }
        .run()
    };
    if settings.warmup > 0 {
        load(settings.warmup, &format!("r{round}-warmup"))?
            .check(body_len)
            .map_err(|e| format!("warm-up: {e}"))?;
    }
    // The warm-up's spans go out now, so the sink's count covers the measured requests alone.
    if span_size.is_some() {
        server.flush()?;
    }
    let sink_before = sink.received();
    let calls_before = server.calls()?;
    let before = Usage::now(pids);
    let result = load(settings.seconds, &format!("r{round}"))?;
    let after = Usage::now(pids);
    let calls_after = server.calls()?;
    result.check(body_len)?;

    let spans_exported = match span_size {
        Some(size) => {
            server.flush()?;
            let (exports, bytes) = sink.received();
            let spans = size.spans(exports - sink_before.0, bytes - sink_before.1);
            Some(spans / result.requests as f64)
        }
        None => None,
    };
    let requests = result.requests as f64;
    let server_ns = after.cpu_ns_since(&before, server.pid) as f64;
    let wall = (after.wall - before.wall).as_secs_f64();
    Ok(Sample {
        round,
        requests: result.requests,
        seconds: result.seconds(),
        rps: result.rps(),
        p50_us: result.p50_us,
        p99_us: result.p99_us,
        max_us: result.max_us,
        server_cpu_us: server_ns / 1e3 / requests,
        server_busy: server_ns / 1e9 / wall,
        generator_busy: (after.generator - before.generator) / wall,
        others_cores: after.others_since(&before),
        handler_calls_per_request: calls_after.saturating_sub(calls_before) as f64 / requests,
        rss_mb: server.memory()?.rss_mb,
        spans_exported,
    })
}
