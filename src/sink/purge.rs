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
//! are the same). A crash before the commit leaves orphans for VACUUM. Rows an ingest
//! commit deleted from a file while it was rewritten are carried over as a deletion
//! vector on the new file ([`Prepared::commit`]); a file removed meanwhile makes the
//! rewrite give up (nothing is applied; the next look or `maintain` tries again).

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

use object_store::ObjectStoreExt as _;
use roaring::RoaringTreemap;

use super::compact::Gate;
use super::merge_on_read::{loose_stats, physical_rows, remove_of};
use super::moved::{Moved, MovedFile};
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
    let (table, rewritten) = rewrite(table, &chosen, target_file_size, None).await?;
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
/// the table's rows are the same): [`prepare`], then [`Prepared::commit`].
pub async fn rewrite(
    table: DeltaTable,
    files: &[Add],
    target_file_size: u64,
    gate: Option<&Gate>,
) -> Result<(DeltaTable, Rewritten), DeltaTableError> {
    let prepared = prepare(&table, files, target_file_size).await?;
    prepared.commit(table, gate).await
}

/// A rewrite whose files are written and not committed yet.
#[derive(Debug)]
pub struct Prepared {
    /// Each rewritten file as it was read: its add, the rows its deletion vector
    /// marked then, and its physical row count.
    read: Vec<(Add, RoaringTreemap, u64)>,
    adds: Vec<Add>,
    report: Rewritten,
    target_file_size: u64,
}

