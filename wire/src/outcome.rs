//! The outcome taxonomy: every probe of (target, port, address family) ends in exactly one of
//! these. Names are the contract (JSON, API, alerts); the numeric codes are the compact wire form
//! and never change meaning once assigned.

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

macro_rules! coded_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident { $( $(#[$vmeta:meta])* $variant:ident = ($code:expr, $text:expr), )+ }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub enum $name { $( $(#[$vmeta])* $variant, )+ }

        impl $name {
            pub const ALL: &'static [$name] = &[ $( $name::$variant, )+ ];

            /// The stable name used in JSON, the API and alerts.
            pub fn as_str(self) -> &'static str {
                match self { $( $name::$variant => $text, )+ }
            }
            /// The stable compact code used on the wire.
            pub fn code(self) -> u8 {
                match self { $( $name::$variant => $code, )+ }
            }
            pub fn from_code(code: u8) -> Option<Self> {
                match code { $( $code => Some($name::$variant), )+ _ => None }
            }
            pub fn from_name(name: &str) -> Option<Self> {
                match name { $( $text => Some($name::$variant), )+ _ => None }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                Self::from_name(s).ok_or_else(|| {
                    let names: Vec<&str> = Self::ALL.iter().map(|v| v.as_str()).collect();
                    format!("unknown {} {:?} (expected one of: {})", stringify!($name).to_lowercase(), s, names.join(", "))
                })
            }
        }

        /// Human-readable formats (JSON) carry the name, compact ones (MessagePack) the code.
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                if s.is_human_readable() { s.serialize_str(self.as_str()) } else { s.serialize_u8(self.code()) }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> de::Visitor<'de> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        write!(f, "a {} code or name", stringify!($name))
                    }
                    fn visit_u64<E: de::Error>(self, v: u64) -> Result<$name, E> {
                        u8::try_from(v).ok().and_then($name::from_code)
                            .ok_or_else(|| E::custom(format!("unknown {} code {}", stringify!($name), v)))
                    }
                    fn visit_i64<E: de::Error>(self, v: i64) -> Result<$name, E> {
                        u64::try_from(v).map_err(|_| E::custom("negative code")).and_then(|v| self.visit_u64(v))
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$name, E> {
                        v.parse().map_err(E::custom)
                    }
                }
                d.deserialize_any(V)
            }
        }
    };
}

coded_enum! {
    /// What one probe found. See docs/design.md ("Outcomes") and docs/check.md for the meaning and typical cause of each.
    pub enum Outcome {
        /// Every step asked for succeeded.
        #[default]
        Ok = (0, "ok"),
        /// No answer to the SYN before our deadline: the silent drop of a provider block.
        Timeout = (1, "timeout"),
        /// RST to the SYN (ECONNREFUSED).
        Refused = (2, "refused"),
        /// ICMP unreachable / administratively prohibited (EHOSTUNREACH, ENETUNREACH).
        Unreachable = (3, "unreachable"),
        /// This host's own firewall stopped it: a refusal to send (EPERM, EACCES), or an ICMP
        /// error from one of this host's own addresses (a reject rule in its output chain).
        LocalDenied = (4, "local_denied"),
        /// The name did not resolve.
        DnsFailed = (5, "dns_failed"),
        /// The name has no address in this family; never counted as a failure.
        NoAddress = (6, "no_address"),
        /// The connection was reset after it was established.
        Reset = (7, "reset"),
        /// Connected, but the SMTP session got no reply at one of its steps — the greeting, EHLO
        /// or STARTTLS — before the deadline, or was closed mid-step; the result's `step` says
        /// which.
        NoBanner = (8, "no_banner"),
        /// The greeting was not 220, or the server answered a step with a refusal or with text
        /// that is not SMTP (`step` says which).
        BadBanner = (9, "bad_banner"),
        /// An EHLO reply arrived and did not offer STARTTLS where TLS was expected.
        StarttlsMissing = (10, "starttls_missing"),
        /// TLS handshake failed or the certificate is not valid for the host.
        TlsFailed = (11, "tls_failed"),
    }
}

impl Outcome {
    /// Whether this outcome counts against the path. `no_address` is a fact about the
    /// destination's DNS, not a failure of anything.
    pub fn is_failure(self) -> bool {
        !matches!(self, Outcome::Ok | Outcome::NoAddress)
    }

    /// Whether the TCP connection itself was never established.
    pub fn is_connect_failure(self) -> bool {
        matches!(
            self,
            Outcome::Timeout | Outcome::Refused | Outcome::Unreachable | Outcome::LocalDenied
        )
    }
}

/// What one probe says about its path: open, or blocked (any failure). The agent's evidence and
/// the collector's detector both read results this way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PortState {
    Open,
    Blocked,
}

impl PortState {
    pub fn of(outcome: Outcome) -> PortState {
        if outcome.is_failure() {
            PortState::Blocked
        } else {
            PortState::Open
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PortState::Open => "open",
            PortState::Blocked => "blocked",
        }
    }

