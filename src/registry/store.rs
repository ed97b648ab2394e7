//! The registry's durable store: its events as numbered objects (`events/00000000000000000001.json`)
//! in a folder or an S3 bucket. Each event is written with put-if-absent, so two
//! registries over one store can never both claim a number: the loser reloads and
//! decides again, like a Delta commit.

use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use url::Url;

use super::model::Event;

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

    fn path(&self, seq: u64) -> Path {
        self.prefix.clone().join("events").join(format!("{seq:020}.json"))
    }

    /// Every event, in order.
    pub async fn load(&self) -> Result<Vec<Event>, StoreError> {
        let err = |source| StoreError::ObjectStore {
            uri: self.uri.clone(),
            source,
        };
        let dir = self.prefix.clone().join("events");
        let mut names: Vec<Path> = self
            .store
            .list(Some(&dir))
            .map_ok(|m| m.location)
            .try_collect()
            .await
            .map_err(err)?;
        // Zero-padded numbers: name order is event order.
        names.sort();
        let mut events = Vec::with_capacity(names.len());
        for (i, name) in names.iter().enumerate() {
            if name.filename() != self.path(i as u64 + 1).filename() {
                return Err(StoreError::Corrupt {
                    uri: self.uri.clone(),
                    object: name.to_string(),
                    message: format!("expected event number {}", i + 1),
                });
            }
            let bytes = self
                .store
                .get(name)
                .await
                .map_err(err)?
                .bytes()
                .await
                .map_err(err)?;
            let event = serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                uri: self.uri.clone(),
                object: name.to_string(),
                message: e.to_string(),
            })?;
            events.push(event);
        }
        Ok(events)
    }

    /// Writes event number `seq` (1-based) unless it exists.
    pub async fn append(&self, seq: u64, event: &Event) -> Result<Appended, StoreError> {
        let body = serde_json::to_vec(event).map_err(|e| StoreError::Corrupt {
            uri: self.uri.clone(),
            object: self.path(seq).to_string(),
            message: e.to_string(),
        })?;
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .store
            .put_opts(&self.path(seq), PutPayload::from(body), opts)
            .await
        {
            Ok(_) => Ok(Appended::Done),
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {
                Ok(Appended::Taken)
            }
            Err(source) => Err(StoreError::ObjectStore {
                uri: self.uri.clone(),
                source,
            }),
        }
    }
}
