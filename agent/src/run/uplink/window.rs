//! The agent's side of the session as sans-IO decisions, split from the quinn shell in
//! [`super`] as quinn-proto is from quinn. [`Window`] is the send window: which sequence number
//! the next batch starts at and whether there is room for it, how many spooled results it takes,
//! what an ack retires from the spool, and when a session that is ending has settled.
//! [`connection_error`] reads why a connection ended (a refusal or TLS alert means "rejected":
//! back off to the slowest pace). The shell reads the spool, moves the bytes and waits; every
//! rule is here and unit-tested without a socket.
//!
//! When to send is decided here too. News (a result departing from its series' settled state,
//! every confirmation and every answer to a request) goes at once; a result that is no news
//! lingers until it has waited [`Window::linger`] (or a full batch has gathered), so the steady
//! trickle of unchanged results rides in a few full batches and the collector's commit and the
//! series table are paid per batch, not per result. What was spooled before the session began is
//! a backlog and goes at once, and an ending session flushes everything.
//!
//! A collector that stops acking (its process gone without a word: QUIC would only notice at
//! its idle timeout) ends the session once nothing was acked for [`ACK_TIMEOUT`] while batches
//! are in flight, so the uplink moves on to another collector.

use egresswatch_wire::{close, CollectorMessage, ProbeRequest, ProbeResult};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Most batches sent and not yet acked.
pub const WINDOW: usize = 8;
/// Most results in one batch.
pub const BATCH_RESULTS: usize = 500;
/// Longest the window waits for an ack while batches are in flight before it calls the
/// collector gone: well above a collector's commit of a full window, well below QUIC's 30 s idle
/// timeout.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(15);

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
    /// The collector asks for a probe: for the schedule to judge and perhaps probe.
    ProbeRequest(ProbeRequest),
    /// The collector's answer to this agent's `Renew` (wire 1.4).
    Renewed(egresswatch_wire::Renewed),
    /// Nothing the window acts on (a newer collector's message, a stray welcome).
    Nothing,
}

/// The send window of one session.
#[derive(Debug)]
pub struct Window {
    next_to_send: u64,
    /// The last sequence number of each batch sent and not yet acked, oldest first.
    in_flight: VecDeque<u64>,
    /// How long a result that is no news may wait for company.
    pub linger: Duration,
    /// The newest result spooled, and the newest that is news or backlog (due at once).
    newest: u64,
    due_up_to: u64,
    /// Since when the oldest unsent result that is no news has waited.
    waiting_since: Option<Instant>,
    /// The session is ending: send everything.
    flushing: bool,
    /// Since when the window has waited for an ack with batches in flight (since the first was
    /// sent, or since the last ack).
    awaiting_ack_since: Option<Instant>,
}

impl Window {
    /// The window of a session the collector welcomed with everything up to `acked_seq` stored:
    /// sending resumes right after it (the spool is told to forget up to it, as by an ack).
    /// Everything spooled up to `newest_seq` before the session began is due at once.
    pub fn welcomed(acked_seq: u64, newest_seq: u64, linger: Duration) -> Window {
        Window {
            next_to_send: acked_seq + 1,
            in_flight: VecDeque::new(),
            linger,
            newest: newest_seq,
            due_up_to: newest_seq,
            waiting_since: None,
            flushing: false,
            awaiting_ack_since: None,
        }
    }

    /// The spool now holds results up to `newest_seq`, those up to `urgent_up_to` being news.
    pub fn on_spooled(&mut self, newest_seq: u64, urgent_up_to: u64, now: Instant) {
        if newest_seq > self.newest {
            self.newest = newest_seq;
            if self.waiting_since.is_none() {
                self.waiting_since = Some(now);
            }
        }
        self.due_up_to = self.due_up_to.max(urgent_up_to.min(self.newest));
    }

    /// The session ends: whatever is spooled is due now.
    pub fn flush(&mut self) {
        self.flushing = true;
    }

