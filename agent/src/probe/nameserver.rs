//! Asking the configured nameservers (/etc/resolv.conf) directly, for what getaddrinfo cannot
//! tell: the DNS response code behind a failed lookup (glibc says EAI_AGAIN alike for a SERVFAIL,
//! a REFUSED and a silent server) and the MX records `check --mx` needs.
//!
//! Only the nameservers are asked here, never /etc/hosts: the system's own order (nsswitch) is
//! getaddrinfo's business and stays first. The questions are asked the way glibc's stub resolver
//! asks them, since it is glibc's failure they explain: resolv.conf's search list and `ndots`
//! decide which names are tried, each server in turn (`timeout:`, `attempts:`, `use-vc`), a
//! SERVFAIL or REFUSED moves on to the next server, a truncated reply is asked again over TCP.
//! The messages are hickory-proto's; there is no resolver, cache or connection pool here, since
//! questions come only after a failure or once per check, and each reads the file as it is now.
//! Names are taken in their ASCII form, as getaddrinfo takes them (an internationalised name in
//! its `xn--` form).

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
pub use hickory_proto::rr::RecordType;
use hickory_proto::rr::{Name, RData, Record};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV6};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::Instant;

/// The system's resolver configuration.
const RESOLV_CONF: &str = "/etc/resolv.conf";

/// The port nameservers listen on.
const DNS_PORT: u16 = 53;

/// The shortest wait for one server, whatever the deadline left: less is not an attempt.
const MIN_ATTEMPT: Duration = Duration::from_millis(100);

/// Datagrams that are not the reply (another id, another question) read per attempt before the
/// attempt is given up: bounds what a noisy or hostile sender costs.
const MAX_STRAY_REPLIES: usize = 16;

/// What the nameservers said to one question.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply<T> {
    /// A NOERROR answer with records of the type asked for.
    Answer(T),
    /// A response without records of that type, with its response code (NOERROR means the name
    /// exists without such records: "no answer", NODATA).
    Negative(Rcode),
    /// No nameserver replied before the deadline.
    Silent,
    /// The question could not be asked or the reply not read (no route, port closed, bad
    /// resolv.conf, malformed reply); the text says which.
    Unusable(String),
}

/// The DNS response codes a negative reply can carry (RFC 1035 §4.1.1, RFC 6895).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rcode {
    NoError,
    NxDomain,
    ServFail,
    Refused,
    /// Any other code, by number (FORMERR 1, NOTIMP 4, …).
    Other(u16),
}

impl Rcode {
    fn from_hickory(code: ResponseCode) -> Self {
        match code {
            ResponseCode::NoError => Rcode::NoError,
            ResponseCode::NXDomain => Rcode::NxDomain,
            ResponseCode::ServFail => Rcode::ServFail,
            ResponseCode::Refused => Rcode::Refused,
            other => Rcode::Other(u16::from(other)),
        }
    }

    /// The code's name as DNS tools print it.
    pub fn name(self) -> String {
        match self {
            Rcode::NoError => "NOERROR".into(),
            Rcode::NxDomain => "NXDOMAIN".into(),
            Rcode::ServFail => "SERVFAIL".into(),
            Rcode::Refused => "REFUSED".into(),
            Rcode::Other(code) => {
                let mnemonic = match code {
                    1 => "FORMERR",
                    4 => "NOTIMP",
                    6 => "YXDOMAIN",
                    7 => "YXRRSET",
                    8 => "NXRRSET",
                    9 => "NOTAUTH",
                    10 => "NOTZONE",
                    _ => "",
                };
                if mnemonic.is_empty() {
                    format!("rcode {code}")
                } else {
                    format!("{mnemonic} (rcode {code})")
                }
            }
        }
    }
}

/// One MX record: the exchanger's name (without the trailing dot; empty for the null MX ".")
/// and its preference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxRecord {
    pub preference: u16,
    pub exchange: String,
}

