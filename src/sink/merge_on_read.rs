//! Merge-on-read `mirror` commits: deletion vectors plus new row images, so a commit
//! costs O(changes), not O(table).
//!
//! One micro-batch (already folded to one change per key) becomes ONE Delta
//! transaction holding:
//! - the new row images (inserts and updates) as new data files;
//! - for every live file that held a changed or deleted key: a `remove` of its current
//!   (path, DV) and an `add` of the same path whose DV is the old one plus the rows
//!   this batch replaces (`numRecords` stays the file's physical count,
//!   `tightBounds: false`);
//! - the batch's `txn` actions and `commitInfo`.
//!
//! Rows are found through the [`KeyIndex`] (a cache of the table, brought to the
//! snapshot before every batch); a candidate position counts only when its file is
//! live and its row is not already deleted, so a stale index can never delete the
//! wrong row. Values the source did not send (Postgres TOAST) are read from the row
//! being replaced, by row index, from its file.
//!
//! Crash story: data files and the DV file are uploaded under fresh names before the
//! commit; until the Delta log entry exists nothing names them, and a crash leaves
//! only orphans for VACUUM. The commit is one put-if-absent of the log entry, with
//! the `txn` progress inside it, so a batch is either wholly visible or not at all and
//! a replay is recognised by its progress. The key index is updated only from the
//! committed snapshot afterwards; a crash before that is caught up at the next batch.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use deltalake::arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch, new_null_array};
use deltalake::arrow::compute::{filter_record_batch, interleave, not};
use deltalake::arrow::datatypes::SchemaRef;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, Add, Remove};
use deltalake::parquet::arrow::ProjectionMask;
use deltalake::parquet::arrow::arrow_reader::{RowSelection, RowSelector};
use deltalake::parquet::file::properties::WriterProperties;
use deltalake::protocol::{DeltaOperation, MergePredicate};
use deltalake::writer::{DeltaWriter as _, RecordBatchWriter};
use deltalake::{DeltaTable, DeltaTableError, ObjectStore};
use futures::TryStreamExt as _;
use object_store::ObjectStoreExt as _;
use roaring::RoaringTreemap;

use super::change::{Collapsed, UNCHANGED_FLAG_PREFIX, delete_mask};
use super::key_index::{KeyCodec, KeyIndex, RowPos};
use super::schema::conform;
use super::{data_file, dv};

/// The table property that makes a table's writers use deletion vectors.
pub const ENABLE_DV: &str = "delta.enableDeletionVectors";

/// What one merge-on-read commit did.
#[derive(Debug, Default, Clone, Copy)]
pub struct MorReport {
    pub inserted: usize,
    pub updated: usize,
    pub deleted: usize,
    pub files_marked: usize,
    /// Files whose every row is now deleted: removed instead of marked.
    pub files_removed: usize,
    pub files_written: usize,
}

impl MorReport {
    /// Logs what the commit did (at debug level).
    pub fn trace(&self, table: &str, what: &'static str) {
        tracing::debug!(
            table,
            inserted = self.inserted,
            updated = self.updated,
            deleted = self.deleted,
            files_marked = self.files_marked,
            files_removed = self.files_removed,
            files_written = self.files_written,
            "{what}"
        );
    }
}

/// A mirror table's merge-on-read state: its key index and the deletion vectors it
/// last saw (by file), so an unchanged DV is not fetched again.
pub struct MergeOnRead {
    index: KeyIndex,
    dvs: HashMap<String, (String, Arc<RoaringTreemap>)>,
}

impl std::fmt::Debug for MergeOnRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MergeOnRead").field("index", &self.index).finish()
    }
}

/// What the changes of one commit, staged part by part, have written and will mark.
#[derive(Debug, Default)]
pub(super) struct Staged {
    /// Per live file, rows the changes replace.
    touched: HashMap<String, Vec<u64>>,
    /// The add actions of the touched files.
    live: HashMap<String, Add>,
    /// Adds of the new row images.
    actions: Vec<Action>,
    report: MorReport,
    /// A truncate came first: every live file goes.
    pub truncated: bool,
}

/// What one commit needs besides the table and the changes.
#[derive(Debug)]
pub struct MorSpec<'a> {
    pub key: &'a [String],
    /// The table's schema (unchanged by this commit).
    pub schema: &'a SchemaRef,
    pub props: CommitProperties,
    pub writer: WriterProperties,
    pub target_file_size: u64,
}

