//! The DICOM network side: listener (accept loop, limits), association (the only dicom-ul
//! acceptor code), syntaxes accepted, outbound SCU associations. Knows nothing of the index
//! or storage: complete DIMSE messages go to a `MessageHandler`.

pub mod access;
pub mod association;
pub mod link;
pub mod listener;
pub mod reassembly;
pub mod scu;
pub mod shutdown;
pub mod syntax;
pub mod tls;
pub mod transport;

pub use association::{
    AcceptedContext, AcceptorPolicy, Association, DimseMessage, Dropped, Incoming, NetError,
};
pub use listener::{MessageHandler, run};
pub use shutdown::{Shutdown, ShutdownTrigger};