/// The configured nameservers, ready to be asked.
#[derive(Debug, Clone)]
pub struct Nameservers {
    servers: Vec<SocketAddr>,
    /// resolv.conf's search list (or `domain`), in order.
    search: Vec<String>,
    ndots: usize,
    /// The wait for one server's reply: resolv.conf's `timeout:`, never beyond the deadline.
    per_attempt: Duration,
    /// Rounds over the servers (`attempts:`, at least one).
    attempts: usize,
    /// `options use-vc`: TCP from the start.
    tcp_only: bool,
    /// Their addresses, for messages ("198.18.0.53").
    pub listed: String,
}

impl Nameservers {
    /// Reads /etc/resolv.conf now. Each question gets at most `deadline`.
    pub fn from_system(deadline: Duration) -> Result<Self, String> {
        let text = std::fs::read_to_string(RESOLV_CONF)
            .map_err(|e| format!("cannot read {RESOLV_CONF}: {e}"))?;
        Self::from_resolv_conf(&text, deadline)
    }

    /// From resolv.conf text. Like glibc, a file without nameservers means the local one.
    pub fn from_resolv_conf(text: &str, deadline: Duration) -> Result<Self, String> {
        let mut config =
            resolv_conf::Config::parse(text).map_err(|e| format!("{RESOLV_CONF}: {e}"))?;
        config.glibc_normalize();
        let mut servers: Vec<SocketAddr> = Vec::new();
        for server in &config.nameservers {
            let address = socket_address(server);
            if !servers.contains(&address) {
                servers.push(address);
            }
        }
        if servers.is_empty() {
            servers.push(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), DNS_PORT));
        }
        let mut listed: Vec<String> = Vec::new();
        for server in &servers {
            let text = server.ip().to_string();
            if !listed.contains(&text) {
                listed.push(text);
            }
        }
        Ok(Nameservers {
            servers,
            search: config.get_last_search_or_domain().cloned().collect(),
            ndots: config.ndots as usize,
            per_attempt: Duration::from_secs(u64::from(config.timeout))
                .min(deadline)
                .max(MIN_ATTEMPT),
            attempts: (config.attempts as usize).max(1),
            tcp_only: config.use_vc,
            listed: listed.join(", "),
        })
    }

    /// The addresses of `name` in one record type (A or AAAA).
    pub async fn addresses(&self, name: &str, record_type: RecordType) -> Reply<Vec<IpAddr>> {
        let reply = self.ask(name, record_type).await;
        only(reply, |record| record.data().ip_addr())
    }

    /// The MX records of `domain`, as the nameservers gave them (unsorted).
    pub async fn mx(&self, domain: &str) -> Reply<Vec<MxRecord>> {
        let reply = self.ask(domain, RecordType::MX).await;
        only(reply, |record| match record.data() {
            RData::MX(mx) => Some(MxRecord {
                preference: mx.preference(),
                exchange: mx.exchange().to_ascii().trim_end_matches('.').to_string(),
            }),
            _ => None,
        })
    }

    /// Asks for `name`'s records of one type, through the search list like glibc's `res_search`:
    /// the first name that has such records answers; otherwise the most telling failure of all
    /// the names tried (`worse`).
    async fn ask(&self, name: &str, record_type: RecordType) -> Reply<Vec<Record>> {
        let names = match self.names_to_try(name) {
            Ok(names) => names,
            Err(why) => return Reply::Unusable(why),
        };
        let mut so_far: Option<Reply<Vec<Record>>> = None;
        for candidate in names {
            let reply = self.ask_servers(&candidate, record_type).await;
            if matches!(reply, Reply::Answer(_)) {
                return reply;
            }
            so_far = Some(match so_far {
                None => reply,
                Some(earlier) => worse(earlier, reply),
            });
        }
        so_far.unwrap_or(Reply::Silent)
    }

    /// The names glibc tries for `name`, in its order: as given first when it has at least
    /// `ndots` dots, after the search domains otherwise; only itself when it ends with a dot.
    fn names_to_try(&self, name: &str) -> Result<Vec<Name>, String> {
        let name = name.trim();
        let mut given = Name::from_ascii(name)
            .map_err(|e| format!("{name:?} is not a DNS name in ASCII: {e}"))?;
        if name.ends_with('.') || self.search.is_empty() {
            given.set_fqdn(true);
            return Ok(vec![given]);
        }
        let mut searched = Vec::new();
        for domain in &self.search {
            let Ok(domain) = Name::from_ascii(domain) else {
                continue; // glibc skips a search domain it cannot use; so do we.
            };
            if let Ok(mut full) = given.clone().append_domain(&domain) {
                full.set_fqdn(true);
                searched.push(full);
            }
        }
        given.set_fqdn(true);
        let dots = name.matches('.').count();
        Ok(if dots >= self.ndots {
            std::iter::once(given).chain(searched).collect()
        } else {
            searched.into_iter().chain(std::iter::once(given)).collect()
        })
    }

    /// Asks the servers about one name, like glibc's `res_send`: each server in turn, in rounds
    /// (`attempts`); a server that answered (an answer, NXDOMAIN or NODATA) settles it, one that
    /// failed (SERVFAIL, REFUSED, another code) or could not be asked gives way to the next, and
    /// only silent servers are asked again in a later round.
    async fn ask_servers(&self, name: &Name, record_type: RecordType) -> Reply<Vec<Record>> {
        let mut unsettled: Vec<SocketAddr> = self.servers.clone();
        let mut so_far: Option<Reply<Vec<Record>>> = None;
        for _ in 0..self.attempts {
            let mut still_silent = Vec::new();
            for server in unsettled {
                let reply = self.exchange(server, name, record_type).await;
                match reply {
                    Reply::Answer(_)
                    | Reply::Negative(Rcode::NoError)
                    | Reply::Negative(Rcode::NxDomain) => return reply,
                    Reply::Silent => still_silent.push(server),
                    Reply::Negative(_) | Reply::Unusable(_) => {}
                }
                so_far = Some(match so_far {
                    None => reply,
                    Some(earlier) => worse(earlier, reply),
                });
            }
            if still_silent.is_empty() {
                break;
            }
            unsettled = still_silent;
        }
        so_far.unwrap_or(Reply::Silent)
    }

    /// One question to one server: over UDP, then over TCP when the reply is truncated (or at
    /// once with `use-vc`). Bounded by `per_attempt` from start to end.
    async fn exchange(
        &self,
        server: SocketAddr,
        name: &Name,
        record_type: RecordType,
    ) -> Reply<Vec<Record>> {
        let id: u16 = rand::random();
        let mut query = Message::new();
        query
            .set_id(id)
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(true)
            .add_query(Query::query(name.clone(), record_type));
        let bytes = match query.to_vec() {
            Ok(bytes) => bytes,
            Err(e) => return Reply::Unusable(format!("cannot write the question: {e}")),
        };
        let until = Instant::now() + self.per_attempt;
        let exchanged = if self.tcp_only {
            over_tcp(server, &bytes, until).await
        } else {
            match over_udp(server, &bytes, &query, until).await {
                Ok(reply) if reply.truncated() => over_tcp(server, &bytes, until).await,
                other => other,
            }
        };
        let reply = match exchanged {
            Ok(reply) => reply,
            Err(Failure::Silent) => return Reply::Silent,
            Err(Failure::Unusable(why)) => return Reply::Unusable(why),
        };
        if !answers(&reply, &query) {
            return Reply::Unusable(format!("{server} replied to another question"));
        }
        match reply.response_code() {
            ResponseCode::NoError => {
                let records: Vec<Record> = reply
                    .answers()
                    .iter()
                    .filter(|r| r.record_type() == record_type)
                    .cloned()
                    .collect();
                if records.is_empty() {
                    Reply::Negative(Rcode::NoError)
                } else {
                    Reply::Answer(records)
                }
            }
            code => Reply::Negative(Rcode::from_hickory(code)),
        }
    }
}

