//! Incremental snapshots (the watermark algorithm of DBLog, as Debezium and Flink CDC
//! use it): a table is copied in primary-key chunks with plain queries while the slot
//! keeps streaming, so a snapshot survives the process and a table added to a running
//! pipeline gets its existing rows.
//!
//! # One chunk
//!
//! 1. A *low watermark* is written through the replication stream (a transactional
//!    `pg_logical_emit_message`, prefix [`PREFIX`]).
//! 2. In a REPEATABLE READ transaction: the snapshot's in-progress transactions
//!    (`pg_current_snapshot()`), then the next `chunk_rows` rows by key after the
//!    cursor (`COPY (SELECT … WHERE (k) > (cursor) ORDER BY k LIMIT n)`). A chunk
//!    waits in memory for its high watermark, so it holds at most what an open
//!    transaction may (`spill_after`): `n` shrinks to fit the rows' width, and a chunk
//!    that still outgrows it ends at the row that reaches it (the rest of the answer
//!    is dropped; the next chunk starts there).
//! 3. A *high watermark* is written.
//!
//! The stream goes on meanwhile. Every key changed by a transaction between the two
//! watermarks, or by one the read could not see (in its snapshot's in-progress list,
//! whatever its place in the stream), is dropped from the chunk: the stream's version
//! of those rows wins. What is left is exactly the rows as they stand at the high
//! watermark, so the chunk is handed over there, as `r` rows at the high watermark's
//! position, between the transactions before it and those after it.
//!
//! Why the in-progress list: Postgres writes a commit record before the transaction
//! becomes visible, so one committed just before the low watermark can still be
//! invisible to the read right after it, and it is not between the watermarks. Its
//! id is in the read's in-progress list; its changes met in the stream after the read
//! count as changed. One the stream had already delivered before the chunk began is
//! taken as visible (it was decoded, so its commit was written well before), as in
//! DBLog itself.
//!
//! # Progress and crashes
//!
//! A chunk batch carries a [`Cursor`] on the slot's snapshot shard
//! ([`snapshot_shard`]): value `generation << 32 | chunk` (chunk [`DONE`] once the
//! table is copied), state the last key copied. Each table commits it with the
//! chunk's rows, in the same Delta version, so a restart resumes at the next chunk.
//! Watermarks of an earlier process found again in the WAL are ignored (their ids are
//! not this process's); the chunk they bracket is read again, later, from the tables'
//! cursor. Tables fed by one stream may stand at different chunks after a crash (they
//! commit side by side): the source resumes from the least one, and reads the range
//! up to each further table's cursor as that table's chunk, exactly (bounded, no
//! limit), so the table ahead skips it and the others take it.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use deltalake::arrow::array::{Array, BooleanArray, Int64Array, RecordBatch};
use deltalake::arrow::compute::filter_record_batch;
use deltalake::arrow::row::{RowConverter, SortField};
use indicatif::{ProgressBar, ProgressStyle};

use super::catalog::{ESTIMATE_TIMEOUT, TableInfo, quote_table, size};
use super::changes::{BadValue, Layout, TableBuffer};
use super::types::copy_fields;
use super::wire::{Conn, quote_ident, quote_literal};
use super::{BadValues, pg};
use crate::config::PostgresDsn;
use crate::sink::change::POSITION;
use crate::source::{Cursor, SourceBatch, SourceError};

mod cursor;
use cursor::Start;
pub use cursor::{
    DONE, Part, Progress, chunk, describe, generation, snapshot_shard, start, take_again, value,
};

/// The prefix of watermark messages.
pub const PREFIX: &str = "tributary.snapshot";
/// Chunks handed over and not yet committed by every table, before the next is read:
/// reading overlaps the commits, and a crash reads again at most this many chunks
/// (and the one waiting for its high watermark).
const MAX_UNCOMMITTED: usize = 2;

struct Job {
    info: TableInfo,
    layout: Arc<Layout>,
    /// The key columns' indices in the layout's schema and table columns.
    key_fields: Vec<usize>,
    key_columns: Vec<usize>,
    value: i64,
    progress: Progress,
    further: VecDeque<(i64, Progress)>,
    bar: Option<ProgressBar>,
    /// Bytes per row: estimated, then as the last chunk read them.
    row_bytes: Option<usize>,
}

