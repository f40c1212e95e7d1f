//! Service configuration: [`Config`], the plain struct the library takes, and [`Args`], the
//! command line (clap, with environment fallbacks) the binary turns into one.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use http::HeaderValue;

use crate::memory::{MemoryBounds, MemoryBudget};

/// Most messages a single [`seed`](crate::ChatService::seed) call may store.
pub const MAX_SEED_MESSAGES: u64 = 10_000_000;

/// Where the service keeps its SQLite database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Database {
    /// A database file, created if missing. Its `-wal` and `-shm` files sit beside it.
    File(PathBuf),
    /// A fresh database file in a private temporary directory, removed when the service is
    /// dropped. SQLite's in-memory databases cannot be shared by several connections in WAL mode,
    /// so this is the service's in-memory mode; tests use it.
    Temporary,
}

impl Database {
    /// Reads a `DATABASE_URL` value.
    ///
    /// Accepts a plain path, `sqlite://PATH` or `sqlite:PATH` (a query string such as `?mode=rwc`
    /// is ignored), and `:memory:` / `sqlite::memory:` for [`Database::Temporary`].
    ///
    /// ```
    /// use chat_service::Database;
    ///
    /// assert_eq!(Database::from_url("sqlite:///var/lib/chat.db")?, Database::File("/var/lib/chat.db".into()));
    /// assert_eq!(Database::from_url("sqlite://chat.db?mode=rwc")?, Database::File("chat.db".into()));
    /// assert_eq!(Database::from_url("data/chat.db")?, Database::File("data/chat.db".into()));
    /// assert_eq!(Database::from_url(":memory:")?, Database::Temporary);
    /// assert!(Database::from_url("postgres://db").is_err());
    /// # Ok::<(), chat_service::ConfigError>(())
    /// ```
    pub fn from_url(url: &str) -> Result<Self, ConfigError> {
        let url = url.trim();
        let path = if let Some(rest) = url.strip_prefix("sqlite://") {
            rest
        } else if let Some(rest) = url.strip_prefix("sqlite:") {
            rest
        } else if url.contains("://") {
            return Err(ConfigError::new(format!(
                "{url:?}: only sqlite:// URLs or plain paths are supported"
            )));
        } else {
            url
        };
        let path = path.split_once('?').map_or(path, |(path, _query)| path);
        match path {
            "" => Err(ConfigError::new(format!("{url:?} names no database file"))),
            ":memory:" => Ok(Self::Temporary),
            path => Ok(Self::File(PathBuf::from(path))),
        }
    }
}

/// `Cache-Control` values of the query responses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheControl {
    /// For `GET /rooms/{room}/messages`. Defaults to `public, max-age=1, stale-while-revalidate=5`.
    pub list: HeaderValue,
    /// For `GET /rooms/{room}/messages/{id}`; messages never change. Defaults to `public, max-age=3600`.
    pub message: HeaderValue,
    /// For `GET /rooms`. Defaults to `public, max-age=1`.
    pub rooms: HeaderValue,
    /// `Surrogate-Control` of the message lists and `GET /rooms`: how long the service's own
    /// cache keeps them (Edge Architecture 1.0, one of the fields cache-layer obeys over
    /// `Cache-Control`, RFC 9213). Every write purges what it changes on every tier of every
    /// instance, so the cache can keep these answers far longer than a browser, which nobody
    /// purges, may. cache-layer removes the field before an answer leaves, so clients see only
    /// `Cache-Control`; bare, it is not sent. Defaults to `max-age=60`; `None` leaves the cache to
    /// `Cache-Control`.
    pub surrogate: Option<HeaderValue>,
}

impl Default for CacheControl {
    fn default() -> Self {
        Self {
            list: HeaderValue::from_static("public, max-age=1, stale-while-revalidate=5"),
            message: HeaderValue::from_static("public, max-age=3600"),
            rooms: HeaderValue::from_static("public, max-age=1"),
            surrogate: Some(HeaderValue::from_static("max-age=60")),
        }
    }
}

/// Longest time a response stays in each cache tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TtlCaps {
    /// In-process tier: also the bound on how long an instance that missed an invalidation can
    /// serve an old page from it. `None` (the default) picks by deployment, see
    /// [`l1_for`](Self::l1_for).
    pub l1: Option<Duration>,
    /// Shared (Redis) tier. Defaults to 5 minutes.
    pub l2: Duration,
    /// Persistent (disk) tier. Defaults to 1 hour.
    pub l3: Duration,
}

