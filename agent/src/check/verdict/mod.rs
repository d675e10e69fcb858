//! The verdict in plain words, naming the layer in the way. Pure: results in, sentences out.
//!
//! - [`readings`]: what the 443 control says about the path, and who sent an ICMP error.
//! - [`sentences`]: the sentence of each outcome that needs no further reading, as data.
//! - [`labels`]: how sets of ports are named ("25 and 2525 over IPv6").

pub mod labels;
pub mod readings;
pub mod sentences;

use crate::probe::PORT_HTTPS;
use egresswatch_wire::{Family, Outcome, ProbeResult};
use labels::{is_are, PortLabels};
use readings::{
    control_reading, hosts_without_any_address, icmp_effect, icmp_sender, ControlReading,
    IcmpSender,
};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// The verdict: the first line starts "Verdict: ", the rest are indented under it.
pub fn verdict(results: &[ProbeResult]) -> Vec<String> {
    if results.is_empty() {
        return vec!["Nothing was probed.".into()];
    }
    let labels = PortLabels::new(results);
    let mut lines = Vec::new();
    lines.extend(dns_lines(results));
    lines.extend(no_address_lines(results));
    lines.extend(timeout_line(results, &labels));
    lines.extend(icmp_lines(results, &labels));
    lines.extend(own_firewall_lines(results, &labels));
    for sentence in sentences::SENTENCES {
        let ports: BTreeSet<u16> = results
            .iter()
            .filter(|r| sentences::sentence_for(r).is_some_and(|s| std::ptr::eq(s, sentence)))
            .map(|r| r.port)
            .collect();
        if !ports.is_empty() {
            lines.push(format!("{}: {}", labels.failing(&ports), sentence.text));
        }
    }
    let ok = ports_with(results, Outcome::Ok, true);
    if lines.is_empty() {
        if ok.is_empty() {
            lines.push("No address to probe.".into());
        } else {
            lines.push(format!(
                "{} {}: outbound SMTP is open from this host.",
                labels.fine(&ok),
                if ok.len() == 1 { "answers" } else { "answer" }
            ));
        }
    } else if !ok.is_empty() {
        lines.push(format!("{} {} fine.", labels.fine(&ok), is_are(&ok)));
    }
    let without_any: Vec<&str> = hosts_without_any_address(results)
        .into_iter()
        .map(|(host, _)| host)
        .collect();
    let no_address = results
        .iter()
        .filter(|r| r.outcome == Outcome::NoAddress && !without_any.contains(&r.target.as_str()))
        .count();
    if no_address > 0 {
        lines.push(format!(
            "{no_address} probe(s) had no address in their family (not a failure)."
        ));
    }
    let mut prefixed = vec![format!("Verdict: {}", lines[0])];
    prefixed.extend(lines.into_iter().skip(1).map(|l| format!("         {l}")));
    prefixed
}

/// The ports whose result is `outcome`; the 443 control only when `includes_control`.
fn ports_with(results: &[ProbeResult], outcome: Outcome, includes_control: bool) -> BTreeSet<u16> {
    results
        .iter()
        .filter(|r| r.outcome == outcome && (includes_control || r.port != PORT_HTTPS))
        .map(|r| r.port)
        .collect()
}

/// One line per host that did not resolve, with the resolver's kind of failure.
fn dns_lines(results: &[ProbeResult]) -> Vec<String> {
    let hosts: BTreeSet<&str> = results
        .iter()
        .filter(|r| r.outcome == Outcome::DnsFailed)
        .map(|r| r.target.as_str())
        .collect();
    hosts
        .into_iter()
        .map(|host| {
            let kind = results
                .iter()
                .find(|r| r.target == host && r.outcome == Outcome::DnsFailed)
                .and_then(|r| r.dns_failure);
            format!(
                "{host} does not resolve ({}): a DNS problem, not a port block.",
                kind.map(|k| k.to_string())
                    .unwrap_or_else(|| "unknown".into())
            )
        })
        .collect()
}

/// One line per host with no address in any family probed: nothing could be probed there.
fn no_address_lines(results: &[ProbeResult]) -> Vec<String> {
    hosts_without_any_address(results)
        .into_iter()
        .map(|(host, families)| {
            let which = match families.as_slice() {
                [Family::Ipv4] => "no IPv4 address",
                [Family::Ipv6] => "no IPv6 address",
                _ => "no address, neither IPv4 nor IPv6",
            };
            format!(
                "{host} has {which}: nothing could be probed (a fact of the name's DNS records, not a port block)."
            )
        })
        .collect()
}

