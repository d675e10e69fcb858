//! The collector's side of the session protocol as a sans-IO state machine, split from its quinn
//! shell as quinn-proto is from quinn: [`Session`] is told what arrived (a decoded frame or the
//! decode error, what the store answered) and answers with a decision — register the agent and
//! welcome it, refuse it and why, store these results, send this ack, close with this code —
//! while [`super::run`] only moves bytes, calls the store and counts. Every rule of the session
//! (hello checks, the high-water mark, counting a drop note once, the ack's figures) is decided
//! here and unit-tested without a socket.

use crate::fanout::ConnectedAgent;
use crate::identity::AgentMeta;
use crate::limits::Limit;
use crate::store::InsertReport;
use egresswatch_wire::close;
use egresswatch_wire::message::numbering_continues_above;
use egresswatch_wire::version::{WIRE_MAJOR, WIRE_MINOR};
use egresswatch_wire::{
    Ack, AgentMessage, Batch, ClockQuality, Hello, ProbeResult, Welcome, WireError,
};

/// How a session ends; [`End::close_code`] is what its connection closes with.
#[derive(Debug, Clone, PartialEq)]
pub enum End {
    /// The agent finished its stream.
    Clean,
    /// We refused it and told it why; `kind` names the reason in `/metrics`.
    Refused { kind: &'static str, reason: String },
    /// Its certificate was revoked while it was connected.
    Revoked,
    /// It broke the protocol.
    Protocol(String),
    /// It went over a limit that ends the session (counted when it happened).
    OverLimit(String),
    /// The connection went away under us (idle timeout, agent gone, shutdown).
    Transport(String),
    /// We could not store: close without acking, the agent resends later.
    Unavailable(String),
}

impl End {
    /// The wire's close code for this end; `None` when the connection is already gone.
    pub fn close_code(&self) -> Option<u32> {
        match self {
            End::Clean => Some(close::NORMAL),
            End::Refused { .. } | End::Revoked => Some(close::REFUSED),
            End::Protocol(_) | End::OverLimit(_) => Some(close::PROTOCOL),
            End::Unavailable(_) => Some(close::SHUTDOWN),
            End::Transport(_) => None,
        }
    }
}

/// A limit the agent went over: the shell counts it in `/metrics` (`count` hits) and logs
/// `message` at the limits' pace, before it acts on the decision that carries it.
#[derive(Debug, Clone, PartialEq)]
pub struct Exceeded {
    pub limit: Limit,
    pub count: u64,
    pub message: String,
}

/// A session ending on the agent's fault.
#[derive(Debug, Clone, PartialEq)]
pub struct Closing {
    pub end: End,
    /// The limit it went over, if that is why.
    pub exceeded: Option<Exceeded>,
    /// A frame that failed to decode although the end is not [`End::Protocol`] (which counts
    /// itself): an oversized frame, counted as a decode error as `/metrics` always did.
    pub decode_error: bool,
}

impl Closing {
    fn protocol(reason: String) -> Closing {
        Closing {
            end: End::Protocol(reason),
            exceeded: None,
            decode_error: false,
        }
    }
}

/// A refusal to send to the agent before the session ends as [`End::Refused`].
#[derive(Debug, Clone, PartialEq)]
pub struct Refusing {
    /// The reason's name in `/metrics` (`refused{reason=…}`).
    pub kind: &'static str,
    /// What the agent is told.
    pub reason: String,
    pub exceeded: Option<Exceeded>,
}

impl Refusing {
    /// The session's end once the refusal is sent.
    pub fn end(&self) -> End {
        End::Refused {
            kind: self.kind,
            reason: self.reason.clone(),
        }
    }
}

/// The decision on the first frame of a session.
#[derive(Debug, Clone, PartialEq)]
pub enum Opening {
    /// A valid hello: register the agent with the store, then [`Session::on_registered`] with
    /// the high-water mark the store has for it. `status` is the agent's own trouble, to log;
    /// `reachable` is what the fan-out needs to know of it (what it probes, whether it takes
    /// probe requests).
    Register {
        agent: AgentMeta,
        status: String,
        reachable: ConnectedAgent,
    },
    /// Send this refusal and end.
    Refuse(Refusing),
    /// End without an answer.
    Close(Closing),
}

/// Where a batch stands while the store works on it; hand it back to [`Session::on_stored`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InStore {
    pub first_seq: u64,
    pub dropped_before: u64,
    /// Whether the agent's clock can be trusted for these results' times.
    pub clock_trusted: bool,
    /// The agent's clock when it sent the batch (wire 1.3; 0 when not said).
    pub sent_unix_ms: i64,
}

