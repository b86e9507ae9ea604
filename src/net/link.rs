//! The PDU core of one DICOM connection, the same for the acceptor (`Association`) and the
//! requestor (`ScuAssociation`): the transport and its peer, PDU reads bounded in size and
//! cancel-safe, P-DATA fragmentation to the peer's PDU size in vectored writes, a timeout on
//! every write, A-ABORT. Neither side reads or writes the socket any other way.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use dicom_ul::pdu::{AbortRQSource, PDataValueType};
use dicom_ul::{Pdu, read_pdu, write_pdu};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::debug;

use super::association::NetError;
use super::transport::{CertIdentity, Transport};
use crate::dimse::Command;

/// PDV item header (length, context id, flags): what a PDU's length counts beyond the data.
pub(crate) const PDV_HEADER: usize = 6;

/// One connection: the transport, its buffers, what the peer can receive and the limit on
/// every write.
pub struct Link {
    socket: Transport,
    peer: SocketAddr,
    read_buf: BytesMut,
    write_buf: Vec<u8>,
    /// The largest PDU the peer receives (its A-ASSOCIATE maximum length); the default until
    /// negotiated.
    pub(crate) peer_max_pdu: u32,
    write_timeout: Duration,
}

impl Link {
    pub fn new(socket: Transport, peer: SocketAddr, write_timeout: Duration) -> Link {
        Link {
            socket,
            peer,
            read_buf: BytesMut::with_capacity(64 * 1024),
            write_buf: Vec::with_capacity(64 * 1024),
            peer_max_pdu: dicom_ul::pdu::DEFAULT_MAX_PDU,
            write_timeout,
        }
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    pub fn is_tls(&self) -> bool {
        self.socket.is_tls()
    }

    /// The peer's verified certificate, over TLS.
    pub fn peer_identity(&self) -> Option<CertIdentity> {
        self.socket.peer_identity()
    }

    /// Read one PDU of at most `max_pdu` bytes (a longer one is an error, not an
    /// allocation). No timeout of its own: the caller bounds the wait. Cancel-safe.
    pub async fn read_pdu(&mut self, max_pdu: u32) -> Result<Pdu, NetError> {
        read_pdu_from(&mut self.socket, self.peer, &mut self.read_buf, max_pdu).await
    }

    /// Without waiting: read what has arrived, and take the first buffered PDU when it is
    /// complete and `wanted` says so; otherwise leave everything buffered for `read_pdu`.
    /// A closed connection is an error.
    pub fn take_buffered(
        &mut self,
        max_pdu: u32,
        wanted: impl Fn(&Pdu) -> bool,
    ) -> Result<Option<Pdu>, NetError> {
        loop {
            match self.socket.try_read_buf(&mut self.read_buf) {
                Ok(0) => return Err(NetError::Closed { peer: self.peer }),
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(source) => {
                    return Err(NetError::Read {
                        peer: self.peer,
                        source,
                    });
                }
            }
        }
        let mut cursor = std::io::Cursor::new(&self.read_buf[..]);
        match read_pdu(&mut cursor, max_pdu, true) {
            Ok(Some(pdu)) if wanted(&pdu) => {
                let used = cursor.position() as usize;
                let _ = self.read_buf.split_to(used);
                Ok(Some(pdu))
            }
            _ => Ok(None),
        }
    }

    pub async fn send_pdu(&mut self, pdu: &Pdu) -> Result<(), NetError> {
        self.write_buf.clear();
        write_pdu(&mut self.write_buf, pdu).map_err(|e| NetError::Encode(e.to_string()))?;
        write_all(
            &mut self.socket,
            self.peer,
            &self.write_buf,
            self.write_timeout,
        )
        .await
    }

    /// Send a command set (and nothing else) on a presentation context.
    pub async fn send_command(
        &mut self,
        context_id: u8,
        command: &Command,
    ) -> Result<(), NetError> {
        let bytes = command.encode()?;
        self.send_parts(context_id, &[(PDataValueType::Command, &bytes)])
            .await
    }

    /// Send a data set on a presentation context, fragmented to the peer's PDU size.
    pub async fn send_data(&mut self, context_id: u8, data: &[u8]) -> Result<(), NetError> {
        self.send_parts(context_id, &[(PDataValueType::Data, data)])
            .await
    }

    /// Send a command set and its data set, the command's PDU in the same write as the data
    /// set's first PDUs.
    pub async fn send_message(
        &mut self,
        context_id: u8,
        command: &Command,
        data: &[u8],
    ) -> Result<(), NetError> {
        let bytes = command.encode()?;
        self.send_parts(
            context_id,
            &[
                (PDataValueType::Command, &bytes),
                (PDataValueType::Data, data),
            ],
        )
        .await
    }

    async fn send_parts(
        &mut self,
        context_id: u8,
        parts: &[(PDataValueType, &[u8])],
    ) -> Result<(), NetError> {
        send_fragments(
            &mut self.socket,
            self.peer,
            &mut self.write_buf,
            self.peer_max_pdu,
            self.write_timeout,
            context_id,
            parts,
        )
        .await
    }

    /// Write raw bytes (tests use it to cut a message short).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), NetError> {
        write_all(&mut self.socket, self.peer, bytes, self.write_timeout).await
    }

