//! The source task: polls the source into the batcher's channel, each chunk taking its
//! share of the in-flight budget first (a slow sink stops the reading), and hands the
//! source the acknowledgements the batcher sends back.
//!
//! Crash story: nothing here is state. Records in the channel are not acknowledged;
//! a restart reads them again from what the tables hold.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};

use crate::progress::Progress;
use crate::source::{Polled, Source, SourceError};

use super::report_in_flight;

/// What the source task hands the batcher: a poll result and the share of the
/// in-flight budget its records hold, released once they are committed.
pub(super) struct Delivery {
    pub polled: Result<Polled, SourceError>,
    pub held: Option<OwnedSemaphorePermit>,
}

/// Polls the source into the channel and forwards acknowledgements to it.
pub(super) async fn drive_source(
    mut source: Box<dyn Source>,
    tx: mpsc::Sender<Delivery>,
    mut acks: watch::Receiver<Progress>,
    budget: Arc<Semaphore>,
) {
    let limit = budget.available_permits();
    let deliver = |polled| Delivery { polled, held: None };
    async fn ack(source: &mut Box<dyn Source>, acks: &mut watch::Receiver<Progress>) {
        let progress = acks.borrow_and_update().clone();
        if let Err(e) = source.acknowledge(&progress).await {
            // Acknowledgement is a hint (the tables hold the truth); the next one will
            // carry the same or later progress.
            tracing::warn!(error = %e, "source acknowledgement failed");
        }
    }
    loop {
        if acks.has_changed().unwrap_or(false) {
            ack(&mut source, &mut acks).await;
        }
        match source.poll().await {
            Ok(Polled::Idle) => {
                if tx.is_closed() {
                    break;
                }
            }
            Ok(Polled::End) => {
                let _ = tx.send(deliver(Ok(Polled::End))).await;
                break;
            }
            Err(e) => {
                let _ = tx.send(deliver(Err(e))).await;
                break;
            }
            Ok(Polled::Batch(b)) => {
                // A slow sink stops the source here: records are read only while the
                // ones in flight fit the budget. A chunk larger than the whole budget
                // takes all of it, alone.
                let want = b.bytes().min(limit).min(u32::MAX as usize) as u32;
                let Ok(permit) = budget.clone().acquire_many_owned(want).await else {
                    break;
                };
                report_in_flight(&budget, limit);
                let delivery = Delivery {
                    polled: Ok(Polled::Batch(b)),
                    held: Some(permit),
                };
                if tx.send(delivery).await.is_err() {
                    break;
                }
            }
            Ok(polled) => {
                if tx.send(deliver(Ok(polled))).await.is_err() {
                    break;
                }
            }
        }
    }
    // Acknowledgements until the run ends, including the last one it sent.
    while acks.changed().await.is_ok() {
        ack(&mut source, &mut acks).await;
    }
    source.close().await;
}
