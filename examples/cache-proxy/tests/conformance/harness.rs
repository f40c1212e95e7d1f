//! The runner for the ported cache-tests.fyi checks: a local origin that answers each request
//! as its case configures, a client that talks to cache-proxy over TCP, and the suite's
//! assertions (cached / not cached / validated, status, fields, body, forwarded fields).
//!
//! Time is tokio's paused clock: the proxy's cache, the origin's `Date` and the suite's
//! three-second pauses all move with `tokio::time::advance`, so nothing sleeps for real.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use cache_layer::date::format_http_date;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::time::Instant;
use tower_service::Service;

/// How the suite classifies a test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    /// A requirement of the specification.
    Required,
    /// What an optimal cache does.
    Optimal,
    /// Information gathering: neither answer is wrong.
    Check,
}

/// `expected_type` of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Type {
    Cached,
    NotCached,
    EtagValidated,
    LmValidated,
}

/// A field value: literal text, or an HTTP-date this many seconds from "now".
#[derive(Debug, Clone)]
pub(crate) enum Val {
    Text(String),
    Date(i64),
}

impl From<&str> for Val {
    fn from(s: &str) -> Self {
        Val::Text(s.to_owned())
    }
}

impl From<String> for Val {
    fn from(s: String) -> Self {
        Val::Text(s)
    }
}

impl From<i64> for Val {
    fn from(d: i64) -> Self {
        Val::Date(d)
    }
}

impl From<i32> for Val {
    fn from(d: i32) -> Self {
        Val::Date(i64::from(d))
    }
}

/// One entry of `expected_response_headers`.
#[derive(Debug, Clone)]
pub(crate) enum HeaderCheck {
    Present(String),
    Equals(String, Val),
    GreaterThan(String, i64),
}

/// One request of a case and what the origin answers to it.
#[derive(Debug, Clone)]
pub(crate) struct ReqSpec {
    method: Option<&'static str>,
    request_headers: Option<Vec<(String, Val)>>,
    request_body: Option<&'static str>,
    filename: Option<String>,
    query: Option<String>,
    response_status: Option<u16>,
    response_headers: Vec<(String, Val, bool)>,
    response_body: Option<String>,
    pause_after: bool,
    disconnect: bool,
    magic_locations: bool,
    expected_type: Option<Type>,
    expected_status: Option<Option<u16>>,
    expected_response_headers: Vec<HeaderCheck>,
    expected_response_headers_missing: Vec<String>,
    expected_request_headers: Vec<(String, Option<String>)>,
    expected_method: Option<&'static str>,
    expected_response_text: Option<Option<String>>,
    check_body: bool,
    setup: bool,
    setup_tests: Vec<&'static str>,
    /// Not in the suite: answer `304` whenever the request is conditional.
    not_modified_when_conditional: bool,
    /// Not in the suite: the cache may send this request to the origin twice.
    allow_repeat: bool,
}

/// A request with nothing configured (a plain GET answered `200` with the test's body).
pub(crate) fn r() -> ReqSpec {
    ReqSpec {
        method: None,
        request_headers: None,
        request_body: None,
        filename: None,
        query: None,
        response_status: None,
        response_headers: Vec::new(),
        response_body: None,
        pause_after: false,
        disconnect: false,
        magic_locations: false,
        expected_type: None,
        expected_status: None,
        expected_response_headers: Vec::new(),
        expected_response_headers_missing: Vec::new(),
        expected_request_headers: Vec::new(),
        expected_method: None,
        expected_response_text: None,
        check_body: true,
        setup: false,
        setup_tests: Vec::new(),
        not_modified_when_conditional: false,
        allow_repeat: false,
    }
}

