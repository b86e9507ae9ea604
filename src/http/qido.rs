//! QIDO-RS (PS3.18 10.6): a search's parameters become a C-FIND identifier (Study Root,
//! relational) and go through the same translation, SQL and match building as C-FIND, so
//! both protocols answer a query the same way. Answers are `application/dicom+json`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry, VirtualVr};
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::{StandardDataDictionary, tags};
use dicom_object::InMemDicomObject;

use super::multipart::{accept_ranges, datasets_as, datasets_response};
use super::{Target, WebError, WebState, clip, origin_of};
use crate::dicomjson::metadata_object;
use crate::index::query::{Level, Order};
use crate::service::find::match_object;
use crate::service::query::{KEYS, MatchOptions, Model, key_def, parse_identifier};

/// Parameters in one search at most (matching keys, includefield, paging).
const MAX_PARAMS: usize = 128;
/// Longest parameter value (a UID list of a few hundred UIDs).
const MAX_VALUE: usize = 64 * 1024;

/// A QIDO-RS search (PS3.18 10.6.1): the last segment of the path names the level
/// (`studies`, `series`, `instances`), the segments before it what the path fixes
/// (`/studies/{study}/series` searches the series of one study).
pub async fn search_resource(
    State(s): State<Arc<WebState>>,
    scope: Target,
    uri: Uri,
    h: HeaderMap,
) -> Result<Response, WebError> {
    let level = match uri.path().rsplit('/').next() {
        Some("studies") => Level::Study,
        Some("series") => Level::Series,
        _ => Level::Image,
    };
    let query = uri.query().map(str::to_string);
    search(&s, level, scope, query, &h).await
}

/// The attributes every match of a level carries (PS3.18 Tables 6.7.1-2, -2a, -2b); a search
/// above the study or series adds that level's too.
fn default_keys(level: Level, scope: &Target) -> Vec<Tag> {
    let study = [
        tags::STUDY_DATE,
        tags::STUDY_TIME,
        tags::ACCESSION_NUMBER,
        tags::INSTANCE_AVAILABILITY,
        tags::MODALITIES_IN_STUDY,
        tags::REFERRING_PHYSICIAN_NAME,
        tags::PATIENT_NAME,
        tags::PATIENT_ID,
        tags::PATIENT_BIRTH_DATE,
        tags::PATIENT_SEX,
        tags::STUDY_INSTANCE_UID,
        tags::STUDY_ID,
        tags::STUDY_DESCRIPTION,
        tags::NUMBER_OF_STUDY_RELATED_SERIES,
        tags::NUMBER_OF_STUDY_RELATED_INSTANCES,
    ];
    let series = [
        tags::MODALITY,
        tags::SERIES_DESCRIPTION,
        tags::SERIES_NUMBER,
        tags::SERIES_INSTANCE_UID,
        tags::NUMBER_OF_SERIES_RELATED_INSTANCES,
        tags::STUDY_INSTANCE_UID,
    ];
    let instance = [
        tags::SOP_CLASS_UID,
        tags::SOP_INSTANCE_UID,
        tags::INSTANCE_AVAILABILITY,
        tags::INSTANCE_NUMBER,
        tags::ROWS,
        tags::COLUMNS,
        tags::NUMBER_OF_FRAMES,
        tags::STUDY_INSTANCE_UID,
        tags::SERIES_INSTANCE_UID,
    ];
    let mut keys: Vec<Tag> = match level {
        Level::Patient | Level::Study => study.to_vec(),
        Level::Series => series.to_vec(),
        Level::Image => instance.to_vec(),
    };
    if level > Level::Study && scope.study.is_none() {
        keys.extend(study.iter().filter(|t| **t != tags::INSTANCE_AVAILABILITY));
    }
    if level == Level::Image && scope.series.is_none() {
        keys.extend(series);
    }
    keys
}