/// Whether `table` is set up for deletion vectors (property on, feature in protocol).
pub fn enabled(table: &DeltaTable) -> bool {
    table.snapshot().is_ok_and(|s| {
        s.metadata()
            .configuration()
            .get(ENABLE_DV)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    })
}

impl MergeOnRead {
    pub fn new(index: KeyIndex) -> Self {
        Self {
            index,
            dvs: HashMap::new(),
        }
    }

    fn codec(table: &DeltaTable, key: &[String]) -> Result<KeyCodec, DeltaTableError> {
        let schema = table.snapshot()?.snapshot().arrow_schema();
        let fields = key
            .iter()
            .map(|k| {
                schema
                    .field_with_name(k)
                    .map(|f| Arc::new(f.clone()))
                    .map_err(|_| DeltaTableError::Generic(format!("key column {k} is not in the table")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        KeyCodec::new(fields)
    }

    /// Brings the key index to `table` (at open, and after commits of other kinds).
    pub async fn sync(&mut self, table: &DeltaTable, key: &[String]) -> Result<(), DeltaTableError> {
        let schema = match table.snapshot() {
            Ok(s) => s.snapshot().arrow_schema(),
            Err(_) => return Ok(()),
        };
        if key.iter().any(|k| schema.field_with_name(k).is_err()) {
            // Nothing to index: the table has no rows with this key yet (a table that
            // so far only recorded progress), and records without it are refused.
            return Ok(());
        }
        let codec = Self::codec(table, key)?;
        let report = self.index.sync(table, &codec).await?;
        if report.files_indexed > 0 || report.rebuilt {
            tracing::info!(
                rebuilt = report.rebuilt,
                files = report.files_indexed,
                rows = report.rows_indexed,
                forgotten = report.files_forgotten,
                "key index brought to version {}",
                table.version().unwrap_or_default()
            );
        }
        Ok(())
    }

    /// The current DV of a live file (empty without one).
    async fn deleted_rows(
        &mut self,
        store: &dyn ObjectStore,
        path: &str,
        descriptor: Option<&deltalake::kernel::DeletionVectorDescriptor>,
    ) -> Result<Arc<RoaringTreemap>, DeltaTableError> {
        let Some(d) = descriptor else {
            return Ok(Arc::new(RoaringTreemap::new()));
        };
        let id = dv::identity(d);
        if let Some((known, rows)) = self.dvs.get(path)
            && *known == id
        {
            return Ok(rows.clone());
        }
        let rows = Arc::new(dv::read(store, d).await?);
        self.dvs.insert(path.to_string(), (id, rows.clone()));
        Ok(rows)
    }

    /// Commits `changes` to `table` in one transaction (see the module docs).
    pub async fn commit(
        &mut self,
        table: DeltaTable,
        changes: Collapsed,
        spec: MorSpec<'_>,
    ) -> Result<(DeltaTable, MorReport), DeltaTableError> {
        let codec = self.begin(&table, spec.key).await?;
        let mut staged = Staged {
            truncated: changes.truncated,
            ..Staged::default()
        };
        self.stage(&table, &codec, changes, &spec, &mut staged).await?;
        self.finish(table, &codec, staged, spec).await
    }

    /// A scratch folder of this table's alone, next to its index.
    pub(super) fn scratch(&self) -> std::path::PathBuf {
        self.index.dir().with_extension("scratch")
    }

    /// Brings the index to `table` before changes are staged against it.
    pub(super) async fn begin(
        &mut self,
        table: &DeltaTable,
        key: &[String],
    ) -> Result<KeyCodec, DeltaTableError> {
        let codec = Self::codec(table, key)?;
        self.index.sync(table, &codec).await?;
        Ok(codec)
    }

    /// Writes the new row images of `changes` and notes the rows they replace. Every
    /// key of `changes` must be absent from what was staged before (the caller splits
    /// a commit's changes by key), and `changes` itself holds no truncate (it is
    /// `staged.truncated`).
    pub(super) async fn stage(
        &mut self,
        table: &DeltaTable,
        codec: &KeyCodec,
        changes: Collapsed,
        spec: &MorSpec<'_>,
        staged: &mut Staged,
    ) -> Result<(), DeltaTableError> {
        let Collapsed { batch, unchanged, .. } = changes;
        let rows = conform(&batch, spec.schema)?;
        let deletes = delete_mask(&batch);
        let store = table.log_store().object_store(None);
        let snapshot = table.snapshot()?;
        let report = &mut staged.report;

        // Every live file's add action, by path; only the touched ones are kept.
        let mut old: Vec<Option<(String, u64)>> = vec![None; rows.num_rows()];
        if !staged.truncated {
            let keys = codec.encode(&rows)?;
            let candidates = self.index.lookup(&keys)?;
            let wanted: HashSet<&str> = candidates
                .iter()
                .flatten()
                .filter_map(|p| self.index.path_of(p.file))
                .filter(|p| !staged.live.contains_key(*p))
                .collect();
            if !wanted.is_empty() {
                #[allow(deprecated)] // the view's own conversion keeps every field of the add
                for f in snapshot.log_data().iter() {
                    if wanted.contains(f.path().as_ref()) {
                        staged.live.insert(f.path().to_string(), f.add_action());
                    }
                }
            }
            for (i, c) in candidates.into_iter().enumerate() {
                let Some(RowPos { file, row }) = c else { continue };
                let Some(path) = self.index.path_of(file).map(str::to_string) else {
                    continue;
                };
                let Some(add) = staged.live.get(&path) else {
                    continue;
                };
                let deleted = self
                    .deleted_rows(store.as_ref(), &path, add.deletion_vector.as_ref())
                    .await?;
                if deleted.contains(row) {
                    continue;
                }
                staged.touched.entry(path.clone()).or_default().push(row);
                old[i] = Some((path, row));
            }
        }

        // Values the source did not send come from the rows being replaced.
        let mut rows = rows;
        if !unchanged.is_empty() {
            rows = fill_unsent(
                store.clone(),
                &staged.live,
                rows,
                &batch,
                &unchanged,
                &old,
                deletes.as_ref(),
            )
            .await?;
        }

        // New row images: every change that is not a delete.
        let upserts = match &deletes {
            // No copy of a batch without deletes (a snapshot's, most streams').
            Some(d) if d.true_count() > 0 => filter_record_batch(&rows, &not(d)?)?,
            _ => rows.clone(),
        };
        for (i, o) in old.iter().enumerate() {
            let is_delete = deletes.as_ref().is_some_and(|d| d.value(i));
            match (o, is_delete) {
                (Some(_), true) => report.deleted += 1,
                (Some(_), false) => report.updated += 1,
                (None, false) => report.inserted += 1,
                (None, true) => {}
            }
        }
        if upserts.num_rows() > 0 {
            let mut writer = RecordBatchWriter::for_table(table)?
                .with_writer_properties(spec.writer.clone())
                .with_target_file_size(spec.target_file_size);
            writer.write(upserts).await?;
            let adds = writer.flush().await?;
            report.files_written += adds.len();
            staged.actions.extend(adds.into_iter().map(Action::Add));
        }
        Ok(())
    }

    /// Commits what was staged: the new files, the deletion vectors of the rows they
    /// replace, the `txn` progress in `spec.props`; then brings the index along.
    pub(super) async fn finish(
        &mut self,
        mut table: DeltaTable,
        codec: &KeyCodec,
        staged: Staged,
        spec: MorSpec<'_>,
    ) -> Result<(DeltaTable, MorReport), DeltaTableError> {
        let Staged {
            touched,
            live,
            mut actions,
            mut report,
            truncated,
        } = staged;
        let store = table.log_store().object_store(None);
        let snapshot = table.snapshot()?;
        let now = chrono::Utc::now().timestamp_millis();
        if truncated {
            // Everything the table held is gone; what these changes upsert is the table.
            #[allow(deprecated)]
            for f in snapshot.log_data().iter() {
                actions.push(Action::Remove(f.remove_action(true)));
            }
        } else if !touched.is_empty() {
            let mut paths: Vec<&String> = touched.keys().collect();
            paths.sort_unstable();
            // Per file, every row it will have deleted; a file left with no live row
            // is removed outright rather than kept behind a full deletion vector.
            let mut marked = Vec::with_capacity(paths.len());
            for path in paths {
                let add = &live[path];
                let before = self
                    .deleted_rows(store.as_ref(), path, add.deletion_vector.as_ref())
                    .await?;
                let mut after = (*before).clone();
                after.extend(touched[path].iter().copied());
                if physical_rows(add).is_some_and(|n| after.len() >= n) {
                    actions.push(Action::Remove(remove_of(add, true, now)));
                    report.files_removed += 1;
                } else {
                    marked.push((path.clone(), after));
                }
            }
            if !marked.is_empty() {
                let file = dv::encode(marked.iter().map(|(_, b)| b.clone()).collect())?;
                store.put(&file.path, file.bytes.clone().into()).await?;
                for ((path, bitmap), descriptor) in marked.into_iter().zip(file.descriptors) {
                    let add = &live[&path];
                    actions.push(Action::Remove(remove_of(add, true, now)));
                    // Known now, so the next batch need not read it back.
                    self.dvs
                        .insert(path, (dv::identity(&descriptor), Arc::new(bitmap)));
                    actions.push(Action::Add(Add {
                        deletion_vector: Some(descriptor),
                        stats: loose_stats(add.stats.as_deref()),
                        data_change: true,
                        ..add.clone()
                    }));
                    report.files_marked += 1;
                }
            }
        }

        let operation = DeltaOperation::Merge {
            predicate: None,
            merge_predicate: Some(
                spec.key
                    .iter()
                    .map(|k| format!("t.{k} = s.{k}"))
                    .collect::<Vec<_>>()
                    .join(" AND "),
            ),
            matched_predicates: vec![
                MergePredicate {
                    action_type: "delete".into(),
                    predicate: Some("s._op = 'd'".into()),
                },
                MergePredicate {
                    action_type: "update".into(),
                    predicate: None,
                },
            ],
            not_matched_predicates: vec![MergePredicate {
                action_type: "insert".into(),
                predicate: None,
            }],
            not_matched_by_source_predicates: if truncated {
                vec![MergePredicate {
                    action_type: "delete".into(),
                    predicate: None,
                }]
            } else {
                Vec::new()
            },
        };
        let committed = CommitBuilder::from(spec.props)
            .with_actions(actions)
            .build(Some(snapshot), table.log_store(), operation)
            .await?;
        table.update_incremental(Some(committed.version())).await?;
        // The index follows the committed table; if that fails now, the next batch
        // (or restart) catches it up, so the commit stands either way.
        if let Err(e) = self.index.sync(&table, codec).await {
            tracing::warn!(error = %e, "key index not updated after commit; the next batch catches it up");
        }
        // Deletion vectors of files that are gone are never needed again.
        let index = &self.index;
        self.dvs.retain(|path, _| index.knows(path));
        Ok((table, report))
    }
}

/// The `remove` of a live file as its `add` names it (path and current DV).
pub(super) fn remove_of(add: &Add, data_change: bool, now: i64) -> Remove {
    Remove {
        path: add.path.clone(),
        data_change,
        deletion_timestamp: Some(now),
        extended_file_metadata: Some(true),
        partition_values: Some(add.partition_values.clone()),
        size: Some(add.size),
        tags: add.tags.clone(),
        deletion_vector: add.deletion_vector.clone(),
        base_row_id: add.base_row_id,
        default_row_commit_version: add.default_row_commit_version,
    }
}

/// The physical row count of a data file, from its statistics.
pub(super) fn physical_rows(add: &Add) -> Option<u64> {
    let stats: serde_json::Value = serde_json::from_str(add.stats.as_deref()?).ok()?;
    stats.get("numRecords")?.as_u64()
}

/// A file's statistics after rows were marked deleted: `numRecords` stays the file's
/// physical row count and min/max may now be loose.
pub(super) fn loose_stats(stats: Option<&str>) -> Option<String> {
    let stats = stats?;
    match serde_json::from_str::<serde_json::Value>(stats) {
        Ok(serde_json::Value::Object(mut m)) => {
            m.insert("tightBounds".into(), serde_json::Value::Bool(false));
            Some(serde_json::Value::Object(m).to_string())
        }
        _ => None,
    }
}

/// Replaces values flagged as not sent with those of the row each change replaces
/// (null when it replaces none: the key is new to the table).
async fn fill_unsent(
    store: Arc<dyn ObjectStore>,
    live: &HashMap<String, Add>,
    rows: RecordBatch,
    batch: &RecordBatch,
    unchanged: &[String],
    old: &[Option<(String, u64)>],
    deletes: Option<&BooleanArray>,
) -> Result<RecordBatch, DeltaTableError> {
    let flags: Vec<(usize, &BooleanArray)> = unchanged
        .iter()
        .filter_map(|c| {
            let idx = rows.schema().index_of(c).ok()?;
            let flag = batch.column_by_name(&format!("{UNCHANGED_FLAG_PREFIX}{c}"))?;
            Some((idx, flag.as_boolean_opt()?))
        })
        .collect();
    // Per file: the rows to fetch, and for each the batch row that wants it.
    let mut wanted: HashMap<&str, Vec<(u64, usize)>> = HashMap::new();
    for (i, o) in old.iter().enumerate() {
        let sent_all = flags.iter().all(|(_, f)| !(f.is_valid(i) && f.value(i)));
        if sent_all || deletes.is_some_and(|d| d.value(i)) {
            continue;
        }
        if let Some((path, row)) = o {
            wanted.entry(path.as_str()).or_default().push((*row, i));
        }
    }
    let names: Vec<String> = flags
        .iter()
        .map(|(idx, _)| rows.schema().field(*idx).name().clone())
        .collect();
    let mut columns = rows.columns().to_vec();
    // For each flagged column: the source arrays (0 = this batch) and per row which
    // array and index its value comes from.
    let mut sources: Vec<Vec<ArrayRef>> = flags.iter().map(|(idx, _)| vec![columns[*idx].clone()]).collect();
    let mut picks: Vec<Vec<(usize, usize)>> = flags
        .iter()
        .map(|_| (0..rows.num_rows()).map(|i| (0, i)).collect())
        .collect();
    for (path, mut want) in wanted {
        want.sort_unstable();
        let add = &live[path];
        let fetched = read_rows(
            store.clone(),
            add,
            &names,
            &want.iter().map(|(r, _)| *r).collect::<Vec<_>>(),
        )
        .await?;
        for (k, (_, flag)) in flags.iter().enumerate() {
            let column = fetched
                .column_by_name(&names[k])
                .cloned()
                .unwrap_or_else(|| new_null_array(columns[flags[k].0].data_type(), fetched.num_rows()));
            let column = if column.data_type() == columns[flags[k].0].data_type() {
                column
            } else {
                deltalake::arrow::compute::cast(&column, columns[flags[k].0].data_type())?
            };
            sources[k].push(column);
            let src = sources[k].len() - 1;
            for (j, (_, i)) in want.iter().enumerate() {
                if flag.is_valid(*i) && flag.value(*i) {
                    picks[k][*i] = (src, j);
                }
            }
        }
    }
    for (k, (idx, flag)) in flags.iter().enumerate() {
        // A flagged value with no row to take it from stays null (a new key).
        let nulls = new_null_array(columns[*idx].data_type(), 1);
        sources[k].push(nulls);
        let null_src = sources[k].len() - 1;
        for (i, pick) in picks[k].iter_mut().enumerate() {
            if pick.0 == 0 && flag.is_valid(i) && flag.value(i) && old[i].is_none() {
                *pick = (null_src, 0);
            }
        }
        let refs: Vec<&dyn Array> = sources[k].iter().map(|a| a.as_ref()).collect();
        columns[*idx] = interleave(&refs, &picks[k])?;
    }
    Ok(RecordBatch::try_new(rows.schema(), columns)?)
}

/// Reads `columns` of the given rows (ascending row indexes) of one data file.
async fn read_rows(
    store: Arc<dyn ObjectStore>,
    add: &Add,
    columns: &[String],
    rows: &[u64],
) -> Result<RecordBatch, DeltaTableError> {
    let builder = data_file::open(store, &add.path, add.size).await?;
    let total = builder.metadata().file_metadata().num_rows().max(0) as u64;
    let roots: Vec<usize> = columns
        .iter()
        .filter_map(|c| builder.schema().index_of(c).ok())
        .collect();
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    let mut selectors = Vec::new();
    let mut at = 0u64;
    for &r in rows {
        if r >= total {
            return Err(DeltaTableError::Generic(format!(
                "data file {} has {total} rows, not row {r}",
                add.path
            )));
        }
        if r > at {
            selectors.push(RowSelector::skip((r - at) as usize));
        }
        selectors.push(RowSelector::select(1));
        at = r + 1;
    }
    let schema = builder.schema().clone();
    let batches: Vec<RecordBatch> = builder
        .with_projection(mask)
        .with_row_selection(RowSelection::from(selectors))
        .build()?
        .try_collect()
        .await?;
    let projected = match batches.first() {
        Some(b) => b.schema(),
        None => Arc::new(schema.project(&[])?),
    };
    Ok(deltalake::arrow::compute::concat_batches(&projected, &batches)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_become_loose_and_keep_their_counts() {
        let s = loose_stats(Some(
            r#"{"numRecords":10,"minValues":{"id":1},"tightBounds":true}"#,
        ))
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["numRecords"], 10);
        assert_eq!(v["tightBounds"], false);
        assert_eq!(v["minValues"]["id"], 1);
        assert_eq!(loose_stats(None), None);
        assert_eq!(loose_stats(Some("not json")), None);
    }

    #[test]
    fn the_property_is_the_protocol_name() {
        assert_eq!(
            ENABLE_DV,
            deltalake::TableProperty::EnableDeletionVectors.as_ref()
        );
    }
}
