//! Decoders: bytes in a wire or file format → Arrow record batches, in one pass, with
//! no per-row intermediate values.

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

/// A decoder turns one input into a sequence of batches sharing one schema.
pub trait RecordDecoder: Send {
    fn schema(&self) -> SchemaRef;
    /// The next batch of at most the configured number of rows; `None` at the end.
    fn next_batch(&mut self) -> Result<Option<RecordBatch>, DecodeError>;
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
pub struct JsonLinesDecoder {
    input: String,
    schema: SchemaRef,
    reader: deltalake::arrow::json::Reader<BufReader<File>>,
    rows_read: u64,
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
        let reader = JsonReaderBuilder::new(schema.clone())
            .with_batch_size(batch_rows.max(1))
            .build(BufReader::new(file))
            .map_err(|e| DecodeError::Malformed {
                input: input.clone(),
                message: e.to_string(),
            })?;
        Ok(Self {
            input,
            schema,
            reader,
            rows_read: 0,
        })
    }
}

impl RecordDecoder for JsonLinesDecoder {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn next_batch(&mut self) -> Result<Option<RecordBatch>, DecodeError> {
        match self.reader.next() {
            None => Ok(None),
            Some(Ok(batch)) => {
                self.rows_read += batch.num_rows() as u64;
                Ok(Some(batch))
            }
            Some(Err(e)) => Err(DecodeError::Malformed {
                input: self.input.clone(),
                message: format!("after record {}: {e}", self.rows_read),
            }),
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

    fn next_batch(&mut self) -> Result<Option<RecordBatch>, DecodeError> {
        match self.reader.next() {
            None => Ok(None),
            Some(Ok(batch)) => {
                self.rows_read += batch.num_rows() as u64;
                Ok(Some(batch))
            }
            Some(Err(e)) => Err(DecodeError::Malformed {
                input: self.input.clone(),
                message: format!("after record {}: {e}", self.rows_read),
            }),
        }
    }
}
