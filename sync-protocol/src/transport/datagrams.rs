//! Counting what arrives at the sync port: datagrams received, those that cannot be QUIC
//! for this endpoint, and QUIC Initial packets (new handshakes).
//!
//! quinn drops garbage silently and its `EndpointStats` count only handshakes, so a flood
//! of UDP garbage or of fake Initials would show in no metric. The socket wrapper
//! ([`super::FaultySocket`]) classifies each received datagram by its first packet's header,
//! the way quinn routes it: a long header must name QUIC version 1 (or be a version
//! negotiation) with a connection id of at most 20 bytes; a short header must carry a
//! connection id this endpoint issued. The endpoint issues keyed connection ids
//! (quinn-proto's `HashedConnectionIdGenerator` with a key shared with this classifier), so
//! a short-header datagram for no connection of ours is recognised without any lookup.
//! Fake Initials that fail decryption pass this check; they show as Initial datagrams far
//! above the handshakes quinn accepted.

use std::sync::atomic::{AtomicU64, Ordering};

use quinn_proto::{ConnectionId, ConnectionIdGenerator, HashedConnectionIdGenerator};

/// QUIC version 1 (RFC 9000), the only version the endpoint speaks.
const QUIC_VERSION_1: u32 = 1;
/// Longest connection id QUIC allows (RFC 9000 § 17.2).
const CONNECTION_ID_BYTES_MAX: usize = 20;
/// Length of the connection ids the endpoint issues (`HashedConnectionIdGenerator`).
const LOCAL_CONNECTION_ID_BYTES: usize = 8;

/// Datagram counters of one endpoint, with the connection-id key they check against.
#[derive(Debug)]
pub(crate) struct DatagramCounters {
    key: u64,
    received: AtomicU64,
    invalid: AtomicU64,
    initial: AtomicU64,
}

/// What the counters show, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct DatagramFigures {
    pub(crate) received: u64,
    pub(crate) invalid: u64,
    pub(crate) initial: u64,
}

impl DatagramCounters {
    /// Counters checking connection ids made with `key`.
    pub(crate) fn new(key: u64) -> DatagramCounters {
        DatagramCounters { key, received: AtomicU64::new(0), invalid: AtomicU64::new(0), initial: AtomicU64::new(0) }
    }

    /// The connection-id generator the endpoint must use, so that `record` recognises its ids.
    pub(crate) fn cid_generator(&self) -> HashedConnectionIdGenerator {
        HashedConnectionIdGenerator::from_key(self.key)
    }

    /// Counts one received datagram.
    pub(crate) fn record(&self, datagram: &[u8]) {
        self.received.fetch_add(1, Ordering::Relaxed);
        match self.classify(datagram) {
            Kind::Invalid => self.invalid.fetch_add(1, Ordering::Relaxed),
            Kind::Initial => self.initial.fetch_add(1, Ordering::Relaxed),
            Kind::Other => 0,
        };
    }

    pub(crate) fn figures(&self) -> DatagramFigures {
        DatagramFigures {
            received: self.received.load(Ordering::Relaxed),
            invalid: self.invalid.load(Ordering::Relaxed),
            initial: self.initial.load(Ordering::Relaxed),
        }
    }

    fn classify(&self, datagram: &[u8]) -> Kind {
        let Some(&first) = datagram.first() else { return Kind::Invalid };
        if first & 0x80 != 0 {
            // Long header: flags, version u32, DCID length, DCID, SCID length, SCID, ...
            let (Some(version), Some(&dcid_len)) = (datagram.get(1..5), datagram.get(5)) else {
                return Kind::Invalid;
            };
            let version = u32::from_be_bytes(version.try_into().expect("four bytes"));
            if dcid_len as usize > CONNECTION_ID_BYTES_MAX || datagram.len() < 7 + dcid_len as usize {
                return Kind::Invalid;
            }
            return match version {
                0 => Kind::Other, // version negotiation
                QUIC_VERSION_1 if (first >> 4) & 0x03 == 0 => Kind::Initial,
                QUIC_VERSION_1 => Kind::Other,
                _ => Kind::Invalid,
            };
        }
        // Short header: flags, then one of our connection ids.
        match datagram.get(1..1 + LOCAL_CONNECTION_ID_BYTES) {
            Some(cid) if self.cid_generator().validate(&ConnectionId::new(cid)).is_ok() => Kind::Other,
            _ => Kind::Invalid,
        }
    }
}

enum Kind {
    Invalid,
    Initial,
    Other,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_and_foreign_connection_ids_are_invalid_and_ours_are_not() {
        let counters = DatagramCounters::new(0x5eed);
        let ours = counters.cid_generator().generate_cid();
        let mut short = vec![0x40];
        short.extend_from_slice(&ours);
        short.extend_from_slice(&[0; 24]);
        let foreign = [0x40, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0, 0, 0, 0];
        let mut initial = vec![0xc0, 0, 0, 0, 1, 8];
        initial.extend_from_slice(&[9; 8]);
        initial.extend_from_slice(&[0; 1200]);
        let mut unknown_version = initial.clone();
        unknown_version[1..5].copy_from_slice(&0x0a1a_2a3au32.to_be_bytes());
        for datagram in [&short[..], &foreign[..], &initial[..], &unknown_version[..], &[][..], &[0xde, 0xad][..]] {
            counters.record(datagram);
        }
        assert_eq!(counters.figures(), DatagramFigures { received: 6, invalid: 4, initial: 1 });
    }
}
