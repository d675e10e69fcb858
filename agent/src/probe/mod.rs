//! The probe engine: one (target, port, family) at one level in, exactly one classified
//! [`ProbeResult`] out.
//!
//! Steps, each with its own timing and its own failure outcomes: resolve ([`resolve`]), connect
//! ([`connect`]), the SMTP greeting and EHLO ([`smtp`]), TLS ([`tls`]: STARTTLS on 25/587/2525
//! and other SMTP ports, implicit TLS on 465, a plain handshake on 443). A probe never sends mail,
//! always says QUIT when it spoke SMTP, and never retries: the caller's schedule decides when to
//! look again.

pub mod classify;
pub mod connect;
pub mod issuer;
pub mod local;
pub mod mx;
pub mod nameserver;
pub mod resolve;
pub mod smtp;
pub mod tls;
pub mod tls_failure;
pub mod verified;

use connect::Binding;
use egresswatch_wire::result::truncate_detail;
use egresswatch_wire::{
    limits::MAX_DETAIL_BYTES, Family, Level, Outcome, PhaseTimings, ProbeResult, SessionStep,
};
use resolve::ResolveError;
use smtp::{ExchangeError, ReplyParser};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tls::Recorded;
use tls_failure::TlsPlace;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;

/// Implicit-TLS SMTP (submissions).
pub const PORT_SMTPS: u16 = 465;
/// The HTTPS control: if 443 answers while SMTP ports do not, SMTP is being filtered.
pub const PORT_HTTPS: u16 = 443;

/// What to probe.
#[derive(Debug, Clone)]
pub struct ProbeTarget {
    pub host: String,
    pub port: u16,
    pub family: Family,
    pub level: Level,
}

/// How to probe: shared by every probe of one check or one agent.
#[derive(Debug, Clone)]
pub struct ProbeOptions {
    /// Deadline of the whole probe after resolution (connect + SMTP + TLS), far shorter than the
    /// kernel's SYN give-up, so `timeout` always means "our deadline fired".
    pub timeout: Duration,
    /// Deadline of name resolution, its own phase.
    pub dns_timeout: Duration,
    /// Source address to bind to, for multi-homed hosts (used for the matching family).
    pub source_v4: Option<std::net::Ipv4Addr>,
    pub source_v6: Option<std::net::Ipv6Addr>,
    /// Interface to bind to (SO_BINDTODEVICE).
    pub interface: Option<String>,
    /// Trust roots for TLS verification.
    pub tls_roots: Arc<rustls::RootCertStore>,
    /// Chains verified a moment ago, shared by every probe made with these options.
    pub verified_chains: Arc<verified::VerifiedChains>,
    /// Name sent in EHLO.
    pub ehlo_name: String,
    /// Ports spoken to with implicit TLS, the greeting inside it (default: 465).
    pub implicit_tls_ports: Vec<u16>,
    /// Ports where a TLS handshake is the whole probe (default: 443, the HTTPS control).
    pub tls_only_ports: Vec<u16>,
    /// How a (host, port) is spoken to where that differs from the port's default: a mail
    /// provider's preset says how TLS starts on each of its ports (SMTP2GO's 443 is SMTP with
    /// implicit TLS, SES's 2465 too). Host names compare without case.
    pub host_sessions: Arc<Vec<(String, u16, Session)>>,
    /// Also ask EHLO inside TLS (after STARTTLS, or after an implicit-TLS greeting) to learn what
    /// the server offers there ([`SessionFacts`]); `check --provider` sets it. Default: off, so
    /// the probes of `check HOST` and of the agent's schedule say no more than they need.
    pub read_capabilities: bool,
}

/// What a probe learnt of the server beyond its outcome: the EHLO capabilities in plain text and
/// inside TLS. Never credentials: a probe offers none, it only reads what is offered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionFacts {
    /// EHLO before STARTTLS (`None` on implicit-TLS and TLS-only ports, or when EHLO failed).
    pub before_tls: Option<smtp::Capabilities>,
    /// EHLO inside TLS (`None` unless [`ProbeOptions::read_capabilities`] and TLS came up).
    pub after_tls: Option<smtp::Capabilities>,
}

/// How a connected port is spoken to. Every port that is neither implicit-TLS nor TLS-only
/// speaks SMTP with STARTTLS (25, 587, 2525, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Session {
    Smtp,
    ImplicitTls,
    TlsOnly,
}

