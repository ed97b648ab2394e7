//! Wiring: source task → bounded channel → micro-batches → tables and aggregates →
//! acknowledgement.
//!
//! Per micro-batch, in this order (the exactly-once protocol):
//! 1. every `[[tables]]` entry commits the rows it does not hold yet, with `txn`
//!    actions for the batch's end positions;
//! 2. every aggregate folds the rows it has not processed, emits closed windows, writes
//!    its state snapshot (keyed by the progress it will commit) and then commits;
//! 3. the source is acknowledged up to the smallest progress every table holds.
//!
//! A crash between any two steps leaves each table at a consistent progress of its
//! own; a restart resumes the source at the smallest of them and each table skips
//! what it already holds.

mod aggregate;
mod backfill;
mod compaction;
mod cut;
mod feed;
mod flight;
mod handover;
pub mod malloc;
mod oracle;
mod partitioned;
mod restate;
pub use restate::take_again;
mod retry;
mod status;
mod tables;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};

use crate::config::{Pipeline, SourceConfig};
use crate::progress::Progress;
use crate::sink::{DeltaSink, IndexOptions, Sink, SinkError, TableOptions};
use crate::source::{self, Polled, RunMode, SourceBatch, SourceError};
use crate::telemetry;
use crate::window::{OperatorStats, WindowError};
use aggregate::AggregateTarget;
use cut::{split, travels_alone};
use feed::drive_source;
use flight::{Env, Flight, finish};
use tables::{DeadLetterTarget, TableTarget, summary};

pub use backfill::{BackfillReport, backfill};
pub use retry::{RetryPolicy, Retryable};
pub use status::{ShardStatus, Status, TableStatus, status};

/// Largest chunk a source hands over at once; a micro-batch is built from chunks.
const MAX_CHUNK_ROWS: usize = 32_768;
/// Chunks queued between the source task and the batcher; what bounds memory is the
/// byte budget ([`crate::config::RuntimeConfig::in_flight_bytes`]), this only bounds
/// empty control markers.
const CHANNEL_CHUNKS: usize = 64;
/// How long the input must be quiet before aggregates commit the progress they hold
/// (at least `batch.max_latency`).
const IDLE_COMMIT: Duration = Duration::from_secs(1);
/// `commitInfo` key naming the operator-state snapshot a commit depends on.
pub const STATE_INFO_KEY: &str = "tributary.state";

/// Why a run stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{file}: {key}: {message}")]
    Pipeline {
        file: String,
        key: String,
        message: String,
    },
    #[error("source: {0}")]
    Source(#[from] SourceError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Window(#[from] WindowError),
    #[error("aggregate {aggregate}: {message}")]
    State { aggregate: String, message: String },
    #[error(
        "the last micro-batch did not commit within runtime.shutdown_timeout ({0:?}); nothing after the last commit was acknowledged, so a restart resumes there"
    )]
    ShutdownTimeout(Duration),
}

impl Retryable for RunError {
    /// A run that failed this way may succeed when started over from the tables.
    fn is_transient(&self) -> bool {
        match self {
            RunError::Source(e) => e.is_transient(),
            RunError::Sink(e) => e.is_transient(),
            _ => false,
        }
    }
}

/// What a run did, for the operator's summary line.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    pub micro_batches: u64,
    pub records_read: u64,
    pub tables: Vec<TableSummary>,
    pub stopped_by_signal: bool,
}

#[derive(Debug, Clone)]
pub struct TableSummary {
    pub name: String,
    pub rows_written: u64,
    pub commits: u64,
    pub skipped_commits: u64,
    /// Records re-delivered after a restart that the table already held.
    pub skipped_records: u64,
    pub version: Option<u64>,
    pub stats: Option<OperatorStats>,
    /// An aggregate's watermark at the end of the run (µs since the epoch).
    pub watermark: Option<i64>,
    /// How far the table's incremental snapshot got in this run, when it took part.
    pub snapshot: Option<String>,
}

