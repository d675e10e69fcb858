//! HTTP: dashboard, API, SSE, metrics. STUB — being built in issue 4.

#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct HttpConfig {}
