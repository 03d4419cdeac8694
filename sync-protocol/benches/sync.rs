//! Benchmarks B3, B4 and B5 (BRIEF §8), each next to raw quinn measured in the same run.
//!
//! - B3 sync efficiency: frames, bytes and round trips for in-sync and slightly diverged
//!   peers, and wire bytes per replicated row against the row's change size. Counted
//!   exactly by driving two sans-IO sessions against each other (no timing involved); raw
//!   quinn's own handshake bytes are printed as the floor any QUIC sync pays.
//! - B4 replication latency: 3 nodes on loopback QUIC, writes on A at ~1k/s, the time until
//!   each write is visible on B; next to a raw quinn 100-byte round trip.
//! - B5 catch-up: a node 100k rows behind reconnects; rows applied per second; next to raw
//!   quinn bulk throughput of the same bytes.
//!
//! `cargo bench -p sync-protocol --bench sync`; `EDGESTORE_BENCH_SCALE=<f>` scales sizes.

#![allow(clippy::disallowed_methods)] // reason: benchmarks measure wall time

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use edgestore::{ColumnDef, ColumnType, NodeId, Replica, ReplicaHandle, TableSchema, Value, VersionVector, WriteBatch};
use sync_protocol::transport::tls::{self, AllowList, TlsIdentity};
use sync_protocol::transport::{SyncNode, SyncNodeConfig};
use sync_protocol::{ClusterId, Session, SessionConfig};

const CLUSTER: ClusterId = ClusterId([3; 16]);

