//! Replays the saved corpora of the sync fuzz targets (`fuzz/corpus/sync_frame`,
//! `fuzz/corpus/sync_session`) on stable, plus generated seeds, through the same entry
//! points the fuzzer uses.

use std::path::Path;

use edgestore::{
    ColumnDef, ColumnType, NodeId, Replica, TableSchema, Value, VerifiedChange, VersionVector, WriteBatch,
};
use serde_bytes::ByteBuf;
use sync_protocol::frame::{self, CloseCode, Frame, RangeDigest};
use sync_protocol::fuzzing;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else { return Vec::new() };
    let mut files: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
    files.sort();
    files.into_iter().map(|path| std::fs::read(path).unwrap()).collect()
}

/// Valid frames of every kind, including real change envelopes.
fn seed_frames() -> Vec<Vec<u8>> {
    let dir = tempfile::TempDir::new().unwrap();
    let mut source = Replica::open(dir.path().join("s.redb"), NodeId([2; 16])).unwrap();
    let table = TableSchema::new("t").column(ColumnDef::new("id", ColumnType::Integer)).primary_key(&["id"]);
    source.write(WriteBatch::new().create_table(table), 0).unwrap();
    source.write(WriteBatch::new().insert("t", [("id", Value::from(1))]), 0).unwrap();
    let changes = source.changes_since(&VersionVector::new(), 10, 1 << 20).unwrap().changes;
    vec![
        Frame::Changes { batch: 1, changes: changes.into_iter().map(ByteBuf::from).collect() }.encode(),
        Frame::Ack { batch: 1, vector: vec![(ByteBuf::from(vec![2; 16]), 2)] }.encode(),
        Frame::Ping { nonce: 1 }.encode(),
        Frame::Pong { nonce: 1 }.encode(),
        Frame::Close { code: CloseCode::Shutdown, reason: "bye".into() }.encode(),
        holders_seed(),
    ]
}

/// A `Holders` frame from the fuzzed session's peer: its own vector, a relayed member
/// claiming more than the peer holds, and the receiver itself (ignored).
fn holders_seed() -> Vec<u8> {
    let peer = vec![(ByteBuf::from(vec![2; 16]), fuzzing::peer_changes().held.len() as u64)];
    let mut more = peer.clone();
    more.push((ByteBuf::from(vec![9; 16]), 7));
    Frame::Holders {
        entries: vec![
            (ByteBuf::from(vec![1; 16]), 0, peer.clone()),
            (ByteBuf::from(vec![2; 16]), 0, peer),
            (ByteBuf::from(vec![9; 16]), 1_000, more),
        ],
    }
    .encode()
}

/// Anti-entropy frames that the fuzzed session compares (the vector of the replica in
/// `fuzzing::session_frames`): a differing root, a differing leaf, `Heads` with wrong and
/// missing documents, and a valid `Repair`.
fn anti_entropy_seeds() -> Vec<Vec<u8>> {
    let vector: VersionVector = VerifiedChange::decode(fuzzing::peer_changes().held[0].clone())
        .map(|c| [(c.origin, fuzzing::peer_changes().held.len() as u64)].into_iter().collect())
        .unwrap();
    let hash = ByteBuf::from(frame::vector_hash(&vector).to_vec());
    let range = |depth, prefix| RangeDigest { depth, prefix, docs: 1, digest: ByteBuf::from(vec![7; 32]) };
    let row = VerifiedChange::decode(fuzzing::peer_changes().update.clone()).unwrap().ops[0].key.encode();
    vec![
        Frame::Digests { vector: hash.clone(), ranges: vec![range(0, 0)] }.encode(),
        Frame::Digests { vector: hash.clone(), ranges: vec![range(3, 4095), range(1, 3)] }.encode(),
        Frame::Heads {
            vector: hash.clone(),
            reply: false,
            depth: 0,
            prefix: 0,
            docs: vec![(ByteBuf::from(row), ByteBuf::from(vec![1; 32]))],
            complete: true,
        }
        .encode(),
        Frame::Heads { vector: hash, reply: true, depth: 0, prefix: 0, docs: vec![], complete: false }.encode(),
        fuzzing::repair_seed().encode(),
    ]
}

