//! The two readings a verdict leans on beyond one probe's outcome: what the 443 control says
//! about the path to the destination, and who sent the ICMP error that rejected a connection.
//! Plain functions of results, so each is tested without sockets.

use crate::probe::classify::icmp_words;
use crate::probe::PORT_HTTPS;
use egresswatch_wire::{Family, IcmpReport, Outcome, ProbeResult};
use std::net::IpAddr;

/// What the 443 control says about the path to the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlReading {
    /// 443 completed: the destination is reachable and answers.
    Answers,
    /// 443 got an answer from the far end (a reset, a greeting, a failed handshake): packets get
    /// there and back.
    Answered(Outcome),
    /// 443 timed out too, in every family probed.
    Silent,
    /// 443 was rejected before it connected (unreachable, local_denied).
    Blocked(Outcome),
    /// 443 was not probed (or had no address).
    NotProbed,
}

/// Reads the 443 control among `results`. An answer of any kind beats silence, and silence in
/// every family beats a rejection in one.
pub fn control_reading(results: &[ProbeResult]) -> ControlReading {
    let control: Vec<Outcome> = results
        .iter()
        .filter(|r| r.port == PORT_HTTPS && r.address.is_some())
        .map(|r| r.outcome)
        .collect();
    let rejected = |o: &Outcome| matches!(o, Outcome::Unreachable | Outcome::LocalDenied);
    if control.contains(&Outcome::Ok) {
        ControlReading::Answers
    } else if let Some(answer) = control
        .iter()
        .find(|o| !rejected(o) && **o != Outcome::Timeout)
    {
        ControlReading::Answered(*answer)
    } else if !control.is_empty() && control.iter().all(|o| *o == Outcome::Timeout) {
        ControlReading::Silent
    } else if let Some(blocked) = control.iter().find(|o| rejected(o)) {
        ControlReading::Blocked(*blocked)
    } else {
        ControlReading::NotProbed
    }
}

/// What the rule that sent the ICMP error did, in words ("administratively prohibited").
pub fn icmp_effect(report: &IcmpReport) -> &'static str {
    let v6 = report.origin == ORIGIN_ICMP6;
    icmp_words(v6, report.icmp_type, report.icmp_code)
}

/// The kernel's SO_EE_ORIGIN_ICMP6.
const ORIGIN_ICMP6: u8 = 3;

/// The hosts that had no address in any family probed, each with the families that were asked
/// (in host order of first appearance). A family without an address is no failure while another
/// has one; a name with no address at all leaves nothing to probe, and that is a failure of the
/// host.
pub fn hosts_without_any_address(results: &[ProbeResult]) -> Vec<(&str, Vec<Family>)> {
    let mut hosts: Vec<&str> = Vec::new();
    for r in results {
        if !hosts.contains(&r.target.as_str()) {
            hosts.push(&r.target);
        }
    }
    hosts
        .into_iter()
        .filter_map(|host| {
            let of_host = || results.iter().filter(move |r| r.target == host);
            let none = of_host().all(|r| r.outcome == Outcome::NoAddress);
            let mut families: Vec<Family> = of_host().map(|r| r.family).collect();
            families.sort();
            families.dedup();
            none.then_some((host, families))
        })
        .collect()
}

/// Who sent the ICMP error behind an `unreachable` or `local_denied` result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IcmpSender {
    /// One of this host's own addresses: its own firewall's reject rule (the probe classified
    /// it `local_denied`).
    ThisHost(IpAddr),
    /// A hop between this host and the destination.
    Router(IpAddr),
    /// The destination's own address: its own firewall.
    Destination,
    /// No ICMP, or no sender address in it.
    Unknown,
}

/// Reads who rejected `result` from the ICMP report's sender address. Whether the sender is one
/// of this host's addresses was decided when the probe ran (where the addresses are known) and
/// made the result `local_denied`.
pub fn icmp_sender(result: &ProbeResult) -> IcmpSender {
    match result.icmp.as_ref().and_then(|i| i.from) {
        Some(from) if result.outcome == Outcome::LocalDenied => IcmpSender::ThisHost(from),
        Some(from) if Some(from) != result.address => IcmpSender::Router(from),
        Some(_) => IcmpSender::Destination,
        None => IcmpSender::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(port: u16, outcome: Outcome) -> ProbeResult {
        ProbeResult {
            port,
            outcome,
            address: Some("198.18.0.25".parse().unwrap()),
            ..Default::default()
        }
    }

    #[test]
    fn control_readings() {
        use ControlReading::*;
        let read = |outcomes: &[Outcome]| {
            let results: Vec<ProbeResult> = outcomes.iter().map(|o| r(443, *o)).collect();
            control_reading(&results)
        };
        assert_eq!(read(&[Outcome::Ok, Outcome::Timeout]), Answers);
        assert_eq!(
            read(&[Outcome::Timeout, Outcome::Refused]),
            Answered(Outcome::Refused)
        );
        assert_eq!(read(&[Outcome::Timeout, Outcome::Timeout]), Silent);
        assert_eq!(
            read(&[Outcome::Timeout, Outcome::Unreachable]),
            Blocked(Outcome::Unreachable)
        );
        assert_eq!(read(&[]), NotProbed);
        assert_eq!(control_reading(&[r(25, Outcome::Ok)]), NotProbed);
    }

    #[test]
    fn a_host_without_any_address_is_named_with_the_families_asked() {
        let no = |host: &str, family| ProbeResult {
            target: host.into(),
            family,
            outcome: Outcome::NoAddress,
            ..Default::default()
        };
        let ok = |host: &str, family| ProbeResult {
            target: host.into(),
            family,
            ..Default::default()
        };
        let results = [
            ok("v4only", Family::Ipv4),
            no("v4only", Family::Ipv6),
            no("nothing", Family::Ipv4),
            no("nothing", Family::Ipv6),
        ];
        assert_eq!(
            hosts_without_any_address(&results),
            vec![("nothing", vec![Family::Ipv4, Family::Ipv6])]
        );
        assert!(hosts_without_any_address(&results[..2]).is_empty());
    }

    #[test]
    fn icmp_senders() {
        let with_icmp = |from: Option<&str>| {
            let mut u = r(25, Outcome::Unreachable);
            u.icmp = Some(IcmpReport {
                from: from.map(|f| f.parse().unwrap()),
                icmp_type: 3,
                icmp_code: 13,
                origin: 2,
            });
            u
        };
        assert_eq!(
            icmp_sender(&with_icmp(Some("198.18.0.1"))),
            IcmpSender::Router("198.18.0.1".parse().unwrap())
        );
        assert_eq!(
            icmp_sender(&with_icmp(Some("198.18.0.25"))),
            IcmpSender::Destination
        );
        assert_eq!(icmp_sender(&with_icmp(None)), IcmpSender::Unknown);
        let mut own = with_icmp(Some("198.18.0.2"));
        own.outcome = Outcome::LocalDenied;
        assert_eq!(
            icmp_sender(&own),
            IcmpSender::ThisHost("198.18.0.2".parse().unwrap())
        );
        assert_eq!(
            icmp_effect(own.icmp.as_ref().unwrap()),
            "administratively prohibited"
        );
        assert_eq!(
            icmp_sender(&r(25, Outcome::Unreachable)),
            IcmpSender::Unknown
        );
    }
}
