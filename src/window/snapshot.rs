//! Operator state as one Arrow IPC file: a row per (pane | session | global group),
//! its group key columns and its measures' state columns; watermarks and counters in
//! the schema metadata. Rows are in a canonical order, so equal state is equal bytes.

use std::sync::Arc;

use bytes::Bytes;
use deltalake::arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch};
use deltalake::arrow::datatypes::{DataType, Field, FieldRef, Int64Type, Schema};
use deltalake::arrow::ipc::reader::FileReader;
use deltalake::arrow::ipc::writer::FileWriter;
use tokio::time::Instant;

use super::WindowError;
use super::operator::{Index, WindowedAggregate};
use super::sessions::Session;

const META_WATERMARKS: &str = "tributary.watermarks";
const META_WATERMARK: &str = "tributary.watermark";
const META_STATS: &str = "tributary.stats";
const META_SIGNATURE: &str = "tributary.aggregate";
const META_OVER: &str = "tributary.over";

/// One state row before encoding.
struct Entry<'a> {
    a: i64,
    b: i64,
    written: Option<i64>,
    dirty: bool,
    key: &'a [u8],
    slot: u32,
}

impl WindowedAggregate {
    fn state_err(&self, message: impl Into<String>) -> WindowError {
        WindowError::State {
            aggregate: self.name.clone(),
            message: message.into(),
        }
    }

