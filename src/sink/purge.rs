//! Purging deletion vectors (part of `tributary maintain`): data files whose deletion
//! vector marks a large share of their rows are rewritten with their live rows only,
//! and lose their DV.
//!
//! delta-rs's OPTIMIZE bins files by size, so a full-sized file that a mirror's
//! updates have mostly deleted is never chosen; readers would go on reading (and
//! skipping) its dead rows forever. This rewrites exactly those files.
//!
//! Crash story: the new files are uploaded under fresh names, then one commit removes
//! each old (path, DV) and adds the new files (`dataChange: false`: the table's rows
//! are the same). A crash before the commit leaves orphans for VACUUM; the commit
//! races ingest commits through Delta's conflict checker, and one that lost (the
//! ingest marked more rows of a file being purged) is simply not applied: the next
//! `maintain` tries again.

use std::sync::Arc;

use deltalake::arrow::array::{ArrayRef, BooleanArray, RecordBatch, StringArray};
use deltalake::arrow::compute::{cast, filter_record_batch};
use deltalake::arrow::datatypes::Schema;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, Add};
use deltalake::protocol::DeltaOperation;
use deltalake::writer::{DeltaWriter as _, RecordBatchWriter};
use deltalake::{DeltaTable, DeltaTableError};
use futures::TryStreamExt as _;

use super::merge_on_read::{physical_rows, remove_of};
use super::{data_file, dv};

/// A file is purged once its DV deletes at least this share of its rows.
pub const PURGE_DELETED_FRACTION: f64 = 0.1;

/// What a purge did.
#[derive(Debug, Default, Clone, Copy)]
pub struct PurgeReport {
    pub files_purged: usize,
    pub rows_dropped: u64,
    pub files_written: usize,
}

/// Rewrites the files of `table` whose DV deletes at least `fraction` of their rows.
pub async fn purge(
    table: DeltaTable,
    fraction: f64,
    target_file_size: u64,
) -> Result<(DeltaTable, PurgeReport), DeltaTableError> {
    let mut report = PurgeReport::default();
    if table.version().is_none() {
        return Ok((table, report));
    }
    let chosen = live_adds(&table, |a| {
        let rows = physical_rows(a).unwrap_or(0);
        a.deletion_vector
            .as_ref()
            .is_some_and(|d| rows == 0 || d.cardinality as f64 >= fraction * rows as f64)
    })?;
    if chosen.is_empty() {
        return Ok((table, report));
    }
    let (table, rewritten) = rewrite(table, &chosen, target_file_size).await?;
    report.files_purged = chosen.len();
    report.rows_dropped = rewritten.rows_dropped;
    report.files_written = rewritten.files_written;
    Ok((table, report))
}

/// The live `add`s of `table`'s snapshot that `keep` takes.
pub fn live_adds(table: &DeltaTable, keep: impl Fn(&Add) -> bool) -> Result<Vec<Add>, DeltaTableError> {
    #[allow(deprecated)] // the view's own conversion keeps every field of the add
    let adds = table
        .snapshot()?
        .log_data()
        .iter()
        .map(|f| f.add_action())
        .filter(|a| keep(a))
        .collect();
    Ok(adds)
}

/// What [`rewrite`] did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Rewritten {
    pub rows_written: u64,
    /// Rows the files' deletion vectors marked, left out.
    pub rows_dropped: u64,
    pub files_written: usize,
}

