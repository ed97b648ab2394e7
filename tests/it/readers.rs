//! The reader matrix: every kind of table Tributary writes (append, changelog, mirror
//! with deletion vectors and copy-on-write, aggregates emitting final and update, dead
//! letters, late events) read by DuckDB's delta extension, Python deltalake (its
//! QueryBuilder and its pyarrow dataset), Polars and the Spark DataFrame API through
//! Sail (`tests/readers.py`).
//!
//! DuckDB's rows are checked against the truth (Postgres's table, the records
//! produced); every other reader is compared with DuckDB. Which reader reads which
//! table is not assumed: the README's reader table must be what this test sees
//! (`TRIBUTARY_WRITE_READER_TABLE=1` rewrites it).

use std::collections::BTreeMap;
use std::path::Path;

use crate::kafka::{clicks_source, clicks_with_a_bad_record_each, produce_clicks};
use crate::kafka_support::*;
use crate::pg::Db;
use crate::support::*;

/// The table kinds, in the README's order: (kind, table name in the lake).
const KINDS: &[(&str, &str)] = &[
    ("append", "clicks"),
    ("changelog", "items_log"),
    ("mirror, deletion vectors (default)", "items_dv"),
    ("mirror, `merge = \"copy_on_write\"`", "items_cow"),
    ("aggregate, `emit = \"final\"`", "views"),
    ("aggregate, `emit = \"update\"`", "views_update"),
    ("dead letters", "dead_letters"),
    ("late events", "views_late_events"),
];

const READERS: &[(&str, &str)] = &[
    ("duckdb", "DuckDB delta extension 1.5.5"),
    ("deltalake", "Python `deltalake` 1.6.6, `QueryBuilder`"),
    (
        "deltalake-pyarrow",
        "Python `deltalake` 1.6.6, `to_pyarrow_table`",
    ),
    ("polars", "Polars 2.1 `read_delta`"),
    ("sail", "Spark DataFrame API (pyspark-client 4.2 on Sail 0.7)"),
];

/// Postgres → changelog and both kinds of mirror; checks the mirrors against Postgres.
fn postgres_tables(lake: &Path) {
    let mut db = Db::create("readers");
    db.sql(
        "CREATE TABLE items (id bigint PRIMARY KEY, note text, qty bigint, at timestamptz); \
         INSERT INTO items SELECT g, 'note ' || g, g * 3, timestamptz '2026-01-01 00:00:00+00' + g * interval '1 minute' \
         FROM generate_series(1, 2000) g;",
    );
    let slot = db.slot();
    let dir = lake.parent().unwrap();
    let tables = "[[tables]]\nname = \"items_log\"\nfrom = \"public.items\"\nmode = \"changelog\"\n\n\
                  [[tables]]\nname = \"items_dv\"\nfrom = \"public.items\"\nmode = \"mirror\"\nkey = [\"id\"]\n\n\
                  [[tables]]\nname = \"items_cow\"\nfrom = \"public.items\"\nmode = \"mirror\"\nkey = [\"id\"]\nmerge = \"copy_on_write\"\n";
    let pipeline = crate::pg::pipeline(dir, &db, &slot, &["public.items"], tables);
    run_once(dir, &pipeline);
    // Changes after the snapshot: updates, deletes, inserts, in several transactions.
    db.sql(
        "UPDATE items SET qty = qty + 1, note = 'changed' WHERE id % 7 = 0; \
         DELETE FROM items WHERE id % 11 = 0; \
         INSERT INTO items SELECT g, NULL, g, NULL FROM generate_series(3001, 3100) g; \
         UPDATE items SET at = at + interval '1 day' WHERE id BETWEEN 100 AND 150;",
    );
    run_once(dir, &pipeline);
    let truth = {
        let mut v = db.sql(
            "SELECT id || '|' || coalesce(note, '') || '|' || qty || '|' || \
             coalesce((extract(epoch FROM at) * 1000000)::bigint::text, '') FROM items",
        );
        v.sort();
        v
    };
    for t in ["items_dv", "items_cow"] {
        let path = lake.join(t);
        let rows = duck(&format!(
            "SELECT id || '|' || coalesce(note, '') || '|' || qty || '|' || coalesce(epoch_us(\"at\")::VARCHAR, '') FROM {}",
            scan(path.to_str().unwrap())
        ));
        let mut got: Vec<String> = rows.iter().map(|r| r[0].as_str().unwrap().to_string()).collect();
        got.sort();
        assert_eq!(got.len(), truth.len(), "{t}: row count");
        assert!(got == truth, "{t} differs from Postgres");
    }
    // The deletion-vector mirror really has deletion vectors for readers to apply.
    let (protocol, dv_adds) = local_dv_usage(&lake.join("items_dv"));
    assert_eq!(protocol, Some((3, 7)));
    assert!(dv_adds > 0, "no deletion vector in items_dv");
    assert_eq!(local_dv_usage(&lake.join("items_cow")).1, 0);
    let changes = duck_i64(&format!(
        "SELECT count(*) FROM {}",
        scan(lake.join("items_log").to_str().unwrap())
    ));
    // 2000 snapshot rows, 285 updates, 181 deletes, 100 inserts, then 51 updates of
    // which 4 find their row deleted (110, 121, 132, 143).
    assert_eq!(changes, 2000 + 285 + 181 + 100 + 47);
}

