//! Which `Host` a request may name: the defence against DNS rebinding. A page on
//! `evil.example` that makes its name resolve to 127.0.0.1 has the operator's browser send
//! requests to a loopback collector with `Host: evil.example` (and an `Origin` and
//! `Sec-Fetch-Site: same-origin` that look like our own page's). Such a request is refused (421)
//! unless the name is one the collector is known by:
//!
//! - an IP address (any): a browser sends one only when it was pointed at the address itself,
//!   so the page that asks came from this collector; a rebinding needs a name the attacker owns;
//! - `localhost` and names under `.localhost`, which browsers resolve to loopback themselves;
//! - the host of `http.public_url`;
//! - the names in `http.allowed_hosts` (a proxy's name, another DNS name of the host).
//!
//! A request without `Host` (HTTP/1.0 tools) is served: no browser sends one. The port is not
//! checked: a rebinding changes the name, and the name is what it cannot fake.

use std::net::IpAddr;

/// The names a request's `Host` may carry besides addresses and `localhost`.
#[derive(Debug, Clone, Default)]
pub struct HostPolicy {
    names: Vec<String>,
}

impl HostPolicy {
    /// From `http.public_url` (its host) and `http.allowed_hosts`.
    pub fn new(public_url: Option<&str>, allowed_hosts: &[String]) -> HostPolicy {
        let public = public_url
            .and_then(|u| reqwest::Url::parse(u).ok())
            .and_then(|u| u.host_str().map(str::to_string));
        let names = public
            .into_iter()
            .chain(allowed_hosts.iter().cloned())
            .map(|n| normalise(&n))
            .collect();
        HostPolicy { names }
    }

    /// Whether a request carrying `host` (the header's value, port included) is for us.
    pub fn admits(&self, host: Option<&str>) -> bool {
        let Some(host) = host else {
            return true;
        };
        let name = normalise(strip_port(host.trim()));
        if name.is_empty() {
            return false;
        }
        if name.parse::<IpAddr>().is_ok() {
            return true;
        }
        if name == "localhost" || name.ends_with(".localhost") {
            return true;
        }
        self.names.contains(&name)
    }
}

/// A config's `allowed_hosts` entry that is not a host name (no port, no scheme, no path).
pub fn invalid_allowed_host(name: &str) -> Option<String> {
    let n = name.trim();
    let valid = !n.is_empty()
        && n.len() <= 253
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    (!valid).then(|| {
        format!("{name:?} is not a host name (give the name alone: no scheme, port or path)")
    })
}

/// `name:port`, `[v6]:port`, `[v6]` → the name or address alone.
fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(addr, _)| addr);
    }
    match host.rsplit_once(':') {
        // A bare IPv6 address has several colons and no brackets: keep it whole.
        Some((name, port)) if !name.contains(':') && port.chars().all(|c| c.is_ascii_digit()) => {
            name
        }
        _ => host,
    }
}

/// Lower case, without the trailing dot of a fully qualified name.
fn normalise(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_localhost_and_configured_names_are_admitted() {
        let p = HostPolicy::new(
            Some("https://Watch.Example.net/egress/"),
            &["collector.internal".to_string()],
        );
        for ok in [
            "127.0.0.1:8080",
            "127.0.0.1",
            "[::1]:8080",
            "[::1]",
            "::1",
            "198.18.0.10:8080",
            "localhost:8080",
            "LOCALHOST",
            "app.localhost:8080",
            "watch.example.net",
            "watch.example.net.:443",
            "collector.internal:8080",
        ] {
            assert!(p.admits(Some(ok)), "{ok}");
        }
        assert!(p.admits(None));
        for refused in [
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "watch.example.net.evil.example",
            "127.0.0.1.nip.io",
            "",
            ":8080",
        ] {
            assert!(!p.admits(Some(refused)), "{refused}");
        }
        assert!(!HostPolicy::default().admits(Some("watch.example.net")));
    }

    #[test]
    fn allowed_hosts_entries_must_be_names() {
        assert!(invalid_allowed_host("collector.internal").is_none());
        assert!(invalid_allowed_host("watch-1.example.net").is_none());
        for bad in [
            "",
            " ",
            "https://x.example",
            "x.example:8080",
            "x.example/path",
        ] {
            assert!(invalid_allowed_host(bad).is_some(), "{bad}");
        }
    }
}
