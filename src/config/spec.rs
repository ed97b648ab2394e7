//! The raw pipeline spec: exactly what a pipeline file may say, with defaults as named
//! constants. Unknown keys are errors. [`super::resolve`] turns it into a runnable
//! [`super::Pipeline`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use indexmap::IndexMap;
use serde::Deserialize;

use super::values::{ByteSize, Span};

pub const DEFAULT_MAX_ROWS: usize = 100_000;
pub const DEFAULT_MAX_LATENCY: Span = Span::from_secs(1);
/// At most four micro-batches a second: each commit costs delta-rs a log replay that
/// grows with the table's files, so committing as fast as the tables take it falls
/// behind (measured with pgbench at 500 tps: p50 3.7s with 0, 136ms with 250ms).
pub const DEFAULT_MIN_INTERVAL: Span = Span::from_millis(250);
pub const DEFAULT_GENERATOR_STREAM: &str = "clickstream";
pub const DEFAULT_GENERATOR_START: &str = "2026-01-01T00:00:00Z";
pub const DEFAULT_GENERATOR_INTERVAL: Span = Span::from_millis(10);
pub const DEFAULT_GENERATOR_USERS: u32 = 5_000;
pub const DEFAULT_FILE_POLL: Span = Span::from_secs(1);
pub const DEFAULT_CHECKPOINT_EVERY: u32 = 10;
pub const DEFAULT_MAX_BYTES: ByteSize = ByteSize::mib(64);
pub const DEFAULT_TARGET_FILE_SIZE: ByteSize = ByteSize::mib(128);
pub const DEFAULT_PG_STATUS_INTERVAL: Span = Span::from_secs(10);
pub const DEFAULT_DEAD_LETTER_TABLE: &str = "dead_letters";
pub const DEFAULT_MEMORY: ByteSize = ByteSize::mib(256);
pub const DEFAULT_SHUTDOWN_TIMEOUT: Span = Span::from_secs(30);

/// A whole pipeline file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSpec {
    /// Pipeline name; also the prefix of every Delta `txn` app id it writes.
    pub name: String,
    /// Where records come from.
    pub source: SourceSpec,
    /// Where tables are written.
    pub sink: SinkSpec,
    /// Micro-batch triggers.
    #[serde(default)]
    pub batch: BatchSpec,
    /// Tables fed directly from a source stream.
    #[serde(default)]
    pub tables: Vec<TableSpec>,
    /// Event-time windowed aggregates of a source stream.
    #[serde(default)]
    pub aggregates: Vec<AggregateSpec>,
    /// Per source stream: its event-time column and watermark, for its aggregates.
    #[serde(default)]
    pub streams: BTreeMap<String, StreamSpec>,
    /// Where records that cannot be used go; absent = such a record stops the run.
    pub dead_letters: Option<DeadLetterSpec>,
    /// Memory budget, metrics endpoint and shutdown deadline.
    #[serde(default)]
    pub runtime: RuntimeSpec,
}

/// `[runtime]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSpec {
    /// Memory the process may use (at least 192MiB). Records in flight between the
    /// source and the tables are held to half of what the process's own 128MiB
    /// footprint leaves; the other half is for encoding and committing them.
    pub memory: Option<ByteSize>,
    /// Serve Prometheus `/metrics` and `/health` on this address (off when absent).
    pub metrics: Option<String>,
    /// After SIGINT/SIGTERM, how long finishing the current micro-batch may take
    /// before the run gives up on it (exit status 1, nothing committed half-way).
    pub shutdown_timeout: Option<Span>,
    /// Local folder for caches the tables can rebuild (the key indexes of
    /// deletion-vector mirrors); default `$XDG_CACHE_HOME/tributary` or
    /// `~/.cache/tributary`. Losing it costs a rebuild, never data.
    pub cache_dir: Option<PathBuf>,
}

/// `[dead_letters]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterSpec {
    /// Name of the dead-letter table, at `{sink.uri}/{table}`.
    pub table: Option<String>,
}

