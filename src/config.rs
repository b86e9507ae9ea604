//! Node configuration (`ae-config/pacsd.toml`) and known remote AEs (`ae-config/peers.toml`):
//! serde/TOML with documented defaults, unknown keys refused, values validated with the key named.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The AE title a fresh node answers to.
pub const DEFAULT_AE_TITLE: &str = "PACSD";
/// The registered DICOM port (PS3.8 Annex G lists 104 and 11112; 11112 needs no privilege).
pub const DEFAULT_PORT: u16 = 11112;
/// Receive PDU size we announce: 256 KiB keeps per-PDU overhead negligible for images.
pub const DEFAULT_MAX_PDU: u32 = 262_144;
/// PS3.8 9.3.1: the smallest receive size worth announcing; dicom-ul refuses less.
pub const MIN_MAX_PDU: u32 = 4_096;
/// Largest PDU size we accept to announce (16 MiB): bounds a single read buffer.
pub const MAX_MAX_PDU: u32 = 16 * 1024 * 1024;
/// `node.max_object_size` by default (1 GiB); see `NodeConfig`. Objects read back from
/// storage (which were accepted under it) may inflate to at most this much when deflated.
pub const DEFAULT_MAX_OBJECT_SIZE: u64 = 1024 * 1024 * 1024;

/// Errors found while loading configuration; every message names the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("invalid value for `{key}`: {reason}")]
    Invalid { key: String, reason: String },
}

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        reason: reason.into(),
    }
}

/// A DIMSE service a remote AE may use on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Service {
    Echo,
    Store,
    Find,
    Move,
    Get,
}

