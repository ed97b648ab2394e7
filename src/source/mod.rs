//! Sources: where records come from. Each yields Arrow batches tagged with their shard
//! and positions; the runtime decides what to do with them.

mod file;
mod generator;
pub mod kafka;
pub mod postgres;
pub mod spill;

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
    /// Position of each record; never decreasing. Records that share a position are
    /// one unit of the source (a Postgres transaction): they are committed together or
    /// not at all, never split across micro-batches.
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
    /// A control marker (no records) for every stream of the shard; see [`Control`].
    pub control: Option<Control>,
    /// The rows of a unit too large for memory, in local files; `records` is then empty
    /// (of the stream's schema) and `positions` too. Such a batch travels alone in its
    /// micro-batch (with the other streams' parts of the same unit). See [`spill`].
    pub spilled: Option<Arc<spill::Spilled>>,
    /// Progress of work the source does beside the shard (an incremental snapshot's
    /// chunks), committed with these records by the tables they feed; see [`Cursor`].
    pub cursor: Option<Arc<Cursor>>,
}

/// A source's progress beside a shard's positions, kept by the tables in their own
/// commits: a second, per-table progress entry (`shard`, a *cursor shard* the source
/// names in [`cursor_shards`]) that moves to `value` in the commit holding the batch,
/// and `state` stored beside the table before that commit ([`cursor_state_key`]).
///
/// A table takes the records of a batch with a cursor only while its own value is
/// below `value`; a table that holds the batch's shard but has no value for the
/// cursor shard never took part in that work and holds what it would bring (a table
/// snapshotted in one piece, or one started without a snapshot): it takes none of
/// them either. Records of such batches must be of that kind: rows that restate what
/// the source holds, which a table already past them does not need again.
#[derive(Debug)]
pub struct Cursor {
    pub shard: Arc<str>,
    pub value: i64,
    pub state: Option<bytes::Bytes>,
    /// Set on the batch that completes a restatement of the whole stream begun at
    /// this shard position: every row the source holds was restated at or after it,
    /// so a mirror drops the rows it holds from before it (rows deleted at the
    /// source while the mirror was not following, or by hand).
    pub restated_since: Option<i64>,
}

impl Cursor {
    /// Whether a table whose progress is `held` takes the records of `batch`, which
    /// carries this cursor.
    pub fn taken_by(&self, batch_shard: &str, held: &Progress) -> bool {
        match held.get(&self.shard) {
            Some(v) => v < self.value,
            None => held.get(batch_shard).is_none(),
        }
    }
}

/// How far the work a cursor tracks got, as people read it (run summaries, `status`):
/// its `value` and `state`. Postgres's snapshot cursor is the only kind.
pub fn describe_cursor(value: i64, state: Option<&[u8]>) -> String {
    postgres::describe_snapshot(value, state)
}

/// Where a cursor's state lives beside a table: one name per (cursor shard, value).
pub fn cursor_state_key(shard: &str, value: i64) -> String {
    let safe: String = shard
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("cursor-{safe}-{value:020}.json")
}

/// What a control marker asks of every table fed by the shard. A marker is committed
/// in a micro-batch of its own, after every record the source yielded before it, so a
/// crash leaves each table either before it or past it, never half-way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Everything before `next` has been yielded: tables that got nothing in between
    /// move their progress up (so an idle table does not hold the source back).
    Progress,
    /// The rows tables hold from this shard are void (an interrupted snapshot that is
    /// being taken again): drop them, then continue from `next`.
    Reset,
}

impl SourceBatch {
    /// Whether the batch concerns `stream` (its own records, or a control marker).
    pub fn feeds(&self, stream: &str) -> bool {
        self.control.is_some() || *self.stream == *stream
    }

    /// The records at or after `from`: what a consumer that has committed up to `from`
    /// still needs. Zero-copy.
    pub fn since(&self, from: Option<i64>) -> Option<RecordBatch> {
        let skip = self.skip_before(from);
        (skip < self.records.num_rows()).then(|| self.records.slice(skip, self.records.num_rows() - skip))
    }

