//! Storing an object under the durability contract (C-STORE and STOW-RS alike): validate,
//! write the Part 10 object to W of N replicas, commit the index row, wait for the HA gate,
//! and only then report success. Data before metadata; an object whose index commit failed is
//! removed again; a re-sent instance keeps its first acknowledged version.

use crate::audit::Subject;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use object_store::PutPayload;
use tracing::{debug, info, warn};

use crate::archive::Placed;
use crate::archive::{Settle, settle, undo};
use crate::config::OnConflict;
use crate::index::record::{self, RecordError};
use crate::index::{CommitGate, Index, IndexError, InsertOutcome, RowOrder};
use crate::part10;
use crate::storage::digest::Algorithm;
use crate::storage::{Durability, Storage, StorageError, Uid, object_key};

/// Why an object was not stored; `service::failure::of_store` is the one place these become
/// DIMSE statuses (and STOW-RS reasons).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("data set of {size} bytes exceeds the node's limit of {limit} bytes")]
    TooLarge { size: u64, limit: u64 },
    #[error("receive budget of {budget} bytes in use; retry later")]
    OverBudget { budget: u64 },
    #[error("already stored with different content; stored version kept")]
    Conflict {
        sop: String,
        stored: String,
        received: String,
    },
    #[error("command has no data set")]
    NoDataSet,
    #[error("Affected SOP Class UID missing or invalid in the command")]
    BadCommandSopClass,
    #[error("Affected SOP Instance UID missing or invalid in the command")]
    BadCommandSopInstance,
    #[error("command SOP class {command} differs from the presentation context's {context}")]
    ContextMismatch { command: String, context: String },
    #[error("{0}")]
    Record(#[from] RecordError),
    #[error("data set {attribute} {found} does not match the command's {expected}")]
    DataSetMismatch {
        attribute: &'static str,
        found: String,
        expected: String,
    },
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("index: {0}")]
    Index(#[from] IndexError),
    #[error("building the Part 10 file: {0}")]
    Part10(#[from] part10::Part10Error),
    #[error("SOP class {0} is not a storage SOP class this node stores")]
    UnsupportedSopClass(String),
    #[error("transfer syntax {0} is not one this node stores")]
    UnsupportedSyntax(String),
    #[error("not acknowledged: {0}")]
    NotConfirmed(#[from] crate::index::NotConfirmed),
}

/// A data set to store, with what its request says it is.
pub struct Received {
    pub sop_class: Uid,
    pub sop_instance: Uid,
    pub transfer_syntax: String,
    pub data: Vec<u8>,
    /// The calling AE title (C-STORE); None over HTTP.
    pub source_ae: Option<String>,
}

/// What `prepare` makes of a received data set.
struct Prepared {
    rec: record::InstanceRecord,
    uids: record::InstanceUids,
    /// The Part 10 file to store, in two pieces: its header, then the data set as received.
    file: PutPayload,
}

/// CPU work of a C-STORE (runs on the blocking pool): parse up to Pixel Data, extract and
/// validate the record, wrap the data set into a Part 10 file and make its checksum (here
/// rather than in a task of its own beside the replica writes: one trip to the blocking pool
/// fewer, and BLAKE3 takes about 0.1 ms for a 525 KB CT image). The file is its header and
/// the received buffer side by side, not one buffer: joining them was a copy of the whole
/// object.
fn prepare(
    data: Vec<u8>,
    transfer_syntax: &str,
    max_inflated: u64,
) -> Result<Prepared, StoreError> {
    let header = record::parse_header(&data, transfer_syntax, max_inflated)?;
    let mut rec = record::extract(&header)?;
    let uids = rec.uids()?;
    let meta = part10::header(
        uids.sop_class.as_str(),
        uids.sop_instance.as_str(),
        transfer_syntax,
        0,
    )?;
    let pieces = || [meta.as_slice(), data.as_slice()];
    rec.digest = Algorithm::RECORDED.digest_pieces(pieces());
    rec.read_check = Some(Algorithm::READ_CHECK.digest_pieces(pieces()));
    Ok(Prepared {
        rec,
        uids,
        file: PutPayload::from_iter([Bytes::from(meta), Bytes::from(data)]),
    })
}

/// What committing an instance row came to.
type Inserted = Result<InsertOutcome, IndexError>;

/// How long a store's steps 1 and 2 took (they may overlap), for the log.
struct Timing {
    put: std::time::Duration,
    index: std::time::Duration,
}

/// The digest of a received `file` to compare with `stored`, the digest recorded for the
/// acknowledged version: the one `prepare` made when the algorithms are the same, else one
/// made now with the older algorithm, on the blocking pool.
async fn received_digest(rec: &record::InstanceRecord, stored: &str, file: PutPayload) -> String {
    match Algorithm::of(stored) {
        Algorithm::RECORDED => rec.digest.clone(),
        older => {
            tokio::task::spawn_blocking(move || older.digest_pieces(file.iter().map(|b| &b[..])))
                .await
                .expect("hashing panicked")
        }
    }
}

/// The store side of the archive: storage, index, the HA commit gate, and a per-SOP-Instance
/// lock so that two requests storing the same instance cannot interleave write and commit.
pub struct Store {
    pub index: Index,
    pub storage: Arc<Storage>,
    max_object_size: u64,
    in_flight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    gate: Option<Arc<dyn CommitGate>>,
    /// What a conflicting re-send from a calling AE gets (`access.on_conflict` and peers).
    on_conflict: Box<dyn Fn(&str) -> OnConflict + Send + Sync>,
}

impl Store {
    pub fn new(
        index: Index,
        storage: Arc<Storage>,
        max_object_size: u64,
        gate: Option<Arc<dyn CommitGate>>,
        on_conflict: Box<dyn Fn(&str) -> OnConflict + Send + Sync>,
    ) -> Store {
        Store {
            index,
            storage,
            max_object_size,
            in_flight: Mutex::new(HashMap::new()),
            gate,
            on_conflict,
        }
    }

    /// In HA mode, wait until rows up to `seq` may be acknowledged.
    pub(super) async fn confirm(&self, seq: i64) -> Result<(), StoreError> {
        match &self.gate {
            Some(g) => g.confirm(seq).await.map_err(StoreError::NotConfirmed),
            None => Ok(()),
        }
    }

    /// Store a Part 10 file received over HTTP (STOW-RS) under the same contract as a
    /// C-STORE: its file meta names the SOP class, instance and transfer syntax (checked
    /// against the data set, as the command's are); `study`, when the request named one,
    /// must be the instance's. Returns the instance's record.
    pub async fn store_part10(
        &self,
        file: &[u8],
        study: Option<&Uid>,
        subject: &mut Subject,
    ) -> Result<record::InstanceRecord, StoreError> {
        let (meta, offset) = part10::split(file)?;
        let uid = |u: &str| Uid::parse(u.trim_end_matches(['\0', ' '])).ok();
        let sop_class =
            uid(meta.media_storage_sop_class_uid()).ok_or(StoreError::BadCommandSopClass)?;
        let sop_instance =
            uid(meta.media_storage_sop_instance_uid()).ok_or(StoreError::BadCommandSopInstance)?;
        let transfer_syntax = meta
            .transfer_syntax()
            .trim_end_matches(['\0', ' '])
            .to_string();
        if !crate::net::syntax::is_storage_transfer_syntax(&transfer_syntax) {
            return Err(StoreError::UnsupportedSyntax(transfer_syntax));
        }
        if !crate::net::syntax::is_storage_sop_class(sop_class.as_str()) {
            return Err(StoreError::UnsupportedSopClass(sop_class.to_string()));
        }
        let object = Received {
            sop_class,
            sop_instance,
            transfer_syntax,
            data: file[offset..].to_vec(),
            source_ae: None,
        };
        self.store_received(object, study, subject).await
    }

    /// The per-instance lock is held from the duplicate check to the index commit, so two
    /// requests storing the same instance cannot interleave.
    pub async fn store_received(
        &self,
        object: Received,
        study: Option<&Uid>,
        subject: &mut Subject,
    ) -> Result<record::InstanceRecord, StoreError> {
        let _held = self.hold(object.sop_instance.as_str()).await;
        self.store_locked(object, study, subject).await
    }

    async fn store_locked(
        &self,
        object: Received,
        study: Option<&Uid>,
        subject: &mut Subject,
    ) -> Result<record::InstanceRecord, StoreError> {
        let Received {
            sop_class,
            sop_instance,
            transfer_syntax,
            data,
            source_ae,
        } = object;
        let calling_ae = source_ae.clone().unwrap_or_default();
        let calling_ae = calling_ae.as_str();
        // Parse and wrap the data set, then ask the index whether the instance is already
        // stored, in one trip to the blocking pool (the two side by side, each in a task of
        // its own, took one more hand-off in each direction for a lookup of some 20 us).
        let ts = transfer_syntax.clone();
        let max_inflated = self.max_object_size;
        let (index, sop) = (self.index.clone(), sop_instance.to_string());
        let (prepared, existing) = tokio::task::spawn_blocking(move || {
            let prepared = prepare(data, &ts, max_inflated)?;
            Ok::<_, StoreError>((prepared, index.instance_here(&sop)))
        })
        .await
        .expect("record extraction panicked")?;
        let Prepared {
            mut rec,
            uids,
            file,
        } = prepared;
        *subject = Subject {
            patient_id: Some(rec.patient_id.clone()),
            patient_name: rec.patient_name.clone(),
            studies: vec![rec.study_instance_uid.clone()],
        };
        if rec.sop_class_uid != sop_class.as_str() {
            return Err(StoreError::DataSetMismatch {
                attribute: "SOPClassUID",
                found: rec.sop_class_uid,
                expected: sop_class.to_string(),
            });
        }
        if rec.sop_instance_uid != sop_instance.as_str() {
            return Err(StoreError::DataSetMismatch {
                attribute: "SOPInstanceUID",
                found: rec.sop_instance_uid,
                expected: sop_instance.to_string(),
            });
        }
        if let Some(study) = study
            && rec.study_instance_uid != study.as_str()
        {
            return Err(StoreError::DataSetMismatch {
                attribute: "StudyInstanceUID",
                found: rec.study_instance_uid,
                expected: study.to_string(),
            });
        }

        // Idempotent re-send: the first acknowledged version is kept (documented in the
        // conformance statement); different content is never swapped in, and the sender is
        // told so unless its policy says otherwise.
        if let Some(existing) = existing? {
            let received = received_digest(&rec, &existing.digest, file).await;
            self.already_stored(calling_ae, &uids.sop_instance, &existing.digest, received)
                .await?;
            return Ok(rec);
        }
        let key = object_key(
            self.storage.prefix(),
            &uids.study,
            &uids.series,
            &uids.sop_instance,
        );
        rec.storage_key = key.clone();
        rec.transfer_syntax_uid = transfer_syntax;
        rec.size = file.content_length() as u64;
        rec.calling_ae_title = source_ae;

        crate::crashpoint::hit("store-prepared");
        // 1. Data: on W of N replicas (the checksum was made by `prepare`). A write below
        //    quorum, or not flushed, is undone where it landed.
        // 2. Metadata: the index row (and repair entries for the replicas that missed it).
        // In an HA pair the copies are durable before the row is committed (its standby
        // applies a row as soon as it is committed: `copies_first`). On a node that runs alone
        // the row is committed while the copies are written, and is open until both are
        // durable (`index::settled`, `row_ahead`): the row and copies of an object over
        // `storage::DEFER_FLUSH_UP_TO` (16 MiB) each with their own flush, a smaller one's
        // without, then one flush for both.
        let order = match (Durability::of_object(file.content_length()), &self.gate) {
            (_, Some(_)) => RowOrder::AfterCopies,
            (Durability::Deferred, None) => RowOrder::WithCopies,
            (Durability::Flushed, None) => RowOrder::BeforeCopies,
        };
        let (mut placed, inserted, timing) = match order {
            RowOrder::AfterCopies => self.copies_first(&rec, &key, &file).await?,
            _ => {
                self.row_ahead(&rec, &key, &file, &uids.sop_instance, order)
                    .await?
            }
        };
        match inserted {
            Ok(InsertOutcome::Inserted { seq }) => {
                info!(
                    sop = %uids.sop_instance,
                    study = %uids.study,
                    bytes = rec.size,
                    replicas = placed.outcome.written.len(),
                    seq,
                    put_us = timing.put.as_micros() as u64,
                    index_us = timing.index.as_micros() as u64,
                    "stored"
                );
                settle(
                    &mut placed,
                    &self.storage,
                    &key,
                    Settle::Committed(&self.index),
                );
                // 3. In HA mode: the standby has the row (or we hold a solo epoch).
                self.confirm(seq).await?;
                Ok(rec)
            }
            Ok(InsertOutcome::AlreadyPresent { digest }) => {
                // Indexed meanwhile (the per-instance lock makes this rare). Nothing is
                // deleted here: under the same key that would remove the acknowledged
                // version's object, not only ours.
                settle(&mut placed, &self.storage, &key, Settle::Leave);
                let received = received_digest(&rec, &digest, file).await;
                self.already_stored(calling_ae, &uids.sop_instance, &digest, received)
                    .await?;
                Ok(rec)
            }
            Err(e) => {
                // Undo: the object must not stay visible without its index row.
                undo(&mut placed, &self.storage, &key).await;
                Err(e.into())
            }
        }
    }

    /// Steps 1 and 2 in an HA pair: the copies placed durably, then the row committed (with
    /// its flush) together with the repair entries of the replicas the write missed.
    async fn copies_first(
        &self,
        rec: &record::InstanceRecord,
        key: &str,
        file: &PutPayload,
    ) -> Result<(Placed, Inserted, Timing), StoreError> {
        let started = Instant::now();
        let durability = Durability::of_object(file.content_length());
        let placed =
            crate::archive::place_durably(&self.storage, key, file.clone(), durability).await?;
        crate::crashpoint::hit("put-quorum");
        let put = started.elapsed();
        let started = Instant::now();
        let inserted = self.index.insert(rec.clone(), placed.missed.clone()).await;
        let index = started.elapsed();
        Ok((placed, inserted, Timing { put, index }))
    }

    /// Steps 1 and 2 at once, on a node that runs alone: the row is committed while the
    /// copies are written, which takes the commit off the C-STORE's path. The row and copies
    /// of an object over `storage::DEFER_FLUSH_UP_TO` are each flushed on their own
    /// (`RowOrder::BeforeCopies`); a smaller object's copies and row are written without a
    /// flush, then one `syncfs` makes both durable (`RowOrder::WithCopies`,
    /// `flush_with_row`). The row is open until both are
    /// durable (`index::settled`); a crash or a power loss before that can leave it without
    /// its copies, and start-up then removes it (`archive::reconcile`). If the write fails the
    /// row is removed again before the failure is answered; the replicas the write missed are
    /// queued for repair once it is known which. Until its copies are written, a query can
    /// see a row whose object cannot be read yet; it has not been acknowledged.
    async fn row_ahead(
        &self,
        rec: &record::InstanceRecord,
        key: &str,
        file: &PutPayload,
        sop: &Uid,
        order: RowOrder,
    ) -> Result<(Placed, Inserted, Timing), StoreError> {
        let started = Instant::now();
        let together = order == RowOrder::WithCopies;
        let place = async {
            let file = file.clone();
            let placed = if together {
                crate::archive::place(&self.storage, key, file, Durability::Deferred).await
            } else {
                crate::archive::place_durably(&self.storage, key, file, Durability::Flushed).await
            };
            (placed, started.elapsed())
        };
        let insert = async {
            let started = Instant::now();
            let inserted = if together {
                self.index.insert_unflushed(rec.clone(), Vec::new()).await
            } else {
                self.index.insert_ahead(rec.clone()).await
            };
            (inserted, started.elapsed())
        };
        let ((placed, put), (inserted, mut index)) = tokio::join!(place, insert);
        let seq = match &inserted {
            Ok(InsertOutcome::Inserted { seq }) => Some(*seq),
            _ => None,
        };
        let queued = match (&placed, seq) {
            (Ok(placed), Some(_)) => self.queue_missed(key, &placed.missed).await,
            _ => Ok(()),
        };
        let failed = match (placed, queued) {
            (Ok(mut placed), Ok(())) => {
                if together {
                    crate::crashpoint::hit("put-unflushed");
                }
                crate::crashpoint::hit("put-quorum");
                let flushing = Instant::now();
                let inserted = if together {
                    self.flush_with_row(inserted, &mut placed, key, sop).await?
                } else {
                    if let Some(seq) = seq {
                        self.index.settled(seq);
                    }
                    inserted
                };
                index += flushing.elapsed();
                return Ok((placed, inserted, Timing { put, index }));
            }
            (Err(e), _) => StoreError::from(e),
            (Ok(mut placed), Err(e)) => {
                undo(&mut placed, &self.storage, key).await;
                StoreError::from(e)
            }
        };
        if let Some(seq) = seq {
            warn!(%sop, error = %failed, "storing a new instance failed; its row is removed again");
            self.remove_row(sop, seq).await?;
        }
        Err(failed)
    }

    /// Queue a repair for each replica a write `missed` (or that was still writing).
    async fn queue_missed(&self, key: &str, missed: &[(String, String)]) -> Result<(), IndexError> {
        for (replica, reason) in missed {
            self.index.queue_repair(key, replica, reason).await?;
        }
        Ok(())
    }

    /// Remove the row committed as `seq` for `sop` again, whose object was not stored.
    async fn remove_row(&self, sop: &Uid, seq: i64) -> Result<(), IndexError> {
        let deletion = crate::index::deletion::Deletion {
            instances: vec![sop.to_string()],
        };
        let removed = self.index.delete_instances(deletion).await;
        self.index.settled(seq);
        removed.map(|_| ())
    }

    /// The end of steps 1 and 2 on a node that runs alone, for an object up to
    /// `storage::DEFER_FLUSH_UP_TO`: its copies were placed without a flush and `inserted`
    /// committed its row without one, side by side; one `syncfs` of their file systems (and the index's) makes both durable, and
    /// only then does the row count as settled. The row may be committed before the copies
    /// are written, and the kernel may write it back before them; a crash or a power loss
    /// before this flush can then leave a row whose copies are missing, which was never
    /// acknowledged: start-up finds it after the last settled row and removes it
    /// (`archive::reconcile`). If the flush fails, the row is deleted again and the copies
    /// removed before the failure is answered.
    async fn flush_with_row(
        &self,
        inserted: Inserted,
        placed: &mut Placed,
        key: &str,
        sop: &Uid,
    ) -> Result<Inserted, StoreError> {
        let seq = match &inserted {
            Err(_) => return Ok(inserted),
            Ok(InsertOutcome::Inserted { seq }) => Some(*seq),
            Ok(InsertOutcome::AlreadyPresent { .. }) => None,
        };
        crate::crashpoint::hit("index-committed-unflushed");
        let flushed = self
            .storage
            .flush_with(&placed.outcome.written, Some(self.index.path()))
            .await;
        match (seq, flushed) {
            (Some(seq), Ok(())) => {
                self.index.settled(seq);
                Ok(inserted)
            }
            // Someone else's row stands: the copies this request wrote over theirs are
            // flushed; nothing is removed (it would be their object).
            (None, flushed) => flushed.map(|()| inserted).map_err(StoreError::from),
            (Some(seq), Err(e)) => {
                warn!(%sop, error = %e, "flushing a new instance failed; its row is removed again");
                undo(placed, &self.storage, key).await;
                self.remove_row(sop, seq).await?;
                Err(e.into())
            }
        }
    }

    /// The answer to a C-STORE of an instance that is already indexed with `stored` as its
    /// checksum: identical content is Success; different content follows the sender's
    /// `on_conflict` policy. Either way the stored version stays.
    async fn already_stored(
        &self,
        calling_ae: &str,
        sop: &Uid,
        stored: &str,
        received: String,
    ) -> Result<(), StoreError> {
        if received != stored {
            let policy = (self.on_conflict)(calling_ae);
            warn!(%sop, calling_ae, stored, %received, ?policy,
                  "instance re-sent with different content; the stored version is kept");
            if policy == OnConflict::Reject {
                return Err(StoreError::Conflict {
                    sop: sop.to_string(),
                    stored: stored.to_string(),
                    received,
                });
            }
        } else {
            debug!(%sop, "instance already stored with identical content");
        }
        // Its first C-STORE may have failed before the standby confirmed it: confirm
        // everything committed so far, which includes it.
        if self.gate.is_some() {
            let (seq, _) = self.index.last_change().await?;
            self.confirm(seq).await?;
        }
        Ok(())
    }

    /// Hold the per-instance lock of `uid` (storing and removing one instance's object
    /// exclude each other) until the guard drops.
    pub(super) async fn hold(&self, uid: &str) -> Held<'_> {
        let lock = self
            .in_flight
            .lock()
            .expect("in-flight map")
            .entry(uid.to_string())
            .or_default()
            .clone();
        let guard = lock.clone().lock_owned().await;
        Held {
            store: self,
            uid: uid.to_string(),
            lock,
            _guard: guard,
        }
    }
}

/// A held per-instance lock; the map entry goes with the last holder or waiter.
pub(super) struct Held<'s> {
    store: &'s Store,
    uid: String,
    lock: Arc<tokio::sync::Mutex<()>>,
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let mut map = self.store.in_flight.lock().expect("in-flight map");
        // Three references: the map's, ours and the guard's. Nobody else waits: remove it.
        if Arc::strong_count(&self.lock) == 3 {
            map.remove(&self.uid);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use object_store::ObjectStore;
    use object_store::memory::InMemory;
    use object_store::throttle::{ThrottleConfig, ThrottledStore};

    use super::*;
    use crate::archive::STILL_WRITING;

    /// A store on three in-memory replicas, the third taking `slow` for each write, and the
    /// bytes of a small synthetic CT instance.
    fn with_slow_third(
        index: &Index,
        slow: Duration,
        study: u32,
    ) -> (Arc<Storage>, Store, Vec<u8>) {
        let slowed = ThrottledStore::new(
            InMemory::new(),
            ThrottleConfig {
                wait_put_per_call: slow,
                ..ThrottleConfig::default()
            },
        );
        let stores: Vec<(String, Arc<dyn ObjectStore>)> = vec![
            ("r1".into(), Arc::new(InMemory::new())),
            ("r2".into(), Arc::new(InMemory::new())),
            ("r3".into(), Arc::new(slowed)),
        ];
        let storage = Arc::new(Storage::from_stores(stores, None, "dicom").unwrap());
        let store = Store::new(
            index.clone(),
            storage.clone(),
            1 << 20,
            None,
            Box::new(|_| OnConflict::Reject),
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ct.dcm");
        crate::synth::Spec::ct(study, 1, 1, 64)
            .write(&file)
            .unwrap();
        (storage, store, std::fs::read(&file).unwrap())
    }

    /// A replica still writing when the quorum answered is in the repair queue from the
    /// moment the row is committed until its write succeeds: a crash in between leaves it
    /// queued, never silently short of a copy.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_straggler_is_queued_with_the_row_and_cleared_once_written() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(&dir.path().join("i.sqlite")).unwrap();
        let (storage, store, bytes) = with_slow_third(&index, Duration::from_secs(3), 7);
        let started = Instant::now();
        let rec = store
            .store_part10(&bytes, None, &mut Subject::default())
            .await
            .unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "answered at the quorum"
        );
        let queue = index.repair_queue().await.unwrap();
        assert_eq!(queue.len(), 1, "{queue:?}");
        assert_eq!(
            (queue[0].replica.as_str(), queue[0].reason.as_str()),
            ("r3", STILL_WRITING)
        );
        assert_eq!(queue[0].storage_key, rec.storage_key);
        let cleared = async {
            while !index.repair_queue().await.unwrap().is_empty() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(20), cleared)
            .await
            .expect("the entry is cleared once the slow replica has the object");
        assert!(storage.exists_on(2, &rec.storage_key).await);
        assert_eq!(storage.background_stats().running, 0);
    }

    /// An index row that cannot be committed fails the C-STORE, and not before every copy
    /// is gone, the one still being written included: a re-send then starts from nothing
    /// and no removal can overtake it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_row_that_is_not_committed_leaves_no_copy_behind_when_answered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("i.sqlite");
        let index = Index::open(&path).unwrap();
        // A real SQLite failure at insert time, from a second connection to the same file.
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute_batch(
                "CREATE TRIGGER refuse BEFORE INSERT ON instance \
                 BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;",
            )
            .unwrap();
        let (storage, store, bytes) = with_slow_third(&index, Duration::from_secs(2), 8);
        let refused = store
            .store_part10(&bytes, None, &mut Subject::default())
            .await;
        assert!(refused.is_err(), "{refused:?}");
        let spec = crate::synth::Spec::ct(8, 1, 1, 64);
        let uid = |u: &str| Uid::parse(u).unwrap();
        let key = object_key(
            "dicom",
            &uid(&spec.study_uid),
            &uid(&spec.series_uid),
            &uid(&spec.sop_uid),
        );
        for i in 0..3 {
            assert!(!storage.exists_on(i, &key).await, "replica {i} holds {key}");
        }
        assert_eq!(storage.background_stats().running, 0);
        assert_eq!(index.counts().await.unwrap().instances, 0);
        assert!(index.repair_queue().await.unwrap().is_empty());
    }
}
