//! Storage. STUB — being built in issue 3.

#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct StoreConfig {}
