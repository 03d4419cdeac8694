//! [`SyncNode`]: one QUIC endpoint, one sync session per peer, driven by tokio.
//!
//! Each connection carries one bidirectional stream of length-prefixed frames. A reader
//! task turns the stream into whole frames (checking the length prefix before allocating);
//! the connection task feeds them, store-change notifications and timer expiries into the
//! connection's [`Session`], and writes out what the session produces. Session steps run on
//! the replica's owner thread (`ReplicaHandle::call`), so they see the store exactly as
//! the sans-IO tests and the simulator do, and no redb transaction crosses an `.await`.
//!
//! Every configured peer is dialled, with backoff after failures. When two connections to
//! one peer exist (both dialled at once), both sides keep the one dialled by the lower
//! node id.
//!
//! Peers can be added and removed while the node runs ([`SyncNode::add_peer`],
//! [`SyncNode::remove_peer`]); both edit the allow-list the TLS verifiers read. Per-peer
//! records keep cumulative counters across reconnects, the lag and the last contact, and
//! node-wide counters count refused handshakes and protocol errors: what an operator's
//! metrics and `.peers` show.
//!
//! Counters of one connection's session are kept in a slot of their own (by connection),
//! folded into the peer's totals when the connection ends, and updated on the replica's
//! owner thread in the same call that applied the changes: a replaced connection still
//! finishing cannot overwrite its successor's figures, and whoever sees the data through
//! the replica sees the counters that include it.
//!
//! Refused peers (not on an allow-list, another cluster, a bad certificate) back off: only
//! an established session resets the dialer's backoff, every attempt is recorded with its
//! backoff step ([`SyncNode::dial_history`]), refusals are counted per reason and logged
//! with the reason once per step; the accepting side logs them at doubling intervals.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edgestore::handle::{Stopped, StoreHealth};
use edgestore::{NodeId, ReplicaHandle, VersionVector, WriteBatch, WriteError, WriteReceipt};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::datagrams::DatagramCounters;
use super::fault::{FaultSwitch, FaultySocket};
use super::refusal::{Refusal, RefusalReason, Refusals};
use super::tls::{self, AllowList, TlsIdentity};
use crate::backoff::Backoff;
use crate::frame::{self, CloseCode, FrameError};
use crate::session::{Event, ProtocolError, Session, SessionConfig, SessionStats, TransferStatus};

/// QUIC application close code for an orderly close.
const CLOSE_OK: u32 = 0;
/// QUIC application close code for a protocol violation by the peer.
const CLOSE_PROTOCOL: u32 = 1;
/// QUIC application close code for a duplicate connection being dropped.
const CLOSE_DUPLICATE: u32 = 2;
/// Frames buffered between a connection's reader task and its session, at most.
const READ_QUEUE_FRAMES_MAX: usize = 4;
/// Concurrent incoming connection attempts, at most (quinn's pending-handshake limit).
const INCOMING_PENDING_MAX: usize = 32;
/// How long a closing session waits for the peer to read its last frames, at most.
const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// Dial attempts remembered per peer ([`SyncNode::dial_history`]), the most recent.
const DIAL_HISTORY_MAX: usize = 64;
/// A session that asked twice in a row to be woken at a time already past, without
/// sending anything, is woken no sooner than this (a livelock guard: no busy loop).
const TIMER_STALL_DELAY_MS: u64 = 100;
/// At most one WARN line per this interval about stalled session timers (all are counted).
const TIMER_STALL_LOG_INTERVAL_MS: u64 = 10_000;

/// Settings of a sync node.
#[derive(Clone, Debug)]
pub struct SyncNodeConfig {
    /// Session tunables (cluster id, batches, timeouts).
    pub session: SessionConfig,
    /// UDP address to bind.
    pub listen: SocketAddr,
    /// Reconnect backoff: first delay and cap, in ms.
    pub backoff_ms: (u64, u64),
    /// The caller's clock when the node starts, in ms (the daemon: Unix time). The node's
    /// clock ([`SyncNode::now_ms`]) is this plus the monotonic time since, so the
    /// last-heard times stored with held vectors compare across restarts.
    pub clock_base_ms: u64,
}

/// A transport failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// Binding or using the UDP socket failed.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// The TLS configuration could not be built.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The key pair is not the identity the replica was opened with.
    #[error("the key pair is node {key}, but the store belongs to node {replica}")]
    IdentityMismatch {
        /// The node id of the key pair.
        key: NodeId,
        /// The replica's node id.
        replica: NodeId,
    },
}

