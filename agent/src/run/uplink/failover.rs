//! Which collector the uplink talks to, as sans-IO decisions beside [`super::window`]. Several
//! collectors sharing one store are interchangeable, so `collector.address` may list several,
//! and a name with several records (A and AAAA, several A) gives several candidates: every
//! address of every entry, in the configured order and the resolver's, each once.
//!
//! [`Rotation`] sticks to the collector that welcomed the agent: a reconnect to say hello again
//! goes back to it, and each round begins with it. When it fails (no connection, no handshake,
//! the connection lost, no ack in time) the next candidate is tried at once; a collector that
//! had worked for a while ([`SETTLED_AFTER`]) and is then lost begins a new round at the
//! candidate after it. Only when every candidate of a round has failed does the uplink wait:
//! capped exponential backoff with jitter, so a fleet whose collectors are all down never
//! hammers them. A rejection (a refusal, a TLS alert) ends the round with the longest wait. Names
//! are resolved again for every round, so a collector moved to another address is found.
//!
//! Which collector takes the results never touches the spool: its sequence numbers go on, and
//! what the old collector did not ack is sent again from the spool (the welcome of the new one
//! says what the shared store already holds; collectors dedupe by sequence number).

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// The shortest wait after a round in which every candidate failed.
pub const MIN_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait, also the wait after a rejection.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A session that lasted this long after its welcome had settled: losing it is news (a new round
/// begins, the backoff starts over) rather than one more failure of a flapping collector.
pub const SETTLED_AFTER: Duration = Duration::from_secs(30);

/// One address to try: the configured entry it came from and what that resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub entry: String,
    pub addr: SocketAddr,
}

impl fmt::Display for Candidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.entry == self.addr.to_string() {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{} ({})", self.entry, self.addr)
        }
    }
}

/// The candidates of a round from each entry's resolved addresses, in order, each address once
/// (two names for one collector are one candidate).
pub fn candidates(resolved: Vec<(String, Vec<SocketAddr>)>) -> Vec<Candidate> {
    let mut out: Vec<Candidate> = Vec::new();
    for (entry, addrs) in resolved {
        for addr in addrs {
            if !out.iter().any(|c| c.addr == addr) {
                out.push(Candidate {
                    entry: entry.clone(),
                    addr,
                });
            }
        }
    }
    out
}

/// How a session with a candidate ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Ended {
    /// The agent is stopping.
    Shutdown,
    /// Labels or targets changed: say hello again, to the same collector.
    Reannounce,
    /// The collector will not take this agent.
    Rejected(String),
    /// Anything else; `welcomed_for` is how long the session ran after its welcome, if it got one.
    Failed {
        reason: String,
        welcomed_for: Option<Duration>,
    },
}

/// What the uplink does next.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Stop,
    /// Try the next candidate (of this round, or of a new round) at once.
    Next,
    /// Every candidate of the round failed: wait this long (jitter not yet applied), then begin
    /// a new round.
    Wait(Duration),
}

/// A collector the uplink was connected to and is no longer, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Left {
    pub collector: Candidate,
    pub why: String,
}

/// Where the next round begins.
#[derive(Debug, Clone, PartialEq)]
enum Begin {
    First,
    /// The collector the agent sticks to.
    At(Candidate),
    /// The one after a collector that was lost after it had settled.
    After(Candidate),
}

/// The uplink's choice of collector across sessions.
#[derive(Debug)]
pub struct Rotation {
    round: VecDeque<Candidate>,
    begin: Begin,
    backoff: Duration,
    rejected_this_round: bool,
    /// The collector of the last welcome, and whether the agent has left it (and why).
    connected: Option<Candidate>,
    left: Option<Left>,
}

impl Default for Rotation {
    fn default() -> Self {
        Rotation {
            round: VecDeque::new(),
            begin: Begin::First,
            backoff: MIN_BACKOFF,
            rejected_this_round: false,
            connected: None,
            left: None,
        }
    }
}

impl Rotation {
    /// Whether the round is over: resolve the entries again and [`Rotation::start_round`].
    pub fn round_over(&self) -> bool {
        self.round.is_empty()
    }

    /// Begins a round over `candidates` (freshly resolved), turned so that the collector the
    /// agent sticks to comes first, or the one after the collector it lost. Returns how many
    /// candidates the round has (0: nothing resolved, the round failed at once).
    pub fn start_round(&mut self, candidates: Vec<Candidate>) -> usize {
        let n = candidates.len();
        let position = |c: &Candidate| candidates.iter().position(|x| x == c);
        let first = match &self.begin {
            Begin::First => 0,
            Begin::At(c) => position(c).unwrap_or(0),
            Begin::After(c) => position(c).map(|i| (i + 1) % n.max(1)).unwrap_or(0),
        };
        let mut round: VecDeque<Candidate> = candidates.into();
        round.rotate_left(first.min(n.saturating_sub(1)));
        self.round = round;
        self.rejected_this_round = false;
        n
    }

