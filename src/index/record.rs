//! Record extraction: the attributes the index keeps, read from the data set as received
//! (parsing stops before Pixel Data, which is never decoded on ingest).

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use serde::{Deserialize, Serialize};

use crate::storage::{Uid, UidError};

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("parsing the data set ({transfer_syntax}): {reason}")]
    Parse {
        transfer_syntax: String,
        reason: String,
    },
    #[error("{attribute} is missing")]
    Missing { attribute: &'static str },
    #[error("{attribute} is invalid: {source}")]
    InvalidUid {
        attribute: &'static str,
        source: UidError,
    },
}

/// What the index keeps of one instance (also the change-log record shipped to a standby).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub patient_id: String,
    pub issuer_of_patient_id: String,
    pub patient_name: Option<String>,
    pub patient_birth_date: Option<String>,
    pub patient_sex: Option<String>,
    pub study_instance_uid: String,
    pub study_date: Option<String>,
    pub study_time: Option<String>,
    pub accession_number: Option<String>,
    pub study_id: Option<String>,
    pub study_description: Option<String>,
    pub referring_physician_name: Option<String>,
    pub series_instance_uid: String,
    pub modality: Option<String>,
    pub series_number: Option<i64>,
    pub series_description: Option<String>,
    pub body_part_examined: Option<String>,
    pub series_date: Option<String>,
    pub series_time: Option<String>,
    pub sop_instance_uid: String,
    pub sop_class_uid: String,
    pub instance_number: Option<i64>,
    pub number_of_frames: Option<i64>,
    pub rows: Option<i64>,
    pub columns: Option<i64>,
    pub specific_character_set: Option<String>,
    /// Filled in by the ingest path.
    pub transfer_syntax_uid: String,
    pub storage_key: String,
    pub size: u64,
    /// The stored object's checksum as recorded (`storage::digest`); `sha256` in change-log
    /// rows written before BLAKE3 was adopted.
    #[serde(alias = "sha256")]
    pub digest: String,
    /// The read check recorded beside it (`storage::digest`); absent in change-log rows
    /// written before read checks.
    #[serde(default)]
    pub read_check: Option<String>,
    pub calling_ae_title: Option<String>,
}

/// The identifying UIDs of a data set, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceUids {
    pub study: Uid,
    pub series: Uid,
    pub sop_instance: Uid,
    pub sop_class: Uid,
}

impl InstanceRecord {
    pub fn uids(&self) -> Result<InstanceUids, RecordError> {
        Ok(InstanceUids {
            study: uid_attr("StudyInstanceUID", &self.study_instance_uid)?,
            series: uid_attr("SeriesInstanceUID", &self.series_instance_uid)?,
            sop_instance: uid_attr("SOPInstanceUID", &self.sop_instance_uid)?,
            sop_class: uid_attr("SOPClassUID", &self.sop_class_uid)?,
        })
    }
}

fn uid_attr(attribute: &'static str, value: &str) -> Result<Uid, RecordError> {
    if value.trim_end_matches(['\0', ' ']).is_empty() {
        return Err(RecordError::Missing { attribute });
    }
    Uid::parse(value).map_err(|source| RecordError::InvalidUid { attribute, source })
}

/// Parse the data set bytes (encoded in `transfer_syntax`) up to Pixel Data, after the bounded
/// pre-scan of the whole data set (`crate::dataset`): a malformed, truncated or too deeply
/// nested data set is refused, and a deflated one may inflate to at most `max_inflated` bytes.
pub fn parse_header(
    dataset: &[u8],
    transfer_syntax: &str,
    max_inflated: u64,
) -> Result<InMemDicomObject, RecordError> {
    crate::dataset::parse_header(dataset, transfer_syntax, max_inflated).map_err(|e| {
        RecordError::Parse {
            transfer_syntax: transfer_syntax.to_string(),
            reason: e.to_string(),
        }
    })
}

