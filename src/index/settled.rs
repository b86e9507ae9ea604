//! Which instance rows are known to be durable together with their objects' copies.
//!
//! On a node that runs alone, an instance row is committed before its object's copies are
//! durable: the copies of an object up to `storage::DEFER_FLUSH_UP_TO` (16 MiB) are written
//! and its row committed without a flush, then one `syncfs` makes both durable
//! (`Index::insert_unflushed`); a larger object's row is committed, with its flush, while its
//! copies are written and flushed (`Index::insert_ahead`). Until both are durable, a power loss can leave a row whose object
//! is not on disk (the kernel writes back in any order; a large object's copies may not even
//! be written yet): that row was never acknowledged. The rules, once:
//! 1. A row is *open* from its commit until it and its copies are durable (`Index::settled`),
//!    or until it was removed again after a failed write or flush. A row committed after its
//!    copies were durable (`Index::insert`) is never open.
//! 2. Every row up to `Settling::through` is settled: rows are committed in seq order and a
//!    row that is not open had its copies durable before its commit, so everything below the
//!    first open row is durable with its copies (a flush that settles row n also covers every
//!    row before it, but an older open row may still be waiting for its own copies: it stays
//!    open).
//! 3. That position is written into the index (table `settled`) in a later group commit, at
//!    most once per `WRITE_EVERY`: lagging is safe (start-up checks a few more rows), getting
//!    ahead is not, and it never goes back.
//! 4. A process that opens the index finds the rows after the written position unchecked
//!    (the last process may have stopped before their flush): it never moves the position
//!    past them (an administration command that opens the index writes it at close) until
//!    `archive::reconcile` has checked them against storage, removed those whose object has
//!    no good copy left (`Index::unsettled_instances`) and said so (`Index::mark_settled`).

use std::collections::BTreeSet;
use std::time::Duration;

use rusqlite::{Connection, params};

use super::{Index, IndexError};

/// How often at most the settled position is written (rule 3): one page more in a group
/// commit per second; a power loss leaves about that much of the change log to check.
pub(super) const WRITE_EVERY: Duration = Duration::from_secs(1);

/// The rows between their unflushed commit and their flush (rule 1), the last commit, and
/// the position found written at open while the rows after it are unchecked (rule 4).
#[derive(Debug, Default)]
pub(super) struct Settling {
    open: BTreeSet<i64>,
    last: i64,
    unchecked_after: Option<i64>,
}

impl Settling {
    /// At open: the position as written, and the last row.
    pub(super) fn new(written: i64, last: i64) -> Settling {
        Settling {
            open: BTreeSet::new(),
            last,
            unchecked_after: (written < last).then_some(written),
        }
    }

    /// The rows after the position found at open have been checked (rule 4).
    pub(super) fn checked(&mut self) {
        self.unchecked_after = None;
    }

    /// A group committed: `last` is its highest seq (if it wrote change-log rows), `open` the
    /// seqs of its unflushed inserts.
    pub(super) fn committed(&mut self, last: Option<i64>, open: impl IntoIterator<Item = i64>) {
        self.open.extend(open);
        if let Some(last) = last {
            self.last = self.last.max(last);
        }
    }

    /// Row `seq` is durable with its copies, or was removed again.
    pub(super) fn settled(&mut self, seq: i64) {
        self.open.remove(&seq);
    }

    /// Every row up to this seq is settled (rule 2).
    pub(super) fn through(&self) -> i64 {
        let through = match self.open.first() {
            Some(first) => first - 1,
            None => self.last,
        };
        match self.unchecked_after {
            Some(written) => through.min(written),
            None => through,
        }
    }
}

/// Move the written position up to `seq` (never back).
pub(super) fn write_position(c: &Connection, seq: i64) -> Result<(), IndexError> {
    super::exec(
        c,
        "UPDATE settled SET seq = max(seq, ?1) WHERE id = 0",
        params![seq],
    )?;
    Ok(())
}

/// An instance row after the settled position (rule 4), with the replicas its repair-queue
/// entries name (they were not written when it was committed, or are still being written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsettled {
    pub sop_instance_uid: String,
    pub study_instance_uid: String,
    pub series_instance_uid: String,
    pub storage_key: String,
    pub size: u64,
    pub digest: String,
    pub queued: Vec<String>,
}

impl Index {
    /// Row `seq`, committed by `insert_unflushed` or `insert_ahead`, is now durable with its
    /// object's copies (or was removed again).
    pub fn settled(&self, seq: i64) {
        self.inner.settling.lock().expect("settling").settled(seq);
    }

