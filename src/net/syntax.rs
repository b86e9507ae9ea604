//! Which abstract and transfer syntaxes this node accepts (PS3.4 Annex B, PS3.5 Section 10),
//! taken from the dicom-rs dictionaries rather than a hand-typed list.

use std::sync::OnceLock;

use dicom_core::dictionary::{UidDictionary, UidType};
use dicom_dictionary_std::StandardSopClassDictionary;
use dicom_dictionary_std::uids;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

use crate::config::Service;

/// Query/Retrieve FIND SOP classes (PS3.4 C.6): Patient Root, Study Root, Patient/Study Only.
pub const FIND_SOP_CLASSES: [&str; 3] = [
    uids::PATIENT_ROOT_QUERY_RETRIEVE_INFORMATION_MODEL_FIND,
    uids::STUDY_ROOT_QUERY_RETRIEVE_INFORMATION_MODEL_FIND,
    "1.2.840.10008.5.1.4.1.2.3.1",
];

/// Query/Retrieve MOVE SOP classes (PS3.4 C.6).
pub const MOVE_SOP_CLASSES: [&str; 3] = [
    uids::PATIENT_ROOT_QUERY_RETRIEVE_INFORMATION_MODEL_MOVE,
    uids::STUDY_ROOT_QUERY_RETRIEVE_INFORMATION_MODEL_MOVE,
    "1.2.840.10008.5.1.4.1.2.3.2",
];

/// Query/Retrieve GET SOP classes (PS3.4 C.6).
pub const GET_SOP_CLASSES: [&str; 3] = [
    uids::PATIENT_ROOT_QUERY_RETRIEVE_INFORMATION_MODEL_GET,
    uids::STUDY_ROOT_QUERY_RETRIEVE_INFORMATION_MODEL_GET,
    "1.2.840.10008.5.1.4.1.2.3.3",
];

/// The service an abstract syntax belongs to, if this node provides it.
pub fn service_of(abstract_syntax: &str) -> Option<Service> {
    if abstract_syntax == uids::VERIFICATION {
        Some(Service::Echo)
    } else if FIND_SOP_CLASSES.contains(&abstract_syntax) {
        Some(Service::Find)
    } else if MOVE_SOP_CLASSES.contains(&abstract_syntax) {
        Some(Service::Move)
    } else if GET_SOP_CLASSES.contains(&abstract_syntax) {
        Some(Service::Get)
    } else if is_storage_sop_class(abstract_syntax) {
        Some(Service::Store)
    } else {
        None
    }
}

/// Whether `ts` is a syntax with encapsulated (compressed) pixel data, per the registry.
pub fn is_encapsulated(ts: &str) -> bool {
    use dicom_encoding::TransferSyntaxIndex;
    TransferSyntaxRegistry
        .get(ts)
        .is_some_and(|t| t.is_encapsulated_pixel_data())
}

/// Whether `uid` is a Storage SOP Class of the standard (PS3.4 Annex B, B.5), current or
/// retired, as listed by dicom-dictionary-std: a SOP class whose name says "Storage", other
/// than the Storage Commitment service and the DICOMDIR (Media Storage Directory) class,
/// which are not stored over the network.
pub fn is_storage_sop_class(uid: &str) -> bool {
    StandardSopClassDictionary
        .by_uid(uid)
        .is_some_and(|e| e.r#type == UidType::SopClass && is_storage_name(e.name))
}

/// The naming rule of PS3.6 Table A-1 for Storage SOP classes.
pub fn is_storage_name(name: &str) -> bool {
    name.split(' ').any(|w| w == "Storage")
        && !name.starts_with("Storage Commitment")
        && !name.starts_with("Media Storage Directory")
}

/// JPIP "referenced" syntaxes carry a URL to a JPIP server instead of pixel data (PS3.5
/// A.6, A.7): an archive that acknowledged them would not hold the image, so they are refused.
const JPIP_REFERENCED: [&str; 4] = [
    uids::JPIP_REFERENCED,
    uids::JPIP_REFERENCED_DEFLATE,
    uids::JPIPHTJ2K_REFERENCED,
    uids::JPIPHTJ2K_REFERENCED_DEFLATE,
];

/// Transfer syntaxes accepted for storage, stored as received: every syntax in the dicom-rs
/// registry whose data set encoding can be read (pixel data is never decoded on ingest, so
/// an encapsulated syntax needs no codec here), less the JPIP referenced ones. Sorted by UID.
pub fn storage_transfer_syntaxes() -> &'static [&'static str] {
    static LIST: OnceLock<Vec<&'static str>> = OnceLock::new();
    LIST.get_or_init(|| {
        let mut v: Vec<&'static str> = TransferSyntaxRegistry
            .iter()
            .filter(|ts| !ts.is_unsupported())
            .map(|ts| ts.uid())
            .filter(|uid| !JPIP_REFERENCED.contains(uid))
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    })
}