impl InStore {
    /// How its results are timed, for the store.
    pub fn clock(&self) -> crate::clock::BatchClock {
        crate::clock::BatchClock {
            trusted: self.clock_trusted,
            sent_unix_ms: self.sent_unix_ms,
        }
    }
}

/// The decision on a frame of an open session.
#[derive(Debug)]
pub enum Next {
    /// Store `results` (once the agent's rate allows `count` more), then [`Session::on_stored`].
    Store {
        count: u32,
        results: Vec<ProbeResult>,
        batch: InStore,
    },
    /// The batch arrived whole but cannot be used: nothing is stored, send `ack` saying so
    /// (after the agent's rate allows `count` more). Counted as a decode error.
    Discard {
        count: u32,
        ack: Ack,
        error: WireError,
    },
    /// A newer agent's message of a kind we do not know: skip it, the session goes on.
    Ignore { kind: u8 },
    /// The agent asks for a new certificate (wire 1.4): the shell has the CA decide, and
    /// answers with `Renewed`; the session goes on.
    Renew { csr_der: Vec<u8> },
    /// A renewal request over the session's allowance: answer `Renewed` with this refusal
    /// without asking the CA; the session goes on.
    RenewRefused { reason: &'static str },
    /// End the session.
    Close(Closing),
}

/// What to answer once the store has a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub ack: Ack,
    /// The agent's spool dropped results before this batch and nobody has noted it yet.
    pub spool_drops: Option<Exceeded>,
}

#[derive(Debug)]
enum State {
    AwaitingHello,
    Registering(AgentMeta),
    Open { agent: AgentMeta, high_water: u64 },
}

/// An agent whose spool started over below what the store holds for its certificate: its
/// numbering continues above `high_water` (the agent renumbers what waits in its spool, see
/// [`numbering_continues_above`]), so nothing it measured is taken as already stored.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StartedOver {
    /// Where the agent's spool stood: the number it would have written next.
    pub spool_next_seq: u64,
    /// Whether no collector had welcomed that spool before.
    pub spool_new: bool,
    pub high_water: u64,
}

/// One agent's session, from its first frame to its end.
#[derive(Debug)]
pub struct Session {
    agent_id: String,
    max_batch_results: usize,
    state: State,
    /// What the hello said of the agent's spool: (next seq, new).
    spool_numbering: (u64, bool),
    started_over: Option<StartedOver>,
    /// Renewal requests this session made (one is answered; see [`Next::Renew`]).
    renewals_asked: u32,
}

/// What a second renewal request in one session is told: the agent asks once per session, so
/// more is a misbehaving agent, and each costs the CA a signature check and a file lock.
pub const ONE_RENEWAL_PER_SESSION: &str = "one renewal request per session; reconnect to ask again";

impl Session {
    /// A session of the agent whose certificate names it `agent_id`.
    pub fn new(agent_id: &str, max_batch_results: usize) -> Session {
        Session {
            agent_id: agent_id.to_string(),
            max_batch_results,
            state: State::AwaitingHello,
            spool_numbering: (0, false),
            started_over: None,
            renewals_asked: 0,
        }
    }

    /// Whether the welcome found the agent's spool started over below the store's high-water
    /// mark (decided by [`Session::on_registered`]); to count and log once per such welcome.
    pub fn started_over(&self) -> Option<StartedOver> {
        self.started_over
    }

    /// The first frame as it decoded, or why it did not.
    pub fn on_first_frame(&mut self, frame: Result<AgentMessage, WireError>) -> Opening {
        match frame {
            Ok(AgentMessage::Hello(hello)) => self.on_hello(&hello),
            Ok(other) => Opening::Close(Closing::protocol(format!(
                "expected a hello, got {}",
                kind_name(&other)
            ))),
            Err(WireError::VersionMismatch { theirs, .. }) => {
                Opening::Refuse(unsupported_version(theirs))
            }
            Err(e) => Opening::Close(self.on_bad_frame(e)),
        }
    }

