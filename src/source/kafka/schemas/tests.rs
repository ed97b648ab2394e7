//! The record layouts, decoded from hand-made chunks (no broker): plain rows with JSON
//! keys and headers, upsert changes with tombstones, and the records each rejects.

use deltalake::arrow::array::{Array, AsArray};
use deltalake::arrow::datatypes::Int64Type;

use super::*;
use crate::config::{KafkaFormat, KeyConfig, KeyFormat, StartAt, UnknownFields};

const VALUE: &str = r#"{"type":"record","name":"V","fields":[
    {"name":"id","type":"long"},{"name":"n","type":["null","long"],"default":null}]}"#;
const KEY: &str = r#"{"type":"record","name":"K","fields":[{"name":"id","type":"long"}]}"#;

fn config(key: KeyFormat, upsert: bool, headers: bool) -> KafkaConfig {
    KafkaConfig {
        brokers: "127.0.0.1:1".into(),
        topics: vec!["t".into()],
        group_id: "g".into(),
        format: KafkaFormat::Json,
        schema_registry: None,
        subject_strategy: SubjectStrategy::Topic,
        reader_schemas: [("t".to_string(), VALUE.to_string())].into(),
        unknown_fields: UnknownFields::Ignore,
        key: Some(KeyConfig {
            format: key,
            schema: (key == KeyFormat::Json).then(|| KEY.to_string()),
            prefix: String::new(),
        }),
        headers,
        upsert,
        start_at: StartAt::Earliest,
        scale_out: false,
        options: Default::default(),
    }
}

/// A message's key and value, either absent.
type Message<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);

/// A chunk of messages at offsets 10, 11, …
fn chunk(messages: &[Message<'_>], headers: bool) -> Chunk {
    let mut c = Chunk::default();
    for (i, (k, v)) in messages.iter().enumerate() {
        c.frames.push(v.unwrap_or_default());
        c.has_value.push(v.is_some());
        c.keys.push(k.unwrap_or_default());
        c.has_key.push(k.is_some());
        c.offsets.push(10 + i as i64);
        c.timestamps.push(Some(1_000 + i as i64));
        if headers {
            let h = c.headers.get_or_insert_with(headers::builder);
            h.keys().append_value("seq");
            h.values().append_value(i.to_string().as_bytes());
            h.append(true).unwrap();
        }
    }
    c.next = 10 + messages.len() as i64;
    c
}

fn ids(batch: &RecordBatch, column: &str) -> Vec<Option<i64>> {
    batch
        .column_by_name(column)
        .unwrap()
        .as_primitive::<Int64Type>()
        .iter()
        .collect()
}

#[tokio::test]
async fn plain_rows_take_the_key_field_or_the_value_one_without_a_key() {
    let mut d = TopicDecoder::open(&config(KeyFormat::Json, false, true), "t", None, 100)
        .await
        .unwrap();
    let names: Vec<String> = d.schema().fields().iter().map(|f| f.name().clone()).collect();
    assert_eq!(
        names,
        ["_partition", "_offset", "_timestamp", "id", "_headers", "n"]
    );
    assert!(d.key().is_none(), "plain rows supply no mirror key");
    let mut c = chunk(
        &[
            (Some(br#"{"id": 1}"#), Some(br#"{"id": 1, "n": 5}"#)),
            (None, Some(br#"{"id": 2}"#)),
            (Some(br#"{"id": "x"}"#), Some(br#"{"id": 3}"#)),
            (Some(br#"{"id": 4}"#), Some(br#"{"id": "y"}"#)),
        ],
        true,
    );
    let b = d.decode(&mut c, 0, &Arc::from("t-0"), true).unwrap().unwrap();
    assert_eq!(b.positions.values().to_vec(), [10, 11]);
    assert_eq!(
        ids(&b.records, "id"),
        [Some(1), Some(2)],
        "no key: the value's id"
    );
    assert_eq!(ids(&b.records, "n"), [Some(5), None]);
    let headers = b.records.column_by_name("_headers").unwrap().as_map();
    assert_eq!(headers.value(1).column(1).as_binary::<i32>().value(0), b"1");
    let dead = b.rejected.unwrap();
    assert_eq!(dead.num_rows(), 2);
    let why = dead.column_by_name("message").unwrap().as_string::<i32>();
    assert!(why.value(0).starts_with("the key"), "{}", why.value(0));
    assert!(why.value(1).contains("'id'"), "{}", why.value(1));
}

#[tokio::test]
async fn upsert_changes_turn_tombstones_into_deletes_and_refuse_records_without_a_key() {
    let mut d = TopicDecoder::open(&config(KeyFormat::String, true, false), "t", None, 100)
        .await
        .unwrap();
    let names: Vec<String> = d.schema().fields().iter().map(|f| f.name().clone()).collect();
    assert_eq!(
        names,
        ["_op", "_position", "_commit_ts", "_source", "_key", "id", "n"]
    );
    assert_eq!(d.key(), Some(vec!["_key".to_string()]));
    let mut c = chunk(
        &[
            (Some(b"a"), Some(br#"{"id": 1}"#)),
            (Some(b"a"), None),
            (None, Some(br#"{"id": 3}"#)),
            (Some(b"\xff"), Some(br#"{"id": 4}"#)),
            (Some(b"b"), Some(br#"{"id": 5, "n": 6}"#)),
        ],
        false,
    );
    let b = d.decode(&mut c, 0, &Arc::from("t-0"), true).unwrap().unwrap();
    let r = &b.records;
    let ops: Vec<&str> = r
        .column(0)
        .as_string::<i32>()
        .iter()
        .map(Option::unwrap)
        .collect();
    assert_eq!(ops, ["u", "d", "u"]);
    assert_eq!(b.positions.values().to_vec(), [10, 11, 14]);
    let keys: Vec<&str> = r
        .column_by_name("_key")
        .unwrap()
        .as_string::<i32>()
        .iter()
        .map(Option::unwrap)
        .collect();
    assert_eq!(keys, ["a", "a", "b"]);
    assert_eq!(ids(r, "id"), [Some(1), None, Some(5)], "a delete has no value");
    assert!(r.column_by_name("_commit_ts").unwrap().is_valid(1));
    let dead = b.rejected.unwrap();
    let why: Vec<&str> = dead
        .column_by_name("message")
        .unwrap()
        .as_string::<i32>()
        .iter()
        .map(Option::unwrap)
        .collect();
    assert_eq!(why.len(), 2, "{why:?}");
    assert!(why[0].contains("has no key"), "{why:?}");
    assert!(why[1].contains("not UTF-8"), "{why:?}");
    // Without dead letters, the first bad record stops the run, named by its offset.
    let mut c = chunk(&[(None, Some(br#"{"id": 3}"#))], false);
    let e = d
        .decode(&mut c, 0, &Arc::from("t-0"), false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("offset 10") && e.contains("has no key"), "{e}");
}
