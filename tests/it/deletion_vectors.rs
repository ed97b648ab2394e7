//! Deletion-vector mirrors beyond the per-commit model test (tests/it/mirror.rs):
//! `maintain` purges files their deletion vectors have mostly emptied and VACUUM keeps
//! exactly the DV files live `add`s reference; a copy-on-write mirror that opts in is
//! upgraded once and goes on merging by deletion vectors. DuckDB and Python
//! `deltalake` read every table; an in-memory model of the source is the truth.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::support::*;

type Model = BTreeMap<i64, i64>;

/// The DV file a `u` descriptor's pathOrInlineDv names.
fn dv_file(encoded: &str) -> String {
    let bytes = z85::decode(&encoded[encoded.len() - 20..]).unwrap();
    format!("deletion_vector_{}.bin", uuid::Uuid::from_slice(&bytes).unwrap())
}

fn dv_files_on_disk(table: &Path) -> HashSet<String> {
    std::fs::read_dir(table)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("deletion_vector_") && n.ends_with(".bin"))
        .collect()
}

fn pipeline(dir: &Path, merge: &str) -> PathBuf {
    write_file(
        dir,
        "mirror.toml",
        &format!(
            r#"
name = "dv"
[source]
kind = "file"
path = "./changes"
format = "jsonl"
[sink]
uri = "./lake"
[runtime]
cache_dir = "./cache"
[[tables]]
name = "accounts"
from = "changes"
mode = "mirror"
key = ["id"]
{merge}
"#
        ),
    )
}

/// A round of changes: inserts all keys at first, then updates `share` of them and
/// deletes a few; returns the JSON lines.
fn round(model: &mut Model, r: u64, keys: i64, share: i64) -> String {
    let mut text = String::new();
    for id in 0..keys {
        let h = (id as u64 ^ r.wrapping_mul(0x9e37_79b9_7f4a_7c15)).wrapping_mul(0xff51_afd7_ed55_8ccd) >> 40;
        let line = match model.get(&id) {
            None if r == 0 || h.is_multiple_of(13) => {
                model.insert(id, h as i64);
                json!({"_op": "c", "id": id, "amount": h})
            }
            Some(_) if h.is_multiple_of(17) => {
                model.remove(&id);
                json!({"_op": "d", "id": id})
            }
            Some(_) if (h % 100) < share as u64 => {
                model.insert(id, h as i64 + 1);
                json!({"_op": "u", "id": id, "amount": h + 1})
            }
            _ => continue,
        };
        writeln!(text, "{line}").unwrap();
    }
    text
}

fn table_rows(table: &Path) -> Vec<Value> {
    duck(&format!(
        "SELECT id, amount FROM {} ORDER BY id",
        scan(table.to_str().unwrap())
    ))
    .into_iter()
    .map(Value::Array)
    .collect()
}

fn model_rows(model: &Model) -> Vec<Value> {
    model.iter().map(|(id, a)| json!([id, a])).collect()
}

#[test]
fn maintain_purges_mostly_deleted_files_and_vacuum_keeps_live_dvs() {
    let dir = tempfile::tempdir().unwrap();
    let changes = dir.path().join("changes");
    std::fs::create_dir(&changes).unwrap();
    let p = pipeline(dir.path(), "");
    let table = dir.path().join("lake").join("accounts");
    let mut model = Model::new();
    for r in 0..5 {
        write_file(
            &changes,
            &format!("{r:04}.jsonl"),
            &round(&mut model, r, 5_000, 40),
        );
        run_once(dir.path(), &p);
        assert_eq!(table_rows(&table), model_rows(&model), "after round {r}");
    }
    let before = live_files(&table);
    let with_dv = before.iter().filter(|(_, d)| d.is_some()).count();
    assert!(with_dv > 0, "updates left deletion vectors: {before:?}");
    let version_before = local_version(&table).unwrap();

    let stdout = maintain_now(dir.path(), &p);
    assert!(!stdout.contains("(0 purged"), "files were purged:\n{stdout}");
    let after = live_files(&table);
    assert!(
        after.len() < before.len(),
        "fewer files: {} -> {}",
        before.len(),
        after.len()
    );
    // Files maintain wrote carry no deletion vector.
    let new: Vec<_> = after.difference(&before).collect();
    assert!(!new.is_empty());
    assert!(
        new.iter().all(|(_, d)| d.is_none()),
        "compacted files have no DV: {new:?}"
    );
    // VACUUM: every DV a live file references is there, and no other.
    let referenced: HashSet<String> = after
        .iter()
        .filter_map(|(_, d)| d.as_deref().map(dv_file))
        .collect();
    assert_eq!(
        dv_files_on_disk(&table),
        referenced,
        "DV files on disk = referenced ones"
    );
    assert!(local_version(&table).unwrap() > version_before);
    assert_eq!(table_rows(&table), model_rows(&model), "maintain changed results");
    let read = delta_rs(
        &[("t", table.to_str().unwrap())],
        "SELECT id, amount FROM t ORDER BY id",
    );
    assert_eq!(
        read.into_iter().map(Value::Array).collect::<Vec<_>>(),
        model_rows(&model),
        "Python deltalake after maintain"
    );

    // The key index follows the compaction (old files forgotten, new ones indexed).
    write_file(&changes, "0005.jsonl", &round(&mut model, 5, 5_000, 40));
    run_once(dir.path(), &p);
    assert_eq!(table_rows(&table), model_rows(&model), "a round after maintain");
}