    /// A hello: refused for a version we do not speak, for being over the hello's caps, or for
    /// invalid labels; otherwise the agent is registered.
    pub fn on_hello(&mut self, hello: &Hello) -> Opening {
        if hello.wire_major != WIRE_MAJOR {
            return Opening::Refuse(unsupported_version(hello.wire_major));
        }
        if let Err(e) = hello.check_bounds() {
            let reason = e.to_string();
            return Opening::Refuse(Refusing {
                kind: "bad_hello",
                exceeded: Some(self.exceeded(Limit::Hello, &reason)),
                reason,
            });
        }
        let labels = match hello.labels.clone().validated() {
            Ok(labels) => labels,
            Err(e) => {
                let reason = format!("invalid labels: {e}");
                return Opening::Refuse(Refusing {
                    kind: "bad_labels",
                    exceeded: Some(self.exceeded(Limit::Labels, &reason)),
                    reason,
                });
            }
        };
        let agent = AgentMeta {
            agent_id: self.agent_id.clone(),
            labels,
            agent_version: hello.agent_version.clone(),
        };
        self.state = State::Registering(agent.clone());
        self.spool_numbering = (hello.spool_next_seq, hello.spool_new);
        Opening::Register {
            reachable: ConnectedAgent::from_hello(&agent, hello),
            agent,
            status: hello.status.clone(),
        }
    }

    /// The store registered the agent and already holds everything up to `high_water`: the
    /// welcome to send, which tells the agent it may forget those.
    pub fn on_registered(&mut self, high_water: u64) -> Welcome {
        let agent = match std::mem::replace(&mut self.state, State::AwaitingHello) {
            State::Registering(agent) | State::Open { agent, .. } => agent,
            State::AwaitingHello => AgentMeta {
                agent_id: self.agent_id.clone(),
                labels: Default::default(),
                agent_version: String::new(),
            },
        };
        self.state = State::Open { agent, high_water };
        let (spool_next_seq, spool_new) = self.spool_numbering;
        self.started_over = numbering_continues_above(spool_next_seq, spool_new, high_water)
            .then_some(StartedOver {
                spool_next_seq,
                spool_new,
                high_water,
            });
        Welcome {
            wire_major: WIRE_MAJOR,
            wire_minor: WIRE_MINOR,
            collector_version: env!("CARGO_PKG_VERSION").to_string(),
            agent_id: self.agent_id.clone(),
            acked_seq: high_water,
            // The certificate's validity is the shell's to fill in (it read the certificate).
            ..Welcome::default()
        }
    }

    /// Highest sequence number stored for this agent, as far as this session knows.
    pub fn high_water(&self) -> u64 {
        match &self.state {
            State::Open { high_water, .. } => *high_water,
            _ => 0,
        }
    }

    /// A frame after the welcome, as it decoded, or why it did not.
    pub fn on_frame(&mut self, frame: Result<AgentMessage, WireError>) -> Next {
        match frame {
            Ok(AgentMessage::Batch(batch)) => self.on_batch(batch),
            Ok(AgentMessage::Hello(_)) => Next::Close(Closing::protocol(
                "a second hello on the same session".into(),
            )),
            Ok(AgentMessage::Unknown(kind)) => Next::Ignore { kind },
            Ok(AgentMessage::Renew(renew)) => {
                self.renewals_asked = self.renewals_asked.saturating_add(1);
                if self.renewals_asked > 1 {
                    Next::RenewRefused {
                        reason: ONE_RENEWAL_PER_SESSION,
                    }
                } else {
                    Next::Renew {
                        csr_der: renew.csr_der,
                    }
                }
            }
            Err(e) => Next::Close(self.on_bad_frame(e)),
        }
    }

    /// A batch: over the results cap it ends the session with nothing stored; unusable it is
    /// discarded and the ack says so; otherwise its results go to the store.
    pub fn on_batch(&mut self, batch: Batch) -> Next {
        let count = batch.results.len() as u32;
        if batch.results.len() > self.max_batch_results {
            let reason = format!(
                "a batch of {count} results is over max_batch_results ({})",
                self.max_batch_results
            );
            return Next::Close(Closing {
                exceeded: Some(self.exceeded(Limit::BatchResults, &reason)),
                end: End::OverLimit(reason),
                decode_error: false,
            });
        }
        match batch.unpack() {
            Ok(results) => Next::Store {
                count,
                results,
                batch: InStore {
                    first_seq: batch.first_seq,
                    dropped_before: batch.dropped_before,
                    clock_trusted: batch.clock != ClockQuality::Unsynchronised,
                    sent_unix_ms: batch.sent_unix_ms,
                },
            },
            // Accepted off the wire but unusable: said so in the ack, never a silent success.
            Err(error) => Next::Discard {
                count,
                ack: Ack {
                    up_to_seq: self.high_water(),
                    accepted: 0,
                    duplicates: 0,
                    discarded: count,
                    reason: error.to_string(),
                },
                error,
            },
        }
    }

