//! Certificate renewal over the authenticated session (wire 1.4), without a new token: the
//! collector's welcome says the validity of the certificate the agent connected with; when less
//! than a third of its life is left the agent sends a certificate request for its own key (the
//! key stays where it is), and installs the certificate the collector answers with by replacing
//! the certificate file atomically — the uplink reads the files at every connection, so the next
//! session uses it. A refusal (revoked, too early) is logged; the agent asks again in its next
//! session.

use crate::run::config::CollectorConfig;
use egresswatch_wire::message::renewal_at;
use egresswatch_wire::{Renew, Renewed};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tracing::{info, warn};

/// When to ask, as an instant on this host's monotonic clock; `None` when the collector said
/// nothing about the certificate (an older collector).
pub fn due_at(not_before: i64, not_after: i64) -> Option<Instant> {
    let at = renewal_at(not_before, not_after)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let wait = u64::try_from(at.saturating_sub(now)).unwrap_or(0);
    Some(Instant::now() + Duration::from_secs(wait))
}

/// A request for a certificate for this agent's key (the one in `config.key`).
pub fn request(config: &CollectorConfig, agent_id: &str) -> Result<Renew, String> {
    let pem = std::fs::read_to_string(&config.key)
        .map_err(|e| format!("reading {}: {e}", config.key.display()))?;
    let key = rcgen::KeyPair::from_pem(&pem)
        .map_err(|e| format!("the key in {}: {e}", config.key.display()))?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
        .map_err(|e| format!("certificate request: {e}"))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, agent_id);
    let csr = params
        .serialize_request(&key)
        .map_err(|e| format!("certificate request: {e}"))?;
    Ok(Renew {
        csr_der: csr.der().to_vec(),
    })
}

/// Installs a renewed certificate (true) or logs why there is none (false).
pub fn install(config: &CollectorConfig, renewed: Renewed) -> bool {
    if renewed.cert_pem.is_empty() {
        warn!(
            "the collector did not renew this agent's certificate: {}",
            renewed.refused
        );
        return false;
    }
    match crate::enroll::write_file(&config.cert, renewed.cert_pem.as_bytes(), 0o644) {
        Ok(()) => {
            info!(
                cert = %config.cert.display(),
                "certificate renewed: reconnecting with it"
            );
            true
        }
        Err(e) => {
            warn!("cannot install the renewed certificate: {e}");
            false
        }
    }
}
