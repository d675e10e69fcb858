//! Who am I? The labels an agent reports (provider, account, region, instance): from config
//! when given; otherwise detected as an unprivileged process can — first the world-readable DMI
//! strings under /sys/class/dmi/id (no network), then the provider's metadata service, with its
//! real paths and headers, under a short deadline. Config always wins, field by field.

use bytes::Bytes;
use egresswatch_wire::Labels;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use std::path::Path;
use std::time::Duration;

/// Each metadata request's deadline: the service is link-local, or it is not there.
const METADATA_DEADLINE: Duration = Duration::from_millis(1500);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Gcp,
    Aws,
    Azure,
    DigitalOcean,
    Hetzner,
}

impl Provider {
    pub fn label(self) -> &'static str {
        match self {
            Provider::Gcp => "gcp",
            Provider::Aws => "aws",
            Provider::Azure => "azure",
            Provider::DigitalOcean => "digitalocean",
            Provider::Hetzner => "hetzner",
        }
    }

    /// Providers whose metadata service names no account: the account must come from config.
    pub fn exposes_account(self) -> bool {
        !matches!(self, Provider::DigitalOcean | Provider::Hetzner)
    }
}

/// Azure's fixed chassis asset tag.
const AZURE_ASSET_TAG: &str = "7783-7084-3265-9085-8269-3286-77";

