//! The collector's packaged configuration (packaging/collector/collector.toml, the package's
//! conffile) is a valid config whose data_dir is the packaged unit's StateDirectory, and which
//! keeps the defaults' listeners (the dashboard on loopback: no token needed).

use egresswatch_collector::config::Config;
use std::path::{Path, PathBuf};

fn packaging(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../packaging/collector")
        .join(file)
}

#[test]
fn packaged_config_parses_and_matches_the_unit() {
    let text = std::fs::read_to_string(packaging("collector.toml")).expect("collector.toml");
    let config = Config::parse(&text).expect("the packaged collector.toml is valid");
    let unit = std::fs::read_to_string(packaging("egresswatch-collector.service")).expect("unit");
    let state = unit
        .lines()
        .find_map(|l| l.strip_prefix("StateDirectory="))
        .expect("StateDirectory=");
    assert_eq!(config.data_dir, Path::new("/var/lib").join(state));
    assert!(unit.contains(
        "\nExecStart=/usr/bin/egresswatch-collector run --config /etc/egresswatch-collector/collector.toml\n"
    ));
    let defaults = Config::default();
    assert_eq!(config.quic.listen, defaults.quic.listen);
    assert_eq!(config.http.listen, defaults.http.listen);
    assert!(config.http.listen.ip().is_loopback());
}
