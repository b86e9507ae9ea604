//! The index side of deleting instances (`archive::delete` drives it). The rules, once:
//! 1. An instance's rows go in one transaction: its instance, preview and metadata rows,
//!    its repair-queue entries, and its series, study and patient once they hold nothing
//!    else; the precomputed counts follow.
//! 2. In the same transaction a tombstone is written for its object and its preview's key.
//!    A tombstone stays until every replica has lost that object (`forget_tombstone`), so
//!    that recovery from storage and a rebuild never index a deleted instance again.
//! 3. A key that is indexed again (the instance stored anew) loses its tombstones
//!    (`insert_rows`), and a key still named by an instance or a preview row is never
//!    removable (`removable`): a re-stored instance's object is never removed.
//! 4. The deletion is a change-log row of kind `delete` naming the instances, replicated to
//!    the standby like an instance row; on the primary, a deletion that removed nothing
//!    writes no row.

use rusqlite::{Connection, OptionalExtension, params};

use super::{Index, IndexError, Work, preview_key};

/// Instances to delete, by SOP Instance UID (the change-log row of kind `delete`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Deletion {
    pub instances: Vec<String>,
}

/// What a deletion did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Deleted {
    /// Instances whose rows were removed.
    pub instances: u64,
    /// The tombstoned keys, each with the SOP Instance UID it belonged to: objects and
    /// previews, to be removed from every replica.
    pub tombstones: Vec<(String, String)>,
    /// Its change-log row (none when nothing was indexed).
    pub seq: Option<i64>,
}

impl Index {
    /// Remove these instances from the index and tombstone their objects, in one transaction
    /// with its change-log row. Instances not indexed are passed over.
    pub async fn delete_instances(&self, deletion: Deletion) -> Result<Deleted, IndexError> {
        match self.submit(Work::Delete(Box::new(deletion))).await? {
            super::Done::Deleted(d) => Ok(d),
            other => Ok(super::unreachable_job(other)),
        }
    }

