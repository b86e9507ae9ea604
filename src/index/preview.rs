//! Preview bookkeeping in the index: which instances still need a preview, where a rendered
//! preview is stored (with its size and checksum, like an object), and which have none.

use rusqlite::{OptionalExtension, params};

use super::{Index, IndexError, MustFlush};

/// An instance whose preview is still to be rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviewTask {
    pub instance_id: i64,
    pub sop_instance_uid: String,
    /// The object's key, size, digest and read check (what the render worker reads).
    pub storage_key: String,
    pub size: u64,
    pub digest: String,
    pub read_check: Option<String>,
}

/// What became of an instance's preview.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PreviewState {
    Pending,
    Done {
        storage_key: String,
        size: u64,
        digest: String,
    },
    /// The object has no pixel data (SR, RT plan, waveform, ...).
    NoPixelData,
    /// The pixels could not be decoded or converted.
    Failed {
        reason: String,
    },
}

impl PreviewState {
    fn columns(
        &self,
    ) -> (
        &'static str,
        Option<&str>,
        Option<i64>,
        Option<&str>,
        Option<&str>,
    ) {
        match self {
            PreviewState::Pending => ("pending", None, None, None, None),
            PreviewState::Done {
                storage_key,
                size,
                digest,
            } => (
                "done",
                Some(storage_key),
                Some(*size as i64),
                Some(digest),
                None,
            ),
            PreviewState::NoPixelData => ("none", None, None, None, None),
            PreviewState::Failed { reason } => ("failed", None, None, None, Some(reason)),
        }
    }

    fn from_row(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<PreviewState> {
        let state: String = r.get(at)?;
        Ok(match state.as_str() {
            "done" => PreviewState::Done {
                storage_key: r.get(at + 1)?,
                size: r.get::<_, i64>(at + 2)? as u64,
                digest: r.get(at + 3)?,
            },
            "none" => PreviewState::NoPixelData,
            "failed" => PreviewState::Failed {
                reason: r.get::<_, Option<String>>(at + 4)?.unwrap_or_default(),
            },
            _ => PreviewState::Pending,
        })
    }
}

/// Preview rows by state, for `index stats` and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PreviewCounts {
    pub pending: u64,
    pub done: u64,
    pub none: u64,
    pub failed: u64,
}

/// The preview key of an object key: the sibling `.jpg` of `<SOPInstanceUID>.dcm`.
pub fn preview_key(object_key: &str) -> String {
    match object_key.strip_suffix(".dcm") {
        Some(stem) => format!("{stem}.jpg"),
        None => format!("{object_key}.jpg"),
    }
}