    /// The store took a batch's results: the ack to send, and the agent's spool drops if this
    /// is the first time they are heard of.
    pub fn on_stored(&mut self, batch: InStore, report: &InsertReport) -> Stored {
        // A batch resent after a lost ack carries the same drop note: count a note once, with
        // the batch that first stored results past it.
        let drops_are_news = batch.first_seq > self.high_water();
        if let State::Open { high_water, .. } = &mut self.state {
            *high_water = report.high_water;
        }
        let (reason, spool_drops) = if batch.dropped_before > 0 && drops_are_news {
            let noted = Exceeded {
                limit: Limit::AgentSpool,
                count: batch.dropped_before,
                message: format!(
                    "agent {}'s spool dropped {} results (full, unwritable or unreadable)",
                    self.agent_id, batch.dropped_before
                ),
            };
            let reason = format!(
                "noted: {} results dropped by the agent's spool before seq {}",
                batch.dropped_before, batch.first_seq
            );
            (reason, Some(noted))
        } else if batch.dropped_before > 0 {
            let reason = format!(
                "already noted: {} results dropped by the agent's spool before seq {}",
                batch.dropped_before, batch.first_seq
            );
            (reason, None)
        } else {
            (String::new(), None)
        };
        Stored {
            ack: Ack {
                up_to_seq: report.high_water,
                accepted: report.accepted,
                duplicates: report.duplicates,
                discarded: 0,
                reason,
            },
            spool_drops,
        }
    }

    /// A frame that did not decode (after the first: a version mismatch there is a refusal).
    fn on_bad_frame(&self, e: WireError) -> Closing {
        match e {
            e @ WireError::FrameTooLarge { .. } => {
                let reason = e.to_string();
                Closing {
                    exceeded: Some(Exceeded {
                        limit: Limit::FrameBytes,
                        count: 1,
                        message: reason.clone(),
                    }),
                    end: End::OverLimit(reason),
                    decode_error: true,
                }
            }
            e => Closing::protocol(e.to_string()),
        }
    }

    fn exceeded(&self, limit: Limit, reason: &str) -> Exceeded {
        Exceeded {
            limit,
            count: 1,
            message: format!("agent {}: {reason}", self.agent_id),
        }
    }
}

fn unsupported_version(theirs: u8) -> Refusing {
    Refusing {
        kind: "bad_version",
        reason: format!(
            "wire major version {theirs} is not supported; this collector speaks {WIRE_MAJOR}: upgrade the agent or the collector"
        ),
        exceeded: None,
    }
}

