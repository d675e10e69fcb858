//! bench/compare.sh's peer configuration stays loadable: the blackbox_exporter modules that
//! bench/compare.py writes (one per probe kind and family) pass Debian's
//! `prometheus-blackbox-exporter --config.check`. No root, no network; skipped with a reason when
//! the package is missing (a failure under CI, whose .ci/run installs it).

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

const BLACKBOX: &str = "/usr/bin/prometheus-blackbox-exporter";

#[test]
fn blackbox_modules_of_the_comparison_pass_config_check() {
    if !Path::new(BLACKBOX).exists() {
        if std::env::var_os("CI").is_some() {
            panic!("{BLACKBOX} missing under CI: apt-get install -y prometheus-blackbox-exporter");
        }
        eprintln!("SKIP: {BLACKBOX} not found (apt-get install -y prometheus-blackbox-exporter)");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "not read by --config.check\n").expect("write ca");
    let config = dir.path().join("blackbox.yml");
    let made = Command::new("python3")
        .arg(repo().join("bench/compare.py"))
        .arg("blackbox-config")
        .arg(&ca)
        .arg("5")
        .arg(&config)
        .output()
        .expect("run python3");
    assert!(
        made.status.success(),
        "compare.py blackbox-config: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    let text = std::fs::read_to_string(&config).expect("read config");
    for family in ["ipv4", "ipv6"] {
        for kind in ["smtp_starttls", "smtps", "tls"] {
            assert!(
                text.contains(&format!("  {kind}_{family}:\n")),
                "module {kind}_{family} missing:\n{text}"
            );
        }
    }
    let checked = Command::new(BLACKBOX)
        .arg(format!("--config.file={}", config.display()))
        .arg("--config.check")
        .output()
        .expect("run blackbox_exporter");
    assert!(
        checked.status.success(),
        "--config.check refused the modules:\n{}\n{}\n{text}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
}
