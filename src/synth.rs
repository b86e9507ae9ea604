//! Synthetic DICOM instances for tests and benchmarks (`pacsd synth`): CT-like 512x512
//! 16-bit images and small secondary-capture objects, with deterministic UIDs.

use std::path::Path;

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::{FileDicomObject, InMemDicomObject};

/// UID root for synthetic data: 2.25 + a fixed random number (PS3.5 B.2), so it can never
/// collide with a real device's UIDs.
pub const SYNTH_ROOT: &str = "2.25.61171899517253458302";

/// What one synthetic instance looks like.
#[derive(Debug, Clone)]
pub struct Spec {
    pub patient_id: String,
    pub patient_name: String,
    pub study_uid: String,
    pub series_uid: String,
    pub sop_uid: String,
    pub sop_class: String,
    pub modality: String,
    pub instance_number: i32,
    pub study_date: String,
    pub study_time: String,
    pub accession_number: String,
    pub study_description: String,
    pub referring_physician: String,
    /// Specific Character Set written into the data set (text is encoded with it).
    pub charset: String,
    /// Rows = columns; 0 writes no pixel data.
    pub size: u16,
    /// 8 bits per pixel instead of 12 stored in 16.
    pub eight_bit: bool,
    pub transfer_syntax: String,
}

impl Spec {
    /// A CT image `n` of series `series` of study `study`, `size`x`size` 16-bit.
    pub fn ct(study: u32, series: u32, n: u32, size: u16) -> Spec {
        Spec {
            patient_id: format!("PAT{:05}", study % 1000),
            patient_name: format!("Synthetic^Patient{:05}", study % 1000),
            study_uid: format!("{SYNTH_ROOT}.{study}"),
            series_uid: format!("{SYNTH_ROOT}.{study}.{series}"),
            sop_uid: format!("{SYNTH_ROOT}.{study}.{series}.{n}"),
            sop_class: uids::CT_IMAGE_STORAGE.to_string(),
            modality: "CT".into(),
            instance_number: n as i32,
            study_date: synthetic_date(study),
            study_time: "101500".into(),
            accession_number: format!("ACC{study:05}"),
            study_description: "Synthetic study".into(),
            referring_physician: "Referrer^Rita".into(),
            charset: "ISO_IR 192".into(),
            size,
            eight_bit: false,
            transfer_syntax: uids::EXPLICIT_VR_LITTLE_ENDIAN.to_string(),
        }
    }

