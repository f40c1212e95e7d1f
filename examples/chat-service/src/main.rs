//! The `chat-service` binary: reads flags and environment, then serves until SIGINT or SIGTERM.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use chat_service::{Command, Config, USAGE};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    let config = match Config::from_env_and_args() {
        Ok(Command::Run(config)) => *config,
        Ok(Command::Help) => {
            let _ = std::io::stdout().write_all(USAGE.as_bytes());
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            eprintln!("chat-service: {error}");
            return ExitCode::from(2);
        }
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match chat_service::run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "chat-service failed");
            ExitCode::FAILURE
        }
    }
}
