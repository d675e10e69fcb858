//! SMTP replies: a sans-IO parser, and the few async steps a probe needs (read a reply, send a
//! command). Real servers are strict about order, so a probe waits for the greeting before it
//! sends anything (Postfix postscreen drops clients that talk first) and reads multi-line replies
//! (`220-…` greetings, EHLO lists ending in `250 STARTTLS`) to their last line. Every line and
//! every reply is bounded, so a server that sends an endless line or junk ends in a clear error.

use std::fmt;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// Longest reply line accepted (RFC 5321 allows 512; real servers stay far below 1000).
pub const MAX_LINE_BYTES: usize = 1000;
/// Largest whole reply accepted.
pub const MAX_REPLY_BYTES: usize = 16 * 1024;
/// Most lines in one reply.
pub const MAX_REPLY_LINES: usize = 128;

/// One complete SMTP reply.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub code: u16,
    /// Text of each line, without code, separator and line ending.
    pub lines: Vec<String>,
}

impl Reply {
    /// Whether an EHLO reply advertises `keyword` (e.g. STARTTLS), on any line.
    pub fn offers(&self, keyword: &str) -> bool {
        // The first line of a multi-line EHLO reply is the server's name, not a capability.
        let skip = usize::from(self.lines.len() > 1);
        self.lines.iter().skip(skip).any(|line| {
            line.split_whitespace()
                .next()
                .is_some_and(|word| word.eq_ignore_ascii_case(keyword))
        })
    }

    /// A capability overwritten with X's, as SMTP-inspecting firewalls do to STARTTLS (Cisco's
    /// "XXXXXXXA"): proof that the reply was rewritten on the path, not by the server.
    pub fn masked_capability(&self) -> Option<&str> {
        let skip = usize::from(self.lines.len() > 1);
        self.lines
            .iter()
            .skip(skip)
            .filter_map(|line| line.split_whitespace().next())
            .find(|word| {
                word.len() >= 4
                    && word.is_ascii()
                    && word[..word.len() - 1]
                        .bytes()
                        .all(|b| b.eq_ignore_ascii_case(&b'X'))
            })
    }

    /// Whether this reply to EHLO says the command is unknown (500 "unrecognized", 502 "not
    /// implemented", RFC 5321 4.2.4): a server that speaks only RFC 821 SMTP. It has no
    /// extensions to offer, so no STARTTLS — unlike a 550/554, which refuses this client.
    pub fn ehlo_unknown(&self) -> bool {
        matches!(self.code, 500 | 502)
    }

    /// What an EHLO reply offers: STARTTLS, the AUTH mechanisms and SIZE.
    pub fn capabilities(&self) -> Capabilities {
        let skip = usize::from(self.lines.len() > 1);
        let mut caps = Capabilities::default();
        for line in self.lines.iter().skip(skip) {
            let mut words = line.split_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            // "AUTH=LOGIN PLAIN" is the pre-RFC 4954 spelling some servers still send.
            let (keyword, first) = match keyword.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (keyword, None),
            };
            match keyword.to_ascii_uppercase().as_str() {
                "STARTTLS" => caps.starttls = true,
                "AUTH" => {
                    for mechanism in first.into_iter().chain(words) {
                        let mechanism: String = mechanism
                            .chars()
                            .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                            .take(40)
                            .collect::<String>()
                            .to_ascii_uppercase();
                        if !mechanism.is_empty()
                            && !caps.auth.contains(&mechanism)
                            && caps.auth.len() < 32
                        {
                            caps.auth.push(mechanism);
                        }
                    }
                }
                "SIZE" => caps.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
                _ => {}
            }
        }
        caps
    }

    /// The reply as one short line for details: "554 5.7.1 no thanks".
    pub fn summary(&self) -> String {
        let first = self.lines.first().map(String::as_str).unwrap_or("");
        let text: String = first
            .chars()
            .filter(|c| !c.is_control())
            .take(120)
            .collect();
        format!("{} {}", self.code, text).trim_end().to_string()
    }
}

/// What an EHLO reply offers, of what matters for sending mail through a provider.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Capabilities {
    pub starttls: bool,
    /// AUTH mechanisms offered, upper case, in the server's order (empty: no AUTH).
    pub auth: Vec<String>,
    /// SIZE: the largest message accepted, in bytes (0: SIZE without a limit); `None`: no SIZE.
    pub size: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ReplyError {
    LineTooLong,
    ReplyTooLarge,
    /// A line that is not `DDD[ -]text`; carries a printable excerpt.
    NotSmtp(String),
    /// A continuation line with another code than the first line.
    MixedCodes {
        first: u16,
        then: u16,
    },
}

