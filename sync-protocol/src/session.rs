//! The per-peer sync session: a sans-IO state machine (quinn-proto style).
//!
//! Inputs arrive through `handle_*` (a frame received, the local store changed, time
//! passed); outputs are drained through `poll_*` (the next frame to send, the next timer,
//! events). Time is `now_ms`, a monotonic millisecond count passed in by the caller. There
//! are no sockets, clocks, threads or randomness here, so the simulator and the QUIC driver
//! run exactly this code.
//!
//! Protocol: both sides send `Hello` (protocol version, cluster, node id, version vector).
//! Each side then streams what the other lacks as numbered `Changes` batches — per origin
//! in seq order, at most `window_batches` unacknowledged — and keeps pushing new changes
//! (local writes and changes relayed from other peers) as the store changes. Every batch is
//! answered with an `Ack` carrying the receiver's version vector. `Ping`/`Pong` keep an
//! idle session alive; silence beyond `idle_timeout_ms` closes it. Anything out of order,
//! malformed or refused by the store closes the session with a `Close` frame.

use std::collections::VecDeque;

use edgestore::{ApplyError, ApplyReport, NodeId, VersionVector};
use serde_bytes::ByteBuf;

use crate::frame::{self, CloseCode, ClusterId, Frame, FrameError, PROTOCOL_VERSION};
use crate::store::SyncStore;

/// Tunables of a session. The defaults suit a gateway: small batches, a short window.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Peers of other clusters are refused.
    pub cluster: ClusterId,
    /// Unacknowledged `Changes` batches in flight, at most.
    pub window_batches: u64,
    /// Changes per batch, at most.
    pub batch_changes_max: usize,
    /// Bytes of changes per batch, about (one oversized change still goes alone).
    pub batch_bytes_max: usize,
    /// Send a `Ping` after this long without sending anything.
    pub keepalive_ms: u64,
    /// Close the session after this long without receiving anything.
    pub idle_timeout_ms: u64,
    /// Close the session when a batch stays unacknowledged this long. Pings keep a session
    /// alive, so without this a lost last batch would never be noticed; a new session's
    /// `Hello` resynchronises both sides.
    pub ack_timeout_ms: u64,
}

impl SessionConfig {
    /// Defaults for a cluster.
    pub fn new(cluster: ClusterId) -> SessionConfig {
        SessionConfig {
            cluster,
            window_batches: 4,
            batch_changes_max: 256,
            batch_bytes_max: 1024 * 1024,
            keepalive_ms: 5_000,
            idle_timeout_ms: 15_000,
            ack_timeout_ms: 10_000,
        }
    }
}

/// Why a session ended on this side.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The peer sent bytes that are not a valid frame.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The peer speaks another protocol version.
    #[error("peer speaks protocol version {0}, this node speaks {PROTOCOL_VERSION}")]
    UnsupportedProtocol(u16),
    /// The peer belongs to another cluster.
    #[error("peer belongs to another cluster")]
    WrongCluster,
    /// The peer's `Hello` names another node than the authenticated one.
    #[error("peer claims node id {got}, but authenticated as {expected}")]
    UnexpectedPeer {
        /// The authenticated node id.
        expected: NodeId,
        /// The node id in `Hello`.
        got: NodeId,
    },
    /// A frame arrived that the protocol does not allow at this point.
    #[error("unexpected frame: {0}")]
    UnexpectedFrame(&'static str),
    /// A `Changes` or `Ack` batch number is out of sequence (a replay or reordering).
    #[error("batch {got} out of order (expected {expected})")]
    BatchOutOfOrder {
        /// The batch number expected next.
        expected: u64,
        /// The batch number received.
        got: u64,
    },
    /// The store refused a change the peer sent.
    #[error("peer sent a change that was refused: {0}")]
    ChangeRejected(String),
    /// The local store failed.
    #[error("local storage failure: {0}")]
    Storage(String),
    /// Nothing was received for too long.
    #[error("peer silent for more than {0} ms")]
    Timeout(u64),
    /// A batch stayed unacknowledged for too long.
    #[error("batch {batch} unacknowledged for more than {timeout_ms} ms")]
    AckTimeout {
        /// The oldest unacknowledged batch.
        batch: u64,
        /// The limit.
        timeout_ms: u64,
    },
    /// The peer closed the session.
    #[error("peer closed the session ({code:?}): {reason}")]
    ClosedByPeer {
        /// The peer's code.
        code: CloseCode,
        /// The peer's reason.
        reason: String,
    },
}

