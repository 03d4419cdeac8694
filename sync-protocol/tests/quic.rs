//! Real QUIC on loopback: three nodes sync, one is cut off and healed, and hostile peers are
//! refused or disconnected without disturbing the honest ones.
//!
//! These tests wait for conditions (convergence, a closed connection) with a generous
//! bound; they never assert how long anything took.

mod common;
use common::node_id;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use edgestore::{ColumnDef, ColumnType, NodeId, Replica, ReplicaHandle, TableSchema, Value, WriteBatch};
use sync_protocol::frame::{self, Frame};
use sync_protocol::transport::tls::{self, AllowList, TlsIdentity};
use sync_protocol::transport::{
    DialOutcome, FaultSwitch, PeerError, RefusalCause, RefusalReason, SyncNode, SyncNodeConfig,
};
use sync_protocol::{ClusterId, SessionConfig};

/// Upper bound for any awaited condition; reaching it fails the test.
const WAIT_MAX: Duration = Duration::from_secs(60);
const CLUSTER: ClusterId = ClusterId([9; 16]);

struct TestNode {
    node: SyncNode,
    switch: FaultSwitch,
    handle: ReplicaHandle,
    addr: SocketAddr,
}

fn key_pair() -> rcgen::KeyPair {
    rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap()
}

fn session_config() -> SessionConfig {
    let mut config = SessionConfig::new(CLUSTER);
    // Short timers so that a cut-off node is noticed quickly on loopback.
    config.keepalive_ms = 200;
    config.idle_timeout_ms = 1_500;
    config.ack_timeout_ms = 1_500;
    config
}

fn start(dir: &tempfile::TempDir, index: usize, key_pair: &rcgen::KeyPair, allowed: AllowList) -> TestNode {
    let replica = Replica::open(dir.path().join(format!("n{index}.redb")), node_id(key_pair)).unwrap();
    start_replica(replica, key_pair, allowed)
}

/// Runs a node on a replica the test prepared.
fn start_replica(replica: Replica, key_pair: &rcgen::KeyPair, allowed: AllowList) -> TestNode {
    let (handle, _thread) = ReplicaHandle::spawn(replica);
    let config = SyncNodeConfig {
        session: session_config(),
        listen: "127.0.0.1:0".parse().unwrap(),
        backoff_ms: (50, 500),
        clock_base_ms: 0,
    };
    let (node, switch) = SyncNode::start(handle.clone(), key_pair, allowed, config).unwrap();
    let addr = node.local_addr().unwrap();
    TestNode { node, switch, handle, addr }
}

fn table() -> TableSchema {
    TableSchema::new("readings")
        .column(ColumnDef::new("id", ColumnType::Integer))
        .column(ColumnDef::new("node", ColumnType::Integer))
        .column(ColumnDef::new("total", ColumnType::Counter))
        .primary_key(&["id"])
}

fn digest(node: &TestNode) -> String {
    node.handle.call(|r| r.state_digest().unwrap().to_string()).unwrap()
}

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT_MAX;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "gave up waiting for {what} after {WAIT_MAX:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn mesh(count: usize) -> (tempfile::TempDir, Vec<TestNode>, AllowList) {
    let dir = tempfile::TempDir::new().unwrap();
    let keys: Vec<_> = (0..count).map(|_| key_pair()).collect();
    let allowed: AllowList = Arc::new(RwLock::new(keys.iter().map(node_id).collect::<BTreeSet<_>>()));
    let nodes: Vec<TestNode> = keys.iter().enumerate().map(|(i, k)| start(&dir, i, k, allowed.clone())).collect();
    for a in &nodes {
        for b in &nodes {
            if a.node.node_id() != b.node.node_id() {
                a.node.add_peer(b.node.node_id(), b.addr);
            }
        }
    }
    (dir, nodes, allowed)
}

async fn write_row(node: &TestNode, id: i64, origin: i64) {
    let batch = WriteBatch::new().insert("readings", [("id", Value::from(id)), ("node", Value::from(origin))]);
    node.node.write(batch, 0).await.unwrap();
}

