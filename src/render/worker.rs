//! The render worker: works off the previews the index records as pending, in the background.
//! The queue is the index itself (a row per instance, created with the instance), so nothing
//! is held in memory beyond one batch and nothing is lost by a restart. Each preview is read
//! through the checked storage path, rendered on the blocking pool and written to the same
//! replicas as the object, under the same quorum rules, without a flush each: a batch's
//! previews are flushed together (one `syncfs` per file system) before they are recorded.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tracing::{debug, info, warn};

use crate::archive::{Settle, settle};
use crate::index::{Index, PreviewState, PreviewTask, preview_key};
use crate::net::Shutdown;
use crate::storage::{Durability, Expected, Storage};

/// Pending previews fetched from the index at a time.
const BATCH: usize = 32;
/// With nothing pending, the index is looked at again after this long even without a new
/// instance (a safety net; new instances wake the worker at once).
const IDLE_POLL: Duration = Duration::from_secs(5);
/// Previews deferred because storage could not read the object or take the preview are tried
/// again after this long.
const RETRY_AFTER: Duration = Duration::from_secs(10);
/// Rendering waits until no instance has been committed for this long: a burst of C-STOREs
/// has the disk and the cores to itself (measured: rendering beside a single-association CT
/// burst cost it a third of its rate on 2 cores, mostly the previews' own fsyncs, when each
/// preview was still flushed on its own).
const QUIET: Duration = Duration::from_millis(300);
/// ... but under ingest that never pauses, a batch is still rendered this often.
const MAX_DEFER: Duration = Duration::from_secs(10);

/// What happened to one pending preview.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Stored,
    NoPixelData,
    /// Logged once and recorded as failed; never retried.
    Undecodable(String),
    /// Storage trouble: left pending, tried again later.
    Deferred(String),
}

/// Run until shutdown: render every pending preview, `workers` at a time.
pub async fn run(index: Index, storage: Arc<Storage>, workers: usize, mut shutdown: Shutdown) {
    let mut after = 0i64;
    let mut deferred = false;
    let mut commits = index.commits();
    loop {
        if shutdown.is_triggered() {
            return;
        }
        // Let a burst of C-STOREs finish first.
        let waited_since = tokio::time::Instant::now();
        loop {
            let last = commits.borrow_and_update().at;
            let quiet_for = last.map_or(QUIET, |at| at.elapsed());
            if quiet_for >= QUIET || waited_since.elapsed() >= MAX_DEFER {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(QUIET - quiet_for) => {}
                _ = shutdown.wait() => return,
            }
        }
        let batch = match index.pending_previews(after, BATCH).await {
            Ok(b) => b,
            Err(e) => {
                warn!(error = %e, "render worker: reading pending previews failed");
                Vec::new()
            }
        };
        let Some(last) = batch.last() else {
            // Swept to the end: wait for new instances (or retry what was deferred).
            let wait = if deferred { RETRY_AFTER } else { IDLE_POLL };
            if deferred {
                after = 0;
                deferred = false;
            }
            tokio::select! {
                _ = commits.changed() => {}
                // Idle: sweep again from the start, where a preview whose copies were all lost
                // is pending again (`Index::forget_lost_preview`).
                _ = tokio::time::sleep(wait) => after = 0,
                _ = shutdown.wait() => return,
            }
            continue;
        };
        after = last.instance_id;
        let mut rendering = futures::stream::iter(batch)
            .map(|task| render(&index, &storage, task))
            .buffer_unordered(workers);
        let mut rendered = Vec::new();
        while let Some(r) = rendering.next().await {
            if shutdown.is_triggered() {
                // What was rendered stays pending (a preview re-put is harmless).
                return;
            }
            rendered.push(r);
        }
        for outcome in record(&index, &storage, rendered).await {
            deferred |= matches!(outcome, Outcome::Deferred(_));
        }
    }
}

/// A preview rendered and, if there is one, placed on its replicas (not flushed yet), with
/// what is to be recorded of it.
pub struct Rendered {
    task: PreviewTask,
    /// None: nothing to record yet (the object could not be read or the preview not stored:
    /// it stays pending), with the outcome.
    record: Option<(PreviewState, Vec<(String, String)>)>,
    placed: Option<(crate::archive::Placed, String)>,
    outcome: Outcome,
}

