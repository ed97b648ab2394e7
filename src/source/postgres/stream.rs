//! Streaming changes from the slot: `pgoutput` messages into per-table buffers,
//! handed over at transaction boundaries, while a separate task keeps the server
//! informed of what is durable.
//!
//! A transaction whose rows outgrow [`SpillAt::after`] while it is open goes to spill
//! files ([`crate::source::spill`]) instead: everything buffered so far, then the rest
//! as it arrives, part by part; at its commit one batch per table names the files.
//! Memory stays at one part whatever the transaction's size, and the transaction is
//! still handed over whole, at its commit.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indexmap::IndexMap;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::changes::{Layout, TableBuffer};

use super::pgoutput::{self, Message, Tuple, Value};
use super::wire::{Replication, ReplicationReader, StatusWriter, format_lsn};
use super::{BadValues, Describe, marker, pg};
use crate::source::spill::SpillWriter;
use crate::source::{Control, SourceBatch, SourceError};

/// Hand over buffered transactions at least this often, even under steady load.
const FLUSH_EVERY: Duration = Duration::from_millis(200);
/// How long one poll waits for the next message before reporting idle.
const POLL_WAIT: Duration = Duration::from_millis(50);

/// What the status task reports to the server.
#[derive(Debug, Default)]
pub(super) struct Feedback {
    /// Everything up to here was received.
    pub received: AtomicU64,
    /// Everything up to here is committed in every table: the slot may release it.
    pub flushed: AtomicU64,
    /// Ask the server to answer with a keepalive now.
    pub ask: AtomicBool,
    /// Send one last update, then stop.
    pub closing: AtomicBool,
    pub wake: Notify,
}

/// Sends standby status updates every `interval` and whenever woken, independently of
/// how fast the rest of the pipeline consumes: a slow Delta commit never lets
/// `wal_sender_timeout` fire.
pub(super) fn spawn_status(
    mut writer: StatusWriter,
    feedback: Arc<Feedback>,
    interval: Duration,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = feedback.wake.notified() => {}
            }
            let ask = feedback.ask.swap(false, Ordering::AcqRel);
            let received = feedback.received.load(Ordering::Acquire);
            let flushed = feedback.flushed.load(Ordering::Acquire);
            if let Err(e) = writer.send(received.max(flushed), flushed, ask).await {
                tracing::warn!(error = %e, "standby status update failed; the stream will report the broken connection");
                return;
            }
            if feedback.closing.load(Ordering::Acquire) {
                return;
            }
        }
    })
}

/// Where and from what size an open transaction spills.
#[derive(Debug, Clone)]
pub(super) struct SpillAt {
    pub dir: PathBuf,
    /// Bytes of the open transaction held in memory before it spills.
    pub after: usize,
}

pub(super) struct Stream {
    reader: ReplicationReader,
    pub feedback: Arc<Feedback>,
    status: JoinHandle<()>,
    shard: Arc<str>,
    /// Relation id → layout; `None` for relations outside the captured tables.
    relations: HashMap<u32, Option<Arc<Layout>>>,
    buffers: IndexMap<Arc<str>, TableBuffer>,
    /// The open transaction: its position (commit LSN) and commit time.
    open: Option<(i64, i64)>,
    /// End of the last complete transaction: where a consumer holding it resumes.
    complete: i64,
    /// The `next` of the last batch handed over.
    pub emitted: i64,
    first_buffered: Option<Instant>,
    rows: usize,
    /// Rows of the open transaction.
    open_rows: usize,
    /// Bytes buffered since the open transaction began.
    open_bytes: usize,
    bytes: usize,
    spill: SpillAt,
    /// The open transaction's spill files, per stream, once it has spilled.
    spilling: IndexMap<Arc<str>, SpillWriter>,
    /// Transactions spilled so far (names their folders).
    spilled_units: u64,
    last_marker: Instant,
    marker_every: Duration,
    /// The content of a snapshot watermark in the open transaction.
    watermark: Option<String>,
    /// Transactions to note the positions of as they begin (ids the incremental
    /// snapshot's read could not see), and the positions noted.
    pub watch: std::collections::HashSet<u32>,
    pub watched: Vec<i64>,
}

