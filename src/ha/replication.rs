//! Index replication between the two nodes of a pair over TCP (DRBD protocol C semantics:
//! the primary acknowledges a C-STORE only after the standby applied its index record).
//!
//! The standby listens; the primary connects and says its epoch; the standby answers with
//! the end of its change log (seq, epoch). If that row is in the primary's change log with
//! the same epoch, the standby's history is a prefix of the primary's and the missing rows
//! are shipped; otherwise the primary ships a snapshot of its whole index and the standby
//! sets its own database aside (`<index>.diverged-<epoch>-<time>.sqlite`), never merging it.
//! Then every committed row follows as it is committed (with its epoch, seq and a SHA-256
//! of the record), each acknowledged by seq.
//!
//! Frames: a 4-byte big-endian length, then JSON (a snapshot's bytes follow its frame).
//! Before anything else both nodes prove they hold the pair key (challenge-response over two
//! fresh nonces); everything after that travels sealed (channel.rs): encrypted, authenticated
//! and numbered.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use super::channel::{self, Side};
use super::heartbeat::BeatKey;
use crate::audit::{Audit, Event, NODE_AUTHENTICATION, Outcome, Role, SECURITY_ALERT};
use crate::index::replica::ChangeRecord;
use crate::index::{Index, IndexError};
use crate::net::Shutdown;

/// Largest JSON frame read (a record is a few KiB).
const MAX_FRAME: u32 = 1 << 20;
/// Largest snapshot accepted.
const MAX_SNAPSHOT: u64 = 1 << 40;
/// Connecting to the standby, and every exchange of the handshake, must fit in this.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// A snapshot transfer and its installation.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(600);
/// The primary sends a ping when it has had nothing to send for this long; the standby
/// gives a connection up after `IDLE_LIMIT` without any frame.
const PING_EVERY: Duration = Duration::from_secs(1);
const IDLE_LIMIT: Duration = Duration::from_secs(10);
/// Rows read from the change log and sent at a time.
const BATCH: usize = 256;
/// Wait between attempts to reach the standby.
const RECONNECT_AFTER: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    #[error("replication link: {0}")]
    Io(#[from] std::io::Error),
    #[error("replication frame: {0}")]
    Frame(String),
    #[error("index: {0}")]
    Index(#[from] IndexError),
    #[error("{0}")]
    Refused(String),
    #[error("timed out: {0}")]
    Timeout(&'static str),
    #[error("the standby is stopping (planned)")]
    PeerLeaving,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
enum Frame {
    /// Both sides, first: a fresh random nonce (hex) for the mutual proof of the pair key.
    Challenge {
        nonce: String,
    },
    /// HMAC of the role and both nonces under the pair key (`prove`).
    Proof {
        mac: String,
    },
    /// Primary -> standby, first: who is sending, in which epoch, with which index schema.
    Primary {
        node: String,
        epoch: u64,
        #[serde(default = "schema_before_the_field")]
        schema: usize,
    },
    /// Standby -> primary: the end of its change log, and its index schema.
    Hello {
        node: String,
        last_seq: i64,
        last_epoch: u64,
        #[serde(default = "schema_before_the_field")]
        schema: usize,
    },
    /// Primary -> standby: the whole index follows (`bytes` raw bytes).
    Snapshot {
        bytes: u64,
        last_seq: i64,
    },
    /// One committed change-log row, with the SHA-256 of its JSON (`record_sum`): the
    /// standby applies only a record that arrives as it was committed.
    Record {
        change: Box<ChangeRecord>,
        sum: String,
    },
    Ping,
    /// Planned switchover: the primary has stopped serving in `epoch`; take over.
    HandOver {
        epoch: u64,
    },
    /// Standby -> primary: everything up to `seq` is applied.
    Ack {
        seq: i64,
    },
    /// Standby -> primary: this node is stopping on purpose (a planned stop, not a failure).
    Leaving,
    Refused {
        reason: String,
    },
}

/// The index schema of builds that did not say theirs (three migrations).
fn schema_before_the_field() -> usize {
    3
}

/// Records and snapshots go only between nodes with the same index schema: a record of
/// another schema could not be applied as it was committed, and a snapshot of a newer one
/// cannot even be opened. The refusal says what to do.
fn schema_mismatch(ours: usize, theirs: usize, them: &str) -> Option<String> {
    (ours != theirs).then(|| {
        format!(
            "index schema {ours} here, {theirs} at the {them}: replication between different \
             schemas is refused; run the same pacsd version on both nodes (upgrade the standby, \
             switch over, upgrade the other)"
        )
    })
}

async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, f: &Frame) -> Result<(), ReplicationError> {
    let body = serde_json::to_vec(f).map_err(|e| ReplicationError::Frame(e.to_string()))?;
    w.write_all(&(body.len() as u32).to_be_bytes()).await?;
    w.write_all(&body).await?;
    w.flush().await?;
    Ok(())
}

async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Frame, ReplicationError> {
    let len = r.read_u32().await?;
    if len > MAX_FRAME {
        return Err(ReplicationError::Frame(format!(
            "frame of {len} bytes (at most {MAX_FRAME})"
        )));
    }
    let mut body = vec![0; len as usize];
    r.read_exact(&mut body).await?;
    decode_frame(&body)
}

/// One frame's body as it came off the wire.
fn decode_frame(body: &[u8]) -> Result<Frame, ReplicationError> {
    serde_json::from_slice(body).map_err(|e| ReplicationError::Frame(e.to_string()))
}

/// For the fuzz target: decode a frame body (whatever a peer sends) and drop it.
#[doc(hidden)]
pub fn fuzz_frame(body: &[u8]) -> bool {
    decode_frame(body).is_ok()
}

/// A fresh 32-byte nonce from the kernel's random source, hex.
fn nonce() -> Result<String, ReplicationError> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(hex::encode(bytes))
}

/// The proof that `role` ("primary" or "standby") holds the pair key, bound to both nonces
/// of this connection (so it can be neither replayed nor reflected).
fn prove(key: &BeatKey, role: &str, primary_nonce: &str, standby_nonce: &str) -> String {
    hex::encode(key.tag(&proof_parts(role, primary_nonce, standby_nonce)))
}

fn proof_valid(
    key: &BeatKey,
    role: &str,
    primary_nonce: &str,
    standby_nonce: &str,
    mac: &str,
) -> bool {
    hex::decode(mac)
        .is_ok_and(|tag| key.verify(&proof_parts(role, primary_nonce, standby_nonce), &tag))
}

/// What a proof authenticates: the protocol, the prover's role and both nonces.
fn proof_parts<'a>(role: &'a str, primary_nonce: &'a str, standby_nonce: &'a str) -> [&'a [u8]; 4] {
    [
        b"pacsd replication",
        role.as_bytes(),
        primary_nonce.as_bytes(),
        standby_nonce.as_bytes(),
    ]
}

