//! C-MOVE and C-GET SCPs (PS3.4 C.4.2, C.4.3; PS3.7 9.1.3, 9.1.4): the identifier selects
//! instances; each is sent with a C-STORE sub-operation (to the move destination on a
//! sub-association, or back on the requesting association for C-GET); a Pending response with
//! the counters follows each sub-operation; C-CANCEL stops between sub-operations.

use crate::audit::{EXPORT, Event as AuditEvent, Object, Outcome, Role as AuditRole, Subject};
use std::sync::Arc;

use bytes::Bytes;
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::config::Config;
use crate::dimse::{Command, CommandField, DATA_SET_PRESENT, Status, status};
use crate::index::{Index, IndexError, StoredInstance};
use crate::net::scu::{ProposedContext, ScuAssociation, ScuOptions, ScuTls};
use crate::net::{AcceptedContext, Association, Incoming, NetError};
use crate::service::query::{IdentifierError, MatchOptions, Model, read_identifier};
use crate::storage::Storage;

/// Objects read ahead from storage while the network sends.
const PREFETCH: usize = 4;
/// Bytes read ahead per retrieve: a destination that reads slowly holds at most this much
/// (plus the object being sent), whatever the objects' sizes. 64 MiB keeps four typical CT
/// or MR objects, or one large multi-frame object, ahead of the wire.
const PREFETCH_BYTES: u32 = 64 * 1024 * 1024;

