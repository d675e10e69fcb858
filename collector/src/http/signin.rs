//! Signing the matrix page in where the API needs a token. A browser's `EventSource` cannot send
//! an `Authorization` header, so the page trades the token once (`POST /session`) for an
//! HttpOnly, SameSite=Strict cookie that the token guard accepts like the header.
//!
//! The cookie is a random session id, not the token nor anything derived from it; the collector
//! keeps the sessions it opened (in memory, at most [`MAX_SESSIONS`]), each until it expires
//! (`http.session_hours`). Signing out ends the session on the server, so a copy of the cookie
//! stops working too; `DELETE /api/sessions` ends every one, as do a restart and a new token.
//!
//! The token is compared in constant time over SHA-256 digests, so neither its bytes nor its
//! length show in how long a refusal takes. Sign-ins are rate limited per client address
//! (`http.signin_attempts_per_minute`), so the token cannot be guessed at speed.

use ring::digest;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// The cookie's name.
pub const COOKIE: &str = "egresswatch_session";
/// Most sessions kept; opening one more ends the one that would expire first.
pub const MAX_SESSIONS: usize = 10_000;
/// Most client addresses whose sign-in attempts are remembered (those at rest are forgotten
/// first).
const MAX_TRACKED_CLIENTS: usize = 10_000;

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, bytes).as_ref());
    out
}

/// What a configured token accepts: the bearer header and the sessions it opened.
pub struct Credentials {
    token_digest: [u8; 32],
    lifetime: Duration,
    /// SHA-256 of each open session's id → when it expires. Only digests are kept, so the
    /// lookup's timing says nothing about the ids.
    sessions: Mutex<HashMap<[u8; 32], Instant>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Credentials {
    pub fn new(token: &str, lifetime: Duration) -> Credentials {
        Credentials {
            token_digest: sha256(token.trim().as_bytes()),
            lifetime,
            sessions: Mutex::default(),
        }
    }

    /// Whether a request's `Authorization` header or `Cookie` header carries the credential.
    pub fn admits(&self, authorization: Option<&str>, cookies: Option<&str>) -> bool {
        let bearer = authorization
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|given| self.is_token(given));
        bearer
            || cookies
                .and_then(session_cookie)
                .is_some_and(|id| self.session_open(id, Instant::now()))
    }

    /// Whether `token` (from the sign-in form or the bearer header) is the configured one.
    pub fn is_token(&self, token: &str) -> bool {
        bool::from(sha256(token.trim().as_bytes()).ct_eq(&self.token_digest))
    }

    fn session_open(&self, id: &str, now: Instant) -> bool {
        let key = sha256(id.as_bytes());
        let mut sessions = lock(&self.sessions);
        match sessions.get(&key) {
            Some(expires) if *expires > now => true,
            Some(_) => {
                sessions.remove(&key);
                false
            }
            None => false,
        }
    }

    /// Opens a session; returns the `Set-Cookie` value that signs the browser in.
    pub fn open_session(&self) -> String {
        let now = Instant::now();
        let id: String = (0..32)
            .map(|_| format!("{:02x}", rand::random::<u8>()))
            .collect();
        let mut sessions = lock(&self.sessions);
        if sessions.len() >= MAX_SESSIONS {
            sessions.retain(|_, expires| *expires > now);
        }
        if sessions.len() >= MAX_SESSIONS {
            let first = sessions
                .iter()
                .min_by_key(|(_, expires)| **expires)
                .map(|(k, _)| *k);
            if let Some(first) = first {
                sessions.remove(&first);
            }
        }
        sessions.insert(sha256(id.as_bytes()), now + self.lifetime);
        format!(
            "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
            self.lifetime.as_secs()
        )
    }

    /// Ends the session a `Cookie` header names, if it is one.
    pub fn close_session(&self, cookies: Option<&str>) {
        if let Some(id) = cookies.and_then(session_cookie) {
            lock(&self.sessions).remove(&sha256(id.as_bytes()));
        }
    }

    /// Ends every session; returns how many were open.
    pub fn close_all(&self) -> usize {
        let mut sessions = lock(&self.sessions);
        let now = Instant::now();
        let open = sessions.values().filter(|e| **e > now).count();
        sessions.clear();
        open
    }
}

/// The `Set-Cookie` value that signs a browser out.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// Our cookie's value in a `Cookie` header (`a=1; egresswatch_session=…; b=2`).
fn session_cookie(header: &str) -> Option<&str> {
    header.split(';').find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        (name == COOKIE && !value.is_empty()).then_some(value)
    })
}