/// The standby's side of the mutual proof: the primary's nonce arrives, ours goes back with
/// our proof, then the primary's proof must check out. Nothing else is read or sent first.
async fn standby_handshake<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    key: &BeatKey,
    r: &mut R,
    w: &mut W,
) -> Result<(String, String), ReplicationError> {
    let theirs = match timed(HANDSHAKE_TIMEOUT, "challenge", read_frame(r)).await? {
        Frame::Challenge { nonce } if nonce.len() == 64 => nonce,
        _ => {
            return Err(ReplicationError::Refused(
                "no challenge from the peer".into(),
            ));
        }
    };
    let ours = nonce()?;
    write_frame(
        w,
        &Frame::Challenge {
            nonce: ours.clone(),
        },
    )
    .await?;
    write_frame(
        w,
        &Frame::Proof {
            mac: prove(key, "standby", &theirs, &ours),
        },
    )
    .await?;
    match timed(HANDSHAKE_TIMEOUT, "proof", read_frame(r)).await? {
        Frame::Proof { mac } if proof_valid(key, "primary", &theirs, &ours, &mac) => {
            Ok((theirs, ours))
        }
        _ => Err(ReplicationError::Refused(
            "the peer did not prove the pair key".into(),
        )),
    }
}

/// The primary's side: our nonce out, the standby's nonce and proof in (checked before we
/// send anything else, so an impostor standby gets no record and no snapshot), our proof out.
async fn primary_handshake<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    key: &BeatKey,
    r: &mut R,
    w: &mut W,
) -> Result<(String, String), ReplicationError> {
    let ours = nonce()?;
    write_frame(
        w,
        &Frame::Challenge {
            nonce: ours.clone(),
        },
    )
    .await?;
    let theirs = match timed(HANDSHAKE_TIMEOUT, "challenge", read_frame(r)).await? {
        Frame::Challenge { nonce } if nonce.len() == 64 => nonce,
        _ => {
            return Err(ReplicationError::Refused(
                "no challenge from the standby".into(),
            ));
        }
    };
    match timed(HANDSHAKE_TIMEOUT, "proof", read_frame(r)).await? {
        Frame::Proof { mac } if proof_valid(key, "standby", &ours, &theirs, &mac) => {}
        _ => {
            return Err(ReplicationError::Refused(
                "the standby did not prove the pair key".into(),
            ));
        }
    }
    write_frame(
        w,
        &Frame::Proof {
            mac: prove(key, "primary", &ours, &theirs),
        },
    )
    .await?;
    Ok((ours, theirs))
}

