//! `egresswatch-agent check`: answer one host's question in seconds — which outbound ports can
//! this host use, and which layer is in the way.
//!
//! Every (host, port, family) is probed at once, so a host where everything is dropped answers in
//! about one timeout rather than the sum. Output is a table for people, ending in a verdict in
//! plain words, or one JSON array for scripts (the contract in docs/check.md). Exit 0 when every probe
//! is `ok` (a family without an address is no failure while another family has one), 1 when any
//! is not or a name has no address in any family probed, 2 on usage error.
//!
//! - [`args`]: the command line and its checks before anything is probed.
//! - [`runner`]: probes every host × port × family at once and decides the exit status.
//! - [`table`] and [`json`]: the two renderings of the results.
//! - [`mx`]: `--mx`, a domain's MX exchangers as the hosts to probe.
//! - [`verdict`]: the results read as sentences naming the layer in the way.
//! - [`provider`] and [`provider_verdict`]: `--provider NAME[:REGION]`, a mail provider's preset
//!   (its SMTP ports and HTTPS API) probed and read as one verdict with its own exit statuses.

pub mod args;
pub mod json;
pub mod mx;
pub mod provider;
pub mod provider_list;
pub mod provider_verdict;
pub mod runner;
pub mod table;
pub mod verdict;

pub use args::{parse_duration, CheckArgs, DEFAULT_PORTS};
pub use json::JsonRow;
pub use runner::{exit_status, main, run_check};
pub use table::render_table;
pub use verdict::verdict;
