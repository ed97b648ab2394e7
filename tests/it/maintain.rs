//! A crash between writing data files and committing them, a restart, then
//! `maintain`: no row lost or doubled, orphans removed, fewer files, same results.
//! And two processes appending to one S3 table at once lose no commit.

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;

use crate::support::*;

const EVENTS: i64 = 20_000;

fn pipeline(dir: &Path, name: &str, uri: &str, seed: u32, extra: &str) -> std::path::PathBuf {
    let storage = if uri.starts_with("s3://") {
        "AWS_ENDPOINT_URL = \"${AWS_ENDPOINT_URL}\"\nAWS_ALLOW_HTTP = \"true\""
    } else {
        ""
    };
    write_file(
        dir,
        &format!("{name}.toml"),
        &format!(
            r#"
name = "{name}"
[source]
kind = "generator"
events = {EVENTS}
seed = {seed}
[sink]
uri = "{uri}"
[sink.storage]
{storage}
[batch]
max_rows = 1000
{extra}
"#
        ),
    )
}

/// Data files in a local table folder, and those its log still references.
fn files(table: &Path) -> (HashSet<String>, HashSet<String>) {
    let on_disk = std::fs::read_dir(table)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            name.ends_with(".parquet").then_some(name)
        })
        .collect();
    let mut live = HashSet::new();
    let mut versions: Vec<_> = std::fs::read_dir(table.join("_delta_log"))
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            (p.extension()? == "json").then_some(p)
        })
        .collect();
    versions.sort();
    for v in versions {
        for line in std::fs::read_to_string(v).unwrap().lines() {
            let action: serde_json::Value = serde_json::from_str(line).unwrap();
            if let Some(p) = action["add"]["path"].as_str() {
                live.insert(p.to_string());
            }
            if let Some(p) = action["remove"]["path"].as_str() {
                live.remove(p);
            }
        }
    }
    (on_disk, live)
}

#[test]
fn crash_before_commit_then_restart_and_maintain() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let tables = r#"
[[tables]]
name = "raw"
from = "clickstream"
[[tables]]
name = "raw_log"
from = "clickstream"
mode = "changelog"
"#;
    let p = pipeline(dir.path(), "crashy", lake.to_str().unwrap(), 3, tables);
    // Abort before raw_log's third commit, after raw's: raw ends one micro-batch
    // ahead and raw_log's data files are written but never committed.
    let out = Command::new(bin())
        .args(["run", p.to_str().unwrap(), "--once"])
        .env("TRIBUTARY_FAILPOINT", "before_commit:3@raw_log")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success(), "the failpoint did not fire");
    let (disk, live) = files(&lake.join("raw_log"));
    assert!(
        disk.len() > live.len(),
        "no orphan data file after the crash: {disk:?} vs {live:?}"
    );

    let stdout = run_once(dir.path(), &p);
    assert!(
        stdout.contains("1000 records already there"),
        "the table that was ahead skips the re-delivered micro-batch:\n{stdout}"
    );
    let exact = || {
        for t in ["raw", "raw_log"] {
            let path = lake.join(t);
            let r = &duck(&format!(
                "SELECT count(*), count(DISTINCT event_id) FROM {}",
                scan(path.to_str().unwrap())
            ))[0];
            assert_eq!(
                (r[0].as_i64(), r[1].as_i64()),
                (Some(EVENTS), Some(EVENTS)),
                "{t}"
            );
        }
    };
    exact();
    let summary = |t: &str| {
        duck(&format!(
            "SELECT count(*), sum(hash(event_id, page, user_id)) FROM {}",
            scan(lake.join(t).to_str().unwrap())
        ))
    };
    let before = (summary("raw"), summary("raw_log"));

    maintain_now(dir.path(), &p);
    for t in ["raw", "raw_log"] {
        let (disk, live) = files(&lake.join(t));
        assert_eq!(
            disk, live,
            "{t}: files on disk are exactly the live ones after maintain"
        );
        assert!(live.len() < 21, "{t}: maintain compacted {} files", live.len());
    }
    assert_eq!(
        (summary("raw"), summary("raw_log")),
        before,
        "maintain changed results"
    );
    exact();
    // A run after maintenance still knows where it is.
    let out = run_once(dir.path(), &p);
    assert!(out.contains("+0 rows in 0 commits"), "{out}");
}

#[test]
fn two_processes_append_to_one_s3_table_without_losing_a_commit() {
    stack_env("AWS_ENDPOINT_URL");
    let dir = tempfile::tempdir().unwrap();
    let root = format!("s3://tributary-test/{}", unique("concurrent"));
    let table = "[[tables]]\nname = \"shared\"\nfrom = \"clickstream\"\n";
    let a = pipeline(dir.path(), "writer-a", &root, 1, table);
    let b = pipeline(dir.path(), "writer-b", &root, 2, table);
    let run = |p: &Path| {
        Command::new(bin())
            .args(["run", p.to_str().unwrap(), "--once"])
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    let (ra, rb) = std::thread::scope(|s| {
        let ha = s.spawn(|| run(&a));
        let hb = s.spawn(|| run(&b));
        (ha.join().unwrap(), hb.join().unwrap())
    });
    for r in [&ra, &rb] {
        assert!(
            r.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&r.stdout),
            String::from_utf8_lossy(&r.stderr)
        );
    }
    let shared = format!("{root}/shared");
    // Each writer: 20 micro-batches of 1000 rows plus its end-of-input marker.
    assert_eq!(
        duck_i64(&format!(
            "SELECT count(*) FROM glob('{shared}/_delta_log/*.json')"
        )),
        42,
        "every commit of both writers is a version"
    );
    assert_eq!(
        duck_i64(&format!("SELECT count(*) FROM {}", scan(&shared))),
        2 * EVENTS
    );
}
