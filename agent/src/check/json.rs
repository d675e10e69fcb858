//! `check --json`: one JSON array, an element per probe, the contract fields (docs/check.md) first.

use egresswatch_wire::{Family, Level, Outcome, ProbeResult};
use serde::Serialize;

/// One element of `check --json`: the contract fields first, then everything else we know.
#[derive(Debug, Serialize)]
pub struct JsonRow {
    pub host: String,
    pub port: u16,
    pub family: Family,
    pub address: Option<String>,
    pub outcome: Outcome,
    pub connect_ms: Option<f64>,
    pub detail: String,
    pub level: Level,
    pub dns_ms: Option<f64>,
    pub banner_ms: Option<f64>,
    pub tls_ms: Option<f64>,
    pub syn_retransmits: Option<u8>,
    pub errno: Option<i32>,
    pub dns_failure: Option<egresswatch_wire::DnsFailure>,
    pub icmp: Option<JsonIcmp>,
    pub tls: Option<JsonTls>,
    /// The session step a failure after connect happened in (`greeting`, `ehlo`, …).
    pub step: Option<egresswatch_wire::SessionStep>,
    /// With `--mx`: which domain's exchanger this row is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mx: Option<super::mx::JsonMx>,
}

#[derive(Debug, Serialize)]
pub struct JsonIcmp {
    pub from: Option<String>,
    pub icmp_type: u8,
    pub icmp_code: u8,
}

#[derive(Debug, Serialize)]
pub struct JsonTls {
    pub version: String,
    pub cipher: String,
    pub issuer: String,
}

/// The whole array, pretty-printed.
pub fn render(results: &[ProbeResult]) -> Result<String, serde_json::Error> {
    render_with_mx(results, None)
}

/// The whole array, each row with its `mx` field when `--mx` made the hosts.
pub fn render_with_mx(
    results: &[ProbeResult],
    mx: Option<&super::mx::MxTargets>,
) -> Result<String, serde_json::Error> {
    let rows: Vec<JsonRow> = results
        .iter()
        .map(|r| JsonRow {
            mx: mx.and_then(|m| m.annotation(r)),
            ..JsonRow::from(r)
        })
        .collect();
    serde_json::to_string_pretty(&rows)
}

fn ms(us: Option<u32>) -> Option<f64> {
    us.map(|us| (f64::from(us) / 1000.0 * 1000.0).round() / 1000.0)
}

impl From<&ProbeResult> for JsonRow {
    fn from(r: &ProbeResult) -> Self {
        JsonRow {
            host: r.target.clone(),
            port: r.port,
            family: r.family,
            address: r.address.map(|a| a.to_string()),
            outcome: r.outcome,
            connect_ms: ms(r.timings.connect_us),
            detail: r.detail.clone(),
            level: r.level,
            dns_ms: ms(r.timings.dns_us),
            banner_ms: ms(r.timings.banner_us),
            tls_ms: ms(r.timings.tls_us),
            syn_retransmits: r.syn_retransmits,
            errno: r.errno,
            dns_failure: r.dns_failure,
            icmp: r.icmp.as_ref().map(|i| JsonIcmp {
                from: i.from.map(|a| a.to_string()),
                icmp_type: i.icmp_type,
                icmp_code: i.icmp_code,
            }),
            tls: r.tls.as_ref().map(|t| JsonTls {
                version: t.version.clone(),
                cipher: t.cipher.clone(),
                issuer: t.issuer.clone(),
            }),
            step: r.step,
            mx: None,
        }
    }
}
