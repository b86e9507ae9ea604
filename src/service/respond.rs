//! The protocol side of C-FIND, C-MOVE and C-GET (PS3.7 9.1.2-9.1.4), in one place. The
//! services (find.rs, retrieve.rs) only produce a stream: of matches, or of sub-operations;
//! this module sends the Pending responses, looks for a C-CANCEL between them, keeps the
//! sub-operation counters and sends the final status. No service builds a response of its own.
//!
//! The rules, once:
//! 1. A C-CANCEL is honoured between two responses, never in the middle of one: the answer is
//!    Cancel (FE00) with the counters as they stand (PS3.7 9.3.2.3).
//! 2. C-FIND: one Pending (FF00, or FF01 when some optional keys were not supported) per
//!    match, holding its identifier; a match that cannot be encoded ends the stream with
//!    Unable to process (C000); after the last, Success.
//! 3. C-MOVE / C-GET: a Pending with Remaining, Completed, Failed and Warning after the first
//!    sub-operation, then after a sub-operation only once `pending_interval` has passed since
//!    the last Pending (after every one when it is zero), never after the last (the final
//!    response carries the last counts; PS3.4 C.4.2.3.1 makes Pendings optional); the final
//!    status follows PS3.4 C.4.2.1.5 (`final_status`), failed instances are listed in
//!    FailedSOPInstanceUIDList, and the final response has no Remaining.

use std::time::{Duration, Instant};

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use tracing::{info, warn};

use crate::dimse::{Command, CommandField, DATA_SET_PRESENT, Status, status};
use crate::net::{Association, NetError};

/// C-FIND's business side: the matches of one query, as encoded identifiers.
pub trait Matches {
    /// Why a match could not be turned into an identifier.
    type Error: std::fmt::Display;
    /// The next match's identifier; `None` after the last.
    fn next(&mut self) -> impl Future<Output = Option<Result<Vec<u8>, Self::Error>>> + Send;
}

/// C-MOVE's and C-GET's business side: the sub-operations of one retrieve, run one at a time.
pub trait SubOperations {
    /// Why a sub-operation failed.
    type Error: std::fmt::Display;
    /// How many sub-operations there are in all.
    fn total(&self) -> usize;
    /// Run the next sub-operation; `None` after the last. `assoc` is the requesting
    /// association: C-GET sends its C-STOREs on it (a C-CANCEL arriving meanwhile is kept by
    /// the association for `cancel_requested`); C-MOVE does not touch it. An error ends the
    /// whole operation (the requesting association is gone).
    fn next(
        &mut self,
        assoc: &mut Association,
    ) -> impl Future<Output = Result<Option<SubOperation<Self::Error>>, NetError>> + Send;
    /// Why sub-operations failed as a whole (e.g. the move destination went away), for the
    /// final response's ErrorComment.
    fn comment(&self) -> Option<String>;
}

/// One sub-operation's outcome: the destination's C-STORE status, or why it was not sent.
pub struct SubOperation<E> {
    pub sop_instance_uid: String,
    pub outcome: Result<Status, E>,
}

/// The responses to one request: its presentation context, the request and the response's
/// command field.
pub struct Responder<'r> {
    pub context: u8,
    pub request: &'r Command,
    pub field: CommandField,
    /// Rule 3: the least time between two Pending responses of a retrieve.
    pub pending_interval: Duration,
}

impl<'r> Responder<'r> {
    pub fn new(context: u8, request: &'r Command, field: CommandField) -> Responder<'r> {
        Responder {
            context,
            request,
            field,
            pending_interval: Duration::ZERO,
        }
    }

    /// Rule 3's interval (`[retrieve].pending_interval_ms`).
    pub fn pending_every(self, pending_interval: Duration) -> Responder<'r> {
        Responder {
            pending_interval,
            ..self
        }
    }
}