impl ReqSpec {
    /// Response field, also checked on the client's response.
    pub(crate) fn rh(mut self, name: &str, v: impl Into<Val>) -> Self {
        self.response_headers
            .push((name.to_owned(), v.into(), true));
        self
    }
    /// Response field, not checked on the client's response.
    pub(crate) fn rhu(mut self, name: &str, v: impl Into<Val>) -> Self {
        self.response_headers
            .push((name.to_owned(), v.into(), false));
        self
    }
    /// Request field (the first one replaces the suite's default request fields).
    pub(crate) fn qh(mut self, name: &str, v: impl Into<Val>) -> Self {
        self.request_headers
            .get_or_insert_with(Vec::new)
            .push((name.to_owned(), v.into()));
        self
    }
    pub(crate) fn method(mut self, m: &'static str) -> Self {
        self.method = Some(m);
        self
    }
    pub(crate) fn req_body(mut self, b: &'static str) -> Self {
        self.request_body = Some(b);
        self
    }
    pub(crate) fn filename(mut self, f: &str) -> Self {
        self.filename = Some(f.to_owned());
        self
    }
    pub(crate) fn query(mut self, q: &str) -> Self {
        self.query = Some(q.to_owned());
        self
    }
    pub(crate) fn status(mut self, s: u16) -> Self {
        self.response_status = Some(s);
        self
    }
    pub(crate) fn body(mut self, b: &str) -> Self {
        self.response_body = Some(b.to_owned());
        self
    }
    pub(crate) fn pause(mut self) -> Self {
        self.pause_after = true;
        self
    }
    pub(crate) fn disconnect(mut self) -> Self {
        self.disconnect = true;
        self
    }
    pub(crate) fn magic_locations(mut self) -> Self {
        self.magic_locations = true;
        self
    }
    pub(crate) fn setup(mut self) -> Self {
        self.setup = true;
        self
    }
    pub(crate) fn setup_tests(mut self, t: &[&'static str]) -> Self {
        self.setup_tests.extend_from_slice(t);
        self
    }
    pub(crate) fn expect(mut self, t: Type) -> Self {
        self.expected_type = Some(t);
        self
    }
    pub(crate) fn expect_status(mut self, s: u16) -> Self {
        self.expected_status = Some(Some(s));
        self
    }
    /// `expected_status: null`: any status.
    pub(crate) fn any_status(mut self) -> Self {
        self.expected_status = Some(None);
        self
    }
    pub(crate) fn erh(mut self, name: &str, v: impl Into<Val>) -> Self {
        self.expected_response_headers
            .push(HeaderCheck::Equals(name.to_owned(), v.into()));
        self
    }
    pub(crate) fn erh_present(mut self, name: &str) -> Self {
        self.expected_response_headers
            .push(HeaderCheck::Present(name.to_owned()));
        self
    }
    pub(crate) fn erh_gt(mut self, name: &str, n: i64) -> Self {
        self.expected_response_headers
            .push(HeaderCheck::GreaterThan(name.to_owned(), n));
        self
    }
    pub(crate) fn missing(mut self, name: &str) -> Self {
        self.expected_response_headers_missing.push(name.to_owned());
        self
    }
    pub(crate) fn ereq(mut self, name: &str, v: &str) -> Self {
        self.expected_request_headers
            .push((name.to_owned(), Some(v.to_owned())));
        self
    }
    pub(crate) fn expected_method(mut self, m: &'static str) -> Self {
        self.expected_method = Some(m);
        self
    }
    /// `expected_response_text` (`None`: not checked).
    pub(crate) fn text(mut self, t: Option<&str>) -> Self {
        self.expected_response_text = Some(t.map(str::to_owned));
        self
    }
    /// The origin answers `304` to any conditional request for this request number.
    pub(crate) fn not_modified_when_conditional(mut self) -> Self {
        self.not_modified_when_conditional = true;
        self
    }
    /// The cache may repeat this request to the origin (no retry failure).
    pub(crate) fn allow_repeat(mut self) -> Self {
        self.allow_repeat = true;
        self
    }
    pub(crate) fn no_body_check(mut self) -> Self {
        self.check_body = false;
        self
    }
}

/// One test of the suite.
#[derive(Debug, Clone)]
pub(crate) struct Case {
    pub(crate) id: &'static str,
    pub(crate) kind: Kind,
    pub(crate) requests: Vec<ReqSpec>,
}

pub(crate) fn case(id: &'static str, kind: Kind, requests: Vec<ReqSpec>) -> Case {
    Case { id, kind, requests }
}

/// The suite's request templates.
pub(crate) mod templates {
    use super::ReqSpec;

    /// A response fresh for a long time, stored, then three seconds pass.
    pub(crate) fn fresh(req: ReqSpec) -> ReqSpec {
        req.rh("Expires", 100_000)
            .rh("Cache-Control", "max-age=100000")
            .rh("Last-Modified", 0)
            .rh("Date", 0)
            .setup()
            .pause()
    }