    pub fn other(self) -> PortState {
        match self {
            PortState::Open => PortState::Blocked,
            PortState::Blocked => PortState::Open,
        }
    }
}

coded_enum! {
    /// The session step a probe ended in once connected: where the greeting, a command's reply
    /// or the TLS handshake failed. Kept beside the outcome so that, say, an EHLO left without a
    /// reply is never read as a stripped STARTTLS. New steps are appended with new codes.
    pub enum SessionStep {
        /// Waiting for the server's 220 greeting.
        #[default]
        Greeting = (0, "greeting"),
        /// EHLO sent, waiting for its reply.
        Ehlo = (1, "ehlo"),
        /// STARTTLS sent, waiting for its reply.
        Starttls = (2, "starttls"),
        /// The TLS handshake (after STARTTLS, on an implicit-TLS port, or on the 443 control).
        TlsHandshake = (3, "tls_handshake"),
        /// QUIT sent, waiting for its reply.
        Quit = (4, "quit"),
    }
}

coded_enum! {
    /// Address family of one probe. Families are probed separately, never raced.
    pub enum Family {
        #[default]
        Ipv4 = (4, "ipv4"),
        Ipv6 = (6, "ipv6"),
    }
}

coded_enum! {
    /// How far a probe goes.
    pub enum Level {
        /// TCP connect only.
        Connect = (0, "connect"),
        /// Read the 220 greeting, then QUIT.
        Banner = (1, "banner"),
        /// STARTTLS (25/587/2525), implicit TLS (465) or a plain TLS handshake (443).
        #[default]
        Tls = (2, "tls"),
    }
}

coded_enum! {
    /// Why a probe ran (wire 1.2). Confirmation and requested probes are the evidence on demand
    /// that settles a suspected change in seconds instead of waiting for the schedule.
    pub enum ProbeCause {
        /// The agent's own schedule.
        #[default]
        Scheduled = (0, "scheduled"),
        /// The agent re-probing a series whose outcome departed from its settled state.
        Confirmation = (1, "confirmation"),
        /// The collector asked for it (a [`crate::message::ProbeRequest`]).
        Requested = (2, "requested"),
    }
}

coded_enum! {
    /// Why a name did not resolve, kept beside `dns_failed`.
    pub enum DnsFailure {
        #[default]
        Other = (0, "other"),
        Nxdomain = (1, "nxdomain"),
        Servfail = (2, "servfail"),
        Timeout = (3, "timeout"),
        /// The nameserver answered REFUSED (wire 1.1).
        Refused = (4, "refused"),
    }
}

impl DnsFailure {
    /// The wire minor version that introduced this kind.
    pub fn since_minor(self) -> u16 {
        match self {
            DnsFailure::Refused => 1,
            _ => 0,
        }
    }

    /// This kind as a peer speaking `peer_minor` can decode it: a kind it does not know yet is
    /// sent as `other` (the detail still names it).
    pub fn for_peer(self, peer_minor: u16) -> Self {
        if self.since_minor() > peer_minor {
            DnsFailure::Other
        } else {
            self
        }
    }
}

coded_enum! {
    /// Whether the agent's wall clock was synchronised when a batch was made (the kernel's
    /// adjtimex status), so the collector knows which timestamps it should not trust.
    pub enum ClockQuality {
        #[default]
        Unknown = (0, "unknown"),
        Synchronised = (1, "synchronised"),
        Unsynchronised = (2, "unsynchronised"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_names_round_trip() {
        for o in Outcome::ALL {
            assert_eq!(Outcome::from_code(o.code()), Some(*o));
            assert_eq!(o.as_str().parse::<Outcome>().unwrap(), *o);
        }
        assert_eq!(Outcome::ALL.len(), 12);
        assert!(Outcome::from_code(200).is_none());
        assert!("bogus"
            .parse::<Outcome>()
            .unwrap_err()
            .contains("expected one of"));
    }

    #[test]
    fn session_steps_round_trip() {
        for step in SessionStep::ALL {
            assert_eq!(SessionStep::from_code(step.code()), Some(*step));
            assert_eq!(step.as_str().parse::<SessionStep>().unwrap(), *step);
        }
        assert_eq!(
            serde_json::to_string(&SessionStep::Ehlo).unwrap(),
            "\"ehlo\""
        );
    }

    #[test]
    fn json_uses_names_msgpack_uses_codes() {
        assert_eq!(
            serde_json::to_string(&Outcome::StarttlsMissing).unwrap(),
            "\"starttls_missing\""
        );
        assert_eq!(rmp_serde::to_vec(&Outcome::Timeout).unwrap(), vec![1u8]);
        let back: Outcome = rmp_serde::from_slice(&[11u8]).unwrap();
        assert_eq!(back, Outcome::TlsFailed);
        assert!(rmp_serde::from_slice::<Outcome>(&[99u8]).is_err());
    }

    #[test]
    fn no_address_is_not_a_failure() {
        assert!(!Outcome::NoAddress.is_failure());
        assert!(!Outcome::Ok.is_failure());
        assert!(Outcome::Timeout.is_failure());
    }
}
