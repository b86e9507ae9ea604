//! STOW-RS (PS3.18 10.5): `multipart/related; type="application/dicom"` bodies, read part
//! by part (a part is held in memory up to `node.max_object_size`, the body up to
//! `http.max_upload_size`), each part stored through the C-STORE path: Success only once it
//! is on the write quorum, indexed, and (in an HA pair) confirmed by the standby. The
//! answer is DICOM JSON, or DICOM XML when the request's Accept prefers it.

use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use tracing::{info, warn};

use super::multipart::{DatasetsAs, accept_ranges, datasets_as, request_boundary};
use super::{WebError, WebState, clip, origin_of, path_uid};
use crate::audit::{Event, INSTANCES_TRANSFERRED, Outcome, Role, Subject};
use crate::index::account::Account;
use crate::metrics::Metrics;
use crate::storage::Uid;

/// What a body that stopped arriving is told.
const IDLE: &str = "no body data arrived within timeouts.idle_secs";

/// Parts in one request at most.
const MAX_PARTS: usize = 100_000;
/// Parts being stored at once while the next are read: enough to overlap one part's fsyncs
/// and index commit with the others' (measured: 80 MB/s one at a time, see bench-web.sh).
/// 100 CT parts of 525 KB per request, 3 replicas, four rounds each: 4 at once 237-257 MB/s,
/// 8 at once 265-277, 16 at once 281-305. The byte budget below bounds the memory either way.
const MAX_IN_FLIGHT: usize = 16;
/// Bytes of parts held while they are stored, in permits of `PERMIT_BYTES` (256 MiB); a part
/// larger than that waits until it is the only one.
const PERMIT_BYTES: usize = 1024 * 1024;
const IN_FLIGHT_PERMITS: u32 = 256;

type Stored1 = (
    Result<crate::index::record::InstanceRecord, crate::archive::store::StoreError>,
    Option<String>,
    Option<String>,
    Subject,
);

/// Fold one stored part's outcome into the response and the audit subject.
fn collect(
    done: Result<Stored1, tokio::task::JoinError>,
    outcomes: &mut Vec<Outcome1>,
    subject: &mut Subject,
    account: &Account,
) {
    let (result, sop_class, sop, part_subject) = match done {
        Ok(d) => d,
        Err(e) => {
            outcomes.push(Outcome1 {
                sop_class: None,
                sop: None,
                result: Err((
                    crate::dimse::status::PROCESSING_FAILURE,
                    format!("store task failed: {e}"),
                )),
            });
            return;
        }
    };
    if subject.patient_id.is_none() {
        subject.patient_id = part_subject.patient_id.clone();
        subject.patient_name = part_subject.patient_name.clone();
    }
    for st in part_subject.studies {
        if !subject.studies.contains(&st) {
            subject.studies.push(st);
        }
    }
    outcomes.push(match result {
        Ok(rec) => Outcome1 {
            sop_class: Some(rec.sop_class_uid.clone()),
            sop: Some(rec.sop_instance_uid.clone()),
            result: Ok((rec.study_instance_uid, rec.series_instance_uid)),
        },
        Err(e) => {
            warn!(account = %account.name, error = %e, "STOW-RS part not stored");
            let status = crate::service::failure::of_store(&e);
            Outcome1 {
                sop_class,
                sop,
                result: Err((status.code, status.comment.unwrap_or_default())),
            }
        }
    });
}

pub async fn store(
    State(s): State<Arc<WebState>>,
    Extension(account): Extension<crate::index::account::Account>,
    h: HeaderMap,
    body: Body,
) -> Result<Response, WebError> {
    stow(s, None, &account, &h, body).await
}

pub async fn store_in_study(
    State(s): State<Arc<WebState>>,
    Path(study): Path<String>,
    Extension(account): Extension<crate::index::account::Account>,
    h: HeaderMap,
    body: Body,
) -> Result<Response, WebError> {
    let study = path_uid("Study Instance UID", &study)?;
    stow(s, Some(study), &account, &h, body).await
}

/// One part's outcome.
struct Outcome1 {
    sop_class: Option<String>,
    sop: Option<String>,
    result: Result<(String, String), (u16, String)>,
}

fn text(tag: dicom_core::Tag, vr: VR, v: &str) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, vr, PrimitiveValue::from(v))
}