/// `[source]`: one of the source kinds, chosen by `kind`.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum SourceSpec {
    /// Deterministic synthetic clickstream events.
    Generator(GeneratorSpec),
    /// A folder of JSON-lines or Avro container files, read in name order.
    File(FileSpec),
    /// PostgreSQL logical replication (`pgoutput`), with an optional initial snapshot.
    Postgres(PostgresSpec),
    /// Kafka topics (Avro, JSON, Debezium change events, upsert topics), read as a
    /// consumer group.
    Kafka(KafkaSpec),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSpec {
    /// `kind` itself: taken by [`SourceSpec`], seen here only when `[source]` is read
    /// again as this kind to locate an error (see `config::source_error`).
    #[serde(default, rename = "kind")]
    pub _kind: Option<String>,
    /// Bootstrap brokers, `host:port[,host:port…]`; `${ENV}` is expanded.
    pub brokers: String,
    /// Topics to read; each is a stream named after the topic.
    pub topics: Vec<String>,
    /// Consumer group; several processes with one group share the partitions.
    pub group_id: String,
    /// `avro` (Confluent wire format), `json` (one JSON object per message),
    /// `debezium-avro` or `debezium-json` (Debezium change events).
    pub format: super::kafka::KafkaFormat,
    /// Schema registry base URL; `${ENV}` is expanded. Needed for Avro values or keys.
    pub schema_registry: Option<String>,
    /// `user:password` for the registry's basic auth (Confluent's
    /// `basic.auth.user.info`); `${ENV}` is expanded.
    pub schema_registry_user_info: Option<String>,
    /// A PEM file of CA certificates to trust for an https registry, besides the
    /// system's (Confluent's `schema.registry.ssl.ca.location`).
    pub schema_registry_ca: Option<PathBuf>,
    /// The values' schema (`.avsc`) for every topic not in `reader_schemas`; for JSON
    /// it is the schema messages are read against (default: the columns of a table
    /// the topic already feeds).
    pub schema: Option<PathBuf>,
    /// JSON: `ignore` (default) or `dead_letter` fields the schema does not have.
    pub unknown_fields: Option<super::kafka::UnknownFields>,
    /// `string`, `bytes`, `json` or `avro`: read message keys (absent: keys ignored).
    pub key_format: Option<super::kafka::KeyFormat>,
    /// Keys' schema (`.avsc` record) for `key_format = "json"` (required) or `"avro"`
    /// (default: the latest schema of the `{topic}-key` subject).
    pub key_schema: Option<PathBuf>,
    /// Prefix of the columns a record key's fields become (default none).
    pub key_prefix: Option<String>,
    /// Expose the message headers as a `_headers` map column.
    #[serde(default)]
    pub headers: bool,
    /// The topics are upsert (compacted, latest-state) topics: the key is the row's
    /// key, a value replaces it, a tombstone deletes it.
    #[serde(default)]
    pub upsert: bool,
    /// `topic` (default), `record` or `topic_record`: the subject writer schemas must be
    /// registered under.
    pub subject_strategy: Option<super::kafka::SubjectStrategy>,
    /// Per topic, a reader schema file (`.avsc`); default: the subject's latest schema.
    #[serde(default)]
    pub reader_schemas: BTreeMap<String, PathBuf>,
    /// `earliest` (default) or `latest`: where a partition no table holds starts.
    pub auto_offset_reset: Option<super::kafka::StartAt>,
    /// Several processes run this pipeline in the group: aggregates must then be
    /// partitioned by the message key (`partitioned_by_key`), which `validate` checks.
    #[serde(default)]
    pub scale_out: bool,
    /// Extra librdkafka settings (security, SASL, TLS…); values may use `${ENV}`.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSpec {
    /// `kind` itself: taken by [`SourceSpec`], seen here only when `[source]` is read
    /// again as this kind to locate an error (see `config::source_error`).
    #[serde(default, rename = "kind")]
    pub _kind: Option<String>,
    /// libpq connection string (`key=value …` or `postgres://…`); `${ENV}` is expanded.
    pub dsn: String,
    /// Publication to stream; created `FOR TABLE` the listed tables when missing.
    pub publication: String,
    /// Permanent replication slot; created when missing, never dropped.
    pub slot: String,
    /// Tables to capture (`schema.table`, or `table` in `public`); absent = every table
    /// of the publication.
    pub tables: Option<Vec<String>>,
    /// Copy the tables' rows before streaming (default true).
    pub snapshot: Option<bool>,
    /// Largest interval between standby status updates (default 10s).
    pub status_interval: Option<Span>,
    /// Bytes of an open transaction held in memory before its rows go to spill files
    /// (default: a quarter of the runtime's in-flight bytes).
    pub spill_after: Option<ByteSize>,
    /// Rows per chunk of an incremental snapshot (default 100000).
    pub snapshot_chunk_rows: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeneratorSpec {
    /// `kind` itself: taken by [`SourceSpec`], seen here only when `[source]` is read
    /// again as this kind to locate an error (see `config::source_error`).
    #[serde(default, rename = "kind")]
    pub _kind: Option<String>,
    /// Number of events; absent = unbounded.
    pub events: Option<u64>,
    /// Events per second of wall-clock time; 0 = as fast as possible.
    #[serde(default)]
    pub rate: u64,
    /// Seed: the same seed always yields the same events.
    #[serde(default)]
    pub seed: u64,
    /// Largest amount an event's time may lag its place in the sequence.
    #[serde(default)]
    pub out_of_order: Span,
    /// Event time of the first event (RFC 3339).
    pub start: Option<String>,
    /// Event-time step between consecutive events.
    pub interval: Option<Span>,
    /// Number of distinct users.
    pub users: Option<u32>,
    /// Name of the stream the events form.
    pub stream: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    /// `kind` itself: taken by [`SourceSpec`], seen here only when `[source]` is read
    /// again as this kind to locate an error (see `config::source_error`).
    #[serde(default, rename = "kind")]
    pub _kind: Option<String>,
    /// Folder holding the files; relative paths are taken from the working directory.
    pub path: PathBuf,
    /// `jsonl` or `avro`; absent = chosen per file from its extension.
    pub format: Option<FileFormat>,
    /// Name of the stream the records form; default: the folder's name.
    pub stream: Option<String>,
    /// In continuous runs, how often to look for new files.
    pub poll_interval: Option<Span>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileFormat {
    /// One JSON object per line (`.jsonl`, `.json`, `.ndjson`).
    Jsonl,
    /// Avro object container files (`.avro`).
    Avro,
}

/// `[sink]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkSpec {
    /// A folder, `file://…` or `s3://bucket/prefix`; tables live at `{uri}/{table}`.
    pub uri: String,
    /// Options passed to the object store (AWS_ENDPOINT_URL, …); `${ENV}` is expanded.
    #[serde(default)]
    pub storage: BTreeMap<String, String>,
    /// Write a Delta checkpoint every this many commits of a table.
    pub checkpoint_every: Option<u32>,
    /// Size a data file is cut at (and what `maintain` compacts towards).
    pub target_file_size: Option<ByteSize>,
    #[serde(default)]
    pub compaction: CompactionSpec,
}

/// `[sink.compaction]`: compaction of small files while a continuous run goes on.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompactionSpec {
    /// On by default in continuous runs (`--once` runs leave it to `maintain`).
    pub enabled: Option<bool>,
    /// How often each table is looked at.
    pub every: Option<Span>,
    /// A table is compacted once it has this many files smaller than `file_size`.
    pub min_files: Option<usize>,
    /// Size of the files compaction writes (and below which a file is small).
    pub file_size: Option<ByteSize>,
}

