//! Reading a table's data files directly (key columns for the key index, replaced rows'
//! unsent values, live rows when purging deletion vectors).

// arrow-rs deprecates its object-store reader in favour of hand-written ones;
// deltalake's own scans still read through it, and so do we, in this one place.
#![allow(deprecated)]

use std::sync::Arc;

use deltalake::parquet::arrow::async_reader::{ParquetObjectReader, ParquetRecordBatchStreamBuilder};
use deltalake::{DeltaTableError, ObjectStore, Path};

/// A Parquet reader over the data file `path` (as an `add` names it, relative to the
/// table root) of `size` bytes.
pub async fn open(
    store: Arc<dyn ObjectStore>,
    path: &str,
    size: i64,
) -> Result<ParquetRecordBatchStreamBuilder<ParquetObjectReader>, DeltaTableError> {
    let location = Path::parse(path).unwrap_or_else(|_| Path::from(path));
    let reader = ParquetObjectReader::new(store, location).with_file_size(size.max(0) as u64);
    Ok(ParquetRecordBatchStreamBuilder::new(reader).await?)
}
