//! Asking the configured nameservers (/etc/resolv.conf) directly, for what getaddrinfo cannot
//! tell: the DNS response code behind a failed lookup (glibc says EAI_AGAIN alike for a SERVFAIL,
//! a REFUSED and a silent server) and the MX records `check --mx` needs.
//!
//! Only the nameservers are asked here, never /etc/hosts: the system's own order (nsswitch) is
//! getaddrinfo's business and stays first. A resolver is built per question, from the file as it
//! is now, since questions come only after a failure or once per check.

use hickory_resolver::config::{ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::proto::ProtoErrorKind;
use hickory_resolver::{ResolveError, ResolveErrorKind, TokioResolver};
use std::net::IpAddr;
use std::time::Duration;

/// The system's resolver configuration.
const RESOLV_CONF: &str = "/etc/resolv.conf";

/// What the nameservers said to one question.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply<T> {
    /// A NOERROR answer with records of the type asked for.
    Answer(T),
    /// A response without records of that type, with its response code (NOERROR means the name
    /// exists without such records: "no answer", NODATA).
    Negative(Rcode),
    /// No nameserver replied before the deadline.
    Silent,
    /// The question could not be asked or the reply not read (no route, port closed, bad
    /// resolv.conf, malformed reply); the text says which.
    Unusable(String),
}

/// The DNS response codes a negative reply can carry (RFC 1035 §4.1.1, RFC 6895).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rcode {
    NoError,
    NxDomain,
    ServFail,
    Refused,
    /// Any other code, by number (FORMERR 1, NOTIMP 4, …).
    Other(u16),
}

impl Rcode {
    fn from_hickory(code: ResponseCode) -> Self {
        match code {
            ResponseCode::NoError => Rcode::NoError,
            ResponseCode::NXDomain => Rcode::NxDomain,
            ResponseCode::ServFail => Rcode::ServFail,
            ResponseCode::Refused => Rcode::Refused,
            other => Rcode::Other(u16::from(other)),
        }
    }

    /// The code's name as DNS tools print it.
    pub fn name(self) -> String {
        match self {
            Rcode::NoError => "NOERROR".into(),
            Rcode::NxDomain => "NXDOMAIN".into(),
            Rcode::ServFail => "SERVFAIL".into(),
            Rcode::Refused => "REFUSED".into(),
            Rcode::Other(code) => {
                let mnemonic = match code {
                    1 => "FORMERR",
                    4 => "NOTIMP",
                    6 => "YXDOMAIN",
                    7 => "YXRRSET",
                    8 => "NXRRSET",
                    9 => "NOTAUTH",
                    10 => "NOTZONE",
                    _ => "",
                };
                if mnemonic.is_empty() {
                    format!("rcode {code}")
                } else {
                    format!("{mnemonic} (rcode {code})")
                }
            }
        }
    }
}

/// One MX record: the exchanger's name (without the trailing dot; empty for the null MX ".")
/// and its preference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxRecord {
    pub preference: u16,
    pub exchange: String,
}

/// The configured nameservers, ready to be asked.
pub struct Nameservers {
    resolver: TokioResolver,
    /// Their addresses, for messages ("198.18.0.53").
    pub listed: String,
}

impl Nameservers {
    /// Reads /etc/resolv.conf now. Each question gets at most `deadline`.
    pub fn from_system(deadline: Duration) -> Result<Self, String> {
        let text = std::fs::read_to_string(RESOLV_CONF)
            .map_err(|e| format!("cannot read {RESOLV_CONF}: {e}"))?;
        Self::from_resolv_conf(&text, deadline)
    }

    /// From resolv.conf text. Like glibc, a file without nameservers means the local one.
    pub fn from_resolv_conf(text: &str, deadline: Duration) -> Result<Self, String> {
        let has_nameserver = text
            .lines()
            .any(|l| l.split_whitespace().next() == Some("nameserver"));
        let text = if has_nameserver {
            text.to_string()
        } else {
            format!("{text}\nnameserver 127.0.0.1\n")
        };
        let (config, options) = hickory_resolver::system_conf::parse_resolv_conf(&text)
            .map_err(|e| format!("{RESOLV_CONF}: {e}"))?;
        let listed = listed(&config);
        let mut builder =
            TokioResolver::builder_with_config(config, TokioConnectionProvider::default());
        *builder.options_mut() = options_within(options, deadline);
        Ok(Nameservers {
            resolver: builder.build(),
            listed,
        })
    }

