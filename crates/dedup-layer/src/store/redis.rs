//! Redis idempotency store shared by several instances (feature `redis`).
//!
//! Locks are `SET NX PX` values carrying a random token, released by compare-and-delete, so a crashed
//! instance's lock simply expires.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use deadpool_redis::{Config, Pool, PoolConfig, Runtime, Timeouts};
use redis::Script;

use super::{Begin, Fingerprint, IdempotencyStore, LockToken, StoreError, StoredResponse};
use crate::error::ConfigError;

/// Returns the current value, or takes the lock and returns nil: one round trip, atomic.
const BEGIN: &str = r"
local v = redis.call('GET', KEYS[1])
if v then return v end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
";

/// Replaces our lock with the record; 0 if another request holds the key now. A key that is
/// gone (its lock expired, or Redis restarted empty) takes the record too: the operation did
/// run, and the record is what keeps a retry from running it again. A key that already holds
/// this very record (an earlier attempt ran, its answer was lost) counts as done.
const COMPLETE: &str = r"
local v = redis.call('GET', KEYS[1])
if v == ARGV[2] then return 1 end
if v == ARGV[1] or not v then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
";

/// Deletes the key only if it still holds our lock (tag and token prefix the lock value).
const RELEASE: &str = r"
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, string.len(ARGV[1])) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

const LOCK_TAG: u8 = b'L';
const RECORD_TAG: u8 = b'R';

fn lock_value(token: &LockToken, fingerprint: &Fingerprint) -> Vec<u8> {
    let mut v = Vec::with_capacity(49);
    v.push(LOCK_TAG);
    v.extend_from_slice(token.as_bytes());
    v.extend_from_slice(fingerprint.as_bytes());
    v
}

fn record_value(fingerprint: &Fingerprint, response: &StoredResponse) -> Vec<u8> {
    let encoded = response.encode();
    let mut v = Vec::with_capacity(33 + encoded.len());
    v.push(RECORD_TAG);
    v.extend_from_slice(fingerprint.as_bytes());
    v.extend_from_slice(&encoded);
    v
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

struct Inner {
    pool: Pool,
    prefix: String,
    timeout: Duration,
    begin: Script,
    complete: Script,
    release: Script,
}

/// Idempotency records in Redis, so every instance behind a load balancer sees the same keys.
///
/// Values are compact binary: a lock is `L` + 16-byte token + 32-byte fingerprint; a record is `R` +
/// fingerprint + [`StoredResponse::encode`]. Every call is bounded by the store timeout (pool wait, connect
/// and command). Pair it with [`OnStoreError`](crate::OnStoreError) to choose what a Redis outage does.
///
/// ```no_run
/// use dedup_layer::{IdempotencyLayer, store::RedisStore};
///
/// let store = RedisStore::builder("redis://127.0.0.1:6379").prefix("orders:idem:").build().unwrap();
/// let layer = IdempotencyLayer::new(store);
/// # let _ = layer;
/// ```
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.inner.prefix)
            .field("timeout", &self.inner.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A builder connecting to `url` (`redis://host:port/db`).
    pub fn builder(url: impl Into<String>) -> RedisStoreBuilder {
        RedisStoreBuilder {
            source: Source::Url(url.into()),
            prefix: "idem:".to_owned(),
            timeout: Duration::from_millis(500),
            pool_size: 16,
        }
    }

    /// A builder over an existing deadpool-redis pool (its own timeouts apply to checkout).
    pub fn builder_with_pool(pool: Pool) -> RedisStoreBuilder {
        RedisStoreBuilder {
            source: Source::Pool(pool),
            ..Self::builder(String::new())
        }
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        key: &str,
        args: &[&[u8]],
    ) -> Result<T, StoreError> {
        let call = async {
            let mut conn = self
                .inner
                .pool
                .get()
                .await
                .map_err(|e| StoreError::new(format!("redis pool: {e}")))?;
            let mut invocation = script.key(format!("{}{}", self.inner.prefix, key));
            for arg in args {
                invocation.arg(*arg);
            }
            invocation
                .invoke_async::<T>(&mut *conn)
                .await
                .map_err(|e| StoreError::new(format!("redis: {e}")))
        };
        tokio::time::timeout(self.inner.timeout, call)
            .await
            .map_err(|_| StoreError::new("redis call timed out"))?
    }
}

