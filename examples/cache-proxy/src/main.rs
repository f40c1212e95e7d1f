//! `cache-proxy --upstream URL --listen ADDR [--private] [--max-bytes N]`
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let config = match cache_proxy::Config::from_args(std::env::args().skip(1)) {
        Ok(c) => c,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
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
