//! A real browser for the console's tests: headless Chromium driven through chromedriver
//! (WebDriver) with `fantoccini`. [`Browser::start`] installs Debian's `chromium` and
//! `chromium-driver` with `scripts/browser.sh` when they are missing, and fails the test when
//! that is not possible: the browser tests are never skipped.
//!
//! Screenshots go to `target/console-screenshots/` ([`Browser::screenshot`]), kept as the
//! tests' artefacts.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;

use crate::{eventually, free_port};

/// A headless Chromium session and the chromedriver serving it (killed on drop).
pub struct Browser {
    pub client: Client,
    _driver: tokio::process::Child,
}

fn on_path(binary: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {binary}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Installs chromium and chromedriver when missing (`scripts/browser.sh`); panics, saying what
/// to run, when they cannot be.
pub fn ensure_installed() {
    if on_path("chromedriver") && on_path("chromium") {
        return;
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/browser.sh");
    let status = std::process::Command::new("bash")
        .arg(&script)
        .status()
        .unwrap_or_else(|err| panic!("cannot run {}: {err}", script.display()));
    assert!(
        status.success() && on_path("chromedriver"),
        "the browser tests need chromium and chromedriver: {} failed (run `sudo apt-get install \
         -y chromium chromium-driver`)",
        script.display()
    );
}

/// Where screenshots are written: `<target dir>/console-screenshots`.
pub fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("console-screenshots")
}

impl Browser {
    /// Starts chromedriver on a free port and opens a headless Chromium session (1280x1000).
    pub async fn start() -> Self {
        ensure_installed();
        let port = free_port();
        let driver = tokio::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        eventually(
            "chromedriver listens",
            Duration::from_secs(20),
            || async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
            },
        )
        .await;
        let mut options = json!({
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-dev-shm-usage",
                "--disable-gpu",
                "--window-size=1280,1000",
            ],
        });
        // Debian's /usr/bin/chromium is a shell wrapper; the browser itself is here.
        let binary = "/usr/lib/chromium/chromium";
        if std::path::Path::new(binary).exists() {
            options["binary"] = json!(binary);
        }
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("goog:chromeOptions".to_owned(), options);
        let client = crate::within(
            Duration::from_secs(30),
            "a Chromium session",
            ClientBuilder::new(HttpConnector::new())
                .capabilities(capabilities)
                .connect(&format!("http://127.0.0.1:{port}")),
        )
        .await
        .expect("a Chromium session");
        Self {
            client,
            _driver: driver,
        }
    }

    /// Saves a PNG of the viewport as `<screenshot_dir>/<name>.png`.
    pub async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.expect("screenshot");
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).expect("screenshot directory");
        std::fs::write(dir.join(format!("{name}.png")), png).expect("screenshot written");
    }

    /// The text of the element `css`.
    pub async fn text(&self, css: &str) -> String {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|err| panic!("no element {css}: {err}"))
            .text()
            .await
            .expect("text")
    }

    /// Waits (at most `limit`) until the element `css` has the text `expected`.
    pub async fn wait_for_text(&self, css: &str, expected: &str, limit: Duration) {
        let client = &self.client;
        eventually(&format!("{css} reads {expected:?}"), limit, || async move {
            match client.find(Locator::Css(css)).await {
                Ok(element) => element.text().await.is_ok_and(|text| text == expected),
                Err(_) => false,
            }
        })
        .await;
    }

    /// Types `text` into the field `css` (after clearing it).
    pub async fn fill(&self, css: &str, text: &str) {
        let field = self
            .client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|err| panic!("no field {css}: {err}"));
        field.clear().await.expect("clear");
        field.send_keys(text).await.expect("type");
    }

    /// Clicks the element `css`.
    pub async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|err| panic!("no element {css}: {err}"))
            .click()
            .await
            .expect("click");
    }

    /// Clicks the element `css`, which loads a new page (a link or a form's button), and
    /// waits until that page has loaded: a click returns before the browser navigates.
    pub async fn click_to_load(&self, css: &str) {
        let client = &self.client;
        client
            .execute("window.consolePageLeft = true;", vec![])
            .await
            .expect("the page marked");
        self.click(css).await;
        eventually(
            &format!("a new page after clicking {css}"),
            Duration::from_secs(10),
            || async move {
                client
                    .execute(
                        "return window.consolePageLeft === undefined && document.readyState === 'complete';",
                        vec![],
                    )
                    .await
                    .is_ok_and(|loaded| loaded == serde_json::Value::Bool(true))
            },
        )
        .await;
    }

    /// The path of the page shown.
    pub async fn path(&self) -> String {
        self.client
            .current_url()
            .await
            .expect("url")
            .path()
            .to_owned()
    }

    /// Waits (at most `limit`) until the page shown is at `path` (a navigation through another
    /// site, which a click does not wait for).
    pub async fn wait_for_path(&self, path: &str, limit: Duration) {
        let client = &self.client;
        eventually(&format!("the page at {path}"), limit, || async move {
            client
                .current_url()
                .await
                .is_ok_and(|url| url.path() == path)
        })
        .await;
    }

    /// Ends the session (Chromium quits) and chromedriver.
    pub async fn close(self) {
        self.client.close().await.expect("the session ends");
    }
}
