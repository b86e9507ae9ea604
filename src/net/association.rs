//! The acceptor side of an association: A-ASSOCIATE negotiation (PS3.8 7.1, 9.3.2-9.3.3),
//! P-DATA reassembly into DIMSE messages (PS3.8 9.3.5, Annex E), release and abort.
//! This file and `scu.rs` are the only users of dicom-ul.

use std::collections::{BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::link::Link;
use super::transport::{CertIdentity, Transport};
use dicom_ul::Pdu;
use dicom_ul::pdu::{
    AbortRQServiceProviderReason, AbortRQSource, AssociationAC, AssociationRJ, AssociationRJResult,
    AssociationRJServiceProviderASCEReason, AssociationRJServiceUserReason, AssociationRJSource,
    PDataValue, PDataValueType, PresentationContextResult, PresentationContextResultReason,
    UserVariableItem,
};
use tracing::{debug, info, warn};

use crate::audit::{Audit, Event, LOGIN, Outcome, Role, USER_AUTHENTICATION};
use crate::config::{Config, Service};
use crate::dimse::{Command, CommandError};
pub use crate::net::reassembly::{DimseMessage, Dropped};
use crate::net::reassembly::{Reassembler, ReassemblyError};
use crate::net::syntax::{choose_transfer_syntax, service_of};
use crate::part10::{IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME};

/// PS3.7 A.2.1: the DICOM Application Context Name.
pub const APPLICATION_CONTEXT: &str = "1.2.840.10008.3.1.1.1";
/// Largest A-ASSOCIATE-RQ we read: 128 contexts with many transfer syntaxes fit in 1 MiB.
const MAX_ASSOCIATE_RQ: u32 = 1024 * 1024;
/// Our sending PDU size when the peer announces 0 ("no limit", PS3.8 D.1.1).
const UNLIMITED_PEER_PDU: u32 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("reading from {peer}: {source}")]
    Read {
        peer: SocketAddr,
        source: std::io::Error,
    },
    #[error("writing to {peer}: {source}")]
    Write {
        peer: SocketAddr,
        source: std::io::Error,
    },
    #[error("peer {peer} closed the connection")]
    Closed { peer: SocketAddr },
    #[error("timed out waiting for {what} from {peer} after {after:?}")]
    Timeout {
        peer: SocketAddr,
        what: &'static str,
        after: Duration,
    },
    #[error("decoding a PDU from {peer}: {reason}")]
    BadPdu { peer: SocketAddr, reason: String },
    #[error("encoding a PDU: {0}")]
    Encode(String),
    #[error("association rejected: {0}")]
    Rejected(String),
    #[error("protocol error from {peer}: {reason}")]
    Protocol { peer: SocketAddr, reason: String },
    #[error("bad command set: {0}")]
    Command(#[from] CommandError),
}

/// A presentation context accepted for this association.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedContext {
    pub id: u8,
    pub abstract_syntax: String,
    pub transfer_syntax: String,
    pub service: Service,
    /// Agreed SOP class extended negotiation bytes (PS3.7 D.3.3.5), empty if none.
    pub extended: Vec<u8>,
    /// The requestor takes the SCP role on this (storage) context: C-GET sends C-STOREs here.
    pub requestor_scp: bool,
    /// The calling AE may use this context's own service. False for a storage context that
    /// was accepted only to carry C-GET sub-operations back to a requestor without `store`.
    pub service_allowed: bool,
}

impl AcceptedContext {
    /// C-FIND extended negotiation byte 1: relational queries (PS3.4 C.5.1.1.1).
    pub fn relational(&self) -> bool {
        self.extended.first().copied().unwrap_or(0) == 1
    }

    /// C-FIND extended negotiation byte 2: combined date-time matching.
    pub fn combined_datetime(&self) -> bool {
        self.extended.get(1).copied().unwrap_or(0) == 1
    }
}

/// Our answer to a C-FIND SOP class extended negotiation request (PS3.4 C.5.1.1): relational
/// queries and combined date-time matching are supported, fuzzy semantic PN matching,
/// timezone adjustment, empty value and multiple value matching are not.
fn negotiate_find(requested: &[u8]) -> Vec<u8> {
    requested
        .iter()
        .take(7)
        .enumerate()
        .map(|(i, &b)| u8::from(i < 2 && b == 1))
        .collect()
}

