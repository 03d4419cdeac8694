//! Anti-entropy between two sessions over real replicas whose documents diverged while
//! their version vectors stayed equal.
//!
//! Divergence is made with a third replica `C`: `A` and `B` both apply `C`'s first change
//! (equal vectors), then automerge changes of later `C` writes are merged into the
//! documents of only one of them (`repair_docs`, the receiving end of anti-entropy) — the
//! state of a node whose documents hold changes its log lacks, or lack changes the
//! other's log holds. Frames move in lockstep flights (everything one side sent, then
//! everything the other side sent), so the count of flights is exact; a round trip is two.

mod common;
use common::kv_table as table;
use edgestore::{NodeId, Replica, Value, VerifiedChange, VersionVector, WriteBatch};
use serde_bytes::ByteBuf;
use sync_protocol::frame::{self, Frame, RangeDigest};
use sync_protocol::{ClusterId, Event, ProtocolError, Session, SessionConfig};

const CLUSTER: ClusterId = ClusterId([9; 16]);
const INTERVAL_MS: u64 = 1_000;

struct Pair {
    _dir: tempfile::TempDir,
    a: Replica,
    b: Replica,
    c: Replica,
}

/// `A` and `B` hold `C`'s `rows` rows (equal vectors, equal documents).
fn pair(rows: i64) -> Pair {
    let dir = tempfile::TempDir::new().unwrap();
    let open = |name: &str, id: u8| Replica::open(dir.path().join(name), NodeId([id; 16])).unwrap();
    let (mut a, mut b, mut c) = (open("a.redb", 1), open("b.redb", 2), open("c.redb", 3));
    let mut batch = WriteBatch::new().create_table(table());
    for k in 0..rows {
        batch = batch.insert("kv", [("k", Value::from(k)), ("v", Value::from("v0"))]);
    }
    c.write(batch, 0).unwrap();
    let changes = c.changes_since(&VersionVector::new(), 1024, usize::MAX).unwrap().changes;
    a.apply_remote(changes.clone()).unwrap();
    b.apply_remote(changes).unwrap();
    Pair { _dir: dir, a, b, c }
}

/// `C` updates `keys`; the automerge changes (not the envelope) are merged into `target`.
fn diverge(c: &mut Replica, target: &mut Replica, keys: impl Iterator<Item = i64>, value: &str) {
    let before = c.version_vector().clone();
    let mut batch = WriteBatch::new();
    for k in keys {
        batch = batch.update("kv", vec![k.into()], [("v", Value::from(value))]);
    }
    c.write(batch, 0).unwrap();
    let envelope = c.changes_since(&before, 1, usize::MAX).unwrap().changes.remove(0);
    let docs = VerifiedChange::decode(envelope)
        .unwrap()
        .ops
        .into_iter()
        .map(|op| (op.key.encode(), vec![op.change.raw_bytes().to_vec()]))
        .collect();
    target.repair_docs(docs).unwrap();
}

fn config(anti_entropy: bool) -> SessionConfig {
    let mut config = SessionConfig::new(CLUSTER);
    // Only the probing side's keepalive comes due during a round.
    config.keepalive_ms = if anti_entropy { INTERVAL_MS } else { 1_000_000 };
    config.idle_timeout_ms = 1_000_000;
    config.anti_entropy_interval_ms = if anti_entropy { INTERVAL_MS } else { u64::MAX };
    config
}

struct Run {
    /// Rounds (root digests sent): the periodic one and its follow-ups.
    rounds: u64,
    /// Flights after the root digests until nothing more was sent, all rounds.
    flights: u64,
    /// Anti-entropy frames and bytes, both directions, the probe included.
    frames: u64,
    bytes: u64,
    repaired: u64,
}

