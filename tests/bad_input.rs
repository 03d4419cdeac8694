//! Bad remote input: every kind of bad change envelope a peer can send is refused with a
//! typed [`ApplyError`], leaves the replica exactly as it was (state digest, version vector,
//! change log and pending changes; the good changes of a refused batch included), and
//! leaves it healthy (`check_integrity` empty).
//!
//! The cases are data ([`Case`]): decoding failures (truncated, corrupted, wrong version,
//! garbage, oversized), forgeries (automerge actor not the envelope origin, equivocation,
//! changes in the receiver's own name), changes that contradict the catalog, and batches
//! mixing good and bad changes. Well-formed but hostile automerge content is checked too.
//! A seeded mutation sweep then feeds thousands of mutated batches of valid envelopes
//! (bit flips, truncations, insertions, field rewrites, duplicated and reordered batches).
//!
//! Seed: `EDGESTORE_TEST_SEED` (decimal), else [`DEFAULT_SEED`]; it is printed.

use std::collections::{BTreeMap, BTreeSet};
use std::panic::{catch_unwind, AssertUnwindSafe};

use automerge::transaction::Transactable;
use automerge::{ActorId, AutoCommit, ScalarValue, ROOT};
use edgestore::change::{DocKey, EnvelopeWire, Malformation, CHANGE_BYTES_MAX, ENVELOPE_VERSION};
use edgestore::{
    ApplyError, ApplyReport, ChangeError, ColumnDef, ColumnType, IndexSchema, NodeId, Replica, StateDigest,
    TableSchema, Value, VerifiedChange, VersionVector, WriteBatch,
};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_bytes::ByteBuf;
use tempfile::TempDir;

mod common;
use common::{insert, log_of, open_as, sensors, sync, test_seed};

/// Seed used when `EDGESTORE_TEST_SEED` is not set.
const DEFAULT_SEED: u64 = 0xBAD1_A907;
/// Node that writes the valid history.
const SOURCE: NodeId = NodeId([1; 16]);
/// A second writer, so that envelopes carry explicit dependencies.
const PEER: NodeId = NodeId([2; 16]);
/// A node the target has never heard of.
const STRANGER: NodeId = NodeId([3; 16]);
/// The node receiving the bad input.
const TARGET: NodeId = NodeId([9; 16]);

// ---------------------------------------------------------------------------------------
// The valid history the bad input is made from.
// ---------------------------------------------------------------------------------------

/// The source's log, by `(origin, seq)`:
///
/// | change    | content                                   |
/// |-----------|-------------------------------------------|
/// | SOURCE 1  | `CREATE TABLE sensors`                    |
/// | SOURCE 2  | insert 1                                  |
/// | SOURCE 3  | insert 2                                  |
/// | SOURCE 4  | insert 3                                  |
/// | PEER 1    | update 1 (after SOURCE 4)                 |
/// | PEER 2    | increment 2                               |
/// | SOURCE 5  | insert 4 (explicit dependency on PEER 2)  |
/// | SOURCE 6  | delete 3                                  |
/// | SOURCE 7  | `CREATE INDEX by_name`                    |
struct History {
    dir: TempDir,
    source: Replica,
    changes: BTreeMap<(NodeId, u64), Vec<u8>>,
}

impl History {
    fn build() -> History {
        let dir = TempDir::new().unwrap();
        let mut source = open_as(&dir, "source.redb", SOURCE);
        let mut peer = open_as(&dir, "peer.redb", PEER);
        source.write(WriteBatch::new().create_table(sensors()), 1).unwrap();
        for (id, name) in [(1, "pump"), (2, "valve"), (3, "fan")] {
            source.write(insert(id, name), 2).unwrap();
        }
        sync(&source, &mut peer);
        peer.write(WriteBatch::new().update("sensors", vec![1.into()], [("name", Value::from("big pump"))]), 3)
            .unwrap();
        peer.write(WriteBatch::new().increment("sensors", vec![2.into()], "hits", 5), 3).unwrap();
        sync(&peer, &mut source);
        source.write(insert(4, "heater"), 4).unwrap();
        source.write(WriteBatch::new().delete("sensors", vec![3.into()]), 5).unwrap();
        source.write(WriteBatch::new().create_index(IndexSchema::new("by_name", "sensors", &["name"])), 6).unwrap();
        let changes = log_of(&source)
            .into_iter()
            .map(|bytes| {
                let change = VerifiedChange::decode(bytes.clone()).unwrap();
                ((change.origin, change.seq), bytes)
            })
            .collect();
        History { dir, source, changes }
    }

    fn get(&self, origin: NodeId, seq: u64) -> Vec<u8> {
        self.changes.get(&(origin, seq)).unwrap_or_else(|| panic!("no change {origin} {seq}")).clone()
    }

    /// A fresh target holding the source's first three changes (the table, rows 1 and 2).
    fn target(&self, file: &str) -> Replica {
        let mut target = open_as(&self.dir, file, TARGET);
        let prefix = (1..=3).map(|seq| self.get(SOURCE, seq)).collect();
        target.apply_remote(prefix).unwrap();
        target
    }

    /// Every valid envelope, in an order that applies without parking.
    fn causal_order(&self) -> Vec<Vec<u8>> {
        let order = [(SOURCE, 1), (SOURCE, 2), (SOURCE, 3), (SOURCE, 4), (PEER, 1), (PEER, 2)];
        let order = order.into_iter().chain((5..=7).map(|seq| (SOURCE, seq)));
        order.map(|(origin, seq)| self.get(origin, seq)).collect()
    }
}

// ---------------------------------------------------------------------------------------
// Forging envelopes.
// ---------------------------------------------------------------------------------------

fn decode_wire(bytes: &[u8]) -> EnvelopeWire {
    assert_eq!(bytes[0], ENVELOPE_VERSION);
    serde_cbor::from_slice(&bytes[1..]).unwrap()
}

fn encode_wire(wire: &EnvelopeWire) -> Vec<u8> {
    let mut out = vec![ENVELOPE_VERSION];
    out.extend(serde_cbor::ser::to_vec_packed(wire).unwrap());
    out
}

