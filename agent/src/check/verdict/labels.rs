//! How a verdict names a set of ports: "25 and 587", and a port that fails in one family only
//! named with it ("2525 over IPv6"), so a verdict never calls the same port blocked and fine at
//! once.

use egresswatch_wire::{Family, Outcome, ProbeResult};
use std::collections::BTreeSet;

/// Names ports as the results of one check show them.
pub struct PortLabels<'a> {
    results: &'a [ProbeResult],
}

impl<'a> PortLabels<'a> {
    pub fn new(results: &'a [ProbeResult]) -> Self {
        PortLabels { results }
    }

    /// The failing `ports`, each with its family when only one family fails there.
    pub fn failing(&self, ports: &BTreeSet<u16>) -> String {
        self.label(ports, true)
    }

    /// The fine `ports`, each with its family when only one family is fine there.
    pub fn fine(&self, ports: &BTreeSet<u16>) -> String {
        self.label(ports, false)
    }

    fn label(&self, ports: &BTreeSet<u16>, failing: bool) -> String {
        let labelled: Vec<String> = ports
            .iter()
            .map(|p| match self.one_family(*p, failing) {
                Some(Family::Ipv4) => format!("{p} over IPv4"),
                Some(Family::Ipv6) => format!("{p} over IPv6"),
                None => p.to_string(),
            })
            .collect();
        join_words(&labelled)
    }

    /// The one family in which `port` is failing (or fine), when it was probed in more.
    fn one_family(&self, port: u16, failing: bool) -> Option<Family> {
        let probed: Vec<&ProbeResult> = self
            .results
            .iter()
            .filter(|r| r.port == port && r.outcome != Outcome::NoAddress)
            .collect();
        let matching: Vec<Family> = probed
            .iter()
            .filter(|r| r.outcome.is_failure() == failing)
            .map(|r| r.family)
            .collect();
        let families: BTreeSet<Family> = probed.iter().map(|r| r.family).collect();
        let matching_families: BTreeSet<Family> = matching.iter().copied().collect();
        (families.len() > 1 && matching_families.len() == 1).then(|| matching[0])
    }
}

/// "a", "a and b", "a, b and c".
pub fn join_words(items: &[String]) -> String {
    match items.len() {
        0 => String::new(),
        1 => items[0].clone(),
        n => format!("{} and {}", items[..n - 1].join(", "), items[n - 1]),
    }
}

/// "is" for one port, "are" for several.
pub fn is_are(ports: &BTreeSet<u16>) -> &'static str {
    if ports.len() == 1 {
        "is"
    } else {
        "are"
    }
}