/// Handshake, then anti-entropy rounds started by `A` (only `A` probes): the periodic one
/// and the follow-ups while rounds find divergence, each driven in lockstep flights until
/// both sides are quiet.
fn run_round(pair: &mut Pair) -> Run {
    let (a_id, b_id) = (pair.a.node_id(), pair.b.node_id());
    let mut sa = Session::new(config(true), a_id, b_id, pair.a.version_vector(), 0);
    let mut sb = Session::new(config(false), b_id, a_id, pair.b.version_vector(), 0);
    let drain = |s: &mut Session, r: &Replica, now| std::iter::from_fn(|| s.poll_transmit(now, r)).collect::<Vec<_>>();
    // Handshake at t = 0 (both Hellos, then held vectors: no changes for in-sync vectors).
    let (ha, hb) = (drain(&mut sa, &pair.a, 0), drain(&mut sb, &pair.b, 0));
    assert_eq!((ha.len(), hb.len()), (1, 1), "in-sync peers exchange one Hello each");
    for f in ha {
        sb.handle_frame(0, &f, &mut pair.b).unwrap();
    }
    for f in hb {
        sa.handle_frame(0, &f, &mut pair.a).unwrap();
    }
    // Then each side tells the other what the third member, C, is known to hold.
    loop {
        let (ha, hb) = (drain(&mut sa, &pair.a, 0), drain(&mut sb, &pair.b, 0));
        if ha.is_empty() && hb.is_empty() {
            break;
        }
        for (frames, to, replica) in [(ha, &mut sb, &mut pair.b), (hb, &mut sa, &mut pair.a)] {
            for f in frames {
                assert!(matches!(Frame::decode(&f), Ok(Frame::Holders { .. })), "only held vectors follow the Hellos");
                to.handle_frame(0, &f, replica).unwrap();
            }
        }
    }
    // The keepalive slot at INTERVAL_MS carries A's root digest.
    let mut now = INTERVAL_MS;
    sa.handle_timeout(now);
    let mut to_b = drain(&mut sa, &pair.a, now);
    assert!(matches!(Frame::decode(&to_b[0]), Ok(Frame::Digests { ref ranges, .. }) if ranges[0].depth == 0));
    let mut flights = 0;
    let mut rounds = 1;
    let mut repaired = 0;
    loop {
        flights += round_flights(&mut sa, &mut sb, pair, now, std::mem::take(&mut to_b));
        // A follow-up round is due if this one found divergence.
        match sa.poll_timeout() {
            Some(at) if at < now + INTERVAL_MS => now = at,
            _ => break,
        }
        sa.handle_timeout(now);
        to_b = drain(&mut sa, &pair.a, now);
        assert_eq!(to_b.len(), 1, "a follow-up round starts with one root digest");
        rounds += 1;
    }
    for session in [&mut sa, &mut sb] {
        while let Some(event) = session.poll_event() {
            if let Event::Repaired(report) = &event {
                repaired += report.docs_repaired as u64;
            }
            assert!(!matches!(event, Event::Closed { .. }), "{event:?}");
        }
    }
    let (sa, sb) = (sa.stats(), sb.stats());
    Run {
        rounds,
        flights,
        frames: sa.anti_entropy_frames_sent + sb.anti_entropy_frames_sent,
        bytes: sa.anti_entropy_bytes_sent + sb.anti_entropy_bytes_sent,
        repaired,
    }
}

/// Flights of one round after its root digest (`to_b`), in lockstep.
fn round_flights(sa: &mut Session, sb: &mut Session, pair: &mut Pair, now: u64, mut to_b: Vec<Vec<u8>>) -> u64 {
    let drain = |s: &mut Session, r: &Replica| std::iter::from_fn(|| s.poll_transmit(now, r)).collect::<Vec<_>>();
    let mut flights = 0;
    while !to_b.is_empty() {
        for f in to_b.drain(..) {
            sb.handle_frame(now, &f, &mut pair.b).unwrap();
        }
        let to_a = drain(sb, &pair.b);
        if to_a.is_empty() {
            break;
        }
        flights += 1;
        for f in to_a {
            sa.handle_frame(now, &f, &mut pair.a).unwrap();
        }
        to_b = drain(sa, &pair.a);
        if !to_b.is_empty() {
            flights += 1;
        }
    }
    flights
}

