//! Entry points for the cargo-fuzz targets in `fuzz/`, shared with the corpus replay test
//! (`sync-protocol/tests/fuzz_corpus.rs`) so that stable builds run what the fuzzer runs.

use std::sync::OnceLock;

use edgestore::{
    ColumnDef, ColumnType, NodeId, Replica, TableSchema, Value, VerifiedChange, VersionVector, WriteBatch,
};
use serde_bytes::ByteBuf;

use crate::frame::{self, Frame, PROTOCOL_VERSION};
use crate::session::{Session, SessionConfig};
use crate::ClusterId;

const CLUSTER: ClusterId = ClusterId([5; 16]);
const PEER: NodeId = NodeId([2; 16]);

/// Decodes `data` as one frame; must never panic.
pub fn decode_frame(data: &[u8]) {
    // The wire form and the parsed form accept the same bytes, for the same reason.
    assert_eq!(Frame::decode(data).err(), Frame::parse(data).err(), "decode and parse disagree");
    if let Ok(frame) = Frame::decode(data) {
        // What decodes re-encodes to something that decodes to the same frame.
        assert_eq!(Frame::decode(&frame.encode()).as_ref(), Ok(&frame), "frame round trip");
    }
}

/// Changes made by the fuzzed session's peer, made once per process: `held` (table `t`
/// and row 1, applied to the fuzzed replica before each input, so anti-entropy frames have
/// documents to compare and a known author) and `update`, an envelope updating row 1 that
/// the replica does not hold (its automerge change makes a valid `Repair`).
#[derive(Debug)]
pub struct PeerChanges {
    /// Envelopes the fuzzed replica holds.
    pub held: Vec<Vec<u8>>,
    /// An envelope it lacks.
    pub update: Vec<u8>,
}

/// The peer's changes; see [`PeerChanges`].
pub fn peer_changes() -> &'static PeerChanges {
    static CHANGES: OnceLock<PeerChanges> = OnceLock::new();
    CHANGES.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("edgestore-fuzz-peer-{}-{}", std::process::id(), unique()));
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        let mut peer = Replica::open(dir.join("peer.redb"), PEER).expect("open a fresh store");
        let table = TableSchema::new("t")
            .column(ColumnDef::new("id", ColumnType::Integer))
            .column(ColumnDef::new("v", ColumnType::Text))
            .primary_key(&["id"]);
        let row = [("id", Value::from(1)), ("v", Value::from("a"))];
        peer.write(WriteBatch::new().create_table(table).insert("t", row), 0).expect("write");
        let held = peer.changes_since(&VersionVector::new(), 16, usize::MAX).expect("read the log").changes;
        let before = peer.version_vector().clone();
        peer.write(WriteBatch::new().update("t", vec![Value::from(1)], [("v", Value::from("b"))]), 0).expect("write");
        let update = peer.changes_since(&before, 1, usize::MAX).expect("read the log").changes.remove(0);
        drop(peer);
        let _ = std::fs::remove_dir_all(&dir);
        PeerChanges { held, update }
    })
}

/// A valid `Repair` frame for the fuzzed replica: the automerge change of
/// [`PeerChanges::update`].
pub fn repair_seed() -> Frame {
    let change = VerifiedChange::decode(peer_changes().update.clone()).expect("a change this process made");
    let docs = change
        .ops
        .into_iter()
        .map(|op| (ByteBuf::from(op.key.encode()), vec![ByteBuf::from(op.change.raw_bytes().to_vec())]))
        .collect();
    Frame::Repair { docs }
}

/// Feeds a session a valid `Hello` from the peer and then the frames in `data` (a sequence
/// of `u16 BE length ‖ frame bytes`), polling it between frames, over a real replica that
/// holds [`PeerChanges::held`]; the peer announces the same vector, so anti-entropy frames
/// are compared. The session may close; it must never panic, and the store must stay
/// consistent.
pub fn session_frames(data: &[u8]) {
    let dir = std::env::temp_dir().join(format!("edgestore-fuzz-sync-{}-{}", std::process::id(), unique()));
    std::fs::create_dir_all(&dir).expect("create a temporary directory");
    let mut replica = Replica::open(dir.join("fuzz.redb"), NodeId([1; 16])).expect("open a fresh store");
    replica.apply_remote(peer_changes().held.clone()).expect("apply the peer's changes");
    let mut session = Session::new(SessionConfig::new(CLUSTER), replica.node_id(), PEER, replica.version_vector(), 0);
    let hello = Frame::Hello {
        protocol: PROTOCOL_VERSION,
        cluster: ByteBuf::from(CLUSTER.0.to_vec()),
        node: ByteBuf::from(PEER.as_bytes().to_vec()),
        vector: frame::vector_to_wire(replica.version_vector()),
    };
    let mut now = 0;
    let _ = session.handle_frame(now, &hello.encode(), &mut replica);
    let mut rest = data;
    while rest.len() >= 2 && !session.is_closed() {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        let (bytes, tail) = rest[2..].split_at(len);
        rest = tail;
        now += 1_000;
        let _ = session.handle_frame(now, bytes, &mut replica);
        session.handle_timeout(now);
        while session.poll_transmit(now, &replica).is_some() {}
        while session.poll_event().is_some() {}
    }
    let problems = replica.check_integrity().expect("integrity check runs");
    assert!(problems.is_empty(), "integrity problems after fuzzed frames: {problems:?}");
    drop(replica);
    let _ = std::fs::remove_dir_all(&dir);
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
