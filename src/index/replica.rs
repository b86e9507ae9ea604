//! The index side of HA replication: the change log read back in order (epoch, seq, record)
//! for the primary to ship, records applied on the standby at exactly the primary's seq, the
//! epoch stamped on new rows, and a consistent snapshot of the whole database for a standby
//! whose history is not a prefix of the primary's.

use std::path::Path;
use std::sync::atomic::Ordering;

use rusqlite::{Connection, OptionalExtension, params};

use super::account::AccountChange;
use super::deletion::Deletion;
use super::{Done, Index, IndexError, InsertOutcome, InstanceRecord, Work, insert_rows};

/// What one change-log row changed (its `kind` column: `instance`, `account` or `delete`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Change {
    /// An instance was indexed. Shipped as `"record"`, the field's name from before accounts
    /// were replicated, so an instance row reads the same on the wire as it did.
    #[serde(rename = "record")]
    Instance(Box<InstanceRecord>),
    #[serde(rename = "account")]
    Account(AccountChange),
    #[serde(rename = "delete")]
    Delete(Deletion),
}

/// One change-log row as shipped to the standby.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ChangeRecord {
    pub epoch: u64,
    pub seq: i64,
    #[serde(flatten)]
    pub change: Change,
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
                "SELECT epoch, seq, kind, record FROM changelog WHERE seq > ?1 ORDER BY seq
                 LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![after, limit as i64], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (epoch, seq, kind, json) = row?;
                let change = match kind.as_str() {
                    "instance" => Change::Instance(serde_json::from_str(&json)?),
                    "account" => Change::Account(serde_json::from_str(&json)?),
                    "delete" => Change::Delete(serde_json::from_str(&json)?),
                    _ => return Err(IndexError::UnknownChange { seq, kind }),
                };
                out.push(ChangeRecord {
                    epoch: epoch as u64,
                    seq,
                    change,
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
            change: Box::new(change.change),
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
    change: &Change,
    missed: &[(String, String)],
) -> Result<Done, IndexError> {
    let (last, _) = last_change(c)?;
    if seq != last + 1 {
        return Err(IndexError::OutOfOrder {
            expected: last + 1,
            got: seq,
        });
    }
    let became = |got: i64| {
        if got == seq {
            Ok(())
        } else {
            Err(IndexError::Diverged {
                seq,
                reason: format!("it became change-log row {got}"),
            })
        }
    };
    match change {
        Change::Instance(record) => match insert_rows(c, record, missed, epoch)? {
            InsertOutcome::Inserted { seq: got } => {
                became(got)?;
                Ok(Done::Instance(InsertOutcome::Inserted { seq }))
            }
            InsertOutcome::AlreadyPresent { .. } => Err(IndexError::Diverged {
                seq,
                reason: format!(
                    "SOP Instance {} is already indexed",
                    record.sop_instance_uid
                ),
            }),
        },
        Change::Account(account) => {
            let outcome = super::account_rows(c, account, epoch, true)?;
            became(outcome.seq.unwrap_or_default())?;
            Ok(Done::Account(outcome))
        }
        Change::Delete(deletion) => {
            let deleted = super::deletion::delete_rows(c, deletion, epoch, true)?;
            became(deleted.seq.unwrap_or_default())?;
            Ok(Done::Deleted(deleted))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rows_ship_with_their_kind_and_an_instance_row_as_before_accounts_were_replicated() {
        // An instance row as a primary without account replication shipped it.
        let before = json!({"epoch": 3, "seq": 7, "record": {
            "patient_id": "P1", "issuer_of_patient_id": "",
            "study_instance_uid": "1.2.3", "series_instance_uid": "1.2.3.4",
            "sop_instance_uid": "1.2.3.4.5", "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
            "transfer_syntax_uid": "1.2.840.10008.1.2.1", "storage_key": "k",
            "size": 10, "sha256": "00"}});
        let row: ChangeRecord = serde_json::from_value(before.clone()).unwrap();
        let Change::Instance(record) = &row.change else {
            panic!("{row:?}")
        };
        assert_eq!(record.sop_instance_uid, "1.2.3.4.5");
        assert_eq!(
            record.digest, "00",
            "a row's checksum as it was named before BLAKE3"
        );
        assert_eq!(
            serde_json::to_value(&row).unwrap()["record"]["sop_instance_uid"],
            before["record"]["sop_instance_uid"]
        );
        let account = ChangeRecord {
            epoch: 3,
            seq: 8,
            change: Change::Account(AccountChange::Remove { name: "x".into() }),
        };
        let shipped = serde_json::to_value(&account).unwrap();
        assert_eq!(
            shipped,
            json!({"epoch": 3, "seq": 8, "account": {"op": "remove", "name": "x"}})
        );
        assert_eq!(
            serde_json::from_value::<ChangeRecord>(shipped).unwrap(),
            account
        );
    }
}
