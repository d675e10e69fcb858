//! Fan-out across collectors: the leader asks agents for evidence wherever they are connected.
//! Each collector publishes its live sessions beside its heartbeat; the leader's fan-out sees its
//! own sessions and every other collector's ([`ClusterSessions`]), and a request for an agent
//! connected elsewhere goes out as a notification through the lease. The collector holding that
//! agent's session passes it on ([`relay`]). A request for an agent that moved meanwhile is lost,
//! like one to an agent that disconnected: fan-out is evidence on demand, never needed for a
//! decision.

use crate::fanout::{ConnectedAgent, Delivery, Sessions};
use crate::fleet::Lead;
use crate::ingest::registry::SessionRegistry;
use egresswatch_wire::{Family, ProbeRequest};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};

/// A probe request as a notification carries it.
#[derive(Debug, Serialize, Deserialize)]
struct RelayedRequest {
    request_id: u64,
    target: String,
    port: u16,
    family: Family,
    deadline_ms: u32,
}

impl RelayedRequest {
    fn of(r: &ProbeRequest) -> RelayedRequest {
        RelayedRequest {
            request_id: r.request_id,
            target: r.target.clone(),
            port: r.port,
            family: r.family,
            deadline_ms: r.deadline_ms,
        }
    }

    fn into_request(self) -> ProbeRequest {
        ProbeRequest {
            request_id: self.request_id,
            target: self.target,
            port: self.port,
            family: self.family,
            deadline_ms: self.deadline_ms,
        }
    }
}

/// This collector's sessions and the others' as last published.
pub struct ClusterSessions {
    local: Arc<SessionRegistry>,
    /// The lease relays probe requests (only the leader asks for them).
    lead: Arc<Lead>,
    remote: Mutex<Vec<ConnectedAgent>>,
}

impl ClusterSessions {
    pub fn new(local: Arc<SessionRegistry>, lead: Arc<Lead>) -> ClusterSessions {
        ClusterSessions {
            local,
            lead,
            remote: Mutex::default(),
        }
    }

    /// This collector's sessions, as it publishes them.
    pub(super) fn local_json(&self) -> String {
        serde_json::to_string(&self.local.connected()).unwrap_or_else(|_| "[]".into())
    }

    /// The other collectors' published sessions (`(collector, JSON)`, this one's left out).
    pub(super) fn set_remote(&self, own_id: &str, published: &[(String, String)]) {
        let mut remote = Vec::new();
        for (collector, json) in published {
            if collector == own_id {
                continue;
            }
            match serde_json::from_str::<Vec<ConnectedAgent>>(json) {
                Ok(list) => remote.extend(list),
                Err(e) => {
                    tracing::debug!(collector = %collector, "published sessions do not parse: {e}")
                }
            }
        }
        *self.remote.lock().unwrap_or_else(|p| p.into_inner()) = remote;
    }

    /// Passes a request another collector relayed on to the session held here, if any.
    pub(super) fn relay(&self, agent: &str, request_json: &str) {
        match serde_json::from_str::<RelayedRequest>(request_json) {
            Ok(request) => {
                let _ = self.local.try_send(agent, request.into_request());
            }
            Err(e) => tracing::debug!("a relayed probe request does not parse: {e}"),
        }
    }
}

impl Sessions for ClusterSessions {
    fn probing(&self, target: &str, port: u16) -> Vec<ConnectedAgent> {
        let mut found = self.local.probing(target, port);
        let remote = self.remote.lock().unwrap_or_else(|p| p.into_inner());
        for agent in remote.iter().filter(|a| a.probes(target, port)) {
            if !found.iter().any(|f| f.agent_id == agent.agent_id) {
                found.push(agent.clone());
            }
        }
        found
    }

    fn try_send(&self, agent_id: &str, request: ProbeRequest) -> Delivery {
        let relayed = RelayedRequest::of(&request);
        match self.local.try_send(agent_id, request) {
            Delivery::Disconnected => {}
            delivered => return delivered,
        }
        let known = self
            .remote
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|a| a.agent_id == agent_id);
        if !known {
            return Delivery::Disconnected;
        }
        let Ok(json) = serde_json::to_string(&relayed) else {
            return Delivery::Disconnected;
        };
        let published = match self.lead.lease().as_mut() {
            Some(lease) => lease.publish_probe_request(agent_id, &json),
            None => return Delivery::Disconnected,
        };
        match published {
            Ok(()) => Delivery::Queued,
            Err(e) => {
                tracing::debug!(agent = %agent_id, "relaying a probe request: {e}");
                Delivery::Disconnected
            }
        }
    }
}
