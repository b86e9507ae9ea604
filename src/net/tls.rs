//! DICOM TLS (PS3.15 B.9, the BCP 195 profiles): rustls configurations for the TLS listener
//! and for associations this node opens to TLS peers, built once from `[tls]`.
//!
//! BCP 195 asks for TLS 1.2 or later with ECDHE key exchange and AEAD ciphers; rustls offers
//! nothing else (no RSA key exchange, no CBC, no renegotiation), so its defaults are the
//! profile. Both directions present this node's certificate and verify the peer's against
//! `tls.ca`: as acceptor a requestor must present one (unless configured otherwise), as
//! requestor the destination's server certificate must name the host we connect to.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::config::TlsConfig;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls.{key} ({path}): {reason}")]
    File {
        key: &'static str,
        path: String,
        reason: String,
    },
    #[error("tls: {0}")]
    Config(String),
}

/// Both rustls configurations of a node, shared by every association.
#[derive(Clone)]
pub struct TlsContext {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub connector: tokio_rustls::TlsConnector,
    /// The requestor configuration itself (the audit trail's syslog-over-TLS forwarder).
    pub client: Arc<ClientConfig>,
    /// HTTPS on the HTTP port (`http.tls`): the same certificate, no client certificate
    /// asked for (web clients sign in with an account), HTTP/2 or HTTP/1.1 by ALPN.
    pub web: tokio_rustls::TlsAcceptor,
}

impl std::fmt::Debug for TlsContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsContext")
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

fn certs(
    key: &'static str,
    path: &std::path::Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |reason: String| TlsError::File {
        key,
        path: path.display().to_string(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no PEM certificate in it".into()));
    }
    Ok(certs)
}

impl TlsContext {
    pub fn load(config: &TlsConfig) -> Result<TlsContext, TlsError> {
        let chain = certs("certificate", &config.certificate)?;
        let key =
            PrivateKeyDer::from_pem_file(&config.private_key).map_err(|e| TlsError::File {
                key: "private_key",
                path: config.private_key.display().to_string(),
                reason: e.to_string(),
            })?;
        let mut roots = RootCertStore::empty();
        for ca in certs("ca", &config.ca)? {
            roots.add(ca).map_err(|e| TlsError::File {
                key: "ca",
                path: config.ca.display().to_string(),
                reason: e.to_string(),
            })?;
        }
        let roots = Arc::new(roots);
        let bad = |e: &dyn std::fmt::Display| TlsError::Config(e.to_string());

        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider());
        let verifier = if config.require_client_certificate {
            verifier
        } else {
            verifier.allow_unauthenticated()
        }
        .build()
        .map_err(|e| bad(&e))?;
        // The DICOM side checks client certificates; the web side does not (its clients log
        // in). Both present the node's certificate.
        let server_side = || {
            ServerConfig::builder_with_provider(provider())
                .with_protocol_versions(VERSIONS)
                .map_err(|e| bad(&e))
        };
        let server = server_side()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| bad(&e))?;
        let mut web = server_side()?
            .with_no_client_auth()
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| bad(&e))?;
        web.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let client = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(VERSIONS)
            .map_err(|e| bad(&e))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| bad(&e))?;
        let client = Arc::new(client);
        Ok(TlsContext {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
            connector: tokio_rustls::TlsConnector::from(client.clone()),
            client,
            web: tokio_rustls::TlsAcceptor::from(Arc::new(web)),
        })
    }
}

/// The name a destination's certificate must carry: an IP address or a DNS name.
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(host.to_string())
        .map_err(|_| TlsError::Config(format!("`{host}` is not a host name or IP address")))
}
