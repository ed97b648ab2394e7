//! `mirror` and `changelog` tables fed by randomised change files: after every commit,
//! DuckDB reading the mirror equals an in-memory model of the source table, on local
//! disk and on S3, merged by deletion vectors (the default) and copy-on-write; Python
//! `deltalake` reads the deletion-vector table too. Bad records land in the
//! dead-letter table; the rest go on.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde_json::{Value, json};

use crate::support::*;

/// A small deterministic generator, seeded per run (the seed is in failure messages).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

type Model = BTreeMap<i64, (Option<String>, i64)>;

/// One round of changes: many to the same few keys, so batches collapse.
fn round(rng: &mut Rng, model: &mut Model, round: usize, bad: bool) -> (String, usize) {
    let mut text = String::new();
    let mut ops = 0;
    if round == 0 {
        // Schema inference reads the first file: give every column a typed value.
        text.push_str(&json!({"_op": "c", "id": 1000, "name": "first", "amount": 1}).to_string());
        text.push('\n');
        // A value the source did not send (Postgres TOAST) keeps the current one.
        text.push_str(&json!({"_op": "u", "id": 1000, "amount": 2, "_unchanged": ["name"]}).to_string());
        text.push('\n');
        model.insert(1000, (Some("first".into()), 2));
        ops += 2;
    }
    for _ in 0..(50 + rng.below(250)) {
        let id = rng.below(40) as i64;
        let amount = rng.below(1_000_000) as i64;
        let name = (rng.below(10) > 0).then(|| format!("n{}", rng.below(1000)));
        let op = match model.get(&id) {
            None => "c",
            Some(_) if rng.below(4) == 0 => "d",
            Some(_) => "u",
        };
        let line = match op {
            "d" => {
                let (old_name, old_amount) = model.remove(&id).unwrap();
                json!({"_op": "d", "id": id, "name": old_name, "amount": old_amount})
            }
            "u" if rng.below(5) == 0 => {
                // Name not sent: it keeps whatever the table (or this batch) has.
                let kept = model[&id].0.clone();
                model.insert(id, (kept, amount));
                json!({"_op": "u", "id": id, "amount": amount, "_unchanged": ["name"]})
            }
            _ => {
                model.insert(id, (name.clone(), amount));
                json!({"_op": op, "id": id, "name": name, "amount": amount})
            }
        };
        writeln!(text, "{line}").unwrap();
        ops += 1;
    }
    if bad {
        text.push_str("{\"_op\": \"u\", \"id\": 7, oops\n");
        text.push_str("{\"_op\": \"u\", \"id\": \"seven\", \"name\": \"x\", \"amount\": 1}\n");
    }
    (text, ops)
}

/// `merge`: extra lines for the mirror table (e.g. `merge = "copy_on_write"`).
fn pipeline(dir: &Path, uri: &str, merge: &str) -> std::path::PathBuf {
    let storage = if uri.starts_with("s3://") {
        "AWS_ENDPOINT_URL = \"${AWS_ENDPOINT_URL}\"\nAWS_ALLOW_HTTP = \"true\""
    } else {
        ""
    };
    write_file(
        dir,
        "mirror.toml",
        &format!(
            r#"
name = "accounts"
[source]
kind = "file"
path = "./changes"
format = "jsonl"
[sink]
uri = "{uri}"
[sink.storage]
{storage}
[runtime]
cache_dir = "./cache"
[batch]
max_rows = 100000
[dead_letters]
[[tables]]
name = "accounts"
from = "changes"
mode = "mirror"
key = ["id"]
{merge}
[[tables]]
name = "accounts_log"
from = "changes"
mode = "changelog"
"#
        ),
    )
}

fn table_rows(table: &str) -> Vec<Value> {
    duck(&format!(
        "SELECT id, name, amount FROM {} ORDER BY id",
        scan(table)
    ))
    .into_iter()
    .map(Value::Array)
    .collect()
}

