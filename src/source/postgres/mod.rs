//! PostgreSQL logical replication (`pgoutput`): an optional consistent snapshot, then
//! every committed change in commit order.
//!
//! # Snapshots
//!
//! Tables with a key are copied in chunks while the slot streams ([`incremental`]),
//! resumable at every chunk and possible for tables added to a running pipeline.
//! Keyless tables, and on a first start tables feeding an aggregate (aggregates take
//! rows once, in stream order, and never take restated chunks), are copied in one
//! piece before streaming starts ([`snapshot`]).
//!
//! # Positions
//!
//! The slot is the one shard. A change's position is its transaction's commit LSN,
//! shared by every row of the transaction; a chunk ends on a transaction boundary and
//! its `next` is the end LSN of its last transaction, which is where
//! `START_REPLICATION` resumes (Postgres skips transactions that committed before
//! it). Rows sharing a position are never split across micro-batches, so a
//! transaction is never split across Delta versions of a table; one too large for
//! memory is spilled to local files while open and committed part by part, still in
//! one version (see `stream` and [`crate::source::spill`]).
//!
//! Rows of a copy in one piece use positions below [`SNAPSHOT_SPACE`] (no WAL
//! position is that small): one per chunk, so a table's progress says how far an
//! interrupted copy got, and the copy ends with a marker that moves every table to
//! the consistent point where the stream starts. Rows of an incremental snapshot take
//! the position of their chunk's high watermark, and the tables keep the snapshot's
//! own progress beside it (a [`crate::source::Cursor`]).
//!
//! # Acknowledgement
//!
//! The slot's `confirmed_flush_lsn` is moved only to progress every table has
//! committed (the standby status update's flush position), so a restart can always
//! re-read what the tables lack. A slot that is missing, invalidated or confirmed
//! past the tables is an error, never a silent restart from "now".

mod catalog;
mod changes;
mod incremental;
pub mod pgoutput;
mod snapshot;
mod stream;
mod tls;
pub mod types;
mod wire;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use deltalake::arrow::array::{Int64Array, RecordBatch};
use deltalake::arrow::datatypes::{Schema, SchemaRef};

use crate::config::PostgresConfig;
use crate::progress::Progress;
use crate::sink::dead_letter::{DeadLetters, ErrorKind};
use crate::source::{Control, Polled, Resume, RunMode, Source, SourceBatch, SourceError};
use changes::{BadValue, Layout};
pub use incremental::{describe as describe_snapshot, snapshot_shard, take_again};
use snapshot::Snapshot;
use stream::{Step, Stream};
use types::{PgType, TypeRow};
pub use wire::{PgError, format_lsn, parse_lsn};

/// Positions below this are snapshot chunks; WAL positions start at `0/1000000`.
pub const SNAPSHOT_SPACE: i64 = 0x100_0000;
/// How often the slot's retained WAL is reported.
const LAG_EVERY: Duration = Duration::from_secs(5);
/// How long the lag query may go unanswered before its connection is opened again: a
/// metric must never hold the source (it runs between micro-batches).
const LAG_TIMEOUT: Duration = Duration::from_secs(30);

/// Values that could not be converted (stored as NULL), on their way to the
/// dead-letter table, or an error when there is none.
#[derive(Debug, Default)]
pub(crate) struct BadValues {
    values: Vec<BadValue>,
    dead_letters: bool,
}

impl BadValues {
    fn take(&mut self, shard: &str) -> Result<Option<RecordBatch>, SourceError> {
        if self.values.is_empty() {
            return Ok(None);
        }
        if !self.dead_letters {
            let b = &self.values[0];
            return Err(SourceError::Setup(format!(
                "{} at {}: column {}: {} (configure [dead_letters] to keep going, with NULL stored)",
                b.stream,
                format_position(b.position),
                b.column,
                b.reason
            )));
        }
        let mut dl = DeadLetters::default();
        for b in self.values.drain(..) {
            tracing::warn!(table = %b.stream, column = %b.column, reason = %b.reason, "value stored as NULL");
            dl.push(
                shard,
                b.position,
                ErrorKind::Decode,
                &format!("column {}: {} (stored as NULL)", b.column, b.reason),
                Some(&b.stream),
                Some(&b.text),
            );
        }
        Ok(Some(dl.finish()))
    }
}

