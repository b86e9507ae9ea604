//! The arbiter that grants each epoch once: create-if-absent of `epochs/<epoch>.claim` on a
//! shared object_store backend that really honours it (local filesystem, AWS S3), or the
//! same store behind a small witness process (`pacsd witness`) for two-node sites. A term is
//! marked paired with `epochs/<epoch>.paired` (see `role`, rule 3).
//!
//! The witness speaks one JSON line each way. Every request names its node, carries a
//! millisecond timestamp that rises with each request of that node, and an HMAC-SHA256 under
//! the pair key over the three; every answer carries an HMAC over the request's MAC and the
//! answer. The witness answers only configured nodes, with a valid MAC, a timestamp newer than
//! the last it accepted from that node and within `MAX_SKEW` of its clock (so a recorded
//! request cannot be replayed); a node believes only answers to its own request.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

use super::heartbeat::BeatKey;
use crate::storage::Location;

/// One request to a witness, and one answer, each must fit in this time.
pub const WITNESS_TIMEOUT: Duration = Duration::from_millis(500);
/// Longest request line a witness reads.
const MAX_LINE: u64 = 4096;
/// How far a request's timestamp may be from the witness's clock.
const MAX_SKEW: Duration = Duration::from_secs(60);
/// A refused request is logged at most once per source address in this interval.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ArbiterError {
    #[error("opening the arbiter `{url}`: {reason}")]
    Open {
        url: String,
        reason: crate::storage::backend::LocationError,
    },
    #[error(
        "the arbiter `{url}` does not refuse a second create of the same key: it cannot grant epochs (Garage, for one, ignores create-if-absent)"
    )]
    NoCreateIfAbsent { url: String },
    #[error("a witness needs the pair key")]
    WitnessWithoutKey,
    #[error("a witness serves configured nodes only (--node, once per node)")]
    WitnessWithoutNodes,
    #[error("arbiter store: {0}")]
    Store(#[from] object_store::Error),
    #[error("witness {addr}: {reason}")]
    Witness { addr: String, reason: String },
}

/// The answer to a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimOutcome {
    pub granted: bool,
    /// The newest epoch claimed (ours when granted).
    pub latest: u64,
    /// The term before the claimed epoch was never marked paired (the new primary waits a
    /// lease before serving).
    pub previous_solo: bool,
}

/// A claim store: the shared-store arbiter, or a client of a witness.
#[derive(Debug, Clone)]
pub enum Arbiter {
    Store {
        url: String,
        store: Arc<dyn ObjectStore>,
    },
    Witness {
        addr: String,
        auth: WitnessAuth,
    },
}

/// What a node signs its witness requests with.
#[derive(Debug, Clone)]
pub struct WitnessAuth {
    pub key: BeatKey,
    pub node: String,
    /// Held for a whole request, with the last timestamp sent (each request's is later): the
    /// witness refuses a request older than the last it took from a node, so two sent at
    /// once (a lease renewal beside a claim) must not overtake each other on the way.
    turn: Arc<tokio::sync::Mutex<u64>>,
}

impl WitnessAuth {
    pub fn new(key: BeatKey, node: &str) -> WitnessAuth {
        WitnessAuth {
            key,
            node: node.to_string(),
            turn: Arc::new(tokio::sync::Mutex::new(0)),
        }
    }
}

/// A rising timestamp: the wall clock in ms, or one more than the last if the clock has not
/// moved on (or went back).
fn next_time(last: &mut u64, now: u64) -> u64 {
    *last = now.max(last.saturating_add(1));
    *last
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A request as it travels: the request's JSON text, signed.
#[derive(Debug, Serialize, Deserialize)]
struct Signed {
    req: String,
    node: String,
    time: u64,
    mac: String,
}

/// An answer as it travels: the reply's JSON text, with a MAC bound to the request's.
#[derive(Debug, Serialize, Deserialize)]
struct SignedReply {
    body: String,
    mac: String,
}

fn request_tag(key: &BeatKey, node: &str, time: u64, req: &str) -> [u8; 32] {
    key.tag(&[
        b"pacsd witness request",
        node.as_bytes(),
        &time.to_be_bytes(),
        req.as_bytes(),
    ])
}

fn reply_tag(key: &BeatKey, request_mac: &str, body: &str) -> [u8; 32] {
    key.tag(&[
        b"pacsd witness reply",
        request_mac.as_bytes(),
        body.as_bytes(),
    ])
}

fn claim_key(epoch: u64) -> StorePath {
    StorePath::from(format!("epochs/{epoch:020}.claim"))
}

fn paired_key(epoch: u64) -> StorePath {
    StorePath::from(format!("epochs/{epoch:020}.paired"))
}

fn renewed_key(epoch: u64) -> StorePath {
    StorePath::from(format!("epochs/{epoch:020}.renewed"))
}

/// What the arbiter knows of one term.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Term {
    pub paired: bool,
    /// The holder's latest renewal marker (None: never renewed).
    pub marker: Option<String>,
}

