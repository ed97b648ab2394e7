//! Kafka topics as producers write them: JSON from the `kafka-python` producer most
//! examples use (with keys, headers and malformed messages), an upsert topic mirrored
//! through SIGKILLs, and Debezium's JSON converter with and without its schema wrapper.
//! The truth is what the test produced; DuckDB reads the tables.

use std::collections::BTreeMap;

use apache_avro::Schema;
use apache_avro::types::Value;

use crate::kafka_support::*;
use crate::support::*;

/// 200k clickstream events written by `kafka-python` (`json.dumps` values, ISO-8601
/// timestamps, `acks='all'`, `linger_ms=10`, the user id as key and a header), and 1k
/// malformed messages of six kinds among them, from a second producer.
const PRODUCER: &str = r#"
import json, sys, uuid
from kafka import KafkaProducer
brokers, topic = sys.argv[1], sys.argv[2]
events = KafkaProducer(bootstrap_servers=brokers, acks='all', linger_ms=10,
                       key_serializer=lambda k: k.encode('utf-8'),
                       value_serializer=lambda v: json.dumps(v).encode('utf-8'))
raw = KafkaProducer(bootstrap_servers=brokers, acks='all', linger_ms=10)
bad = [b'{"event_id": "x", "user_id": ', b'not json at all', b'[1, 2, 3]',
       b'\xff\xfe\xfd', b'{"event_id": "%s", "page": "/p", "action": "view", "session_id": "s", '
       b'"device": "d", "country": "NL", "event_timestamp": "2026-01-01T00:00:00Z"}',
       b'{"event_id": "%s", "user_id": "u", "page": "/p", "action": "view", "session_id": "s", '
       b'"device": "d", "country": "NL", "event_timestamp": "yesterday"}']
