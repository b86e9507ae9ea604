//! P-DATA reassembly (PS3.8 9.3.5 and Annex E): PDVs in, complete DIMSE messages out, under
//! the object size limit and the node's receive budget. Pure (no I/O): a protocol fault comes
//! back as a `ReassemblyError`, whose `abort_reason` the association sends. Kept apart from the
//! socket so that it can be unit-tested and fuzzed on its own.

use std::sync::Arc;

use dicom_ul::pdu::{AbortRQServiceProviderReason, PDataValue, PDataValueType};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::warn;

use crate::dimse::{Command, CommandError};

/// A complete DIMSE message: command set and, when announced, its data set bytes.
#[derive(Debug)]
pub struct DimseMessage {
    pub context_id: u8,
    pub command: Command,
    /// The data set as received, or `None` when the command announced none (or it was
    /// dropped, see `dropped`).
    pub data: Option<Vec<u8>>,
    /// Why the announced data set was discarded while it was drained, if it was.
    pub dropped: Option<Dropped>,
    /// The share of the node's receive budget that `data` holds; returned when the message
    /// (and so this permit) is dropped after it has been handled.
    pub memory: Option<OwnedSemaphorePermit>,
}

/// Why a data set was drained without being kept; the message still gets its response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// Longer than `node.max_object_size` (bytes received when it was given up).
    TooLarge { size: u64, limit: u64 },
    /// The node-wide budget for data sets being received (`node.receive_budget`) was spent.
    OverBudget { budget: u64 },
}

/// A PDV that breaks PS3.8 9.3.5 / Annex E; the association is aborted for it.
#[derive(Debug, thiserror::Error)]
pub enum ReassemblyError {
    #[error("PDV on presentation context {0} that was not accepted")]
    NotAccepted(u8),
    #[error("PDV on context {got} while a message on context {open} is incomplete")]
    Interleaved { got: u8, open: u8 },
    #[error("command fragment after a complete command set")]
    CommandAfterCommand,
    #[error("command set larger than the limit")]
    CommandTooLarge,
    #[error("bad command set: {0}")]
    BadCommand(#[from] CommandError),
    #[error("data fragment before the command set")]
    DataBeforeCommand,
}

impl ReassemblyError {
    /// The A-ABORT reason for this fault (PS3.8 9.3.8).
    pub fn abort_reason(&self) -> AbortRQServiceProviderReason {
        match self {
            ReassemblyError::CommandAfterCommand | ReassemblyError::DataBeforeCommand => {
                AbortRQServiceProviderReason::UnexpectedPdu
            }
            _ => AbortRQServiceProviderReason::InvalidPduParameter,
        }
    }
}

/// The message being reassembled (kept across PDUs, so a cancelled read loses nothing).
#[derive(Debug, Default)]
struct Partial {
    context_id: Option<u8>,
    command: Vec<u8>,
    command_done: Option<Command>,
    data: Vec<u8>,
    data_len: u64,
    dropped: Option<Dropped>,
    memory: Option<OwnedSemaphorePermit>,
}

/// Reassembles the DIMSE messages of one association.
#[derive(Debug)]
pub struct Reassembler {
    partial: Partial,
    max_object_size: u64,
    /// One permit per byte of data set being received, shared by every association.
    receive_budget: Arc<Semaphore>,
    receive_budget_total: u64,
}

impl Reassembler {
    pub fn new(
        max_object_size: u64,
        receive_budget: Arc<Semaphore>,
        receive_budget_total: u64,
    ) -> Reassembler {
        Reassembler {
            partial: Partial::default(),
            max_object_size,
            receive_budget,
            receive_budget_total,
        }
    }

    /// Whether part of a DIMSE message has been received but not all of it.
    pub fn mid_message(&self) -> bool {
        self.partial.context_id.is_some()
    }