    /// An already stale response with a validator.
    pub(crate) fn stale(req: ReqSpec) -> ReqSpec {
        req.rh("Expires", -5000)
            .rh("Last-Modified", -100_000)
            .rh("Date", 0)
    }

    /// A response fresh for two seconds, then three seconds pass.
    pub(crate) fn become_stale(req: ReqSpec) -> ReqSpec {
        req.rh("Cache-Control", "max-age=2")
            .rh("Template-A", "1")
            .setup()
            .pause()
    }
}

/// How a case ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    Pass,
    /// A check of the test itself failed.
    Fail(String),
    /// A setup check failed: the test could not be run as designed.
    Setup(String),
}

impl Outcome {
    fn label(&self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Fail(_) => "FAIL",
            Outcome::Setup(_) => "setup-fail",
        }
    }
}

fn check(setup: bool, ok: bool, msg: impl FnOnce() -> String) -> Result<(), Outcome> {
    if ok {
        Ok(())
    } else if setup {
        Err(Outcome::Setup(msg()))
    } else {
        Err(Outcome::Fail(msg()))
    }
}

/// What the origin recorded of one request it answered.
#[derive(Debug, Clone)]
struct Seen {
    request_num: usize,
    method: Method,
    headers: HeaderMap,
    /// Response fields the client must see unchanged: name and joined value.
    checked: Vec<(String, String)>,
}

#[derive(Debug)]
struct TestState {
    configs: Vec<ReqSpec>,
    /// Response fields actually sent per request number (dates resolved).
    sent: HashMap<usize, Vec<(String, String)>>,
    seen: Vec<Seen>,
}

/// Wall-clock milliseconds that move with tokio's (paused) clock.
#[derive(Debug, Clone, Copy)]
struct VirtualClock {
    base: Instant,
    base_ms: u64,
}

impl VirtualClock {
    fn new() -> Self {
        let base_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(0))
            .unwrap_or(0);
        Self {
            base: Instant::now(),
            base_ms,
        }
    }

    fn now_ms(&self) -> u64 {
        let elapsed = Instant::now().saturating_duration_since(self.base);
        self.base_ms + u64::try_from(elapsed.as_millis()).unwrap_or(0)
    }
}

fn http_date(now_ms: u64, delta: i64) -> String {
    let secs = i64::try_from(now_ms / 1000).unwrap_or(0) + delta;
    format_http_date(u64::try_from(secs).unwrap_or(0))
}

fn resolve(v: &Val, now_ms: u64) -> String {
    match v {
        Val::Text(s) => s.clone(),
        Val::Date(d) => http_date(now_ms, *d),
    }
}

/// The origin: answers `/test/{uuid}[/{filename}]` as the case configures.
#[derive(Debug)]
struct Origin {
    clock: std::sync::OnceLock<VirtualClock>,
    tests: Mutex<HashMap<String, TestState>>,
}

impl Origin {
    fn now_ms(&self) -> u64 {
        self.clock.get_or_init(VirtualClock::new).now_ms()
    }
}

/// Marks a response the origin drops the connection for instead of sending.
#[derive(Debug, Clone, Copy)]
struct Disconnect;

fn header_lookup<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

