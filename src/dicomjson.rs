//! DICOM JSON (PS3.18 F.2) of data sets: the dicom-json serializer for values, with bulk
//! data (large binary values, pixel data) replaced by a BulkDataURI (F.2.6) so that metadata
//! stays small.

use dicom_core::value::Value;
use dicom_core::{Tag, VR};
use dicom_json::DicomJson;
use dicom_object::InMemDicomObject;
use serde_json::{Map, Value as Json};

/// Binary values up to this size are sent inline (base64); larger ones by BulkDataURI.
pub const INLINE_BINARY_MAX: usize = 1024;

/// Written where the response's origin and base path go (it depends on the request's Host,
/// so cached metadata holds this and each response substitutes it).
pub const BASE_PLACEHOLDER: &str = "@@pacsd-base@@";

fn is_binary(vr: VR) -> bool {
    matches!(
        vr,
        VR::OB | VR::OD | VR::OF | VR::OL | VR::OV | VR::OW | VR::UN
    )
}

/// The DICOM JSON object of `obj`. With `instance_url`, bulk data gets a BulkDataURI:
/// `{instance_url}/bulkdata/{tag}` at the top level, and inside item i (1-based, as PS3.10
/// numbers items) of a sequence the sequence's path, the item and the tag:
/// `{instance_url}/bulkdata/00880200/1/7FE00010` (an icon image). Without it bulk data keeps
/// only its VR.
pub fn metadata_object(obj: &InMemDicomObject, instance_url: Option<&str>) -> Json {
    let bulk = instance_url.map(|u| format!("{u}/bulkdata/"));
    object_json(obj, bulk.as_deref())
}

/// `metadata_object` of one data set whose attributes' BulkDataURIs start with `uri_prefix`.
fn object_json(obj: &InMemDicomObject, uri_prefix: Option<&str>) -> Json {
    let mut map = Map::new();
    for e in obj.iter() {
        let tag = e.header().tag;
        let vr = e.header().vr;
        let key = tag_key(tag);
        let bulk = match e.value() {
            Value::PixelSequence(_) => true,
            Value::Primitive(p) => is_binary(vr) && p.calculate_byte_len() > INLINE_BINARY_MAX,
            Value::Sequence(_) => false,
        };
        let json = if bulk {
            let mut m = Map::new();
            m.insert("vr".into(), Json::String(vr.to_string().into()));
            if let Some(prefix) = uri_prefix {
                m.insert("BulkDataURI".into(), Json::String(format!("{prefix}{key}")));
            }
            Json::Object(m)
        } else if let Value::Sequence(seq) = e.value() {
            let items: Vec<Json> = seq
                .items()
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    let inner = uri_prefix.map(|prefix| format!("{prefix}{key}/{}/", i + 1));
                    object_json(item, inner.as_deref())
                })
                .collect();
            let mut m = Map::new();
            m.insert("vr".into(), Json::String("SQ".into()));
            if !items.is_empty() {
                m.insert("Value".into(), Json::Array(items));
            }
            Json::Object(m)
        } else if matches!(vr, VR::IS | VR::DS)
            && let Value::Primitive(p) = e.value()
            && !matches!(p, dicom_core::PrimitiveValue::Empty)
        {
            numbers(vr, p)
        } else {
            serde_json::to_value(DicomJson::from(e)).unwrap_or_else(|_| {
                let mut m = Map::new();
                m.insert("vr".into(), Json::String(vr.to_string().into()));
                Json::Object(m)
            })
        };
        map.insert(key, json);
    }
    Json::Object(map)
}

/// IS and DS values as JSON numbers (PS3.18 F.2.3); a value that is not a finite number
/// (a malformed object) stays a string rather than being lost.
fn numbers(vr: VR, p: &dicom_core::PrimitiveValue) -> Json {
    let values: Vec<Json> = p
        .to_multi_str()
        .iter()
        .map(|s| {
            let t = s.trim();
            if t.is_empty() {
                return Json::Null;
            }
            let n = if vr == VR::IS {
                t.parse::<i64>().ok().map(Json::from)
            } else {
                t.parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite())
                    .and_then(|f| serde_json::Number::from_f64(f).map(Json::Number))
            };
            n.unwrap_or_else(|| Json::String(t.to_string()))
        })
        .collect();
    serde_json::json!({ "vr": vr.to_string(), "Value": values })
}