    /// Whether something unsent is due at `now`.
    pub fn due(&self, now: Instant) -> bool {
        if self.next_to_send > self.newest {
            return false;
        }
        let unsent = self.newest - self.next_to_send + 1;
        self.flushing
            || self.due_up_to >= self.next_to_send
            || unsent >= BATCH_RESULTS as u64
            || self
                .waiting_since
                .is_some_and(|since| now.saturating_duration_since(since) >= self.linger)
    }

    /// When lingering results become due, if any wait and the window has room to send them
    /// (a full window waits for an ack, never for a timer that has already passed).
    pub fn due_at(&self) -> Option<Instant> {
        if self.next_to_send > self.newest || self.in_flight.len() >= WINDOW {
            return None;
        }
        self.waiting_since.map(|since| since + self.linger)
    }

    /// Where the next batch starts, if the window has room for one and something is due.
    pub fn next_batch_from(&self, now: Instant) -> Option<u64> {
        (self.in_flight.len() < WINDOW && self.due(now)).then_some(self.next_to_send)
    }

    /// How many of the spooled `results` (read from [`Window::next_batch_from`]) go into the
    /// next batch: at most [`BATCH_RESULTS`], and no more than its offsets can time.
    pub fn batch_len(&self, results: &[ProbeResult]) -> usize {
        within_offset_span(results).min(BATCH_RESULTS)
    }

    /// A batch ending at `last_seq` was sent. Whatever is left unsent keeps its due time: what
    /// did not fit this batch is as due as it was.
    pub fn on_sent(&mut self, last_seq: u64, now: Instant) {
        self.in_flight.push_back(last_seq);
        self.awaiting_ack_since.get_or_insert(now);
        self.next_to_send = last_seq + 1;
        if self.next_to_send > self.newest {
            // The spool may hold more than this window was told (read while sending).
            self.newest = last_seq;
            self.waiting_since = None;
        }
    }

    /// The spool had nothing from where the next batch starts (all acked, or evicted): nothing
    /// is waiting any more.
    pub fn on_nothing_to_send(&mut self) {
        self.newest = self.newest.min(self.next_to_send.saturating_sub(1));
        self.waiting_since = None;
    }

    /// When the collector is to be called gone if no ack comes: [`ACK_TIMEOUT`] after the
    /// window began to wait for one; none while nothing is in flight.
    pub fn ack_overdue_at(&self) -> Option<Instant> {
        self.awaiting_ack_since.map(|since| since + ACK_TIMEOUT)
    }

