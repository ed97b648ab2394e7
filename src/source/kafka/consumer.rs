//! The consumer thread: owns the librdkafka consumer, answers rebalances, gathers
//! messages per partition and hands them to the decode thread ([`super::decoding`]),
//! which sends the batches on to the runtime.
//!
//! librdkafka calls rebalance callbacks from inside `poll`, on this thread, which is
//! not a tokio thread: the callbacks may block on async work (reading the tables'
//! progress) with the runtime's handle.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc;

use super::decoding::{Decoding, Marker, Queued};
use super::headers;
use super::schemas::{Chunk, Gather, TopicDecoder};
use super::{METADATA_TIMEOUT, kafka_err, shard_name};
use crate::config::{KafkaConfig, StartAt};
use crate::progress::Progress;
use crate::source::{Owned, Polled, SourceError, TableProgress};

/// How long `poll` blocks for a message once the local queue is empty.
const POLL_TIMEOUT: Duration = Duration::from_millis(20);
/// A partition's gathered messages are handed over at least this often (it bounds
/// what the consumer adds to a record's latency under steady traffic).
const LINGER: Duration = Duration::from_millis(50);
/// Messages taken between two looks at the clock: while messages are queued they are
/// taken without a timeout, and the linger is checked every this many.
const CLOCK_EVERY: u32 = 256;
/// A partition's gathered messages are handed over at this many payload bytes, if not
/// at `chunk_rows` before: gathered and queued chunks sit outside the in-flight budget,
/// so large records must not make them large.
pub(super) const CHUNK_BYTES: usize = 4 << 20;
/// How long a revocation waits at most for what was sent of the partitions to be
/// committed; see [`revoke_wait`].
const REVOKE_WAIT: Duration = Duration::from_secs(10);

/// How long a revocation waits for what was sent of the revoked partitions to be
/// committed: a quarter of `session.timeout.ms`, at most [`REVOKE_WAIT`]. The callback
/// runs inside `poll`, so while it waits this member has not rejoined, and brokers
/// (tansu) drop the members that did join once a session timeout passes: a long wait
/// turns every rebalance into another one, with the new member left out each time
/// (measured: 40 s before a second consumer got a partition, with 2 s commits and a
/// 10 s wait). Records not committed by then are left to the next owner: whichever
/// process commits a shard's records second finds the other's progress in the table
/// and skips what it holds (see `runtime::run`), so a short wait costs repeated work,
/// never exactness.
fn revoke_wait(cfg: &KafkaConfig) -> Duration {
    let session = cfg
        .options
        .get("session.timeout.ms")
        .and_then(|v| v.expose().trim().parse::<u64>().ok())
        .unwrap_or(super::SESSION_TIMEOUT_MS);
    Duration::from_millis(session / 4).min(REVOKE_WAIT)
}

/// State shared by the source (runtime side) and the consumer thread.
#[derive(Debug)]
pub struct Shared {
    acked: Mutex<Progress>,
    changed: Condvar,
    stop: AtomicBool,
}