fn rows(node: &TestNode) -> usize {
    node.handle.call(|r| r.snapshot().unwrap().scan("readings").unwrap().count()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_converge_after_one_is_cut_off_and_healed() {
    let (_dir, nodes, _) = mesh(3).await;
    nodes[0].node.write(WriteBatch::new().create_table(table()), 0).await.unwrap();
    wait_until("the table on every node", || {
        nodes.iter().all(|n| n.handle.call(|r| r.catalog().table("readings").is_some()).unwrap())
    })
    .await;
    let mut acked = 0;
    for (i, node) in nodes.iter().enumerate() {
        for k in 0..10 {
            write_row(node, (i * 1000 + k) as i64, i as i64).await;
            acked += 1;
        }
    }
    wait_until("convergence before the cut", || {
        rows(&nodes[0]) == acked && nodes.iter().all(|n| digest(n) == digest(&nodes[0]))
    })
    .await;

    nodes[2].switch.cut();
    for (i, node) in nodes.iter().enumerate() {
        for k in 10..30 {
            write_row(node, (i * 1000 + k) as i64, i as i64).await;
            acked += 1;
        }
        let bump = WriteBatch::new().increment("readings", vec![Value::from(0)], "total", 1 + i as i64);
        node.node.write(bump, 0).await.unwrap();
    }
    wait_until("the connected pair to converge", || digest(&nodes[0]) == digest(&nodes[1]) && rows(&nodes[0]) == 70)
        .await;
    assert_eq!(rows(&nodes[2]), 50, "the cut-off node received nothing while cut off");

    nodes[2].switch.heal();
    wait_until("all three to converge after heal", || {
        let first = digest(&nodes[0]);
        nodes.iter().all(|n| digest(n) == first)
    })
    .await;
    for node in &nodes {
        assert_eq!(rows(node), acked, "no acknowledged write is lost");
        let total = node
            .handle
            .call(|r| r.snapshot().unwrap().get("readings", &[Value::from(0)]).unwrap().unwrap()[2].clone())
            .unwrap();
        assert_eq!(total, Value::from(1 + 2 + 3), "counter increments from all three nodes add up");
        assert!(node.handle.call(|r| r.check_integrity().unwrap().is_empty()).unwrap());
        // The session timer rule held through the cut (a breach is counted by the driver).
        assert_eq!(node.node.counters().timer_stalls, 0);
    }
    for node in &nodes {
        node.node.shutdown().await;
    }
}

/// A raw QUIC client speaking as `key_pair`, trusting the given servers.
async fn raw_connect(key_pair: &rcgen::KeyPair, server: &TestNode) -> Result<quinn::Connection, String> {
    let identity = TlsIdentity::new(key_pair).unwrap();
    let trusted: AllowList = Arc::new(RwLock::new([server.node.node_id()].into_iter().collect()));
    let client = quinn::ClientConfig::new(Arc::new(tls::client_crypto(&identity, trusted).unwrap()));
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(client);
    let connecting = endpoint.connect(server.addr, "peer.edgestore").map_err(|e| e.to_string())?;
    let connection = connecting.await.map_err(|e| e.to_string())?;
    // Without an exchanged stream, a refused client certificate shows only on first use.
    Ok(connection)
}

async fn closed_by_node(connection: &quinn::Connection) -> bool {
    let closed = tokio::time::timeout(WAIT_MAX, connection.closed()).await.expect("the node closes the connection");
    matches!(closed, quinn::ConnectionError::ApplicationClosed(_) | quinn::ConnectionError::ConnectionClosed(_))
}

fn hello(key_pair: &rcgen::KeyPair) -> Vec<u8> {
    Frame::Hello {
        protocol: frame::PROTOCOL_VERSION,
        cluster: serde_bytes::ByteBuf::from(CLUSTER.0.to_vec()),
        node: serde_bytes::ByteBuf::from(node_id(key_pair).as_bytes().to_vec()),
        vector: vec![],
    }
    .encode()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_peers_are_refused_or_disconnected_and_honest_peers_carry_on() {
    let (_dir, nodes, allowed) = mesh(2).await;
    nodes[0].node.write(WriteBatch::new().create_table(table()), 0).await.unwrap();

    // 1. An unknown node id is refused during the TLS handshake: no stream ever opens.
    let stranger = key_pair();
    let refused = match raw_connect(&stranger, &nodes[0]).await {
        Err(_) => true,
        Ok(connection) => match connection.open_bi().await {
            Err(_) => true,
            Ok((mut send, mut recv)) => {
                let _ = send.write_all(&frame::length_prefixed(&hello(&stranger))).await;
                recv.read_to_end(1024).await.is_err()
            }
        },
    };
    assert!(refused, "a node that is not on the allow-list must be refused");

    // Hostile peers below are on the allow-list but misbehave.
    let hostile = key_pair();
    allowed.write().unwrap().insert(node_id(&hostile));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("an oversized frame", u32::MAX.to_be_bytes().to_vec()),
        ("garbage bytes", frame::length_prefixed(&[0xde, 0xad, 0xbe, 0xef, 0x00, 0x13])),
        (
            "a replayed Hello",
            [frame::length_prefixed(&hello(&hostile)), frame::length_prefixed(&hello(&hostile))].concat(),
        ),
        (
            "an Ack for a batch never sent (replayed from another session)",
            [
                frame::length_prefixed(&hello(&hostile)),
                frame::length_prefixed(&Frame::Ack { batch: 7, vector: vec![] }.encode()),
            ]
            .concat(),
        ),
    ];
    for (what, bytes) in cases {
        let connection = raw_connect(&hostile, &nodes[0]).await.unwrap_or_else(|e| panic!("{what}: connect: {e}"));
        let (mut send, _recv) = connection.open_bi().await.unwrap();
        send.write_all(&bytes).await.unwrap();
        assert!(closed_by_node(&connection).await, "{what}: the node must close the connection");
    }

    // Honest peers are unaffected: a write on one still reaches the other.
    wait_until("the table on node 1", || nodes[1].handle.call(|r| r.catalog().table("readings").is_some()).unwrap())
        .await;
    write_row(&nodes[0], 1, 0).await;
    wait_until("the honest peer to receive a new write", || rows(&nodes[1]) == 1).await;
    for node in &nodes {
        assert!(node.handle.call(|r| r.check_integrity().unwrap().is_empty()).unwrap());
        node.node.shutdown().await;
    }
}

/// Reconnect backoff of the refusal tests: first delay and cap, in ms.
const REFUSAL_BACKOFF_MS: (u64, u64) = (20, 320);
/// Dial attempts the refusal tests check against the schedule.
const REFUSAL_ATTEMPTS: usize = 7;

/// A node of `cluster` trusting exactly `allowed`, with the refusal tests' backoff.
fn start_refusing(
    dir: &tempfile::TempDir,
    index: usize,
    key_pair: &rcgen::KeyPair,
    allowed: &[NodeId],
    cluster: ClusterId,
) -> TestNode {
    let id = node_id(key_pair);
    let replica = Replica::open(dir.path().join(format!("r{index}.redb")), id).unwrap();
    let (handle, _thread) = ReplicaHandle::spawn(replica);
    let mut session = session_config();
    session.cluster = cluster;
    let listen = "127.0.0.1:0".parse().unwrap();
    let config = SyncNodeConfig { session, listen, backoff_ms: REFUSAL_BACKOFF_MS, clock_base_ms: 0 };
    let allowed: AllowList = Arc::new(RwLock::new(allowed.iter().copied().collect()));
    let (node, switch) = SyncNode::start(handle.clone(), key_pair, allowed, config).unwrap();
    let addr = node.local_addr().unwrap();
    TestNode { node, switch, handle, addr }
}

/// Waits for `REFUSAL_ATTEMPTS` dial attempts from `dialer` to `peer` and checks them as the
/// node recorded them: every one refused for `reason`, steps 0, 1, 2, … (a refusal never
/// resets the backoff), each delay in `[d/2, d]` for `d = min(base × 2^step, cap)`; and
/// the refusals counted per reason, none as a protocol error.
async fn check_refused_with_backoff(dialer: &TestNode, peer: NodeId, reason: RefusalReason) {
    wait_until("the refused dial attempts", || dialer.node.dial_history(peer).len() >= REFUSAL_ATTEMPTS).await;
    let history = dialer.node.dial_history(peer);
    let (base, cap) = REFUSAL_BACKOFF_MS;
    for (step, attempt) in history.iter().take(REFUSAL_ATTEMPTS).enumerate() {
        let status = dialer.node.peer_status();
        assert_eq!(attempt.outcome, DialOutcome::Refused(reason), "attempt {step}: {history:?} {status:?}");
        assert_eq!(attempt.step, step as u32, "attempt {step}: the backoff was reset: {history:?}");
        let d = (base << step).min(cap);
        assert!(
            (d / 2..=d).contains(&attempt.delay_ms),
            "attempt {step}: delay {} not in [{}, {d}]",
            attempt.delay_ms,
            d / 2
        );
    }
    let counters = dialer.node.counters();
    assert!(counters.peers_refused[&reason] >= REFUSAL_ATTEMPTS as u64, "{counters:?}");
    assert_eq!(counters.protocol_errors, 0, "a refusal is not a protocol error: {counters:?}");
}

/// Issue 9 item 6: a peer that is not on the other's allow-list is refused in the TLS
/// handshake (alert `access_denied`); the dialer reports "not allowed" and backs off
/// exponentially, the refusing side counts it per reason, neither calls it a protocol error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_not_on_the_allow_list_is_refused_with_backoff() {
    let dir = tempfile::TempDir::new().unwrap();
    let (ka, kb) = (key_pair(), key_pair());
    let a = start_refusing(&dir, 0, &ka, &[], CLUSTER);
    let b = start_refusing(&dir, 1, &kb, &[], CLUSTER); // does not allow a
    a.node.add_peer(b.node.node_id(), b.addr);
    check_refused_with_backoff(&a, b.node.node_id(), RefusalReason::NotAllowed).await;
    let counters = b.node.counters();
    assert!(counters.peers_refused[&RefusalReason::NotAllowed] >= 1, "{counters:?}");
    assert!(counters.handshakes_refused >= 1 && counters.protocol_errors == 0, "{counters:?}");
    a.node.shutdown().await;
    b.node.shutdown().await;
}

/// Issue 9 item 6: peers of different clusters that allow each other are refused after
/// the `Hello`s, reported as "cluster mismatch: theirs X, ours Y" (not "connection lost",
/// not a protocol error), and the dialer backs off exponentially.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_of_another_cluster_is_refused_with_backoff_and_the_real_reason() {
    let dir = tempfile::TempDir::new().unwrap();
    let (ka, kb) = (key_pair(), key_pair());
    let other = ClusterId([4; 16]);
    let a = start_refusing(&dir, 0, &ka, &[node_id(&kb)], CLUSTER);
    let b = start_refusing(&dir, 1, &kb, &[node_id(&ka)], other);
    a.node.add_peer(b.node.node_id(), b.addr);
    check_refused_with_backoff(&a, b.node.node_id(), RefusalReason::ClusterMismatch).await;
    let status = a.node.peer_status().into_iter().find(|p| p.node_id == b.node.node_id()).unwrap();
    let Some(PeerError::Refused(refusal)) = &status.last_error else { panic!("{:?}", status.last_error) };
    assert_eq!(refusal.reason, RefusalReason::ClusterMismatch);
    assert_eq!(refusal.to_string(), format!("cluster mismatch: theirs {other}, ours {CLUSTER}"));
    assert_eq!(status.sessions as usize, status.dial_attempts as usize, "each attempt got as far as a session");
    let counters = b.node.counters();
    assert!(counters.peers_refused[&RefusalReason::ClusterMismatch] >= 1, "{counters:?}");
    assert_eq!(counters.protocol_errors, 0, "{counters:?}");
    a.node.shutdown().await;
    b.node.shutdown().await;
}

