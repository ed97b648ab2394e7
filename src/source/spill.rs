//! Rows of one source unit too large to hold in memory (a Postgres transaction of
//! millions of rows), kept in local Arrow IPC files until the tables have committed it.
//!
//! A source that must not split a unit across micro-batches, and must not hold it in
//! memory, writes the unit's rows here part by part as they arrive (each part one IPC
//! file of at most the source's spill threshold), then hands over ONE batch per stream
//! whose [`crate::source::SourceBatch::spilled`] names the parts. Tables read the parts
//! one at a time and commit them in one Delta transaction (see `sink::parts`), so a
//! unit is still never split across visible versions.
//!
//! Crash story: spill files are never the truth. The source has not acknowledged the
//! unit (Postgres keeps it in the slot until every table committed it), so after a
//! crash it is streamed again from the source; a source clears its spill folder when it
//! opens, and a [`Spilled`] removes its files when the last batch naming it is dropped.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use deltalake::arrow::array::{Array, AsArray, Int64Array, RecordBatch};
use deltalake::arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use deltalake::arrow::ipc::reader::FileReader;
use deltalake::arrow::ipc::writer::FileWriter;

/// The column that carries each row's position in a spill file.
const POSITION: &str = "__tributary_spill_position";

/// One spill file.
#[derive(Debug)]
struct Part {
    path: PathBuf,
    rows: usize,
    bytes: usize,
}

/// Parts of one stream's rows of one unit, being written.
#[derive(Debug)]
pub struct SpillWriter {
    dir: PathBuf,
    parts: Vec<Part>,
}

impl SpillWriter {
    /// A writer whose files go to `dir` (created; it must be this writer's alone).
    pub fn create(dir: PathBuf) -> std::io::Result<SpillWriter> {
        std::fs::create_dir_all(&dir)?;
        Ok(SpillWriter {
            dir,
            parts: Vec::new(),
        })
    }

    /// Writes `records` (with their `positions`) as the next part.
    pub fn write(&mut self, records: &RecordBatch, positions: &Int64Array) -> std::io::Result<()> {
        if records.num_rows() == 0 {
            return Ok(());
        }
        let path = self.dir.join(format!("{:06}.arrow", self.parts.len()));
        let mut fields: Vec<Arc<Field>> = records.schema().fields().iter().cloned().collect();
        fields.push(Arc::new(Field::new(POSITION, DataType::Int64, false)));
        let schema = Arc::new(Schema::new_with_metadata(
            fields,
            records.schema().metadata().clone(),
        ));
        let mut columns = records.columns().to_vec();
        columns.push(Arc::new(positions.clone()));
        let batch = RecordBatch::try_new(schema.clone(), columns).map_err(std::io::Error::other)?;
        let file = BufWriter::with_capacity(1 << 20, File::create(&path)?);
        let mut writer = FileWriter::try_new(file, &schema).map_err(std::io::Error::other)?;
        writer.write(&batch).map_err(std::io::Error::other)?;
        writer.finish().map_err(std::io::Error::other)?;
        // No fsync: after a crash the unit is read from the source again.
        writer
            .into_inner()
            .map_err(std::io::Error::other)?
            .into_inner()
            .map_err(|e| e.into_error())?;
        self.parts.push(Part {
            path,
            rows: records.num_rows(),
            bytes: batch.get_array_memory_size(),
        });
        Ok(())
    }

    /// Rows written so far.
    pub fn rows(&self) -> usize {
        self.parts.iter().map(|p| p.rows).sum()
    }

    /// The finished parts, readable until the returned value is dropped.
    pub fn finish(self, schema: SchemaRef) -> Arc<Spilled> {
        Arc::new(Spilled {
            dir: self.dir,
            parts: self.parts,
            schema,
        })
    }
}

/// The parts of one stream's rows of one unit. Dropping it removes the files.
#[derive(Debug)]
pub struct Spilled {
    dir: PathBuf,
    parts: Vec<Part>,
    /// The stream's schema when the unit ended (parts may be older layouts of it).
    schema: SchemaRef,
}

impl Spilled {
    pub fn parts(&self) -> usize {
        self.parts.len()
    }

    pub fn rows(&self) -> usize {
        self.parts.iter().map(|p| p.rows).sum()
    }

    /// Bytes of all parts once read (Arrow memory).
    pub fn bytes(&self) -> usize {
        self.parts.iter().map(|p| p.bytes).sum()
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Part `i`: its records and their positions.
    pub fn read(&self, i: usize) -> std::io::Result<(RecordBatch, Int64Array)> {
        let part = &self.parts[i];
        let file = BufReader::with_capacity(1 << 20, File::open(&part.path)?);
        let reader = FileReader::try_new(file, None).map_err(std::io::Error::other)?;
        let mut batches = Vec::new();
        for b in reader {
            batches.push(b.map_err(std::io::Error::other)?);
        }
        let [batch] = <[RecordBatch; 1]>::try_from(batches).map_err(|b| {
            std::io::Error::other(format!(
                "{}: {} batches in a spill part",
                part.path.display(),
                b.len()
            ))
        })?;
        let n = batch.num_columns() - 1;
        let positions = batch.column(n).as_primitive::<Int64Type>().clone();
        let schema = batch.schema();
        let fields: Vec<Arc<Field>> = schema.fields().iter().take(n).cloned().collect();
        let schema = Schema::new_with_metadata(fields, schema.metadata().clone());
        let records = RecordBatch::try_new(Arc::new(schema), batch.columns()[..n].to_vec())
            .map_err(std::io::Error::other)?;
        debug_assert_eq!(positions.null_count(), 0);
        Ok((records, positions))
    }
}

impl Drop for Spilled {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %self.dir.display(), error = %e, "could not remove spill files");
        }
    }
}

/// Removes what an earlier process left in `dir` (its units will be read again).
pub fn clear(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltalake::arrow::array::StringArray;

    #[test]
    fn parts_read_back_as_written_and_vanish_with_the_last_handle() {
        let dir = std::env::temp_dir().join(format!("tributary-spill-test-{}", std::process::id()));
        let mut w = SpillWriter::create(dir.join("unit")).unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Utf8, true)]));
        for k in 0..3 {
            let values: Vec<Option<String>> = (0..1000)
                .map(|i| (i % 7 != 0).then(|| format!("{k}-{i}")))
                .collect();
            let b = RecordBatch::try_new(schema.clone(), vec![Arc::new(StringArray::from(values))]).unwrap();
            w.write(&b, &Int64Array::from(vec![k as i64 * 10; 1000])).unwrap();
        }
        assert_eq!(w.rows(), 3000);
        let spilled = w.finish(schema.clone());
        assert_eq!((spilled.parts(), spilled.rows()), (3, 3000));
        let (records, positions) = spilled.read(2).unwrap();
        assert_eq!(records.schema(), schema);
        assert_eq!(records.column(0).as_string::<i32>().value(1), "2-1");
        assert!(records.column(0).is_null(7));
        assert!(positions.values().iter().all(|p| *p == 20));
        let held = spilled.clone();
        drop(spilled);
        assert!(dir.join("unit").exists());
        drop(held);
        assert!(!dir.join("unit").exists());
        clear(&dir).unwrap();
    }
}