/// Why the presentation context IDs of an A-ASSOCIATE-RQ break PS3.8 9.3.2.2 (odd, 1-255,
/// each once), or None when they do not.
fn bad_context_ids(ids: impl Iterator<Item = u8>) -> Option<String> {
    let mut seen = [false; 256];
    for id in ids {
        if id % 2 == 0 {
            return Some(format!("presentation context ID {id} is not odd"));
        }
        if std::mem::replace(&mut seen[id as usize], true) {
            return Some(format!("presentation context ID {id} is proposed twice"));
        }
    }
    None
}

/// What the acceptor answers to an A-ASSOCIATE-RQ it admits (PS3.8 9.3.3): each proposed
/// presentation context accepted or refused with its reason, the replies to role selection
/// and extended negotiation, and the PDU size the peer can receive.
#[derive(Debug)]
struct Negotiated {
    contexts: Vec<AcceptedContext>,
    results: Vec<PresentationContextResult>,
    replies: Vec<UserVariableItem>,
    peer_max_pdu: u32,
}

/// Negotiate the presentation contexts of `rq` for a calling AE allowed `allowed` (pure: no
/// I/O). A context is accepted when its abstract syntax is a service this node provides, the
/// caller may use it, and one of its transfer syntaxes is supported; a storage context also
/// serves C-STOREs back to a requestor that asked for the SCP role and may C-GET (PS3.7
/// D.3.3.4); a C-FIND context answers extended negotiation (`negotiate_find`).
fn negotiate(rq: &dicom_ul::pdu::AssociationRQ, allowed: &BTreeSet<Service>) -> Negotiated {
    let mut peer_max_pdu = dicom_ul::pdu::DEFAULT_MAX_PDU;
    for uv in &rq.user_variables {
        if let UserVariableItem::MaxLength(len) = uv {
            peer_max_pdu = if *len == 0 {
                UNLIMITED_PEER_PDU
            } else {
                (*len).min(UNLIMITED_PEER_PDU)
            };
        }
    }

    let requested_ext: Vec<(String, Vec<u8>)> = rq
        .user_variables
        .iter()
        .filter_map(|uv| match uv {
            UserVariableItem::SopClassExtendedNegotiationSubItem(sop, bytes) => {
                Some((sop.trim_end_matches(['\0', ' ']).to_string(), bytes.clone()))
            }
            _ => None,
        })
        .collect();
    let requested_roles: Vec<(String, dicom_ul::pdu::RequestorRoles)> = rq
        .user_variables
        .iter()
        .filter_map(|uv| match uv {
            UserVariableItem::ScuScpRoleSelectionSubItem(sop, roles) => {
                Some((sop.trim_end_matches(['\0', ' ']).to_string(), *roles))
            }
            _ => None,
        })
        .collect();
    let mut ext_replies: Vec<UserVariableItem> = Vec::new();
    let mut results = Vec::with_capacity(rq.presentation_contexts.len());
    let mut contexts = Vec::new();
    for pc in &rq.presentation_contexts {
        let abstract_syntax = pc.abstract_syntax.trim_end_matches(['\0', ' ']).to_string();
        // A storage context serves C-STORE from the requestor, and (with SCP/SCU role
        // selection, PS3.7 D.3.3.4) C-STOREs back to it for C-GET.
        let requestor_scp = requested_roles
            .iter()
            .any(|(sop, r)| *sop == abstract_syntax && r.scp);
        let permitted = |service: Service| {
            allowed.contains(&service)
                || (service == Service::Store && requestor_scp && allowed.contains(&Service::Get))
        };
        let (reason, ts) = match service_of(&abstract_syntax) {
            None => (
                PresentationContextResultReason::AbstractSyntaxNotSupported,
                None,
            ),
            Some(service) if !permitted(service) => {
                (PresentationContextResultReason::UserRejection, None)
            }
            Some(service) => match choose_transfer_syntax(service, &pc.transfer_syntaxes) {
                Some(ts) => {
                    let extended = match requested_ext
                        .iter()
                        .find(|(sop, _)| *sop == abstract_syntax)
                    {
                        Some((sop, bytes)) if service == Service::Find => {
                            let agreed = negotiate_find(bytes);
                            let reply = UserVariableItem::SopClassExtendedNegotiationSubItem(
                                sop.clone(),
                                agreed.clone(),
                            );
                            if !ext_replies.contains(&reply) {
                                ext_replies.push(reply);
                            }
                            agreed
                        }
                        _ => Vec::new(),
                    };
                    let get_role = service == Service::Store
                        && requestor_scp
                        && allowed.contains(&Service::Get);
                    if get_role {
                        let requested_scu = requested_roles
                            .iter()
                            .find(|(sop, _)| *sop == abstract_syntax)
                            .is_some_and(|(_, r)| r.scu);
                        let reply = UserVariableItem::ScuScpRoleSelectionSubItem(
                            abstract_syntax.clone(),
                            dicom_ul::pdu::RequestorRoles {
                                scu: requested_scu,
                                scp: true,
                            },
                        );
                        if !ext_replies.contains(&reply) {
                            ext_replies.push(reply);
                        }
                    }
                    contexts.push(AcceptedContext {
                        id: pc.id,
                        abstract_syntax: abstract_syntax.clone(),
                        transfer_syntax: ts.to_string(),
                        service,
                        extended,
                        requestor_scp: get_role,
                        service_allowed: allowed.contains(&service),
                    });
                    (
                        PresentationContextResultReason::Acceptance,
                        Some(ts.to_string()),
                    )
                }
                None => (
                    PresentationContextResultReason::TransferSyntaxesNotSupported,
                    None,
                ),
            },
        };
        debug!(id = pc.id, %abstract_syntax, ?reason, ts = ts.as_deref().unwrap_or("-"), "presentation context");
        results.push(PresentationContextResult {
            id: pc.id,
            reason,
            // PS3.8 9.3.3.2: the field is not significant unless accepted; send ILE.
            transfer_syntax: ts.unwrap_or_else(|| "1.2.840.10008.1.2".to_string()),
        });
    }
    Negotiated {
        contexts,
        results,
        replies: ext_replies,
        peer_max_pdu,
    }
}

