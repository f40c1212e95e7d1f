//! Sharing Open transitions across instances through Redis pub/sub (feature `redis`): when one instance's breaker
//! opens by its own judgement, the others open theirs of the same name (and key) for the same wait.
//!
//! Redis is never on the call path: opening only queues a message (dropped when the queue is full), a background
//! task publishes it with a timeout, and a subscriber task reconnects with backoff. A breaker opened by a message does
//! not publish, so instances never echo each other.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use breaker_layer::CircuitBreaker;
//! use breaker_layer::redis::RedisOpenSync;
//!
//! let breaker = CircuitBreaker::builder().name("payments").build()?;
//! let sync = RedisOpenSync::builder(redis::Client::open("redis://127.0.0.1:6379")?)
//!     .channel("myapp:breaker:open")
//!     .start();
//! sync.attach(&breaker);
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::breaker::{CircuitBreaker, OpenListener};
use crate::keyed::KeyedBreakers;

/// Messages waiting to be published; when Redis is slow or gone, further ones are dropped.
const QUEUE: usize = 256;
const VERSION: &str = "v1";

#[derive(Clone)]
enum Target {
    Single(CircuitBreaker),
    Keyed(KeyedBreakers),
}

struct Inner {
    instance: String,
    targets: Mutex<HashMap<Arc<str>, Target>>,
    queue: mpsc::Sender<String>,
}

/// Builder for [`RedisOpenSync`].
#[must_use]
#[derive(Debug)]
pub struct RedisOpenSyncBuilder {
    client: redis::Client,
    channel: String,
    timeout: Duration,
    reconnect_min: Duration,
    reconnect_max: Duration,
}

impl RedisOpenSyncBuilder {
    /// Pub/sub channel shared by the instances.
    ///
    /// Defaults to `"breaker:open"`.
    pub fn channel(mut self, channel: impl Into<String>) -> Self {
        self.channel = channel.into();
        self
    }

    /// Limit for connecting and for each publish.
    ///
    /// Defaults to 1 second.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Backoff between subscriber reconnections: doubles from `min` up to `max`, back to `min` after a success.
    /// `min` is at least 1 ms, so a Redis that accepts and drops connections is not hammered in a loop.
    ///
    /// Defaults to 100 ms and 10 s.
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        let min = min.max(Duration::from_millis(1));
        self.reconnect_min = min;
        self.reconnect_max = max.max(min);
        self
    }

    /// Spawn the publisher and subscriber tasks (on the current tokio runtime) and return the handle; dropping it
    /// stops them.
    pub fn start(self) -> RedisOpenSync {
        let (queue, rx) = mpsc::channel(QUEUE);
        let inner = Arc::new(Inner {
            instance: format!("{:016x}", fastrand::u64(..)),
            targets: Mutex::new(HashMap::new()),
            queue,
        });
        let publisher = tokio::spawn(publish_loop(
            self.client.clone(),
            self.channel.clone(),
            self.timeout,
            rx,
        ));
        let subscriber = tokio::spawn(subscribe_loop(
            self.client,
            self.channel,
            self.timeout,
            (self.reconnect_min, self.reconnect_max),
            Arc::downgrade(&inner),
        ));
        RedisOpenSync {
            inner,
            tasks: [publisher, subscriber],
        }
    }
}

/// Shares Open transitions of the attached breakers with other instances through Redis pub/sub.
pub struct RedisOpenSync {
    inner: Arc<Inner>,
    tasks: [JoinHandle<()>; 2],
}

impl fmt::Debug for RedisOpenSync {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisOpenSync")
            .field("instance", &self.inner.instance)
            .finish_non_exhaustive()
    }
}

impl Drop for RedisOpenSync {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl RedisOpenSync {
    /// Start configuring, with the Redis client to use.
    pub fn builder(client: redis::Client) -> RedisOpenSyncBuilder {
        RedisOpenSyncBuilder {
            client,
            channel: "breaker:open".to_owned(),
            timeout: Duration::from_secs(1),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(10),
        }
    }

    /// Random id of this instance, carried in its messages so it ignores its own.
    pub fn instance_id(&self) -> &str {
        &self.inner.instance
    }

    /// Share `breaker`'s Open transitions and follow other instances' for the breaker of the same name.
    pub fn attach(&self, breaker: &CircuitBreaker) {
        breaker.set_open_listener(self.listener());
        self.targets()
            .insert(Arc::from(breaker.name()), Target::Single(breaker.clone()));
    }

    /// Same for every breaker of a per-key registry (messages carry the key).
    pub fn attach_keyed(&self, registry: &KeyedBreakers) {
        registry.set_open_listener(self.listener());
        self.targets()
            .insert(Arc::from(registry.name()), Target::Keyed(registry.clone()));
    }