/// Of two failures, the one that says more about why the system's lookup failed, in glibc's
/// own order (`res_search`: a name that exists without records, then a server's failure, over
/// "no such name"): NODATA, then SERVFAIL/REFUSED/other codes (the first seen), then silence,
/// then a question that could not be asked, then NXDOMAIN.
fn worse<T>(earlier: Reply<T>, later: Reply<T>) -> Reply<T> {
    fn rank<T>(reply: &Reply<T>) -> u8 {
        match reply {
            Reply::Answer(_) => 6,
            Reply::Negative(Rcode::NoError) => 5,
            Reply::Negative(Rcode::NxDomain) => 1,
            Reply::Negative(_) => 4,
            Reply::Silent => 3,
            Reply::Unusable(_) => 2,
        }
    }
    if rank(&later) > rank(&earlier) {
        later
    } else {
        earlier
    }
}

/// The records turned into what the caller wants; none of them usable is NODATA.
fn only<T>(reply: Reply<Vec<Record>>, pick: impl Fn(&Record) -> Option<T>) -> Reply<Vec<T>> {
    match reply {
        Reply::Answer(records) => {
            let picked: Vec<T> = records.iter().filter_map(pick).collect();
            if picked.is_empty() {
                Reply::Negative(Rcode::NoError)
            } else {
                Reply::Answer(picked)
            }
        }
        Reply::Negative(code) => Reply::Negative(code),
        Reply::Silent => Reply::Silent,
        Reply::Unusable(why) => Reply::Unusable(why),
    }
}