/// What one step of the stream produced.
pub(super) enum Step {
    Batches(Vec<SourceBatch>),
    Idle,
    /// The end noted for a `--once` run is reached (after these batches).
    End(Vec<SourceBatch>),
    /// A snapshot watermark ([`super::incremental`]) committed at `at`, after these
    /// batches; a consumer holding it resumes at `next`.
    Watermark {
        batches: Vec<SourceBatch>,
        content: String,
        at: i64,
        next: i64,
    },
}

impl Stream {
    /// Sends a last status update (what every table committed) and stops.
    pub async fn close(&mut self) {
        self.feedback.closing.store(true, Ordering::Release);
        self.feedback.wake.notify_one();
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.status).await;
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.status.abort();
    }
}

impl Stream {
    pub fn new(
        reader: ReplicationReader,
        writer: StatusWriter,
        shard: Arc<str>,
        start: u64,
        status_interval: Duration,
        spill: SpillAt,
    ) -> Stream {
        let feedback = Arc::new(Feedback::default());
        feedback.flushed.store(start, Ordering::Release);
        feedback.received.store(start, Ordering::Release);
        let status = spawn_status(writer, feedback.clone(), status_interval);
        Stream {
            reader,
            feedback,
            status,
            shard,
            relations: HashMap::new(),
            buffers: IndexMap::new(),
            open: None,
            complete: start as i64,
            emitted: start as i64,
            first_buffered: None,
            rows: 0,
            open_rows: 0,
            open_bytes: 0,
            bytes: 0,
            spill,
            spilling: IndexMap::new(),
            spilled_units: 0,
            last_marker: Instant::now(),
            marker_every: status_interval.max(Duration::from_secs(1)) * 3,
            watermark: None,
            watch: Default::default(),
            watched: Vec::new(),
        }
    }

