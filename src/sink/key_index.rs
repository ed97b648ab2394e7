//! The key index of a deletion-vector mirror: for each key, where its row was last
//! written (file, row index), so that a change finds the row it replaces without
//! reading the table.
//!
//! It is a *cache of the table*, never a source of truth, kept in an embedded on-disk
//! B-tree (redb) on local disk, whose page cache is the only memory it holds (sized
//! from `[runtime] memory`). So a 50M-row mirror costs its keys' bytes on disk, not in
//! memory.
//!
//! # What it holds, and why it is always safe to use
//!
//! - `files`: the live data files whose live rows have been indexed (id → path), ids
//!   never reused. A file is marked indexed in the same redb transaction as the last of
//!   its keys, so a file is either known and fully indexed, or unknown.
//! - `keys`: row-encoded key → (file id, row index) of the last row indexed for it.
//! - `meta`: the table's identity (metadata id), the key encoding, and the table version
//!   the index was last brought to.
//!
//! An entry is only a *candidate*: followed through the redirects of compaction
//! rounds (below) to a known file, the merge uses it when that file is live in the
//! snapshot being written against and its row is not in the file's deletion vector.
//! Otherwise the key has no live row (deleted, or its file compacted away and indexed
//! under the new file). Since a mirror has at most one live row per key, a live
//! candidate is *the* row.
//!
//! [`KeyIndex::sync`] brings the index to a snapshot: known files no longer live are
//! forgotten, and every live file not yet known has its live rows read (key columns
//! only) and indexed. This needs no log replay, so it does not matter how the table got
//! there — our own commits, `maintain` compaction, a restore, a crash between a commit
//! and its indexing, an index copied from elsewhere, or none at all (a new machine
//! rebuilds it by indexing every live file).
//!
//! # Crash story
//!
//! The index is only ever written from committed snapshots, so it is never ahead of
//! the table. A crash mid-sync leaves files half-indexed but unmarked: they are indexed
//! again (upserts of the same positions). A lost, corrupt or foreign index file
//! (another table id or key encoding, or a version beyond the table's) is deleted and
//! rebuilt. Nothing here can make a commit wrong; at worst it makes the next one slow.
//!
//! After a compaction round of a running mirror, the round's new file is not read:
//! the index redirects its inputs' rows into it ([`super::moved`]), and a lookup
//! follows the redirects to the live file.
//!
//! Writes are not flushed to disk one by one: every [`DURABLE_EVERY`]th sync, a sync
//! that brings the rows indexed since the last flush to [`DURABLE_ROWS`], and the
//! index's drop commit durably. redb keeps its file consistent either way, so a crash
//! takes the index back to its last durable commit, an older state of this same cache,
//! which the next sync catches up like any other. (A flush per write cost every mirror
//! commit two fsyncs, and after a compaction of a 50M-row mirror, a flush of every page
//! the re-indexed keys touched.)

use std::collections::HashMap;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use deltalake::arrow::array::{ArrayRef, RecordBatch};
use deltalake::arrow::compute::cast;
use deltalake::arrow::datatypes::FieldRef;
use deltalake::arrow::row::{RowConverter, Rows, SortField};
use deltalake::parquet::arrow::ProjectionMask;
use deltalake::{DeltaTable, DeltaTableError, ObjectStore};
use futures::TryStreamExt as _;
use redb::{Database, Durability, ReadableDatabase as _, ReadableTable as _, TableDefinition};
use roaring::RoaringTreemap;

use super::moved::{self, MAX_REDIRECTS, Moved, Moves, Redirect};
use super::{data_file, dv};

const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");
const KEYS: TableDefinition<'_, &[u8], (u32, u64)> = TableDefinition::new("keys");
const FILES: TableDefinition<'_, u32, &str> = TableDefinition::new("files");
/// Old file id → where its rows went (see [`super::moved`]).
const REDIRECTS: TableDefinition<'_, u32, &[u8]> = TableDefinition::new("redirects");
/// Bump when what the index stores changes meaning.
const LAYOUT: &str = "tributary-key-index-1";
/// Rows read from a data file per step while indexing it.
const READ_BATCH_ROWS: usize = 65_536;

