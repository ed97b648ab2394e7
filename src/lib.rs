//! Tributary: change data and event streams into Delta Lake tables, exactly once.
//!
//! ```text
//!  source/ (postgres, generator, file; kafka)      one task; a byte budget bounds
//!     │                                            what is read and not yet committed
//!     │  Arrow RecordBatch + shard + positions
//!     ▼
//!  runtime/  micro-batches by rows, bytes and latency
//!     ├─▶ sink/   dead_letters    undecodable / refused records (first, only if any)
//!     ├─▶ sink/   [[tables]]      append | changelog | mirror (by key: deletion
//!     │                           vectors + new row images, found through a local
//!     │                           key index; or copy-on-write MERGE):
//!     │                           one Delta commit per batch, txn actions inside
//!     └─▶ window/ [[aggregates]]  tumbling/hopping/session/global; late events first,
//!                                 state snapshot, then one Delta commit per batch
//!     ▼
//!  acknowledge the source up to the smallest progress every table holds
//!  (telemetry: /metrics, /health; runtime::status reads positions and lag)
//! ```
//!
//! # Delivery guarantee
//!
//! Every table holds its own progress: each commit carries one Delta `txn` action per
//! source shard (`appId = "{pipeline}/{shard}"`, `version` = the position to resume
//! from) in the same transaction as the rows. On start each table reports that
//! progress, the source resumes at the smallest of them, and each table skips the
//! records it already holds (a mirror's merge included, so a replay never re-applies a
//! change). A mirror's key index is a rebuildable cache written only from committed
//! versions, never a source of truth. The dead-letter table commits a micro-batch's rejects before any other
//! table commits past them. Aggregates snapshot their state beside their table,
//! keyed by the progress of the commit that depends on it, *before* that commit.
//! Sources are acknowledged only after every table committed. So after a crash at any
//! point, a restart yields tables equal to those of a run that never crashed: no
//! record lost, none duplicated, no batch torn.
//!
//! Kafka sources also need a schema registry; [`registry`] is one (Confluent's REST
//! API, `tributary registry`), and its client validates writer schemas.
//!
//! Stages talk only through shared types ([`progress`], Arrow batches) and their own
//! trait: [`source::Source`], [`decode::RecordDecoder`], [`window::Operator`],
//! [`sink::Sink`].

pub mod config;
pub mod decode;
pub mod pem;
pub mod progress;
pub mod registry;
pub mod runtime;
pub mod sink;
pub mod source;
pub mod telemetry;
pub mod window;