/// Reads the live rows of `files` and writes them into new files, uploaded and not yet
/// named by any commit. Reads stream batch by batch; what is held is the writer's
/// buffered output (at most `target_file_size` per partition).
pub async fn prepare(
    table: &DeltaTable,
    files: &[Add],
    target_file_size: u64,
) -> Result<Prepared, DeltaTableError> {
    let mut report = Rewritten::default();
    let snapshot = table.snapshot()?;
    let store = table.log_store().object_store(None);
    let table_schema = snapshot.snapshot().arrow_schema();
    let partitions: Vec<String> = snapshot.metadata().partition_columns().to_vec();
    let mut writer = RecordBatchWriter::for_table(table)?.with_target_file_size(target_file_size);
    let mut read = Vec::with_capacity(files.len());
    for add in files {
        let deleted = match &add.deletion_vector {
            Some(d) => dv::read(store.as_ref(), d).await?,
            None => RoaringTreemap::new(),
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
        read.push((add.clone(), deleted, row));
    }
    let adds = writer.flush().await?;
    report.files_written = adds.len();
    Ok(Prepared {
        read,
        adds,
        report,
        target_file_size,
    })
}

impl Prepared {
    /// Commits the rewrite: removes the rewritten files, adds the new ones. With a
    /// `gate` (a mirror's, in a continuous run) the commit holds it, so the table's own
    /// ingest commits wait only for this step, not for the reading and writing.
    ///
    /// Committed in a single attempt and rebased here, not by delta-rs: its conflict
    /// check ignores `dataChange: false` removes, so two rewrites of the same files (two
    /// processes of a group compacting one table) would both land and every row of those
    /// files would be there twice. A rebase goes ahead only while each rewritten file is
    /// still live. Rows a mirror deleted from them since they were read (their
    /// deletion vector grew) are carried over: the new file gets a deletion vector
    /// marking exactly those rows, so the rewrite never brings a deleted row back.
    pub async fn commit(
        self,
        mut table: DeltaTable,
        gate: Option<&Gate>,
    ) -> Result<(DeltaTable, Rewritten), DeltaTableError> {
        let _held = match gate {
            Some(g) => {
                let held = g.hold().await;
                // What the table's ingest committed while the files were rewritten.
                table.update_incremental(None).await?;
                Some(held)
            }
            None => None,
        };
        let operation = DeltaOperation::Optimize {
            predicate: None,
            target_size: self.target_file_size as i64,
        };
        for attempt in 1.. {
            let actions = self.actions(&table).await?;
            let outcome = CommitBuilder::from(
                CommitProperties::default()
                    .with_max_retries(0)
                    // Left to the ingest commits that write checkpoints, or to a
                    // continuous run's compaction task.
                    .with_cleanup_expired_logs(Some(false)),
            )
            .with_actions(actions)
            .build(Some(table.snapshot()?), table.log_store(), operation.clone())
            .await;
            match outcome {
                Ok(committed) => {
                    if let Some(g) = gate {
                        g.advance(self.moved());
                    }
                    table.update_incremental(Some(committed.version())).await?;
                    return Ok((table, self.report));
                }
                Err(e) => {
                    let read = table.version();
                    table.update_incremental(None).await?;
                    if attempt >= REBASES || table.version() == read {
                        return Err(e);
                    }
                }
            }
        }
        unreachable!("the loop returns")
    }

    /// How the rows moved, when the rewrite wrote one file (see [`super::moved`]).
    fn moved(&self) -> Option<Moved> {
        let [new] = self.adds.as_slice() else {
            return None;
        };
        Some(Moved {
            into: new.path.clone(),
            rows: physical_rows(new)?,
            from: self
                .read
                .iter()
                .map(|(add, dropped, rows)| MovedFile {
                    path: add.path.clone(),
                    rows: *rows,
                    dropped: dropped.clone(),
                })
                .collect(),
        })
    }

    /// The actions against `table`'s snapshot: removes of the rewritten files as they
    /// are now, the new files, and for rows deleted from them since they were read, a
    /// deletion vector on the new file. An error when a rewritten file is gone, or rows
    /// were deleted and the rewrite wrote more than one file.
    async fn actions(&self, table: &DeltaTable) -> Result<Vec<Action>, DeltaTableError> {
        let live: std::collections::HashMap<String, Add> = live_adds(table, |_| true)?
            .into_iter()
            .map(|a| (a.path.clone(), a))
            .collect();
        let store = table.log_store().object_store(None);
        let now = chrono::Utc::now().timestamp_millis();
        let mut actions = Vec::with_capacity(self.read.len() + self.adds.len() + 1);
        // Rows deleted since the read, as rows of the new file: a file's live rows at
        // the read follow the previous files' in the new file, in order.
        let mut carried = RoaringTreemap::new();
        let mut base = 0u64;
        for (was, deleted, rows) in &self.read {
            let Some(now_add) = live.get(&was.path) else {
                return Err(conflict(format!(
                    "{} was removed while it was rewritten",
                    was.path
                )));
            };
            if now_add.deletion_vector != was.deletion_vector {
                let marked = match &now_add.deletion_vector {
                    Some(d) => dv::read(store.as_ref(), d).await?,
                    None => Default::default(),
                };
                for r in marked.iter().filter(|r| !deleted.contains(*r)) {
                    // `r` is not in `deleted`: rank counts the deleted rows before it.
                    carried.insert(base + r - deleted.rank(r));
                }
            }
            actions.push(Action::Remove(remove_of(now_add, false, now)));
            base += rows - deleted.len();
        }
        if carried.is_empty() {
            actions.extend(self.adds.iter().map(|a| {
                Action::Add(Add {
                    data_change: false,
                    ..a.clone()
                })
            }));
            return Ok(actions);
        }
        let [new] = self.adds.as_slice() else {
            return Err(conflict(format!(
                "rows were deleted from files while they were rewritten into {} files",
                self.adds.len()
            )));
        };
        if carried.len() >= physical_rows(new).unwrap_or(u64::MAX) {
            // Every rewritten row is gone since: nothing to add.
            return Ok(actions);
        }
        let file = dv::encode(vec![carried])?;
        store.put(&file.path, file.bytes.clone().into()).await?;
        actions.push(Action::Add(Add {
            deletion_vector: file.descriptors.into_iter().next(),
            stats: loose_stats(new.stats.as_deref()),
            data_change: false,
            ..new.clone()
        }));
        Ok(actions)
    }
}

fn conflict(message: String) -> DeltaTableError {
    DeltaTableError::Generic(format!(
        "compaction lost to a commit that changed its files: {message}"
    ))
}

/// Attempts of one rewrite's commit (the first and its rebases).
const REBASES: usize = 5;

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