fn err(dir: &FsPath, e: impl std::fmt::Display) -> DeltaTableError {
    DeltaTableError::Generic(format!("key index {}: {e}", dir.display()))
}

/// How keys of this table become index keys: the arrow row encoding of the key
/// columns, in the table's types.
#[derive(Debug, Clone)]
pub struct KeyCodec {
    fields: Vec<FieldRef>,
    converter: Arc<RowConverter>,
    /// Identifies the encoding, so an index written with another is rebuilt.
    tag: String,
}

impl KeyCodec {
    pub fn new(fields: Vec<FieldRef>) -> Result<Self, DeltaTableError> {
        let converter = RowConverter::new(
            fields
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect(),
        )?;
        let tag = fields
            .iter()
            .map(|f| format!("{}:{}", f.name(), f.data_type()))
            .collect::<Vec<_>>()
            .join(",");
        Ok(Self {
            fields,
            converter: Arc::new(converter),
            tag: format!("{LAYOUT};{tag}"),
        })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.fields.iter().map(|f| f.name().as_str())
    }

    /// The key rows of `batch` (which must hold the key columns, in any castable type).
    pub fn encode(&self, batch: &RecordBatch) -> Result<Rows, DeltaTableError> {
        let columns = self
            .fields
            .iter()
            .map(|f| {
                let c = batch
                    .column_by_name(f.name())
                    .ok_or_else(|| DeltaTableError::Generic(format!("key column {} is missing", f.name())))?;
                Ok(if c.data_type() == f.data_type() {
                    c.clone()
                } else {
                    cast(c, f.data_type())?
                })
            })
            .collect::<Result<Vec<ArrayRef>, DeltaTableError>>()?;
        Ok(self.converter.convert_columns(&columns)?)
    }
}

/// A live data file as the snapshot has it.
#[derive(Debug, Clone)]
pub struct LiveFile {
    pub path: String,
    pub size: u64,
    pub dv: Option<deltalake::kernel::DeletionVectorDescriptor>,
    /// Physical rows, from the file's statistics.
    pub rows: Option<u64>,
}

/// Where a key's row was last written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowPos {
    pub file: u32,
    pub row: u64,
}

/// A table's key index on local disk.
pub struct KeyIndex {
    dir: PathBuf,
    db: Database,
    /// Known (fully indexed, live at the last sync) files.
    files: HashMap<u32, String>,
    ids: HashMap<String, u32>,
    /// Files rewritten by compaction rounds, by id: where their rows went.
    redirects: HashMap<u32, Redirect>,
    /// Where the table's compaction rounds hand over their moves.
    moves: Option<Arc<Moves>>,
    /// Redirects kept before they are collapsed (see [`super::moved`]).
    max_redirects: usize,
    next_id: u32,
    /// Syncs and rows indexed since the last durable commit.
    syncs: u32,
    rows: u64,
}

/// Every this many syncs, the index is committed durably (see the module docs).
pub const DURABLE_EVERY: u32 = 32;
/// ... and once it has indexed this many rows since the last durable commit, so that
/// what a crash takes back (and the next sync reads again) stays bounded.
pub const DURABLE_ROWS: u64 = 1_000_000;

impl Drop for KeyIndex {
    fn drop(&mut self) {
        // An empty durable commit persists the ones before it.
        if let Ok(w) = self.db.begin_write() {
            let _ = w.commit();
        }
    }
}

impl std::fmt::Debug for KeyIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyIndex")
            .field("dir", &self.dir)
            .field("files", &self.files.len())
            .finish()
    }
}

/// What a sync did.
#[derive(Debug, Default, Clone, Copy)]
pub struct SyncReport {
    pub rebuilt: bool,
    pub files_indexed: usize,
    pub rows_indexed: u64,
    pub files_forgotten: usize,
    /// New files known through the moves of compaction rounds, without reading them.
    pub files_redirected: usize,
}

