//! Heartbeats: one small UDP datagram per link per interval, carrying who we are, our role,
//! epoch and last index seq, a token (our send time) and the echo of the peer's latest
//! token. The echo is what extends a paired primary's lease (`role`, rule 2).
//!
//! Every beat is authenticated, because one forged datagram could demote a primary, keep a
//! standby from taking over, or stretch a lease: it is `HMAC-SHA256(key, body) || body`
//! under the pair's shared key, its body carries a sequence number (the sender's wall clock
//! in microseconds, so it keeps rising across restarts) and the sender's node id, and it is
//! accepted only from the link's configured peer address, with a valid MAC and a sequence
//! number above the last one accepted from that node. Anything else is dropped, and logged
//! at most once per source every `REFUSAL_LOG_INTERVAL`.

use crate::audit::{Audit, Event, NODE_AUTHENTICATION, Outcome, Role as AuditRole, SECURITY_ALERT};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};

use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// Largest heartbeat datagram read.
const MAX_DATAGRAM: usize = 1024;
/// Bytes of the HMAC-SHA256 tag that opens each datagram.
const MAC_LEN: usize = 32;
/// Shortest shared key accepted (256 bits).
pub const MIN_KEY_LEN: usize = 32;
/// A refused datagram is logged at most once per source in this interval (a flood of forged
/// beats must not flood the log).
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The pair's shared heartbeat key.
#[derive(Clone)]
pub struct BeatKey(Arc<[u8]>);

impl std::fmt::Debug for BeatKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BeatKey(hidden)")
    }
}

/// A pair key too short to authenticate anything.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the key has {0} bytes; at least {MIN_KEY_LEN} are needed")]
pub struct ShortKey(pub usize);

impl BeatKey {
    pub fn new(bytes: &[u8]) -> Result<BeatKey, ShortKey> {
        if bytes.len() < MIN_KEY_LEN {
            return Err(ShortKey(bytes.len()));
        }
        Ok(BeatKey(bytes.into()))
    }

    fn mac(&self) -> Hmac<sha2::Sha256> {
        <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&self.0).expect("HMAC takes any key length")
    }

    /// The MAC state over `parts`, each prefixed with its length (so no two lists of parts
    /// give the same input).
    fn mac_of(&self, parts: &[&[u8]]) -> Hmac<sha2::Sha256> {
        let mut mac = self.mac();
        for p in parts {
            mac.update(&(p.len() as u64).to_be_bytes());
            mac.update(p);
        }
        mac
    }

    /// HMAC-SHA256 under this key of `parts`.
    pub fn tag(&self, parts: &[&[u8]]) -> [u8; 32] {
        self.mac_of(parts).finalize().into_bytes().into()
    }

    /// Whether `tag` is `tag(parts)` (compared in constant time).
    pub fn verify(&self, parts: &[&[u8]], tag: &[u8]) -> bool {
        self.mac_of(parts).verify_slice(tag).is_ok()
    }

    /// `MAC || body` for a beat sent with sequence number `seq`.
    pub fn seal(&self, beat: &Beat, seq: u64) -> Vec<u8> {
        let body = serde_json::to_vec(&Sealed {
            seq,
            beat: beat.clone(),
        })
        .expect("a beat serialises");
        let mut mac = self.mac();
        mac.update(&body);
        let mut out = mac.finalize().into_bytes().to_vec();
        out.extend_from_slice(&body);
        out
    }

    /// The beat and its sequence number, if the datagram's MAC is valid under this key.
    pub fn open(&self, datagram: &[u8]) -> Result<(Beat, u64), Refusal> {
        if datagram.len() <= MAC_LEN {
            return Err(Refusal::Malformed);
        }
        let (tag, body) = datagram.split_at(MAC_LEN);
        let mut mac = self.mac();
        mac.update(body);
        mac.verify_slice(tag).map_err(|_| Refusal::BadMac)?;
        let sealed: Sealed = serde_json::from_slice(body).map_err(|_| Refusal::Malformed)?;
        Ok((sealed.beat, sealed.seq))
    }
}

