//! Sink throughput: `append` and `mirror` (MERGE into a 1M-row table) with 10k-row
//! batches, beside the rate at which the same batches become Parquet bytes (the
//! limit of any Delta writer). Run with `bench/sink.sh`; results go to BENCHMARKS.md.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use deltalake::arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use deltalake::arrow::datatypes::{DataType, Field, Schema};
use deltalake::parquet::arrow::ArrowWriter;
use tributary::config::TableMode;
use tributary::sink::{Commit, DeltaSink, Sink, TableOptions};

const TABLE_ROWS: i64 = 1_000_000;
const BATCH: i64 = 10_000;
const MERGES: i64 = 20;

/// xorshift: deterministic keys without a dependency.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Change rows: `_op`, `_position`, id, name, amount.
fn changes(ops: Vec<&str>, ids: Vec<i64>, first_position: i64) -> RecordBatch {
    let n = ids.len();
    let schema = Schema::new(vec![
        Field::new("_op", DataType::Utf8, false),
        Field::new("_position", DataType::Int64, false),
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, true),
        Field::new("amount", DataType::Int64, true),
    ]);
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(ops)),
        Arc::new(Int64Array::from_iter_values(
            first_position..first_position + n as i64,
        )),
        Arc::new(Int64Array::from_iter_values(ids.iter().copied())),
        Arc::new(StringArray::from_iter_values(
            ids.iter().map(|i| format!("customer-{i:08}")),
        )),
        Arc::new(Int64Array::from_iter_values(ids.iter().map(|i| i * 7 % 100_000))),
    ];
    RecordBatch::try_new(Arc::new(schema), columns).unwrap()
}

fn inserts(from: i64, n: i64) -> RecordBatch {
    changes(vec!["c"; n as usize], (from..from + n).collect(), from)
}

async fn sink(dir: &std::path::Path, name: &str, mode: TableMode) -> DeltaSink {
    let mut options = TableOptions::append(10);
    options.mode = mode;
    if mode == TableMode::Mirror {
        options.key = vec!["id".into()];
    }
    let url = url::Url::from_directory_path(dir.join(name)).unwrap();
    DeltaSink::open(name, url, Default::default(), "bench", &["s".into()], options)
        .await
        .unwrap()
}

fn commit(batch: RecordBatch, next: i64) -> Commit {
    Commit {
        batches: vec![batch],
        parts: None,
        progress: vec![("s".into(), next)],
        info: BTreeMap::new(),
        replace: false,
        staged: None,
    }
}

fn report(what: &str, rows: i64, secs: f64) {
    println!(
        "| {what} | {rows} | {secs:.2} | {:.0} |",
        rows as f64 / secs.max(1e-9)
    );
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let batches: Vec<RecordBatch> = (0..TABLE_ROWS / BATCH)
        .map(|b| inserts(b * BATCH, BATCH))
        .collect();
    println!("| operation | rows | seconds | rows/s |");
    println!("|---|---|---|---|");

    // The limit: the same batches encoded as Parquet (snappy, as the sink writes them).
    let started = Instant::now();
    let props = deltalake::parquet::file::properties::WriterProperties::builder()
        .set_compression(deltalake::parquet::basic::Compression::SNAPPY)
        .build();
    let mut bytes = 0;
    for b in &batches {
        let mut w = ArrowWriter::try_new(Vec::new(), b.schema(), Some(props.clone())).unwrap();
        w.write(b).unwrap();
        bytes += w.into_inner().unwrap().len();
    }
    report(
        "Parquet encode (limit), 10k-row batches",
        TABLE_ROWS,
        started.elapsed().as_secs_f64(),
    );
    eprintln!("parquet bytes: {bytes}");

    // append: one Delta commit per 10k-row batch.
    let mut append = sink(dir.path(), "append", TableMode::Append).await;
    let started = Instant::now();
    for (i, b) in batches.iter().enumerate() {
        append
            .commit(commit(b.clone(), (i as i64 + 1) * BATCH))
            .await
            .unwrap();
    }
    report(
        "append, 1 commit per 10k rows",
        TABLE_ROWS,
        started.elapsed().as_secs_f64(),
    );

    // mirror: load 1M rows (one commit), then MERGE 10k-change batches into it:
    // 80% updates and 10% deletes of random existing keys, 10% new keys.
    let mut mirror = sink(dir.path(), "mirror", TableMode::Mirror).await;
    let all: Vec<RecordBatch> = batches.clone();
    let schema = all[0].schema();
    let load = deltalake::arrow::compute::concat_batches(&schema, &all).unwrap();
    let started = Instant::now();
    mirror.commit(commit(load, TABLE_ROWS)).await.unwrap();
    report(
        "mirror initial load (1 commit)",
        TABLE_ROWS,
        started.elapsed().as_secs_f64(),
    );
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut next_new = TABLE_ROWS;
    let mut position = TABLE_ROWS;
    let mut merge_batches = Vec::new();
    for _ in 0..MERGES {
        let mut ops = Vec::with_capacity(BATCH as usize);
        let mut ids = Vec::with_capacity(BATCH as usize);
        for _ in 0..BATCH {
            match rng.below(10) {
                0 => {
                    ops.push("c");
                    ids.push(next_new);
                    next_new += 1;
                }
                1 => {
                    ops.push("d");
                    ids.push(rng.below(TABLE_ROWS as u64) as i64);
                }
                _ => {
                    ops.push("u");
                    ids.push(rng.below(TABLE_ROWS as u64) as i64);
                }
            }
        }
        merge_batches.push(changes(ops, ids, position));
        position += BATCH;
    }
    let started = Instant::now();
    let mut next = TABLE_ROWS;
    for b in merge_batches {
        next += BATCH;
        mirror.commit(commit(b, next)).await.unwrap();
    }
    report(
        "mirror MERGE into 1M rows, 1 commit per 10k changes",
        MERGES * BATCH,
        started.elapsed().as_secs_f64(),
    );
}
