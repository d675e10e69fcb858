//! Enrollment over the ingest's QUIC listener: a client without a certificate that speaks
//! [`egresswatch_wire::version::ENROLL_ALPN`] may present a join token and a certificate request,
//! once, within a short deadline, and gets a certificate or a refusal with its reason. The
//! decisions are the CA's ([`crate::ca::tokens`], [`crate::ca::enrollment`]); this shell reads
//! one frame, rate-limits by source address, runs the CA's transaction off the async threads,
//! answers, counts every attempt in `egresswatch_enrollments_total{result}` and logs it with the
//! token's id and the source — never the secret (attempts over the rate are logged at the limits'
//! pace, `crate::limits`).

use crate::ca::enrollment::{self, Outcome};
use crate::ca::tokens::{AttemptLimiter, Refusal};
use crate::ca::Authority;
use crate::clock::now_unix_ms;
use crate::limits::{Limit, LimitCounters};
use crate::metrics::Labels;
use egresswatch_wire::close;
use egresswatch_wire::enroll::{EnrollAnswer, EnrollMessage, TOKEN_ID_BYTES};
use egresswatch_wire::stream::{FrameReader, FrameWriter};
use egresswatch_wire::Refusal as WireRefusal;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// The whole exchange (stream, request, answer) must fit in this.
const DEADLINE: Duration = Duration::from_secs(10);
/// Largest enrollment frame: a token and a certificate request are well under it.
const MAX_REQUEST_BYTES: usize = 16 * 1024;

/// What every enrollment needs: the CA, the per-source attempt limiter and the counter.
pub struct Enrollment {
    authority: Arc<Authority>,
    limiter: Mutex<AttemptLimiter>,
    attempts: Family<Labels, Counter>,
    renewals: Family<Labels, Counter>,
}

impl Enrollment {
    pub fn new(
        authority: Authority,
        attempts_per_minute: u32,
        burst: u32,
        attempts: Family<Labels, Counter>,
        renewals: Family<Labels, Counter>,
    ) -> Enrollment {
        Enrollment {
            authority: Arc::new(authority),
            limiter: Mutex::new(AttemptLimiter::new(attempts_per_minute, burst)),
            attempts,
            renewals,
        }
    }

    /// Counts one renewal request under `result` in `egresswatch_renewals_total`.
    pub fn count_renewal(&self, result: &str) {
        self.renewals
            .get_or_create(&vec![("result".to_string(), result.to_string())])
            .inc();
    }

    /// Renews a session's certificate (wire 1.4 `Renew`): the answer to send, counted and
    /// logged. A refusal leaves the session as it was.
    pub async fn renew(
        &self,
        agent_id: &str,
        serial: &[u8],
        validity: (i64, i64),
        csr_der: Vec<u8>,
    ) -> egresswatch_wire::Renewed {
        let authority = self.authority.clone();
        let (id, serial) = (
            agent_id.to_string(),
            crate::ca::registry::serial_hex(serial),
        );
        let now = now_unix_ms() / 1000;
        let decided = tokio::task::spawn_blocking(move || {
            enrollment::renew(&authority, &id, &serial, validity, &csr_der, now)
        })
        .await;
        let count = |result: &str| self.count_renewal(result);
        match decided {
            Ok(Ok(enrollment::Renewal::Renewed {
                cert_pem,
                not_after,
            })) => {
                count("renewed");
                info!(not_after, "certificate renewed");
                egresswatch_wire::Renewed {
                    cert_pem,
                    refused: String::new(),
                }
            }
            Ok(Ok(enrollment::Renewal::Refused(refusal))) => {
                count(refusal.name());
                warn!(
                    result = refusal.name(),
                    "renewal refused: {}",
                    refusal.message()
                );
                egresswatch_wire::Renewed {
                    cert_pem: String::new(),
                    refused: refusal.message(),
                }
            }
            Ok(Err(e)) => {
                count("error");
                warn!("renewal failed on the collector: {e}");
                egresswatch_wire::Renewed {
                    cert_pem: String::new(),
                    refused: "the collector could not issue a certificate; it will be asked again"
                        .into(),
                }
            }
            Err(e) => {
                count("error");
                warn!("renewal task failed: {e}");
                egresswatch_wire::Renewed {
                    cert_pem: String::new(),
                    refused: "the collector could not issue a certificate".into(),
                }
            }
        }
    }

    fn count(&self, result: &str) {
        self.attempts
            .get_or_create(&vec![("result".to_string(), result.to_string())])
            .inc();
    }

    /// Serves one enrollment connection to its end.
    pub async fn run(
        &self,
        connection: quinn::Connection,
        remote: SocketAddr,
        limits: &LimitCounters,
    ) {
        match tokio::time::timeout(DEADLINE, self.exchange(&connection, remote, limits)).await {
            Ok(()) => {}
            Err(_) => {
                self.count("timeout");
                warn!(%remote, result = "timeout", "enrollment: no request within 10 s");
                connection.close(quinn::VarInt::from_u32(close::PROTOCOL), b"too slow");
            }
        }
    }

