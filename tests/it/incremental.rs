//! Incremental snapshots of Postgres tables (chunks between watermarks while the slot
//! streams): they resume after SIGKILLs instead of starting over, tables added to a
//! streaming pipeline get their existing rows, and rows changed while their chunk is
//! being read end in their final state. Postgres is the truth, DuckDB the reader.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::pg::{Db, pipeline_at};
use crate::postgres::duck_lines;
use crate::support::*;

fn lake(dir: &Path, table: &str) -> String {
    scan(dir.join("lake").join(table).to_str().unwrap())
}

/// A pipeline over `tables` of `db` with `source` lines added to `[source]`.
fn pipeline(dir: &Path, db: &Db, slot: &str, tables: &[&str], source: &str, extra: &str) -> PathBuf {
    let p = pipeline_at(dir, &db.dsn(), slot, tables, extra);
    let text = std::fs::read_to_string(&p).unwrap();
    let text = text.replacen("[sink]\n", &format!("{source}[sink]\n"), 1);
    std::fs::write(&p, text).unwrap();
    p
}

/// A continuous run whose log goes to `log` (with `env` set).
fn spawn_logged(dir: &Path, p: &Path, log: &Path, env: &[(&str, &str)]) -> Child {
    let mut cmd = Command::new(bin());
    cmd.args(["run", p.to_str().unwrap()])
        .current_dir(dir)
        .env("TRIBUTARY_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

fn lines_with(log: &Path, what: &[&str]) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| what.iter().all(|w| l.contains(w)))
        .map(str::to_string)
        .collect()
}

