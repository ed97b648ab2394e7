//! The monitoring kit in `deploy/monitoring`: Prometheus's own `promtool` checks the
//! alert rules and runs their unit tests (`alerts.test.yml`), and every metric the
//! rules and the Grafana dashboard name is exported by real runs: a Kafka pipeline
//! with an aggregate, late events and dead letters, and a Postgres pipeline.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::kafka::{clicks_source, clicks_with_a_bad_record_each, produce_clicks};
use crate::kafka_support::*;
use crate::operations::{prometheus, spawn_logged, terminate};
use crate::pg::Db;
use crate::support::*;

fn promtool(dir: &Path, args: &[&str]) {
    let out = Command::new(stack_env("TRIBUTARY_PROMTOOL"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every `tributary_…` name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("tributary_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// Sample names on `addr`'s /metrics once `done` holds for them (or the deadline).
fn scrape_until(
    child: &mut std::process::Child,
    addr: &str,
    done: impl Fn(&BTreeSet<String>) -> bool,
) -> BTreeSet<String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut names = BTreeSet::new();
    while Instant::now() < deadline {
        assert!(child.try_wait().unwrap().is_none(), "the run died");
        std::thread::sleep(Duration::from_millis(500));
        let Ok(resp) = reqwest::blocking::get(format!("http://{addr}/metrics")) else {
            continue;
        };
        names = prometheus(&resp.text().unwrap())
            .into_iter()
            .map(|(n, ..)| n)
            .collect();
        if done(&names) {
            break;
        }
    }
    names
}

fn kafka_run(wanted: &BTreeSet<String>) -> BTreeSet<String> {
    let (topic, id) = clicks_with_a_bad_record_each("monitoring", 20_000);
    let dir = tempfile::tempdir().unwrap();
    let pipeline = kafka_pipeline(
        dir.path(),
        "monitoring",
        &clicks_source(&topic, &topic),
        "./lake",
        &format!(
            "[batch]\nmax_latency = \"300ms\"\n\n[dead_letters]\n\n[[tables]]\nname = \"clicks\"\nfrom = \"{topic}\"\n\n\
             [[aggregates]]\nname = \"views\"\nfrom = \"{topic}\"\nevent_time = \"event_timestamp\"\n\
             window = {{ kind = \"tumbling\", size = \"1s\" }}\nwatermark = \"1s\"\ngroup_by = [\"page\"]\n\
             measures = {{ n = \"count(*)\" }}\nlate = \"dlq\"\n"
        ),
    );
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let p_arg = pipeline.to_str().unwrap();
    let mut run = spawn_logged(dir.path(), &["run", p_arg, "--metrics", &addr], "run.log");
    // Once the first events are committed (the watermark is past them), the first
    // hundred again are late.
    scrape_until(&mut run, &addr, |n| n.contains("tributary_watermark_seconds"));
    std::thread::sleep(Duration::from_secs(2));
    produce_clicks(&topic, id, 3, 0, 100);
    let kafka_names = ["tributary_kafka_lag_messages", "tributary_late_events_total"];
    let names = scrape_until(&mut run, &addr, |n| {
        kafka_names.iter().all(|k| n.contains(*k))
            && wanted
                .iter()
                .filter(|w| !w.contains("postgres"))
                .all(|w| n.contains(w))
    });
    let (status, _) = terminate(&mut run);
    let log = std::fs::read_to_string(dir.path().join("run.log")).unwrap();
    assert!(status.success(), "{status}\n{log}");
    names
}

fn postgres_run() -> BTreeSet<String> {
    let mut db = Db::create("monitoring");
    db.sql("CREATE TABLE items (id bigint PRIMARY KEY, note text); INSERT INTO items SELECT g, 'x' FROM generate_series(1, 100) g;");
    let slot = db.slot();
    let dir = tempfile::tempdir().unwrap();
    let pipeline = crate::pg::pipeline(
        dir.path(),
        &db,
        &slot,
        &["public.items"],
        "[[tables]]\nname = \"items\"\nfrom = \"public.items\"\nmode = \"mirror\"\nkey = [\"id\"]\n",
    );
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut run = spawn_logged(
        dir.path(),
        &["run", pipeline.to_str().unwrap(), "--metrics", &addr],
        "run.log",
    );
    let names = scrape_until(&mut run, &addr, |n| {
        n.contains("tributary_postgres_slot_lag_bytes")
            && n.contains("tributary_postgres_slot_retained_bytes")
    });
    let (status, _) = terminate(&mut run);
    assert!(status.success(), "{status}");
    names
}

#[test]
fn alert_rules_pass_promtool_and_name_only_metrics_that_real_runs_export() {
    let kit = repo().join("deploy/monitoring");
    promtool(&kit, &["check", "rules", "alerts.yml"]);
    promtool(&kit, &["test", "rules", "alerts.test.yml"]);

    let rules = std::fs::read_to_string(kit.join("alerts.yml")).unwrap();
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(kit.join("grafana-dashboard.json")).unwrap()).unwrap();
    let mut exprs = String::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            exprs += target["expr"].as_str().unwrap();
            exprs.push('\n');
        }
    }
    for v in dashboard["templating"]["list"].as_array().unwrap() {
        exprs += v["query"].as_str().unwrap_or("");
        exprs.push('\n');
    }
    let mut wanted = metric_names(&exprs);
    let in_rules = metric_names(&rules);
    assert!(in_rules.len() >= 10, "{in_rules:?}");
    assert!(wanted.len() >= 15, "{wanted:?}");
    wanted.extend(in_rules);

    let mut exported = kafka_run(&wanted);
    exported.extend(postgres_run());
    let missing: Vec<&String> = wanted.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "named in deploy/monitoring but not exported by a real run: {missing:?}\nexported: {exported:?}"
    );
}
