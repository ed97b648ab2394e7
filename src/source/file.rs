//! A folder of JSON-lines or Avro container files: the replay source.
//!
//! Files are read in name order. A record's position is `(file ordinal << 32) | index
//! in file`, so the folder must only grow by files that sort after the ones already
//! read (timestamped names do); rewriting or removing a read file would shift
//! positions, and is detected where it can be (fewer files than the committed position).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deltalake::arrow::array::{Int64Array, RecordBatch};
use deltalake::arrow::datatypes::{Schema, SchemaRef};

use super::{Polled, RunMode, Source, SourceBatch, SourceError};
use crate::config::{FileConfig, FileFormat};
use crate::decode::{self, AvroFileDecoder, JsonLinesDecoder, RecordDecoder};
use crate::progress::Progress;
use crate::sink::dead_letter::{DeadLetters, ErrorKind};

const FILE_SHIFT: u32 = 32;

pub(super) struct FileSource {
    cfg: FileConfig,
    stream: Arc<str>,
    mode: RunMode,
    chunk_rows: usize,
    /// Files known so far, in name order.
    files: Vec<PathBuf>,
    /// In `--once` runs, the number of files that existed at start.
    once_limit: Option<usize>,
    /// Ordinal of the file being read (or to read next).
    file_idx: usize,
    /// Records of the current file to skip before yielding (resume inside a file).
    skip: u64,
    /// Index in the current file of the next record to yield.
    record_idx: u64,
    decoder: Option<Box<dyn RecordDecoder>>,
    /// Position to resume from after what has been yielded.
    pos_next: i64,
    /// The stream's schema: fixed by the first file so restarts agree.
    schema: Option<SchemaRef>,
    last_listing: tokio::time::Instant,
    /// Whether undecodable records become dead letters (else they stop the run).
    dead_letters: bool,
}

impl std::fmt::Debug for FileSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSource")
            .field("path", &self.cfg.path)
            .field("file_idx", &self.file_idx)
            .finish()
    }
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> SourceError {
    let context = context.into();
    move |source| SourceError::Io { context, source }
}

impl FileSource {
    pub(super) fn open(
        cfg: &FileConfig,
        resume: &Progress,
        mode: RunMode,
        chunk_rows: usize,
        dead_letters: bool,
    ) -> Result<Self, SourceError> {
        let files = list(&cfg.path, cfg.format)?;
        let pos_next = resume.get(&cfg.stream).unwrap_or(0);
        let (file_idx, skip) = match resume.get(&cfg.stream) {
            None => (0, 0),
            Some(p) => ((p >> FILE_SHIFT) as usize, (p & ((1 << FILE_SHIFT) - 1)) as u64),
        };
        if file_idx > files.len() {
            return Err(SourceError::Position(format!(
                "{}: the tables have read {} files of this folder but it now holds {}; \
                 files must not be removed or renamed once read",
                cfg.path.display(),
                file_idx,
                files.len()
            )));
        }
        Ok(Self {
            stream: Arc::from(cfg.stream.as_str()),
            mode,
            chunk_rows: chunk_rows.max(1),
            once_limit: (mode == RunMode::Once).then_some(files.len()),
            files,
            file_idx,
            skip,
            record_idx: 0,
            decoder: None,
            pos_next,
            schema: None,
            last_listing: tokio::time::Instant::now(),
            dead_letters,
            cfg: cfg.clone(),
        })
    }

    fn format_of(&self, path: &Path) -> FileFormat {
        self.cfg
            .format
            .unwrap_or_else(|| format_by_extension(path).unwrap_or(FileFormat::Jsonl))
    }

    /// The schema every file must match: the first file's.
    fn stream_schema(&mut self) -> Result<SchemaRef, SourceError> {
        if let Some(s) = &self.schema {
            return Ok(s.clone());
        }
        let first = self
            .files
            .first()
            .ok_or_else(|| SourceError::Position(format!("{}: no input files", self.cfg.path.display())))?;
        let schema = match self.format_of(first) {
            FileFormat::Jsonl => decode::infer_json_lines_schema(first)?,
            FileFormat::Avro => AvroFileDecoder::open(first, 1)?.schema(),
        };
        let schema = without_metadata(&schema);
        self.schema = Some(schema.clone());
        Ok(schema)
    }

    fn open_current(&mut self) -> Result<(), SourceError> {
        let schema = self.stream_schema()?;
        let path = self.files[self.file_idx].clone();
        let decoder: Box<dyn RecordDecoder> = match self.format_of(&path) {
            FileFormat::Jsonl => Box::new(JsonLinesDecoder::open(&path, schema.clone(), self.chunk_rows)?),
            FileFormat::Avro => {
                let d = AvroFileDecoder::open(&path, self.chunk_rows)?;
                if without_metadata(&d.schema()).fields() != schema.fields() {
                    return Err(SourceError::Position(format!(
                        "{}: its schema differs from the first file's ({}): {:?}",
                        path.display(),
                        self.files[0].display(),
                        d.schema().fields()
                    )));
                }
                Box::new(d)
            }
        };
        self.decoder = Some(decoder);
        self.record_idx = 0;
        Ok(())
    }