#[test]
fn a_copy_on_write_mirror_that_opts_in_is_upgraded_once() {
    let dir = tempfile::tempdir().unwrap();
    let changes = dir.path().join("changes");
    std::fs::create_dir(&changes).unwrap();
    let table = dir.path().join("lake").join("accounts");
    let mut model = Model::new();
    let cow = pipeline(dir.path(), "merge = \"copy_on_write\"");
    for r in 0..2 {
        write_file(&changes, &format!("{r:04}.jsonl"), &round(&mut model, r, 500, 30));
        run_once(dir.path(), &cow);
    }
    let (protocol, dv_adds) = local_dv_usage(&table);
    assert_eq!(dv_adds, 0);
    assert!(protocol.is_some_and(|(r, _)| r < 3), "{protocol:?}");
    // Without a `merge` setting an existing table keeps its way.
    let default = write_file(
        dir.path(),
        "default.toml",
        &std::fs::read_to_string(&cow)
            .unwrap()
            .replace("merge = \"copy_on_write\"", ""),
    );
    write_file(&changes, "0002.jsonl", &round(&mut model, 2, 500, 30));
    run_once(dir.path(), &default);
    assert_eq!(
        local_dv_usage(&table).1,
        0,
        "the default keeps a copy-on-write table so"
    );
    assert_eq!(table_rows(&table), model_rows(&model));

    let dv = pipeline(dir.path(), "merge = \"deletion_vectors\"");
    let versions_before = local_version(&table).unwrap();
    write_file(&changes, "0003.jsonl", &round(&mut model, 3, 500, 30));
    run_once(dir.path(), &dv);
    let (protocol, dv_adds) = local_dv_usage(&table);
    assert_eq!(protocol, Some((3, 7)), "upgraded");
    assert!(dv_adds > 0, "merged by deletion vectors after the upgrade");
    // One upgrade commit (protocol + metadata, no files), then data commits only.
    let commit =
        |v: u64| std::fs::read_to_string(table.join("_delta_log").join(format!("{v:020}.json"))).unwrap();
    let upgrade = commit(versions_before + 1);
    assert!(
        upgrade.contains("\"protocol\"") && !upgrade.contains("\"add\""),
        "{upgrade}"
    );
    let protocol_changes = |from: u64| {
        (from..=local_version(&table).unwrap())
            .filter(|v| commit(*v).contains("\"protocol\""))
            .count()
    };
    assert!(
        local_version(&table).unwrap() > versions_before + 1,
        "the data was committed"
    );
    assert_eq!(protocol_changes(versions_before + 2), 0);
    assert_eq!(table_rows(&table), model_rows(&model));
    // And again: no second upgrade.
    let versions_before = local_version(&table).unwrap();
    write_file(&changes, "0004.jsonl", &round(&mut model, 4, 500, 30));
    run_once(dir.path(), &dv);
    assert!(local_version(&table).unwrap() > versions_before);
    assert_eq!(protocol_changes(versions_before + 1), 0, "no second upgrade");
    assert_eq!(table_rows(&table), model_rows(&model));
}
