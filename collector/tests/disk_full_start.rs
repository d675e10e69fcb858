//! A collector started on a full disk (a 1 MiB tmpfs filled to the last block, mounted in a
//! private mount namespace that ends with the process) still serves: the page and `/api/*` read
//! what it stored before, read-only, the page's matrix says why (`store.reason`), `/healthz` is
//! 503 `read_only`, `/metrics` has `egresswatch_read_only 1`, and a write is a 503 that loses
//! nothing. Needs root (the mount); skipped otherwise.

mod support;
use egresswatch_collector::clock::{now_unix_ms, rfc3339};
use serde_json::{json, Value};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{collector_bin, is_root, skip, spawn_collector, write_collector_config, Proc};

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_at_start_serves_the_page_read_only_and_says_why() {
    let test = "a_full_disk_at_start_serves_the_page_read_only_and_says_why";
    if !is_root() || Command::new("unshare").arg("--help").output().is_err() {
        skip(test, "needs root and unshare(1) for a private tmpfs");
        return;
    }
    let dir = support::work_dir("ew-diskfull-");
    let c = reqwest::Client::new();
    // A first life on a roomy disk: the database, the CA, the reset key and one silence.
    let config = write_collector_config(
        dir.path(),
        "listen = \"127.0.0.1:0\"",
        "listen = \"127.0.0.1:0\"",
        "",
    );
    let (child, at) = spawn_collector(&config, &dir.path().join("first.log"), None);
    let mut first = Proc(child);
    let made = c
        .post(format!("http://{}/api/silences", at.http))
        .json(
            &json!({"all": true, "ends_at": rfc3339(now_unix_ms() + 3_600_000),
                      "reason": "kept", "created_by": "test"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(made.status(), 201);
    first.terminate();

    // The second life: the same data dir copied onto a tmpfs filled to the last block.
    let full = dir.path().join("full");
    std::fs::create_dir_all(&full).unwrap();
    let port = free_port();
    let config = dir.path().join("full.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {full:?}\n[quic]\nlisten = \"127.0.0.1:0\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n"
        ),
    )
    .unwrap();
    let script = format!(
        "mount -t tmpfs -o size=1m tmpfs {full:?} && cp -a {data:?}/. {full:?}/ && \
         rm -f {full:?}/ready.json && \
         (dd if=/dev/zero of={full:?}/fill bs=4k 2>/dev/null; true) && exec {bin:?} run --config {config:?}",
        data = dir.path().join("data"),
        bin = collector_bin(),
    );
    let log = std::fs::File::create(dir.path().join("full.log")).unwrap();
    let mut second = Proc(
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let health = loop {
        if let Ok(resp) = c.get(format!("{base}/healthz")).send().await {
            break resp;
        }
        assert!(
            second.alive() && Instant::now() < deadline,
            "the collector did not serve on a full disk:\n{}",
            std::fs::read_to_string(dir.path().join("full.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(health.status(), 503);
    let said: Value = health.json().await.unwrap();
    assert_eq!(said["status"], "read_only", "{said}");
    assert!(
        said["reason"].as_str().unwrap().contains("No space left"),
        "{said}"
    );

    let matrix: Value = c
        .get(format!("{base}/api/matrix"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        matrix["store"]["reason"]
            .as_str()
            .unwrap()
            .contains("cannot be written"),
        "{matrix}"
    );
    let page = c.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let metrics = c
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("egresswatch_read_only 1"), "{metrics}");
    // What was stored before is read; a write is refused as unavailable, not lost silently.
    let listed: Vec<Value> = c
        .get(format!("{base}/api/silences"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["reason"], "kept");
    let write = c
        .post(format!("{base}/api/silences"))
        .json(
            &json!({"all": true, "ends_at": rfc3339(now_unix_ms() + 3_600_000),
                      "reason": "new", "created_by": "test"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(write.status(), 503);
    assert!(write.headers().contains_key("retry-after"));
    second.terminate();
}
