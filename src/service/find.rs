//! C-FIND SCP (PS3.4 C.4.1, PS3.7 9.1.2): the identifier becomes an index query; each match
//! is one Pending response holding exactly the requested keys; C-CANCEL stops the stream;
//! the final response is Success, Cancel or a failure with an ErrorComment.

use crate::audit::{Event as AuditEvent, Object, Outcome, QUERY, Role as AuditRole, Subject};
use std::sync::Arc;

use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_encoding::TransferSyntaxIndex;
use dicom_encoding::text::{SpecificCharacterSet, TextCodec};
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use tracing::{debug, warn};

use super::Request;
use super::respond::{Matches, Responder};

use crate::dimse::{CommandField, status};
use crate::index::{FindOutcome, Index, IndexError, record};
use crate::net::{AcceptedContext, Association, NetError};
use crate::service::query::{
    FindRequest, IdentifierError, MatchOptions, Model, Returned, read_identifier,
};
use crate::storage::Storage;

/// Why a C-FIND failed before any match was sent; `to_status` is the one mapping to statuses.
#[derive(Debug, thiserror::Error)]
pub enum FindError {
    #[error("{0}")]
    Identifier(#[from] IdentifierError),
    #[error("query matches {matches} entities, more than the limit of {limit}; narrow it")]
    TooMany { matches: u64, limit: u64 },
    #[error("index: {0}")]
    Index(#[from] IndexError),
    #[error("not a FIND SOP class")]
    NotFind,
}

/// The C-FIND business side: the index, storage (IMAGE-level header keys) and settings.
pub struct FindService {
    pub index: Index,
    pub storage: Arc<Storage>,
    pub ae_title: String,
    pub max_results: u64,
    pub pn_case_insensitive: bool,
}

/// The audit record of a C-FIND (PS3.15 A.5.3.10): the SOP class, the level and matching keys
/// in words, and the patient and studies when the query names them exactly.
fn query_event(context: &AcceptedContext, req: &FindRequest, matches: usize) -> AuditEvent {
    use crate::index::query::{Column, Matcher};
    let mut subject = Subject::default();
    let mut keys = Vec::new();
    for c in &req.query.conditions {
        match (&c.column, &c.matcher) {
            (Column::PatientId, Matcher::Single(v)) => subject.patient_id = Some(v.clone()),
            (Column::StudyInstanceUid, Matcher::Single(v)) => subject.studies.push(v.clone()),
            (Column::StudyInstanceUid, Matcher::UidList(v)) => {
                subject.studies.extend(v.iter().cloned())
            }
            _ => {}
        }
        if !matches!(c.matcher, Matcher::Universal) {
            keys.push(format!("{:?} {:?}", c.column, c.matcher));
        }
    }
    let description = format!(
        "{} level; {}; {matches} matches",
        req.query.level.code(),
        if keys.is_empty() {
            "no matching keys".to_string()
        } else {
            keys.join(", ")
        }
    );
    AuditEvent::new(QUERY, None, 'E', Outcome::Success)
        .about(&subject)
        .on(Object::Query {
            sop_class: context.abstract_syntax.clone(),
            description,
        })
}

impl FindService {
    /// Answer one C-FIND-RQ on `assoc`: the matches go to `respond`, which streams them.
    pub async fn find(&self, assoc: &mut Association, req: Request<'_>) -> Result<(), NetError> {
        let (context, request, data) = (req.context, req.command, req.data);
        let started = std::time::Instant::now();
        let responder = Responder::new(context.id, request, CommandField::CFindRsp);
        let (rows, req) = match self.run(context, data).await {
            Ok(r) => r,
            Err(e) => return responder.refuse(assoc, super::failure::of_find(&e)).await,
        };
        assoc.audit(query_event(context, &req, rows.len()), AuditRole::Source);
        let pending = if req.unsupported.is_empty() {
            status::PENDING
        } else {
            status::PENDING_WARNING
        };
        let (level, total) = (req.query.level.code(), rows.len());
        let identifiers = Identifiers {
            service: self,
            req,
            rows: rows.into_iter(),
            transfer_syntax: &context.transfer_syntax,
        };
        let sent = responder.matches(assoc, pending, identifiers).await;
        debug!(
            level,
            matches = total,
            elapsed_us = started.elapsed().as_micros() as u64,
            "C-FIND done"
        );
        sent
    }

    async fn run(
        &self,
        context: &AcceptedContext,
        data: Option<Vec<u8>>,
    ) -> Result<(Vec<Vec<Option<String>>>, FindRequest), FindError> {
        let model = Model::of_find_sop_class(&context.abstract_syntax).ok_or(FindError::NotFind)?;
        let opts = MatchOptions {
            relational: context.relational(),
            combined_datetime: context.combined_datetime(),
            pn_case_insensitive: self.pn_case_insensitive,
        };
        let req = read_identifier(data, &context.transfer_syntax, model, opts).await?;
        match self.index.find(req.query.clone(), self.max_results).await? {
            FindOutcome::Rows(rows) => Ok((rows, req)),
            FindOutcome::TooMany { matches, limit } => Err(FindError::TooMany { matches, limit }),
        }
    }

    /// The identifier of one Pending response: SpecificCharacterSet, QueryRetrieveLevel,
    /// RetrieveAETitle and exactly the requested keys, encoded in the context's syntax.
    async fn response_identifier(
        &self,
        req: &FindRequest,
        row: &[Option<String>],
        ts_uid: &str,
    ) -> Result<Vec<u8>, EncodeError> {
        let has_header_keys = req
            .returned
            .iter()
            .any(|r| matches!(r, Returned::Header { .. }));
        let (charset, iso2022) = choose_charset(req.charset.as_deref(), row, has_header_keys);
        let code = charset.clone();
        let mut obj = match_object(&self.storage, req, row, |v| {
            match (iso2022, code.as_deref()) {
                // Written byte for byte under the ISO 646 first value (see charset.rs).
                (true, Some(code)) => crate::charset::encode_iso2022(&v, code)
                    .map(|bytes| bytes.iter().map(|b| char::from(*b)).collect())
                    .ok_or_else(|| EncodeError::Charset(code.to_string())),
                _ => Ok(v),
            }
        })
        .await?;
        obj.put(DataElement::new(
            tags::QUERY_RETRIEVE_LEVEL,
            VR::CS,
            PrimitiveValue::from(req.query.level.code()),
        ));
        obj.put(DataElement::new(
            tags::RETRIEVE_AE_TITLE,
            VR::AE,
            PrimitiveValue::from(self.ae_title.as_str()),
        ));

        if let Some(cs) = &charset {
            obj.put(DataElement::new(
                tags::SPECIFIC_CHARACTER_SET,
                VR::CS,
                PrimitiveValue::from(cs.as_str()),
            ));
        }
        let cs = match (iso2022, charset.as_deref()) {
            (false, Some(code)) => SpecificCharacterSet::from_code(code).unwrap_or_default(),
            _ => SpecificCharacterSet::default(),
        };
        let ts = TransferSyntaxRegistry
            .get(ts_uid)
            .ok_or_else(|| EncodeError::UnknownSyntax(ts_uid.to_string()))?;
        let mut out = Vec::with_capacity(512);
        obj.write_dataset_with_ts_cs(&mut out, ts, cs)
            .map_err(|e| EncodeError::Write(e.to_string()))?;
        Ok(out)
    }
}

/// A C-FIND's matches, encoded one at a time as `respond` asks for them.
struct Identifiers<'a> {
    service: &'a FindService,
    req: FindRequest,
    rows: std::vec::IntoIter<Vec<Option<String>>>,
    transfer_syntax: &'a str,
}

impl Matches for Identifiers<'_> {
    type Error = EncodeError;

