//! Tumbling windows with counting measures, keyed by arbitrary group-by columns.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use deltalake::arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch, TimestampMicrosecondArray};
use deltalake::arrow::compute::{CastOptions, cast_with_options, max};
use deltalake::arrow::datatypes::{
    DataType, Field, FieldRef, Schema, SchemaRef, TimeUnit, TimestampMicrosecondType,
};
use deltalake::arrow::ipc::reader::FileReader;
use deltalake::arrow::ipc::writer::FileWriter;
use deltalake::arrow::row::{RowConverter, SortField};
use hashbrown::HashMap;

use super::{Operator, OperatorStats, Watermarks, WindowError};
use crate::config::{AggregateConfig, MeasureFn};

const META_WATERMARKS: &str = "tributary.watermarks";
const META_CLOSED_THROUGH: &str = "tributary.closed_through";
const STATE_WINDOW: &str = "__window_start";

#[derive(Debug, Clone, Copy)]
enum Slot {
    All,
    NonNull(usize),
}

/// Open windows as columns: start, group keys, one accumulator column per measure.
struct WindowColumns {
    starts: Vec<i64>,
    keys: Vec<ArrayRef>,
    accs: Vec<ArrayRef>,
}

/// Accumulators of one window, per group key (row-format bytes of the group columns).
type Groups = HashMap<Vec<u8>, Box<[i64]>>;

/// `[[aggregates]]` with `window = { kind = "tumbling" }`.
pub struct TumblingAggregate {
    name: String,
    size: i64,
    event_time: usize,
    group_cols: Vec<usize>,
    key_fields: Vec<FieldRef>,
    slots: Vec<Slot>,
    converter: RowConverter,
    output: SchemaRef,
    windows: BTreeMap<i64, Groups>,
    watermarks: Watermarks,
    /// Watermark reached by the previous micro-batch: the lateness reference.
    batch_watermark: i64,
    /// End of the latest window already emitted; nothing before it may be emitted again.
    closed_through: i64,
    stats: OperatorStats,
}

impl std::fmt::Debug for TumblingAggregate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TumblingAggregate")
            .field("name", &self.name)
            .field("open_windows", &self.windows.len())
            .finish()
    }
}

fn utc_micros() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

