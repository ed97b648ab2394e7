//! Decoders: bytes in a wire or file format → Arrow record batches, in one pass, with
//! no per-row intermediate values.

pub mod avro_check;
pub mod confluent;
pub mod debezium;
pub mod json;

use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use deltalake::arrow::array::RecordBatch;
use deltalake::arrow::datatypes::SchemaRef;
use deltalake::arrow::json::reader::{ReaderBuilder as JsonReaderBuilder, infer_json_schema_from_seekable};

/// Why records could not be decoded. Names the input and the records concerned.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("{input}: {message}")]
    Malformed { input: String, message: String },
    #[error("{input}: {source}")]
    Io {
        input: String,
        #[source]
        source: std::io::Error,
    },
}

/// One decoded chunk of an input.
#[derive(Debug)]
pub struct Decoded {
    pub batch: RecordBatch,
    /// Index in the input of each row of `batch`; `None` when they are the contiguous
    /// run `first..first + batch.num_rows()`.
    pub rows: Option<Vec<u64>>,
    /// Index in the input of the first record this chunk covers.
    pub first: u64,
    /// Records this chunk covers, rejected ones included.
    pub consumed: u64,
    /// Records that could not be decoded, in input order.
    pub rejected: Vec<Rejected>,
}

/// A record that could not be decoded: its bytes and why.
#[derive(Debug, Clone)]
pub struct Rejected {
    /// Index of the record in its input.
    pub index: u64,
    pub payload: Vec<u8>,
    pub message: String,
}

/// A decoder turns one input into a sequence of batches sharing one schema.
pub trait RecordDecoder: Send {
    fn schema(&self) -> SchemaRef;
    /// The next chunk of at most the configured number of records; `None` at the end.
    fn next_batch(&mut self) -> Result<Option<Decoded>, DecodeError>;
}

/// Rows inspected to infer a JSON-lines schema.
const JSON_INFER_ROWS: usize = 1_000;

/// Infers the schema of a JSON-lines file from its first records.
pub fn infer_json_lines_schema(path: &Path) -> Result<SchemaRef, DecodeError> {
    let input = path.display().to_string();
    let file = File::open(path).map_err(|source| DecodeError::Io {
        input: input.clone(),
        source,
    })?;
    let (schema, _) =
        infer_json_schema_from_seekable(BufReader::new(file), Some(JSON_INFER_ROWS)).map_err(|e| {
            DecodeError::Malformed {
                input,
                message: format!("cannot infer a schema: {e}"),
            }
        })?;
    Ok(Arc::new(schema))
}

/// JSON-lines file decoder against a fixed schema; fields outside it are ignored.
///
/// Each record is one non-blank line. A chunk is decoded in one pass; only when that
/// fails is it decoded line by line, so that one bad record is rejected (with its line
/// and reason) and its neighbours are kept.
pub struct JsonLinesDecoder {
    input: String,
    schema: SchemaRef,
    reader: BufReader<File>,
    batch_rows: usize,
    /// Index of the next record.
    next_index: u64,
    /// Line number (1-based) of the next line, for messages.
    line_no: u64,
    /// Per record of the current chunk: byte range in `buf` and line number.
    spans: Vec<(usize, usize, u64)>,
    buf: Vec<u8>,
    line: Vec<u8>,
}

impl std::fmt::Debug for JsonLinesDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonLinesDecoder")
            .field("input", &self.input)
            .finish()
    }
}

impl JsonLinesDecoder {
    pub fn open(path: &Path, schema: SchemaRef, batch_rows: usize) -> Result<Self, DecodeError> {
        let input = path.display().to_string();
        let file = File::open(path).map_err(|source| DecodeError::Io {
            input: input.clone(),
            source,
        })?;
        Ok(Self {
            input,
            schema,
            reader: BufReader::with_capacity(1 << 20, file),
            batch_rows: batch_rows.max(1),
            next_index: 0,
            line_no: 1,
            spans: Vec::new(),
            buf: Vec::new(),
            line: Vec::new(),
        })
    }

    fn decoder(&self, rows: usize) -> Result<deltalake::arrow::json::reader::Decoder, String> {
        JsonReaderBuilder::new(self.schema.clone())
            .with_batch_size(rows.max(1))
            .build_decoder()
            .map_err(|e| e.to_string())
    }

    /// Decodes `bytes` (whole records) into one batch.
    fn decode(&self, bytes: &[u8], rows: usize) -> Result<RecordBatch, String> {
        let mut d = self.decoder(rows)?;
        let mut rest = bytes;
        while !rest.is_empty() {
            let n = d.decode(rest).map_err(|e| e.to_string())?;
            if n == 0 {
                // The decoder is full: the bytes hold more records than lines.
                return Err("a line holds more than one record".into());
            }
            rest = &rest[n..];
        }
        Ok(d.flush()
            .map_err(|e| e.to_string())?
            .unwrap_or_else(|| RecordBatch::new_empty(self.schema.clone())))
    }

