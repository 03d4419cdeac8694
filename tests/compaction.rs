//! Log compaction (docs/design.md § "Log compaction") on real redb files: the floor,
//! `changes_since` below and above it, integrity, bounded and repeated steps, reopening,
//! backup and restore of a compacted store, relaying from a compacted log, and changes
//! sent again after their entries were compacted.

use edgestore::{IntegrityProblem, NodeId, Replica, StorageError, TableSchema, VersionVector, WriteBatch};
use redb::{ReadableDatabase, TableDefinition};
use tempfile::TempDir;

mod common;
use common::{assert_healthy, insert, node, open, sensors, sync};

/// Node 1 made the table and rows 1..=`a_rows` (seqs 1..=a_rows+1), node 2 rows
/// 100..100+`b_rows`; both hold everything.
fn two_origins(dir: &TempDir, a_rows: i64, b_rows: i64) -> (Replica, Replica) {
    let (mut a, mut b) = (open(dir, 1), open(dir, 2));
    a.write(WriteBatch::new().create_table(sensors()), 1).unwrap();
    for id in 1..=a_rows {
        a.write(insert(id, "a"), id).unwrap();
    }
    sync(&a, &mut b);
    for id in 100..100 + b_rows {
        b.write(insert(id, "b"), id).unwrap();
    }
    sync(&b, &mut a);
    sync(&a, &mut b);
    (a, b)
}

/// The redb tables the tampering cases touch (layouts in docs/design.md).
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta_v1");
const LOG: TableDefinition<&[u8], &[u8]> = TableDefinition::new("log_v1");

fn vector(entries: &[(u8, u64)]) -> VersionVector {
    entries.iter().map(|&(n, seq)| (node(n), seq)).collect()
}

/// Every envelope `replica` would send a holder of `from`, unbounded.
fn all_since(replica: &Replica, from: &VersionVector) -> Result<Vec<Vec<u8>>, StorageError> {
    let batch = replica.changes_since(from, usize::MAX, usize::MAX)?;
    assert!(batch.complete);
    Ok(batch.changes)
}

fn format_of(path: &std::path::Path) -> u32 {
    let db = redb::Database::open(path).unwrap();
    let txn = db.begin_read().unwrap();
    let format = txn.open_table(META).unwrap().get("format_version").unwrap().unwrap().value().to_vec();
    u32::from_be_bytes(format.try_into().unwrap())
}

#[test]
fn changes_since_below_the_floor_is_refused_and_at_or_above_it_is_unchanged() {
    let dir = TempDir::new().unwrap();
    let (mut a, _b) = two_origins(&dir, 9, 4); // a: node 1 seqs 1..=10, node 2 seqs 1..=4
    let at_3_1 = vector(&[(1, 3), (2, 1)]);
    let at_5_2 = vector(&[(1, 5), (2, 2)]);
    let above = [at_3_1.clone(), at_5_2.clone(), vector(&[(1, 7), (2, 2)]), a.version_vector().clone()];
    let before: Vec<_> = above.iter().map(|v| all_since(&a, v).unwrap()).collect();
    assert_eq!(a.log_floor(), &VersionVector::new(), "nothing compacted yet");

    let report = a.compact_log_step(&at_3_1, 1000).unwrap();
    assert_eq!((report.entries_removed, report.complete), (4, true));
    assert_eq!(report.floor, at_3_1);
    assert_eq!(a.log_floor(), &at_3_1);
    assert!(report.bytes_removed > 0);

    for (from, expected) in above.iter().zip(&before) {
        assert_eq!(&all_since(&a, from).unwrap(), expected, "from {from:?}: same changes as before compaction");
    }
    match all_since(&a, &vector(&[(1, 2), (2, 5)])) {
        Err(StorageError::BelowLogFloor { origin, needed, floor }) => {
            assert_eq!((origin, needed, floor), (node(1), 3, 3));
        }
        other => panic!("expected BelowLogFloor, got {other:?}"),
    }
    match all_since(&a, &VersionVector::new()) {
        Err(StorageError::BelowLogFloor { origin, needed, floor }) => {
            assert_eq!((origin, needed, floor), (node(1), 1, 3))
        }
        other => panic!("expected BelowLogFloor, got {other:?}"),
    }
    // A holder of more than the vector needs nothing, whatever the floor.
    assert_eq!(all_since(&a, &vector(&[(1, 50), (2, 50)])).unwrap(), Vec::<Vec<u8>>::new());
    assert_healthy(&a);
}

