//! Per-sink decisions taken as events are enqueued, without I/O or a clock of their own: a
//! flapping series gets one "flapping" notice (and the note that it stopped), not one per swing —
//! a series that starts flapping again within `flap_hold_secs` of its last swing is held back,
//! start and stop — and a resolve learns how long its problem lasted.

use crate::events::{Event, EventKind, State};
use egresswatch_wire::Family;
use std::collections::HashMap;

/// What a sink's worker formats and sends: the event, and for a resolve how long it lasted.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    pub event: Event,
    /// From the first event of the problem to this resolve, when the sink saw the start.
    pub lasted_ms: Option<i64>,
}

impl Notice {
    pub fn of(event: Event) -> Notice {
        Notice {
            event,
            lasted_ms: None,
        }
    }

    /// The notice as an alert outbox keeps it (`{"event": .., "at_unix_ms": .., "lasted_ms": ..}`):
    /// the event's JSON, and the millisecond time its JSON leaves out.
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(&StoredNotice {
            event: self.event.clone(),
            at_unix_ms: self.event.at_unix_ms,
            lasted_ms: self.lasted_ms,
        })
    }

    /// A notice from [`Notice::to_json`]'s form.
    pub fn from_json(json: &str) -> Result<Notice, serde_json::Error> {
        let stored: StoredNotice = serde_json::from_str(json)?;
        let mut event = stored.event;
        event.at_unix_ms = stored.at_unix_ms;
        Ok(Notice {
            event,
            lasted_ms: stored.lasted_ms,
        })
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredNotice {
    event: Event,
    at_unix_ms: i64,
    #[serde(default)]
    lasted_ms: Option<i64>,
}

/// The subject of an event with its family left out: a port's blocked and flapping alerts are
/// one subject, as are an agent's silence and return.
pub fn subject(e: &Event) -> String {
    let group = match e.kind {
        // The API's loss and its return (a policy change to open) are one subject.
        EventKind::PolicyChanged | EventKind::WayOutLost => "port",
        EventKind::DestinationOutage => "destination",
        EventKind::AgentSilent | EventKind::AgentBack => "agent",
    };
    format!(
        "{group}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}",
        e.scope, e.provider, e.account, e.agent, e.target, e.port
    )
}

#[derive(Debug, Clone, Copy)]
struct Flap {
    /// The last start or stop of flapping seen.
    last_ms: i64,
    /// A start held back: its stop is held back too.
    held: bool,
}

#[derive(Debug)]
pub struct Gate {
    flap_hold_ms: i64,
    flaps: HashMap<String, Flap>,
    /// When each open problem began, by subject and family (`None`: both together).
    open: HashMap<(String, Option<Family>), i64>,
}

impl Gate {
    pub fn new(flap_hold_ms: i64) -> Gate {
        Gate {
            flap_hold_ms,
            flaps: HashMap::new(),
            open: HashMap::new(),
        }
    }

    /// The notice to send for `e`, or `None` to hold it back.
    pub fn pass(&mut self, e: &Event) -> Option<Notice> {
        let key = subject(e);
        let at = e.at_unix_ms;
        if e.to == State::Flapping {
            let hold = self.flap_hold_ms;
            match self.flaps.get_mut(&key) {
                Some(f) if at - f.last_ms < hold => {
                    f.last_ms = at;
                    f.held = true;
                    return None;
                }
                _ => {
                    self.flaps.insert(
                        key.clone(),
                        Flap {
                            last_ms: at,
                            held: false,
                        },
                    );
                }
            }
        } else if e.from == State::Flapping {
            if let Some(f) = self.flaps.get_mut(&key) {
                f.last_ms = at;
                if f.held {
                    f.held = false;
                    return None;
                }
            }
        }
        let lasted_ms = if e.to.is_problem() {
            let start = self.open.entry((key, e.family)).or_insert(at);
            *start = (*start).min(at);
            None
        } else {
            self.resolve(&key, e.family, at)
        };
        Some(Notice {
            event: e.clone(),
            lasted_ms,
        })
    }

    /// Ends what a resolve ends (every family when it names none; else its own family, while a
    /// problem over both families stays open for the other) and says since when it was open.
    fn resolve(&mut self, key: &str, family: Option<Family>, at: i64) -> Option<i64> {
        let mut start: Option<i64> = None;
        let mut ended = Vec::new();
        for ((k, f), began) in &self.open {
            if k != key {
                continue;
            }
            let ends = family.is_none() || *f == family;
            if ends || f.is_none() {
                start = Some(start.map_or(*began, |s: i64| s.min(*began)));
            }
            if ends {
                ended.push((k.clone(), *f));
            }
        }
        for k in ended {
            self.open.remove(&k);
        }
        start.map(|s| (at - s).max(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::rfc3339;
    use crate::events::Scope;

    const MIN: i64 = 60_000;

    fn change(from: State, to: State, at: i64, family: Option<Family>) -> Event {
        Event {
            kind: EventKind::PolicyChanged,
            scope: Scope::Agent,
            provider: Some("gcp".into()),
            account: Some("a".into()),
            agent: Some("g1".into()),
            target: Some("mx".into()),
            port: Some(587),
            from,
            to,
            at: rfc3339(at),
            family,
            id: None,
            outcome: None,
            at_unix_ms: at,
            since: None,
            witnesses: Vec::new(),
            silenced_by: None,
        }
    }

    #[test]
    fn a_series_flapping_on_and_off_gets_one_notice_and_one_stop() {
        let mut gate = Gate::new(60 * MIN);
        let f = Some(Family::Ipv4);
        let mut sent = Vec::new();
        for i in 0..10 {
            let t = i * 4 * MIN;
            for e in [
                change(State::Open, State::Flapping, t, f),
                change(State::Flapping, State::Open, t + 2 * MIN, f),
            ] {
                if let Some(n) = gate.pass(&e) {
                    sent.push((n.event.from, n.event.to));
                }
            }
        }
        assert_eq!(
            sent,
            vec![
                (State::Open, State::Flapping),
                (State::Flapping, State::Open)
            ]
        );
        // Quiet for longer than the hold: flapping again is news again.
        let later = 38 * MIN + 61 * MIN;
        assert!(gate
            .pass(&change(State::Open, State::Flapping, later, f))
            .is_some());
    }

    #[test]
    fn a_resolve_says_how_long_from_the_first_problem_event() {
        let mut gate = Gate::new(MIN);
        let f = Some(Family::Ipv4);
        assert_eq!(
            gate.pass(&change(State::Open, State::Blocked, 0, f))
                .unwrap()
                .lasted_ms,
            None
        );
        let back = gate
            .pass(&change(State::Blocked, State::Open, 90 * MIN, f))
            .unwrap();
        assert_eq!(back.lasted_ms, Some(90 * MIN));
        // Without a start seen, nothing is claimed.
        let again = gate
            .pass(&change(State::Blocked, State::Open, 91 * MIN, f))
            .unwrap();
        assert_eq!(again.lasted_ms, None);
    }

    #[test]
    fn one_family_reopening_leaves_a_both_families_problem_open_for_the_other() {
        let mut gate = Gate::new(MIN);
        gate.pass(&change(State::Open, State::Blocked, 0, None));
        let v4 = gate
            .pass(&change(
                State::Blocked,
                State::Open,
                10 * MIN,
                Some(Family::Ipv4),
            ))
            .unwrap();
        assert_eq!(v4.lasted_ms, Some(10 * MIN));
        let both = gate
            .pass(&change(State::Blocked, State::Open, 20 * MIN, None))
            .unwrap();
        assert_eq!(both.lasted_ms, Some(20 * MIN));
        // An IPv4 problem is ended by a resolve of both families at once.
        gate.pass(&change(
            State::Open,
            State::Blocked,
            30 * MIN,
            Some(Family::Ipv4),
        ));
        let both = gate
            .pass(&change(State::Blocked, State::Open, 35 * MIN, None))
            .unwrap();
        assert_eq!(both.lasted_ms, Some(5 * MIN));
    }
}
