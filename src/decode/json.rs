//! JSON messages (one UTF-8 JSON object each) → Arrow, against a declared schema.
//!
//! The messages of a chunk go through one arrow-json tape decoder, with no
//! intermediate value per row. After each message the decoder must hold exactly one
//! more whole record, so a message that is empty, truncated or holds two objects is
//! caught where it is. When anything in the chunk fails (syntax, a wrong type, a
//! missing required field, an unknown field in strict mode), every message is checked
//! alone, the bad ones are rejected with their reason, and the rest are decoded
//! together again: one bad message never costs its neighbours.
//!
//! Values per field type (the schema's Arrow types, as an Avro schema maps them):
//! timestamps take RFC 3339 text or a number in the field's unit (`timestamp-millis`:
//! epoch milliseconds, `timestamp-micros`: microseconds); dates take `YYYY-MM-DD` or
//! days since the epoch; decimals take a number or numeric text; bytes and fixed take
//! hex text; enums and (top-level) uuids take text; records take objects, arrays take
//! arrays, maps take objects.

use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_json::reader::{Decoder, ReaderBuilder};
use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef};
use arrow_select::concat::concat_batches;

use super::confluent::{DecodedFrames, Frames};

/// Decodes JSON messages against one schema.
pub struct JsonDecoder {
    schema: SchemaRef,
    /// Unknown fields are errors (`unknown_fields = "dead_letter"`).
    strict: bool,
    batch_rows: usize,
}

impl std::fmt::Debug for JsonDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonDecoder")
            .field("schema", &self.schema)
            .field("strict", &self.strict)
            .finish()
    }
}

/// The schema JSON is decoded into: what `schema` holds, with dictionary types (Avro
/// enums) as their values and UUIDs (16 bytes with Arrow's UUID extension type) as
/// text, since JSON holds both as text.
pub fn json_schema(schema: &Schema) -> SchemaRef {
    let fields: Vec<Field> = plain_fields(schema.fields())
        .into_iter()
        .map(|f| {
            if f.metadata().get(EXTENSION).is_some_and(|e| e == "arrow.uuid") {
                let mut meta = f.metadata().clone();
                meta.remove(EXTENSION);
                f.with_data_type(DataType::Utf8).with_metadata(meta)
            } else {
                f
            }
        })
        .collect();
    Arc::new(Schema::new(fields))
}

const EXTENSION: &str = "ARROW:extension:name";

fn plain_fields(fields: &Fields) -> Vec<Field> {
    fields
        .iter()
        .map(|f| f.as_ref().clone().with_data_type(plain(f.data_type())))
        .collect()
}

fn plain(t: &DataType) -> DataType {
    match t {
        DataType::Dictionary(_, v) => plain(v),
        DataType::Struct(f) => DataType::Struct(plain_fields(f).into()),
        DataType::List(f) => {
            DataType::List(Arc::new(f.as_ref().clone().with_data_type(plain(f.data_type()))))
        }
        DataType::LargeList(f) => {
            DataType::LargeList(Arc::new(f.as_ref().clone().with_data_type(plain(f.data_type()))))
        }
        DataType::Map(f, sorted) => DataType::Map(
            Arc::new(f.as_ref().clone().with_data_type(plain(f.data_type()))),
            *sorted,
        ),
        other => other.clone(),
    }
}

impl JsonDecoder {
    /// A decoder producing `schema` records, up to `batch_rows` per chunk; fails when
    /// arrow-json cannot decode a type of the schema.
    pub fn new(schema: SchemaRef, strict: bool, batch_rows: usize) -> Result<Self, String> {
        let d = Self {
            schema,
            strict,
            batch_rows: batch_rows.max(1),
        };
        d.builder(1)?;
        Ok(d)
    }

    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn builder(&self, rows: usize) -> Result<Decoder, String> {
        ReaderBuilder::new(self.schema.clone())
            .with_strict_mode(self.strict)
            .with_batch_size(rows.max(1))
            .build_decoder()
            .map_err(|e| e.to_string())
    }