fn scale(n: usize) -> usize {
    let factor: f64 = std::env::var("EDGESTORE_BENCH_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1.0);
    ((n as f64 * factor) as usize).max(1)
}

fn table() -> TableSchema {
    TableSchema::new("readings")
        .column(ColumnDef::new("id", ColumnType::Integer))
        .column(ColumnDef::new("sensor", ColumnType::Text))
        .column(ColumnDef::new("value", ColumnType::Real))
        .column(ColumnDef::new("ts", ColumnType::Timestamp))
        .primary_key(&["id"])
}

fn row(id: i64) -> [(&'static str, Value); 4] {
    [
        ("id", Value::from(id)),
        ("sensor", Value::from(format!("sensor-{}", id % 97))),
        ("value", Value::from(id as f64 * 0.5)),
        ("ts", Value::Timestamp(1_700_000_000_000 + id)),
    ]
}

fn write_rows(replica: &mut Replica, ids: std::ops::Range<i64>, per_batch: usize) {
    let ids: Vec<i64> = ids.collect();
    for chunk in ids.chunks(per_batch) {
        let mut batch = WriteBatch::new();
        for &id in chunk {
            batch = batch.insert("readings", row(id));
        }
        replica.write(batch, 0).unwrap();
    }
}

// ---------------------------------------------------------------- B3

/// Frames, bytes and round trips of one exchange between two sessions until quiescent.
struct Exchange {
    frames: u64,
    bytes: u64,
    round_trips: u64,
    changes: u64,
}

/// Drives two sessions in lockstep flights: each flight delivers everything both sides
/// sent in the previous one. Two flights make a round trip.
fn exchange(a: &mut Replica, b: &mut Replica) -> Exchange {
    let config = SessionConfig::new(CLUSTER);
    let mut sa = Session::new(config.clone(), a.node_id(), b.node_id(), a.version_vector(), 0);
    let mut sb = Session::new(config, b.node_id(), a.node_id(), b.version_vector(), 0);
    let (mut frames, mut bytes, mut flights) = (0, 0, 0u64);
    loop {
        let from_a: Vec<Vec<u8>> = std::iter::from_fn(|| sa.poll_transmit(0, a)).collect();
        let from_b: Vec<Vec<u8>> = std::iter::from_fn(|| sb.poll_transmit(0, b)).collect();
        if from_a.is_empty() && from_b.is_empty() {
            break;
        }
        flights += 1;
        for frame in &from_a {
            sb.handle_frame(0, frame, b).unwrap();
        }
        for frame in &from_b {
            sa.handle_frame(0, frame, a).unwrap();
        }
        frames += (from_a.len() + from_b.len()) as u64;
        bytes += from_a.iter().chain(&from_b).map(Vec::len).sum::<usize>() as u64;
    }
    let changes = sa.stats().changes_sent + sb.stats().changes_sent;
    Exchange { frames, bytes, round_trips: flights.div_ceil(2), changes }
}

fn replica_pair(dir: &tempfile::TempDir, tag: &str) -> (Replica, Replica) {
    let a = Replica::open(dir.path().join(format!("{tag}-a.redb")), NodeId([0xA; 16])).unwrap();
    let b = Replica::open(dir.path().join(format!("{tag}-b.redb")), NodeId([0xB; 16])).unwrap();
    (a, b)
}

fn bench_b3(dir: &tempfile::TempDir) {
    println!("B3 sync efficiency (exact counts from the sans-IO sessions; frames without QUIC/TLS overhead)");
    let rows = scale(1000) as i64;
    let (mut a, mut b) = replica_pair(dir, "b3");
    a.write(WriteBatch::new().create_table(table()), 0).unwrap();
    write_rows(&mut a, 0..rows, 100);
    let initial = exchange(&mut a, &mut b);
    let again = exchange(&mut a, &mut b);
    println!(
        "  in-sync peers ({rows} rows each): {} frames, {} bytes, {} round trip(s)   [floor: 1 round trip, <= 1 KB]",
        again.frames, again.bytes, again.round_trips
    );
    write_rows(&mut a, rows..rows + 10, 1);
    let diverged = exchange(&mut a, &mut b);
    println!(
        "  slightly diverged (10 single-row changes): {} frames, {} bytes, {} round trip(s), {} changes",
        diverged.frames, diverged.bytes, diverged.round_trips, diverged.changes
    );
    let (mut c, mut d) = replica_pair(dir, "b3rows");
    c.write(WriteBatch::new().create_table(table()), 0).unwrap();
    exchange(&mut c, &mut d);
    let before = c.version_vector().clone();
    write_rows(&mut c, 0..rows, 1);
    let changes = c.changes_since(&before, usize::MAX, usize::MAX).unwrap().changes;
    let envelope_bytes: usize = changes.iter().map(Vec::len).sum();
    let replicated = exchange(&mut c, &mut d);
    let per_row_wire = replicated.bytes as f64 / rows as f64;
    let per_row_change = envelope_bytes as f64 / rows as f64;
    println!(
        "  {rows} single-row writes: {per_row_wire:.1} wire bytes/row vs {per_row_change:.1} change bytes/row = {:.2}x   [floor <= 2x, goal <= 1.2x]",
        per_row_wire / per_row_change
    );
    println!(
        "  initial full sync of {} changes: {} frames, {} bytes, {} round trips",
        initial.changes, initial.frames, initial.bytes, initial.round_trips
    );
}

// ---------------------------------------------------------------- raw quinn peer

struct RawQuinn {
    server: quinn::Endpoint,
    client: quinn::Endpoint,
    addr: std::net::SocketAddr,
}

fn key_pair() -> rcgen::KeyPair {
    rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap()
}

fn node_id(key_pair: &rcgen::KeyPair) -> NodeId {
    tls::node_id_of_public_key(&rcgen::PublicKeyData::subject_public_key_info(key_pair))
}

/// A raw quinn pair with the same TLS setup as the sync transport.
fn raw_quinn() -> RawQuinn {
    let (server_key, client_key) = (key_pair(), key_pair());
    let allowed: AllowList = Arc::new(RwLock::new([node_id(&server_key), node_id(&client_key)].into_iter().collect()));
    let server_identity = TlsIdentity::new(&server_key).unwrap();
    let client_identity = TlsIdentity::new(&client_key).unwrap();
    let server_crypto = tls::server_crypto(&server_identity, allowed.clone()).unwrap();
    let server = quinn::Endpoint::server(
        quinn::ServerConfig::with_crypto(Arc::new(server_crypto)),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let client_crypto = tls::client_crypto(&client_identity, allowed).unwrap();
    client.set_default_client_config(quinn::ClientConfig::new(Arc::new(client_crypto)));
    let addr = server.local_addr().unwrap();
    RawQuinn { server, client, addr }
}

async fn raw_connect(raw: &RawQuinn) -> (quinn::Connection, quinn::Connection) {
    let accept = tokio::spawn({
        let server = raw.server.clone();
        async move { server.accept().await.unwrap().await.unwrap() }
    });
    let client = raw.client.connect(raw.addr, "bench.edgestore").unwrap().await.unwrap();
    (client, accept.await.unwrap())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn raw_round_trips(raw: &RawQuinn, count: usize) -> Vec<Duration> {
    let (client, server) = raw_connect(raw).await;
    let handshake_bytes = client.stats().udp_tx.bytes + client.stats().udp_rx.bytes;
    tokio::spawn(async move {
        let (mut send, mut recv) = server.accept_bi().await.unwrap();
        let mut buf = [0u8; 100];
        while recv.read_exact(&mut buf).await.is_ok() {
            send.write_all(&buf).await.unwrap();
        }
    });
    let (mut send, mut recv) = client.open_bi().await.unwrap();
    let mut buf = [0u8; 100];
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        let start = Instant::now();
        send.write_all(&[7u8; 100]).await.unwrap();
        recv.read_exact(&mut buf).await.unwrap();
        samples.push(start.elapsed());
    }
    samples.sort();
    println!("  raw quinn connection handshake (QUIC + TLS 1.3, mutual auth): {handshake_bytes} UDP bytes");
    samples
}

async fn raw_bulk_mib_s(raw: &RawQuinn, bytes: usize) -> f64 {
    let (client, server) = raw_connect(raw).await;
    let receiver = tokio::spawn(async move {
        let mut recv = server.accept_uni().await.unwrap();
        recv.read_to_end(usize::MAX).await.unwrap().len()
    });
    let start = Instant::now();
    let mut send = client.open_uni().await.unwrap();
    let chunk = vec![1u8; 64 * 1024];
    let mut sent = 0;
    while sent < bytes {
        let n = chunk.len().min(bytes - sent);
        send.write_all(&chunk[..n]).await.unwrap();
        sent += n;
    }
    send.finish().unwrap();
    assert_eq!(receiver.await.unwrap(), bytes);
    bytes as f64 / (1024.0 * 1024.0) / start.elapsed().as_secs_f64()
}

// ---------------------------------------------------------------- B4 / B5

struct Node {
    sync: SyncNode,
    handle: ReplicaHandle,
}

fn start_node(key: &rcgen::KeyPair, allowed: AllowList, replica: Replica) -> Node {
    let (handle, _) = ReplicaHandle::spawn(replica);
    let config = SyncNodeConfig {
        session: SessionConfig::new(CLUSTER),
        listen: "127.0.0.1:0".parse().unwrap(),
        backoff_ms: (20, 200),
        clock_base_ms: 0,
    };
    let (sync, _switch) = SyncNode::start(handle.clone(), key, allowed, config).unwrap();
    Node { sync, handle }
}

fn connect_all(nodes: &[&Node]) {
    for a in nodes {
        for b in nodes {
            if a.sync.node_id() != b.sync.node_id() {
                a.sync.add_peer(b.sync.node_id(), b.sync.local_addr().unwrap());
            }
        }
    }
}

async fn wait_for_seq(node: &Node, origin: NodeId, seq: u64) {
    let mut changes = node.sync.subscribe_changes();
    loop {
        if node.handle.call(move |r| r.version_vector().seq(origin)).unwrap() >= seq {
            return;
        }
        changes.changed().await.unwrap();
    }
}

fn mesh_keys(count: usize) -> (Vec<rcgen::KeyPair>, AllowList) {
    let keys: Vec<_> = (0..count).map(|_| key_pair()).collect();
    let allowed: AllowList = Arc::new(RwLock::new(keys.iter().map(node_id).collect::<BTreeSet<_>>()));
    (keys, allowed)
}

async fn bench_b4(dir: &tempfile::TempDir, raw: &RawQuinn) {
    println!("\nB4 replication latency: 3 nodes on loopback QUIC, writes on A at ~1k/s, visible on B");
    let (keys, allowed) = mesh_keys(3);
    let nodes: Vec<Node> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            start_node(k, allowed.clone(), Replica::open(dir.path().join(format!("b4-{i}.redb")), node_id(k)).unwrap())
        })
        .collect();
    connect_all(&nodes.iter().collect::<Vec<_>>());
    let (a, b) = (&nodes[0], &nodes[1]);
    let origin = a.sync.node_id();
    a.sync.write(WriteBatch::new().create_table(table()), 0).await.unwrap();
    wait_for_seq(b, origin, 1).await;
    let writes = scale(2000);
    // B notes when each of A's seqs became visible.
    let visible = tokio::spawn({
        let (handle, mut changes) = (b.handle.clone(), b.sync.subscribe_changes());
        async move {
            let mut seen = Vec::with_capacity(writes);
            let mut held = 1;
            while seen.len() < writes {
                changes.changed().await.unwrap();
                let now = Instant::now();
                let seq = handle.call(move |r| r.version_vector().seq(origin)).unwrap();
                while held < seq {
                    held += 1;
                    seen.push(now);
                }
            }
            seen
        }
    });
    // Writes are issued on a 1 ms schedule without waiting for the previous one, as
    // independent clients would; concurrent writes share durable commits (group commit).
    let mut started: Vec<Instant> = Vec::with_capacity(writes);
    let mut pending = Vec::with_capacity(writes);
    let begin = Instant::now();
    for i in 0..writes {
        tokio::time::sleep_until((begin + Duration::from_micros(1000) * i as u32).into()).await;
        started.push(Instant::now());
        let sync = a.sync.clone();
        pending.push(tokio::spawn(
            async move { sync.write(WriteBatch::new().insert("readings", row(i as i64)), 0).await },
        ));
    }
    // The receipt's seq identifies the write on B.
    let mut started_by_seq = std::collections::BTreeMap::new();
    for (write, start) in pending.into_iter().zip(started) {
        let seq = write.await.unwrap().unwrap().seq.expect("an insert makes a change");
        started_by_seq.insert(seq, start);
    }
    let rate = writes as f64 / begin.elapsed().as_secs_f64();
    let seen = visible.await.unwrap();
    // seen[k] is when seq k + 2 became visible (seq 1 created the table).
    let mut latencies: Vec<Duration> =
        seen.iter().enumerate().map(|(k, v)| v.saturating_duration_since(started_by_seq[&(k as u64 + 2)])).collect();
    latencies.sort();
    let raw_rtts = raw_round_trips(raw, 2000).await;
    let ours_p99 = percentile(&latencies, 0.99);
    println!(
        "  edgestore write->visible: p50 {:?}  p99 {ours_p99:?}  max {:?}  ({writes} writes at {rate:.0}/s, durable commits on both sides)",
        percentile(&latencies, 0.5),
        latencies.last().unwrap()
    );
    println!(
        "  raw quinn 100 B round trip: p50 {:?}  p99 {:?}   ratio p99 = {:.1}x   [floor p99 <= 50 ms, goal <= 10 ms]",
        percentile(&raw_rtts, 0.5),
        percentile(&raw_rtts, 0.99),
        ours_p99.as_secs_f64() / percentile(&raw_rtts, 0.99).as_secs_f64()
    );
    for node in &nodes {
        node.sync.shutdown().await;
    }
}

async fn bench_b5(dir: &tempfile::TempDir, raw: &RawQuinn) {
    let rows = scale(100_000) as i64;
    println!("\nB5 catch-up after a partition: a node {rows} rows behind (100-row write batches) reconnects");
    let (keys, allowed) = mesh_keys(2);
    let mut source = Replica::open(dir.path().join("b5-a.redb"), node_id(&keys[0])).unwrap();
    source.write(WriteBatch::new().create_table(table()), 0).unwrap();
    write_rows(&mut source, 0..rows, 100);
    let target_seq = source.version_vector().seq(source.node_id());
    let all = source.changes_since(&VersionVector::new(), usize::MAX, usize::MAX).unwrap();
    let bytes: usize = all.changes.iter().map(Vec::len).sum();
    let a = start_node(&keys[0], allowed.clone(), source);
    let b = start_node(&keys[1], allowed, Replica::open(dir.path().join("b5-b.redb"), node_id(&keys[1])).unwrap());
    let start = Instant::now();
    connect_all(&[&a, &b]);
    wait_for_seq(&b, a.sync.node_id(), target_seq).await;
    let elapsed = start.elapsed().as_secs_f64();
    let raw_mib_s = raw_bulk_mib_s(raw, bytes).await;
    let raw_seconds = bytes as f64 / (raw_mib_s * 1024.0 * 1024.0);
    println!(
        "  edgestore: {rows} rows ({:.1} MiB of changes) applied in {elapsed:.2} s = {:.0} rows/s   [floor >= 10k rows/s, goal >= 50k]",
        bytes as f64 / 1048576.0,
        rows as f64 / elapsed
    );
    println!(
        "  raw quinn bulk transfer of the same bytes: {raw_mib_s:.0} MiB/s ({raw_seconds:.3} s)   ratio time edgestore/raw = {:.1}x",
        elapsed / raw_seconds
    );
    a.sync.shutdown().await;
    b.sync.shutdown().await;
}

fn main() {
    let dir = tempfile::TempDir::new().unwrap();
    bench_b3(&dir);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let raw = raw_quinn();
        bench_b4(&dir, &raw).await;
        bench_b5(&dir, &raw).await;
    });
}
