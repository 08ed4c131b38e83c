//! A real headless Chromium driven over WebDriver (Debian's `chromium` and `chromedriver`), for
//! the console tests. Each browser has a fresh profile; when a test fails, a screenshot and the
//! page source are written to `target/console-artifacts/<test>.{png,html}`.
//!
//! Without chromedriver installed the tests are skipped with a message, except under CI (`CI`
//! set), where they fail: CI installs the browser and must run them.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use futures::FutureExt;
use serde_json::json;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Where failure artefacts go.
pub fn artifacts_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/console-artifacts")
}

/// Starts chromedriver and a headless Chromium session, or `None` (skip) when they are not
/// installed outside CI.
pub async fn start() -> Option<Browser> {
    let installed =
        std::path::Path::new(CHROMEDRIVER).exists() && std::path::Path::new(CHROMIUM).exists();
    if !installed {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the console tests: install chromium and chromium-driver"
        );
        eprintln!("skipping: {CHROMEDRIVER} or {CHROMIUM} is not installed");
        return None;
    }
    let port = super::process::free_port();
    let driver = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let profile = tempfile::tempdir().unwrap();
    let webdriver = format!("http://127.0.0.1:{port}");
    // Flags for a closed network: no background connections, no first-run or sync traffic.
    let args = vec![
        "--headless".to_string(),
        "--no-sandbox".to_string(),
        "--disable-gpu".to_string(),
        "--disable-quic".to_string(),
        "--no-first-run".to_string(),
        "--disable-background-networking".to_string(),
        "--disable-component-update".to_string(),
        "--disable-sync".to_string(),
        "--disable-dev-shm-usage".to_string(),
        "--window-size=1366,900".to_string(),
        format!("--user-data-dir={}", profile.path().display()),
    ];
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({ "binary": CHROMIUM, "args": args }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let client = loop {
        match ClientBuilder::new(connector.clone())
            .capabilities(caps.clone())
            .connect(&webdriver)
            .await
        {
            Ok(c) => break c,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("no WebDriver session: {e}"),
        }
    };
    Some(Browser {
        client,
        driver,
        _profile: profile,
    })
}

impl Browser {
    /// Runs the test's steps; if they panic, saves a screenshot and the page source, then fails.
    pub async fn run<F, Fut>(self, name: &str, steps: F)
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = ()>,
    {
        let client = self.client.clone();
        let outcome = AssertUnwindSafe(steps(client.clone())).catch_unwind().await;
        if let Err(panic) = outcome {
            let dir = artifacts_dir();
            let _ = std::fs::create_dir_all(&dir);
            if let Ok(png) = client.screenshot().await {
                let _ = std::fs::write(dir.join(format!("{name}.png")), png);
            }
            if let Ok(html) = client.source().await {
                let _ = std::fs::write(dir.join(format!("{name}.html")), html);
            }
            eprintln!(
                "console test {name} failed; screenshot and page source in {}",
                dir.display()
            );
            let _ = client.close().await;
            std::panic::resume_unwind(panic);
        }
        let _ = client.close().await;
    }
}

/// Waits (up to 20 s) for an element whose text contains `text`.
pub async fn wait_for_text(client: &Client, css: &str, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(e) = client.find(Locator::Css(css)).await
            && let Ok(t) = e.text().await
            && t.contains(text)
        {
            return;
        }
        if Instant::now() > deadline {
            let page = client.source().await.unwrap_or_default();
            panic!(
                "no {css:?} with text {text:?}; page: {}",
                &page[..page.len().min(3000)]
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The path of the page the browser shows.
pub async fn path(client: &Client) -> String {
    client.current_url().await.unwrap().path().to_string()
}

/// Saves a screenshot of the current page under `name` (for the docs' pictures, and to look
/// at a passing run).
pub async fn save_screenshot(client: &Client, name: &str) {
    let dir = artifacts_dir();
    let _ = std::fs::create_dir_all(&dir);
    if let Ok(png) = client.screenshot().await {
        let _ = std::fs::write(dir.join(format!("{name}.png")), png);
    }
}

/// Clicks the element `locator` finds.
pub async fn click(client: &Client, locator: Locator<'_>) {
    client
        .find(locator)
        .await
        .unwrap_or_else(|e| panic!("nothing to click: {e}"))
        .click()
        .await
        .unwrap();
}

/// Types `text` into the element `css` finds.
pub async fn type_into(client: &Client, css: &str, text: &str) {
    client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"))
        .send_keys(text)
        .await
        .unwrap();
}

/// How many elements `css` finds.
pub async fn count(client: &Client, css: &str) -> usize {
    client.find_all(Locator::Css(css)).await.unwrap().len()
}
