//! The registry's durable store: its events as numbered objects (`events/00000000000000000001.json`)
//! in a folder or an S3 bucket. Each event is written with put-if-absent, so two
//! registries over one store can never both claim a number: the loser reloads and
//! decides again, like a Delta commit.
//!
//! Compaction: now and then the registry writes its whole state as a snapshot
//! (`snapshots/<number of the last event it folds>.json`, put-if-absent too). A start
//! reads the newest snapshot and only the events numbered after it (listed from that
//! number on), so start time follows the state, not its history.
//!
//! Crash story: a snapshot is written after every event it folds is durable, in one
//! put, so it is whole or absent; two registries writing the same number write the
//! same state (the fold of the same events), and the second finds it taken. Events a
//! snapshot covers are kept, never deleted: a registry that has not seen them yet
//! would otherwise find their numbers free and write an event that every later start
//! skips, answering a client with something no store holds.

use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use url::Url;

use super::model::{Event, Image};

/// Why the store cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {0}: not a folder or a file:// or s3:// URI")]
    Uri(String),
    #[error("store {uri}: {source}")]
    ObjectStore {
        uri: String,
        #[source]
        source: object_store::Error,
    },
    #[error("store {uri}: {object}: not a registry event: {message}")]
    Corrupt {
        uri: String,
        object: String,
        message: String,
    },
}

/// Events in an object store.
#[derive(Debug, Clone)]
pub struct EventLog {
    uri: String,
    store: Arc<dyn ObjectStore>,
    prefix: Path,
}

/// What a start reads: the newest snapshot (if any) and the events after it.
#[derive(Debug)]
pub struct Loaded {
    /// The number of the last event the snapshot folds (0 without one).
    pub base: u64,
    pub snapshot: Option<Image>,
    /// Events `base + 1`, `base + 2`, … in order.
    pub events: Vec<Event>,
}

/// A snapshot object: the state after event `seq`.
#[derive(serde::Serialize, serde::Deserialize)]
struct SnapshotDoc {
    seq: u64,
    state: Image,
}

/// What appending found.
#[derive(Debug, PartialEq, Eq)]
pub enum Appended {
    Done,
    /// Another writer took the number: reload and try again.
    Taken,
}

impl EventLog {
    /// Opens `uri`: a local folder path, `file://…`, or `s3://bucket/prefix` (credentials
    /// and endpoint from the usual `AWS_*` environment variables).
    pub fn open(uri: &str) -> Result<Self, StoreError> {
        let err = |source| StoreError::ObjectStore {
            uri: uri.to_string(),
            source,
        };
        let (store, prefix): (Arc<dyn ObjectStore>, Path) = match Url::parse(uri) {
            Ok(url) if url.scheme() == "s3" => {
                let bucket = url.host_str().ok_or_else(|| StoreError::Uri(uri.to_string()))?;
                let s3 = object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .build()
                    .map_err(err)?;
                (Arc::new(s3), Path::from(url.path().trim_matches('/')))
            }
            Ok(url) if url.scheme() == "file" => {
                let path = url
                    .to_file_path()
                    .map_err(|()| StoreError::Uri(uri.to_string()))?;
                (Self::folder(uri, &path)?, Path::default())
            }
            Ok(url) if url.scheme().len() > 1 => return Err(StoreError::Uri(uri.to_string())),
            // A plain path (or a Windows drive letter parsed as a scheme).
            _ => (Self::folder(uri, std::path::Path::new(uri))?, Path::default()),
        };
        Ok(Self {
            uri: uri.to_string(),
            store,
            prefix,
        })
    }

    fn folder(uri: &str, path: &std::path::Path) -> Result<Arc<dyn ObjectStore>, StoreError> {
        std::fs::create_dir_all(path).map_err(|e| StoreError::ObjectStore {
            uri: uri.to_string(),
            source: object_store::Error::Generic {
                store: "LocalFileSystem",
                source: Box::new(e),
            },
        })?;
        let fs = object_store::local::LocalFileSystem::new_with_prefix(path).map_err(|source| {
            StoreError::ObjectStore {
                uri: uri.to_string(),
                source,
            }
        })?;
        Ok(Arc::new(fs))
    }