    async fn next(&mut self) -> Option<Result<Vec<u8>, EncodeError>> {
        let row = self.rows.next()?;
        Some(
            self.service
                .response_identifier(&self.req, &row, self.transfer_syntax)
                .await,
        )
    }
}

/// Why a match could not be encoded as a response identifier.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("a value cannot be encoded in {0}")]
    Charset(String),
    #[error("unknown transfer syntax {0}")]
    UnknownSyntax(String),
    #[error("encoding the identifier: {0}")]
    Write(String),
}

/// Why an IMAGE-level key could not be read from the stored object's header.
#[derive(Debug, thiserror::Error)]
enum HeaderError {
    #[error("reading the object: {0}")]
    Storage(#[from] crate::storage::StorageError),
    #[error("{0}")]
    Part10(#[from] crate::part10::Part10Error),
    #[error("{0}")]
    Record(#[from] record::RecordError),
    #[error("the header task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// One match as a data set holding exactly the requested keys (C-FIND and QIDO-RS build
/// their answers with it): indexed values through `encode` (the identity, or the re-encoding
/// a character set needs), IMAGE-level header keys read from the stored object.
pub async fn match_object(
    storage: &Storage,
    req: &FindRequest,
    row: &[Option<String>],
    encode: impl Fn(String) -> Result<String, EncodeError>,
) -> Result<InMemDicomObject, EncodeError> {
    let mut obj = InMemDicomObject::new_empty();
    let mut header: Option<InMemDicomObject> = None;
    for r in &req.returned {
        match r {
            Returned::Indexed { tag, vr, select } => {
                let value = row
                    .get(*select)
                    .cloned()
                    .flatten()
                    .map(&encode)
                    .transpose()?;
                put_text(&mut obj, *tag, *vr, value);
            }
            Returned::Header { tag, vr } => {
                if header.is_none() {
                    let key = row.last().cloned().flatten().unwrap_or_default();
                    header = Some(read_header(storage, &key).await.unwrap_or_else(|e| {
                        warn!(key, error = %e, "cannot read the stored header for an IMAGE-level key");
                        InMemDicomObject::new_empty()
                    }));
                }
                match header.as_ref().and_then(|h| h.get(*tag)) {
                    Some(e) => {
                        obj.put(e.clone());
                    }
                    None => put_text(&mut obj, *tag, *vr, None),
                }
            }
            Returned::EmptySequence(tag) => {
                obj.put(DataElement::new(
                    *tag,
                    VR::SQ,
                    dicom_core::value::DataSetSequence::<InMemDicomObject>::empty(),
                ));
            }
            Returned::Empty { tag, vr } => put_text(&mut obj, *tag, *vr, None),
            Returned::Availability => put_text(
                &mut obj,
                tags::INSTANCE_AVAILABILITY,
                VR::CS,
                Some("ONLINE".into()),
            ),
        }
    }
    Ok(obj)
}

async fn read_header(storage: &Storage, key: &str) -> Result<InMemDicomObject, HeaderError> {
    let bytes = storage.get(key).await?;
    tokio::task::spawn_blocking(move || {
        let (meta, offset) = crate::part10::split(&bytes)?;
        Ok(record::parse_header(
            &bytes[offset..],
            meta.transfer_syntax(),
            crate::config::DEFAULT_MAX_OBJECT_SIZE,
        )?)
    })
    .await?
}

/// The character set of a response, and whether it uses ISO 2022 code extensions (encoded
/// by `charset::encode_iso2022`). The SCU's own character set is used when it can carry every
/// value: a single set dicom-rs encodes, or Japanese/Korean ISO 2022 sets; otherwise
/// ISO_IR 192 when any value needs more than ASCII (or header keys may), else none.
fn choose_charset(
    requested: Option<&str>,
    row: &[Option<String>],
    header_keys: bool,
) -> (Option<String>, bool) {
    let non_ascii = || row.iter().flatten().any(|v| !v.is_ascii());
    if let Some(code) = requested {
        if crate::charset::needs_iso2022(code) {
            let fits = !header_keys
                && row
                    .iter()
                    .flatten()
                    .all(|v| crate::charset::encode_iso2022(v, code).is_some());
            if fits {
                return (Some(code.to_string()), true);
            }
        } else if let Some(cs) = SpecificCharacterSet::from_code(code) {
            let fits = row.iter().flatten().all(|v| {
                cs.encode(v)
                    .ok()
                    .and_then(|b| cs.decode(&b).ok())
                    .as_deref()
                    == Some(v.as_str())
            });
            if fits && !header_keys {
                return (Some(code.to_string()), false);
            }
        }
    }
    (
        (header_keys || non_ascii()).then(|| "ISO_IR 192".to_string()),
        false,
    )
}

fn put_text(obj: &mut InMemDicomObject, tag: Tag, vr: VR, value: Option<String>) {
    let v = match value {
        None => PrimitiveValue::Empty,
        Some(s) if vr == VR::US => s
            .parse::<u16>()
            .map(PrimitiveValue::from)
            .unwrap_or(PrimitiveValue::Empty),
        // PS3.5 6.2: a UI value of odd length is padded with NUL, not space.
        Some(mut s) if vr == VR::UI => {
            if s.len() % 2 == 1 {
                s.push('\0');
            }
            PrimitiveValue::from(s)
        }
        // A multi-valued attribute is stored backslash-joined (as it is encoded).
        Some(s) if s.contains('\\') => {
            PrimitiveValue::Strs(s.split('\\').map(str::to_string).collect())
        }
        Some(s) => PrimitiveValue::from(s),
    };
    obj.put(DataElement::new(tag, vr, v));
}