/// Why a connection's driver stopped other than by its session closing: the stream, the
/// replica's owner thread or a blocking task failed. Shown to the operator as the peer's
/// `last_error` and sent as the QUIC close reason.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DriveError {
    /// Opening (dialer) or accepting (listener) the connection's one stream failed.
    #[error("opening the sync stream: {0}")]
    Open(#[source] quinn::ConnectionError),
    /// Writing a frame to the stream failed.
    #[error("writing a frame: {0}")]
    Write(#[source] quinn::WriteError),
    /// The reader task stopped with an error.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The peer finished the stream without closing the session.
    #[error("stream ended")]
    StreamEnded,
    /// The replica's owner thread refused a call: it stopped, or the store is closed for
    /// recovery (then the session's error says so, `ProtocolError::StoreUnavailable`).
    #[error(transparent)]
    Stopped(#[from] Stopped),
    /// A session step on the blocking pool did not finish (it panicked, or the runtime is
    /// shutting down).
    #[error("a session step failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Why a connection's reader task stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// Reading from the stream failed (the connection was lost or reset).
    #[error("reading a frame: {0}")]
    Stream(#[from] quinn::ReadExactError),
    /// A length prefix over `FRAME_BYTES_MAX`; nothing was allocated for it.
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// Why a peer's last session or dial attempt ended in an error, as [`PeerStatus`] shows it.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    /// The peer was refused, or refused this node.
    #[error(transparent)]
    Refused(Refusal),
    /// The session ended with this error.
    #[error(transparent)]
    Session(ProtocolError),
    /// The connection's driver stopped: the stream, the owner thread or a task failed.
    #[error(transparent)]
    Connection(Arc<DriveError>),
}

/// What a peer connection is doing, for status and metrics.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PeerStatus {
    /// The peer.
    pub node_id: NodeId,
    /// The address dialled, for peers added with [`SyncNode::add_peer`]; `None` for a
    /// peer that only connected to us.
    pub addr: Option<SocketAddr>,
    /// Whether a connection is up now.
    pub connected: bool,
    /// The current (or last) session's counters.
    pub stats: SessionStats,
    /// Counters summed over every session with the peer since the node started.
    pub totals: SessionStats,
    /// Sessions established with the peer since the node started.
    pub sessions: u64,
    /// Changes this node holds that the peer is not known to hold, at the last step of
    /// the session (0 before the first session).
    pub lag_changes: u64,
    /// Milliseconds since a frame last arrived from the peer; `None` if none ever did.
    pub last_contact_ms_ago: Option<u64>,
    /// Why the last session ended, if it ended with an error.
    pub last_error: Option<PeerError>,
    /// Connection attempts this node made to the peer since it was added.
    pub dial_attempts: u64,
    /// The state transfer running on the newest live session, if any.
    pub transfer: Option<TransferStatus>,
}

/// How one dial attempt ended.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DialOutcome {
    /// A session was established (the backoff starts over).
    Established,
    /// The peer refused this node, or this node refused the peer.
    Refused(RefusalReason),
    /// The connection failed or ended without a session (unreachable, a timeout, the
    /// peer's or this node's store failing).
    Failed,
}

/// One dial attempt, as the node recorded it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DialAttempt {
    /// Backoff steps since the last established session: the delay after this attempt
    /// is drawn from `[d/2, d]`, `d = min(base × 2^step, cap)`.
    pub step: u32,
    /// The delay before the next attempt, in ms.
    pub delay_ms: u64,
    /// How the attempt ended.
    pub outcome: DialOutcome,
}

/// Node-wide counters, for metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeCounters {
    /// Incoming connections whose handshake failed (a peer not on the allow-list, a bad
    /// certificate, a timeout).
    pub handshakes_refused: u64,
    /// Sessions closed because the peer broke the protocol or timed out.
    pub protocol_errors: u64,
    /// Sessions closed because the peer sent a change the store refused.
    pub rejected_changes: u64,
    /// Sessions closed because this node's store failed (not counted against the peer).
    pub store_failures: u64,
    /// Peers refused, per reason: by this node's checks, or a refusal of this node's
    /// dial attempt by the peer.
    pub peers_refused: BTreeMap<RefusalReason, u64>,
    /// Times a session asked twice in a row to be woken in the past without progress.
    pub timer_stalls: u64,
    /// UDP datagrams received on the sync port.
    pub datagrams_received: u64,
    /// Received datagrams that cannot be QUIC for this endpoint (malformed headers,
    /// unsupported versions, short-header packets for no connection of this node).
    pub datagrams_invalid: u64,
    /// Received datagrams carrying a QUIC Initial packet (handshake attempts, fake ones too).
    pub datagrams_initial: u64,
    /// quinn's endpoint statistics: incoming handshakes accepted, refused (e.g. over the
    /// pending limit) and ignored, and outgoing handshakes started.
    pub quic_handshakes_accepted: u64,
    /// See `quic_handshakes_accepted`.
    pub quic_handshakes_refused: u64,
    /// See `quic_handshakes_accepted`.
    pub quic_handshakes_ignored: u64,
    /// See `quic_handshakes_accepted`.
    pub quic_handshakes_outgoing: u64,
}

/// What the node keeps per peer.
#[derive(Default)]
struct PeerRecord {
    addr: Option<SocketAddr>,
    dialer: Option<tokio::task::JoinHandle<()>>,
    /// Counters of each live connection's session, by `quinn::Connection::stable_id`.
    live: BTreeMap<usize, SessionStats>,
    /// The newest connection, whose counters `PeerStatus::stats` shows while it lives.
    newest: Option<usize>,
    /// Counters of the newest session that ended.
    last: SessionStats,
    /// Counters of the sessions that ended, summed.
    earlier: SessionStats,
    sessions: u64,
    lag_changes: u64,
    last_contact_ms: Option<u64>,
    last_error: Option<PeerError>,
    dial_attempts: u64,
    dials: std::collections::VecDeque<DialAttempt>,
    /// The newest live session's state transfer, if one runs.
    transfer: Option<TransferStatus>,
}

impl PeerRecord {
    /// A connection's session starts: it gets its own counters.
    fn connection_started(&mut self, connection: usize) {
        self.sessions += 1;
        self.live.insert(connection, SessionStats::default());
        self.newest = Some(connection);
    }

    /// A connection's session stepped: its counters so far.
    fn connection_stepped(&mut self, connection: usize, stats: &SessionStats) {
        if let Some(slot) = self.live.get_mut(&connection) {
            slot.clone_from(stats);
        }
    }

    /// A connection ended: its counters join the totals of ended sessions.
    fn connection_ended(&mut self, connection: usize) {
        if let Some(stats) = self.live.remove(&connection) {
            self.earlier.add(&stats);
            if self.newest == Some(connection) {
                self.last = stats;
                self.transfer = None;
            }
        }
    }

    /// The newest session's counters (live, or the last that ended).
    fn current(&self) -> SessionStats {
        self.newest.and_then(|c| self.live.get(&c)).unwrap_or(&self.last).clone()
    }

    /// Counters over every session: the ended ones and the live ones.
    fn totals(&self) -> SessionStats {
        let mut totals = self.earlier.clone();
        self.live.values().for_each(|stats| totals.add(stats));
        totals
    }

