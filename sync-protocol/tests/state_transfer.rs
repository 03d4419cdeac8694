//! State transfer between two sessions over real replicas (`docs/design.md` § "State
//! transfer"), stepped in lockstep flights.
//!
//! The donor `C` has a log floor without any compaction: it caught up from `A` by a
//! replica-level transfer, so its log holds nothing below `A`'s vector at that time. A new
//! node `D` (empty vector) connecting to `C` cannot be sent changes by log replay; the
//! session offers the documents, streams them in windowed batches, and continues with
//! ordinary streaming above the installed vector. Interrupted transfers resume from the
//! receiver's persisted cursor; frames out of protocol close the session.

mod common;
use common::{kv_table as table, lockstep};
use edgestore::{NodeId, Replica, Value, WriteBatch};
use serde_bytes::ByteBuf;
use sync_protocol::frame::{self, Frame};
use sync_protocol::{ClusterId, Event, ProtocolError, Session, SessionConfig, TransferRole};

const CLUSTER: ClusterId = ClusterId([5; 16]);

fn config() -> SessionConfig {
    let mut config = SessionConfig::new(CLUSTER);
    // Small batches, so a few hundred rows take many of them and the window matters.
    config.batch_bytes_max = 4 * 1024;
    config.keepalive_ms = 1_000_000;
    config.idle_timeout_ms = 1_000_000;
    config.anti_entropy_interval_ms = u64::MAX;
    config
}

struct Cluster {
    dir: tempfile::TempDir,
    a: Replica,
    c: Replica,
}

/// `A` wrote `rows` rows (and updated some past a document's tail); `C` received them by
/// a replica-level state transfer, so its log floor is `A`'s vector.
fn cluster(rows: i64) -> Cluster {
    let dir = tempfile::TempDir::new().unwrap();
    let mut a = Replica::open(dir.path().join("a.redb"), NodeId([1; 16])).unwrap();
    let mut c = Replica::open(dir.path().join("c.redb"), NodeId([3; 16])).unwrap();
    a.write(WriteBatch::new().create_table(table()), 0).unwrap();
    for chunk in 0..rows / 50 {
        let mut batch = WriteBatch::new();
        for k in chunk * 50..(chunk + 1) * 50 {
            batch = batch.insert("kv", [("k", Value::from(k)), ("v", Value::from(format!("v{k}")))]);
        }
        a.write(batch, 0).unwrap();
    }
    for round in 0..70 {
        a.write(WriteBatch::new().update("kv", vec![Value::from(1)], [("v", Value::from(format!("r{round}")))]), 0)
            .unwrap();
    }
    c.transfer_from(&a).unwrap();
    assert_eq!(c.log_floor(), a.version_vector());
    Cluster { dir, a, c }
}

fn sessions(donor: &Replica, receiver: &Replica) -> (Session, Session) {
    let (d, r) = (donor.node_id(), receiver.node_id());
    (
        Session::new(config(), d, r, donor.version_vector(), 0),
        Session::new(config(), r, d, receiver.version_vector(), 0),
    )
}

fn transfer_events(session: &mut Session) -> Vec<sync_protocol::TransferEvent> {
    let mut events = Vec::new();
    while let Some(event) = session.poll_event() {
        match event {
            Event::Transfer(t) => events.push(t),
            Event::Closed { error } => panic!("session closed: {error:?}"),
            _ => {}
        }
    }
    events
}

