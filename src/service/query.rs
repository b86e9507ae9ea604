//! The Query/Retrieve information models (PS3.4 C.6): which levels each model has, which keys
//! each level supports, and the translation of a C-FIND identifier into an index `Query`.

use dicom_core::{Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::InMemDicomObject;

use crate::index::query::{Column, Condition, Kind, Level, Matcher, Query};
use crate::storage::Uid;

/// A Query/Retrieve information model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Model {
    PatientRoot,
    StudyRoot,
    /// Patient/Study Only (retired, PS3.4 C.6.3): PATIENT and STUDY levels.
    PatientStudyOnly,
}

/// The FIND SOP classes this node provides, with their model.
pub const FIND_SOP_CLASSES: [(&str, Model); 3] = [
    (
        uids::PATIENT_ROOT_QUERY_RETRIEVE_INFORMATION_MODEL_FIND,
        Model::PatientRoot,
    ),
    (
        uids::STUDY_ROOT_QUERY_RETRIEVE_INFORMATION_MODEL_FIND,
        Model::StudyRoot,
    ),
    ("1.2.840.10008.5.1.4.1.2.3.1", Model::PatientStudyOnly),
];

impl Model {
    /// Every model, in the order of the SOP class tables (`FIND_SOP_CLASSES`,
    /// `net::syntax::MOVE_SOP_CLASSES`, `GET_SOP_CLASSES`).
    const ALL: [Model; 3] = [
        Model::PatientRoot,
        Model::StudyRoot,
        Model::PatientStudyOnly,
    ];

    fn position(self) -> usize {
        Model::ALL.iter().position(|m| *m == self).expect("listed")
    }

    /// The C-FIND SOP class of this model (what an SCU proposes).
    pub fn find_sop_class(self) -> &'static str {
        FIND_SOP_CLASSES[self.position()].0
    }

    /// The C-MOVE SOP class of this model.
    pub fn move_sop_class(self) -> &'static str {
        crate::net::syntax::MOVE_SOP_CLASSES[self.position()]
    }

    /// The C-GET SOP class of this model.
    pub fn get_sop_class(self) -> &'static str {
        crate::net::syntax::GET_SOP_CLASSES[self.position()]
    }

    pub fn of_find_sop_class(uid: &str) -> Option<Model> {
        FIND_SOP_CLASSES
            .iter()
            .find(|(u, _)| *u == uid)
            .map(|(_, m)| *m)
    }

    /// The model of a MOVE or GET SOP class.
    pub fn of_retrieve_sop_class(uid: &str) -> Option<Model> {
        use crate::net::syntax::{GET_SOP_CLASSES, MOVE_SOP_CLASSES};
        MOVE_SOP_CLASSES
            .iter()
            .zip(Model::ALL)
            .chain(GET_SOP_CLASSES.iter().zip(Model::ALL))
            .find(|(u, _)| **u == uid)
            .map(|(_, m)| m)
    }

    pub fn levels(self) -> &'static [Level] {
        match self {
            Model::PatientRoot => &[Level::Patient, Level::Study, Level::Series, Level::Image],
            Model::StudyRoot => &[Level::Study, Level::Series, Level::Image],
            Model::PatientStudyOnly => &[Level::Patient, Level::Study],
        }
    }

    /// Unique keys of the levels above `level` that a hierarchical query must give as a
    /// single value (PS3.4 C.4.1.2.2.1).
    fn required_unique_keys(self, level: Level) -> Vec<(Tag, &'static str, Column)> {
        let patient = (tags::PATIENT_ID, "PatientID", Column::PatientId);
        let study = (
            tags::STUDY_INSTANCE_UID,
            "StudyInstanceUID",
            Column::StudyInstanceUid,
        );
        let series = (
            tags::SERIES_INSTANCE_UID,
            "SeriesInstanceUID",
            Column::SeriesInstanceUid,
        );
        let mut keys = Vec::new();
        if self != Model::StudyRoot && level > Level::Patient {
            keys.push(patient);
        }
        if level > Level::Study {
            keys.push(study);
        }
        if level > Level::Series {
            keys.push(series);
        }
        keys
    }
}