fn kind_name(message: &AgentMessage) -> &'static str {
    match message {
        AgentMessage::Hello(_) => "hello",
        AgentMessage::Batch(_) => "batch",
        AgentMessage::Renew(_) => "renew",
        AgentMessage::Unknown(_) => "an unknown message",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use egresswatch_wire::limits::{MAX_HELLO_TARGETS, MAX_LABEL_BYTES};
    use egresswatch_wire::{Family, Labels, Level, Outcome, TargetSpec};

    fn labels() -> Labels {
        Labels {
            provider: "aws".into(),
            account: "acct".into(),
            region: "eu-west-1".into(),
            instance: "i-1".into(),
        }
    }

    fn hello() -> Hello {
        Hello {
            wire_major: WIRE_MAJOR,
            wire_minor: WIRE_MINOR,
            agent_version: "1.2.3".into(),
            labels: labels(),
            targets: Vec::new(),
            clock: ClockQuality::Synchronised,
            status: String::new(),
            accepts_probe_requests: false,
            spool_next_seq: 0,
            spool_new: false,
        }
    }

    fn result(seq: u64) -> ProbeResult {
        ProbeResult {
            seq,
            at_unix_ms: 1_790_000_000_000 + seq as i64,
            target: "mx.lab.test".into(),
            port: 25,
            family: Family::Ipv4,
            level: Level::Connect,
            outcome: Outcome::Ok,
            ..Default::default()
        }
    }

    fn batch(seqs: std::ops::RangeInclusive<u64>, dropped_before: u64) -> Batch {
        let results: Vec<_> = seqs.map(result).collect();
        Batch::pack(&results, ClockQuality::Synchronised, dropped_before).expect("packs")
    }

    /// A session welcomed with `high_water` already stored.
    fn open(high_water: u64) -> Session {
        let mut session = Session::new("agent-7", 4096);
        assert!(matches!(
            session.on_first_frame(Ok(AgentMessage::Hello(hello()))),
            Opening::Register { .. }
        ));
        let welcome = session.on_registered(high_water);
        assert_eq!(welcome.acked_seq, high_water);
        session
    }

    fn refusal(opening: Opening) -> Refusing {
        match opening {
            Opening::Refuse(r) => r,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    fn stored_in(next: Next) -> (u32, Vec<ProbeResult>, InStore) {
        match next {
            Next::Store {
                count,
                results,
                batch,
            } => (count, results, batch),
            other => panic!("expected results to store, got {other:?}"),
        }
    }

    #[test]
    fn a_spool_that_started_over_below_the_mark_is_told_once_per_welcome() {
        let welcome_with = |next: u64, new: bool, high_water: u64| {
            let mut session = Session::new("agent-7", 4096);
            let mut h = hello();
            h.spool_next_seq = next;
            h.spool_new = new;
            assert!(matches!(
                session.on_first_frame(Ok(AgentMessage::Hello(h))),
                Opening::Register { .. }
            ));
            let welcome = session.on_registered(high_water);
            assert_eq!(welcome.acked_seq, high_water, "the mark is told as it is");
            session.started_over()
        };
        assert_eq!(
            welcome_with(64, true, 2524),
            Some(StartedOver {
                spool_next_seq: 64,
                spool_new: true,
                high_water: 2524
            })
        );
        assert!(
            welcome_with(10, false, 2524).is_some(),
            "an old spool behind"
        );
        assert_eq!(welcome_with(2525, false, 2524), None, "the steady state");
        assert_eq!(welcome_with(1, true, 0), None, "a brand new agent");
        assert_eq!(
            welcome_with(0, false, 2524),
            None,
            "an older agent says nothing"
        );
    }

    #[test]
    fn a_valid_hello_registers_the_agent_under_its_certificate_name() {
        let mut session = Session::new("agent-7", 4096);
        let mut h = hello();
        h.status = "spool: disk full".into();
        h.labels.provider = "  aws ".into();
        match session.on_first_frame(Ok(AgentMessage::Hello(h))) {
            Opening::Register { agent, status, .. } => {
                assert_eq!(agent.agent_id, "agent-7");
                assert_eq!(agent.agent_version, "1.2.3");
                assert_eq!(agent.labels, labels().validated().expect("valid"));
                assert_eq!(status, "spool: disk full");
            }
            other => panic!("expected a registration, got {other:?}"),
        }
        let welcome = session.on_registered(41);
        assert_eq!(welcome.agent_id, "agent-7");
        assert_eq!(welcome.acked_seq, 41);
        assert_eq!(welcome.wire_major, WIRE_MAJOR);
        assert_eq!(session.high_water(), 41);
    }

    #[test]
    fn the_hello_says_what_the_fan_out_may_ask_of_the_agent() {
        let mut h = hello();
        h.labels.provider = " AWS ".into();
        h.wire_minor = 1;
        h.targets = vec![TargetSpec {
            host: "mx.lab.test".into(),
            ports: vec![25, 587],
            level: Level::Connect,
            interval_s: 60,
        }];
        let reachable =
            match Session::new("agent-7", 4096).on_first_frame(Ok(AgentMessage::Hello(h))) {
                Opening::Register { reachable, .. } => reachable,
                other => panic!("expected a registration, got {other:?}"),
            };
        assert_eq!(reachable.agent_id, "agent-7");
        assert_eq!(
            (reachable.provider.as_str(), reachable.account.as_str()),
            ("aws", "acct")
        );
        assert_eq!(
            (reachable.wire_minor, reachable.accepts_probe_requests),
            (1, false)
        );
        assert!(reachable.probes("mx.lab.test", 587));
        assert!(!reachable.probes("mx.lab.test", 465));
    }

    #[test]
    fn a_hello_of_another_major_version_is_refused_either_way_it_arrives() {
        let ours = WIRE_MAJOR;
        let theirs = ours.wrapping_add(1);
        let want = format!(
            "wire major version {theirs} is not supported; this collector speaks {ours}: upgrade the agent or the collector"
        );
        // The envelope's major (the decoder stops there) …
        let envelope = refusal(
            Session::new("a", 10).on_first_frame(Err(WireError::VersionMismatch { theirs, ours })),
        );
        assert_eq!(envelope.kind, "bad_version");
        assert_eq!(envelope.reason, want);
        assert_eq!(envelope.exceeded, None);
        // … or the hello's own.
        let mut h = hello();
        h.wire_major = theirs;
        let field = refusal(Session::new("a", 10).on_first_frame(Ok(AgentMessage::Hello(h))));
        assert_eq!(field, envelope);
        assert_eq!(
            field.end(),
            End::Refused {
                kind: "bad_version",
                reason: want
            }
        );
        assert_eq!(field.end().close_code(), Some(close::REFUSED));
    }

    #[test]
    fn a_hello_over_its_caps_is_refused_and_counted() {
        let mut h = hello();
        h.targets = (0..=MAX_HELLO_TARGETS)
            .map(|i| TargetSpec {
                host: format!("mx{i}.lab.test"),
                ports: vec![25],
                level: Level::Connect,
                interval_s: 60,
            })
            .collect();
        let refused =
            refusal(Session::new("agent-7", 10).on_first_frame(Ok(AgentMessage::Hello(h))));
        assert_eq!(refused.kind, "bad_hello");
        assert!(refused.reason.contains("targets"), "{}", refused.reason);
        let exceeded = refused.exceeded.expect("counted");
        assert_eq!(exceeded.limit, Limit::Hello);
        assert_eq!(exceeded.count, 1);
        assert_eq!(
            exceeded.message,
            format!("agent agent-7: {}", refused.reason)
        );
    }

    #[test]
    fn a_hello_with_invalid_labels_is_refused_and_counted() {
        let mut h = hello();
        h.labels.account = "a".repeat(MAX_LABEL_BYTES + 1);
        let refused =
            refusal(Session::new("agent-7", 10).on_first_frame(Ok(AgentMessage::Hello(h))));
        assert_eq!(refused.kind, "bad_labels");
        assert!(
            refused.reason.starts_with("invalid labels: "),
            "{}",
            refused.reason
        );
        assert_eq!(refused.exceeded.expect("counted").limit, Limit::Labels);
    }

    #[test]
    fn a_session_that_does_not_open_with_a_hello_is_a_protocol_error() {
        let mut session = Session::new("a", 10);
        match session.on_first_frame(Ok(AgentMessage::Batch(batch(1..=1, 0)))) {
            Opening::Close(closing) => {
                assert_eq!(
                    closing.end,
                    End::Protocol("expected a hello, got batch".into())
                );
                assert_eq!(closing.end.close_code(), Some(close::PROTOCOL));
            }
            other => panic!("expected a close, got {other:?}"),
        }
        let garbage = WireError::Malformed {
            what: "envelope",
            reason: "junk".into(),
        };
        assert!(matches!(
            Session::new("a", 10).on_first_frame(Err(garbage)),
            Opening::Close(Closing {
                end: End::Protocol(_),
                exceeded: None,
                decode_error: false
            })
        ));
    }

    #[test]
    fn an_oversized_frame_closes_over_the_frame_limit_and_counts_a_decode_error() {
        let too_large = || WireError::FrameTooLarge {
            len: 8192,
            limit: 4096,
        };
        let first = match Session::new("a", 10).on_first_frame(Err(too_large())) {
            Opening::Close(closing) => closing,
            other => panic!("expected a close, got {other:?}"),
        };
        let later = match open(0).on_frame(Err(too_large())) {
            Next::Close(closing) => closing,
            other => panic!("expected a close, got {other:?}"),
        };
        assert_eq!(first, later);
        assert!(first.decode_error);
        assert_eq!(first.end, End::OverLimit(too_large().to_string()));
        assert_eq!(first.end.close_code(), Some(close::PROTOCOL));
        let exceeded = first.exceeded.expect("counted");
        assert_eq!(exceeded.limit, Limit::FrameBytes);
        assert_eq!(exceeded.message, too_large().to_string());
    }

    #[test]
    fn after_the_welcome_a_version_mismatch_or_a_second_hello_is_a_protocol_error() {
        let mut session = open(0);
        let mismatch = WireError::VersionMismatch {
            theirs: WIRE_MAJOR.wrapping_add(1),
            ours: WIRE_MAJOR,
        };
        let text = mismatch.to_string();
        let closing = |next: Next| match next {
            Next::Close(closing) => closing,
            other => panic!("expected a close, got {other:?}"),
        };
        assert_eq!(
            closing(session.on_frame(Err(mismatch))),
            Closing::protocol(text)
        );
        assert_eq!(
            closing(session.on_frame(Ok(AgentMessage::Hello(hello())))),
            Closing::protocol("a second hello on the same session".into())
        );
        assert!(matches!(
            session.on_frame(Ok(AgentMessage::Unknown(9))),
            Next::Ignore { kind: 9 }
        ));
    }

    #[test]
    fn a_batch_over_the_results_cap_ends_the_session_with_nothing_stored() {
        let mut session = Session::new("agent-7", 3);
        session.on_first_frame(Ok(AgentMessage::Hello(hello())));
        session.on_registered(0);
        match session.on_batch(batch(1..=4, 0)) {
            Next::Close(closing) => {
                let reason = "a batch of 4 results is over max_batch_results (3)".to_string();
                assert_eq!(closing.end, End::OverLimit(reason.clone()));
                assert!(!closing.decode_error);
                let exceeded = closing.exceeded.expect("counted");
                assert_eq!(exceeded.limit, Limit::BatchResults);
                assert_eq!(exceeded.message, format!("agent agent-7: {reason}"));
            }
            other => panic!("expected a close, got {other:?}"),
        }
        assert!(matches!(
            session.on_batch(batch(1..=3, 0)),
            Next::Store { count: 3, .. }
        ));
    }

    #[test]
    fn an_unusable_batch_is_discarded_and_the_ack_says_so() {
        let mut session = open(12);
        let mut bad = batch(13..=14, 0);
        bad.results[1].series = 7;
        match session.on_batch(bad) {
            Next::Discard { count, ack, error } => {
                assert_eq!(count, 2);
                assert_eq!(ack.up_to_seq, 12, "nothing stored: the mark stays");
                assert_eq!((ack.accepted, ack.duplicates, ack.discarded), (0, 0, 2));
                assert_eq!(ack.reason, error.to_string());
                assert!(ack.reason.contains("names series 7 of 1"), "{}", ack.reason);
            }
            other => panic!("expected a discard, got {other:?}"),
        }
        assert_eq!(session.high_water(), 12);
    }

    #[test]
    fn a_new_batch_is_stored_and_acked_up_to_the_new_mark() {
        let mut session = open(10);
        let mut unsynchronised = batch(11..=13, 0);
        unsynchronised.clock = ClockQuality::Unsynchronised;
        let (count, results, in_store) = stored_in(session.on_batch(unsynchronised));
        assert_eq!(count, 3);
        assert_eq!(
            results.iter().map(|r| r.seq).collect::<Vec<_>>(),
            [11, 12, 13]
        );
        assert!(!in_store.clock_trusted);
        let stored = session.on_stored(
            in_store,
            &InsertReport {
                accepted: 3,
                duplicates: 0,
                high_water: 13,
            },
        );
        assert_eq!(
            stored.ack,
            Ack {
                up_to_seq: 13,
                accepted: 3,
                duplicates: 0,
                discarded: 0,
                reason: String::new(),
            }
        );
        assert_eq!(stored.spool_drops, None);
        assert_eq!(session.high_water(), 13);
        let (_, _, trusted) = stored_in(session.on_batch(batch(14..=14, 0)));
        assert!(trusted.clock_trusted);
    }

    #[test]
    fn an_unsynchronised_agents_results_are_placed_on_our_clock_by_the_batchs_age() {
        let mut session = open(10);
        let mut unsynchronised = batch(11..=12, 0);
        unsynchronised.clock = ClockQuality::Unsynchronised;
        // The agent's clock, an hour behind ours, says `sent` when it sends.
        let sent = unsynchronised.base_unix_ms + 10_000;
        let now = sent + 3_600_000;
        let (_, mut results, in_store) =
            stored_in(session.on_batch(unsynchronised.clone().sent_at(sent)));
        let ages: Vec<i64> = results.iter().map(|r| sent - r.at_unix_ms).collect();
        assert!(in_store.clock().place(&mut results, now));
        let placed: Vec<i64> = results.iter().map(|r| now - r.at_unix_ms).collect();
        assert_eq!(
            placed, ages,
            "each result as old on our clock as on the agent's"
        );
        // Without the send time (an older agent) they stay untrusted and as they were.
        let (_, mut results, in_store) = stored_in(session.on_batch(unsynchronised));
        let before: Vec<i64> = results.iter().map(|r| r.at_unix_ms).collect();
        assert!(!in_store.clock().place(&mut results, now));
        assert_eq!(
            results.iter().map(|r| r.at_unix_ms).collect::<Vec<_>>(),
            before
        );
        // A synchronised clock's times are its own.
        let (_, mut results, in_store) = stored_in(session.on_batch(batch(13..=13, 0).sent_at(7)));
        let before: Vec<i64> = results.iter().map(|r| r.at_unix_ms).collect();
        assert!(in_store.clock().place(&mut results, now));
        assert_eq!(
            results.iter().map(|r| r.at_unix_ms).collect::<Vec<_>>(),
            before
        );
    }

    #[test]
    fn a_replay_below_the_high_water_mark_is_acked_as_duplicates() {
        let mut session = open(20);
        // Everything resent after a lost ack: the store still sees it (it dedupes) …
        let (count, results, in_store) = stored_in(session.on_batch(batch(11..=20, 0)));
        assert_eq!((count, results.len()), (10, 10));
        let stored = session.on_stored(
            in_store,
            &InsertReport {
                accepted: 0,
                duplicates: 10,
                high_water: 20,
            },
        );
        // … and the ack says the mark is unchanged and nothing was new.
        assert_eq!(stored.ack.up_to_seq, 20);
        assert_eq!((stored.ack.accepted, stored.ack.duplicates), (0, 10));
        assert_eq!(stored.ack.reason, "");
        assert_eq!(session.high_water(), 20);
    }

    #[test]
    fn an_ack_after_a_partly_duplicate_batch_counts_both_parts() {
        let mut session = open(10);
        let (_, results, in_store) = stored_in(session.on_batch(batch(8..=12, 0)));
        assert_eq!(results.len(), 5);
        let stored = session.on_stored(
            in_store,
            &InsertReport {
                accepted: 2,
                duplicates: 3,
                high_water: 12,
            },
        );
        assert_eq!(
            stored.ack,
            Ack {
                up_to_seq: 12,
                accepted: 2,
                duplicates: 3,
                discarded: 0,
                reason: String::new(),
            }
        );
        assert_eq!(session.high_water(), 12);
    }

    #[test]
    fn a_drop_note_is_counted_once_also_when_its_batch_is_resent_after_a_lost_ack() {
        let mut session = open(10);
        let (_, _, in_store) = stored_in(session.on_batch(batch(11..=12, 5)));
        let first = session.on_stored(
            in_store,
            &InsertReport {
                accepted: 2,
                duplicates: 0,
                high_water: 12,
            },
        );
        assert_eq!(
            first.ack.reason,
            "noted: 5 results dropped by the agent's spool before seq 11"
        );
        assert_eq!(
            first.spool_drops,
            Some(Exceeded {
                limit: Limit::AgentSpool,
                count: 5,
                message: "agent agent-7's spool dropped 5 results (full, unwritable or unreadable)"
                    .into(),
            })
        );
        // The ack was lost: the agent resends the same batch, note and all.
        let (_, _, again) = stored_in(session.on_batch(batch(11..=12, 5)));
        let resent = session.on_stored(
            again,
            &InsertReport {
                accepted: 0,
                duplicates: 2,
                high_water: 12,
            },
        );
        assert_eq!(resent.spool_drops, None, "counted once");
        assert_eq!(
            resent.ack.reason,
            "already noted: 5 results dropped by the agent's spool before seq 11"
        );
        assert_eq!((resent.ack.up_to_seq, resent.ack.duplicates), (12, 2));
    }

    #[test]
    fn a_drop_note_on_a_new_session_after_a_restart_is_news_only_past_the_mark() {
        // The collector stored up to 12 before restarting; the agent never saw the ack.
        let mut session = open(12);
        let (_, _, in_store) = stored_in(session.on_batch(batch(11..=14, 5)));
        let stored = session.on_stored(
            in_store,
            &InsertReport {
                accepted: 2,
                duplicates: 2,
                high_water: 14,
            },
        );
        assert_eq!(stored.spool_drops, None);
        assert!(stored.ack.reason.starts_with("already noted"));
    }

    #[test]
    fn every_end_closes_with_its_code() {
        assert_eq!(End::Clean.close_code(), Some(close::NORMAL));
        assert_eq!(End::Revoked.close_code(), Some(close::REFUSED));
        assert_eq!(
            End::Refused {
                kind: "bad_labels",
                reason: String::new()
            }
            .close_code(),
            Some(close::REFUSED)
        );
        assert_eq!(
            End::Protocol(String::new()).close_code(),
            Some(close::PROTOCOL)
        );
        assert_eq!(
            End::OverLimit(String::new()).close_code(),
            Some(close::PROTOCOL)
        );
        assert_eq!(
            End::Unavailable(String::new()).close_code(),
            Some(close::SHUTDOWN)
        );
        assert_eq!(End::Transport(String::new()).close_code(), None);
    }

    #[test]
    fn one_renewal_request_per_session_reaches_the_ca() {
        let mut session = Session::new("vm-1", 100);
        let renew = || {
            Ok(AgentMessage::Renew(egresswatch_wire::Renew {
                csr_der: vec![1, 2, 3],
            }))
        };
        assert!(
            matches!(session.on_frame(renew()), Next::Renew { csr_der } if csr_der == [1, 2, 3])
        );
        for _ in 0..3 {
            assert!(matches!(
                session.on_frame(renew()),
                Next::RenewRefused {
                    reason: ONE_RENEWAL_PER_SESSION
                }
            ));
        }
    }
}
