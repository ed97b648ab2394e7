//! The Delta sink through its library API: schema evolution, incompatible changes and
//! a changed mirror key, checked with DuckDB.

use std::collections::BTreeMap;
use std::sync::Arc;

use tributary::config::TableMode;
use tributary::sink::{Commit, Committed, DeltaSink, IndexOptions, Sink, SinkError, TableOptions};

use deltalake::arrow::array::{ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray};
use deltalake::arrow::datatypes::{Field, Schema};

use crate::support::*;

/// A batch of nullable columns (shared with the compaction tests).
pub(crate) fn batch(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
    let fields: Vec<Field> = columns
        .iter()
        .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
        .collect();
    RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns.into_iter().map(|(_, a)| a).collect(),
    )
    .unwrap()
}

/// DuckDB rows as JSON arrays, comparable with `json!([...])`.
fn rows(sql: &str) -> Vec<serde_json::Value> {
    duck(sql).into_iter().map(serde_json::Value::Array).collect()
}

/// A commit of `batches` completing shard `s` up to `next`.
pub(crate) fn commit(batches: Vec<RecordBatch>, next: i64) -> Commit {
    Commit {
        batches,
        parts: None,
        progress: vec![("s".to_string(), next)],
        info: BTreeMap::new(),
        replace: false,
        staged: None,
    }
}

async fn open(dir: &std::path::Path, name: &str, mode: TableMode, key: &[&str]) -> DeltaSink {
    let mut options = TableOptions::append(10);
    options.mode = mode;
    options.key = key.iter().map(|k| k.to_string()).collect();
    // Mirrors merge by deletion vectors, their key index under the test's folder.
    options.index = Some(IndexOptions {
        cache_dir: dir.join("cache"),
        cache_bytes: 4 << 20,
        moves: None,
    });
    let url = url::Url::from_directory_path(dir.join(name)).unwrap();
    DeltaSink::open(name, url, Default::default(), "p", &["s".to_string()], options)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_new_column_is_nullable_and_a_narrowed_type_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = open(dir.path(), "events", TableMode::Append, &[]).await;
    let first = batch(vec![
        ("id", Arc::new(Int64Array::from(vec![1, 2]))),
        ("name", Arc::new(StringArray::from(vec!["a", "b"]))),
    ]);
    assert!(matches!(
        sink.commit(commit(vec![first], 2)).await.unwrap(),
        Committed::Version(0)
    ));
    // id arrives narrower (fits the table's int64) and email is new.
    let second = batch(vec![
        ("id", Arc::new(Int32Array::from(vec![3]))),
        ("email", Arc::new(StringArray::from(vec!["c@x"]))),
    ]);
    sink.commit(commit(vec![second], 3)).await.unwrap();
    let table = dir.path().join("events");
    assert_eq!(
        rows(&format!(
            "SELECT id, name, email FROM {} ORDER BY id",
            scan(table.to_str().unwrap())
        )),
        vec![
            serde_json::json!([1, "a", null]),
            serde_json::json!([2, "b", null]),
            serde_json::json!([3, null, "c@x"]),
        ]
    );
    // A value the table's column cannot hold: refused, naming table, column and types.
    let text_id = batch(vec![("id", Arc::new(StringArray::from(vec!["x"])) as ArrayRef)]);
    let err = sink.commit(commit(vec![text_id], 4)).await.unwrap_err();
    assert!(matches!(err, SinkError::Incompatible { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "table events: incompatible schema change: column id: the table has Int64, the records have Utf8"
    );
    assert_eq!(
        sink.committed().get("s"),
        Some(3),
        "a refused commit adds no progress"
    );
}

#[tokio::test]
async fn a_mirror_evolves_in_its_merge_and_keeps_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = open(dir.path(), "accounts", TableMode::Mirror, &["id"]).await;
    let ops = |v: Vec<&str>| Arc::new(StringArray::from(v)) as ArrayRef;
    let positions = |v: Vec<i64>| Arc::new(Int64Array::from(v)) as ArrayRef;
    let first = batch(vec![
        ("_op", ops(vec!["c", "c"])),
        ("_position", positions(vec![0, 1])),
        ("id", Arc::new(Int64Array::from(vec![1, 2]))),
        ("name", Arc::new(StringArray::from(vec!["a", "b"]))),
    ]);
    sink.commit(commit(vec![first], 2)).await.unwrap();
    let second = batch(vec![
        ("_op", ops(vec!["u", "d", "c"])),
        ("_position", positions(vec![2, 3, 4])),
        ("id", Arc::new(Int64Array::from(vec![1, 2, 3]))),
        ("name", Arc::new(StringArray::from(vec!["a2", "b", "c"]))),
        (
            "tier",
            Arc::new(StringArray::from(vec![Some("gold"), None, Some("free")])),
        ),
    ]);
    sink.commit(commit(vec![second], 5)).await.unwrap();
    let path = dir.path().join("accounts");
    let table = path.to_str().unwrap();
    assert_eq!(
        rows(&format!(
            "SELECT id, name, tier, _position FROM {} ORDER BY id",
            scan(table)
        )),
        vec![
            serde_json::json!([1, "a2", "gold", 2]),
            serde_json::json!([3, "c", "free", 4])
        ]
    );
    let columns = duck(&format!(
        "SELECT count(*) FROM (DESCRIBE SELECT * FROM {})",
        scan(table)
    ));
    assert_eq!(
        columns[0][0], 4,
        "id, name, tier, _position (+_commit_ts absent here): {columns:?}"
    );
    // The table merges by deletion vectors; the batch that added `tier` went through
    // MERGE (over the deletion vectors of earlier commits), and the next goes back.
    let third = batch(vec![
        ("_op", ops(vec!["u", "d", "c", "u"])),
        ("_position", positions(vec![5, 6, 7, 8])),
        ("id", Arc::new(Int64Array::from(vec![3, 1, 4, 3]))),
        ("name", Arc::new(StringArray::from(vec!["c2", "a2", "d", "c3"]))),
        (
            "tier",
            Arc::new(StringArray::from(vec![None, None, Some("x"), Some("y")])),
        ),
    ]);
    sink.commit(commit(vec![third], 9)).await.unwrap();
    let fourth = batch(vec![
        ("_op", ops(vec!["u"])),
        ("_position", positions(vec![9])),
        ("id", Arc::new(Int64Array::from(vec![4]))),
        ("name", Arc::new(StringArray::from(vec!["d2"]))),
        ("tier", Arc::new(StringArray::from(vec![Some("z")]))),
    ]);
    sink.commit(commit(vec![fourth], 10)).await.unwrap();
    assert_eq!(
        rows(&format!("SELECT id, name, tier FROM {} ORDER BY id", scan(table))),
        vec![
            serde_json::json!([3, "c3", "y"]),
            serde_json::json!([4, "d2", "z"])
        ]
    );
    let (protocol, dv_adds) = local_dv_usage(&path);
    assert_eq!(protocol, Some((3, 7)));
    // The third commit deletes both rows of the file MERGE wrote (so removes it), the
    // fourth marks one of the third's two rows.
    assert_eq!(dv_adds, 1, "the fourth commit marked a row");
    drop(sink);

    // Re-opened with another key: refused before anything is merged by the wrong key.
    let mut options = TableOptions::append(10);
    options.mode = TableMode::Mirror;
    options.key = vec!["name".into()];
    let url = url::Url::from_directory_path(dir.path().join("accounts")).unwrap();
    let err = DeltaSink::open("accounts", url, Default::default(), "p", &["s".into()], options)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("the table has id, the records have name"),
        "{err}"
    );
}