/// A position as users know it: an LSN, or a snapshot chunk.
pub fn format_position(p: i64) -> String {
    if p < SNAPSHOT_SPACE {
        format!("snapshot chunk {p}")
    } else {
        format!("LSN {}", format_lsn(p as u64))
    }
}

/// Where the server's WAL stands now, and the slot's confirmed position (`None` when
/// there is no such slot): what `tributary status` measures lag against.
pub async fn ends(cfg: &PostgresConfig) -> Result<(i64, Option<i64>), SourceError> {
    let mut sql = wire::Conn::connect(&cfg.dsn, false)
        .await
        .map_err(pg("connecting"))?;
    let now = catalog::current_lsn(&mut sql).await?;
    let slot = catalog::slot(&mut sql, &cfg.slot).await?;
    Ok((now as i64, slot.and_then(|s| s.confirmed_flush).map(|c| c as i64)))
}

/// The primary key (or replica-identity index) columns of `stream`, as the
/// publication captures it; empty for a table with neither.
pub async fn key_of(cfg: &PostgresConfig, stream: &str) -> Result<Vec<String>, SourceError> {
    let mut sql = wire::Conn::connect(&cfg.dsn, false)
        .await
        .map_err(pg("connecting"))?;
    let infos = catalog::tables(&mut sql, &cfg.publication, &[stream.to_string()]).await?;
    sql.close().await;
    infos
        .into_iter()
        .find(|t| t.stream == stream)
        .map(|t| t.key)
        .ok_or_else(|| SourceError::Setup(format!("{stream} is not in publication \"{}\"", cfg.publication)))
}

/// A control marker for every stream of `shard`.
pub(crate) fn marker(shard: &Arc<str>, next: i64, control: Control) -> SourceBatch {
    shaped_marker(
        shard,
        Arc::from(""),
        SchemaRef::new(Schema::empty()),
        next,
        control,
    )
}

/// A control marker that also carries the layout of `stream`, so that a table that
/// does not exist yet is created by it (and holds progress from then on).
fn shaped_marker(
    shard: &Arc<str>,
    stream: Arc<str>,
    schema: SchemaRef,
    next: i64,
    control: Control,
) -> SourceBatch {
    SourceBatch {
        stream,
        shard: shard.clone(),
        records: RecordBatch::new_empty(schema),
        positions: Int64Array::from(Vec::<i64>::new()),
        next,
        end_of_input: false,
        rejected: None,
        control: Some(control),
        spilled: None,
        cursor: None,
    }
}

/// Turns column lists into layouts, looking types up in the catalog when needed.
pub(crate) struct Describe {
    sql: wire::Conn,
    types: HashMap<u32, TypeRow>,
    /// The captured streams and their primary keys; relations outside them are
    /// ignored.
    captured: HashMap<String, Vec<String>>,
}

impl Describe {
    /// The layout of `stream` with `columns` (name, type, modifier, key).
    async fn layout(
        &mut self,
        stream: &str,
        columns: Vec<(String, u32, i32, bool)>,
    ) -> Result<Arc<Layout>, SourceError> {
        let mut unknown: Vec<u32> = columns
            .iter()
            .map(|c| c.1)
            .filter(|oid| *oid >= 10_000 && !self.types.contains_key(oid))
            .collect();
        // Element and base types may be user types too: a few rounds at most.
        for _ in 0..3 {
            if unknown.is_empty() {
                break;
            }
            let rows = catalog::type_rows(&mut self.sql, &unknown).await?;
            unknown = rows
                .values()
                .flat_map(|r| [r.element, r.base])
                .filter(|o| *o >= 10_000 && !self.types.contains_key(o) && !rows.contains_key(o))
                .collect();
            self.types.extend(rows);
        }
        let lookup = |oid: u32| self.types.get(&oid).cloned();
        let cols = columns
            .into_iter()
            .map(|(n, oid, m, k)| (n, PgType::resolve(oid, m, &lookup), k))
            .collect();
        Ok(Arc::new(Layout::new(stream, cols)))
    }

