//! The HTTP listener against hostile clients, on the real collector binary over loopback: 2,000
//! half-sent requests held open while `/api/matrix` still answers, and each of them closed once
//! `http.header_read_timeout_secs` has passed; the connection cap (`http.max_connections`)
//! closing one connection more at once, counted; a DNS rebinding (`Host: evil.example` with the
//! `Origin` and `Sec-Fetch-Site` a browser sends after one) refused with 421 before it can
//! silence every alert; 5,000 silence attempts stopped at `http.max_silences` with
//! `GET /api/silences` and `/healthz` still quick (the HTTP shell in-process over a fed matrix);
//! PostgreSQL stopped under a collector: 503 with `Retry-After` at once, `/healthz` saying so,
//! `/livez` alive; a stalled request body refused after `http.body_idle_timeout_secs`; every
//! error a JSON body with the security headers; and sign-ins rate limited
//! per client with sessions ended on the server (sign-out, `DELETE /api/sessions`).

mod support;
use egresswatch_collector::clock::{now_unix_ms, rfc3339};
use egresswatch_collector::store::shared::FeedItem;
use egresswatch_collector::store::ResultStore;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};
use support::{spawn_collector, wait_until, write_collector_config, Proc};

/// Starts the collector binary on loopback with `http` as the body of its `[http]` table.
fn start(dir: &Path, http: &str, rest: &str) -> (Proc, SocketAddr) {
    let config = write_collector_config(
        dir,
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:0\"\n{http}"),
        rest,
    );
    let (child, listening) = spawn_collector(&config, &dir.join("collector.log"), None);
    (Proc(child), listening.http)
}

/// Sends `request` (whole, `Connection: close`) and reads the answer to its end: the status and
/// the raw response.
fn exchange(addr: SocketAddr, request: &str, within: Duration) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, within)?;
    s.set_read_timeout(Some(within))?;
    s.set_write_timeout(Some(within))?;
    s.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, raw))
}

fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    exchange(
        addr,
        &format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
            addr.port()
        ),
        Duration::from_secs(10),
    )
}

/// The body of a raw HTTP/1.1 response (after the blank line).
fn body(raw: &str) -> &str {
    raw.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// A metric's value from `/metrics` (the line starting with `series`).
fn metric(addr: SocketAddr, series: &str) -> Option<f64> {
    let (_, raw) = get(addr, "/metrics").ok()?;
    body(&raw)
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// Opens `n` connections that each send half a request's head and then nothing.
fn half_open(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|i| {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("connection {i}: {e}"));
            s.write_all(b"GET /api/matrix HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                .unwrap();
            s
        })
        .collect()
}

/// Raises this process's descriptor limit to its hard limit (the collector it starts inherits
/// it): 2,000 connections on each side need more than the usual 1,024.
fn raise_nofile(at_least: u64) -> bool {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return false;
        }
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur >= at_least
    }
}