/// Reads the DMI strings an unprivileged process may read and names the provider.
pub fn provider_from_dmi(dmi_dir: &Path) -> Option<Provider> {
    let read = |name: &str| {
        std::fs::read_to_string(dmi_dir.join(name))
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    let vendor = read("sys_vendor");
    let product = read("product_name");
    let board = read("board_vendor");
    let asset = read("chassis_asset_tag");
    if vendor == "Google" || product == "Google Compute Engine" {
        Some(Provider::Gcp)
    } else if vendor.starts_with("Amazon EC2")
        || board.starts_with("Amazon EC2")
        || product.starts_with("Amazon EC2")
    {
        Some(Provider::Aws)
    } else if vendor == "Microsoft Corporation" && asset == AZURE_ASSET_TAG {
        // Without the asset tag it is any Hyper-V guest, on premises as well.
        Some(Provider::Azure)
    } else if vendor == "DigitalOcean" {
        Some(Provider::DigitalOcean)
    } else if vendor == "Hetzner" {
        Some(Provider::Hetzner)
    } else {
        None
    }
}

/// Asks the provider's metadata service for what it tells; empty fields where it said nothing.
pub async fn labels_from_metadata(provider: Provider, base_url: &str) -> Labels {
    let mut labels = Labels {
        provider: provider.label().into(),
        ..Default::default()
    };
    let client = Metadata {
        base: base_url.trim_end_matches('/').to_string(),
    };
    match provider {
        Provider::Aws => {
            let token = client
                .request(
                    "PUT",
                    "/latest/api/token",
                    &[("X-aws-ec2-metadata-token-ttl-seconds", "60")],
                )
                .await;
            if let Some(token) = token {
                let doc = client
                    .request(
                        "GET",
                        "/latest/dynamic/instance-identity/document",
                        &[("X-aws-ec2-metadata-token", token.trim())],
                    )
                    .await
                    .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
                if let Some(doc) = doc {
                    let field = |k: &str| {
                        doc.get(k)
                            .and_then(|v| v.as_str())
                            .unwrap_or_default()
                            .to_string()
                    };
                    labels.account = field("accountId");
                    labels.region = field("region");
                    labels.instance = field("instanceId");
                }
            }
        }
        Provider::Gcp => {
            let h = [("Metadata-Flavor", "Google")];
            labels.account = client
                .request("GET", "/computeMetadata/v1/project/project-id", &h)
                .await
                .unwrap_or_default();
            let zone = client
                .request("GET", "/computeMetadata/v1/instance/zone", &h)
                .await
                .unwrap_or_default();
            // "projects/123/zones/europe-west1-b" → region "europe-west1".
            let zone = zone.rsplit('/').next().unwrap_or_default();
            labels.region = zone
                .rsplit_once('-')
                .map(|(r, _)| r.to_string())
                .unwrap_or_default();
            labels.instance = client
                .request("GET", "/computeMetadata/v1/instance/id", &h)
                .await
                .unwrap_or_default();
        }
        Provider::Azure => {
            let doc = client
                .request(
                    "GET",
                    "/metadata/instance?api-version=2021-02-01",
                    &[("Metadata", "true")],
                )
                .await
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
            if let Some(compute) = doc.as_ref().and_then(|d| d.get("compute")) {
                let field = |k: &str| {
                    compute
                        .get(k)
                        .and_then(|v| v.as_str())
                        .unwrap_or_default()
                        .to_string()
                };
                labels.account = field("subscriptionId");
                labels.region = field("location");
                labels.instance = field("vmId");
            }
        }
        Provider::DigitalOcean => {
            labels.instance = client
                .request("GET", "/metadata/v1/id", &[])
                .await
                .unwrap_or_default();
            labels.region = client
                .request("GET", "/metadata/v1/region", &[])
                .await
                .unwrap_or_default();
        }
        Provider::Hetzner => {
            labels.instance = client
                .request("GET", "/hetzner/v1/metadata/instance-id", &[])
                .await
                .unwrap_or_default();
            labels.region = client
                .request("GET", "/hetzner/v1/metadata/region", &[])
                .await
                .unwrap_or_default();
        }
    }
    for value in [
        &mut labels.account,
        &mut labels.region,
        &mut labels.instance,
    ] {
        *value = value
            .trim()
            .chars()
            .filter(|c| !c.is_control())
            .take(egresswatch_wire::limits::MAX_LABEL_BYTES)
            .collect();
    }
    labels
}

/// Config first, field by field; then what was detected.
pub fn merge(configured: &Labels, detected: &Labels) -> Labels {
    let pick = |c: &str, d: &str| {
        if c.is_empty() {
            d.to_string()
        } else {
            c.to_string()
        }
    };
    Labels {
        provider: pick(&configured.provider, &detected.provider),
        account: pick(&configured.account, &detected.account),
        region: pick(&configured.region, &detected.region),
        instance: pick(&configured.instance, &detected.instance),
    }
}

/// Detects what the config leaves open. Logs what it could not learn.
pub async fn resolve(
    configured: &Labels,
    dmi_dir: &Path,
    metadata: bool,
    metadata_url: &str,
) -> Labels {
    let complete = [
        &configured.provider,
        &configured.account,
        &configured.region,
        &configured.instance,
    ]
    .iter()
    .all(|v| !v.is_empty());
    if complete {
        return configured.clone();
    }
    let Some(provider) = provider_from_dmi(dmi_dir) else {
        if configured.provider.is_empty() {
            tracing::warn!(
                "provider not recognised from DMI and not in the config: set [labels] provider"
            );
        }
        return configured.clone();
    };
    let detected = if metadata {
        labels_from_metadata(provider, metadata_url).await
    } else {
        Labels {
            provider: provider.label().into(),
            ..Default::default()
        }
    };
    let labels = merge(configured, &detected);
    if labels.account.is_empty() && !provider.exposes_account() {
        tracing::warn!(
            provider = provider.label(),
            "this provider's metadata names no account: set [labels] account in the config"
        );
    }
    labels
}

struct Metadata {
    base: String,
}

impl Metadata {
    /// One request to the metadata service; `None` on any failure (absent service, refusal).
    async fn request(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Option<String> {
        tokio::time::timeout(METADATA_DEADLINE, self.request_inner(method, path, headers))
            .await
            .ok()
            .flatten()
    }

    async fn request_inner(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Option<String> {
        let authority = self
            .base
            .strip_prefix("http://")?
            .split('/')
            .next()?
            .to_string();
        let stream = tokio::net::TcpStream::connect(&authority).await.ok()?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .ok()?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("Host", authority.as_str());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(Bytes::new())).ok()?;
        let response = sender.send_request(request).await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        let body = response.into_body().collect().await.ok()?.to_bytes();
        if body.len() > 64 * 1024 {
            return None;
        }
        String::from_utf8(body.to_vec()).ok()
    }
}
