//! Held vectors and the causal-stability horizon (`src/replica/holders.rs`) on real redb
//! files: a relayed topology, regressing and inflated claims, members away past the
//! horizon, condition (b), and a restart.

mod common;

use common::{insert, node, open, sensors, sync};
use edgestore::{HeldClaim, Horizon, Replica, VersionVector, WriteBatch};
use tempfile::TempDir;

const DAY_MS: u64 = 24 * 3600 * 1000;
const PEER_HORIZON_MS: u64 = 7 * DAY_MS;

fn vector(entries: &[(u8, u64)]) -> VersionVector {
    entries.iter().map(|&(n, seq)| (node(n), seq)).collect()
}

/// `from`'s own vector, as a `Hello` or an `Ack` reports it.
fn own(replica: &Replica) -> Vec<HeldClaim> {
    vec![HeldClaim { member: replica.node_id(), vector: replica.version_vector().clone(), heard_ago_ms: 0 }]
}

fn claim(member: u8, entries: &[(u8, u64)]) -> HeldClaim {
    HeldClaim { member: node(member), vector: vector(entries), heard_ago_ms: 0 }
}

fn held(horizon: &Horizon, member: u8) -> &edgestore::MemberHold {
    horizon.members.iter().find(|m| m.member == node(member)).expect("a member")
}

fn write(replica: &mut Replica, id: i64) {
    replica.write(insert(id, "x"), 0).expect("write");
}

/// Three replicas with the table on all of them (created by node 1).
fn three(dir: &TempDir) -> (Replica, Replica, Replica) {
    let (mut a, mut b, mut c) = (open(dir, 1), open(dir, 2), open(dir, 3));
    a.write(WriteBatch::new().create_table(sensors()), 0).expect("create");
    sync(&a, &mut b);
    sync(&b, &mut c);
    (a, b, c)
}

/// A–B–C: A cannot count C's holdings until B forwards C's vector, and then can.
#[test]
fn relayed_member_holds_the_horizon_back_until_forwarded() {
    let dir = TempDir::new().unwrap();
    let (mut a, mut b, mut c) = three(&dir);
    write(&mut c, 1);
    sync(&c, &mut b);
    sync(&b, &mut a);
    write(&mut a, 2);
    sync(&a, &mut b);
    sync(&b, &mut c);
    // B and A exchange their own vectors (Hello/Ack); C is an origin in A's vector.
    a.record_held(b.node_id(), &own(&b), 10).unwrap();
    b.record_held(a.node_id(), &own(&a), 10).unwrap();
    let h = a.horizon(10, PEER_HORIZON_MS);
    assert_eq!(h.vector, VersionVector::new(), "C's holdings are unknown to A");
    assert!(h.members.iter().any(|m| m.member == c.node_id()), "C is a member of A (an origin of its vector)");
    // B hears C, and forwards what C holds to A.
    b.record_held(c.node_id(), &own(&c), 20).unwrap();
    let forwarded = b.held_since(0, 100, 20).claims;
    let mut claims = own(&b);
    claims.extend(forwarded.into_iter().filter(|claim| claim.member != a.node_id()));
    a.record_held(b.node_id(), &claims, 20).unwrap();
    let h = a.horizon(20, PEER_HORIZON_MS);
    assert_eq!(&h.vector, a.version_vector(), "every member holds everything A holds");
    assert_eq!(held(&h, 3).lag_changes, 0);
}

/// A peer that reports less than before (restored from an old copy) cannot lower what it
/// is known to hold.
#[test]
fn regressing_claims_are_ignored_and_counted() {
    let dir = TempDir::new().unwrap();
    let mut a = open(&dir, 1);
    a.record_held(node(2), &[claim(2, &[(5, 5), (2, 3)])], 1).unwrap();
    assert!(!a.record_held(node(2), &[claim(2, &[(5, 3), (2, 3)])], 2).unwrap(), "nothing grew");
    let h = a.horizon(2, PEER_HORIZON_MS);
    assert_eq!(held(&h, 2).held, vector(&[(5, 5), (2, 3)]));
    assert_eq!(a.holders_counters().claims_lower, 1);
    // A mixed claim raises what it can.
    a.record_held(node(2), &[claim(2, &[(5, 4), (2, 6)])], 3).unwrap();
    assert_eq!(held(&a.horizon(3, PEER_HORIZON_MS), 2).held, vector(&[(5, 5), (2, 6)]));
}