    /// Up to `limit` tombstones (key, SOP Instance UID) after key `after`, in key order.
    pub async fn tombstones(
        &self,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(String, String)>, IndexError> {
        let after = after.to_string();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT storage_key, sop_instance_uid FROM deleted_object
                 WHERE storage_key > ?1 ORDER BY storage_key LIMIT ?2",
            )?;
            let rows =
                stmt.query_map(params![after, limit as i64], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Whether `key` was deleted and its object is not yet gone from every replica: recovery
    /// and a rebuild must not index it.
    pub async fn has_tombstone(&self, key: &str) -> Result<bool, IndexError> {
        let key = key.to_string();
        self.read(move |c| has_tombstone(c, &key)).await
    }

    /// Whether `key` may be removed from storage now: it has a tombstone and no instance or
    /// preview row names it (rule 3).
    pub async fn removable(&self, key: &str) -> Result<bool, IndexError> {
        let key = key.to_string();
        self.read(move |c| {
            Ok(has_tombstone(c, &key)?
                && c.query_row(
                    "SELECT NOT EXISTS (SELECT 1 FROM instance WHERE storage_key = ?1)
                        AND NOT EXISTS (SELECT 1 FROM preview WHERE storage_key = ?1)",
                    params![key],
                    |r| r.get::<_, bool>(0),
                )?)
        })
        .await
    }

    /// Drop a tombstone: every replica has lost its object.
    pub async fn forget_tombstone(&self, key: &str) -> Result<(), IndexError> {
        let key = key.to_string();
        self.apply(Box::new(move |c| {
            c.execute(
                "DELETE FROM deleted_object WHERE storage_key = ?1",
                params![key],
            )?;
            Ok(())
        }))
        .await
    }

    /// Write tombstones (key, SOP Instance UID) carried over from another index (a rebuild).
    pub async fn add_tombstones(&self, keys: Vec<(String, String)>) -> Result<(), IndexError> {
        self.apply(Box::new(move |c| {
            for (key, sop) in &keys {
                tombstone(c, key, sop)?;
            }
            Ok(())
        }))
        .await
    }
}

fn has_tombstone(c: &Connection, key: &str) -> Result<bool, IndexError> {
    Ok(c.query_row(
        "SELECT EXISTS (SELECT 1 FROM deleted_object WHERE storage_key = ?1)",
        params![key],
        |r| r.get::<_, bool>(0),
    )?)
}

/// Write (or renew) the tombstone of `key`.
pub(super) fn tombstone(c: &Connection, key: &str, sop: &str) -> Result<(), IndexError> {
    c.execute(
        "INSERT INTO deleted_object (storage_key, sop_instance_uid, deleted_at)
         VALUES (?1, ?2, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
         ON CONFLICT (storage_key) DO UPDATE SET sop_instance_uid = excluded.sop_instance_uid,
                                                 deleted_at = excluded.deleted_at",
        params![key, sop],
    )?;
    Ok(())
}

/// Rule 3: an object key indexed again is no longer deleted, nor is its preview's.
pub(super) fn clear_tombstones(c: &Connection, object_key: &str) -> Result<(), IndexError> {
    super::exec(
        c,
        "DELETE FROM deleted_object WHERE storage_key IN (?1, ?2)",
        params![object_key, preview_key(object_key)],
    )?;
    Ok(())
}

/// The writer's half of `delete_instances` (rules 1, 2 and 4). `replicated`: a row of the
/// primary's change log, written here at the same seq whatever it removed.
pub(super) fn delete_rows(
    c: &Connection,
    deletion: &Deletion,
    epoch: u64,
    replicated: bool,
) -> Result<Deleted, IndexError> {
    let mut deleted = Deleted::default();
    for sop in &deletion.instances {
        if let Some(keys) = delete_instance(c, sop)? {
            deleted.instances += 1;
            for key in keys {
                tombstone(c, &key, sop)?;
                deleted.tombstones.push((key, sop.clone()));
            }
        }
    }
    if deleted.instances == 0 && !replicated {
        return Ok(deleted);
    }
    c.execute(
        "INSERT INTO changelog (at, kind, sop_instance_uid, record, epoch)
         VALUES (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), 'delete', '', ?1, ?2)",
        params![serde_json::to_string(deletion)?, epoch as i64],
    )?;
    deleted.seq = Some(c.last_insert_rowid());
    Ok(deleted)
}

/// Remove one instance's rows and those of its series, study and patient left empty; the
/// keys to tombstone (object, preview), or None when it is not indexed.
fn delete_instance(c: &Connection, sop: &str) -> Result<Option<[String; 2]>, IndexError> {
    let Some((id, key, series, study, patient)) = c
        .query_row(
            "SELECT i.id, i.storage_key, i.series_fk, se.study_fk, st.patient_fk
             FROM instance i JOIN series se ON se.id = i.series_fk
                             JOIN study st ON st.id = se.study_fk
             WHERE i.sop_instance_uid = ?1",
            params![sop],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                ))
            },
        )
        .optional()?
    else {
        return Ok(None);
    };
    let keys = [key.clone(), preview_key(&key)];
    c.execute(
        "DELETE FROM instance_metadata WHERE instance_fk = ?1",
        params![id],
    )?;
    c.execute("DELETE FROM preview WHERE instance_fk = ?1", params![id])?;
    c.execute("DELETE FROM instance WHERE id = ?1", params![id])?;
    c.execute(
        "DELETE FROM repair_queue WHERE storage_key IN (?1, ?2)",
        params![keys[0], keys[1]],
    )?;

    c.execute(
        "UPDATE series SET num_instances = num_instances - 1 WHERE id = ?1",
        params![series],
    )?;
    let series_gone = c.execute(
        "DELETE FROM series WHERE id = ?1 AND num_instances = 0",
        params![series],
    )? as i64;
    c.execute(
        "UPDATE study SET num_instances = num_instances - 1, num_series = num_series - ?2
         WHERE id = ?1",
        params![study, series_gone],
    )?;
    let study_gone = c.execute(
        "DELETE FROM study WHERE id = ?1 AND num_instances = 0",
        params![study],
    )? as i64;
    if series_gone == 1 && study_gone == 0 {
        super::update_modalities_in_study(c, study)?;
    }
    c.execute(
        "UPDATE patient SET num_instances = num_instances - 1, num_series = num_series - ?2,
                            num_studies = num_studies - ?3
         WHERE id = ?1",
        params![patient, series_gone, study_gone],
    )?;
    c.execute(
        "DELETE FROM patient WHERE id = ?1 AND num_studies = 0",
        params![patient],
    )?;
    Ok(Some(keys))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::fixtures::{rec, replay};

    async fn count(idx: &Index, sql: &'static str) -> i64 {
        idx.read(move |c| Ok(c.query_row(sql, [], |r| r.get(0))?))
            .await
            .unwrap()
    }

    /// Two studies of patient P1: 1.1 with a CT and an MR series, 1.2 with one CT image.
    async fn corpus(idx: &Index) {
        for (study, series, sop, modality) in [
            ("1.1", "1.1.1", "1.1.1.1", "CT"),
            ("1.1", "1.1.1", "1.1.1.2", "CT"),
            ("1.1", "1.1.2", "1.1.2.1", "MR"),
            ("1.2", "1.2.1", "1.2.1.1", "CT"),
        ] {
            idx.insert(
                rec(study, series, sop, modality),
                vec![("r3".into(), "down".into())],
            )
            .await
            .unwrap();
        }
    }

    fn deletion(sops: &[&str]) -> Deletion {
        Deletion {
            instances: sops.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[tokio::test]
    async fn rows_go_counts_follow_and_every_key_is_tombstoned() {
        let dir = tempfile::tempdir().unwrap();
        let idx = Index::open(&dir.path().join("i.sqlite")).unwrap();
        corpus(&idx).await;

        // The MR series' only image: the series goes, and MR leaves ModalitiesInStudy.
        let d = idx.delete_instances(deletion(&["1.1.2.1"])).await.unwrap();
        assert_eq!(d.instances, 1);
        assert_eq!(d.seq, Some(5));
        assert_eq!(
            d.tombstones,
            vec![
                (
                    "dicom/1.1/1.1.2/1.1.2.1.dcm".to_string(),
                    "1.1.2.1".to_string()
                ),
                (
                    "dicom/1.1/1.1.2/1.1.2.1.jpg".to_string(),
                    "1.1.2.1".to_string()
                ),
            ]
        );
        assert_eq!(
            idx.study_counts("1.1").await.unwrap(),
            Some((1, 2, "CT".into()))
        );
        assert_eq!(count(&idx, "SELECT count(*) FROM series").await, 2);
        assert_eq!(count(&idx, "SELECT count(*) FROM preview").await, 3);
        assert_eq!(count(&idx, "SELECT count(*) FROM repair_queue").await, 3);
        assert_eq!(
            count(&idx, "SELECT num_series * 100 + num_instances FROM patient").await,
            203
        );

        // An unknown instance beside a known one: the known one goes, one row for both.
        let d = idx
            .delete_instances(deletion(&["9.9", "1.2.1.1"]))
            .await
            .unwrap();
        assert_eq!((d.instances, d.seq), (1, Some(6)));
        assert_eq!(idx.study_counts("1.2").await.unwrap(), None);
        assert_eq!(
            count(
                &idx,
                "SELECT num_studies * 100 + num_instances FROM patient"
            )
            .await,
            102
        );

        // Nothing indexed: nothing written, not even a change-log row.
        let d = idx.delete_instances(deletion(&["9.9"])).await.unwrap();
        assert_eq!(d, Deleted::default());
        assert_eq!(idx.last_change().await.unwrap().0, 6);

        // The patient goes with the last study.
        idx.delete_instances(deletion(&["1.1.1.1", "1.1.1.2"]))
            .await
            .unwrap();
        let c = idx.counts().await.unwrap();
        assert_eq!((c.patients, c.studies, c.series, c.instances), (0, 0, 0, 0));
        assert_eq!(c.repair_queue, 0);
        assert_eq!(idx.tombstones("", 100).await.unwrap().len(), 8);
    }

    #[tokio::test]
    async fn a_key_indexed_again_loses_its_tombstones_and_is_never_removable() {
        let dir = tempfile::tempdir().unwrap();
        let idx = Index::open(&dir.path().join("i.sqlite")).unwrap();
        corpus(&idx).await;
        let key = "dicom/1.2/1.2.1/1.2.1.1.dcm";
        idx.delete_instances(deletion(&["1.2.1.1"])).await.unwrap();
        assert!(idx.has_tombstone(key).await.unwrap());
        assert!(idx.removable(key).await.unwrap());
        assert!(!idx.removable("dicom/1.1/1.1.1/1.1.1.1.dcm").await.unwrap());

        idx.insert(rec("1.2", "1.2.1", "1.2.1.1", "CT"), vec![])
            .await
            .unwrap();
        assert!(!idx.has_tombstone(key).await.unwrap());
        assert!(!idx.has_tombstone(&preview_key(key)).await.unwrap());
        assert!(!idx.removable(key).await.unwrap());

        // A tombstone left behind by hand (or by a race) still never makes it removable.
        idx.add_tombstones(vec![(key.into(), "1.2.1.1".into())])
            .await
            .unwrap();
        assert!(!idx.removable(key).await.unwrap());
        idx.forget_tombstone(key).await.unwrap();
        assert!(!idx.has_tombstone(key).await.unwrap());
    }

    #[tokio::test]
    async fn a_deletion_replays_on_a_standby_at_the_same_seq() {
        let dir = tempfile::tempdir().unwrap();
        let primary = Index::open(&dir.path().join("p.sqlite")).unwrap();
        let standby = Index::open(&dir.path().join("s.sqlite")).unwrap();
        corpus(&primary).await;
        replay(&primary, &standby).await;
        primary
            .delete_instances(deletion(&["1.1.2.1", "1.2.1.1"]))
            .await
            .unwrap();
        let shipped = primary.changes_after(4, 10).await.unwrap();
        assert_eq!(shipped.len(), 1);
        assert_eq!(
            serde_json::to_value(&shipped[0]).unwrap()["delete"]["instances"],
            serde_json::json!(["1.1.2.1", "1.2.1.1"])
        );

        replay(&primary, &standby).await;
        assert_eq!(standby.last_change().await.unwrap(), (5, 0));
        // (Repair entries are not compared: `replay` ships no missed replicas.)
        let rows = |c: crate::index::Counts| (c.patients, c.studies, c.series, c.instances);
        assert_eq!(
            rows(standby.counts().await.unwrap()),
            rows(primary.counts().await.unwrap())
        );
        assert_eq!(
            standby.tombstones("", 10).await.unwrap(),
            primary.tombstones("", 10).await.unwrap()
        );
        assert_eq!(
            standby.study_counts("1.1").await.unwrap(),
            Some((1, 2, "CT".into()))
        );
    }
}
