//! Outbound associations (requestor side, PS3.8 9.3.2): `pacsd echo`, `pacsd store`, and
//! later C-MOVE sub-associations. TCP_NODELAY, a connect timeout and a timeout on every wait.

use crate::part10::{IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME};
use std::time::Duration;

use dicom_ul::Pdu;
use dicom_ul::pdu::{
    AbortRQSource, AssociationRQ, PDataValue, PresentationContextProposed,
    PresentationContextResultReason, UserVariableItem,
};
use tokio::net::TcpStream;

use super::association::{APPLICATION_CONTEXT, NetError};
use super::link::Link;
use super::reassembly::Reassembler;
use super::transport::{CertIdentity, Transport};
use crate::dimse::{Command, CommandField, Status, status};
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// Receive size we announce as requestor.
const SCU_MAX_PDU: u32 = 262_144;

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct ScuOptions {
    pub addr: String,
    pub calling_ae: String,
    pub called_ae: String,
    /// Connect timeout and the limit on every later wait for the peer.
    pub timeout: Duration,
    /// DICOM TLS to this peer (None: plain TCP).
    pub tls: Option<ScuTls>,
}

/// How to reach a TLS peer: this node's client configuration and the name its server
/// certificate must carry.
#[derive(Clone)]
pub struct ScuTls {
    pub connector: tokio_rustls::TlsConnector,
    pub server_name: rustls::pki_types::ServerName<'static>,
}

impl std::fmt::Debug for ScuTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ScuTls({:?})", self.server_name)
    }
}

/// Optional negotiation items of an A-ASSOCIATE-RQ.
#[derive(Debug, Clone, Default)]
pub struct Negotiation {
    /// SOP class extended negotiation (PS3.7 D.3.3.5), e.g. relational queries.
    pub extended: Vec<(String, Vec<u8>)>,
    /// SOP classes for which we ask to be SCP (C-GET receives C-STOREs on them).
    pub scp_role_for: Vec<String>,
}

/// A presentation context to propose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProposedContext {
    pub abstract_syntax: String,
    pub transfer_syntaxes: Vec<String>,
}

/// A presentation context the acceptor accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NegotiatedContext {
    pub id: u8,
    pub abstract_syntax: String,
    pub transfer_syntax: String,
}

/// The SCU's reassembler: objects up to the default object size limit, with a budget of its
/// own (one message is held at a time).
fn scu_reassembler() -> Reassembler {
    let limit = crate::config::DEFAULT_MAX_OBJECT_SIZE;
    let budget = usize::try_from(limit).unwrap_or(usize::MAX);
    Reassembler::new(limit, Arc::new(Semaphore::new(budget)), limit)
}

/// A DIMSE message as read: its command set and, when announced, its data set.
pub type Message = (Command, Option<Vec<u8>>);

/// An established association, requestor side.
pub struct ScuAssociation {
    /// The connection: transport, buffers, the peer's PDU size, the write timeout.
    link: Link,
    contexts: Vec<NegotiatedContext>,
    timeout: Duration,
    next_message_id: u16,
    /// Presentation context of the last message read (C-GET answers C-STOREs on it).
    last_context_id: u8,
    /// Messages are reassembled as the acceptor does, bounded the same way.
    reassembly: Reassembler,
    /// PDVs of a PDU not yet reassembled (a PDU may hold PDVs of more than one message).
    unread: VecDeque<PDataValue>,
}

impl ScuAssociation {
    /// Connect and negotiate. A rejection is `NetError::Rejected` with the reason spelled out.
    pub async fn connect(
        opts: &ScuOptions,
        proposed: &[ProposedContext],
    ) -> Result<ScuAssociation, NetError> {
        Self::connect_with(opts, proposed, &Negotiation::default()).await
    }

