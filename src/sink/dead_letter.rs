//! The dead-letter table: records that could not be used, with why and where from.
//!
//! One row per rejected record: the time it was rejected, the source shard and
//! position (so it can be found and replayed), the kind of error, a message naming the
//! field or line, the table that refused it (null for decode errors) and the raw
//! payload bytes (or, for records refused after decoding, the row as JSON).

use std::sync::{Arc, LazyLock};

use deltalake::arrow::array::{
    ArrayRef, AsArray, BinaryBuilder, Int64Builder, RecordBatch, StringBuilder, TimestampMicrosecondBuilder,
};
use deltalake::arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, TimeUnit};
use deltalake::arrow::json::LineDelimitedWriter;

/// Why a record was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The bytes are not a record of the stream's format or schema.
    Decode,
    /// The record's schema cannot be written to a table.
    Schema,
    /// The change cannot be applied (null key, unknown `_op`).
    Change,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Decode => "decode",
            ErrorKind::Schema => "schema",
            ErrorKind::Change => "change",
        }
    }
}

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new(
            "time",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("source", DataType::Utf8, false),
        Field::new("position", DataType::Int64, false),
        Field::new("error_kind", DataType::Utf8, false),
        Field::new("message", DataType::Utf8, false),
        Field::new("table", DataType::Utf8, true),
        Field::new("payload", DataType::Binary, true),
    ]))
});

/// Schema of the dead-letter table.
pub fn schema() -> SchemaRef {
    SCHEMA.clone()
}

/// Builds dead-letter rows.
#[derive(Debug)]
pub struct DeadLetters {
    time: TimestampMicrosecondBuilder,
    source: StringBuilder,
    position: Int64Builder,
    kind: StringBuilder,
    message: StringBuilder,
    table: StringBuilder,
    payload: BinaryBuilder,
    now: i64,
}

impl Default for DeadLetters {
    fn default() -> Self {
        Self {
            time: TimestampMicrosecondBuilder::new().with_timezone("UTC"),
            source: StringBuilder::new(),
            position: Int64Builder::new(),
            kind: StringBuilder::new(),
            message: StringBuilder::new(),
            table: StringBuilder::new(),
            payload: BinaryBuilder::new(),
            now: chrono::Utc::now().timestamp_micros(),
        }
    }
}

impl DeadLetters {
    pub fn push(
        &mut self,
        source: &str,
        position: i64,
        kind: ErrorKind,
        message: &str,
        table: Option<&str>,
        payload: Option<&[u8]>,
    ) {
        self.time.append_value(self.now);
        self.source.append_value(source);
        self.position.append_value(position);
        self.kind.append_value(kind.as_str());
        self.message.append_value(message);
        self.table.append_option(table);
        self.payload.append_option(payload);
    }

    /// Every row of `rows` (at `positions`) as a dead letter, each payload the row as JSON.
    pub fn push_rows(
        &mut self,
        source: &str,
        rows: &RecordBatch,
        positions: &[i64],
        kind: ErrorKind,
        message: &str,
        table: &str,
    ) {
        for (i, &p) in positions.iter().enumerate() {
            let json = row_json(&rows.slice(i, 1));
            self.push(source, p, kind, message, Some(table), json.as_deref());
        }
    }

    pub fn len(&self) -> usize {
        deltalake::arrow::array::ArrayBuilder::len(&self.position)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn finish(mut self) -> RecordBatch {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.time.finish()),
            Arc::new(self.source.finish()),
            Arc::new(self.position.finish()),
            Arc::new(self.kind.finish()),
            Arc::new(self.message.finish()),
            Arc::new(self.table.finish()),
            Arc::new(self.payload.finish()),
        ];
        RecordBatch::try_new(schema(), columns).unwrap_or_else(|_| RecordBatch::new_empty(schema()))
    }
}

/// Index of the first row of `rows` (dead letters of one shard, in position order) at
/// or after `position`.
pub fn split_at_position(rows: &RecordBatch, position: i64) -> usize {
    rows.column(2)
        .as_primitive::<Int64Type>()
        .values()
        .partition_point(|&p| p < position)
}

/// One row as a JSON object (no trailing newline); `None` if it cannot be encoded.
fn row_json(row: &RecordBatch) -> Option<Vec<u8>> {
    let mut w = LineDelimitedWriter::new(Vec::new());
    w.write(row).ok()?;
    w.finish().ok()?;
    let mut bytes = w.into_inner();
    while bytes.last() == Some(&b'\n') {
        bytes.pop();
    }
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltalake::arrow::array::Int64Array;

    #[test]
    fn rows_become_dead_letters_with_json_payloads() {
        let rows = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)])),
            vec![Arc::new(Int64Array::from(vec![7, 8]))],
        )
        .unwrap();
        let mut d = DeadLetters::default();
        d.push(
            "orders",
            3,
            ErrorKind::Decode,
            "line 4: bad",
            None,
            Some(b"{oops"),
        );
        d.push_rows("orders", &rows, &[5, 6], ErrorKind::Schema, "column id", "t");
        let b = d.finish();
        assert_eq!(b.num_rows(), 3);
        let payload = b.column(6).as_binary::<i32>();
        assert_eq!(payload.value(0), b"{oops");
        assert_eq!(payload.value(2), br#"{"id":8}"#);
        assert_eq!(b.column(3).as_string::<i32>().value(1), "schema");
    }
}
