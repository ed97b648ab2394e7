//! A throwaway database on the local Postgres (infra/up.sh) per test, and `psql` to
//! read the truth from it. The guard drops the test's slots and database, so WAL is
//! never retained after a test.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::support::*;

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

pub struct Db {
    pub name: String,
    base: String,
    /// Slots this test's pipelines use (dropped with the database).
    pub slots: Vec<String>,
}

/// A name usable for databases, slots and publications.
pub fn ident(prefix: &str) -> String {
    unique(prefix).replace('-', "_")
}

impl Db {
    pub fn create(prefix: &str) -> Db {
        Db::create_on("TRIBUTARY_PG_DSN", prefix)
    }

    /// A database on the cluster whose DSN is in the stack variable `env`.
    pub fn create_on(env: &str, prefix: &str) -> Db {
        let base = stack_env(env);
        let name = ident(prefix);
        psql_at(&base, &format!("CREATE DATABASE {name}"));
        Db {
            name,
            base,
            slots: Vec::new(),
        }
    }

    /// The DSN of this database.
    pub fn dsn(&self) -> String {
        format!(
            "{} dbname={}",
            self.base.replace("dbname=postgres", ""),
            self.name
        )
    }

    /// Runs `sql`; returns each result row as its columns joined by `|`.
    pub fn sql(&self, sql: &str) -> Vec<String> {
        psql_at(&self.dsn(), sql)
    }

    /// A slot name for this test, dropped at the end.
    pub fn slot(&mut self) -> String {
        let s = ident("it");
        self.slots.push(s.clone());
        s
    }

    pub fn bin(tool: &str) -> PathBuf {
        Path::new(PG_BIN).join(tool)
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        for s in &self.slots {
            let _ = try_psql(
                &self.base,
                &format!(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '{s}'"
                ),
            );
        }
        let _ = try_psql(
            &self.base,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

fn try_psql(dsn: &str, sql: &str) -> Result<Vec<String>, String> {
    let out = Command::new(Db::bin("psql"))
        .args([
            "-X",
            "-q",
            "-At",
            "-F",
            "|",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            "SET intervalstyle = iso_8601",
            "-c",
            sql,
        ])
        .arg(dsn)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect())
}

fn psql_at(dsn: &str, sql: &str) -> Vec<String> {
    try_psql(dsn, sql).unwrap_or_else(|e| panic!("psql failed on {sql}: {e}"))
}

/// A pipeline file reading `tables` of `db` through `slot`, with `extra` appended.
pub fn pipeline(dir: &Path, db: &Db, slot: &str, tables: &[&str], extra: &str) -> PathBuf {
    pipeline_at(dir, &db.dsn(), slot, tables, extra)
}

/// [`pipeline`] with a DSN of its own (another user, other TLS settings).
pub fn pipeline_at(dir: &Path, dsn: &str, slot: &str, tables: &[&str], extra: &str) -> PathBuf {
    let list = tables
        .iter()
        .map(|t| format!("\"{t}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let text = format!(
        "name = \"{slot}\"\n\
         [source]\nkind = \"postgres\"\ndsn = \"{dsn}\"\npublication = \"pub_{slot}\"\nslot = \"{slot}\"\ntables = [{list}]\n\
         [sink]\nuri = \"./lake\"\n{extra}"
    );
    write_file(dir, "pipeline.toml", &text)
}

/// The position a Delta table holds for `app_id` (its last `txn` action), read from
/// the log files directly.
pub fn txn_version(table: &Path, app_id: &str) -> Option<i64> {
    let mut logs: Vec<PathBuf> = std::fs::read_dir(table.join("_delta_log"))
        .ok()?
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    logs.sort();
    let mut version = None;
    for log in logs {
        for line in std::fs::read_to_string(log).unwrap().lines() {
            let action: serde_json::Value = serde_json::from_str(line).unwrap();
            if action["txn"]["appId"] == app_id {
                version = action["txn"]["version"].as_i64();
            }
        }
    }
    version
}

/// `X/Y` as a number.
pub fn lsn(text: &str) -> i64 {
    let (hi, lo) = text.split_once('/').unwrap();
    (i64::from_str_radix(hi, 16).unwrap() << 32) | i64::from_str_radix(lo, 16).unwrap()
}
