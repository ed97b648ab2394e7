//! The targets a micro-batch is committed to: `[[tables]]` entries, aggregates and the
//! dead-letter table. Each owns one [`DeltaSink`] and commits only what that table does
//! not hold yet, so a replayed micro-batch is skipped table by table.

use std::collections::BTreeMap;
use std::sync::Arc;

use deltalake::arrow::array::{AsArray, BooleanArray, Int64Array, RecordBatch};
use deltalake::arrow::compute::filter_record_batch;
use deltalake::arrow::datatypes::{Int64Type, SchemaRef};

use super::{RetryPolicy, RunError, TableSummary};
use crate::config::{OnIncompatible, TableConfig, TableMode};
use crate::progress::Progress;
use crate::sink::dead_letter::{DeadLetters, ErrorKind};
use crate::sink::{Commit, Committed, DeltaSink, Parts, Sink, SinkError, change};
use crate::source::spill::Spilled;
use crate::source::{Control, Source, SourceBatch};
use crate::telemetry;

pub(super) struct TableTarget {
    pub cfg: TableConfig,
    pub sink: DeltaSink,
    pub summary: TableSummary,
    /// A mirror's: background compaction rounds and this table's commits take turns.
    pub gate: Option<std::sync::Arc<crate::sink::compact::Gate>>,
    /// Compaction rounds seen (the gate's epoch when the sink last read the table).
    pub gate_epoch: u64,
}

/// What a table will commit for one micro-batch.
pub(super) struct Prepared {
    progress: Vec<(String, i64)>,
    batches: Vec<RecordBatch>,
    /// Rows of a spilled transaction, read part by part at commit.
    parts: Option<Arc<dyn Parts>>,
    rows: usize,
    /// Drop the table's rows first (a snapshot taken again).
    replace: bool,
    /// Per cursor shard, the furthest cursor taken and its state (see
    /// [`crate::source::Cursor`]): the state is stored beside the table before the
    /// commit that names it.
    cursors: Cursors,
    /// A mirror whose source completed a restatement begun at this position (see
    /// [`super::restate`]): the shape and shard of the records, and their stream.
    restate: Option<(i64, SchemaRef, Arc<str>)>,
    /// `batches` being written as files ahead of the commit, in parts (see
    /// [`super::flight`]).
    pub staging: Vec<super::flight::Staging>,
}

impl Prepared {
    /// Rows it commits (spilled ones included).
    pub(super) fn rows(&self) -> usize {
        self.rows
    }
}

pub(super) struct DeadLetterTarget {
    pub sink: DeltaSink,
    pub summary: TableSummary,
}

pub(super) fn summary(name: &str) -> TableSummary {
    TableSummary {
        name: name.to_string(),
        rows_written: 0,
        commits: 0,
        skipped_commits: 0,
        skipped_records: 0,
        version: None,
        stats: None,
        watermark: None,
        snapshot: None,
    }
}

/// Commits `commit` to `sink`, retrying transient failures per the one policy.
pub(super) async fn commit_with_retry(
    sink: &mut DeltaSink,
    commit: Commit,
    retry: &RetryPolicy,
) -> Result<Committed, SinkError> {
    let mut attempt = 1;
    let mut conflicts = 0;
    let started = std::time::Instant::now();
    loop {
        match sink.commit(commit.clone()).await {
            Ok(c) => {
                metrics::histogram!(telemetry::COMMIT_SECONDS, "table" => sink.name().to_string())
                    .record(started.elapsed().as_secs_f64());
                return Ok(c);
            }
            // Several processes writing one table (a consumer group): a commit that
            // rewrites files (MERGE) is never rebased, so every commit of another
            // process in between refuses it.
            Err(e)
                if e.is_conflict()
                    && let Some(pause) = RetryPolicy::after_conflict(conflicts) =>
            {
                conflicts += 1;
                tracing::debug!(
                    table = sink.name(),
                    conflicts,
                    "another writer committed first; committing again"
                );
                tokio::time::sleep(pause).await;
            }
            Err(e) => match retry.retry_after(&e, attempt) {
                Some(backoff) => {
                    tracing::warn!(table = sink.name(), error = %e, attempt, ?backoff, "commit failed; retrying");
                    tokio::time::sleep(backoff).await;
                    attempt += 1;
                }
                None => return Err(e),
            },
        }
    }
}

