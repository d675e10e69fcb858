//! The verdict's wording for each reading, on results made by hand.

mod readings_and_sentences {
    use super::super::*;
    use egresswatch_wire::IcmpReport;
    use egresswatch_wire::{Outcome, ProbeResult};

    fn r(port: u16, outcome: Outcome) -> ProbeResult {
        ProbeResult {
            target: "mx.example".into(),
            port,
            outcome,
            address: Some("198.18.0.25".parse().unwrap()),
            ..Default::default()
        }
    }

    #[test]
    fn provider_block_is_named() {
        let v = verdict(&[
            r(25, Outcome::Timeout),
            r(587, Outcome::Timeout),
            r(443, Outcome::Ok),
        ]);
        assert!(
            v[0].contains(
                "25 and 587 time out while 443 answers: outbound SMTP is filtered on this network"
            ),
            "{v:?}"
        );
    }

    #[test]
    fn everything_dropped_is_not_called_an_smtp_block() {
        let v = verdict(&[r(587, Outcome::Timeout), r(443, Outcome::Timeout)]);
        assert!(v[0].contains("not an SMTP-specific block"), "{v:?}");
    }

    #[test]
    fn icmp_from_a_router_names_the_path() {
        let mut u = r(465, Outcome::Unreachable);
        u.icmp = Some(IcmpReport {
            from: Some("198.18.0.1".parse().unwrap()),
            icmp_type: 3,
            icmp_code: 13,
            origin: 2,
        });
        let v = verdict(&[u, r(443, Outcome::Ok)]);
        assert!(
            v[0].contains("465 is rejected by a router on the path (198.18.0.1, ICMP)"),
            "{v:?}"
        );
    }

    fn rejected_by(port: u16, hop: &str) -> ProbeResult {
        let mut u = r(port, Outcome::Unreachable);
        u.icmp = Some(IcmpReport {
            from: Some(hop.parse().unwrap()),
            icmp_type: 3,
            icmp_code: 13,
            origin: 2,
        });
        u
    }

    #[test]
    fn router_and_destination_rejects_are_told_apart() {
        let v = verdict(&[
            rejected_by(587, "198.18.0.1"),
            rejected_by(2525, "198.18.0.25"),
            r(443, Outcome::Ok),
        ]);
        let text = v.join("\n");
        assert!(
            text.contains("587 is rejected by a router on the path (198.18.0.1, ICMP)"),
            "{text}"
        );
        assert!(
            text.contains("2525 is rejected by the destination itself"),
            "{text}"
        );
        assert!(!text.contains("587 and 2525"), "{text}");
    }

    #[test]
    fn a_refused_control_still_proves_the_path() {
        let v = verdict(&[r(25, Outcome::Timeout), r(443, Outcome::Refused)]);
        assert!(
            v[0].contains(
                "25 times out while 443 gets an answer (refused): the destination is reachable"
            ),
            "{v:?}"
        );
        let v = verdict(&[r(25, Outcome::Timeout), r(443, Outcome::Unreachable)]);
        assert!(v[0].contains("443 fails too (unreachable)"), "{v:?}");
    }

    #[test]
    fn other_layers() {
        let all = verdict(&[
            r(25, Outcome::Refused),
            r(587, Outcome::StarttlsMissing),
            r(465, Outcome::TlsFailed),
            r(2525, Outcome::BadBanner),
        ]);
        let text = all.join("\n");
        assert!(text.contains("destination refuses"));
        assert!(text.contains("STARTTLS is not offered"));
        assert!(text.contains("TLS intercepted"));
        assert!(text.contains("policy at the destination"));
        let mut d = r(25, Outcome::DnsFailed);
        d.dns_failure = Some(egresswatch_wire::DnsFailure::Nxdomain);
        assert!(verdict(&[d])[0].contains("does not resolve (nxdomain): a DNS problem"));
        assert!(verdict(&[r(25, Outcome::Ok), r(443, Outcome::Ok)])[0].contains("open"));
    }
}

mod family_tests {
    use super::super::*;
    use egresswatch_wire::{Family, Outcome, ProbeResult};