    /// The layout of a table as the catalog describes it.
    async fn table(&mut self, info: &catalog::TableInfo) -> Result<Arc<Layout>, SourceError> {
        let columns = info
            .columns
            .iter()
            .map(|(n, t, m)| (n.clone(), *t, *m, info.key.contains(n)))
            .collect();
        self.layout(&info.stream, columns).await
    }

    /// The layout of a relation the stream describes; `None` when it is not captured.
    pub(crate) async fn relation(
        &mut self,
        stream: &str,
        columns: Vec<(String, u32, i32, bool)>,
    ) -> Result<Option<Arc<Layout>>, SourceError> {
        let Some(key) = self.captured.get(stream) else {
            return Ok(None);
        };
        // Under REPLICA IDENTITY FULL every column is flagged as identity; a key change
        // is a change of the primary key.
        let columns = if key.is_empty() {
            columns
        } else {
            columns
                .into_iter()
                .map(|(n, t, m, _)| {
                    let k = key.contains(&n);
                    (n, t, m, k)
                })
                .collect()
        };
        self.layout(stream, columns).await.map(Some)
    }
}

enum Phase {
    Snapshot(Box<Snapshot>),
    Stream(Box<Stream>),
    /// The `--once` end is reached; the stream stays open to acknowledge the last
    /// commit.
    Done(Option<Box<Stream>>),
}

/// The Postgres source: see the module docs.
pub struct PostgresSource {
    cfg: PostgresConfig,
    shard: Arc<str>,
    /// A plain connection for the catalog and lag queries, and the type cache.
    describe: Describe,
    phase: Phase,
    /// Batches of one stream step waiting to be handed over.
    ready: std::collections::VecDeque<SourceBatch>,
    /// Captured streams and their keys.
    keys: HashMap<String, Vec<String>>,
    /// Layouts of the captured tables at start, for markers that create tables.
    layouts: Vec<Arc<Layout>>,
    chunk_rows: usize,
    /// Where and when an open transaction spills to disk.
    spill: stream::SpillAt,
    /// The WAL position noted at start by a `--once` run.
    end: Option<u64>,
    bad: BadValues,
    last_lag: Instant,
    /// Tables being copied in chunks while the stream runs.
    incremental: incremental::Incremental,
}

impl std::fmt::Debug for PostgresSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSource")
            .field("slot", &self.shard)
            .finish()
    }
}

/// Wraps a connection error with what was being done.
pub(crate) fn pg(context: impl Into<String>) -> impl FnOnce(PgError) -> SourceError {
    let context = context.into();
    move |source| SourceError::Postgres {
        context,
        source: Box::new(source),
    }
}