/// Issue 9 item 6: the certificate at a peer's address proves another node than the one
/// dialled (an address reused by another node, or an impostor): refused as a bad
/// certificate, with backoff; the peer's `last_error` names the node proved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_a_certificate_for_another_node_is_refused_with_backoff() {
    let dir = tempfile::TempDir::new().unwrap();
    let (ka, kb, expected) = (key_pair(), key_pair(), key_pair());
    let a = start_refusing(&dir, 0, &ka, &[node_id(&kb)], CLUSTER);
    let b = start_refusing(&dir, 1, &kb, &[node_id(&ka)], CLUSTER);
    a.node.add_peer(node_id(&expected), b.addr);
    check_refused_with_backoff(&a, node_id(&expected), RefusalReason::BadCertificate).await;
    let status = a.node.peer_status().into_iter().find(|p| p.node_id == node_id(&expected)).unwrap();
    let Some(PeerError::Refused(refusal)) = &status.last_error else { panic!("{:?}", status.last_error) };
    let (proved, dialled) = (b.node.node_id(), node_id(&expected));
    assert!(
        matches!(refusal.cause, RefusalCause::WrongNode { proves: Some(p), expected: e, .. } if p == proved && e == dialled),
        "{refusal:?}"
    );
    assert_eq!(refusal.to_string(), format!("the certificate at {} proves node {proved}, not {dialled}", b.addr));
    a.node.shutdown().await;
    b.node.shutdown().await;
}