    /// The instance rows committed after the written settled position by this node while
    /// it ran alone (change-log rows of epoch 0: an HA pair never commits a row before its
    /// copies are flushed), that are still indexed.
    pub async fn unsettled_instances(&self) -> Result<Vec<Unsettled>, IndexError> {
        self.read(|c| {
            let mut stmt = c.prepare(
                "SELECT DISTINCT i.sop_instance_uid, st.study_instance_uid,
                        se.series_instance_uid, i.storage_key, i.size, i.digest
                 FROM changelog c
                 JOIN instance i ON i.sop_instance_uid = c.sop_instance_uid
                 JOIN series se ON se.id = i.series_fk
                 JOIN study st ON st.id = se.study_fk
                 WHERE c.seq > (SELECT seq FROM settled WHERE id = 0)
                   AND c.kind = 'instance' AND c.epoch = 0
                 ORDER BY i.id",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(Unsettled {
                    sop_instance_uid: r.get(0)?,
                    study_instance_uid: r.get(1)?,
                    series_instance_uid: r.get(2)?,
                    storage_key: r.get(3)?,
                    size: r.get::<_, i64>(4)? as u64,
                    digest: r.get(5)?,
                    queued: Vec::new(),
                })
            })?;
            let mut rows = rows.collect::<Result<Vec<_>, _>>()?;
            let mut queued =
                c.prepare("SELECT replica FROM repair_queue WHERE storage_key = ?1")?;
            for row in &mut rows {
                row.queued = queued
                    .query_map(params![row.storage_key], |r| r.get(0))?
                    .collect::<Result<Vec<String>, _>>()?;
            }
            Ok(rows)
        })
        .await
    }

    /// Write the settled position now, as far as rule 2 allows (after start-up checked the
    /// rows after it).
    pub async fn mark_settled(&self) -> Result<(), IndexError> {
        let settling = self.inner.settling.clone();
        self.apply(Box::new(move |c| {
            let mut settling = settling.lock().expect("settling");
            settling.checked();
            write_position(c, settling.through())
        }))
        .await
    }

    /// The written settled position.
    pub async fn settled_position(&self) -> Result<i64, IndexError> {
        self.read(|c| Ok(c.query_row("SELECT seq FROM settled WHERE id = 0", [], |r| r.get(0))?))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::fixtures::rec;
    use crate::index::{InsertOutcome, bulk_load};

    /// The SOP Instance UIDs start-up would check in the index at `path`, opened anew.
    async fn unchecked_at_open(path: &std::path::Path) -> Vec<String> {
        let index = Index::open(path).unwrap();
        let rows = index.unsettled_instances().await.unwrap();
        assert!(index.close().is_ok());
        rows.into_iter().map(|r| r.sop_instance_uid).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_row_is_checked_at_the_next_open_until_its_flush_settled_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("i.sqlite");
        let index = Index::open(&path).unwrap();
        index
            .insert(rec("1.2", "1.2.1", "1.2.1.1", "CT"), vec![])
            .await
            .unwrap();
        let open = index
            .insert_unflushed(rec("1.2", "1.2.1", "1.2.1.2", "CT"), vec![])
            .await
            .unwrap();
        let InsertOutcome::Inserted { seq } = open else {
            panic!("{open:?}")
        };
        // A crash now: the index closes (as another process opening it later would) with
        // row 2 not settled.
        assert!(index.close().is_ok());
        assert_eq!(unchecked_at_open(&path).await, ["1.2.1.2"]);
        assert_eq!(
            unchecked_at_open(&path).await,
            ["1.2.1.2"],
            "opening and closing it again does not settle it"
        );

        let index = Index::open(&path).unwrap();
        index.mark_settled().await.unwrap();
        let again = index
            .insert_unflushed(rec("1.2", "1.2.1", "1.2.1.3", "CT"), vec![])
            .await
            .unwrap();
        let InsertOutcome::Inserted { seq: third } = again else {
            panic!()
        };
        assert!(third > seq);
        index.settled(third);
        assert!(index.close().is_ok());
        assert!(unchecked_at_open(&path).await.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bulk_loaded_rows_without_objects_are_never_checked_at_start_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("i.sqlite");
        let records = (1..=3).map(|i| rec("1.3", "1.3.1", &format!("1.3.1.{i}"), "CT"));
        let path2 = path.clone();
        let loaded = tokio::task::spawn_blocking(move || bulk_load(&path2, records, 2, |_| {}))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(loaded, 3);
        assert!(unchecked_at_open(&path).await.is_empty());
    }

    #[test]
    fn every_row_below_the_first_open_one_is_settled() {
        let mut s = Settling::new(10, 10);
        assert_eq!(s.through(), 10, "nothing open: everything committed");
        s.committed(Some(13), [11, 13]);
        assert_eq!(s.through(), 10, "11 is open");
        s.settled(13);
        assert_eq!(
            s.through(),
            10,
            "13's flush does not settle 11, still waiting for its own"
        );
        s.settled(11);
        assert_eq!(s.through(), 13);
    }

    #[test]
    fn a_flushed_commit_moves_the_position_only_past_settled_rows() {
        let mut s = Settling::new(0, 0);
        s.committed(Some(1), [1]);
        s.committed(Some(2), []);
        assert_eq!(s.through(), 0, "row 2 was flushed, but row 1 is still open");
        s.settled(1);
        assert_eq!(s.through(), 2);
        s.committed(None, []);
        assert_eq!(
            s.through(),
            2,
            "a group without change-log rows changes nothing"
        );
    }

    #[test]
    fn a_row_removed_after_a_failed_flush_no_longer_holds_the_position_back() {
        let mut s = Settling::new(5, 5);
        s.committed(Some(6), [6]);
        s.settled(6);
        s.committed(Some(7), []);
        assert_eq!(s.through(), 7);
    }

    #[test]
    fn rows_found_unchecked_at_open_hold_the_position_until_they_are_checked() {
        let mut s = Settling::new(4, 9);
        assert_eq!(s.through(), 4, "rows 5 to 9 may have lost their copies");
        s.committed(Some(10), []);
        assert_eq!(
            s.through(),
            4,
            "a flushed commit after them does not vouch for them"
        );
        s.checked();
        assert_eq!(s.through(), 10);
        assert_eq!(
            Settling::new(9, 9).through(),
            9,
            "a clean stop left nothing to check"
        );
    }
}
