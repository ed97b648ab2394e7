//! Background compaction (`[sink.compaction]`): a continuous run keeps a table's file
//! count under its policy while DuckDB sees every row exactly once; and a compaction
//! that beats a mirror's commit to the log makes that commit start over from the new
//! snapshot instead of bringing back rows the compaction moved, and rows a mirror deletes
//! while a compaction rewrites their files stay deleted; the same background task
//! deletes expired log entries. Postgres mirrors racing
//! compaction under SIGKILLs are in `postgres::pgbench_with_sigkills_ends_equal_to_postgres`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deltalake::arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use serde_json::Value;
use tributary::config::TableMode;
use tributary::sink::compact::{CompactionPolicy, Gate, Limits, compact};
use tributary::sink::purge;
use tributary::sink::{DeltaSink, IndexOptions, Sink, TableOptions, open_table};

use crate::pg::txn_version;
use crate::sink::{batch, commit};
use crate::support::*;

/// One change per id: `op` for each, values `v`.
fn changes(ids: &[i64], op: &str, v: i64, first_position: i64) -> RecordBatch {
    let n = ids.len();
    let columns: Vec<(&str, ArrayRef)> = vec![
        ("_op", Arc::new(StringArray::from(vec![op; n]))),
        (
            "_position",
            Arc::new(Int64Array::from_iter_values(
                first_position..first_position + n as i64,
            )),
        ),
        ("id", Arc::new(Int64Array::from(ids.to_vec()))),
        ("v", Arc::new(Int64Array::from(vec![v; n]))),
    ];
    batch(columns)
}

/// A deletion-vector mirror keyed by `id` in `dir/m`.
async fn mirror(dir: &std::path::Path) -> (DeltaSink, url::Url) {
    mirror_gated(dir, None).await
}

/// The same, its key index following the moves of compaction rounds under `gate`.
async fn mirror_gated(dir: &std::path::Path, gate: Option<&Gate>) -> (DeltaSink, url::Url) {
    let mut options = TableOptions::append(100);
    options.mode = TableMode::Mirror;
    options.key = vec!["id".into()];
    options.index = Some(IndexOptions {
        cache_dir: dir.join("cache"),
        cache_bytes: 4 << 20,
        moves: gate.map(Gate::moves),
    });
    let url = url::Url::from_directory_path(dir.join("m")).unwrap();
    let sink = DeltaSink::open("m", url.clone(), Default::default(), "p", &["s".into()], options)
        .await
        .unwrap();
    (sink, url)
}

/// Asserts DuckDB reads the mirror at `table` as `model` (id → v), every key once;
/// returns the rows.
fn assert_duckdb_equals(table: &std::path::Path, model: &BTreeMap<i64, i64>) -> Vec<Vec<Value>> {
    let sql = format!("SELECT id, v FROM {} ORDER BY id", scan(table.to_str().unwrap()));
    let want: Vec<Vec<Value>> = model
        .iter()
        .map(|(k, v)| vec![Value::from(*k), Value::from(*v)])
        .collect();
    assert_eq!(duck(&sql), want, "DuckDB: every key once, as the model has it");
    want
}

/// `files` commits of ten new keys each (one small file each), values 0: the model
/// (id → v) and the next position.
async fn small_files(sink: &mut DeltaSink, files: i64) -> (BTreeMap<i64, i64>, i64) {
    let mut model = BTreeMap::new();
    let mut position = 0;
    for f in 0..files {
        let ids: Vec<i64> = (f * 10 + 1..=f * 10 + 10).collect();
        sink.commit(commit(vec![changes(&ids, "c", 0, position)], position + 10))
            .await
            .unwrap();
        position += 10;
        model.extend(ids.iter().map(|id| (*id, 0)));
    }
    (model, position)
}