for i in range(200000):
    s = 1767225600 + i // 1000
    ts = '2026-01-01T%02d:%02d:%02d.%03dZ' % (s // 3600 % 24, s // 60 % 60, s % 60, i % 1000)
    e = {"event_id": str(uuid.UUID(int=(0x74726962 << 64) | i)), "user_id": "u%d" % (i % 5000),
         "page": "/p/%d" % (i % 100), "action": "view", "session_id": "s%d" % (i % 20000),
         "device": "mobile", "country": "NL", "event_timestamp": ts}
    events.send(topic, key=e["user_id"], value=e, headers=[("origin", b"web"), ("seq", str(i).encode())])
    if i % 200 == 7:
        kind = (i // 200) % len(bad)
        m = bad[kind]
        if b'%s' in m:
            m = m % str(uuid.uuid4()).encode()
        raw.send(topic, value=m)
events.flush()
raw.flush()
"#;

#[test]
fn json_from_kafka_python_lands_exactly_and_malformed_messages_go_to_dead_letters() {
    let topic = unique("json");
    create_topic(&topic, 3);
    let dir = tempfile::tempdir().unwrap();
    let script = write_file(dir.path(), "produce.py", PRODUCER);
    let status = std::process::Command::new(stack_env("TRIBUTARY_PYTHON"))
        .arg(&script)
        .args([brokers().as_str(), topic.as_str()])
        .status()
        .unwrap();
    assert!(status.success(), "the kafka-python producer failed");

    let source = format!(
        "topics = [\"{topic}\"]\ngroup_id = \"{topic}\"\nformat = \"json\"\nschema = \"{}\"\n\
         key_format = \"string\"\nheaders = true",
        repo().join("schemas/clickstream.avsc").display()
    );
    let pipeline = kafka_pipeline(
        dir.path(),
        "json",
        &source,
        "./lake",
        &format!(
            "[dead_letters]\n\n[batch]\nmax_rows = 40000\n\n[[tables]]\nname = \"clicks\"\nfrom = \"{topic}\"\n\n\
             [[aggregates]]\nname = \"per_minute\"\nfrom = \"{topic}\"\nevent_time = \"event_timestamp\"\n\
             window = {{ kind = \"tumbling\", size = \"1m\" }}\nwatermark = \"0s\"\ngroup_by = [\"page\"]\n\
             measures = {{ n = \"count(*)\" }}"
        ),
    );
    run_once(dir.path(), &pipeline);
    let lake = dir.path().join("lake");
    let clicks = scan(lake.join("clicks").to_str().unwrap());
    let row = &duck(&format!(
        "SELECT count(*), count(DISTINCT event_id), count(DISTINCT _partition || ':' || _offset), \
                count(*) FILTER (WHERE _key = user_id), \
                count(*) FILTER (WHERE _headers['origin'] = 'web'::BLOB AND \
                    _headers['seq']::VARCHAR = (epoch_ms(event_timestamp) - 1767225600000)::VARCHAR), \
                min(event_timestamp)::VARCHAR, max(event_timestamp)::VARCHAR \
         FROM {clicks}"
    ))[0];
    assert_eq!(row[0], 200_000, "rows");
    assert_eq!(row[1], 200_000, "distinct event ids");
    assert_eq!(row[2], 200_000, "each offset once");
    assert_eq!(row[3], 200_000, "the message key is the user id");
    assert_eq!(row[4], 200_000, "headers kept, in order, as bytes");
    assert_eq!(row[5], "2026-01-01 00:00:00+00", "ISO-8601 text read as UTC");
    assert_eq!(row[6], "2026-01-01 00:03:19.999+00");

    let dead = scan(lake.join("dead_letters").to_str().unwrap());
    let reasons = duck(&format!(
        "SELECT CASE WHEN message LIKE '%truncated%' THEN 'truncated' \
                     WHEN message LIKE '%expected {{ got [%' THEN 'array' \
                     WHEN message LIKE '%required field `user_id`%' THEN 'missing' \
                     WHEN message LIKE '%event_timestamp%' THEN 'type' \
                     ELSE 'syntax' END, count(*) FROM {dead} GROUP BY 1 ORDER BY 1"
    ));
    let got: BTreeMap<String, i64> = reasons
        .iter()
        .map(|r| (r[0].as_str().unwrap().to_string(), r[1].as_i64().unwrap()))
        .collect();
    // Six kinds in turn over 1,000 messages: "not json" and non-UTF-8 are syntax errors.
    let want: BTreeMap<String, i64> = [
        ("array", 167),
        ("missing", 166),
        ("syntax", 334),
        ("truncated", 167),
        ("type", 166),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(got, want, "dead letters by reason");
    assert_eq!(
        duck_i64(&format!(
            "SELECT count(*) FROM {dead} WHERE payload IS NULL OR position IS NULL"
        )),
        0,
        "dead letters keep their bytes and offsets"
    );

    // Windows every partition has passed equal DuckDB's over the raw rows.
    let passed = format!(
        "(SELECT min(m) FROM (SELECT max(epoch_us(event_timestamp)) AS m FROM {clicks} GROUP BY _partition))"
    );
    assert_same_rows(
        "per-minute windows over JSON",
        &format!(
            "SELECT * FROM (SELECT epoch_us(event_timestamp) // 60000000 * 60000000 AS ws, page, count(*) \
             FROM {clicks} GROUP BY ALL) WHERE ws + 60000000 <= {passed}"
        ),
        &format!(
            "SELECT epoch_us(window_start), page, n FROM {} WHERE epoch_us(window_end) <= {passed}",
            scan(lake.join("per_minute").to_str().unwrap())
        ),
    );
    assert!(
        duck_i64(&format!(
            "SELECT count(*) FROM {} WHERE epoch_us(window_end) <= {passed}",
            scan(lake.join("per_minute").to_str().unwrap())
        )) >= 200,
        "closed windows to compare"
    );

    // Without a schema file, the existing table's columns are the schema.
    let p = Produce::new();
    for i in 0..10u64 {
        let e = format!(
            r#"{{"event_id": "00000000-0000-0000-0000-{i:012}", "user_id": "late", "page": "/x", "action": "view", "session_id": "s", "device": "d", "country": "NL", "event_timestamp": {}}}"#,
            1_767_229_200_000_000u64 + i
        );
        p.send(&topic, 0, Some(b"late"), Some(e.as_bytes()));
    }
    p.flush();
    let schema_line = format!(
        "schema = \"{}\"\n",
        repo().join("schemas/clickstream.avsc").display()
    );
    let text = std::fs::read_to_string(&pipeline).unwrap();
    assert!(text.contains(&schema_line));
    let without = write_file(dir.path(), "json-noschema.toml", &text.replace(&schema_line, ""));
    run_once(dir.path(), &without);
    let row = &duck(&format!(
        "SELECT count(*), count(*) FILTER (WHERE user_id = 'late' AND _key = 'late' AND epoch_us(event_timestamp) >= 1767229200000000) FROM {clicks}"
    ))[0];
    assert_eq!(row[0], 200_010);
    assert_eq!(
        row[1], 10,
        "read with the table's columns (epoch microseconds for the timestamp)"
    );
}

const ACCOUNT: &str = r#"{"type":"record","name":"Account","namespace":"bank","fields":[
    {"name":"owner","type":"string"},{"name":"balance","type":"long"},
    {"name":"note","type":["null","string"],"default":null}]}"#;

/// The partition of a key, as a keyed producer picks it (any fixed function will do).
fn partition_of(key: &str, partitions: i32) -> i32 {
    (key.bytes()
        .fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)))
        % partitions as u32) as i32
}

