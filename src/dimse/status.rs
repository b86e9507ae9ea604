//! DIMSE status codes (PS3.7 Annex C, PS3.4 B.2.3 for C-STORE) with an optional ErrorComment.

/// PS3.7 C.1.1.
pub const SUCCESS: u16 = 0x0000;
/// PS3.7 C.5.18 / PS3.4 B.2.3: Refused, out of resources.
pub const OUT_OF_RESOURCES: u16 = 0xA700;
/// PS3.4 B.2.3: Error, data set does not match SOP class.
pub const DATA_SET_DOES_NOT_MATCH_SOP_CLASS: u16 = 0xA900;
/// PS3.4 B.2.3: Error, cannot understand (C000-CFFF).
pub const CANNOT_UNDERSTAND: u16 = 0xC000;
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

    /// PS3.7 C: warnings are 0001, Bxxx and 0107/0116.
    pub fn is_warning(&self) -> bool {
        matches!(self.code, 0x0001 | 0x0107 | 0x0116) || (self.code & 0xF000) == 0xB000
    }
}
