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
//!
//! Anti-entropy (a backstop: the version vectors are exact, so it finds only documents
//! that lost changes their log holds, or hold changes no log has): every
//! `anti_entropy_interval_ms`, in the slot of a keepalive, a quiescent session sends
//! `Digests` with the root of its heads tree instead of a `Ping`. The receiver answers a
//! differing range with its digests of the 16 children, and a small or leaf range with
//! `Heads`; `Heads` is answered with `Repair` (the automerge changes the sender lacks) and,
//! once, with `Heads` back. Every step compares only when both sides hold the same
//! version vector, and each step's work is bounded by the frame limits.
//!
//! State transfer (`docs/design.md` § "State transfer"): when the peer's vector is below
//! this side's log floor, this side (the donor) sends `TransferOffer` instead of `Changes`;
//! the receiver asks for the documents after its persisted cursor (`TransferRequest`), the
//! donor streams `TransferBatch`es (at most `window_batches` unacknowledged), the receiver
//! imports each durably and answers `TransferAck`, the last one with its installed vector,
//! from which the donor's ordinary streaming continues.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use edgestore::handle::{Stopped, StoreHealth};
use edgestore::{
    ApplyError, ApplyReport, DocHeads, HeldClaim, NodeId, RepairReport, StorageError, TransferBatch, VersionVector,
};
use serde_bytes::ByteBuf;

use crate::frame::{
    self, CloseCode, ClusterId, Frame, FrameError, HeldEntry, ParsedFrame, ParsedRange, TreeRange, DIGEST_RANGES_MAX,
    HEADS_DOCS_MAX, HOLDERS_ENTRIES_MAX, PROTOCOL_VERSION,
};
use crate::store::SyncStore;

/// A state transfer logs an INFO line every this many batches (and at its end).
pub const TRANSFER_LOG_EVERY_BATCHES: u64 = 64;

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
    /// Start an anti-entropy round (a root digest in place of a keepalive) at most this
    /// often; `u64::MAX` disables it.
    pub anti_entropy_interval_ms: u64,
    /// A differing range with at most this many documents on both sides together is
    /// compared document by document (`Heads`) instead of descending further.
    pub anti_entropy_leaf_docs: u64,
    /// Most `Heads` frames sent in answer to one `Digests` frame (bounded work per step;
    /// ranges left out are found by a later round).
    pub anti_entropy_heads_per_step: usize,
    /// After a round this side started found divergence, start the next round this long
    /// after the last anti-entropy frame received (bounded work per round, so a large
    /// divergence takes several rounds).
    pub anti_entropy_followup_ms: u64,
    /// Most follow-up rounds per interval.
    pub anti_entropy_followups_max: u32,
    /// `Holders` frames (held vectors that grew) go out at most this often.
    pub holders_interval_ms: u64,
    /// Every held vector is sent again this often, so the peer keeps hearing of members
    /// that are alive but idle.
    pub holders_refresh_ms: u64,
    /// A peer heard from (any frame) is noted in the store at most this often.
    pub heard_note_ms: u64,
    /// How long a session receiving a state transfer holds the store's one receiving
    /// slot after its last batch; an offer from another peer meanwhile waits.
    pub transfer_claim_lease_ms: u64,
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
            anti_entropy_interval_ms: 60_000,
            anti_entropy_leaf_docs: 64,
            anti_entropy_heads_per_step: 16,
            anti_entropy_followup_ms: 200,
            anti_entropy_followups_max: 64,
            holders_interval_ms: 1_000,
            holders_refresh_ms: 3_600_000,
            heard_note_ms: 10_000,
            transfer_claim_lease_ms: 20_000,
        }
    }
}

/// Why a session ended on this side. The store's errors are kept whole (in an `Arc`: they
/// are not `Clone`, and an error is both returned and reported in `Event::Closed`).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The peer sent bytes that are not a valid frame.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The peer speaks another protocol version.
    #[error("peer speaks protocol version {0}, this node speaks {PROTOCOL_VERSION}")]
    UnsupportedProtocol(u16),
    /// The peer belongs to another cluster.
    #[error("cluster mismatch: theirs {theirs}, ours {ours}")]
    WrongCluster {
        /// The cluster the peer's `Hello` names.
        theirs: ClusterId,
        /// This node's cluster.
        ours: ClusterId,
    },
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
    /// The store refused a change (or a repair or transfer batch) the peer sent; nothing
    /// of it was applied.
    #[error("peer sent a change that was refused: {0}")]
    ChangeRejected(Arc<ApplyError>),
    /// The local store failed.
    #[error("local storage failure: {0}")]
    Storage(Arc<StorageError>),
    /// The replica's owner thread refused a call while the store was closed for recovery
    /// (the driver's case: `ReplicaHandle::call` answered `Stopped` and the health is not
    /// `Ok`).
    #[error("local storage failure: {} ({health:?})", Stopped)]
    StoreUnavailable {
        /// The store's health when the call was refused.
        health: StoreHealth,
    },
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
    /// Whether the failure is this node's own (its store failed), not the peer's doing:
    /// such a session is not counted against the peer.
    pub fn is_local(&self) -> bool {
        matches!(self, ProtocolError::Storage(_) | ProtocolError::StoreUnavailable { .. })
    }

    fn close_code(&self) -> CloseCode {
        match self {
            ProtocolError::ChangeRejected(_) => CloseCode::ChangeRejected,
            ProtocolError::Storage(_) | ProtocolError::StoreUnavailable { .. } => CloseCode::Internal,
            ProtocolError::Timeout(_) | ProtocolError::AckTimeout { .. } => CloseCode::Timeout,
            ProtocolError::ClosedByPeer { .. } => CloseCode::Shutdown,
            _ => CloseCode::ProtocolError,
        }
    }
}

impl From<StorageError> for ProtocolError {
    fn from(error: StorageError) -> ProtocolError {
        ProtocolError::Storage(Arc::new(error))
    }
}