/// A chunk read and waiting for its high watermark.
struct Pending {
    id: String,
    records: Option<RecordBatch>,
    /// The cursor the chunk moves its table to.
    value: i64,
    progress: Progress,
    /// Transactions the read could not see.
    invisible: HashSet<u32>,
    /// Positions of those transactions met in the stream so far.
    invisible_at: HashSet<i64>,
    low_seen: bool,
    /// Keys changed since (row format of the key columns).
    changed: HashSet<Box<[u8]>>,
    /// Values of the chunk that could not be converted.
    bad: Vec<BadValue>,
}

/// The tables to snapshot, one after the other, a chunk at a time.
pub(super) struct Incremental {
    dsn: PostgresDsn,
    shard: Arc<str>,
    cursor_shard: Arc<str>,
    chunk_rows: usize,
    /// Bytes a chunk may hold (rows are read in fewer than `chunk_rows` when wide).
    budget: usize,
    conn: Option<Conn>,
    jobs: VecDeque<Job>,
    pending: Option<Pending>,
    /// Where a consumer holding each chunk handed over resumes, until acknowledged.
    unacknowledged: VecDeque<i64>,
    /// A progress marker was handed over for the current wait (see `needs_catch_up`).
    caught_up: bool,
    /// Ids of this process's watermarks: `{tag}-{seq}`.
    tag: String,
    seq: u64,
    converter: Option<RowConverter>,
}

impl std::fmt::Debug for Incremental {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incremental")
            .field("tables", &self.jobs.len())
            .finish()
    }
}

impl Incremental {
    pub fn new(dsn: &PostgresDsn, shard: Arc<str>, chunk_rows: usize, budget: usize) -> Incremental {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Incremental {
            dsn: dsn.clone(),
            cursor_shard: Arc::from(snapshot_shard(&shard)),
            shard,
            chunk_rows: chunk_rows.max(1),
            budget: budget.max(1),
            conn: None,
            jobs: VecDeque::new(),
            pending: None,
            unacknowledged: VecDeque::new(),
            caught_up: false,
            tag: format!("{}-{nanos:x}", std::process::id()),
            seq: 0,
            converter: None,
        }
    }

    /// Queues `info`'s table, from `start`.
    pub fn add(&mut self, info: TableInfo, layout: Arc<Layout>, start: Start) -> Result<(), SourceError> {
        let (key_fields, key_columns) = key_indices(&info, &layout)?;
        tracing::info!(
            table = %info.stream,
            chunk = chunk(start.value),
            rows = start.progress.rows,
            "incremental snapshot queued"
        );
        self.jobs.push_back(Job {
            info,
            layout,
            key_fields,
            key_columns,
            value: start.value,
            progress: start.progress,
            further: start.further.into(),
            bar: None,
            row_bytes: None,
        });
        Ok(())
    }

    /// The stream of the table being copied.
    pub fn current(&self) -> Option<&str> {
        self.jobs.front().map(|j| j.info.stream.as_str())
    }

    /// Whether the table being copied has other columns now than `info` says (an
    /// `ALTER TABLE` since it was queued).
    pub fn altered(&self, info: &TableInfo) -> bool {
        self.jobs.front().is_some_and(|j| {
            j.info.stream == info.stream && (j.info.columns != info.columns || j.info.key != info.key)
        })
    }

    /// The next chunks of the table being copied are read with `info`'s columns, in
    /// `layout`. A chunk read before and still waiting is dropped: it is read again.
    pub fn relayout(&mut self, info: TableInfo, layout: Arc<Layout>) -> Result<(), SourceError> {
        let Some(job) = self.jobs.front_mut() else {
            return Ok(());
        };
        let (key_fields, key_columns) = key_indices(&info, &layout)?;
        if info.key != job.info.key {
            return Err(SourceError::Setup(format!(
                "{}: its key changed while it was being copied ({:?} -> {:?}): start the copy again \
                 (tributary snapshot --table)",
                info.stream, job.info.key, info.key
            )));
        }
        tracing::info!(table = %info.stream, columns = ?layout.names, "table altered: its next chunks are read with its new columns");
        job.info = info;
        job.layout = layout;
        job.key_fields = key_fields;
        job.key_columns = key_columns;
        self.converter = None;
        self.pending = None;
        Ok(())
    }

    /// Whether tables are still to be copied.
    pub fn busy(&self) -> bool {
        !self.jobs.is_empty()
    }

    /// Whether a chunk should be read now (none is waiting for its high watermark).
    pub fn wants_chunk(&self) -> bool {
        self.pending.is_none() && !self.jobs.is_empty() && self.unacknowledged.len() < MAX_UNCOMMITTED
    }

