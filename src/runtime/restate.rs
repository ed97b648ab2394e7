//! A mirror reconciled after its source restated the whole stream (a Postgres table
//! snapshotted again on demand, `tributary snapshot --table`): rows the mirror holds
//! from before the restatement began are rows the source no longer has (deleted while
//! nobody followed, or tampered with by hand), since every row the source does have
//! was written again since, by a snapshot chunk or by the stream.
//!
//! Crash story: the rows to drop are found when the batch completing the restatement
//! is committed, and go into that same commit as deletes, ahead of its rows. A crash
//! before the commit leaves the table before it: the restart reads that batch again
//! and finds them again. Nothing is written outside the commit.

use std::sync::Arc;

use deltalake::arrow::array::{ArrayRef, RecordBatch, StringArray, new_null_array};
use deltalake::arrow::compute::{cast, concat_batches};
use deltalake::arrow::datatypes::SchemaRef;
use deltalake::datafusion::prelude::{col, lit};
use futures::StreamExt as _;

use super::RunError;
use crate::config::{Pipeline, SourceConfig};
use crate::sink::change::{OP, POSITION, SOURCE};
use crate::sink::{Commit, DeltaSink, Sink as _, SinkError, TableOptions};
use crate::source;

/// Deletes, in the shape of the source's records (`shape`), of every row of the
/// mirror `sink` (keyed by `key`) last written before position `since`; `None` when
/// there is none.
pub(super) async fn stale_rows(
    sink: &DeltaSink,
    key: &[String],
    since: i64,
    shape: &SchemaRef,
    stream: &str,
) -> Result<Option<RecordBatch>, SinkError> {
    let table = sink.table();
    if table.version().is_none() {
        return Ok(None);
    }
    let err = |e: deltalake::DeltaTableError| SinkError::Delta {
        table: sink.name().to_string(),
        source: e,
    };
    let df = crate::sink::scan(table)
        .await
        .map_err(err)?
        .filter(col(POSITION).lt(lit(since)))
        .and_then(|df| df.select_columns(&key.iter().map(String::as_str).collect::<Vec<_>>()))
        .map_err(|e| err(e.into()))?;
    let mut stream_rows = df.execute_stream().await.map_err(|e| err(e.into()))?;
    let mut found = Vec::new();
    while let Some(b) = stream_rows.next().await {
        let b = b.map_err(|e| err(e.into()))?;
        if b.num_rows() > 0 {
            found.push(b);
        }
    }
    let Some(first) = found.first() else {
        return Ok(None);
    };
    let keys = concat_batches(&first.schema(), &found).map_err(|e| err(e.into()))?;
    let n = keys.num_rows();
    tracing::info!(
        table = sink.name(),
        rows = n,
        "dropping rows the source no longer has"
    );
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(shape.fields().len());
    for f in shape.fields() {
        let column: ArrayRef = match f.name().as_str() {
            OP => Arc::new(StringArray::from(vec!["d"; n])),
            POSITION => Arc::new(deltalake::arrow::array::Int64Array::from(vec![since - 1; n])),
            SOURCE => Arc::new(StringArray::from(vec![stream; n])),
            name => match keys.schema().index_of(name) {
                Ok(i) => cast(keys.column(i), f.data_type()).map_err(|e| err(e.into()))?,
                Err(_) => new_null_array(f.data_type(), n),
            },
        };
        columns.push(column);
    }
    RecordBatch::try_new(shape.clone(), columns)
        .map(Some)
        .map_err(|e| err(e.into()))
}

/// `tributary snapshot --table`: marks the tables `names` (and every table fed by the
/// same stream) so that the next run copies those again, in chunks, while the others
/// skip the copy; a mirror asked for is then reconciled ([`stale_rows`]). Returns
/// what was marked, per table.
pub async fn take_again(pipeline: &Pipeline, names: &[String]) -> Result<Vec<String>, RunError> {
    let invalid = |message: String| RunError::Pipeline {
        file: pipeline.file.clone(),
        key: "--table".into(),
        message,
    };
    let SourceConfig::Postgres(pg) = &pipeline.source else {
        return Err(invalid(
            "only tables of a Postgres source can be snapshotted again".into(),
        ));
    };
    let cursor = source::postgres::snapshot_shard(&pg.slot);
    let shards = vec![pg.slot.clone(), cursor.clone()];
    let mut streams: Vec<String> = Vec::new();
    for name in names {
        let Some(t) = pipeline.tables.iter().find(|t| t.name == *name) else {
            return Err(invalid(format!("no [[tables]] entry is named \"{name}\"")));
        };
        if !streams.contains(&t.from) {
            streams.push(t.from.clone());
        }
    }
    let mut marked = Vec::new();
    for stream in streams {
        if source::postgres::key_of(pg, &stream).await?.is_empty() {
            return Err(invalid(format!(
                "{stream} has no primary key: it can only be snapshotted in one piece, with the \
                 pipeline's tables re-created"
            )));
        }
        let mut sinks = Vec::new();
        for t in pipeline.tables.iter().filter(|t| t.from == stream) {
            // Opened as an append table: only progress is committed here.
            let options = TableOptions::append(pipeline.sink.checkpoint_every);
            let url = pipeline.sink.table_url(&t.name);
            let sink = DeltaSink::open(
                &t.name,
                url,
                pipeline.sink.storage_options(),
                &pipeline.name,
                &shards,
                options,
            )
            .await?;
            sinks.push((names.contains(&t.name), sink));
        }
        let held: Vec<(&crate::progress::Progress, bool)> =
            sinks.iter().map(|(asked, s)| (s.committed(), *asked)).collect();
        let plan =
            source::postgres::take_again(&pg.slot, &held).map_err(|e| invalid(format!("{stream}: {e}")))?;
        for ((asked, sink), step) in sinks.iter_mut().zip(plan) {
            let name = sink.name().to_string();
            let (Some((value, state)), Some(schema)) = (step, sink.schema()) else {
                marked.push(format!(
                    "{name}: nothing committed yet (its rows are copied at its first run)"
                ));
                continue;
            };
            if let Some(state) = state {
                let bytes = serde_json::to_vec(&state).map_err(|e| invalid(e.to_string()))?;
                sink.put_state(&source::cursor_state_key(&cursor, value), bytes.into())
                    .await?;
            }
            sink.commit(Commit {
                batches: vec![RecordBatch::new_empty(schema)],
                parts: None,
                progress: vec![(cursor.clone(), value)],
                info: Default::default(),
                replace: false,
                staged: None,
            })
            .await?;
            marked.push(if *asked {
                format!("{name}: to be snapshotted again")
            } else {
                format!("{name}: keeps its rows (fed by {stream} too)")
            });
        }
    }
    Ok(marked)
}
