//! Start-up: the instance rows a power loss may have kept without their objects.
//!
//! On a node that runs alone, the index row of an object up to `storage::DEFER_FLUSH_UP_TO`
//! (16 MiB) is committed before the one flush that makes it durable together with its copies
//! (`index::settled`); if the power goes before that flush returns, the row can survive while
//! the copies do not. Such a row was never acknowledged (a Success waits for the flush). Every
//! row committed after the settled position is checked against storage before the node
//! serves, and for each:
//! 1. Some replica holds a good copy: the row stays (acknowledged or not, the object is
//!    whole), and every other replica it was written to (not queued for repair for it) that
//!    holds no good copy is healed from it now, queued for repair if that fails: the node
//!    starts with every written copy whole.
//! 2. No replica holds a good copy, and each one answered that its copy is missing or wrong:
//!    the row was never acknowledged and is deleted (rows, tombstones, and what is left of
//!    its copies), as if the C-STORE had failed; a re-send stores it anew.
//! 3. No good copy, but some replica could not be read: nothing is removed on the word of a
//!    replica that did not answer; the row stays, queued for repair on every replica.
//!
//! Then the settled position moves to the last row.

use tracing::{info, warn};

use super::store::Store;
use crate::index::IndexError;
use crate::index::deletion::Deletion;
use crate::storage::repair::{Expected, Problem};

/// Why a replica's copy is bad after an unclean stop.
const AFTER_UNCLEAN_STOP: &str = "copy incomplete after an unclean stop";

/// What `Store::reconcile` found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reconciled {
    /// Rows after the settled position that were checked.
    pub checked: u64,
    /// Rows deleted: no replica held their object (rule 2).
    pub removed: u64,
    /// Bad copies healed from a good one (rule 1).
    pub healed: u64,
    /// Bad copies left in the repair queue (rules 1 and 3).
    pub queued: u64,
}

impl Store {
    /// Check the rows committed after the settled position against storage and act on each
    /// as the rules above say; then move the settled position past them.
    pub async fn reconcile(&self) -> Result<Reconciled, IndexError> {
        let rows = self.index.unsettled_instances().await?;
        let mut done = Reconciled::default();
        for row in rows {
            done.checked += 1;
            let expected = Expected::new(row.storage_key.clone(), row.size, row.digest.clone());
            let bad: Vec<(String, Problem)> = self.storage.verify(&expected).await;
            let replicas = self.storage.replicas().len();
            let definite = |p: &Problem| !matches!(p, Problem::Unreadable(_));
            if bad.len() == replicas && bad.iter().all(|(_, p)| definite(p)) {
                // 2. Never acknowledged.
                warn!(sop = %row.sop_instance_uid, key = %row.storage_key,
                      "an instance indexed just before an unclean stop has no copy on any replica: it was never acknowledged, and its row is removed");
                let deleted = self
                    .index
                    .delete_instances(Deletion {
                        instances: vec![row.sop_instance_uid.clone()],
                    })
                    .await?;
                for (key, sop) in &deleted.tombstones {
                    self.remove_object(key, sop).await?;
                }
                done.removed += 1;
                continue;
            }
            let has_good = bad.len() < replicas;
            for (replica, problem) in bad {
                if row.queued.contains(&replica) {
                    continue;
                }
                // 1. Healed from the good copy; 3. queued.
                let healed = has_good && self.storage.repair(&replica, &expected).await.is_ok();
                if healed {
                    done.healed += 1;
                } else {
                    let reason = format!("{AFTER_UNCLEAN_STOP}: {problem}");
                    self.index
                        .queue_repair(&expected.key, &replica, &reason)
                        .await?;
                    done.queued += 1;
                }
            }
        }
        self.index.mark_settled().await?;
        if done.checked > 0 {
            info!(
                checked = done.checked,
                removed = done.removed,
                healed = done.healed,
                queued = done.queued,
                "instances indexed just before an unclean stop checked against storage"
            );
        }
        Ok(done)
    }
}