    /// Send A-ABORT best-effort and close the connection.
    pub async fn abort(&mut self, source: AbortRQSource) {
        if let Err(e) = self.send_pdu(&Pdu::AbortRQ { source }).await {
            debug!(peer = %self.peer, error = %e, "could not send A-ABORT");
        }
        self.shutdown().await;
    }

    /// Close the connection (after a release, or an abort).
    pub async fn shutdown(&mut self) {
        let _ = self.socket.shutdown().await;
    }
}

/// Read one PDU, bounded by `max_pdu` (strict: a longer PDU is an error, not an allocation).
/// Cancel-safe: bytes read so far stay in `buf`.
async fn read_pdu_from(
    socket: &mut Transport,
    peer: SocketAddr,
    buf: &mut BytesMut,
    max_pdu: u32,
) -> Result<Pdu, NetError> {
    let bad = |e: dicom_ul::pdu::ReadError| NetError::BadPdu {
        peer,
        reason: e.to_string(),
    };
    loop {
        if let Some(len) = complete_pdu(buf) {
            // The PDU handed over as shared bytes: dicom-ul then slices it instead of copying
            // it (from a `Cursor` it copied every PDU whole before copying out its PDVs).
            return match read_pdu(buf.split_to(len).freeze(), max_pdu, true) {
                Ok(Some(pdu)) => Ok(pdu),
                Ok(None) => Err(NetError::BadPdu {
                    peer,
                    reason: "PDU shorter than its length".to_string(),
                }),
                Err(e) => Err(bad(e)),
            };
        }
        // Incomplete: dicom-ul still reads the header, so that a PDU longer than `max_pdu`
        // is refused before its body is waited for.
        read_pdu(std::io::Cursor::new(&buf[..]), max_pdu, true).map_err(bad)?;
        if buf.capacity() - buf.len() < 64 * 1024 {
            buf.reserve(256 * 1024);
        }
        let n = socket
            .read_buf(buf)
            .await
            .map_err(|source| NetError::Read { peer, source })?;
        if n == 0 {
            return Err(NetError::Closed { peer });
        }
    }
}

/// The length of the first PDU in `buf` (its 6-byte header included) when all of it is there.
fn complete_pdu(buf: &[u8]) -> Option<usize> {
    let header: [u8; 6] = buf.get(..6)?.try_into().ok()?;
    let len = 6 + u32::from_be_bytes([header[2], header[3], header[4], header[5]]) as usize;
    (buf.len() >= len).then_some(len)
}