    /// The candidate to try now, if the round has one left.
    pub fn next_candidate(&mut self) -> Option<Candidate> {
        self.round.pop_front()
    }

    /// `collector` welcomed the agent: the agent sticks to it. Returns the collector it left
    /// for this one, and why, when it is another one (a switch, for the log).
    pub fn on_welcomed(&mut self, collector: &Candidate) -> Option<Left> {
        self.begin = Begin::At(collector.clone());
        let previous = self.connected.replace(collector.clone());
        let left = self.left.take();
        match (previous, left) {
            (Some(previous), Some(left)) if previous != *collector => Some(left),
            (Some(previous), None) if previous != *collector => Some(Left {
                collector: previous,
                why: "the uplink moved on".into(),
            }),
            _ => None,
        }
    }

    /// The collector the agent is connected to or last was.
    pub fn connected(&self) -> Option<&Candidate> {
        self.connected.as_ref()
    }

    /// The session with `tried` ended as `ended`: what next.
    pub fn after(&mut self, tried: &Candidate, ended: &Ended) -> Step {
        let was_connected = self.connected.as_ref() == Some(tried);
        match ended {
            Ended::Shutdown => return Step::Stop,
            Ended::Reannounce => {
                // The same collector, at once: nothing failed.
                self.round.push_front(tried.clone());
                return Step::Next;
            }
            Ended::Rejected(why) => {
                self.rejected_this_round = true;
                if was_connected {
                    self.note_left(tried, format!("rejected: {why}"));
                }
            }
            Ended::Failed {
                reason,
                welcomed_for,
            } => {
                if welcomed_for.is_some() && was_connected {
                    self.note_left(tried, reason.clone());
                }
                if welcomed_for.is_some_and(|d| d >= SETTLED_AFTER) {
                    // A collector that worked is lost: a fresh round from the one after it.
                    self.begin = Begin::After(tried.clone());
                    self.backoff = MIN_BACKOFF;
                    self.round.clear();
                    return Step::Next;
                }
            }
        }
        if !self.round.is_empty() {
            return Step::Next;
        }
        self.round_failed()
    }

    /// Every candidate of the round failed (or none resolved): the wait before the next round,
    /// the longest after a rejection, else the backoff, which then doubles up to its cap.
    pub fn round_failed(&mut self) -> Step {
        self.round.clear();
        if self.rejected_this_round {
            return Step::Wait(MAX_BACKOFF);
        }
        let wait = self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        Step::Wait(wait)
    }

    fn note_left(&mut self, collector: &Candidate, why: String) {
        if self.left.is_none() {
            self.left = Some(Left {
                collector: collector.clone(),
                why,
            });
        }
    }
}

