//! Sync between replicas opened with a 1 MiB memory budget (`OpenOptions`), far below
//! what their documents and pages need: delta sync of concurrent writes and updates of
//! hot rows, then an anti-entropy round, must leave both with the same state as a
//! replica with the default budget fed the same changes. Sessions run in lockstep flights
//! (everything one side sends, then the other), through the public API only.

use edgestore::{ColumnDef, ColumnType, NodeId, OpenOptions, Replica, TableSchema, Value, WriteBatch};
use sync_protocol::{ClusterId, Event, Session, SessionConfig};

const TINY: OpenOptions = OpenOptions { cache_bytes: 1 << 20 };
const INTERVAL_MS: u64 = 1_000;

fn readings() -> TableSchema {
    TableSchema::new("readings")
        .column(ColumnDef::new("id", ColumnType::Integer))
        .column(ColumnDef::new("node", ColumnType::Integer))
        .column(ColumnDef::new("value", ColumnType::Real))
        .primary_key(&["id"])
}

/// Batches `batches` of `node` on `replica`: 200 new rows each, and an update of the 20
/// hot rows (ids 0..20, shared by every writer) so their documents grow past the cache's
/// budget.
fn write(replica: &mut Replica, node: i64, batches: std::ops::Range<i64>, now: i64) {
    for b in batches {
        let mut batch = WriteBatch::new();
        for i in 0..200 {
            let id = 1_000_000 * node + b * 200 + i + 100;
            batch = batch.insert("readings", [("id", Value::from(id)), ("node", node.into())]);
        }
        for id in 0..20 {
            batch = batch.update("readings", vec![id.into()], [("value", Value::Real((node * 1000 + b) as f64))]);
        }
        replica.write(batch, now + b).unwrap();
    }
}

/// Steps two sessions in lockstep until neither sends anything; returns the flights.
fn run_lockstep(sa: &mut Session, a: &mut Replica, sb: &mut Session, b: &mut Replica, now: u64) -> u64 {
    let mut flights = 0;
    loop {
        let to_b: Vec<Vec<u8>> = std::iter::from_fn(|| sa.poll_transmit(now, a)).collect();
        for frame in &to_b {
            sb.handle_frame(now, frame, b).unwrap();
        }
        let to_a: Vec<Vec<u8>> = std::iter::from_fn(|| sb.poll_transmit(now, b)).collect();
        for frame in &to_a {
            sa.handle_frame(now, frame, a).unwrap();
        }
        if to_b.is_empty() && to_a.is_empty() {
            return flights;
        }
        flights += 1;
        assert!(flights < 10_000, "sessions never went quiet");
    }
}

#[test]
fn replicas_with_a_one_mib_budget_sync_to_the_same_state() {
    let dir = tempfile::TempDir::new().unwrap();
    let (id_a, id_b) = (NodeId([1; 16]), NodeId([2; 16]));
    let mut a = Replica::open_with(dir.path().join("a.redb"), id_a, &TINY).unwrap();
    let mut b = Replica::open_with(dir.path().join("b.redb"), id_b, &TINY).unwrap();
    let mut reference = Replica::open(dir.path().join("ref.redb"), NodeId([3; 16])).unwrap();
    let mut batch = WriteBatch::new().create_table(readings());
    for id in 0..20 {
        batch = batch.insert("readings", [("id", Value::from(id)), ("node", Value::from(0))]);
    }
    a.write(batch, 0).unwrap();
    // Concurrent writes on both sides, each seeing the other's only after sync.
    write(&mut a, 1, 0..40, 10);
    let mut config = SessionConfig::new(ClusterId([5; 16]));
    config.anti_entropy_interval_ms = INTERVAL_MS;
    config.keepalive_ms = INTERVAL_MS;
    config.idle_timeout_ms = 1_000_000;
    let mut sa = Session::new(config.clone(), id_a, id_b, a.version_vector(), 0);
    let mut sb = Session::new(config, id_b, id_a, b.version_vector(), 0);
    run_lockstep(&mut sa, &mut a, &mut sb, &mut b, 0);
    write(&mut b, 2, 0..40, 100);
    write(&mut a, 1, 40..50, 200);
    sa.handle_store_changed();
    sb.handle_store_changed();
    run_lockstep(&mut sa, &mut a, &mut sb, &mut b, 1);
    assert_eq!(a.version_vector(), b.version_vector());
    // An anti-entropy round (due with the keepalive, well after the last frame): both
    // heads trees, read from the maintained digest, agree.
    let later = 5 * INTERVAL_MS;
    sa.handle_timeout(later);
    sb.handle_timeout(later);
    run_lockstep(&mut sa, &mut a, &mut sb, &mut b, later);
    for session in [&mut sa, &mut sb] {
        while let Some(event) = session.poll_event() {
            assert!(!matches!(event, Event::Closed { .. } | Event::Repaired(_)), "{event:?}");
        }
        assert!(session.stats().anti_entropy_frames_sent > 0, "the round ran");
    }

    let everything = a.changes_since(reference.version_vector(), usize::MAX, usize::MAX).unwrap();
    reference.apply_remote(everything.changes).unwrap();
    let digest = reference.state_digest().unwrap();
    let rows = |r: &Replica| r.snapshot().unwrap().scan("readings").unwrap().map(Result::unwrap).collect::<Vec<_>>();
    for replica in [&a, &b] {
        assert_eq!(replica.state_digest().unwrap(), digest, "{replica:?}");
        assert_eq!(replica.heads_tree().unwrap(), reference.heads_tree().unwrap());
        assert_eq!(rows(replica), rows(&reference));
        assert_eq!(replica.check_integrity().unwrap(), vec![], "{replica:?}");
        let figures = replica.cache_figures();
        assert!(figures.doc_cache_bytes <= figures.doc_cache_bytes_max, "{figures:?}");
    }
    assert_eq!(rows(&a).len(), 20 + 200 * (40 + 40 + 10));
}