    /// Decodes `frames[i]` for every `i` in `which` (ascending). Bad messages are in
    /// `rejected`; `Err` only when the schema itself cannot be decoded into.
    pub fn decode(&self, frames: &Frames, which: &[usize]) -> Result<DecodedFrames, String> {
        let mut batches = Vec::with_capacity(which.len().div_ceil(self.batch_rows));
        let mut kept = Vec::with_capacity(which.len());
        let mut rejected = Vec::new();
        for part in which.chunks(self.batch_rows) {
            match self.all(frames, part)? {
                Some(b) => {
                    batches.push(b);
                    kept.extend_from_slice(part);
                }
                None => {
                    let (good, bad) = self.sort_out(frames, part)?;
                    rejected.extend(bad);
                    if !good.is_empty() {
                        match self.all(frames, &good)? {
                            Some(b) => batches.push(b),
                            None => return Err("messages that decode alone do not decode together".into()),
                        }
                        kept.extend(good);
                    }
                }
            }
        }
        let batch = match batches.len() {
            0 => RecordBatch::new_empty(self.schema.clone()),
            1 => batches
                .pop()
                .unwrap_or_else(|| RecordBatch::new_empty(self.schema.clone())),
            _ => concat_batches(&self.schema, &batches).map_err(|e| e.to_string())?,
        };
        Ok(DecodedFrames {
            batch,
            kept,
            rejected,
        })
    }

    /// The messages as one batch, or `None` when any of them is bad.
    fn all(&self, frames: &Frames, which: &[usize]) -> Result<Option<RecordBatch>, String> {
        let mut d = self.builder(which.len())?;
        for (k, &i) in which.iter().enumerate() {
            if one_more(&mut d, frames.get(i), k).is_err() {
                return Ok(None);
            }
        }
        Ok(match d.flush() {
            Ok(Some(b)) if b.num_rows() == which.len() => Some(b),
            Ok(None) if which.is_empty() => Some(RecordBatch::new_empty(self.schema.clone())),
            _ => None,
        })
    }

    /// Checks every message alone: the good ones, and the bad ones with their reason.
    #[allow(clippy::type_complexity)]
    fn sort_out(
        &self,
        frames: &Frames,
        which: &[usize],
    ) -> Result<(Vec<usize>, Vec<(usize, String)>), String> {
        let mut good = Vec::with_capacity(which.len());
        let mut bad = Vec::new();
        let mut d = self.builder(1)?;
        for &i in which {
            let checked = one_more(&mut d, frames.get(i), 0).and_then(|()| match d.flush() {
                Ok(Some(b)) if b.num_rows() == 1 => Ok(()),
                Ok(_) => Err("holds no JSON object".to_string()),
                Err(e) => Err(reason(&e.to_string())),
            });
            match checked {
                Ok(()) => good.push(i),
                Err(why) => {
                    bad.push((i, why));
                    // A failed decoder's state is undefined: start a new one.
                    d = self.builder(1)?;
                }
            }
        }
        Ok((good, bad))
    }
}

/// Feeds one message to `d`, which held `before` whole records: afterwards it must
/// hold one more, and nothing partial.
fn one_more(d: &mut Decoder, message: &[u8], before: usize) -> Result<(), String> {
    let used = d.decode(message).map_err(|e| reason(&e.to_string()))?;
    // A full decoder stops right after its last record, before trailing whitespace.
    let rest = message.get(used..).unwrap_or_default();
    if rest.iter().any(|b| !b.is_ascii_whitespace()) || d.len() > before + 1 {
        return Err("holds more than one JSON value".into());
    }
    if d.has_partial_record() {
        return Err("ends inside a JSON value (truncated?)".into());
    }
    if d.len() == before {
        return Err("holds no JSON object".into());
    }
    Ok(())
}