/// What is authenticated: the beat and its sequence number.
#[derive(Serialize, Deserialize)]
struct Sealed {
    seq: u64,
    beat: Beat,
}

/// Why a datagram was not taken as a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    WrongSource,
    Malformed,
    BadMac,
    Replayed,
}

/// The sequence number of a beat sent now: microseconds of the wall clock, never lower than
/// the last one this process sent.
fn next_seq(last: &Mutex<u64>) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    let mut last = last.lock().expect("seq lock");
    *last = now.max(*last + 1);
    *last
}

/// The receiving side's checks, per link: source address, MAC, then sequence per node.
struct Gate {
    key: BeatKey,
    /// Highest sequence number accepted from each node id.
    seen: Mutex<HashMap<String, u64>>,
    /// When a refusal from each source was last logged.
    logged: Mutex<HashMap<SocketAddr, Instant>>,
    /// Refusals are also audited (as often as they are logged).
    audit: Audit,
}

impl Gate {
    fn check(&self, from: SocketAddr, peer: SocketAddr, datagram: &[u8]) -> Result<Beat, Refusal> {
        if from != peer {
            return Err(Refusal::WrongSource);
        }
        let (beat, seq) = self.key.open(datagram)?;
        let mut seen = self.seen.lock().expect("seen lock");
        let last = seen.entry(beat.node.clone()).or_insert(0);
        if seq <= *last {
            return Err(Refusal::Replayed);
        }
        *last = seq;
        Ok(beat)
    }

    fn log_refusal(&self, from: SocketAddr, why: Refusal) {
        let now = Instant::now();
        let mut logged = self.logged.lock().expect("log lock");
        let due = logged
            .get(&from)
            .is_none_or(|t| now.duration_since(*t) >= REFUSAL_LOG_INTERVAL);
        if due {
            logged.insert(from, now);
            warn!(%from, ?why, "heartbeat refused (further ones from this source are not logged for 10 s)");
            self.audit.record(
                Event::new(
                    SECURITY_ALERT,
                    Some(NODE_AUTHENTICATION),
                    'E',
                    Outcome::MinorFailure,
                )
                .describe(format!("heartbeat refused: {why:?}"))
                .by("-", Some(from.ip().to_string()), AuditRole::Source),
            );
        }
    }
}

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
    /// The sender is in maintenance: it will not take over (absent from older builds' beats).
    #[serde(default)]
    pub maintenance: bool,
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
    key: BeatKey,
    last_seq: Mutex<u64>,
}

impl Links {
    pub async fn bind(links: &[(SocketAddr, SocketAddr)], key: BeatKey) -> std::io::Result<Links> {
        let mut sockets = Vec::new();
        for (bind, peer) in links {
            let s = UdpSocket::bind(bind).await?;
            sockets.push((Arc::new(s), *peer));
        }
        Ok(Links {
            sockets,
            key,
            last_seq: Mutex::new(0),
        })
    }

    /// Send `beat` on every link (a link that fails is logged and skipped).
    pub async fn send(&self, beat: &Beat) {
        let bytes = self.key.seal(beat, next_seq(&self.last_seq));
        for (s, peer) in &self.sockets {
            if let Err(e) = s.send_to(&bytes, peer).await {
                debug!(%peer, error = %e, "heartbeat not sent");
            }
        }
    }

