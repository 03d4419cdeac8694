//! The QUIC transport: a thin async driver around [`crate::Session`] on quinn.
//!
//! - [`tls`]: TLS 1.3 with mutual authentication against the allow-list.
//! - [`node`]: [`SyncNode`]: the endpoint, the accept and dial loops, one session per peer.
//! - [`fault`]: a socket wrapper that drops all traffic on demand, for partition tests, and
//!   counts what arrives ([`datagrams`]).
//! - [`refusal`]: why a peer was refused, and logging that once per backoff step.

mod datagrams;
pub mod fault;
pub mod node;
pub mod refusal;
pub mod tls;

pub use fault::{FaultSwitch, FaultySocket};
pub use node::{
    DialAttempt, DialOutcome, DriveError, NodeCounters, PeerError, PeerStatus, ReadError, SyncNode, SyncNodeConfig,
    TransportError,
};
pub use refusal::{Refusal, RefusalCause, RefusalReason};
pub use tls::{AllowList, TlsIdentity};