impl Responder<'_> {
    /// The only response to a request that cannot start (`failure` made its status).
    pub async fn refuse(&self, assoc: &mut Association, status: Status) -> Result<(), NetError> {
        warn!(command = ?self.field, status = format!("{:04X}", status.code), comment = ?status.comment, "request refused");
        self.send(
            assoc,
            &Command::response_to(self.request, self.field, status),
        )
        .await
    }

    async fn send(&self, assoc: &mut Association, rsp: &Command) -> Result<(), NetError> {
        assoc.send_command(self.context, rsp).await
    }

    /// Rule 2: stream a C-FIND's matches.
    pub async fn matches<M: Matches>(
        &self,
        assoc: &mut Association,
        pending: u16,
        mut matches: M,
    ) -> Result<(), NetError> {
        let mut sent = 0usize;
        while let Some(identifier) = matches.next().await {
            // Rule 1.
            if assoc.cancel_requested()? {
                info!(sent, "C-FIND cancelled by the SCU");
                let status = Status::with_comment(status::CANCELED, "cancelled");
                return self
                    .send(
                        assoc,
                        &Command::response_to(self.request, self.field, status),
                    )
                    .await;
            }
            let identifier = match identifier {
                Ok(i) => i,
                Err(e) => {
                    warn!(error = %e, "cannot encode a C-FIND response");
                    let status = Status::with_comment(status::UNABLE_TO_PROCESS, e.to_string());
                    return self
                        .send(
                            assoc,
                            &Command::response_to(self.request, self.field, status),
                        )
                        .await;
                }
            };
            let mut rsp = Command::response_to(
                self.request,
                self.field,
                Status {
                    code: pending,
                    comment: None,
                },
            );
            rsp.data_set_type = DATA_SET_PRESENT;
            assoc.send_message(self.context, &rsp, &identifier).await?;
            sent += 1;
        }
        let rsp = Command::response_to(self.request, self.field, Status::success());
        self.send(assoc, &rsp).await
    }

    /// Rule 3: run a C-MOVE's or C-GET's sub-operations.
    pub async fn sub_operations<S: SubOperations>(
        &self,
        assoc: &mut Association,
        ops: &mut S,
    ) -> Result<(), NetError> {
        let mut counters = Counters::new(ops.total());
        let mut last_pending: Option<Instant> = None;
        loop {
            // Rule 1.
            if assoc.cancel_requested()? {
                info!(
                    completed = counters.completed,
                    failed = counters.failed,
                    remaining = counters.remaining,
                    "retrieve cancelled"
                );
                let rsp = self.counts(status::CANCELED, &counters, true);
                return self.send(assoc, &rsp).await;
            }
            let Some(done) = ops.next(assoc).await? else {
                break;
            };
            match &done.outcome {
                Ok(st) if !st.is_success() && !st.is_warning() => {
                    warn!(sop = %done.sop_instance_uid, status = format!("{:04X}", st.code),
                          "sub-operation refused by the destination")
                }
                Err(why) => {
                    warn!(sop = %done.sop_instance_uid, reason = %why, "sub-operation failed")
                }
                Ok(_) => {}
            }
            counters.record(done.sop_instance_uid, done.outcome.as_ref().ok());
            // Rule 3.
            if counters.remaining > 0
                && last_pending.is_none_or(|t| t.elapsed() >= self.pending_interval)
            {
                let rsp = self.counts(status::PENDING, &counters, true);
                self.send(assoc, &rsp).await?;
                last_pending = Some(Instant::now());
            }
        }
        let mut rsp = self.counts(counters.final_status(), &counters, false);
        rsp.error_comment = ops.comment().map(|c| c.chars().take(64).collect());
        info!(
            completed = counters.completed,
            failed = counters.failed,
            warning = counters.warning,
            status = format!("{:04X}", rsp.status.unwrap_or(0)),
            "retrieve done"
        );
        let Some(list) = failed_list(assoc, self.context, &counters.failed_uids) else {
            return self.send(assoc, &rsp).await;
        };
        rsp.data_set_type = DATA_SET_PRESENT;
        assoc.send_message(self.context, &rsp, &list).await
    }

    /// A response carrying the counters (PS3.7 C.4.2.1.x); Remaining only while pending or
    /// cancelled.
    fn counts(&self, code: u16, c: &Counters, with_remaining: bool) -> Command {
        let mut rsp = Command::response_to(
            self.request,
            self.field,
            Status {
                code,
                comment: None,
            },
        );
        rsp.remaining = with_remaining.then(|| clamp16(c.remaining));
        rsp.completed = Some(clamp16(c.completed));
        rsp.failed = Some(clamp16(c.failed));
        rsp.warning = Some(clamp16(c.warning));
        rsp
    }
}