impl fmt::Display for ReplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplyError::LineTooLong => write!(f, "reply line longer than {MAX_LINE_BYTES} bytes"),
            ReplyError::ReplyTooLarge => write!(
                f,
                "reply larger than {MAX_REPLY_BYTES} bytes or {MAX_REPLY_LINES} lines"
            ),
            ReplyError::NotSmtp(excerpt) => write!(f, "not an SMTP reply: {}", quoted(excerpt)),
            ReplyError::MixedCodes { first, then } => {
                write!(f, "reply mixes codes {first} and {then}")
            }
        }
    }
}

/// Text from the network (or a user) in double quotes for a detail or a message, control
/// characters shown as '?', so a reader sees what was sent without a terminal acting on it.
pub fn quoted(text: &str) -> String {
    let inner: String = text
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    format!("\"{inner}\"")
}

/// Accumulates bytes and yields whole replies.
#[derive(Debug, Default)]
pub struct ReplyParser {
    pending: Vec<u8>,
    code: Option<u16>,
    lines: Vec<String>,
    reply_bytes: usize,
}

impl ReplyParser {
    /// Feeds bytes; returns a reply once its last line has arrived. Bytes after that reply stay
    /// buffered (see [`ReplyParser::leftover`]).
    pub fn push(&mut self, bytes: &[u8]) -> Result<Option<Reply>, ReplyError> {
        self.pending.extend_from_slice(bytes);
        loop {
            let Some(newline) = self.pending.iter().position(|&b| b == b'\n') else {
                if self.pending.len() > MAX_LINE_BYTES {
                    return Err(ReplyError::LineTooLong);
                }
                return Ok(None);
            };
            if newline + 1 > MAX_LINE_BYTES {
                return Err(ReplyError::LineTooLong);
            }
            let raw: Vec<u8> = self.pending.drain(..=newline).collect();
            self.reply_bytes += raw.len();
            if self.reply_bytes > MAX_REPLY_BYTES || self.lines.len() >= MAX_REPLY_LINES {
                return Err(ReplyError::ReplyTooLarge);
            }
            let line = String::from_utf8_lossy(&raw);
            let line = line.trim_end_matches(['\r', '\n']);
            let (code, last, text) = parse_line(line)?;
            match self.code {
                None => self.code = Some(code),
                Some(first) if first != code => {
                    return Err(ReplyError::MixedCodes { first, then: code })
                }
                Some(_) => {}
            }
            self.lines.push(text.to_string());
            if last {
                self.reply_bytes = 0;
                let code = self.code.take().unwrap_or(code);
                return Ok(Some(Reply {
                    code,
                    lines: std::mem::take(&mut self.lines),
                }));
            }
        }
    }

    /// Bytes received after the last complete reply.
    pub fn leftover(&self) -> usize {
        self.pending.len()
    }
}

fn parse_line(line: &str) -> Result<(u16, bool, &str), ReplyError> {
    let bytes = line.as_bytes();
    let excerpt = || ReplyError::NotSmtp(line.chars().take(40).collect());
    if bytes.len() < 3
        || !bytes[..3].iter().all(u8::is_ascii_digit)
        || !(b'2'..=b'5').contains(&bytes[0])
    {
        return Err(excerpt());
    }
    let code = line[..3].parse::<u16>().map_err(|_| excerpt())?;
    match bytes.get(3) {
        None => Ok((code, true, "")),
        Some(b' ') => Ok((code, true, &line[4..])),
        Some(b'-') => Ok((code, false, &line[4..])),
        Some(_) => Err(excerpt()),
    }
}

/// Why an exchange with the server did not produce a reply.
#[derive(Debug)]
pub enum ExchangeError {
    /// Nothing (or not enough) arrived before the deadline.
    Timeout,
    /// The server closed the connection.
    Closed,
    Io(std::io::Error),
    Reply(ReplyError),
}

impl fmt::Display for ExchangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExchangeError::Timeout => f.write_str("no reply before the deadline"),
            ExchangeError::Closed => f.write_str("the server closed the connection"),
            ExchangeError::Io(e) => write!(f, "{}", super::connect::short_io_text(e)),
            ExchangeError::Reply(e) => write!(f, "{e}"),
        }
    }
}