/// Re-encodes an envelope after `edit` changed its fields.
fn rewrite(bytes: &[u8], edit: impl FnOnce(&mut EnvelopeWire)) -> Vec<u8> {
    let mut wire = decode_wire(bytes);
    edit(&mut wire);
    encode_wire(&wire)
}

fn node_bytes(node: NodeId) -> ByteBuf {
    ByteBuf::from(node.as_bytes().to_vec())
}

/// An envelope from scratch.
fn envelope(origin: NodeId, seq: u64, deps: &[(NodeId, u64)], ops: Vec<(DocKey, Vec<u8>)>) -> Vec<u8> {
    encode_wire(&EnvelopeWire {
        origin: node_bytes(origin),
        seq,
        time_ms: 0,
        deps: deps.iter().map(|(node, seq)| (node_bytes(*node), *seq)).collect(),
        ops: ops.into_iter().map(|(key, change)| (ByteBuf::from(key.encode()), ByteBuf::from(change))).collect(),
    })
}

/// One automerge change by `actor` on a new document, made by `edit`.
fn automerge_change(actor: NodeId, edit: impl FnOnce(&mut AutoCommit)) -> Vec<u8> {
    let mut doc = AutoCommit::new().with_actor(ActorId::from(actor.as_bytes().as_slice()));
    edit(&mut doc);
    doc.commit().expect("the edit made operations");
    doc.get_last_local_change().unwrap().raw_bytes().to_vec()
}

/// The second change of a document whose first change is never sent: its automerge
/// dependency is missing.
fn automerge_change_without_its_dependency(actor: NodeId) -> Vec<u8> {
    let mut doc = AutoCommit::new().with_actor(ActorId::from(actor.as_bytes().as_slice()));
    doc.put(ROOT, "_cl", ScalarValue::Uint(1)).unwrap();
    doc.commit();
    doc.put(ROOT, "_cl", ScalarValue::Uint(3)).unwrap();
    doc.commit();
    doc.get_last_local_change().unwrap().raw_bytes().to_vec()
}

fn row_key(table: &str, epoch: u64, id: i64) -> DocKey {
    DocKey::Row { table: table.into(), epoch, pk: edgestore::keys::encode_tuple(&[Value::from(id)]) }
}

fn column_id(name: &str, ty: ColumnType) -> String {
    ColumnDef::new(name, ty).id()
}

/// A row document for `sensors` (epoch 1) written by `actor` with raw automerge values.
fn hostile_row(actor: NodeId, id: i64, fields: Vec<(String, ScalarValue)>) -> (DocKey, Vec<u8>) {
    let change = automerge_change(actor, |doc| {
        doc.put(ROOT, column_id("id", ColumnType::Integer), ScalarValue::Int(id)).unwrap();
        for (key, value) in fields {
            doc.put(ROOT, key, value).unwrap();
        }
    });
    (row_key("sensors", 1, id), change)
}

/// A catalog document for table `name` written by `actor`.
fn hostile_table(actor: NodeId, name: &str, causal_length: u64, definition: Option<Vec<u8>>) -> (DocKey, Vec<u8>) {
    let change = automerge_change(actor, |doc| {
        doc.put(ROOT, "_cl", ScalarValue::Uint(causal_length)).unwrap();
        if let Some(definition) = definition {
            doc.put(ROOT, "def", ScalarValue::Bytes(definition)).unwrap();
        }
    });
    (DocKey::Table(name.into()), change)
}

/// Flips bits of the first occurrence of `needle` in `bytes`, at `offset` into it.
fn flip_inside(bytes: &[u8], needle: &[u8], offset: usize) -> Vec<u8> {
    flip_bits_inside(bytes, needle, offset, 0x5A)
}

fn flip_bits_inside(bytes: &[u8], needle: &[u8], offset: usize, mask: u8) -> Vec<u8> {
    let at = bytes.windows(needle.len()).position(|w| w == needle).expect("needle present");
    let mut out = bytes.to_vec();
    out[at + offset] ^= mask;
    out
}

// ---------------------------------------------------------------------------------------
// Observing that nothing changed.
// ---------------------------------------------------------------------------------------

/// Everything a refused batch must leave untouched.
#[derive(Debug, PartialEq)]
struct Observed {
    digest: StateDigest,
    versions: VersionVector,
    pending: u64,
    log: Vec<Vec<u8>>,
}

fn observe(replica: &Replica) -> Observed {
    Observed {
        digest: replica.state_digest().unwrap(),
        versions: replica.version_vector().clone(),
        pending: replica.pending_changes().unwrap(),
        log: log_of(replica),
    }
}

fn assert_healthy(replica: &Replica, context: &str) {
    let problems = replica.check_integrity().unwrap();
    assert!(problems.is_empty(), "{context}: integrity problems: {problems:#?}");
}

/// One bad batch and the error it must be refused with.
struct Case {
    name: &'static str,
    batch: Vec<Vec<u8>>,
    expected: fn(&ApplyError) -> bool,
}

fn case(name: &'static str, batch: Vec<Vec<u8>>, expected: fn(&ApplyError) -> bool) -> Case {
    Case { name, batch, expected }
}

/// Feeds every case to `target` and checks: the typed error, nothing changed, healthy.
fn check_refused(target: &mut Replica, cases: Vec<Case>) {
    for Case { name, batch, expected } in cases {
        let before = observe(target);
        match target.apply_remote(batch) {
            Ok(report) => panic!("{name}: accepted ({report:?}), expected a refusal"),
            Err(error) => assert!(expected(&error), "{name}: wrong error: {error:?} ({error})"),
        }
        assert_eq!(observe(target), before, "{name}: a refused batch changed the replica");
        assert_healthy(target, name);
    }
}

/// The first change of the batch is not a valid envelope.
fn malformed(e: &ApplyError) -> bool {
    matches!(e, ApplyError::Invalid { index: 0, source: ChangeError::Malformed(_) })
}

// ---------------------------------------------------------------------------------------
// The cases.
// ---------------------------------------------------------------------------------------

#[test]
fn forging_helpers_reproduce_the_wire_format_exactly() {
    let history = History::build();
    for bytes in history.changes.values() {
        assert_eq!(&encode_wire(&decode_wire(bytes)), bytes, "re-encoding must not change an envelope");
    }
}

