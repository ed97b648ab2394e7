//! Postgres transactions larger than the memory allowed for them: their rows spill to
//! local files while they are open, and each table still commits the transaction in
//! ONE Delta version (mirror by deletion vectors, changelog, part by part), exact
//! against Postgres, through truncates inside them and SIGKILLs during their intake.

use std::path::{Path, PathBuf};

use crate::pg::{Db, pipeline};
use crate::support::*;

fn lake(dir: &Path, table: &str) -> String {
    scan(dir.join("lake").join(table).to_str().unwrap())
}

/// New log entries of `table` since `after` (a version), and how many add data files.
fn entries_since(table: &Path, after: u64) -> Vec<(u64, usize)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(table.join("_delta_log")).unwrap() {
        let p = e.unwrap().path();
        let Some(v) = p
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".json"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        if v > after {
            let adds = std::fs::read_to_string(&p)
                .unwrap()
                .lines()
                .filter(|l| l.starts_with("{\"add\""))
                .count();
            out.push((v, adds));
        }
    }
    out.sort();
    out
}

fn assert_mirror_equal(db: &Db, dir: &Path, what: &str) {
    let q = |from: &str| {
        format!(
            "SELECT count(*), sum(bal), md5(string_agg(id || ':' || bal || ':' || note, ',' ORDER BY id)) FROM {from}"
        )
    };
    assert_eq!(
        crate::postgres::duck_lines(&q(&lake(dir, "acc"))),
        db.sql(&q("acc")),
        "{what}: Delta (left) vs Postgres (right)"
    );
}

const SPEC: &str = "[[tables]]\nname = \"acc\"\nfrom = \"public.acc\"\nmode = \"mirror\"\n\
                    [[tables]]\nname = \"acc_log\"\nfrom = \"public.acc\"\nmode = \"changelog\"\n\
                    [runtime]\ncache_dir = \"./cache\"\n";

/// A table `acc` of `rows` accounts, mirrored and logged by a pipeline whose open
/// transactions spill past `spill_after`, after its snapshot.
fn accounts(prefix: &str, rows: usize, spill_after: &str) -> (Db, tempfile::TempDir, PathBuf) {
    let mut db = Db::create(prefix);
    db.sql(&format!(
        "CREATE TABLE acc (id int PRIMARY KEY, bal int NOT NULL, note text NOT NULL);
         INSERT INTO acc SELECT g, 0, repeat('x', 40) FROM generate_series(1, {rows}) g;"
    ));
    let dir = tempfile::tempdir().unwrap();
    let slot = db.slot();
    let p = pipeline(dir.path(), &db, &slot, &["acc"], SPEC);
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace("[sink]", &format!("spill_after = \"{spill_after}\"\n[sink]"));
    std::fs::write(&p, text).unwrap();
    run_once(dir.path(), &p);
    (db, dir, p)
}