/// Reads one reply, waiting at most until `deadline`.
pub async fn read_reply<S: AsyncRead + Unpin>(
    stream: &mut S,
    parser: &mut ReplyParser,
    deadline: Instant,
) -> Result<Reply, ExchangeError> {
    if let Some(reply) = parser.push(&[]).map_err(ExchangeError::Reply)? {
        return Ok(reply);
    }
    let mut buf = [0u8; 1024];
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return Err(ExchangeError::Timeout),
            Ok(Err(e)) => return Err(ExchangeError::Io(e)),
            Ok(Ok(0)) => return Err(ExchangeError::Closed),
            Ok(Ok(n)) => n,
        };
        if let Some(reply) = parser.push(&buf[..n]).map_err(ExchangeError::Reply)? {
            return Ok(reply);
        }
    }
}

/// Sends one command line (CRLF added).
pub async fn send<S: AsyncWrite + Unpin>(
    stream: &mut S,
    command: &str,
    deadline: Instant,
) -> Result<(), ExchangeError> {
    let line = format!("{command}\r\n");
    match tokio::time::timeout_at(deadline, stream.write_all(line.as_bytes())).await {
        Err(_) => Err(ExchangeError::Timeout),
        Ok(Err(e)) => Err(ExchangeError::Io(e)),
        Ok(Ok(())) => Ok(()),
    }
}

/// How QUIT ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuitEnd {
    /// The server answered (whatever it said).
    Answered,
    /// No reply in the short wait, or QUIT could not be sent.
    NoReply,
    /// The server closed the connection without a reply.
    Closed,
}

