//! egresswatch-collector as a library; the binary is a thin shell over it.
//!
//! Data flows one way: [`ingest`] (QUIC sessions, mTLS identity) → [`store`] (durable, deduped)
//! → the [`fleet`] hub, which feeds [`matrix`] (live aggregation) and [`detector`] (confirmed
//! changes, attributed to a layer), records their [`events`] through the store and hands them to
//! [`alerts`] (sinks); on a suspected change [`fanout`] asks other agents, over their ingest
//! sessions, to probe it now. [`identity`] is the agent and series identity they all share. [`http`] only
//! serves what the hub and the store hold: the dashboard, the API, the SSE stream and the
//! [`metrics`] registry every module registers its own counters in. [`limits`] names every bound,
//! [`ca`] is the fleet's certificate authority, [`ready`] tells scripts where a started collector
//! listens, and [`config`] ties them together.

pub mod alerts;
pub mod ca;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod detector;
pub mod error;
pub mod events;
pub mod fanout;
pub mod feed;
pub mod fleet;
pub mod history;
pub mod http;
pub mod identity;
pub mod ingest;
pub mod limits;
pub mod matrix;
pub mod metrics;
pub mod providers;
pub mod ready;
pub mod silences;
pub mod store;

pub use error::CollectorError;
