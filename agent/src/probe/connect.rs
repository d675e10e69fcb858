//! The TCP connect step: a socket made with socket2, a non-blocking connect under a tokio
//! deadline, and everything the kernel can tell about how it went — the errno, the ICMP error
//! that caused it with the address of the hop that sent it (IP_RECVERR / IPV6_RECVERR error
//! queue), and how many SYNs had to be retransmitted (TCP_INFO), so that a lost SYN is never
//! mistaken for latency.

use super::classify::{connect_outcome, icmp_words};
use super::local::is_this_hosts_address;
use super::resolve::sockaddr_to_ip;
use egresswatch_wire::{IcmpReport, Outcome};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// Where to send from, on multi-homed hosts.
#[derive(Debug, Clone, Default)]
pub struct Binding {
    pub source: Option<IpAddr>,
    pub interface: Option<String>,
}

/// A connection that was established, with how long it took.
pub struct Connected {
    pub stream: TcpStream,
    pub connect_us: u32,
    pub syn_retransmits: Option<u8>,
}

/// Why no connection was established.
#[derive(Debug)]
pub struct ConnectFailure {
    pub outcome: Outcome,
    pub errno: Option<i32>,
    pub icmp: Option<IcmpReport>,
    pub syn_retransmits: Option<u8>,
    pub detail: String,
}

/// Connects to `addr` within `deadline`.
pub async fn connect(
    addr: SocketAddr,
    binding: &Binding,
    deadline: Duration,
) -> Result<Connected, ConnectFailure> {
    let socket = match make_socket(addr, binding) {
        Ok(s) => s,
        Err(e) => return Err(failure_from_io(addr.ip(), &e, None, None, "socket setup")),
    };
    let started = Instant::now();
    match socket.connect(&SockAddr::from(addr)) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => {
            let icmp = read_error_queue(socket.as_raw_fd(), addr.is_ipv6());
            return Err(failure_from_io(
                addr.ip(),
                &e,
                icmp,
                syn_retransmits(socket.as_raw_fd()),
                "connect",
            ));
        }
    }
    let std_stream: std::net::TcpStream = socket.into();
    let stream = match TcpStream::from_std(std_stream) {
        Ok(s) => s,
        Err(e) => {
            return Err(failure_from_io(
                addr.ip(),
                &e,
                None,
                None,
                "registering the socket",
            ))
        }
    };
    let waited = tokio::time::timeout(deadline, stream.writable()).await;
    let fd = stream.as_raw_fd();
    match waited {
        Err(_) => {
            let retrans = syn_retransmits(fd);
            Err(ConnectFailure {
                outcome: Outcome::Timeout,
                errno: None,
                icmp: None,
                syn_retransmits: retrans,
                detail: format!(
                    "no answer to the SYN within {} ms{}",
                    deadline.as_millis(),
                    retrans
                        .map(|n| format!(
                            " ({n} SYN retransmission{})",
                            if n == 1 { "" } else { "s" }
                        ))
                        .unwrap_or_default()
                ),
            })
        }
        Ok(Err(e)) => Err(failure_from_io(
            addr.ip(),
            &e,
            read_error_queue(fd, addr.is_ipv6()),
            syn_retransmits(fd),
            "connect",
        )),
        Ok(Ok(())) => {
            let elapsed = started.elapsed();
            match stream.take_error() {
                Ok(None) => {}
                Ok(Some(e)) | Err(e) => {
                    let icmp = read_error_queue(fd, addr.is_ipv6());
                    return Err(failure_from_io(
                        addr.ip(),
                        &e,
                        icmp,
                        syn_retransmits(fd),
                        "connect",
                    ));
                }
            }
            // writable() can wake spuriously; a connected socket has a peer.
            if let Err(e) = stream.peer_addr() {
                return Err(failure_from_io(
                    addr.ip(),
                    &e,
                    read_error_queue(fd, addr.is_ipv6()),
                    syn_retransmits(fd),
                    "connect",
                ));
            }
            Ok(Connected {
                connect_us: u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX),
                syn_retransmits: syn_retransmits(fd),
                stream,
            })
        }
    }
}

fn make_socket(addr: SocketAddr, binding: &Binding) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    socket.set_nodelay(true)?;
    enable_recverr(&socket, addr.is_ipv6())?;
    if let Some(interface) = &binding.interface {
        socket.bind_device(Some(interface.as_bytes()))?;
    }
    if let Some(source) = binding.source {
        if source.is_ipv6() == addr.is_ipv6() {
            socket.bind(&SockAddr::from(SocketAddr::new(source, 0)))?;
        }
    }
    Ok(socket)
}

