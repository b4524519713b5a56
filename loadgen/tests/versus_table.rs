//! `loadgen/versus_table.py`, the table `versus.sh` ends with: medians per server, the
//! ratio chatd / baseline, the connect rate, and each fan-out's CPU per delivery set
//! beside the kernel's paced floor measured in the same rounds.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;

/// A fresh directory under the target directory's tmp space.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(dir: &Path, name: &str, value: &serde_json::Value) {
    std::fs::write(dir.join(name), value.to_string()).unwrap();
}

fn fanout(us: f64, p99_ms: f64) -> serde_json::Value {
    json!({
        "delivery": {
            "deliveries_per_s": 25000.0, "lost": 0, "reordered": 0,
            "latency_ms": { "p50_ms": 0.5, "p99_ms": p99_ms }
        },
        "server": { "cpu_us_per_delivery": us },
        "connections": { "dropped": 0, "failed": 0 }
    })
}

fn table(dir: &Path) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("versus_table.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(dir)
        .output()
        .expect("python3 runs versus_table.py");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn line<'a>(text: &'a str, starts: &str) -> &'a str {
    text.lines()
        .find(|l| l.starts_with(starts))
        .unwrap_or_else(|| panic!("no line starting {starts:?} in\n{text}"))
}

#[test]
fn ratios_use_the_medians_and_the_floor_of_the_same_rounds() {
    let dir = scratch("versus-table");
    for (round, chatd, baseline, floor) in [
        (1, 6.0, 12.0, 5.0),
        (2, 8.0, 16.0, 4.0),
        (3, 7.0, 14.0, 6.0),
    ] {
        write(
            &dir,
            &format!("r{round}-chatd-fanout-100x50.json"),
            &fanout(chatd, 1.0),
        );
        write(
            &dir,
            &format!("r{round}-baseline-fanout-100x50.json"),
            &fanout(baseline, 2.0),
        );
        write(
            &dir,
            &format!("r{round}-floor-fanout-100x50.json"),
            &json!({ "cpu_us_per_send": floor }),
        );
        write(
            &dir,
            &format!("r{round}-chatd-connect-15000.json"),
            &json!({ "connections": { "rate_per_s": 12000.0 + round as f64, "handshake_ms": { "p99_ms": 3.0 } },
                     "server": { "cpu_us_per_connection": 90.0 } }),
        );
    }
    let text = table(&dir);
    assert_eq!(
        line(&text, "| fanout-100x50 | us server CPU per delivery |"),
        "| fanout-100x50 | us server CPU per delivery | 7 (6, 8, 7) | 14 (12, 16, 14) | 0.50 | chatd 0/0/0 / baseline 0/0/0 |"
    );
    assert_eq!(
        line(&text, "| fanout-100x50 | p99 delivery latency, ms |"),
        "| fanout-100x50 | p99 delivery latency, ms | 1 (1, 1, 1) | 2 (2, 2, 2) | 0.50 |  |"
    );
    assert!(
        line(&text, "| connect-15000 | connections per second |")
            .contains("12 k (12 k, 12 k, 12 k)"),
        "{text}"
    );
    // chatd 7 and the baseline 14 against a floor of 5.
    assert_eq!(
        line(&text, "| fanout-100x50 | 5 (5, 4, 6)"),
        "| fanout-100x50 | 5 (5, 4, 6) | 1.40 | 2.80 |"
    );
}
