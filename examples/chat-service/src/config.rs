//! Service configuration: defaults, command-line flags and environment variables.
//! Flags are parsed by hand to keep the dependency tree small; each error names the flag.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use http::HeaderValue;

/// Help text printed for `--help`.
pub const USAGE: &str = "\
chat-service: a CQRS chat service on axum and SQLite

USAGE:
    chat-service [OPTIONS]

OPTIONS:
    --listen ADDR           address to listen on [env: LISTEN_ADDR] [default: 127.0.0.1:3000]
    --database-url URL      SQLite database: a path, sqlite://PATH, or :memory: for a temporary
                            file removed at exit [env: DATABASE_URL] [default: chat.db]
    --seed ROOMS,MESSAGES   before serving, store MESSAGES messages in each of ROOMS rooms
                            (room-1 .. room-ROOMS) in one transaction
    --readers N             reader connections in the query pool [default: 4]
    --redis-url URL         shared cache tier and cross-instance invalidation on this Redis
                            [env: REDIS_URL] [default: none, in-process cache only]
    --cache-disk PATH       persistent cache tier in this file [env: CACHE_DISK_PATH]
                            [default: none]
    -h, --help              print this help

Logs go to stderr; filter them with RUST_LOG (default: info).
";

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
                "DATABASE_URL {url:?}: only sqlite:// URLs or plain paths are supported"
            )));
        } else {
            url
        };
        let path = path.split_once('?').map_or(path, |(path, _query)| path);
        match path {
            "" => Err(ConfigError::new(format!(
                "DATABASE_URL {url:?} names no database file"
            ))),
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
}

impl Default for CacheControl {
    fn default() -> Self {
        Self {
            list: HeaderValue::from_static("public, max-age=1, stale-while-revalidate=5"),
            message: HeaderValue::from_static("public, max-age=3600"),
            rooms: HeaderValue::from_static("public, max-age=1"),
        }
    }
}

/// Everything the service needs to start.
///
/// Build one from defaults and adjust fields, or read flags and environment with
/// [`Config::from_args`].
///
/// ```
/// use chat_service::{Config, Database};
///
/// let config = Config { readers: 2, ..Config::temporary() };
/// assert_eq!(config.database, Database::Temporary);
/// assert_eq!(config.listen.to_string(), "127.0.0.1:3000");
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
    /// `Cache-Control` of the query responses.
    pub cache_control: CacheControl,
    /// Redis for the shared cache tier and cross-instance invalidation (`REDIS_URL`).
    /// Defaults to none: the cache is in-process only.
    pub redis_url: Option<String>,
    /// File of the persistent cache tier (`CACHE_DISK_PATH`). Defaults to none.
    pub cache_disk: Option<PathBuf>,
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
            cache_control: CacheControl::default(),
            redis_url: None,
            cache_disk: None,
        }
    }
}

/// What the command line asks for.
#[derive(Clone, Debug)]
pub enum Command {
    /// Serve with this configuration.
    Run(Box<Config>),
    /// Print [`USAGE`] and exit.
    Help,
}

impl Config {
    /// The defaults with a [`Database::Temporary`] database: what tests and benchmarks use.
    pub fn temporary() -> Self {
        Self {
            database: Database::Temporary,
            ..Self::default()
        }
    }

    /// Reads the process's arguments and environment (`LISTEN_ADDR`, `DATABASE_URL`,
    /// `REDIS_URL`, `CACHE_DISK_PATH`).
    pub fn from_env_and_args() -> Result<Command, ConfigError> {
        Self::from_args(std::env::args().skip(1), |name| std::env::var(name).ok())
    }

