//! The service address that moves with the primary: added to and removed from the interface
//! with netlink (rtnetlink), announced with a burst of gratuitous ARPs sent from a packet
//! socket so that clients and switches drop their stale entry at once (measured: without
//! them a client kept the old MAC for 47 s), and listened on with IP_FREEBIND so that the
//! listener exists before the address does.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use futures::TryStreamExt;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

/// When the gratuitous ARPs go out, counted from the moment the address was added.
pub const GARP_SCHEDULE: [Duration; 6] = [
    Duration::from_millis(0),
    Duration::from_millis(20),
    Duration::from_millis(100),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(5),
];

#[derive(Debug, thiserror::Error)]
pub enum VipError {
    #[error("`{0}` is not an IPv4 address with a prefix")]
    Parse(String),
    #[error("interface {0} not found")]
    NoInterface(String),
    #[error("netlink: {0}")]
    Netlink(String),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
}

/// The service address and the interface it lives on.
#[derive(Debug, Clone)]
pub struct ServiceIp {
    pub addr: Ipv4Addr,
    pub prefix: u8,
    pub interface: String,
}

impl ServiceIp {
    pub fn parse(cidr: &str, interface: &str) -> Result<ServiceIp, VipError> {
        let (a, p) = cidr
            .split_once('/')
            .ok_or_else(|| VipError::Parse(cidr.to_string()))?;
        Ok(ServiceIp {
            addr: a.parse().map_err(|_| VipError::Parse(cidr.to_string()))?,
            prefix: p
                .parse()
                .ok()
                .filter(|p| *p <= 32)
                .ok_or_else(|| VipError::Parse(cidr.to_string()))?,
            interface: interface.to_string(),
        })
    }

    fn ifindex(&self) -> Result<u32, VipError> {
        let name = std::ffi::CString::new(self.interface.as_str())
            .map_err(|_| VipError::NoInterface(self.interface.clone()))?;
        // SAFETY: a valid NUL-terminated string; the call only reads it.
        let i = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if i == 0 {
            return Err(VipError::NoInterface(self.interface.clone()));
        }
        Ok(i)
    }

    /// Add the address (idempotent).
    pub async fn add(&self) -> Result<(), VipError> {
        let index = self.ifindex()?;
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|e| VipError::Netlink(e.to_string()))?;
        let task = tokio::spawn(conn);
        let r = handle
            .address()
            .add(index, self.addr.into(), self.prefix)
            .replace()
            .execute()
            .await
            .map_err(|e| VipError::Netlink(e.to_string()));
        task.abort();
        r
    }

    /// Remove the address if it is there.
    pub async fn remove(&self) -> Result<(), VipError> {
        let index = self.ifindex()?;
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|e| VipError::Netlink(e.to_string()))?;
        let task = tokio::spawn(conn);
        let r = async {
            let found: Vec<_> = handle
                .address()
                .get()
                .set_link_index_filter(index)
                .set_address_filter(self.addr.into())
                .execute()
                .try_collect()
                .await
                .map_err(|e| VipError::Netlink(e.to_string()))?;
            for msg in found {
                handle
                    .address()
                    .del(msg)
                    .execute()
                    .await
                    .map_err(|e| VipError::Netlink(e.to_string()))?;
            }
            Ok(())
        }
        .await;
        task.abort();
        r
    }

    /// Send the gratuitous ARP burst in the background (abort the handle to stop it).
    pub fn announce(&self) -> JoinHandle<()> {
        let ip = self.clone();
        tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            for (n, at) in GARP_SCHEDULE.iter().enumerate() {
                tokio::time::sleep_until(start + *at).await;
                let one = ip.clone();
                let sent = tokio::task::spawn_blocking(move || one.send_garp()).await;
                match sent {
                    Ok(Ok(())) => debug!(n, addr = %ip.addr, "gratuitous ARP sent"),
                    Ok(Err(e)) => warn!(error = %e, "gratuitous ARP not sent"),
                    Err(e) => warn!(error = %e, "gratuitous ARP task failed"),
                }
            }
        })
    }

    fn mac(&self) -> Result<[u8; 6], VipError> {
        let path = format!("/sys/class/net/{}/address", self.interface);
        let text = std::fs::read_to_string(&path).map_err(|source| VipError::Io {
            what: "reading the interface's MAC address",
            source,
        })?;
        let mut mac = [0u8; 6];
        let parts: Vec<&str> = text.trim().split(':').collect();
        if parts.len() != 6 {
            return Err(VipError::NoInterface(self.interface.clone()));
        }
        for (m, p) in mac.iter_mut().zip(parts) {
            *m = u8::from_str_radix(p, 16)
                .map_err(|_| VipError::NoInterface(self.interface.clone()))?;
        }
        Ok(mac)
    }

    /// One gratuitous ARP (an ARP request for our own address, broadcast: RFC 5227 3's
    /// "ARP Announcement"), from a packet socket on the interface.
    fn send_garp(&self) -> Result<(), VipError> {
        let index = self.ifindex()?;
        let mac = self.mac()?;
        let frame = garp_frame(mac, self.addr);
        let io = |what| move |source| VipError::Io { what, source };
        // SAFETY: plain socket calls with sizes taken from the values passed; the fd is
        // closed on every path.
        unsafe {
            let fd = libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW,
                (libc::ETH_P_ARP as u16).to_be() as i32,
            );
            if fd < 0 {
                return Err(io("opening a packet socket")(
                    std::io::Error::last_os_error(),
                ));
            }
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = (libc::ETH_P_ARP as u16).to_be();
            sll.sll_ifindex = index as i32;
            sll.sll_halen = 6;
            sll.sll_addr[..6].copy_from_slice(&[0xff; 6]);
            let n = libc::sendto(
                fd,
                frame.as_ptr() as *const libc::c_void,
                frame.len(),
                0,
                &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            if n < 0 {
                return Err(io("sending a gratuitous ARP")(err));
            }
        }
        Ok(())
    }
}

