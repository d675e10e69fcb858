//! The live sessions that can be sent a [`ProbeRequest`]: agent id → a small bounded queue read
//! by that session, which writes the request on its report stream between acks. The fan-out
//! queues with `try_send` only, so a slow or gone session costs a dropped request (counted by the
//! fan-out), never a wait in ingest or in the hub.
//!
//! An agent that reconnects replaces its entry at once; the old session, when it is finally
//! cleaned up, removes the entry only if it is still its own ([`Registration`]).

use crate::fanout::{ConnectedAgent, Delivery, Sessions};
use egresswatch_wire::ProbeRequest;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::mpsc;

/// Requests one session may have waiting to be written; more are dropped. The fan-out's
/// per-agent budget keeps a healthy session far below it.
pub const REQUEST_QUEUE: usize = 8;

struct Entry {
    session: u64,
    agent: ConnectedAgent,
    requests: mpsc::Sender<ProbeRequest>,
}

/// The registry; shared between ingest's sessions and the fan-out.
#[derive(Default)]
pub struct SessionRegistry {
    entries: Mutex<HashMap<String, Entry>>,
    next_session: AtomicU64,
}

impl SessionRegistry {
    fn entries(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a welcomed session of `agent`; the session reads its requests from the
    /// receiver, and ends its entry by dropping the registration.
    pub fn register(
        self: &Arc<Self>,
        agent: ConnectedAgent,
    ) -> (Registration, mpsc::Receiver<ProbeRequest>) {
        let session = self.next_session.fetch_add(1, Ordering::Relaxed);
        let (requests, receiver) = mpsc::channel(REQUEST_QUEUE);
        let agent_id = agent.agent_id.clone();
        self.entries().insert(
            agent_id.clone(),
            Entry {
                session,
                agent,
                requests,
            },
        );
        (
            Registration {
                registry: self.clone(),
                agent_id,
                session,
            },
            receiver,
        )
    }

    /// How many sessions are registered.
    /// Every agent with a live session here.
    pub fn connected(&self) -> Vec<ConnectedAgent> {
        self.entries().values().map(|e| e.agent.clone()).collect()
    }

    pub fn len(&self) -> usize {
        self.entries().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Sessions for SessionRegistry {
    fn probing(&self, target: &str, port: u16) -> Vec<ConnectedAgent> {
        self.entries()
            .values()
            .filter(|e| e.agent.probes(target, port))
            .map(|e| e.agent.clone())
            .collect()
    }

    fn try_send(&self, agent_id: &str, request: ProbeRequest) -> Delivery {
        let entries = self.entries();
        let Some(entry) = entries.get(agent_id) else {
            return Delivery::Disconnected;
        };
        match entry.requests.try_send(request) {
            Ok(()) => Delivery::Queued,
            Err(mpsc::error::TrySendError::Full(_)) => Delivery::Full,
            Err(mpsc::error::TrySendError::Closed(_)) => Delivery::Disconnected,
        }
    }
}

/// A session's place in the registry, given up when dropped (however the session ends).
pub struct Registration {
    registry: Arc<SessionRegistry>,
    agent_id: String,
    session: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut entries = self.registry.entries();
        // A reconnect of the same agent may already have its own entry here: leave that alone.
        if entries
            .get(&self.agent_id)
            .is_some_and(|e| e.session == self.session)
        {
            entries.remove(&self.agent_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use egresswatch_wire::Family;

    fn agent(id: &str) -> ConnectedAgent {
        ConnectedAgent {
            agent_id: id.into(),
            provider: "aws".into(),
            account: "prod".into(),
            targets: vec![("mx.lab.test".into(), vec![25, 587])],
            wire_minor: 2,
            accepts_probe_requests: true,
        }
    }

    fn request(id: u64) -> ProbeRequest {
        ProbeRequest {
            request_id: id,
            target: "mx.lab.test".into(),
            port: 587,
            family: Family::Ipv4,
            deadline_ms: 15_000,
        }
    }

    #[test]
    fn a_request_reaches_the_session_and_a_full_queue_drops_without_waiting() {
        let registry = Arc::new(SessionRegistry::default());
        let (_registration, mut requests) = registry.register(agent("a"));
        assert_eq!(registry.try_send("a", request(1)), Delivery::Queued);
        assert_eq!(requests.try_recv().unwrap().request_id, 1);
        for id in 0..REQUEST_QUEUE as u64 {
            assert_eq!(registry.try_send("a", request(id)), Delivery::Queued);
        }
        assert_eq!(registry.try_send("a", request(99)), Delivery::Full);
        assert_eq!(
            registry.try_send("nobody", request(2)),
            Delivery::Disconnected
        );
    }

    #[test]
    fn only_agents_probing_the_destination_are_listed() {
        let registry = Arc::new(SessionRegistry::default());
        let (_a, _ra) = registry.register(agent("a"));
        let mut other = agent("b");
        other.targets = vec![("mx.other.test".into(), vec![587])];
        let (_b, _rb) = registry.register(other);
        let listed: Vec<_> = registry
            .probing("mx.lab.test", 587)
            .into_iter()
            .map(|a| a.agent_id)
            .collect();
        assert_eq!(listed, vec!["a".to_string()]);
        assert!(registry.probing("mx.lab.test", 465).is_empty());
    }

    #[test]
    fn an_ended_session_leaves_and_an_old_one_never_removes_a_reconnect() {
        let registry = Arc::new(SessionRegistry::default());
        let (old, old_requests) = registry.register(agent("a"));
        let (new, mut new_requests) = registry.register(agent("a"));
        drop(old_requests);
        drop(old);
        assert_eq!(registry.len(), 1, "the reconnect's entry stays");
        assert_eq!(registry.try_send("a", request(3)), Delivery::Queued);
        assert_eq!(new_requests.try_recv().unwrap().request_id, 3);
        drop(new);
        assert!(registry.is_empty());
        assert_eq!(registry.try_send("a", request(4)), Delivery::Disconnected);
    }

    #[test]
    fn a_session_whose_reader_is_gone_counts_as_disconnected() {
        let registry = Arc::new(SessionRegistry::default());
        let (_registration, requests) = registry.register(agent("a"));
        drop(requests);
        assert_eq!(registry.try_send("a", request(5)), Delivery::Disconnected);
    }
}