#[test]
fn a_new_node_joins_a_donor_with_a_log_floor() {
    let Cluster { dir, a, mut c } = cluster(400);
    let mut d = Replica::open(dir.path().join("d.redb"), NodeId([4; 16])).unwrap();
    let (mut sc, mut sd) = sessions(&c, &d);
    let trips = lockstep(&mut sc, &mut c, &mut sd, &mut d, 10_000);
    assert!(trips < 10_000, "the transfer ends");
    assert_eq!(d.state_digest().unwrap(), c.state_digest().unwrap());
    assert_eq!(d.state_digest().unwrap(), a.state_digest().unwrap());
    assert_eq!(d.version_vector(), c.version_vector());
    assert!(d.transfer_progress().unwrap().is_none());
    assert!(d.check_integrity().unwrap().is_empty());
    let received = transfer_events(&mut sd);
    assert!(received.len() > 4, "{} batches", received.len());
    assert!(received.iter().all(|e| e.role == TransferRole::Receiver));
    assert!(received.last().unwrap().done && received.last().unwrap().total_docs == 401);
    let sent = transfer_events(&mut sc);
    assert_eq!(sent.len(), 1);
    assert!(sent[0].done && sent[0].role == TransferRole::Donor && sent[0].total_docs == 401);
    assert_eq!(sc.stats().transfer_docs_sent, 401);
    assert_eq!(sd.stats().transfer_docs_received, 401);
    assert_eq!(sd.stats().transfers_completed, 1);
    assert!(sc.transfer_status().is_none() && sd.transfer_status().is_none());
    // Streaming continues above the installed vector, both ways, on the same session.
    c.write(WriteBatch::new().insert("kv", [("k", Value::from(1000)), ("v", Value::from("c"))]), 0).unwrap();
    d.write(WriteBatch::new().insert("kv", [("k", Value::from(1001)), ("v", Value::from("d"))]), 0).unwrap();
    sc.handle_store_changed();
    sd.handle_store_changed();
    lockstep(&mut sc, &mut c, &mut sd, &mut d, 100);
    assert_eq!(d.state_digest().unwrap(), c.state_digest().unwrap());
    assert_eq!(d.version_vector(), c.version_vector());
    assert!(c.check_integrity().unwrap().is_empty() && d.check_integrity().unwrap().is_empty());
    assert!(sc.is_established() && sd.is_established());
}

#[test]
fn an_interrupted_transfer_resumes_from_the_receivers_cursor() {
    let Cluster { dir, a: _, mut c } = cluster(400);
    let mut d = Replica::open(dir.path().join("d.redb"), NodeId([4; 16])).unwrap();
    let (mut sc, mut sd) = sessions(&c, &d);
    // A few round trips, then the connection is gone (sessions dropped mid-transfer).
    lockstep(&mut sc, &mut c, &mut sd, &mut d, 3);
    let progress = d.transfer_progress().unwrap().expect("a transfer in progress");
    assert!(progress.docs > 0 && progress.docs < 401, "{progress:?}");
    assert!(d.version_vector().is_empty());
    drop((sc, sd));
    // The donor writes meanwhile; the new session resumes where the receiver was.
    c.write(WriteBatch::new().insert("kv", [("k", Value::from(2000)), ("v", Value::from("late"))]), 0).unwrap();
    let (mut sc, mut sd) = sessions(&c, &d);
    lockstep(&mut sc, &mut c, &mut sd, &mut d, 10_000);
    let received = transfer_events(&mut sd);
    let last = received.last().expect("batches after the resume");
    assert!(last.done);
    assert_eq!(last.total_docs, 402, "every document once, counted across the resume");
    assert_eq!(sc.stats().transfer_docs_sent, 402 - progress.docs);
    assert_eq!(d.state_digest().unwrap(), c.state_digest().unwrap());
    assert_eq!(d.version_vector(), c.version_vector());
    assert!(d.check_integrity().unwrap().is_empty());
}

