//! Change streams: the columns that describe a change, and folding the changes of one
//! micro-batch into one change per key, as a `mirror` table needs them.
//!
//! A change row is the row image (the after image; the before image, or at least the
//! key, for a delete) plus metadata columns. A source fills in what it knows (Postgres:
//! all of them); the runtime adds what is missing ([`crate::runtime`]), so every
//! `changelog` and `mirror` table sees the same layout whatever the source.

use std::sync::Arc;

use deltalake::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, BooleanBuilder, Int64Array, RecordBatch, StringArray,
    UInt32Array, new_null_array,
};
use deltalake::arrow::compute::{interleave, take};
use deltalake::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use deltalake::arrow::row::{RowConverter, SortField};
use hashbrown::HashMap;

/// `c`reate, `u`pdate, `d`elete, `r`ead (a snapshot row) or `t`runcate (the whole
/// table emptied; no row image), as Debezium spells them.
pub const OP: &str = "_op";
/// The source position of the change: LSN or offset, increasing in source order.
pub const POSITION: &str = "_position";
/// When the source committed the change (null when the source has no such time).
pub const COMMIT_TS: &str = "_commit_ts";
/// Where the change came from: table, or topic/partition.
pub const SOURCE: &str = "_source";
/// Columns whose value the source did not send because it did not change (Postgres
/// TOAST): a list of column names, null when every column was sent.
pub const UNCHANGED: &str = "_unchanged";

/// The columns a change row starts with, before its row image: `_op`, `_position`,
/// `_commit_ts`, `_source`.
pub fn leading_fields() -> Vec<Field> {
    vec![
        Field::new(OP, DataType::Utf8, false),
        Field::new(POSITION, DataType::Int64, false),
        Field::new(
            COMMIT_TS,
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
        Field::new(SOURCE, DataType::Utf8, false),
    ]
}

/// Prefix of the per-column "value not sent" flags handed to MERGE.
pub const UNCHANGED_FLAG_PREFIX: &str = "__tributary_unchanged__";

/// Columns of a change row that describe the change rather than the row, and are
/// therefore not columns of a `mirror` table.
pub const NOT_MIRRORED: [&str; 3] = [OP, SOURCE, UNCHANGED];

/// A micro-batch of changes folded to one per key: the last one in source order.
#[derive(Debug)]
pub struct Collapsed {
    /// Row image plus `_op`, `_position`, `_commit_ts` and one boolean flag column
    /// (`{UNCHANGED_FLAG_PREFIX}{column}`) per column whose value some row did not send
    /// and no earlier change in the batch supplied.
    pub batch: RecordBatch,
    /// The columns that have such a flag.
    pub unchanged: Vec<String>,
    /// Rows with `_op = 'd'`.
    pub deletes: usize,
    /// A truncate (`_op = 't'`) came before these changes: every row of the table they
    /// do not touch is gone.
    pub truncated: bool,
}

/// Why changes cannot be folded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChangeError {
    #[error("column {0} is missing")]
    Missing(String),
    #[error("column {column} must be {expected}, not {actual}")]
    Type {
        column: String,
        expected: &'static str,
        actual: String,
    },
    #[error("record at position {position}: key column {column} is null")]
    NullKey { position: i64, column: String },
    #[error("record at position {position}: _op \"{op}\" is not one of c, u, d, r")]
    BadOp { position: i64, op: String },
}

pub(super) fn string_column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a StringArray, ChangeError> {
    let c = batch
        .column_by_name(name)
        .ok_or_else(|| ChangeError::Missing(name.to_string()))?;
    c.as_string_opt::<i32>().ok_or_else(|| ChangeError::Type {
        column: name.to_string(),
        expected: "a string",
        actual: c.data_type().to_string(),
    })
}

