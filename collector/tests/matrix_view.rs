//! The matrix as a pure state machine: statuses, counts, dominant outcome, p50, freshness,
//! families kept apart, `no_address` excluded, provider aliases, documented policies and
//! mismatches, the both-families view that never shows `open` where a family is blocked, and
//! the exact `/api/matrix` JSON shape.

use egresswatch_collector::identity::AgentMeta;
use egresswatch_collector::matrix::{FamilyFilter, FamilyStatuses, Matrix, MatrixConfig, Status};
use egresswatch_wire::{Family, Labels, Outcome, PhaseTimings, ProbeResult};

const T0: i64 = 1_800_000_000_000;

fn agent(id: &str, provider: &str, account: &str, region: &str) -> AgentMeta {
    AgentMeta {
        agent_id: id.into(),
        labels: Labels {
            provider: provider.into(),
            account: account.into(),
            region: region.into(),
            instance: format!("i-{id}"),
        },
        agent_version: "t".into(),
    }
}

fn res(port: u16, family: Family, outcome: Outcome, connect_us: Option<u32>) -> ProbeResult {
    ProbeResult {
        seq: 1,
        at_unix_ms: T0,
        target: "mx".into(),
        port,
        family,
        outcome,
        timings: PhaseTimings {
            connect_us,
            ..Default::default()
        },
        ..Default::default()
    }
}

fn feed(m: &mut Matrix, a: &AgentMeta, results: &[ProbeResult]) {
    m.agent_seen(a, T0);
    for r in results {
        m.record(&a.agent_id, r, r.at_unix_ms);
    }
}

/// A matrix with the default configuration that has seen `a` and its `results`.
fn matrix_fed(a: &AgentMeta, results: &[ProbeResult]) -> Matrix {
    let mut m = Matrix::new(MatrixConfig::default());
    feed(&mut m, a, results);
    m
}

#[test]
fn rolls_up_by_provider_account_region_agent() {
    let mut m = Matrix::new(MatrixConfig::default());
    let g1 = agent("g1", "GCP", "a", "eu");
    let g2 = agent("g2", "google", "a", "us");
    let g3 = agent("g3", "gcp", "b", "eu");
    feed(
        &mut m,
        &g1,
        &[
            res(25, Family::Ipv4, Outcome::Timeout, None),
            res(587, Family::Ipv4, Outcome::Ok, Some(10_000)),
        ],
    );
    feed(
        &mut m,
        &g2,
        &[
            res(25, Family::Ipv4, Outcome::Timeout, None),
            res(587, Family::Ipv4, Outcome::Ok, Some(30_000)),
        ],
    );
    feed(
        &mut m,
        &g3,
        &[
            res(25, Family::Ipv4, Outcome::Refused, None),
            res(587, Family::Ipv4, Outcome::Timeout, None),
        ],
    );
    let v = m.view(FamilyFilter::All, T0 + 1000);
    assert_eq!(v.ports, vec![25, 465, 587, 2525, 443]);
    assert_eq!(v.providers.len(), 1, "aliases group into one provider row");
    let p = &v.providers[0];
    assert_eq!(p.provider, "gcp");
    assert_eq!(p.agents, 3);
    let c25 = &p.cells["25"];
    assert_eq!(c25.status, Status::Blocked);
    assert_eq!((c25.ok, c25.failed), (0, 3));
    assert_eq!(c25.outcome, Some("timeout"));
    assert_eq!(c25.p50_connect_ms, None);
    let c587 = &p.cells["587"];
    assert_eq!(c587.status, Status::Partial);
    assert_eq!((c587.ok, c587.failed), (2, 1));
    assert_eq!(c587.outcome, Some("ok"));
    assert_eq!(c587.p50_connect_ms, Some(20.0));
    assert_eq!(p.cells["465"].status, Status::Unknown);
    assert_eq!(p.cells["465"].since, None);
    // GCP documents 25 as blocked: consistent; and 587 as open while one account fails it —
    // partial is no contradiction.
    let doc = c25.doc.clone().flatten().expect("gcp documents port 25");
    assert_eq!(format!("{:?}", doc.policy), "Blocked");
    assert_eq!(c25.doc_mismatch, Some(false));
    let a = &p.accounts[0];
    assert_eq!(a.account, "a");
    assert_eq!(a.cells["587"].status, Status::Open);
    assert_eq!(a.regions.len(), 2);
    assert_eq!(a.regions[0].agent_list[0].agent, "g1");
    assert!(!a.regions[0].agent_list[0].silent);
    let b = &p.accounts[1];
    assert_eq!(b.cells["587"].status, Status::Blocked);
    // Account rows carry no doc.
    assert!(b.cells["587"].doc.is_none());
}