impl Shared {
    pub fn new(start: Progress) -> Self {
        Self {
            acked: Mutex::new(start),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Progress> {
        self.acked.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn acknowledge(&self, committed: &Progress) {
        let mut acked = self.lock();
        for (shard, next) in committed.iter() {
            acked.advance(shard, next);
        }
        self.changed.notify_all();
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.changed.notify_all();
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Waits until every shard of `sent` is acknowledged up to its offset, or `limit`
    /// (or a stop); whether they all are.
    fn wait_acked(&self, sent: &HashMap<String, i64>, limit: Duration) -> bool {
        let all = |acked: &Progress| sent.iter().all(|(s, n)| acked.get(s).is_some_and(|a| a >= *n));
        let acked = self
            .changed
            .wait_timeout_while(self.lock(), limit, |acked| !all(acked) && !self.stopping())
            .map_or_else(|p| p.into_inner().0, |(g, _)| g);
        all(&acked)
    }
}

/// Everything the thread needs.
pub struct Setup {
    pub cfg: KafkaConfig,
    pub client: ClientConfig,
    pub decoders: BTreeMap<String, TopicDecoder>,
    /// Every topic's partitions.
    pub partitions: BTreeMap<String, Vec<i32>>,
    /// `--once`: per shard, the low and high watermarks noted at start; a run stops
    /// before the high one.
    pub ends: Option<HashMap<String, (i64, i64)>>,
    pub chunk_rows: usize,
    pub dead_letters: bool,
    pub oracle: Arc<dyn TableProgress>,
    /// The partitions this process reads now, for the runtime (see [`Owned`]).
    pub owned: Arc<Owned>,
    pub shared: Arc<Shared>,
    pub tx: mpsc::Sender<Result<Polled, SourceError>>,
    pub handle: tokio::runtime::Handle,
}

/// Partitions with the offset each starts at (`-2`/`-1`: the beginning or end).
type Assigned = Vec<(String, i32, i64)>;

/// What rebalance callbacks found, for the poll loop to act on.
#[derive(Default)]
struct Events {
    assigned: Assigned,
    revoked: Vec<(String, i32)>,
    error: Option<SourceError>,
}

struct Context {
    cfg: KafkaConfig,
    oracle: Arc<dyn TableProgress>,
    owned: Arc<Owned>,
    shared: Arc<Shared>,
    handle: tokio::runtime::Handle,
    /// Per shard, one past the last offset handed to the runtime.
    sent: Arc<Mutex<HashMap<String, i64>>>,
    /// Chunks handed to the decode thread and not yet sent on.
    queued: Arc<Queued>,
    /// Hands the decode thread a revocation marker, behind the chunks before it.
    marker: Marker,
    events: Mutex<Events>,
}

impl ClientContext for Context {
    /// Lag per assigned partition: the high watermark the last fetch reported minus
    /// the offset every table holds (not librdkafka's own lag, which counts offsets
    /// merely read).
    fn stats(&self, stats: rdkafka::Statistics) {
        let acked = self.shared.lock().clone();
        for (topic, t) in stats.topics {
            for (p, part) in t.partitions {
                if p < 0 || !part.desired || part.hi_offset < 0 {
                    continue;
                }
                let held = acked.get(&shard_name(&topic, p)).unwrap_or(part.lo_offset.max(0));
                metrics::gauge!(crate::telemetry::KAFKA_LAG, "topic" => topic.clone(), "partition" => p.to_string())
                    .set((part.hi_offset - held).max(0) as f64);
            }
        }
    }
}

impl Context {
    fn events(&self) -> MutexGuard<'_, Events> {
        self.events.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Offsets to start the assigned partitions at: the tables' progress, else the
    /// configured reset.
    /// The fetch offsets to assign, and each partition's start (`-2`/`-1` for the
    /// beginning or end).
    fn starts(&self, tpl: &TopicPartitionList) -> Result<(TopicPartitionList, Assigned), SourceError> {
        let shards: Vec<String> = tpl
            .elements()
            .iter()
            .map(|e| shard_name(e.topic(), e.partition()))
            .collect();
        let held = self
            .handle
            .block_on(self.oracle.held(&shards))
            .map_err(|e| SourceError::Kafka(format!("reading the tables' progress for {shards:?}: {e}")))?;
        let mut out = TopicPartitionList::new();
        let mut wants = Vec::new();
        for e in tpl.elements() {
            let (fetch, want) = match held.get(&shard_name(e.topic(), e.partition())) {
                // Fetch from a little earlier and skip up to the start: some brokers
                // (tansu) answer a fetch from inside a record batch with the next
                // batch, which would skip the rest of this one.
                // With `latest`, a rewind below the log start would jump to the end.
                Some(n) if self.cfg.start_at == StartAt::Latest => (Offset::Offset(n), n),
                Some(n) => (Offset::Offset((n - FETCH_BEFORE).max(0)), n),
                None => match self.cfg.start_at {
                    StartAt::Earliest => (Offset::Beginning, -2),
                    StartAt::Latest => (Offset::End, -1),
                },
            };
            out.add_partition_offset(e.topic(), e.partition(), fetch)
                .map_err(kafka_err("assignment"))?;
            wants.push((e.topic().to_string(), e.partition(), want));
        }
        Ok((out, wants))
    }
}

impl ConsumerContext for Context {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: rdkafka::types::RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        use rdkafka::types::RDKafkaRespErr as E;
        match err {
            E::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => match self.starts(tpl) {
                Ok((starts, assigned)) => {
                    tracing::info!(partitions = ?assigned, "kafka partitions assigned");
                    self.owned
                        .add(assigned.iter().map(|(t, p, _)| Arc::from(shard_name(t, *p))));
                    if let Err(e) = consumer.assign(&starts) {
                        self.events().error = Some(SourceError::Kafka(format!("assign: {e}")));
                    }
                    self.events().assigned.extend(assigned);
                }
                Err(e) => {
                    let _ = consumer.unassign();
                    self.events().error = Some(e);
                }
            },
            E::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let revoked: Vec<(String, i32)> = tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_string(), e.partition()))
                    .collect();
                // Hand over cleanly: what was sent of these partitions is committed
                // before the next owner reads where the tables stand. The marker
                // (behind the chunks still with the decode thread) has the runtime
                // commit at once.
                let started = Instant::now();
                let wait = revoke_wait(&self.cfg);
                let shards: Vec<Arc<str>> = revoked
                    .iter()
                    .map(|(t, p)| Arc::from(shard_name(t, *p)))
                    .collect();
                self.marker.send(Polled::Revoked, started + wait);
                self.queued.wait_empty(wait.saturating_sub(started.elapsed()));
                let sent: HashMap<String, i64> = {
                    let sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
                    revoked
                        .iter()
                        .filter_map(|(t, p)| {
                            let s = shard_name(t, *p);
                            sent.get(&s).map(|n| (s, *n))
                        })
                        .collect()
                };
                if !self
                    .shared
                    .wait_acked(&sent, wait.saturating_sub(started.elapsed()))
                {
                    tracing::warn!(?revoked, "partitions revoked before their records were committed");
                }
                // From here on another member may be assigned them: this process must
                // no longer commit them.
                self.owned.remove(&shards);
                let acked = self.shared.lock().clone();
                commit_offsets(consumer, &acked, tpl, CommitMode::Sync);
                tracing::info!(partitions = ?revoked, "kafka partitions revoked");
                let _ = consumer.unassign();
                self.events().revoked.extend(revoked);
            }
            other => {
                tracing::warn!(error = ?other, "kafka rebalance error");
                let _ = consumer.unassign();
            }
        }
    }
}