/// A QIDO attribute: a keyword (`PatientName`) or a tag (`00100010`). Sequence paths
/// (`a.b`) are not supported.
fn attribute(name: &str) -> Result<(Tag, VR), WebError> {
    if name.contains('.') {
        return Err(WebError::BadRequest(format!(
            "`{}`: sequence attribute paths are not supported",
            clip(name)
        )));
    }
    let dict = StandardDataDictionary;
    let entry = if name.len() == 8 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
        let g = u16::from_str_radix(&name[..4], 16).expect("hex");
        let e = u16::from_str_radix(&name[4..], 16).expect("hex");
        match dict.by_tag(Tag(g, e)) {
            Some(e) => Some(e),
            // A private or unknown tag can still be asked for; it is returned empty.
            None => return Ok((Tag(g, e), VR::UN)),
        }
    } else {
        dict.by_name(name)
    }
    .ok_or_else(|| WebError::BadRequest(format!("unknown attribute `{}`", clip(name))))?;
    let vr = match entry.vr() {
        VirtualVr::Exact(vr) => vr,
        _ => VR::UN,
    };
    Ok((entry.tag_range().inner(), vr))
}

/// What the query string asks for.
struct Params {
    matching: Vec<(Tag, VR, String)>,
    include: Vec<Tag>,
    include_all: bool,
    limit: Option<u64>,
    offset: u64,
    fuzzy: bool,
}

fn parse_params(raw: Option<&str>) -> Result<Params, WebError> {
    let mut p = Params {
        matching: Vec::new(),
        include: Vec::new(),
        include_all: false,
        limit: None,
        offset: 0,
        fuzzy: false,
    };
    let number = |k: &str, v: &str| {
        v.parse::<u64>()
            .map_err(|_| WebError::BadRequest(format!("{k}=`{}` is not a number", clip(v))))
    };
    for (i, (k, v)) in url::form_urlencoded::parse(raw.unwrap_or("").as_bytes()).enumerate() {
        if i >= MAX_PARAMS {
            return Err(WebError::BadRequest(format!(
                "more than {MAX_PARAMS} query parameters"
            )));
        }
        if v.len() > MAX_VALUE {
            return Err(WebError::BadRequest(format!(
                "value of `{}` too long",
                clip(&k)
            )));
        }
        match k.as_ref() {
            "limit" => p.limit = Some(number("limit", &v)?),
            "offset" => p.offset = number("offset", &v)?,
            "fuzzymatching" => match v.as_ref() {
                "true" => p.fuzzy = true,
                "false" => p.fuzzy = false,
                _ => {
                    return Err(WebError::BadRequest(
                        "fuzzymatching must be true or false".into(),
                    ));
                }
            },
            "includefield" => {
                for name in v.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                    if name == "all" {
                        p.include_all = true;
                    } else {
                        p.include.push(attribute(name)?.0);
                    }
                }
            }
            _ => {
                let (tag, vr) = attribute(&k)?;
                // A UID list is written with commas in a URL (PS3.18 8.3.4.1), with
                // backslashes in an identifier.
                let value = if vr == VR::UI {
                    v.replace(',', "\\")
                } else {
                    v.into_owned()
                };
                if p.matching.iter().any(|(t, _, _)| *t == tag) {
                    return Err(WebError::BadRequest(format!(
                        "`{}` is given twice",
                        clip(&k)
                    )));
                }
                p.matching.push((tag, vr, value));
            }
        }
    }
    Ok(p)
}

