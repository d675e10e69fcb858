//! `/api/silences` on the real collector binary over loopback HTTP: what a silence request must
//! say and the clear 400s when it does not, the guard on the mutating routes (token, same-site
//! JSON only), ending one while keeping its record, a `[[silence]]` planned window from the
//! config, every stored silence still there after the collector restarts, and how many of the
//! current matrix cells a silence covers (the HTTP shell in-process, fed as ingest would).

mod support;
use egresswatch_collector::clock::{now_unix_ms, rfc3339};
use egresswatch_collector::store::shared::FeedItem;
use egresswatch_collector::store::ResultStore;
use serde_json::{json, Value};
use std::path::Path;
use support::{spawn_collector, write_collector_config, Proc};

const TOKEN: &str = "silences-test-token-0123456789";

fn start(dir: &Path) -> (Proc, String) {
    let config = write_collector_config(
        dir,
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\""),
        "[[silence]]\nid = \"freeze\"\nprovider = \"gcp\"\nport = 25\n\
         starts_at = \"2030-12-24T00:00:00Z\"\nends_at = \"2030-12-27T00:00:00Z\"\n\
         reason = \"holiday change freeze\"\n",
    );
    let (child, listening) = spawn_collector(&config, &dir.join("collector.log"), None);
    (Proc(child), format!("http://{}", listening.http))
}

fn in_hours(h: i64) -> String {
    rfc3339(now_unix_ms() + h * 3_600_000)
}

