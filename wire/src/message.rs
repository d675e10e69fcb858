//! The messages of an agent session, in the order they travel:
//!
//! ```text
//! agent                                   collector
//!   Hello  (version, labels, targets) ──▶
//!                                     ◀── Welcome (agent id from the certificate, acked_seq)
//!                                     ◀── or Refusal (reason; e.g. wrong major version)
//!   Batch  (first_seq, results…)      ──▶
//!                                     ◀── Ack (cumulative up_to_seq, counts, reason)
//!                                     ◀── ProbeRequest (1.2: probe this target/port now)
//!   Batch  (… results with cause = requested, request_id) ──▶
//!   Renew  (1.4: a CSR, when a third of the certificate's life is left) ──▶
//!                                     ◀── Renewed (the new certificate, or why not)
//! ```
//!
//! A probe request is only ever sent to an agent whose hello has `wire_minor >= 2` and
//! `accepts_probe_requests`; an agent answers it with ordinary results in its ordinary stream, or
//! not at all (unknown target, over its own budget): the collector never waits on an answer.
//!
//! A batch numbers its results implicitly: result `i` has sequence `first_seq + i`. Repeated
//! fields (target, port, family, level, address) live once per batch in the series table, which is
//! what keeps a typical result to about ten bytes.

use crate::error::WireError;
use crate::labels::Labels;
use crate::limits::{
    MAX_BATCH_RESULTS, MAX_BATCH_SERIES, MAX_DETAIL_BYTES, MAX_HELLO_TARGETS, MAX_TARGET_BYTES,
};
pub use crate::outcome::ClockQuality;
use crate::outcome::{DnsFailure, Family, Level, Outcome, ProbeCause, SessionStep};
use crate::result::{IcmpReport, PhaseTimings, ProbeResult, TlsInfo};
use std::collections::HashMap;
use std::net::IpAddr;

wire_record! {
    /// One configured target as the agent announces it.
    pub struct TargetSpec {
        pub host: String,
        pub ports: Vec<u16>,
        pub level: Level,
        pub interval_s: u32,
    }
    required = 3;
}

wire_record! {
    /// First message of a session, from the agent.
    pub struct Hello {
        pub wire_major: u8,
        pub wire_minor: u16,
        pub agent_version: String,
        pub labels: Labels,
        pub targets: Vec<TargetSpec>,
        pub clock: ClockQuality,
        /// The agent's own trouble worth showing centrally (e.g. "spool: disk full"); empty if none.
        pub status: String,
        /// Appended in wire minor 2: the agent answers [`ProbeRequest`]s (its operator may turn
        /// that off). `false` from older agents, which are never sent one.
        pub accepts_probe_requests: bool,
        /// Appended in wire minor 3: the sequence number the agent's spool writes next; 0 from
        /// older agents (and from one without a usable spool), which says nothing.
        pub spool_next_seq: u64,
        /// Appended in wire minor 3: no collector has welcomed this spool's numbering yet (it
        /// was created empty: a rebuilt machine, a new `spool.dir`, a lost disk).
        pub spool_new: bool,
    }
    required = 4;
}

wire_record! {
    /// The collector's answer to a hello it accepts.
    pub struct Welcome {
        pub wire_major: u8,
        pub wire_minor: u16,
        pub collector_version: String,
        /// The identity the collector read from the agent's certificate.
        pub agent_id: String,
        /// Highest sequence number already stored for this agent; the agent may drop up to it.
        pub acked_seq: u64,
        /// Appended in wire minor 4: the validity of the certificate the agent connected with, as
        /// the collector read it (Unix seconds; 0 from older collectors), so the agent knows
        /// when to ask for a [`Renew`] without parsing certificates itself.
        pub cert_not_before: i64,
        pub cert_not_after: i64,
    }
    required = 5;
}

wire_record! {
    /// Wire 1.4: the agent asks for a new certificate for the identity of this session (sent when
    /// less than a third of its certificate's life is left; see [`renewal_due`]).
    pub struct Renew {
        /// DER of a PKCS#10 request for the agent's key; its subject is not used (the identity
        /// is the session's).
        pub csr_der: Vec<u8>,
    }
    required = 1;
}

