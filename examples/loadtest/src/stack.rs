//! One variant of the system under test, started from the built binaries: moderation, the chat-service
//! instances on a fresh seeded SQLite file and, for two instances, a redis-server they share.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tempfile::TempDir;
use test_support::RedisServer;

use crate::Error;
use crate::chaos::{FaultControls, ProxyRuntime};
use crate::procs::{CpuPlan, Service};

/// What is started and compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
    /// One chat-service with `--bare`: the same routes with every layer off.
    Bare,
    /// One chat-service with every layer: telemetry, cache (in-process tier), dedup, idempotency, breaker.
    Stacked,
    /// Two stacked instances on one SQLite file, sharing a redis-server (shared cache tier, idempotency keys
    /// and invalidations).
    Stacked2,
}

impl Variant {
    /// The variant's name in reports and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Bare => "bare",
            Variant::Stacked => "stacked",
            Variant::Stacked2 => "stacked-2",
        }
    }

    /// Chat-service instances it runs.
    pub fn instances(self) -> usize {
        match self {
            Variant::Stacked2 => 2,
            _ => 1,
        }
    }

    /// True when the layers are on.
    pub fn is_stacked(self) -> bool {
        self != Variant::Bare
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where the binaries are and how a variant is started.
#[derive(Clone, Debug)]
pub struct StackConfig {
    /// Directory holding `chat-service` and `moderation`.
    pub bin_dir: PathBuf,
    /// Rooms seeded (`room-1` .. `room-N`).
    pub rooms: u32,
    /// Messages seeded in each room.
    pub messages_per_room: u32,
    /// CPU pinning.
    pub cpus: CpuPlan,
    /// Arguments added to every chat-service command line.
    pub chat_args: Vec<OsString>,
    /// Two instances only: reach Redis and moderation through fault proxies ([`Stack::fault_controls`]).
    pub fault_proxies: bool,
}

impl StackConfig {
    /// Binaries in `bin_dir`, `rooms` rooms of `messages_per_room` seeded messages, no extra arguments and no
    /// fault proxies.
    pub fn new(bin_dir: PathBuf, rooms: u32, messages_per_room: u32, cpus: CpuPlan) -> Self {
        Self {
            bin_dir,
            rooms,
            messages_per_room,
            cpus,
            chat_args: Vec::new(),
            fault_proxies: false,
        }
    }
}

/// The fault proxies of a chaos run and the runtime they run on.
#[derive(Debug)]
struct Proxies {
    redis: Arc<test_support::FaultProxy>,
    moderation: Arc<test_support::FaultProxy>,
    // Held for its drop, last: the proxies' tasks end with it.
    _runtime: ProxyRuntime,
}

/// The seeded data, which the load needs to form its URLs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Seeded {
    /// Rooms, named `room-1` .. `room-{rooms}`.
    pub rooms: u32,
    /// Messages in each room before the load starts.
    pub messages_per_room: u32,
}

impl Seeded {
    /// Id of the `n`th seeded message (1-based) of room `room` (1-based): the seeder lets rooms take turns, so
    /// ids interleave across rooms.
    ///
    /// ```
    /// use chat_loadtest::stack::Seeded;
    ///
    /// let seeded = Seeded { rooms: 3, messages_per_room: 10 };
    /// assert_eq!(seeded.message_id(1, 1), 1);
    /// assert_eq!(seeded.message_id(3, 2), 6);
    /// ```
    pub fn message_id(&self, room: u32, n: u32) -> i64 {
        i64::from(n.saturating_sub(1)) * i64::from(self.rooms) + i64::from(room)
    }
}

/// A started variant; every process stops when this drops.
#[derive(Debug)]
pub struct Stack {
    variant: Variant,
    seeded: Seeded,
    // Dropped in declaration order: the chat instances stop before their dependencies, the directory goes last.
    instances: Vec<Service>,
    proxies: Option<Proxies>,
    moderation: Service,
    redis: Option<Arc<Mutex<RedisServer>>>,
    dir: TempDir,
}