fn model_rows(model: &Model) -> Vec<Value> {
    model
        .iter()
        .map(|(id, (name, amount))| json!([id, name, amount]))
        .collect()
}

/// What a crash or an operator can do to a deletion-vector mirror between rounds: a
/// run aborted after it uploaded data and DV files but before their commit, a key
/// index lost, and a key index older than the table. The next run must not care.
fn disturb(dir: &Path, pipeline: &Path, round: usize) {
    let cache = dir.join("cache");
    match round {
        2 | 5 => {
            // Dead letters (when any) commit first, then accounts and accounts_log side
            // by side: abort before the first or the second commit entry.
            let out = std::process::Command::new(bin())
                .args(["run", pipeline.to_str().unwrap(), "--once"])
                .env("TRIBUTARY_FAILPOINT", format!("before_commit:{}", round / 2))
                .current_dir(dir)
                .output()
                .unwrap();
            assert!(!out.status.success(), "the failpoint did not fire");
        }
        3 => {
            std::fs::remove_dir_all(&cache).unwrap();
        }
        4 => copy_dir(&cache, &dir.join("cache-round-4")),
        6 => {
            std::fs::remove_dir_all(&cache).unwrap();
            copy_dir(&dir.join("cache-round-4"), &cache);
        }
        _ => {}
    }
}

/// `uri`: an S3 root, or `None` for a folder in a temporary directory.
fn mirror_follows_the_model(uri: Option<String>, rounds: usize, merge: &str) {
    let dir = tempfile::tempdir().unwrap();
    let uri = uri.unwrap_or_else(|| dir.path().join("lake").to_str().unwrap().to_string());
    let uri = uri.as_str();
    let changes = dir.path().join("changes");
    std::fs::create_dir(&changes).unwrap();
    let pipeline = pipeline(dir.path(), uri, merge);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let mut rng = Rng(seed);
    let mut model = Model::new();
    let mut total_ops = 0;
    let bad_round = rounds / 2;
    for r in 0..rounds {
        let (text, ops) = round(&mut rng, &mut model, r, r == bad_round);
        total_ops += ops;
        write_file(&changes, &format!("{r:04}.jsonl"), &text);
        if merge.is_empty() && !uri.starts_with("s3://") {
            disturb(dir.path(), &pipeline, r);
        }
        run_once(dir.path(), &pipeline);
        assert_eq!(
            table_rows(&format!("{uri}/accounts")),
            model_rows(&model),
            "mirror differs from the model after round {r} (seed {seed})"
        );
    }
    let log = format!("{uri}/accounts_log");
    let r = &duck(&format!(
        "SELECT count(*), count(DISTINCT _position), sum((_op = 'd')::INT) > 0, \
                bool_and(_source = 'changes') FROM {}",
        scan(&log)
    ))[0];
    assert_eq!(r[0], total_ops, "changelog rows (seed {seed})");
    assert_eq!(r[1], total_ops, "changelog positions are unique (seed {seed})");
    assert_eq!(r[2], true, "changelog has deletes (seed {seed})");
    assert_eq!(r[3], true, "changelog _source");
    let columns = duck(&format!(
        "SELECT column_name FROM (DESCRIBE SELECT * FROM {})",
        scan(&format!("{uri}/accounts"))
    ));
    let mut columns: Vec<&str> = columns.iter().filter_map(|r| r[0].as_str()).collect();
    columns.sort_unstable();
    // The change's own columns (_op, _source, _unchanged) are not table columns.
    assert_eq!(
        columns,
        ["_commit_ts", "_position", "amount", "id", "name"],
        "mirror columns"
    );

    let dead = duck(&format!(
        "SELECT error_kind, source, decode(payload), message FROM {} ORDER BY position",
        scan(&format!("{uri}/dead_letters"))
    ));
    assert_eq!(dead.len(), 2, "dead letters: {dead:?}");
    assert_eq!(dead[0][0], "decode");
    assert_eq!(dead[0][1], "changes");
    assert_eq!(dead[0][2], "{\"_op\": \"u\", \"id\": 7, oops\n");
    let message = dead[1][3].as_str().unwrap();
    assert!(
        message.contains(&format!("{bad_round:04}.jsonl")) && message.contains("line"),
        "the message names the file and line: {message}"
    );

    // A re-run adds nothing anywhere.
    let out = run_once(dir.path(), &pipeline);
    assert!(out.contains("+0 rows in 0 commits"), "{out}");
    assert_eq!(table_rows(&format!("{uri}/accounts")), model_rows(&model));

    if !uri.starts_with("s3://") {
        let (protocol, dv_adds) = local_dv_usage(&Path::new(uri).join("accounts"));
        if merge.is_empty() {
            assert_eq!(protocol, Some((3, 7)), "a new mirror uses deletion vectors");
            assert!(dv_adds > 0, "updates and deletes were marked in deletion vectors");
        } else {
            assert_eq!(dv_adds, 0, "copy-on-write writes no deletion vectors");
            assert!(protocol.is_some_and(|(r, _)| r < 3), "{protocol:?}");
        }
    }

    // delta-rs's own reader sees the same rows.
    let mirror = format!("{uri}/accounts");
    let read = delta_rs(&[("t", &mirror)], "SELECT id, name, amount FROM t ORDER BY id");
    let read: Vec<Value> = read.into_iter().map(Value::Array).collect();
    assert_eq!(
        read,
        model_rows(&model),
        "Python deltalake vs the model (seed {seed})"
    );
}