#[test]
fn undecodable_changes_are_refused_with_typed_errors() {
    let history = History::build();
    let mut target = history.target("target.redb");
    let good = history.get(SOURCE, 4);
    let wire = decode_wire(&good);
    let automerge_bytes = wire.ops[0].1.to_vec();
    let oversized_but_well_formed = rewrite(&good, |w| {
        w.ops.push((ByteBuf::from(DocKey::Table("padding".into()).encode()), ByteBuf::from(vec![0; CHANGE_BYTES_MAX])))
    });
    let cases = vec![
        case("empty bytes", vec![vec![]], malformed),
        case("only the version byte", vec![vec![ENVELOPE_VERSION]], malformed),
        case("truncated by one byte", vec![good[..good.len() - 1].to_vec()], malformed),
        case("truncated to half", vec![good[..good.len() / 2].to_vec()], malformed),
        case("one trailing byte", vec![[good.as_slice(), &[0]].concat()], malformed),
        case("version byte 0", vec![[&[0], &good[1..]].concat()], |e| {
            matches!(e, ApplyError::Invalid { index: 0, source: ChangeError::UnsupportedVersion(0) })
        }),
        // Version 2 is that of envelopes with append batches: one without is malformed.
        case("version byte 2 without an append batch", vec![[&[2], &good[1..]].concat()], |e| {
            matches!(e, ApplyError::Invalid { index: 0, source: ChangeError::Malformed(Malformation::VersionMismatch) })
        }),
        case("version byte 3", vec![[&[3], &good[1..]].concat()], |e| {
            matches!(e, ApplyError::Invalid { index: 0, source: ChangeError::UnsupportedVersion(3) })
        }),
        case("garbage text", vec![b"\x01this is not an envelope".to_vec()], malformed),
        case("CBOR of another shape", vec![[&[1u8][..], &serde_cbor::to_vec(&"hello").unwrap()].concat()], malformed),
        case(
            "oversized garbage",
            vec![vec![ENVELOPE_VERSION; CHANGE_BYTES_MAX + 1]],
            |e| matches!(e, ApplyError::Invalid { index: 0, source: ChangeError::TooLarge(n) } if *n == CHANGE_BYTES_MAX + 1),
        ),
        case("oversized but well formed", vec![oversized_but_well_formed], |e| {
            matches!(e, ApplyError::Invalid { index: 0, source: ChangeError::TooLarge(_) })
        }),
        case("automerge magic bytes corrupted", vec![flip_inside(&good, &automerge_bytes, 1)], |e| {
            matches!(e, ApplyError::Invalid { index: 0, source: ChangeError::BadDocChange { doc: 0, .. } })
        }),
        case("automerge change cut short", vec![rewrite(&good, |w| w.ops[0].1.truncate(10))], |e| {
            matches!(e, ApplyError::Invalid { index: 0, source: ChangeError::BadDocChange { doc: 0, .. } })
        }),
        case("garbage document key", vec![rewrite(&good, |w| w.ops[0].0 = ByteBuf::from(vec![9, 9, 9]))], |e| {
            matches!(e, ApplyError::Invalid { index: 0, source: ChangeError::BadDocChange { doc: 0, .. } })
        }),
        case(
            "row key with an even epoch",
            vec![rewrite(&good, |w| w.ops[0].0 = ByteBuf::from(even_epoch_key()))],
            |e| matches!(e, ApplyError::Invalid { index: 0, source: ChangeError::BadDocChange { doc: 0, .. } }),
        ),
        case("seq 0", vec![rewrite(&good, |w| w.seq = 0)], malformed),
        case("origin of 15 bytes", vec![rewrite(&good, |w| w.origin = ByteBuf::from(vec![1; 15]))], malformed),
        case("no document change", vec![rewrite(&good, |w| w.ops.clear())], malformed),
        case("the same document twice", vec![rewrite(&good, |w| w.ops.push(w.ops[0].clone()))], malformed),
        case(
            "dependency on the origin itself",
            vec![rewrite(&good, |w| w.deps = vec![(node_bytes(SOURCE), 1)])],
            malformed,
        ),
        case("dependency on seq 0", vec![rewrite(&good, |w| w.deps = vec![(node_bytes(PEER), 0)])], malformed),
        case(
            "dependencies out of order",
            vec![rewrite(&good, |w| w.deps = vec![(node_bytes(STRANGER), 1), (node_bytes(PEER), 1)])],
            malformed,
        ),
    ];
    check_refused(&mut target, cases);
}

/// A corrupted automerge change must never pass as a different, valid change: it would be
/// held under the genuine change's `(origin, seq)`, so the genuine change would then be
/// refused as an equivocation and the replica would diverge from its peers for good.
/// Every automerge change carries a checksum (the first 4 bytes of its SHA-256), so every
/// single-bit flip anywhere in it is detectable.
#[test]
fn every_single_bit_flip_inside_an_automerge_change_is_refused() {
    let history = History::build();
    let good = history.get(SOURCE, 4);
    let automerge_bytes = decode_wire(&good).ops[0].1.to_vec();
    let mut target = history.target("target-0.redb");
    let mut accepted = Vec::new();
    let mut flips = 0;
    for offset in 0..automerge_bytes.len() {
        for bit in [0, 7] {
            flips += 1;
            let before = observe(&target);
            match target.apply_remote(vec![flip_bits_inside(&good, &automerge_bytes, offset, 1 << bit)]) {
                Err(ApplyError::Invalid { index: 0, source: ChangeError::BadDocChange { doc: 0, .. } })
                | Err(ApplyError::Invalid { index: 0, source: ChangeError::ForgedActor { .. } }) => {
                    assert_eq!(observe(&target), before, "byte {offset} bit {bit}: refused but changed");
                }
                Err(other) => panic!("byte {offset} bit {bit}: unexpected error {other:?}"),
                Ok(report) => {
                    accepted.push(format!("byte {offset} bit {bit}: {report:?}"));
                    // Start again from a target that does not hold the corrupted change.
                    target = history.target(&format!("target-{flips}.redb"));
                }
            }
        }
    }
    assert_healthy(&target, "after the bit flips");
    assert!(
        accepted.is_empty(),
        "{} of {flips} single-bit flips in a {}-byte automerge change were accepted as valid changes \
         (the automerge checksum is not verified): {accepted:#?}",
        accepted.len(),
        automerge_bytes.len()
    );
}