    /// How many leading records lie before `from` (already committed).
    pub fn skip_before(&self, from: Option<i64>) -> usize {
        skip_before(&self.positions, from)
    }

    /// Approximate memory held, for byte-sized backpressure.
    pub fn bytes(&self) -> usize {
        self.records.get_array_memory_size() + self.positions.get_array_memory_size()
    }
}

/// How many leading `positions` (never decreasing) lie before `from`.
pub fn skip_before(positions: &Int64Array, from: Option<i64>) -> usize {
    match from {
        None => 0,
        Some(from) => positions.values().partition_point(|p| *p < from),
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
    /// The source now reads these shards too (a consumer-group rebalance): another
    /// process may have advanced the tables for them, so the tables must read their
    /// progress again before the records that follow.
    Reassigned(Vec<Arc<str>>),
    /// The source is letting shards go (a consumer-group rebalance): every record of
    /// them it delivered came before this. The runtime commits what it holds at once,
    /// so the next owner finds it in the tables; which shards go, and when, is in
    /// [`Owned`].
    Revoked,
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
    #[error("postgres: {context}: {source}")]
    Postgres {
        context: String,
        #[source]
        source: Box<postgres::PgError>,
    },
    /// The source is set up in a way it cannot work with (a missing publication, a
    /// table without a key).
    #[error("{0}")]
    Setup(String),
    #[error("kafka: {0}")]
    Kafka(String),
    /// The schema registry cannot answer now.
    #[error("{0}")]
    Registry(String),
}

impl SourceError {
    /// Whether the source may work again when opened anew: a lost or refused
    /// connection, a server shutting down, a registry that cannot answer now.
    /// librdkafka reconnects to brokers on its own, so Kafka errors that reach here
    /// are not of that kind.
    pub fn is_transient(&self) -> bool {
        match self {
            SourceError::Postgres { source, .. } => match source.as_ref() {
                postgres::PgError::Io { .. } => true,
                // Connection exceptions, operator intervention (shutdown, crash
                // recovery), too many connections.
                postgres::PgError::Server { code, .. } => {
                    code.starts_with("08") || code.starts_with("57P") || code == "53300"
                }
                _ => false,
            },
            SourceError::Registry(_) => true,
            _ => false,
        }
    }
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

    /// Called once after the last acknowledgement, before the source is dropped: a
    /// chance to hand that acknowledgement over before the process exits.
    async fn close(&mut self) {}

    /// The key columns of `stream`'s records, when the source knows them (a Postgres
    /// table's primary key or replica identity), for mirror tables that name none.
    fn key(&self, _stream: &str) -> Option<Vec<String>> {
        None
    }
}

/// Where the tables stand: what a source is opened at.
#[derive(Debug, Clone, Default)]
pub struct Resume {
    /// Per shard, the smallest progress over every table: where to resume.
    pub min: Progress,
    /// Each table's own progress (a source with phases, like a snapshot followed by a
    /// stream, needs to know how far the furthest table got).
    pub tables: Vec<Progress>,
    /// Reads the tables' progress afresh, for sources whose shards move between
    /// processes (Kafka consumer groups).
    pub oracle: Option<Arc<dyn TableProgress>>,
    /// Per stream, the schema of a table it already feeds: what a source reading
    /// against a declared schema (JSON topics) reads with when none is configured.
    pub schemas: std::collections::BTreeMap<String, SchemaRef>,
    /// The shards this process reads now, kept by sources whose shards move between
    /// processes.
    pub owned: Arc<Owned>,
    /// Per entry of `tables`, the stream it reads and whether it is an aggregate.
    pub streams: Vec<(String, bool)>,
    /// Per entry of `tables`, the state of its cursor (see [`Cursor`]), per cursor
    /// shard, when it has one.
    pub cursors: Vec<std::collections::BTreeMap<String, bytes::Bytes>>,
}

/// The shards a process reads now. A source whose shards move between processes
/// (Kafka consumer groups) keeps it: a shard is added when it is assigned, before its
/// records are read, and removed when it is revoked, after the revocation's wait for
/// its records to be committed and before another process can be assigned it. So a
/// process that finds a shard here may commit it; one that does not must leave it to
/// its next owner. Sources that never lose a shard leave it untracked (every shard is
/// owned).
#[derive(Debug, Default)]
pub struct Owned(std::sync::Mutex<Option<std::collections::HashSet<Arc<str>>>>);

impl Owned {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<std::collections::HashSet<Arc<str>>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts tracking: from now on only shards added are owned.
    pub fn track(&self) {
        self.lock().get_or_insert_with(Default::default);
    }

    pub fn add(&self, shards: impl IntoIterator<Item = Arc<str>>) {
        if let Some(set) = self.lock().as_mut() {
            set.extend(shards);
        }
    }

    pub fn remove(&self, shards: &[Arc<str>]) {
        if let Some(set) = self.lock().as_mut() {
            for s in shards {
                set.remove(s);
            }
        }
    }

    pub fn owns(&self, shard: &str) -> bool {
        self.lock().as_ref().is_none_or(|set| set.contains(shard))
    }
}

/// Reads, from the tables themselves, where each shard resumes: the smallest progress
/// over the tables fed by the shard's stream (`None` for a shard some table does not
/// hold yet).
#[async_trait]
pub trait TableProgress: Send + Sync + std::fmt::Debug {
    async fn held(&self, shards: &[String]) -> Result<Progress, String>;
}

/// A shard and the stream its records belong to (`None`: every stream, as a
/// replication slot carries every table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardInfo {
    pub name: String,
    pub stream: Option<String>,
}

