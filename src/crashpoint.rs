//! Crash points: named places on the write path where a test build kills its own process
//! (SIGKILL, as a crash or `kill -9` would), to check that what a restarted node finds is
//! consistent whichever step a crash interrupts.
//!
//! Only with the cargo feature `crashpoints` (the test suite's build): the environment
//! variable `PACSD_CRASH_AT` names the one point that kills the process the first time it is
//! reached. Without the feature `hit` is empty and the variable means nothing.
//!
//! The points of a C-STORE, in order (what a restart must find is tested in tests/binary.rs,
//! `a_crash_at_any_step_of_..._c_store_...`):
//! 1. `store-prepared`: parsed and validated, nothing written;
//! 2. `put-first-replica`: one replica holds the object, the quorum (2 of 3) is not met;
//! 3. `put-unflushed` (an object flushed with others, `storage::DEFER_FLUSH_UP_TO`): a
//!    quorum holds it, not flushed yet;
//! 4. `put-quorum`: a quorum holds it (durably, unless it is flushed with its row), no index
//!    row;
//! 5. `index-before-commit`: the row is written into the open transaction, not committed;
//! 6. `index-committed`: the row is committed, the C-STORE not yet answered;
//! 7. `index-committed-unflushed` (an object up to `storage::DEFER_FLUSH_UP_TO` on a node
//!    that runs alone: its copies and its row are flushed together after the commit,
//!    `archive::reconcile`): the row is committed, neither it nor the copies flushed;
//!
//! On a node that runs alone an object's row is committed while its copies are written
//! (`archive::store`, `row_ahead`): 2 runs beside 5 and 6, and 3 and 4 are reached once both
//! are done, so the row is committed there; the row and copies of an object up to
//! `storage::DEFER_FLUSH_UP_TO` are then flushed together (7). In an HA pair the points come in the order above, without 7.
//!
//! and of the preview worker afterwards: `preview-placed`, the preview is on a quorum of
//! replicas and its index row still says pending.

/// Kill this process here if `PACSD_CRASH_AT` names `point` (feature `crashpoints` only).
#[cfg(feature = "crashpoints")]
pub fn hit(point: &str) {
    static AT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let at = AT.get_or_init(|| std::env::var("PACSD_CRASH_AT").ok());
    if at.as_deref() == Some(point) {
        eprintln!("crash point {point}: killing this process");
        // SAFETY: kill(2) on our own pid with a signal that cannot be caught.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

/// Without the feature `crashpoints`: nothing.
#[cfg(not(feature = "crashpoints"))]
#[inline(always)]
pub fn hit(_point: &str) {}
