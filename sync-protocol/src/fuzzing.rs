//! Entry points for the cargo-fuzz targets in `fuzz/`, shared with the corpus replay test
//! (`sync-protocol/tests/fuzz_corpus.rs`) so that stable builds run what the fuzzer runs.

use edgestore::{NodeId, Replica};
use serde_bytes::ByteBuf;

use crate::frame::{self, Frame, PROTOCOL_VERSION};
use crate::session::{Session, SessionConfig};
use crate::ClusterId;

const CLUSTER: ClusterId = ClusterId([5; 16]);
const PEER: NodeId = NodeId([2; 16]);

/// Decodes `data` as one frame; must never panic.
pub fn decode_frame(data: &[u8]) {
    if let Ok(frame) = Frame::decode(data) {
        // What decodes re-encodes to something that decodes to the same frame.
        assert_eq!(Frame::decode(&frame.encode()).as_ref(), Ok(&frame), "frame round trip");
    }
}

/// Feeds a session a valid `Hello` from the peer and then the frames in `data` (a sequence
/// of `u16 BE length ‖ frame bytes`), polling it between frames, over a real replica. The
/// session may close; it must never panic, and the store must stay consistent.
pub fn session_frames(data: &[u8]) {
    let dir = std::env::temp_dir().join(format!("edgestore-fuzz-sync-{}-{}", std::process::id(), unique()));
    std::fs::create_dir_all(&dir).expect("create a temporary directory");
    let mut replica = Replica::open(dir.join("fuzz.redb"), NodeId([1; 16])).expect("open a fresh store");
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