/// Folds `batch` (changes in source order) to the last change per `key`.
///
/// A column listed in `_unchanged` takes its value from the latest earlier change to
/// the same key in this batch that sent it; if there is none, its flag tells MERGE to
/// keep the table's current value.
pub fn collapse(batch: &RecordBatch, key: &[String]) -> Result<Collapsed, ChangeError> {
    let ops = string_column(batch, OP)?;
    // Only what follows the last truncate matters, on top of an empty table.
    if let Some(t) = (0..ops.len())
        .rev()
        .find(|&i| ops.is_valid(i) && ops.value(i) == "t")
    {
        let rest = batch.slice(t + 1, batch.num_rows() - t - 1);
        let mut c = collapse(&rest, key)?;
        c.truncated = true;
        return Ok(c);
    }
    let positions = batch
        .column_by_name(POSITION)
        .ok_or_else(|| ChangeError::Missing(POSITION.to_string()))?;
    let positions = positions
        .as_primitive_opt::<deltalake::arrow::datatypes::Int64Type>()
        .ok_or_else(|| ChangeError::Type {
            column: POSITION.to_string(),
            expected: "a 64-bit integer",
            actual: positions.data_type().to_string(),
        })?;
    let key_columns: Vec<ArrayRef> = key
        .iter()
        .map(|k| {
            batch
                .column_by_name(k)
                .cloned()
                .ok_or_else(|| ChangeError::Missing(k.clone()))
        })
        .collect::<Result<_, _>>()?;
    for (k, c) in key.iter().zip(&key_columns) {
        if let Some(i) = (0..c.len()).find(|&i| c.is_null(i)) {
            return Err(ChangeError::NullKey {
                position: positions.value(i),
                column: k.clone(),
            });
        }
    }
    for i in 0..ops.len() {
        match (ops.is_valid(i)).then(|| ops.value(i)) {
            Some("c" | "u" | "r" | "d") => {}
            other => {
                return Err(ChangeError::BadOp {
                    position: positions.value(i),
                    op: other.unwrap_or("null").to_string(),
                });
            }
        }
    }

    // Row-format keys compare and hash as bytes, whatever the key's types.
    let converter = RowConverter::new(
        key_columns
            .iter()
            .map(|c| SortField::new(c.data_type().clone()))
            .collect(),
    )
    .map_err(|e| ChangeError::Type {
        column: key.join(","),
        expected: "a comparable type",
        actual: e.to_string(),
    })?;
    let rows = converter
        .convert_columns(&key_columns)
        .map_err(|e| ChangeError::Type {
            column: key.join(","),
            expected: "a comparable type",
            actual: e.to_string(),
        })?;
    let n = batch.num_rows();
    let mut last: HashMap<&[u8], u32> = HashMap::with_capacity(n);
    // Previous change to the same key, for filling unsent values.
    let mut prev: Vec<Option<u32>> = Vec::new();
    let unchanged = batch
        .column_by_name(UNCHANGED)
        .filter(|c| c.null_count() < c.len())
        .cloned();
    if unchanged.is_some() {
        prev.reserve(n);
    }
    for i in 0..n {
        let before = last.insert(rows.row(i).data(), i as u32);
        if unchanged.is_some() {
            prev.push(before);
        }
    }
    let mut chosen: Vec<u32> = last.into_values().collect();
    chosen.sort_unstable();
    let indices = UInt32Array::from(chosen);
    let deletes = indices
        .values()
        .iter()
        .filter(|&&i| ops.value(i as usize) == "d")
        .count();

    let Some(unchanged) = unchanged else {
        let batch = take_batch(batch, &indices)?;
        return Ok(Collapsed {
            batch,
            unchanged: Vec::new(),
            deletes,
            truncated: false,
        });
    };
    fill_unchanged(batch, &indices, &prev, ops, unchanged.as_ref(), deletes)
}

fn take_batch(batch: &RecordBatch, indices: &UInt32Array) -> Result<RecordBatch, ChangeError> {
    let columns = batch
        .columns()
        .iter()
        .map(|c| take(c.as_ref(), indices, None))
        .collect::<Result<Vec<_>, _>>()
        .map_err(arrow_error)?;
    RecordBatch::try_new(batch.schema(), columns).map_err(arrow_error)
}

fn arrow_error(e: deltalake::arrow::error::ArrowError) -> ChangeError {
    ChangeError::Type {
        column: "(batch)".into(),
        expected: "consistent columns",
        actual: e.to_string(),
    }
}

/// Names listed in row `i` of the `_unchanged` column.
fn unsent(unchanged: &dyn Array, i: usize) -> Vec<String> {
    if unchanged.is_null(i) {
        return Vec::new();
    }
    let list = match unchanged.data_type() {
        DataType::List(_) => unchanged.as_list::<i32>().value(i),
        DataType::LargeList(_) => unchanged.as_list::<i64>().value(i),
        _ => return Vec::new(),
    };
    list.as_string_opt::<i32>()
        .map(|s| s.iter().flatten().map(str::to_string).collect())
        .unwrap_or_default()
}

