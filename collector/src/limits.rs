//! What happens when a client hits a bound: every limit has a name, each time it is exceeded it
//! is counted in `/metrics` as `egresswatch_limit_exceeded_total{limit="NAME"}`, and it is logged
//! at most once per [`LOG_EVERY`] per limit (with how many more went unlogged), so a flood of bad
//! clients cannot flood the log. The per-agent result rate ([`ResultRate`]) lives here too.
//!
//! The limits themselves, their settings and defaults are listed in docs/collector.md ("Limits").

use crate::metrics::{Labels, Metrics};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Shortest gap between two log lines about the same limit.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// Every bound the collector enforces, by the name it has in `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    /// `quic.max_frame_bytes`: a frame's length prefix is over the cap.
    FrameBytes,
    /// `quic.max_batch_results`: a batch carries more results than allowed.
    BatchResults,
    /// `quic.max_results_per_sec`: an agent sends faster than its rate (it is slowed, not cut).
    ResultsPerSecond,
    /// `quic.max_connections`: the collector is full.
    Connections,
    /// `quic.max_connections_per_source`: one source address holds too many connections.
    ConnectionsPerSource,
    /// `quic.max_handshakes`: too many TLS handshakes in progress.
    Handshakes,
    /// `quic.max_streams_per_connection`: an agent opened a stream beyond its report stream.
    Streams,
    /// The wire's label caps (`MAX_LABEL_BYTES`, no control characters): hello refused.
    Labels,
    /// The wire's hello caps (targets announced, target name length): hello refused.
    Hello,
    /// An agent's spool dropped results to stay under `spool.max_bytes` (reported by the agent).
    AgentSpool,
    /// `http.max_body_bytes`: a request body over the cap (413).
    HttpBodyBytes,
    /// `http.max_sse_clients`: an `/api/stream` client turned away (503).
    SseClients,
    /// `quic.udp_recv_buffer_bytes`: the kernel dropped QUIC packets, the socket's receive
    /// buffer being full (counted per packet; see `ingest::udp`).
    UdpReceiveBuffer,
    /// `http.max_connections`: an HTTP connection closed as soon as accepted.
    HttpConnections,
    /// `http.max_silences`: a silence refused (409), the collector holding as many as allowed.
    Silences,
    /// `http.signin_attempts_per_minute`: a sign-in refused (429) before its token was looked at.
    SignIn,
    /// `quic.enroll_attempts_per_minute`: an enrollment refused (`rate_limited`) before its
    /// request was read.
    EnrollAttempts,
}

impl Limit {
    pub const ALL: [Limit; 17] = [
        Limit::FrameBytes,
        Limit::BatchResults,
        Limit::ResultsPerSecond,
        Limit::Connections,
        Limit::ConnectionsPerSource,
        Limit::Handshakes,
        Limit::Streams,
        Limit::Labels,
        Limit::Hello,
        Limit::AgentSpool,
        Limit::HttpBodyBytes,
        Limit::SseClients,
        Limit::UdpReceiveBuffer,
        Limit::HttpConnections,
        Limit::Silences,
        Limit::SignIn,
        Limit::EnrollAttempts,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Limit::FrameBytes => "frame_bytes",
            Limit::BatchResults => "batch_results",
            Limit::ResultsPerSecond => "results_per_second",
            Limit::Connections => "connections",
            Limit::ConnectionsPerSource => "connections_per_source",
            Limit::Handshakes => "handshakes",
            Limit::Streams => "streams",
            Limit::Labels => "labels",
            Limit::Hello => "hello",
            Limit::AgentSpool => "agent_spool",
            Limit::HttpBodyBytes => "http_body_bytes",
            Limit::SseClients => "sse_clients",
            Limit::UdpReceiveBuffer => "udp_receive_buffer",
            Limit::HttpConnections => "http_connections",
            Limit::Silences => "silences",
            Limit::SignIn => "sign_in",
            Limit::EnrollAttempts => "enroll_attempts",
        }
    }

    fn index(self) -> usize {
        Limit::ALL.iter().position(|l| *l == self).unwrap_or(0)
    }
}

/// The counters behind `egresswatch_limit_exceeded_total` and the log throttle. Cheap to clone.
#[derive(Clone, Debug)]
pub struct LimitCounters {
    pub family: Family<Labels, Counter>,
    throttle: Arc<Throttle>,
}

#[derive(Debug)]
struct Throttle {
    started: Instant,
    /// Per limit: milliseconds since `started` of the last log line, and hits since then.
    last_logged_ms: [AtomicU64; Limit::ALL.len()],
    unlogged: [AtomicU64; Limit::ALL.len()],
}

impl Default for LimitCounters {
    fn default() -> Self {
        let family = Family::<Labels, Counter>::default();
        // Every limit shows in /metrics from the start, at 0, so dashboards and alert rules
        // can rely on the series existing.
        for limit in Limit::ALL {
            let _ = family.get_or_create(&labels(limit));
        }
        LimitCounters {
            family,
            throttle: Arc::new(Throttle {
                started: Instant::now(),
                last_logged_ms: std::array::from_fn(|_| AtomicU64::new(u64::MAX)),
                unlogged: std::array::from_fn(|_| AtomicU64::new(0)),
            }),
        }
    }
}

fn labels(limit: Limit) -> Labels {
    vec![("limit".to_string(), limit.as_str().to_string())]
}