impl From<ApplyError> for ProtocolError {
    /// A refused batch is the peer's doing, unless the store itself failed.
    fn from(error: ApplyError) -> ProtocolError {
        match error {
            ApplyError::Storage(error) => ProtocolError::from(error),
            other => ProtocolError::ChangeRejected(Arc::new(other)),
        }
    }
}

/// Something the driver should know about.
#[derive(Debug, Clone)]
pub enum Event {
    /// The handshake completed.
    Established {
        /// What the peer held at the handshake.
        peer_vector: VersionVector,
    },
    /// Changes from the peer were applied; the driver tells its other sessions (relay).
    Applied(ApplyReport),
    /// Anti-entropy merged automerge changes from the peer into documents that lacked them.
    Repaired(RepairReport),
    /// What some member is known to hold grew (or a member was added): the driver tells
    /// its other sessions, which forward it.
    HoldersGrew,
    /// A state-transfer batch was sent (donor) or imported (receiver).
    Transfer(TransferEvent),
    /// The session ended; `error` is `None` for an orderly local close.
    Closed {
        /// Why, if not an orderly local close.
        error: Option<ProtocolError>,
    },
}

/// This side's part in a state transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferRole {
    /// Sends its documents.
    Donor,
    /// Receives documents and installs the donor's vector at the end.
    Receiver,
}

/// One state-transfer batch sent or imported, with the transfer's running totals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferEvent {
    /// This side's role.
    pub role: TransferRole,
    /// Documents in this batch.
    pub docs: u64,
    /// Document bytes (keys, snapshots, tails) in this batch.
    pub bytes: u64,
    /// Batches of this transfer so far (for a receiver: since the transfer first began,
    /// across resumes).
    pub batches: u64,
    /// Documents of this transfer so far (likewise).
    pub total_docs: u64,
    /// The transfer ended with this batch (receiver: the vector is installed; donor: the
    /// receiver acknowledged the last batch).
    pub done: bool,
}

/// A state transfer in progress on this session, for status displays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferStatus {
    /// This side's role.
    pub role: TransferRole,
    /// Batches so far (receiver: across resumes).
    pub batches: u64,
    /// Documents so far (receiver: across resumes).
    pub docs: u64,
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
    /// Anti-entropy rounds this side started (root digests sent).
    pub anti_entropy_rounds: u64,
    /// Anti-entropy frames sent (`Digests`, `Heads`, `Repair`), root probes included.
    pub anti_entropy_frames_sent: u64,
    /// Anti-entropy bytes sent.
    pub anti_entropy_bytes_sent: u64,
    /// Documents repaired from the peer's `Repair` frames.
    pub docs_repaired: u64,
    /// State-transfer documents sent (donor).
    pub transfer_docs_sent: u64,
    /// State-transfer document bytes sent (donor).
    pub transfer_bytes_sent: u64,
    /// State-transfer documents imported (receiver).
    pub transfer_docs_received: u64,
    /// State-transfer document bytes imported (receiver).
    pub transfer_bytes_received: u64,
    /// State transfers this side completed as the receiver (vector installed).
    pub transfers_completed: u64,
}

