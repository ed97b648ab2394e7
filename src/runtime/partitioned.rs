//! Per-partition aggregates (`partitioned_by_key`): state that moves with its Kafka
//! partitions between the processes of a consumer group.
//!
//! When a topic is keyed by the group key, every event of a key is in one partition,
//! so a partition's windows, sessions, distinct sets and watermark are whole on their
//! own. Each shard gets its own operator, snapshotted as its own object keyed by the
//! shard and its committed position ([`shard_state_key`]); a commit carries `txn`
//! progress for exactly the shards whose state it depends on. A process loads a
//! shard's state when the shard's first records arrive, and drops it once the shard is
//! no longer its own ([`Owned`]). The watermark is the partition's own (as Kafka
//! Streams keeps stream time per task): which windows an event finds closed depends on
//! its partition alone, never on which partitions share a process, so any assignment
//! (one process or several, before or after a rebalance) emits the same rows.
//!
//! Handing a shard over: the old owner commits its state when the revocation starts
//! (the runtime flushes aggregates on [`crate::source::Polled::Revoked`]) and stops
//! committing the shard once the consumer lets it go. The new owner first claims the
//! shard ([`DeltaSink::claim`]): a commit naming the shard at the progress it found.
//! Delta refuses the second of two commits naming one shard that did not read each
//! other, so either the old owner's late commit fails (it no longer owns the shard
//! and drops it, [`AggregateTarget::commit_partitioned`]) or the claim fails and the new owner
//! reads the table again and claims what is there then. Its operator then restores
//! the state the table's progress names. A shard's windows are thus emitted by one
//! process at a time, from state that continues exactly where the table stands.
//!
//! Crash story: a shard's state object is written before the commit that names it;
//! a crash before that commit leaves an object nobody names (maintenance removes it),
//! and the next owner restores the one the table's progress names. A process killed
//! while holding shards stays a member until its session times out; its shards then
//! move, and the new owners resume from the tables.

use std::collections::BTreeMap;
use std::sync::Arc;

use deltalake::arrow::array::RecordBatch;
use deltalake::arrow::datatypes::SchemaRef;

use super::aggregate::{AGGREGATE_COMMIT_EVERY, AggregateTarget, Shard, add_stats};
use super::handover::Fence;
use super::tables::{commit_with_retry, count};
use super::{RetryPolicy, RunError, STATE_INFO_KEY};
use crate::progress::Progress;
use crate::sink::{Commit, Sink, SinkError, state_key};
use crate::source::{Owned, SourceBatch};
use crate::telemetry;
use crate::window::{self, OperatorStats};

/// How many times a shard is claimed again after a commit of another process beat
/// the claim, and a commit retried without shards another process took.
const ATTEMPTS: u32 = 5;

/// The state object of `shard`'s operator at `next`.
pub fn shard_state_key(shard: &str, next: i64) -> String {
    let mut p = Progress::new();
    p.advance(shard, next);
    state_key(&p)
}

impl AggregateTarget {
    /// Drops the operators of shards this process no longer owns (and fences the
    /// shards: see [`Fence`]): their next owner resumes them from the table.
    pub(super) fn release(&mut self, fence: &mut Fence, owned: &Owned) {
        if !self.cfg.per_partition {
            return;
        }
        let gone: Vec<Arc<str>> = self
            .per_shard
            .keys()
            .filter(|s| !owned.owns(s))
            .cloned()
            .collect();
        for s in gone {
            tracing::debug!(aggregate = %self.cfg.name, shard = %s, "partition state released");
            fence.fence(&s);
            self.per_shard.remove(&s);
            self.processed.forget(&s);
        }
    }

