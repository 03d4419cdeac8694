//! Entry points for the cargo-fuzz targets in `fuzz/`, shared with the corpus replay test
//! (`tests/fuzz_corpus.rs`) so that stable builds run exactly what the fuzzer runs.

use crate::{ColumnDef, ColumnType, NodeId, Replica, TableSchema, Value, WriteBatch};

/// Decodes `data` as a change envelope and applies it to a small replica holding one
/// table and one row, then checks the replica's integrity. Panics only if the store is
/// left inconsistent — which is the bug the fuzzer looks for: a refused change that
/// altered the state digest, the version vector or the parked changes, or any integrity
/// problem after the change.
pub fn apply_change_envelope(data: &[u8]) {
    // `apply_remote` decodes every envelope with this same function before it touches the
    // store, so bytes that do not decode cannot reach it. Most fuzz inputs stop here;
    // skipping the replica for them (opening, writing and closing a redb file is nearly all
    // of the time) made the fuzzer over ten times faster.
    if crate::change::VerifiedChange::decode(data.to_vec()).is_err() {
        return;
    }
    let dir = tempdir();
    let mut replica = Replica::open(dir.join("fuzz.redb"), NodeId([1; 16])).expect("open a fresh store");
    let schema = TableSchema::new("t")
        .column(ColumnDef::new("id", ColumnType::Integer))
        .column(ColumnDef::new("v", ColumnType::Text))
        .column(ColumnDef::new("n", ColumnType::Counter))
        .primary_key(&["id"]);
    let batch = WriteBatch::new().create_table(schema).insert("t", [("id", Value::from(1)), ("v", "a".into())]);
    replica.write(batch, 0).expect("seed write");
    let state = |replica: &Replica| {
        let digest = replica.state_digest().expect("digest");
        (digest, replica.version_vector().clone(), replica.pending_changes().expect("pending count"))
    };
    let before = state(&replica);
    if replica.apply_remote(vec![data.to_vec()]).is_err() {
        assert_eq!(state(&replica), before, "a refused change altered the state");
    }
    let problems = replica.check_integrity().expect("integrity check runs");
    assert!(problems.is_empty(), "integrity problems after applying fuzz input: {problems:?}");
    drop(replica);
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempdir() -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("edgestore-fuzz-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create a temporary directory");
    dir
}

/// Decodes `data` as the append-only payloads a peer can send, by its first byte modulo
/// 3: 0, an append batch (`data[1]` bytes of operation key, the rest its payload); 1, a
/// block as a state transfer carries it (8 bytes of bucket start, the rest the block);
/// 2, a range tombstone, as an envelope's operation (key and payload as for a batch) and
/// as a transfer's stored key and value. Panics only on a bug: a decoder that panics, or
/// a batch or tombstone that decodes but does not survive its own encoding.
pub fn decode_append_payloads(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else { return };
    match selector % 3 {
        0 => {
            let (key, payload) = split_key(rest);
            if let Ok(batch) = crate::append::AppendBatch::decode(key, payload) {
                let again = crate::append::AppendBatch::decode(&batch.key(), &batch.payload());
                assert_eq!(again.as_ref(), Ok(&batch), "a decoded append batch survives its own encoding");
            }
        }
        1 if rest.len() >= 8 => {
            let (bucket, block) = rest.split_at(8);
            let bucket = i64::from_be_bytes(bucket.try_into().expect("8 bytes"));
            if crate::append::decode_block(block, bucket).is_ok() {
                assert!(crate::append::block_row_count(block).is_ok(), "a block that decodes has a row count");
            }
        }
        2 => {
            let (key, payload) = split_key(rest);
            if let Ok(tombstone) = crate::append::RangeTombstone::decode(key, payload) {
                let again = crate::append::RangeTombstone::decode(&tombstone.key(), &tombstone.payload());
                assert_eq!(again.as_ref(), Ok(&tombstone), "a decoded range tombstone survives its own encoding");
            }
            // The same bytes as a tombstone a state transfer brings: its stored key and value.
            let _ = crate::append::decode_stored_tombstone(key, payload);
        }
        _ => {}
    }
}

/// A length byte, then that many bytes of key (or fewer, at the end), then the payload.
fn split_key(data: &[u8]) -> (&[u8], &[u8]) {
    let Some((&key_len, rest)) = data.split_first() else { return (&[], &[]) };
    rest.split_at(usize::from(key_len).min(rest.len()))
}