#[test]
fn bounded_steps_are_idempotent_monotone_and_keep_the_store_intact() {
    let dir = TempDir::new().unwrap();
    let (mut a, _b) = two_origins(&dir, 9, 4);
    let digest = a.state_digest().unwrap();
    let target = a.version_vector().clone();
    let mut removed = Vec::new();
    loop {
        let report = a.compact_log_step(&target, 3).unwrap();
        assert!(report.entries_removed <= 3, "{report:?}");
        assert!(a.version_vector().dominates(a.log_floor()), "floor ≤ V");
        assert_healthy(&a);
        removed.push(report.entries_removed);
        if report.complete {
            break;
        }
    }
    // 10 + 4 entries in steps of at most 3, origin by origin.
    assert_eq!(removed, vec![3, 3, 3, 3, 2]);
    assert_eq!(a.log_floor(), &target);
    assert_eq!(a.snapshot().unwrap().table_entries().unwrap().iter().find(|(t, _)| t == "log_v1").unwrap().1, 0);
    assert_eq!(a.state_digest().unwrap(), digest, "compaction changes the log only, not the state digest");

    // Again, and with a lower target: nothing to do, the floor does not move back.
    for upto in [target.clone(), vector(&[(1, 2)]), VersionVector::new()] {
        let report = a.compact_log_step(&upto, 100).unwrap();
        assert_eq!((report.entries_removed, report.complete), (0, true));
        assert_eq!(a.log_floor(), &target);
    }
    // Writing goes on above the floor.
    a.write(insert(50, "after"), 50).unwrap();
    assert_eq!(all_since(&a, &target).unwrap().len(), 1);
    assert_healthy(&a);
}

/// Compacting the log frees pages; only `shrink_file` gives them back to the filesystem,
/// and it needs the database alone.
#[test]
fn shrink_file_gives_compacted_pages_back_and_keeps_the_store() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("node1.redb");
    let mut a = open(&dir, 1);
    a.write(WriteBatch::new().create_table(sensors()), 1).unwrap();
    for chunk in 0..40 {
        let batch = (0..100).fold(WriteBatch::new(), |batch, i| {
            let id = chunk * 100 + i;
            batch.insert(
                "sensors",
                [("id", edgestore::Value::from(id)), ("name", edgestore::Value::from("x".repeat(200)))],
            )
        });
        a.write(batch, chunk).unwrap();
    }
    let target = a.version_vector().clone();
    while !a.compact_log_step(&target, 1000).unwrap().complete {}
    let digest = a.state_digest().unwrap();
    let len = || std::fs::metadata(&path).unwrap().len();
    let before = len();

    let snapshot = a.snapshot().unwrap();
    let refused = a.shrink_file();
    assert!(matches!(refused, Err(StorageError::InUse(_))), "{refused:?}");
    drop(snapshot);
    assert!(a.shrink_file().unwrap(), "pages moved");
    let after = len();
    assert!(after < before, "the file shrank: {before} -> {after} bytes");
    assert_eq!(a.state_digest().unwrap(), digest);
    assert_healthy(&a);
    drop(a);
    let mut a = open(&dir, 1);
    assert_eq!(a.state_digest().unwrap(), digest);
    a.write(insert(9_999, "after"), 99).unwrap();
    assert_healthy(&a);
}

#[test]
fn a_compacted_log_moves_a_store_without_implicit_documents_to_format_3() {
    let dir = TempDir::new().unwrap();
    let mut a = open(&dir, 1);
    a.write(WriteBatch::new().create_table(sensors()), 1).unwrap();
    a.write(WriteBatch::new().create_table(TableSchema { name: "other".into(), ..sensors() }), 2).unwrap();
    let path = dir.path().join("node1.redb");
    a.compact_log_step(&vector(&[(1, 1)]), 10).unwrap();
    drop(a);
    assert_eq!(format_of(&path), 3, "a compacted log needs format 3; catalog documents are never implicit");
    let mut a = open(&dir, 1);
    a.write(insert(1, "a"), 3).unwrap();
    drop(a);
    assert_eq!(format_of(&path), 4, "the first implicit document records format 4");
    let a = open(&dir, 1);
    assert_healthy(&a);
}

#[test]
fn the_floor_survives_reopening_and_keeps_the_store_at_format_4() {
    let dir = TempDir::new().unwrap();
    let (mut a, b) = two_origins(&dir, 4, 2);
    drop(b);
    let path = dir.path().join("node1.redb");
    let floor = vector(&[(1, 2), (2, 1)]);
    a.compact_log_step(&vector(&[(2, 1)]), 10).unwrap();
    a.compact_log_step(&floor, 10).unwrap();
    drop(a);
    assert_eq!(format_of(&path), 4, "a store of implicit documents keeps format 4, which admits a compacted log");
    assert_eq!(format_of(&dir.path().join("node2.redb")), 4, "rows inserted once are implicit: format 4");
    let a = Replica::open(&path, node(1)).unwrap();
    assert_eq!(a.log_floor(), &floor);
    assert_healthy(&a);
    assert!(matches!(all_since(&a, &VersionVector::new()), Err(StorageError::BelowLogFloor { .. })));
}

