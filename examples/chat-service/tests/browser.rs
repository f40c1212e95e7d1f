//! The chat page in a real browser: Debian's Chromium, headless, driven over WebDriver.
//!
//! Each test starts its own service(s) on loopback and its own `chromedriver`, and fails on any
//! console error or failed request. `cargo xtask test` installs `chromium` and
//! `chromium-driver` when they are missing; without them these tests fail, they never skip.
//!
//! `cargo xtask screenshots` runs the ignored `readme_screenshot` test, which writes
//! `docs/img/chat-page.png` from the current code.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;

use axum::Router;
use axum::routing::post;
use chat_service::{ChatService, Config, NewMessage, RoomName, Telemetry};
use fantoccini::Locator;
use serde_json::json;
use test_support::RedisServer;
use test_support::browser::{Browser, Chromedriver};

/// A span collector that accepts every export, so the stacked service records spans and
/// answers with `traceresponse`, as it does with `OTEL_EXPORTER_OTLP_ENDPOINT` set.
async fn telemetry_with_spans() -> Telemetry {
    let collector = Router::new().route(
        "/v1/traces",
        post(|| async {
            (
                [("content-type", "application/x-protobuf")],
                Vec::<u8>::new(),
            )
        }),
    );
    let (collector, _task) = test_support::serve(collector).await.unwrap();
    Telemetry::builder()
        .service_name("chat-service-browser-test")
        // Tests share a process: the first telemetry of the binary is not special here.
        .install_recorder(false)
        .install_subscriber(false)
        .from_env(false)
        .otlp_endpoint(format!("http://{collector}"))
        .build()
        .unwrap()
}

async fn serve(app: Router) -> SocketAddr {
    test_support::serve(app).await.unwrap().0
}

const STATUS_CACHE: &str = "return document.getElementById('status').dataset.cache || null";
const TEXTS: &str =
    "return [...document.querySelectorAll('#messages li .text')].map(e => e.textContent)";

async fn texts(browser: &Browser) -> Vec<String> {
    serde_json::from_value(browser.eval(TEXTS, vec![]).await.unwrap()).unwrap()
}

async fn wait_for_text(browser: &Browser, text: &str) {
    browser
        .wait_for(
            &format!("message {text:?} on the page"),
            "return [...document.querySelectorAll('#messages li .text')]
                .some(e => e.textContent === arguments[0])",
            vec![json!(text)],
        )
        .await
        .unwrap();
}

/// Waits for the status line of the history load that follows a (re)load and returns its
/// cache outcome: `hit`, `miss` or `none`.
async fn history_outcome(browser: &Browser) -> String {
    let value = browser
        .wait_for("the status line of the history load", STATUS_CACHE, vec![])
        .await
        .unwrap();
    value.as_str().unwrap().to_owned()
}

