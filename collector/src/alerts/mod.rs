//! Alert sinks. STUB — being built in issue 4.

#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct SinkConfig {}
