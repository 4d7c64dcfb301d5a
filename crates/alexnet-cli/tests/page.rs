//! The page `alexnet serve` shows at `/`, in a real browser: headless Chromium
//! driven by ChromeDriver (WebDriver, over loopback). The test uploads a photo
//! through the page's file input and reads what the page shows; it also works
//! the view tabs with the keyboard and checks a narrow window. Without Chromium
//! and ChromeDriver it prints SKIPPED, unless `ALEXNET_REQUIRE_BROWSER=1`.
//! `ALEXNET_SCREENSHOT=PATH` saves a screenshot of the page with its answer.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::http;
use common::served::{Served, mini_checkpoint};
use common::temp_dir;
use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Kills a child process when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A WebDriver session on a ChromeDriver of our own.
struct Browser {
    driver: SocketAddr,
    session: String,
    _process: Running,
}

impl Browser {
    fn start(profile: &Path) -> Browser {
        let port = free_port();
        let process = Running(
            Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("chromedriver starts"),
        );
        let driver: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let started = Instant::now();
        while std::net::TcpStream::connect(driver).is_err() {
            assert!(
                started.elapsed() < http::WAIT,
                "chromedriver did not listen"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            "--no-first-run",
            "--window-size=1000,900",
        ];
        let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
        }}});
        let answer = call(driver, "POST", "/session", &capabilities);
        let session = answer["sessionId"].as_str().expect("a session").to_string();
        Browser {
            driver,
            session,
            _process: process,
        }
    }

    fn command(&self, method: &str, path: &str, body: &Value) -> Value {
        call(
            self.driver,
            method,
            &format!("/session/{}{path}", self.session),
            body,
        )
    }

    fn element(&self, css: &str) -> String {
        let found = self.command(
            "POST",
            "/element",
            &json!({"using": "css selector", "value": css}),
        );
        found["element-6066-11e4-a52e-4f735466cecf"]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {found}"))
            .to_string()
    }

    fn send_keys(&self, css: &str, text: &str) {
        let element = self.element(css);
        self.command(
            "POST",
            &format!("/element/{element}/value"),
            &json!({"text": text}),
        );
    }

    fn script(&self, script: &str) -> Value {
        self.command(
            "POST",
            "/execute/sync",
            &json!({"script": script, "args": []}),
        )
    }

    /// Runs `script` until it returns something other than null or false.
    fn wait_for(&self, script: &str, what: &str) -> Value {
        let started = Instant::now();
        loop {
            let value = self.script(script);
            if !value.is_null() && value != json!(false) {
                return value;
            }
            assert!(
                started.elapsed() < http::WAIT,
                "the page never showed {what}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let path = format!("/session/{}", self.session);
        let _ = http::request(self.driver, "DELETE", &path, &[], b"");
    }
}

/// One WebDriver command; its `value`.
fn call(driver: SocketAddr, method: &str, path: &str, body: &Value) -> Value {
    let body = body.to_string();
    let answer = http::request(
        driver,
        method,
        path,
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    );
    let json = answer.json();
    assert_eq!(answer.status, 200, "WebDriver {method} {path}: {json}");
    json["value"].clone()
}

fn decode_base64(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let digits: Vec<u8> = text.bytes().filter(|&c| c != b'=').map(value).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for group in digits.chunks(4) {
        let bits = group
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &d)| acc | (u32::from(d) << (18 - 6 * i)));
        out.extend_from_slice(&bits.to_be_bytes()[1..group.len()]);
    }
    out
}

fn browser_available() -> bool {
    let found = Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists();
    if !found {
        assert!(
            std::env::var("ALEXNET_REQUIRE_BROWSER").as_deref() != Ok("1"),
            "ALEXNET_REQUIRE_BROWSER=1 but {CHROMIUM} or {CHROMEDRIVER} is missing \
             (Debian packages chromium and chromium-driver)"
        );
        eprintln!("SKIPPED: no {CHROMIUM} and {CHROMEDRIVER} (Debian's chromium, chromium-driver)");
    }
    found
}

#[test]
fn the_page_shows_the_apis_top_class_for_an_uploaded_photo() {
    if !browser_available() {
        return;
    }
    let dir = temp_dir("serve-page");
    let server = Served::start(&mini_checkpoint(&dir), &[]);
    let addr = server.addr;
    let photo: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../alexnet-data/tests/photos/rocket.jpg")
        .canonicalize()
        .unwrap();
    let api = http::post(addr, "/v1/classify", &std::fs::read(&photo).unwrap()).json();
    let api_top = &api["images"][0]["top"][0];

    let browser = Browser::start(&dir.join("profile"));
    browser.command("POST", "/url", &json!({"url": format!("http://{addr}/")}));
    browser.wait_for(
        "return document.getElementById('model').textContent.includes('parameters')",
        "the model's description",
    );
    browser.send_keys("#file", photo.to_str().unwrap());
    let shown = browser.wait_for(
        "const li = document.querySelector('#top li');\
         return li ? [li.dataset.class, li.querySelector('.name').textContent] : null;",
        "the top classes",
    );
    assert_eq!(shown[0].as_str().unwrap(), api_top["class"].to_string());
    assert_eq!(shown[1], api_top["name"]);
    let rows = browser.script("return document.querySelectorAll('#top li').length");
    assert_eq!(rows, json!(5));
    browser.wait_for(
        "return document.getElementById('crop').naturalWidth === 224",
        "the crop the net sees",
    );
    if let Ok(path) = std::env::var("ALEXNET_SCREENSHOT") {
        let png = browser.command("GET", "/screenshot", &json!({}));
        std::fs::write(&path, decode_base64(png.as_str().unwrap())).unwrap();
    }

    // The views' tabs, from the keyboard: the arrow key moves to the kernels.
    browser.send_keys("#tab-classify", "\u{E014}");
    browser.wait_for(
        "return !document.getElementById('view-kernels').hidden \
         && document.activeElement.id === 'tab-kernels' \
         && document.getElementById('kernels').naturalWidth > 0",
        "the kernels after ArrowRight",
    );

    // A narrow window: nothing wider than the window.
    browser.command(
        "POST",
        "/window/rect",
        &json!({"width": 360, "height": 800}),
    );
    browser.send_keys("#tab-kernels", "\u{E012}");
    let fits = browser.wait_for(
        "return !document.getElementById('view-classify').hidden \
         && document.documentElement.scrollWidth <= window.innerWidth",
        "the classify view fitting a 360-pixel window",
    );
    assert_eq!(fits, json!(true));
}
