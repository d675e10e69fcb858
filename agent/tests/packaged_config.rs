//! The agent's packaged configuration (packaging/agent/agent.toml, the package's conffile) is a
//! valid config, and it agrees with the packaged unit: the files the unit waits for are the ones
//! the config names, and the spool is the unit's StateDirectory.

use egresswatch_agent::run::config::AgentConfig;
use std::path::{Path, PathBuf};

fn packaging(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../packaging/agent")
        .join(file)
}

fn unit_values(key: &str) -> Vec<String> {
    let unit = std::fs::read_to_string(packaging("egresswatch-agent.service")).expect("the unit");
    unit.lines()
        .filter_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .map(str::to_string)
        .collect()
}

#[test]
fn packaged_config_parses_and_matches_the_unit() {
    let path = packaging("agent.toml");
    let config = AgentConfig::load(&path).expect("the packaged agent.toml is valid");

    let waits_for = unit_values("ConditionPathExists");
    for file in [&config.collector.cert, &config.collector.key] {
        assert!(
            waits_for.contains(&file.display().to_string()),
            "the unit does not wait for {}: {waits_for:?}",
            file.display()
        );
    }
    assert!(waits_for.contains(&"/etc/egresswatch-agent/agent.toml".to_string()));
    assert_eq!(
        unit_values("ExecStart"),
        ["/usr/bin/egresswatch-agent run --config /etc/egresswatch-agent/agent.toml"]
    );
    let state = unit_values("StateDirectory");
    assert_eq!(
        config.spool.dir,
        Path::new("/var/lib").join(&state[0]),
        "the spool is not the unit's StateDirectory"
    );
    // Nothing to probe configured: the built-in list; labels: detected.
    assert!(config.targets.is_empty());
}
