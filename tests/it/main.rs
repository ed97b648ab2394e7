//! The one integration-test binary: every test runs the real `tributary` binary against
//! the local stack (infra/up.sh) and checks the result with DuckDB.

// Test helpers panic on the unexpected by design: a panic is a failed test.
#![allow(clippy::unwrap_used)]

mod compaction;
mod crash;
mod deletion_vectors;
mod files;
mod incremental;
mod kafka;
mod kafka_json;
mod kafka_support;
mod large_transactions;
mod maintain;
mod mirror;
mod monitoring;
mod operations;
mod pg;
mod pipelined;
mod postgres;
mod postgres_tls;
mod quickstart;
mod readers;
mod registry;
mod scale_out;
mod sink;
mod support;
mod validate;
mod windows;
mod windows_sql;