/// Runs `pipeline` until its input ends (`--once`, bounded sources) or `shutdown`
/// resolves; either way the last micro-batch is committed before returning.
///
/// Shards that move between processes (Kafka partitions in a consumer group) can be
/// written by another process while this one still holds records of them; the table's
/// optimistic concurrency refuses such a commit ([`SinkError::ForeignProgress`]), and
/// the micro-batch is committed again without what the other process holds (see
/// [`handover`]); only when that keeps failing does the run start over from what the
/// tables hold.
pub async fn run(
    pipeline: &Pipeline,
    mode: RunMode,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<RunSummary, RunError> {
    let movable = matches!(pipeline.source, SourceConfig::Kafka(_));
    let (stop_tx, stop_rx) = watch::channel(false);
    let signal = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    };
    let attempts = async {
        let policy = RetryPolicy::restarts(mode);
        let batches = AtomicU64::new(0);
        let mut failures = 0u32;
        let mut progress_at_failure = 0;
        loop {
            let mut stop = stop_rx.clone();
            let stopped = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            let outcome = run_once(pipeline, mode, stopped, &batches).await;
            let stopping = *stop_rx.borrow();
            match outcome {
                Err(RunError::Sink(e @ SinkError::ForeignProgress { .. })) if movable && !stopping => {
                    tracing::warn!(error = %e, "another consumer wrote these partitions: starting over from the tables");
                }
                Err(e) if !stopping => {
                    // Failures in a row count against the policy; a run that committed
                    // something since the last one starts the count again.
                    let done = batches.load(Ordering::Relaxed);
                    if done > progress_at_failure {
                        failures = 0;
                    }
                    progress_at_failure = done;
                    failures += 1;
                    let Some(backoff) = policy.retry_after(&e, failures) else {
                        telemetry::set_state(telemetry::State::Failed);
                        return Err(e);
                    };
                    telemetry::set_state(telemetry::State::Retrying);
                    metrics::counter!(telemetry::RESTARTS).increment(1);
                    tracing::warn!(error = %e, attempt = failures, ?backoff, "transient failure: starting over from the tables");
                    let mut stop = stop_rx.clone();
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        _ = stop.wait_for(|s| *s) => return Err(e),
                    }
                }
                other => return other,
            }
        }
    };
    tokio::pin!(signal);
    tokio::pin!(attempts);
    let mut signalled = false;
    let deadline = pipeline.runtime.shutdown_timeout.0;
    let give_up = tokio::time::sleep(Duration::MAX);
    tokio::pin!(give_up);
    loop {
        tokio::select! {
            r = &mut attempts => return r,
            () = &mut signal, if !signalled => {
                signalled = true;
                telemetry::set_state(telemetry::State::Stopping);
                give_up.as_mut().reset(tokio::time::Instant::now() + deadline);
            }
            () = &mut give_up, if signalled => return Err(RunError::ShutdownTimeout(deadline)),
        }
    }
}