#[test]
fn transfer_frames_out_of_protocol_close_the_session() {
    let Cluster { dir, a: _, mut c } = cluster(100);
    let mut d = Replica::open(dir.path().join("d.redb"), NodeId([4; 16])).unwrap();
    let (mut sc, mut sd) = sessions(&c, &d);
    let hello_c = sc.poll_transmit(0, &c).unwrap();
    let hello_d = sd.poll_transmit(0, &d).unwrap();
    sd.handle_frame(0, &hello_c, &mut d).unwrap();
    sc.handle_frame(0, &hello_d, &mut c).unwrap();
    // The donor offers instead of streaming.
    let offer = sc.poll_transmit(0, &c).unwrap();
    assert!(matches!(Frame::decode(&offer), Ok(Frame::TransferOffer { .. })));
    // Nothing streams before the request; held vectors still go out (C knows A, a member).
    let after_offer: Vec<Frame> =
        std::iter::from_fn(|| sc.poll_transmit(0, &c)).map(|b| Frame::decode(&b).unwrap()).collect();
    assert!(after_offer.iter().all(|f| matches!(f, Frame::Holders { .. })), "{after_offer:?}");
    // A batch nobody asked for, to the donor; an acknowledgement of nothing, to the receiver.
    let stray = Frame::TransferBatch {
        batch: 1,
        vector: vec![],
        after: ByteBuf::new(),
        last: ByteBuf::new(),
        docs: vec![],
        done: true,
    };
    let (mut c2, mut d2) = sessions(&c, &d);
    for (session, store) in [(&mut c2, &mut c), (&mut d2, &mut d)] {
        let other = if session.peer() == NodeId([4; 16]) { hello_d.clone() } else { hello_c.clone() };
        session.handle_frame(0, &other, store).unwrap();
    }
    let refused = c2.handle_frame(0, &stray.encode(), &mut c);
    assert!(matches!(refused, Err(ProtocolError::UnexpectedFrame(_))), "{refused:?}");
    let ack = Frame::TransferAck { batch: 1, vector: None }.encode();
    let refused = d2.handle_frame(0, &ack, &mut d);
    assert!(matches!(refused, Err(ProtocolError::UnexpectedFrame(_))), "{refused:?}");
    // The real receiver requests; a batch out of order closes it.
    sd.handle_frame(0, &offer, &mut d).unwrap();
    let request = sd.poll_transmit(0, &d).unwrap();
    sc.handle_frame(0, &request, &mut c).unwrap();
    let first = sc.poll_transmit(0, &c).unwrap();
    let Ok(Frame::TransferBatch { vector, after, last, docs, done, .. }) = Frame::decode(&first) else {
        panic!("a TransferBatch")
    };
    let skipped = Frame::TransferBatch { batch: 2, vector, after, last, docs, done }.encode();
    let refused = sd.handle_frame(0, &skipped, &mut d);
    assert!(matches!(refused, Err(ProtocolError::BatchOutOfOrder { expected: 1, got: 2 })), "{refused:?}");
    assert!(d.transfer_progress().unwrap().is_none(), "nothing imported");
    let _ = frame::TRANSFER_DOCS_MAX;
}

/// Two donors offer at once: the receiver takes one transfer (one progress record), defers
/// the other offer, and declines it once the first installed a vector covering its floor;
/// the second donor then streams what it has beyond that.
#[test]
fn a_second_offer_waits_and_is_declined_when_the_first_transfer_covers_it() {
    let Cluster { dir, a, mut c } = cluster(200);
    let mut e = Replica::open(dir.path().join("e.redb"), NodeId([5; 16])).unwrap();
    e.transfer_from(&a).unwrap();
    e.write(WriteBatch::new().insert("kv", [("k", Value::from(3000)), ("v", Value::from("e"))]), 0).unwrap();
    let mut d = Replica::open(dir.path().join("d.redb"), NodeId([4; 16])).unwrap();
    let (mut sc, mut sdc) = sessions(&c, &d);
    let (mut se, mut sde) = sessions(&e, &d);
    // Both handshakes and offers; then C's transfer runs to its end while E waits.
    for _ in 0..10_000 {
        let c_trips = lockstep(&mut sc, &mut c, &mut sdc, &mut d, 1);
        let e_trips = lockstep(&mut se, &mut e, &mut sde, &mut d, 1);
        if c_trips == 0 && e_trips == 0 {
            break;
        }
        // Relay, as a driver does after applied changes.
        for s in [&mut sc, &mut sdc, &mut se, &mut sde] {
            s.handle_store_changed();
        }
    }
    assert_eq!(sdc.stats().transfers_completed, 1, "C's offer came first");
    assert_eq!(sde.stats().transfers_completed, 0, "E's offer waited and was declined");
    assert_eq!(sdc.stats().transfer_docs_received + sde.stats().transfer_docs_received, 201);
    assert_eq!(d.version_vector(), e.version_vector());
    assert_eq!(d.state_digest().unwrap(), e.state_digest().unwrap());
    assert_eq!(d.state_digest().unwrap(), c.state_digest().unwrap(), "E's row relayed through D");
    for s in [&mut sc, &mut sdc, &mut se, &mut sde] {
        assert!(s.is_established(), "no session closed");
        transfer_events(s);
    }
    assert!(d.check_integrity().unwrap().is_empty());
}

fn insert_rows(replica: &mut Replica, keys: std::ops::Range<i64>, value: &str) {
    let mut batch = WriteBatch::new();
    for k in keys {
        batch = batch.insert("kv", [("k", Value::from(k)), ("v", Value::from(format!("{value}{k}")))]);
    }
    replica.write(batch, 0).unwrap();
}