    fn dialled(&mut self, attempt: DialAttempt) {
        self.dial_attempts += 1;
        if self.dials.len() == DIAL_HISTORY_MAX {
            self.dials.pop_front();
        }
        self.dials.push_back(attempt);
    }
}

struct Shared {
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    replica: ReplicaHandle,
    local: NodeId,
    session: SessionConfig,
    backoff_ms: (u64, u64),
    origin: Instant,
    /// The caller's clock at `origin` (`SyncNodeConfig::clock_base_ms`).
    clock_base_ms: u64,
    changed: watch::Sender<u64>,
    /// Live connections per peer, with the node id that dialled each.
    connections: Mutex<BTreeMap<NodeId, (quinn::Connection, NodeId)>>,
    peers: Mutex<BTreeMap<NodeId, PeerRecord>>,
    allowed: AllowList,
    handshakes_refused: AtomicU64,
    protocol_errors: AtomicU64,
    rejected_changes: AtomicU64,
    store_failures: AtomicU64,
    refusals: Refusals,
    timer_stalls: AtomicU64,
    /// When the last WARN about a stalled timer was logged (ms since `origin`), if ever.
    timer_stall_logged_ms: Mutex<Option<u64>>,
    datagrams: Arc<DatagramCounters>,
    shutting_down: AtomicBool,
}

impl Shared {
    fn now_ms(&self) -> u64 {
        self.clock_base_ms + self.origin.elapsed().as_millis() as u64
    }

    fn notify_changed(&self) {
        self.changed.send_modify(|version| *version += 1);
    }

    /// Registers a new connection; returns false if it must be dropped as a duplicate.
    fn register(&self, peer: NodeId, connection: &quinn::Connection, dialer: NodeId) -> bool {
        let mut connections = self.connections.lock().expect("connection registry poisoned");
        if let Some((existing, existing_dialer)) = connections.get(&peer) {
            if existing.close_reason().is_none() {
                if *existing_dialer <= dialer {
                    return false;
                }
                existing.close(CLOSE_DUPLICATE.into(), b"duplicate connection");
            }
        }
        connections.insert(peer, (connection.clone(), dialer));
        true
    }

    fn unregister(&self, peer: NodeId, connection: &quinn::Connection) {
        let mut connections = self.connections.lock().expect("connection registry poisoned");
        if connections.get(&peer).is_some_and(|(c, _)| c.stable_id() == connection.stable_id()) {
            connections.remove(&peer);
        }
    }

    /// Updates a peer's record; creates it on first use.
    fn with_peer<T>(&self, peer: NodeId, f: impl FnOnce(&mut PeerRecord) -> T) -> T {
        f(self.peers.lock().expect("peer records poisoned").entry(peer).or_default())
    }

    /// Updates a peer's record if it still exists (a removed peer's last session must not
    /// bring it back).
    fn update_peer(&self, peer: NodeId, f: impl FnOnce(&mut PeerRecord)) {
        if let Some(record) = self.peers.lock().expect("peer records poisoned").get_mut(&peer) {
            f(record);
        }
    }

    fn is_connected(&self, peer: NodeId) -> bool {
        let connections = self.connections.lock().expect("connection registry poisoned");
        connections.get(&peer).is_some_and(|(c, _)| c.close_reason().is_none())
    }
}

/// A running sync node; see the module documentation. Dropping it does not stop its tasks:
/// call [`SyncNode::shutdown`].
#[derive(Clone)]
pub struct SyncNode {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SyncNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncNode").field("node", &self.shared.local).finish()
    }
}

fn transport_config() -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    // One sync stream per connection; a little slack for a replaced stream.
    transport.max_concurrent_bidi_streams(2u32.into());
    transport.max_concurrent_uni_streams(0u32.into());
    // Windows sized for gateway memory: enough for a maximal frame in flight.
    transport.stream_receive_window((frame::FRAME_BYTES_MAX as u32).into());
    transport.receive_window((2 * frame::FRAME_BYTES_MAX as u32).into());
    transport.send_window(2 * frame::FRAME_BYTES_MAX as u64);
    transport.max_idle_timeout(Some(Duration::from_secs(30).try_into().expect("30 s is a valid idle timeout")));
    // The session's own Ping/Pong keeps connections alive and detects dead peers.
    transport.keep_alive_interval(None);
    transport
}

impl SyncNode {
    /// Binds a UDP socket on `config.listen` and starts accepting peers on the allow-list.
    /// The returned switch can cut the node off (see [`FaultSwitch`]).
    pub fn start(
        replica: ReplicaHandle,
        key_pair: &rcgen::KeyPair,
        allowed: AllowList,
        config: SyncNodeConfig,
    ) -> Result<(SyncNode, FaultSwitch), TransportError> {
        let identity = TlsIdentity::new(key_pair)?;
        if identity.node_id != replica.node_id() {
            return Err(TransportError::IdentityMismatch { key: identity.node_id, replica: replica.node_id() });
        }
        let transport = Arc::new(transport_config());
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(tls::server_crypto(&identity, allowed.clone())?));
        server.transport_config(transport.clone());
        server.migration(false);
        server.max_incoming(INCOMING_PENDING_MAX);
        let mut client = quinn::ClientConfig::new(Arc::new(tls::client_crypto(&identity, allowed.clone())?));
        client.transport_config(transport);

