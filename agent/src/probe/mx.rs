//! Where a domain's mail goes (RFC 5321 §5.1): its MX records, lowest preference first; with no
//! MX records, the domain itself as an implicit MX of preference 0; with a null MX (RFC 7505,
//! `MX 0 .`), nowhere: the domain accepts no mail.
//!
//! The MX records come from the configured nameservers ([`super::nameserver`]); the exchangers'
//! addresses are then resolved like any other host, the system's way.

use super::nameserver::{MxRecord, Nameservers, Rcode, Reply};
use super::resolve::ResolveError;
use egresswatch_wire::DnsFailure;
use std::time::{Duration, Instant};

/// How one host came to be probed for a domain's mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchanger {
    /// The domain whose mail this host takes.
    pub domain: String,
    /// The host to probe: the MX record's exchange, or the domain itself when it has none.
    pub host: String,
    pub preference: u16,
    /// True when the domain has no MX records and mail goes to its own address.
    pub implicit: bool,
}

/// Where a domain's mail goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MailRoute {
    /// The exchangers, lowest preference first (one implicit one when there are no MX records).
    Exchangers(Vec<Exchanger>),
    /// The domain publishes a null MX: it accepts no mail.
    NullMx,
}

/// Looks up `domain`'s MX records within `deadline`.
pub async fn mail_route(domain: &str, deadline: Duration) -> Result<MailRoute, ResolveError> {
    let started = Instant::now();
    let nameservers = Nameservers::from_system(deadline).map_err(|why| ResolveError::Failed {
        kind: DnsFailure::Other,
        detail: format!("MX lookup of {domain}: {why}"),
    })?;
    let reply = tokio::time::timeout(deadline, nameservers.mx(domain))
        .await
        .unwrap_or(Reply::Silent);
    route_of(domain, reply, &nameservers.listed, started.elapsed())
}

/// The mail route read from the nameservers' reply to the MX question. Pure.
pub fn route_of(
    domain: &str,
    reply: Reply<Vec<MxRecord>>,
    servers: &str,
    elapsed: Duration,
) -> Result<MailRoute, ResolveError> {
    let failed = |kind, what: String| ResolveError::Failed {
        kind,
        detail: format!("MX lookup of {domain}: {what}"),
    };
    let said = |code: Rcode| format!("{servers} answered {}", code.name());
    let mut records = match reply {
        Reply::Answer(records) => records,
        // NOERROR without MX records: the implicit MX (RFC 5321 §5.1).
        Reply::Negative(Rcode::NoError) => {
            return Ok(MailRoute::Exchangers(vec![Exchanger {
                domain: domain.to_string(),
                host: domain.to_string(),
                preference: 0,
                implicit: true,
            }]))
        }
        Reply::Negative(Rcode::NxDomain) => {
            return Err(failed(
                DnsFailure::Nxdomain,
                format!("{}: no such domain", said(Rcode::NxDomain)),
            ))
        }
        Reply::Negative(Rcode::ServFail) => {
            return Err(failed(DnsFailure::Servfail, said(Rcode::ServFail)))
        }
        Reply::Negative(Rcode::Refused) => {
            return Err(failed(DnsFailure::Refused, said(Rcode::Refused)))
        }
        Reply::Negative(other) => return Err(failed(DnsFailure::Other, said(other))),
        Reply::Silent => {
            return Err(failed(
                DnsFailure::Timeout,
                format!("no reply from {servers} within {} ms", elapsed.as_millis()),
            ))
        }
        Reply::Unusable(why) => return Err(failed(DnsFailure::Other, format!("{servers}: {why}"))),
    };
    // RFC 7505: a null MX is the only MX of its domain; "." beside real exchangers is ignored.
    let (null, mut real): (Vec<MxRecord>, Vec<MxRecord>) =
        records.drain(..).partition(|r| r.exchange.is_empty());
    if real.is_empty() && !null.is_empty() {
        return Ok(MailRoute::NullMx);
    }
    // Lowest preference first; equal preferences in name order, so runs compare.
    real.sort_by(|a, b| {
        a.preference
            .cmp(&b.preference)
            .then(a.exchange.cmp(&b.exchange))
    });
    real.dedup_by(|a, b| a.exchange == b.exchange);
    Ok(MailRoute::Exchangers(
        real.into_iter()
            .map(|r| Exchanger {
                domain: domain.to_string(),
                host: r.exchange,
                preference: r.preference,
                implicit: false,
            })
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mx(preference: u16, exchange: &str) -> MxRecord {
        MxRecord {
            preference,
            exchange: exchange.into(),
        }
    }

    fn route(reply: Reply<Vec<MxRecord>>) -> Result<MailRoute, ResolveError> {
        route_of("lab.test", reply, "198.18.0.53", Duration::from_millis(1))
    }

    fn hosts(route: &MailRoute) -> Vec<(String, u16)> {
        match route {
            MailRoute::Exchangers(x) => x.iter().map(|e| (e.host.clone(), e.preference)).collect(),
            MailRoute::NullMx => vec![],
        }
    }

    #[test]
    fn exchangers_come_lowest_preference_first() {
        let r = route(Reply::Answer(vec![
            mx(20, "b.lab.test"),
            mx(10, "c.lab.test"),
            mx(20, "a.lab.test"),
            mx(10, "c.lab.test"),
        ]))
        .unwrap();
        assert_eq!(
            hosts(&r),
            [
                ("c.lab.test".to_string(), 10),
                ("a.lab.test".to_string(), 20),
                ("b.lab.test".to_string(), 20)
            ]
        );
    }

    #[test]
    fn no_mx_means_the_domain_itself() {
        let r = route(Reply::Negative(Rcode::NoError)).unwrap();
        assert_eq!(
            r,
            MailRoute::Exchangers(vec![Exchanger {
                domain: "lab.test".into(),
                host: "lab.test".into(),
                preference: 0,
                implicit: true
            }])
        );
    }

    #[test]
    fn a_null_mx_means_no_mail_unless_real_exchangers_stand_beside_it() {
        assert_eq!(
            route(Reply::Answer(vec![mx(0, "")])).unwrap(),
            MailRoute::NullMx
        );
        let mixed = route(Reply::Answer(vec![mx(0, ""), mx(10, "mx.lab.test")])).unwrap();
        assert_eq!(hosts(&mixed), [("mx.lab.test".to_string(), 10)]);
    }

    #[test]
    fn a_failed_mx_lookup_keeps_its_kind() {
        let kind = |reply| match route(reply) {
            Err(ResolveError::Failed { kind, .. }) => Some(kind),
            _ => None,
        };
        assert_eq!(
            kind(Reply::Negative(Rcode::NxDomain)),
            Some(DnsFailure::Nxdomain)
        );
        assert_eq!(
            kind(Reply::Negative(Rcode::ServFail)),
            Some(DnsFailure::Servfail)
        );
        assert_eq!(
            kind(Reply::Negative(Rcode::Refused)),
            Some(DnsFailure::Refused)
        );
        assert_eq!(kind(Reply::Silent), Some(DnsFailure::Timeout));
        assert_eq!(kind(Reply::Unusable("x".into())), Some(DnsFailure::Other));
    }
}