/// The C-FIND identifier equivalent to a search.
fn identifier(level: Level, scope: &Target, p: &Params) -> InMemDicomObject {
    let mut obj = InMemDicomObject::new_empty();
    obj.put(DataElement::new(
        tags::QUERY_RETRIEVE_LEVEL,
        VR::CS,
        PrimitiveValue::from(level.code()),
    ));
    let put = |obj: &mut InMemDicomObject, tag: Tag, vr: VR, value: &str| {
        let v = if value.is_empty() {
            PrimitiveValue::Empty
        } else {
            PrimitiveValue::from(value)
        };
        obj.put(DataElement::new(tag, vr, v));
    };
    let mut returned = default_keys(level, scope);
    if p.include_all {
        returned.extend(
            KEYS.iter()
                .filter(|k| k.column.level() <= level)
                .map(|k| k.tag),
        );
    }
    returned.extend(p.include.iter().copied());
    for tag in returned {
        let below = key_def(tag).is_some_and(|d| d.column.level() > level);
        if !below && obj.get(tag).is_none() {
            let vr = key_def(tag).map(|d| d.vr).unwrap_or(VR::UN);
            put(&mut obj, tag, vr, "");
        }
    }
    for (tag, vr, value) in &p.matching {
        put(
            &mut obj,
            *tag,
            key_def(*tag).map(|d| d.vr).unwrap_or(*vr),
            value,
        );
    }
    if let Some(st) = &scope.study {
        put(&mut obj, tags::STUDY_INSTANCE_UID, VR::UI, st.as_str());
    }
    if let Some(se) = &scope.series {
        put(&mut obj, tags::SERIES_INSTANCE_UID, VR::UI, se.as_str());
    }
    obj
}

fn uid_of(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    obj.get(tag)
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_end_matches(['\0', ' ']).to_string())
        .filter(|s| !s.is_empty())
}

/// A page of matches.
pub(crate) struct Found {
    pub matches: Vec<InMemDicomObject>,
    /// More match beyond this page.
    pub more: bool,
    /// Some asked-for attributes cannot be matched or returned (they are empty).
    pub unsupported: bool,
}

/// The matches of a search, through the same identifier, SQL and match building as C-FIND;
/// with `base`, each carries its RetrieveURL under it.
async fn find(
    state: &WebState,
    level: Level,
    scope: &Target,
    p: &Params,
    order: Order,
    base: Option<&str>,
) -> Result<Found, WebError> {
    let opts = MatchOptions {
        relational: true,
        combined_datetime: true,
        pn_case_insensitive: state.config.query.pn_case_insensitive,
    };
    let ident = identifier(level, scope, p);
    let mut req = parse_identifier(&ident, Model::StudyRoot, opts)
        .map_err(|e| WebError::BadRequest(e.to_string()))?;
    req.query.order = order;
    let max = state.config.http.max_results;
    let limit = p.limit.unwrap_or(max).min(max);
    // One more than the page: whether there is more to ask for.
    let mut rows = state
        .index
        .find_page(req.query.clone(), p.offset, limit + 1)
        .await?;
    let more = rows.len() as u64 > limit;
    rows.truncate(limit as usize);
    let mut matches = Vec::with_capacity(rows.len());
    for row in &rows {
        let mut obj = match_object(&state.storage, &req, row, Ok)
            .await
            .map_err(|e| WebError::Internal(e.to_string()))?;
        let study = uid_of(&obj, tags::STUDY_INSTANCE_UID);
        let series = uid_of(&obj, tags::SERIES_INSTANCE_UID);
        let sop = uid_of(&obj, tags::SOP_INSTANCE_UID);
        let url = match (base, level, study, series, sop) {
            (None, ..) => None,
            (Some(base), Level::Study, Some(st), _, _) => Some(format!("{base}/studies/{st}")),
            (Some(base), Level::Series, Some(st), Some(se), _) => {
                Some(format!("{base}/studies/{st}/series/{se}"))
            }
            (Some(base), Level::Image, Some(st), Some(se), Some(i)) => {
                Some(format!("{base}/studies/{st}/series/{se}/instances/{i}"))
            }
            _ => None,
        };
        if let Some(url) = url {
            obj.put(DataElement::new(
                tags::RETRIEVE_URL,
                VR::UR,
                PrimitiveValue::from(url),
            ));
        }
        matches.push(obj);
    }
    Ok(Found {
        matches,
        more,
        unsupported: !req.unsupported.is_empty(),
    })
}

/// A search written as QIDO-RS parameters (`PatientID=...&limit=...`), for the portal: the
/// same parsing and matching as QIDO-RS and C-FIND, in the given order, without RetrieveURLs.
pub(crate) async fn find_by_params(
    state: &WebState,
    level: Level,
    study: Option<&str>,
    params: &str,
    order: Order,
) -> Result<Found, WebError> {
    let p = parse_params(Some(params))?;
    let scope = Target::parse(study, None, None)?;
    find(state, level, &scope, &p, order, None).await
}

