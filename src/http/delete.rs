//! DELETE of a study, a series or one instance: not a PS3.18 service (DICOMweb has none; the
//! archives that offer it, Orthanc and dcm4chee-arc among them, do it the same way), for an
//! administrator who must remove what was sent in error. Admin right only (`auth::needed`).
//! The archive does the work (`archive::delete`); this answers 200 with what was removed,
//! 404 when nothing matches, 503 when the HA standby did not confirm, and records a DICOM
//! Study Deleted audit event either way.

use std::sync::Arc;

use axum::Json;
use axum::extract::{ConnectInfo, Extension, State};
use serde_json::json;

use super::{Conn, Target, WebError, WebState};
use crate::archive::delete::{DeleteError, DeleteReport};
use crate::archive::store::StoreError;
use crate::audit::{Event, Outcome, Role, STUDY_DELETED, Subject};
use crate::index::account::Account;
use crate::storage::Uid;

/// DELETE of what the path names: a study, a series or one instance.
pub async fn delete(
    State(s): State<Arc<WebState>>,
    Extension(account): Extension<Account>,
    ConnectInfo(conn): ConnectInfo<Conn>,
    t: Target,
) -> Result<Json<serde_json::Value>, WebError> {
    let study = t.study_uid()?;
    let peer = Some(conn.peer.ip().to_string());
    let r = delete_recorded(
        &s,
        &account.name,
        peer,
        study,
        t.series.as_ref(),
        t.instance.as_ref(),
    )
    .await?;
    Ok(Json(json!({
        "instances": r.instances,
        "removed": r.removed,
        "pending": r.pending,
    })))
}

/// Delete through the archive and record it in the audit trail (here and from the portal).
pub(crate) async fn delete_recorded(
    state: &WebState,
    account: &str,
    peer: Option<String>,
    study: &Uid,
    series: Option<&Uid>,
    sop: Option<&Uid>,
) -> Result<DeleteReport, WebError> {
    let subject = subject_of(state, study).await;
    let result = state.store.delete(study, series, sop).await;
    let what = crate::index::Index::named_under(
        study.as_str(),
        series.map(Uid::as_str),
        sop.map(Uid::as_str),
    );
    let (outcome, description) = match &result {
        Ok(r) => (
            Outcome::Success,
            format!("{what}: {} instances deleted", r.instances),
        ),
        Err(e) => (Outcome::MinorFailure, format!("{what}: {e}")),
    };
    if !matches!(result, Err(DeleteError::NotFound(_))) {
        state.audit.record(
            Event::new(STUDY_DELETED, None, 'D', outcome)
                .describe(description)
                .by(account, peer, Role::Source)
                .about(&subject),
        );
    }
    result.map_err(|e| match e {
        DeleteError::NotFound(what) => WebError::NotFound(format!("no {what} in this archive")),
        DeleteError::Store(StoreError::NotConfirmed(e)) => {
            WebError::Unavailable(format!("not deleted: {e}"))
        }
        e => WebError::Internal(e.to_string()),
    })
}

/// The patient and study, for the audit record (read before they are gone).
async fn subject_of(state: &WebState, study: &Uid) -> Subject {
    let mut subject = Subject {
        studies: vec![study.to_string()],
        ..Subject::default()
    };
    if let Ok(p) = state.index.patients_of(vec![study.to_string()]).await
        && let Some((id, name)) = p.into_iter().next()
    {
        subject.patient_id = Some(id);
        subject.patient_name = name;
    }
    subject
}