async fn timed<T>(
    limit: Duration,
    what: &'static str,
    f: impl Future<Output = Result<T, ReplicationError>>,
) -> Result<T, ReplicationError> {
    tokio::time::timeout(limit, f)
        .await
        .map_err(|_| ReplicationError::Timeout(what))?
}

/// Connections from the peer's address waiting while another is served.
const QUEUED_CONNECTIONS: usize = 4;

/// A task that ends with its owner.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Refusals logged (and audited) at most once per source address in 10 s.
#[derive(Default)]
struct RateLimit(std::collections::HashMap<std::net::IpAddr, std::time::Instant>);

impl RateLimit {
    fn due(&mut self, from: SocketAddr) -> bool {
        let now = std::time::Instant::now();
        let due = self
            .0
            .get(&from.ip())
            .is_none_or(|t| now.duration_since(*t) >= Duration::from_secs(10));
        if due {
            self.0.insert(from.ip(), now);
        }
        due
    }
}

/// What the standby side tells the HA driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StandbyEvent {
    /// The primary handed over in `epoch` (planned switchover).
    TakeOver { epoch: u64 },
}

/// The standby's side: owns the index while the node is standby.
pub struct StandbyServer {
    pub node: String,
    pub index_path: PathBuf,
    /// The newest epoch this node knows (from heartbeats and the arbiter): a primary in an
    /// older one is refused.
    pub known_epoch: Arc<AtomicU64>,
    pub events: mpsc::Sender<StandbyEvent>,
    /// Last change-log seq applied (for heartbeats and status).
    pub applied: Arc<std::sync::atomic::AtomicI64>,
    /// The pair key the primary must prove it holds.
    pub key: BeatKey,
    /// The only address a primary may connect from (the peer's).
    pub peer_ip: std::net::IpAddr,
    /// Refused connections are audited (security alerts).
    pub audit: Audit,
}

