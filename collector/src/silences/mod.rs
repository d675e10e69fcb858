//! Silences: windows in which the events a matcher names are recorded and shown (with
//! `silenced_by` set) but no alert sink notifies anyone. This module is the pure part — the
//! matcher, the validation of a new silence, and the [`SilenceBook`] the fan-out asks "is this
//! event silenced now?" — so all of it is tested without a socket or a clock. Silences come from
//! the API (`POST /api/silences`, stored durably) and from `[[silence]]` tables in the config
//! (planned windows, read at start, never stored).

use crate::clock::rfc3339;
use crate::events::Event;
use crate::providers::provider_key;
use egresswatch_wire::limits::MAX_LABEL_BYTES;
use egresswatch_wire::Family;
use serde::{Deserialize, Serialize};
use std::sync::RwLock;

/// Longest `reason` accepted, bytes.
pub const MAX_REASON_BYTES: usize = 1000;

/// Which events a silence covers: every field present must equal the event's, an absent field
/// matches anything. An event that does not carry a field the matcher names (the port of a
/// silent agent, the agent of an account-wide change, the family of a change over both
/// families) is not matched: a silence never hides more than it names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Matcher {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<Family>,
}

impl Matcher {
    /// Names nothing: it would match every event.
    pub fn is_empty(&self) -> bool {
        *self == Matcher::default()
    }

    pub fn matches_event(&self, e: &Event) -> bool {
        let provider_ok = match (&self.provider, &e.provider) {
            (None, _) => true,
            (Some(want), Some(got)) => provider_key(want) == provider_key(got),
            (Some(_), None) => false,
        };
        provider_ok
            && same(&self.account, &e.account)
            && same(&self.agent, &e.agent)
            && same(&self.target, &e.target)
            && same(&self.port, &e.port)
            && same(&self.family, &e.family)
    }

    /// Whether a cell of the matrix (one agent, one port, both families) falls under the
    /// matcher. The matrix does not split by target or family, so those fields do not narrow.
    pub fn matches_cell(&self, provider: &str, account: &str, agent: &str, port: u16) -> bool {
        self.cell_matcher()(&provider_key(provider), account, agent, port)
    }

    /// [`Matcher::matches_cell`] for many cells, taking each cell's provider as its
    /// `provider_key`: the matcher's own key is worked out once (it is a lookup among the
    /// documented policies), not once per cell.
    pub fn cell_matcher(&self) -> impl Fn(&str, &str, &str, u16) -> bool + '_ {
        let want_provider = self.provider.as_deref().map(provider_key);
        move |provider_key: &str, account: &str, agent: &str, port: u16| {
            want_provider.as_deref().is_none_or(|p| p == provider_key)
                && self.account.as_deref().is_none_or(|a| a == account)
                && self.agent.as_deref().is_none_or(|a| a == agent)
                && self.port.is_none_or(|p| p == port)
        }
    }

    /// Trims the labels and refuses over-long or control-character ones and port 0.
    fn validated(self) -> Result<Matcher, String> {
        let label = |name: &str, v: Option<String>| -> Result<Option<String>, String> {
            let Some(v) = v else { return Ok(None) };
            let v = v.trim().to_string();
            if v.is_empty() {
                return Err(format!(
                    "matcher.{name} is empty: leave it out to match any"
                ));
            }
            if v.len() > MAX_LABEL_BYTES {
                return Err(format!(
                    "matcher.{name} is {} bytes, longer than the limit of {MAX_LABEL_BYTES}",
                    v.len()
                ));
            }
            if v.chars().any(char::is_control) {
                return Err(format!("matcher.{name} contains a control character"));
            }
            Ok(Some(v))
        };
        if self.port == Some(0) {
            return Err("matcher.port must be 1 to 65535".into());
        }
        Ok(Matcher {
            provider: label("provider", self.provider)?,
            account: label("account", self.account)?,
            agent: label("agent", self.agent)?,
            target: label("target", self.target)?,
            port: self.port,
            family: self.family,
        })
    }
}

fn same<T: PartialEq>(want: &Option<T>, got: &Option<T>) -> bool {
    match (want, got) {
        (None, _) => true,
        (Some(w), Some(g)) => w == g,
        (Some(_), None) => false,
    }
}

/// Where a silence was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// `POST /api/silences`, stored.
    Api,
    /// A `[[silence]]` table, read at start.
    Config,
}