/// The rare path: some chosen rows did not send some columns. Each such column is
/// gathered with its own indices (an earlier change that sent it), and what no earlier
/// change sent is flagged for MERGE to keep.
fn fill_unchanged(
    batch: &RecordBatch,
    indices: &UInt32Array,
    prev: &[Option<u32>],
    ops: &StringArray,
    unchanged: &dyn Array,
    deletes: usize,
) -> Result<Collapsed, ChangeError> {
    let schema = batch.schema();
    // Per column: source row for each output row, and whether it is still unsent.
    let mut sources: Vec<Vec<u32>> = vec![indices.values().to_vec(); batch.num_columns()];
    let mut still_unsent: Vec<Option<Vec<bool>>> = vec![None; batch.num_columns()];
    for (out, &i) in indices.values().iter().enumerate() {
        let missing = unsent(unchanged, i as usize);
        for name in missing {
            let Ok(c) = schema.index_of(&name) else { continue };
            // Walk back through earlier changes to this key until one sent `name`.
            let mut j = prev[i as usize];
            let mut found = None;
            while let Some(k) = j {
                if ops.value(k as usize) == "d" {
                    break;
                }
                if !unsent(unchanged, k as usize).contains(&name) {
                    found = Some(k);
                    break;
                }
                j = prev[k as usize];
            }
            match found {
                Some(k) => sources[c][out] = k,
                None => {
                    still_unsent[c].get_or_insert_with(|| vec![false; indices.len()])[out] = true;
                }
            }
        }
    }
    let mut columns = Vec::with_capacity(batch.num_columns());
    for (c, column) in batch.columns().iter().enumerate() {
        let pairs: Vec<(usize, usize)> = sources[c].iter().map(|&r| (0, r as usize)).collect();
        columns.push(interleave(&[column.as_ref()], &pairs).map_err(arrow_error)?);
    }
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    let mut flagged = Vec::new();
    for (c, flags) in still_unsent.into_iter().enumerate() {
        let Some(flags) = flags else { continue };
        let name = schema.field(c).name().clone();
        fields.push(Field::new(
            format!("{UNCHANGED_FLAG_PREFIX}{name}"),
            DataType::Boolean,
            false,
        ));
        let mut b = BooleanBuilder::with_capacity(flags.len());
        b.append_slice(&flags);
        columns.push(Arc::new(b.finish()) as ArrayRef);
        flagged.push(name);
    }
    let schema: SchemaRef = Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()));
    let batch = RecordBatch::try_new(schema, columns).map_err(arrow_error)?;
    Ok(Collapsed {
        batch,
        unchanged: flagged,
        deletes,
        truncated: false,
    })
}

/// `records` (at `positions`, read from `source`) with the change columns it lacks:
/// `_op = 'c'` (a stream of plain records only ever adds), `_position` from the
/// source, `_commit_ts` NULL (the source knows no commit time), `_source` the shard.
/// Columns the source already provides are kept as they are.
pub fn with_change_columns(records: &RecordBatch, positions: &Int64Array, source: &str) -> RecordBatch {
    let n = records.num_rows();
    let schema = records.schema();
    let mut fields: Vec<Field> = Vec::with_capacity(records.num_columns() + 4);
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(records.num_columns() + 4);
    let utc = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    let mut add = |name: &str, t: DataType, nullable: bool, make: &dyn Fn() -> ArrayRef| {
        if schema.column_with_name(name).is_none() {
            fields.push(Field::new(name, t, nullable));
            columns.push(make());
        }
    };
    add(OP, DataType::Utf8, false, &|| {
        Arc::new(StringArray::from_iter_values(std::iter::repeat_n("c", n)))
    });
    add(POSITION, DataType::Int64, false, &|| Arc::new(positions.clone()));
    add(COMMIT_TS, utc.clone(), true, &|| new_null_array(&utc, n));
    add(SOURCE, DataType::Utf8, false, &|| {
        Arc::new(StringArray::from_iter_values(std::iter::repeat_n(source, n)))
    });
    if fields.is_empty() {
        return records.clone();
    }
    fields.extend(schema.fields().iter().map(|f| f.as_ref().clone()));
    columns.extend(records.columns().iter().cloned());
    RecordBatch::try_new(
        Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone())),
        columns,
    )
    .unwrap_or_else(|_| records.clone())
}

/// `true` for each row whose `_op` is a delete.
pub fn delete_mask(batch: &RecordBatch) -> Option<BooleanArray> {
    let ops = batch.column_by_name(OP)?.as_string_opt::<i32>()?;
    Some(ops.iter().map(|o| Some(o == Some("d"))).collect())
}

#[cfg(test)]
mod tests;
