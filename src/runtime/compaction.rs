//! The background compaction task of a continuous run (`[sink.compaction]`).
//!
//! One task for the pipeline: every `every`, it looks at each table in turn and
//! compacts it by the policy ([`crate::sink::compact`]), with its own handle of each
//! table. Append tables are compacted beside their ingest commits: those only add
//! files, so whichever commits second rebases over the other (that module tells why
//! neither can lose or double a row). A mirror's commits re-mark rows of files all
//! over the table, so a round racing them nearly always loses (measured: a pgbench
//! accounts mirror went from 0 to 1,032 files in 5 minutes with every round refused).
//! A mirror therefore has a [`Gate`]: a round reads and writes without it and takes it
//! only to commit (carrying over rows the mirror deleted from its files meanwhile, see
//! [`crate::sink::purge::Prepared::commit`]); the ingest waits for it before
//! committing, then re-reads the table if a round committed meanwhile. Rounds on a
//! gated table are capped ([`GATED_MAX_FILES`]) and take only files under an eighth of
//! `file_size` (a mirror's per-batch files of changed rows, not the files of its
//! snapshot): with the snapshot's files counted as small, a 50M-row mirror's ingest
//! waited behind rounds rewriting them (then under the gate) and its p99 latency went
//! from 1.6s to 14.8s. A failed
//! look is logged and tried again at the next one. The task ends with the run; a round
//! cut off mid-way leaves only uploaded files no commit names, which `maintain`'s
//! VACUUM deletes.
//!
//! The task also deletes expired log entries (older than the table's
//! `delta.logRetentionDuration` and a checkpoint), at most every [`LOG_CLEANUP_EVERY`]:
//! finding them lists the whole `_delta_log`, which delta-rs otherwise does after every
//! commit and which grew a Kafka → S3 run's commit latency with its history. A cleanup
//! cut off deletes only entries no reader needs (they are before a checkpoint).

use std::collections::HashMap;
use std::sync::Arc;

use deltalake::DeltaTable;

use crate::config::Pipeline;
use crate::sink::compact::{self, CompactionPolicy, Gate};
use crate::sink::open_table;
use crate::telemetry;

/// How often a table's expired log entries are looked for.
const LOG_CLEANUP_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);
/// Rounds per table per look: a look at a busy table ends, and the next catches up.
const MAX_ROUNDS: usize = 8;
/// Rounds per look and files per round on a gated table, whose ingest waits for their
/// commits.
const GATED_MAX_ROUNDS: usize = 2;
pub(super) const GATED_MAX_FILES: usize = 64;

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

/// The tables the task looks after (keyed aggregates are left to `maintain`), when
/// `pipeline`'s policy has it on.
pub(super) fn covers(pipeline: &Pipeline) -> Vec<String> {
    if pipeline.sink.compaction.is_none() {
        return Vec::new();
    }
    let keyed: Vec<&str> = pipeline
        .aggregates
        .iter()
        .filter(|a| a.keyed())
        .map(|a| a.name.as_str())
        .collect();
    pipeline
        .table_names()
        .filter(|n| !keyed.contains(n))
        .map(str::to_string)
        .collect()
}

/// Starts compacting `pipeline`'s tables ([`covers`]), or returns `None` when its
/// policy is off. `gates` are the mirrors' (by table name).
pub(super) fn spawn(pipeline: &Pipeline, gates: &HashMap<String, Arc<Gate>>) -> Option<Compaction> {
    let policy = pipeline.sink.compaction?;
    let storage = pipeline.sink.storage_options();
    let tables: Vec<Entry> = covers(pipeline)
        .into_iter()
        .map(|n| {
            let url = pipeline.sink.table_url(&n);
            let gate = gates.get(&n).cloned();
            (n, url, gate)
        })
        .collect();
    Some(Compaction(tokio::spawn(run(tables, storage, policy))))
}

async fn run(tables: Vec<Entry>, storage: HashMap<String, String>, policy: CompactionPolicy) {
    // Each compacted table's series exists from the start, for dashboards and rates.
    for (name, ..) in &tables {
        metrics::counter!(telemetry::COMPACTED_FILES, "table" => name.clone()).increment(0);
    }
    let mut open: HashMap<String, DeltaTable> = HashMap::new();
    let mut cleaned: HashMap<String, tokio::time::Instant> = HashMap::new();
    let mut tick = tokio::time::interval(policy.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        for (name, url, gate) in &tables {
            let limits = match gate {
                Some(_) => compact::Limits {
                    rounds: GATED_MAX_ROUNDS,
                    files: GATED_MAX_FILES,
                    small_below: policy.file_size / 8,
                },
                // A file past half of `file_size` is left as it is: taken again with
                // every few new small files, the files just under `file_size` were
                // rewritten over and over, and a Kafka → S3 run's compaction grew to a
                // round every few seconds and its commit latency to seconds.
                None => compact::Limits {
                    rounds: MAX_ROUNDS,
                    files: usize::MAX,
                    small_below: policy.file_size / 2,
                },
            };
            let table = match open.remove(name) {
                Some(mut t) => t.update_incremental(None).await.map(|()| t),
                None => open_table(url.clone(), storage.clone()).await,
            };
            let outcome = match table {
                Ok(t) => compact::compact(t, &policy, limits, gate.as_deref()).await,
                Err(e) => Err(e),
            };
            match outcome {
                Ok((t, report)) => {
                    if report.rounds > 0 {
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
                    if cleaned
                        .get(name)
                        .is_none_or(|at| at.elapsed() >= LOG_CLEANUP_EVERY)
                    {
                        cleaned.insert(name.clone(), tokio::time::Instant::now());
                        clean_logs(name, &t).await;
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

/// Deletes `table`'s log entries past its log retention that a checkpoint makes
/// unneeded; a failure is logged (the next cleanup finds them again).
async fn clean_logs(name: &str, table: &DeltaTable) {
    let Ok(snapshot) = table.snapshot() else { return };
    let Some(version) = table.version() else { return };
    let retention =
        deltalake::table::config::TablePropertiesExt::log_retention_duration(snapshot.table_config());
    let cutoff = chrono::Utc::now().timestamp_millis() - retention.as_millis() as i64;
    match deltalake::protocol::checkpoints::cleanup_expired_logs_for(
        version,
        table.log_store().as_ref(),
        cutoff,
        None,
    )
    .await
    {
        Ok(0) => {}
        Ok(n) => tracing::info!(table = %name, entries = n, "deleted expired log entries"),
        Err(e) => tracing::warn!(table = %name, error = %e, "expired log entries not deleted"),
    }
}
