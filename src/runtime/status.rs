//! `tributary status`: each table's version, last commit and progress, and per source
//! shard how far the tables are behind the source. Reads only: it never creates a
//! table, joins a consumer group or moves a slot.

use std::collections::BTreeMap;

use futures::StreamExt;
use serde::Serialize;

use super::oracle;
use crate::config::{Pipeline, SourceConfig};
use crate::progress::Progress;
use crate::sink::{SinkError, open_table, table_progress};
use crate::source::{self, ShardInfo, SourceError};

/// Where a pipeline stands.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub pipeline: String,
    pub tables: Vec<TableStatus>,
    pub shards: Vec<ShardStatus>,
    /// Why the source's end positions are unknown (it could not be reached).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TableStatus {
    pub name: String,
    pub url: String,
    /// `None`: no table yet.
    pub version: Option<u64>,
    /// RFC 3339 time of the latest commit.
    pub last_commit: Option<String>,
    /// Per shard, the position the table resumes from.
    pub committed: BTreeMap<String, i64>,
    /// How far the table's incremental snapshot got (Postgres), when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ShardStatus {
    /// A Kafka topic-partition (`topic-3`), a replication slot, a generator or file.
    pub shard: String,
    /// The position every table fed by the shard holds (where a restart resumes).
    pub committed: Option<i64>,
    /// The source's end now: the partition's high watermark, the server's WAL position.
    pub end: Option<i64>,
    /// `end - committed` (`end - start` when nothing is committed yet).
    pub lag: Option<i64>,
    /// What positions count: `offsets`, `bytes` (WAL), `events`, `files`.
    pub unit: &'static str,
    /// The position as people read it (`0/16B3748`), when it differs from the number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub committed_text: Option<String>,
    /// A replication slot's confirmed position (what the server may recycle below).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slot_confirmed: Option<String>,
}

/// Reads the status of `pipeline` from its tables and its source.
pub async fn status(pipeline: &Pipeline) -> Result<Status, SinkError> {
    let (shards, mut source_error) = match source::shards_of(&pipeline.source).await {
        Ok(s) => (s, None),
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    let names: Vec<String> = shards.iter().map(|s| s.name.clone()).collect();
    let storage = pipeline.sink.storage_options();
    let feeds: BTreeMap<&str, &str> = pipeline.fed_tables().collect();
    let mut tables = Vec::new();
    let mut held_by: Vec<(&str, Progress)> = Vec::new();
    for name in pipeline.table_names() {
        let (t, progress) = table_status(pipeline, name, &names, &storage).await?;
        if let Some(from) = feeds.get(name) {
            held_by.push((from, progress));
        }
        tables.push(t);
    }
    let committed: Vec<(&str, &Progress)> = held_by.iter().map(|(f, p)| (*f, p)).collect();
    let held = oracle::held(&shards, &committed);
    let ends = match source_ends(&pipeline.source).await {
        Ok(e) => e,
        Err(e) => {
            source_error.get_or_insert(e.to_string());
            BTreeMap::new()
        }
    };
    let shards = shards
        .iter()
        .map(|ShardInfo { name, .. }| shard_status(&pipeline.source, name, held.get(name), ends.get(name)))
        .collect();
    Ok(Status {
        pipeline: pipeline.name.clone(),
        tables,
        shards,
        source_error,
    })
}

async fn table_status(
    pipeline: &Pipeline,
    name: &str,
    shards: &[String],
    storage: &std::collections::HashMap<String, String>,
) -> Result<(TableStatus, Progress), SinkError> {
    let url = pipeline.sink.table_url(name);
    let mut status = TableStatus {
        name: name.to_string(),
        url: url.to_string(),
        version: None,
        last_commit: None,
        committed: BTreeMap::new(),
        snapshot: None,
    };
    // Opening a local table creates its folder; a status never writes.
    if url.scheme() == "file" && url.to_file_path().is_ok_and(|p| !p.join("_delta_log").exists()) {
        return Ok((status, Progress::new()));
    }
    let err = |source| SinkError::Delta {
        table: name.to_string(),
        source,
    };
    let table = open_table(url, storage.clone()).await.map_err(err)?;
    let Some(version) = table.version() else {
        return Ok((status, Progress::new()));
    };
    status.version = Some(version);
    if let Some(Ok(info)) = table.history(Some(1)).next().await {
        status.last_commit = info
            .timestamp
            .and_then(chrono::DateTime::from_timestamp_millis)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    }
    let cursors = source::cursor_shards(&pipeline.source);
    let every: Vec<String> = shards.iter().chain(&cursors).cloned().collect();
    let mut progress = table_progress(&table, &pipeline.name, &every)
        .await
        .map_err(err)?;
    for c in &cursors {
        let Some(value) = progress.get(c) else {
            continue;
        };
        let state = crate::sink::read_state(&table, &source::cursor_state_key(c, value))
            .await
            .map_err(|e| err(e.into()))?;
        status.snapshot = Some(source::describe_cursor(value, state.as_deref()));
        progress.forget(c);
    }
    status.committed = progress.iter().map(|(s, v)| (s.to_string(), v)).collect();
    Ok((status, progress))
}

/// Per shard: the start (when known) and the end of the source now.
struct End {
    start: Option<i64>,
    end: i64,
    slot_confirmed: Option<i64>,
}

async fn source_ends(config: &SourceConfig) -> Result<BTreeMap<String, End>, SourceError> {
    Ok(match config {
        SourceConfig::Kafka(k) => source::kafka::ends(k)
            .await?
            .into_iter()
            .map(|(shard, (low, high))| {
                let end = End {
                    start: Some(low.max(0)),
                    end: high,
                    slot_confirmed: None,
                };
                (shard, end)
            })
            .collect(),
        SourceConfig::Postgres(p) => {
            let (now, confirmed) = source::postgres::ends(p).await?;
            let end = End {
                start: None,
                end: now,
                slot_confirmed: confirmed,
            };
            BTreeMap::from([(p.slot.clone(), end)])
        }
        SourceConfig::Generator(g) => match g.events {
            Some(n) => {
                let end = End {
                    start: Some(0),
                    end: i64::try_from(n).unwrap_or(i64::MAX),
                    slot_confirmed: None,
                };
                BTreeMap::from([(g.stream.clone(), end)])
            }
            None => BTreeMap::new(),
        },
        SourceConfig::File(_) => BTreeMap::new(),
    })
}

fn shard_status(
    config: &SourceConfig,
    shard: &str,
    committed: Option<i64>,
    end: Option<&End>,
) -> ShardStatus {
    let postgres = matches!(config, SourceConfig::Postgres(_));
    let unit = match config {
        SourceConfig::Kafka(_) => "offsets",
        SourceConfig::Postgres(_) => "bytes",
        SourceConfig::Generator(_) => "events",
        SourceConfig::File(_) => "files",
    };
    let lag = end.and_then(|e| {
        // A Postgres position below the WAL space is a snapshot chunk: no byte lag yet.
        let from = match committed {
            Some(c) if postgres && c < source::postgres::SNAPSHOT_SPACE => return None,
            Some(c) => c,
            None => e.start?,
        };
        Some((e.end - from).max(0))
    });
    let lsn = |p: i64| source::postgres::format_lsn(p as u64);
    ShardStatus {
        shard: shard.to_string(),
        committed,
        end: end.map(|e| e.end),
        lag,
        unit,
        committed_text: committed
            .filter(|_| postgres)
            .map(source::postgres::format_position),
        slot_confirmed: end.and_then(|e| e.slot_confirmed).map(lsn),
    }
}