impl TtlCaps {
    /// The in-process tier's cap: [`l1`](Self::l1) when set; otherwise
    /// [`L1_TTL_CAP_SHARED`](crate::cache::L1_TTL_CAP_SHARED) (100 ms) when instances share
    /// Redis, and [`L1_TTL_CAP_ALONE`](crate::cache::L1_TTL_CAP_ALONE) (5 min) when they do not.
    ///
    /// With Redis, an invalidation reaches the other instances over pub/sub, which can lose
    /// messages between a broken connection and the flush that follows it; the short cap bounds
    /// what such a miss can cost, and costs little, since the Redis tier answers what the
    /// in-process tier let go. Alone, an instance purges its in-process tier in the same call that
    /// answers the post, so no invalidation can be missed, and the tier is the only cache there is:
    /// a short cap would only send most reads to SQLite. Several instances on one database
    /// without Redis do not invalidate each other at all; give them an explicit `l1`.
    pub fn l1_for(&self, shared: bool) -> Duration {
        self.l1.unwrap_or(if shared {
            crate::cache::L1_TTL_CAP_SHARED
        } else {
            crate::cache::L1_TTL_CAP_ALONE
        })
    }
}

impl Default for TtlCaps {
    fn default() -> Self {
        Self {
            l1: None,
            l2: crate::cache::L2_TTL_CAP,
            l3: crate::cache::L3_TTL_CAP,
        }
    }
}

/// Settings of the circuit breaker around the moderation client.
///
/// The defaults open the breaker when at least half of the last 20 calls (and at least 5) failed
/// or timed out, and probe again after 5 seconds. Tests shorten them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ModerationBreaker {
    /// Calls judged: the last N. Defaults to 20.
    pub window: u32,
    /// Calls in the window before the breaker may open. Defaults to 5.
    pub minimum_calls: u32,
    /// Failure percentage that opens the breaker. Defaults to 50.
    pub failure_rate_threshold: f64,
    /// How long the breaker stays open before probing. Defaults to 5 seconds.
    pub wait_in_open: Duration,
    /// Probe calls that decide in the half-open state. Defaults to 2.
    pub half_open_probes: u32,
}

impl Default for ModerationBreaker {
    fn default() -> Self {
        Self {
            window: 20,
            minimum_calls: 5,
            failure_rate_threshold: 50.0,
            wait_in_open: Duration::from_secs(5),
            half_open_probes: 2,
        }
    }
}

