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