impl LimitCounters {
    /// New counters, registered in `metrics`.
    pub fn register(metrics: &Metrics) -> LimitCounters {
        let c = LimitCounters::default();
        metrics.register(
            "egresswatch_limit_exceeded",
            "Times a configured or wire limit was exceeded, per limit",
            c.family.clone(),
        );
        c
    }

    /// Counts `n` hits of `limit` and logs `detail` unless this limit was logged recently.
    /// Returns whether it logged.
    pub fn exceeded(&self, limit: Limit, n: u64, detail: impl FnOnce() -> String) -> bool {
        self.family.get_or_create(&labels(limit)).inc_by(n);
        let i = limit.index();
        let now = self.throttle.started.elapsed().as_millis() as u64;
        let last = self.throttle.last_logged_ms[i].load(Ordering::Relaxed);
        let due = last == u64::MAX || now.saturating_sub(last) >= LOG_EVERY.as_millis() as u64;
        if due
            && self.throttle.last_logged_ms[i]
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            let more = self.throttle.unlogged[i].swap(0, Ordering::AcqRel);
            let detail = detail();
            tracing::warn!(
                limit = limit.as_str(),
                unlogged_since_last = more,
                "limit exceeded: {detail}"
            );
            true
        } else {
            self.throttle.unlogged[i].fetch_add(n, Ordering::Relaxed);
            false
        }
    }

    /// How often `limit` was exceeded so far.
    pub fn get(&self, limit: Limit) -> u64 {
        self.family.get_or_create(&labels(limit)).get()
    }
}

/// Per-agent token buckets for `quic.max_results_per_sec`: an agent may send a burst of
/// `burst` results at once and `rate` per second after that. Keyed by agent id (not by
/// connection), so reconnecting does not refill the bucket.
#[derive(Debug)]
pub struct ResultRate {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
    /// Above this many buckets, full ones are forgotten (they hold no state worth keeping).
    prune_above: usize,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl ResultRate {
    /// `rate` 0 means unlimited.
    pub fn new(rate: u32, burst: u32, prune_above: usize) -> ResultRate {
        ResultRate {
            rate: f64::from(rate),
            burst: f64::from(burst.max(rate).max(1)),
            buckets: Mutex::new(HashMap::new()),
            prune_above: prune_above.max(16),
        }
    }

    /// Takes `count` tokens from `agent`'s bucket and says how long the caller must wait before
    /// handling them (zero when within the rate). The bucket may go into debt, so a batch larger
    /// than the burst is slowed, never refused: an honest agent loses nothing.
    pub fn take(&self, agent: &str, count: u32, now: Instant) -> Duration {
        if self.rate <= 0.0 {
            return Duration::ZERO;
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() > self.prune_above {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < burst
            });
        }
        let bucket = buckets.entry(agent.to_string()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let refill = now.saturating_duration_since(bucket.at).as_secs_f64() * self.rate;
        bucket.tokens = (bucket.tokens + refill).min(self.burst) - f64::from(count);
        bucket.at = now;
        if bucket.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-bucket.tokens / self.rate)
        }
    }
}

/// Connections held per source address, for `quic.max_connections_per_source`.
#[derive(Debug, Default)]
pub struct PerSource {
    held: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's place in [`PerSource`]; released when dropped.
pub struct SourceSlot {
    table: Arc<PerSource>,
    ip: IpAddr,
}

impl PerSource {
    /// A slot for one more connection from `ip`, or `None` when it already holds `max`.
    pub fn try_take(table: &Arc<PerSource>, ip: IpAddr, max: usize) -> Option<SourceSlot> {
        let mut held = table.held.lock().unwrap_or_else(|p| p.into_inner());
        let n = held.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(SourceSlot {
            table: table.clone(),
            ip,
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut held = self.table.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = held.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_paces() {
        let rate = ResultRate::new(100, 500, 1000);
        let t0 = Instant::now();
        assert_eq!(rate.take("a", 500, t0), Duration::ZERO);
        // 100 more with an empty bucket: one second's worth of debt.
        let wait = rate.take("a", 100, t0);
        assert!((wait.as_secs_f64() - 1.0).abs() < 0.01, "{wait:?}");
        // Another agent has its own bucket.
        assert_eq!(rate.take("b", 500, t0), Duration::ZERO);
        // After two seconds the debt is paid and 100 are available again.
        assert_eq!(
            rate.take("a", 100, t0 + Duration::from_secs(2)),
            Duration::ZERO
        );
        // A batch larger than the burst is slowed, never refused.
        let big = rate.take("c", 2000, t0);
        assert!((big.as_secs_f64() - 15.0).abs() < 0.01, "{big:?}");
        assert_eq!(
            ResultRate::new(0, 0, 10).take("a", 1_000_000, t0),
            Duration::ZERO
        );
    }

    #[test]
    fn per_source_slots_are_released() {
        let table = Arc::new(PerSource::default());
        let ip: IpAddr = "198.18.0.1".parse().unwrap();
        let a = PerSource::try_take(&table, ip, 2).unwrap();
        let _b = PerSource::try_take(&table, ip, 2).unwrap();
        assert!(PerSource::try_take(&table, ip, 2).is_none());
        drop(a);
        assert!(PerSource::try_take(&table, ip, 2).is_some());
    }

    #[test]
    fn counting_is_exact_while_logging_is_throttled() {
        let c = LimitCounters::default();
        assert_eq!(c.get(Limit::Streams), 0);
        let logged = (0..1000)
            .filter(|_| c.exceeded(Limit::Streams, 1, || "x".into()))
            .count();
        assert_eq!(c.get(Limit::Streams), 1000);
        assert_eq!(logged, 1);
    }
}