/// Why a retrieve could not start (`service::status` maps it to a status).
#[derive(Debug, thiserror::Error)]
pub enum RetrieveError {
    #[error("{0}")]
    Identifier(#[from] IdentifierError),
    #[error("move destination `{0}` is not a known AE")]
    UnknownDestination(String),
    #[error("move destination missing")]
    NoDestination,
    #[error("index: {0}")]
    Index(#[from] IndexError),
    #[error("not a retrieve SOP class")]
    NotRetrieve,
}

/// Answer a C-MOVE or C-GET that cannot start with its failure status (`failure`), no
/// sub-operation having run.
async fn refuse(
    assoc: &mut Association,
    context: &AcceptedContext,
    request: &Command,
    field: CommandField,
    e: &RetrieveError,
) -> Result<(), NetError> {
    warn!(error = %e, command = ?field, "retrieve refused");
    let rsp = Command::response_to(request, field, super::failure::of_retrieve(e));
    assoc.send_command(context.id, &rsp).await
}

/// The sub-operation counters (PS3.7 C.4.2.1.x).
#[derive(Debug, Default, Clone)]
struct Counters {
    remaining: usize,
    completed: usize,
    failed: usize,
    warning: usize,
    failed_uids: Vec<String>,
}

impl Counters {
    fn fail(&mut self, uid: &str) {
        self.remaining = self.remaining.saturating_sub(1);
        self.failed += 1;
        self.failed_uids.push(uid.to_string());
    }
}

fn clamp16(n: usize) -> u16 {
    n.min(u16::MAX as usize) as u16
}

/// The C-MOVE / C-GET business side.
pub struct RetrieveService {
    pub index: Index,
    pub storage: Arc<Storage>,
    pub config: Arc<Config>,
    /// This node's TLS client configuration, for destinations marked `tls`.
    pub tls: Option<tokio_rustls::TlsConnector>,
    /// Bytes read for sub-operations (`/metrics`).
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl RetrieveService {
    /// The instances an identifier selects, in index order.
    async fn items(
        &self,
        context: &AcceptedContext,
        data: Option<Vec<u8>>,
    ) -> Result<Vec<StoredInstance>, RetrieveError> {
        let model = Model::of_retrieve_sop_class(&context.abstract_syntax)
            .ok_or(RetrieveError::NotRetrieve)?;
        let opts = MatchOptions {
            relational: context.relational(),
            combined_datetime: false,
            pn_case_insensitive: self.config.query.pn_case_insensitive,
        };
        let query = read_identifier(data, &context.transfer_syntax, model, opts)
            .await?
            .query;
        Ok(self.index.stored_instances(query).await?)
    }

    /// C-MOVE: send the selected instances to the destination AE named in the request.
    pub async fn move_(
        &self,
        assoc: &mut Association,
        context: &AcceptedContext,
        request: &Command,
        data: Option<Vec<u8>>,
    ) -> Result<(), NetError> {
        let field = CommandField::CMoveRsp;
        let prepared = async {
            let dest = request
                .move_destination
                .clone()
                .filter(|d| !d.is_empty())
                .ok_or(RetrieveError::NoDestination)?;
            let peer = self
                .config
                .peer(&dest)
                .cloned()
                .ok_or(RetrieveError::UnknownDestination(dest))?;
            Ok::<_, RetrieveError>((peer, self.items(context, data).await?))
        }
        .await;
        let (peer, items) = match prepared {
            Ok(p) => p,
            Err(e) => return refuse(assoc, context, request, field, &e).await,
        };
        if items.is_empty() {
            return assoc
                .send_command(
                    context.id,
                    &final_response(request, field, &Counters::default(), None),
                )
                .await;
        }
        // Exactly the SOP classes to send, each in its stored syntax plus the two native ones.
        let mut proposed: Vec<ProposedContext> = Vec::new();
        for it in &items {
            let mut ts = vec![it.transfer_syntax_uid.clone()];
            for native in [
                uids::EXPLICIT_VR_LITTLE_ENDIAN,
                uids::IMPLICIT_VR_LITTLE_ENDIAN,
            ] {
                if !ts.iter().any(|t| t == native) {
                    ts.push(native.to_string());
                }
            }
            let pc = ProposedContext {
                abstract_syntax: it.sop_class_uid.clone(),
                transfer_syntaxes: ts,
            };
            if !proposed.contains(&pc) {
                proposed.push(pc);
            }
        }
        proposed.truncate(128);
        let tls = match (peer.needs_tls(), &self.tls) {
            (false, _) => Ok(None),
            (true, Some(connector)) => {
                crate::net::tls::server_name(peer.tls_server_name.as_deref().unwrap_or(&peer.host))
                    .map(|server_name| {
                        Some(ScuTls {
                            connector: connector.clone(),
                            server_name,
                        })
                    })
                    .map_err(|e| e.to_string())
            }
            (true, None) => Err("the destination needs TLS and [tls] is not configured".into()),
        };
        let opts = ScuOptions {
            addr: format!("{}:{}", peer.host, peer.port),
            calling_ae: self.config.node.ae_title.clone(),
            called_ae: peer.ae_title.clone(),
            timeout: self.config.timeouts.write(),
            tls: tls.clone().unwrap_or(None),
        };
        info!(destination = %peer.ae_title, addr = %opts.addr, tls = opts.tls.is_some(), instances = items.len(), "C-MOVE starting");
        let connected = match tls {
            // Never in clear to a destination that needs TLS.
            Err(e) => Err(e),
            Ok(_) => ScuAssociation::connect(&opts, &proposed)
                .await
                .map_err(|e| e.to_string()),
        };
        let sub = match connected {
            Ok(s) => s,
            Err(e) => {
                warn!(destination = %peer.ae_title, error = %e, "move destination refused or unreachable");
                let mut c = Counters {
                    remaining: items.len(),
                    ..Counters::default()
                };
                for it in &items {
                    c.fail(&it.sop_instance_uid);
                }
                let comment = format!("destination {}: {e}", peer.ae_title);
                return assoc
                    .send_command(
                        context.id,
                        &final_response(request, field, &c, Some(comment)),
                    )
                    .await;
            }
        };
        let mut sub = sub;
        let originator = (
            assoc.calling_ae().to_string(),
            request.message_id.unwrap_or(0),
        );
        assoc.audit(
            self.export_event(&items, &format!("C-MOVE to {}", peer.ae_title))
                .await
                .to(
                    &peer.ae_title,
                    Some(peer.host.clone()),
                    AuditRole::Destination,
                ),
            AuditRole::Application,
        );
        let result = self
            .run_move(assoc, context, request, items, &mut sub, &originator)
            .await;
        if let Err(e) = sub.release().await {
            info!(error = %e, "releasing the move sub-association failed");
        }
        result
    }

    /// C-GET: send the selected instances back on this association.
    pub async fn get(
        &self,
        assoc: &mut Association,
        context: &AcceptedContext,
        request: &Command,
        data: Option<Vec<u8>>,
    ) -> Result<(), NetError> {
        let field = CommandField::CGetRsp;
        let items = match self.items(context, data).await {
            Ok(i) => i,
            Err(e) => return refuse(assoc, context, request, field, &e).await,
        };
        let event = self.export_event(&items, "C-GET").await;
        assoc.audit(event, AuditRole::Destination);
        self.run_get(assoc, context, request, items).await
    }

    /// The audit record of instances leaving the archive (PS3.15 A.5.3.4 Export): the
    /// studies they belong to, their patients (from the index) and how many.
    async fn export_event(&self, items: &[StoredInstance], what: &str) -> AuditEvent {
        let mut subject = Subject::default();
        for it in items {
            if !subject.studies.contains(&it.study_instance_uid) {
                subject.studies.push(it.study_instance_uid.clone());
            }
        }
        let mut event = AuditEvent::new(EXPORT, None, 'R', Outcome::Success)
            .describe(format!("{what}: {} instances", items.len()));
        match self.index.patients_of(subject.studies.clone()).await {
            Ok(patients) => {
                for (id, name) in patients {
                    event = event.on(Object::Patient { id, name });
                }
            }
            Err(e) => warn!(error = %e, "patients of an export not found for the audit record"),
        }
        event.about(&subject)
    }

    /// C-GET sub-operations and responses share the requesting association, strictly in turn.
    async fn run_get(
        &self,
        assoc: &mut Association,
        context: &AcceptedContext,
        request: &Command,
        items: Vec<StoredInstance>,
    ) -> Result<(), NetError> {
        let field = CommandField::CGetRsp;
        let mut counters = Counters {
            remaining: items.len(),
            ..Counters::default()
        };
        let mut rx = self.prefetch(items);
        let mut cancelled = false;
        while let Some((item, bytes, _held)) = rx.recv().await {
            if cancelled || assoc.cancel_requested()? {
                cancelled = true;
                break;
            }
            let outcome = match bytes {
                Ok(b) => {
                    self.get_suboperation(assoc, &item, b, &mut cancelled)
                        .await?
                }
                Err(e) => Err(e),
            };
            record(&mut counters, &item, outcome);
            send_pending(assoc, context.id, request, field, &counters).await?;
        }
        if cancelled {
            let rsp = cancel_response(request, field, &counters);
            return assoc.send_command(context.id, &rsp).await;
        }
        send_final(assoc, context.id, request, field, &counters, None).await
    }

    /// One C-GET sub-operation: C-STORE on an accepted storage context where the requestor is
    /// SCP, in a syntax it accepted. A C-CANCEL arriving meanwhile is remembered.
    async fn get_suboperation(
        &self,
        assoc: &mut Association,
        item: &StoredInstance,
        file: Bytes,
        cancelled: &mut bool,
    ) -> Result<Result<Status, String>, NetError> {
        let candidates: Vec<AcceptedContext> = assoc
            .contexts()
            .iter()
            .filter(|c| c.requestor_scp && c.abstract_syntax == item.sop_class_uid)
            .cloned()
            .collect();
        let Some((ctx, payload)) = pick_context(&candidates, item, &file) else {
            return Ok(Err(format!(
                "no accepted context can carry {} in {}",
                item.sop_class_uid, item.transfer_syntax_uid
            )));
        };
        let payload = match payload {
            Ok(p) => p,
            Err(e) => return Ok(Err(e)),
        };
        let id = assoc.next_message_id();
        assoc
            .send_command(
                ctx.id,
                &Command::store_rq(id, &item.sop_class_uid, &item.sop_instance_uid),
            )
            .await?;
        assoc.send_data(ctx.id, &payload).await?;
        loop {
            match assoc.next().await? {
                Incoming::Message(msg) if msg.command.field() == Some(CommandField::CCancelRq) => {
                    *cancelled = true
                }
                Incoming::Message(msg) if msg.command.field() == Some(CommandField::CStoreRsp) => {
                    let st = Status {
                        code: msg.command.status.unwrap_or(0xFFFF),
                        comment: msg.command.error_comment,
                    };
                    return Ok(Ok(st));
                }
                Incoming::Message(msg) => {
                    warn!(
                        command = msg.command.command_field,
                        "unexpected message during C-GET; ignored"
                    );
                }
                Incoming::Released | Incoming::Aborted => {
                    return Err(NetError::Protocol {
                        peer: assoc.peer(),
                        reason: "association ended during C-GET".into(),
                    });
                }
            }
        }
    }

    /// C-MOVE sub-operations on the destination sub-association; Pending responses on the
    /// requesting association.
    async fn run_move(
        &self,
        assoc: &mut Association,
        context: &AcceptedContext,
        request: &Command,
        items: Vec<StoredInstance>,
        sub: &mut ScuAssociation,
        originator: &(String, u16),
    ) -> Result<(), NetError> {
        let field = CommandField::CMoveRsp;
        let mut counters = Counters {
            remaining: items.len(),
            ..Counters::default()
        };
        let mut rx = self.prefetch(items);
        let mut broken: Option<String> = None;
        while let Some((item, bytes, _held)) = rx.recv().await {
            if assoc.cancel_requested()? {
                let rsp = cancel_response(request, field, &counters);
                return assoc.send_command(context.id, &rsp).await;
            }
            if let Some(why) = &broken {
                record(&mut counters, &item, Err(why.clone()));
                continue;
            }
            let outcome = match bytes {
                Err(e) => Err(e),
                Ok(file) => {
                    let candidates: Vec<AcceptedContext> = sub
                        .contexts()
                        .iter()
                        .filter(|c| c.abstract_syntax == item.sop_class_uid)
                        .map(|c| AcceptedContext {
                            id: c.id,
                            abstract_syntax: c.abstract_syntax.clone(),
                            transfer_syntax: c.transfer_syntax.clone(),
                            service: crate::config::Service::Store,
                            extended: Vec::new(),
                            requestor_scp: false,
                            service_allowed: true,
                        })
                        .collect();
                    match pick_context(&candidates, &item, &file) {
                        None => Err(format!(
                            "destination accepted no context for {} in {}",
                            item.sop_class_uid, item.transfer_syntax_uid
                        )),
                        Some((_, Err(e))) => Err(e),
                        Some((ctx, Ok(payload))) => {
                            match sub
                                .store_from_move(
                                    ctx.id,
                                    &item.sop_class_uid,
                                    &item.sop_instance_uid,
                                    &payload,
                                    &originator.0,
                                    originator.1,
                                )
                                .await
                            {
                                Ok(st) => Ok(st),
                                Err(e) => {
                                    warn!(error = %e, "move destination went away");
                                    broken = Some(format!("destination association lost: {e}"));
                                    Err(broken.clone().unwrap_or_default())
                                }
                            }
                        }
                    }
                }
            };
            record(&mut counters, &item, outcome);
            send_pending(assoc, context.id, request, field, &counters).await?;
        }
        let comment = broken.map(|b| b.chars().take(64).collect());
        send_final(assoc, context.id, request, field, &counters, comment).await
    }

    /// Read objects ahead of the sender: at most `PREFETCH` objects and `PREFETCH_BYTES` bytes
    /// (an object larger than that is read alone); each object comes with its share of the
    /// byte budget, given back when the sender drops it.
    fn prefetch(&self, items: Vec<StoredInstance>) -> mpsc::Receiver<Prefetched> {
        let (tx, rx) = mpsc::channel(PREFETCH);
        let storage = self.storage.clone();
        let index = self.index.clone();
        let budget = Arc::new(tokio::sync::Semaphore::new(PREFETCH_BYTES as usize));
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            for item in items {
                let share = u32::try_from(item.size)
                    .unwrap_or(u32::MAX)
                    .clamp(1, PREFETCH_BYTES);
                let Ok(held) = budget.clone().acquire_many_owned(share).await else {
                    break;
                };
                let bytes = crate::archive::read_verified(&storage, &index, &item.expected())
                    .await
                    .map_err(|e| e.to_string());
                if let Ok(b) = &bytes {
                    crate::metrics::Metrics::add(&metrics.bytes_out, b.len() as u64);
                }
                if tx.send((item, bytes, held)).await.is_err() {
                    break;
                }
            }
        });
        rx
    }
}

/// One object read ahead: the instance, its bytes (or why they could not be read), and its
/// share of the read-ahead budget.
type Prefetched = (
    StoredInstance,
    Result<Bytes, String>,
    tokio::sync::OwnedSemaphorePermit,
);

fn record(c: &mut Counters, item: &StoredInstance, outcome: Result<Status, String>) {
    match outcome {
        Ok(st) if st.is_success() => {
            c.remaining = c.remaining.saturating_sub(1);
            c.completed += 1;
        }
        Ok(st) if st.is_warning() => {
            c.remaining = c.remaining.saturating_sub(1);
            c.warning += 1;
        }
        Ok(st) => {
            warn!(sop = %item.sop_instance_uid, status = format!("{:04X}", st.code), "sub-operation refused by the destination");
            c.fail(&item.sop_instance_uid);
        }
        Err(why) => {
            warn!(sop = %item.sop_instance_uid, reason = %why, "sub-operation failed");
            c.fail(&item.sop_instance_uid);
        }
    }
}

/// Choose the context for an item and produce the data set in that context's syntax: the
/// stored syntax if accepted (bytes as stored), else a native syntax the stored object can be
/// re-encoded into without decoding pixel data.
fn pick_context<'c>(
    candidates: &'c [AcceptedContext],
    item: &StoredInstance,
    file: &Bytes,
) -> Option<(&'c AcceptedContext, Result<Bytes, String>)> {
    if let Some(c) = candidates
        .iter()
        .find(|c| c.transfer_syntax == item.transfer_syntax_uid)
    {
        let payload = crate::part10::split(file)
            .map(|(_, off)| file.slice(off..))
            .map_err(|e| e.to_string());
        return Some((c, payload));
    }
    let c = candidates.first()?;
    Some((
        c,
        transcode(file, &item.transfer_syntax_uid, &c.transfer_syntax).map(Bytes::from),
    ))
}

