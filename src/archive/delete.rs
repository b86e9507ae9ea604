//! Deleting instances (a study, a series or one instance): the index forgets them first, then
//! their objects leave every replica. In steps:
//! 1. Find the instances in the index.
//! 2. Remove their rows and tombstone their objects and previews in one index transaction
//!    (`index::deletion`) per `INSTANCES_PER_STEP` instances; in an HA pair, wait until the
//!    standby has that change too. From here on no query, retrieve or read names them.
//! 3. Remove each object and preview from every replica, under the instance's lock (so that
//!    a store of the same instance cannot interleave) and only while its tombstone stands and
//!    no row names its key again; a key gone from every replica loses its tombstone.
//! 4. What a replica could not remove (down, refusing) keeps its tombstone: the repair worker
//!    retries it (`remove_deleted`), and recovery from storage and a rebuild pass over it.
//!
//! Why in this order: removing objects before the index (or before the standby confirmed)
//! would leave rows naming objects that no replica holds, and a takeover in between would
//! serve them; the other way round, a crash between the steps leaves only tombstoned objects,
//! which step 4 finishes.

use tracing::{info, warn};

use super::store::{Store, StoreError};
use crate::index::deletion::Deletion;
use crate::index::{Index, IndexError};
use crate::storage::Uid;

/// Tombstones read at a time by `remove_deleted`.
const PAGE: usize = 500;
/// Instances per deletion transaction and change-log row. The row names them (up to 67 bytes
/// each) and travels to the standby in one replication frame, which may not exceed 1 MiB
/// (`ha::replication`): 1000 make about 67 KiB. A larger study is deleted in several steps,
/// each whole; one cut short by a crash leaves the rest of the study indexed, to delete again.
const INSTANCES_PER_STEP: usize = 1000;

/// What a deletion did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeleteReport {
    /// Instances removed from the index.
    pub instances: u64,
    /// Objects and previews gone from every replica.
    pub removed: u64,
    /// Objects and previews some replica still holds; the repair worker retries them.
    pub pending: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum DeleteError {
    #[error("no such {0} in this archive")]
    NotFound(String),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("index: {0}")]
    Index(#[from] IndexError),
}

impl Store {
    /// Delete a study, one of its series (`series`), or one instance of it (`sop`).
    pub async fn delete(
        &self,
        study: &Uid,
        series: Option<&Uid>,
        sop: Option<&Uid>,
    ) -> Result<DeleteReport, DeleteError> {
        // 1. The instances.
        let instances = self
            .index
            .instances_under(
                study.as_str(),
                series.map(Uid::as_str),
                sop.map(Uid::as_str),
            )
            .await?;
        if instances.is_empty() {
            let what = Index::named_under(
                study.as_str(),
                series.map(Uid::as_str),
                sop.map(Uid::as_str),
            );
            return Err(DeleteError::NotFound(what));
        }
        let sops: Vec<String> = instances.into_iter().map(|i| i.sop_instance_uid).collect();
        let mut report = DeleteReport::default();
        for step in sops.chunks(INSTANCES_PER_STEP) {
            // 2. Index rows and tombstones, confirmed by the standby.
            let deleted = self
                .index
                .delete_instances(Deletion {
                    instances: step.to_vec(),
                })
                .await?;
            if let Some(seq) = deleted.seq {
                self.confirm(seq).await?;
            }
            report.instances += deleted.instances;
            // 3. The objects.
            for (key, sop) in &deleted.tombstones {
                if self.remove_object(key, sop).await? {
                    report.removed += 1;
                } else {
                    report.pending += 1;
                }
            }
        }
        info!(%study, series = ?series.map(Uid::as_str), sop = ?sop.map(Uid::as_str),
              instances = report.instances, pending = report.pending, "deleted");
        Ok(report)
    }

    /// Step 4: retry the tombstones in key order (the repair worker's pass), until one still
    /// fails: a replica that cannot remove one object now is down or refusing, and would
    /// fail (or time out on) every other too. How many keys are now gone from every replica,
    /// and whether some are still pending.
    pub async fn remove_deleted(&self) -> Result<(u64, bool), IndexError> {
        let mut removed = 0;
        let mut after = String::new();
        loop {
            let page = self.index.tombstones(&after, PAGE).await?;
            let Some((last, _)) = page.last() else { break };
            after = last.clone();
            for (key, sop) in page {
                if !self.remove_object(&key, &sop).await? {
                    info!(
                        removed,
                        "deleted objects removed from storage; some are pending"
                    );
                    return Ok((removed, true));
                }
                removed += 1;
            }
        }
        if removed > 0 {
            info!(removed, "deleted objects removed from storage");
        }
        Ok((removed, false))
    }

    /// Step 3 for one key: whether it is gone (or no longer to be removed).
    pub(super) async fn remove_object(&self, key: &str, sop: &str) -> Result<bool, IndexError> {
        let _held = self.hold(sop).await;
        if !self.index.removable(key).await? {
            // Indexed again meanwhile (or already handled): not ours to remove.
            self.index.forget_tombstone(key).await?;
            return Ok(true);
        }
        let failed = self.storage.remove(key).await;
        if failed.is_empty() {
            self.index.forget_tombstone(key).await?;
            return Ok(true);
        }
        for (replica, error) in failed {
            warn!(
                key,
                replica, error, "deleted object not removed yet; will retry"
            );
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::OnConflict;
    use crate::index::fixtures::rec;
    use crate::index::replica::Change;
    use crate::index::{Index, bulk_load};
    use crate::storage::Storage;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_large_study_goes_in_steps_whose_rows_fit_a_replication_frame() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("i.sqlite");
        // 2500 instances with UIDs of 64 characters, indexed without objects (a replica
        // that does not hold an object has lost it: its removal counts as done).
        let uid = |i: u32| format!("1.2.3.{}.{i:05}", "9".repeat(52));
        let (study, series) = ("1.2.3", "1.2.3.1");
        bulk_load(
            &path,
            (1..=2500).map(|i| rec(study, series, &uid(i), "CT")),
            500,
            |_| {},
        )
        .unwrap();
        let index = Index::open(&path).unwrap();
        let replicas: Vec<String> = (1..=2)
            .map(|r| dir.path().join(format!("r{r}")).display().to_string())
            .collect();
        let storage = Arc::new(Storage::open(&replicas, None, "dicom").unwrap());
        let store = Store::new(
            index.clone(),
            storage,
            1 << 20,
            None,
            Box::new(|_| OnConflict::Reject),
        );

        let report = store
            .delete(&Uid::parse(study).unwrap(), None, None)
            .await
            .unwrap();
        assert_eq!(
            report,
            DeleteReport {
                instances: 2500,
                removed: 5000,
                pending: 0
            }
        );
        let rows: Vec<_> = index
            .changes_after(0, 10_000)
            .await
            .unwrap()
            .into_iter()
            .filter_map(|r| match &r.change {
                Change::Delete(d) => Some((d.instances.len(), serde_json::to_vec(&r).unwrap())),
                _ => None,
            })
            .collect();
        let sizes: Vec<usize> = rows.iter().map(|(n, _)| *n).collect();
        assert_eq!(sizes, [1000, 1000, 500]);
        for (_, json) in &rows {
            assert!(json.len() < 100 * 1024, "a row of {} bytes", json.len());
        }
        assert_eq!(index.counts().await.unwrap().instances, 0);
        assert!(index.tombstones("", 10).await.unwrap().is_empty());
    }
}