async fn run_once(
    pipeline: &Pipeline,
    mode: RunMode,
    shutdown: impl Future<Output = ()> + Send,
    batches: &AtomicU64,
) -> Result<RunSummary, RunError> {
    if mode == RunMode::Once
        && let SourceConfig::Generator(g) = &pipeline.source
        && g.events.is_none()
    {
        return Err(RunError::Pipeline {
            file: pipeline.file.clone(),
            key: "source.events".into(),
            message: "a --once run needs a bounded generator: set `events`".into(),
        });
    }
    let shard_info = source::shards_of(&pipeline.source).await?;
    // Tables read their progress for the source's cursor shards too (see
    // `source::Cursor`); those are not shards of their own.
    let cursor_shards = source::cursor_shards(&pipeline.source);
    let shards: Vec<String> = shard_info
        .iter()
        .map(|s| s.name.clone())
        .chain(cursor_shards.iter().cloned())
        .collect();
    let storage = pipeline.sink.storage_options();
    let open = |name: String, options: TableOptions| {
        let url = pipeline.sink.table_url(&name);
        let (storage, shards) = (storage.clone(), shards.clone());
        async move { DeltaSink::open(&name, url, storage, &pipeline.name, &shards, options).await }
    };
    let mut dead = None;
    if let Some(name) = &pipeline.dead_letters {
        let sink = open(name.clone(), TableOptions::append(pipeline.sink.checkpoint_every)).await?;
        tracing::info!(table = %name, committed = ?sink.committed(), "dead-letter table opened");
        dead = Some(DeadLetterTarget {
            summary: summary(name),
            sink,
        });
    }
    let mut tables = Vec::with_capacity(pipeline.tables.len());
    for t in &pipeline.tables {
        // A mirror's commits take turns with its compaction rounds (see `compaction`).
        let gate: Option<std::sync::Arc<crate::sink::compact::Gate>> =
            (t.mode == crate::config::TableMode::Mirror).then(Default::default);
        let options = TableOptions {
            mode: t.mode,
            key: t.key.clone(),
            partition_by: t.partition_by.clone(),
            checkpoint_every: pipeline.sink.checkpoint_every,
            target_file_size: pipeline.sink.target_file_size.0,
            null_safe_key: false,
            merge: t.merge,
            index: Some(IndexOptions {
                cache_dir: pipeline.runtime.cache_dir.clone(),
                cache_bytes: pipeline.runtime.key_index_cache_bytes(),
                moves: gate.as_ref().map(|g| g.moves()),
            }),
        };
        let sink = open(t.name.clone(), options).await?;
        tracing::info!(table = %t.name, committed = ?sink.committed(), "table opened");
        tables.push(TableTarget {
            cfg: t.clone(),
            summary: summary(&t.name),
            sink,
            gate,
            gate_epoch: 0,
        });
    }
    let mut aggregates = Vec::with_capacity(pipeline.aggregates.len());
    for a in &pipeline.aggregates {
        let options = if a.keyed() {
            TableOptions::keyed_aggregate(a.merge_key(), pipeline.sink.checkpoint_every)
        } else {
            TableOptions::append(pipeline.sink.checkpoint_every)
        };
        let sink = open(a.name.clone(), options).await?;
        tracing::info!(aggregate = %a.name, committed = ?sink.committed(), "aggregate table opened");
        let late = match &a.late_table {
            Some(name) => {
                let sink = open(name.clone(), TableOptions::append(pipeline.sink.checkpoint_every)).await?;
                Some(DeadLetterTarget {
                    summary: summary(name),
                    sink,
                })
            }
            None => None,
        };
        aggregates.push(AggregateTarget {
            cfg: a.clone(),
            processed: sink.committed().clone(),
            summary: summary(&a.name),
            sink,
            op: None,
            batches_since_commit: 0,
            input: None,
            late,
            late_pending: Vec::new(),
            per_shard: std::collections::BTreeMap::new(),
            shards: shard_info
                .iter()
                .filter(|s| s.stream.as_ref().is_none_or(|stream| *stream == a.from))
                .map(|s| s.name.clone())
                .collect(),
        });
    }

    let resume = held_by_all(&tables, &aggregates, &shard_info);
    tracing::info!(?resume, ?mode, "opening source");
    let owned = Arc::new(source::Owned::default());
    let chunk_rows = pipeline.batch.max_rows.min(MAX_CHUNK_ROWS);
    let held = source::Resume {
        min: resume.clone(),
        tables: tables
            .iter()
            .map(|t| t.sink.committed().clone())
            .chain(aggregates.iter().map(|a| a.sink.committed().clone()))
            .collect(),
        oracle: Some(std::sync::Arc::new(oracle::Oracle::new(pipeline, &shard_info))),
        schemas: tables::stream_schemas(&tables),
        owned: owned.clone(),
        streams: tables
            .iter()
            .map(|t| (t.cfg.from.clone(), false))
            .chain(aggregates.iter().map(|a| (a.cfg.from.clone(), true)))
            .collect(),
        cursors: tables::cursor_states(&tables, &cursor_shards).await?,
    };
    // A source that prefetches on its own (librdkafka) gets a quarter of the
    // in-flight bytes for it; the runtime's own queue and batches the rest.
    let mut in_flight = pipeline.runtime.in_flight_bytes();
    let prefetch = in_flight / 4;
    if matches!(pipeline.source, SourceConfig::Kafka(_)) {
        in_flight -= prefetch;
    }
    let local = source::Local {
        prefetch,
        spill_dir: pipeline.runtime.cache_dir.join("spill").join(&pipeline.name),
        spill_after: in_flight / 4,
    };
    let source = source::open(&pipeline.source, &held, mode, chunk_rows, dead.is_some(), &local).await?;
    for t in &mut tables {
        t.adopt_key(source.as_ref()).await?;
    }
    if let Some(schema) = source.schema() {
        for a in &mut aggregates {
            a.start(&schema).await?;
        }
    }

    let limit = usize::try_from(in_flight)
        .unwrap_or(usize::MAX)
        .min(Semaphore::MAX_PERMITS);
    let budget = Arc::new(Semaphore::new(limit));
    metrics::gauge!(telemetry::IN_FLIGHT_LIMIT).set(limit as f64);
    let (tx, mut rx) = mpsc::channel(CHANNEL_CHUNKS);
    let (ack_tx, ack_rx) = watch::channel(resume.clone());
    let source_task = tokio::spawn(drive_source(source, tx, ack_rx, budget.clone()));
    let time_column = pipeline.source.source_time_column();
    // Scheduled `--once` runs leave compaction to `maintain`; a continuous run's
    // compaction task also deletes expired log entries, off the commit path.
    if mode == RunMode::Continuous {
        let covered = compaction::covers(pipeline);
        let sinks = dead
            .iter_mut()
            .map(|d| &mut d.sink)
            .chain(tables.iter_mut().map(|t| &mut t.sink))
            .chain(
                aggregates
                    .iter_mut()
                    .flat_map(|a| std::iter::once(&mut a.sink).chain(a.late.as_mut().map(|l| &mut l.sink))),
            );
        for sink in sinks {
            if covered.iter().any(|n| n == sink.name()) {
                sink.leave_log_cleanup();
            }
        }
    }
    let _compaction = match mode {
        RunMode::Continuous => {
            let gates = tables
                .iter()
                .filter_map(|t| t.gate.clone().map(|g| (t.cfg.name.clone(), g)))
                .collect();
            compaction::spawn(pipeline, &gates)
        }
        RunMode::Once => None,
    };
    telemetry::set_state(telemetry::State::Running);

    let mut summary = RunSummary::default();
    let retry = RetryPolicy::default();
    let max_rows = pipeline.batch.max_rows;
    let max_latency = pipeline.batch.max_latency.0;
    let min_interval = pipeline.batch.min_interval.0;
    let pipelined = pipeline.batch.pipelined;
    // When the previous micro-batch started committing.
    let mut last_start: Option<tokio::time::Instant> = None;
    let max_bytes = usize::try_from(pipeline.batch.max_bytes.0).unwrap_or(usize::MAX);
    let mut carry: Option<(SourceBatch, Option<OwnedSemaphorePermit>)> = None;
    let movable = matches!(pipeline.source, SourceConfig::Kafka(_));
    let mut fence = handover::Fence::default();
    let env = Env {
        owned: &owned,
        movable,
        retry: &retry,
        shard_info: &shard_info,
        time_column,
        ack_tx: &ack_tx,
        budget: &budget,
        limit,
        batches,
    };
    // The micro-batch whose files are being written, committed once the next one is
    // gathered (and launched, when it may be: see `flight`).
    let mut flight: Option<Flight> = None;
    tokio::pin!(shutdown);
    let mut stopping = false;
    let mut ended = false;
    // A micro-batch begun while another was in flight, too early to launch.
    let mut partial: Option<Gathered> = None;
    while !ended && !stopping {
        // --- gather one micro-batch ---------------------------------------------------
        let Gathered {
            mut pending,
            mut held,
            mut deadline,
            mut alone,
        } = partial.take().unwrap_or_default();
        // A shard let go meanwhile: its next owner reads its records.
        pending.retain(|b| fence.admits(b));
        let mut rows: usize = pending.iter().map(|b| b.records.num_rows()).sum();
        let mut bytes: usize = pending.iter().map(SourceBatch::bytes).sum();
        // Shards assigned to this process since the last micro-batch (a rebalance).
        let mut reassigned: Option<Vec<Arc<str>>> = None;
        // A rebalance is taking shards away: commit everything, aggregates included.
        let mut revoking = false;
        // Aggregates hold progress they have not committed (they commit when they emit,
        // or every few micro-batches): once the input is quiet for a while, they commit
        // it, so that the source is acknowledged up to its end (Kafka lag reads zero).
        let idle_at = (flight.is_none() && aggregates.iter().any(AggregateTarget::behind))
            .then(|| tokio::time::Instant::now() + max_latency.max(IDLE_COMMIT));
        let mut idle = false;
        let ready_at = last_start.map(|t| t + min_interval);
        // With a micro-batch in flight, the next one is what waits once its files are
        // written; then that one commits.
        let drain_only = flight.is_some();
        if let Some(f) = flight.as_mut() {
            tokio::select! {
                biased;
                () = &mut shutdown => stopping = shutdown_requested(&mut summary),
                () = f.staged() => {}
            }
        }
        if !stopping
            && pending.is_empty()
            && let Some((b, permit)) = carry.take().filter(|(b, _)| fence.admits(b))
        {
            rows = b.records.num_rows();
            bytes = b.bytes();
            deadline = Some(tokio::time::Instant::now() + max_latency);
            alone = travels_alone(&b);
            pending.push(b);
            held.extend(permit);
        }
        // The adaptive trigger: a micro-batch closes as soon as nothing more is waiting
        // (and `min_interval` has passed since the previous one started), so under load
        // batches grow with the commit time and at low rates records do not wait for a
        // timer; `max_latency`, `max_rows` and `max_bytes` bound it.
        while !stopping && rows < max_rows && bytes < max_bytes {
            let now = tokio::time::Instant::now();
            if rx.is_empty() && (drain_only || (!pending.is_empty() && ready_at.is_none_or(|r| now >= r))) {
                break;
            }
            let wake = match (deadline, ready_at) {
                (Some(d), Some(r)) if r > now => Some(d.min(r)),
                (None, _) if pending.is_empty() => idle_at,
                (d, _) => d,
            };
            let timer = async {
                match wake {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = &mut shutdown => {
                    stopping = shutdown_requested(&mut summary);
                    break;
                }
                msg = rx.recv() => match msg.map(|d| (d.polled, d.held)) {
                    // A shard this process let go of: its next owner reads it.
                    Some((Ok(Polled::Batch(b)), _)) if !fence.admits(&b) => {}
                    Some((Ok(Polled::Batch(b)), permit)) if travels_alone(&b) || alone => {
                        // Counted on arrival: a batch carried to the next micro-batch too.
                        count_read(&mut summary, &b);
                        // Markers at one position travel together (one per table), and
                        // so do the streams of one spilled transaction; anything else
                        // waits for the next micro-batch.
                        let joins = pending.iter().all(|p| {
                            travels_alone(p)
                                && travels_alone(&b)
                                && p.next == b.next
                                && p.control == b.control
                                && p.spilled.is_some() == b.spilled.is_some()
                        });
                        if joins {
                            deadline.get_or_insert_with(|| tokio::time::Instant::now() + max_latency);
                            alone = true;
                            pending.push(b);
                            held.extend(permit);
                        } else {
                            carry = Some((b, permit));
                            break;
                        }
                    }
                    Some((Ok(Polled::Batch(b)), permit)) => {
                        let n = b.records.num_rows();
                        count_read(&mut summary, &b);
                        bytes += b.bytes();
                        deadline.get_or_insert_with(|| tokio::time::Instant::now() + max_latency);
                        if rows + n > max_rows {
                            // The share stays with the tail, the larger part in flight
                            // after this micro-batch commits.
                            match split(b, max_rows - rows) {
                                (head, Some(tail)) => {
                                    carry = Some((tail, permit));
                                    pending.push(head);
                                }
                                (whole, None) => {
                                    pending.push(whole);
                                    held.extend(permit);
                                }
                            }
                            rows = max_rows;
                        } else {
                            rows += n;
                            pending.push(b);
                            held.extend(permit);
                        }
                    }
                    Some((Ok(Polled::Idle), _)) => {}
                    Some((Ok(Polled::Reassigned(shards)), _)) => {
                        // Commit what came before, then read the tables again.
                        fence.lift(&shards);
                        reassigned = Some(shards);
                        break;
                    }
                    Some((Ok(Polled::Revoked), _)) => {
                        // The consumer waits for this commit before the next owner
                        // reads the tables: make it now.
                        revoking = true;
                        break;
                    }
                    Some((Ok(Polled::End), _)) | None => {
                        ended = true;
                        break;
                    }
                    Some((Err(e), _)) => return Err(e.into()),
                },
                () = timer => {
                    // `min_interval` is over: the check above closes the batch once
                    // what is waiting is in; `max_latency` closes it now.
                    let now = tokio::time::Instant::now();
                    if deadline.is_some_and(|d| now >= d) {
                        break;
                    }
                    if pending.is_empty() && idle_at.is_some_and(|t| now >= t) {
                        idle = true;
                        break;
                    }
                }
            }
        }
        // Too early for another micro-batch (`min_interval`) and room left in this one:
        // the one in flight commits, and this one goes on gathering.
        let full = rows >= max_rows || bytes >= max_bytes;
        let early = ready_at.is_some_and(|r| tokio::time::Instant::now() < r);
        if drain_only
            && early
            && !full
            && !pending.is_empty()
            && carry.is_none()
            && reassigned.is_none()
            && !revoking
            && !ended
            && !stopping
            && let Some(f) = flight.take()
        {
            finish(f, &mut dead, &mut tables, &mut aggregates, &mut fence, &env).await?;
            partial = Some(Gathered {
                pending,
                held,
                deadline,
                alone,
            });
            continue;
        }
        // --- launch it, and commit the one in flight --------------------------------------
        // The next micro-batch is prepared and its files written while the one in
        // flight commits, when nothing in either can change what it is (see `flight`).
        let ahead = match &flight {
            Some(f) if !pending.is_empty() && f.lets_next_ahead() && flight::plain(&pending) => {
                Some(flight::launch(&mut tables, &pending, &fence, true)?)
            }
            _ => None,
        };
        if let Some(f) = flight.take() {
            finish(f, &mut dead, &mut tables, &mut aggregates, &mut fence, &env).await?;
        }
        // The last micro-batch is committed even when empty: aggregates then commit
        // everything they hold.
        if pending.is_empty() && !ended && !stopping {
            if let Some(shards) = reassigned {
                refresh(&mut dead, &mut tables).await?;
                claim(&mut aggregates, &shards, &owned).await?;
            }
            for a in &mut aggregates {
                a.release(&mut fence, &owned);
            }
            if idle {
                for a in &mut aggregates {
                    a.process(&[], true, &retry, &owned, &mut fence).await?;
                }
                acknowledge(&ack_tx, held_by_all(&tables, &aggregates, &shard_info));
            }
            continue;
        }
        let ahead = match ahead {
            Some(a) => a,
            None => flight::launch(&mut tables, &pending, &fence, pipelined)?,
        };
        summary.micro_batches += 1;
        last_start = Some(tokio::time::Instant::now());
        let launched = Flight::new(
            pending,
            held,
            rows,
            bytes,
            reassigned,
            ended || stopping || revoking,
            ahead,
        );
        // The last micro-batch, one before a rebalance takes shards away (the consumer
        // waits for it) and one before the tables are read again commit at once.
        if launched.closing || launched.reassigned.is_some() || !pipelined {
            finish(
                launched,
                &mut dead,
                &mut tables,
                &mut aggregates,
                &mut fence,
                &env,
            )
            .await?;
        } else {
            flight = Some(launched);
        }
    }
    if let Some(f) = flight.take() {
        finish(f, &mut dead, &mut tables, &mut aggregates, &mut fence, &env).await?;
    }
    drop(rx);
    drop(ack_tx);
    // The source task ends once the channel and acknowledgements are closed.
    let _ = source_task.await;

    summary.tables = dead
        .into_iter()
        .map(|d| d.summary)
        .chain(tables.into_iter().map(TableTarget::finish))
        .chain(aggregates.into_iter().flat_map(AggregateTarget::finish))
        .collect();
    Ok(summary)
}

/// A micro-batch being gathered: its batches and their shares of the budget (released
/// once it is committed).
#[derive(Default)]
struct Gathered {
    pending: Vec<SourceBatch>,
    held: Vec<OwnedSemaphorePermit>,
    /// When `batch.max_latency` closes it.
    deadline: Option<tokio::time::Instant>,
    /// It holds a control marker or spilled transaction (see `cut::travels_alone`).
    alone: bool,
}

/// Maintains every table of `pipeline` (see [`crate::sink::maintain`]), one at a time.
pub async fn maintain(
    pipeline: &Pipeline,
    retention: std::time::Duration,
) -> Result<Vec<crate::sink::maintain::MaintainReport>, SinkError> {
    let cursor_shards = source::cursor_shards(&pipeline.source);
    let shards: Vec<String> = source::shards_of(&pipeline.source)
        .await
        .map_err(|e| SinkError::Delta {
            table: pipeline.name.clone(),
            source: deltalake::DeltaTableError::Generic(e.to_string()),
        })?
        .into_iter()
        .map(|s| s.name)
        .chain(cursor_shards.iter().cloned())
        .collect();
    let storage = pipeline.sink.storage_options();
    let mut reports = Vec::new();
    for name in pipeline.table_names() {
        let url = pipeline.sink.table_url(name);
        // The snapshot the table's progress names is the one a restart loads.
        let progress = DeltaSink::open(
            name,
            url.clone(),
            storage.clone(),
            &pipeline.name,
            &shards,
            TableOptions::append(pipeline.sink.checkpoint_every),
        )
        .await?
        .committed()
        .clone();
        // An aggregate's one snapshot, or a per-partition aggregate's one per shard,
        // and the state of a table's cursor (an incremental snapshot's last key).
        let keep: Vec<String> = (!progress.is_empty())
            .then(|| crate::sink::state_key(&progress))
            .into_iter()
            .chain(progress.iter().map(|(s, n)| partitioned::shard_state_key(s, n)))
            .chain(
                progress
                    .iter()
                    .filter(|(s, _)| cursor_shards.iter().any(|c| c == s))
                    .map(|(s, n)| source::cursor_state_key(s, n)),
            )
            .collect();
        let report = crate::sink::maintain::maintain(
            name,
            url,
            storage.clone(),
            pipeline.sink.target_file_size.0,
            retention,
            &keep,
        )
        .await
        .map_err(|source| SinkError::Delta {
            table: name.to_string(),
            source,
        })?;
        tracing::info!(table = name, ?report, "maintained");
        reports.push(report);
    }
    Ok(reports)
}

/// Per shard, the progress every table fed by the shard holds: where the source
/// resumes at start, and how far it may be acknowledged after each micro-batch.
fn held_by_all(
    tables: &[TableTarget],
    aggregates: &[AggregateTarget],
    shards: &[source::ShardInfo],
) -> Progress {
    let committed: Vec<(&str, &Progress)> = tables
        .iter()
        .map(|t| (t.cfg.from.as_str(), t.sink.committed()))
        .chain(
            aggregates
                .iter()
                .map(|a| (a.cfg.from.as_str(), a.sink.committed())),
        )
        .collect();
    oracle::held(shards, &committed)
}

/// Reads every table's progress again (shards were reassigned: another process may
/// have written them since).
/// Hands the source `ack` when it moved (the source acknowledges up to it).
fn acknowledge(tx: &watch::Sender<Progress>, ack: Progress) {
    tx.send_if_modified(|sent| {
        let moved = *sent != ack;
        if moved {
            *sent = ack;
        }
        moved
    });
}

/// Per-partition aggregates take the state of the shards just assigned (see
/// [`aggregate::AggregateTarget::claim`]).
async fn claim(
    aggregates: &mut [AggregateTarget],
    shards: &[Arc<str>],
    owned: &source::Owned,
) -> Result<(), RunError> {
    for a in aggregates {
        a.claim(shards, owned).await?;
    }
    Ok(())
}

async fn refresh(dead: &mut Option<DeadLetterTarget>, tables: &mut [TableTarget]) -> Result<(), RunError> {
    if let Some(d) = dead {
        d.sink.refresh().await?;
    }
    for t in tables {
        t.sink.refresh().await?;
    }
    Ok(())
}

/// Notes a shutdown signal in `summary`; always true (the run is stopping).
fn shutdown_requested(summary: &mut RunSummary) -> bool {
    tracing::info!("shutdown requested: committing the current batch");
    summary.stopped_by_signal = true;
    true
}

/// Counts `b`'s records (spilled ones included) as read, once, when it arrives.
fn count_read(summary: &mut RunSummary, b: &SourceBatch) {
    let n = b.records.num_rows() + b.spilled.as_ref().map_or(0, |s| s.rows());
    if n == 0 {
        return;
    }
    summary.records_read += n as u64;
    metrics::counter!(telemetry::RECORDS_READ, "stream" => b.stream.to_string()).increment(n as u64);
    metrics::counter!(telemetry::BYTES_READ, "stream" => b.stream.to_string()).increment(b.bytes() as u64);
}

/// Sets the in-flight gauge: the part of the budget (`limit` bytes) records hold.
fn report_in_flight(budget: &Semaphore, limit: usize) {
    metrics::gauge!(telemetry::IN_FLIGHT_BYTES).set((limit - budget.available_permits()) as f64);
}
