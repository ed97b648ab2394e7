//! `tributary maintain`: compaction, a checkpoint and vacuum for every table of a
//! pipeline.
//!
//! Streaming commits leave many small files; readers pay for each. Maintenance
//! first rewrites files whose deletion vectors mark a large share of their rows
//! ([`super::purge`]), then rewrites small files towards the target file size
//! (OPTIMIZE, which reads through deletion vectors), writes a Delta checkpoint so
//! readers need not replay the log, and deletes files no version younger than the
//! retention needs (VACUUM, full mode: orphans from crashed commits included), plus
//! operator-state snapshots older than the retention that the table no longer names.
//!
//! Retention protects readers of older versions and writers mid-commit: a file a
//! running writer has uploaded but not yet committed looks exactly like an orphan.
//! Keep it longer than any commit can take (the default is 7 days).

use std::collections::HashMap;
use std::num::NonZeroU64;

use deltalake::operations::vacuum::VacuumMode;
use deltalake::{DeltaTableError, ObjectStore, Path};
use futures::TryStreamExt as _;
use object_store::ObjectStoreExt as _;
use url::Url;

use super::open_table;

/// What maintenance did to one table.
#[derive(Debug, Clone, Default)]
pub struct MaintainReport {
    pub table: String,
    /// `false` when there is no table at the location yet.
    pub exists: bool,
    pub files_before: usize,
    pub files_after: usize,
    pub files_compacted: u64,
    /// Files rewritten without the rows their deletion vectors marked.
    pub files_purged: usize,
    pub rows_purged: u64,
    pub files_vacuumed: usize,
    pub states_removed: usize,
    pub version: Option<u64>,
}

/// Maintains the table `name` at `url`. `current_state` are the operator-state
/// snapshots its progress names (never removed): an aggregate's one, or one per shard.
pub async fn maintain(
    name: &str,
    url: Url,
    storage: HashMap<String, String>,
    target_file_size: u64,
    retention: std::time::Duration,
    current_state: &[String],
) -> Result<MaintainReport, DeltaTableError> {
    let mut report = MaintainReport {
        table: name.to_string(),
        ..MaintainReport::default()
    };
    let table = open_table(url, storage).await?;
    if table.version().is_none() {
        return Ok(report);
    }
    report.exists = true;
    report.files_before = table.snapshot()?.log_data().num_files();

    let (table, purged) =
        super::purge::purge(table, super::purge::PURGE_DELETED_FRACTION, target_file_size).await?;
    report.files_purged = purged.files_purged;
    report.rows_purged = purged.rows_dropped;

    let mut optimize = table.optimize();
    if let Some(size) = NonZeroU64::new(target_file_size) {
        optimize = optimize.with_target_size(size);
    }
    let (table, metrics) = optimize.await?;
    report.files_compacted = metrics.num_files_removed;

    deltalake::checkpoints::create_checkpoint(&table, None).await?;

    let retention_delta = chrono::Duration::from_std(retention)
        .map_err(|e| DeltaTableError::Generic(format!("retention: {e}")))?;
    let (table, vacuumed) = table
        .vacuum()
        .with_mode(VacuumMode::Full)
        .with_retention_period(retention_delta)
        // The caller chose the retention; the table's 7-day default must not overrule it.
        .with_enforce_retention_duration(false)
        .await?;
    report.files_vacuumed = vacuumed.files_deleted.len();
    report.files_after = table.snapshot()?.log_data().num_files();
    report.version = table.version();

    let store = table.log_store().object_store(None);
    report.states_removed = prune_states(store.as_ref(), retention, current_state).await?;
    Ok(report)
}

/// Deletes operator-state snapshots older than `retention`, except those in `keep`.
async fn prune_states(
    store: &dyn ObjectStore,
    retention: std::time::Duration,
    keep: &[String],
) -> Result<usize, DeltaTableError> {
    let cutoff = chrono::Utc::now() - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
    let prefix = Path::from(super::delta::STATE_DIR);
    let old: Vec<Path> = store
        .list(Some(&prefix))
        .try_filter(|meta| {
            let name = meta.location.filename().unwrap_or_default();
            std::future::ready(meta.last_modified < cutoff && !keep.iter().any(|k| k == name))
        })
        .map_ok(|meta| meta.location)
        .try_collect()
        .await?;
    for p in &old {
        store.delete(p).await?;
    }
    Ok(old.len())
}
