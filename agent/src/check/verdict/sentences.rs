//! The verdict's sentence for each outcome that needs no further reading: the words after
//! "PORTS: ", as data, in the order a verdict lists them.

use crate::probe::PORT_HTTPS;
use egresswatch_wire::{Outcome, ProbeResult, SessionStep};

/// One outcome's sentence, at one session step or at any.
pub struct Sentence {
    pub outcome: Outcome,
    /// The step this sentence is for; `None` speaks for every step no other sentence names.
    pub step: Option<SessionStep>,
    /// Whether the 443 control's own result counts too (only when 443 failing it says something
    /// beyond the path: a TLS failure on 443 is interception like anywhere else).
    pub includes_control: bool,
    /// The words after "PORTS: ".
    pub text: &'static str,
}

const fn any_step(outcome: Outcome, text: &'static str) -> Sentence {
    Sentence {
        outcome,
        step: None,
        includes_control: false,
        text,
    }
}

const fn at(outcome: Outcome, step: SessionStep, text: &'static str) -> Sentence {
    Sentence {
        outcome,
        step: Some(step),
        includes_control: false,
        text,
    }
}

/// Outcomes read from themselves (and their step) alone, in verdict order. `timeout`,
/// `unreachable`, an ICMP-carrying `local_denied`, `dns_failed`, `no_address` and `ok` need the
/// control, the ICMP sender or the host, and are read in [`super`].
pub static SENTENCES: &[Sentence] = &[
    any_step(
        Outcome::LocalDenied,
        "this host's own firewall refuses to send (EPERM/EACCES).",
    ),
    any_step(
        Outcome::Refused,
        "the destination refuses (TCP reset): nothing listens there, or a reject rule in front of it.",
    ),
    any_step(
        Outcome::Reset,
        "the connection was reset after it opened: a middlebox cutting SMTP sessions.",
    ),
    any_step(
        Outcome::NoBanner,
        "connects but no SMTP greeting arrives: a middlebox may be swallowing the session, or the server is overloaded.",
    ),
    at(
        Outcome::NoBanner,
        SessionStep::Ehlo,
        "the greeting arrives but EHLO gets no reply: the session stalls after the greeting (a tarpit, a middlebox holding the session, or loss on the path); nothing says STARTTLS was stripped.",
    ),
    at(
        Outcome::NoBanner,
        SessionStep::Starttls,
        "EHLO offers STARTTLS but STARTTLS gets no reply: the session stalls at the switch to TLS (a middlebox holding it, or an overloaded server); the TLS handshake never started.",
    ),
    any_step(
        Outcome::BadBanner,
        "the destination greets with a refusal: policy at the destination, not the network.",
    ),
    at(
        Outcome::BadBanner,
        SessionStep::Ehlo,
        "the destination answers EHLO with a refusal or with text that is not SMTP: policy or a broken server at the destination, not the network.",
    ),
    at(
        Outcome::BadBanner,
        SessionStep::Starttls,
        "the destination answers STARTTLS with text that is not SMTP: a broken server or a middlebox rewriting the session.",
    ),
    any_step(
        Outcome::StarttlsMissing,
        "STARTTLS is not offered: stripped on the path (or the server does not offer it); mail would travel in clear.",
    ),
    Sentence {
        outcome: Outcome::TlsFailed,
        step: None,
        includes_control: true,
        text: "TLS fails (certificate not valid for the host, or the handshake broke): TLS intercepted on the path, or a misconfigured server (use --ca-file for a private relay).",
    },
];

/// The sentence that speaks for `result`, if one does: the one naming its step, else the
/// outcome's sentence for any step.
pub fn sentence_for(result: &ProbeResult) -> Option<&'static Sentence> {
    // A reject by this host's own firewall with ICMP has its own reading, naming the rule's effect.
    let own_icmp_reject = result.outcome == Outcome::LocalDenied
        && result.icmp.as_ref().is_some_and(|i| i.from.is_some());
    if own_icmp_reject {
        return None;
    }
    let of_outcome = || SENTENCES.iter().filter(|s| s.outcome == result.outcome);
    let sentence = of_outcome()
        .find(|s| s.step.is_some() && s.step == result.step)
        .or_else(|| of_outcome().find(|s| s.step.is_none()))?;
    (sentence.includes_control || result.port != PORT_HTTPS).then_some(sentence)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_outcome_and_step_has_at_most_one_sentence() {
        for (i, s) in SENTENCES.iter().enumerate() {
            assert!(
                SENTENCES[i + 1..]
                    .iter()
                    .all(|t| (t.outcome, t.step) != (s.outcome, s.step)),
                "{} at {:?} twice",
                s.outcome,
                s.step.map(|step| step.as_str())
            );
        }
        // Every outcome with a sentence at one step also has one for the others.
        for s in SENTENCES.iter().filter(|s| s.step.is_some()) {
            assert!(
                SENTENCES
                    .iter()
                    .any(|t| t.outcome == s.outcome && t.step.is_none()),
                "{}",
                s.outcome
            );
        }
    }

    #[test]
    fn the_step_picks_the_sentence() {
        let r = |outcome, step| ProbeResult {
            port: 25,
            outcome,
            step,
            ..Default::default()
        };
        let text = |outcome, step| sentence_for(&r(outcome, step)).map(|s| s.text);
        assert!(text(Outcome::NoBanner, Some(SessionStep::Ehlo))
            .unwrap()
            .contains("EHLO gets no reply"));
        assert!(text(Outcome::NoBanner, Some(SessionStep::Greeting))
            .unwrap()
            .contains("no SMTP greeting arrives"));
        // Results from agents before the step was recorded read as before.
        assert!(text(Outcome::NoBanner, None)
            .unwrap()
            .contains("no SMTP greeting arrives"));
        assert_eq!(text(Outcome::Timeout, None), None);
    }
}