    /// Every table committed up to `committed` (the slot's progress): the chunks
    /// handed over below it are durable.
    pub fn acknowledged(&mut self, committed: i64) {
        while self.unacknowledged.front().is_some_and(|n| *n <= committed) {
            self.unacknowledged.pop_front();
            self.caught_up = false;
        }
    }

    /// Whether the next chunk waits for acknowledgements that tables fed by other
    /// streams hold back (they commit only when something reaches them): once per
    /// wait, the caller then hands over a progress marker that moves them up.
    pub fn needs_catch_up(&mut self) -> bool {
        let blocked = self.pending.is_none() && !self.jobs.is_empty() && !self.wants_chunk();
        let first = blocked && !self.caught_up;
        self.caught_up |= blocked;
        first
    }

    /// Transactions whose changes must be watched for before the low watermark.
    pub fn invisible(&self) -> Option<&HashSet<u32>> {
        self.pending.as_ref().map(|p| &p.invisible)
    }

    async fn conn(&mut self) -> Result<&mut Conn, SourceError> {
        if self.conn.is_none() {
            let c = Conn::connect(&self.dsn, false)
                .await
                .map_err(pg("opening the snapshot connection"))?;
            self.conn = Some(c);
        }
        Ok(self.conn.as_mut().expect("just set"))
    }

    /// A table's estimated rows and bytes per row (from the planner's statistics),
    /// for the progress bar and the first chunk's size; `None` when the estimate does
    /// not come in time (its connection is then opened again: a late answer must not
    /// be read as the next query's).
    async fn stats(&mut self, oid: u32) -> Result<Option<(u64, Option<usize>)>, SourceError> {
        let conn = self.conn().await?;
        let Ok(answer) = tokio::time::timeout(ESTIMATE_TIMEOUT, size(conn, oid)).await else {
            tracing::warn!(timeout = ?ESTIMATE_TIMEOUT, "a table's row estimate got no answer: opening the snapshot connection again");
            self.conn = None;
            return Ok(None);
        };
        let (rows, pages) = answer?;
        let width = (pages * 8192)
            .checked_div(rows)
            .map(|w| w as usize)
            .filter(|w| *w > 0);
        Ok(Some((rows, width)))
    }

    async fn emit(&mut self, kind: &str, id: &str) -> Result<(), SourceError> {
        let sql = format!(
            "SELECT pg_logical_emit_message(true, {}, {})",
            quote_literal(PREFIX),
            quote_literal(&format!("{kind} {id}"))
        );
        self.conn()
            .await?
            .query(&sql)
            .await
            .map_err(pg(format!("writing a snapshot {kind} watermark")))?;
        Ok(())
    }

