//! The ingest's counters in `/metrics`: sessions, refusals (in total and by reason), batches,
//! results stored and dropped as duplicates, decode errors, agents whose spool started over and
//! the QUIC socket's granted receive buffer, and enrollment attempts by result. Registered by [`IngestCounters::register`] before the listener is bound, so the
//! certificate verifier counts from the first handshake.

use crate::metrics::{Labels, Metrics};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

/// Counters the QUIC ingest increments. Cheap to clone (shared atomics).
#[derive(Clone, Debug, Default)]
pub struct IngestCounters {
    /// Sessions accepted (hello welcomed).
    pub sessions: Counter,
    /// Sessions refused (bad certificate, version, labels...).
    pub refusals: Counter,
    /// Batches received.
    pub batches: Counter,
    /// Results newly stored.
    pub results: Counter,
    /// Results received again and dropped as duplicates.
    pub duplicates: Counter,
    /// Frames that failed to decode (the connection was closed).
    pub decode_errors: Counter,
    /// Welcomes that found an agent's spool started over below the stored high-water mark (its
    /// numbering continues above it).
    pub spool_restarts: Counter,
    /// Refusals by reason (`revoked`, `expired`, `bad_version`, ...); see [`IngestCounters::refused`].
    pub refusal_reasons: Family<Labels, Counter>,
    /// The QUIC socket's receive buffer as the kernel granted it (bytes).
    pub udp_receive_buffer_bytes: Gauge,
    /// Enrollment attempts by result (`issued`, `expired`, `used_up`, `revoked`, `unknown`,
    /// `malformed`, `name_taken`, `rate_limited`, `timeout`, `error`).
    pub enrollments: Family<Labels, Counter>,
    /// Certificate renewals asked for over a session, by result (`renewed`, `too_early`,
    /// `revoked`, `not_on_record`, `malformed`, `repeated`, `error`).
    pub renewals: Family<Labels, Counter>,
}

impl IngestCounters {
    /// New counters, registered in `metrics`.
    pub fn register(metrics: &Metrics) -> IngestCounters {
        IngestCounters {
            sessions: metrics.registered("egresswatch_ingest_sessions", "Agent sessions welcomed"),
            refusals: metrics.registered("egresswatch_ingest_refusals", "Agent sessions refused"),
            refusal_reasons: metrics.registered(
                "egresswatch_ingest_refusals_by_reason",
                "Agents and connections refused, by reason",
            ),
            udp_receive_buffer_bytes: metrics.registered(
                "egresswatch_ingest_udp_receive_buffer_bytes",
                "The QUIC socket's receive buffer as the kernel granted it",
            ),
            batches: metrics.registered("egresswatch_ingest_batches", "Result batches received"),
            results: metrics.registered("egresswatch_ingest_results", "Probe results newly stored"),
            duplicates: metrics.registered(
                "egresswatch_ingest_duplicates",
                "Probe results received again and dropped",
            ),
            decode_errors: metrics.registered(
                "egresswatch_ingest_decode_errors",
                "Frames that failed to decode",
            ),
            enrollments: metrics.registered(
                "egresswatch_enrollments",
                "Enrollment attempts with a join token, by result",
            ),
            renewals: metrics.registered(
                "egresswatch_renewals",
                "Agent certificate renewals asked for over a session, by result",
            ),
            spool_restarts: metrics.registered(
                "egresswatch_ingest_spool_restarts",
                "Agents welcomed whose spool started over below the stored high-water mark; their numbering continues above it",
            ),
        }
    }

    /// Counts one refused agent or connection, in the total and under its reason.
    pub fn refused(&self, reason: &str) {
        self.refusals.inc();
        self.refusal_reasons
            .get_or_create(&vec![("reason".to_string(), reason.to_string())])
            .inc();
    }
}
