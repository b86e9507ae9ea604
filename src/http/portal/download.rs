//! A study or series as a ZIP of its Part 10 files, streamed: each object is read through
//! the verified read path (striped, checksummed) and written as a stored (uncompressed)
//! entry while the previous ones are already on their way to the browser.
//!
//! 1. The instances are listed from the index (series, then received order).
//! 2. A blocking thread writes the ZIP (the `zip` crate writes to `std::io::Write`); it asks
//!    the runtime for each object in turn and hands the archive's bytes to the response in
//!    `CHUNK` pieces through a channel of `CHANNEL_CHUNKS`, so at most about one object and
//!    a few chunks are in memory whatever the study's size.
//! 3. An object that cannot be read whole and correct ends the response with an error
//!    before the central directory: the browser reports a failed download rather than keep a
//!    ZIP that silently lacks an image.

use std::io::Write;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tokio::sync::mpsc;

use super::{Peer, Signed, error_page};
use crate::audit::{Event, INSTANCES_TRANSFERRED, Outcome, Role, Subject};
use crate::http::wado::{read, stored};
use crate::http::{WebError, WebState, path_uid};
use crate::index::StoredInstance;

/// Bytes handed to the response at a time.
const CHUNK: usize = 256 << 10;
/// Chunks waiting for the browser at most (with `CHUNK`: 2 MiB).
const CHANNEL_CHUNKS: usize = 8;

/// GET /portal/studies/{study}/download
pub async fn study(
    State(state): State<Arc<WebState>>,
    signed: Signed,
    Peer(peer): Peer,
    Path(study): Path<String>,
) -> Response {
    match zip_of(state, &signed, peer, &study, None).await {
        Ok(r) => r,
        Err(e) => error_page(e, Some(&signed)),
    }
}

/// GET /portal/studies/{study}/series/{series}/download
pub async fn series(
    State(state): State<Arc<WebState>>,
    signed: Signed,
    Peer(peer): Peer,
    Path((study, series)): Path<(String, String)>,
) -> Response {
    match zip_of(state, &signed, peer, &study, Some(&series)).await {
        Ok(r) => r,
        Err(e) => error_page(e, Some(&signed)),
    }
}

/// The name of an instance inside the ZIP: one folder per series.
pub fn entry_name(s: &StoredInstance) -> String {
    format!(
        "{}/{}/{}.dcm",
        s.study_instance_uid, s.series_instance_uid, s.sop_instance_uid
    )
}

async fn zip_of(
    state: Arc<WebState>,
    signed: &Signed,
    peer: Option<std::net::IpAddr>,
    study: &str,
    series: Option<&str>,
) -> Result<Response, WebError> {
    let study = path_uid("Study Instance UID", study)?.to_string();
    let series = match series {
        Some(se) => Some(path_uid("Series Instance UID", se)?.to_string()),
        None => None,
    };
    let items = stored(&state, &study, series.as_deref(), None).await?;
    let mut subject = Subject::default();
    subject.studies.push(study.clone());
    if let Ok(p) = state.index.patients_of(vec![study.clone()]).await
        && let Some((id, name)) = p.into_iter().next()
    {
        subject.patient_id = Some(id);
        subject.patient_name = name;
    }
    state.audit.record(
        Event::new(INSTANCES_TRANSFERRED, None, 'R', Outcome::Success)
            .describe(format!("portal ZIP download of {} instances", items.len()))
            .about(&subject)
            .by(
                &signed.session.account.name,
                peer.map(|p| p.to_string()),
                Role::Destination,
            ),
    );
    let file = match &series {
        Some(se) => format!("{se}.zip"),
        None => format!("{study}.zip"),
    };
    let (tx, mut rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(CHANNEL_CHUNKS);
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let failed = tx.clone();
        if let Err(e) = write_zip(&state, &runtime, &items, ChannelWriter::new(tx)) {
            tracing::warn!(error = %e, "portal ZIP download ended early");
            let _ = failed.blocking_send(Err(e));
        }
    });
    let body = Body::from_stream(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)));
    let mut rsp = (StatusCode::OK, body).into_response();
    let h = rsp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/zip"),
    );
    h.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_str(&format!("attachment; filename=\"{file}\""))
            .expect("UIDs are digits and dots"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(rsp)
}

/// Step 2: the archive, entry by entry, into `out`.
fn write_zip(
    state: &WebState,
    runtime: &tokio::runtime::Handle,
    items: &[StoredInstance],
    out: ChannelWriter,
) -> std::io::Result<()> {
    let mut zip = zip::ZipWriter::new_stream(out);
    for s in items {
        // Step 3: a failed read ends the archive here, without a central directory.
        let bytes = runtime
            .block_on(read(state, s))
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .large_file(bytes.len() as u64 >= u32::MAX as u64);
        zip.start_file(entry_name(s), options)
            .map_err(std::io::Error::other)?;
        zip.write_all(&bytes)?;
    }
    let mut out = zip.finish().map_err(std::io::Error::other)?.into_inner();
    out.flush()
}

/// `Write` into the response's channel in `CHUNK` pieces; fails once the browser has gone.
struct ChannelWriter {
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn new(tx: mpsc::Sender<Result<Bytes, std::io::Error>>) -> ChannelWriter {
        ChannelWriter {
            tx,
            buf: Vec::with_capacity(CHUNK),
        }
    }

    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "browser gone"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}