#[test]
fn a_compacted_log_still_relays_what_is_above_its_floor() {
    let dir = TempDir::new().unwrap();
    let (mut a, mut b) = (open(&dir, 1), open(&dir, 2));
    let mut c = open(&dir, 3);
    a.write(WriteBatch::new().create_table(sensors()), 1).unwrap();
    for id in 1..=5 {
        a.write(insert(id, "a"), id).unwrap();
    }
    sync(&a, &mut b);
    sync(&b, &mut c);
    // Everyone holds A's first 6 changes: B may drop them from its log.
    let held = a.version_vector().clone();
    assert!(b.compact_log_step(&held, 100).unwrap().complete);
    for id in 6..=9 {
        a.write(insert(id, "a"), id).unwrap();
    }
    c.write(insert(30, "c"), 30).unwrap();
    sync(&a, &mut b);
    sync(&c, &mut b);
    sync(&b, &mut c); // B relays A's new changes to C from its compacted log
    sync(&b, &mut a);
    assert_eq!(a.state_digest().unwrap(), c.state_digest().unwrap());
    assert_eq!(b.state_digest().unwrap(), c.state_digest().unwrap());
    for replica in [&a, &b, &c] {
        assert_healthy(replica);
    }
}

#[test]
fn changes_sent_again_after_their_entries_were_compacted_are_duplicates() {
    let dir = TempDir::new().unwrap();
    let (mut a, mut b) = two_origins(&dir, 5, 3);
    let everything_of_b = all_since(&b, &VersionVector::new()).unwrap();
    let b_vector = b.version_vector().clone();
    b.compact_log_step(&b_vector, 100).unwrap();
    // A peer resends them all (a retry, a relay from two sides): B's own old changes
    // included, which are neither forged nor parked.
    let report = b.apply_remote(everything_of_b.clone()).unwrap();
    assert_eq!((report.applied, report.duplicates, report.parked), (0, everything_of_b.len(), 0));
    assert_eq!(b.pending_changes().unwrap(), 0);
    assert_healthy(&b);
    // A, uncompacted, sees them as duplicates too, and both still converge.
    a.write(insert(60, "a"), 60).unwrap();
    sync(&a, &mut b);
    assert_eq!(a.state_digest().unwrap(), b.state_digest().unwrap());
    assert_healthy(&b);
}

#[test]
fn a_compacted_store_backs_up_and_restores_with_its_floor() {
    let dir = TempDir::new().unwrap();
    let (mut a, mut b) = two_origins(&dir, 6, 3);
    let floor = vector(&[(1, 4), (2, 3)]);
    a.compact_log_step(&floor, 100).unwrap();
    let dest = dir.path().join("backup.redb");
    let report = a.snapshot().unwrap().backup_to(&dest).unwrap();
    assert_eq!(report.changes, 3, "only what the log still holds is copied");
    let copy = Replica::open(&dest, node(1)).unwrap();
    assert_eq!(copy.log_floor(), &floor);
    assert_eq!(copy.state_digest().unwrap(), a.state_digest().unwrap());
    assert_healthy(&copy);
    drop(copy);

    let new_id = NodeId([9; 16]);
    let mut restored = Replica::restore(&dest, &dir.path().join("restored.redb"), new_id).unwrap();
    assert_eq!(restored.log_floor(), &floor);
    assert_healthy(&restored);
    restored.write(insert(90, "restored"), 90).unwrap();
    // It serves peers above its floor and takes their changes.
    b.write(insert(91, "b"), 91).unwrap();
    sync(&b, &mut restored);
    sync(&restored, &mut b);
    sync(&restored, &mut a);
    sync(&a, &mut restored);
    assert_eq!(restored.state_digest().unwrap(), b.state_digest().unwrap());
    assert_eq!(restored.state_digest().unwrap(), a.state_digest().unwrap());
    assert_healthy(&restored);
}

