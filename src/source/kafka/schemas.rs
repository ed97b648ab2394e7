//! Per topic: the reader schema, writer schemas from the registry, and the step from
//! a partition's frames to a [`SourceBatch`] (plain records or Debezium changes).

use std::sync::Arc;

use deltalake::arrow::array::{ArrayRef, Int32Array, Int64Array, RecordBatch, TimestampMicrosecondArray};
use deltalake::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::config::{KafkaConfig, KafkaFormat, SubjectStrategy};
use crate::decode::confluent::{ConfluentDecoder, Frames, WriterSchemas};
use crate::decode::debezium;
use crate::registry::client::{Client, ClientError};
use crate::sink::dead_letter::{DeadLetters, ErrorKind};
use crate::source::{SourceBatch, SourceError};

/// Metadata columns of a plain-record table, before the record's own columns.
pub const PARTITION: &str = "_partition";
pub const OFFSET: &str = "_offset";
pub const TIMESTAMP: &str = "_timestamp";

/// Writer schemas from a registry: a schema must exist and be registered under the
/// topic's subject.
#[derive(Debug)]
pub struct RegistrySchemas {
    client: Client,
    topic: String,
    strategy: SubjectStrategy,
    handle: tokio::runtime::Handle,
}

impl RegistrySchemas {
    pub fn new(
        client: Client,
        topic: &str,
        strategy: SubjectStrategy,
        handle: tokio::runtime::Handle,
    ) -> Self {
        Self {
            client,
            topic: topic.to_string(),
            strategy,
            handle,
        }
    }
}

fn unavailable(e: &ClientError) -> String {
    format!("{e} (records wait until the registry answers)")
}

impl WriterSchemas for RegistrySchemas {
    fn writer(&mut self, id: u32) -> Result<Result<String, String>, String> {
        let text = match self.handle.block_on(self.client.schema(id)) {
            Ok(t) => t,
            Err(e) if e.is_not_found() => return Ok(Err(format!("schema id {id} is not in the registry"))),
            Err(e) => return Err(unavailable(&e)),
        };
        let record = match apache_avro::Schema::parse_str(&text) {
            Ok(apache_avro::Schema::Record(r)) => r.name.fullname(None),
            Ok(_) => return Ok(Err(format!("schema id {id} is not a record schema"))),
            Err(e) => return Ok(Err(format!("schema id {id} is not a valid Avro schema: {e}"))),
        };
        let subject = self.strategy.subject(&self.topic, &record);
        match self.handle.block_on(self.client.lookup(&subject, &text)) {
            Ok(_) => Ok(Ok(text)),
            Err(e) if e.is_not_found() => Ok(Err(format!(
                "schema id {id} is not registered under subject {subject}"
            ))),
            Err(e) => Err(unavailable(&e)),
        }
    }
}

/// What the consumer thread gathered of one partition.
#[derive(Debug, Default)]
pub struct Chunk {
    pub frames: Frames,
    pub offsets: Vec<i64>,
    /// Kafka record timestamps (milliseconds), when the record has one.
    pub timestamps: Vec<Option<i64>>,
    /// One past the last offset seen, tombstones included.
    pub next: i64,
}

impl Chunk {
    pub fn clear(&mut self) {
        self.frames.clear();
        self.offsets.clear();
        self.timestamps.clear();
    }
}

/// Decodes one topic's records.
#[derive(Debug)]
pub struct TopicDecoder {
    topic: Arc<str>,
    format: KafkaFormat,
    decoder: ConfluentDecoder,
    schemas: Option<RegistrySchemas>,
    schema: SchemaRef,
}