    /// Reads until a chunk is due, the stream goes quiet, or the `--once` end.
    /// `describe` turns relation messages into layouts (it may query the catalog).
    pub async fn step(
        &mut self,
        chunk_rows: usize,
        max_bytes: usize,
        end: Option<u64>,
        bad: &mut BadValues,
        describe: &mut Describe,
    ) -> Result<Step, SourceError> {
        loop {
            let msg = match tokio::time::timeout(POLL_WAIT, self.reader.recv()).await {
                Err(_) => {
                    // Quiet: hand over complete transactions now rather than later.
                    if self.open.is_none() && self.rows > 0 {
                        return Ok(Step::Batches(self.flush(bad)?));
                    }
                    if end.is_some() {
                        // A --once run needs the server's position to know it is done.
                        self.feedback.ask.store(true, Ordering::Release);
                        self.feedback.wake.notify_one();
                    }
                    return Ok(Step::Idle);
                }
                Ok(r) => r.map_err(pg("reading the replication stream"))?,
            };
            let Some(msg) = msg else {
                return Err(SourceError::Setup(
                    "the server ended the replication stream".into(),
                ));
            };
            match msg {
                Replication::Keepalive { wal_end, reply } => {
                    self.feedback.received.fetch_max(wal_end, Ordering::AcqRel);
                    if reply {
                        self.feedback.wake.notify_one();
                    }
                    if self.open.is_some() {
                        continue;
                    }
                    // Nothing is in flight: every transaction committed before
                    // `wal_end` has been received.
                    let mut out = if self.rows > 0 {
                        self.flush(bad)?
                    } else {
                        Vec::new()
                    };
                    let wal_end = wal_end as i64;
                    if end.is_some_and(|e| wal_end >= e as i64) {
                        return Ok(Step::End(out));
                    }
                    if wal_end > self.emitted && self.last_marker.elapsed() >= self.marker_every {
                        // Idle tables catch up, so acknowledgements (and WAL
                        // recycling) are not held back by them.
                        self.complete = self.complete.max(wal_end);
                        self.emitted = wal_end;
                        self.last_marker = Instant::now();
                        out.push(marker(&self.shard, wal_end, Control::Progress));
                    }
                    if !out.is_empty() {
                        return Ok(Step::Batches(out));
                    }
                }
                Replication::XLogData { data, .. } => {
                    let parsed = pgoutput::parse(&data).map_err(|e| {
                        SourceError::Setup(format!("slot {}: undecodable change: {e}", self.shard))
                    })?;
                    match parsed {
                        Message::Begin {
                            final_lsn,
                            commit_ts,
                            xid,
                        } => {
                            if self.watch.contains(&xid) {
                                self.watched.push(final_lsn as i64);
                            }
                            // `--once` takes the transactions whose commit was written
                            // before the end it noted, and none after.
                            if end.is_some_and(|e| final_lsn >= e) {
                                return Ok(Step::End(self.flush(bad)?));
                            }
                            self.open = Some((final_lsn as i64, commit_ts));
                            self.open_rows = 0;
                            self.open_bytes = 0;
                        }
                        Message::Commit {
                            commit_lsn, end_lsn, ..
                        } => {
                            if let Some(content) = self.watermark.take()
                                && self.spilling.is_empty()
                                && self.open_rows == 0
                            {
                                // The watermark's own transaction holds no rows of
                                // captured tables: what is buffered ends before it.
                                self.open = None;
                                let batches = if self.rows > 0 {
                                    self.flush(bad)?
                                } else {
                                    Vec::new()
                                };
                                self.complete = self.complete.max(end_lsn as i64);
                                self.emitted = self.complete;
                                return Ok(Step::Watermark {
                                    batches,
                                    content,
                                    at: commit_lsn as i64,
                                    next: end_lsn as i64,
                                });
                            }
                            self.open = None;
                            self.complete = self.complete.max(end_lsn as i64);
                            let ended = end.is_some_and(|e| end_lsn >= e);
                            if !self.spilling.is_empty() {
                                let spilled = self.finish_spill(bad)?;
                                return Ok(if ended {
                                    Step::End(spilled)
                                } else {
                                    Step::Batches(spilled)
                                });
                            }
                            // Finished transactions go before they could make a
                            // later one spill with them.
                            let due = self.rows >= chunk_rows
                                || self.bytes >= max_bytes.min(self.spill.after)
                                || self.first_buffered.is_some_and(|t| t.elapsed() >= FLUSH_EVERY);
                            if ended {
                                return Ok(Step::End(self.flush(bad)?));
                            }
                            if due {
                                return Ok(Step::Batches(self.flush(bad)?));
                            }
                        }
                        Message::Relation {
                            oid,
                            namespace,
                            name,
                            columns,
                            ..
                        } => {
                            let stream = format!("{namespace}.{name}");
                            let cols = columns
                                .iter()
                                .map(|c| (c.name.to_string(), c.type_oid, c.type_modifier, c.key))
                                .collect();
                            let new = describe.relation(&stream, cols).await?;
                            let mut early = Vec::new();
                            if let Some(new) = &new {
                                let changed = self
                                    .buffers
                                    .get(&new.stream)
                                    .is_some_and(|b| !b.layout.same_as(new));
                                if changed && self.open_rows == 0 && self.rows > 0 {
                                    // Rows of finished transactions go out in the old
                                    // layout, so that each chunk has one layout and the
                                    // sink alone judges the change.
                                    early = self.flush(bad)?;
                                }
                                match self.buffers.get_mut(&new.stream) {
                                    Some(buf) if changed => {
                                        tracing::info!(table = %new.stream, columns = ?new.names, "table layout changed");
                                        buf.relayout(new.clone()).map_err(SourceError::Setup)?;
                                    }
                                    Some(_) => {}
                                    None => {
                                        self.buffers
                                            .insert(new.stream.clone(), TableBuffer::new(new.clone()));
                                    }
                                }
                            }
                            self.relations.insert(oid, new);
                            if !early.is_empty() {
                                return Ok(Step::Batches(early));
                            }
                        }
                        Message::Insert { oid, new } => self.change(oid, "c", &new, bad)?,
                        Message::Update { oid, old, new } => {
                            if let Some(old) = old
                                && self.key_changed(oid, &old, &new)
                            {
                                // A new key is a new row: the old one is gone.
                                self.change(oid, "d", &old, bad)?;
                                self.change(oid, "c", &new, bad)?;
                            } else {
                                self.change(oid, "u", &new, bad)?;
                            }
                        }
                        Message::Delete { oid, old } => self.change(oid, "d", &old, bad)?,
                        Message::Truncate { oids } => {
                            for oid in oids {
                                self.change_empty(oid, "t")?;
                            }
                        }
                        Message::LogicalMessage {
                            transactional: true,
                            prefix,
                            content,
                            ..
                        } if prefix == super::incremental::PREFIX && self.open_rows == 0 => {
                            self.watermark = Some(String::from_utf8_lossy(content).into_owned());
                        }
                        Message::Origin | Message::Type | Message::LogicalMessage { .. } => {}
                    }
                }
            }
        }
    }