impl TumblingAggregate {
    pub fn new(cfg: &AggregateConfig, input: &SchemaRef, size: i64) -> Result<Self, WindowError> {
        let column = |key: String, name: &str| {
            input.index_of(name).map_err(|_| WindowError::Config {
                key,
                message: format!(
                    "stream \"{}\" has no column \"{name}\" (it has: {})",
                    cfg.from,
                    input
                        .fields()
                        .iter()
                        .map(|f| f.name().as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })
        };
        let event_time = column(format!("{}.event_time", cfg.key), &cfg.event_time)?;
        match input.field(event_time).data_type() {
            DataType::Timestamp(..)
            | DataType::Int64
            | DataType::Date32
            | DataType::Date64
            | DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View => {}
            other => {
                return Err(WindowError::Config {
                    key: format!("{}.event_time", cfg.key),
                    message: format!(
                        "column \"{}\" is {other}; an event time must be a timestamp, a date, \
                         RFC 3339 text or epoch microseconds",
                        cfg.event_time
                    ),
                });
            }
        }
        let mut group_cols = Vec::with_capacity(cfg.group_by.len());
        for (i, name) in cfg.group_by.iter().enumerate() {
            group_cols.push(column(format!("{}.group_by[{i}]", cfg.key), name)?);
        }
        let key_fields: Vec<FieldRef> = group_cols
            .iter()
            .map(|&i| {
                Arc::new(
                    input
                        .field(i)
                        .clone()
                        .with_nullable(true)
                        .with_metadata(Default::default()),
                )
            })
            .collect();
        let mut slots = Vec::with_capacity(cfg.measures.len());
        for m in &cfg.measures {
            slots.push(match &m.func {
                MeasureFn::CountAll => Slot::All,
                MeasureFn::Count(col) => {
                    Slot::NonNull(column(format!("{}.measures.{}", cfg.key, m.name), col)?)
                }
            });
        }
        let converter = RowConverter::new(
            key_fields
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect(),
        )
        .map_err(|source| WindowError::Arrow {
            aggregate: cfg.name.clone(),
            source,
        })?;
        let mut fields: Vec<FieldRef> = vec![
            Arc::new(Field::new("window_start", utc_micros(), false)),
            Arc::new(Field::new("window_end", utc_micros(), false)),
        ];
        fields.extend(key_fields.iter().cloned());
        fields.extend(
            cfg.measures
                .iter()
                .map(|m| Arc::new(Field::new(&m.name, DataType::Int64, false))),
        );
        Ok(Self {
            name: cfg.name.clone(),
            size,
            event_time,
            group_cols,
            key_fields,
            slots,
            converter,
            output: Arc::new(Schema::new(fields)),
            windows: BTreeMap::new(),
            watermarks: Watermarks::new(cfg.watermark.as_micros()),
            batch_watermark: i64::MIN,
            closed_through: i64::MIN,
            stats: OperatorStats::default(),
        })
    }

    fn arrow_err(&self) -> impl FnOnce(deltalake::arrow::error::ArrowError) -> WindowError + '_ {
        |source| WindowError::Arrow {
            aggregate: self.name.clone(),
            source,
        }
    }

    /// Window start, group-key columns and accumulator columns of `windows`, with keys
    /// sorted inside each window so equal state always yields equal bytes.
    fn columns_of(&self, windows: &BTreeMap<i64, Groups>) -> Result<WindowColumns, WindowError> {
        let n: usize = windows.values().map(HashMap::len).sum();
        let mut starts = Vec::with_capacity(n);
        let mut keys: Vec<&[u8]> = Vec::with_capacity(n);
        let mut accs: Vec<Vec<i64>> = vec![Vec::with_capacity(n); self.slots.len()];
        for (ws, groups) in windows {
            let mut entries: Vec<_> = groups.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            for (key, acc) in entries {
                starts.push(*ws);
                keys.push(key);
                for (j, v) in acc.iter().enumerate() {
                    accs[j].push(*v);
                }
            }
        }
        let key_cols = if self.key_fields.is_empty() {
            vec![]
        } else {
            let parser = self.converter.parser();
            self.converter
                .convert_rows(keys.iter().map(|k| parser.parse(k)))
                .map_err(self.arrow_err())?
        };
        Ok(WindowColumns {
            starts,
            keys: key_cols,
            accs: accs
                .into_iter()
                .map(|v| Arc::new(Int64Array::from(v)) as ArrayRef)
                .collect(),
        })
    }

    fn emit(&mut self, windows: BTreeMap<i64, Groups>) -> Result<Option<RecordBatch>, WindowError> {
        let Some((&last, _)) = windows.last_key_value() else {
            return Ok(None);
        };
        self.closed_through = self.closed_through.max(last.saturating_add(self.size));
        let WindowColumns { starts, keys, accs } = self.columns_of(&windows)?;
        let ends: Vec<i64> = starts.iter().map(|s| s.saturating_add(self.size)).collect();
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(TimestampMicrosecondArray::from(starts).with_timezone("UTC")),
            Arc::new(TimestampMicrosecondArray::from(ends).with_timezone("UTC")),
        ];
        cols.extend(keys);
        cols.extend(accs);
        RecordBatch::try_new(self.output.clone(), cols)
            .map(Some)
            .map_err(self.arrow_err())
    }

    fn state_schema(&self) -> SchemaRef {
        let mut fields: Vec<FieldRef> = vec![Arc::new(Field::new(STATE_WINDOW, DataType::Int64, false))];
        fields.extend(self.key_fields.iter().cloned());
        fields.extend(
            (0..self.slots.len()).map(|j| Arc::new(Field::new(format!("__acc{j}"), DataType::Int64, false))),
        );
        Arc::new(
            Schema::new(fields).with_metadata(
                [
                    (META_WATERMARKS.to_string(), self.watermarks.to_json()),
                    (META_CLOSED_THROUGH.to_string(), self.closed_through.to_string()),
                ]
                .into(),
            ),
        )
    }

    fn state_err(&self, message: impl Into<String>) -> WindowError {
        WindowError::State {
            aggregate: self.name.clone(),
            message: message.into(),
        }
    }
}

impl Operator for TumblingAggregate {
    fn output_schema(&self) -> SchemaRef {
        self.output.clone()
    }

