//! End-to-end: `egresswatch-agent check --provider` inside the network-namespace lab
//! (`lab/egresslab`, scenario `lab/scenarios/provider.toml`). The simulated mail provider is the
//! ZeptoMail preset's own names, answered by the lab's DNS only: smtp.zeptomail.com is the lab's
//! real Postfix with 465 implicit TLS and 587 STARTTLS, offering AUTH only inside TLS, and
//! api.zeptomail.com its HTTPS listener. Real nftables rules on the lab's router make the three
//! networks: open, SMTP filtered with the API open, and both filtered. Nothing leaves the lab.
//!
//! Needs root (namespaces, nftables); as a normal user, or without the lab's tools, it prints
//! why and passes without running, except under CI (`CI=true`), where a missing tool fails.

mod support;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::{run_bounded, runnable};

fn agent() -> String {
    std::env::var("EGRESSWATCH_AGENT")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_egresswatch-agent").to_string())
}

const COMMAND_LIMIT: Duration = Duration::from_secs(90);

fn egresslab() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../lab/egresslab")
}

const LAB_TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("nft", "nftables"),
    ("postfix", "postfix"),
    ("openssl", "openssl"),
    ("python3", "python3"),
];

/// A lab that is up; `Drop` tears it down, also when an assertion fails.
struct Lab {
    name: String,
    info: Value,
}

