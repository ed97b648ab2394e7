//! The snapshot in one piece (tables without a key, see [`super::incremental`] for
//! the others): every captured table's rows as of one instant, copied with
//! `COPY` inside a transaction that imports the snapshot a temporary replication slot
//! exported. The stream then starts at that slot's consistent point, so each change
//! is either in the copy or in the stream, never both and never neither.
//!
//! A snapshot cannot survive the process (an exported snapshot lives only as long as
//! the session that exported it). An interrupted snapshot is therefore taken again
//! from the start: a [`Control::Reset`] marker first makes every table drop the rows
//! the interrupted attempt committed (the source sends it before [`Snapshot::begin`]'s
//! first chunk).

use std::collections::VecDeque;
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressStyle};

use super::catalog::{ESTIMATE_TIMEOUT, TableInfo, quote_table, size};
use super::changes::{Layout, TableBuffer};
use super::wire::{Conn, parse_lsn, quote_ident, quote_literal};
use super::{BadValues, SNAPSHOT_SPACE, pg};
use crate::config::PostgresDsn;
use crate::source::{SourceBatch, SourceError};

pub(super) struct Snapshot {
    /// The replication session whose temporary slot exported the snapshot; it must
    /// stay open until the copy is done.
    exporter: Option<Conn>,
    copier: Conn,
    /// Where the stream continues once the copy is done.
    pub consistent_point: u64,
    tables: VecDeque<(TableInfo, Arc<Layout>)>,
    current: Option<(TableBuffer, ProgressBar, String)>,
    /// Position of the next chunk (snapshot positions count chunks).
    next: i64,
    shard: Arc<str>,
}

impl Snapshot {
    /// Exports a snapshot and opens the transaction that reads it. `start` is the
    /// first chunk's position: past everything an interrupted attempt committed.
    pub async fn begin(
        dsn: &PostgresDsn,
        tables: Vec<(TableInfo, Arc<Layout>)>,
        start: i64,
        shard: Arc<str>,
    ) -> Result<Snapshot, SourceError> {
        let mut exporter = Conn::connect(dsn, true)
            .await
            .map_err(pg("opening the snapshot session"))?;
        let name = format!("tributary_snapshot_{}", std::process::id());
        let rows = exporter
            .query(&format!(
                "CREATE_REPLICATION_SLOT {} TEMPORARY LOGICAL pgoutput EXPORT_SNAPSHOT",
                quote_ident(&name)
            ))
            .await
            .map_err(pg("creating the temporary slot that exports the snapshot"))?;
        let row = rows.into_iter().next().unwrap_or_default();
        let consistent_point = row
            .get(1)
            .cloned()
            .flatten()
            .and_then(|l| parse_lsn(&l))
            .ok_or_else(|| {
                SourceError::Setup("CREATE_REPLICATION_SLOT returned no consistent point".into())
            })?;
        let snapshot = row
            .get(2)
            .cloned()
            .flatten()
            .ok_or_else(|| SourceError::Setup("CREATE_REPLICATION_SLOT exported no snapshot".into()))?;
        let mut copier = Conn::connect(dsn, false)
            .await
            .map_err(pg("opening the snapshot copy session"))?;
        copier
            .query(&format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
                quote_literal(&snapshot)
            ))
            .await
            .map_err(pg("importing the exported snapshot"))?;
        if i64::try_from(consistent_point).map_or(true, |c| c < SNAPSHOT_SPACE) {
            return Err(SourceError::Setup(format!(
                "consistent point {consistent_point:#x} is below the snapshot position space"
            )));
        }
        tracing::info!(
            consistent_point = %super::wire::format_lsn(consistent_point),
            tables = tables.len(),
            first_position = start,
            "snapshot exported; copying tables"
        );
        Ok(Snapshot {
            exporter: Some(exporter),
            copier,
            consistent_point,
            tables: tables.into(),
            current: None,
            next: start,
            shard,
        })
    }

    /// The next chunk, or `None` when the copy is complete (the caller then hands
    /// over the end-of-snapshot markers).
    pub async fn next(
        &mut self,
        chunk_rows: usize,
        bad: &mut BadValues,
    ) -> Result<Option<SourceBatch>, SourceError> {
        loop {
            if self.current.is_none() {
                let Some((info, layout)) = self.tables.pop_front() else {
                    return Ok(None);
                };
                let columns: Vec<String> = info.columns.iter().map(|(n, _, _)| quote_ident(n)).collect();
                let filter = info
                    .row_filter
                    .as_ref()
                    .map(|f| format!(" WHERE {f}"))
                    .unwrap_or_default();
                // ONLY: a table published by itself does not publish its
                // inheritance children; a partitioned root publishes its partitions.
                let only = if info.partitioned { "" } else { "ONLY " };
                let sql = format!(
                    "COPY (SELECT {} FROM {only}{}{filter}) TO STDOUT",
                    columns.join(", "),
                    quote_table(&info.stream)
                );
                // Only for the progress bar: an estimate that does not come in time is 0
                // (a late answer is skipped by `copy_out`, which waits for its own).
                let estimate = tokio::time::timeout(ESTIMATE_TIMEOUT, size(&mut self.copier, info.oid))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .map_or(0, |(rows, _)| rows);
                self.copier
                    .copy_out(&sql)
                    .await
                    .map_err(pg(format!("copying {}", info.stream)))?;
                let bar = ProgressBar::new(estimate);
                bar.set_style(
                    ProgressStyle::with_template("{msg} {bar:30} {pos}/~{len} rows {per_sec} {elapsed}")
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                bar.set_message(format!("snapshot {}", info.stream));
                self.current = Some((TableBuffer::new(layout), bar, info.stream.clone()));
            }
            let Some((buffer, bar, stream)) = self.current.as_mut() else {
                continue;
            };
            let position = self.next;
            let mut done = false;
            while buffer.len() < chunk_rows {
                match self
                    .copier
                    .copy_row()
                    .await
                    .map_err(pg(format!("copying {stream}")))?
                {
                    Some(line) => buffer
                        .push_copy_line(position, &line, &mut bad.values)
                        .map_err(|e| SourceError::Setup(format!("snapshot of {stream}: {e}")))?,
                    None => {
                        done = true;
                        break;
                    }
                }
            }
            let rows = buffer.take().map_err(SourceError::Setup)?;
            let batch = rows.map(|(records, positions)| {
                bar.inc(records.num_rows() as u64);
                SourceBatch {
                    stream: Arc::from(stream.as_str()),
                    shard: self.shard.clone(),
                    records,
                    positions,
                    next: position + 1,
                    end_of_input: false,
                    rejected: None,
                    control: None,
                    spilled: None,
                    cursor: None,
                }
            });
            if done {
                bar.finish_and_clear();
                tracing::info!(table = %stream, "snapshot copied");
                self.current = None;
            }
            if let Some(batch) = batch {
                self.next += 1;
                if self.next >= SNAPSHOT_SPACE {
                    return Err(SourceError::Setup(
                        "the snapshot has more chunks than positions allow".into(),
                    ));
                }
                return Ok(Some(batch));
            }
        }
    }

    /// Ends the snapshot transaction and drops the temporary slot.
    pub async fn finish(mut self) {
        let _ = self.copier.query("COMMIT").await;
        self.copier.close().await;
        if let Some(e) = self.exporter.take() {
            e.close().await;
        }
    }
}