/// Whether `ts` may be accepted for storage.
pub fn is_storage_transfer_syntax(ts: &str) -> bool {
    storage_transfer_syntaxes().contains(&ts)
}

/// Verification (C-ECHO) carries no data set, and C-FIND identifiers are small: the two
/// uncompressed little-endian syntaxes.
pub const ECHO_TRANSFER_SYNTAXES: [&str; 2] = [
    uids::EXPLICIT_VR_LITTLE_ENDIAN,
    uids::IMPLICIT_VR_LITTLE_ENDIAN,
];

/// Pick the transfer syntax for a proposed context: the first proposed one we accept, which
/// honours the requestor's order of preference (PS3.8 9.3.2.2).
pub fn choose_transfer_syntax(service: Service, proposed: &[String]) -> Option<&str> {
    proposed
        .iter()
        .map(|s| s.trim_end_matches(['\0', ' ']))
        .find(|ts| match service {
            Service::Echo | Service::Find | Service::Move | Service::Get => {
                ECHO_TRANSFER_SYNTAXES.contains(ts)
            }
            _ => is_storage_transfer_syntax(ts),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_classes_come_from_the_dictionary() {
        assert!(is_storage_sop_class(uids::CT_IMAGE_STORAGE));
        assert!(is_storage_sop_class(uids::ENHANCED_SR_STORAGE));
        assert!(is_storage_sop_class(uids::ENCAPSULATED_PDF_STORAGE));
        assert!(is_storage_sop_class(uids::TWELVE_LEAD_ECG_WAVEFORM_STORAGE));
        assert!(is_storage_sop_class(uids::RT_PLAN_STORAGE));
        assert!(!is_storage_sop_class(uids::STORAGE_COMMITMENT_PUSH_MODEL));
        assert!(!is_storage_sop_class(uids::MEDIA_STORAGE_DIRECTORY_STORAGE));
        assert!(!is_storage_sop_class(uids::VERIFICATION));
        assert!(!is_storage_sop_class(
            uids::STUDY_ROOT_QUERY_RETRIEVE_INFORMATION_MODEL_FIND
        ));
        assert!(!is_storage_sop_class("1.2.3.4"));
    }

    #[test]
    fn transfer_syntaxes_cover_native_and_encapsulated() {
        let ts = storage_transfer_syntaxes();
        for uid in [
            uids::IMPLICIT_VR_LITTLE_ENDIAN,
            uids::EXPLICIT_VR_LITTLE_ENDIAN,
            "1.2.840.10008.1.2.2", // Explicit VR Big Endian (retired, still received)
            uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
            uids::JPEG_BASELINE8_BIT,
            uids::JPEG_LOSSLESS_SV1,
            uids::JPEGLS_LOSSLESS,
            uids::JPEG2000_LOSSLESS,
            uids::RLE_LOSSLESS,
        ] {
            assert!(ts.contains(&uid), "{uid} missing from {ts:?}");
        }
        for uid in JPIP_REFERENCED {
            assert!(
                !is_storage_transfer_syntax(uid),
                "{uid} is a reference, not an image"
            );
        }
    }

    #[test]
    fn requestor_preference_wins() {
        let proposed = vec![
            "1.2.3.999".to_string(),
            uids::JPEG_BASELINE8_BIT.to_string(),
            uids::EXPLICIT_VR_LITTLE_ENDIAN.to_string(),
        ];
        assert_eq!(
            choose_transfer_syntax(Service::Store, &proposed),
            Some(uids::JPEG_BASELINE8_BIT)
        );
        assert_eq!(
            choose_transfer_syntax(Service::Echo, &proposed),
            Some(uids::EXPLICIT_VR_LITTLE_ENDIAN)
        );
        assert_eq!(
            choose_transfer_syntax(Service::Store, &["1.2.3".to_string()]),
            None
        );
    }
}