impl Arbiter {
    /// `witness://host:port` (its requests signed with `auth`), or a replica-style location
    /// (a directory, `file://`, `s3://`).
    pub fn open(url: &str, auth: Option<WitnessAuth>) -> Result<Arbiter, ArbiterError> {
        if let Some(addr) = url.strip_prefix("witness://") {
            let auth = auth.ok_or(ArbiterError::WitnessWithoutKey)?;
            return Ok(Arbiter::Witness {
                addr: addr.trim_end_matches('/').to_string(),
                auth,
            });
        }
        let store = Location::parse(url)
            .and_then(|l| l.open())
            .map_err(|reason| ArbiterError::Open {
                url: url.to_string(),
                reason,
            })?;
        Ok(Arbiter::Store {
            url: url.to_string(),
            store,
        })
    }

    /// Check that the arbiter can grant an epoch once: a probe key created twice must be
    /// refused the second time. A witness is asked for the newest epoch instead (it runs
    /// the same check on its own store when it starts).
    pub async fn probe(&self) -> Result<(), ArbiterError> {
        match self {
            Arbiter::Store { url, store } => {
                let key = StorePath::from(format!(
                    "probe/{}-{}",
                    std::process::id(),
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_nanos())
                        .unwrap_or(0)
                ));
                let refused = || ArbiterError::NoCreateIfAbsent { url: url.clone() };
                let unsupported = |e: ArbiterError| match e {
                    // A store that does not offer create-if-absent at all (pacsd builds
                    // S3 stores with conditional puts off) cannot be an arbiter either.
                    ArbiterError::Store(
                        object_store::Error::NotImplemented { .. }
                        | object_store::Error::NotSupported { .. },
                    ) => refused(),
                    other => other,
                };
                create(store, &key, b"probe").await.map_err(unsupported)?;
                let second = create(store, &key, b"probe").await.map_err(unsupported);
                let _ = store.delete(&key).await;
                match second {
                    Ok(false) => Ok(()),
                    Ok(true) => Err(refused()),
                    Err(e) => Err(e),
                }
            }
            Arbiter::Witness { .. } => self.latest().await.map(|_| ()),
        }
    }

    /// Claim `epoch` for `node`: granted to the first claimant only.
    pub async fn claim(&self, epoch: u64, node: &str) -> Result<ClaimOutcome, ArbiterError> {
        match self {
            Arbiter::Store { store, .. } => {
                let granted = create(store, &claim_key(epoch), node.as_bytes()).await?;
                let latest = latest_in(store).await?.max(epoch);
                let previous_solo =
                    epoch > 1 && granted && store.head(&paired_key(epoch - 1)).await.is_err();
                Ok(ClaimOutcome {
                    granted,
                    latest,
                    previous_solo,
                })
            }
            Arbiter::Witness { addr, auth } => {
                ask(
                    addr,
                    auth,
                    &Request::Claim {
                        epoch,
                        node: node.to_string(),
                    },
                )
                .await
            }
        }
    }

    /// The newest epoch claimed (0: none).
    pub async fn latest(&self) -> Result<u64, ArbiterError> {
        match self {
            Arbiter::Store { store, .. } => latest_in(store).await,
            Arbiter::Witness { addr, auth } => {
                let a: ClaimOutcome = ask(addr, auth, &Request::Latest).await?;
                Ok(a.latest)
            }
        }
    }

    /// A solo holder's proof of life: a new marker for the term of `epoch`.
    pub async fn renew(&self, epoch: u64) -> Result<(), ArbiterError> {
        match self {
            Arbiter::Store { store, .. } => {
                let marker = format!(
                    "{}-{}",
                    std::process::id(),
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_nanos())
                        .unwrap_or(0)
                );
                store
                    .put(&renewed_key(epoch), PutPayload::from(marker.into_bytes()))
                    .await?;
                Ok(())
            }
            Arbiter::Witness { addr, auth } => {
                ask::<ClaimOutcome>(addr, auth, &Request::Renew { epoch })
                    .await
                    .map(|_| ())
            }
        }
    }

    /// Whether the term of `epoch` is paired, and its latest renewal marker.
    pub async fn term(&self, epoch: u64) -> Result<Term, ArbiterError> {
        match self {
            Arbiter::Store { store, .. } => {
                let paired = match store.head(&paired_key(epoch)).await {
                    Ok(_) => true,
                    Err(object_store::Error::NotFound { .. }) => false,
                    Err(e) => return Err(e.into()),
                };
                let marker = match store.get(&renewed_key(epoch)).await {
                    Ok(r) => Some(String::from_utf8_lossy(&r.bytes().await?).into_owned()),
                    Err(object_store::Error::NotFound { .. }) => None,
                    Err(e) => return Err(e.into()),
                };
                Ok(Term { paired, marker })
            }
            Arbiter::Witness { addr, auth } => ask(addr, auth, &Request::Term { epoch }).await,
        }
    }

    /// Record that the term of `epoch` is paired (its lease no longer comes from here).
    pub async fn mark_paired(&self, epoch: u64) -> Result<(), ArbiterError> {
        match self {
            Arbiter::Store { store, .. } => {
                create(store, &paired_key(epoch), b"paired").await?;
                Ok(())
            }
            Arbiter::Witness { addr, auth } => {
                ask::<ClaimOutcome>(addr, auth, &Request::Paired { epoch })
                    .await
                    .map(|_| ())
            }
        }
    }
}