    /// The store as it was named.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    fn path(&self, seq: u64) -> Path {
        self.prefix.clone().join("events").join(format!("{seq:020}.json"))
    }

    fn snapshot_path(&self, seq: u64) -> Path {
        self.prefix
            .clone()
            .join("snapshots")
            .join(format!("{seq:020}.json"))
    }

    fn err(&self, source: object_store::Error) -> StoreError {
        StoreError::ObjectStore {
            uri: self.uri.clone(),
            source,
        }
    }

    fn corrupt(&self, object: &Path, message: impl ToString) -> StoreError {
        StoreError::Corrupt {
            uri: self.uri.clone(),
            object: object.to_string(),
            message: message.to_string(),
        }
    }

    /// Names under `dir` after `offset` (all of them without one), in name order:
    /// zero-padded numbers, so number order.
    async fn names(&self, dir: &str, offset: Option<&Path>) -> Result<Vec<Path>, StoreError> {
        let dir = self.prefix.clone().join(dir);
        let listing = match offset {
            Some(o) => self.store.list_with_offset(Some(&dir), o),
            None => self.store.list(Some(&dir)),
        };
        let mut names: Vec<Path> = listing
            .map_ok(|m| m.location)
            .try_collect()
            .await
            .map_err(|e| self.err(e))?;
        names.sort();
        Ok(names)
    }

    async fn read(&self, name: &Path) -> Result<bytes::Bytes, StoreError> {
        let got = self.store.get(name).await.map_err(|e| self.err(e))?;
        got.bytes().await.map_err(|e| self.err(e))
    }

    /// The newest snapshot and every event after it, in order.
    pub async fn load(&self) -> Result<Loaded, StoreError> {
        let (base, snapshot) = match self.names("snapshots", None).await?.last() {
            Some(name) => {
                let doc: SnapshotDoc =
                    serde_json::from_slice(&self.read(name).await?).map_err(|e| self.corrupt(name, e))?;
                if name.filename() != self.snapshot_path(doc.seq).filename() {
                    return Err(self.corrupt(name, format!("holds the state after event {}", doc.seq)));
                }
                (doc.seq, Some(doc.state))
            }
            None => (0, None),
        };
        let after = (base > 0).then(|| self.path(base));
        let names = self.names("events", after.as_ref()).await?;
        let mut events = Vec::with_capacity(names.len());
        for (i, name) in names.iter().enumerate() {
            let expected = base + i as u64 + 1;
            if name.filename() != self.path(expected).filename() {
                return Err(self.corrupt(name, format!("expected event number {expected}")));
            }
            let bytes = self.read(name).await?;
            events.push(serde_json::from_slice(&bytes).map_err(|e| self.corrupt(name, e))?);
        }
        Ok(Loaded {
            base,
            snapshot,
            events,
        })
    }

    /// Writes the state after event `seq` as a snapshot, unless one is there.
    pub async fn put_snapshot(&self, seq: u64, state: Image) -> Result<Appended, StoreError> {
        let path = self.snapshot_path(seq);
        let body = serde_json::to_vec(&SnapshotDoc { seq, state }).map_err(|e| self.corrupt(&path, e))?;
        self.put_new(&path, body).await
    }

    async fn put_new(&self, path: &Path, body: Vec<u8>) -> Result<Appended, StoreError> {
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self.store.put_opts(path, PutPayload::from(body), opts).await {
            Ok(_) => Ok(Appended::Done),
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {
                Ok(Appended::Taken)
            }
            Err(source) => Err(self.err(source)),
        }
    }

    /// Writes event number `seq` (1-based) unless it exists.
    pub async fn append(&self, seq: u64, event: &Event) -> Result<Appended, StoreError> {
        let path = self.path(seq);
        let body = serde_json::to_vec(event).map_err(|e| self.corrupt(&path, e))?;
        self.put_new(&path, body).await
    }
}
