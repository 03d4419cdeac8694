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

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edgestore::{NodeId, ReplicaHandle, VersionVector, WriteBatch, WriteError, WriteReceipt};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::fault::{FaultSwitch, FaultySocket};
use super::tls::{self, AllowList, TlsIdentity};
use crate::backoff::Backoff;
use crate::frame;
use crate::session::{Event, ProtocolError, Session, SessionConfig, SessionStats};

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

/// Settings of a sync node.
#[derive(Clone, Debug)]
pub struct SyncNodeConfig {
    /// Session tunables (cluster id, batches, timeouts).
    pub session: SessionConfig,
    /// UDP address to bind.
    pub listen: SocketAddr,
    /// Reconnect backoff: first delay and cap, in ms.
    pub backoff_ms: (u64, u64),
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

/// What a peer connection is doing, for status and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
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
    pub last_error: Option<String>,
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
}

/// What the node keeps per peer.
#[derive(Default)]
struct PeerRecord {
    addr: Option<SocketAddr>,
    dialer: Option<tokio::task::JoinHandle<()>>,
    current: SessionStats,
    /// Counters of the sessions before the current one, summed.
    earlier: SessionStats,
    sessions: u64,
    lag_changes: u64,
    last_contact_ms: Option<u64>,
    last_error: Option<String>,
}

struct Shared {
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    replica: ReplicaHandle,
    local: NodeId,
    session: SessionConfig,
    backoff_ms: (u64, u64),
    origin: Instant,
    changed: watch::Sender<u64>,
    /// Live connections per peer, with the node id that dialled each.
    connections: Mutex<BTreeMap<NodeId, (quinn::Connection, NodeId)>>,
    peers: Mutex<BTreeMap<NodeId, PeerRecord>>,
    allowed: AllowList,
    handshakes_refused: AtomicU64,
    protocol_errors: AtomicU64,
    rejected_changes: AtomicU64,
    shutting_down: AtomicBool,
}

impl Shared {
    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
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
        let socket = Arc::new(FaultySocket::new(runtime.wrap_udp_socket(socket)?, switch.clone()));
        let endpoint =
            quinn::Endpoint::new_with_abstract_socket(quinn::EndpointConfig::default(), Some(server), socket, runtime)?;
        let (changed, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            endpoint,
            client,
            local: replica.node_id(),
            replica,
            session: config.session,
            backoff_ms: config.backoff_ms,
            origin: Instant::now(),
            changed,
            connections: Mutex::new(BTreeMap::new()),
            peers: Mutex::new(BTreeMap::new()),
            allowed,
            handshakes_refused: AtomicU64::new(0),
            protocol_errors: AtomicU64::new(0),
            rejected_changes: AtomicU64::new(0),
            shutting_down: AtomicBool::new(false),
        });
        tokio::spawn(accept_loop(shared.clone()));
        Ok((SyncNode { shared }, switch))
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.shared.local
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> Result<SocketAddr, TransportError> {
        Ok(self.shared.endpoint.local_addr()?)
    }

    /// Allows `peer` and keeps a connection to it at `addr`, reconnecting with backoff,
    /// until it is removed or the node shuts down. Adding a peer again replaces its address.
    pub fn add_peer(&self, peer: NodeId, addr: SocketAddr) {
        self.shared.allowed.write().expect("allow-list poisoned").insert(peer);
        let dialer = tokio::spawn(dial_loop(self.shared.clone(), peer, addr));
        let previous = self.shared.with_peer(peer, |record| {
            record.addr = Some(addr);
            record.dialer.replace(dialer)
        });
        if let Some(previous) = previous {
            previous.abort();
        }
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
                stats: record.current.clone(),
                totals: {
                    let mut totals = record.earlier.clone();
                    totals.add(&record.current);
                    totals
                },
                sessions: record.sessions,
                lag_changes: record.lag_changes,
                last_contact_ms_ago: record.last_contact_ms.map(|t| now.saturating_sub(t)),
                last_error: record.last_error.clone(),
            })
            .collect()
    }

    /// Node-wide counters since the start.
    pub fn counters(&self) -> NodeCounters {
        NodeCounters {
            handshakes_refused: self.shared.handshakes_refused.load(Ordering::Relaxed),
            protocol_errors: self.shared.protocol_errors.load(Ordering::Relaxed),
            rejected_changes: self.shared.rejected_changes.load(Ordering::Relaxed),
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
            // A refused handshake (peer not on the allow-list) ends here.
            let connection = match incoming.await {
                Ok(connection) => connection,
                Err(error) => {
                    shared.handshakes_refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%error, "refused an incoming sync connection");
                    return;
                }
            };
            let Some(peer) = tls::peer_node_id(&connection) else { return };
            run_connection(shared, connection, peer, false).await;
        });
    }
}

async fn dial_loop(shared: Arc<Shared>, peer: NodeId, addr: SocketAddr) {
    let mut backoff = Backoff::new(shared.backoff_ms.0, shared.backoff_ms.1);
    loop {
        if shared.shutting_down.load(Ordering::SeqCst) {
            return;
        }
        if !shared.is_connected(peer) {
            match shared.endpoint.connect_with(shared.client.clone(), addr, &format!("{peer}.edgestore")) {
                Ok(connecting) => match connecting.await {
                    Ok(connection) if tls::peer_node_id(&connection) == Some(peer) => {
                        backoff.reset();
                        run_connection(shared.clone(), connection, peer, true).await;
                    }
                    Ok(connection) => connection.close(CLOSE_PROTOCOL.into(), b"unexpected node id"),
                    Err(error) => tracing::debug!(%peer, %error, "connecting failed"),
                },
                Err(error) => tracing::warn!(%peer, %error, "cannot connect"),
            }
        }
        tokio::time::sleep(Duration::from_millis(backoff.next_delay_ms(jitter()))).await;
    }
}