/// Create `key` only if it does not exist: true when this call created it.
async fn create(
    store: &Arc<dyn ObjectStore>,
    key: &StorePath,
    body: &[u8],
) -> Result<bool, ArbiterError> {
    let opts = PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    match store
        .put_opts(key, PutPayload::from(body.to_vec()), opts)
        .await
    {
        Ok(_) => Ok(true),
        Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

async fn latest_in(store: &Arc<dyn ObjectStore>) -> Result<u64, ArbiterError> {
    let mut latest = 0;
    let prefix = StorePath::from("epochs");
    let mut list = store.list(Some(&prefix));
    while let Some(meta) = list.next().await {
        let meta = meta?;
        if let Some(n) = meta
            .location
            .filename()
            .and_then(|f| f.strip_suffix(".claim"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            latest = latest.max(n);
        }
    }
    Ok(latest)
}

/// What a witness is asked, one JSON line per request.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum Request {
    Claim { epoch: u64, node: String },
    Latest,
    Paired { epoch: u64 },
    Renew { epoch: u64 },
    Term { epoch: u64 },
}

async fn ask<T: for<'de> Deserialize<'de>>(
    addr: &str,
    auth: &WitnessAuth,
    req: &Request,
) -> Result<T, ArbiterError> {
    let err = |reason: String| ArbiterError::Witness {
        addr: addr.to_string(),
        reason,
    };
    let exchange = async {
        let mut last_time = auth.turn.lock().await;
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|e| err(format!("connecting: {e}")))?;
        let _ = stream.set_nodelay(true);
        let req = serde_json::to_string(req).map_err(|e| err(e.to_string()))?;
        let time = next_time(&mut last_time, now_ms());
        let mac = hex::encode(request_tag(&auth.key, &auth.node, time, &req));
        let signed = Signed {
            req,
            node: auth.node.clone(),
            time,
            mac: mac.clone(),
        };
        let mut line = serde_json::to_vec(&signed).map_err(|e| err(e.to_string()))?;
        line.push(b'\n');
        stream
            .write_all(&line)
            .await
            .map_err(|e| err(format!("sending: {e}")))?;
        let mut answer = String::new();
        BufReader::new(stream)
            .take(MAX_LINE)
            .read_line(&mut answer)
            .await
            .map_err(|e| err(format!("reading: {e}")))?;
        let signed: SignedReply =
            serde_json::from_str(&answer).map_err(|e| err(format!("bad answer: {e}")))?;
        let genuine = hex::decode(&signed.mac).is_ok_and(|tag| {
            auth.key.verify(
                &[
                    b"pacsd witness reply",
                    mac.as_bytes(),
                    signed.body.as_bytes(),
                ],
                &tag,
            )
        });
        if !genuine {
            // A refusal comes unsigned; what it says is shown, not trusted.
            let said = match serde_json::from_str::<Reply<serde_json::Value>>(&signed.body) {
                Ok(Reply::Error(e)) => {
                    format!(" (it says: {})", e.chars().take(200).collect::<String>())
                }
                _ => String::new(),
            };
            return Err(err(format!(
                "the answer is not signed with the pair key{said}"
            )));
        }
        let reply: Reply<T> =
            serde_json::from_str(&signed.body).map_err(|e| err(format!("bad answer: {e}")))?;
        match reply {
            Reply::Ok(v) => Ok(v),
            Reply::Error(e) => Err(err(e)),
        }
    };
    tokio::time::timeout(WITNESS_TIMEOUT, exchange)
        .await
        .map_err(|_| err(format!("no answer within {WITNESS_TIMEOUT:?}")))?
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Reply<T> {
    Ok(T),
    Error(String),
}

/// `pacsd witness`: grant epochs from a local directory to the nodes of a pair, over TCP
/// (one JSON line per request). Runs until `shutdown`.
pub async fn run_witness(
    listener: TcpListener,
    dir: &std::path::Path,
    nodes: &[String],
    key: BeatKey,
    mut shutdown: crate::net::Shutdown,
) -> Result<(), ArbiterError> {
    if nodes.is_empty() {
        return Err(ArbiterError::WitnessWithoutNodes);
    }
    let gate = Arc::new(WitnessGate {
        key,
        nodes: nodes.to_vec(),
        last: std::sync::Mutex::new(std::collections::HashMap::new()),
        logged: std::sync::Mutex::new(std::collections::HashMap::new()),
    });
    let arbiter = Arbiter::open(&dir.display().to_string(), None)?;
    arbiter.probe().await?;
    let latest = arbiter.latest().await?;
    info!(addr = ?listener.local_addr().ok(), dir = %dir.display(), latest, "witness listening");
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "witness accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.wait() => return Ok(()),
        };
        let arbiter = arbiter.clone();
        let gate = gate.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let (r, mut w) = stream.into_split();
            let mut line = String::new();
            let mut reader = BufReader::new(r).take(MAX_LINE);
            if tokio::time::timeout(WITNESS_TIMEOUT, reader.read_line(&mut line))
                .await
                .is_err()
            {
                return;
            }
            let (request, request_mac, signer) = match gate.admit(&line) {
                Ok(x) => x,
                Err(why) => {
                    let why = why.to_string();
                    gate.log_refusal(peer, &why);
                    let body = serde_json::to_string(&Reply::<()>::Error(why)).unwrap_or_default();
                    let answer = serde_json::to_string(&SignedReply {
                        body,
                        mac: String::new(),
                    })
                    .unwrap_or_default();
                    let _ = tokio::time::timeout(
                        WITNESS_TIMEOUT,
                        w.write_all(format!("{answer}\n").as_bytes()),
                    )
                    .await;
                    return;
                }
            };
            let answer = match serde_json::from_str::<Request>(&request) {
                Ok(Request::Claim { epoch, node }) => {
                    // A node claims for itself only.
                    let node = if node == signer { node } else { String::new() };
                    let out = witness_claim(&arbiter, &gate.nodes, epoch, &node).await;
                    if let Ok(o) = &out {
                        info!(%peer, node, epoch, granted = o.granted, "witness: claim");
                    }
                    reply(out)
                }
                Ok(Request::Latest) => reply(arbiter.latest().await.map(|latest| ClaimOutcome {
                    granted: false,
                    latest,
                    previous_solo: false,
                })),
                Ok(Request::Paired { epoch }) => {
                    reply(arbiter.mark_paired(epoch).await.map(|()| ClaimOutcome {
                        granted: true,
                        latest: epoch,
                        previous_solo: false,
                    }))
                }
                Ok(Request::Renew { epoch }) => {
                    reply(arbiter.renew(epoch).await.map(|()| ClaimOutcome {
                        granted: true,
                        latest: epoch,
                        previous_solo: false,
                    }))
                }
                Ok(Request::Term { epoch }) => reply(arbiter.term(epoch).await),
                Err(e) => serde_json::to_string(&Reply::<()>::Error(format!("bad request: {e}")))
                    .unwrap_or_default(),
            };
            let answer = serde_json::to_string(&SignedReply {
                mac: hex::encode(reply_tag(&gate.key, &request_mac, &answer)),
                body: answer,
            })
            .unwrap_or_default();
            debug!(%peer, answer, "witness answer");
            let _ = tokio::time::timeout(
                WITNESS_TIMEOUT,
                w.write_all(format!("{answer}\n").as_bytes()),
            )
            .await;
        });
    }
}