    fn on_start(&mut self, snapshot: Option<Bytes>) -> Result<(), WindowError> {
        let Some(bytes) = snapshot else { return Ok(()) };
        let reader = FileReader::try_new(std::io::Cursor::new(bytes), None).map_err(self.arrow_err())?;
        let schema = reader.schema();
        let meta = schema.metadata();
        let watermarks = meta
            .get(META_WATERMARKS)
            .ok_or_else(|| self.state_err("no watermarks"))?;
        self.watermarks
            .restore_json(watermarks)
            .map_err(|e| self.state_err(format!("watermarks: {e}")))?;
        self.closed_through = meta
            .get(META_CLOSED_THROUGH)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| self.state_err("no closed_through"))?;
        let expected = self.state_schema();
        if schema.fields() != expected.fields() {
            return Err(self.state_err(format!(
                "columns {:?} do not match this aggregate's {:?}; was the aggregate changed? \
                 Recompute it into a new table",
                schema.fields(),
                expected.fields()
            )));
        }
        let nk = self.key_fields.len();
        for batch in reader {
            let batch = batch.map_err(self.arrow_err())?;
            let starts = batch
                .column(0)
                .as_primitive::<deltalake::arrow::datatypes::Int64Type>();
            let rows = if nk == 0 {
                None
            } else {
                Some(
                    self.converter
                        .convert_columns(&batch.columns()[1..=nk])
                        .map_err(self.arrow_err())?,
                )
            };
            for i in 0..batch.num_rows() {
                let key: Vec<u8> = rows
                    .as_ref()
                    .map_or_else(Vec::new, |r| r.row(i).as_ref().to_vec());
                let acc: Box<[i64]> = (0..self.slots.len())
                    .map(|j| {
                        batch
                            .column(1 + nk + j)
                            .as_primitive::<deltalake::arrow::datatypes::Int64Type>()
                            .value(i)
                    })
                    .collect();
                self.windows.entry(starts.value(i)).or_default().insert(key, acc);
            }
        }
        self.batch_watermark = self.watermarks.current();
        Ok(())
    }

    fn process_batch(&mut self, shard: &str, batch: &RecordBatch) -> Result<(), WindowError> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(());
        }
        // Unparseable times become nulls (counted), never errors: bad input must not
        // stop the stream.
        let ts = cast_with_options(
            batch.column(self.event_time),
            &DataType::Timestamp(TimeUnit::Microsecond, None),
            &CastOptions {
                safe: true,
                ..Default::default()
            },
        )
        .map_err(self.arrow_err())?;
        let ts = ts.as_primitive::<TimestampMicrosecondType>();
        let rows = if self.group_cols.is_empty() {
            None
        } else {
            let cols: Vec<ArrayRef> = self.group_cols.iter().map(|&i| batch.column(i).clone()).collect();
            Some(self.converter.convert_columns(&cols).map_err(self.arrow_err())?)
        };
        let counted: Vec<Option<&ArrayRef>> = self
            .slots
            .iter()
            .map(|s| match s {
                Slot::All => None,
                Slot::NonNull(c) => Some(batch.column(*c)),
            })
            .collect();
        let late_before = self.batch_watermark.max(self.closed_through);
        let n_slots = self.slots.len();
        for i in 0..n {
            if ts.is_null(i) {
                self.stats.no_event_time += 1;
                continue;
            }
            let t = ts.value(i);
            let ws = t - t.rem_euclid(self.size);
            if ws.saturating_add(self.size) <= late_before {
                self.stats.late_dropped += 1;
                continue;
            }
            let key: &[u8] = rows.as_ref().map_or(&[], |r| r.row(i).data());
            let acc = self
                .windows
                .entry(ws)
                .or_default()
                .entry_ref(key)
                .or_insert_with(|| vec![0; n_slots].into_boxed_slice());
            for (j, c) in counted.iter().enumerate() {
                if c.is_none_or(|c| c.is_valid(i)) {
                    acc[j] += 1;
                }
            }
        }
        if let Some(m) = max(ts) {
            self.watermarks.observe(shard, m);
        }
        Ok(())
    }

    fn on_watermark(&mut self) -> Result<Option<RecordBatch>, WindowError> {
        let w = self.watermarks.current();
        self.batch_watermark = w;
        if w == i64::MIN {
            return Ok(None);
        }
        // Windows starting at or before w - size end at or before w: they are final.
        let open = self
            .windows
            .split_off(&(w.saturating_sub(self.size).saturating_add(1)));
        let closed = std::mem::replace(&mut self.windows, open);
        self.emit(closed)
    }

    fn on_checkpoint(&self) -> Result<Bytes, WindowError> {
        let schema = self.state_schema();
        let WindowColumns { starts, keys, accs } = self.columns_of(&self.windows)?;
        let mut cols: Vec<ArrayRef> = vec![Arc::new(Int64Array::from(starts))];
        cols.extend(keys);
        cols.extend(accs);
        let batch = RecordBatch::try_new(schema.clone(), cols).map_err(self.arrow_err())?;
        let mut buf = Vec::new();
        let mut writer = FileWriter::try_new(&mut buf, &schema).map_err(self.arrow_err())?;
        writer.write(&batch).map_err(self.arrow_err())?;
        writer.finish().map_err(self.arrow_err())?;
        drop(writer);
        Ok(Bytes::from(buf))
    }

    fn on_close(&mut self) -> Result<Option<RecordBatch>, WindowError> {
        let all = std::mem::take(&mut self.windows);
        self.emit(all)
    }

    fn stats(&self) -> OperatorStats {
        self.stats
    }
}

#[cfg(test)]
mod tests;