/// Issue 9 ("/v1/peers undercounts changes received during some catch-ups"): after a
/// catch-up of 201 changes over real QUIC, the receiver's per-peer totals show exactly
/// the changes it received, as soon as the rows are visible through the replica, and the
/// sender's show exactly the changes it sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_peer_totals_add_up_exactly_after_a_catch_up() {
    const BATCHES: i64 = 200;
    const ROWS_PER_BATCH: i64 = 20;
    let dir = tempfile::TempDir::new().unwrap();
    let (ka, kb) = (key_pair(), key_pair());
    let a = start_refusing(&dir, 0, &ka, &[node_id(&kb)], CLUSTER);
    a.node.write(WriteBatch::new().create_table(table()), 0).await.unwrap();
    for batch in 0..BATCHES {
        let mut write = WriteBatch::new();
        for row in 0..ROWS_PER_BATCH {
            let id = batch * ROWS_PER_BATCH + row;
            write = write.insert("readings", [("id", Value::from(id)), ("node", Value::from(0))]);
        }
        a.node.write(write, 0).await.unwrap();
    }
    let b = start_refusing(&dir, 1, &kb, &[node_id(&ka)], CLUSTER);
    b.node.add_peer(a.node.node_id(), a.addr);
    let expected = (BATCHES * ROWS_PER_BATCH) as usize;
    wait_until("the catch-up", || {
        b.handle.call(|r| r.catalog().table("readings").is_some()).unwrap() && rows(&b) == expected
    })
    .await;
    let changes = 1 + BATCHES as u64;
    let at_b = b.node.peer_status().into_iter().find(|p| p.node_id == a.node.node_id()).unwrap();
    assert_eq!(at_b.totals.changes_received, changes, "{at_b:?}");
    let at_a = a.node.peer_status().into_iter().find(|p| p.node_id == b.node.node_id()).unwrap();
    assert_eq!(at_a.totals.changes_sent, changes, "{at_a:?}");
    assert_eq!((at_b.totals.changes_sent, at_a.totals.changes_received), (0, 0));
    assert_eq!((at_a.sessions, at_b.sessions), (1, 1), "one connection, never replaced");
    a.node.shutdown().await;
    b.node.shutdown().await;
}