/// What the witness checks before it reads a request (see the module doc).
struct WitnessGate {
    key: BeatKey,
    nodes: Vec<String>,
    /// The newest timestamp accepted from each node.
    last: std::sync::Mutex<std::collections::HashMap<String, u64>>,
    logged: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, std::time::Instant>>,
}

/// Why the witness refuses a request (said to the caller and logged, rate-limited).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum Refused {
    #[error("not a signed request")]
    NotSigned,
    #[error("node `{0}` is not configured")]
    UnknownNode(String),
    #[error("the request is not signed with the pair key")]
    BadMac,
    #[error(
        "the request's time is {off_ms} ms from the witness's clock (at most {max_ms} allowed)"
    )]
    Skewed { off_ms: u64, max_ms: u128 },
    #[error("a replayed or out-of-order request")]
    Replayed,
}

impl WitnessGate {
    /// The request's JSON, its MAC and its node, if it comes from a configured node holding
    /// the pair key and is not a replay.
    fn admit(&self, line: &str) -> Result<(String, String, String), Refused> {
        let signed: Signed = serde_json::from_str(line).map_err(|_| Refused::NotSigned)?;
        if !self.nodes.contains(&signed.node) {
            return Err(Refused::UnknownNode(signed.node));
        }
        let genuine = hex::decode(&signed.mac).is_ok_and(|tag| {
            self.key.verify(
                &[
                    b"pacsd witness request",
                    signed.node.as_bytes(),
                    &signed.time.to_be_bytes(),
                    signed.req.as_bytes(),
                ],
                &tag,
            )
        });
        if !genuine {
            return Err(Refused::BadMac);
        }
        let now = now_ms();
        if now.abs_diff(signed.time) > MAX_SKEW.as_millis() as u64 {
            return Err(Refused::Skewed {
                off_ms: now.abs_diff(signed.time),
                max_ms: MAX_SKEW.as_millis(),
            });
        }
        let mut last = self.last.lock().expect("witness table");
        let seen = last.entry(signed.node.clone()).or_default();
        if signed.time <= *seen {
            return Err(Refused::Replayed);
        }
        *seen = signed.time;
        Ok((signed.req, signed.mac, signed.node))
    }

