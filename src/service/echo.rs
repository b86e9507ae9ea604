//! C-ECHO SCP (PS3.4 Annex A, PS3.7 9.1.5): always Success once the association is accepted.

use crate::dimse::{Command, CommandField, Status};

/// The response to a C-ECHO-RQ.
pub fn respond(request: &Command) -> Command {
    Command::response_to(request, CommandField::CEchoRsp, Status::success())
}
