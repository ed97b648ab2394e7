//! The background compaction task of a continuous run (`[sink.compaction]`).
//!
//! One task for the pipeline: every `every`, it looks at each table in turn and
//! compacts it by the policy ([`crate::sink::compact`]), with its own handle of each
//! table. Append tables are compacted beside their ingest commits: those only add
//! files, so whichever commits second rebases over the other (that module tells why
//! neither can lose or double a row). A mirror's commits re-mark rows of files all
//! over the table, so a round racing them nearly always loses (measured: a pgbench
//! accounts mirror went from 0 to 1,032 files in 5 minutes with every round refused).
//! A mirror therefore has a [`Gate`]: a round takes it, and the ingest waits for it
//! before committing, then re-reads the table if a round committed meanwhile. Rounds
//! on a gated table are capped ([`GATED_MAX_FILES`]) and take only files under an
//! eighth of `file_size` (a mirror's per-batch files of changed rows, not the files of
//! its snapshot), so the wait stays short: with the snapshot's files counted as small,
//! a 50M-row mirror's ingest waited behind rounds rewriting them and its p99 latency
//! went from 1.6s to 14.8s. A failed
//! look is logged and tried again at the next one. The task ends with the run; a round
//! cut off mid-way leaves only uploaded files no commit names, which `maintain`'s
//! VACUUM deletes.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use deltalake::DeltaTable;

use crate::config::Pipeline;
use crate::sink::compact::{self, CompactionPolicy};
use crate::sink::open_table;
use crate::telemetry;

/// Rounds per table per look: a look at a busy table ends, and the next catches up.
const MAX_ROUNDS: usize = 8;
/// Rounds per look and files per round on a gated table, whose ingest waits for them.
const GATED_MAX_ROUNDS: usize = 2;
pub(super) const GATED_MAX_FILES: usize = 64;

/// Serialises a table's compaction rounds with its ingest commits.
#[derive(Debug, Default)]
pub(super) struct Gate {
    lock: tokio::sync::Mutex<()>,
    /// Rounds committed so far; the ingest re-reads the table when it changed.
    epoch: AtomicU64,
}

impl Gate {
    /// Waits for any round under way; `Some(epoch)` when rounds committed since `seen`.
    pub(super) async fn enter(&self, seen: u64) -> (tokio::sync::MutexGuard<'_, ()>, Option<u64>) {
        let guard = self.lock.lock().await;
        let now = self.epoch.load(Ordering::Acquire);
        (guard, (now != seen).then_some(now))
    }
}

/// Aborts the task when the run ends, however it ends.
#[derive(Debug)]
pub(super) struct Compaction(tokio::task::JoinHandle<()>);

impl Drop for Compaction {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A table to compact: its name, location and, for a mirror, its gate.
type Entry = (String, url::Url, Option<Arc<Gate>>);

/// Starts compacting `pipeline`'s tables, or returns `None` when its policy is off.
/// `gates` are the mirrors' (by table name); keyed aggregates are left to `maintain`.
pub(super) fn spawn(pipeline: &Pipeline, gates: &HashMap<String, Arc<Gate>>) -> Option<Compaction> {
    let policy = pipeline.sink.compaction?;
    let storage = pipeline.sink.storage_options();
    let keyed: Vec<&str> = pipeline
        .aggregates
        .iter()
        .filter(|a| a.keyed())
        .map(|a| a.name.as_str())
        .collect();
    let tables: Vec<Entry> = pipeline
        .table_names()
        .filter(|n| !keyed.contains(n))
        .map(|n| (n.to_string(), pipeline.sink.table_url(n), gates.get(n).cloned()))
        .collect();
    Some(Compaction(tokio::spawn(run(tables, storage, policy))))
}

async fn run(tables: Vec<Entry>, storage: HashMap<String, String>, policy: CompactionPolicy) {
    let mut open: HashMap<String, DeltaTable> = HashMap::new();
    let mut tick = tokio::time::interval(policy.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        for (name, url, gate) in &tables {
            let _held = match gate {
                Some(g) => Some(g.lock.lock().await),
                None => None,
            };
            let limits = match gate {
                Some(_) => compact::Limits {
                    rounds: GATED_MAX_ROUNDS,
                    files: GATED_MAX_FILES,
                    small_below: policy.file_size / 8,
                },
                None => compact::Limits {
                    rounds: MAX_ROUNDS,
                    files: usize::MAX,
                    small_below: policy.file_size,
                },
            };
            let table = match open.remove(name) {
                Some(mut t) => t.update_incremental(None).await.map(|()| t),
                None => open_table(url.clone(), storage.clone()).await,
            };
            let outcome = match table {
                Ok(t) => compact::compact(t, &policy, limits).await,
                Err(e) => Err(e),
            };
            match outcome {
                Ok((t, report)) => {
                    if report.rounds > 0 {
                        if let Some(g) = gate {
                            g.epoch.fetch_add(1, Ordering::AcqRel);
                        }
                        tracing::info!(
                            table = %name,
                            rounds = report.rounds,
                            files_removed = report.files_removed,
                            files_written = report.files_written,
                            rows = report.rows_written,
                            version = t.version().unwrap_or_default(),
                            "compacted small files"
                        );
                        metrics::counter!(telemetry::COMPACTED_FILES, "table" => name.clone())
                            .increment(report.files_removed as u64);
                    }
                    open.insert(name.clone(), t);
                }
                // Most often an ingest commit that changed the same files first.
                Err(e) => {
                    tracing::info!(table = %name, error = %e, "compaction skipped: trying again at the next look")
                }
            }
        }
    }
}
