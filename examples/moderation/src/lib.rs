//! A small moderation service: the outbound dependency the chat example calls on every post.
//! Its latency, failure rate and availability can be changed while it runs, to rehearse outages.
//!
//! The library holds the whole service so tests can embed it; the `moderation` binary reads
//! [`Args`] and calls [`run`].
//!
//! # HTTP interface
//!
//! | Request | Answer |
//! |---|---|
//! | `POST /v1/check` with JSON `{"author", "text"}` | `200 {"allowed": true}`, or `200 {"allowed": false, "reason": "..."}` when the text contains [`FORBIDDEN_WORD`]; `500` for the configured fraction of checks; `503` at once while down |
//! | `GET /admin/faults` | the [`Faults`] in force |
//! | `PUT /admin/faults` with any subset of the [`Faults`] fields | applies them and answers the new [`Faults`]; `422` for a failure rate outside `0..=1` |
//! | `GET /admin/stats` | [`Stats`]: checks received, checks answered `5xx`, the last `traceparent` seen |
//! | `GET /healthz` | `200` |
//!
//! The order of a check: while down it answers `503` at once; otherwise it waits the configured
//! latency, then fails with `500` with the configured probability, then judges the text.
//!
//! ```
//! use moderation::{Faults, Moderation};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! let moderation = Moderation::new(Faults::default());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?;
//! let server = tokio::spawn(axum::serve(listener, moderation.router()).into_future());
//! // ... point the chat service at http://{addr} ...
//! moderation.set_faults(moderation::FaultsUpdate { down: Some(true), ..Default::default() });
//! assert!(moderation.faults().down);
//! # server.abort();
//! # let _ = addr;
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

/// A text containing this word is not allowed.
pub const FORBIDDEN_WORD: &str = "forbidden-word";

/// Command line of the `moderation` binary; each flag also reads an environment variable.
#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "moderation",
    version,
    about = "A moderation service whose latency and failures change while it runs"
)]
pub struct Args {
    /// Address to listen on; port 0 picks a free port (printed on stdout).
    #[arg(long, env = "MODERATION_LISTEN", default_value = "127.0.0.1:3001")]
    pub listen: SocketAddr,
    /// Delay added before each /v1/check answer, in milliseconds.
    #[arg(long, env = "MODERATION_LATENCY_MS", default_value_t = 0)]
    pub latency_ms: u64,
    /// Fraction of checks answered 500, from 0 to 1.
    #[arg(long, env = "MODERATION_FAILURE_RATE", default_value_t = 0.0, value_parser = parse_rate)]
    pub failure_rate: f64,
}

/// Reads a failure rate: a number from 0 to 1.
fn parse_rate(raw: &str) -> Result<f64, String> {
    match raw.trim().parse::<f64>() {
        Ok(rate) if (0.0..=1.0).contains(&rate) => Ok(rate),
        _ => Err(format!("expected a number from 0 to 1, got {raw:?}")),
    }
}

/// The faults in force, as `GET /admin/faults` shows them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Faults {
    /// Delay before each check is answered, in milliseconds.
    pub latency_ms: u64,
    /// Fraction of checks answered `500` (after the delay), from 0 to 1.
    pub failure_rate: f64,
    /// Whether every check is answered `503` at once.
    pub down: bool,
}

/// A change of [`Faults`], the body of `PUT /admin/faults`: absent fields keep their value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultsUpdate {
    /// New delay in milliseconds.
    pub latency_ms: Option<u64>,
    /// New failure rate, from 0 to 1.
    pub failure_rate: Option<f64>,
    /// New availability.
    pub down: Option<bool>,
}

/// What the service has answered so far, as `GET /admin/stats` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// `POST /v1/check` requests received.
    pub checks: u64,
    /// Checks answered `5xx` (injected failures and checks while down).
    pub failed: u64,
    /// The `traceparent` header of the newest check that carried one: proof that callers pass
    /// their trace on.
    pub last_traceparent: Option<String>,
}

/// Body of `POST /v1/check`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckRequest {
    /// Who wrote the text.
    pub author: String,
    /// The text to judge.
    pub text: String,
}

/// Answer of `POST /v1/check`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// Whether the text may be posted.
    pub allowed: bool,
    /// Why not, when it may not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Default)]
struct Shared {
    faults: Mutex<Faults>,
    checks: AtomicU64,
    failed: AtomicU64,
    last_traceparent: Mutex<Option<String>>,
}

/// The running service's state. Cheap to clone; clones share it.
#[derive(Clone, Debug)]
pub struct Moderation {
    shared: Arc<Shared>,
}

impl Moderation {
    /// A service starting with `faults`.
    pub fn new(faults: Faults) -> Self {
        Self {
            shared: Arc::new(Shared {
                faults: Mutex::new(faults),
                ..Shared::default()
            }),
        }
    }