impl StandbyServer {
    /// Serve primaries one connection at a time until `shutdown`; returns the index.
    pub async fn run(
        self,
        listener: Arc<TcpListener>,
        index: Index,
        mut shutdown: Shutdown,
    ) -> Index {
        let mut index = index;
        let mut refusals = RateLimit::default();
        // Connections are accepted all the time (so connections from elsewhere are refused
        // at once and cannot fill the backlog the primary reconnects through), and served
        // one at a time: those from the peer's address wait their turn, a few at most.
        let (queued, mut next) = mpsc::channel::<(TcpStream, SocketAddr)>(QUEUED_CONNECTIONS);
        let acceptor = AbortOnDrop(tokio::spawn({
            let peer_ip = self.peer_ip;
            let alert = self.alerter();
            async move {
                let mut refusals = RateLimit::default();
                loop {
                    let (stream, peer) = match listener.accept().await {
                        Ok(x) => x,
                        Err(e) => {
                            warn!(error = %e, "replication accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    if peer.ip().to_canonical() != peer_ip.to_canonical() {
                        if refusals.due(peer) {
                            warn!(%peer, "replication connection from an address other than the peer's refused (further ones from this address are not logged for 10 s)");
                            alert(
                                peer,
                                "replication connection from an address other than the peer's",
                            );
                        }
                        continue;
                    }
                    if queued.try_send((stream, peer)).is_err() {
                        debug!(%peer, "replication connection dropped: others are waiting");
                    }
                }
            }
        }));
        loop {
            let (stream, peer) = tokio::select! {
                Some(x) = next.recv() => x,
                _ = shutdown.wait() => return index,
            };
            let _ = stream.set_nodelay(true);
            let mut sd = shutdown.clone();
            let result = tokio::select! {
                // (biased: on shutdown `serve` first tells the primary it is leaving)
                biased;
                r = self.serve(stream, &mut index, shutdown.clone()) => r,
                _ = sd.wait() => return index,
            };
            if shutdown.is_triggered() {
                return index;
            }
            match result {
                Ok(()) => debug!(%peer, "replication connection closed"),
                Err(ReplicationError::Refused(why)) if why.contains("pair key") => {
                    if refusals.due(peer) {
                        warn!(%peer, why, "replication connection refused");
                        (self.alerter())(peer, &why);
                    }
                }
                Err(e) => warn!(%peer, error = %e, "replication connection ended"),
            }
            let _ = &acceptor;
        }
    }

    /// What audits a refused replication connection (a security alert).
    fn alerter(&self) -> impl Fn(SocketAddr, &str) + Send + 'static {
        let (audit, node) = (self.audit.clone(), self.node.clone());
        move |peer, why| {
            audit.record(
                Event::new(
                    SECURITY_ALERT,
                    Some(NODE_AUTHENTICATION),
                    'E',
                    Outcome::MinorFailure,
                )
                .describe(format!("replication refused: {why}"))
                .by("-", Some(peer.ip().to_string()), Role::Source)
                .to(&node, None, Role::Destination),
            )
        }
    }

    async fn serve(
        &self,
        stream: TcpStream,
        index: &mut Index,
        mut stop: Shutdown,
    ) -> Result<(), ReplicationError> {
        let (mut r, mut w) = stream.into_split();
        let (pn, sn) = standby_handshake(&self.key, &mut r, &mut w).await?;
        // From here on, sealed records only (see channel.rs).
        let (mut r, mut w) = channel::seal((r, w), &self.key, Side::Standby, &pn, &sn);
        let epoch = match timed(HANDSHAKE_TIMEOUT, "primary hello", read_frame(&mut r)).await? {
            Frame::Primary {
                node,
                epoch,
                schema,
            } => {
                if let Some(why) = schema_mismatch(crate::index::SCHEMA_VERSION, schema, "primary")
                {
                    warn!(primary = node, "{why}");
                    return Err(refuse(&mut w, why).await);
                }
                let known = self.known_epoch.load(Ordering::SeqCst);
                if epoch < known {
                    return Err(refuse(
                        &mut w,
                        format!("{node} is primary of epoch {epoch}, but epoch {known} exists"),
                    )
                    .await);
                }
                self.known_epoch.fetch_max(epoch, Ordering::SeqCst);
                info!(primary = node, epoch, "replicating from the primary");
                epoch
            }
            other => {
                return Err(ReplicationError::Frame(format!(
                    "expected hello, got {other:?}"
                )));
            }
        };
        let (last_seq, last_epoch) = index.last_change().await?;
        self.applied.store(last_seq, Ordering::SeqCst);
        write_frame(
            &mut w,
            &Frame::Hello {
                node: self.node.clone(),
                last_seq,
                last_epoch,
                schema: crate::index::SCHEMA_VERSION,
            },
        )
        .await?;
        loop {
            let frame = tokio::select! {
                f = timed(IDLE_LIMIT, "a frame from the primary", read_frame(&mut r)) => f?,
                _ = stop.wait() => {
                    // A planned stop: the primary goes on alone at once instead of waiting
                    // to notice.
                    let _ = write_frame(&mut w, &Frame::Leaving).await;
                    let _ = w.shutdown().await;
                    // Until the primary closes (it does on `Leaving`), so the frame is out
                    // before this process goes.
                    let _ = tokio::time::timeout(Duration::from_millis(500), async {
                        let mut sink = [0u8; 4096];
                        while r.read(&mut sink).await.is_ok_and(|n| n > 0) {}
                    })
                    .await;
                    return Ok(());
                }
            };
            if self.known_epoch.load(Ordering::SeqCst) > epoch {
                return Err(ReplicationError::Refused(format!(
                    "epoch {epoch} was superseded"
                )));
            }
            match frame {
                Frame::Record { change, sum } => {
                    let seq = change.seq;
                    if record_sum(&change) != sum {
                        return Err(refuse(
                            &mut w,
                            format!("record {seq} does not match its checksum"),
                        )
                        .await);
                    }
                    index.apply_replicated(*change, Vec::new()).await?;
                    self.applied.store(seq, Ordering::SeqCst);
                    write_frame(&mut w, &Frame::Ack { seq }).await?;
                }
                Frame::Snapshot { bytes, last_seq } => {
                    timed(
                        SNAPSHOT_TIMEOUT,
                        "snapshot",
                        self.install_snapshot(&mut r, bytes, index, epoch),
                    )
                    .await?;
                    self.applied.store(last_seq, Ordering::SeqCst);
                    info!(last_seq, bytes, "index snapshot from the primary installed");
                    write_frame(&mut w, &Frame::Ack { seq: last_seq }).await?;
                }
                Frame::Ping => {}
                Frame::HandOver { epoch } => {
                    let _ = self.events.send(StandbyEvent::TakeOver { epoch }).await;
                }
                other => {
                    return Err(ReplicationError::Frame(format!("unexpected {other:?}")));
                }
            }
        }
    }

    /// Receive `bytes` of database, set the current one aside, and open the new one in
    /// `index`'s place.
    async fn install_snapshot<R: AsyncRead + Unpin>(
        &self,
        r: &mut R,
        bytes: u64,
        index: &mut Index,
        epoch: u64,
    ) -> Result<(), ReplicationError> {
        if bytes > MAX_SNAPSHOT {
            return Err(ReplicationError::Frame(format!(
                "snapshot of {bytes} bytes"
            )));
        }
        let tmp = sibling(&self.index_path, "incoming.sqlite");
        let mut file = tokio::fs::File::create(&tmp).await?;
        let mut limited = r.take(bytes);
        let copied = tokio::io::copy(&mut limited, &mut file).await?;
        if copied != bytes {
            return Err(ReplicationError::Frame(format!(
                "snapshot ended after {copied} of {bytes} bytes"
            )));
        }
        file.sync_all().await?;
        drop(file);
        // Close the current index (this server must hold the only handle); a scratch index
        // stands in while the files are swapped.
        let scratch_path = sibling(&self.index_path, "swap.sqlite");
        let current = std::mem::replace(index, Index::open(&scratch_path)?);
        if let Err(still_open) = current.close() {
            let scratch = std::mem::replace(index, still_open);
            let _ = scratch.close();
            return Err(ReplicationError::Refused(
                "the index is still in use".into(),
            ));
        }
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let aside = sibling(
            &self.index_path,
            &format!("diverged-{epoch}-{stamp}.sqlite"),
        );
        if tokio::fs::metadata(&self.index_path).await.is_ok() {
            tokio::fs::rename(&self.index_path, &aside).await?;
            warn!(kept = %aside.display(), "the standby's own index was set aside (not merged)");
        }
        for suffix in ["-wal", "-shm"] {
            let _ = tokio::fs::remove_file(format!("{}{suffix}", self.index_path.display())).await;
        }
        tokio::fs::rename(&tmp, &self.index_path).await?;
        let scratch = std::mem::replace(index, Index::open(&self.index_path)?);
        let _ = scratch.close();
        for suffix in ["", "-wal", "-shm"] {
            let _ = tokio::fs::remove_file(format!("{}{suffix}", scratch_path.display())).await;
        }
        Ok(())
    }
}

/// Tell the primary why it is refused (best effort); the error to end the connection with.
async fn refuse<W: AsyncWrite + Unpin>(w: &mut W, reason: String) -> ReplicationError {
    if let Err(e) = write_frame(
        w,
        &Frame::Refused {
            reason: reason.clone(),
        },
    )
    .await
    {
        return e;
    }
    ReplicationError::Refused(reason)
}

/// Hex SHA-256 of a change-log row's JSON.
fn record_sum(change: &ChangeRecord) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(
        serde_json::to_vec(change).unwrap_or_default(),
    ))
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    PathBuf::from(format!("{}.{suffix}", path.display()))
}

