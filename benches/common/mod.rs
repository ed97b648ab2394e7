//! What the Kafka benches share: the clickstream events, their Confluent frames, and a
//! topic with the schema registered.

#![allow(dead_code)]

use apache_avro::Schema;
use apache_avro::types::Value;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;

pub const PARTITIONS: i32 = 3;

pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: source infra/env.sh"))
}

pub fn click(i: u64) -> Value {
    Value::Record(vec![
        ("event_id".into(), Value::Uuid(uuid::Uuid::from_u64_pair(7, i))),
        ("user_id".into(), Value::String(format!("u{}", i % 5000))),
        ("page".into(), Value::String(format!("/p/{}", i % 100))),
        (
            "action".into(),
            Value::String(["view", "click", "add_to_cart", "purchase"][(i % 4) as usize].into()),
        ),
        ("session_id".into(), Value::String(format!("s{}", i % 20_000))),
        (
            "device".into(),
            Value::String(["mobile", "desktop", "tablet"][(i % 3) as usize].into()),
        ),
        (
            "country".into(),
            Value::String(["NL", "DE", "US", "FR"][(i % 4) as usize].into()),
        ),
        (
            "event_timestamp".into(),
            Value::TimestampMicros(1_767_225_600_000_000 + i as i64 * 1000),
        ),
    ])
}

/// Event `i` as the JSON a `json.dumps` producer writes: the same values, the time as
/// RFC 3339 text.
pub fn click_json(i: u64) -> Vec<u8> {
    let micros = 1_767_225_600_000_000 + i as i64 * 1000;
    let ts = chrono::DateTime::from_timestamp_micros(micros)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    format!(
        r#"{{"event_id": "{}", "user_id": "u{}", "page": "/p/{}", "action": "{}", "session_id": "s{}", "device": "{}", "country": "{}", "event_timestamp": "{ts}"}}"#,
        uuid::Uuid::from_u64_pair(7, i),
        i % 5000,
        i % 100,
        ["view", "click", "add_to_cart", "purchase"][(i % 4) as usize],
        i % 20_000,
        ["mobile", "desktop", "tablet"][(i % 3) as usize],
        ["NL", "DE", "US", "FR"][(i % 4) as usize],
    )
    .into_bytes()
}

pub fn frames(schema: &Schema, id: u32, n: u64) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let mut f = vec![0u8];
            f.extend_from_slice(&id.to_be_bytes());
            f.extend(
                apache_avro::writer::datum::GenericDatumWriter::builder(schema)
                    .build()
                    .unwrap()
                    .write_value_to_vec(click(i))
                    .unwrap(),
            );
            f
        })
        .collect()
}

/// Creates `topic` with [`PARTITIONS`] partitions and registers `schema` under
/// `{topic}-value`; returns the schema id.
pub fn topic(rt: &tokio::runtime::Runtime, brokers: &str, registry: &str, topic: &str, schema: &str) -> u32 {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    for r in rt
        .block_on(admin.create_topics(
            &[NewTopic::new(topic, PARTITIONS, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        ))
        .unwrap()
    {
        r.unwrap();
    }
    rt.block_on(
        tributary::registry::client::Client::new(registry).register(&format!("{topic}-value"), schema),
    )
    .unwrap()
}