impl Stack {
    /// Starts `variant` and waits until every process listens. Blocking: call it from `spawn_blocking`.
    ///
    /// The first instance seeds a fresh SQLite file in a temporary directory before it listens; a second
    /// instance serves the same file. Every run of a variant starts from identical data. With
    /// [`StackConfig::fault_proxies`] the instances reach Redis and moderation through fault proxies.
    pub fn start(variant: Variant, config: &StackConfig) -> Result<Self, Error> {
        if config.fault_proxies && variant != Variant::Stacked2 {
            return Err(Error::Setup(format!(
                "fault proxies need the two-instance variant, not {variant}"
            )));
        }
        let dir = tempfile::Builder::new()
            .prefix("chat-loadtest-")
            .tempdir()
            .map_err(|e| Error::Io("creating a temporary directory".into(), e))?;
        let chat = config.bin_dir.join("chat-service");
        let moderation_bin = config.bin_dir.join("moderation");
        for binary in [&chat, &moderation_bin] {
            if !binary.is_file() {
                return Err(Error::MissingBinary(binary.clone()));
            }
        }
        let moderation = Service::spawn(
            "moderation",
            &moderation_bin,
            &args(&["--listen", "127.0.0.1:0"]),
            &[],
            config.cpus.generator,
            &dir.path().join("moderation.log"),
        )?;
        let redis = match variant {
            Variant::Stacked2 => Some(RedisServer::start()?),
            _ => None,
        };
        let proxies = match (&redis, config.fault_proxies) {
            (Some(redis), true) => {
                let runtime = ProxyRuntime::start()?;
                let moderation_addr = moderation.addr();
                Some(Proxies {
                    redis: Arc::new(runtime.proxy(redis.addr())?),
                    moderation: Arc::new(runtime.proxy(moderation_addr)?),
                    _runtime: runtime,
                })
            }
            _ => None,
        };
        let redis_url = match (&proxies, &redis) {
            (Some(proxies), _) => Some(format!("redis://{}", proxies.redis.addr())),
            (None, Some(redis)) => Some(redis.url()),
            (None, None) => None,
        };
        let moderation_url = match &proxies {
            Some(proxies) => format!("http://{}", proxies.moderation.addr()),
            None => moderation.base_url(),
        };
        let database = dir.path().join("chat.db");
        let mut instances = Vec::new();
        for index in 0..variant.instances() {
            let mut chat_args = args(&["--listen", "127.0.0.1:0", "--moderation-url"]);
            chat_args.push(moderation_url.clone().into());
            chat_args.push("--database-url".into());
            chat_args.push(database.clone().into_os_string());
            if index == 0 {
                chat_args.push("--seed".into());
                chat_args.push(format!("{},{}", config.rooms, config.messages_per_room).into());
            }
            if variant == Variant::Bare {
                chat_args.push("--bare".into());
            }
            if let Some(url) = &redis_url {
                chat_args.push("--redis-url".into());
                chat_args.push(url.into());
            }
            chat_args.extend(config.chat_args.iter().cloned());
            let name = if variant.instances() > 1 {
                format!("chat-service-{}", index + 1)
            } else {
                "chat-service".to_owned()
            };
            instances.push(Service::spawn(
                &name,
                &chat,
                &chat_args,
                &[],
                config.cpus.server,
                &dir.path().join(format!("{name}.log")),
            )?);
        }
        Ok(Self {
            variant,
            seeded: Seeded {
                rooms: config.rooms,
                messages_per_room: config.messages_per_room,
            },
            instances,
            proxies,
            moderation,
            redis: redis.map(|redis| Arc::new(Mutex::new(redis))),
            dir,
        })
    }

    /// The variant running.
    pub fn variant(&self) -> Variant {
        self.variant
    }

    /// The seeded data.
    pub fn seeded(&self) -> Seeded {
        self.seeded
    }

    /// The chat-service instances.
    pub fn instances(&self) -> &[Service] {
        &self.instances
    }

    /// The moderation service.
    pub fn moderation(&self) -> &Service {
        &self.moderation
    }

    /// The shared redis-server, for two instances.
    pub fn redis(&self) -> Option<&Arc<Mutex<RedisServer>>> {
        self.redis.as_ref()
    }

    /// The process id of the shared redis-server while it runs.
    pub fn redis_pid(&self) -> Option<u32> {
        let redis = self.redis.as_ref()?;
        redis
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pid()
    }

    /// What a chaos run needs to inject faults, when the stack was started with fault proxies.
    pub fn fault_controls(&self) -> Option<FaultControls> {
        let proxies = self.proxies.as_ref()?;
        Some(FaultControls {
            redis: self.redis.clone()?,
            redis_proxy: proxies.redis.clone(),
            moderation_proxy: proxies.moderation.clone(),
            moderation: self.moderation.base_url(),
        })
    }

    /// The temporary directory with the database and the logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Checks every process is still running; names the first that is not, with its log.
    pub fn check_alive(&mut self) -> Result<(), Error> {
        for service in self
            .instances
            .iter_mut()
            .chain(std::iter::once(&mut self.moderation))
        {
            if !service.is_running() {
                return Err(Error::Startup {
                    name: service.name().to_owned(),
                    detail: "exited during the run".to_owned(),
                    log_tail: service.log_tail(),
                });
            }
        }
        Ok(())
    }
}

fn args(list: &[&str]) -> Vec<OsString> {
    list.iter().map(OsString::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_ids_interleave_rooms() {
        let seeded = Seeded {
            rooms: 4,
            messages_per_room: 3,
        };
        let ids: Vec<i64> = (1..=3).map(|n| seeded.message_id(2, n)).collect();
        assert_eq!(ids, vec![2, 6, 10]);
        assert_eq!(
            seeded.message_id(4, 3),
            12,
            "the last seeded id is rooms * messages"
        );
    }

    #[test]
    fn variants_name_themselves() {
        assert_eq!(Variant::Stacked2.to_string(), "stacked-2");
        assert_eq!(Variant::Stacked2.instances(), 2);
        assert!(!Variant::Bare.is_stacked());
    }

    #[test]
    fn missing_binaries_fail_before_anything_starts() {
        let dir = tempfile::tempdir().unwrap();
        let config = StackConfig::new(dir.path().to_path_buf(), 1, 1, CpuPlan::none());
        let err = Stack::start(Variant::Bare, &config).unwrap_err();
        assert!(matches!(err, Error::MissingBinary(_)), "{err}");
    }
}
