//! Pipeline files: the raw TOML [`spec`] is parsed, checked and resolved into a
//! [`Pipeline`] the runtime can start. Every error names the file, the key and what was
//! expected, e.g. `pipelines/x.toml: aggregates[0].window.size: "5 minutes" is not a
//! duration (try "5m")`.

mod aggregate;
mod compaction;
pub mod explain;
mod kafka;
mod postgres;
pub mod spec;
pub mod sql;
pub mod values;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use url::Url;

pub use aggregate::{
    AggregateConfig, Measure, MeasureFn, Over, OverFn, WatermarkFrom, Window, parse_measure,
};
pub use kafka::{
    HEADERS_COLUMN, KEY_COLUMN, KafkaConfig, KafkaFormat, KeyConfig, KeyFormat, RESERVED_OPTIONS,
    RegistryEndpoint, StartAt, SubjectStrategy, UnknownFields,
};
pub use postgres::{PostgresConfig, PostgresDsn, RootCert, SslMode, TlsSettings, parse_dsn, qualify};
pub use spec::{EmitMode, FileFormat, LatePolicy, MergeMode, OnIncompatible, TableMode};
pub use values::{ByteSize, Secret, Span};

use spec::{PipelineSpec, SourceSpec};

/// Why a pipeline file cannot be used. Always names the file and, where there is one, the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read the pipeline file: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: {key}: {message}")]
    Invalid {
        file: String,
        key: String,
        message: String,
    },
}

/// A checked pipeline with every reference resolved and every `${ENV}` expanded.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub name: String,
    /// The file it came from, for messages.
    pub file: String,
    pub source: SourceConfig,
    pub sink: SinkConfig,
    pub batch: BatchConfig,
    pub tables: Vec<TableConfig>,
    pub aggregates: Vec<AggregateConfig>,
    /// Name of the dead-letter table, when records that cannot be used go there.
    pub dead_letters: Option<String>,
    pub runtime: RuntimeConfig,
}

impl Pipeline {
    /// Every table the pipeline writes, in the order it writes them.
    pub fn table_names(&self) -> impl Iterator<Item = &str> {
        self.dead_letters
            .as_deref()
            .into_iter()
            .chain(self.tables.iter().map(|t| t.name.as_str()))
            .chain(self.aggregates.iter().map(|a| a.name.as_str()))
            .chain(self.aggregates.iter().filter_map(|a| a.late_table.as_deref()))
    }

    /// The tables whose progress holds the source back (`[[tables]]` and aggregates),
    /// each with the stream that feeds it.
    pub fn fed_tables(&self) -> impl Iterator<Item = (&str, &str)> {
        self.tables
            .iter()
            .map(|t| (t.name.as_str(), t.from.as_str()))
            .chain(self.aggregates.iter().map(|a| (a.name.as_str(), a.from.as_str())))
    }
}

#[derive(Debug, Clone)]
pub enum SourceConfig {
    Generator(GeneratorConfig),
    File(FileConfig),
    Postgres(PostgresConfig),
    Kafka(KafkaConfig),
}

impl SourceConfig {
    /// The streams the source produces; `None` when only the running source knows
    /// (a Postgres publication without a table list).
    pub fn streams(&self) -> Option<Vec<&str>> {
        match self {
            SourceConfig::Generator(g) => Some(vec![&g.stream]),
            SourceConfig::File(f) => Some(vec![&f.stream]),
            SourceConfig::Postgres(p) => p.tables.as_ref().map(|t| t.iter().map(String::as_str).collect()),
            SourceConfig::Kafka(k) => Some(k.topics.iter().map(String::as_str).collect()),
        }
    }

