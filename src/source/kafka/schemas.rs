//! Per topic: the layout of its records and the step from a partition's gathered
//! messages to a [`SourceBatch`], in one of three layouts:
//! - plain rows: `_partition`, `_offset`, `_timestamp`, then the key's columns, `_headers`
//!   and the value's fields;
//! - Debezium changes: the change-row layout of [`crate::sink::change`], from the envelope;
//! - upsert changes (`upsert = true`): the same change-row layout, `_op` = `u` for a
//!   value and `d` for a tombstone, the key's columns, `_headers`, then the value's
//!   fields (null for a tombstone). A mirror takes the key's columns as its key.
//!
//! A key column and a value field of the same name are one column: the key's, or the
//! value's for a record without a key (their types must agree; `key_prefix` tells them
//! apart otherwise).

use std::sync::Arc;

use deltalake::arrow::array::{
    Array, ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray, UInt32Array,
};
use deltalake::arrow::compute::kernels::zip::zip;
use deltalake::arrow::compute::{is_not_null, take};
use deltalake::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use super::headers::{self, HeadersBuilder};
use super::keys::KeyDecoder;
use super::values::{Declared, ValueDecoder};
use crate::config::{HEADERS_COLUMN, KEY_COLUMN, KafkaConfig, SubjectStrategy};
use crate::decode::confluent::{Frames, WriterSchemas};
use crate::decode::debezium;
use crate::registry::client::{Client, ClientError};
use crate::sink::change::{COMMIT_TS, OP, POSITION, SOURCE, leading_fields};
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
    /// Key schemas (`{topic}-key`) rather than value schemas.
    key: bool,
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
            key: false,
            handle,
        }
    }

    /// Writer schemas of a topic's keys.
    pub fn for_keys(
        client: Client,
        topic: &str,
        strategy: SubjectStrategy,
        handle: tokio::runtime::Handle,
    ) -> Self {
        Self {
            key: true,
            ..Self::new(client, topic, strategy, handle)
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
        let subject = self.strategy.subject_of(&self.topic, &record, self.key);
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
    /// Values; a tombstone (kept on upsert topics only) is an empty frame.
    pub frames: Frames,
    /// Per record: whether it has a value (false for a tombstone).
    pub has_value: Vec<bool>,
    /// Keys, when the topic's keys are read (an absent key is an empty frame).
    pub keys: Frames,
    /// Per record, when keys are read: whether it has a key.
    pub has_key: Vec<bool>,
    /// Headers, when they are read: one map per record.
    pub headers: Option<HeadersBuilder>,
    pub offsets: Vec<i64>,
    /// Kafka record timestamps (milliseconds), when the record has one.
    pub timestamps: Vec<Option<i64>>,
    /// One past the last offset seen, tombstones included.
    pub next: i64,
}

impl Chunk {
    pub fn clear(&mut self) {
        self.frames.clear();
        self.has_value.clear();
        self.keys.clear();
        self.has_key.clear();
        if let Some(h) = &mut self.headers {
            // Finishing is how a builder is emptied.
            let _ = h.finish();
        }
        self.offsets.clear();
        self.timestamps.clear();
    }
}

/// Which layout a topic's records take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    Plain,
    Debezium,
    Upsert,
}

/// Decodes one topic's records.
#[derive(Debug)]
pub struct TopicDecoder {
    topic: Arc<str>,
    layout: Layout,
    values: ValueDecoder,
    /// Keys decoded into columns (plain and upsert layouts).
    keys: Option<KeyDecoder>,
    headers: bool,
    /// The value columns kept (a key column of the same name replaces one).
    value_columns: Vec<usize>,
    /// Key columns that replace a value field of the same name (key column, value
    /// column): a record without a key keeps the value's.
    merged: Vec<(usize, usize)>,
    /// The columns a mirror of this topic is keyed by, when the records say.
    key_names: Option<Vec<String>>,
    schema: SchemaRef,
}