/// Parquet files in a local table's folder, and how many of them its log names.
fn files_and_named(table: &std::path::Path) -> (usize, usize) {
    let named: std::collections::HashSet<String> = live_files(table).into_iter().map(|(p, _)| p).collect();
    let files = std::fs::read_dir(table)
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().into_string().ok())
        .filter(|f| f.ends_with(".parquet"))
        .collect::<Vec<_>>();
    let n = files.iter().filter(|f| named.contains(*f)).count();
    (files.len(), n)
}

/// A commit of `rows` up to `next` whose files are written now, ahead of it.
async fn staged(sink: &DeltaSink, rows: RecordBatch, next: i64) -> Commit {
    let files = sink
        .stager(&rows.schema())
        .unwrap()
        .stage(vec![rows.clone()])
        .await
        .unwrap();
    let mut c = commit(vec![rows], next);
    c.staged = Some(Arc::new(files));
    c
}

#[tokio::test]
async fn staged_files_are_named_only_in_their_schema_and_read_progress_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("events");
    let mut sink = open(dir.path(), "events", TableMode::Append, &[]).await;
    let ids = |v: Vec<i64>| batch(vec![("id", Arc::new(Int64Array::from(v)) as ArrayRef)]);
    sink.commit(commit(vec![ids(vec![1, 2])], 2)).await.unwrap();

    // Files written ahead, committed while the table keeps their schema: named as they are.
    let ahead = staged(&sink, ids(vec![3]), 3).await;
    sink.commit(ahead).await.unwrap();
    assert_eq!(
        files_and_named(&table),
        (2, 2),
        "the staged file is the commit's file"
    );

    // Files written ahead, then a column is added before their commit: the commit writes
    // its rows again in the new schema, and the staged file stays unnamed.
    let ahead = staged(&sink, ids(vec![5]), 5).await;
    let wider = batch(vec![
        ("id", Arc::new(Int64Array::from(vec![4])) as ArrayRef),
        ("email", Arc::new(StringArray::from(vec!["d@x"])) as ArrayRef),
    ]);
    sink.commit(commit(vec![wider], 4)).await.unwrap();
    sink.commit(ahead).await.unwrap();
    assert_eq!(
        files_and_named(&table),
        (5, 4),
        "one staged file is named by nothing"
    );
    assert_eq!(
        rows(&format!(
            "SELECT id, email FROM {} ORDER BY id",
            scan(table.to_str().unwrap())
        )),
        vec![
            serde_json::json!([1, null]),
            serde_json::json!([2, null]),
            serde_json::json!([3, null]),
            serde_json::json!([4, "d@x"]),
            serde_json::json!([5, null]),
        ]
    );

    // A second writer's view: its own reads count only when they move its progress.
    let mut other = open(dir.path(), "events", TableMode::Append, &[]).await;
    assert_eq!((other.committed().get("s"), other.progress_reads()), (Some(5), 0));
    other.refresh().await.unwrap();
    assert_eq!(other.progress_reads(), 0, "nothing new to read");
    sink.commit(commit(vec![ids(vec![6])], 6)).await.unwrap();
    other.refresh().await.unwrap();
    assert_eq!((other.committed().get("s"), other.progress_reads()), (Some(6), 1));
    assert_eq!(sink.progress_reads(), 0, "a writer's own commits are not reads");
}