/// An attribute the index can match and return.
#[derive(Debug, Clone, Copy)]
pub struct KeyDef {
    pub tag: Tag,
    pub name: &'static str,
    pub vr: VR,
    pub column: Column,
}

macro_rules! key {
    ($tag:ident, $name:literal, $vr:ident, $col:ident) => {
        KeyDef {
            tag: tags::$tag,
            name: $name,
            vr: VR::$vr,
            column: Column::$col,
        }
    };
}

/// Every key the index supports, by level (the conformance statement lists the same).
pub const KEYS: &[KeyDef] = &[
    key!(PATIENT_NAME, "PatientName", PN, PatientName),
    key!(PATIENT_ID, "PatientID", LO, PatientId),
    key!(
        ISSUER_OF_PATIENT_ID,
        "IssuerOfPatientID",
        LO,
        IssuerOfPatientId
    ),
    key!(PATIENT_BIRTH_DATE, "PatientBirthDate", DA, PatientBirthDate),
    key!(PATIENT_SEX, "PatientSex", CS, PatientSex),
    key!(
        NUMBER_OF_PATIENT_RELATED_STUDIES,
        "NumberOfPatientRelatedStudies",
        IS,
        NumberOfPatientRelatedStudies
    ),
    key!(
        NUMBER_OF_PATIENT_RELATED_SERIES,
        "NumberOfPatientRelatedSeries",
        IS,
        NumberOfPatientRelatedSeries
    ),
    key!(
        NUMBER_OF_PATIENT_RELATED_INSTANCES,
        "NumberOfPatientRelatedInstances",
        IS,
        NumberOfPatientRelatedInstances
    ),
    key!(STUDY_INSTANCE_UID, "StudyInstanceUID", UI, StudyInstanceUid),
    key!(STUDY_DATE, "StudyDate", DA, StudyDate),
    key!(STUDY_TIME, "StudyTime", TM, StudyTime),
    key!(ACCESSION_NUMBER, "AccessionNumber", SH, AccessionNumber),
    key!(STUDY_ID, "StudyID", SH, StudyId),
    key!(STUDY_DESCRIPTION, "StudyDescription", LO, StudyDescription),
    key!(
        REFERRING_PHYSICIAN_NAME,
        "ReferringPhysicianName",
        PN,
        ReferringPhysicianName
    ),
    key!(
        MODALITIES_IN_STUDY,
        "ModalitiesInStudy",
        CS,
        ModalitiesInStudy
    ),
    key!(
        SOP_CLASSES_IN_STUDY,
        "SOPClassesInStudy",
        UI,
        SopClassesInStudy
    ),
    key!(
        NUMBER_OF_STUDY_RELATED_SERIES,
        "NumberOfStudyRelatedSeries",
        IS,
        NumberOfStudyRelatedSeries
    ),
    key!(
        NUMBER_OF_STUDY_RELATED_INSTANCES,
        "NumberOfStudyRelatedInstances",
        IS,
        NumberOfStudyRelatedInstances
    ),
    key!(
        SERIES_INSTANCE_UID,
        "SeriesInstanceUID",
        UI,
        SeriesInstanceUid
    ),
    key!(MODALITY, "Modality", CS, Modality),
    key!(SERIES_NUMBER, "SeriesNumber", IS, SeriesNumber),
    key!(
        SERIES_DESCRIPTION,
        "SeriesDescription",
        LO,
        SeriesDescription
    ),
    key!(BODY_PART_EXAMINED, "BodyPartExamined", CS, BodyPartExamined),
    key!(SERIES_DATE, "SeriesDate", DA, SeriesDate),
    key!(SERIES_TIME, "SeriesTime", TM, SeriesTime),
    key!(
        NUMBER_OF_SERIES_RELATED_INSTANCES,
        "NumberOfSeriesRelatedInstances",
        IS,
        NumberOfSeriesRelatedInstances
    ),
    key!(SOP_INSTANCE_UID, "SOPInstanceUID", UI, SopInstanceUid),
    key!(SOP_CLASS_UID, "SOPClassUID", UI, SopClassUid),
    key!(INSTANCE_NUMBER, "InstanceNumber", IS, InstanceNumber),
    key!(NUMBER_OF_FRAMES, "NumberOfFrames", IS, NumberOfFrames),
    key!(ROWS, "Rows", US, Rows),
    key!(COLUMNS, "Columns", US, Columns),
];