impl TopicDecoder {
    /// Takes the values' schema from the configuration or, failing that, for JSON the
    /// schema of a table the topic feeds (`table`), for Avro the latest version of the
    /// topic's subject.
    pub async fn open(
        cfg: &KafkaConfig,
        topic: &str,
        table: Option<&SchemaRef>,
        chunk_rows: usize,
    ) -> Result<Self, SourceError> {
        let client = match &cfg.schema_registry {
            Some(endpoint) => Some(Client::connect(endpoint).map_err(SourceError::Setup)?),
            None => None,
        };
        let declared = match (cfg.reader_schemas.get(topic), &client) {
            (Some(text), _) => Declared::Avro(text.clone()),
            (None, _) if cfg.format.is_json() => match table {
                Some(schema) => Declared::Table(values_of(schema, cfg)),
                None => {
                    return Err(SourceError::Setup(format!(
                        "topic {topic}: JSON messages are read against a declared schema: set \
                         source.schema (or source.reader_schemas.{topic}) to a .avsc file; once a \
                         table fed by the topic exists, its columns serve"
                    )));
                }
            },
            (None, None) => {
                return Err(SourceError::Setup(format!(
                    "topic {topic}: no schema for its values (set source.schema)"
                )));
            }
            (None, Some(client)) => Declared::Avro({
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
            }),
        };
        let registry = client
            .clone()
            .map(|c| RegistrySchemas::new(c, topic, cfg.subject_strategy, tokio::runtime::Handle::current()));
        let values = ValueDecoder::open(cfg, topic, declared, registry, chunk_rows)?;
        let layout = if cfg.format.is_debezium() {
            Layout::Debezium
        } else if cfg.upsert {
            Layout::Upsert
        } else {
            Layout::Plain
        };
        let keys = match &cfg.key {
            Some(k) => Some(KeyDecoder::open(cfg, k, topic, client.as_ref(), chunk_rows).await?),
            None => None,
        };
        let setup = |e: String| SourceError::Setup(format!("topic {topic}: {e}"));
        let inner = values.schema();
        if layout == Layout::Debezium {
            let schema = debezium::change_schema(&inner).map_err(setup)?;
            // A Debezium key is the table's primary key: its field names are columns
            // of the row image.
            let key_names = match &keys {
                Some(k @ (KeyDecoder::Json { .. } | KeyDecoder::Avro { .. })) => {
                    let prefix = cfg.key.as_ref().map_or("", |k| k.prefix.as_str());
                    let names: Vec<String> = k
                        .fields()
                        .iter()
                        .map(|f| f.name().strip_prefix(prefix).unwrap_or(f.name()).to_string())
                        .collect();
                    if let Some(n) = names.iter().find(|n| schema.field_with_name(n).is_err()) {
                        return Err(setup(format!("the key's field `{n}` is not a column of the row")));
                    }
                    Some(names)
                }
                _ => None,
            };
            return Ok(Self {
                topic: Arc::from(topic),
                layout,
                values,
                keys: None,
                headers: false,
                value_columns: Vec::new(),
                merged: Vec::new(),
                key_names,
                schema,
            });
        }
        let mut fields: Vec<Field> = match layout {
            Layout::Upsert => leading_fields(),
            _ => vec![
                Field::new(PARTITION, DataType::Int32, false),
                Field::new(OFFSET, DataType::Int64, false),
                Field::new(
                    TIMESTAMP,
                    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                    true,
                ),
            ],
        };
        let meta: Vec<String> = fields.iter().map(|f| f.name().clone()).collect();
        let key_fields = keys.as_ref().map(KeyDecoder::fields).unwrap_or_default();
        let mut value_columns = Vec::new();
        let mut merged = Vec::new();
        for (j, f) in inner.fields().iter().enumerate() {
            if meta.contains(f.name()) || [KEY_COLUMN, HEADERS_COLUMN].contains(&f.name().as_str()) {
                return Err(setup(format!(
                    "the record has a field {} that Tributary adds itself",
                    f.name()
                )));
            }
            match key_fields
                .iter()
                .position(|k| k.name() == f.name())
                .map(|i| (i, &key_fields[i]))
            {
                Some((i, k)) if k.data_type() == f.data_type() => merged.push((i, j)),
                Some((_, k)) => {
                    return Err(setup(format!(
                        "the key's field `{}` ({}) and the value's ({}) differ: set source.key_prefix",
                        k.name(),
                        k.data_type(),
                        f.data_type()
                    )));
                }
                None => value_columns.push(j),
            }
        }
        if let Some(k) = key_fields.iter().find(|k| meta.contains(k.name())) {
            return Err(setup(format!(
                "the key has a field {} that Tributary adds itself",
                k.name()
            )));
        }
        let key_names =
            (layout == Layout::Upsert).then(|| key_fields.iter().map(|f| f.name().clone()).collect());
        fields.extend(key_fields);
        if cfg.headers {
            fields.push(Field::new(HEADERS_COLUMN, headers::data_type(), true));
        }
        fields.extend(value_columns.iter().map(|&j| {
            let f = inner.field(j).clone();
            // A tombstone has no value.
            if layout == Layout::Upsert {
                f.with_nullable(true)
            } else {
                f
            }
        }));
        Ok(Self {
            topic: Arc::from(topic),
            layout,
            values,
            keys,
            headers: cfg.headers,
            value_columns,
            merged,
            key_names,
            schema: Arc::new(Schema::new(fields)),
        })
    }

    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// The columns a mirror of this topic takes as its key, when the records carry it
    /// (upsert topics, Debezium topics with record keys).
    pub fn key(&self) -> Option<Vec<String>> {
        self.key_names.clone()
    }