    /// Reads flags (without the program name) over environment values from `env`.
    ///
    /// Flags win over the environment. Each flag takes its value as the next argument or after
    /// `=`.
    ///
    /// ```
    /// use chat_service::{Command, Config, Database};
    ///
    /// let env = |name: &str| (name == "DATABASE_URL").then(|| "sqlite://from-env.db".to_string());
    /// let args = ["--listen", "127.0.0.1:8080", "--seed=10,100"].map(String::from);
    /// let Command::Run(config) = Config::from_args(args, env)? else { unreachable!() };
    /// assert_eq!(config.listen.port(), 8080);
    /// assert_eq!(config.database, Database::File("from-env.db".into()));
    /// assert_eq!(config.seed, Some((10, 100)));
    ///
    /// let err = Config::from_args(["--seed".to_string(), "ten".to_string()], |_| None).unwrap_err();
    /// assert!(err.to_string().contains("--seed"));
    /// # Ok::<(), chat_service::ConfigError>(())
    /// ```
    pub fn from_args<I>(
        args: I,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Command, ConfigError>
    where
        I: IntoIterator<Item = String>,
    {
        let mut config = Self::default();
        if let Some(addr) = env("LISTEN_ADDR") {
            config.listen = parse_listen(&addr, "LISTEN_ADDR")?;
        }
        if let Some(url) = env("DATABASE_URL") {
            config.database = Database::from_url(&url)?;
        }
        if let Some(url) = env("REDIS_URL").filter(|u| !u.trim().is_empty()) {
            config.redis_url = Some(url.trim().to_owned());
        }
        if let Some(path) = env("CACHE_DISK_PATH").filter(|p| !p.trim().is_empty()) {
            config.cache_disk = Some(PathBuf::from(path.trim()));
        }

        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((flag, value)) if flag.starts_with("--") => {
                    (flag.to_string(), Some(value.to_string()))
                }
                _ => (arg, None),
            };
            if flag == "-h" || flag == "--help" {
                return Ok(Command::Help);
            }
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| args.next())
                    .ok_or_else(|| ConfigError::new(format!("{flag} needs a value (see --help)")))
            };
            match flag.as_str() {
                "--listen" => config.listen = parse_listen(&value()?, "--listen")?,
                "--database-url" => config.database = Database::from_url(&value()?)?,
                "--seed" => config.seed = Some(parse_seed(&value()?)?),
                "--redis-url" => config.redis_url = Some(value()?),
                "--cache-disk" => config.cache_disk = Some(PathBuf::from(value()?)),
                "--readers" => {
                    let raw = value()?;
                    config.readers = match raw.parse::<usize>() {
                        Ok(n @ 1..=256) => n,
                        _ => {
                            return Err(ConfigError::new(format!(
                                "--readers {raw:?}: expected a number from 1 to 256"
                            )));
                        }
                    };
                }
                other => {
                    return Err(ConfigError::new(format!(
                        "unknown argument {other:?} (see --help)"
                    )));
                }
            }
        }
        Ok(Command::Run(Box::new(config)))
    }
}

fn parse_listen(raw: &str, source: &str) -> Result<SocketAddr, ConfigError> {
    raw.trim().parse().map_err(|_| {
        ConfigError::new(format!(
            "{source} {raw:?}: expected an address like 127.0.0.1:3000 or [::1]:3000"
        ))
    })
}

fn parse_seed(raw: &str) -> Result<(u32, u32), ConfigError> {
    let bad = || {
        ConfigError::new(format!(
            "--seed {raw:?}: expected ROOMS,MESSAGES such as 10,1000"
        ))
    };
    let (rooms, messages) = raw.split_once(',').ok_or_else(bad)?;
    let rooms: u32 = rooms.trim().parse().map_err(|_| bad())?;
    let messages: u32 = messages.trim().parse().map_err(|_| bad())?;
    if u64::from(rooms) * u64::from(messages) > MAX_SEED_MESSAGES {
        return Err(ConfigError::new(format!(
            "--seed {raw:?}: at most {MAX_SEED_MESSAGES} messages in total"
        )));
    }
    Ok((rooms, messages))
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

    fn run(args: &[&str]) -> Result<Config, ConfigError> {
        match Config::from_args(args.iter().map(|s| s.to_string()), |_| None)? {
            Command::Run(config) => Ok(*config),
            Command::Help => panic!("unexpected help"),
        }
    }

    #[test]
    fn defaults() {
        let config = run(&[]).unwrap();
        assert_eq!(config.listen, "127.0.0.1:3000".parse().unwrap());
        assert_eq!(config.database, Database::File("chat.db".into()));
        assert_eq!(config.seed, None);
    }

    #[test]
    fn flags_override_env() {
        let env = |name: &str| match name {
            "LISTEN_ADDR" => Some("127.0.0.1:1".to_string()),
            "DATABASE_URL" => Some("a.db".to_string()),
            _ => None,
        };
        let args = ["--listen", "[::1]:2", "--database-url", "sqlite:b.db"].map(String::from);
        let Command::Run(config) = Config::from_args(args, env).unwrap() else {
            panic!("expected run")
        };
        assert_eq!(config.listen, "[::1]:2".parse().unwrap());
        assert_eq!(config.database, Database::File("b.db".into()));
    }

    #[test]
    fn help() {
        assert!(matches!(
            Config::from_args(["-h".to_string()], |_| None),
            Ok(Command::Help)
        ));
        assert!(matches!(
            Config::from_args(["--seed=1,1".to_string(), "--help".to_string()], |_| None),
            Ok(Command::Help)
        ));
    }

    #[test]
    fn bad_flags_name_themselves() {
        let cases: &[(&[&str], &str)] = &[
            (&["--listen"], "--listen needs a value"),
            (&["--listen", "nope"], "--listen \"nope\""),
            (&["--seed", "1"], "--seed \"1\""),
            (&["--seed", "-1,5"], "--seed"),
            (&["--seed", "100000,100000"], "at most"),
            (&["--readers", "0"], "--readers"),
            (&["--database-url", "mysql://x"], "only sqlite://"),
            (&["--database-url", "sqlite://"], "names no database"),
            (&["--verbose"], "unknown argument \"--verbose\""),
        ];
        for (args, expected) in cases {
            let err = run(args).unwrap_err().to_string();
            assert!(err.contains(expected), "{args:?}: {err}");
        }
        let env = |_: &str| Some("bad".to_string());
        let err = Config::from_args(Vec::new(), env).unwrap_err().to_string();
        assert!(err.contains("LISTEN_ADDR"), "{err}");
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