wire_record! {
    /// Wire 1.4: the collector's answer to a [`Renew`]: the new certificate, or why not.
    pub struct Renewed {
        /// PEM of the new certificate; empty when refused.
        pub cert_pem: String,
        /// Why the collector did not renew (empty when it did).
        pub refused: String,
    }
    required = 1;
}

/// Whether a certificate valid from `not_before` to `not_after` (Unix seconds) is due for
/// renewal at `now`: less than a third of its life is left. The collector, which decides
/// with the same clock readings, accepts a request from half-life on (room for clock skew).
pub fn renewal_due(not_before: i64, not_after: i64, now: i64) -> bool {
    renewal_at(not_before, not_after).is_some_and(|at| now >= at)
}

/// When a certificate is due for renewal (two thirds into its life); `None` for a validity
/// that says nothing (unknown or empty).
pub fn renewal_at(not_before: i64, not_after: i64) -> Option<i64> {
    (not_before > 0 && not_after > not_before).then(|| not_after - (not_after - not_before) / 3)
}

wire_record! {
    /// The collector's answer when it will not talk to this agent; the connection closes after it.
    pub struct Refusal {
        pub reason: String,
        /// Seconds before trying again; 0 means "not until something changes" (upgrade, new cert).
        pub retry_after_s: u32,
    }
    required = 1;
}

wire_record! {
    /// Key of one series in a batch: everything results of one (target, port, family) share.
    pub struct SeriesKey {
        pub target: String,
        pub port: u16,
        pub family: Family,
        pub level: Level,
        pub address: Option<IpAddr>,
    }
    required = 4;
}

wire_record! {
    /// One result inside a batch; see [`ProbeResult`] for the meaning of each field.
    pub struct CompactResult {
        /// Index into the batch's series table.
        pub series: u32,
        pub outcome: Outcome,
        /// Milliseconds after the batch's `base_unix_ms`.
        pub offset_ms: u32,
        pub connect_us: Option<u32>,
        pub dns_us: Option<u32>,
        pub banner_us: Option<u32>,
        pub tls_us: Option<u32>,
        pub syn_retransmits: Option<u8>,
        pub errno: Option<i32>,
        pub icmp: Option<IcmpReport>,
        pub dns_failure: Option<DnsFailure>,
        pub tls: Option<TlsInfo>,
        pub detail: String,
        /// Appended in wire minor 1: older collectors skip it, older agents leave it `None`.
        pub step: Option<SessionStep>,
        /// Appended in wire minor 2: why the probe ran.
        pub cause: ProbeCause,
        /// Appended in wire minor 2: the request a `requested` probe answers.
        pub request_id: Option<u64>,
    }
    required = 3;
}

wire_record! {
    /// Results `first_seq ..= first_seq + results.len() - 1` of one agent.
    pub struct Batch {
        pub first_seq: u64,
        pub base_unix_ms: i64,
        pub clock: ClockQuality,
        pub series: Vec<SeriesKey>,
        pub results: Vec<CompactResult>,
        /// Results the agent's spool had to drop (oldest first, when full) just before this batch.
        pub dropped_before: u64,
        /// Appended in wire minor 3: the agent's clock when it sent this batch. Results of a
        /// clock that is not synchronised cannot be placed in time by their own timestamps, but
        /// `sent_unix_ms - at_unix_ms` is still how old each was when it left: the collector
        /// places them on its own clock with it. 0 from older agents, which says nothing.
        pub sent_unix_ms: i64,
    }
    required = 5;
}

wire_record! {
    /// Cumulative acknowledgement: every result up to `up_to_seq` is durably stored (or was
    /// already). Counts say what happened to this batch; `reason` explains any discard.
    pub struct Ack {
        pub up_to_seq: u64,
        pub accepted: u32,
        pub duplicates: u32,
        pub discarded: u32,
        pub reason: String,
    }
    required = 4;
}

wire_record! {
    /// The collector asking an agent to probe one of its own configured targets now (wire 1.2),
    /// because another agent's result suggests a change. The agent probes on fresh sockets and
    /// sends the result marked `requested` with this `request_id`; it ignores a request for a
    /// target/port it does not probe itself, and one over its own per-minute budget.
    pub struct ProbeRequest {
        pub request_id: u64,
        pub target: String,
        pub port: u16,
        pub family: Family,
        /// How long the answer is still useful; after that the agent does not bother.
        pub deadline_ms: u32,
    }
    required = 5;
}