#[test]
fn two_thousand_half_sent_requests_leave_the_matrix_answering_and_are_closed_after_the_header_timeout(
) {
    const HELD: usize = 2000;
    if !raise_nofile(2 * HELD as u64 + 512) {
        support::skip(
            "two_thousand_half_sent_requests…",
            "RLIMIT_NOFILE's hard limit is under 4,512",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let timeout_secs = 20;
    let (mut proc, addr) = start(
        dir.path(),
        &format!("header_read_timeout_secs = {timeout_secs}"),
        "",
    );
    let opened_at = Instant::now();
    let held = half_open(addr, HELD);
    let opening = opened_at.elapsed();
    // Every one of them is served (none turned away: the cap is 4,096) and /api/matrix answers.
    let mut latencies = Vec::new();
    for _ in 0..10 {
        let asked = Instant::now();
        let (status, raw) = get(addr, "/api/matrix").expect("/api/matrix answers");
        latencies.push(asked.elapsed());
        assert_eq!(status, 200, "{raw}");
        assert!(body(&raw).contains("\"providers\""), "{raw}");
    }
    // ... while every held connection was still open (none answered, none closed).
    let open_now = held
        .iter()
        .filter(|s| {
            s.set_nonblocking(true).unwrap();
            let mut byte = [0u8; 1];
            let waiting =
                matches!(s.peek(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
            s.set_nonblocking(false).unwrap();
            waiting
        })
        .count();
    latencies.sort();
    println!(
        "{HELD} half-sent requests held (opened in {opening:?}): /api/matrix answered in \
         median {:?}, max {:?} (10 requests)",
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );
    assert_eq!(open_now, HELD, "the matrix was asked while all were held");
    assert!(
        latencies[latencies.len() - 1] < Duration::from_secs(5),
        "the matrix took {:?}",
        latencies[latencies.len() - 1]
    );
    // Once the header timeout has passed, every half-sent request is closed by the collector.
    std::thread::sleep(Duration::from_secs(timeout_secs).saturating_sub(opened_at.elapsed()));
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut closed = 0;
    for mut s in held {
        let left = deadline.saturating_duration_since(Instant::now());
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        let mut sink = Vec::new();
        match s.read_to_end(&mut sink) {
            Ok(_) => closed += 1,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => closed += 1,
            Err(_) => {}
        }
    }
    assert_eq!(
        closed, HELD,
        "half-sent requests closed within the header timeout + 15 s"
    );
    assert!(
        wait_until(Duration::from_secs(5), || metric(
            addr,
            "egresswatch_http_connections "
        ) == Some(1.0)),
        "only the /metrics request itself is open"
    );
    assert!(proc.alive());
}

#[test]
fn one_connection_over_the_cap_is_closed_at_once_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (_proc, addr) = start(
        dir.path(),
        "max_connections = 16\nheader_read_timeout_secs = 60",
        "",
    );
    let held = half_open(addr, 16);
    std::thread::sleep(Duration::from_millis(300));
    let mut over = TcpStream::connect(addr).unwrap();
    over.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let asked = Instant::now();
    let mut sink = Vec::new();
    let closed = match over.read_to_end(&mut sink) {
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    };
    assert!(
        closed && sink.is_empty(),
        "the 17th connection is closed without an answer ({:?})",
        asked.elapsed()
    );
    drop(held);
    assert!(
        wait_until(Duration::from_secs(5), || get(addr, "/api/matrix")
            .is_ok_and(|(s, _)| s == 200)),
        "the matrix answers once the held connections are gone"
    );
    let counted = metric(
        addr,
        "egresswatch_limit_exceeded_total{limit=\"http_connections\"}",
    );
    assert!(counted >= Some(1.0), "{counted:?}");
}

fn post_silence(addr: SocketAddr, host: &str, origin: &str) -> (u16, String) {
    let body = json!({"all": true, "ends_at": rfc3339(now_unix_ms() + 3_600_000),
                      "reason": "r", "created_by": "page"})
    .to_string();
    exchange(
        addr,
        &format!(
            "POST /api/silences HTTP/1.1\r\nHost: {host}\r\nOrigin: {origin}\r\n\
             Sec-Fetch-Site: same-origin\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
        Duration::from_secs(10),
    )
    .unwrap()
}

#[test]
fn a_rebound_name_cannot_silence_a_loopback_collector_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let (_proc, addr) = start(
        dir.path(),
        "public_url = \"https://watch.example.net/\"\nallowed_hosts = [\"collector.internal\"]",
        "",
    );
    let port = addr.port();
    // What a browser sends once evil.example resolves to 127.0.0.1.
    let (status, raw) = post_silence(
        addr,
        &format!("evil.example:{port}"),
        &format!("http://evil.example:{port}"),
    );
    assert_eq!(status, 421, "{raw}");
    let answer: Value = serde_json::from_str(body(&raw)).expect("a JSON body");
    assert!(
        answer["error"].as_str().unwrap().contains("evil.example"),
        "{answer}"
    );
    assert!(
        raw.to_ascii_lowercase()
            .contains("content-security-policy: default-src 'none'"),
        "{raw}"
    );
    let (status, _) = get_with_host(addr, "/api/matrix", "evil.example");
    assert_eq!(status, 421);
    let (_, raw) = get(addr, "/api/silences").unwrap();
    assert_eq!(body(&raw), "[]", "nothing was silenced");
    // The names it is known by are served.
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "watch.example.net".to_string(),
        format!("collector.internal:{port}"),
    ] {
        let (status, raw) = get_with_host(addr, "/api/matrix", &host);
        assert_eq!(status, 200, "{host}: {raw}");
    }
    let own = format!("127.0.0.1:{port}");
    let (status, raw) = post_silence(addr, &own, &format!("http://{own}"));
    assert_eq!(status, 201, "{raw}");
}

fn get_with_host(addr: SocketAddr, path: &str, host: &str) -> (u16, String) {
    exchange(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        Duration::from_secs(10),
    )
    .unwrap()
}

/// 200 agents in 10 accounts, each with results on the five matrix ports.
fn feed_matrix(s: &support::http::Server) {
    let now = now_unix_ms();
    for i in 0..200 {
        let id = format!("a{i}");
        let meta = support::agent_meta(&id, "gcp", &format!("acct-{}", i % 10));
        s.store.upsert_agent(&meta, now).unwrap();
        let results: Vec<_> = [25u16, 465, 587, 2525, 443]
            .iter()
            .enumerate()
            .map(|(n, port)| egresswatch_wire::ProbeResult {
                seq: n as u64 + 1,
                at_unix_ms: now,
                target: "mx.lab".into(),
                port: *port,
                family: egresswatch_wire::Family::Ipv4,
                outcome: egresswatch_wire::Outcome::Ok,
                ..Default::default()
            })
            .collect();
        let items = FeedItem::of_batch(&meta, &results, true, now);
        let report = s
            .store
            .insert_results(&id, results, true.into(), now)
            .unwrap();
        assert_eq!(report.accepted as usize, items.len());
        s.fleet.observe_feed(items);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_silence_attempts_stop_at_the_cap_and_listing_them_stalls_nothing() {
    const ATTEMPTS: usize = 5000;
    let config = egresswatch_collector::http::HttpConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    };
    let cap = config.max_silences;
    let s = support::http::Server::start(config).await;
    feed_matrix(&s);
    let c = reqwest::Client::new();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (c, url, next) = (c.clone(), s.url("/api/silences"), next.clone());
        workers.spawn(async move {
            let mut answers = Vec::new();
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < ATTEMPTS {
                let resp = c
                    .post(&url)
                    .json(&json!({"matcher": {"provider": "gcp", "port": 25},
                                  "ends_at": rfc3339(now_unix_ms() + 3_600_000),
                                  "reason": "flood", "created_by": "test"}))
                    .send()
                    .await
                    .unwrap();
                let status = resp.status().as_u16();
                answers.push((status, resp.json::<Value>().await.unwrap_or(Value::Null)));
            }
            answers
        });
    }
    let answers: Vec<(u16, Value)> = workers.join_all().await.into_iter().flatten().collect();
    assert_eq!(answers.len(), ATTEMPTS);
    let made = answers.iter().filter(|(st, _)| *st == 201).count();
    let refused: Vec<&Value> = answers
        .iter()
        .filter(|(st, _)| *st == 409)
        .map(|(_, v)| v)
        .collect();
    assert_eq!(made, cap, "exactly http.max_silences made");
    assert_eq!(refused.len(), ATTEMPTS - cap, "every other attempt refused");
    assert!(refused.iter().all(|v| v["error"]
        .as_str()
        .is_some_and(|e| e.contains("http.max_silences (1000)"))));
    assert_eq!(
        answers
            .iter()
            .find(|(st, _)| *st == 201)
            .map(|(_, v)| v["matching_cells"].clone()),
        Some(json!(200)),
        "a silence counts the cells it covers"
    );

    // Four listings at once, and /healthz asked meanwhile.
    let started = Instant::now();
    let listings: Vec<_> = (0..4)
        .map(|_| {
            let (c, url) = (c.clone(), s.url("/api/silences"));
            tokio::spawn(async move {
                let asked = Instant::now();
                let list: Vec<Value> = c.get(url).send().await.unwrap().json().await.unwrap();
                (list.len(), asked.elapsed())
            })
        })
        .collect();
    let mut health = Vec::new();
    while health.len() < 20 {
        let asked = Instant::now();
        let resp = c.get(s.url("/healthz")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        health.push(asked.elapsed());
    }
    let mut took = Vec::new();
    for l in listings {
        let (n, t) = l.await.unwrap();
        assert_eq!(n, cap);
        took.push(t);
    }
    health.sort();
    took.sort();
    println!(
        "{cap} silences over 200 agents × 5 ports: GET /api/silences ×4 at once took {:?}..{:?} \
         (all in {:?}); /healthz meanwhile median {:?}, max {:?} (20 requests)",
        took[0],
        took[3],
        started.elapsed(),
        health[health.len() / 2],
        health[health.len() - 1]
    );
    assert!(
        health[health.len() - 1] < Duration::from_secs(1),
        "/healthz stalled {:?}",
        health[health.len() - 1]
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_gives_503_with_retry_after_at_once_and_healthz_says_so() {
    let test = "postgres_down_gives_503_with_retry_after_at_once_and_healthz_says_so";
    let mut pg = match egresswatch_sim::postgres::PgCluster::start() {
        Ok(pg) => pg,
        Err(why) => {
            support::skip(test, &format!("no PostgreSQL to start: {why}"));
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let (_proc, addr) = start(
        dir.path(),
        "",
        &format!(
            "[store]\nkind = \"postgres\"\nurl = {:?}\nconnect_timeout_secs = 2\n\
             [cluster]\nid = \"c1\"\nheartbeat_secs = 1\n",
            pg.url()
        ),
    );
    let base = format!("http://{addr}");
    let c = reqwest::Client::new();
    assert_eq!(
        c.get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.get(format!("{base}/api/events"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    pg.stop().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let health = loop {
        let resp = c.get(format!("{base}/healthz")).send().await.unwrap();
        if resp.status() == 503 || Instant::now() > deadline {
            break resp;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(health.status(), 503, "/healthz says the store is down");
    assert!(health.headers().contains_key("retry-after"));
    let said: Value = health.json().await.unwrap();
    assert_eq!(said["status"], "store_down", "{said}");
    assert!(said["since"].is_string(), "{said}");
    assert_eq!(
        c.get(format!("{base}/livez"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.get(format!("{base}/api/matrix"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let ends_at = rfc3339(now_unix_ms() + 3_600_000);
    let silence = json!({"all": true, "ends_at": ends_at, "reason": "r", "created_by": "t"});
    for (method, path) in [
        ("GET", "/api/events"),
        ("GET", "/api/agents/a1/results"),
        ("GET", "/api/history?provider=gcp"),
        ("GET", "/api/intervals?provider=gcp"),
        ("GET", "/api/collectors"),
        ("POST", "/api/silences"),
    ] {
        let asked = Instant::now();
        let request = match method {
            "GET" => c.get(format!("{base}{path}")),
            _ => c.post(format!("{base}{path}")).json(&silence),
        };
        let resp = request.send().await.unwrap();
        let took = asked.elapsed();
        assert_eq!(resp.status(), 503, "{method} {path}");
        assert_eq!(resp.headers()["retry-after"], "5", "{method} {path}");
        let body: Value = resp.json().await.unwrap();
        assert!(
            body["error"].as_str().unwrap().contains("database"),
            "{body}"
        );
        println!("{method} {path} with PostgreSQL down: 503 in {took:?}");
        assert!(
            took < Duration::from_secs(2),
            "{method} {path} took {took:?}"
        );
    }
    pg.start_again().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = c
            .get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status();
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/healthz ok again once PostgreSQL is back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn every_error_is_json_and_carries_the_security_headers() {
    let token = "errors-test-token-0123456789";
    let config = egresswatch_collector::http::HttpConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        token: Some(token.into()),
        max_body_bytes: 1024,
        ..Default::default()
    };
    let s = support::http::Server::start(config).await;
    let c = reqwest::Client::new();
    let auth = format!("Bearer {token}");
    let cases: Vec<(&str, reqwest::RequestBuilder, u16)> = vec![
        ("no such page", c.get(s.url("/nope")), 404),
        (
            "wrong method",
            c.put(s.url("/api/matrix")).header("authorization", &auth),
            405,
        ),
        ("no token", c.get(s.url("/api/matrix")), 401),
        (
            "bad query",
            c.get(s.url("/api/events?limit=lots"))
                .header("authorization", &auth),
            400,
        ),
        (
            "bad family",
            c.get(s.url("/api/matrix?family=ipv5"))
                .header("authorization", &auth),
            400,
        ),
        (
            "sign-in not JSON",
            c.post(s.url("/session")).body("token=x"),
            415,
        ),
        (
            "sign-in without a token field",
            c.post(s.url("/session")).json(&json!({"tokn": "x"})),
            422,
        ),
        (
            "body over the cap",
            c.post(s.url("/api/silences"))
                .header("authorization", &auth)
                .header("content-type", "application/json")
                .body("x".repeat(4096)),
            413,
        ),
        (
            "a rebound Host",
            c.get(s.url("/api/matrix")).header("host", "evil.example"),
            421,
        ),
    ];
    for (what, request, status) in cases {
        let resp = request.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), status, "{what}");
        let h = resp.headers().clone();
        assert!(
            h["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json"),
            "{what}: {h:?}"
        );
        assert!(
            h["content-security-policy"]
                .to_str()
                .unwrap()
                .starts_with("default-src 'none'"),
            "{what}"
        );
        assert_eq!(h["x-content-type-options"], "nosniff", "{what}");
        assert_eq!(h["x-frame-options"], "DENY", "{what}");
        assert_eq!(h["referrer-policy"], "no-referrer", "{what}");
        let body: Value = resp.json().await.unwrap();
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{what}: {body}"
        );
        if status == 401 {
            assert!(h.contains_key("www-authenticate"));
        }
        if status == 405 {
            assert!(h.contains_key("allow"), "{what}: {h:?}");
        }
    }
    s.stop().await;
}

#[tokio::test]
async fn sign_ins_are_rate_limited_and_sessions_can_be_ended_on_the_server() {
    let token = "session-test-token-0123456789";
    let config = egresswatch_collector::http::HttpConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        token: Some(token.into()),
        signin_attempts_per_minute: 3,
        ..Default::default()
    };
    let s = support::http::Server::start(config).await;
    let c = reqwest::Client::new();
    let sign_in = |t: &str| {
        c.post(s.url("/session"))
            .json(&json!({ "token": t }))
            .send()
    };
    let cookie = |resp: &reqwest::Response| {
        let set = resp.headers()["set-cookie"].to_str().unwrap();
        set.split(';').next().unwrap().to_string()
    };
    let with_cookie = |pair: &str| c.get(s.url("/api/matrix")).header("cookie", pair).send();

    // Two sessions, then a wrong guess: three attempts, the limit.
    let first = sign_in(token).await.unwrap();
    assert_eq!(first.status(), 204);
    let second = sign_in(token).await.unwrap();
    let (a, b) = (cookie(&first), cookie(&second));
    assert_ne!(a, b, "each sign-in opens its own session");
    assert_eq!(sign_in("not-the-token-at-all").await.unwrap().status(), 401);
    let limited = sign_in(token).await.unwrap();
    assert_eq!(limited.status(), 429, "the fourth attempt within a minute");
    let wait: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=20).contains(&wait), "{wait}");
    let said: Value = limited.json().await.unwrap();
    assert!(
        said["error"].as_str().unwrap().contains("too many"),
        "{said}"
    );

    // Signing out ends the session on the server: the same cookie, replayed, is refused.
    assert_eq!(with_cookie(&a).await.unwrap().status(), 200);
    let out = c
        .delete(s.url("/session"))
        .header("cookie", &a)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 204);
    assert_eq!(with_cookie(&a).await.unwrap().status(), 401);
    assert_eq!(with_cookie(&b).await.unwrap().status(), 200);

    // Every session ended at once.
    let ended: Value = c
        .delete(s.url("/api/sessions"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ended["ended"], 1);
    assert_eq!(with_cookie(&b).await.unwrap().status(), 401);
    let metrics = c
        .get(s.url("/metrics"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("egresswatch_limit_exceeded_total{limit=\"sign_in\"} 1"),
        "{metrics}"
    );
    s.stop().await;
}

#[test]
fn a_stalled_request_body_is_refused_after_the_body_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (_proc, addr) = start(dir.path(), "body_idle_timeout_secs = 2", "");
    let asked = Instant::now();
    let (status, raw) = exchange(
        addr,
        &format!(
            "POST /api/silences HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\n\
             Content-Length: 1000\r\nConnection: close\r\n\r\n{{\"all\": true,",
            addr.port()
        ),
        Duration::from_secs(15),
    )
    .expect("an answer before the client's own 15 s");
    let took = asked.elapsed();
    println!("a stalled body answered {status} after {took:?}");
    assert_eq!(status, 400, "{raw}");
    let answer: Value = serde_json::from_str(body(&raw)).expect("a JSON body");
    assert!(
        answer["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{answer}"
    );
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(10),
        "{took:?}"
    );
    let (_, raw) = get(addr, "/api/silences").unwrap();
    assert_eq!(body(&raw), "[]", "nothing was made of half a body");
}