/// Assigns every partition at the tables' progress, without the group.
fn assign_all(
    consumer: &BaseConsumer<Context>,
    partitions: &BTreeMap<String, Vec<i32>>,
) -> Result<(), SourceError> {
    let mut tpl = TopicPartitionList::new();
    for (t, ps) in partitions {
        // The partitions' leaders must be known when they are assigned: librdkafka
        // otherwise schedules their first offset lookup half a second later.
        consumer
            .fetch_metadata(Some(t), METADATA_TIMEOUT)
            .map_err(kafka_err(&format!("metadata of {t}")))?;
        for p in ps {
            tpl.add_partition(t, *p);
        }
    }
    let ctx = consumer.context();
    let (starts, assigned) = ctx.starts(&tpl)?;
    ctx.owned
        .add(assigned.iter().map(|(t, p, _)| Arc::from(shard_name(t, *p))));
    consumer.assign(&starts).map_err(kafka_err("assign"))?;
    tracing::info!(partitions = ?assigned, "kafka partitions assigned (--once: every partition)");
    ctx.events().assigned.extend(assigned);
    Ok(())
}

/// Commits `progress` for the partitions of `tpl` (or every assigned one).
fn commit_offsets(
    consumer: &BaseConsumer<Context>,
    progress: &Progress,
    tpl: &TopicPartitionList,
    mode: CommitMode,
) {
    let mut out = TopicPartitionList::new();
    for e in tpl.elements() {
        if let Some(n) = progress.get(&shard_name(e.topic(), e.partition())) {
            let _ = out.add_partition_offset(e.topic(), e.partition(), Offset::Offset(n));
        }
    }
    if out.count() > 0
        && let Err(e) = consumer.commit(&out, mode)
    {
        tracing::debug!(error = %e, "kafka offset commit failed (the tables hold the progress)");
    }
}

/// Collects the high watermarks fetch responses report (librdkafka statistics).
#[derive(Default)]
struct FetchedHighs(Mutex<HashMap<(String, i32), i64>>);

impl ClientContext for FetchedHighs {
    fn stats(&self, stats: rdkafka::Statistics) {
        let mut highs = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for (topic, t) in stats.topics {
            for (p, part) in t.partitions {
                if p >= 0 && part.hi_offset >= 0 {
                    highs.insert((topic.clone(), p), part.hi_offset);
                }
            }
        }
    }
}

impl ConsumerContext for FetchedHighs {}

/// How long `--once` waits for fetch responses to confirm the high watermarks.
const FETCH_PROBE: Duration = Duration::from_secs(5);

