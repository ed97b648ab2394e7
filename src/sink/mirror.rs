//! `mirror` tables: one Delta MERGE per micro-batch, keyed by the table's key.
//!
//! The batch is first folded to one change per key ([`super::change::collapse`]), so
//! MERGE never sees two source rows for one target row. Then: a delete removes the
//! row, anything else upserts it, and a column the source did not send (Postgres
//! TOAST) keeps the table's value.

use deltalake::DeltaTable;
use deltalake::arrow::array::{ArrayRef, RecordBatch};
use deltalake::arrow::datatypes::{Field, Schema, SchemaRef};
use deltalake::datafusion::common::Column;
use deltalake::datafusion::logical_expr::{Expr, Operator, binary_expr, case, lit};
use deltalake::datafusion::prelude::SessionContext;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::operations::merge::MergeMetrics;
use deltalake::parquet::file::properties::WriterProperties;
use std::sync::Arc;

use super::change::{Collapsed, OP, UNCHANGED_FLAG_PREFIX};
use super::schema::conform;

const SOURCE: &str = "s";
const TARGET: &str = "t";

fn source(column: &str) -> Expr {
    Expr::Column(Column::new(Some(SOURCE), column))
}

fn target(column: &str) -> Expr {
    Expr::Column(Column::new(Some(TARGET), column))
}

/// What one MERGE needs besides the table.
pub struct MergeSpec<'a> {
    pub key: &'a [String],
    /// The table's schema after this commit (columns the batch adds included).
    pub schema: &'a SchemaRef,
    /// Whether `schema` adds columns, so MERGE must evolve the table.
    pub evolve: bool,
    /// Match keys with `IS NOT DISTINCT FROM` (null equals null).
    pub null_safe: bool,
    pub props: CommitProperties,
    pub writer: WriterProperties,
}

/// Merges `changes` into `table` in one commit carrying `spec.props`.
pub async fn merge(
    table: DeltaTable,
    changes: Collapsed,
    spec: MergeSpec<'_>,
) -> deltalake::DeltaResult<(DeltaTable, MergeMetrics)> {
    let Collapsed {
        batch,
        unchanged,
        truncated,
        ..
    } = changes;
    let source_batch = merge_source(&batch, spec.schema, &unchanged)?;
    let ctx = SessionContext::new();
    let df = ctx.read_batch(source_batch)?;

    let on = spec
        .key
        .iter()
        .map(|k| {
            if spec.null_safe {
                binary_expr(target(k), Operator::IsNotDistinctFrom, source(k))
            } else {
                target(k).eq(source(k))
            }
        })
        .reduce(Expr::and)
        .unwrap_or_else(|| lit(false));
    let is_delete = source(OP).eq(lit("d"));
    let columns: Vec<String> = spec.schema.fields().iter().map(|f| f.name().clone()).collect();
    let unchanged_value = |c: &str| -> Expr {
        if unchanged.iter().any(|u| u == c) {
            case(source(&format!("{UNCHANGED_FLAG_PREFIX}{c}")))
                .when(lit(true), target(c))
                .otherwise(source(c))
                .unwrap_or_else(|_| source(c))
        } else {
            source(c)
        }
    };
    let mut merge = table
        .merge(df, on)
        .with_source_alias(SOURCE)
        .with_target_alias(TARGET)
        .with_merge_schema(spec.evolve)
        .with_commit_properties(spec.props)
        .with_writer_properties(spec.writer)
        .when_matched_delete(|d| d.predicate(is_delete.clone()))?
        .when_matched_update(|mut u| {
            u = u.predicate(source(OP).not_eq(lit("d")));
            for c in &columns {
                if !spec.key.contains(c) {
                    u = u.update(Column::new_unqualified(c), unchanged_value(c));
                }
            }
            u
        })?
        .when_not_matched_insert(|mut i| {
            i = i.predicate(source(OP).not_eq(lit("d")));
            for c in &columns {
                i = i.set(Column::new_unqualified(c), source(c));
            }
            i
        })?;
    if truncated {
        // The table was emptied before these changes: what they do not touch is gone.
        merge = merge.when_not_matched_by_source_delete(|d| d)?;
    }
    merge.await
}

/// The MERGE source: the table's columns (conformed to its schema), `_op`, and the
/// "value not sent" flags.
fn merge_source(
    batch: &RecordBatch,
    schema: &SchemaRef,
    unchanged: &[String],
) -> deltalake::DeltaResult<RecordBatch> {
    let rows = conform(batch, schema)?;
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    let mut columns: Vec<ArrayRef> = rows.columns().to_vec();
    let extra = std::iter::once(OP.to_string())
        .chain(unchanged.iter().map(|c| format!("{UNCHANGED_FLAG_PREFIX}{c}")));
    for name in extra {
        let (i, f) = batch
            .schema()
            .column_with_name(&name)
            .map(|(i, f)| (i, f.clone()))
            .ok_or_else(|| deltalake::DeltaTableError::Generic(format!("change column {name} is missing")))?;
        fields.push(f);
        columns.push(batch.column(i).clone());
    }
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?)
}