/// Everything the service needs to start.
///
/// Build one from defaults and adjust fields, or read flags and environment with
/// [`Config::from_env_and_args`] / [`Config::try_parse_from`].
///
/// ```
/// use chat_service::{Config, Database};
///
/// let config = Config { readers: 2, ..Config::temporary() };
/// assert_eq!(config.database, Database::Temporary);
/// assert_eq!(config.listen.to_string(), "127.0.0.1:3000");
/// assert!(!config.bare);
/// ```
#[derive(Clone, Debug)]
pub struct Config {
    /// Address the binary listens on. Defaults to `127.0.0.1:3000`.
    pub listen: SocketAddr,
    /// The database. Defaults to the file `chat.db` in the current directory.
    pub database: Database,
    /// `(rooms, messages per room)` stored before serving. Defaults to none.
    pub seed: Option<(u32, u32)>,
    /// Reader connections in the query pool, at least 1. Defaults to 4.
    pub readers: usize,
    /// How long a post waits for the projector to show the message to readers before answering.
    /// Past it the post still answers `201`: the message is stored. Defaults to 2 seconds.
    pub projection_wait: Duration,
    /// Largest request body accepted, in bytes; larger ones get `413`. Defaults to 64 KiB.
    pub body_limit: usize,
    /// Longest a request body may stall (no part of it arriving); past it the request is
    /// answered `408` and its connection closed, so slow clients cannot hold requests open.
    /// Defaults to 10 seconds.
    pub body_timeout: Duration,
    /// `Cache-Control` of the query responses.
    pub cache_control: CacheControl,
    /// Redis for the shared cache tier, shared idempotency keys and cross-instance invalidation
    /// (`REDIS_URL`). Defaults to none: everything is in-process.
    pub redis_url: Option<String>,
    /// File of the persistent cache tier (`CACHE_DISK_PATH`). Defaults to none.
    pub cache_disk: Option<PathBuf>,
    /// Longest time a response stays in each cache tier.
    pub ttl_caps: TtlCaps,
    /// Serve the same routes with every layer off (no telemetry, cache, coalescing,
    /// idempotency or breaker), for comparison. Defaults to `false`.
    pub bare: bool,
    /// Base URL of the moderation service each post is checked with (`MODERATION_URL`), e.g.
    /// `http://127.0.0.1:3001`. Defaults to none: posts are not moderated.
    pub moderation_url: Option<String>,
    /// Longest a moderation check may take; past it the post answers `503` and, stacked, the
    /// breaker counts a failure. Defaults to 500 ms.
    pub moderation_timeout: Duration,
    /// The breaker around the moderation client (stacked mode only).
    pub moderation_breaker: ModerationBreaker,
    /// Refuse posts without an `Idempotency-Key` header with `400` (stacked mode only).
    /// Defaults to `false`: the header is honoured when present.
    pub require_idempotency_key: bool,
    /// Added to every read query while it holds its connection, to imitate a slower database in
    /// tests and demos (coalescing is easier to watch when a query takes a while). Defaults to
    /// zero.
    pub read_delay: Duration,
    /// Resident memory the service is sized for: the cache tier's bytes, the idempotency
    /// records, coalesced reads and SQLite's page caches are derived from it
    /// ([`MemoryBudget::bounds`]). Defaults to [`MemoryBudget::DEFAULT`] (160 MB).
    pub memory_budget: MemoryBudget,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 3000)),
            database: Database::File(PathBuf::from("chat.db")),
            seed: None,
            readers: 4,
            projection_wait: Duration::from_secs(2),
            body_limit: 64 * 1024,
            body_timeout: Duration::from_secs(10),
            cache_control: CacheControl::default(),
            redis_url: None,
            cache_disk: None,
            ttl_caps: TtlCaps::default(),
            bare: false,
            moderation_url: None,
            moderation_timeout: Duration::from_millis(500),
            moderation_breaker: ModerationBreaker::default(),
            require_idempotency_key: false,
            read_delay: Duration::ZERO,
            memory_budget: MemoryBudget::DEFAULT,
        }
    }
}

impl Config {
    /// The defaults with a [`Database::Temporary`] database: what tests and benchmarks use.
    pub fn temporary() -> Self {
        Self {
            database: Database::Temporary,
            ..Self::default()
        }
    }

    /// The bounds [`memory_budget`](Self::memory_budget) gives this configuration: SQLite's
    /// share is split over the reader connections and the writer.
    pub fn memory_bounds(&self) -> MemoryBounds {
        self.memory_budget.bounds(self.readers.max(1) + 1)
    }

    /// Reads the process's arguments and environment the clap way: `--help` and `--version`
    /// print and exit, a bad value prints an error naming the flag and exits with status 2.
    pub fn from_env_and_args() -> Self {
        <Args as clap::Parser>::parse().into()
    }

    /// Reads flags (the first item is the program name) over the process's environment.
    ///
    /// ```
    /// use chat_service::{Config, Database};
    ///
    /// let config = Config::try_parse_from(["chat-service", "--listen", "127.0.0.1:8080", "--seed=10,100"])?;
    /// assert_eq!(config.listen.port(), 8080);
    /// assert_eq!(config.seed, Some((10, 100)));
    ///
    /// let err = Config::try_parse_from(["chat-service", "--seed", "ten"]).unwrap_err();
    /// assert!(err.to_string().contains("--seed"));
    /// # Ok::<(), clap::Error>(())
    /// ```
    pub fn try_parse_from<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        <Args as clap::Parser>::try_parse_from(args).map(Self::from)
    }
}