/// `batches` cut into `parts` runs of about as many rows each (slices, no copy), in
/// order; fewer when there are fewer rows than parts.
fn split_rows(batches: &[RecordBatch], parts: usize) -> Vec<Vec<RecordBatch>> {
    let total: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let per = total.div_ceil(parts).max(1);
    let mut out: Vec<Vec<RecordBatch>> = vec![Vec::new()];
    let mut room = per;
    for b in batches {
        let mut at = 0;
        while at < b.num_rows() {
            if room == 0 {
                out.push(Vec::new());
                room = per;
            }
            let n = room.min(b.num_rows() - at);
            out.last_mut().expect("one run at least").push(b.slice(at, n));
            at += n;
            room -= n;
        }
    }
    out
}

/// A spilled transaction's rows as a table of `mode` writes them, part by part.
#[derive(Debug)]
struct SpilledRows {
    spilled: Arc<Spilled>,
    shard: Arc<str>,
    mode: TableMode,
    /// What the table holds of the shard already: rows before it are skipped.
    from: Option<i64>,
}

impl SpilledRows {
    fn shape(&self, records: &RecordBatch, positions: &Int64Array) -> RecordBatch {
        match self.mode {
            TableMode::Append => records.clone(),
            TableMode::Changelog | TableMode::Mirror => {
                change::with_change_columns(records, positions, &self.shard)
            }
        }
    }
}

impl Parts for SpilledRows {
    fn schema(&self) -> SchemaRef {
        let empty = RecordBatch::new_empty(self.spilled.schema().clone());
        self.shape(&empty, &Int64Array::from(Vec::<i64>::new())).schema()
    }

    fn count(&self) -> usize {
        self.spilled.parts()
    }

    fn read(&self, i: usize) -> std::io::Result<Option<RecordBatch>> {
        let (records, positions) = self.spilled.read(i)?;
        let skip = crate::source::skip_before(&positions, self.from);
        let n = records.num_rows() - skip;
        if n == 0 {
            return Ok(None);
        }
        Ok(Some(
            self.shape(&records.slice(skip, n), &positions.slice(skip, n)),
        ))
    }
}

/// Per shard, the resume position after `pending` (batches of `stream` only; every
/// stream when `stream` is `None`).
fn batch_progress(pending: &[SourceBatch], stream: Option<&str>) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for b in pending.iter().filter(|b| stream.is_none_or(|s| b.feeds(s))) {
        let e = out.entry(b.shard.to_string()).or_insert(b.next);
        *e = (*e).max(b.next);
    }
    out
}

/// Per cursor shard, the furthest cursor of `pending` a table holding `held` takes
/// (see [`crate::source::Cursor`]), and its state. Only that state is stored: a
/// restart reads the one the committed value names.
type Cursors = BTreeMap<String, (i64, Option<bytes::Bytes>)>;

fn cursor_progress(pending: &[SourceBatch], stream: &str, held: &Progress) -> Cursors {
    let mut out = Cursors::new();
    for b in pending.iter().filter(|b| b.feeds(stream)) {
        let Some(c) = b.cursor.as_ref().filter(|c| c.taken_by(&b.shard, held)) else {
            continue;
        };
        let e = out.entry(c.shard.to_string()).or_insert((c.value, None));
        if e.0 <= c.value {
            *e = (c.value, c.state.clone());
        }
    }
    out
}

