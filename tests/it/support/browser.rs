//! A headless Chromium for dashboard tests: Debian's `chromedriver` on a free 127.0.0.1
//! port (in its own process group, which is killed on drop together with the browser it
//! started), a fantoccini session with a throwaway profile, DOM polling with deadlines
//! (never fixed sleeps), and PNG screenshots under `target/test-artifacts/`.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder};
use futures::FutureExt;
use serde_json::{Value, json};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// One `chromedriver` process. Dropping it ends its process group: chromedriver and the
/// Chromium processes it started (they inherit the group).
struct Chromedriver {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Chromedriver {
    async fn start() -> Chromedriver {
        for bin in [CHROMEDRIVER, CHROMIUM] {
            assert!(Path::new(bin).exists(), "{bin} is missing: run `scripts/setup test` (Debian packages chromium and chromium-driver)");
        }
        let dir = tempfile::Builder::new().prefix("filesync-it-browser-").tempdir().unwrap();
        let out = dir.path().join("chromedriver.out");
        // --port=0: chromedriver binds a free port on the loopback addresses and prints it,
        // so two test processes never race for the same port.
        let child = std::os::unix::process::CommandExt::process_group(
            Command::new(CHROMEDRIVER)
                .arg("--port=0")
                .arg(format!("--log-path={}", dir.path().join("chromedriver.log").display()))
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(&out).unwrap())
                .stderr(std::fs::File::create(dir.path().join("chromedriver.err")).unwrap()),
            0,
        )
        .spawn()
        .expect("start chromedriver");
        let mut d = Chromedriver { child, port: 0, dir };

