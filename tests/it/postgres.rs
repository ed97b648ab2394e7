//! The Postgres source against the real server: every type round-trips, TOAST values
//! survive updates that do not send them, ALTER TABLE mid-stream, TRUNCATE, an
//! interrupted snapshot taken again without duplicates. Truth is Postgres itself;
//! DuckDB reads the Delta tables.

use std::path::Path;

use crate::pg::{Db, lsn, pipeline, txn_version};
use crate::support::*;

fn lake(dir: &Path, table: &str) -> String {
    scan(dir.join("lake").join(table).to_str().unwrap())
}

/// DuckDB rows as `|`-joined strings, like `Db::sql` gives them.
pub(crate) fn duck_lines(sql: &str) -> Vec<String> {
    duck(sql)
        .into_iter()
        .map(|row| {
            row.iter()
                .map(|v| match v {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Null => String::new(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect()
}

const TYPES_DDL: &str = "
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE every_type (
  id int PRIMARY KEY, c_bool bool, c_i2 int2, c_i8 int8, c_f4 float4, c_f8 float8,
  c_num numeric(12,3), c_num_free numeric, c_text text, c_varchar varchar(20), c_char char(5),
  c_bytea bytea, c_date date, c_time time, c_ts timestamp, c_tstz timestamptz, c_iv interval,
  c_uuid uuid, c_json json, c_jsonb jsonb, c_enum mood, c_ints int4[], c_texts text[]);";

const TYPES_ROWS: &str = "
INSERT INTO every_type VALUES
 ({0}, true, -32768, 9223372036854775807, 1.5, -2.25e-10, 123456789.125, 1e-40, 'héllo\tworld\\n', 'v', 'ab',
  '\\x00ff7f'::bytea, '2024-02-29', '23:59:59.999999', '1999-12-31 23:59:59.5', '2024-06-01 12:00:00+02', '1 year 2 mons 3 days 04:05:06.7',
  'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{\"a\": [1, 2]}', '{\"b\": null, \"a\": 1}', 'happy', '{1,NULL,3}', '{\"x y\",NULL,\"q\\\"uote\"}'),
 ({1}, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 ({2}, false, 0, -1, -0.125, 1e300, -0.001, 12345678901234567890123456789012345678901234567890.5, '', '', '',
  '\\x'::bytea, '0044-03-15 BC', '00:00:00', '1970-01-01 00:00:00', '1900-01-01 00:00:00+00', '-3 days',
  '00000000-0000-0000-0000-000000000000', '[]', '[]', 'sad', '{}', '{}');";

/// Each column as text both sides agree on.
const PG_VIEW: &str = "SELECT concat_ws('|', id, coalesce(c_bool::text,'∅'), coalesce(c_i2::text,'∅'), coalesce(c_i8::text,'∅'),
  coalesce(c_f4::numeric(30,6)::text,'∅'), coalesce(c_f8::float8::text,'∅'), coalesce(c_num::text,'∅'), coalesce(c_num_free::text,'∅'),
  coalesce(c_text,'∅'), coalesce(c_varchar,'∅'), coalesce(c_char::text,'∅'), coalesce(encode(c_bytea,'hex'),'∅'),
  coalesce(to_char(c_date, 'YYYY-MM-DD BC'),'∅'), coalesce(c_time::text,'∅'),
  coalesce((extract(epoch from c_ts)*1000000)::bigint::text,'∅'), coalesce((extract(epoch from c_tstz)*1000000)::bigint::text,'∅'),
  coalesce(c_iv::text,'∅'), coalesce(c_uuid::text,'∅'), coalesce(c_json::text,'∅'), coalesce(c_jsonb::text,'∅'), coalesce(c_enum::text,'∅'),
  coalesce(to_json(c_ints)::text,'∅'), coalesce(to_json(c_texts)::text,'∅')) FROM every_type ORDER BY id";

fn duck_view(table: &str) -> String {
    format!(
        "SELECT concat_ws('|', id, coalesce(c_bool::VARCHAR,'∅'), coalesce(c_i2::VARCHAR,'∅'), coalesce(c_i8::VARCHAR,'∅'),
  coalesce(c_f4::DECIMAL(30,6)::VARCHAR,'∅'), coalesce(c_f8::VARCHAR,'∅'), coalesce(c_num::VARCHAR,'∅'), coalesce(c_num_free,'∅'),
  coalesce(c_text,'∅'), coalesce(c_varchar,'∅'), coalesce(rtrim(c_char),'∅'), coalesce(lower(hex(c_bytea)),'∅'),
  coalesce(CASE WHEN year(c_date) <= 0 THEN lpad((1 - year(c_date))::VARCHAR, 4, '0') || strftime(c_date, '-%m-%d') || ' BC'
                ELSE strftime(c_date, '%Y-%m-%d') || ' AD' END,'∅'), coalesce(c_time,'∅'),
  coalesce(epoch_us(c_ts)::VARCHAR,'∅'), coalesce(epoch_us(c_tstz)::VARCHAR,'∅'),
  coalesce(c_iv,'∅'), coalesce(c_uuid,'∅'), coalesce(c_json,'∅'), coalesce(c_jsonb,'∅'), coalesce(c_enum,'∅'),
  coalesce(to_json(c_ints)::VARCHAR,'∅'), coalesce(to_json(c_texts)::VARCHAR,'∅')) FROM {table} ORDER BY id"
    )
}

#[test]
fn every_type_round_trips_through_snapshot_and_stream() {
    let mut db = Db::create("types");
    db.sql(TYPES_DDL);
    db.sql(
        &TYPES_ROWS
            .replace("{0}", "1")
            .replace("{1}", "2")
            .replace("{2}", "3"),
    );
    let dir = tempfile::tempdir().unwrap();
    let slot = db.slot();
    let p = pipeline(
        dir.path(),
        &db,
        &slot,
        &["every_type"],
        "[[tables]]\nname = \"types\"\nfrom = \"public.every_type\"\nmode = \"mirror\"\n",
    );
    run_once(dir.path(), &p);
    // Streamed rows take the other path (pgoutput text instead of COPY).
    db.sql(
        &TYPES_ROWS
            .replace("{0}", "11")
            .replace("{1}", "12")
            .replace("{2}", "13"),
    );
    db.sql("UPDATE every_type SET c_text = 'changed', c_ints = '{7}' WHERE id = 1");
    run_once(dir.path(), &p);

    let truth = db.sql(PG_VIEW);
    assert_eq!(truth.len(), 6);
    let got = duck_lines(&duck_view(&lake(dir.path(), "types")));
    for (t, g) in truth.iter().zip(&got) {
        assert_eq!(g, t, "\nDelta (left) and Postgres (right) differ");
    }
    assert_eq!(got.len(), truth.len());
    // The slot was confirmed exactly as far as the table holds: not further (that would
    // lose changes after a crash), not behind (that would retain WAL for nothing).
    let confirmed = db.sql(&format!(
        "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '{slot}'"
    ));
    let held = txn_version(&dir.path().join("lake/types"), &format!("{slot}/{slot}"));
    assert_eq!(Some(lsn(&confirmed[0])), held, "slot confirmed vs table progress");
    // Decimal and timestamp columns are typed, not text.
    let types = duck_lines(&format!(
        "SELECT typeof(c_num), typeof(c_tstz), typeof(c_ints), typeof(c_bytea) FROM {} LIMIT 1",
        lake(dir.path(), "types")
    ));
    assert_eq!(
        types,
        vec!["DECIMAL(12,3)|TIMESTAMP WITH TIME ZONE|INTEGER[]|BLOB"]
    );
}

#[test]
fn unconvertible_values_go_to_dead_letters_as_null() {
    let mut db = Db::create("badval");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, amount numeric(6,2))");
    let dir = tempfile::tempdir().unwrap();
    let slot = db.slot();
    let p = pipeline(
        dir.path(),
        &db,
        &slot,
        &["t"],
        "[dead_letters]\n[[tables]]\nname = \"t\"\nfrom = \"public.t\"\nmode = \"mirror\"\n",
    );
    run_once(dir.path(), &p);
    // NaN is a numeric(6,2) in Postgres but no decimal in Arrow or Delta.
    db.sql("INSERT INTO t VALUES (1, 1.25), (2, 'NaN'), (3, 3.5)");
    run_once(dir.path(), &p);
    assert_eq!(
        duck_lines(&format!(
            "SELECT id, amount FROM {} ORDER BY id",
            lake(dir.path(), "t")
        )),
        vec!["1|1.25", "2|", "3|3.50"]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>()
    );
    let dl = duck_lines(&format!(
        "SELECT error_kind, message, \"table\", decode(payload) FROM {}",
        lake(dir.path(), "dead_letters")
    ));
    assert_eq!(dl.len(), 1, "{dl:?}");
    assert!(
        dl[0].starts_with("decode|column amount: \"NaN\" is not a numeric(6,2)"),
        "{}",
        dl[0]
    );
    assert!(dl[0].ends_with("|public.t|NaN"), "{}", dl[0]);
}

#[test]
fn toast_alter_and_truncate_mid_stream() {
    let mut db = Db::create("toast");
    db.sql(
        "CREATE TABLE doc (id int PRIMARY KEY, n bigint, note text, body text);
         ALTER TABLE doc ALTER COLUMN body SET STORAGE EXTERNAL;
         INSERT INTO doc SELECT g, g, 'note ' || g,
           (SELECT string_agg(md5(g::text || i::text), '') FROM generate_series(1, 32768) i) FROM generate_series(1, 3) g;",
    );
    let dir = tempfile::tempdir().unwrap();
    let slot = db.slot();
    let p = pipeline(
        dir.path(),
        &db,
        &slot,
        &["doc"],
        "[[tables]]\nname = \"doc\"\nfrom = \"public.doc\"\nmode = \"mirror\"\n\
         [[tables]]\nname = \"doc_log\"\nfrom = \"public.doc\"\nmode = \"changelog\"\n",
    );
    run_once(dir.path(), &p);
    // The 1 MB body is stored out of line and not resent by an update of `n`.
    db.sql("UPDATE doc SET n = n + 100 WHERE id IN (1, 2); UPDATE doc SET n = n + 1 WHERE id = 1;");
    run_once(dir.path(), &p);
    let body_truth = db.sql("SELECT id, n, length(body), md5(body) FROM doc ORDER BY id");
    let body_delta = |dir: &Path| {
        duck_lines(&format!(
            "SELECT id, n, length(body), md5(body) FROM {} ORDER BY id",
            lake(dir, "doc")
        ))
    };
    assert_eq!(body_delta(dir.path()), body_truth, "TOAST values kept");
    assert_eq!(body_truth[0].split('|').nth(2), Some("1048576"));
    let unsent = duck_lines(&format!(
        "SELECT count(*) FROM {} WHERE _op = 'u' AND list_contains(_unchanged, 'body')",
        lake(dir.path(), "doc_log")
    ));
    assert_eq!(unsent, vec!["3"], "each update left the body unsent");

    // Columns added, narrowed (stored widened, as the table has them) and dropped
    // while streaming, one change per transaction and two within one.
    db.sql("ALTER TABLE doc ADD COLUMN tag text; UPDATE doc SET tag = 't' || id WHERE id = 2;");
    db.sql(
        "ALTER TABLE doc ALTER COLUMN n TYPE int; INSERT INTO doc VALUES (4, 2000000000, 'four', 'b4', 'x');",
    );
    db.sql(
        "BEGIN; INSERT INTO doc (id, n, body) VALUES (6, 6, 'b6'); ALTER TABLE doc DROP COLUMN note; \
         INSERT INTO doc (id, n, body) VALUES (5, 5, 'b5'); COMMIT;",
    );
    run_once(dir.path(), &p);
    assert_eq!(
        duck_lines(&format!(
            "SELECT id, n, tag, note, typeof(n) FROM {} ORDER BY id",
            lake(dir.path(), "doc")
        )),
        vec![
            "1|102||note 1|BIGINT",
            "2|102|t2|note 2|BIGINT",
            "3|3||note 3|BIGINT",
            "4|2000000000|x|four|BIGINT",
            "5|5|||BIGINT",
            "6|6|||BIGINT",
        ]
    );

    // A truncate and a reload in one transaction: the mirror holds only the reload.
    db.sql("BEGIN; TRUNCATE doc; INSERT INTO doc (id, n, body) VALUES (9, 9, 'b9'); COMMIT;");
    run_once(dir.path(), &p);
    assert_eq!(
        duck_lines(&format!("SELECT id, n, body FROM {}", lake(dir.path(), "doc"))),
        vec!["9|9|b9"]
    );
    assert_eq!(
        duck_lines(&format!(
            "SELECT count(*) FROM {} WHERE _op = 't'",
            lake(dir.path(), "doc_log")
        )),
        vec!["1"]
    );

    // A change the table cannot take stops the run with the column named.
    db.sql(
        "ALTER TABLE doc ALTER COLUMN n TYPE text; INSERT INTO doc (id, n, body) VALUES (10, 'ten', 'b10');",
    );
    let out = tributary(dir.path(), &["run", p.to_str().unwrap(), "--once"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("incompatible schema change: column n: the table has Int64, the records have Utf8"),
        "{stderr}"
    );
}

/// Snapshots interrupted by crashes (a failpoint before a commit), with the database
/// changing in between: a table with a key is copied in chunks and resumes at its
/// cursor; a keyless one is copied in one piece, so its interrupted copy is dropped
/// and taken again. Either way every row arrives once as a snapshot read, and the
/// tables end equal to Postgres.
#[test]
fn an_interrupted_snapshot_resumes_or_is_taken_again_without_duplicates() {
    let mut db = Db::create("snapcrash");
    db.sql(
        "CREATE TABLE big (id int PRIMARY KEY, v int); INSERT INTO big SELECT g, g FROM generate_series(1, 20000) g; \
         CREATE TABLE loose (id int, v int); ALTER TABLE loose REPLICA IDENTITY FULL; INSERT INTO loose SELECT g, g FROM generate_series(1, 20000) g;",
    );
    let dir = tempfile::tempdir().unwrap();
    let slot = db.slot();
    let p = pipeline(
        dir.path(),
        &db,
        &slot,
        &["big", "loose"],
        "[batch]\nmax_rows = 1000\n\
         [[tables]]\nname = \"big\"\nfrom = \"public.big\"\nmode = \"mirror\"\n\
         [[tables]]\nname = \"big_log\"\nfrom = \"public.big\"\nmode = \"changelog\"\n\
         [[tables]]\nname = \"loose\"\nfrom = \"public.loose\"\nmode = \"changelog\"\n",
    );
    let text = std::fs::read_to_string(&p).unwrap();
    std::fs::write(
        &p,
        text.replacen("[sink]\n", "snapshot_chunk_rows = 1000\n[sink]\n", 1),
    )
    .unwrap();
    let crash = |failpoint: &str| {
        let out = std::process::Command::new(bin())
            .args(["run", p.to_str().unwrap(), "--once"])
            .current_dir(dir.path())
            .env("TRIBUTARY_FAILPOINT", failpoint)
            .output()
            .unwrap();
        assert!(!out.status.success(), "the failpoint stops the run");
    };
    let count = |table: &str| duck_i64(&format!("SELECT count(*) FROM {}", lake(dir.path(), table)));
    // The keyless table is copied first, in one piece: stop it half-way.
    crash("before_commit:9@loose");
    let partial = count("loose");
    assert!(
        partial > 0 && partial < 20000,
        "a partial copy was committed: {partial}"
    );
    // The database moves on before each restart.
    db.sql("DELETE FROM loose WHERE id <= 100; INSERT INTO loose VALUES (30000, 1);");
    // Now the keyless copy completes and the keyed table is stopped after a few chunks.
    crash("before_commit:6@big_log");
    let partial = count("big_log");
    assert!(
        partial > 0 && partial < 20000,
        "a few chunks were committed: {partial}"
    );
    db.sql("DELETE FROM big WHERE id <= 100; UPDATE big SET v = -v WHERE id % 10 = 0; INSERT INTO big VALUES (30000, 1);");
    let summary = run_once(dir.path(), &p);
    // The keyed table resumed: it did not read its rows again.
    let read: i64 = summary
        .lines()
        .find(|l| l.contains("read ") && l.contains("records"))
        .and_then(|l| l.split("read ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count of records read: {summary}"));
    assert!(
        read < 20000,
        "the restart read {read} records: the snapshot started over\n{summary}"
    );
    db.sql("UPDATE big SET v = 7 WHERE id = 30000");
    run_once(dir.path(), &p);

    let q = |from: &str| {
        format!("SELECT count(*), sum(v), md5(string_agg(id || ':' || v, ',' ORDER BY id)) FROM {from}")
    };
    assert_eq!(duck_lines(&q(&lake(dir.path(), "big"))), db.sql(&q("big")));
    // Each row of `big` came once as a snapshot read at most (chunks committed before
    // the crash are not read again), and the updates made after the crash arrived.
    let log = duck_lines(&format!(
        "SELECT count(*) FILTER (WHERE _op = 'r') = count(DISTINCT id) FILTER (WHERE _op = 'r'), \
                count(*) FILTER (WHERE _op = 'u') > 0 FROM {}",
        lake(dir.path(), "big_log")
    ));
    assert_eq!(log, vec!["true|true"]);
    // The keyless table holds one copy of each row (of the second attempt), none of
    // the first.
    let loose = duck_lines(&format!(
        "SELECT count(*), count(DISTINCT id), min(id) FROM {} WHERE _op = 'r'",
        lake(dir.path(), "loose")
    ));
    assert_eq!(loose, vec!["19901|19901|101"]);
}

/// The pgbench oracle, over TLS (`sslmode=verify-full` to the TLS-only cluster):
/// snapshot of `pgbench -i -s 10`, then `pgbench -T 60 -c 4` while
/// the pipeline runs and is SIGKILLed at random moments (the first during the
/// snapshot), its mirrors' key indexes lost or turned back to an older copy every few
/// kills, then a `--once` catch-up. The mirrors equal the Postgres tables (count,
/// sum of balances, hash of every row) and the history changelog holds each inserted
/// row exactly once.
#[test]
fn pgbench_with_sigkills_ends_equal_to_postgres() {
    let mut db = Db::create_on("TRIBUTARY_PG_TLS_DSN", "pgbench");
    assert!(db.dsn().contains("sslmode=verify-full"), "{}", db.dsn());
    let init = std::process::Command::new(Db::bin("pgbench"))
        .args(["-i", "-s", "10", "-q", &db.dsn()])
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    let dir = tempfile::tempdir().unwrap();
    let slot = db.slot();
    let tables = [
        "pgbench_accounts",
        "pgbench_tellers",
        "pgbench_branches",
        "pgbench_history",
    ];
    let mut spec = String::new();
    for t in &tables[..3] {
        spec += &format!("[[tables]]\nname = \"{t}\"\nfrom = \"public.{t}\"\nmode = \"mirror\"\n");
    }
    spec +=
        "[[tables]]\nname = \"pgbench_history\"\nfrom = \"public.pgbench_history\"\nmode = \"changelog\"\n";
    // The mirrors merge by deletion vectors (the default); their key indexes live
    // here, so the test can lose them or turn them back between kills.
    spec += "[runtime]\ncache_dir = \"./cache\"\n";
    // Compaction looks every second, so kills land in it too, and its commits race
    // the mirrors' (a mirror commit that loses starts over from the new snapshot).
    spec += "[sink.compaction]\nevery = \"1s\"\nmin_files = 4\n";
    let p = pipeline(dir.path(), &db, &slot, &tables, &spec);
    let cache = dir.path().join("cache");
    let old_cache = dir.path().join("cache-old");

    let spawn = || spawn_continuous(dir.path(), &p);
    let mut pipeline_run = spawn();
    let dsn = db.dsn();
    let load = std::thread::spawn(move || {
        std::process::Command::new(Db::bin("pgbench"))
            .args(["-T", "60", "-c", "4", "-j", "2", "-n", &dsn])
            .output()
            .unwrap()
    });
    let mut next = random_between();
    // The first kill lands inside the snapshot of a million accounts.
    let mut kills = 0;
    let mut wait = next(800, 2_500);
    while !load.is_finished() {
        std::thread::sleep(std::time::Duration::from_millis(wait));
        if load.is_finished() {
            break;
        }
        assert!(
            pipeline_run.try_wait().unwrap().is_none(),
            "the pipeline died by itself"
        );
        pipeline_run.kill().unwrap();
        pipeline_run.wait().unwrap();
        kills += 1;
        // Every few kills the key indexes are lost, or replaced by an older copy.
        match kills % 4 {
            2 if cache.exists() => {
                let _ = std::fs::remove_dir_all(&old_cache);
                copy_dir(&cache, &old_cache);
            }
            3 => {
                let _ = std::fs::remove_dir_all(&cache);
            }
            0 if old_cache.exists() => {
                let _ = std::fs::remove_dir_all(&cache);
                copy_dir(&old_cache, &cache);
            }
            _ => {}
        }
        pipeline_run = spawn();
        wait = next(3_000, 11_000);
    }
    pipeline_run.kill().unwrap();
    pipeline_run.wait().unwrap();
    let bench = load.join().unwrap();
    assert!(
        bench.status.success(),
        "{}",
        String::from_utf8_lossy(&bench.stderr)
    );
    assert!(kills >= 5, "only {kills} kills during the load");
    // Kills every few seconds may leave background compaction no time to commit. A
    // last run under load goes on until a round has committed to the accounts mirror
    // and the mirror has committed over it (its key index following the round's
    // moves), and is then killed too.
    let accounts_log = dir.path().join("lake/pgbench_accounts/_delta_log");
    let before = log_entries(&accounts_log);
    let mut pipeline_run = spawn();
    let dsn = db.dsn();
    let load = std::thread::spawn(move || {
        std::process::Command::new(Db::bin("pgbench"))
            .args(["-T", "90", "-c", "2", "-n", &dsn])
            .output()
            .unwrap()
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(80);
    let compacted_over = loop {
        std::thread::sleep(std::time::Duration::from_millis(500));
        let entries = log_entries(&accounts_log);
        let round = entries
            .iter()
            .filter(|(v, _)| !before.contains_key(v))
            .find(|(_, optimize)| **optimize)
            .map(|(v, _)| *v);
        if let Some(r) = round
            && entries.keys().any(|v| *v > r + 1)
        {
            break true;
        }
        if std::time::Instant::now() > deadline || load.is_finished() {
            break false;
        }
    };
    pipeline_run.kill().unwrap();
    pipeline_run.wait().unwrap();
    db.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'pgbench' AND datname = current_database()");
    let _ = load.join();
    assert!(
        compacted_over,
        "background compaction did not commit to the accounts mirror (with mirror commits after it) within 80 s"
    );
    run_once(dir.path(), &p);
    // Kills may all have landed inside snapshots; these changes surely reach a mirror
    // whose snapshot is complete, through whatever key index the kills left behind
    // (lost, or an older copy).
    let more = std::process::Command::new(Db::bin("pgbench"))
        .args(["-t", "200", "-c", "2", "-n", &db.dsn()])
        .output()
        .unwrap();
    assert!(more.status.success(), "{}", String::from_utf8_lossy(&more.stderr));
    run_once(dir.path(), &p);

    for (table, key, balance) in [
        ("pgbench_accounts", "aid", "abalance"),
        ("pgbench_tellers", "tid", "tbalance"),
        ("pgbench_branches", "bid", "bbalance"),
    ] {
        let row = if table == "pgbench_accounts" {
            "aid || ':' || bid || ':' || abalance || ':' || rtrim(filler)".to_string()
        } else {
            format!("{key} || ':' || {balance}")
        };
        let q = |from: &str| {
            format!("SELECT count(*), sum({balance}), md5(string_agg({row}, ',' ORDER BY {key})) FROM {from}")
        };
        let truth = db.sql(&q(table));
        let delta = duck_lines(&q(&lake(dir.path(), table)));
        assert_eq!(
            delta, truth,
            "{table}: Delta (left) vs Postgres (right) after {kills} kills"
        );
    }
    let history = |mtime: &str, from: &str| {
        format!(
            "SELECT count(*), md5(string_agg(r, ',' ORDER BY r)) FROM \
             (SELECT tid || ':' || bid || ':' || aid || ':' || delta || ':' || {mtime} AS r FROM {from}) AS rows"
        )
    };
    let truth = db.sql(&history(
        "(extract(epoch from mtime) * 1000000)::bigint",
        "pgbench_history AS h",
    ));
    let delta = duck_lines(&history(
        "epoch_us(mtime)",
        // Rows inserted before the (repeated) snapshot arrive as snapshot reads.
        &format!("{} WHERE _op IN ('r', 'c')", lake(dir.path(), "pgbench_history")),
    ));
    assert_eq!(delta, truth, "pgbench_history: every inserted row exactly once");
    let transactions: i64 = truth[0].split('|').next().unwrap().parse().unwrap();
    assert!(transactions > 1000, "the load ran: {transactions} transactions");
    let (protocol, dv_adds) = local_dv_usage(&dir.path().join("lake").join("pgbench_accounts"));
    assert_eq!(
        protocol,
        Some((3, 7)),
        "pgbench_accounts is a deletion-vector mirror"
    );
    assert!(dv_adds > 0, "updates were merged by deletion vectors");
}

/// A table's log entries by version: whether each is a compaction (OPTIMIZE).
fn log_entries(log: &std::path::Path) -> std::collections::BTreeMap<u64, bool> {
    std::fs::read_dir(log)
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "json"))
                .filter_map(|p| {
                    let version = p.file_stem()?.to_str()?.parse().ok()?;
                    let text = std::fs::read_to_string(&p).ok()?;
                    Some((version, text.contains("\"operation\":\"OPTIMIZE\"")))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A range-partitioned table streamed and snapshotted through its root
/// (`publish_via_partition_root`, which Tributary sets on the publications it creates):
/// one Delta table equal to the parent, rows moving between partitions included. A
/// publication that publishes the partitions one by one is refused for the parent,
/// with what to do.
#[test]
fn partitioned_tables_arrive_as_one_table() {
    let mut db = Db::create("parts");
    db.sql(
        "CREATE TABLE events (id int, day date, v text, PRIMARY KEY (id, day)) PARTITION BY RANGE (day);
         CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
         CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
         CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
         INSERT INTO events SELECT g, date '2024-01-01' + (g * 3), 'v' || g FROM generate_series(1, 300) g;",
    );
    let dir = tempfile::tempdir().unwrap();
    let slot = db.slot();
    let spec = "[[tables]]\nname = \"events\"\nfrom = \"public.events\"\nmode = \"mirror\"\n\
                [[tables]]\nname = \"events_log\"\nfrom = \"public.events\"\nmode = \"changelog\"\n";
    let p = pipeline(dir.path(), &db, &slot, &["events"], spec);
    run_once(dir.path(), &p);
    // Changes in every partition, and updates that move rows across partitions.
    db.sql(
        "INSERT INTO events VALUES (1000, '2024-06-01', 'a'), (1001, '2025-06-01', 'b'), (1002, '2026-06-01', 'c');
         UPDATE events SET v = v || '!' WHERE id % 7 = 0;
         UPDATE events SET day = day + 400 WHERE id BETWEEN 10 AND 20;
         DELETE FROM events WHERE id % 11 = 0;",
    );
    run_once(dir.path(), &p);
    let q = |from: &str| {
        format!("SELECT count(*), md5(string_agg(id || ':' || day || ':' || v, ',' ORDER BY id)) FROM {from}")
    };
    let truth = db.sql(&q("events"));
    assert!(truth[0].starts_with("275|"), "{truth:?}");
    assert_eq!(duck_lines(&q(&lake(dir.path(), "events"))), truth);
    // The changelog: 300 snapshot rows from three partitions, the stream under the root.
    let sources = duck_lines(&format!(
        "SELECT _source, count(*) FILTER (WHERE _op = 'r'), count(*) FILTER (WHERE _op = 'c') FROM {} GROUP BY 1",
        lake(dir.path(), "events_log")
    ));
    // A row moving partitions is a delete and an insert in Postgres' log.
    assert_eq!(sources, vec!["public.events|300|14"]);

    // A publication of the partitions one by one cannot give the parent as one table.
    db.sql("CREATE PUBLICATION leaves FOR TABLE events");
    let slot2 = db.slot();
    let other = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace(&format!("pub_{slot}"), "leaves")
        .replace(&format!("slot = \"{slot}\""), &format!("slot = \"{slot2}\""));
    let p2 = write_file(other.path(), "pipeline.toml", &text);
    let out = tributary(other.path(), &["run", p2.to_str().unwrap(), "--once"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("public.events is a partitioned table")
            && err.contains("publish_via_partition_root = true"),
        "{err}"
    );
}

/// Commits far slower than `wal_sender_timeout`: the status task keeps the
/// replication connection alive while the micro-batch is being written.
#[test]
fn slow_commits_do_not_trip_wal_sender_timeout() {
    let mut db = Db::create("slow");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, v text)");
    let dir = tempfile::tempdir().unwrap();
    let slot = db.slot();
    let p = pipeline(
        dir.path(),
        &db,
        &slot,
        &["t"],
        "[[tables]]\nname = \"t\"\nfrom = \"public.t\"\nmode = \"mirror\"\n",
    );
    // The server drops a replication connection that is silent for 1s; each commit
    // takes 3s.
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace(
            &format!("dsn = \"{}\"", db.dsn()),
            &format!("dsn = \"{} options='-c wal_sender_timeout=1s'\"", db.dsn()),
        )
        .replace(
            "slot = ",
            "snapshot = false\nstatus_interval = \"250ms\"\nslot = ",
        );
    std::fs::write(&p, text).unwrap();
    run_once(dir.path(), &p);
    let mut run = std::process::Command::new(bin())
        .args(["run", p.to_str().unwrap()])
        .current_dir(dir.path())
        .env("TRIBUTARY_FAILPOINT", "delay_commit:3000")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A steady trickle of transactions fills the source's channel while a commit is
    // slow, so the source stops reading the connection: only the status task answers.
    for batch in 0..12 {
        db.sql(&format!(
            "INSERT INTO t SELECT g, 'v' || g FROM generate_series({0} * 25 + 1, {0} * 25 + 25) g",
            batch
        ));
        std::thread::sleep(std::time::Duration::from_millis(400));
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let alive = |run: &mut std::process::Child| {
        // A connection the server dropped ends the run.
        if let Some(status) = run.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(run.stderr.as_mut().unwrap(), &mut err).unwrap();
            panic!("the run stopped ({status}): {err}");
        }
    };
    while duck_lines(&format!("SELECT count(*) FROM {}", lake(dir.path(), "t"))) != vec!["300"] {
        alive(&mut run);
        assert!(std::time::Instant::now() < deadline, "rows did not arrive");
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    alive(&mut run);
    run.kill().unwrap();
    run.wait().unwrap();
    let confirmed = db.sql(&format!(
        "SELECT confirmed_flush_lsn > '0/0' FROM pg_replication_slots WHERE slot_name = '{slot}'"
    ));
    assert_eq!(confirmed, vec!["t"]);
}

/// Setups that cannot work fail with the cause named, never silently.
#[test]
fn keyless_mirrors_and_lost_slots_are_clear_errors() {
    let mut db = Db::create("errors");
    db.sql("CREATE TABLE nokey (a int, b text); INSERT INTO nokey VALUES (1, 'x'), (1, 'x');");
    let dir = tempfile::tempdir().unwrap();
    let slot = db.slot();
    let mirror = "[[tables]]\nname = \"m\"\nfrom = \"public.nokey\"\nmode = \"mirror\"\n";
    let p = pipeline(dir.path(), &db, &slot, &["nokey"], mirror);
    let out = tributary(dir.path(), &["run", p.to_str().unwrap(), "--once"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("table m: a mirror needs a key, and public.nokey has no primary key")
            && err.contains("REPLICA IDENTITY"),
        "{err}"
    );

    // A changelog of the same table works, duplicates and all.
    let log = "[[tables]]\nname = \"log\"\nfrom = \"public.nokey\"\nmode = \"changelog\"\n";
    let p = pipeline(dir.path(), &db, &slot, &["nokey"], log);
    run_once(dir.path(), &p);
    db.sql("INSERT INTO nokey VALUES (2, 'y')");
    run_once(dir.path(), &p);
    assert_eq!(
        duck_lines(&format!(
            "SELECT _op, a, b FROM {} ORDER BY _op, a",
            lake(dir.path(), "log")
        )),
        vec!["c|2|y", "r|1|x", "r|1|x"]
    );

    // The slot disappears: the changes since the tables' position are gone.
    db.sql(&format!("SELECT pg_drop_replication_slot('{slot}')"));
    let out = tributary(dir.path(), &["run", p.to_str().unwrap(), "--once"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!(
            "replication slot \"{slot}\" does not exist, but the tables hold changes up to LSN"
        )),
        "{err}"
    );

    // Under REPLICA IDENTITY FULL an update stays an update; a key change is a delete
    // and an insert.
    db.sql(
        "CREATE TABLE full_id (id int PRIMARY KEY, v text); ALTER TABLE full_id REPLICA IDENTITY FULL; \
            INSERT INTO full_id VALUES (1, 'a'), (2, 'b');",
    );
    let slot2 = db.slot();
    let both = "[[tables]]\nname = \"fm\"\nfrom = \"public.full_id\"\nmode = \"mirror\"\n\
                [[tables]]\nname = \"fl\"\nfrom = \"public.full_id\"\nmode = \"changelog\"\n";
    let other = tempfile::tempdir().unwrap();
    let p2 = pipeline(other.path(), &db, &slot2, &["full_id"], both);
    run_once(other.path(), &p2);
    db.sql("UPDATE full_id SET v = 'a2' WHERE id = 1; UPDATE full_id SET id = 3 WHERE id = 2;");
    run_once(other.path(), &p2);
    assert_eq!(
        duck_lines(&format!(
            "SELECT _op, id, v FROM {} WHERE _op <> 'r' ORDER BY _op, id",
            lake(other.path(), "fl")
        )),
        vec!["c|3|b", "d|2|b", "u|1|a2"]
    );
    assert_eq!(
        duck_lines(&format!(
            "SELECT id, v FROM {} ORDER BY id",
            lake(other.path(), "fm")
        )),
        vec!["1|a2", "3|b"]
    );
}

/// An aggregate over a Postgres table whose snapshot is interrupted and taken again
/// ends equal to the aggregate of a run that was never interrupted: the first
/// attempt's rows are dropped from its state and its table.
#[test]
fn aggregates_restart_with_a_retaken_snapshot() {
    let mut db = Db::create("aggsnap");
    db.sql(
        "CREATE TABLE clicks (id int PRIMARY KEY, at timestamptz, page text);
         INSERT INTO clicks SELECT g, timestamptz '2026-01-01 00:00:00+00' + g * interval '1 second',
           'p' || (g % 5) FROM generate_series(1, 20000) g;",
    );
    let aggregate = "[batch]\nmax_rows = 1000\n\
        [[aggregates]]\nname = \"per_minute\"\nfrom = \"public.clicks\"\nevent_time = \"at\"\n\
        window = { kind = \"tumbling\", size = \"1m\" }\nwatermark = \"0s\"\ngroup_by = [\"page\"]\n\
        measures = { n = \"count(*)\" }\nemit = \"final\"\nlate = \"drop\"\n";
    let rows = |dir: &Path| {
        duck_lines(&format!(
            "SELECT window_start::VARCHAR, page, n FROM {} ORDER BY window_start, page",
            lake(dir, "per_minute")
        ))
    };
    let whole = tempfile::tempdir().unwrap();
    let slot = db.slot();
    let p = pipeline(whole.path(), &db, &slot, &["clicks"], aggregate);
    run_once(whole.path(), &p);
    let expected = rows(whole.path());

    let broken = tempfile::tempdir().unwrap();
    let slot = db.slot();
    let p = pipeline(broken.path(), &db, &slot, &["clicks"], aggregate);
    let out = std::process::Command::new(bin())
        .args(["run", p.to_str().unwrap(), "--once"])
        .current_dir(broken.path())
        .env("TRIBUTARY_FAILPOINT", "before_commit:6")
        .output()
        .unwrap();
    assert!(!out.status.success(), "the failpoint stops the run");
    let partial = duck_i64(&format!(
        "SELECT sum(n) FROM {}",
        lake(broken.path(), "per_minute")
    ));
    assert!(partial > 0, "the interrupted attempt emitted windows");
    run_once(broken.path(), &p);
    let got = rows(broken.path());
    let first_difference = got.iter().zip(&expected).position(|(g, e)| g != e);
    assert_eq!(
        first_difference.map(|i| (&got[i], &expected[i])),
        None,
        "retaken snapshot (left) vs uninterrupted run (right)"
    );
    assert_eq!(got.len(), expected.len());
    // 20000 events in closed windows: every minute before the last holds 60 of them.
    let total: i64 = expected
        .iter()
        .map(|r| r.rsplit('|').next().unwrap().parse::<i64>().unwrap())
        .sum();
    assert!(total > 19_000, "{total}");
}
