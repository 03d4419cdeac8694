//! Fixtures shared by sync-protocol's integration tests: the `kv` table most session tests
//! write, node ids from TLS key pairs (QUIC and turmoil), and two sans-IO sessions stepped
//! in lockstep.

#![allow(dead_code)] // each test file uses part of the fixtures

use edgestore::{ColumnDef, ColumnType, NodeId, Replica, TableSchema};
use sync_protocol::transport::tls;
use sync_protocol::Session;

/// `kv (k INTEGER PRIMARY KEY, v TEXT)`.
pub fn kv_table() -> TableSchema {
    TableSchema::new("kv")
        .column(ColumnDef::new("k", ColumnType::Integer))
        .column(ColumnDef::new("v", ColumnType::Text))
        .primary_key(&["k"])
}

/// The node id a TLS identity built from `key_pair` presents (its public key's fingerprint).
pub fn node_id(key_pair: &rcgen::KeyPair) -> NodeId {
    tls::node_id_of_public_key(&rcgen::PublicKeyData::subject_public_key_info(key_pair))
}

/// Exchanges frames between two sessions at time 0 until neither has anything to send, at
/// most `trips_max` round trips; returns the round trips taken (`trips_max` if it did not
/// settle). A frame refused by either side fails the test.
pub fn lockstep(sx: &mut Session, x: &mut Replica, sy: &mut Session, y: &mut Replica, trips_max: usize) -> usize {
    for trip in 0..trips_max {
        let to_y: Vec<Vec<u8>> = std::iter::from_fn(|| sx.poll_transmit(0, x)).collect();
        for bytes in &to_y {
            sy.handle_frame(0, bytes, y).unwrap_or_else(|e| panic!("round trip {trip}: {e}"));
        }
        let to_x: Vec<Vec<u8>> = std::iter::from_fn(|| sy.poll_transmit(0, y)).collect();
        for bytes in &to_x {
            sx.handle_frame(0, bytes, x).unwrap_or_else(|e| panic!("round trip {trip}: {e}"));
        }
        if to_y.is_empty() && to_x.is_empty() {
            return trip;
        }
    }
    trips_max
}