impl KeyIndex {
    /// Opens (or creates) the index in `dir`; an unreadable index file is replaced.
    /// The index's folder (its own, under the cache directory).
    pub fn dir(&self) -> &FsPath {
        &self.dir
    }

    pub fn open(dir: &FsPath, cache_bytes: usize) -> Result<Self, DeltaTableError> {
        std::fs::create_dir_all(dir).map_err(|e| err(dir, e))?;
        let file = dir.join("keys.redb");
        let db = match Self::open_db(&file, cache_bytes) {
            Ok(db) => db,
            Err(e) => {
                tracing::warn!(index = %file.display(), error = %e, "key index unreadable: rebuilding it");
                let _ = std::fs::remove_file(&file);
                Self::open_db(&file, cache_bytes).map_err(|e| err(dir, e))?
            }
        };
        let mut index = Self {
            dir: dir.to_path_buf(),
            db,
            files: HashMap::new(),
            ids: HashMap::new(),
            redirects: HashMap::new(),
            moves: None,
            max_redirects: MAX_REDIRECTS,
            next_id: 0,
            syncs: 0,
            rows: 0,
        };
        index.load_files()?;
        Ok(index)
    }

    fn open_db(file: &FsPath, cache_bytes: usize) -> Result<Database, redb::Error> {
        let db = Database::builder().set_cache_size(cache_bytes).create(file)?;
        // Make sure the tables exist, so readers never see "no such table".
        let w = db.begin_write()?;
        w.open_table(META)?;
        w.open_table(KEYS)?;
        w.open_table(FILES)?;
        w.open_table(REDIRECTS)?;
        w.commit()?;
        Ok(db)
    }

    fn load_files(&mut self) -> Result<(), DeltaTableError> {
        let dir = self.dir.clone();
        let r = self.db.begin_read().map_err(|e| err(&dir, e))?;
        let files = r.open_table(FILES).map_err(|e| err(&dir, e))?;
        self.files.clear();
        self.ids.clear();
        for entry in files.iter().map_err(|e| err(&dir, e))? {
            let (id, path) = entry.map_err(|e| err(&dir, e))?;
            self.files.insert(id.value(), path.value().to_string());
            self.ids.insert(path.value().to_string(), id.value());
        }
        let redirects = r.open_table(REDIRECTS).map_err(|e| err(&dir, e))?;
        self.redirects.clear();
        for entry in redirects.iter().map_err(|e| err(&dir, e))? {
            let (id, bytes) = entry.map_err(|e| err(&dir, e))?;
            self.redirects
                .insert(id.value(), Redirect::decode(bytes.value())?);
        }
        let meta = r.open_table(META).map_err(|e| err(&dir, e))?;
        self.next_id = match meta.get("next_id").map_err(|e| err(&dir, e))? {
            Some(v) => v.value().try_into().map(u32::from_le_bytes).unwrap_or(0),
            None => 0,
        };
        Ok(())
    }

    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, DeltaTableError> {
        let r = self.db.begin_read().map_err(|e| err(&self.dir, e))?;
        let meta = r.open_table(META).map_err(|e| err(&self.dir, e))?;
        Ok(meta
            .get(key)
            .map_err(|e| err(&self.dir, e))?
            .map(|v| v.value().to_vec()))
    }

    /// The table version the index was last brought to.
    pub fn version(&self) -> Result<Option<u64>, DeltaTableError> {
        Ok(self
            .meta("version")?
            .and_then(|v| v.try_into().ok())
            .map(u64::from_le_bytes))
    }

    /// A write transaction, durable only when `durable`.
    fn write(&self, durable: bool) -> Result<redb::WriteTransaction, DeltaTableError> {
        let mut w = self.db.begin_write().map_err(|e| err(&self.dir, e))?;
        if !durable {
            w.set_durability(Durability::None)
                .map_err(|e| err(&self.dir, e))?;
        }
        Ok(w)
    }

