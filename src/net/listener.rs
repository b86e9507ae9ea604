//! The accept loop: connections are bounded per peer address and while they negotiate (the
//! oldest unfinished negotiation gives way to a new connection), the association permit is
//! taken only after a valid A-ASSOCIATE-RQ (in `association`), accept errors back off, every
//! association runs in its own task with a tracing span, and shutdown stops accepting, lets
//! each association finish the message in flight (and, for `STOP_GRACE`, start another or
//! release), then waits for them up to a deadline.
//!
//! Why not a permit before `accept` (the mini-redis pattern): idle sockets and requests
//! dripped one byte a second then hold every permit, and a legitimate C-ECHO waits in the
//! kernel backlog behind them. Here an idle socket holds only a negotiation slot, which a
//! newer connection takes over, and one address cannot hold more than its share.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tracing::{Instrument, debug, error, info, info_span, warn};

use super::association::{AcceptorPolicy, Association, DimseMessage, Incoming, NetError};
use super::shutdown::Shutdown;
use super::transport::Transport;

/// First back-off after a failed accept (e.g. EMFILE); doubles up to `MAX_ACCEPT_BACKOFF`.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);
/// After a stop, how long an idle association may still start a message (or release)
/// before it is aborted. The acceptor cannot release (PS3.8 7.2): aborting an idle
/// association at once fails a request the client had already sent, and one that was
/// accepted just before the stop is aborted before its first request. A client answered
/// a moment ago releases or sends its next request within milliseconds on loopback and a
/// LAN; 250 ms covers a busy client while keeping a stop short.
const STOP_GRACE: Duration = Duration::from_millis(250);

/// Business side of the node: handles one complete DIMSE message, sending its responses on
/// the association. An `Err` ends the association (network failure); DIMSE-level failures
/// are answered with a status and return `Ok`.
pub trait MessageHandler: Send + Sync + 'static {
    fn handle(
        &self,
        assoc: &mut Association,
        msg: DimseMessage,
    ) -> impl Future<Output = Result<(), NetError>> + Send;
}

