//! C-MOVE and C-GET SCPs (PS3.4 C.4.2, C.4.3; PS3.7 9.1.3, 9.1.4): the identifier selects
//! instances; each is sent with a C-STORE sub-operation (to the move destination on a
//! sub-association, or back on the requesting association for C-GET); a Pending response with
//! the counters follows each sub-operation; C-CANCEL stops between sub-operations.

use crate::audit::{EXPORT, Event as AuditEvent, Object, Outcome, Role as AuditRole, Subject};
use std::sync::Arc;

use bytes::Bytes;
use dicom_dictionary_std::uids;
use dicom_encoding::TransferSyntaxIndex;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::config::Config;
use crate::dimse::{Command, CommandField, Status};
use crate::index::{Index, IndexError, StoredInstance};
use crate::net::scu::{ProposedContext, ScuAssociation, ScuOptions, ScuTls};
use crate::net::{AcceptedContext, Association, Incoming, NetError};
use crate::service::Request;
use crate::service::query::{IdentifierError, MatchOptions, Model, read_identifier};
use crate::service::respond::{Responder, SubOperation, SubOperations};
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

/// Why one sub-operation failed: it is counted as Failed and its UID listed in the final
/// response.
#[derive(Debug, thiserror::Error)]
pub enum SubOperationError {
    #[error("reading the stored object: {0}")]
    Read(#[from] crate::storage::StorageError),
    #[error("no accepted context can carry {sop_class} in {transfer_syntax}")]
    NoContext {
        sop_class: String,
        transfer_syntax: String,
    },
    #[error("{0}")]
    Transcode(#[from] TranscodeError),
    /// The move destination could not be reached or went away; every sub-operation after
    /// fails with the same words.
    #[error("{0}")]
    Destination(String),
}

/// Why the sub-association to a move destination could not be opened.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error("{0}")]
    Tls(#[from] crate::net::tls::TlsError),
    #[error("the destination needs TLS and [tls] is not configured")]
    NoTls,
    #[error("{0}")]
    Net(#[from] NetError),
}

/// Why a stored object could not be re-encoded in another transfer syntax.
#[derive(Debug, thiserror::Error)]
pub enum TranscodeError {
    #[error("unknown transfer syntax {0}")]
    UnknownSyntax(String),
    #[error("encoding into {0} is not done (only native targets are proposed)")]
    CompressedTarget(String),
    #[error("{0}")]
    Part10(#[from] crate::part10::Part10Error),
    #[error("reading the stored object: {0}")]
    DataSet(#[from] crate::dataset::DataSetError),
    #[error("decoding {from} pixel data: {reason}")]
    Decode { from: String, reason: String },
    #[error("writing the data set: {0}")]
    Write(String),
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

    /// C-MOVE: send the selected instances to the destination AE named in the request, on a
    /// sub-association; `respond` sends the responses.
    pub async fn move_(&self, assoc: &mut Association, req: Request<'_>) -> Result<(), NetError> {
        let (context, request, data) = (req.context, req.command, req.data);
        let responder = Responder::new(context.id, request, CommandField::CMoveRsp)
            .pending_every(self.config.retrieve.pending_interval());
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
            Err(e) => {
                return responder
                    .refuse(assoc, super::failure::of_retrieve(&e))
                    .await;
            }
        };
        if items.is_empty() {
            return responder.sub_operations(assoc, &mut MoveOps::none()).await;
        }
        info!(destination = %peer.ae_title, addr = %format!("{}:{}", peer.host, peer.port),
              tls = peer.needs_tls(), instances = items.len(), "C-MOVE starting");
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
        let originator = (
            assoc.calling_ae().to_string(),
            request.message_id.unwrap_or(0),
        );
        let uids: Vec<String> = items.iter().map(|i| i.sop_instance_uid.clone()).collect();
        let (sub, broken) = match self.connect(&peer, &items).await {
            Ok(sub) => (Some(sub), None),
            Err(why) => {
                warn!(destination = %peer.ae_title, error = %why, "move destination refused or unreachable");
                (None, Some(format!("destination {}: {why}", peer.ae_title)))
            }
        };
        let mut ops = MoveOps {
            uids: uids.into_iter(),
            // Nothing is read for a destination that cannot be reached.
            objects: sub.is_some().then(|| self.prefetch(items)),
            sub,
            originator,
            broken,
        };
        let result = responder.sub_operations(assoc, &mut ops).await;
        if let Some(sub) = ops.sub.take()
            && let Err(e) = sub.release().await
        {
            info!(error = %e, "releasing the move sub-association failed");
        }
        result
    }

    /// The sub-association to a move destination, proposing exactly the SOP classes to send,
    /// each in its stored syntax and the two native ones; over TLS when the destination needs
    /// it (never in clear then).
    async fn connect(
        &self,
        peer: &crate::config::Peer,
        items: &[StoredInstance],
    ) -> Result<ScuAssociation, ConnectError> {
        let mut proposed: Vec<ProposedContext> = Vec::new();
        for it in items {
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
            (false, _) => None,
            (true, Some(connector)) => {
                let name = peer.tls_server_name.as_deref().unwrap_or(&peer.host);
                let server_name = crate::net::tls::server_name(name)?;
                Some(ScuTls {
                    connector: connector.clone(),
                    server_name,
                })
            }
            (true, None) => return Err(ConnectError::NoTls),
        };
        let opts = ScuOptions {
            addr: format!("{}:{}", peer.host, peer.port),
            calling_ae: self.config.node.ae_title.clone(),
            called_ae: peer.ae_title.clone(),
            timeout: self.config.timeouts.write(),
            tls,
        };
        Ok(ScuAssociation::connect(&opts, &proposed).await?)
    }

    /// C-GET: send the selected instances back on this association; `respond` sends the
    /// responses between the sub-operations.
    pub async fn get(&self, assoc: &mut Association, req: Request<'_>) -> Result<(), NetError> {
        let (context, request, data) = (req.context, req.command, req.data);
        let responder = Responder::new(context.id, request, CommandField::CGetRsp)
            .pending_every(self.config.retrieve.pending_interval());
        let items = match self.items(context, data).await {
            Ok(i) => i,
            Err(e) => {
                return responder
                    .refuse(assoc, super::failure::of_retrieve(&e))
                    .await;
            }
        };
        let event = self.export_event(&items, "C-GET").await;
        assoc.audit(event, AuditRole::Destination);
        let mut ops = GetOps {
            total: items.len(),
            objects: self.prefetch(items),
        };
        responder.sub_operations(assoc, &mut ops).await
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
                let bytes = crate::archive::read_verified(&storage, &index, &item.expected()).await;
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
    Result<Bytes, crate::storage::StorageError>,
    tokio::sync::OwnedSemaphorePermit,
);

/// C-MOVE's sub-operations: a C-STORE each on the sub-association to the destination. Once
/// the destination is unreachable or gone, the rest fail with its reason, unread.
struct MoveOps {
    /// The instances still to send, in order (the read-ahead delivers them in this order).
    uids: std::vec::IntoIter<String>,
    objects: Option<mpsc::Receiver<Prefetched>>,
    sub: Option<ScuAssociation>,
    /// The requestor's AE title and message ID (Move Originator, PS3.7 9.3.1.1).
    originator: (String, u16),
    broken: Option<String>,
}

impl MoveOps {
    /// Nothing to move.
    fn none() -> MoveOps {
        MoveOps {
            uids: Vec::new().into_iter(),
            objects: None,
            sub: None,
            originator: (String::new(), 0),
            broken: None,
        }
    }

    async fn send(
        &mut self,
        item: &StoredInstance,
        file: Bytes,
    ) -> Result<Status, SubOperationError> {
        let sub = self
            .sub
            .as_mut()
            .ok_or_else(|| SubOperationError::Destination("no destination association".into()))?;
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
        let (ctx, payload) = pick_context(&candidates, item, &file)?;
        let (ctx, payload) = (ctx.id, payload?);
        sub.store_from_move(
            ctx,
            &item.sop_class_uid,
            &item.sop_instance_uid,
            &payload,
            &self.originator.0,
            self.originator.1,
        )
        .await
        .map_err(|e| {
            warn!(error = %e, "move destination went away");
            let why = format!("destination association lost: {e}");
            self.broken = Some(why.clone());
            SubOperationError::Destination(why)
        })
    }
}

impl SubOperations for MoveOps {
    type Error = SubOperationError;

    fn total(&self) -> usize {
        self.uids.len()
    }

    async fn next(
        &mut self,
        _requestor: &mut Association,
    ) -> Result<Option<SubOperation<SubOperationError>>, NetError> {
        let Some(uid) = self.uids.next() else {
            return Ok(None);
        };
        if let Some(why) = &self.broken {
            self.objects = None; // stop reading ahead
            return Ok(Some(SubOperation {
                sop_instance_uid: uid,
                outcome: Err(SubOperationError::Destination(why.clone())),
            }));
        }
        let read = match self.objects.as_mut() {
            Some(rx) => rx.recv().await,
            None => None,
        };
        let outcome = match read {
            None => Err(SubOperationError::Destination(
                "read-ahead ended early".into(),
            )),
            Some((_, Err(e), _)) => Err(e.into()),
            Some((item, Ok(file), _held)) => self.send(&item, file).await,
        };
        Ok(Some(SubOperation {
            sop_instance_uid: uid,
            outcome,
        }))
    }

    fn comment(&self) -> Option<String> {
        self.broken.clone()
    }
}

/// C-GET's sub-operations: a C-STORE each on the requesting association, strictly in turn
/// with the responses.
struct GetOps {
    total: usize,
    objects: mpsc::Receiver<Prefetched>,
}

impl SubOperations for GetOps {
    type Error = SubOperationError;

    fn total(&self) -> usize {
        self.total
    }

    async fn next(
        &mut self,
        assoc: &mut Association,
    ) -> Result<Option<SubOperation<SubOperationError>>, NetError> {
        let Some((item, read, _held)) = self.objects.recv().await else {
            return Ok(None);
        };
        let outcome = match read {
            Ok(file) => get_suboperation(assoc, &item, file).await?,
            Err(e) => Err(e.into()),
        };
        Ok(Some(SubOperation {
            sop_instance_uid: item.sop_instance_uid,
            outcome,
        }))
    }

    fn comment(&self) -> Option<String> {
        None
    }
}

/// One C-GET sub-operation: C-STORE on an accepted storage context where the requestor is
/// SCP, in a syntax it accepted. A C-CANCEL arriving meanwhile is kept by the association.
async fn get_suboperation(
    assoc: &mut Association,
    item: &StoredInstance,
    file: Bytes,
) -> Result<Result<Status, SubOperationError>, NetError> {
    let candidates: Vec<AcceptedContext> = assoc
        .contexts()
        .iter()
        .filter(|c| c.requestor_scp && c.abstract_syntax == item.sop_class_uid)
        .cloned()
        .collect();
    let (ctx, payload) = match pick_context(&candidates, item, &file) {
        Ok((ctx, Ok(payload))) => (ctx.id, payload),
        Ok((_, Err(e))) => return Ok(Err(e.into())),
        Err(e) => return Ok(Err(e)),
    };
    let id = assoc.next_message_id();
    assoc
        .send_message(
            ctx,
            &Command::store_rq(id, &item.sop_class_uid, &item.sop_instance_uid),
            &payload,
        )
        .await?;
    loop {
        match assoc.next().await? {
            Incoming::Message(msg) if msg.command.field() == Some(CommandField::CCancelRq) => {
                assoc.note_cancel()
            }
            Incoming::Message(msg) if msg.command.field() == Some(CommandField::CStoreRsp) => {
                return Ok(Ok(Status {
                    code: msg.command.status.unwrap_or(0xFFFF),
                    comment: msg.command.error_comment,
                }));
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

/// Choose the context for an item and produce the data set in that context's syntax: the
/// stored syntax if accepted (bytes as stored), else a native syntax the stored object can be
/// re-encoded into without decoding pixel data.
fn pick_context<'c>(
    candidates: &'c [AcceptedContext],
    item: &StoredInstance,
    file: &Bytes,
) -> Result<(&'c AcceptedContext, Result<Bytes, TranscodeError>), SubOperationError> {
    if let Some(c) = candidates
        .iter()
        .find(|c| c.transfer_syntax == item.transfer_syntax_uid)
    {
        let payload = crate::part10::split(file)
            .map(|(_, off)| file.slice(off..))
            .map_err(TranscodeError::from);
        return Ok((c, payload));
    }
    let c = candidates
        .first()
        .ok_or_else(|| SubOperationError::NoContext {
            sop_class: item.sop_class_uid.clone(),
            transfer_syntax: item.transfer_syntax_uid.clone(),
        })?;
    Ok((
        c,
        transcode(file, &item.transfer_syntax_uid, &c.transfer_syntax).map(Bytes::from),
    ))
}

/// The stored object's data set in syntax `to`. Native syntaxes (little/big endian,
/// implicit/explicit, deflated) are re-encoded element by element; encapsulated pixel data
/// (JPEG, JPEG-LS, JPEG 2000, RLE) is decoded with dicom-pixeldata into native pixel data.
/// Encoding *into* a compressed syntax is never needed: only the stored syntax and the two
/// native little-endian ones are proposed.
pub fn transcode(file: &[u8], from: &str, to: &str) -> Result<Vec<u8>, TranscodeError> {
    use dicom_pixeldata::Transcode;
    let reg = TransferSyntaxRegistry;
    let known = |uid: &str| {
        reg.get(uid)
            .ok_or_else(|| TranscodeError::UnknownSyntax(uid.to_string()))
    };
    let (src, dst) = (known(from)?, known(to)?);
    if dst.is_encapsulated_pixel_data() {
        return Err(TranscodeError::CompressedTarget(to.to_string()));
    }
    let write = |e: dicom_object::WriteError| TranscodeError::Write(e.to_string());
    let mut out = Vec::with_capacity(file.len());
    if src.is_encapsulated_pixel_data() {
        let mut obj = crate::part10::open(file, crate::config::DEFAULT_MAX_OBJECT_SIZE)?;
        // The pixel decoders run inside the panic boundary.
        crate::dataset::contain("decoding pixel data to transcode", || obj.transcode(dst))?
            .map_err(|e| TranscodeError::Decode {
                from: from.to_string(),
                reason: e.to_string(),
            })?;
        obj.write_dataset_with_ts(&mut out, dst).map_err(write)?;
        return Ok(out);
    }
    let (_, offset) = crate::part10::split(file)?;
    let obj = crate::dataset::parse(
        &file[offset..],
        from,
        crate::dataset::MAX_DEPTH,
        crate::config::DEFAULT_MAX_OBJECT_SIZE,
    )?;
    obj.write_dataset_with_ts(&mut out, dst).map_err(write)?;
    Ok(out)
}
