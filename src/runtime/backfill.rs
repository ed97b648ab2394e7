//! `tributary backfill`: an aggregate recomputed from the Delta table that keeps its raw
//! stream (the cold path), with the same operator the streaming run uses.
//!
//! Every row of the table is folded in before any window closes, so nothing is late: the
//! result equals the streamed aggregate whenever the stream had no late events, and is
//! the complete answer when it had.

use deltalake::arrow::array::{Int64Array, RecordBatch};
use deltalake::arrow::compute::concat_batches;
use futures::StreamExt;

use super::RunError;
use crate::config::{AggregateConfig, EmitMode, LatePolicy, Pipeline, TableMode};
use crate::sink::{Commit, DeltaSink, Sink, SinkError, TableOptions, open_table};
use crate::window;

/// What a backfill read and wrote.
#[derive(Debug, Clone)]
pub struct BackfillReport {
    pub from: String,
    pub into: String,
    pub rows_read: u64,
    pub rows_written: u64,
    pub version: Option<u64>,
}

fn invalid(pipeline: &Pipeline, key: &str, message: String) -> RunError {
    RunError::Pipeline {
        file: pipeline.file.clone(),
        key: key.to_string(),
        message,
    }
}

/// Recomputes aggregate `name` of `pipeline` from table `from` (default: the pipeline's
/// append or changelog table of the aggregate's stream) into table `into` (default
/// `{name}_backfill`), replacing what that table held.
pub async fn backfill(
    pipeline: &Pipeline,
    name: &str,
    from: Option<&str>,
    into: Option<&str>,
) -> Result<BackfillReport, RunError> {
    let cfg = pipeline
        .aggregates
        .iter()
        .find(|a| a.name == name)
        .ok_or_else(|| {
            let known: Vec<&str> = pipeline.aggregates.iter().map(|a| a.name.as_str()).collect();
            invalid(
                pipeline,
                "aggregates",
                format!("no aggregate \"{name}\" (the pipeline has: {})", known.join(", ")),
            )
        })?;
    let from = match from {
        Some(f) => f.to_string(),
        None => pipeline
            .tables
            .iter()
            .find(|t| t.from == cfg.from && t.mode != TableMode::Mirror)
            .map(|t| t.name.clone())
            .ok_or_else(|| {
                invalid(
                    pipeline,
                    "tables",
                    format!(
                        "no table keeps every record of \"{}\": add a [[tables]] entry with mode \
                         \"append\" or \"changelog\" from it, or name one with --from",
                        cfg.from
                    ),
                )
            })?,
    };
    let into = into.map_or_else(|| format!("{name}_backfill"), str::to_string);
    if pipeline.table_names().any(|t| t == into) {
        return Err(invalid(
            pipeline,
            "--into",
            format!("\"{into}\" is a table the pipeline writes; backfill into a table of its own"),
        ));
    }
    let storage = pipeline.sink.storage_options();
    let delta_err = |table: &str| {
        let table = table.to_string();
        move |source: deltalake::DeltaTableError| SinkError::Delta { table, source }
    };
    let table = open_table(pipeline.sink.table_url(&from), storage.clone())
        .await
        .map_err(delta_err(&from))?;
    if table.version().is_none() {
        return Err(invalid(
            pipeline,
            "--from",
            format!("table \"{from}\" does not exist yet"),
        ));
    }
    // The final values of every window: the same rows an `update` table converges to.
    let cold = AggregateConfig {
        emit: EmitMode::Final,
        late: LatePolicy::Drop,
        late_table: None,
        ..cfg.clone()
    };
    let df = crate::sink::scan(&table).await.map_err(delta_err(&from))?;
    let mut stream = df
        .execute_stream()
        .await
        .map_err(|e| delta_err(&from)(e.into()))?;
    let mut op = None;
    let mut rows_read = 0u64;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|e| delta_err(&from)(e.into()))?;
        let op = match &mut op {
            Some(op) => op,
            None => op.insert(window::build(&cold, &batch.schema())?),
        };
        rows_read += batch.num_rows() as u64;
        let positions = Int64Array::from(vec![0; batch.num_rows()]);
        op.process_batch("backfill", &batch, &positions)?;
    }
    let Some(mut op) = op else {
        return Err(invalid(
            pipeline,
            "--from",
            format!("table \"{from}\" has no rows"),
        ));
    };
    let out: Vec<RecordBatch> = op.on_close()?.into_iter().collect();
    let schema = op.output_schema();
    let mut rows = concat_batches(&schema, &out).map_err(|e| delta_err(&into)(e.into()))?;
    // A global window's rows are upserts (`_op`); a recomputation only has final rows.
    if let Ok(i) = schema.index_of(window::OP_COLUMN) {
        rows.remove_column(i);
    }
    let mut sink = DeltaSink::open(
        &into,
        pipeline.sink.table_url(&into),
        storage,
        &pipeline.name,
        &[],
        TableOptions::append(pipeline.sink.checkpoint_every),
    )
    .await?;
    let rows_written = rows.num_rows() as u64;
    let committed = sink
        .commit(Commit {
            batches: vec![rows],
            parts: None,
            progress: Vec::new(),
            info: Default::default(),
            replace: true,
            staged: None,
        })
        .await?;
    Ok(BackfillReport {
        from,
        into,
        rows_read,
        rows_written,
        version: match committed {
            crate::sink::Committed::Version(v) => Some(v),
            crate::sink::Committed::AlreadyThere => None,
        },
    })
}