/// Jitter in `[0, 1)` from the process's random hasher keys: enough to spread reconnects,
/// and the transport edge is where OS randomness is allowed.
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u8(0);
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// What woke a connection's session.
enum Input {
    Start,
    Frame(Vec<u8>),
    StoreChanged,
    Timer,
}

async fn run_connection(shared: Arc<Shared>, connection: quinn::Connection, peer: NodeId, dialed: bool) {
    let dialer = if dialed { shared.local } else { peer };
    if !shared.register(peer, &connection, dialer) {
        connection.close(CLOSE_DUPLICATE.into(), b"duplicate connection");
        return;
    }
    // The server may still refuse our certificate after this side's handshake completed,
    // so the session is reported established only when the peer's Hello arrives.
    tracing::debug!(%peer, "QUIC connection up");
    shared.with_peer(peer, |record| {
        record.sessions += 1;
        let ended = std::mem::take(&mut record.current);
        record.earlier.add(&ended);
    });
    let result = drive_connection(&shared, &connection, peer, dialed).await;
    if let Err(reason) = &result {
        tracing::info!(%peer, %reason, "sync connection closed");
        connection.close(CLOSE_PROTOCOL.into(), reason.as_bytes());
    } else {
        connection.close(CLOSE_OK.into(), b"session closed");
    }
    shared.update_peer(peer, |record| record.last_error = result.err());
    shared.unregister(peer, &connection);
}

async fn drive_connection(
    shared: &Arc<Shared>,
    connection: &quinn::Connection,
    peer: NodeId,
    dialed: bool,
) -> Result<(), String> {
    let stream = if dialed { connection.open_bi().await } else { connection.accept_bi().await };
    let (mut send, recv) = stream.map_err(|e| e.to_string())?;
    let (frames_tx, mut frames) = mpsc::channel(READ_QUEUE_FRAMES_MAX);
    let reader = tokio::spawn(read_frames(recv, frames_tx));
    let handle = shared.replica.clone();
    let vector = tokio::task::spawn_blocking(move || handle.call(|r| r.version_vector().clone()))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let mut session = Some(Session::new(shared.session.clone(), shared.local, peer, &vector, shared.now_ms()));
    let mut changed = shared.changed.subscribe();
    let mut input = Input::Start;
    let result = loop {
        let received = matches!(input, Input::Frame(_));
        let (next, out, events, lag) = step(shared, session.take().expect("session returned by step"), input).await?;
        for bytes in out {
            send.write_all(&frame::length_prefixed(&bytes)).await.map_err(|e| e.to_string())?;
        }
        record_step(shared, peer, &next, lag, received);
        for event in events {
            match event {
                Event::Applied(_) => shared.notify_changed(),
                Event::Closed { error: Some(ProtocolError::ChangeRejected(_)) } => {
                    shared.rejected_changes.fetch_add(1, Ordering::Relaxed);
                }
                Event::Closed { error: Some(ProtocolError::ClosedByPeer { .. }) | None } => {}
                Event::Closed { error: Some(_) } => {
                    shared.protocol_errors.fetch_add(1, Ordering::Relaxed);
                }
                Event::Established { peer_vector } => {
                    tracing::info!(%peer, peer_changes = peer_vector.total_changes(), "sync session established");
                }
                _ => {}
            }
        }
        if next.is_closed() {
            let _ = send.finish();
            break Ok(());
        }
        let deadline = next.poll_timeout().map(|t| shared.origin + Duration::from_millis(t));
        session = Some(next);
        input = tokio::select! {
            frame = frames.recv() => match frame {
                Some(Ok(bytes)) => Input::Frame(bytes),
                Some(Err(reason)) => break Err(reason),
                None => break Err("stream ended".to_string()),
            },
            _ = changed.changed() => Input::StoreChanged,
            _ = sleep_until(deadline) => Input::Timer,
        };
    };
    reader.abort();
    result
}

/// Folds a session step into the peer's record: its counters, the lag,
/// and the time of the last frame received.
fn record_step(shared: &Shared, peer: NodeId, session: &Session, lag: u64, received: bool) {
    let now = shared.now_ms();
    shared.update_peer(peer, |record| {
        record.current = session.stats().clone();
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

/// Runs one session step on the replica's owner thread.
async fn step(
    shared: &Arc<Shared>,
    mut session: Session,
    input: Input,
) -> Result<(Session, Vec<Vec<u8>>, Vec<Event>, u64), String> {
    let now = shared.now_ms();
    let handle = shared.replica.clone();
    let work = move || {
        handle.call(move |replica| {
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
            (session, out, events, lag)
        })
    };
    tokio::task::spawn_blocking(work).await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())
}

/// Reads length-prefixed frames; an oversized length or a broken stream ends the reader
/// with an error before anything is allocated for it.
async fn read_frames(mut recv: quinn::RecvStream, frames: mpsc::Sender<Result<Vec<u8>, String>>) {
    loop {
        let mut prefix = [0u8; 4];
        let result = match recv.read_exact(&mut prefix).await {
            Err(quinn::ReadExactError::FinishedEarly(0)) => return,
            Err(e) => Err(e.to_string()),
            Ok(()) => match frame::frame_length(prefix) {
                Err(e) => Err(e.to_string()),
                Ok(len) => {
                    let mut bytes = vec![0u8; len];
                    recv.read_exact(&mut bytes).await.map(|()| bytes).map_err(|e| e.to_string())
                }
            },
        };
        let failed = result.is_err();
        if frames.send(result).await.is_err() || failed {
            return;
        }
    }
}
