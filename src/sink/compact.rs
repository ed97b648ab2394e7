//! Automatic compaction of a table's small files (`[sink.compaction]`), run by a
//! continuous pipeline in the background, off the commit path.
//!
//! Streaming commits write one small file per table per micro-batch, and the adaptive
//! trigger commits as often as the sink can. A round here takes the table's files
//! smaller than the policy's `file_size`, smallest first, up to `file_size` bytes, and
//! rewrites their live rows into one file (per partition) through the same rewrite
//! `maintain` uses to purge deletion vectors ([`super::purge::rewrite`]); rounds repeat
//! while `min_files` small files remain. So a table holds at most `min_files` small
//! files plus what arrived since the last look, and everything else is at least
//! [`Limits::small_below`] (a continuous run passes half of `file_size`, so that a
//! file near `file_size` is not rewritten with every few new ones: see
//! `runtime::compaction`). Memory is bounded by one round: the writer buffers at most `file_size`
//! of output, reads stream batch by batch.
//!
//! Why not delta-rs's OPTIMIZE: it takes every file under the target size each time, so
//! a file that has grown to just under 128MiB is read and written again on every run
//! (write amplification that grows with the table), and its memory is not bounded by
//! ours.
//!
//! Crash story and concurrency: a round uploads new files under fresh names, then
//! commits remove + add (`dataChange: false`) in one Delta transaction. A crash before
//! the commit leaves orphans for `maintain`'s VACUUM. Against ingest commits:
//! appends only add files, so a round rebases over them; rows a mirror commit deleted
//! from the round's files meanwhile are carried over as a deletion vector on the new
//! file, and one that removed a file makes the round fail (it is tried again at the next
//! look) (see [`super::purge::Prepared::commit`]); a round that wins makes a mirror or
//! replace commit fail instead, since those commit in a single attempt (see
//! `DeltaSink::commit`), and the ingest retries from the new snapshot. Either way no row
//! is lost or kept twice, and progress (`txn`) is never touched here. (A running
//! pipeline's mirrors commit in turn with its rounds: see `runtime::compaction`.)

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use deltalake::kernel::Add;
use deltalake::{DeltaTable, DeltaTableError};

use super::purge;

/// `[sink.compaction]`, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactionPolicy {
    /// How often each table is looked at.
    pub every: Duration,
    /// A table is compacted once it has this many small files.
    pub min_files: usize,
    /// Files below this size are small; a round writes files of about this size.
    pub file_size: u64,
}

/// Serialises a table's compaction commits with its ingest commits (a mirror's, whose
/// commits re-mark rows all over the table: see `runtime::compaction`). A round reads
/// and writes without it and holds it only to commit.
#[derive(Debug, Default)]
pub struct Gate {
    lock: tokio::sync::Mutex<()>,
    /// Rounds committed so far; the ingest re-reads the table when it changed.
    epoch: AtomicU64,
    /// How committed rounds moved rows, for the table's key index.
    moves: std::sync::Arc<super::moved::Moves>,
}

impl Gate {
    /// For an ingest commit: waits for a round's commit under way; `Some(epoch)` when
    /// rounds committed since `seen`.
    pub async fn enter(&self, seen: u64) -> (tokio::sync::MutexGuard<'_, ()>, Option<u64>) {
        let guard = self.lock.lock().await;
        let now = self.epoch.load(Ordering::Acquire);
        (guard, (now != seen).then_some(now))
    }

    /// For a round's commit.
    pub(super) async fn hold(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.lock.lock().await
    }

    /// A round committed (called while holding the gate), having moved rows as
    /// `moved` says when it wrote one file.
    pub(super) fn advance(&self, moved: Option<super::moved::Moved>) {
        if let Some(m) = moved {
            self.moves.push(m);
        }
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// Where this table's rounds hand their moves to its key index.
    pub fn moves(&self) -> std::sync::Arc<super::moved::Moves> {
        self.moves.clone()
    }
}

/// What the rounds on one table did.
#[derive(Debug, Default, Clone, Copy)]
pub struct CompactReport {
    pub rounds: usize,
    pub files_removed: usize,
    pub files_written: usize,
    pub rows_written: u64,
    /// Rows of removed files their deletion vectors marked, left out.
    pub rows_dropped: u64,
}

/// How much of a look [`compact`] may do.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Rounds per look (so one look at a busy table ends).
    pub rounds: usize,
    /// Files per round.
    pub files: usize,
    /// Files at least this big are left alone (at most the policy's `file_size`).
    pub small_below: u64,
}

