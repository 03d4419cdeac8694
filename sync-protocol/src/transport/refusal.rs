//! Refused peers: why a peer was refused (read from a TLS alert or from the session's
//! handshake error), and a log that says so once per backoff step instead of once per
//! attempt.
//!
//! A refused peer keeps trying: the dialer backs off exponentially, but the accepting side
//! cannot slow a peer down, only refuse it again. So the accepting side logs a source's
//! refusals at its 1st, 2nd, 4th, 8th… attempt — the same cadence as the dialer's doubling
//! delay — and counts every one per reason.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Mutex;

use edgestore::NodeId;

use crate::session::ProtocolError;

/// Sources (remote addresses or node ids) whose refusals the accepting side tracks, at most;
/// past it the table starts over (a flood of sources then logs again, still bounded).
const REFUSAL_SOURCES_MAX: usize = 1024;

/// TLS alert `access_denied` (RFC 8446 § 6.2): the verifier's answer for a node id that is
/// not on the allow-list (`CertificateError::ApplicationVerificationFailure` in rustls).
const ALERT_ACCESS_DENIED: u8 = 49;
/// TLS alerts about the certificate itself: bad_certificate through unknown_ca, then
/// decode_error and decrypt_error (an unreadable certificate, a bad signature).
const ALERTS_BAD_CERTIFICATE: [u8; 8] = [42, 43, 44, 45, 46, 48, 50, 51];
/// QUIC carries TLS alerts as transport error codes `0x100 + alert` (RFC 9001 § 4.8).
const QUIC_CRYPTO_ERROR_BASE: u64 = 0x100;

/// Why a peer was refused: the `reason` label of `edgestore_sync_peers_refused_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum RefusalReason {
    /// A node id not on the allow-list: the peer is not on ours, or we are not on theirs.
    NotAllowed,
    /// The peer's `Hello` names another cluster.
    ClusterMismatch,
    /// The peer's certificate is unreadable, badly signed, or proves another node id than
    /// the one dialled (or its `Hello` names another node than its certificate).
    BadCertificate,
    /// The peer speaks another protocol version.
    ProtocolVersion,
    /// The TLS handshake failed for another reason (no common ALPN, an internal error).
    Handshake,
}

impl RefusalReason {
    /// Every reason, in label order, so that metrics show zeroes too.
    pub const ALL: [RefusalReason; 5] = [
        RefusalReason::BadCertificate,
        RefusalReason::ClusterMismatch,
        RefusalReason::Handshake,
        RefusalReason::NotAllowed,
        RefusalReason::ProtocolVersion,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            RefusalReason::NotAllowed => "not_allowed",
            RefusalReason::ClusterMismatch => "cluster_mismatch",
            RefusalReason::BadCertificate => "bad_certificate",
            RefusalReason::ProtocolVersion => "protocol_version",
            RefusalReason::Handshake => "handshake",
        }
    }

    /// The refusal a failed or closed QUIC connection shows, if it is one: a TLS alert,
    /// sent by either side during the handshake.
    pub fn of_connection_error(error: &quinn::ConnectionError) -> Option<RefusalReason> {
        let code = match error {
            quinn::ConnectionError::TransportError(error) => error.code,
            quinn::ConnectionError::ConnectionClosed(close) => close.error_code,
            _ => return None,
        };
        let alert = u64::from(code).checked_sub(QUIC_CRYPTO_ERROR_BASE).filter(|&a| a <= 0xff)? as u8;
        Some(match alert {
            ALERT_ACCESS_DENIED => RefusalReason::NotAllowed,
            a if ALERTS_BAD_CERTIFICATE.contains(&a) => RefusalReason::BadCertificate,
            _ => RefusalReason::Handshake,
        })
    }

    /// The refusal a session's handshake error is, if it is one (a peer that is allowed
    /// but can never sync with this node, as opposed to one that broke the protocol).
    pub fn of_protocol_error(error: &ProtocolError) -> Option<RefusalReason> {
        match error {
            ProtocolError::WrongCluster { .. } => Some(RefusalReason::ClusterMismatch),
            ProtocolError::UnsupportedProtocol(_) => Some(RefusalReason::ProtocolVersion),
            ProtocolError::UnexpectedPeer { .. } => Some(RefusalReason::BadCertificate),
            _ => None,
        }
    }
}