        let deadline = Instant::now() + Duration::from_secs(30);
        d.port = loop {
            let text = std::fs::read_to_string(&out).unwrap_or_default();
            if let Some(p) = text.split("started successfully on port ").nth(1).and_then(|r| r.trim_end_matches(|c: char| !c.is_ascii_digit()).parse().ok()) {
                break p;
            }
            if let Ok(Some(status)) = d.child.try_wait() {
                panic!("chromedriver exited ({status}) before listening: {text}{}", d.logs());
            }
            assert!(Instant::now() < deadline, "chromedriver did not say which port it listens on within 30 s: {text}{}", d.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        // Then wait until it answers and is ready for a session.
        let http = reqwest::Client::new();
        loop {
            let last = match http.get(d.url() + "/status").timeout(Duration::from_secs(2)).send().await {
                Ok(r) => match r.json::<Value>().await {
                    Ok(v) if v["value"]["ready"] == true => break,
                    Ok(v) => v.to_string(),
                    Err(e) => e.to_string(),
                },
                Err(e) => e.to_string(),
            };
            assert!(Instant::now() < deadline, "chromedriver on {} not ready within 30 s: {last}{}", d.url(), d.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        d
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn logs(&self) -> String {
        let tail = |f: &str| {
            let t = std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
            let lines: Vec<&str> = t.lines().collect();
            lines[lines.len().saturating_sub(40)..].iter().map(|l| if l.len() > 300 { format!("{}...", &l[..l.floor_char_boundary(300)]) } else { l.to_string() }).collect::<Vec<_>>().join("\n")
        };
        format!("\n---- chromedriver stderr ----\n{}\n---- chromedriver.log (tail) ----\n{}", tail("chromedriver.err"), tail("chromedriver.log"))
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        // The group id is chromedriver's pid (process_group(0)); Chromium stays in it.
        let pgid = self.child.id() as libc::pid_t;
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// A Chromium session driven over WebDriver. Field order matters: the session is dropped
/// before chromedriver, and the profile directory after both.
pub struct Browser {
    pub client: Client,
    driver: Chromedriver,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub async fn start() -> Browser {
        Browser::start_with(&[]).await
    }

    /// A session with extra Chromium arguments (e.g. the SPKI hash of a self-signed
    /// certificate to trust: `--ignore-certificate-errors-spki-list=<base64 sha256>`).
    pub async fn start_with(extra: &[String]) -> Browser {
        let driver = Chromedriver::start().await;
        let profile = tempfile::Builder::new().prefix("filesync-it-chromium-").tempdir().unwrap();
        let caps = json!({
            "browserName": "chrome",
            // An alert left open (e.g. by injected script) must fail the checks, not be dismissed.
            "unhandledPromptBehavior": "ignore",
            "timeouts": {"pageLoad": 30_000, "script": 10_000, "implicit": 0},
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    format!("--user-data-dir={}", profile.path().display()),
                    "--window-size=1280,1600",
                    "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                    // Keep all traffic on 127.0.0.0/8: no updates, sync, pings or lookups.
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--disable-default-apps", "--no-pings", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
                ],
            },
        });
        let mut caps = caps;
        if let Some(args) = caps["goog:chromeOptions"]["args"].as_array_mut() {
            args.extend(extra.iter().map(|a| json!(a)));
        }
        let Value::Object(caps) = caps else { unreachable!() };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = match ClientBuilder::new(connector).capabilities(caps).connect(&driver.url()).await {
            Ok(c) => c,
            Err(e) => panic!("cannot start a Chromium session through chromedriver: {e}{}", driver.logs()),
        };
        Browser { client, driver, _profile: profile }
    }

    /// Ends the session (Chromium quits cleanly); dropping then ends chromedriver.
    pub async fn close(self) {
        let _ = tokio::time::timeout(Duration::from_secs(10), self.client.clone().close()).await;
    }

    /// Runs the test body; then saves a screenshot of the page as it is (after success or
    /// at the failure) to `target/test-artifacts/<name>.png`, prints its path, and lets the
    /// failure continue.
    pub async fn run(&self, name: &str, body: impl Future<Output = ()>) {
        let outcome = AssertUnwindSafe(body).catch_unwind().await;
        match self.save_screenshot(name).await {
            Ok(p) => eprintln!("{} screenshot: {}", if outcome.is_ok() { "final" } else { "failure" }, p.display()),
            Err(e) => eprintln!("no screenshot: {e}"),
        }
        if let Err(panic) = outcome {
            eprintln!("{}", self.driver.logs());
            std::panic::resume_unwind(panic);
        }
    }

    /// Screenshots of the current page at 1400 and 800 px wide (`<name>-1400.png`,
    /// `<name>-800.png`), the window restored afterwards.
    pub async fn screenshots_at_widths(&self, name: &str) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for w in [1400u32, 800] {
            if self.client.set_window_size(w, 1200).await.is_ok() {
                // Let the page lay itself out at the new width.
                let _ = self.js("return document.body.offsetWidth").await;
                match self.save_screenshot(&format!("{name}-{w}")).await {
                    Ok(p) => out.push(p),
                    Err(e) => eprintln!("no screenshot {name}-{w}: {e}"),
                }
            }
        }
        let _ = self.client.set_window_size(1280, 1600).await;
        out
    }

    pub async fn save_screenshot(&self, name: &str) -> Result<PathBuf, String> {
        let png = tokio::time::timeout(Duration::from_secs(20), self.client.screenshot()).await.map_err(|_| "timed out".to_owned())?.map_err(|e| e.to_string())?;
        let dir = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target")).join("test-artifacts");
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).map_err(|e| e.to_string())?;
        Ok(path)
    }

    /// Runs `script` (a function body that `return`s JSON) in the page.
    pub async fn js(&self, script: &str) -> Result<Value, String> {
        self.client.execute(script, vec![]).await.map_err(|e| e.to_string())
    }

    /// Evaluates `script` in the page until `check` accepts its value, with a deadline.
    /// WebDriver errors (a page still loading, an element being replaced) count as "not yet".
    pub async fn wait_js<T>(&self, what: &str, timeout: Duration, script: &str, check: impl FnMut(&Value) -> Result<T, String>) -> T {
        self.poll(what, timeout, false, script, check).await
    }

    /// Like `wait_js`, reloading the page before each try: for parts that do not update live.
    pub async fn reload_until<T>(&self, what: &str, timeout: Duration, script: &str, check: impl FnMut(&Value) -> Result<T, String>) -> T {
        self.poll(what, timeout, true, script, check).await
    }

    async fn poll<T>(&self, what: &str, timeout: Duration, reload: bool, script: &str, mut check: impl FnMut(&Value) -> Result<T, String>) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if reload && let Err(e) = self.client.refresh().await {
                assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}; last reload failed: {e}");
                continue;
            }
            let last = match self.js(script).await {
                Ok(v) => match check(&v) {
                    Ok(t) => return t,
                    Err(e) => format!("{e}; page said {v}"),
                },
                Err(e) => e,
            };
            assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}; last state: {last}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
