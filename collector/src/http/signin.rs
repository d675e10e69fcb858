//! Signing the matrix page in where the API needs a token. A browser's `EventSource` cannot send
//! an `Authorization` header, so the page trades the token once (`POST /session`) for an
//! HttpOnly, SameSite=Strict cookie that the token guard accepts like the header. The cookie holds
//! an HMAC of the token, not the token: it opens the page and the API but does not reveal the
//! secret an operator configured, it survives collector restarts, and changing `http.token`
//! signs every browser out.

use ring::hmac;

/// The cookie's name.
pub const COOKIE: &str = "egresswatch_session";
/// How long a browser stays signed in.
const MAX_AGE_SECS: u64 = 30 * 24 * 3600;
/// What the cookie's HMAC is taken over; a new purpose would get a new label.
const PURPOSE: &[u8] = b"egresswatch dashboard session v1";

/// What a configured token accepts: the bearer header's value and the derived cookie's.
#[derive(Clone)]
pub struct Credentials {
    token: Box<[u8]>,
    cookie: Box<[u8]>,
}

impl Credentials {
    pub fn new(token: &str) -> Credentials {
        let key = hmac::Key::new(hmac::HMAC_SHA256, token.as_bytes());
        let tag = hmac::sign(&key, PURPOSE);
        let cookie: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        Credentials {
            token: token.as_bytes().into(),
            cookie: cookie.into_bytes().into(),
        }
    }

    /// Whether a request's `Authorization` header or `Cookie` header carries the credential.
    pub fn admits(&self, authorization: Option<&str>, cookies: Option<&str>) -> bool {
        let bearer = authorization
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .is_some_and(|given| constant_time_eq(given.as_bytes(), &self.token));
        bearer
            || cookies
                .and_then(session_cookie)
                .is_some_and(|given| constant_time_eq(given.as_bytes(), &self.cookie))
    }

    /// Whether `token` (from the sign-in form) is the configured one.
    pub fn is_token(&self, token: &str) -> bool {
        constant_time_eq(token.trim().as_bytes(), &self.token)
    }

    /// The `Set-Cookie` value that signs a browser in.
    pub fn set_cookie(&self) -> String {
        format!(
            "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={MAX_AGE_SECS}",
            String::from_utf8_lossy(&self.cookie)
        )
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
        (name == COOKIE).then_some(value)
    })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef-secret";

    #[test]
    fn header_or_cookie_admits_and_the_cookie_is_not_the_token() {
        let c = Credentials::new(TOKEN);
        assert!(c.admits(Some(&format!("Bearer {TOKEN}")), None));
        assert!(!c.admits(Some("Bearer wrong"), None));
        assert!(!c.admits(Some(TOKEN), None), "the scheme is required");
        let set = c.set_cookie();
        assert!(!set.contains(TOKEN));
        assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"));
        let pair = set.split(';').next().unwrap();
        assert!(c.admits(None, Some(&format!("theme=dark; {pair}; x=y"))));
        assert!(!c.admits(None, Some(&format!("{COOKIE}={TOKEN}"))));
        assert!(!c.admits(None, Some("egresswatch_session=")));
        assert!(!c.admits(None, None));
    }

    #[test]
    fn another_token_makes_another_cookie() {
        let a = Credentials::new(TOKEN).set_cookie();
        let b = Credentials::new("another-token-of-16+").set_cookie();
        assert_ne!(a, b);
        assert!(Credentials::new(TOKEN).is_token(&format!(" {TOKEN}\n")));
        assert!(!Credentials::new(TOKEN).is_token("0123456789abcdef"));
    }
}
