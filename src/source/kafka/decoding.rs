//! The decode thread: between the consumer thread and the runtime, it turns gathered
//! messages into Arrow batches.
//!
//! Decoding is a third of what the consumer thread did per message; on its own thread
//! it overlaps with polling librdkafka, so the poll loop keeps the local queue drained
//! (librdkafka's broker thread fetches while it is below its threshold).
//!
//! Order is kept: the consumer thread hands over chunks and control messages
//! ([`Polled::Reassigned`], [`Polled::End`]) through one bounded queue, and this thread
//! forwards them in that order. A rebalance that revokes partitions first waits until
//! the queue is empty ([`Queued::wait_empty`]), so "what was sent of a partition"
//! includes every chunk handed over before the revocation. Nothing here outlives a
//! crash: chunks are positions not yet acknowledged, so a restart reads them again.

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use super::consumer::CHUNK_BYTES;
use super::schemas::{Chunk, TopicDecoder};
use super::shard_name;
use crate::source::{Polled, SourceError};

/// Chunks waiting for the decode thread: it bounds the raw bytes held outside the
/// runtime's budget to a few chunks.
const QUEUE: usize = 2;

enum Work {
    Chunk {
        topic: String,
        partition: i32,
        chunk: Box<Chunk>,
    },
    /// Control messages and errors: rare next to chunks, so boxed to keep the queue's
    /// slots small.
    Polled(Box<Result<Polled, SourceError>>),
}

/// How many chunks are handed over and not yet sent on (or dropped).
#[derive(Default)]
pub struct Queued {
    n: Mutex<usize>,
    empty: Condvar,
}

impl Queued {
    fn lock(&self) -> std::sync::MutexGuard<'_, usize> {
        self.n.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn add(&self) {
        *self.lock() += 1;
    }

    fn done(&self) {
        let mut n = self.lock();
        *n = n.saturating_sub(1);
        if *n == 0 {
            self.empty.notify_all();
        }
    }

    /// Waits until every handed-over chunk is sent on, or `limit`; `false` on timeout.
    pub fn wait_empty(&self, limit: Duration) -> bool {
        let n = self
            .empty
            .wait_timeout_while(self.lock(), limit, |n| *n > 0)
            .map_or_else(|p| p.into_inner().0, |(g, _)| g);
        *n == 0
    }
}

/// Hands control messages to the decode thread from a rebalance callback, which must
/// not wait on the runtime for long (see `consumer::revoke_wait`).
pub struct Marker(SyncSender<Work>);

impl Marker {
    /// Queues `p` behind the chunks handed over before it, trying until `deadline`;
    /// whether it was queued (a marker that could not be is only lost time: the
    /// runtime then commits at its own pace).
    pub fn send(&self, p: Polled, deadline: std::time::Instant) -> bool {
        let mut work = Work::Polled(Box::new(Ok(p)));
        loop {
            match self.0.try_send(work) {
                Ok(()) => return true,
                Err(std::sync::mpsc::TrySendError::Disconnected(_)) => return false,
                Err(std::sync::mpsc::TrySendError::Full(w)) => {
                    if std::time::Instant::now() >= deadline {
                        return false;
                    }
                    work = w;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }
}

/// The consumer thread's end of the decode thread.
pub struct Decoding {
    tx: SyncSender<Work>,
    /// Decoded chunks, cleared, for the consumer thread to fill again: their buffers
    /// keep their capacity instead of growing from nothing for every chunk.
    recycled: Receiver<Chunk>,
    queued: Arc<Queued>,
    sent: Arc<Mutex<HashMap<String, i64>>>,
}

impl Decoding {
    /// Starts the decode thread: it decodes with `decoders` and sends on to `out`,
    /// noting in `sent` one past the last offset sent per shard.
    pub fn spawn(
        mut decoders: BTreeMap<String, TopicDecoder>,
        dead_letters: bool,
        out: mpsc::Sender<Result<Polled, SourceError>>,
        sent: Arc<Mutex<HashMap<String, i64>>>,
        queued: Arc<Queued>,
    ) -> Result<Self, SourceError> {
        let (tx, rx) = sync_channel::<Work>(QUEUE);
        let (back, recycled) = sync_channel::<Chunk>(QUEUE);
        let pending = queued.clone();
        let noted = sent.clone();
        std::thread::Builder::new()
            .name("kafka-decode".into())
            .spawn(move || {
                while let Ok(work) = rx.recv() {
                    let go_on = match work {
                        Work::Polled(p) => out.blocking_send(*p).is_ok(),
                        Work::Chunk {
                            topic,
                            partition,
                            mut chunk,
                        } => {
                            let shard: Arc<str> = Arc::from(shard_name(&topic, partition));
                            let decoded = match decoders.get_mut(&topic) {
                                Some(d) => d.decode(&mut chunk, partition, &shard, dead_letters),
                                None => Err(SourceError::Kafka(format!("no decoder for topic {topic}"))),
                            };
                            let go_on = match decoded {
                                Ok(Some(b)) => {
                                    let next = b.next;
                                    let ok = out.blocking_send(Ok(Polled::Batch(b))).is_ok();
                                    if ok {
                                        noted
                                            .lock()
                                            .unwrap_or_else(|p| p.into_inner())
                                            .insert(shard.to_string(), next);
                                    }
                                    ok
                                }
                                Ok(None) => true,
                                Err(e) => {
                                    let _ = out.blocking_send(Err(e));
                                    false
                                }
                            };
                            // A chunk grown past twice the hand-over size (records
                            // larger than it) gives its memory back instead.
                            if chunk.frames.data.capacity() <= 2 * CHUNK_BYTES {
                                chunk.clear();
                                let _ = back.try_send(*chunk);
                            }
                            pending.done();
                            go_on
                        }
                    };
                    if !go_on {
                        break;
                    }
                }
                // Chunks left in the queue are dropped with it: nobody may wait for them.
                drop(rx);
                *pending.lock() = 0;
                pending.empty.notify_all();
            })
            .map_err(|e| SourceError::Kafka(format!("cannot start the decode thread: {e}")))?;
        Ok(Self {
            tx,
            recycled,
            queued,
            sent,
        })
    }

    /// Hands over a partition's gathered messages; `false` once the decode thread
    /// has stopped (the runtime is gone or a chunk could not be decoded).
    pub fn chunk(&self, topic: &str, partition: i32, chunk: Chunk) -> bool {
        self.queued.add();
        let work = Work::Chunk {
            topic: topic.to_string(),
            partition,
            chunk: Box::new(chunk),
        };
        if self.tx.send(work).is_err() {
            self.queued.done();
            return false;
        }
        true
    }

    /// A handle that queues control messages without blocking for long.
    pub fn marker(&self) -> Marker {
        Marker(self.tx.clone())
    }

    /// An empty chunk to gather into, with the capacity of one decoded before.
    pub fn empty_chunk(&self) -> Chunk {
        self.recycled.try_recv().unwrap_or_default()
    }

    /// Per shard, one past the last offset sent on.
    pub fn sent(&self) -> std::sync::MutexGuard<'_, HashMap<String, i64>> {
        self.sent.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands over a control message or an error, after every chunk before it.
    pub fn send(&self, p: Result<Polled, SourceError>) -> bool {
        self.tx.send(Work::Polled(Box::new(p))).is_ok()
    }
}
