//! Identity detection against what a VM really shows: DMI fixtures with the strings each cloud
//! writes under /sys/class/dmi/id, and a metadata service on loopback that speaks each provider's
//! real paths and headers — and, like the real ones, refuses requests without them.

use egresswatch_agent::run::identity::{self, Provider};
use egresswatch_wire::Labels;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/dmi")
        .join(name)
}

#[test]
fn dmi_strings_name_the_provider() {
    let cases = [
        ("gcp", Some(Provider::Gcp)),
        ("aws-nitro", Some(Provider::Aws)),
        ("azure", Some(Provider::Azure)),
        ("digitalocean", Some(Provider::DigitalOcean)),
        ("hetzner", Some(Provider::Hetzner)),
        // Hyper-V on premises says "Microsoft Corporation" too, but lacks Azure's asset tag.
        ("hyperv-onprem", None),
        ("qemu-laptop", None),
    ];
    for (dir, expected) in cases {
        assert_eq!(
            identity::provider_from_dmi(&fixture(dir)),
            expected,
            "{dir}"
        );
    }
}

#[test]
fn missing_dmi_directory_is_no_provider() {
    assert_eq!(
        identity::provider_from_dmi(&fixture("does-not-exist")),
        None
    );
}

/// One request as the fake metadata service saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    headers: HashMap<String, String>,
}

type Handler = Arc<dyn Fn(&Seen) -> (u16, String) + Send + Sync>;

/// A minimal HTTP/1.1 server on loopback: one request per connection, answered by `handler`.
/// Returns its base URL and the log of requests it received.
async fn metadata_server(handler: Handler) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = log.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let handler = handler.clone();
            let log = log2.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 64 * 1024 {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&buf).to_string();
                let mut lines = text.split("\r\n");
                let mut request_line = lines.next().unwrap_or_default().split(' ');
                let method = request_line.next().unwrap_or_default().to_string();
                let path = request_line.next().unwrap_or_default().to_string();
                let headers = lines
                    .take_while(|l| !l.is_empty())
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                    .collect();
                let seen = Seen {
                    method,
                    path,
                    headers,
                };
                let (status, body) = handler(&seen);
                log.lock().unwrap().push(seen);
                let reason = match status {
                    200 => "OK",
                    400 => "Bad Request",
                    401 => "Unauthorized",
                    403 => "Forbidden",
                    _ => "Not Found",
                };
                let response = format!(
                    "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (base, log)
}

fn header<'a>(seen: &'a Seen, name: &str) -> Option<&'a str> {
    seen.headers.get(name).map(String::as_str)
}

const AWS_TOKEN: &str = "AQAEAHf3Tcd2vn0Ms8-fake-token==";

/// AWS IMDSv2: a token from PUT /latest/api/token (TTL header required), then GETs carrying it.
fn aws(seen: &Seen) -> (u16, String) {
    match (seen.method.as_str(), seen.path.as_str()) {
        ("PUT", "/latest/api/token") => {
            match header(seen, "x-aws-ec2-metadata-token-ttl-seconds") {
                Some(ttl) if ttl.parse::<u32>().is_ok_and(|t| (1..=21600).contains(&t)) => {
                    (200, AWS_TOKEN.into())
                }
                _ => (400, String::new()),
            }
        }
        ("GET", "/latest/dynamic/instance-identity/document") => {
            if header(seen, "x-aws-ec2-metadata-token") != Some(AWS_TOKEN) {
                return (401, String::new());
            }
            (
                200,
                r#"{
  "accountId" : "123456789012",
  "architecture" : "x86_64",
  "availabilityZone" : "eu-central-1a",
  "imageId" : "ami-0abcdef1234567890",
  "instanceId" : "i-0123456789abcdef0",
  "instanceType" : "m5.large",
  "privateIp" : "10.0.1.23",
  "region" : "eu-central-1",
  "version" : "2017-09-30"
}"#
                .into(),
            )
        }
        _ => (404, String::new()),
    }
}

/// GCP: every request needs `Metadata-Flavor: Google`, else 403.
fn gcp(seen: &Seen) -> (u16, String) {
    if header(seen, "metadata-flavor") != Some("Google") {
        return (403, "Missing Metadata-Flavor:Google header.".into());
    }
    match seen.path.as_str() {
        "/computeMetadata/v1/project/project-id" => (200, "mail-fleet-prod".into()),
        "/computeMetadata/v1/instance/zone" => {
            (200, "projects/123456789012/zones/europe-west1-b".into())
        }
        "/computeMetadata/v1/instance/id" => (200, "4520031799277581759".into()),
        _ => (404, String::new()),
    }
}

/// Azure IMDS: `Metadata: true` and an api-version, else 400.
fn azure(seen: &Seen) -> (u16, String) {
    if header(seen, "metadata") != Some("true") {
        return (
            400,
            r#"{"error":"Bad request. Required metadata header not specified"}"#.into(),
        );
    }
    if seen.path != "/metadata/instance?api-version=2021-02-01" {
        return (404, String::new());
    }
    (
        200,
        r#"{"compute":{"location":"westeurope","name":"mx-probe-1","subscriptionId":"8d3a1c52-2f4e-4b7a-9c61-0e5d7f3b2a10","vmId":"02aab8a4-74ef-476e-8182-f6d2ba4166a6","vmSize":"Standard_B1s"},"network":{"interface":[]}}"#.into(),
    )
}

fn digitalocean(seen: &Seen) -> (u16, String) {
    match seen.path.as_str() {
        "/metadata/v1/id" => (200, "2756294".into()),
        "/metadata/v1/region" => (200, "nyc3".into()),
        _ => (404, String::new()),
    }
}

