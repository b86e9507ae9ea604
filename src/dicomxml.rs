//! The Native DICOM Model (PS3.19 A.1) of a data set, written from its DICOM JSON (PS3.18
//! F.2): QIDO-RS and WADO-RS metadata answer `multipart/related; type="application/dicom+xml"`
//! with one such document per part (PS3.18 8.7.3.4, 10.6.3.1) for clients that ask for XML.
//! Writing from the JSON keeps one model of what is sent (the JSON built and cached once) and
//! only changes its spelling:
//! - `"vr"` and the tag become the `DicomAttribute`'s `vr` and `tag`, with the standard
//!   keyword when the dictionary has one;
//! - each value is a `Value` (numbered from 1), a person name a `PersonName` with its
//!   component groups split into their five components, a sequence item an `Item`;
//! - `BulkDataURI` becomes `BulkData uri`, `InlineBinary` stays base64.
//!
//! Text comes from stored objects, so it is untrusted: markup characters are escaped and
//! characters XML 1.0 cannot carry (most C0 controls) become U+FFFD.

use std::fmt::Write;

use dicom_core::Tag;
use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
use serde_json::Value as Json;

/// The namespace of the Native DICOM Model (PS3.19 A.1.6).
pub const NAMESPACE: &str = "http://dicom.nema.org/PS3.19/models/NativeDICOM";

/// Person name components in the order `^` separates them (PS3.5 6.2).
const NAME_PARTS: [&str; 5] = [
    "FamilyName",
    "GivenName",
    "MiddleName",
    "NamePrefix",
    "NameSuffix",
];

/// The XML document of one DICOM JSON data set object.
pub fn native_xml(dataset: &Json) -> String {
    let mut out = String::with_capacity(4096);
    out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = write!(
        out,
        "<NativeDicomModel xmlns=\"{NAMESPACE}\" xml:space=\"preserve\">"
    );
    attributes(&mut out, dataset);
    out.push_str("</NativeDicomModel>\n");
    out
}

/// The `DicomAttribute` elements of a data set object (keys are 8 hex digits, in tag order
/// as the JSON object holds them).
fn attributes(out: &mut String, dataset: &Json) {
    let Some(map) = dataset.as_object() else {
        return;
    };
    for (key, attr) in map {
        let Some(tag) = parse_tag(key) else { continue };
        let vr = attr.get("vr").and_then(Json::as_str).unwrap_or("UN");
        let _ = write!(out, "<DicomAttribute tag=\"{key}\" vr=\"{}\"", escape(vr));
        if let Some(entry) = dicom_dictionary_std::StandardDataDictionary.by_tag(tag)
            && !entry.alias().is_empty()
        {
            let _ = write!(out, " keyword=\"{}\"", entry.alias());
        }
        out.push('>');
        if let Some(uri) = attr.get("BulkDataURI").and_then(Json::as_str) {
            let _ = write!(out, "<BulkData uri=\"{}\"/>", escape(uri));
        } else if let Some(b64) = attr.get("InlineBinary").and_then(Json::as_str) {
            let _ = write!(out, "<InlineBinary>{}</InlineBinary>", escape(b64));
        } else if let Some(values) = attr.get("Value").and_then(Json::as_array) {
            for (i, v) in values.iter().enumerate() {
                let number = i + 1;
                match (vr, v) {
                    ("SQ", item) => {
                        let _ = write!(out, "<Item number=\"{number}\">");
                        attributes(out, item);
                        out.push_str("</Item>");
                    }
                    ("PN", name) => person_name(out, number, name),
                    (_, Json::Null) => {
                        let _ = write!(out, "<Value number=\"{number}\"/>");
                    }
                    (_, Json::String(s)) => {
                        let _ = write!(out, "<Value number=\"{number}\">{}</Value>", escape(s));
                    }
                    (_, other) => {
                        let _ = write!(out, "<Value number=\"{number}\">{other}</Value>");
                    }
                }
            }
        }
        out.push_str("</DicomAttribute>");
    }
}