    /// Whether the consumer thread must gather keys, tombstones and headers.
    pub fn gathers(&self) -> Gather {
        Gather {
            keys: self.keys.is_some(),
            tombstones: self.layout == Layout::Upsert,
            headers: self.headers,
        }
    }

    /// The batch of a partition's chunk; `None` when it holds nothing to hand over.
    pub fn decode(
        &mut self,
        chunk: &mut Chunk,
        partition: i32,
        shard: &Arc<str>,
        dead_letters: bool,
    ) -> Result<Option<SourceBatch>, SourceError> {
        let n = chunk.offsets.len();
        if n == 0 {
            return Ok(None);
        }
        let registry = |e: String| SourceError::Registry(format!("topic {}: {e}", self.topic));
        let setup = |e: String| SourceError::Setup(format!("topic {}: {e}", self.topic));
        let all: Vec<usize> = (0..n).collect();
        let mut rejected: Vec<(usize, String)> = Vec::new();
        let mut bad = vec![false; n];
        let key_columns = match &mut self.keys {
            Some(k) => {
                let keys = k.decode(&chunk.keys, &chunk.has_key, &all).map_err(registry)?;
                for (i, _) in &keys.rejected {
                    bad[*i] = true;
                }
                rejected.extend(keys.rejected);
                if self.layout == Layout::Upsert {
                    for (i, b) in bad.iter_mut().enumerate() {
                        if *b {
                            continue;
                        }
                        let null = keys.columns.iter().position(|c| c.is_null(i));
                        if !chunk.has_key[i] || null.is_some() {
                            *b = true;
                            let why = match null.and_then(|j| self.key_names.as_ref()?.get(j)) {
                                Some(name) if chunk.has_key[i] => {
                                    format!(
                                        "the key's field `{name}` is null: an upsert topic's key identifies a row"
                                    )
                                }
                                _ => "a record of an upsert topic has no key".to_string(),
                            };
                            rejected.push((i, why));
                        }
                    }
                }
                keys.columns
            }
            None => Vec::new(),
        };
        let with_value: Vec<usize> = (0..n).filter(|&i| !bad[i] && chunk.has_value[i]).collect();
        let decoded = self.values.decode(&chunk.frames, &with_value).map_err(registry)?;
        rejected.extend(decoded.rejected);
        let (records, positions) = match self.layout {
            Layout::Debezium => {
                let positions = Int64Array::from_iter_values(decoded.kept.iter().map(|&i| chunk.offsets[i]));
                let changes =
                    debezium::changes(&decoded.batch, &positions, shard, &self.schema).map_err(setup)?;
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
            Layout::Plain | Layout::Upsert => {
                // Records kept, in offset order, and per record its row among the
                // decoded values (none for a tombstone).
                let mut rows = Vec::with_capacity(decoded.kept.len());
                let mut value_rows = Vec::with_capacity(decoded.kept.len());
                let mut next = 0usize;
                for (i, (&is_bad, &has_value)) in bad.iter().zip(&chunk.has_value).enumerate() {
                    if decoded.kept.get(next) == Some(&i) {
                        rows.push(i as u32);
                        value_rows.push(Some(next as u32));
                        next += 1;
                    } else if self.layout == Layout::Upsert && !is_bad && !has_value {
                        rows.push(i as u32);
                        value_rows.push(None);
                    }
                }
                let rows = UInt32Array::from(rows);
                let value_rows = UInt32Array::from(value_rows);
                let pick =
                    |a: &dyn Array, idx: &UInt32Array| take(a, idx, None).map_err(|e| setup(e.to_string()));
                let positions =
                    Int64Array::from_iter_values(rows.values().iter().map(|&i| chunk.offsets[i as usize]));
                let micros = || {
                    TimestampMicrosecondArray::from_iter(
                        rows.values()
                            .iter()
                            .map(|&i| chunk.timestamps[i as usize].and_then(|ms| ms.checked_mul(1000))),
                    )
                    .with_timezone("UTC")
                };
                let m = rows.len();
                let mut columns: Vec<ArrayRef> = if self.layout == Layout::Upsert {
                    vec![
                        Arc::new(StringArray::from_iter_values(
                            value_rows.iter().map(|v| if v.is_some() { "u" } else { "d" }),
                        )),
                        Arc::new(positions.clone()),
                        Arc::new(micros()),
                        Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                            shard.as_ref(),
                            m,
                        ))),
                    ]
                } else {
                    vec![
                        Arc::new(Int32Array::from_iter_values(std::iter::repeat_n(partition, m))),
                        Arc::new(positions.clone()),
                        Arc::new(micros()),
                    ]
                };
                let mut keys = Vec::with_capacity(key_columns.len());
                for c in &key_columns {
                    keys.push(pick(c.as_ref(), &rows)?);
                }
                for &(k, v) in &self.merged {
                    let value = pick(decoded.batch.column(v).as_ref(), &value_rows)?;
                    let has_key = is_not_null(&keys[k]).map_err(|e| setup(e.to_string()))?;
                    keys[k] = zip(&has_key, &keys[k], &value).map_err(|e| setup(e.to_string()))?;
                }
                columns.extend(keys);
                if let Some(h) = chunk.headers.as_mut().filter(|_| self.headers) {
                    let all_headers = h.finish();
                    columns.push(pick(&all_headers, &rows)?);
                }
                for &j in &self.value_columns {
                    columns.push(pick(decoded.batch.column(j).as_ref(), &value_rows)?);
                }
                let batch =
                    RecordBatch::try_new(self.schema.clone(), columns).map_err(|e| setup(e.to_string()))?;
                (batch, positions)
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
            spilled: None,
            cursor: None,
        }))
    }
}

/// The value fields of a table fed by a topic: its columns less the ones Tributary
/// adds (metadata, change columns, `_key`, `_headers`). A record key's fields stay:
/// the key replaces the value's field of the same name.
fn values_of(table: &SchemaRef, cfg: &KafkaConfig) -> SchemaRef {
    let added = [
        PARTITION,
        OFFSET,
        TIMESTAMP,
        KEY_COLUMN,
        HEADERS_COLUMN,
        OP,
        POSITION,
        COMMIT_TS,
        SOURCE,
        crate::sink::change::UNCHANGED,
    ];
    let prefixed = |name: &str| {
        cfg.key
            .as_ref()
            .is_some_and(|k| !k.prefix.is_empty() && name.starts_with(&k.prefix))
    };
    Arc::new(Schema::new(
        table
            .fields()
            .iter()
            .filter(|f| !added.contains(&f.name().as_str()) && !prefixed(f.name()))
            .cloned()
            .collect::<Vec<_>>(),
    ))
}

/// What the consumer thread gathers of a topic's messages besides values.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gather {
    pub keys: bool,
    /// Messages without a value (upsert topics' deletes).
    pub tombstones: bool,
    pub headers: bool,
}

#[cfg(test)]
mod tests;