    async fn exchange(
        &self,
        connection: &quinn::Connection,
        remote: SocketAddr,
        limits: &LimitCounters,
    ) {
        let (send, recv) = match connection.accept_bi().await {
            Ok(streams) => streams,
            Err(e) => {
                info!(%remote, "enrollment: connection ended before a request: {e}");
                return;
            }
        };
        let mut send = FrameWriter::new(send, MAX_REQUEST_BYTES);
        let mut recv = FrameReader::new(recv, MAX_REQUEST_BYTES);
        // The attempt is counted against its source before anything it sent is looked at.
        let (allowed, retry_after) = {
            let mut limiter = self.limiter.lock().unwrap_or_else(|p| p.into_inner());
            (
                limiter.allow(remote.ip(), Instant::now()),
                limiter.retry_after(),
            )
        };
        let (token_id, answer) = if !allowed {
            (None, Err(Refusal::RateLimited))
        } else {
            match recv.read::<EnrollMessage>().await {
                Ok(Some(EnrollMessage::Request(request))) => {
                    let token_id = loggable_id(&request.token_id);
                    let authority = self.authority.clone();
                    let now = now_unix_ms() / 1000;
                    let decided = tokio::task::spawn_blocking(move || {
                        enrollment::enroll(&authority, &request, now)
                    })
                    .await;
                    let answer = match decided {
                        Ok(Ok(Outcome::Enrolled(enrolled))) => Ok(enrolled),
                        Ok(Ok(Outcome::Refused(refusal))) => Err(refusal),
                        Ok(Err(e)) => {
                            self.count("error");
                            warn!(%remote, token = token_id.as_deref().unwrap_or("-"), "enrollment failed on the collector: {e}");
                            refuse(
                                &mut send,
                                "the collector could not issue a certificate; try again later",
                                60,
                            )
                            .await;
                            return;
                        }
                        Err(e) => {
                            self.count("error");
                            warn!(%remote, "enrollment task failed: {e}");
                            return;
                        }
                    };
                    (token_id, answer)
                }
                Ok(Some(EnrollMessage::Unknown(kind))) => (
                    None,
                    Err(Refusal::Malformed(format!(
                        "a message of unknown kind {kind}"
                    ))),
                ),
                Ok(None) => (None, Err(Refusal::Malformed("no request".into()))),
                Err(e) => (None, Err(Refusal::Malformed(e.to_string()))),
            }
        };
        let token = token_id.as_deref().unwrap_or("-");
        match answer {
            Ok(enrolled) => {
                self.count("issued");
                info!(%remote, token, agent = %enrolled.agent_id, result = "issued", "enrollment: certificate issued");
                let _ = send.send(&EnrollAnswer::Enrolled(enrolled)).await;
                let _ = send.get_mut().finish();
                // Let the answer reach the agent before the connection goes.
                let _ = tokio::time::timeout(Duration::from_secs(2), connection.closed()).await;
            }
            Err(refusal) => {
                self.count(refusal.name());
                if refusal == Refusal::RateLimited {
                    // Logged at the limits' pace: a flood of attempts does not flood the log.
                    limits.exceeded(Limit::EnrollAttempts, 1, || {
                        format!(
                            "refusing an enrollment from {}: over quic.enroll_attempts_per_minute",
                            remote.ip()
                        )
                    });
                } else {
                    warn!(%remote, token, result = refusal.name(), "enrollment refused: {}", refusal.message());
                }
                let retry = if refusal == Refusal::RateLimited {
                    u32::try_from(retry_after.as_secs().max(1)).unwrap_or(60)
                } else {
                    0
                };
                refuse(&mut send, &refusal.message(), retry).await;
                let _ = tokio::time::timeout(Duration::from_secs(2), connection.closed()).await;
            }
        }
    }
}

async fn refuse(send: &mut FrameWriter<quinn::SendStream>, reason: &str, retry_after_s: u32) {
    let answer = EnrollAnswer::Refused(WireRefusal {
        reason: reason.to_string(),
        retry_after_s,
    });
    let _ = send.send(&answer).await;
    let _ = send.get_mut().finish();
}

/// A token id fit for a log line: only the shape a real id has (an attacker's bytes are not
/// echoed into the log).
fn loggable_id(id: &str) -> Option<String> {
    (id.len() == 2 * TOKEN_ID_BYTES && id.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| id.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_token_ids_shape_is_logged() {
        assert_eq!(
            loggable_id("0123456789ABCDEF").as_deref(),
            Some("0123456789abcdef")
        );
        assert_eq!(loggable_id("\x1b[31mevil"), None);
        assert_eq!(loggable_id(""), None);
    }
}
