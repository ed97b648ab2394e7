//! Helpers shared by the integration tests: running the real binary, and asking DuckDB
//! (the independent reader) about the tables it wrote.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::{Value, json};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tributary")
}

/// An environment variable the local stack provides; tests that need the stack fail
/// loudly without it rather than passing vacuously.
pub fn stack_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests through infra/test.sh (it starts the local stack)")
    })
}

/// A name no other test (or earlier run) uses, for S3 prefixes, topics and slots.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs `tributary ARGS` in `dir`, returning its output.
pub fn tributary(dir: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("tributary runs")
}

/// Runs `tributary run PIPELINE --once` and asserts success.
pub fn run_once(dir: &Path, pipeline: &Path) -> String {
    let out = tributary(dir, &["run", pipeline.to_str().expect("utf-8 path"), "--once"]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "tributary run failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Spawns `tributary run PIPELINE --once` without waiting.
pub fn spawn_once(dir: &Path, pipeline: &Path) -> std::process::Child {
    spawn_quiet(dir, &["run", pipeline.to_str().expect("utf-8 path"), "--once"])
}

/// Spawns a continuous `tributary run PIPELINE` (until killed), output discarded.
pub fn spawn_continuous(dir: &Path, pipeline: &Path) -> std::process::Child {
    spawn_quiet(dir, &["run", pipeline.to_str().expect("utf-8 path")])
}

fn spawn_quiet(dir: &Path, args: &[&str]) -> std::process::Child {
    Command::new(bin())
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("tributary starts")
}

/// Runs `script` (a reader in tests/) with `args`, SQL on stdin, and returns the JSON
/// rows it prints.
fn python_query(reader: &str, script: &str, args: &[String], sql: &str) -> Vec<Vec<Value>> {
    python_json(reader, script, args, sql)
}

/// Runs `tests/{script}` with `args`, `input` on its standard input, and parses the
/// JSON it prints; `what` names it when it fails.
pub fn python_json<T: serde::de::DeserializeOwned>(
    what: &str,
    script: &str,
    args: &[String],
    input: &str,
) -> T {
    use std::io::Write;
    let python = stack_env("TRIBUTARY_PYTHON");
    let mut child = Command::new(python)
        .arg(repo().join("tests").join(script))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write the input");
    let out = child.wait_with_output().expect("the script finishes");
    assert!(
        out.status.success(),
        "{what} failed on:\n{input}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{what} printed no JSON: {e}"))
}

/// Runs SQL in DuckDB with the delta extension and returns the last statement's rows.
pub fn duck(sql: &str) -> Vec<Vec<Value>> {
    python_query("DuckDB", "duckdb_query.py", &[], sql)
}

/// Runs SQL with Python `deltalake` (delta-rs's reader, a second independent one) over
/// `tables` (name, URI) and returns the rows.
pub fn delta_rs(tables: &[(&str, &str)], sql: &str) -> Vec<Vec<Value>> {
    let args: Vec<String> = tables.iter().map(|(n, u)| format!("{n}={u}")).collect();
    python_query("Python deltalake", "deltalake_query.py", &args, sql)
}

/// Runs `tributary maintain PIPELINE --retention 0s` and returns its output.
pub fn maintain_now(dir: &Path, pipeline: &Path) -> String {
    let out = tributary(
        dir,
        &["maintain", pipeline.to_str().unwrap(), "--retention", "0s"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "maintain failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The protocol and the number of `add` actions with a deletion vector in a local
/// Delta table's log (JSON commits only).
pub fn local_dv_usage(table: &Path) -> (Option<(i64, i64)>, usize) {
    let mut protocol = None;
    let mut dv_adds = 0;
    let mut logs: Vec<PathBuf> = std::fs::read_dir(table.join("_delta_log"))
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    logs.retain(|p| p.extension().is_some_and(|e| e == "json"));
    logs.sort();
    for log in logs {
        for line in std::fs::read_to_string(log).unwrap_or_default().lines() {
            let action: Value = serde_json::from_str(line).unwrap_or(Value::Null);
            if let Some(p) = action.get("protocol") {
                protocol = Some((
                    p["minReaderVersion"].as_i64().unwrap_or(0),
                    p["minWriterVersion"].as_i64().unwrap_or(0),
                ));
            }
            if action["add"]["deletionVector"].is_object() {
                dv_adds += 1;
            }
        }
    }
    (protocol, dv_adds)
}

/// Copies a folder tree (a key-index cache, to bring it back stale later).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// A single integer DuckDB computes.
pub fn duck_i64(sql: &str) -> i64 {
    let rows = duck(sql);
    rows[0][0]
        .as_i64()
        .unwrap_or_else(|| panic!("not an integer: {rows:?} from {sql}"))
}

/// `delta_scan('…')` of a table, local path or S3 URL.
pub fn scan(table: &str) -> String {
    format!("delta_scan('{}')", table.replace('\'', "''"))
}

/// Latest committed version of a local Delta table, from its log folder.
pub fn local_version(table: &Path) -> Option<u64> {
    std::fs::read_dir(table.join("_delta_log"))
        .ok()?
        .filter_map(|e| {
            let name = e.ok()?.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".json")?.parse::<u64>().ok()
        })
        .max()
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write file");
    path
}

/// The quickstart pipeline with its sink moved to `uri` (and S3 options when needed),
/// and optionally other settings replaced.
pub fn quickstart_variant(dir: &Path, uri: &str, replace: &[(&str, &str)]) -> PathBuf {
    let mut text = std::fs::read_to_string(repo().join("pipelines/quickstart.toml")).expect("quickstart");
    text = text.replace("uri = \"./lake\"", &format!("uri = \"{uri}\""));
    if uri.starts_with("s3://") {
        text = text.replace(
            "[sink.storage]",
            "[sink.storage]\nAWS_ENDPOINT_URL = \"${AWS_ENDPOINT_URL}\"\nAWS_ALLOW_HTTP = \"true\"",
        );
    }
    for (from, to) in replace {
        assert!(text.contains(from), "quickstart.toml no longer contains {from:?}");
        text = text.replace(from, to);
    }
    write_file(dir, "pipeline.toml", &text)
}

/// Asserts that the aggregate equals DuckDB's own tumbling count over the raw table:
/// same rows, each once.
pub fn assert_page_views_match_raw(raw: &str, agg: &str) {
    let expected = format!(
        "SELECT (epoch_us(event_timestamp) // 60000000) * 60000000 AS ws, page, count(*) AS n \
         FROM {} GROUP BY ALL",
        scan(raw)
    );
    let actual = format!(
        "SELECT epoch_us(window_start) AS ws, page, view_count AS n FROM {} \
         WHERE epoch_us(window_end) - epoch_us(window_start) = 60000000",
        scan(agg)
    );
    let rows = duck(&format!(
        "SELECT (SELECT count(*) FROM ({expected})), (SELECT count(*) FROM {}), \
                (SELECT count(*) FROM (({expected}) EXCEPT ({actual}))), \
                (SELECT count(*) FROM (({actual}) EXCEPT ({expected}))), \
                (SELECT count(*) FROM (SELECT window_start, page FROM {} GROUP BY ALL HAVING count(*) > 1))",
        scan(agg),
        scan(agg)
    ));
    let r = &rows[0];
    assert!(r[0].as_i64().unwrap_or(0) > 0, "no windows at all: {r:?}");
    assert_eq!(
        r[0], r[1],
        "window count differs (DuckDB vs aggregate table): {r:?}"
    );
    assert_eq!(
        r[2], 0,
        "windows DuckDB computes that the table lacks or has wrong: {r:?}"
    );
    assert_eq!(
        r[3], 0,
        "windows in the table that DuckDB does not compute: {r:?}"
    );
    assert_eq!(r[4], 0, "duplicate (window, page) rows: {r:?}");
}

/// Asserts DuckDB finds the same rows in `table` (query `actual`) as `expected`
/// computes, each once.
pub fn assert_same_rows(what: &str, expected: &str, actual: &str) {
    let rows = duck(&format!(
        "WITH e AS ({expected}), t AS ({actual}) \
         SELECT (SELECT count(*) FROM e), (SELECT count(*) FROM t), \
                (SELECT count(*) FROM (SELECT * FROM e EXCEPT ALL SELECT * FROM t)), \
                (SELECT count(*) FROM (SELECT * FROM t EXCEPT ALL SELECT * FROM e))"
    ));
    let r = &rows[0];
    assert!(
        r[0].as_i64().unwrap_or(0) > 0,
        "{what}: DuckDB computes no rows: {r:?}"
    );
    assert_eq!(r[0], r[1], "{what}: row counts differ (DuckDB, table): {r:?}");
    assert_eq!(
        &r[2..],
        &[json!(0), json!(0)],
        "{what}: rows differ (missing, extra): {r:?}"
    );
}

/// Asserts two local Delta tables hold the same rows, each as often.
pub fn assert_tables_equal(a: &Path, b: &Path, what: &str) {
    let (a, b) = (scan(a.to_str().unwrap()), scan(b.to_str().unwrap()));
    assert_same_rows(what, &format!("SELECT * FROM {a}"), &format!("SELECT * FROM {b}"));
}

/// Kills (SIGKILL) a `--once` run of `pipeline` once the local table `table` (relative
/// to `dir`) has reached `commits` versions, after a further pseudo-random delay of up
/// to `jitter_ms`, so the kill lands at different instructions each time.
pub fn kill_after_commits(dir: &Path, pipeline: &Path, table: &str, commits: u64, jitter_ms: u32) {
    use std::time::{Duration, Instant};
    let table = dir.join(table);
    let mut child = spawn_once(dir, pipeline);
    let deadline = Instant::now() + Duration::from_secs(300);
    while local_version(&table).is_none_or(|v| v < commits) {
        if child.try_wait().unwrap().is_some() {
            panic!("the run finished before reaching {commits} commits; make the input larger");
        }
        assert!(Instant::now() < deadline, "no progress within 300s");
        std::thread::sleep(Duration::from_millis(5));
    }
    let jitter = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        % jitter_ms;
    std::thread::sleep(Duration::from_millis(u64::from(jitter)));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

/// Live files of a local table, as (path, DV pathOrInlineDv), replayed from its JSON
/// commits (per commit: removes, then adds, as the protocol reconciles them).
pub fn live_files(table: &Path) -> HashSet<(String, Option<String>)> {
    let mut logs: Vec<PathBuf> = std::fs::read_dir(table.join("_delta_log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    logs.sort();
    let mut live = HashSet::new();
    for log in logs {
        let actions: Vec<Value> = std::fs::read_to_string(log)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let entry = |a: &Value| {
            (
                a["path"].as_str().unwrap().to_string(),
                a["deletionVector"]["pathOrInlineDv"].as_str().map(str::to_string),
            )
        };
        for a in actions.iter().filter(|a| a["remove"].is_object()) {
            live.remove(&entry(&a["remove"]));
        }
        for a in actions.iter().filter(|a| a["add"].is_object()) {
            live.insert(entry(&a["add"]));
        }
    }
    live
}

/// A source of numbers in `lo..hi`, seeded from the clock (xorshift): for kill timings.
pub fn random_between() -> impl FnMut(u64, u64) -> u64 {
    let mut rng = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
        | 1;
    move |lo: u64, hi: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        lo + rng % (hi - lo)
    }
}
