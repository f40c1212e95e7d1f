//! Harness of the fault tests: stacked chat services served over real TCP on one SQLite file,
//! a concurrent load of reads and posts against them, and the counts that must return to zero.
#![allow(dead_code)]
// Test helpers: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chat_service::{ChatService, Config, Database};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Rooms the load reads and writes, seeded before it starts.
pub(crate) const ROOMS: u32 = 3;

/// One chat service served on a loopback port until dropped.
pub(crate) struct Instance {
    pub(crate) service: ChatService,
    pub(crate) addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

impl Instance {
    /// Opens a service for `config` and serves its stacked app.
    pub(crate) async fn start(config: &Config) -> Self {
        let service = ChatService::open(config).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(chat_service::serve(listener, service.app(), async move {
            let _ = stopped.await;
        }));
        Self {
            service,
            addr,
            stop: Some(stop),
            server: Some(server),
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Stops accepting, lets open requests finish and waits for the server task.
    pub(crate) async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(server) = &self.server {
            server.abort();
        }
    }
}

/// Two stacked instances over one database file in a temporary directory, sharing `redis_url`.
pub(crate) struct Pair {
    pub(crate) a: Instance,
    pub(crate) b: Instance,
    pub(crate) dir: tempfile::TempDir,
}

impl Pair {
    pub(crate) async fn start(redis_url: Option<String>, adjust: impl Fn(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            database: Database::File(dir.path().join("chat.db")),
            redis_url,
            ..Config::default()
        };
        adjust(&mut config);
        let a = Instance::start(&config).await;
        a.service.seed(ROOMS, 20).await.unwrap();
        let b = Instance::start(&config).await;
        Self { a, b, dir }
    }

    pub(crate) fn instances(&self) -> [&Instance; 2] {
        [&self.a, &self.b]
    }
}

pub(crate) type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub(crate) fn client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        // No idle timer: its task would outlive the client by up to the timeout, and the
        // tests count tasks.
        .pool_idle_timeout(None)
        .build_http()
}

/// A full answer.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: http::HeaderMap,
    pub(crate) body: Bytes,
    pub(crate) took: Duration,
}

impl Answer {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// Sends a request and reads the whole answer; `Err` carries a transport failure.
pub(crate) async fn send(
    client: &HttpClient,
    request: Request<Full<Bytes>>,
) -> Result<Answer, String> {
    let started = Instant::now();
    let response = client
        .request(request)
        .await
        .map_err(|e| format!("{e:?}"))?;
    let status = response.status();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{e:?}"))?
        .to_bytes();
    Ok(Answer {
        status,
        headers,
        body,
        took: started.elapsed(),
    })
}

pub(crate) fn get(url: &str) -> Request<Full<Bytes>> {
    Request::get(url).body(Full::default()).unwrap()
}

pub(crate) fn post(url: &str, text: &str, key: Option<&str>) -> Request<Full<Bytes>> {
    let mut request = Request::post(url).header("content-type", "application/json");
    if let Some(key) = key {
        request = request.header("idempotency-key", format!("\"{key}\""));
    }
    request
        .body(Full::new(Bytes::from(
            serde_json::json!({ "author": "load", "text": text }).to_string(),
        )))
        .unwrap()
}

/// What one request of the load was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Kind {
    Read,
    Post,
    KeyedPost,
}

/// Everything the load saw.
#[derive(Debug, Default)]
pub(crate) struct Record {
    /// `(kind, status or 0 for a transport error) -> count`.
    pub(crate) outcomes: BTreeMap<(Kind, u16), u64>,
    /// Longest answer per kind.
    pub(crate) slowest: BTreeMap<Kind, Duration>,
    /// Transport errors, with the request.
    pub(crate) transport_errors: Vec<String>,
    /// Texts of the posts answered `201`, with the id.
    pub(crate) stored: HashMap<String, i64>,
    /// Keyed posts that got `503` and are still to be retried: `(key, text)`.
    pub(crate) pending_keyed: Vec<(String, String)>,
    /// Keyed posts answered `503` at least once and later `201`.
    pub(crate) retried_keyed: u64,
    /// Bodies of unexpected answers, for the failure message.
    pub(crate) unexpected: Vec<String>,
}

