//! Appends whose data files are written ahead of their commit: the pipelined hot path.
//!
//! A commit is two steps of different kinds: encoding rows as Parquet and uploading the
//! files (CPU, then bandwidth), and writing the one log entry that names them with the
//! `txn` progress (a round trip). A [`Stager`] does the first step on its own, on a
//! task of its own, while the previous micro-batch's log entry is still being written;
//! the commit of a [`Commit`] that carries the [`Staged`] files then only writes the
//! log entry. Commits stay in order per table: staging never commits anything.
//!
//! Files are written in the table's schema as it stood when staging began. A commit
//! that finds the table in another shape (a column added, the table replaced in
//! between) does not name them and writes the rows again the usual way; so does every
//! commit no stager was offered for (mirrors, tables that do not exist yet, rows that
//! add columns, spilled transactions, replaces).
//!
//! Crash story: a staged file is named by nothing until its commit's log entry exists.
//! A crash, a refused commit or a micro-batch prepared again (another consumer
//! committed some of its partitions first) leaves it an orphan, which VACUUM deletes
//! after the retention period like the files of any failed write; its rows come again
//! from the source, since nothing past the last commit was acknowledged. A commit
//! that is retried names the same files again: they were written once, and the `txn`
//! progress says whether the first attempt landed.
//!
//! [`Commit`]: super::Commit

use deltalake::arrow::array::RecordBatch;
use deltalake::arrow::datatypes::SchemaRef;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, Add};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::writer::{DeltaWriter as _, RecordBatchWriter};
use deltalake::{DeltaTable, DeltaTableError};

use super::{SinkError, schema, types};

/// Writes one micro-batch's rows as data files of one table, without committing them.
/// Owned, so that it runs on a task of its own.
pub struct Stager {
    table: String,
    writer: RecordBatchWriter,
    /// The table's schema when staging began: the commit checks it still is.
    table_schema: SchemaRef,
    /// What each batch is conformed to (the table's columns, in Delta's types).
    shape: SchemaRef,
}

impl std::fmt::Debug for Stager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stager")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

/// Data files written for a commit that has not happened yet.
#[derive(Debug)]
pub struct Staged {
    pub(super) table_schema: SchemaRef,
    pub(super) adds: Vec<Add>,
    pub(super) rows: usize,
}

impl Staged {
    /// Takes the files of `other`, written in the same schema (another part of the
    /// same commit's rows).
    pub fn absorb(&mut self, other: Staged) {
        self.adds.extend(other.adds);
        self.rows += other.rows;
    }

    /// The `commitInfo` entry delta-rs's own writes record, for tools that show a
    /// table's history.
    pub(super) fn metrics(&self) -> (String, serde_json::Value) {
        let metrics = serde_json::json!({
            "num_added_files": self.adds.len(),
            "num_added_rows": self.rows,
            "num_removed_files": 0,
        });
        ("operationMetrics".to_string(), metrics)
    }
}

impl Stager {
    pub(super) fn new(
        table: &str,
        writer: RecordBatchWriter,
        table_schema: SchemaRef,
        shape: SchemaRef,
    ) -> Self {
        Self {
            table: table.to_string(),
            writer,
            table_schema,
            shape,
        }
    }

    /// Encodes and uploads `batches` (rows in the shape the table's mode writes).
    pub async fn stage(mut self, batches: Vec<RecordBatch>) -> Result<Staged, SinkError> {
        let table = self.table;
        let err = |source: DeltaTableError| SinkError::Delta {
            table: table.clone(),
            source,
        };
        let started = std::time::Instant::now();
        let mut rows = 0;
        for b in batches.into_iter().filter(|b| b.num_rows() > 0) {
            let b = types::to_delta(b).map_err(|e| err(e.into()))?;
            let b = schema::conform(&b, &self.shape).map_err(|e| err(e.into()))?;
            rows += b.num_rows();
            self.writer.write(b).await.map_err(err)?;
        }
        let adds = self.writer.flush().await.map_err(err)?;
        tracing::debug!(
            table,
            rows,
            files = adds.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "files written ahead of their commit"
        );
        Ok(Staged {
            table_schema: self.table_schema,
            adds,
            rows,
        })
    }
}

/// Commits the files `adds` (written already) to `table` as an append, in one log
/// entry with `props`: staged files, or the parts of a spilled transaction.
pub(super) async fn commit(
    name: &str,
    mut table: DeltaTable,
    adds: Vec<Add>,
    props: CommitProperties,
) -> Result<DeltaTable, SinkError> {
    let err = |source: DeltaTableError| SinkError::Delta {
        table: name.to_string(),
        source,
    };
    let operation = DeltaOperation::Write {
        mode: SaveMode::Append,
        partition_by: None,
        predicate: None,
    };
    let actions = adds.into_iter().map(Action::Add).collect();
    let committed = CommitBuilder::from(props)
        .with_actions(actions)
        .build(Some(table.snapshot().map_err(err)?), table.log_store(), operation)
        .await
        .map_err(err)?;
    table
        .update_incremental(Some(committed.version()))
        .await
        .map_err(err)?;
    Ok(table)
}