/// State-transfer frames: an offer, a request, a batch of real documents (the fuzzed
/// peer's table and row, from a replica of its changes), the acknowledgements.
fn transfer_seeds() -> Vec<Vec<u8>> {
    let dir = tempfile::TempDir::new().unwrap();
    let mut donor = Replica::open(dir.path().join("d.redb"), NodeId([6; 16])).unwrap();
    donor.apply_remote(fuzzing::peer_changes().held.clone()).unwrap();
    let batch = donor.export_transfer(&[], 16, 1 << 20).unwrap();
    let vector = frame::vector_to_wire(&batch.vector);
    let docs = batch
        .docs
        .into_iter()
        .map(|d| (ByteBuf::from(d.key), ByteBuf::from(d.snapshot), d.tail.into_iter().map(ByteBuf::from).collect()))
        .collect();
    vec![
        Frame::TransferOffer { floor: vector.clone() }.encode(),
        Frame::TransferRequest { after: ByteBuf::new() }.encode(),
        Frame::TransferBatch {
            batch: 1,
            vector: vector.clone(),
            after: ByteBuf::from(batch.after),
            last: ByteBuf::from(batch.last),
            docs,
            done: batch.done,
        }
        .encode(),
        Frame::TransferAck { batch: 1, vector: None }.encode(),
        Frame::TransferAck { batch: 1, vector: Some(vector) }.encode(),
    ]
}

fn sequence(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for frame in frames {
        out.extend_from_slice(&(frame.len() as u16).to_be_bytes());
        out.extend_from_slice(frame);
    }
    out
}

#[test]
fn frame_decoding_corpus_replays() {
    let mut inputs = corpus("sync_frame");
    inputs.extend(seed_frames());
    inputs.extend(anti_entropy_seeds());
    inputs.extend(transfer_seeds());
    for input in &inputs {
        fuzzing::decode_frame(input);
    }
    println!("replayed {} frame inputs", inputs.len());
}

/// `EDGESTORE_WRITE_SYNC_SEEDS=<dir>` writes the generated seeds as starting corpora for
/// `cargo fuzz run sync_frame <dir>/sync_frame` and `sync_session`.
#[test]
fn seeds_can_be_written_for_the_fuzzer() {
    let Ok(dir) = std::env::var("EDGESTORE_WRITE_SYNC_SEEDS") else { return };
    let frames: Vec<Vec<u8>> = seed_frames().into_iter().chain(anti_entropy_seeds()).chain(transfer_seeds()).collect();
    let sessions: Vec<Vec<u8>> = vec![sequence(&frames), sequence(&anti_entropy_seeds()), sequence(&transfer_seeds())]
        .into_iter()
        .chain(frames.iter().map(|f| sequence(std::slice::from_ref(f))))
        .collect();
    for (target, inputs) in [("sync_frame", &frames), ("sync_session", &sessions)] {
        let dir = Path::new(&dir).join(target);
        std::fs::create_dir_all(&dir).unwrap();
        for input in inputs.iter() {
            let hash = hex::encode(&edgestore::replica::blake3_of(input)[..8]);
            let name = format!("seed-{hash}");
            std::fs::write(dir.join(name), input).unwrap();
        }
    }
}

#[test]
fn session_corpus_replays() {
    let frames = seed_frames();
    let mut inputs = corpus("sync_session");
    inputs.push(sequence(&frames));
    inputs.push(sequence(&[frames[0].clone(), frames[0].clone()]));
    inputs.push(sequence(&[frames[1].clone()]));
    let anti_entropy = anti_entropy_seeds();
    inputs.push(sequence(&anti_entropy));
    for frame in &anti_entropy {
        inputs.push(sequence(std::slice::from_ref(frame)));
    }
    let transfer = transfer_seeds();
    inputs.push(sequence(&transfer));
    inputs.push(sequence(&[transfer[0].clone(), transfer[2].clone()]));
    for frame in &transfer {
        inputs.push(sequence(std::slice::from_ref(frame)));
    }
    for input in &inputs {
        fuzzing::session_frames(input);
    }
    println!("replayed {} session inputs", inputs.len());
}
