//! The schema registry, checked with clients Tributary did not write: Confluent's
//! Python client (register, evolve, refuse with 409, produce framed records that
//! Tributary then ingests) and the Rust schema_registry_converter; and its store
//! surviving a SIGKILL on S3.

use std::process::Command;

use apache_avro::types::Value;
use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use schema_registry_converter::schema_registry_common::{SchemaType, SubjectNameStrategy, SuppliedSchema};

use crate::kafka_support::*;
use crate::support::*;

#[test]
fn confluent_python_client_registers_evolves_is_refused_and_its_records_are_ingested() {
    let topic = unique("pyclicks");
    create_topic(&topic, 1);
    let registry = stack_env("SCHEMA_REGISTRY_URL");
    let out = Command::new(stack_env("TRIBUTARY_PYTHON"))
        .arg(repo().join("tests/registry_client.py"))
        .args([&registry, &brokers(), &topic])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "registry_client.py failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // What the client produced, as it reports it: the independent truth.
    let produced: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (n, users, refs) = (
        produced["records"].as_i64().unwrap(),
        produced["sum_user"].as_i64().unwrap(),
        produced["with_ref"].as_i64().unwrap(),
    );

    let dir = tempfile::tempdir().unwrap();
    let pipeline = kafka_pipeline(
        dir.path(),
        "pyclicks",
        &format!(
            "topics = [\"{topic}\"]\ngroup_id = \"{topic}\"\nformat = \"avro\"\nschema_registry = \"{registry}\""
        ),
        "./lake",
        &format!("[[tables]]\nname = \"clicks\"\nfrom = \"{topic}\""),
    );
    run_once(dir.path(), &pipeline);
    let table = dir.path().join("lake/clicks");
    let row = &duck(&format!(
        "SELECT count(*), sum(\"user\"), count(ref), count(DISTINCT _offset), min(_offset), max(_offset) FROM {}",
        scan(table.to_str().unwrap())
    ))[0];
    assert_eq!(row[0], n, "every record produced by the Confluent serializer");
    assert_eq!(row[1].as_f64().unwrap() as i64, users);
    assert_eq!(
        row[2], refs,
        "records of the first schema read `ref` as its default (null)"
    );
    assert_eq!(row[3], n);
    assert_eq!((row[4].as_i64(), row[5].as_i64()), (Some(0), Some(n - 1)));
}

#[test]
fn schema_registry_converter_round_trips_through_the_registry() {
    let registry = stack_env("SCHEMA_REGISTRY_URL");
    let topic = unique("converter");
    let schema = r#"{"type":"record","name":"Beat","namespace":"t","fields":[{"name":"beat","type":"long"},{"name":"tag","type":["null","string"],"default":null}]}"#;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let encoder = AvroEncoder::new(SrSettings::new(registry.clone()));
        let supplied = SuppliedSchema::new(Some("t.Beat".into()), SchemaType::Avro, schema.into());
        let strategy = SubjectNameStrategy::TopicNameStrategyWithSchema(topic.clone(), false, supplied);
        let values = vec![
            ("beat", Value::Long(7)),
            ("tag", Value::Union(1, Box::new(Value::String("x".into())))),
        ];
        let bytes = encoder.encode(values, strategy).await.unwrap();
        assert_eq!(bytes[0], 0, "Confluent magic byte");
        let id = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
        // The same schema registered through Tributary's client gets the same id.
        let ours = tributary::registry::client::Client::new(&registry);
        assert_eq!(
            ours.register(&format!("{topic}-value"), schema).await.unwrap(),
            id
        );

        let decoder = AvroDecoder::new(SrSettings::new(registry.clone()));
        let decoded = decoder.decode(Some(&bytes)).await.unwrap();
        assert_eq!(
            decoded.value,
            Value::Record(vec![
                ("beat".into(), Value::Long(7)),
                ("tag".into(), Value::Union(1, Box::new(Value::String("x".into())))),
            ])
        );
        // Its latest-version lookup (TopicNameStrategy without a schema) finds it too.
        let strategy = SubjectNameStrategy::TopicNameStrategy(topic.clone(), false);
        let again = encoder
            .encode(
                vec![
                    ("beat", Value::Long(8)),
                    ("tag", Value::Union(0, Box::new(Value::Null))),
                ],
                strategy,
            )
            .await
            .unwrap();
        assert_eq!(&again[1..5], &bytes[1..5]);
    });
}

#[test]
fn the_store_on_s3_survives_a_sigkill() {
    let store = format!("s3://tributary/{}", unique("registry"));
    let port = free_port();
    let r = RegistryProcess::start(&store, port);
    let v1 = r#"{"type":"record","name":"A","fields":[{"name":"x","type":"long"}]}"#;
    let v2 = r#"{"type":"record","name":"A","fields":[{"name":"x","type":"long"},{"name":"y","type":"int","default":0}]}"#;
    let id1 = register(&r.url, "a-value", v1);
    let id2 = register(&r.url, "a-value", v2);
    assert_eq!(register(&r.url, "b-value", v1), id1, "ids are global");
    let http = reqwest::blocking::Client::new();
    let put = http
        .put(format!("{}/config/b-value", r.url))
        .body(r#"{"compatibility":"FULL_TRANSITIVE"}"#)
        .header("Content-Type", "application/vnd.schemaregistry.v1+json")
        .send()
        .unwrap();
    assert!(put.status().is_success());
    let del = http
        .delete(format!("{}/subjects/a-value/versions/1", r.url))
        .send()
        .unwrap();
    assert_eq!(del.text().unwrap(), "1");
    r.kill();

    let r = RegistryProcess::start(&store, port);
    let get = |path: &str| -> (u16, serde_json::Value) {
        let resp = http.get(format!("{}{path}", r.url)).send().unwrap();
        let status = resp.status().as_u16();
        assert_eq!(
            resp.headers()["content-type"],
            "application/vnd.schemaregistry.v1+json"
        );
        (status, resp.json().unwrap())
    };
    assert_eq!(get(&format!("/schemas/ids/{id1}")).1["schema"], v1);
    assert_eq!(get("/subjects/a-value/versions").1, serde_json::json!([2]));
    assert_eq!(
        get("/subjects/a-value/versions?deleted=true").1,
        serde_json::json!([1, 2])
    );
    assert_eq!(get("/subjects/a-value/versions/latest").1["id"], id2);
    assert_eq!(get("/config/b-value").1["compatibilityLevel"], "FULL_TRANSITIVE");
    let (status, body) = get("/subjects/a-value/versions/1");
    assert_eq!((status, body["error_code"].as_i64()), (404, Some(40402)));
    let (status, body) = get("/subjects/nope/versions");
    assert_eq!((status, body["error_code"].as_i64()), (404, Some(40401)));
    let (status, body) = get("/schemas/ids/999999");
    assert_eq!((status, body["error_code"].as_i64()), (404, Some(40403)));
    // New registrations continue the numbering after the restart.
    let v3 = r#"{"type":"record","name":"C","fields":[]}"#;
    assert_eq!(register(&r.url, "c-value", v3), id2 + 1);
}
