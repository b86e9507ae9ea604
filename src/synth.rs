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
            study_date: "20240315".into(),
            study_time: "101500".into(),
            accession_number: format!("ACC{study:05}"),
            study_description: "Synthetic study".into(),
            referring_physician: "Referrer^Rita".into(),
            charset: "ISO_IR 192".into(),
            size,
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
            o.put(DataElement::new(
                tags::SAMPLES_PER_PIXEL,
                VR::US,
                PrimitiveValue::from(1u16),
            ));
            o.put(DataElement::new(
                tags::PHOTOMETRIC_INTERPRETATION,
                VR::CS,
                s("MONOCHROME2"),
            ));
            o.put(DataElement::new(
                tags::ROWS,
                VR::US,
                PrimitiveValue::from(self.size),
            ));
            o.put(DataElement::new(
                tags::COLUMNS,
                VR::US,
                PrimitiveValue::from(self.size),
            ));
            o.put(DataElement::new(
                tags::BITS_ALLOCATED,
                VR::US,
                PrimitiveValue::from(16u16),
            ));
            o.put(DataElement::new(
                tags::BITS_STORED,
                VR::US,
                PrimitiveValue::from(12u16),
            ));
            o.put(DataElement::new(
                tags::HIGH_BIT,
                VR::US,
                PrimitiveValue::from(11u16),
            ));
            o.put(DataElement::new(
                tags::PIXEL_REPRESENTATION,
                VR::US,
                PrimitiveValue::from(0u16),
            ));
            o.put(DataElement::new(
                tags::RESCALE_INTERCEPT,
                VR::DS,
                s("-1024"),
            ));
            o.put(DataElement::new(tags::RESCALE_SLOPE, VR::DS, s("1")));
            // A gradient with the instance number mixed in, so no two images are identical.
            let seed = self.instance_number as u32;
            let pixels: Vec<u16> = (0..n * n)
                .map(|i| {
                    let (x, y) = ((i % n) as u32, (i / n) as u32);
                    ((x * 3 + y * 5 + seed * 7) % 4096) as u16
                })
                .collect();
            o.put(DataElement::new(
                tags::PIXEL_DATA,
                VR::OW,
                PrimitiveValue::U16(pixels.into()),
            ));
        }
        o
    }

    /// Write the instance as a Part 10 file.
    pub fn write(&self, path: &Path) -> Result<(), String> {
        let meta = FileMetaTableBuilder::new()
            .media_storage_sop_class_uid(self.sop_class.as_str())
            .media_storage_sop_instance_uid(self.sop_uid.as_str())
            .transfer_syntax(self.transfer_syntax.as_str())
            .build()
            .map_err(|e| e.to_string())?;
        let file = FileDicomObject::new_empty_with_meta(meta);
        let mut file = file;
        for e in self.dataset() {
            file.put(e);
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        }
        file.write_to_file(path)
            .map_err(|e| format!("writing {}: {e}", path.display()))
    }
}

/// Write a corpus: `studies` studies of `per_study` CT images of `size`x`size` under `dir`.
pub fn write_corpus(
    dir: &Path,
    first_study: u32,
    studies: u32,
    per_study: u32,
    size: u16,
) -> Result<usize, String> {
    let mut n = 0;
    for st in first_study..first_study + studies {
        for i in 1..=per_study {
            let spec = Spec::ct(st, 1, i, size);
            spec.write(&dir.join(format!("{st}/{i}.dcm")))?;
            n += 1;
        }
    }
    Ok(n)
}