fn even_epoch_key() -> Vec<u8> {
    let mut key = DocKey::row_prefix("sensors", 3);
    let len = key.len();
    key[len - 1] = 2; // epoch 2: a row of a dropped incarnation cannot be written
    key.extend(edgestore::keys::encode_tuple(&[Value::from(3)]));
    key
}

#[test]
fn forged_changes_are_refused_with_typed_errors() {
    let history = History::build();
    let mut target = history.target("target.redb");
    let held = history.get(SOURCE, 2);
    let next = history.get(SOURCE, 4);

    // A node that shares SOURCE's id (a cloned store): different changes, same keys.
    let mut clone = open_as(&history.dir, "clone.redb", SOURCE);
    clone.write(WriteBatch::new().create_table(sensors()), 1).unwrap();
    clone.write(insert(99, "impostor"), 2).unwrap();
    let cloned_seq_2 = log_of(&clone)[1].clone();
    // A node that shares the target's id.
    let mut impostor = open_as(&history.dir, "impostor.redb", TARGET);
    impostor.write(WriteBatch::new().create_table(sensors()), 1).unwrap();
    let in_target_name = log_of(&impostor)[0].clone();

    // Packed CBOR: version, map(5), key 0, bytes(16), then the origin.
    assert_eq!(&next[1..4], &[0xA5, 0x00, 0x50]);
    let mut origin_bit_flipped = next.clone();
    origin_bit_flipped[4] ^= 0x01;

    let cases = vec![
        case("origin rewritten to another node", vec![rewrite(&next, |w| w.origin = node_bytes(STRANGER))], |e| {
            matches!(e, ApplyError::Invalid { index: 0, source: ChangeError::ForgedActor { origin, .. } }
                if *origin == STRANGER)
        }),
        case("a bit flipped in the origin", vec![origin_bit_flipped], |e| {
            matches!(e, ApplyError::Invalid { index: 0, source: ChangeError::ForgedActor { .. } })
        }),
        case(
            "a peer's change relabelled as the receiver's",
            vec![rewrite(&next, |w| w.origin = node_bytes(TARGET))],
            |e| {
                matches!(e, ApplyError::Invalid { index: 0, source: ChangeError::ForgedActor { origin, .. } }
                if *origin == TARGET)
            },
        ),
        case(
            "a held change with another timestamp",
            vec![rewrite(&held, |w| w.time_ms += 1)],
            |e| matches!(e, ApplyError::Equivocation { origin, seq: 2 } if *origin == SOURCE),
        ),
        case(
            "a cloned node's different change under a held seq",
            vec![cloned_seq_2],
            |e| matches!(e, ApplyError::Equivocation { origin, seq: 2 } if *origin == SOURCE),
        ),
        case(
            "two different changes under one new seq in one batch",
            vec![next.clone(), rewrite(&next, |w| w.time_ms += 1)],
            |e| matches!(e, ApplyError::Equivocation { origin, seq: 4 } if *origin == SOURCE),
        ),
        case("a change in the receiver's name it never made", vec![in_target_name], |e| {
            matches!(e, ApplyError::ForgedLocalOrigin { seq: 1 })
        }),
    ];
    check_refused(&mut target, cases);
}

#[test]
fn changes_for_the_receivers_own_history() {
    let history = History::build();
    let mut target = history.target("target.redb");
    target.write(insert(10, "local"), 7).unwrap();
    let own = log_of(&target).into_iter().find(|b| VerifiedChange::decode(b.clone()).unwrap().origin == TARGET);
    let own = own.expect("the target's own change is in its log");
    // Its own change echoed back is a duplicate, not an error.
    let before = observe(&target);
    let report = target.apply_remote(vec![own.clone()]).unwrap();
    assert_eq!(report, ApplyReport { duplicates: 1, ..ApplyReport::default() });
    assert_eq!(observe(&target), before);

    let mut impostor = open_as(&history.dir, "impostor.redb", TARGET);
    impostor.write(WriteBatch::new().create_table(sensors()), 1).unwrap();
    impostor.write(insert(20, "impostor"), 2).unwrap();
    let impostor_log = log_of(&impostor);
    let cases = vec![
        case(
            "a different change under the receiver's held seq",
            vec![impostor_log[0].clone()],
            |e| matches!(e, ApplyError::Equivocation { origin, seq: 1 } if *origin == TARGET),
        ),
        case("a change in the receiver's name beyond what it wrote", vec![impostor_log[1].clone()], |e| {
            matches!(e, ApplyError::ForgedLocalOrigin { seq: 2 })
        }),
        case("its own change followed by a forged next one", vec![own, impostor_log[1].clone()], |e| {
            matches!(e, ApplyError::ForgedLocalOrigin { seq: 2 })
        }),
    ];
    check_refused(&mut target, cases);
}

/// Changes of STRANGER that create table `ghost`, insert a row and create an index on it.
fn ghost_changes(history: &History) -> Vec<Vec<u8>> {
    let mut stranger = open_as(&history.dir, "stranger.redb", STRANGER);
    let ghost = TableSchema::new("ghost").column(ColumnDef::new("k", ColumnType::Integer)).primary_key(&["k"]);
    stranger.write(WriteBatch::new().create_table(ghost), 1).unwrap();
    stranger.write(WriteBatch::new().insert("ghost", [("k", Value::from(1))]), 2).unwrap();
    stranger.write(WriteBatch::new().create_index(IndexSchema::new("ghost_k", "ghost", &["k"])), 3).unwrap();
    log_of(&stranger)
}

