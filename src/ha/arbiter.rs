//! The arbiter that grants each epoch once: create-if-absent of `epochs/<epoch>.claim` on a
//! shared object_store backend that really honours it (local filesystem, AWS S3), or the
//! same store behind a small witness process (`pacsd witness`) for two-node sites. A term is
//! marked paired with `epochs/<epoch>.paired` (see `role`, rule 3).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

use crate::storage::Location;

/// One request to a witness, and one answer, each must fit in this time.
pub const WITNESS_TIMEOUT: Duration = Duration::from_millis(500);
/// Longest request line a witness reads.
const MAX_LINE: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ArbiterError {
    #[error("opening the arbiter `{url}`: {reason}")]
    Open { url: String, reason: String },
    #[error(
        "the arbiter `{url}` does not refuse a second create of the same key: it cannot grant epochs (Garage, for one, ignores create-if-absent)"
    )]
    NoCreateIfAbsent { url: String },
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
    },
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
    /// `witness://host:port`, or a replica-style location (a directory, `file://`, `s3://`).
    pub fn open(url: &str) -> Result<Arbiter, ArbiterError> {
        if let Some(addr) = url.strip_prefix("witness://") {
            return Ok(Arbiter::Witness {
                addr: addr.trim_end_matches('/').to_string(),
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
            Arbiter::Witness { addr } => {
                ask(
                    addr,
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
            Arbiter::Witness { addr } => {
                let a: ClaimOutcome = ask(addr, &Request::Latest).await?;
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
            Arbiter::Witness { addr } => ask::<ClaimOutcome>(addr, &Request::Renew { epoch })
                .await
                .map(|_| ()),
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
            Arbiter::Witness { addr } => ask(addr, &Request::Term { epoch }).await,
        }
    }

    /// Record that the term of `epoch` is paired (its lease no longer comes from here).
    pub async fn mark_paired(&self, epoch: u64) -> Result<(), ArbiterError> {
        match self {
            Arbiter::Store { store, .. } => {
                create(store, &paired_key(epoch), b"paired").await?;
                Ok(())
            }
            Arbiter::Witness { addr } => ask::<ClaimOutcome>(addr, &Request::Paired { epoch })
                .await
                .map(|_| ()),
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

async fn ask<T: for<'de> Deserialize<'de>>(addr: &str, req: &Request) -> Result<T, ArbiterError> {
    let err = |reason: String| ArbiterError::Witness {
        addr: addr.to_string(),
        reason,
    };
    let exchange = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|e| err(format!("connecting: {e}")))?;
        let _ = stream.set_nodelay(true);
        let mut line = serde_json::to_vec(req).map_err(|e| err(e.to_string()))?;
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
        let reply: Reply<T> =
            serde_json::from_str(&answer).map_err(|e| err(format!("bad answer: {e}")))?;
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
    mut shutdown: crate::net::Shutdown,
) -> Result<(), ArbiterError> {
    let nodes: Arc<Vec<String>> = Arc::new(nodes.to_vec());
    let arbiter = Arbiter::open(&dir.display().to_string())?;
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
        let nodes = nodes.clone();
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
            let answer = match serde_json::from_str::<Request>(&line) {
                Ok(Request::Claim { epoch, node }) => {
                    let out = witness_claim(&arbiter, &nodes, epoch, &node).await;
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
            debug!(%peer, answer, "witness answer");
            let _ = tokio::time::timeout(
                WITNESS_TIMEOUT,
                w.write_all(format!("{answer}\n").as_bytes()),
            )
            .await;
        });
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

    #[tokio::test]
    async fn a_directory_grants_each_epoch_once_and_tracks_paired_terms() {
        let dir = tempfile::tempdir().unwrap();
        let a = Arbiter::open(&dir.path().display().to_string()).unwrap();
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
        let a = Arbiter::open("memory://arbiter").unwrap();
        a.probe().await.unwrap();
    }

    #[tokio::test]
    async fn a_witness_grants_over_tcp_and_a_dead_one_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (trigger, shutdown) = crate::net::ShutdownTrigger::new();
        let path = dir.path().to_path_buf();
        let task = tokio::spawn(async move { run_witness(listener, &path, &[], shutdown).await });
        let w = Arbiter::open(&format!("witness://{addr}")).unwrap();
        w.probe().await.unwrap();
        assert!(w.claim(1, "a").await.unwrap().granted);
        assert!(!w.claim(1, "b").await.unwrap().granted);
        w.mark_paired(1).await.unwrap();
        let two = w.claim(2, "b").await.unwrap();
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

    #[tokio::test]
    async fn a_witness_grants_only_the_next_epoch_and_only_to_its_nodes() {
        let dir = tempfile::tempdir().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (trigger, shutdown) = crate::net::ShutdownTrigger::new();
        let path = dir.path().to_path_buf();
        let nodes = vec!["a".to_string(), "b".to_string()];
        let task =
            tokio::spawn(async move { run_witness(listener, &path, &nodes, shutdown).await });
        let w = Arbiter::open(&format!("witness://{addr}")).unwrap();
        assert!(w.claim(1, "a").await.unwrap().granted);
        // The forged claim that locked both nodes out: refused, the latest epoch unchanged.
        let forged = w.claim(u64::MAX, "b").await.unwrap();
        assert!(!forged.granted);
        assert_eq!(w.latest().await.unwrap(), 1);
        assert!(!w.claim(3, "b").await.unwrap().granted);
        // A node id the witness does not know.
        assert!(!w.claim(2, "mallory").await.unwrap().granted);
        assert!(w.claim(2, "b").await.unwrap().granted);
        assert_eq!(w.latest().await.unwrap(), 2);
        trigger.trigger();
        task.await.unwrap().unwrap();
    }
}