/// Read the object, render its preview and place it (`Durability::Deferred`: not flushed).
pub async fn render(index: &Index, storage: &Storage, task: PreviewTask) -> Rendered {
    let deferred = |task, why: String| Rendered {
        task,
        record: None,
        placed: None,
        outcome: Outcome::Deferred(why),
    };
    let expected = Expected {
        key: task.storage_key.clone(),
        size: task.size,
        digest: task.digest.clone(),
        read_check: task.read_check.clone(),
    };
    let object = match crate::archive::read_verified(storage, index, &expected).await {
        Ok(b) => b,
        Err(e) => {
            debug!(sop = %task.sop_instance_uid, error = %e, "preview deferred: object unreadable");
            return deferred(task, e.to_string());
        }
    };
    // The object is in memory: its WADO-RS metadata is computed now too, so that a viewer's
    // first metadata request of the series is one index query.
    let (rendered, metadata) = tokio::task::spawn_blocking(move || {
        (
            super::render_preview(&object),
            crate::dicomjson::instance_metadata(&object),
        )
    })
    .await
    .map(|(r, m)| (r, m.ok()))
    .unwrap_or_else(|e| {
        (
            Err(super::RenderError::Decode(format!(
                "renderer panicked: {e}"
            ))),
            None,
        )
    });
    if let Some(json) = metadata
        && let Err(e) = index
            .set_instance_metadata(&task.sop_instance_uid, json)
            .await
    {
        debug!(sop = %task.sop_instance_uid, error = %e, "metadata not kept");
    }
    match rendered {
        Ok(None) => Rendered {
            task,
            record: Some((PreviewState::NoPixelData, Vec::new())),
            placed: None,
            outcome: Outcome::NoPixelData,
        },
        Err(e) => {
            let reason = e.to_string();
            warn!(sop = %task.sop_instance_uid, %reason, "no preview: the image cannot be rendered");
            Rendered {
                task,
                record: Some((
                    PreviewState::Failed {
                        reason: reason.clone(),
                    },
                    Vec::new(),
                )),
                placed: None,
                outcome: Outcome::Undecodable(reason),
            }
        }
        Ok(Some(jpeg)) => {
            let key = preview_key(&task.storage_key);
            let size = jpeg.len() as u64;
            let digest = crate::storage::digest::record(&jpeg);
            match crate::archive::place(
                storage,
                &key,
                bytes::Bytes::from(jpeg),
                Durability::Deferred,
            )
            .await
            {
                Ok(p) => Rendered {
                    task,
                    record: Some((
                        PreviewState::Done {
                            storage_key: key.clone(),
                            size,
                            digest,
                        },
                        p.missed.clone(),
                    )),
                    placed: Some((p, key)),
                    outcome: Outcome::Stored,
                },
                Err(e) => {
                    debug!(sop = %task.sop_instance_uid, error = %e, "preview deferred: not stored");
                    deferred(task, e.to_string())
                }
            }
        }
    }
}

/// Record a batch of rendered previews: first one flush of the replicas' file systems for
/// every preview placed (`Storage::flush`), so that a preview recorded as stored is durable
/// like an object; then each outcome. A failed flush leaves the batch's stored previews
/// pending (made again later).
pub async fn record(index: &Index, storage: &Storage, batch: Vec<Rendered>) -> Vec<Outcome> {
    let mut written: Vec<usize> = batch
        .iter()
        .filter_map(|r| r.placed.as_ref())
        .flat_map(|(p, _)| p.outcome.written.iter().copied())
        .collect();
    written.sort_unstable();
    written.dedup();
    let flushed = storage.flush(&written).await.map_err(|e| e.to_string());
    crate::crashpoint::hit("preview-placed");
    let mut outcomes = Vec::with_capacity(batch.len());
    for mut r in batch {
        let sop = &r.task.sop_instance_uid;
        if let (Some((placed, key)), Err(e)) = (&mut r.placed, &flushed) {
            warn!(sop = %sop, error = %e, "preview deferred: not flushed");
            settle(placed, storage, key, Settle::Leave);
            outcomes.push(Outcome::Deferred(e.clone()));
            continue;
        }
        let Some((state, missed)) = r.record else {
            outcomes.push(r.outcome);
            continue;
        };
        let recorded = index.set_preview(r.task.instance_id, state, missed).await;
        if let Some((placed, key)) = &mut r.placed {
            // Not recorded: the preview is made again, so a straggler's copy is simply
            // replaced.
            let how = match recorded {
                Ok(()) => Settle::Committed(index),
                Err(_) => Settle::Leave,
            };
            settle(placed, storage, key, how);
        }
        if let Err(e) = recorded {
            warn!(sop = %sop, error = %e, "preview outcome not recorded; will redo");
            outcomes.push(Outcome::Deferred(e.to_string()));
            continue;
        }
        if r.outcome == Outcome::Stored {
            debug!(sop = %sop, "preview stored");
        }
        outcomes.push(r.outcome);
    }
    outcomes
}

/// Render every pending preview now, in the foreground (tests and tools): returns how many
/// of each outcome.
pub async fn drain(
    index: &Index,
    storage: &Storage,
) -> Result<Vec<Outcome>, crate::index::IndexError> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let batch = index.pending_previews(after, BATCH).await?;
        let Some(last) = batch.last() else { break };
        after = last.instance_id;
        let mut rendered = Vec::with_capacity(batch.len());
        for task in batch {
            rendered.push(render(index, storage, task).await);
        }
        all.extend(record(index, storage, rendered).await);
    }
    if !all.is_empty() {
        info!(previews = all.len(), "pending previews rendered");
    }
    Ok(all)
}
