//! Signed feed snapshots between two real collectors on loopback (docs/feed.md): one exports
//! and serves its snapshot, the other imports it over HTTPS (rustls, a test CA) and shows it on
//! `/api/matrix` beside its own fleet's observation, marking the disagreement. A tampered
//! snapshot, a wrong key, garbage, an oversized file and an older snapshot replayed after a
//! newer one are each refused with their reason and never shown. The export of a fleet whose
//! labels hold names, ids and addresses contains none of them, cells seen by fewer than `k`
//! accounts are absent, and the reference `minisign` tool accepts the signature.

use egresswatch_collector::feed::sign::{key_id, parse_public_key};
use egresswatch_collector::identity::AgentMeta;
use egresswatch_collector::store::{sqlite::SqliteStore, Store};
use egresswatch_wire::{Family, Labels, Outcome, ProbeResult};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

mod support;
use support::{collector_bin, spawn_collector, wait_until, write_collector_config, Proc};

/// One agent of a test fleet: (agent id, provider, account, region, instance).
type Member = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
);

/// The publisher's fleet: four accounts on hetzner/fsn1 (blocked on 25, open on 587 to a mail
/// provider's host) and two on ovh/gra (below k = 3). Every label but the provider and region
/// codes names someone or something.
const PUBLISHER: &[Member] = &[
    (
        "agent-alice-laptop",
        "hetzner",
        "acct-111122223333",
        "fsn1",
        "web-1.alice.internal",
    ),
    (
        "agent-bob-7f3a9c",
        "hetzner",
        "ops@bobcorp.example",
        "fsn1",
        "10.9.8.7",
    ),
    (
        "agent-carol-02",
        "hetzner",
        "team-carol-prod",
        "fsn1",
        "carol-mail-vm",
    ),
    (
        "agent-dave-03",
        "hetzner",
        "k8s-dave-cluster",
        "fsn1",
        "2001:db8::dave",
    ),
    (
        "agent-dave-04",
        "hetzner",
        "k8s-dave-cluster",
        "fsn1",
        "dave-second-node",
    ),
    (
        "agent-erin-05",
        "ovh",
        "ovh-erin-account",
        "gra",
        "erin.vps.example",
    ),
    (
        "agent-frank-06",
        "ovh",
        "ovh-frank-account",
        "gra",
        "198.51.100.23",
    ),
];
const SECRET_TARGET: &str = "mx.customer-secret.example";

fn meta(m: &Member) -> AgentMeta {
    AgentMeta {
        agent_id: m.0.into(),
        labels: Labels {
            provider: m.1.into(),
            account: m.2.into(),
            region: m.3.into(),
            instance: m.4.into(),
        },
        agent_version: "test".into(),
    }
}

/// Stores a few minutes of probes for `members` in `dir/data/egresswatch.db`.
fn populate(dir: &Path, members: &[Member], port25: Outcome) {
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let store = SqliteStore::open(&dir.join("data/egresswatch.db")).unwrap();
    fill(
        &store,
        members,
        port25,
        egresswatch_collector::clock::now_unix_ms(),
    );
    store.close();
}

/// Stores the four minutes of probes before `now` for `members` in `store`.
fn fill(store: &dyn Store, members: &[Member], port25: Outcome, now: i64) {
    for m in members {
        let agent = meta(m);
        store.upsert_agent(&agent, now).unwrap();
        let outcome_25 = if m.1 == "ovh" { Outcome::Ok } else { port25 };
        let mut results = Vec::new();
        let mut seq = 1;
        for step in 0..5i64 {
            let at = now - 240_000 + step * 60_000;
            for (target, port, outcome) in [
                (SECRET_TARGET, 25u16, outcome_25),
                ("smtp.sendgrid.net", 587, Outcome::Ok),
            ] {
                for family in [Family::Ipv4, Family::Ipv6] {
                    results.push(ProbeResult {
                        seq,
                        at_unix_ms: at,
                        target: target.into(),
                        port,
                        family,
                        outcome,
                        detail: format!("{target} from {}", m.4),
                        ..Default::default()
                    });
                    seq += 1;
                }
            }
        }
        store
            .insert_results(m.0, results, true.into(), now)
            .unwrap();
    }
}

