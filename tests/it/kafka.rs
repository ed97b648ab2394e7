//! Kafka → Delta: a million clickstream events over three partitions on S3 with
//! SIGKILLs, two consumers in one group, malformed records mixed in, and a Debezium
//! topic mirrored. The truth is what the test produced; DuckDB reads the tables.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use apache_avro::Schema;
use apache_avro::types::Value;

use crate::kafka_support::*;
use crate::support::*;

pub(crate) fn clickstream() -> (String, Schema) {
    let text = std::fs::read_to_string(repo().join("schemas/clickstream.avsc")).unwrap();
    let schema = Schema::parse_str(&text).unwrap();
    (text, schema)
}

/// Event `i` of the clickstream: the event id is derived from `i`, so that it can be
/// checked for uniqueness.
pub(crate) fn click(i: u64) -> Value {
    Value::Record(vec![
        (
            "event_id".into(),
            Value::Uuid(uuid::Uuid::from_u64_pair(0x7472_6962, i)),
        ),
        ("user_id".into(), Value::String(format!("u{}", i % 5000))),
        ("page".into(), Value::String(format!("/p/{}", i % 100))),
        ("action".into(), Value::String("view".into())),
        ("session_id".into(), Value::String(format!("s{}", i % 20_000))),
        ("device".into(), Value::String("mobile".into())),
        ("country".into(), Value::String("NL".into())),
        (
            "event_timestamp".into(),
            Value::TimestampMicros(1_767_225_600_000_000 + i as i64 * 1000),
        ),
    ])
}

/// Produces events `from..to` round-robin over `partitions`; returns per-partition counts.
pub(crate) fn produce_clicks(
    topic: &str,
    id: u32,
    partitions: i32,
    from: u64,
    to: u64,
) -> BTreeMap<i32, i64> {
    let (_, schema) = clickstream();
    let p = Produce::new();
    let mut counts = BTreeMap::new();
    for i in from..to {
        let part = (i % partitions as u64) as i32;
        p.send(topic, part, None, Some(&frame(id, &schema, click(i))));
        *counts.entry(part).or_insert(0) += 1;
    }
    p.flush();
    counts
}

/// A new 3-partition topic of clicks `0..n` and, after them, one record per partition
/// that no decoder accepts (a dead letter); returns the topic and the schema id.
pub(crate) fn clicks_with_a_bad_record_each(prefix: &str, n: u64) -> (String, u32) {
    let (topic, id) = clicks_topic(prefix);
    produce_clicks(&topic, id, 3, 0, n);
    let p = Produce::new();
    for part in 0..3 {
        p.send(&topic, part, None, Some(b"not avro"));
    }
    p.flush();
    (topic, id)
}

/// A new 3-partition topic named after `prefix`, with the clickstream schema registered
/// under `{topic}-value`; returns the topic and the schema id.
pub(crate) fn clicks_topic(prefix: &str) -> (String, u32) {
    clicks_topic_of(prefix, 3)
}

/// [`clicks_topic`] with `partitions` partitions.
pub(crate) fn clicks_topic_of(prefix: &str, partitions: i32) -> (String, u32) {
    let topic = unique(prefix);
    create_topic(&topic, partitions);
    let (text, _) = clickstream();
    let id = register(
        &stack_env("SCHEMA_REGISTRY_URL"),
        &format!("{topic}-value"),
        &text,
    );
    (topic, id)
}

pub(crate) fn clicks_source(topic: &str, group: &str) -> String {
    format!(
        "topics = [\"{topic}\"]\ngroup_id = \"{group}\"\nformat = \"avro\"\nschema_registry = \"{}\"\n\
         reader_schemas = {{ \"{topic}\" = \"{}\" }}",
        stack_env("SCHEMA_REGISTRY_URL"),
        repo().join("schemas/clickstream.avsc").display()
    )
}