    fn layout_of(&self, oid: u32) -> Result<Option<Arc<Layout>>, SourceError> {
        match self.relations.get(&oid) {
            Some(l) => Ok(l.clone()),
            None => Err(SourceError::Setup(format!(
                "slot {}: a change to relation {oid} came before its description",
                self.shard
            ))),
        }
    }

    fn position(&self) -> Result<(i64, i64), SourceError> {
        self.open
            .ok_or_else(|| SourceError::Setup(format!("slot {}: a change outside a transaction", self.shard)))
    }

    fn note_row(&mut self) {
        self.rows += 1;
        self.open_rows += 1;
        self.first_buffered.get_or_insert_with(Instant::now);
    }

    fn change(
        &mut self,
        oid: u32,
        op: &str,
        tuple: &Tuple<'_>,
        bad: &mut BadValues,
    ) -> Result<(), SourceError> {
        let Some(layout) = self.layout_of(oid)? else {
            return Ok(());
        };
        let (position, commit_ts) = self.position()?;
        let buf = self
            .buffers
            .entry(layout.stream.clone())
            .or_insert_with(|| TableBuffer::new(layout.clone()));
        let before = buf.bytes;
        buf.push_tuple(op, position, commit_ts, tuple, &mut bad.values);
        let added = buf.bytes - before;
        self.bytes += added;
        self.open_bytes += added;
        self.note_row();
        if self.open_bytes >= self.spill.after {
            self.spill_out()?;
        }
        Ok(())
    }

    /// Moves every buffered row to the open transaction's spill files.
    fn spill_out(&mut self) -> Result<(), SourceError> {
        if self.spilling.is_empty() {
            tracing::info!(
                slot = %self.shard,
                rows = self.open_rows,
                bytes = self.open_bytes,
                "a large transaction is open: its rows go to spill files until it commits"
            );
            self.spilled_units += 1;
        }
        let unit = self.spill.dir.join(format!("txn-{}", self.spilled_units));
        for (i, buf) in self.buffers.values_mut().enumerate() {
            let Some((records, positions)) = buf.take().map_err(SourceError::Setup)? else {
                continue;
            };
            let writer = match self.spilling.get_mut(&buf.layout.stream) {
                Some(w) => w,
                None => {
                    let w = SpillWriter::create(unit.join(i.to_string())).map_err(spill_error(&unit))?;
                    self.spilling.entry(buf.layout.stream.clone()).or_insert(w)
                }
            };
            writer.write(&records, &positions).map_err(spill_error(&unit))?;
        }
        self.bytes = 0;
        self.open_bytes = 0;
        self.rows = 0;
        Ok(())
    }

