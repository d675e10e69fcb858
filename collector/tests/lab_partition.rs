//! A network partition between a real agent (in a lab namespace) and the real collector (in the
//! root namespace, over the lab's root link): the router drops every UDP packet of the QUIC
//! session for longer than the 30 s idle timeout, then the path heals. The agent spools, reconnects
//! and replays; the store ends with every result the agent produced, each once.
//!
//! Needs root (network namespaces, nftables); skipped with a reason otherwise.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

const SCENARIO: &str = r#"
[lab]
description = "one open VM: the partition test"
[[provider]]
name = "part"
[[provider.account]]
name = "acct"
hosts = 1
"#;

/// Longer than the 30 s idle timeout on both sides.
const PARTITION: Duration = Duration::from_secs(40);

mod support;
use support::{
    agent_bin, assert_stored_exactly_once, drain, pipe_into, read_ledger, skip_lab_test,
    wait_until, LabAgent, LabRun, Proc,
};

fn nft_in(ns: &str, script: &str) {
    let out = pipe_into("ip", &["netns", "exec", ns, "nft", "-f", "-"], script);
    assert!(
        out.status.success(),
        "nft in {ns}: {script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Agent {
    netns: String,
    config: PathBuf,
    spool: PathBuf,
    log: PathBuf,
}

impl Agent {
    fn write_config(&self, base: &str, interval: &str) {
        std::fs::write(&self.config, base.replace("INTERVAL", interval)).unwrap();
    }

    fn start(&self) -> Proc {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        // `ip netns exec` execs the agent: the child's pid is the agent's, for SIGTERM.
        Command::new("ip")
            .args(["netns", "exec", &self.netns])
            .arg(agent_bin())
            .args(["run", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .map(Proc)
            .unwrap()
    }

    fn ledger(&self) -> (u64, u64) {
        read_ledger(&self.spool)
    }

    fn wait_acked(&self, at_least: u64, within: Duration) -> bool {
        wait_until(within, || self.ledger().1 >= at_least)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

#[test]
fn a_partition_longer_than_the_idle_timeout_loses_and_doubles_nothing() {
    if skip_lab_test("a_partition_longer_than_the_idle_timeout_loses_and_doubles_nothing") {
        return;
    }
    let mut run = LabRun::up("pt", SCENARIO);
    let host = run.state["hosts"][0]["name"].as_str().unwrap().to_string();

    // The collector in the root namespace, on the root link.
    let quic_port = run.start_collector("").quic.port();

    let agent = Agent {
        netns: format!("{}-{host}", run.lab.name),
        config: run.agents_dir().join(format!("{host}.toml")),
        spool: run.work.path().join("spool"),
        log: run.work.path().join("agent.log"),
    };
    // Written twice: probing every second, then (to drain) every hour.
    let base_config = run.agent_config(
        quic_port,
        &LabAgent {
            id: &host,
            provider: "part",
            account: "acct",
            ports: &[587],
            interval: "INTERVAL",
            timeout: "2s",
            spool: &agent.spool,
        },
    );
    agent.write_config(&base_config, "1s");
    let mut running = agent.start();
    assert!(
        agent.wait_acked(3, Duration::from_secs(60)),
        "first acks; log:\n{}",
        agent.log_text()
    );

    // Partition: the router drops the session's UDP both ways (its own table, beside the lab's).
    let router = format!("{}-r", run.lab.name);
    nft_in(
        &router,
        &format!(
            "table inet ewpartition {{\n  chain cut {{\n    type filter hook forward priority -10; policy accept;\n    \
             udp dport {quic_port} drop\n    udp sport {quic_port} drop\n  }}\n}}\n"
        ),
    );
    std::thread::sleep(Duration::from_secs(2));
    let acked_in_partition = agent.ledger().1;
    std::thread::sleep(PARTITION);
    let (_, acked_after) = agent.ledger();
    assert_eq!(
        acked_after, acked_in_partition,
        "no ack can cross a partition"
    );
    nft_in(&router, "delete table inet ewpartition\n");
    let healed = Instant::now();

    // ~40 results piled up in the spool during the partition; all of them must arrive.
    assert!(
        agent.wait_acked(acked_in_partition + 30, Duration::from_secs(120)),
        "acks resumed after the partition healed; ledger {:?}; log:\n{}",
        agent.ledger(),
        agent.log_text()
    );
    eprintln!(
        "acks resumed {:.1} s after the partition healed",
        healed.elapsed().as_secs_f64()
    );
    running.terminate();
    assert!(
        agent.log_text().contains("collector connection failed"),
        "the agent saw the session die; log:\n{}",
        agent.log_text()
    );

    // Drain: restart without probing (interval of an hour) until everything is acked.
    agent.write_config(&base_config, "1h");
    let produced = drain(|| agent.start(), || agent.ledger(), Duration::from_secs(60))
        .unwrap_or_else(|| {
            panic!(
                "the agent never drained its spool: {:?}; log:\n{}",
                agent.ledger(),
                agent.log_text()
            )
        });
    for c in &mut run.lab.processes {
        let _ = c.kill();
        let _ = c.wait();
    }
    run.lab.processes.clear();
    assert_stored_exactly_once(&run.data(), &host, produced);
}