#[test]
fn changes_that_contradict_the_catalog_are_refused() {
    let history = History::build();
    let mut target = history.target("target.redb");
    let ghost = ghost_changes(&history);
    // Sent as seq 1 their dependencies are met, so they are applied, not parked.
    let ghost_row = rewrite(&ghost[1], |w| w.seq = 1);
    let ghost_index = rewrite(&ghost[2], |w| w.seq = 1);
    let next = history.get(SOURCE, 4);
    let next_in_epoch_3 = rewrite(&next, |w| {
        let DocKey::Row { table, pk, .. } = DocKey::decode(&w.ops[0].0).unwrap() else { panic!("a row change") };
        w.ops[0].0 = ByteBuf::from(DocKey::Row { table, epoch: 3, pk }.encode());
    });
    let cases = vec![
        case(
            "a row of an unknown table",
            vec![ghost_row],
            |e| matches!(e, ApplyError::Inconsistent { origin, seq: 1, .. } if *origin == STRANGER),
        ),
        case(
            "an index on an unknown table",
            vec![ghost_index],
            |e| matches!(e, ApplyError::Inconsistent { origin, seq: 1, .. } if *origin == STRANGER),
        ),
        case(
            "a row of a table incarnation that does not exist",
            vec![next_in_epoch_3],
            |e| matches!(e, ApplyError::Inconsistent { origin, seq: 4, .. } if *origin == SOURCE),
        ),
    ];
    check_refused(&mut target, cases);
}