    /// Empties the index and records whose it now is.
    fn reset(&mut self, identity: &str) -> Result<(), DeltaTableError> {
        let w = self.db.begin_write().map_err(|e| err(&self.dir, e))?;
        w.delete_table(KEYS).map_err(|e| err(&self.dir, e))?;
        w.delete_table(FILES).map_err(|e| err(&self.dir, e))?;
        w.delete_table(REDIRECTS).map_err(|e| err(&self.dir, e))?;
        w.delete_table(META).map_err(|e| err(&self.dir, e))?;
        {
            w.open_table(KEYS).map_err(|e| err(&self.dir, e))?;
            w.open_table(FILES).map_err(|e| err(&self.dir, e))?;
            w.open_table(REDIRECTS).map_err(|e| err(&self.dir, e))?;
            let mut meta = w.open_table(META).map_err(|e| err(&self.dir, e))?;
            meta.insert("identity", identity.as_bytes())
                .map_err(|e| err(&self.dir, e))?;
        }
        w.commit().map_err(|e| err(&self.dir, e))?;
        self.files.clear();
        self.ids.clear();
        self.redirects.clear();
        self.next_id = 0;
        Ok(())
    }

    /// Takes the moves of the table's compaction rounds from `moves` at each sync.
    pub fn follow(&mut self, moves: Arc<Moves>) {
        self.moves = Some(moves);
    }

    /// Sets how many redirects are kept before they are collapsed (default
    /// [`MAX_REDIRECTS`]).
    pub fn with_max_redirects(mut self, n: usize) -> Self {
        self.max_redirects = n;
        self
    }

    /// Rewritten files whose rows the index finds through redirects.
    pub fn redirects(&self) -> usize {
        self.redirects.len()
    }

    /// Where the row at `pos` is now: `pos` in a known file, or the position the
    /// redirects from a rewritten file lead to (`None` when they lead nowhere known, or
    /// the row was dropped when its file was rewritten).
    fn resolve(&self, pos: RowPos) -> Option<RowPos> {
        let RowPos { mut file, mut row } = pos;
        loop {
            if self.files.contains_key(&file) {
                return Some(RowPos { file, row });
            }
            let r = self.redirects.get(&file)?;
            // Ids grow, so a chain ends (a damaged one is not followed).
            if r.to <= file {
                return None;
            }
            row = r.row(row)?;
            file = r.to;
        }
    }

    /// The known file the redirects from `id` end in.
    fn chain_end(&self, mut id: u32) -> Option<u32> {
        loop {
            if self.files.contains_key(&id) {
                return Some(id);
            }
            let r = self.redirects.get(&id)?;
            if r.to <= id {
                return None;
            }
            id = r.to;
        }
    }

    /// Makes the new file of a round known through redirects from its inputs; false
    /// when the move cannot be used (the file is then read like any other).
    fn apply(&mut self, moved: &Moved, live: &HashMap<&str, &LiveFile>) -> Result<bool, DeltaTableError> {
        if self.ids.contains_key(&moved.into) {
            return Ok(false);
        }
        let Some(ids) = moved
            .from
            .iter()
            .map(|f| self.ids.get(&f.path).copied())
            .collect::<Option<Vec<u32>>>()
        else {
            return Ok(false);
        };
        if let Some(now) = live.get(moved.into.as_str())
            && now.rows != Some(moved.rows)
        {
            return Ok(false);
        }
        let to = self.next_id;
        let Some(redirects) = moved::redirects(moved, to, &ids) else {
            return Ok(false);
        };
        let w = self.write(false)?;
        {
            let mut table = w.open_table(REDIRECTS).map_err(|e| err(&self.dir, e))?;
            for (id, r) in &redirects {
                table
                    .insert(id, r.encode().as_slice())
                    .map_err(|e| err(&self.dir, e))?;
            }
            self.mark_known(&w, to, &moved.into)?;
        }
        w.commit().map_err(|e| err(&self.dir, e))?;
        self.redirects.extend(redirects);
        self.learn(to, &moved.into);
        Ok(true)
    }