/// Local resources a source may use on its own.
#[derive(Debug, Clone)]
pub struct Local {
    /// Bytes a source may buffer ahead of the runtime (librdkafka's queues).
    pub prefetch: u64,
    /// A folder of this pipeline's alone for [`spill`] files (cleared at open).
    pub spill_dir: std::path::PathBuf,
    /// Bytes of one unit (a transaction) held in memory before it spills, unless the
    /// source's own setting says otherwise.
    pub spill_after: u64,
}

/// Opens the configured source at `resume`.
/// `dead_letters`: whether undecodable records may be handed over as
/// [`SourceBatch::rejected`] (a dead-letter table is configured) or stop the run.
/// `local`: what a source may hold on its own besides what it hands over.
pub async fn open(
    config: &SourceConfig,
    resume: &Resume,
    mode: RunMode,
    chunk_rows: usize,
    dead_letters: bool,
    local: &Local,
) -> Result<Box<dyn Source>, SourceError> {
    Ok(match config {
        SourceConfig::Generator(g) => Box::new(generator::Generator::open(g, &resume.min, mode, chunk_rows)),
        SourceConfig::File(f) => Box::new(file::FileSource::open(
            f,
            &resume.min,
            mode,
            chunk_rows,
            dead_letters,
        )?),
        SourceConfig::Postgres(p) => {
            Box::new(postgres::PostgresSource::open(p, resume, mode, chunk_rows, dead_letters, local).await?)
        }
        SourceConfig::Kafka(k) => Box::new(
            kafka::KafkaSource::open(k, resume, mode, chunk_rows, dead_letters, local.prefetch).await?,
        ),
    })
}

/// The cursor shards of a configured source (see [`Cursor`]): tables read their
/// progress for these beside the shards, but they are not shards of their own.
pub fn cursor_shards(config: &SourceConfig) -> Vec<String> {
    match config {
        SourceConfig::Postgres(p) => vec![postgres::snapshot_shard(&p.slot)],
        _ => Vec::new(),
    }
}

/// The shards a configured source reads, with their streams. Kafka asks the brokers
/// for the topics' partitions; other sources know without connecting.
pub async fn shards_of(config: &SourceConfig) -> Result<Vec<ShardInfo>, SourceError> {
    let every = |name: &str| ShardInfo {
        name: name.to_string(),
        stream: None,
    };
    Ok(match config {
        SourceConfig::Generator(g) => vec![every(&g.stream)],
        SourceConfig::File(f) => vec![every(&f.stream)],
        // One slot, one ordered stream of transactions: one shard.
        SourceConfig::Postgres(p) => vec![every(&p.slot)],
        SourceConfig::Kafka(k) => kafka::shards(k).await?,
    })
}