    /// The routes of the service.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/check", post(check))
            .route("/admin/faults", get(get_faults).put(put_faults))
            .route("/admin/stats", get(get_stats))
            .route("/healthz", get(|| async { "ok" }))
            .with_state(self.clone())
    }

    /// The faults in force.
    pub fn faults(&self) -> Faults {
        *self
            .shared
            .faults
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies `update` and returns the faults now in force. A failure rate outside `0..=1` is
    /// clamped into it.
    pub fn set_faults(&self, update: FaultsUpdate) -> Faults {
        let mut faults = self
            .shared
            .faults
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(latency_ms) = update.latency_ms {
            faults.latency_ms = latency_ms;
        }
        if let Some(rate) = update.failure_rate {
            faults.failure_rate = if rate.is_nan() {
                0.0
            } else {
                rate.clamp(0.0, 1.0)
            };
        }
        if let Some(down) = update.down {
            faults.down = down;
        }
        *faults
    }

    /// Counts so far.
    pub fn stats(&self) -> Stats {
        Stats {
            checks: self.shared.checks.load(Ordering::Relaxed),
            failed: self.shared.failed.load(Ordering::Relaxed),
            last_traceparent: self
                .shared
                .last_traceparent
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }

    fn failed(&self, status: StatusCode) -> Response {
        self.shared.failed.fetch_add(1, Ordering::Relaxed);
        (status, "moderation unavailable").into_response()
    }
}

/// Judges a text: allowed unless it contains [`FORBIDDEN_WORD`].
///
/// ```
/// assert!(moderation::judge("hello").allowed);
/// assert!(!moderation::judge("a forbidden-word here").allowed);
/// ```
pub fn judge(text: &str) -> Verdict {
    if text.contains(FORBIDDEN_WORD) {
        Verdict {
            allowed: false,
            reason: Some(format!("the text contains {FORBIDDEN_WORD:?}")),
        }
    } else {
        Verdict {
            allowed: true,
            reason: None,
        }
    }
}

async fn check(
    State(service): State<Moderation>,
    headers: HeaderMap,
    body: Result<Json<CheckRequest>, JsonRejection>,
) -> Response {
    service.shared.checks.fetch_add(1, Ordering::Relaxed);
    if let Some(traceparent) = headers.get("traceparent").and_then(|v| v.to_str().ok()) {
        *service
            .shared
            .last_traceparent
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(traceparent.to_owned());
    }
    let faults = service.faults();
    if faults.down {
        return service.failed(StatusCode::SERVICE_UNAVAILABLE);
    }
    if faults.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
    }
    if faults.failure_rate > 0.0 && fastrand::f64() < faults.failure_rate {
        return service.failed(StatusCode::INTERNAL_SERVER_ERROR);
    }
    match body {
        Ok(Json(request)) => Json(judge(&request.text)).into_response(),
        Err(rejection) => rejection.into_response(),
    }
}

async fn get_faults(State(service): State<Moderation>) -> Json<Faults> {
    Json(service.faults())
}

async fn put_faults(
    State(service): State<Moderation>,
    body: Result<Json<FaultsUpdate>, JsonRejection>,
) -> Response {
    let Json(update) = match body {
        Ok(body) => body,
        Err(rejection) => return rejection.into_response(),
    };
    if let Some(rate) = update.failure_rate
        && !(0.0..=1.0).contains(&rate)
    {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            "failure_rate must be from 0 to 1",
        )
            .into_response();
    }
    Json(service.set_faults(update)).into_response()
}

async fn get_stats(State(service): State<Moderation>) -> Json<Stats> {
    Json(service.stats())
}

/// Serves [`Moderation`] as the binary does: binds `args.listen`, prints
/// `moderation listening on ADDR` as the first line on stdout, and serves until Ctrl-C or
/// SIGTERM.
pub async fn run(args: Args) -> std::io::Result<()> {
    use std::io::Write;

    let service = Moderation::new(Faults {
        latency_ms: args.latency_ms,
        failure_rate: args.failure_rate,
        down: false,
    });
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let addr = listener.local_addr()?;
    {
        // One line, flushed at once: whoever started us reads the port from it.
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "moderation listening on {addr}")?;
        stdout.flush()?;
    }
    tracing::info!(%addr, "listening");
    axum::serve(listener, service.router())
        .with_graceful_shutdown(shutdown_signal())
        .await
}

async fn shutdown_signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn args_defaults_and_errors() {
        let args = Args::try_parse_from(["moderation"]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            args.listen,
            "127.0.0.1:3001".parse().unwrap_or_else(|e| panic!("{e}"))
        );
        assert_eq!(args.latency_ms, 0);
        assert_eq!(args.failure_rate, 0.0);

        let args = Args::try_parse_from([
            "moderation",
            "--listen",
            "127.0.0.1:0",
            "--latency-ms",
            "25",
            "--failure-rate=0.5",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(args.listen.port(), 0);
        assert_eq!(args.latency_ms, 25);
        assert_eq!(args.failure_rate, 0.5);

        for (flag, value) in [
            ("--failure-rate", "1.5"),
            ("--failure-rate", "x"),
            ("--latency-ms", "soon"),
            ("--listen", "nowhere"),
        ] {
            let err = Args::try_parse_from(["moderation", flag, value])
                .err()
                .unwrap_or_else(|| panic!("{flag} {value} accepted"))
                .to_string();
            assert!(err.contains(flag), "{flag} {value}: {err}");
        }
    }

    #[test]
    fn update_keeps_absent_fields_and_clamps() {
        let service = Moderation::new(Faults {
            latency_ms: 7,
            failure_rate: 0.25,
            down: false,
        });
        let faults = service.set_faults(FaultsUpdate {
            down: Some(true),
            ..FaultsUpdate::default()
        });
        assert_eq!(
            faults,
            Faults {
                latency_ms: 7,
                failure_rate: 0.25,
                down: true
            }
        );
        assert_eq!(
            service
                .set_faults(FaultsUpdate {
                    failure_rate: Some(3.0),
                    ..FaultsUpdate::default()
                })
                .failure_rate,
            1.0
        );
    }
}
