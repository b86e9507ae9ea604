//! Runs one node of a pair through its roles: heartbeats out and in, the role state machine
//! stepped on every tick, heartbeat, arbiter answer and replication event, and its actions
//! carried out. As standby the node owns its index and applies records; as primary it
//! serves DICOM (with C-STORE responses gated on the standby's acknowledgement), ships the
//! change log, and holds the service address.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use super::Service;
use super::arbiter::{Arbiter, ArbiterError};
use super::heartbeat::{Beat, BeatKey, Clock, Links};
use super::replication::{PrimaryEvent, Replicator, StandbyEvent, StandbyServer};
use super::role::{Action, Event, Role, RoleState, Timing};
use super::vip::{ServiceIp, VipError};
use crate::audit::{
    APPLICATION_ACTIVITY, Audit, Event as AuditEvent, HA_ROLE, Outcome, Role as AuditRole,
};
use crate::config::{Config, HaConfig, ReplicationMode};
use crate::index::{CommitGate, NotConfirmed};
use crate::index::{Index, IndexError};
use crate::net::{Shutdown, ShutdownTrigger};

/// Longest a C-STORE waits for the standby's acknowledgement (or for this node to go on
/// alone with a new epoch) before it fails: a few leases.
const CONFIRM_LEASES: u32 = 4;
/// How often a waiting C-STORE looks at the role again (besides being woken).
const CONFIRM_POLL: Duration = Duration::from_millis(20);
/// Longest `pacsd ha` control request or answer line.
const MAX_CONTROL_LINE: u64 = 1024;
/// `Shared::peer_token` before any heartbeat arrived.
const NO_TOKEN: u64 = u64::MAX;
/// How much longer than the listener's own drain deadline a planned hand-over waits for the
/// associations to end (the listener aborts what is left at its deadline).
const DRAIN_SLACK: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum HaError {
    #[error("[ha] is missing from the configuration")]
    NotConfigured,
    #[error("{0}")]
    Arbiter(#[from] ArbiterError),
    #[error("opening the index: {0}")]
    Index(#[from] IndexError),
    #[error("{what} {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: String,
        source: std::io::Error,
    },
    #[error("control socket {path}: {reason}")]
    Control { path: PathBuf, reason: String },
    #[error("service IP: {0}")]
    Vip(#[from] VipError),
    #[error("HA key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
}

/// The pair's shared heartbeat key from `[ha].key_file` (surrounding whitespace ignored, so
/// a key written with a trailing newline works); one that others may read is warned about.
pub fn read_key(path: &std::path::Path) -> Result<BeatKey, HaError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |reason: String| HaError::Key {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(0);
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        warn!(path = %path.display(), "the HA key is readable by other users: chmod 600 it");
    }
    BeatKey::new(&bytes[start..end]).map_err(|e| err(e.to_string()))
}

/// What the driver, the C-STORE gate and `pacsd ha status` share.
pub struct Shared {
    pub node_id: String,
    pub role: Mutex<RoleState>,
    /// Woken whenever the role state changes.
    pub changed: Notify,
    /// Highest change-log seq the standby acknowledged in the current term.
    pub acked: watch::Sender<i64>,
    pub mode: ReplicationMode,
    pub peer: Mutex<Option<(Instant, Beat)>>,
    /// Last change-log seq of this node's index (kept by the applier or the service).
    pub seq: Arc<std::sync::atomic::AtomicI64>,
    /// The latest heartbeat token received from the peer (`NO_TOKEN`: none yet), echoed in
    /// ours.
    pub peer_token: AtomicU64,
    pub service_ip: Option<String>,
    pub holds_service_ip: Mutex<bool>,
    /// The operator put this node in maintenance (also in `role`, and said in our beats).
    pub maintenance: AtomicBool,
}

/// The C-STORE gate of an HA node (durability contract, step 3).
pub struct Gate(pub Arc<Shared>);

impl CommitGate for Gate {
    fn confirm(&self, seq: i64) -> futures::future::BoxFuture<'_, Result<(), NotConfirmed>> {
        Box::pin(async move {
            let shared = &self.0;
            let limit = {
                let st = shared.role.lock().expect("role");
                st.timing.lease * CONFIRM_LEASES
            };
            let deadline = Instant::now() + limit;
            let mut acked = shared.acked.subscribe();
            loop {
                let woken = shared.changed.notified();
                let now = Instant::now();
                {
                    let st = shared.role.lock().expect("role");
                    let serving = matches!(
                        st.role,
                        Role::Primary { .. } | Role::Claiming { solo_before: true }
                    );
                    if !serving {
                        return Err(NotConfirmed::NoLongerPrimary { epoch: st.epoch });
                    }
                    let replicated = shared.mode == ReplicationMode::Async
                        || st.is_solo()
                        || *acked.borrow_and_update() >= seq;
                    if replicated && st.may_acknowledge(now) {
                        return Ok(());
                    }
                }
                if now >= deadline {
                    return Err(NotConfirmed::StandbyLate { seq, limit });
                }
                tokio::select! {
                    _ = woken => {}
                    _ = acked.changed() => {}
                    _ = tokio::time::sleep(CONFIRM_POLL.min(deadline - now)) => {}
                }
            }
        })
    }
}