impl ProtocolError {
    fn close_code(&self) -> CloseCode {
        match self {
            ProtocolError::ChangeRejected(_) => CloseCode::ChangeRejected,
            ProtocolError::Storage(_) => CloseCode::Internal,
            ProtocolError::Timeout(_) | ProtocolError::AckTimeout { .. } => CloseCode::Timeout,
            ProtocolError::ClosedByPeer { .. } => CloseCode::Shutdown,
            _ => CloseCode::ProtocolError,
        }
    }
}

/// Something the driver should know about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The handshake completed.
    Established {
        /// What the peer held at the handshake.
        peer_vector: VersionVector,
    },
    /// Changes from the peer were applied; the driver tells its other sessions (relay).
    Applied(ApplyReport),
    /// The session ended; `error` is `None` for an orderly local close.
    Closed {
        /// Why, if not an orderly local close.
        error: Option<ProtocolError>,
    },
}

/// Counters of one session, for metrics and the B3 benchmark.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Frames sent.
    pub frames_sent: u64,
    /// Bytes sent (frames, without the length prefix).
    pub bytes_sent: u64,
    /// Frames received.
    pub frames_received: u64,
    /// Bytes received.
    pub bytes_received: u64,
    /// Change envelopes sent.
    pub changes_sent: u64,
    /// Change envelopes received.
    pub changes_received: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitingHello,
    Established,
    /// A `Close` is queued; nothing else will be sent.
    Closing,
    Closed,
}

/// One side of a sync session with one peer.
#[derive(Debug)]
pub struct Session {
    config: SessionConfig,
    local: NodeId,
    peer: NodeId,
    state: State,
    outbox: VecDeque<Frame>,
    events: VecDeque<Event>,
    /// What the peer holds once every batch sent so far is applied.
    sent: VersionVector,
    next_batch: u64,
    acked_batch: u64,
    /// When each unacknowledged batch was sent, oldest first.
    unacked_sent_ms: VecDeque<u64>,
    next_receive_batch: u64,
    /// The store may hold something the peer lacks.
    store_changed: bool,
    last_sent_ms: u64,
    last_received_ms: u64,
    ping_nonce: u64,
    stats: SessionStats,
}

impl Session {
    /// Starts a session with `peer` (already authenticated by the transport), queueing our
    /// `Hello` with `vector`, the store's current version vector.
    pub fn new(config: SessionConfig, local: NodeId, peer: NodeId, vector: &VersionVector, now_ms: u64) -> Session {
        let hello = Frame::Hello {
            protocol: PROTOCOL_VERSION,
            cluster: ByteBuf::from(config.cluster.0.to_vec()),
            node: ByteBuf::from(local.as_bytes().to_vec()),
            vector: frame::vector_to_wire(vector),
        };
        Session {
            config,
            local,
            peer,
            state: State::AwaitingHello,
            outbox: VecDeque::from([hello]),
            events: VecDeque::new(),
            sent: VersionVector::new(),
            next_batch: 1,
            acked_batch: 0,
            unacked_sent_ms: VecDeque::new(),
            next_receive_batch: 1,
            store_changed: false,
            last_sent_ms: now_ms,
            last_received_ms: now_ms,
            ping_nonce: 0,
            stats: SessionStats::default(),
        }
    }

    /// The peer's node id.
    pub fn peer(&self) -> NodeId {
        self.peer
    }

    /// Whether the handshake is complete and the session not closing.
    pub fn is_established(&self) -> bool {
        self.state == State::Established
    }

    /// Whether the session has ended and has nothing left to send.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Counters.
    pub fn stats(&self) -> &SessionStats {
        &self.stats
    }

    /// What the peer is known to hold (or will hold once in-flight batches are applied).
    pub fn peer_vector(&self) -> &VersionVector {
        &self.sent
    }

    /// Batches sent and not yet acknowledged.
    pub fn in_flight(&self) -> u64 {
        self.next_batch - 1 - self.acked_batch
    }

    /// The local store changed (a local write, or changes applied from another peer): there
    /// may be something to push.
    pub fn handle_store_changed(&mut self) {
        self.store_changed = true;
    }