/// Every row of `kv`, by key.
fn rows(replica: &Replica) -> Vec<(Value, Value)> {
    let rows = replica.snapshot().unwrap().scan("kv").unwrap().map(Result::unwrap);
    rows.map(|row| (row[0].clone(), row[1].clone())).collect()
}

/// Issue 10 item 8: a peer `X` that claims a vector it does not hold — in its `Hello`
/// (changes of `A` it lacks, and more of `A`'s than `A` has made), then in a `Holders`
/// frame forwarding that `B` holds them too — raises `A`'s horizon at most to `A`'s own
/// vector, and what it makes `A` compact is not lost: `B`'s honest reports hold `A`'s
/// horizon back until `X` lies about `B` too, and once `A` has compacted past both, `X`
/// (reconnecting with its real vector) and `B` each catch up by state transfer, with `X`'s
/// own change delivered in the lying session; every node ends with every change.
#[test]
fn a_peer_claiming_a_vector_it_does_not_hold_cannot_make_a_node_drop_changes_others_need() {
    let dir = tempfile::TempDir::new().unwrap();
    let (a_id, b_id, x_id) = (NodeId([1; 16]), NodeId([2; 16]), NodeId([4; 16]));
    let mut a = Replica::open(dir.path().join("a.redb"), a_id).unwrap();
    let mut b = Replica::open(dir.path().join("b.redb"), b_id).unwrap();
    let mut x = Replica::open(dir.path().join("x.redb"), x_id).unwrap();
    a.add_members(&[b_id, x_id], 0).unwrap();
    a.write(WriteBatch::new().create_table(table()), 0).unwrap();
    insert_rows(&mut a, 0..50, "a");
    // X, then B (one change more), hold a prefix of A's changes; A has made more since.
    let (mut sa, mut sx) = sessions(&a, &x);
    lockstep(&mut sa, &mut a, &mut sx, &mut x, 100);
    insert_rows(&mut a, 50..100, "a");
    let (mut sa, mut sb) = sessions(&a, &b);
    lockstep(&mut sa, &mut a, &mut sb, &mut b, 100);
    drop((sa, sb));
    insert_rows(&mut a, 100..150, "a");
    a.write(WriteBatch::new().update("kv", vec![Value::from(1)], [("v", Value::from("a-late"))]), 0).unwrap();
    x.write(WriteBatch::new().insert("kv", [("k", Value::from(1000)), ("v", Value::from("x"))]), 0).unwrap();
    let (x_real, b_real) = (x.version_vector().clone(), b.version_vector().clone());
    assert_eq!((x_real.seq(a_id), b_real.seq(a_id), a.version_vector().seq(a_id)), (2, 3, 5));

    // X's Hello claims A's changes up to 15 (A has made 5) and its own one change.
    let claimed: edgestore::VersionVector = [(a_id, 15), (x_id, 1)].into_iter().collect();
    let mut sa = Session::new(config(), a_id, x_id, a.version_vector(), 0);
    let mut sx = Session::new(config(), x_id, a_id, &claimed, 0);
    lockstep(&mut sa, &mut a, &mut sx, &mut x, 100);
    assert_eq!(a.version_vector().seq(x_id), 1, "X's own change reached A");
    assert_eq!(x.version_vector(), &x_real, "A sent X nothing it claimed to hold");
    // The horizon is capped by A's own vector (condition (b) holds: A has X's change) and
    // held back by B's honest report: what B lacks stays in A's log.
    let h = a.horizon(0, u64::MAX);
    assert!(h.waiting_for.is_empty(), "{h:?}");
    assert!(a.version_vector().dominates(&h.vector));
    assert_eq!(h.vector, b_real, "the horizon is what B holds");
    let report = a.compact_log_step(&h.vector, usize::MAX).unwrap();
    assert!(report.complete && report.entries_removed == 3);
    assert!(a.changes_since(&b_real, 1000, 1 << 20).is_ok(), "B can still be caught up from the log");
    assert!(
        matches!(a.changes_since(&x_real, 1000, 1 << 20), Err(edgestore::StorageError::BelowLogFloor { .. })),
        "X's real vector is below A's floor now"
    );

    // X forwards that B holds everything X claimed (capped at X's claim, which is high).
    let held = |member, vector: &edgestore::VersionVector| edgestore::HeldClaim {
        member,
        vector: vector.clone(),
        heard_ago_ms: 0,
    };
    let b_claimed: edgestore::VersionVector = [(a_id, 15), (x_id, 1)].into_iter().collect();
    let entries = vec![frame::held_to_wire(&held(b_id, &b_claimed)), frame::held_to_wire(&held(x_id, &claimed))];
    sa.handle_frame(0, &Frame::Holders { entries }.encode(), &mut a).unwrap();
    let h = a.horizon(0, u64::MAX);
    assert_eq!(&h.vector, a.version_vector(), "the horizon rises to A's vector, never above it");
    let report = a.compact_log_step(&h.vector, usize::MAX).unwrap();
    assert!(report.complete);
    assert_eq!(a.log_floor(), a.version_vector(), "A's log holds nothing any more");
    drop((sa, sx));

    // X reconnects with its real vector, and B connects: both are below A's floor, and
    // catch up by state transfer.
    let a_rows = rows(&a);
    assert_eq!(a_rows.len(), 151);
    assert!(a_rows.contains(&(Value::from(1), Value::from("a-late"))));
    assert!(a_rows.contains(&(Value::from(1000), Value::from("x"))));
    for receiver in [&mut x, &mut b] {
        let (mut sa, mut sr) = sessions(&a, receiver);
        lockstep(&mut sa, &mut a, &mut sr, receiver, 10_000);
        let received = transfer_events(&mut sr);
        assert!(received.last().is_some_and(|t| t.done && t.role == TransferRole::Receiver), "{received:?}");
        assert_eq!(sr.stats().transfers_completed, 1);
        assert_eq!(receiver.version_vector(), a.version_vector());
        assert_eq!(receiver.state_digest().unwrap(), a.state_digest().unwrap());
        assert_eq!(rows(receiver), a_rows);
        assert!(receiver.check_integrity().unwrap().is_empty());
        assert!(sa.is_established() && sr.is_established());
    }
    assert!(a.check_integrity().unwrap().is_empty());
}

