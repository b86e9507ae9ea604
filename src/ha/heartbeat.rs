//! Heartbeats: one small UDP datagram per link per interval, carrying who we are, our role,
//! epoch and last index seq, a token (our send time) and the echo of the peer's latest
//! token. The echo is what extends a paired primary's lease (`role`, rule 2).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// Largest heartbeat datagram read.
const MAX_DATAGRAM: usize = 1024;

/// One heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Beat {
    pub node: String,
    pub primary: bool,
    pub epoch: u64,
    /// Last change-log seq of the sender's index.
    pub seq: i64,
    /// The sender's clock when it sent this (microseconds since its `Clock` base).
    pub token: u64,
    /// The latest token the sender has received from us.
    pub echo: Option<u64>,
}

/// Turns instants into tokens and back (microseconds since a base instant of this process).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base: Instant,
}

impl Clock {
    pub fn new() -> Clock {
        Clock {
            base: Instant::now(),
        }
    }

    pub fn token(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.base).as_micros() as u64
    }

    pub fn instant(&self, token: u64) -> Instant {
        self.base + Duration::from_micros(token)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// The heartbeat links of a node: one socket per link.
pub struct Links {
    sockets: Vec<(Arc<UdpSocket>, SocketAddr)>,
}

impl Links {
    pub async fn bind(links: &[(SocketAddr, SocketAddr)]) -> std::io::Result<Links> {
        let mut sockets = Vec::new();
        for (bind, peer) in links {
            let s = UdpSocket::bind(bind).await?;
            sockets.push((Arc::new(s), *peer));
        }
        Ok(Links { sockets })
    }

    /// Send `beat` on every link (a link that fails is logged and skipped).
    pub async fn send(&self, beat: &Beat) {
        let Ok(bytes) = serde_json::to_vec(beat) else {
            return;
        };
        for (s, peer) in &self.sockets {
            if let Err(e) = s.send_to(&bytes, peer).await {
                debug!(%peer, error = %e, "heartbeat not sent");
            }
        }
    }

    /// Receive beats from every link into `tx` (each with its arrival time) until the
    /// receiver is gone. Beats from `own` node id (a loop) are dropped.
    pub fn receive(&self, own: String, tx: mpsc::Sender<(Beat, Instant)>) {
        for (s, _) in &self.sockets {
            let (s, tx, own) = (s.clone(), tx.clone(), own.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; MAX_DATAGRAM];
                loop {
                    let n = match s.recv_from(&mut buf).await {
                        Ok((n, _)) => n,
                        Err(e) => {
                            warn!(error = %e, "heartbeat receive failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    match serde_json::from_slice::<Beat>(&buf[..n]) {
                        Ok(b) if b.node != own => {
                            if tx.send((b, Instant::now())).await.is_err() {
                                return;
                            }
                        }
                        Ok(_) => {}
                        Err(e) => debug!(error = %e, "not a heartbeat"),
                    }
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_to_instants() {
        let c = Clock::new();
        let t = Instant::now() + Duration::from_millis(1234);
        let back = c.instant(c.token(t));
        assert!(back <= t && t - back < Duration::from_micros(1));
    }

    #[tokio::test]
    async fn beats_cross_every_link_and_own_beats_are_dropped() {
        let a1 = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b1 = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let (pa, pb) = (a1.local_addr().unwrap(), b1.local_addr().unwrap());
        drop((a1, b1));
        let a = Links::bind(&[(pa, pb)]).await.unwrap();
        let b = Links::bind(&[(pb, pa)]).await.unwrap();
        let (tx, mut rx) = mpsc::channel(8);
        b.receive("b".into(), tx);
        let beat = Beat {
            node: "a".into(),
            primary: true,
            epoch: 3,
            seq: 7,
            token: 42,
            echo: Some(9),
        };
        a.send(&Beat {
            node: "b".into(),
            ..beat.clone()
        })
        .await;
        a.send(&beat).await;
        let (got, _) = tokio::time::timeout(Duration::from_secs(2), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            got, beat,
            "the beat claiming to be from b itself was dropped"
        );
    }
}
