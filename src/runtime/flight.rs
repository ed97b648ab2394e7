//! The pipelined hot path: micro-batch N+1 is prepared, and its tables' data files
//! encoded and uploaded, while N's log entries are written.
//!
//! A micro-batch goes through two steps here. [`launch`] prepares it (what each table
//! does not hold yet, in its shape) and hands each table's rows to a [`Stager`] on a
//! task of its own, so Parquet encoding runs on the other core; the micro-batch is
//! then *in flight*. Once its files are written, the run loop takes what is waiting
//! as the next micro-batch. When that one is full, or `min_interval` has passed since
//! the one in flight started, it is launched too, and only then does the one in flight
//! commit ([`super::handover::commit_all`]: dead letters first, then every table's log
//! entry naming its staged files, then the aggregates, then the acknowledgement).
//! Otherwise the one in flight commits at once and the next one goes on gathering, so
//! `min_interval` still spaces micro-batches at low rates. Commits stay strictly ordered
//! per table, and the exactly-once protocol is the one of a run without pipelining:
//! nothing is committed ahead, only written.
//!
//! A micro-batch is launched before the previous one commits only when that cannot
//! change what it is: both carry plain records (no control marker, cursor, spilled
//! transaction or end of input), and the previous one takes no shards over. After the
//! previous commit, [`Ahead::still_holds`] checks that no table changed shape or read
//! progress another process committed (a consumer group's rebalance), and that no
//! partition was let go meanwhile; otherwise the micro-batch is prepared again and its
//! staged files are left unnamed (see [`crate::sink::staged`] for their crash story).
//!
//! Memory: a micro-batch holds its share of the in-flight budget from the moment it is
//! read until its commit, staged or not, so two micro-batches in flight fit the same
//! `[runtime] memory` budget as one.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use deltalake::arrow::datatypes::SchemaRef;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};

use crate::progress::Progress;
use crate::sink::SinkError;
use crate::sink::dead_letter::DeadLetters;
use crate::sink::staged::{Staged, Stager};
use crate::source::{self, SourceBatch};
use crate::telemetry;

use super::aggregate::AggregateTarget;
use super::cut::load_spilled;
use super::handover::{self, Fence};
use super::retry::RetryPolicy;
use super::tables::{DeadLetterTarget, Prepared, TableTarget};
use super::{RunError, acknowledge, claim, held_by_all, refresh, report_in_flight};

/// A micro-batch's rows for one table are cut into parts of at least this many rows,
/// at most one per core.
const MIN_PART_ROWS: usize = 50_000;

/// A table's files being written on a thread of their own. Dropping it (the run
/// failed, or the micro-batch is prepared again) cancels the writing if it has not
/// begun; writing that has runs to its end, and its files are named by nothing.
#[derive(Debug)]
pub(super) struct Staging(tokio::task::JoinHandle<Result<Staged, SinkError>>);

impl Staging {
    /// Starts writing `batches`; `done` is dropped when that ends. Encoding holds a
    /// core for a while, so it runs on a blocking thread, not on one of the runtime's
    /// workers (which the commit in flight and the source task need meanwhile).
    fn spawn(
        stager: Stager,
        batches: Vec<deltalake::arrow::array::RecordBatch>,
        done: mpsc::Sender<()>,
    ) -> Self {
        let runtime = tokio::runtime::Handle::current();
        Self(tokio::task::spawn_blocking(move || {
            let staged = runtime.block_on(stager.stage(batches));
            drop(done);
            staged
        }))
    }

    /// The files of every part, or `None` when there are none or staging any part
    /// failed (the commit then writes the rows itself, under the retry policy).
    pub async fn finish_all(parts: Vec<Staging>, table: &str) -> Option<Staged> {
        let mut all: Option<Staged> = None;
        let mut failed = false;
        // Every part is awaited (none is left writing), whatever became of the others.
        for part in parts {
            match (part.finish(table).await, &mut all) {
                (Some(s), Some(all)) => all.absorb(s),
                (Some(s), None) => all = Some(s),
                (None, _) => failed = true,
            }
        }
        all.filter(|_| !failed)
    }

