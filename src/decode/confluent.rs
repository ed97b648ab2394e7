//! Confluent-framed Avro (`0x00`, a 4-byte big-endian schema id, an Avro datum) →
//! Arrow, resolved against one reader schema.
//!
//! Per writer schema id, once: the schema is fetched ([`WriterSchemas`]), must be
//! readable with the reader schema (Avro resolution rules), and is compiled twice: a
//! strict [`Checker`] and an arrow-avro decoder resolving it to the reader schema.
//! Per frame: the header and the datum are checked, then the datum is decoded straight
//! into Arrow builders. A frame that fails anywhere is rejected with its reason; the
//! others are kept, in order.

use std::collections::HashMap;
use std::sync::Arc;

use apache_avro::Schema;
use arrow_avro::reader::{Decoder, ReaderBuilder};
use arrow_avro::schema::{AvroSchema, Fingerprint, FingerprintAlgorithm, SchemaStore};
// The arrow crates themselves (the versions deltalake re-exports), so that the fuzz
// target can build this file without deltalake.
use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use arrow_select::concat::concat_batches;

use super::avro_check::{Checker, can_read};

/// The Confluent wire format's magic byte.
pub const MAGIC: u8 = 0;
/// Magic byte plus schema id.
pub const HEADER_LEN: usize = 5;

/// Where writer schemas come from (a registry, or a fixed set in tests).
pub trait WriterSchemas: Send {
    /// The schema text for `id`: `Ok(Err(reason))` when records written with it must be
    /// rejected (unknown id, not under the topic's subject); `Err` when the answer is
    /// not known now (the registry is unreachable), which must not reject anything.
    fn writer(&mut self, id: u32) -> Result<Result<String, String>, String>;
}

/// Frames of one chunk: payloads back to back, with their spans.
#[derive(Debug, Default, Clone)]
pub struct Frames {
    pub data: Vec<u8>,
    pub spans: Vec<(usize, usize)>,
}

impl Frames {
    pub fn push(&mut self, payload: &[u8]) {
        let start = self.data.len();
        self.data.extend_from_slice(payload);
        self.spans.push((start, self.data.len()));
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    pub fn get(&self, i: usize) -> &[u8] {
        let (s, e) = self.spans[i];
        &self.data[s..e]
    }

    pub fn clear(&mut self) {
        self.data.clear();
        self.spans.clear();
    }
}

/// What decoding a chunk gave.
#[derive(Debug)]
pub struct DecodedFrames {
    /// The kept records, in the reader schema.
    pub batch: RecordBatch,
    /// For each row of `batch`, the index of its frame.
    pub kept: Vec<usize>,
    /// Rejected frames: index and reason.
    pub rejected: Vec<(usize, String)>,
}

/// One writer schema, ready to decode with.
struct Writer {
    checker: Checker,
    decoder: Decoder,
}

/// Decodes Confluent-framed Avro against a reader schema.
pub struct ConfluentDecoder {
    reader_text: String,
    reader: Schema,
    schema: SchemaRef,
    batch_rows: usize,
    /// Per writer id: ready, or why its records are rejected.
    writers: HashMap<u32, Result<Writer, String>>,
}

impl std::fmt::Debug for ConfluentDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfluentDecoder")
            .field("schema", &self.schema)
            .field("writers", &self.writers.len())
            .finish()
    }
}

fn arrow_decoder(writer_id: u32, writer: &str, reader: &str, batch_rows: usize) -> Result<Decoder, String> {
    let mut store = SchemaStore::new_with_type(FingerprintAlgorithm::Id);
    store
        .set(Fingerprint::Id(writer_id), AvroSchema::new(writer.to_string()))
        .map_err(|e| e.to_string())?;
    ReaderBuilder::new()
        .with_reader_schema(AvroSchema::new(reader.to_string()))
        .with_writer_schema_store(store)
        .with_active_fingerprint(Fingerprint::Id(writer_id))
        .with_batch_size(batch_rows.max(1))
        .build_decoder()
        .map_err(|e| e.to_string())
}