fn enable_recverr(socket: &Socket, v6: bool) -> io::Result<()> {
    let on: libc::c_int = 1;
    let (level, name) = if v6 {
        (libc::SOL_IPV6, libc::IPV6_RECVERR)
    } else {
        (libc::SOL_IP, libc::IP_RECVERR)
    };
    // SAFETY: setsockopt with a valid fd and a c_int option value.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            &on as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn failure_from_io(
    destination: IpAddr,
    e: &io::Error,
    icmp: Option<IcmpReport>,
    syn_retransmits: Option<u8>,
    step: &str,
) -> ConnectFailure {
    let errno = e.raw_os_error();
    let sent_by_this_host = icmp
        .as_ref()
        .and_then(|report| report.from)
        .is_some_and(|from| from != destination && is_this_hosts_address(from));
    let outcome = errno
        .map(|errno| connect_outcome(errno, icmp.as_ref(), sent_by_this_host))
        .unwrap_or(Outcome::Unreachable);
    let mut detail = format!("{step}: {}", short_io_text(e));
    if let Some(report) = &icmp {
        let v6 = report.origin == libc::SO_EE_ORIGIN_ICMP6;
        detail.push_str(&format!(
            "; ICMP{} type {} code {} ({})",
            if v6 { "v6" } else { "" },
            report.icmp_type,
            report.icmp_code,
            icmp_words(v6, report.icmp_type, report.icmp_code)
        ));
        if let Some(from) = report.from {
            detail.push_str(&format!(" from {from}"));
            if sent_by_this_host {
                detail.push_str(" (an address of this host)");
            }
        }
    }
    ConnectFailure {
        outcome,
        errno,
        icmp,
        syn_retransmits,
        detail,
    }
}

/// The io::Error's text without the "(os error N)" suffix: the errno is kept separately.
pub(crate) fn short_io_text(e: &io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// Reads one extended error from the socket's error queue: who sent the ICMP error and what it
/// said. Empty queue (e.g. a plain RST) gives `None`.
fn read_error_queue(fd: RawFd, v6: bool) -> Option<IcmpReport> {
    let mut data = [0u8; 64];
    let mut control = [0u64; 64]; // u64 for cmsg alignment
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: zeroed msghdr, then pointed at buffers that outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: valid fd and msghdr; MSG_ERRQUEUE never blocks.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT) };
    if n < 0 {
        return None;
    }
    let (want_level, want_type) = if v6 {
        (libc::SOL_IPV6, libc::IPV6_RECVERR)
    } else {
        (libc::SOL_IP, libc::IP_RECVERR)
    };
    // SAFETY: CMSG_* walk the control buffer the kernel filled, bounded by msg_controllen.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let header = &*cmsg;
            if header.cmsg_level == want_level && header.cmsg_type == want_type {
                let payload = libc::CMSG_DATA(cmsg);
                let ee = std::ptr::read_unaligned(payload as *const libc::sock_extended_err);
                let payload_len = header.cmsg_len as usize - (payload as usize - cmsg as usize);
                let offender_at = std::mem::size_of::<libc::sock_extended_err>();
                let from = if payload_len > offender_at {
                    let mut storage: libc::sockaddr_storage = std::mem::zeroed();
                    let copy = (payload_len - offender_at)
                        .min(std::mem::size_of::<libc::sockaddr_storage>());
                    std::ptr::copy_nonoverlapping(
                        payload.add(offender_at),
                        &mut storage as *mut _ as *mut u8,
                        copy,
                    );
                    sockaddr_to_ip(
                        &storage as *const _ as *const libc::sockaddr,
                        copy as libc::socklen_t,
                    )
                } else {
                    None
                };
                return Some(IcmpReport {
                    from: from.filter(|ip| !ip.is_unspecified()),
                    icmp_type: ee.ee_type,
                    icmp_code: ee.ee_code,
                    origin: ee.ee_origin,
                });
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    None
}

/// SYN retransmissions so far (or until the connection was established), from TCP_INFO.
fn syn_retransmits(fd: RawFd) -> Option<u8> {
    // SAFETY: zeroed tcp_info filled by getsockopt with its real size.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            &mut info as *mut _ as *mut libc::c_void,
            &mut len,
        )
    };
    if rc != 0 {
        return None;
    }
    // Before the handshake completes, tcpi_retransmits counts SYN retries; after it, the total
    // retransmissions so far are exactly the SYNs (nothing else has been sent yet).
    let n = u32::from(info.tcpi_retransmits).max(info.tcpi_total_retrans);
    Some(u8::try_from(n).unwrap_or(u8::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connects_to_a_listener_and_measures() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let c = connect(addr, &Binding::default(), Duration::from_secs(2))
            .await
            .map_err(|f| f.detail)
            .unwrap();
        assert!(c.connect_us < 2_000_000);
        assert_eq!(c.syn_retransmits, Some(0));
    }

    #[tokio::test]
    async fn closed_port_is_refused() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let f = connect(addr, &Binding::default(), Duration::from_secs(2))
            .await
            .err()
            .unwrap();
        assert_eq!(f.outcome, Outcome::Refused);
        assert_eq!(f.errno, Some(libc::ECONNREFUSED));
    }

    #[tokio::test]
    async fn bad_interface_is_a_clean_failure() {
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let binding = Binding {
            source: None,
            interface: Some("no-such-if0".into()),
        };
        let f = connect(addr, &binding, Duration::from_secs(1))
            .await
            .err()
            .unwrap();
        assert!(f.detail.starts_with("socket setup"), "{}", f.detail);
    }
}