/// What the next read produced.
#[derive(Debug)]
pub enum Incoming {
    Message(Box<DimseMessage>),
    /// The requestor released the association (A-RELEASE-RP already sent).
    Released,
    /// The requestor aborted the association.
    Aborted,
}

/// Limits and identity the acceptor applies, and the node-wide budgets it shares between
/// associations.
#[derive(Debug, Clone)]
pub struct AcceptorPolicy {
    pub config: Arc<Config>,
    /// One permit per established association (`node.max_associations`), taken only once a
    /// valid A-ASSOCIATE-RQ has arrived, so idle or dripping sockets cannot hold them.
    pub associations: Arc<Semaphore>,
    /// One permit per byte of data set being received (`node.receive_budget`).
    pub receive_budget: Arc<Semaphore>,
    /// Where associations accepted and refused are recorded.
    pub audit: Audit,
    /// Associations accepted, refused and open (`/metrics`).
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl AcceptorPolicy {
    pub fn new(
        config: Arc<Config>,
        audit: Audit,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> AcceptorPolicy {
        let budget = usize::try_from(config.node.receive_budget)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        let receive_budget = Arc::new(Semaphore::new(budget));
        metrics.watch_receive_budget(receive_budget.clone(), budget);
        AcceptorPolicy {
            associations: Arc::new(Semaphore::new(config.node.max_associations)),
            receive_budget,
            config,
            audit,
            metrics,
        }
    }

    /// Record an association (or a TLS handshake) refused, with who asked and why.
    pub fn refused(&self, calling_ae: &str, peer: SocketAddr, why: &str) {
        self.audit.record(
            Event::new(USER_AUTHENTICATION, Some(LOGIN), 'E', Outcome::MinorFailure)
                .describe(why)
                .by(calling_ae, Some(peer.ip().to_string()), Role::Source)
                .to(&self.config.node.ae_title, None, Role::Destination),
        );
    }
}

/// An established association, acceptor side.
pub struct Association {
    /// The connection: transport, buffers, the peer's PDU size, the write timeout.
    link: Link,
    /// The requestor's verified certificate, on the TLS listener.
    identity: Option<CertIdentity>,
    /// Where this association's operations are recorded (services record through it).
    audit: Audit,
    our_ae: String,
    /// What we announced as our receive limit.
    our_max_pdu: u32,
    contexts: Vec<AcceptedContext>,
    calling_ae: String,
    called_ae: String,
    idle_timeout: Duration,
    /// P-DATA reassembly; its partial message survives a cancelled `next()`.
    reassembly: Reassembler,
    /// PDVs received after a complete message in the same P-DATA-TF PDU (PS3.8 9.3.5 allows
    /// PDVs of several messages in one PDU); `next()` takes them before reading more.
    unread: VecDeque<PDataValue>,
    /// Message ID for requests this node sends on the association (C-GET sub-operations).
    next_message_id: u16,
    /// A C-CANCEL-RQ read while this node waited for something else (a C-GET sub-operation's
    /// C-STORE-RSP); `cancel_requested` reports it once.
    cancel_seen: bool,
    /// When the peer last made progress: a PDV with bytes in it, or the start of a read for
    /// the next message. Empty P-DATA does not count, so it cannot keep an association open.
    last_progress: Instant,
    /// This association's share of `node.max_associations`, held until it ends.
    _permit: Option<OwnedSemaphorePermit>,
}

fn reject(result: AssociationRJResult, source: AssociationRJSource) -> Pdu {
    Pdu::AssociationRJ(AssociationRJ { result, source })
}

impl Association {
    /// Run the acceptor side of association establishment on a fresh connection: read the
    /// A-ASSOCIATE-RQ within the ARTIM time, check called and calling AE titles, negotiate
    /// presentation contexts and PDU size, and answer AC or RJ.
    pub async fn accept(
        socket: Transport,
        policy: &AcceptorPolicy,
    ) -> Result<Association, NetError> {
        let config = &policy.config;
        let peer = socket.tcp().peer_addr().map_err(|source| NetError::Read {
            peer: ([0, 0, 0, 0], 0).into(),
            source,
        })?;
        socket
            .tcp()
            .set_nodelay(true)
            .map_err(|source| NetError::Write { peer, source })?;
        let mut assoc = Association {
            identity: socket.peer_identity(),
            audit: policy.audit.clone(),
            our_ae: config.node.ae_title.clone(),
            link: Link::new(socket, peer, config.timeouts.write()),
            our_max_pdu: config.node.max_pdu,
            contexts: Vec::new(),
            calling_ae: String::new(),
            called_ae: String::new(),
            idle_timeout: config.timeouts.idle(),
            reassembly: Reassembler::new(
                config.node.max_object_size,
                policy.receive_budget.clone(),
                config.node.receive_budget,
            ),
            unread: VecDeque::new(),
            next_message_id: 1,
            cancel_seen: false,
            last_progress: Instant::now(),
            _permit: None,
        };
        let artim = config.timeouts.artim();
        let artim_deadline = Instant::now() + artim;
        let pdu = match tokio::time::timeout(artim, assoc.read_pdu(MAX_ASSOCIATE_RQ)).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(NetError::Timeout {
                    peer,
                    what: "A-ASSOCIATE-RQ",
                    after: artim,
                });
            }
        };
        let rq = match pdu {
            Pdu::AssociationRQ(rq) => rq,
            other => {
                let reason = format!("expected A-ASSOCIATE-RQ, got {}", other.short_description());
                assoc
                    .send_abort(AbortRQServiceProviderReason::UnexpectedPdu)
                    .await;
                return Err(NetError::Protocol { peer, reason });
            }
        };
        assoc.calling_ae = rq.calling_ae_title.trim().to_string();
        assoc.called_ae = rq.called_ae_title.trim().to_string();
        // AE titles go into logs and the audit trail: one with control bytes is escaped
        // before it is shown, and refused below.
        let calling_ok = crate::config::validate_ae_title("calling AE", &assoc.calling_ae).is_ok();
        if !calling_ok {
            assoc.calling_ae = format!("{:?}", assoc.calling_ae);
        }
        if crate::config::validate_ae_title("called AE", &assoc.called_ae).is_err() {
            assoc.called_ae = format!("{:?}", assoc.called_ae);
        }
        // PS3.8 9.3.2.2: presentation context IDs are odd integers 1-255, each used once (so
        // there are at most 128). A request that breaks this is a malformed PDU.
        if let Some(why) = bad_context_ids(rq.presentation_contexts.iter().map(|pc| pc.id)) {
            assoc
                .send_abort(AbortRQServiceProviderReason::InvalidPduParameter)
                .await;
            return Err(NetError::Protocol { peer, reason: why });
        }

        // PS3.8 9.3.2: only bit 0 of the protocol version is tested.
        if rq.protocol_version & 1 == 0 {
            return assoc
                .reject_with(
                    reject(
                        AssociationRJResult::Permanent,
                        AssociationRJSource::ServiceProviderASCE(
                            AssociationRJServiceProviderASCEReason::ProtocolVersionNotSupported,
                        ),
                    ),
                    "protocol version not supported",
                )
                .await;
        }
        if rq.application_context_name.trim_end_matches(['\0', ' ']) != APPLICATION_CONTEXT {
            return assoc
                .reject_with(
                    reject(
                        AssociationRJResult::Permanent,
                        AssociationRJSource::ServiceUser(
                            AssociationRJServiceUserReason::ApplicationContextNameNotSupported,
                        ),
                    ),
                    "application context name not supported",
                )
                .await;
        }
        if assoc.called_ae != config.node.ae_title.trim() {
            let why = format!(
                "called AE title `{}` is not `{}`",
                assoc.called_ae, config.node.ae_title
            );
            return assoc
                .reject_with(
                    reject(
                        AssociationRJResult::Permanent,
                        AssociationRJSource::ServiceUser(
                            AssociationRJServiceUserReason::CalledAETitleNotRecognized,
                        ),
                    ),
                    &why,
                )
                .await;
        }
        let allowed: BTreeSet<Service> = if calling_ok {
            config.services_for(&assoc.calling_ae)
        } else {
            BTreeSet::new()
        };
        // An AE title is a name, not a credential: it is accepted only from its hosts, or
        // over TLS from a certificate that names it (see `access::credential`).
        let refusal = if allowed.is_empty() {
            Some(format!(
                "calling AE title `{}` is not a known peer",
                assoc.calling_ae
            ))
        } else {
            crate::net::access::credential(
                config,
                &assoc.calling_ae,
                peer.ip(),
                assoc.link.is_tls(),
                assoc.identity.as_ref(),
            )
            .await
            .err()
            .map(|e| e.to_string())
        };
        if let Some(why) = refusal {
            return assoc
                .reject_with(
                    reject(
                        AssociationRJResult::Permanent,
                        AssociationRJSource::ServiceUser(
                            AssociationRJServiceUserReason::CallingAETitleNotRecognized,
                        ),
                    ),
                    &why,
                )
                .await;
        }

        // The association's permit, taken only now that a valid request has arrived. A peer
        // that finds every association busy waits until its ARTIM time runs out, then gets
        // A-ASSOCIATE-RJ transient, local limit exceeded (PS3.8 9.3.4).
        match tokio::time::timeout_at(artim_deadline, policy.associations.clone().acquire_owned())
            .await
        {
            Ok(permit) => assoc._permit = Some(permit.expect("semaphore never closed")),
            Err(_) => {
                return assoc
                    .reject_with(
                        reject(
                            AssociationRJResult::Transient,
                            AssociationRJSource::ServiceProviderPresentation(
                                dicom_ul::pdu::AssociationRJServiceProviderPresentationReason::LocalLimitExceeded,
                            ),
                        ),
                        "every association is in use (node.max_associations)",
                    )
                    .await;
            }
        }

        let negotiated = negotiate(&rq, &allowed);
        assoc.link.peer_max_pdu = negotiated.peer_max_pdu;
        assoc.contexts = negotiated.contexts;
        let (results, ext_replies) = (negotiated.results, negotiated.replies);

        let ac = Pdu::AssociationAC(AssociationAC {
            protocol_version: 1,
            calling_ae_title: rq.calling_ae_title.clone(),
            called_ae_title: rq.called_ae_title.clone(),
            application_context_name: APPLICATION_CONTEXT.to_string(),
            presentation_contexts: results,
            // PS3.7 D.3.3.4 and D.3.3.5: the SCP/SCU role selection and SOP class extended
            // negotiation replies go back in the AC (pynetdicom refuses C-GET sub-operations
            // and relational queries without them).
            user_variables: [
                UserVariableItem::MaxLength(assoc.our_max_pdu),
                UserVariableItem::ImplementationClassUID(IMPLEMENTATION_CLASS_UID.to_string()),
                UserVariableItem::ImplementationVersionName(
                    IMPLEMENTATION_VERSION_NAME.to_string(),
                ),
            ]
            .into_iter()
            .chain(ext_replies)
            .collect(),
        });
        assoc.send_pdu(&ac).await?;
        info!(
            calling_ae = %assoc.calling_ae,
            peer = %peer,
            accepted = assoc.contexts.len(),
            proposed = rq.presentation_contexts.len(),
            peer_max_pdu = assoc.link.peer_max_pdu,
            "association accepted"
        );
        let how = match (&assoc.identity, assoc.link.is_tls()) {
            (Some(id), _) => format!("over TLS, certificate `{}`", id.subject),
            (None, true) => "over TLS, no client certificate".to_string(),
            (None, false) => "over plain TCP".to_string(),
        };
        assoc.audit.record(
            Event::new(USER_AUTHENTICATION, Some(LOGIN), 'E', Outcome::Success)
                .describe(format!("association accepted {how}"))
                .by(&assoc.calling_ae, Some(peer.ip().to_string()), Role::Source)
                .to(&assoc.our_ae, None, Role::Destination),
        );
        Ok(assoc)
    }