#[test]
fn an_upsert_topic_mirrors_the_final_map_through_sigkills() {
    let topic = unique("upsert");
    create_topic(&topic, 3);
    let registry = stack_env("SCHEMA_REGISTRY_URL");
    let schema = Schema::parse_str(ACCOUNT).unwrap();
    let id = register(&registry, &format!("{topic}-value"), ACCOUNT);
    // The truth: the last value per key, tombstones deleting.
    let mut truth: BTreeMap<String, (String, i64, Option<String>)> = BTreeMap::new();
    let p = Produce::new();
    let mut messages = 0i64;
    let mut state = 0x2545_f491_u64;
    let mut rand = |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    for step in 0..60_000u64 {
        let key = format!("acct-{}", rand(3_000));
        let part = partition_of(&key, 3);
        if rand(10) == 0 {
            p.send(&topic, part, Some(key.as_bytes()), None);
            truth.remove(&key);
        } else {
            let note = (step % 3 == 0).then(|| format!("n{step}"));
            let v = Value::Record(vec![
                ("owner".into(), Value::String(format!("o{}", step % 97))),
                ("balance".into(), Value::Long(step as i64)),
                (
                    "note".into(),
                    match &note {
                        Some(n) => Value::Union(1, Box::new(Value::String(n.clone()))),
                        None => Value::Union(0, Box::new(Value::Null)),
                    },
                ),
            ]);
            p.send(&topic, part, Some(key.as_bytes()), Some(&frame(id, &schema, v)));
            truth.insert(key, (format!("o{}", step % 97), step as i64, note));
        }
        messages += 1;
    }
    // A record without a key cannot be placed: it goes to the dead letters.
    p.send(
        &topic,
        0,
        None,
        Some(&frame(
            id,
            &schema,
            Value::Record(vec![
                ("owner".into(), Value::String("nobody".into())),
                ("balance".into(), Value::Long(-1)),
                ("note".into(), Value::Union(0, Box::new(Value::Null))),
            ]),
        )),
    );
    p.flush();

    let dir = tempfile::tempdir().unwrap();
    let pipeline = kafka_pipeline(
        dir.path(),
        "upsert",
        &format!(
            "topics = [\"{topic}\"]\ngroup_id = \"{topic}\"\nformat = \"avro\"\nschema_registry = \"{registry}\"\n\
             key_format = \"string\"\nupsert = true"
        ),
        "./lake",
        &format!(
            "[dead_letters]\n\n[batch]\nmax_rows = 4000\n\n[[tables]]\nname = \"accounts\"\nfrom = \"{topic}\"\nmode = \"mirror\"\n\n\
             [[tables]]\nname = \"accounts_log\"\nfrom = \"{topic}\"\nmode = \"changelog\""
        ),
    );
    for (commits, jitter) in [(2u64, 40u32), (5, 120), (9, 60)] {
        kill_after_commits(dir.path(), &pipeline, "lake/accounts", commits, jitter);
    }
    run_once(dir.path(), &pipeline);
    let lake = dir.path().join("lake");
    let rows = duck(&format!(
        "SELECT _key, owner, balance, note FROM {} ORDER BY _key",
        scan(lake.join("accounts").to_str().unwrap())
    ));
    let got: Vec<(String, String, i64, Option<String>)> = rows
        .iter()
        .map(|r| {
            (
                r[0].as_str().unwrap().to_string(),
                r[1].as_str().unwrap().to_string(),
                r[2].as_i64().unwrap(),
                r[3].as_str().map(str::to_string),
            )
        })
        .collect();
    let want: Vec<(String, String, i64, Option<String>)> =
        truth.into_iter().map(|(k, (o, b, n))| (k, o, b, n)).collect();
    assert_eq!(got.len(), want.len(), "keys in the mirror");
    assert_eq!(got, want, "the mirror equals the last value per key");
    let log = &duck(&format!(
        "SELECT count(*), count(DISTINCT _source || ':' || _position), count(*) FILTER (WHERE _op = 'd'), \
                count(*) FILTER (WHERE _op = 'd' AND owner IS NOT NULL) FROM {}",
        scan(lake.join("accounts_log").to_str().unwrap())
    ))[0];
    assert_eq!(log[0], messages, "one change per message, tombstones included");
    assert_eq!(log[1], messages, "each offset once");
    assert!(log[2].as_i64().unwrap() > 1000, "tombstones are deletes");
    assert_eq!(log[3], 0, "a delete has no value");
    let dead = duck(&format!(
        "SELECT message FROM {}",
        scan(lake.join("dead_letters").to_str().unwrap())
    ));
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(dead[0][0].as_str().unwrap().contains("has no key"), "{dead:?}");
}

