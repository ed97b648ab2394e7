//! `tributary registry`: a schema registry speaking the part of Confluent's REST API
//! that producers, consumers and their client libraries use, for Avro schemas.
//!
//! ```text
//!  HTTP (axum) ─▶ Model (rules, no I/O) ─▶ Event ─▶ EventLog (folder or S3, put-if-absent)
//! ```
//!
//! Ids are global: the same schema text (up to whitespace and key order) always gets
//! the same id, under any subject. Deletes are soft unless `permanent=true` follows a
//! soft delete. Compatibility levels are Confluent's (default `BACKWARD`), checked with
//! Avro's schema-resolution rules. Every change is written to the store before it is
//! acknowledged, so a registry restarted on the same store answers the same.
//!
//! Exposed beyond loopback it takes users (`--users`, basic auth, see [`auth`]) and
//! serves https (`--tls-cert`, `--tls-key`, see [`tls`]).

pub mod auth;
pub mod client;
mod http;
pub mod model;
pub mod store;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::Mutex;

use model::{Event, Model, RegistryError};
use store::{Appended, EventLog, StoreError};

pub use http::router;

/// Times a write is decided again after another registry took its event number.
const APPEND_ATTEMPTS: usize = 8;

/// The registry: its state and the store that makes it durable.
#[derive(Debug)]
pub struct Registry {
    log: EventLog,
    compact_every: u64,
    state: Mutex<State>,
}

/// Events between snapshots of the store, unless told otherwise.
pub const DEFAULT_COMPACT_EVERY: u64 = 1000;

#[derive(Debug, Default)]
struct State {
    model: Model,
    /// Events applied so far; the next one is number `seq + 1`.
    seq: u64,
    /// The event the newest snapshot this registry knows of folds.
    snapshot: u64,
}

impl Registry {
    /// Opens the store and loads its newest snapshot and the events after it. A
    /// snapshot is written every `compact_every` events.
    pub async fn open(store: &str, compact_every: u64) -> Result<Arc<Self>, StoreError> {
        let log = EventLog::open(store)?;
        let state = Self::replay(&log).await?;
        tracing::info!(
            store,
            events = state.seq,
            snapshot = state.snapshot,
            replayed = state.seq - state.snapshot,
            "registry store loaded"
        );
        Ok(Arc::new(Self {
            log,
            compact_every: compact_every.max(1),
            state: Mutex::new(state),
        }))
    }

    async fn replay(log: &EventLog) -> Result<State, StoreError> {
        let loaded = log.load().await?;
        let model = match loaded.snapshot {
            Some(image) => Model::from_image(image).map_err(|message| StoreError::Corrupt {
                uri: log.uri().to_string(),
                object: format!("snapshot {}", loaded.base),
                message,
            })?,
            None => Model::default(),
        };
        let mut state = State {
            model,
            seq: loaded.base,
            snapshot: loaded.base,
        };
        for e in &loaded.events {
            state.model.apply(e);
            state.seq += 1;
        }
        Ok(state)
    }

    /// Snapshots the state when `compact_every` events have passed since the last one.
    /// A failure leaves the events as they are, so it is only logged.
    async fn maybe_snapshot(&self, state: &mut State) {
        if state.seq - state.snapshot < self.compact_every {
            return;
        }
        match self.log.put_snapshot(state.seq, state.model.image()).await {
            Ok(_) => {
                tracing::info!(events = state.seq, "registry store snapshot written");
                state.snapshot = state.seq;
            }
            Err(e) => {
                tracing::warn!(error = %e, "registry store snapshot not written; retried after the next write")
            }
        }
    }

    /// Reads the state.
    pub async fn read<T>(&self, f: impl FnOnce(&Model) -> T) -> T {
        f(&self.state.lock().await.model)
    }

    /// Decides on the current state what events a request makes (`plan`), makes them
    /// durable, then applies them. When another writer got there first, reloads and
    /// decides again.
    pub async fn write<T>(
        &self,
        plan: impl Fn(&Model) -> Result<(Vec<Event>, T), RegistryError>,
    ) -> Result<T, RegistryError> {
        let store_err = |e: StoreError| RegistryError::Store(e.to_string());
        let mut state = self.state.lock().await;
        for _ in 0..APPEND_ATTEMPTS {
            let (events, answer) = plan(&state.model)?;
            let mut taken = false;
            for e in &events {
                match self.log.append(state.seq + 1, e).await.map_err(store_err)? {
                    Appended::Done => {
                        state.model.apply(e);
                        state.seq += 1;
                    }
                    Appended::Taken => {
                        taken = true;
                        break;
                    }
                }
            }
            if !taken {
                self.maybe_snapshot(&mut state).await;
                return Ok(answer);
            }
            tracing::warn!("another registry wrote to the store: reloading it");
            *state = Self::replay(&self.log).await.map_err(store_err)?;
        }
        Err(RegistryError::Store(
            "the store keeps changing under this registry".into(),
        ))
    }
}

/// How a registry is served.
#[derive(Debug)]
pub struct Settings {
    pub listen: SocketAddr,
    /// A folder, `file://…` or `s3://bucket/prefix`.
    pub store: String,
    /// Events between snapshots of the store.
    pub compact_every: u64,
    /// Users file; without one, anyone who reaches the port may read and write.
    pub users: Option<std::path::PathBuf>,
    /// Certificate chain and key (PEM): https instead of http.
    pub tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// Serves the registry until `shutdown` resolves.
pub async fn serve(
    settings: Settings,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let users = match &settings.users {
        Some(path) => Some(Arc::new(auth::Users::load(path).map_err(anyhow::Error::msg)?)),
        None => None,
    };
    let tls = match &settings.tls {
        Some((cert, key)) => Some(tls::server_config(cert, key).map_err(anyhow::Error::msg)?),
        None => None,
    };
    let registry = Registry::open(&settings.store, settings.compact_every).await?;
    let mut app = router(registry);
    if let Some(users) = users {
        app = app.layer(axum::middleware::from_fn_with_state(users, auth::authenticate));
    }
    let listen = settings.listen;
    let tcp = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    let auth = if settings.users.is_some() {
        "basic auth"
    } else {
        "no auth"
    };
    match tls {
        Some(config) => {
            tracing::info!(%listen, auth, "schema registry listening (https)");
            let listener = tls::TlsListener::new(tcp, config)?;
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await?;
        }
        None => {
            tracing::info!(%listen, auth, "schema registry listening (http)");
            axum::serve(tcp, app).with_graceful_shutdown(shutdown).await?;
        }
    }
    Ok(())
}
