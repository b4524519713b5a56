//! The JavaScript client and the demo page, from `cargo test`: the demo
//! files over HTTP, then the client's own test suites run with Node against
//! the binary cargo built (`node --test`: unit and integration tests, and
//! the browser test of the demo page in headless Chromium).
//!
//! `clients/js/node_modules` is installed with `npm ci` when missing (from
//! the committed `package-lock.json`). Without node, npm or Chromium a test
//! prints a line starting with `SKIP` and returns, except under `CI=true`,
//! where it fails.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use common::Server;

/// The npm package of the client.
const JS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/js");
/// Longest run of one `node --test` (the suites take seconds; this is the hang bound).
const NODE_DEADLINE: Duration = Duration::from_secs(600);
/// Longest `npm ci`.
const NPM_DEADLINE: Duration = Duration::from_secs(600);

/// Reports a missing tool: `SKIP` normally, a failure under `CI=true`.
fn skip(reason: &str) {
    common::skip(reason);
}

/// Whether `program --version` runs.
fn installed(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn chromium() -> PathBuf {
    PathBuf::from(std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()))
}

/// Runs `program args` in `dir` with a deadline (the whole process group is
/// killed past it); returns whether it succeeded and its combined output.
fn run(program: &str, args: &[&str], env: &[(&str, &str)], deadline: Duration) -> (bool, String) {
    let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "clients-{program}-{}-{}.log",
        std::process::id(),
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    let out = std::fs::File::create(&log).expect("log file");
    let err = out.try_clone().expect("log file");
    let mut child = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(JS_DIR)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        // Its own process group, so a timeout also ends the servers and
        // browsers it started.
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("start {program}: {e}"));
    let end = Instant::now() + deadline;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break Some(status);
        }
        if Instant::now() > end {
            // SAFETY: kill(2) on the process group of our own child.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    if status.is_none() {
        text.push_str(&format!("\n{program} killed after {deadline:?}\n"));
    }
    (status.is_some_and(|s| s.success()), text)
}

/// Installs `clients/js/node_modules` once per test run when it is missing
/// or older than `package-lock.json`.
fn node_modules() -> Result<(), String> {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    READY
        .get_or_init(|| {
            let dir = Path::new(JS_DIR);
            let modified = |p: PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
            let installed_at = modified(dir.join("node_modules/.package-lock.json"));
            let locked_at = modified(dir.join("package-lock.json"));
            if installed_at.is_some() && installed_at >= locked_at {
                return Ok(());
            }
            if !installed("npm") {
                return Err("npm is not installed (clients/js/node_modules is missing)".into());
            }
            let (ok, out) = run("npm", &["ci", "--no-audit", "--no-fund"], &[], NPM_DEADLINE);
            if ok {
                Ok(())
            } else {
                Err(format!("npm ci failed:\n{out}"))
            }
        })
        .clone()
}

/// The count after `ℹ <name> ` in node's spec reporter summary.
fn summary(out: &str, name: &str) -> Option<u64> {
    let prefix = format!("\u{2139} {name} ");
    out.lines()
        .find_map(|l| l.trim().strip_prefix(&prefix)?.trim().parse().ok())
}

/// Runs `node --test` on `paths` against the built binary; asserts that it
/// passed with at least `min_pass` tests and none failed or skipped.
fn node_test(paths: &[&str], min_pass: u64) {
    if !installed("node") {
        return skip("node is not installed (Node 20 runs the JS client tests)");
    }
    if let Err(e) = node_modules() {
        return skip(&e);
    }
    let mut args = vec!["--test", "--test-reporter=spec"];
    args.extend_from_slice(paths);
    let chromium = chromium().to_string_lossy().into_owned();
    let env = [
        ("CHATD_BIN", env!("CARGO_BIN_EXE_chatd")),
        ("SCREENSHOT_DIR", env!("CARGO_TARGET_TMPDIR")),
        ("CHROMIUM", chromium.as_str()),
    ];
    let (ok, out) = run("node", &args, &env, NODE_DEADLINE);
    println!("{out}");
    assert!(ok, "node --test {paths:?} failed:\n{out}");
    assert_eq!(summary(&out, "fail"), Some(0), "{out}");
    assert_eq!(summary(&out, "skipped"), Some(0), "{out}");
    let passed = summary(&out, "pass").unwrap_or(0);
    assert!(passed >= min_pass, "only {passed} passed:\n{out}");
}

#[test]
fn js_client_unit_and_integration_tests() {
    node_test(&["test/unit/", "test/integration/"], 64);
}

#[test]
fn demo_page_in_headless_chromium() {
    if !chromium().exists() {
        return skip(&format!(
            "no Chromium at {} (apt-get install chromium)",
            chromium().display()
        ));
    }
    node_test(&["test/browser/"], 2);
}

#[test]
fn demo_page_drops_a_message_an_operator_deleted() {
    if !chromium().exists() {
        return skip(&format!(
            "no Chromium at {} (apt-get install chromium)",
            chromium().display()
        ));
    }
    node_test(&["test/browser/deleted.test.js"], 1);
}

/// A raw GET: status, lower-cased headers, body.
fn get(server: &Server, path: &str) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut s = TcpStream::connect(server.addr).expect("connect");
    s.set_read_timeout(Some(common::FRAME_TIMEOUT)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("response");
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("head");
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, raw[end + 4..].to_vec())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn demo_files_are_served_with_types_and_cache_headers() {
    let server = Server::default_start();
    let (status, headers, body) = get(&server, "/");
    assert_eq!(status, 200);
    assert_eq!(
        header(&headers, "content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(header(&headers, "cache-control"), Some("no-cache"));
    assert_eq!(header(&headers, "referrer-policy"), Some("no-referrer"));
    let csp = header(&headers, "content-security-policy").expect("CSP");
    assert!(csp.contains("default-src 'self'"), "{csp}");
    assert!(String::from_utf8_lossy(&body).contains("<script type=\"module\" src=\"/app.js\">"));

    for (path, content_type, file) in [
        ("/app.js", "text/javascript", "web/app.js"),
        ("/app.css", "text/css", "web/app.css"),
        (
            "/js/client.js",
            "text/javascript",
            "clients/js/src/client.js",
        ),
        ("/js/index.js", "text/javascript", "clients/js/src/index.js"),
    ] {
        let (status, headers, body) = get(&server, path);
        assert_eq!(status, 200, "{path}");
        assert!(
            header(&headers, "content-type").is_some_and(|t| t.starts_with(content_type)),
            "{path}: {headers:?}"
        );
        assert_eq!(
            header(&headers, "cache-control"),
            Some("no-cache"),
            "{path}"
        );
        assert_eq!(header(&headers, "x-content-type-options"), Some("nosniff"));
        // One copy: the served module is the file of the npm package.
        let on_disk = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).unwrap();
        assert_eq!(body, on_disk, "{path}");
    }
    for missing in ["/js/nope.js", "/js/react.js", "/index.html", "/app.js/x"] {
        let (status, headers, _) = get(&server, missing);
        assert_eq!(status, 404, "{missing}");
        assert_eq!(header(&headers, "content-type"), Some("application/json"));
    }
}

#[test]
fn demo_page_over_permessage_deflate_in_headless_chromium() {
    if !chromium().exists() {
        return skip(&format!(
            "no Chromium at {} (apt-get install chromium)",
            chromium().display()
        ));
    }
    node_test(&["test/compression/"], 1);
}
