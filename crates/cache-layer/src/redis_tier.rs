//! The shared tier on Redis (feature `redis`): entries, purge generations, leases and the
//! invalidation channel, every call bounded by a timeout and guarded by a circuit breaker.
//!
//! A dead or stalled Redis costs one timeout per call until the breaker opens, then nothing.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use breaker_layer::{CircuitBreaker, Outcome as BreakerOutcome};
use redis::aio::ConnectionLike;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::layer::ConfigError;

/// Connection shared by concurrent calls (both kinds are multiplexed).
#[derive(Clone)]
enum Conn {
    Single(redis::aio::MultiplexedConnection),
    #[cfg(feature = "cluster")]
    Cluster(redis::cluster_async::ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            #[cfg(feature = "cluster")]
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(cmd, offset, count),
            #[cfg(feature = "cluster")]
            Self::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            #[cfg(feature = "cluster")]
            Self::Cluster(c) => c.get_db(),
        }
    }
}

enum Pool {
    Single(deadpool_redis::Pool),
    #[cfg(feature = "cluster")]
    Cluster(deadpool_redis::cluster::Pool),
}

/// Why a Redis call gave no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallFailure {
    /// The breaker is open: the call was not made.
    Rejected,
    /// No answer within the timeout.
    Timeout,
    /// Connection or protocol error.
    Error,
}

/// Builder for [`RedisTier`]; every setter documents its default.
#[must_use]
pub struct RedisTierBuilder {
    urls: Vec<String>,
    cluster: bool,
    prefix: String,
    channel: Option<String>,
    timeout: Duration,
    ttl_cap: Duration,
    max_entry_bytes: usize,
    breaker: Option<CircuitBreaker>,
    pool_size: usize,
    lease_ttl: Duration,
    lease_polls: u32,
    lease_poll_interval: Duration,
    heartbeat: Duration,
}

impl fmt::Debug for RedisTierBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTierBuilder")
            .field("nodes", &self.urls.len())
            .field("cluster", &self.cluster)
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("ttl_cap", &self.ttl_cap)
            .finish_non_exhaustive()
    }
}

impl RedisTierBuilder {
    /// Prefix of every key this tier writes (entries, generations, leases). Defaults to `tc`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Pub/sub channel for invalidations. Defaults to `{prefix}:invalidate`.
    pub fn channel(mut self, channel: impl Into<String>) -> Self {
        self.channel = Some(channel.into());
        self
    }

    /// Limit on every Redis call, connecting included. Defaults to 50 ms.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Longest time an entry stays in Redis, whatever its freshness. Defaults to 5 minutes.
    pub fn ttl_cap(mut self, cap: Duration) -> Self {
        self.ttl_cap = cap;
        self
    }

    /// Largest encoded entry written to Redis; larger ones stay in the other tiers.
    /// Defaults to 1 MiB. (Redis' own `maxmemory` bounds the whole tier.)
    pub fn max_entry_bytes(mut self, bytes: usize) -> Self {
        self.max_entry_bytes = bytes;
        self
    }

    /// The breaker guarding every call. Defaults to one named `cache-redis` that opens after 5
    /// failures in a row, stays open 2 s and lets one probe through.
    pub fn breaker(mut self, breaker: CircuitBreaker) -> Self {
        self.breaker = Some(breaker);
        self
    }