/// Extract the index record from a parsed header; storage fields are left empty.
/// Study, Series and SOP Instance UIDs and the SOP Class UID must be present and valid.
pub fn extract(obj: &InMemDicomObject) -> Result<InstanceRecord, RecordError> {
    let record = InstanceRecord {
        patient_id: text(obj, tags::PATIENT_ID).unwrap_or_default(),
        issuer_of_patient_id: text(obj, tags::ISSUER_OF_PATIENT_ID).unwrap_or_default(),
        patient_name: text(obj, tags::PATIENT_NAME),
        patient_birth_date: text(obj, tags::PATIENT_BIRTH_DATE),
        patient_sex: text(obj, tags::PATIENT_SEX),
        study_instance_uid: text(obj, tags::STUDY_INSTANCE_UID).unwrap_or_default(),
        study_date: text(obj, tags::STUDY_DATE),
        study_time: text(obj, tags::STUDY_TIME),
        accession_number: text(obj, tags::ACCESSION_NUMBER),
        study_id: text(obj, tags::STUDY_ID),
        study_description: text(obj, tags::STUDY_DESCRIPTION),
        referring_physician_name: text(obj, tags::REFERRING_PHYSICIAN_NAME),
        series_instance_uid: text(obj, tags::SERIES_INSTANCE_UID).unwrap_or_default(),
        modality: text(obj, tags::MODALITY),
        series_number: int(obj, tags::SERIES_NUMBER),
        series_description: text(obj, tags::SERIES_DESCRIPTION),
        body_part_examined: text(obj, tags::BODY_PART_EXAMINED),
        series_date: text(obj, tags::SERIES_DATE),
        series_time: text(obj, tags::SERIES_TIME),
        sop_instance_uid: text(obj, tags::SOP_INSTANCE_UID).unwrap_or_default(),
        sop_class_uid: text(obj, tags::SOP_CLASS_UID).unwrap_or_default(),
        instance_number: int(obj, tags::INSTANCE_NUMBER),
        number_of_frames: int(obj, tags::NUMBER_OF_FRAMES),
        rows: int(obj, tags::ROWS),
        columns: int(obj, tags::COLUMNS),
        specific_character_set: obj
            .get(tags::SPECIFIC_CHARACTER_SET)
            .and_then(|e| e.to_multi_str().ok())
            .map(|v| v.join("\\"))
            .filter(|s| !s.is_empty()),
        transfer_syntax_uid: String::new(),
        storage_key: String::new(),
        size: 0,
        digest: String::new(),
        read_check: None,
        calling_ae_title: None,
    };
    let uids = record.uids()?;
    Ok(InstanceRecord {
        study_instance_uid: uids.study.to_string(),
        series_instance_uid: uids.series.to_string(),
        sop_instance_uid: uids.sop_instance.to_string(),
        sop_class_uid: uids.sop_class.to_string(),
        ..record
    })
}

/// A text attribute with padding removed; `None` when absent or empty. Multi-valued text is
/// kept with its backslash separators, as it is on the wire.
fn text(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    let e = obj.get(tag)?;
    let v = e.to_multi_str().ok()?;
    let joined = v
        .iter()
        .map(|s| s.trim_end_matches(['\0', ' ']).trim_start_matches(' '))
        .collect::<Vec<_>>()
        .join("\\");
    let charset = obj
        .get(tags::SPECIFIC_CHARACTER_SET)
        .and_then(|e| e.to_multi_str().ok())
        .map(|v| v.join("\\"));
    let joined = crate::charset::redecode(joined, charset.as_deref());
    if joined.is_empty() {
        None
    } else {
        Some(joined)
    }
}

fn int(obj: &InMemDicomObject, tag: Tag) -> Option<i64> {
    obj.get(tag)?.to_int::<i64>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN;

    fn encoded(spec: &crate::synth::Spec) -> Vec<u8> {
        let mut out = Vec::new();
        spec.dataset()
            .write_dataset_with_ts(&mut out, &EXPLICIT_VR_LITTLE_ENDIAN.erased())
            .unwrap();
        out
    }

    #[test]
    fn text_is_decoded_with_the_data_sets_character_set() {
        for (charset, name) in [
            ("ISO_IR 100", "Müller^Jürgen"),
            ("ISO_IR 192", "Dvořák^Antonín"),
            ("", "Doe^John"),
        ] {
            let mut spec = crate::synth::Spec::ct(1, 1, 1, 8);
            spec.charset = charset.into();
            spec.patient_name = name.into();
            let bytes = encoded(&spec);
            let rec =
                extract(&parse_header(&bytes, "1.2.840.10008.1.2.1", 1 << 20).unwrap()).unwrap();
            assert_eq!(rec.patient_name.as_deref(), Some(name), "{charset}");
        }
    }

    /// The change-log record a standby applies carries the read check; one written before
    /// read checks (and before BLAKE3: `sha256`) is read as having none.
    #[test]
    fn change_log_records_carry_the_read_check_and_older_ones_have_none() {
        let mut rec = crate::synth::record(&crate::synth::Spec::ct(1, 1, 1, 8));
        rec.digest = "blake3:00".into();
        rec.read_check = Some("xxh3-128:01".into());
        let json = serde_json::to_value(&rec).unwrap();
        assert_eq!(json["read_check"], "xxh3-128:01");
        let back: InstanceRecord = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back, rec);
        let mut older = json;
        let o = older.as_object_mut().unwrap();
        o.remove("read_check");
        let digest = o.remove("digest").unwrap();
        o.insert("sha256".into(), digest);
        let back: InstanceRecord = serde_json::from_value(older).unwrap();
        assert_eq!(back.read_check, None);
        assert_eq!(back.digest, "blake3:00");
    }
}
