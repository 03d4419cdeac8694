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

/// Decodes `data` as the two append-only payloads a peer can send: with an even first
/// byte, an append batch (`data[1]` bytes of operation key, the rest its payload); with
/// an odd one, a block as a state transfer carries it (8 bytes of bucket start, the rest
/// the block). Panics only on a bug: a decoder that panics, or a batch that decodes but
/// does not survive its own encoding.
pub fn decode_append_payloads(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else { return };
    if selector % 2 == 0 {
        let Some((&key_len, rest)) = rest.split_first() else { return };
        let (key, payload) = rest.split_at(usize::from(key_len).min(rest.len()));
        if let Ok(batch) = crate::append::AppendBatch::decode(key, payload) {
            let again = crate::append::AppendBatch::decode(&batch.key(), &batch.payload());
            assert_eq!(again.as_ref(), Ok(&batch), "a decoded append batch survives its own encoding");
        }
    } else if rest.len() >= 8 {
        let (bucket, block) = rest.split_at(8);
        let bucket = i64::from_be_bytes(bucket.try_into().expect("8 bytes"));
        let _ = crate::append::decode_block(block, bucket);
    }
}
