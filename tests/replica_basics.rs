//! Behaviour of one and two replicas through the public API: writes, typed errors,
//! reads, merge semantics (conflicts, counters, causal-length liveness) and catalog DDL.

use std::ops::Bound;

use edgestore::{ColumnDef, ColumnType, IndexSchema, Replica, TableSchema, Value, WriteBatch, WriteError};
use tempfile::TempDir;

mod common;
use common::{insert, node, open, sync};

fn sensors() -> TableSchema {
    TableSchema::new("sensors")
        .column(ColumnDef::new("id", ColumnType::Integer))
        .column(ColumnDef::new("name", ColumnType::Text).not_null())
        .column(ColumnDef::new("temp", ColumnType::Real))
        .column(ColumnDef::new("hits", ColumnType::Counter))
        .column(ColumnDef::new("site", ColumnType::Text).default("north"))
        .primary_key(&["id"])
}

fn get(replica: &Replica, id: i64) -> Option<Vec<Value>> {
    replica.snapshot().unwrap().get("sensors", &[Value::from(id)]).unwrap()
}

fn with_table(dir: &TempDir, n: u8) -> Replica {
    let mut replica = open(dir, n);
    replica.write(WriteBatch::new().create_table(sensors()), 0).unwrap();
    replica
}

#[test]
fn insert_then_read_with_defaults() {
    let dir = TempDir::new().unwrap();
    let mut a = with_table(&dir, 1);
    let receipt = a.write(insert(1, "pump"), 10).unwrap();
    assert_eq!(receipt.rows_affected, 1);
    assert_eq!(receipt.seq, Some(2));
    let row = get(&a, 1).unwrap();
    assert_eq!(row, vec![1.into(), "pump".into(), Value::Null, 0.into(), "north".into()]);
    assert_eq!(get(&a, 2), None);
    assert!(a.check_integrity().unwrap().is_empty());
}

#[test]
fn refused_batches_write_nothing() {
    let dir = TempDir::new().unwrap();
    let mut a = with_table(&dir, 1);
    a.write(insert(1, "pump"), 0).unwrap();
    let digest = a.state_digest().unwrap();
    let cases: Vec<(WriteBatch, &str)> = vec![
        (insert(2, "ok").insert("nope", [("id", Value::from(1))]), "no such table: nope"),
        (insert(2, "ok").merge(insert(1, "dup")), "duplicate primary key in sensors: (1)"),
        (WriteBatch::new().insert("sensors", [("id", Value::from(3))]), "NOT NULL constraint failed: sensors.name"),
        (
            WriteBatch::new().insert("sensors", [("id", Value::from(3)), ("name", Value::from(4))]),
            "type mismatch: sensors.name is TEXT, got INTEGER",
        ),
        (
            WriteBatch::new().insert("sensors", [("id", Value::from(3)), ("bogus", Value::from(4))]),
            "no such column: sensors.bogus",
        ),
        (
            WriteBatch::new().update("sensors", vec![9.into()], [("temp", Value::from(1.0))]),
            "no row in sensors with primary key (9)",
        ),
        (
            WriteBatch::new().update("sensors", vec![1.into()], [("id", Value::from(2))]),
            "cannot update primary-key column sensors.id; delete and insert instead",
        ),
        (WriteBatch::new().increment("sensors", vec![1.into()], "temp", 1), "sensors.temp is not a COUNTER column"),
        (WriteBatch::new().create_table(sensors()), "table sensors already exists"),
        (WriteBatch::new(), "empty write batch"),
    ];
    for (batch, expected) in cases {
        let err = a.write(batch, 0).unwrap_err();
        assert_eq!(err.to_string(), expected);
        assert_eq!(a.state_digest().unwrap(), digest, "refused batch changed state: {expected}");
    }
    assert_eq!(get(&a, 2), None);
    assert!(a.check_integrity().unwrap().is_empty());
}

/// A batch whose change peers would refuse is refused at the writer, and replication of
/// what the writer writes next is not held up behind it.
#[test]
fn a_batch_too_large_to_replicate_is_refused_before_it_is_logged() {
    let dir = TempDir::new().unwrap();
    let mut a = with_table(&dir, 1);
    let mut b = open(&dir, 2);
    let digest = a.state_digest().unwrap();
    let vector = a.version_vector().clone();
    let name = "x".repeat(edgestore::change::CHANGE_BYTES_MAX);
    let err = a.write(insert(1, &name), 0).unwrap_err();
    assert!(
        matches!(err, WriteError::ChangeTooLarge { bytes } if bytes > edgestore::change::CHANGE_BYTES_MAX),
        "{err}"
    );
    assert!(err.to_string().contains("split it"), "{err}");
    assert_eq!(a.state_digest().unwrap(), digest);
    assert_eq!(a.version_vector(), &vector, "nothing was logged");
    a.write(insert(1, "pump"), 0).unwrap();
    sync(&a, &mut b);
    assert_eq!(b.state_digest().unwrap(), a.state_digest().unwrap());
    assert!(a.check_integrity().unwrap().is_empty());
}