    /// As `connect`, also asking for SOP class extended negotiation (PS3.7 D.3.3.5), e.g.
    /// relational queries for a FIND SOP class.
    pub async fn connect_with(
        opts: &ScuOptions,
        proposed: &[ProposedContext],
        negotiation: &Negotiation,
    ) -> Result<ScuAssociation, NetError> {
        if proposed.is_empty() || proposed.len() > 128 {
            return Err(NetError::Encode(format!(
                "{} presentation contexts proposed; PS3.8 allows 1 to 128",
                proposed.len()
            )));
        }
        let socket = match tokio::time::timeout(opts.timeout, TcpStream::connect(&opts.addr)).await
        {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => {
                return Err(NetError::Write {
                    peer: ([0, 0, 0, 0], 0).into(),
                    source: std::io::Error::new(
                        source.kind(),
                        format!("connecting to {}: {source}", opts.addr),
                    ),
                });
            }
            Err(_) => {
                return Err(NetError::Timeout {
                    peer: ([0, 0, 0, 0], 0).into(),
                    what: "TCP connect",
                    after: opts.timeout,
                });
            }
        };
        let peer = socket.peer_addr().map_err(|source| NetError::Read {
            peer: ([0, 0, 0, 0], 0).into(),
            source,
        })?;
        socket
            .set_nodelay(true)
            .map_err(|source| NetError::Write { peer, source })?;
        let socket = match &opts.tls {
            None => Transport::Tcp(socket),
            Some(tls) => {
                let handshake = tls.connector.connect(tls.server_name.clone(), socket);
                match tokio::time::timeout(opts.timeout, handshake).await {
                    Ok(Ok(s)) => Transport::TlsRequestor(Box::new(s)),
                    Ok(Err(e)) => {
                        return Err(NetError::Write {
                            peer,
                            source: std::io::Error::new(
                                e.kind(),
                                format!("TLS handshake with {}: {e}", opts.addr),
                            ),
                        });
                    }
                    Err(_) => {
                        return Err(NetError::Timeout {
                            peer,
                            what: "TLS handshake",
                            after: opts.timeout,
                        });
                    }
                }
            }
        };
        let mut assoc = ScuAssociation {
            link: Link::new(socket, peer, opts.timeout),
            contexts: Vec::new(),
            timeout: opts.timeout,
            next_message_id: 1,
            last_context_id: 0,
            reassembly: scu_reassembler(),
            unread: VecDeque::new(),
        };
        let rq = Pdu::AssociationRQ(AssociationRQ {
            protocol_version: 1,
            calling_ae_title: opts.calling_ae.clone(),
            called_ae_title: opts.called_ae.clone(),
            application_context_name: APPLICATION_CONTEXT.to_string(),
            presentation_contexts: proposed
                .iter()
                .enumerate()
                .map(|(i, p)| PresentationContextProposed {
                    id: (2 * i + 1) as u8,
                    abstract_syntax: p.abstract_syntax.clone(),
                    transfer_syntaxes: p.transfer_syntaxes.clone(),
                })
                .collect(),
            user_variables: vec![
                UserVariableItem::MaxLength(SCU_MAX_PDU),
                UserVariableItem::ImplementationClassUID(IMPLEMENTATION_CLASS_UID.to_string()),
                UserVariableItem::ImplementationVersionName(
                    IMPLEMENTATION_VERSION_NAME.to_string(),
                ),
            ]
            .into_iter()
            .chain(negotiation.extended.iter().map(|(sop, bytes)| {
                UserVariableItem::SopClassExtendedNegotiationSubItem(sop.clone(), bytes.clone())
            }))
            .chain(negotiation.scp_role_for.iter().map(|sop| {
                // PS3.7 D.3.3.4: we take the SCP role (receive C-STOREs) for C-GET.
                UserVariableItem::ScuScpRoleSelectionSubItem(
                    sop.clone(),
                    dicom_ul::pdu::RequestorRoles {
                        scu: false,
                        scp: true,
                    },
                )
            }))
            .collect(),
        });
        assoc.send_pdu(&rq).await?;
        match assoc.read_pdu().await? {
            Pdu::AssociationAC(ac) => {
                for uv in &ac.user_variables {
                    if let UserVariableItem::MaxLength(len) = uv {
                        assoc.link.peer_max_pdu = if *len == 0 {
                            1024 * 1024
                        } else {
                            (*len).min(16 * 1024 * 1024)
                        };
                    }
                }
                for pc in ac.presentation_contexts {
                    if pc.reason != PresentationContextResultReason::Acceptance {
                        continue;
                    }
                    let idx = (pc.id as usize).saturating_sub(1) / 2;
                    if let Some(p) = proposed.get(idx) {
                        assoc.contexts.push(NegotiatedContext {
                            id: pc.id,
                            abstract_syntax: p.abstract_syntax.clone(),
                            transfer_syntax: pc
                                .transfer_syntax
                                .trim_end_matches(['\0', ' '])
                                .to_string(),
                        });
                    }
                }
                Ok(assoc)
            }
            Pdu::AssociationRJ(rj) => Err(NetError::Rejected(format!(
                "{:?} / {:?}",
                rj.result, rj.source
            ))),
            Pdu::AbortRQ { source } => Err(NetError::Rejected(format!(
                "aborted during negotiation: {source:?}"
            ))),
            other => Err(NetError::Protocol {
                peer,
                reason: format!("expected A-ASSOCIATE-AC, got {}", other.short_description()),
            }),
        }
    }

