//! State transfer between replicas (`docs/design.md` § "State transfer"): a receiver that
//! gets a donor's documents batch by batch ends with the donor's state digest and an intact
//! store, installs the donor's vector (its log floor marking the gap), resumes an
//! interrupted transfer from its persisted cursor, and refuses hostile batches whole.

mod common;

use common::{assert_healthy, insert, node, open, sensors, sync, transfer};
use edgestore::{ApplyError, IndexSchema, Replica, StorageError, TransferBatch, Value, VersionVector, WriteBatch};
use tempfile::TempDir;

/// A donor with a table, an index, 60 rows (some updated past a document's tail limit, some
/// deleted, some with concurrent conflicting values from a second writer) and a second table.
fn donor(dir: &TempDir) -> (Replica, Replica) {
    let mut a = open(dir, 1);
    let mut b = open(dir, 2);
    a.write(WriteBatch::new().create_table(sensors()), 0).unwrap();
    a.write(WriteBatch::new().create_index(IndexSchema::new("by_name", "sensors", &["name"])), 0).unwrap();
    for id in 0..60 {
        a.write(insert(id, &format!("s{id}")), 0).unwrap();
    }
    for round in 0..70 {
        a.write(WriteBatch::new().increment("sensors", vec![Value::from(3)], "hits", 1), round).unwrap();
    }
    for id in 40..45 {
        a.write(WriteBatch::new().delete("sensors", vec![Value::from(id)]), 0).unwrap();
    }
    sync(&a, &mut b);
    let rename =
        |id: i64, name: &str| WriteBatch::new().update("sensors", vec![Value::from(id)], [("name", Value::from(name))]);
    a.write(rename(7, "from-a"), 0).unwrap();
    b.write(rename(7, "from-b"), 0).unwrap();
    let other = sensors();
    b.write(WriteBatch::new().create_table(edgestore::TableSchema { name: "other".into(), ..other }), 0).unwrap();
    sync(&b, &mut a);
    sync(&a, &mut b);
    (a, b)
}

#[test]
fn a_new_node_catches_up_by_documents() {
    let dir = TempDir::new().unwrap();
    let (a, _b) = donor(&dir);
    let mut c = open(&dir, 3);
    let batches = transfer(&a, &mut c, 7);
    assert!(batches > 5, "{batches} batches");
    assert_eq!(c.state_digest().unwrap(), a.state_digest().unwrap());
    assert_eq!(c.version_vector(), a.version_vector());
    // Its log has nothing: the floor is the whole installed vector.
    assert_eq!(c.log_floor(), a.version_vector());
    assert!(c.transfer_progress().unwrap().is_none());
    assert_healthy(&c);
    assert_eq!(c.heads_tree().unwrap(), a.heads_tree().unwrap());
    // It cannot serve a peer from its log below the floor...
    let below = c.changes_since(&VersionVector::new(), 10, 1 << 20);
    assert!(matches!(below, Err(StorageError::BelowLogFloor { .. })), "{below:?}");
    // ...but delta sync continues above it, both ways.
    let mut a = a;
    a.write(insert(100, "after"), 0).unwrap();
    sync(&a, &mut c);
    c.write(insert(101, "from-c"), 0).unwrap();
    sync(&c, &mut a);
    assert_eq!(c.state_digest().unwrap(), a.state_digest().unwrap());
    assert_healthy(&a);
    assert_healthy(&c);
}