    /// Connections in the pool. Defaults to 8 (connections are multiplexed).
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = size;
        self
    }

    /// Lifetime of a fill lease: the longest another instance waits on a leader that vanished.
    /// Defaults to 2 s.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    /// How often and how far apart an instance that lost the lease looks for the leader's
    /// entry before it calls the origin itself. Defaults to 20 polls 10 ms apart; 0 polls turns
    /// leases off.
    pub fn lease_wait(mut self, polls: u32, interval: Duration) -> Self {
        self.lease_polls = polls;
        self.lease_poll_interval = interval;
        self
    }

    /// Interval of the subscriber's liveness ping; a subscription that misses it is replaced
    /// (and the in-process tier flushed). Defaults to 1 s.
    pub fn heartbeat(mut self, interval: Duration) -> Self {
        self.heartbeat = interval;
        self
    }

    /// Checks the settings and creates the connection pool (connections open on first use).
    pub fn build(self) -> Result<RedisTier, ConfigError> {
        if self.urls.is_empty() {
            return Err(ConfigError::new("redis", "no Redis URL given"));
        }
        if self.timeout.is_zero() {
            return Err(ConfigError::new("redis.timeout", "must be above zero"));
        }
        if self.ttl_cap < Duration::from_millis(1) {
            return Err(ConfigError::new("redis.ttl_cap", "must be at least 1 ms"));
        }
        if self.pool_size == 0 {
            return Err(ConfigError::new("redis.pool_size", "must be above zero"));
        }
        if self.lease_ttl < Duration::from_millis(1) {
            return Err(ConfigError::new("redis.lease_ttl", "must be at least 1 ms"));
        }
        if self.heartbeat.is_zero() {
            return Err(ConfigError::new("redis.heartbeat", "must be above zero"));
        }
        if self.prefix.is_empty() || self.prefix.contains(['{', '}']) {
            return Err(ConfigError::new(
                "redis.prefix",
                "must be non-empty and without braces",
            ));
        }
        let pool = if self.cluster {
            cluster_pool(&self.urls, self.pool_size)?
        } else {
            let mut config = deadpool_redis::Config::from_url(self.urls[0].clone());
            config.pool = Some(deadpool_redis::PoolConfig::new(self.pool_size));
            let pool = config
                .create_pool(Some(deadpool_redis::Runtime::Tokio1))
                .map_err(|e| ConfigError::new("redis", format!("cannot create the pool: {e}")))?;
            Pool::Single(pool)
        };
        let pubsub = redis::Client::open(self.urls[0].as_str())
            .map_err(|e| ConfigError::new("redis", format!("invalid URL: {e}")))?;
        let breaker = match self.breaker {
            Some(b) => b,
            None => CircuitBreaker::builder()
                .name("cache-redis")
                .consecutive_failures(5)
                .wait_in_open(Duration::from_secs(2))
                .half_open_probes(1)
                .build()
                .map_err(|e| ConfigError::new("redis.breaker", e.to_string()))?,
        };
        let channel = self
            .channel
            .unwrap_or_else(|| format!("{}:invalidate", self.prefix));
        let gen_tag = format!("{{{}:gen}}", self.prefix);
        Ok(RedisTier {
            inner: Arc::new(RedisInner {
                pool,
                conn: Mutex::new(None),
                pubsub,
                breaker,
                timeout: self.timeout,
                ttl_cap: self.ttl_cap,
                max_entry_bytes: self.max_entry_bytes,
                lease_ttl: self.lease_ttl,
                lease_polls: self.lease_polls,
                lease_poll_interval: self.lease_poll_interval,
                heartbeat: self.heartbeat,
                entry_prefix: format!("{}:e:", self.prefix),
                lease_prefix: format!("{}:l:", self.prefix),
                seq_key: format!("{gen_tag}:seq"),
                all_key: format!("{gen_tag}:all"),
                hard_prefix: format!("{gen_tag}:h:"),
                soft_prefix: format!("{gen_tag}:s:"),
                channel,
                purge_script: redis::Script::new(PURGE_SCRIPT),
                release_script: redis::Script::new(RELEASE_SCRIPT),
            }),
        })
    }
}

#[cfg(feature = "cluster")]
fn cluster_pool(urls: &[String], size: usize) -> Result<Pool, ConfigError> {
    let mut config = deadpool_redis::cluster::Config::from_urls(urls.to_vec());
    config.pool = Some(deadpool_redis::PoolConfig::new(size));
    let pool = config
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .map_err(|e| ConfigError::new("redis", format!("cannot create the cluster pool: {e}")))?;
    Ok(Pool::Cluster(pool))
}

#[cfg(not(feature = "cluster"))]
fn cluster_pool(_urls: &[String], _size: usize) -> Result<Pool, ConfigError> {
    Err(ConfigError::new(
        "redis",
        "Redis Cluster needs the `cluster` feature",
    ))
}

/// INCR the purge sequence and stamp every given generation key with it.
const PURGE_SCRIPT: &str = r"
local n = redis.call('INCR', KEYS[1])
for i = 2, #KEYS do redis.call('SET', KEYS[i], n) end
return n
";

