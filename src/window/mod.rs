//! Event-time window operators.
//!
//! Semantics follow Flink/Spark: windows are `[start, end)` aligned to the Unix epoch
//! (sessions: first event to last event + gap, per group key; global: all time, per
//! key). The watermark is, per shard, the largest event time seen minus the allowed
//! out-of-orderness, combined over shards as the minimum; a shard that sent nothing for
//! `idle_timeout` stops holding it back, and it never moves backwards. A window is
//! final once the watermark reaches its end. The watermark advances at micro-batch
//! boundaries (as in Spark): records of a batch are judged late against the watermark
//! reached by the previous batch, and windows close after the batch that moves the
//! watermark past them.
//!
//! An event is late when every window it belongs to is final. `late = "drop"` counts
//! it, `"dlq"` also writes it to the late-events table, `"update"` folds it in and
//! rewrites the windows' rows (by MERGE) while the watermark is within `lateness` of
//! their end.
//!
//! `approx_count_distinct` is a HyperLogLog with 4096 registers: standard error ≈1.6 %.

mod hll;
mod measure;
mod operator;
mod over;
mod panes;
mod sessions;
mod snapshot;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use deltalake::arrow::array::{Int64Array, RecordBatch};
use deltalake::arrow::datatypes::SchemaRef;
use deltalake::arrow::error::ArrowError;
use tokio::time::Instant;

use crate::config::AggregateConfig;

pub use operator::{OP_COLUMN, WindowedAggregate};

/// Why an operator could not process its input.
#[derive(Debug, thiserror::Error)]
pub enum WindowError {
    /// The pipeline's aggregate does not fit the stream (a missing or mistyped column).
    #[error("{key}: {message}")]
    Config { key: String, message: String },
    #[error("aggregate {aggregate}: {source}")]
    Arrow {
        aggregate: String,
        #[source]
        source: ArrowError,
    },
    /// A stored state snapshot cannot be read back.
    #[error("aggregate {aggregate}: state snapshot: {message}")]
    State { aggregate: String, message: String },
}

/// Counters an operator keeps about its input (kept in its state, so they survive
/// restarts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OperatorStats {
    /// Late events discarded (`late = "drop"`, or past `lateness` with `"update"`).
    pub late_dropped: u64,
    /// Late events written to the late-events table.
    pub late_dead_lettered: u64,
    /// Late events folded into windows already written, which were rewritten.
    pub late_corrected: u64,
    /// Events without an event time, which no window can hold.
    pub no_event_time: u64,
}

/// A windowed operator over Arrow batches.
///
/// Lifecycle: [`Operator::on_start`] (with the snapshot that matches the output table's
/// committed progress, if any) → repeated [`Operator::process_batch`] per shard batch
/// and [`Operator::on_watermark`] once per micro-batch → [`Operator::on_checkpoint`]
/// before each commit that depends on the state → [`Operator::on_close`] at the end of
/// a bounded input. Given the same snapshot and the same input, an operator must
/// produce the same output: that is what makes restarts exact.
pub trait Operator: Send {
    /// Schema of the rows it emits. Keyed operators ([`AggregateConfig::keyed`]) add
    /// an `_op` column: `u` to upsert the row by (window_start, keys), `d` to delete it.
    fn output_schema(&self) -> SchemaRef;

    /// Restores state from a snapshot written by [`Operator::on_checkpoint`].
    fn on_start(&mut self, snapshot: Option<Bytes>) -> Result<(), WindowError>;

    /// The shards the input comes from: one that has sent nothing yet holds the
    /// watermark back like any other (until `idle_timeout`), so a partition fetched
    /// late does not find its windows closed.
    fn expect_shards(&mut self, shards: &[String]);

    /// Folds a batch of `shard`'s records (at `positions`) into the state.
    fn process_batch(
        &mut self,
        shard: &str,
        batch: &RecordBatch,
        positions: &Int64Array,
    ) -> Result<(), WindowError>;

    /// Advances the watermark and emits the rows it finished or changed.
    fn on_watermark(&mut self) -> Result<Option<RecordBatch>, WindowError>;

    /// Late events set aside since the last call (`late = "dlq"`), a batch per input
    /// batch that had any (their schemas follow the stream's).
    fn take_late(&mut self) -> Vec<RecordBatch>;

    /// Serialises the complete state.
    fn on_checkpoint(&self) -> Result<Bytes, WindowError>;

    /// End of a bounded input: emits every window still open.
    fn on_close(&mut self) -> Result<Option<RecordBatch>, WindowError>;

    fn stats(&self) -> OperatorStats;