#[test]
fn an_interrupted_transfer_resumes_across_snapshots() {
    let dir = TempDir::new().unwrap();
    let (mut a, _b) = donor(&dir);
    let mut c = open(&dir, 3);
    for _ in 0..3 {
        let cursor = c.transfer_progress().unwrap().map(|p| p.cursor).unwrap_or_default();
        let batch = a.export_transfer(&cursor, 5, 1 << 20).unwrap();
        assert!(!batch.done);
        c.import_transfer(a.node_id(), batch).unwrap();
    }
    let vector_before = a.version_vector().clone();
    // The donor moves on (later batches come from later snapshots), the receiver restarts.
    for id in 200..230 {
        a.write(insert(id, "later"), 0).unwrap();
    }
    drop(c);
    let mut c = open(&dir, 3);
    let progress = c.transfer_progress().unwrap().expect("progress survives a restart");
    assert_eq!(progress.batches, 3);
    assert_eq!(progress.docs, 15);
    assert_eq!(progress.vector, vector_before);
    assert!(c.version_vector().is_empty(), "nothing installed before the end");
    transfer(&a, &mut c, 5);
    // The install vector is the minimum over the batches' snapshots, so the rest comes by log.
    assert_eq!(c.version_vector(), &vector_before);
    sync(&a, &mut c);
    assert_eq!(c.state_digest().unwrap(), a.state_digest().unwrap());
    assert_healthy(&c);
}

#[test]
fn a_returning_node_keeps_what_it_wrote_while_away() {
    let dir = TempDir::new().unwrap();
    let (mut a, mut b) = donor(&dir);
    // b is away: both sides write; b's own rows exist nowhere else.
    for id in 300..310 {
        a.write(insert(id, "a-while-away"), 0).unwrap();
        b.write(insert(id + 100, "b-while-away"), 0).unwrap();
    }
    b.write(WriteBatch::new().update("sensors", vec![Value::from(1)], [("name", Value::from("b1"))]), 0).unwrap();
    let own = b.version_vector().seq(b.node_id());
    transfer(&a, &mut b, 16);
    assert_eq!(b.version_vector().seq(b.node_id()), own, "its own changes are not below anything");
    assert_eq!(b.log_floor().seq(b.node_id()), 0);
    assert_eq!(b.log_floor().seq(a.node_id()), a.version_vector().seq(a.node_id()));
    assert_healthy(&b);
    // What it wrote while away still goes out by its log.
    sync(&b, &mut a);
    assert_eq!(b.state_digest().unwrap(), a.state_digest().unwrap());
    assert!(a.snapshot().unwrap().get("sensors", &[Value::from(405)]).unwrap().is_some());
    assert_healthy(&a);
}

/// Regression (simulator join scenario, seed 2046820836): a transferred document can hold
/// changes above the installed vector (its batch came from a later snapshot), so the
/// receiver's next change to it depends on a change its envelope does not name. A peer
/// that lacks that change parks it, and applies it once the change arrives, instead of
/// refusing the batch on every session.
#[test]
fn a_change_built_on_a_document_above_the_installed_vector_waits_for_it() {
    let dir = TempDir::new().unwrap();
    let mut a = open(&dir, 1);
    let mut p = open(&dir, 2);
    let mut c = open(&dir, 3);
    a.write(WriteBatch::new().create_table(sensors()), 0).unwrap();
    for id in 0..10 {
        a.write(insert(id, "first"), 0).unwrap();
    }
    sync(&a, &mut p);
    // The first batch (the table and row 0) comes from a snapshot before a's update...
    let first = a.export_transfer(&[], 2, 1 << 20).unwrap();
    assert!(!first.done);
    c.import_transfer(a.node_id(), first).unwrap();
    let rename =
        |id: i64, name: &str| WriteBatch::new().update("sensors", vec![Value::from(id)], [("name", Value::from(name))]);
    a.write(rename(9, "from-a"), 0).unwrap();
    // ...the rest, row 9 with the update, from one after it: the install vector lacks it.
    transfer(&a, &mut c, 100);
    assert_eq!(c.version_vector(), p.version_vector());
    c.write(rename(9, "from-c"), 0).unwrap();

    let report = p.apply_remote(c.changes_since(p.version_vector(), 100, 1 << 20).unwrap().changes).unwrap();
    assert_eq!((report.applied, report.parked, report.parked_for_documents), (0, 1, 1), "{report:?}");
    let name = |r: &Replica| r.snapshot().unwrap().get("sensors", &[Value::from(9)]).unwrap().map(|row| row[1].clone());
    assert_eq!(name(&p), Some(Value::from("first")));
    // a's update arrives: the parked change follows it in the same call.
    let report = p.apply_remote(a.changes_since(p.version_vector(), 100, 1 << 20).unwrap().changes).unwrap();
    assert_eq!((report.applied, report.parked, report.discarded), (2, 0, 0), "{report:?}");
    assert_eq!(name(&p), Some(Value::from("from-c")));
    sync(&a, &mut c);
    sync(&c, &mut a);
    assert_eq!(p.version_vector(), c.version_vector());
    assert_eq!(p.state_digest().unwrap(), c.state_digest().unwrap());
    assert_eq!(a.state_digest().unwrap(), c.state_digest().unwrap());
    for replica in [&a, &p, &c] {
        assert_healthy(replica);
    }
}