/// The final response's identifier: FailedSOPInstanceUIDList in the context's syntax, or
/// `None` when nothing failed.
fn failed_list(assoc: &Association, context: u8, failed: &[String]) -> Option<Vec<u8>> {
    if failed.is_empty() {
        return None;
    }
    let mut ident = InMemDicomObject::new_empty();
    ident.put(DataElement::new(
        tags::FAILED_SOP_INSTANCE_UID_LIST,
        VR::UI,
        PrimitiveValue::Strs(failed.iter().cloned().collect()),
    ));
    let ts = assoc
        .context(context)
        .and_then(|c| TransferSyntaxRegistry.get(&c.transfer_syntax))
        .or_else(|| TransferSyntaxRegistry.get(uids::IMPLICIT_VR_LITTLE_ENDIAN))?;
    let mut bytes = Vec::new();
    ident.write_dataset_with_ts(&mut bytes, ts).ok()?;
    Some(bytes)
}

/// The sub-operation counters (PS3.7 C.4.2.1.x).
#[derive(Debug, Default, Clone, PartialEq)]
struct Counters {
    remaining: usize,
    completed: usize,
    failed: usize,
    warning: usize,
    failed_uids: Vec<String>,
}

impl Counters {
    fn new(total: usize) -> Counters {
        Counters {
            remaining: total,
            ..Counters::default()
        }
    }

    /// Count one sub-operation: its status, or `None` when it could not be sent.
    fn record(&mut self, uid: String, outcome: Option<&Status>) {
        self.remaining = self.remaining.saturating_sub(1);
        match outcome {
            Some(st) if st.is_success() => self.completed += 1,
            Some(st) if st.is_warning() => self.warning += 1,
            _ => {
                self.failed += 1;
                self.failed_uids.push(uid);
            }
        }
    }

    /// PS3.4 C.4.2.1.5: Success when every sub-operation succeeded, A702 when none completed
    /// or warned, B000 otherwise.
    fn final_status(&self) -> u16 {
        if self.failed == 0 && self.warning == 0 {
            status::SUCCESS
        } else if self.completed == 0 && self.warning == 0 {
            status::UNABLE_TO_PERFORM_SUBOPERATIONS
        } else {
            status::SUBOPERATIONS_WITH_FAILURES
        }
    }
}

fn clamp16(n: usize) -> u16 {
    n.min(u16::MAX as usize) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(code: u16) -> Status {
        Status {
            code,
            comment: None,
        }
    }

    #[test]
    fn nothing_to_do_is_success() {
        assert_eq!(Counters::new(0).final_status(), status::SUCCESS);
    }

    #[test]
    fn every_sub_operation_stored_is_success() {
        let mut c = Counters::new(2);
        c.record("1.1".into(), Some(&st(status::SUCCESS)));
        c.record("1.2".into(), Some(&st(status::SUCCESS)));
        assert_eq!((c.remaining, c.completed), (0, 2));
        assert_eq!(c.final_status(), status::SUCCESS);
    }

    #[test]
    fn a_warning_from_the_destination_makes_the_whole_a_warning() {
        let mut c = Counters::new(2);
        c.record("1.1".into(), Some(&st(status::SUCCESS)));
        c.record("1.2".into(), Some(&st(0xB007)));
        assert_eq!((c.completed, c.warning, c.failed), (1, 1, 0));
        assert_eq!(c.final_status(), status::SUBOPERATIONS_WITH_FAILURES);
    }

    #[test]
    fn some_failed_is_b000_and_the_failed_are_listed() {
        let mut c = Counters::new(3);
        c.record("1.1".into(), Some(&st(status::SUCCESS)));
        c.record("1.2".into(), Some(&st(status::OUT_OF_RESOURCES)));
        c.record("1.3".into(), None);
        assert_eq!((c.remaining, c.completed, c.failed), (0, 1, 2));
        assert_eq!(c.failed_uids, vec!["1.2".to_string(), "1.3".to_string()]);
        assert_eq!(c.final_status(), status::SUBOPERATIONS_WITH_FAILURES);
    }

    #[test]
    fn none_completed_is_a702() {
        let mut c = Counters::new(2);
        c.record("1.1".into(), None);
        c.record("1.2".into(), None);
        assert_eq!(c.final_status(), status::UNABLE_TO_PERFORM_SUBOPERATIONS);
    }

    #[test]
    fn counters_saturate_at_the_field_width() {
        assert_eq!(clamp16(70_000), u16::MAX);
        assert_eq!(clamp16(12), 12);
    }
}
