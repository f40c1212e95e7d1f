//! Debian's Chromium driven over WebDriver (`chromedriver`, fantoccini): one driver process per
//! test on a free loopback port, headless sessions that record the browser console, and cleanup
//! of the whole process group when the test ends, passes or not.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder};
use serde_json::{Value, json};

/// Where Debian installs the browser and its driver (`apt-get install chromium chromium-driver`;
/// `cargo xtask test` installs them when missing).
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "chromedriver";

/// Longest wait for anything the browser should show.
pub(crate) const PATIENCE: Duration = Duration::from_secs(10);

/// A `chromedriver` process of this test, killed with its browsers on drop.
pub(crate) struct Chromedriver {
    child: Child,
    url: String,
}

impl Chromedriver {
    /// Starts `chromedriver` on a free loopback port and waits until it accepts sessions.
    pub(crate) async fn start() -> Self {
        let port = test_support::free_port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group, so drop can end the browsers it started too.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "{CHROMEDRIVER} could not be started ({e}): install it with \
                     `apt-get install -y chromium chromium-driver`, or run `cargo xtask test`"
                )
            });
        let driver = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + PATIENCE;
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen on port {port}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        driver
    }

    /// A new headless browser session: a browser context of its own (fresh profile, no shared
    /// cache or storage), with every console message recorded.
    pub(crate) async fn browser(&self, width: u32, height: u32) -> Browser {
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--disable-extensions",
                    "--no-first-run",
                    "--hide-scrollbars",
                    format!("--window-size={width},{height}"),
                ],
            },
            "goog:loggingPrefs": { "browser": "ALL" },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!("a JSON object literal")
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .expect("chromedriver opens a Chromium session");
        Browser { client }
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One browser session.
pub(crate) struct Browser {
    pub(crate) client: Client,
}

/// ChromeDriver's console log endpoint (`goog:loggingPrefs`): returns and clears the entries.
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(r#"{"type":"browser"}"#.to_owned()))
    }
}

impl Browser {
    pub(crate) async fn goto(&self, url: &str) {
        self.client.goto(url).await.expect("navigation");
    }

    /// Runs `script` (a function body; `arguments` holds `args`) and returns its value.
    pub(crate) async fn eval(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Waits until `script` returns something truthy and returns it; panics after [`PATIENCE`]
    /// with `what` and the last value.
    pub(crate) async fn wait_for(&self, what: &str, script: &str, args: Vec<Value>) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let value = self.eval(script, args.clone()).await;
            let truthy = match &value {
                Value::Null | Value::Bool(false) => false,
                Value::String(s) => !s.is_empty(),
                Value::Number(n) => n.as_f64() != Some(0.0),
                _ => true,
            };
            if truthy {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "waited {PATIENCE:?} for {what}; last value {value}; console: {:?}",
                self.console().await
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Console entries since the last call: `level source: message` each.
    pub(crate) async fn console(&self) -> Vec<String> {
        let entries = self
            .client
            .issue_cmd(BrowserLog)
            .await
            .expect("browser log");
        entries
            .as_array()
            .map(|entries| {
                entries
                    .iter()
                    .map(|e| {
                        format!(
                            "{} {}: {}",
                            e["level"].as_str().unwrap_or("?"),
                            e["source"].as_str().unwrap_or("?"),
                            e["message"].as_str().unwrap_or("?")
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Fails the test on any console error or warning since the last call: script errors,
    /// failed requests (Chromium logs every failed load and fetch) and CSP violations.
    pub(crate) async fn assert_clean_console(&self) {
        let problems: Vec<String> = self
            .console()
            .await
            .into_iter()
            .filter(|e| e.starts_with("SEVERE") || e.starts_with("WARNING"))
            .collect();
        assert!(
            problems.is_empty(),
            "console errors or failed requests: {problems:#?}"
        );
    }

    pub(crate) async fn close(self) {
        let _ = self.client.close().await;
    }
}
