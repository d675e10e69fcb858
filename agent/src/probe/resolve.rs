//! Name resolution the way the system does it (getaddrinfo: /etc/hosts, nsswitch, resolv.conf),
//! one address family at a time and under its own deadline, so that a name without an AAAA record
//! shows as `no_address` for IPv6 rather than silently falling back to IPv4.
//!
//! When getaddrinfo fails without saying why (glibc gives EAI_AGAIN alike for a SERVFAIL, a
//! REFUSED and a silent server, and EAI_NONAME alike for a name that does not exist and one that
//! exists without any address), the configured nameservers are asked the same question
//! ([`super::nameserver`]) and their response code names the failure. A failure that came back
//! before the deadline is never called `timeout`.

use super::nameserver::{Nameservers, Rcode, RecordType, Reply};
use egresswatch_wire::{DnsFailure, Family};
use std::ffi::{CStr, CString};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// Why a name gave no address in the family asked for.
#[derive(Debug, Clone, PartialEq)]
pub enum ResolveError {
    /// The name did not resolve at all.
    Failed { kind: DnsFailure, detail: String },
    /// The name exists but has no address in this family.
    NoAddress,
}

/// glibc's resolver never gives up on a silent server in less than its smallest timeout
/// (`options timeout:1`): an EAI_AGAIN sooner than this was an answer, not silence.
const GLIBC_MIN_TIMEOUT: Duration = Duration::from_secs(1);

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
    let started = Instant::now();
    let name = host.to_string();
    let lookup = tokio::task::spawn_blocking(move || getaddrinfo(&name, family));
    let unsure = match tokio::time::timeout(deadline, lookup).await {
        Ok(Ok(SystemAnswer::Addresses(ips))) => return Ok(ips),
        Ok(Ok(SystemAnswer::Known(error))) => return Err(error),
        Ok(Ok(SystemAnswer::Unsure(gai))) => gai,
        Ok(Err(join)) => {
            return Err(ResolveError::Failed {
                kind: DnsFailure::Other,
                detail: format!("resolver task failed: {join}"),
            })
        }
        // The blocking lookup goes on in its thread; its answer is simply not waited for.
        Err(_) => return Err(silent(deadline)),
    };
    let unsure = GaiFailure {
        took: started.elapsed(),
        ..unsure
    };
    let remaining = deadline.saturating_sub(unsure.took);
    let asked = ask_nameservers(host, family, remaining).await;
    Err(reading(&unsure, asked, started.elapsed()))
}

fn silent(deadline: Duration) -> ResolveError {
    ResolveError::Failed {
        kind: DnsFailure::Timeout,
        detail: format!("no answer within {} ms", deadline.as_millis()),
    }
}

/// What the nameservers said when asked, or why they could not be asked.
#[derive(Debug, Clone, PartialEq)]
enum Asked {
    Replied {
        servers: String,
        reply: Reply<Vec<IpAddr>>,
    },
    NotAsked(String),
}

async fn ask_nameservers(host: &str, family: Family, remaining: Duration) -> Asked {
    let nameservers = match Nameservers::from_system(remaining) {
        Ok(n) => n,
        Err(why) => return Asked::NotAsked(why),
    };
    let record_type = match family {
        Family::Ipv4 => RecordType::A,
        Family::Ipv6 => RecordType::AAAA,
    };
    let reply = tokio::time::timeout(remaining, nameservers.addresses(host, record_type))
        .await
        .unwrap_or(Reply::Silent);
    Asked::Replied {
        servers: nameservers.listed,
        reply,
    }
}

/// A getaddrinfo failure that does not say why on its own.
#[derive(Debug, Clone, PartialEq)]
struct GaiFailure {
    code: i32,
    text: String,
    /// How long getaddrinfo took to fail.
    took: Duration,
}

