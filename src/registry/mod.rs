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

pub mod client;
mod http;
pub mod model;
pub mod store;

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
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    model: Model,
    /// Events applied so far; the next one is number `seq + 1`.
    seq: u64,
}

impl Registry {
    /// Opens the store and replays its events.
    pub async fn open(store: &str) -> Result<Arc<Self>, StoreError> {
        let log = EventLog::open(store)?;
        let state = Self::replay(&log).await?;
        tracing::info!(store, events = state.seq, "registry store loaded");
        Ok(Arc::new(Self {
            log,
            state: Mutex::new(state),
        }))
    }

    async fn replay(log: &EventLog) -> Result<State, StoreError> {
        let mut state = State::default();
        for e in log.load().await? {
            state.model.apply(&e);
            state.seq += 1;
        }
        Ok(state)
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

/// Serves the registry on `listen` until `shutdown` resolves.
pub async fn serve(
    listen: SocketAddr,
    store: &str,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let registry = Registry::open(store).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    tracing::info!(%listen, "schema registry listening");
    axum::serve(listener, router(registry))
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}