/// The whole node configuration (`pacsd.toml`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub node: NodeConfig,
    pub timeouts: TimeoutConfig,
    pub index: IndexConfig,
    pub storage: StorageConfig,
    pub access: AccessConfig,
    pub query: QueryConfig,
    pub retrieve: RetrieveConfig,
    pub preview: PreviewConfig,
    /// DICOMweb, metrics and health over HTTP (`http`).
    pub http: HttpConfig,
    /// DICOM TLS (PS3.15 B.9); without it only the plain listener runs.
    pub tls: Option<TlsConfig>,
    pub audit: AuditConfig,
    /// Primary/standby pair; without it the node runs alone.
    pub ha: Option<HaConfig>,
    /// Known remote AEs, loaded from `access.peers_file` (not a key of pacsd.toml).
    #[serde(skip)]
    pub peers: Vec<Peer>,
    /// The file this configuration was loaded from (None: built-in defaults).
    #[serde(skip)]
    pub file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// AE title this node answers to; associations called with another title are rejected.
    pub ae_title: String,
    /// Address to listen on.
    pub bind: String,
    /// TCP port to listen on (0 = any free port, for tests).
    pub port: u16,
    /// Maximum PDU length we receive (announced in A-ASSOCIATE-AC).
    pub max_pdu: u32,
    /// Concurrent associations. The permit is taken once a valid A-ASSOCIATE-RQ has arrived;
    /// a requestor finding all in use waits up to the ARTIM time, then is rejected (transient,
    /// local limit exceeded).
    pub max_associations: usize,
    /// Open connections (negotiating or associated) from one IP address; more are closed at
    /// once, so one host cannot take every association.
    pub max_associations_per_address: usize,
    /// Connections that have not finished association negotiation; a new connection beyond
    /// this makes the oldest negotiation give way.
    pub max_negotiating: usize,
    /// Largest data set accepted in one C-STORE, in bytes. 1 GiB holds large multi-frame
    /// objects (breast tomosynthesis, enhanced CT/MR: 100-700 MB) and whole-slide image
    /// levels as they are usually split.
    pub max_object_size: u64,
    /// Bytes of data sets being received at one time, summed over all associations; a data
    /// set that would go past it is drained and refused with A700 (retry later).
    pub receive_budget: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutConfig {
    /// ARTIM (PS3.8 9.1.5): time to receive the A-ASSOCIATE-RQ after TCP connect.
    pub artim_secs: f64,
    /// Time an established association may stay silent between PDUs before it is aborted.
    pub idle_secs: f64,
    /// Time allowed to write one PDU to a peer that stops reading.
    pub write_secs: f64,
    /// Deadline for finishing in-flight work after SIGINT/SIGTERM.
    pub shutdown_secs: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IndexConfig {
    /// SQLite database file (created with its directory when missing).
    pub path: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Replica locations: a plain directory path or an object_store URL (`file:///abs/path`,
    /// `memory://name` for tests).
    pub replicas: Vec<String>,
    /// Replicas that must hold an object before C-STORE answers success; default majority.
    pub write_quorum: Option<usize>,
    /// Key prefix inside every replica.
    pub prefix: String,
    /// Seconds between passes of the background repair worker (repair queue).
    pub repair_interval_secs: f64,
    /// Once the write quorum holds an object, how long a C-STORE still waits for the other
    /// replicas before it is answered; a replica still writing then finishes in the
    /// background and stays in the repair queue until it has (`storage::STRAGGLER_PATIENCE`).
    pub straggler_patience_secs: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessConfig {
    /// File listing known remote AEs (relative paths are taken from pacsd.toml's directory).
    pub peers_file: Option<PathBuf>,
    /// Services an AE that is not in the peers file may use. Empty = reject unknown AEs.
    pub unknown_ae_services: BTreeSet<Service>,
    /// Addresses an AE that is not in the peers file is accepted from (IP addresses, CIDR
    /// networks, DNS names). Default: loopback only, so a fresh install takes a test image
    /// from DCMTK on the same machine while devices on the network must be configured peers.
    pub unknown_ae_hosts: Vec<String>,
    /// What a C-STORE of an already stored SOP Instance UID with different content gets
    /// (a peer may override it with its own `on_conflict`).
    pub on_conflict: OnConflict,
}

/// What happens when a SOP Instance UID arrives again with different bytes. The stored
/// (first acknowledged) version is always kept; an identical re-send is always Success.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnConflict {
    /// Failure 0111 (Duplicate SOP Instance) with an ErrorComment naming the conflict: the
    /// sender learns that its version was not kept.
    #[default]
    Reject,
    /// Success, the new version dropped and the conflict logged: for senders that re-encode
    /// what they forward (routers) and would otherwise retry for ever.
    Keep,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueryConfig {
    /// A C-FIND matching more than this many entities is refused (A700 with an ErrorComment)
    /// instead of being truncated. 0 = no limit.
    pub max_results: u64,
    /// PersonName matching ignores case, as workstations expect (PS3.4 C.2.2.2.1 leaves it
    /// to the SCP).
    pub pn_case_insensitive: bool,
}

/// `[retrieve]`: C-MOVE and C-GET.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrieveConfig {
    /// The least time between two Pending responses of one C-MOVE or C-GET (PS3.4 C.4.2.3.1
    /// and C.4.3.3.1 make them optional). The first sub-operation is always followed by one,
    /// then at most one per interval; a sub-operation slower than the interval is followed by
    /// its own. 0 = one after every sub-operation but the last.
    pub pending_interval_ms: u64,
}

impl Default for RetrieveConfig {
    fn default() -> Self {
        // Ten progress reports a second are more than any progress bar shows; a Pending per
        // sub-operation cost 16% of pacsd's CPU per C-MOVE sub-operation (2000 CT to a
        // discarding sink on loopback, 0.49 -> 0.41 ms), most of it the loopback delivery.
        RetrieveConfig {
            pending_interval_ms: 100,
        }
    }
}

impl RetrieveConfig {
    pub fn pending_interval(&self) -> Duration {
        Duration::from_millis(self.pending_interval_ms)
    }
}

/// `[ha]`: this node's half of a primary/standby pair (DESIGN.md, High availability).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaConfig {
    /// This node's name (in heartbeats, claims and logs); the two must differ.
    pub node_id: String,
    /// Heartbeat links (UDP), at least one; more than one survives a link failure.
    pub links: Vec<HaLink>,
    /// Where this node listens for index records while it is standby (TCP).
    pub replication_bind: String,
    /// The peer's replication listener.
    pub peer_replication: String,
    /// Grants each epoch once: `witness://host:port` (`pacsd witness`), or a location on a
    /// shared store that honours create-if-absent (a directory, `file://`, `s3://` on AWS;
    /// checked at start-up).
    pub arbiter: String,
    /// The service address that moves with the primary, with its prefix (`10.0.0.100/24`);
    /// without it each node listens on `node.bind`.
    #[serde(default)]
    pub service_ip: Option<String>,
    /// Interface the service address is added to.
    #[serde(default)]
    pub interface: Option<String>,
    /// Milliseconds between heartbeats.
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// A primary serves only this long past its last vouched-for heartbeat (milliseconds).
    #[serde(default = "default_lease_ms")]
    pub lease_ms: u64,
    /// The standby claims only this long after the lease would have run out (milliseconds).
    #[serde(default = "default_margin_ms")]
    pub margin_ms: u64,
    /// `sync`: a C-STORE is acknowledged only after the standby applied its index record
    /// (DRBD protocol C); `async`: without waiting (a failover may lose the last ones).
    #[serde(default)]
    pub replication: ReplicationMode,
    /// Unix socket of `pacsd ha status` and `pacsd ha switchover` (default: the index path
    /// with `.ha.sock` appended).
    #[serde(default)]
    pub control_socket: Option<PathBuf>,
    /// The pair's shared secret (a file of at least 32 bytes, the same on both nodes, readable
    /// by the node's user only; relative to this file's directory): every heartbeat carries
    /// an HMAC-SHA256 under it, and beats without a valid one are dropped.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

// The defaults put a crash failover under 600 ms (scripts/bench-ha-timing.sh, 2-core lab,
// both nodes busy with ingest, previews and two CPU burners: 10 crashes p50 520 ms, p99
// 560 ms, no epoch claimed in 60 s without a fault; 600/200 gave p99 888 ms and 450/150
// p99 711 ms). A primary whose heartbeats stop for 500 ms is taken over; 50 ms beats keep
// that to ten missed beats.
fn default_heartbeat_ms() -> u64 {
    50
}
fn default_lease_ms() -> u64 {
    400
}
fn default_margin_ms() -> u64 {
    100
}

/// One heartbeat link.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaLink {
    /// Our UDP address on this link.
    pub bind: String,
    /// The peer's UDP address on this link.
    pub peer: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplicationMode {
    #[default]
    Sync,
    Async,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PreviewConfig {
    /// Render a JPEG preview of every stored image in the background (never on the C-STORE
    /// path); pending previews are recorded in the index and survive a restart.
    pub enabled: bool,
    /// Previews rendered at the same time (each takes one core while it decodes).
    pub workers: usize,
}

impl Default for PreviewConfig {
    fn default() -> Self {
        PreviewConfig {
            enabled: true,
            workers: 1,
        }
    }
}

impl Default for QueryConfig {
    fn default() -> Self {
        QueryConfig {
            max_results: 10_000,
            pn_case_insensitive: true,
        }
    }
}

/// The HTTP port of a fresh node (DICOMweb, `/metrics`, `/healthz`): clear of the ports
/// common tools take by default (8080, 8000, 8042 Orthanc, 3000, 9090, 5000).
pub const DEFAULT_HTTP_PORT: u16 = 8104;

/// `[http]`: DICOMweb (PS3.18), metrics and health, served beside the DICOM listener. In an
/// HA pair it listens where DICOM does (the service IP), so only the primary answers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Serve HTTP at all.
    pub enabled: bool,
    /// Address to listen on (default: `node.bind`; the service IP in an HA pair).
    pub bind: Option<String>,
    /// TCP port (0 = any free port, for tests).
    pub port: u16,
    /// Path under which the DICOMweb services answer (`/dicom-web/studies`, ...).
    pub base_path: String,
    /// Origins a browser may call from (CORS), e.g. `http://viewer.example:3000`; `*` allows
    /// any. Empty: no cross-origin access.
    pub allowed_origins: Vec<String>,
    /// Requests without credentials are refused (401) unless this is false, which opens
    /// every endpoint to anyone who can reach the port (a closed test network only).
    pub require_auth: bool,
    /// Largest STOW-RS request body in bytes (413 beyond it); each part is also held to
    /// `node.max_object_size`.
    pub max_upload_size: u64,
    /// QIDO-RS answers at most this many matches per request (`limit` may ask for fewer; a
    /// client pages on with `offset`).
    pub max_results: u64,
    /// The OHIF viewer's prebuilt `dist/` directory (`scripts/ohif.sh` fetches it): served at
    /// `/viewer` on this server, so the portal's "Open in viewer" works with the portal's
    /// sign-in. None: the portal offers no viewer.
    pub viewer_dir: Option<PathBuf>,
    /// Serve HTTPS (HTTP/2 or HTTP/1.1 by ALPN) instead of plain HTTP on `port`, with the
    /// certificate and key of `[tls]` (which must be configured). Web clients are not asked
    /// for a certificate: they sign in with an account.
    pub tls: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            enabled: true,
            bind: None,
            port: DEFAULT_HTTP_PORT,
            base_path: "/dicom-web".to_string(),
            allowed_origins: Vec::new(),
            require_auth: true,
            max_upload_size: 4 * DEFAULT_MAX_OBJECT_SIZE,
            max_results: 1000,
            viewer_dir: None,
            tls: false,
        }
    }
}