/// A Debezium JSON change event for `customers` (id, name, balance, since), bare or in
/// the `schema`/`payload` wrapper of `schemas.enable = true`.
fn debezium_json(
    op: &str,
    before: Option<(i32, &str, i64)>,
    after: Option<(i32, &str, i64)>,
    lsn: i64,
    wrapped: bool,
) -> String {
    let image = |r: Option<(i32, &str, i64)>| match r {
        None => "null".to_string(),
        Some((id, name, balance)) => format!(
            r#"{{"id":{id},"name":"{name}","balance":{balance},"since":{}}}"#,
            1_767_225_600_000_000i64 + i64::from(id)
        ),
    };
    let payload = format!(
        r#"{{"before":{},"after":{},"source":{{"version":"2.7.0","connector":"postgresql","db":"shop","table":"customers","lsn":{lsn},"ts_ms":{}}},"op":"{op}","ts_ms":{},"transaction":null}}"#,
        image(before),
        image(after),
        1_767_225_600_000i64 + lsn,
        1_767_225_600_500i64 + lsn
    );
    if wrapped {
        format!(
            r#"{{"schema":{{"type":"struct","fields":[{{"type":"struct","optional":true,"field":"before"}}],"optional":false,"name":"shop.public.customers.Envelope"}},"payload":{payload}}}"#
        )
    } else {
        payload
    }
}

const CUSTOMER_ROW: &str = r#"{"type":"record","name":"Value","namespace":"shop.public.customers","fields":[
    {"name":"id","type":"int"},{"name":"name","type":"string"},{"name":"balance","type":"long"},
    {"name":"since","type":{"type":"long","logicalType":"timestamp-micros"}}]}"#;
const CUSTOMER_KEY: &str = r#"{"type":"record","name":"Key","namespace":"shop.public.customers","fields":[{"name":"id","type":"int"}]}"#;

