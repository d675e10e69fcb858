//! Several real collectors on one real PostgreSQL (a throwaway cluster started here), with
//! simulated agents spread over them that fail over as the real agent does: the leader SIGKILLed
//! as one account's 587 closes still gives exactly one event and one webhook delivery (a follower
//! takes over and decides it), and a leader killed after it recorded the reopen leaves its
//! successor nothing to repeat; an agent moved from one collector to another mid-stream (its first one
//! killed before acking) is stored exactly once; PostgreSQL stopped for a minute and started
//! again loses and doubles nothing while the page says the store is unavailable.

use axum::routing::post;
use axum::{Json, Router};
use egresswatch_sim::postgres::PgCluster;
use egresswatch_sim::{client_config, client_endpoint, result_of, Credentials, SimAgent};
use egresswatch_wire::{CollectorMessage, Labels, Outcome, ProbeResult};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod support;
use support::{issue, skip, spawn_collector, write_collector_config, Listening, Proc};

const TARGET: &str = "mx.lab.test";

/// A webhook receiver on loopback: every body it was sent.
type Inbox = Arc<Mutex<Vec<Value>>>;

async fn webhook() -> (SocketAddr, Inbox) {
    slow_webhook(Duration::ZERO).await
}

/// The same, answering each body `delay` after it arrived (a delivery is in flight meanwhile).
async fn slow_webhook(delay: Duration) -> (SocketAddr, Inbox) {
    let inbox: Inbox = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let kept = inbox.clone();
    let app = Router::new().route(
        "/hook",
        post(move |Json(v): Json<Value>| {
            let inbox = kept.clone();
            async move {
                inbox.lock().unwrap().push(v);
                tokio::time::sleep(delay).await;
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, inbox)
}

/// One collector of the cluster: its dir, its process and where it listens.
struct Node {
    name: String,
    dir: PathBuf,
    proc: Option<Proc>,
    at: Listening,
}

impl Node {
    /// Starts `name` in `tmp/name` on `pg`, sharing the fleet CA in `ca` (copied in before it
    /// starts, so every collector trusts the same agents).
    fn start(
        tmp: &Path,
        name: &str,
        pg: &PgCluster,
        ca: Option<&Path>,
        hook: Option<SocketAddr>,
    ) -> Node {
        let dir = tmp.join(name);
        std::fs::create_dir_all(dir.join("data")).unwrap();
        if let Some(ca) = ca {
            copy_dir(ca, &dir.join("data/ca"));
        }
        let alerts = hook
            .map(|h| {
                format!(
                    "[[alerts]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"http://{h}/hook\"\nretries = 1\n\
                     [[alerts.match]]\nports = [587]\n"
                )
            })
            .unwrap_or_default();
        let rest = format!(
            "[store]\nkind = \"postgres\"\nurl = {url:?}\nconnect_timeout_secs = 2\n\
             [cluster]\nid = {name:?}\nheartbeat_secs = 1\n\
             [detector]\nfalse_alarm_rate = 0.001\nsettle_secs = 20\nsilent_after_secs = 120\n\
             {alerts}",
            url = pg.url()
        );
        let config = write_collector_config(
            &dir,
            "listen = \"127.0.0.1:0\"",
            "listen = \"127.0.0.1:0\"",
            &rest,
        );
        let (child, at) = spawn_collector(&config, &dir.join("collector.log"), Some("info"));
        Node {
            name: name.to_string(),
            dir,
            proc: Some(Proc(child)),
            at,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.at.http)
    }

    fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            let _ = p.0.kill();
            let _ = p.0.wait();
        }
    }

    fn alive(&self) -> bool {
        self.proc.is_some()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("collector.log")).unwrap_or_default()
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

async fn get_text(url: &str) -> Option<String> {
    let resp = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(3))
        .send()
        .await
        .ok()?;
    resp.text().await.ok()
}

/// A gauge's value in a collector's `/metrics`.
async fn metric(node: &Node, name: &str) -> Option<f64> {
    let text = get_text(&node.url("/metrics")).await?;
    text.lines()
        .find(|l| l.split([' ', '{']).next() == Some(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn leader(nodes: &[Node]) -> Option<usize> {
    for (i, n) in nodes.iter().enumerate() {
        if n.alive() && metric(n, "egresswatch_collector_leader").await == Some(1.0) {
            return Some(i);
        }
    }
    None
}

async fn events(node: &Node) -> Vec<Value> {
    match get_text(&node.url("/api/events?limit=1000")).await {
        Some(text) => serde_json::from_str(&text).unwrap_or_default(),
        None => Vec::new(),
    }
}

async fn wait_for<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("timed out waiting for {what}");
}

/// What one simulated agent does: a round every `every` (587 and the 443 control), reported to
/// one collector of `addrs`, failing over to the next when that one fails — resending what was
/// not acked, as the real agent's spool does.
struct AgentPlan {
    id: String,
    labels: Labels,
    creds: Credentials,
    addrs: Arc<Mutex<Vec<SocketAddr>>>,
    first: usize,
    /// While set, this agent's 587 times out.
    closed: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    every: Duration,
    /// The last sequence number produced.
    produced: Arc<AtomicU64>,
}

/// One agent's link: which collector it is on, and what is not acked yet.
struct Link {
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
    index: usize,
    session: Option<(SocketAddr, SimAgent)>,
    pending: Vec<ProbeResult>,
}

impl Link {
    /// A few tries to have everything pending acked, each on the next collector after a failure.
    async fn deliver(&mut self, plan: &AgentPlan) {
        // A collector the test killed is struck from the list at once: its agents learn of it
        // as a stateless reset or a refused connection would tell them, instead of waiting out
        // a timeout. (The real agent's own failover time is the agent's failover test's.)
        let struck = self
            .session
            .as_ref()
            .is_some_and(|(addr, _)| !plan.addrs.lock().unwrap().contains(addr));
        if struck {
            self.session = None;
        }
        for _ in 0..3 {
            if self.session.is_none() {
                let addr = {
                    let addrs = plan.addrs.lock().unwrap();
                    addrs[self.index % addrs.len()]
                };
                let (endpoint, config) = (self.endpoint.clone(), self.config.clone());
                let labels = plan.labels.clone();
                let connected = tokio::time::timeout(Duration::from_secs(3), async move {
                    let mut agent = SimAgent::connect(&endpoint, addr, config).await?;
                    match agent.hello(labels).await? {
                        CollectorMessage::Welcome(w) => {
                            Ok::<_, anyhow::Error>((agent, w.acked_seq))
                        }
                        other => anyhow::bail!("refused: {other:?}"),
                    }
                })
                .await;
                match connected {
                    Ok(Ok((agent, acked))) => {
                        self.pending.retain(|r| r.seq > acked);
                        self.session = Some((addr, agent));
                    }
                    _ => {
                        self.index += 1;
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        continue;
                    }
                }
            }
            if self.pending.is_empty() {
                return;
            }
            let Some((_, agent)) = self.session.as_mut() else {
                continue;
            };
            match tokio::time::timeout(Duration::from_secs(4), agent.report(&self.pending)).await {
                Ok(Ok(ack)) => {
                    self.pending.retain(|r| r.seq > ack.up_to_seq);
                    return;
                }
                _ => {
                    self.session = None;
                    self.index += 1;
                }
            }
        }
    }
}

async fn run_agent(plan: AgentPlan) {
    let mut link = Link {
        endpoint: client_endpoint(1 << 20).unwrap(),
        config: client_config(
            Some(&plan.creds),
            &plan.creds.ca,
            egresswatch_sim::DEFAULT_ALPN,
        )
        .unwrap(),
        index: plan.first,
        session: None,
        pending: Vec::new(),
    };
    let mut seq = 0u64;
    while !plan.stop.load(Ordering::Relaxed) {
        let now = egresswatch_collector::clock::now_unix_ms();
        for (port, fails) in [(587u16, plan.closed.load(Ordering::Relaxed)), (443, false)] {
            seq += 1;
            let outcome = if fails { Outcome::Timeout } else { Outcome::Ok };
            link.pending
                .push(result_of(seq, TARGET, port, outcome, now));
        }
        plan.produced.store(seq, Ordering::Relaxed);
        link.deliver(&plan).await;
        tokio::time::sleep(plan.every).await;
    }
    // What is still spooled goes out before the agent stops (bounded).
    for _ in 0..5 {
        if link.pending.is_empty() {
            break;
        }
        link.deliver(&plan).await;
    }
    assert!(
        link.pending.is_empty(),
        "{}: {} results never acked",
        plan.id,
        link.pending.len()
    );
    if let Some((_, agent)) = link.session {
        agent.finish().await;
    }
}

struct Fleet {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    produced: Vec<(String, Arc<AtomicU64>)>,
}

impl Fleet {
    async fn stop(self) -> Vec<(String, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            match tokio::time::timeout(Duration::from_secs(30), t).await {
                Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(_) => panic!("an agent did not stop within 30 s"),
                _ => {}
            }
        }
        self.produced
            .into_iter()
            .map(|(id, p)| (id, p.load(Ordering::Relaxed)))
            .collect()
    }
}

/// Starts agents `(id, provider, account)`, agent `i` first on collector `i % addrs.len()`.
fn start_fleet(
    tmp: &Path,
    ca: &Path,
    agents: &[(&str, &str, &str)],
    addrs: Arc<Mutex<Vec<SocketAddr>>>,
    closed: &Arc<AtomicBool>,
    every: Duration,
) -> Fleet {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    let mut produced = Vec::new();
    let certs = tmp.join("agents");
    std::fs::create_dir_all(&certs).unwrap();
    for (i, (id, provider, account)) in agents.iter().enumerate() {
        let (crt, key) = issue(ca, &certs, id);
        let creds = Credentials::from_files(&ca.join("ca.pem"), &crt, &key).unwrap();
        let counter = Arc::new(AtomicU64::new(0));
        produced.push((id.to_string(), counter.clone()));
        let closes = *account == "prod";
        let plan = AgentPlan {
            id: id.to_string(),
            labels: Labels {
                provider: provider.to_string(),
                account: account.to_string(),
                region: "r1".into(),
                instance: id.to_string(),
            },
            creds,
            addrs: addrs.clone(),
            first: i,
            closed: if closes {
                closed.clone()
            } else {
                Arc::new(AtomicBool::new(false))
            },
            stop: stop.clone(),
            every,
            produced: counter,
        };
        tasks.push(tokio::spawn(run_agent(plan)));
    }
    Fleet {
        stop,
        tasks,
        produced,
    }
}

/// Collectors `names` on `pg`, the first one's fleet CA shared by the others, alerting to
/// `hook`; returned once one of them leads, with that CA.
async fn start_cluster(
    tmp: &Path,
    pg: &PgCluster,
    names: &[&str],
    hook: SocketAddr,
) -> (Vec<Node>, PathBuf) {
    let first = Node::start(tmp, names[0], pg, None, Some(hook));
    let ca = first.dir.join("data/ca");
    let mut nodes = vec![first];
    for name in &names[1..] {
        nodes.push(Node::start(tmp, name, pg, Some(&ca), Some(hook)));
    }
    wait_for("a leader", Duration::from_secs(20), || async {
        leader(&nodes).await.is_some()
    })
    .await;
    (nodes, ca)
}

/// The collectors' QUIC addresses, as the agents' list (a test strikes one it stops).
fn quic_addrs(nodes: &[Node]) -> Arc<Mutex<Vec<SocketAddr>>> {
    Arc::new(Mutex::new(nodes.iter().map(|n| n.at.quic).collect()))
}

/// Waits until every collector's matrix shows every agent, wherever it is connected.
async fn wait_fleet_everywhere(nodes: &[Node], agents: &[(&str, &str, &str)]) {
    for node in nodes {
        wait_for(
            "the whole fleet on every collector",
            Duration::from_secs(30),
            || async {
                let text = get_text(&node.url("/api/matrix")).await.unwrap_or_default();
                agents
                    .iter()
                    .all(|(id, _, _)| text.contains(&format!("\"{id}\"")))
            },
        )
        .await;
    }
}

fn pg_or_skip(test: &str) -> Option<PgCluster> {
    match PgCluster::start() {
        Ok(pg) => Some(pg),
        Err(why) => {
            skip(test, &format!("no PostgreSQL to start: {why}"));
            None
        }
    }
}

/// Each agent's stored results are 1..=produced, each once (asked of one collector's API).
async fn assert_stored_once(node: &Node, produced: &[(String, u64)]) {
    for (agent, last) in produced {
        let url = node.url(&format!("/api/agents/{agent}/results?limit=500"));
        let text = get_text(&url).await.unwrap_or_default();
        let results: Vec<Value> = serde_json::from_str(&text).unwrap_or_default();
        let mut seqs: Vec<u64> = results.iter().filter_map(|r| r["seq"].as_u64()).collect();
        seqs.sort_unstable();
        let unique = {
            let mut u = seqs.clone();
            u.dedup();
            u
        };
        assert_eq!(seqs, unique, "{agent}: a result stored twice");
        // The API serves the newest 500: those must be the last of 1..=last, with no gap.
        let expected: Vec<u64> = (last.saturating_sub(499).max(1)..=*last).collect();
        assert_eq!(
            seqs, expected,
            "{agent}: stored results are not exactly 1..={last} (newest 500)"
        );
    }
}

fn prod_587_events(events: &[Value], to: &str) -> Vec<Value> {
    events
        .iter()
        .filter(|e| {
            e["kind"] == "policy_changed"
                && e["port"] == 587
                && e["account"] == "prod"
                && e["to"] == to
        })
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_killed_while_an_account_closes_587_gives_one_event_and_one_delivery() {
    let test = "the_leader_killed_while_an_account_closes_587_gives_one_event_and_one_delivery";
    let Some(pg) = pg_or_skip(test) else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (hook, inbox) = webhook().await;
    let (mut nodes, ca) = start_cluster(tmp.path(), &pg, &["c1", "c2", "c3"], hook).await;
    let addrs = quic_addrs(&nodes);
    let closed = Arc::new(AtomicBool::new(false));
    let agents = [
        ("p1", "aws", "prod"),
        ("p2", "aws", "prod"),
        ("p3", "aws", "prod"),
        ("d1", "aws", "dev"),
        ("d2", "aws", "dev"),
        ("g1", "gcp", "proj"),
    ];
    let fleet = start_fleet(
        tmp.path(),
        &ca,
        &agents,
        addrs.clone(),
        &closed,
        // A round every 2 s: an agent whose collector died reports again on another
        // well within one round, as it does at real intervals, so its siblings hear from it.
        Duration::from_secs(2),
    );
    wait_fleet_everywhere(&nodes, &agents).await;
    // A settled baseline; then prod's 587 closes and the leader dies at once, before it can
    // decide: a follower takes over and must decide it from what is stored.
    tokio::time::sleep(Duration::from_secs(16)).await;
    let old = leader(&nodes).await.expect("a leader");
    closed.store(true, Ordering::Relaxed);
    let killed_at = Instant::now();
    strike(&addrs, &nodes[old]);
    nodes[old].kill();
    eprintln!(
        "closed prod's 587 and killed the leader {}",
        nodes[old].name
    );
    let (new, takeover) = new_leader(&nodes, killed_at).await;
    assert_ne!(new, old);
    eprintln!(
        "{} took the lead {:.1} s after the kill",
        nodes[new].name,
        takeover.as_secs_f64()
    );
    let first_event = wait_event(&nodes[new], "blocked", killed_at).await;
    eprintln!(
        "the new leader's event is stored {:.1} s after the kill",
        first_event.as_secs_f64()
    );
    // Let any duplicate show itself, then count.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_one_event_and_delivery(&nodes, &inbox, "blocked").await;

    // Prod's 587 opens again; once the new leader has recorded that (and delivered it), it dies
    // too: the next leader replays the same results and must raise nothing twice.
    closed.store(false, Ordering::Relaxed);
    let opened_at = Instant::now();
    wait_event(&nodes[new], "open", opened_at).await;
    wait_for("the reopen delivered", Duration::from_secs(20), || async {
        deliveries(&inbox, "open").len() == 1
    })
    .await;
    let second_kill = Instant::now();
    strike(&addrs, &nodes[new]);
    nodes[new].kill();
    eprintln!(
        "killed the leader {} after it recorded the reopen",
        nodes[new].name
    );
    let (third, takeover) = new_leader(&nodes, second_kill).await;
    eprintln!(
        "{} took the lead {:.1} s after the kill",
        nodes[third].name,
        takeover.as_secs_f64()
    );
    // The third leader has replayed the whole change by now; any repeat would be in.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(
        nodes[third]
            .log()
            .contains("already recorded by an earlier leader"),
        "the replay decided the reopen again and recognised it\n{}",
        nodes[third].log()
    );
    assert_one_event_and_delivery(&nodes, &inbox, "blocked").await;
    assert_one_event_and_delivery(&nodes, &inbox, "open").await;
    let produced = fleet.stop().await;
    assert_stored_once(&nodes[third], &produced).await;

    // A graceful stop hands the lead over first, before the stopping collector drains its
    // sessions: a collector started beside it leads within a couple of seconds.
    nodes.push(Node::start(tmp.path(), "c4", &pg, Some(&ca), Some(hook)));
    let last = nodes.len() - 1;
    wait_for("c4 following", Duration::from_secs(20), || async {
        metric(&nodes[last], "egresswatch_collector_leader").await == Some(0.0)
    })
    .await;
    let stopping = Instant::now();
    if let Some(p) = &nodes[third].proc {
        p.signal("TERM");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&nodes[last], "egresswatch_collector_leader").await != Some(1.0) {
        assert!(
            Instant::now() < deadline,
            "{} did not take the lead",
            nodes[last].name
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "{} leads {:.1} s after {} was told to stop",
        nodes[last].name,
        stopping.elapsed().as_secs_f64(),
        nodes[third].name
    );
    assert!(
        stopping.elapsed() < Duration::from_secs(3),
        "the lead waited for the drain: {:?}",
        stopping.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_told_to_stop_marks_its_delivery_in_flight_and_the_next_sends_it_not_again() {
    let test = "a_leader_told_to_stop_marks_its_delivery_in_flight_and_the_next_sends_it_not_again";
    let Some(pg) = pg_or_skip(test) else { return };
    let tmp = tempfile::tempdir().unwrap();
    // The receiver answers 3 s after each body: SIGTERM comes while the delivery is in flight.
    let (hook, inbox) = slow_webhook(Duration::from_secs(3)).await;
    let (nodes, ca) = start_cluster(tmp.path(), &pg, &["c1", "c2"], hook).await;
    let addrs = quic_addrs(&nodes);
    let closed = Arc::new(AtomicBool::new(false));
    let agents = [
        ("p1", "aws", "prod"),
        ("p2", "aws", "prod"),
        ("d1", "aws", "dev"),
    ];
    let fleet = start_fleet(
        tmp.path(),
        &ca,
        &agents,
        addrs.clone(),
        &closed,
        Duration::from_secs(2),
    );
    wait_fleet_everywhere(&nodes, &agents).await;
    tokio::time::sleep(Duration::from_secs(16)).await;
    closed.store(true, Ordering::Relaxed);
    wait_for(
        "the delivery in flight",
        Duration::from_secs(60),
        || async { deliveries(&inbox, "blocked").len() == 1 },
    )
    .await;
    let old = leader(&nodes).await.expect("a leader");
    let next = 1 - old;
    let stopping = Instant::now();
    strike(&addrs, &nodes[old]);
    if let Some(p) = &nodes[old].proc {
        p.signal("TERM");
    }
    wait_for("the lead to move", Duration::from_secs(20), || async {
        metric(&nodes[next], "egresswatch_collector_leader").await == Some(1.0)
    })
    .await;
    eprintln!(
        "{} leads {:.1} s after {} was told to stop with a delivery in flight",
        nodes[next].name,
        stopping.elapsed().as_secs_f64(),
        nodes[old].name
    );
    // The new leader has resumed whatever was pending by now; a repeat would be in.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let sent = deliveries(&inbox, "blocked");
    assert_eq!(
        sent.len(),
        1,
        "the delivery in flight was marked before the lead moved, not sent again: {sent:#?}\n--- {} log\n{}",
        nodes[next].name,
        nodes[next].log()
    );
    fleet.stop().await;
}

/// Takes `node` out of the agents' list (it is about to be killed).
fn strike(addrs: &Arc<Mutex<Vec<SocketAddr>>>, node: &Node) {
    addrs.lock().unwrap().retain(|a| *a != node.at.quic);
}

/// The collector that leads after `killed_at`'s kill, and how long that took.
async fn new_leader(nodes: &[Node], killed_at: Instant) -> (usize, Duration) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Some(new) = leader(nodes).await {
            return (new, killed_at.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no follower took the lead within 30 s");
}

/// Waits for prod's 587 event to `to` in `node`'s `/api/events`; how long after `since`.
async fn wait_event(node: &Node, to: &str, since: Instant) -> Duration {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if !prod_587_events(&events(node).await, to).is_empty() {
            return since.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("no event for prod's 587 to {to}\n--- log\n{}", node.log());
}

fn deliveries(inbox: &Inbox, to: &str) -> Vec<Value> {
    inbox
        .lock()
        .unwrap()
        .iter()
        .filter(|b| b["account"] == "prod" && b["port"] == 587 && b["to"] == to)
        .cloned()
        .collect()
}

async fn assert_one_event_and_delivery(nodes: &[Node], inbox: &Inbox, to: &str) {
    for node in nodes.iter().filter(|n| n.alive()) {
        let found = prod_587_events(&events(node).await, to);
        if found.len() != 1 {
            for n in nodes.iter().filter(|n| n.alive()) {
                let log = n.log();
                let lines: Vec<&str> = log
                    .lines()
                    .filter(|l| l.contains("event") || l.contains("lead"))
                    .collect();
                eprintln!("--- {} log (events, lead)\n{}", n.name, lines.join("\n"));
            }
        }
        assert_eq!(
            found.len(),
            1,
            "{}: exactly one event to {to}: {found:#?}",
            node.name
        );
        assert_eq!(found[0]["scope"], "account", "{found:#?}");
    }
    let sent = deliveries(inbox, to);
    assert_eq!(
        sent.len(),
        1,
        "one delivery per sink of the change to {to}: {sent:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_moved_mid_stream_and_a_replay_to_two_collectors_are_stored_once() {
    let test = "an_agent_moved_mid_stream_and_a_replay_to_two_collectors_are_stored_once";
    let Some(pg) = pg_or_skip(test) else { return };
    let tmp = tempfile::tempdir().unwrap();
    let first = Node::start(tmp.path(), "c1", &pg, None, None);
    let ca = first.dir.join("data/ca");
    let second = Node::start(tmp.path(), "c2", &pg, Some(&ca), None);
    let mut nodes = [first, second];
    let certs = tmp.path().join("agents");
    std::fs::create_dir_all(&certs).unwrap();
    let (crt, key) = issue(&ca, &certs, "mover");
    let creds = Credentials::from_files(&ca.join("ca.pem"), &crt, &key).unwrap();
    let endpoint = client_endpoint(1 << 20).unwrap();
    let config = client_config(Some(&creds), &creds.ca, egresswatch_sim::DEFAULT_ALPN).unwrap();
    let labels = Labels {
        provider: "aws".into(),
        account: "prod".into(),
        region: "r1".into(),
        instance: "mover".into(),
    };
    let now = egresswatch_collector::clock::now_unix_ms();
    let batch = |from: u64, to: u64| -> Vec<ProbeResult> {
        (from..=to)
            .map(|s| result_of(s, TARGET, 587, Outcome::Ok, now - 60_000 + s as i64))
            .collect()
    };
    // 1..=50 acked by c1.
    let mut a = SimAgent::connect(&endpoint, nodes[0].at.quic, config.clone())
        .await
        .unwrap();
    assert!(matches!(
        a.hello(labels.clone()).await.unwrap(),
        CollectorMessage::Welcome(_)
    ));
    assert_eq!(a.report(&batch(1, 50)).await.unwrap().up_to_seq, 50);
    // 51..=80 sent to c1, which is killed before the agent reads the ack.
    a.send(&egresswatch_wire::AgentMessage::Batch(
        egresswatch_wire::Batch::pack(
            &batch(51, 80),
            egresswatch_wire::ClockQuality::Synchronised,
            0,
        )
        .unwrap(),
    ))
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    nodes[0].kill();
    drop(a);
    // The agent moves to c2 and replays everything past the last ack it heard (50), and more.
    let mut b = SimAgent::connect(&endpoint, nodes[1].at.quic, config.clone())
        .await
        .unwrap();
    let welcome = match b.hello(labels.clone()).await.unwrap() {
        CollectorMessage::Welcome(w) => w,
        other => panic!("refused: {other:?}"),
    };
    assert!(
        welcome.acked_seq >= 50,
        "c2 knows what c1 stored: {}",
        welcome.acked_seq
    );
    let ack = b.report(&batch(51, 120)).await.unwrap();
    assert_eq!(ack.up_to_seq, 120);
    // The same replay reaching two collectors at once (an agent that switched mid-batch) is
    // stored once too.
    nodes[0] = Node::start(tmp.path(), "c1", &pg, None, None);
    let mut c = SimAgent::connect(&endpoint, nodes[0].at.quic, config.clone())
        .await
        .unwrap();
    assert!(matches!(
        c.hello(labels.clone()).await.unwrap(),
        CollectorMessage::Welcome(_)
    ));
    let replay = batch(100, 200);
    let (x, y) = tokio::join!(b.report(&replay), c.report(&replay));
    assert_eq!(x.unwrap().up_to_seq, 200);
    assert_eq!(y.unwrap().up_to_seq, 200);
    assert_stored_once(&nodes[1], &[("mover".into(), 200)]).await;
    assert_stored_once(&nodes[0], &[("mover".into(), 200)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_for_a_minute_loses_nothing_and_the_page_says_not_live() {
    let test = "postgres_stopped_for_a_minute_loses_nothing_and_the_page_says_not_live";
    let Some(mut pg) = pg_or_skip(test) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let first = Node::start(tmp.path(), "c1", &pg, None, None);
    let ca = first.dir.join("data/ca");
    let nodes = vec![first, Node::start(tmp.path(), "c2", &pg, Some(&ca), None)];
    let addrs = Arc::new(Mutex::new(
        nodes.iter().map(|n| n.at.quic).collect::<Vec<_>>(),
    ));
    let closed = Arc::new(AtomicBool::new(false));
    let agents = [
        ("s1", "aws", "dev"),
        ("s2", "aws", "dev"),
        ("s3", "gcp", "proj"),
    ];
    let fleet = start_fleet(
        tmp.path(),
        &ca,
        &agents,
        addrs,
        &closed,
        Duration::from_secs(1),
    );
    wait_for("results stored", Duration::from_secs(30), || async {
        let text = get_text(&nodes[1].url("/api/matrix"))
            .await
            .unwrap_or_default();
        agents
            .iter()
            .all(|(id, _, _)| text.contains(&format!("\"{id}\"")))
    })
    .await;
    pg.stop().unwrap();
    for node in &nodes {
        wait_for(
            "the page to say the store is unavailable",
            Duration::from_secs(15),
            || async {
                let text = get_text(&node.url("/api/matrix")).await.unwrap_or_default();
                serde_json::from_str::<Value>(&text).is_ok_and(|m| m["store"]["since"].is_string())
            },
        )
        .await;
    }
    tokio::time::sleep(Duration::from_secs(60)).await;
    for node in &nodes {
        assert!(node.alive(), "{} kept running", node.name);
    }
    pg.start_again().unwrap();
    for node in &nodes {
        wait_for(
            "the page to be live again",
            Duration::from_secs(30),
            || async {
                let text = get_text(&node.url("/api/matrix")).await.unwrap_or_default();
                serde_json::from_str::<Value>(&text).is_ok_and(|m| m.get("store").is_none())
            },
        )
        .await;
    }
    // Let the agents' spooled rounds drain, then stop them and check every result once.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let produced = fleet.stop().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_stored_once(&nodes[0], &produced).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_asks_for_evidence_an_agent_connected_to_another_collector() {
    let test = "the_leader_asks_for_evidence_an_agent_connected_to_another_collector";
    let Some(pg) = pg_or_skip(test) else { return };
    let tmp = tempfile::tempdir().unwrap();
    let first = Node::start(tmp.path(), "c1", &pg, None, None);
    let ca = first.dir.join("data/ca");
    let nodes = vec![first, Node::start(tmp.path(), "c2", &pg, Some(&ca), None)];
    wait_for("a leader", Duration::from_secs(20), || async {
        leader(&nodes).await.is_some()
    })
    .await;
    let lead = leader(&nodes).await.expect("a leader");
    let other = 1 - lead;
    let certs = tmp.path().join("agents");
    std::fs::create_dir_all(&certs).unwrap();
    let endpoint = client_endpoint(1 << 20).unwrap();
    let connect = |id: &'static str, at: SocketAddr| {
        let (crt, key) = issue(&ca, &certs, id);
        let creds = Credentials::from_files(&ca.join("ca.pem"), &crt, &key).unwrap();
        let config = client_config(Some(&creds), &creds.ca, egresswatch_sim::DEFAULT_ALPN).unwrap();
        let endpoint = endpoint.clone();
        async move {
            let mut agent = SimAgent::connect(&endpoint, at, config).await.unwrap();
            let labels = Labels {
                provider: "aws".into(),
                account: "prod".into(),
                region: "r1".into(),
                instance: id.into(),
            };
            let hello = egresswatch_sim::hello_probing(labels, &[(TARGET, &[587])], 2, true);
            match agent.hello_with(hello).await.unwrap() {
                CollectorMessage::Welcome(_) => agent,
                refused => panic!("{id}: {refused:?}"),
            }
        }
    };
    // The suspect reports to the leader; the witness is connected to the other collector only.
    let mut suspect = connect("suspect", nodes[lead].at.quic).await;
    let mut witness = connect("witness", nodes[other].at.quic).await;
    // The leader learns of the witness's session from what its collector publishes.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let now = egresswatch_collector::clock::now_unix_ms();
    let settled: Vec<_> = (1..=6)
        .map(|s| result_of(s, TARGET, 587, Outcome::Ok, now - 7_000 + s as i64 * 1_000))
        .collect();
    suspect.report(&settled).await.unwrap();
    // Let the leader read the settled series from the feed before the departure.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let departing = result_of(
        7,
        TARGET,
        587,
        Outcome::Timeout,
        egresswatch_collector::clock::now_unix_ms(),
    );
    suspect.report(&[departing]).await.unwrap();
    let request = witness
        .next_request(Duration::from_secs(15))
        .await
        .unwrap()
        .unwrap_or_else(|| {
            panic!(
                "the witness on the other collector was not asked\n--- leader log\n{}",
                nodes[lead].log()
            )
        });
    assert_eq!((request.target.as_str(), request.port), (TARGET, 587));
    // Its answer, stored through its own collector, reaches the leader's fan-out like any result.
    let ack = witness
        .answer(
            1,
            &request,
            Outcome::Ok,
            egresswatch_collector::clock::now_unix_ms(),
        )
        .await
        .unwrap();
    assert_eq!(ack.accepted, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_refuses_a_database_schema_newer_than_it_knows() {
    let test = "a_collector_refuses_a_database_schema_newer_than_it_knows";
    let Some(pg) = pg_or_skip(test) else { return };
    let tmp = tempfile::tempdir().unwrap();
    // A first start migrates the database; then a newer collector's migration is recorded.
    let mut first = Node::start(tmp.path(), "c1", &pg, None, None);
    first.kill();
    let url = pg.url();
    tokio::task::spawn_blocking(move || {
        let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        client
            .execute("INSERT INTO schema_version (version) VALUES (999)", &[])
            .unwrap();
    })
    .await
    .unwrap();
    let config = first.dir.join("collector.toml");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(support::collector_bin())
            .args(["run", "--config"])
            .arg(&config)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(!out.status.success(), "it must not start");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("database schema version 999 is newer than this collector knows"),
        "a clear error naming both versions: {stderr}"
    );
}