/// The audit trail (PS3.15 A.5 records, one per line; see `audit`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Append-only file of audit records (default: `audit.log` beside the index).
    pub path: Option<PathBuf>,
    /// Also send each record to a syslog collector: `udp://host:port` (RFC 5424 over UDP) or
    /// `tls://host:port` (over TLS, RFC 5425, with the node's `[tls]` credentials).
    pub syslog: Option<String>,
}

impl AuditConfig {
    /// The file records go to.
    pub fn file(&self, index: &IndexConfig) -> PathBuf {
        self.path.clone().unwrap_or_else(|| {
            index
                .path
                .parent()
                .unwrap_or(Path::new("."))
                .join("audit.log")
        })
    }

    /// The syslog collector, if one is configured.
    pub fn syslog_target(&self) -> Result<Option<SyslogTarget>, ConfigError> {
        let Some(url) = &self.syslog else {
            return Ok(None);
        };
        let bad = || {
            invalid(
                "audit.syslog",
                format!("`{url}` is not udp://host:port or tls://host:port"),
            )
        };
        let (tls, rest) = match (url.strip_prefix("udp://"), url.strip_prefix("tls://")) {
            (Some(rest), _) => (false, rest),
            (_, Some(rest)) => (true, rest),
            _ => return Err(bad()),
        };
        use std::net::ToSocketAddrs;
        let addr = rest
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(bad)?;
        let host = rest
            .rsplit_once(':')
            .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']').to_string())
            .ok_or_else(bad)?;
        Ok(Some(if tls {
            SyslogTarget::Tls { addr, host }
        } else {
            SyslogTarget::Udp(addr)
        }))
    }
}

