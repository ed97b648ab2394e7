//! `[source] kind = "kafka"`: topics of Confluent-framed Avro or JSON (plain records,
//! upsert topics or Debezium change events), read as a consumer group.
//!
//! ```text
//!  consumer thread (librdkafka poll loop)                       runtime task
//!   rebalance: assign at the tables' progress (Delta txn) ─┐
//!              revoke after what was sent is committed     │
//!   messages → per-partition Frames ─▶ decode thread ──────┴─▶ channel ─▶ poll()
//!              (Arrow SourceBatch, in hand-over order)
//!   acknowledged progress → Kafka offset commit ◀────────────────────── acknowledge()
//! ```
//!
//! Each topic-partition is a shard (`{topic}-{partition}`), each offset a position.
//! The Delta `txn` versions are the truth: on assignment a partition starts at the
//! smallest offset the tables fed by its topic hold (else `auto_offset_reset`), never
//! at the group's committed offset. Offsets are committed to Kafka after the tables
//! committed, so lag tools see the group's real progress. When a rebalance takes a
//! partition away, the thread first waits (bounded) until what it sent of that
//! partition is committed, so the next owner starts where this one stopped; if that
//! wait runs out, Delta's optimistic concurrency still refuses the overlap and the
//! runtime starts over from the tables.

mod consumer;
mod decoding;
mod headers;
mod keys;
mod schemas;
mod values;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deltalake::arrow::datatypes::SchemaRef;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use tokio::sync::mpsc;

use super::{Polled, Resume, RunMode, ShardInfo, Source, SourceError};
use crate::config::{KafkaConfig, StartAt};
use crate::progress::Progress;

pub use consumer::Shared;
pub use schemas::RegistrySchemas;

/// How long a metadata or watermark request may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(30);
/// Decoded chunks buffered between the consumer thread and the runtime.
const CHANNEL_CHUNKS: usize = 4;
/// How long `poll` waits for a chunk before answering `Idle`.
const POLL_WAIT: Duration = Duration::from_millis(100);
/// How often librdkafka reports the partitions' high watermarks (the lag metric).
const STATS_INTERVAL_MS: u64 = 1000;

/// The shard of a topic-partition.
pub fn shard_name(topic: &str, partition: i32) -> String {
    format!("{topic}-{partition}")
}

/// The group session timeout Tributary sets unless the user does (librdkafka's own
/// default is 45 s).
const SESSION_TIMEOUT_MS: u64 = 10_000;

/// librdkafka settings for `cfg`: the user's options, then the ones the exactly-once
/// protocol needs.
fn client_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in &cfg.options {
        c.set(k, v.expose());
    }
    c.set("bootstrap.servers", &cfg.brokers)
        .set("group.id", &cfg.group_id)
        // Offsets are committed by hand, after the Delta commit.
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // `--once` ends by offsets, not by end-of-partition events.
        .set("enable.partition.eof", "false")
        .set(
            "auto.offset.reset",
            match cfg.start_at {
                StartAt::Earliest => "earliest",
                StartAt::Latest => "latest",
            },
        );
    // Low fetch waits keep small brokers (tansu) from idling between fetches; users may
    // override them.
    // librdkafka 2.x pauses a partition's fetcher for `fetch.queue.backoff.ms` (default
    // 1s) whenever its local queue is past `queued.min.messages`/the prefetch bytes: with
    // the default a drain spends most of its time paused (measured: 160k against 1.04M
    // records/s on tansu). The prefetch is bounded by bytes (see `KafkaSource::open`).
    // A short poll interval bounds how long a restarted group waits for members that
    // were killed (brokers wait up to it for every member to rejoin); the consumer
    // thread polls far more often, and a revocation waits at most REVOKE_WAIT.
    for (k, v) in [
        ("fetch.wait.max.ms", "10"),
        ("fetch.queue.backoff.ms", "0"),
        ("session.timeout.ms", &SESSION_TIMEOUT_MS.to_string()),
        ("max.poll.interval.ms", "20000"),
    ] {
        if !cfg.options.contains_key(k) {
            c.set(k, v);
        }
    }
    c
}

fn kafka_err(context: &str) -> impl Fn(rdkafka::error::KafkaError) -> SourceError + '_ {
    move |e| SourceError::Kafka(format!("{context}: {e}"))
}

/// Drops a short-lived client on a thread of its own: librdkafka's destroy waits
/// about 100 ms for its threads, time a run's start need not spend. Only for clients
/// that hold nothing to hand back (no group membership, no offsets to commit).
fn dispose<C: Send + 'static>(client: C) {
    let _ = std::thread::Builder::new()
        .name("rdkafka-destroy".into())
        .spawn(move || drop(client));
}

/// Partitions of every topic, from the brokers.
async fn partitions(cfg: &KafkaConfig) -> Result<BTreeMap<String, Vec<i32>>, SourceError> {
    let cfg = cfg.clone();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = client_config(&cfg)
            .create()
            .map_err(kafka_err("cannot create a consumer"))?;
        let mut out = BTreeMap::new();
        for topic in &cfg.topics {
            let md = consumer
                .fetch_metadata(Some(topic), METADATA_TIMEOUT)
                .map_err(kafka_err(&format!("metadata of topic {topic}")))?;
            let t =
                md.topics().iter().find(|t| t.name() == topic).ok_or_else(|| {
                    SourceError::Kafka(format!("topic {topic}: not in the broker's metadata"))
                })?;
            if let Some(e) = t.error() {
                return Err(SourceError::Setup(format!(
                    "topic {topic}: {:?} (create it first: Tributary never creates topics)",
                    e
                )));
            }
            let mut ps: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
            if ps.is_empty() {
                return Err(SourceError::Setup(format!(
                    "topic {topic} does not exist (create it first: Tributary never creates topics)"
                )));
            }
            ps.sort_unstable();
            out.insert(topic.clone(), ps);
        }
        dispose(consumer);
        Ok(out)
    })
    .await
    .map_err(|e| SourceError::Kafka(format!("metadata task: {e}")))?
}