/// Whether `reply` is the response to `query`: same id, a response, the same question.
fn answers(reply: &Message, query: &Message) -> bool {
    reply.id() == query.id()
        && reply.message_type() == MessageType::Response
        && (reply.queries().is_empty() || reply.queries() == query.queries())
}

/// Why one exchange gave no reply.
enum Failure {
    Silent,
    Unusable(String),
}

async fn over_udp(
    server: SocketAddr,
    question: &[u8],
    query: &Message,
    until: Instant,
) -> Result<Message, Failure> {
    let local: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local)
        .await
        .map_err(|e| Failure::Unusable(io_text(&e)))?;
    // Connected, so that the kernel hands us its ICMP errors (a closed port) and only the
    // server's datagrams.
    socket
        .connect(server)
        .await
        .map_err(|e| Failure::Unusable(io_text(&e)))?;
    socket
        .send(question)
        .await
        .map_err(|e| Failure::Unusable(io_text(&e)))?;
    let mut buffer = vec![0u8; 4096];
    for _ in 0..MAX_STRAY_REPLIES {
        let received = tokio::time::timeout_at(until, socket.recv(&mut buffer)).await;
        let length = match received {
            Err(_) => return Err(Failure::Silent),
            Ok(Err(e)) => return Err(Failure::Unusable(io_text(&e))),
            Ok(Ok(length)) => length,
        };
        // A datagram that is not the reply is skipped, not believed: it may be a late answer
        // to an earlier question or a spoof.
        if let Ok(reply) = Message::from_vec(&buffer[..length]) {
            if answers(&reply, query) {
                return Ok(reply);
            }
        }
    }
    Err(Failure::Unusable(format!(
        "{server} sent {MAX_STRAY_REPLIES} datagrams, none of them the reply"
    )))
}

