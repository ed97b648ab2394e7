//! Crash injection for recovery tests.
//!
//! `TRIBUTARY_FAILPOINT=before_commit:N` aborts the process right before the N-th Delta
//! commit entry it would write (counting every table), i.e. after that commit's data
//! files are in storage and before the log names them: the worst moment for an
//! exactly-once writer. `before_commit:N@TABLE` counts only the commits of the table
//! whose folder is named TABLE, and holds its abort back for a second first: tables
//! commit a micro-batch side by side, so the pause lets the other tables' commits of
//! the same micro-batch land and the crash deterministically leaves them one ahead.
//! `TRIBUTARY_FAILPOINT=delay_commit:MS` instead holds every
//! commit entry back for MS milliseconds (a slow object store). It wraps the table's
//! [`LogStore`] so that every write path (append, MERGE, maintenance) crosses it.
//! Unset, nothing is wrapped. (`chunk_read:MS`, which holds incremental snapshot
//! chunks open, is read by the Postgres source: `source::postgres::incremental`.)

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use deltalake::kernel::Version;
use deltalake::kernel::transaction::TransactionError;
use deltalake::logstore::{CommitOrBytes, LogStore, LogStoreConfig, LogStoreRef};
use deltalake::{DeltaResult, ObjectStore};
use uuid::Uuid;

pub const ENV: &str = "TRIBUTARY_FAILPOINT";

static COMMITS: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, Clone, Copy)]
enum Armed {
    /// Abort before this commit number (1-based, per process, every table).
    Abort(u64),
    /// Abort before this commit number of one table (1-based, per process): only
    /// that table's store is wrapped, so [`COMMITS`] counts its commits alone.
    AbortTable(u64),
    /// Sleep this long before every commit entry.
    Delay(std::time::Duration),
}

fn armed(root: &url::Url) -> Option<Armed> {
    let v = std::env::var(ENV).ok()?;
    if let Some(n) = v.strip_prefix("before_commit:") {
        return match n.split_once('@') {
            None => n.parse().ok().map(Armed::Abort),
            Some((n, table)) => {
                let name = root.path_segments()?.rfind(|s| !s.is_empty())?;
                (name == table).then_some(())?;
                n.parse().ok().map(Armed::AbortTable)
            }
        };
    }
    let ms = v.strip_prefix("delay_commit:")?.parse().ok()?;
    Some(Armed::Delay(std::time::Duration::from_millis(ms)))
}

/// `store`, wrapped when a failpoint is armed for it.
pub fn wrap(store: LogStoreRef) -> LogStoreRef {
    match armed(store.root_url()) {
        Some(at) => Arc::new(Failpoint { inner: store, at }),
        None => store,
    }
}

struct Failpoint {
    inner: LogStoreRef,
    at: Armed,
}

fn abort(at: u64, version: Version) -> ! {
    eprintln!("{ENV}: aborting before commit {at} (table version {version})");
    std::process::abort();
}

#[async_trait]
impl LogStore for Failpoint {
    fn name(&self) -> String {
        self.inner.name()
    }

    async fn refresh(&self) -> DeltaResult<()> {
        self.inner.refresh().await
    }

    async fn read_commit_entry(&self, version: Version) -> DeltaResult<Option<Bytes>> {
        self.inner.read_commit_entry(version).await
    }

    async fn write_commit_entry(
        &self,
        version: Version,
        commit_or_bytes: CommitOrBytes,
        operation_id: Uuid,
    ) -> Result<(), TransactionError> {
        match self.at {
            Armed::Abort(at) if COMMITS.fetch_add(1, Ordering::SeqCst) + 1 == at => abort(at, version),
            Armed::AbortTable(at) if COMMITS.fetch_add(1, Ordering::SeqCst) + 1 == at => {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                abort(at, version)
            }
            Armed::Delay(d) => tokio::time::sleep(d).await,
            Armed::Abort(_) | Armed::AbortTable(..) => {}
        }
        self.inner
            .write_commit_entry(version, commit_or_bytes, operation_id)
            .await
    }

    async fn abort_commit_entry(
        &self,
        version: Version,
        commit_or_bytes: CommitOrBytes,
        operation_id: Uuid,
    ) -> Result<(), TransactionError> {
        self.inner
            .abort_commit_entry(version, commit_or_bytes, operation_id)
            .await
    }

    async fn get_latest_version(&self, start_version: Version) -> DeltaResult<Version> {
        self.inner.get_latest_version(start_version).await
    }

    fn object_store(&self, operation_id: Option<Uuid>) -> Arc<dyn ObjectStore> {
        self.inner.object_store(operation_id)
    }

    fn root_object_store(&self, operation_id: Option<Uuid>) -> Arc<dyn ObjectStore> {
        self.inner.root_object_store(operation_id)
    }

    fn config(&self) -> &LogStoreConfig {
        self.inner.config()
    }
}
