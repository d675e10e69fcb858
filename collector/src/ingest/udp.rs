//! The collector's UDP socket, the one every agent's QUIC packets arrive on, and the kernel's
//! count of packets it threw away because that socket's receive buffer was full.
//!
//! A fleet reconnecting at once (a collector restart, a network coming back) sends thousands of
//! handshakes in the same few milliseconds. Linux gives a UDP socket about 208 KiB by default;
//! what does not fit is dropped without a trace in the collector, QUIC retransmits it only after
//! a growing timeout, and an agent whose first packets keep being lost looks like one that never
//! opened its stream. So the socket asks for a few MiB (`quic.udp_recv_buffer_bytes`), uses
//! `SO_RCVBUFFORCE` when the kernel's `net.core.rmem_max` caps the request and the process may
//! go over it, says so when neither works, and the drops the kernel counts for this socket (the
//! `drops` column of /proc/net/udp) are counted as a limit: `egresswatch_limit_exceeded_total
//! {limit="udp_receive_buffer"}`.

use super::QuicConfig;
use crate::error::CollectorError;
use std::os::fd::AsRawFd;
use tracing::{info, warn};

/// What `quic.udp_recv_buffer_bytes` and `udp_send_buffer_bytes` ask for when unset: the order of
/// magnitude QUIC servers recommend (quic-go asks for 7 MiB); 0 keeps the kernel's default.
pub const DEFAULT_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// The bound socket and what is known about it.
pub struct BoundSocket {
    pub socket: std::net::UdpSocket,
    /// Receive buffer the kernel granted, in bytes of payload (half what `SO_RCVBUF` reports:
    /// Linux doubles the request to account for its own bookkeeping).
    pub recv_buffer_bytes: usize,
    pub drops: SocketDrops,
}

/// Creates and binds the QUIC socket with the configured buffers.
pub fn bind(config: &QuicConfig) -> Result<BoundSocket, CollectorError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let addr = config.listen;
    let io = |what: &str, e| CollectorError::io(format!("{what} for QUIC on {addr}"), e);
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(|e| io("UDP socket", e))?;
    if addr.is_ipv6() {
        // [::]:port takes IPv4 too.
        let _ = socket.set_only_v6(false);
    }
    let wanted_recv = config.udp_recv_buffer_bytes.unwrap_or(DEFAULT_BUFFER_BYTES);
    if wanted_recv > 0 {
        socket
            .set_recv_buffer_size(wanted_recv)
            .map_err(|e| io("SO_RCVBUF", e))?;
        if granted(socket.recv_buffer_size().unwrap_or(0)) < wanted_recv {
            force(&socket, libc::SO_RCVBUFFORCE, wanted_recv);
        }
    }
    let wanted_send = config.udp_send_buffer_bytes.unwrap_or(DEFAULT_BUFFER_BYTES);
    if wanted_send > 0 {
        socket
            .set_send_buffer_size(wanted_send)
            .map_err(|e| io("SO_SNDBUF", e))?;
        if granted(socket.send_buffer_size().unwrap_or(0)) < wanted_send {
            force(&socket, libc::SO_SNDBUFFORCE, wanted_send);
        }
    }
    socket.bind(&addr.into()).map_err(|e| io("binding", e))?;
    let recv_buffer_bytes = granted(socket.recv_buffer_size().map_err(|e| io("SO_RCVBUF", e))?);
    if wanted_recv > 0 && recv_buffer_bytes < wanted_recv {
        warn!(
            granted = recv_buffer_bytes,
            wanted = wanted_recv,
            "the kernel capped the QUIC socket's receive buffer: a burst of reconnecting agents \
             will lose packets and handshakes will stall; raise it with \
             `sysctl -w net.core.rmem_max={wanted_recv}` (or run with CAP_NET_ADMIN)"
        );
    } else {
        info!(bytes = recv_buffer_bytes, "QUIC socket receive buffer");
    }
    let drops = SocketDrops::of(&socket, addr.is_ipv6());
    Ok(BoundSocket {
        socket: socket.into(),
        recv_buffer_bytes,
        drops,
    })
}