/// Where audit records are forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyslogTarget {
    /// RFC 5426.
    Udp(std::net::SocketAddr),
    /// RFC 5425, with this node's `[tls]` credentials; `host` must be in the collector's
    /// certificate.
    Tls {
        addr: std::net::SocketAddr,
        host: String,
    },
}

/// The registered DICOM-TLS port (PS3.15 B.9, IANA "dicom-tls").
pub const DEFAULT_TLS_PORT: u16 = 2762;

/// DICOM TLS: the BCP 195 profile (TLS 1.2 and 1.3, ECDHE with AES-GCM or ChaCha20), a second
/// listener, and the credentials used both as acceptor and as requestor (C-MOVE destinations
/// marked `tls` in peers.toml). Paths relative to pacsd.toml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Port of the TLS listener, on `node.bind` (or the HA service IP).
    #[serde(default = "default_tls_port")]
    pub port: u16,
    /// This node's certificate chain (PEM), end-entity certificate first.
    pub certificate: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub private_key: PathBuf,
    /// The certification authorities (PEM) that requestors' certificates and TLS peers'
    /// certificates must chain to.
    pub ca: PathBuf,
    /// Refuse TLS requestors without a certificate from `ca` (default). Set to false only for
    /// clients that cannot present one: they are then known by address as on the plain port.
    #[serde(default = "yes")]
    pub require_client_certificate: bool,
    /// Do not open the plain listener (`node.port`): DICOM only over TLS.
    #[serde(default)]
    pub only: bool,
}

fn default_tls_port() -> u16 {
    DEFAULT_TLS_PORT
}

fn yes() -> bool {
    true
}

/// A known remote application entity.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    pub ae_title: String,
    /// Where this AE listens (C-MOVE destinations are reached there).
    pub host: String,
    pub port: u16,
    /// Addresses this AE title is accepted from: IP addresses, CIDR networks or DNS names
    /// (resolved at each association). Empty: `host` only.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Services this AE may use on this node.
    #[serde(default)]
    pub services: BTreeSet<Service>,
    /// Overrides `access.on_conflict` for what this AE sends.
    #[serde(default)]
    pub on_conflict: Option<OnConflict>,
    /// This AE speaks DICOM TLS: associations to it (C-MOVE) are made over TLS, and
    /// associations under its title are accepted only on the TLS listener.
    #[serde(default)]
    pub tls: bool,
    /// The subject of this AE's certificate (`CN=CT1` or the whole `O=Hospital, CN=CT1`).
    /// Implies `tls`. A TLS requestor presenting it is this AE from any address; a
    /// certificate with another subject is refused under this title.
    #[serde(default)]
    pub tls_subject: Option<String>,
    /// The name its server certificate is checked against when this node connects to it
    /// (default: `host`).
    #[serde(default)]
    pub tls_server_name: Option<String>,
}

impl Peer {
    /// A peer known by AE title and address, allowed `services`; everything else as an
    /// `[[peer]]` entry that names only these leaves it.
    pub fn new(ae_title: &str, host: &str, port: u16, services: &[Service]) -> Peer {
        Peer {
            ae_title: ae_title.into(),
            host: host.into(),
            port,
            services: services.iter().copied().collect(),
            ..Peer::default()
        }
    }

    /// Whether associations with this AE must run over TLS.
    pub fn needs_tls(&self) -> bool {
        self.tls || self.tls_subject.is_some()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PeersFile {
    #[serde(default)]
    peer: Vec<Peer>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            ae_title: DEFAULT_AE_TITLE.to_string(),
            bind: "0.0.0.0".to_string(),
            port: DEFAULT_PORT,
            max_pdu: DEFAULT_MAX_PDU,
            max_associations: 64,
            max_associations_per_address: 32,
            max_negotiating: 128,
            max_object_size: DEFAULT_MAX_OBJECT_SIZE,
            receive_budget: 2 * DEFAULT_MAX_OBJECT_SIZE,
        }
    }
}

impl Default for TimeoutConfig {
    fn default() -> Self {
        TimeoutConfig {
            artim_secs: 30.0,
            idle_secs: 300.0,
            write_secs: 60.0,
            shutdown_secs: 30.0,
        }
    }
}