    /// The column holding each record's source time (Kafka timestamp, Postgres commit
    /// time), for the end-to-end latency metric; synthetic and file sources have none.
    pub fn source_time_column(&self) -> Option<&'static str> {
        match self {
            SourceConfig::Postgres(_) => Some("_commit_ts"),
            SourceConfig::Kafka(k) => Some(if k.format.changes(k.upsert) {
                "_commit_ts"
            } else {
                "_timestamp"
            }),
            SourceConfig::Generator(_) | SourceConfig::File(_) => None,
        }
    }

    /// Whether records carry their key (a mirror table may then omit `key`).
    pub fn supplies_keys(&self) -> bool {
        match self {
            SourceConfig::Postgres(_) => true,
            // Upsert topics' keys, and Debezium events' record keys (the primary key).
            SourceConfig::Kafka(k) => {
                k.upsert
                    || (k.format.is_debezium()
                        && k.key
                            .as_ref()
                            .is_some_and(|key| matches!(key.format, KeyFormat::Json | KeyFormat::Avro)))
            }
            SourceConfig::Generator(_) | SourceConfig::File(_) => false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct GeneratorConfig {
    pub events: Option<u64>,
    pub rate: u64,
    pub seed: u64,
    pub out_of_order: Span,
    /// Event time of event 0, microseconds since the epoch.
    pub start_micros: i64,
    pub interval: Span,
    pub users: u32,
    pub stream: String,
}

#[derive(Debug, Clone)]
pub struct FileConfig {
    pub path: PathBuf,
    pub format: Option<FileFormat>,
    pub stream: String,
    pub poll_interval: Span,
}

#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// Root URL; table `t` lives at `{root}/t`. Always ends without a slash.
    pub root: Url,
    /// Object-store options; values may hold credentials, so they are secrets.
    pub storage: BTreeMap<String, Secret>,
    pub checkpoint_every: u32,
    pub target_file_size: ByteSize,
    /// Background compaction in continuous runs (`None`: off).
    pub compaction: Option<crate::sink::compact::CompactionPolicy>,
}

impl SinkConfig {
    /// URL of the Delta table called `name`.
    pub fn table_url(&self, name: &str) -> Url {
        let mut url = self.root.clone();
        url.path_segments_mut()
            .map(|mut s| {
                s.pop_if_empty().push(name);
            })
            .ok();
        url
    }

    /// Storage options in the form object_store/deltalake take.
    pub fn storage_options(&self) -> std::collections::HashMap<String, String> {
        self.storage
            .iter()
            .map(|(k, v)| (k.clone(), v.expose().to_string()))
            .collect()
    }
}

#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// The process's memory budget.
    pub memory: ByteSize,
    /// Where `/metrics` and `/health` are served.
    pub metrics: Option<std::net::SocketAddr>,
    pub shutdown_timeout: Span,
    /// Local caches (mirror key indexes); rebuildable from the tables.
    pub cache_dir: PathBuf,
}

/// What the process needs before any record: the async runtime, clients, the Delta
/// log, Parquet encoders and allocator slack (measured at ~80 MiB idle and up to
/// ~125 MiB while encoding on this project's benchmark machine).
pub const PROCESS_FOOTPRINT: ByteSize = ByteSize::mib(128);

impl RuntimeConfig {
    /// Bytes of records that may be in flight (read, not yet committed): half of what
    /// the budget leaves after the process's own footprint; the other half is the
    /// copies encoding and committing a micro-batch makes.
    pub fn in_flight_bytes(&self) -> u64 {
        self.memory.0.saturating_sub(PROCESS_FOOTPRINT.0) / 2
    }

    /// Page cache of one mirror's key index: an eighth of the in-flight bytes (8MiB at
    /// the default 256MiB), taken from the encode-and-commit half, at least 4MiB.
    pub fn key_index_cache_bytes(&self) -> usize {
        (self.in_flight_bytes() / 8).max(ByteSize::mib(4).0) as usize
    }
}

#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    pub max_rows: usize,
    pub max_latency: Span,
    pub min_interval: Span,
    pub max_bytes: ByteSize,
    /// Write a micro-batch's files while the previous one commits (see
    /// `runtime::flight`).
    pub pipelined: bool,
}

#[derive(Debug, Clone)]
pub struct TableConfig {
    pub name: String,
    pub from: String,
    pub mode: TableMode,
    pub partition_by: Vec<String>,
    /// Key columns (`mirror` only).
    pub key: Vec<String>,
    pub on_incompatible: OnIncompatible,
    /// `mirror` only: how changes are applied (`None`: the table's own way, and
    /// deletion vectors for a new table).
    pub merge: Option<MergeMode>,
}

/// Reads and resolves a pipeline file, expanding `${ENV}` from the process environment.
pub fn load(path: &Path) -> Result<Pipeline, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: file.clone(),
        source,
    })?;
    parse(&file, &text, |name| std::env::var(name).ok())
}