#[tokio::test]
async fn a_compaction_that_wins_makes_a_mirror_commit_start_over() {
    let dir = tempfile::tempdir().unwrap();
    let (mut sink, url) = mirror(dir.path()).await;
    // Five small files of ten keys each; the model is id → v.
    let (mut model, position) = small_files(&mut sink, 5).await;
    // Another handle compacts them; the sink's snapshot still names the old files.
    let policy = CompactionPolicy {
        every: Duration::from_secs(1),
        min_files: 3,
        file_size: 8 << 20,
    };
    let table = open_table(url, Default::default()).await.unwrap();
    let (_, report) = compact(
        table,
        &policy,
        Limits {
            rounds: 8,
            files: usize::MAX,
            small_below: u64::MAX,
        },
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        (report.rounds, report.files_removed, report.rows_written),
        (1, 5, 50)
    );

    // Update a key of the first file and delete one of the third: both files are gone.
    let mut batch = changes(&[3, 27], "u", 7, position);
    batch = RecordBatch::try_new(
        batch.schema(),
        vec![
            Arc::new(StringArray::from(vec!["u", "d"])),
            batch.column(1).clone(),
            batch.column(2).clone(),
            batch.column(3).clone(),
        ],
    )
    .unwrap();
    let change = commit(vec![batch], position + 2);
    let first = sink.commit(change.clone()).await;
    let err = first.expect_err("a commit over files a compaction replaced must not land");
    assert!(err.is_transient(), "the runtime retries it: {err}");
    // The retry (as the runtime's retry policy does it) starts from the new snapshot.
    sink.commit(change).await.unwrap();
    model.insert(3, 7);
    model.remove(&27);

    let table = dir.path().join("m");
    let want = assert_duckdb_equals(&table, &model);
    let path = table.to_str().unwrap().to_string();
    assert_eq!(
        delta_rs(&[("m", &path)], "SELECT id, v FROM m ORDER BY id"),
        want,
        "Python deltalake agrees"
    );
}

#[tokio::test]
async fn rows_a_mirror_deletes_while_their_files_are_rewritten_stay_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let (mut sink, url) = mirror(dir.path()).await;
    let (mut model, mut position) = small_files(&mut sink, 4).await;
    // Key 12 was already deleted when the compaction read its file.
    sink.commit(commit(vec![changes(&[12], "d", 0, position)], position + 1))
        .await
        .unwrap();
    position += 1;
    model.remove(&12);
    // A compaction reads and rewrites every file ...
    let table = open_table(url.clone(), Default::default()).await.unwrap();
    let files = purge::live_adds(&table, |_| true).unwrap();
    let prepared = purge::prepare(&table, &files, 8 << 20).await.unwrap();
    // ... while the mirror deletes rows of three of them and updates another.
    let gate = Gate::default();
    {
        let (_entered, _) = gate.enter(0).await;
        let ops = RecordBatch::try_new(
            changes(&[1, 15, 33, 40], "d", 9, position).schema(),
            vec![
                Arc::new(StringArray::from(vec!["d", "d", "d", "u"])),
                Arc::new(Int64Array::from_iter_values(position..position + 4)),
                Arc::new(Int64Array::from(vec![1, 15, 33, 40])),
                Arc::new(Int64Array::from(vec![9, 9, 9, 9])),
            ],
        )
        .unwrap();
        sink.commit(commit(vec![ops], position + 4)).await.unwrap();
        position += 4;
    }
    for id in [1, 15, 33] {
        model.remove(&id);
    }
    model.insert(40, 9);
    // The compaction commits after them: the rows they deleted stay deleted.
    let (table, report) = prepared.commit(table, Some(&gate)).await.unwrap();
    assert_eq!((report.files_written, report.rows_written), (1, 39));
    let live = purge::live_adds(&table, |_| true).unwrap();
    let rewritten: Vec<_> = live.iter().filter(|a| a.deletion_vector.is_some()).collect();
    assert_eq!(rewritten.len(), 1, "the new file carries the deletions: {live:?}");
    assert_eq!(
        rewritten[0].deletion_vector.as_ref().unwrap().cardinality,
        4,
        "1, 15, 33 and 40's old row"
    );

    // The mirror goes on over the compacted table (its gate epoch moved).
    let (entered, moved) = gate.enter(0).await;
    assert_eq!(moved, Some(1));
    sink.refresh().await.unwrap();
    drop(entered);
    sink.commit(commit(vec![changes(&[2, 40], "u", 5, position)], position + 2))
        .await
        .unwrap();
    model.insert(2, 5);
    model.insert(40, 5);
    sink.commit(commit(vec![changes(&[41], "c", 1, position + 2)], position + 3))
        .await
        .unwrap();
    model.insert(41, 1);

    let path = dir.path().join("m");
    let want = assert_duckdb_equals(&path, &model);
    assert_eq!(
        delta_rs(
            &[("m", path.to_str().unwrap())],
            "SELECT id, v FROM m ORDER BY id"
        ),
        want,
        "Python deltalake agrees"
    );
}