    /// Records in `w` that file `id` at `path` is known (its keys are indexed or
    /// redirected) and that ids up to it are taken; [`Self::learn`] follows the commit.
    fn mark_known(&self, w: &redb::WriteTransaction, id: u32, path: &str) -> Result<(), DeltaTableError> {
        let mut files = w.open_table(FILES).map_err(|e| err(&self.dir, e))?;
        files.insert(id, path).map_err(|e| err(&self.dir, e))?;
        let mut meta = w.open_table(META).map_err(|e| err(&self.dir, e))?;
        meta.insert("next_id", (id + 1).to_le_bytes().as_slice())
            .map_err(|e| err(&self.dir, e))?;
        Ok(())
    }

    /// What [`Self::mark_known`] recorded, once committed.
    fn learn(&mut self, id: u32, path: &str) {
        self.files.insert(id, path.to_string());
        self.ids.insert(path.to_string(), id);
        self.next_id = id + 1;
    }

    /// Forgets known files (no longer live, or about to be indexed again) and the
    /// redirects that then lead nowhere.
    fn forget(&mut self, gone: &[u32]) -> Result<(), DeltaTableError> {
        for id in gone {
            if let Some(p) = self.files.remove(id) {
                self.ids.remove(&p);
            }
        }
        let dead: Vec<u32> = self
            .redirects
            .keys()
            .copied()
            .filter(|id| self.chain_end(*id).is_none())
            .collect();
        let w = self.write(false)?;
        {
            let mut files = w.open_table(FILES).map_err(|e| err(&self.dir, e))?;
            for id in gone {
                files.remove(id).map_err(|e| err(&self.dir, e))?;
            }
            let mut redirects = w.open_table(REDIRECTS).map_err(|e| err(&self.dir, e))?;
            for id in &dead {
                redirects.remove(id).map_err(|e| err(&self.dir, e))?;
            }
        }
        w.commit().map_err(|e| err(&self.dir, e))?;
        for id in &dead {
            self.redirects.remove(id);
        }
        Ok(())
    }

    /// Past `max_redirects`, indexes live files that redirects lead into until they
    /// are back under it (their live rows get direct entries, their redirects go);
    /// returns the rows indexed. The files read first are those with the fewest rows per
    /// redirect they remove: a snapshot's compacted files, millions of rows each, would
    /// stall a commit for minutes, and are left to their redirects.
    async fn collapse_redirects(
        &mut self,
        store: &Arc<dyn ObjectStore>,
        live: &HashMap<&str, &LiveFile>,
        codec: &KeyCodec,
    ) -> Result<u64, DeltaTableError> {
        let mut indexed = 0;
        while self.redirects.len() > self.max_redirects {
            let mut into: HashMap<u32, u64> = HashMap::new();
            for id in self.redirects.keys() {
                if let Some(end) = self.chain_end(*id) {
                    *into.entry(end).or_default() += 1;
                }
            }
            let cheapest = into
                .into_iter()
                .filter_map(|(id, n)| {
                    let file = self.files.get(&id).and_then(|p| live.get(p.as_str()))?;
                    Some((file.rows.unwrap_or(u64::MAX / 2), n, id, (*file).clone()))
                })
                // rows / n ascending, compared without dividing.
                .min_by(|a, b| {
                    (u128::from(a.0) * u128::from(b.1))
                        .cmp(&(u128::from(b.0) * u128::from(a.1)))
                        .then(a.2.cmp(&b.2))
                });
            let Some((_, _, target, file)) = cheapest else {
                break;
            };
            self.forget(&[target])?;
            indexed += self.index_file(store, &file, codec).await?;
        }
        Ok(indexed)
    }

    /// Whether `path` is a live file the index has indexed (as of the last sync).
    pub fn knows(&self, path: &str) -> bool {
        self.ids.contains_key(path)
    }