/// What `pacsd ha status` prints.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub node: String,
    pub role: String,
    pub epoch: u64,
    /// Milliseconds of lease left (primary).
    pub lease_ms: Option<u64>,
    pub solo: bool,
    pub peer: Option<PeerStatus>,
    /// Last change-log seq of this node's index.
    pub seq: i64,
    /// Primary: rows committed here and not yet acknowledged by the standby; standby: rows
    /// the primary has that this node has not applied.
    pub replication_lag: Option<i64>,
    pub service_ip: Option<String>,
    pub holds_service_ip: bool,
    /// In maintenance: this node will not become primary.
    #[serde(default)]
    pub maintenance: bool,
    /// A planned operation under way ("switchover" or "stop": draining associations before
    /// handing over).
    #[serde(default)]
    pub planned: Option<String>,
    /// Primary: whether a standby is in step and would take over (paired, not in maintenance).
    #[serde(default)]
    pub standby_ready: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerStatus {
    pub node: String,
    pub primary: bool,
    pub epoch: u64,
    pub seq: i64,
    pub heard_ms_ago: u64,
    #[serde(default)]
    pub maintenance: bool,
}

/// A request on the control socket.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum ControlRequest {
    Status,
    Switchover,
    /// A planned stop (as SIGTERM): a paired primary hands over first.
    Stop,
    /// Maintenance on or off (persisted beside the index).
    Maintenance {
        on: bool,
    },
    /// A change of the HTTP accounts (`pacsd account`), made by the primary so that it is
    /// replicated like an instance; answered once the standby has it.
    Account {
        change: crate::index::account::AccountChange,
    },
}