    pub fn contexts(&self) -> &[NegotiatedContext] {
        &self.contexts
    }

    /// The accepted context for this abstract syntax, preferring the given transfer syntax.
    pub fn context_for(
        &self,
        abstract_syntax: &str,
        preferred_ts: &str,
    ) -> Option<&NegotiatedContext> {
        let matching = || {
            self.contexts
                .iter()
                .filter(|c| c.abstract_syntax == abstract_syntax)
        };
        matching()
            .find(|c| c.transfer_syntax == preferred_ts)
            .or_else(|| matching().next())
    }

    fn message_id(&mut self) -> u16 {
        let id = self.next_message_id;
        self.next_message_id = self.next_message_id.wrapping_add(1).max(1);
        id
    }

    /// C-ECHO (PS3.7 9.1.5).
    pub async fn echo(&mut self) -> Result<Status, NetError> {
        let ctx = self
            .contexts
            .iter()
            .find(|c| c.abstract_syntax == dicom_dictionary_std::uids::VERIFICATION)
            .map(|c| c.id)
            .ok_or_else(|| NetError::Rejected("Verification context not accepted".into()))?;
        let id = self.message_id();
        self.send_message(ctx, &Command::echo_rq(id), None).await?;
        self.read_response(CommandField::CEchoRsp).await
    }

    /// C-MOVE (PS3.7 9.1.4): send the identifier, follow the Pending responses and return the
    /// final response (with its counters). With `cancel_after` = Some(n), a C-CANCEL is sent
    /// after n Pending responses.
    pub async fn move_to(
        &mut self,
        context_id: u8,
        sop_class: &str,
        destination: &str,
        identifier: &[u8],
        cancel_after: Option<usize>,
        mut on_pending: impl FnMut(&Command),
    ) -> Result<Command, NetError> {
        let id = self
            .send_request(
                context_id,
                CommandField::CMoveRq,
                sop_class,
                Some(destination),
                identifier,
            )
            .await?;
        let mut pending = 0usize;
        loop {
            if cancel_after == Some(pending) {
                self.send_cancel(context_id, id).await?;
            }
            let (rsp, _) = self.read_message().await?;
            if rsp.status == Some(status::PENDING) {
                pending += 1;
                on_pending(&rsp);
            } else {
                return Ok(rsp);
            }
        }
    }

    /// C-GET (PS3.7 9.1.3): send the identifier, store every C-STORE the SCP sends back on this
    /// association with `on_store(sop_class, sop_instance, transfer_syntax, data set)` (its
    /// result is the status we answer), and return the final C-GET response. With
    /// `cancel_after` = Some(n), a C-CANCEL is sent when the n-th C-STORE has arrived, before
    /// it is answered (so the SCP sees it while it waits for that C-STORE's response).
    pub async fn get(
        &mut self,
        context_id: u8,
        sop_class: &str,
        identifier: &[u8],
        cancel_after: Option<usize>,
        mut on_store: impl FnMut(&str, &str, &str, Vec<u8>) -> Status,
        mut on_pending: impl FnMut(&Command),
    ) -> Result<Command, NetError> {
        let id = self
            .send_request(
                context_id,
                CommandField::CGetRq,
                sop_class,
                None,
                identifier,
            )
            .await?;
        let mut stores = 0usize;
        loop {
            let (msg, data) = self.read_message().await?;
            match msg.field() {
                Some(CommandField::CStoreRq) => {
                    stores += 1;
                    if cancel_after == Some(stores) {
                        self.send_cancel(context_id, id).await?;
                    }
                    let ctx = self.last_context_id;
                    let ts = self
                        .contexts
                        .iter()
                        .find(|c| c.id == ctx)
                        .map(|c| c.transfer_syntax.clone())
                        .unwrap_or_default();
                    let class = msg.affected_sop_class_uid.clone().unwrap_or_default();
                    let inst = msg.affected_sop_instance_uid.clone().unwrap_or_default();
                    let status = on_store(&class, &inst, &ts, data.unwrap_or_default());
                    let rsp = Command::response_to(&msg, CommandField::CStoreRsp, status);
                    self.send_message(ctx, &rsp, None).await?;
                }
                Some(CommandField::CGetRsp) if msg.status == Some(status::PENDING) => {
                    on_pending(&msg)
                }
                Some(CommandField::CGetRsp) => return Ok(msg),
                _ => {
                    return Err(NetError::Protocol {
                        peer: self.link.peer(),
                        reason: format!(
                            "unexpected command {:#06x} during C-GET",
                            msg.command_field
                        ),
                    });
                }
            }
        }
    }