    /// Receive authenticated beats from every link into `tx` (each with its arrival time)
    /// until the receiver is gone. Beats from `own` node id (a loop) are dropped.
    pub fn receive(&self, own: String, tx: mpsc::Sender<(Beat, Instant)>, audit: Audit) {
        let gate = Arc::new(Gate {
            key: self.key.clone(),
            seen: Mutex::new(HashMap::new()),
            logged: Mutex::new(HashMap::new()),
            audit,
        });
        for (s, peer) in &self.sockets {
            let (s, tx, own, gate, peer) =
                (s.clone(), tx.clone(), own.clone(), gate.clone(), *peer);
            tokio::spawn(async move {
                let mut buf = vec![0u8; MAX_DATAGRAM];
                loop {
                    let (n, from) = match s.recv_from(&mut buf).await {
                        Ok(x) => x,
                        Err(e) => {
                            warn!(error = %e, "heartbeat receive failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    match gate.check(from, peer, &buf[..n]) {
                        Ok(b) if b.node != own => {
                            if tx.send((b, Instant::now())).await.is_err() {
                                return;
                            }
                        }
                        Ok(_) => {}
                        Err(why) => gate.log_refusal(from, why),
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
        let a = Links::bind(&[(pa, pb)], key()).await.unwrap();
        let b = Links::bind(&[(pb, pa)], key()).await.unwrap();
        let (tx, mut rx) = mpsc::channel(8);
        b.receive("b".into(), tx, Audit::off());
        let beat = beat("a");
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

    fn key() -> BeatKey {
        BeatKey::new(&[7u8; 32]).unwrap()
    }

    fn beat(node: &str) -> Beat {
        Beat {
            node: node.into(),
            primary: true,
            epoch: 3,
            seq: 7,
            token: 42,
            echo: Some(9),
            maintenance: false,
        }
    }

    fn gate() -> Gate {
        Gate {
            key: key(),
            seen: Mutex::new(HashMap::new()),
            logged: Mutex::new(HashMap::new()),
            audit: Audit::off(),
        }
    }

    #[test]
    fn a_short_key_is_refused() {
        assert_eq!(BeatKey::new(&[1u8; 31]).err(), Some(ShortKey(31)));
        assert!(BeatKey::new(&[1u8; 32]).is_ok());
    }

    #[test]
    fn only_sealed_beats_from_the_peer_address_in_sequence_are_accepted() {
        let peer: SocketAddr = "127.0.0.1:7400".parse().unwrap();
        let other: SocketAddr = "127.0.0.9:7400".parse().unwrap();
        let g = gate();
        let sealed = key().seal(&beat("a"), 10);
        assert_eq!(g.check(peer, peer, &sealed), Ok(beat("a")));
        // The same datagram again (a replay), or an older one.
        assert_eq!(g.check(peer, peer, &sealed), Err(Refusal::Replayed));
        assert_eq!(
            g.check(peer, peer, &key().seal(&beat("a"), 9)),
            Err(Refusal::Replayed)
        );
        assert!(g.check(peer, peer, &key().seal(&beat("a"), 11)).is_ok());
        // From another address, even correctly sealed.
        assert_eq!(
            g.check(other, peer, &key().seal(&beat("a"), 12)),
            Err(Refusal::WrongSource)
        );
        // Under another key, or with one byte of the body changed (a lease stretched).
        let forged = BeatKey::new(&[8u8; 32]).unwrap().seal(&beat("a"), 13);
        assert_eq!(g.check(peer, peer, &forged), Err(Refusal::BadMac));
        let mut tampered = key().seal(&beat("a"), 14);
        let last = tampered.len() - 2;
        tampered[last] ^= 1;
        assert_eq!(g.check(peer, peer, &tampered), Err(Refusal::BadMac));
        // The old unauthenticated JSON beat.
        let plain = serde_json::to_vec(&beat("a")).unwrap();
        assert!(g.check(peer, peer, &plain).is_err());
        assert_eq!(g.check(peer, peer, b"x"), Err(Refusal::Malformed));
    }

    #[test]
    fn sequence_numbers_keep_rising() {
        let last = Mutex::new(0);
        let a = next_seq(&last);
        let b = next_seq(&last);
        assert!(b > a && a > 1_600_000_000_000_000);
    }
}