/// Low and high watermarks of every partition, for `--once`. The high watermark is the
/// larger of what ListOffsets answers and what a fetch reports: some brokers (tansu)
/// answer ListOffsets with the start of the last record batch, not its end.
pub async fn watermarks(
    cfg: &KafkaConfig,
    topics: &BTreeMap<String, Vec<i32>>,
) -> Result<HashMap<String, (i64, i64)>, SourceError> {
    let (cfg, topics) = (cfg.clone(), topics.clone());
    tokio::task::spawn_blocking(move || {
        let mut client = super::client_config(&cfg);
        client.set("statistics.interval.ms", "10");
        let consumer: BaseConsumer<FetchedHighs> = client
            .create_with_context(FetchedHighs::default())
            .map_err(kafka_err("cannot create a consumer"))?;
        let mut marks = HashMap::new();
        let mut probe = TopicPartitionList::new();
        for (topic, ps) in &topics {
            for p in ps {
                let (low, high) = consumer
                    .fetch_watermarks(topic, *p, METADATA_TIMEOUT)
                    .map_err(kafka_err(&format!("watermarks of {topic}/{p}")))?;
                marks.insert((topic.clone(), *p), (low, high));
                probe
                    .add_partition_offset(topic, *p, Offset::Offset(high.max(low)))
                    .map_err(kafka_err("watermark probe"))?;
            }
        }
        consumer.assign(&probe).map_err(kafka_err("watermark probe"))?;
        let deadline = Instant::now() + FETCH_PROBE;
        while Instant::now() < deadline {
            let _ = consumer.poll(Duration::from_millis(10));
            if consumer
                .context()
                .0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .len()
                >= marks.len()
            {
                break;
            }
        }
        let fetched = consumer
            .context()
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        // Assigned without the group: it commits nothing and may go in the background.
        super::dispose(consumer);
        Ok(marks
            .into_iter()
            .map(|((t, p), (low, high))| {
                let high = fetched.get(&(t.clone(), p)).map_or(high, |f| high.max(*f));
                (shard_name(&t, p), (low, high))
            })
            .collect())
    })
    .await
    .map_err(|e| SourceError::Kafka(format!("watermark task: {e}")))?
}

/// Starts the consumer thread.
pub fn spawn(mut setup: Setup) -> Result<std::thread::JoinHandle<()>, SourceError> {
    let sent = Arc::new(Mutex::new(HashMap::new()));
    let queued = Arc::new(Queued::default());
    let gathers = setup
        .decoders
        .iter()
        .map(|(t, d)| (t.clone(), d.gathers()))
        .collect();
    let decoding = Decoding::spawn(
        std::mem::take(&mut setup.decoders),
        setup.dead_letters,
        setup.tx.clone(),
        sent.clone(),
        queued.clone(),
    )?;
    let context = Context {
        cfg: setup.cfg.clone(),
        oracle: setup.oracle.clone(),
        owned: setup.owned.clone(),
        shared: setup.shared.clone(),
        handle: setup.handle.clone(),
        sent,
        queued,
        marker: decoding.marker(),
        events: Mutex::new(Events::default()),
    };
    let consumer: BaseConsumer<Context> = setup
        .client
        .create_with_context(context)
        .map_err(kafka_err("cannot create the consumer"))?;
    // Continuous runs share the partitions through the group. A `--once` run is a job
    // that drains everything up to the ends noted at start: it takes every partition
    // itself, so it never waits on a group (or on members a crash left behind).
    if setup.ends.is_none() {
        let topics: Vec<&str> = setup.cfg.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics).map_err(kafka_err("subscribe"))?;
    }
    std::thread::Builder::new()
        .name("kafka-consumer".into())
        .spawn(move || {
            if setup.ends.is_some()
                && let Err(e) = assign_all(&consumer, &setup.partitions)
            {
                decoding.send(Err(e));
                return;
            }
            let mut st = State {
                setup,
                decoding,
                chunks: HashMap::new(),
                assigned: HashSet::new(),
                starts: HashMap::new(),
                done: HashSet::new(),
                last_flush: Instant::now(),
                acked_seen: Progress::new(),
                gathers,
                last: None,
            };
            if let Err(e) = st.run(&consumer) {
                st.decoding.send(Err(e));
            }
            st.leave(&consumer);
        })
        .map_err(|e| SourceError::Kafka(format!("cannot start the consumer thread: {e}")))
}

/// How far before its start a partition is fetched from (see [`Context::starts`]).
const FETCH_BEFORE: i64 = 65_536;

