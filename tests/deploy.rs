//! Checks of the deployment files under `deploy/`: the Helm chart's plain
//! YAML parses and holds what the templates reference, the deployment keeps
//! its shutdown and probe settings, and every metric the Grafana dashboard
//! queries is exposed by a real server's `/metrics`.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use common::Server;
use serde_json::Value;
use serde_yaml::Value as Yaml;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn chart() -> PathBuf {
    root().join("deploy/helm/chatd")
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn yaml(path: &Path) -> Yaml {
    serde_yaml::from_str(&read(path)).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

fn dashboard() -> Value {
    let path = root().join("deploy/grafana/chatd-dashboard.json");
    serde_json::from_str(&read(&path)).expect("dashboard is JSON")
}

/// Every template file of the chart, with its text.
fn templates() -> Vec<(String, String)> {
    let dir = chart().join("templates");
    let mut out: Vec<_> = fs::read_dir(&dir)
        .expect("templates dir")
        .map(|e| e.expect("dir entry").path())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                read(&p),
            )
        })
        .collect();
    out.sort();
    out
}

/// Every panel, including those nested in collapsed rows.
fn panels(dash: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dash["panels"].as_array().expect("panels array") {
        out.push(p);
        if let Some(sub) = p["panels"].as_array() {
            out.extend(sub);
        }
    }
    out
}

/// Every PromQL expression of the dashboard's panel targets.
fn exprs(dash: &Value) -> Vec<String> {
    panels(dash)
        .into_iter()
        .filter_map(|p| p["targets"].as_array())
        .flatten()
        .map(|t| t["expr"].as_str().expect("target has expr").to_string())
        .collect()
}

/// Identifiers in a PromQL expression that name a metric: words outside
/// braces, quotes and ranges that are followed by `{` or that start with
/// `chat_`. Function names and `by (...)` labels are skipped.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let (mut i, mut depth_brace, mut in_quote, mut in_range) = (0, 0, false, false);
    while i < bytes.len() {
        let c = bytes[i] as char;
        if in_quote {
            if c == '\\' {
                i += 1;
            } else if c == '"' {
                in_quote = false;
            }
            i += 1;
            continue;
        }
        match c {
            '"' => in_quote = true,
            '{' => depth_brace += 1,
            '}' => depth_brace -= 1,
            '[' => in_range = true,
            ']' => in_range = false,
            _ if depth_brace == 0 && !in_range && (c.is_ascii_alphabetic() || c == '_') => {
                let start = i;
                while i < bytes.len()
                    && ((bytes[i] as char).is_ascii_alphanumeric() || bytes[i] == b'_')
                {
                    i += 1;
                }
                let word = &expr[start..i];
                if word.starts_with("chat_") {
                    names.insert(word.to_string());
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    names
}

/// The metric family a series name belongs to (histogram suffixes stripped).
fn family(name: &str) -> &str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            return base;
        }
    }
    name
}

#[test]
fn metric_name_extraction() {
    let names = metric_names(
        r#"histogram_quantile(0.99, sum by (le) (rate(chat_delivery_latency_seconds_bucket{pod=~"chat_x"}[5m]))) + chat_cores"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        vec!["chat_cores", "chat_delivery_latency_seconds_bucket"]
    );
    assert_eq!(
        family("chat_delivery_latency_seconds_bucket"),
        "chat_delivery_latency_seconds"
    );
    assert_eq!(family("chat_connections"), "chat_connections");
}

