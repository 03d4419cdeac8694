//! Backup, restore under a new identity, and row history, through the public API on real
//! redb files.

use std::path::Path;

use edgestore::{BackupError, NodeId, ReadError, Replica, ReplicaHandle, RowEffect, Value, WriteBatch};
use tempfile::TempDir;

mod common;
use common::{assert_healthy, decoded_log_of, insert, node, open, sensors, sync};

fn sync_both(a: &mut Replica, b: &mut Replica) {
    sync(a, b);
    sync(b, a);
}

/// Two replicas with rows from both origins: node 1 made the table and rows 1–3, node 2
/// rows 10–11; both hold everything.
fn two_origins(dir: &TempDir) -> (Replica, Replica) {
    let (mut a, mut b) = (open(dir, 1), open(dir, 2));
    a.write(WriteBatch::new().create_table(sensors()), 100).unwrap();
    for id in 1..=3 {
        a.write(insert(id, "a"), 100 + id).unwrap();
    }
    sync(&a, &mut b);
    for id in 10..=11 {
        b.write(insert(id, "b"), 200 + id).unwrap();
    }
    sync_both(&mut a, &mut b);
    (a, b)
}

#[test]
fn backup_is_the_snapshot_state_while_the_node_keeps_writing() {
    let dir = TempDir::new().unwrap();
    let (mut a, _b) = two_origins(&dir);
    let digest_at_snapshot = a.state_digest().unwrap();
    let snapshot = a.snapshot().unwrap();
    // Written after the snapshot: not in the backup.
    a.write(insert(4, "late"), 400).unwrap();
    let dest = dir.path().join("backup.redb");
    let report = snapshot.backup_to(&dest).unwrap();
    drop(snapshot);

    assert_eq!((report.rows, report.changes, report.pending_changes), (5, 6, 0));
    assert_eq!(report.node_id, node(1));
    assert_eq!(report.version_vector.seq(node(1)), 4);
    assert_eq!(report.version_vector.seq(node(2)), 2);
    assert_eq!(report.bytes, std::fs::metadata(&dest).unwrap().len());
    assert!(!dir.path().join("backup.redb.partial").exists());

    let copy = Replica::open(&dest, node(1)).unwrap();
    assert_healthy(&copy);
    assert_eq!(copy.state_digest().unwrap(), digest_at_snapshot);
    assert_eq!(copy.snapshot().unwrap().get("sensors", &[Value::from(4)]).unwrap(), None);
}

#[test]
fn backup_never_overwrites_and_leaves_no_partial_file() {
    let dir = TempDir::new().unwrap();
    let (a, _b) = two_origins(&dir);
    let dest = dir.path().join("backup.redb");
    std::fs::write(&dest, b"precious").unwrap();
    let error = a.snapshot().unwrap().backup_to(&dest).unwrap_err();
    assert!(matches!(&error, BackupError::DestinationExists(path) if path == &dest), "{error}");
    assert_eq!(std::fs::read(&dest).unwrap(), b"precious");

    // A temporary file left by an interrupted backup is reported, not reused or removed.
    let other = dir.path().join("other.redb");
    let partial = dir.path().join("other.redb.partial");
    std::fs::write(&partial, b"").unwrap();
    let error = a.snapshot().unwrap().backup_to(&other).unwrap_err();
    assert!(matches!(&error, BackupError::TemporaryExists(path) if path == &partial), "{error}");
    assert!(!other.exists());
}

#[test]
fn backup_from_a_handle_does_not_block_the_owner() {
    let dir = TempDir::new().unwrap();
    let (a, _b) = two_origins(&dir);
    let (handle, thread) = ReplicaHandle::spawn(a);
    let snapshot = handle.snapshot().unwrap();
    // The owner commits while the snapshot (a redb read transaction) is open.
    handle.write(insert(5, "during"), 500).unwrap();
    let report = snapshot.backup_to(&dir.path().join("backup.redb")).unwrap();
    assert_eq!(report.rows, 5);
    drop(handle);
    assert_eq!(thread.join().unwrap().snapshot().unwrap().scan("sensors").unwrap().count(), 6);
}

