//! Aggregates across a consumer group: per-partition state that moves with its
//! partitions (issue: windowed aggregates across a consumer group).

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use apache_avro::types::Value;

use crate::kafka::{click, clicks_topic_of, clickstream};
use crate::kafka_support::*;
use crate::support::*;

const PARTITIONS: i32 = 6;
const EVENTS: u64 = 1_000_000;
const USERS: u64 = 5000;
const BASE_US: i64 = 1_767_225_600_000_000;

/// Event `i`: user `i % USERS` (its key), 1 ms after event `i - 1`, with a minute's
/// pause every 100,000 events (so each user's sessions end there).
fn event_time(i: u64) -> i64 {
    BASE_US + i as i64 * 1000 + (i / 100_000) as i64 * 60_000_000
}

fn keyed_click(i: u64) -> Value {
    let Value::Record(mut fields) = click(i) else {
        unreachable!()
    };
    for (name, v) in &mut fields {
        if name == "event_timestamp" {
            *v = Value::TimestampMicros(event_time(i));
        }
    }
    Value::Record(fields)
}

/// The partition of user `u`'s key: every event of a key in one partition.
fn partition_of(u: u64) -> i32 {
    (u % PARTITIONS as u64) as i32
}

/// Produces events `from..to`, keyed by their user.
fn produce(topic: &str, id: u32, from: u64, to: u64) {
    let (_, schema) = clickstream();
    let p = Produce::new();
    for i in from..to {
        let u = i % USERS;
        let key = format!("u{u}");
        p.send(
            topic,
            partition_of(u),
            Some(key.as_bytes()),
            Some(&frame(id, &schema, keyed_click(i))),
        );
    }
    p.flush();
}

/// One event per partition an hour after the last: every partition's watermark passes
/// every window and session of the real events. Their keys are their own.
fn produce_closers(topic: &str, id: u32) {
    let (_, schema) = clickstream();
    let p = Produce::new();
    for part in 0..PARTITIONS {
        let Value::Record(mut fields) = keyed_click(0) else {
            unreachable!()
        };
        for (name, v) in &mut fields {
            match name.as_str() {
                "event_timestamp" => *v = Value::TimestampMicros(event_time(EVENTS) + 3_600_000_000),
                "user_id" => *v = Value::String(format!("closer{part}")),
                _ => {}
            }
        }
        let key = format!("closer{part}");
        p.send(
            topic,
            part,
            Some(key.as_bytes()),
            Some(&frame(id, &schema, Value::Record(fields))),
        );
    }
    p.flush();
}

fn pipeline(
    dir: &Path,
    name: &str,
    topic: &str,
    group: &str,
    prefix: &str,
    scale_out: bool,
) -> std::path::PathBuf {
    let source = format!(
        "topics = [\"{topic}\"]\ngroup_id = \"{group}\"\nformat = \"avro\"\nschema_registry = \"{}\"\n\
         reader_schemas = {{ \"{topic}\" = \"{}\" }}\nkey_format = \"string\"\nscale_out = {scale_out}",
        stack_env("SCHEMA_REGISTRY_URL"),
        repo().join("schemas/clickstream.avsc").display()
    );
    let aggregate = |name: &str, window: &str, measures: &str| {
        // Global totals are written by MERGE after every micro-batch (with `final`
        // they would wait for the end of a bounded input, which Kafka never has).
        let emit = if window.contains("global") {
            "update"
        } else {
            "final"
        };
        format!(
            "[[aggregates]]\nname = \"{name}\"\nfrom = \"{topic}\"\nevent_time = \"event_timestamp\"\n\
             window = {window}\nwatermark = \"0s\"\ngroup_by = [\"_key\"]\nmeasures = {measures}\nemit = \"{emit}\"\n\n"
        )
    };
    let tables = format!(
        "[batch]\nmax_rows = 50000\n\n[[tables]]\nname = \"clicks\"\nfrom = \"{topic}\"\n\n{}{}{}",
        aggregate(
            "per_minute",
            "{ kind = \"tumbling\", size = \"1m\" }",
            "{ n = \"count(*)\", pages = \"count(distinct page)\" }"
        ),
        aggregate(
            "sessions",
            "{ kind = \"session\", gap = \"30s\" }",
            "{ n = \"count(*)\" }"
        ),
        aggregate(
            "totals",
            "{ kind = \"global\" }",
            "{ n = \"count(*)\", pages = \"count(distinct page)\" }"
        ),
    );
    kafka_pipeline(dir, name, &source, prefix, &tables)
}

/// A `tributary run` process, killed when the test ends without stopping it (a failed
/// assertion), so no run outlives its test.
struct Run(Child);

