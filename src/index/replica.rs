//! The index side of HA replication: the change log read back in order (epoch, seq, record)
//! for the primary to ship, records applied on the standby at exactly the primary's seq, the
//! epoch stamped on new rows, and a consistent snapshot of the whole database for a standby
//! whose history is not a prefix of the primary's.

use std::path::Path;
use std::sync::atomic::Ordering;

use rusqlite::{Connection, OptionalExtension, params};

use super::{Index, IndexError, InsertOutcome, InstanceRecord, Work, insert_rows};

/// One change-log row as shipped to the standby.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ChangeRecord {
    pub epoch: u64,
    pub seq: i64,
    pub record: InstanceRecord,
}

impl Index {
    /// Stamp new change-log rows with `epoch` (the HA term this node now serves in).
    pub fn set_epoch(&self, epoch: u64) {
        self.inner.epoch.store(epoch, Ordering::SeqCst);
    }

    /// The last change-log row: (seq, epoch); (0, 0) when empty.
    pub async fn last_change(&self) -> Result<(i64, u64), IndexError> {
        self.read(last_change).await
    }

    /// The epoch of change-log row `seq`, if there is one.
    pub async fn epoch_at(&self, seq: i64) -> Result<Option<u64>, IndexError> {
        self.read(move |c| {
            Ok(c.query_row(
                "SELECT epoch FROM changelog WHERE seq = ?1",
                params![seq],
                |r| r.get::<_, i64>(0),
            )
            .optional()?
            .map(|e| e as u64))
        })
        .await
    }

    /// Change-log rows after `after`, in order, at most `limit`.
    pub async fn changes_after(
        &self,
        after: i64,
        limit: usize,
    ) -> Result<Vec<ChangeRecord>, IndexError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT epoch, seq, record FROM changelog WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![after, limit as i64], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (epoch, seq, json) = row?;
                out.push(ChangeRecord {
                    epoch: epoch as u64,
                    seq,
                    record: serde_json::from_str(&json)?,
                });
            }
            Ok(out)
        })
        .await
    }

    /// Apply a record shipped by the primary; it must be the next seq of this change log.
    pub async fn apply_replicated(
        &self,
        change: ChangeRecord,
        missed: Vec<(String, String)>,
    ) -> Result<(), IndexError> {
        self.submit(Work::Replicated {
            epoch: change.epoch,
            seq: change.seq,
            record: Box::new(change.record),
            missed,
        })
        .await
        .map(|_| ())
    }

    /// Write a consistent copy of the whole database to `path` (which must not exist).
    pub async fn snapshot_into(&self, path: &Path) -> Result<(), IndexError> {
        let target = path.display().to_string();
        self.read(move |c| {
            c.execute("VACUUM INTO ?1", params![target])?;
            Ok(())
        })
        .await
    }
}

fn last_change(c: &Connection) -> Result<(i64, u64), IndexError> {
    Ok(c.query_row(
        "SELECT seq, epoch FROM changelog ORDER BY seq DESC LIMIT 1",
        [],
        |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)? as u64)),
    )
    .optional()?
    .unwrap_or((0, 0)))
}

/// The writer's half of `apply_replicated`.
pub(super) fn apply_rows(
    c: &Connection,
    epoch: u64,
    seq: i64,
    record: &InstanceRecord,
    missed: &[(String, String)],
) -> Result<InsertOutcome, IndexError> {
    let (last, _) = last_change(c)?;
    if seq != last + 1 {
        return Err(IndexError::OutOfOrder {
            expected: last + 1,
            got: seq,
        });
    }
    match insert_rows(c, record, missed, epoch)? {
        InsertOutcome::Inserted { seq: got } if got == seq => Ok(InsertOutcome::Inserted { seq }),
        InsertOutcome::Inserted { seq: got } => Err(IndexError::Diverged {
            seq,
            reason: format!("it became change-log row {got}"),
        }),
        InsertOutcome::AlreadyPresent { .. } => Err(IndexError::Diverged {
            seq,
            reason: format!(
                "SOP Instance {} is already indexed",
                record.sop_instance_uid
            ),
        }),
    }
}
