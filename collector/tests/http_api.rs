//! The HTTP shell against a real axum server on 127.0.0.1:0 with a real HTTP client: the
//! contract shapes, the token rule off loopback, the security headers, SSE delivery, and
//! `/metrics` checked by Debian's `promtool`.

use egresswatch_collector::clock::now_unix_ms;
use egresswatch_collector::http::{self, HttpConfig};
use egresswatch_collector::ingest::IngestCounters;
use egresswatch_collector::store::shared::FeedItem;
use egresswatch_collector::store::ResultStore;
use egresswatch_collector::{fleet::ResultObserver, identity::AgentMeta};
use egresswatch_wire::{Family, Outcome, PhaseTimings, ProbeResult};
use serde_json::{json, Value};
use std::time::Duration;

mod support;
use support::http::{json_of, loopback, read_until, text_of, Server};
use support::{agent_meta, debian_tool, pipe_into};

fn results(seq0: u64, at: i64) -> Vec<ProbeResult> {
    [
        (25, Outcome::Timeout, None),
        (587, Outcome::Ok, Some(12_500)),
        (443, Outcome::Ok, Some(9_000)),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (port, outcome, c))| ProbeResult {
        seq: seq0 + i as u64,
        at_unix_ms: at,
        target: "mx.lab".into(),
        port,
        family: Family::Ipv4,
        outcome,
        address: Some("198.18.0.25".parse().unwrap()),
        timings: PhaseTimings {
            dns_us: Some(300),
            connect_us: c,
            ..Default::default()
        },
        detail: "x".into(),
        ..Default::default()
    })
    .collect()
}

fn feed(s: &Server, a: &AgentMeta) {
    let now = now_unix_ms();
    s.store.upsert_agent(a, now).unwrap();
    s.fleet.agent_connected(a, now);
    // All new: the feed would carry each of them, as the hub gets them here.
    let sent = results(1, now);
    let items = FeedItem::of_batch(a, &sent, true, now);
    let report = s
        .store
        .insert_results(&a.agent_id, sent, true.into(), now)
        .unwrap();
    assert_eq!(report.accepted as usize, items.len());
    s.fleet.observe_feed(items);
}

fn assert_security_headers(resp: &reqwest::Response) {
    let h = resp.headers();
    assert_eq!(
        h["content-security-policy"],
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    );
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["referrer-policy"], "no-referrer");
    assert_eq!(h["x-frame-options"], "DENY");
}

