//! DIMSE services, one file each, dispatched on the command field. Only this layer builds
//! responses and statuses; `net` carries bytes, `index` and `storage` keep them.

pub mod echo;
pub mod failure;
pub mod find;
pub mod query;
pub mod respond;
pub mod retrieve;
pub mod store;

use std::sync::Arc;

use tracing::{debug, warn};

use crate::audit::{Event, INSTANCES_TRANSFERRED, Outcome, Role as AuditRole, Subject};
use crate::config::Service;
use crate::dimse::{Command, CommandField, Status, status};
use crate::net::{Association, DimseMessage, MessageHandler, NetError};

pub use find::FindService;
pub use retrieve::RetrieveService;
pub use store::StoreService;

/// One DIMSE request as a service receives it: the presentation context it came on, its
/// command and its data set.
pub struct Request<'a> {
    pub context: &'a crate::net::AcceptedContext,
    pub command: &'a Command,
    pub data: Option<Vec<u8>>,
}

/// Every service this node provides, behind one dispatcher.
pub struct Services {
    /// DIMSE requests by command, status and latency (`/metrics`).
    pub metrics: Arc<crate::metrics::Metrics>,
    pub store: Arc<StoreService>,
    pub find: Arc<FindService>,
    pub retrieve: Arc<RetrieveService>,
}

impl MessageHandler for Services {
    async fn handle(&self, assoc: &mut Association, msg: DimseMessage) -> Result<(), NetError> {
        let started = std::time::Instant::now();
        let operation = match msg.command.field() {
            Some(f) => format!("{f:?}"),
            None => format!("{:#06x}", msg.command.command_field),
        };
        if let Some(d) = &msg.data {
            crate::metrics::Metrics::add(&self.metrics.bytes_in, d.len() as u64);
        }
        let result = self.dispatch(assoc, msg).await;
        // The response's status (C-FIND, C-MOVE and C-GET stream theirs: "streamed").
        let status = match &result {
            Ok(Some(code)) => format!("{code:04X}"),
            Ok(None) => "streamed".to_string(),
            Err(_) => "connection failed".to_string(),
        };
        self.metrics
            .observe("dimse", &operation, &status, started.elapsed());
        result.map(|_| ())
    }
}

impl Services {
    /// Answer one request; the status of the response sent, when it is a single one.
    async fn dispatch(
        &self,
        assoc: &mut Association,
        msg: DimseMessage,
    ) -> Result<Option<u16>, NetError> {
        let DimseMessage {
            context_id,
            command,
            data,
            dropped,
            memory,
        } = msg;
        // The received data set's share of the receive budget is given back once the request
        // has been answered (the store path copies it while it works).
        let _memory = memory;
        let context = assoc
            .context(context_id)
            .cloned()
            .expect("net only delivers messages on accepted contexts");
        debug!(
            command = command.command_field,
            context = context_id,
            "DIMSE request"
        );
        let req = Request {
            context: &context,
            command: &command,
            data,
        };
        let response = match (command.field(), context.service) {
            // A storage context accepted only for C-GET sub-operations (SCP/SCU role
            // selection) does not let a requestor without `store` store through it.
            (Some(CommandField::CStoreRq), Service::Store) if !context.service_allowed => {
                warn!(
                    calling_ae = assoc.calling_ae(),
                    "C-STORE refused: the calling AE may not store"
                );
                Command::response_to(
                    &command,
                    CommandField::CStoreRsp,
                    Status::with_comment(status::NOT_AUTHORIZED, "this AE may not store here"),
                )
            }
            (Some(CommandField::CEchoRq), Service::Echo) => echo::respond(&command),
            (Some(CommandField::CStoreRq), Service::Store) => {
                let mut subject = Subject::default();
                let status = self
                    .store
                    .store(req, assoc.calling_ae(), dropped, &mut subject)
                    .await;
                let outcome = if status.code == status::SUCCESS {
                    Outcome::Success
                } else {
                    Outcome::MinorFailure
                };
                let mut event =
                    Event::new(INSTANCES_TRANSFERRED, None, 'C', outcome).about(&subject);
                if let Some(sop) = &command.affected_sop_instance_uid {
                    event = event.describe(match &status.comment {
                        Some(c) => format!("C-STORE {sop}: {:04X} {c}", status.code),
                        None => format!("C-STORE {sop}: {:04X}", status.code),
                    });
                }
                assoc.audit(event, AuditRole::Source);
                Command::response_to(&command, CommandField::CStoreRsp, status)
            }
            // These stream their responses themselves.
            (Some(CommandField::CFindRq), Service::Find) => {
                return self.find.find(assoc, req).await.map(|()| None);
            }
            (Some(CommandField::CMoveRq), Service::Move) => {
                return self.retrieve.move_(assoc, req).await.map(|()| None);
            }
            (Some(CommandField::CGetRq), Service::Get) => {
                return self.retrieve.get(assoc, req).await.map(|()| None);
            }
            (Some(CommandField::CCancelRq), _) => {
                // PS3.7 9.3.2.3: a C-CANCEL for an operation that is not (or no longer)
                // running is ignored; it has no response of its own.
                return Ok(None);
            }
            (field, _) => {
                warn!(command = command.command_field, abstract_syntax = %context.abstract_syntax,
                      "command not supported on this presentation context");
                unsupported_response(&command, field)
            }
        };
        let code = response.status;
        assoc
            .send_command(context_id, &response)
            .await
            .map(|()| code)
    }
}

/// PS3.7 C.5.24 (0211, unrecognized operation) for a request we do not provide here.
fn unsupported_response(request: &Command, field: Option<CommandField>) -> Command {
    // The response command field is the request's with bit 15 set (PS3.7 E.1-1).
    let rsp_field = request.command_field | 0x8000;
    let comment = match field {
        Some(f) => format!("{f:?} is not provided on this presentation context"),
        None => format!("unknown command field {:#06x}", request.command_field),
    };
    Command::response_with_field(
        request,
        rsp_field,
        Status::with_comment(status::UNRECOGNIZED_OPERATION, comment),
    )
}