    /// The committed spilled transaction (and whatever was buffered with it): one
    /// batch per table, naming its files.
    fn finish_spill(&mut self, bad: &mut BadValues) -> Result<Vec<SourceBatch>, SourceError> {
        self.spill_out()?;
        let next = self.complete;
        let mut out = Vec::with_capacity(self.spilling.len());
        let mut rows = 0;
        for (stream, writer) in std::mem::take(&mut self.spilling) {
            let Some(buf) = self.buffers.get(&stream) else {
                continue;
            };
            let schema = buf.layout.schema.clone();
            rows += writer.rows();
            out.push(SourceBatch {
                stream,
                shard: self.shard.clone(),
                records: deltalake::arrow::array::RecordBatch::new_empty(schema.clone()),
                positions: deltalake::arrow::array::Int64Array::from(Vec::<i64>::new()),
                next,
                end_of_input: false,
                rejected: None,
                control: None,
                spilled: Some(writer.finish(schema)),
                cursor: None,
            });
        }
        if let Some(first) = out.first_mut() {
            first.rejected = bad.take(&self.shard)?;
        }
        self.first_buffered = None;
        self.emitted = next;
        tracing::info!(slot = %self.shard, rows, next = %format_lsn(next as u64), "large transaction handed over");
        Ok(out)
    }

    /// A row with no values (a truncate).
    fn change_empty(&mut self, oid: u32, op: &str) -> Result<(), SourceError> {
        let Some(layout) = self.layout_of(oid)? else {
            return Ok(());
        };
        let (position, commit_ts) = self.position()?;
        let empty = [0u8, 0u8];
        let tuple = pgoutput::parse_tuple(&empty).map_err(|e| SourceError::Setup(e.to_string()))?;
        let buf = self
            .buffers
            .entry(layout.stream.clone())
            .or_insert_with(|| TableBuffer::new(layout.clone()));
        buf.push_tuple(op, position, commit_ts, &tuple, &mut Vec::new());
        self.note_row();
        Ok(())
    }

    fn key_changed(&self, oid: u32, old: &Tuple<'_>, new: &Tuple<'_>) -> bool {
        let Some(Some(layout)) = self.relations.get(&oid) else {
            return false;
        };
        old.columns()
            .zip(new.columns())
            .zip(&layout.key)
            .any(|((o, n), &k)| k && n != Value::Unchanged && o != n)
    }

    /// Hands over every buffered table, all ending at the last complete transaction.
    fn flush(&mut self, bad: &mut BadValues) -> Result<Vec<SourceBatch>, SourceError> {
        let next = self.complete;
        let mut out = Vec::with_capacity(self.buffers.len());
        for buf in self.buffers.values_mut() {
            if let Some((records, positions)) = buf.take().map_err(SourceError::Setup)? {
                out.push(SourceBatch {
                    stream: buf.layout.stream.clone(),
                    shard: self.shard.clone(),
                    records,
                    positions,
                    next,
                    end_of_input: false,
                    rejected: None,
                    control: None,
                    spilled: None,
                    cursor: None,
                });
            }
        }
        if let Some(first) = out.first_mut() {
            first.rejected = bad.take(&self.shard)?;
        }
        self.rows = 0;
        self.bytes = 0;
        self.first_buffered = None;
        self.emitted = next;
        tracing::trace!(next = %format_lsn(next as u64), chunks = out.len(), "changes handed over");
        Ok(out)
    }
}

fn spill_error(dir: &std::path::Path) -> impl FnOnce(std::io::Error) -> SourceError + '_ {
    move |source| SourceError::Io {
        context: format!("writing spill files in {}", dir.display()),
        source,
    }
}
