//! The replication link's encryption. Once both nodes have proved the pair key to each other
//! (replication.rs, a challenge-response over two fresh nonces), everything they send is
//! carried in sealed records, so patient data in index records and snapshots never crosses
//! the network in clear and nothing can be injected or replayed into the connection.
//!
//! 1. Keys: one per direction, HMAC-SHA256 under the pair key of the protocol label, the
//!    direction and both nonces. Fresh nonces make fresh keys for every connection.
//! 2. Records: a 4-byte big-endian length, then ChaCha20-Poly1305 ciphertext and tag of at
//!    most `MAX_RECORD` bytes of plaintext. The AEAD nonce is the record's number in its
//!    direction (a counter from 0), so a record dropped, repeated or moved fails to open.
//! 3. A record that fails to open, is too long, or a counter that would wrap, ends the link:
//!    both pipes close and the replication code sees end of stream.
//!
//! The replication code reads and writes plain byte pipes (`tokio::io::duplex`); one task per
//! direction seals or opens between a pipe and the socket.

use aws_lc_rs::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tracing::debug;

use super::heartbeat::BeatKey;

/// Largest plaintext in one record (a record is sealed as soon as the pipe has bytes, so
/// small frames go out at once and a snapshot in records of this size).
const MAX_RECORD: usize = 64 * 1024;
/// Poly1305 tag length.
const TAG: usize = 16;
/// Bytes buffered in each pipe between the replication code and the sealing task.
const PIPE: usize = 256 * 1024;
/// A socket write that takes longer than this ends the link (the peer stopped reading).
const WRITE_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Which end of the link this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Primary,
    Standby,
}

/// The key for records sent from `from`.
fn direction_key(
    key: &BeatKey,
    from: Side,
    primary_nonce: &str,
    standby_nonce: &str,
) -> LessSafeKey {
    let label: &[u8] = match from {
        Side::Primary => b"primary to standby",
        Side::Standby => b"standby to primary",
    };
    let bytes = key.tag(&[
        b"pacsd replication keys",
        label,
        primary_nonce.as_bytes(),
        standby_nonce.as_bytes(),
    ]);
    LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &bytes).expect("32-byte key"))
}

/// The AEAD nonce of record number `n`.
fn nonce(n: u64) -> Nonce {
    let mut b = [0u8; 12];
    b[4..].copy_from_slice(&n.to_be_bytes());
    Nonce::assume_unique_for_key(b)
}

/// Encrypt `plain` as record number `n`: the bytes to put on the wire (length, then
/// ciphertext and tag).
fn seal_record(key: &LessSafeKey, n: u64, plain: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + plain.len() + TAG);
    out.extend_from_slice(&((plain.len() + TAG) as u32).to_be_bytes());
    let mut body = plain.to_vec();
    key.seal_in_place_append_tag(nonce(n), Aad::empty(), &mut body)
        .expect("sealing cannot fail for in-range lengths");
    out.extend_from_slice(&body);
    out
}

/// Decrypt record number `n` (its body, without the length); `None` if it was not sealed
/// by the holder of the key as that record.
fn open_record(key: &LessSafeKey, n: u64, body: &mut [u8]) -> Option<usize> {
    key.open_in_place(nonce(n), Aad::empty(), body)
        .ok()
        .map(|p| p.len())
}