/// The failure read from what the nameservers said after getaddrinfo failed. Pure.
fn reading(gai: &GaiFailure, asked: Asked, elapsed: Duration) -> ResolveError {
    let failed = |kind, detail: String| ResolveError::Failed { kind, detail };
    let (servers, reply) = match asked {
        Asked::Replied { servers, reply } => (servers, reply),
        Asked::NotAsked(why) => return reading_without_nameservers(gai, &why),
    };
    let said = |code: Rcode| format!("{servers} answered {}", code.name());
    match reply {
        Reply::Negative(Rcode::NoError) => ResolveError::NoAddress,
        Reply::Negative(Rcode::NxDomain) => failed(
            DnsFailure::Nxdomain,
            format!("{}: no such name", said(Rcode::NxDomain)),
        ),
        Reply::Negative(Rcode::ServFail) => failed(
            DnsFailure::Servfail,
            format!(
                "{}: the resolver could not get an answer (a broken zone, a DNSSEC failure or an unreachable authority)",
                said(Rcode::ServFail)
            ),
        ),
        Reply::Negative(Rcode::Refused) => failed(
            DnsFailure::Refused,
            format!(
                "{}: the nameserver will not resolve this name for this host",
                said(Rcode::Refused)
            ),
        ),
        Reply::Negative(other) => failed(DnsFailure::Other, said(other)),
        // glibc got something back at once (a reply, or ICMP port unreachable) that our own
        // question did not get (a closed port shows as `Unusable`, below, when the ICMP error
        // reaches us too): not silence.
        Reply::Silent if gai.took < GLIBC_MIN_TIMEOUT => failed(
            DnsFailure::Other,
            format!(
                "{} after {} ms, yet {servers} did not reply to the same question within {} ms (a closed port 53, or a nameserver that answers some clients only)",
                gai.text,
                gai.took.as_millis(),
                elapsed.saturating_sub(gai.took).as_millis()
            ),
        ),
        Reply::Silent => failed(
            DnsFailure::Timeout,
            format!(
                "no reply from {servers} within {} ms ({})",
                elapsed.as_millis(),
                gai.text
            ),
        ),
        Reply::Unusable(why) => failed(
            DnsFailure::Other,
            format!("{} ({servers}: {why})", gai.text),
        ),
        Reply::Answer(ips) => failed(
            DnsFailure::Other,
            format!(
                "{}, yet {servers} answer {}: the system's lookup order (nsswitch.conf) does not ask DNS, or the answer changed",
                gai.text,
                ips.iter().map(IpAddr::to_string).collect::<Vec<_>>().join(", ")
            ),
        ),
    }
}

/// The best reading of getaddrinfo's code alone, when the nameservers cannot be asked.
fn reading_without_nameservers(gai: &GaiFailure, why: &str) -> ResolveError {
    let kind = match gai.code {
        libc::EAI_NONAME => DnsFailure::Nxdomain,
        libc::EAI_AGAIN if gai.took >= GLIBC_MIN_TIMEOUT => DnsFailure::Timeout,
        _ => DnsFailure::Other,
    };
    ResolveError::Failed {
        kind,
        detail: format!("{} (the nameservers were not asked why: {why})", gai.text),
    }
}

/// What getaddrinfo said.
enum SystemAnswer {
    Addresses(Vec<IpAddr>),
    /// A failure whose cause is known from the code alone.
    Known(ResolveError),
    /// A failure the nameservers must be asked about.
    Unsure(GaiFailure),
}

pub fn family_of(ip: IpAddr) -> Family {
    match ip {
        IpAddr::V4(_) => Family::Ipv4,
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => Family::Ipv4,
        IpAddr::V6(_) => Family::Ipv6,
    }
}

