//! The config parsers on arbitrary text: the collector's `Config` (via `toml::from_str`, as
//! `Config::parse` does) and the agent's run config (`AgentConfig::parse`, which also validates).
//! The first byte picks which. Beyond "no panic": an agent config that parses has labels within the
//! byte limit and free of control characters, and at least one target to probe.
#![no_main]

use egresswatch_agent::run::config::AgentConfig;
use egresswatch_collector::config::Config;
use egresswatch_wire::limits::MAX_LABEL_BYTES;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    if selector % 2 == 0 {
        let _ = toml::from_str::<Config>(text);
        let _ = Config::parse(text);
    } else if let Ok(config) = AgentConfig::parse(text, Path::new("fuzz.toml")) {
        let labels = &config.labels;
        for value in [
            &labels.provider,
            &labels.account,
            &labels.region,
            &labels.instance,
        ] {
            assert!(value.len() <= MAX_LABEL_BYTES);
            assert!(!value.chars().any(char::is_control));
        }
        assert!(!config.effective_targets().is_empty());
    }
});