#[test]
fn a_transaction_larger_than_memory_is_one_version_of_each_table() {
    // Spill once 256KiB of a transaction is buffered (the least allowed is 64KiB).
    let (db, dir, p) = accounts("bigtxn", 60_000, "256KiB");
    let mirror = dir.path().join("lake/acc");
    let log = dir.path().join("lake/acc_log");
    let (m0, l0) = (local_version(&mirror).unwrap(), local_version(&log).unwrap());

    // Keys changed in many parts of one transaction: every row, a third again, some
    // deleted, some new, some keys changed.
    db.sql(
        "BEGIN;
         UPDATE acc SET bal = bal + 1;
         UPDATE acc SET bal = bal + 10, note = 'third' WHERE id % 3 = 0;
         DELETE FROM acc WHERE id % 10 = 0;
         INSERT INTO acc SELECT g, 7, 'new' FROM generate_series(100001, 100500) g;
         UPDATE acc SET id = id + 200000 WHERE id BETWEEN 501 AND 509;
         COMMIT;",
    );
    let out = tributary(dir.path(), &["run", p.to_str().unwrap(), "--once"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("a large transaction is open"),
        "the transaction spilled: {err}"
    );
    assert!(err.contains("large transaction handed over"), "{err}");
    assert_mirror_equal(&db, dir.path(), "after one spilled transaction");
    // One version with data per table; no version shows part of it.
    for (table, before) in [(&mirror, m0), (&log, l0)] {
        let with_data: Vec<_> = entries_since(table, before)
            .into_iter()
            .filter(|(_, adds)| *adds > 0)
            .collect();
        assert_eq!(with_data.len(), 1, "{}: {with_data:?}", table.display());
    }
    // The changelog holds every change of it once: 60000 + 20000 updates, 6000
    // deletes, 500 inserts, 9 key changes as a delete and an insert each.
    let changes = crate::postgres::duck_lines(&format!(
        "SELECT _op, count(*) FROM {} WHERE _op <> 'r' GROUP BY 1 ORDER BY 1",
        lake(dir.path(), "acc_log")
    ));
    assert_eq!(changes, vec!["c|509", "d|6009", "u|80000"]);
    // The mirror merged it by deletion vectors, part by part (every old row was
    // replaced, so its files were removed rather than marked).
    assert_eq!(local_dv_usage(&mirror).0, Some((3, 7)));
    assert!(!err.contains("read into memory"), "{err}");
    assert!(
        std::fs::read_dir(dir.path().join("cache/spill"))
            .unwrap()
            .all(|e| {
                let e = e.unwrap().path();
                walk_files(&e) == 0
            }),
        "spill files are removed after the commit"
    );

    // A truncate inside a large transaction: what follows it is the table.
    let m1 = local_version(&mirror).unwrap();
    db.sql(
        "BEGIN;
         UPDATE acc SET bal = bal + 100;
         TRUNCATE acc;
         INSERT INTO acc SELECT g, g % 5, 'after' FROM generate_series(1, 30000) g;
         UPDATE acc SET bal = -1 WHERE id % 4 = 0;
         COMMIT;",
    );
    run_once(dir.path(), &p);
    assert_mirror_equal(&db, dir.path(), "after a truncate inside a spilled transaction");
    let with_data: Vec<_> = entries_since(&mirror, m1)
        .into_iter()
        .filter(|(_, adds)| *adds > 0)
        .collect();
    assert_eq!(with_data.len(), 1, "{with_data:?}");

    // A column added inside one: its parts have two layouts, and the tables widen (read
    // into memory for that, with a warning).
    db.sql(
        "BEGIN;
         UPDATE acc SET bal = bal + 1;
         ALTER TABLE acc ADD COLUMN extra int;
         UPDATE acc SET extra = id * 2 WHERE id % 2 = 0;
         COMMIT;",
    );
    let out = tributary(dir.path(), &["run", p.to_str().unwrap(), "--once"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("read into memory"), "{err}");
    assert_mirror_equal(
        &db,
        dir.path(),
        "after a column added inside a spilled transaction",
    );
    let extra = |from: &str| format!("SELECT count(extra), sum(extra) FROM {from}");
    assert_eq!(
        crate::postgres::duck_lines(&extra(&lake(dir.path(), "acc"))),
        db.sql(&extra("acc"))
    );
}

/// Files below `dir`, recursively.
fn walk_files(dir: &Path) -> usize {
    if dir.is_file() {
        return 1;
    }
    std::fs::read_dir(dir)
        .map(|r| r.map(|e| walk_files(&e.unwrap().path())).sum())
        .unwrap_or(0)
}

/// SIGKILLs while a large transaction is being read, spilled and committed, with small
/// transactions committing around it: after restarts the tables equal Postgres.
#[test]
fn sigkills_during_a_spilled_transaction_leave_the_tables_exact() {
    let (db, dir, p) = accounts("bigkill", 150_000, "1MiB");

    // The worst moment first, deterministically: every part of the mirror's commit is
    // written, the log entry is not (the changelog commits its copy meanwhile).
    db.sql("UPDATE acc SET bal = bal + 100, note = 'round -1'");
    let before = local_version(&dir.path().join("lake/acc"));
    let crashed = std::process::Command::new(bin())
        .args(["run", p.to_str().unwrap(), "--once"])
        .current_dir(dir.path())
        .env("TRIBUTARY_FAILPOINT", "before_commit:1@acc")
        .output()
        .unwrap();
    assert!(!crashed.status.success(), "the failpoint aborts the run");
    assert_eq!(
        local_version(&dir.path().join("lake/acc")),
        before,
        "nothing of it is visible"
    );

    let spawn = || spawn_continuous(dir.path(), &p);
    let mut run = spawn();
    let mut next = random_between();
    for round in 0..3 {
        db.sql(&format!(
            "UPDATE acc SET bal = bal + 1, note = 'small' WHERE id <= 100;
             BEGIN;
             UPDATE acc SET bal = bal + {round} + 1, note = 'round {round}';
             DELETE FROM acc WHERE id % 17 = {round};
             COMMIT;
             UPDATE acc SET bal = bal - 1, note = 'small' WHERE id > 149900;"
        ));
        for _ in 0..2 {
            std::thread::sleep(std::time::Duration::from_millis(next(300, 6_000)));
            assert!(run.try_wait().unwrap().is_none(), "the pipeline died by itself");
            run.kill().unwrap();
            run.wait().unwrap();
            run = spawn();
        }
    }
    run.kill().unwrap();
    run.wait().unwrap();
    run_once(dir.path(), &p);
    assert_mirror_equal(&db, dir.path(), "after SIGKILLs during spilled transactions");
    // Every update of the three large transactions is in the changelog once.
    let rows = crate::postgres::duck_lines(&format!(
        "SELECT count(*) FROM {} WHERE _op = 'u' AND note LIKE 'round _'",
        lake(dir.path(), "acc_log")
    ));
    let expected: i64 = (0..3)
        .map(|round| {
            db.sql(&format!(
                "SELECT count(*) FROM generate_series(1, 150000) g WHERE {}",
                (0..round)
                    .map(|r| format!("g % 17 <> {r}"))
                    .chain(std::iter::once("true".to_string()))
                    .collect::<Vec<_>>()
                    .join(" AND ")
            ))[0]
                .parse::<i64>()
                .unwrap()
        })
        .sum();
    assert_eq!(rows, vec![expected.to_string()]);
}