/// Waits until `log` has `n` lines with every one of `what`; false at the deadline.
fn wait_for(log: &Path, what: &[&str], n: usize, within: Duration, child: &mut Child) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if lines_with(log, what).len() >= n {
            return true;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the pipeline died: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// The value of `field=` in a log line.
fn field(line: &str, field: &str) -> Option<u64> {
    let at = line.find(&format!(" {field}="))? + field.len() + 2;
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// `table`'s mirror equals the Postgres table: count and a hash of every row as
/// `row` (an expression both engines evaluate alike) in `key` order.
fn assert_mirror_equal(db: &Db, dir: &Path, table: &str, key: &str, row: &str, what: &str) {
    assert_mirror_of(db, dir, table, table, key, row, what);
}

/// The Delta table `mirror` equals the Postgres table `table`.
fn assert_mirror_of(db: &Db, dir: &Path, mirror: &str, table: &str, key: &str, row: &str, what: &str) {
    let q = |from: &str| format!("SELECT count(*), md5(string_agg({row}, ',' ORDER BY {key})) FROM {from}");
    let truth = db.sql(&q(table));
    let delta = duck_lines(&q(&lake(dir, mirror)));
    assert_eq!(delta, truth, "{mirror}: Delta (left) vs Postgres (right): {what}");
}

const ACCOUNT: &str = "aid || ':' || bid || ':' || abalance || ':' || rtrim(filler)";
const TELLER: &str = "tid || ':' || bid || ':' || tbalance";
const BRANCH: &str = "bid || ':' || bbalance";

/// Rows changed and deleted while their chunk is read (between its read and its high
/// watermark, held open by a failpoint) end in their final state: the stream's
/// version wins over the chunk's stale copy, and a deleted row does not come back.
/// A column dropped and one added mid-copy: the next chunks are read with the new
/// columns.
#[test]
fn rows_changed_while_their_chunk_is_read_end_in_their_final_state() {
    let mut db = Db::create("incwin");
    db.sql(
        "CREATE TABLE t (id int PRIMARY KEY, v int, note text, junk text DEFAULT 'j'); \
         INSERT INTO t SELECT g, g, 'n' || g FROM generate_series(1, 3000) g;",
    );
    let dir = tempfile::tempdir().unwrap();
    let slot = db.slot();
    let p = pipeline(
        dir.path(),
        &db,
        &slot,
        &["t"],
        "snapshot_chunk_rows = 1000\n",
        "[[tables]]\nname = \"t\"\nfrom = \"public.t\"\nmode = \"mirror\"\n\
         [[tables]]\nname = \"t_log\"\nfrom = \"public.t\"\nmode = \"changelog\"\n",
    );
    let log = dir.path().join("run.log");
    let mut run = spawn_logged(
        dir.path(),
        &p,
        &log,
        &[("TRIBUTARY_FAILPOINT", "chunk_read:3000")],
    );
    // The first chunk (ids 1-1000) is read and held: change rows inside it, and one
    // of the next chunk, inside its window.
    assert!(
        wait_for(
            &log,
            &["snapshot chunk read"],
            1,
            Duration::from_secs(60),
            &mut run
        ),
        "no chunk was read"
    );
    db.sql("UPDATE t SET v = -500 WHERE id = 500");
    db.sql("DELETE FROM t WHERE id = 600");
    db.sql("UPDATE t SET id = 7000 WHERE id = 700");
    db.sql("UPDATE t SET v = -1500, note = NULL WHERE id = 1500");
    db.sql(
        "INSERT INTO t VALUES (2500, 0, 'moved'), (9000, 9, 'new') ON CONFLICT (id) DO UPDATE SET v = -2500",
    );
    assert!(
        wait_for(
            &log,
            &["snapshot chunk read"],
            2,
            Duration::from_secs(60),
            &mut run
        ),
        "no second chunk was read"
    );
    // Inside the second window too: a row of the chunk being read; and the table is
    // altered: the next chunks are read with its new columns.
    db.sql("UPDATE t SET v = -1200 WHERE id = 1200; DELETE FROM t WHERE id = 1300");
    db.sql("ALTER TABLE t DROP COLUMN junk; ALTER TABLE t ADD COLUMN extra int DEFAULT 5");
    assert!(
        wait_for(&log, &["snapshot copied"], 1, Duration::from_secs(90), &mut run),
        "the snapshot did not complete: {}",
        std::fs::read_to_string(&log).unwrap()
    );
    run.kill().unwrap();
    run.wait().unwrap();
    run_once(dir.path(), &p);
    assert_mirror_equal(
        &db,
        dir.path(),
        "t",
        "id",
        "id || ':' || v || ':' || coalesce(note, '-')",
        "after changes inside chunk windows",
    );
    // Chunks dropped the rows the stream changed in their windows; every row came
    // once as a snapshot read at most.
    let reads = duck_lines(&format!(
        "SELECT count(*) FILTER (WHERE _op = 'r'), count(DISTINCT id) FILTER (WHERE _op = 'r'), \
                count(*) FILTER (WHERE _op = 'r' AND id IN (500, 600, 700, 1200, 1300)) FROM {}",
        lake(dir.path(), "t_log")
    ));
    let r: Vec<i64> = reads[0].split('|').map(|v| v.parse().unwrap()).collect();
    assert_eq!(r[0], r[1], "no row was read twice: {reads:?}");
    assert_eq!(
        r[2], 0,
        "rows changed in their chunk's window come from the stream only"
    );
    // Rows copied after the ALTER carry the new column (older rows have NULL there,
    // as after any added column).
    assert_eq!(
        duck_lines(&format!(
            "SELECT count(*) FILTER (WHERE extra = 5) FROM {} WHERE id > 2000",
            lake(dir.path(), "t")
        )),
        db.sql("SELECT count(*) FROM t WHERE id > 2000"),
    );
}

/// pgbench scale 20 (2M accounts) under writes, the pipeline SIGKILLed 5 times
/// during its snapshot: each restart resumes at the tables' cursor (snapshot queries
/// read at most 1.2x the table in all), and at the end every mirror equals Postgres.
#[test]
fn a_snapshot_killed_five_times_under_writes_resumes_and_ends_equal() {
    let mut db = Db::create("inckill");
    let init = Command::new(Db::bin("pgbench"))
        .args(["-i", "-s", "20", "-q", &db.dsn()])
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    let dir = tempfile::tempdir().unwrap();
    let slot = db.slot();
    let tables = ["pgbench_accounts", "pgbench_tellers", "pgbench_branches"];
    let mut spec = String::new();
    for t in tables {
        spec += &format!("[[tables]]\nname = \"{t}\"\nfrom = \"public.{t}\"\nmode = \"mirror\"\n");
    }
    spec += "[runtime]\ncache_dir = \"./cache\"\n";
    // Chunks of 20k rows: a kill loses what was read and not yet committed (at most
    // three chunks), so the bound below holds whatever the kills hit.
    let p = pipeline(
        dir.path(),
        &db,
        &slot,
        &tables,
        "snapshot_chunk_rows = 20000\n",
        &spec,
    );

    let dsn = db.dsn();
    let load = std::thread::spawn(move || {
        Command::new(Db::bin("pgbench"))
            .args(["-T", "600", "-c", "2", "-j", "1", "-n", &dsn])
            .output()
            .unwrap()
    });
    let mut next = random_between();
    let mut logs = Vec::new();
    let chunk = ["snapshot chunk handed over", "pgbench_accounts"];
    for kill in 0..5 {
        let log = dir.path().join(format!("run-{kill}.log"));
        let mut run = spawn_logged(dir.path(), &p, &log, &[]);
        // Each run hands over at least one chunk of accounts before it is killed, at a
        // random moment after that.
        assert!(
            wait_for(&log, &chunk, 1, Duration::from_secs(120), &mut run),
            "run {kill} handed over no chunk of accounts"
        );
        std::thread::sleep(Duration::from_millis(next(0, 2_500)));
        run.kill().unwrap();
        run.wait().unwrap();
        logs.push(log);
        assert!(
            lines_with(logs.last().unwrap(), &["snapshot copied", "pgbench_accounts"]).is_empty(),
            "the snapshot completed before kill {kill}: the test needs a larger table"
        );
    }
    // Mid-copy, `status` says how far each table got.
    let status = tributary(dir.path(), &["status", p.to_str().unwrap()]);
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(status.contains("snapshot copying: "), "{status}");
    let log = dir.path().join("run-last.log");
    let mut run = spawn_logged(dir.path(), &p, &log, &[]);
    assert!(
        wait_for(
            &log,
            &["snapshot copied", "pgbench_accounts"],
            1,
            Duration::from_secs(300),
            &mut run
        ),
        "the snapshot did not complete"
    );
    std::thread::sleep(Duration::from_secs(2));
    run.kill().unwrap();
    run.wait().unwrap();
    logs.push(log);
    db.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'pgbench' AND datname = current_database()");
    let bench = load.join().unwrap();
    assert!(
        String::from_utf8_lossy(&bench.stderr).contains("terminat") || bench.status.success(),
        "{}",
        String::from_utf8_lossy(&bench.stderr)
    );
    run_once(dir.path(), &p);

    let read: u64 = logs
        .iter()
        .flat_map(|l| lines_with(l, &chunk))
        .filter_map(|l| field(&l, "read"))
        .sum();
    assert!(
        read <= 2_400_000,
        "snapshot queries read {read} rows of a 2,000,000-row table: restarts started over"
    );
    assert!(read >= 2_000_000, "snapshot queries read only {read} rows");
    eprintln!("snapshot queries read {read} rows of 2,000,000 over 6 runs (5 SIGKILLs)");
    let status = tributary(dir.path(), &["status", p.to_str().unwrap()]);
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    assert_eq!(status.matches("snapshot copied").count(), 3, "{status}");
    for (table, key, row) in [
        ("pgbench_accounts", "aid", ACCOUNT),
        ("pgbench_tellers", "tid", TELLER),
        ("pgbench_branches", "bid", BRANCH),
    ] {
        assert_mirror_equal(
            &db,
            dir.path(),
            table,
            key,
            row,
            "after 5 kills during the snapshot",
        );
    }
}

/// A table added to a pipeline that has streamed accounts for a while (listed, and
/// added to the publication): its existing rows arrive, then its changes, while the
/// other table keeps streaming.
#[test]
fn a_table_added_to_a_streaming_pipeline_gets_its_existing_rows() {
    let mut db = Db::create("incadd");
    let init = Command::new(Db::bin("pgbench"))
        .args(["-i", "-s", "2", "-q", &db.dsn()])
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    let dir = tempfile::tempdir().unwrap();
    let slot = db.slot();
    let table = |t: &str| format!("[[tables]]\nname = \"{t}\"\nfrom = \"public.{t}\"\nmode = \"mirror\"\n");
    let p = pipeline(
        dir.path(),
        &db,
        &slot,
        &["pgbench_accounts"],
        "",
        &table("pgbench_accounts"),
    );
    run_once(dir.path(), &p);
    let bench = |n: &str| {
        let out = Command::new(Db::bin("pgbench"))
            .args(["-t", n, "-c", "2", "-n", &db.dsn()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    bench("200");
    run_once(dir.path(), &p);
    assert_mirror_equal(
        &db,
        dir.path(),
        "pgbench_accounts",
        "aid",
        ACCOUNT,
        "before tellers are added",
    );
    bench("200");

    // Tellers join: the publication first (Tributary never alters one), then the file.
    db.sql(&format!("ALTER PUBLICATION pub_{slot} ADD TABLE pgbench_tellers"));
    let p = pipeline(
        dir.path(),
        &db,
        &slot,
        &["pgbench_accounts", "pgbench_tellers"],
        "snapshot_chunk_rows = 7\n",
        &(table("pgbench_accounts") + &table("pgbench_tellers")),
    );
    let log = dir.path().join("run.log");
    let mut run = spawn_logged(dir.path(), &p, &log, &[]);
    let dsn = db.dsn();
    let load = std::thread::spawn(move || {
        Command::new(Db::bin("pgbench"))
            .args(["-T", "8", "-c", "2", "-n", &dsn])
            .output()
            .unwrap()
    });
    assert!(
        wait_for(
            &log,
            &["snapshot copied", "pgbench_tellers"],
            1,
            Duration::from_secs(120),
            &mut run
        ),
        "tellers were not snapshotted: {}",
        std::fs::read_to_string(&log).unwrap()
    );
    let load = load.join().unwrap();
    assert!(load.status.success(), "{}", String::from_utf8_lossy(&load.stderr));
    run.kill().unwrap();
    run.wait().unwrap();
    assert!(
        lines_with(&log, &["snapshot chunk handed over", "pgbench_accounts"]).is_empty(),
        "accounts, streaming already, was not copied again"
    );
    assert!(
        lines_with(&log, &["snapshot chunk handed over", "pgbench_tellers"]).len() >= 3,
        "tellers (20 rows) came in chunks of 7"
    );
    bench("100");
    run_once(dir.path(), &p);
    assert_mirror_equal(
        &db,
        dir.path(),
        "pgbench_accounts",
        "aid",
        ACCOUNT,
        "after tellers were added",
    );
    assert_mirror_equal(
        &db,
        dir.path(),
        "pgbench_tellers",
        "tid",
        TELLER,
        "added while streaming",
    );
}

/// `tributary snapshot --table` on a mirror tampered with by hand (rows deleted,
/// changed and added with Python deltalake) while Postgres moved on: the mirror is
/// copied again in chunks and reconciled to equal Postgres; the changelog fed by the
/// same table keeps its rows (it skips the copy). A deletion-vector mirror that
/// missed deletes (not published for a while) is reconciled the same way.
#[test]
fn snapshot_again_restores_a_tampered_mirror() {
    let mut db = Db::create("incagain");
    db.sql(
        "CREATE TABLE t (id int PRIMARY KEY, v int, note text); \
         INSERT INTO t SELECT g, g, 'n' || g FROM generate_series(1, 5000) g;",
    );
    let dir = tempfile::tempdir().unwrap();
    let slot = db.slot();
    let p = pipeline(
        dir.path(),
        &db,
        &slot,
        &["t"],
        "snapshot_chunk_rows = 1000\n",
        // Copy-on-write, so that Python deltalake can tamper with it (it does not
        // write tables with deletion vectors).
        "[[tables]]\nname = \"t\"\nfrom = \"public.t\"\nmode = \"mirror\"\nmerge = \"copy_on_write\"\n\
         [[tables]]\nname = \"t_dv\"\nfrom = \"public.t\"\nmode = \"mirror\"\n\
         [[tables]]\nname = \"t_log\"\nfrom = \"public.t\"\nmode = \"changelog\"\n\
         [runtime]\ncache_dir = \"./cache\"\n",
    );
    run_once(dir.path(), &p);
    let row = "id || ':' || v || ':' || coalesce(note, '-')";
    assert_mirror_equal(&db, dir.path(), "t", "id", row, "after the first snapshot");

    // By hand: rows deleted, one changed, one added that Postgres never had.
    let python = stack_env("TRIBUTARY_PYTHON");
    let table = dir.path().join("lake").join("t");
    let tamper = Command::new(&python)
        .args([
            "-c",
            "import sys, pyarrow.compute as pc; from deltalake import DeltaTable, write_deltalake; \
             t = DeltaTable(sys.argv[1]); \
             t.delete('id <= 50'); \
             t.update(updates={'v': '-1'}, predicate='id = 100'); \
             rows = t.to_pyarrow_table(filters=[('id', '=', 200)]); \
             rows = rows.set_column(rows.schema.get_field_index('id'), 'id', pc.add(rows['id'], 99799)); \
             write_deltalake(sys.argv[1], rows, mode='append')",
            table.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        tamper.status.success(),
        "{}",
        String::from_utf8_lossy(&tamper.stderr)
    );
    assert_eq!(
        duck_lines(&format!(
            "SELECT count(*), count(*) FILTER (WHERE id = 99999) FROM {}",
            lake(dir.path(), "t")
        )),
        vec!["4951|1"],
        "the tampering took"
    );
    // Postgres moves on meanwhile, and some of its deletes are not published (both
    // mirrors miss them).
    let publication = format!("pub_{slot}");
    db.sql(&format!(
        "ALTER PUBLICATION {publication} SET (publish = 'insert, update, truncate')"
    ));
    db.sql("DELETE FROM t WHERE id BETWEEN 4500 AND 4509");
    db.sql(&format!(
        "ALTER PUBLICATION {publication} SET (publish = 'insert, update, delete, truncate')"
    ));
    db.sql("UPDATE t SET v = -7 WHERE id IN (7, 3000); DELETE FROM t WHERE id = 4000; INSERT INTO t VALUES (6000, 6, NULL)");

    let out = tributary(
        dir.path(),
        &["snapshot", p.to_str().unwrap(), "--table", "t", "--table", "t_dv"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("t: to be snapshotted again"), "{stdout}");
    assert!(stdout.contains("t_dv: to be snapshotted again"), "{stdout}");
    assert!(stdout.contains("t_log: keeps its rows"), "{stdout}");
    // The run's summary says where each copy got.
    assert_eq!(stdout.matches("snapshot copied").count(), 2, "{stdout}");
    assert_mirror_equal(&db, dir.path(), "t", "id", row, "after snapshot --table t");
    assert_mirror_of(
        &db,
        dir.path(),
        "t_dv",
        "t",
        "id",
        row,
        "after snapshot --table t_dv",
    );
    // The changelog took the changes, not the copy.
    assert_eq!(
        duck_lines(&format!(
            "SELECT count(*) FILTER (WHERE _op = 'r'), count(*) FILTER (WHERE _op <> 'r') FROM {}",
            lake(dir.path(), "t_log")
        )),
        vec!["5000|4"]
    );
    // And the pipeline goes on streaming.
    db.sql("UPDATE t SET v = 1 WHERE id = 1");
    run_once(dir.path(), &p);
    assert_mirror_equal(
        &db,
        dir.path(),
        "t",
        "id",
        row,
        "streaming after the new snapshot",
    );
    assert_mirror_of(
        &db,
        dir.path(),
        "t_dv",
        "t",
        "id",
        row,
        "streaming after the new snapshot",
    );
}

/// Wide rows are read in chunks smaller than `snapshot_chunk_rows`: a chunk waits in
/// memory for its high watermark, so it is held to what an open transaction may hold
/// (`spill_after`, here 1 MiB for 20 MB of rows).
#[test]
fn wide_rows_are_copied_in_chunks_that_fit_in_memory() {
    let mut db = Db::create("incwide");
    db.sql(
        "CREATE TABLE w (id int PRIMARY KEY, body text); \
         INSERT INTO w SELECT g, repeat(md5(g::text), 320) FROM generate_series(1, 2000) g; ANALYZE w;",
    );
    let dir = tempfile::tempdir().unwrap();
    let slot = db.slot();
    let p = pipeline(
        dir.path(),
        &db,
        &slot,
        &["w"],
        "spill_after = \"1MiB\"\n",
        "[[tables]]\nname = \"w\"\nfrom = \"public.w\"\nmode = \"mirror\"\n",
    );
    let log = dir.path().join("run.log");
    let out = Command::new(bin())
        .args(["run", p.to_str().unwrap(), "--once"])
        .current_dir(dir.path())
        .env("TRIBUTARY_LOG", "info")
        .stderr(std::fs::File::create(&log).unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", std::fs::read_to_string(&log).unwrap());
    let chunks = lines_with(&log, &["snapshot chunk handed over"]);
    let largest = chunks.iter().filter_map(|l| field(l, "read")).max().unwrap_or(0);
    assert!(
        chunks.len() >= 15 && largest <= 150,
        "{} chunks of at most {largest} rows (10 KiB each)",
        chunks.len()
    );
    assert_mirror_equal(&db, dir.path(), "w", "id", "id || ':' || md5(body)", "wide rows");
}

/// `tributary snapshot --table` stopped by a crash before one of its chunk commits
/// (the failpoint aborts the process after the chunk's files are written): the next
/// run resumes the new copy at its cursor and still reconciles the mirror at the end.
#[test]
fn snapshot_again_resumes_after_a_crash_and_still_reconciles() {
    let mut db = Db::create("incagaincrash");
    db.sql(
        "CREATE TABLE t (id int PRIMARY KEY, v int); \
         INSERT INTO t SELECT g, g FROM generate_series(1, 5000) g;",
    );
    let dir = tempfile::tempdir().unwrap();
    let slot = db.slot();
    let p = pipeline(
        dir.path(),
        &db,
        &slot,
        &["t"],
        "snapshot_chunk_rows = 500\n",
        "[batch]\nmax_rows = 500\n\
         [[tables]]\nname = \"t\"\nfrom = \"public.t\"\nmode = \"mirror\"\n\
         [[tables]]\nname = \"t_log\"\nfrom = \"public.t\"\nmode = \"changelog\"\n\
         [runtime]\ncache_dir = \"./cache\"\n",
    );
    run_once(dir.path(), &p);
    // Deletes the mirror misses (not published for a while).
    let publication = format!("pub_{slot}");
    db.sql(&format!(
        "ALTER PUBLICATION {publication} SET (publish = 'insert, update, truncate')"
    ));
    db.sql("DELETE FROM t WHERE id % 250 = 0");
    db.sql(&format!(
        "ALTER PUBLICATION {publication} SET (publish = 'insert, update, delete, truncate')"
    ));
    let row = "id || ':' || v";
    let q = |from: &str| format!("SELECT count(*) FROM {from}");
    assert_eq!(duck_lines(&q(&lake(dir.path(), "t"))), vec!["5000"]);

    let crashed = Command::new(bin())
        .args(["snapshot", p.to_str().unwrap(), "--table", "t"])
        .current_dir(dir.path())
        .env("TRIBUTARY_FAILPOINT", "before_commit:5@t")
        .output()
        .unwrap();
    assert!(!crashed.status.success(), "the failpoint stops the copy");
    let status = tributary(dir.path(), &["status", p.to_str().unwrap()]);
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(
        status.contains("snapshot copying: "),
        "the copy was cut short: {status}"
    );
    db.sql(
        "UPDATE t SET v = -v WHERE id % 7 = 0; DELETE FROM t WHERE id = 4999; INSERT INTO t VALUES (7000, 7)",
    );
    let summary = run_once(dir.path(), &p);
    assert!(summary.contains("snapshot copied"), "{summary}");
    assert_mirror_equal(
        &db,
        dir.path(),
        "t",
        "id",
        row,
        "a new copy resumed after a crash",
    );
    // The changelog skipped both copies' chunks after its own first one.
    assert_eq!(
        duck_lines(&format!(
            "SELECT count(*) FILTER (WHERE _op = 'r'), count(DISTINCT id) FILTER (WHERE _op = 'r') FROM {}",
            lake(dir.path(), "t_log")
        )),
        vec!["5000|5000"]
    );
}
