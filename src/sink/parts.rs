//! Commits whose rows are too many to hold at once ([`Parts`]: a Postgres transaction
//! that spilled to disk), in ONE Delta transaction with memory bounded by a part.
//!
//! - **Append and changelog tables**: each part is encoded and uploaded as data files
//!   as it is read; the log entry that names them all (with the `txn` progress) is
//!   written once at the end.
//! - **Deletion-vector mirrors**: a mirror folds each key's changes to its last one,
//!   and a key's changes may lie in any part. So the parts are first split by key range
//!   into as many local bucket files as there are parts (every change of a key lands in
//!   one bucket, in order; the ranges are quantiles of a sample of the keys, so buckets
//!   are even whatever the keys' distribution); then each bucket is folded and staged
//!   like a micro-batch of its own ([`MergeOnRead::stage`]: new row images written,
//!   replaced rows noted), and one commit adds the files and the deletion vectors.
//!   Buckets go in key order, so the key index is walked once, not once per bucket. A
//!   truncate voids the buckets filled so far: what follows it is upserted on top of an
//!   empty table.
//!
//! Anything else (a copy-on-write mirror, a table the unit creates or widens, a
//! replace) reads every part into memory and commits as usual; the caller decides.
//!
//! Crash story: files written before the commit are named by nothing until the log
//! entry exists (orphans for VACUUM after a crash); bucket files are scratch, cleared
//! before and after use. The source re-sends the unit after a crash, since it was not
//! acknowledged, and the `txn` progress in the one commit says whether it landed.

use deltalake::arrow::array::{Array, RecordBatch, UInt32Array};
use deltalake::arrow::compute::{concat_batches, take_record_batch};
use deltalake::arrow::datatypes::SchemaRef;
use deltalake::arrow::ipc::reader::StreamReader;
use deltalake::arrow::ipc::writer::StreamWriter;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::parquet::file::properties::WriterProperties;
use deltalake::writer::{DeltaWriter as _, RecordBatchWriter};
use deltalake::{DeltaTable, DeltaTableError};
use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};

use super::change::{self, OP};
use super::merge_on_read::{MergeOnRead, MorReport, MorSpec, Staged};
use super::{Parts, SinkError, schema, types};

/// At most this many bucket files per commit.
const MAX_BUCKETS: usize = 256;
/// About this many keys are sampled to draw the buckets' ranges.
const SAMPLES: usize = 65_536;

/// `n - 1` keys that cut the sorted `samples` into `n` even ranges (fewer when the
/// sample has fewer distinct keys).
fn bounds(mut samples: Vec<Vec<u8>>, n: usize) -> Vec<Vec<u8>> {
    samples.sort_unstable();
    samples.dedup();
    let mut out: Vec<Vec<u8>> = (1..n)
        .filter_map(|j| samples.get(j * samples.len() / n).cloned())
        .collect();
    out.dedup();
    out
}

/// Part `i` of `parts` in Delta's types and `shape`; `None` when it has no rows.
fn read_part(
    table: &str,
    parts: &dyn Parts,
    i: usize,
    shape: &SchemaRef,
) -> Result<Option<RecordBatch>, SinkError> {
    let Some(part) = parts.read(i).map_err(|source| SinkError::Spill {
        table: table.to_string(),
        source,
    })?
    else {
        return Ok(None);
    };
    if part.num_rows() == 0 {
        return Ok(None);
    }
    let delta_err = |e: deltalake::arrow::error::ArrowError| SinkError::Delta {
        table: table.to_string(),
        source: e.into(),
    };
    let part = types::to_delta(part).map_err(delta_err)?;
    schema::conform(&part, shape).map(Some).map_err(delta_err)
}

/// How an append of parts writes.
#[derive(Debug)]
pub(super) struct AppendSpec<'a> {
    /// The table's schema: every part is conformed to it.
    pub shape: &'a SchemaRef,
    pub props: CommitProperties,
    pub writer: WriterProperties,
    pub target_file_size: u64,
}

/// Appends `first` and every part to `table` in one commit.
pub(super) async fn append(
    name: &str,
    table: DeltaTable,
    first: Option<RecordBatch>,
    parts: &dyn Parts,
    spec: AppendSpec<'_>,
) -> Result<DeltaTable, SinkError> {
    let AppendSpec {
        shape,
        props,
        writer,
        target_file_size,
    } = spec;
    let err = |source: DeltaTableError| SinkError::Delta {
        table: name.to_string(),
        source,
    };
    let mut adds = Vec::new();
    let mut rows = 0;
    for i in 0..=parts.count() {
        let part = match i {
            0 => first.clone(),
            _ => read_part(name, parts, i - 1, shape)?,
        };
        let Some(part) = part.filter(|p| p.num_rows() > 0) else {
            continue;
        };
        rows += part.num_rows();
        let mut w = RecordBatchWriter::for_table(&table)
            .map_err(err)?
            .with_writer_properties(writer.clone())
            .with_target_file_size(target_file_size);
        w.write(part).await.map_err(err)?;
        adds.extend(w.flush().await.map_err(err)?);
    }
    let table = super::staged::commit(name, table, adds, props).await?;
    tracing::debug!(
        table = name,
        rows,
        parts = parts.count(),
        "spilled rows appended in one commit"
    );
    Ok(table)
}