pub fn key_def(tag: Tag) -> Option<&'static KeyDef> {
    KEYS.iter().find(|k| k.tag == tag)
}

/// Why an identifier cannot be answered; `status` tells which DIMSE status it becomes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentifierError {
    #[error("identifier missing")]
    NoIdentifier,
    #[error("cannot parse identifier: {0}")]
    Parse(String),
    #[error("QueryRetrieveLevel (0008,0052) is missing")]
    MissingLevel,
    #[error("QueryRetrieveLevel `{0}` is not PATIENT, STUDY, SERIES or IMAGE")]
    UnknownLevel(String),
    #[error("level {level} is not part of the {model:?} information model")]
    LevelNotInModel { level: &'static str, model: Model },
    #[error("{name} {tag} belongs below the {level} level")]
    KeyBelowLevel {
        name: &'static str,
        tag: String,
        level: &'static str,
    },
    #[error("hierarchical {level} query needs {name} as a single value")]
    MissingUniqueKey {
        name: &'static str,
        level: &'static str,
    },
    #[error("{name} value `{value}` is invalid: {reason}")]
    BadValue {
        name: &'static str,
        value: String,
        reason: String,
    },
}

/// A deflated identifier may inflate to at most this much (an identifier is a list of keys;
/// 16 MiB holds tens of thousands of UIDs in a UID-list match).
const MAX_IDENTIFIER_INFLATED: u64 = 16 * 1024 * 1024;

/// Decode a request's identifier in its presentation context's transfer syntax (after the
/// bounded pre-scan) and translate it under `model`, on the blocking pool.
pub async fn read_identifier(
    data: Option<Vec<u8>>,
    transfer_syntax: &str,
    model: Model,
    opts: MatchOptions,
) -> Result<FindRequest, IdentifierError> {
    let data = data.ok_or(IdentifierError::NoIdentifier)?;
    let ts = transfer_syntax.to_string();
    tokio::task::spawn_blocking(move || decode_identifier(&data, &ts, model, opts))
        .await
        .map_err(|e| IdentifierError::Parse(format!("identifier decoding stopped: {e}")))?
}

/// `read_identifier`'s work, on the calling thread (the fuzz target calls it directly).
pub fn decode_identifier(
    data: &[u8],
    transfer_syntax: &str,
    model: Model,
    opts: MatchOptions,
) -> Result<FindRequest, IdentifierError> {
    let obj = crate::dataset::parse(
        data,
        transfer_syntax,
        crate::dataset::MAX_DEPTH,
        MAX_IDENTIFIER_INFLATED,
    )
    .map_err(|e| IdentifierError::Parse(e.to_string()))?;
    parse_identifier(&obj, model, opts)
}

/// What the identifier asks for: the index query, and how to build each response.
#[derive(Debug, Clone)]
pub struct FindRequest {
    pub query: Query,
    /// Requested attributes, in identifier order.
    pub returned: Vec<Returned>,
    /// Specific Character Set given by the SCU, if any.
    pub charset: Option<String>,
    /// Keys this node cannot match or return (answered zero-length; status FF01).
    pub unsupported: Vec<Tag>,
}

/// One attribute of every response.
#[derive(Debug, Clone, PartialEq)]
pub enum Returned {
    /// From the index: position in the query's `select`.
    Indexed { tag: Tag, vr: VR, select: usize },
    /// Read from the stored object's header (IMAGE level only).
    Header { tag: Tag, vr: VR },
    /// A sequence: returned empty (sequence matching with empty items is universal).
    EmptySequence(Tag),
    /// Returned zero-length.
    Empty { tag: Tag, vr: VR },
    /// InstanceAvailability: everything indexed is ONLINE.
    Availability,
}