fn backup_of(replica: &Replica, dir: &TempDir) -> std::path::PathBuf {
    let path = dir.path().join(format!("backup-{}.redb", replica.node_id().short()));
    replica.snapshot().unwrap().backup_to(&path).unwrap();
    path
}

#[test]
fn restore_adopts_the_new_identity_and_rejoins() {
    let dir = TempDir::new().unwrap();
    let (mut a, mut b) = two_origins(&dir);
    let backup = backup_of(&a, &dir);
    let mut c = Replica::restore(&backup, &dir.path().join("node3.redb"), node(3)).unwrap();
    assert_eq!(c.node_id(), node(3));
    assert_eq!(c.version_vector(), a.version_vector());
    assert_eq!(c.state_digest().unwrap(), a.state_digest().unwrap());
    assert_healthy(&c);

    // The restored node writes under its own id from seq 1; the old node keeps writing too.
    assert_eq!(c.write(insert(30, "c"), 600).unwrap().seq, Some(1));
    c.write(WriteBatch::new().update("sensors", vec![Value::from(1)], [("name", Value::from("c"))]), 610).unwrap();
    a.write(WriteBatch::new().update("sensors", vec![Value::from(1)], [("name", Value::from("a"))]), 620).unwrap();
    b.write(WriteBatch::new().increment("sensors", vec![Value::from(10)], "hits", 2), 630).unwrap();

    // The restored node's first change depends on everything the backup held (its
    // automerge changes need it): a node that gets only the new node's changes parks them.
    let mut e = open(&dir, 5);
    let own: Vec<Vec<u8>> =
        decoded_log_of(&c).into_iter().filter(|ch| ch.origin == node(3)).map(|ch| ch.bytes).collect();
    let report = e.apply_remote(own).unwrap();
    assert_eq!((report.applied, report.parked), (0, 2));

    // A fresh fourth node learns everything, the old node's changes included, from c alone.
    let mut d = open(&dir, 4);
    sync(&c, &mut d);
    assert_eq!(d.version_vector().seq(node(1)), 4);
    for _ in 0..2 {
        sync_both(&mut c, &mut a);
        sync_both(&mut c, &mut b);
        sync_both(&mut a, &mut b);
        sync_both(&mut c, &mut d);
    }
    let digest = a.state_digest().unwrap();
    for replica in [&b, &c, &d] {
        assert_eq!(replica.state_digest().unwrap(), digest, "{replica:?}");
        assert_healthy(replica);
    }
    assert_eq!(c.version_vector().seq(node(3)), 2);

    // No change under the old origin came from the restored node: every replica holds the
    // very envelopes node 1 made (an equivocation would also have been refused above).
    let originals: Vec<_> =
        decoded_log_of(&a).into_iter().filter(|ch| ch.origin == node(1)).map(|ch| ch.hash).collect();
    for replica in [&b, &c, &d] {
        let held: Vec<_> =
            decoded_log_of(replica).into_iter().filter(|ch| ch.origin == node(1)).map(|ch| ch.hash).collect();
        assert_eq!(held, originals);
    }
    // Every automerge change of the restored node is authored by its new id.
    for change in decoded_log_of(&c).into_iter().filter(|ch| ch.origin == node(3)) {
        for op in &change.ops {
            assert_eq!(op.change.actor_id().to_bytes(), node(3).as_bytes());
        }
    }
}

#[test]
fn restore_refuses_reused_identities_existing_stores_and_garbage() {
    let dir = TempDir::new().unwrap();
    let (a, _b) = two_origins(&dir);
    let backup = backup_of(&a, &dir);
    let check = |dest: &Path, new_node: NodeId| Replica::restore(&backup, dest, new_node).unwrap_err();
    let fresh = dir.path().join("fresh.redb");

    assert!(matches!(check(&fresh, node(1)), BackupError::SameIdentity(n) if n == node(1)));
    assert!(matches!(check(&fresh, node(2)), BackupError::IdentityInUse(n) if n == node(2)));
    assert!(!fresh.exists() && !dir.path().join("fresh.redb.partial").exists());
    let existing = dir.path().join("node1.redb");
    assert!(matches!(check(&existing, node(3)), BackupError::DestinationExists(_)));

    let garbage = dir.path().join("garbage.redb");
    std::fs::write(&garbage, vec![0xAB; 8192]).unwrap();
    let error = Replica::restore(&garbage, &fresh, node(3)).unwrap_err();
    assert!(matches!(error, BackupError::NotAStore { .. }), "{error}");
    let empty = dir.path().join("empty.redb");
    std::fs::write(&empty, b"").unwrap();
    let error = Replica::restore(&empty, &fresh, node(3)).unwrap_err();
    assert!(matches!(error, BackupError::NotAStore { .. }), "{error}");
    assert!(!fresh.exists());
}