/// The poll loop's state; the consumer is passed beside it, since a polled message
/// borrows the consumer while the state changes.
struct State {
    setup: Setup,
    decoding: Decoding,
    /// Per partition (topic, partition): what is gathered and not handed over yet.
    chunks: HashMap<(String, i32), Chunk>,
    assigned: HashSet<(String, i32)>,
    /// Partitions whose record at their start has not arrived yet: the offset.
    starts: HashMap<(String, i32), i64>,
    /// `--once`: partitions read up to their end.
    done: HashSet<(String, i32)>,
    last_flush: Instant,
    acked_seen: Progress,
    /// Per topic, what is gathered of its messages besides values.
    gathers: HashMap<String, Gather>,
    /// The partition of the last message, its `--once` end and what is gathered.
    last: Option<((String, i32), Option<i64>, Gather)>,
}

impl State {
    fn send(&self, p: Polled) -> Result<bool, SourceError> {
        Ok(self.decoding.send(Ok(p)))
    }

    fn run(&mut self, consumer: &BaseConsumer<Context>) -> Result<(), SourceError> {
        // Whether the last poll found the local queue empty: only then does the next
        // one wait (a poll without a timeout reads no clock in librdkafka).
        let mut drained = true;
        let mut since_clock = 0u32;
        loop {
            if self.setup.shared.stopping() {
                return Ok(());
            }
            let msg = consumer.poll(if drained { POLL_TIMEOUT } else { Duration::ZERO });
            // Before the message: it may belong to a partition assigned in this poll.
            if !self.take_events(consumer)? {
                return Ok(());
            }
            let flush = match msg {
                None => {
                    // An empty queue twice in a row (the second time after waiting)
                    // means the partitions are caught up: hand over what is gathered.
                    let idle = drained;
                    drained = true;
                    since_clock = 0;
                    self.commit_acked(consumer);
                    idle || self.last_flush.elapsed() >= LINGER
                }
                Some(Err(e)) => {
                    // librdkafka retries broker and network errors itself.
                    tracing::warn!(error = %e, "kafka consumer error");
                    drained = true;
                    true
                }
                Some(Ok(m)) => {
                    drained = false;
                    self.gather(&m);
                    since_clock += 1;
                    let full = self.last.as_ref().is_some_and(|(k, _, _)| {
                        self.chunks.get(k).is_some_and(|c| {
                            c.offsets.len() >= self.setup.chunk_rows || c.frames.data.len() >= CHUNK_BYTES
                        })
                    });
                    if since_clock >= CLOCK_EVERY {
                        since_clock = 0;
                        self.commit_acked(consumer);
                        full || self.last_flush.elapsed() >= LINGER
                    } else {
                        full
                    }
                }
            };
            if flush && !self.flush()? {
                return Ok(());
            }
            if self.setup.ends.is_some()
                && !self.assigned.is_empty()
                && self.assigned.iter().all(|tp| self.done.contains(tp))
                && self.chunks.values().all(|c| c.offsets.is_empty())
            {
                self.send(Polled::End)?;
                // Stay in the group until the last commit is acknowledged (`close`),
                // so that its offsets reach Kafka too.
                while !self.setup.shared.stopping() {
                    self.commit_acked(consumer);
                    let _ = consumer.poll(POLL_TIMEOUT);
                    let _ = std::mem::take(&mut *consumer.context().events());
                }
                return Ok(());
            }
        }
    }

    /// Acts on what rebalance callbacks recorded; `false` when the runtime is gone.
    fn take_events(&mut self, consumer: &BaseConsumer<Context>) -> Result<bool, SourceError> {
        let ev = std::mem::take(&mut *consumer.context().events());
        if let Some(e) = ev.error {
            return Err(e);
        }
        for (t, p) in ev.revoked {
            // Gathered but not handed over: the next owner reads them again.
            self.chunks.remove(&(t.clone(), p));
            self.starts.remove(&(t.clone(), p));
            self.assigned.remove(&(t, p));
        }
        if ev.assigned.is_empty() {
            return Ok(true);
        }
        let mut shards = Vec::with_capacity(ev.assigned.len());
        {
            let mut sent = self.decoding.sent();
            for (t, p, start) in &ev.assigned {
                let shard = shard_name(t, *p);
                sent.remove(&shard);
                shards.push(Arc::from(shard.as_str()));
                self.assigned.insert((t.clone(), *p));
                self.starts.remove(&(t.clone(), *p));
                if *start >= 0 {
                    self.starts.insert((t.clone(), *p), *start);
                }
                if let Some(ends) = &self.setup.ends {
                    let (low, high) = ends.get(&shard).copied().unwrap_or((0, 0));
                    // Beginning (-2) is the low watermark; End (-1) is the high one.
                    let from = match *start {
                        -2 => low,
                        -1 => high,
                        n => n.max(low),
                    };
                    if from >= high {
                        self.done.insert((t.clone(), *p));
                    }
                }
            }
        }
        // Tables re-read their progress before the new partitions' records arrive.
        self.send(Polled::Reassigned(shards))
    }