/// The `chat-service` command line. Each flag also reads the environment variable shown by
/// `--help`; flags win. Turned into a [`Config`] with `Config::from(args)`.
#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "chat-service",
    version,
    about = "A CQRS chat service on axum and SQLite, with every layer of this workspace stacked",
    after_help = "Logs go to stderr; filter them with RUST_LOG (default: info).\n\
                  Spans are exported over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT (or another standard \
                  OTEL_* variable) is set; /metrics serves Prometheus text unless --bare."
)]
pub struct Args {
    /// Address to listen on; port 0 picks a free port. Once bound (after seeding) the address
    /// is printed on stdout as `chat-service listening on ADDR`.
    #[arg(long, env = "LISTEN_ADDR", value_name = "ADDR", default_value = "127.0.0.1:3000", value_parser = parse_listen)]
    pub listen: SocketAddr,
    /// SQLite database: a path, sqlite://PATH, or :memory: for a temporary file removed at exit.
    #[arg(long, env = "DATABASE_URL", value_name = "URL", default_value = "chat.db", value_parser = parse_database)]
    pub database_url: Database,
    /// Before serving, store MESSAGES messages in each of ROOMS rooms (room-1 .. room-ROOMS).
    #[arg(long, value_name = "ROOMS,MESSAGES", value_parser = parse_seed)]
    pub seed: Option<(u32, u32)>,
    /// Reader connections in the query pool, 1 to 256.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub readers: u16,
    /// Redis for the shared cache tier, shared idempotency keys and cross-instance
    /// invalidation [default: none, everything in-process].
    #[arg(long, env = "REDIS_URL", value_name = "URL")]
    pub redis_url: Option<String>,
    /// File of the persistent cache tier [default: none].
    #[arg(long, env = "CACHE_DISK_PATH", value_name = "PATH")]
    pub cache_disk: Option<PathBuf>,
    /// Longest time a response stays in the in-process cache tier [default: 100ms with
    /// --redis-url, where it bounds a missed invalidation; 5m without, where purges cannot be
    /// missed].
    #[arg(long, env = "CACHE_L1_TTL_CAP", value_name = "DURATION", value_parser = parse_duration)]
    pub l1_ttl_cap: Option<Duration>,
    /// Longest time a response stays in the Redis cache tier.
    #[arg(long, env = "CACHE_L2_TTL_CAP", value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub l2_ttl_cap: Duration,
    /// Longest time a response stays in the disk cache tier.
    #[arg(long, env = "CACHE_L3_TTL_CAP", value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    pub l3_ttl_cap: Duration,
    /// Base URL of the moderation service that checks each post, e.g. http://127.0.0.1:3001
    /// [default: none, posts are not moderated].
    #[arg(long, env = "MODERATION_URL", value_name = "URL", value_parser = parse_moderation_url)]
    pub moderation_url: Option<String>,
    /// Longest a moderation check may take (milliseconds, or a duration such as 1s); past it
    /// the post answers 503.
    #[arg(long, env = "MODERATION_TIMEOUT", value_name = "MS", default_value = "500", value_parser = parse_timeout)]
    pub moderation_timeout: Duration,
    /// How long the breaker around the moderation client stays open before it lets probe checks
    /// through; meanwhile posts answer 503 at once with this wait in Retry-After.
    #[arg(long, env = "MODERATION_BREAKER_WAIT", value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub moderation_breaker_wait: Duration,
    /// Serve the same routes with every layer off (telemetry, cache, coalescing, idempotency,
    /// breaker), for comparison.
    #[arg(long, env = "CHAT_BARE", value_parser = clap::builder::BoolishValueParser::new())]
    pub bare: bool,
    /// Refuse posts without an Idempotency-Key header (400).
    #[arg(long, env = "IDEMPOTENCY_KEY_REQUIRED", value_parser = clap::builder::BoolishValueParser::new())]
    pub require_idempotency_key: bool,
    /// Resident memory to stay under, such as 160MB or 1GiB (64MB to 1000GB). The in-process
    /// cache's bytes, idempotency records, coalesced reads and SQLite page caches are sized
    /// from it.
    #[arg(long, env = "MEMORY_BUDGET", value_name = "SIZE", default_value = "160MB", value_parser = parse_memory_budget)]
    pub memory_budget: MemoryBudget,
}

impl From<Args> for Config {
    fn from(args: Args) -> Self {
        let non_empty =
            |value: Option<String>| value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        Self {
            listen: args.listen,
            database: args.database_url,
            seed: args.seed,
            readers: usize::from(args.readers),
            redis_url: non_empty(args.redis_url),
            cache_disk: args.cache_disk.filter(|path| !path.as_os_str().is_empty()),
            ttl_caps: TtlCaps {
                l1: args.l1_ttl_cap,
                l2: args.l2_ttl_cap,
                l3: args.l3_ttl_cap,
            },
            bare: args.bare,
            moderation_url: non_empty(args.moderation_url),
            moderation_timeout: args.moderation_timeout,
            moderation_breaker: ModerationBreaker {
                wait_in_open: args.moderation_breaker_wait,
                ..ModerationBreaker::default()
            },
            require_idempotency_key: args.require_idempotency_key,
            memory_budget: args.memory_budget,
            ..Self::default()
        }
    }
}