    /// Reads the next chunk of the first table, between two watermarks.
    pub async fn read_chunk(&mut self) -> Result<(), SourceError> {
        let Some(job) = self.jobs.front() else {
            return Ok(());
        };
        self.seq += 1;
        let id = format!("{}-{}", self.tag, self.seq);
        let (stream, oid) = (job.info.stream.clone(), job.info.oid);
        let first = job.bar.is_none();
        let stats = if first { self.stats(oid).await? } else { None };
        let job = self.jobs.front_mut().expect("checked above");
        if let Some((rows, width)) = stats {
            job.progress.estimate = rows;
            job.row_bytes = job.row_bytes.or(width);
        }
        // Rows per chunk: as configured, fewer when rows are wide (a chunk is held in
        // memory until its high watermark arrives).
        let limit = job.row_bytes.map_or(self.chunk_rows, |w| {
            (self.budget / w.max(1)).clamp(1, self.chunk_rows)
        });
        let (sql, target) = chunk_query(job, limit);
        let layout = job.layout.clone();
        let key_columns = job.key_columns.clone();
        let budget = self.budget;
        self.emit("low", &id).await?;
        let conn = self.conn().await?;
        conn.query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(pg(format!("reading a chunk of {stream}")))?;
        let snap = conn
            .query("SELECT pg_current_snapshot()::text")
            .await
            .map_err(pg(format!("reading a chunk of {stream}")))?;
        let invisible = snap
            .first()
            .and_then(|r| r.first().cloned().flatten())
            .map(|s| in_progress(&s))
            .unwrap_or_default();
        conn.copy_out(&sql)
            .await
            .map_err(pg(format!("reading a chunk of {stream}")))?;
        let mut buffer = TableBuffer::new(layout);
        let mut bad = Vec::new();
        let mut last: Option<Bytes> = None;
        // Rows wider than estimated: the chunk ends where it reaches the budget (the
        // rest of the answer is read and dropped; the next chunk starts there).
        let mut cut = false;
        while let Some(line) = conn
            .copy_row()
            .await
            .map_err(pg(format!("reading a chunk of {stream}")))?
        {
            if cut {
                continue;
            }
            buffer
                .push_copy_line(0, &line, &mut bad)
                .map_err(|e| SourceError::Setup(format!("snapshot of {stream}: {e}")))?;
            last = Some(line);
            cut = target.is_none() && buffer.bytes >= budget;
        }
        conn.query("COMMIT")
            .await
            .map_err(pg(format!("reading a chunk of {stream}")))?;
        if let Some(pause) = failpoint_pause() {
            tracing::info!(table = %stream, ?pause, "snapshot chunk read; failpoint holds its high watermark back");
            tokio::time::sleep(pause).await;
        }
        self.emit("high", &id).await?;

        let rows = buffer.len();
        let bytes = buffer.bytes;
        let records = buffer.take().map_err(SourceError::Setup)?.map(|(r, _)| r);
        let job = self.jobs.front_mut().expect("checked above");
        if let Some(width) = bytes.checked_div(rows) {
            job.row_bytes = Some(width);
        }
        if first {
            let bar = ProgressBar::new(job.progress.estimate.max(job.progress.rows));
            bar.set_style(
                ProgressStyle::with_template("{msg} {bar:30} {pos}/~{len} rows {per_sec} {elapsed}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_message(format!("snapshot {stream}"));
            bar.set_position(job.progress.rows);
            job.bar = Some(bar);
        }
        let mut progress = job.progress.clone();
        progress.rows += rows as u64;
        let value = match target {
            Some((v, further)) => {
                progress.key = further.key;
                v
            }
            None if rows < limit && !cut => value(generation(job.value), DONE),
            None => {
                if let Some(line) = &last {
                    progress.key = Some(key_of(line, &key_columns)?);
                }
                if chunk(job.value) + 1 >= DONE {
                    return Err(SourceError::Setup(format!(
                        "{stream}: more snapshot chunks than a cursor counts; raise snapshot_chunk_rows"
                    )));
                }
                job.value + 1
            }
        };
        tracing::debug!(table = %stream, id, rows, chunk = chunk(value), "snapshot chunk read");
        self.pending = Some(Pending {
            id,
            records,
            value,
            progress,
            invisible,
            invisible_at: HashSet::new(),
            low_seen: false,
            changed: HashSet::new(),
            bad,
        });
        Ok(())
    }

    /// Notes the positions of transactions the read could not see, as the stream
    /// meets them.
    pub fn noted(&mut self, positions: impl IntoIterator<Item = i64>) {
        if let Some(p) = self.pending.as_mut() {
            p.invisible_at.extend(positions);
        }
    }

    /// Notes the keys `batches` change while a chunk waits, before they are handed on.
    pub fn observe(&mut self, batches: &[SourceBatch]) -> Result<(), SourceError> {
        let Some(job) = self.jobs.front() else {
            return Ok(());
        };
        let Some(p) = self.pending.as_mut() else {
            return Ok(());
        };
        if !p.low_seen && p.invisible_at.is_empty() {
            return Ok(());
        }
        for b in batches.iter().filter(|b| *b.stream == *job.info.stream) {
            if let Some(spilled) = &b.spilled {
                for i in 0..spilled.parts() {
                    let (records, positions) = spilled.read(i).map_err(|source| SourceError::Io {
                        context: format!("reading spilled rows of {}", b.stream),
                        source,
                    })?;
                    note_keys(&mut self.converter, job, p, &records, &positions)?;
                }
            } else {
                note_keys(&mut self.converter, job, p, &b.records, &b.positions)?;
            }
        }
        Ok(())
    }

    /// A watermark of this slot's stream: `content` is the message, `at` its
    /// transaction's position, `next` where a consumer holding it resumes. At this
    /// process's high watermark, the chunk (what is left of it) is handed over.
    pub fn watermark(
        &mut self,
        content: &str,
        at: i64,
        next: i64,
        bad: &mut BadValues,
    ) -> Result<Option<SourceBatch>, SourceError> {
        let Some((kind, id)) = content.split_once(' ') else {
            return Ok(None);
        };
        let Some(p) = self.pending.as_mut().filter(|p| p.id == id) else {
            return Ok(None);
        };
        match kind {
            "low" => {
                p.low_seen = true;
                return Ok(None);
            }
            "high" if p.low_seen => {}
            _ => return Ok(None),
        }
        let p = self.pending.take().expect("matched above");
        let Some(job) = self.jobs.front_mut() else {
            return Ok(None);
        };
        let mut records = match p.records {
            Some(r) => r,
            None => RecordBatch::new_empty(job.layout.schema.clone()),
        };
        let before = records.num_rows();
        if !p.changed.is_empty() && before > 0 {
            let converter = converter(&mut self.converter, job)?;
            let keys = key_rows(converter, job, &records)?;
            let keep: BooleanArray = (0..keys.num_rows())
                .map(|i| Some(!p.changed.contains(keys.row(i).as_ref())))
                .collect();
            records = filter_record_batch(&records, &keep).map_err(arrow_error(job))?;
        }
        let n = records.num_rows();
        let positions = Int64Array::from(vec![at; n]);
        if let Ok(i) = records.schema().index_of(POSITION) {
            let mut columns = records.columns().to_vec();
            columns[i] = Arc::new(positions.clone());
            records = RecordBatch::try_new(records.schema(), columns).map_err(arrow_error(job))?;
        }
        // The chunk's unconvertible values travel with it (all of them: a value the
        // stream replaced is still one Postgres held).
        bad.values.extend(p.bad.into_iter().map(|mut b| {
            b.position = at;
            b
        }));
        let rejected = bad.take(&self.shard)?;
        let state = serde_json::to_vec(&p.progress)
            .map_err(|e| SourceError::Setup(format!("snapshot progress: {e}")))?;
        let batch = SourceBatch {
            stream: Arc::from(job.info.stream.as_str()),
            shard: self.shard.clone(),
            records,
            positions,
            next,
            end_of_input: false,
            rejected,
            control: None,
            spilled: None,
            cursor: Some(Arc::new(Cursor {
                shard: self.cursor_shard.clone(),
                value: p.value,
                state: Some(Bytes::from(state)),
                restated_since: p.progress.since.filter(|_| chunk(p.value) == DONE),
            })),
        };
        tracing::info!(
            table = %job.info.stream,
            read = before,
            kept = n,
            chunk = chunk(p.value),
            copied = p.progress.rows,
            estimate = p.progress.estimate,
            "snapshot chunk handed over"
        );
        self.unacknowledged.push_back(next);
        job.value = p.value;
        job.progress = p.progress;
        if job.further.front().is_some_and(|(v, _)| *v == p.value) {
            job.further.pop_front();
        }
        if let Some(bar) = &job.bar {
            bar.set_position(job.progress.rows);
        }
        if chunk(job.value) == DONE {
            if let Some(bar) = job.bar.take() {
                bar.finish_and_clear();
            }
            tracing::info!(table = %job.info.stream, rows = job.progress.rows, "snapshot copied");
            self.jobs.pop_front();
            self.converter = None;
        }
        Ok(Some(batch))
    }

    pub async fn close(&mut self) {
        if let Some(c) = self.conn.take() {
            c.close().await;
        }
    }
}

/// The key columns' indices in `layout`'s schema and in `info`'s columns.
fn key_indices(info: &TableInfo, layout: &Layout) -> Result<(Vec<usize>, Vec<usize>), SourceError> {
    let mut key_fields = Vec::new();
    let mut key_columns = Vec::new();
    for k in &info.key {
        let column = info.columns.iter().position(|(n, _, _)| n == k);
        let field = layout.schema.index_of(k).ok();
        match (column, field) {
            (Some(c), Some(f)) => {
                key_columns.push(c);
                key_fields.push(f);
            }
            _ => {
                return Err(SourceError::Setup(format!(
                    "{}: key column {k} is not published: the table cannot be snapshotted in chunks",
                    info.stream
                )));
            }
        }
    }
    Ok((key_fields, key_columns))
}

/// `TRIBUTARY_FAILPOINT=chunk_read:MS` holds every chunk MS milliseconds between its
/// read and its high watermark, so that tests can change rows inside the window.
fn failpoint_pause() -> Option<Duration> {
    let v = std::env::var(crate::sink::FAILPOINT_ENV).ok()?;
    v.strip_prefix("chunk_read:")?
        .parse()
        .ok()
        .map(Duration::from_millis)
}

/// The query for `job`'s next chunk; whether it is bounded, and the cursor it then
/// reaches.
fn chunk_query(job: &Job, limit: usize) -> (String, Option<(i64, Progress)>) {
    let columns: Vec<String> = job.info.columns.iter().map(|(n, _, _)| quote_ident(n)).collect();
    let key: Vec<String> = job.info.key.iter().map(|k| quote_ident(k)).collect();
    let key = format!("({})", key.join(", "));
    let mut filters = Vec::new();
    if let Some(f) = &job.info.row_filter {
        filters.push(format!("({f})"));
    }
    if let Some(after) = &job.progress.key {
        filters.push(format!("{key} > {}", literal_row(after)));
    }
    let target = job.further.front().cloned();
    if let Some((_, upper)) = &target
        && let Some(upto) = &upper.key
    {
        filters.push(format!("{key} <= {}", literal_row(upto)));
    }
    let only = if job.info.partitioned { "" } else { "ONLY " };
    let filter = if filters.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", filters.join(" AND "))
    };
    let limit = if target.is_some() {
        String::new()
    } else {
        format!(" LIMIT {limit}")
    };
    (
        format!(
            "COPY (SELECT {} FROM {only}{}{filter} ORDER BY {key}{limit}) TO STDOUT",
            columns.join(", "),
            quote_table(&job.info.stream)
        ),
        target,
    )
}

fn literal_row(values: &[Option<String>]) -> String {
    let v: Vec<String> = values
        .iter()
        .map(|v| v.as_deref().map_or_else(|| "NULL".to_string(), quote_literal))
        .collect();
    format!("({})", v.join(", "))
}

/// The key columns' text of one COPY line.
fn key_of(line: &[u8], key_columns: &[usize]) -> Result<Vec<Option<String>>, SourceError> {
    let mut out = vec![None; key_columns.len()];
    let mut scratch = Vec::new();
    copy_fields(line, &mut scratch, |i, v| {
        if let Some(k) = key_columns.iter().position(|c| *c == i) {
            out[k] = v.map(|v| String::from_utf8_lossy(v).into_owned());
        }
        Ok(())
    })
    .map_err(|e| SourceError::Setup(format!("reading a snapshot key: {e}")))?;
    Ok(out)
}

/// The in-progress transactions of a `pg_current_snapshot()` text (`xmin:xmax:xip,…`),
/// as the 32-bit ids the stream's transactions carry.
fn in_progress(snapshot: &str) -> HashSet<u32> {
    snapshot
        .rsplit(':')
        .next()
        .unwrap_or("")
        .split(',')
        .filter_map(|x| x.trim().parse::<u64>().ok())
        .map(|x| x as u32)
        .collect()
}

fn arrow_error(job: &Job) -> impl FnOnce(deltalake::arrow::error::ArrowError) -> SourceError + '_ {
    move |e| SourceError::Setup(format!("snapshot of {}: {e}", job.info.stream))
}