/// Per table, the states of its cursors (see [`crate::source::Cursor`]), per cursor
/// shard, for the source to resume its work from.
pub(super) async fn cursor_states(
    tables: &[TableTarget],
    shards: &[String],
) -> Result<Vec<BTreeMap<String, bytes::Bytes>>, RunError> {
    let mut out = Vec::with_capacity(tables.len());
    for t in tables {
        let mut states = BTreeMap::new();
        for shard in shards {
            if let Some(v) = t.sink.committed().get(shard)
                && let Some(state) = t
                    .sink
                    .get_state(&crate::source::cursor_state_key(shard, v))
                    .await?
            {
                states.insert(shard.clone(), state);
            }
        }
        out.push(states);
    }
    Ok(out)
}

/// Records the commit's outcome in `summary`.
pub(super) fn count(summary: &mut TableSummary, outcome: Committed, rows: usize) {
    match outcome {
        Committed::Version(v) => {
            summary.commits += 1;
            summary.rows_written += rows as u64;
            summary.version = Some(v);
            let table = summary.name.clone();
            metrics::counter!(telemetry::COMMITS, "table" => table.clone()).increment(1);
            metrics::counter!(telemetry::ROWS_WRITTEN, "table" => table.clone()).increment(rows as u64);
            metrics::gauge!(telemetry::TABLE_VERSION, "table" => table).set(v as f64);
        }
        Committed::AlreadyThere => summary.skipped_commits += 1,
    }
}

/// Per stream, the schema of the first table it feeds that has one (a committed
/// table): see [`crate::source::Resume::schemas`].
pub(super) fn stream_schemas(tables: &[TableTarget]) -> BTreeMap<String, SchemaRef> {
    let mut out = BTreeMap::new();
    for t in tables {
        if let Some(s) = t.sink.schema() {
            out.entry(t.cfg.from.clone()).or_insert(s);
        }
    }
    out
}

