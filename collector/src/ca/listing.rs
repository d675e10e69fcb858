//! `ca list`: the certificates the CA issued, one line each, oldest first, with their status
//! (valid, expired, revoked and why). A plain function of the index and the clock.

use super::registry::{read_index, Index};
use crate::error::CollectorError;
use std::path::Path;

/// The listing of the CA in `dir` at `now_unix` (seconds).
pub fn list(dir: &Path, now_unix: i64) -> Result<String, CollectorError> {
    if !super::exists(dir) {
        return Err(CollectorError::Ca(format!(
            "{} holds no CA (ca.pem and ca.key)",
            dir.display()
        )));
    }
    Ok(render(&read_index(dir)?, now_unix))
}

/// The table for `index`, with a note when it is empty.
pub fn render(index: &Index, now_unix: i64) -> String {
    let mut out = format!(
        "{:<32} {:<34} {:<22} status\n",
        "agent", "serial", "not after"
    );
    for c in &index.certificates {
        let status = match c.revoked_at {
            Some(at) if c.reason.is_empty() => format!("revoked {}", date(at)),
            Some(at) => format!("revoked {} ({})", date(at), c.reason),
            None if c.not_after < now_unix => "expired".to_string(),
            None => "valid".to_string(),
        };
        out.push_str(&format!(
            "{:<32} {:<34} {:<22} {status}\n",
            c.agent_id,
            c.serial,
            date(c.not_after)
        ));
    }
    if index.certificates.is_empty() {
        out.push_str("(no certificates on record; certificates issued before index.json existed are not listed)\n");
    }
    out
}

/// RFC 3339 of Unix seconds, or the number itself where it is out of range.
fn date(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::registry::IssuedRecord;

    #[test]
    fn says_valid_expired_and_revoked_with_the_reason() {
        let record = |id: &str, not_after, revoked_at, reason: &str| IssuedRecord {
            serial: format!("{id}-serial"),
            agent_id: id.into(),
            issued_at: 0,
            not_after,
            revoked_at,
            reason: reason.into(),
        };
        let index = Index {
            crl_number: 1,
            certificates: vec![
                record("fresh", 2_000, None, ""),
                record("old", 500, None, ""),
                record("gone", 2_000, Some(0), "key leaked"),
            ],
        };
        let text = render(&index, 1_000);
        let status = |id: &str| {
            let line = text.lines().find(|l| l.starts_with(id)).unwrap();
            line.split_whitespace()
                .skip(3)
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(status("fresh"), "valid");
        assert_eq!(status("old"), "expired");
        assert_eq!(status("gone"), "revoked 1970-01-01T00:00:00Z (key leaked)");
        assert!(render(&Index::default(), 0).contains("no certificates on record"));
    }
}
