//! Upload from the browser: files or whole folders dropped on the page go into a queue, and
//! each is sent as its own request (so one refused file does not fail the others, and each
//! has its own progress bar) to `POST /portal/upload`, which stores it through the STOW-RS
//! store path: the same checks, quorum write, index commit and answer-only-when-kept contract
//! as C-STORE. A refused file comes back with the reason.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use maud::html;
use serde_json::json;

use super::session::same_token;
use super::{Peer, Signed, error_page, page};
use crate::audit::{Event, INSTANCES_TRANSFERRED, Outcome, Role, Subject};
use crate::http::{WebError, WebState};

/// The header that carries the session's CSRF token with an upload.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// GET /portal/upload (upload right).
pub async fn form(signed: Signed) -> Response {
    if let Err(e) = signed.require(signed.rights().upload, "upload (uploader or admin only)") {
        return error_page(e, Some(&signed));
    }
    let body = html! {
        h1 { "Upload" }
        p.muted {
            "DICOM Part 10 files, or folders of them. Each file is stored as a C-STORE would be: "
            "it is kept on a majority of the replicas and indexed before it shows as stored."
        }
        div #drop .dropzone tabindex="0" role="group" aria-label="Drop files or folders here" {
            p { "Drop files or folders here, or choose them:" }
            div.actions {
                // Visually hidden, not `hidden`: the inputs stay in the tab order (the label shows
                // their focus).
                label.button { "Choose files" input #files .picker type="file" multiple; }
                label.button.secondary { "Choose a folder" input #folder .picker type="file" webkitdirectory multiple; }
            }
        }
        p #summary role="status" aria-live="polite" {}
        table #queue {
            thead { tr { th scope="col" { "File" } th.num scope="col" { "Size" } th scope="col" { "Progress" } th scope="col" { "Outcome" } } }
            tbody {}
        }
        input #csrf type="hidden" value=(signed.session.csrf);
        script src="/portal/upload.js" {}
    };
    page("Upload", Some(&signed), body).into_response()
}

/// The upload page's script: the queue, two files at a time, progress and outcome per file.
pub async fn script() -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        include_str!("upload.js"),
    )
        .into_response()
}

/// POST /portal/upload: one Part 10 file as the body, the session's CSRF token in
/// `X-CSRF-Token`. 200 `{"stored": SOP Instance UID}` or 4xx/5xx `{"refused": reason}`.
pub async fn store(
    State(state): State<Arc<WebState>>,
    signed: Signed,
    Peer(peer): Peer,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let refused = |status: StatusCode, reason: String| {
        (status, axum::Json(json!({ "refused": reason }))).into_response()
    };
    let token = headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !same_token(token, &signed.session.csrf) {
        return refused(
            StatusCode::FORBIDDEN,
            "the upload did not come from this session's page".into(),
        );
    }
    if !signed.rights().upload {
        return refused(
            StatusCode::FORBIDDEN,
            format!("account `{}` may not upload", signed.session.account.name),
        );
    }
    let limit = state.config.node.max_object_size;
    let bytes = match read_body(body, limit, state.config.timeouts.idle()).await {
        Ok(b) => b,
        Err(e) => return refused(e.status(), e.to_string()),
    };
    let mut subject = Subject::default();
    let result = state.store.store_part10(&bytes, None, &mut subject).await;
    let outcome = if result.is_ok() {
        Outcome::Success
    } else {
        Outcome::MinorFailure
    };
    state.audit.record(
        Event::new(INSTANCES_TRANSFERRED, None, 'C', outcome)
            .describe("portal upload")
            .by(
                &signed.session.account.name,
                peer.map(|p| p.to_string()),
                Role::Source,
            )
            .about(&subject),
    );
    match result {
        Ok(record) => (
            StatusCode::OK,
            axum::Json(json!({ "stored": record.sop_instance_uid })),
        )
            .into_response(),
        Err(e) => {
            use crate::archive::store::StoreError as E;
            let status = match &e {
                E::Storage(_) | E::Index(_) | E::NotConfirmed(_) | E::OverBudget { .. } => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                E::Conflict { .. } => StatusCode::CONFLICT,
                E::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                _ => StatusCode::UNPROCESSABLE_ENTITY,
            };
            refused(status, e.to_string())
        }
    }
}

/// The request body, at most `limit` bytes, each piece arriving within `idle`.
async fn read_body(
    body: Body,
    limit: u64,
    idle: std::time::Duration,
) -> Result<bytes::Bytes, WebError> {
    let mut stream = body.into_data_stream();
    let mut buf = bytes::BytesMut::new();
    loop {
        match tokio::time::timeout(idle, stream.next()).await {
            Err(_) => {
                return Err(WebError::Timeout(
                    "no body data arrived within timeouts.idle_secs".into(),
                ));
            }
            Ok(None) => return Ok(buf.freeze()),
            Ok(Some(Err(e))) => return Err(WebError::BadRequest(format!("reading the body: {e}"))),
            Ok(Some(Ok(chunk))) => {
                if (buf.len() + chunk.len()) as u64 > limit {
                    return Err(WebError::TooLarge(format!(
                        "a file holds at most {limit} bytes (node.max_object_size)"
                    )));
                }
                buf.extend_from_slice(&chunk);
            }
        }
    }
}