enum Source {
    Url(String),
    Pool(Pool),
}

/// Builder for [`RedisStore`]; every setter documents its default.
#[must_use]
pub struct RedisStoreBuilder {
    source: Source,
    prefix: String,
    timeout: Duration,
    pool_size: usize,
}

impl fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStoreBuilder")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("pool_size", &self.pool_size)
            .finish_non_exhaustive()
    }
}

impl RedisStoreBuilder {
    /// Prefix of every Redis key written.
    ///
    /// Defaults to `idem:`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Upper bound of one store call, including pool checkout and connecting.
    ///
    /// Defaults to 500 ms. Must not be zero.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Connections in the pool (when built from a URL).
    ///
    /// Defaults to 16. Must be at least 1.
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = size;
        self
    }

    /// Checks the configuration and creates the pool (no connection is made until first use).
    pub fn build(self) -> Result<RedisStore, ConfigError> {
        if self.timeout.is_zero() {
            return Err(ConfigError::new("timeout", "must be positive"));
        }
        if self.pool_size == 0 {
            return Err(ConfigError::new("pool_size", "must be at least 1"));
        }
        let pool = match self.source {
            Source::Pool(pool) => pool,
            Source::Url(url) => {
                let mut config = Config::from_url(url);
                let mut pool_config = PoolConfig::new(self.pool_size);
                pool_config.timeouts = Timeouts {
                    wait: Some(self.timeout),
                    create: Some(self.timeout),
                    recycle: Some(self.timeout),
                };
                config.pool = Some(pool_config);
                config
                    .create_pool(Some(Runtime::Tokio1))
                    .map_err(|_| ConfigError::new("url", "not a valid Redis URL"))?
            }
        };
        Ok(RedisStore {
            inner: Arc::new(Inner {
                pool,
                prefix: self.prefix,
                timeout: self.timeout,
                begin: Script::new(BEGIN),
                complete: Script::new(COMPLETE),
                release: Script::new(RELEASE),
            }),
        })
    }
}

impl IdempotencyStore for RedisStore {
    async fn try_begin(
        &self,
        key: &str,
        token: &LockToken,
        fingerprint: &Fingerprint,
        lock_ttl: Duration,
    ) -> Result<Begin, StoreError> {
        let lock = lock_value(token, fingerprint);
        let ttl = millis(lock_ttl).to_string();
        let current: Option<Vec<u8>> = self
            .run(&self.inner.begin, key, &[&lock, ttl.as_bytes()])
            .await?;
        let Some(current) = current else {
            return Ok(Begin::Started);
        };
        let corrupt = || StoreError::new("corrupt idempotency value");
        match current.split_first() {
            Some((&LOCK_TAG, rest)) if rest.len() == 48 => {
                // token (16) then fingerprint (32)
                Ok(if &rest[16..] == fingerprint.as_bytes() {
                    Begin::InProgress
                } else {
                    Begin::Mismatch
                })
            }
            Some((&RECORD_TAG, rest)) if rest.len() >= 32 => {
                if &rest[..32] != fingerprint.as_bytes() {
                    return Ok(Begin::Mismatch);
                }
                StoredResponse::decode(&rest[32..])
                    .map(Begin::Completed)
                    .ok_or_else(corrupt)
            }
            _ => Err(corrupt()),
        }
    }

    async fn complete(
        &self,
        key: &str,
        token: &LockToken,
        fingerprint: &Fingerprint,
        response: &StoredResponse,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let lock = lock_value(token, fingerprint);
        let record = record_value(fingerprint, response);
        let ttl = millis(ttl).to_string();
        let replaced: i64 = self
            .run(&self.inner.complete, key, &[&lock, &record, ttl.as_bytes()])
            .await?;
        if replaced == 1 {
            Ok(())
        } else {
            Err(StoreError::new("the lock was lost before completion"))
        }
    }

    async fn release(&self, key: &str, token: &LockToken) -> Result<(), StoreError> {
        let _: i64 = self
            .run(&self.inner.release, key, &[&release_pattern(token)])
            .await?;
        Ok(())
    }
}

fn release_pattern(token: &LockToken) -> Vec<u8> {
    let mut v = Vec::with_capacity(17);
    v.push(LOCK_TAG);
    v.extend_from_slice(token.as_bytes());
    v
}
