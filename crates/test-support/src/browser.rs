//! Debian's Chromium, headless, driven over WebDriver (`chromedriver` and fantoccini): one driver
//! process per test on a free loopback port, sessions that record the browser console, and the
//! whole process group killed when the test ends, passed or not. Feature `browser`.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder};
use serde_json::{Value, json};

/// Where Debian installs the browser (`apt-get install chromium chromium-driver`; `cargo xtask
/// test` installs both when missing).
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// The WebDriver server, looked up on `PATH`.
pub const CHROMEDRIVER: &str = "chromedriver";
/// How to get both onto a machine, quoted in [`BrowserError::Driver`].
pub const BROWSER_INSTALL_HINT: &str = "install them with `apt-get update && apt-get install -y chromium \
     chromium-driver` (Debian/Ubuntu), or run `cargo xtask test`, which installs them";

/// Longest [`Browser::wait_for`] waits, and longest wait for `chromedriver` to listen.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// What can go wrong while starting or driving the browser.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrowserError {
    /// `chromedriver` could not be started, or never listened.
    #[error("chromedriver: {0}; {hint}", hint = BROWSER_INSTALL_HINT)]
    Driver(String),
    /// `chromedriver` did not open a Chromium session.
    #[error("no Chromium session: {0}")]
    Session(#[from] fantoccini::error::NewSessionError),
    /// A WebDriver command failed (navigation, script, screenshot...).
    #[error("WebDriver command failed: {0}")]
    Command(#[from] fantoccini::error::CmdError),
    /// [`Browser::wait_for`] ran out of [`PATIENCE`].
    #[error("waited {PATIENCE:?} for {what}; last value {last}; console: {console:?}")]
    Timeout {
        /// What was waited for.
        what: String,
        /// The script's last answer.
        last: Value,
        /// Console entries recorded meanwhile.
        console: Vec<String>,
    },
}

/// A `chromedriver` process of this test, killed on drop with the browsers it started.
///
/// ```no_run
/// # async fn demo() -> Result<(), test_support::browser::BrowserError> {
/// use test_support::browser::Chromedriver;
///
/// let driver = Chromedriver::start().await?;
/// let browser = driver.browser(1100, 800).await?;
/// browser.goto("http://127.0.0.1:3000/").await?;
/// let title = browser.eval("return document.title", vec![]).await?;
/// browser.assert_clean_console().await?;
/// # drop(title);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Chromedriver {
    child: Child,
    url: String,
}

impl Chromedriver {
    /// Starts `chromedriver` on a free loopback port and waits until it accepts sessions.
    pub async fn start() -> Result<Self, BrowserError> {
        let port = crate::try_free_port().map_err(|e| BrowserError::Driver(e.to_string()))?;
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // A process group of its own, so drop ends the browsers it started too.
            .process_group(0)
            .spawn()
            .map_err(|e| BrowserError::Driver(format!("could not be started: {e}")))?;
        let driver = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + PATIENCE;
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if Instant::now() >= deadline {
                return Err(BrowserError::Driver(format!(
                    "did not listen on port {port} within {PATIENCE:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(driver)
    }

    /// A new headless session with a window of `width` × `height` CSS pixels: a browser
    /// context of its own (fresh profile, no shared cache or storage) that records every
    /// console message.
    pub async fn browser(&self, width: u32, height: u32) -> Result<Browser, BrowserError> {
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
            .await?;
        Ok(Browser { client })
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

/// One browser session of a [`Chromedriver`].
#[derive(Debug)]
pub struct Browser {
    client: Client,
}

/// ChromeDriver's console log endpoint (enabled by `goog:loggingPrefs`): returns the entries
/// recorded since the last call and clears them.
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
    /// The fantoccini client, for everything else (elements, keys, reload, window size).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Navigates to `url` and waits for the page's load event.
    pub async fn goto(&self, url: &str) -> Result<(), BrowserError> {
        Ok(self.client.goto(url).await?)
    }

    /// Runs `script` (a function body; `arguments` holds `args`) and returns its value.
    pub async fn eval(&self, script: &str, args: Vec<Value>) -> Result<Value, BrowserError> {
        Ok(self.client.execute(script, args).await?)
    }

    /// Runs `script` until it returns something truthy, and returns that; fails with
    /// [`BrowserError::Timeout`] naming `what` after [`PATIENCE`].
    pub async fn wait_for(
        &self,
        what: &str,
        script: &str,
        args: Vec<Value>,
    ) -> Result<Value, BrowserError> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let value = self.eval(script, args.clone()).await?;
            let truthy = match &value {
                Value::Null | Value::Bool(false) => false,
                Value::String(s) => !s.is_empty(),
                Value::Number(n) => n.as_f64() != Some(0.0),
                _ => true,
            };
            if truthy {
                return Ok(value);
            }
            if Instant::now() >= deadline {
                return Err(BrowserError::Timeout {
                    what: what.to_owned(),
                    last: value,
                    console: self.console().await.unwrap_or_default(),
                });
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Console entries since the last call, as `LEVEL source: message`.
    pub async fn console(&self) -> Result<Vec<String>, BrowserError> {
        let entries = self.client.issue_cmd(BrowserLog).await?;
        Ok(entries
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
            .unwrap_or_default())
    }

    /// Panics on any console error or warning since the last call: script errors, failed
    /// requests (Chromium logs every failed load and fetch) and CSP violations.
    pub async fn assert_clean_console(&self) -> Result<(), BrowserError> {
        let problems: Vec<String> = self
            .console()
            .await?
            .into_iter()
            .filter(|e| e.starts_with("SEVERE") || e.starts_with("WARNING"))
            .collect();
        assert!(
            problems.is_empty(),
            "console errors or failed requests: {problems:#?}"
        );
        Ok(())
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&self) -> Result<Vec<u8>, BrowserError> {
        Ok(self.client.screenshot().await?)
    }

    /// Ends the session (the browser exits).
    pub async fn close(self) -> Result<(), BrowserError> {
        Ok(self.client.close().await?)
    }
}