fn feed(args: &[&str]) -> (bool, String) {
    let out = Command::new(collector_bin())
        .arg("feed")
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn export(config: &Path, out: &Path) -> (Vec<u8>, String) {
    let (ok, text) = feed(&[
        "export",
        "--config",
        config.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "feed export: {text}");
    (
        std::fs::read(out.join("snapshot.json")).unwrap(),
        std::fs::read_to_string(out.join("snapshot.json.minisig")).unwrap(),
    )
}

fn write_pair(path: &Path, bytes: &[u8], sig: &str) {
    std::fs::write(path, bytes).unwrap();
    let mut sig_path = path.as_os_str().to_owned();
    sig_path.push(".minisig");
    std::fs::write(PathBuf::from(sig_path), sig).unwrap();
}

/// A loopback HTTPS server under a test CA that forwards `GET /feed/…` to the publishing
/// collector's plain HTTP listener (the TLS-terminating proxy its docs put in front of it).
/// Returns its address and the CA's PEM.
fn tls_terminator(
    rt: &tokio::runtime::Runtime,
    upstream: std::net::SocketAddr,
) -> (std::net::SocketAddr, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    leaf_params.subject_alt_names = vec![SanType::IpAddress([127, 0, 0, 1].into())];
    let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![CertificateDer::from(leaf.der().to_vec())],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(async move {
        let client = reqwest::Client::new();
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let (acceptor, client) = (acceptor.clone(), client.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16_384 {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head);
                let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                let (status, body) = match client.get(format!("http://{upstream}{path}")).send().await {
                    Ok(r) => (r.status().as_u16(), r.bytes().await.unwrap_or_default().to_vec()),
                    Err(_) => (502, Vec::new()),
                };
                let _ = tls
                    .write_all(format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()).as_bytes())
                    .await;
                let _ = tls.write_all(&body).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (addr, ca.pem())
}

fn get_json(rt: &tokio::runtime::Runtime, url: &str) -> Value {
    rt.block_on(async {
        reqwest::get(url)
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    })
}

#[test]
fn two_collectors_publish_import_and_refuse() {
    let tmp = tempfile::tempdir().unwrap();
    let (a_dir, b_dir, files) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("files"),
    );
    for d in [&a_dir, &b_dir, &files] {
        std::fs::create_dir_all(d).unwrap();
    }
    let rt = tokio::runtime::Runtime::new().unwrap();

    // The publisher's key and fleet, exported twice (the first becomes the "old" snapshot).
    let (ok, text) = feed(&[
        "key",
        "create",
        "--dir",
        a_dir.join("keys").to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    let key_line = text
        .lines()
        .find_map(|l| l.strip_prefix("public key line for [[feed.import]] keys: "))
        .unwrap()
        .trim()
        .to_string();
    let a_key_id = key_id(&parse_public_key(&key_line).unwrap());
    let (ok, text) = feed(&[
        "key",
        "create",
        "--dir",
        files.join("other").to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    let other_line = text
        .lines()
        .find_map(|l| l.strip_prefix("public key line for [[feed.import]] keys: "))
        .unwrap()
        .trim()
        .to_string();
    populate(&a_dir, PUBLISHER, Outcome::Timeout);
    let feed_section = format!(
        "[feed]\nname = \"publisher-a\"\nkey = {:?}\n[feed.publish]\nenabled = true\nevery_secs = 3600\n",
        a_dir.join("keys/feed.key")
    );
    let a_config = write_collector_config(
        &a_dir,
        "listen = \"127.0.0.1:0\"",
        "listen = \"127.0.0.1:0\"",
        &feed_section,
    );
    let (old_bytes, old_sig) = export(&a_config, &files.join("old"));
    std::thread::sleep(Duration::from_millis(20));
    let (bytes, sig) = export(&a_config, &files.join("new"));

    // What is published: hetzner's cells (4 accounts), nothing of ovh (2), no label value.
    let snapshot: Value = serde_json::from_slice(&bytes).unwrap();
    let cells = snapshot["cells"].as_array().unwrap();
    assert!(!cells.is_empty());
    assert!(
        cells.iter().all(|c| c["provider"] == "hetzner"),
        "{snapshot:#}"
    );
    assert!(cells.iter().all(|c| c["accounts"].as_u64().unwrap() >= 3));
    assert!(cells.iter().any(|c| c["port"] == 25
        && c["destination"] == "any"
        && c["status"] == "blocked"
        && c["accounts"] == 4
        && c["agents"] == 5));
    assert!(cells
        .iter()
        .any(|c| c["port"] == 587 && c["destination"] == "sendgrid" && c["status"] == "open"));
    let text = String::from_utf8(bytes.clone()).unwrap();
    for m in PUBLISHER {
        for value in [m.0, m.2, m.4] {
            assert!(!text.contains(value), "{value:?} is in the export:\n{text}");
        }
    }
    for value in [SECRET_TARGET, "smtp.sendgrid.net", "ovh", "gra"] {
        assert!(!text.contains(value), "{value:?} is in the export:\n{text}");
    }

    // The reference tool accepts the signature; so does `feed verify`, and not with another key.
    match Command::new("minisign")
        .args(["-V", "-p"])
        .arg(a_dir.join("keys/feed.pub"))
        .arg("-m")
        .arg(files.join("new/snapshot.json"))
        .output()
    {
        Ok(out) => assert!(
            out.status.success(),
            "minisign -V: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => support::skip("minisign -V", &format!("minisign is not installed: {e}")),
    }
    let snap_path = files.join("new/snapshot.json");
    let (ok, text) = feed(&[
        "verify",
        "--pubkey",
        a_dir.join("keys/feed.pub").to_str().unwrap(),
        "--snapshot",
        snap_path.to_str().unwrap(),
    ]);
    assert!(ok && text.contains(&a_key_id), "{text}");
    let (ok, text) = feed(&[
        "verify",
        "--pubkey",
        &other_line,
        "--snapshot",
        snap_path.to_str().unwrap(),
    ]);
    assert!(!ok && text.contains("unknown key"), "{text}");

    // Collector A serves its snapshot (no token, public by design) behind a TLS terminator.
    let (a_child, a_at) = spawn_collector(&a_config, &a_dir.join("collector.log"), Some("info"));
    let _a = Proc(a_child);
    let served = rt.block_on(async {
        let sig = reqwest::get(format!("http://{}/feed/snapshot.json.minisig", a_at.http))
            .await
            .unwrap();
        assert_eq!(sig.status(), 200);
        sig.text().await.unwrap()
    });
    assert!(
        served.contains("egresswatch feed publisher-a snapshot"),
        "{served}"
    );
    // `feed export` while the collector runs on the same SQLite file: the same cells.
    let (live_bytes, _) = export(&a_config, &files.join("live"));
    let live: Value = serde_json::from_slice(&live_bytes).unwrap();
    assert_eq!(live["cells"], snapshot["cells"]);
    let (tls_at, ca_pem) = tls_terminator(&rt, a_at.http);
    std::fs::write(files.join("ca.pem"), &ca_pem).unwrap();

    // The files B imports besides A's URL.
    let mut tampered = bytes.clone();
    let at = text_position(&tampered, b"\"blocked\"");
    tampered[at + 1..at + 8].copy_from_slice(b"partial");
    write_pair(&files.join("tampered.json"), &tampered, &sig);
    write_pair(&files.join("wrongkey.json"), &bytes, &sig);
    write_pair(
        &files.join("garbage.json"),
        b"\x00\x01not a snapshot\xff",
        "not a signature",
    );
    assert!(bytes.len() > 1024, "the snapshot is {} bytes", bytes.len());
    write_pair(&files.join("oversized.json"), &bytes, &sig);
    write_pair(&files.join("replay.json"), &bytes, &sig);

    // Collector B: its own fleet sees hetzner's 25 open; it imports A and the bad files.
    populate(
        &b_dir,
        &[("b-own-agent", "hetzner", "b-own-account", "nbg1", "b-host")],
        Outcome::Ok,
    );
    let import = |name: &str, source: String, key: &str, extra: &str| {
        format!("[[feed.import]]\nname = \"{name}\"\n{source}\nkeys = [\"{key}\"]\nevery_secs = 1\n{extra}\n")
    };
    let file = |name: &str| format!("file = {:?}", files.join(format!("{name}.json")));
    let b_feed = [
        import(
            "peer",
            format!(
                "url = \"https://{tls_at}/feed/snapshot.json\"\nca_file = {:?}",
                files.join("ca.pem")
            ),
            &key_line,
            "",
        ),
        import("tampered", file("tampered"), &key_line, ""),
        import("wrongkey", file("wrongkey"), &other_line, ""),
        import("garbage", file("garbage"), &key_line, ""),
        import(
            "oversized",
            file("oversized"),
            &key_line,
            "max_bytes = 1024",
        ),
        import("replay", file("replay"), &key_line, ""),
        // The same server without its CA: its certificate is not trusted, nothing is fetched.
        import(
            "untrusted",
            format!("url = \"https://{tls_at}/feed/snapshot.json\""),
            &key_line,
            "",
        ),
    ]
    .concat();
    let b_config = write_collector_config(
        &b_dir,
        "listen = \"127.0.0.1:0\"",
        "listen = \"127.0.0.1:0\"",
        &b_feed,
    );
    let (b_child, b_at) = spawn_collector(&b_config, &b_dir.join("collector.log"), Some("info"));
    let _b = Proc(b_child);
    let matrix_url = format!("http://{}/api/matrix", b_at.http);
    let feed_state = |m: &Value, name: &str| -> Value {
        m["feeds"]
            .as_array()
            .and_then(|f| f.iter().find(|x| x["feed"] == name).cloned())
            .unwrap_or(Value::Null)
    };
    let mut m = Value::Null;
    let all_judged = wait_until(Duration::from_secs(30), || {
        m = get_json(&rt, &matrix_url);
        ["peer", "replay"]
            .iter()
            .all(|n| feed_state(&m, n)["snapshot_at"].is_string())
            && ["tampered", "wrongkey", "garbage", "oversized"]
                .iter()
                .all(|n| feed_state(&m, n)["refused"].is_object())
    });
    assert!(
        all_judged,
        "feeds not judged within 30 s: {:#}\n{}",
        m["feeds"],
        std::fs::read_to_string(b_dir.join("collector.log")).unwrap_or_default()
    );
    for (name, kind) in [
        ("tampered", "bad_signature"),
        ("wrongkey", "unknown_key"),
        ("garbage", "garbage"),
        ("oversized", "oversized"),
    ] {
        let refused = &feed_state(&m, name)["refused"];
        assert_eq!(refused["kind"], kind, "{name}: {refused}");
        assert!(
            feed_state(&m, name)["snapshot_at"].is_null(),
            "{name} was accepted"
        );
    }
    assert!(feed_state(&m, "untrusted")["snapshot_at"].is_null());
    let why = feed_state(&m, "untrusted")["unreachable"]["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(why.contains(&tls_at.to_string()), "{why}");
    assert_eq!(feed_state(&m, "peer")["key_id"], a_key_id.as_str());
    assert_eq!(feed_state(&m, "peer")["publisher"], "publisher-a");

    // Hetzner's 25 on B: open here, blocked by 4 accounts of the peer feed — marked.
    let hetzner = m["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["provider"] == "hetzner")
        .unwrap()
        .clone();
    let cell = &hetzner["cells"]["25"];
    assert_eq!(cell["status"], "open", "{cell:#}");
    let elsewhere = cell["elsewhere"].as_array().unwrap();
    let peer = elsewhere.iter().find(|e| e["feed"] == "peer").unwrap();
    assert_eq!(peer["status"], "blocked");
    assert_eq!(peer["accounts"], 4);
    assert_eq!(peer["key_id"], a_key_id.as_str());
    assert!(peer["snapshot_at"].is_string());
    assert!(
        elsewhere
            .iter()
            .all(|e| e["feed"] == "peer" || e["feed"] == "replay"),
        "a refused feed is shown: {elsewhere:?}"
    );
    assert_eq!(cell["elsewhere_disagrees"], true);
    assert!(
        cell["elsewhere_note"]
            .as_str()
            .unwrap()
            .contains("this fleet sees open, feed peer observed blocked by 4 accounts"),
        "{cell:#}"
    );
    // Existing fields unchanged; ovh (below k) nowhere.
    assert!(cell["ok"].is_u64() && cell["failed"].is_u64() && cell.get("doc").is_some());
    assert!(!serde_json::to_string(&m).unwrap().contains("\"ovh\""));

    // The page's stream carries the same fields in its matrix.
    let streamed = rt.block_on(async {
        let mut resp = reqwest::get(format!("http://{}/api/stream", b_at.http))
            .await
            .unwrap();
        let mut text = String::new();
        let read = tokio::time::timeout(Duration::from_secs(10), async {
            while let Ok(Some(chunk)) = resp.chunk().await {
                text.push_str(&String::from_utf8_lossy(&chunk));
                if text.contains("\n\n") {
                    break;
                }
            }
        });
        let _ = read.await;
        text
    });
    assert!(
        streamed.starts_with("event: matrix")
            && streamed.contains("\"elsewhere\"")
            && streamed.contains("\"feeds\""),
        "{streamed}"
    );

    // An older snapshot replayed after the newer one: refused, the newer one still shown.
    let held = feed_state(&m, "replay")["snapshot_at"].clone();
    write_pair(&files.join("replay.json"), &old_bytes, &old_sig);
    let replay_refused = wait_until(Duration::from_secs(15), || {
        m = get_json(&rt, &matrix_url);
        feed_state(&m, "replay")["refused"]["kind"] == "replayed"
    });
    assert!(replay_refused, "{:#}", feed_state(&m, "replay"));
    assert_eq!(feed_state(&m, "replay")["snapshot_at"], held);

    // Each refusal is counted by feed and reason.
    let metrics = rt.block_on(async {
        reqwest::get(format!("http://{}/metrics", b_at.http))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    for (feed, kind) in [
        ("tampered", "bad_signature"),
        ("wrongkey", "unknown_key"),
        ("garbage", "garbage"),
        ("oversized", "oversized"),
        ("replay", "replayed"),
    ] {
        let series = format!("egresswatch_feed_refused_total{{feed=\"{feed}\",kind=\"{kind}\"}}");
        assert!(
            metrics.lines().any(|l| l.starts_with(&series)),
            "{series} missing:\n{metrics}"
        );
    }
    // What was accepted is kept in the data dir for the next start.
    assert!(std::fs::read_dir(b_dir.join("data/feeds")).unwrap().count() >= 2);

    // To look at both collectors' pages: EGRESSWATCH_FEED_HOLD_SECS=300 (at most 3600) keeps
    // them running that long after the checks.
    if let Some(secs) = std::env::var("EGRESSWATCH_FEED_HOLD_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    {
        eprintln!(
            "holding {secs} s: importer http://{}/ publisher http://{}/ files {}",
            b_at.http,
            a_at.http,
            files.display()
        );
        std::thread::sleep(Duration::from_secs(secs.min(3600)));
    }
}

fn text_position(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("needle")
}

#[test]
fn a_publish_key_that_cannot_be_read_refuses_the_start_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let section = format!(
        "[feed]\nkey = {:?}\n[feed.publish]\nenabled = true\n",
        tmp.path().join("missing/feed.key")
    );
    let config = write_collector_config(
        tmp.path(),
        "listen = \"127.0.0.1:0\"",
        "listen = \"127.0.0.1:0\"",
        &section,
    );
    let out = Command::new(collector_bin())
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("[feed.publish] is on") && err.contains("missing/feed.key"),
        "{err}"
    );
    assert!(!tmp.path().join("data").exists(), "the data dir was made");
}

/// The snapshot is built through the store's own read methods: the memory store, SQLite and
/// PostgreSQL give the same one for the same results.
#[test]
fn the_same_snapshot_from_memory_sqlite_and_postgres() {
    use egresswatch_collector::feed::{snapshot_of, FeedConfig};
    use egresswatch_collector::store::{
        memory::MemoryStore, postgres::PostgresStore, StoreConfig, StoreKind,
    };
    let now = egresswatch_collector::clock::now_unix_ms();
    let config = FeedConfig::default();
    let memory = MemoryStore::new();
    fill(&memory, PUBLISHER, Outcome::Timeout, now);
    let from_memory = snapshot_of(&memory, &config, now).unwrap();
    assert_eq!(from_memory.cells.len(), 4, "{from_memory:#?}");

    let tmp = tempfile::tempdir().unwrap();
    let sqlite = SqliteStore::open(&tmp.path().join("s.db")).unwrap();
    fill(&sqlite, PUBLISHER, Outcome::Timeout, now);
    assert_eq!(snapshot_of(&sqlite, &config, now).unwrap(), from_memory);
    sqlite.close();

    let cluster = match egresswatch_sim::postgres::PgCluster::start() {
        Ok(c) => c,
        Err(e) => return support::skip("the PostgreSQL snapshot", &format!("no PostgreSQL: {e}")),
    };
    let pg = PostgresStore::open(&StoreConfig {
        kind: StoreKind::Postgres,
        url: Some(cluster.url()),
        pool_size: 2,
        connect_timeout_secs: 5,
        ..Default::default()
    })
    .unwrap();
    fill(&pg, PUBLISHER, Outcome::Timeout, now);
    assert_eq!(snapshot_of(&pg, &config, now).unwrap(), from_memory);
    pg.close();
}
