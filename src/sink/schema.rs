//! Schema evolution: what a table's schema becomes when a batch arrives, and the batch
//! reshaped to it.
//!
//! Additive changes are taken in the same commit as the rows: a new column becomes a
//! new nullable column (old rows read NULL), a column a batch lacks is written as NULL,
//! and a value that fits the table's type losslessly (int32 into int64) is cast. Any
//! other change is an [`Incompatible`] naming the column and both types, because
//! rewriting a table's history is a decision for a person, not a pipeline.

use std::sync::Arc;

use deltalake::arrow::array::{RecordBatch, new_null_array};
use deltalake::arrow::compute::{CastOptions, cast_with_options};
use deltalake::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use deltalake::arrow::error::ArrowError;

/// A column whose new type the table cannot hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("column {column}: the table has {old}, the records have {new}")]
pub struct Incompatible {
    pub column: String,
    pub old: String,
    pub new: String,
}

/// Whether every value of type `from` is a value of type `to`.
fn widens(from: &DataType, to: &DataType) -> bool {
    use DataType::*;
    match (from, to) {
        (a, b) if a == b => true,
        (Null, _) => true,
        (Int8, Int16 | Int32 | Int64) | (Int16, Int32 | Int64) | (Int32, Int64) => true,
        (UInt8, Int16 | Int32 | Int64) | (UInt16, Int32 | Int64) | (UInt32, Int64) => true,
        (Float16, Float32 | Float64) | (Float32, Float64) => true,
        (Int8 | Int16 | UInt8 | UInt16, Float32 | Float64) | (Int32 | UInt32, Float64) => true,
        (Utf8 | LargeUtf8 | Utf8View, Utf8 | LargeUtf8 | Utf8View) => true,
        (Binary | LargeBinary | BinaryView, Binary | LargeBinary | BinaryView) => true,
        (Timestamp(_, _), Timestamp(_, _)) => true,
        // Nested types match by element and child types; the names Arrow writers give
        // list elements ("item", "element") do not matter.
        (List(a) | LargeList(a), List(b) | LargeList(b)) => widens(a.data_type(), b.data_type()),
        (Struct(a), Struct(b)) => {
            a.len() == b.len()
                && a.iter().all(|f| {
                    b.iter()
                        .find(|g| g.name() == f.name())
                        .is_some_and(|g| widens(f.data_type(), g.data_type()))
                })
        }
        _ => false,
    }
}

/// The schema the table has after taking a batch of `incoming`; `current` is the
/// table's schema (`None`: the table does not exist yet). Columns keep the table's
/// order; new ones follow in the batch's order. New tables get nullable columns so
/// that later batches may leave any of them out.
pub fn evolve(current: Option<&Schema>, incoming: &Schema) -> Result<SchemaRef, Incompatible> {
    let Some(current) = current else {
        let fields: Vec<Field> = incoming
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect();
        return Ok(Arc::new(Schema::new(fields)));
    };
    let mut fields: Vec<Field> = current.fields().iter().map(|f| f.as_ref().clone()).collect();
    for f in incoming.fields() {
        match current.field_with_name(f.name()) {
            Ok(t) if widens(f.data_type(), t.data_type()) => {}
            Ok(t) => {
                return Err(Incompatible {
                    column: f.name().clone(),
                    old: t.data_type().to_string(),
                    new: f.data_type().to_string(),
                });
            }
            Err(_) => fields.push(f.as_ref().clone().with_nullable(true)),
        }
    }
    for t in current.fields() {
        if !t.is_nullable() && incoming.field_with_name(t.name()).is_err() {
            return Err(Incompatible {
                column: t.name().clone(),
                old: format!("{} NOT NULL", t.data_type()),
                new: "no such column".into(),
            });
        }
    }
    Ok(Arc::new(Schema::new(fields)))
}

/// `batch` with exactly the columns of `target`, found by name: cast where the type
/// differs (a value that does not fit becomes NULL), NULL where the batch has no such
/// column. For tables `target` comes from [`evolve`], so every cast is lossless; window
/// operators read a stream whose schema changed through it too.
pub fn conform(batch: &RecordBatch, target: &SchemaRef) -> Result<RecordBatch, ArrowError> {
    if batch.schema().fields() == target.fields() {
        return Ok(batch.clone());
    }
    let safe = CastOptions {
        safe: true,
        ..Default::default()
    };
    let columns = target
        .fields()
        .iter()
        .map(|f| match batch.column_by_name(f.name()) {
            Some(c) if c.data_type() == f.data_type() => Ok(c.clone()),
            Some(c) => cast_with_options(c, f.data_type(), &safe),
            None => Ok(new_null_array(f.data_type(), batch.num_rows())),
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(target.clone(), columns)
}

/// Whether `next` adds columns to `current`.
pub fn adds_columns(current: &Schema, next: &Schema) -> bool {
    next.fields().len() > current.fields().len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltalake::arrow::array::{Array, Int32Array, Int64Array, StringArray};

    fn schema(fields: &[(&str, DataType)]) -> Schema {
        Schema::new(
            fields
                .iter()
                .map(|(n, t)| Field::new(*n, t.clone(), true))
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn new_columns_are_added_nullable_after_the_old_ones() {
        let current = schema(&[("id", DataType::Int64), ("name", DataType::Utf8)]);
        let incoming = Schema::new(vec![
            Field::new("email", DataType::Utf8, false),
            Field::new("id", DataType::Int32, false),
        ]);
        let next = evolve(Some(&current), &incoming).unwrap();
        let names: Vec<&str> = next.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["id", "name", "email"]);
        assert!(next.field(2).is_nullable());
        assert!(adds_columns(&current, &next));

        let batch = RecordBatch::try_new(
            Arc::new(incoming),
            vec![
                Arc::new(StringArray::from(vec!["a@x"])),
                Arc::new(Int32Array::from(vec![7])),
            ],
        )
        .unwrap();
        let out = conform(&batch, &next).unwrap();
        assert_eq!(
            out.column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .value(0),
            7
        );
        assert!(out.column(1).is_null(0));
    }

    #[test]
    fn a_narrowed_type_names_the_column_and_both_types() {
        let current = schema(&[("id", DataType::Int64), ("amount", DataType::Int32)]);
        let incoming = schema(&[("id", DataType::Int64), ("amount", DataType::Int64)]);
        let err = evolve(Some(&current), &incoming).unwrap_err();
        assert_eq!(err.column, "amount");
        assert_eq!(
            err.to_string(),
            "column amount: the table has Int32, the records have Int64"
        );
        let text = schema(&[("amount", DataType::Utf8)]);
        assert!(evolve(Some(&current), &text).is_err());
    }

    #[test]
    fn a_new_table_takes_the_batch_schema_as_nullable() {
        let incoming = Schema::new(vec![Field::new("id", DataType::Int64, false)]);
        let next = evolve(None, &incoming).unwrap();
        assert!(next.field(0).is_nullable());
    }
}