/// A document key and the automerge changes a repair brings it.
type RepairDoc = (Vec<u8>, Vec<Vec<u8>>);
/// A bad repair: its name, its documents and the error it must be refused with.
type RepairCase = (&'static str, Vec<RepairDoc>, fn(&ApplyError) -> bool);

#[test]
fn bad_repairs_are_refused_with_typed_errors_and_change_nothing() {
    let history = History::build();
    let mut target = history.target("target.redb");
    let (ghost_key, ghost_change) = {
        let change = automerge_change(SOURCE, |doc| doc.put(ROOT, "_cl", ScalarValue::Uint(1)).unwrap());
        (row_key("ghost", 1, 1).encode(), change)
    };
    let repairs: Vec<RepairCase> = vec![
        (
            "more documents than a repair may hold",
            vec![(row_key("sensors", 1, 1).encode(), Vec::new()); edgestore::REPAIR_DOCS_MAX + 1],
            |e| matches!(e, ApplyError::MalformedBatch(_)),
        ),
        (
            "a change by a node the receiver never heard of",
            vec![(ghost_key.clone(), vec![automerge_change(STRANGER, |doc| doc.put(ROOT, "_cl", 1u64).unwrap())])],
            |e| matches!(e, ApplyError::Invalid { index: 0, source: ChangeError::BadDocChange { doc: 0, .. } }),
        ),
        (
            "a row of a table the receiver does not hold",
            vec![(ghost_key, vec![ghost_change])],
            // Named by the document's first author: a repair does not name its sender.
            |e| matches!(e, ApplyError::InconsistentDocument { node, .. } if *node == SOURCE),
        ),
    ];
    for (name, docs, expected) in repairs {
        let before = observe(&target);
        match target.repair_docs(docs) {
            Ok(report) => panic!("{name}: accepted ({report:?}), expected a refusal"),
            Err(error) => assert!(expected(&error), "{name}: wrong error: {error:?} ({error})"),
        }
        assert_eq!(observe(&target), before, "{name}: a refused repair changed the replica");
        assert_healthy(&target, name);
    }
}

#[test]
fn a_batch_with_one_bad_change_applies_none_of_its_good_changes() {
    let history = History::build();
    let mut target = history.target("target.redb");
    let good: Vec<Vec<u8>> = [(SOURCE, 4), (PEER, 1), (PEER, 2)].map(|(o, s)| history.get(o, s)).to_vec();
    let with = |bad: Vec<u8>| [good.clone(), vec![bad]].concat();
    let ghost_row = rewrite(&ghost_changes(&history)[1], |w| w.seq = 1);
    let mut impostor = open_as(&history.dir, "impostor.redb", TARGET);
    impostor.write(WriteBatch::new().create_table(sensors()), 1).unwrap();
    let in_target_name = log_of(&impostor)[0].clone();
    let next = history.get(SOURCE, 5);
    let cases = vec![
        case("good, good, good, truncated", with(next[..next.len() - 3].to_vec()), |e| {
            matches!(e, ApplyError::Invalid { index: 3, source: ChangeError::Malformed(_) })
        }),
        case("bad first, then good", [vec![vec![7, 7, 7]], good.clone()].concat(), |e| {
            matches!(e, ApplyError::Invalid { index: 0, source: ChangeError::UnsupportedVersion(7) })
        }),
        case("good, good, good, forged actor", with(rewrite(&next, |w| w.origin = node_bytes(STRANGER))), |e| {
            matches!(e, ApplyError::Invalid { index: 3, source: ChangeError::ForgedActor { .. } })
        }),
        case(
            "good, good, good, equivocation",
            with(rewrite(&history.get(SOURCE, 1), |w| w.time_ms = 42)),
            |e| matches!(e, ApplyError::Equivocation { origin, seq: 1 } if *origin == SOURCE),
        ),
        case("good, good, good, in the receiver's name", with(in_target_name), |e| {
            matches!(e, ApplyError::ForgedLocalOrigin { seq: 1 })
        }),
        // The good changes are applied inside the transaction before the bad one fails.
        case(
            "good, good, good, row of an unknown table",
            with(ghost_row),
            |e| matches!(e, ApplyError::Inconsistent { origin, seq: 1, .. } if *origin == STRANGER),
        ),
    ];
    check_refused(&mut target, cases);

    // Nothing of the refused batches stuck: the good changes still apply, and everything
    // converges to the source.
    let report = target.apply_remote(good).unwrap();
    assert_eq!((report.applied, report.duplicates, report.parked), (3, 0, 0));
    target.apply_remote(history.causal_order()).unwrap();
    assert_eq!(target.state_digest().unwrap(), history.source.state_digest().unwrap());
    assert_eq!(target.version_vector(), history.source.version_vector());
    assert_healthy(&target, "after the refusals");
}

#[test]
fn a_bad_change_parked_for_its_dependencies_is_discarded_alone_when_they_arrive() {
    let history = History::build();
    let mut target = history.target("target.redb");
    let ghost = ghost_changes(&history);
    // STRANGER 2 rewritten to insert into a table nobody created: it waits for STRANGER 1.
    let bad_second = rewrite(&ghost[1], |w| {
        let DocKey::Row { pk, epoch, .. } = DocKey::decode(&w.ops[0].0).unwrap() else { panic!("a row change") };
        w.ops[0].0 = ByteBuf::from(DocKey::Row { table: "phantom".into(), epoch, pk }.encode());
    });
    let digest = target.state_digest().unwrap();
    let report = target.apply_remote(vec![bad_second]).unwrap();
    assert_eq!((report.applied, report.parked), (0, 1));
    assert_eq!(target.state_digest().unwrap(), digest, "a parked change is not applied");
    assert_eq!(target.pending_changes().unwrap(), 1);

    let report = target.apply_remote(vec![ghost[0].clone()]).unwrap();
    assert_eq!((report.applied, report.discarded), (1, 1), "STRANGER 1 applies, the bad STRANGER 2 is dropped");
    assert_eq!(target.pending_changes().unwrap(), 0);
    assert_eq!(target.version_vector().seq(STRANGER), 1);
    assert_healthy(&target, "after discarding");
    // The genuine STRANGER 2 and 3 are not blocked by the discarded forgery.
    let report = target.apply_remote(ghost[1..].to_vec()).unwrap();
    assert_eq!(report.applied, 2);
    assert_eq!(target.snapshot().unwrap().scan("ghost").unwrap().count(), 1);
    assert_healthy(&target, "after the genuine changes");
}

#[test]
fn well_formed_but_hostile_automerge_content_is_refused() {
    let history = History::build();
    let mut target = history.target("target.redb");
    let not_a_definition = Some(b"\x01not CBOR".to_vec());
    let other_name = Some(edgestore::catalog::encode_table(&sensors()));
    let single = |op: (DocKey, Vec<u8>)| vec![envelope(STRANGER, 1, &[], vec![op])];
    let cases = vec![
        case(
            "a table definition that does not decode",
            single(hostile_table(STRANGER, "evil", 1, not_a_definition.clone())),
            |e| matches!(e, ApplyError::Inconsistent { origin, seq: 1, .. } if *origin == STRANGER),
        ),
        case(
            "a table document without a definition",
            single(hostile_table(STRANGER, "evil", 1, None)),
            |e| matches!(e, ApplyError::Inconsistent { origin, seq: 1, .. } if *origin == STRANGER),
        ),
        case(
            "a table definition under another name",
            single(hostile_table(STRANGER, "evil", 1, other_name)),
            |e| matches!(e, ApplyError::Inconsistent { origin, seq: 1, .. } if *origin == STRANGER),
        ),
        case(
            "a garbage definition concurrent with an existing table's",
            single(hostile_table(STRANGER, "sensors", 1, not_a_definition)),
            |e| matches!(e, ApplyError::Inconsistent { origin, seq: 1, .. } if *origin == STRANGER),
        ),
    ];
    check_refused(&mut target, cases);
}

/// An automerge change whose automerge dependency the document lacks is not refused (a
/// node that installed a state transfer sends such changes honestly, docs/design.md §
/// "State transfer"): it is parked, changes nothing else, and waits for the dependency.
#[test]
fn an_automerge_change_whose_dependency_is_missing_is_parked_not_applied() {
    let history = History::build();
    let mut target = history.target("target.redb");
    let before = observe(&target);
    let batch = vec![envelope(
        STRANGER,
        1,
        &[],
        vec![(row_key("sensors", 1, 7), automerge_change_without_its_dependency(STRANGER))],
    )];
    let report = target.apply_remote(batch).unwrap();
    assert_eq!((report.applied, report.parked, report.parked_for_documents), (0, 1, 1), "{report:?}");
    let after = observe(&target);
    assert_eq!(after.pending, before.pending + 1);
    assert_eq!(Observed { pending: before.pending, ..after }, before, "only pending_v1 changed");
    assert_healthy(&target, "parked for its document");
}

#[test]
fn well_formed_but_odd_rows_are_contained_and_later_local_writes_do_not_panic() {
    let history = History::build();
    let mut target = history.target("target.redb");
    let integer_in_a_text_column = hostile_row(
        STRANGER,
        50,
        vec![("_cl".into(), ScalarValue::Uint(1)), (column_id("name", ColumnType::Text), ScalarValue::Int(5))],
    );
    let huge_causal_length = hostile_row(
        STRANGER,
        51,
        vec![("_cl".into(), ScalarValue::Uint(u64::MAX)), (column_id("name", ColumnType::Text), "x".into())],
    );
    let counter_at_the_limit = hostile_row(
        STRANGER,
        52,
        vec![
            ("_cl".into(), ScalarValue::Uint(1)),
            (column_id("hits", ColumnType::Counter), ScalarValue::counter(i64::MAX)),
        ],
    );
    let batch =
        vec![envelope(STRANGER, 1, &[], vec![integer_in_a_text_column, huge_causal_length, counter_at_the_limit])];
    target.apply_remote(batch).unwrap();
    assert_healthy(&target, "after the odd rows");
    let snapshot = target.snapshot().unwrap();
    let row = |id: i64| snapshot.get("sensors", &[Value::from(id)]).unwrap();
    assert_eq!(
        row(50),
        Some(vec![Value::from(50), Value::Null, Value::from(0)]),
        "a value of another type reads as NULL"
    );
    assert_eq!(row(51), Some(vec![Value::from(51), Value::from("x"), Value::from(0)]));
    assert_eq!(row(52), Some(vec![Value::from(52), Value::Null, Value::from(i64::MAX)]));
    drop(snapshot);

    // Local writes on those rows must succeed or fail with a typed error, never panic.
    let local_writes: Vec<(&str, WriteBatch)> = vec![
        (
            "update the row with a foreign value",
            WriteBatch::new().update("sensors", vec![50.into()], [("name", Value::from("ok"))]),
        ),
        ("delete the row whose causal length is u64::MAX", WriteBatch::new().delete("sensors", vec![51.into()])),
        ("increment the counter at i64::MAX", WriteBatch::new().increment("sensors", vec![52.into()], "hits", 1)),
    ];
    let mut panicked = Vec::new();
    for (name, batch) in local_writes {
        match catch_unwind(AssertUnwindSafe(|| target.write(batch, 9))) {
            Ok(result) => println!("{name}: {result:?}"),
            Err(panic) => panicked.push(format!("{name}: {}", panic_message(&panic))),
        }
    }
    assert!(panicked.is_empty(), "local writes panicked after well-formed remote changes: {panicked:#?}");
    assert_healthy(&target, "after the local writes");
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(non-string panic)".into())
}

// ---------------------------------------------------------------------------------------
// Seeded mutation sweep.
// ---------------------------------------------------------------------------------------

/// How one batch of valid envelopes is made bad (or just odd).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Mutation {
    /// 1 to 4 random bit flips in one envelope.
    BitFlips,
    /// One envelope cut at a random length.
    Truncate,
    /// 1 to 8 random bytes inserted into one envelope.
    InsertBytes,
    /// 1 to 8 bytes removed from one envelope.
    DeleteBytes,
    /// One field of one envelope rewritten (seq, origin, time, dependencies, documents).
    RewriteField,
    /// The batch sent twice in one batch.
    Duplicate,
    /// A random subset of all valid envelopes, shuffled.
    Reorder,
}

