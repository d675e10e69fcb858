//! Chains this agent verified a moment ago. Checking a server's certificate chain against the
//! trust roots is about a quarter of a TLS probe's instructions (callgrind), and a destination
//! presents the same chain probe after probe. A chain byte-for-byte equal to one that verified
//! for the same name within [`REMEMBER_FOR`] is accepted without walking it again; the handshake's
//! signature (CertificateVerify) is still checked on every probe, so only the holder of that
//! leaf's private key can pass: an intercepting middlebox presents another chain and is verified
//! in full. Failures are never remembered, so their plain-words reasons are always fresh.
//!
//! The price is that a certificate which expires is reported at most [`REMEMBER_FOR`] late.

use rustls::pki_types::{CertificateDer, UnixTime};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// How long a verified chain is trusted without walking it again.
pub const REMEMBER_FOR: Duration = Duration::from_secs(300);
/// Chains remembered at most (a few per destination); the oldest goes first.
const MAX_CHAINS: usize = 64;

/// The chains verified recently, shared by every probe of one agent.
#[derive(Debug, Default)]
pub struct VerifiedChains {
    chains: Mutex<HashMap<ChainKey, u64>>,
}

/// A server name and its chain's DER, each certificate length-prefixed so that no two chains
/// encode alike.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ChainKey {
    name: String,
    der: Vec<u8>,
}

impl ChainKey {
    fn of(
        name: &str,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Self {
        let mut der = Vec::new();
        for cert in std::iter::once(end_entity).chain(intermediates) {
            der.extend_from_slice(&(cert.len() as u64).to_be_bytes());
            der.extend_from_slice(cert);
        }
        ChainKey {
            name: name.to_string(),
            der,
        }
    }
}

impl VerifiedChains {
    /// Whether this exact chain verified for `name` within [`REMEMBER_FOR`] of `now`.
    pub fn recently_verified(
        &self,
        name: &str,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> bool {
        let Ok(chains) = self.chains.lock() else {
            return false;
        };
        let key = ChainKey::of(name, end_entity, intermediates);
        chains
            .get(&key)
            .is_some_and(|&at| now.as_secs() >= at && now.as_secs() - at < REMEMBER_FOR.as_secs())
    }

    /// Remembers a chain that just verified for `name`.
    pub fn verified(
        &self,
        name: &str,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) {
        let Ok(mut chains) = self.chains.lock() else {
            return;
        };
        let horizon = now.as_secs().saturating_sub(REMEMBER_FOR.as_secs());
        chains.retain(|_, at| *at > horizon);
        if chains.len() >= MAX_CHAINS {
            if let Some(oldest) = chains
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(k, _)| k.clone())
            {
                chains.remove(&oldest);
            }
        }
        chains.insert(ChainKey::of(name, end_entity, intermediates), now.as_secs());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> UnixTime {
        UnixTime::since_unix_epoch(Duration::from_secs(secs))
    }

    #[test]
    fn the_same_chain_for_the_same_name_is_remembered_for_a_while() {
        let cache = VerifiedChains::default();
        let leaf = CertificateDer::from(vec![1u8, 2, 3]);
        let mid = [CertificateDer::from(vec![4u8, 5])];
        assert!(!cache.recently_verified("mx.example", &leaf, &mid, at(1000)));
        cache.verified("mx.example", &leaf, &mid, at(1000));
        assert!(cache.recently_verified("mx.example", &leaf, &mid, at(1000 + 299)));
        assert!(!cache.recently_verified("mx.example", &leaf, &mid, at(1000 + 300)));
        // Another name, another chain, the leaf without its intermediate, a clock stepped back.
        assert!(!cache.recently_verified("other.example", &leaf, &mid, at(1001)));
        let forged = CertificateDer::from(vec![1u8, 2, 4]);
        assert!(!cache.recently_verified("mx.example", &forged, &mid, at(1001)));
        assert!(!cache.recently_verified("mx.example", &leaf, &[], at(1001)));
        assert!(!cache.recently_verified("mx.example", &leaf, &mid, at(999)));
    }

    #[test]
    fn chains_that_do_not_encode_alike_are_told_apart() {
        let cache = VerifiedChains::default();
        let a = CertificateDer::from(vec![1u8, 2]);
        let b = [CertificateDer::from(vec![3u8])];
        cache.verified("mx", &a, &b, at(10));
        let joined = CertificateDer::from(vec![1u8, 2, 3]);
        assert!(!cache.recently_verified("mx", &joined, &[], at(11)));
    }

    #[test]
    fn the_cache_stays_bounded() {
        let cache = VerifiedChains::default();
        for i in 0..(MAX_CHAINS as u64 * 2) {
            let leaf = CertificateDer::from(i.to_be_bytes().to_vec());
            cache.verified("mx", &leaf, &[], at(100 + i));
        }
        assert!(cache.chains.lock().unwrap().len() <= MAX_CHAINS);
        let newest = CertificateDer::from((MAX_CHAINS as u64 * 2 - 1).to_be_bytes().to_vec());
        assert!(cache.recently_verified("mx", &newest, &[], at(100 + MAX_CHAINS as u64 * 2)));
    }
}