/// What the primary side tells the HA driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrimaryEvent {
    /// The standby has every committed record.
    CaughtUp,
    /// The link to the standby broke.
    Lost,
}

/// The primary's side: ships the change log to the standby.
pub struct Replicator {
    pub node: String,
    pub epoch: u64,
    pub peer: SocketAddr,
    pub index: Index,
    /// Highest seq the standby has acknowledged (C-STORE responses wait on it).
    pub acked: watch::Sender<i64>,
    pub events: mpsc::Sender<PrimaryEvent>,
    pub handover: mpsc::Receiver<()>,
    /// The pair key the standby must prove it holds before it is sent anything.
    pub key: BeatKey,
    /// The address to connect from (this node's replication address, the one the standby
    /// accepts).
    pub local_ip: std::net::IpAddr,
}

impl Replicator {
    /// Reach the standby and keep it up to date until `shutdown`.
    pub async fn run(mut self, mut shutdown: Shutdown) {
        let mut lost_reported = true;
        // A refusal is logged when it first comes and when it changes, not every retry.
        let mut last_refusal: Option<String> = None;
        loop {
            let mut sd = shutdown.clone();
            let outcome = tokio::select! {
                r = self.session(&mut lost_reported) => r,
                _ = sd.wait() => return,
            };
            match outcome {
                Err(ReplicationError::PeerLeaving) => {
                    info!(peer = %self.peer, "the standby is stopping (planned): going on alone at once");
                }
                Err(ReplicationError::Refused(why)) => {
                    if last_refusal.as_deref() != Some(why.as_str()) {
                        warn!(peer = %self.peer, why, "replication refused");
                        last_refusal = Some(why);
                    }
                }
                Err(e) => debug!(peer = %self.peer, error = %e, "replication session ended"),
                Ok(()) => last_refusal = None,
            }
            if !lost_reported {
                lost_reported = true;
                let _ = self.events.send(PrimaryEvent::Lost).await;
            }
            tokio::select! {
                _ = tokio::time::sleep(RECONNECT_AFTER) => {}
                _ = shutdown.wait() => return,
            }
        }
    }

