//! Catch-up of a new node: state transfer next to log replay of the same rows (issue 10,
//! "Benchmarks").
//!
//! A donor holds `rows` rows of `readings` written 1000 per statement. A new node (empty
//! vector) catches up over two sans-IO sessions stepped in lockstep (no network: the
//! figures are the store work on both sides and the frames' bytes):
//!
//! - log replay: the donor's log holds every change, so the session streams `Changes`;
//! - state transfer: a second donor holding the same documents but a log floor (it caught
//!   up from the first by a replica-level transfer, untimed) offers its documents instead.
//!
//! Printed per way: rows/s from the first `Hello` to the receiver holding the donor's
//! vector, wire bytes, and the receiver's file size.
//!
//! `cargo bench -p sync-protocol --bench catch_up`; `EDGESTORE_BENCH_ROWS=<n>` (default
//! 100 000) sets the rows.

#![allow(clippy::disallowed_methods)] // reason: benchmarks measure wall time

use std::time::Instant;

use edgestore::{NodeId, Replica, WriteBatch};
use sync_protocol::{ClusterId, Session, SessionConfig};

const CLUSTER: ClusterId = ClusterId([4; 16]);

#[path = "../../benches/readings.rs"]
mod readings;

fn write_rows(replica: &mut Replica, rows: i64) {
    replica.write(WriteBatch::new().create_table(readings::schema()), 0).unwrap();
    for start in (0..rows).step_by(1000) {
        let mut batch = WriteBatch::new();
        for id in start..(start + 1000).min(rows) {
            batch = batch.insert("readings", readings::reading(id));
        }
        replica.write(batch, 0).unwrap();
    }
}

/// Steps two sessions in lockstep until the receiver holds the donor's vector; returns the
/// wire bytes both ways and the round trips.
fn catch_up(donor: &mut Replica, receiver: &mut Replica) -> (u64, u64) {
    let config = SessionConfig::new(CLUSTER);
    let mut sd = Session::new(config.clone(), donor.node_id(), receiver.node_id(), donor.version_vector(), 0);
    let mut sr = Session::new(config, receiver.node_id(), donor.node_id(), receiver.version_vector(), 0);
    let (mut bytes, mut trips) = (0u64, 0u64);
    while receiver.version_vector() != donor.version_vector() {
        let to_r: Vec<Vec<u8>> = std::iter::from_fn(|| sd.poll_transmit(0, donor)).collect();
        for frame in &to_r {
            sr.handle_frame(0, frame, receiver).unwrap();
        }
        let to_d: Vec<Vec<u8>> = std::iter::from_fn(|| sr.poll_transmit(0, receiver)).collect();
        for frame in &to_d {
            sd.handle_frame(0, frame, donor).unwrap();
        }
        assert!(!(to_r.is_empty() && to_d.is_empty()), "the sessions went quiet before catching up");
        bytes += to_r.iter().chain(&to_d).map(|f| f.len() as u64).sum::<u64>();
        trips += 1;
    }
    (bytes, trips)
}

fn report(way: &str, rows: i64, started: Instant, (bytes, trips): (u64, u64), receiver: &std::path::Path) {
    let secs = started.elapsed().as_secs_f64();
    let file = std::fs::metadata(receiver).map_or(0, |m| m.len());
    println!(
        "  {way:<15} {rows} rows in {secs:>7.2} s = {:>8.0} rows/s; {:>6.1} MB on the wire ({:.0} B/row), {trips} round trips; receiver file {:.1} MB",
        rows as f64 / secs,
        bytes as f64 / 1e6,
        bytes as f64 / rows as f64,
        file as f64 / 1e6,
    );
}

fn main() {
    let rows: i64 = std::env::var("EDGESTORE_BENCH_ROWS").ok().and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let dir = tempfile::TempDir::new().unwrap();
    let open = |name: &str, id: u8| Replica::open(dir.path().join(name), NodeId([id; 16])).unwrap();
    println!("catch-up of a new node, {rows} rows (1000 per write) — state transfer vs log replay");
    let mut donor = open("donor.redb", 1);
    write_rows(&mut donor, rows);

    let mut replayed = open("replay.redb", 2);
    let started = Instant::now();
    let figures = catch_up(&mut donor, &mut replayed);
    report("log replay", rows, started, figures, &dir.path().join("replay.redb"));

    // A donor with the same documents and a log floor: it must transfer.
    let mut floored = open("floored.redb", 3);
    floored.transfer_from(&donor).unwrap();
    assert_eq!(floored.log_floor(), floored.version_vector());
    let mut transferred = open("transfer.redb", 4);
    let started = Instant::now();
    let figures = catch_up(&mut floored, &mut transferred);
    report("state transfer", rows, started, figures, &dir.path().join("transfer.redb"));
    assert_eq!(transferred.state_digest().unwrap(), replayed.state_digest().unwrap());
    assert_eq!(transferred.state_digest().unwrap(), donor.state_digest().unwrap());
}