impl TopicDecoder {
    /// Takes the reader schema from the configuration or, failing that, the latest
    /// version of the topic's subject.
    pub async fn open(cfg: &KafkaConfig, topic: &str, chunk_rows: usize) -> Result<Self, SourceError> {
        let client = Client::new(&cfg.schema_registry);
        let reader = match cfg.reader_schemas.get(topic) {
            Some(text) => text.clone(),
            None => {
                let subject = cfg.subject_strategy.subject(topic, "");
                client
                    .latest(&subject)
                    .await
                    .map_err(|e| {
                        let hint = if e.is_not_found() {
                            format!(
                                "; register the topic's schema or set source.reader_schemas.{topic} to a .avsc file"
                            )
                        } else {
                            String::new()
                        };
                        SourceError::Registry(format!("topic {topic}: reader schema from subject {subject}: {e}{hint}"))
                    })?
                    .schema
            }
        };
        let decoder = ConfluentDecoder::new(&reader, chunk_rows)
            .map_err(|e| SourceError::Setup(format!("topic {topic}: {e}")))?;
        let schema = match cfg.format {
            KafkaFormat::Avro => {
                let mut fields = vec![
                    Field::new(PARTITION, DataType::Int32, false),
                    Field::new(OFFSET, DataType::Int64, false),
                    Field::new(
                        TIMESTAMP,
                        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                        true,
                    ),
                ];
                let inner = decoder.schema();
                if let Some(f) = inner
                    .fields()
                    .iter()
                    .find(|f| [PARTITION, OFFSET, TIMESTAMP].contains(&f.name().as_str()))
                {
                    return Err(SourceError::Setup(format!(
                        "topic {topic}: the record has a field {} that Tributary adds itself",
                        f.name()
                    )));
                }
                fields.extend(inner.fields().iter().map(|f| f.as_ref().clone()));
                Arc::new(Schema::new(fields))
            }
            KafkaFormat::DebeziumAvro => debezium::change_schema(&decoder.schema())
                .map_err(|e| SourceError::Setup(format!("topic {topic}: {e}")))?,
        };
        Ok(Self {
            topic: Arc::from(topic),
            format: cfg.format,
            decoder,
            schemas: Some(RegistrySchemas::new(
                client,
                topic,
                cfg.subject_strategy,
                tokio::runtime::Handle::current(),
            )),
            schema,
        })
    }

    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// The batch of a partition's chunk; `None` when it holds nothing to hand over.
    pub fn decode(
        &mut self,
        chunk: &Chunk,
        partition: i32,
        shard: &Arc<str>,
        dead_letters: bool,
    ) -> Result<Option<SourceBatch>, SourceError> {
        if chunk.offsets.is_empty() {
            return Ok(None);
        }
        let schemas: &mut dyn WriterSchemas = match self.schemas.as_mut() {
            Some(s) => s,
            None => return Err(SourceError::Setup("no writer schemas".into())),
        };
        let decoded = self
            .decoder
            .decode(&chunk.frames, 0..chunk.frames.len(), schemas)
            .map_err(|e| SourceError::Registry(format!("topic {}: {e}", self.topic)))?;
        let mut rejected: Vec<(usize, String)> = decoded.rejected;
        let positions = Int64Array::from_iter_values(decoded.kept.iter().map(|&i| chunk.offsets[i]));
        let (records, positions) = match self.format {
            KafkaFormat::Avro => {
                let n = decoded.kept.len();
                let mut columns: Vec<ArrayRef> = vec![
                    Arc::new(Int32Array::from_iter_values(std::iter::repeat_n(partition, n))),
                    Arc::new(positions.clone()),
                    Arc::new(
                        TimestampMicrosecondArray::from_iter(
                            decoded
                                .kept
                                .iter()
                                .map(|&i| chunk.timestamps[i].and_then(|ms| ms.checked_mul(1000))),
                        )
                        .with_timezone("UTC"),
                    ),
                ];
                columns.extend(decoded.batch.columns().iter().cloned());
                let batch = RecordBatch::try_new(self.schema.clone(), columns)
                    .map_err(|e| SourceError::Setup(format!("topic {}: {e}", self.topic)))?;
                (batch, positions)
            }
            KafkaFormat::DebeziumAvro => {
                let changes = debezium::changes(&decoded.batch, &positions, shard, &self.schema)
                    .map_err(|e| SourceError::Setup(format!("topic {}: {e}", self.topic)))?;
                rejected.extend(
                    changes
                        .rejected
                        .into_iter()
                        .map(|(row, why)| (decoded.kept[row], why)),
                );
                let positions =
                    Int64Array::from_iter_values(changes.kept.iter().map(|&r| positions.value(r as usize)));
                (changes.batch, positions)
            }
        };
        rejected.sort_by_key(|r| r.0);
        if let Some((i, why)) = rejected.first()
            && !dead_letters
        {
            return Err(SourceError::Setup(format!(
                "topic {} partition {partition} offset {}: {why} (configure [dead_letters] to set such records aside and go on)",
                self.topic, chunk.offsets[*i]
            )));
        }
        let mut dead = DeadLetters::default();
        for (i, why) in &rejected {
            dead.push(
                shard,
                chunk.offsets[*i],
                ErrorKind::Decode,
                why,
                None,
                Some(chunk.frames.get(*i)),
            );
        }
        Ok(Some(SourceBatch {
            stream: self.topic.clone(),
            shard: shard.clone(),
            records,
            positions,
            next: chunk.next,
            end_of_input: false,
            rejected: (!dead.is_empty()).then(|| dead.finish()),
            control: None,
        }))
    }
}
