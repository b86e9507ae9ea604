//! The archive: stored objects together with their index rows. Every path that writes, reads
//! or checks an object goes through here, so that the rules that tie the two together are
//! written once:
//! - a write is on a quorum of replicas or nowhere (a write below quorum is undone where it
//!   landed), and the replicas it missed are named for the repair queue (`place`);
//! - a read is checked against the recorded size and SHA-256 (striped across replicas for
//!   large objects), and a replica found holding a bad copy is queued for repair
//!   (`read_verified`, `verify`);
//! - storing an object (`store`): validate, quorum write, index row, HA commit gate, undo on
//!   failure, one version per instance; C-STORE (`service::store`), STOW-RS and the portal's
//!   upload call it;
//! - deleting a study, a series or an instance (`delete`): index rows and tombstones first
//!   (confirmed by the standby), then the objects on every replica; a tombstone stays until
//!   every replica has lost its object, so nothing deleted comes back;
//! - the maintenance passes (repair, verify, rebuild and recovery from storage) are in
//!   `maintenance`; the start-up check of the rows committed just before an unclean stop
//!   (the row and copies of an object up to 16 MiB are flushed together on a node that runs
//!   alone) is in `reconcile`.
//!
//! Previews (`render`), C-MOVE/C-GET, WADO and the portal's downloads and verify, and HA
//! recovery use it too.

pub mod delete;
pub mod maintenance;
pub mod reconcile;
pub mod store;

use bytes::Bytes;
use object_store::PutPayload;

use crate::index::{Index, IndexError};
use crate::storage::repair::Expected;
use crate::storage::{Durability, PutOutcome, Storage, StorageError};

impl crate::index::StoredInstance {
    /// What a read of this instance's object is checked against.
    pub fn expected(&self) -> Expected {
        Expected {
            key: self.storage_key.clone(),
            size: self.size,
            digest: self.digest.clone(),
            read_check: self.read_check.clone(),
        }
    }
}

/// An object placed on a write quorum.
#[derive(Debug)]
pub struct Placed {
    pub outcome: PutOutcome,
    /// The replicas that missed it (location, error), for the repair queue with its row, and
    /// those still writing (`outcome.stragglers`): they are queued too, and `settle` clears
    /// the entry of each that succeeds, so that a crash before they end leaves them queued.
    pub missed: Vec<(String, String)>,
}

/// Why a replica still writing is in the repair queue until its write succeeds.
pub const STILL_WRITING: &str = "still writing when the write quorum answered";

/// Write `bytes` under `key` on a quorum of replicas. Below quorum the copies that landed are
/// removed again and the error returned: an object is never left where no index row will
/// point to it. A `Deferred` placement is not durable yet: see `place_durably`.
pub async fn place(
    storage: &Storage,
    key: &str,
    bytes: impl Into<PutPayload>,
    durability: Durability,
) -> Result<Placed, StorageError> {
    match storage.put_as(key, bytes, durability).await {
        Ok(outcome) => {
            let location = |i: usize| storage.replicas()[i].location.clone();
            let missed = outcome
                .missed
                .iter()
                .map(|(i, e)| (location(*i), e.clone()))
                .chain(
                    outcome
                        .stragglers
                        .replicas()
                        .iter()
                        .map(|i| (location(*i), STILL_WRITING.to_string())),
                )
                .collect();
            Ok(Placed { outcome, missed })
        }
        Err(e) => {
            if let StorageError::QuorumNotMet { written, .. } = &e {
                storage.delete_from(key, written).await;
            }
            Err(e)
        }
    }
}

/// `place`, durable when it returns (an object a status will acknowledge): a placement of
/// `durability` `Deferred` is flushed (one flush per file system its copies landed on) and,
/// if that fails, undone.
pub async fn place_durably(
    storage: &Storage,
    key: &str,
    bytes: impl Into<PutPayload>,
    durability: Durability,
) -> Result<Placed, StorageError> {
    let mut placed = place(storage, key, bytes, durability).await?;
    if durability == Durability::Deferred {
        crate::crashpoint::hit("put-unflushed");
        if let Err(e) = storage.flush(&placed.outcome.written).await {
            undo(&mut placed, storage, key).await;
            return Err(e);
        }
    }
    Ok(placed)
}

/// What became of a placed object's index row, which decides what `settle` does with the
/// replicas still writing.
pub enum Settle<'a> {
    /// Committed with its repair entries: the entry of each straggler that succeeds is
    /// cleared (one that fails stays queued and the repair worker copies the object there).
    Committed(&'a Index),
    /// Someone else's row stands for the key: they only finish.
    Leave,
}

/// Let the replicas still writing a placed object finish in the background, then act on how
/// each ended as `how` says.
pub fn settle(placed: &mut Placed, storage: &Storage, key: &str, how: Settle) {
    let stragglers = std::mem::take(&mut placed.outcome.stragglers);
    if stragglers.replicas().is_empty() {
        return;
    }
    let locations: Vec<String> = storage
        .replicas()
        .iter()
        .map(|r| r.location.clone())
        .collect();
    let key = key.to_string();
    let index = match how {
        Settle::Committed(index) => Some(index.clone()),
        Settle::Leave => None,
    };
    tokio::spawn(async move {
        let written = stragglers.succeeded().await;
        if let Some(index) = index {
            for i in written {
                if let Err(e) = index.clear_repair(&key, &locations[i]).await {
                    tracing::warn!(key, replica = %locations[i], error = %e, "a finished write stays in the repair queue");
                }
            }
        }
    });
}

/// A placed object whose index row was not committed: remove every copy, those still being
/// written included once they land. Done before the failure is answered, so that a re-send
/// of the same instance cannot be overtaken by this removal.
pub async fn undo(placed: &mut Placed, storage: &Storage, key: &str) {
    let stragglers = std::mem::take(&mut placed.outcome.stragglers);
    let mut written = placed.outcome.written.clone();
    written.extend(stragglers.succeeded().await);
    storage.delete_from(key, &written).await;
}

/// Read a stored object through the checked read path (striped for large objects); replicas
/// found holding a bad copy are queued for repair.
pub async fn read_verified(
    storage: &Storage,
    index: &Index,
    expected: &Expected,
) -> Result<Bytes, StorageError> {
    let verified = storage.read(expected).await?;
    for (i, problem) in &verified.bad_copies {
        let replica = &storage.replicas()[*i].location;
        if let Err(e) = index
            .queue_repair(&expected.key, replica, &problem.to_string())
            .await
        {
            tracing::warn!(key = %expected.key, replica, error = %e, "could not queue a repair");
        }
    }
    Ok(verified.bytes)
}

/// Check every replica's copy of one object (exists, size, SHA-256) and queue a repair for
/// each bad one; how many were bad.
pub async fn verify(
    storage: &Storage,
    index: &Index,
    expected: &Expected,
) -> Result<u64, IndexError> {
    let mut bad = 0;
    for (replica, problem) in storage.verify(expected).await {
        tracing::warn!(replica, key = %expected.key, %problem, "bad replica copy");
        index
            .queue_repair(&expected.key, &replica, &problem.to_string())
            .await?;
        bad += 1;
    }
    Ok(bad)
}
