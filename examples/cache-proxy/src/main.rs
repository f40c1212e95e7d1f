//! `cache-proxy --upstream URL --listen ADDR [OPTIONS]`; `cache-proxy --help` lists every option
//! with its default and environment variable.
use std::process::ExitCode;

use clap::Parser;

// The allocator is the binary's choice, never the library's (docs/performance.md).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    // Prints help or the error and exits (status 0 for --help, 2 for bad arguments).
    let config = cache_proxy::Config::parse();
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot listen on {}: {e}", config.listen);
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "cache-proxy listening on {} for {}",
        config.listen, config.upstream
    );
    tokio::select! {
        r = cache_proxy::serve(listener, &config) => {
            if let Err(e) = r {
                eprintln!("server error: {e}");
                return ExitCode::FAILURE;
            }
        }
        _ = tokio::signal::ctrl_c() => {}
    }
    ExitCode::SUCCESS
}