impl ConfluentDecoder {
    /// A decoder producing `reader` (Avro schema JSON) records, up to `batch_rows` per chunk.
    pub fn new(reader: &str, batch_rows: usize) -> Result<Self, String> {
        let parsed = Schema::parse_str(reader).map_err(|e| format!("reader schema: {e}"))?;
        if !matches!(parsed, Schema::Record(_)) {
            return Err("reader schema: must be a record".into());
        }
        let probe = arrow_decoder(0, reader, reader, 1).map_err(|e| format!("reader schema: {e}"))?;
        let schema = mark_uuids(&parsed, &probe.schema());
        Ok(Self {
            reader_text: reader.to_string(),
            reader: parsed,
            schema,
            batch_rows,
            writers: HashMap::new(),
        })
    }

    /// The Arrow schema of decoded records.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn writer(
        &mut self,
        id: u32,
        schemas: &mut dyn WriterSchemas,
    ) -> Result<&mut Result<Writer, String>, String> {
        if !self.writers.contains_key(&id) {
            let ready = match schemas.writer(id)? {
                Err(reason) => Err(reason),
                Ok(text) => self.prepare(id, &text),
            };
            self.writers.insert(id, ready);
        }
        self.writers
            .get_mut(&id)
            .ok_or_else(|| format!("schema id {id} vanished from the cache"))
    }

    fn prepare(&self, id: u32, text: &str) -> Result<Writer, String> {
        let parsed =
            Schema::parse_str(text).map_err(|e| format!("schema id {id} is not a valid Avro schema: {e}"))?;
        can_read(&parsed, &self.reader)
            .map_err(|e| format!("schema id {id} cannot be read with the reader schema: {e}"))?;
        let checker = Checker::new(&parsed).map_err(|e| format!("schema id {id}: {e}"))?;
        let decoder = arrow_decoder(id, text, &self.reader_text, self.batch_rows)
            .map_err(|e| format!("schema id {id} cannot be resolved to the reader schema: {e}"))?;
        Ok(Writer { checker, decoder })
    }

    /// Decodes `frames[i]` for every `i` in `which` (ascending). `Err` only when a
    /// writer schema cannot be fetched now; bad frames are in `rejected`.
    pub fn decode(
        &mut self,
        frames: &Frames,
        which: impl Iterator<Item = usize>,
        schemas: &mut dyn WriterSchemas,
    ) -> Result<DecodedFrames, String> {
        let mut batches = Vec::new();
        let mut kept = Vec::new();
        let mut rejected = Vec::new();
        // The writer whose decoder holds rows not flushed yet, and where its rows start
        // in `kept`.
        let mut open: Option<(u32, usize)> = None;
        for i in which {
            let frame = frames.get(i);
            let id = match header(frame) {
                Ok(id) => id,
                Err(reason) => {
                    rejected.push((i, reason));
                    continue;
                }
            };
            if let Some((o, _)) = open
                && o != id
            {
                self.flush(open.take(), &mut batches)?;
            }
            let writer = match self.writer(id, schemas)? {
                Ok(w) => w,
                Err(reason) => {
                    rejected.push((i, reason.clone()));
                    continue;
                }
            };
            let body = &frame[HEADER_LEN..];
            if body.is_empty() {
                rejected.push((i, format!("schema id {id}: the record has no datum bytes")));
                continue;
            }
            if let Err(e) = writer.checker.check(body) {
                rejected.push((i, format!("schema id {id}: {e}")));
                continue;
            }
            if let Err(reason) = Self::append(writer, frame) {
                // The check and the decoder disagree: the decoder may hold half a row.
                // Start it afresh and decode this run's earlier frames again.
                rejected.push((i, format!("schema id {id}: {reason}")));
                let start = open.map_or(kept.len(), |(_, s)| s);
                let again: Vec<usize> = kept.drain(start..).collect();
                let text = schemas.writer(id)?.unwrap_or_default();
                let fresh = self.prepare(id, &text);
                open = None;
                match fresh {
                    Ok(mut w) => {
                        for j in again {
                            match Self::append(&mut w, frames.get(j)) {
                                Ok(()) => kept.push(j),
                                Err(reason) => rejected.push((j, format!("schema id {id}: {reason}"))),
                            }
                        }
                        self.writers.insert(id, Ok(w));
                        open = Some((id, start));
                    }
                    Err(reason) => {
                        rejected.extend(again.into_iter().map(|j| (j, reason.clone())));
                        self.writers.insert(id, Err(reason));
                    }
                }
                rejected.sort_by_key(|r| r.0);
                continue;
            }
            kept.push(i);
            let start = open.map_or(kept.len() - 1, |(_, s)| s);
            open = Some((id, start));
            if self
                .writers
                .get(&id)
                .is_some_and(|w| w.as_ref().is_ok_and(|w| w.decoder.batch_is_full()))
            {
                self.flush(open.take(), &mut batches)?;
            }
        }
        self.flush(open, &mut batches)?;
        let batch = concat_batches(&self.schema, &batches).map_err(|e| e.to_string())?;
        Ok(DecodedFrames {
            batch,
            kept,
            rejected,
        })
    }

    /// Decodes one checked frame into `w`'s builders.
    fn append(w: &mut Writer, frame: &[u8]) -> Result<(), String> {
        let before = w.decoder.capacity();
        let n = w
            .decoder
            .decode(frame)
            .map_err(|e| format!("cannot decode: {e}"))?;
        if n != frame.len() || w.decoder.capacity() + 1 != before {
            return Err(format!("the decoder took {n} of {} bytes", frame.len()));
        }
        Ok(())
    }

    fn flush(&mut self, open: Option<(u32, usize)>, out: &mut Vec<RecordBatch>) -> Result<(), String> {
        let Some((id, _)) = open else { return Ok(()) };
        if let Some(Ok(w)) = self.writers.get_mut(&id)
            && let Some(b) = w.decoder.flush().map_err(|e| e.to_string())?
        {
            // Every writer resolves to the reader schema; only field metadata may differ.
            let b =
                RecordBatch::try_new(self.schema.clone(), b.columns().to_vec()).map_err(|e| e.to_string())?;
            out.push(b);
        }
        Ok(())
    }
}