    /// Build the data set.
    pub fn dataset(&self) -> InMemDicomObject {
        let mut o = InMemDicomObject::new_empty();
        let s = |v: &str| PrimitiveValue::from(v);
        let instance_number = self.instance_number.to_string();
        let text: [(dicom_core::Tag, VR, &str); 19] = [
            (tags::SPECIFIC_CHARACTER_SET, VR::CS, &self.charset),
            (tags::SOP_CLASS_UID, VR::UI, &self.sop_class),
            (tags::SOP_INSTANCE_UID, VR::UI, &self.sop_uid),
            (tags::STUDY_DATE, VR::DA, &self.study_date),
            (tags::STUDY_TIME, VR::TM, &self.study_time),
            (tags::ACCESSION_NUMBER, VR::SH, &self.accession_number),
            (tags::MODALITY, VR::CS, &self.modality),
            (
                tags::REFERRING_PHYSICIAN_NAME,
                VR::PN,
                &self.referring_physician,
            ),
            (tags::STUDY_DESCRIPTION, VR::LO, &self.study_description),
            (tags::SERIES_DESCRIPTION, VR::LO, "Synthetic series"),
            (tags::PATIENT_NAME, VR::PN, &self.patient_name),
            (tags::PATIENT_ID, VR::LO, &self.patient_id),
            (tags::PATIENT_BIRTH_DATE, VR::DA, "19700101"),
            (tags::PATIENT_SEX, VR::CS, "O"),
            (tags::STUDY_INSTANCE_UID, VR::UI, &self.study_uid),
            (tags::SERIES_INSTANCE_UID, VR::UI, &self.series_uid),
            (tags::STUDY_ID, VR::SH, "1"),
            (tags::SERIES_NUMBER, VR::IS, "1"),
            (tags::INSTANCE_NUMBER, VR::IS, &instance_number),
        ];
        for (tag, vr, value) in text {
            o.put(DataElement::new(tag, vr, s(value)));
        }
        if self.size > 0 {
            let n = self.size as usize;
            // 8-bit images (for codecs such as JPEG baseline) or 12-in-16-bit CT-like ones.
            let (allocated, stored) = if self.eight_bit {
                (8u16, 8u16)
            } else {
                (16, 12)
            };
            let us = |v: u16| PrimitiveValue::from(v);
            o.put(DataElement::new(tags::SAMPLES_PER_PIXEL, VR::US, us(1)));
            o.put(DataElement::new(
                tags::PHOTOMETRIC_INTERPRETATION,
                VR::CS,
                s("MONOCHROME2"),
            ));
            o.put(DataElement::new(tags::ROWS, VR::US, us(self.size)));
            o.put(DataElement::new(tags::COLUMNS, VR::US, us(self.size)));
            o.put(DataElement::new(
                tags::BITS_ALLOCATED,
                VR::US,
                us(allocated),
            ));
            o.put(DataElement::new(tags::BITS_STORED, VR::US, us(stored)));
            o.put(DataElement::new(tags::HIGH_BIT, VR::US, us(stored - 1)));
            o.put(DataElement::new(tags::PIXEL_REPRESENTATION, VR::US, us(0)));
            o.put(DataElement::new(
                tags::RESCALE_INTERCEPT,
                VR::DS,
                s("-1024"),
            ));
            o.put(DataElement::new(tags::RESCALE_SLOPE, VR::DS, s("1")));
            // A smooth gradient with the instance number mixed in, so no two images are
            // identical (and lossy codecs stay close to it).
            let seed = self.instance_number as u32;
            let value = |i: usize| {
                let (x, y) = ((i % n) as u32, (i / n) as u32);
                x * 3 + y * 5 + seed * 7
            };
            let pixels = if self.eight_bit {
                PrimitiveValue::U8((0..n * n).map(|i| (value(i) % 256) as u8).collect())
            } else {
                PrimitiveValue::U16((0..n * n).map(|i| (value(i) % 4096) as u16).collect())
            };
            let vr = if self.eight_bit { VR::OB } else { VR::OW };
            o.put(DataElement::new(tags::PIXEL_DATA, vr, pixels));
        }
        o
    }

    /// Write the instance as a Part 10 file.
    pub fn write(&self, path: &Path) -> Result<(), SynthError> {
        let meta = FileMetaTableBuilder::new()
            .media_storage_sop_class_uid(self.sop_class.as_str())
            .media_storage_sop_instance_uid(self.sop_uid.as_str())
            .transfer_syntax(self.transfer_syntax.as_str())
            .build()?;
        let file = FileDicomObject::new_empty_with_meta(meta);
        let mut file = file;
        for e in self.dataset() {
            file.put(e);
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| SynthError::Dir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        file.write_to_file(path)
            .map_err(|source| SynthError::Write {
                path: path.to_path_buf(),
                source: Box::new(source),
            })
    }
}

/// Why a synthetic instance could not be written.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("file meta: {0}")]
    Meta(#[from] dicom_object::meta::Error),
    #[error("creating {}: {source}", path.display())]
    Dir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("writing {}: {source}", path.display())]
    Write {
        path: std::path::PathBuf,
        source: Box<dicom_object::WriteError>,
    },
}

/// A study date that spreads studies over about 20 years (one day per study number), so that
/// date-range queries over a synthetic corpus are selective.
pub fn synthetic_date(study: u32) -> String {
    // Days counted from 2005-01-01 (day 12,784 after 1970-01-01).
    let (y, m, d) = crate::calendar::civil_from_days(12_784 + (study % 7_300) as i64);
    format!("{y:04}{m:02}{d:02}")
}

