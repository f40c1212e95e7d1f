//! The `chat-service` binary: reads flags and environment (clap), sets up telemetry and logs,
//! then serves until SIGINT or SIGTERM.

use std::io::IsTerminal;
use std::process::ExitCode;

use chat_service::Config;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::prelude::*;

// The allocator is the binary's choice, never the library's: under cache churn glibc's malloc
// fragments across threads and resident memory keeps climbing (docs/performance.md).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[cfg(all(feature = "mimalloc", not(feature = "jemalloc")))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Which global allocator this build uses, for the start-up log line.
const ALLOCATOR: &str = if cfg!(feature = "jemalloc") {
    "jemalloc"
} else if cfg!(feature = "mimalloc") {
    "mimalloc"
} else {
    "system"
};

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::from_env_and_args();
    // Telemetry first: it installs the metrics recorder the layers register with.
    let telemetry = if config.bare {
        None
    } else {
        match chat_service::telemetry() {
            Ok(telemetry) => Some(telemetry),
            Err(error) => {
                eprintln!("chat-service: {error}");
                return ExitCode::from(2);
            }
        }
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_filter(filter);
    // Spans get their own filter, so a strict RUST_LOG cannot cut traces apart.
    let spans = telemetry
        .as_ref()
        .and_then(|t| t.otel_layer())
        .map(|layer| layer.with_filter(LevelFilter::INFO));
    tracing_subscriber::registry().with(logs).with(spans).init();
    tracing::info!(allocator = ALLOCATOR, "chat-service starting");
    match chat_service::run(config, telemetry).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "chat-service failed");
            ExitCode::FAILURE
        }
    }
}