impl fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// A refused peer: the reason it is counted under, and the error that showed it.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{cause}")]
#[non_exhaustive]
pub struct Refusal {
    /// The reason, as counted.
    pub reason: RefusalReason,
    /// What showed it.
    pub cause: RefusalCause,
}

/// What showed that a peer is refused.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RefusalCause {
    /// The QUIC connection failed or closed with a TLS alert, sent by either side.
    #[error(transparent)]
    Connection(quinn::ConnectionError),
    /// The session's handshake refused the peer: another cluster or protocol version, or
    /// a `Hello` naming another node than the certificate.
    #[error(transparent)]
    Session(ProtocolError),
    /// The certificate at the dialled address proves another node than the one dialled,
    /// or none.
    #[error("the certificate at {addr} proves {}, not {expected}", proved(.proves))]
    WrongNode {
        /// The address dialled.
        addr: SocketAddr,
        /// The node the certificate proves, if any.
        proves: Option<NodeId>,
        /// The node dialled.
        expected: NodeId,
    },
}

fn proved(proves: &Option<NodeId>) -> String {
    proves.map_or_else(|| "no node".to_string(), |id| format!("node {id}"))
}

impl Refusal {
    /// The refusal a failed or closed QUIC connection shows, if it is one.
    pub fn of_connection_error(error: &quinn::ConnectionError) -> Option<Refusal> {
        let reason = RefusalReason::of_connection_error(error)?;
        Some(Refusal { reason, cause: RefusalCause::Connection(error.clone()) })
    }

    /// The refusal a session's handshake error is, if it is one.
    pub fn of_protocol_error(error: &ProtocolError) -> Option<Refusal> {
        let reason = RefusalReason::of_protocol_error(error)?;
        Some(Refusal { reason, cause: RefusalCause::Session(error.clone()) })
    }

    /// A dialled address whose certificate proves `proves` instead of `expected`.
    pub fn wrong_node(addr: SocketAddr, proves: Option<NodeId>, expected: NodeId) -> Refusal {
        Refusal { reason: RefusalReason::BadCertificate, cause: RefusalCause::WrongNode { addr, proves, expected } }
    }
}

/// Refusal counters per reason, and the accepting side's per-source log cadence.
#[derive(Debug, Default)]
pub(crate) struct Refusals {
    counts: Mutex<BTreeMap<RefusalReason, u64>>,
    sources: Mutex<BTreeMap<String, u64>>,
}

impl Refusals {
    /// Counts one refusal.
    pub(crate) fn count(&self, reason: RefusalReason) {
        *self.counts.lock().expect("refusal counters poisoned").entry(reason).or_default() += 1;
    }

    /// Every reason with its count (zero included).
    pub(crate) fn counts(&self) -> BTreeMap<RefusalReason, u64> {
        let counts = self.counts.lock().expect("refusal counters poisoned");
        RefusalReason::ALL.iter().map(|&r| (r, counts.get(&r).copied().unwrap_or(0))).collect()
    }

    /// Counts a refusal of an incoming connection from `source` and logs it at the
    /// source's 1st, 2nd, 4th, 8th… refusal (once per doubling, as the dialer backs off).
    pub(crate) fn refused_incoming(&self, source: &str, refusal: &Refusal) {
        let reason = refusal.reason;
        self.count(reason);
        let attempts = {
            let mut sources = self.sources.lock().expect("refusal sources poisoned");
            if sources.len() >= REFUSAL_SOURCES_MAX && !sources.contains_key(source) {
                sources.clear();
            }
            let attempts = sources.entry(source.to_string()).or_default();
            *attempts += 1;
            *attempts
        };
        if attempts.is_power_of_two() {
            tracing::warn!(
                %source,
                reason = reason.label(),
                attempts,
                "refused an incoming sync peer: {refusal} (logged again at {} attempts)",
                attempts * 2
            );
        }
    }
}