impl PostgresSource {
    pub async fn open(
        cfg: &PostgresConfig,
        resume: &Resume,
        mode: RunMode,
        chunk_rows: usize,
        dead_letters: bool,
        local: &crate::source::Local,
    ) -> Result<PostgresSource, SourceError> {
        // Spill files of an earlier process are void: their transactions come again.
        let spill_dir = local.spill_dir.join(&cfg.slot);
        crate::source::spill::clear(&spill_dir).map_err(|source| SourceError::Io {
            context: format!("clearing spill files in {}", spill_dir.display()),
            source,
        })?;
        let spill = stream::SpillAt {
            dir: spill_dir,
            after: cfg.spill_after.unwrap_or(local.spill_after) as usize,
        };
        // A chunk of an incremental snapshot waits in memory as an open transaction does.
        let chunk_budget = spill.after;
        let mut sql = wire::Conn::connect(&cfg.dsn, false)
            .await
            .map_err(pg("connecting"))?;
        let version = catalog::server_version(&mut sql).await?;
        if version < 150_000 {
            return Err(SourceError::Setup(format!(
                "PostgreSQL {version} is too old: logical replication with column lists and row \
                 filters needs 15 or later"
            )));
        }
        let streams = catalog::ensure_publication(&mut sql, &cfg.publication, cfg.tables.as_deref()).await?;
        let infos = catalog::tables(&mut sql, &cfg.publication, &streams).await?;
        let keys: HashMap<String, Vec<String>> =
            infos.iter().map(|t| (t.stream.clone(), t.key.clone())).collect();

        let shard: Arc<str> = Arc::from(cfg.slot.as_str());
        let held: Vec<Option<i64>> = resume.tables.iter().map(|p| p.get(&shard)).collect();
        let furthest = held.iter().flatten().copied().max();
        let streaming = furthest.is_some_and(|p| p >= SNAPSHOT_SPACE);
        // Where the stream starts: the least progress among tables already streaming.
        let stream_start = held
            .iter()
            .flatten()
            .copied()
            .filter(|p| *p >= SNAPSHOT_SPACE)
            .min();

        // Where the slot stands (its confirmed position), for a first start without a
        // snapshot.
        let slot_position = match catalog::slot(&mut sql, &cfg.slot).await? {
            None if streaming => {
                return Err(SourceError::Position(format!(
                    "replication slot \"{}\" does not exist, but the tables hold changes up to {}: \
                     the changes since then are gone. Re-create the tables (they will be snapshotted \
                     again) or restore the slot",
                    cfg.slot,
                    format_position(furthest.unwrap_or_default())
                )));
            }
            None => {
                let lsn = catalog::create_slot(&mut sql, &cfg.slot).await?;
                tracing::info!(slot = %cfg.slot, at = %format_lsn(lsn), "created replication slot");
                Some(lsn)
            }
            Some(slot) => {
                if slot.plugin.as_deref() != Some("pgoutput") {
                    return Err(SourceError::Setup(format!(
                        "replication slot \"{}\" is not a pgoutput logical slot (plugin {:?})",
                        cfg.slot, slot.plugin
                    )));
                }
                if slot.database.as_deref() != Some(cfg.dsn.dbname.as_str()) {
                    return Err(SourceError::Setup(format!(
                        "replication slot \"{}\" belongs to database {:?}, not \"{}\"",
                        cfg.slot, slot.database, cfg.dsn.dbname
                    )));
                }
                if slot.wal_status.as_deref() == Some("lost") {
                    return Err(SourceError::Position(format!(
                        "replication slot \"{}\" was invalidated (the WAL it needed was removed, see \
                         max_slot_wal_keep_size): changes are lost. Drop the slot and re-create the tables",
                        cfg.slot
                    )));
                }
                if let (Some(confirmed), Some(start)) = (slot.confirmed_flush, stream_start)
                    && confirmed as i64 > start
                {
                    return Err(SourceError::Position(format!(
                        "replication slot \"{}\" confirmed {} but the tables only hold changes up to {}: \
                         someone else advanced the slot and the changes in between cannot be read again",
                        cfg.slot,
                        format_lsn(confirmed),
                        format_position(start)
                    )));
                }
                slot.confirmed_flush
            }
        };
        let end = match mode {
            RunMode::Once => {
                let end = catalog::current_lsn(&mut sql).await?;
                tracing::info!(shard = %cfg.slot, end = end as i64, lsn = %format_lsn(end), "--once: reading the transactions committed before this position");
                Some(end)
            }
            RunMode::Continuous => None,
        };
        let mut source = PostgresSource {
            cfg: cfg.clone(),
            shard: shard.clone(),
            describe: Describe {
                sql,
                types: HashMap::new(),
                captured: streams
                    .iter()
                    .map(|s| (s.clone(), keys.get(s).cloned().unwrap_or_default()))
                    .collect(),
            },
            phase: Phase::Done(None),
            ready: Default::default(),
            keys,
            layouts: Vec::new(),
            chunk_rows,
            spill,
            end,
            bad: BadValues {
                values: Vec::new(),
                dead_letters,
            },
            last_lag: Instant::now(),
            incremental: incremental::Incremental::new(
                &cfg.dsn,
                shard.clone(),
                cfg.snapshot_chunk_rows,
                chunk_budget,
            ),
        };
        source.report_lag().await;
        let mut tables = Vec::with_capacity(infos.len());
        for info in infos {
            let layout = source.describe.table(&info).await?;
            source.layouts.push(layout.clone());
            tables.push((info, layout));
        }
        // Which streams are copied in chunks while streaming (those with a key), and
        // from where; the others (no key, or feeding an aggregate on a first start)
        // are copied in one piece before streaming starts.
        let first_start = cfg.snapshot && !streaming;
        let mut in_one_piece = Vec::new();
        let mut new_streams = Vec::new();
        for (info, layout) in tables {
            let entries: Vec<usize> = (0..resume.tables.len())
                .filter(|i| resume.streams.get(*i).is_some_and(|(s, _)| *s == info.stream))
                .collect();
            let fed_to_aggregate = entries.iter().any(|i| resume.streams[*i].1);
            if !cfg.snapshot {
                continue;
            }
            if info.key.is_empty() || (first_start && fed_to_aggregate) {
                if first_start {
                    in_one_piece.push((info, layout));
                } else if let Some(i) = entries
                    .iter()
                    .find(|i| !resume.streams[**i].1 && resume.tables[**i].get(&shard).is_none())
                {
                    return Err(SourceError::Setup(format!(
                        "a table of stream {} has nothing yet, but the pipeline streams already (table #{}): \
                         {} has no primary key, so its existing rows cannot be copied while changes stream \
                         (incremental snapshots read by key). Give it a primary key or replica identity \
                         index, or capture it in a pipeline of its own",
                        info.stream,
                        i + 1,
                        info.stream
                    )));
                }
                continue;
            }
            let mut parts = Vec::new();
            for i in entries.iter().filter(|i| !resume.streams[**i].1) {
                let state = resume
                    .cursors
                    .get(*i)
                    .and_then(|c| c.get(&incremental::snapshot_shard(&shard)));
                parts.push(
                    incremental::Part::of(&resume.tables[*i], &shard, state)
                        .map_err(|e| SourceError::Setup(format!("table of {}: {e}", info.stream)))?,
                );
            }
            let Some(start) = incremental::start(&parts) else {
                continue;
            };
            if parts.contains(&incremental::Part::New) && streaming {
                new_streams.push((layout.clone(), start.value));
            }
            source.incremental.add(info, layout, start)?;
        }
        let begun = cfg.snapshot.then(|| incremental::value(1, 0));
        source.phase = if first_start && !in_one_piece.is_empty() {
            let start = furthest.unwrap_or(1).max(1);
            // Rows of an interrupted attempt are void: the tables drop them first (and
            // every table exists, with progress, from here on).
            source
                .ready
                .extend(source.markers(start + 1, Control::Reset, begun));
            Phase::Snapshot(Box::new(
                Snapshot::begin(&cfg.dsn, in_one_piece, start + 1, shard).await?,
            ))
        } else {
            let start = match stream_start {
                Some(s) => s as u64,
                None => {
                    // A first start without a snapshot in one piece: every table starts
                    // at the slot's position, so none can be left behind by a crash
                    // (an interrupted one-piece snapshot of an earlier version is
                    // dropped first).
                    let at = slot_position
                        .ok_or_else(|| SourceError::Setup(format!("slot {} has no position", cfg.slot)))?;
                    let control = if furthest.is_some() {
                        Control::Reset
                    } else {
                        Control::Progress
                    };
                    source.ready.extend(source.markers(at as i64, control, begun));
                    at
                }
            };
            // A table added to a streaming pipeline: it notes that its snapshot has
            // begun before anything else (a table holding the slot's progress without
            // a cursor is one that needs no chunks).
            for (layout, value) in new_streams {
                source
                    .ready
                    .push_back(source.cursor_batch(&layout, start as i64, value));
            }
            Phase::Stream(Box::new(source.start_stream(start).await?))
        };
        Ok(source)
    }

