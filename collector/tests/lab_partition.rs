//! A network partition between a real agent (in a lab namespace) and the real collector (in the
//! root namespace, over the lab's root link): the router drops every UDP packet of the QUIC
//! session for longer than the 30 s idle timeout, then the path heals. The agent spools, reconnects
//! and replays; the store ends with every result the agent produced, each once.
//!
//! Needs root (network namespaces, nftables); skipped with a reason otherwise.

use egresswatch_collector::store::{sqlite::SqliteStore, Store};
use std::collections::BTreeSet;
use std::fs::File;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
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
use support::{agent_bin, lab_up, skip_lab_test, start_collector, Lab};

fn nft_in(ns: &str, script: &str) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "nft in {ns}: {script}");
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

    fn start(&self) -> Child {
        let log = File::options()
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
            .unwrap()
    }

    fn ledger(&self) -> (u64, u64) {
        let Ok(bytes) = std::fs::read(self.spool.join("ledger")) else {
            return (0, 0);
        };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
            return (0, 0);
        };
        (
            v["next_seq"].as_u64().unwrap_or(0),
            v["acked_seq"].as_u64().unwrap_or(0),
        )
    }

    fn wait_acked(&self, at_least: u64, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.ledger().1 >= at_least {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn terminate(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("agent did not stop within 15 s of SIGTERM");
}

#[test]
fn a_partition_longer_than_the_idle_timeout_loses_and_doubles_nothing() {
    if skip_lab_test("a_partition_longer_than_the_idle_timeout_loses_and_doubles_nothing") {
        return;
    }
    let work = tempfile::Builder::new()
        .prefix("ew-part")
        .tempdir_in("/var/tmp")
        .unwrap();
    let scenario = work.path().join("partition.toml");
    std::fs::write(&scenario, SCENARIO).unwrap();
    let name = format!("pt{}", std::process::id() % 100_000);
    let mut lab = Lab::new(&name);
    let state = lab_up(&lab, &scenario, &work.path().join("lab"));
    let root_ipv4 = state["root_link"]["root_ipv4"]
        .as_str()
        .unwrap()
        .to_string();
    let host = state["hosts"][0]["name"].as_str().unwrap().to_string();

    // The collector in the root namespace, on the root link.
    let data = work.path().join("data");
    let config = work.path().join("collector.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {data:?}\n[quic]\nlisten = \"{root_ipv4}:0\"\n[http]\nlisten = \"127.0.0.1:0\"\n"
        ),
    )
    .unwrap();
    let collector = start_collector(&config, &work.path().join("collector.log"));
    let quic_port = collector.quic.port();
    lab.processes.push(collector.child);

    let agents_dir = work.path().join("agents");
    let issued = Command::new(env!("CARGO_BIN_EXE_egresswatch-collector"))
        .args(["ca", "issue", "--dir"])
        .arg(data.join("ca"))
        .arg(&host)
        .arg("--out")
        .arg(&agents_dir)
        .output()
        .unwrap();
    assert!(issued.status.success());
    let agent = Agent {
        netns: format!("{name}-{host}"),
        config: agents_dir.join(format!("{host}.toml")),
        spool: work.path().join("spool"),
        log: work.path().join("agent.log"),
    };
    let base_config = format!(
        "[collector]\naddress = \"collector.lab.test:{quic_port}\"\nca = {ca:?}\ncert = {cert:?}\nkey = {key:?}\n\
         [labels]\nprovider = \"part\"\naccount = \"acct\"\nregion = \"lab-1\"\ninstance = \"{host}\"\n\
         [[targets]]\nhost = \"mx.lab.test\"\nports = [587]\nlevel = \"connect\"\ninterval = \"INTERVAL\"\n\
         [probe]\ntimeout = \"2s\"\nmin_interval_per_destination = \"1s\"\n\
         [spool]\ndir = {spool:?}\n[identity]\nmetadata = false\n",
        ca = data.join("ca/ca.pem"),
        cert = agents_dir.join(format!("{host}.crt")),
        key = agents_dir.join(format!("{host}.key")),
        spool = agent.spool,
    );
    agent.write_config(&base_config, "1s");
    let mut running = agent.start();
    assert!(
        agent.wait_acked(3, Duration::from_secs(60)),
        "first acks; log:\n{}",
        agent.log_text()
    );

    // Partition: the router drops the session's UDP both ways (its own table, beside the lab's).
    let router = format!("{name}-r");
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
    terminate(&mut running);
    assert!(
        agent.log_text().contains("collector connection failed"),
        "the agent saw the session die; log:\n{}",
        agent.log_text()
    );

    // Drain: restart without probing (interval of an hour) until everything is acked.
    agent.write_config(&base_config, "1h");
    let mut produced = None;
    for _ in 0..4 {
        let mut drainer = agent.start();
        let deadline = Instant::now() + Duration::from_secs(60);
        std::thread::sleep(Duration::from_millis(500));
        while Instant::now() < deadline {
            let (next, acked) = agent.ledger();
            if next > 0 && acked + 1 == next {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        terminate(&mut drainer);
        let (next, acked) = agent.ledger();
        if next > 0 && acked + 1 == next {
            produced = Some(acked);
            break;
        }
    }
    let produced = produced.unwrap_or_else(|| {
        panic!(
            "the agent never drained its spool: {:?}; log:\n{}",
            agent.ledger(),
            agent.log_text()
        )
    });
    for c in &mut lab.processes {
        let _ = c.kill();
        let _ = c.wait();
    }
    lab.processes.clear();
    let store = SqliteStore::open(&data.join("egresswatch.db")).unwrap();
    let count = store.count_results(&host).unwrap();
    let seqs: BTreeSet<u64> = store
        .recent_results(&host, 1_000_000)
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    eprintln!("the agent produced {produced} results, the store holds {count}");
    assert_eq!(count, produced, "stored results vs the agent's own count");
    assert_eq!(
        seqs,
        (1..=produced).collect::<BTreeSet<u64>>(),
        "every seq once"
    );
}
