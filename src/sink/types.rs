//! Arrow types as Delta stores them.
//!
//! Delta has one instant type, `timestamp` (microseconds, UTC), plus `timestamp_ntz`,
//! which needs the `timestampNtz` table feature (reader 3 / writer 7) that older
//! readers, Delta-Spark 3.0 among them, refuse. So every timestamp column is written as
//! `Timestamp(Microsecond, "UTC")`: zoned ones keep their instant, naive ones are taken
//! as UTC (documented in the README).

use std::sync::Arc;

use deltalake::arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringBuilder};
use deltalake::arrow::compute::cast;
use deltalake::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use deltalake::arrow::error::ArrowError;

/// Arrow's canonical UUID extension (what an Avro `uuid` decodes to).
const UUID_EXTENSION: &str = "arrow.uuid";

fn is_uuid(f: &Field) -> bool {
    matches!(f.data_type(), DataType::FixedSizeBinary(16))
        && f.metadata().get("ARROW:extension:name").map(String::as_str) == Some(UUID_EXTENSION)
}

/// The type Delta stores `f` as, when it differs: a UUID becomes its text form, a
/// dictionary (an Avro enum) its values, fixed-size binary plain binary.
fn delta_type_of(f: &Field) -> Option<DataType> {
    if is_uuid(f) {
        return Some(DataType::Utf8);
    }
    delta_type(f.data_type())
}

fn delta_type(t: &DataType) -> Option<DataType> {
    match t {
        DataType::Timestamp(TimeUnit::Microsecond, Some(tz)) if tz.as_ref() == "UTC" => None,
        DataType::Timestamp(_, _) => Some(DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))),
        DataType::Dictionary(_, v) => Some(delta_type(v).unwrap_or_else(|| v.as_ref().clone())),
        DataType::FixedSizeBinary(_) => Some(DataType::Binary),
        _ => None,
    }
}

/// The schema a batch of `schema` has once made storable; `None` if it already is.
pub fn delta_schema(schema: &SchemaRef) -> Option<SchemaRef> {
    if schema.fields().iter().all(|f| delta_type_of(f).is_none()) {
        return None;
    }
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| match delta_type_of(f) {
            Some(t) => {
                let mut meta = f.metadata().clone();
                meta.retain(|k, _| !k.starts_with("ARROW:extension:"));
                f.as_ref().clone().with_data_type(t).with_metadata(meta)
            }
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
        .zip(batch.schema().fields())
        .zip(schema.fields())
        .map(|((c, from), f)| {
            if c.data_type() == f.data_type() {
                Ok(c.clone())
            } else if is_uuid(from) {
                Ok(uuid_text(c))
            } else {
                cast(c, f.data_type())
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(schema, columns)
}

/// 16-byte UUIDs as their hyphenated text.
fn uuid_text(c: &ArrayRef) -> ArrayRef {
    let bytes = c.as_fixed_size_binary();
    let mut out = StringBuilder::with_capacity(bytes.len(), bytes.len() * 36);
    let mut buf = [0u8; 36];
    for b in bytes.iter() {
        match b.and_then(|b| uuid::Uuid::from_slice(b).ok()) {
            Some(u) => out.append_value(u.hyphenated().encode_lower(&mut buf)),
            None => out.append_null(),
        }
    }
    Arc::new(out.finish())
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