/// Merges `first` and every part into a deletion-vector mirror in one commit.
/// `None`: the parts are not all of one layout; the caller merges them in memory.
pub(super) async fn mirror(
    name: &str,
    table: DeltaTable,
    mor: &mut MergeOnRead,
    first: Option<RecordBatch>,
    parts: &dyn Parts,
    spec: MorSpec<'_>,
) -> Result<Option<(DeltaTable, MorReport)>, SinkError> {
    let err = |source: DeltaTableError| SinkError::Delta {
        table: name.to_string(),
        source,
    };
    let codec = mor.begin(&table, spec.key).await.map_err(err)?;
    let scratch = mor.scratch();
    // Part `i` with its change columns (the rows are folded before they are conformed).
    let read = |i: usize| -> Result<Option<RecordBatch>, SinkError> {
        let part = match i {
            0 => first.clone(),
            _ => parts
                .read(i - 1)
                .map_err(|e| spill_err(name, e))?
                .map(types::to_delta)
                .transpose()
                .map_err(|e| err(e.into()))?,
        };
        Ok(part.filter(|p| p.num_rows() > 0))
    };
    let result = async {
        let started = std::time::Instant::now();
        // A first pass samples the keys for the buckets' ranges.
        let per_part = (SAMPLES / (parts.count() + 1)).max(16);
        let mut samples: Vec<Vec<u8>> = Vec::new();
        for i in 0..=parts.count() {
            let Some(part) = read(i)? else { continue };
            let keys = codec.encode(&part).map_err(err)?;
            let stride = (keys.num_rows() / per_part).max(1);
            samples.extend(
                (0..keys.num_rows())
                    .step_by(stride)
                    .map(|r| keys.row(r).as_ref().to_vec()),
            );
        }
        let mut buckets = Buckets::new(
            scratch.clone(),
            bounds(samples, parts.count().clamp(1, MAX_BUCKETS)),
        );
        let mut staged = Staged::default();
        let mut shape: Option<SchemaRef> = None;
        for i in 0..=parts.count() {
            let Some(mut part) = read(i)? else { continue };
            match &shape {
                None => shape = Some(part.schema()),
                Some(s) if *s != part.schema() => return Ok(None),
                Some(_) => {}
            }
            let ops = change::string_column(&part, OP).map_err(|source| SinkError::Changes {
                table: name.to_string(),
                source,
            })?;
            if let Some(t) = (0..ops.len())
                .rev()
                .find(|&i| ops.is_valid(i) && ops.value(i) == "t")
            {
                // Everything before the truncate is void.
                buckets.clear().map_err(|e| spill_err(name, e))?;
                staged.truncated = true;
                part = part.slice(t + 1, part.num_rows() - t - 1);
            }
            let keys = codec.encode(&part).map_err(err)?;
            buckets.push(&part, &keys).map_err(|e| spill_err(name, e))?;
        }
        let split = started.elapsed();
        let filled = buckets.finish().map_err(|e| spill_err(name, e))?;
        let n = filled.len();
        for bucket in filled {
            let rows = bucket.read().map_err(|e| spill_err(name, e))?;
            let collapsed = change::collapse(&rows, spec.key).map_err(|source| SinkError::Changes {
                table: name.to_string(),
                source,
            })?;
            drop(rows);
            mor.stage(&table, &codec, collapsed, &spec, &mut staged)
                .await
                .map_err(err)?;
        }
        let staging = started.elapsed() - split;
        let (table, report) = mor.finish(table, &codec, staged, spec).await.map_err(err)?;
        tracing::info!(
            table = name,
            buckets = n,
            split_ms = split.as_millis() as u64,
            stage_ms = staging.as_millis() as u64,
            commit_ms = (started.elapsed() - split - staging).as_millis() as u64,
            "spilled changes merged in one commit"
        );
        Ok(Some((table, report)))
    }
    .await;
    if let Err(e) = std::fs::remove_dir_all(&scratch)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %scratch.display(), error = %e, "could not remove scratch files");
    }
    result
}

fn spill_err(table: &str, source: std::io::Error) -> SinkError {
    SinkError::Spill {
        table: table.to_string(),
        source,
    }
}

/// Local files that split rows by key range: bucket `b` holds the keys from
/// `bounds[b - 1]` (inclusive) to `bounds[b]` (exclusive).
struct Buckets {
    dir: PathBuf,
    bounds: Vec<Vec<u8>>,
    writers: Vec<Option<StreamWriter<BufWriter<File>>>>,
}

impl Buckets {
    fn new(dir: PathBuf, bounds: Vec<Vec<u8>>) -> Buckets {
        Buckets {
            dir,
            writers: (0..=bounds.len()).map(|_| None).collect(),
            bounds,
        }
    }

    fn path(dir: &Path, i: usize) -> PathBuf {
        dir.join(format!("{i:03}.arrows"))
    }