impl Default for IndexConfig {
    fn default() -> Self {
        IndexConfig {
            path: PathBuf::from("data/index.sqlite"),
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            replicas: vec![
                "data/replica-1".to_string(),
                "data/replica-2".to_string(),
                "data/replica-3".to_string(),
            ],
            write_quorum: None,
            prefix: "dicom".to_string(),
            repair_interval_secs: 60.0,
            straggler_patience_secs: crate::storage::STRAGGLER_PATIENCE.as_secs_f64(),
        }
    }
}

impl Default for AccessConfig {
    fn default() -> Self {
        AccessConfig {
            peers_file: None,
            unknown_ae_services: [Service::Echo, Service::Store].into_iter().collect(),
            unknown_ae_hosts: vec!["127.0.0.0/8".into(), "::1".into()],
            on_conflict: OnConflict::default(),
        }
    }
}

impl TimeoutConfig {
    pub fn artim(&self) -> Duration {
        Duration::from_secs_f64(self.artim_secs)
    }
    pub fn idle(&self) -> Duration {
        Duration::from_secs_f64(self.idle_secs)
    }
    pub fn write(&self) -> Duration {
        Duration::from_secs_f64(self.write_secs)
    }
    pub fn shutdown(&self) -> Duration {
        Duration::from_secs_f64(self.shutdown_secs)
    }
}

impl StorageConfig {
    /// The effective write quorum: configured, or a majority of the replicas.
    pub fn effective_quorum(&self) -> usize {
        self.write_quorum.unwrap_or(self.replicas.len() / 2 + 1)
    }
}