    fn log_refusal(&self, peer: std::net::SocketAddr, why: &str) {
        let now = std::time::Instant::now();
        let mut logged = self.logged.lock().expect("log table");
        let due = logged
            .get(&peer.ip())
            .is_none_or(|t| now.duration_since(*t) >= REFUSAL_LOG_INTERVAL);
        if due {
            logged.insert(peer.ip(), now);
            warn!(%peer, why, "witness: request refused (further ones from this address are not logged for 10 s)");
        }
    }
}

/// A claim at the witness: granted only for the epoch after the latest (checked: nothing
/// follows `u64::MAX`), and only to a configured node when `nodes` names them, so a forged
/// claim of a far epoch cannot lock both nodes out.
async fn witness_claim(
    arbiter: &Arbiter,
    nodes: &[String],
    epoch: u64,
    node: &str,
) -> Result<ClaimOutcome, ArbiterError> {
    let latest = arbiter.latest().await?;
    let refused = ClaimOutcome {
        granted: false,
        latest,
        previous_solo: false,
    };
    if !nodes.is_empty() && !nodes.iter().any(|n| n == node) {
        warn!(
            node,
            epoch, "witness: claim from a node that is not configured refused"
        );
        return Ok(refused);
    }
    if latest.checked_add(1) != Some(epoch) {
        warn!(
            node,
            epoch, latest, "witness: claim of an epoch other than latest + 1 refused"
        );
        return Ok(refused);
    }
    arbiter.claim(epoch, node).await
}