impl Lab {
    fn up(tag: char) -> Lab {
        let name = format!("ep{}{tag}", std::process::id());
        let _ = run_bounded(
            Command::new(egresslab()).args(["down", "--name", &name]),
            COMMAND_LIMIT,
        );
        let scenario = egresslab()
            .with_file_name("scenarios")
            .join("provider.toml");
        let mut lab = Lab {
            name: name.clone(),
            info: Value::Null,
        };
        let out = run_bounded(
            Command::new(egresslab())
                .arg("up")
                .arg(&scenario)
                .args(["--name", &name]),
            COMMAND_LIMIT,
        );
        assert!(
            out.status.success(),
            "egresslab up failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        lab.info = serde_json::from_slice(&out.stdout).expect("egresslab up prints JSON");
        lab
    }

    fn ca_file(&self) -> String {
        self.info["destination"]["ca_file"]
            .as_str()
            .expect("ca_file")
            .to_string()
    }

    /// `check --provider ARGS... --timeout 2s --ca-file <lab CA>` inside `host`'s namespace:
    /// (exit status, stdout, stderr).
    fn provider(&self, host: &str, args: &[&str]) -> (i32, String, String) {
        let mut cmd = Command::new(egresslab());
        cmd.args(["exec", "--name", &self.name, host, "--"]);
        cmd.args([agent().as_str(), "check"]);
        cmd.args(args);
        cmd.args(["--timeout", "2s", "--ca-file", &self.ca_file()]);
        let out = run_bounded(&mut cmd, COMMAND_LIMIT);
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The `--json` object and the exit status.
    fn provider_json(&self, host: &str, args: &[&str]) -> (i32, Value) {
        let mut all = args.to_vec();
        all.push("--json");
        let (code, stdout, stderr) = self.provider(host, &all);
        let json = serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!("check {args:?} from {host}: not JSON ({e}): {stdout} {stderr}")
        });
        (code, json)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Ok(out) = Command::new(egresslab())
            .args(["down", "--name", &self.name])
            .output()
        {
            if !out.status.success() {
                eprintln!("egresslab down: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
    }
}

/// The rows of one port, both families.
fn rows(json: &Value, port: u16) -> Vec<&Value> {
    let rows: Vec<&Value> = json["smtp"]
        .as_array()
        .expect("smtp rows")
        .iter()
        .filter(|r| r["port"] == port)
        .collect();
    assert_eq!(rows.len(), 2, "port {port}: one row per family in {json:#}");
    rows
}

/// A presets file in a temporary directory, removed on drop.
struct PresetsFile {
    dir: PathBuf,
}

impl PresetsFile {
    fn new(tag: &str, text: &str) -> PresetsFile {
        let dir = std::env::temp_dir().join(format!("ep{}{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("presets.toml"), text).expect("write presets");
        PresetsFile { dir }
    }

    fn path(&self) -> String {
        self.dir.join("presets.toml").display().to_string()
    }
}

impl Drop for PresetsFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const USER_PRESETS: &str = r#"
# The simulated provider's SMTP, with an API host whose certificate is not its own (the lab's
# badcert.lab.test: the destination's address, a certificate for mx.lab.test).
[[provider]]
name = "zepto-badapi"
title = "ZeptoMail, API behind a wrong certificate"
smtp_host = "smtp.zeptomail.com"
api_host = "badcert.lab.test"
ports = [{ port = 587, tls = "starttls" }, { port = 465, tls = "implicit" }]
source = "https://www.zoho.com/zeptomail/help/smtp-home.html"
read = "2026-12-07"

# Names the lab's DNS answers with SERVFAIL: the resolver fails, nothing can be probed.
[[provider]]
name = "unresolvable"
title = "A provider the resolver cannot find"
smtp_host = "smtp.servfail.lab.test"
api_host = "api.servfail.lab.test"
ports = [{ port = 587, tls = "starttls" }]
source = "https://lab.test/none"
read = "2026-12-07"
"#;

/// Each verdict class and its exit status; 465 implicit TLS while 587 is STARTTLS; AUTH only
/// after STARTTLS; a wrong certificate on the API is interception, not reachable.
#[test]
fn provider_verdicts_and_exit_statuses_in_the_lab() {
    if !runnable("provider_verdicts_and_exit_statuses_in_the_lab", LAB_TOOLS) {
        return;
    }
    let lab = Lab::up('a');
    let presets = PresetsFile::new("p", USER_PRESETS);

    // Open network: SMTP works. 587 is STARTTLS, 465 implicit TLS; AUTH only inside TLS.
    let (code, json) = lab.provider_json("open-1", &["--provider", "zeptomail"]);
    assert_eq!(code, 0, "{json:#}");
    assert_eq!(json["verdict"], "smtp_works");
    assert_eq!(json["exit_code"], 0);
    assert_eq!(json["recommended_port"], 587);
    assert_eq!(json["recommended_tls"], "starttls");
    assert_eq!(json["auth_only_after_tls"], true);
    assert_eq!(json["api"], "reachable");
    assert_eq!(json["api_reachable"], true);
    for row in rows(&json, 587) {
        assert_eq!(row["outcome"], "ok", "{row:#}");
        assert_eq!(row["tls_start"], "starttls");
        let before = &row["ehlo_before_tls"];
        assert_eq!(before["starttls"], true, "{row:#}");
        assert_eq!(
            before["auth"],
            serde_json::json!([]),
            "AUTH before STARTTLS: {row:#}"
        );
        assert_eq!(before["size"], 10240000);
        let after = row["ehlo_after_tls"]["auth"]
            .as_array()
            .expect("auth after TLS");
        assert!(after.iter().any(|m| m == "PLAIN"), "{row:#}");
    }
    for row in rows(&json, 465) {
        assert_eq!(row["outcome"], "ok", "{row:#}");
        assert_eq!(row["tls_start"], "implicit");
        // TLS from the first byte: there is no plain-text EHLO, and the greeting came inside TLS.
        assert!(row["ehlo_before_tls"].is_null(), "{row:#}");
        assert!(row["tls"]["version"].as_str().is_some(), "{row:#}");
        let after = row["ehlo_after_tls"]["auth"]
            .as_array()
            .expect("auth inside TLS");
        assert!(after.iter().any(|m| m == "LOGIN"), "{row:#}");
    }
    let sentences = json["sentences"].to_string();
    assert!(
        sentences.contains("configure smtp.zeptomail.com port 587 (STARTTLS)"),
        "{sentences}"
    );
    assert!(
        sentences.contains("only after STARTTLS on 587 and inside TLS on 465, never in plain text"),
        "{sentences}"
    );

    // SMTP filtered (465 and 587 dropped), the API open: the way out, exit 3.
    let (code, json) = lab.provider_json("api-1", &["--provider", "zeptomail"]);
    assert_eq!(code, 3, "{json:#}");
    assert_eq!(json["verdict"], "api_only");
    assert!(json["recommended_port"].is_null());
    assert_eq!(json["api"], "reachable");
    for port in [465, 587] {
        for row in rows(&json, port) {
            assert_eq!(row["outcome"], "timeout", "{row:#}");
        }
    }
    assert_eq!(
        json["sentences"][0],
        "SMTP to ZeptoMail (Zoho) is filtered on this network (465 and 587 time out while 443 \
         answers); its HTTPS API api.zeptomail.com answers: send over the API, or ask your \
         provider to lift the block."
    );

    // Both filtered (443 reset too): neither, exit 1.
    let (code, json) = lab.provider_json("closed-1", &["--provider", "zeptomail"]);
    assert_eq!(code, 1, "{json:#}");
    assert_eq!(json["verdict"], "neither");
    assert_eq!(json["api"], "unreachable");
    for row in json["api_probes"].as_array().expect("api probes") {
        assert_eq!(row["outcome"], "refused", "{row:#}");
    }

    // The API answers with a certificate that is not its own: interception, not reachable.
    let bad = ["--provider", "zepto-badapi", "--presets", &presets.path()];
    let (code, json) = lab.provider_json("open-1", &bad);
    assert_eq!(code, 0, "SMTP still works: {json:#}");
    assert_eq!(json["api"], "intercepted");
    assert_eq!(json["api_reachable"], false);
    for row in json["api_probes"].as_array().expect("api probes") {
        assert_eq!(row["outcome"], "tls_failed", "{row:#}");
    }
    let (code, json) = lab.provider_json("api-1", &bad);
    assert_eq!(
        code, 1,
        "SMTP filtered and the API intercepted is no way out: {json:#}"
    );
    assert_eq!(json["verdict"], "neither");
    assert!(
        json["sentences"]
            .to_string()
            .contains("is not reachable as itself"),
        "{json:#}"
    );

    // The resolver fails for every name: the check could not run, exit 2.
    let unresolvable = ["--provider", "unresolvable", "--presets", &presets.path()];
    let (code, json) = lab.provider_json("open-1", &unresolvable);
    assert_eq!(code, 2, "{json:#}");
    assert_eq!(json["verdict"], "could_not_run");

    // Bad arguments: exit 2 with a message, nothing probed.
    let (code, stdout, stderr) = lab.provider("open-1", &["--provider", "zeptomial"]);
    assert_eq!(code, 2, "{stdout}");
    assert!(
        stderr.contains("no mail-provider preset \"zeptomial\""),
        "{stderr}"
    );
    let (code, _, stderr) = lab.provider("open-1", &["--provider", "zeptomail", "--port", "25"]);
    assert_eq!(code, 2, "{stderr}");
    let (code, stdout, _) = lab.provider("open-1", &["--provider", "list"]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("zeptomail  ZeptoMail (Zoho)")
            && stdout.contains("source https://www.zoho.com/zeptomail/help/smtp-home.html"),
        "{stdout}"
    );
}