/// Open connections per peer address; a slot is given back when its connection ends.
#[derive(Debug, Default)]
struct PerAddress {
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's place in `PerAddress`.
struct AddressSlot {
    table: Arc<PerAddress>,
    ip: IpAddr,
}

impl PerAddress {
    fn take(self: &Arc<Self>, ip: IpAddr, limit: usize) -> Option<AddressSlot> {
        let mut open = self.open.lock().expect("per-address table");
        let n = open.entry(ip).or_default();
        if *n >= limit {
            return None;
        }
        *n += 1;
        Some(AddressSlot {
            table: self.clone(),
            ip,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.table.open.lock().expect("per-address table");
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Connections still negotiating, oldest first; each can be told to give way.
#[derive(Default)]
struct Negotiating {
    queue: VecDeque<oneshot::Sender<()>>,
}

impl Negotiating {
    /// Register a new negotiation; when `limit` are already running, the oldest is told to
    /// give way (a legitimate requestor sends its A-ASSOCIATE-RQ within milliseconds, so the
    /// oldest is the one most likely to be idle or dripping).
    fn admit(&mut self, limit: usize) -> oneshot::Receiver<()> {
        // A negotiation that finished dropped its receiver.
        self.queue.retain(|tx| !tx.is_closed());
        while self.queue.len() >= limit {
            if let Some(oldest) = self.queue.pop_front() {
                let _ = oldest.send(());
            }
        }
        let (tx, rx) = oneshot::channel();
        self.queue.push_back(tx);
        rx
    }
}

/// Serve associations on `listener` until `shutdown` fires; with `tls`, each connection
/// first completes a TLS handshake (within the ARTIM time).
pub async fn run<H: MessageHandler>(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    policy: AcceptorPolicy,
    handler: Arc<H>,
    mut shutdown: Shutdown,
) {
    let drain_deadline = policy.config.timeouts.shutdown();
    let per_address_limit = policy.config.node.max_associations_per_address;
    let negotiation_limit = policy.config.node.max_negotiating;
    let policy = Arc::new(policy);
    let per_address = Arc::new(PerAddress::default());
    let mut negotiating = Negotiating::default();
    let mut tasks = JoinSet::new();
    let mut backoff = ACCEPT_BACKOFF;
    loop {
        // Reap finished association tasks so the set does not grow without bound.
        while let Some(done) = tasks.try_join_next() {
            if let Err(e) = done {
                error!(error = %e, "association task failed");
            }
        }
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.wait() => break,
        };
        let (socket, addr) = match accepted {
            Ok(pair) => {
                backoff = ACCEPT_BACKOFF;
                pair
            }
            Err(e) => {
                warn!(error = %e, ?backoff, "accept failed; backing off");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                continue;
            }
        };
        let Some(slot) = per_address.take(addr.ip(), per_address_limit) else {
            // Closed at once: holding it open would give the flood what it wants.
            debug!(peer = %addr, limit = per_address_limit, "connection refused: too many from this address");
            drop(socket);
            continue;
        };
        let give_way = negotiating.admit(negotiation_limit);
        let policy = policy.clone();
        let handler = handler.clone();
        let shutdown = shutdown.clone();
        let tls = tls.clone();
        let span = info_span!("assoc", peer = %addr, tls = tls.is_some(), calling_ae = tracing::field::Empty);
        tasks.spawn(
            async move {
                let _slot = slot;
                serve_association(socket, tls, &policy, &*handler, give_way, shutdown).await;
            }
            .instrument(span),
        );
    }
    drop(listener);
    info!(
        open = tasks.len(),
        "listener stopped; waiting for open associations"
    );
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(drain_deadline, drain).await.is_err() {
        warn!(
            left = tasks.len(),
            "shutdown deadline passed; aborting remaining associations"
        );
        tasks.shutdown().await;
    }
}

/// The TLS handshake of one connection, bounded by the ARTIM time like the A-ASSOCIATE-RQ
/// that follows it.
async fn handshake(
    socket: tokio::net::TcpStream,
    tls: Option<tokio_rustls::TlsAcceptor>,
    policy: &AcceptorPolicy,
) -> Option<Transport> {
    let Some(acceptor) = tls else {
        return Some(Transport::Tcp(socket));
    };
    let _ = socket.set_nodelay(true);
    let peer = socket.peer_addr();
    let artim = policy.config.timeouts.artim();
    match tokio::time::timeout(artim, acceptor.accept(socket)).await {
        Ok(Ok(s)) => Some(Transport::TlsAcceptor(Box::new(s))),
        Ok(Err(e)) => {
            info!(error = %e, "TLS handshake failed");
            if let Ok(peer) = peer {
                policy.refused("-", peer, &format!("TLS handshake failed: {e}"));
            }
            None
        }
        Err(_) => {
            debug!(?artim, "TLS handshake not finished within the ARTIM time");
            None
        }
    }
}

async fn serve_association<H: MessageHandler>(
    socket: tokio::net::TcpStream,
    tls: Option<tokio_rustls::TlsAcceptor>,
    policy: &AcceptorPolicy,
    handler: &H,
    give_way: oneshot::Receiver<()>,
    mut shutdown: Shutdown,
) {
    let accepted = tokio::select! {
        r = async {
            match handshake(socket, tls, policy).await {
                Some(t) => Association::accept(t, policy).await.map(Some),
                None => Ok(None),
            }
        } => r,
        _ = give_way => {
            debug!("negotiation dropped: newer connections needed its slot");
            return;
        }
    };
    use crate::metrics::Metrics;
    let m = &policy.metrics;
    let mut assoc = match accepted {
        Ok(Some(a)) => a,
        Ok(None) => {
            Metrics::add(&m.associations_refused, 1);
            return;
        }
        Err(NetError::Rejected(_)) => {
            Metrics::add(&m.associations_refused, 1);
            return;
        }
        Err(e) => {
            Metrics::add(&m.associations_refused, 1);
            info!(error = %e, "association not established");
            return;
        }
    };
    Metrics::add(&m.associations_accepted, 1);
    Metrics::add(&m.associations_open, 1);
    // Counted down however the association ends.
    struct Open<'a>(&'a Metrics);
    impl Drop for Open<'_> {
        fn drop(&mut self) {
            Metrics::sub(&self.0.associations_open, 1);
        }
    }
    let _open = Open(m);
    tracing::Span::current().record("calling_ae", assoc.calling_ae());
    // When the stop came, if it has.
    let mut stopped = shutdown.is_triggered().then(tokio::time::Instant::now);
    loop {
        let incoming = match stopped {
            None => tokio::select! {
                r = assoc.next() => r,
                _ = shutdown.wait() => {
                    stopped = Some(tokio::time::Instant::now());
                    continue;
                }
            },
            Some(_) if assoc.mid_message() => assoc.next().await,
            Some(at) => match tokio::time::timeout_at(at + STOP_GRACE, assoc.next()).await {
                Ok(r) => r,
                Err(_) => {
                    info!("shutting down: aborting idle association");
                    assoc.abort().await;
                    return;
                }
            },
        };
        match incoming {
            Ok(Incoming::Message(msg)) => {
                if let Err(e) = handler.handle(&mut assoc, *msg).await {
                    info!(error = %e, "association ended while answering");
                    return;
                }
            }
            Ok(Incoming::Released) => {
                info!("association released");
                return;
            }
            Ok(Incoming::Aborted) => {
                info!("association aborted by peer");
                return;
            }
            Err(NetError::Closed { .. }) => {
                if assoc.mid_message() {
                    warn!(
                        "peer closed the connection in the middle of a message; nothing of it was kept"
                    );
                } else {
                    debug!("peer closed the connection");
                }
                return;
            }
            Err(e) => {
                info!(error = %e, "association ended");
                return;
            }
        }
    }
}