/// Marks top-level `uuid` fields (16 bytes in Arrow) with Arrow's UUID extension type,
/// so that the sink stores them as text; arrow-avro only does so with a feature that
/// would rebuild the whole arrow tree.
fn mark_uuids(avro: &Schema, arrow: &SchemaRef) -> SchemaRef {
    let Schema::Record(rec) = avro else {
        return arrow.clone();
    };
    let fields: Vec<arrow_schema::Field> = arrow
        .fields()
        .iter()
        .map(|f| {
            let is_uuid = rec
                .fields
                .iter()
                .any(|a| a.name == *f.name() && matches!(a.schema, Schema::Uuid(_)));
            if is_uuid && matches!(f.data_type(), arrow_schema::DataType::FixedSizeBinary(16)) {
                let mut meta = f.metadata().clone();
                meta.insert("ARROW:extension:name".into(), "arrow.uuid".into());
                f.as_ref().clone().with_metadata(meta)
            } else {
                f.as_ref().clone()
            }
        })
        .collect();
    std::sync::Arc::new(arrow_schema::Schema::new_with_metadata(
        fields,
        arrow.metadata().clone(),
    ))
}

/// The schema id of a frame, or why the frame is not Confluent-framed.
pub fn header(frame: &[u8]) -> Result<u32, String> {
    match frame {
        [] => Err("empty record".into()),
        [MAGIC, a, b, c, d, ..] => Ok(u32::from_be_bytes([*a, *b, *c, *d])),
        [MAGIC, ..] => Err(format!(
            "record of {} bytes is shorter than the 5-byte Confluent header",
            frame.len()
        )),
        [m, ..] => Err(format!(
            "magic byte {m:#04x} is not the Confluent wire format's 0x00"
        )),
    }
}

/// A fixed set of writer schemas: for tests, benchmarks and the fuzz target.
#[derive(Debug, Default, Clone)]
pub struct FixedSchemas(pub HashMap<u32, String>);

impl WriterSchemas for FixedSchemas {
    fn writer(&mut self, id: u32) -> Result<Result<String, String>, String> {
        Ok(self
            .0
            .get(&id)
            .cloned()
            .ok_or_else(|| format!("schema id {id} is not in the registry")))
    }
}

/// Shared so that one registry answer serves every partition's decoder.
pub type SharedSchemas = Arc<std::sync::Mutex<dyn WriterSchemas>>;

#[cfg(test)]
mod tests;
