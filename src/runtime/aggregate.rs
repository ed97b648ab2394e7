//! Aggregate targets: a windowed operator in front of its output table. The operator's
//! state is snapshotted (keyed by the progress the commit will carry) before each
//! commit that depends on it, so a restart restores the snapshot its table's progress
//! names and replays from there. An aggregate over the whole stream has one operator
//! and one snapshot; a per-partition one (`partitioned_by_key`) has one per shard
//! ([`super::partitioned`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use deltalake::arrow::array::RecordBatch;
use deltalake::arrow::datatypes::SchemaRef;

use super::handover::Fence;
use super::tables::{DeadLetterTarget, commit_with_retry, count};
use super::{RetryPolicy, RunError, STATE_INFO_KEY, TableSummary};
use crate::config::AggregateConfig;
use crate::progress::Progress;
use crate::sink::{Commit, DeltaSink, Sink, state_key};
use crate::source::{Control, Owned, SourceBatch};
use crate::telemetry;
use crate::window::{self, Operator, OperatorStats};

/// An aggregate with nothing to emit still commits its progress (and state) after this
/// many micro-batches, bounding how much a restart must replay.
pub(super) const AGGREGATE_COMMIT_EVERY: u32 = 10;

pub(super) struct AggregateTarget {
    pub cfg: AggregateConfig,
    pub sink: DeltaSink,
    pub op: Option<Box<dyn Operator>>,
    /// Progress folded into `op`, ahead of the sink's committed progress between commits.
    pub processed: Progress,
    pub batches_since_commit: u32,
    pub summary: TableSummary,
    /// Schema of the records the operator was built for.
    pub input: Option<SchemaRef>,
    /// The late-events table (`late = "dlq"`).
    pub late: Option<DeadLetterTarget>,
    /// The shards that feed it, each of which holds the watermark back.
    pub shards: Vec<String>,
    /// Late events not committed yet; they are committed just before the aggregate.
    pub late_pending: Vec<RecordBatch>,
    /// `per_partition`: an operator per shard this process owns (see [`super::partitioned`]).
    pub per_shard: BTreeMap<Arc<str>, Shard>,
}

/// One shard's operator, of a per-partition aggregate.
pub(super) struct Shard {
    pub op: Box<dyn Operator>,
    /// The shard's progress in the table when `op` took over: a table found past it
    /// was written by another process since.
    pub base: Option<i64>,
}

impl AggregateTarget {
    /// Builds the operator and restores the state that matches the table's progress.
    pub(super) async fn start(&mut self, schema: &SchemaRef) -> Result<(), RunError> {
        self.input = Some(schema.clone());
        if self.cfg.per_partition {
            // Each shard's operator is built when its first records arrive.
            return Ok(());
        }
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
        op.expect_shards(&self.shards);
        self.op = Some(op);
        Ok(())
    }

    /// Whether it has folded records past what its table holds (see `IDLE_COMMIT`).
    pub(super) fn behind(&self) -> bool {
        self.processed
            .iter()
            .any(|(s, v)| self.sink.committed().get(s).is_none_or(|c| c < v))
    }

