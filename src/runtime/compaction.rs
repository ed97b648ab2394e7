//! The background compaction task of a continuous run (`[sink.compaction]`).
//!
//! One task for the pipeline: every `every`, it looks at each table in turn and
//! compacts it by the policy ([`crate::sink::compact`]). It holds its own handle of
//! each table, so it never blocks or reorders the ingest commits; how the two race on
//! the Delta log (and why neither can lose or double a row) is told in that module. A
//! failed look is logged and simply tried again at the next one. The task ends with
//! the run; a round cut off mid-way leaves only uploaded files no commit names, which
//! `maintain`'s VACUUM deletes.

use std::collections::HashMap;

use deltalake::DeltaTable;

use crate::config::Pipeline;
use crate::sink::compact::{self, CompactionPolicy};
use crate::sink::open_table;
use crate::telemetry;

/// Rounds per table per look: a look at a busy table ends, and the next catches up.
const MAX_ROUNDS: usize = 8;

/// Aborts the task when the run ends, however it ends.
#[derive(Debug)]
pub(super) struct Compaction(tokio::task::JoinHandle<()>);

impl Drop for Compaction {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts compacting `pipeline`'s tables, or returns `None` when its policy is off.
pub(super) fn spawn(pipeline: &Pipeline) -> Option<Compaction> {
    let policy = pipeline.sink.compaction?;
    let storage = pipeline.sink.storage_options();
    let tables: Vec<(String, url::Url)> = pipeline
        .table_names()
        .map(|n| (n.to_string(), pipeline.sink.table_url(n)))
        .collect();
    Some(Compaction(tokio::spawn(run(tables, storage, policy))))
}

async fn run(tables: Vec<(String, url::Url)>, storage: HashMap<String, String>, policy: CompactionPolicy) {
    let mut open: HashMap<String, DeltaTable> = HashMap::new();
    let mut tick = tokio::time::interval(policy.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        for (name, url) in &tables {
            let table = match open.remove(name) {
                Some(mut t) => t.update_incremental(None).await.map(|()| t),
                None => open_table(url.clone(), storage.clone()).await,
            };
            let outcome = match table {
                Ok(t) => compact::compact(t, &policy, MAX_ROUNDS).await,
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