impl ProbeOptions {
    /// Options with the given deadline and roots, and defaults for the rest.
    pub fn new(timeout: Duration, tls_roots: Arc<rustls::RootCertStore>) -> Self {
        ProbeOptions {
            timeout,
            dns_timeout: Duration::from_secs(5).min(timeout.max(Duration::from_secs(1))),
            source_v4: None,
            source_v6: None,
            interface: None,
            tls_roots,
            verified_chains: Arc::default(),
            ehlo_name: default_ehlo_name(),
            implicit_tls_ports: vec![PORT_SMTPS],
            tls_only_ports: vec![PORT_HTTPS],
            host_sessions: Arc::default(),
            read_capabilities: false,
        }
    }

    /// How `port` is spoken to once connected.
    pub fn session(&self, port: u16) -> Session {
        if self.tls_only_ports.contains(&port) {
            Session::TlsOnly
        } else if self.implicit_tls_ports.contains(&port) {
            Session::ImplicitTls
        } else {
            Session::Smtp
        }
    }

    /// How `port` of `host` is spoken to: as [`ProbeOptions::host_sessions`] says, else as
    /// [`ProbeOptions::session`].
    pub fn session_of(&self, host: &str, port: u16) -> Session {
        self.host_sessions
            .iter()
            .find(|(h, p, _)| *p == port && h.eq_ignore_ascii_case(host))
            .map(|(_, _, session)| *session)
            .unwrap_or_else(|| self.session(port))
    }

    fn binding(&self, family: Family) -> Binding {
        Binding {
            source: match family {
                Family::Ipv4 => self.source_v4.map(IpAddr::V4),
                Family::Ipv6 => self.source_v6.map(IpAddr::V6),
            },
            interface: self.interface.clone(),
        }
    }
}

/// This host's name for EHLO, or a neutral literal when it has none.
pub fn default_ehlo_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| {
            !h.is_empty()
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        })
        .unwrap_or_else(|| "egresswatch.invalid".to_string())
}

/// The result of resolving one host in one family, reusable for every port of that host.
#[derive(Debug, Clone)]
pub struct Resolution {
    pub outcome: Result<Vec<IpAddr>, ResolveError>,
    /// `None` for address literals: there was nothing to resolve.
    pub dns_us: Option<u32>,
}

/// Resolves a host in one family, timed.
pub async fn resolve_host(host: &str, family: Family, options: &ProbeOptions) -> Resolution {
    let literal = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .is_ok();
    let started = std::time::Instant::now();
    let outcome = resolve::resolve(host, family, options.dns_timeout).await;
    Resolution {
        outcome,
        dns_us: (!literal).then(|| micros(started.elapsed())),
    }
}

/// How far a probe in flight has got, for a caller that acts on a connection attempt left
/// unanswered (the schedule starts a series' confirmations early on it) before the probe's
/// own deadline says `timeout`.
#[derive(Debug, Default)]
pub struct Progress {
    stage: Mutex<Stage>,
}

#[derive(Debug, Default, Clone, Copy)]
enum Stage {
    #[default]
    Resolving,
    Connecting(std::time::Instant),
    /// Connected, or finished without a connection attempt left open.
    Past,
}

impl Progress {
    fn set(&self, stage: Stage) {
        *self.stage.lock().unwrap_or_else(|p| p.into_inner()) = stage;
    }

    /// Whether the probe is still resolving its target.
    pub fn resolving(&self) -> bool {
        matches!(
            *self.stage.lock().unwrap_or_else(|p| p.into_inner()),
            Stage::Resolving
        )
    }

    /// How long the connection attempt has waited for an answer, while it still waits (`None`
    /// while resolving, once connected, or once the attempt failed).
    pub fn unanswered_for(&self) -> Option<Duration> {
        match *self.stage.lock().unwrap_or_else(|p| p.into_inner()) {
            Stage::Connecting(since) => Some(since.elapsed()),
            Stage::Resolving | Stage::Past => None,
        }
    }
}

/// Probes once: resolves, then probes the first address of the family. Never panics and never
/// takes longer than `dns_timeout + timeout` (plus scheduling). `seq` is left 0 for the caller.
pub async fn probe(target: &ProbeTarget, options: &ProbeOptions) -> ProbeResult {
    probe_with_progress(target, options, &Progress::default()).await
}

/// [`probe`], telling `progress` how far it has got.
pub async fn probe_with_progress(
    target: &ProbeTarget,
    options: &ProbeOptions,
    progress: &Progress,
) -> ProbeResult {
    let resolution = resolve_host(&target.host, target.family, options).await;
    let result = probe_resolved_with_progress(target, &resolution, options, progress).await;
    progress.set(Stage::Past);
    result
}