async fn stow(
    state: Arc<WebState>,
    study: Option<Uid>,
    account: &Account,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, WebError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let (boundary, part_type) = request_boundary(content_type)?;
    // The answer's form, chosen before anything is stored: DICOM XML when the Accept header
    // prefers it (PS3.18 10.5.3), else DICOM JSON, also when Accept allows neither (a store
    // is not refused for the form of its receipt).
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let answer_as = datasets_as(&accept_ranges(accept)).unwrap_or(DatasetsAs::Json);
    if let Some(t) = &part_type
        && t != "application/dicom"
    {
        return Err(WebError::UnsupportedMediaType(format!(
            "type={} is not stored here; send type=\"application/dicom\" parts",
            clip(t)
        )));
    }
    let max_upload = state.config.http.max_upload_size;
    let max_object = state.config.node.max_object_size;
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > max_upload
    {
        return Err(WebError::TooLarge(format!(
            "a request body holds at most {max_upload} bytes (http.max_upload_size)"
        )));
    }
    let constraints = multer::Constraints::new().size_limit(
        multer::SizeLimit::new()
            .whole_stream(max_upload)
            .per_field(max_object),
    );
    // A client that stops sending in the middle of a body is cut off after `timeouts.idle_secs`
    // (408), as a silent association is: it holds a connection and up to a part in memory.
    let idle = state.config.timeouts.idle();
    let chunks = futures::stream::unfold(body.into_data_stream(), move |mut s| async move {
        use futures::StreamExt;
        match tokio::time::timeout(idle, s.next()).await {
            Ok(Some(chunk)) => Some((chunk.map_err(std::io::Error::other), s)),
            Ok(None) => None,
            Err(_) => Some((
                Err(std::io::Error::new(std::io::ErrorKind::TimedOut, IDLE)),
                s,
            )),
        }
    });
    let mut parts = multer::Multipart::with_constraints(chunks, boundary, constraints);
    let mut outcomes: Vec<Outcome1> = Vec::new();
    let mut subject = Subject::default();
    let mut cut_short: Option<WebError> = None;
    let budget = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT_PERMITS as usize));
    let mut in_flight = std::collections::VecDeque::new();
    loop {
        let field = match parts.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                cut_short = Some(multipart_error(e));
                break;
            }
        };
        if outcomes.len() >= MAX_PARTS {
            cut_short = Some(WebError::TooLarge(format!("more than {MAX_PARTS} parts")));
            break;
        }
        let media = field
            .content_type()
            .map(|m| m.essence_str().to_ascii_lowercase());
        if media.as_deref().is_some_and(|m| m != "application/dicom") {
            outcomes.push(Outcome1 {
                sop_class: None,
                sop: None,
                result: Err((
                    crate::dimse::status::SOP_CLASS_NOT_SUPPORTED,
                    format!(
                        "part of type {} is not application/dicom",
                        clip(media.as_deref().unwrap_or(""))
                    ),
                )),
            });
            continue;
        }
        let bytes = match field.bytes().await {
            Ok(b) => b,
            Err(e) => {
                cut_short = Some(multipart_error(e));
                break;
            }
        };
        Metrics::add(&state.metrics.bytes_in, bytes.len() as u64);
        // Parts are stored concurrently (each waits for its fsyncs and its index commit)
        // while the next ones are read, within a byte budget; outcomes keep the parts' order.
        let permits = u32::try_from(bytes.len().div_ceil(PERMIT_BYTES))
            .unwrap_or(u32::MAX)
            .clamp(1, IN_FLIGHT_PERMITS);
        let held = budget
            .clone()
            .acquire_many_owned(permits)
            .await
            .expect("never closed");
        while in_flight.len() >= MAX_IN_FLIGHT {
            let done = in_flight.pop_front().expect("not empty");
            collect(done.await, &mut outcomes, &mut subject, account);
        }
        let (state, study) = (state.clone(), study.clone());
        in_flight.push_back(tokio::spawn(async move {
            let mut part_subject = Subject::default();
            let result = state
                .store
                .store_part10(&bytes, study.as_ref(), &mut part_subject)
                .await;
            let meta = crate::part10::split(&bytes).ok().map(|(m, _)| m);
            let uid = |s: &str| s.trim_end_matches(['\0', ' ']).to_string();
            let sop_class = meta.as_ref().map(|m| uid(m.media_storage_sop_class_uid()));
            let sop = meta
                .as_ref()
                .map(|m| uid(m.media_storage_sop_instance_uid()));
            drop(held);
            (result, sop_class, sop, part_subject)
        }));
    }
    for done in in_flight {
        collect(done.await, &mut outcomes, &mut subject, account);
    }
    let stored = outcomes.iter().filter(|o| o.result.is_ok()).count();
    let failed = outcomes.len() - stored;
    info!(account = %account.name, stored, failed, "STOW-RS request");
    let outcome = match (stored, failed, &cut_short) {
        (_, 0, None) => Outcome::Success,
        (0, _, _) => Outcome::SeriousFailure,
        _ => Outcome::MinorFailure,
    };
    if !outcomes.is_empty() {
        state.audit.record(
            Event::new(INSTANCES_TRANSFERRED, None, 'C', outcome)
                .describe(format!("STOW-RS: {stored} stored, {failed} failed"))
                .by(&account.name, None, Role::Source)
                .about(&subject),
        );
    }
    if let Some(e) = cut_short {
        // The parts before the fault that were stored stay stored (each was complete and
        // passed every check); the client is told the request failed and may send again
        // (a re-sent identical instance is Success).
        warn!(stored, error = %e, "STOW-RS body cut short");
        return Err(e);
    }
    if outcomes.is_empty() {
        return Err(WebError::BadRequest("the request holds no parts".into()));
    }
    if outcomes
        .iter()
        .all(|o| o.sop.is_none() && o.result.is_err())
    {
        return Err(WebError::UnsupportedMediaType(
            "no application/dicom part in the request".into(),
        ));
    }
    let base = format!(
        "{}{}",
        origin_of(headers),
        state.config.http.base_path.trim_end_matches('/')
    );
    let mut response = InMemDicomObject::new_empty();
    let mut referenced = Vec::new();
    let mut failures = Vec::new();
    for o in &outcomes {
        let mut item = InMemDicomObject::new_empty();
        item.put(text(
            tags::REFERENCED_SOP_CLASS_UID,
            VR::UI,
            o.sop_class.as_deref().unwrap_or(""),
        ));
        item.put(text(
            tags::REFERENCED_SOP_INSTANCE_UID,
            VR::UI,
            o.sop.as_deref().unwrap_or(""),
        ));
        match &o.result {
            Ok((st, se)) => {
                let sop = o.sop.as_deref().unwrap_or("");
                item.put(text(
                    tags::RETRIEVE_URL,
                    VR::UR,
                    &format!("{base}/studies/{st}/series/{se}/instances/{sop}"),
                ));
                referenced.push(item);
            }
            Err((code, comment)) => {
                item.put(DataElement::new(
                    tags::FAILURE_REASON,
                    VR::US,
                    PrimitiveValue::from(*code),
                ));
                if !comment.is_empty() {
                    item.put(text(
                        tags::ERROR_COMMENT,
                        VR::LO,
                        &comment.chars().take(64).collect::<String>(),
                    ));
                }
                failures.push(item);
            }
        }
    }
    if let Some(st) = &study {
        response.put(text(
            tags::RETRIEVE_URL,
            VR::UR,
            &format!("{base}/studies/{st}"),
        ));
    }
    if !referenced.is_empty() {
        response.put(DataElement::new(
            tags::REFERENCED_SOP_SEQUENCE,
            VR::SQ,
            DataSetSequence::from(referenced),
        ));
    }
    if !failures.is_empty() {
        response.put(DataElement::new(
            tags::FAILED_SOP_SEQUENCE,
            VR::SQ,
            DataSetSequence::from(failures),
        ));
    }
    // PS3.18 10.5.3: 200 when every instance was stored, 202 when some were, 409 when none.
    let status = match (stored, failed) {
        (_, 0) => StatusCode::OK,
        (0, _) => StatusCode::CONFLICT,
        _ => StatusCode::ACCEPTED,
    };
    let json = crate::dicomjson::metadata_object(&response, None);
    let (content_type, body) = match answer_as {
        DatasetsAs::Json => (
            "application/dicom+json",
            serde_json::to_vec(&json).map_err(|e| WebError::Internal(e.to_string()))?,
        ),
        DatasetsAs::Xml => (
            "application/dicom+xml",
            crate::dicomxml::native_xml(&json).into_bytes(),
        ),
    };
    Ok((status, [(header::CONTENT_TYPE, content_type)], body).into_response())
}

fn multipart_error(e: multer::Error) -> WebError {
    match e {
        multer::Error::StreamSizeExceeded { limit } => WebError::TooLarge(format!(
            "a request body holds at most {limit} bytes (http.max_upload_size)"
        )),
        multer::Error::FieldSizeExceeded { limit, .. } => WebError::TooLarge(format!(
            "one part holds at most {limit} bytes (node.max_object_size)"
        )),
        multer::Error::StreamReadFailed(e) if e.to_string() == IDLE => {
            WebError::Timeout(format!("{IDLE}; request abandoned"))
        }
        other => WebError::BadRequest(format!("malformed multipart body: {other}")),
    }
}