impl TableTarget {
    /// The rows of `pending` this table does not hold yet, in the shape its mode
    /// writes. Rows the table cannot take go to `dead` when the table routes them
    /// there (the table then commits only its progress); otherwise that is an error.
    // An error ends the run, so its size never matters on the hot path.
    #[allow(clippy::result_large_err)]
    pub(super) fn prepare(
        &mut self,
        pending: &[SourceBatch],
        dead: &mut DeadLetters,
    ) -> Result<Option<Prepared>, RunError> {
        let cursors = cursor_progress(pending, &self.cfg.from, self.sink.committed());
        let progress: Vec<(String, i64)> = batch_progress(pending, Some(&self.cfg.from))
            .into_iter()
            .chain(cursors.iter().map(|(shard, (value, _))| (shard.clone(), *value)))
            .filter(|(shard, next)| self.sink.committed().get(shard).is_none_or(|c| c < *next))
            .collect();
        if let Some(control) = pending.iter().find_map(|b| b.control) {
            // Markers are alone in their micro-batch. A table that does not exist yet is
            // created by the marker that carries its stream's layout; without one it has
            // no schema to commit progress with and starts with its first rows.
            let own = pending
                .iter()
                .find(|b| *b.stream == *self.cfg.from && b.records.num_columns() > 0);
            let exists = self.sink.schema().is_some();
            let schema = self.sink.schema().or_else(|| own.map(|b| self.empty_shape(b)));
            let Some(schema) = schema.filter(|_| !progress.is_empty()) else {
                return Ok(None);
            };
            // Every snapshot starts with a reset; only a table that exists can hold rows
            // of an earlier, interrupted one.
            if control == Control::Reset && exists {
                tracing::warn!(table = %self.cfg.name, "dropping the rows of an interrupted snapshot");
            }
            return Ok(Some(Prepared {
                progress,
                batches: vec![RecordBatch::new_empty(schema)],
                parts: None,
                rows: 0,
                replace: control == Control::Reset,
                cursors,
                restate: None,
                staging: Vec::new(),
            }));
        }
        if progress.is_empty() {
            let replayed: usize = pending
                .iter()
                .filter(|b| *b.stream == *self.cfg.from)
                .map(|b| b.records.num_rows())
                .sum();
            self.skip(replayed);
            return Ok(None);
        }
        let mut batches = Vec::new();
        let mut skipped = 0;
        let mut parts: Option<Arc<dyn Parts>> = None;
        let mut part_rows = 0;
        let mut restate = None;
        for b in pending.iter().filter(|b| *b.stream == *self.cfg.from) {
            if let Some(spilled) = &b.spilled {
                // A spilled transaction travels alone: one batch per stream.
                let rows = SpilledRows {
                    spilled: spilled.clone(),
                    shard: b.shard.clone(),
                    mode: self.cfg.mode,
                    from: self.sink.committed().get(&b.shard),
                };
                // Rows of another layout than the table takes are refused here, whole:
                // a transaction too large for memory is not sorted row by row.
                self.sink.check(&rows.schema())?;
                part_rows += spilled.rows();
                parts = Some(Arc::new(rows));
                continue;
            }
            if let Some(c) = &b.cursor {
                // Rows restated under a cursor the table is past (or never took part in).
                if !c.taken_by(&b.shard, self.sink.committed()) {
                    skipped += b.records.num_rows();
                    continue;
                }
                if let Some(since) = c.restated_since
                    && self.cfg.mode == TableMode::Mirror
                {
                    restate = Some((since, b.records.schema(), b.shard.clone()));
                }
            }
            let from = b.skip_before(self.sink.committed().get(&b.shard));
            skipped += from;
            let n = b.records.num_rows() - from;
            if n == 0 {
                continue;
            }
            let records = b.records.slice(from, n);
            let positions = b.positions.slice(from, n);
            let rows = match self.cfg.mode {
                TableMode::Append => records.clone(),
                TableMode::Changelog | TableMode::Mirror => {
                    change::with_change_columns(&records, &positions, &b.shard)
                }
            };
            match self.sink.check(&rows.schema()) {
                Ok(_) => batches.push(rows),
                Err(e @ SinkError::Incompatible { .. })
                    if self.cfg.on_incompatible == OnIncompatible::DeadLetter =>
                {
                    tracing::warn!(table = %self.cfg.name, rows = n, error = %e, "records sent to dead letters");
                    dead.push_rows(
                        &b.shard,
                        &records,
                        positions.values(),
                        ErrorKind::Schema,
                        &e.to_string(),
                        &self.cfg.name,
                    );
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.skip(skipped);
        if batches.is_empty() {
            // Only progress is new (an end-of-input marker, or rows routed away): the
            // schema is needed in case this creates the table.
            let schema = self.sink.schema().or_else(|| {
                pending
                    .iter()
                    .find(|b| *b.stream == *self.cfg.from)
                    .map(|b| self.empty_shape(b))
            });
            batches.extend(schema.map(RecordBatch::new_empty));
        }
        let rows = batches.iter().map(RecordBatch::num_rows).sum::<usize>() + part_rows;
        Ok(Some(Prepared {
            progress,
            batches,
            parts,
            rows,
            replace: false,
            cursors,
            restate,
            staging: Vec::new(),
        }))
    }

    /// What writes `prepared`'s rows as files ahead of the commit, in `parts` parts of
    /// about as many rows each (encoded side by side), with the rows of each: for
    /// plain rows of one layout that the table takes as they are (see
    /// [`crate::sink::staged`]); nothing otherwise.
    pub(super) fn stagers(
        &self,
        prepared: &Prepared,
        parts: usize,
    ) -> Vec<(crate::sink::staged::Stager, Vec<RecordBatch>)> {
        let plain = prepared.parts.is_none()
            && !prepared.replace
            && prepared.restate.is_none()
            && prepared.cursors.is_empty()
            && prepared.rows > 0;
        let Some(first) = prepared.batches.first().filter(|_| plain) else {
            return Vec::new();
        };
        if prepared.batches.iter().any(|b| b.schema() != first.schema()) {
            return Vec::new();
        }
        let mut out = Vec::with_capacity(parts);
        for rows in split_rows(&prepared.batches, parts.max(1)) {
            let Some(stager) = self.sink.stager(&first.schema()) else {
                return Vec::new();
            };
            out.push((stager, rows));
        }
        out
    }

    /// The schema of this table's rows for records like `b`'s.
    fn empty_shape(&self, b: &SourceBatch) -> SchemaRef {
        let empty = RecordBatch::new_empty(b.records.schema());
        match self.cfg.mode {
            TableMode::Append => empty.schema(),
            TableMode::Changelog | TableMode::Mirror => {
                change::with_change_columns(&empty, &Int64Array::from(Vec::<i64>::new()), &b.shard).schema()
            }
        }
    }

    fn skip(&mut self, records: usize) {
        if records > 0 {
            // Re-delivery after a restart: these positions are in the table already.
            tracing::info!(table = %self.cfg.name, records, "skipped records the table already holds");
            self.summary.skipped_records += records as u64;
        }
    }

    pub(super) async fn commit(&mut self, prepared: Prepared, retry: &RetryPolicy) -> Result<(), RunError> {
        // State before the commit that names it.
        for (shard, (value, state)) in &prepared.cursors {
            if let Some(state) = state {
                let key = crate::source::cursor_state_key(shard, *value);
                self.sink.put_state(&key, state.clone()).await?;
            }
        }
        let mut batches = prepared.batches;
        let mut rows = prepared.rows;
        if let Some((since, shape, shard)) = &prepared.restate {
            let stale =
                super::restate::stale_rows(&self.sink, &self.cfg.key, *since, shape, &self.cfg.from).await?;
            if let Some(stale) = stale {
                let positions = Int64Array::from(vec![since - 1; stale.num_rows()]);
                rows += stale.num_rows();
                // Ahead of the batch's rows: a key the batch writes again stays.
                batches.insert(0, change::with_change_columns(&stale, &positions, shard));
            }
        }
        let staged = super::flight::Staging::finish_all(prepared.staging, &self.cfg.name)
            .await
            .map(Arc::new);
        let commit = Commit {
            batches,
            parts: prepared.parts,
            progress: prepared.progress,
            info: BTreeMap::new(),
            replace: prepared.replace,
            staged,
        };
        let gate = self.gate.clone();
        let _turn = match &gate {
            Some(g) => {
                let (turn, compacted) = g.enter(self.gate_epoch).await;
                if let Some(epoch) = compacted {
                    // A round replaced files: commit against the table as it is now.
                    self.sink.refresh().await?;
                    self.gate_epoch = epoch;
                }
                Some(turn)
            }
            None => None,
        };
        let outcome = commit_with_retry(&mut self.sink, commit, retry).await?;
        count(&mut self.summary, outcome, rows);
        for (value, state) in prepared.cursors.values() {
            self.summary.snapshot = Some(crate::source::describe_cursor(*value, state.as_deref()));
        }
        Ok(())
    }

    /// A mirror table that names no key takes the source's key for its stream (a
    /// Postgres table's primary key or replica-identity index).
    pub(super) async fn adopt_key(&mut self, source: &dyn Source) -> Result<(), RunError> {
        if self.cfg.mode != TableMode::Mirror || !self.cfg.key.is_empty() {
            return Ok(());
        }
        let Some(key) = source.key(&self.cfg.from) else {
            return Err(RunError::Source(crate::source::SourceError::Setup(format!(
                "table {}: a mirror needs a key, and {} has no primary key: add one, set REPLICA \
                 IDENTITY USING INDEX on a unique index, name `key` columns, or use mode = \"changelog\"",
                self.cfg.name, self.cfg.from
            ))));
        };
        tracing::info!(table = %self.cfg.name, ?key, "mirror key from the source");
        self.sink.adopt_key(key.clone()).await?;
        self.cfg.key = key;
        Ok(())
    }

    pub(super) fn finish(self) -> TableSummary {
        self.summary
    }
}

impl DeadLetterTarget {
    /// Commits the dead letters of `pending` (rejected by the source) and `routed`
    /// (refused by tables) that the table does not hold yet.
    ///
    /// The dead-letter table commits before the other tables of a micro-batch and only
    /// when it has rows, so it never holds the source back: any table past a
    /// position implies its dead letters are already committed.
    pub(super) async fn commit(
        &mut self,
        pending: &[SourceBatch],
        routed: DeadLetters,
        retry: &RetryPolicy,
    ) -> Result<(), RunError> {
        let candidates = pending
            .iter()
            .filter_map(|b| b.rejected.clone())
            .chain((!routed.is_empty()).then(|| routed.finish()));
        let progress = || batch_progress(pending, None).into_iter().collect();
        let rows = self
            .commit_unheld(candidates, ("source", "position"), progress, retry)
            .await?;
        if rows > 0 {
            tracing::warn!(table = %self.summary.name, rows, "records set aside as dead letters");
            metrics::counter!(telemetry::DEAD_LETTERS).increment(rows as u64);
        }
        Ok(())
    }

    /// Commits late events (`_late_shard`, `_late_position` columns) the table does not
    /// hold yet, with `progress`; nothing when there are none.
    pub(super) async fn commit_late(
        &mut self,
        batches: Vec<RecordBatch>,
        progress: Vec<(String, i64)>,
        retry: &RetryPolicy,
    ) -> Result<(), RunError> {
        let columns = ("_late_shard", "_late_position");
        let rows = self.commit_unheld(batches, columns, || progress, retry).await?;
        if rows > 0 {
            tracing::info!(table = %self.summary.name, rows, "late events set aside");
        }
        Ok(())
    }

    /// Commits the rows of `candidates` the table does not hold yet (judged by their
    /// `(shard, position)` columns) with `progress`, and says how many; commits nothing
    /// when there are none.
    async fn commit_unheld(
        &mut self,
        candidates: impl IntoIterator<Item = RecordBatch>,
        (shard, position): (&str, &str),
        progress: impl FnOnce() -> Vec<(String, i64)>,
        retry: &RetryPolicy,
    ) -> Result<usize, RunError> {
        let committed = self.sink.committed().clone();
        let mut batches: Vec<RecordBatch> = Vec::new();
        for rows in candidates {
            let fresh = not_yet_held(&rows, &committed, shard, position).map_err(|e| SinkError::Delta {
                table: self.summary.name.clone(),
                source: e.into(),
            })?;
            if fresh.num_rows() > 0 {
                batches.push(fresh);
            }
        }
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        if rows == 0 {
            return Ok(0);
        }
        let commit = Commit {
            batches,
            parts: None,
            progress: progress(),
            info: BTreeMap::new(),
            replace: false,
            staged: None,
        };
        let outcome = commit_with_retry(&mut self.sink, commit, retry).await?;
        count(&mut self.summary, outcome, rows);
        Ok(rows)
    }
}

/// The rows (of dead letters or late events) the table does not hold yet: those at
/// or after their own shard's progress, which is named by the `shard` and `position`
/// columns. Rows are filtered one by one, since they may span shards.
fn not_yet_held(
    rows: &RecordBatch,
    committed: &Progress,
    shard: &str,
    position: &str,
) -> Result<RecordBatch, deltalake::arrow::error::ArrowError> {
    let missing =
        || deltalake::arrow::error::ArrowError::SchemaError(format!("no {shard} or {position} column"));
    let sources = rows.column_by_name(shard).ok_or_else(missing)?.as_string::<i32>();
    let positions = rows
        .column_by_name(position)
        .ok_or_else(missing)?
        .as_primitive::<Int64Type>();
    let keep: BooleanArray = (0..rows.num_rows())
        .map(|i| {
            Some(
                committed
                    .get(sources.value(i))
                    .is_none_or(|c| positions.value(i) >= c),
            )
        })
        .collect();
    filter_record_batch(rows, &keep)
}