    /// C-STORE as a C-MOVE sub-operation: carries the Move Originator AE Title and Message ID
    /// (PS3.7 9.1.1.1.9).
    pub async fn store_from_move(
        &mut self,
        context_id: u8,
        sop_class: &str,
        sop_instance: &str,
        data: &[u8],
        originator_ae: &str,
        originator_id: u16,
    ) -> Result<Status, NetError> {
        let id = self.message_id();
        let mut rq = Command::store_rq(id, sop_class, sop_instance);
        rq.move_originator_ae_title = Some(originator_ae.to_string());
        rq.move_originator_message_id = Some(originator_id);
        self.send_message(context_id, &rq, Some(data)).await?;
        self.read_response(CommandField::CStoreRsp).await
    }

    /// Send a C-FIND/C-MOVE/C-GET request with its identifier; returns its Message ID.
    async fn send_request(
        &mut self,
        context_id: u8,
        field: CommandField,
        sop_class: &str,
        move_destination: Option<&str>,
        identifier: &[u8],
    ) -> Result<u16, NetError> {
        let id = self.message_id();
        let rq = Command {
            command_field: field as u16,
            message_id: Some(id),
            affected_sop_class_uid: Some(sop_class.to_string()),
            priority: Some(0),
            move_destination: move_destination.map(str::to_string),
            data_set_type: crate::dimse::DATA_SET_PRESENT,
            ..Command::default()
        };
        self.send_message(context_id, &rq, Some(identifier)).await?;
        Ok(id)
    }

    /// C-CANCEL-RQ for the operation with Message ID `id` (PS3.7 9.3.2.3).
    async fn send_cancel(&mut self, context_id: u8, id: u16) -> Result<(), NetError> {
        let cancel = Command {
            command_field: CommandField::CCancelRq as u16,
            message_id_being_responded_to: Some(id),
            data_set_type: crate::dimse::NO_DATA_SET,
            ..Command::default()
        };
        self.send_message(context_id, &cancel, None).await
    }

    /// C-FIND (PS3.7 9.1.2): send the identifier, collect every Pending identifier and the
    /// final status. With `cancel_after` = Some(n), a C-CANCEL is sent after n responses.
    pub async fn find(
        &mut self,
        context_id: u8,
        sop_class: &str,
        identifier: &[u8],
        cancel_after: Option<usize>,
    ) -> Result<(Vec<Vec<u8>>, Status), NetError> {
        let id = self
            .send_request(
                context_id,
                CommandField::CFindRq,
                sop_class,
                None,
                identifier,
            )
            .await?;
        let mut matches = Vec::new();
        loop {
            if cancel_after == Some(matches.len()) {
                self.send_cancel(context_id, id).await?;
            }
            let (rsp, data) = self.read_message().await?;
            let status = Status {
                code: rsp.status.unwrap_or(status::NO_STATUS),
                comment: rsp.error_comment,
            };
            if status.is_pending() {
                matches.push(data.unwrap_or_default());
            } else {
                return Ok((matches, status));
            }
        }
    }

    /// C-STORE (PS3.7 9.1.1) of a data set already encoded in the context's transfer syntax.
    pub async fn store(
        &mut self,
        context_id: u8,
        sop_class: &str,
        sop_instance: &str,
        data: &[u8],
    ) -> Result<Status, NetError> {
        let id = self.message_id();
        self.send_message(
            context_id,
            &Command::store_rq(id, sop_class, sop_instance),
            Some(data),
        )
        .await?;
        self.read_response(CommandField::CStoreRsp).await
    }