/// Timeouts read against the 443 control: an SMTP-only silence is a provider's block, a silence
/// everywhere is not.
fn timeout_line(results: &[ProbeResult], labels: &PortLabels) -> Option<String> {
    let timeouts = ports_with(results, Outcome::Timeout, false);
    if timeouts.is_empty() {
        return None;
    }
    let verb = if timeouts.len() == 1 {
        "times out"
    } else {
        "time out"
    };
    let ports = labels.failing(&timeouts);
    Some(match control_reading(results) {
        ControlReading::Answers => format!(
            "{ports} {verb} while 443 answers: outbound SMTP is filtered on this network (a silent drop, the signature of a provider block)."
        ),
        ControlReading::Answered(answer) => format!(
            "{ports} {verb} while 443 gets an answer ({answer}): the destination is reachable, so SMTP is silently dropped on the way (the signature of a provider block)."
        ),
        ControlReading::Silent => format!(
            "{ports} {verb} and so does 443: the destination is unreachable from here, or this host has no outbound network; not an SMTP-specific block."
        ),
        ControlReading::Blocked(blocked) => format!(
            "{ports} {verb} and 443 fails too ({blocked}): the path to the destination is broken or firewalled as a whole; not an SMTP-specific block."
        ),
        ControlReading::NotProbed => format!(
            "{ports} {verb}: the SYN is silently dropped, typical of a provider's SMTP block (probe 443 as a control to be sure)."
        ),
    })
}

/// ICMP rejects: a router on the path (the provider's edge, say) is told from the destination's
/// own firewall by who sent the ICMP error.
fn icmp_lines(results: &[ProbeResult], labels: &PortLabels) -> Vec<String> {
    let mut by_router = BTreeSet::new();
    let mut routers = BTreeSet::new();
    let mut by_destination = BTreeSet::new();
    let mut no_icmp = BTreeSet::new();
    for r in results
        .iter()
        .filter(|r| r.outcome == Outcome::Unreachable && r.port != PORT_HTTPS)
    {
        match icmp_sender(r) {
            IcmpSender::Router(from) => {
                by_router.insert(r.port);
                routers.insert(from);
            }
            IcmpSender::Destination => {
                by_destination.insert(r.port);
            }
            IcmpSender::Unknown => {
                no_icmp.insert(r.port);
            }
            // Only `local_denied` results read as this host's; they have their own lines.
            IcmpSender::ThisHost(_) => {}
        }
    }
    let mut lines = Vec::new();
    if !by_router.is_empty() {
        let hops: Vec<String> = routers.iter().map(ToString::to_string).collect();
        lines.push(format!(
            "{} {} rejected by a router on the path ({}, ICMP): a firewall between this host and the destination, e.g. the provider's edge.",
            labels.failing(&by_router),
            is_are(&by_router),
            hops.join(", ")
        ));
    }
    if !by_destination.is_empty() {
        lines.push(format!(
            "{} {} rejected by the destination itself (ICMP from its own address): the destination's firewall.",
            labels.failing(&by_destination),
            is_are(&by_destination)
        ));
    }
    if !no_icmp.is_empty() {
        lines.push(format!(
            "{} {} unreachable with no ICMP to say who: no route from this host, or the network is down.",
            labels.failing(&no_icmp),
            is_are(&no_icmp)
        ));
    }
    lines
}

/// Rejects this host's own firewall made (ICMP from one of its own addresses), grouped by what
/// the rule did: the user is sent to their own output chain, not to the provider.
fn own_firewall_lines(results: &[ProbeResult], labels: &PortLabels) -> Vec<String> {
    let mut by_effect: BTreeMap<&str, (BTreeSet<u16>, BTreeSet<IpAddr>)> = BTreeMap::new();
    for r in results.iter().filter(|r| r.port != PORT_HTTPS) {
        if let (IcmpSender::ThisHost(from), Some(report)) = (icmp_sender(r), r.icmp.as_ref()) {
            let (ports, senders) = by_effect.entry(icmp_effect(report)).or_default();
            ports.insert(r.port);
            senders.insert(from);
        }
    }
    by_effect
        .into_iter()
        .map(|(effect, (ports, senders))| {
            let senders: Vec<String> = senders.iter().map(ToString::to_string).collect();
            let whose = if senders.len() == 1 {
                "an address of this host"
            } else {
                "addresses of this host"
            };
            format!(
                "{} {} rejected by this host's own firewall ({effect}: ICMP from {}, {whose}): a reject rule in this host's output chain (nftables/iptables), not the network or the provider.",
                labels.failing(&ports),
                is_are(&ports),
                senders.join(", ")
            )
        })
        .collect()
}

#[cfg(test)]
mod tests;
