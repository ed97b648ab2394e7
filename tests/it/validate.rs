//! `tributary validate`: good files pass, broken ones name file, key and expectation.

use crate::support::*;

#[test]
fn every_shipped_pipeline_validates() {
    let mut n = 0;
    for entry in std::fs::read_dir(repo().join("pipelines")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let out = std::process::Command::new(bin())
            .args(["validate", path.to_str().unwrap()])
            // The S3 variant reads its endpoint and credentials from the environment.
            .env("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
            .env("AWS_ACCESS_KEY_ID", "k")
            .env("AWS_SECRET_ACCESS_KEY", "s")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ALLOW_HTTP", "true")
            .env("KAFKA_BROKERS", "127.0.0.1:1")
            .env("SCHEMA_REGISTRY_URL", "http://127.0.0.1:1")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{} does not validate: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        n += 1;
    }
    assert!(n >= 3, "expected the shipped pipelines, found {n}");
}

/// (replace this in the quickstart, with this) → the error must contain all of `expect`.
const BROKEN: &[(&str, &str, &[&str])] = &[
    (
        "size = \"1m\"",
        "size = \"5 minutes\"",
        &[
            "aggregates[0].window",
            "\"5 minutes\" is not a duration",
            "\"5m\"",
        ],
    ),
    (
        "events = 200000",
        "events = \"lots\"",
        &["source", "invalid type: string \"lots\""],
    ),
    (
        "from = \"clickstream\"               # a stream",
        "from = \"clicks\" #",
        &["tables[0].from", "no stream \"clicks\"", "clickstream"],
    ),
    (
        "mode = \"append\"",
        "mode = \"upsert\"",
        &["tables[0].mode", "unknown variant `upsert`", "append"],
    ),
    (
        "count(*)",
        "median(*)",
        &["aggregates[0].measures.view_count", "count(*)"],
    ),
    (
        "max_rows = 100000",
        "max_rowz = 100000",
        &["batch.max_rowz", "unknown field", "max_rows"],
    ),
    (
        "uri = \"./lake\"",
        "uri = \"s3://${NO_SUCH_VAR}/x\"",
        &["sink.uri", "NO_SUCH_VAR is not set"],
    ),
    ("[source]", "[source\n", &["line"]),
];

#[test]
fn broken_files_name_the_file_the_key_and_the_expectation() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read_to_string(repo().join("pipelines/quickstart.toml")).unwrap();
    for (i, (from, to, expect)) in BROKEN.iter().enumerate() {
        assert!(good.contains(from), "quickstart.toml no longer contains {from:?}");
        let name = format!("broken-{i}.toml");
        let path = write_file(dir.path(), &name, &good.replacen(from, to, 1));
        let out = tributary(dir.path(), &["validate", path.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{name}: expected exit 2, got {}: {stderr}",
            out.status
        );
        assert!(
            stderr.contains(&name),
            "{name}: error does not name the file: {stderr}"
        );
        for e in *expect {
            assert!(stderr.contains(e), "{name}: error lacks {e:?}: {stderr}");
        }
    }
    // `run` refuses the same files with the same message, before touching any table.
    let path = dir.path().join("broken-0.toml");
    let out = tributary(dir.path(), &["run", path.to_str().unwrap(), "--once"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        !dir.path().join("lake").exists(),
        "a broken pipeline wrote tables"
    );
}
