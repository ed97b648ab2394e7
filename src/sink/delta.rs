//! The Delta Lake table sink (local folders and S3 through deltalake/object_store).

use std::collections::HashMap;

use async_trait::async_trait;
use bytes::Bytes;
use deltalake::kernel::Transaction;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::protocol::SaveMode;
use deltalake::{DeltaTable, DeltaTableError, ObjectStoreError, Path};
use object_store::ObjectStoreExt as _;
use url::Url;

use super::{Commit, Committed, Sink, SinkError};
use crate::progress::{Progress, app_id};

/// Folder inside a table that holds operator-state snapshots. Delta readers and VACUUM
/// ignore paths starting with `_`, so the snapshots live with the table they belong to.
const STATE_DIR: &str = "_tributary/state";

/// A Delta table, created on first commit, whose `txn` actions carry its progress.
pub struct DeltaSink {
    name: String,
    pipeline: String,
    shards: Vec<String>,
    table: DeltaTable,
    committed: Progress,
    partition_by: Vec<String>,
    checkpoint_every: u32,
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

impl DeltaSink {
    /// Opens the table at `url` (it need not exist yet) and reads the progress it holds
    /// for `shards`.
    pub async fn open(
        name: &str,
        url: Url,
        storage: HashMap<String, String>,
        pipeline: &str,
        shards: &[String],
        partition_by: &[String],
        checkpoint_every: u32,
    ) -> Result<Self, SinkError> {
        if url.scheme() == "file"
            && let Ok(path) = url.to_file_path()
        {
            // deltalake opens a missing object-store prefix as "no table yet", but a
            // missing local folder as an error: create it so both behave alike.
            std::fs::create_dir_all(&path).map_err(|e| SinkError::Delta {
                table: name.to_string(),
                source: DeltaTableError::Io { source: e },
            })?;
        }
        let table = DeltaTable::try_from_url_with_storage_options(url, storage)
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
            partition_by: partition_by.to_vec(),
            checkpoint_every,
        };
        sink.committed = sink.read_progress().await?;
        Ok(sink)
    }

    fn delta_err(&self) -> impl FnOnce(DeltaTableError) -> SinkError + '_ {
        |source| SinkError::Delta {
            table: self.name.clone(),
            source,
        }
    }

    /// The progress recorded in the loaded table version.
    async fn read_progress(&self) -> Result<Progress, SinkError> {
        let mut progress = Progress::new();
        if self.table.version().is_none() {
            return Ok(progress);
        }
        let snapshot = self.table.snapshot().map_err(self.delta_err())?;
        let log_store = self.table.log_store();
        for shard in &self.shards {
            if let Some(v) = snapshot
                .transaction_version(log_store.as_ref(), app_id(&self.pipeline, shard))
                .await
                .map_err(self.delta_err())?
            {
                progress.advance(shard, v);
            }
        }
        Ok(progress)
    }

    /// Reloads the table and its progress, e.g. after a commit whose outcome is unknown.
    async fn refresh(&mut self) -> Result<(), SinkError> {
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
        for (shard, v) in fresh.iter() {
            self.committed.advance(shard, v);
        }
        Ok(())
    }

    /// Whether the table already holds all the progress of `commit` (a replay).
    fn already_there(&self, commit: &Commit) -> bool {
        !commit.progress.is_empty()
            && commit
                .progress
                .iter()
                .all(|(shard, next)| self.committed.get(shard).is_some_and(|t| t >= *next))
    }

    fn state_path(key: &str) -> Path {
        Path::from(format!("{STATE_DIR}/{key}"))
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
        if self.already_there(&commit) {
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
        let props = CommitProperties::default()
            .with_application_transactions(txns)
            .with_metadata(commit.info.clone());
        let batches = commit
            .batches
            .iter()
            .cloned()
            .map(super::types::to_delta)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| SinkError::Delta {
                table: self.name.clone(),
                source: e.into(),
            })?;
        let mut write = self
            .table
            .clone()
            .write(batches)
            .with_save_mode(SaveMode::Append)
            .with_commit_properties(props);
        if self.table.version().is_none() {
            write = write.with_table_name(&self.name).with_configuration([(
                "delta.checkpointInterval",
                Some(self.checkpoint_every.to_string()),
            )]);
            if !self.partition_by.is_empty() {
                write = write.with_partition_columns(self.partition_by.clone());
            }
        }
        match write.await {
            Ok(table) => {
                self.table = table;
                for (shard, next) in &commit.progress {
                    self.committed.advance(shard, *next);
                }
                Ok(Committed::Version(self.table.version().unwrap_or_default()))
            }
            Err(source) => {
                // The outcome is unknown (the request may have landed): look before the
                // caller retries, so that a retry can never add the rows twice.
                let err = SinkError::Delta {
                    table: self.name.clone(),
                    source,
                };
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
                    if self.already_there(&commit) {
                        return Ok(Committed::AlreadyThere);
                    }
                }
                Err(err)
            }
        }
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
        let store = self.table.log_store().object_store(None);
        match store.get(&Self::state_path(key)).await {
            Ok(r) => r.bytes().await.map(Some),
            Err(ObjectStoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
        .map_err(|source| SinkError::State {
            table: self.name.clone(),
            key: key.to_string(),
            source,
        })
    }
}