/// Compacts `table` by `policy` until fewer than `min_files` small files remain,
/// within `limits`; each round's commit holds `gate` when there is one.
pub async fn compact(
    mut table: DeltaTable,
    policy: &CompactionPolicy,
    limits: Limits,
    gate: Option<&Gate>,
) -> Result<(DeltaTable, CompactReport), DeltaTableError> {
    let max_rounds = limits.rounds;
    let mut report = CompactReport::default();
    while report.rounds < max_rounds {
        if table.version().is_none() {
            break;
        }
        let chosen = choose(&table, policy, &limits)?;
        if chosen.is_empty() {
            break;
        }
        let (next, rewritten) = purge::rewrite(table, &chosen, policy.file_size, gate).await?;
        table = next;
        report.rounds += 1;
        report.files_removed += chosen.len();
        report.files_written += rewritten.files_written;
        report.rows_written += rewritten.rows_written;
        report.rows_dropped += rewritten.rows_dropped;
    }
    Ok((table, report))
}

/// The files of one round: when at least `min_files` files are small, the smallest
/// ones of the partition holding the most of them, up to `file_size` bytes (at least
/// two, or a round would only copy a file), less the largest ones while each is larger
/// than the rest together. One partition per round, so a round always turns several
/// files into one.
fn choose(
    table: &DeltaTable,
    policy: &CompactionPolicy,
    limits: &Limits,
) -> Result<Vec<Add>, DeltaTableError> {
    let max_files = limits.files.max(2);
    let below = limits.small_below.min(policy.file_size);
    let small = purge::live_adds(table, |a| (a.size.max(0) as u64) < below)?;
    if small.len() < policy.min_files.max(2) {
        return Ok(Vec::new());
    }
    let mut by_partition: BTreeMap<Vec<(String, Option<String>)>, Vec<Add>> = BTreeMap::new();
    for add in small {
        let mut key: Vec<(String, Option<String>)> = add
            .partition_values
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        key.sort();
        by_partition.entry(key).or_default().push(add);
    }
    let Some(files) = by_partition.into_values().max_by_key(Vec::len) else {
        return Ok(Vec::new());
    };
    if files.len() < 2 {
        return Ok(Vec::new());
    }
    Ok(pick(files, max_files, policy.file_size))
}

/// The files of a round among one partition's small `files`: see [`choose`].
fn pick(mut files: Vec<Add>, max_files: usize, file_size: u64) -> Vec<Add> {
    files.sort_by_key(|a| (a.size, a.modification_time));
    let mut bytes = 0u64;
    let mut chosen = Vec::new();
    for add in files {
        let size = add.size.max(0) as u64;
        if chosen.len() >= max_files || (chosen.len() >= 2 && bytes + size > file_size) {
            break;
        }
        bytes += size;
        chosen.push(add);
    }
    // The largest file waits until the others together are as big: merged with a few
    // new small files every round, a file just under the threshold (a small mirror's
    // whole table) was rewritten every look. So a row is rewritten about log2(file
    // size / small file size) times, not once per round.
    while chosen.len() > 2 {
        let largest = chosen.last().map_or(0, |a| a.size.max(0) as u64);
        if largest <= bytes - largest {
            break;
        }
        bytes -= largest;
        chosen.pop();
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(sizes: &[i64]) -> Vec<Add> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| Add {
                path: format!("f{i}"),
                size,
                ..Default::default()
            })
            .collect()
    }

    fn sizes(chosen: &[Add]) -> Vec<i64> {
        chosen.iter().map(|a| a.size).collect()
    }

    #[test]
    fn a_large_file_waits_until_the_small_ones_add_up_to_it() {
        // A mirror's whole table (5 MB) and forty new files of changed rows.
        let mut round = vec![5_000_000];
        round.extend([20_000; 40]);
        assert_eq!(sizes(&pick(files(&round), 64, 48 << 20)), vec![20_000; 40]);
        // Once they do, it goes along.
        let mut round = vec![5_000_000, 4_000_000];
        round.extend([20_000; 50]);
        assert_eq!(pick(files(&round), 64, 48 << 20).len(), 52);
    }

    #[test]
    fn rounds_respect_the_file_count_and_size_and_take_at_least_two() {
        assert_eq!(pick(files(&[30; 100]), 64, 48 << 20).len(), 64);
        assert_eq!(sizes(&pick(files(&[10, 20, 40, 30]), 64, 60)), vec![10, 20, 30]);
        // Two files always make a round, however unequal.
        assert_eq!(
            sizes(&pick(files(&[1_000_000, 10]), 64, 48 << 20)),
            vec![10, 1_000_000]
        );
        assert_eq!(
            sizes(&pick(files(&[1_000_000, 10, 20]), 64, 48 << 20)),
            vec![10, 20]
        );
    }
}