/// `d` scaled by a random factor in [0.5, 1): agents that lost their collector together do not
/// come back together.
pub fn jitter(d: Duration) -> Duration {
    use rand::Rng;
    let factor = rand::rng().random_range(0.5..1.0);
    d.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(entry: &str, addr: &str) -> Candidate {
        Candidate {
            entry: entry.into(),
            addr: addr.parse().unwrap(),
        }
    }

    fn two() -> Vec<Candidate> {
        vec![
            c("c1:4433", "192.0.2.1:4433"),
            c("c2:4433", "192.0.2.2:4433"),
        ]
    }

    fn failed(welcomed_for: Option<u64>) -> Ended {
        Ended::Failed {
            reason: "connection lost".into(),
            welcomed_for: welcomed_for.map(Duration::from_secs),
        }
    }

    #[test]
    fn every_address_of_every_entry_is_a_candidate_once_in_order() {
        let resolved = vec![
            (
                "localhost:4433".to_string(),
                vec![
                    "[::1]:4433".parse().unwrap(),
                    "127.0.0.1:4433".parse().unwrap(),
                ],
            ),
            (
                "127.0.0.1:4433".to_string(),
                vec!["127.0.0.1:4433".parse().unwrap()],
            ),
            (
                "c2:4433".to_string(),
                vec!["192.0.2.2:4433".parse().unwrap()],
            ),
        ];
        let got = candidates(resolved);
        assert_eq!(
            got,
            vec![
                c("localhost:4433", "[::1]:4433"),
                c("localhost:4433", "127.0.0.1:4433"),
                c("c2:4433", "192.0.2.2:4433"),
            ]
        );
        assert_eq!(got[0].to_string(), "localhost:4433 ([::1]:4433)");
        assert_eq!(
            c("192.0.2.2:4433", "192.0.2.2:4433").to_string(),
            "192.0.2.2:4433"
        );
    }

    #[test]
    fn a_dead_first_collector_moves_on_at_once_and_the_agent_sticks_to_the_next() {
        let mut r = Rotation::default();
        assert!(r.round_over());
        assert_eq!(r.start_round(two()), 2);
        let first = r.next_candidate().unwrap();
        assert_eq!(first, two()[0]);
        assert_eq!(
            r.after(&first, &failed(None)),
            Step::Next,
            "no wait within a round"
        );
        let second = r.next_candidate().unwrap();
        assert_eq!(second, two()[1]);
        assert_eq!(
            r.on_welcomed(&second),
            None,
            "the first connection is no switch"
        );
        // Saying hello again goes back to the same collector.
        assert_eq!(r.after(&second, &Ended::Reannounce), Step::Next);
        assert_eq!(r.next_candidate(), Some(second.clone()));
        assert_eq!(r.on_welcomed(&second), None);
        // A short session lost: the round is over (both were tried), so it waits.
        assert_eq!(r.after(&second, &failed(Some(5))), Step::Wait(MIN_BACKOFF));
        // The next round begins with the collector the agent sticks to.
        r.start_round(two());
        assert_eq!(r.next_candidate(), Some(second));
    }

    #[test]
    fn a_settled_collector_lost_begins_a_new_round_at_the_next_one() {
        let mut r = Rotation::default();
        r.start_round(two());
        let first = r.next_candidate().unwrap();
        r.on_welcomed(&first);
        // Failures before it worked had grown the backoff; losing a settled session resets it.
        r.backoff = MAX_BACKOFF;
        assert_eq!(r.after(&first, &failed(Some(300))), Step::Next);
        assert!(r.round_over(), "names are resolved again");
        r.start_round(two());
        let second = r.next_candidate().unwrap();
        assert_eq!(second, two()[1], "the one after the lost one");
        let left = r.on_welcomed(&second).expect("a switch");
        assert_eq!(left.collector, first);
        assert_eq!(left.why, "connection lost");
        assert_eq!(r.connected(), Some(&second));
        // Losing the second (settled) wraps around to the first.
        assert_eq!(r.after(&second, &failed(Some(60))), Step::Next);
        r.start_round(two());
        assert_eq!(r.next_candidate(), Some(first.clone()));
        assert_eq!(r.backoff, MIN_BACKOFF);
        // A collector that vanished from the names: the round begins at the first there is.
        r.begin = Begin::After(c("gone:4433", "192.0.2.9:4433"));
        r.start_round(two());
        assert_eq!(r.next_candidate(), Some(first));
    }

    #[test]
    fn one_round_then_a_bounded_exponential_backoff() {
        let mut r = Rotation::default();
        let mut waits = Vec::new();
        for _ in 0..9 {
            r.start_round(two());
            let mut tries = 0;
            loop {
                let candidate = r.next_candidate().unwrap();
                tries += 1;
                match r.after(&candidate, &failed(None)) {
                    Step::Next => continue,
                    Step::Wait(d) => {
                        waits.push(d.as_secs());
                        break;
                    }
                    Step::Stop => unreachable!(),
                }
            }
            assert_eq!(tries, 2, "each candidate once a round");
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        // Nothing resolved at all is a failed round too.
        assert_eq!(r.start_round(Vec::new()), 0);
        assert_eq!(r.round_failed(), Step::Wait(MAX_BACKOFF));
        for _ in 0..100 {
            let j = jitter(Duration::from_secs(10));
            assert!(
                j >= Duration::from_secs(5) && j < Duration::from_secs(10),
                "{j:?}"
            );
        }
    }

    #[test]
    fn a_rejection_tries_the_others_then_waits_the_longest() {
        let mut r = Rotation::default();
        r.start_round(two());
        let first = r.next_candidate().unwrap();
        assert_eq!(
            r.after(&first, &Ended::Rejected("agent revoked".into())),
            Step::Next
        );
        let second = r.next_candidate().unwrap();
        assert_eq!(r.after(&second, &failed(None)), Step::Wait(MAX_BACKOFF));
        // One candidate, rejected: the longest wait at once.
        let mut r = Rotation::default();
        r.start_round(two()[..1].to_vec());
        let only = r.next_candidate().unwrap();
        assert_eq!(
            r.after(&only, &Ended::Rejected("revoked".into())),
            Step::Wait(MAX_BACKOFF)
        );
        assert_eq!(r.after(&only, &Ended::Shutdown), Step::Stop);
    }

    #[test]
    fn a_flapping_collector_does_not_reset_the_backoff() {
        let mut r = Rotation::default();
        let mut waits = Vec::new();
        for _ in 0..4 {
            r.start_round(two()[..1].to_vec());
            let only = r.next_candidate().unwrap();
            r.on_welcomed(&only);
            if let Step::Wait(d) = r.after(&only, &failed(Some(2))) {
                waits.push(d.as_secs());
            }
        }
        assert_eq!(waits, [1, 2, 4, 8]);
    }
}
