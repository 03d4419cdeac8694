//! The edgestore peer protocol.
//!
//! - [`frame`]: versioned wire frames, capped before decoding.
//! - [`codec`]: the one module that knows CBOR (serde_cbor).
//! - [`session`]: the sans-IO per-peer state machine: handshake, delta streaming with flow
//!   control, live push and relay, acknowledgements, keepalive, timeouts, and anti-entropy
//!   (a blake3 digest tree over document heads) as the backstop.
//! - [`backoff`]: reconnect backoff.
//! - [`store`]: the store operations a session uses.
//!
//! It depends on `edgestore`, never the reverse. The QUIC transport (quinn) is a thin
//! driver around [`session::Session`] in [`transport`].

pub mod backoff;
pub mod codec;
pub mod frame;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod session;
pub mod store;

pub use backoff::Backoff;
pub use frame::{CloseCode, ClusterId, Frame, FrameError};
pub use session::{
    Event, ProtocolError, Session, SessionConfig, SessionStats, TransferEvent, TransferRole, TransferStatus,
};
pub use store::SyncStore;
pub mod transport;