/// An append-only table's rows live in blocks, not documents: once the donor's log is
/// compacted, a new node gets them from the session's transfer (after the documents) and
/// ends with the donor's state; later appends stream above the installed vector.
#[test]
fn a_new_node_gets_append_only_rows_by_transfer_from_a_compacted_donor() {
    let dir = tempfile::TempDir::new().unwrap();
    let mut a = Replica::open(dir.path().join("a.redb"), NodeId([1; 16])).unwrap();
    let run = |replica: &mut Replica, statement: &str| {
        edgestore::sql::execute(replica, statement, &[], 0).unwrap_or_else(|e| panic!("{statement}: {e}"));
    };
    run(
        &mut a,
        "CREATE TABLE readings (sensor INTEGER NOT NULL, ts TIMESTAMP NOT NULL, value REAL) \
         WITH (append_only = true, time_column = 'ts', bucket = '10 minutes')",
    );
    for sensor in 0..20 {
        let values: Vec<String> = (0..50).map(|i| format!("({sensor}, {}, {i}.5)", i * 60_000)).collect();
        run(&mut a, &format!("INSERT INTO readings VALUES {}", values.join(", ")));
    }
    let upto = a.version_vector().clone();
    while !a.compact_log_step(&upto, 256).unwrap().complete {}
    assert_eq!(a.log_floor(), a.version_vector());
    let mut d = Replica::open(dir.path().join("d.redb"), NodeId([4; 16])).unwrap();
    let (mut sa, mut sd) = sessions(&a, &d);
    let trips = lockstep(&mut sa, &mut a, &mut sd, &mut d, 10_000);
    assert!(trips < 10_000, "the transfer ends");
    assert_eq!(d.state_digest().unwrap(), a.state_digest().unwrap());
    assert_eq!(d.version_vector(), a.version_vector());
    // One catalog document and 20 statements × 5 ten-minute buckets of blocks.
    assert_eq!(sd.stats().transfer_docs_received, 1 + 100);
    assert!(d.check_integrity().unwrap().is_empty());
    run(&mut a, "INSERT INTO readings VALUES (99, 0, 0.5)");
    sa.handle_store_changed();
    lockstep(&mut sa, &mut a, &mut sd, &mut d, 100);
    assert_eq!(d.state_digest().unwrap(), a.state_digest().unwrap());
    let count =
        edgestore::sql::execute(&mut d, "SELECT count(*) FROM readings", &[], 0).unwrap().collect_rows().unwrap();
    assert_eq!(count, vec![vec![Value::Integer(1001)]]);
}