/// Rewrites the live rows of `files` (live `add`s of `table`'s snapshot) into new files
/// of about `target_file_size`, in one commit that removes them (`dataChange: false`:
/// the table's rows are the same). Reads stream batch by batch; what is held is the
/// writer's buffered output (at most `target_file_size` per partition).
///
/// The commit goes through Delta's conflict checker: an ingest commit that removed or
/// re-marked one of `files` meanwhile (`dataChange: true`) makes it fail, and nothing
/// changes. (The reverse is the ingest's to guard: delta-rs ignores `dataChange: false`
/// removes when it checks a commit against the ones that beat it, so mirror and
/// replace commits are single-attempt, see `DeltaSink::commit`.)
pub async fn rewrite(
    mut table: DeltaTable,
    files: &[Add],
    target_file_size: u64,
) -> Result<(DeltaTable, Rewritten), DeltaTableError> {
    let mut report = Rewritten::default();
    let snapshot = table.snapshot()?;
    let store = table.log_store().object_store(None);
    let table_schema = snapshot.snapshot().arrow_schema();
    let partitions: Vec<String> = snapshot.metadata().partition_columns().to_vec();
    let mut writer = RecordBatchWriter::for_table(&table)?.with_target_file_size(target_file_size);
    let mut actions = Vec::new();
    for add in files {
        let deleted = match &add.deletion_vector {
            Some(d) => dv::read(store.as_ref(), d).await?,
            None => Default::default(),
        };
        let mut stream = data_file::open(store.clone(), &add.path, add.size)
            .await?
            .build()?;
        let mut row = 0u64;
        while let Some(batch) = stream.try_next().await? {
            let n = batch.num_rows() as u64;
            let live = if deleted.is_empty() {
                batch
            } else {
                let keep: BooleanArray = (row..row + n).map(|r| Some(!deleted.contains(r))).collect();
                filter_record_batch(&batch, &keep)?
            };
            row += n;
            if live.num_rows() > 0 {
                report.rows_written += live.num_rows() as u64;
                writer
                    .write(with_partitions(&live, add, &partitions, &table_schema)?)
                    .await?;
            }
        }
        report.rows_dropped += deleted.len();
        actions.push(Action::Remove(remove_of(
            add,
            false,
            chrono::Utc::now().timestamp_millis(),
        )));
    }
    let adds = writer.flush().await?;
    report.files_written = adds.len();
    actions.extend(adds.into_iter().map(|a| {
        Action::Add(Add {
            data_change: false,
            ..a
        })
    }));
    let operation = DeltaOperation::Optimize {
        predicate: None,
        target_size: target_file_size as i64,
    };
    // Committed in a single attempt and rebased here, not by delta-rs: its conflict
    // check ignores `dataChange: false` removes, so two rewrites of the same files
    // (two processes of a group compacting one table) would both land and every row
    // of those files would be there twice. A rebase goes ahead only while each
    // rewritten file is still live with the deletion vector it was read with, i.e.
    // only appends came between.
    for attempt in 1.. {
        let outcome = CommitBuilder::from(
            CommitProperties::default()
                .with_max_retries(0)
                // Left to the ingest commits that write checkpoints, or to a
                // continuous run's compaction task.
                .with_cleanup_expired_logs(Some(false)),
        )
        .with_actions(actions.clone())
        .build(Some(table.snapshot()?), table.log_store(), operation.clone())
        .await;
        match outcome {
            Ok(committed) => {
                table.update_incremental(Some(committed.version())).await?;
                return Ok((table, report));
            }
            Err(e) => {
                let read = table.version();
                table.update_incremental(None).await?;
                if attempt >= REBASES || table.version() == read || !unchanged(&table, files)? {
                    return Err(e);
                }
            }
        }
    }
    unreachable!("the loop returns")
}

/// Attempts of one rewrite's commit (the first and its rebases).
const REBASES: usize = 5;

/// Whether every one of `files` is still live in `table` with the same deletion vector.
fn unchanged(table: &DeltaTable, files: &[Add]) -> Result<bool, DeltaTableError> {
    let live: std::collections::HashMap<String, Option<_>> = live_adds(table, |_| true)?
        .into_iter()
        .map(|a| (a.path, a.deletion_vector))
        .collect();
    Ok(files
        .iter()
        .all(|f| live.get(&f.path).is_some_and(|dv| *dv == f.deletion_vector)))
}

/// Puts a file's partition values back as columns (a data file does not store them).
fn with_partitions(
    batch: &RecordBatch,
    add: &Add,
    partitions: &[String],
    table: &Schema,
) -> Result<RecordBatch, DeltaTableError> {
    if partitions.is_empty() {
        return Ok(batch.clone());
    }
    let mut fields = Vec::with_capacity(table.fields().len());
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(table.fields().len());
    for f in table.fields() {
        if partitions.contains(f.name()) {
            let value = add.partition_values.get(f.name()).cloned().flatten();
            let text: ArrayRef = Arc::new(StringArray::from(vec![value; batch.num_rows()]));
            columns.push(cast(&text, f.data_type())?);
            fields.push(f.clone());
        } else if let Some(c) = batch.column_by_name(f.name()) {
            columns.push(c.clone());
            fields.push(Arc::new(f.as_ref().clone().with_data_type(c.data_type().clone())));
        }
    }
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?)
}
