//! Name resolution the way the system does it (getaddrinfo: /etc/hosts, nsswitch, resolv.conf),
//! one address family at a time and under its own deadline, so that a name without an AAAA record
//! shows as `no_address` for IPv6 rather than silently falling back to IPv4.

use egresswatch_wire::{DnsFailure, Family};
use std::ffi::{CStr, CString};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Why a name gave no address in the family asked for.
#[derive(Debug, Clone, PartialEq)]
pub enum ResolveError {
    /// The name did not resolve at all.
    Failed { kind: DnsFailure, detail: String },
    /// The name exists but has no address in this family.
    NoAddress,
}

/// Resolves `host` to the addresses of one family, in the order the system prefers them.
/// Address literals are returned as they are (or `NoAddress` for the other family).
pub async fn resolve(
    host: &str,
    family: Family,
    deadline: Duration,
) -> Result<Vec<IpAddr>, ResolveError> {
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = literal.parse::<IpAddr>() {
        return if family_of(ip) == family {
            Ok(vec![ip])
        } else {
            Err(ResolveError::NoAddress)
        };
    }
    let name = host.to_string();
    let lookup = tokio::task::spawn_blocking(move || getaddrinfo(&name, family));
    match tokio::time::timeout(deadline, lookup).await {
        Ok(Ok(result)) => result,
        Ok(Err(join)) => Err(ResolveError::Failed {
            kind: DnsFailure::Other,
            detail: format!("resolver task failed: {join}"),
        }),
        // The blocking lookup goes on in its thread; its answer is simply not waited for.
        Err(_) => Err(ResolveError::Failed {
            kind: DnsFailure::Timeout,
            detail: format!("no answer within {} ms", deadline.as_millis()),
        }),
    }
}

pub fn family_of(ip: IpAddr) -> Family {
    match ip {
        IpAddr::V4(_) => Family::Ipv4,
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => Family::Ipv4,
        IpAddr::V6(_) => Family::Ipv6,
    }
}

fn getaddrinfo(host: &str, family: Family) -> Result<Vec<IpAddr>, ResolveError> {
    let c_host = CString::new(host).map_err(|_| ResolveError::Failed {
        kind: DnsFailure::Other,
        detail: "name contains a NUL byte".into(),
    })?;
    // SAFETY: a zeroed addrinfo is the documented way to start hints.
    let mut hints: libc::addrinfo = unsafe { std::mem::zeroed() };
    hints.ai_family = match family {
        Family::Ipv4 => libc::AF_INET,
        Family::Ipv6 => libc::AF_INET6,
    };
    hints.ai_socktype = libc::SOCK_STREAM;
    // No AI_ADDRCONFIG: a family must be probed even where this host has no global address in it,
    // so that "no IPv6 here" shows as a failed IPv6 probe rather than a silently skipped one.
    hints.ai_flags = 0;
    let mut list: *mut libc::addrinfo = std::ptr::null_mut();
    // SAFETY: valid C string, valid hints, out-pointer freed below with freeaddrinfo.
    let rc = unsafe { libc::getaddrinfo(c_host.as_ptr(), std::ptr::null(), &hints, &mut list) };
    if rc != 0 {
        let error = classify_gai_error(rc);
        // glibc's files backend says "no such name" when /etc/hosts has the name in the other
        // family only; a name that resolves at all is `no_address` here, not nxdomain.
        if rc == libc::EAI_NONAME && resolves_in_any_family(&c_host) {
            return Err(ResolveError::NoAddress);
        }
        return Err(error);
    }
    let mut out = Vec::new();
    let mut cursor = list;
    while !cursor.is_null() {
        // SAFETY: cursor walks the list getaddrinfo returned, which is valid until freeaddrinfo.
        let entry = unsafe { &*cursor };
        if let Some(addr) = sockaddr_to_ip(entry.ai_addr, entry.ai_addrlen) {
            if !out.contains(&addr) {
                out.push(addr);
            }
        }
        cursor = entry.ai_next;
    }
    // SAFETY: list came from a successful getaddrinfo.
    unsafe { libc::freeaddrinfo(list) };
    if out.is_empty() {
        Err(ResolveError::NoAddress)
    } else {
        Ok(out)
    }
}