/// The WADO-RS metadata of one stored Part 10 object: its header (everything before Pixel
/// Data) in DICOM JSON, bulk data by BulkDataURI under `BASE_PLACEHOLDER`, Pixel Data by
/// BulkDataURI when the object has an image, and its Available Transfer Syntax UID. Computed
/// once per instance (by the preview worker after ingest, or on the first request) and kept
/// in the index.
pub fn instance_metadata(file: &[u8]) -> Result<String, MetadataError> {
    use dicom_dictionary_std::tags;
    let (meta, offset) = crate::part10::split(file)?;
    let ts = meta
        .transfer_syntax()
        .trim_end_matches(['\0', ' '])
        .to_string();
    let header = crate::index::record::parse_header(
        &file[offset..],
        &ts,
        crate::config::DEFAULT_MAX_OBJECT_SIZE,
    )?;
    let uid = |tag| {
        header
            .get(tag)
            .and_then(|e| e.to_str().ok())
            .map(|s| s.trim_end_matches(['\0', ' ']).to_string())
            .unwrap_or_default()
    };
    let url = format!(
        "{BASE_PLACEHOLDER}/studies/{}/series/{}/instances/{}",
        uid(tags::STUDY_INSTANCE_UID),
        uid(tags::SERIES_INSTANCE_UID),
        uid(tags::SOP_INSTANCE_UID)
    );
    let mut json = metadata_object(&header, Some(&url));
    if header.get(tags::ROWS).is_some()
        && let Some(map) = json.as_object_mut()
    {
        let vr = if crate::net::syntax::is_encapsulated(&ts) {
            "OB"
        } else {
            "OW"
        };
        map.insert(
            "7FE00010".into(),
            serde_json::json!({"vr": vr, "BulkDataURI": format!("{url}/bulkdata/7FE00010")}),
        );
        map.insert(
            "00083002".into(),
            serde_json::json!({"vr": "UI", "Value": [ts]}),
        );
    }
    Ok(serde_json::to_string(&json)?)
}

/// Why a stored object's metadata cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("{0}")]
    Part10(#[from] crate::part10::Part10Error),
    #[error("{0}")]
    Header(#[from] crate::index::RecordError),
    #[error("encoding DICOM JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// `GGGGEEEE` in upper-case hex, the key of an attribute in DICOM JSON.
pub fn tag_key(tag: Tag) -> String {
    format!("{:04X}{:04X}", tag.group(), tag.element())
}

/// Test data: `obj` with an Icon Image Sequence of one item per entry of `icons`, each item
/// holding those bytes as its Pixel Data (OB); an empty entry makes an empty item.
#[cfg(test)]
pub(crate) fn put_icons(obj: &mut InMemDicomObject, icons: &[Vec<u8>]) {
    use dicom_core::{DataElement, PrimitiveValue};
    use dicom_dictionary_std::tags;
    let items: Vec<InMemDicomObject> = icons
        .iter()
        .map(|pixels| {
            let mut item = InMemDicomObject::new_empty();
            if !pixels.is_empty() {
                item.put(DataElement::new(
                    tags::PIXEL_DATA,
                    VR::OB,
                    PrimitiveValue::U8(pixels.clone().into()),
                ));
            }
            item
        })
        .collect();
    obj.put(DataElement::new(
        tags::ICON_IMAGE_SEQUENCE,
        VR::SQ,
        dicom_core::value::DataSetSequence::from(items),
    ));
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_core::{DataElement, PrimitiveValue};
    use dicom_dictionary_std::tags;

    #[test]
    fn large_binary_values_become_bulk_data_uris() {
        let mut o = InMemDicomObject::new_empty();
        o.put(DataElement::new(
            tags::PATIENT_NAME,
            VR::PN,
            PrimitiveValue::from("Doe^Jane"),
        ));
        o.put(DataElement::new(
            tags::ROWS,
            VR::US,
            PrimitiveValue::from(512u16),
        ));
        o.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::U8(vec![0u8; 4096].into()),
        ));
        put_icons(&mut o, &[vec![], vec![7u8; 4096]]);
        let j = metadata_object(
            &o,
            Some("http://h/dicom-web/studies/1/series/2/instances/3"),
        );
        assert_eq!(j["00100010"]["Value"][0]["Alphabetic"], "Doe^Jane");
        assert_eq!(j["00280010"]["Value"][0], 512);
        assert_eq!(
            j["7FE00010"]["BulkDataURI"],
            "http://h/dicom-web/studies/1/series/2/instances/3/bulkdata/7FE00010"
        );
        assert!(j["7FE00010"].get("InlineBinary").is_none());
        assert_eq!(j["00880200"]["vr"], "SQ");
        assert_eq!(
            j["00880200"]["Value"][1]["7FE00010"],
            serde_json::json!({
                "vr": "OB",
                "BulkDataURI": "http://h/dicom-web/studies/1/series/2/instances/3/bulkdata/00880200/2/7FE00010"
            }),
            "bulk data inside the second item"
        );
        let bare = metadata_object(&o, None);
        assert_eq!(
            bare["00880200"]["Value"][1]["7FE00010"],
            serde_json::json!({"vr": "OB"}),
            "no instance URL: the VR only"
        );
        let mut n = InMemDicomObject::new_empty();
        n.put(DataElement::new(
            tags::INSTANCE_NUMBER,
            VR::IS,
            PrimitiveValue::from(" 12"),
        ));
        n.put(DataElement::new(
            tags::PIXEL_SPACING,
            VR::DS,
            PrimitiveValue::Strs(
                ["0.5".to_string(), "0.25 ".to_string()]
                    .into_iter()
                    .collect(),
            ),
        ));
        let j = metadata_object(&n, None);
        assert_eq!(j["00200013"]["Value"], serde_json::json!([12]));
        assert_eq!(j["00280030"]["Value"], serde_json::json!([0.5, 0.25]));
    }
}