impl Index {
    /// Up to `limit` instances after instance row `after` whose preview is pending, oldest
    /// first.
    pub async fn pending_previews(
        &self,
        after: i64,
        limit: usize,
    ) -> Result<Vec<PreviewTask>, IndexError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT i.id, i.sop_instance_uid, i.storage_key, i.size, i.digest, i.read_check
                 FROM preview p JOIN instance i ON i.id = p.instance_fk
                 WHERE p.state = 'pending' AND p.instance_fk > ?1
                 ORDER BY p.instance_fk LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![after, limit as i64], |r| {
                Ok(PreviewTask {
                    instance_id: r.get(0)?,
                    sop_instance_uid: r.get(1)?,
                    storage_key: r.get(2)?,
                    size: r.get::<_, i64>(3)? as u64,
                    digest: r.get(4)?,
                    read_check: r.get(5)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Record an instance's preview outcome, and queue repairs for the replicas (location,
    /// error) that missed the preview's write, in one transaction.
    pub async fn set_preview(
        &self,
        instance_id: i64,
        state: PreviewState,
        missed: Vec<(String, String)>,
    ) -> Result<(), IndexError> {
        // Derived data: a preview outcome lost to a power failure is rendered again.
        self.apply_derived(Box::new(move |c| {
            let (s, key, size, sha, reason) = state.columns();
            let updated = c.execute(
                "UPDATE preview SET state = ?2, storage_key = ?3, size = ?4, digest = ?5,
                        reason = ?6, updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
                 WHERE instance_fk = ?1",
                params![instance_id, s, key, size, sha, reason],
            )?;
            let Some(key) = key else {
                return Ok(MustFlush(false));
            };
            if updated == 0 {
                // The instance was deleted while its preview was rendered: the preview's
                // object goes the way of the instance's (index::deletion), and the deletion
                // must not be undone by a power loss.
                super::deletion::tombstone(c, key, "")?;
                return Ok(MustFlush(true));
            }
            for (replica, why) in &missed {
                super::queue_repair_row(c, key, replica, why)?;
            }
            Ok(MustFlush(false))
        }))
        .await
    }

    /// A stored preview that no replica holds a good copy of any more (every copy removed or
    /// damaged): back to pending, so that the render worker makes it again, and its repair
    /// entries dropped. Returns whether `key` was such a preview (false for an object's key:
    /// objects are never given up on).
    pub async fn forget_lost_preview(&self, key: &str) -> Result<bool, IndexError> {
        let key = key.to_string();
        self.write(move |c| {
            let reset = c.execute(
                "UPDATE preview SET state = 'pending', storage_key = NULL, size = NULL,
                        digest = NULL, reason = NULL,
                        updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
                 WHERE storage_key = ?1 AND state = 'done'",
                params![key],
            )?;
            if reset > 0 {
                c.execute(
                    "DELETE FROM repair_queue WHERE storage_key = ?1",
                    params![key],
                )?;
            }
            Ok(reset > 0)
        })
        .await
    }

    /// The preview state of the instance with this SOP Instance UID (None: not indexed).
    pub async fn preview(
        &self,
        sop_instance_uid: &str,
    ) -> Result<Option<PreviewState>, IndexError> {
        let uid = sop_instance_uid.to_string();
        self.read(move |c| {
            c.query_row(
                "SELECT p.state, p.storage_key, p.size, p.digest, p.reason
                 FROM preview p JOIN instance i ON i.id = p.instance_fk
                 WHERE i.sop_instance_uid = ?1",
                params![uid],
                |r| PreviewState::from_row(r, 0),
            )
            .optional()
            .map_err(IndexError::from)
        })
        .await
    }

    /// Stored previews from preview row `after` on, at most `limit`: (row id, key, size,
    /// digest), for verification.
    pub async fn stored_previews(
        &self,
        after: i64,
        limit: usize,
    ) -> Result<Vec<(i64, String, u64, String)>, IndexError> {
        self.read(move |c| {
            super::stored_objects_page(
                c,
                "SELECT instance_fk, storage_key, size, digest FROM preview
                 WHERE state = 'done' AND instance_fk > ?1 ORDER BY instance_fk LIMIT ?2",
                after,
                limit,
            )
        })
        .await
    }

    /// The stored previews of the `limit` instances indexed last (instance row id, key, size,
    /// digest), newest first.
    pub async fn latest_previews(
        &self,
        limit: usize,
    ) -> Result<Vec<(i64, String, u64, String)>, IndexError> {
        self.read(move |c| {
            super::stored_objects_page(
                c,
                "SELECT instance_fk, storage_key, size, digest FROM preview
                 WHERE state = 'done' AND instance_fk > ?1 ORDER BY instance_fk DESC LIMIT ?2",
                0,
                limit,
            )
        })
        .await
    }

    pub async fn preview_counts(&self) -> Result<PreviewCounts, IndexError> {
        self.read(|c| {
            let mut out = PreviewCounts::default();
            let mut stmt = c.prepare("SELECT state, count(*) FROM preview GROUP BY state")?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                let n = r.get::<_, i64>(1)? as u64;
                match r.get::<_, String>(0)?.as_str() {
                    "pending" => out.pending = n,
                    "done" => out.done = n,
                    "none" => out.none = n,
                    _ => out.failed = n,
                }
            }
            Ok(out)
        })
        .await
    }

    /// The first instance (lowest Instance Number) of every series of a study, in series
    /// order: (series number, series description, SOP Instance UID). Empty when the study
    /// is unknown.
    pub async fn first_instance_of_each_series(
        &self,
        study_instance_uid: &str,
    ) -> Result<Vec<(Option<i64>, Option<String>, String)>, IndexError> {
        let uid = study_instance_uid.to_string();
        self.read(move |c| {
            let mut stmt = c.prepare(
                "SELECT se.series_number, se.series_description,
                        (SELECT i.sop_instance_uid FROM instance i WHERE i.series_fk = se.id
                         ORDER BY i.instance_number IS NULL, i.instance_number, i.id LIMIT 1)
                 FROM series se JOIN study st ON st.id = se.study_fk
                 WHERE st.study_instance_uid = ?1
                 ORDER BY se.series_number IS NULL, se.series_number, se.id",
            )?;
            let rows = stmt.query_map(params![uid], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preview_key_is_the_sibling_jpg() {
        assert_eq!(
            preview_key("dicom/1.2/1.3/1.4.dcm"),
            "dicom/1.2/1.3/1.4.jpg"
        );
    }
}
