//! Implicit documents (docs/design.md § Implicit documents): a row only ever inserted is
//! described by its heads entry and rebuilt from its record. These tests check that such
//! a row is the same document as a stored one — same digest, history, merges, transfer —
//! and that every way its record or definition can change stores it first.

mod common;

use common::{assert_healthy, insert, node, open, sensors, sync, transfer};
use edgestore::{ColumnDef, ColumnType, IntegrityProblem, Replica, Value, WriteBatch};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use tempfile::TempDir;

/// (implicit documents, tail changes, snapshots) of `table`.
fn stored(replica: &Replica, table: &str) -> (u64, u64, u64) {
    let stats = replica.snapshot().unwrap().storage_stats().unwrap();
    let t = stats.user_tables.iter().find(|t| t.name == table).unwrap();
    (t.implicit_docs, t.tail_changes, t.snapshots)
}

/// `sensors` with rows 1..=`rows`, written by node 1.
fn written_once(dir: &TempDir, rows: i64) -> Replica {
    let mut a = open(dir, 1);
    a.write(WriteBatch::new().create_table(sensors()), 1).unwrap();
    for id in 1..=rows {
        a.write(insert(id, &format!("s{id}")), 1_000 + id).unwrap();
    }
    a
}

#[test]
fn rows_inserted_once_are_implicit_here_and_where_they_are_applied() {
    let dir = TempDir::new().unwrap();
    let a = written_once(&dir, 20);
    let mut b = open(&dir, 2);
    sync(&a, &mut b);
    assert_eq!(stored(&a, "sensors"), (20, 0, 0), "the writer stores no document");
    assert_eq!(stored(&b, "sensors"), (20, 0, 0), "nor does a replica that applied the envelopes");
    assert_eq!(a.state_digest().unwrap(), b.state_digest().unwrap());
    assert_eq!(a.heads_tree().unwrap(), b.heads_tree().unwrap());
    assert_healthy(&a);
    assert_healthy(&b);
    // The rebuilt document is the inserted one: its history is the insert, at its time.
    let history = a.snapshot().unwrap().row_history("sensors", &[Value::from(7)]).unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!((history[0].node_id, history[0].time_ms), (node(1), 1_007));
    // Reopened, nothing is cached: every document is rebuilt from its row.
    let digest = a.state_digest().unwrap();
    drop(a);
    let a = open(&dir, 1);
    assert_eq!(a.state_digest().unwrap(), digest);
    assert_healthy(&a);
}

#[test]
fn a_change_to_an_implicit_row_stores_its_insert_first() {
    let dir = TempDir::new().unwrap();
    let mut a = written_once(&dir, 5);
    let mut b = open(&dir, 2);
    sync(&a, &mut b);
    let set = [("name", Value::from("renamed"))];
    a.write(WriteBatch::new().update("sensors", vec![Value::from(2)], set), 2_000).unwrap();
    a.write(WriteBatch::new().increment("sensors", vec![Value::from(3)], "hits", 5), 2_001).unwrap();
    a.write(WriteBatch::new().delete("sensors", vec![Value::from(4)]), 2_002).unwrap();
    assert_eq!(stored(&a, "sensors"), (2, 6, 0), "three rows changed: each stores its insert and its change");
    sync(&a, &mut b);
    assert_eq!(stored(&b, "sensors"), (2, 6, 0));
    assert_eq!(a.state_digest().unwrap(), b.state_digest().unwrap());
    let snapshot = b.snapshot().unwrap();
    assert_eq!(snapshot.get("sensors", &[Value::from(2)]).unwrap().unwrap()[1], Value::from("renamed"));
    assert_eq!(snapshot.get("sensors", &[Value::from(3)]).unwrap().unwrap()[2], Value::from(5));
    assert_eq!(snapshot.get("sensors", &[Value::from(4)]).unwrap(), None);
    assert_eq!(snapshot.row_history("sensors", &[Value::from(2)]).unwrap().len(), 2);
    assert_healthy(&a);
    assert_healthy(&b);
}

