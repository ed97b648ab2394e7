//! Arrow types as Delta stores them.
//!
//! Delta has one instant type, `timestamp` (microseconds, UTC), plus `timestamp_ntz`,
//! which needs the `timestampNtz` table feature (reader 3 / writer 7) that older
//! readers, Delta-Spark 3.0 among them, refuse. So every timestamp column is written as
//! `Timestamp(Microsecond, "UTC")`: zoned ones keep their instant, naive ones are taken
//! as UTC (documented in the README).

use std::sync::Arc;

use deltalake::arrow::array::RecordBatch;
use deltalake::arrow::compute::cast;
use deltalake::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use deltalake::arrow::error::ArrowError;

fn delta_type(t: &DataType) -> Option<DataType> {
    match t {
        DataType::Timestamp(TimeUnit::Microsecond, Some(tz)) if tz.as_ref() == "UTC" => None,
        DataType::Timestamp(_, _) => Some(DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))),
        _ => None,
    }
}

/// The schema a batch of `schema` has once made storable; `None` if it already is.
pub fn delta_schema(schema: &SchemaRef) -> Option<SchemaRef> {
    if schema
        .fields()
        .iter()
        .all(|f| delta_type(f.data_type()).is_none())
    {
        return None;
    }
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| match delta_type(f.data_type()) {
            Some(t) => f.as_ref().clone().with_data_type(t),
            None => f.as_ref().clone(),
        })
        .collect();
    Some(Arc::new(Schema::new_with_metadata(
        fields,
        schema.metadata().clone(),
    )))
}

/// `batch` with every column in a type Delta stores (zero-copy where only the time
/// zone label changes).
pub fn to_delta(batch: RecordBatch) -> Result<RecordBatch, ArrowError> {
    let Some(schema) = delta_schema(&batch.schema()) else {
        return Ok(batch);
    };
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| {
            if c.data_type() == f.data_type() {
                Ok(c.clone())
            } else {
                cast(c, f.data_type())
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(schema, columns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltalake::arrow::array::{Array, AsArray, TimestampMillisecondArray};
    use deltalake::arrow::datatypes::TimestampMicrosecondType;

    #[test]
    fn timestamps_become_utc_microseconds_with_the_same_instant() {
        let ms = TimestampMillisecondArray::from(vec![Some(1_500), None]).with_timezone("+02:00");
        let schema = Arc::new(Schema::new(vec![Field::new("t", ms.data_type().clone(), true)]));
        let batch = RecordBatch::try_new(schema, vec![Arc::new(ms)]).unwrap();
        let out = to_delta(batch).unwrap();
        assert_eq!(
            out.schema().field(0).data_type(),
            &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
        );
        let t = out.column(0).as_primitive::<TimestampMicrosecondType>();
        assert_eq!(t.value(0), 1_500_000);
        assert!(t.is_null(1));
    }
}