    /// Record an event of this association: the calling AE (at its address) as requestor,
    /// this node as the other party.
    pub fn audit(&self, event: Event, calling_role: Role) {
        let ours = match calling_role {
            Role::Source => Role::Destination,
            _ => Role::Source,
        };
        self.audit.record(
            event
                .by(
                    &self.calling_ae,
                    Some(self.peer().ip().to_string()),
                    calling_role,
                )
                .to(&self.our_ae, None, ours),
        );
    }

    async fn reject_with<T>(&mut self, pdu: Pdu, why: &str) -> Result<T, NetError> {
        info!(calling_ae = %self.calling_ae, peer = %self.peer(), reason = why, "association rejected");
        self.audit.record(
            Event::new(USER_AUTHENTICATION, Some(LOGIN), 'E', Outcome::MinorFailure)
                .describe(format!("association rejected: {why}"))
                .by(
                    &self.calling_ae,
                    Some(self.peer().ip().to_string()),
                    Role::Source,
                )
                .to(&self.our_ae, None, Role::Destination),
        );
        self.send_pdu(&pdu).await?;
        self.link.shutdown().await;
        Err(NetError::Rejected(why.to_string()))
    }

    pub fn peer(&self) -> SocketAddr {
        self.link.peer()
    }

    /// The requestor's verified TLS certificate (None on the plain listener).
    pub fn identity(&self) -> Option<&CertIdentity> {
        self.identity.as_ref()
    }

