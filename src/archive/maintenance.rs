//! The archive's maintenance passes: the repair worker (heal every queued copy from a good
//! one), verify (check every copy of every object and preview), and the index read back from
//! storage (a whole rebuild, or the objects a solo primary stored that this node's index
//! lacks). Data is written before metadata, so storage is the truth these passes return to.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tracing::info;

use crate::config::Config;
use crate::index::{Index, IndexError};
use crate::net::Shutdown;
use crate::storage::{Storage, StorageError};

#[derive(Debug, thiserror::Error)]
pub enum MaintenanceError {
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("index: {0}")]
    Index(#[from] IndexError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

/// Why one stored object could not be turned back into its index record.
#[derive(Debug, thiserror::Error)]
pub enum UnreadableObject {
    #[error("reading it: {0}")]
    Storage(#[from] StorageError),
    #[error("{0}")]
    Part10(#[from] crate::part10::Part10Error),
    #[error("{0}")]
    Record(#[from] crate::index::RecordError),
    #[error("its key is not an object key")]
    BadKey,
    #[error("its UIDs do not match its key")]
    UidsDiffer,
    #[error("indexing it: {0}")]
    Index(#[from] IndexError),
}

/// Remove a SQLite database's write-ahead log and shared-memory files (after a rename
/// of the main file, so that no stale WAL is replayed into a different database).
fn remove_sqlite_sidecars(db: &std::path::Path) {
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
}

/// Outcome of `rebuild_index`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RebuildSummary {
    pub objects: u64,
    pub indexed: u64,
    pub skipped: u64,
}

/// Rebuild the index from what is in storage: every object key is read, its header parsed
/// and indexed into a fresh database, which then replaces the old one (kept as `.bak`).
/// Run it with the node stopped.
pub async fn rebuild_index(
    config: &Config,
    progress: bool,
) -> Result<RebuildSummary, MaintenanceError> {
    use crate::storage::parse_object_key;

    let storage = Storage::open(
        &config.storage.replicas,
        config.storage.write_quorum,
        &config.storage.prefix,
    )?;
    let target = config.index.path.clone();
    let fresh = target.with_extension("rebuild.sqlite");
    let _ = std::fs::remove_file(&fresh);
    remove_sqlite_sidecars(&fresh);
    let index = Index::open(&fresh)?;
    let tombstones = tombstones_of(&target).await;
    let deleted: std::collections::HashSet<&str> =
        tombstones.iter().map(|(k, _)| k.as_str()).collect();
    let keys: Vec<String> = storage
        .list_keys()
        .await?
        .into_iter()
        .filter(|k| parse_object_key(storage.prefix(), k).is_some())
        .filter(|k| !deleted.contains(k.as_str()))
        .collect();
    let bar = crate::tools::progress_bar(progress, keys.len() as u64);
    let mut summary = RebuildSummary::default();
    for key in keys {
        summary.objects += 1;
        bar.inc(1);
        let indexed = async {
            let rec = record_from_storage(&storage, &key).await?;
            index.insert(rec, Vec::new()).await?;
            Ok::<(), UnreadableObject>(())
        }
        .await;
        match indexed {
            Ok(()) => summary.indexed += 1,
            Err(e) => {
                summary.skipped += 1;
                tracing::warn!(key, error = %e, "object not indexed");
            }
        }
    }
    bar.finish_and_clear();
    drop(deleted);
    index.add_tombstones(tombstones).await?;
    drop(index);
    if target.exists() {
        let backup = target.with_extension("sqlite.bak");
        std::fs::rename(&target, &backup).map_err(|source| MaintenanceError::Io {
            what: format!("moving {} aside", target.display()),
            source,
        })?;
        remove_sqlite_sidecars(&target);
    }
    std::fs::rename(&fresh, &target).map_err(|source| MaintenanceError::Io {
        what: format!("installing {}", target.display()),
        source,
    })?;
    remove_sqlite_sidecars(&fresh);
    Ok(summary)
}

/// The tombstones of the index at `path`, which a rebuild keeps (their objects are deleted
/// instances not yet gone from every replica); none when it is missing or unreadable.
async fn tombstones_of(path: &std::path::Path) -> Vec<(String, String)> {
    if !path.exists() {
        return Vec::new();
    }
    let read = async {
        let old = Index::open(path)?;
        old.tombstones("", usize::MAX >> 1).await
    };
    match read.await {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(index = %path.display(), error = %e,
                "the old index's deletions could not be read; deleted objects still in storage are indexed again");
            Vec::new()
        }
    }
}

/// The index record of a stored object, read back from storage: its header parsed, its
/// UIDs checked against its key, size and SHA-256 computed.
pub async fn record_from_storage(
    storage: &Storage,
    key: &str,
) -> Result<crate::index::InstanceRecord, UnreadableObject> {
    use crate::index::record;
    use crate::storage::parse_object_key;

    let bytes = storage.get(key).await?;
    let (meta, offset) = crate::part10::split(&bytes)?;
    let ts = meta.transfer_syntax().to_string();
    let header = record::parse_header(
        &bytes[offset..],
        &ts,
        crate::config::DEFAULT_MAX_OBJECT_SIZE,
    )?;
    let mut rec = record::extract(&header)?;
    let (study, series, sop) =
        parse_object_key(storage.prefix(), key).ok_or(UnreadableObject::BadKey)?;
    if (
        rec.study_instance_uid.as_str(),
        rec.series_instance_uid.as_str(),
        rec.sop_instance_uid.as_str(),
    ) != (study.as_str(), series.as_str(), sop.as_str())
    {
        return Err(UnreadableObject::UidsDiffer);
    }
    rec.transfer_syntax_uid = ts;
    rec.storage_key = key.to_string();
    rec.size = bytes.len() as u64;
    rec.digest = crate::storage::digest::record(&bytes);
    rec.read_check = Some(crate::storage::digest::read_check(&bytes));
    rec.calling_ae_title = meta
        .source_application_entity_title()
        .map(|s| s.trim().to_string());
    Ok(rec)
}

/// Index every object in storage that the index does not have (HA: a node taking over from
/// a primary that went on alone, whose last records it never received; the objects are on
/// the shared storage because data is written before metadata), except deleted ones whose
/// removal is still pending (tombstoned). Returns how many were added.
pub async fn recover_from_storage(
    index: &Index,
    storage: &Storage,
) -> Result<u64, MaintenanceError> {
    use crate::storage::parse_object_key;
    let mut recovered = 0;
    for key in storage.list_keys().await? {
        let Some((_, _, sop)) = parse_object_key(storage.prefix(), &key) else {
            continue;
        };
        if index.instance(sop.as_str()).await?.is_some() || index.has_tombstone(&key).await? {
            continue;
        }
        match record_from_storage(storage, &key).await {
            Ok(rec) => {
                index.insert(rec, Vec::new()).await?;
                recovered += 1;
                tracing::warn!(
                    key,
                    "indexed from storage: stored by the previous primary after this node last heard from it"
                );
            }
            Err(e) => tracing::warn!(key, error = %e, "object in storage could not be indexed"),
        }
    }
    Ok(recovered)
}

/// Outcome of one repair pass.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RepairSummary {
    pub repaired: u64,
    pub failed: u64,
    /// Entries for replicas no longer configured, dropped.
    pub dropped: u64,
    /// Previews with no good copy left, set to be rendered again.
    pub rerender: u64,
}

/// Work through the repair queue once: heal every listed replica from a good copy (checked
/// against the recorded SHA-256) and clear the entries that succeeded.
pub async fn repair_pass(index: &Index, storage: &Storage) -> Result<RepairSummary, IndexError> {
    use crate::storage::repair::{Expected, RepairError};
    let mut s = RepairSummary::default();
    let mut forgotten = std::collections::HashSet::new();
    for (key, replica, size, digest) in index.repair_tasks().await? {
        if forgotten.contains(&key) {
            continue;
        }
        let expected = Expected::new(key.clone(), size, digest);
        match storage.repair(&replica, &expected).await {
            Ok(()) => {
                index.clear_repair(&key, &replica).await?;
                s.repaired += 1;
            }
            Err(RepairError::UnknownReplica(_)) => {
                tracing::warn!(
                    replica,
                    key,
                    "repair entry for a replica that is no longer configured; dropped"
                );
                index.clear_repair(&key, &replica).await?;
                s.dropped += 1;
            }
            Err(RepairError::NoGoodCopy(_)) if index.forget_lost_preview(&key).await? => {
                tracing::warn!(key, "no good copy of a preview left; it is rendered again");
                forgotten.insert(key);
                s.rerender += 1;
            }
            Err(e) => {
                tracing::debug!(error = %e, "repair failed; will retry");
                s.failed += 1;
            }
        }
    }
    if s != RepairSummary::default() {
        info!(
            repaired = s.repaired,
            failed = s.failed,
            dropped = s.dropped,
            rerender = s.rerender,
            "repair pass"
        );
    }
    Ok(s)
}

/// An interrupted put's leftover older than this is removed: no put lasts that long
/// (`storage::REPLICA_OP_TIMEOUT` bounds each replica's write).
pub const ABANDONED_UPLOAD_AGE: Duration = Duration::from_secs(600);
/// How often the repair worker looks for them (a listing of every replica).
const ABANDONED_UPLOAD_SWEEP: Duration = Duration::from_secs(3600);

/// The background repair worker: one pass per interval until shutdown (repairs, then the
/// deleted objects still to remove), and a sweep of abandoned uploads on the first pass and
/// then hourly.
pub(crate) async fn repair_worker(
    store: Arc<super::store::Store>,
    interval: Duration,
    mut shutdown: Shutdown,
) {
    let mut last_sweep: Option<std::time::Instant> = None;
    // Its own task: a replica that stopped answering would hold each HEAD for its timeout,
    // and the repair passes must not wait for that.
    let latest = {
        let store = store.clone();
        let mut shutdown = shutdown.clone();
        async move {
            tokio::select! {
                done = queue_missing_latest(&store.index, &store.storage) => match done {
                    Ok(0) => {}
                    Ok(n) => info!(
                        queued = n,
                        "copies of the latest objects missing: queued for repair"
                    ),
                    Err(e) => tracing::warn!(error = %e, "checking the latest objects' copies failed"),
                },
                _ = shutdown.wait() => {}
            }
        }
    };
    let latest = tokio::spawn(latest);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.wait() => {
                let _ = latest.await;
                return;
            }
        }
        if let Err(e) = repair_pass(&store.index, &store.storage).await {
            tracing::warn!(error = %e, "repair pass failed");
        }
        if let Err(e) = store.remove_deleted().await {
            tracing::warn!(error = %e, "removing deleted objects failed");
        }
        if last_sweep.is_none_or(|t| t.elapsed() >= ABANDONED_UPLOAD_SWEEP) {
            store
                .storage
                .remove_abandoned_uploads(ABANDONED_UPLOAD_AGE)
                .await;
            last_sweep = Some(std::time::Instant::now());
        }
    }
}