    /// End of a `--once` run over `limit` files: the end-of-input marker at the last
    /// index of the last file (so the next file still starts at index 0), unless it was
    /// already passed; then [`Polled::End`].
    fn end_marker(&mut self, limit: usize) -> Result<Polled, SourceError> {
        let Some(last) = limit.checked_sub(1) else {
            return Ok(Polled::End);
        };
        let marker = ((last as i64) << FILE_SHIFT) | ((1 << FILE_SHIFT) - 1);
        if marker < self.pos_next {
            return Ok(Polled::End);
        }
        let schema = self.stream_schema()?;
        self.pos_next = marker + 1;
        Ok(Polled::Batch(SourceBatch {
            stream: self.stream.clone(),
            shard: self.stream.clone(),
            records: RecordBatch::new_empty(schema),
            positions: Int64Array::from(Vec::<i64>::new()),
            next: self.pos_next,
            end_of_input: true,
            rejected: None,
            control: None,
            spilled: None,
            cursor: None,
        }))
    }

    fn refresh_listing(&mut self) -> Result<(), SourceError> {
        let now = list(&self.cfg.path, self.cfg.format)?;
        if now.len() < self.files.len() || now[..self.files.len()] != self.files[..] {
            return Err(SourceError::Position(format!(
                "{}: files already read were removed or renamed; positions would be wrong",
                self.cfg.path.display()
            )));
        }
        self.files = now;
        Ok(())
    }
}

#[async_trait]
impl Source for FileSource {
    fn shards(&self) -> Vec<String> {
        vec![self.cfg.stream.clone()]
    }

    fn schema(&self) -> Option<SchemaRef> {
        self.schema.clone()
    }

    async fn poll(&mut self) -> Result<Polled, SourceError> {
        loop {
            let limit = self.once_limit.unwrap_or(self.files.len());
            if self.decoder.is_none() {
                if self.file_idx >= limit {
                    if self.mode == RunMode::Once {
                        return self.end_marker(limit);
                    }
                    if tokio::time::Instant::now() < self.last_listing + self.cfg.poll_interval.0 {
                        // Idle in short steps so the runtime can flush and stop promptly.
                        tokio::time::sleep(Duration::from_millis(50).min(self.cfg.poll_interval.0)).await;
                        return Ok(Polled::Idle);
                    }
                    self.refresh_listing()?;
                    self.last_listing = tokio::time::Instant::now();
                    if self.file_idx >= self.files.len() {
                        return Ok(Polled::Idle);
                    }
                }
                self.open_current()?;
            }
            let decoder = self
                .decoder
                .as_mut()
                .ok_or_else(|| SourceError::Position("no open file".into()))?;
            let Some(chunk) = decoder.next_batch()? else {
                self.decoder = None;
                self.file_idx += 1;
                self.skip = 0;
                continue;
            };
            self.record_idx = chunk.first + chunk.consumed;
            let path = self.files[self.file_idx].display().to_string();
            if let Some(bad) = chunk.rejected.first()
                && !self.dead_letters
            {
                return Err(SourceError::Decode(decode::DecodeError::Malformed {
                    input: path,
                    message: format!(
                        "{} (configure [dead_letters] to set such records aside and go on)",
                        bad.message
                    ),
                }));
            }
            let base = (self.file_idx as i64) << FILE_SHIFT;
            // Resuming inside a file: records before `skip` are already committed.
            let skip = self.skip;
            self.skip = self.skip.saturating_sub(chunk.consumed);
            let indices: Vec<u64> = match chunk.rows {
                Some(rows) => rows,
                None => (chunk.first..chunk.first + chunk.batch.num_rows() as u64).collect(),
            };
            let keep_from = indices.partition_point(|&i| i < skip);
            let batch = chunk.batch.slice(keep_from, chunk.batch.num_rows() - keep_from);
            let positions =
                Int64Array::from_iter_values(indices[keep_from..].iter().map(|&i| base | i as i64));
            let mut rejected = DeadLetters::default();
            for r in chunk.rejected.iter().filter(|r| r.index >= skip) {
                rejected.push(
                    &self.cfg.stream,
                    base | r.index as i64,
                    ErrorKind::Decode,
                    &format!("{path}: {}", r.message),
                    None,
                    Some(&r.payload),
                );
            }
            if batch.num_rows() == 0 && rejected.is_empty() {
                continue;
            }
            let schema = self.stream_schema()?;
            let records = RecordBatch::try_new(schema, batch.columns().to_vec())
                .map_err(|e| SourceError::Position(format!("{path}: {e}")))?;
            self.pos_next = base | self.record_idx as i64;
            return Ok(Polled::Batch(SourceBatch {
                stream: self.stream.clone(),
                shard: self.stream.clone(),
                records,
                positions,
                next: self.pos_next,
                end_of_input: false,
                rejected: (!rejected.is_empty()).then(|| rejected.finish()),
                control: None,
                spilled: None,
                cursor: None,
            }));
        }
    }
}

fn format_by_extension(path: &Path) -> Option<FileFormat> {
    match path.extension()?.to_str()? {
        "jsonl" | "json" | "ndjson" => Some(FileFormat::Jsonl),
        "avro" => Some(FileFormat::Avro),
        _ => None,
    }
}

/// Data files of the folder in name order; hidden files and temporary names are skipped
/// so that a writer can create `.name.tmp` and rename it into place atomically.
fn list(dir: &Path, format: Option<FileFormat>) -> Result<Vec<PathBuf>, SourceError> {
    let entries =
        std::fs::read_dir(dir).map_err(io_err(format!("{}: cannot list the folder", dir.display())))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err(format!("{}: cannot list the folder", dir.display())))?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || name.starts_with('_') || !path.is_file() {
            continue;
        }
        let ext = format_by_extension(&path);
        if ext.is_some() && (format.is_none() || ext == format) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Avro readers attach their schema as metadata; tables want the plain columns.
fn without_metadata(schema: &SchemaRef) -> SchemaRef {
    let fields: Vec<_> = schema
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_metadata(Default::default()))
        .collect();
    Arc::new(Schema::new(fields))
}