/// Run a search and answer it.
async fn search(
    state: &WebState,
    level: Level,
    scope: Target,
    raw: Option<String>,
    headers: &HeaderMap,
) -> Result<Response, WebError> {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let how = datasets_as(&accept_ranges(accept))?;
    let p = parse_params(raw.as_deref())?;
    let base = format!(
        "{}{}",
        origin_of(headers),
        state.config.http.base_path.trim_end_matches('/')
    );
    let Found {
        matches,
        more,
        unsupported,
    } = find(state, level, &scope, &p, Order::Received, Some(&base)).await?;
    if matches.is_empty() {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let json: Vec<serde_json::Value> = matches.iter().map(|m| metadata_object(m, None)).collect();
    let mut rsp = datasets_response(&json, how)?;
    let mut warn = |text: &str| {
        if let Ok(v) = header::HeaderValue::from_str(text) {
            rsp.headers_mut().append(header::WARNING, v);
        }
    };
    if p.fuzzy {
        warn(
            "299 pacsd: The fuzzymatching parameter is not supported. Only literal matching has been performed.",
        );
    }
    if more {
        warn("299 pacsd: There are additional results that can be requested");
    }
    if unsupported {
        warn(
            "299 pacsd: The following attributes cannot be matched or returned by this node and are returned empty",
        );
    }
    Ok(rsp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_by_keyword_and_tag_fully_decoded() {
        let p = parse_params(Some(
            "PatientName=Doe%5EJ*&0020000D=1.2.3,1.2.4&limit=5&offset=10&includefield=StudyDescription,00081030&fuzzymatching=true",
        ))
        .unwrap();
        assert_eq!(
            p.matching[0],
            (tags::PATIENT_NAME, VR::PN, "Doe^J*".to_string())
        );
        assert_eq!(
            p.matching[1],
            (tags::STUDY_INSTANCE_UID, VR::UI, "1.2.3\\1.2.4".to_string())
        );
        assert_eq!((p.limit, p.offset, p.fuzzy), (Some(5), 10, true));
        assert_eq!(
            p.include,
            vec![tags::STUDY_DESCRIPTION, tags::STUDY_DESCRIPTION]
        );
    }

    #[test]
    fn bad_parameters_are_refused_with_their_name() {
        for (q, needle) in [
            ("limit=-1", "limit"),
            ("NoSuchKeyword=1", "NoSuchKeyword"),
            ("ReferencedSeriesSequence.SeriesInstanceUID=1", "sequence"),
            ("PatientID=a&PatientID=b", "twice"),
            ("fuzzymatching=yes", "fuzzymatching"),
        ] {
            match parse_params(Some(q)) {
                Err(WebError::BadRequest(m)) => assert!(m.contains(needle), "{q}: {m}"),
                Err(other) => panic!("{q}: {other:?}"),
                Ok(_) => panic!("{q} accepted"),
            }
        }
    }

    #[test]
    fn a_search_becomes_the_same_query_as_its_c_find_identifier() {
        let p = parse_params(Some("PatientID=P1&StudyDate=20200101-")).unwrap();
        let ident = identifier(Level::Study, &Target::default(), &p);
        let opts = MatchOptions {
            relational: true,
            combined_datetime: true,
            pn_case_insensitive: true,
        };
        let req = parse_identifier(&ident, Model::StudyRoot, opts).unwrap();
        use crate::index::query::{Column, Matcher};
        assert!(req.query.conditions.iter().any(|c| c.column == Column::PatientId
            && c.matcher == Matcher::Single("P1".into())));
        assert!(
            req.query.conditions.iter().any(
                |c| c.column == Column::StudyDate && matches!(c.matcher, Matcher::Range { .. })
            )
        );
        // A series-level key in a study search is refused, as C-FIND refuses it.
        let low = parse_params(Some("Modality=CT")).unwrap();
        let ident = identifier(Level::Study, &Target::default(), &low);
        assert!(parse_identifier(&ident, Model::StudyRoot, opts).is_err());
    }
}