impl Record {
    pub(crate) fn count(&self, kind: Kind, status: u16) -> u64 {
        self.outcomes.get(&(kind, status)).copied().unwrap_or(0)
    }

    pub(crate) fn total(&self) -> u64 {
        self.outcomes.values().sum()
    }

    /// Requests that got anything but the expected answer: reads `200`, posts `201`, keyed
    /// posts `201`, or `503` from the idempotency store (the documented policy).
    pub(crate) fn failures(&self) -> u64 {
        self.outcomes
            .iter()
            .filter(|((kind, status), _)| match kind {
                Kind::Read => *status != 200,
                Kind::Post => *status != 201,
                Kind::KeyedPost => *status != 201 && *status != 503,
            })
            .map(|(_, n)| n)
            .sum()
    }
}

/// A concurrent load of reads (pages, single messages, the room list) and posts (with and
/// without `Idempotency-Key`) spread over every instance.
pub(crate) struct Load {
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
    pub(crate) record: Arc<Mutex<Record>>,
    pub(crate) sent: Arc<AtomicU64>,
    client: HttpClient,
}

impl Load {
    /// Starts `workers` tasks; each loops over the mix until [`stop`](Self::stop).
    pub(crate) fn start(bases: Vec<String>, workers: usize) -> Self {
        static GENERATION: AtomicU64 = AtomicU64::new(0);
        let generation = GENERATION.fetch_add(1, Ordering::Relaxed);
        let stop = Arc::new(AtomicBool::new(false));
        let record = Arc::new(Mutex::new(Record::default()));
        let sent = Arc::new(AtomicU64::new(0));
        let client = client();
        let workers = (0..workers)
            .map(|worker| {
                let (stop, record, sent, client, bases) = (
                    stop.clone(),
                    record.clone(),
                    sent.clone(),
                    client.clone(),
                    bases.clone(),
                );
                tokio::spawn(async move {
                    let mut n: u64 = 0;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let base = &bases[(n as usize + worker) % bases.len()];
                        let room = 1 + (n % u64::from(ROOMS));
                        sent.fetch_add(1, Ordering::Relaxed);
                        let tag = format!("g{generation}w{worker}");
                        step(&client, base, &tag, n, room, &record).await;
                    }
                })
            })
            .collect();
        Self {
            stop,
            workers,
            record,
            sent,
            client,
        }
    }

    /// Stops the workers after their current request and returns the record.
    pub(crate) async fn stop(self) -> Record {
        self.stop.store(true, Ordering::Relaxed);
        for worker in self.workers {
            worker.await.unwrap();
        }
        drop(self.client);
        Arc::try_unwrap(self.record)
            .map(|m| m.into_inner().unwrap())
            .unwrap_or_default()
    }
}

async fn step(
    client: &HttpClient,
    base: &str,
    tag: &str,
    n: u64,
    room: u64,
    record: &Mutex<Record>,
) {
    let text = format!("{tag}-n{n}");
    let (kind, request, key) = match n % 8 {
        0 => (
            Kind::Post,
            post(&format!("{base}/rooms/room-{room}/messages"), &text, None),
            None,
        ),
        4 => {
            let key = format!("key-{tag}-{n}");
            (
                Kind::KeyedPost,
                post(
                    &format!("{base}/rooms/room-{room}/messages"),
                    &text,
                    Some(&key),
                ),
                Some(key),
            )
        }
        1 => (Kind::Read, get(&format!("{base}/rooms")), None),
        // Seeded ids go round the rooms: room-r holds r, r + ROOMS, r + 2 ROOMS, ...
        2 => (
            Kind::Read,
            get(&format!(
                "{base}/rooms/room-{room}/messages/{}",
                room + u64::from(ROOMS) * (n % 20)
            )),
            None,
        ),
        _ => (
            Kind::Read,
            get(&format!("{base}/rooms/room-{room}/messages")),
            None,
        ),
    };
    let answer = send(client, request).await;
    let mut record = record.lock().unwrap();
    let status = match &answer {
        Ok(a) => a.status.as_u16(),
        Err(e) => {
            record.transport_errors.push(e.clone());
            0
        }
    };
    *record.outcomes.entry((kind, status)).or_default() += 1;
    if let Ok(answer) = &answer {
        let slowest = record.slowest.entry(kind).or_default();
        *slowest = (*slowest).max(answer.took);
        match (kind, status) {
            (Kind::Post | Kind::KeyedPost, 201) => {
                let id = answer.json()["id"].as_i64().unwrap_or(-1);
                record.stored.insert(text, id);
            }
            (Kind::KeyedPost, 503) => {
                record
                    .pending_keyed
                    .push((key.unwrap_or_default(), text.clone()));
            }
            (Kind::Read, 200) => {}
            _ => {
                let body = String::from_utf8_lossy(&answer.body).into_owned();
                record.unexpected.push(format!("{kind:?} {status}: {body}"));
            }
        }
    }
}