    /// One marker per captured table (each carrying its layout), all at `next`; with
    /// `cursor`, each also moves the tables' snapshot cursor there.
    fn markers(&self, next: i64, control: Control, cursor: Option<i64>) -> Vec<SourceBatch> {
        if self.layouts.is_empty() {
            return vec![marker(&self.shard, next, control)];
        }
        self.layouts
            .iter()
            .map(|l| {
                let mut m = shaped_marker(&self.shard, l.stream.clone(), l.schema.clone(), next, control);
                m.cursor = cursor.map(|value| self.cursor(value));
                m
            })
            .collect()
    }

    fn cursor(&self, value: i64) -> Arc<crate::source::Cursor> {
        Arc::new(crate::source::Cursor {
            shard: Arc::from(incremental::snapshot_shard(&self.shard)),
            value,
            state: None,
            restated_since: None,
        })
    }

    /// No rows of `layout`'s stream, moving the cursor of the tables it feeds (those
    /// that take it) to `value`.
    fn cursor_batch(&self, layout: &Layout, next: i64, value: i64) -> SourceBatch {
        SourceBatch {
            stream: layout.stream.clone(),
            shard: self.shard.clone(),
            records: RecordBatch::new_empty(layout.schema.clone()),
            positions: Int64Array::from(Vec::<i64>::new()),
            next,
            end_of_input: false,
            rejected: None,
            control: None,
            spilled: None,
            cursor: Some(self.cursor(value)),
        }
    }

