//! The Delta Lake table sink (local folders and S3 through deltalake/object_store).

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU64;

use async_trait::async_trait;
use bytes::Bytes;
use deltalake::arrow::array::RecordBatch;
use deltalake::arrow::compute::{concat_batches, filter_record_batch};
use deltalake::arrow::datatypes::{Schema, SchemaRef};
use deltalake::kernel::Transaction;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::operations::write::SchemaMode;
use deltalake::parquet::file::properties::WriterProperties;
use deltalake::protocol::SaveMode;
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError, ObjectStoreError, Path};
use object_store::ObjectStoreExt as _;
use url::Url;

use super::change::{self, NOT_MIRRORED, UNCHANGED_FLAG_PREFIX};
use super::key_index::{self, KeyIndex};
use super::merge_on_read::{self, ENABLE_DV, MergeOnRead, MorSpec};
use super::schema::{self, Incompatible};
use super::{Commit, Committed, Sink, SinkError, failpoint, mirror};
use crate::config::{MergeMode, TableMode};
use crate::progress::{Progress, app_id};

/// Folder inside a table that holds operator-state snapshots. Delta readers and VACUUM
/// ignore paths starting with `_`, so the snapshots live with the table they belong to.
pub(super) const STATE_DIR: &str = "_tributary/state";
/// Object beside a mirror table recording its key, so that a changed key is caught.
/// (Delta refuses unknown table properties, and MERGE's schema evolution rewrites the
/// description, so neither can hold it.)
pub const KEY_FILE: &str = "_tributary/mirror-key.json";

/// How a table is shaped and written.
#[derive(Debug, Clone)]
pub struct TableOptions {
    pub mode: TableMode,
    /// Key columns (`mirror`).
    pub key: Vec<String>,
    /// Partition columns of a new table.
    pub partition_by: Vec<String>,
    /// Write a Delta checkpoint every this many commits.
    pub checkpoint_every: u32,
    /// Size at which a data file is cut.
    pub target_file_size: u64,
    /// `mirror` rows arrive already one per key (an aggregate's output), and a null key
    /// column matches a null: rows are merged as they are, with null-safe equality.
    pub null_safe_key: bool,
    /// `mirror` only: how changes are applied; `None` keeps an existing table's way and
    /// gives a new table deletion vectors.
    pub merge: Option<MergeMode>,
    /// Where a deletion-vector mirror keeps its key index, and its page cache size.
    pub index: Option<IndexOptions>,
}

/// Where a deletion-vector mirror's key index lives.
#[derive(Debug, Clone)]
pub struct IndexOptions {
    /// The cache root (`[runtime] cache_dir`); each table gets a folder below it.
    pub cache_dir: std::path::PathBuf,
    pub cache_bytes: usize,
    /// Where the table's compaction rounds say how they moved rows (a running
    /// pipeline's mirrors: see [`super::moved`]).
    pub moves: Option<std::sync::Arc<super::moved::Moves>>,
}

impl TableOptions {
    /// Plain appends with default file sizing (dead letters, aggregates, tests).
    pub fn append(checkpoint_every: u32) -> Self {
        Self {
            mode: TableMode::Append,
            key: Vec::new(),
            partition_by: Vec::new(),
            checkpoint_every,
            target_file_size: crate::config::spec::DEFAULT_TARGET_FILE_SIZE.0,
            null_safe_key: false,
            merge: None,
            index: None,
        }
    }

    /// An aggregate's table written by MERGE on `key` (see [`Self::null_safe_key`]).
    pub fn keyed_aggregate(key: Vec<String>, checkpoint_every: u32) -> Self {
        Self {
            mode: TableMode::Mirror,
            key,
            null_safe_key: true,
            // Aggregate rows replace few, small windows per batch: MERGE stays.
            merge: Some(MergeMode::CopyOnWrite),
            ..Self::append(checkpoint_every)
        }
    }
}