    /// A message from the collector, heard at `now`, while the session runs.
    pub fn on_message(&mut self, message: CollectorMessage, now: Instant) -> Heard {
        match message {
            CollectorMessage::Ack(ack) => {
                self.in_flight.pop_front();
                self.awaiting_ack_since = (!self.in_flight.is_empty()).then_some(now);
                Heard::Retire {
                    up_to_seq: ack.up_to_seq,
                    discarded: (ack.discarded > 0).then_some((ack.discarded, ack.reason)),
                }
            }
            CollectorMessage::Refusal(r) => Heard::Rejected(r.reason),
            CollectorMessage::ProbeRequest(request) => Heard::ProbeRequest(request),
            CollectorMessage::Renewed(renewed) => Heard::Renewed(renewed),
            CollectorMessage::Welcome(_) | CollectorMessage::Unknown(_) => Heard::Nothing,
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

    const LINGER: Duration = Duration::from_secs(30);

    /// A window with a long backlog: everything is due.
    fn backlog(acked_seq: u64) -> Window {
        Window::welcomed(acked_seq, 10_000, LINGER)
    }

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
        assert_eq!(backlog(0).next_batch_from(Instant::now()), Some(1));
        let window = backlog(41);
        assert_eq!(window.next_batch_from(Instant::now()), Some(42));
        assert!(window.settled());
    }

    #[test]
    fn the_window_fills_to_its_size_and_an_ack_frees_one_place() {
        let mut window = backlog(0);
        for i in 0..WINDOW as u64 {
            let from = window.next_batch_from(Instant::now()).expect("room");
            assert_eq!(from, i * 10 + 1);
            window.on_sent(from + 9, Instant::now());
        }
        assert_eq!(
            window.next_batch_from(Instant::now()),
            None,
            "{WINDOW} in flight: full"
        );
        assert_eq!(window.due_at(), None, "a full window waits for an ack");
        assert_eq!(
            window.on_message(ack(10, 0, ""), Instant::now()),
            Heard::Retire {
                up_to_seq: 10,
                discarded: None
            }
        );
        assert_eq!(
            window.next_batch_from(Instant::now()),
            Some(WINDOW as u64 * 10 + 1),
            "the next batch follows the last one sent, not the ack"
        );
        assert!(!window.settled());
    }

    #[test]
    fn an_ack_retires_up_to_its_cumulative_mark_and_says_what_was_discarded() {
        let mut window = backlog(0);
        window.on_sent(5, Instant::now());
        window.on_sent(9, Instant::now());
        assert_eq!(
            window.on_message(ack(9, 4, "malformed batch"), Instant::now()),
            Heard::Retire {
                up_to_seq: 9,
                discarded: Some((4, "malformed batch".into()))
            }
        );
        assert!(!window.settled(), "one ack answers one batch");
        window.on_message(ack(9, 0, ""), Instant::now());
        assert!(window.settled());
    }

    #[test]
    fn a_refusal_rejects_and_other_messages_change_nothing() {
        let mut window = backlog(3);
        window.on_sent(7, Instant::now());
        let refusal = CollectorMessage::Refusal(Refusal {
            reason: "agent revoked".into(),
            retry_after_s: 0,
        });
        assert_eq!(
            window.on_message(refusal, Instant::now()),
            Heard::Rejected("agent revoked".into())
        );
        let welcome = CollectorMessage::Welcome(Welcome {
            wire_major: 1,
            wire_minor: 0,
            collector_version: "x".into(),
            agent_id: "a".into(),
            acked_seq: 99,
            ..Default::default()
        });
        assert_eq!(window.on_message(welcome, Instant::now()), Heard::Nothing);
        assert_eq!(
            window.on_message(CollectorMessage::Unknown(9), Instant::now()),
            Heard::Nothing
        );
        assert!(!window.settled());
        assert_eq!(window.next_batch_from(Instant::now()), Some(8));
    }

    #[test]
    fn settling_takes_acks_and_stops_at_anything_else() {
        let mut window = backlog(0);
        window.on_sent(2, Instant::now());
        window.on_sent(4, Instant::now());
        assert_eq!(window.on_settling(ack(2, 0, "")), Some(2));
        assert!(!window.settled());
        assert_eq!(window.on_settling(CollectorMessage::Unknown(7)), None);
        assert_eq!(window.on_settling(ack(4, 0, "")), Some(4));
        assert!(window.settled());
    }

    #[test]
    fn a_batch_takes_at_most_its_size_and_what_its_offsets_can_time() {
        let window = backlog(0);
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

    #[test]
    fn news_goes_at_once_and_the_rest_lingers_until_its_time() {
        let t0 = Instant::now();
        let mut window = Window::welcomed(4, 4, LINGER);
        assert_eq!(window.next_batch_from(t0), None, "nothing spooled");
        window.on_spooled(5, 0, t0);
        window.on_spooled(6, 0, t0 + Duration::from_secs(10));
        assert_eq!(window.next_batch_from(t0 + Duration::from_secs(29)), None);
        assert_eq!(
            window.due_at(),
            Some(t0 + LINGER),
            "the oldest sets the time"
        );
        assert_eq!(window.next_batch_from(t0 + LINGER), Some(5));
        window.on_sent(6, Instant::now());
        assert_eq!(window.due_at(), None);
        // News: due at once, and carries what lingered before it.
        window.on_spooled(7, 0, t0 + LINGER);
        window.on_spooled(8, 8, t0 + LINGER + Duration::from_secs(1));
        assert_eq!(
            window.next_batch_from(t0 + LINGER + Duration::from_secs(1)),
            Some(7)
        );
        window.on_sent(8, Instant::now());
        // After the news is sent, no news lingers again.
        window.on_spooled(9, 8, t0 + Duration::from_secs(40));
        assert_eq!(window.next_batch_from(t0 + Duration::from_secs(41)), None);
    }

    #[test]
    fn a_backlog_a_full_batch_and_a_flush_are_due_at_once() {
        let t0 = Instant::now();
        let window = Window::welcomed(10, 15, LINGER);
        assert_eq!(
            window.next_batch_from(t0),
            Some(11),
            "spooled before the session"
        );
        let mut window = Window::welcomed(0, 0, LINGER);
        window.on_spooled(BATCH_RESULTS as u64 - 1, 0, t0);
        assert_eq!(window.next_batch_from(t0), None);
        window.on_spooled(BATCH_RESULTS as u64, 0, t0);
        assert_eq!(
            window.next_batch_from(t0),
            Some(1),
            "a full batch waits no more"
        );
        let mut window = Window::welcomed(0, 0, LINGER);
        window.on_spooled(3, 0, t0);
        window.flush();
        assert_eq!(
            window.next_batch_from(t0),
            Some(1),
            "an ending session flushes"
        );
    }

    #[test]
    fn what_did_not_fit_stays_due_and_an_empty_spool_stops_waiting() {
        let t0 = Instant::now();
        let mut window = Window::welcomed(0, 0, LINGER);
        window.on_spooled(9, 9, t0);
        window.on_sent(4, Instant::now());
        assert_eq!(window.next_batch_from(t0), Some(5), "the rest of the news");
        let mut window = Window::welcomed(0, 0, LINGER);
        window.on_spooled(3, 0, t0);
        window.on_nothing_to_send();
        assert_eq!(window.next_batch_from(t0 + LINGER), None);
        assert_eq!(window.due_at(), None);
    }

    #[test]
    fn a_collector_that_stops_acking_is_overdue_after_the_ack_timeout() {
        let t0 = Instant::now();
        let mut window = backlog(0);
        assert_eq!(window.ack_overdue_at(), None, "nothing in flight");
        window.on_sent(10, t0);
        window.on_sent(20, t0 + Duration::from_secs(5));
        assert_eq!(
            window.ack_overdue_at(),
            Some(t0 + ACK_TIMEOUT),
            "from the first batch in flight"
        );
        // An ack is progress: the wait for the next one starts over.
        let t1 = t0 + Duration::from_secs(12);
        window.on_message(ack(10, 0, ""), t1);
        assert_eq!(window.ack_overdue_at(), Some(t1 + ACK_TIMEOUT));
        // A probe request is no ack.
        let request = ProbeRequest {
            request_id: 1,
            target: "mx.lab.test".into(),
            port: 25,
            family: egresswatch_wire::Family::Ipv4,
            deadline_ms: 5000,
        };
        window.on_message(
            CollectorMessage::ProbeRequest(request),
            t1 + Duration::from_secs(1),
        );
        assert_eq!(window.ack_overdue_at(), Some(t1 + ACK_TIMEOUT));
        window.on_message(ack(20, 0, ""), t1 + Duration::from_secs(2));
        assert_eq!(window.ack_overdue_at(), None, "all acked");
    }

    #[test]
    fn a_probe_request_is_handed_on() {
        let mut window = backlog(0);
        let request = ProbeRequest {
            request_id: 3,
            target: "mx.lab.test".into(),
            port: 587,
            family: egresswatch_wire::Family::Ipv4,
            deadline_ms: 5000,
        };
        assert_eq!(
            window.on_message(
                CollectorMessage::ProbeRequest(request.clone()),
                Instant::now()
            ),
            Heard::ProbeRequest(request)
        );
        assert!(window.settled());
    }
}