impl Drop for Run {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn spawn(dir: &Path, pipeline: &Path, log: &str) -> Run {
    Run(crate::kafka::spawn_run(dir, pipeline, log))
}

/// The three aggregates as DuckDB computes them over the raw table (real events only,
/// every window closed), each with the query reading the aggregate table.
fn expected(prefix: &str) -> Vec<(&'static str, String, String)> {
    let raw = format!(
        "(SELECT _key AS k, epoch_us(event_timestamp) AS t, page FROM {} WHERE _key LIKE 'u%')",
        scan(&format!("{prefix}/clicks"))
    );
    let t = |name: &str| scan(&format!("{prefix}/{name}"));
    vec![
        (
            "per_minute",
            format!(
                "SELECT t // 60000000 * 60000000, k, count(*), count(DISTINCT page) FROM {raw} GROUP BY ALL"
            ),
            format!(
                "SELECT epoch_us(window_start), _key, n, pages FROM {} WHERE _key LIKE 'u%'",
                t("per_minute")
            ),
        ),
        (
            "sessions",
            format!(
                "WITH o AS (SELECT *, CASE WHEN t - lag(t) OVER (PARTITION BY k ORDER BY t) < 30000000 \
                                       THEN 0 ELSE 1 END AS starts FROM {raw}), \
                      g AS (SELECT *, sum(starts) OVER (PARTITION BY k ORDER BY t \
                                                        ROWS UNBOUNDED PRECEDING) AS sid FROM o) \
                 SELECT min(t), max(t) + 30000000, k, count(*) FROM g GROUP BY k, sid"
            ),
            format!(
                "SELECT epoch_us(window_start), epoch_us(window_end), _key, n FROM {} WHERE _key LIKE 'u%'",
                t("sessions")
            ),
        ),
        (
            "totals",
            format!("SELECT k, count(*), count(DISTINCT page) FROM {raw} GROUP BY ALL"),
            format!(
                "SELECT _key, n, pages FROM {} WHERE _key LIKE 'u%' AND window_start IS NULL",
                t("totals")
            ),
        ),
    ]
}

/// Whether `actual` holds exactly the rows of `expected` (as multisets).
fn same_rows(expected: &str, actual: &str) -> bool {
    let r = &duck(&format!(
        "WITH e AS ({expected}), t AS ({actual}) \
         SELECT (SELECT count(*) FROM (SELECT * FROM e EXCEPT ALL SELECT * FROM t)) \
              + (SELECT count(*) FROM (SELECT * FROM t EXCEPT ALL SELECT * FROM e))"
    ))[0];
    r[0].as_i64() == Some(0)
}

fn logs(dir: &Path) -> String {
    let mut out = String::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if name.ends_with(".log") {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            let interesting: Vec<&str> = text
                .lines()
                .filter(|l| {
                    l.contains("WARN")
                        || l.contains("ERROR")
                        || l.contains("assigned")
                        || l.contains("claimed")
                })
                .collect();
            out.push_str(&format!("--- {name}\n{}\n", interesting.join("\n")));
        }
    }
    out
}