/// arrow-json's message, naming the field in the words of this project.
fn reason(message: &str) -> String {
    let m = message.strip_prefix("Json error: ").unwrap_or(message);
    if let Some(rest) = m.find("column '").map(|at| &m[at + 8..])
        && m.contains("missing from schema")
        && let Some(name) = rest.split('\'').next()
    {
        return format!("unknown field `{name}` (the schema has none; unknown_fields = \"dead_letter\")");
    }
    // The field prints as `Field { "name": Type }` (or `name: "name"` in older arrow).
    if m.contains("unmasked nulls in non-nullable")
        && let Some(name) = m
            .split("Field { \"")
            .nth(1)
            .or_else(|| m.split("name: \"").nth(1))
            .and_then(|r| r.split('"').next())
    {
        return format!("required field `{name}` is missing or null");
    }
    m.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::Array;
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Int64Type, TimestampMillisecondType};
    use arrow_schema::TimeUnit;

    fn frames(messages: &[&[u8]]) -> Frames {
        let mut f = Frames::default();
        for m in messages {
            f.push(m);
        }
        f
    }

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Millisecond, Some("+00:00".into())),
                true,
            ),
            Field::new("name", DataType::Utf8, true),
        ]))
    }

    #[test]
    fn good_messages_decode_in_one_pass_with_either_timestamp_form() {
        let d = JsonDecoder::new(schema(), false, 100).unwrap();
        let f = frames(&[
            br#"{"id": 1, "ts": "2024-05-01T10:00:00.250Z", "name": "a"}"#,
            br#"{"id": 2, "ts": 1714557600250, "extra": [1, 2]}"#,
            b" {\"id\": 3}\n",
        ]);
        let out = d.decode(&f, &[0, 1, 2]).unwrap();
        assert!(out.rejected.is_empty(), "{:?}", out.rejected);
        assert_eq!(out.kept, [0, 1, 2]);
        let ids = out.batch.column(0).as_primitive::<Int64Type>().values().to_vec();
        assert_eq!(ids, [1, 2, 3]);
        let ts = out.batch.column(1).as_primitive::<TimestampMillisecondType>();
        assert_eq!(ts.value(0), 1_714_557_600_250);
        assert_eq!(ts.value(1), 1_714_557_600_250);
        assert!(ts.is_null(2));
    }

    #[test]
    fn bad_messages_are_rejected_with_their_field_and_neighbours_kept() {
        let d = JsonDecoder::new(schema(), false, 100).unwrap();
        let f = frames(&[
            br#"{"id": "1"}"#,
            br#"{"id": "one"}"#,
            br#"{"name": "no id"}"#,
            br#"{"id": 4"#,
            br#"{"id": 5}{"id": 6}"#,
            b"",
            b"\xff\xfe",
            br#"[1, 2]"#,
            br#"{"id": 9, "ts": "yesterday"}"#,
            br#"{"id": 10}"#,
        ]);
        let which: Vec<usize> = (0..f.len()).collect();
        let out = d.decode(&f, &which).unwrap();
        assert_eq!(out.kept, [0, 9]);
        let ids = out.batch.column(0).as_primitive::<Int64Type>().values().to_vec();
        assert_eq!(ids, [1, 10]);
        let why: Vec<(usize, &str)> = out.rejected.iter().map(|(i, w)| (*i, w.as_str())).collect();
        assert_eq!(
            why.iter().map(|w| w.0).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5, 6, 7, 8],
            "{why:?}"
        );
        assert!(why[0].1.contains("'id'"), "{why:?}");
        assert!(why[1].1.contains("required field `id`"), "{why:?}");
        assert!(why[2].1.contains("truncated"), "{why:?}");
        assert!(why[3].1.contains("more than one"), "{why:?}");
        assert!(why[4].1.contains("no JSON object"), "{why:?}");
        assert!(why[7].1.contains("'ts'"), "{why:?}");
    }

    #[test]
    fn strict_mode_names_the_unknown_field() {
        let d = JsonDecoder::new(schema(), true, 100).unwrap();
        let f = frames(&[br#"{"id": 1}"#, br#"{"id": 2, "color": "red"}"#]);
        let out = d.decode(&f, &[0, 1]).unwrap();
        assert_eq!(out.kept, [0]);
        assert!(
            out.rejected[0].1.contains("unknown field `color`"),
            "{:?}",
            out.rejected
        );
    }

    #[test]
    fn chunks_larger_than_a_batch_are_cut_and_joined() {
        let d = JsonDecoder::new(schema(), false, 2).unwrap();
        let f = frames(&[
            br#"{"id": 1}"#,
            br#"{"id": 2}"#,
            br#"{"id": x}"#,
            br#"{"id": 4}"#,
            br#"{"id": 5}"#,
        ]);
        let out = d.decode(&f, &[0, 1, 2, 3, 4]).unwrap();
        assert_eq!(out.kept, [0, 1, 3, 4]);
        assert_eq!(out.batch.num_rows(), 4);
        // A subset only.
        let out = d.decode(&f, &[1, 4]).unwrap();
        assert_eq!(out.kept, [1, 4]);
    }

    #[test]
    fn enums_are_read_as_their_symbols() {
        let s = Schema::new(vec![Field::new(
            "kind",
            DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
            false,
        )]);
        let d = JsonDecoder::new(json_schema(&s), false, 10).unwrap();
        let out = d.decode(&frames(&[br#"{"kind": "click"}"#]), &[0]).unwrap();
        assert_eq!(out.batch.column(0).as_string::<i32>().value(0), "click");
    }
}
