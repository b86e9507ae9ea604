//! The accept loop: a permit is taken before `accept` (so the association limit holds without
//! half-served clients), accept errors back off, every association runs in its own task with
//! a tracing span, and shutdown stops accepting, lets each association finish the message in
//! flight, then waits for them up to a deadline.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{Instrument, debug, error, info, info_span, warn};

use super::association::{AcceptorPolicy, Association, DimseMessage, Incoming, NetError};
use super::shutdown::Shutdown;

/// First back-off after a failed accept (e.g. EMFILE); doubles up to `MAX_ACCEPT_BACKOFF`.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

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

/// Serve associations on `listener` until `shutdown` fires.
pub async fn run<H: MessageHandler>(
    listener: TcpListener,
    policy: AcceptorPolicy,
    handler: Arc<H>,
    mut shutdown: Shutdown,
) {
    let limit = Arc::new(Semaphore::new(policy.config.node.max_associations));
    let drain_deadline = policy.config.timeouts.shutdown();
    let policy = Arc::new(policy);
    let mut tasks = JoinSet::new();
    let mut backoff = ACCEPT_BACKOFF;
    loop {
        // Reap finished association tasks so the set does not grow without bound.
        while let Some(done) = tasks.try_join_next() {
            if let Err(e) = done {
                error!(error = %e, "association task failed");
            }
        }
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => p.expect("semaphore never closed"),
            _ = shutdown.wait() => break,
        };
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
        let policy = policy.clone();
        let handler = handler.clone();
        let shutdown = shutdown.clone();
        let span = info_span!("assoc", peer = %addr, calling_ae = tracing::field::Empty);
        tasks.spawn(
            async move {
                let _permit = permit;
                serve_association(socket, &policy, &*handler, shutdown).await;
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

async fn serve_association<H: MessageHandler>(
    socket: tokio::net::TcpStream,
    policy: &AcceptorPolicy,
    handler: &H,
    mut shutdown: Shutdown,
) {
    let mut assoc = match Association::accept(socket, policy).await {
        Ok(a) => a,
        Err(NetError::Rejected(_)) => return,
        Err(e) => {
            info!(error = %e, "association not established");
            return;
        }
    };
    tracing::Span::current().record("calling_ae", assoc.calling_ae());
    let mut stopping = shutdown.is_triggered();
    loop {
        if stopping && !assoc.mid_message() {
            info!("shutting down: aborting idle association");
            assoc.abort().await;
            return;
        }
        let incoming = if stopping {
            assoc.next().await
        } else {
            tokio::select! {
                r = assoc.next() => r,
                _ = shutdown.wait() => { stopping = true; continue; }
            }
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