#[test]
fn a_group_of_processes_aggregates_exactly_what_one_process_does() {
    let (topic, id) = clicks_topic_of("keyed", PARTITIONS);
    produce(&topic, id, 0, EVENTS / 2);

    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("s3://tributary/{}", unique("scale-out"));
    let group = unique("group");
    let p = pipeline(dir.path(), "scaled", &topic, &group, &prefix, true);
    let raw = format!("{prefix}/clicks");
    let count = || duck_i64(&format!("SELECT count(*) FROM {}", scan(&raw)));
    let wait_for = |rows: i64, procs: &mut [&mut Run]| {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            if s3_has(&raw) && count() >= rows {
                return;
            }
            for c in procs.iter_mut() {
                assert!(
                    c.0.try_wait().unwrap().is_none(),
                    "a process died:\n{}",
                    logs(dir.path())
                );
            }
            assert!(
                Instant::now() < deadline,
                "stuck below {rows} rows:\n{}",
                logs(dir.path())
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    };

    // Three processes share the six partitions.
    let mut a = spawn(dir.path(), &p, "a.log");
    let mut b = spawn(dir.path(), &p, "b.log");
    let mut c = spawn(dir.path(), &p, "c.log");
    wait_for(150_000, &mut [&mut a, &mut b, &mut c]);
    // One is killed outright, holding partitions and uncommitted windows; its
    // partitions move once its session times out, and it comes back.
    b.0.kill().unwrap();
    b.0.wait().unwrap();
    produce(&topic, id, EVENTS / 2, 3 * EVENTS / 4);
    std::thread::sleep(Duration::from_secs(1));
    let mut b = spawn(dir.path(), &p, "b2.log");
    wait_for(550_000, &mut [&mut a, &mut b, &mut c]);
    // A fourth joins mid-run.
    let mut d = spawn(dir.path(), &p, "d.log");
    produce(&topic, id, 3 * EVENTS / 4, EVENTS);
    produce_closers(&topic, id);
    wait_for(
        EVENTS as i64 + PARTITIONS as i64,
        &mut [&mut a, &mut b, &mut c, &mut d],
    );
    // The aggregates catch up with the raw table.
    let checks = expected(&prefix);
    let deadline = Instant::now() + Duration::from_secs(180);
    while !checks
        .iter()
        .all(|(_, e, t)| s3_has(&format!("{prefix}/sessions")) && same_rows(e, t))
    {
        assert!(
            Instant::now() < deadline,
            "the aggregates did not catch up:\n{}",
            logs(dir.path())
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    for c in [&mut a, &mut b, &mut c, &mut d] {
        Command::new("kill").arg(c.0.id().to_string()).status().unwrap();
    }
    for c in [&mut a, &mut b, &mut c, &mut d] {
        assert!(c.0.wait().unwrap().success(), "{}", logs(dir.path()));
    }
    let all = logs(dir.path());
    assert!(
        all.contains("partitions claimed"),
        "no partition changed hands:\n{all}"
    );
    for (what, e, t) in &checks {
        assert_same_rows(what, e, t);
    }
    // No window twice: one row per (window, key) in the appended tables.
    for (table, cols) in [
        ("per_minute", "window_start, _key"),
        ("sessions", "window_start, _key"),
    ] {
        let dup = duck_i64(&format!(
            "SELECT count(*) - count(DISTINCT ({cols})) FROM {}",
            scan(&format!("{prefix}/{table}"))
        ));
        assert_eq!(dup, 0, "{table} holds a window twice");
    }

    // One process over the same topic: the same rows, window for window.
    let single = format!("s3://tributary/{}", unique("scale-out-one"));
    let one = pipeline(dir.path(), "single", &topic, &unique("group"), &single, false);
    let out = Command::new(bin())
        .args(["run", one.to_str().unwrap(), "--once"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for (name, cols) in [
        ("per_minute", "window_start, window_end, _key, n, pages"),
        ("sessions", "window_start, window_end, _key, n"),
        ("totals", "_key, n, pages"),
    ] {
        assert_same_rows(
            &format!("{name}: a group against one process"),
            &format!("SELECT {cols} FROM {}", scan(&format!("{single}/{name}"))),
            &format!("SELECT {cols} FROM {}", scan(&format!("{prefix}/{name}"))),
        );
    }
}

/// Whether the table at `uri` exists yet.
fn s3_has(uri: &str) -> bool {
    duck(&format!(
        "SELECT count(*) FROM glob('{}/_delta_log/*.json')",
        uri.trim_end_matches('/')
    ))[0][0]
        .as_i64()
        .unwrap_or(0)
        > 0
}

#[test]
fn an_aggregate_that_several_processes_would_split_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_file(
        dir.path(),
        "split.toml",
        "name = \"split\"\n\n[source]\nkind = \"kafka\"\nbrokers = \"127.0.0.1:9092\"\ntopics = [\"clicks\"]\n\
         group_id = \"g\"\nformat = \"avro\"\nschema_registry = \"http://127.0.0.1:1\"\nkey_format = \"string\"\n\
         scale_out = true\n\n[sink]\nuri = \"lake\"\n\n[[aggregates]]\nname = \"per_page\"\nfrom = \"clicks\"\n\
         event_time = \"event_timestamp\"\nwindow = { kind = \"tumbling\", size = \"1m\" }\nwatermark = \"0s\"\n\
         group_by = [\"page\"]\nmeasures = { n = \"count(*)\" }\n",
    );
    let out = Command::new(bin())
        .args(["validate", p.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "validate accepted it: {err}");
    for part in [
        "aggregates[0].group_by",
        "source.scale_out",
        "[\"page\"] does not hold every column of the message key [\"_key\"]",
        "partitioned_by_key = true",
    ] {
        assert!(err.contains(part), "{part:?} not in: {err}");
    }
    // Declared co-partitioned (the producer keys by page): accepted.
    let text = std::fs::read_to_string(&p).unwrap().replace(
        "group_by = [\"page\"]",
        "group_by = [\"page\"]\npartitioned_by_key = true",
    );
    std::fs::write(&p, text).unwrap();
    let out = Command::new(bin())
        .args(["validate", p.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_quiet_input_is_acknowledged_to_its_end() {
    // Windows that never close (a minute of event time, no later events) and nothing
    // to emit: the aggregates still commit what they folded once the input is quiet,
    // so the group's committed offsets (what lag tools read) reach the end.
    let (topic, id) = clicks_topic_of("quiet", PARTITIONS);
    produce(&topic, id, 0, 3000);
    let dir = tempfile::tempdir().unwrap();
    let group = unique("group");
    let prefix = dir.path().join("lake");
    let p = pipeline(
        dir.path(),
        "quiet",
        &topic,
        &group,
        prefix.to_str().unwrap(),
        true,
    );
    let mut run = spawn(dir.path(), &p, "run.log");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let offsets = committed_offsets(&group, &topic, PARTITIONS);
        if offsets.iter().sum::<i64>() == 3000 {
            break;
        }
        assert!(
            run.0.try_wait().unwrap().is_none() && Instant::now() < deadline,
            "committed offsets {offsets:?} never reached the end:\n{}",
            logs(dir.path())
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Nothing was emitted: the windows are still open.
    assert_eq!(
        duck_i64(&format!(
            "SELECT count(*) FROM {}",
            scan(prefix.join("per_minute").to_str().unwrap())
        )),
        0
    );
}