#[test]
fn documented_block_seen_open_is_a_mismatch() {
    let mut m = matrix_fed(
        &agent("g", "gcp", "a", "eu"),
        &[res(25, Family::Ipv4, Outcome::Ok, Some(5_000))],
    );
    let v = m.view(FamilyFilter::All, T0);
    assert_eq!(v.providers[0].cells["25"].doc_mismatch, Some(true));
}

#[test]
fn families_apart_and_no_address_excluded() {
    let mut m = matrix_fed(
        &agent("h", "hetzner", "a", "fsn"),
        &[
            res(587, Family::Ipv4, Outcome::Ok, Some(1_000)),
            res(587, Family::Ipv6, Outcome::Unreachable, None),
            res(2525, Family::Ipv6, Outcome::NoAddress, None),
        ],
    );
    let v4 = m.view(FamilyFilter::Ipv4, T0);
    let v6 = m.view(FamilyFilter::Ipv6, T0);
    assert_eq!(v4.providers[0].cells["587"].status, Status::Open);
    assert_eq!(v6.providers[0].cells["587"].status, Status::Blocked);
    assert_eq!(v6.providers[0].cells["587"].outcome, Some("unreachable"));
    assert_eq!(v6.providers[0].cells["2525"].status, Status::Unknown);
    assert_eq!(v6.providers[0].cells["2525"].failed, 0);
}

/// A provider whose agents all time out on 25 over IPv4 but connect over IPv6, in two accounts.
fn provider_blocked_over_ipv4_only() -> Matrix {
    let mut m = Matrix::new(MatrixConfig::default());
    for (id, account) in [("a1", "prod"), ("a2", "prod"), ("a3", "dev")] {
        feed(
            &mut m,
            &agent(id, "aws", account, "eu"),
            &[
                res(25, Family::Ipv4, Outcome::Timeout, None),
                res(25, Family::Ipv6, Outcome::Ok, Some(2_000)),
                res(587, Family::Ipv4, Outcome::Ok, Some(1_000)),
                res(587, Family::Ipv6, Outcome::Ok, Some(3_000)),
            ],
        );
    }
    m
}