/// Parses and resolves pipeline text; `env` answers `${NAME}` look-ups.
pub fn parse(file: &str, text: &str, env: impl Fn(&str) -> Option<String>) -> Result<Pipeline, ConfigError> {
    let spec: PipelineSpec =
        serde_path_to_error::deserialize(toml::Deserializer::new(text)).map_err(|e| {
            if e.path().to_string() == "source" {
                // `[source]` is chosen by `kind`, and serde reads such a table as a whole,
                // losing the key and line; read it again as the kind it names.
                source_error(file, text).unwrap_or_else(|| invalid(file, text, e))
            } else {
                invalid(file, text, e)
            }
        })?;
    Resolver {
        file,
        text,
        env: &env,
    }
    .resolve(spec)
}

/// A parse error, naming the key path and the line.
fn invalid(file: &str, text: &str, e: serde_path_to_error::Error<toml::de::Error>) -> ConfigError {
    let path = e.path().to_string();
    let inner = e.into_inner();
    let line = inner
        .span()
        .map(|s| {
            format!(
                " (line {})",
                text[..s.start.min(text.len())].matches('\n').count() + 1
            )
        })
        .unwrap_or_default();
    let key = if path == "." { "pipeline".to_string() } else { path };
    ConfigError::Invalid {
        file: file.to_string(),
        key,
        message: format!("{}{line}", inner.message().trim()),
    }
}

/// The error in `[source]`, read as the kind it names; `None` when that does not
/// find one (an unknown `kind`, say), so the caller's error stands.
fn source_error(file: &str, text: &str) -> Option<ConfigError> {
    #[derive(serde::Deserialize)]
    struct Only<T> {
        #[serde(rename = "source")]
        _source: T,
    }
    fn read<T: serde::de::DeserializeOwned>(file: &str, text: &str) -> Option<ConfigError> {
        serde_path_to_error::deserialize::<_, Only<T>>(toml::Deserializer::new(text))
            .err()
            .map(|e| invalid(file, text, e))
    }
    let doc: toml::Table = text.parse().ok()?;
    match doc.get("source")?.get("kind")?.as_str()? {
        "kafka" => read::<spec::KafkaSpec>(file, text),
        "postgres" => read::<spec::PostgresSpec>(file, text),
        "generator" => read::<spec::GeneratorSpec>(file, text),
        "file" => read::<spec::FileSpec>(file, text),
        _ => None,
    }
}

struct Resolver<'a> {
    file: &'a str,
    /// The file's text, for placing errors inside values (`sql`).
    text: &'a str,
    env: &'a dyn Fn(&str) -> Option<String>,
}