impl ControlRequest {
    /// How long the node takes at most to answer: an account change waits for the standby's
    /// confirmation (`CONFIRM_LEASES` leases), everything else is answered at once.
    pub fn answer_within(&self) -> Duration {
        match self {
            ControlRequest::Account { .. } => Duration::from_secs(30),
            _ => Duration::from_secs(3),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ControlReply {
    Status(Status),
    Ok(String),
    Error(String),
    /// An account change was applied (and confirmed by the standby): rows it changed.
    Changed(u64),
}

/// The control socket's path for a configuration.
pub fn control_path(config: &Config, ha: &HaConfig) -> PathBuf {
    ha.control_socket
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}.ha.sock", config.index.path.display())))
}

/// The file whose presence puts a node in maintenance (beside the index, so it survives a
/// restart; `pacsd ha maintenance on|off` writes and removes it).
pub fn maintenance_path(config: &Config) -> PathBuf {
    PathBuf::from(format!("{}.maintenance", config.index.path.display()))
}

/// Record maintenance on or off in `path`.
pub fn set_maintenance(path: &std::path::Path, on: bool) -> std::io::Result<()> {
    if on {
        std::fs::write(
            path,
            "in maintenance: this node does not become primary (pacsd ha maintenance off ends it)\n",
        )
    } else {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// Why a planned switchover or stop cannot hand the primary role over.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoHandOver {
    #[error("this node is not the primary")]
    NotPrimary,
    #[error("the standby has not caught up (solo)")]
    Solo,
    #[error("the standby {0} is in maintenance and will not take over")]
    PeerInMaintenance(String),
    #[error("the service is not running")]
    NotServing,
}

/// Why a running node's control socket could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("connecting to {}: {source} (is the node running?)", path.display())]
    Connect {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("talking to the node: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad request or answer: {0}")]
    Json(#[from] serde_json::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

impl ControlError {
    /// The node is not running (no socket, or nobody listening on it).
    pub fn not_running(&self) -> bool {
        matches!(self, ControlError::Connect { source, .. }
            if matches!(source.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused))
    }
}

/// Ask a running node (`pacsd ha status`, `pacsd ha switchover`).
pub async fn control(
    path: &std::path::Path,
    req: &ControlRequest,
) -> Result<ControlReply, ControlError> {
    let exchange = async {
        let mut s = tokio::net::UnixStream::connect(path)
            .await
            .map_err(|source| ControlError::Connect {
                path: path.to_path_buf(),
                source,
            })?;
        let mut line = serde_json::to_vec(req)?;
        line.push(b'\n');
        s.write_all(&line).await?;
        let mut answer = String::new();
        BufReader::new(s)
            .take(64 * 1024)
            .read_line(&mut answer)
            .await?;
        Ok(serde_json::from_str(&answer)?)
    };
    let limit = req.answer_within() + Duration::from_secs(2);
    tokio::time::timeout(limit, exchange)
        .await
        .map_err(|_| ControlError::Timeout(limit))?
}

/// The service while primary.
struct Serving {
    seq_follower: JoinHandle<()>,
    node_trigger: ShutdownTrigger,
    node_task: JoinHandle<()>,
    repl_trigger: ShutdownTrigger,
    repl_task: JoinHandle<()>,
    handover: mpsc::Sender<()>,
    /// Which start of the service this is (a drain report names it).
    generation: u64,
    /// True once the DICOM service has ended (every association finished or aborted).
    done: watch::Receiver<bool>,
    /// No longer accepting: the open associations are finishing before a hand-over.
    draining: bool,
}

/// A planned operation of the primary: hand over, then go on as standby or stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Planned {
    Switchover,
    Stop,
}

/// The index applier while standby.
struct Standing {
    trigger: ShutdownTrigger,
    task: JoinHandle<Index>,
}

/// Everything the driver owns.
struct Driver<S: Service> {
    config: Arc<Config>,
    shared: Arc<Shared>,
    /// The node this driver runs: what it serves while primary.
    service: S,
    arbiter: Arbiter,
    clock: Clock,
    known_epoch: Arc<AtomicU64>,
    repl_listener: Arc<TcpListener>,
    peer_replication: SocketAddr,
    /// This node's replication address: the primary connects from it.
    replication_ip: std::net::IpAddr,
    /// The pair's shared key (heartbeats and the replication handshake).
    key: BeatKey,
    events: mpsc::Sender<Event>,
    standby_events: mpsc::Sender<StandbyEvent>,
    primary_events: mpsc::Sender<PrimaryEvent>,
    standing: Option<Standing>,
    serving: Option<Serving>,
    /// The index while neither standing nor serving holds it.
    index: Option<Index>,
    vip: Option<ServiceIp>,
    /// The gratuitous ARP burst of the current term.
    garp: Option<JoinHandle<()>>,
    audit: Audit,
    /// Starts of the DICOM service so far.
    generation: u64,
    /// A planned hand-over waiting for the associations of service `generation` to drain.
    planned: Option<(Planned, u64)>,
    /// Where drain waiters report the generation that has drained.
    drained: mpsc::Sender<u64>,
    /// A planned stop handed over in this epoch: stop once the peer holds a newer one, or at
    /// the instant given.
    stopping: Option<(u64, Instant)>,
    /// Leave the loop (a stop that needs no hand-over, or whose hand-over is done).
    exit: bool,
    maintenance_path: PathBuf,
}

/// Run this node of the pair until `shutdown`: `index` and `audit` opened by the node, which
/// `service` serves while this node is primary.
pub async fn run<S: Service>(
    config: Arc<Config>,
    index: Index,
    audit: Audit,
    service: S,
    mut shutdown: Shutdown,
) -> Result<(), HaError> {
    let ha = config.ha.clone().ok_or(HaError::NotConfigured)?;
    let bind = |what: &'static str, addr: &str| {
        let addr = addr.to_string();
        move |source| HaError::Bind { what, addr, source }
    };
    let key = read_key(ha.key_file.as_deref().expect("validated"))?;
    let arbiter = Arbiter::open(
        &ha.arbiter,
        Some(super::arbiter::WitnessAuth::new(key.clone(), &ha.node_id)),
    )?;
    // An arbiter that cannot grant an epoch once stops start-up; one that cannot be reached
    // now only keeps this node from claiming until it can.
    let latest = match arbiter.probe().await {
        Ok(()) => arbiter.latest().await?,
        Err(e @ ArbiterError::NoCreateIfAbsent { .. }) => return Err(e.into()),
        Err(e) => {
            error!(error = %e, "arbiter unreachable: starting as standby; no epoch can be claimed until it answers");
            0
        }
    };
    let vip = match (&ha.service_ip, &ha.interface) {
        (Some(ip), Some(ifname)) => {
            let vip = ServiceIp::parse(ip, ifname)?;
            // A node starts as standby: an address left behind by a crash goes first.
            vip.remove().await?;
            Some(vip)
        }
        _ => None,
    };
    let now = Instant::now();
    let maintenance_path = maintenance_path(&config);
    let maintenance = maintenance_path.exists();
    if maintenance {
        warn!(file = %maintenance_path.display(), "in maintenance: this node will not become primary until `pacsd ha maintenance off`");
    }
    let mut role = RoleState::new(Timing::of(&ha), latest, now);
    role.maintenance = maintenance;
    let shared = Arc::new(Shared {
        node_id: ha.node_id.clone(),
        role: Mutex::new(role),
        changed: Notify::new(),
        acked: watch::channel(0).0,
        mode: ha.replication,
        peer: Mutex::new(None),
        seq: Arc::new(std::sync::atomic::AtomicI64::new(0)),
        peer_token: AtomicU64::new(NO_TOKEN),
        service_ip: ha.service_ip.clone(),
        holds_service_ip: Mutex::new(false),
        maintenance: AtomicBool::new(maintenance),
    });
    let links: Vec<(SocketAddr, SocketAddr)> = ha
        .links
        .iter()
        .map(|l| {
            (
                l.bind.parse().expect("validated"),
                l.peer.parse().expect("validated"),
            )
        })
        .collect();
    let links = Links::bind(&links, key.clone())
        .await
        .map_err(bind("heartbeat link", &ha.links[0].bind))?;
    let (beat_tx, mut beats) = mpsc::channel(64);
    links.receive(ha.node_id.clone(), beat_tx, audit.clone());
    let repl_listener = Arc::new(
        TcpListener::bind(&ha.replication_bind)
            .await
            .map_err(bind("replication listener", &ha.replication_bind))?,
    );
    let control_path = control_path(&config, &ha);
    let control = bind_control(&control_path).map_err(|e| HaError::Control {
        path: control_path.clone(),
        reason: e.to_string(),
    })?;
    let (control_tx, mut control_rx) = mpsc::channel(8);
    tokio::spawn(serve_control(control, control_tx));

    let (events_tx, mut events) = mpsc::channel(32);
    let (standby_tx, mut standby_events) = mpsc::channel(8);
    let (primary_tx, mut primary_events) = mpsc::channel(8);
    let (drained_tx, mut drained) = mpsc::channel(4);
    let mut d = Driver {
        peer_replication: ha.peer_replication.parse().expect("validated"),
        replication_ip: ha
            .replication_bind
            .parse::<SocketAddr>()
            .expect("validated")
            .ip(),
        key,
        config,
        shared: shared.clone(),
        service,
        arbiter,
        clock: Clock::new(),
        known_epoch: Arc::new(AtomicU64::new(latest)),
        repl_listener,
        events: events_tx,
        standby_events: standby_tx,
        primary_events: primary_tx,
        standing: None,
        serving: None,
        index: Some(index),
        vip,
        garp: None,
        audit: audit.clone(),
        generation: 0,
        planned: None,
        drained: drained_tx,
        stopping: None,
        exit: false,
        maintenance_path,
    };
    info!(
        node = ha.node_id,
        epoch = latest,
        arbiter = ha.arbiter,
        "HA node starting as standby"
    );
    d.stand_by();

    // Heartbeats go out on their own task, so that an action the driver is busy with (a
    // service winding down, a takeover reconciling the index) never silences them.
    let beating = tokio::spawn(send_beats(
        links,
        shared.clone(),
        d.clock,
        Timing::of(&ha).heartbeat,
    ));
    let mut tick = tokio::time::interval(Timing::of(&ha).heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stop_asked = false;
    while !d.exit {
        let event = tokio::select! {
            _ = tick.tick() => Some(Event::Tick),
            Some((beat, at)) = beats.recv() => {
                shared.peer_token.store(beat.token, Ordering::SeqCst);
                d.known_epoch.fetch_max(beat.epoch, Ordering::SeqCst);
                let ev = Event::Heard {
                    peer_primary: beat.primary,
                    peer_epoch: beat.epoch,
                    echoed: beat.echo.map(|t| d.clock.instant(t)),
                };
                let mut peer = shared.peer.lock().expect("peer");
                let was = peer.as_ref().map(|(_, b)| b.maintenance);
                if was != Some(beat.maintenance) && (beat.maintenance || was.is_some()) {
                    if beat.maintenance {
                        warn!(peer = beat.node, "the peer is in maintenance: it will not take over");
                    } else {
                        info!(peer = beat.node, "the peer is out of maintenance");
                    }
                }
                *peer = Some((at, beat));
                Some(ev)
            }
            Some(ev) = events.recv() => Some(ev),
            Some(StandbyEvent::TakeOver { epoch }) = standby_events.recv() => {
                if shared.maintenance.load(Ordering::SeqCst) {
                    warn!(peer_epoch = epoch, "the primary handed over, but this node is in maintenance: not taking over (the peer claims again after the silence timer)");
                } else {
                    info!(peer_epoch = epoch, "the primary handed over: taking over");
                }
                Some(Event::TakeOver { peer_epoch: epoch })
            }
            Some(pe) = primary_events.recv() => Some(match pe {
                PrimaryEvent::CaughtUp => Event::StandbyCaughtUp,
                PrimaryEvent::Lost => Event::StandbyLost,
            }),
            Some((req, reply)) = control_rx.recv() => d.control(req, reply).await,
            Some(generation) = drained.recv() => d.drained(generation).await,
            _ = shutdown.wait(), if !stop_asked => {
                stop_asked = true;
                d.stop();
                None
            }
        };
        let Some(event) = event else { continue };
        let actions = {
            let mut st = shared.role.lock().expect("role");
            let before = (st.role, st.epoch);
            let actions = st.step(event, Instant::now());
            if (st.role, st.epoch) != before {
                info!(role = ?st.role, epoch = st.epoch, "role changed");
                audit.record(
                    AuditEvent::new(APPLICATION_ACTIVITY, Some(HA_ROLE), 'E', Outcome::Success)
                        .describe(format!(
                            "{:?} epoch {} -> {:?} epoch {}",
                            before.0, before.1, st.role, st.epoch
                        ))
                        .by(&ha.node_id, None, AuditRole::Application),
                );
            }
            actions
        };
        shared.changed.notify_waiters();
        for a in actions {
            d.execute(a).await;
        }
        if let Some((handed, until)) = d.stopping {
            let taken = shared
                .peer
                .lock()
                .expect("peer")
                .as_ref()
                .is_some_and(|(_, b)| b.primary && b.epoch > handed);
            if taken {
                info!("the standby took over: stopping");
                break;
            }
            if Instant::now() >= until {
                warn!("the standby did not take over in time; stopping anyway");
                break;
            }
        }
    }
    info!("HA node stopping");
    beating.abort();
    d.stop_serving().await;
    if let Some(s) = d.standing.take() {
        s.trigger.trigger();
        let _ = s.task.await;
    }
    let _ = std::fs::remove_file(&control_path);
    Ok(())
}

/// Send a heartbeat on every link every `interval`, from the shared state.
async fn send_beats(links: Links, shared: Arc<Shared>, clock: Clock, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (primary, epoch) = {
            let st = shared.role.lock().expect("role");
            (st.is_primary(), st.epoch)
        };
        let echo = Some(shared.peer_token.load(Ordering::SeqCst)).filter(|t| *t != NO_TOKEN);
        links
            .send(&Beat {
                node: shared.node_id.clone(),
                primary,
                epoch,
                seq: shared.seq.load(Ordering::SeqCst),
                token: clock.token(Instant::now()),
                echo,
                maintenance: shared.maintenance.load(Ordering::SeqCst),
            })
            .await;
    }
}

/// Keep `Shared::seq` at the index's last change-log seq (while serving; abort to stop).
fn follow_seq(index: &Index, shared: Arc<Shared>) -> JoinHandle<()> {
    let mut commits = index.commits();
    tokio::spawn(async move {
        loop {
            let seq = commits.borrow_and_update().seq;
            shared.seq.store(seq, Ordering::SeqCst);
            if commits.changed().await.is_err() {
                return;
            }
        }
    })
}

impl<S: Service> Driver<S> {
    async fn execute(&mut self, action: Action) {
        match action {
            Action::Claim { epoch } => {
                let node = self.shared.node_id.clone();
                info!(epoch, "claiming epoch");
                self.arbiter_task(move |arbiter| async move {
                    Some(match arbiter.claim(epoch, &node).await {
                        Ok(o) => Event::Claimed {
                            epoch,
                            granted: o.granted,
                            latest: o.latest,
                            previous_solo: o.previous_solo,
                        },
                        Err(e) => {
                            warn!(epoch, error = %e, "claim failed: the arbiter did not answer");
                            Event::Claimed {
                                epoch,
                                granted: false,
                                latest: epoch - 1,
                                previous_solo: false,
                            }
                        }
                    })
                });
            }
            Action::CheckLease => {
                let epoch = self.shared.role.lock().expect("role").epoch;
                self.arbiter_task(move |arbiter| async move {
                    let started = Instant::now();
                    match arbiter.latest().await {
                        Ok(latest) => {
                            if latest == epoch
                                && let Err(e) = arbiter.renew(epoch).await
                            {
                                warn!(error = %e, "renewal marker not written");
                            }
                            Some(Event::Checked { started, latest })
                        }
                        Err(e) => {
                            warn!(error = %e, "lease check failed: the lease will lapse");
                            None
                        }
                    }
                });
            }
            Action::Probe { epoch } => {
                self.arbiter_task(move |arbiter| async move {
                    Some(match arbiter.term(epoch).await {
                        Ok(t) => Event::Probed {
                            epoch,
                            paired: t.paired,
                            marker: t.marker,
                        },
                        Err(e) => {
                            // No answer is no evidence: probe again later, claim nothing.
                            warn!(epoch, error = %e, "arbiter did not answer a probe");
                            Event::Probed {
                                epoch: u64::MAX,
                                paired: false,
                                marker: None,
                            }
                        }
                    })
                });
            }
            Action::MarkPaired => {
                let epoch = self.shared.role.lock().expect("role").epoch;
                self.arbiter_task(move |arbiter| async move {
                    match arbiter.mark_paired(epoch).await {
                        Ok(()) => {
                            info!(epoch, "standby caught up: writes now wait for it");
                            Some(Event::Paired)
                        }
                        Err(e) => {
                            warn!(epoch, error = %e, "could not record the term as paired; staying solo");
                            None
                        }
                    }
                });
            }
            Action::Promote => self.promote().await,
            Action::Demote => {
                warn!("stepping down: no longer primary");
                self.stop_serving().await;
                self.stand_by();
            }
            Action::SendHandOver => {
                if let Some(s) = &self.serving {
                    let _ = s.handover.send(()).await;
                    // Give the frame a moment to leave before the link is torn down.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
    }

    /// Ask the arbiter on a task of its own (never holding up heartbeats or the loop); the
    /// event it yields, if any, comes back to the loop.
    fn arbiter_task<F, Fut>(&self, f: F)
    where
        F: FnOnce(Arbiter) -> Fut + Send + 'static,
        Fut: Future<Output = Option<Event>> + Send,
    {
        let (arbiter, tx) = (self.arbiter.clone(), self.events.clone());
        tokio::spawn(async move {
            if let Some(ev) = f(arbiter).await {
                let _ = tx.send(ev).await;
            }
        });
    }

    /// A term that could not start serving (nothing was acknowledged in it): stop
    /// acknowledging and run as standby; the peer may claim the next epoch.
    fn give_up_term(&mut self, index: Index) {
        self.index = Some(index);
        let _ = self
            .shared
            .role
            .lock()
            .expect("role")
            .step(Event::HandOver, Instant::now());
        self.stand_by();
    }

    /// Standby: the index goes to the record applier.
    fn stand_by(&mut self) {
        if self.standing.is_some() {
            return;
        }
        let Some(index) = self.index.take() else {
            error!("no index to stand by with");
            return;
        };
        let (trigger, shutdown) = ShutdownTrigger::new();
        let server = StandbyServer {
            node: self.shared.node_id.clone(),
            index_path: self.config.index.path.clone(),
            known_epoch: self.known_epoch.clone(),
            events: self.standby_events.clone(),
            applied: self.shared.seq.clone(),
            key: self.key.clone(),
            peer_ip: self.peer_replication.ip(),
            audit: self.audit.clone(),
        };
        let task = tokio::spawn(server.run(self.repl_listener.clone(), index, shutdown));
        self.standing = Some(Standing { trigger, task });
    }

    async fn promote(&mut self) {
        let epoch = self.shared.role.lock().expect("role").epoch;
        self.known_epoch.fetch_max(epoch, Ordering::SeqCst);
        if let Some(s) = self.standing.take() {
            s.trigger.trigger();
            match s.task.await {
                Ok(index) => self.index = Some(index),
                Err(e) => error!(error = %e, "the record applier ended badly"),
            }
        }
        if let Some(serving) = self.serving.take_if(|s| s.draining) {
            // A new epoch while draining for a hand-over (the standby was lost meanwhile):
            // that service no longer accepts, so it ends and a fresh one starts below.
            self.serving = Some(serving);
            self.stop_serving().await;
        }
        if let Some(serving) = self.serving.take() {
            // Already serving (a new solo epoch): only the replicator restarts in it.
            serving.repl_trigger.trigger();
            let _ = serving.repl_task.await;
            let index = self
                .index
                .clone()
                .expect("the driver keeps an index handle while serving");
            index.set_epoch(epoch);
            let (repl_trigger, repl_task, handover) = self.start_replicator(index, epoch);
            self.serving = Some(Serving {
                repl_trigger,
                repl_task,
                handover,
                ..serving
            });
            info!(epoch, "serving on in a new epoch");
            return;
        }
        let Some(index) = self.index.take() else {
            error!("no index to serve with");
            return;
        };
        index.set_epoch(epoch);
        self.shared.acked.send_replace(0);
        // Superseding a term that went on alone (role, rule 3): wait out its lease, then
        // index what that primary stored after this node last heard from it.
        let serve_from = match self.shared.role.lock().expect("role").role {
            Role::Primary { serve_from, .. } => serve_from,
            _ => Instant::now(),
        };
        if serve_from > Instant::now() {
            tokio::time::sleep_until(serve_from.into()).await;
            match self.service.reconcile(&index).await {
                Ok(n) => info!(
                    recovered = n,
                    "took over from a solo primary: index reconciled with storage"
                ),
                Err(e) => {
                    // Serving without those records could deny instances already
                    // acknowledged: give the term up and try again later.
                    error!(error = %e, "reconciling the index with storage failed; not serving");
                    self.give_up_term(index);
                    return;
                }
            }
        }
        // Listen first (IP_FREEBIND: before the address exists), then take the address and
        // announce it.
        let ip = match &self.vip {
            Some(v) => std::net::IpAddr::V4(v.addr),
            None => self
                .config
                .node
                .bind
                .parse()
                .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
        };
        let addr = format!("{ip}:{}", self.config.node.port);
        let listeners = match self.service.bind(ip, self.vip.is_some()).await {
            Ok(l) => l,
            Err(e) => {
                error!(%addr, error = %e, "cannot listen as primary; stepping down");
                self.give_up_term(index);
                return;
            }
        };
        if let Some(v) = &self.vip {
            if let Err(e) = v.add().await {
                error!(%addr, error = %e, "cannot add the service IP; stepping down");
                drop(listeners);
                self.give_up_term(index);
                return;
            }
            *self.shared.holds_service_ip.lock().expect("vip") = true;
            self.garp = Some(v.announce());
            info!(ip = %v.addr, interface = v.interface, "service IP added and announced");
        }
        let seq_follower = follow_seq(&index, self.shared.clone());
        let (node_trigger, node_shutdown) = ShutdownTrigger::new();
        let (done_tx, done) = watch::channel(false);
        let serve = self.service.serve(
            listeners,
            index.clone(),
            Arc::new(Gate(self.shared.clone())),
            node_shutdown,
        );
        let node_task = tokio::spawn(async move {
            serve.await;
            let _ = done_tx.send(true);
        });
        self.generation += 1;
        let (repl_trigger, repl_task, handover) = self.start_replicator(index, epoch);
        info!(epoch, %addr, ae_title = %self.config.node.ae_title, "primary: serving");
        self.serving = Some(Serving {
            seq_follower,
            node_trigger,
            node_task,
            repl_trigger,
            repl_task,
            handover,
            generation: self.generation,
            done,
            draining: false,
        });
    }

    fn start_replicator(
        &mut self,
        index: Index,
        epoch: u64,
    ) -> (ShutdownTrigger, JoinHandle<()>, mpsc::Sender<()>) {
        // The driver keeps a handle too, to hand the index back to the applier later.
        self.index = Some(index.clone());
        let (trigger, shutdown) = ShutdownTrigger::new();
        let (handover_tx, handover_rx) = mpsc::channel(1);
        let r = Replicator {
            node: self.shared.node_id.clone(),
            epoch,
            peer: self.peer_replication,
            index,
            acked: self.shared.acked.clone(),
            events: self.primary_events.clone(),
            handover: handover_rx,
            key: self.key.clone(),
            local_ip: self.replication_ip,
        };
        (trigger, tokio::spawn(r.run(shutdown)), handover_tx)
    }

    /// Stop the DICOM service and the replicator (the index stays with the driver).
    async fn stop_serving(&mut self) {
        let Some(s) = self.serving.take() else { return };
        // Stop accepting, then give the address up at once (no write can be acknowledged
        // any more), then let open associations end.
        s.node_trigger.trigger();
        s.repl_trigger.trigger();
        s.seq_follower.abort();
        if let Some(g) = self.garp.take() {
            g.abort();
        }
        if let Some(v) = &self.vip {
            match v.remove().await {
                Ok(()) => info!(ip = %v.addr, "service IP released"),
                Err(e) => error!(error = %e, "releasing the service IP failed"),
            }
            *self.shared.holds_service_ip.lock().expect("vip") = false;
        }
        let deadline = self.config.timeouts.shutdown();
        let mut node_task = s.node_task;
        if tokio::time::timeout(deadline, &mut node_task)
            .await
            .is_err()
        {
            warn!("associations did not finish in time; aborted");
            node_task.abort();
            let _ = node_task.await;
        }
        let _ = s.repl_task.await;
        info!("primary service stopped");
    }

    /// Whether the peer said in its latest beat that it is in maintenance.
    fn peer_in_maintenance(&self) -> Option<String> {
        self.shared
            .peer
            .lock()
            .expect("peer")
            .as_ref()
            .filter(|(_, b)| b.maintenance)
            .map(|(_, b)| b.node.clone())
    }

    /// A planned switchover or stop of the primary, step 1 (of 3): check that the standby
    /// can take over, then stop accepting associations and let the open ones finish, so
    /// that no request in flight fails. Step 2 is `drained`; step 3 is the role machine's
    /// `HandOver` (the standby confirms it has every record and claims the next epoch).
    /// Err: why there is no hand-over.
    fn plan(&mut self, what: Planned) -> Result<(), NoHandOver> {
        if let Some((planned, _)) = &mut self.planned {
            if what == Planned::Stop {
                *planned = Planned::Stop;
            }
            return Ok(());
        }
        let (primary, solo) = {
            let st = self.shared.role.lock().expect("role");
            (st.is_primary(), st.is_solo())
        };
        if !primary {
            return Err(NoHandOver::NotPrimary);
        }
        if solo {
            return Err(NoHandOver::Solo);
        }
        if let Some(peer) = self.peer_in_maintenance() {
            return Err(NoHandOver::PeerInMaintenance(peer));
        }
        let Some(serving) = self.serving.as_mut() else {
            return Err(NoHandOver::NotServing);
        };
        serving.draining = true;
        serving.node_trigger.trigger();
        let (mut done, generation) = (serving.done.clone(), serving.generation);
        let limit = self.config.timeouts.shutdown() + DRAIN_SLACK;
        let tx = self.drained.clone();
        tokio::spawn(async move {
            if tokio::time::timeout(limit, done.wait_for(|d| *d))
                .await
                .is_err()
            {
                warn!(
                    ?limit,
                    "associations still open after the drain deadline: handing over anyway"
                );
            }
            let _ = tx.send(generation).await;
        });
        info!(
            ?what,
            "planned hand-over: no new associations; the open ones finish first"
        );
        self.planned = Some((what, generation));
        Ok(())
    }

    /// A planned stop (SIGTERM, `pacsd ha stop`): a paired primary hands over first; any
    /// other node stops now.
    fn stop(&mut self) {
        let primary = self.shared.role.lock().expect("role").is_primary();
        match self.plan(Planned::Stop) {
            Ok(()) => info!("planned stop: handing over to the standby before stopping"),
            Err(why) => {
                if primary {
                    warn!(reason = %why, "planned stop of the primary without a hand-over");
                }
                self.exit = true;
            }
        }
    }

    /// Step 2 of a planned hand-over: the associations of service `generation` have ended.
    /// The role event to step, if the hand-over goes on.
    async fn drained(&mut self, generation: u64) -> Option<Event> {
        let (what, g) = self.planned.take()?;
        if g != generation {
            self.planned = Some((what, g));
            return None;
        }
        let current = self
            .serving
            .as_ref()
            .is_some_and(|s| s.generation == generation);
        let (primary, solo, epoch) = {
            let st = self.shared.role.lock().expect("role");
            (st.is_primary(), st.is_solo(), st.epoch)
        };
        let why_not = if !current || !primary {
            Some("this node stopped serving meanwhile".to_string())
        } else if solo {
            Some("the standby was lost meanwhile".to_string())
        } else {
            self.peer_in_maintenance()
                .map(|p| format!("the standby {p} went into maintenance meanwhile"))
        };
        match (why_not, what) {
            (None, _) => {
                info!(epoch, "associations drained: handing over to the standby");
                if what == Planned::Stop {
                    let wait = self.shared.role.lock().expect("role").timing.dead_after() * 2;
                    self.stopping = Some((epoch, Instant::now() + wait));
                }
                Some(Event::HandOver)
            }
            (Some(why), Planned::Stop) => {
                warn!(reason = %why, "planned stop without a hand-over");
                self.exit = true;
                None
            }
            (Some(why), Planned::Switchover) => {
                warn!(reason = %why, "switchover abandoned");
                if current && primary {
                    // Still the primary: serve again (the drained service no longer accepts).
                    self.stop_serving().await;
                    self.promote().await;
                }
                None
            }
        }
    }

    /// Put this node in maintenance or take it out (persisted first, then in effect).
    fn set_maintenance(&mut self, on: bool) -> ControlReply {
        if let Err(e) = set_maintenance(&self.maintenance_path, on) {
            return ControlReply::Error(format!(
                "recording maintenance in {}: {e}",
                self.maintenance_path.display()
            ));
        }
        self.shared.maintenance.store(on, Ordering::SeqCst);
        let primary = {
            let mut st = self.shared.role.lock().expect("role");
            st.maintenance = on;
            st.is_primary()
        };
        let said = match (on, primary) {
            (true, true) => {
                "maintenance on: this node serves on as primary, and will not become primary again once it is standby (switch over to hand the role away)"
            }
            (true, false) => {
                "maintenance on: this node will not take over, neither after a failure of the primary nor by switchover"
            }
            (false, _) => "maintenance off: this node may become primary again",
        };
        if on {
            warn!("{said}");
        } else {
            info!("{said}");
        }
        self.audit.record(
            AuditEvent::new(APPLICATION_ACTIVITY, Some(HA_ROLE), 'E', Outcome::Success)
                .describe(said.to_string())
                .by(&self.shared.node_id, None, AuditRole::Application),
        );
        ControlReply::Ok(said.into())
    }

    /// Answer a control request; a switchover becomes a role event.
    async fn control(
        &mut self,
        req: ControlRequest,
        reply: oneshot::Sender<ControlReply>,
    ) -> Option<Event> {
        match req {
            ControlRequest::Status => {
                let _ = reply.send(ControlReply::Status(self.status().await));
                None
            }
            ControlRequest::Switchover => {
                let _ = reply.send(match self.plan(Planned::Switchover) {
                    Ok(()) => ControlReply::Ok(
                        "handing over to the standby once the open associations have finished"
                            .into(),
                    ),
                    Err(why) => ControlReply::Error(format!("no switchover: {why}")),
                });
                None
            }
            ControlRequest::Stop => {
                self.stop();
                let _ = reply.send(ControlReply::Ok(if self.exit {
                    "stopping".into()
                } else {
                    "handing over to the standby, then stopping".into()
                }));
                None
            }
            ControlRequest::Maintenance { on } => {
                let _ = reply.send(self.set_maintenance(on));
                None
            }
            ControlRequest::Account { change } => {
                self.change_account(change, reply);
                None
            }
        }
    }

    /// Apply an account change as primary and answer once the standby confirms it (on its own
    /// task: the driver goes on with heartbeats meanwhile). A standby refuses: its index
    /// follows the primary's change log and takes no change of its own.
    fn change_account(
        &self,
        change: crate::index::account::AccountChange,
        reply: oneshot::Sender<ControlReply>,
    ) {
        let primary = self.shared.role.lock().expect("role").is_primary();
        let index = match (&self.serving, &self.index) {
            (Some(s), Some(index)) if primary && !s.draining => index.clone(),
            _ => {
                let _ = reply.send(ControlReply::Error(
                    "this node is not the serving primary: change accounts on the primary \
                     (they reach the standby through replication)"
                        .into(),
                ));
                return;
            }
        };
        let gate = Gate(self.shared.clone());
        tokio::spawn(async move {
            let answer = match index.change_account(change).await {
                Ok(done) => match done.seq {
                    Some(seq) => match gate.confirm(seq).await {
                        Ok(()) => ControlReply::Changed(done.rows),
                        Err(e) => ControlReply::Error(format!(
                            "applied here but not confirmed by the standby: {e}"
                        )),
                    },
                    None => ControlReply::Changed(0),
                },
                Err(e) => ControlReply::Error(e.to_string()),
            };
            let _ = reply.send(answer);
        });
    }

    async fn status(&self) -> Status {
        let seq = match &self.index {
            Some(i) => i.last_change().await.map(|c| c.0).unwrap_or(0),
            None => self.shared.seq.load(Ordering::SeqCst),
        };
        let st = self.shared.role.lock().expect("role").clone();
        let now = Instant::now();
        let peer = self
            .shared
            .peer
            .lock()
            .expect("peer")
            .as_ref()
            .map(|(at, b)| PeerStatus {
                node: b.node.clone(),
                primary: b.primary,
                epoch: b.epoch,
                seq: b.seq,
                heard_ms_ago: now.saturating_duration_since(*at).as_millis() as u64,
                maintenance: b.maintenance,
            });
        let primary = st.is_primary();
        let lag = if primary && !st.is_solo() {
            Some(seq - *self.shared.acked.borrow())
        } else if primary {
            None // no standby in step
        } else {
            peer.as_ref().map(|p| (p.seq - seq).max(0))
        };
        let peer_in_maintenance = peer.as_ref().is_some_and(|p| p.maintenance);
        Status {
            node: self.shared.node_id.clone(),
            role: match st.role {
                Role::Standby => "standby".into(),
                Role::Claiming { .. } => "claiming".into(),
                Role::Primary { solo: true, .. } => "primary (solo)".into(),
                Role::Primary { solo: false, .. } => "primary".into(),
            },
            epoch: st.epoch,
            lease_ms: st
                .lease_until
                .filter(|_| primary)
                .map(|l| l.saturating_duration_since(now).as_millis() as u64),
            solo: st.is_solo(),
            peer,
            seq,
            replication_lag: lag,
            service_ip: self.shared.service_ip.clone(),
            holds_service_ip: *self.shared.holds_service_ip.lock().expect("vip"),
            maintenance: st.maintenance,
            planned: self.planned.map(|(p, _)| {
                match p {
                    Planned::Switchover => "switchover",
                    Planned::Stop => "stop",
                }
                .to_string()
            }),
            standby_ready: primary.then(|| !st.is_solo() && !peer_in_maintenance),
        }
    }
}

/// The control socket, readable and writable by this node's user only (0600; the umask
/// would have left it open to every local user, and switchover is an operation).
fn bind_control(path: &std::path::Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Whether a control client may talk to the node: its user (SO_PEERCRED) is the node's own or
/// root. The socket's mode already says so; this also covers the moment between bind and chmod.
fn control_client_allowed(stream: &tokio::net::UnixStream) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let own = unsafe { libc::geteuid() };
    stream
        .peer_cred()
        .is_ok_and(|c| c.uid() == own || c.uid() == 0)
}

/// Accept control connections: one JSON request line, one JSON answer line.
async fn serve_control(
    listener: UnixListener,
    tx: mpsc::Sender<(ControlRequest, oneshot::Sender<ControlReply>)>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if !control_client_allowed(&stream) {
            warn!(cred = ?stream.peer_cred().ok(), "control connection from another user refused");
            continue;
        }
        let tx = tx.clone();
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut line = String::new();
            let mut reader = BufReader::new(r).take(MAX_CONTROL_LINE);
            if tokio::time::timeout(Duration::from_secs(2), reader.read_line(&mut line))
                .await
                .is_err()
            {
                return;
            }
            let answer = match serde_json::from_str::<ControlRequest>(&line) {
                Ok(req) => {
                    let (reply_tx, reply_rx) = oneshot::channel();
                    let limit = req.answer_within();
                    if tx.send((req, reply_tx)).await.is_err() {
                        return;
                    }
                    match tokio::time::timeout(limit, reply_rx).await {
                        Ok(Ok(a)) => a,
                        _ => ControlReply::Error("the node did not answer".into()),
                    }
                }
                Err(e) => ControlReply::Error(format!("bad request: {e}")),
            };
            let mut out = serde_json::to_vec(&answer).unwrap_or_default();
            out.push(b'\n');
            let _ = w.write_all(&out).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_control_socket_is_for_the_nodes_own_user_only() {
        use std::os::unix::fs::PermissionsExt;
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir().unwrap();
        // A directory every user may traverse: only the socket's own mode keeps them out.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.path().join("node.ha.sock");
        let listener = bind_control(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // The node's own user connects and is allowed.
        let own = tokio::net::UnixStream::connect(&path).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert!(control_client_allowed(&accepted));
        drop(own);
        // Another user (nobody) cannot even connect.
        if unsafe { libc::geteuid() } == 0 {
            let out = std::process::Command::new("python3")
                .args([
                    "-c",
                    "import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])",
                ])
                .arg(&path)
                .uid(65534)
                .gid(65534)
                .output()
                .unwrap();
            assert!(!out.status.success());
            assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"));
        }
    }
}