#[test]
fn a_continuous_run_keeps_files_under_the_policy_and_every_row_once() {
    const MIN_FILES: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    let pipeline = write_file(
        dir.path(),
        "pipeline.toml",
        &format!(
            "name = \"compacting\"\n[source]\nkind = \"generator\"\nrate = 4000\nseed = 7\n\
             [sink]\nuri = \"./lake\"\n[sink.compaction]\nevery = \"1s\"\nmin_files = {MIN_FILES}\n\
             [batch]\nmin_interval = \"250ms\"\n\
             [[tables]]\nname = \"clicks\"\nfrom = \"clickstream\"\n"
        ),
    );
    let mut child = start(dir.path(), &pipeline);
    let table = dir.path().join("lake").join("clicks");
    let started = Instant::now();
    // At most 4 commits a second (the default min_interval): between two looks a second apart (plus
    // the look itself) a few files arrive on top of the fewer than MIN_FILES small
    // files a look leaves.
    let bound = MIN_FILES + 12;
    let mut most = 0;
    while started.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(300));
        assert!(child.try_wait().unwrap().is_none(), "the run died");
        if started.elapsed() > Duration::from_secs(4) && table.join("_delta_log").exists() {
            most = most.max(live_files(&table).len());
        }
    }
    let log = stop(dir.path(), child);
    let added = std::fs::read_dir(table.join("_delta_log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .map(|text| {
            text.lines()
                .filter(|l| l.contains("\"add\"") && l.contains("\"dataChange\":true"))
                .count()
        })
        .sum::<usize>();
    assert!(
        added > 3 * bound,
        "only {added} files written: the policy was never tested\n{log}"
    );
    assert!(
        most <= bound,
        "{most} live files at one point, over {bound} (min_files {MIN_FILES} + a second of commits)\n{log}"
    );
    assert!(log.contains("compacted small files"), "{log}");
    let committed = txn_version(&table, "compacting/clickstream").unwrap();
    assert_events_once(&table, committed);
    assert!(committed > 20_000, "the run generated {committed} events");
}

