//! Structured reports (SR) as readable text: the content tree of an SR document (PS3.3
//! C.17.3) walked into labelled lines ("Finding: Nodule in the left lung", "Diameter: 12 mm"),
//! nested as the document nests them. Bounded in depth and in lines: a report is untrusted
//! input like any other object.

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

/// Levels of the content tree shown; deeper content is cut with a note.
pub const MAX_DEPTH: usize = 12;
/// Lines shown of one report.
pub const MAX_LINES: usize = 2000;

/// One content item: its concept name, its value as text, and the items it contains.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Line {
    pub label: String,
    pub value: String,
    pub children: Vec<Line>,
}

/// A report: its title (the root's concept name), completion and verification flags, and
/// its content.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Report {
    pub title: String,
    pub status: String,
    pub content: Vec<Line>,
    /// Some content was not shown (deeper than `MAX_DEPTH` or beyond `MAX_LINES`).
    pub cut: bool,
}

fn text(obj: &InMemDicomObject, tag: Tag) -> String {
    obj.get(tag)
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_end_matches(['\0', ' ']).trim().to_string())
        .unwrap_or_default()
}

fn items(obj: &InMemDicomObject, tag: Tag) -> &[InMemDicomObject] {
    obj.get(tag).and_then(|e| e.items()).unwrap_or(&[])
}

/// The meaning of the first item of a code sequence.
fn meaning(obj: &InMemDicomObject, tag: Tag) -> String {
    items(obj, tag)
        .first()
        .map(|c| text(c, tags::CODE_MEANING))
        .unwrap_or_default()
}

/// The value of a content item as text, by its value type.
fn value(item: &InMemDicomObject) -> String {
    match text(item, tags::VALUE_TYPE).as_str() {
        "TEXT" => text(item, tags::TEXT_VALUE),
        "CODE" => meaning(item, tags::CONCEPT_CODE_SEQUENCE),
        "NUM" => items(item, tags::MEASURED_VALUE_SEQUENCE)
            .first()
            .map(|m| {
                let unit = items(m, tags::MEASUREMENT_UNITS_CODE_SEQUENCE)
                    .first()
                    .map(|u| text(u, tags::CODE_VALUE))
                    .unwrap_or_default();
                format!("{} {unit}", text(m, tags::NUMERIC_VALUE))
                    .trim()
                    .to_string()
            })
            .unwrap_or_default(),
        "PNAME" => super::pages::person(&text(item, tags::PERSON_NAME)),
        "DATE" => super::pages::date(&text(item, tags::DATE)),
        "TIME" => text(item, tags::TIME),
        "DATETIME" => text(item, tags::DATE_TIME),
        "UIDREF" => text(item, tags::UID),
        "IMAGE" | "COMPOSITE" | "WAVEFORM" => items(item, tags::REFERENCED_SOP_SEQUENCE)
            .first()
            .map(|r| format!("object {}", text(r, tags::REFERENCED_SOP_INSTANCE_UID)))
            .unwrap_or_default(),
        _ => String::new(),
    }
}

fn walk(obj: &InMemDicomObject, depth: usize, lines: &mut usize, cut: &mut bool) -> Vec<Line> {
    let mut out = Vec::new();
    for item in items(obj, tags::CONTENT_SEQUENCE) {
        if depth >= MAX_DEPTH || *lines >= MAX_LINES {
            *cut = true;
            break;
        }
        *lines += 1;
        out.push(Line {
            label: meaning(item, tags::CONCEPT_NAME_CODE_SEQUENCE),
            value: value(item),
            children: walk(item, depth + 1, lines, cut),
        });
    }
    out
}

/// The report in an SR document's data set.
pub fn report(doc: &InMemDicomObject) -> Report {
    let mut cut = false;
    let mut lines = 0;
    let content = walk(doc, 0, &mut lines, &mut cut);
    let status = [
        text(doc, tags::COMPLETION_FLAG),
        text(doc, tags::VERIFICATION_FLAG),
    ]
    .iter()
    .filter(|s| !s.is_empty())
    .map(|s| s.to_lowercase())
    .collect::<Vec<_>>()
    .join(", ");
    Report {
        title: meaning(doc, tags::CONCEPT_NAME_CODE_SEQUENCE),
        status,
        content,
        cut,
    }
}