/// glibc's EAI_ADDRFAMILY (not exported by the libc crate): the host has no address in the
/// requested family.
const EAI_ADDRFAMILY: i32 = -9;

fn resolves_in_any_family(host: &CString) -> bool {
    // SAFETY: as in getaddrinfo above.
    let mut hints: libc::addrinfo = unsafe { std::mem::zeroed() };
    hints.ai_family = libc::AF_UNSPEC;
    hints.ai_socktype = libc::SOCK_STREAM;
    let mut list: *mut libc::addrinfo = std::ptr::null_mut();
    let rc = unsafe { libc::getaddrinfo(host.as_ptr(), std::ptr::null(), &hints, &mut list) };
    if rc == 0 {
        unsafe { libc::freeaddrinfo(list) };
    }
    rc == 0
}

fn classify_gai_error(rc: i32) -> ResolveError {
    // SAFETY: gai_strerror returns a static string for any code.
    let text = unsafe { CStr::from_ptr(libc::gai_strerror(rc)) }
        .to_string_lossy()
        .into_owned();
    match rc {
        // glibc answers EAI_NODATA / EAI_ADDRFAMILY when the name exists without this family.
        libc::EAI_NODATA | EAI_ADDRFAMILY => ResolveError::NoAddress,
        libc::EAI_NONAME => ResolveError::Failed {
            kind: DnsFailure::Nxdomain,
            detail: text,
        },
        libc::EAI_FAIL => ResolveError::Failed {
            kind: DnsFailure::Servfail,
            detail: text,
        },
        libc::EAI_AGAIN => ResolveError::Failed {
            kind: DnsFailure::Timeout,
            detail: text,
        },
        _ => ResolveError::Failed {
            kind: DnsFailure::Other,
            detail: text,
        },
    }
}

/// Reads an IP address out of a C socket address, if it is one.
pub(crate) fn sockaddr_to_ip(addr: *const libc::sockaddr, len: libc::socklen_t) -> Option<IpAddr> {
    if addr.is_null() {
        return None;
    }
    // SAFETY: the caller passes a sockaddr of at least `len` bytes; we check the family and size
    // before reading the longer structure.
    unsafe {
        match i32::from((*addr).sa_family) {
            libc::AF_INET if len as usize >= std::mem::size_of::<libc::sockaddr_in>() => {
                let sin = &*(addr as *const libc::sockaddr_in);
                Some(IpAddr::from(
                    u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                ))
            }
            libc::AF_INET6 if len as usize >= std::mem::size_of::<libc::sockaddr_in6>() => {
                let sin6 = &*(addr as *const libc::sockaddr_in6);
                Some(IpAddr::from(sin6.sin6_addr.s6_addr))
            }
            _ => None,
        }
    }
}

/// The socket address to connect to.
pub fn socket_addr(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn literals_resolve_to_themselves_or_no_address() {
        let d = Duration::from_secs(1);
        assert_eq!(
            resolve("198.18.0.1", Family::Ipv4, d).await,
            Ok(vec!["198.18.0.1".parse().unwrap()])
        );
        assert_eq!(
            resolve("198.18.0.1", Family::Ipv6, d).await,
            Err(ResolveError::NoAddress)
        );
        assert_eq!(
            resolve("[2001:db8::1]", Family::Ipv6, d).await,
            Ok(vec!["2001:db8::1".parse().unwrap()])
        );
    }

    #[tokio::test]
    async fn hosts_file_counts() {
        // localhost comes from /etc/hosts on every Debian system.
        let v4 = resolve("localhost", Family::Ipv4, Duration::from_secs(2))
            .await
            .unwrap();
        assert!(v4.contains(&"127.0.0.1".parse().unwrap()));
    }

    #[tokio::test]
    async fn invalid_names_fail_cleanly() {
        let r = resolve("nul\0byte", Family::Ipv4, Duration::from_secs(1)).await;
        assert!(matches!(r, Err(ResolveError::Failed { .. })));
    }
}