/// Probes with a resolution made earlier (one lookup serves every port of a host).
pub async fn probe_resolved(
    target: &ProbeTarget,
    resolution: &Resolution,
    options: &ProbeOptions,
) -> ProbeResult {
    probe_resolved_with_progress(target, resolution, options, &Progress::default()).await
}

/// [`probe_resolved`], also returning what the server offered in EHLO ([`SessionFacts`]).
pub async fn probe_resolved_with_facts(
    target: &ProbeTarget,
    resolution: &Resolution,
    options: &ProbeOptions,
) -> (ProbeResult, SessionFacts) {
    let mut facts = SessionFacts::default();
    let result = probe_resolved_inner(
        target,
        resolution,
        options,
        &Progress::default(),
        &mut facts,
    )
    .await;
    (result, facts)
}

async fn probe_resolved_with_progress(
    target: &ProbeTarget,
    resolution: &Resolution,
    options: &ProbeOptions,
    progress: &Progress,
) -> ProbeResult {
    let mut facts = SessionFacts::default();
    probe_resolved_inner(target, resolution, options, progress, &mut facts).await
}

async fn probe_resolved_inner(
    target: &ProbeTarget,
    resolution: &Resolution,
    options: &ProbeOptions,
    progress: &Progress,
    facts: &mut SessionFacts,
) -> ProbeResult {
    let mut result = ProbeResult {
        at_unix_ms: now_unix_ms(),
        target: target.host.clone(),
        port: target.port,
        family: target.family,
        level: target.level,
        timings: PhaseTimings {
            dns_us: resolution.dns_us,
            ..Default::default()
        },
        ..Default::default()
    };
    match &resolution.outcome {
        Err(ResolveError::NoAddress) => {
            result.outcome = Outcome::NoAddress;
            result.detail = format!("{} has no {} address", target.host, target.family);
        }
        Err(ResolveError::Failed { kind, detail }) => {
            result.outcome = Outcome::DnsFailed;
            result.dns_failure = Some(*kind);
            result.detail = format!("{kind}: {detail}");
        }
        Ok(addresses) => match addresses.first() {
            Some(ip) => probe_address(target, *ip, options, &mut result, progress, facts).await,
            None => {
                result.outcome = Outcome::NoAddress;
                result.detail = format!("{} has no {} address", target.host, target.family);
            }
        },
    }
    result.detail = truncate_detail(&result.detail, MAX_DETAIL_BYTES);
    result
}

async fn probe_address(
    target: &ProbeTarget,
    ip: IpAddr,
    options: &ProbeOptions,
    result: &mut ProbeResult,
    progress: &Progress,
    facts: &mut SessionFacts,
) {
    result.address = Some(ip);
    let deadline = Instant::now() + options.timeout;
    let addr = resolve::socket_addr(ip, target.port);
    progress.set(Stage::Connecting(std::time::Instant::now()));
    let connecting = connect::connect(addr, &options.binding(target.family), options.timeout).await;
    progress.set(Stage::Past);
    let connected = match connecting {
        Ok(c) => c,
        Err(failure) => {
            result.outcome = failure.outcome;
            result.errno = failure.errno;
            result.icmp = failure.icmp;
            result.syn_retransmits = failure.syn_retransmits;
            result.detail = failure.detail;
            return;
        }
    };
    result.timings.connect_us = Some(connected.connect_us);
    result.syn_retransmits = connected.syn_retransmits;
    let stream = connected.stream;
    match (target.level, options.session_of(&target.host, target.port)) {
        (Level::Connect, _) | (Level::Banner, Session::TlsOnly) => {
            result.outcome = Outcome::Ok;
            result.detail = "connected".into();
        }
        (_, Session::TlsOnly) => tls_only(target, options, stream, deadline, result).await,
        (_, Session::ImplicitTls) => {
            implicit_tls(target, options, stream, deadline, result, facts).await
        }
        (_, Session::Smtp) => plain_smtp(target, options, stream, deadline, result, facts).await,
    }
}

fn tls_config(options: &ProbeOptions, result: &mut ProbeResult) -> Option<tls::TlsClient> {
    match tls::client_config(options.tls_roots.clone(), options.verified_chains.clone()) {
        Ok(c) => Some(c),
        Err(e) => {
            result.outcome = Outcome::TlsFailed;
            result.detail = e.to_string();
            None
        }
    }
}

