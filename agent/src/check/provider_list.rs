//! `check --provider list --json`: the presets as one JSON document for scripts, in a shape of
//! its own (docs/check.md), written out field by field so that renaming something inside the
//! data file or [`Preset`] cannot change it unnoticed.
//!
//! Every preset with its sources (`source`, `api_source`, the day `read`), what the sources did
//! not confirm, and for a preset with regions, each region's hosts as `--provider NAME:REGION`
//! would probe them.

use crate::presets::{Preset, Presets};
use serde_json::{json, Value};

/// The document: `{ "presets": [ … ] }`, in the order `check --provider list` prints them.
pub fn list_json(presets: &Presets) -> Value {
    let list: Vec<Value> = presets
        .providers
        .iter()
        .map(|p| preset_json(presets, p))
        .collect();
    json!({ "presets": list })
}

fn preset_json(presets: &Presets, p: &Preset) -> Value {
    let ports: Vec<Value> = p
        .ports
        .iter()
        .map(|port| json!({ "port": port.port, "tls": port.tls, "confirmed": port.confirmed }))
        .collect();
    // Each region as `--provider NAME:REGION` resolves it; a region that does not resolve
    // cannot be in a preset that loaded, but is left out rather than guessed if it ever is.
    let regions: Vec<Value> = p
        .regions
        .iter()
        .filter_map(|region| {
            let r = presets.resolve(&format!("{}:{region}", p.name)).ok()?;
            Some(json!({ "region": region, "smtp_host": r.smtp_host, "api_host": r.api_host }))
        })
        .collect();
    json!({
        "name": p.name,
        "title": p.title,
        "from_user": presets.from_user.contains(&p.name),
        "smtp_host": p.smtp_host,
        "api_host": p.api_host,
        "api_port": crate::probe::PORT_HTTPS,
        "ports": ports,
        "regions": regions,
        "default_region": p.default_region,
        "source": p.source,
        "api_source": p.api_source,
        "read": p.read,
        "unconfirmed": p.unconfirmed,
        "note": p.note,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented keys (docs/check.md), exactly: a change here is a change of the contract.
    #[test]
    fn the_documented_shape() {
        let presets = Presets::builtin().expect("built-in presets");
        let doc = list_json(&presets);
        let list = doc["presets"].as_array().expect("presets array");
        assert_eq!(list.len(), presets.providers.len());
        let keys = |v: &Value| -> Vec<String> {
            let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
            k.sort();
            k
        };
        for p in list {
            assert_eq!(
                keys(p),
                [
                    "api_host",
                    "api_port",
                    "api_source",
                    "default_region",
                    "from_user",
                    "name",
                    "note",
                    "ports",
                    "read",
                    "regions",
                    "smtp_host",
                    "source",
                    "title",
                    "unconfirmed"
                ]
            );
            assert!(p["source"].as_str().unwrap().starts_with("https://"), "{p}");
            assert_eq!(p["read"].as_str().unwrap().len(), 10);
            for port in p["ports"].as_array().unwrap() {
                assert_eq!(keys(port), ["confirmed", "port", "tls"]);
                assert!(["starttls", "implicit"].contains(&port["tls"].as_str().unwrap()));
            }
        }
        let zepto = list.iter().find(|p| p["name"] == "zeptomail").unwrap();
        assert_eq!(zepto["smtp_host"], "smtp.zeptomail.com");
        assert_eq!(zepto["api_port"], 443);
        assert_eq!(zepto["regions"], json!([]));
        assert_eq!(zepto["from_user"], false);
        let ses = list.iter().find(|p| p["name"] == "ses").unwrap();
        let eu = ses["regions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["region"] == "eu-west-1")
            .unwrap();
        assert_eq!(keys(eu), ["api_host", "region", "smtp_host"]);
        assert_eq!(eu["smtp_host"], "email-smtp.eu-west-1.amazonaws.com");
        assert_eq!(ses["default_region"], Value::Null);
    }

    #[test]
    fn a_user_preset_is_marked_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mine.toml");
        std::fs::write(
            &path,
            r#"[[provider]]
name = "acme"
title = "Acme Mail"
smtp_host = "smtp.acme.example"
api_host = "api.acme.example"
ports = [{ port = 587, tls = "starttls", confirmed = false }]
source = "https://acme.example/smtp"
read = "2026-12-01"
"#,
        )
        .unwrap();
        let presets = Presets::load(Some(&path)).unwrap();
        let doc = list_json(&presets);
        let acme = doc["presets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "acme")
            .unwrap();
        assert_eq!(acme["from_user"], true);
        assert_eq!(
            acme["ports"],
            json!([{ "port": 587, "tls": "starttls", "confirmed": false }])
        );
    }
}