    /// A frame arrived from the peer. On error the session is closing: a `Close` frame is
    /// queued and a `Closed` event emitted.
    pub fn handle_frame(&mut self, now_ms: u64, bytes: &[u8], store: &mut dyn SyncStore) -> Result<(), ProtocolError> {
        if matches!(self.state, State::Closing | State::Closed) {
            return Ok(());
        }
        self.last_received_ms = now_ms;
        self.stats.frames_received += 1;
        self.stats.bytes_received += bytes.len() as u64;
        let result = Frame::decode(bytes).map_err(ProtocolError::from).and_then(|f| self.on_frame(f, store));
        if let Err(error) = &result {
            self.fail(error.clone());
        }
        result
    }

    fn on_frame(&mut self, frame: Frame, store: &mut dyn SyncStore) -> Result<(), ProtocolError> {
        match (self.state, frame) {
            (State::AwaitingHello, Frame::Hello { protocol, cluster, node, vector }) => {
                self.on_hello(protocol, &cluster, &node, &vector)
            }
            (State::AwaitingHello, _) => Err(ProtocolError::UnexpectedFrame("a frame before Hello")),
            (_, Frame::Hello { .. }) => Err(ProtocolError::UnexpectedFrame("a second Hello")),
            (_, Frame::Changes { batch, changes }) => self.on_changes(batch, changes, store),
            (_, Frame::Ack { batch, vector }) => self.on_ack(batch, &vector),
            (_, Frame::Ping { nonce }) => {
                self.outbox.push_back(Frame::Pong { nonce });
                Ok(())
            }
            (_, Frame::Pong { .. }) => Ok(()),
            (_, Frame::Close { code, reason }) => {
                self.outbox.clear();
                self.state = State::Closed;
                self.events.push_back(Event::Closed { error: Some(ProtocolError::ClosedByPeer { code, reason }) });
                Ok(())
            }
        }
    }

    fn on_hello(
        &mut self,
        protocol: u16,
        cluster: &[u8],
        node: &[u8],
        vector: &[(ByteBuf, u64)],
    ) -> Result<(), ProtocolError> {
        if protocol != PROTOCOL_VERSION {
            return Err(ProtocolError::UnsupportedProtocol(protocol));
        }
        if cluster != self.config.cluster.0 {
            return Err(ProtocolError::WrongCluster);
        }
        let node = NodeId::from_slice(node).expect("checked by Frame::decode");
        if node != self.peer {
            return Err(ProtocolError::UnexpectedPeer { expected: self.peer, got: node });
        }
        let peer_vector = frame::vector_from_wire(vector)?;
        self.sent = peer_vector.clone();
        self.state = State::Established;
        self.store_changed = true;
        self.events.push_back(Event::Established { peer_vector });
        Ok(())
    }

    fn on_changes(
        &mut self,
        batch: u64,
        changes: Vec<ByteBuf>,
        store: &mut dyn SyncStore,
    ) -> Result<(), ProtocolError> {
        if batch != self.next_receive_batch {
            return Err(ProtocolError::BatchOutOfOrder { expected: self.next_receive_batch, got: batch });
        }
        self.next_receive_batch += 1;
        self.stats.changes_received += changes.len() as u64;
        let changes = changes.into_iter().map(ByteBuf::into_vec).collect();
        let report = store.apply_remote(changes).map_err(|e| match e {
            ApplyError::Storage(e) => ProtocolError::Storage(e.to_string()),
            other => ProtocolError::ChangeRejected(other.to_string()),
        })?;
        let vector = store.version_vector();
        // What we now hold, the peer need not send back to us; and what it sent us, it has.
        self.outbox.push_back(Frame::Ack { batch, vector: frame::vector_to_wire(&vector) });
        if report.applied > 0 {
            self.store_changed = true;
            self.events.push_back(Event::Applied(report));
        }
        Ok(())
    }

    fn on_ack(&mut self, batch: u64, vector: &[(ByteBuf, u64)]) -> Result<(), ProtocolError> {
        if batch != self.acked_batch + 1 || batch >= self.next_batch {
            return Err(ProtocolError::BatchOutOfOrder { expected: self.acked_batch + 1, got: batch });
        }
        self.acked_batch = batch;
        self.unacked_sent_ms.pop_front();
        let vector = frame::vector_from_wire(vector)?;
        for (origin, seq) in vector.iter() {
            if seq > self.sent.seq(origin) {
                self.sent.set(origin, seq);
            }
        }
        self.store_changed = true;
        Ok(())
    }