fn parse_listen(raw: &str) -> Result<SocketAddr, String> {
    raw.trim()
        .parse()
        .map_err(|_| "expected an address like 127.0.0.1:3000 or [::1]:3000".to_owned())
}

fn parse_database(raw: &str) -> Result<Database, ConfigError> {
    Database::from_url(raw)
}

fn parse_seed(raw: &str) -> Result<(u32, u32), String> {
    let bad = || "expected ROOMS,MESSAGES such as 10,1000".to_owned();
    let (rooms, messages) = raw.split_once(',').ok_or_else(bad)?;
    let rooms: u32 = rooms.trim().parse().map_err(|_| bad())?;
    let messages: u32 = messages.trim().parse().map_err(|_| bad())?;
    if u64::from(rooms) * u64::from(messages) > MAX_SEED_MESSAGES {
        return Err(format!("at most {MAX_SEED_MESSAGES} messages in total"));
    }
    Ok((rooms, messages))
}

fn parse_memory_budget(raw: &str) -> Result<MemoryBudget, ConfigError> {
    raw.parse()
}

fn parse_moderation_url(raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(String::new());
    }
    let uri: http::Uri = raw
        .parse()
        .map_err(|e| format!("not a URL ({e}); expected one like http://127.0.0.1:3001"))?;
    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
        return Err("expected an http:// URL with a host, like http://127.0.0.1:3001".to_owned());
    }
    Ok(raw.trim_end_matches('/').to_owned())
}

/// Reads a positive duration: a whole number followed by `ms`, `s`, `m`, `h` or `d`.
///
/// ```text
/// 100ms  30s  5m  1h  2d
/// ```
pub(crate) fn parse_duration(raw: &str) -> Result<Duration, String> {
    let bad = || format!("expected a duration like 100ms, 30s, 5m or 1h, got {raw:?}");
    let raw = raw.trim();
    let split = raw.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = raw.split_at(split);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let millis_per_unit: u64 = match unit.trim() {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    let millis = number.checked_mul(millis_per_unit).ok_or_else(bad)?;
    if millis == 0 {
        return Err(format!("must be longer than zero, got {raw:?}"));
    }
    Ok(Duration::from_millis(millis))
}

/// Reads a timeout: a whole number of milliseconds, or a duration as [`parse_duration`] reads it.
fn parse_timeout(raw: &str) -> Result<Duration, String> {
    match raw.trim().parse::<u64>() {
        Ok(0) => Err("must be longer than zero".to_owned()),
        Ok(millis) => Ok(Duration::from_millis(millis)),
        Err(_) => parse_duration(raw),
    }
}

/// A configuration value that cannot be used; the message names the flag or variable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ConfigError {
    message: String,
}

