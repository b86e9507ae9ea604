//! The byte stream under an association: plain TCP, or TLS (PS3.15 B.9) as acceptor or as
//! requestor. The association code reads and writes it without knowing which; what TLS adds
//! (the peer's verified certificate) is asked for by name.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::FutureExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// What a verified TLS peer certificate says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertIdentity {
    /// The subject as RFC 4514 text in certificate order, e.g. `O=Hospital, CN=CT1`.
    pub subject: String,
    /// The subject's common name, when it has one.
    pub common_name: Option<String>,
}

impl CertIdentity {
    /// Read the subject of a DER certificate; `None` when it does not parse (a certificate
    /// that rustls verified always does).
    pub fn from_der(der: &[u8]) -> Option<CertIdentity> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let subject = cert.subject();
        let common_name = subject
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string);
        Some(CertIdentity {
            subject: subject.to_string(),
            common_name,
        })
    }

    /// Whether this certificate is the one a peer entry names: `wanted` is either the whole
    /// subject (`O=Hospital, CN=CT1`) or only its common name (`CN=CT1`).
    pub fn names(&self, wanted: &str) -> bool {
        let wanted = wanted.trim();
        if wanted == self.subject {
            return true;
        }
        match (wanted.strip_prefix("CN="), &self.common_name) {
            (Some(cn), Some(ours)) => cn == ours,
            _ => false,
        }
    }
}

pub enum Transport {
    Tcp(TcpStream),
    TlsAcceptor(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    TlsRequestor(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Transport {
    pub fn is_tls(&self) -> bool {
        !matches!(self, Transport::Tcp(_))
    }

    pub fn tcp(&self) -> &TcpStream {
        match self {
            Transport::Tcp(s) => s,
            Transport::TlsAcceptor(s) => s.get_ref().0,
            Transport::TlsRequestor(s) => s.get_ref().0,
        }
    }

    /// The verified certificate of the TLS peer (its first, end-entity certificate).
    pub fn peer_identity(&self) -> Option<CertIdentity> {
        let certs = match self {
            Transport::Tcp(_) => return None,
            Transport::TlsAcceptor(s) => s.get_ref().1.peer_certificates(),
            Transport::TlsRequestor(s) => s.get_ref().1.peer_certificates(),
        };
        CertIdentity::from_der(certs?.first()?.as_ref())
    }

    /// Read what has already arrived without waiting: `Ok(0)` is end of stream, `WouldBlock`
    /// nothing yet. For TLS this decrypts records already received; a partial record stays
    /// inside the TLS session for the next read.
    pub fn try_read_buf(&mut self, buf: &mut bytes::BytesMut) -> io::Result<usize> {
        match self {
            Transport::Tcp(s) => s.try_read_buf(buf),
            _ => match self.read_buf(buf).now_or_never() {
                Some(r) => r,
                None => Err(io::ErrorKind::WouldBlock.into()),
            },
        }
    }
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Transport::TlsAcceptor(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Transport::TlsRequestor(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Transport::TlsAcceptor(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Transport::TlsRequestor(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Transport::TlsAcceptor(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Transport::TlsRequestor(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Transport::Tcp(s) => s.is_write_vectored(),
            Transport::TlsAcceptor(s) => s.is_write_vectored(),
            Transport::TlsRequestor(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_flush(cx),
            Transport::TlsAcceptor(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Transport::TlsRequestor(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Transport::TlsAcceptor(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Transport::TlsRequestor(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_is_named_by_its_whole_subject_or_its_common_name() {
        let id = CertIdentity {
            subject: "O=Hospital, CN=CT1".into(),
            common_name: Some("CT1".into()),
        };
        assert!(id.names("O=Hospital, CN=CT1"));
        assert!(id.names("CN=CT1"));
        assert!(!id.names("CN=CT2"));
        assert!(!id.names("CT1"), "a bare name is not a subject");
        assert!(!id.names("O=Other, CN=CT1"));
        let no_cn = CertIdentity {
            subject: "O=Hospital".into(),
            common_name: None,
        };
        assert!(!no_cn.names("CN="));
    }
}
