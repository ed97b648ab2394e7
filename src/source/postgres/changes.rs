//! Row changes of one table, accumulated column by column into Arrow until the
//! source hands them over as one chunk.
//!
//! A chunk holds whole transactions only: every row of a transaction carries the
//! transaction's position (its commit LSN), and the source takes a chunk only at a
//! transaction boundary. When a table's layout changes (a `Relation` message after
//! ALTER TABLE), the rows so far are finished as one part and later parts are
//! unified with it by the sink's schema-evolution rules.

use std::sync::Arc;

use deltalake::arrow::array::{
    ArrayRef, Int64Array, Int64Builder, ListBuilder, RecordBatch, StringArray, StringBuilder,
    TimestampMicrosecondBuilder,
};
use deltalake::arrow::compute::concat_batches;
use deltalake::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use super::pgoutput::{Tuple, Value};
use super::types::{Builder, PgType, copy_fields};
use crate::sink::change::{COMMIT_TS, OP, POSITION, SOURCE, UNCHANGED};
use crate::sink::schema;

/// A table's columns as the source last described them.
#[derive(Debug)]
pub struct Layout {
    pub stream: Arc<str>,
    pub names: Vec<String>,
    pub types: Vec<PgType>,
    /// Replica-identity key columns (what deletes and key changes carry).
    pub key: Vec<bool>,
    /// Change columns, then the table's columns.
    pub schema: SchemaRef,
}

impl Layout {
    pub fn new(stream: &str, columns: Vec<(String, PgType, bool)>) -> Layout {
        let utc = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        let mut fields = vec![
            Field::new(OP, DataType::Utf8, false),
            Field::new(POSITION, DataType::Int64, false),
            Field::new(COMMIT_TS, utc, true),
            Field::new(SOURCE, DataType::Utf8, false),
            Field::new(
                UNCHANGED,
                DataType::List(Arc::new(Field::new("element", DataType::Utf8, true))),
                true,
            ),
        ];
        fields.extend(columns.iter().map(|(n, t, _)| Field::new(n, t.arrow(), true)));
        Layout {
            stream: stream.into(),
            names: columns.iter().map(|(n, _, _)| n.clone()).collect(),
            key: columns.iter().map(|(_, _, k)| *k).collect(),
            types: columns.into_iter().map(|(_, t, _)| t).collect(),
            schema: Arc::new(Schema::new(fields)),
        }
    }

    /// Same columns and types (a `Relation` message repeats layouts often).
    pub fn same_as(&self, other: &Layout) -> bool {
        self.names == other.names && self.types == other.types
    }
}

/// A value that could not be converted: stored as NULL, reported here.
#[derive(Debug)]
pub struct BadValue {
    pub stream: Arc<str>,
    pub position: i64,
    pub column: String,
    pub reason: String,
    pub text: Vec<u8>,
}

/// Rows of one table waiting to be handed over.
#[derive(Debug)]
pub struct TableBuffer {
    pub layout: Arc<Layout>,
    builders: Vec<Builder>,
    op: StringBuilder,
    position: Int64Builder,
    commit_ts: TimestampMicrosecondBuilder,
    unchanged: ListBuilder<StringBuilder>,
    rows: usize,
    /// Finished rows of earlier layouts, in order.
    parts: Vec<RecordBatch>,
    part_rows: usize,
    /// Approximate bytes of value text appended, for byte-sized chunks.
    pub bytes: usize,
    scratch: Vec<u8>,
}

impl TableBuffer {
    pub fn new(layout: Arc<Layout>) -> TableBuffer {
        let builders = layout.types.iter().map(|t| Builder::new(t, 1024)).collect();
        TableBuffer {
            layout,
            builders,
            op: StringBuilder::new(),
            position: Int64Builder::new(),
            commit_ts: TimestampMicrosecondBuilder::new().with_timezone("UTC"),
            unchanged: ListBuilder::new(StringBuilder::new()).with_field(Arc::new(Field::new(
                "element",
                DataType::Utf8,
                true,
            ))),
            rows: 0,
            parts: Vec::new(),
            part_rows: 0,
            bytes: 0,
            scratch: Vec::new(),
        }
    }