#[test]
fn mirror_equals_the_model_after_every_commit_on_local_disk() {
    mirror_follows_the_model(None, 8, "");
}

#[test]
fn mirror_equals_the_model_after_every_commit_on_s3() {
    stack_env("AWS_ENDPOINT_URL");
    mirror_follows_the_model(Some(format!("s3://tributary-test/{}", unique("mirror"))), 5, "");
}

#[test]
fn copy_on_write_mirror_equals_the_model() {
    mirror_follows_the_model(None, 5, "merge = \"copy_on_write\"");
}

#[test]
fn records_a_table_refuses_go_to_dead_letters_when_it_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let changes = dir.path().join("changes");
    std::fs::create_dir(&changes).unwrap();
    write_file(
        &changes,
        "0001.jsonl",
        "{\"_op\": \"c\", \"id\": 1, \"name\": \"a\"}\n{\"_op\": \"c\", \"id\": 2, \"name\": \"b\"}\n",
    );
    let lake = dir.path().join("lake");
    let text = std::fs::read_to_string(pipeline(dir.path(), lake.to_str().unwrap(), "")).unwrap();
    // The mirror's key is not in the records: with on_incompatible = "dead_letter"
    // they are set aside and the changelog still gets them.
    let text = text.replace(
        "key = [\"id\"]",
        "key = [\"account_id\"]\non_incompatible = \"dead_letter\"",
    );
    let p = write_file(dir.path(), "routed.toml", &text);
    run_once(dir.path(), &p);
    let dead = duck(&format!(
        "SELECT error_kind, \"table\", decode(payload), message FROM {} ORDER BY position",
        scan(lake.join("dead_letters").to_str().unwrap())
    ));
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert_eq!(dead[0][0], "schema");
    assert_eq!(dead[0][1], "accounts");
    let payload: Value = serde_json::from_str(dead[1][2].as_str().unwrap()).unwrap();
    assert_eq!(
        (payload["id"].as_i64(), payload["name"].as_str()),
        (Some(2), Some("b"))
    );
    assert!(dead[0][3].as_str().unwrap().contains("account_id"), "{dead:?}");
    assert_eq!(
        duck_i64(&format!(
            "SELECT count(*) FROM {}",
            scan(lake.join("accounts_log").to_str().unwrap())
        )),
        2
    );
    // The refused table still records that it has seen these positions.
    let out = run_once(dir.path(), &p);
    assert!(out.contains("+0 rows in 0 commits"), "{out}");
}
