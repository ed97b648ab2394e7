//! Message keys → Arrow columns, per `key_format`: a `_key` string or binary column,
//! or a key record's fields (JSON against `key_schema`, or Confluent-framed Avro read
//! with writer schemas from the `{topic}-key` subject), named with `key_prefix`.
//!
//! A chunk's keys are decoded together, like its values; a key that cannot be decoded
//! rejects its record (to the dead letters) and never its neighbours. A record without
//! a key gets null key columns; an upsert topic rejects it instead (see
//! [`super::schemas`]).

use std::sync::Arc;

use deltalake::arrow::array::{ArrayRef, BinaryArray, StringArray, UInt32Array};
use deltalake::arrow::compute::take;
use deltalake::arrow::datatypes::{DataType, Field};

use crate::config::{KEY_COLUMN, KafkaConfig, KeyConfig, KeyFormat};
use crate::decode::confluent::{ConfluentDecoder, Frames};
use crate::decode::json::{JsonDecoder, json_schema};
use crate::registry::client::Client;
use crate::source::SourceError;

use super::schemas::RegistrySchemas;

/// Decodes one topic's keys.
#[derive(Debug)]
pub enum KeyDecoder {
    String,
    Bytes,
    Json {
        decoder: JsonDecoder,
        fields: Vec<Field>,
    },
    Avro {
        decoder: Box<ConfluentDecoder>,
        schemas: Box<RegistrySchemas>,
        fields: Vec<Field>,
    },
}

/// The keys of a chunk's records.
#[derive(Debug)]
pub struct Keys {
    /// One column per key field, one row per record asked for (null where the record
    /// has no key or its key was rejected).
    pub columns: Vec<ArrayRef>,
    /// Records whose key could not be decoded: frame index and reason.
    pub rejected: Vec<(usize, String)>,
}

impl KeyDecoder {
    pub async fn open(
        cfg: &KafkaConfig,
        key: &KeyConfig,
        topic: &str,
        client: Option<&Client>,
        chunk_rows: usize,
    ) -> Result<Self, SourceError> {
        let setup = |e: String| SourceError::Setup(format!("topic {topic}: keys: {e}"));
        let reader = match (&key.schema, key.format) {
            (_, KeyFormat::String) => return Ok(Self::String),
            (_, KeyFormat::Bytes) => return Ok(Self::Bytes),
            (Some(text), _) => text.clone(),
            (None, KeyFormat::Json) => return Err(setup("JSON keys need source.key_schema".into())),
            (None, KeyFormat::Avro) => {
                let client = client.ok_or_else(|| setup("Avro keys need a schema registry".into()))?;
                let subject = cfg.subject_strategy.subject_of(topic, "", true);
                client
                    .latest(&subject)
                    .await
                    .map_err(|e| {
                        SourceError::Registry(format!(
                            "topic {topic}: key schema from subject {subject}: {e}; register it or set source.key_schema"
                        ))
                    })?
                    .schema
            }
        };
        let avro = ConfluentDecoder::new(&reader, chunk_rows).map_err(setup)?;
        let prefixed = |schema: &deltalake::arrow::datatypes::Schema| -> Vec<Field> {
            schema
                .fields()
                .iter()
                .map(|f| {
                    f.as_ref()
                        .clone()
                        .with_name(format!("{}{}", key.prefix, f.name()))
                        .with_nullable(true)
                })
                .collect()
        };
        Ok(match key.format {
            KeyFormat::Json => {
                let schema = json_schema(&avro.schema());
                let fields = prefixed(&schema);
                let decoder = JsonDecoder::new(schema, false, chunk_rows)
                    .map_err(|e| setup(format!("the key schema cannot be read from JSON: {e}")))?;
                Self::Json { decoder, fields }
            }
            _ => {
                let client = client.ok_or_else(|| setup("Avro keys need a schema registry".into()))?;
                let fields = prefixed(&avro.schema());
                Self::Avro {
                    decoder: Box::new(avro),
                    schemas: Box::new(RegistrySchemas::for_keys(
                        client.clone(),
                        topic,
                        cfg.subject_strategy,
                        tokio::runtime::Handle::current(),
                    )),
                    fields,
                }
            }
        })
    }

    /// The columns keys become.
    pub fn fields(&self) -> Vec<Field> {
        match self {
            Self::String => vec![Field::new(KEY_COLUMN, DataType::Utf8, true)],
            Self::Bytes => vec![Field::new(KEY_COLUMN, DataType::Binary, true)],
            Self::Json { fields, .. } | Self::Avro { fields, .. } => fields.clone(),
        }
    }

    /// The key columns of records `which` (ascending); `present[i]`: record `i` has a
    /// key. `Err` only when the registry cannot answer now.
    pub fn decode(&mut self, keys: &Frames, present: &[bool], which: &[usize]) -> Result<Keys, String> {
        let mut rejected = Vec::new();
        let columns: Vec<ArrayRef> = match self {
            Self::String => {
                let col: StringArray = which
                    .iter()
                    .map(|&i| {
                        if !present[i] {
                            return None;
                        }
                        match std::str::from_utf8(keys.get(i)) {
                            Ok(s) => Some(s),
                            Err(e) => {
                                rejected.push((i, format!("the key is not UTF-8 text: {e}")));
                                None
                            }
                        }
                    })
                    .collect();
                vec![Arc::new(col)]
            }
            Self::Bytes => {
                let col: BinaryArray = which.iter().map(|&i| present[i].then(|| keys.get(i))).collect();
                vec![Arc::new(col)]
            }
            Self::Json { decoder, .. } => {
                let with: Vec<usize> = which.iter().copied().filter(|&i| present[i]).collect();
                let out = decoder.decode(keys, &with)?;
                rejected = out.rejected;
                spread(&out.batch, &out.kept, which)?
            }
            Self::Avro { decoder, schemas, .. } => {
                let with: Vec<usize> = which.iter().copied().filter(|&i| present[i]).collect();
                let out = decoder.decode(keys, with.iter().copied(), schemas.as_mut())?;
                rejected = out.rejected;
                spread(&out.batch, &out.kept, which)?
            }
        };
        for r in &mut rejected {
            if !r.1.starts_with("the key") {
                r.1 = format!("the key: {}", r.1);
            }
        }
        Ok(Keys { columns, rejected })
    }
}

/// The columns of `batch` (one row per `kept` record) spread over `which`: null where
/// a record has no decoded key.
fn spread(
    batch: &deltalake::arrow::array::RecordBatch,
    kept: &[usize],
    which: &[usize],
) -> Result<Vec<ArrayRef>, String> {
    let mut next = 0usize;
    let idx: UInt32Array = which
        .iter()
        .map(|&i| {
            if kept.get(next) == Some(&i) {
                next += 1;
                Some((next - 1) as u32)
            } else {
                None
            }
        })
        .collect();
    batch
        .columns()
        .iter()
        .map(|c| take(c.as_ref(), &idx, None).map_err(|e| e.to_string()))
        .collect()
}
