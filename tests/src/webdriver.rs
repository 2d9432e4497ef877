//! A small W3C WebDriver client for the dashboard's browser tests: a real
//! headless Chromium (Debian's `chromium`) driven through a real
//! `chromedriver` on a loopback port, over plain HTTP/1.1 with JSON bodies.
//! Tests skip, saying so, where either is not installed.

use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A browser session; chromedriver (and so Chromium) is killed on drop.
pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
}

/// Whether chromium and chromedriver are here; prints why a test skips if not.
pub fn browser_installed() -> bool {
    let ok = ["chromium", "chromedriver"].iter().all(|b| {
        Command::new(b)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if !ok {
        eprintln!("skipped: apt-get install chromium chromium-driver");
    }
    ok
}

fn http(port: u16, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    // chromedriver keeps the connection open whatever the request says:
    // read the head, then exactly Content-Length bytes.
    let mut response = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = response.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(format!(
                "connection closed: {}",
                String::from_utf8_lossy(&response)
            ));
        }
        response.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&response[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("no content-length in {head}"))?;
    while response.len() < head_end + length {
        let n = stream.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        response.extend_from_slice(&buf[..n]);
    }
    let payload = String::from_utf8_lossy(&response[head_end..]).into_owned();
    let doc: Value = serde_json::from_str(&payload).map_err(|e| format!("{e}: {payload}"))?;
    let value = doc["value"].clone();
    if value.get("error").is_some() {
        return Err(format!("{} {path}: {}", method, value));
    }
    Ok(value)
}

impl Browser {
    /// Starts chromedriver on a free loopback port and a headless Chromium
    /// session that ignores nothing about TLS except that the fleet's CA is
    /// not in its store (`--ignore-certificate-errors`), and keeps the
    /// console log.
    pub fn start() -> Browser {
        Browser::launch(true)
    }

    /// As [`Browser::start`], with JavaScript turned off (the page's
    /// fallbacks: what a browser without scripts sees).
    pub fn start_without_javascript() -> Browser {
        Browser::launch(false)
    }

    fn launch(javascript: bool) -> Browser {
        let port = crate::free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let deadline = Instant::now() + Duration::from_secs(20);
        while http(port, "GET", "/status", None).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--ignore-certificate-errors", "--window-size=1280,900"],
                "prefs": {"profile.managed_default_content_settings.javascript":
                          if javascript { 1 } else { 2 }},
            },
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let mut browser = Browser {
            driver,
            port,
            session: String::new(),
        };
        let created = http(port, "POST", "/session", Some(&caps)).expect("browser session");
        browser.session = created["sessionId"]
            .as_str()
            .expect("session id")
            .to_owned();
        browser
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        http(
            self.port,
            method,
            &format!("/session/{}{path}", self.session),
            body.as_ref(),
        )
    }

    pub fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url })))
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    pub fn url(&self) -> String {
        self.call("GET", "/url", None)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    /// Waits until the current URL contains `part` (a navigation a click
    /// started has landed); panics after `within`.
    pub fn wait_url(&self, part: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.url().contains(part) {
            assert!(
                Instant::now() < deadline,
                "the page never reached a URL with {part:?}; it is at {}",
                self.url()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The element a CSS selector finds, or `None`.
    pub fn find(&self, css: &str) -> Option<String> {
        let v = self
            .call(
                "POST",
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .ok()?;
        v.as_object()?.values().next()?.as_str().map(str::to_owned)
    }

    /// The visible text of what `css` finds; panics naming the selector and page if nothing.
    pub fn text(&self, css: &str) -> String {
        let el = self
            .find(css)
            .unwrap_or_else(|| panic!("no {css} on {}:\n{}", self.url(), self.source()));
        self.call("GET", &format!("/element/{el}/text"), None)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    /// Waits until the visible text of what `css` finds contains `want`
    /// (the page may change it by itself); panics after `within` with the
    /// text last seen.
    pub fn wait_text(&self, css: &str, want: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let el = self.find(css);
            let text = el
                .and_then(|el| self.call("GET", &format!("/element/{el}/text"), None).ok())
                .and_then(|v| v.as_str().map(str::to_owned));
            if text.as_deref().is_some_and(|t| t.contains(want)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{css} never showed {want:?} on {}; last: {text:?}",
                self.url()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether an element found earlier is still in the page: a reference
    /// goes stale when the page is loaded again (a reload or navigation).
    pub fn still_attached(&self, el: &str) -> bool {
        self.call("GET", &format!("/element/{el}/name"), None)
            .is_ok()
    }

    pub fn click(&self, css: &str) {
        let el = self
            .find(css)
            .unwrap_or_else(|| panic!("no {css} to click on {}", self.url()));
        self.call("POST", &format!("/element/{el}/click"), Some(json!({})))
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// Types `text` into the field `css` finds, after clearing it.
    pub fn type_into(&self, css: &str, text: &str) {
        let el = self.find(css).unwrap_or_else(|| panic!("no {css}"));
        let _ = self.call("POST", &format!("/element/{el}/clear"), Some(json!({})));
        self.call(
            "POST",
            &format!("/element/{el}/value"),
            Some(json!({ "text": text })),
        )
        .unwrap_or_else(|e| panic!("type into {css}: {e}"));
    }

    pub fn source(&self) -> String {
        self.call("GET", "/source", None)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    /// A PNG of the window, written to `path`.
    pub fn screenshot(&self, path: &std::path::Path) {
        use base64_decode as b64;
        let v = self.call("GET", "/screenshot", None).expect("screenshot");
        let png = b64(v.as_str().expect("base64 PNG"));
        std::fs::write(path, png).expect("write screenshot");
    }

    /// The console entries at level SEVERE (JavaScript errors, refused
    /// resources) since the last call.
    pub fn console_errors(&self) -> Vec<String> {
        self.call("POST", "/se/log", Some(json!({"type": "browser"})))
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e["level"] == "SEVERE")
            .map(|e| e["message"].as_str().unwrap_or("").to_owned())
            .collect()
    }
}

/// Standard base64 (what WebDriver sends screenshots in).
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let digits: Vec<u32> = text.bytes().filter_map(value).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let mut n = 0u32;
        for (i, d) in chunk.iter().enumerate() {
            n |= d << (18 - 6 * i);
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..chunk.len().saturating_sub(1)]);
    }
    out
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = http(
            self.port,
            "DELETE",
            &format!("/session/{}", self.session),
            None,
        );
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