fn assert_converged(pair: &Pair) {
    assert_eq!(pair.a.version_vector(), pair.b.version_vector());
    assert_eq!(pair.a.heads_tree().unwrap(), pair.b.heads_tree().unwrap());
    assert_eq!(pair.a.state_digest().unwrap(), pair.b.state_digest().unwrap());
    for replica in [&pair.a, &pair.b] {
        assert_eq!(replica.check_integrity().unwrap(), vec![]);
    }
}

/// The figures of `docs/design.md` § "Anti-entropy": flights and bytes to find and repair
/// `n` divergent rows (half lacking on each side) among 2 000.
#[test]
fn divergent_documents_are_found_and_repaired_in_a_few_round_trips() {
    const ROWS: i64 = 2_000;
    println!("anti-entropy over {ROWS} rows, divergence split between both sides:");
    for n in [1i64, 2, 10, 100, 1_000] {
        let mut pair = pair(ROWS);
        let (to_a, to_b) = (n / 2, n - n / 2);
        if to_a > 0 {
            diverge(&mut pair.c, &mut pair.a, 0..to_a, "only on a");
        }
        diverge(&mut pair.c, &mut pair.b, ROWS - to_b..ROWS, "only on b");
        assert_ne!(pair.a.heads_tree().unwrap(), pair.b.heads_tree().unwrap());
        let run = run_round(&mut pair);
        assert_converged(&pair);
        assert_eq!(run.repaired, n as u64, "n = {n}");
        // Per round: root, 2 levels of children, Heads, Heads back + Repair, Repair; the
        // last round finds nothing. At most 16 small ranges are compared per step.
        assert!(run.flights <= 5 * (run.rounds - 1), "n = {n}: {} flights in {} rounds", run.flights, run.rounds);
        println!(
            "  {n:>5} divergent rows: {} rounds ({} with divergence + 1 clean), {} round trips in all \
             (probes included), {} frames, {} bytes",
            run.rounds,
            run.rounds - 1,
            (run.flights + run.rounds).div_ceil(2),
            run.frames,
            run.bytes
        );
        // A second round finds nothing: the probe goes unanswered.
        let again = run_round(&mut pair);
        assert_eq!((again.rounds, again.flights, again.frames), (1, 0, 1));
    }
}

/// In steady state anti-entropy is one root digest in a keepalive slot, unanswered.
#[test]
fn in_sync_peers_pay_one_probe_per_interval() {
    let mut pair = pair(100);
    let run = run_round(&mut pair);
    assert_eq!((run.rounds, run.flights, run.frames, run.repaired), (1, 0, 1, 0));
    let ping = Frame::Ping { nonce: 1 }.encode().len();
    println!("anti-entropy probe: {} bytes in place of a {ping}-byte Ping, once per interval", run.bytes);
}

fn established(config: SessionConfig, local: &mut Replica, peer: NodeId, peer_vector: &VersionVector) -> Session {
    let mut session = Session::new(config, local.node_id(), peer, local.version_vector(), 0);
    while session.poll_transmit(0, local).is_some() {}
    let hello = Frame::Hello {
        protocol: sync_protocol::frame::PROTOCOL_VERSION,
        cluster: ByteBuf::from(CLUSTER.0.to_vec()),
        node: ByteBuf::from(peer.as_bytes().to_vec()),
        vector: frame::vector_to_wire(peer_vector),
    };
    session.handle_frame(0, &hello.encode(), local).unwrap();
    assert!(session.is_established());
    while let Some(f) = session.poll_transmit(0, local) {
        assert!(matches!(Frame::decode(&f), Ok(Frame::Holders { .. })), "only held vectors follow the Hello");
    }
    session
}