    fn gather(&mut self, m: &BorrowedMessage<'_>) {
        let (topic, partition, offset) = (m.topic(), m.partition(), m.offset());
        // Messages come in runs of one partition: the key (and its `--once` end) is
        // built when the partition changes, not per message.
        if self
            .last
            .as_ref()
            .is_none_or(|(k, _, _)| k.1 != partition || k.0 != topic)
        {
            let end = self
                .setup
                .ends
                .as_ref()
                .map(|ends| ends.get(&shard_name(topic, partition)).map_or(0, |e| e.1));
            let gather = self.gathers.get(topic).copied().unwrap_or_default();
            self.last = Some(((topic.to_string(), partition), end, gather));
        }
        let Some((key, end, gather)) = &self.last else {
            return;
        };
        if !self.assigned.contains(key) || self.done.contains(key) {
            return;
        }
        if let Some(&want) = self.starts.get(key) {
            if offset < want {
                // Fetched from before the start on purpose: already in the tables.
                return;
            }
            if offset > want {
                tracing::debug!(
                    topic,
                    partition,
                    want,
                    first = offset,
                    "no records between the start and the first one fetched"
                );
            }
            self.starts.remove(key);
        }
        if let Some(end) = *end {
            if offset >= end {
                self.done.insert(key.clone());
                return;
            }
            if offset + 1 >= end {
                self.done.insert(key.clone());
            }
        }
        let chunk = match self.chunks.get_mut(key) {
            Some(c) => c,
            None => self
                .chunks
                .entry(key.clone())
                .or_insert_with(|| self.decoding.empty_chunk()),
        };
        chunk.next = offset + 1;
        // A tombstone (no value) is a compaction marker, not a record, except on an
        // upsert topic, where it deletes its key.
        let payload = m.payload();
        if payload.is_none() && !gather.tombstones {
            return;
        }
        chunk.frames.push(payload.unwrap_or_default());
        chunk.has_value.push(payload.is_some());
        chunk.offsets.push(offset);
        chunk.timestamps.push(m.timestamp().to_millis());
        if gather.keys {
            let key = m.key();
            chunk.keys.push(key.unwrap_or_default());
            chunk.has_key.push(key.is_some());
        }
        if gather.headers {
            headers::append(m, chunk.headers.get_or_insert_with(headers::builder));
        }
    }

    /// Hands every partition's gathered messages to the decode thread.
    fn flush(&mut self) -> Result<bool, SourceError> {
        self.last_flush = Instant::now();
        let keys: Vec<(String, i32)> = self.chunks.keys().cloned().collect();
        for key in keys {
            let Some(chunk) = self.chunks.remove(&key) else {
                continue;
            };
            if chunk.offsets.is_empty() {
                continue;
            }
            tracing::trace!(topic = %key.0, partition = key.1, first = chunk.offsets[0], next = chunk.next, "chunk");
            if !self.decoding.chunk(&key.0, key.1, chunk) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Commits newly acknowledged offsets to Kafka, for lag tools.
    fn commit_acked(&mut self, consumer: &BaseConsumer<Context>) {
        let acked = self.setup.shared.lock().clone();
        if acked == self.acked_seen {
            return;
        }
        if let Ok(tpl) = consumer.assignment() {
            commit_offsets(consumer, &acked, &tpl, CommitMode::Async);
        }
        self.acked_seen = acked;
    }

    /// Commits the last acknowledged offsets and leaves the group.
    fn leave(&mut self, consumer: &BaseConsumer<Context>) {
        let acked = self.setup.shared.lock().clone();
        if let Ok(tpl) = consumer.assignment() {
            commit_offsets(consumer, &acked, &tpl, CommitMode::Sync);
        }
        consumer.unsubscribe();
        // Closing the consumer (on drop) sends the LeaveGroup.
    }
}