    fn targets(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Target>> {
        self.inner
            .targets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn listener(&self) -> OpenListener {
        let queue = self.inner.queue.clone();
        let instance = self.inner.instance.clone();
        Arc::new(move |name: &str, key: Option<&str>, wait: Duration| {
            // Never wait: a full queue means Redis is not keeping up, and the call path must not notice.
            let _ = queue.try_send(encode(&instance, name, key, wait));
        })
    }
}

/// `v1 <instance> <wait_ms> <name_len> <k|-><name><key>`: the name is length-prefixed, the key is the rest.
fn encode(instance: &str, name: &str, key: Option<&str>, wait: Duration) -> String {
    let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
    let flag = if key.is_some() { 'k' } else { '-' };
    format!(
        "{VERSION} {instance} {wait_ms} {} {flag}{name}{}",
        name.len(),
        key.unwrap_or("")
    )
}

#[derive(Debug, PartialEq, Eq)]
struct Message<'a> {
    instance: &'a str,
    wait: Duration,
    name: &'a str,
    key: Option<&'a str>,
}

fn decode(text: &str) -> Option<Message<'_>> {
    let mut parts = text.splitn(5, ' ');
    if parts.next()? != VERSION {
        return None;
    }
    let instance = parts.next()?;
    let wait = Duration::from_millis(parts.next()?.parse().ok()?);
    let name_len: usize = parts.next()?.parse().ok()?;
    let rest = parts.next()?;
    let keyed = match rest.get(..1)? {
        "k" => true,
        "-" => false,
        _ => return None,
    };
    let name_end = name_len.checked_add(1)?;
    let name = rest.get(1..name_end)?;
    let key = rest.get(name_end..)?;
    Some(Message {
        instance,
        wait,
        name,
        key: keyed.then_some(key),
    })
}

async fn publish_loop(
    client: redis::Client,
    channel: String,
    timeout: Duration,
    mut rx: mpsc::Receiver<String>,
) {
    let mut conn: Option<redis::aio::MultiplexedConnection> = None;
    while let Some(message) = rx.recv().await {
        // A connection that broke since the last message gets one fresh retry.
        for _ in 0..2 {
            if conn.is_none() {
                conn = match tokio::time::timeout(
                    timeout,
                    client.get_multiplexed_async_connection(),
                )
                .await
                {
                    Ok(Ok(c)) => Some(c),
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "breaker open not shared: redis unreachable");
                        break;
                    }
                    Err(_) => {
                        tracing::debug!("breaker open not shared: redis connect timed out");
                        break;
                    }
                };
            }
            let Some(c) = conn.as_mut() else { break };
            let mut cmd = redis::cmd("PUBLISH");
            cmd.arg(&channel).arg(&message);
            match tokio::time::timeout(timeout, cmd.query_async::<i64>(c)).await {
                Ok(Ok(_)) => break,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "breaker open not shared: publish failed")
                }
                Err(_) => tracing::debug!("breaker open not shared: publish timed out"),
            }
            conn = None;
        }
    }
}

async fn subscribe_loop(
    client: redis::Client,
    channel: String,
    timeout: Duration,
    (min, max): (Duration, Duration),
    inner: std::sync::Weak<Inner>,
) {
    let mut backoff = min;
    loop {
        let connected = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        match tokio::time::timeout(timeout, connected).await {
            Ok(Ok(mut pubsub)) => {
                backoff = min;
                tracing::debug!(channel = %channel, "breaker open sharing subscribed");
                let mut stream = pubsub.on_message();
                while let Some(msg) = stream.next().await {
                    let Some(inner) = inner.upgrade() else { return };
                    if let Ok(text) = msg.get_payload::<String>() {
                        apply(&inner, &text);
                    }
                }
                tracing::debug!("breaker open sharing lost its subscription; reconnecting");
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "breaker open sharing cannot subscribe"),
            Err(_) => tracing::debug!("breaker open sharing subscribe timed out"),
        }
        if inner.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = next_backoff(backoff, max);
    }
}

fn next_backoff(backoff: Duration, max: Duration) -> Duration {
    backoff.saturating_mul(2).min(max)
}

fn apply(inner: &Inner, text: &str) {
    let Some(msg) = decode(text) else { return };
    if msg.instance == inner.instance {
        return;
    }
    let target = inner
        .targets
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(msg.name)
        .cloned();
    let breaker = match (target, msg.key) {
        (Some(Target::Single(b)), None) => b,
        (Some(Target::Keyed(r)), Some(key)) => r.get_or_insert(key),
        _ => return,
    };
    if breaker.trip_for(msg.wait) {
        tracing::info!(breaker = msg.name, key = msg.key, wait = ?msg.wait, "circuit breaker opened by another instance");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let text = encode(
            "abc",
            "pay ments",
            Some("t 1|x"),
            Duration::from_millis(1500),
        );
        assert_eq!(
            decode(&text),
            Some(Message {
                instance: "abc",
                wait: Duration::from_millis(1500),
                name: "pay ments",
                key: Some("t 1|x")
            })
        );
        let text = encode("abc", "db", None, Duration::from_secs(2));
        assert_eq!(decode(&text).unwrap().key, None);
        assert_eq!(decode("v2 a 1 1 -x"), None);
        assert_eq!(decode("v1 a 1 9 -x"), None);
        assert_eq!(decode("v1 a x 1 -x"), None);
        assert_eq!(decode(""), None);
    }

    #[test]
    fn hostile_messages_are_refused_without_panicking() {
        // Anyone who can publish on the channel reaches this parser; a panic would end the subscriber task.
        assert_eq!(decode("v1 a 1 18446744073709551615 -x"), None);
        assert_eq!(decode("v1 a 1 18446744073709551614 -x"), None);
        assert_eq!(decode("v1 a 99999999999999999999 1 -x"), None);
        assert_eq!(decode("v1 a 1 1 -\u{e9}"), None);
    }

    #[test]
    fn reconnect_backoff_neither_spins_nor_overflows() {
        let client = redis::Client::open("redis://127.0.0.1:1").unwrap();
        let b = RedisOpenSync::builder(client).reconnect_backoff(Duration::ZERO, Duration::ZERO);
        assert!(
            b.reconnect_min > Duration::ZERO,
            "a zero delay would reconnect in a busy loop"
        );
        assert!(b.reconnect_max >= b.reconnect_min);
        let mut d = Duration::from_secs(1);
        for _ in 0..100 {
            d = next_backoff(d, Duration::MAX);
        }
        assert_eq!(d, Duration::MAX);
        assert_eq!(
            next_backoff(Duration::from_secs(8), Duration::from_secs(10)),
            Duration::from_secs(10)
        );
    }
}
