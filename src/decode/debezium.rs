//! Debezium change events (`before`, `after`, `op`, `source`, `ts_ms`), decoded as Avro
//! records, → change rows in the layout every `changelog` and `mirror` table takes
//! ([`crate::sink::change`]): `_op`, `_position`, `_commit_ts`, `_source`, then the row
//! image (`after`, or `before` for a delete), column by column with Arrow kernels.

use std::sync::Arc;

use deltalake::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
    UInt32Array,
};
use deltalake::arrow::compute::kernels::zip::zip;
use deltalake::arrow::compute::take;
use deltalake::arrow::datatypes::{DataType, Int64Type, Schema, SchemaRef};

use crate::sink::change::leading_fields;

/// Checks that `schema` (decoded from the reader schema) is a Debezium envelope and
/// returns the change-row schema it yields.
pub fn change_schema(envelope: &Schema) -> Result<SchemaRef, String> {
    let image = image_fields(envelope)?;
    let mut fields = leading_fields();
    fields.extend(image.iter().map(|f| f.as_ref().clone()));
    Ok(Arc::new(Schema::new(fields)))
}

fn image_fields(envelope: &Schema) -> Result<deltalake::arrow::datatypes::Fields, String> {
    let struct_of = |name: &str| match envelope.field_with_name(name).map(|f| f.data_type()) {
        Ok(DataType::Struct(f)) => Ok(f.clone()),
        Ok(t) => Err(format!(
            "a Debezium envelope's `{name}` must be a record, not {t}"
        )),
        Err(_) => Err(format!(
            "a Debezium envelope has a `{name}` field; the reader schema has none"
        )),
    };
    let after = struct_of("after")?;
    let before = struct_of("before")?;
    if after != before {
        return Err("a Debezium envelope's `before` and `after` must be the same record".into());
    }
    match envelope.field_with_name("op").map(|f| f.data_type()) {
        Ok(DataType::Utf8) => {}
        _ => return Err("a Debezium envelope has a string `op` field; the reader schema has none".into()),
    }
    Ok(after)
}

/// The change rows of an envelope batch.
#[derive(Debug)]
pub struct Changes {
    pub batch: RecordBatch,
    /// For each row of `batch`, its envelope's row.
    pub kept: Vec<u32>,
    /// Envelopes that are not changes: row and reason.
    pub rejected: Vec<(usize, String)>,
}

/// Change rows of an envelope batch, and the rows that are not changes.
pub fn changes(
    envelopes: &RecordBatch,
    positions: &Int64Array,
    source: &str,
    schema: &SchemaRef,
) -> Result<Changes, String> {
    let n = envelopes.num_rows();
    let col = |name: &str| {
        envelopes
            .column_by_name(name)
            .ok_or_else(|| format!("the envelope has no `{name}`"))
    };
    let after = col("after")?
        .as_struct_opt()
        .ok_or("`after` is not a record")?
        .clone();
    let before = col("before")?
        .as_struct_opt()
        .ok_or("`before` is not a record")?
        .clone();
    let ops = col("op")?
        .as_string_opt::<i32>()
        .ok_or("`op` is not a string")?
        .clone();
    // The commit time: `source.ts_ms` (when the database committed), else `ts_ms`
    // (when the connector saw it).
    let source_ts = envelopes
        .column_by_name("source")
        .and_then(|s| s.as_struct_opt())
        .and_then(|s| s.column_by_name("ts_ms"))
        .and_then(|c| c.as_primitive_opt::<Int64Type>());
    let event_ts = envelopes
        .column_by_name("ts_ms")
        .and_then(|c| c.as_primitive_opt::<Int64Type>());

    let mut keep = Vec::with_capacity(n);
    let mut rejected = Vec::new();
    let mut use_before = Vec::with_capacity(n);
    for i in 0..n {
        let op = if ops.is_null(i) { "" } else { ops.value(i) };
        let image = match op {
            "c" | "u" | "r" => &after,
            "d" => &before,
            other => {
                rejected.push((i, format!("op \"{other}\" is not one of c, u, d, r")));
                continue;
            }
        };
        if image.is_null(i) {
            let which = if op == "d" { "before" } else { "after" };
            rejected.push((i, format!("op \"{op}\" without a `{which}` image")));
            continue;
        }
        keep.push(i as u32);
        use_before.push(op == "d");
    }
    let keep = UInt32Array::from(keep);
    let pick = |a: &dyn Array| take(a, &keep, None).map_err(|e| e.to_string());
    let mask = BooleanArray::from(use_before);
    let before = pick(&before)?;
    let after = pick(&after)?;
    let (before, after) = (before.as_struct(), after.as_struct());
    let commit_ms = match (source_ts, event_ts) {
        (Some(s), _) => Some(pick(s)?),
        (None, Some(e)) => Some(pick(e)?),
        (None, None) => None,
    };
    let commit: TimestampMicrosecondArray = match &commit_ms {
        Some(ms) => ms
            .as_primitive::<Int64Type>()
            .iter()
            .map(|v| v.and_then(|ms| ms.checked_mul(1000)))
            .collect(),
        None => std::iter::repeat_n(None::<i64>, keep.len()).collect(),
    };
    let m = keep.len();
    let mut columns: Vec<ArrayRef> = vec![
        pick(&ops)?,
        pick(positions)?,
        Arc::new(commit.with_timezone("UTC")),
        Arc::new(StringArray::from_iter_values(std::iter::repeat_n(source, m))),
    ];
    for (b, a) in before.columns().iter().zip(after.columns()) {
        columns.push(zip(&mask, b, a).map_err(|e| e.to_string())?);
    }
    let batch = RecordBatch::try_new(schema.clone(), columns).map_err(|e| e.to_string())?;
    Ok(Changes {
        batch,
        kept: keep.values().to_vec(),
        rejected,
    })
}