fn reply<T: Serialize>(r: Result<T, ArbiterError>) -> String {
    let reply = match r {
        Ok(v) => Reply::Ok(v),
        Err(e) => Reply::Error(e.to_string()),
    };
    serde_json::to_string(&reply).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_times_rise_even_when_the_clock_stands_still_or_goes_back() {
        let mut last = 0;
        assert_eq!(next_time(&mut last, 1_000), 1_000);
        assert_eq!(next_time(&mut last, 1_000), 1_001, "same millisecond");
        assert_eq!(next_time(&mut last, 900), 1_002, "clock set back");
        assert_eq!(next_time(&mut last, 5_000), 5_000, "clock moved on");
    }

    #[tokio::test]
    async fn a_directory_grants_each_epoch_once_and_tracks_paired_terms() {
        let dir = tempfile::tempdir().unwrap();
        let a = Arbiter::open(&dir.path().display().to_string(), None).unwrap();
        a.probe().await.unwrap();
        assert_eq!(a.latest().await.unwrap(), 0);
        let first = a.claim(1, "a").await.unwrap();
        assert_eq!(
            first,
            ClaimOutcome {
                granted: true,
                latest: 1,
                previous_solo: false
            }
        );
        let again = a.claim(1, "b").await.unwrap();
        assert!(!again.granted);
        // Term 1 never paired: whoever takes 2 waits a lease.
        assert!(a.claim(2, "b").await.unwrap().previous_solo);
        a.mark_paired(2).await.unwrap();
        let third = a.claim(3, "a").await.unwrap();
        assert!(third.granted && !third.previous_solo);
        assert_eq!(a.latest().await.unwrap(), 3);
        assert!(
            !a.claim(2, "a").await.unwrap().granted,
            "old epochs stay taken"
        );
    }

    #[tokio::test]
    async fn memory_stores_honour_create_if_absent_too() {
        let a = Arbiter::open("memory://arbiter", None).unwrap();
        a.probe().await.unwrap();
    }

    #[tokio::test]
    async fn a_witness_grants_over_tcp_and_a_dead_one_is_a_clear_error() {
        let (_dir, addr, trigger, task) = witness(&["a", "b"]).await;
        let w = node_client(addr, "a", key());
        let wb = node_client(addr, "b", key());
        w.probe().await.unwrap();
        assert!(w.claim(1, "a").await.unwrap().granted);
        assert!(!wb.claim(1, "b").await.unwrap().granted);
        w.mark_paired(1).await.unwrap();
        let two = wb.claim(2, "b").await.unwrap();
        assert!(two.granted && !two.previous_solo);
        assert_eq!(w.latest().await.unwrap(), 2);
        w.renew(2).await.unwrap();
        let t = w.term(2).await.unwrap();
        assert!(!t.paired && t.marker.is_some());
        trigger.trigger();
        task.await.unwrap().unwrap();
        let err = w.latest().await.unwrap_err().to_string();
        assert!(err.contains(&addr.to_string()), "{err}");
    }

    /// A node's requests sent at once (a lease renewal beside a claim or a "paired" mark) are
    /// all answered: none reaches the witness after a later one and is refused as a replay.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_a_node_sends_at_once_are_all_answered() {
        let (_dir, addr, trigger, task) = witness(&["a", "b"]).await;
        let w = node_client(addr, "a", key());
        assert!(w.claim(1, "a").await.unwrap().granted);
        let at_once = (0..32).map(|i| {
            let w = w.clone();
            async move {
                if i % 2 == 0 {
                    w.renew(1).await.map(|_| ())
                } else {
                    w.latest().await.map(|_| ())
                }
            }
        });
        for r in futures::future::join_all(at_once).await {
            r.unwrap();
        }
        trigger.trigger();
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_witness_grants_only_the_next_epoch_and_only_to_its_nodes() {
        let (_dir, addr, trigger, task) = witness(&["a", "b"]).await;
        let w = node_client(addr, "a", key());
        let wb = node_client(addr, "b", key());
        assert!(w.claim(1, "a").await.unwrap().granted);
        // The forged claim that locked both nodes out: refused, the latest epoch unchanged.
        let forged = wb.claim(u64::MAX, "b").await.unwrap();
        assert!(!forged.granted);
        assert_eq!(w.latest().await.unwrap(), 1);
        assert!(!wb.claim(3, "b").await.unwrap().granted);
        // A node id the witness does not know, even with the key.
        let mallory = node_client(addr, "mallory", key());
        assert!(mallory.claim(2, "mallory").await.is_err());
        // A configured node id without the key: refused before anything is read.
        let stranger = node_client(addr, "b", BeatKey::new(&[9u8; 32]).unwrap());
        let err = stranger.claim(2, "b").await.unwrap_err().to_string();
        assert!(err.contains("not signed with the pair key"), "{err}");
        // One node claiming in the other's name.
        assert!(!w.claim(2, "b").await.unwrap().granted);
        assert_eq!(w.latest().await.unwrap(), 1);
        assert!(wb.claim(2, "b").await.unwrap().granted);
        assert_eq!(w.latest().await.unwrap(), 2);
        trigger.trigger();
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_recorded_witness_request_cannot_be_replayed_and_answers_are_checked() {
        let (_dir, addr, trigger, task) = witness(&["a"]).await;
        // A request signed now, sent twice as it was recorded.
        let req = serde_json::to_string(&Request::Claim {
            epoch: 1,
            node: "a".into(),
        })
        .unwrap();
        let time = now_ms();
        let line = serde_json::to_string(&Signed {
            mac: hex::encode(request_tag(&key(), "a", time, &req)),
            req,
            node: "a".into(),
            time,
        })
        .unwrap();
        let send = async |line: &str| {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("{line}\n").as_bytes()).await.unwrap();
            let mut answer = String::new();
            BufReader::new(s).read_line(&mut answer).await.unwrap();
            serde_json::from_str::<SignedReply>(&answer).unwrap()
        };
        let first = send(&line).await;
        assert!(first.body.contains("\"granted\":true"), "{}", first.body);
        let replay = send(&line).await;
        assert!(replay.body.contains("replayed"), "{}", replay.body);
        // Signed long ago: refused for its age even the first time.
        let req = serde_json::to_string(&Request::Latest).unwrap();
        let old = time - 3_600_000;
        let stale = serde_json::to_string(&Signed {
            mac: hex::encode(request_tag(&key(), "a", old, &req)),
            req,
            node: "a".into(),
            time: old,
        })
        .unwrap();
        assert!(send(&stale).await.body.contains("from the witness's clock"));
        trigger.trigger();
        task.await.unwrap().unwrap();

        // A fake witness that answers "granted" without the key is not believed.
        let fake = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let fake_addr = fake.local_addr().unwrap();
        tokio::spawn(async move {
            let (s, _) = fake.accept().await.unwrap();
            let (r, mut w) = s.into_split();
            let mut line = String::new();
            BufReader::new(r).read_line(&mut line).await.unwrap();
            let body = serde_json::to_string(&Reply::Ok(ClaimOutcome {
                granted: true,
                latest: 99,
                previous_solo: false,
            }))
            .unwrap();
            let answer = serde_json::to_string(&SignedReply {
                body,
                mac: "00".repeat(32),
            })
            .unwrap();
            w.write_all(format!("{answer}\n").as_bytes()).await.unwrap();
        });
        let err = node_client(fake_addr, "a", key())
            .claim(1, "a")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("not signed with the pair key"), "{err}");
    }

    /// A witness on a loopback port for `nodes`, granting from a fresh directory.
    async fn witness(
        nodes: &[&str],
    ) -> (
        tempfile::TempDir,
        std::net::SocketAddr,
        crate::net::ShutdownTrigger,
        tokio::task::JoinHandle<Result<(), ArbiterError>>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (trigger, shutdown) = crate::net::ShutdownTrigger::new();
        let path = dir.path().to_path_buf();
        let nodes: Vec<String> = nodes.iter().map(|n| n.to_string()).collect();
        let task =
            tokio::spawn(
                async move { run_witness(listener, &path, &nodes, key(), shutdown).await },
            );
        (dir, addr, trigger, task)
    }

    fn key() -> BeatKey {
        BeatKey::new(&[7u8; 32]).unwrap()
    }

    fn node_client(addr: std::net::SocketAddr, node: &str, key: BeatKey) -> Arbiter {
        Arbiter::open(
            &format!("witness://{addr}"),
            Some(WitnessAuth::new(key, node)),
        )
        .unwrap()
    }
}