impl Config {
    /// Load `pacsd.toml` and the peers file it names, then validate.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            source: Box::new(e),
        })?;
        if let Some(peers) = config.access.peers_file.clone() {
            let peers = if peers.is_relative() {
                path.parent().unwrap_or(Path::new(".")).join(peers)
            } else {
                peers
            };
            config.access.peers_file = Some(peers.clone());
            config.peers = load_peers(&peers)?;
        }
        let here = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = path.parent().unwrap_or(Path::new(".")).join(&*p);
            }
        };
        if let Some(tls) = &mut config.tls {
            here(&mut tls.certificate);
            here(&mut tls.private_key);
            here(&mut tls.ca);
        }
        if let Some(ha) = &mut config.ha
            && let Some(key) = ha.key_file.as_mut()
            && key.is_relative()
        {
            *key = path.parent().unwrap_or(Path::new(".")).join(&*key);
        }
        config.file = Some(path.to_path_buf());
        config.validate()?;
        Ok(config)
    }

    /// Check every value; the first problem found is returned with its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_ae_title("node.ae_title", &self.node.ae_title)?;
        if self.node.bind.parse::<std::net::IpAddr>().is_err() {
            return Err(invalid(
                "node.bind",
                format!("`{}` is not an IP address", self.node.bind),
            ));
        }
        if !(MIN_MAX_PDU..=MAX_MAX_PDU).contains(&self.node.max_pdu) {
            return Err(invalid(
                "node.max_pdu",
                format!(
                    "{} is outside {MIN_MAX_PDU}..={MAX_MAX_PDU}",
                    self.node.max_pdu
                ),
            ));
        }
        for (key, v) in [
            ("node.max_associations", self.node.max_associations),
            (
                "node.max_associations_per_address",
                self.node.max_associations_per_address,
            ),
            ("node.max_negotiating", self.node.max_negotiating),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if let Some(b) = &self.http.bind
            && b.parse::<std::net::IpAddr>().is_err()
        {
            return Err(invalid("http.bind", format!("`{b}` is not an IP address")));
        }
        let base = &self.http.base_path;
        if !base.starts_with('/')
            || base.len() > 1 && base.ends_with('/')
            || !base
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/-_.".contains(&b))
        {
            return Err(invalid(
                "http.base_path",
                format!(
                    "`{base}` must start with `/`, not end with one, and hold only letters, digits, `-`, `_`, `.`"
                ),
            ));
        }
        for o in &self.http.allowed_origins {
            if o != "*" && url::Url::parse(o).is_err() {
                return Err(invalid(
                    "http.allowed_origins",
                    format!("`{o}` is neither `*` nor an origin like http://host:port"),
                ));
            }
        }
        if let Some(dir) = &self.http.viewer_dir
            && !dir.join("index.html").is_file()
        {
            return Err(invalid(
                "http.viewer_dir",
                format!(
                    "`{}` holds no index.html: name the dist/ directory of @ohif/app (scripts/ohif.sh)",
                    dir.display()
                ),
            ));
        }
        if self.http.max_results == 0 {
            return Err(invalid("http.max_results", "must be at least 1"));
        }
        if self.http.max_upload_size < 1024 {
            return Err(invalid(
                "http.max_upload_size",
                "must be at least 1024 bytes",
            ));
        }
        if !(1..=64).contains(&self.preview.workers) {
            return Err(invalid("preview.workers", "must be between 1 and 64"));
        }
        if let Some(ha) = &self.ha {
            ha.validate()?;
        }
        if let Some(SyslogTarget::Tls { .. }) = self.audit.syslog_target()?
            && self.tls.is_none()
        {
            return Err(invalid(
                "audit.syslog",
                "syslog over TLS uses the node's [tls] certificate and CA: configure [tls]",
            ));
        }
        if self.http.enabled && self.http.tls && self.tls.is_none() {
            return Err(invalid(
                "http.tls",
                "HTTPS uses the node's [tls] certificate and key: configure [tls]",
            ));
        }
        if let Some(tls) = &self.tls {
            if tls.port != 0 && tls.port == self.node.port && !tls.only {
                return Err(invalid(
                    "tls.port",
                    "must differ from node.port (or set tls.only)",
                ));
            }
        } else if let Some(p) = self.peers.iter().find(|p| p.needs_tls()) {
            return Err(invalid(
                "tls",
                format!(
                    "peer `{}` is marked tls but the node has no [tls] section",
                    p.ae_title
                ),
            ));
        }
        if self.node.max_object_size < 1024 {
            return Err(invalid(
                "node.max_object_size",
                "must be at least 1024 bytes",
            ));
        }
        if self.node.receive_budget < self.node.max_object_size {
            return Err(invalid(
                "node.receive_budget",
                "must be at least node.max_object_size",
            ));
        }
        let patience = self.storage.straggler_patience_secs;
        let grace = crate::storage::STRAGGLER_GRACE.as_secs_f64();
        if !(patience.is_finite() && (0.0..=grace).contains(&patience)) {
            return Err(invalid(
                "storage.straggler_patience_secs",
                format!("{patience} is not a number of seconds in [0, {grace}]"),
            ));
        }
        for (key, v) in [
            ("timeouts.artim_secs", self.timeouts.artim_secs),
            ("timeouts.idle_secs", self.timeouts.idle_secs),
            ("timeouts.write_secs", self.timeouts.write_secs),
            ("timeouts.shutdown_secs", self.timeouts.shutdown_secs),
            (
                "storage.repair_interval_secs",
                self.storage.repair_interval_secs,
            ),
        ] {
            if !(v.is_finite() && v > 0.0 && v <= 86_400.0) {
                return Err(invalid(
                    key,
                    format!("{v} is not a number of seconds in (0, 86400]"),
                ));
            }
        }
        let n = self.storage.replicas.len();
        if n == 0 {
            return Err(invalid(
                "storage.replicas",
                "at least one replica is required",
            ));
        }
        let w = self.storage.effective_quorum();
        if w == 0 || w > n {
            return Err(invalid(
                "storage.write_quorum",
                format!("{w} is not between 1 and the number of replicas ({n})"),
            ));
        }
        for (i, r) in self.storage.replicas.iter().enumerate() {
            if r.trim().is_empty() {
                return Err(invalid(&format!("storage.replicas[{i}]"), "empty location"));
            }
        }
        if self.storage.prefix.contains("..") || self.storage.prefix.starts_with('/') {
            return Err(invalid(
                "storage.prefix",
                "must be a relative key prefix without `..`",
            ));
        }
        for h in &self.access.unknown_ae_hosts {
            HostPattern::parse(h).map_err(|e| invalid("access.unknown_ae_hosts", e.to_string()))?;
        }
        let mut seen = BTreeSet::new();
        for (i, p) in self.peers.iter().enumerate() {
            validate_ae_title(&format!("peer[{i}].ae_title"), &p.ae_title)?;
            if !seen.insert(p.ae_title.trim().to_string()) {
                return Err(invalid(
                    &format!("peer[{i}].ae_title"),
                    format!("`{}` is listed twice", p.ae_title),
                ));
            }
            if p.host.trim().is_empty() {
                return Err(invalid(&format!("peer[{i}].host"), "empty host"));
            }
            for h in p.hosts.iter().chain(p.hosts.is_empty().then_some(&p.host)) {
                HostPattern::parse(h)
                    .map_err(|e| invalid(&format!("peer[{i}].hosts"), e.to_string()))?;
            }
        }
        Ok(())
    }

    /// The known peer with this AE title (AE titles compare without padding, case-sensitively,
    /// as PS3.5 6.2 defines them).
    pub fn peer(&self, ae_title: &str) -> Option<&Peer> {
        let ae = ae_title.trim();
        self.peers.iter().find(|p| p.ae_title.trim() == ae)
    }

    /// What a conflicting re-send from `calling_ae` gets: its own policy, else the default.
    pub fn on_conflict(&self, calling_ae: &str) -> OnConflict {
        self.peer(calling_ae)
            .and_then(|p| p.on_conflict)
            .unwrap_or(self.access.on_conflict)
    }

    /// The addresses `calling_ae` is accepted from: its peer's `hosts` (else its `host`), or
    /// `access.unknown_ae_hosts` for an AE that is not a known peer. Validated at load.
    pub fn hosts_for(&self, calling_ae: &str) -> Vec<HostPattern> {
        let texts: Vec<&str> = match self.peer(calling_ae) {
            Some(p) if p.hosts.is_empty() => vec![p.host.as_str()],
            Some(p) => p.hosts.iter().map(String::as_str).collect(),
            None => self
                .access
                .unknown_ae_hosts
                .iter()
                .map(String::as_str)
                .collect(),
        };
        texts
            .into_iter()
            .filter_map(|t| HostPattern::parse(t).ok())
            .collect()
    }

    /// Services the calling AE may use: its peers entry, or the policy for unknown AEs.
    pub fn services_for(&self, calling_ae: &str) -> BTreeSet<Service> {
        match self.peer(calling_ae) {
            Some(p) => p.services.clone(),
            None => self.access.unknown_ae_services.clone(),
        }
    }
}