    async fn start_stream(&self, start: u64) -> Result<Stream, SourceError> {
        let conn = wire::Conn::connect(&self.cfg.dsn, true)
            .await
            .map_err(pg("opening the replication connection"))?;
        let (reader, writer) = conn
            .start_replication(&self.cfg.slot, start, &self.cfg.publication)
            .await
            .map_err(pg(format!("starting replication from slot {}", self.cfg.slot)))?;
        tracing::info!(slot = %self.cfg.slot, from = %format_lsn(start), "streaming changes");
        Ok(Stream::new(
            reader,
            writer,
            self.shard.clone(),
            start,
            self.cfg.status_interval,
            self.spill.clone(),
        ))
    }

    async fn report_lag(&mut self) {
        self.last_lag = Instant::now();
        let lag = tokio::time::timeout(
            LAG_TIMEOUT,
            catalog::slot_lag(&mut self.describe.sql, &self.cfg.slot),
        )
        .await;
        let Ok(lag) = lag else {
            // The connection is mid-query: its answer, if one comes, would be read as the
            // next query's. A new connection replaces it (the old one is dropped).
            tracing::warn!(slot = %self.cfg.slot, timeout = ?LAG_TIMEOUT, "the slot's lag query got no answer: opening its connection again");
            match wire::Conn::connect(&self.cfg.dsn, false).await {
                Ok(conn) => self.describe.sql = conn,
                Err(e) => tracing::warn!(error = %e, "could not reopen the catalog connection"),
            }
            return;
        };
        match lag {
            Ok(Some((behind, retained))) => {
                tracing::debug!(slot = %self.cfg.slot, behind_bytes = behind, retained_wal_bytes = retained, "slot lag");
                let slot = self.cfg.slot.clone();
                metrics::gauge!(crate::telemetry::SLOT_LAG, "slot" => slot.clone()).set(behind as f64);
                metrics::gauge!(crate::telemetry::SLOT_RETAINED, "slot" => slot).set(retained as f64);
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "could not read the slot's lag"),
        }
    }
}

#[async_trait]
impl Source for PostgresSource {
    fn shards(&self) -> Vec<String> {
        vec![self.shard.to_string()]
    }

    fn schema(&self) -> Option<SchemaRef> {
        None
    }

    fn key(&self, stream: &str) -> Option<Vec<String>> {
        self.keys.get(stream).filter(|k| !k.is_empty()).cloned()
    }

    async fn poll(&mut self) -> Result<Polled, SourceError> {
        loop {
            match &mut self.phase {
                Phase::Done(_) => {
                    return Ok(match self.ready.pop_front() {
                        Some(b) => Polled::Batch(b),
                        None => Polled::End,
                    });
                }
                Phase::Snapshot(_) if !self.ready.is_empty() => {
                    return Ok(self.ready.pop_front().map_or(Polled::Idle, Polled::Batch));
                }
                Phase::Snapshot(s) => {
                    if let Some(b) = s.next(self.chunk_rows, &mut self.bad).await? {
                        let mut b = b;
                        b.rejected = self.bad.take(&self.shard)?;
                        return Ok(Polled::Batch(b));
                    }
                    let Phase::Snapshot(s) = std::mem::replace(&mut self.phase, Phase::Done(None)) else {
                        continue;
                    };
                    let point = s.consistent_point;
                    s.finish().await;
                    tracing::info!(consistent_point = %format_lsn(point), "snapshot complete");
                    let stream = self.start_stream(point).await?;
                    self.phase = Phase::Stream(Box::new(stream));
                    // Every table moves to the consistent point, in a micro-batch of its own.
                    self.ready
                        .extend(self.markers(point as i64, Control::Progress, None));
                    continue;
                }
                Phase::Stream(_) => return self.step_stream().await,
            }
        }
    }