async fn write_all(
    socket: &mut Transport,
    peer: SocketAddr,
    bytes: &[u8],
    timeout: Duration,
) -> Result<(), NetError> {
    write_all_vectored(socket, peer, &mut [std::io::IoSlice::new(bytes)], timeout).await
}

/// Write `parts` (a command, or a command and its data set, or a data set) in order as
/// P-DATA-TF PDUs of at most `peer_max_pdu`, one PDV each, the last of each part flagged.
async fn send_fragments(
    socket: &mut Transport,
    peer: SocketAddr,
    write_buf: &mut Vec<u8>,
    peer_max_pdu: u32,
    timeout: Duration,
    context_id: u8,
    parts: &[(PDataValueType, &[u8])],
) -> Result<(), NetError> {
    // PDU length counts the PDV item: 4-byte item length + context id + control header.
    let max_chunk = (peer_max_pdu as usize).saturating_sub(PDV_HEADER).max(1);
    let mut fragments = Fragments {
        parts,
        part: 0,
        next: 0,
        max_chunk,
    }
    .peekable();
    // Each fragment goes out with its PDU header in one vectored write of up to WRITE_BATCH
    // bytes: the data set is not copied into a buffer first (a copy of every byte sent), a
    // peer with a small receive PDU (16 KiB is common) does not cost a system call per 16 KiB,
    // and a command goes out in the same write as its data set (one system call, and one
    // wake-up of the peer, fewer per message). `write_buf` holds the headers of one batch.
    while fragments.peek().is_some() {
        write_buf.clear();
        let mut batch: Vec<&[u8]> = Vec::new();
        let mut batch_bytes = 0;
        while let Some((control, chunk)) =
            fragments.next_if(|_| batch_bytes < WRITE_BATCH && batch.len() < MAX_BATCH_FRAGMENTS)
        {
            push_pdata_header(write_buf, context_id, control, chunk.len());
            batch.push(chunk);
            batch_bytes += chunk.len();
        }
        let mut slices: Vec<std::io::IoSlice<'_>> = write_buf
            .chunks(PDATA_HEADER)
            .zip(&batch)
            .flat_map(|(h, c)| [std::io::IoSlice::new(h), std::io::IoSlice::new(c)])
            .collect();
        write_all_vectored(socket, peer, &mut slices, timeout).await?;
    }
    Ok(())
}

/// Write every byte of `slices` (one `writev` each time the socket takes bytes) and flush
/// (TLS buffers what it encrypts: the flush is what puts it on the wire), within `timeout`.
async fn write_all_vectored(
    socket: &mut Transport,
    peer: SocketAddr,
    mut slices: &mut [std::io::IoSlice<'_>],
    timeout: Duration,
) -> Result<(), NetError> {
    let write = async {
        while !slices.is_empty() {
            let n = socket.write_vectored(slices).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            std::io::IoSlice::advance_slices(&mut slices, n);
        }
        socket.flush().await
    };
    match tokio::time::timeout(timeout, write).await {
        Ok(r) => r.map_err(|source| NetError::Write { peer, source }),
        Err(_) => Err(NetError::Timeout {
            peer,
            what: "the peer to read",
            after: timeout,
        }),
    }
}

/// The PDVs of a message's parts in order: (message control header, bytes) each, at most
/// `max_chunk` bytes; an empty part is still one (empty, last) fragment (PS3.8 E.2).
struct Fragments<'p> {
    parts: &'p [(PDataValueType, &'p [u8])],
    /// The part being cut, and where its next fragment starts.
    part: usize,
    next: usize,
    max_chunk: usize,
}