        let runtime: Arc<dyn quinn::Runtime> = Arc::new(quinn::TokioRuntime);
        let socket = std::net::UdpSocket::bind(config.listen)?;
        let switch = FaultSwitch::default();
        // Keyed connection ids let the socket tell datagrams for no connection of ours.
        let datagrams = Arc::new(DatagramCounters::new(random_u64()));
        let socket = FaultySocket::new(runtime.wrap_udp_socket(socket)?, switch.clone()).counting(datagrams.clone());
        let mut endpoint_config = quinn::EndpointConfig::default();
        let cid_counters = datagrams.clone();
        endpoint_config.cid_generator(move || Box::new(cid_counters.cid_generator()));
        let endpoint =
            quinn::Endpoint::new_with_abstract_socket(endpoint_config, Some(server), Arc::new(socket), runtime)?;
        let (changed, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            endpoint,
            client,
            local: replica.node_id(),
            replica,
            session: config.session,
            backoff_ms: config.backoff_ms,
            origin: Instant::now(),
            clock_base_ms: config.clock_base_ms,
            changed,
            connections: Mutex::new(BTreeMap::new()),
            peers: Mutex::new(BTreeMap::new()),
            allowed,
            handshakes_refused: AtomicU64::new(0),
            protocol_errors: AtomicU64::new(0),
            rejected_changes: AtomicU64::new(0),
            store_failures: AtomicU64::new(0),
            refusals: Refusals::default(),
            timer_stalls: AtomicU64::new(0),
            timer_stall_logged_ms: Mutex::new(None),
            datagrams,
            shutting_down: AtomicBool::new(false),
        });
        tokio::spawn(accept_loop(shared.clone()));
        Ok((SyncNode { shared }, switch))
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.shared.local
    }

    /// The node's clock in ms: `SyncNodeConfig::clock_base_ms` plus the monotonic time
    /// since the start. Sessions run on it, and the held vectors' last-heard times are
    /// in it, so [`edgestore::Replica::horizon`] is asked with it.
    pub fn now_ms(&self) -> u64 {
        self.shared.now_ms()
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> Result<SocketAddr, TransportError> {
        Ok(self.shared.endpoint.local_addr()?)
    }

    /// Allows `peer` and keeps a connection to it at `addr`, reconnecting with backoff,
    /// until it is removed or the node shuts down. Adding a peer again replaces its address.
    pub fn add_peer(&self, peer: NodeId, addr: SocketAddr) {
        self.shared.allowed.write().expect("allow-list poisoned").insert(peer);
        // The record exists before the dial loop runs, so its first attempt is recorded.
        let previous = self.shared.with_peer(peer, |record| {
            record.addr = Some(addr);
            record.dialer.replace(tokio::spawn(dial_loop(self.shared.clone(), peer, addr)))
        });
        if let Some(previous) = previous {
            previous.abort();
        }
        // A configured peer is a member of the cluster from now on, heard from or not: the
        // horizon waits for it (or for `lifecycle.peer_horizon` to pass).
        let (handle, now) = (self.shared.replica.clone(), self.shared.now_ms());
        tokio::task::spawn_blocking(move || {
            if let Ok(Err(error)) = handle.call(move |replica| replica.add_members(&[peer], now)) {
                tracing::warn!(%peer, %error, "could not record the peer as a member");
            }
        });
    }

    /// Stops dialling `peer`, takes it off the allow-list and closes its connection.
    /// Returns whether the peer was known (added, or connected to us).
    pub fn remove_peer(&self, peer: NodeId) -> bool {
        let allowed = self.shared.allowed.write().expect("allow-list poisoned").remove(&peer);
        let record = self.shared.peers.lock().expect("peer records poisoned").remove(&peer);
        if let Some(dialer) = record.as_ref().and_then(|r| r.dialer.as_ref()) {
            dialer.abort();
        }
        let connection = self.shared.connections.lock().expect("connection registry poisoned").remove(&peer);
        if let Some((connection, _)) = &connection {
            connection.close(CLOSE_OK.into(), b"peer removed");
        }
        allowed || record.is_some() || connection.is_some()
    }

    /// Writes a batch through the replica and pushes it to connected peers.
    pub async fn write(&self, batch: WriteBatch, now_ms: i64) -> Result<WriteReceipt, WriteError> {
        let replica = self.shared.replica.clone();
        let result = tokio::task::spawn_blocking(move || replica.write(batch, now_ms))
            .await
            .expect("the write task does not panic");
        if result.is_ok() {
            self.shared.notify_changed();
        }
        result
    }

    /// Tells the sessions that the store changed outside [`SyncNode::write`].
    pub fn notify_changed(&self) {
        self.shared.notify_changed();
    }

    /// A receiver that wakes whenever the store changes (a write through this node or
    /// changes applied from a peer); for status displays, waiters and benchmarks.
    pub fn subscribe_changes(&self) -> watch::Receiver<u64> {
        self.shared.changed.subscribe()
    }

    /// Peers with a live connection.
    pub fn connected_peers(&self) -> Vec<NodeId> {
        let connections = self.shared.connections.lock().expect("connection registry poisoned");
        connections.iter().filter(|(_, (c, _))| c.close_reason().is_none()).map(|(id, _)| *id).collect()
    }

    /// Every known peer (added, or connected to us since the start) with its counters.
    pub fn peer_status(&self) -> Vec<PeerStatus> {
        let now = self.shared.now_ms();
        let connected = self.connected_peers();
        let peers = self.shared.peers.lock().expect("peer records poisoned");
        peers
            .iter()
            .map(|(node_id, record)| PeerStatus {
                node_id: *node_id,
                addr: record.addr,
                connected: connected.contains(node_id),
                stats: record.current(),
                totals: record.totals(),
                sessions: record.sessions,
                lag_changes: record.lag_changes,
                last_contact_ms_ago: record.last_contact_ms.map(|t| now.saturating_sub(t)),
                last_error: record.last_error.clone(),
                dial_attempts: record.dial_attempts,
                transfer: record.transfer.clone(),
            })
            .collect()
    }

    /// The most recent dial attempts to `peer` (at most 64), oldest first.
    pub fn dial_history(&self, peer: NodeId) -> Vec<DialAttempt> {
        let peers = self.shared.peers.lock().expect("peer records poisoned");
        peers.get(&peer).map(|record| record.dials.iter().cloned().collect()).unwrap_or_default()
    }

    /// Node-wide counters since the start.
    pub fn counters(&self) -> NodeCounters {
        let (datagrams, quic) = (self.shared.datagrams.figures(), self.shared.endpoint.stats());
        NodeCounters {
            handshakes_refused: self.shared.handshakes_refused.load(Ordering::Relaxed),
            protocol_errors: self.shared.protocol_errors.load(Ordering::Relaxed),
            rejected_changes: self.shared.rejected_changes.load(Ordering::Relaxed),
            store_failures: self.shared.store_failures.load(Ordering::Relaxed),
            peers_refused: self.shared.refusals.counts(),
            timer_stalls: self.shared.timer_stalls.load(Ordering::Relaxed),
            datagrams_received: datagrams.received,
            datagrams_invalid: datagrams.invalid,
            datagrams_initial: datagrams.initial,
            quic_handshakes_accepted: quic.accepted_handshakes,
            quic_handshakes_refused: quic.refused_handshakes,
            quic_handshakes_ignored: quic.ignored_handshakes,
            quic_handshakes_outgoing: quic.outgoing_handshakes,
        }
    }

    /// Closes every connection and the endpoint.
    pub async fn shutdown(&self) {
        self.shared.shutting_down.store(true, Ordering::SeqCst);
        self.shared.endpoint.close(CLOSE_OK.into(), b"shutdown");
        self.shared.endpoint.wait_idle().await;
    }
}