    pub fn calling_ae(&self) -> &str {
        &self.calling_ae
    }

    pub fn called_ae(&self) -> &str {
        &self.called_ae
    }

    pub fn contexts(&self) -> &[AcceptedContext] {
        &self.contexts
    }

    pub fn context(&self, id: u8) -> Option<&AcceptedContext> {
        self.contexts.iter().find(|c| c.id == id)
    }

    /// A fresh Message ID for a request this node sends (PS3.7 9.1.1.1.1).
    pub fn next_message_id(&mut self) -> u16 {
        let id = self.next_message_id;
        self.next_message_id = self.next_message_id.wrapping_add(1).max(1);
        id
    }

    /// Whether part of a DIMSE message has been received but not all of it.
    pub fn mid_message(&self) -> bool {
        self.reassembly.mid_message() || !self.unread.is_empty()
    }

    /// Read the next DIMSE message; the association is aborted when the peer makes no progress
    /// (no PDV with bytes in it) for the idle timeout. Cancel-safe: partial messages are kept
    /// in `self` and resumed by the next call.
    pub async fn next(&mut self) -> Result<Incoming, NetError> {
        if !self.mid_message() {
            self.last_progress = Instant::now();
        }
        while let Some(pdv) = self.unread.pop_front() {
            if let Some(msg) = self.absorb(pdv).await? {
                return Ok(Incoming::Message(Box::new(msg)));
            }
        }
        loop {
            let deadline = self.last_progress + self.idle_timeout;
            let pdu = match tokio::time::timeout_at(deadline, self.read_pdu(self.our_max_pdu)).await
            {
                Ok(r) => r?,
                Err(_) => {
                    self.send_abort(AbortRQServiceProviderReason::ReasonNotSpecified)
                        .await;
                    return Err(NetError::Timeout {
                        peer: self.peer(),
                        what: "the next PDU",
                        after: self.idle_timeout,
                    });
                }
            };
            match pdu {
                Pdu::PData { data } => {
                    if data.iter().any(|pdv| !pdv.data.is_empty()) {
                        self.last_progress = Instant::now();
                    }
                    let mut pdvs = data.into_iter();
                    while let Some(pdv) = pdvs.next() {
                        if let Some(msg) = self.absorb(pdv).await? {
                            self.unread.extend(pdvs);
                            return Ok(Incoming::Message(Box::new(msg)));
                        }
                    }
                }
                Pdu::ReleaseRQ => {
                    if self.mid_message() {
                        warn!(peer = %self.peer(), "release requested in the middle of a message; partial message dropped");
                    }
                    self.send_pdu(&Pdu::ReleaseRP).await?;
                    self.link.shutdown().await;
                    return Ok(Incoming::Released);
                }
                Pdu::AbortRQ { source } => {
                    debug!(peer = %self.peer(), ?source, "association aborted by peer");
                    return Ok(Incoming::Aborted);
                }
                other => {
                    let reason = format!("unexpected {}", other.short_description());
                    self.send_abort(AbortRQServiceProviderReason::UnexpectedPdu)
                        .await;
                    return Err(NetError::Protocol {
                        peer: self.peer(),
                        reason,
                    });
                }
            }
        }
    }