impl Resolver<'_> {
    fn err(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_string(),
            key: key.into(),
            message: message.into(),
        }
    }

    fn expand(&self, key: &str, value: &str) -> Result<String, ConfigError> {
        values::expand_env(value, self.env).map_err(|m| self.err(key, m))
    }

    fn name(&self, key: &str, value: &str) -> Result<(), ConfigError> {
        let ok = !value.is_empty()
            && value.len() <= 128
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if ok {
            Ok(())
        } else {
            Err(self.err(
                key,
                format!("\"{value}\" is not a valid name (use letters, digits, '_' and '-')"),
            ))
        }
    }

    fn resolve(&self, spec: PipelineSpec) -> Result<Pipeline, ConfigError> {
        self.name("name", &spec.name)?;
        let source = self.source(spec.source)?;
        let runtime = self.runtime(&spec.runtime)?;
        let sink = self.sink(spec.sink, &runtime)?;
        // A micro-batch is gathered while the previous one commits: half of the
        // in-flight bytes each.
        let largest_batch = ByteSize(runtime.in_flight_bytes() / 2);
        let batch = BatchConfig {
            max_rows: spec.batch.max_rows.unwrap_or(spec::DEFAULT_MAX_ROWS),
            max_latency: spec.batch.max_latency.unwrap_or(spec::DEFAULT_MAX_LATENCY),
            min_interval: spec.batch.min_interval.unwrap_or(spec::DEFAULT_MIN_INTERVAL),
            max_bytes: spec
                .batch
                .max_bytes
                .unwrap_or(ByteSize(spec::DEFAULT_MAX_BYTES.0.min(largest_batch.0))),
            pipelined: spec.batch.pipelined.unwrap_or(true),
        };
        if batch.max_rows == 0 {
            return Err(self.err("batch.max_rows", "must be at least 1"));
        }
        if batch.min_interval.0 > batch.max_latency.0 {
            return Err(self.err(
                "batch.min_interval",
                format!(
                    "{:?} is longer than batch.max_latency ({:?}): a micro-batch could not close in time",
                    batch.min_interval.0, batch.max_latency.0
                ),
            ));
        }
        if batch.max_bytes.0 == 0 {
            return Err(self.err("batch.max_bytes", "must be at least 1"));
        }
        if batch.max_bytes.0 > largest_batch.0 {
            return Err(self.err(
                "batch.max_bytes",
                format!(
                    "{} does not fit the memory budget: at most {} with this runtime.memory (a quarter of what the process's {} footprint leaves), or raise runtime.memory",
                    batch.max_bytes, largest_batch, PROCESS_FOOTPRINT
                ),
            ));
        }
        let dead_letters = match spec.dead_letters {
            None => None,
            Some(d) => {
                let name = d.table.unwrap_or_else(|| spec::DEFAULT_DEAD_LETTER_TABLE.into());
                self.name("dead_letters.table", &name)?;
                Some(name)
            }
        };

        let streams = source
            .streams()
            .map(|s| s.into_iter().map(str::to_string).collect::<Vec<_>>());
        let mut names: BTreeSet<String> = dead_letters.iter().cloned().collect();
        let mut tables = Vec::with_capacity(spec.tables.len());
        for (i, t) in spec.tables.into_iter().enumerate() {
            let key = format!("tables[{i}]");
            self.name(&format!("{key}.name"), &t.name)?;
            if !names.insert(t.name.clone()) {
                return Err(self.err(format!("{key}.name"), format!("\"{}\" is used twice", t.name)));
            }
            self.stream(&format!("{key}.from"), &streams, &t.from)?;
            self.columns(&format!("{key}.partition_by"), &t.partition_by)?;
            self.columns(&format!("{key}.key"), &t.key)?;
            match t.mode {
                TableMode::Mirror if t.key.is_empty() && !source.supplies_keys() => {
                    return Err(self.err(
                        format!("{key}.key"),
                        "a mirror table needs its key columns, e.g. key = [\"id\"]",
                    ));
                }
                TableMode::Append | TableMode::Changelog if !t.key.is_empty() => {
                    return Err(self.err(format!("{key}.key"), "only mirror tables have a key"));
                }
                _ => {}
            }
            if t.merge.is_some() && t.mode != TableMode::Mirror {
                return Err(self.err(format!("{key}.merge"), "only mirror tables have a merge mode"));
            }
            if t.mode == TableMode::Mirror
                && t.merge != Some(MergeMode::CopyOnWrite)
                && let Some(c) = t.key.iter().find(|k| t.partition_by.contains(k))
            {
                return Err(self.err(
                    format!("{key}.partition_by"),
                    format!(
                        "key column \"{c}\" cannot be a partition column of a deletion-vector mirror \
                         (partition by another column, or set merge = \"copy_on_write\")"
                    ),
                ));
            }
            if t.on_incompatible == OnIncompatible::DeadLetter && dead_letters.is_none() {
                return Err(self.err(
                    format!("{key}.on_incompatible"),
                    "\"dead_letter\" needs a [dead_letters] section",
                ));
            }
            tables.push(TableConfig {
                name: t.name,
                from: t.from,
                mode: t.mode,
                partition_by: t.partition_by,
                key: t.key,
                on_incompatible: t.on_incompatible,
                merge: t.merge,
            });
        }

        let times = self.stream_times(spec.streams, &streams)?;
        let mut aggregates = Vec::with_capacity(spec.aggregates.len());
        for (i, a) in spec.aggregates.into_iter().enumerate() {
            let declared = a.partitioned_by_key;
            let mut resolved = self.aggregate(i, a, &streams, &times, &mut names)?;
            self.partition(&mut resolved, declared, &source)?;
            aggregates.push(resolved);
        }
        if tables.is_empty() && aggregates.is_empty() {
            return Err(self.err(
                "tables",
                "the pipeline writes nothing: add a [[tables]] or [[aggregates]] entry",
            ));
        }
        Ok(Pipeline {
            name: spec.name,
            file: self.file.to_string(),
            source,
            sink,
            batch,
            tables,
            aggregates,
            dead_letters,
            runtime,
        })
    }

    fn runtime(&self, spec: &spec::RuntimeSpec) -> Result<RuntimeConfig, ConfigError> {
        let memory = spec.memory.unwrap_or(spec::DEFAULT_MEMORY);
        let least = ByteSize(PROCESS_FOOTPRINT.0 + ByteSize::mib(64).0);
        if memory < least {
            return Err(self.err(
                "runtime.memory",
                format!(
                    "{memory} is too small: at least {least} ({PROCESS_FOOTPRINT} for the process, 64MiB for records in flight)"
                ),
            ));
        }
        let metrics = match &spec.metrics {
            None => None,
            Some(text) => {
                let text = self.expand("runtime.metrics", text)?;
                Some(text.parse().map_err(|_| {
                    self.err(
                        "runtime.metrics",
                        format!("\"{text}\" is not an address to listen on (try \"127.0.0.1:9464\")"),
                    )
                })?)
            }
        };
        let cache_dir = match &spec.cache_dir {
            Some(dir) => dir.clone(),
            None => match ((self.env)("XDG_CACHE_HOME"), (self.env)("HOME")) {
                (Some(xdg), _) if !xdg.is_empty() => PathBuf::from(xdg).join("tributary"),
                (_, Some(home)) if !home.is_empty() => PathBuf::from(home).join(".cache").join("tributary"),
                _ => std::env::temp_dir().join("tributary-cache"),
            },
        };
        Ok(RuntimeConfig {
            memory,
            metrics,
            shutdown_timeout: spec.shutdown_timeout.unwrap_or(spec::DEFAULT_SHUTDOWN_TIMEOUT),
            cache_dir,
        })
    }

    /// A list of column names: none empty, none twice.
    fn columns(&self, key: &str, columns: &[String]) -> Result<(), ConfigError> {
        let mut seen = BTreeSet::new();
        for c in columns {
            if c.is_empty() {
                return Err(self.err(key, "a column name is empty"));
            }
            if !seen.insert(c) {
                return Err(self.err(key, format!("\"{c}\" is listed twice")));
            }
        }
        Ok(())
    }

    /// `from` must name a stream of the source (when the source's streams are known).
    fn stream(&self, key: &str, streams: &Option<Vec<String>>, from: &str) -> Result<(), ConfigError> {
        match streams {
            Some(streams) if !streams.iter().any(|s| s == from) => Err(self.err(
                key,
                format!(
                    "no stream \"{from}\" (the source produces: {})",
                    streams.join(", ")
                ),
            )),
            _ => Ok(()),
        }
    }

    fn postgres(&self, p: spec::PostgresSpec) -> Result<PostgresConfig, ConfigError> {
        let dsn = self.expand("source.dsn", &p.dsn)?;
        let dsn = parse_dsn(&dsn).map_err(|m| self.err("source.dsn", m))?;
        // Slot names: what Postgres accepts (lower-case letters, digits, underscores).
        if p.slot.is_empty()
            || p.slot.len() > 63
            || !p
                .slot
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(self.err(
                "source.slot",
                "a slot name is 1-63 lower-case letters, digits and underscores",
            ));
        }
        if p.publication.is_empty() || p.publication.len() > 63 {
            return Err(self.err("source.publication", "must be 1-63 characters"));
        }
        let tables = match p.tables {
            None => None,
            Some(t) if t.is_empty() => {
                return Err(self.err("source.tables", "list at least one table, or leave it out"));
            }
            Some(t) => {
                let mut seen = BTreeSet::new();
                let mut out = Vec::with_capacity(t.len());
                for name in t {
                    let q = qualify(&name);
                    if q.split('.').count() != 2 || q.split('.').any(str::is_empty) {
                        return Err(self.err("source.tables", format!("\"{name}\" is not schema.table")));
                    }
                    if !seen.insert(q.clone()) {
                        return Err(self.err("source.tables", format!("\"{name}\" is listed twice")));
                    }
                    out.push(q);
                }
                Some(out)
            }
        };
        let status_interval = p.status_interval.unwrap_or(spec::DEFAULT_PG_STATUS_INTERVAL).0;
        if status_interval.is_zero() {
            return Err(self.err("source.status_interval", "must be longer than 0"));
        }
        if p.spill_after.is_some_and(|b| b.0 < 64 * 1024) {
            return Err(self.err("source.spill_after", "must be at least 64KiB"));
        }
        let snapshot_chunk_rows = p.snapshot_chunk_rows.unwrap_or(100_000);
        if !(1..=100_000_000).contains(&snapshot_chunk_rows) {
            return Err(self.err("source.snapshot_chunk_rows", "must be between 1 and 100000000"));
        }
        let snapshot_chunk_rows = snapshot_chunk_rows as usize;
        Ok(PostgresConfig {
            dsn,
            publication: p.publication,
            slot: p.slot,
            tables,
            snapshot: p.snapshot.unwrap_or(true),
            status_interval,
            spill_after: p.spill_after.map(|b| b.0),
            snapshot_chunk_rows,
        })
    }

    fn source(&self, spec: SourceSpec) -> Result<SourceConfig, ConfigError> {
        Ok(match spec {
            SourceSpec::Postgres(p) => SourceConfig::Postgres(self.postgres(p)?),
            SourceSpec::Kafka(k) => SourceConfig::Kafka(self.kafka(k)?),
            SourceSpec::Generator(g) => {
                let start = g.start.as_deref().unwrap_or(spec::DEFAULT_GENERATOR_START);
                let start_micros = chrono::DateTime::parse_from_rfc3339(start)
                    .map_err(|e| {
                        self.err(
                            "source.start",
                            format!("\"{start}\" is not an RFC 3339 time ({e})"),
                        )
                    })?
                    .timestamp_micros();
                let stream = g.stream.unwrap_or_else(|| spec::DEFAULT_GENERATOR_STREAM.into());
                self.name("source.stream", &stream)?;
                let users = g.users.unwrap_or(spec::DEFAULT_GENERATOR_USERS);
                if users == 0 {
                    return Err(self.err("source.users", "must be at least 1"));
                }
                SourceConfig::Generator(GeneratorConfig {
                    events: g.events,
                    rate: g.rate,
                    seed: g.seed,
                    out_of_order: g.out_of_order,
                    start_micros,
                    interval: g.interval.unwrap_or(spec::DEFAULT_GENERATOR_INTERVAL),
                    users,
                    stream,
                })
            }
            SourceSpec::File(f) => {
                let raw = self.expand("source.path", &f.path.to_string_lossy())?;
                let path = std::path::absolute(&raw)
                    .map_err(|e| self.err("source.path", format!("\"{raw}\": {e}")))?;
                let stream = match f.stream {
                    Some(s) => s,
                    None => path
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_else(|| "files".into()),
                };
                self.name("source.stream", &stream)?;
                SourceConfig::File(FileConfig {
                    path,
                    format: f.format,
                    stream,
                    poll_interval: f.poll_interval.unwrap_or(spec::DEFAULT_FILE_POLL),
                })
            }
        })
    }

    fn sink(&self, spec: spec::SinkSpec, runtime: &RuntimeConfig) -> Result<SinkConfig, ConfigError> {
        let uri = self.expand("sink.uri", &spec.uri)?;
        let root = parse_sink_uri(&uri).map_err(|m| self.err("sink.uri", m))?;
        let mut storage = BTreeMap::new();
        for (k, v) in &spec.storage {
            storage.insert(
                k.clone(),
                Secret::new(self.expand(&format!("sink.storage.{k}"), v)?),
            );
        }
        let checkpoint_every = spec.checkpoint_every.unwrap_or(spec::DEFAULT_CHECKPOINT_EVERY);
        if checkpoint_every == 0 {
            return Err(self.err("sink.checkpoint_every", "must be at least 1"));
        }
        let target_file_size = spec.target_file_size.unwrap_or(spec::DEFAULT_TARGET_FILE_SIZE);
        if target_file_size.0 < 1024 * 1024 {
            return Err(self.err("sink.target_file_size", "must be at least 1MiB"));
        }
        let compaction = self.compaction(&spec.compaction, target_file_size, runtime)?;
        Ok(SinkConfig {
            root,
            storage,
            checkpoint_every,
            target_file_size,
            compaction,
        })
    }
}

/// A folder path, `file://` URL or `s3://bucket/prefix` as a URL without a trailing slash.
fn parse_sink_uri(uri: &str) -> Result<Url, String> {
    let mut url = if uri.contains("://") {
        let url = Url::parse(uri).map_err(|e| format!("\"{uri}\" is not a URL ({e})"))?;
        match url.scheme() {
            "file" | "s3" | "s3a" | "memory" => url,
            other => {
                return Err(format!(
                    "scheme \"{other}\" is not supported (use a folder, file:// or s3://)"
                ));
            }
        }
    } else {
        let abs = std::path::absolute(uri).map_err(|e| format!("\"{uri}\": {e}"))?;
        Url::from_directory_path(&abs).map_err(|()| format!("\"{uri}\" is not a usable folder path"))?
    };
    if url.scheme().starts_with("s3") && url.host_str().is_none_or(str::is_empty) {
        return Err(format!("\"{uri}\" names no bucket (s3://bucket/prefix)"));
    }
    let trimmed = url.path().trim_end_matches('/').to_string();
    url.set_path(&trimmed);
    Ok(url)
}

#[cfg(test)]
mod tests;
