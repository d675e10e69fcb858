//! egresswatch-collector as a library; the binary is a thin shell over it.
//!
//! Data flows one way: [`ingest`] (QUIC sessions, mTLS identity) → [`store`] (durable, deduped)
//! → [`pipeline`] observers → [`matrix`] (live aggregation) and [`detector`] (confirmed changes,
//! attributed to a layer) → [`alerts`] (sinks). [`http`] serves the dashboard, the API, the SSE
//! stream and metrics. [`ca`] is the fleet's certificate authority. [`config`] ties them together.

pub mod alerts;
pub mod ca;
pub mod config;
pub mod detector;
pub mod error;
pub mod events;
pub mod fleet;
pub mod http;
pub mod identity;
pub mod ingest;
pub mod limits;
pub mod matrix;
pub mod metrics;
pub mod ready;
#[doc(hidden)]
pub mod sim;
pub mod store;

pub use error::CollectorError;