fn converter<'a>(slot: &'a mut Option<RowConverter>, job: &Job) -> Result<&'a RowConverter, SourceError> {
    if slot.is_none() {
        let fields = job
            .key_fields
            .iter()
            .map(|i| SortField::new(job.layout.schema.field(*i).data_type().clone()))
            .collect();
        *slot = Some(RowConverter::new(fields).map_err(arrow_error(job))?);
    }
    Ok(slot.as_ref().expect("just set"))
}

fn key_rows(
    converter: &RowConverter,
    job: &Job,
    records: &RecordBatch,
) -> Result<deltalake::arrow::row::Rows, SourceError> {
    let mut columns = Vec::with_capacity(job.key_fields.len());
    for name in &job.info.key {
        let i = records.schema().index_of(name).map_err(arrow_error(job))?;
        columns.push(records.column(i).clone());
    }
    converter.convert_columns(&columns).map_err(arrow_error(job))
}

/// Adds the keys of `records` changed inside the chunk's window to `p.changed`.
fn note_keys(
    converter_slot: &mut Option<RowConverter>,
    job: &Job,
    p: &mut Pending,
    records: &RecordBatch,
    positions: &Int64Array,
) -> Result<(), SourceError> {
    if records.num_rows() == 0 {
        return Ok(());
    }
    let converter = converter(converter_slot, job)?;
    let keys = key_rows(converter, job, records)?;
    for i in 0..records.num_rows() {
        if p.low_seen || (!positions.is_null(i) && p.invisible_at.contains(&positions.value(i))) {
            p.changed.insert(keys.row(i).as_ref().into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
