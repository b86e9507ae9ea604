//! High availability: a primary/standby pair under one AE title (and one service IP) with
//! no external cluster manager. `role` is the pure state machine, `arbiter` grants epochs,
//! `heartbeat` carries liveness between the nodes, `replication` ships index records (sealed by `channel`) to the
//! standby (a C-STORE is acknowledged only once the standby has applied its record), and
//! `driver` runs a node through its roles. See DESIGN.md, High availability.

pub mod arbiter;
pub mod channel;
pub mod driver;
pub mod heartbeat;
pub mod replication;
pub mod role;
pub mod vip;

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;

use crate::index::{CommitGate, Index};
use crate::net::Shutdown;

/// What the HA driver needs of the node it runs for, implemented by `node` (the composition
/// root): the driver decides when this node serves, the node knows how. Nothing here is
/// DICOM, storage or HTTP; the driver only holds what `bind` returns until it serves with it.
pub trait Service: Send + Sync + 'static {
    /// The service's sockets, bound and not yet served.
    type Bound: Send + 'static;
    /// Why binding or reconciling failed (logged; the term is given up).
    type Error: std::fmt::Display + Send;

    /// Bind the service's sockets on `ip`; `freebind` when `ip` is the service address, bound
    /// before it is added (IP_FREEBIND).
    fn bind(
        &self,
        ip: IpAddr,
        freebind: bool,
    ) -> impl Future<Output = Result<Self::Bound, Self::Error>> + Send;

    /// Serve on `bound` with `index` until `shutdown` and the work in progress has ended; every
    /// acknowledged write waits for `gate` first.
    fn serve(
        &self,
        bound: Self::Bound,
        index: Index,
        gate: Arc<dyn CommitGate>,
        shutdown: Shutdown,
    ) -> impl Future<Output = ()> + Send + 'static;

    /// Before serving in a term that superseded a solo primary: bring `index` up to date with
    /// what that primary stored after this node last heard from it. How many records were
    /// added.
    fn reconcile(&self, index: &Index) -> impl Future<Output = Result<u64, Self::Error>> + Send;
}