/// Deletes a lease only when it still holds our token.
const RELEASE_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// The shared tier: a Redis server or cluster reached through a deadpool-redis pool.
///
/// Give it to [`CacheLayerBuilder::redis`](crate::CacheLayerBuilder::redis). Cheap to clone.
///
/// ```no_run
/// use std::time::Duration;
/// use cache_layer::{CacheLayer, RedisTier};
///
/// # async fn demo() -> Result<(), cache_layer::ConfigError> {
/// let l2 = RedisTier::builder("redis://127.0.0.1:6379")
///     .prefix("myapp")
///     .ttl_cap(Duration::from_secs(300))
///     .build()?;
/// let cache = CacheLayer::builder()
///     .ttl_cap(Duration::from_millis(100))
///     .redis(l2)
///     .build()?;
/// # let _ = cache; Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisTier {
    pub(crate) inner: Arc<RedisInner>,
}

impl fmt::Debug for RedisTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTier")
            .field("entry_prefix", &self.inner.entry_prefix)
            .field("channel", &self.inner.channel)
            .field("breaker", &self.inner.breaker.state())
            .finish_non_exhaustive()
    }
}

pub(crate) struct RedisInner {
    pool: Pool,
    /// A connection that answered last time; replaced from the pool after an error.
    conn: Mutex<Option<Conn>>,
    pub(crate) pubsub: redis::Client,
    pub(crate) breaker: CircuitBreaker,
    timeout: Duration,
    pub(crate) ttl_cap: Duration,
    pub(crate) max_entry_bytes: usize,
    lease_ttl: Duration,
    pub(crate) lease_polls: u32,
    pub(crate) lease_poll_interval: Duration,
    pub(crate) heartbeat: Duration,
    entry_prefix: String,
    lease_prefix: String,
    seq_key: String,
    all_key: String,
    hard_prefix: String,
    soft_prefix: String,
    pub(crate) channel: String,
    purge_script: redis::Script,
    release_script: redis::Script,
}

/// What the generation keys say about an entry written at sequence `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Validity {
    Valid,
    SoftPurged,
    Purged,
}

impl RedisTier {
    /// Starts a configuration for a single Redis server (`redis://host:port/db`).
    pub fn builder(url: impl Into<String>) -> RedisTierBuilder {
        Self::make_builder(vec![url.into()], false)
    }

    /// Starts a configuration for a Redis Cluster, given one or more node URLs
    /// (feature `cluster`; [`build`](RedisTierBuilder::build) fails without it).
    pub fn cluster_builder<I, T>(urls: I) -> RedisTierBuilder
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        Self::make_builder(urls.into_iter().map(Into::into).collect(), true)
    }

    fn make_builder(urls: Vec<String>, cluster: bool) -> RedisTierBuilder {
        RedisTierBuilder {
            urls,
            cluster,
            prefix: "tc".to_owned(),
            channel: None,
            timeout: Duration::from_millis(50),
            ttl_cap: Duration::from_secs(300),
            max_entry_bytes: 1024 * 1024,
            breaker: None,
            pool_size: 8,
            lease_ttl: Duration::from_secs(2),
            lease_polls: 20,
            lease_poll_interval: Duration::from_millis(10),
            heartbeat: Duration::from_secs(1),
        }
    }

    /// The breaker guarding this tier's calls.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.inner.breaker
    }

    /// The Redis key holding the entry for a cache key.
    pub fn entry_key(&self, key: &str) -> String {
        format!("{}{key}", self.inner.entry_prefix)
    }
}