    async fn session(&mut self, lost_reported: &mut bool) -> Result<(), ReplicationError> {
        let socket = if self.peer.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.bind(SocketAddr::new(self.local_ip, 0))?;
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(self.peer))
            .await
            .map_err(|_| ReplicationError::Timeout("connecting to the standby"))??;
        stream.set_nodelay(true)?;
        let (mut r, mut w) = stream.into_split();
        let (pn, sn) = primary_handshake(&self.key, &mut r, &mut w).await?;
        let (mut r, mut w) = channel::seal((r, w), &self.key, Side::Primary, &pn, &sn);
        write_frame(
            &mut w,
            &Frame::Primary {
                node: self.node.clone(),
                epoch: self.epoch,
                schema: crate::index::SCHEMA_VERSION,
            },
        )
        .await?;
        let (their_seq, their_epoch) =
            match timed(HANDSHAKE_TIMEOUT, "standby hello", read_frame(&mut r)).await? {
                Frame::Hello {
                    last_seq,
                    last_epoch,
                    schema,
                    ..
                } => {
                    if let Some(why) =
                        schema_mismatch(crate::index::SCHEMA_VERSION, schema, "standby")
                    {
                        return Err(ReplicationError::Refused(why));
                    }
                    (last_seq, last_epoch)
                }
                Frame::Refused { reason } => return Err(ReplicationError::Refused(reason)),
                other => {
                    return Err(ReplicationError::Frame(format!(
                        "expected hello, got {other:?}"
                    )));
                }
            };
        let prefix = their_seq == 0 || self.index.epoch_at(their_seq).await? == Some(their_epoch);
        let mut sent = if prefix {
            info!(
                standby_seq = their_seq,
                "standby connected; shipping the change log from there"
            );
            their_seq
        } else {
            info!(
                standby_seq = their_seq,
                standby_epoch = their_epoch,
                "standby history differs; shipping a snapshot"
            );
            self.ship_snapshot(&mut r, &mut w).await?
        };
        self.acked.send_replace(sent);
        *lost_reported = false;

