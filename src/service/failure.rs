//! The one mapping from the services' failures to DIMSE statuses (PS3.7 C, PS3.4 B.2.3 for
//! C-STORE, C.4 for C-FIND, C-MOVE and C-GET), each with its ErrorComment. Every status code
//! is defined in `dimse::status`; no other place turns an error into a status.

use super::find::FindError;
use super::query::IdentifierError;
use super::retrieve::RetrieveError;
use crate::archive::store::StoreError;
use crate::dimse::{Status, status};
use crate::index::IndexError;
use crate::index::record::RecordError;
use crate::storage::StorageError;

/// A C-STORE (or STOW-RS part) that was not stored.
pub fn of_store(e: &StoreError) -> Status {
    let code = match e {
        StoreError::Conflict { .. } => status::DUPLICATE_SOP_INSTANCE,
        StoreError::Index(IndexError::PatientConflict { .. }) => status::PATIENT_CONFLICT,
        StoreError::TooLarge { .. }
        | StoreError::OverBudget { .. }
        | StoreError::Storage(_)
        | StoreError::Index(_) => status::OUT_OF_RESOURCES,
        StoreError::ContextMismatch { .. }
        | StoreError::UnsupportedSyntax(_)
        | StoreError::UnsupportedSopClass(_) => status::SOP_CLASS_NOT_SUPPORTED,
        StoreError::DataSetMismatch { .. } => status::DOES_NOT_MATCH_SOP_CLASS,
        StoreError::NoDataSet
        | StoreError::BadCommandSopClass
        | StoreError::BadCommandSopInstance
        | StoreError::Record(_) => status::UNABLE_TO_PROCESS,
        StoreError::Part10(_) | StoreError::NotConfirmed(_) => status::PROCESSING_FAILURE,
    };
    let comment = match e {
        // Keep the comment short and useful: the quorum figures, not every path.
        StoreError::Storage(StorageError::QuorumNotMet {
            ok, total, needed, ..
        }) => {
            format!("write quorum not met: {ok} of {total} replicas, {needed} needed")
        }
        StoreError::Index(IndexError::PatientConflict { received, .. }) => {
            format!("Patient ID {received} differs from its study's")
        }
        // The pre-scan's or the parser's own words (the comment holds 64 characters).
        StoreError::Record(RecordError::Parse { reason, .. }) => reason.clone(),
        StoreError::Index(_) => "index commit failed; object not kept".to_string(),
        other => other.to_string(),
    };
    Status::with_comment(code, comment)
}

/// A C-FIND that could not run.
pub fn of_find(e: &FindError) -> Status {
    let code = match e {
        FindError::Identifier(e) => identifier(e),
        FindError::TooMany { .. } | FindError::Index(_) => status::OUT_OF_RESOURCES,
        FindError::NotFind => status::SOP_CLASS_NOT_SUPPORTED,
    };
    Status::with_comment(code, e.to_string())
}

/// A C-MOVE or C-GET that could not start.
pub fn of_retrieve(e: &RetrieveError) -> Status {
    let code = match e {
        RetrieveError::UnknownDestination(_) | RetrieveError::NoDestination => {
            status::MOVE_DESTINATION_UNKNOWN
        }
        RetrieveError::Identifier(e) => identifier(e),
        RetrieveError::Index(_) => status::OUT_OF_RESOURCES,
        RetrieveError::NotRetrieve => status::SOP_CLASS_NOT_SUPPORTED,
    };
    Status::with_comment(code, e.to_string())
}

/// PS3.4 C.4.1.1.4 / C.4.2.1.5: A900 when the identifier does not match the SOP class
/// (structure), C000 when a value cannot be processed.
fn identifier(e: &IdentifierError) -> u16 {
    match e {
        IdentifierError::Parse(_) | IdentifierError::BadValue { .. } => status::UNABLE_TO_PROCESS,
        _ => status::DOES_NOT_MATCH_SOP_CLASS,
    }
}