/// Sign-in attempts per client address: a bucket of `per_minute` attempts that refills at that
/// pace. An attempt refused for the rate takes nothing, so a client that stops is let in again
/// within a minute.
pub struct SignInRate {
    per_minute: u32,
    clients: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl SignInRate {
    pub fn new(per_minute: u32) -> SignInRate {
        SignInRate {
            per_minute: per_minute.max(1),
            clients: Mutex::default(),
        }
    }

    /// `Ok` when `client` may try now, else how long until it may.
    pub fn attempt(&self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        let burst = f64::from(self.per_minute);
        let per_sec = burst / 60.0;
        let refilled = |(tokens, at): (f64, Instant)| {
            (tokens + now.saturating_duration_since(at).as_secs_f64() * per_sec).min(burst)
        };
        let mut clients = lock(&self.clients);
        if clients.len() >= MAX_TRACKED_CLIENTS {
            clients.retain(|_, b| refilled(*b) < burst);
        }
        if clients.len() >= MAX_TRACKED_CLIENTS && !clients.contains_key(&client) {
            // Flooded from that many addresses at once: the newcomer waits like the others.
            return Err(Duration::from_secs(60));
        }
        let bucket = clients.entry(client).or_insert((burst, now));
        let tokens = refilled(*bucket);
        if tokens >= 1.0 {
            *bucket = (tokens - 1.0, now);
            Ok(())
        } else {
            *bucket = (tokens, now);
            Err(Duration::from_secs_f64((1.0 - tokens) / per_sec))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef-secret";

    fn pair(set_cookie: &str) -> String {
        set_cookie.split(';').next().unwrap().to_string()
    }

    #[test]
    fn header_or_an_open_session_admits_and_the_cookie_is_not_the_token() {
        let c = Credentials::new(TOKEN, Duration::from_secs(3600));
        assert!(c.admits(Some(&format!("Bearer {TOKEN}")), None));
        assert!(!c.admits(Some("Bearer wrong"), None));
        assert!(!c.admits(Some(TOKEN), None), "the scheme is required");
        let set = c.open_session();
        assert!(!set.contains(TOKEN));
        assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"));
        assert!(set.contains("Max-Age=3600"));
        let pair = pair(&set);
        assert!(c.admits(None, Some(&format!("theme=dark; {pair}; x=y"))));
        assert!(!c.admits(None, Some(&format!("{COOKIE}={TOKEN}"))));
        assert!(!c.admits(None, Some("egresswatch_session=")));
        assert!(!c.admits(None, None));
        // Another collector (or this one restarted) does not know the session.
        let other = Credentials::new(TOKEN, Duration::from_secs(3600));
        assert!(!other.admits(None, Some(&pair)));
    }

    #[test]
    fn the_token_is_compared_whole_trimmed_and_by_digest() {
        let c = Credentials::new(TOKEN, Duration::from_secs(60));
        assert!(c.is_token(&format!(" {TOKEN}\n")));
        assert!(!c.is_token("0123456789abcdef"));
        assert!(!c.is_token(&format!("{TOKEN}x")));
        assert!(!c.is_token(""));
    }

    #[test]
    fn sessions_end_when_signed_out_revoked_or_expired() {
        let c = Credentials::new(TOKEN, Duration::from_secs(3600));
        let (a, b) = (pair(&c.open_session()), pair(&c.open_session()));
        assert_ne!(a, b);
        c.close_session(Some(&a));
        assert!(!c.admits(None, Some(&a)), "signed out on the server");
        assert!(c.admits(None, Some(&b)));
        assert_eq!(c.close_all(), 1);
        assert!(!c.admits(None, Some(&b)), "every session revoked");
        let short = Credentials::new(TOKEN, Duration::from_millis(50));
        let s = pair(&short.open_session());
        assert!(short.admits(None, Some(&s)));
        std::thread::sleep(Duration::from_millis(80));
        assert!(!short.admits(None, Some(&s)), "expired");
    }

    #[test]
    fn sessions_are_bounded() {
        let c = Credentials::new(TOKEN, Duration::from_secs(3600));
        let first = pair(&c.open_session());
        for _ in 0..MAX_SESSIONS {
            c.open_session();
        }
        assert_eq!(lock(&c.sessions).len(), MAX_SESSIONS);
        assert!(!c.admits(None, Some(&first)), "the oldest made room");
    }

    #[test]
    fn sign_ins_are_limited_per_client_and_refill() {
        let rate = SignInRate::new(6);
        let (a, b): (IpAddr, IpAddr) = ("198.18.0.1".parse().unwrap(), "::1".parse().unwrap());
        let t0 = Instant::now();
        for _ in 0..6 {
            assert!(rate.attempt(a, t0).is_ok());
        }
        let wait = rate.attempt(a, t0).unwrap_err();
        assert!(
            wait > Duration::from_secs(9) && wait <= Duration::from_secs(10),
            "{wait:?}"
        );
        assert!(
            rate.attempt(b, t0).is_ok(),
            "another client is not held back"
        );
        // Refused attempts take nothing: ten seconds later one more is allowed.
        for _ in 0..50 {
            assert!(rate.attempt(a, t0).is_err());
        }
        assert!(rate.attempt(a, t0 + Duration::from_secs(10)).is_ok());
        assert!(rate.attempt(a, t0 + Duration::from_secs(10)).is_err());
    }
}