    async fn acknowledge(&mut self, committed: &Progress) -> Result<(), SourceError> {
        let stream = match &self.phase {
            Phase::Stream(s) | Phase::Done(Some(s)) => Some(s),
            _ => None,
        };
        if let Some(p) = committed.get(&self.shard) {
            self.incremental.acknowledged(p);
        }
        if let (Some(s), Some(p)) = (stream, committed.get(&self.shard))
            && p >= SNAPSHOT_SPACE
        {
            let before = s.feedback.flushed.fetch_max(p as u64, Ordering::AcqRel);
            if (p as u64) > before {
                s.feedback.wake.notify_one();
            }
        }
        if self.last_lag.elapsed() >= LAG_EVERY {
            self.report_lag().await;
        }
        Ok(())
    }

    async fn close(&mut self) {
        if let Phase::Stream(s) | Phase::Done(Some(s)) = &mut self.phase {
            s.close().await;
        }
        self.incremental.close().await;
        self.report_lag().await;
    }
}

impl PostgresSource {
    async fn step_stream(&mut self) -> Result<Polled, SourceError> {
        if let Some(b) = self.ready.pop_front() {
            return Ok(Polled::Batch(b));
        }
        let Phase::Stream(stream) = &mut self.phase else {
            return Ok(Polled::Idle);
        };
        if self.incremental.wants_chunk() {
            // Read with the table's columns as they are now (an ALTER TABLE since).
            if let Some(current) = self.incremental.current().map(str::to_string) {
                let fresh =
                    catalog::tables(&mut self.describe.sql, &self.cfg.publication, &[current]).await?;
                if let Some(info) = fresh.into_iter().next()
                    && self.incremental.altered(&info)
                {
                    let layout = self.describe.table(&info).await?;
                    self.incremental.relayout(info, layout)?;
                }
            }
            self.incremental.read_chunk().await?;
            stream.watch = self.incremental.invisible().cloned().unwrap_or_default();
            stream.watched.clear();
        }
        if self.incremental.needs_catch_up() && stream.emitted > 0 {
            // Tables of other streams move up to what was handed over, so that the
            // chunks' acknowledgement is not held back by them.
            self.ready
                .push_back(marker(&self.shard, stream.emitted, Control::Progress));
            return Ok(self.ready.pop_front().map_or(Polled::Idle, Polled::Batch));
        }
        let max_bytes = self.chunk_rows.saturating_mul(1024).max(1 << 20);
        // A --once run ends after the snapshots, wherever the stream then stands.
        let end = if self.incremental.busy() { None } else { self.end };
        let step = stream
            .step(self.chunk_rows, max_bytes, end, &mut self.bad, &mut self.describe)
            .await?;
        self.incremental.noted(stream.watched.drain(..));
        match step {
            Step::Idle => return Ok(Polled::Idle),
            Step::Batches(b) => {
                self.incremental.observe(&b)?;
                self.ready.extend(b);
            }
            Step::Watermark {
                batches,
                content,
                at,
                next,
            } => {
                self.incremental.observe(&batches)?;
                self.ready.extend(batches);
                if let Some(chunk) = self.incremental.watermark(&content, at, next, &mut self.bad)? {
                    stream.watch.clear();
                    self.ready.push_back(chunk);
                }
            }
            Step::End(b) => {
                tracing::info!(end = %format_lsn(self.end.unwrap_or_default()), "reached the position noted at start");
                self.ready.extend(b);
                if let Phase::Stream(s) = std::mem::replace(&mut self.phase, Phase::Done(None)) {
                    self.phase = Phase::Done(Some(s));
                }
            }
        }
        Ok(match self.ready.pop_front() {
            Some(b) => Polled::Batch(b),
            None if matches!(self.phase, Phase::Done(_)) => Polled::End,
            None => Polled::Idle,
        })
    }
}