fn getaddrinfo(host: &str, family: Family) -> SystemAnswer {
    let Ok(c_host) = CString::new(host) else {
        return SystemAnswer::Known(ResolveError::Failed {
            kind: DnsFailure::Other,
            detail: "name contains a NUL byte".into(),
        });
    };
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
        // glibc's files backend says "no such name" when /etc/hosts has the name in the other
        // family only; a name that resolves at all is `no_address` here, not nxdomain.
        if rc == libc::EAI_NONAME && resolves_in_any_family(&c_host) {
            return SystemAnswer::Known(ResolveError::NoAddress);
        }
        return classify_gai_error(rc);
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
        SystemAnswer::Known(ResolveError::NoAddress)
    } else {
        SystemAnswer::Addresses(out)
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

fn classify_gai_error(rc: i32) -> SystemAnswer {
    // SAFETY: gai_strerror returns a static string for any code.
    let text = unsafe { CStr::from_ptr(libc::gai_strerror(rc)) }
        .to_string_lossy()
        .into_owned();
    match rc {
        // glibc answers EAI_NODATA / EAI_ADDRFAMILY when the name exists without this family.
        libc::EAI_NODATA | EAI_ADDRFAMILY => SystemAnswer::Known(ResolveError::NoAddress),
        // EAI_NONAME: no such name, or a name with no address at all; EAI_AGAIN: SERVFAIL or
        // silence; EAI_FAIL: REFUSED, NOTIMP or FORMERR. Only the response code can tell.
        libc::EAI_NONAME | libc::EAI_AGAIN | libc::EAI_FAIL => SystemAnswer::Unsure(GaiFailure {
            code: rc,
            text,
            took: Duration::ZERO,
        }),
        _ => SystemAnswer::Known(ResolveError::Failed {
            kind: DnsFailure::Other,
            detail: text,
        }),
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

    fn gai(code: i32) -> GaiFailure {
        gai_after(code, Duration::from_millis(1))
    }

    fn gai_after(code: i32, took: Duration) -> GaiFailure {
        GaiFailure {
            code,
            text: "Temporary failure in name resolution".into(),
            took,
        }
    }

    fn replied(reply: Reply<Vec<IpAddr>>) -> Asked {
        Asked::Replied {
            servers: "198.18.0.53".into(),
            reply,
        }
    }

    fn kind(error: &ResolveError) -> Option<DnsFailure> {
        match error {
            ResolveError::Failed { kind, .. } => Some(*kind),
            ResolveError::NoAddress => None,
        }
    }

    #[test]
    fn the_response_code_names_the_failure() {
        let fast = Duration::from_millis(1);
        let again = gai(libc::EAI_AGAIN);
        let servfail = reading(&again, replied(Reply::Negative(Rcode::ServFail)), fast);
        assert_eq!(kind(&servfail), Some(DnsFailure::Servfail));
        let refused = reading(
            &gai(libc::EAI_FAIL),
            replied(Reply::Negative(Rcode::Refused)),
            fast,
        );
        assert_eq!(kind(&refused), Some(DnsFailure::Refused));
        let nx = reading(
            &gai(libc::EAI_NONAME),
            replied(Reply::Negative(Rcode::NxDomain)),
            fast,
        );
        assert_eq!(kind(&nx), Some(DnsFailure::Nxdomain));
        let notimp = reading(&again, replied(Reply::Negative(Rcode::Other(4))), fast);
        assert_eq!(kind(&notimp), Some(DnsFailure::Other));
        // A name that exists without any address: getaddrinfo's EAI_NONAME, NOERROR with no
        // records from the nameserver ("no answer").
        let nodata = reading(
            &gai(libc::EAI_NONAME),
            replied(Reply::Negative(Rcode::NoError)),
            fast,
        );
        assert_eq!(nodata, ResolveError::NoAddress);
        let slow_again = gai_after(libc::EAI_AGAIN, GLIBC_MIN_TIMEOUT);
        let silent = reading(&slow_again, replied(Reply::Silent), Duration::from_secs(2));
        assert_eq!(kind(&silent), Some(DnsFailure::Timeout));
        match servfail {
            ResolveError::Failed { detail, .. } => {
                assert!(
                    detail.starts_with("198.18.0.53 answered SERVFAIL"),
                    "{detail}"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_fast_failure_is_never_a_timeout() {
        let fast = Duration::from_millis(1);
        let unusable = reading(
            &gai(libc::EAI_AGAIN),
            replied(Reply::Unusable("port 53 closed".into())),
            fast,
        );
        assert_eq!(kind(&unusable), Some(DnsFailure::Other));
        let unasked = reading(
            &gai(libc::EAI_AGAIN),
            Asked::NotAsked("no file".into()),
            fast,
        );
        assert_eq!(kind(&unasked), Some(DnsFailure::Other));
        // glibc failed at once, the second question got no reply: still not silence.
        let quiet_second = reading(
            &gai(libc::EAI_AGAIN),
            replied(Reply::Silent),
            Duration::from_secs(2),
        );
        assert_eq!(kind(&quiet_second), Some(DnsFailure::Other));
        // Without nameservers to ask, only an EAI_AGAIN that took glibc's timeout is silence.
        let slow = reading(
            &gai_after(libc::EAI_AGAIN, GLIBC_MIN_TIMEOUT),
            Asked::NotAsked("no file".into()),
            GLIBC_MIN_TIMEOUT,
        );
        assert_eq!(kind(&slow), Some(DnsFailure::Timeout));
    }

    #[test]
    fn a_dns_answer_after_a_failed_getaddrinfo_stays_a_failure() {
        let answered = reading(
            &gai(libc::EAI_NONAME),
            replied(Reply::Answer(vec!["198.18.0.25".parse().unwrap()])),
            Duration::from_millis(1),
        );
        assert_eq!(kind(&answered), Some(DnsFailure::Other));
    }
}
