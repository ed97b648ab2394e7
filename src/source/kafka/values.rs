//! Message values → Arrow, per `format`: Confluent-framed Avro (against a reader
//! schema, writer schemas from the registry) or JSON (against a declared schema), and
//! for the Debezium formats the envelope those decode to.
//!
//! Debezium's JSON converter writes an envelope either bare or, with
//! `schemas.enable`, inside `{"schema": …, "payload": …}`. Both shapes are decoded
//! with one schema holding the envelope's fields at the top and under `payload`; a
//! message's envelope is its `payload` when it has one. Nothing here keeps state
//! between chunks but the writer schemas already fetched.

use std::sync::Arc;

use deltalake::arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch};
use deltalake::arrow::compute::kernels::zip::zip;
use deltalake::arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};

use crate::config::{KafkaConfig, KafkaFormat, UnknownFields};
use crate::decode::confluent::{ConfluentDecoder, DecodedFrames, Frames};
use crate::decode::json::{JsonDecoder, json_schema};
use crate::source::SourceError;

use super::schemas::RegistrySchemas;

/// Decodes one topic's values.
#[derive(Debug)]
pub enum ValueDecoder {
    Avro {
        decoder: Box<ConfluentDecoder>,
        schemas: Box<RegistrySchemas>,
    },
    Json(JsonDecoder),
    /// Debezium JSON: `decoder` reads both envelope shapes, `envelope` is what the
    /// decoded envelope batch looks like.
    DebeziumJson {
        decoder: JsonDecoder,
        envelope: SchemaRef,
    },
}

/// The fields of a Debezium envelope as the JSON converter writes them, around `row`.
fn envelope_fields(row: &Fields) -> Vec<Field> {
    vec![
        Field::new("before", DataType::Struct(row.clone()), true),
        Field::new("after", DataType::Struct(row.clone()), true),
        Field::new("op", DataType::Utf8, true),
        Field::new("ts_ms", DataType::Int64, true),
        Field::new(
            "source",
            DataType::Struct(vec![Field::new("ts_ms", DataType::Int64, true)].into()),
            true,
        ),
    ]
}

/// The schema values are read with.
#[derive(Debug)]
pub enum Declared {
    /// Avro schema text: the reader schema of Avro values, what JSON values are read
    /// against.
    Avro(String),
    /// The columns of a table the topic already feeds (JSON values only).
    Table(SchemaRef),
}

impl ValueDecoder {
    /// `schemas`: the registry, for Avro values.
    pub fn open(
        cfg: &KafkaConfig,
        topic: &str,
        declared: Declared,
        schemas: Option<RegistrySchemas>,
        chunk_rows: usize,
    ) -> Result<Self, SourceError> {
        let setup = |e: String| SourceError::Setup(format!("topic {topic}: {e}"));
        // What JSON values are read against (the Avro decoder is built only for it).
        let json_declared = |declared: &Declared| -> Result<SchemaRef, SourceError> {
            let arrow = match declared {
                Declared::Avro(text) => ConfluentDecoder::new(text, chunk_rows).map_err(setup)?.schema(),
                Declared::Table(s) => s.clone(),
            };
            Ok(json_schema(&arrow))
        };
        match cfg.format {
            KafkaFormat::Avro | KafkaFormat::DebeziumAvro => {
                let Declared::Avro(reader) = declared else {
                    return Err(setup("Avro values need a reader schema".into()));
                };
                let avro = ConfluentDecoder::new(&reader, chunk_rows).map_err(setup)?;
                let schemas = schemas.ok_or_else(|| setup("Avro values need a schema registry".into()))?;
                Ok(Self::Avro {
                    decoder: Box::new(avro),
                    schemas: Box::new(schemas),
                })
            }
            KafkaFormat::Json => {
                let strict = cfg.unknown_fields == UnknownFields::DeadLetter;
                let decoder = JsonDecoder::new(json_declared(&declared)?, strict, chunk_rows)
                    .map_err(|e| setup(format!("the schema cannot be read from JSON: {e}")))?;
                Ok(Self::Json(decoder))
            }
            KafkaFormat::DebeziumJson => {
                let declared = json_declared(&declared)?;
                // The schema file may be the row's record or a whole envelope.
                let row = match declared.field_with_name("after").map(|f| f.data_type()) {
                    Ok(DataType::Struct(row)) if declared.field_with_name("op").is_ok() => row.clone(),
                    _ => declared.fields().clone(),
                };
                let mut fields = envelope_fields(&row);
                fields.push(Field::new(
                    "payload",
                    DataType::Struct(fields.clone().into()),
                    true,
                ));
                let decoder = JsonDecoder::new(Arc::new(Schema::new(fields)), false, chunk_rows)
                    .map_err(|e| setup(format!("the schema cannot be read from JSON: {e}")))?;
                Ok(Self::DebeziumJson {
                    decoder,
                    envelope: Arc::new(Schema::new(envelope_fields(&row))),
                })
            }
        }
    }

    /// The Arrow schema of decoded values (for Debezium: of the envelope).
    pub fn schema(&self) -> SchemaRef {
        match self {
            Self::Avro { decoder, .. } => decoder.schema(),
            Self::Json(d) => d.schema(),
            Self::DebeziumJson { envelope, .. } => envelope.clone(),
        }
    }

    /// Decodes `frames[i]` for every `i` in `which` (ascending). `Err` when the
    /// registry cannot answer now (the chunk is tried again after a restart) or the
    /// schema cannot be decoded into.
    pub fn decode(&mut self, frames: &Frames, which: &[usize]) -> Result<DecodedFrames, String> {
        match self {
            Self::Avro { decoder, schemas } => {
                decoder.decode(frames, which.iter().copied(), schemas.as_mut())
            }
            Self::Json(d) => d.decode(frames, which),
            Self::DebeziumJson { decoder, envelope } => {
                let mut out = decoder.decode(frames, which)?;
                out.batch = unwrap_payload(&out.batch, envelope)?;
                Ok(out)
            }
        }
    }
}

/// Per row, the `payload` envelope where there is one, else the top-level one.
fn unwrap_payload(both: &RecordBatch, envelope: &SchemaRef) -> Result<RecordBatch, String> {
    let payload = both
        .column_by_name("payload")
        .and_then(|c| c.as_struct_opt())
        .ok_or("the decoded envelope has no payload")?;
    let columns = if payload.null_count() == payload.len() {
        envelope
            .fields()
            .iter()
            .map(|f| both.column_by_name(f.name()).cloned())
            .collect::<Option<Vec<ArrayRef>>>()
    } else {
        let wrapped = BooleanArray::from_iter((0..payload.len()).map(|i| Some(payload.is_valid(i))));
        let mut out = Vec::with_capacity(envelope.fields().len());
        for f in envelope.fields() {
            let (Some(inner), Some(top)) = (payload.column_by_name(f.name()), both.column_by_name(f.name()))
            else {
                return Err(format!("the decoded envelope has no `{}`", f.name()));
            };
            out.push(zip(&wrapped, inner, top).map_err(|e| e.to_string())?);
        }
        Some(out)
    };
    let columns = columns.ok_or("the decoded envelope lacks a field")?;
    RecordBatch::try_new(envelope.clone(), columns).map_err(|e| e.to_string())
}