/// Says QUIT and closes, politely but without waiting long: the probe's answer is already known.
pub async fn quit<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    parser: &mut ReplyParser,
    deadline: Instant,
) -> QuitEnd {
    let soon = deadline.min(Instant::now() + Duration::from_millis(500));
    let end = match send(stream, "QUIT", soon).await {
        Ok(()) => match read_reply(stream, parser, soon).await {
            Ok(_) => QuitEnd::Answered,
            Err(ExchangeError::Closed) => QuitEnd::Closed,
            Err(_) => QuitEnd::NoReply,
        },
        Err(_) => QuitEnd::NoReply,
    };
    let _ = tokio::time::timeout_at(soon, stream.shutdown()).await;
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(chunks: &[&[u8]]) -> Result<Option<Reply>, ReplyError> {
        let mut p = ReplyParser::default();
        let mut last = None;
        for c in chunks {
            if let Some(r) = p.push(c)? {
                last = Some(r);
            }
        }
        Ok(last)
    }

    #[test]
    fn single_line_greeting() {
        let r = parse_all(&[b"220 mx.lab.test ESMTP Postfix\r\n"])
            .unwrap()
            .unwrap();
        assert_eq!(r.code, 220);
        assert_eq!(r.lines, vec!["mx.lab.test ESMTP Postfix"]);
        assert_eq!(r.summary(), "220 mx.lab.test ESMTP Postfix");
    }

    #[test]
    fn multi_line_greeting_as_postscreen_sends_it() {
        let r = parse_all(&[
            b"220-mx.lab.test ESMTP\r\n",
            b"220-please wait\r\n220 mx.lab.test ESMTP\r\n",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(r.code, 220);
        assert_eq!(r.lines.len(), 3);
    }

    #[test]
    fn byte_by_byte_and_bare_newlines() {
        let mut p = ReplyParser::default();
        let msg = b"250-mx\n250-PIPELINING\n250 STARTTLS\n";
        let mut got = None;
        for b in msg {
            if let Some(r) = p.push(std::slice::from_ref(b)).unwrap() {
                got = Some(r);
            }
        }
        let r = got.unwrap();
        assert!(r.offers("STARTTLS"));
        assert!(r.offers("pipelining"));
    }

    #[test]
    fn starttls_as_last_line_or_absent() {
        let with = parse_all(&[b"250-mx.lab.test\r\n250-SIZE 10240000\r\n250 STARTTLS\r\n"])
            .unwrap()
            .unwrap();
        assert!(with.offers("STARTTLS"));
        let without = parse_all(&[b"250-mx.lab.test\r\n250-SIZE 10240000\r\n250 8BITMIME\r\n"])
            .unwrap()
            .unwrap();
        assert!(!without.offers("STARTTLS"));
        // The greeting name itself is not a capability.
        let named = parse_all(&[b"250 STARTTLS\r\n"]).unwrap().unwrap();
        assert!(named.offers("STARTTLS"));
    }

    #[test]
    fn starttls_masked_by_a_middlebox_is_recognised() {
        let masked = parse_all(&[b"250-mx.lab.test\r\n250-PIPELINING\r\n250 XXXXXXXA\r\n"])
            .unwrap()
            .unwrap();
        assert!(!masked.offers("STARTTLS"));
        assert_eq!(masked.masked_capability(), Some("XXXXXXXA"));
        let plain = parse_all(&[b"250-mx.lab.test\r\n250-SIZE 100\r\n250 8BITMIME\r\n"])
            .unwrap()
            .unwrap();
        assert_eq!(plain.masked_capability(), None);
        // The server's own name on the first line is not a capability.
        let named = parse_all(&[b"250-XXXX\r\n250 SIZE\r\n"]).unwrap().unwrap();
        assert_eq!(named.masked_capability(), None);
    }

    #[test]
    fn capabilities_of_an_ehlo_reply() {
        let before = parse_all(&[
            b"250-mx.lab.test\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-STARTTLS\r\n250 8BITMIME\r\n",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            before.capabilities(),
            Capabilities {
                starttls: true,
                auth: vec![],
                size: Some(10_240_000)
            }
        );
        let after = parse_all(&[
            b"250-mx.lab.test\r\n250-SIZE\r\n250-AUTH PLAIN login\r\n250 AUTH=LOGIN PLAIN XOAUTH2\r\n",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            after.capabilities(),
            Capabilities {
                starttls: false,
                auth: vec!["PLAIN".into(), "LOGIN".into(), "XOAUTH2".into()],
                size: Some(0)
            }
        );
        // The server's name on the first line is no capability, whatever it says.
        let named = parse_all(&[b"250-AUTH\r\n250 8BITMIME\r\n"])
            .unwrap()
            .unwrap();
        assert_eq!(named.capabilities(), Capabilities::default());
    }

    #[test]
    fn ehlo_unknown_is_told_from_a_refusal() {
        let unknown = parse_all(&[b"500 5.5.1 Error: unknown command\r\n"])
            .unwrap()
            .unwrap();
        assert!(unknown.ehlo_unknown());
        let not_implemented = parse_all(&[b"502 5.5.2 Error: command not recognized\r\n"])
            .unwrap()
            .unwrap();
        assert!(not_implemented.ehlo_unknown());
        let refused = parse_all(&[b"550 5.7.1 go away\r\n"]).unwrap().unwrap();
        assert!(!refused.ehlo_unknown());
    }

    #[test]
    fn bad_greeting_is_a_reply_not_an_error() {
        let r = parse_all(&[b"554 5.7.1 Access denied\r\n"])
            .unwrap()
            .unwrap();
        assert_eq!(r.code, 554);
    }

    #[test]
    fn junk_is_rejected() {
        assert!(matches!(
            parse_all(&[b"HTTP/1.1 400 Bad Request\r\n"]),
            Err(ReplyError::NotSmtp(_))
        ));
        assert!(matches!(
            parse_all(&[b"22\r\n"]),
            Err(ReplyError::NotSmtp(_))
        ));
        assert!(matches!(
            parse_all(&[b"220x\r\n"]),
            Err(ReplyError::NotSmtp(_))
        ));
        assert!(matches!(
            parse_all(&[b"\x16\x03\x01\x00\xa5\r\n"]),
            Err(ReplyError::NotSmtp(_))
        ));
        assert!(matches!(
            parse_all(&[b"220-a\r\n250 b\r\n"]),
            Err(ReplyError::MixedCodes {
                first: 220,
                then: 250
            })
        ));
    }

    #[test]
    fn endless_line_and_endless_reply_are_bounded() {
        let long = vec![b'2'; MAX_LINE_BYTES + 1];
        assert_eq!(parse_all(&[&long]), Err(ReplyError::LineTooLong));
        let mut p = ReplyParser::default();
        let mut result = Ok(None);
        for _ in 0..(MAX_REPLY_LINES + 2) {
            result = p.push(b"220-more\r\n");
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(ReplyError::ReplyTooLarge));
    }

    #[test]
    fn junk_is_quoted_without_escapes() {
        let e = parse_all(&[b"\x16\x03\x01 hello\r\n"]).unwrap_err();
        assert_eq!(e.to_string(), "not an SMTP reply: \"??? hello\"");
    }

    #[test]
    fn incomplete_reply_waits() {
        assert_eq!(parse_all(&[b"220-first\r\n", b"220 sec"]).unwrap(), None);
    }
}
