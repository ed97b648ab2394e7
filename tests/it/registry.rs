//! The schema registry, checked with clients Tributary did not write: Confluent's
//! Python client (register, evolve, refuse with 409, produce framed records that
//! Tributary then ingests), over plain http and over https with basic auth, and the
//! Rust schema_registry_converter; `deleted=true` reads; its store surviving a SIGKILL
//! on S3 and restarting from a snapshot.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use apache_avro::types::Value;
use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use schema_registry_converter::schema_registry_common::{SchemaType, SubjectNameStrategy, SuppliedSchema};

use crate::kafka_support::*;
use crate::support::*;

#[test]
fn confluent_python_client_registers_evolves_is_refused_and_its_records_are_ingested() {
    let registry = stack_env("SCHEMA_REGISTRY_URL");
    python_client_then_ingest(&registry, "{}", "", &[]);
}

/// Confluent's Python client (`client_conf` added to its settings) registers, evolves
/// and produces through `registry`; Tributary (`source_extra` added to its source,
/// `env` to its environment) ingests the topic; the table holds what was produced.
fn python_client_then_ingest(registry: &str, client_conf: &str, source_extra: &str, env: &[(&str, &str)]) {
    let topic = unique("pyclicks");
    create_topic(&topic, 1);
    let out = Command::new(stack_env("TRIBUTARY_PYTHON"))
        .arg(repo().join("tests/registry_client.py"))
        .args([registry, &brokers(), &topic])
        .env("REGISTRY_CLIENT_CONF", client_conf)
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
            "topics = [\"{topic}\"]\ngroup_id = \"{topic}\"\nformat = \"avro\"\nschema_registry = \"{registry}\"\n{source_extra}"
        ),
        "./lake",
        &format!("[[tables]]\nname = \"clicks\"\nfrom = \"{topic}\""),
    );
    let run = Command::new(bin())
        .args(["run", pipeline.to_str().unwrap(), "--once"])
        .current_dir(dir.path())
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "tributary run failed:\n{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
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

fn http_json(resp: reqwest::blocking::Response) -> (u16, serde_json::Value) {
    let status = resp.status().as_u16();
    (status, resp.json().unwrap_or(serde_json::Value::Null))
}

const CT: &str = "application/vnd.schemaregistry.v1+json";

