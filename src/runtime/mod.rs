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

mod retry;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Instant;

use deltalake::arrow::array::RecordBatch;
use deltalake::arrow::datatypes::SchemaRef;
use tokio::sync::{mpsc, watch};

use crate::config::{AggregateConfig, Pipeline, SourceConfig};
use crate::progress::Progress;
use crate::sink::{Commit, Committed, DeltaSink, Sink, SinkError, state_key};
use crate::source::{self, Polled, RunMode, Source, SourceBatch, SourceError};
use crate::window::{self, Operator, OperatorStats, WindowError};

pub use retry::{RetryPolicy, Retryable};

/// Largest chunk a source hands over at once; a micro-batch is built from chunks.
const MAX_CHUNK_ROWS: usize = 32_768;
/// Chunks buffered between the source task and the batcher.
const CHANNEL_CHUNKS: usize = 4;
/// An aggregate with nothing to emit still commits its progress (and state) after this
/// many micro-batches, bounding how much a restart must replay.
const AGGREGATE_COMMIT_EVERY: u32 = 10;
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
    pub version: Option<u64>,
    pub stats: Option<OperatorStats>,
}

struct TableTarget {
    from: String,
    sink: DeltaSink,
    summary: TableSummary,
}

struct AggregateTarget {
    cfg: AggregateConfig,
    sink: DeltaSink,
    op: Option<Box<dyn Operator>>,
    /// Progress folded into `op`, ahead of the sink's committed progress between commits.
    processed: Progress,
    batches_since_commit: u32,
    summary: TableSummary,
}

/// Runs `pipeline` until its input ends (`--once`, bounded sources) or `shutdown`
/// resolves; either way the last micro-batch is committed before returning.
pub async fn run(
    pipeline: &Pipeline,
    mode: RunMode,
    shutdown: impl Future<Output = ()> + Send,
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
    let shards = source::shards_of(&pipeline.source);
    let storage = pipeline.sink.storage_options();
    let mut tables = Vec::with_capacity(pipeline.tables.len());
    for t in &pipeline.tables {
        let sink = DeltaSink::open(
            &t.name,
            pipeline.sink.table_url(&t.name),
            storage.clone(),
            &pipeline.name,
            &shards,
            &t.partition_by,
            pipeline.sink.checkpoint_every,
        )
        .await?;
        tracing::info!(table = %t.name, committed = ?sink.committed(), "table opened");
        tables.push(TableTarget {
            from: t.from.clone(),
            summary: summary(&t.name),
            sink,
        });
    }
    let mut aggregates = Vec::with_capacity(pipeline.aggregates.len());
    for a in &pipeline.aggregates {
        let sink = DeltaSink::open(
            &a.name,
            pipeline.sink.table_url(&a.name),
            storage.clone(),
            &pipeline.name,
            &shards,
            &[],
            pipeline.sink.checkpoint_every,
        )
        .await?;
        tracing::info!(aggregate = %a.name, committed = ?sink.committed(), "aggregate table opened");
        aggregates.push(AggregateTarget {
            cfg: a.clone(),
            processed: sink.committed().clone(),
            summary: summary(&a.name),
            sink,
            op: None,
            batches_since_commit: 0,
        });
    }

    let resume = held_by_all(&tables, &aggregates, &shards);
    tracing::info!(?resume, ?mode, "opening source");
    let chunk_rows = pipeline.batch.max_rows.min(MAX_CHUNK_ROWS);
    let source = source::open(&pipeline.source, &resume, mode, chunk_rows)?;
    if let Some(schema) = source.schema() {
        for a in &mut aggregates {
            a.start(&schema).await?;
        }
    }

    let (tx, mut rx) = mpsc::channel(CHANNEL_CHUNKS);
    let (ack_tx, ack_rx) = watch::channel(resume.clone());
    let source_task = tokio::spawn(drive_source(source, tx, ack_rx));

    let mut summary = RunSummary::default();
    let retry = RetryPolicy::default();
    let max_rows = pipeline.batch.max_rows;
    let max_latency = pipeline.batch.max_latency.0;
    let mut carry: Option<SourceBatch> = None;
    let mut acked = resume;
    tokio::pin!(shutdown);
    let mut stopping = false;
    let mut ended = false;
    while !ended && !stopping {
        // --- gather one micro-batch ---------------------------------------------------
        let mut pending: Vec<SourceBatch> = Vec::new();
        let mut rows = 0usize;
        let mut deadline: Option<tokio::time::Instant> = None;
        if let Some(b) = carry.take() {
            rows = b.records.num_rows();
            deadline = Some(tokio::time::Instant::now() + max_latency);
            pending.push(b);
        }
        while rows < max_rows {
            let timer = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = &mut shutdown => {
                    tracing::info!("shutdown requested: committing the current batch");
                    stopping = true;
                    summary.stopped_by_signal = true;
                    break;
                }
                msg = rx.recv() => match msg {
                    Some(Ok(Polled::Batch(b))) => {
                        let n = b.records.num_rows();
                        summary.records_read += n as u64;
                        deadline.get_or_insert_with(|| tokio::time::Instant::now() + max_latency);
                        if rows + n > max_rows {
                            let (head, tail) = split(b, max_rows - rows);
                            carry = Some(tail);
                            pending.push(head);
                            rows = max_rows;
                        } else {
                            rows += n;
                            pending.push(b);
                        }
                    }
                    Some(Ok(Polled::Idle)) => {}
                    Some(Ok(Polled::End)) | None => {
                        ended = true;
                        break;
                    }
                    Some(Err(e)) => return Err(e.into()),
                },
                () = timer => break,
            }
        }
        if pending.is_empty() && !ended && !stopping {
            continue;
        }

        // --- commit it ------------------------------------------------------------------
        summary.micro_batches += 1;
        let started = Instant::now();
        for t in &mut tables {
            t.commit(&pending, &retry).await?;
        }
        for a in &mut aggregates {
            a.process(&pending, ended || stopping, &retry).await?;
        }
        tracing::debug!(
            rows,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "micro-batch committed"
        );

        // --- acknowledge ----------------------------------------------------------------
        let ack = held_by_all(&tables, &aggregates, &shards);
        if ack != acked {
            acked = ack.clone();
            let _ = ack_tx.send(ack);
        }
    }
    drop(rx);
    drop(ack_tx);
    // The source task ends once the channel and acknowledgements are closed.
    let _ = source_task.await;

    summary.tables = tables
        .into_iter()
        .map(|t| t.finish())
        .chain(aggregates.into_iter().map(AggregateTarget::finish))
        .collect();
    Ok(summary)
}

