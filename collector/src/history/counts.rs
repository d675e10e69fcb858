//! Small mergeable counters the long-kept tiers are made of: [`SparseCounts`] (counts by a small
//! index, stored as a few bytes) and, on top of it, the connect-latency [`LatencyHistogram`] and
//! the per-outcome counts of a rollup.
//!
//! The histogram has fixed logarithmic buckets (10 % wide, 100 µs to about 2 minutes), so two
//! histograms of the same series, cell or hour merge by adding counts, in any order, and a
//! quantile read from one is within one bucket (±5 %) of the exact value. A fixed layout keeps
//! what is stored comparable forever: no bucket boundaries are kept with the data.

use std::collections::BTreeMap;

/// Counts by a small index (an outcome code, a histogram bucket). Encoded as pairs of the index
/// byte and the count as a LEB128 varint: a rollup of one steady hour is a handful of bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SparseCounts(BTreeMap<u8, u64>);

impl SparseCounts {
    pub fn add(&mut self, index: u8, n: u64) {
        if n > 0 {
            *self.0.entry(index).or_insert(0) += n;
        }
    }

    pub fn merge(&mut self, other: &SparseCounts) {
        for (&i, &n) in &other.0 {
            self.add(i, n);
        }
    }

    pub fn get(&self, index: u8) -> u64 {
        self.0.get(&index).copied().unwrap_or(0)
    }

    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// (index, count) in ascending index.
    pub fn iter(&self) -> impl Iterator<Item = (u8, u64)> + '_ {
        self.0.iter().map(|(&i, &n)| (i, n))
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.0.len() * 3);
        for (&i, &n) in &self.0 {
            out.push(i);
            let mut v = n;
            loop {
                let byte = (v & 0x7f) as u8;
                v >>= 7;
                if v == 0 {
                    out.push(byte);
                    break;
                }
                out.push(byte | 0x80);
            }
        }
        out
    }

    /// The inverse of [`SparseCounts::encode`]; `None` for bytes it did not write.
    pub fn decode(bytes: &[u8]) -> Option<SparseCounts> {
        let mut counts = SparseCounts::default();
        let mut at = 0;
        while at < bytes.len() {
            let index = bytes[at];
            at += 1;
            let mut value: u64 = 0;
            let mut shift = 0;
            loop {
                let byte = *bytes.get(at)?;
                at += 1;
                if shift > 63 {
                    return None;
                }
                value |= u64::from(byte & 0x7f) << shift;
                shift += 7;
                if byte & 0x80 == 0 {
                    break;
                }
            }
            counts.add(index, value);
        }
        Some(counts)
    }
}

/// Lower edge of bucket 1 in microseconds; bucket 0 holds everything faster.
const FIRST_EDGE_US: f64 = 100.0;
/// Each bucket is this much wider than the one before.
const GROWTH: f64 = 1.1;
/// The last bucket (about 2 minutes and beyond: longer than any probe deadline).
const LAST_BUCKET: u8 = 150;

/// Connect latency, microseconds, in fixed log buckets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LatencyHistogram(pub SparseCounts);

impl LatencyHistogram {
    pub fn bucket_of(us: u32) -> u8 {
        let us = f64::from(us);
        if us < FIRST_EDGE_US {
            return 0;
        }
        let i = ((us / FIRST_EDGE_US).ln() / GROWTH.ln()).floor() as i64 + 1;
        i.clamp(1, i64::from(LAST_BUCKET)) as u8
    }

    /// The value a bucket stands for: the geometric middle of its edges, in milliseconds.
    fn bucket_ms(bucket: u8) -> f64 {
        if bucket == 0 {
            return FIRST_EDGE_US / 2.0 / 1000.0;
        }
        let low = FIRST_EDGE_US * GROWTH.powi(i32::from(bucket) - 1);
        low * GROWTH.sqrt() / 1000.0
    }

    pub fn record(&mut self, us: u32) {
        self.0.add(Self::bucket_of(us), 1);
    }

    pub fn merge(&mut self, other: &LatencyHistogram) {
        self.0.merge(&other.0);
    }

    pub fn count(&self) -> u64 {
        self.0.total()
    }

    /// The `q` quantile (0..=1) in milliseconds, rounded to 0.1 ms; `None` when empty.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        // The rank of the sample the quantile names (nearest-rank, 1-based).
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (bucket, n) in self.0.iter() {
            seen += n;
            if seen >= rank {
                return Some((Self::bucket_ms(bucket) * 10.0).round() / 10.0);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_round_trip_through_their_bytes() {
        let mut c = SparseCounts::default();
        c.add(0, 60);
        c.add(7, 300_000);
        c.add(255, 1);
        let bytes = c.encode();
        assert_eq!(SparseCounts::decode(&bytes), Some(c));
        assert_eq!(SparseCounts::decode(&[3, 0x80]), None);
        assert_eq!(SparseCounts::decode(&[]), Some(SparseCounts::default()));
    }

    #[test]
    fn quantiles_are_within_a_bucket_and_merge_in_any_order() {
        let mut a = LatencyHistogram::default();
        let mut b = LatencyHistogram::default();
        for us in 1..=1000u32 {
            if us % 2 == 0 {
                a.record(us * 100)
            } else {
                b.record(us * 100)
            }
        }
        let mut ab = a.clone();
        ab.merge(&b);
        let mut ba = b.clone();
        ba.merge(&a);
        assert_eq!(ab, ba);
        // Exact p50 is 50 ms, p95 95 ms.
        let p50 = ab.quantile_ms(0.5).unwrap();
        let p95 = ab.quantile_ms(0.95).unwrap();
        assert!((p50 - 50.0).abs() <= 50.0 * 0.06, "{p50}");
        assert!((p95 - 95.0).abs() <= 95.0 * 0.06, "{p95}");
        assert_eq!(LatencyHistogram::default().quantile_ms(0.5), None);
        assert_eq!(LatencyHistogram::bucket_of(u32::MAX), LAST_BUCKET);
        assert_eq!(LatencyHistogram::bucket_of(5), 0);
    }
}