#[tokio::test]
async fn api_shapes_follow_the_contract() {
    let s = Server::start(loopback()).await;
    let g1 = agent_meta("g1", "gcp", "acct-a");
    feed(&s, &g1);
    let c = reqwest::Client::new();

    let resp = c.get(s.url("/api/matrix")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_security_headers(&resp);
    let m: Value = resp.json().await.unwrap();
    assert_eq!(m["ports"], serde_json::json!([25, 465, 587, 2525, 443]));
    assert_eq!(m["family"], "all");
    let p = &m["providers"][0];
    assert_eq!(p["provider"], "gcp");
    assert_eq!(p["agents"], 1);
    assert_eq!(p["cells"]["25"]["status"], "blocked");
    assert_eq!(p["cells"]["25"]["outcome"], "timeout");
    assert_eq!(p["cells"]["587"]["status"], "open");
    assert_eq!(p["cells"]["587"]["p50_connect_ms"], 12.5);
    assert_eq!(p["cells"]["25"]["doc"]["policy"], "blocked");
    assert_eq!(p["cells"]["25"]["doc_mismatch"], false);
    let agent_row = &p["accounts"][0]["regions"][0]["agent_list"][0];
    assert_eq!(agent_row["agent"], "g1");
    assert_eq!(agent_row["silent"], false);

    let v6: Value = json_of(c.get(s.url("/api/matrix?family=ipv6"))).await;
    assert_eq!(v6["family"], "ipv6");
    assert_eq!(v6["providers"][0]["cells"]["25"]["status"], "unknown");
    let bad = c.get(s.url("/api/matrix?family=ipx")).send().await.unwrap();
    assert_eq!(bad.status(), 400);

    let r: Value = json_of(c.get(s.url("/api/agents/g1/results?limit=2"))).await;
    let list = r.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["seq"], 3, "newest first");
    for k in [
        "seq",
        "at",
        "target",
        "port",
        "family",
        "address",
        "level",
        "outcome",
        "dns_ms",
        "connect_ms",
        "banner_ms",
        "tls_ms",
        "syn_retransmits",
        "detail",
    ] {
        assert!(list[0].get(k).is_some(), "{k}");
    }
    assert_eq!(list[1]["connect_ms"], 12.5);
    assert_eq!(list[1]["banner_ms"], Value::Null);
    let bad_id = c
        .get(s.url("/api/agents/..%2Fetc/results"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_id.status(), 400);

    // An event: the agent falls silent (the clock is a parameter of tick).
    s.fleet.tick(now_unix_ms() + 3_600_000);
    assert!(s.fleet.events_recorded(Duration::from_secs(10)).await);
    let ev: Value = json_of(c.get(s.url("/api/events?limit=10"))).await;
    // g1 was its account's only agent: the account went silent with it, recorded after it.
    assert_eq!(ev[0]["kind"], "agent_silent");
    assert_eq!(ev[0]["scope"], "account");
    assert_eq!(ev[0]["agent"], Value::Null);
    let e = &ev[1];
    assert_eq!(e["kind"], "agent_silent");
    assert_eq!(e["scope"], "agent");
    assert_eq!(e["agent"], "g1");
    for k in [
        "kind", "scope", "provider", "account", "agent", "target", "port", "from", "to", "at",
    ] {
        assert!(e.get(k).is_some(), "{k}");
    }

    let health = c.get(s.url("/healthz")).send().await.unwrap();
    assert_security_headers(&health);
    assert_eq!(health.text().await.unwrap(), "ok");
    let page = c.get(s.url("/")).send().await.unwrap();
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert_security_headers(&page);
    let js = c.get(s.url("/app.js")).send().await.unwrap();
    assert!(js.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    let css = c.get(s.url("/style.css")).send().await.unwrap();
    assert!(css.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/css"));
    let missing = c.get(s.url("/nope")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    assert_security_headers(&missing);
    s.stop().await;
}

#[tokio::test]
async fn off_loopback_needs_a_token() {
    let exposed = HttpConfig {
        listen: "0.0.0.0:0".parse().unwrap(),
        ..Default::default()
    };
    let err = match http::bind(&exposed).await {
        Ok(_) => panic!("bound 0.0.0.0 without a token"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("http.token"), "{err}");

    let token = "s3cret-token-for-the-test";
    let s = Server::start(HttpConfig {
        listen: "0.0.0.0:0".parse().unwrap(),
        token: Some(token.into()),
        ..Default::default()
    })
    .await;
    let c = reqwest::Client::new();
    for path in ["/api/matrix", "/api/events", "/metrics", "/api/stream"] {
        let r = c.get(s.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
        assert_security_headers(&r);
        let r = c
            .get(s.url(path))
            .bearer_auth("wrong-token-of-some-length")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path}");
    }
    let ok = c
        .get(s.url("/api/matrix"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    // The page and health stay public; the page itself holds no data.
    assert_eq!(c.get(s.url("/")).send().await.unwrap().status(), 200);
    assert_eq!(c.get(s.url("/healthz")).send().await.unwrap().status(), 200);
    s.stop().await;
}

#[tokio::test]
async fn the_page_trades_the_token_for_a_session_cookie() {
    let token = "s3cret-token-for-the-page";
    let s = Server::start(HttpConfig {
        token: Some(token.into()),
        ..loopback()
    })
    .await;
    let c = reqwest::Client::new();
    let state: Value = json_of(c.get(s.url("/session"))).await;
    assert_eq!(state["token_required"], true);
    assert_eq!(state["signed_in"], false);

    let wrong = c
        .post(s.url("/session"))
        .json(&json!({ "token": "not-the-token-at-all" }))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert!(wrong.headers().get("set-cookie").is_none());
    assert_security_headers(&wrong);

    let ok = c
        .post(s.url("/session"))
        .json(&json!({ "token": token }))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 204);
    let set_cookie = ok.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"));
    assert!(
        !set_cookie.contains(token),
        "the cookie must not carry the token itself"
    );
    let pair = set_cookie.split(';').next().unwrap().to_owned();

    for path in ["/api/matrix", "/api/events", "/metrics"] {
        let r = c
            .get(s.url(path))
            .header("cookie", &pair)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path} with the session cookie");
    }
    let mut stream = c
        .get(s.url("/api/stream"))
        .header("cookie", &pair)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let mut buf = String::new();
    read_until(&mut stream, &mut buf, "event: matrix").await;
    drop(stream);
    let state: Value = json_of(c.get(s.url("/session")).header("cookie", &pair)).await;
    assert_eq!(state["signed_in"], true);
    let forged = c
        .get(s.url("/api/matrix"))
        .header("cookie", format!("egresswatch_session={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401, "the token is not a cookie value");

    let out = c.delete(s.url("/session")).send().await.unwrap();
    assert_eq!(out.status(), 204);
    assert!(out.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    s.stop().await;
}

#[tokio::test]
async fn sse_sends_the_matrix_then_events() {
    let s = Server::start(HttpConfig {
        max_sse_clients: 1,
        ..loopback()
    })
    .await;
    let g1 = agent_meta("g1", "hetzner", "h");
    feed(&s, &g1);
    let c = reqwest::Client::new();
    let mut resp = c.get(s.url("/api/stream")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    assert_security_headers(&resp);
    let mut buf = String::new();
    read_until(&mut resp, &mut buf, "event: matrix").await;
    read_until(&mut resp, &mut buf, "\n\n").await;
    assert!(buf.contains("\"hetzner\""), "{buf}");

    // The client bound is enforced.
    let second = c.get(s.url("/api/stream")).send().await.unwrap();
    assert_eq!(second.status(), 503);

    s.fleet.tick(now_unix_ms() + 3_600_000);
    read_until(&mut resp, &mut buf, "event: event").await;
    read_until(&mut resp, &mut buf, "agent_silent").await;
    // Shutdown ends open streams instead of waiting for them (what was already sent, such as
    // the account's silence after the agent's, may still be read first).
    s.stop().await;
    let mut ended = false;
    for _ in 0..20 {
        match tokio::time::timeout(Duration::from_secs(5), resp.chunk()).await {
            Ok(Ok(Some(_))) => continue,
            Ok(Ok(None)) | Ok(Err(_)) => {
                ended = true;
                break;
            }
            Err(elapsed) => panic!("the stream did not end at shutdown: {elapsed:?}"),
        }
    }
    assert!(ended, "the stream kept sending after shutdown");
}

#[tokio::test]
async fn metrics_pass_promtool() {
    if !debian_tool("/usr/bin/promtool", "prometheus") {
        return;
    }
    let s = Server::start(loopback()).await;
    feed(&s, &agent_meta("g1", "gcp", "a"));
    feed(&s, &agent_meta("a1", "aws", "b"));
    feed(&s, &agent_meta("w1", "we\"ird\\} 1", "b"));
    let ingest = IngestCounters::register(s.fleet.metrics());
    ingest.results.inc_by(6);
    ingest.refused("revoked");
    ingest.refused("bad_version");
    ingest.refused("revoked");
    s.fleet.tick(now_unix_ms() + 3_600_000);
    assert!(s.fleet.events_recorded(Duration::from_secs(10)).await);
    s.fleet.publish_matrix(now_unix_ms());
    let body = text_of(reqwest::Client::new().get(s.url("/metrics"))).await;
    assert!(
        body.contains("egresswatch_ingest_results_total 6"),
        "{body}"
    );
    assert!(body.contains("egresswatch_cell_status{"), "{body}");
    // Cells per provider/account, port and family, status as a state set.
    assert!(
        body.contains(r#"egresswatch_cell_status{provider="gcp",account="a",port="25",family="ipv4",status="blocked"} 1"#),
        "{body}"
    );
    assert!(
        body.contains(r#"egresswatch_cell_agents{provider="gcp",account="a",port="587",family="ipv4",state="ok"} 1"#),
        "{body}"
    );
    assert!(
        body.contains("egresswatch_ingest_refusals_by_reason_total{reason=\"revoked\"} 2"),
        "{body}"
    );
    assert!(
        body.contains("egresswatch_ingest_refusals_total 3"),
        "{body}"
    );
    assert!(
        body.contains(r#"provider="we\"ird\\} 1""#),
        "label values escaped: {body}"
    );
    assert!(body.contains("egresswatch_events_total{"), "{body}");
    let out = pipe_into("/usr/bin/promtool", &["check", "metrics"], &body);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool: {text}\n{body}");
    // promtool's lint complaints are printed but also make the exit code non-zero.
    assert!(!text.contains("error"), "{text}");
    s.stop().await;
}

/// Every route, every status: the page and its assets, the API, the stream, metrics, health, a
/// missing page under / and under /api, a bad agent id, a wrong method, and (with a token) the
/// 401s and the authorised answers.
#[tokio::test]
async fn every_response_carries_the_security_headers() {
    let token = "another-s3cret-token-for-headers";
    let open = Server::start(loopback()).await;
    let guarded = Server::start(HttpConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        token: Some(token.into()),
        ..Default::default()
    })
    .await;
    let a = agent_meta("h1", "gcp", "proj-a");
    feed(&open, &a);
    feed(&guarded, &a);
    let paths = [
        "/",
        "/style.css",
        "/app.js",
        "/healthz",
        "/api/matrix",
        "/api/events",
        "/api/agents/h1/results",
        "/api/agents/no-such-agent/results",
        "/api/agents/bad%20id%1b/results",
        "/api/stream",
        "/metrics",
        "/nope",
        "/api/nope",
        "/index.html",
    ];
    let c = reqwest::Client::new();
    let mut statuses = Vec::new();
    for s in [&open, &guarded] {
        for path in paths {
            for auth in [None, Some(token)] {
                let mut req = c.get(s.url(path));
                if let Some(t) = auth {
                    req = req.bearer_auth(t);
                }
                // The stream's headers arrive at once; its body never ends, so it is dropped.
                let resp = tokio::time::timeout(Duration::from_secs(5), req.send())
                    .await
                    .expect("headers within 5 s")
                    .unwrap();
                statuses.push(resp.status().as_u16());
                assert_security_headers(&resp);
            }
        }
        let resp = c.post(s.url("/api/matrix")).send().await.unwrap();
        assert!(resp.status().is_client_error(), "{}", resp.status());
        assert_security_headers(&resp);
        let resp = c.head(s.url("/")).send().await.unwrap();
        assert_security_headers(&resp);
    }
    // Each kind of answer was among those checked.
    for status in [200, 401, 404] {
        assert!(statuses.contains(&status), "no {status} in {statuses:?}");
    }
    open.stop().await;
    guarded.stop().await;
}