impl ConfigError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Config, clap::Error> {
        Config::try_parse_from(std::iter::once("chat-service").chain(args.iter().copied()))
    }

    // These tests read the process environment too; none of the variables is set when
    // `cargo test` runs, and `xtask` does not set them either.

    #[test]
    fn defaults() {
        let config = run(&[]).unwrap();
        assert_eq!(config.listen, "127.0.0.1:3000".parse().unwrap());
        assert_eq!(config.database, Database::File("chat.db".into()));
        assert_eq!(config.seed, None);
        assert_eq!(config.readers, 4);
        assert_eq!(config.ttl_caps, TtlCaps::default());
        assert_eq!(config.ttl_caps.l1_for(false), Duration::from_secs(300));
        assert_eq!(config.ttl_caps.l1_for(true), Duration::from_millis(100));
        assert_eq!(config.moderation_timeout, Duration::from_millis(500));
        assert_eq!(config.moderation_breaker, ModerationBreaker::default());
        assert_eq!(config.moderation_url, None);
        assert!(!config.bare);
        assert!(!config.require_idempotency_key);
        assert_eq!(config.memory_budget, MemoryBudget::DEFAULT);
    }

    #[test]
    fn flags() {
        let config = run(&[
            "--listen",
            "[::1]:2",
            "--database-url",
            "sqlite:b.db",
            "--seed=3,4",
            "--readers",
            "8",
            "--redis-url",
            "redis://127.0.0.1:1/",
            "--l1-ttl-cap",
            "250ms",
            "--l2-ttl-cap=10m",
            "--l3-ttl-cap",
            "2h",
            "--moderation-url",
            "http://127.0.0.1:3001/",
            "--moderation-timeout",
            "1s",
            "--moderation-breaker-wait",
            "750ms",
            "--bare",
            "--require-idempotency-key",
            "--memory-budget",
            "512MiB",
        ])
        .unwrap();
        assert_eq!(config.listen, "[::1]:2".parse().unwrap());
        assert_eq!(config.database, Database::File("b.db".into()));
        assert_eq!(config.seed, Some((3, 4)));
        assert_eq!(config.readers, 8);
        assert_eq!(config.redis_url.as_deref(), Some("redis://127.0.0.1:1/"));
        assert_eq!(
            config.ttl_caps,
            TtlCaps {
                l1: Some(Duration::from_millis(250)),
                l2: Duration::from_secs(600),
                l3: Duration::from_secs(7200),
            }
        );
        assert_eq!(
            config.moderation_url.as_deref(),
            Some("http://127.0.0.1:3001")
        );
        assert_eq!(config.moderation_timeout, Duration::from_secs(1));
        assert_eq!(
            config.moderation_breaker.wait_in_open,
            Duration::from_millis(750)
        );
        assert!(config.bare);
        assert!(config.require_idempotency_key);
        assert_eq!(config.memory_budget.bytes(), 512 << 20);
        assert_eq!(
            run(&["--moderation-timeout", "250"])
                .unwrap()
                .moderation_timeout,
            Duration::from_millis(250)
        );
    }

    #[test]
    fn help_prints_defaults() {
        let err = run(&["--help"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::DisplayHelp);
        let help = err.to_string();
        for expected in [
            "[default: 127.0.0.1:3000]",
            "[env: LISTEN_ADDR=",
            "[default: chat.db]",
            "[env: DATABASE_URL=",
            "[env: REDIS_URL=",
            "[env: CACHE_DISK_PATH=",
            "[env: MODERATION_URL=",
            "[default: 500]",
            "[env: CACHE_L1_TTL_CAP=",
            "[default: 5m]",
            "[default: 1h]",
            "[env: CHAT_BARE=",
            "[env: IDEMPOTENCY_KEY_REQUIRED=",
            "[env: MEMORY_BUDGET=",
            "[default: 160MB]",
            "[env: MODERATION_BREAKER_WAIT=",
            "--seed <ROOMS,MESSAGES>",
        ] {
            assert!(help.contains(expected), "{expected} missing:\n{help}");
        }
    }

    #[test]
    fn bad_flags_name_themselves() {
        let cases: &[(&[&str], &str)] = &[
            (&["--listen"], "--listen"),
            (&["--listen", "nope"], "--listen"),
            (&["--seed", "1"], "--seed"),
            (&["--seed=-1,5"], "--seed"),
            (&["--seed", "100000,100000"], "at most"),
            (&["--readers", "0"], "--readers"),
            (&["--readers", "257"], "--readers"),
            (&["--database-url", "mysql://x"], "only sqlite://"),
            (&["--database-url", "sqlite://"], "names no database"),
            (&["--l1-ttl-cap", "100"], "--l1-ttl-cap"),
            (&["--l2-ttl-cap", "0s"], "--l2-ttl-cap"),
            (&["--l3-ttl-cap", "1y"], "--l3-ttl-cap"),
            (&["--moderation-url", "ftp://x"], "--moderation-url"),
            (&["--moderation-timeout", "0"], "--moderation-timeout"),
            (
                &["--moderation-breaker-wait", "0s"],
                "--moderation-breaker-wait",
            ),
            (&["--memory-budget", "lots"], "--memory-budget"),
            (&["--memory-budget", "1.5GB"], "expected a size like 160MB"),
            (&["--memory-budget", "16MB"], "below the smallest budget"),
            (&["--memory-budget=2TB"], "--memory-budget"),
            (&["--verbose"], "--verbose"),
        ];
        for (args, expected) in cases {
            let err = run(args).unwrap_err().to_string();
            assert!(err.contains(expected), "{args:?}: {err}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration(" 5m "), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        for bad in [
            "",
            "ms",
            "5",
            "5 weeks",
            "-1s",
            "1.5s",
            "0ms",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn database_urls() {
        assert_eq!(
            Database::from_url("sqlite::memory:").unwrap(),
            Database::Temporary
        );
        assert_eq!(
            Database::from_url("sqlite:///tmp/x.db").unwrap(),
            Database::File("/tmp/x.db".into())
        );
        assert_eq!(
            Database::from_url(" chat.db ").unwrap(),
            Database::File("chat.db".into())
        );
    }
}