    fn entries(&self) -> Vec<Entry<'_>> {
        let mut out = Vec::with_capacity(self.store.live());
        match &self.index {
            Index::Panes(p) => {
                for (start, groups) in &p.panes {
                    let first = out.len();
                    out.extend(groups.iter().map(|(k, &slot)| Entry {
                        a: *start,
                        b: 0,
                        written: None,
                        dirty: false,
                        key: k.as_ref(),
                        slot,
                    }));
                    out[first..].sort_unstable_by(|x, y| x.key.cmp(y.key));
                }
            }
            Index::Sessions(s) => {
                for (k, list) in &s.keys {
                    out.extend(list.iter().map(|s| Entry {
                        a: s.start,
                        b: s.end,
                        written: s.written,
                        dirty: s.dirty,
                        key: k.as_ref(),
                        slot: s.slot,
                    }));
                }
                out.sort_unstable_by(|x, y| (x.key, x.a).cmp(&(y.key, y.a)));
            }
            Index::Global(groups, _) => {
                out.extend(groups.iter().map(|(k, &slot)| Entry {
                    a: 0,
                    b: 0,
                    written: None,
                    dirty: false,
                    key: k.as_ref(),
                    slot,
                }));
                out.sort_unstable_by(|x, y| x.key.cmp(y.key));
            }
        }
        out
    }

    pub(super) fn snapshot(&self) -> Result<Bytes, WindowError> {
        let entries = self.entries();
        let mut fields: Vec<FieldRef> = vec![
            Arc::new(Field::new("__a", DataType::Int64, false)),
            Arc::new(Field::new("__b", DataType::Int64, false)),
            Arc::new(Field::new("__written", DataType::Int64, true)),
            Arc::new(Field::new("__dirty", DataType::Boolean, false)),
        ];
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from_iter_values(entries.iter().map(|e| e.a))),
            Arc::new(Int64Array::from_iter_values(entries.iter().map(|e| e.b))),
            Arc::new(Int64Array::from_iter(entries.iter().map(|e| e.written))),
            Arc::new(BooleanArray::from_iter(entries.iter().map(|e| Some(e.dirty)))),
        ];
        if let Some(conv) = &self.keys {
            let parser = conv.parser();
            fields.extend(self.key_fields.iter().cloned());
            cols.extend(
                conv.convert_rows(entries.iter().map(|e| parser.parse(e.key)))
                    .map_err(self.arrow_err())?,
            );
        }
        let slots: Vec<u32> = entries.iter().map(|e| e.slot).collect();
        for (f, c) in self.measures.state_columns(&self.store, &slots)? {
            fields.push(Arc::new(f));
            cols.push(c);
        }
        let stats = serde_json::to_string(&self.stats).unwrap_or_default();
        let mut meta: std::collections::HashMap<String, String> = [
            (META_WATERMARKS.to_string(), self.watermarks.to_json()),
            (META_WATERMARK.to_string(), self.watermark.to_string()),
            (META_STATS.to_string(), stats),
            (META_SIGNATURE.to_string(), self.signature.clone()),
        ]
        .into();
        if let Some(over) = &self.over {
            meta.insert(META_OVER.to_string(), over.to_json());
        }
        let schema = Arc::new(Schema::new(fields).with_metadata(meta));
        let batch = RecordBatch::try_new(schema.clone(), cols).map_err(self.arrow_err())?;
        let mut buf = Vec::new();
        let mut writer = FileWriter::try_new(&mut buf, &schema).map_err(self.arrow_err())?;
        writer.write(&batch).map_err(self.arrow_err())?;
        writer.finish().map_err(self.arrow_err())?;
        drop(writer);
        Ok(Bytes::from(buf))
    }

    pub(super) fn restore(&mut self, bytes: Bytes) -> Result<(), WindowError> {
        let reader = FileReader::try_new(std::io::Cursor::new(bytes), None).map_err(self.arrow_err())?;
        let schema = reader.schema();
        let meta = schema.metadata();
        let get = |k: &str| meta.get(k).ok_or_else(|| self.state_err(format!("no {k}")));
        if *get(META_SIGNATURE)? != self.signature {
            return Err(self.state_err(format!(
                "it was written for {}, the aggregate is now {}; recompute it into a new table \
                 (or `tributary backfill`)",
                get(META_SIGNATURE)?,
                self.signature
            )));
        }
        let watermarks = get(META_WATERMARKS)?.clone();
        let watermark: i64 = get(META_WATERMARK)?
            .parse()
            .map_err(|_| self.state_err("bad watermark"))?;
        let stats =
            serde_json::from_str(get(META_STATS)?).map_err(|e| self.state_err(format!("stats: {e}")))?;
        let nk = self.key_fields.len();
        let expected_keys: Vec<&FieldRef> = self.key_fields.iter().collect();
        let got_keys: Vec<&FieldRef> = schema.fields().iter().skip(4).take(nk).collect();
        if got_keys != expected_keys {
            return Err(self.state_err(format!(
                "group keys {got_keys:?} do not match this aggregate's {expected_keys:?}; was the \
                 aggregate changed? Recompute it into a new table"
            )));
        }
        self.watermarks
            .restore_json(&watermarks, Instant::now())
            .map_err(|e| self.state_err(format!("watermarks: {e}")))?;
        self.watermark = watermark;
        self.stats = stats;
        if self.over.is_some() {
            let json = meta
                .get(META_OVER)
                .cloned()
                .ok_or_else(|| self.state_err(format!("no {META_OVER}")))?;
            let restored = self.over.as_mut().map_or(Ok(()), |o| o.restore_json(&json));
            restored.map_err(|m| self.state_err(format!("over: {m}")))?;
        }
        for batch in reader {
            let batch = batch.map_err(self.arrow_err())?;
            let int = |i: usize| {
                batch
                    .column(i)
                    .as_primitive_opt::<Int64Type>()
                    .cloned()
                    .ok_or_else(|| self.state_err("window columns"))
            };
            let (a, b, written) = (int(0)?, int(1)?, int(2)?);
            let dirty = batch
                .column(3)
                .as_boolean_opt()
                .cloned()
                .ok_or_else(|| self.state_err("dirty column"))?;
            let keys = match &self.keys {
                Some(conv) => Some(
                    conv.convert_columns(&batch.columns()[4..4 + nk])
                        .map_err(self.arrow_err())?,
                ),
                None => None,
            };
            let slots = self.measures.restore(&mut self.store, &batch, 4 + nk)?;
            for (i, slot) in slots.into_iter().enumerate() {
                let key: Box<[u8]> = keys
                    .as_ref()
                    .map_or_else(|| Box::from(&[][..]), |r| r.row(i).data().into());
                match &mut self.index {
                    Index::Panes(p) => {
                        p.panes.entry(a.value(i)).or_default().insert(key, slot);
                    }
                    Index::Sessions(s) => s.keys.entry(key).or_default().push(Session {
                        start: a.value(i),
                        end: b.value(i),
                        slot,
                        written: written.is_valid(i).then(|| written.value(i)),
                        dirty: dirty.value(i),
                    }),
                    Index::Global(groups, _) => {
                        groups.insert(key, slot);
                    }
                }
            }
        }
        Ok(())
    }
}