async fn over_tcp(server: SocketAddr, question: &[u8], until: Instant) -> Result<Message, Failure> {
    let exchange = async {
        let mut stream = TcpStream::connect(server).await?;
        let length = u16::try_from(question.len())
            .map_err(|_| std::io::Error::other("question too long"))?;
        let mut framed = Vec::with_capacity(question.len() + 2);
        framed.extend_from_slice(&length.to_be_bytes());
        framed.extend_from_slice(question);
        stream.write_all(&framed).await?;
        let length = stream.read_u16().await?;
        let mut reply = vec![0u8; usize::from(length)];
        stream.read_exact(&mut reply).await?;
        Ok::<_, std::io::Error>(reply)
    };
    match tokio::time::timeout_at(until, exchange).await {
        Err(_) => Err(Failure::Silent),
        Ok(Err(e)) => Err(Failure::Unusable(io_text(&e))),
        Ok(Ok(bytes)) => Message::from_vec(&bytes)
            .map_err(|e| Failure::Unusable(format!("{server} sent a malformed reply: {e}"))),
    }
}

/// A resolv.conf nameserver as a socket address; an IPv6 scope names an interface or its index.
fn socket_address(server: &resolv_conf::ScopedIp) -> SocketAddr {
    match server {
        resolv_conf::ScopedIp::V4(ip) => SocketAddr::new(IpAddr::V4(*ip), DNS_PORT),
        resolv_conf::ScopedIp::V6(ip, scope) => {
            let scope_id = scope.as_deref().map_or(0, interface_index);
            SocketAddr::V6(SocketAddrV6::new(*ip, DNS_PORT, 0, scope_id))
        }
    }
}

fn interface_index(scope: &str) -> u32 {
    if let Ok(index) = scope.parse() {
        return index;
    }
    match std::ffi::CString::new(scope) {
        // SAFETY: a NUL-terminated string that lives across the call.
        Ok(name) => unsafe { libc::if_nametoindex(name.as_ptr()) },
        Err(_) => 0,
    }
}