/// The TLS handshake every TLS-speaking session shares, under the probe's deadline. Records the
/// handshake's time and certificate facts; on failure records the outcome and returns `None`.
/// On success also returns "version cipher" for the detail line. `place` says where the
/// handshake is attempted, for the wording of its failures.
async fn handshake(
    target: &ProbeTarget,
    options: &ProbeOptions,
    stream: tokio::net::TcpStream,
    deadline: Instant,
    place: TlsPlace,
    result: &mut ProbeResult,
) -> Option<(TlsStream<Recorded<tokio::net::TcpStream>>, String)> {
    let client = tls_config(options, result)?;
    let started = Instant::now();
    match tokio::time::timeout_at(deadline, tls::handshake(&client, &target.host, stream)).await {
        Ok(Ok((tls, info))) => {
            result.timings.tls_us = Some(micros(started.elapsed()));
            let negotiated = format!("{} {}", info.version, info.cipher);
            result.tls = Some(info);
            Some((tls, negotiated))
        }
        Ok(Err(failure)) => {
            result.step = Some(SessionStep::TlsHandshake);
            tls_failure(result, &failure, &client, place);
            None
        }
        Err(_) => {
            result.outcome = Outcome::TlsFailed;
            result.step = Some(SessionStep::TlsHandshake);
            let when = match place {
                TlsPlace::AfterStarttls => " after STARTTLS",
                TlsPlace::ImplicitTls | TlsPlace::TlsOnly => "",
            };
            result.detail = format!("no TLS handshake{when} before the deadline");
            None
        }
    }
}

/// 443: a TLS handshake is the whole probe.
async fn tls_only(
    target: &ProbeTarget,
    options: &ProbeOptions,
    stream: tokio::net::TcpStream,
    deadline: Instant,
    result: &mut ProbeResult,
) {
    let Some((mut tls, negotiated)) =
        handshake(target, options, stream, deadline, TlsPlace::TlsOnly, result).await
    else {
        return;
    };
    result.outcome = Outcome::Ok;
    result.detail = format!("TLS {negotiated}");
    let _ = tokio::time::timeout(
        Duration::from_millis(300),
        tokio::io::AsyncWriteExt::shutdown(&mut tls),
    )
    .await;
}

/// 465: TLS first, then the greeting inside it.
async fn implicit_tls(
    target: &ProbeTarget,
    options: &ProbeOptions,
    stream: tokio::net::TcpStream,
    deadline: Instant,
    result: &mut ProbeResult,
    facts: &mut SessionFacts,
) {
    let Some((mut tls, negotiated)) = handshake(
        target,
        options,
        stream,
        deadline,
        TlsPlace::ImplicitTls,
        result,
    )
    .await
    else {
        return;
    };
    let mut parser = ReplyParser::default();
    if let Some(greeting) = greet(&mut tls, &mut parser, deadline, result).await {
        result.outcome = Outcome::Ok;
        result.detail = format!("{}; TLS {negotiated}", greeting.summary());
        if options.read_capabilities {
            facts.after_tls = ehlo_inside_tls(&mut tls, &mut parser, options, deadline).await;
        }
        let quit = smtp::quit(&mut tls, &mut parser, deadline).await;
        note_quit(result, quit);
    }
}