#[test]
fn concurrent_updates_of_an_implicit_row_keep_their_conflict_on_both_sides() {
    let dir = TempDir::new().unwrap();
    let mut a = written_once(&dir, 3);
    let mut b = open(&dir, 2);
    sync(&a, &mut b);
    a.write(WriteBatch::new().update("sensors", vec![Value::from(1)], [("name", Value::from("from a"))]), 5).unwrap();
    b.write(WriteBatch::new().update("sensors", vec![Value::from(1)], [("name", Value::from("from b"))]), 5).unwrap();
    sync(&a, &mut b);
    sync(&b, &mut a);
    let conflicts = |r: &Replica| r.snapshot().unwrap().conflicts("sensors", &[Value::from(1)]).unwrap();
    assert_eq!(conflicts(&a).len(), 1, "the name column holds both concurrent values");
    assert_eq!(conflicts(&a), conflicts(&b));
    assert_eq!(a.state_digest().unwrap(), b.state_digest().unwrap());
    assert_eq!(stored(&a, "sensors").0, 2, "the other two rows stay implicit");
    assert_healthy(&a);
    assert_healthy(&b);
}

#[test]
fn a_new_winning_definition_or_a_drop_stores_the_rows_it_described() {
    let dir = TempDir::new().unwrap();
    let mut a = open(&dir, 1);
    let mut b = open(&dir, 2);
    // Concurrent CREATE TABLE of the same name with different definitions: one wins on
    // both replicas, so on one of them the rows were described under the loser.
    let wider = sensors().column(ColumnDef::new("site", ColumnType::Text));
    a.write(WriteBatch::new().create_table(sensors()), 1).unwrap();
    b.write(WriteBatch::new().create_table(wider), 1).unwrap();
    for id in 0..10 {
        a.write(insert(id, "a"), 10 + id).unwrap();
        b.write(insert(100 + id, "b"), 10 + id).unwrap();
    }
    assert_eq!((stored(&a, "sensors").0, stored(&b, "sensors").0), (10, 10));
    sync(&a, &mut b);
    sync(&b, &mut a);
    assert_eq!(a.state_digest().unwrap(), b.state_digest().unwrap());
    assert_eq!(a.snapshot().unwrap().scan("sensors").unwrap().count(), 20);
    let (implicit, tails, _) = stored(&a, "sensors");
    assert_eq!(implicit + tails, 20, "every row is implicit or stores its one change");
    assert_eq!(tails, 10, "the rows described under the losing definition were stored");
    assert_healthy(&a);
    assert_healthy(&b);
    // A drop removes the records: every implicit row of the table is stored first.
    a.write(WriteBatch::new().drop_table("sensors"), 30).unwrap();
    assert_eq!(stored(&a, "sensors"), (0, 20, 0));
    assert_healthy(&a);
    sync(&a, &mut b);
    assert_eq!(a.state_digest().unwrap(), b.state_digest().unwrap());
    assert_healthy(&b);
}

#[test]
fn state_transfer_sends_an_implicit_row_as_its_change() {
    let dir = TempDir::new().unwrap();
    let mut a = written_once(&dir, 30);
    a.write(WriteBatch::new().update("sensors", vec![Value::from(9)], [("name", Value::from("x"))]), 5).unwrap();
    let mut c = open(&dir, 3);
    transfer(&a, &mut c, 7);
    assert_eq!(c.state_digest().unwrap(), a.state_digest().unwrap());
    assert_eq!(c.heads_tree().unwrap(), a.heads_tree().unwrap());
    assert_healthy(&c);
    assert_eq!(stored(&a, "sensors"), (29, 2, 0));
    assert_eq!(stored(&c, "sensors"), (29, 2, 0), "a document sent as its one change is implicit here too");
    // Writing to a transferred implicit row works as anywhere.
    c.write(WriteBatch::new().update("sensors", vec![Value::from(3)], [("name", Value::from("c"))]), 6).unwrap();
    sync(&c, &mut a);
    assert_eq!(c.state_digest().unwrap(), a.state_digest().unwrap());
    assert_healthy(&a);
}

#[test]
fn a_record_that_no_longer_rebuilds_its_document_is_reported_not_used() {
    const ROWS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("rows_v1");
    let dir = TempDir::new().unwrap();
    let a = written_once(&dir, 3);
    drop(a);
    let path = dir.path().join("node1.redb");
    {
        // Row 2's record swapped for row 3's: a valid record that is not row 2's insert.
        let db = redb::Database::open(&path).unwrap();
        let records: Vec<(Vec<u8>, Vec<u8>)> = {
            let txn = db.begin_read().unwrap();
            let rows = txn.open_table(ROWS).unwrap();
            rows.iter().unwrap().map(|e| e.unwrap()).map(|(k, v)| (k.value().to_vec(), v.value().to_vec())).collect()
        };
        let txn = db.begin_write().unwrap();
        txn.open_table(ROWS).unwrap().insert(records[1].0.as_slice(), records[2].1.as_slice()).unwrap();
        txn.commit().unwrap();
    }
    let mut a = open(&dir, 1);
    let problems = a.check_integrity().unwrap();
    assert!(
        problems.iter().any(|p| matches!(p, IntegrityProblem::Document { problem, .. }
            if problem.contains("does not rebuild"))),
        "{problems:#?}"
    );
    // A write to it is refused rather than built on a document that is not the row's.
    let set = [("name", Value::from("y"))];
    let refused = a.write(WriteBatch::new().update("sensors", vec![Value::from(2)], set), 9);
    assert!(refused.is_err(), "{refused:?}");
    // (Writes to the other rows would work, but the tampered record also left the rows'
    // digest part stale, which debug builds assert after every write.)
}