    /// Add one PDV to the message being reassembled; returns the message when it is complete.
    /// A protocol fault aborts the association with the reason PS3.8 gives for it.
    async fn absorb(&mut self, pdv: PDataValue) -> Result<Option<DimseMessage>, NetError> {
        let accepted = self.context(pdv.presentation_context_id).is_some();
        match self.reassembly.absorb(pdv, accepted) {
            Ok(message) => Ok(message),
            Err(e) => {
                self.send_abort(e.abort_reason()).await;
                Err(match e {
                    ReassemblyError::BadCommand(c) => NetError::Command(c),
                    other => NetError::Protocol {
                        peer: self.peer(),
                        reason: other.to_string(),
                    },
                })
            }
        }
    }

    /// Non-blocking check, between the responses of a long operation, for a C-CANCEL-RQ
    /// (PS3.7 9.3.2.3). Whatever else has arrived stays buffered for `next()`; an A-ABORT or a
    /// closed connection is an error (the operation has nobody left to answer).
    pub fn cancel_requested(&mut self) -> Result<bool, NetError> {
        if std::mem::take(&mut self.cancel_seen) {
            return Ok(true);
        }
        let cancel_pdv = |pdv: &PDataValue| {
            pdv.value_type == PDataValueType::Command
                && pdv.is_last
                && Command::decode(&pdv.data)
                    .is_ok_and(|c| c.field() == Some(crate::dimse::CommandField::CCancelRq))
        };
        if !self.reassembly.mid_message() && self.unread.front().is_some_and(cancel_pdv) {
            self.unread.pop_front();
            return Ok(true);
        }
        let is_cancel = |pdu: &Pdu| match pdu {
            Pdu::PData { data } => data.len() == 1 && cancel_pdv(&data[0]),
            Pdu::AbortRQ { .. } => true,
            _ => false,
        };
        match self.link.take_buffered(self.our_max_pdu, is_cancel)? {
            Some(Pdu::AbortRQ { .. }) => Err(NetError::Closed { peer: self.peer() }),
            Some(_) => Ok(true),
            None => Ok(false),
        }
    }