#[test]
fn a_family_blocked_is_partial_with_the_family_named_at_every_level() {
    let mut m = provider_blocked_over_ipv4_only();
    let v = m.view(FamilyFilter::All, T0);
    let ipv4_blocked = Some(FamilyStatuses {
        ipv4: Status::Blocked,
        ipv6: Status::Open,
    });
    let p = &v.providers[0];
    let levels = [
        ("provider", &p.cells),
        ("account prod", &p.accounts[1].cells),
        ("account dev", &p.accounts[0].cells),
        ("region", &p.accounts[1].regions[0].cells),
        ("agent", &p.accounts[1].regions[0].agent_list[0].cells),
    ];
    for (level, cells) in levels {
        let c25 = &cells["25"];
        assert_eq!(c25.status, Status::Partial, "{level}: never open");
        assert_eq!(c25.families, ipv4_blocked, "{level}");
        // No agent is open in every family, so none counts as open.
        assert_eq!(c25.ok, 0, "{level}");
        assert_eq!(c25.outcome, Some("timeout"), "{level}");
        let c587 = &cells["587"];
        assert_eq!(c587.status, Status::Open, "{level}");
        assert_eq!(c587.families, None, "{level}: both families say open");
    }
    assert_eq!((p.cells["25"].ok, p.cells["25"].failed), (0, 3));
    assert_eq!(p.cells["587"].p50_connect_ms, Some(2.0));
    // AWS documents 25 as blocked: a partial cell contradicts nothing.
    assert_eq!(p.cells["25"].doc_mismatch, Some(false));

    // The per-family views are what they were, and carry no `families`.
    let v4 = m.view(FamilyFilter::Ipv4, T0);
    let v6 = m.view(FamilyFilter::Ipv6, T0);
    assert_eq!(v4.providers[0].cells["25"].status, Status::Blocked);
    assert_eq!(
        (
            v4.providers[0].cells["25"].ok,
            v4.providers[0].cells["25"].failed
        ),
        (0, 3)
    );
    assert_eq!(v6.providers[0].cells["25"].status, Status::Open);
    assert_eq!(v4.providers[0].cells["25"].families, None);
    assert_eq!(v6.providers[0].accounts[0].cells["25"].families, None);
}

#[test]
fn a_family_without_results_is_no_evidence_in_the_both_families_view() {
    let mut m = matrix_fed(
        &agent("h", "hetzner", "a", "fsn"),
        &[
            res(587, Family::Ipv4, Outcome::Ok, Some(1_000)),
            res(587, Family::Ipv6, Outcome::NoAddress, None),
            res(465, Family::Ipv4, Outcome::Refused, None),
        ],
    );
    let v = m.view(FamilyFilter::All, T0);
    let cells = &v.providers[0].cells;
    assert_eq!(cells["587"].status, Status::Open);
    assert_eq!(
        cells["587"].families,
        Some(FamilyStatuses {
            ipv4: Status::Open,
            ipv6: Status::Unknown
        })
    );
    assert_eq!(cells["465"].status, Status::Blocked);
    assert_eq!(cells["2525"].status, Status::Unknown);
}

#[test]
fn one_agent_open_in_each_family_differently_is_partial() {
    // One agent reaches 587 over IPv4 only, the other over IPv6 only: each family is partial,
    // and so is the cell; neither agent is open in every family.
    let mut m = Matrix::new(MatrixConfig::default());
    feed(
        &mut m,
        &agent("x", "vultr", "a", "r"),
        &[
            res(587, Family::Ipv4, Outcome::Ok, Some(1_000)),
            res(587, Family::Ipv6, Outcome::Unreachable, None),
        ],
    );
    feed(
        &mut m,
        &agent("y", "vultr", "a", "r"),
        &[
            res(587, Family::Ipv4, Outcome::Refused, None),
            res(587, Family::Ipv6, Outcome::Ok, Some(1_000)),
        ],
    );
    let c = &m.view(FamilyFilter::All, T0).providers[0].cells["587"];
    assert_eq!(c.status, Status::Partial);
    assert_eq!((c.ok, c.failed), (0, 2));
    // Each family is partial too, so the families agree and the cell names none.
    assert_eq!(c.families, None);
    // Each agent's own row names its blocked family.
    let agents = &m.view(FamilyFilter::All, T0).providers[0].accounts[0].regions[0].agent_list;
    assert_eq!(
        agents[0].cells["587"].families,
        Some(FamilyStatuses {
            ipv4: Status::Open,
            ipv6: Status::Blocked
        })
    );
    assert_eq!(agents[1].cells["587"].status, Status::Partial);
}

