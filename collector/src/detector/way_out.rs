//! A mail provider's HTTPS API as the way out. An agent whose `[[targets]]` name a mail-provider
//! preset probes the provider's API host on 443, the port the detector otherwise reads as the
//! agent's network control. That series is the provider's API, not the network: it is an
//! ordinary series here (its own test, suspicions, attribution by the same layer rule), and it
//! counts as the control only for an agent that probes no other target on that port. When the API is decided unreachable where every agent of the
//! change already has every SMTP series to the same provider blocked, the way out is gone: the
//! event is `way_out_lost` instead of `policy_changed` (same scope, target and port, so its
//! return, an ordinary `policy_changed` to `open`, ends it like any blocked port's).
//!
//! Which hosts are a preset's comes from the agent's built-in presets
//! ([`crate::matrix::mail::mail_hosts`]); hosts of presets an agent adds itself stay ordinary
//! 443 series, so control.

use super::{Detector, PortState, SeriesKey};
use crate::events::{Event, EventKind, Scope, State};
use crate::matrix::mail::{mail_hosts, MailHosts};
use egresswatch_wire::{Family, ProbeResult};

/// The port agents probe a preset's API host on (HTTPS), whatever the control port is set to.
const API_PORT: u16 = 443;

/// The mail provider whose HTTPS API `target` is, when `port` is the API's.
fn api_of(target: &str, port: u16) -> Option<&'static MailHosts> {
    if port != API_PORT {
        return None;
    }
    mail_hosts()
        .iter()
        .find(|m| m.api_hosts.iter().any(|h| h.eq_ignore_ascii_case(target)))
}

/// Whether this series is a mail provider's API rather than the agent's network control.
pub(super) fn is_mail_api(target: &str, port: u16) -> bool {
    api_of(target, port).is_some()
}

impl Detector {
    /// Whether the agent probes a target on the control port, in this family, that is no mail
    /// provider's API (a series of it already, or a result in this batch). Without one, its APIs
    /// stay its control, as before there were presets: an agent that probes nothing but a preset
    /// cannot tell the API going away from its own network going away.
    pub(super) fn has_own_control(
        &self,
        agent: &str,
        family: Family,
        batch: &[ProbeResult],
    ) -> bool {
        let port = self.config.control_port;
        let own =
            |target: &str, p: u16, f: Family| p == port && f == family && !is_mail_api(target, p);
        batch.iter().any(|r| own(&r.target, r.port, r.family))
            || self
                .series
                .range(
                    SeriesKey {
                        agent: agent.to_string(),
                        target: String::new(),
                        port: 0,
                        family: Family::Ipv4,
                    }..,
                )
                .take_while(|(k, _)| k.agent == agent)
                .any(|(k, _)| own(&k.target, k.port, k.family))
    }

    /// The events with every API loss that leaves no way out named as such.
    pub(super) fn name_ways_out(&self, events: Vec<Event>) -> Vec<Event> {
        events
            .into_iter()
            .map(|mut e| {
                if self.way_out_lost(&e) {
                    e.kind = EventKind::WayOutLost;
                }
                e
            })
            .collect()
    }

    /// A change to `blocked` of a mail provider's API, where every agent of its scope that
    /// probes that API has each of its series to it blocked now and every one of its series to
    /// the provider's SMTP hosts blocked (at least one): nothing of that provider is left.
    fn way_out_lost(&self, e: &Event) -> bool {
        if e.kind != EventKind::PolicyChanged || e.to != State::Blocked {
            return false;
        }
        let (Some(target), Some(port)) = (&e.target, e.port) else {
            return false;
        };
        let Some(mail) = api_of(target, port) else {
            return false;
        };
        let in_scope = |agent: &str| {
            let Some(info) = self.agents.get(agent) else {
                return false;
            };
            match e.scope {
                Scope::Agent => e.agent.as_deref() == Some(agent),
                Scope::Account => {
                    e.provider.as_deref() == Some(info.provider.as_str())
                        && e.account.as_deref() == Some(info.account.as_str())
                }
                Scope::Provider => e.provider.as_deref() == Some(info.provider.as_str()),
                Scope::Destination => true,
            }
        };
        let is_smtp = |t: &str| mail.smtp_hosts.iter().any(|h| h.eq_ignore_ascii_case(t));
        let mut agents = 0;
        let mut last_agent: Option<&str> = None;
        for (k, s) in &self.series {
            if !in_scope(&k.agent) {
                continue;
            }
            let api = k.port == port && k.target.eq_ignore_ascii_case(target);
            if api && last_agent != Some(k.agent.as_str()) {
                last_agent = Some(k.agent.as_str());
                agents += 1;
                if !self.smtp_all_blocked(&k.agent, &is_smtp) {
                    return false;
                }
            }
            if api && s.last() != Some(PortState::Blocked) {
                return false;
            }
        }
        agents > 0
    }

    /// Whether the agent has series to the provider's SMTP hosts and every one is settled
    /// blocked (both families: SMTP over either would still be a way).
    fn smtp_all_blocked(&self, agent: &str, is_smtp: &dyn Fn(&str) -> bool) -> bool {
        let mut any = false;
        for (k, s) in self.series.range(
            SeriesKey {
                agent: agent.to_string(),
                target: String::new(),
                port: 0,
                family: Family::Ipv4,
            }..,
        ) {
            if k.agent != agent {
                break;
            }
            if !is_smtp(&k.target) {
                continue;
            }
            any = true;
            if s.confirmed() != Some(PortState::Blocked) {
                return false;
            }
        }
        any
    }
}