impl Batch {
    /// This batch as a collector speaking wire minor `peer_minor` (from its welcome) can decode
    /// it: values added in later minors are replaced by the ones it knows.
    /// The batch as it leaves: stamped with the sender's clock (see `sent_unix_ms`).
    pub fn sent_at(mut self, unix_ms: i64) -> Self {
        self.sent_unix_ms = unix_ms;
        self
    }

    pub fn for_peer_minor(mut self, peer_minor: u16) -> Self {
        for result in &mut self.results {
            result.dns_failure = result.dns_failure.map(|k| k.for_peer(peer_minor));
        }
        self
    }

    /// Packs results with consecutive sequence numbers into a batch.
    pub fn pack(
        results: &[ProbeResult],
        clock: ClockQuality,
        dropped_before: u64,
    ) -> Result<Batch, WireError> {
        let invalid = |reason: String| WireError::Encode {
            what: "batch",
            reason,
        };
        let Some(first) = results.first() else {
            return Err(invalid("a batch needs at least one result".into()));
        };
        if results.len() > MAX_BATCH_RESULTS {
            return Err(invalid(format!(
                "{} results, more than {MAX_BATCH_RESULTS}",
                results.len()
            )));
        }
        let base_unix_ms = results
            .iter()
            .map(|r| r.at_unix_ms)
            .min()
            .unwrap_or(first.at_unix_ms);
        let mut series: Vec<SeriesKey> = Vec::new();
        let mut index: HashMap<SeriesKey, u32> = HashMap::new();
        let mut compact = Vec::with_capacity(results.len());
        for (i, r) in results.iter().enumerate() {
            if r.seq != first.seq + i as u64 {
                return Err(invalid(format!(
                    "sequence {} follows {} (must be consecutive)",
                    r.seq,
                    first.seq + i as u64 - 1
                )));
            }
            let key = SeriesKey {
                target: r.target.clone(),
                port: r.port,
                family: r.family,
                level: r.level,
                address: r.address,
            };
            let next = series.len() as u32;
            let series_index = *index.entry(key.clone()).or_insert_with(|| {
                series.push(key);
                next
            });
            let offset_ms = u32::try_from(r.at_unix_ms - base_unix_ms)
                .map_err(|_| invalid("results span more than 49 days".into()))?;
            compact.push(CompactResult {
                series: series_index,
                outcome: r.outcome,
                offset_ms,
                connect_us: r.timings.connect_us,
                dns_us: r.timings.dns_us,
                banner_us: r.timings.banner_us,
                tls_us: r.timings.tls_us,
                syn_retransmits: r.syn_retransmits,
                errno: r.errno,
                icmp: r.icmp.clone(),
                dns_failure: r.dns_failure,
                tls: r.tls.clone(),
                detail: r.detail.clone(),
                step: r.step,
                cause: r.cause,
                request_id: r.request_id,
            });
        }
        Ok(Batch {
            first_seq: first.seq,
            base_unix_ms,
            clock,
            series,
            results: compact,
            dropped_before,
            sent_unix_ms: 0,
        })
    }

    /// Sequence number of the last result, if any.
    pub fn last_seq(&self) -> Option<u64> {
        (!self.results.is_empty()).then(|| self.first_seq + self.results.len() as u64 - 1)
    }

