//! The file (replay) source: JSON-lines and Avro container folders, read once each.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::json;

use crate::support::*;

fn jsonl(first: u64, n: u64) -> String {
    let mut s = String::new();
    for i in first..first + n {
        // Two events a second from 2026-01-01T00:00:00Z, slightly shuffled in pairs.
        let secs = i / 2 + if i % 4 == 1 { 1 } else { 0 };
        let ts = format!(
            "2026-01-01T{:02}:{:02}:{:02}Z",
            secs / 3600,
            secs / 60 % 60,
            secs % 60
        );
        let amount = if i % 10 == 0 {
            "null".to_string()
        } else {
            i.to_string()
        };
        writeln!(
            s,
            r#"{{"event_id":"e{i}","page":"/p{}","amount":{amount},"event_timestamp":"{ts}"}}"#,
            i % 7
        )
        .unwrap();
    }
    s
}

fn pipeline(dir: &Path, format: &str, window: &str) -> std::path::PathBuf {
    write_file(
        dir,
        "files.toml",
        &format!(
            r#"
name = "files"
[source]
kind = "file"
path = "./in"
format = "{format}"
stream = "orders"
[sink]
uri = "./lake"
[batch]
max_rows = 700
[[tables]]
name = "orders_raw"
from = "orders"
[[aggregates]]
name = "orders_per_page"
from = "orders"
event_time = "event_timestamp"
window = {{ kind = "tumbling", size = "{window}" }}
watermark = "10s"
group_by = ["page"]
measures = {{ orders = "count(*)", with_amount = "count(amount)" }}
"#
        ),
    )
}

#[test]
fn jsonl_folder_is_read_once_and_new_files_are_picked_up() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    for f in 0..3u64 {
        write_file(&input, &format!("part-{f:04}.jsonl"), &jsonl(f * 1000, 1000));
    }
    write_file(&input, ".part-0009.jsonl.tmp", &jsonl(0, 5)); // hidden: not read
    let p = pipeline(dir.path(), "jsonl", "1m");
    run_once(dir.path(), &p);
    let raw = dir.path().join("lake/orders_raw");
    let raw = raw.to_str().unwrap();
    let counts = |sql: &str| duck(&sql.replace("RAW", &scan(raw)))[0].clone();
    let r = counts("SELECT count(*), count(DISTINCT event_id), sum(amount), count(amount) FROM RAW");
    let sum: u64 = (0..3000u64).filter(|i| i % 10 != 0).sum();
    assert_eq!(r, vec![json!(3000), json!(3000), json!(sum), json!(2700)]);

    // Nothing new: nothing committed. Then a new file (later events): only it is added.
    let v = local_version(&dir.path().join("lake/orders_raw"));
    run_once(dir.path(), &p);
    assert_eq!(local_version(&dir.path().join("lake/orders_raw")), v);
    write_file(&input, "part-0003.jsonl", &jsonl(4000, 500));
    run_once(dir.path(), &p);
    let r = counts("SELECT count(*), count(DISTINCT event_id) FROM RAW");
    assert_eq!(r, vec![json!(3500), json!(3500)]);

    // The aggregate equals DuckDB's own per-minute count over the raw rows.
    let agg = dir.path().join("lake/orders_per_page");
    let rows = duck(&format!(
        "WITH e AS (SELECT (epoch_us(CAST(event_timestamp AS TIMESTAMPTZ)) // 60000000) * 60000000 AS ws, \
                           page, count(*) AS n, count(amount) AS a FROM {} GROUP BY ALL), \
              t AS (SELECT epoch_us(window_start) AS ws, page, orders AS n, with_amount AS a FROM {}) \
         SELECT (SELECT count(*) FROM e), (SELECT count(*) FROM t), \
                (SELECT count(*) FROM (SELECT * FROM e EXCEPT SELECT * FROM t)), \
                (SELECT count(*) FROM (SELECT * FROM t EXCEPT SELECT * FROM e))",
        scan(raw),
        scan(agg.to_str().unwrap())
    ));
    assert_eq!(rows[0][0], rows[0][1], "{rows:?}");
    assert_eq!(&rows[0][2..], &[json!(0), json!(0)], "{rows:?}");
}

#[test]
fn avro_container_files_written_by_another_library_are_ingested() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    // fastavro (an independent Avro implementation) writes the files.
    let script = r#"
import sys, json, uuid, fastavro
schema = fastavro.parse_schema(json.load(open(sys.argv[1])))
base = 1767225600000000
for f in range(2):
    recs = [{"event_id": str(uuid.UUID(int=f * 100000 + i)), "user_id": f"user-{i % 50}", "page": f"/p{i % 5}",
             "action": "view", "session_id": f"s{i % 9}", "device": "mobile", "country": "DE",
             "event_timestamp": base + (f * 4000 + i) * 250000} for i in range(4000)]
    with open(f"{sys.argv[2]}/part-{f}.avro", "wb") as out:
        fastavro.writer(out, schema, recs, codec="deflate")
"#;
    let status = std::process::Command::new(stack_env("TRIBUTARY_PYTHON"))
        .args([
            "-c",
            script,
            repo().join("schemas/clickstream.avsc").to_str().unwrap(),
            input.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let p = write_file(
        dir.path(),
        "avro.toml",
        r#"
name = "avro"
[source]
kind = "file"
path = "./in"
[sink]
uri = "./lake"
[[tables]]
name = "clicks"
from = "in"
[[aggregates]]
name = "clicks_1m"
from = "in"
event_time = "event_timestamp"
window = { kind = "tumbling", size = "1m" }
watermark = "0s"
group_by = ["page"]
measures = { view_count = "count(*)" }
"#,
    );
    run_once(dir.path(), &p);
    let raw = dir.path().join("lake/clicks");
    let r = &duck(&format!(
        "SELECT count(*), count(DISTINCT event_id), epoch_us(min(event_timestamp)), count(DISTINCT page) FROM {}",
        scan(raw.to_str().unwrap())
    ))[0];
    assert_eq!(r[0], 8000);
    assert_eq!(r[1], 8000);
    assert_eq!(r[2], 1_767_225_600_000_000_i64);
    assert_eq!(r[3], 5);
    assert_page_views_match_raw(
        raw.to_str().unwrap(),
        dir.path().join("lake/clicks_1m").to_str().unwrap(),
    );
}