fn io_text(error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::ConnectionRefused => {
            "port 53 closed (connection refused, ICMP port unreachable)".into()
        }
        _ => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rcodes_are_named_like_dns_tools_name_them() {
        assert_eq!(Rcode::ServFail.name(), "SERVFAIL");
        assert_eq!(Rcode::Refused.name(), "REFUSED");
        assert_eq!(Rcode::Other(4).name(), "NOTIMP (rcode 4)");
        assert_eq!(Rcode::Other(23).name(), "rcode 23");
        assert_eq!(Rcode::from_hickory(ResponseCode::NXDomain), Rcode::NxDomain);
        assert_eq!(Rcode::from_hickory(ResponseCode::NotImp), Rcode::Other(4));
    }

    #[test]
    fn resolv_conf_is_read_like_glibc_reads_it() {
        let d = Duration::from_secs(2);
        let ns =
            Nameservers::from_resolv_conf("nameserver 198.18.0.53\nnameserver 2001:db8::53\n", d)
                .unwrap();
        assert_eq!(ns.listed, "198.18.0.53, 2001:db8::53");
        assert_eq!(ns.servers[1], "[2001:db8::53]:53".parse().unwrap());
        // No nameserver line: glibc asks the local one.
        let ns = Nameservers::from_resolv_conf("search lab.test\n", d).unwrap();
        assert_eq!(ns.listed, "127.0.0.1");
        assert_eq!(ns.search, vec!["lab.test".to_string()]);
    }

    #[test]
    fn attempts_never_outlive_the_deadline() {
        let text = "nameserver 198.18.0.53\noptions timeout:5 attempts:0\n";
        let ns = Nameservers::from_resolv_conf(text, Duration::from_secs(1)).unwrap();
        assert_eq!(ns.per_attempt, Duration::from_secs(1));
        assert_eq!(ns.attempts, 1);
        let ns = Nameservers::from_resolv_conf(text, Duration::from_millis(1)).unwrap();
        assert_eq!(ns.per_attempt, MIN_ATTEMPT);
    }

    fn tried(ns: &Nameservers, name: &str) -> Vec<String> {
        ns.names_to_try(name)
            .unwrap()
            .iter()
            .map(Name::to_ascii)
            .collect()
    }

    #[test]
    fn names_are_tried_through_the_search_list_in_glibcs_order() {
        let d = Duration::from_secs(1);
        let ns =
            Nameservers::from_resolv_conf("nameserver 198.18.0.53\nsearch lab.test corp.test\n", d)
                .unwrap();
        // ndots 1: a dotted name is tried as given first, a bare one last.
        assert_eq!(
            tried(&ns, "mx.example"),
            [
                "mx.example.",
                "mx.example.lab.test.",
                "mx.example.corp.test."
            ]
        );
        assert_eq!(
            tried(&ns, "mail"),
            ["mail.lab.test.", "mail.corp.test.", "mail."]
        );
        // A trailing dot: only the name itself.
        assert_eq!(tried(&ns, "mail."), ["mail."]);
        let ns = Nameservers::from_resolv_conf(
            "nameserver 198.18.0.53\nsearch lab.test\noptions ndots:3\n",
            d,
        )
        .unwrap();
        assert_eq!(
            tried(&ns, "mx.example"),
            ["mx.example.lab.test.", "mx.example."]
        );
        let ns = Nameservers::from_resolv_conf("nameserver 198.18.0.53\n", d).unwrap();
        assert_eq!(tried(&ns, "mail"), ["mail."]);
        assert!(ns.names_to_try("bücher.example").is_err());
        assert!(ns.names_to_try("a..b").is_err());
    }

    #[test]
    fn the_most_telling_failure_is_kept() {
        let nx: Reply<()> = Reply::Negative(Rcode::NxDomain);
        assert_eq!(worse(nx.clone(), Reply::Silent), Reply::Silent);
        assert_eq!(
            worse::<()>(Reply::Silent, Reply::Negative(Rcode::ServFail)),
            Reply::Negative(Rcode::ServFail)
        );
        assert_eq!(
            worse::<()>(
                Reply::Negative(Rcode::Refused),
                Reply::Negative(Rcode::ServFail)
            ),
            Reply::Negative(Rcode::Refused)
        );
        assert_eq!(
            worse::<()>(
                Reply::Negative(Rcode::ServFail),
                Reply::Negative(Rcode::NoError)
            ),
            Reply::Negative(Rcode::NoError)
        );
        assert_eq!(
            worse(Reply::Unusable("x".into()), nx.clone()),
            Reply::Unusable("x".into())
        );
    }

    /// A nameserver on loopback, answering each question with what `answer` makes of it.
    struct LoopbackServer {
        address: SocketAddr,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for LoopbackServer {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    /// How the test server answers: a datagram to send first (a stray), then the reply, and
    /// whether UDP replies are truncated (the full one then comes over TCP).
    #[derive(Clone)]
    struct Behaviour {
        code: ResponseCode,
        address: Option<Ipv4Addr>,
        stray_first: bool,
        truncate_udp: bool,
    }

    fn reply_to(query: &Message, behaviour: &Behaviour, truncated: bool) -> Vec<u8> {
        let mut reply = Message::new();
        reply
            .set_id(query.id())
            .set_message_type(MessageType::Response)
            .set_op_code(OpCode::Query)
            .set_response_code(behaviour.code)
            .add_queries(query.queries().to_vec());
        if truncated {
            reply.set_truncated(true);
        } else if let Some(ip) = behaviour.address {
            let name = query.queries()[0].name().clone();
            reply.add_answer(Record::from_rdata(
                name,
                60,
                RData::A(hickory_proto::rr::rdata::A(ip)),
            ));
        }
        reply.to_vec().unwrap()
    }

    async fn serve(behaviour: Behaviour) -> LoopbackServer {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let address = udp.local_addr().unwrap();
        let tcp = tokio::net::TcpListener::bind(address).await.unwrap();
        let task = tokio::spawn(async move {
            let mut buffer = vec![0u8; 4096];
            loop {
                tokio::select! {
                    Ok((n, from)) = udp.recv_from(&mut buffer) => {
                        let query = Message::from_vec(&buffer[..n]).unwrap();
                        if behaviour.stray_first {
                            let mut stray = query.clone();
                            stray.set_id(query.id().wrapping_add(1));
                            stray.set_message_type(MessageType::Response);
                            let _ = udp.send_to(&stray.to_vec().unwrap(), from).await;
                        }
                        let bytes = reply_to(&query, &behaviour, behaviour.truncate_udp);
                        let _ = udp.send_to(&bytes, from).await;
                    }
                    Ok((mut stream, _)) = tcp.accept() => {
                        let length = stream.read_u16().await.unwrap();
                        let mut question = vec![0u8; usize::from(length)];
                        stream.read_exact(&mut question).await.unwrap();
                        let query = Message::from_vec(&question).unwrap();
                        let bytes = reply_to(&query, &behaviour, false);
                        let _ = stream.write_u16(bytes.len() as u16).await;
                        let _ = stream.write_all(&bytes).await;
                    }
                }
            }
        });
        LoopbackServer { address, task }
    }

    fn asking(servers: &[SocketAddr]) -> Nameservers {
        let mut ns =
            Nameservers::from_resolv_conf("nameserver 127.0.0.1\n", Duration::from_secs(1))
                .unwrap();
        ns.servers = servers.to_vec();
        ns
    }

    fn answering(address: Ipv4Addr) -> Behaviour {
        Behaviour {
            code: ResponseCode::NoError,
            address: Some(address),
            stray_first: false,
            truncate_udp: false,
        }
    }

    #[tokio::test]
    async fn a_reply_is_read_past_a_stray_datagram_and_a_truncated_one_is_asked_over_tcp() {
        let ip = Ipv4Addr::new(198, 18, 0, 25);
        let stray = serve(Behaviour {
            stray_first: true,
            ..answering(ip)
        })
        .await;
        let reply = asking(&[stray.address])
            .addresses("mx.lab.test", RecordType::A)
            .await;
        assert_eq!(reply, Reply::Answer(vec![IpAddr::V4(ip)]));

        let truncating = serve(Behaviour {
            truncate_udp: true,
            ..answering(ip)
        })
        .await;
        let reply = asking(&[truncating.address])
            .addresses("mx.lab.test", RecordType::A)
            .await;
        assert_eq!(reply, Reply::Answer(vec![IpAddr::V4(ip)]));
        // NOERROR with records of another type only: NODATA.
        let reply = asking(&[truncating.address])
            .addresses("mx.lab.test", RecordType::AAAA)
            .await;
        assert_eq!(reply, Reply::Negative(Rcode::NoError));
    }

    #[tokio::test]
    async fn a_failing_server_gives_way_to_the_next_and_a_closed_port_is_named() {
        let ip = Ipv4Addr::new(198, 18, 0, 26);
        let failing = serve(Behaviour {
            code: ResponseCode::ServFail,
            address: None,
            stray_first: false,
            truncate_udp: false,
        })
        .await;
        let good = serve(answering(ip)).await;
        let reply = asking(&[failing.address, good.address])
            .addresses("mx.lab.test", RecordType::A)
            .await;
        assert_eq!(reply, Reply::Answer(vec![IpAddr::V4(ip)]));
        let reply = asking(&[failing.address])
            .addresses("mx.lab.test", RecordType::A)
            .await;
        assert_eq!(reply, Reply::Negative(Rcode::ServFail));

        // A port nothing listens on: the kernel's ICMP error, not a wait.
        let closed = {
            let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            socket.local_addr().unwrap()
        };
        let started = std::time::Instant::now();
        let reply = asking(&[closed])
            .addresses("mx.lab.test", RecordType::A)
            .await;
        assert!(
            matches!(&reply, Reply::Unusable(why) if why.contains("port 53 closed")),
            "{reply:?}"
        );
        assert!(started.elapsed() < Duration::from_millis(900));
    }
}
