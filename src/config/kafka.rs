//! `[source] kind = "kafka"`: the resolved settings.

use std::collections::BTreeMap;

use super::values::Secret;

/// Settings of a Kafka consumer-group source.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Topics to read; each is a stream of its own (`[[tables]].from` names it), and
    /// each of its partitions a shard.
    pub topics: Vec<String>,
    pub group_id: String,
    pub format: KafkaFormat,
    /// Base URL of a Confluent-compatible schema registry.
    pub schema_registry: String,
    pub subject_strategy: SubjectStrategy,
    /// Per topic, the reader schema (Avro JSON text); a topic not listed reads with
    /// the latest schema of its subject at start.
    pub reader_schemas: BTreeMap<String, String>,
    /// Where a partition starts when no table holds progress for it.
    pub start_at: StartAt,
    /// Other librdkafka settings (`security.protocol`, `sasl.*`, `ssl.*`…), passed
    /// through; values may be credentials.
    pub options: BTreeMap<String, Secret>,
}

/// How records are framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KafkaFormat {
    /// Confluent wire format Avro: each record is one row.
    Avro,
    /// Confluent wire format Avro Debezium envelopes: each record is one change.
    DebeziumAvro,
}

/// Which registry subject a topic's writer schemas must be registered under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubjectStrategy {
    /// `{topic}-value` (Confluent's default, TopicNameStrategy).
    Topic,
    /// The record's full name (RecordNameStrategy).
    Record,
    /// `{topic}-{record full name}` (TopicRecordNameStrategy).
    TopicRecord,
}

impl SubjectStrategy {
    /// The subject for `topic` and a writer schema's record full name.
    pub fn subject(self, topic: &str, record: &str) -> String {
        match self {
            SubjectStrategy::Topic => format!("{topic}-value"),
            SubjectStrategy::Record => record.to_string(),
            SubjectStrategy::TopicRecord => format!("{topic}-{record}"),
        }
    }
}

/// `auto_offset_reset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartAt {
    Earliest,
    Latest,
}

/// librdkafka settings Tributary sets itself: its exactly-once protocol depends on them.
pub const RESERVED_OPTIONS: [&str; 6] = [
    "bootstrap.servers",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "enable.partition.eof",
];