    /// The addresses of `name` in one record type (A or AAAA).
    pub async fn addresses(&self, name: &str, record_type: RecordType) -> Reply<Vec<IpAddr>> {
        match self.resolver.lookup(name, record_type).await {
            Ok(lookup) => {
                let ips: Vec<IpAddr> = lookup.iter().filter_map(RData::ip_addr).collect();
                if ips.is_empty() {
                    Reply::Negative(Rcode::NoError)
                } else {
                    Reply::Answer(ips)
                }
            }
            Err(e) => reply_of_error(&e),
        }
    }

    /// The MX records of `domain`, as the nameservers gave them (unsorted).
    pub async fn mx(&self, domain: &str) -> Reply<Vec<MxRecord>> {
        match self.resolver.lookup(domain, RecordType::MX).await {
            Ok(lookup) => {
                let records: Vec<MxRecord> = lookup
                    .iter()
                    .filter_map(|rdata| match rdata {
                        RData::MX(mx) => Some(MxRecord {
                            preference: mx.preference(),
                            exchange: mx.exchange().to_ascii().trim_end_matches('.').to_string(),
                        }),
                        _ => None,
                    })
                    .collect();
                if records.is_empty() {
                    Reply::Negative(Rcode::NoError)
                } else {
                    Reply::Answer(records)
                }
            }
            Err(e) => reply_of_error(&e),
        }
    }
}

fn listed(config: &ResolverConfig) -> String {
    let mut addresses: Vec<String> = Vec::new();
    for server in config.name_servers() {
        let text = server.socket_addr.ip().to_string();
        if !addresses.contains(&text) {
            addresses.push(text);
        }
    }
    addresses.join(", ")
}

/// resolv.conf's options, fitted to our deadline: no hosts file (getaddrinfo read it already)
/// and no attempt that outlives the question's deadline.
fn options_within(mut options: ResolverOpts, deadline: Duration) -> ResolverOpts {
    options.use_hosts_file = ResolveHosts::Never;
    options.timeout = options
        .timeout
        .min(deadline)
        .max(Duration::from_millis(100));
    options.attempts = options.attempts.max(1);
    options
}

/// How a lookup error reads as a reply. A negative response keeps its code; only the resolver's
/// own deadline is `Silent`.
fn reply_of_error<T>(error: &ResolveError) -> Reply<T> {
    let proto = match error.kind() {
        ResolveErrorKind::Proto(proto) => proto,
        other => return Reply::Unusable(other.to_string()),
    };
    match proto.kind() {
        ProtoErrorKind::NoRecordsFound { response_code, .. } => {
            Reply::Negative(Rcode::from_hickory(*response_code))
        }
        ProtoErrorKind::Timeout => Reply::Silent,
        ProtoErrorKind::Io(io) => Reply::Unusable(io_text(io)),
        ProtoErrorKind::NoConnections => Reply::Unusable("no nameserver could be asked".into()),
        _ => Reply::Unusable(proto.to_string()),
    }
}

fn io_text(error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::ConnectionRefused => {
            "port 53 closed (connection refused, ICMP port unreachable)".into()
        }
        _ => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rcodes_are_named_like_dns_tools_name_them() {
        assert_eq!(Rcode::ServFail.name(), "SERVFAIL");
        assert_eq!(Rcode::Refused.name(), "REFUSED");
        assert_eq!(Rcode::Other(4).name(), "NOTIMP (rcode 4)");
        assert_eq!(Rcode::Other(23).name(), "rcode 23");
        assert_eq!(Rcode::from_hickory(ResponseCode::NXDomain), Rcode::NxDomain);
        assert_eq!(Rcode::from_hickory(ResponseCode::NotImp), Rcode::Other(4));
    }

    #[test]
    fn resolv_conf_is_read_like_glibc_reads_it() {
        let d = Duration::from_secs(2);
        let ns =
            Nameservers::from_resolv_conf("nameserver 198.18.0.53\nnameserver 2001:db8::53\n", d)
                .unwrap();
        assert_eq!(ns.listed, "198.18.0.53, 2001:db8::53");
        // No nameserver line: glibc asks the local one.
        let ns = Nameservers::from_resolv_conf("search lab.test\n", d).unwrap();
        assert_eq!(ns.listed, "127.0.0.1");
    }

    #[test]
    fn attempts_never_outlive_the_deadline() {
        let mut options = ResolverOpts::default();
        options.timeout = Duration::from_secs(5);
        options.attempts = 0;
        let fitted = options_within(options, Duration::from_secs(1));
        assert_eq!(fitted.timeout, Duration::from_secs(1));
        assert_eq!(fitted.attempts, 1);
        assert_eq!(fitted.use_hosts_file, ResolveHosts::Never);
    }
}