#[test]
fn debezium_json_with_and_without_schemas_mirrors_by_the_message_key() {
    let topic = unique("dbzjson");
    create_topic(&topic, 1);
    let mut truth: BTreeMap<i32, (String, i64)> = BTreeMap::new();
    let p = Produce::new();
    // The changelog the test expects: op and row image, in order.
    let mut model: Vec<(String, i32, String, i64)> = Vec::new();
    let mut lsn = 0i64;
    let mut send = |k: i32, op: &str, before: Option<(i32, &str, i64)>, after: Option<(i32, &str, i64)>| {
        lsn += 1;
        if let Some((id, name, bal)) = if op == "d" { before } else { after } {
            model.push((op.to_string(), id, name.to_string(), bal));
        }
        // Half the events carry the converter's schema wrapper, half do not; keys too.
        let wrapped = lsn % 2 == 0;
        let key = if wrapped {
            format!(r#"{{"schema":{{"type":"struct"}},"payload":{{"id":{k}}}}}"#)
        } else {
            format!(r#"{{"id":{k}}}"#)
        };
        let value = debezium_json(op, before, after, lsn, wrapped);
        p.send(&topic, 0, Some(key.as_bytes()), Some(value.as_bytes()));
        if op == "d" {
            p.send(&topic, 0, Some(key.as_bytes()), None); // tombstone
        }
    };
    for k in 0..400 {
        send(k, "r", None, Some((k, &format!("c{k}"), 100)));
        truth.insert(k, (format!("c{k}"), 100));
    }
    for round in 0..6i64 {
        for k in (0..400).filter(|k| (k + round as i32) % 5 == 0) {
            match truth.get(&k).cloned() {
                None => {
                    send(k, "c", None, Some((k, "back", round)));
                    truth.insert(k, ("back".into(), round));
                }
                Some((name, bal)) if round % 3 == 2 => {
                    send(k, "d", Some((k, &name, bal)), None);
                    truth.remove(&k);
                }
                Some((name, bal)) => {
                    send(k, "u", Some((k, &name, bal)), Some((k, &name, bal + 10)));
                    truth.insert(k, (name, bal + 10));
                }
            }
        }
    }
    // Not a change event: a dead letter, and the rest goes on.
    p.send(
        &topic,
        0,
        Some(br#"{"id":1}"#),
        Some(br#"{"op":"x","after":null}"#),
    );
    p.flush();

    let dir = tempfile::tempdir().unwrap();
    let row = write_file(dir.path(), "customer.avsc", CUSTOMER_ROW);
    let key = write_file(dir.path(), "customer_key.avsc", CUSTOMER_KEY);
    let pipeline = kafka_pipeline(
        dir.path(),
        "dbzjson",
        &format!(
            "topics = [\"{topic}\"]\ngroup_id = \"{topic}\"\nformat = \"debezium-json\"\nschema = \"{}\"\n\
             key_format = \"json\"\nkey_schema = \"{}\"",
            row.display(),
            key.display()
        ),
        "./lake",
        &format!(
            "[dead_letters]\n\n[batch]\nmax_rows = 500\n\n[[tables]]\nname = \"customers\"\nfrom = \"{topic}\"\nmode = \"mirror\"\n\n\
             [[tables]]\nname = \"customers_changes\"\nfrom = \"{topic}\"\nmode = \"changelog\""
        ),
    );
    run_once(dir.path(), &pipeline);
    let lake = dir.path().join("lake");
    let mirror = duck(&format!(
        "SELECT id, name, balance, epoch_us(since) FROM {} ORDER BY id",
        scan(lake.join("customers").to_str().unwrap())
    ));
    let got: Vec<(i32, String, i64, i64)> = mirror
        .iter()
        .map(|r| {
            (
                r[0].as_i64().unwrap() as i32,
                r[1].as_str().unwrap().to_string(),
                r[2].as_i64().unwrap(),
                r[3].as_i64().unwrap(),
            )
        })
        .collect();
    let want: Vec<(i32, String, i64, i64)> = truth
        .into_iter()
        .map(|(k, (n, b))| (k, n, b, 1_767_225_600_000_000 + i64::from(k)))
        .collect();
    assert_eq!(got, want, "mirror equals the source table");
    let changes = scan(lake.join("customers_changes").to_str().unwrap());
    let log: Vec<(String, i32, String, i64)> = duck(&format!(
        "SELECT _op, id, name, balance FROM {changes} ORDER BY _position"
    ))
    .iter()
    .map(|r| {
        (
            r[0].as_str().unwrap().to_string(),
            r[1].as_i64().unwrap() as i32,
            r[2].as_str().unwrap().to_string(),
            r[3].as_i64().unwrap(),
        )
    })
    .collect();
    assert!(model.iter().any(|m| m.0 == "d"));
    assert_eq!(
        log.len(),
        model.len(),
        "one changelog row per change, tombstones skipped"
    );
    assert_eq!(log, model, "the changelog equals the changes sent");
    let log = &duck(&format!("SELECT min(_commit_ts)::VARCHAR FROM {changes}"))[0];
    assert_eq!(
        log[0], "2026-01-01 00:00:00.001+00",
        "commit time from source.ts_ms"
    );
    let dead = duck(&format!(
        "SELECT message FROM {}",
        scan(lake.join("dead_letters").to_str().unwrap())
    ));
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(dead[0][0].as_str().unwrap().contains("op \"x\""), "{dead:?}");
}

#[test]
fn avro_keys_read_with_the_key_subject_become_prefixed_columns() {
    let topic = unique("avrokey");
    create_topic(&topic, 1);
    let registry = stack_env("SCHEMA_REGISTRY_URL");
    let key_text = r#"{"type":"record","name":"OrderKey","fields":[{"name":"region","type":"string"},{"name":"id","type":"long"}]}"#;
    let key_schema = Schema::parse_str(key_text).unwrap();
    let key_id = register(&registry, &format!("{topic}-key"), key_text);
    // Registered for the topic's values, not its keys: a key written with it is refused.
    let other = r#"{"type":"record","name":"Other","fields":[{"name":"z","type":"string"}]}"#;
    let other_id = register(&registry, &format!("{topic}-value"), other);
    let p = Produce::new();
    for i in 0..1000i64 {
        let key = frame(
            key_id,
            &key_schema,
            Value::Record(vec![
                ("region".into(), Value::String(format!("r{}", i % 3))),
                ("id".into(), Value::Long(i)),
            ]),
        );
        p.send(
            &topic,
            0,
            Some(&key),
            Some(format!(r#"{{"id": {i}, "n": {}}}"#, i * 2).as_bytes()),
        );
    }
    let foreign = frame(
        other_id,
        &Schema::parse_str(other).unwrap(),
        Value::Record(vec![("z".into(), Value::String("?".into()))]),
    );
    p.send(&topic, 0, Some(&foreign), Some(br#"{"id": -1}"#));
    p.flush();

    let dir = tempfile::tempdir().unwrap();
    let value = write_file(
        dir.path(),
        "order.avsc",
        r#"{"type":"record","name":"Order","fields":[{"name":"id","type":"long"},{"name":"n","type":["null","long"],"default":null}]}"#,
    );
    let pipeline = kafka_pipeline(
        dir.path(),
        "avrokey",
        &format!(
            "topics = [\"{topic}\"]\ngroup_id = \"{topic}\"\nformat = \"json\"\nschema = \"{}\"\n\
             schema_registry = \"{registry}\"\nkey_format = \"avro\"\nkey_prefix = \"k_\"",
            value.display()
        ),
        "./lake",
        &format!("[dead_letters]\n\n[[tables]]\nname = \"orders\"\nfrom = \"{topic}\""),
    );
    run_once(dir.path(), &pipeline);
    let lake = dir.path().join("lake");
    let row = &duck(&format!(
        "SELECT count(*), count(*) FILTER (WHERE k_id = id AND k_region = 'r' || (id % 3) AND n = 2 * id) FROM {}",
        scan(lake.join("orders").to_str().unwrap())
    ))[0];
    assert_eq!(row[0], 1000);
    assert_eq!(row[1], 1000, "the key's fields, prefixed, beside the value's");
    let dead = duck(&format!(
        "SELECT message, position FROM {}",
        scan(lake.join("dead_letters").to_str().unwrap())
    ));
    assert_eq!(dead.len(), 1, "{dead:?}");
    let why = dead[0][0].as_str().unwrap();
    assert!(
        why.starts_with("the key") && why.contains(&format!("not registered under subject {topic}-key")),
        "{why}"
    );
    assert_eq!(dead[0][1], 1000);
}
