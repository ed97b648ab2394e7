//! `[source] kind = "kafka"`: the settings, checked and resolved.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use url::Url;

use super::values::{Secret, percent_decode};
use super::{ConfigError, Resolver, spec};

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
    /// A Confluent-compatible schema registry (Avro values or keys).
    pub schema_registry: Option<RegistryEndpoint>,
    pub subject_strategy: SubjectStrategy,
    /// Per topic, the values' schema (Avro JSON text): the reader schema of Avro
    /// values, the schema JSON values are read against. An Avro topic not listed reads
    /// with the latest schema of its subject at start.
    pub reader_schemas: BTreeMap<String, String>,
    /// JSON values: what a field the schema does not have does to its record.
    pub unknown_fields: UnknownFields,
    /// Message keys, when they are read.
    pub key: Option<KeyConfig>,
    /// Expose the message headers as a `_headers` map column.
    pub headers: bool,
    /// Upsert topics: the key is the row's key, a tombstone deletes it.
    pub upsert: bool,
    /// Where a partition starts when no table holds progress for it.
    pub start_at: StartAt,
    /// Several processes run the pipeline in the group (`source.scale_out`).
    pub scale_out: bool,
    /// Other librdkafka settings (`security.protocol`, `sasl.*`, `ssl.*`…), passed
    /// through; values may be credentials.
    pub options: BTreeMap<String, Secret>,
}

/// Where the schema registry is and how to log in to it.
#[derive(Debug, Clone, PartialEq)]
pub struct RegistryEndpoint {
    /// Base URL, without credentials.
    pub url: String,
    /// HTTP basic auth: user and password (Confluent's `basic.auth.user.info`).
    pub credentials: Option<(String, Secret)>,
    /// Extra CA certificates (PEM) to trust for https, besides the system's.
    pub ca: Option<std::path::PathBuf>,
}

impl RegistryEndpoint {
    /// A registry reached without credentials or extra CAs.
    pub fn plain(url: &str) -> Self {
        Self {
            url: url.to_string(),
            credentials: None,
            ca: None,
        }
    }
}

/// How record values are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KafkaFormat {
    /// Confluent wire format Avro: each record is one row.
    Avro,
    /// One UTF-8 JSON object per message: each record is one row.
    Json,
    /// Confluent wire format Avro Debezium envelopes: each record is one change.
    DebeziumAvro,
    /// Debezium envelopes written by the JSON converter, with or without the
    /// `schema`/`payload` wrapper: each record is one change.
    DebeziumJson,
}

impl KafkaFormat {
    pub fn is_json(self) -> bool {
        matches!(self, KafkaFormat::Json | KafkaFormat::DebeziumJson)
    }

    pub fn is_debezium(self) -> bool {
        matches!(self, KafkaFormat::DebeziumAvro | KafkaFormat::DebeziumJson)
    }

    /// Whether records are changes (`_op`, `_position`, … then the row image).
    pub fn changes(self, upsert: bool) -> bool {
        self.is_debezium() || upsert
    }
}

/// `unknown_fields`: a JSON field the schema does not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownFields {
    #[default]
    Ignore,
    DeadLetter,
}

/// `key_format`: how message keys are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyFormat {
    /// UTF-8 text: a `_key` string column.
    String,
    /// Any bytes: a `_key` binary column.
    Bytes,
    /// A JSON object: its fields (per `key_schema`) become columns.
    Json,
    /// Confluent-framed Avro under the `{topic}-key` subject: its fields become columns.
    Avro,
}

/// Reading message keys.
#[derive(Debug, Clone)]
pub struct KeyConfig {
    pub format: KeyFormat,
    /// The key record's schema (Avro JSON text): required for JSON keys; for Avro
    /// keys, absent means the latest schema of the `{topic}-key` subject.
    pub schema: Option<String>,
    /// Prefix of the columns the key record's fields become.
    pub prefix: String,
}