pub(crate) fn spawn_run(dir: &Path, pipeline: &Path, log: &str) -> Child {
    Command::new(bin())
        .args(["run", pipeline.to_str().unwrap()])
        .current_dir(dir)
        .env("TRIBUTARY_LOG", "info,tributary::runtime=debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(log)).unwrap())
        .spawn()
        .unwrap()
}

fn spawn_run_once(dir: &Path, pipeline: &Path, log: &str) -> Child {
    Command::new(bin())
        .args(["run", pipeline.to_str().unwrap(), "--once"])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(log)).unwrap())
        .spawn()
        .unwrap()
}

/// Waits until the run `child`, logging to `log` at debug level for the runtime, has
/// committed `commits` micro-batches (within 120 s, and without exiting).
pub(crate) fn wait_for_commits(log: &Path, child: &mut Child, commits: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.matches("micro-batch committed").count() >= commits {
            return;
        }
        assert!(child.try_wait().unwrap().is_none(), "the run exited:\n{text}");
        assert!(
            Instant::now() < deadline,
            "{commits} commits not reached in 120 s:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Checks the table holds exactly `counts` records per partition, offsets 0..n each.
pub(crate) fn assert_exact(table: &str, counts: &BTreeMap<i32, i64>) {
    let total: i64 = counts.values().sum();
    let per = duck(&format!(
        "SELECT _partition, count(*), min(_offset), max(_offset), count(DISTINCT _offset) FROM {} GROUP BY 1 ORDER BY 1",
        scan(table)
    ));
    let got: BTreeMap<i32, (i64, i64, i64, i64)> = per
        .iter()
        .map(|r| {
            let n = |i: usize| r[i].as_i64().unwrap();
            (n(0) as i32, (n(1), n(2), n(3), n(4)))
        })
        .collect();
    let want: BTreeMap<i32, (i64, i64, i64, i64)> =
        counts.iter().map(|(p, n)| (*p, (*n, 0, n - 1, *n))).collect();
    if got != want {
        let gaps = duck(&format!(
            "SELECT _partition, _offset, prev FROM (SELECT _partition, _offset, lag(_offset) OVER (PARTITION BY _partition ORDER BY _offset) AS prev FROM {}) WHERE _offset <> prev + 1 LIMIT 20",
            scan(table)
        ));
        panic!(
            "per partition (count, first offset, last offset, distinct offsets):\n got {got:?}\nwant {want:?}\ngaps (partition, offset, previous): {gaps:?}"
        );
    }
    let row = &duck(&format!(
        "SELECT count(*), count(DISTINCT event_id), min(typeof(event_id)), count(*) FILTER (WHERE event_id LIKE '00000000-7472-6962-%') FROM {}",
        scan(table)
    ))[0];
    assert_eq!(row[0], total, "rows");
    assert_eq!(row[1], total, "distinct event ids");
    assert_eq!(row[2], "VARCHAR", "an Avro uuid is stored as its text");
    assert_eq!(row[3], total, "uuids keep their value");
}

pub(crate) fn s3_count(table: &str) -> i64 {
    duck_i64(&format!("SELECT count(*) FROM {}", scan(table)))
}

#[test]
fn a_million_events_over_three_partitions_survive_sigkills() {
    let (topic, id) = clicks_topic("clicks");
    let counts = produce_clicks(&topic, id, 3, 0, 1_000_000);

    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("s3://tributary/{}", unique("kafka-million"));
    // Static membership: a restarted process takes over its killed predecessor's place
    // in the group at once, instead of the group waiting for that member to time out.
    let source = format!(
        "{}\n[source.options]\n\"group.instance.id\" = \"{topic}-1\"",
        clicks_source(&topic, &topic)
    );
    let pipeline = kafka_pipeline(
        dir.path(),
        "million",
        &source,
        &prefix,
        &format!(
            "[batch]\nmax_rows = 50000\n\n[[tables]]\nname = \"clicks\"\nfrom = \"{topic}\"\n\n\
             [[aggregates]]\nname = \"per_minute\"\nfrom = \"{topic}\"\nevent_time = \"event_timestamp\"\n\
             window = {{ kind = \"tumbling\", size = \"1m\" }}\nwatermark = \"0s\"\ngroup_by = [\"page\"]\n\
             measures = {{ n = \"count(*)\", users = \"count_distinct(user_id)\" }}"
        ),
    );
    // Continuous runs killed at different moments (after their k-th commit, plus a
    // little), then a --once run to the end.
    for (i, (commits, ms)) in [(1usize, 30u64), (2, 170), (3, 90)].into_iter().enumerate() {
        let log = format!("run{i}.log");
        let mut child = spawn_run(dir.path(), &pipeline, &log);
        wait_for_commits(&dir.path().join(&log), &mut child, commits);
        std::thread::sleep(Duration::from_millis(ms));
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let table = format!("{prefix}/clicks");
    let partial = s3_count(&table);
    assert!(partial > 0, "the killed runs committed something");
    // The group first waits for the killed members (max.poll.interval.ms, 20 s).
    let mut last = spawn_run_once(dir.path(), &pipeline, "last.log");
    let deadline = Instant::now() + Duration::from_secs(240);
    while last.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            last.kill().unwrap();
            panic!(
                "--once did not finish:\n{}",
                std::fs::read_to_string(dir.path().join("last.log")).unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(last.wait().unwrap().success());
    assert_exact(&table, &counts);
    // The windows every partition has passed (the watermark is their minimum) are
    // exactly DuckDB's over the raw rows, although partitions were read at different
    // speeds and the runs were killed between state snapshots and commits.
    let closed = "epoch_us(window_end) <= 960000000 + 1767225600000000";
    assert_same_rows(
        "per-minute windows over Kafka",
        &format!(
            "SELECT * FROM (SELECT epoch_us(event_timestamp) // 60000000 * 60000000 AS ws, page, count(*), \
                    count(DISTINCT user_id) FROM {} GROUP BY ALL) WHERE ws + 60000000 <= 960000000 + 1767225600000000",
            scan(&table)
        ),
        &format!(
            "SELECT epoch_us(window_start), page, n, users FROM {} WHERE {closed}",
            scan(&format!("{prefix}/per_minute"))
        ),
    );
}

#[test]
fn two_consumers_in_one_group_share_the_partitions_exactly() {
    let (topic, id) = clicks_topic("shared");
    let mut counts = produce_clicks(&topic, id, 3, 0, 150_000);

    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("s3://tributary/{}", unique("kafka-group"));
    let pipeline = kafka_pipeline(
        dir.path(),
        "shared",
        &clicks_source(&topic, &topic),
        &prefix,
        &format!(
            "[batch]\nmax_rows = 20000\nmax_latency = \"500ms\"\n\n[[tables]]\nname = \"clicks\"\nfrom = \"{topic}\""
        ),
    );
    // `a` commits slowly (an object store under load): when `b` joins, `a` holds more
    // than it can commit before the revocation lets its partitions go, so both hold
    // records of one partition for a while and the tables settle who wrote what.
    let mut a = Command::new(bin())
        .args(["run", pipeline.to_str().unwrap()])
        .current_dir(dir.path())
        .env("TRIBUTARY_LOG", "info,tributary::runtime=debug")
        .env("TRIBUTARY_FAILPOINT", "delay_commit:1500")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("a.log")).unwrap())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let mut b = spawn_run(dir.path(), &pipeline, "b.log");
    std::thread::sleep(Duration::from_secs(4));
    for (p, n) in produce_clicks(&topic, id, 3, 150_000, 300_000) {
        *counts.entry(p).or_default() += n;
    }
    let table = format!("{prefix}/clicks");
    let deadline = Instant::now() + Duration::from_secs(180);
    while s3_count(&table) < 300_000 {
        if Instant::now() > deadline {
            let per = duck(&format!(
                "SELECT _partition, count(*), max(_offset) FROM {} GROUP BY 1 ORDER BY 1",
                scan(&table)
            ));
            let _ = (a.kill(), b.kill());
            let log = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap_or_default();
            panic!(
                "the two consumers did not catch up: (partition, rows, last offset) {per:?}\n\
                 a.log:\n{}\nb.log:\n{}",
                log("a.log"),
                log("b.log")
            );
        }
        assert!(
            a.try_wait().unwrap().is_none() && b.try_wait().unwrap().is_none(),
            "a consumer died"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    for c in [&mut a, &mut b] {
        // SIGTERM: finish the batch, commit, leave the group.
        Command::new("kill").arg(c.id().to_string()).status().unwrap();
    }
    assert!(a.wait().unwrap().success() && b.wait().unwrap().success());
    assert_exact(&table, &counts);
    // Both took part: each was assigned partitions, and each committed some.
    for log in ["a.log", "b.log"] {
        let text = std::fs::read_to_string(dir.path().join(log)).unwrap();
        assert!(text.contains("kafka partitions assigned"), "{log}:\n{text}");
    }
    let writers = duck_i64(&format!(
        "SELECT count(DISTINCT _partition) FROM {} WHERE _offset >= 50000",
        scan(&table)
    ));
    assert_eq!(writers, 3);
}

#[test]
fn malformed_records_go_to_dead_letters_and_the_rest_is_kept() {
    let topic = unique("mixed");
    create_topic(&topic, 2);
    let registry = stack_env("SCHEMA_REGISTRY_URL");
    let (text, schema) = clickstream();
    let id = register(&registry, &format!("{topic}-value"), &text);
    // Registered, but under another subject: not a schema of this topic.
    let stranger = r#"{"type":"record","name":"Other","fields":[{"name":"z","type":"string"}]}"#;
    let foreign = register(&registry, &format!("{topic}-other-value"), stranger);
    let stranger_schema = Schema::parse_str(stranger).unwrap();

    let p = Produce::new();
    let mut good = 0i64;
    let mut bad: BTreeMap<&str, i64> = BTreeMap::new();
    let mut offsets = [0i64; 2];
    let mut bad_offset_sum = 0i64;
    for i in 0..110_000u64 {
        let part = (i % 2) as usize;
        let kind = if i % 11 == 5 { Some((i / 11) % 6) } else { None };
        let payload: Vec<u8> = match kind {
            None => frame(id, &schema, click(i)),
            Some(0) => {
                let mut f = frame(id, &schema, click(i));
                f[0] = 0x7b; // JSON-looking
                f
            }
            Some(1) => vec![0, 0, 0],
            Some(2) => {
                let mut f = frame(id, &schema, click(i));
                f[1..5].copy_from_slice(&999_999u32.to_be_bytes());
                f
            }
            Some(3) => {
                let mut f = frame(id, &schema, click(i));
                f.truncate(f.len() - 3);
                f
            }
            Some(4) => frame(
                foreign,
                &stranger_schema,
                Value::Record(vec![("z".into(), Value::String("?".into()))]),
            ),
            _ => {
                let mut f = frame(id, &schema, click(i));
                f.extend_from_slice(b"junk");
                f
            }
        };
        match kind {
            None => good += 1,
            Some(k) => {
                *bad.entry(
                    ["magic", "short", "unknown id", "truncated", "subject", "trailing"][k as usize],
                )
                .or_default() += 1;
                bad_offset_sum += offsets[part];
            }
        }
        p.send(&topic, part as i32, None, Some(&payload));
        offsets[part] += 1;
    }
    p.flush();
    assert_eq!(bad.values().sum::<i64>(), 10_000);

    let dir = tempfile::tempdir().unwrap();
    let pipeline = kafka_pipeline(
        dir.path(),
        "mixed",
        &clicks_source(&topic, &topic),
        "./lake",
        &format!("[dead_letters]\n\n[[tables]]\nname = \"clicks\"\nfrom = \"{topic}\""),
    );
    run_once(dir.path(), &pipeline);
    // After the Delta commits the offsets are committed to Kafka too, for lag tools.
    assert_eq!(committed_offsets(&topic, &topic, 2), offsets.to_vec());
    let lake = dir.path().join("lake");
    let clicks = lake.join("clicks");
    let dead = lake.join("dead_letters");
    assert_eq!(s3_count(clicks.to_str().unwrap()), good);
    let rows = duck(&format!(
        "SELECT CASE WHEN message LIKE '%magic byte%' THEN 'magic' \
                     WHEN message LIKE '%shorter than the 5-byte%' THEN 'short' \
                     WHEN message LIKE '%not in the registry%' THEN 'unknown id' \
                     WHEN message LIKE '%ends early%' THEN 'truncated' \
                     WHEN message LIKE '%not registered under subject%' THEN 'subject' \
                     WHEN message LIKE '%bytes left after the record%' THEN 'trailing' ELSE message END, \
                count(*), sum(position) \
         FROM {} GROUP BY 1 ORDER BY 1",
        scan(dead.to_str().unwrap())
    ));
    let got: BTreeMap<String, i64> = rows
        .iter()
        .map(|r| (r[0].as_str().unwrap().to_string(), r[1].as_i64().unwrap()))
        .collect();
    let want: BTreeMap<String, i64> = bad.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    assert_eq!(got, want, "dead letters by reason");
    let positions: i64 = rows.iter().map(|r| r[2].as_f64().unwrap() as i64).sum();
    assert_eq!(positions, bad_offset_sum, "dead letters carry their offsets");
    assert_eq!(
        duck_i64(&format!(
            "SELECT count(*) FROM {} WHERE payload IS NULL",
            scan(dead.to_str().unwrap())
        )),
        0,
        "dead letters keep the raw bytes"
    );
}

const CUSTOMER: &str = r#"{"type":"record","name":"Value","namespace":"shop.public.customers","fields":[
    {"name":"id","type":"int"},{"name":"name","type":"string"},{"name":"balance","type":"long"}]}"#;

fn envelope_schema() -> String {
    format!(
        r#"{{"type":"record","name":"Envelope","namespace":"shop.public.customers","fields":[
        {{"name":"before","type":["null",{CUSTOMER}],"default":null}},
        {{"name":"after","type":["null","Value"],"default":null}},
        {{"name":"source","type":{{"type":"record","name":"Source","namespace":"io.debezium.connector.postgresql","fields":[
            {{"name":"db","type":"string"}},{{"name":"table","type":"string"}},
            {{"name":"lsn","type":["null","long"],"default":null}},{{"name":"ts_ms","type":"long"}}]}}}},
        {{"name":"op","type":"string"}},
        {{"name":"ts_ms","type":["null","long"],"default":null}}]}}"#
    )
}