/// 25, 587, 2525 and any other port: greeting, then (level tls) EHLO and STARTTLS.
async fn plain_smtp(
    target: &ProbeTarget,
    options: &ProbeOptions,
    mut stream: tokio::net::TcpStream,
    deadline: Instant,
    result: &mut ProbeResult,
    facts: &mut SessionFacts,
) {
    let mut parser = ReplyParser::default();
    let Some(greeting) = greet(&mut stream, &mut parser, deadline, result).await else {
        return;
    };
    if target.level == Level::Banner {
        result.outcome = Outcome::Ok;
        result.detail = greeting.summary();
        let quit = smtp::quit(&mut stream, &mut parser, deadline).await;
        note_quit(result, quit);
        return;
    }
    let asked = Instant::now();
    let ehlo = match exchange(
        &mut stream,
        &mut parser,
        &format!("EHLO {}", options.ehlo_name),
        deadline,
    )
    .await
    {
        Ok(reply) => reply,
        Err(e) => return step_failure(result, SessionStep::Ehlo, &e, asked.elapsed()),
    };
    if ehlo.ehlo_unknown() {
        // The greeting was fine and the server answered: it speaks SMTP without extensions, so
        // STARTTLS is not on offer (what posttls-finger and Python's smtplib conclude too).
        result.outcome = Outcome::StarttlsMissing;
        result.step = Some(SessionStep::Ehlo);
        result.detail = format!(
            "EHLO not recognised ({}): the server speaks no ESMTP, so it offers no STARTTLS",
            ehlo.summary()
        );
        smtp::quit(&mut stream, &mut parser, deadline).await;
        return;
    }
    if ehlo.code != 250 {
        // A refusal is the destination's policy; it says nothing about STARTTLS on the path.
        result.outcome = Outcome::BadBanner;
        result.step = Some(SessionStep::Ehlo);
        result.detail = format!("EHLO refused: {}", ehlo.summary());
        smtp::quit(&mut stream, &mut parser, deadline).await;
        return;
    }
    facts.before_tls = Some(ehlo.capabilities());
    if !ehlo.offers("STARTTLS") {
        result.outcome = Outcome::StarttlsMissing;
        result.step = Some(SessionStep::Ehlo);
        result.detail = match ehlo.masked_capability() {
            Some(mask) => format!(
                "EHLO reply carries {} where STARTTLS would be: rewritten by a middlebox on the path",
                smtp::quoted(mask)
            ),
            None => format!(
                "EHLO reply does not offer STARTTLS ({} lines); stripped on the path, or not offered",
                ehlo.lines.len()
            ),
        };
        smtp::quit(&mut stream, &mut parser, deadline).await;
        return;
    }
    let asked = Instant::now();
    let go = match exchange(&mut stream, &mut parser, "STARTTLS", deadline).await {
        Ok(reply) => reply,
        Err(e) => return step_failure(result, SessionStep::Starttls, &e, asked.elapsed()),
    };
    if go.code != 220 {
        result.outcome = Outcome::TlsFailed;
        result.step = Some(SessionStep::Starttls);
        result.detail = format!("STARTTLS refused: {}", go.summary());
        smtp::quit(&mut stream, &mut parser, deadline).await;
        return;
    }
    if parser.leftover() > 0 {
        // Plaintext after "220 ready to start TLS" would be read as if it came over TLS: the
        // STARTTLS command-injection pattern. Refuse to go on.
        result.outcome = Outcome::TlsFailed;
        result.step = Some(SessionStep::Starttls);
        result.detail = "the server sent data after its STARTTLS reply (injection)".into();
        return;
    }
    let Some((mut tls, negotiated)) = handshake(
        target,
        options,
        stream,
        deadline,
        TlsPlace::AfterStarttls,
        result,
    )
    .await
    else {
        return;
    };
    result.outcome = Outcome::Ok;
    result.detail = format!("{}; STARTTLS {negotiated}", greeting.summary());
    let mut parser = ReplyParser::default();
    if options.read_capabilities {
        facts.after_tls = ehlo_inside_tls(&mut tls, &mut parser, options, deadline).await;
    }
    let quit = smtp::quit(&mut tls, &mut parser, deadline).await;
    note_quit(result, quit);
}

/// EHLO once TLS is up, for what the server offers only there (AUTH, typically). The outcome is
/// already known; a server that does not answer leaves the capabilities unknown, nothing more.
async fn ehlo_inside_tls<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    parser: &mut ReplyParser,
    options: &ProbeOptions,
    deadline: Instant,
) -> Option<smtp::Capabilities> {
    let command = format!("EHLO {}", options.ehlo_name);
    match exchange(stream, parser, &command, deadline).await {
        Ok(reply) if reply.code == 250 => Some(reply.capabilities()),
        _ => None,
    }
}

/// QUIT comes after the answer is known: a server that does not answer it changes no outcome,
/// but the detail says so.
fn note_quit(result: &mut ProbeResult, quit: smtp::QuitEnd) {
    let note = match quit {
        smtp::QuitEnd::Answered => return,
        smtp::QuitEnd::NoReply => "QUIT got no reply",
        smtp::QuitEnd::Closed => "the server closed the connection without answering QUIT",
    };
    result.detail.push_str(&format!(" ({note})"));
}