/// Retries every pending keyed post with its key and body until it is stored, alternating
/// instances, for at most `limit`. Returns how many were still pending.
pub(crate) async fn drain_keyed(record: &mut Record, bases: &[String], limit: Duration) -> usize {
    let client = client();
    let deadline = Instant::now() + limit;
    let mut pending = std::mem::take(&mut record.pending_keyed);
    let mut round = 0usize;
    while !pending.is_empty() && Instant::now() < deadline {
        round += 1;
        let mut still = Vec::new();
        for (key, text) in pending {
            let room = text_room(&text);
            let base = &bases[round % bases.len()];
            let url = format!("{base}/rooms/room-{room}/messages");
            match send(&client, post(&url, &text, Some(&key))).await {
                Ok(a) if a.status == StatusCode::CREATED => {
                    record.retried_keyed += 1;
                    let id = a.json()["id"].as_i64().unwrap_or(-1);
                    if let Some(previous) = record.stored.insert(text.clone(), id) {
                        assert_eq!(previous, id, "{key}: a replay must carry the first id");
                    }
                }
                _ => still.push((key, text)),
            }
        }
        pending = still;
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let left = pending.len();
    record.pending_keyed = pending;
    left
}

/// The room a load text was posted to (`g{load}w{worker}-n{n}` went to `room-{1 + n % ROOMS}`).
fn text_room(text: &str) -> u64 {
    let n: u64 = text
        .rsplit_once("-n")
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or(0);
    1 + n % u64::from(ROOMS)
}

/// Every message of `room` as `text -> ids`, read page by page from the read model of one
/// instance with `Cache-Control: no-cache`-free plain reads (the pages are current: the
/// caller waits for purges first).
pub(crate) async fn all_texts(base: &str, rooms: u32) -> HashMap<String, Vec<i64>> {
    let client = client();
    let mut texts: HashMap<String, Vec<i64>> = HashMap::new();
    for room in 1..=rooms {
        let mut before: Option<i64> = None;
        loop {
            let url = match before {
                Some(b) => format!("{base}/rooms/room-{room}/messages?limit=200&before={b}"),
                None => format!("{base}/rooms/room-{room}/messages?limit=200"),
            };
            let page = send(&client, get(&url)).await.unwrap();
            assert_eq!(page.status, StatusCode::OK);
            let page = page.json();
            for m in page["messages"].as_array().unwrap() {
                texts
                    .entry(m["text"].as_str().unwrap().to_owned())
                    .or_default()
                    .push(m["id"].as_i64().unwrap());
            }
            match page["next_before"].as_i64() {
                Some(next) => before = Some(next),
                None => break,
            }
        }
    }
    texts
}

/// Asserts every `201` is stored exactly once, under the id it was answered with, and no
/// load text is stored twice.
pub(crate) fn assert_stored_once(record: &Record, texts: &HashMap<String, Vec<i64>>) {
    for (text, id) in &record.stored {
        let ids = texts
            .get(text)
            .unwrap_or_else(|| panic!("{text} answered 201 but is lost"));
        assert_eq!(ids, &vec![*id], "{text} stored {} times", ids.len());
    }
    for (text, ids) in texts {
        if text.starts_with('g') {
            assert_eq!(ids.len(), 1, "{text} stored twice: {ids:?}");
            assert!(
                record.stored.contains_key(text),
                "{text} stored but never acknowledged"
            );
        }
    }
}

/// Established TCP connections whose local port is `port` (the server side of the
/// connections to a listener), from `/proc/net/tcp`.
pub(crate) fn established_to(port: u16) -> usize {
    let mut n = 0;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 4 {
                continue;
            }
            let local_port = fields[1]
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            // State 01 is ESTABLISHED.
            if local_port == Some(port) && fields[3] == "01" {
                n += 1;
            }
        }
    }
    n
}