/// Types a message into the form and sends it with the keyboard (Enter).
async fn post_with_form(browser: &Browser, author: &str, text: &str) {
    let author_field = browser
        .client()
        .find(Locator::Id("compose-author"))
        .await
        .unwrap();
    author_field.clear().await.unwrap();
    author_field.send_keys(author).await.unwrap();
    let text_field = browser
        .client()
        .find(Locator::Id("compose-text"))
        .await
        .unwrap();
    text_field
        .send_keys(&format!(
            "{text}{}",
            char::from(fantoccini::key::Key::Enter)
        ))
        .await
        .unwrap();
    wait_for_text(browser, text).await;
    let left = browser
        .eval(
            "return document.getElementById('compose-text').value + '|' +
                    document.getElementById('compose-error').textContent",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(left, json!("|"), "the form is cleared and shows no error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stacked_page_posts_and_a_reload_is_a_cache_hit_with_its_trace() {
    let telemetry = telemetry_with_spans().await;
    // The embedded defaults: one instance, in-process tier only, which keeps the page.
    let service = ChatService::open(&Config::temporary()).await.unwrap();
    let addr = serve(service.app_with(&telemetry)).await;
    let driver = Chromedriver::start().await.unwrap();
    let browser = driver.browser(1100, 800).await.unwrap();

    browser
        .goto(&format!("http://{addr}/#lobby"))
        .await
        .unwrap();
    history_outcome(&browser).await;
    assert_eq!(
        browser
            .eval("return document.getElementById('mode').textContent", vec![])
            .await
            .unwrap(),
        json!("Stacked service: telemetry, cache, coalescing")
    );
    post_with_form(&browser, "ada", "hello from Chromium").await;

    // The first load after the post stores the new page; a reload within its freshness (plus
    // stale-while-revalidate) is answered by the cache.
    let mut outcomes = Vec::new();
    for _ in 0..4 {
        browser.client().refresh().await.unwrap();
        let outcome = history_outcome(&browser).await;
        assert_eq!(texts(&browser).await, ["hello from Chromium"]);
        outcomes.push(outcome);
        if outcomes.last().is_some_and(|o| o == "hit") {
            break;
        }
    }
    assert_eq!(
        outcomes.last().map(String::as_str),
        Some("hit"),
        "{outcomes:?}"
    );
    let status = browser
        .eval(
            "const s = document.getElementById('status');
             return {text: s.textContent, trace: s.dataset.trace, latency: s.dataset.latency}",
            vec![],
        )
        .await
        .unwrap();
    let text = status["text"].as_str().unwrap();
    assert!(text.contains("from cache (chat"), "{text}");
    let trace = status["trace"].as_str().unwrap();
    assert!(
        trace.len() == 32
            && trace.bytes().all(|b| b.is_ascii_hexdigit())
            && trace != "00000000000000000000000000000000",
        "trace id in the status line: {status}"
    );
    assert!(text.contains(trace), "{text}");
    let latency: f64 = status["latency"].as_str().unwrap().parse().unwrap();
    assert!(latency > 0.0, "{status}");
    browser.assert_clean_console().await.unwrap();
    browser.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_whose_answer_was_lost_is_sent_again_with_its_key_and_stored_once() {
    let service = ChatService::open(&Config::temporary()).await.unwrap();
    let addr = serve(service.app()).await;
    let driver = Chromedriver::start().await.unwrap();
    let browser = driver.browser(1000, 700).await.unwrap();
    browser
        .goto(&format!("http://{addr}/#lobby"))
        .await
        .unwrap();
    history_outcome(&browser).await;

    // The first post reaches the service and is stored, but its answer never reaches the
    // page, as when a connection drops: the page must offer a retry with the same key.
    browser
        .eval(
            "const send = window.fetch;
             window.sentKeys = [];
             let lose = true;
             window.fetch = async (url, init) => {
                 if (!init || init.method !== 'POST') return send(url, init);
                 window.sentKeys.push(init.headers['Idempotency-Key']);
                 const response = await send(url, init);
                 if (lose) { lose = false; throw new TypeError('connection lost (test)'); }
                 return response;
             };",
            vec![],
        )
        .await
        .unwrap();
    let author = browser
        .client()
        .find(Locator::Id("compose-author"))
        .await
        .unwrap();
    author.send_keys("ada").await.unwrap();
    let text = browser
        .client()
        .find(Locator::Id("compose-text"))
        .await
        .unwrap();
    text.send_keys("sent once, answered twice").await.unwrap();
    let send = browser.client().find(Locator::Id("send")).await.unwrap();
    send.click().await.unwrap();
    let error = browser
        .wait_for(
            "the retry prompt",
            "return document.getElementById('compose-error').textContent",
            vec![],
        )
        .await
        .unwrap();
    assert!(
        error.as_str().unwrap().contains("Send again to retry"),
        "{error}"
    );
    send.click().await.unwrap();
    browser
        .wait_for(
            "the retry's answer",
            "return document.getElementById('compose-text').value === ''",
            vec![],
        )
        .await
        .unwrap();
    wait_for_text(&browser, "sent once, answered twice").await;

    let keys = browser
        .eval("return window.sentKeys", vec![])
        .await
        .unwrap();
    let keys = keys.as_array().unwrap();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert_eq!(keys[0], keys[1], "the retry reuses the key");
    assert!(
        keys[0].as_str().unwrap().len() == 34,
        "a quoted 32-hex-digit key: {keys:?}"
    );
    assert_eq!(
        texts(&browser).await,
        ["sent once, answered twice"],
        "shown once"
    );
    let reply = get_json(addr, "/rooms/lobby/messages").await;
    assert_eq!(
        reply["messages"].as_array().unwrap().len(),
        1,
        "stored once: {reply}"
    );
    browser.assert_clean_console().await.unwrap();
    browser.close().await.unwrap();
}

/// `GET path` on the service over TCP, as JSON.
async fn get_json(addr: SocketAddr, path: &str) -> serde_json::Value {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8(response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    serde_json::from_str(body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_page_on_a_narrow_screen_pages_back_and_posts_without_a_cache() {
    let config = Config {
        bare: true,
        ..Config::temporary()
    };
    let service = ChatService::open(&config).await.unwrap();
    service.seed(1, 60).await.unwrap();
    let addr = serve(service.app()).await;
    let driver = Chromedriver::start().await.unwrap();
    // A phone-sized window.
    let browser = driver.browser(390, 844).await.unwrap();

    browser.goto(&format!("http://{addr}/")).await.unwrap();
    // Without a fragment the page opens the first room and puts it in the URL.
    assert_eq!(history_outcome(&browser).await, "none");
    let url = browser.client().current_url().await.unwrap();
    assert_eq!(url.fragment(), Some("room-1"));
    let status = browser
        .eval(
            "return document.getElementById('status').textContent",
            vec![],
        )
        .await
        .unwrap();
    assert!(
        status.as_str().unwrap().contains("no cache layer"),
        "{status}"
    );
    assert_eq!(texts(&browser).await.len(), 50);

    browser
        .client()
        .find(Locator::Id("older"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser
        .wait_for(
            "the older page",
            "return document.querySelectorAll('#messages li').length === 60",
            vec![],
        )
        .await
        .unwrap();
    let shown = texts(&browser).await;
    assert_eq!(shown.first().unwrap(), "seeded message 1");
    assert_eq!(shown.last().unwrap(), "seeded message 60");
    assert_eq!(
        browser
            .eval("return document.getElementById('older').hidden", vec![])
            .await
            .unwrap(),
        json!(true),
        "no page before the first"
    );

    post_with_form(&browser, "grace", "short screens work too").await;
    let layout = browser
        .eval(
            "return {
                overflow: document.documentElement.scrollWidth > window.innerWidth,
                unlabelled: [...document.querySelectorAll('input, textarea')]
                    .filter(e => e.labels.length === 0).map(e => e.id),
             }",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        layout,
        json!({"overflow": false, "unlabelled": []}),
        "fits a 390 px screen, every field labelled"
    );
    browser.assert_clean_console().await.unwrap();
    browser.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_browser_on_a_second_instance_sees_the_message_and_reloads_from_redis() {
    let redis = RedisServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = common::shared_config(dir.path(), redis.url());
    let first = ChatService::open(&config).await.unwrap();
    let second = ChatService::open(&config).await.unwrap();
    let telemetry = telemetry_with_spans().await;
    let first_addr = serve(first.app_with(&telemetry)).await;
    let second_addr = serve(second.app()).await;
    let driver = Chromedriver::start().await.unwrap();
    let alice = driver.browser(1000, 700).await.unwrap();
    let bob = driver.browser(1000, 700).await.unwrap();

    // Both look at the empty room first, so the second instance has its page cached.
    alice
        .goto(&format!("http://{first_addr}/#shared"))
        .await
        .unwrap();
    bob.goto(&format!("http://{second_addr}/#shared"))
        .await
        .unwrap();
    history_outcome(&alice).await;
    history_outcome(&bob).await;

    post_with_form(&alice, "alice", "seen on the other instance").await;
    // No reload: the second page's poll gets the new page once the invalidation arrived.
    wait_for_text(&bob, "seen on the other instance").await;

    // Reloads on the second instance: served from the shared Redis tier once it holds the page
    // (with Redis, the in-process tier keeps entries 100 ms only).
    let mut outcomes = Vec::new();
    for _ in 0..4 {
        bob.client().refresh().await.unwrap();
        outcomes.push(history_outcome(&bob).await);
        assert_eq!(texts(&bob).await, ["seen on the other instance"]);
        if outcomes.last().is_some_and(|o| o == "hit") {
            break;
        }
    }
    assert_eq!(
        outcomes.last().map(String::as_str),
        Some("hit"),
        "{outcomes:?}"
    );
    alice.assert_clean_console().await.unwrap();
    bob.assert_clean_console().await.unwrap();
    alice.close().await.unwrap();
    bob.close().await.unwrap();
}

/// Writes `docs/img/chat-page.png` (or into `SCREENSHOT_DIR`): the stacked page after a post
/// and a reload answered by the cache. Run by `cargo xtask screenshots`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes the README screenshot; run by `cargo xtask screenshots`"]
async fn readme_screenshot() {
    let telemetry = telemetry_with_spans().await;
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        cache_disk: Some(dir.path().join("cache")),
        ..Config::temporary()
    };
    let service = ChatService::open(&config).await.unwrap();
    service.seed(3, 40).await.unwrap();
    let lobby = RoomName::parse("lobby").unwrap();
    for (author, text) in [
        ("ada", "Is the history still slow when you refresh?"),
        (
            "grace",
            "Not any more: the second load comes from the cache.",
        ),
        (
            "ada",
            "The status line says so, with the trace id to look up.",
        ),
        (
            "linus",
            "And a post on any instance purges every instance's copy.",
        ),
    ] {
        let message = NewMessage {
            author: author.into(),
            text: text.into(),
        };
        service.post(&lobby, message).await.unwrap();
    }
    let addr = serve(service.app_with(&telemetry)).await;
    let driver = Chromedriver::start().await.unwrap();
    let browser = driver.browser(1100, 720).await.unwrap();
    browser
        .goto(&format!("http://{addr}/#lobby"))
        .await
        .unwrap();
    history_outcome(&browser).await;
    post_with_form(&browser, "grace", "Try it: refresh this page.").await;
    for _ in 0..4 {
        browser.client().refresh().await.unwrap();
        if history_outcome(&browser).await == "hit" {
            break;
        }
    }
    assert_eq!(history_outcome(&browser).await, "hit");
    browser.assert_clean_console().await.unwrap();
    let png = browser.client().screenshot().await.unwrap();
    let dir = std::env::var_os("SCREENSHOT_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/img"),
        PathBuf::from,
    );
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("chat-page.png");
    std::fs::write(&path, png).unwrap();
    eprintln!("wrote {}", path.display());
    browser.close().await.unwrap();
}