trait Merge {
    fn merge(self, other: WriteBatch) -> WriteBatch;
}
impl Merge for WriteBatch {
    fn merge(mut self, other: WriteBatch) -> WriteBatch {
        self.ops.extend(other.ops);
        self
    }
}

#[test]
fn scans_ranges_and_index_lookups() {
    let dir = TempDir::new().unwrap();
    let mut a = with_table(&dir, 1);
    a.write(WriteBatch::new().create_index(IndexSchema::new("by_name", "sensors", &["name"])), 0).unwrap();
    let mut batch = WriteBatch::new();
    for id in 0..20 {
        batch = batch.merge(insert(id, if id % 2 == 0 { "even" } else { "odd" }));
    }
    a.write(batch, 0).unwrap();
    let snap = a.snapshot().unwrap();
    assert_eq!(snap.scan("sensors").unwrap().count(), 20);
    let ids = |rows: Vec<Vec<Value>>| rows.into_iter().map(|r| r[0].clone()).collect::<Vec<_>>();
    let lo = [Value::from(5)];
    let hi = [Value::from(8)];
    let range: Vec<_> =
        snap.range("sensors", Bound::Included(&lo), Bound::Excluded(&hi)).unwrap().map(Result::unwrap).collect();
    assert_eq!(ids(range), vec![5.into(), 6.into(), 7.into()]);
    let odd = snap.index_lookup("by_name", &["odd".into()]).unwrap();
    assert_eq!(odd.len(), 10);
    assert!(odd.iter().all(|r| r[1] == "odd".into()));
    drop(snap);
    a.write(WriteBatch::new().delete("sensors", vec![1.into()]), 0).unwrap();
    a.write(WriteBatch::new().update("sensors", vec![3.into()], [("name", Value::from("even"))]), 0).unwrap();
    let snap = a.snapshot().unwrap();
    assert_eq!(snap.index_lookup("by_name", &["odd".into()]).unwrap().len(), 8);
    assert_eq!(snap.index_lookup("by_name", &["even".into()]).unwrap().len(), 11);
    assert!(a.check_integrity().unwrap().is_empty());
}

#[test]
fn concurrent_updates_keep_every_value_and_agree_on_the_winner() {
    let dir = TempDir::new().unwrap();
    let mut a = with_table(&dir, 1);
    a.write(insert(1, "pump"), 0).unwrap();
    let mut b = open(&dir, 2);
    sync(&a, &mut b);
    a.write(WriteBatch::new().update("sensors", vec![1.into()], [("name", Value::from("from-a"))]), 0).unwrap();
    b.write(WriteBatch::new().update("sensors", vec![1.into()], [("name", Value::from("from-b"))]), 0).unwrap();
    sync(&a, &mut b);
    sync(&b, &mut a);
    assert_eq!(a.state_digest().unwrap(), b.state_digest().unwrap());
    assert_eq!(get(&a, 1), get(&b, 1));
    let conflicts = a.snapshot().unwrap().conflicts("sensors", &[1.into()]).unwrap();
    assert_eq!(conflicts.len(), 1);
    let conflict = &conflicts[0];
    assert_eq!(conflict.column, "name");
    let mut values: Vec<_> = conflict.values.iter().map(|(v, n)| (v.to_string(), *n)).collect();
    values.sort();
    assert_eq!(values, vec![("from-a".into(), node(1)), ("from-b".into(), node(2))]);
    assert_eq!(get(&a, 1).unwrap()[1], conflict.winner);
    assert_eq!(b.snapshot().unwrap().conflicts("sensors", &[1.into()]).unwrap(), conflicts);
}

#[test]
fn counters_add_concurrent_increments() {
    let dir = TempDir::new().unwrap();
    let mut a = with_table(&dir, 1);
    a.write(insert(1, "pump"), 0).unwrap();
    let mut b = open(&dir, 2);
    sync(&a, &mut b);
    a.write(WriteBatch::new().increment("sensors", vec![1.into()], "hits", 5), 0).unwrap();
    b.write(WriteBatch::new().increment("sensors", vec![1.into()], "hits", 7), 0).unwrap();
    b.write(WriteBatch::new().increment("sensors", vec![1.into()], "hits", -2), 0).unwrap();
    sync(&a, &mut b);
    sync(&b, &mut a);
    assert_eq!(get(&a, 1).unwrap()[3], Value::from(10));
    assert_eq!(get(&b, 1).unwrap()[3], Value::from(10));
}