    #[test]
    fn a_port_failing_in_one_family_is_named_with_it() {
        let r = |port: u16, family: Family, outcome: Outcome| ProbeResult {
            target: "mx".into(),
            port,
            family,
            outcome,
            address: Some(if family == Family::Ipv4 {
                "198.19.0.25".parse().unwrap()
            } else {
                "2001:db8:ffff::25".parse().unwrap()
            }),
            ..Default::default()
        };
        let v = verdict(&[
            r(25, Family::Ipv4, Outcome::Timeout),
            r(25, Family::Ipv6, Outcome::Timeout),
            r(2525, Family::Ipv4, Outcome::Ok),
            r(2525, Family::Ipv6, Outcome::Timeout),
            r(443, Family::Ipv4, Outcome::Ok),
            r(443, Family::Ipv6, Outcome::Ok),
        ])
        .join("\n");
        assert!(
            v.contains("25 and 2525 over IPv6 time out while 443 answers"),
            "{v}"
        );
        assert!(v.contains("443 and 2525 over IPv4 are fine"), "{v}");
    }
}

mod own_firewall {
    use super::super::*;
    use egresswatch_wire::{IcmpReport, Outcome, ProbeResult};

    fn local_reject(port: u16, from: &str, icmp_type: u8, icmp_code: u8) -> ProbeResult {
        ProbeResult {
            target: "mx.example".into(),
            port,
            outcome: Outcome::LocalDenied,
            address: Some("198.18.0.25".parse().unwrap()),
            icmp: Some(IcmpReport {
                from: Some(from.parse().unwrap()),
                icmp_type,
                icmp_code,
                origin: 2,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn icmp_from_this_host_names_its_own_firewall_and_the_rules_effect() {
        let ok = ProbeResult {
            port: 443,
            address: Some("198.18.0.25".parse().unwrap()),
            ..Default::default()
        };
        let v = verdict(&[
            local_reject(25, "198.18.0.2", 3, 13),
            local_reject(587, "198.18.0.2", 3, 3),
            ok,
        ])
        .join("\n");
        assert!(
            v.contains("25 is rejected by this host's own firewall (administratively prohibited: ICMP from 198.18.0.2, an address of this host)"),
            "{v}"
        );
        assert!(
            v.contains("587 is rejected by this host's own firewall (port unreachable"),
            "{v}"
        );
        assert!(!v.contains("router"), "{v}");
        assert!(!v.contains("provider's edge"), "{v}");
        assert!(!v.contains("EPERM"), "{v}");
    }

    #[test]
    fn a_refusal_to_send_without_icmp_keeps_its_sentence() {
        let denied = ProbeResult {
            port: 25,
            outcome: Outcome::LocalDenied,
            address: Some("198.18.0.25".parse().unwrap()),
            errno: Some(libc::EPERM),
            ..Default::default()
        };
        let v = verdict(&[denied]).join("\n");
        assert!(
            v.contains("25: this host's own firewall refuses to send (EPERM/EACCES)"),
            "{v}"
        );
    }
}

mod names_without_addresses {
    use super::super::*;
    use egresswatch_wire::{Family, Outcome, ProbeResult};

    fn r(host: &str, family: Family, outcome: Outcome) -> ProbeResult {
        ProbeResult {
            target: host.into(),
            port: 25,
            family,
            outcome,
            ..Default::default()
        }
    }

    #[test]
    fn a_name_with_no_address_at_all_is_said_to_be_the_failure() {
        let v = verdict(&[
            r("gone.example", Family::Ipv4, Outcome::NoAddress),
            r("gone.example", Family::Ipv6, Outcome::NoAddress),
        ])
        .join("\n");
        assert!(
            v.starts_with("Verdict: gone.example has no address, neither IPv4 nor IPv6: nothing could be probed"),
            "{v}"
        );
        assert!(!v.contains("not a failure"), "{v}");
    }

    #[test]
    fn a_family_without_an_address_beside_one_with_is_not_a_failure() {
        let v = verdict(&[
            r("v4only.example", Family::Ipv4, Outcome::Ok),
            r("v4only.example", Family::Ipv6, Outcome::NoAddress),
        ])
        .join("\n");
        assert!(v.contains("25 answers: outbound SMTP is open"), "{v}");
        assert!(
            v.contains("1 probe(s) had no address in their family (not a failure)"),
            "{v}"
        );
        let v = verdict(&[r("v4only.example", Family::Ipv6, Outcome::NoAddress)]).join("\n");
        assert!(v.contains("v4only.example has no IPv6 address"), "{v}");
    }
}