/// One entry of an address list: an IP network (a single address is a /32 or /128) or a DNS
/// name, resolved when it is used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Net { addr: std::net::IpAddr, prefix: u8 },
    Name(String),
}

/// An address-list entry that is neither an address, a network nor a host name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadHostPattern {
    #[error("`{text}`: prefix is not 0..={max}")]
    Prefix { text: String, max: u8 },
    #[error("`{0}` is not an IP address, a CIDR network or a host name")]
    Neither(String),
}

impl HostPattern {
    pub fn parse(text: &str) -> Result<HostPattern, BadHostPattern> {
        let text = text.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        if let Ok(addr) = addr.parse::<std::net::IpAddr>() {
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let prefix = match prefix {
                None => max,
                Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(|| {
                    BadHostPattern::Prefix {
                        text: text.to_string(),
                        max,
                    }
                })?,
            };
            return Ok(HostPattern::Net {
                addr: addr.to_canonical(),
                prefix,
            });
        }
        let name_ok = prefix.is_none()
            && !text.is_empty()
            && text.len() <= 253
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
        if name_ok {
            Ok(HostPattern::Name(text.to_ascii_lowercase()))
        } else {
            Err(BadHostPattern::Neither(text.to_string()))
        }
    }

    /// Whether `ip` is in this network (names never match here: resolve them first).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let HostPattern::Net { addr, prefix } = self else {
            return false;
        };
        match (addr, ip.to_canonical()) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(*prefix)).unwrap_or(0);
                u32::from(*a) & mask == u32::from(b) & mask
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(*prefix)).unwrap_or(0);
                u128::from(*a) & mask == u128::from(b) & mask
            }
            _ => false,
        }
    }
}

/// Load a peers file (`[[peer]]` tables).
pub fn load_peers(path: &Path) -> Result<Vec<Peer>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let file: PeersFile = toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        source: Box::new(e),
    })?;
    Ok(file.peer)
}

/// PS3.5 Table 6.2-1 (AE): 1-16 characters of the default repertoire, no backslash or
/// control characters, not all spaces.
impl HaConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.node_id.trim().is_empty() || self.node_id.len() > 64 {
            return Err(invalid("ha.node_id", "must be 1 to 64 characters"));
        }
        if self.links.is_empty() {
            return Err(invalid("ha.links", "at least one heartbeat link is needed"));
        }
        let addr = |key: &str, v: &str| {
            v.parse::<std::net::SocketAddr>()
                .map(|_| ())
                .map_err(|_| invalid(key, format!("`{v}` is not an IP address with a port")))
        };
        for l in &self.links {
            addr("ha.links.bind", &l.bind)?;
            addr("ha.links.peer", &l.peer)?;
        }
        addr("ha.replication_bind", &self.replication_bind)?;
        addr("ha.peer_replication", &self.peer_replication)?;
        if self.arbiter.trim().is_empty() {
            return Err(invalid(
                "ha.arbiter",
                "an arbiter is needed to grant epochs",
            ));
        }
        if let Some(ip) = &self.service_ip {
            let ok = ip.split_once('/').is_some_and(|(a, p)| {
                a.parse::<std::net::Ipv4Addr>().is_ok() && p.parse::<u8>().is_ok_and(|p| p <= 32)
            });
            if !ok {
                return Err(invalid(
                    "ha.service_ip",
                    format!("`{ip}` is not an IPv4 address with a prefix (10.0.0.100/24)"),
                ));
            }
            if self.interface.is_none() {
                return Err(invalid("ha.interface", "needed with ha.service_ip"));
            }
        }
        if !(10..=10_000).contains(&self.heartbeat_ms) {
            return Err(invalid("ha.heartbeat_ms", "must be between 10 and 10000"));
        }
        if self.lease_ms < 3 * self.heartbeat_ms {
            return Err(invalid(
                "ha.lease_ms",
                "must be at least three heartbeat intervals",
            ));
        }
        if self.margin_ms < self.heartbeat_ms {
            return Err(invalid(
                "ha.margin_ms",
                "must be at least one heartbeat interval",
            ));
        }
        if self.key_file.is_none() {
            return Err(invalid(
                "ha.key_file",
                "a shared key authenticates the pair's heartbeats: make one with \
                 `head -c 32 /dev/urandom > ha.key; chmod 600 ha.key` and copy it to both nodes",
            ));
        }
        Ok(())
    }
}