/// Wrap an authenticated connection: returns the pipes the replication code reads from
/// and writes to. `primary_nonce` and `standby_nonce` are the handshake's.
pub fn seal(
    socket: (OwnedReadHalf, OwnedWriteHalf),
    key: &BeatKey,
    us: Side,
    primary_nonce: &str,
    standby_nonce: &str,
) -> (DuplexStream, DuplexStream) {
    let them = match us {
        Side::Primary => Side::Standby,
        Side::Standby => Side::Primary,
    };
    let send_key = direction_key(key, us, primary_nonce, standby_nonce);
    let recv_key = direction_key(key, them, primary_nonce, standby_nonce);
    let (mut tcp_r, mut tcp_w) = socket;
    let (app_reader, mut pump_in) = tokio::io::duplex(PIPE);
    let (app_writer, mut pump_out) = tokio::io::duplex(PIPE);

    // Outbound: whatever the replication code wrote, sealed, to the socket.
    tokio::spawn(async move {
        let mut buf = vec![0u8; MAX_RECORD];
        let mut n = 0u64;
        loop {
            let len = match pump_out.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(len) => len,
            };
            let record = seal_record(&send_key, n, &buf[..len]);
            let Some(next) = n.checked_add(1) else { break };
            n = next;
            match tokio::time::timeout(WRITE_LIMIT, tcp_w.write_all(&record)).await {
                Ok(Ok(())) => {}
                _ => break,
            }
        }
        let _ = tcp_w.shutdown().await;
    });

    // Inbound: records from the socket, opened, to the replication code.
    tokio::spawn(async move {
        let mut n = 0u64;
        let mut body = vec![0u8; MAX_RECORD + TAG];
        while let Ok(len) = tcp_r.read_u32().await {
            let len = len as usize;
            if !(TAG..=MAX_RECORD + TAG).contains(&len) {
                debug!(len, "replication record of impossible length; link closed");
                break;
            }
            if tcp_r.read_exact(&mut body[..len]).await.is_err() {
                break;
            }
            let Some(plain) = open_record(&recv_key, n, &mut body[..len]) else {
                debug!(
                    record = n,
                    "replication record failed authentication; link closed"
                );
                break;
            };
            let Some(next) = n.checked_add(1) else { break };
            n = next;
            if pump_in.write_all(&body[..plain]).await.is_err() {
                break;
            }
        }
    });
    (app_reader, app_writer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> BeatKey {
        BeatKey::new(&[b; 32]).unwrap()
    }

    #[test]
    fn a_record_opens_only_with_its_key_and_its_number() {
        let k = direction_key(&key(1), Side::Primary, "aa", "bb");
        let wire = seal_record(&k, 7, b"index record");
        assert!(
            !wire.windows(12).any(|w| w == b"index record"),
            "sent in clear"
        );
        let mut body = wire[4..].to_vec();
        let n = open_record(&k, 7, &mut body).unwrap();
        assert_eq!(&body[..n], b"index record");
        // Replayed as another record number.
        assert!(open_record(&k, 8, &mut wire[4..].to_vec()).is_none());
        // The other direction's key, another connection's nonces, another pair key.
        let back = direction_key(&key(1), Side::Standby, "aa", "bb");
        assert!(open_record(&back, 7, &mut wire[4..].to_vec()).is_none());
        let other = direction_key(&key(1), Side::Primary, "aa", "bc");
        assert!(open_record(&other, 7, &mut wire[4..].to_vec()).is_none());
        let stranger = direction_key(&key(2), Side::Primary, "aa", "bb");
        assert!(open_record(&stranger, 7, &mut wire[4..].to_vec()).is_none());
        // One bit changed.
        let mut flipped = wire[4..].to_vec();
        flipped[0] ^= 1;
        assert!(open_record(&k, 7, &mut flipped).is_none());
    }

    #[tokio::test]
    async fn bytes_cross_a_sealed_link_and_a_tampered_record_closes_it() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (mut pr, mut pw) = seal(client.into_split(), &key(3), Side::Primary, "n1", "n2");
        let (mut sr, mut sw) = seal(server.into_split(), &key(3), Side::Standby, "n1", "n2");
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let sending = {
            let big = big.clone();
            tokio::spawn(async move {
                pw.write_all(&big).await.unwrap();
                pw
            })
        };
        let mut got = vec![0u8; big.len()];
        sr.read_exact(&mut got).await.unwrap();
        assert_eq!(got, big);
        let _pw = sending.await.unwrap();
        sw.write_all(b"ack").await.unwrap();
        let mut ack = [0u8; 3];
        pr.read_exact(&mut ack).await.unwrap();
        assert_eq!(&ack, b"ack");

        // A forged record (right length, wrong key) injected on a raw connection: the
        // receiving side closes the link instead of delivering anything.
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (mut sr, _sw) = seal(server.into_split(), &key(3), Side::Standby, "n1", "n2");
        let forger = direction_key(&key(4), Side::Primary, "n1", "n2");
        let mut raw = client;
        raw.write_all(&seal_record(&forger, 0, b"forged"))
            .await
            .unwrap();
        let mut buf = Vec::new();
        assert_eq!(
            sr.read_to_end(&mut buf).await.unwrap(),
            0,
            "delivered {buf:?}"
        );
    }
}