    /// Add one PDV (on a presentation context that was `accepted`, or not) to the message
    /// being reassembled; returns the message when it is complete.
    pub fn absorb(
        &mut self,
        pdv: PDataValue,
        accepted: bool,
    ) -> Result<Option<DimseMessage>, ReassemblyError> {
        let id = pdv.presentation_context_id;
        if !accepted {
            return Err(ReassemblyError::NotAccepted(id));
        }
        match self.partial.context_id {
            Some(open) if open != id => return Err(ReassemblyError::Interleaved { got: id, open }),
            _ => self.partial.context_id = Some(id),
        }
        match pdv.value_type {
            PDataValueType::Command => {
                if self.partial.command_done.is_some() {
                    return Err(ReassemblyError::CommandAfterCommand);
                }
                if self.partial.command.len() + pdv.data.len() > crate::dimse::MAX_COMMAND_SET {
                    return Err(ReassemblyError::CommandTooLarge);
                }
                self.partial.command.extend_from_slice(&pdv.data);
                if !pdv.is_last {
                    return Ok(None);
                }
                let command = Command::decode(&self.partial.command)?;
                if !command.has_data_set() {
                    self.partial = Partial::default();
                    return Ok(Some(DimseMessage {
                        context_id: id,
                        command,
                        data: None,
                        dropped: None,
                        memory: None,
                    }));
                }
                self.partial.command_done = Some(command);
                Ok(None)
            }
            PDataValueType::Data => {
                if self.partial.command_done.is_none() {
                    return Err(ReassemblyError::DataBeforeCommand);
                }
                self.partial.data_len += pdv.data.len() as u64;
                if self.partial.dropped.is_none() {
                    self.partial.dropped = self.keep(pdv.data);
                    if let Some(why) = self.partial.dropped {
                        warn!(?why, "data set refused; draining it");
                        // Drain without keeping: the message still gets a failure response.
                        self.partial.data = Vec::new();
                        self.partial.memory = None;
                    }
                }
                if let Some(Dropped::TooLarge { size, .. }) = &mut self.partial.dropped {
                    *size = self.partial.data_len;
                }
                if !pdv.is_last {
                    return Ok(None);
                }
                let partial = std::mem::take(&mut self.partial);
                Ok(Some(DimseMessage {
                    context_id: id,
                    command: partial.command_done.expect("checked above"),
                    data: partial.dropped.is_none().then_some(partial.data),
                    dropped: partial.dropped,
                    memory: partial.memory,
                }))
            }
        }
    }

    /// Append a PDV's bytes to the data set being reassembled, holding receive budget for the
    /// memory the buffer really takes (its capacity, which grows by doubling up to the object
    /// limit), or say why the data set must be dropped instead.
    fn keep(&mut self, bytes: Vec<u8>) -> Option<Dropped> {
        if self.partial.data_len > self.max_object_size {
            return Some(Dropped::TooLarge {
                size: self.partial.data_len,
                limit: self.max_object_size,
            });
        }
        let over_budget = Some(Dropped::OverBudget {
            budget: self.receive_budget_total,
        });
        let (len, capacity) = (self.partial.data.len(), self.partial.data.capacity());
        if capacity == 0 {
            // The first fragment: its own buffer becomes the data set's.
            if !self.take_budget(bytes.capacity()) {
                return over_budget;
            }
            self.partial.data = bytes;
            return None;
        }
        let needed = len + bytes.len();
        if needed > capacity {
            let limit = usize::try_from(self.max_object_size).unwrap_or(usize::MAX);
            let doubled = (capacity * 2).min(limit).max(needed);
            let target = if self.take_budget(doubled - capacity) {
                doubled
            } else if self.take_budget(needed - capacity) {
                needed
            } else {
                return over_budget;
            };
            self.partial.data.reserve_exact(target - len);
        }
        self.partial.data.extend_from_slice(&bytes);
        None
    }