/// Options negotiated or configured that shape matching.
#[derive(Debug, Clone, Copy)]
pub struct MatchOptions {
    pub relational: bool,
    pub combined_datetime: bool,
    pub pn_case_insensitive: bool,
}

fn text_value(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    let joined = obj.get(tag).and_then(|e| {
        e.to_multi_str().ok().map(|v| {
            v.iter()
                .map(|s| s.trim_end_matches(['\0', ' ']).trim_start().to_string())
                .collect::<Vec<_>>()
                .join("\\")
        })
    })?;
    if tag == tags::SPECIFIC_CHARACTER_SET {
        return Some(joined);
    }
    let charset = text_value(obj, tags::SPECIFIC_CHARACTER_SET);
    Some(crate::charset::redecode(joined, charset.as_deref()))
}

/// Build the index query for an identifier under `model`.
pub fn parse_identifier(
    obj: &InMemDicomObject,
    model: Model,
    opts: MatchOptions,
) -> Result<FindRequest, IdentifierError> {
    let level_code =
        text_value(obj, tags::QUERY_RETRIEVE_LEVEL).ok_or(IdentifierError::MissingLevel)?;
    let level = Level::from_code(&level_code)
        .ok_or_else(|| IdentifierError::UnknownLevel(level_code.clone()))?;
    if !model.levels().contains(&level) {
        return Err(IdentifierError::LevelNotInModel {
            level: level.code(),
            model,
        });
    }
    let charset = text_value(obj, tags::SPECIFIC_CHARACTER_SET).filter(|s| !s.is_empty());

    let mut conditions = Vec::new();
    let mut select = Vec::new();
    let mut returned = Vec::new();
    let mut unsupported = Vec::new();
    for elem in obj.iter() {
        let tag = elem.header().tag;
        if tag == tags::QUERY_RETRIEVE_LEVEL
            || tag == tags::SPECIFIC_CHARACTER_SET
            || tag.group() == 0x0000
        {
            continue;
        }
        if tag == tags::RETRIEVE_AE_TITLE {
            continue; // always returned
        }
        if tag == tags::INSTANCE_AVAILABILITY {
            returned.push(Returned::Availability);
            continue;
        }
        let Some(def) = key_def(tag) else {
            if elem.header().vr == VR::SQ {
                returned.push(Returned::EmptySequence(tag));
            } else if level == Level::Image {
                returned.push(Returned::Header {
                    tag,
                    vr: elem.header().vr,
                });
            } else {
                unsupported.push(tag);
                returned.push(Returned::Empty {
                    tag,
                    vr: elem.header().vr,
                });
            }
            continue;
        };
        let key_level = def.column.level();
        // In the Study Root model the patient attributes are study attributes.
        if key_level > level {
            return Err(IdentifierError::KeyBelowLevel {
                name: def.name,
                tag: format!("{tag}"),
                level: level.code(),
            });
        }
        let raw = text_value(obj, tag).unwrap_or_default();
        let matcher = matcher_for(def, &raw)?;
        conditions.push(Condition {
            column: def.column,
            matcher,
        });
        returned.push(Returned::Indexed {
            tag,
            vr: def.vr,
            select: select.len(),
        });
        select.push(def.column);
    }

    if !opts.relational {
        for (tag, name, column) in model.required_unique_keys(level) {
            let ok = conditions
                .iter()
                .any(|c| c.column == column && matches!(c.matcher, Matcher::Single(_)));
            if !ok {
                let _ = tag;
                return Err(IdentifierError::MissingUniqueKey {
                    name,
                    level: level.code(),
                });
            }
        }
    }
    // Header keys need to know where the object is.
    if returned
        .iter()
        .any(|r| matches!(r, Returned::Header { .. }))
    {
        select.push(Column::StorageKey);
    }
    Ok(FindRequest {
        query: Query {
            level,
            conditions,
            select,
            pn_case_insensitive: opts.pn_case_insensitive,
            combined_study_datetime: opts.combined_datetime,
            order: Default::default(),
        },
        returned,
        charset,
        unsupported,
    })
}

