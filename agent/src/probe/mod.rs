//! The probe engine: one (target, port, family) at one level in, exactly one classified
//! [`ProbeResult`] out. STUB — being built in issue 2.

use egresswatch_wire::{Family, Level, ProbeResult};
use std::sync::Arc;
use std::time::Duration;

/// What to probe.
#[derive(Debug, Clone)]
pub struct ProbeTarget {
    pub host: String,
    pub port: u16,
    pub family: Family,
    pub level: Level,
}

/// How to probe: shared by every probe of one check or one agent.
#[derive(Debug, Clone)]
pub struct ProbeOptions {
    /// Deadline of the whole probe (connect + SMTP + TLS), shorter than the kernel's SYN give-up.
    pub timeout: Duration,
    /// Deadline of name resolution, its own phase.
    pub dns_timeout: Duration,
    /// Source address to bind to, for multi-homed hosts.
    pub source_v4: Option<std::net::Ipv4Addr>,
    pub source_v6: Option<std::net::Ipv6Addr>,
    /// Interface to bind to (SO_BINDTODEVICE).
    pub interface: Option<String>,
    /// Trust roots for TLS verification.
    pub tls_roots: Arc<rustls::RootCertStore>,
    /// Name sent in EHLO.
    pub ehlo_name: String,
}

/// Probes once. Never panics, never exceeds `timeout` (+ `dns_timeout`) by more than a few ms.
/// `seq` is left 0: the caller numbers results.
pub async fn probe(target: &ProbeTarget, options: &ProbeOptions) -> ProbeResult {
    let _ = options;
    ProbeResult {
        target: target.host.clone(),
        port: target.port,
        family: target.family,
        level: target.level,
        ..Default::default()
    }
}