        // Acks come back on their own task.
        let acked = self.acked.clone();
        let mut reader = tokio::spawn(async move {
            loop {
                match read_frame(&mut r).await {
                    Ok(Frame::Ack { seq }) => {
                        acked.send_if_modified(|a| {
                            let newer = seq > *a;
                            *a = (*a).max(seq);
                            newer
                        });
                    }
                    Ok(Frame::Refused { reason }) => return ReplicationError::Refused(reason),
                    Ok(Frame::Leaving) => return ReplicationError::PeerLeaving,
                    Ok(other) => return ReplicationError::Frame(format!("unexpected {other:?}")),
                    Err(e) => return e,
                }
            }
        });
        let mut commits = self.index.commits();
        let mut acks = self.acked.subscribe();
        let mut caught_up = false;
        loop {
            let rows = self.index.changes_after(sent, BATCH).await?;
            for change in &rows {
                write_frame(
                    &mut w,
                    &Frame::Record {
                        change: Box::new(change.clone()),
                        sum: record_sum(change),
                    },
                )
                .await?;
                sent = change.seq;
            }
            if rows.len() == BATCH {
                continue;
            }
            if !caught_up && *acks.borrow_and_update() >= sent {
                caught_up = true;
                let _ = self.events.send(PrimaryEvent::CaughtUp).await;
            }
            tokio::select! {
                _ = commits.changed() => {}
                _ = acks.changed(), if !caught_up => {}
                h = self.handover.recv() => {
                    if h.is_some() {
                        write_frame(&mut w, &Frame::HandOver { epoch: self.epoch }).await?;
                    }
                }
                _ = tokio::time::sleep(PING_EVERY) => {
                    write_frame(&mut w, &Frame::Ping).await?;
                }
                e = &mut reader => {
                    return Err(e.unwrap_or_else(|j| ReplicationError::Frame(j.to_string())));
                }
            }
        }
    }

    /// Send the whole index; the seq the standby then has.
    async fn ship_snapshot<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
        &self,
        r: &mut R,
        w: &mut W,
    ) -> Result<i64, ReplicationError> {
        let path = sibling(self.index.path(), "outgoing.sqlite");
        let _ = tokio::fs::remove_file(&path).await;
        self.index.snapshot_into(&path).await?;
        let last_seq: i64 = rusqlite::Connection::open(&path)
            .and_then(|c| {
                c.query_row("SELECT coalesce(max(seq), 0) FROM changelog", [], |r| {
                    r.get(0)
                })
            })
            .map_err(IndexError::from)?;
        let shipped = async {
            let mut file = tokio::fs::File::open(&path).await?;
            let bytes = file.metadata().await?.len();
            write_frame(w, &Frame::Snapshot { bytes, last_seq }).await?;
            tokio::io::copy(&mut file, w).await?;
            w.flush().await?;
            match read_frame(r).await? {
                Frame::Ack { seq } if seq == last_seq => Ok(last_seq),
                other => Err(ReplicationError::Frame(format!(
                    "snapshot answered with {other:?}"
                ))),
            }
        };
        let result = timed(SNAPSHOT_TIMEOUT, "snapshot", shipped).await;
        let _ = tokio::fs::remove_file(&path).await;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_oversized_ones_are_refused() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        write_frame(&mut a, &Frame::Ack { seq: 42 }).await.unwrap();
        assert!(matches!(
            read_frame(&mut b).await.unwrap(),
            Frame::Ack { seq: 42 }
        ));
        a.write_all(&(MAX_FRAME + 1).to_be_bytes()).await.unwrap();
        let err = read_frame(&mut b).await.unwrap_err().to_string();
        assert!(err.contains("at most"), "{err}");
    }

    // Paused time: the side left waiting for a proof that never comes times out at once.
    #[tokio::test(start_paused = true)]
    async fn both_sides_must_prove_the_pair_key_before_anything_else() {
        let key = BeatKey::new(&[3u8; 32]).unwrap();
        let other = BeatKey::new(&[4u8; 32]).unwrap();
        for (primary_key, standby_key, ok) in [(&key, &key, true), (&key, &other, false)] {
            let (a, b) = tokio::io::duplex(64 * 1024);
            let (mut ar, mut aw) = tokio::io::split(a);
            let (mut br, mut bw) = tokio::io::split(b);
            let (p, s) = tokio::join!(
                primary_handshake(primary_key, &mut ar, &mut aw),
                standby_handshake(standby_key, &mut br, &mut bw)
            );
            assert_eq!(p.is_ok(), ok, "{p:?}");
            if ok {
                assert!(s.is_ok(), "{s:?}");
            }
        }
        // A peer that sends a primary hello without the handshake is refused at once.
        let (a, b) = tokio::io::duplex(64 * 1024);
        let (_ar, mut aw) = tokio::io::split(a);
        let (mut br, mut bw) = tokio::io::split(b);
        write_frame(
            &mut aw,
            &Frame::Primary {
                node: "mallory".into(),
                epoch: 9,
                schema: crate::index::SCHEMA_VERSION,
            },
        )
        .await
        .unwrap();
        assert!(matches!(
            standby_handshake(&key, &mut br, &mut bw).await,
            Err(ReplicationError::Refused(_))
        ));
    }

    /// Connect to `to` from the loopback address `from`.
    async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket
            .bind(SocketAddr::new(from.parse().unwrap(), 0))
            .unwrap();
        socket.connect(to).await.unwrap()
    }

    /// Every frame the other side sends until it closes (or goes quiet for 2 s).
    async fn frames_until_closed(r: &mut tokio::net::tcp::OwnedReadHalf) -> Vec<Frame> {
        let mut got = Vec::new();
        while let Ok(Ok(f)) = tokio::time::timeout(Duration::from_secs(2), read_frame(r)).await {
            got.push(f);
        }
        got
    }

    #[tokio::test]
    async fn a_standby_answers_only_its_peer_and_only_with_the_pair_key() {
        let dir = tempfile::tempdir().unwrap();
        let index_path = dir.path().join("i.sqlite");
        let index = Index::open(&index_path).unwrap();
        let listener = Arc::new(TcpListener::bind("127.0.0.1:0").await.unwrap());
        let addr = listener.local_addr().unwrap();
        let key = BeatKey::new(&[5u8; 32]).unwrap();
        let (events, _events_rx) = mpsc::channel(4);
        let server = StandbyServer {
            node: "b".into(),
            index_path,
            known_epoch: Arc::new(AtomicU64::new(1)),
            events,
            applied: Arc::new(std::sync::atomic::AtomicI64::new(0)),
            key: key.clone(),
            peer_ip: "127.0.0.2".parse().unwrap(),
            audit: Audit::open(&dir.path().join("audit.log"), "PACSD", None).unwrap(),
        };
        let (trigger, shutdown) = crate::net::ShutdownTrigger::new();
        let task = tokio::spawn(server.run(listener, index, shutdown));
        let hello = |frames: &[Frame]| frames.iter().any(|f| matches!(f, Frame::Hello { .. }));
        let forged_hello = Frame::Primary {
            node: "a".into(),
            epoch: 1,
            schema: crate::index::SCHEMA_VERSION,
        };

        // From a third address: closed without a frame.
        let (mut r, mut w) = connect_from("127.0.0.3", addr).await.into_split();
        let _ = write_frame(&mut w, &forged_hello).await;
        assert!(frames_until_closed(&mut r).await.is_empty());

        // From the peer's address without the key: challenge and proof, never a hello.
        let (mut r, mut w) = connect_from("127.0.0.2", addr).await.into_split();
        write_frame(
            &mut w,
            &Frame::Challenge {
                nonce: "ab".repeat(32),
            },
        )
        .await
        .unwrap();
        write_frame(
            &mut w,
            &Frame::Proof {
                mac: "00".repeat(32),
            },
        )
        .await
        .unwrap();
        let _ = write_frame(&mut w, &forged_hello).await;
        let got = frames_until_closed(&mut r).await;
        assert!(
            matches!(got.first(), Some(Frame::Challenge { .. })),
            "{got:?}"
        );
        assert!(!hello(&got), "{got:?}");

        // With the key but then frames in clear (what an attacker injecting into the
        // connection would send): no hello, the link closes.
        let (mut r, mut w) = connect_from("127.0.0.2", addr).await.into_split();
        primary_handshake(&key, &mut r, &mut w).await.unwrap();
        let _ = write_frame(&mut w, &forged_hello).await;
        assert!(!hello(&frames_until_closed(&mut r).await));

        // A primary with the key but another index schema (a rolling upgrade gone wrong):
        // refused with the reason, nothing applied.
        let (mut r, mut w) = connect_from("127.0.0.2", addr).await.into_split();
        let (pn, sn) = primary_handshake(&key, &mut r, &mut w).await.unwrap();
        let (mut r, mut w) = channel::seal((r, w), &key, Side::Primary, &pn, &sn);
        let newer = Frame::Primary {
            node: "a".into(),
            epoch: 1,
            schema: crate::index::SCHEMA_VERSION + 1,
        };
        write_frame(&mut w, &newer).await.unwrap();
        match read_frame(&mut r).await.unwrap() {
            Frame::Refused { reason } => assert!(
                reason.contains(&format!(
                    "index schema {} here, {} at the primary",
                    crate::index::SCHEMA_VERSION,
                    crate::index::SCHEMA_VERSION + 1
                )),
                "{reason}"
            ),
            other => panic!("{other:?}"),
        }
        drop((r, w));

        // The real primary: the handshake, then its sealed hello is answered.
        let (mut r, mut w) = connect_from("127.0.0.2", addr).await.into_split();
        let (pn, sn) = primary_handshake(&key, &mut r, &mut w).await.unwrap();
        let (mut r, mut w) = channel::seal((r, w), &key, Side::Primary, &pn, &sn);
        write_frame(&mut w, &forged_hello).await.unwrap();
        assert!(matches!(
            read_frame(&mut r).await.unwrap(),
            Frame::Hello { last_seq: 0, .. }
        ));
        drop((r, w));
        trigger.trigger();
        let index = task.await.unwrap();
        assert_eq!(index.last_change().await.unwrap().0, 0);
        // Both refusals were audited as security alerts (node authentication), once each.
        // (The audit writer appends on its own thread: wait for it.)
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let audit = loop {
            let text = std::fs::read_to_string(dir.path().join("audit.log")).unwrap_or_default();
            if text.matches("110126").count() >= 2 || std::time::Instant::now() > deadline {
                break text;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let alerts: Vec<&str> = audit
            .lines()
            .filter(|l| l.contains("csd-code=\"110126\""))
            .collect();
        assert_eq!(alerts.len(), 2, "{audit}");
        assert!(
            alerts[0].contains("NetworkAccessPointID=\"127.0.0.3\""),
            "{}",
            alerts[0]
        );
        assert!(
            alerts[1].contains("did not prove the pair key"),
            "{}",
            alerts[1]
        );
    }
}