    /// Keep a C-CANCEL-RQ that `next()` returned during an operation for `cancel_requested`.
    pub fn note_cancel(&mut self) {
        self.cancel_seen = true;
    }

    /// Send a command set (and nothing else) on a presentation context.
    pub async fn send_command(
        &mut self,
        context_id: u8,
        command: &Command,
    ) -> Result<(), NetError> {
        self.link.send_command(context_id, command).await
    }

    /// Send a data set on a presentation context, fragmented to the peer's PDU size.
    pub async fn send_data(&mut self, context_id: u8, data: &[u8]) -> Result<(), NetError> {
        self.link.send_data(context_id, data).await
    }

    /// Send a command set and its data set (one write for both when they fit in a batch).
    pub async fn send_message(
        &mut self,
        context_id: u8,
        command: &Command,
        data: &[u8],
    ) -> Result<(), NetError> {
        self.link.send_message(context_id, command, data).await
    }

    async fn send_pdu(&mut self, pdu: &Pdu) -> Result<(), NetError> {
        self.link.send_pdu(pdu).await
    }

    /// Send A-ABORT (service provider) best-effort and close the connection.
    pub async fn send_abort(&mut self, reason: AbortRQServiceProviderReason) {
        self.link
            .abort(AbortRQSource::ServiceProvider(reason))
            .await
    }

    /// Abort as the service user (used on shutdown).
    pub async fn abort(&mut self) {
        self.link.abort(AbortRQSource::ServiceUser).await
    }