impl SessionStats {
    /// Adds `other`'s counters to these (totals over several sessions). The destructuring
    /// names every field, so a new counter cannot be left out of the sum.
    pub fn add(&mut self, other: &SessionStats) {
        let SessionStats {
            frames_sent,
            bytes_sent,
            frames_received,
            bytes_received,
            changes_sent,
            changes_received,
            anti_entropy_rounds,
            anti_entropy_frames_sent,
            anti_entropy_bytes_sent,
            docs_repaired,
            transfer_docs_sent,
            transfer_bytes_sent,
            transfer_docs_received,
            transfer_bytes_received,
            transfers_completed,
        } = other;
        self.frames_sent += frames_sent;
        self.bytes_sent += bytes_sent;
        self.frames_received += frames_received;
        self.bytes_received += bytes_received;
        self.changes_sent += changes_sent;
        self.changes_received += changes_received;
        self.anti_entropy_rounds += anti_entropy_rounds;
        self.anti_entropy_frames_sent += anti_entropy_frames_sent;
        self.anti_entropy_bytes_sent += anti_entropy_bytes_sent;
        self.docs_repaired += docs_repaired;
        self.transfer_docs_sent += transfer_docs_sent;
        self.transfer_bytes_sent += transfer_bytes_sent;
        self.transfer_docs_received += transfer_docs_received;
        self.transfer_bytes_received += transfer_bytes_received;
        self.transfers_completed += transfers_completed;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitingHello,
    Established,
    /// A `Close` is queued; nothing else will be sent.
    Closing,
    Closed,
}

/// The donor side of a state transfer: offered, then streaming batches after `cursor`.
#[derive(Debug, Default)]
struct DonorTransfer {
    /// The receiver asked for documents (`TransferRequest`).
    requested: bool,
    /// Last key sent.
    cursor: Vec<u8>,
    /// The batch marked `done` has been sent.
    exported_all: bool,
    next_batch: u64,
    acked_batch: u64,
    /// When each unacknowledged batch was sent, oldest first.
    unacked_sent_ms: VecDeque<u64>,
    docs_sent: u64,
}

impl DonorTransfer {
    fn in_flight(&self) -> u64 {
        self.next_batch - 1 - self.acked_batch
    }
}

/// The receiver side of a state transfer: the next batch number expected.
#[derive(Debug)]
struct ReceiverTransfer {
    next_batch: u64,
    batches: u64,
    docs: u64,
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
    /// When the next anti-entropy round may start.
    anti_entropy_due_ms: u64,
    /// This side has started a round (sent a root digest) at least once in this session;
    /// only then do answers that show divergence arm a follow-up round.
    anti_entropy_started: bool,
    /// A round this side started found divergence: start another at `anti_entropy_due_ms`.
    anti_entropy_followup: bool,
    /// Follow-up rounds since the last periodic one.
    anti_entropy_followups: u32,
    /// Held vectors: the store generation sent up to (`Replica::held_since`).
    holders_generation: u64,
    /// The vector the peer last heard this node holds (`Hello`, `Ack`, `Holders`).
    told_own: VersionVector,
    /// Held vectors may have grown since the last `Holders`.
    holders_due: bool,
    /// The next `Holders` may go out from then on.
    holders_next_ms: u64,
    /// When every held vector is sent again.
    holders_refresh_ms: u64,
    /// When the peer was last noted as heard from in the store.
    heard_noted_ms: u64,
    /// This side is the donor of a state transfer to the peer (no `Changes` meanwhile).
    transfer_out: Option<DonorTransfer>,
    /// This side receives a state transfer from the peer.
    transfer_in: Option<ReceiverTransfer>,
    /// The peer offered a transfer (with this floor) while another peer's transfer held
    /// the store: answered once that one ended (declined if it covered the floor).
    offer_deferred: Option<VersionVector>,
    stats: SessionStats,
}

/// Our version vector's hash if the peer's `vector` hash equals it: anti-entropy compares
/// digests only between nodes holding the same changes.
fn comparable(vector: &[u8; 32], store: &dyn SyncStore) -> Option<[u8; 32]> {
    let ours = frame::vector_hash(&store.version_vector());
    (*vector == ours).then_some(ours)
}

/// `reason` cut to at most `bytes_max` bytes, at a character boundary (a reason can hold
/// text from the peer or the store, and `String::truncate` panics inside a character).
fn truncated(mut reason: String, bytes_max: usize) -> String {
    if reason.len() > bytes_max {
        let end = (0..=bytes_max).rev().find(|&i| reason.is_char_boundary(i)).unwrap_or(0);
        reason.truncate(end);
    }
    reason
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
        let anti_entropy_interval_ms = config.anti_entropy_interval_ms;
        let holders_refresh_ms = config.holders_refresh_ms;
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
            anti_entropy_due_ms: now_ms.saturating_add(anti_entropy_interval_ms),
            anti_entropy_started: false,
            anti_entropy_followup: false,
            anti_entropy_followups: 0,
            holders_generation: 0,
            told_own: vector.clone(),
            holders_due: false,
            holders_next_ms: now_ms,
            holders_refresh_ms: now_ms.saturating_add(holders_refresh_ms),
            heard_noted_ms: now_ms,
            transfer_out: None,
            transfer_in: None,
            offer_deferred: None,
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

    /// Batches sent and not yet acknowledged (`Changes` and `TransferBatch`).
    pub fn in_flight(&self) -> u64 {
        self.next_batch - 1 - self.acked_batch + self.transfer_out.as_ref().map_or(0, DonorTransfer::in_flight)
    }

    /// The state transfer in progress on this session, if any (a receiver's counts include
    /// the batches imported before a resume only once its first batch here arrived).
    pub fn transfer_status(&self) -> Option<TransferStatus> {
        if let Some(t) = &self.transfer_in {
            return Some(TransferStatus { role: TransferRole::Receiver, batches: t.batches, docs: t.docs });
        }
        self.transfer_out.as_ref().map(|t| TransferStatus {
            role: TransferRole::Donor,
            batches: t.next_batch - 1,
            docs: t.docs_sent,
        })
    }

    fn transfer_active(&self) -> bool {
        self.transfer_in.is_some() || self.transfer_out.is_some() || self.offer_deferred.is_some()
    }

    /// The local store changed (a local write, or changes applied from another peer): there
    /// may be something to push.
    pub fn handle_store_changed(&mut self) {
        self.store_changed = true;
        self.holders_due = true;
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
        let result = Frame::parse(bytes).map_err(ProtocolError::from).and_then(|f| {
            let divergence = match &f {
                ParsedFrame::Digests { ranges, .. } => ranges.iter().any(|r| r.range.depth() > 0),
                ParsedFrame::Heads { .. } | ParsedFrame::Repair { .. } => true,
                _ => false,
            };
            if divergence
                && self.anti_entropy_started
                && self.anti_entropy_followups < self.config.anti_entropy_followups_max
            {
                self.anti_entropy_followup = true;
                self.anti_entropy_due_ms = now_ms.saturating_add(self.config.anti_entropy_followup_ms);
            }
            let offered = matches!(f, ParsedFrame::TransferOffer { .. });
            self.on_frame(now_ms, f, store)?;
            // Every frame from the peer (its pings at least) retries a deferred offer.
            if self.offer_deferred.is_some() && !offered && self.state == State::Established {
                self.answer_deferred_offer(store)?;
            }
            self.note_heard(now_ms, store)
        });
        if let Err(error) = &result {
            self.fail(error.clone());
        }
        result
    }

    fn on_frame(&mut self, now_ms: u64, frame: ParsedFrame, store: &mut dyn SyncStore) -> Result<(), ProtocolError> {
        match (self.state, frame) {
            (State::AwaitingHello, ParsedFrame::Hello { protocol, cluster, node, vector }) => {
                self.on_hello(protocol, cluster, node, vector)?;
                // Everything held goes to the peer once after the handshake.
                self.holders_due = true;
                let own = self.sent.clone();
                self.record_held(now_ms, &[HeldClaim { member: self.peer, vector: own, heard_ago_ms: 0 }], store)
            }
            (State::AwaitingHello, _) => Err(ProtocolError::UnexpectedFrame("a frame before Hello")),
            (_, ParsedFrame::Hello { .. }) => Err(ProtocolError::UnexpectedFrame("a second Hello")),
            (_, ParsedFrame::Changes { batch, changes }) => self.on_changes(batch, changes, store),
            (_, ParsedFrame::Ack { batch, vector }) => {
                self.on_ack(batch, &vector)?;
                self.record_held(now_ms, &[HeldClaim { member: self.peer, vector, heard_ago_ms: 0 }], store)
            }
            (_, ParsedFrame::Holders { claims }) => {
                // What the peer says it holds, it need not be sent (as with an `Ack`).
                if let Some(own) = claims.iter().find(|c| c.member == self.peer) {
                    self.raise_sent(&own.vector);
                }
                self.record_held(now_ms, &claims, store)
            }
            (_, ParsedFrame::Ping { nonce }) => {
                self.outbox.push_back(Frame::Pong { nonce });
                Ok(())
            }
            (_, ParsedFrame::Pong { .. }) => Ok(()),
            (_, ParsedFrame::Digests { vector, ranges }) => self.on_digests(&vector, &ranges, store),
            (_, ParsedFrame::Heads { vector, reply, range, docs, complete }) => {
                self.on_heads(&vector, reply, range, docs, complete, store)
            }
            (_, ParsedFrame::Repair { docs }) => self.on_repair(docs, store),
            (_, ParsedFrame::TransferOffer { floor }) => self.on_transfer_offer(floor, store),
            (_, ParsedFrame::TransferRequest { after }) => self.on_transfer_request(after),
            (_, ParsedFrame::TransferBatch { batch, documents }) => self.on_transfer_batch(batch, documents, store),
            (_, ParsedFrame::TransferAck { batch, vector }) => self.on_transfer_ack(batch, vector),
            (_, ParsedFrame::Close { code, reason }) => {
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
        cluster: ClusterId,
        node: NodeId,
        peer_vector: VersionVector,
    ) -> Result<(), ProtocolError> {
        if protocol != PROTOCOL_VERSION {
            return Err(ProtocolError::UnsupportedProtocol(protocol));
        }
        if cluster != self.config.cluster {
            return Err(ProtocolError::WrongCluster { theirs: cluster, ours: self.config.cluster });
        }
        if node != self.peer {
            return Err(ProtocolError::UnexpectedPeer { expected: self.peer, got: node });
        }
        self.sent = peer_vector.clone();
        self.state = State::Established;
        self.store_changed = true;
        self.events.push_back(Event::Established { peer_vector });
        Ok(())
    }

    fn on_changes(
        &mut self,
        batch: u64,
        changes: Vec<Vec<u8>>,
        store: &mut dyn SyncStore,
    ) -> Result<(), ProtocolError> {
        if batch != self.next_receive_batch {
            return Err(ProtocolError::BatchOutOfOrder { expected: self.next_receive_batch, got: batch });
        }
        self.next_receive_batch += 1;
        self.stats.changes_received += changes.len() as u64;
        let report = store.apply_remote(changes)?;
        let vector = store.version_vector();
        // What we now hold, the peer need not send back to us; and what it sent us, it has.
        self.outbox.push_back(Frame::Ack { batch, vector: frame::vector_to_wire(&vector) });
        self.told_own = vector;
        if report.applied > 0 {
            self.store_changed = true;
            self.events.push_back(Event::Applied(report));
        }
        Ok(())
    }

    /// Records what the peer reported holding (or forwarded for other members); a growth
    /// is an event, so the driver has the other sessions forward it.
    fn record_held(
        &mut self,
        now_ms: u64,
        claims: &[HeldClaim],
        store: &mut dyn SyncStore,
    ) -> Result<(), ProtocolError> {
        self.heard_noted_ms = now_ms;
        if store.record_held(self.peer, claims, now_ms)? {
            self.holders_due = true;
            self.events.push_back(Event::HoldersGrew);
        }
        Ok(())
    }

    /// Notes in the store, at most every `heard_note_ms`, that the peer is alive (a peer
    /// with nothing to send or acknowledge is heard through its keepalives).
    fn note_heard(&mut self, now_ms: u64, store: &mut dyn SyncStore) -> Result<(), ProtocolError> {
        if self.state != State::Established || now_ms.saturating_sub(self.heard_noted_ms) < self.config.heard_note_ms {
            return Ok(());
        }
        self.record_held(now_ms, &[], store)
    }

    /// An `Ack`: the peer now holds `vector`.
    fn on_ack(&mut self, batch: u64, vector: &VersionVector) -> Result<(), ProtocolError> {
        if batch != self.acked_batch + 1 || batch >= self.next_batch {
            return Err(ProtocolError::BatchOutOfOrder { expected: self.acked_batch + 1, got: batch });
        }
        self.acked_batch = batch;
        self.unacked_sent_ms.pop_front();
        self.raise_sent(vector);
        Ok(())
    }

    /// The peer holds `vector`: nothing in it needs sending.
    fn raise_sent(&mut self, vector: &VersionVector) {
        for (origin, seq) in vector.iter() {
            if seq > self.sent.seq(origin) {
                self.sent.set(origin, seq);
            }
        }
        self.store_changed = true;
    }

    /// A `Digests` frame: answer each differing range with its children or its documents.
    fn on_digests(
        &mut self,
        vector: &[u8; 32],
        ranges: &[ParsedRange],
        store: &mut dyn SyncStore,
    ) -> Result<(), ProtocolError> {
        let Some(vector_hash) = comparable(vector, store) else {
            return Ok(()); // not comparable yet: delta sync is still moving changes
        };
        let tree = store.heads_tree()?;
        let mut children = Vec::new();
        let mut heads_sent = 0;
        for theirs in ranges {
            let (docs, digest) = theirs.range.read(&tree);
            if docs == theirs.docs && digest == theirs.digest {
                continue;
            }
            let small = docs.saturating_add(theirs.docs) <= self.config.anti_entropy_leaf_docs;
            if theirs.range.is_leaf() || small {
                if heads_sent < self.config.anti_entropy_heads_per_step {
                    heads_sent += 1;
                    self.queue_heads(&vector_hash, false, theirs.range, store)?;
                }
            } else if children.len() + 16 <= DIGEST_RANGES_MAX {
                children.extend(theirs.range.children().map(|child| child.digest_in(&tree)));
            }
        }
        if !children.is_empty() {
            self.outbox.push_back(Frame::Digests { vector: ByteBuf::from(vector_hash.to_vec()), ranges: children });
        }
        Ok(())
    }

    /// Queues a `Heads` frame with this side's documents of a range, within the frame
    /// budget (`complete = false` if cut short).
    fn queue_heads(
        &mut self,
        vector_hash: &[u8; 32],
        reply: bool,
        range: TreeRange,
        store: &dyn SyncStore,
    ) -> Result<(), ProtocolError> {
        let (docs, mut complete) = store.heads_in_range(range.depth(), range.prefix(), HEADS_DOCS_MAX)?;
        let mut wire = Vec::with_capacity(docs.len());
        let mut bytes = 0;
        for doc in docs {
            let heads: Vec<u8> = doc.heads.concat();
            if heads.is_empty() || heads.len() > 32 * frame::DOC_HEADS_MAX {
                continue; // not representable; such a document is left to a later design
            }
            bytes += doc.key.len() + heads.len() + 8;
            if bytes > self.config.batch_bytes_max && !wire.is_empty() {
                complete = false;
                break;
            }
            wire.push((ByteBuf::from(doc.key), ByteBuf::from(heads)));
        }
        let vector = ByteBuf::from(vector_hash.to_vec());
        let (depth, prefix) = (range.depth(), range.prefix());
        self.outbox.push_back(Frame::Heads { vector, reply, depth, prefix, docs: wire, complete });
        Ok(())
    }

    /// A `Heads` frame: send `Repair` with what the peer lacks, and our `Heads` unless this
    /// was the answer to ours.
    fn on_heads(
        &mut self,
        vector: &[u8; 32],
        reply: bool,
        range: TreeRange,
        docs: Vec<DocHeads>,
        complete: bool,
        store: &mut dyn SyncStore,
    ) -> Result<(), ProtocolError> {
        let Some(vector_hash) = comparable(vector, store) else {
            return Ok(());
        };
        let theirs: BTreeMap<Vec<u8>, Vec<[u8; 32]>> = docs.into_iter().map(|d| (d.key, d.heads)).collect();
        let covered_up_to = if complete { None } else { theirs.keys().next_back().cloned() };
        let (mine, _) = store.heads_in_range(range.depth(), range.prefix(), HEADS_DOCS_MAX)?;
        let mut repair = Vec::new();
        let mut repair_bytes = 0;
        for doc in mine {
            if covered_up_to.as_ref().is_some_and(|last| doc.key > *last) {
                break;
            }
            let their_heads = theirs.get(&doc.key);
            if their_heads.is_some_and(|h| *h == doc.heads) {
                continue;
            }
            let changes = store.doc_changes_missing(&doc.key, their_heads.map_or(&[], Vec::as_slice))?;
            let size: usize = changes.iter().map(Vec::len).sum::<usize>() + doc.key.len();
            if changes.is_empty() || size > self.config.batch_bytes_max.max(frame::FRAME_BYTES_MAX / 2) {
                continue; // nothing to send, or a document too large for one frame
            }
            if !repair.is_empty()
                && (repair_bytes + size > self.config.batch_bytes_max || repair.len() >= frame::REPAIR_DOCS_MAX)
            {
                self.outbox.push_back(Frame::Repair { docs: std::mem::take(&mut repair) });
                repair_bytes = 0;
            }
            repair_bytes += size;
            repair.push((ByteBuf::from(doc.key), changes.into_iter().map(ByteBuf::from).collect()));
        }
        if !repair.is_empty() {
            self.outbox.push_back(Frame::Repair { docs: repair });
        }
        if !reply {
            self.queue_heads(&vector_hash, true, range, store)?;
        }
        Ok(())
    }

    /// A `Repair` frame: merge the changes into our documents.
    fn on_repair(&mut self, docs: Vec<frame::RepairDoc>, store: &mut dyn SyncStore) -> Result<(), ProtocolError> {
        let report = store.repair_docs(docs)?;
        if report.docs_repaired > 0 {
            self.stats.docs_repaired += report.docs_repaired as u64;
            self.events.push_back(Event::Repaired(report));
        }
        Ok(())
    }

    /// `TransferOffer`: the peer cannot send us changes by log replay; ask for its
    /// documents after our persisted cursor (a resumed transfer continues where it was).
    fn on_transfer_offer(&mut self, floor: VersionVector, store: &mut dyn SyncStore) -> Result<(), ProtocolError> {
        if self.transfer_in.is_some() || self.offer_deferred.is_some() {
            return Err(ProtocolError::UnexpectedFrame("a TransferOffer during a transfer"));
        }
        self.offer_deferred = Some(floor);
        self.answer_deferred_offer(store)
    }

    /// Answers a deferred offer once possible: declined (with our vector) if we caught up
    /// past its floor meanwhile, accepted if the store's receiving slot is free.
    fn answer_deferred_offer(&mut self, store: &mut dyn SyncStore) -> Result<(), ProtocolError> {
        let Some(floor) = &self.offer_deferred else { return Ok(()) };
        let vector = store.version_vector();
        if floor.iter().all(|(origin, seq)| vector.seq(origin) >= seq) {
            self.offer_deferred = None;
            self.outbox.push_back(Frame::TransferAck { batch: 0, vector: Some(frame::vector_to_wire(&vector)) });
            return Ok(());
        }
        if !store.claim_transfer(self.peer, self.last_received_ms, self.config.transfer_claim_lease_ms) {
            return Ok(()); // another peer's transfer runs; asked again at the next frame
        }
        self.offer_deferred = None;
        let progress = store.transfer_progress()?;
        let (after, batches, docs) =
            progress.map_or((Vec::new(), 0, 0), |p| (p.cursor_for(self.peer), p.batches, p.docs));
        tracing::info!(local = %self.local, peer = %self.peer, resumed_docs = docs, "state transfer: receiving the peer's documents");
        self.outbox.push_back(Frame::TransferRequest { after: ByteBuf::from(after) });
        self.transfer_in = Some(ReceiverTransfer { next_batch: 1, batches, docs });
        Ok(())
    }

    /// `TransferRequest`: start streaming documents after the receiver's cursor.
    fn on_transfer_request(&mut self, after: Vec<u8>) -> Result<(), ProtocolError> {
        match &mut self.transfer_out {
            Some(transfer) if !transfer.requested => {
                transfer.requested = true;
                transfer.cursor = after;
                transfer.next_batch = 1;
                Ok(())
            }
            _ => Err(ProtocolError::UnexpectedFrame("a TransferRequest without an offer")),
        }
    }

    /// `TransferBatch`: import it durably and acknowledge it; the last one installs the
    /// donor's vector, and its acknowledgement carries ours.
    fn on_transfer_batch(
        &mut self,
        batch: u64,
        documents: TransferBatch,
        store: &mut dyn SyncStore,
    ) -> Result<(), ProtocolError> {
        let transfer =
            self.transfer_in.as_mut().ok_or(ProtocolError::UnexpectedFrame("a TransferBatch not requested"))?;
        if batch != transfer.next_batch {
            return Err(ProtocolError::BatchOutOfOrder { expected: transfer.next_batch, got: batch });
        }
        transfer.next_batch += 1;
        let bytes = documents.doc_bytes() as u64;
        // Renews the lease; a holder that lost it (silent past the lease) fails the cursor check.
        store.claim_transfer(self.peer, self.last_received_ms, self.config.transfer_claim_lease_ms);
        let report = store.import_transfer(self.peer, documents)?;
        transfer.batches = report.progress.batches;
        transfer.docs = report.progress.docs;
        self.stats.transfer_docs_received += report.docs as u64;
        self.stats.transfer_bytes_received += bytes;
        let done = report.installed.is_some();
        let vector = report.installed.as_ref().map(frame::vector_to_wire);
        self.outbox.push_back(Frame::TransferAck { batch, vector });
        self.events.push_back(Event::Transfer(TransferEvent {
            role: TransferRole::Receiver,
            docs: report.docs as u64,
            bytes,
            batches: report.progress.batches,
            total_docs: report.progress.docs,
            done,
        }));
        let (batches, total_docs) = (report.progress.batches, report.progress.docs);
        if done || batches % TRANSFER_LOG_EVERY_BATCHES == 0 {
            let (local, peer) = (self.local, self.peer);
            tracing::info!(%local, %peer, batches, docs = total_docs, done, "state transfer: documents imported");
        }
        if done {
            self.transfer_in = None;
            self.stats.transfers_completed += 1;
            // Our vector grew: there may be changes of ours the peer lacks, and the driver
            // tells the other sessions (as after applied changes).
            self.store_changed = true;
            self.events.push_back(Event::Applied(ApplyReport::default()));
        }
        Ok(())
    }

    /// `TransferAck`: the receiver holds the batch; after the last one, streaming resumes
    /// from the vector the receiver installed.
    fn on_transfer_ack(&mut self, batch: u64, vector: Option<VersionVector>) -> Result<(), ProtocolError> {
        if batch == 0 {
            return self.on_transfer_declined(vector);
        }
        let transfer =
            self.transfer_out.as_mut().ok_or(ProtocolError::UnexpectedFrame("a TransferAck without a transfer"))?;
        if batch != transfer.acked_batch + 1 || batch >= transfer.next_batch {
            return Err(ProtocolError::BatchOutOfOrder { expected: transfer.acked_batch + 1, got: batch });
        }
        transfer.acked_batch = batch;
        transfer.unacked_sent_ms.pop_front();
        let last = transfer.exported_all && transfer.in_flight() == 0;
        match (vector, last) {
            (None, false) => Ok(()),
            (Some(vector), true) => {
                for (origin, seq) in vector.iter() {
                    if seq > self.sent.seq(origin) {
                        self.sent.set(origin, seq);
                    }
                }
                let docs = transfer.docs_sent;
                tracing::info!(local = %self.local, peer = %self.peer, docs, batches = batch, "state transfer: peer caught up");
                self.events.push_back(Event::Transfer(TransferEvent {
                    role: TransferRole::Donor,
                    docs: 0,
                    bytes: 0,
                    batches: batch,
                    total_docs: docs,
                    done: true,
                }));
                self.transfer_out = None;
                self.store_changed = true;
                Ok(())
            }
            _ => Err(ProtocolError::UnexpectedFrame("a TransferAck's vector does not match the end of the transfer")),
        }
    }

    /// `TransferAck` for batch 0: the peer declines the offer, having caught up otherwise
    /// (from another donor); streaming continues from its vector.
    fn on_transfer_declined(&mut self, vector: Option<VersionVector>) -> Result<(), ProtocolError> {
        let (Some(vector), Some(DonorTransfer { requested: false, .. })) = (vector, &self.transfer_out) else {
            return Err(ProtocolError::UnexpectedFrame("a declined transfer that was not offered"));
        };
        for (origin, seq) in vector.iter() {
            if seq > self.sent.seq(origin) {
                self.sent.set(origin, seq);
            }
        }
        self.transfer_out = None;
        self.store_changed = true;
        Ok(())
    }

    /// Whether the peer's vector lacks changes this side's log no longer holds.
    fn below_floor(&self, store: &dyn SyncStore) -> bool {
        store.log_floor().iter().any(|(origin, floor)| self.sent.seq(origin) < floor)
    }

    /// The donor's next frame: the offer, or the next batch within the window.
    fn next_transfer_frame(&mut self, now_ms: u64, store: &dyn SyncStore) -> Option<Frame> {
        let window = self.config.window_batches;
        let transfer = self.transfer_out.as_mut()?;
        if !transfer.requested || transfer.exported_all || transfer.in_flight() >= window {
            return None;
        }
        let docs_max = frame::TRANSFER_DOCS_MAX;
        match store.export_transfer(&transfer.cursor, docs_max, self.config.batch_bytes_max) {
            Ok(batch) => {
                let number = transfer.next_batch;
                transfer.next_batch += 1;
                transfer.unacked_sent_ms.push_back(now_ms);
                transfer.cursor = batch.last.clone();
                transfer.exported_all = batch.done;
                transfer.docs_sent += batch.docs.len() as u64;
                self.stats.transfer_docs_sent += batch.docs.len() as u64;
                self.stats.transfer_bytes_sent += batch.doc_bytes() as u64;
                let docs = batch
                    .docs
                    .into_iter()
                    .map(|d| {
                        (
                            ByteBuf::from(d.key),
                            ByteBuf::from(d.snapshot),
                            d.tail.into_iter().map(ByteBuf::from).collect(),
                        )
                    })
                    .collect();
                Some(Frame::TransferBatch {
                    batch: number,
                    vector: frame::vector_to_wire(&batch.vector),
                    after: ByteBuf::from(batch.after),
                    last: ByteBuf::from(batch.last),
                    docs,
                    done: batch.done,
                })
            }
            Err(e) => {
                self.fail(ProtocolError::from(e));
                self.outbox.pop_front()
            }
        }
    }

    /// Time passed: closes the session if the peer has been silent too long or a batch
    /// has gone unacknowledged too long.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        if !matches!(self.state, State::AwaitingHello | State::Established) {
            return;
        }
        if now_ms.saturating_sub(self.last_received_ms) >= self.config.idle_timeout_ms {
            self.fail(ProtocolError::Timeout(self.config.idle_timeout_ms));
        } else if self.oldest_unacked_ms().is_some_and(|t| now_ms.saturating_sub(t) >= self.config.ack_timeout_ms) {
            let (batch, timeout_ms) = (self.acked_batch + 1, self.config.ack_timeout_ms);
            self.fail(ProtocolError::AckTimeout { batch, timeout_ms });
        }
    }

    /// When the oldest unacknowledged batch (`Changes` or `TransferBatch`) was sent.
    fn oldest_unacked_ms(&self) -> Option<u64> {
        let transfer = self.transfer_out.as_ref().and_then(|t| t.unacked_sent_ms.front().copied());
        match (self.unacked_sent_ms.front().copied(), transfer) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
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
        let reason = truncated(error.to_string(), frame::REASON_BYTES_MAX);
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
        if matches!(frame, Frame::TransferBatch { .. }) {
            self.log_transfer_batch();
        }
        if matches!(frame, Frame::Digests { .. } | Frame::Heads { .. } | Frame::Repair { .. }) {
            self.stats.anti_entropy_frames_sent += 1;
            self.stats.anti_entropy_bytes_sent += bytes.len() as u64;
        }
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
        if let Some(floor) = &self.offer_deferred {
            // Caught up past the deferred offer's floor (another transfer ended): decline it.
            let vector = store.version_vector();
            if floor.iter().all(|(origin, seq)| vector.seq(origin) >= seq) {
                self.offer_deferred = None;
                return Some(Frame::TransferAck { batch: 0, vector: Some(frame::vector_to_wire(&vector)) });
            }
        }
        if self.transfer_out.is_some() {
            if let Some(frame) = self.next_transfer_frame(now_ms, store) {
                return Some(frame);
            }
        } else if self.store_changed && self.below_floor(store) {
            // The log cannot fill the peer's gap: offer the documents instead, and stream
            // nothing until the transfer ends.
            self.store_changed = false;
            self.transfer_out = Some(DonorTransfer { next_batch: 1, ..DonorTransfer::default() });
            tracing::info!(local = %self.local, peer = %self.peer, "state transfer: the peer is below the log floor, offering documents");
            return Some(Frame::TransferOffer { floor: frame::vector_to_wire(&store.log_floor()) });
        }
        if self.transfer_out.is_none() && self.store_changed && self.in_flight() < self.config.window_batches {
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
                    self.fail(ProtocolError::from(e));
                    return self.outbox.pop_front();
                }
            }
        }
        if let Some(frame) = self.next_holders(now_ms, store) {
            return Some(frame);
        }
        let keepalive_due = now_ms.saturating_sub(self.last_sent_ms) >= self.config.keepalive_ms;
        let round_due = now_ms >= self.anti_entropy_due_ms && (keepalive_due || self.anti_entropy_followup);
        if round_due && self.in_flight() == 0 && !self.store_changed && !self.transfer_active() {
            // Anti-entropy rides on the keepalive (the root digest instead of a Ping), or
            // follows up a round that found divergence.
            if self.anti_entropy_followup {
                self.anti_entropy_followups += 1;
            } else {
                self.anti_entropy_followups = 0;
            }
            self.anti_entropy_followup = false;
            self.anti_entropy_started = true;
            self.anti_entropy_due_ms = now_ms.saturating_add(self.config.anti_entropy_interval_ms);
            match store.heads_tree() {
                Ok(tree) => {
                    self.stats.anti_entropy_rounds += 1;
                    let vector = ByteBuf::from(frame::vector_hash(&store.version_vector()).to_vec());
                    let root = TreeRange::ROOT.digest_in(&tree);
                    return Some(Frame::Digests { vector, ranges: vec![root] });
                }
                Err(e) => {
                    self.fail(ProtocolError::from(e));
                    return self.outbox.pop_front();
                }
            }
        }
        if keepalive_due {
            self.ping_nonce += 1;
            return Some(Frame::Ping { nonce: self.ping_nonce });
        }
        None
    }

    /// A `Holders` frame, if one is due: this node's own vector if the peer has not heard
    /// it, and the held vectors that grew since the last one (every one, once per
    /// `holders_refresh_ms`), except the peer's own; at most one per `holders_interval_ms`.
    fn next_holders(&mut self, now_ms: u64, store: &dyn SyncStore) -> Option<Frame> {
        if now_ms >= self.holders_refresh_ms {
            self.holders_refresh_ms = now_ms.saturating_add(self.config.holders_refresh_ms);
            self.holders_generation = 0;
            self.told_own = VersionVector::new();
            self.holders_due = true;
        }
        if !self.holders_due || now_ms < self.holders_next_ms {
            return None;
        }
        let own = store.version_vector();
        let mut entries: BTreeMap<NodeId, HeldEntry> = BTreeMap::new();
        if own != self.told_own {
            let claim = HeldClaim { member: self.local, vector: own.clone(), heard_ago_ms: 0 };
            entries.insert(self.local, frame::held_to_wire(&claim));
        }
        // Pages of grown entries until one has something for this peer (or none is left).
        loop {
            let page = store.held_since(self.holders_generation, HOLDERS_ENTRIES_MAX - 1, now_ms);
            for claim in page.claims.iter().filter(|c| c.member != self.peer && c.member != self.local) {
                entries.insert(claim.member, frame::held_to_wire(claim));
            }
            self.holders_generation = page.covered;
            self.holders_due = !page.complete;
            if page.complete || !entries.is_empty() {
                break;
            }
        }
        if entries.is_empty() {
            return None;
        }
        self.told_own = own;
        self.holders_next_ms = now_ms.saturating_add(self.config.holders_interval_ms);
        Some(Frame::Holders { entries: entries.into_values().collect() })
    }

    /// A donor's INFO line every [`TRANSFER_LOG_EVERY_BATCHES`] batches sent.
    fn log_transfer_batch(&self) {
        let Some(transfer) = &self.transfer_out else { return };
        let batches = transfer.next_batch - 1;
        if batches % TRANSFER_LOG_EVERY_BATCHES == 0 {
            let docs = transfer.docs_sent;
            tracing::info!(local = %self.local, peer = %self.peer, batches, docs, "state transfer: sending documents");
        }
    }

    /// When `handle_timeout` should next be called (and a keepalive may be due).
    ///
    /// Rule: every deadline returned here is consumed by `handle_timeout` or
    /// `poll_transmit` at that time — a frame goes out or the session closes, and the next
    /// deadline lies later. A deadline nothing would act on must not be returned, or a
    /// driver wakes at a time already past, finds nothing to do and wakes again (a
    /// livelock: the simulator's clock stops, the QUIC driver spins a core).
    #[must_use]
    pub fn poll_timeout(&self) -> Option<u64> {
        match self.state {
            // Before the peer's `Hello` nothing but the idle timeout can act: a `Ping` is
            // not allowed before the handshake, so there is no keepalive deadline.
            State::AwaitingHello => Some(self.last_received_ms + self.config.idle_timeout_ms),
            State::Established => {
                let keepalive = self.last_sent_ms + self.config.keepalive_ms;
                let idle = self.last_received_ms + self.config.idle_timeout_ms;
                let ack = self.oldest_unacked_ms().map_or(u64::MAX, |t| t + self.config.ack_timeout_ms);
                // A follow-up round waits for quiescence; frames arriving re-poll anyway.
                let quiet = self.in_flight() == 0 && !self.store_changed && !self.transfer_active();
                let followup = if self.anti_entropy_followup && quiet { self.anti_entropy_due_ms } else { u64::MAX };
                // Consumed by `next_holders`: a frame goes out, or nothing is due any more.
                let holders = if self.holders_due { self.holders_next_ms } else { u64::MAX };
                Some(keepalive.min(idle).min(ack).min(followup).min(holders))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: the reason of a `Close` was cut with `String::truncate` at
    /// `REASON_BYTES_MAX`, which panics inside a character. A peer could put one there:
    /// serde's message for an unknown variant quotes the name the peer sent. Here the
    /// name is `a` and 600 `é`s, so byte 512 of the reason falls inside an `é`.
    #[test]
    fn a_close_reason_from_peer_text_is_cut_at_a_character_boundary() {
        let name = format!("a{}", "é".repeat(600));
        // `{8: {0: name, 1: "x"}}`: a `Close` whose code is a variant no build has.
        let mut bytes = vec![frame::FRAME_VERSION, 0xa1, 0x08, 0xa2, 0x00, 0x79];
        bytes.extend((name.len() as u16).to_be_bytes());
        bytes.extend(name.as_bytes());
        bytes.extend([0x01, 0x61, b'x']);
        let dir = tempfile::TempDir::new().unwrap();
        let mut store = edgestore::Replica::open(dir.path().join("a.redb"), NodeId([1; 16])).unwrap();
        let config = SessionConfig::new(ClusterId([0; 16]));
        let mut session = Session::new(config, NodeId([1; 16]), NodeId([2; 16]), &VersionVector::new(), 0);
        let error = session.handle_frame(0, &bytes, &mut store).unwrap_err();
        assert!(error.to_string().contains("unknown variant `aé"), "{error}");
        let sent: Vec<Vec<u8>> = std::iter::from_fn(|| session.poll_transmit(0, &store)).collect();
        let Ok(Frame::Close { code: CloseCode::ProtocolError, reason }) = Frame::decode(sent.last().unwrap()) else {
            panic!("the session closes with a protocol error")
        };
        assert_eq!(reason.len(), frame::REASON_BYTES_MAX - 1, "cut before the `é` across byte 512");
        assert!(error.to_string().starts_with(&reason));
    }
}