impl Mutation {
    /// Whether the batch still holds only valid envelopes (duplicated or reordered).
    fn keeps_envelopes_valid(self) -> bool {
        matches!(self, Mutation::Duplicate | Mutation::Reorder)
    }
}

const MUTATIONS: [Mutation; 7] = [
    Mutation::BitFlips,
    Mutation::Truncate,
    Mutation::InsertBytes,
    Mutation::DeleteBytes,
    Mutation::RewriteField,
    Mutation::Duplicate,
    Mutation::Reorder,
];
/// Mutated batches fed in the sweep.
const SWEEP_BATCHES: usize = 3_000;
/// Batches fed to one target before a fresh one is started (fresh targets lack changes, so
/// mutated changes reach the apply path instead of being duplicates).
const BATCHES_PER_TARGET: usize = 150;

/// Rewrites one field of an envelope; other valid envelopes supply foreign parts.
fn rewrite_field(rng: &mut ChaCha8Rng, bytes: &[u8], valid: &[Vec<u8>]) -> Vec<u8> {
    let nodes = [SOURCE, PEER, STRANGER, TARGET];
    let other = decode_wire(&valid[rng.random_range(0..valid.len())]);
    let choice = rng.random_range(0..9);
    rewrite(bytes, |w| match choice {
        0 => w.seq = rng.random_range(0..12),
        1 => w.origin = node_bytes(nodes[rng.random_range(0..nodes.len())]),
        2 => w.time_ms = rng.random(),
        3 => w.deps.clear(),
        4 => w.deps = vec![(node_bytes(nodes[rng.random_range(0..nodes.len())]), rng.random_range(0..12))],
        5 => w.ops = other.ops,
        6 => w.ops.extend(other.ops),
        7 => {
            let (key, _) = &mut w.ops[0];
            if let Ok(DocKey::Row { table, pk, .. }) = DocKey::decode(key) {
                *key = ByteBuf::from(DocKey::Row { table, epoch: rng.random_range(0..4) * 2 + 1, pk }.encode());
            }
        }
        _ => {
            let (key, _) = &mut w.ops[0];
            *key = other.ops[0].0.clone();
        }
    })
}

fn mutate(rng: &mut ChaCha8Rng, mutation: Mutation, valid: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let start = rng.random_range(0..valid.len());
    let len = rng.random_range(1..=4).min(valid.len() - start);
    let mut batch = valid[start..start + len].to_vec();
    let victim = rng.random_range(0..batch.len());
    let bytes = &mut batch[victim];
    match mutation {
        Mutation::BitFlips => {
            for _ in 0..rng.random_range(1..=4) {
                let at = rng.random_range(0..bytes.len());
                bytes[at] ^= 1 << rng.random_range(0..8);
            }
        }
        Mutation::Truncate => bytes.truncate(rng.random_range(0..bytes.len())),
        Mutation::InsertBytes => {
            let at = rng.random_range(0..=bytes.len());
            let extra: Vec<u8> = (0..rng.random_range(1..=8)).map(|_| rng.random()).collect();
            bytes.splice(at..at, extra);
        }
        Mutation::DeleteBytes => {
            let at = rng.random_range(0..bytes.len());
            let end = (at + rng.random_range(1..=8)).min(bytes.len());
            bytes.drain(at..end);
        }
        Mutation::RewriteField => *bytes = rewrite_field(rng, bytes, valid),
        Mutation::Duplicate => batch.extend(batch.clone()),
        Mutation::Reorder => {
            batch = valid.iter().filter(|_| rng.random_bool(0.5)).cloned().collect();
            batch.shuffle(rng);
        }
    }
    batch
}

fn error_kind(error: &ApplyError) -> String {
    match error {
        ApplyError::Invalid { source, .. } => {
            let kind = match source {
                ChangeError::TooLarge(_) => "TooLarge",
                ChangeError::UnsupportedVersion(_) => "UnsupportedVersion",
                ChangeError::Malformed(_) => "Malformed",
                ChangeError::BadDocChange { .. } => "BadDocChange",
                ChangeError::ForgedActor { .. } => "ForgedActor",
                _ => "other",
            };
            format!("Invalid/{kind}")
        }
        ApplyError::Equivocation { .. } => "Equivocation".into(),
        ApplyError::ForgedLocalOrigin { .. } => "ForgedLocalOrigin".into(),
        ApplyError::Inconsistent { .. } => "Inconsistent".into(),
        ApplyError::PendingFull(_) => "PendingFull".into(),
        ApplyError::Storage(e) => format!("Storage({e})"),
        _ => "other".into(),
    }
}

/// Tallies of one mutation kind.
#[derive(Default)]
struct Tally {
    fed: usize,
    ok: usize,
    errors: BTreeMap<String, usize>,
}