    /// Time passed: closes the session if the peer has been silent too long or a batch
    /// has gone unacknowledged too long.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        if !matches!(self.state, State::AwaitingHello | State::Established) {
            return;
        }
        if now_ms.saturating_sub(self.last_received_ms) >= self.config.idle_timeout_ms {
            self.fail(ProtocolError::Timeout(self.config.idle_timeout_ms));
        } else if self.unacked_sent_ms.front().is_some_and(|&t| now_ms.saturating_sub(t) >= self.config.ack_timeout_ms)
        {
            let (batch, timeout_ms) = (self.acked_batch + 1, self.config.ack_timeout_ms);
            self.fail(ProtocolError::AckTimeout { batch, timeout_ms });
        }
    }

    /// Ends the session in an orderly way (shutdown).
    pub fn close(&mut self, reason: &str) {
        if matches!(self.state, State::Closing | State::Closed) {
            return;
        }
        self.outbox.clear();
        self.outbox.push_back(Frame::Close { code: CloseCode::Shutdown, reason: reason.to_string() });
        self.state = State::Closing;
        self.events.push_back(Event::Closed { error: None });
    }

    fn fail(&mut self, error: ProtocolError) {
        self.outbox.clear();
        let mut reason = error.to_string();
        reason.truncate(frame::REASON_BYTES_MAX);
        if !matches!(error, ProtocolError::ClosedByPeer { .. }) {
            self.outbox.push_back(Frame::Close { code: error.close_code(), reason });
        }
        self.state = if self.outbox.is_empty() { State::Closed } else { State::Closing };
        tracing::debug!(local = %self.local, peer = %self.peer, %error, "sync session closing");
        self.events.push_back(Event::Closed { error: Some(error) });
    }

    /// The next frame to send, if any: queued control frames first, then a batch of changes
    /// the peer lacks (within the window), then a keepalive.
    #[must_use]
    pub fn poll_transmit(&mut self, now_ms: u64, store: &dyn SyncStore) -> Option<Vec<u8>> {
        let frame = self.next_frame(now_ms, store)?;
        if let Frame::Changes { changes, .. } = &frame {
            self.stats.changes_sent += changes.len() as u64;
            self.unacked_sent_ms.push_back(now_ms);
        }
        if matches!(frame, Frame::Close { .. }) {
            self.state = State::Closed;
        }
        let bytes = frame.encode();
        self.last_sent_ms = now_ms;
        self.stats.frames_sent += 1;
        self.stats.bytes_sent += bytes.len() as u64;
        Some(bytes)
    }

    fn next_frame(&mut self, now_ms: u64, store: &dyn SyncStore) -> Option<Frame> {
        if let Some(frame) = self.outbox.pop_front() {
            return Some(frame);
        }
        if self.state != State::Established {
            return None;
        }
        if self.store_changed && self.in_flight() < self.config.window_batches {
            match store.changes_since(&self.sent, self.config.batch_changes_max, self.config.batch_bytes_max) {
                Ok(batch) if batch.changes.is_empty() => self.store_changed = false,
                Ok(batch) => {
                    self.store_changed = !batch.complete;
                    self.sent = batch.covered;
                    let number = self.next_batch;
                    self.next_batch += 1;
                    let changes = batch.changes.into_iter().map(ByteBuf::from).collect();
                    return Some(Frame::Changes { batch: number, changes });
                }
                Err(e) => {
                    self.fail(ProtocolError::Storage(e.to_string()));
                    return self.outbox.pop_front();
                }
            }
        }
        if now_ms.saturating_sub(self.last_sent_ms) >= self.config.keepalive_ms {
            self.ping_nonce += 1;
            return Some(Frame::Ping { nonce: self.ping_nonce });
        }
        None
    }

    /// When `handle_timeout` should next be called (and a keepalive may be due).
    #[must_use]
    pub fn poll_timeout(&self) -> Option<u64> {
        match self.state {
            State::AwaitingHello | State::Established => {
                let keepalive = self.last_sent_ms + self.config.keepalive_ms;
                let idle = self.last_received_ms + self.config.idle_timeout_ms;
                let ack = self.unacked_sent_ms.front().map_or(u64::MAX, |t| t + self.config.ack_timeout_ms);
                Some(keepalive.min(idle).min(ack))
            }
            State::Closing | State::Closed => None,
        }
    }

    /// The next event for the driver.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }
}