impl RedisInner {
    async fn connection(&self) -> Result<Conn, CallFailure> {
        let cached = self.conn.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(c) = cached {
            return Ok(c);
        }
        let conn = match &self.pool {
            Pool::Single(p) => p
                .get()
                .await
                .map(|c| Conn::Single((*c).clone()))
                .map_err(|_| CallFailure::Error)?,
            #[cfg(feature = "cluster")]
            Pool::Cluster(p) => p
                .get()
                .await
                .map(|c| Conn::Cluster((*c).clone()))
                .map_err(|_| CallFailure::Error)?,
        };
        *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn.clone());
        Ok(conn)
    }

    /// Whether calls are being refused now; lets callers skip work whose only use is a call.
    pub(crate) fn refusing(&self) -> bool {
        matches!(
            self.breaker.state(),
            breaker_layer::BreakerState::Open | breaker_layer::BreakerState::ForcedOpen
        )
    }

    fn forget_connection(&self) {
        *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Runs `op` on a connection under the breaker and the timeout.
    async fn call<T, F, Fut>(&self, op: F) -> Result<T, CallFailure>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let permit = self
            .breaker
            .try_acquire()
            .map_err(|_| CallFailure::Rejected)?;
        let started = tokio::time::Instant::now();
        let run = async {
            let conn = self.connection().await?;
            op(conn).await.map_err(|e| {
                tracing::debug!(error = %e, "redis call failed");
                CallFailure::Error
            })
        };
        let result = match tokio::time::timeout(self.timeout, run).await {
            Ok(r) => r,
            Err(_) => Err(CallFailure::Timeout),
        };
        crate::metrics::record_tier_latency(crate::metrics::TierLabel::L2, started.elapsed());
        match result {
            Ok(v) => {
                permit.record(BreakerOutcome::Success);
                Ok(v)
            }
            Err(e) => {
                permit.record(BreakerOutcome::Failure);
                self.forget_connection();
                crate::metrics::record_tier_error(crate::metrics::TierLabel::L2);
                Err(e)
            }
        }
    }

    fn entry_key(&self, key: &str) -> String {
        let mut k = String::with_capacity(self.entry_prefix.len() + key.len());
        k.push_str(&self.entry_prefix);
        k.push_str(key);
        k
    }

    /// The stored bytes (if any) and the current purge sequence, in one round trip.
    pub(crate) async fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, u64), CallFailure> {
        let seq_key = &self.seq_key;
        self.call(|conn| async move {
            let entry_key = self.entry_key(key);
            let mut c1 = conn.clone();
            let mut c2 = conn;
            let mut get = redis::cmd("GET");
            get.arg(&entry_key);
            let mut seq = redis::cmd("GET");
            seq.arg(seq_key);
            let (entry, seq) = futures_util::future::join(
                get.query_async::<Option<Vec<u8>>>(&mut c1),
                seq.query_async::<Option<u64>>(&mut c2),
            )
            .await;
            Ok((entry?, seq?.unwrap_or(0)))
        })
        .await
    }

    /// Compares the generations of `tags` (and of purge-all) with `seq`.
    pub(crate) async fn validity(
        &self,
        tags: &[Arc<str>],
        seq: u64,
    ) -> Result<Validity, CallFailure> {
        let mut keys = Vec::with_capacity(1 + 2 * tags.len());
        keys.push(self.all_key.clone());
        for t in tags {
            keys.push(format!("{}{t}", self.hard_prefix));
            keys.push(format!("{}{t}", self.soft_prefix));
        }
        let values: Vec<Option<u64>> = self
            .call(|mut conn| async move {
                let mut cmd = redis::cmd("MGET");
                cmd.arg(&keys);
                cmd.query_async(&mut conn).await
            })
            .await?;
        let mut soft = false;
        for (i, v) in values.iter().enumerate() {
            let Some(g) = v else { continue };
            if *g > seq {
                // Index 0 is purge-all; then hard, soft, hard, soft...
                if i == 0 || i % 2 == 1 {
                    return Ok(Validity::Purged);
                }
                soft = true;
            }
        }
        Ok(if soft {
            Validity::SoftPurged
        } else {
            Validity::Valid
        })
    }

    pub(crate) async fn put(
        &self,
        key: &str,
        bytes: Vec<u8>,
        ttl: Duration,
    ) -> Result<(), CallFailure> {
        let entry_key = self.entry_key(key);
        let ms = u64::try_from(ttl.min(self.ttl_cap).as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        self.call(|mut conn| async move {
            let mut cmd = redis::cmd("SET");
            cmd.arg(&entry_key).arg(bytes).arg("PX").arg(ms);
            cmd.query_async::<()>(&mut conn).await
        })
        .await
    }

    pub(crate) async fn delete(&self, key: &str) -> Result<bool, CallFailure> {
        let entry_key = self.entry_key(key);
        self.call(|mut conn| async move {
            let mut cmd = redis::cmd("DEL");
            cmd.arg(&entry_key);
            cmd.query_async::<u64>(&mut conn).await.map(|n| n > 0)
        })
        .await
    }

    /// Bumps the purge sequence and stamps the tags' hard (or soft) generations with it;
    /// `None` for tags stamps purge-all. Returns the new sequence.
    pub(crate) async fn purge_generations(
        &self,
        tags: Option<&[&str]>,
        soft: bool,
    ) -> Result<u64, CallFailure> {
        let mut keys = vec![self.seq_key.clone()];
        match tags {
            Some(tags) => {
                let prefix = if soft {
                    &self.soft_prefix
                } else {
                    &self.hard_prefix
                };
                keys.extend(tags.iter().map(|t| format!("{prefix}{t}")));
            }
            None => keys.push(self.all_key.clone()),
        }
        let script = &self.purge_script;
        self.call(|mut conn| async move {
            let mut inv = script.prepare_invoke();
            for k in &keys {
                inv.key(k);
            }
            inv.invoke_async::<u64>(&mut conn).await
        })
        .await
    }

    /// Deletes every entry whose cache key starts with `prefix` (single server: `SCAN`; a
    /// cluster relies on the generations and the entries' TTL instead). Returns how many.
    pub(crate) async fn delete_prefix(&self, prefix: &str) -> Result<usize, CallFailure> {
        if !matches!(self.pool, Pool::Single(_)) {
            return Ok(0);
        }
        let mut pattern = String::with_capacity(self.entry_prefix.len() + prefix.len() + 1);
        for c in self.entry_prefix.chars().chain(prefix.chars()) {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                pattern.push('\\');
            }
            pattern.push(c);
        }
        pattern.push('*');
        let mut cursor: u64 = 0;
        let mut removed = 0usize;
        // Bounded: at most 10,000 SCAN pages per purge.
        for _ in 0..10_000 {
            let pattern = &pattern;
            let (next, keys): (u64, Vec<Vec<u8>>) = self
                .call(|mut conn| async move {
                    let mut cmd = redis::cmd("SCAN");
                    cmd.arg(cursor)
                        .arg("MATCH")
                        .arg(pattern)
                        .arg("COUNT")
                        .arg(500);
                    cmd.query_async(&mut conn).await
                })
                .await?;
            if !keys.is_empty() {
                let n: u64 = self
                    .call(|mut conn| async move {
                        let mut cmd = redis::cmd("UNLINK");
                        cmd.arg(&keys);
                        cmd.query_async(&mut conn).await
                    })
                    .await?;
                removed += usize::try_from(n).unwrap_or(0);
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        Ok(removed)
    }

    /// Takes the fill lease of `key` with a fresh token; `Ok(None)` when another holds it.
    pub(crate) async fn take_lease(&self, key: &str) -> Result<Option<LeaseToken>, CallFailure> {
        let lease_key = format!("{}{key}", self.lease_prefix);
        let token = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        let ms = u64::try_from(self.lease_ttl.as_millis()).unwrap_or(u64::MAX);
        let (k, t) = (&lease_key, &token);
        let got: Option<String> = self
            .call(|mut conn| async move {
                let mut cmd = redis::cmd("SET");
                cmd.arg(k).arg(t).arg("NX").arg("PX").arg(ms);
                cmd.query_async(&mut conn).await
            })
            .await?;
        Ok(got.map(|_| LeaseToken {
            key: lease_key,
            token,
        }))
    }

    pub(crate) async fn release_lease(&self, lease: &LeaseToken) -> Result<(), CallFailure> {
        let script = &self.release_script;
        self.call(|mut conn| async move {
            script
                .key(&lease.key)
                .arg(&lease.token)
                .invoke_async::<u64>(&mut conn)
                .await
                .map(|_| ())
        })
        .await
    }

    pub(crate) async fn publish(&self, message: String) -> Result<(), CallFailure> {
        let channel = &self.channel;
        self.call(|mut conn| async move {
            let mut cmd = redis::cmd("PUBLISH");
            cmd.arg(channel).arg(message);
            cmd.query_async::<u64>(&mut conn).await.map(|_| ())
        })
        .await
    }
}

/// A fill lease held by this instance.
#[derive(Debug, Clone)]
pub(crate) struct LeaseToken {
    key: String,
    token: String,
}
