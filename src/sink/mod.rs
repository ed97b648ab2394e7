//! Sinks: Delta tables that keep their own progress.
//!
//! Every commit to a table carries, in the same Delta transaction as its files, one
//! `txn` action per source shard it covers (`appId = {pipeline}/{shard}`, `version` =
//! the shard position to resume from). A table therefore says by itself how far it has
//! got, and a replayed batch is recognised and skipped. Nothing outside the table is
//! the source of truth.

pub mod change;
pub mod compact;
mod data_file;
pub mod dead_letter;
mod delta;
pub mod dv;
mod failpoint;
pub mod key_index;
pub mod maintain;
pub mod merge_on_read;
mod mirror;
pub mod moved;
mod parts;
pub mod purge;
pub mod schema;
pub mod staged;
pub mod types;

use std::collections::BTreeMap;

use async_trait::async_trait;
use bytes::Bytes;
use deltalake::arrow::array::RecordBatch;

use crate::progress::Progress;

pub use delta::{
    DeltaSink, IndexOptions, KEY_FILE, TableOptions, open_table, read_state, scan, table_progress,
};
pub use failpoint::ENV as FAILPOINT_ENV;

/// Rows of one commit too many to hold in memory at once (a transaction that spilled
/// to disk), read one part at a time; each part is in the table's shape already.
pub trait Parts: Send + Sync + std::fmt::Debug {
    /// The table-shaped schema of the rows as the unit ended (parts of an earlier
    /// layout are conformed to it).
    fn schema(&self) -> deltalake::arrow::datatypes::SchemaRef;
    /// How many parts there are.
    fn count(&self) -> usize;
    /// Part `i` (`None`: nothing in it for this table, e.g. rows it already holds).
    fn read(&self, i: usize) -> std::io::Result<Option<RecordBatch>>;
}

/// One atomic change to a table: its rows and the progress they complete.
#[derive(Debug, Clone)]
pub struct Commit {
    /// Rows to add; may be empty (a progress-only commit), never of another schema.
    pub batches: Vec<RecordBatch>,
    /// More rows, read part by part (see [`parts`]); committed with `batches` in the
    /// same transaction.
    pub parts: Option<std::sync::Arc<dyn Parts>>,
    /// Per shard, the position to resume from once this commit is durable.
    pub progress: Vec<(String, i64)>,
    /// Extra `commitInfo` entries (e.g. the operator-state snapshot it depends on).
    pub info: BTreeMap<String, serde_json::Value>,
    /// Replace every row the table holds with these (an overwrite, in any mode).
    pub replace: bool,
    /// `batches` already written as data files (see [`staged`]): the commit names them
    /// when the table still has the schema they were written in, and writes `batches`
    /// otherwise.
    pub staged: Option<std::sync::Arc<staged::Staged>>,
}

/// What became of a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    /// A new table version holding the rows and progress.
    Version(u64),
    /// The table already held this progress (a replay): nothing was written.
    AlreadyThere,
}

/// Why a table could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("table {table}: {source}")]
    Delta {
        table: String,
        #[source]
        source: deltalake::DeltaTableError,
    },
    #[error("table {table}: operator state {key}: {source}")]
    State {
        table: String,
        key: String,
        #[source]
        source: deltalake::ObjectStoreError,
    },
    /// The records' schema cannot be written to the table (a narrowed type, a missing
    /// non-nullable column, a changed key).
    #[error("table {table}: incompatible schema change: {change}")]
    Incompatible {
        table: String,
        change: Box<schema::Incompatible>,
    },
    /// Spilled rows could not be read back from local disk.
    #[error("table {table}: reading spilled rows: {source}")]
    Spill {
        table: String,
        #[source]
        source: std::io::Error,
    },
    /// The change records cannot be applied (a null key, an unknown `_op`).
    #[error("table {table}: {source}")]
    Changes {
        table: String,
        #[source]
        source: change::ChangeError,
    },
    /// Someone else advanced this table's progress for our shards: two processes are
    /// running the same pipeline over the same shards.
    #[error(
        "table {table}: another writer committed positions of {shard} ({theirs}) while this one was \
         writing up to {ours}; is the same pipeline running twice?"
    )]
    ForeignProgress {
        table: String,
        shard: String,
        ours: i64,
        theirs: i64,
    },
}

impl SinkError {
    /// Whether trying again may succeed (network, throttling, server errors).
    pub fn is_transient(&self) -> bool {
        use deltalake::DeltaTableError as E;
        match self {
            SinkError::Delta { source, .. } => matches!(
                source,
                E::ObjectStore { .. } | E::Io { .. } | E::Transaction { .. }
            ),
            SinkError::State { .. } => true,
            SinkError::Incompatible { .. }
            | SinkError::Changes { .. }
            | SinkError::Spill { .. }
            | SinkError::ForeignProgress { .. } => false,
        }
    }

    /// Whether another writer committed first (the table moved on between this
    /// commit's read and its write): not an outage but contention, which a prompt
    /// retry against the new version resolves (each conflict is someone's progress).
    pub fn is_conflict(&self) -> bool {
        use deltalake::DeltaTableError as E;
        use deltalake::kernel::transaction::TransactionError as T;
        matches!(
            self,
            SinkError::Delta {
                source: E::Transaction {
                    source: T::VersionAlreadyExists(_) | T::MaxCommitAttempts(_) | T::CommitConflict(_)
                },
                ..
            }
        )
    }
}

/// A table that commits atomically with its progress.
///
/// Contract:
/// - [`Sink::committed`] is the table's durable progress, as read from its `txn`
///   actions at open and advanced by each successful commit. It never moves back.
/// - [`Sink::commit`] is all-or-nothing: after it returns `Ok`, the rows and the
///   progress are durable together (the Delta log entry exists); after an `Err`, either
///   both or neither are in the table, and a later `commit` of the same [`Commit`]
///   finds out which (by re-reading the `txn` versions) so a retry never duplicates.
/// - Operator state is stored beside the table with [`Sink::put_state`] *before* the
///   commit that depends on it, keyed by that commit's progress.
#[async_trait]
pub trait Sink: Send {
    fn name(&self) -> &str;
    fn committed(&self) -> &Progress;
    async fn commit(&mut self, commit: Commit) -> Result<Committed, SinkError>;
    async fn put_state(&self, key: &str, bytes: Bytes) -> Result<(), SinkError>;
    async fn get_state(&self, key: &str) -> Result<Option<Bytes>, SinkError>;
}

/// The state key for a table's progress: the same progress always names the same file.
pub fn state_key(progress: &Progress) -> String {
    // FNV-1a over the canonical "shard=next;" list: stable across builds and platforms,
    // unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut first = None;
    for (shard, next) in progress.iter() {
        first.get_or_insert(next);
        for b in shard
            .bytes()
            .chain(*b"=")
            .chain(next.to_string().bytes())
            .chain(*b";")
        {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{:020}-{h:016x}.arrow", first.unwrap_or(0).max(0))
}