    /// Takes over `shards` (just assigned): fences off their previous owner with a
    /// claim at the progress the table holds, and forgets any operator of them this
    /// process kept (the table may have moved on since).
    pub(super) async fn claim(&mut self, shards: &[Arc<str>], owned: &Owned) -> Result<(), RunError> {
        if !self.cfg.per_partition {
            return Ok(());
        }
        let mine: Vec<&Arc<str>> = shards
            .iter()
            .filter(|s| self.shards.iter().any(|f| f.as_str() == s.as_ref()) && owned.owns(s))
            .collect();
        if mine.is_empty() {
            return Ok(());
        }
        let (mut attempt, mut conflicts) = (0, 0);
        loop {
            self.sink.refresh().await?;
            let mut claim = Vec::new();
            for s in &mine {
                self.per_shard.remove(*s);
                self.processed.forget(s);
                if let Some(n) = self.sink.committed().get(s) {
                    claim.push((s.to_string(), n));
                }
            }
            if claim.is_empty() {
                return Ok(());
            }
            let started = std::time::Instant::now();
            match self.sink.claim(claim.clone()).await {
                Ok(()) => {
                    let took = started.elapsed();
                    tracing::info!(aggregate = %self.cfg.name, ?claim, ms = took.as_millis() as u64, "partitions claimed");
                    metrics::histogram!(telemetry::HANDOVER_SECONDS, "aggregate" => self.cfg.name.clone())
                        .record(took.as_secs_f64());
                    return Ok(());
                }
                Err(e @ SinkError::ForeignProgress { .. }) if attempt < ATTEMPTS => {
                    attempt += 1;
                    tracing::info!(aggregate = %self.cfg.name, error = %e, "the previous owner committed first: claiming again");
                }
                // Another process committed other partitions in between.
                Err(e)
                    if e.is_conflict()
                        && let Some(pause) = RetryPolicy::after_conflict(conflicts) =>
                {
                    conflicts += 1;
                    tokio::time::sleep(pause).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Builds `shard`'s operator from the state its table's progress names.
    async fn load(&mut self, shard: &Arc<str>, input: &SchemaRef) -> Result<(), RunError> {
        let started = std::time::Instant::now();
        let mut op = window::build(&self.cfg, input)?;
        let base = self.sink.committed().get(shard);
        let mut bytes = 0;
        let snapshot = match base {
            None => None,
            Some(n) => {
                let key = shard_state_key(shard, n);
                let Some(state) = self.sink.get_state(&key).await? else {
                    return Err(RunError::State {
                        aggregate: self.cfg.name.clone(),
                        message: format!(
                            "the table is at {shard}={n} but that partition's state snapshot {key} is \
                             missing; restore it or rebuild the aggregate into a new table"
                        ),
                    });
                };
                self.processed.advance(shard, n);
                bytes = state.len();
                Some(state)
            }
        };
        op.on_start(snapshot)?;
        op.expect_shards(&[shard.to_string()]);
        tracing::debug!(aggregate = %self.cfg.name, %shard, ?base, bytes, ms = started.elapsed().as_millis() as u64, "partition state loaded");
        self.per_shard.insert(shard.clone(), Shard { op, base });
        Ok(())
    }

    /// [`AggregateTarget::process`] for a per-partition aggregate.
    pub(super) async fn process_partitioned(
        &mut self,
        pending: &[SourceBatch],
        flush: bool,
        retry: &RetryPolicy,
        owned: &Owned,
        fence: &mut Fence,
    ) -> Result<(), RunError> {
        self.release(fence, owned);
        // Records of a shard this process no longer owns are its next owner's: the
        // shard is fenced, so none of its later records is folded either.
        for b in pending.iter().filter(|b| !owned.owns(&b.shard)) {
            fence.fence(&b.shard);
        }
        let mine: Vec<&SourceBatch> = pending
            .iter()
            .filter(|b| b.feeds(&self.cfg.from) && fence.admits(b))
            .collect();
        if self.input.is_none() {
            match mine
                .iter()
                .find(|b| *b.stream == *self.cfg.from && b.records.num_columns() > 0)
            {
                Some(b) => self.input = Some(b.records.schema()),
                None => return Ok(()),
            }
        }
        let Some(input) = self.input.clone() else {
            return Ok(());
        };
        let before = self.stats();
        for b in &mine {
            if !self.per_shard.contains_key(&b.shard) {
                self.load(&b.shard, &input).await?;
            }
            // Rows restated under a cursor are not for aggregates (see `aggregate`).
            let skip = if b.cursor.is_some() {
                b.records.num_rows()
            } else {
                b.skip_before(self.processed.get(&b.shard))
            };
            let n = b.records.num_rows();
            if skip < n
                && let Some(s) = self.per_shard.get_mut(&b.shard)
            {
                let rows = b.records.slice(skip, n - skip);
                s.op.process_batch(&b.shard, &rows, &b.positions.slice(skip, n - skip))?;
            }
            self.processed.advance(&b.shard, b.next);
        }
        let mut out: Vec<(Arc<str>, RecordBatch)> = Vec::new();
        for (shard, s) in &mut self.per_shard {
            self.late_pending.extend(s.op.take_late());
            if let Some(rows) = s.op.on_watermark()? {
                out.push((shard.clone(), rows));
            }
        }
        let after = self.stats();
        super::aggregate::count_late(&self.cfg.name, before, after);
        self.batches_since_commit += 1;
        let due = !out.is_empty() || flush || self.batches_since_commit >= AGGREGATE_COMMIT_EVERY;
        let advanced: Vec<Arc<str>> = self
            .per_shard
            .keys()
            .filter(|s| {
                self.processed
                    .get(s)
                    .is_some_and(|p| self.sink.committed().get(s).is_none_or(|c| c < p))
            })
            .cloned()
            .collect();
        if advanced.is_empty() || !due {
            return Ok(());
        }
        self.commit_partitioned(out, advanced, &input, retry, owned, fence)
            .await
    }

    /// Commits the rows `out` (per shard) with the state and progress of `advanced`.
    /// A shard another process committed since this one took it over is dropped when
    /// it is no longer this process's (the commit goes on without it); when it still
    /// is, the run starts over from the tables.
    async fn commit_partitioned(
        &mut self,
        mut out: Vec<(Arc<str>, RecordBatch)>,
        mut advanced: Vec<Arc<str>>,
        input: &SchemaRef,
        retry: &RetryPolicy,
        owned: &Owned,
        fence: &mut Fence,
    ) -> Result<(), RunError> {
        let mut late_done = false;
        let mut attempt = 0;
        loop {
            // Shards the table shows another process wrote since this one took them.
            let moved: Vec<Arc<str>> = advanced
                .iter()
                .filter(|s| {
                    self.per_shard
                        .get(*s)
                        .is_some_and(|sh| self.sink.committed().get(s) != sh.base)
                })
                .cloned()
                .collect();
            if let Some(s) = moved.iter().find(|s| owned.owns(s)) {
                // Written by another process while this one owned it: its state here
                // no longer continues the table's.
                return Err(SinkError::ForeignProgress {
                    table: self.cfg.name.clone(),
                    shard: s.to_string(),
                    ours: self.processed.get(s).unwrap_or_default(),
                    theirs: self.sink.committed().get(s).unwrap_or_default(),
                }
                .into());
            }
            // Shards let go of since they were folded (or taken over by another process
            // already) are the next owner's to commit.
            let gone: Vec<Arc<str>> = advanced.iter().filter(|s| !owned.owns(s)).cloned().collect();
            for s in &gone {
                tracing::info!(aggregate = %self.cfg.name, shard = %s, "partition let go before its windows were committed: leaving them to its next owner");
                fence.fence(s);
                self.per_shard.remove(s);
                self.processed.forget(s);
            }
            out.retain(|(s, _)| !gone.contains(s));
            advanced.retain(|s| !gone.contains(s));
            if advanced.is_empty() {
                return Ok(());
            }
            // Each state must be durable before the commit that names it.
            let mut progress = Vec::with_capacity(advanced.len());
            let mut keys = serde_json::Map::new();
            for s in &advanced {
                let (Some(next), Some(sh)) = (self.processed.get(s), self.per_shard.get(s)) else {
                    continue;
                };
                let key = shard_state_key(s, next);
                let state = sh.op.on_checkpoint()?;
                retry
                    .run("write operator state", || {
                        self.sink.put_state(&key, state.clone())
                    })
                    .await?;
                progress.push((s.to_string(), next));
                keys.insert(s.to_string(), serde_json::Value::String(key));
            }
            if !late_done && let Some(late) = &mut self.late {
                late.commit_late(std::mem::take(&mut self.late_pending), progress.clone(), retry)
                    .await?;
                late_done = true;
            }
            let mut batches: Vec<RecordBatch> = out.iter().map(|(_, b)| b.clone()).collect();
            if batches.is_empty() {
                // A progress-only commit still needs the schema to create the table.
                batches.push(RecordBatch::new_empty(
                    window::build(&self.cfg, input)?.output_schema(),
                ));
            }
            let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
            let commit = Commit {
                batches,
                parts: None,
                progress: progress.clone(),
                info: BTreeMap::from([(STATE_INFO_KEY.to_string(), serde_json::Value::Object(keys))]),
                replace: false,
                staged: None,
            };
            match commit_with_retry(&mut self.sink, commit, retry).await {
                Ok(outcome) => {
                    count(&mut self.summary, outcome, rows);
                    self.batches_since_commit = 0;
                    for (s, next) in progress {
                        if let Some(sh) = self.per_shard.get_mut(s.as_str()) {
                            sh.base = Some(next);
                        }
                    }
                    return Ok(());
                }
                // The table read itself again: the next pass sees who moved.
                Err(e @ SinkError::ForeignProgress { .. }) if attempt < ATTEMPTS => {
                    attempt += 1;
                    tracing::warn!(aggregate = %self.cfg.name, error = %e, "another process committed some of these partitions");
                    metrics::counter!(telemetry::HANDOVER_CONFLICTS).increment(1);
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The counters of every shard's operator together.
    fn stats(&self) -> OperatorStats {
        self.per_shard
            .values()
            .map(|s| s.op.stats())
            .fold(OperatorStats::default(), add_stats)
    }
}
