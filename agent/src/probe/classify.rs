//! errno → outcome: the one place that decides what a kernel error means for egress.
//!
//! Pure and table-tested. The raw errno is always kept beside the outcome, so a mapping that turns
//! out too coarse loses nothing.

use egresswatch_wire::{IcmpReport, Outcome};

/// The kernel's SO_EE_ORIGIN_ICMP / SO_EE_ORIGIN_ICMP6: the error came from an ICMP message.
const ORIGIN_ICMP: u8 = 2;
const ORIGIN_ICMP6: u8 = 3;

/// What a failed `connect()` means, given what the socket error queue said about it and whether
/// the ICMP error's sender is one of this host's own addresses. An ICMP error from the network is
/// `unreachable` whatever errno the kernel made of it: Linux turns ICMPv6
/// administratively-prohibited into EACCES and ICMP port-unreachable into ECONNREFUSED, which
/// would otherwise read as this host's firewall or a TCP reset. An ICMP error this host sent to
/// itself is its own firewall's reject rule: `local_denied`.
pub fn connect_outcome(errno: i32, icmp: Option<&IcmpReport>, sent_by_this_host: bool) -> Outcome {
    match icmp {
        Some(report) if matches!(report.origin, ORIGIN_ICMP | ORIGIN_ICMP6) => {
            if sent_by_this_host {
                Outcome::LocalDenied
            } else {
                Outcome::Unreachable
            }
        }
        _ => connect_errno_outcome(errno),
    }
}

/// What a failed `connect()` means from its errno alone.
pub fn connect_errno_outcome(errno: i32) -> Outcome {
    match errno {
        libc::ECONNREFUSED => Outcome::Refused,
        libc::EHOSTUNREACH
        | libc::ENETUNREACH
        | libc::EHOSTDOWN
        | libc::ENONET
        | libc::ENETDOWN
        | libc::EADDRNOTAVAIL
        | libc::EPROTO => Outcome::Unreachable,
        libc::EPERM | libc::EACCES => Outcome::LocalDenied,
        libc::ETIMEDOUT => Outcome::Timeout,
        libc::ECONNRESET | libc::ECONNABORTED | libc::EPIPE => Outcome::Reset,
        _ => Outcome::Unreachable,
    }
}

/// What an I/O error after the connection was established means.
pub fn session_errno_outcome(errno: i32) -> Option<Outcome> {
    match errno {
        libc::ECONNRESET | libc::ECONNABORTED | libc::EPIPE => Some(Outcome::Reset),
        libc::EHOSTUNREACH | libc::ENETUNREACH => Some(Outcome::Unreachable),
        libc::ETIMEDOUT => Some(Outcome::Timeout),
        _ => None,
    }
}

/// Short words for an ICMP type/code, as a reader of the detail wants them.
pub fn icmp_words(v6: bool, icmp_type: u8, code: u8) -> &'static str {
    if v6 {
        match (icmp_type, code) {
            (1, 0) => "no route to destination",
            (1, 1) => "administratively prohibited",
            (1, 3) => "address unreachable",
            (1, 4) => "port unreachable",
            (1, 5) => "source address failed ingress/egress policy",
            (1, 6) => "reject route to destination",
            (1, _) => "destination unreachable",
            (3, _) => "time exceeded",
            _ => "ICMPv6 error",
        }
    } else {
        match (icmp_type, code) {
            (3, 0) => "network unreachable",
            (3, 1) => "host unreachable",
            (3, 3) => "port unreachable",
            (3, 9) | (3, 10) | (3, 13) => "administratively prohibited",
            (3, _) => "destination unreachable",
            (11, _) => "time exceeded",
            _ => "ICMP error",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_errors_map_per_taxonomy() {
        let table = [
            (libc::ECONNREFUSED, Outcome::Refused),
            (libc::EHOSTUNREACH, Outcome::Unreachable),
            (libc::ENETUNREACH, Outcome::Unreachable),
            (libc::EPERM, Outcome::LocalDenied),
            (libc::EACCES, Outcome::LocalDenied),
            (libc::ETIMEDOUT, Outcome::Timeout),
            (libc::ECONNRESET, Outcome::Reset),
        ];
        for (errno, outcome) in table {
            assert_eq!(connect_errno_outcome(errno), outcome, "errno {errno}");
        }
    }

    #[test]
    fn icmp_from_the_network_is_unreachable_whatever_the_errno() {
        let icmp = |origin, icmp_type, icmp_code| IcmpReport {
            from: Some("2001:db8::1".parse().unwrap()),
            icmp_type,
            icmp_code,
            origin,
        };
        // ICMPv6 admin-prohibited arrives as EACCES: not this host's firewall.
        assert_eq!(
            connect_outcome(libc::EACCES, Some(&icmp(ORIGIN_ICMP6, 1, 1)), false),
            Outcome::Unreachable
        );
        // ICMP port unreachable arrives as ECONNREFUSED: not a TCP reset.
        assert_eq!(
            connect_outcome(libc::ECONNREFUSED, Some(&icmp(ORIGIN_ICMP, 3, 3)), false),
            Outcome::Unreachable
        );
        assert_eq!(
            connect_outcome(libc::EHOSTUNREACH, Some(&icmp(ORIGIN_ICMP, 3, 13)), false),
            Outcome::Unreachable
        );
        // Without ICMP, or with a local origin, the errno decides.
        assert_eq!(
            connect_outcome(libc::EACCES, None, false),
            Outcome::LocalDenied
        );
        assert_eq!(
            connect_outcome(libc::EPERM, Some(&icmp(1, 0, 0)), false),
            Outcome::LocalDenied
        );
        assert_eq!(
            connect_outcome(libc::ECONNREFUSED, None, false),
            Outcome::Refused
        );
    }

    #[test]
    fn icmp_this_host_sent_itself_is_its_own_firewall() {
        let icmp = |origin, icmp_type, icmp_code| IcmpReport {
            from: Some("198.18.201.1".parse().unwrap()),
            icmp_type,
            icmp_code,
            origin,
        };
        // `reject with icmpx admin-prohibited` in this host's output chain, both families.
        assert_eq!(
            connect_outcome(libc::EHOSTUNREACH, Some(&icmp(ORIGIN_ICMP, 3, 13)), true),
            Outcome::LocalDenied
        );
        assert_eq!(
            connect_outcome(libc::EACCES, Some(&icmp(ORIGIN_ICMP6, 1, 1)), true),
            Outcome::LocalDenied
        );
        // `reject with icmpx port-unreachable` arrives as ECONNREFUSED: still not a TCP reset.
        assert_eq!(
            connect_outcome(libc::ECONNREFUSED, Some(&icmp(ORIGIN_ICMP, 3, 3)), true),
            Outcome::LocalDenied
        );
    }

    #[test]
    fn session_errors() {
        assert_eq!(
            session_errno_outcome(libc::ECONNRESET),
            Some(Outcome::Reset)
        );
        assert_eq!(session_errno_outcome(libc::EINVAL), None);
    }

    #[test]
    fn icmp_words_name_admin_prohibited() {
        assert_eq!(icmp_words(false, 3, 13), "administratively prohibited");
        assert_eq!(icmp_words(true, 1, 1), "administratively prohibited");
        assert_eq!(icmp_words(false, 3, 3), "port unreachable");
    }
}
