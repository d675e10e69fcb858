//! Is this host's clock synchronised? The kernel knows (adjtimex's STA_UNSYNC, kept by chrony,
//! ntpd or systemd-timesyncd). Batches carry the answer so the collector can flag timestamps
//! it should not trust.

use egresswatch_wire::ClockQuality;

pub fn quality() -> ClockQuality {
    // SAFETY: a zeroed timex with modes = 0 only reads the kernel's state.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    let state = unsafe { libc::adjtimex(&mut tx) };
    if state < 0 {
        return ClockQuality::Unknown;
    }
    if state == libc::TIME_ERROR || tx.status & libc::STA_UNSYNC != 0 {
        ClockQuality::Unsynchronised
    } else {
        ClockQuality::Synchronised
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reading_the_clock_state_never_fails() {
        let _ = super::quality();
    }
}
