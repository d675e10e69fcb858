//! Who reported: an agent's identity as its certificate and hello gave it ([`AgentMeta`]).
//! Ingest, the store, the matrix and the detector all speak of agents through these types.

use egresswatch_wire::Labels;

/// Who sent results: the identity from the certificate and the labels from its hello.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentMeta {
    pub agent_id: String,
    pub labels: Labels,
    pub agent_version: String,
}