#[test]
fn check_integrity_reports_a_log_that_disagrees_with_its_floor() {
    let dir = TempDir::new().unwrap();
    let (mut a, _b) = two_origins(&dir, 5, 0);
    a.compact_log_step(&vector(&[(1, 3)]), 100).unwrap();
    let path = dir.path().join("node1.redb");
    drop(a);
    let tamper = |f: &dyn Fn(&redb::WriteTransaction)| {
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        f(&txn);
        txn.commit().unwrap();
    };
    let log_key = |seq: u64| {
        let mut key = vec![1u8; 16];
        key.extend_from_slice(&seq.to_be_bytes());
        key
    };
    // An entry above the floor goes missing: a gap.
    tamper(&|txn| {
        txn.open_table(LOG).unwrap().remove(log_key(5).as_slice()).unwrap();
    });
    let problems = Replica::open(&path, node(1)).unwrap().check_integrity().unwrap();
    let has = |problems: &[IntegrityProblem], text: &str| {
        problems.iter().any(|p| matches!(p, IntegrityProblem::Log { problem } if problem.contains(text)))
    };
    assert!(has(&problems, "gap before"), "{problems:?}");
    // An entry below the floor may be there (a state transfer leaves them), but it is
    // still checked.
    tamper(&|txn| {
        txn.open_table(LOG).unwrap().insert(log_key(2).as_slice(), b"x".as_slice()).unwrap();
    });
    let problems = Replica::open(&path, node(1)).unwrap().check_integrity().unwrap();
    assert!(has(&problems, "seq 2: "), "{problems:?}");
}

/// A state transfer raises the floor over a gap and leaves the entries below it: the
/// store is intact, and compaction removes them without moving the floor back.
#[test]
fn entries_left_below_the_floor_are_allowed_and_compacted() {
    let dir = TempDir::new().unwrap();
    let (mut a, _b) = two_origins(&dir, 9, 0); // node 1 seqs 1..=10
    let old_entries = all_since(&a, &VersionVector::new()).unwrap();
    a.compact_log_step(&vector(&[(1, 6)]), 100).unwrap();
    let path = dir.path().join("node1.redb");
    drop(a);
    {
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        let mut log = txn.open_table(LOG).unwrap();
        for (seq, bytes) in (1u64..).zip(&old_entries[..6]) {
            let mut key = vec![1u8; 16];
            key.extend_from_slice(&seq.to_be_bytes());
            log.insert(key.as_slice(), bytes.as_slice()).unwrap();
        }
        drop(log);
        txn.commit().unwrap();
    }
    let mut a = Replica::open(&path, node(1)).unwrap();
    assert_healthy(&a);
    let report = a.compact_log_step(&vector(&[(1, 4)]), 100).unwrap();
    assert_eq!((report.entries_removed, report.complete), (4, true));
    assert_eq!(a.log_floor(), &vector(&[(1, 6)]), "the floor does not move for entries below it");
    let report = a.compact_log_step(&vector(&[(1, 8)]), 3).unwrap();
    assert_eq!((report.entries_removed, report.complete), (3, false), "5, 6 and 7");
    assert_eq!(a.log_floor(), &vector(&[(1, 7)]));
    let report = a.compact_log_step(&vector(&[(1, 8)]), 3).unwrap();
    assert_eq!((report.entries_removed, report.complete), (1, true));
    assert_eq!(all_since(&a, &vector(&[(1, 8)])).unwrap(), old_entries[8..].to_vec());
    assert_healthy(&a);
}

#[test]
#[should_panic(expected = "above the version vector")]
fn a_target_above_the_vector_is_a_bug() {
    let dir = TempDir::new().unwrap();
    let (mut a, _b) = two_origins(&dir, 2, 0);
    let _ = a.compact_log_step(&vector(&[(1, 99)]), 10);
}

/// The owner thread's job: the target is computed there, from the replica, and writes
/// queued around the steps go on.
#[test]
fn the_owner_thread_runs_bounded_steps_between_writes() {
    let dir = TempDir::new().unwrap();
    let (a, _b) = two_origins(&dir, 9, 0);
    let (handle, owner) = edgestore::ReplicaHandle::spawn(a);
    let mut removed = 0;
    loop {
        let report = handle.compact_log_step(|replica| replica.version_vector().clone(), 4).unwrap();
        assert!(report.entries_removed <= 4);
        removed += report.entries_removed;
        handle.write(insert(1000 + removed as i64, "between steps"), 1).unwrap();
        if report.complete {
            break;
        }
    }
    drop(handle);
    let a = owner.join().unwrap();
    // Each write between steps was compacted by the next step, but the last one.
    assert_eq!(a.log_floor().seq(node(1)), a.version_vector().seq(node(1)) - 1);
    assert_eq!(removed, a.log_floor().seq(node(1)));
    assert_healthy(&a);
}