/// Linux reports twice what it grants (the other half is its own accounting).
fn granted(reported: usize) -> usize {
    if cfg!(target_os = "linux") {
        reported / 2
    } else {
        reported
    }
}

/// `SO_RCVBUFFORCE`/`SO_SNDBUFFORCE` go over `net.core.[rw]mem_max` for a process with
/// CAP_NET_ADMIN; without it they fail with EPERM and the capped size stays.
fn force(socket: &socket2::Socket, option: libc::c_int, bytes: usize) {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: a valid socket, an int-sized option value and its length.
    let _ = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            std::ptr::addr_of!(value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

/// Reads the kernel's drop count for one socket from its family's table, /proc/self/net/udp or
/// udp6, where sockets are found by inode.
#[derive(Debug, Clone, Copy)]
pub struct SocketDrops {
    inode: Option<u64>,
    table: &'static str,
}

impl SocketDrops {
    /// `ipv6`: the socket is AF_INET6 (a dual-stack `[::]` socket is listed in udp6 only).
    pub fn of(socket: &impl AsRawFd, ipv6: bool) -> SocketDrops {
        // SAFETY: fstat fills the zeroed struct for a valid descriptor.
        let inode = unsafe {
            let mut stat: libc::stat = std::mem::zeroed();
            (libc::fstat(socket.as_raw_fd(), &mut stat) == 0).then_some(stat.st_ino)
        };
        let table = if ipv6 {
            "/proc/self/net/udp6"
        } else {
            "/proc/self/net/udp"
        };
        SocketDrops { inode, table }
    }

    /// Packets dropped so far, or `None` where the kernel does not tell (not Linux, no /proc).
    pub fn read(&self) -> Option<u64> {
        let table = std::fs::read_to_string(self.table).ok()?;
        drops_in_table(&table, self.inode?)
    }
}

/// The `drops` column of the row for `inode` in a /proc/net/udp table:
/// `sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops`.
pub fn drops_in_table(table: &str, inode: u64) -> Option<u64> {
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let row_inode: u64 = fields.get(9)?.parse().ok()?;
        (row_inode == inode).then(|| fields.get(12)?.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  331: 0100007F:1151 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 48121 2 0000000000000000 0
  872: 00000000:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000   101        0 19944 2 0000000000000000 1738
";

    #[test]
    fn finds_the_row_by_inode() {
        assert_eq!(drops_in_table(TABLE, 19944), Some(1738));
        assert_eq!(drops_in_table(TABLE, 48121), Some(0));
        assert_eq!(drops_in_table(TABLE, 7), None);
    }

    #[test]
    fn a_torn_or_garbled_table_is_none_not_a_panic() {
        assert_eq!(drops_in_table("", 1), None);
        assert_eq!(drops_in_table("header\n 1: a b c", 1), None);
        assert_eq!(
            drops_in_table("header\n 1: a b 07 x y z 0 0 5 2 p notanumber", 5),
            None
        );
    }

    /// A real socket that nobody reads: the kernel's count goes up once its buffer is full.
    #[test]
    fn counts_what_the_kernel_dropped_for_a_real_socket() {
        let receiver = std::net::UdpSocket::bind("127.0.0.1:0").expect("a loopback socket");
        let drops = SocketDrops::of(&receiver, false);
        let Some(before) = drops.read() else {
            eprintln!("skipped: no /proc/self/net/udp here");
            return;
        };
        let addr = receiver.local_addr().expect("its address");
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").expect("a loopback socket");
        let datagram = [0u8; 1200];
        // 4,000 × 1.2 KB is well past any default receive buffer (the kernel's default is
        // about 208 KiB, and this socket never reads).
        for _ in 0..4000 {
            let _ = sender.send_to(&datagram, addr);
        }
        let after = drops.read().unwrap_or(before);
        assert!(after > before, "no drops counted: {before} -> {after}");
    }
}