/// One silence, as stored (times in Unix milliseconds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Silence {
    pub id: String,
    pub matcher: Matcher,
    /// Set when the matcher is empty on purpose: everything is silenced.
    pub all: bool,
    pub starts_at_ms: i64,
    pub ends_at_ms: i64,
    pub reason: String,
    pub created_by: String,
    pub created_at_ms: i64,
    /// When it was ended early (`DELETE`); `ends_at_ms` is moved to it, the record is kept.
    #[serde(default)]
    pub ended_early_at_ms: Option<i64>,
    pub origin: Origin,
}

impl Silence {
    pub fn active(&self, now_unix_ms: i64) -> bool {
        self.starts_at_ms <= now_unix_ms && now_unix_ms < self.ends_at_ms
    }

    pub fn matches(&self, e: &Event, now_unix_ms: i64) -> bool {
        self.active(now_unix_ms) && (self.all || self.matcher.matches_event(e))
    }

    /// Ends it at `now` (if it has not ended yet); a planned window not yet started ends too.
    pub fn end(&mut self, now_unix_ms: i64) {
        if self.ends_at_ms > now_unix_ms {
            self.ends_at_ms = now_unix_ms.max(self.starts_at_ms);
            self.ended_early_at_ms = Some(now_unix_ms);
        }
    }

    /// The `/api/silences` object: RFC 3339 times, whether it holds now, and how many of the
    /// current matrix cells it covers (`matching_cells`, 0 for a planned window's matcher that
    /// names nothing seen yet).
    pub fn view(&self, now_unix_ms: i64, matching_cells: usize) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "matcher": self.matcher,
            "all": self.all,
            "starts_at": rfc3339(self.starts_at_ms),
            "ends_at": rfc3339(self.ends_at_ms),
            "reason": self.reason,
            "created_by": self.created_by,
            "created_at": rfc3339(self.created_at_ms),
            "ended_early_at": self.ended_early_at_ms.map(rfc3339),
            "origin": self.origin,
            "active": self.active(now_unix_ms),
            "state": if self.active(now_unix_ms) { "active" }
                     else if now_unix_ms < self.starts_at_ms { "pending" }
                     else { "expired" },
            "matching_cells": matching_cells,
        })
    }
}

/// The body of `POST /api/silences`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSilence {
    #[serde(default)]
    pub matcher: Matcher,
    /// Must be set to silence everything with an empty matcher.
    #[serde(default)]
    pub all: bool,
    /// RFC 3339; absent means now.
    #[serde(default)]
    pub starts_at: Option<String>,
    /// RFC 3339, in the future.
    pub ends_at: String,
    pub reason: String,
    pub created_by: String,
}

impl NewSilence {
    /// Checks the request and makes the silence `id` at `now`; the error says what to change.
    pub fn validate(self, id: String, origin: Origin, now_unix_ms: i64) -> Result<Silence, String> {
        let matcher = self.matcher.validated()?;
        if matcher.is_empty() && !self.all {
            return Err(
                "the matcher names nothing, so it would silence every alert: name at \
                        least one of provider, account, agent, target, port, family — or send \
                        \"all\": true to silence everything on purpose"
                    .into(),
            );
        }
        if !matcher.is_empty() && self.all {
            return Err(
                "\"all\": true silences everything: leave the matcher empty with it".into(),
            );
        }
        let ends_at_ms = parse_rfc3339(&self.ends_at).map_err(|e| format!("ends_at: {e}"))?;
        let starts_at_ms = match &self.starts_at {
            Some(s) => parse_rfc3339(s).map_err(|e| format!("starts_at: {e}"))?,
            None => now_unix_ms,
        };
        if ends_at_ms <= now_unix_ms {
            return Err(format!(
                "ends_at {} is not in the future (now is {}): a silence must end later than now",
                self.ends_at.trim(),
                rfc3339(now_unix_ms)
            ));
        }
        if ends_at_ms <= starts_at_ms {
            return Err("ends_at must be later than starts_at".into());
        }
        let reason = bounded_text("reason", &self.reason, MAX_REASON_BYTES)?;
        let created_by = bounded_text("created_by", &self.created_by, MAX_LABEL_BYTES)?;
        if created_by.chars().any(char::is_control) {
            return Err("created_by contains a control character".into());
        }
        Ok(Silence {
            id,
            matcher,
            all: self.all,
            starts_at_ms,
            ends_at_ms,
            reason,
            created_by,
            created_at_ms: now_unix_ms,
            ended_early_at_ms: None,
            origin,
        })
    }
}

