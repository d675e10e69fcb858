//! The matcher, the validation of a new silence and the book, without a clock or a socket.

use super::*;
use crate::events::{EventKind, Scope, State};

const NOW: i64 = 1_795_000_000_000;
const HOUR: i64 = 3_600_000;

fn event(scope: Scope, family: Option<Family>) -> Event {
    Event {
        kind: EventKind::PolicyChanged,
        scope,
        provider: Some("gcp".into()),
        account: Some("acct-a".into()),
        agent: (scope == Scope::Agent).then(|| "g1".to_string()),
        target: Some("mx.example".into()),
        port: Some(587),
        from: State::Open,
        to: State::Blocked,
        at: rfc3339(NOW),
        family,
        id: None,
        outcome: None,
        at_unix_ms: NOW,
        since: None,
        witnesses: Vec::new(),
        silenced_by: None,
    }
}

fn request(json: &str) -> Result<NewSilence, String> {
    serde_json::from_str(json).map_err(|e| e.to_string())
}

fn valid(json: &str) -> Result<Silence, String> {
    request(json)?.validate("s-1".into(), Origin::Api, NOW)
}

#[test]
fn each_named_field_narrows_and_an_absent_one_matches_anything() {
    let m = |json: &str| serde_json::from_str::<Matcher>(json).unwrap();
    let e = event(Scope::Agent, Some(Family::Ipv4));
    assert!(m(r#"{"provider":"gcp"}"#).matches_event(&e));
    assert!(m(r#"{"provider":"Google"}"#).matches_event(&e), "aliases");
    assert!(m(r#"{"provider":"gcp","port":587,"family":"ipv4"}"#).matches_event(&e));
    assert!(!m(r#"{"provider":"aws"}"#).matches_event(&e));
    assert!(!m(r#"{"port":25}"#).matches_event(&e));
    assert!(!m(r#"{"family":"ipv6"}"#).matches_event(&e));
    assert!(m(r#"{"agent":"g1","target":"mx.example"}"#).matches_event(&e));
    // An event without the field is not covered by a matcher naming it.
    let account_wide = event(Scope::Account, None);
    assert!(!m(r#"{"agent":"g1"}"#).matches_event(&account_wide));
    assert!(!m(r#"{"family":"ipv4"}"#).matches_event(&account_wide));
    assert!(m(r#"{"account":"acct-a"}"#).matches_event(&account_wide));
}

#[test]
fn cells_match_by_labels_and_port() {
    let m: Matcher = serde_json::from_str(r#"{"provider":"gcp","port":25}"#).unwrap();
    assert!(m.matches_cell("gcp", "a", "g1", 25));
    assert!(!m.matches_cell("gcp", "a", "g1", 587));
    assert!(!m.matches_cell("aws", "a", "g1", 25));
}

#[test]
fn an_empty_matcher_is_refused_unless_all_is_explicit() {
    let end = rfc3339(NOW + HOUR);
    let err = valid(&format!(
        r#"{{"ends_at":"{end}","reason":"r","created_by":"me"}}"#
    ))
    .unwrap_err();
    assert!(
        err.contains("silence every alert") && err.contains("\"all\": true"),
        "{err}"
    );
    let s = valid(&format!(
        r#"{{"all":true,"ends_at":"{end}","reason":"r","created_by":"me"}}"#
    ))
    .unwrap();
    assert!(s.all && s.matches(&event(Scope::Agent, None), NOW));
    let err = valid(&format!(
        r#"{{"all":true,"matcher":{{"port":25}},"ends_at":"{end}","reason":"r","created_by":"me"}}"#
    ))
    .unwrap_err();
    assert!(err.contains("leave the matcher empty"), "{err}");
}

#[test]
fn bad_times_say_why() {
    let past = rfc3339(NOW - 1000);
    let err = valid(&format!(
        r#"{{"matcher":{{"port":25}},"ends_at":"{past}","reason":"r","created_by":"me"}}"#
    ))
    .unwrap_err();
    assert!(
        err.contains("not in the future") && err.contains(&rfc3339(NOW)),
        "{err}"
    );
    let err =
        valid(r#"{"matcher":{"port":25},"ends_at":"tomorrow","reason":"r","created_by":"me"}"#)
            .unwrap_err();
    assert!(err.contains("ends_at") && err.contains("RFC 3339"), "{err}");
    let (start, end) = (rfc3339(NOW + 2 * HOUR), rfc3339(NOW + HOUR));
    let err = valid(&format!(
        r#"{{"matcher":{{"port":25}},"starts_at":"{start}","ends_at":"{end}","reason":"r","created_by":"me"}}"#
    ))
    .unwrap_err();
    assert!(err.contains("later than starts_at"), "{err}");
    // Offsets and fractions are RFC 3339 too.
    assert_eq!(parse_rfc3339("1970-01-01T01:00:00.5+01:00"), Ok(500));
}

#[test]
fn unknown_fields_long_labels_and_missing_words_are_refused() {
    let end = rfc3339(NOW + HOUR);
    let err = request(&format!(
        r#"{{"matcher":{{"port":25}},"ends_at":"{end}","reason":"r","created_by":"me","comment":"x"}}"#
    ))
    .unwrap_err();
    assert!(err.contains("unknown field `comment`"), "{err}");
    let err = request(&format!(
        r#"{{"matcher":{{"prot":25}},"ends_at":"{end}","reason":"r","created_by":"me"}}"#
    ))
    .unwrap_err();
    assert!(err.contains("unknown field `prot`"), "{err}");
    let long = "x".repeat(MAX_LABEL_BYTES + 1);
    let err = valid(&format!(
        r#"{{"matcher":{{"provider":"{long}"}},"ends_at":"{end}","reason":"r","created_by":"me"}}"#
    ))
    .unwrap_err();
    assert!(
        err.contains("matcher.provider") && err.contains("longer than"),
        "{err}"
    );
    let err = valid(&format!(
        r#"{{"matcher":{{"port":25}},"ends_at":"{end}","reason":" ","created_by":"me"}}"#
    ))
    .unwrap_err();
    assert!(err.contains("reason is required"), "{err}");
    let err = valid(&format!(
        r#"{{"matcher":{{"port":0}},"ends_at":"{end}","reason":"r","created_by":"me"}}"#
    ))
    .unwrap_err();
    assert!(err.contains("matcher.port"), "{err}");
}

#[test]
fn a_silence_holds_only_inside_its_window_and_ending_keeps_the_record() {
    let start = rfc3339(NOW + HOUR);
    let end = rfc3339(NOW + 2 * HOUR);
    let mut planned = valid(&format!(
        r#"{{"matcher":{{"provider":"gcp"}},"starts_at":"{start}","ends_at":"{end}","reason":"maintenance","created_by":"ops"}}"#
    ))
    .unwrap();
    let e = event(Scope::Account, None);
    assert!(!planned.matches(&e, NOW), "not started yet");
    assert!(planned.matches(&e, NOW + HOUR + 1));
    assert!(!planned.matches(&e, NOW + 2 * HOUR), "the end is exclusive");
    assert_eq!(planned.view(NOW, 0)["state"], "pending");
    planned.end(NOW + HOUR + 10);
    assert!(!planned.matches(&e, NOW + HOUR + 10));
    assert_eq!(planned.ended_early_at_ms, Some(NOW + HOUR + 10));
    assert_eq!(planned.view(NOW + HOUR + 10, 0)["state"], "expired");
}

#[test]
fn the_book_names_the_silence_and_lists_active_or_all() {
    let end = rfc3339(NOW + HOUR);
    let s = valid(&format!(
        r#"{{"matcher":{{"port":587}},"ends_at":"{end}","reason":"r","created_by":"me"}}"#
    ))
    .unwrap();
    let book = SilenceBook::new(vec![s.clone()]);
    let e = event(Scope::Agent, Some(Family::Ipv4));
    assert_eq!(book.silenced_by(&e, NOW).as_deref(), Some("s-1"));
    assert_eq!(book.silenced_by(&e, NOW + HOUR), None);
    assert_eq!(book.list(false, NOW).len(), 1);
    let mut ended = s;
    ended.end(NOW + 5);
    book.put(ended);
    assert_eq!(book.silenced_by(&e, NOW + 6), None);
    assert!(book.list(false, NOW + 6).is_empty());
    assert_eq!(book.list(true, NOW + 6).len(), 1);
}

#[test]
fn config_windows_parse_and_an_old_one_is_kept_as_expired() {
    #[derive(Deserialize)]
    struct File {
        silence: Vec<SilenceConfig>,
    }
    let file: File = toml::from_str(
        r#"
[[silence]]
provider = "gcp"
port = 25
starts_at = "2026-12-24T00:00:00Z"
ends_at = "2026-12-27T00:00:00Z"
reason = "holiday change freeze"

[[silence]]
id = "old"
account = "acct-a"
ends_at = "2020-01-01T00:00:00Z"
reason = "long over"
"#,
    )
    .unwrap();
    let planned = file.silence[0].silence(0, NOW).unwrap();
    assert_eq!(planned.id, "config-1");
    assert_eq!(planned.origin, Origin::Config);
    assert_eq!(planned.created_by, "config");
    assert!(planned.starts_at_ms > NOW);
    let old = file.silence[1].silence(1, NOW).unwrap();
    assert_eq!(old.id, "old");
    assert!(!old.active(NOW));
    let bad: Result<File, _> =
        toml::from_str("[[silence]]\nport = 25\nends_at = \"x\"\nreason = \"r\"\nbogus = 1\n");
    assert!(bad.err().unwrap().to_string().contains("bogus"));
}