    /// Send a command set and, when the command announces one, its data set.
    pub async fn send_message(
        &mut self,
        context_id: u8,
        command: &Command,
        data: Option<&[u8]>,
    ) -> Result<(), NetError> {
        match data {
            Some(data) => self.link.send_message(context_id, command, data).await,
            None => self.link.send_command(context_id, command).await,
        }
    }

    /// Send a data set alone (tests use it to finish a message begun by hand).
    pub async fn send_data(&mut self, context_id: u8, data: &[u8]) -> Result<(), NetError> {
        self.link.send_data(context_id, data).await
    }

    /// Write raw bytes to the socket (tests use it to cut a message short).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), NetError> {
        self.link.send_raw(bytes).await
    }

    /// The acceptor's verified certificate, over TLS.
    pub fn peer_identity(&self) -> Option<CertIdentity> {
        self.link.peer_identity()
    }

    /// Read one response command set (no data set expected) and return its status.
    pub async fn read_response(&mut self, expected: CommandField) -> Result<Status, NetError> {
        let rsp = self.read_command().await?;
        if rsp.command_field != expected as u16 {
            return Err(NetError::Protocol {
                peer: self.link.peer(),
                reason: format!(
                    "expected {expected:?}, got command field {:#06x}",
                    rsp.command_field
                ),
            });
        }
        Ok(Status {
            code: rsp.status.unwrap_or(status::NO_STATUS),
            comment: rsp.error_comment,
        })
    }

    /// Read the next command set (a data set that follows it is read and dropped).
    pub async fn read_command(&mut self) -> Result<Command, NetError> {
        Ok(self.read_message().await?.0)
    }

    /// Read the next DIMSE message: its command set and, when announced, its data set
    /// (reassembled by the acceptor's `Reassembler`, under the default object size limit).
    pub async fn read_message(&mut self) -> Result<Message, NetError> {
        loop {
            while let Some(pdv) = self.unread.pop_front() {
                if let Some(message) = self.absorb(pdv)? {
                    return Ok(message);
                }
            }
            match self.read_pdu().await? {
                // Several messages may share a PDU: its PDVs are taken one at a time.
                Pdu::PData { data } => self.unread.extend(data),
                Pdu::AbortRQ { source } => {
                    return Err(NetError::Rejected(format!(
                        "association aborted by peer: {source:?}"
                    )));
                }
                other => {
                    return Err(NetError::Protocol {
                        peer: self.link.peer(),
                        reason: format!("unexpected {}", other.short_description()),
                    });
                }
            }
        }
    }

    /// One PDV into the message being reassembled; the message when it is complete.
    fn absorb(&mut self, pdv: PDataValue) -> Result<Option<Message>, NetError> {
        let accepted = self
            .contexts
            .iter()
            .any(|c| c.id == pdv.presentation_context_id);
        let fault = |reason: String| NetError::Protocol {
            peer: self.link.peer(),
            reason,
        };
        let Some(message) = self
            .reassembly
            .absorb(pdv, accepted)
            .map_err(|e| fault(e.to_string()))?
        else {
            return Ok(None);
        };
        if let Some(why) = message.dropped {
            return Err(fault(format!("data set refused: {why:?}")));
        }
        self.last_context_id = message.context_id;
        Ok(Some((message.command, message.data)))
    }

    /// A-RELEASE (PS3.8 7.2).
    pub async fn release(mut self) -> Result<(), NetError> {
        self.send_pdu(&Pdu::ReleaseRQ).await?;
        match self.read_pdu().await {
            Ok(Pdu::ReleaseRP) | Err(NetError::Closed { .. }) => {}
            Ok(other) => {
                return Err(NetError::Protocol {
                    peer: self.link.peer(),
                    reason: format!("expected A-RELEASE-RP, got {}", other.short_description()),
                });
            }
            Err(e) => return Err(e),
        }
        self.link.shutdown().await;
        Ok(())
    }

    /// A-ABORT as service user.
    pub async fn abort(mut self) {
        self.link.abort(AbortRQSource::ServiceUser).await
    }

    async fn send_pdu(&mut self, pdu: &Pdu) -> Result<(), NetError> {
        self.link.send_pdu(pdu).await
    }

    async fn read_pdu(&mut self) -> Result<Pdu, NetError> {
        match tokio::time::timeout(self.timeout, self.link.read_pdu(SCU_MAX_PDU)).await {
            Ok(r) => r,
            Err(_) => Err(NetError::Timeout {
                peer: self.link.peer(),
                what: "a PDU",
                after: self.timeout,
            }),
        }
    }
}