    /// The path of a known file.
    pub fn path_of(&self, id: u32) -> Option<&str> {
        self.files.get(&id).map(String::as_str)
    }

    /// Candidate positions of `keys` (see the module docs for when one is live).
    pub fn lookup(&self, keys: &Rows) -> Result<Vec<Option<RowPos>>, DeltaTableError> {
        let r = self.db.begin_read().map_err(|e| err(&self.dir, e))?;
        let table = r.open_table(KEYS).map_err(|e| err(&self.dir, e))?;
        let mut out = vec![None; keys.num_rows()];
        // Keys outside the indexed range cannot be there (keys that grow, as serial
        // ids and snapshots in key order, never reach the tree), and the rest are
        // looked up in key order so neighbouring B-tree pages are read once.
        let (Some(first), Some(last)) = (
            table.first().map_err(|e| err(&self.dir, e))?,
            table.last().map_err(|e| err(&self.dir, e))?,
        ) else {
            return Ok(out);
        };
        let (lo, hi) = (first.0.value().to_vec(), last.0.value().to_vec());
        let mut order: Vec<usize> = (0..keys.num_rows())
            .filter(|&i| {
                let k = keys.row(i).data();
                k >= lo.as_slice() && k <= hi.as_slice()
            })
            .collect();
        order.sort_unstable_by(|&a, &b| keys.row(a).cmp(&keys.row(b)));
        for i in order {
            if let Some(v) = table.get(keys.row(i).data()).map_err(|e| err(&self.dir, e))? {
                let (file, row) = v.value();
                out[i] = self.resolve(RowPos { file, row });
            }
        }
        Ok(out)
    }

    /// Brings the index to `table`'s loaded snapshot (see the module docs).
    pub async fn sync(
        &mut self,
        table: &DeltaTable,
        codec: &KeyCodec,
    ) -> Result<SyncReport, DeltaTableError> {
        let mut report = SyncReport::default();
        let Some(version) = table.version() else {
            return Ok(report);
        };
        let snapshot = table.snapshot()?;
        let identity = format!("{};{}", snapshot.metadata().id(), codec.tag);
        let theirs = self.meta("identity")?;
        let ahead = self.version()?.is_some_and(|v| v > version);
        if theirs.as_deref() != Some(identity.as_bytes()) || ahead {
            if theirs.is_some() {
                tracing::info!(index = %self.dir.display(), ahead, "key index belongs to another table state: rebuilding it");
            }
            self.reset(&identity)?;
            report.rebuilt = true;
        }
        let live: Vec<LiveFile> = snapshot
            .log_data()
            .iter()
            .map(|f| LiveFile {
                path: f.path().to_string(),
                size: f.size().max(0) as u64,
                dv: f.deletion_vector_descriptor(),
                rows: f.num_records().map(|n| n as u64),
            })
            .collect();
        let live_paths: HashMap<&str, &LiveFile> = live.iter().map(|f| (f.path.as_str(), f)).collect();
        // Files the table's compaction rounds wrote are known from their inputs'.
        if let Some(moves) = self.moves.clone() {
            for moved in moves.take() {
                if self.apply(&moved, &live_paths)? {
                    report.files_redirected += 1;
                }
            }
        }
        let gone: Vec<u32> = self
            .files
            .iter()
            .filter(|(_, p)| !live_paths.contains_key(p.as_str()))
            .map(|(id, _)| *id)
            .collect();
        if !gone.is_empty() {
            self.forget(&gone)?;
            report.files_forgotten = gone.len();
        }
        let store = table.log_store().object_store(None);
        let new: Vec<&LiveFile> = live.iter().filter(|f| !self.ids.contains_key(&f.path)).collect();
        for file in new {
            report.rows_indexed += self.index_file(&store, file, codec).await?;
            report.files_indexed += 1;
        }
        report.rows_indexed += self.collapse_redirects(&store, &live_paths, codec).await?;
        self.syncs += 1;
        self.rows += report.rows_indexed;
        let durable = self.syncs >= DURABLE_EVERY || self.rows >= DURABLE_ROWS;
        let w = self.write(durable)?;
        {
            let mut meta = w.open_table(META).map_err(|e| err(&self.dir, e))?;
            meta.insert("version", version.to_le_bytes().as_slice())
                .map_err(|e| err(&self.dir, e))?;
        }
        w.commit().map_err(|e| err(&self.dir, e))?;
        if durable {
            self.syncs = 0;
            self.rows = 0;
        }
        if report.files_indexed + report.files_redirected + report.files_forgotten > 0 {
            tracing::debug!(
                version,
                ?report,
                redirects = self.redirects.len(),
                "key index synced"
            );
        }
        Ok(report)
    }