async fn accept_loop(shared: Arc<Shared>) {
    while let Some(incoming) = shared.endpoint.accept().await {
        let shared = shared.clone();
        tokio::spawn(async move {
            let source = incoming.remote_address();
            // A refused handshake (peer not on the allow-list) ends here.
            let connection = match incoming.await {
                Ok(connection) => connection,
                Err(error) => {
                    shared.handshakes_refused.fetch_add(1, Ordering::Relaxed);
                    match (&error, Refusal::of_connection_error(&error)) {
                        // This node's TLS check refused the peer (an alert it sent).
                        (quinn::ConnectionError::TransportError(_), Some(refusal)) => {
                            shared.refusals.refused_incoming(&source.to_string(), &refusal);
                        }
                        _ => tracing::debug!(%source, %error, "an incoming sync connection failed"),
                    }
                    return;
                }
            };
            let Some(peer) = tls::peer_node_id(&connection) else { return };
            let end = run_connection(shared.clone(), connection, peer, false).await;
            if let Some(refusal) = end.refusal {
                shared.refusals.refused_incoming(&peer.to_string(), &refusal);
            }
        });
    }
}

async fn dial_loop(shared: Arc<Shared>, peer: NodeId, addr: SocketAddr) {
    let mut backoff = Backoff::new(shared.backoff_ms.0, shared.backoff_ms.1);
    loop {
        if shared.shutting_down.load(Ordering::SeqCst) {
            return;
        }
        if shared.is_connected(peer) {
            tokio::time::sleep(Duration::from_millis(backoff.next_delay_ms(jitter()))).await;
            continue;
        }
        let (outcome, refusal) = dial_once(&shared, peer, addr).await;
        // Only a session resets the backoff: a peer that refuses this node (or that this
        // node refuses) after a completed QUIC handshake is retried ever more slowly.
        if outcome == DialOutcome::Established {
            backoff.reset();
        }
        let step = backoff.attempt();
        let delay_ms = backoff.next_delay_ms(jitter());
        if let Some(refusal) = &refusal {
            shared.refusals.count(refusal.reason);
            tracing::warn!(
                %peer,
                reason = refusal.reason.label(),
                step,
                delay_ms,
                "sync peer refused: {refusal}; retrying in {delay_ms} ms (backoff step {step})"
            );
        }
        shared.update_peer(peer, |record| {
            if let Some(refusal) = refusal {
                record.last_error = Some(PeerError::Refused(refusal));
            }
            record.dialled(DialAttempt { step, delay_ms, outcome });
        });
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    }
}

/// One connection attempt to `peer` and, if it connects, its session until it ends.
async fn dial_once(shared: &Arc<Shared>, peer: NodeId, addr: SocketAddr) -> (DialOutcome, Option<Refusal>) {
    let connecting = match shared.endpoint.connect_with(shared.client.clone(), addr, &format!("{peer}.edgestore")) {
        Ok(connecting) => connecting,
        Err(error) => {
            tracing::warn!(%peer, %error, "cannot connect");
            return (DialOutcome::Failed, None);
        }
    };
    let connection = match connecting.await {
        Ok(connection) => connection,
        Err(error) => {
            return match Refusal::of_connection_error(&error) {
                Some(refusal) => (DialOutcome::Refused(refusal.reason), Some(refusal)),
                None => {
                    tracing::debug!(%peer, %error, "connecting failed");
                    (DialOutcome::Failed, None)
                }
            };
        }
    };
    match tls::peer_node_id(&connection) {
        Some(id) if id == peer => {}
        other => {
            connection.close(CLOSE_PROTOCOL.into(), b"unexpected node id");
            let refusal = Refusal::wrong_node(addr, other, peer);
            return (DialOutcome::Refused(refusal.reason), Some(refusal));
        }
    }
    let end = run_connection(shared.clone(), connection, peer, true).await;
    let outcome = match &end.refusal {
        Some(refusal) => DialOutcome::Refused(refusal.reason),
        None if end.established && !end.store_failed => DialOutcome::Established,
        None => DialOutcome::Failed,
    };
    (outcome, end.refusal)
}