/// The matching type a value asks for (PS3.4 C.2.2.2), validated for the key's kind.
fn matcher_for(def: &KeyDef, raw: &str) -> Result<Matcher, IdentifierError> {
    let bad = |reason: &str| IdentifierError::BadValue {
        name: def.name,
        value: raw.to_string(),
        reason: reason.to_string(),
    };
    if raw.is_empty() {
        return Ok(Matcher::Universal);
    }
    match def.column.kind() {
        Kind::Computed => Ok(Matcher::Universal),
        Kind::Uid => {
            let list = raw
                .split('\\')
                .map(|u| {
                    Uid::parse(u)
                        .map(|u| u.to_string())
                        .map_err(|e| bad(&e.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            if list.len() == 1 {
                Ok(Matcher::Single(list.into_iter().next().expect("one")))
            } else {
                Ok(Matcher::UidList(list))
            }
        }
        Kind::Date | Kind::Time => {
            let check = |v: &str| -> Result<(), IdentifierError> {
                let ok = match def.column.kind() {
                    Kind::Date => v.len() == 8 && v.bytes().all(|b| b.is_ascii_digit()),
                    _ => v.len() >= 2 && v.bytes().all(|b| b.is_ascii_digit() || b == b'.'),
                };
                if ok {
                    Ok(())
                } else {
                    Err(bad("not a date/time value or range"))
                }
            };
            match raw.split_once('-') {
                Some((from, to)) => {
                    if !from.is_empty() {
                        check(from)?;
                    }
                    if !to.is_empty() {
                        check(to)?;
                    }
                    if from.is_empty() && to.is_empty() {
                        return Err(bad("a range needs at least one end"));
                    }
                    Ok(Matcher::Range {
                        from: Some(from.to_string()).filter(|s| !s.is_empty()),
                        to: Some(to.to_string()).filter(|s| !s.is_empty()),
                    })
                }
                None => {
                    check(raw)?;
                    Ok(Matcher::Single(raw.to_string()))
                }
            }
        }
        Kind::Set => Ok(Matcher::AnyOf(
            raw.split('\\')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
        )),
        Kind::Integer => {
            raw.trim()
                .parse::<i64>()
                .map_err(|_| bad("not an integer"))?;
            Ok(Matcher::Single(raw.trim().to_string()))
        }
        Kind::Text | Kind::PersonName => {
            if raw.contains('*') || raw.contains('?') {
                if raw.chars().all(|c| c == '*') {
                    Ok(Matcher::Universal)
                } else {
                    Ok(Matcher::Wildcard(raw.to_string()))
                }
            } else {
                Ok(Matcher::Single(raw.to_string()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_model_names_its_own_sop_classes_and_is_found_by_them() {
        for m in Model::ALL {
            assert_eq!(Model::of_find_sop_class(m.find_sop_class()), Some(m));
            assert_eq!(Model::of_retrieve_sop_class(m.move_sop_class()), Some(m));
            assert_eq!(Model::of_retrieve_sop_class(m.get_sop_class()), Some(m));
        }
        assert_eq!(
            Model::StudyRoot.move_sop_class(),
            uids::STUDY_ROOT_QUERY_RETRIEVE_INFORMATION_MODEL_MOVE
        );
    }
    use dicom_core::{DataElement, PrimitiveValue};

    fn ident(level: &str, keys: &[(Tag, VR, &str)]) -> InMemDicomObject {
        let mut o = InMemDicomObject::new_empty();
        o.put(DataElement::new(
            tags::QUERY_RETRIEVE_LEVEL,
            VR::CS,
            PrimitiveValue::from(level),
        ));
        for (t, vr, v) in keys {
            o.put(DataElement::new(*t, *vr, PrimitiveValue::from(*v)));
        }
        o
    }

    const OPTS: MatchOptions = MatchOptions {
        relational: false,
        combined_datetime: false,
        pn_case_insensitive: true,
    };

    #[test]
    fn study_level_matching_types() {
        let o = ident(
            "STUDY",
            &[
                (tags::PATIENT_NAME, VR::PN, "DOE*"),
                (tags::STUDY_DATE, VR::DA, "20200101-"),
                (tags::STUDY_INSTANCE_UID, VR::UI, "1.2\\1.3"),
                (tags::ACCESSION_NUMBER, VR::SH, ""),
            ],
        );
        let r = parse_identifier(&o, Model::StudyRoot, OPTS).unwrap();
        let m = |col: Column| {
            r.query
                .conditions
                .iter()
                .find(|c| c.column == col)
                .map(|c| c.matcher.clone())
        };
        assert_eq!(
            m(Column::PatientName),
            Some(Matcher::Wildcard("DOE*".into()))
        );
        assert_eq!(
            m(Column::StudyDate),
            Some(Matcher::Range {
                from: Some("20200101".into()),
                to: None
            })
        );
        assert_eq!(
            m(Column::StudyInstanceUid),
            Some(Matcher::UidList(vec!["1.2".into(), "1.3".into()]))
        );
        assert_eq!(m(Column::AccessionNumber), Some(Matcher::Universal));
    }

    #[test]
    fn structural_errors() {
        let none = InMemDicomObject::new_empty();
        assert_eq!(
            parse_identifier(&none, Model::StudyRoot, OPTS).unwrap_err(),
            IdentifierError::MissingLevel
        );
        let bad = ident("WARD", &[]);
        assert!(matches!(
            parse_identifier(&bad, Model::StudyRoot, OPTS),
            Err(IdentifierError::UnknownLevel(_))
        ));
        let patient = ident("PATIENT", &[]);
        assert!(matches!(
            parse_identifier(&patient, Model::StudyRoot, OPTS),
            Err(IdentifierError::LevelNotInModel { .. })
        ));
        let low = ident("STUDY", &[(tags::MODALITY, VR::CS, "CT")]);
        assert!(matches!(
            parse_identifier(&low, Model::StudyRoot, OPTS),
            Err(IdentifierError::KeyBelowLevel { .. })
        ));
        let series = ident("SERIES", &[(tags::MODALITY, VR::CS, "CT")]);
        assert!(matches!(
            parse_identifier(&series, Model::StudyRoot, OPTS),
            Err(IdentifierError::MissingUniqueKey { .. })
        ));
        let relational = MatchOptions {
            relational: true,
            ..OPTS
        };
        assert!(parse_identifier(&series, Model::StudyRoot, relational).is_ok());
        let bad_date = ident("STUDY", &[(tags::STUDY_DATE, VR::DA, "2020-01-01x")]);
        assert!(matches!(
            parse_identifier(&bad_date, Model::StudyRoot, OPTS),
            Err(IdentifierError::BadValue { .. })
        ));
        let bad_uid = ident("STUDY", &[(tags::STUDY_INSTANCE_UID, VR::UI, "1.2.x")]);
        assert!(matches!(
            parse_identifier(&bad_uid, Model::StudyRoot, OPTS),
            Err(IdentifierError::BadValue { .. })
        ));
    }

    #[test]
    fn patient_root_needs_patient_id_below_patient_level() {
        let o = ident("STUDY", &[(tags::STUDY_DATE, VR::DA, "")]);
        assert!(matches!(
            parse_identifier(&o, Model::PatientRoot, OPTS),
            Err(IdentifierError::MissingUniqueKey {
                name: "PatientID",
                ..
            })
        ));
        let o = ident("STUDY", &[(tags::PATIENT_ID, VR::LO, "P1")]);
        assert!(parse_identifier(&o, Model::PatientRoot, OPTS).is_ok());
    }
}