#[test]
fn stale_results_turn_unknown_and_silence_shows() {
    let mut m = Matrix::new(MatrixConfig {
        fresh_ms: 60_000,
        silent_after_ms: 120_000,
        ..MatrixConfig::default()
    });
    let a = agent("a", "aws", "x", "r");
    feed(&mut m, &a, &[res(25, Family::Ipv4, Outcome::Timeout, None)]);
    assert_eq!(
        m.view(FamilyFilter::All, T0 + 30_000).providers[0].cells["25"].status,
        Status::Blocked
    );
    let later = m.view(FamilyFilter::All, T0 + 200_000);
    assert_eq!(later.providers[0].cells["25"].status, Status::Unknown);
    assert!(later.providers[0].accounts[0].regions[0].agent_list[0].silent);
}

#[test]
fn since_holds_while_the_status_holds() {
    let mut m = matrix_fed(
        &agent("a", "aws", "x", "r"),
        &[res(25, Family::Ipv4, Outcome::Timeout, None)],
    );
    let first = m.view(FamilyFilter::All, T0 + 1_000).providers[0].cells["25"]
        .since
        .clone();
    let second = m.view(FamilyFilter::All, T0 + 5_000).providers[0].cells["25"]
        .since
        .clone();
    assert_eq!(first, second);
    let mut r = res(25, Family::Ipv4, Outcome::Ok, Some(1000));
    r.at_unix_ms = T0 + 6_000;
    m.record("a", &r, r.at_unix_ms);
    let third = m.view(FamilyFilter::All, T0 + 7_000).providers[0].cells["25"]
        .since
        .clone();
    assert_eq!(third.as_deref(), Some("2027-01-15T08:00:07.000Z"));
}

#[test]
fn json_has_the_contract_shape() {
    let mut m = matrix_fed(
        &agent("a", "<b>aws</b>", "x", "r"),
        &[res(587, Family::Ipv4, Outcome::Ok, Some(1000))],
    );
    let v = serde_json::to_value(m.view(FamilyFilter::All, T0)).unwrap();
    assert_eq!(v["family"], "all");
    assert_eq!(v["control_port"], 443);
    assert!(v["generated_at"].as_str().unwrap().ends_with('Z'));
    let p = &v["providers"][0];
    assert_eq!(
        p["provider"], "<b>aws</b>",
        "labels are data, escaped by the page"
    );
    let cell = &p["cells"]["587"];
    for k in [
        "status",
        "ok",
        "failed",
        "outcome",
        "p50_connect_ms",
        "since",
        "families",
        "doc",
        "doc_mismatch",
    ] {
        assert!(cell.get(k).is_some(), "provider cell lacks {k}: {cell}");
    }
    assert_eq!(
        cell["families"],
        serde_json::json!({ "ipv4": "open", "ipv6": "unknown" })
    );
    let acc = &p["accounts"][0];
    assert!(acc["cells"]["587"].get("doc").is_none());
    let agent_row = &acc["regions"][0]["agent_list"][0];
    for k in [
        "agent",
        "instance",
        "region",
        "last_seen",
        "silent",
        "cells",
    ] {
        assert!(agent_row.get(k).is_some(), "{k}");
    }
    assert_eq!(agent_row["cells"]["587"]["families"]["ipv4"], "open");
    // Where both families say the same (here: nothing), the cell has no `families`.
    assert!(p["cells"]["25"].get("families").is_none());
    // A per-family view keeps its cells as they were: no `families`.
    let v4 = serde_json::to_value(m.view(FamilyFilter::Ipv4, T0)).unwrap();
    assert!(v4["providers"][0]["cells"]["587"].get("families").is_none());
    assert_eq!(v4["control_port"], 443);
}

#[test]
fn the_control_port_follows_the_detector() {
    let mut m = Matrix::new(MatrixConfig {
        control_port: 8443,
        ..MatrixConfig::default()
    });
    assert_eq!(m.view(FamilyFilter::All, T0).control_port, 8443);
    // The collector's config gives the matrix the detector's control port.
    let config =
        egresswatch_collector::config::Config::parse("[detector]\ncontrol_port = 8443\n").unwrap();
    assert_eq!(config.fleet().matrix.control_port, 8443);
}