/// At the start of serving: look (HEAD, no reading) for the copies of the objects and
/// previews stored last that a replica does not hold, as many as can have had writes still
/// running in the background when the node that stored them stopped
/// (`storage::BACKGROUND_WRITES`), and queue them for repair. After a crash of this node their
/// entries are in this index already; after an HA takeover they were in the old primary's,
/// which a standby does not receive. Returns how many copies were queued.
pub async fn queue_missing_latest(index: &Index, storage: &Storage) -> Result<u64, IndexError> {
    use crate::storage::BACKGROUND_WRITES;
    let objects = index.latest_objects(BACKGROUND_WRITES).await?;
    let previews = index.latest_previews(BACKGROUND_WRITES).await?;
    let mut queued = 0;
    for (_, key, size, digest) in objects.into_iter().chain(previews) {
        let expected = crate::storage::Expected::new(key, size, digest);
        for (replica, problem) in storage.missing_copies(&expected).await {
            tracing::warn!(replica, key = %expected.key, %problem, "copy of a recent object missing");
            index
                .queue_repair(&expected.key, &replica, &problem)
                .await?;
            queued += 1;
        }
    }
    Ok(queued)
}

/// Outcome of `verify_all`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct VerifySummary {
    pub objects: u64,
    /// Stored previews checked.
    pub previews: u64,
    /// Replica copies missing, unreadable or not matching size and checksum (now queued).
    pub bad_copies: u64,
}