/// Imports `batch` into a fresh copy of the receiver state and expects a refusal that
/// changed nothing.
fn assert_refused(c: &mut Replica, donor: edgestore::NodeId, batch: TransferBatch) {
    let digest = c.state_digest().unwrap();
    let progress = c.transfer_progress().unwrap();
    let vector = c.version_vector().clone();
    let outcome = c.import_transfer(donor, batch);
    assert!(
        matches!(
            outcome,
            Err(ApplyError::Invalid { .. } | ApplyError::MalformedBatch(_) | ApplyError::InconsistentDocument { .. })
        ),
        "{outcome:?}"
    );
    assert_eq!(c.state_digest().unwrap(), digest);
    assert_eq!(c.transfer_progress().unwrap(), progress);
    assert_eq!(c.version_vector(), &vector);
    assert_healthy(c);
}

#[test]
fn hostile_batches_are_refused_whole() {
    let dir = TempDir::new().unwrap();
    let (a, _b) = donor(&dir);
    let mut c = open(&dir, 3);
    let first = a.export_transfer(&[], 4, 1 << 20).unwrap();
    c.import_transfer(a.node_id(), first.clone()).unwrap();
    let next = a.export_transfer(&first.last, 8, 1 << 20).unwrap();
    let with = |edit: &dyn Fn(&mut TransferBatch)| {
        let mut batch = next.clone();
        edit(&mut batch);
        batch
    };
    // A flipped byte in a snapshot or a tail change, in the batch's last document.
    let snapshot_doc = next.docs.iter().position(|d| !d.snapshot.is_empty());
    if let Some(i) = snapshot_doc {
        assert_refused(
            &mut c,
            a.node_id(),
            with(&|b| {
                let s = &mut b.docs[i].snapshot;
                let at = s.len() / 2;
                s[at] ^= 0x40;
            }),
        );
    }
    assert_refused(
        &mut c,
        a.node_id(),
        with(&|b| {
            let last = b.docs.len() - 1;
            let doc = &mut b.docs[last];
            if let Some(change) = doc.tail.last_mut() {
                let at = change.len() - 1;
                change[at] ^= 1;
            } else {
                doc.snapshot.truncate(doc.snapshot.len() / 2);
            }
        }),
    );
    // Out of order, a gap after the cursor, a wrong cursor, a wrong `last`.
    assert_refused(&mut c, a.node_id(), with(&|b| b.docs.swap(0, 1)));
    assert_refused(&mut c, a.node_id(), with(&|b| b.after = b.docs[0].key.clone()));
    assert_refused(&mut c, a.node_id(), with(&|b| b.last = b.docs[0].key.clone()));
    // A malformed key, an empty document, a tail longer than a document keeps.
    assert_refused(
        &mut c,
        a.node_id(),
        with(&|b| {
            let last = b.docs.len() - 1;
            b.docs[last].key = vec![0x02, 0xFF];
            b.last = vec![0x02, 0xFF];
        }),
    );
    assert_refused(
        &mut c,
        a.node_id(),
        with(&|b| {
            b.docs[1].snapshot.clear();
            b.docs[1].tail.clear();
        }),
    );
    assert_refused(
        &mut c,
        a.node_id(),
        with(&|b| {
            let change = b.docs.iter().flat_map(|d| d.tail.first()).next().cloned().expect("a tail change");
            b.docs[1].tail = vec![change; 64];
        }),
    );
    // Changes by a node the vector does not name.
    assert_refused(&mut c, a.node_id(), with(&|b| b.vector = [(node(9), 1)].into_iter().collect()));
    // A row whose table the receiver does not know (catalog documents were skipped).
    let rows_only = a.export_transfer(&[0x02], 8, 1 << 20).unwrap();
    let mut d = open(&dir, 4);
    let mut rows_only = rows_only;
    rows_only.after = Vec::new();
    assert_refused(&mut d, a.node_id(), rows_only);
    // The genuine batch still imports, and the transfer completes.
    c.import_transfer(a.node_id(), next).unwrap();
    transfer(&a, &mut c, 64);
    assert_eq!(c.state_digest().unwrap(), a.state_digest().unwrap());
}