impl<'p> Iterator for Fragments<'p> {
    type Item = (u8, &'p [u8]);

    fn next(&mut self) -> Option<(u8, &'p [u8])> {
        let (value_type, bytes) = self.parts.get(self.part)?;
        let end = (self.next + self.max_chunk).min(bytes.len());
        let fragment = &bytes[self.next..end];
        let last = end == bytes.len();
        let mut control = if last { 2 } else { 0 };
        if *value_type == PDataValueType::Command {
            control |= 1;
        }
        if last {
            (self.part, self.next) = (self.part + 1, 0);
        } else {
            self.next = end;
        }
        Some((control, fragment))
    }
}

/// At most this many PDUs in one vectored write (two slices each; Linux takes 1024).
const MAX_BATCH_FRAGMENTS: usize = 64;

/// Bytes of P-DATA-TF PDUs gathered before one socket write.
const WRITE_BATCH: usize = 256 * 1024;

/// A P-DATA-TF PDU's header and its one PDV item's header: PDU type, reserved, PDU length,
/// item length, context ID, message control header (PS3.8 9.3.5 and E.2).
const PDATA_HEADER: usize = 12;

/// Encode the header of a P-DATA-TF PDU holding one PDV of `len` bytes (the PDV's data
/// follows it). Written by hand so that a large data set is framed without being copied.
fn push_pdata_header(out: &mut Vec<u8>, context_id: u8, control: u8, len: usize) {
    let item_len = (len + 2) as u32;
    let pdu_len = item_len + 4;
    out.extend_from_slice(&[0x04, 0x00]);
    out.extend_from_slice(&pdu_len.to_be_bytes());
    out.extend_from_slice(&item_len.to_be_bytes());
    out.push(context_id);
    out.push(control);
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_ul::pdu::PDataValue;

    /// The bytes a link with the peer's PDU size `max_pdu` puts on a socket for `data` on
    /// context 3, after `command` when there is one (`send_message`, else `send_data`).
    async fn on_the_wire(max_pdu: u32, command: Option<&Command>, data: &[u8]) -> Vec<u8> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let reader = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut s, &mut got)
                .await
                .unwrap();
            got
        });
        let socket = Transport::Tcp(tokio::net::TcpStream::connect(addr).await.unwrap());
        let mut link = Link::new(socket, addr, Duration::from_secs(5));
        link.peer_max_pdu = max_pdu;
        match command {
            Some(c) => link.send_message(3, c, data).await.unwrap(),
            None => link.send_data(3, data).await.unwrap(),
        }
        drop(link);
        reader.await.unwrap()
    }

    /// dicom-ul's framing of `bytes` as PDVs of at most `chunk` bytes, one per PDU.
    fn framed(out: &mut Vec<u8>, bytes: &[u8], chunk: usize, value_type: PDataValueType) {
        let pieces: Vec<&[u8]> = if bytes.is_empty() {
            vec![&[]]
        } else {
            bytes.chunks(chunk).collect()
        };
        let n = pieces.len();
        for (i, piece) in pieces.into_iter().enumerate() {
            let pdv = PDataValue {
                presentation_context_id: 3,
                value_type: value_type.clone(),
                is_last: i + 1 == n,
                data: piece.to_vec(),
            };
            write_pdu(out, &Pdu::PData { data: vec![pdv] }).unwrap();
        }
    }

    #[tokio::test]
    async fn pdus_read_whole_however_the_bytes_arrive_and_too_long_ones_before_their_body() {
        // Two P-DATA PDUs and an A-RELEASE-RQ back to back, written in pieces that cut
        // headers and PDVs anywhere: each comes back as dicom-ul reads it from one buffer.
        let data: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
        let mut wire = Vec::new();
        framed(&mut wire, &data, 40_000, PDataValueType::Data);
        write_pdu(&mut wire, &Pdu::ReleaseRQ).unwrap();
        let mut expected = Vec::new();
        let mut rest = &wire[..];
        while let Some(pdu) = read_pdu(&mut rest, 65_536, true).unwrap() {
            expected.push(pdu);
        }
        assert_eq!(expected.len(), 3);
        for piece in [1, 5, 7, 4096, 65_536] {
            let (mut near, far) = pair().await;
            let bytes = wire.clone();
            let writer = tokio::spawn(async move {
                let mut far = far;
                for chunk in bytes.chunks(piece) {
                    far.write_all(chunk).await.unwrap();
                    far.flush().await.unwrap();
                }
                far
            });
            for want in &expected {
                assert_eq!(
                    &near.read_pdu(65_536).await.unwrap(),
                    want,
                    "pieces of {piece}"
                );
            }
            drop(writer.await.unwrap());
            assert!(matches!(
                near.read_pdu(65_536).await,
                Err(NetError::Closed { .. })
            ));
        }
        // Only the 6-byte header of a PDU longer than the limit: refused without its body.
        let (mut near, mut far) = pair().await;
        far.write_all(&[0x04, 0, 0, 1, 0, 1]).await.unwrap();
        let refused = tokio::time::timeout(Duration::from_secs(5), near.read_pdu(65_536)).await;
        assert!(
            matches!(refused, Ok(Err(NetError::BadPdu { .. }))),
            "{refused:?}"
        );
        assert_eq!(complete_pdu(&[0x04, 0, 0, 0, 0]), None);
        assert_eq!(complete_pdu(&[0x04, 0, 0, 0, 0, 2, 9]), None);
        assert_eq!(complete_pdu(&[0x04, 0, 0, 0, 0, 2, 9, 9, 1]), Some(8));
    }

    /// A link and the raw socket at its other end, over loopback.
    async fn pair() -> (Link, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let far = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (near, peer) = listener.accept().await.unwrap();
        let link = Link::new(Transport::Tcp(near), peer, Duration::from_secs(5));
        (link, far)
    }

    #[tokio::test]
    async fn fragments_sent_in_vectored_batches_are_what_dicom_ul_would_frame() {
        // 100 PDUs of at most 1000 bytes (so batches end on MAX_BATCH_FRAGMENTS) and one
        // data set larger than WRITE_BATCH: the bytes on the wire are dicom-ul's framing.
        for (max_pdu, len) in [(1000u32, 99_000usize), (16_384, 600_000)] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let got = on_the_wire(max_pdu, None, &data).await;
            let mut expected = Vec::new();
            framed(
                &mut expected,
                &data,
                max_pdu as usize - PDV_HEADER,
                PDataValueType::Data,
            );
            assert_eq!(got.len(), expected.len());
            assert!(got == expected, "framing differs for max PDU {max_pdu}");
        }
    }

    #[tokio::test]
    async fn a_message_goes_out_as_its_command_then_its_data_set() {
        // A command in one PDU and in several (a peer's PDU of 64 bytes), with a data set,
        // and with an empty one: the bytes are dicom-ul's framing of the two in turn.
        let command = Command::store_rq(7, "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4");
        let encoded = command.encode().unwrap();
        for (max_pdu, len) in [(16_384u32, 600_000usize), (64, 1000), (16_384, 0)] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let got = on_the_wire(max_pdu, Some(&command), &data).await;
            let chunk = max_pdu as usize - PDV_HEADER;
            let mut expected = Vec::new();
            framed(&mut expected, &encoded, chunk, PDataValueType::Command);
            framed(&mut expected, &data, chunk, PDataValueType::Data);
            assert!(
                got == expected,
                "framing differs: max PDU {max_pdu}, {len} bytes"
            );
        }
    }

    #[test]
    fn hand_framed_pdata_matches_dicom_ul() {
        for (control, vt, last) in [
            (3u8, PDataValueType::Command, true),
            (0u8, PDataValueType::Data, false),
            (2u8, PDataValueType::Data, true),
        ] {
            let data = vec![7u8; 1000];
            let mut ours = Vec::new();
            push_pdata_header(&mut ours, 5, control, data.len());
            ours.extend_from_slice(&data);
            let mut theirs = Vec::new();
            write_pdu(
                &mut theirs,
                &Pdu::PData {
                    data: vec![PDataValue {
                        presentation_context_id: 5,
                        value_type: vt,
                        is_last: last,
                        data: data.clone(),
                    }],
                },
            )
            .unwrap();
            assert_eq!(ours, theirs);
        }
    }
}