#[test]
fn deleted_reads_and_a_compacted_store_answer_as_confluent_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let store_s = store.to_str().unwrap();
    let port = free_port();
    let args = ["--compact-every", "4"];
    let r = RegistryProcess::start_with(store_s, port, &args, None);
    let http = reqwest::blocking::Client::new();
    let schema = |n: usize| {
        format!(r#"{{"type":"record","name":"R","fields":[{{"name":"f{n}","type":"long","default":0}}]}}"#)
    };
    // 8 events: 3 registrations under s, 1 under t (same schema as s v1), t's level,
    // soft deletes of s v1 and of all of t, the global level.
    let ids: Vec<u32> = (0..3).map(|n| register(&r.url, "s", &schema(n))).collect();
    assert_eq!(register(&r.url, "t", &schema(0)), ids[0]);
    let put = http
        .put(format!("{}/config/t", r.url))
        .header("Content-Type", CT)
        .body(r#"{"compatibility":"NONE"}"#)
        .send()
        .unwrap();
    assert!(put.status().is_success());
    assert_eq!(
        http.delete(format!("{}/subjects/s/versions/1", r.url))
            .send()
            .unwrap()
            .text()
            .unwrap(),
        "1"
    );
    assert_eq!(
        http.delete(format!("{}/subjects/t", r.url))
            .send()
            .unwrap()
            .text()
            .unwrap(),
        "[1]"
    );
    let put = http
        .put(format!("{}/config", r.url))
        .header("Content-Type", CT)
        .body(r#"{"compatibility":"BACKWARD"}"#)
        .send()
        .unwrap();
    assert!(put.status().is_success());

    // What each `deleted` read answers, checked against Confluent's semantics, and
    // kept to compare with the answers after a restart from the snapshot.
    let reads = |url: &str| -> Vec<(u16, serde_json::Value)> {
        let get = |path: &str| http_json(http.get(format!("{url}{path}")).send().unwrap());
        let lookup = |path: &str, n: usize| {
            let body = serde_json::json!({ "schema": schema(n) }).to_string();
            http_json(
                http.post(format!("{url}{path}"))
                    .header("Content-Type", CT)
                    .body(body)
                    .send()
                    .unwrap(),
            )
        };
        vec![
            get("/subjects"),
            get("/subjects?deleted=true"),
            get("/subjects?deletedOnly=true"),
            get("/subjects/s/versions"),
            get("/subjects/s/versions?deleted=true"),
            get("/subjects/s/versions?deletedOnly=true"),
            get("/subjects/s/versions/1"),
            get("/subjects/s/versions/1?deleted=true"),
            get("/subjects/s/versions/1/schema?deleted=true"),
            get("/subjects/t/versions/1"),
            get("/subjects/t/versions/1?deleted=true"),
            get("/subjects/t/versions?deleted=true"),
            lookup("/subjects/s", 0),
            lookup("/subjects/s?deleted=true", 0),
            lookup("/subjects/t", 0),
            lookup("/subjects/t?deleted=true", 0),
            get(&format!("/schemas/ids/{}/subjects", ids[0])),
            get(&format!("/schemas/ids/{}/subjects?deleted=true", ids[0])),
            get(&format!("/schemas/ids/{}/versions", ids[0])),
            get(&format!("/schemas/ids/{}/versions?deleted=true", ids[0])),
            get(&format!("/schemas/ids/{}", ids[0])),
            get("/config/t"),
            get("/subjects?subjectPrefix=t&deleted=true"),
            get("/contexts"),
        ]
    };
    let before = reads(&r.url);
    let code = |i: usize| (before[i].0, before[i].1["error_code"].as_i64());
    let body = |i: usize| &before[i].1;
    use serde_json::json;
    assert_eq!(body(0), &json!(["s"]));
    assert_eq!(body(1), &json!(["s", "t"]));
    assert_eq!(body(2), &json!(["s", "t"]));
    assert_eq!(body(3), &json!([2, 3]));
    assert_eq!(body(4), &json!([1, 2, 3]));
    assert_eq!(body(5), &json!([1]));
    assert_eq!(code(6), (404, Some(40402)), "a soft-deleted version is hidden");
    assert_eq!(
        (body(7)["version"].as_i64(), body(7)["id"].as_i64()),
        (Some(1), Some(ids[0] as i64))
    );
    assert_eq!(body(8)["fields"][0]["name"], "f0");
    assert_eq!(
        code(9),
        (404, Some(40401)),
        "every version of t is deleted: no subject"
    );
    assert_eq!(body(10)["subject"], "t");
    assert_eq!(body(11), &json!([1]));
    assert_eq!(code(12), (404, Some(40403)), "lookup skips the deleted version");
    assert_eq!(body(13)["version"], 1);
    assert_eq!(code(14), (404, Some(40401)));
    assert_eq!(
        (body(15)["subject"].as_str(), body(15)["version"].as_i64()),
        (Some("t"), Some(1))
    );
    assert_eq!(body(16), &json!([]));
    assert_eq!(body(17), &json!(["s", "t"]));
    assert_eq!(body(18), &json!([]));
    assert_eq!(
        body(19),
        &json!([{"subject": "s", "version": 1}, {"subject": "t", "version": 1}])
    );
    assert_eq!(body(20)["schema"], schema(0));
    assert_eq!(body(21)["compatibilityLevel"], "NONE");
    assert_eq!(body(22), &json!(["t"]));
    assert_eq!(body(23), &json!(["."]));
    r.kill();

    // 8 events: snapshots after the 4th and the 8th. Garbage in every event the newest
    // snapshot folds shows a start reads the snapshot and not them.
    let snapshots: Vec<PathBuf> = sorted_files(&store.join("snapshots"));
    let names: Vec<String> = snapshots.iter().map(|p| file_name(p)).collect();
    assert_eq!(names, [format!("{:020}.json", 4), format!("{:020}.json", 8)]);
    let events = sorted_files(&store.join("events"));
    assert_eq!(events.len(), 8);
    for e in &events {
        std::fs::write(e, b"not an event").unwrap();
    }
    let log = dir.path().join("registry.log");
    let r = RegistryProcess::start_with(store_s, port, &args, Some(&log));
    let after = reads(&r.url);
    for (i, (a, b)) in before.iter().zip(&after).enumerate() {
        assert_eq!(
            a, b,
            "read {i} answers the same after a restart from the snapshot"
        );
    }
    // New events continue the numbering after the snapshot, and a restart replays them.
    let v4 = register(&r.url, "s", &schema(3));
    assert_eq!(v4, ids[2] + 1);
    r.kill();
    assert!(store.join("events").join(format!("{:020}.json", 9)).exists());
    let r = RegistryProcess::start_with(store_s, port, &args, Some(&log));
    let (status, latest) = http_json(
        http.get(format!("{}/subjects/s/versions/latest", r.url))
            .send()
            .unwrap(),
    );
    assert_eq!((status, latest["id"].as_u64()), (200, Some(v4 as u64)));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("snapshot=8") && text.contains("replayed=1"),
        "{text}"
    );
}

fn sorted_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

fn file_name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

/// `tributary hash-password`, with few iterations to keep the test quick.
fn hash_password(password: &str) -> String {
    use std::io::Write;
    let mut child = Command::new(bin())
        .args(["hash-password", "--iterations", "20000"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn an_https_registry_with_users_serves_confluents_client_and_tributary() {
    let certs = PathBuf::from(stack_env("TRIBUTARY_PG_TLS_CERTS"));
    let ca = certs.join("ca.crt");
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.toml");
    std::fs::write(
        &users,
        format!(
            "[users.writer]\npassword = \"{}\"\nrole = \"read-write\"\n\n[users.reader]\npassword = \"${{READER_HASH}}\"\nrole = \"read-only\"\n",
            hash_password("w-pass with space")
        ),
    )
    .unwrap();
    let log = dir.path().join("registry.log");
    let port = free_port();
    let store = dir.path().join("store");
    // The reader's hash comes from the environment, as a deployment's secret would.
    let reader_hash = hash_password("r-pass");
    let (cert, key) = (certs.join("server.crt"), certs.join("server.key"));
    let args = [
        "--users",
        users.to_str().unwrap(),
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];
    let env = [("READER_HASH", reader_hash.as_str())];
    let r = RegistryProcess::start_with_env(store.to_str().unwrap(), port, &args, Some(&log), &env);
    assert!(r.url.starts_with("https://localhost:"));
    let ca_cert = reqwest::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap();
    let http = reqwest::blocking::Client::builder()
        .add_root_certificate(ca_cert)
        .build()
        .unwrap();
    let schema = r#"{"type":"record","name":"A","fields":[{"name":"x","type":"long"}]}"#;
    let body = serde_json::json!({ "schema": schema }).to_string();
    let register = |user: Option<(&str, &str)>| {
        let req = http
            .post(format!("{}/subjects/auth-value/versions", r.url))
            .header("Content-Type", CT)
            .body(body.clone());
        let req = match user {
            Some((u, p)) => req.basic_auth(u, Some(p)),
            None => req,
        };
        req.send().unwrap()
    };
    // No credentials, a wrong password, an unknown user: 401 with Confluent's body.
    for user in [
        None,
        Some(("writer", "wrong")),
        Some(("nobody", "w-pass with space")),
    ] {
        let resp = register(user);
        assert_eq!(
            resp.headers()["www-authenticate"],
            "Basic realm=\"SchemaRegistry\""
        );
        let (status, body) = http_json(resp);
        assert_eq!(
            (status, body),
            (
                401,
                serde_json::json!({"error_code": 401, "message": "Unauthorized"})
            )
        );
    }
    // Plain http to the https port gets nowhere.
    assert!(reqwest::blocking::get(format!("http://127.0.0.1:{port}/subjects")).is_err());
    // The writer registers (its password has a space).
    let (status, reg) = http_json(register(Some(("writer", "w-pass with space"))));
    assert_eq!(status, 200, "{reg}");
    let id = reg["id"].as_i64().unwrap();
    // The reader reads and looks up, but cannot register or delete.
    let (status, got) = http_json(
        http.get(format!("{}/subjects/auth-value/versions/1", r.url))
            .basic_auth("reader", Some("r-pass"))
            .send()
            .unwrap(),
    );
    assert_eq!((status, got["id"].as_i64()), (200, Some(id)));
    let (status, got) = http_json(
        http.post(format!("{}/subjects/auth-value", r.url))
            .basic_auth("reader", Some("r-pass"))
            .header("Content-Type", CT)
            .body(body.clone())
            .send()
            .unwrap(),
    );
    assert_eq!((status, got["id"].as_i64()), (200, Some(id)));
    let (status, err) = http_json(register(Some(("reader", "r-pass"))));
    assert_eq!((status, err["error_code"].as_i64()), (403, Some(40301)), "{err}");
    let (status, _) = http_json(
        http.delete(format!("{}/subjects/auth-value", r.url))
            .basic_auth("reader", Some("r-pass"))
            .send()
            .unwrap(),
    );
    assert_eq!(status, 403);
    // Failed logins are logged with the user, never the password.
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("registry login failed") && text.contains("nobody"),
        "{text}"
    );
    assert!(
        !text.contains("wrong") && !text.contains("w-pass") && !text.contains("r-pass"),
        "{text}"
    );

    // Confluent's client over https with basic auth; Tributary ingests with credentials
    // from the environment and the test CA.
    let client_conf = serde_json::json!({
        "basic.auth.user.info": "writer:w-pass with space",
        "ssl.ca.location": ca,
    })
    .to_string();
    let source = format!(
        "schema_registry_user_info = \"${{REG_USER}}:${{REG_PASSWORD}}\"\nschema_registry_ca = \"{}\"",
        ca.display()
    );
    python_client_then_ingest(
        &r.url,
        &client_conf,
        &source,
        &[("REG_USER", "reader"), ("REG_PASSWORD", "r-pass")],
    );
}

#[test]
fn a_registry_killed_at_random_moments_while_snapshotting_keeps_every_acknowledged_schema() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let store_s = store.to_str().unwrap().to_string();
    let port = free_port();
    // A snapshot every 3 events, so kills land before, during and after snapshot writes.
    let args = ["--compact-every", "3"];
    let mut between = random_between();
    // The truth: every registration the registry acknowledged, with the id it gave.
    let mut acknowledged: Vec<(String, u64)> = Vec::new();
    let mut next = 0usize;
    for _ in 0..8 {
        let r = RegistryProcess::start_with(&store_s, port, &args, None);
        let url = r.url.clone();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let stop = stop.clone();
            let first = next;
            std::thread::spawn(move || {
                let http = reqwest::blocking::Client::new();
                let mut got = Vec::new();
                for n in first.. {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let schema = format!(
                        r#"{{"type":"record","name":"K{n}","fields":[{{"name":"x","type":"long"}}]}}"#
                    );
                    let body = serde_json::json!({ "schema": schema }).to_string();
                    let Ok(resp) = http
                        .post(format!("{url}/subjects/k{n}-value/versions"))
                        .header("Content-Type", CT)
                        .body(body)
                        .send()
                    else {
                        break;
                    };
                    let Ok(answer) = resp.json::<serde_json::Value>() else {
                        break;
                    };
                    got.push((format!("k{n}-value"), answer["id"].as_u64().expect("an id")));
                }
                got
            })
        };
        std::thread::sleep(Duration::from_millis(between(20, 300)));
        r.kill();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let got = writer.join().unwrap();
        next += got.len() + 1;
        acknowledged.extend(got);
    }
    assert!(
        acknowledged.len() > 20,
        "only {} registrations",
        acknowledged.len()
    );
    assert!(
        std::fs::read_dir(store.join("snapshots")).unwrap().count() > 3,
        "snapshots were written"
    );

    let r = RegistryProcess::start_with(&store_s, port, &args, None);
    let http = reqwest::blocking::Client::new();
    for (subject, id) in &acknowledged {
        let (status, latest) = http_json(
            http.get(format!("{}/subjects/{subject}/versions/latest", r.url))
                .send()
                .unwrap(),
        );
        assert_eq!((status, latest["id"].as_u64()), (200, Some(*id)), "{subject}");
    }
    // Ids are never given twice, and numbering goes on after the last one.
    let ids: std::collections::BTreeSet<u64> = acknowledged.iter().map(|(_, id)| *id).collect();
    assert_eq!(ids.len(), acknowledged.len());
    let fresh = r#"{"type":"record","name":"Fresh","fields":[]}"#;
    assert!(u64::from(register(&r.url, "fresh-value", fresh)) > *ids.iter().max().unwrap());
}