/// A digest frame from a peer holding another version vector is not compared (delta sync
/// is still running); nothing is sent back.
#[test]
fn digests_from_a_peer_with_another_vector_are_ignored() {
    let mut pair = pair(10);
    let peer = pair.b.node_id();
    let peer_vector = pair.b.version_vector().clone();
    let mut session = established(config(false), &mut pair.a, peer, &peer_vector);
    let other: VersionVector = [(NodeId([3; 16]), 7)].into_iter().collect();
    let root = RangeDigest { depth: 0, prefix: 0, docs: 0, digest: ByteBuf::from(vec![0; 32]) };
    let probe = Frame::Digests { vector: ByteBuf::from(frame::vector_hash(&other).to_vec()), ranges: vec![root] };
    session.handle_frame(1, &probe.encode(), &mut pair.a).unwrap();
    assert_eq!(session.poll_transmit(1, &pair.a), None);
    // With the right vector the same (empty) root differs from A's and is answered.
    let vector = ByteBuf::from(frame::vector_hash(pair.a.version_vector()).to_vec());
    let root = RangeDigest { depth: 0, prefix: 0, docs: 0, digest: ByteBuf::from(vec![0; 32]) };
    session.handle_frame(2, &Frame::Digests { vector, ranges: vec![root] }.encode(), &mut pair.a).unwrap();
    assert!(session.poll_transmit(2, &pair.a).is_some());
}

/// A hostile `Repair` (a change by a node the receiver holds nothing from, or garbage) is
/// refused whole and closes the session; the store is untouched.
#[test]
fn hostile_repairs_close_the_session_and_change_nothing() {
    let mut pair = pair(10);
    let before = pair.a.state_digest().unwrap();
    // A change by D, whom A has never heard of.
    let dir = tempfile::TempDir::new().unwrap();
    let mut d = Replica::open(dir.path().join("d.redb"), NodeId([4; 16])).unwrap();
    d.write(WriteBatch::new().create_table(table()), 0).unwrap();
    d.write(WriteBatch::new().insert("kv", [("k", Value::from(1)), ("v", Value::from("x"))]), 0).unwrap();
    let envelope = d.changes_since(&VersionVector::new(), 10, usize::MAX).unwrap().changes.pop().unwrap();
    let op = VerifiedChange::decode(envelope).unwrap().ops.remove(0);
    let forged = vec![(ByteBuf::from(op.key.encode()), vec![ByteBuf::from(op.change.raw_bytes().to_vec())])];
    let garbage = vec![(ByteBuf::from(op.key.encode()), vec![ByteBuf::from(vec![0x85, 0x6f, 0x4a, 0x83, 1, 2, 3])])];
    let bad_key = vec![(ByteBuf::from(vec![0xEE; 8]), vec![ByteBuf::from(op.change.raw_bytes().to_vec())])];
    for docs in [forged, garbage, bad_key] {
        let peer = pair.b.node_id();
        let peer_vector = pair.b.version_vector().clone();
        let mut session = established(config(false), &mut pair.a, peer, &peer_vector);
        let result = session.handle_frame(1, &Frame::Repair { docs }.encode(), &mut pair.a);
        assert!(matches!(result, Err(ProtocolError::ChangeRejected(_))), "{result:?}");
        assert!(matches!(
            Frame::decode(&session.poll_transmit(1, &pair.a).unwrap()),
            Ok(Frame::Close { code: sync_protocol::CloseCode::ChangeRejected, .. })
        ));
        assert_eq!(pair.a.state_digest().unwrap(), before);
        assert_eq!(pair.a.check_integrity().unwrap(), vec![]);
    }
}

/// Anti-entropy frames before `Hello` are protocol errors, like any other frame.
#[test]
fn anti_entropy_frames_before_hello_are_refused() {
    let pair = pair(1);
    let mut a = pair.a;
    let vector = ByteBuf::from(frame::vector_hash(a.version_vector()).to_vec());
    let root = RangeDigest { depth: 0, prefix: 0, docs: 0, digest: ByteBuf::from(vec![0; 32]) };
    let frames = [
        Frame::Digests { vector: vector.clone(), ranges: vec![root] },
        Frame::Heads { vector, reply: false, depth: 0, prefix: 0, docs: vec![], complete: true },
    ];
    for frame in frames {
        let mut session = Session::new(config(false), a.node_id(), NodeId([2; 16]), a.version_vector(), 0);
        let result = session.handle_frame(0, &frame.encode(), &mut a);
        assert!(matches!(result, Err(ProtocolError::UnexpectedFrame(_))), "{result:?}");
    }
}