#[test]
fn delete_beats_concurrent_update_and_reinsert_revives() {
    let dir = TempDir::new().unwrap();
    let mut a = with_table(&dir, 1);
    a.write(insert(1, "pump"), 0).unwrap();
    let mut b = open(&dir, 2);
    sync(&a, &mut b);
    a.write(WriteBatch::new().delete("sensors", vec![1.into()]), 0).unwrap();
    b.write(WriteBatch::new().update("sensors", vec![1.into()], [("temp", Value::from(20.5))]), 0).unwrap();
    sync(&a, &mut b);
    sync(&b, &mut a);
    assert_eq!(get(&a, 1), None);
    assert_eq!(get(&b, 1), None);
    // B has now seen the delete; its re-insert revives the row with fresh values.
    b.write(insert(1, "new pump"), 0).unwrap();
    sync(&b, &mut a);
    let row = get(&a, 1).unwrap();
    assert_eq!(row[1], "new pump".into());
    assert_eq!(row[2], Value::Null);
    assert_eq!(a.state_digest().unwrap(), b.state_digest().unwrap());
    assert!(a.check_integrity().unwrap().is_empty());
}

#[test]
fn identical_concurrent_ddl_merges_silently_and_different_ddl_conflicts_visibly() {
    let dir = TempDir::new().unwrap();
    let mut a = with_table(&dir, 1);
    let mut b = with_table(&dir, 2);
    a.write(insert(1, "a"), 0).unwrap();
    b.write(insert(2, "b"), 0).unwrap();
    sync(&a, &mut b);
    sync(&b, &mut a);
    assert_eq!(a.state_digest().unwrap(), b.state_digest().unwrap());
    assert!(a.catalog().table("sensors").unwrap().conflict.is_none());
    assert!(get(&a, 2).is_some() && get(&b, 1).is_some());

    let other = TableSchema::new("gauges").column(ColumnDef::new("k", ColumnType::Text)).primary_key(&["k"]);
    let wider = other.clone().column(ColumnDef::new("v", ColumnType::Integer));
    a.write(WriteBatch::new().create_table(other), 0).unwrap();
    b.write(WriteBatch::new().create_table(wider), 0).unwrap();
    sync(&a, &mut b);
    sync(&b, &mut a);
    assert_eq!(a.state_digest().unwrap(), b.state_digest().unwrap());
    let entry = a.catalog().table("gauges").unwrap();
    assert_eq!(entry, b.catalog().table("gauges").unwrap());
    let conflict = entry.conflict.as_ref().expect("conflicting definitions are visible");
    assert_eq!(conflict.definitions.len(), 2);
    assert!(a.check_integrity().unwrap().is_empty());
}

#[test]
fn drop_table_then_recreate_starts_empty_everywhere() {
    let dir = TempDir::new().unwrap();
    let mut a = with_table(&dir, 1);
    a.write(insert(1, "pump"), 0).unwrap();
    let mut b = open(&dir, 2);
    sync(&a, &mut b);
    a.write(WriteBatch::new().drop_table("sensors"), 0).unwrap();
    b.write(insert(2, "concurrent"), 0).unwrap();
    a.write(WriteBatch::new().create_table(sensors()), 0).unwrap();
    sync(&a, &mut b);
    sync(&b, &mut a);
    assert_eq!(a.snapshot().unwrap().scan("sensors").unwrap().count(), 0);
    assert_eq!(a.state_digest().unwrap(), b.state_digest().unwrap());
    assert!(b.write(insert(3, "x"), 0).is_ok());
    assert!(b.check_integrity().unwrap().is_empty());
}

#[test]
fn out_of_order_changes_park_until_their_dependencies_arrive() {
    let dir = TempDir::new().unwrap();
    let mut a = with_table(&dir, 1);
    for id in 0..5 {
        a.write(insert(id, "x"), 0).unwrap();
    }
    let mut changes = a.changes_since(&Default::default(), usize::MAX, usize::MAX).unwrap().changes;
    changes.reverse();
    let mut b = open(&dir, 2);
    let last = changes.remove(changes.len() - 1);
    let report = b.apply_remote(changes.clone()).unwrap();
    assert_eq!((report.applied, report.parked), (0, 5));
    let report = b.apply_remote(vec![last]).unwrap();
    assert_eq!(report.applied, 6);
    assert_eq!(b.pending_changes().unwrap(), 0);
    let report = b.apply_remote(changes).unwrap();
    assert_eq!(report.duplicates, 5);
    assert_eq!(a.state_digest().unwrap(), b.state_digest().unwrap());
    assert!(b.check_integrity().unwrap().is_empty());
}

