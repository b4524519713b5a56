//! `loadgen/budget_table.py`, the tables `budget.sh` ends with: each burst or fanout
//! figure must be divided by the floor of its own round, each fanout rate set beside
//! the paced floor of its own round and rate, and the sweep must list the offered rate
//! each file name stands for.

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

/// A burst/fanout report with the fields the table reads.
fn run_report(us: f64, delivered_per_s: f64, p99_ms: f64) -> serde_json::Value {
    json!({
        "delivery": {
            "deliveries_per_s": delivered_per_s,
            "lost": 0,
            "reordered": 0,
            "latency_ms": { "p50_ms": 0.5, "p99_ms": p99_ms, "p999_ms": 3.0 }
        },
        "server": { "cpu_us_per_delivery": us, "cpu_cores_measured": 0.25 },
        "loadgen": { "cpu_cores_measured": 0.4 }
    })
}

fn write(dir: &Path, name: &str, value: &serde_json::Value) {
    std::fs::write(dir.join(name), value.to_string()).unwrap();
}

fn table(dir: &Path) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("budget_table.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(dir)
        .output()
        .expect("python3 runs budget_table.py");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn line<'a>(text: &'a str, starts: &str) -> &'a str {
    text.lines()
        .find(|l| l.trim_start().starts_with(starts))
        .unwrap_or_else(|| panic!("no line starting {starts:?} in\n{text}"))
}

#[test]
fn each_figure_is_compared_with_the_floor_of_its_own_round() {
    let dir = scratch("budget-table-rounds");
    write(
        &dir,
        "r1-floor-5000.json",
        &json!({ "cpu_us_per_send": 5.0 }),
    );
    write(
        &dir,
        "r2-floor-5000.json",
        &json!({ "cpu_us_per_send": 10.0 }),
    );
    // Round 1 over its floor (6 / 5), round 2 under its own (6 / 10): against a
    // single floor both would land on the same side.
    for (round, us) in [(1, 6.0), (2, 6.0)] {
        write(
            &dir,
            &format!("r{round}-fanout-100x50-r8-batched-true.json"),
            &run_report(us, 40_000.0, 1.5),
        );
    }
    write(
        &dir,
        "r1-burst-5000-batched-true.json",
        &run_report(0.25, 1.5e6, 9.0),
    );
    let text = table(&dir);
    let fanout = line(&text, "fanout-100x50-r8-batched-true");
    assert!(fanout.contains("6.000 (1.20)"), "{fanout}");
    assert!(fanout.contains("6.000 (0.60)"), "{fanout}");
    assert!(fanout.contains("1 of 2 (median ratio 0.90)"), "{fanout}");
    let burst = line(&text, "burst-5000-batched-true");
    assert!(burst.contains("0.250 (0.05)"), "{burst}");
    assert!(burst.contains("1 of 1"), "{burst}");
    // The floor row shows both rounds and their median.
    let floor = line(&text, "floor (us per send)");
    assert!(
        floor.contains("5.000") && floor.contains("10.000") && floor.ends_with("7.500"),
        "{floor}"
    );
}

#[test]
fn the_sweep_lists_offered_rates_in_order() {
    let dir = scratch("budget-table-sweep");
    write(
        &dir,
        "sweep-fanout-100x50-r200.json",
        &run_report(0.7, 999_000.0, 217.0),
    );
    write(
        &dir,
        "sweep-fanout-100x50-r8.json",
        &run_report(7.2, 40_000.0, 1.4),
    );
    let text = table(&dir);
    let rows: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.contains("rate sweep"))
        .skip(2)
        .collect();
    assert_eq!(rows.len(), 2, "{text}");
    // --msg-rate 8 per room x 100 rooms x 50 members = 40,000 offered per second.
    let first: Vec<&str> = rows[0].split_whitespace().collect();
    assert_eq!(first[0], "40000");
    assert_eq!(first[1], "40000");
    assert_eq!(first[4], "1.400");
    assert_eq!(first[8], "7.200");
    let second: Vec<&str> = rows[1].split_whitespace().collect();
    assert_eq!(second[0], "1000000");
    assert_eq!(second[1], "999000");
    assert_eq!(second[4], "217.000");
}

#[test]
fn fanout_is_set_beside_the_paced_floor_of_its_own_round_and_rate() {
    let dir = scratch("budget-table-paced");
    for (round, rate, floor) in [(1, 4, 8.0), (2, 4, 10.0), (1, 8, 7.0)] {
        write(
            &dir,
            &format!("r{round}-paced-5000-r{rate}.json"),
            &json!({ "cpu_us_per_send": floor }),
        );
    }
    for (round, rate, us) in [(1, 4, 12.0), (2, 4, 12.0)] {
        write(
            &dir,
            &format!("r{round}-fanout-100x50-r{rate}-batched-true.json"),
            &run_report(us, 20_000.0, 1.5),
        );
    }
    let text = table(&dir);
    // --msg-rate 4: 20,000 deliveries/s; 12 / 8 and 12 / 10, median 1.35.
    let r4 = line(&text, "20000/s");
    assert!(r4.contains("12.000 / 8.000 (1.50)"), "{r4}");
    assert!(r4.contains("12.000 / 10.000 (1.20)"), "{r4}");
    assert!(r4.ends_with("median ratio 1.35"), "{r4}");
    // A paced floor without its fanout run shows a dash, not a ratio.
    let r8 = line(&text, "40000/s");
    assert!(r8.contains("- / 7.000"), "{r8}");
    assert!(r8.ends_with("median ratio -"), "{r8}");
}