    /// Folds the new rows of `pending` into the operator and commits what it emits.
    /// `flush` (end of run) commits progress even when nothing was emitted.
    pub(super) async fn process(
        &mut self,
        pending: &[SourceBatch],
        flush: bool,
        retry: &RetryPolicy,
        owned: &Owned,
        fence: &mut Fence,
    ) -> Result<(), RunError> {
        if self.cfg.per_partition {
            return self
                .process_partitioned(pending, flush, retry, owned, fence)
                .await;
        }
        let mine: Vec<&SourceBatch> = pending.iter().filter(|b| b.feeds(&self.cfg.from)).collect();
        let reset = mine.iter().any(|b| {
            b.control == Some(Control::Reset) && self.processed.get(&b.shard).is_none_or(|p| p < b.next)
        });
        if self.op.is_none() {
            // Records of the stream, or a marker that carries the stream's layout.
            match mine
                .iter()
                .find(|b| *b.stream == *self.cfg.from && b.records.num_columns() > 0)
            {
                Some(b) => self.start(&b.records.schema()).await?,
                None => return Ok(()),
            }
        }
        if reset && let Some(schema) = self.input.clone() {
            // An interrupted snapshot is taken again: its rows were folded in, so the
            // operator starts over and the table drops what it emitted.
            tracing::warn!(aggregate = %self.cfg.name, "dropping the state and rows of an interrupted snapshot");
            let mut op = window::build(&self.cfg, &schema)?;
            op.on_start(None)?;
            op.expect_shards(&self.shards);
            self.op = Some(op);
        }
        let Some(op) = self.op.as_mut() else { return Ok(()) };
        let before = op.stats();
        // An end-of-input marker not yet processed closes every window, once.
        let closing = mine
            .iter()
            .any(|b| b.end_of_input && self.processed.get(&b.shard).is_none_or(|p| p < b.next));
        for b in &mine {
            // Aggregates take rows only once, in stream order: rows a source restates
            // under a cursor (a table's incremental snapshot) are not for them.
            let skip = if b.cursor.is_some() {
                b.records.num_rows()
            } else {
                b.skip_before(self.processed.get(&b.shard))
            };
            let n = b.records.num_rows();
            if skip < n {
                let rows = b.records.slice(skip, n - skip);
                op.process_batch(&b.shard, &rows, &b.positions.slice(skip, n - skip))?;
            }
            self.processed.advance(&b.shard, b.next);
        }
        self.late_pending.extend(op.take_late());
        count_late(&self.cfg.name, before, op.stats());
        let mut out: Vec<RecordBatch> = op.on_watermark()?.into_iter().collect();
        tracing::debug!(aggregate = %self.cfg.name, watermark = op.watermark(), "watermark");
        if closing {
            out.extend(op.on_close()?);
        }
        self.batches_since_commit += 1;
        let advanced = self
            .processed
            .iter()
            .any(|(s, v)| self.sink.committed().get(s).is_none_or(|c| c < v));
        let due = !out.is_empty()
            || closing
            || flush
            || reset
            || self.batches_since_commit >= AGGREGATE_COMMIT_EVERY;
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
        if let Some(late) = &mut self.late {
            // Late events before the aggregate that moves past them: a replay from the
            // aggregate's progress finds them again and skips what the table holds.
            let progress: Vec<(String, i64)> =
                self.processed.iter().map(|(s, v)| (s.to_string(), v)).collect();
            late.commit_late(std::mem::take(&mut self.late_pending), progress, retry)
                .await?;
        }
        if out.is_empty() {
            // A progress-only commit still needs the schema to create the table.
            out.push(RecordBatch::new_empty(op.output_schema()));
        }
        let rows: usize = out.iter().map(RecordBatch::num_rows).sum();
        let commit = Commit {
            batches: out,
            parts: None,
            progress: self.processed.iter().map(|(s, v)| (s.to_string(), v)).collect(),
            info: BTreeMap::from([(STATE_INFO_KEY.to_string(), serde_json::Value::String(key))]),
            replace: reset,
            staged: None,
        };
        let outcome = commit_with_retry(&mut self.sink, commit, retry).await?;
        count(&mut self.summary, outcome, rows);
        self.batches_since_commit = 0;
        Ok(())
    }

    /// Summaries of its late-events table (if any) and of itself.
    pub(super) fn finish(self) -> Vec<TableSummary> {
        let (stats, watermark) = if self.cfg.per_partition {
            let ops = || self.per_shard.values().map(|s| &s.op);
            (
                (!self.per_shard.is_empty())
                    .then(|| ops().map(|o| o.stats()).fold(OperatorStats::default(), add_stats)),
                ops().map(|o| o.watermark()).min(),
            )
        } else {
            (
                self.op.as_ref().map(|o| o.stats()),
                self.op.as_ref().map(|o| o.watermark()),
            )
        };
        let own = TableSummary {
            stats,
            watermark: watermark.filter(|w| *w > i64::MIN),
            ..self.summary
        };
        self.late.map(|l| l.summary).into_iter().chain([own]).collect()
    }
}

/// Counts the late events an aggregate met between two readings of its counters.
pub(super) fn count_late(aggregate: &str, before: OperatorStats, after: OperatorStats) {
    for (outcome, n) in [
        ("dropped", after.late_dropped - before.late_dropped),
        (
            "dead_lettered",
            after.late_dead_lettered - before.late_dead_lettered,
        ),
        ("corrected", after.late_corrected - before.late_corrected),
    ] {
        if n > 0 {
            metrics::counter!(telemetry::LATE_EVENTS, "aggregate" => aggregate.to_string(), "outcome" => outcome)
                .increment(n);
        }
    }
}

/// Counters of two operators together.
pub(super) fn add_stats(a: OperatorStats, b: OperatorStats) -> OperatorStats {
    OperatorStats {
        late_dropped: a.late_dropped + b.late_dropped,
        late_dead_lettered: a.late_dead_lettered + b.late_dead_lettered,
        late_corrected: a.late_corrected + b.late_corrected,
        no_event_time: a.no_event_time + b.no_event_time,
    }
}
