//! DIMSE status codes (PS3.7 Annex C, PS3.4 B.2.3 for C-STORE) with an optional ErrorComment.

/// PS3.7 C.1.1.
pub const SUCCESS: u16 = 0x0000;
/// PS3.7 C.5.18 / PS3.4 B.2.3: Refused, out of resources.
pub const OUT_OF_RESOURCES: u16 = 0xA700;
/// A900, one code named per service: C-STORE "Error: Data Set does not match SOP Class"
/// (PS3.4 B.2.3), C-FIND "Failed: Identifier does not match SOP Class" (PS3.4 C.4.1.1.4).
pub const DOES_NOT_MATCH_SOP_CLASS: u16 = 0xA900;
/// C000 (of C000-CFFF), one code named per service: C-STORE "Error: Cannot understand"
/// (PS3.4 B.2.3), C-FIND, C-MOVE and C-GET "Failed: Unable to process" (PS3.4 C.4).
pub const UNABLE_TO_PROCESS: u16 = 0xC000;
/// PS3.4 C.4.1.1.4, C.4.2.1.5, C.4.3.1.4: Pending (matches or sub-operations are continuing).
pub const PENDING: u16 = 0xFF00;
/// PS3.4 C.4.1.1.4: Pending, but one or more optional keys were not supported for existence
/// or matching.
pub const PENDING_WARNING: u16 = 0xFF01;
/// PS3.4 C.4: Cancel, terminated due to a C-CANCEL request.
pub const CANCELED: u16 = 0xFE00;
/// PS3.4 C.4.2.1.5: Refused, Move Destination unknown.
pub const MOVE_DESTINATION_UNKNOWN: u16 = 0xA801;
/// PS3.4 C.4.2.1.5, C.4.3.1.4: Refused, out of resources, unable to perform sub-operations.
pub const UNABLE_TO_PERFORM_SUBOPERATIONS: u16 = 0xA702;
/// PS3.4 C.4.2.1.5, C.4.3.1.4: Warning, sub-operations complete with one or more failures or
/// warnings.
pub const SUBOPERATIONS_WITH_FAILURES: u16 = 0xB000;
/// PS3.7 C.5.9: Duplicate SOP Instance (a C-STORE of a stored SOP Instance UID whose content
/// differs; the stored version is kept).
pub const DUPLICATE_SOP_INSTANCE: u16 = 0x0111;
/// PS3.4 B.2.3 "Error: Cannot understand" (C000-CFFF), the sub-code pacsd uses for an instance
/// whose Patient ID/Issuer differs from the patient its study is stored under.
pub const PATIENT_CONFLICT: u16 = 0xC010;
/// PS3.7 C.5.17: Processing failure.
pub const PROCESSING_FAILURE: u16 = 0x0110;
/// PS3.7 C.5.21: SOP class not supported.
pub const SOP_CLASS_NOT_SUPPORTED: u16 = 0x0122;
/// PS3.7 C.5.12: Not authorized (the calling AE may not use this service).
pub const NOT_AUTHORIZED: u16 = 0x0124;
/// PS3.7 C.5.24: Unrecognized operation.
pub const UNRECOGNIZED_OPERATION: u16 = 0x0211;
/// PS3.7 C.5.11: Mistyped argument.
pub const MISTYPED_ARGUMENT: u16 = 0x0212;
/// Not a DICOM status: what an SCU records when a response carried no Status (0000,0900).
pub const NO_STATUS: u16 = 0xFFFF;

/// A status with its optional ErrorComment (0000,0902).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub code: u16,
    pub comment: Option<String>,
}

impl Status {
    pub const fn success() -> Status {
        Status {
            code: SUCCESS,
            comment: None,
        }
    }

    pub fn with_comment(code: u16, comment: impl Into<String>) -> Status {
        Status {
            code,
            comment: Some(comment.into()),
        }
    }

    pub fn is_success(&self) -> bool {
        self.code == SUCCESS
    }

    /// PS3.7 C.4: Pending, with or without optional keys unsupported.
    pub fn is_pending(&self) -> bool {
        matches!(self.code, PENDING | PENDING_WARNING)
    }

    /// PS3.7 C: warnings are 0001, Bxxx and 0107/0116.
    pub fn is_warning(&self) -> bool {
        matches!(self.code, 0x0001 | 0x0107 | 0x0116) || (self.code & 0xF000) == 0xB000
    }
}