/// Whether a SOP class is one of the structured report classes (PS3.4 B.5: 1.2.840.10008.5.1.4.1.1.88.x).
pub fn is_sr(sop_class: &str) -> bool {
    sop_class.starts_with("1.2.840.10008.5.1.4.1.1.88.")
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use dicom_core::value::DataSetSequence;
    use dicom_core::{DataElement, PrimitiveValue, VR};

    fn code(meaning: &str) -> InMemDicomObject {
        InMemDicomObject::from_element_iter([
            DataElement::new(tags::CODE_VALUE, VR::SH, PrimitiveValue::from("X")),
            DataElement::new(
                tags::CODING_SCHEME_DESIGNATOR,
                VR::SH,
                PrimitiveValue::from("99T"),
            ),
            DataElement::new(tags::CODE_MEANING, VR::LO, PrimitiveValue::from(meaning)),
        ])
    }

    fn seq(tag: Tag, items: Vec<InMemDicomObject>) -> DataElement<InMemDicomObject> {
        DataElement::new(tag, VR::SQ, DataSetSequence::from(items))
    }

    /// A content item of `value_type` named `name`, with `extra` elements and `children`.
    pub fn item(
        value_type: &str,
        name: &str,
        extra: Vec<DataElement<InMemDicomObject>>,
        children: Vec<InMemDicomObject>,
    ) -> InMemDicomObject {
        let mut o = InMemDicomObject::from_element_iter([
            DataElement::new(
                tags::RELATIONSHIP_TYPE,
                VR::CS,
                PrimitiveValue::from("CONTAINS"),
            ),
            DataElement::new(tags::VALUE_TYPE, VR::CS, PrimitiveValue::from(value_type)),
            seq(tags::CONCEPT_NAME_CODE_SEQUENCE, vec![code(name)]),
        ]);
        for e in extra {
            o.put(e);
        }
        if !children.is_empty() {
            o.put(seq(tags::CONTENT_SEQUENCE, children));
        }
        o
    }

    /// A small report: a finding with a text, a code and a measurement.
    pub fn sample_content() -> Vec<InMemDicomObject> {
        let units = InMemDicomObject::from_element_iter([
            DataElement::new(tags::NUMERIC_VALUE, VR::DS, PrimitiveValue::from("12")),
            seq(
                tags::MEASUREMENT_UNITS_CODE_SEQUENCE,
                vec![InMemDicomObject::from_element_iter([
                    DataElement::new(tags::CODE_VALUE, VR::SH, PrimitiveValue::from("mm")),
                    DataElement::new(
                        tags::CODE_MEANING,
                        VR::LO,
                        PrimitiveValue::from("millimeter"),
                    ),
                ])],
            ),
        ]);
        vec![item(
            "CONTAINER",
            "Findings",
            vec![],
            vec![
                item(
                    "TEXT",
                    "Finding",
                    vec![DataElement::new(
                        tags::TEXT_VALUE,
                        VR::UT,
                        PrimitiveValue::from("Nodule in the left lower lobe"),
                    )],
                    vec![],
                ),
                item(
                    "CODE",
                    "Laterality",
                    vec![seq(tags::CONCEPT_CODE_SEQUENCE, vec![code("Left")])],
                    vec![],
                ),
                item(
                    "NUM",
                    "Diameter",
                    vec![seq(tags::MEASURED_VALUE_SEQUENCE, vec![units])],
                    vec![],
                ),
            ],
        )]
    }

    #[test]
    fn a_report_reads_as_nested_labelled_lines() {
        let mut doc = InMemDicomObject::from_element_iter([
            seq(
                tags::CONCEPT_NAME_CODE_SEQUENCE,
                vec![code("Chest CT report")],
            ),
            DataElement::new(
                tags::COMPLETION_FLAG,
                VR::CS,
                PrimitiveValue::from("COMPLETE"),
            ),
            DataElement::new(
                tags::VERIFICATION_FLAG,
                VR::CS,
                PrimitiveValue::from("VERIFIED"),
            ),
        ]);
        doc.put(seq(tags::CONTENT_SEQUENCE, sample_content()));
        let r = report(&doc);
        assert_eq!(r.title, "Chest CT report");
        assert_eq!(r.status, "complete, verified");
        assert!(!r.cut);
        let findings = &r.content[0];
        assert_eq!(findings.label, "Findings");
        let shown: Vec<(String, String)> = findings
            .children
            .iter()
            .map(|l| (l.label.clone(), l.value.clone()))
            .collect();
        assert_eq!(
            shown,
            [
                ("Finding".into(), "Nodule in the left lower lobe".into()),
                ("Laterality".into(), "Left".into()),
                ("Diameter".into(), "12 mm".into()),
            ]
        );
    }

    #[test]
    fn deep_or_long_reports_are_cut_and_say_so() {
        let mut deep = item("TEXT", "leaf", vec![], vec![]);
        for i in 0..(MAX_DEPTH + 5) {
            deep = item("CONTAINER", &format!("level {i}"), vec![], vec![deep]);
        }
        let doc = InMemDicomObject::from_element_iter([seq(tags::CONTENT_SEQUENCE, vec![deep])]);
        let r = report(&doc);
        assert!(r.cut);
        let mut depth = 0;
        let mut at = &r.content;
        while let Some(first) = at.first() {
            depth += 1;
            at = &first.children;
        }
        assert_eq!(depth, MAX_DEPTH);

        let wide: Vec<InMemDicomObject> = (0..MAX_LINES + 10)
            .map(|i| item("TEXT", &format!("line {i}"), vec![], vec![]))
            .collect();
        let doc = InMemDicomObject::from_element_iter([seq(tags::CONTENT_SEQUENCE, wide)]);
        let r = report(&doc);
        assert!(r.cut);
        assert_eq!(r.content.len(), MAX_LINES);
    }

    #[test]
    fn sr_classes_are_recognised() {
        assert!(is_sr("1.2.840.10008.5.1.4.1.1.88.11"));
        assert!(is_sr("1.2.840.10008.5.1.4.1.1.88.33"));
        assert!(!is_sr("1.2.840.10008.5.1.4.1.1.2"));
    }
}