/// The index record of a synthetic instance, as ingest would make it (for filling an index
/// directly in benchmarks; the object itself is not written).
pub fn record(spec: &Spec) -> crate::index::InstanceRecord {
    crate::index::InstanceRecord {
        patient_id: spec.patient_id.clone(),
        issuer_of_patient_id: String::new(),
        patient_name: Some(spec.patient_name.clone()),
        patient_birth_date: Some("19700101".into()),
        patient_sex: Some("O".into()),
        study_instance_uid: spec.study_uid.clone(),
        study_date: Some(spec.study_date.clone()),
        study_time: Some(spec.study_time.clone()),
        accession_number: Some(spec.accession_number.clone()),
        study_id: Some("1".into()),
        study_description: Some(spec.study_description.clone()),
        referring_physician_name: Some(spec.referring_physician.clone()),
        series_instance_uid: spec.series_uid.clone(),
        modality: Some(spec.modality.clone()),
        series_number: Some(1),
        series_description: Some("Synthetic series".into()),
        body_part_examined: None,
        series_date: None,
        series_time: None,
        sop_instance_uid: spec.sop_uid.clone(),
        sop_class_uid: spec.sop_class.clone(),
        instance_number: Some(i64::from(spec.instance_number)),
        number_of_frames: None,
        rows: None,
        columns: None,
        specific_character_set: Some(spec.charset.clone()),
        transfer_syntax_uid: spec.transfer_syntax.clone(),
        storage_key: format!("synthetic/{}", spec.sop_uid),
        size: 0,
        digest: String::new(),
        read_check: None,
        calling_ae_title: None,
    }
}

/// Instance `n` of series `series` of study `study` in a synthetic corpus: the series'
/// modality cycles through CT, MR, CR, US, PR so that modality queries are selective.
pub fn corpus_spec(study: u32, series: u32, n: u32, size: u16) -> Spec {
    let mut spec = Spec::ct(study, series, n, size);
    spec.modality = ["CT", "MR", "CR", "US", "PR"][(series.max(1) as usize - 1) % 5].to_string();
    spec
}

/// Write a corpus under `dir`: `studies` studies (one directory each) of `series` series of
/// `per_series` images of `size`x`size`.
pub fn write_corpus(
    dir: &Path,
    first_study: u32,
    studies: u32,
    series: u32,
    per_series: u32,
    size: u16,
) -> Result<usize, SynthError> {
    let mut n = 0;
    for st in first_study..first_study + studies {
        for se in 1..=series {
            for i in 1..=per_series {
                corpus_spec(st, se, i, size).write(&dir.join(format!("{st}/{se}-{i}.dcm")))?;
                n += 1;
            }
        }
    }
    Ok(n)
}

/// Raw Explicit VR Little Endian encodings, to build malformed or extreme data sets byte by
/// byte (the parser's own tests and tests/hostile.rs): what a hostile peer could send, which
/// no encoder would write.
pub mod raw {
    /// Undefined length.
    pub const UNDEFINED: u32 = 0xFFFF_FFFF;

    /// An element with a 16-bit length.
    pub fn short(tag: (u16, u16), vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
        let mut v = tag_bytes(tag);
        v.extend_from_slice(vr);
        v.extend_from_slice(&(value.len() as u16).to_le_bytes());
        v.extend_from_slice(value);
        v
    }

    /// An element with a 32-bit length field holding `len` (whatever `value`'s length).
    pub fn long(tag: (u16, u16), vr: &[u8; 2], len: u32, value: &[u8]) -> Vec<u8> {
        let mut v = tag_bytes(tag);
        v.extend_from_slice(vr);
        v.extend_from_slice(&[0, 0]);
        v.extend_from_slice(&len.to_le_bytes());
        v.extend_from_slice(value);
        v
    }

    /// An item, item delimitation or sequence delimitation tag (FFFE,`element`) and length.
    pub fn marker(element: u16, len: u32) -> Vec<u8> {
        let mut v = tag_bytes((0xFFFE, element));
        v.extend_from_slice(&len.to_le_bytes());
        v
    }

    /// `levels` sequences nested inside each other, all of undefined length, with `inner` in
    /// the innermost item.
    pub fn nested(levels: usize, inner: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        for _ in 0..levels {
            v.extend(long((0x0040, 0xA730), b"SQ", UNDEFINED, &[]));
            v.extend(marker(0xE000, UNDEFINED));
        }
        v.extend_from_slice(inner);
        for _ in 0..levels {
            v.extend(marker(0xE00D, 0));
            v.extend(marker(0xE0DD, 0));
        }
        v
    }

    fn tag_bytes(tag: (u16, u16)) -> Vec<u8> {
        let mut v = Vec::with_capacity(12);
        v.extend_from_slice(&tag.0.to_le_bytes());
        v.extend_from_slice(&tag.1.to_le_bytes());
        v
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn synthetic_dates_are_valid_and_spread() {
        assert_eq!(super::synthetic_date(0), "20050101");
        assert_eq!(super::synthetic_date(59), "20050301");
        assert_eq!(super::synthetic_date(365), "20060101");
        assert_ne!(super::synthetic_date(1), super::synthetic_date(2));
    }
}