/// The stored object's data set in syntax `to`. Native syntaxes (little/big endian,
/// implicit/explicit, deflated) are re-encoded element by element; encapsulated pixel data
/// (JPEG, JPEG-LS, JPEG 2000, RLE) is decoded with dicom-pixeldata into native pixel data.
/// Encoding *into* a compressed syntax is never needed: only the stored syntax and the two
/// native little-endian ones are proposed.
pub fn transcode(file: &[u8], from: &str, to: &str) -> Result<Vec<u8>, String> {
    use dicom_pixeldata::Transcode;
    let reg = TransferSyntaxRegistry;
    let (src, dst) = (
        reg.get(from).ok_or("unknown stored syntax")?,
        reg.get(to).ok_or("unknown target syntax")?,
    );
    if dst.is_encapsulated_pixel_data() {
        return Err(format!(
            "encoding into {to} is not done (only native targets are proposed)"
        ));
    }
    let mut out = Vec::with_capacity(file.len());
    if src.is_encapsulated_pixel_data() {
        let mut obj = crate::part10::open(file, crate::config::DEFAULT_MAX_OBJECT_SIZE)
            .map_err(|e| format!("reading the stored object: {e}"))?;
        // The pixel decoders run inside the panic boundary.
        crate::dataset::contain("decoding pixel data to transcode", || obj.transcode(dst))
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("decoding {from} pixel data: {e}"))?;
        obj.write_dataset_with_ts(&mut out, dst)
            .map_err(|e| e.to_string())?;
        return Ok(out);
    }
    let (_, offset) = crate::part10::split(file).map_err(|e| e.to_string())?;
    let obj = crate::dataset::parse(
        &file[offset..],
        from,
        crate::dataset::MAX_DEPTH,
        crate::config::DEFAULT_MAX_OBJECT_SIZE,
    )
    .map_err(|e| e.to_string())?;
    obj.write_dataset_with_ts(&mut out, dst)
        .map_err(|e| e.to_string())?;
    Ok(out)
}

