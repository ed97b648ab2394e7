//! Sources: where records come from. Each yields Arrow batches tagged with their shard
//! and positions; the runtime decides what to do with them.

mod file;
mod generator;

use std::sync::Arc;

use async_trait::async_trait;
use deltalake::arrow::array::{Array, Int64Array, RecordBatch};
use deltalake::arrow::datatypes::SchemaRef;

use crate::config::SourceConfig;
use crate::decode::DecodeError;
use crate::progress::Progress;

pub use generator::clickstream_schema;

/// Whether the run stops at the input that exists when it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunMode {
    /// Note the end of the input at start, process up to it, then stop.
    Once,
    /// Keep running and wait for more input.
    Continuous,
}

/// Records of one shard, in position order.
#[derive(Debug, Clone)]
pub struct SourceBatch {
    /// The stream the records belong to (what `[[tables]].from` names).
    pub stream: Arc<str>,
    /// The shard they were read from.
    pub shard: Arc<str>,
    pub records: RecordBatch,
    /// Position of each record; strictly increasing.
    pub positions: Int64Array,
    /// Where to resume after the last record; greater than every position here.
    pub next: i64,
    /// The end-of-input marker of a bounded source: no records, one virtual position
    /// after the last record. Committing it is what closes every window, so a restart
    /// neither misses that nor does it twice.
    pub end_of_input: bool,
    /// Records of this range that could not be decoded, as dead-letter rows
    /// ([`crate::sink::dead_letter`]); their positions are not in `positions`.
    pub rejected: Option<RecordBatch>,
}

impl SourceBatch {
    /// The records at or after `from`: what a consumer that has committed up to `from`
    /// still needs. Zero-copy.
    pub fn since(&self, from: Option<i64>) -> Option<RecordBatch> {
        let skip = self.skip_before(from);
        (skip < self.records.num_rows()).then(|| self.records.slice(skip, self.records.num_rows() - skip))
    }

    /// How many leading records lie before `from` (already committed).
    pub fn skip_before(&self, from: Option<i64>) -> usize {
        match from {
            None => 0,
            Some(from) => self.positions.values().partition_point(|p| *p < from),
        }
    }

    /// Approximate memory held, for byte-sized backpressure.
    pub fn bytes(&self) -> usize {
        self.records.get_array_memory_size() + self.positions.get_array_memory_size()
    }
}

/// What one poll produced.
#[derive(Debug)]
// A batch is a few hundred bytes of handles, moved once per chunk: boxing buys nothing.
#[allow(clippy::large_enum_variant)]
pub enum Polled {
    Batch(SourceBatch),
    /// Nothing right now; poll again later.
    Idle,
    /// The input is exhausted (a bounded source, or the end noted by a `--once` run).
    /// Bounded generator and file sources first yield an `end_of_input` batch.
    End,
}

/// Why a source failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The source cannot continue from where the tables say it stopped.
    #[error("{0}")]
    Position(String),
}

/// A source of records.
///
/// Contract:
/// - A source is opened at a [`Progress`] (per shard, the position to resume from) and
///   yields every record at or after it, in position order per shard, exactly as an
///   uninterrupted run would have: replay after a crash must see the same records.
/// - [`Source::poll`] returns promptly (a bounded wait at most); waiting for new input
///   is expressed as [`Polled::Idle`].
/// - [`Source::acknowledge`] is called only after every table committed the given
///   progress durably. A source may then release what lies below it (commit Kafka
///   offsets, confirm a replication slot's LSN). It is a hint for lag tools and
///   retention; the Delta `txn` actions are the truth.
#[async_trait]
pub trait Source: Send {
    /// The shards this source reads, for progress bookkeeping.
    fn shards(&self) -> Vec<String>;

    /// Schema of the records of `stream`, when known before reading.
    fn schema(&self) -> Option<SchemaRef>;

    async fn poll(&mut self) -> Result<Polled, SourceError>;

    async fn acknowledge(&mut self, _committed: &Progress) -> Result<(), SourceError> {
        Ok(())
    }
}

/// Opens the configured source at `resume`.
/// `dead_letters`: whether undecodable records may be handed over as
/// [`SourceBatch::rejected`] (a dead-letter table is configured) or stop the run.
pub fn open(
    config: &SourceConfig,
    resume: &Progress,
    mode: RunMode,
    chunk_rows: usize,
    dead_letters: bool,
) -> Result<Box<dyn Source>, SourceError> {
    Ok(match config {
        SourceConfig::Generator(g) => Box::new(generator::Generator::open(g, resume, mode, chunk_rows)),
        SourceConfig::File(f) => Box::new(file::FileSource::open(f, resume, mode, chunk_rows, dead_letters)?),
    })
}

/// The shard names a configured source will use, known without opening it.
pub fn shards_of(config: &SourceConfig) -> Vec<String> {
    vec![config.stream().to_string()]
}