fn bounded_text(name: &str, value: &str, max: usize) -> Result<String, String> {
    let value = value.trim();
    if value.is_empty() {
        return Err(format!("{name} is required (say why, and who you are)"));
    }
    if value.len() > max {
        return Err(format!(
            "{name} is {} bytes, longer than the limit of {max}",
            value.len()
        ));
    }
    Ok(value.to_string())
}

/// One `[[silence]]` table: a planned window, with the matcher's fields inline.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SilenceConfig {
    /// Defaults to `config-N` (N counting the tables from 1).
    #[serde(default)]
    pub id: Option<String>,
    pub provider: Option<String>,
    pub account: Option<String>,
    pub agent: Option<String>,
    pub target: Option<String>,
    pub port: Option<u16>,
    pub family: Option<Family>,
    #[serde(default)]
    pub all: bool,
    pub starts_at: Option<String>,
    pub ends_at: String,
    pub reason: String,
    #[serde(default = "config_author")]
    pub created_by: String,
}

fn config_author() -> String {
    "config".into()
}

impl SilenceConfig {
    /// The silence this table describes. A window already over is kept (listed as expired) so
    /// an old entry left in the file is harmless; anything else wrong is an error naming the
    /// table.
    pub fn silence(&self, index: usize, now_unix_ms: i64) -> Result<Silence, String> {
        let id = self
            .id
            .clone()
            .unwrap_or_else(|| format!("config-{}", index + 1));
        let request = NewSilence {
            matcher: Matcher {
                provider: self.provider.clone(),
                account: self.account.clone(),
                agent: self.agent.clone(),
                target: self.target.clone(),
                port: self.port,
                family: self.family,
            },
            all: self.all,
            starts_at: self.starts_at.clone(),
            ends_at: self.ends_at.clone(),
            reason: self.reason.clone(),
            created_by: self.created_by.clone(),
        };
        // Validated as of the window's own start, so an expired window is not refused for
        // being in the past.
        let ends = parse_rfc3339(&self.ends_at).map_err(|e| format!("ends_at: {e}"))?;
        let judged_at = now_unix_ms.min(ends - 1);
        let mut silence = request.validate(id, Origin::Config, judged_at)?;
        silence.created_at_ms = now_unix_ms;
        Ok(silence)
    }
}

/// Every silence the collector knows, for the fan-out to ask and the API to change.
#[derive(Debug, Default)]
pub struct SilenceBook {
    silences: RwLock<Vec<Silence>>,
}

impl SilenceBook {
    pub fn new(silences: Vec<Silence>) -> SilenceBook {
        SilenceBook {
            silences: RwLock::new(silences),
        }
    }

    /// The id of the first silence covering `e` at `now`, for `Event::silenced_by`.
    pub fn silenced_by(&self, e: &Event, now_unix_ms: i64) -> Option<String> {
        self.read()
            .iter()
            .find(|s| s.matches(e, now_unix_ms))
            .map(|s| s.id.clone())
    }

    /// Adds a silence or replaces the one with its id.
    pub fn put(&self, silence: Silence) {
        let mut all = self.write();
        match all.iter_mut().find(|s| s.id == silence.id) {
            Some(held) => *held = silence,
            None => all.push(silence),
        }
    }

    pub fn get(&self, id: &str) -> Option<Silence> {
        self.read().iter().find(|s| s.id == id).cloned()
    }

    /// Active ones (and pending planned windows), or with `expired` every one; newest first.
    pub fn list(&self, expired: bool, now_unix_ms: i64) -> Vec<Silence> {
        let mut out: Vec<Silence> = self
            .read()
            .iter()
            .filter(|s| expired || s.ends_at_ms > now_unix_ms)
            .cloned()
            .collect();
        out.sort_by(|a, b| b.created_at_ms.cmp(&a.created_at_ms).then(b.id.cmp(&a.id)));
        out
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Silence>> {
        self.silences.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Silence>> {
        self.silences.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// A new silence id: random, so ids from two collectors or two restarts never collide.
pub fn new_id() -> String {
    format!("s-{:016x}", rand::random::<u64>())
}

/// Parses RFC 3339 (`2026-12-01T18:00:00Z`, `…+02:00`, fractions allowed) to Unix ms.
pub fn parse_rfc3339(text: &str) -> Result<i64, String> {
    let t =
        time::OffsetDateTime::parse(text.trim(), &time::format_description::well_known::Rfc3339)
            .map_err(|e| {
                format!(
                    "{:?} is not an RFC 3339 time such as 2026-12-01T18:00:00Z: {e}",
                    text.trim()
                )
            })?;
    Ok((t.unix_timestamp_nanos() / 1_000_000) as i64)
}

#[cfg(test)]
mod tests;