/// A Delta table, created on first commit, whose `txn` actions carry its progress.
pub struct DeltaSink {
    name: String,
    pipeline: String,
    shards: Vec<String>,
    table: DeltaTable,
    committed: Progress,
    options: TableOptions,
    /// Set when this mirror merges by deletion vectors.
    mor: Option<MergeOnRead>,
    /// Whether commits that write a checkpoint also delete expired log entries; off
    /// when a background task does it ([`DeltaSink::leave_log_cleanup`]).
    cleans_logs: bool,
    /// How many times reading the table moved `committed` on: another writer's commits
    /// (or an unknown outcome that turned out ours). What was decided against the
    /// progress before such a read is decided again (see [`DeltaSink::progress_reads`]).
    moved_by_reads: u64,
}

impl std::fmt::Debug for DeltaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeltaSink")
            .field("name", &self.name)
            .field("version", &self.table.version())
            .field("committed", &self.committed)
            .finish()
    }
}

/// Opens the Delta table at `url`, or an unloaded handle when there is none yet.
pub async fn open_table(url: Url, storage: HashMap<String, String>) -> Result<DeltaTable, DeltaTableError> {
    if url.scheme() == "file"
        && let Ok(path) = url.to_file_path()
    {
        // deltalake opens a missing object-store prefix as "no table yet", but a
        // missing local folder as an error: create it so both behave alike.
        std::fs::create_dir_all(&path).map_err(|source| DeltaTableError::Io { source })?;
    }
    let store = DeltaTableBuilder::from_url(url)?
        .with_storage_options(storage)
        .build_storage()?;
    let mut table = DeltaTable::new(failpoint::wrap(store));
    match table.load().await {
        Ok(()) | Err(DeltaTableError::NotATable(_)) => Ok(table),
        Err(e) => Err(e),
    }
}

/// A DataFusion frame over the rows of `table`'s loaded version (deletion vectors
/// applied): the cold path's reader.
pub async fn scan(table: &DeltaTable) -> Result<deltalake::datafusion::prelude::DataFrame, DeltaTableError> {
    let ctx = deltalake::datafusion::prelude::SessionContext::new();
    table.update_datafusion_session(&ctx.state())?;
    let provider = table.table_provider().await?;
    Ok(ctx.read_table(provider)?)
}