    /// Indexes the live rows of one data file; returns how many.
    async fn index_file(
        &mut self,
        store: &Arc<dyn ObjectStore>,
        file: &LiveFile,
        codec: &KeyCodec,
    ) -> Result<u64, DeltaTableError> {
        let deleted = match &file.dv {
            Some(d) => dv::read(store.as_ref(), d).await?,
            None => RoaringTreemap::new(),
        };
        let builder = data_file::open(store.clone(), &file.path, file.size as i64).await?;
        let roots: Vec<usize> = codec
            .names()
            .map(|n| {
                builder.schema().index_of(n).map_err(|_| {
                    DeltaTableError::Generic(format!("data file {} has no key column {n}", file.path))
                })
            })
            .collect::<Result<_, _>>()?;
        let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
        let mut stream = builder
            .with_projection(mask)
            .with_batch_size(READ_BATCH_ROWS)
            .build()?;
        let id = self.next_id;
        let mut row = 0u64;
        let mut indexed = 0u64;
        let mut pending: Option<Rows> = None;
        let mut pending_start = 0u64;
        // Write each chunk once the next has been read, so the last chunk's
        // transaction also marks the file as indexed.
        loop {
            let next = stream.try_next().await?;
            if let Some(rows) = pending.take() {
                indexed +=
                    self.write_chunk(id, pending_start, &rows, &deleted, next.is_none().then_some(file))?;
            }
            let Some(batch) = next else { break };
            pending_start = row;
            row += batch.num_rows() as u64;
            pending = Some(codec.encode(&batch)?);
        }
        if row == 0 {
            self.write_chunk(id, 0, &codec.converter.empty_rows(0, 0), &deleted, Some(file))?;
        }
        Ok(indexed)
    }

    /// Upserts one chunk of a file's keys; with `done`, marks the file indexed too.
    fn write_chunk(
        &mut self,
        id: u32,
        start: u64,
        rows: &Rows,
        deleted: &RoaringTreemap,
        done: Option<&LiveFile>,
    ) -> Result<u64, DeltaTableError> {
        let w = self.write(false)?;
        let mut n = 0;
        {
            let mut keys = w.open_table(KEYS).map_err(|e| err(&self.dir, e))?;
            // Inserted in key order, the keys of a chunk visit each B-tree page once
            // instead of jumping around a large index (a compacted file's rows are in
            // no key order). The sort is stable: of two equal keys, the later row wins,
            // as in file order.
            let mut live: Vec<(&[u8], u64)> = rows
                .iter()
                .enumerate()
                .map(|(i, key)| (key.data(), start + i as u64))
                .filter(|(_, row)| !deleted.contains(*row))
                .collect();
            live.sort_by(|a, b| a.0.cmp(b.0));
            for (key, row) in live {
                keys.insert(key, (id, row)).map_err(|e| err(&self.dir, e))?;
                n += 1;
            }
            if let Some(file) = done {
                self.mark_known(&w, id, &file.path)?;
            }
        }
        w.commit().map_err(|e| err(&self.dir, e))?;
        if let Some(file) = done {
            self.learn(id, &file.path);
        }
        Ok(n)
    }
}