/// A `PersonName` with its Alphabetic, Ideographic and Phonetic groups, each split into
/// the five components (empty components left out, PS3.19 A.1.5).
fn person_name(out: &mut String, number: usize, name: &Json) {
    let _ = write!(out, "<PersonName number=\"{number}\">");
    for group in ["Alphabetic", "Ideographic", "Phonetic"] {
        let Some(text) = name.get(group).and_then(Json::as_str) else {
            continue;
        };
        let _ = write!(out, "<{group}>");
        for (part, value) in NAME_PARTS.iter().zip(text.split('^')) {
            if !value.is_empty() {
                let _ = write!(out, "<{part}>{}</{part}>", escape(value));
            }
        }
        let _ = write!(out, "</{group}>");
    }
    out.push_str("</PersonName>");
}

fn parse_tag(key: &str) -> Option<Tag> {
    if key.len() != 8 {
        return None;
    }
    let group = u16::from_str_radix(&key[..4], 16).ok()?;
    let element = u16::from_str_radix(&key[4..], 16).ok()?;
    Some(Tag(group, element))
}

/// Text as XML character data or an attribute value.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_names_sequences_and_bulk_data_are_spelled_as_part_19_says() {
        let ds = json!({
            "00080060": {"vr": "CS", "Value": ["CT"]},
            "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^John^^Dr", "Ideographic": "山田^太郎"}]},
            "00180050": {"vr": "DS", "Value": [1.25]},
            "00200032": {"vr": "DS", "Value": [-1.5, 2, null]},
            "00081115": {"vr": "SQ", "Value": [{"0020000E": {"vr": "UI", "Value": ["1.2.3"]}}]},
            "00081030": {"vr": "LO"},
            "7FE00010": {"vr": "OW", "BulkDataURI": "https://h/x?a=1&b=2"},
            "00291010": {"vr": "OB", "InlineBinary": "AAEC"}
        });
        let xml = native_xml(&ds);
        for part in [
            "<NativeDicomModel xmlns=\"http://dicom.nema.org/PS3.19/models/NativeDICOM\" xml:space=\"preserve\">",
            "<DicomAttribute tag=\"00080060\" vr=\"CS\" keyword=\"Modality\"><Value number=\"1\">CT</Value></DicomAttribute>",
            "<PersonName number=\"1\"><Alphabetic><FamilyName>Doe</FamilyName><GivenName>John</GivenName><NamePrefix>Dr</NamePrefix></Alphabetic><Ideographic><FamilyName>山田</FamilyName><GivenName>太郎</GivenName></Ideographic></PersonName>",
            "<Value number=\"1\">-1.5</Value><Value number=\"2\">2</Value><Value number=\"3\"/>",
            "<Item number=\"1\"><DicomAttribute tag=\"0020000E\" vr=\"UI\" keyword=\"SeriesInstanceUID\"><Value number=\"1\">1.2.3</Value></DicomAttribute></Item>",
            "<DicomAttribute tag=\"00081030\" vr=\"LO\" keyword=\"StudyDescription\"></DicomAttribute>",
            "<BulkData uri=\"https://h/x?a=1&amp;b=2\"/>",
            "<DicomAttribute tag=\"00291010\" vr=\"OB\"><InlineBinary>AAEC</InlineBinary>",
        ] {
            assert!(xml.contains(part), "{part}\nin\n{xml}");
        }
    }

    #[test]
    fn untrusted_text_cannot_break_the_document() {
        let ds = json!({"00081030": {"vr": "LO", "Value": ["</Value><x a=\"1\">&\u{1}"]}});
        let xml = native_xml(&ds);
        assert!(
            xml.contains(
                "<Value number=\"1\">&lt;/Value&gt;&lt;x a=&quot;1&quot;&gt;&amp;\u{FFFD}</Value>"
            ),
            "{xml}"
        );
        // A key that is not a tag is left out rather than written as an attribute name.
        let odd = json!({"bad\"key": {"vr": "LO", "Value": ["x"]}});
        assert!(!native_xml(&odd).contains("DicomAttribute"));
    }
}