/// Per shard, the progress every table holds: where the source resumes at start, and
/// how far it may be acknowledged after each micro-batch.
fn held_by_all(tables: &[TableTarget], aggregates: &[AggregateTarget], shards: &[String]) -> Progress {
    let committed = tables
        .iter()
        .map(|t| t.sink.committed())
        .chain(aggregates.iter().map(|a| a.sink.committed()));
    Progress::min_over(committed, shards)
}

fn summary(name: &str) -> TableSummary {
    TableSummary {
        name: name.to_string(),
        rows_written: 0,
        commits: 0,
        skipped_commits: 0,
        version: None,
        stats: None,
    }
}

/// Splits `b` after `k` rows; the head resumes at the tail's first position.
fn split(b: SourceBatch, k: usize) -> (SourceBatch, SourceBatch) {
    let n = b.records.num_rows();
    let head = SourceBatch {
        stream: b.stream.clone(),
        shard: b.shard.clone(),
        records: b.records.slice(0, k),
        positions: b.positions.slice(0, k),
        next: b.positions.value(k),
        end_of_input: false,
    };
    let tail = SourceBatch {
        records: b.records.slice(k, n - k),
        positions: b.positions.slice(k, n - k),
        ..b
    };
    (head, tail)
}

/// Polls the source into the channel and forwards acknowledgements to it.
async fn drive_source(
    mut source: Box<dyn Source>,
    tx: mpsc::Sender<Result<Polled, SourceError>>,
    mut acks: watch::Receiver<Progress>,
) {
    async fn ack(source: &mut Box<dyn Source>, acks: &mut watch::Receiver<Progress>) {
        let progress = acks.borrow_and_update().clone();
        if let Err(e) = source.acknowledge(&progress).await {
            // Acknowledgement is a hint (the tables hold the truth); the next one will
            // carry the same or later progress.
            tracing::warn!(error = %e, "source acknowledgement failed");
        }
    }
    loop {
        if acks.has_changed().unwrap_or(false) {
            ack(&mut source, &mut acks).await;
        }
        match source.poll().await {
            Ok(Polled::Idle) => {
                if tx.is_closed() {
                    return;
                }
            }
            Ok(Polled::End) => {
                let _ = tx.send(Ok(Polled::End)).await;
                break;
            }
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
            Ok(polled) => {
                if tx.send(Ok(polled)).await.is_err() {
                    return;
                }
            }
        }
    }
    while acks.changed().await.is_ok() {
        ack(&mut source, &mut acks).await;
    }
}

/// Commits `commit` to `sink`, retrying transient failures per the one policy.
async fn commit_with_retry(
    sink: &mut DeltaSink,
    commit: Commit,
    retry: &RetryPolicy,
) -> Result<Committed, SinkError> {
    let mut attempt = 1;
    loop {
        match sink.commit(commit.clone()).await {
            Ok(c) => return Ok(c),
            Err(e) => match retry.retry_after(&e, attempt) {
                Some(backoff) => {
                    tracing::warn!(table = sink.name(), error = %e, attempt, ?backoff, "commit failed; retrying");
                    tokio::time::sleep(backoff).await;
                    attempt += 1;
                }
                None => return Err(e),
            },
        }
    }
}

/// Per shard, the resume position after `pending` (batches of `stream` only).
fn batch_progress(pending: &[SourceBatch], stream: &str) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for b in pending.iter().filter(|b| &*b.stream == stream) {
        let e = out.entry(b.shard.to_string()).or_insert(b.next);
        *e = (*e).max(b.next);
    }
    out
}

