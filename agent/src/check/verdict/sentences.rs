//! The verdict's sentence for each outcome that needs no further reading: the words after
//! "PORTS: ", as data, in the order a verdict lists them.

use crate::probe::PORT_HTTPS;
use egresswatch_wire::{Outcome, ProbeResult};

/// One outcome's sentence.
pub struct Sentence {
    pub outcome: Outcome,
    /// Whether the 443 control's own result counts too (only when 443 failing it says something
    /// beyond the path: a TLS failure on 443 is interception like anywhere else).
    pub includes_control: bool,
    /// The words after "PORTS: ".
    pub text: &'static str,
}

/// Outcomes read from themselves alone, in verdict order. `timeout`, `unreachable`,
/// `dns_failed`, `no_address` and `ok` need the control, the ICMP sender or the host, and are
/// read in [`super`].
pub const SENTENCES: &[Sentence] = &[
    Sentence {
        outcome: Outcome::LocalDenied,
        includes_control: false,
        text: "this host's own firewall refuses to send (EPERM/EACCES).",
    },
    Sentence {
        outcome: Outcome::Refused,
        includes_control: false,
        text: "the destination refuses (TCP reset): nothing listens there, or a reject rule in front of it.",
    },
    Sentence {
        outcome: Outcome::Reset,
        includes_control: false,
        text: "the connection was reset after it opened: a middlebox cutting SMTP sessions.",
    },
    Sentence {
        outcome: Outcome::NoBanner,
        includes_control: false,
        text: "connects but no SMTP greeting arrives: a middlebox may be swallowing the session, or the server is overloaded.",
    },
    Sentence {
        outcome: Outcome::BadBanner,
        includes_control: false,
        text: "the destination greets with a refusal: policy at the destination, not the network.",
    },
    Sentence {
        outcome: Outcome::StarttlsMissing,
        includes_control: false,
        text: "STARTTLS is not offered: stripped on the path (or the server does not offer it); mail would travel in clear.",
    },
    Sentence {
        outcome: Outcome::TlsFailed,
        includes_control: true,
        text: "TLS fails (certificate not valid for the host, or the handshake broke): TLS intercepted on the path, or a misconfigured server (use --ca-file for a private relay).",
    },
];

/// Whether `sentence` is the one that speaks for `result`.
pub fn applies(sentence: &Sentence, result: &ProbeResult) -> bool {
    // A reject by this host's own firewall with ICMP has its own reading, naming the rule's effect.
    let own_icmp_reject = result.outcome == Outcome::LocalDenied
        && result.icmp.as_ref().is_some_and(|i| i.from.is_some());
    result.outcome == sentence.outcome
        && (sentence.includes_control || result.port != PORT_HTTPS)
        && !own_icmp_reject
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_outcome_has_at_most_one_sentence() {
        for (i, s) in SENTENCES.iter().enumerate() {
            assert!(
                SENTENCES[i + 1..].iter().all(|t| t.outcome != s.outcome),
                "{} twice",
                s.outcome
            );
        }
    }
}