    /// Drops every row written so far.
    fn clear(&mut self) -> std::io::Result<()> {
        self.writers.iter_mut().for_each(|w| *w = None);
        match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Appends each row of `rows` to the bucket of its key (`keys`, row-aligned).
    fn push(&mut self, rows: &RecordBatch, keys: &deltalake::arrow::row::Rows) -> std::io::Result<()> {
        let n = self.writers.len();
        let mut picks: Vec<Vec<u32>> = vec![Vec::new(); n];
        for (i, key) in keys.iter().enumerate() {
            let key = key.as_ref();
            let b = self.bounds.partition_point(|bound| bound.as_slice() <= key);
            picks[b].push(i as u32);
        }
        for (b, rows_of) in picks.into_iter().enumerate() {
            if rows_of.is_empty() {
                continue;
            }
            let part = take_record_batch(rows, &UInt32Array::from(rows_of)).map_err(std::io::Error::other)?;
            let writer = match &mut self.writers[b] {
                Some(w) => w,
                slot => {
                    std::fs::create_dir_all(&self.dir)?;
                    let file = BufWriter::with_capacity(64 * 1024, File::create(Self::path(&self.dir, b))?);
                    slot.insert(StreamWriter::try_new(file, &rows.schema()).map_err(std::io::Error::other)?)
                }
            };
            writer.write(&part).map_err(std::io::Error::other)?;
        }
        Ok(())
    }

    /// The filled buckets, in order.
    fn finish(self) -> std::io::Result<Vec<Bucket>> {
        let mut out = Vec::new();
        for (i, w) in self.writers.into_iter().enumerate() {
            if let Some(mut w) = w {
                w.finish().map_err(std::io::Error::other)?;
                w.into_inner()
                    .map_err(std::io::Error::other)?
                    .into_inner()
                    .map_err(|e| e.into_error())?;
                out.push(Bucket {
                    path: Self::path(&self.dir, i),
                });
            }
        }
        Ok(out)
    }
}

struct Bucket {
    path: PathBuf,
}

impl Bucket {
    fn read(&self) -> std::io::Result<RecordBatch> {
        let file = BufReader::with_capacity(1 << 20, File::open(&self.path)?);
        let reader = StreamReader::try_new(file, None).map_err(std::io::Error::other)?;
        let schema = reader.schema();
        let batches = reader
            .collect::<Result<Vec<_>, _>>()
            .map_err(std::io::Error::other)?;
        let rows = concat_batches(&schema, &batches).map_err(std::io::Error::other)?;
        std::fs::remove_file(&self.path)?;
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use deltalake::arrow::array::{AsArray, Int64Array};
    use deltalake::arrow::datatypes::{DataType, Field, Int64Type, Schema};
    use deltalake::arrow::row::{RowConverter, SortField};

    #[test]
    fn every_change_of_a_key_lands_in_one_bucket_in_order() {
        let dir = std::env::temp_dir().join(format!("tributary-buckets-{}", std::process::id()));
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("seq", DataType::Int64, false),
        ]));
        let converter = RowConverter::new(vec![SortField::new(DataType::Int64)]).unwrap();
        let k = Int64Array::from_iter_values(0..37);
        let sample = converter.convert_columns(&[Arc::new(k)]).unwrap();
        let bounds = bounds(sample.iter().map(|r| r.as_ref().to_vec()).collect(), 4);
        assert_eq!(bounds.len(), 3);
        let mut buckets = Buckets::new(dir.clone(), bounds);
        let mut last_max = -1;
        for part in 0..3i64 {
            let k = Int64Array::from_iter_values((0..100).map(|i| i % 37));
            let seq = Int64Array::from_iter_values((0..100).map(|i| part * 100 + i));
            let batch =
                RecordBatch::try_new(schema.clone(), vec![Arc::new(k.clone()), Arc::new(seq)]).unwrap();
            let keys = converter.convert_columns(&[Arc::new(k)]).unwrap();
            buckets.push(&batch, &keys).unwrap();
        }
        let mut seen = std::collections::HashMap::<i64, (usize, i64)>::new();
        let mut total = 0;
        for (b, bucket) in buckets.finish().unwrap().into_iter().enumerate() {
            let rows = bucket.read().unwrap();
            total += rows.num_rows();
            let k = rows.column(0).as_primitive::<Int64Type>();
            let seq = rows.column(1).as_primitive::<Int64Type>();
            // Buckets are key ranges, in key order, about even.
            let (lo, hi) = (k.values().iter().min().unwrap(), k.values().iter().max().unwrap());
            assert!(*lo > last_max, "bucket {b} overlaps the one before");
            last_max = *hi;
            assert!((6..=12).contains(&(hi - lo + 1)), "bucket {b}: keys {lo}..={hi}");
            for i in 0..rows.num_rows() {
                let e = seen.entry(k.value(i)).or_insert((b, -1));
                assert_eq!(e.0, b, "key {} in two buckets", k.value(i));
                assert!(seq.value(i) > e.1, "key {} out of order", k.value(i));
                e.1 = seq.value(i);
            }
            assert!(k.null_count() == 0);
        }
        assert_eq!((total, seen.len()), (300, 37));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