async fn post(c: &reqwest::Client, base: &str, body: &Value) -> (u16, Value) {
    let resp = c
        .post(format!("{base}/api/silences"))
        .bearer_auth(TOKEN)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn list(c: &reqwest::Client, base: &str, query: &str) -> Vec<Value> {
    c.get(format!("{base}/api/silences{query}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn ids(list: &[Value]) -> Vec<&str> {
    list.iter().filter_map(|s| s["id"].as_str()).collect()
}

#[tokio::test]
async fn silences_are_validated_guarded_ended_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (proc, base) = start(dir.path());
    let c = reqwest::Client::new();

    // Guarded like the rest of the API.
    let anonymous = c.get(format!("{base}/api/silences")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);

    // A good one: its id back, and 0 current cells (no agent has reported: a planned matcher).
    let (status, made) = post(
        &c,
        &base,
        &json!({"matcher": {"provider": "aws", "port": 587}, "ends_at": in_hours(2),
                "reason": "relay migration", "created_by": "ops"}),
    )
    .await;
    assert_eq!(status, 201, "{made}");
    let id = made["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("s-"));
    assert_eq!(made["state"], "active");
    assert_eq!(made["matching_cells"], 0);
    assert_eq!(made["matcher"], json!({"provider": "aws", "port": 587}));

    // The clear 400s.
    let refusals = [
        (
            json!({"ends_at": in_hours(1), "reason": "r", "created_by": "me"}),
            "\"all\": true",
        ),
        (
            json!({"matcher": {"port": 25}, "ends_at": in_hours(-1), "reason": "r", "created_by": "me"}),
            "not in the future",
        ),
        (
            json!({"matcher": {"port": 25}, "ends_at": in_hours(1), "reason": "r", "created_by": "me", "until": 1}),
            "unknown field `until`",
        ),
        (
            json!({"matcher": {"agent": "x".repeat(129)}, "ends_at": in_hours(1), "reason": "r", "created_by": "me"}),
            "longer than the limit",
        ),
        (
            json!({"matcher": {"port": 25}, "ends_at": "next tuesday", "reason": "r", "created_by": "me"}),
            "RFC 3339",
        ),
        (
            json!({"matcher": {"port": 25}, "ends_at": in_hours(1), "created_by": "me"}),
            "missing field `reason`",
        ),
    ];
    for (body, why) in refusals {
        let (status, answer) = post(&c, &base, &body).await;
        assert_eq!(status, 400, "{body} → {answer}");
        let message = answer["error"].as_str().unwrap();
        assert!(message.contains(why), "{body}: {message}");
    }
    // Everything, on purpose.
    let (status, everything) = post(
        &c,
        &base,
        &json!({"all": true, "ends_at": in_hours(1), "reason": "collector move", "created_by": "ops"}),
    )
    .await;
    assert_eq!(status, 201, "{everything}");

    // Not from another site, and only as JSON.
    let body =
        json!({"matcher": {"port": 25}, "ends_at": in_hours(1), "reason": "r", "created_by": "me"});
    let cross = c
        .post(format!("{base}/api/silences"))
        .bearer_auth(TOKEN)
        .header("origin", "https://evil.example")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(cross.status(), 403);
    let fetched = c
        .delete(format!("{base}/api/silences/{id}"))
        .bearer_auth(TOKEN)
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(fetched.status(), 403);
    let form = c
        .post(format!("{base}/api/silences"))
        .bearer_auth(TOKEN)
        .header("content-type", "text/plain")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), 415);

    // Listed: ours and the config's planned window (pending until December 2030).
    let active = list(&c, &base, "").await;
    assert!(ids(&active).contains(&id.as_str()), "{active:?}");
    let freeze = active.iter().find(|s| s["id"] == "freeze").unwrap();
    assert_eq!(freeze["state"], "pending");
    assert_eq!(freeze["origin"], "config");

    // Ending one keeps its record; the config's can only be removed from the config.
    let ended = c
        .delete(format!("{base}/api/silences/{id}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(ended.status(), 200);
    let ended: Value = ended.json().await.unwrap();
    assert_eq!(ended["state"], "expired");
    assert!(ended["ended_early_at"].is_string());
    assert!(!ids(&list(&c, &base, "").await).contains(&id.as_str()));
    assert!(ids(&list(&c, &base, "?all=1").await).contains(&id.as_str()));
    let status = |r: reqwest::Response| r.status().as_u16();
    let config_one = c
        .delete(format!("{base}/api/silences/freeze"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(status(config_one), 409);
    let missing = c
        .delete(format!("{base}/api/silences/s-nope"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(status(missing), 404);

    // A restart loses nothing.
    let before = list(&c, &base, "?all=1").await;
    drop(proc);
    let (_proc, base) = start(dir.path());
    let after = list(&c, &base, "?all=1").await;
    let strip = |l: &[Value]| -> Vec<Value> {
        let mut l: Vec<Value> = l
            .iter()
            .map(|s| {
                let mut s = s.clone();
                s.as_object_mut().unwrap().remove("created_at");
                s
            })
            .filter(|s| s["origin"] == "api")
            .collect();
        l.sort_by_key(|s| s["id"].to_string());
        l
    };
    assert_eq!(strip(&after), strip(&before));
    assert_eq!(strip(&after).len(), 2);
    let still = list(&c, &base, "").await;
    assert!(ids(&still).contains(&everything["id"].as_str().unwrap()));
    assert!(!ids(&still).contains(&id.as_str()));
}

fn results_on(ports: &[u16], at: i64) -> Vec<egresswatch_wire::ProbeResult> {
    ports
        .iter()
        .enumerate()
        .map(|(i, &port)| egresswatch_wire::ProbeResult {
            seq: 1 + i as u64,
            at_unix_ms: at,
            target: "mx.lab".into(),
            port,
            family: egresswatch_wire::Family::Ipv4,
            outcome: egresswatch_wire::Outcome::Ok,
            ..Default::default()
        })
        .collect()
}

#[tokio::test]
async fn a_silence_reports_how_many_current_cells_it_covers() {
    let s = support::http::Server::start(support::http::loopback()).await;
    let now = now_unix_ms();
    for (id, account) in [("g1", "acct-a"), ("g2", "acct-b")] {
        let meta = support::agent_meta(id, "gcp", account);
        s.store.upsert_agent(&meta, now).unwrap();
        let sent = results_on(&[25, 587], now);
        let items = FeedItem::of_batch(&meta, &sent, true, now);
        let report = s.store.insert_results(id, sent, true.into(), now).unwrap();
        assert_eq!(report.accepted as usize, items.len());
        s.fleet.observe_feed(items);
    }
    let c = reqwest::Client::new();
    let cells = |matcher: Value| {
        let c = c.clone();
        let url = s.url("/api/silences");
        async move {
            let made: Value = c
                .post(url)
                .json(&json!({"matcher": matcher, "ends_at": in_hours(1),
                              "reason": "count", "created_by": "test"}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            made["matching_cells"].as_u64().unwrap()
        }
    };
    assert_eq!(cells(json!({"provider": "GCP", "port": 25})).await, 2);
    assert_eq!(cells(json!({"account": "acct-a", "port": 587})).await, 1);
    assert_eq!(
        cells(json!({"agent": "g2", "port": 465})).await,
        1,
        "a column without results yet"
    );
    assert_eq!(cells(json!({"provider": "aws"})).await, 0);
    s.stop().await;
}