/// Every topic-partition as a shard of its topic's stream.
pub async fn shards(cfg: &KafkaConfig) -> Result<Vec<ShardInfo>, SourceError> {
    Ok(partitions(cfg)
        .await?
        .into_iter()
        .flat_map(|(topic, ps)| {
            ps.into_iter().map(move |p| ShardInfo {
                name: shard_name(&topic, p),
                stream: Some(topic.clone()),
            })
        })
        .collect())
}

/// Per shard, the low and high watermarks now.
pub async fn ends(cfg: &KafkaConfig) -> Result<HashMap<String, (i64, i64)>, SourceError> {
    let topics = partitions(cfg).await?;
    consumer::watermarks(cfg, &topics).await
}

/// A Kafka consumer-group source.
#[derive(Debug)]
pub struct KafkaSource {
    rx: mpsc::Receiver<Result<Polled, SourceError>>,
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
    schemas: BTreeMap<String, SchemaRef>,
    /// Per topic, the key its records carry (upsert and keyed Debezium topics).
    keys: BTreeMap<String, Vec<String>>,
}

impl KafkaSource {
    /// `prefetch`: bytes librdkafka may hold fetched ahead of the consumer thread
    /// (outside the runtime's in-flight budget, so it is carved out of the process's).
    pub async fn open(
        cfg: &KafkaConfig,
        resume: &Resume,
        mode: RunMode,
        chunk_rows: usize,
        dead_letters: bool,
        prefetch: u64,
    ) -> Result<Self, SourceError> {
        let oracle = resume
            .oracle
            .clone()
            .ok_or_else(|| SourceError::Setup("a Kafka source needs the tables' progress reader".into()))?;
        let topics = partitions(cfg).await?;
        let mut decoders = BTreeMap::new();
        let mut schemas = BTreeMap::new();
        let mut keys = BTreeMap::new();
        for topic in &cfg.topics {
            let d = schemas::TopicDecoder::open(cfg, topic, resume.schemas.get(topic), chunk_rows).await?;
            schemas.insert(topic.clone(), d.schema());
            if let Some(k) = d.key() {
                keys.insert(topic.clone(), k);
            }
            decoders.insert(topic.clone(), d);
        }
        // `--once` stops at the high watermarks of now.
        let ends = match mode {
            RunMode::Once => {
                let ends = consumer::watermarks(cfg, &topics).await?;
                for (shard, (_, high)) in &ends {
                    tracing::info!(shard = %shard, end = high, "--once: reading the offsets before this high watermark");
                }
                Some(ends)
            }
            RunMode::Continuous => None,
        };
        // Partitions come and go with the group: only those assigned are this
        // process's to commit.
        resume.owned.track();
        let shared = Arc::new(Shared::new(resume.min.clone()));
        let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
        let mut client = client_config(cfg);
        for (k, v) in [
            // librdkafka's default prefetch is 64 MiB for the one consumer queue.
            (
                "queued.max.messages.kbytes",
                (prefetch / 1024).max(1024).to_string(),
            ),
            // Lag per partition comes from the statistics librdkafka emits.
            ("statistics.interval.ms", STATS_INTERVAL_MS.to_string()),
        ] {
            if !cfg.options.contains_key(k) {
                client.set(k, v);
            }
        }
        let thread = consumer::spawn(consumer::Setup {
            cfg: cfg.clone(),
            client,
            decoders,
            partitions: topics,
            ends,
            chunk_rows,
            dead_letters,
            oracle,
            owned: resume.owned.clone(),
            shared: shared.clone(),
            tx,
            handle: tokio::runtime::Handle::current(),
        })?;
        Ok(Self {
            rx,
            shared,
            thread: Some(thread),
            schemas,
            keys,
        })
    }
}

#[async_trait]
impl Source for KafkaSource {
    fn shards(&self) -> Vec<String> {
        Vec::new()
    }

    fn schema(&self) -> Option<SchemaRef> {
        (self.schemas.len() == 1)
            .then(|| self.schemas.values().next().cloned())
            .flatten()
    }

    fn key(&self, stream: &str) -> Option<Vec<String>> {
        self.keys.get(stream).cloned()
    }

    async fn poll(&mut self) -> Result<Polled, SourceError> {
        match tokio::time::timeout(POLL_WAIT, self.rx.recv()).await {
            Err(_) => Ok(Polled::Idle),
            Ok(Some(p)) => p,
            Ok(None) => Err(SourceError::Kafka("the consumer thread stopped".into())),
        }
    }

    async fn acknowledge(&mut self, committed: &Progress) -> Result<(), SourceError> {
        self.shared.acknowledge(committed);
        Ok(())
    }

    async fn close(&mut self) {
        self.shared.stop();
        // The threads may be blocked handing over a batch nobody will take.
        self.rx.close();
        // Leaving the group commits the last offsets and lets the others take over.
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

impl Drop for KafkaSource {
    fn drop(&mut self) {
        self.shared.stop();
    }
}
