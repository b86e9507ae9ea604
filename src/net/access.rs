//! Who may associate, by address: a calling AE title is accepted only from the hosts
//! configured for it (a known peer's `hosts`, else its `host`; `[access].unknown_ae_hosts` for
//! any other title). DNS names are resolved at each association, so a device that changes
//! address is followed; a name that does not resolve in time admits no one.
//!
//! With DICOM TLS a certificate is the stronger credential: a peer with `tls_subject` is
//! accepted from any address when its certificate names it, and refused under any other
//! certificate; a peer marked `tls` (or with a subject) is never accepted in clear.

use std::net::IpAddr;
use std::time::Duration;

use crate::config::{Config, HostPattern};
use crate::net::transport::CertIdentity;

/// Longest wait for a DNS answer while an association is being negotiated.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a calling AE title is not accepted over a connection (the association is rejected
/// with "calling AE title not recognized" and this is logged and audited).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotAccepted {
    #[error("calling AE title `{ae}` is accepted only over TLS")]
    NeedsTls { ae: String },
    #[error("calling AE title `{ae}` presented certificate `{presented}`, not `{wanted}`")]
    WrongCertificate {
        ae: String,
        presented: String,
        wanted: String,
    },
    #[error("calling AE title `{ae}` needs a client certificate naming `{wanted}`")]
    NoCertificate { ae: String, wanted: String },
    #[error("calling AE title `{ae}` is not accepted from {ip}")]
    WrongHost { ae: String, ip: IpAddr },
}

/// Whether `calling_ae` may associate from `ip` over this connection; `Err` says why not.
pub async fn credential(
    config: &Config,
    calling_ae: &str,
    ip: IpAddr,
    tls: bool,
    identity: Option<&CertIdentity>,
) -> Result<(), NotAccepted> {
    let ae = calling_ae.to_string();
    let peer = config.peer(calling_ae);
    if let Some(p) = peer
        && p.needs_tls()
        && !tls
    {
        return Err(NotAccepted::NeedsTls { ae });
    }
    if let Some(wanted) = peer.and_then(|p| p.tls_subject.as_deref()) {
        let wanted = wanted.to_string();
        return match identity {
            Some(id) if id.names(&wanted) => Ok(()),
            Some(id) => Err(NotAccepted::WrongCertificate {
                ae,
                presented: id.subject.clone(),
                wanted,
            }),
            None => Err(NotAccepted::NoCertificate { ae, wanted }),
        };
    }
    if admitted(ip, &config.hosts_for(calling_ae)).await {
        Ok(())
    } else {
        Err(NotAccepted::WrongHost { ae, ip })
    }
}

/// Whether `ip` is one of `patterns` (names resolved now).
pub async fn admitted(ip: IpAddr, patterns: &[HostPattern]) -> bool {
    if patterns.iter().any(|p| p.contains(ip)) {
        return true;
    }
    for p in patterns {
        if let HostPattern::Name(name) = p {
            let lookup = tokio::net::lookup_host((name.as_str(), 0));
            if let Ok(Ok(addrs)) = tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await
                && addrs
                    .map(|a| a.ip().to_canonical())
                    .any(|a| a == ip.to_canonical())
            {
                return true;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn addresses_networks_and_names() {
        let p = |s: &str| HostPattern::parse(s).unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(admitted(ip("127.0.0.1"), &[p("10.0.0.0/8"), p("127.0.0.1")]).await);
        assert!(!admitted(ip("127.0.0.2"), &[p("127.0.0.1")]).await);
        // `localhost` resolves through /etc/hosts, no network needed.
        assert!(admitted(ip("127.0.0.1"), &[p("localhost")]).await);
        assert!(!admitted(ip("192.0.2.1"), &[p("localhost")]).await);
        assert!(!admitted(ip("127.0.0.1"), &[]).await);
    }
}