/// The index directory of the table at `url` under `cache_dir`: one folder per table
/// location, so tables never share one.
pub fn dir_for(cache_dir: &FsPath, url: &url::Url) -> PathBuf {
    // FNV-1a: stable across builds, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in url.as_str().trim_end_matches('/').bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    cache_dir.join("mirror-index").join(format!("{h:016x}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltalake::arrow::array::{Int64Array, StringArray};
    use deltalake::arrow::datatypes::{DataType, Field, Schema};

    fn batch(ids: &[i64]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("v", DataType::Utf8, true),
        ]));
        let v: Vec<String> = ids.iter().map(|i| format!("v{i}")).collect();
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(ids.to_vec())),
                Arc::new(StringArray::from(v)),
            ],
        )
        .unwrap()
    }

    fn codec(t: DataType) -> KeyCodec {
        KeyCodec::new(vec![Arc::new(Field::new("id", t, true))]).unwrap()
    }

    #[tokio::test]
    async fn sync_indexes_new_files_forgets_gone_ones_and_rebuilds_for_another_table_state() {
        let dir = tempfile::tempdir().unwrap();
        let url = url::Url::from_directory_path(dir.path().join("t")).unwrap();
        let table = super::super::open_table(url, Default::default()).await.unwrap();
        let table = table.write(vec![batch(&[10, 11, 12])]).await.unwrap();
        let codec = codec(DataType::Int64);
        let mut index = KeyIndex::open(&dir.path().join("idx"), 1 << 20).unwrap();
        let r = index.sync(&table, &codec).await.unwrap();
        assert!(r.rebuilt && r.files_indexed == 1 && r.rows_indexed == 3, "{r:?}");
        let keys = codec.encode(&batch(&[11, 99])).unwrap();
        let found = index.lookup(&keys).unwrap();
        let first = found[0].expect("key 11 is indexed");
        assert_eq!(first.row, 1);
        assert_eq!(found[1], None);
        assert_eq!(index.version().unwrap(), Some(0));

        // A second file with key 11 again: the newer row wins; a sync without changes
        // indexes nothing.
        let table = table.write(vec![batch(&[11, 13])]).await.unwrap();
        let r = index.sync(&table, &codec).await.unwrap();
        assert!(!r.rebuilt && r.files_indexed == 1 && r.rows_indexed == 2, "{r:?}");
        let now = index.lookup(&keys).unwrap()[0].unwrap();
        assert_ne!(now.file, first.file);
        assert_eq!(now.row, 0);
        assert_eq!(index.sync(&table, &codec).await.unwrap().files_indexed, 0);

        // Reopened from disk, it still knows both files.
        drop(index);
        let mut index = KeyIndex::open(&dir.path().join("idx"), 1 << 20).unwrap();
        assert_eq!(index.lookup(&keys).unwrap()[0], Some(now));
        assert_eq!(index.sync(&table, &codec).await.unwrap().files_indexed, 0);

        // An overwrite removes both files: they are forgotten, their entries no longer
        // count, and the new file is indexed.
        let table = table
            .write(vec![batch(&[1])])
            .with_save_mode(deltalake::protocol::SaveMode::Overwrite)
            .await
            .unwrap();
        let r = index.sync(&table, &codec).await.unwrap();
        assert_eq!((r.files_forgotten, r.files_indexed), (2, 1), "{r:?}");
        assert_eq!(index.lookup(&keys).unwrap(), vec![None, None]);

        // Another key encoding (or table) means a rebuild from the live files.
        let other = KeyCodec::new(vec![Arc::new(Field::new("id", DataType::Int32, true))]).unwrap();
        let r = index.sync(&table, &other).await.unwrap();
        assert!(r.rebuilt && r.files_indexed == 1 && r.rows_indexed == 1, "{r:?}");

        // A garbage index file is replaced, not trusted.
        drop(index);
        std::fs::write(dir.path().join("idx").join("keys.redb"), b"not a database").unwrap();
        let mut index = KeyIndex::open(&dir.path().join("idx"), 1 << 20).unwrap();
        assert!(index.sync(&table, &other).await.unwrap().rebuilt);
    }
}