fn hetzner(seen: &Seen) -> (u16, String) {
    match seen.path.as_str() {
        "/hetzner/v1/metadata/instance-id" => (200, "42424242".into()),
        "/hetzner/v1/metadata/region" => (200, "eu-central".into()),
        _ => (404, String::new()),
    }
}

fn labels(provider: &str, account: &str, region: &str, instance: &str) -> Labels {
    Labels {
        provider: provider.into(),
        account: account.into(),
        region: region.into(),
        instance: instance.into(),
    }
}

#[tokio::test]
async fn each_provider_metadata_service_yields_its_labels() {
    let cases: Vec<(Provider, Handler, Labels)> = vec![
        (
            Provider::Aws,
            Arc::new(aws),
            labels("aws", "123456789012", "eu-central-1", "i-0123456789abcdef0"),
        ),
        (
            Provider::Gcp,
            Arc::new(gcp),
            labels(
                "gcp",
                "mail-fleet-prod",
                "europe-west1",
                "4520031799277581759",
            ),
        ),
        (
            Provider::Azure,
            Arc::new(azure),
            labels(
                "azure",
                "8d3a1c52-2f4e-4b7a-9c61-0e5d7f3b2a10",
                "westeurope",
                "02aab8a4-74ef-476e-8182-f6d2ba4166a6",
            ),
        ),
        (
            Provider::DigitalOcean,
            Arc::new(digitalocean),
            labels("digitalocean", "", "nyc3", "2756294"),
        ),
        (
            Provider::Hetzner,
            Arc::new(hetzner),
            labels("hetzner", "", "eu-central", "42424242"),
        ),
    ];
    for (provider, handler, expected) in cases {
        let (base, log) = metadata_server(handler).await;
        let got = identity::labels_from_metadata(provider, &base).await;
        assert_eq!(got, expected, "{provider:?}");
        let log = log.lock().unwrap();
        assert!(
            !log.is_empty(),
            "{provider:?}: no request reached the server"
        );
        // Every request carried what the real service demands (the handlers refuse otherwise,
        // so this only makes the expectation explicit).
        match provider {
            Provider::Aws => {
                assert_eq!(log[0].method, "PUT");
                assert_eq!(log[0].path, "/latest/api/token");
            }
            Provider::Gcp => assert!(log
                .iter()
                .all(|s| header(s, "metadata-flavor") == Some("Google"))),
            Provider::Azure => assert!(log.iter().all(|s| header(s, "metadata") == Some("true"))),
            _ => {}
        }
    }
}

#[tokio::test]
async fn a_service_refusing_us_gives_empty_labels_not_wrong_ones() {
    // A GCP that refuses every request (as it would without the header): only the provider.
    let refuse: Handler = Arc::new(|_: &Seen| (403, "Forbidden".into()));
    let (base, _) = metadata_server(refuse).await;
    let got = identity::labels_from_metadata(Provider::Gcp, &base).await;
    assert_eq!(got, labels("gcp", "", "", ""));
    // AWS with a token endpoint that fails: the document is never fetched.
    let (base, log) = metadata_server(Arc::new(|_: &Seen| (400, String::new()))).await;
    let got = identity::labels_from_metadata(Provider::Aws, &base).await;
    assert_eq!(got, labels("aws", "", "", ""));
    assert_eq!(log.lock().unwrap().len(), 1, "no GET without a token");
}

#[tokio::test]
async fn an_absent_or_silent_service_is_bounded_in_time() {
    // Nothing listening: fails fast.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let started = Instant::now();
    let got = identity::labels_from_metadata(Provider::Hetzner, &base).await;
    assert_eq!(got, labels("hetzner", "", "", ""));
    assert!(started.elapsed() < Duration::from_secs(2));

    // Accepts and never answers: each request gives up at its deadline.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", silent.local_addr().unwrap());
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let started = Instant::now();
    let got = identity::labels_from_metadata(Provider::DigitalOcean, &base).await;
    let took = started.elapsed();
    hold.abort();
    assert_eq!(got, labels("digitalocean", "", "", ""));
    assert!(took < Duration::from_secs(5), "two requests took {took:?}");
}

#[tokio::test]
async fn config_wins_field_by_field_over_detection() {
    let (base, _) = metadata_server(Arc::new(gcp)).await;
    let configured = labels("", "billing-account-7", "", "");
    let got = identity::resolve(&configured, &fixture("gcp"), true, &base).await;
    assert_eq!(
        got,
        labels(
            "gcp",
            "billing-account-7",
            "europe-west1",
            "4520031799277581759"
        )
    );

    // Complete config: no detection at all, not even on a machine that looks like a cloud.
    let (base, log) = metadata_server(Arc::new(gcp)).await;
    let configured = labels("onprem", "lab", "dc1", "vm7");
    let got = identity::resolve(&configured, &fixture("gcp"), true, &base).await;
    assert_eq!(got, configured);
    assert!(log.lock().unwrap().is_empty());

    // Unknown hardware: what the config says, nothing invented.
    let configured = labels("", "acct", "", "");
    let got = identity::resolve(&configured, &fixture("qemu-laptop"), true, &base).await;
    assert_eq!(got, configured);

    // Hetzner names no account: it stays empty unless configured.
    let (base, _) = metadata_server(Arc::new(hetzner)).await;
    let got = identity::resolve(&Labels::default(), &fixture("hetzner"), true, &base).await;
    assert_eq!(got, labels("hetzner", "", "eu-central", "42424242"));
}