/// Kafka → append, aggregates (final with late events set aside, update), dead letters.
fn kafka_tables(lake: &Path) {
    let (topic, id) = clicks_with_a_bad_record_each("readers", 3000);
    let dir = lake.parent().unwrap();
    let aggregate = |name: &str, extra: &str| {
        format!(
            "[[aggregates]]\nname = \"{name}\"\nfrom = \"{topic}\"\nevent_time = \"event_timestamp\"\n\
             window = {{ kind = \"tumbling\", size = \"1s\" }}\nwatermark = \"1s\"\ngroup_by = [\"page\"]\n\
             measures = {{ n = \"count(*)\", users = \"count_distinct(user_id)\" }}\n{extra}\n"
        )
    };
    let tables = format!(
        "[dead_letters]\n\n[[tables]]\nname = \"clicks\"\nfrom = \"{topic}\"\n\n{}{}",
        aggregate("views", "late = \"dlq\""),
        aggregate("views_update", "emit = \"update\"")
    );
    let pipeline = kafka_pipeline(dir, "readers", &clicks_source(&topic, &topic), "./lake", &tables);
    run_once(dir, &pipeline);
    // The first ten events again, after the watermark passed them: late.
    produce_clicks(&topic, id, 3, 0, 10);
    run_once(dir, &pipeline);
    let count = |t: &str| {
        duck_i64(&format!(
            "SELECT count(*) FROM {}",
            scan(lake.join(t).to_str().unwrap())
        ))
    };
    assert_eq!(count("clicks"), 3010);
    assert_eq!(count("dead_letters"), 3);
    assert_eq!(count("views_late_events"), 10);
    let scan_of = |t: &str| scan(lake.join(t).to_str().unwrap());
    let sum = |t: &str| duck_i64(&format!("SELECT coalesce(sum(n), 0)::BIGINT FROM {}", scan_of(t)));
    // Final windows hold every on-time event of the windows the watermark closed;
    // update windows every on-time event so far; neither counts the late ones.
    let closed = duck_i64(&format!(
        "SELECT count(*) FROM (SELECT DISTINCT event_id, event_timestamp FROM {}) \
         WHERE event_timestamp < (SELECT max(window_end) FROM {})",
        scan_of("clicks"),
        scan_of("views")
    ));
    assert!(closed >= 1000, "a window closed");
    assert_eq!(sum("views"), closed);
    assert_eq!(sum("views_update"), 3000);
}

/// What one reader did with one table.
#[derive(Debug, PartialEq)]
enum Outcome {
    Reads,
    WrongRows(String),
    Refuses(String),
}

fn cell(o: &Outcome) -> &'static str {
    match o {
        Outcome::Reads => "reads",
        Outcome::WrongRows(_) => "**wrong rows**",
        Outcome::Refuses(_) => "refuses",
    }
}

fn markdown(matrix: &BTreeMap<(usize, usize), Outcome>) -> String {
    let mut out = String::from("| table | ");
    out += &READERS
        .iter()
        .map(|(_, label)| *label)
        .collect::<Vec<_>>()
        .join(" | ");
    out += " |\n|---|";
    out += &"---|".repeat(READERS.len());
    out.push('\n');
    for (k, (kind, _)) in KINDS.iter().enumerate() {
        out += &format!("| {kind} |");
        for r in 0..READERS.len() {
            out += &format!(" {} |", cell(&matrix[&(k, r)]));
        }
        out.push('\n');
    }
    out
}

const START: &str = "<!-- reader-matrix: written by tests/it/readers.rs -->\n";
const END: &str = "<!-- reader-matrix end -->";

#[test]
fn every_table_kind_read_by_every_reader_matches_the_readme() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    postgres_tables(&lake);
    kafka_tables(&lake);

    let tables: BTreeMap<&str, String> = KINDS
        .iter()
        .map(|(_, t)| (*t, lake.join(t).to_str().unwrap().to_string()))
        .collect();
    let spec = serde_json::json!({ "tables": tables }).to_string();
    let got: serde_json::Value = python_json("readers.py", "readers.py", &[], &spec);

    let mut matrix = BTreeMap::new();
    let mut report = String::new();
    for (k, (kind, table)) in KINDS.iter().enumerate() {
        let truth = &got[table]["duckdb"];
        let truth_rows = truth["rows"]
            .as_array()
            .unwrap_or_else(|| panic!("DuckDB cannot read {table}: {truth}"));
        assert!(!truth_rows.is_empty(), "{table} is empty");
        for (r, (reader, _)) in READERS.iter().enumerate() {
            let answer = &got[table][reader];
            let outcome = match answer["rows"].as_array() {
                Some(rows) if rows == truth_rows => Outcome::Reads,
                Some(rows) => Outcome::WrongRows(format!("{} rows, DuckDB {}", rows.len(), truth_rows.len())),
                None => Outcome::Refuses(answer["error"].as_str().unwrap_or("?").to_string()),
            };
            report += &format!("{kind} / {reader}: {outcome:?}\n");
            matrix.insert((k, r), outcome);
        }
    }
    eprintln!("{report}");
    // The readers the README calls supported read every table.
    for (k, (kind, _)) in KINDS.iter().enumerate() {
        for r in [0, 1] {
            assert_eq!(matrix[&(k, r)], Outcome::Reads, "{kind} / {}", READERS[r].0);
        }
    }

    let table = markdown(&matrix);
    let readme_path = repo().join("README.md");
    let readme = std::fs::read_to_string(&readme_path).unwrap();
    let start = readme.find(START).expect("README has the reader-matrix marker") + START.len();
    let end = start
        + readme[start..]
            .find(END)
            .expect("README has the reader-matrix end marker");
    if std::env::var_os("TRIBUTARY_WRITE_READER_TABLE").is_some() {
        std::fs::write(
            &readme_path,
            format!("{}{table}{}", &readme[..start], &readme[end..]),
        )
        .unwrap();
    } else {
        assert_eq!(
            &readme[start..end],
            table,
            "README's reader table is not what the readers did (TRIBUTARY_WRITE_READER_TABLE=1 rewrites it):\n{report}"
        );
    }
}