#[test]
fn seeded_mutation_sweep_only_yields_typed_errors_and_never_half_applies() {
    let seed = test_seed(DEFAULT_SEED);
    println!("bad_input mutation sweep seed: {seed} (set EDGESTORE_TEST_SEED to replay)");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let history = History::build();
    let valid = history.causal_order();
    let genuine: BTreeSet<Vec<u8>> = valid.iter().cloned().collect();
    let mut tallies: BTreeMap<Mutation, Tally> = BTreeMap::new();
    let mut target = None;
    let mut targets = 0;
    // Until a target holds a mutated envelope, it holds only genuine changes, and then
    // every batch of valid envelopes must be accepted.
    let mut poisoned = false;
    let mut valid_on_clean_targets = 0;
    for iteration in 0..SWEEP_BATCHES {
        if iteration % BATCHES_PER_TARGET == 0 {
            poisoned = false;
            if let Some(done) = target.take() {
                assert_healthy(&done, &format!("target {targets} at the end of its batches"));
            }
            targets += 1;
            let mut fresh = open_as(&history.dir, &format!("sweep-{targets}.redb"), TARGET);
            // Start from a random valid prefix, so that mutated changes find their dependencies.
            let prefix = rng.random_range(0..valid.len());
            fresh.apply_remote(valid[..prefix].to_vec()).unwrap();
            target = Some(fresh);
        }
        let replica = target.as_mut().expect("a target is open");
        let mutation = MUTATIONS[rng.random_range(0..MUTATIONS.len())];
        let batch = mutate(&mut rng, mutation, &valid);
        let before = observe(replica);
        let context = || {
            let batch: Vec<String> = batch.iter().map(hex::encode).collect();
            format!("seed {seed}, iteration {iteration}, {mutation:?}, batch {batch:?}")
        };
        let result = catch_unwind(AssertUnwindSafe(|| replica.apply_remote(batch.clone())))
            .unwrap_or_else(|panic| panic!("apply_remote panicked ({}): {}", panic_message(&panic), context()));
        let tally = tallies.entry(mutation).or_default();
        tally.fed += 1;
        if mutation.keeps_envelopes_valid() && !poisoned {
            assert!(result.is_ok(), "valid envelopes refused with {:?}: {}", result.as_ref().err(), context());
            valid_on_clean_targets += 1;
        }
        match result {
            Ok(report) => {
                tally.ok += 1;
                // Conservatively: a parked change may be a mutated one.
                let holds_mutated = || report.parked > 0 || log_of(replica).iter().any(|b| !genuine.contains(b));
                poisoned |= !mutation.keeps_envelopes_valid() && holds_mutated();
            }
            Err(error) => {
                let kind = error_kind(&error);
                assert!(!kind.starts_with("Storage"), "bad input surfaced as a storage error {error:?}: {}", context());
                assert_eq!(observe(replica), before, "refused with {error:?} but the replica changed: {}", context());
                *tally.errors.entry(kind).or_default() += 1;
            }
        }
    }
    assert_healthy(target.as_ref().expect("a target is open"), "the last target");

    println!(
        "{SWEEP_BATCHES} mutated batches over {targets} fresh targets ({valid_on_clean_targets} batches of valid \
         envelopes on targets holding only genuine changes, all accepted):"
    );
    for (mutation, tally) in &tallies {
        println!("  {mutation:?}: fed {}, accepted {}, refused {:?}", tally.fed, tally.ok, tally.errors);
    }
    let refused: usize = tallies.values().map(|t| t.errors.values().sum::<usize>()).sum();
    assert!(refused > SWEEP_BATCHES / 3, "the sweep should mostly produce bad input, refused only {refused}");
    assert!(tallies.len() == MUTATIONS.len(), "every mutation kind was exercised");
}

/// The append-only payloads' fuzz entry point (`fuzz/fuzz_targets/append_payloads.rs`)
/// on stable: every truncation and every one-byte corruption of a real append batch, of
/// a real transferred block and of a real range tombstone decodes without panicking, and
/// whatever still decodes as a batch or a tombstone survives its own encoding.
#[test]
fn append_payloads_survive_every_truncation_and_corruption() {
    let dir = TempDir::new().unwrap();
    let mut a = open_as(&dir, "a.redb", NodeId([1; 16]));
    let readings = "CREATE TABLE readings (sensor INTEGER NOT NULL, ts TIMESTAMP NOT NULL, value REAL, note TEXT) \
                    WITH (append_only = true, time_column = 'ts', bucket = '1 hour')";
    common::sql_run(&mut a, readings);
    common::sql_run(
        &mut a,
        "INSERT INTO readings VALUES (1, 0, 1.5, 'a'), (2, 3600000, NULL, 'bb'), (3, 5, 2.0, NULL)",
    );
    let envelope = log_of(&a).pop().expect("the insert's envelope");
    let batch = VerifiedChange::decode(envelope).unwrap().appends.remove(0);
    let (key, payload) = (batch.key(), batch.payload());
    let mut batch_input = vec![0, key.len() as u8];
    batch_input.extend_from_slice(&key);
    batch_input.extend_from_slice(&payload);
    let transfer = a.export_transfer(&[], 100, 1 << 20).unwrap();
    let block = transfer.docs.iter().find(|d| d.key[0] == 3).expect("a block follows the catalog document");
    let mut block_input = vec![1];
    block_input.extend_from_slice(&0i64.to_be_bytes());
    block_input.extend_from_slice(&block.snapshot);
    common::sql_run(&mut a, "DELETE FROM readings WHERE ts >= 1 AND ts < 3600000");
    let envelope = log_of(&a).pop().expect("the delete's envelope");
    let tombstone = VerifiedChange::decode(envelope).unwrap().tombstones.remove(0);
    assert_eq!((tombstone.lo, tombstone.hi), (Some(1), Some(3_600_000)));
    let (key, payload) = (tombstone.key(), tombstone.payload());
    let mut tombstone_input = vec![2, key.len() as u8];
    tombstone_input.extend_from_slice(&key);
    tombstone_input.extend_from_slice(&payload);
    let mut inputs = 0;
    for input in [batch_input, block_input, tombstone_input] {
        for len in 0..=input.len() {
            edgestore::fuzzing::decode_append_payloads(&input[..len]);
            inputs += 1;
        }
        for at in 1..input.len() {
            for flip in [0x01, 0x80, 0xFF] {
                let mut corrupted = input.clone();
                corrupted[at] ^= flip;
                edgestore::fuzzing::decode_append_payloads(&corrupted);
                inputs += 1;
            }
        }
    }
    assert!(inputs > 600, "{inputs} inputs");
}