/// A history rendered as `node@time: effect, effect`.
fn history(replica: &Replica, id: i64) -> Vec<String> {
    let entries = replica.snapshot().unwrap().row_history("sensors", &[Value::from(id)]).unwrap();
    entries
        .iter()
        .map(|entry| {
            let effects: Vec<String> = entry
                .effects
                .iter()
                .map(|effect| match effect {
                    RowEffect::Inserted { causal_length } => format!("inserted cl={causal_length}"),
                    RowEffect::Deleted { causal_length } => format!("deleted cl={causal_length}"),
                    RowEffect::Set { column, value } => format!("{column}={value}"),
                    RowEffect::Incremented { column, by } => format!("{column}+={by}"),
                    other => format!("{other:?}"),
                })
                .collect();
            format!("n{}@{}: {}", entry.node_id.as_bytes()[0], entry.time_ms, effects.join(", "))
        })
        .collect()
}

#[test]
fn row_history_lists_concurrent_edits_deletes_and_increments_in_causal_order() {
    let dir = TempDir::new().unwrap();
    let (mut a, mut b) = (open(&dir, 1), open(&dir, 2));
    a.write(WriteBatch::new().create_table(sensors()), 100).unwrap();
    a.write(insert(1, "pump"), 110).unwrap();
    sync(&a, &mut b);
    // Concurrent updates of one column.
    a.write(WriteBatch::new().update("sensors", vec![Value::from(1)], [("name", Value::from("valve"))]), 200).unwrap();
    b.write(WriteBatch::new().update("sensors", vec![Value::from(1)], [("name", Value::from("gate"))]), 210).unwrap();
    sync_both(&mut a, &mut b);
    a.write(WriteBatch::new().increment("sensors", vec![Value::from(1)], "hits", 3), 300).unwrap();
    sync(&a, &mut b);
    b.write(WriteBatch::new().delete("sensors", vec![Value::from(1)]), 400).unwrap();
    sync(&b, &mut a);
    a.write(insert(1, "again"), 500).unwrap();
    sync(&a, &mut b);

    let expected = [
        "n1@110: inserted cl=1, id=1, name=pump, hits=0",
        "n1@200: name=valve",
        "n2@210: name=gate",
        "n1@300: hits+=3",
        "n2@400: deleted cl=2",
        // automerge records no put of a value the column already holds (the key).
        "n1@500: inserted cl=3, name=again, hits=0",
    ];
    assert_eq!(history(&a, 1), expected);
    // Replicas that received the concurrent changes in different orders agree.
    assert_eq!(history(&b, 1), expected);

    let entries = a.snapshot().unwrap().row_history("sensors", &[Value::from(1)]).unwrap();
    assert_eq!(entries.iter().map(|e| e.doc_seq).collect::<Vec<_>>(), [1, 2, 1, 3, 2, 4]);
    let hashes: std::collections::BTreeSet<_> = entries.iter().map(|e| e.change_hash).collect();
    assert_eq!(hashes.len(), entries.len());
}

#[test]
fn row_history_names_what_it_cannot_find() {
    let dir = TempDir::new().unwrap();
    let (a, _b) = two_origins(&dir);
    let snapshot = a.snapshot().unwrap();
    match snapshot.row_history("sensors", &[Value::from(99)]) {
        Err(ReadError::UnknownRow { table, key }) => assert_eq!((table.as_str(), key.as_str()), ("sensors", "(99)")),
        other => panic!("{other:?}"),
    }
    assert!(matches!(snapshot.row_history("nope", &[Value::from(1)]), Err(ReadError::UnknownTable(t)) if t == "nope"));
    assert!(matches!(snapshot.row_history("sensors", &[]), Err(ReadError::BadKey { .. })));
}
