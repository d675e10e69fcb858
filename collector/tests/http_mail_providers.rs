//! `GET /api/mail-providers` on a real axum server: results of agents whose targets are a mail
//! provider's preset hosts, rolled up per mail provider × account (SMTP ports, HTTPS API), and
//! the page's `mail.js` served under the collector's CSP.

use egresswatch_collector::clock::now_unix_ms;
use egresswatch_collector::fleet::ResultObserver;
use egresswatch_collector::identity::AgentMeta;
use egresswatch_collector::store::shared::FeedItem;
use egresswatch_collector::store::ResultStore;
use egresswatch_wire::{Family, Outcome, ProbeResult};
use serde_json::Value;

mod support;
use support::agent_meta;
use support::http::{json_of, loopback, Server};

fn feed(s: &Server, a: &AgentMeta, probes: &[(&str, u16, Outcome)]) {
    let now = now_unix_ms();
    let mut seq = 1;
    let mut results = Vec::new();
    for (target, port, outcome) in probes {
        for family in [Family::Ipv4, Family::Ipv6] {
            results.push(ProbeResult {
                seq,
                at_unix_ms: now,
                target: (*target).into(),
                port: *port,
                family,
                outcome: *outcome,
                detail: "x".into(),
                ..Default::default()
            });
            seq += 1;
        }
    }
    s.store.upsert_agent(a, now).unwrap();
    s.fleet.agent_connected(a, now);
    // All new: the feed would carry each of them, as the hub gets them here.
    let items = FeedItem::of_batch(a, &results, true, now);
    let report = s
        .store
        .insert_results(&a.agent_id, results, true.into(), now)
        .unwrap();
    assert_eq!(report.accepted as usize, items.len());
    s.fleet.observe_feed(items);
}

#[tokio::test]
async fn mail_providers_per_account_with_the_api_as_the_way_out() {
    let s = Server::start(loopback()).await;
    let blocked = agent_meta("do-1", "digitalocean", "team");
    let open = agent_meta("hz-1", "hetzner", "main");
    feed(
        &s,
        &blocked,
        &[
            ("smtp.zeptomail.com", 587, Outcome::Timeout),
            ("smtp.zeptomail.com", 465, Outcome::Timeout),
            ("api.zeptomail.com", 443, Outcome::Ok),
            ("mx.example.net", 25, Outcome::Ok),
        ],
    );
    feed(
        &s,
        &open,
        &[
            ("smtp.zeptomail.com", 587, Outcome::Ok),
            ("smtp.zeptomail.com", 465, Outcome::Ok),
            ("api.zeptomail.com", 443, Outcome::Ok),
        ],
    );
    let c = reqwest::Client::new();
    let view: Value = json_of(c.get(s.url("/api/mail-providers"))).await;
    let rows = view["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 2, "{view:#}");
    let team = rows.iter().find(|r| r["account"] == "team").expect("team");
    assert_eq!(team["mail_provider"], "zeptomail");
    assert_eq!(team["provider"], "digitalocean");
    assert_eq!(team["agents"], 1);
    assert_eq!(team["smtp"]["587"]["status"], "blocked");
    assert_eq!(team["smtp"]["587"]["failed"], 2);
    assert_eq!(team["smtp_open_ports"], serde_json::json!([]));
    assert_eq!(team["api"]["status"], "open");
    assert_eq!(team["api_reachable"], true);
    let main = rows.iter().find(|r| r["account"] == "main").expect("main");
    assert_eq!(main["smtp_open_ports"], serde_json::json!([465, 587]));

    let js = c.get(s.url("/mail.js")).send().await.unwrap();
    assert_eq!(js.status(), 200);
    assert!(js.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("script-src 'self'"));
    assert!(js
        .text()
        .await
        .unwrap()
        .contains("export function renderMail"));
}