pub fn validate_ae_title(key: &str, ae: &str) -> Result<(), ConfigError> {
    if ae.trim().is_empty() {
        return Err(invalid(key, "an AE title may not be empty"));
    }
    if ae.len() > 16 {
        return Err(invalid(key, format!("`{ae}` is longer than 16 characters")));
    }
    if ae.chars().any(|c| !(' '..='~').contains(&c) || c == '\\') {
        return Err(invalid(
            key,
            format!("`{ae}` has characters outside the default repertoire"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let c: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: "t.toml".into(),
            source: Box::new(e),
        })?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn defaults_are_the_embedded_node() {
        let c = parse("").unwrap();
        assert_eq!(c.node.ae_title, "PACSD");
        assert_eq!(c.node.port, 11112);
        assert_eq!(c.storage.replicas.len(), 3);
        assert_eq!(c.storage.effective_quorum(), 2);
        assert!(c.access.unknown_ae_services.contains(&Service::Store));
        assert!(!c.access.unknown_ae_services.contains(&Service::Find));
    }

    #[test]
    fn unknown_key_is_named() {
        let err = parse("[node]\nae_titel = \"X\"\n").unwrap_err().to_string();
        assert!(err.contains("ae_titel"), "{err}");
    }

    #[test]
    fn invalid_values_name_their_key() {
        let cases = [
            (
                "[node]\nae_title = \"THIS_TITLE_IS_TOO_LONG\"",
                "node.ae_title",
            ),
            ("[node]\nmax_pdu = 10", "node.max_pdu"),
            ("[node]\nbind = \"nowhere\"", "node.bind"),
            ("[storage]\nreplicas = []", "storage.replicas"),
            (
                "[storage]\nreplicas = [\"a\"]\nwrite_quorum = 2",
                "storage.write_quorum",
            ),
            ("[timeouts]\nidle_secs = -1.0", "timeouts.idle_secs"),
            ("[http]\ntls = true", "http.tls"),
        ];
        for (text, key) in cases {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn quorum_defaults_to_majority() {
        for (n, w) in [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3)] {
            let s = StorageConfig {
                replicas: (0..n).map(|i| format!("r{i}")).collect(),
                ..StorageConfig::default()
            };
            assert_eq!(s.effective_quorum(), w, "n={n}");
        }
    }

    #[test]
    fn host_patterns_match_networks_and_refuse_nonsense() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let lo = HostPattern::parse("127.0.0.0/8").unwrap();
        assert!(lo.contains(ip("127.0.0.1")) && lo.contains(ip("127.9.9.9")));
        assert!(!lo.contains(ip("10.0.0.1")));
        // IPv4-mapped IPv6 (a listener on [::]) is the IPv4 address.
        assert!(lo.contains(ip("::ffff:127.0.0.1")));
        let one = HostPattern::parse("192.0.2.10").unwrap();
        assert!(one.contains(ip("192.0.2.10")) && !one.contains(ip("192.0.2.11")));
        assert!(HostPattern::parse("::1").unwrap().contains(ip("::1")));
        assert!(
            HostPattern::parse("0.0.0.0/0")
                .unwrap()
                .contains(ip("203.0.113.5"))
        );
        assert_eq!(
            HostPattern::parse("CT1.Example.org").unwrap(),
            HostPattern::Name("ct1.example.org".into())
        );
        for bad in ["10.0.0.0/33", "", "a b", "host/8", "x;rm"] {
            assert!(HostPattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn services_follow_peers_then_policy() {
        let mut c = parse("[access]\nunknown_ae_services = [\"echo\"]").unwrap();
        c.peers = vec![Peer::new(
            "WS1",
            "127.0.0.1",
            104,
            &[Service::Find, Service::Move],
        )];
        assert!(c.services_for("WS1 ").contains(&Service::Move));
        assert!(!c.services_for("WS1").contains(&Service::Store));
        assert_eq!(
            c.services_for("OTHER").into_iter().collect::<Vec<_>>(),
            vec![Service::Echo]
        );
    }
}