    async fn finish(mut self, table: &str) -> Option<Staged> {
        match (&mut self.0).await {
            Ok(Ok(staged)) => Some(staged),
            Ok(Err(e)) => {
                tracing::warn!(table, error = %e, "writing files ahead of the commit failed: the commit writes them");
                None
            }
            Err(e) => {
                tracing::warn!(table, error = %e, "the task writing files ahead of the commit ended: the commit writes them");
                None
            }
        }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A micro-batch prepared for every table, with their files being staged.
pub(super) struct Ahead {
    pub prepared: Vec<Option<Prepared>>,
    pub routed: DeadLetters,
    /// What it was prepared against: each table's schema and progress reads (see
    /// [`crate::sink::DeltaSink::progress_reads`]), and the fence's epoch.
    seen: Vec<(Option<SchemaRef>, u64)>,
    fence_epoch: u64,
    /// Closed once every table's files are written.
    staged: Option<mpsc::Receiver<()>>,
}

impl Ahead {
    /// Whether the preparation still holds: no table changed shape or learnt of
    /// progress another process committed, and no shard was let go, since it was made.
    /// (Rows another process committed meanwhile are skipped only by a preparation
    /// that knows of them; the commit cannot catch them once its snapshot has them.)
    pub fn still_holds(&self, tables: &[TableTarget], fence: &Fence) -> bool {
        self.fence_epoch == fence.epoch()
            && self.seen.len() == tables.len()
            && self
                .seen
                .iter()
                .zip(tables)
                .all(|(seen, t)| *seen == Self::seen(t))
    }

    fn seen(t: &TableTarget) -> (Option<SchemaRef>, u64) {
        (t.sink.schema(), t.sink.progress_reads())
    }
}

/// A micro-batch read and launched, not committed yet.
pub(super) struct Flight {
    pub pending: Vec<SourceBatch>,
    /// Its share of the in-flight budget, released once it is committed.
    pub held: Vec<OwnedSemaphorePermit>,
    pub rows: usize,
    pub bytes: usize,
    /// Shards assigned to this process just after it (a rebalance): the tables are
    /// read again once it is committed.
    pub reassigned: Option<Vec<Arc<str>>>,
    /// The last micro-batch before the input ends, a shutdown or a rebalance takes
    /// shards away: aggregates commit everything they hold.
    pub closing: bool,
    pub ahead: Option<Ahead>,
    /// Closed once every table's files are written (`None`: they are).
    staged: Option<mpsc::Receiver<()>>,
}

impl Flight {
    pub fn new(
        pending: Vec<SourceBatch>,
        held: Vec<OwnedSemaphorePermit>,
        rows: usize,
        bytes: usize,
        reassigned: Option<Vec<Arc<str>>>,
        closing: bool,
        mut ahead: Ahead,
    ) -> Self {
        Self {
            pending,
            held,
            rows,
            bytes,
            reassigned,
            closing,
            staged: ahead.staged.take(),
            ahead: Some(ahead),
        }
    }

    /// Resolves once every table's files are written (or failed to be).
    pub async fn staged(&mut self) {
        if let Some(rx) = &mut self.staged {
            // Nothing is ever sent: `None` once every sender is dropped.
            let _ = rx.recv().await;
            self.staged = None;
        }
    }

    /// Whether the next micro-batch may be launched before this one commits.
    pub fn lets_next_ahead(&self) -> bool {
        self.reassigned.is_none() && !self.closing && plain(&self.pending)
    }
}

/// Whether `pending` holds only records: nothing that changes what a table holds
/// besides rows and positions.
pub(super) fn plain(pending: &[SourceBatch]) -> bool {
    pending
        .iter()
        .all(|b| b.control.is_none() && b.spilled.is_none() && b.cursor.is_none() && !b.end_of_input)
}

/// Prepares `pending` for every table and starts writing the files of those that can
/// take them ahead of their commit.
// An error ends the run, so its size never matters on the hot path.
#[allow(clippy::result_large_err)]
pub(super) fn launch(
    tables: &mut [TableTarget],
    pending: &[SourceBatch],
    fence: &Fence,
    pipelined: bool,
) -> Result<Ahead, RunError> {
    let mut routed = DeadLetters::default();
    let mut prepared = Vec::with_capacity(tables.len());
    let (done, staged) = mpsc::channel(1);
    // Large micro-batches are encoded in parts, one per core, so that encoding one
    // table's files does not wait on a single core.
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    for t in tables.iter_mut() {
        let mut p = t.prepare(pending, &mut routed)?;
        if let Some(p) = &mut p {
            let parts = (p.rows() / MIN_PART_ROWS).clamp(1, cores);
            for (stager, batches) in t.stagers(p, parts).into_iter().filter(|_| pipelined) {
                p.staging.push(Staging::spawn(stager, batches, done.clone()));
            }
        }
        prepared.push(p);
    }
    Ok(Ahead {
        prepared,
        routed,
        seen: tables.iter().map(Ahead::seen).collect(),
        fence_epoch: fence.epoch(),
        staged: Some(staged),
    })
}

/// What committing a micro-batch needs besides its targets.
pub(super) struct Env<'a> {
    pub owned: &'a Arc<source::Owned>,
    pub movable: bool,
    pub retry: &'a RetryPolicy,
    pub shard_info: &'a [source::ShardInfo],
    pub time_column: Option<&'a str>,
    pub ack_tx: &'a watch::Sender<Progress>,
    pub budget: &'a Arc<Semaphore>,
    pub limit: usize,
    /// Micro-batches committed, across restarts.
    pub batches: &'a AtomicU64,
}

/// Commits `f` to the dead letters, every table and the aggregates, then
/// acknowledges the source up to what every table holds (the exactly-once protocol).
pub(super) async fn finish(
    f: Flight,
    dead: &mut Option<DeadLetterTarget>,
    tables: &mut [TableTarget],
    aggregates: &mut [AggregateTarget],
    fence: &mut handover::Fence,
    env: &Env<'_>,
) -> Result<(), RunError> {
    let Flight {
        mut pending,
        held,
        rows,
        bytes,
        reassigned,
        closing,
        ahead,
        ..
    } = f;
    let started = Instant::now();
    handover::commit_all(
        dead,
        tables,
        &mut pending,
        ahead,
        env.owned,
        fence,
        env.movable,
        env.retry,
    )
    .await?;
    if !aggregates.is_empty() {
        // Operators fold records in memory: a spilled transaction is read whole.
        let loaded = load_spilled(&pending)?;
        let input = loaded.as_deref().unwrap_or(&pending);
        for a in aggregates.iter_mut() {
            a.process(input, closing, env.retry, env.owned, fence).await?;
        }
    }
    tracing::debug!(
        rows,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "micro-batch committed"
    );
    env.batches.fetch_add(1, Ordering::Relaxed);
    telemetry::committed_now();
    metrics::counter!(telemetry::MICRO_BATCHES).increment(1);
    metrics::histogram!(telemetry::BATCH_ROWS).record(rows as f64);
    metrics::histogram!(telemetry::BATCH_BYTES).record(bytes as f64);
    if let Some(column) = env.time_column
        && telemetry::enabled()
    {
        telemetry::record_latencies(pending.iter().map(|b| (&*b.stream, &b.records)), column);
    }
    drop(held);
    report_in_flight(env.budget, env.limit);
    if let Some(shards) = reassigned {
        refresh(dead, tables).await?;
        claim(aggregates, &shards, env.owned).await?;
    }
    acknowledge(env.ack_tx, held_by_all(tables, aggregates, env.shard_info));
    Ok(())
}