#[test]
fn a_continuous_run_deletes_expired_log_entries_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = |events: &str, compaction: &str| {
        format!(
            "name = \"expiring\"\n[source]\nkind = \"generator\"\nrate = 4000\nseed = 3\n{events}\n\
             [sink]\nuri = \"./lake\"\ncheckpoint_every = 2\n{compaction}\n\
             [batch]\nmax_rows = 200\nmin_interval = \"100ms\"\n\
             [[tables]]\nname = \"clicks\"\nfrom = \"clickstream\"\n"
        )
    };
    // A scheduled run creates the table and its history; its commits write checkpoints
    // but never find anything expired (the default retention is 30 days). Then the
    // retention drops to 2 seconds: short enough to expire version 0 during the run,
    // long enough that no commit the writer is still reading expires under it (with 0
    // seconds the cleanup could delete a version between its listing and its read).
    let once = write_file(dir.path(), "once.toml", &pipeline("events = 2000", ""));
    run_once(dir.path(), &once);
    let table = dir.path().join("lake").join("clicks");
    let first = table.join("_delta_log").join(format!("{:020}.json", 0));
    assert!(first.exists());
    let python = stack_env("TRIBUTARY_PYTHON");
    let altered = std::process::Command::new(&python)
        .args([
            "-c",
            "import sys; from deltalake import DeltaTable, PostCommitHookProperties; \
             DeltaTable(sys.argv[1]).alter.set_table_properties(\
             {'delta.logRetentionDuration': 'interval 2 seconds'}, \
             post_commithook_properties=PostCommitHookProperties(cleanup_expired_logs=False))",
            table.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        altered.status.success(),
        "{}",
        String::from_utf8_lossy(&altered.stderr)
    );

    // Old enough to expire at the run's first cleanup.
    std::thread::sleep(Duration::from_secs(3));
    let continuous = write_file(
        dir.path(),
        "continuous.toml",
        &pipeline("", "[sink.compaction]\nevery = \"1s\""),
    );
    let mut child = start(dir.path(), &continuous);
    let started = Instant::now();
    while first.exists() && started.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(200));
        if let Some(status) = child.try_wait().unwrap() {
            let log = std::fs::read_to_string(dir.path().join("run.log")).unwrap_or_default();
            panic!("the run died ({status}):\n{log}");
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    let log = stop(dir.path(), child);
    assert!(!first.exists(), "version 0 is still in the log\n{log}");
    assert!(log.contains("deleted expired log entries"), "{log}");
    // Readers start from a checkpoint: every event up to the committed position, once
    // (less one: position 2000 was the bounded run's end-of-input marker, no event).
    let committed = txn_version(&table, "expiring/clickstream").unwrap();
    assert_events_once(&table, committed - 1);
    assert!(
        committed > 2001,
        "the continuous run committed nothing: {committed}"
    );
}

/// Starts a continuous run of `pipeline` in `dir`, logging to `run.log`.
fn start(dir: &std::path::Path, pipeline: &std::path::Path) -> std::process::Child {
    std::process::Command::new(bin())
        .args(["run", pipeline.to_str().unwrap()])
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("run.log")).unwrap())
        .spawn()
        .unwrap()
}

/// Stops `child` with SIGTERM; it must exit 0. Its log.
fn stop(dir: &std::path::Path, mut child: std::process::Child) -> String {
    std::process::Command::new("kill")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
    std::fs::read_to_string(dir.join("run.log")).unwrap()
}

/// DuckDB reads `events` rows from `table`, each event once.
fn assert_events_once(table: &std::path::Path, events: i64) {
    let row = &duck(&format!(
        "SELECT count(*), count(DISTINCT event_id) FROM {}",
        scan(table.to_str().unwrap())
    ))[0];
    assert_eq!(
        (row[0].as_i64(), row[1].as_i64()),
        (Some(events), Some(events)),
        "every generated event up to the committed position, once"
    );
}

/// A mirror commit as a running pipeline makes it: in turn with compaction rounds,
/// re-reading the table when one committed.
async fn commit_in_turn(sink: &mut DeltaSink, gate: &Gate, seen: &mut u64, c: tributary::sink::Commit) {
    let (_turn, compacted) = gate.enter(*seen).await;
    if let Some(epoch) = compacted {
        sink.refresh().await.unwrap();
        *seen = epoch;
    }
    sink.commit(c).await.unwrap();
}

/// Random creates, updates and deletes of up to `n` keys among 1..=300, one change per
/// key, applied to `model`; `v` is the new value.
fn random_changes(
    model: &mut BTreeMap<i64, i64>,
    rng: &mut u64,
    n: usize,
    v: i64,
    position: i64,
) -> RecordBatch {
    let mut next = |m: u64| {
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        *rng % m
    };
    let ids: std::collections::BTreeSet<i64> = (0..n).map(|_| next(300) as i64 + 1).collect();
    let mut ops = Vec::with_capacity(ids.len());
    for id in &ids {
        let op = match model.contains_key(id) {
            true if next(3) == 0 => "d",
            true => "u",
            false => "c",
        };
        if op == "d" {
            model.remove(id);
        } else {
            model.insert(*id, v);
        }
        ops.push(op);
    }
    let ids: Vec<i64> = ids.into_iter().collect();
    let mut batch = changes(&ids, "c", v, position);
    let mut columns = batch.columns().to_vec();
    columns[0] = Arc::new(StringArray::from(ops));
    batch = RecordBatch::try_new(batch.schema(), columns).unwrap();
    batch
}

