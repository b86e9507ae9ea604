//! DIMSE command sets (PS3.7 Chapter 9 and Annex E): typed requests and responses, status
//! codes, and their Implicit VR Little Endian encoding. No I/O here.

pub mod status;

use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN;

pub use status::Status;

/// PS3.7 E.1-1: CommandDataSetType value meaning "no data set follows".
pub const NO_DATA_SET: u16 = 0x0101;
/// Any other value means a data set follows; this is the one we send.
pub const DATA_SET_PRESENT: u16 = 0x0000;

/// Largest command set we accept (a command set is a few hundred bytes; 64 KiB leaves room
/// for long error comments and UID lists while bounding memory).
pub const MAX_COMMAND_SET: usize = 64 * 1024;

/// PS3.7 E.1-1 Command Field values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum CommandField {
    CStoreRq = 0x0001,
    CStoreRsp = 0x8001,
    CGetRq = 0x0010,
    CGetRsp = 0x8010,
    CFindRq = 0x0020,
    CFindRsp = 0x8020,
    CMoveRq = 0x0021,
    CMoveRsp = 0x8021,
    CEchoRq = 0x0030,
    CEchoRsp = 0x8030,
    CCancelRq = 0x0FFF,
}

impl CommandField {
    pub fn from_u16(v: u16) -> Option<CommandField> {
        use CommandField::*;
        Some(match v {
            0x0001 => CStoreRq,
            0x8001 => CStoreRsp,
            0x0010 => CGetRq,
            0x8010 => CGetRsp,
            0x0020 => CFindRq,
            0x8020 => CFindRsp,
            0x0021 => CMoveRq,
            0x8021 => CMoveRsp,
            0x0030 => CEchoRq,
            0x8030 => CEchoRsp,
            0x0FFF => CCancelRq,
            _ => return None,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("decoding command set: {0}")]
    Decode(String),
    #[error("encoding command set: {0}")]
    Encode(String),
    #[error("command set lacks {0}")]
    Missing(&'static str),
}

/// A decoded command set: the fields pacsd uses, with the raw command field kept so that an
/// unknown command can still be answered (PS3.7 C.5.4 "unrecognized operation").
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Command {
    pub command_field: u16,
    pub message_id: Option<u16>,
    pub message_id_being_responded_to: Option<u16>,
    pub affected_sop_class_uid: Option<String>,
    pub affected_sop_instance_uid: Option<String>,
    pub priority: Option<u16>,
    pub data_set_type: u16,
    pub status: Option<u16>,
    pub move_destination: Option<String>,
    pub move_originator_ae_title: Option<String>,
    pub move_originator_message_id: Option<u16>,
    pub error_comment: Option<String>,
    /// PS3.7 C.4.2.1.x: sub-operation counters of C-MOVE and C-GET responses.
    pub remaining: Option<u16>,
    pub completed: Option<u16>,
    pub failed: Option<u16>,
    pub warning: Option<u16>,
}

impl Command {
    pub fn field(&self) -> Option<CommandField> {
        CommandField::from_u16(self.command_field)
    }

    pub fn has_data_set(&self) -> bool {
        self.data_set_type != NO_DATA_SET
    }

    /// Decode a command set (always Implicit VR Little Endian, PS3.7 6.3.1).
    pub fn decode(bytes: &[u8]) -> Result<Command, CommandError> {
        if bytes.len() > MAX_COMMAND_SET {
            return Err(CommandError::Decode(format!(
                "{} bytes is more than the {MAX_COMMAND_SET}-byte limit",
                bytes.len()
            )));
        }
        // The bounded pre-scan first: a command set holds no sequences, and no element may
        // declare more bytes than are present (crate::dataset explains why).
        let obj = crate::dataset::parse(
            bytes,
            IMPLICIT_VR_LITTLE_ENDIAN.uid(),
            crate::dataset::COMMAND_DEPTH,
            0,
        )
        .map_err(|e| CommandError::Decode(e.to_string()))?;
        let u16_of = |t: Tag| obj.get(t).and_then(|e| e.to_int::<u16>().ok());
        let str_of = |t: Tag| {
            obj.get(t)
                .and_then(|e| e.to_str().ok())
                .map(|s| s.trim_end_matches(['\0', ' ']).trim_start().to_string())
        };
        Ok(Command {
            command_field: u16_of(tags::COMMAND_FIELD)
                .ok_or(CommandError::Missing("CommandField"))?,
            message_id: u16_of(tags::MESSAGE_ID),
            message_id_being_responded_to: u16_of(tags::MESSAGE_ID_BEING_RESPONDED_TO),
            affected_sop_class_uid: str_of(tags::AFFECTED_SOP_CLASS_UID),
            affected_sop_instance_uid: str_of(tags::AFFECTED_SOP_INSTANCE_UID),
            priority: u16_of(tags::PRIORITY),
            data_set_type: u16_of(tags::COMMAND_DATA_SET_TYPE)
                .ok_or(CommandError::Missing("CommandDataSetType"))?,
            status: u16_of(tags::STATUS),
            move_destination: str_of(tags::MOVE_DESTINATION),
            move_originator_ae_title: str_of(tags::MOVE_ORIGINATOR_APPLICATION_ENTITY_TITLE),
            move_originator_message_id: u16_of(tags::MOVE_ORIGINATOR_MESSAGE_ID),
            error_comment: str_of(tags::ERROR_COMMENT),
            remaining: u16_of(tags::NUMBER_OF_REMAINING_SUBOPERATIONS),
            completed: u16_of(tags::NUMBER_OF_COMPLETED_SUBOPERATIONS),
            failed: u16_of(tags::NUMBER_OF_FAILED_SUBOPERATIONS),
            warning: u16_of(tags::NUMBER_OF_WARNING_SUBOPERATIONS),
        })
    }

    /// Encode this command set with its CommandGroupLength (0000,0000) first.
    pub fn encode(&self) -> Result<Vec<u8>, CommandError> {
        let mut obj = InMemDicomObject::new_empty();
        let mut put = |tag: Tag, vr: VR, v: PrimitiveValue| {
            obj.put(DataElement::new(tag, vr, v));
        };
        if let Some(v) = &self.affected_sop_class_uid {
            put(
                tags::AFFECTED_SOP_CLASS_UID,
                VR::UI,
                PrimitiveValue::from(v.as_str()),
            );
        }
        put(
            tags::COMMAND_FIELD,
            VR::US,
            PrimitiveValue::from(self.command_field),
        );
        if let Some(v) = self.message_id {
            put(tags::MESSAGE_ID, VR::US, PrimitiveValue::from(v));
        }
        if let Some(v) = self.message_id_being_responded_to {
            put(
                tags::MESSAGE_ID_BEING_RESPONDED_TO,
                VR::US,
                PrimitiveValue::from(v),
            );
        }
        if let Some(v) = &self.move_destination {
            put(
                tags::MOVE_DESTINATION,
                VR::AE,
                PrimitiveValue::from(v.as_str()),
            );
        }
        if let Some(v) = self.priority {
            put(tags::PRIORITY, VR::US, PrimitiveValue::from(v));
        }
        put(
            tags::COMMAND_DATA_SET_TYPE,
            VR::US,
            PrimitiveValue::from(self.data_set_type),
        );
        if let Some(v) = self.status {
            put(tags::STATUS, VR::US, PrimitiveValue::from(v));
        }
        if let Some(v) = &self.error_comment {
            // PS3.7 C.4.1.1.3: ErrorComment is LO, at most 64 characters.
            let v: String = v.chars().filter(|c| *c != '\\').take(64).collect();
            put(tags::ERROR_COMMENT, VR::LO, PrimitiveValue::from(v));
        }
        for (tag, v) in [
            (tags::NUMBER_OF_REMAINING_SUBOPERATIONS, self.remaining),
            (tags::NUMBER_OF_COMPLETED_SUBOPERATIONS, self.completed),
            (tags::NUMBER_OF_FAILED_SUBOPERATIONS, self.failed),
            (tags::NUMBER_OF_WARNING_SUBOPERATIONS, self.warning),
        ] {
            if let Some(v) = v {
                put(tag, VR::US, PrimitiveValue::from(v));
            }
        }
        if let Some(v) = &self.affected_sop_instance_uid {
            put(
                tags::AFFECTED_SOP_INSTANCE_UID,
                VR::UI,
                PrimitiveValue::from(v.as_str()),
            );
        }
        if let Some(v) = &self.move_originator_ae_title {
            put(
                tags::MOVE_ORIGINATOR_APPLICATION_ENTITY_TITLE,
                VR::AE,
                PrimitiveValue::from(v.as_str()),
            );
        }
        if let Some(v) = self.move_originator_message_id {
            put(
                tags::MOVE_ORIGINATOR_MESSAGE_ID,
                VR::US,
                PrimitiveValue::from(v),
            );
        }
        let mut body = Vec::with_capacity(256);
        obj.write_dataset_with_ts(&mut body, &IMPLICIT_VR_LITTLE_ENDIAN.erased())
            .map_err(|e| CommandError::Encode(e.to_string()))?;
        // (0000,0000) UL, implicit VR LE: tag, 4-byte length, 4-byte value.
        let mut out = Vec::with_capacity(body.len() + 12);
        out.extend_from_slice(&[0, 0, 0, 0, 4, 0, 0, 0]);
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// The response to `request` with the given command field and status (PS3.7 9.3).
    pub fn response_to(request: &Command, field: CommandField, status: Status) -> Command {
        Command::response_with_field(request, field as u16, status)
    }

    /// As `response_to`, for a command field that has no `CommandField` (an unknown request
    /// is answered with its own field with bit 15 set, PS3.7 E.1-1).
    pub fn response_with_field(request: &Command, command_field: u16, status: Status) -> Command {
        Command {
            command_field,
            message_id_being_responded_to: request.message_id,
            affected_sop_class_uid: request.affected_sop_class_uid.clone(),
            affected_sop_instance_uid: request.affected_sop_instance_uid.clone(),
            data_set_type: NO_DATA_SET,
            status: Some(status.code),
            error_comment: status.comment,
            ..Command::default()
        }
    }

    pub fn echo_rq(message_id: u16) -> Command {
        Command {
            command_field: CommandField::CEchoRq as u16,
            message_id: Some(message_id),
            affected_sop_class_uid: Some(dicom_dictionary_std::uids::VERIFICATION.to_string()),
            data_set_type: NO_DATA_SET,
            ..Command::default()
        }
    }

    pub fn store_rq(message_id: u16, sop_class: &str, sop_instance: &str) -> Command {
        Command {
            command_field: CommandField::CStoreRq as u16,
            message_id: Some(message_id),
            affected_sop_class_uid: Some(sop_class.to_string()),
            affected_sop_instance_uid: Some(sop_instance.to_string()),
            priority: Some(0),
            data_set_type: DATA_SET_PRESENT,
            ..Command::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_request_round_trips() {
        let rq = Command::store_rq(7, "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4");
        let bytes = rq.encode().unwrap();
        // Group length covers exactly what follows it.
        let len = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
        assert_eq!(len, bytes.len() - 12);
        let back = Command::decode(&bytes).unwrap();
        assert_eq!(back, rq);
        assert_eq!(back.field(), Some(CommandField::CStoreRq));
        assert!(back.has_data_set());
    }

    #[test]
    fn response_carries_status_and_comment() {
        let rq = Command::store_rq(9, "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4");
        let rsp = Command::response_to(
            &rq,
            CommandField::CStoreRsp,
            Status::with_comment(status::OUT_OF_RESOURCES, "write quorum not met"),
        );
        let back = Command::decode(&rsp.encode().unwrap()).unwrap();
        assert_eq!(back.message_id_being_responded_to, Some(9));
        assert_eq!(back.status, Some(0xA700));
        assert_eq!(back.error_comment.as_deref(), Some("write quorum not met"));
        assert!(!back.has_data_set());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(Command::decode(&[1, 2, 3]).is_err());
        assert!(Command::decode(&[]).is_err());
        assert!(Command::decode(&vec![0u8; MAX_COMMAND_SET + 1]).is_err());
    }
}