    /// Checks the batch's shape and expands it back into full results.
    pub fn unpack(&self) -> Result<Vec<ProbeResult>, WireError> {
        let malformed = |reason: String| WireError::Malformed {
            what: "batch",
            reason,
        };
        if self.results.len() > MAX_BATCH_RESULTS {
            return Err(malformed(format!(
                "{} results, more than {MAX_BATCH_RESULTS}",
                self.results.len()
            )));
        }
        if self.series.len() > MAX_BATCH_SERIES {
            return Err(malformed(format!(
                "{} series, more than {MAX_BATCH_SERIES}",
                self.series.len()
            )));
        }
        if self
            .first_seq
            .checked_add(self.results.len() as u64)
            .is_none()
        {
            return Err(malformed("sequence numbers overflow".into()));
        }
        for s in &self.series {
            if s.target.is_empty() || s.target.len() > MAX_TARGET_BYTES {
                return Err(malformed(format!(
                    "target name of {} bytes",
                    s.target.len()
                )));
            }
        }
        self.results
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let key = self.series.get(c.series as usize).ok_or_else(|| {
                    malformed(format!(
                        "result {i} names series {} of {}",
                        c.series,
                        self.series.len()
                    ))
                })?;
                if c.detail.len() > MAX_DETAIL_BYTES {
                    return Err(malformed(format!(
                        "result {i} has a detail of {} bytes",
                        c.detail.len()
                    )));
                }
                Ok(ProbeResult {
                    seq: self.first_seq + i as u64,
                    at_unix_ms: self.base_unix_ms.saturating_add(i64::from(c.offset_ms)),
                    target: key.target.clone(),
                    port: key.port,
                    family: key.family,
                    level: key.level,
                    outcome: c.outcome,
                    address: key.address,
                    timings: PhaseTimings {
                        dns_us: c.dns_us,
                        connect_us: c.connect_us,
                        banner_us: c.banner_us,
                        tls_us: c.tls_us,
                    },
                    syn_retransmits: c.syn_retransmits,
                    errno: c.errno,
                    icmp: c.icmp.clone(),
                    dns_failure: c.dns_failure,
                    tls: c.tls.clone(),
                    detail: c.detail.clone(),
                    step: c.step,
                    cause: c.cause,
                    request_id: c.request_id,
                })
            })
            .collect()
    }
}

/// Whether an agent must continue its numbering above the collector's high-water mark: the
/// store already holds `high_water` results of this agent's certificate, and its spool either
/// started empty without any collector having welcomed it (`spool_new`), or writes next at or
/// below that mark. Numbering from where such a spool stands would send nothing until it passed
/// the mark, and the cumulative ack would then delete all of it unsent. Decided alike on both
/// sides from what the hello said: the agent renumbers its unacked results to follow
/// `high_water`, the collector counts and logs it.
pub fn numbering_continues_above(spool_next_seq: u64, spool_new: bool, high_water: u64) -> bool {
    spool_next_seq > 0 && high_water > 0 && (spool_new || high_water >= spool_next_seq)
}

impl Hello {
    /// Bounds what a hello may carry before the collector looks at it.
    pub fn check_bounds(&self) -> Result<(), WireError> {
        if self.targets.len() > MAX_HELLO_TARGETS {
            return Err(WireError::Malformed {
                what: "hello",
                reason: format!(
                    "{} targets, more than {MAX_HELLO_TARGETS}",
                    self.targets.len()
                ),
            });
        }
        if let Some(t) = self
            .targets
            .iter()
            .find(|t| t.host.len() > MAX_TARGET_BYTES)
        {
            return Err(WireError::Malformed {
                what: "hello",
                reason: format!("target name of {} bytes", t.host.len()),
            });
        }
        Ok(())
    }
}

// Eq + Hash for the series table's index; IpAddr, Family and Level are all Eq + Hash.
impl Eq for SeriesKey {}
impl std::hash::Hash for SeriesKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (
            &self.target,
            self.port,
            self.family,
            self.level,
            self.address,
        )
            .hash(state);
    }
}

/// Kinds of message an agent sends. Unknown kinds (from a newer agent) are surfaced, not fatal.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentMessage {
    Hello(Hello),
    Batch(Batch),
    /// Wire 1.4: sent only to a collector whose welcome says minor 4 or later.
    Renew(Renew),
    Unknown(u8),
}

/// Kinds of message the collector sends.
#[derive(Debug, Clone, PartialEq)]
pub enum CollectorMessage {
    Welcome(Welcome),
    Ack(Ack),
    Refusal(Refusal),
    /// Wire 1.2.
    ProbeRequest(ProbeRequest),
    /// Wire 1.4: the answer to a [`Renew`].
    Renewed(Renewed),
    Unknown(u8),
}

pub(crate) mod kind {
    pub const HELLO: u8 = 1;
    pub const BATCH: u8 = 2;
    pub const RENEW: u8 = 3;
    pub const WELCOME: u8 = 1;
    pub const ACK: u8 = 2;
    pub const REFUSAL: u8 = 3;
    pub const PROBE_REQUEST: u8 = 4;
    pub const RENEWED: u8 = 5;
}
