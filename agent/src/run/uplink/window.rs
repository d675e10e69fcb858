//! The agent's side of the session as sans-IO decisions, split from the quinn shell in
//! [`super`] as quinn-proto is from quinn. [`Window`] is the send window: which sequence number
//! the next batch starts at and whether there is room for it, how many spooled results it takes,
//! what an ack retires from the spool, and when a session that is ending has settled.
//! [`connection_error`] reads why a connection ended (a refusal or TLS alert means "rejected":
//! back off to the slowest pace). The shell reads the spool, moves the bytes and waits; every
//! rule is here and unit-tested without a socket.

use egresswatch_wire::{close, CollectorMessage, ProbeResult};
use std::collections::VecDeque;

/// Most batches sent and not yet acked.
pub const WINDOW: usize = 8;
/// Most results in one batch.
pub const BATCH_RESULTS: usize = 500;

/// How a session ended.
#[derive(Debug)]
pub enum SessionError {
    /// The collector will not take this agent (refusal, TLS alert): back off to the maximum.
    Rejected(String),
    /// Anything else: network, timeout, collector restart.
    Failed(String),
}

/// What a message from the collector means for the window.
#[derive(Debug, PartialEq)]
pub enum Heard {
    /// The oldest batch in flight is answered: the spool may forget everything up to
    /// `up_to_seq`. `discarded` is what the collector could not use, and why.
    Retire {
        up_to_seq: u64,
        discarded: Option<(u32, String)>,
    },
    /// The collector refuses this agent: the session ends as [`SessionError::Rejected`].
    Rejected(String),
    /// Nothing the window acts on (a newer collector's message, a stray welcome).
    Nothing,
}

/// The send window of one session.
#[derive(Debug)]
pub struct Window {
    next_to_send: u64,
    /// The last sequence number of each batch sent and not yet acked, oldest first.
    in_flight: VecDeque<u64>,
}

impl Window {
    /// The window of a session the collector welcomed with everything up to `acked_seq` stored:
    /// sending resumes right after it (the spool is told to forget up to it, as by an ack).
    pub fn welcomed(acked_seq: u64) -> Window {
        Window {
            next_to_send: acked_seq + 1,
            in_flight: VecDeque::new(),
        }
    }

    /// Where the next batch starts, if the window has room for one.
    pub fn next_batch_from(&self) -> Option<u64> {
        (self.in_flight.len() < WINDOW).then_some(self.next_to_send)
    }

    /// How many of the spooled `results` (read from [`Window::next_batch_from`]) go into the
    /// next batch: at most [`BATCH_RESULTS`], and no more than its offsets can time.
    pub fn batch_len(&self, results: &[ProbeResult]) -> usize {
        within_offset_span(results).min(BATCH_RESULTS)
    }

    /// A batch ending at `last_seq` was sent.
    pub fn on_sent(&mut self, last_seq: u64) {
        self.in_flight.push_back(last_seq);
        self.next_to_send = last_seq + 1;
    }

    /// A message from the collector while the session runs.
    pub fn on_message(&mut self, message: CollectorMessage) -> Heard {
        match message {
            CollectorMessage::Ack(ack) => {
                self.in_flight.pop_front();
                Heard::Retire {
                    up_to_seq: ack.up_to_seq,
                    discarded: (ack.discarded > 0).then_some((ack.discarded, ack.reason)),
                }
            }
            CollectorMessage::Refusal(r) => Heard::Rejected(r.reason),
            // The agent does not yet say it answers probe requests, so none should come.
            CollectorMessage::Welcome(_)
            | CollectorMessage::ProbeRequest(_)
            | CollectorMessage::Unknown(_) => Heard::Nothing,
        }
    }

    /// A message from the collector while the session ends (briefly, before the stream is
    /// finished): an ack retires what it says; anything else stops the wait, the rest waits in
    /// the spool for the next session.
    pub fn on_settling(&mut self, message: CollectorMessage) -> Option<u64> {
        match message {
            CollectorMessage::Ack(ack) => {
                self.in_flight.pop_front();
                Some(ack.up_to_seq)
            }
            _ => None,
        }
    }