/// Waits for the greeting; on failure records the outcome and returns `None`.
async fn greet<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    parser: &mut ReplyParser,
    deadline: Instant,
    result: &mut ProbeResult,
) -> Option<smtp::Reply> {
    let started = Instant::now();
    match smtp::read_reply(stream, parser, deadline).await {
        Ok(reply) if reply.code == 220 => {
            result.timings.banner_us = Some(micros(started.elapsed()));
            Some(reply)
        }
        Ok(reply) => {
            result.timings.banner_us = Some(micros(started.elapsed()));
            result.outcome = Outcome::BadBanner;
            result.step = Some(SessionStep::Greeting);
            result.detail = format!("greeting was {}", reply.summary());
            smtp::quit(stream, parser, deadline).await;
            None
        }
        Err(e) => {
            step_failure(result, SessionStep::Greeting, &e, started.elapsed());
            None
        }
    }
}

/// What a step that got no usable reply means, the same at every step: no reply before the
/// deadline or a connection closed mid-step is `no_banner` (the session was swallowed), a reply
/// that is not SMTP is `bad_banner`, a reset is `reset`. Never `starttls_missing` nor
/// `tls_failed`: nothing arrived to say STARTTLS or TLS was missing.
fn step_failure(result: &mut ProbeResult, step: SessionStep, e: &ExchangeError, waited: Duration) {
    result.step = Some(step);
    result.errno = match e {
        ExchangeError::Io(io) => io.raw_os_error(),
        _ => None,
    };
    let (outcome, detail) = match e {
        ExchangeError::Timeout => (Outcome::NoBanner, step_deadline_text(step, waited)),
        ExchangeError::Closed => (Outcome::NoBanner, step_closed_text(step)),
        ExchangeError::Reply(reply) => {
            (Outcome::BadBanner, format!("{}: {reply}", step_name(step)))
        }
        ExchangeError::Io(_) => (
            result
                .errno
                .and_then(classify::session_errno_outcome)
                .unwrap_or(Outcome::NoBanner),
            format!("{}: {e}", step_name(step)),
        ),
    };
    result.outcome = outcome;
    result.detail = detail;
}

/// The step as a detail names it.
fn step_name(step: SessionStep) -> &'static str {
    match step {
        SessionStep::Greeting => "greeting",
        SessionStep::Ehlo => "EHLO",
        SessionStep::Starttls => "STARTTLS",
        SessionStep::TlsHandshake => "TLS",
        SessionStep::Quit => "QUIT",
    }
}

fn step_deadline_text(step: SessionStep, waited: Duration) -> String {
    let ms = waited.as_millis();
    match step {
        SessionStep::Greeting => format!("connected, but no complete greeting within {ms} ms"),
        SessionStep::Ehlo => {
            format!("the greeting arrived, but EHLO got no reply within {ms} ms")
        }
        SessionStep::Starttls => {
            format!("EHLO offered STARTTLS, but STARTTLS got no reply within {ms} ms")
        }
        SessionStep::TlsHandshake => format!("no TLS handshake within {ms} ms"),
        SessionStep::Quit => format!("QUIT got no reply within {ms} ms"),
    }
}

fn step_closed_text(step: SessionStep) -> String {
    match step {
        SessionStep::Greeting => {
            "the server closed the connection before its greeting was complete".into()
        }
        SessionStep::Ehlo => {
            "the greeting arrived, then the server closed the connection without answering EHLO"
                .into()
        }
        SessionStep::Starttls => {
            "EHLO offered STARTTLS, then the server closed the connection without answering STARTTLS"
                .into()
        }
        SessionStep::TlsHandshake => {
            "the server closed the connection during the TLS handshake".into()
        }
        SessionStep::Quit => "the server closed the connection without answering QUIT".into(),
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    parser: &mut ReplyParser,
    command: &str,
    deadline: Instant,
) -> Result<smtp::Reply, ExchangeError> {
    smtp::send(stream, command, deadline).await?;
    smtp::read_reply(stream, parser, deadline).await
}

fn tls_failure(
    result: &mut ProbeResult,
    failure: &tls::HandshakeFailure,
    client: &tls::TlsClient,
    place: TlsPlace,
) {
    let e = &failure.error;
    result.errno = e.raw_os_error();
    result.outcome = result
        .errno
        .and_then(classify::session_errno_outcome)
        .unwrap_or(Outcome::TlsFailed);
    let presented = client.presented();
    result.detail = format!(
        "TLS: {}",
        tls_failure::describe(e, presented.as_ref(), &failure.first_bytes, place)
    );
    if let Some(issuer) = presented.and_then(|p| p.issuer) {
        result
            .detail
            .push_str(&format!(" (presented certificate issued by {issuer})"));
    }
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

pub fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