async fn origin_handler(State(origin): State<Arc<Origin>>, req: Request<Body>) -> Response<Body> {
    let (parts, _body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    let base_url = parts
        .uri
        .path_and_query()
        .map_or(path.clone(), |p| p.as_str().to_owned());
    let uuid = path.split('/').nth(2).unwrap_or("").to_owned();
    let now_ms = origin.now_ms();
    let mut tests = origin.tests.lock().unwrap();
    let Some(test) = tests.get_mut(&uuid) else {
        return plain(StatusCode::NOT_FOUND, "no such test");
    };
    let srv_num = test.seen.len() + 1;
    let cli_num = parts
        .headers
        .get("req-num")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse::<usize>().ok());
    let req_num = cli_num.unwrap_or(srv_num);
    let Some(cfg) = test.configs.get(req_num - 1).cloned() else {
        return plain(StatusCode::CONFLICT, "config not found");
    };
    let mut status = cfg.response_status.unwrap_or(200);
    if cfg.not_modified_when_conditional
        && (parts.headers.contains_key("if-none-match")
            || parts.headers.contains_key("if-modified-since"))
    {
        status = 304;
    }
    if matches!(
        cfg.expected_type,
        Some(Type::EtagValidated | Type::LmValidated)
    ) {
        let prev_sent = test.sent.get(&(req_num - 1)).cloned().unwrap_or_default();
        let prev_cfg = test.configs.get(req_num.wrapping_sub(2));
        let prev_value = |name: &str| -> Option<String> {
            header_lookup(&prev_sent, name)
                .map(str::to_owned)
                .or_else(|| {
                    prev_cfg.and_then(|c| {
                        c.response_headers
                            .iter()
                            .find(|(n, _, _)| n.eq_ignore_ascii_case(name))
                            .map(|(_, v, _)| resolve(v, now_ms))
                    })
                })
        };
        let req_value = |name: &str| {
            parts
                .headers
                .get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        let mut validated = false;
        if let Some(lm) = prev_value("last-modified")
            && req_value("if-modified-since").as_deref() == Some(lm.as_str())
        {
            validated = true;
        }
        if let Some(etag) = prev_value("etag")
            && req_value("if-none-match").as_deref() == Some(etag.as_str())
        {
            validated = true;
        }
        status = if validated { 304 } else { 999 };
    }

    let mut headers = HeaderMap::new();
    let put = |h: &mut HeaderMap, name: &str, value: &str| {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value.as_bytes()),
        ) {
            h.append(n, v);
        }
    };
    put(&mut headers, "server-base-url", &base_url);
    put(&mut headers, "server-request-count", &srv_num.to_string());
    put(
        &mut headers,
        "client-request-count",
        &cli_num.map_or_else(|| "NaN".to_owned(), |n| n.to_string()),
    );
    put(&mut headers, "server-now", &now_ms.to_string());
    let mut sent: Vec<(String, String)> = Vec::new();
    let mut checked: Vec<(String, String)> = Vec::new();
    for (name, val, check) in &cfg.response_headers {
        let mut value = resolve(val, now_ms);
        if cfg.magic_locations
            && (name.eq_ignore_ascii_case("location")
                || name.eq_ignore_ascii_case("content-location"))
        {
            value = if value.is_empty() {
                base_url.clone()
            } else {
                format!("{base_url}/{value}")
            };
        }
        put(&mut headers, name, &value);
        sent.push((name.clone(), value.clone()));
        if *check {
            match checked
                .iter_mut()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
            {
                Some((_, joined)) => {
                    joined.push_str(", ");
                    joined.push_str(&value);
                }
                None => checked.push((name.clone(), value)),
            }
        }
    }
    if !headers.contains_key("content-type") {
        put(&mut headers, "content-type", "text/plain");
    }
    // The suite's origin always sends `Date`; this one takes it from the paused clock.
    if !headers.contains_key("date") {
        put(&mut headers, "date", &http_date(now_ms, 0));
    }
    test.sent.insert(req_num, sent);
    test.seen.push(Seen {
        request_num: req_num,
        method: parts.method.clone(),
        headers: parts.headers.clone(),
        checked,
    });
    let numbers: Vec<String> = test
        .seen
        .iter()
        .map(|s| s.request_num.to_string())
        .collect();
    put(&mut headers, "request-numbers", &numbers.join(" "));
    drop(tests);

    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    let body = if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        Body::empty()
    } else {
        Body::from(cfg.response_body.clone().unwrap_or_else(|| uuid.clone()))
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    if cfg.disconnect {
        resp.extensions_mut().insert(Disconnect);
    }
    resp
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut r = Response::new(Body::from(text));
    *r.status_mut() = status;
    r
}