/// The operator or cursor state stored beside `table` under `key` (see
/// [`Sink::put_state`]), read without a sink (for `status`).
pub async fn read_state(table: &DeltaTable, key: &str) -> Result<Option<Bytes>, ObjectStoreError> {
    let store = table.log_store().object_store(None);
    match store.get(&DeltaSink::state_path(key)).await {
        Ok(r) => r.bytes().await.map(Some),
        Err(ObjectStoreError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The progress `table`'s loaded version records for `pipeline`'s `shards` (its `txn`
/// actions); empty when there is no table yet.
pub async fn table_progress(
    table: &DeltaTable,
    pipeline: &str,
    shards: &[String],
) -> Result<Progress, DeltaTableError> {
    let mut progress = Progress::new();
    if table.version().is_none() {
        return Ok(progress);
    }
    let snapshot = table.snapshot()?;
    let log_store = table.log_store();
    for shard in shards {
        if let Some(v) = snapshot
            .transaction_version(log_store.as_ref(), app_id(pipeline, shard))
            .await?
        {
            progress.advance(shard, v);
        }
    }
    Ok(progress)
}

impl DeltaSink {
    /// Opens the table at `url` (it need not exist yet) and reads the progress it holds
    /// for `shards`.
    pub async fn open(
        name: &str,
        url: Url,
        storage: HashMap<String, String>,
        pipeline: &str,
        shards: &[String],
        options: TableOptions,
    ) -> Result<Self, SinkError> {
        let table = open_table(url, storage)
            .await
            .map_err(|source| SinkError::Delta {
                table: name.to_string(),
                source,
            })?;
        let mut sink = Self {
            name: name.to_string(),
            pipeline: pipeline.to_string(),
            shards: shards.to_vec(),
            table,
            committed: Progress::new(),
            options,
            mor: None,
            cleans_logs: true,
            moved_by_reads: 0,
        };
        sink.check_key().await?;
        sink.committed = sink.read_progress().await?;
        sink.setup_merge().await?;
        Ok(sink)
    }

    /// Leaves deleting expired log entries to someone else (a continuous run's
    /// background task): finding them lists the whole `_delta_log`.
    pub fn leave_log_cleanup(&mut self) {
        self.cleans_logs = false;
    }

    /// Whether this mirror merges by deletion vectors: a new table does unless told
    /// otherwise; an existing one keeps its way unless `merge = "deletion_vectors"`
    /// opts a copy-on-write table in (upgraded here, once, in a commit of its own).
    async fn setup_merge(&mut self) -> Result<(), SinkError> {
        if self.options.mode != TableMode::Mirror || self.options.merge == Some(MergeMode::CopyOnWrite) {
            return Ok(());
        }
        let Some(index) = self.options.index.clone() else {
            return Ok(());
        };
        if self.table.version().is_some() && !merge_on_read::enabled(&self.table) {
            if self.options.merge != Some(MergeMode::DeletionVectors) {
                return Ok(());
            }
            tracing::info!(table = %self.name, "enabling deletion vectors (one commit)");
            let props = HashMap::from([(ENABLE_DV.to_string(), "true".to_string())]);
            self.table = self
                .table
                .clone()
                .set_tbl_properties()
                .with_properties(props)
                .await
                .map_err(self.delta_err())?;
        }
        let dir = key_index::dir_for(&index.cache_dir, self.table.table_url());
        let mut key_index = KeyIndex::open(&dir, index.cache_bytes).map_err(self.delta_err())?;
        if let Some(moves) = index.moves {
            key_index.follow(moves);
        }
        let mut mor = MergeOnRead::new(key_index);
        if !self.options.key.is_empty() {
            mor.sync(&self.table, &self.options.key)
                .await
                .map_err(self.delta_err())?;
        }
        self.mor = Some(mor);
        Ok(())
    }

    fn delta_err(&self) -> impl FnOnce(DeltaTableError) -> SinkError + '_ {
        |source| SinkError::Delta {
            table: self.name.clone(),
            source,
        }
    }

    fn incompatible(&self, e: Incompatible) -> SinkError {
        SinkError::Incompatible {
            table: self.name.clone(),
            change: Box::new(e),
        }
    }

    /// Sets the key of a mirror table opened without one (the source supplies it);
    /// checked against the key the table was created with.
    pub async fn adopt_key(&mut self, key: Vec<String>) -> Result<(), SinkError> {
        self.options.key = key;
        self.check_key().await
    }

    /// A mirror table's key is fixed when it is created: merging by another key would
    /// silently duplicate rows. The key is recorded on first open and checked after.
    async fn check_key(&self) -> Result<(), SinkError> {
        // A key the source supplies is checked when adopted.
        if self.options.mode != TableMode::Mirror || self.options.key.is_empty() {
            return Ok(());
        }
        let ours = self.options.key.join(",");
        let path = Path::from(KEY_FILE);
        let store = self.table.log_store().object_store(None);
        let state_err = |source| SinkError::State {
            table: self.name.clone(),
            key: KEY_FILE.into(),
            source,
        };
        let theirs = match store.get(&path).await {
            Ok(r) => Some(r.bytes().await.map_err(state_err)?),
            Err(ObjectStoreError::NotFound { .. }) => None,
            Err(e) => return Err(state_err(e)),
        };
        let theirs: Option<Vec<String>> = theirs.and_then(|b| serde_json::from_slice(&b).ok());
        match theirs {
            Some(theirs) if theirs == self.options.key => Ok(()),
            Some(theirs) => Err(self.incompatible(Incompatible {
                column: "(mirror key)".into(),
                old: theirs.join(","),
                new: ours,
            })),
            None => {
                let json = serde_json::to_vec(&self.options.key).unwrap_or_default();
                store.put(&path, json.into()).await.map_err(state_err)?;
                Ok(())
            }
        }
    }

    /// The table's current schema as Arrow; `None` before the first commit.
    pub fn schema(&self) -> Option<SchemaRef> {
        self.table.snapshot().ok().map(|s| s.snapshot().arrow_schema())
    }

    /// A stager for rows like `incoming` (in the shape this table's mode receives them),
    /// when the table takes them as they are: an append or changelog table that exists
    /// and has every column already. `None`: the commit writes them itself.
    pub fn stager(&self, incoming: &Schema) -> Option<super::staged::Stager> {
        if self.options.mode == TableMode::Mirror {
            return None;
        }
        let current = self.schema()?;
        let shape = self.evolved(incoming).ok()?;
        if schema::adds_columns(&current, &shape) {
            return None;
        }
        let writer = deltalake::writer::RecordBatchWriter::for_table(&self.table)
            .ok()?
            .with_writer_properties(Self::writer_properties())
            .with_target_file_size(self.options.target_file_size);
        Some(super::staged::Stager::new(&self.name, writer, current, shape))
    }

    /// The columns of a change or row batch that become table columns.
    fn table_shape(&self, incoming: &Schema) -> Schema {
        match self.options.mode {
            TableMode::Mirror => Schema::new(
                incoming
                    .fields()
                    .iter()
                    .filter(|f| {
                        !NOT_MIRRORED.contains(&f.name().as_str())
                            && !f.name().starts_with(UNCHANGED_FLAG_PREFIX)
                    })
                    .cloned()
                    .collect::<Vec<_>>(),
            ),
            TableMode::Append | TableMode::Changelog => incoming.clone(),
        }
    }

    /// Whether the table can take rows of `incoming` (in the shape this table's mode
    /// receives them: a mirror's rows must hold its key), and the schema it would then
    /// have.
    pub fn check(&self, incoming: &Schema) -> Result<SchemaRef, SinkError> {
        let next = self.evolved(incoming)?;
        if self.options.mode == TableMode::Mirror {
            for k in &self.options.key {
                if incoming.field_with_name(k).is_err() {
                    return Err(self.incompatible(Incompatible {
                        column: k.clone(),
                        old: "key column".into(),
                        new: "no such column".into(),
                    }));
                }
            }
        }
        Ok(next)
    }

    /// The table's schema after taking a batch of `incoming`.
    fn evolved(&self, incoming: &Schema) -> Result<SchemaRef, SinkError> {
        let shaped = match super::types::delta_schema(&std::sync::Arc::new(incoming.clone())) {
            Some(s) => self.table_shape(&s),
            None => self.table_shape(incoming),
        };
        let current = self.schema();
        schema::evolve(current.as_deref(), &shaped).map_err(|e| self.incompatible(e))
    }

    /// The Delta table as last loaded or committed.
    pub fn table(&self) -> &DeltaTable {
        &self.table
    }

    /// The progress recorded in the loaded table version.
    async fn read_progress(&self) -> Result<Progress, SinkError> {
        table_progress(&self.table, &self.pipeline, &self.shards)
            .await
            .map_err(self.delta_err())
    }

    /// Reloads the table and its progress: after a commit whose outcome is unknown, or
    /// when another process may have written shards this one is about to write.
    pub async fn refresh(&mut self) -> Result<(), SinkError> {
        match self.table.update_state().await {
            Ok(()) | Err(DeltaTableError::NotATable(_)) => {}
            Err(source) => {
                return Err(SinkError::Delta {
                    table: self.name.clone(),
                    source,
                });
            }
        }
        let fresh = self.read_progress().await?;
        self.take_progress(&fresh);
        Ok(())
    }

    /// Advances `committed` to `read` (progress read from the table), counting it when
    /// that moved anything.
    fn take_progress(&mut self, read: &Progress) {
        let before = self.committed.clone();
        for (shard, v) in read.iter() {
            self.committed.advance(shard, v);
        }
        if self.committed != before {
            self.moved_by_reads += 1;
        }
    }

    /// Changes whenever reading the table moved its progress on beyond this process's
    /// own commits: rows chosen by the progress before are chosen again.
    pub fn progress_reads(&self) -> u64 {
        self.moved_by_reads
    }

    /// Whether the table already holds all the progress of `commit` (a replay).
    fn already_there(&self, commit: &Commit) -> bool {
        !commit.progress.is_empty()
            && commit
                .progress
                .iter()
                .all(|(shard, next)| self.committed.get(shard).is_some_and(|t| t >= *next))
    }

    /// Commits `commit`; a `claim` is written even when the table holds its progress
    /// already (see [`DeltaSink::claim`]).
    async fn commit_as(&mut self, commit: Commit, claim: bool) -> Result<Committed, SinkError> {
        if !claim && self.already_there(&commit) {
            return Ok(Committed::AlreadyThere);
        }
        let before = self.committed.clone();
        let now_ms = chrono::Utc::now().timestamp_millis();
        let txns: Vec<Transaction> = commit
            .progress
            .iter()
            .map(|(shard, next)| {
                Transaction::new_with_last_update(app_id(&self.pipeline, shard), *next, Some(now_ms))
            })
            .collect();
        let next = self.table.version().map_or(0, |v| v + 1);
        let mut props = CommitProperties::default()
            .with_application_transactions(txns)
            .with_metadata(commit.info.clone())
            .with_cleanup_expired_logs(Some(
                self.cleans_logs && checkpoints_at(next, self.options.checkpoint_every),
            ));
        if commit.replace || self.options.mode == TableMode::Mirror {
            // A commit that removes files is never rebased over a commit that beat it
            // (a compaction, `maintain`): it fails, and the retry starts from the new
            // snapshot. delta-rs's conflict checker ignores `dataChange: false` removes;
            // it does refuse such a commit over the files a compaction added, but only as
            // far as the commit's read predicate says it read them. Were a rebase let
            // through, the rows of a file the compaction rewrote would live on twice.
            props = props.with_max_retries(0);
        }
        // Files written ahead (see `staged`) are named only while the table still has
        // the schema they were written in.
        let staged = commit
            .staged
            .as_deref()
            .filter(|s| !commit.replace && self.schema().is_some_and(|now| now == s.table_schema));
        let written = match (staged, commit.parts.clone()) {
            (Some(staged), _) => {
                let props = props.with_metadata(commit.info.clone().into_iter().chain([staged.metrics()]));
                super::staged::commit(&self.name, self.table.clone(), staged.adds.clone(), props).await
            }
            (None, Some(parts)) => {
                self.write_parts(&commit.batches, parts.as_ref(), props, commit.replace)
                    .await
            }
            (None, None) => self.write(&commit.batches, props, commit.replace).await,
        };
        let read_version = self.table.version();
        match written {
            Ok(table) => {
                self.table = table;
                for (shard, next) in &commit.progress {
                    self.committed.advance(shard, *next);
                }
                // Other writers' commits landed between our read and ours (none touched
                // our shards, or the commit would have conflicted): their progress is in
                // the snapshot now, so it must be in `committed` too, or a later commit
                // of those shards would start from a stale position unchallenged.
                let landed =
                    self.table.version().map_or(-1, |v| v as i128) - read_version.map_or(-1, |v| v as i128);
                if landed > 1 {
                    let read = self.read_progress().await?;
                    self.take_progress(&read);
                }
                Ok(Committed::Version(self.table.version().unwrap_or_default()))
            }
            Err(err @ (SinkError::Incompatible { .. } | SinkError::Changes { .. })) => Err(err),
            Err(err) => {
                // The outcome is unknown (the request may have landed): look before the
                // caller retries, so that a retry can never add the rows twice.
                if self.refresh().await.is_ok() {
                    // Progress that moved, but not to exactly ours, was not our commit.
                    for (shard, next) in &commit.progress {
                        let theirs = self.committed.get(shard);
                        if theirs != before.get(shard) && theirs != Some(*next) {
                            return Err(SinkError::ForeignProgress {
                                table: self.name.clone(),
                                shard: shard.clone(),
                                ours: *next,
                                theirs: theirs.unwrap_or_default(),
                            });
                        }
                    }
                    if !claim && self.already_there(&commit) {
                        return Ok(Committed::AlreadyThere);
                    }
                }
                Err(err)
            }
        }
    }

    /// Commits `progress` alone, even where the table holds it already: a process
    /// taking shards over from another fences it off, since Delta refuses a commit
    /// naming a shard that a commit it did not read named too (the previous owner's
    /// late commit fails with [`SinkError::ForeignProgress`]; or this claim does, and
    /// the caller reads the table again and claims what it holds then). Nothing to
    /// claim in a table that does not exist yet.
    pub async fn claim(&mut self, progress: Vec<(String, i64)>) -> Result<(), SinkError> {
        let Some(schema) = self.schema() else {
            return Ok(());
        };
        let commit = Commit {
            batches: vec![RecordBatch::new_empty(schema)],
            parts: None,
            progress,
            info: BTreeMap::from([("tributary.claim".to_string(), serde_json::Value::Bool(true))]),
            replace: false,
            staged: None,
        };
        self.commit_as(commit, true).await.map(|_| ())
    }

    fn state_path(key: &str) -> Path {
        Path::from(format!("{STATE_DIR}/{key}"))
    }

    fn writer_properties() -> WriterProperties {
        WriterProperties::builder()
            .set_compression(deltalake::parquet::basic::Compression::SNAPPY)
            .build()
    }

    /// `batches` in Delta's types, conformed to one schema (the union of theirs).
    fn unify(&self, batches: &[RecordBatch]) -> Result<Option<RecordBatch>, SinkError> {
        let mut delta = Vec::with_capacity(batches.len());
        for b in batches {
            delta.push(super::types::to_delta(b.clone()).map_err(|e| self.delta_err()(e.into()))?);
        }
        let Some(first) = delta.first() else {
            return Ok(None);
        };
        let mut union = schema::evolve(None, &first.schema()).map_err(|e| self.incompatible(e))?;
        for b in &delta[1..] {
            union = schema::evolve(Some(&union), &b.schema()).map_err(|e| self.incompatible(e))?;
        }
        let conformed = delta
            .iter()
            .map(|b| schema::conform(b, &union))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.delta_err()(e.into()))?;
        concat_batches(&union, &conformed)
            .map(Some)
            .map_err(|e| self.delta_err()(e.into()))
    }

    /// Appends `rows` (already in this table's shape) in one commit; `replace` drops
    /// every row the table held in the same commit.
    async fn append(
        &self,
        rows: RecordBatch,
        props: CommitProperties,
        replace: bool,
    ) -> Result<DeltaTable, SinkError> {
        let next = self.evolved(&rows.schema())?;
        let evolves = self.schema().is_some_and(|cur| schema::adds_columns(&cur, &next));
        let rows = schema::conform(&rows, &next).map_err(|e| self.delta_err()(e.into()))?;
        let mut write = self
            .table
            .clone()
            .write(vec![rows])
            .with_save_mode(if replace {
                SaveMode::Overwrite
            } else {
                SaveMode::Append
            })
            .with_writer_properties(Self::writer_properties())
            .with_target_file_size(NonZeroU64::new(self.options.target_file_size))
            .with_commit_properties(props);
        if evolves {
            write = write.with_schema_mode(SchemaMode::Merge);
        }
        if self.table.version().is_none() {
            let mut config = vec![
                (
                    "delta.checkpointInterval".to_string(),
                    Some(self.options.checkpoint_every.to_string()),
                ),
                (
                    "delta.targetFileSize".to_string(),
                    Some(self.options.target_file_size.to_string()),
                ),
            ];
            if self.mor.is_some() {
                // Reader 3 / writer 7 with the deletionVectors feature.
                config.push((ENABLE_DV.to_string(), Some("true".to_string())));
            }
            write = write.with_table_name(&self.name).with_configuration(config);
            if !self.options.partition_by.is_empty() {
                write = write.with_partition_columns(self.options.partition_by.clone());
            }
        }
        write.await.map_err(self.delta_err())
    }

    /// Writes `batches` (unified into one) as the table's mode does, in one commit.
    async fn write(
        &mut self,
        batches: &[RecordBatch],
        props: CommitProperties,
        replace: bool,
    ) -> Result<DeltaTable, SinkError> {
        let Some(rows) = self.unify(batches)? else {
            return Err(SinkError::Delta {
                table: self.name.clone(),
                source: DeltaTableError::Generic("a commit needs at least one (possibly empty) batch".into()),
            });
        };
        match self.options.mode {
            TableMode::Mirror if rows.num_rows() > 0 && !replace => self.mirror(rows, props).await,
            TableMode::Mirror => {
                // Progress only, or a replace: a mirror's replace only ever empties it.
                let shaped = std::sync::Arc::new(self.table_shape(&rows.schema()));
                let empty = RecordBatch::new_empty(shaped);
                self.append(empty, props, replace).await
            }
            TableMode::Append | TableMode::Changelog => self.append(rows, props, replace).await,
        }
    }

    /// Writes `batches` and the rows of `parts` in one commit, part by part where the
    /// table allows it (see [`super::parts`]); otherwise every part is read into memory.
    async fn write_parts(
        &mut self,
        batches: &[RecordBatch],
        parts: &dyn super::Parts,
        props: CommitProperties,
        replace: bool,
    ) -> Result<DeltaTable, SinkError> {
        let incoming = parts.schema();
        let next = self.evolved(&super::types::delta_schema(&incoming).unwrap_or(incoming))?;
        let widens = self.schema().is_none_or(|cur| schema::adds_columns(&cur, &next));
        let first = self.unify(batches)?.filter(|b| b.num_rows() > 0);
        let bounded = !replace
            && !widens
            && match self.options.mode {
                TableMode::Mirror => self.mor.is_some() && !self.options.null_safe_key,
                TableMode::Append | TableMode::Changelog => true,
            };
        if bounded {
            let target = self.options.target_file_size;
            match self.options.mode {
                TableMode::Append | TableMode::Changelog => {
                    let first = first
                        .map(|b| schema::conform(&b, &next))
                        .transpose()
                        .map_err(|e| self.delta_err()(e.into()))?;
                    let spec = super::parts::AppendSpec {
                        shape: &next,
                        props,
                        writer: Self::writer_properties(),
                        target_file_size: target,
                    };
                    return super::parts::append(&self.name, self.table.clone(), first, parts, spec).await;
                }
                TableMode::Mirror => {
                    let Some(mor) = self.mor.as_mut() else {
                        return Err(self.delta_err()(DeltaTableError::Generic(
                            "a mirror without deletion vectors took the part-by-part path".into(),
                        )));
                    };
                    let spec = MorSpec {
                        key: &self.options.key,
                        schema: &next,
                        props: props.clone(),
                        writer: Self::writer_properties(),
                        target_file_size: target,
                    };
                    let merged =
                        super::parts::mirror(&self.name, self.table.clone(), mor, first.clone(), parts, spec)
                            .await?;
                    if let Some((table, report)) = merged {
                        report.trace(
                            &self.name,
                            "spilled changes merged by deletion vectors in one commit",
                        );
                        return Ok(table);
                    }
                }
            }
        }
        tracing::warn!(
            table = %self.name,
            parts = parts.count(),
            "a spilled transaction is read into memory for this table (it creates or widens the \
             table, or the table merges by copy-on-write)"
        );
        let mut all: Vec<RecordBatch> = first.into_iter().collect();
        for i in 0..parts.count() {
            let part = parts.read(i).map_err(|source| SinkError::Spill {
                table: self.name.clone(),
                source,
            })?;
            all.extend(part);
        }
        if all.is_empty() {
            all.extend(batches.iter().cloned());
        }
        self.write(&all, props, replace).await
    }

    /// Merges the changes in `rows` by key in one commit.
    async fn mirror(&mut self, rows: RecordBatch, props: CommitProperties) -> Result<DeltaTable, SinkError> {
        self.check(&rows.schema())?;
        let collapsed = if self.options.null_safe_key {
            change::Collapsed {
                deletes: change::delete_mask(&rows).map_or(0, |d| d.true_count()),
                batch: rows,
                unchanged: Vec::new(),
                truncated: false,
            }
        } else {
            change::collapse(&rows, &self.options.key).map_err(|source| SinkError::Changes {
                table: self.name.clone(),
                source,
            })?
        };
        if self.table.version().is_none() {
            // Nothing to match yet: the surviving upserts are the table.
            let keep = change::delete_mask(&collapsed.batch)
                .map(|d| deltalake::arrow::compute::not(&d))
                .transpose()
                .map_err(|e| self.delta_err()(e.into()))?;
            let mut batch = collapsed.batch;
            if let Some(keep) = keep {
                batch = filter_record_batch(&batch, &keep).map_err(|e| self.delta_err()(e.into()))?;
            }
            let shaped = std::sync::Arc::new(self.table_shape(&batch.schema()));
            let batch = schema::conform(&batch, &shaped).map_err(|e| self.delta_err()(e.into()))?;
            return self.append(batch, props, false).await;
        }
        if collapsed.truncated && collapsed.batch.num_rows() == 0 {
            let shaped = std::sync::Arc::new(self.table_shape(&collapsed.batch.schema()));
            return self.append(RecordBatch::new_empty(shaped), props, true).await;
        }
        let next = self.evolved(&collapsed.batch.schema())?;
        let evolve = self.schema().is_some_and(|cur| schema::adds_columns(&cur, &next));
        if !evolve && let Some(mor) = self.mor.as_mut() {
            let spec = MorSpec {
                key: &self.options.key,
                schema: &next,
                props,
                writer: Self::writer_properties(),
                target_file_size: self.options.target_file_size,
            };
            let (table, report) =
                mor.commit(self.table.clone(), collapsed, spec)
                    .await
                    .map_err(|source| SinkError::Delta {
                        table: self.name.clone(),
                        source,
                    })?;
            report.trace(&self.name, "merged by deletion vectors");
            return Ok(table);
        }
        // Copy-on-write MERGE (also a deletion-vector table's schema evolution: MERGE
        // reads through deletion vectors and removes the files it rewrites, and the
        // key index picks up the new files at the next batch).
        let spec = mirror::MergeSpec {
            key: &self.options.key,
            schema: &next,
            evolve,
            null_safe: self.options.null_safe_key,
            props,
            writer: Self::writer_properties(),
        };
        let (table, metrics) = mirror::merge(self.table.clone(), collapsed, spec)
            .await
            .map_err(self.delta_err())?;
        tracing::debug!(
            table = %self.name,
            inserted = metrics.num_target_rows_inserted,
            updated = metrics.num_target_rows_updated,
            deleted = metrics.num_target_rows_deleted,
            files_scanned = metrics.num_target_files_scanned,
            files_skipped = metrics.num_target_files_skipped_during_scan,
            "merged"
        );
        Ok(table)
    }
}

#[async_trait]
impl Sink for DeltaSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn committed(&self) -> &Progress {
        &self.committed
    }

    async fn commit(&mut self, commit: Commit) -> Result<Committed, SinkError> {
        self.commit_as(commit, false).await
    }

    async fn put_state(&self, key: &str, bytes: Bytes) -> Result<(), SinkError> {
        let store = self.table.log_store().object_store(None);
        store
            .put(&Self::state_path(key), bytes.into())
            .await
            .map(|_| ())
            .map_err(|source| SinkError::State {
                table: self.name.clone(),
                key: key.to_string(),
                source,
            })
    }

    async fn get_state(&self, key: &str) -> Result<Option<Bytes>, SinkError> {
        read_state(&self.table, key)
            .await
            .map_err(|source| SinkError::State {
                table: self.name.clone(),
                key: key.to_string(),
                source,
            })
    }
}

/// Whether the commit of `version` writes a checkpoint (delta-rs writes one after every
/// `every`-th version). Expired log entries are cleaned up only then, if at all:
/// delta-rs would otherwise list the whole `_delta_log` after every commit to find
/// them, a cost that grows with the table's history (measured on moto: a LIST of every
/// commit so far, each micro-batch), while nothing can be deleted before a checkpoint.
pub(crate) fn checkpoints_at(version: u64, every: u32) -> bool {
    (version + 1).is_multiple_of(u64::from(every.max(1)))
}

#[cfg(test)]
mod tests {
    use super::checkpoints_at;

    #[test]
    fn expired_logs_are_cleaned_up_only_with_a_checkpoint() {
        // delta-rs checkpoints version v when v + 1 is a multiple of the interval.
        let at: Vec<u64> = (0..35).filter(|v| checkpoints_at(*v, 10)).collect();
        assert_eq!(at, [9, 19, 29]);
        assert!((0..5).all(|v| checkpoints_at(v, 1)));
        assert!(checkpoints_at(0, 0), "an interval of 0 is read as 1");
    }
}