    async fn read_pdu(&mut self, max_pdu: u32) -> Result<Pdu, NetError> {
        self.link.read_pdu(max_pdu).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_dictionary_std::uids;
    use dicom_ul::pdu::{AssociationRQ, PresentationContextProposed, RequestorRoles};

    fn rq(
        contexts: &[(u8, &str, &[&str])],
        user_variables: Vec<UserVariableItem>,
    ) -> AssociationRQ {
        AssociationRQ {
            protocol_version: 1,
            calling_ae_title: "MODALITY".into(),
            called_ae_title: "PACSD".into(),
            application_context_name: APPLICATION_CONTEXT.into(),
            presentation_contexts: contexts
                .iter()
                .map(|(id, abs, ts)| PresentationContextProposed {
                    id: *id,
                    abstract_syntax: abs.to_string(),
                    transfer_syntaxes: ts.iter().map(|t| t.to_string()).collect(),
                })
                .collect(),
            user_variables,
        }
    }

    fn reasons(n: &Negotiated) -> Vec<(u8, PresentationContextResultReason)> {
        n.results.iter().map(|r| (r.id, r.reason.clone())).collect()
    }

    #[test]
    fn each_context_is_accepted_or_refused_with_its_reason() {
        use PresentationContextResultReason::*;
        let ele = uids::EXPLICIT_VR_LITTLE_ENDIAN;
        let n = negotiate(
            &rq(
                &[
                    (1, uids::CT_IMAGE_STORAGE, &[ele]),
                    (3, "1.2.3.4", &[ele]),
                    (5, uids::VERIFICATION, &["1.2.3.999"]),
                    (
                        7,
                        uids::STUDY_ROOT_QUERY_RETRIEVE_INFORMATION_MODEL_FIND,
                        &[ele],
                    ),
                ],
                Vec::new(),
            ),
            &BTreeSet::from([Service::Echo, Service::Store]),
        );
        assert_eq!(
            reasons(&n),
            vec![
                (1, Acceptance),
                (3, AbstractSyntaxNotSupported),
                (5, TransferSyntaxesNotSupported),
                (7, UserRejection),
            ]
        );
        assert_eq!(n.results[0].transfer_syntax, ele);
        assert_eq!(n.contexts.len(), 1);
        assert_eq!(n.contexts[0].service, Service::Store);
        assert!(n.contexts[0].service_allowed && !n.contexts[0].requestor_scp);
        assert!(n.replies.is_empty());
        // No maximum length announced: the standard's default.
        assert_eq!(n.peer_max_pdu, dicom_ul::pdu::DEFAULT_MAX_PDU);
    }

    #[test]
    fn a_c_get_requestor_gets_the_scp_role_on_storage_contexts_only_when_it_may_get() {
        let ele = uids::EXPLICIT_VR_LITTLE_ENDIAN;
        let role = UserVariableItem::ScuScpRoleSelectionSubItem(
            uids::CT_IMAGE_STORAGE.into(),
            RequestorRoles {
                scu: false,
                scp: true,
            },
        );
        let request = rq(&[(1, uids::CT_IMAGE_STORAGE, &[ele])], vec![role.clone()]);
        let n = negotiate(&request, &BTreeSet::from([Service::Get]));
        assert_eq!(
            reasons(&n),
            vec![(1, PresentationContextResultReason::Acceptance)]
        );
        assert!(n.contexts[0].requestor_scp, "C-STOREs go back to it");
        assert!(!n.contexts[0].service_allowed, "it may not store here");
        assert_eq!(n.replies, vec![role]);
        // Without the right to C-GET, a storage context it may not use is refused.
        let n = negotiate(&request, &BTreeSet::from([Service::Find]));
        assert_eq!(
            reasons(&n),
            vec![(1, PresentationContextResultReason::UserRejection)]
        );
        assert!(n.contexts.is_empty() && n.replies.is_empty());
    }

    #[test]
    fn find_extended_negotiation_is_answered_and_a_zero_maximum_length_means_unlimited() {
        let find = uids::STUDY_ROOT_QUERY_RETRIEVE_INFORMATION_MODEL_FIND;
        let n = negotiate(
            &rq(
                &[(1, find, &[uids::IMPLICIT_VR_LITTLE_ENDIAN])],
                vec![
                    UserVariableItem::MaxLength(0),
                    UserVariableItem::SopClassExtendedNegotiationSubItem(
                        find.into(),
                        vec![1, 1, 1],
                    ),
                ],
            ),
            &BTreeSet::from([Service::Find]),
        );
        // Relational and combined date-time yes, fuzzy PN matching no.
        assert_eq!(n.contexts[0].extended, vec![1, 1, 0]);
        assert_eq!(
            n.replies,
            vec![UserVariableItem::SopClassExtendedNegotiationSubItem(
                find.into(),
                vec![1, 1, 0]
            )]
        );
        assert_eq!(n.peer_max_pdu, UNLIMITED_PEER_PDU);
    }

    #[test]
    fn context_ids_must_be_odd_and_unique() {
        assert_eq!(bad_context_ids([1u8, 3, 255].into_iter()), None);
        assert_eq!(bad_context_ids((1..=255u8).step_by(2)), None);
        assert!(
            bad_context_ids([1u8, 0].into_iter())
                .unwrap()
                .contains("0 is not odd")
        );
        assert!(
            bad_context_ids([2u8].into_iter())
                .unwrap()
                .contains("not odd")
        );
        assert!(
            bad_context_ids([1u8, 3, 1].into_iter())
                .unwrap()
                .contains("1 is proposed twice")
        );
        // 129 contexts cannot all have distinct odd IDs.
        let ids = (1..=255u8).step_by(2).chain([7u8]);
        assert!(bad_context_ids(ids).is_some());
    }
}