/// The column a string or bytes key becomes.
pub const KEY_COLUMN: &str = "_key";
/// The column headers become.
pub const HEADERS_COLUMN: &str = "_headers";

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
        self.subject_of(topic, record, false)
    }

    /// The subject of a topic's keys (`key`) or values.
    pub fn subject_of(self, topic: &str, record: &str, key: bool) -> String {
        match self {
            SubjectStrategy::Topic if key => format!("{topic}-key"),
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

impl Resolver<'_> {
    pub(super) fn kafka(&self, k: spec::KafkaSpec) -> Result<KafkaConfig, ConfigError> {
        let brokers = self.expand("source.brokers", &k.brokers)?;
        if brokers.trim().is_empty() {
            return Err(self.err(
                "source.brokers",
                "name at least one broker, e.g. \"127.0.0.1:9092\"",
            ));
        }
        if k.topics.is_empty() {
            return Err(self.err("source.topics", "name at least one topic"));
        }
        let mut seen = BTreeSet::new();
        for (i, t) in k.topics.iter().enumerate() {
            // Kafka's own rule for topic names.
            let legal = !t.is_empty()
                && t.len() <= 249
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if !legal {
                return Err(self.err(
                    format!("source.topics[{i}]"),
                    format!("\"{t}\" is not a valid topic name"),
                ));
            }
            if !seen.insert(t) {
                return Err(self.err(format!("source.topics[{i}]"), format!("\"{t}\" is listed twice")));
            }
        }
        if k.group_id.is_empty() {
            return Err(self.err("source.group_id", "must not be empty"));
        }
        let format = k.format;
        let key_format = k.key_format;
        let registry = match &k.schema_registry {
            Some(r) => Some(self.registry_endpoint(&k, r)?),
            None if !format.is_json() => {
                return Err(self.err(
                    "source.schema_registry",
                    "Avro values are read with writer schemas from a schema registry: name its URL",
                ));
            }
            None if key_format == Some(KeyFormat::Avro) => {
                return Err(self.err(
                    "source.schema_registry",
                    "Avro keys are read with writer schemas from a schema registry: name its URL",
                ));
            }
            None => None,
        };
        let strategy = k.subject_strategy.unwrap_or(SubjectStrategy::Topic);
        let default_schema = match &k.schema {
            Some(path) => Some(self.record_schema("source.schema", path)?),
            None => None,
        };
        let mut reader_schemas = BTreeMap::new();
        for (topic, path) in &k.reader_schemas {
            let key = format!("source.reader_schemas.{topic}");
            if !k.topics.contains(topic) {
                return Err(self.err(&key, format!("\"{topic}\" is not one of source.topics")));
            }
            reader_schemas.insert(topic.clone(), self.record_schema(&key, path)?);
        }
        if let Some(text) = &default_schema {
            for t in &k.topics {
                reader_schemas.entry(t.clone()).or_insert_with(|| text.clone());
            }
        }
        // A JSON topic without a schema file reads with the schema of a table it
        // already feeds (checked when the source opens).
        if let Some(t) = k.topics.iter().find(|t| !reader_schemas.contains_key(*t))
            && !format.is_json()
            && strategy != SubjectStrategy::Topic
        {
            return Err(self.err(
                format!("source.reader_schemas.{t}"),
                "with a record subject strategy there is no subject to take the reader schema from: name a .avsc file",
            ));
        }
        if k.unknown_fields.is_some() && format != KafkaFormat::Json {
            return Err(self.err(
                "source.unknown_fields",
                "only format = \"json\" values are checked for fields their schema does not have",
            ));
        }
        // Only record keys have a schema and fields to prefix.
        if !matches!(key_format, Some(KeyFormat::Json | KeyFormat::Avro)) {
            for (set, name) in [
                (k.key_schema.is_some(), "key_schema"),
                (k.key_prefix.is_some(), "key_prefix"),
            ] {
                if set {
                    let why = match key_format {
                        None => "set key_format to read keys".to_string(),
                        Some(f) => format!(
                            "only record keys (json, avro) have fields; a {} key is the `{KEY_COLUMN}` column",
                            if f == KeyFormat::String { "string" } else { "bytes" }
                        ),
                    };
                    return Err(self.err(format!("source.{name}"), why));
                }
            }
        }
        let key = match key_format {
            None => None,
            Some(f @ (KeyFormat::String | KeyFormat::Bytes)) => Some(KeyConfig {
                format: f,
                schema: None,
                prefix: String::new(),
            }),
            Some(f) => {
                let schema = match &k.key_schema {
                    Some(path) => Some(self.record_schema("source.key_schema", path)?),
                    None if f == KeyFormat::Json => {
                        return Err(self.err(
                            "source.key_schema",
                            "JSON keys are read against a declared schema: name a .avsc record",
                        ));
                    }
                    None => None,
                };
                let prefix = k.key_prefix.clone().unwrap_or_default();
                if !prefix.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(self.err("source.key_prefix", "use letters, digits and '_'"));
                }
                Some(KeyConfig {
                    format: f,
                    schema,
                    prefix,
                })
            }
        };
        if k.upsert {
            if key.is_none() {
                return Err(self.err(
                    "source.upsert",
                    "an upsert topic's key is its rows' key: set key_format",
                ));
            }
            if format.is_debezium() {
                return Err(self.err(
                    "source.upsert",
                    "Debezium events are changes already; upsert is for json and avro values",
                ));
            }
        }
        if k.headers && format.is_debezium() {
            return Err(self.err(
                "source.headers",
                "Debezium change rows carry the row image only; headers are for json and avro values",
            ));
        }
        let mut options = BTreeMap::new();
        for (name, value) in &k.options {
            let key = format!("source.options.\"{name}\"");
            if RESERVED_OPTIONS.contains(&name.as_str()) {
                return Err(self.err(
                    &key,
                    "is set by Tributary (use brokers, group_id or auto_offset_reset)",
                ));
            }
            options.insert(name.clone(), Secret::new(self.expand(&key, value)?));
        }
        Ok(KafkaConfig {
            brokers,
            topics: k.topics,
            group_id: k.group_id,
            format,
            schema_registry: registry,
            subject_strategy: strategy,
            reader_schemas,
            unknown_fields: k.unknown_fields.unwrap_or_default(),
            key,
            headers: k.headers,
            upsert: k.upsert,
            scale_out: k.scale_out,
            start_at: k.auto_offset_reset.unwrap_or(StartAt::Earliest),
            options,
        })
    }

    /// The text of an Avro record schema file.
    /// The registry's URL, credentials (`schema_registry_user_info`, or `user:password@`
    /// in the URL, as Confluent's clients take them) and CA file.
    fn registry_endpoint(&self, k: &spec::KafkaSpec, url: &str) -> Result<RegistryEndpoint, ConfigError> {
        let key = "source.schema_registry";
        let text = self.expand(key, url)?;
        let mut parsed = match Url::parse(&text) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => u,
            // Credentials in the URL must not be printed back.
            Ok(mut u) => {
                let _ = (u.set_username(""), u.set_password(None));
                return Err(self.err(key, format!("\"{u}\" is not an http(s) URL")));
            }
            Err(_) => return Err(self.err(key, "not an http(s) URL")),
        };
        let in_url = match (parsed.username(), parsed.password().unwrap_or("")) {
            ("", _) => None,
            (user, password) => {
                let decode = |s| {
                    percent_decode(s)
                        .ok_or_else(|| self.err(key, "a percent-escape in the URL is not valid UTF-8"))
                };
                Some((decode(user)?, Secret::new(decode(password)?)))
            }
        };
        let _ = (parsed.set_username(""), parsed.set_password(None));
        let info_key = "source.schema_registry_user_info";
        let credentials = match (&k.schema_registry_user_info, in_url) {
            (Some(_), Some(_)) => {
                return Err(self.err(
                    info_key,
                    "credentials are also in source.schema_registry's URL: give them once",
                ));
            }
            (Some(info), None) => {
                let info = self.expand(info_key, info)?;
                match info.split_once(':') {
                    Some((user, password)) if !user.is_empty() => {
                        Some((user.to_string(), Secret::new(password)))
                    }
                    _ => return Err(self.err(info_key, "expected \"user:password\"")),
                }
            }
            (None, from_url) => from_url,
        };
        let ca = match &k.schema_registry_ca {
            Some(path) => {
                let ca_key = "source.schema_registry_ca";
                let path = self.expand(ca_key, &path.to_string_lossy())?;
                let pem =
                    std::fs::read_to_string(&path).map_err(|e| self.err(ca_key, format!("{path}: {e}")))?;
                if !pem.contains("-----BEGIN CERTIFICATE-----") {
                    return Err(self.err(ca_key, format!("{path}: no PEM certificate in the file")));
                }
                if parsed.scheme() != "https" {
                    return Err(self.err(ca_key, "the registry URL is http: a CA is for https"));
                }
                Some(std::path::PathBuf::from(path))
            }
            None => None,
        };
        Ok(RegistryEndpoint {
            url: parsed.as_str().trim_end_matches('/').to_string(),
            credentials,
            ca,
        })
    }

    fn record_schema(&self, key: &str, path: &Path) -> Result<String, ConfigError> {
        let path = self.expand(key, &path.to_string_lossy())?;
        let text = std::fs::read_to_string(&path).map_err(|e| self.err(key, format!("{path}: {e}")))?;
        let schema = apache_avro::Schema::parse_str(&text)
            .map_err(|e| self.err(key, format!("{path}: not an Avro schema: {e}")))?;
        if !matches!(schema, apache_avro::Schema::Record(_)) {
            return Err(self.err(key, format!("{path}: the schema must be a record")));
        }
        Ok(text)
    }
}
