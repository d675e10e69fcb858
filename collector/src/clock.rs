//! Time, in one place: the wall clock (for the shells only: the core takes time as a
//! parameter), how an instant is written (RFC 3339, UTC, milliseconds), and how a result is
//! placed in time — by the agent's clock when it is synchronised, else by how old the result was
//! when its batch left ([`BatchClock`]), else by when it arrived ([`measured_at`]).

use egresswatch_wire::ProbeResult;
use time::OffsetDateTime;

/// The wall clock in Unix milliseconds.
pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Unix milliseconds as RFC 3339 UTC with millisecond precision (`2026-11-22T23:42:37.123Z`);
/// an instant beyond the years 1..9999 is written as the nearest one within them.
pub fn rfc3339(unix_ms: i64) -> String {
    let at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000).unwrap_or(
        if unix_ms < 0 {
            time::PrimitiveDateTime::MIN.assume_utc()
        } else {
            time::PrimitiveDateTime::MAX.assume_utc()
        },
    );
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        at.millisecond()
    )
}

/// When a result counts as measured: the agent's timestamp when its clock is trusted, but never
/// later than now (a clock ahead of ours must not make later, honest results look old), and the
/// receive time when it is not.
pub fn measured_at(result: &ProbeResult, clock_trusted: bool, now_unix_ms: i64) -> i64 {
    if clock_trusted {
        result.at_unix_ms.min(now_unix_ms)
    } else {
        now_unix_ms
    }
}

/// How a batch's results are timed. The store keeps the agent's own timestamps and says whether
/// they can be trusted; the feed hands the hub each result on the collector's clock
/// ([`BatchClock::place`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatchClock {
    /// The agent's clock was synchronised when it made the batch.
    pub trusted: bool,
    /// The agent's clock when it sent the batch (wire 1.3; 0 when not said).
    pub sent_unix_ms: i64,
}

impl From<bool> for BatchClock {
    /// A batch that does not say when it left.
    fn from(trusted: bool) -> BatchClock {
        BatchClock {
            trusted,
            sent_unix_ms: 0,
        }
    }
}

impl BatchClock {
    /// Places the results on the collector's clock when the agent's cannot be trusted but the
    /// batch says when it left (each result is `sent - at` old on arrival, whatever the
    /// agent's clock says the time is), and says whether their times are now trusted. Without
    /// that, an unsynchronised agent's results count as measured when they arrived: a probe
    /// that started before a change and reported after it would look like one after it.
    pub fn place(&self, results: &mut [ProbeResult], received_unix_ms: i64) -> bool {
        if self.trusted {
            return true;
        }
        if self.sent_unix_ms <= 0 {
            return false;
        }
        let shift = received_unix_ms.saturating_sub(self.sent_unix_ms);
        for r in results.iter_mut() {
            r.at_unix_ms = r.at_unix_ms.saturating_add(shift).min(received_unix_ms);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_clock_is_trusted_up_to_now() {
        let r = ProbeResult {
            at_unix_ms: 5_000,
            ..Default::default()
        };
        assert_eq!(measured_at(&r, true, 9_000), 5_000);
        assert_eq!(measured_at(&r, true, 4_000), 4_000);
        assert_eq!(measured_at(&r, false, 9_000), 9_000);
    }

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_391_557_123), "2026-11-22T23:52:37.123Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(rfc3339(i64::MAX), "9999-12-31T23:59:59.999Z");
        assert_eq!(rfc3339(i64::MIN), "-9999-01-01T00:00:00.000Z");
    }
}