    /// The slow path: every record alone.
    fn decode_each(&self, first: u64) -> Result<Decoded, DecodeError> {
        let mut good = Vec::new();
        let mut rows = Vec::new();
        let mut rejected = Vec::new();
        for (i, &(start, end, line)) in self.spans.iter().enumerate() {
            let bytes = &self.buf[start..end];
            match self.decode(bytes, 1) {
                Ok(b) if b.num_rows() == 1 => {
                    good.push(b);
                    rows.push(first + i as u64);
                }
                Ok(_) => rejected.push(Rejected {
                    index: first + i as u64,
                    payload: bytes.to_vec(),
                    message: format!("line {line}: holds no record"),
                }),
                Err(e) => rejected.push(Rejected {
                    index: first + i as u64,
                    payload: bytes.to_vec(),
                    message: format!("line {line}: {e}"),
                }),
            }
        }
        let batch = deltalake::arrow::compute::concat_batches(&self.schema, &good).map_err(|e| {
            DecodeError::Malformed {
                input: self.input.clone(),
                message: e.to_string(),
            }
        })?;
        Ok(Decoded {
            batch,
            rows: Some(rows),
            first,
            consumed: self.spans.len() as u64,
            rejected,
        })
    }
}

impl RecordDecoder for JsonLinesDecoder {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn next_batch(&mut self) -> Result<Option<Decoded>, DecodeError> {
        use std::io::BufRead;
        self.buf.clear();
        self.spans.clear();
        while self.spans.len() < self.batch_rows {
            self.line.clear();
            let n = self
                .reader
                .read_until(b'\n', &mut self.line)
                .map_err(|source| DecodeError::Io {
                    input: self.input.clone(),
                    source,
                })?;
            if n == 0 {
                break;
            }
            let line_no = self.line_no;
            self.line_no += 1;
            if self.line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let start = self.buf.len();
            self.buf.extend_from_slice(&self.line);
            if self.buf.last() != Some(&b'\n') {
                self.buf.push(b'\n');
            }
            self.spans.push((start, self.buf.len(), line_no));
        }
        if self.spans.is_empty() {
            return Ok(None);
        }
        let first = self.next_index;
        self.next_index += self.spans.len() as u64;
        match self.decode(&self.buf, self.spans.len()) {
            Ok(batch) if batch.num_rows() == self.spans.len() => Ok(Some(Decoded {
                batch,
                rows: None,
                first,
                consumed: self.spans.len() as u64,
                rejected: Vec::new(),
            })),
            _ => self.decode_each(first).map(Some),
        }
    }
}

/// Avro object container file decoder (schema from the file header).
pub struct AvroFileDecoder {
    input: String,
    reader: arrow_avro::reader::Reader<BufReader<File>>,
    rows_read: u64,
}

impl std::fmt::Debug for AvroFileDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AvroFileDecoder")
            .field("input", &self.input)
            .finish()
    }
}

impl AvroFileDecoder {
    pub fn open(path: &Path, batch_rows: usize) -> Result<Self, DecodeError> {
        let input = path.display().to_string();
        let file = File::open(path).map_err(|source| DecodeError::Io {
            input: input.clone(),
            source,
        })?;
        let reader = arrow_avro::reader::ReaderBuilder::new()
            .with_batch_size(batch_rows.max(1))
            .build(BufReader::new(file))
            .map_err(|e| DecodeError::Malformed {
                input: input.clone(),
                message: format!("not a readable Avro container file: {e}"),
            })?;
        Ok(Self {
            input,
            reader,
            rows_read: 0,
        })
    }
}

impl RecordDecoder for AvroFileDecoder {
    fn schema(&self) -> SchemaRef {
        self.reader.schema()
    }

    fn next_batch(&mut self) -> Result<Option<Decoded>, DecodeError> {
        match self.reader.next() {
            None => Ok(None),
            Some(Ok(batch)) => {
                let first = self.rows_read;
                self.rows_read += batch.num_rows() as u64;
                Ok(Some(Decoded {
                    consumed: batch.num_rows() as u64,
                    batch,
                    rows: None,
                    first,
                    rejected: Vec::new(),
                }))
            }
            Some(Err(e)) => Err(DecodeError::Malformed {
                input: self.input.clone(),
                message: format!("after record {}: {e}", self.rows_read),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltalake::arrow::array::AsArray;
    use deltalake::arrow::datatypes::{DataType, Field, Int64Type, Schema};

    #[test]
    fn bad_json_lines_are_rejected_one_by_one_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.jsonl");
        std::fs::write(
            &path,
            "{\"id\": 1}\n\n{\"id\": oops\n{\"id\": \"two\"}\n{\"id\": 3}{\"id\": 4}\n{\"id\": 5}\n",
        )
        .unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, true)]));
        let mut d = JsonLinesDecoder::open(&path, schema, 100).unwrap();
        let chunk = d.next_batch().unwrap().unwrap();
        let ids: Vec<i64> = chunk
            .batch
            .column(0)
            .as_primitive::<Int64Type>()
            .values()
            .to_vec();
        assert_eq!(ids, [1, 5]);
        // Records are non-blank lines: indices 0 and 4 survive, 1..=3 are rejected.
        assert_eq!(chunk.rows, Some(vec![0, 4]));
        assert_eq!(chunk.consumed, 5);
        let rejected: Vec<(u64, &str)> = chunk
            .rejected
            .iter()
            .map(|r| (r.index, r.message.as_str()))
            .collect();
        assert_eq!(rejected.len(), 3, "{rejected:?}");
        assert_eq!(rejected[0].0, 1);
        assert!(rejected[0].1.starts_with("line 3: "), "{rejected:?}");
        assert!(rejected[2].1.contains("more than one record"), "{rejected:?}");
        assert_eq!(chunk.rejected[1].payload, b"{\"id\": \"two\"}\n");
        assert!(d.next_batch().unwrap().is_none());
    }
}