#[test]
fn a_debezium_topic_mirrors_its_table() {
    let topic = unique("dbz");
    create_topic(&topic, 1);
    let registry = stack_env("SCHEMA_REGISTRY_URL");
    let text = envelope_schema();
    let schema = Schema::parse_str(&text).unwrap();
    let id = register(&registry, &format!("{topic}-value"), &text);
    let row = |id: i32, name: &str, balance: i64| {
        Value::Union(
            1,
            Box::new(Value::Record(vec![
                ("id".into(), Value::Int(id)),
                ("name".into(), Value::String(name.into())),
                ("balance".into(), Value::Long(balance)),
            ])),
        )
    };
    let none = || Value::Union(0, Box::new(Value::Null));
    let event = |op: &str, before: Value, after: Value, lsn: i64| {
        Value::Record(vec![
            ("before".into(), before),
            ("after".into(), after),
            (
                "source".into(),
                Value::Record(vec![
                    ("db".into(), Value::String("shop".into())),
                    ("table".into(), Value::String("customers".into())),
                    ("lsn".into(), Value::Union(1, Box::new(Value::Long(lsn)))),
                    ("ts_ms".into(), Value::Long(1_767_225_600_000 + lsn)),
                ]),
            ),
            ("op".into(), Value::String(op.into())),
            (
                "ts_ms".into(),
                Value::Union(1, Box::new(Value::Long(1_767_225_600_500 + lsn))),
            ),
        ])
    };
    // The truth: a map from id to (name, balance), changed alongside the events.
    let mut truth: BTreeMap<i32, (String, i64)> = BTreeMap::new();
    let p = Produce::new();
    let mut changes = 0i64;
    let mut lsn = 0i64;
    let send = |key: i32, v: Option<Value>| {
        let payload = v.map(|v| frame(id, &schema, v));
        p.send(&topic, 0, Some(&key.to_be_bytes()), payload.as_deref());
    };
    for k in 0..500 {
        lsn += 1;
        send(k, Some(event("r", none(), row(k, &format!("c{k}"), 100), lsn)));
        truth.insert(k, (format!("c{k}"), 100));
        changes += 1;
    }
    for round in 0..6i64 {
        for k in (0..500).filter(|k| (k + round as i32) % 7 == 0) {
            lsn += 1;
            let Some((name, bal)) = truth.get(&k).cloned() else {
                send(k, Some(event("c", none(), row(k, "back", round), lsn)));
                truth.insert(k, ("back".into(), round));
                changes += 1;
                continue;
            };
            if round % 3 == 2 {
                send(k, Some(event("d", row(k, &name, bal), none(), lsn)));
                send(k, None); // tombstone
                truth.remove(&k);
            } else {
                send(
                    k,
                    Some(event("u", row(k, &name, bal), row(k, &name, bal + 10), lsn)),
                );
                truth.insert(k, (name, bal + 10));
            }
            changes += 1;
        }
    }
    p.flush();

    let dir = tempfile::tempdir().unwrap();
    let pipeline = kafka_pipeline(
        dir.path(),
        "dbz",
        &format!(
            "topics = [\"{topic}\"]\ngroup_id = \"{topic}\"\nformat = \"debezium-avro\"\nschema_registry = \"{registry}\""
        ),
        "./lake",
        &format!(
            "[batch]\nmax_rows = 700\n\n[[tables]]\nname = \"customers\"\nfrom = \"{topic}\"\nmode = \"mirror\"\nkey = [\"id\"]\n\n\
             [[tables]]\nname = \"customers_changes\"\nfrom = \"{topic}\"\nmode = \"changelog\""
        ),
    );
    run_once(dir.path(), &pipeline);
    let lake = dir.path().join("lake");
    let mirror = duck(&format!(
        "SELECT id, name, balance FROM {} ORDER BY id",
        scan(lake.join("customers").to_str().unwrap())
    ));
    let got: Vec<(i32, String, i64)> = mirror
        .iter()
        .map(|r| {
            (
                r[0].as_i64().unwrap() as i32,
                r[1].as_str().unwrap().to_string(),
                r[2].as_i64().unwrap(),
            )
        })
        .collect();
    let want: Vec<(i32, String, i64)> = truth.into_iter().map(|(k, (n, b))| (k, n, b)).collect();
    assert_eq!(got.len(), want.len());
    assert_eq!(got, want, "mirror equals the source table");
    let log = &duck(&format!(
        "SELECT count(*), count(*) FILTER (WHERE _op = 'd'), min(_commit_ts)::VARCHAR FROM {}",
        scan(lake.join("customers_changes").to_str().unwrap())
    ))[0];
    assert_eq!(
        log[0], changes,
        "one changelog row per change, tombstones skipped"
    );
    assert!(log[1].as_i64().unwrap() > 0);
    assert_eq!(log[2], "2026-01-01 00:00:00.001+00");
}