#[test]
fn a_change_below_the_floor_is_a_duplicate() {
    let dir = TempDir::new().unwrap();
    let (a, _b) = donor(&dir);
    let mut c = open(&dir, 3);
    transfer(&a, &mut c, 100);
    // A third node that replays the whole log from the start: nothing is parked or applied.
    let report = c.apply_remote(common::log_of(&a)).unwrap();
    assert_eq!(report.applied, 0);
    assert_eq!(report.parked, 0);
    assert_eq!(c.pending_changes().unwrap(), 0);
    assert_healthy(&c);
}

/// Blocks of append-only tables travel after the documents; each is checked like a
/// document: a broken key or block, a tail, or an envelope the batch's vector does not
/// hold refuses the whole batch and changes nothing.
#[test]
fn hostile_blocks_are_refused_whole() {
    let dir = TempDir::new().unwrap();
    let mut a = open(&dir, 1);
    let readings = "CREATE TABLE readings (sensor INTEGER NOT NULL, ts TIMESTAMP NOT NULL, value REAL) \
                    WITH (append_only = true, time_column = 'ts', bucket = '1 hour')";
    common::sql_run(&mut a, readings);
    common::sql_run(&mut a, "INSERT INTO readings VALUES (1, 0, 1.5), (1, 3600000, 2.5), (2, 7200000, 3.5)");
    let mut c = open(&dir, 3);
    let catalog = a.export_transfer(&[], 1, 1 << 20).unwrap();
    c.import_transfer(a.node_id(), catalog.clone()).unwrap();
    let blocks = a.export_transfer(&catalog.last, 100, 1 << 20).unwrap();
    assert_eq!(blocks.docs.len(), 3, "one block per bucket");
    assert!(blocks.docs.iter().all(|d| d.key[0] == 3 && d.tail.is_empty()), "blocks follow the documents");
    let with = |edit: &dyn Fn(&mut TransferBatch)| {
        let mut batch = blocks.clone();
        edit(&mut batch);
        batch
    };
    let origin = a.node_id();
    let hostile = [
        with(&|b| b.docs[1].snapshot.truncate(5)),
        with(&|b| b.docs[1].snapshot.push(0)),
        with(&|b| b.docs[2].tail.push(vec![1])),
        with(&|b| b.docs[2].key.truncate(6)),
        with(&|b| b.docs[2].key.push(0)),
        with(&|b| b.vector = VersionVector::new()),
        with(&|b| b.vector = [(origin, 1)].into_iter().collect()),
    ];
    for batch in hostile {
        assert_refused(&mut c, origin, batch);
    }
    c.import_transfer(origin, blocks).unwrap();
    assert_eq!(c.state_digest().unwrap(), a.state_digest().unwrap());
    assert_healthy(&c);
}