#[test]
fn chart_plain_yaml_parses() {
    let chart_yaml = yaml(&chart().join("Chart.yaml"));
    assert_eq!(chart_yaml["apiVersion"].as_str(), Some("v2"));
    assert_eq!(chart_yaml["name"].as_str(), Some("chatd"));
    assert!(
        chart_yaml["version"].as_str().is_some(),
        "Chart.yaml version"
    );
    let values = yaml(&chart().join("values.yaml"));
    assert_eq!(values["config"]["port"].as_u64(), Some(8000));
    assert_eq!(values["config"]["logFormat"].as_str(), Some("json"));
    assert_eq!(
        values["podSecurityContext"]["runAsUser"].as_u64(),
        Some(10001)
    );
    assert_eq!(
        values["securityContext"]["readOnlyRootFilesystem"].as_bool(),
        Some(true)
    );
    assert_eq!(
        values["service"]["sessionAffinity"].as_str(),
        Some("ClientIP")
    );
    assert_eq!(
        values["podDisruptionBudget"]["maxUnavailable"].as_u64(),
        Some(1)
    );
    // Longer than preStop + the server's 5 s drain + 2 s close linger.
    let grace = values["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("grace period");
    let pre_stop = values["lifecycle"]["preStopSleepSeconds"]
        .as_u64()
        .expect("preStop sleep");
    assert!(
        grace >= pre_stop + 5 + 2 + 10,
        "grace {grace}s, preStop {pre_stop}s"
    );
    // Backends are opt-in (and REDIS_URL is still refused by this build).
    assert_eq!(values["redis"]["enabled"].as_bool(), Some(false));
    assert_eq!(values["database"]["enabled"].as_bool(), Some(false));
    for name in [
        "deployment.yaml",
        "service.yaml",
        "hpa.yaml",
        "pdb.yaml",
        "secret.yaml",
    ] {
        assert!(
            chart().join("templates").join(name).is_file(),
            "templates/{name}"
        );
    }
}

#[test]
fn template_value_references_exist_in_values() {
    let values = yaml(&chart().join("values.yaml"));
    let mut checked = 0;
    for (file, text) in templates() {
        for (at, _) in text.match_indices(".Values.") {
            let path: String = text[at + ".Values.".len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '.')
                .collect();
            let path = path.trim_end_matches('.');
            let mut node = &values;
            for key in path.split('.') {
                node = node.get(key).unwrap_or_else(|| {
                    panic!("templates/{file} references .Values.{path}, missing in values.yaml at {key:?}")
                });
            }
            checked += 1;
        }
    }
    assert!(checked > 40, "only {checked} .Values references found");
}

#[test]
fn deployment_probes_and_shutdown() {
    let text = read(&chart().join("templates/deployment.yaml"));
    let values = yaml(&chart().join("values.yaml"));
    assert_eq!(values["probes"]["path"].as_str(), Some("/healthz"));
    for needle in [
        "readinessProbe:",
        "livenessProbe:",
        "path: {{ .Values.probes.path }}",
        "preStop:",
        "terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}",
        "secretKeyRef:",
        "name: JWT_SECRET",
        "name: CORES",
        "value: {{ .Values.resources.cpu | int64 | quote }}",
        "containerPort: {{ $cfg.port | int64 }}",
    ] {
        assert!(text.contains(needle), "deployment.yaml lacks {needle:?}");
    }
    // Every setting the chart passes is one the server reads.
    let config = read(&root().join("src/config.rs"));
    for line in text.lines() {
        if let Some(var) = line.trim().strip_prefix("- name: ") {
            if var.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
                assert!(
                    config.contains(&format!("env = \"{var}\"")),
                    "deployment sets {var}, which src/config.rs does not read"
                );
            }
        }
    }
    // Helm reads numbers as float64 and prints 1000000 as "1e+06", which the
    // server refuses: every numeric setting must pass through int64.
    for line in text.lines() {
        let Some(at) = line.find("$cfg.") else {
            continue;
        };
        let key: String = line[at + 5..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect();
        if values["config"][key.as_str()].is_number() {
            assert!(
                line.contains("| int64"),
                "numeric {key} printed without int64: {line}"
            );
        }
    }
    let hpa = read(&chart().join("templates/hpa.yaml"));
    assert!(hpa.contains("autoscaling/v2") && hpa.contains("name: chat_connections"));
    assert!(hpa.contains("type: Pods") && hpa.contains("name: cpu"));
}

#[test]
fn dashboard_metrics_are_exposed_by_the_server() {
    let dash = dashboard();
    assert_eq!(dash["schemaVersion"].as_u64(), Some(39));
    assert_eq!(dash["__inputs"][0]["name"].as_str(), Some("DS_PROMETHEUS"));
    let mut used = BTreeSet::new();
    for expr in exprs(&dash) {
        let names = metric_names(&expr);
        assert!(!names.is_empty(), "no chat_ metric in {expr:?}");
        used.extend(names.iter().map(|n| family(n).to_string()));
    }
    for required in [
        "chat_connections",
        "chat_connections_opened_total",
        "chat_connections_closed_total",
        "chat_messages_delivered_total",
        "chat_messages_received_total",
        "chat_delivery_latency_seconds",
        "chat_errors_total",
        "chat_room_messages_total",
        "chat_mesh_staged_total",
        "chat_audit_records_total",
    ] {
        assert!(
            used.contains(required),
            "dashboard has no panel on {required}"
        );
    }
    let latency = exprs(&dash)
        .into_iter()
        .filter(|e| e.contains("histogram_quantile") && e.contains("chat_delivery_latency"))
        .collect::<Vec<_>>();
    assert!(
        latency.iter().any(|e| e.contains("0.5,")) && latency.iter().any(|e| e.contains("0.99,"))
    );
    assert!(latency
        .iter()
        .all(|e| e.contains("chat_delivery_latency_seconds_bucket")));
    // The core series come from a server without backends; the Redis and
    // Postgres series (exported only when those are configured) from one
    // with both.
    let backend = |n: &String| n.starts_with("chat_pg_") || n.starts_with("chat_redis_");
    for wanted in ["chat_pg_flush_rows", "chat_redis_batch_size"] {
        assert!(used.contains(wanted), "dashboard has no panel on {wanted}");
    }
    let server = Server::default_start();
    assert_exposed(&server, used.iter().filter(|n| !backend(n)));
    drop(server);
    let Some(db) = BackendDb::create() else {
        return;
    };
    let url = db.url();
    let prefix = format!("dash{}:", std::process::id());
    let server = Server::start(&[
        ("DATABASE_URL", url.as_str()),
        ("REDIS_URL", "redis://127.0.0.1:6379"),
        ("REDIS_PREFIX", prefix.as_str()),
    ]);
    assert_exposed(&server, used.iter().filter(|n| backend(n)));
}

/// The compose file's service `name`.
fn compose_service(name: &str) -> Yaml {
    let compose = yaml(&root().join("docker-compose.yml"));
    compose["services"][name].clone()
}

#[test]
fn compose_starts_chatd_with_postgres_and_redis() {
    let compose = yaml(&root().join("docker-compose.yml"));
    let services: BTreeSet<&str> = compose["services"]
        .as_mapping()
        .expect("services")
        .keys()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert_eq!(services, BTreeSet::from(["chatd", "postgres", "redis"]));
    assert!(compose["volumes"]["pgdata"].is_mapping());

    let chatd = compose_service("chatd");
    assert_eq!(chatd["build"].as_str(), Some("."));
    for backend in ["postgres", "redis"] {
        assert_eq!(
            chatd["depends_on"][backend]["condition"].as_str(),
            Some("service_healthy"),
            "{backend}"
        );
    }
    let env = &chatd["environment"];
    let text = |key: &str| {
        env[key]
            .as_str()
            .unwrap_or_else(|| panic!("{key}"))
            .to_string()
    };
    assert_eq!(text("JWT_SECRET"), "${JWT_SECRET:?set JWT_SECRET}");
    assert_eq!(text("REDIS_URL"), "redis://redis:6379");
    assert_eq!(text("PIN_CORES"), "false");
    // DATABASE_URL names the postgres service and the credentials it creates.
    let pg = compose_service("postgres");
    let (user, password, db) = (
        pg["environment"]["POSTGRES_USER"].as_str().unwrap(),
        pg["environment"]["POSTGRES_PASSWORD"].as_str().unwrap(),
        pg["environment"]["POSTGRES_DB"].as_str().unwrap(),
    );
    assert_eq!(
        text("DATABASE_URL"),
        format!("postgres://{user}:{password}@postgres:5432/{db}")
    );
    chatd::pg::parse_url(&text("DATABASE_URL")).expect("DATABASE_URL parses");
    // Every variable is a setting the binary knows.
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_chatd"))
        .arg("--help")
        .output()
        .expect("chatd --help");
    let help = String::from_utf8_lossy(&help.stdout);
    for key in env.as_mapping().unwrap().keys() {
        let key = key.as_str().unwrap();
        assert!(
            help.contains(&format!("[env: {key}")),
            "{key} is not a setting"
        );
    }
    assert_eq!(chatd["ports"][0].as_str(), Some("8000:8000"));
    assert_eq!(
        chatd["security_opt"][0].as_str(),
        Some("seccomp=unconfined")
    );
    assert_eq!(chatd["ulimits"]["memlock"]["soft"].as_i64(), Some(-1));
    assert_eq!(chatd["ulimits"]["nofile"]["hard"].as_u64(), Some(1_048_576));
    let check = &chatd["healthcheck"]["test"];
    assert_eq!(check[0].as_str(), Some("CMD"));
    assert!(
        check[3].as_str().unwrap().ends_with("/healthz"),
        "{check:?}"
    );
    // Grace: drain 5 s + linger 2 s + the final Postgres flush.
    let grace: u64 = chatd["stop_grace_period"]
        .as_str()
        .and_then(|s| s.strip_suffix('s'))
        .and_then(|s| s.parse().ok())
        .expect("stop_grace_period in seconds");
    let flush_ms: u64 = text("PG_SHUTDOWN_TIMEOUT_MS").parse().unwrap();
    assert!(grace >= 5 + 2 + flush_ms / 1000, "grace {grace}s");

    assert_eq!(pg["image"].as_str(), Some("postgres:15"));
    assert_eq!(
        pg["healthcheck"]["test"][1].as_str(),
        Some(format!("pg_isready -U {user} -d {db}").as_str())
    );
    assert_eq!(
        pg["volumes"][0].as_str(),
        Some("pgdata:/var/lib/postgresql/data")
    );
    let redis = compose_service("redis");
    assert_eq!(redis["image"].as_str(), Some("redis:7"));
    assert_eq!(redis["healthcheck"]["test"][1].as_str(), Some("redis-cli"));
}

#[test]
fn dockerfile_is_multi_stage_non_root_with_a_health_check() {
    let text = read(&root().join("Dockerfile"));
    let froms: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(froms.len(), 2, "{froms:?}");
    assert!(froms[0].ends_with(" AS build"), "{froms:?}");
    assert_eq!(froms[1], "FROM debian:bookworm-slim");
    assert!(text.contains("COPY --from=build /src/target/release/chatd /usr/local/bin/chatd"));
    assert!(text.lines().any(|l| l == "USER chatd"));
    assert!(text.contains("useradd --system --uid 10001"));
    let check = text
        .lines()
        .find(|l| l.starts_with("HEALTHCHECK "))
        .expect("HEALTHCHECK");
    assert!(check.contains("/healthz"), "{check}");
    assert!(text.lines().any(|l| l == "STOPSIGNAL SIGTERM"));
}

/// Asserts that `/metrics` declares every family in `names`.
fn assert_exposed<'a>(server: &Server, names: impl Iterator<Item = &'a String>) {
    let (status, body) = server.get("/metrics", None);
    assert_eq!(status, 200);
    let exposed: BTreeSet<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for name in names {
        assert!(
            exposed.contains(name.as_str()),
            "dashboard queries {name}, not in /metrics:\n{body}"
        );
    }
}

/// A database of its own on the machine's Postgres (dropped at the end),
/// or None with a SKIP line when Postgres or Redis is not reachable
/// (a failure under CI=true).
struct BackendDb {
    /// Database name.
    name: String,
}

impl BackendDb {
    fn create() -> Option<BackendDb> {
        let name = format!("chatd_dash_{}", std::process::id());
        let created = psql(&format!("CREATE DATABASE {name}"));
        let redis = std::net::TcpStream::connect("127.0.0.1:6379").is_ok();
        if created && redis {
            return Some(BackendDb { name });
        }
        common::skip(&format!(
            "the backend dashboard series need Postgres and Redis (Postgres reachable with psql: {created}, Redis reachable: {redis})"
        ));
        None
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.name)
    }
}

impl Drop for BackendDb {
    fn drop(&mut self) {
        psql(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ));
    }
}

/// Runs one statement as the postgres user on 127.0.0.1; true on success.
fn psql(statement: &str) -> bool {
    std::process::Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-v",
            "ON_ERROR_STOP=1",
            "-qc",
            statement,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