    /// Take `bytes` of the node's receive budget for the data set being reassembled.
    fn take_budget(&mut self, bytes: usize) -> bool {
        let Ok(n) = u32::try_from(bytes) else {
            return false;
        };
        match self.receive_budget.clone().try_acquire_many_owned(n) {
            Ok(permit) => {
                match &mut self.partial.memory {
                    Some(held) => held.merge(permit),
                    None => self.partial.memory = Some(permit),
                }
                true
            }
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pdv(id: u8, command: bool, last: bool, data: &[u8]) -> PDataValue {
        PDataValue {
            presentation_context_id: id,
            value_type: if command {
                PDataValueType::Command
            } else {
                PDataValueType::Data
            },
            is_last: last,
            data: data.to_vec(),
        }
    }

    fn reassembler(max_object_size: u64, budget: usize) -> (Reassembler, Arc<Semaphore>) {
        let sem = Arc::new(Semaphore::new(budget));
        (
            Reassembler::new(max_object_size, sem.clone(), budget as u64),
            sem,
        )
    }

    fn store_command() -> Vec<u8> {
        Command::store_rq(1, "1.2.840.10008.5.1.4.1.1.2", "1.2.3")
            .encode()
            .unwrap()
    }

    #[test]
    fn a_command_split_over_fragments_completes_at_its_last() {
        let (mut r, _) = reassembler(1 << 20, 1 << 20);
        let echo = Command::echo_rq(7).encode().unwrap();
        let (a, b) = echo.split_at(10);
        assert!(r.absorb(pdv(1, true, false, a), true).unwrap().is_none());
        assert!(r.mid_message());
        let m = r.absorb(pdv(1, true, true, b), true).unwrap().unwrap();
        assert_eq!((m.context_id, m.command.message_id), (1, Some(7)));
        assert!(m.data.is_none() && !r.mid_message());
    }

    #[test]
    fn a_data_set_is_collected_and_holds_its_share_of_the_budget_until_dropped() {
        let (mut r, budget) = reassembler(1 << 20, 1 << 20);
        assert!(
            r.absorb(pdv(3, true, true, &store_command()), true)
                .unwrap()
                .is_none()
        );
        assert!(
            r.absorb(pdv(3, false, false, &[1; 1000]), true)
                .unwrap()
                .is_none()
        );
        let m = r
            .absorb(pdv(3, false, true, &[2; 500]), true)
            .unwrap()
            .unwrap();
        let data = m.data.as_ref().unwrap();
        assert_eq!(data.len(), 1500);
        assert_eq!((data[0], data[1499]), (1, 2));
        assert!(budget.available_permits() < 1 << 20);
        drop(m);
        assert_eq!(budget.available_permits(), 1 << 20);
    }

    #[test]
    fn protocol_faults_are_named_with_their_abort_reason() {
        let (mut r, _) = reassembler(1 << 20, 1 << 20);
        let e = r.absorb(pdv(5, true, true, &[]), false).unwrap_err();
        assert!(matches!(e, ReassemblyError::NotAccepted(5)));
        let e = r.absorb(pdv(1, false, true, &[0; 4]), true).unwrap_err();
        assert!(matches!(e, ReassemblyError::DataBeforeCommand));
        assert_eq!(
            e.abort_reason(),
            AbortRQServiceProviderReason::UnexpectedPdu
        );

        let (mut r, _) = reassembler(1 << 20, 1 << 20);
        r.absorb(pdv(1, true, false, &store_command()[..8]), true)
            .unwrap();
        let e = r.absorb(pdv(3, true, true, &[]), true).unwrap_err();
        assert!(matches!(
            e,
            ReassemblyError::Interleaved { got: 3, open: 1 }
        ));

        let (mut r, _) = reassembler(1 << 20, 1 << 20);
        r.absorb(pdv(1, true, true, &store_command()), true)
            .unwrap();
        let e = r
            .absorb(pdv(1, true, true, &store_command()), true)
            .unwrap_err();
        assert!(matches!(e, ReassemblyError::CommandAfterCommand));

        let (mut r, _) = reassembler(1 << 20, 1 << 20);
        let big = vec![0u8; crate::dimse::MAX_COMMAND_SET + 1];
        let e = r.absorb(pdv(1, true, false, &big), true).unwrap_err();
        assert!(matches!(e, ReassemblyError::CommandTooLarge));

        let (mut r, _) = reassembler(1 << 20, 1 << 20);
        let e = r.absorb(pdv(1, true, true, b"garbage!"), true).unwrap_err();
        assert!(matches!(e, ReassemblyError::BadCommand(_)));
        assert_eq!(
            e.abort_reason(),
            AbortRQServiceProviderReason::InvalidPduParameter
        );
    }

    #[test]
    fn too_large_and_over_budget_data_sets_are_drained_and_named() {
        let (mut r, budget) = reassembler(1000, 1 << 20);
        r.absorb(pdv(1, true, true, &store_command()), true)
            .unwrap();
        r.absorb(pdv(1, false, false, &[0; 800]), true).unwrap();
        r.absorb(pdv(1, false, false, &[0; 800]), true).unwrap();
        let m = r
            .absorb(pdv(1, false, true, &[0; 100]), true)
            .unwrap()
            .unwrap();
        assert_eq!(
            m.dropped,
            Some(Dropped::TooLarge {
                size: 1700,
                limit: 1000
            })
        );
        assert!(m.data.is_none() && m.memory.is_none());
        assert_eq!(budget.available_permits(), 1 << 20);

        let (mut r, budget) = reassembler(1 << 20, 1000);
        r.absorb(pdv(1, true, true, &store_command()), true)
            .unwrap();
        r.absorb(pdv(1, false, false, &[0; 600]), true).unwrap();
        let m = r
            .absorb(pdv(1, false, true, &[0; 600]), true)
            .unwrap()
            .unwrap();
        assert_eq!(m.dropped, Some(Dropped::OverBudget { budget: 1000 }));
        assert_eq!(budget.available_permits(), 1000);
    }
}