/// A new node joins a node whose log has a floor (it caught up by a state transfer from a
/// replica that is gone, as after compaction): over real QUIC it is offered the documents,
/// receives them in batches, installs the vector and then streams both ways; the progress
/// shows in the peer records, and the session timers never stalled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_node_joins_a_donor_with_a_log_floor_over_quic() {
    const ROWS: i64 = 3_000;
    let dir = tempfile::TempDir::new().unwrap();
    let (kc, kd) = (key_pair(), key_pair());
    let allowed: AllowList = Arc::new(RwLock::new([node_id(&kc), node_id(&kd)].into_iter().collect()));
    // The origin of the rows, offline: the donor received its documents, not its log.
    let mut origin = Replica::open(dir.path().join("origin.redb"), NodeId([0x0E; 16])).unwrap();
    origin.write(WriteBatch::new().create_table(table()), 0).unwrap();
    for start in (0..ROWS).step_by(500) {
        let mut batch = WriteBatch::new();
        for id in start..start + 500 {
            batch = batch.insert("readings", [("id", Value::from(id)), ("node", Value::from(0))]);
        }
        origin.write(batch, 0).unwrap();
    }
    let mut donor = Replica::open(dir.path().join("c.redb"), node_id(&kc)).unwrap();
    donor.transfer_from(&origin).unwrap();
    assert!(!donor.log_floor().is_empty());
    let c = start_replica(donor, &kc, allowed.clone());
    let d = start(&dir, 1, &kd, allowed);
    d.node.add_peer(c.node.node_id(), c.addr);
    c.node.add_peer(d.node.node_id(), d.addr);
    wait_until("the new node to catch up", || {
        let vectors = |n: &TestNode| n.handle.call(|r| r.version_vector().clone()).unwrap();
        vectors(&d) == vectors(&c) && digest(&d) == digest(&c)
    })
    .await;
    assert_eq!(rows(&d), ROWS as usize);
    let at_d = d.node.peer_status().into_iter().find(|p| p.node_id == c.node.node_id()).unwrap();
    assert_eq!(at_d.totals.transfer_docs_received, ROWS as u64 + 1, "{at_d:?}");
    assert_eq!(at_d.totals.transfers_completed, 1);
    assert_eq!(at_d.totals.changes_received, 0, "nothing by log replay");
    // Streaming continues above the installed vector, both ways.
    write_row(&d, ROWS + 1, 1).await;
    write_row(&c, ROWS + 2, 2).await;
    wait_until("both writes on both nodes", || rows(&c) == ROWS as usize + 2 && digest(&c) == digest(&d)).await;
    for node in [&c, &d] {
        assert!(node.handle.call(|r| r.check_integrity().unwrap().is_empty()).unwrap());
        assert_eq!(node.node.counters().timer_stalls, 0);
    }
    c.node.shutdown().await;
    d.node.shutdown().await;
}