/// A forwarded claim above what the forwarder holds is cut down to it, except the
/// member's own origin (condition (b) needs what the member reported making).
#[test]
fn forwarded_claims_are_capped_at_the_forwarder() {
    let dir = TempDir::new().unwrap();
    let mut a = open(&dir, 1);
    let claims = [claim(2, &[(5, 1)]), claim(3, &[(5, 5), (3, 2), (4, 7)])];
    a.record_held(node(2), &claims, 1).unwrap();
    let h = a.horizon(1, PEER_HORIZON_MS);
    assert_eq!(held(&h, 3).held, vector(&[(5, 1), (3, 2)]));
    assert_eq!(a.holders_counters().claims_capped, 1);
    // Node 4, named only inside a forwarded vector, is a member known to hold nothing.
    assert_eq!(held(&h, 4).held, VersionVector::new());
    // Claims about this node itself are not recorded: it holds its own vector.
    a.record_held(node(2), &[claim(2, &[(1, 1)]), claim(1, &[(1, 1)])], 2).unwrap();
    assert_eq!(held(&a.horizon(2, PEER_HORIZON_MS), 1).held, VersionVector::new());
}

/// Claims of changes this node does not hold — more of its own than it has made, of an
/// origin it has not received yet — never lift its horizon above its vector: the minimum
/// includes `V`. A claim of more of this node's own changes than it made is capped at what
/// it made when recorded, so it cannot cover its later changes; an inflated claim of
/// another origin is kept as made (entries only grow), and what a lying member lacks below
/// the horizon it can only get by state transfer (`sync-protocol/tests/state_transfer.rs`),
/// never lose.
#[test]
fn claims_above_what_this_node_holds_do_not_lift_the_horizon_above_its_vector() {
    let dir = TempDir::new().unwrap();
    let (mut a, b, mut c) = three(&dir);
    write(&mut a, 1);
    write(&mut c, 2);
    assert_eq!(a.version_vector(), &vector(&[(1, 2)]));
    // B and C claim A's changes up to 9 and C's first; A holds neither A's 3.. nor C's 1.
    let inflated = [(1, 9), (3, 1)];
    a.record_held(b.node_id(), &[claim(2, &inflated)], 1).unwrap();
    a.record_held(c.node_id(), &[claim(3, &inflated)], 1).unwrap();
    let h = a.horizon(1, PEER_HORIZON_MS);
    assert_eq!(h.waiting_for, vec![c.node_id()], "C reported a change of its own that A lacks");
    assert_eq!(h.vector, VersionVector::new());
    sync(&c, &mut a);
    let h = a.horizon(2, PEER_HORIZON_MS);
    assert!(h.waiting_for.is_empty());
    assert_eq!(&h.vector, a.version_vector(), "capped at A's vector, not at the claims");
    assert_eq!(held(&h, 2).held, vector(&[(1, 2), (3, 1)]), "A's origin capped at what A made");
    assert_eq!(held(&h, 2).lag_changes, 0);
    // A's next change is not covered by claims made before it: B and C must report it.
    write(&mut a, 3);
    let h = a.horizon(3, PEER_HORIZON_MS);
    assert_eq!(h.vector, vector(&[(1, 2), (3, 1)]));
    a.record_held(b.node_id(), &[claim(2, &[(1, 3), (3, 1)])], 4).unwrap();
    a.record_held(c.node_id(), &[claim(3, &[(1, 3), (3, 1)])], 4).unwrap();
    assert_eq!(&a.horizon(4, PEER_HORIZON_MS).vector, a.version_vector());
}

/// A member not heard of for longer than the peer horizon stops holding it back, and is
/// shown as beyond it; this node itself never is.
#[test]
fn member_silent_past_the_peer_horizon_is_excluded() {
    let dir = TempDir::new().unwrap();
    let (mut a, mut b, _c) = three(&dir);
    write(&mut a, 1);
    sync(&a, &mut b);
    a.add_members(&[node(3)], 0).unwrap();
    a.record_held(b.node_id(), &own(&b), 0).unwrap();
    assert_eq!(a.horizon(DAY_MS, PEER_HORIZON_MS).vector, VersionVector::new(), "C holds nothing known");
    // B keeps talking; C stays silent.
    a.record_held(b.node_id(), &[], 8 * DAY_MS).unwrap();
    let h = a.horizon(8 * DAY_MS, PEER_HORIZON_MS);
    assert_eq!(&h.vector, a.version_vector());
    assert!(held(&h, 3).beyond_horizon && !held(&h, 2).beyond_horizon && !held(&h, 1).beyond_horizon);
    assert_eq!(held(&h, 3).lag_changes, a.version_vector().total_changes());
    // A forwarded report that C was heard of recently brings it back; the horizon does not fall.
    let claims = [claim(2, &[]), HeldClaim { member: node(3), vector: VersionVector::new(), heard_ago_ms: 1000 }];
    a.record_held(b.node_id(), &claims, 8 * DAY_MS + 5).unwrap();
    let h = a.horizon(8 * DAY_MS + 5, PEER_HORIZON_MS);
    assert!(!held(&h, 3).beyond_horizon);
    assert_eq!(&h.vector, a.version_vector(), "the horizon is monotone");
}