/// Serves the origin with hyper so a configured disconnect can drop the connection unanswered.
async fn spawn_origin(origin: Arc<Origin>) -> SocketAddr {
    let app = Router::new()
        .fallback(origin_handler)
        .with_state(origin.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let app = app.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let mut app = app.clone();
                    async move {
                        let resp = app
                            .call(req.map(Body::new))
                            .await
                            .unwrap_or_else(|e: Infallible| match e {});
                        if resp.extensions().get::<Disconnect>().is_some() {
                            Err(std::io::Error::other("configured disconnect"))
                        } else {
                            Ok(resp)
                        }
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// cache-proxy's router, built here (not in a spawned task) so its cache clock exists before
/// the origin's.
async fn spawn_proxy(upstream: SocketAddr) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = cache_proxy::Config::from_args([
        "--upstream".to_owned(),
        format!("http://{upstream}"),
        "--listen".to_owned(),
        addr.to_string(),
    ])
    .unwrap();
    let app = cache_proxy::router(&config).unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// A proxy in front of an origin, and a client.
pub(crate) struct Env {
    proxy: SocketAddr,
    origin: Arc<Origin>,
    client: Client<HttpConnector, Full<Bytes>>,
    next: usize,
}

impl fmt::Debug for Env {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Env").field("proxy", &self.proxy).finish()
    }
}

struct Got {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

/// The value the Fetch API would show: every line of the field joined with ", ".
fn joined(headers: &HeaderMap, name: &str) -> Option<String> {
    let mut values = headers.get_all(name).iter().peekable();
    values.peek()?;
    let parts: Vec<String> = values
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    Some(parts.join(", "))
}

/// Lets spawned work (background refreshes, connection hand-offs) run to completion; the
/// paused clock does not move while it does.
async fn settle(rounds: usize) {
    for _ in 0..rounds {
        tokio::task::yield_now().await;
    }
}

impl Env {
    pub(crate) async fn start() -> Self {
        let origin = Arc::new(Origin {
            clock: std::sync::OnceLock::new(),
            tests: Mutex::new(HashMap::new()),
        });
        let origin_addr = spawn_origin(origin.clone()).await;
        let proxy = spawn_proxy(origin_addr).await;
        // The origin's clock starts after the cache's, so `Date` is never behind the cache's
        // idea of now and the apparent age stays zero, as with a co-located origin.
        origin.clock.get_or_init(VirtualClock::new);
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        Self {
            proxy,
            origin,
            client,
            next: 0,
        }
    }

    async fn send(&self, req: Request<Full<Bytes>>) -> Result<Got, String> {
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| format!("body failed: {e}"))?
            .to_bytes();
        Ok(Got {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// Runs one case; the returned outcome follows the suite's rules.
    pub(crate) async fn run(&mut self, case: &Case) -> Outcome {
        self.next += 1;
        let uuid = format!("{}-{}", self.next, case.id);
        let start_ms = self.origin.now_ms();
        self.origin.tests.lock().unwrap().insert(
            uuid.clone(),
            TestState {
                configs: case.requests.clone(),
                sent: HashMap::new(),
                seen: Vec::new(),
            },
        );
        let clock_start = Instant::now();
        let mut paused = Duration::ZERO;
        let mut responses: Vec<Got> = Vec::new();
        let mut result = Ok(());
        for (idx, spec) in case.requests.iter().enumerate() {
            let req_num = idx + 1;
            let mut path = format!("/test/{uuid}");
            if let Some(f) = &spec.filename {
                path.push('/');
                path.push_str(f);
            }
            if let Some(q) = &spec.query {
                path.push('?');
                path.push_str(q);
            }
            let method = Method::from_bytes(spec.method.unwrap_or("GET").as_bytes()).unwrap();
            let mut b = Request::builder()
                .method(method)
                .uri(format!("http://{}{path}", self.proxy));
            match &spec.request_headers {
                None => {
                    b = b
                        .header("pragma", "foo")
                        .header("cache-control", "nothing-to-see-here");
                }
                Some(list) => {
                    for (n, v) in list {
                        b = b.header(n.as_str(), resolve(v, start_ms));
                    }
                }
            }
            b = b
                .header("test-id", case.id)
                .header("req-num", req_num.to_string());
            let body = spec
                .request_body
                .map_or_else(Bytes::new, |s| Bytes::from_static(s.as_bytes()));
            let req = b.body(Full::new(body)).unwrap();
            let got = match self.send(req).await {
                Ok(g) => g,
                Err(e) => {
                    result = Err(Outcome::Fail(format!("request {req_num}: {e}")));
                    break;
                }
            };
            settle(50).await;
            let checked = check_response(case, spec, req_num, &uuid, &got);
            responses.push(got);
            if let Err(o) = checked {
                result = Err(o);
                break;
            }
            if spec.pause_after {
                tokio::time::advance(Duration::from_secs(3)).await;
                paused += Duration::from_secs(3);
                settle(500).await;
            }
        }
        let drift = Instant::now()
            .saturating_duration_since(clock_start)
            .saturating_sub(paused);
        assert!(
            drift < Duration::from_millis(500),
            "{}: the paused clock moved by itself ({drift:?}); a timer is pending somewhere",
            case.id
        );
        if let Err(o) = result {
            return o;
        }
        let seen = self
            .origin
            .tests
            .lock()
            .unwrap()
            .get(&uuid)
            .map(|t| t.seen.clone())
            .unwrap_or_default();
        match check_server_requests(&case.requests, &responses, &seen) {
            Ok(()) => Outcome::Pass,
            Err(o) => o,
        }
    }
}

fn setup_check(spec: &ReqSpec, member: &str) -> bool {
    spec.setup || spec.setup_tests.contains(&member)
}

fn check_response(
    _case: &Case,
    spec: &ReqSpec,
    req_num: usize,
    uuid: &str,
    got: &Got,
) -> Result<(), Outcome> {
    let res_num = got
        .headers
        .get("server-request-count")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse::<usize>().ok());
    if let Some(numbers) = got
        .headers
        .get("request-numbers")
        .and_then(|v| v.to_str().ok())
    {
        let list: Vec<&str> = numbers.split(' ').collect();
        let mut unique = list.clone();
        unique.sort_unstable();
        unique.dedup();
        check(
            false,
            spec.allow_repeat || unique.len() == list.len(),
            || format!("retry: the origin saw request numbers {numbers}"),
        )?;
    }
    if let Some(t) = spec.expected_type {
        let setup = setup_check(spec, "expected_type");
        match t {
            Type::Cached => {
                if !(got.status == StatusCode::NOT_MODIFIED && res_num.is_none()) {
                    check(setup, res_num.is_some_and(|n| n < req_num), || {
                        format!("response {req_num} does not come from cache")
                    })?;
                }
            }
            Type::NotCached => {
                check(setup, res_num == Some(req_num), || {
                    format!("response {req_num} comes from cache")
                })?;
            }
            Type::EtagValidated | Type::LmValidated => {}
        }
    }
    let status = got.status.as_u16();
    match spec.expected_status {
        Some(Some(s)) => check(setup_check(spec, "expected_status"), status == s, || {
            format!("response {req_num} status is {status}, not {s}")
        })?,
        Some(None) => {}
        None => {
            if let Some(s) = spec.response_status {
                check(true, status == s, || {
                    format!("response {req_num} status is {status}, not {s}")
                })?;
            } else if status == 999 {
                check(setup_check(spec, "expected_type"), false, || {
                    format!("request {req_num} should have been conditional, but it was not")
                })?;
            } else {
                check(true, status == 200, || {
                    format!("response {req_num} status is {status}, not 200")
                })?;
            }
        }
    }
    let setup = setup_check(spec, "expected_response_headers");
    for hc in &spec.expected_response_headers {
        match hc {
            HeaderCheck::Present(n) => check(setup, got.headers.contains_key(n.as_str()), || {
                format!("response {req_num} {n} header not present")
            })?,
            HeaderCheck::GreaterThan(n, min) => {
                let v = joined(&got.headers, n);
                let num = v
                    .as_deref()
                    .and_then(|s| s.trim().parse::<i64>().ok())
                    .unwrap_or(i64::MIN);
                check(setup, num > *min, || {
                    format!("response {req_num} header {n} is {v:?}, should be bigger than {min}")
                })?;
            }
            HeaderCheck::Equals(n, v) => {
                let server_now = got
                    .headers
                    .get("server-now")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|s| s.parse::<u64>().ok())
                    .unwrap_or(0);
                let want = resolve(v, server_now);
                let have = joined(&got.headers, n);
                check(setup, have.as_deref() == Some(want.as_str()), || {
                    format!("response {req_num} header {n} is {have:?}, not {want:?}")
                })?;
            }
        }
    }
    let setup = setup_check(spec, "expected_response_headers_missing");
    for n in &spec.expected_response_headers_missing {
        check(setup, !got.headers.contains_key(n.as_str()), || {
            format!(
                "response {req_num} includes unexpected header {n}: {:?}",
                joined(&got.headers, n)
            )
        })?;
    }
    let body = String::from_utf8_lossy(&got.body);
    if !spec.check_body {
    } else if let Some(text) = &spec.expected_response_text {
        if let Some(t) = text {
            check(
                setup_check(spec, "expected_response_text"),
                body == t.as_str(),
                || format!("response body is {body:?}, not {t:?}"),
            )?;
        }
    } else if let Some(b) = &spec.response_body {
        check(true, body == b.as_str(), || {
            format!("response body is {body:?}, not {b:?}")
        })?;
    } else if status != 204 && status != 304 && spec.method != Some("HEAD") {
        check(true, body == uuid, || {
            format!("response body is {body:?}, not {uuid:?}")
        })?;
    }
    Ok(())
}

fn check_server_requests(
    requests: &[ReqSpec],
    responses: &[Got],
    seen: &[Seen],
) -> Result<(), Outcome> {
    let mut test_idx = 0;
    for (i, spec) in requests.iter().enumerate() {
        let req_num = i + 1;
        let server_request = seen.get(test_idx);
        let setup = setup_check(spec, "expected_type");
        let mut validating: Option<&str> = None;
        match spec.expected_type {
            Some(Type::Cached) => continue,
            Some(Type::NotCached) => {
                check(
                    setup,
                    server_request.is_some_and(|s| s.request_num == req_num),
                    || {
                        format!(
                            "response {req_num} comes from cache ({:?} on server)",
                            server_request.map(|s| s.request_num)
                        )
                    },
                )?;
            }
            Some(Type::EtagValidated) => validating = Some("if-none-match"),
            Some(Type::LmValidated) => validating = Some("if-modified-since"),
            None => {}
        }
        test_idx += 1;
        if let Some(v) = validating {
            check(setup, server_request.is_some(), || {
                format!("request {req_num} wasn't sent to server")
            })?;
            check(
                setup,
                server_request.is_some_and(|s| s.headers.contains_key(v)),
                || format!("request {req_num} doesn't have {v} header"),
            )?;
        }
        let setup = setup_check(spec, "expected_request_headers");
        for (name, want) in &spec.expected_request_headers {
            let have = server_request.and_then(|s| joined(&s.headers, name));
            match want {
                None => check(setup, have.is_some(), || {
                    format!("request {req_num} {name} header not present")
                })?,
                Some(w) => check(setup, have.as_deref() == Some(w.as_str()), || {
                    format!("request {req_num} header {name} is {have:?}, not {w:?}")
                })?,
            }
        }
        if let (Some(s), Some(resp)) = (server_request, responses.get(i)) {
            for (name, value) in &s.checked {
                if name.eq_ignore_ascii_case("date") {
                    continue;
                }
                let received = joined(&resp.headers, name);
                check(true, received.as_deref() == Some(value.as_str()), || {
                    format!("response {req_num} header {name} is {received:?}, not {value:?}")
                })?;
            }
        }
        if let Some(m) = spec.expected_method {
            let have = server_request.map(|s| s.method.as_str().to_owned());
            check(
                setup_check(spec, "expected_method"),
                have.as_deref() == Some(m),
                || format!("request {req_num} had method {have:?}, not {m}"),
            )?;
        }
    }
    Ok(())
}

/// Runs every case of a group against one proxy and origin, prints a table, and fails when
/// a case's outcome differs from what `known` says (no entry: it passes).
pub(crate) async fn run_group(
    group: &str,
    cases: Vec<Case>,
    known: fn(&str) -> Option<&'static str>,
) {
    let mut env = Env::start().await;
    let mut surprises = Vec::new();
    let mut counts: HashMap<(Kind, &'static str), usize> = HashMap::new();
    for case in &cases {
        let outcome = env.run(case).await;
        *counts.entry((case.kind, outcome.label())).or_default() += 1;
        let detail = match &outcome {
            Outcome::Pass => String::new(),
            Outcome::Fail(m) | Outcome::Setup(m) => m.clone(),
        };
        eprintln!(
            "{group:>14} {:<10} {:<8} {:<60} {detail}",
            outcome.label(),
            format!("{:?}", case.kind),
            case.id
        );
        match (&outcome, known(case.id)) {
            (Outcome::Pass, None) => {}
            (Outcome::Pass, Some(reason)) => surprises.push(format!(
                "{}: passes now, but the table says it does not ({reason})",
                case.id
            )),
            (_, Some(_)) => {}
            (o, None) => surprises.push(format!("{}: {o:?}", case.id)),
        }
    }
    let mut summary: Vec<_> = counts.into_iter().collect();
    summary.sort_by_key(|((k, l), _)| (format!("{k:?}"), *l));
    eprintln!("{group}: {summary:?}");
    assert!(surprises.is_empty(), "{group}:\n{}", surprises.join("\n"));
}