/// Check every indexed object and every stored preview on every replica (exists, size,
/// checksum) and queue a repair for every bad copy.
pub async fn verify_all(
    index: &Index,
    storage: &Storage,
    progress: bool,
) -> Result<VerifySummary, IndexError> {
    let total = index.counts().await?.instances + index.preview_counts().await?.done;
    let bar = crate::tools::progress_bar(progress, total);
    let mut s = VerifySummary::default();
    s.objects = verify_batches(index, storage, &bar, &mut s.bad_copies, |after| {
        index.objects(after, 1000)
    })
    .await?;
    s.previews = verify_batches(index, storage, &bar, &mut s.bad_copies, |after| {
        index.stored_previews(after, 1000)
    })
    .await?;
    bar.finish_and_clear();
    Ok(s)
}

/// Verify every (row id, key, size, digest) that `next(after)` pages through, counting bad
/// copies into `bad_copies`; returns how many were checked.
async fn verify_batches<F, Fut>(
    index: &Index,
    storage: &Storage,
    bar: &indicatif::ProgressBar,
    bad_copies: &mut u64,
    next: F,
) -> Result<u64, IndexError>
where
    F: Fn(i64) -> Fut,
    Fut: Future<Output = Result<Vec<(i64, String, u64, String)>, IndexError>>,
{
    use crate::storage::repair::Expected;
    let mut checked = 0;
    let mut after = 0i64;
    loop {
        let batch = next(after).await?;
        let Some(last) = batch.last() else { break };
        after = last.0;
        for (_, key, size, digest) in batch {
            let expected = Expected::new(key, size, digest);
            *bad_copies += super::verify(storage, index, &expected).await?;
            checked += 1;
            bar.inc(1);
        }
    }
    Ok(checked)
}