/// Condition (b): while a member reports changes of its own this node lacks, the horizon
/// keeps its previous value.
#[test]
fn horizon_waits_for_changes_a_member_made() {
    let dir = TempDir::new().unwrap();
    let (mut a, mut b, _c) = three(&dir);
    a.record_held(b.node_id(), &own(&b), 0).unwrap();
    let before = a.horizon(0, PEER_HORIZON_MS);
    write(&mut b, 1);
    write(&mut a, 2);
    sync(&a, &mut b);
    // B now holds A's change, and has made one A lacks.
    a.record_held(b.node_id(), &own(&b), 1).unwrap();
    let h = a.horizon(1, PEER_HORIZON_MS);
    assert_eq!(h.waiting_for, vec![b.node_id()]);
    assert_eq!(h.vector, before.vector);
    assert!(a.version_vector().dominates(&h.vector));
    sync(&b, &mut a);
    let h = a.horizon(2, PEER_HORIZON_MS);
    assert!(h.waiting_for.is_empty());
    assert_eq!(&h.vector, a.version_vector());
}

/// Held vectors, heard times and the last horizon survive a restart.
#[test]
fn restart_keeps_held_vectors_and_the_horizon() {
    let dir = TempDir::new().unwrap();
    let (mut a, mut b, _c) = three(&dir);
    write(&mut a, 1);
    sync(&a, &mut b);
    a.record_held(b.node_id(), &own(&b), 5).unwrap();
    let h = a.horizon(5, PEER_HORIZON_MS);
    assert!(!h.vector.is_empty());
    // B makes a change A lacks: the horizon cannot be recomputed after the restart.
    write(&mut b, 2);
    a.record_held(b.node_id(), &own(&b), 6).unwrap();
    a.record_held(b.node_id(), &[claim(3, &[(3, 4)])], 7).unwrap();
    let b_held = b.version_vector().clone();
    drop(a);
    let a = open(&dir, 1);
    let reopened = a.horizon(7, PEER_HORIZON_MS);
    assert_eq!(held(&reopened, 2).held, b_held);
    assert_eq!(held(&reopened, 2).last_heard_ms, Some(7));
    assert_eq!(held(&reopened, 3).held, vector(&[(3, 4)]));
    assert_eq!(held(&reopened, 3).last_heard_ms, Some(7));
    assert_eq!(reopened.waiting_for, vec![node(2), node(3)]);
    assert_eq!(reopened.vector, h.vector, "the stored horizon is kept");
}

/// The member table is bounded: past `MEMBERS_MAX` members are refused and counted, and the
/// horizon stops advancing (a member it cannot track cannot be known to hold anything).
#[test]
fn members_past_the_cap_are_refused_and_freeze_the_horizon() {
    let dir = TempDir::new().unwrap();
    let mut a = open(&dir, 1);
    write_table(&mut a);
    let before = a.horizon(0, PEER_HORIZON_MS);
    assert_eq!(&before.vector, a.version_vector(), "alone, everything is stable");
    let ids: Vec<_> = (0..=edgestore::replica::MEMBERS_MAX as u32)
        .map(|i| {
            let mut id = [0xEE; 16];
            id[..4].copy_from_slice(&i.to_be_bytes());
            edgestore::NodeId(id)
        })
        .collect();
    a.add_members(&ids, 0).unwrap();
    assert_eq!(a.holders_counters().members_refused, 1);
    write(&mut a, 1);
    let h = a.horizon(0, PEER_HORIZON_MS);
    assert!(h.members_full);
    assert_eq!(h.vector, before.vector, "the horizon keeps its previous value");
}

fn write_table(replica: &mut Replica) {
    replica.write(WriteBatch::new().create_table(sensors()), 0).expect("create");
}
