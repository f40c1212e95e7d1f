//! The `chat-loadtest` binary: reads its flags, pins itself, runs every variant, prints the figures and the
//! verdict table, and writes the reports. `cargo xtask loadtest` builds the binaries and runs it.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use chat_loadtest::chaos;
use chat_loadtest::churn::ChurnPlan;
use chat_loadtest::procs::{CpuPlan, find_on_path};
use chat_loadtest::runner::{self, Options, RateSearch, parse_duration};
use chat_loadtest::{Error, Variant};
use clap::{Parser, ValueEnum};

// The allocator is the binary's choice, never the library's (docs/performance.md).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Load test of the chat service: bare against stacked, same seeded data, same open-loop load.
///
/// Starts moderation and chat-service from --bin-dir for each variant, drives the chat mix at a constant
/// arrival rate with a moderation outage, checks correctness, searches the highest rate each variant sustains,
/// prints a verdict per target and writes report.json and report.html.
///
/// With --chaos, runs the mix on two instances sharing a redis-server while Redis and the moderation service
/// fail on a schedule, and reports what was served, refused and lost, with a verdict per guarantee; the exit
/// status is 1 when a guarantee broke.
#[derive(Debug, Parser)]
#[command(name = "chat-loadtest", version)]
struct Cli {
    /// Directory holding the `chat-service` and `moderation` binaries.
    #[arg(long, env = "LOADTEST_BIN_DIR", default_value = "target/release")]
    bin_dir: PathBuf,
    /// Where report.json and report.html are written.
    #[arg(long, default_value = "target/loadtest")]
    out_dir: PathBuf,
    /// Variants to run, comma separated [default: bare,stacked, plus stacked-2 when redis-server is on PATH].
    #[arg(long, value_delimiter = ',', value_enum)]
    variants: Vec<VariantArg>,
    /// Arrival rate of the main phase, requests per second.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Length of the main phase (e.g. 30s, 2m) [default: 30s, 90s with --chaos].
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Unmeasured warm-up before the main phase.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    warmup: Duration,
    /// Most requests one phase sends, whatever its length.
    #[arg(long, default_value_t = 5_000_000)]
    max_requests: u64,
    /// Most requests in flight; each request over it counts as an error.
    #[arg(long, default_value_t = 2_000)]
    max_in_flight: usize,
    /// Rooms seeded.
    #[arg(long, default_value_t = 200)]
    rooms: u32,
    /// Messages seeded per room.
    #[arg(long, default_value_t = 200)]
    messages_per_room: u32,
    /// Identical concurrent GETs in one page refresh.
    #[arg(long, default_value_t = 5)]
    burst: u32,
    /// Zipf exponent of room popularity.
    #[arg(long, default_value_t = 1.1)]
    zipf: f64,
    /// Share of acknowledged posts retried with the same Idempotency-Key and body.
    #[arg(long, default_value_t = 0.2)]
    retry_share: f64,
    /// Length of the moderation outage in the main phase (0s: none).
    #[arg(long, default_value = "4s", value_parser = parse_duration)]
    outage: Duration,
    /// Thorough max-rate search (8 s steps, 4 bisections) instead of the short one of the default run.
    #[arg(long, conflicts_with = "no_max_rate")]
    max_rate: bool,
    /// No max-rate search.
    #[arg(long)]
    no_max_rate: bool,
    /// p99 bound of a sustained rate in the max-rate search.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    p99_bound: Duration,
    /// First rate of the max-rate search.
    #[arg(long, default_value_t = 500.0)]
    start_rate: f64,
    /// Seed of the generator's random choices.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Client timeout per request.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    /// Do not pin the servers and the generator to separate CPUs.
    #[arg(long)]
    no_pin: bool,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
    /// Length of the churn phase of the stacked variants: distinct history URLs as fast as each instance
    /// answers, with resident memory sampled; the memory verdict comes from it (0s: none).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    churn: Duration,
    /// Concurrent requests per instance in the churn phase.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=1024))]
    churn_connections: u16,
    /// Print the HTML report's location (a file:// URL) on stdout once written, to open in a browser.
    #[arg(long)]
    open: bool,
    /// Also write a PNG of the HTML report to this path, taken with headless Chromium (1280 x 1400).
    #[arg(long, value_name = "PNG")]
    screenshot: Option<PathBuf>,
    /// Chaos run: only two stacked instances sharing a redis-server (needs redis-server on PATH), with Redis
    /// killed and restarted empty, frozen (SIGSTOP), 1 s slower and its connections reset, and moderation
    /// slow, answering 500, hanging and refusing connections, one after the other with calm gaps, while the
    /// mix runs; refused posts are sent again with their key until accepted. No max-rate search or churn.
    #[arg(long, conflicts_with_all = ["variants", "max_rate", "outage"])]
    chaos: bool,
    /// An argument added to every chat-service command line; repeat it for several, such as
    /// --chat-arg=--moderation-breaker-wait=1s.
    #[arg(long = "chat-arg", value_name = "ARG", allow_hyphen_values = true)]
    chat_args: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum VariantArg {
    Bare,
    Stacked,
    #[value(name = "stacked-2")]
    Stacked2,
}

impl From<VariantArg> for Variant {
    fn from(arg: VariantArg) -> Self {
        match arg {
            VariantArg::Bare => Variant::Bare,
            VariantArg::Stacked => Variant::Stacked,
            VariantArg::Stacked2 => Variant::Stacked2,
        }
    }
}

impl Cli {
    fn options(self, cpus: CpuPlan) -> Options {
        let variants = if self.variants.is_empty() {
            let mut all = vec![Variant::Bare, Variant::Stacked];
            if find_on_path("redis-server").is_some() {
                all.push(Variant::Stacked2);
            }
            all
        } else {
            self.variants.into_iter().map(Variant::from).collect()
        };
        let search = (!self.no_max_rate).then(|| RateSearch {
            start: self.start_rate,
            factor: 2.0,
            ceiling: 50_000.0,
            bisections: if self.max_rate { 4 } else { 2 },
            step: Duration::from_secs(if self.max_rate { 8 } else { 3 }),
            p99_bound: self.p99_bound,
            also_at: None,
        });
        Options {
            bin_dir: self.bin_dir,
            out_dir: self.out_dir,
            variants,
            rate: self.rate,
            duration: self.duration.unwrap_or(if self.chaos {
                chaos::DEFAULT_DURATION
            } else {
                Duration::from_secs(30)
            }),
            warmup: self.warmup,
            max_requests: self.max_requests,
            max_in_flight: self.max_in_flight,
            rooms: self.rooms,
            messages_per_room: self.messages_per_room,
            burst: self.burst,
            zipf_exponent: self.zipf,
            retry_share: self.retry_share,
            outage: if self.chaos {
                Duration::ZERO
            } else {
                self.outage
            },
            search,
            seed: self.seed,
            timeout: self.timeout,
            cpus,
            progress: !self.quiet,
            churn: (self.churn > Duration::ZERO).then(|| ChurnPlan {
                duration: self.churn,
                connections: usize::from(self.churn_connections),
                max_requests: self.max_requests,
                limit: 50,
                run_id: String::new(),
            }),
            chaos: self.chaos,
            chat_args: self.chat_args,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut cpus = if cli.no_pin {
        CpuPlan::none()
    } else {
        CpuPlan::detect()
    };
    // Before the runtime exists, so every worker thread inherits the generator's CPU.
    if let Err(error) = cpus.pin_this_process() {
        eprintln!("chat-loadtest: not pinning CPUs: {error}");
        cpus = CpuPlan::none();
    }
    let open = cli.open;
    let screenshot = cli.screenshot.clone();
    let options = cli.options(cpus);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("chat-loadtest: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        // Dropping the run on Ctrl-C drops every process handle, which kills what was started.
        tokio::select! {
            result = runner::run(&options) => result,
            _ = tokio::signal::ctrl_c() => Err(Error::Interrupted),
        }
    });
    let report = match result {
        Ok(report) => report,
        Err(error) => {
            eprintln!("chat-loadtest: {error}");
            return ExitCode::FAILURE;
        }
    };
    let written = report.write(&options.out_dir);
    let mut text = String::new();
    text.push_str("\n## Figures (main phase)\n\n");
    text.push_str(&report.summary_table());
    text.push_str(&format!(
        "\nTwo instances: {}.\n",
        report.two_instances_note
    ));
    if let Some(chaos) = &report.chaos {
        text.push_str(&chaos.text());
        text.push_str("\n## Guarantees\n\n");
    } else {
        text.push_str("\n## Verdicts\n\n");
    }
    text.push_str(&report.verdict_table());
    if let Some(note) = report.busy_machine_note() {
        text.push_str(&format!("\nWarning: {note}.\n"));
    }
    let _ = std::io::stdout().write_all(text.as_bytes());
    match written {
        Ok(()) => {
            let html = options.out_dir.join("report.html");
            eprintln!(
                "\nreports: {} and {}",
                options.out_dir.join("report.json").display(),
                html.display()
            );
            if let Some(png) = &screenshot {
                match chat_loadtest::html::screenshot(&html, png) {
                    Ok(()) => eprintln!("screenshot: {}", png.display()),
                    Err(error) => {
                        eprintln!("chat-loadtest: screenshot: {error}");
                        return ExitCode::FAILURE;
                    }
                }
            }
            if open {
                let shown = std::fs::canonicalize(&html).unwrap_or(html);
                let _ = writeln!(std::io::stdout(), "file://{}", shown.display());
            }
            let broken = report.broken_guarantees();
            if broken.is_empty() {
                ExitCode::SUCCESS
            } else {
                let names: Vec<&str> = broken.iter().map(|v| v.target.as_str()).collect();
                eprintln!(
                    "chat-loadtest: guarantees broken under chaos: {}",
                    names.join("; ")
                );
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            eprintln!("chat-loadtest: {error}");
            ExitCode::FAILURE
        }
    }
}
