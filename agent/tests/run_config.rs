//! `egresswatch-agent run` refuses a config whole and early: a value out of its range, or a probe
//! source address or interface this host does not have, is an error naming the key, and the
//! agent exits before it has written anything to disk (no spool directory, no file).

use std::path::Path;
use std::process::Command;

/// A config whose spool is `dir/spool`, plus `extra` at the end.
fn config(dir: &Path, extra: &str) -> String {
    format!(
        "[collector]\naddress = \"127.0.0.1:9\"\nca = \"{d}/ca.pem\"\ncert = \"{d}/a.crt\"\nkey = \"{d}/a.key\"\n\
         [identity]\nmetadata = false\ndmi_dir = \"{d}/no-dmi\"\n\
         [spool]\ndir = \"{d}/spool\"\n{extra}",
        d = dir.display()
    )
}

/// Runs the agent on `extra`'s config; returns its exit code and stderr, after checking that
/// the work directory holds nothing but the config.
fn refused(extra: &str) -> (Option<i32>, String) {
    // Not under /tmp: the agent refuses a spool there, which would hide what is tested.
    let dir = tempfile::Builder::new()
        .prefix("ew-runconfig-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, config(dir.path(), extra)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_egresswatch-agent"))
        .args(["run", "--config"])
        .arg(&path)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        left,
        vec!["agent.toml".to_string()],
        "a refused config writes nothing; stderr:\n{stderr}"
    );
    (out.status.code(), stderr)
}

#[test]
fn an_out_of_range_setting_is_refused_naming_it_before_anything_is_written() {
    let (code, stderr) = refused("[probe]\nconcurrency = 9223372036854775807\n");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("probe.concurrency must be 1 to 1024"),
        "{stderr}"
    );
    let (code, stderr) = refused("[probe]\ntimeout = \"10ms\"\n");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("probe.timeout"), "{stderr}");
}

#[test]
fn a_source_address_or_interface_the_host_lacks_is_refused_at_start() {
    // 198.18.0.0/15 is for tests: no host of ours has this address.
    let (code, stderr) = refused("[probe]\nsource = [\"198.18.0.77\"]\n");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("probe.source 198.18.0.77: not usable on this host"),
        "{stderr}"
    );
    let (code, stderr) = refused("[probe]\ninterface = \"ew-none0\"\n");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("probe.interface \"ew-none0\": no such network interface"),
        "{stderr}"
    );
}