    /// Rows held (all parts).
    pub fn len(&self) -> usize {
        self.rows + self.part_rows
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Switches to a new layout; rows so far become a finished part.
    pub fn relayout(&mut self, layout: Arc<Layout>) -> Result<(), String> {
        if self.rows > 0 {
            let part = self.finish_part()?;
            self.part_rows += part.num_rows();
            self.parts.push(part);
        }
        self.builders = layout.types.iter().map(|t| Builder::new(t, 1024)).collect();
        self.layout = layout;
        Ok(())
    }

    fn meta(&mut self, op: &str, position: i64, commit_ts: Option<i64>) {
        self.op.append_value(op);
        self.position.append_value(position);
        self.commit_ts.append_option(commit_ts);
        self.rows += 1;
    }

    /// Appends a change row from a `pgoutput` tuple. A tuple with fewer columns than
    /// the layout (a delete's key-only image lists every column, so this is only
    /// defensive) gets NULLs for the rest.
    pub fn push_tuple(
        &mut self,
        op: &str,
        position: i64,
        commit_ts: i64,
        tuple: &Tuple<'_>,
        bad: &mut Vec<BadValue>,
    ) {
        self.meta(op, position, Some(commit_ts));
        let mut unchanged = false;
        let mut values = tuple.columns();
        for (i, b) in self.builders.iter_mut().enumerate() {
            match values.next().unwrap_or(Value::Null) {
                Value::Null => b.append_null(),
                Value::Unchanged => {
                    b.append_null();
                    self.unchanged.values().append_value(&self.layout.names[i]);
                    unchanged = true;
                }
                Value::Text(t) | Value::Binary(t) => {
                    self.bytes += t.len();
                    if let Err(reason) = b.append_text(t) {
                        bad.push(BadValue {
                            stream: self.layout.stream.clone(),
                            position,
                            column: self.layout.names[i].clone(),
                            reason,
                            text: t.to_vec(),
                        });
                    }
                }
            }
        }
        if unchanged {
            self.unchanged.append(true);
        } else {
            self.unchanged.append_null();
        }
    }

    /// Appends a snapshot row (`_op = 'r'`) from one `COPY` text line.
    pub fn push_copy_line(
        &mut self,
        position: i64,
        line: &[u8],
        bad: &mut Vec<BadValue>,
    ) -> Result<(), String> {
        self.meta("r", position, None);
        self.unchanged.append_null();
        self.bytes += line.len();
        let builders = &mut self.builders;
        let layout = &self.layout;
        let n = copy_fields(line, &mut self.scratch, |i, v| {
            let Some(b) = builders.get_mut(i) else {
                return Err(format!(
                    "COPY sent more than the {} columns expected",
                    layout.names.len()
                ));
            };
            match v {
                None => b.append_null(),
                Some(t) => {
                    if let Err(reason) = b.append_text(t) {
                        bad.push(BadValue {
                            stream: layout.stream.clone(),
                            position,
                            column: layout.names[i].clone(),
                            reason,
                            text: t.to_vec(),
                        });
                    }
                }
            }
            Ok(())
        })?;
        if n != self.builders.len() {
            return Err(format!("COPY sent {n} columns, expected {}", self.builders.len()));
        }
        Ok(())
    }

    fn finish_part(&mut self) -> Result<RecordBatch, String> {
        let n = self.rows;
        self.rows = 0;
        let source: ArrayRef = Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
            &*self.layout.stream,
            n,
        )));
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(self.op.finish()),
            Arc::new(self.position.finish()),
            Arc::new(self.commit_ts.finish()),
            source,
            Arc::new(self.unchanged.finish()),
        ];
        columns.extend(self.builders.iter_mut().map(Builder::finish));
        // The builders follow the layout by construction; a mismatch would be a bug.
        RecordBatch::try_new(self.layout.schema.clone(), columns)
            .map_err(|e| format!("{}: rows do not match the layout: {e}", self.layout.stream))
    }

    /// Everything held, as one batch, with its positions; `None` when empty. Parts of
    /// different layouts are unified (added columns, lossless widening); a change
    /// that cannot be unified within one chunk is an error naming the column.
    pub fn take(&mut self) -> Result<Option<(RecordBatch, Int64Array)>, String> {
        if self.is_empty() {
            return Ok(None);
        }
        let mut parts = std::mem::take(&mut self.parts);
        self.part_rows = 0;
        if self.rows > 0 {
            parts.push(self.finish_part()?);
        }
        self.bytes = 0;
        let batch = if parts.len() == 1 {
            parts
                .pop()
                .unwrap_or_else(|| RecordBatch::new_empty(self.layout.schema.clone()))
        } else {
            let mut union = parts[0].schema();
            for p in &parts[1..] {
                union = schema::evolve(Some(&union), &p.schema()).map_err(|e| {
                    format!(
                        "{}: a transaction changed the table's layout between its changes in a way \
                         that cannot be unified: {e}",
                        self.layout.stream
                    )
                })?;
            }
            let conformed = parts
                .iter()
                .map(|p| schema::conform(p, &union))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            concat_batches(&union, &conformed).map_err(|e| e.to_string())?
        };
        let positions = batch
            .column(1)
            .as_any()
            .downcast_ref::<Int64Array>()
            .cloned()
            .unwrap_or_else(|| Int64Array::from(Vec::<i64>::new()));
        Ok(Some((batch, positions)))
    }
}