fn progress(
    request: &Command,
    field: CommandField,
    code: u16,
    c: &Counters,
    with_remaining: bool,
) -> Command {
    let mut rsp = Command::response_to(
        request,
        field,
        Status {
            code,
            comment: None,
        },
    );
    rsp.remaining = with_remaining.then(|| clamp16(c.remaining));
    rsp.completed = Some(clamp16(c.completed));
    rsp.failed = Some(clamp16(c.failed));
    rsp.warning = Some(clamp16(c.warning));
    rsp
}

async fn send_pending(
    assoc: &mut Association,
    ctx: u8,
    request: &Command,
    field: CommandField,
    c: &Counters,
) -> Result<(), NetError> {
    if c.remaining == 0 {
        return Ok(()); // the final response carries the last counts
    }
    assoc
        .send_command(ctx, &progress(request, field, status::PENDING, c, true))
        .await
}

fn cancel_response(request: &Command, field: CommandField, c: &Counters) -> Command {
    info!(
        completed = c.completed,
        failed = c.failed,
        remaining = c.remaining,
        "retrieve cancelled"
    );
    progress(request, field, status::CANCELED, c, true)
}

/// PS3.4 C.4.2.1.5: Success when every sub-operation succeeded, B000 when some failed or
/// warned, A702 when none completed; failures listed in FailedSOPInstanceUIDList.
fn final_response(
    request: &Command,
    field: CommandField,
    c: &Counters,
    comment: Option<String>,
) -> Command {
    let code = if c.failed == 0 && c.warning == 0 {
        status::SUCCESS
    } else if c.completed == 0 && c.warning == 0 {
        status::UNABLE_TO_PERFORM_SUBOPERATIONS
    } else {
        status::SUBOPERATIONS_WITH_FAILURES
    };
    let mut rsp = progress(request, field, code, c, false);
    rsp.error_comment = comment;
    rsp
}