/// Jitter in `[0, 1)` from the process's random hasher keys: enough to spread reconnects,
/// and the transport edge is where OS randomness is allowed.
fn jitter() -> f64 {
    (random_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// 64 random bits from the process's random hasher keys (the transport edge).
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u8(0);
    hasher.finish()
}

/// What woke a connection's session.
enum Input {
    Start,
    Frame(Vec<u8>),
    StoreChanged,
    Timer,
}

/// How a connection's session ended, for the dial loop and the refusal counters.
#[derive(Default)]
struct ConnectionEnd {
    /// The peer's `Hello` arrived.
    established: bool,
    /// The session ended because a store failed (this node's, or the peer's as its
    /// `Close` says): the peer is retried with backoff until the store recovers.
    store_failed: bool,
    /// The peer was refused (by this node's checks or the peer's), with what showed it.
    refusal: Option<Refusal>,
}

/// What a session reported while it ran.
#[derive(Default)]
struct Progress {
    established: bool,
    error: Option<ProtocolError>,
}

async fn run_connection(
    shared: Arc<Shared>,
    connection: quinn::Connection,
    peer: NodeId,
    dialed: bool,
) -> ConnectionEnd {
    let dialer = if dialed { shared.local } else { peer };
    if !shared.register(peer, &connection, dialer) {
        connection.close(CLOSE_DUPLICATE.into(), b"duplicate connection");
        return ConnectionEnd::default();
    }
    // The server may still refuse our certificate after this side's handshake completed,
    // so the session is reported established only when the peer's Hello arrives.
    tracing::debug!(%peer, "QUIC connection up");
    let id = connection.stable_id();
    shared.with_peer(peer, |record| record.connection_started(id));
    let mut progress = Progress::default();
    let result = drive_connection(&shared, &connection, peer, dialed, &mut progress).await;
    // Read before this side closes the connection: a TLS alert from the peer.
    let closed_by = connection.close_reason();
    let session_refusal = progress.error.as_ref().and_then(Refusal::of_protocol_error);
    let refusal = session_refusal.or_else(|| {
        let error = closed_by.filter(|_| !progress.established)?;
        Refusal::of_connection_error(&error)
    });
    let store_failed = progress.error.as_ref().is_some_and(|error| {
        error.is_local() || matches!(error, ProtocolError::ClosedByPeer { code: CloseCode::Internal, .. })
    });
    if let Err(error) = &result {
        if refusal.is_none() {
            tracing::info!(%peer, %error, "sync connection closed");
        }
        connection.close(CLOSE_PROTOCOL.into(), error.to_string().as_bytes());
    } else {
        connection.close(CLOSE_OK.into(), b"session closed");
    }
    let last_error = match (&refusal, &progress.error) {
        (Some(refusal), _) => Some(PeerError::Refused(refusal.clone())),
        (None, Some(error)) if !matches!(error, ProtocolError::ClosedByPeer { code: CloseCode::Shutdown, .. }) => {
            Some(PeerError::Session(error.clone()))
        }
        _ => result.err().map(|error| PeerError::Connection(Arc::new(error))),
    };
    shared.update_peer(peer, |record| {
        record.connection_ended(id);
        record.last_error = last_error;
    });
    shared.unregister(peer, &connection);
    ConnectionEnd { established: progress.established, store_failed, refusal }
}

async fn drive_connection(
    shared: &Arc<Shared>,
    connection: &quinn::Connection,
    peer: NodeId,
    dialed: bool,
    progress: &mut Progress,
) -> Result<(), DriveError> {
    let stream = if dialed { connection.open_bi().await } else { connection.accept_bi().await };
    let (mut send, recv) = stream.map_err(DriveError::Open)?;
    let (frames_tx, mut frames) = mpsc::channel(READ_QUEUE_FRAMES_MAX);
    let reader = tokio::spawn(read_frames(recv, frames_tx));
    let handle = shared.replica.clone();
    let vector = tokio::task::spawn_blocking(move || handle.call(|r| r.version_vector().clone()))
        .await?
        .map_err(|stopped| owner_refused(shared, peer, progress, stopped))?;
    let mut session = Some(Session::new(shared.session.clone(), shared.local, peer, &vector, shared.now_ms()));
    let mut changed = shared.changed.subscribe();
    let mut input = Input::Start;
    let mut stalls = TimerStalls::default();
    let connection_id = connection.stable_id();
    let result = loop {
        let timer = matches!(input, Input::Timer);
        let (next, out, events) =
            step(shared, peer, connection_id, session.take().expect("session returned by step"), input)
                .await?
                .map_err(|stopped| owner_refused(shared, peer, progress, stopped))?;
        let woke_in_vain = timer && out.is_empty() && events.is_empty();
        // Events first: a write failing below (the peer closed first) must not lose why
        // the session ended.
        for event in events {
            handle_event(shared, peer, event, progress);
        }
        for bytes in out {
            send.write_all(&frame::length_prefixed(&bytes)).await.map_err(DriveError::Write)?;
        }
        if next.is_closed() {
            // A new connection from the peer may replace this one from now on.
            shared.unregister(peer, connection);
            // Let the peer read the last frames (a `Close` saying why) before the
            // connection closes: closing at once can discard them in flight.
            if send.finish().is_ok() {
                let _ = tokio::time::timeout(CLOSE_LINGER, send.stopped()).await;
            }
            break Ok(());
        }
        let deadline = next.poll_timeout().map(|deadline_ms| {
            let now_ms = shared.now_ms();
            let (wake_ms, stalled) = stalls.check(now_ms, deadline_ms, woke_in_vain);
            if stalled {
                shared.timer_stalled(peer, deadline_ms, now_ms);
            }
            shared.origin + Duration::from_millis(wake_ms.saturating_sub(shared.clock_base_ms))
        });
        session = Some(next);
        input = tokio::select! {
            frame = frames.recv() => match frame {
                Some(Ok(bytes)) => Input::Frame(bytes),
                Some(Err(error)) => break Err(DriveError::Read(error)),
                None => break Err(DriveError::StreamEnded),
            },
            _ = changed.changed() => Input::StoreChanged,
            _ = sleep_until(deadline) => Input::Timer,
        };
    };
    reader.abort();
    result
}

/// Counts a session's event and notes what the connection's end needs to know.
fn handle_event(shared: &Shared, peer: NodeId, event: Event, progress: &mut Progress) {
    match event {
        // Other sessions push the changes on, and forward what the peer holds.
        Event::Applied(_) | Event::HoldersGrew => shared.notify_changed(),
        Event::Established { peer_vector } => {
            progress.established = true;
            tracing::info!(%peer, peer_changes = peer_vector.total_changes(), "sync session established");
        }
        Event::Closed { error: Some(error) } => {
            match CloseKind::of(&error) {
                CloseKind::RejectedChange => {
                    shared.rejected_changes.fetch_add(1, Ordering::Relaxed);
                }
                CloseKind::StoreFailure => {
                    shared.store_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(%peer, %error, "sync session closed: the local store failed; the peer retries later");
                }
                CloseKind::ProtocolError => {
                    shared.protocol_errors.fetch_add(1, Ordering::Relaxed);
                }
                CloseKind::Refusal | CloseKind::ByPeer => {}
            }
            progress.error = Some(error);
        }
        Event::Closed { error: None } | Event::Repaired(_) | Event::Transfer(_) => {}
    }
}

/// How a session's closing error is counted.
#[derive(Debug, PartialEq, Eq)]
enum CloseKind {
    /// The peer sent a change the store refused (`rejected_changes`).
    RejectedChange,
    /// This node's store failed: not the peer's fault (`store_failures`, an ERROR line).
    StoreFailure,
    /// A refused peer: counted per reason when the connection ends.
    Refusal,
    /// The peer closed the session; it counts its own reason.
    ByPeer,
    /// The peer broke the protocol or went silent (`protocol_errors`).
    ProtocolError,
}

impl CloseKind {
    fn of(error: &ProtocolError) -> CloseKind {
        match error {
            ProtocolError::ChangeRejected(_) => CloseKind::RejectedChange,
            error if error.is_local() => CloseKind::StoreFailure,
            error if RefusalReason::of_protocol_error(error).is_some() => CloseKind::Refusal,
            ProtocolError::ClosedByPeer { .. } => CloseKind::ByPeer,
            _ => CloseKind::ProtocolError,
        }
    }
}

/// The driver's livelock guard: a session whose timer fired without it sending anything,
/// twice in a row, while asking again for a time already past, would wake in a busy loop
/// (the session rule in `docs/design.md` § Session forbids it; this catches a breach).
#[derive(Default)]
struct TimerStalls {
    in_a_row: u32,
}

impl TimerStalls {
    /// The time to wake at for `deadline_ms`, and whether the session stalls: it woke for
    /// its timer and sent nothing (`woke_in_vain`) twice in a row and asks for the past
    /// again. A stalled session is woken `TIMER_STALL_DELAY_MS` later instead.
    fn check(&mut self, now_ms: u64, deadline_ms: u64, woke_in_vain: bool) -> (u64, bool) {
        if !(woke_in_vain && deadline_ms <= now_ms) {
            self.in_a_row = 0;
            return (deadline_ms, false);
        }
        self.in_a_row += 1;
        if self.in_a_row < 2 {
            return (deadline_ms, false);
        }
        (now_ms + TIMER_STALL_DELAY_MS, true)
    }
}

impl Shared {
    /// Counts a stalled session timer, and logs it at most once per interval.
    fn timer_stalled(&self, peer: NodeId, deadline_ms: u64, now_ms: u64) {
        self.timer_stalls.fetch_add(1, Ordering::Relaxed);
        let mut logged = self.timer_stall_logged_ms.lock().expect("stall log time poisoned");
        if logged.is_none_or(|t| now_ms.saturating_sub(t) >= TIMER_STALL_LOG_INTERVAL_MS) {
            *logged = Some(now_ms);
            tracing::warn!(%peer, deadline_ms, now_ms, "a sync session keeps asking to be woken in the past");
        }
    }
}

/// Folds a session step into the peer's record: its counters, the lag,
/// and the time of the last frame received.
fn record_step(shared: &Shared, peer: NodeId, connection: usize, session: &Session, lag: u64, received: bool) {
    let now = shared.now_ms();
    shared.update_peer(peer, |record| {
        record.connection_stepped(connection, session.stats());
        if record.newest == Some(connection) {
            record.transfer = session.transfer_status();
        }
        record.lag_changes = lag;
        if received {
            record.last_contact_ms = Some(now);
        }
    });
}

/// Changes in `ours` that `theirs` lacks.
fn changes_missing(ours: &VersionVector, theirs: &VersionVector) -> u64 {
    ours.iter().map(|(origin, seq)| seq.saturating_sub(theirs.seq(origin))).sum()
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Runs one session step on the replica's owner thread, and records its counters there:
/// whoever reads the changes it applied through the replica afterwards sees them counted.
async fn step(
    shared: &Arc<Shared>,
    peer: NodeId,
    connection: usize,
    mut session: Session,
    input: Input,
) -> Result<Result<(Session, Vec<Vec<u8>>, Vec<Event>), Stopped>, tokio::task::JoinError> {
    let now = shared.now_ms();
    let handle = shared.replica.clone();
    let shared = shared.clone();
    let work = move || {
        handle.call(move |replica| {
            let received = matches!(input, Input::Frame(_));
            match input {
                // A frame the session refuses closes it; the Close frame goes out below.
                Input::Frame(bytes) => drop(session.handle_frame(now, &bytes, replica)),
                Input::StoreChanged => session.handle_store_changed(),
                Input::Timer => session.handle_timeout(now),
                Input::Start => {}
            }
            let mut out = Vec::new();
            while let Some(bytes) = session.poll_transmit(now, replica) {
                out.push(bytes);
            }
            let events = std::iter::from_fn(|| session.poll_event()).collect();
            let lag = changes_missing(replica.version_vector(), session.peer_vector());
            record_step(&shared, peer, connection, &session, lag, received);
            (session, out, events)
        })
    };
    tokio::task::spawn_blocking(work).await
}

/// The replica's owner thread refused a session's call. While the store is closed for
/// recovery (`ReplicaHandle::health` is not `Ok`) that is this node's failure, as a
/// failing store call inside the session is: counted in `store_failures`, logged at
/// ERROR, and recorded as a local error so that the dialer's backoff keeps growing and
/// the peer's lag shows the node falling behind. At shutdown it is just the end.
fn owner_refused(shared: &Shared, peer: NodeId, progress: &mut Progress, stopped: Stopped) -> DriveError {
    let health = shared.replica.health();
    if health != StoreHealth::Ok {
        shared.store_failures.fetch_add(1, Ordering::Relaxed);
        tracing::error!(%peer, ?health, "sync session closed: the local store is unavailable; the peer retries later");
        progress.error = Some(ProtocolError::StoreUnavailable { health });
    }
    DriveError::Stopped(stopped)
}

/// Reads length-prefixed frames; an oversized length or a broken stream ends the reader
/// with an error before anything is allocated for it.
async fn read_frames(mut recv: quinn::RecvStream, frames: mpsc::Sender<Result<Vec<u8>, ReadError>>) {
    loop {
        let mut prefix = [0u8; 4];
        let result = match recv.read_exact(&mut prefix).await {
            Err(quinn::ReadExactError::FinishedEarly(0)) => return,
            Err(e) => Err(ReadError::Stream(e)),
            Ok(()) => match frame::frame_length(prefix) {
                Err(e) => Err(ReadError::Frame(e)),
                Ok(len) => {
                    let mut bytes = vec![0u8; len];
                    recv.read_exact(&mut bytes).await.map(|()| bytes).map_err(ReadError::Stream)
                }
            },
        };
        let failed = result.is_err();
        if frames.send(result).await.is_err() || failed {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::ClusterId;

    fn stats(changes_received: u64) -> SessionStats {
        SessionStats { changes_received, ..SessionStats::default() }
    }

    /// Regression (`/v1/peers` undercounted a catch-up): a replaced connection kept
    /// stepping after its successor started and overwrote the one shared slot, so changes
    /// it received were lost from the totals. Each connection now has its own slot.
    #[test]
    fn overlapping_connections_both_count_in_the_totals() {
        let mut record = PeerRecord::default();
        record.connection_started(1);
        record.connection_stepped(1, &stats(5));
        record.connection_started(2); // the replacement, while 1 is still finishing
        record.connection_stepped(1, &stats(7));
        record.connection_stepped(2, &stats(3));
        assert_eq!(record.totals().changes_received, 10);
        record.connection_ended(1);
        record.connection_stepped(2, &stats(4));
        assert_eq!(record.current().changes_received, 4, "the newest connection's own counters");
        record.connection_ended(2);
        assert_eq!(record.totals().changes_received, 11);
        assert_eq!((record.sessions, record.current().changes_received), (2, 4));
    }

    /// The livelock guard: one timer wake-up in vain is tolerated (a deadline can be
    /// reached just before a frame is due); the second in a row is a stall, and the
    /// session is woken later instead of at once; any progress starts the count over.
    #[test]
    fn a_session_woken_twice_in_vain_for_the_past_is_a_stall() {
        let mut stalls = TimerStalls::default();
        assert_eq!(stalls.check(1_000, 900, true), (900, false));
        assert_eq!(stalls.check(1_001, 900, true), (1_001 + TIMER_STALL_DELAY_MS, true));
        assert_eq!(stalls.check(1_200, 900, true), (1_200 + TIMER_STALL_DELAY_MS, true));
        assert_eq!(stalls.check(1_300, 900, false), (900, false), "a frame went out: progress");
        assert_eq!(stalls.check(1_300, 900, true), (900, false));
        assert_eq!(stalls.check(1_301, 5_000, true), (5_000, false), "a deadline in the future is fine");
    }

    /// What an operator reads (`last_error`, the QUIC close reason) when the driver, not
    /// the session, ended a connection: the cause, with the limit it broke.
    #[test]
    fn driver_errors_say_what_failed() {
        let cases = [
            (DriveError::StreamEnded, "stream ended".to_string()),
            (
                DriveError::Read(ReadError::Frame(FrameError::TooLarge(u32::MAX as usize))),
                format!("frame of {} bytes exceeds the {}-byte limit", u32::MAX, frame::FRAME_BYTES_MAX),
            ),
            (DriveError::Stopped(Stopped), Stopped.to_string()),
        ];
        for (error, message) in cases {
            assert_eq!(error.to_string(), message);
        }
    }

    #[test]
    fn a_local_store_failure_is_not_counted_against_the_peer() {
        let faulted = StoreHealth::Faulted { reason: "disk full".into(), reopen_attempts: 1 };
        let cases = [
            (
                ProtocolError::Storage(Arc::new(edgestore::StorageError::Corrupt(
                    edgestore::error::Corruption::NodeId,
                ))),
                CloseKind::StoreFailure,
            ),
            (ProtocolError::StoreUnavailable { health: faulted }, CloseKind::StoreFailure),
            (ProtocolError::ChangeRejected(Arc::new(edgestore::ApplyError::PendingFull(8))), CloseKind::RejectedChange),
            (ProtocolError::WrongCluster { theirs: ClusterId([1; 16]), ours: ClusterId([2; 16]) }, CloseKind::Refusal),
            (ProtocolError::UnsupportedProtocol(9), CloseKind::Refusal),
            (ProtocolError::ClosedByPeer { code: CloseCode::Internal, reason: String::new() }, CloseKind::ByPeer),
            (ProtocolError::Timeout(15_000), CloseKind::ProtocolError),
            (ProtocolError::UnexpectedFrame("a second Hello"), CloseKind::ProtocolError),
        ];
        for (error, kind) in cases {
            assert_eq!(CloseKind::of(&error), kind, "{error}");
        }
    }
}