#[tokio::test]
async fn a_mirror_index_follows_compaction_rounds_without_reading_their_files() {
    use tributary::sink::key_index::{KeyCodec, KeyIndex, dir_for};
    let dir = tempfile::tempdir().unwrap();
    let gate = Gate::default();
    let (mut sink, url) = mirror_gated(dir.path(), Some(&gate)).await;
    let mut model = BTreeMap::new();
    let (mut rng, mut seen, mut position) = (0x9e37_79b9_7f4a_7c15u64, 0u64, 0i64);
    let mut rounds = 0;
    // The last step is a mirror commit, which takes the last round's move.
    for step in 0..25 {
        let batch = random_changes(&mut model, &mut rng, 40, step, position);
        let n = batch.num_rows() as i64;
        commit_in_turn(&mut sink, &gate, &mut seen, commit(vec![batch], position + n)).await;
        position += n;
        if step % 4 == 3 {
            // A round rewrites every file (the last round's output too, so redirects
            // chain), while the mirror deletes and updates rows of them.
            let table = open_table(url.clone(), Default::default()).await.unwrap();
            let files = purge::live_adds(&table, |_| true).unwrap();
            let prepared = purge::prepare(&table, &files, 8 << 20).await.unwrap();
            let batch = random_changes(&mut model, &mut rng, 30, 100 + step, position);
            let n = batch.num_rows() as i64;
            commit_in_turn(&mut sink, &gate, &mut seen, commit(vec![batch], position + n)).await;
            position += n;
            match prepared.commit(table, Some(&gate)).await {
                Ok((_, report)) => {
                    assert_eq!(report.files_written, 1);
                    rounds += 1;
                }
                // The mirror deleted every row of a file, and removed it: the round
                // gives up (the next tries again).
                Err(e) => assert!(e.to_string().contains("removed while it was rewritten"), "{e}"),
            }
        }
    }
    assert!(rounds >= 3, "{rounds} of 6 rounds committed");
    assert_duckdb_equals(&dir.path().join("m"), &model);

    // The index redirected the rounds' rows, and finds each live key where an index
    // rebuilt from the table's files finds it.
    drop(sink);
    let codec = KeyCodec::new(vec![Arc::new(deltalake::arrow::datatypes::Field::new(
        "id",
        deltalake::arrow::datatypes::DataType::Int64,
        true,
    ))])
    .unwrap();
    let keys = codec
        .encode(&changes(&model.keys().copied().collect::<Vec<_>>(), "c", 0, 0))
        .unwrap();
    let table = open_table(url.clone(), Default::default()).await.unwrap();
    let positions = |index: &KeyIndex| -> Vec<Option<(String, u64)>> {
        index
            .lookup(&keys)
            .unwrap()
            .into_iter()
            .map(|p| p.and_then(|p| Some((index.path_of(p.file)?.to_string(), p.row))))
            .collect()
    };
    let mut rebuilt = KeyIndex::open(&dir.path().join("rebuilt"), 1 << 20).unwrap();
    rebuilt.sync(&table, &codec).await.unwrap();
    let truth = positions(&rebuilt);
    assert!(truth.iter().all(Option::is_some));
    let kept = dir_for(&dir.path().join("cache"), &url);
    let mut index = KeyIndex::open(&kept, 1 << 20).unwrap();
    let report = index.sync(&table, &codec).await.unwrap();
    assert!(index.redirects() > 0, "{rounds} rounds, no redirect kept");
    assert_eq!((report.rebuilt, report.files_indexed), (false, 0), "{report:?}");
    assert_eq!(positions(&index), truth);

    // Past its cap, the redirects are collapsed by indexing the file they lead into.
    drop(index);
    let mut index = KeyIndex::open(&kept, 1 << 20).unwrap().with_max_redirects(2);
    let report = index.sync(&table, &codec).await.unwrap();
    assert!(report.rows_indexed > 0 && index.redirects() <= 2, "{report:?}");
    assert_eq!(positions(&index), truth);
}