/// `[batch]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchSpec {
    /// Close a micro-batch at this many rows.
    pub max_rows: Option<usize>,
    /// Close a micro-batch this long after its first record arrived, at the latest.
    pub max_latency: Option<Span>,
    /// Start micro-batches at least this far apart (default 250ms). Past it, a
    /// micro-batch closes as soon as no record is waiting.
    pub min_interval: Option<Span>,
    /// Close a micro-batch once its records hold this much memory (default and
    /// largest: half of the in-flight bytes `runtime.memory` allows, 32MiB at 256MiB).
    pub max_bytes: Option<ByteSize>,
    /// Encode and upload a micro-batch's files while the previous one commits
    /// (default true); false commits one micro-batch at a time, start to end.
    pub pipelined: Option<bool>,
}

/// `[[tables]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableSpec {
    /// Table name; the Delta table is `{sink.uri}/{name}`.
    pub name: String,
    /// The source stream that feeds it.
    pub from: String,
    /// How records become rows.
    #[serde(default)]
    pub mode: TableMode,
    /// Partition columns of a new table.
    #[serde(default)]
    pub partition_by: Vec<String>,
    /// Key columns of a `mirror` table.
    #[serde(default)]
    pub key: Vec<String>,
    /// What a batch whose schema the table cannot take does.
    #[serde(default)]
    pub on_incompatible: OnIncompatible,
    /// How a `mirror` applies changes: `deletion_vectors` (merge-on-read, the default
    /// for new tables) or `copy_on_write` (MERGE rewrites the files it touches; the
    /// default for existing tables created that way, readable by every reader).
    pub merge: Option<MergeMode>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MergeMode {
    /// Mark replaced rows in deletion vectors and append new row images: a commit
    /// costs O(changes). Tables are reader 3 / writer 7 with `deletionVectors`.
    DeletionVectors,
    /// Rewrite every file that holds a changed key (Delta MERGE): a commit costs
    /// O(files touched); any Delta reader reads the table.
    CopyOnWrite,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TableMode {
    /// Every record becomes one row.
    #[default]
    Append,
    /// Every change becomes one row, with `_op`, `_position`, `_commit_ts`, `_source`.
    Changelog,
    /// The table equals the source: changes are merged by key.
    Mirror,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnIncompatible {
    /// Stop the run with an error naming table, column, old and new type.
    #[default]
    Stop,
    /// Send the records to the dead-letter table and go on.
    DeadLetter,
}

/// `[[aggregates]]`: either `window`/`group_by`/`measures`/`filter`/`over`, or the same
/// written as one SQL query in `sql` (see [`super::sql`]); the rest applies to both.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateSpec {
    /// Table name of the aggregate's output (with `sql`: the `INSERT INTO` table, when
    /// the query has one).
    pub name: Option<String>,
    /// A Flink-style window-TVF query: `[INSERT INTO t] SELECT … FROM TABLE(TUMBLE(…))
    /// GROUP BY window_start, window_end, …`. Kept with its place in the file, so errors
    /// point at a line and column.
    pub sql: Option<toml::Spanned<String>>,
    /// The source stream it aggregates.
    pub from: Option<String>,
    /// Column holding the event time (timestamp, date, RFC 3339 text, or epoch microseconds).
    pub event_time: Option<String>,
    /// Window shape.
    pub window: Option<WindowSpec>,
    /// Allowed out-of-orderness: the watermark trails the largest event time by this much.
    /// Required for every window but `global`, unless `[streams.<from>]` declares it.
    pub watermark: Option<Span>,
    /// A shard (Kafka partition, slot) that sent nothing for this long stops holding the
    /// watermark back. Absent: a quiet shard holds it back until it sends again.
    pub idle_timeout: Option<Span>,
    /// Group-by columns besides the window.
    #[serde(default)]
    pub group_by: Vec<String>,
    /// Output column → aggregate expression, such as `count(*)`; columns keep this order.
    #[serde(default)]
    pub measures: IndexMap<String, String>,
    /// SQL condition on the stream's columns; only rows where it is true are aggregated.
    pub filter: Option<String>,
    /// Output column → a window function over the window rows, such as
    /// `avg(views) over (partition by page order by window_start rows between 2 preceding
    /// and current row)`, computed as windows are emitted (`emit = "final"`).
    #[serde(default)]
    pub over: IndexMap<String, String>,
    /// When windows reach the table.
    #[serde(default)]
    pub emit: EmitMode,
    /// What happens to an event whose window has already been emitted.
    #[serde(default)]
    pub late: LatePolicy,
    /// `late = "update"`: how long after its end (in event time, against the watermark)
    /// a window can still be corrected.
    pub lateness: Option<Span>,
    /// `late = "dlq"`: the table late events go to; default `{name}_late_events`.
    pub late_table: Option<String>,
    /// Kafka: every event of a `group_by` key is in one partition (the topic is keyed
    /// by the group key), so each partition's windows are state of their own that
    /// moves with the partition. Default: derived from `source.key_format` when
    /// `source.scale_out` is set (the key's columns are all in `group_by`).
    pub partitioned_by_key: Option<bool>,
}

/// `[streams.<name>]`: what is known of a source stream, shared by every aggregate of it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamSpec {
    /// The event-time column aggregates of the stream use by default.
    pub event_time: Option<String>,
    /// How far the watermark trails the largest event time: a duration (`"5s"`, with
    /// `event_time`), or Flink's declaration `WATERMARK FOR ts AS ts - INTERVAL '5' SECOND`.
    pub watermark: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum WindowSpec {
    /// Fixed, non-overlapping windows of `size`, aligned to the Unix epoch.
    Tumbling {
        /// Window length.
        size: Span,
    },
    /// Windows of `size` starting every `slide` (aligned to the Unix epoch); they
    /// overlap when `slide < size`.
    Hopping { size: Span, slide: Span },
    /// Per group key, events less than `gap` apart share a window, which ends `gap`
    /// after its last event.
    Session { gap: Span },
    /// Windows growing by `step` from each start (a multiple of `size`) up to `size`:
    /// `[s, s+step)`, `[s, s+2·step)`, … `[s, s+size)`; `size` is a multiple of `step`.
    Cumulate { size: Span, step: Span },
    /// One window over all time per group key.
    Global,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmitMode {
    /// Append each window once, when the watermark passes its end.
    #[default]
    Final,
    /// MERGE every window a micro-batch changed, with its values so far (one row per
    /// window and key).
    Update,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LatePolicy {
    /// Discard the event and count it.
    #[default]
    Drop,
    /// Write the event, with the reason, to the aggregate's late-events table.
    Dlq,
    /// Correct the window's row by MERGE while the watermark is within `lateness` of
    /// its end; later events are dropped and counted.
    Update,
}
