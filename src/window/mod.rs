//! Event-time window operators.
//!
//! Semantics follow Flink/Spark: windows are `[start, end)` aligned to the Unix epoch;
//! the watermark is, per shard, the largest event time seen minus the allowed
//! out-of-orderness, combined over shards as the minimum. A window is final once the
//! watermark reaches its end. The watermark advances at micro-batch boundaries (as in
//! Spark): records of a batch are judged late against the watermark reached by the
//! previous batch, and windows close after the batch that moves the watermark past
//! them.

mod tumbling;

use std::collections::BTreeMap;

use bytes::Bytes;
use deltalake::arrow::array::RecordBatch;
use deltalake::arrow::datatypes::SchemaRef;
use deltalake::arrow::error::ArrowError;

use crate::config::AggregateConfig;

pub use tumbling::TumblingAggregate;

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

/// Counters an operator keeps about its input.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OperatorStats {
    /// Events whose window had already been emitted, and were dropped.
    pub late_dropped: u64,
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
    /// Schema of the rows it emits.
    fn output_schema(&self) -> SchemaRef;

    /// Restores state from a snapshot written by [`Operator::on_checkpoint`].
    fn on_start(&mut self, _snapshot: Option<Bytes>) -> Result<(), WindowError> {
        Ok(())
    }

    /// Folds a batch of `shard`'s records into the state.
    fn process_batch(&mut self, shard: &str, batch: &RecordBatch) -> Result<(), WindowError>;

    /// Emits the windows the current watermark has closed, if any.
    fn on_watermark(&mut self) -> Result<Option<RecordBatch>, WindowError> {
        Ok(None)
    }

    /// Serialises the complete state.
    fn on_checkpoint(&self) -> Result<Bytes, WindowError>;

    /// End of a bounded input: emits every window still open.
    fn on_close(&mut self) -> Result<Option<RecordBatch>, WindowError> {
        Ok(None)
    }

    fn stats(&self) -> OperatorStats;
}

/// Builds the operator an aggregate describes, for a stream of `input` schema.
pub fn build(config: &AggregateConfig, input: &SchemaRef) -> Result<Box<dyn Operator>, WindowError> {
    match config.window {
        crate::config::Window::Tumbling { size } => {
            Ok(Box::new(TumblingAggregate::new(config, input, size.as_micros())?))
        }
    }
}

/// Per-shard maximum event time and the watermark derived from it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Watermarks {
    delay_micros: i64,
    max_event_time: BTreeMap<String, i64>,
}

impl Watermarks {
    pub fn new(delay_micros: i64) -> Self {
        Self {
            delay_micros,
            max_event_time: BTreeMap::new(),
        }
    }

    pub fn observe(&mut self, shard: &str, max_event_time: i64) {
        match self.max_event_time.get_mut(shard) {
            Some(m) => *m = (*m).max(max_event_time),
            None => {
                self.max_event_time.insert(shard.to_string(), max_event_time);
            }
        }
    }

    /// The combined watermark; `i64::MIN` before any event was seen.
    pub fn current(&self) -> i64 {
        self.max_event_time
            .values()
            .min()
            .map_or(i64::MIN, |m| m.saturating_sub(self.delay_micros))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.max_event_time).unwrap_or_default()
    }

    pub fn restore_json(&mut self, json: &str) -> Result<(), serde_json::Error> {
        self.max_event_time = serde_json::from_str(json)?;
        Ok(())
    }
}