    /// The watermark (microseconds since the epoch; `i64::MIN` before any event).
    fn watermark(&self) -> i64;
}

/// Builds the operator an aggregate describes, for a stream of `input` schema.
pub fn build(config: &AggregateConfig, input: &SchemaRef) -> Result<Box<dyn Operator>, WindowError> {
    Ok(Box::new(WindowedAggregate::new(config, input)?))
}

/// What folding one event did.
pub(crate) enum Outcome {
    Folded,
    /// Late, and folded into windows already written (`late = "update"`).
    Corrected,
    /// Late: every window it belongs to is final (and past correction).
    Late {
        window_end: i64,
    },
}

/// The policy and watermark an index folds and emits under.
pub(crate) struct Ctx {
    /// Watermark reached by the previous micro-batch.
    pub watermark: i64,
    pub emit_update: bool,
    pub late_update: bool,
    pub lateness: i64,
}

impl Ctx {
    /// Whether a final window ending at `end` may still be rewritten.
    fn correctable(&self, end: i64) -> bool {
        self.late_update && end.saturating_add(self.lateness) > self.watermark
    }

    fn keyed(&self) -> bool {
        self.emit_update || self.late_update
    }
}

/// One output row: a window, a group key and the slot holding its values (`None`: a
/// delete of the row under that window start and key).
pub(crate) struct Row {
    start: Option<i64>,
    end: Option<i64>,
    key: Box<[u8]>,
    slot: Option<u32>,
}

impl Row {
    fn upsert(start: Option<i64>, end: Option<i64>, key: Box<[u8]>, slot: u32) -> Self {
        Self {
            start,
            end,
            key,
            slot: Some(slot),
        }
    }

    fn delete(start: i64, key: Box<[u8]>) -> Self {
        Self {
            start: Some(start),
            end: None,
            key,
            slot: None,
        }
    }
}

/// Rows to emit. A row's slot is in the operator's store, or, when `groups` is set
/// (hopping windows), the index of the group of pane slots the row merges.
pub(crate) struct Emission {
    rows: Vec<Row>,
    groups: Option<Vec<Vec<u32>>>,
}

/// Per-shard maximum event time and the watermark derived from it.
#[derive(Debug, Clone)]
pub struct Watermarks {
    delay_micros: i64,
    idle_timeout: Option<Duration>,
    max_event_time: BTreeMap<String, i64>,
    /// When each shard last sent an event, in this process.
    last_seen: BTreeMap<String, Instant>,
}

impl Watermarks {
    pub fn new(delay_micros: i64, idle_timeout: Option<Duration>) -> Self {
        Self {
            delay_micros,
            idle_timeout,
            max_event_time: BTreeMap::new(),
            last_seen: BTreeMap::new(),
        }
    }

    /// A shard that has not sent an event yet: it holds the watermark at its minimum.
    pub fn expect(&mut self, shard: &str, now: Instant) {
        if !self.max_event_time.contains_key(shard) {
            self.max_event_time.insert(shard.to_string(), i64::MIN);
            self.last_seen.insert(shard.to_string(), now);
        }
    }

    pub fn observe(&mut self, shard: &str, max_event_time: i64, now: Instant) {
        match self.max_event_time.get_mut(shard) {
            Some(m) => *m = (*m).max(max_event_time),
            None => {
                self.max_event_time.insert(shard.to_string(), max_event_time);
            }
        }
        match self.last_seen.get_mut(shard) {
            Some(t) => *t = now,
            None => {
                self.last_seen.insert(shard.to_string(), now);
            }
        }
    }

    /// The combined watermark at `now`: the minimum over shards that are not idle (the
    /// maximum when all are); `i64::MIN` while an active shard has sent nothing.
    pub fn current(&self, now: Instant) -> i64 {
        let active = |shard: &str| match (self.idle_timeout, self.last_seen.get(shard)) {
            (Some(idle), Some(seen)) => now.saturating_duration_since(*seen) < idle,
            _ => true,
        };
        let min_active = self
            .max_event_time
            .iter()
            .filter(|(s, _)| active(s))
            .map(|(_, m)| *m)
            .min();
        min_active
            .or_else(|| self.max_event_time.values().max().copied())
            .map_or(i64::MIN, |m| m.saturating_sub(self.delay_micros))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.max_event_time).unwrap_or_default()
    }

    /// Restores the per-shard maxima; shards count as just seen.
    pub fn restore_json(&mut self, json: &str, now: Instant) -> Result<(), serde_json::Error> {
        self.max_event_time = serde_json::from_str(json)?;
        self.last_seen = self.max_event_time.keys().map(|k| (k.clone(), now)).collect();
        Ok(())
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_sql;