impl TableTarget {
    async fn commit(&mut self, pending: &[SourceBatch], retry: &RetryPolicy) -> Result<(), RunError> {
        let progress: Vec<(String, i64)> = batch_progress(pending, &self.from)
            .into_iter()
            .filter(|(shard, next)| self.sink.committed().get(shard).is_none_or(|c| c < *next))
            .collect();
        if progress.is_empty() {
            return Ok(());
        }
        let mine = || pending.iter().filter(|b| *b.stream == *self.from);
        let mut batches: Vec<RecordBatch> = mine()
            .filter_map(|b| b.since(self.sink.committed().get(&b.shard)))
            .collect();
        if batches.is_empty() {
            // Only an end-of-input marker is new: commit its progress (the schema is
            // needed in case this creates the table).
            batches.extend(mine().next().map(|b| RecordBatch::new_empty(b.records.schema())));
        }
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        let commit = Commit {
            batches,
            progress,
            info: BTreeMap::new(),
        };
        match commit_with_retry(&mut self.sink, commit, retry).await? {
            Committed::Version(v) => {
                self.summary.commits += 1;
                self.summary.rows_written += rows as u64;
                self.summary.version = Some(v);
            }
            Committed::AlreadyThere => self.summary.skipped_commits += 1,
        }
        Ok(())
    }

    fn finish(self) -> TableSummary {
        self.summary
    }
}

impl AggregateTarget {
    /// Builds the operator and restores the state that matches the table's progress.
    async fn start(&mut self, schema: &SchemaRef) -> Result<(), RunError> {
        let mut op = window::build(&self.cfg, schema)?;
        let committed = self.sink.committed();
        let snapshot = if committed.is_empty() {
            None
        } else {
            let key = state_key(committed);
            let bytes = self.sink.get_state(&key).await?;
            if bytes.is_none() {
                return Err(RunError::State {
                    aggregate: self.cfg.name.clone(),
                    message: format!(
                        "the table is at {committed:?} but its state snapshot {key} is missing; \
                         restore it or rebuild the aggregate into a new table"
                    ),
                });
            }
            bytes
        };
        op.on_start(snapshot)?;
        self.op = Some(op);
        Ok(())
    }

    /// Folds the new rows of `pending` into the operator and commits what it emits.
    /// `flush` (end of run) commits progress even when nothing was emitted.
    async fn process(
        &mut self,
        pending: &[SourceBatch],
        flush: bool,
        retry: &RetryPolicy,
    ) -> Result<(), RunError> {
        let mine: Vec<&SourceBatch> = pending.iter().filter(|b| *b.stream == *self.cfg.from).collect();
        if self.op.is_none() {
            match mine.first() {
                Some(b) => self.start(&b.records.schema()).await?,
                None => return Ok(()),
            }
        }
        let Some(op) = self.op.as_mut() else { return Ok(()) };
        // An end-of-input marker not yet processed closes every window, once.
        let closing = mine
            .iter()
            .any(|b| b.end_of_input && self.processed.get(&b.shard).is_none_or(|p| p < b.next));
        for b in &mine {
            if let Some(rows) = b.since(self.processed.get(&b.shard)) {
                op.process_batch(&b.shard, &rows)?;
            }
            self.processed.advance(&b.shard, b.next);
        }
        let mut out: Vec<RecordBatch> = op.on_watermark()?.into_iter().collect();
        if closing {
            out.extend(op.on_close()?);
        }
        self.batches_since_commit += 1;
        let advanced = self
            .processed
            .iter()
            .any(|(s, v)| self.sink.committed().get(s).is_none_or(|c| c < v));
        let due = !out.is_empty() || closing || flush || self.batches_since_commit >= AGGREGATE_COMMIT_EVERY;
        if !advanced || !due {
            return Ok(());
        }
        // The snapshot must be durable before the commit that names it.
        let key = state_key(&self.processed);
        let state = op.on_checkpoint()?;
        retry
            .run("write operator state", || {
                self.sink.put_state(&key, state.clone())
            })
            .await?;
        if out.is_empty() {
            // A progress-only commit still needs the schema to create the table.
            out.push(RecordBatch::new_empty(op.output_schema()));
        }
        let rows: usize = out.iter().map(RecordBatch::num_rows).sum();
        let commit = Commit {
            batches: out,
            progress: self.processed.iter().map(|(s, v)| (s.to_string(), v)).collect(),
            info: BTreeMap::from([(STATE_INFO_KEY.to_string(), serde_json::Value::String(key))]),
        };
        match commit_with_retry(&mut self.sink, commit, retry).await? {
            Committed::Version(v) => {
                self.summary.commits += 1;
                self.summary.rows_written += rows as u64;
                self.summary.version = Some(v);
            }
            Committed::AlreadyThere => self.summary.skipped_commits += 1,
        }
        self.batches_since_commit = 0;
        Ok(())
    }

    fn finish(self) -> TableSummary {
        TableSummary {
            stats: self.op.as_ref().map(|o| o.stats()),
            ..self.summary
        }
    }
}