/// Polls `probe` every 20 ms until it returns `true`, at most `limit`; returns the last result.
pub(crate) async fn eventually(limit: Duration, mut probe: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if probe() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asserts that, once the load is over, nothing the stack tracks per request is left: no
/// coalesced read leading or waiting, no collapsed miss or background refresh in the cache,
/// no probe permit of the moderation breaker, no open connection to either server, and no
/// task beyond those of the `baseline` (tasks alive, Redis connections open) except two for
/// each Redis connection opened since (`redis_connections`: pooled connections stay open, and
/// each has its redis-rs driver task and its `FaultProxy` forwarding task in this runtime).
pub(crate) async fn assert_nothing_left(
    pair: &Pair,
    baseline: (usize, usize),
    redis_connections: impl Fn() -> usize,
) {
    for instance in pair.instances() {
        let dedup = instance.service.dedup_handle();
        let cache = instance.service.cache_handle();
        let port = instance.addr.port();
        let settled = eventually(Duration::from_secs(3), || {
            dedup.inflight() == 0
                && dedup.waiters() == 0
                && cache.collapsed_in_flight() == 0
                && cache.refreshes_in_flight() == 0
                && established_to(port) == 0
        })
        .await;
        assert!(
            settled,
            "left over on {}: dedup inflight {} waiters {}, cache collapsed {} refreshes {}, \
             connections {}",
            instance.addr,
            dedup.inflight(),
            dedup.waiters(),
            cache.collapsed_in_flight(),
            cache.refreshes_in_flight(),
            established_to(port)
        );
        if let Some(breaker) = instance.service.moderation_breaker() {
            assert_eq!(breaker.snapshot().probes_in_flight, 0, "probe permits held");
        }
    }
    let metrics = tokio::runtime::Handle::current().metrics();
    let (tasks, connections) = baseline;
    let allowed = || tasks + 2 * redis_connections().saturating_sub(connections);
    // Background work started by the faults (purges sent again, records stored late, Redis
    // reconnections) ends within a few seconds of Redis answering again.
    let settled = eventually(Duration::from_secs(8), || {
        metrics.num_alive_tasks() <= allowed()
    })
    .await;
    assert!(
        settled,
        "{} tasks alive, {} allowed ({tasks} before the load, Redis connections {} then {})",
        metrics.num_alive_tasks(),
        allowed(),
        connections,
        redis_connections()
    );
}

/// Sends one read of each kind (and a post with `post`) to every instance and waits until
/// the connections are closed, so the tasks a service starts on first use (timers, client
/// pools) are alive before a baseline is taken.
pub(crate) async fn warm_up(pair: &Pair, with_post: bool) {
    let http = client();
    for instance in pair.instances() {
        for path in [
            "/rooms",
            "/rooms/room-1/messages",
            "/rooms/room-1/messages/1",
        ] {
            let _ = send(&http, get(&instance.url(path))).await.unwrap();
        }
        if with_post {
            let url = instance.url("/rooms/warm-up/messages");
            let reply = send(&http, post(&url, "warm-up", None)).await.unwrap();
            assert_eq!(reply.status, StatusCode::CREATED);
        }
    }
    drop(http);
    for instance in pair.instances() {
        let port = instance.addr.port();
        assert!(eventually(Duration::from_secs(3), || established_to(port) == 0).await);
    }
}

/// Tasks alive on this runtime now.
pub(crate) fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}
