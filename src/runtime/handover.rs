//! Shards that move between processes: Kafka partitions handed from one member of a
//! consumer group to another at a rebalance.
//!
//! The old owner is told ([`crate::source::Polled::Revoked`]) and commits what it
//! holds at once; the
//! consumer waits a bounded time for that commit before letting the partitions go (see
//! `source::kafka::consumer::revoke_wait`). When the wait is not enough, two processes
//! hold records of one shard for a while: the new owner read the tables' progress when
//! it was assigned the shard, and the old owner's commit lands after that. The tables
//! settle it: each commit carries the shard's `txn` version, and Delta's optimistic
//! concurrency refuses the second of two commits that name the same shard
//! ([`SinkError::ForeignProgress`]). The refused process reads the table again, drops
//! its rows of shards it no longer owns, skips the rows the table now holds and
//! commits the rest ([`commit_all`]). Neither process restarts (a restart would join
//! the group again and start yet another rebalance).
//!
//! Dropping rows of a shard is only safe when none of its later rows is committed
//! either: tables skip what they hold but never look for holes, so committing rows
//! after a dropped run would leave a hole forever. A dropped shard is therefore
//! *fenced* ([`Fence`]): every row of it is dropped until the source says the shard
//! is this process's again ([`crate::source::Polled::Reassigned`]), from which point
//! it reads the shard from where the tables stand.
//!
//! Crash story: nothing here is state. A process killed at any point leaves each
//! table at a progress of its own; the next owner of a shard starts from it.

use std::collections::HashSet;
use std::sync::Arc;

use crate::sink::SinkError;
use crate::sink::dead_letter::DeadLetters;
use crate::source::{Owned, SourceBatch};

use super::RunError;
use super::flight::Ahead;
use super::retry::RetryPolicy;
use super::tables::{DeadLetterTarget, TableTarget};

/// How many times a micro-batch is committed again after another process committed
/// some of its shards first, before the run starts over from the tables.
const FOREIGN_ATTEMPTS: u32 = 5;

/// Shards whose rows this process drops, from the first one it dropped until the
/// source assigns the shard to it again.
#[derive(Debug, Default)]
pub(super) struct Fence {
    shards: HashSet<Arc<str>>,
    /// Changes so far: a micro-batch prepared at another epoch is prepared again.
    epoch: u64,
}

impl Fence {
    /// Drops every row of `shard` from now on (its next owner reads them).
    pub fn fence(&mut self, shard: &Arc<str>) {
        if self.shards.insert(shard.clone()) {
            self.epoch += 1;
            tracing::info!(%shard, "partition let go: its next owner reads its records again");
        }
    }

    /// The source reads `shards` again, from where the tables stand.
    pub fn lift(&mut self, shards: &[Arc<str>]) {
        for s in shards {
            if self.shards.remove(s) {
                self.epoch += 1;
            }
        }
    }

    pub fn admits(&self, b: &SourceBatch) -> bool {
        !self.shards.contains(&b.shard)
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }
}

/// Commits `pending` to the dead letters (first) and every table, as `ahead`
/// prepared it when that still holds (see [`super::flight`]). With `movable`
/// shards, a table that another process beat to some of its shards reads itself
/// again and commits what remains of `pending` (the batches of shards this process
/// still owns); `pending` keeps only those afterwards, for the aggregates.
#[allow(clippy::too_many_arguments)]
pub(super) async fn commit_all(
    dead: &mut Option<DeadLetterTarget>,
    tables: &mut [TableTarget],
    pending: &mut Vec<SourceBatch>,
    mut ahead: Option<Ahead>,
    owned: &Owned,
    fence: &mut Fence,
    movable: bool,
    retry: &RetryPolicy,
) -> Result<(), RunError> {
    let mut attempt = 0;
    loop {
        // Dead letters first: a table past a position implies its dead letters are in.
        // A second pass finds them there (their progress is committed) and skips them.
        let ahead = ahead.take().filter(|a| {
            let holds = a.still_holds(tables, fence);
            if !holds {
                tracing::debug!(
                    "a micro-batch prepared ahead is prepared again: a table changed shape or read other commits, or a partition was let go"
                );
            }
            holds
        });
        let (prepared, routed) = match ahead {
            Some(a) => (a.prepared, a.routed),
            None => {
                let mut routed = DeadLetters::default();
                let mut prepared = Vec::with_capacity(tables.len());
                for t in tables.iter_mut() {
                    prepared.push(t.prepare(pending, &mut routed)?);
                }
                (prepared, routed)
            }
        };
        if let Some(d) = dead {
            d.commit(pending, routed, retry).await?;
        }
        // Tables commit side by side: each holds its own progress, so their order does
        // not matter, and one table's encoding and uploads overlap another's. All of
        // them finish (none is cut off mid-commit) before an error ends the run.
        let commits = tables
            .iter_mut()
            .zip(prepared)
            .filter_map(|(t, p)| p.map(|p| t.commit(p, retry)));
        let mut foreign = None;
        for outcome in futures::future::join_all(commits).await {
            match outcome {
                Ok(()) => {}
                Err(RunError::Sink(e @ SinkError::ForeignProgress { .. })) if movable => foreign = Some(e),
                Err(e) => return Err(e),
            }
        }
        let Some(e) = foreign else {
            return Ok(());
        };
        attempt += 1;
        if attempt > FOREIGN_ATTEMPTS {
            return Err(e.into());
        }
        // The refused table read its progress again before reporting: the next pass
        // skips what the other process committed.
        tracing::warn!(error = %e, attempt, "another consumer committed these partitions first: committing what remains");
        metrics::counter!(crate::telemetry::HANDOVER_CONFLICTS).increment(1);
        for b in pending.iter().filter(|b| !owned.owns(&b.shard)) {
            fence.fence(&b.shard);
        }
        pending.retain(|b| fence.admits(b));
    }
}