    /// Nothing is in flight any more.
    pub fn settled(&self) -> bool {
        self.in_flight.is_empty()
    }
}

/// Reads why a connection ended: a TLS alert or a refusal close means "rejected".
pub fn connection_error(e: &quinn::ConnectionError) -> SessionError {
    match e {
        quinn::ConnectionError::ConnectionClosed(close) => {
            let code = u64::from(close.error_code);
            if (0x100..=0x1ff).contains(&code) {
                SessionError::Rejected(format!("TLS alert {} ({close}): is this agent's certificate issued by the collector's CA, unexpired and not revoked?", code - 0x100))
            } else {
                SessionError::Failed(close.to_string())
            }
        }
        quinn::ConnectionError::ApplicationClosed(close)
            if close.error_code == quinn::VarInt::from_u32(close::REFUSED) =>
        {
            SessionError::Rejected(String::from_utf8_lossy(&close.reason).into_owned())
        }
        other => SessionError::Failed(other.to_string()),
    }
}

/// How many of `results` (from the first) fit one batch, whose results are timed as `u32`
/// milliseconds after the earliest: at least one, so a wall-clock step between two results
/// (an NTP step, a VM clock set from 1970) splits batches instead of failing every one.
pub fn within_offset_span(results: &[ProbeResult]) -> usize {
    let Some(first) = results.first() else {
        return 0;
    };
    let (mut low, mut high) = (first.at_unix_ms, first.at_unix_ms);
    for (i, r) in results.iter().enumerate() {
        low = low.min(r.at_unix_ms);
        high = high.max(r.at_unix_ms);
        if high.saturating_sub(low) > i64::from(u32::MAX) {
            return i;
        }
    }
    results.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use egresswatch_wire::{Ack, Batch, Refusal, Welcome};

    fn at(at_unix_ms: i64) -> ProbeResult {
        ProbeResult {
            at_unix_ms,
            ..Default::default()
        }
    }

    fn ack(up_to_seq: u64, discarded: u32, reason: &str) -> CollectorMessage {
        CollectorMessage::Ack(Ack {
            up_to_seq,
            accepted: 1,
            duplicates: 0,
            discarded,
            reason: reason.into(),
        })
    }

    #[test]
    fn a_clock_step_beyond_the_offsets_splits_the_batch() {
        let now = 1_790_000_000_000;
        let day = 86_400_000;
        let steady = [at(now), at(now - 3_600_000), at(now + day)];
        assert_eq!(
            within_offset_span(&steady),
            3,
            "an hour back, a day on: one batch"
        );
        let stepped = [at(1_000), at(2_000), at(now), at(now + 1)];
        assert_eq!(within_offset_span(&stepped), 2, "from 1970 to now: split");
        assert_eq!(within_offset_span(&stepped[2..]), 2);
        let back = [at(now), at(now - 60 * day)];
        assert_eq!(within_offset_span(&back), 1, "never less than one");
        assert_eq!(within_offset_span(&[]), 0);
        // What fits really packs.
        let mut seq = 1;
        let mut packable: Vec<ProbeResult> = [at(now), at(now - 49 * day), at(now + 1)]
            .into_iter()
            .map(|mut r| {
                r.seq = seq;
                seq += 1;
                r.target = "mx".into();
                r
            })
            .collect();
        packable.truncate(within_offset_span(&packable));
        assert!(Batch::pack(&packable, egresswatch_wire::ClockQuality::Unknown, 0).is_ok());
    }

    #[test]
    fn sending_resumes_after_what_the_welcome_says_is_stored() {
        assert_eq!(Window::welcomed(0).next_batch_from(), Some(1));
        let window = Window::welcomed(41);
        assert_eq!(window.next_batch_from(), Some(42));
        assert!(window.settled());
    }

    #[test]
    fn the_window_fills_to_its_size_and_an_ack_frees_one_place() {
        let mut window = Window::welcomed(0);
        for i in 0..WINDOW as u64 {
            let from = window.next_batch_from().expect("room");
            assert_eq!(from, i * 10 + 1);
            window.on_sent(from + 9);
        }
        assert_eq!(window.next_batch_from(), None, "{WINDOW} in flight: full");
        assert_eq!(
            window.on_message(ack(10, 0, "")),
            Heard::Retire {
                up_to_seq: 10,
                discarded: None
            }
        );
        assert_eq!(
            window.next_batch_from(),
            Some(WINDOW as u64 * 10 + 1),
            "the next batch follows the last one sent, not the ack"
        );
        assert!(!window.settled());
    }

    #[test]
    fn an_ack_retires_up_to_its_cumulative_mark_and_says_what_was_discarded() {
        let mut window = Window::welcomed(0);
        window.on_sent(5);
        window.on_sent(9);
        assert_eq!(
            window.on_message(ack(9, 4, "malformed batch")),
            Heard::Retire {
                up_to_seq: 9,
                discarded: Some((4, "malformed batch".into()))
            }
        );
        assert!(!window.settled(), "one ack answers one batch");
        window.on_message(ack(9, 0, ""));
        assert!(window.settled());
    }

    #[test]
    fn a_refusal_rejects_and_other_messages_change_nothing() {
        let mut window = Window::welcomed(3);
        window.on_sent(7);
        let refusal = CollectorMessage::Refusal(Refusal {
            reason: "agent revoked".into(),
            retry_after_s: 0,
        });
        assert_eq!(
            window.on_message(refusal),
            Heard::Rejected("agent revoked".into())
        );
        let welcome = CollectorMessage::Welcome(Welcome {
            wire_major: 1,
            wire_minor: 0,
            collector_version: "x".into(),
            agent_id: "a".into(),
            acked_seq: 99,
        });
        assert_eq!(window.on_message(welcome), Heard::Nothing);
        assert_eq!(
            window.on_message(CollectorMessage::Unknown(9)),
            Heard::Nothing
        );
        assert!(!window.settled());
        assert_eq!(window.next_batch_from(), Some(8));
    }

    #[test]
    fn settling_takes_acks_and_stops_at_anything_else() {
        let mut window = Window::welcomed(0);
        window.on_sent(2);
        window.on_sent(4);
        assert_eq!(window.on_settling(ack(2, 0, "")), Some(2));
        assert!(!window.settled());
        assert_eq!(window.on_settling(CollectorMessage::Unknown(7)), None);
        assert_eq!(window.on_settling(ack(4, 0, "")), Some(4));
        assert!(window.settled());
    }

    #[test]
    fn a_batch_takes_at_most_its_size_and_what_its_offsets_can_time() {
        let window = Window::welcomed(0);
        let now = 1_790_000_000_000;
        let many: Vec<_> = (0..BATCH_RESULTS as i64 + 20)
            .map(|i| at(now + i))
            .collect();
        assert_eq!(window.batch_len(&many), BATCH_RESULTS);
        let stepped = [at(1_000), at(now)];
        assert_eq!(window.batch_len(&stepped), 1);
        assert_eq!(window.batch_len(&[]), 0);
    }

    #[test]
    fn a_refusal_close_or_a_tls_alert_is_a_rejection_anything_else_a_failure() {
        let app = |code: u32, reason: &'static str| {
            quinn::ConnectionError::ApplicationClosed(quinn::ApplicationClose {
                error_code: quinn::VarInt::from_u32(code),
                reason: bytes::Bytes::from_static(reason.as_bytes()),
            })
        };
        assert!(matches!(
            connection_error(&app(close::REFUSED, "revoked")),
            SessionError::Rejected(r) if r == "revoked"
        ));
        for code in [close::NORMAL, close::PROTOCOL, close::SHUTDOWN] {
            assert!(matches!(
                connection_error(&app(code, "x")),
                SessionError::Failed(_)
            ));
        }
        let alert = quinn::ConnectionError::ConnectionClosed(quinn::ConnectionClose {
            error_code: quinn::TransportErrorCode::crypto(42),
            frame_type: None,
            reason: bytes::Bytes::from_static(b"bad certificate"),
        });
        assert!(matches!(
            connection_error(&alert),
            SessionError::Rejected(r) if r.starts_with("TLS alert 42 (")
        ));
        assert!(matches!(
            connection_error(&quinn::ConnectionError::TimedOut),
            SessionError::Failed(_)
        ));
    }
}