#[test]
fn wrong_write_error_kinds_are_matchable() {
    let dir = TempDir::new().unwrap();
    let mut a = open(&dir, 1);
    assert!(matches!(a.write(insert(1, "x"), 0), Err(WriteError::UnknownTable(t)) if t == "sensors"));
}

#[test]
fn unique_indexes_are_checked_on_the_batch_as_a_whole() {
    let dir = TempDir::new().unwrap();
    let mut a = with_table(&dir, 1);
    let by_name = IndexSchema::new("sensors_name", "sensors", &["name"]).unique();
    a.write(WriteBatch::new().create_index(by_name).merge(insert(1, "pump")), 0).unwrap();
    let digest = a.state_digest().unwrap();
    let refused = a.write(insert(2, "pump"), 0).unwrap_err();
    assert!(matches!(&refused, WriteError::UniqueViolation { index, .. } if index == "sensors_name"), "{refused}");
    assert_eq!(
        refused.to_string(),
        "UNIQUE constraint failed: sensors.name: ('pump') is held by the row (1) (index sensors_name)"
    );
    // Two new rows of one batch, each free of stored holders.
    assert!(matches!(a.write(insert(2, "fan").merge(insert(3, "fan")), 0), Err(WriteError::UniqueViolation { .. })));
    assert_eq!(a.state_digest().unwrap(), digest, "a refused batch leaves nothing");
    // Whatever the order of its operations, a batch that frees a value may give it away.
    let handover = insert(2, "pump").delete("sensors", vec![1.into()]);
    a.write(handover, 0).unwrap();
    assert_eq!(get(&a, 2).unwrap()[1], Value::from("pump"));
    let renamed = insert(3, "fan").update("sensors", vec![2.into()], [("name", Value::from("pump2"))]);
    a.write(renamed.merge(insert(4, "pump")), 0).unwrap();
    // The check only runs for a unique index; on a COUNTER it is refused.
    let on_counter = IndexSchema::new("sensors_hits", "sensors", &["hits"]).unique();
    let refused = a.write(WriteBatch::new().create_index(on_counter), 0).unwrap_err();
    assert!(refused.to_string().contains("cannot cover the COUNTER column hits"), "{refused}");
    assert!(a.check_integrity().unwrap().is_empty());
}

#[test]
fn dead_letters_are_bounded_cut_and_node_local() {
    use edgestore::{DeadLetter, DEAD_LETTERS_MAX, DEAD_LETTER_PAYLOAD_BYTES_MAX};
    let dir = TempDir::new().unwrap();
    let mut replica = with_table(&dir, 1);
    let changes = replica.version_vector().total_changes();
    let letter =
        |i: u64| DeadLetter::new(i as i64, "mqtt", "sites/a", "sensors", format!("payload {i}").as_bytes(), "bad");
    assert_eq!(replica.record_dead_letters(&[letter(0), letter(1), letter(2)]).unwrap(), 1);
    let many: Vec<DeadLetter> = (3..3 + DEAD_LETTERS_MAX).map(letter).collect();
    assert_eq!(replica.record_dead_letters(&many).unwrap(), 4);
    let kept = replica.snapshot().unwrap().dead_letters().unwrap();
    assert_eq!(kept.len() as u64, DEAD_LETTERS_MAX, "the oldest go");
    assert_eq!((kept[0].0, kept[0].1.received_ms), (4, 3));
    assert_eq!(kept.last().unwrap().0, 3 + DEAD_LETTERS_MAX);

    let long = vec![b'x'; 3 * DEAD_LETTER_PAYLOAD_BYTES_MAX];
    let error = "é".repeat(1000); // 2000 bytes: cut at a character boundary
    replica.record_dead_letters(&[DeadLetter::new(7, "mqtt", "t", "", &long, &error)]).unwrap();
    let snapshot = std::sync::Arc::new(replica.snapshot().unwrap());
    let rows: Vec<Vec<Value>> = edgestore::sql::query(
        snapshot,
        "SELECT length(payload), payload_bytes, length(error), received_at FROM edgestore_dead_letters \
         ORDER BY seq DESC LIMIT 1",
        &[],
    )
    .unwrap()
    .rows
    .map(|row| row.unwrap())
    .collect();
    assert_eq!(
        rows,
        [vec![
            Value::Integer(DEAD_LETTER_PAYLOAD_BYTES_MAX as i64),
            Value::Integer(3 * DEAD_LETTER_PAYLOAD_BYTES_MAX as i64),
            Value::Integer(512),
            Value::Timestamp(7)
        ]]
    );
    assert_eq!(replica.version_vector().total_changes(), changes, "dead letters are not replicated changes");
}
