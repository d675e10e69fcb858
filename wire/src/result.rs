//! One probe's result as the agent measured it: the outcome, the phase timings and everything the
//! kernel told us (errno, ICMP origin), so the classification never throws information away.
//!
//! This full form is what the agent spools and what the collector stores; on the wire a batch
//! carries the compact form ([`crate::message::CompactResult`]) that shares repeated fields.

use crate::outcome::{DnsFailure, Family, Level, Outcome, ProbeCause, SessionStep};
use std::net::IpAddr;

wire_record! {
    /// Durations of each phase in microseconds; `None` when the phase was not reached.
    pub struct PhaseTimings {
        pub dns_us: Option<u32>,
        pub connect_us: Option<u32>,
        pub banner_us: Option<u32>,
        pub tls_us: Option<u32>,
    }
    required = 0;
}

impl PhaseTimings {
    pub fn connect_ms(&self) -> Option<f64> {
        self.connect_us.map(|us| f64::from(us) / 1000.0)
    }
}

wire_record! {
    /// Who rejected a connection, as the socket error queue (IP_RECVERR / IPV6_RECVERR) reports
    /// it: the address of the hop that sent the ICMP error and its type and code. A provider's
    /// edge and the destination's own firewall differ here.
    pub struct IcmpReport {
        pub from: Option<IpAddr>,
        pub icmp_type: u8,
        pub icmp_code: u8,
        /// The kernel's SO_EE_ORIGIN_* value (2 = ICMP, 3 = ICMPv6, 1 = local).
        pub origin: u8,
    }
    required = 3;
}

wire_record! {
    /// What a completed TLS handshake negotiated.
    pub struct TlsInfo {
        /// e.g. "TLSv1.3".
        pub version: String,
        /// e.g. "TLS13_AES_256_GCM_SHA384".
        pub cipher: String,
        /// The leaf certificate's issuer, as text.
        pub issuer: String,
    }
    required = 2;
}

wire_record! {
    /// One probe of (target, port, family) at one level.
    pub struct ProbeResult {
        /// The agent's sequence number: monotonic across restarts, the dedupe key with the agent id.
        pub seq: u64,
        /// When the probe started, agent's wall clock, Unix milliseconds.
        pub at_unix_ms: i64,
        /// The target as configured (a name or an address literal).
        pub target: String,
        pub port: u16,
        pub family: Family,
        pub level: Level,
        pub outcome: Outcome,
        /// The address actually probed, when one was resolved.
        pub address: Option<IpAddr>,
        pub timings: PhaseTimings,
        /// SYN retransmissions before the connection was established (TCP_INFO), so that a
        /// lost SYN is never read as latency.
        pub syn_retransmits: Option<u8>,
        /// The raw errno behind a failed step.
        pub errno: Option<i32>,
        pub icmp: Option<IcmpReport>,
        pub dns_failure: Option<DnsFailure>,
        pub tls: Option<TlsInfo>,
        /// Short human text: the greeting, the error, what was missing.
        pub detail: String,
        /// The session step a failure after connect happened in (appended in wire minor 1;
        /// `None` from older agents and for failures before or without a session).
        pub step: Option<SessionStep>,
        /// Why the probe ran (appended in wire minor 2; `scheduled` from older agents).
        pub cause: ProbeCause,
        /// The collector's request this probe answers, for `cause == requested`.
        pub request_id: Option<u64>,
    }
    required = 7;
}

/// Cuts `text` to at most `max` bytes on a character boundary, marking the cut.
pub fn truncate_detail(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max.saturating_sub(3);
    while end > 0 && !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ProbeResult {
        ProbeResult {
            seq: 42,
            at_unix_ms: 1_700_000_000_000,
            target: "smtp.example.net".into(),
            port: 587,
            family: Family::Ipv6,
            level: Level::Tls,
            outcome: Outcome::Unreachable,
            address: Some("2001:db8::25".parse().unwrap()),
            timings: PhaseTimings {
                dns_us: Some(800),
                connect_us: None,
                banner_us: None,
                tls_us: None,
            },
            syn_retransmits: Some(0),
            errno: Some(113),
            icmp: Some(IcmpReport {
                from: Some("2001:db8:1::1".parse().unwrap()),
                icmp_type: 1,
                icmp_code: 1,
                origin: 3,
            }),
            dns_failure: None,
            tls: None,
            detail: "administratively prohibited".into(),
            step: None,
            cause: Default::default(),
            request_id: None,
        }
    }

    #[test]
    fn round_trips_in_msgpack_and_json() {
        let r = sample();
        let bytes = rmp_serde::to_vec(&r).unwrap();
        assert_eq!(rmp_serde::from_slice::<ProbeResult>(&bytes).unwrap(), r);
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<ProbeResult>(&json).unwrap(), r);
    }

    #[test]
    fn trailing_defaults_are_trimmed() {
        let r = ProbeResult {
            seq: 1,
            target: "a".into(),
            port: 25,
            ..Default::default()
        };
        let bytes = rmp_serde::to_vec(&r).unwrap();
        // array header + 7 required fields, nothing else.
        assert_eq!(bytes[0], 0x97);
    }

    #[test]
    fn truncates_on_char_boundary() {
        assert_eq!(truncate_detail("abc", 10), "abc");
        let t = truncate_detail("ééééé", 6);
        assert!(t.len() <= 6 && t.ends_with("..."));
    }
}