#[test]
fn a_batch_that_touches_a_new_row_twice_stores_it() {
    let dir = TempDir::new().unwrap();
    let mut a = open(&dir, 1);
    let row = |id: i64, name: &str| [("id", Value::from(id)), ("name", Value::from(name))];
    let batch = WriteBatch::new()
        .create_table(sensors())
        .insert("sensors", row(1, "first"))
        .delete("sensors", vec![Value::from(1)])
        .insert("sensors", row(1, "again"))
        .insert("sensors", row(2, "two"))
        .update("sensors", vec![Value::from(2)], [("name", Value::from("two, renamed"))])
        .insert("sensors", row(3, "alone"));
    a.write(batch, 1).unwrap();
    assert_eq!(stored(&a, "sensors"), (1, 2, 0), "rows 1 and 2 hold more than an insert: stored; row 3 implicit");
    let snapshot = a.snapshot().unwrap();
    assert_eq!(snapshot.get("sensors", &[Value::from(1)]).unwrap().unwrap()[1], Value::from("again"));
    assert_eq!(snapshot.get("sensors", &[Value::from(2)]).unwrap().unwrap()[1], Value::from("two, renamed"));
    drop(snapshot);
    let mut b = open(&dir, 2);
    sync(&a, &mut b);
    assert_eq!(stored(&b, "sensors"), (1, 2, 0), "applied, each document is judged by its change alone");
    assert_eq!(a.state_digest().unwrap(), b.state_digest().unwrap());
    drop(a);
    assert_healthy(&open(&dir, 1));
    assert_healthy(&b);
}

/// `ALTER TABLE` rewrites nothing: rows inserted before an added column stay implicit
/// (their short records rebuild the same change), rows inserted after, or after a drop
/// (NULL in the dropped slot), are implicit too; on the writer, on a replica that applied
/// the envelopes, and after a reopen that rebuilds every document.
#[test]
fn rows_stay_implicit_across_add_rename_and_drop_column() {
    let dir = TempDir::new().unwrap();
    let mut a = written_once(&dir, 5);
    let extra = ColumnDef::new("note", ColumnType::Text).default("n");
    a.write(WriteBatch::new().add_column("sensors", extra), 2_000).unwrap();
    a.write(insert(6, "s6"), 2_001).unwrap();
    a.write(WriteBatch::new().rename_column("sensors", "name", "label"), 2_002).unwrap();
    a.write(WriteBatch::new().insert("sensors", [("id", Value::from(7)), ("label", "s7".into())]), 2_003).unwrap();
    a.write(WriteBatch::new().drop_column("sensors", "label"), 2_004).unwrap();
    a.write(WriteBatch::new().insert("sensors", [("id", Value::from(8)), ("note", "x".into())]), 2_005).unwrap();
    assert_eq!(stored(&a, "sensors"), (8, 0, 0), "no ALTER made a row explicit");
    let mut b = open(&dir, 2);
    sync(&a, &mut b);
    assert_eq!(stored(&b, "sensors"), (8, 0, 0));
    assert_eq!(a.state_digest().unwrap(), b.state_digest().unwrap());
    let rows = |r: &Replica| r.snapshot().unwrap().scan("sensors").unwrap().map(Result::unwrap).collect::<Vec<_>>();
    assert_eq!(rows(&a), rows(&b));
    assert_eq!(rows(&a)[0].last(), Some(&Value::from("n")), "a row written before the add reads its default");
    assert_eq!(rows(&a)[7].last(), Some(&Value::from("x")));
    let digest = a.state_digest().unwrap();
    drop(a);
    let a = open(&dir, 1);
    assert_eq!(a.state_digest().unwrap(), digest);
    assert_healthy(&a);
    assert_healthy(&b);
}