/// An Ethernet frame carrying an ARP announcement of `ip` at `mac` (RFC 826 layout).
pub fn garp_frame(mac: [u8; 6], ip: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&[0xff; 6]); // destination: broadcast
    f.extend_from_slice(&mac); // source
    f.extend_from_slice(&0x0806u16.to_be_bytes()); // EtherType ARP
    f.extend_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    f.extend_from_slice(&0x0800u16.to_be_bytes()); // protocol: IPv4
    f.push(6); // hardware address length
    f.push(4); // protocol address length
    f.extend_from_slice(&1u16.to_be_bytes()); // operation: request
    f.extend_from_slice(&mac); // sender MAC
    f.extend_from_slice(&ip.octets()); // sender IP
    f.extend_from_slice(&[0; 6]); // target MAC: unknown
    f.extend_from_slice(&ip.octets()); // target IP = sender IP: gratuitous
    f
}

/// A listener on `addr` that may be bound before the address exists (IP_FREEBIND), with
/// SO_REUSEADDR so that a new term can bind at once after the last one closed.
pub fn freebind_listener(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    s.set_reuse_address(true)?;
    s.set_freebind_v4(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    let l = tokio::net::TcpListener::from_std(s.into())?;
    info!(%addr, "listening (IP_FREEBIND)");
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_ip_parses_and_refuses_nonsense() {
        let ip = ServiceIp::parse("10.77.0.100/24", "eth0").unwrap();
        assert_eq!((ip.addr, ip.prefix), (Ipv4Addr::new(10, 77, 0, 100), 24));
        assert!(ServiceIp::parse("10.77.0.100", "eth0").is_err());
        assert!(ServiceIp::parse("10.77.0.100/33", "eth0").is_err());
    }

    #[test]
    fn the_announcement_frame_is_a_broadcast_arp_request_for_our_own_address() {
        let mac = [2, 0, 0, 0, 0, 7];
        let f = garp_frame(mac, Ipv4Addr::new(10, 77, 0, 100));
        assert_eq!(f.len(), 42);
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[20..22], &[0, 1], "request");
        assert_eq!(&f[22..28], &mac);
        assert_eq!(&f[28..32], &[10, 77, 0, 100]);
        assert_eq!(&f[38..42], &[10, 77, 0, 100]);
    }

    #[tokio::test]
    async fn a_freebind_listener_binds_an_address_the_host_does_not_have() {
        // 192.0.2.0/24 is TEST-NET-1: never configured here, never routed anywhere.
        let l = freebind_listener("192.0.2.77:0".parse().unwrap()).unwrap();
        assert_eq!(l.local_addr().unwrap().ip().to_string(), "192.0.2.77");
    }
}