async fn send_final(
    assoc: &mut Association,
    ctx: u8,
    request: &Command,
    field: CommandField,
    c: &Counters,
    comment: Option<String>,
) -> Result<(), NetError> {
    let mut rsp = final_response(request, field, c, comment);
    info!(
        completed = c.completed,
        failed = c.failed,
        warning = c.warning,
        status = format!("{:04X}", rsp.status.unwrap_or(0)),
        "retrieve done"
    );
    if c.failed_uids.is_empty() {
        return assoc.send_command(ctx, &rsp).await;
    }
    let mut ident = InMemDicomObject::new_empty();
    ident.put(DataElement::new(
        tags::FAILED_SOP_INSTANCE_UID_LIST,
        VR::UI,
        PrimitiveValue::Strs(c.failed_uids.iter().cloned().collect()),
    ));
    let ts = assoc
        .context(ctx)
        .and_then(|c| TransferSyntaxRegistry.get(&c.transfer_syntax))
        .unwrap_or_else(|| {
            TransferSyntaxRegistry
                .get(uids::IMPLICIT_VR_LITTLE_ENDIAN)
                .expect("ILE registered")
        });
    let mut bytes = Vec::new();
    if ident.write_dataset_with_ts(&mut bytes, ts).is_ok() {
        rsp.data_set_type = DATA_SET_PRESENT;
        assoc.send_command(ctx, &rsp).await?;
        assoc.send_data(ctx, &bytes).await
    } else {
        assoc.send_command(ctx, &rsp).await
    }
}
