//! Range `DELETE` on append-only tables, on real replicas (docs/design.md § Identity and
//! merge): a range tombstone removes the rows its node held and never a row written
//! concurrently, in every order of arrival; state transfer carries tombstones and
//! drops the rows they removed, whichever side lacks them; tombstones made redundant by
//! a later one, or whose range falls below the floor, are not kept; a drop removes them;
//! a transferred tombstone that claims more than its snapshot holds is refused whole.
//! Each case compares state digests, rows and `check_integrity`.

use edgestore::{Replica, Value};

mod common;
use common::{assert_healthy, compact_all, open, sql_count as count, sql_rows as rows, sql_run as run, sync, transfer};

const HOUR: i64 = 3_600_000;
const MINUTE: i64 = 60_000;

const READINGS: &str = "CREATE TABLE readings (sensor INTEGER NOT NULL, ts TIMESTAMP NOT NULL, value REAL) \
     WITH (append_only = true, time_column = 'ts', bucket = '1 hour', retention = '3 hours')";

const ALL: &str = "SELECT sensor, ts, value FROM readings ORDER BY sensor, ts, value";

/// One reading of `sensor` a minute over `[from, to)`, in one statement.
fn readings(sensor: i64, from: i64, to: i64) -> String {
    let values: Vec<String> =
        (from / MINUTE..to / MINUTE).map(|m| format!("({sensor}, {}, {m}.5)", m * MINUTE)).collect();
    format!("INSERT INTO readings VALUES {}", values.join(", "))
}

fn sensor_rows(replica: &mut Replica, sensor: i64) -> i64 {
    count(replica, &format!("SELECT count(*) FROM readings WHERE sensor = {sensor}"))
}

fn assert_same(a: &mut Replica, b: &mut Replica) {
    assert_eq!(a.state_digest().unwrap(), b.state_digest().unwrap(), "state digests differ");
    assert_eq!(rows(a, ALL), rows(b, ALL), "rows differ");
    assert_healthy(a);
    assert_healthy(b);
}

fn tombstones_kept(replica: &Replica) -> u64 {
    let stats = replica.snapshot().unwrap().storage_stats().unwrap();
    stats.redb_tables.iter().find(|t| t.name == "append_tombstones_v1").expect("the tombstones table").entries
}

#[test]
fn a_range_delete_removes_what_its_node_held_and_never_a_concurrent_row() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b, mut c) = (open(&dir, 1), open(&dir, 2), open(&dir, 3));
    run(&mut a, READINGS);
    run(&mut a, &readings(1, 0, 2 * HOUR));
    sync(&a, &mut b);
    sync(&a, &mut c);
    // Concurrent: a deletes the first 90 minutes while b writes sensor 2 in them.
    let deleted = run(&mut a, &format!("DELETE FROM readings WHERE ts < {}", 90 * MINUTE));
    assert_eq!(deleted, 90, "the rows a held in the range");
    run(&mut b, &readings(2, 0, 2 * HOUR));
    // b holds its rows before the tombstone; c gets the tombstone before b's rows.
    sync(&a, &mut b);
    sync(&a, &mut c);
    sync(&b, &mut c);
    sync(&b, &mut a);
    for node in [&mut a, &mut b, &mut c] {
        assert_eq!(sensor_rows(node, 1), 30, "a's rows after 90 minutes stay");
        assert_eq!(sensor_rows(node, 2), 120, "no row written concurrently with the delete goes");
        assert_eq!(count(node, "SELECT min(ts) FROM readings WHERE sensor = 1"), 90 * MINUTE);
    }
    assert_same(&mut a, &mut b);
    assert_same(&mut a, &mut c);
    // A delete that has seen b's rows removes them too.
    assert_eq!(run(&mut c, &format!("DELETE FROM readings WHERE ts >= {HOUR}")), 30 + 60);
    sync(&c, &mut a);
    sync(&c, &mut b);
    assert_eq!(count(&mut a, "SELECT count(*) FROM readings"), 60);
    assert_same(&mut a, &mut b);
    assert_same(&mut a, &mut c);
}

#[test]
fn a_transfer_brings_the_tombstones_a_receiver_lacks() {
    let dir = tempfile::tempdir().unwrap();
    let (mut donor, mut late) = (open(&dir, 1), open(&dir, 2));
    run(&mut donor, READINGS);
    run(&mut donor, &readings(1, 0, 3 * HOUR));
    sync(&donor, &mut late);
    // The donor deletes and compacts its whole log: the late node catches up by transfer.
    assert_eq!(run(&mut donor, &format!("DELETE FROM readings WHERE ts >= {HOUR} AND ts < {}", 2 * HOUR)), 60);
    run(&mut donor, &readings(3, 0, HOUR));
    compact_all(&mut donor);
    assert_eq!(tombstones_kept(&donor), 1);
    transfer(&donor, &mut late, 2);
    assert_eq!(tombstones_kept(&late), 1, "kept for the next path that is not causal");
    assert_eq!(sensor_rows(&mut late, 1), 120, "the tombstone removed the rows the late node held");
    assert_same(&mut donor, &mut late);
}

#[test]
fn a_transfer_from_a_donor_without_a_tombstone_does_not_bring_back_what_it_removed() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut donor, mut receiver) = (open(&dir, 1), open(&dir, 2), open(&dir, 3));
    run(&mut a, READINGS);
    run(&mut a, &readings(1, 0, 3 * HOUR));
    sync(&a, &mut donor);
    sync(&a, &mut receiver);
    run(&mut a, &format!("DELETE FROM readings WHERE ts < {}", 2 * HOUR));
    sync(&a, &mut receiver);
    assert_eq!(sensor_rows(&mut receiver, 1), 60);
    // The donor has not heard of the delete and sends every row; the receiver keeps only
    // those no tombstone it holds removes.
    run(&mut donor, &readings(2, 0, HOUR));
    transfer(&donor, &mut receiver, 3);
    assert_eq!(sensor_rows(&mut receiver, 1), 60);
    assert_eq!(sensor_rows(&mut receiver, 2), 60);
    sync(&a, &mut donor);
    sync(&donor, &mut a);
    assert_same(&mut a, &mut donor);
    assert_same(&mut a, &mut receiver);
}

#[test]
fn redundant_and_expired_tombstones_are_not_kept_and_a_drop_removes_them() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b) = (open(&dir, 1), open(&dir, 2));
    run(&mut a, READINGS);
    run(&mut a, &readings(1, 0, 6 * HOUR));
    run(&mut a, &format!("DELETE FROM readings WHERE ts < {}", 30 * MINUTE));
    run(&mut a, &format!("DELETE FROM readings WHERE ts >= {} AND ts < {}", 4 * HOUR, 5 * HOUR));
    assert_eq!(tombstones_kept(&a), 2);
    // A later delete that holds the first one's range and has seen everything it saw.
    run(&mut a, &format!("DELETE FROM readings WHERE ts < {HOUR}"));
    assert_eq!(tombstones_kept(&a), 2, "the first is redundant");
    sync(&a, &mut b);
    assert_eq!(tombstones_kept(&b), 2, "b applied all three and kept the two that matter");
    assert_same(&mut a, &mut b);
    assert_eq!(count(&mut a, "SELECT count(*) FROM readings"), 4 * 60);

    // At 6.5 h the floor is 3 h: the tombstone below it goes, the one above stays.
    let report = a.expire_append_step(6 * HOUR + 30 * MINUTE, 1000).unwrap();
    assert_eq!(report.tombstones_collected, 1);
    assert_eq!(tombstones_kept(&a), 1);
    assert_eq!(count(&mut a, "SELECT count(*) FROM readings"), 2 * 60);
    assert_healthy(&a);

    run(&mut a, "DROP TABLE readings");
    assert_eq!(tombstones_kept(&a), 0, "a dropped incarnation's tombstones go with it");
    sync(&a, &mut b);
    assert_eq!(tombstones_kept(&b), 0);
    assert_eq!(a.state_digest().unwrap(), b.state_digest().unwrap());
}

#[test]
fn a_range_delete_survives_a_reopen_and_refuses_what_is_not_a_range() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = open(&dir, 1);
    run(&mut a, READINGS);
    run(&mut a, &readings(1, 0, 2 * HOUR));
    // Refused before anything is written: no tombstone, no envelope.
    let before = a.version_vector().clone();
    let refused = edgestore::sql::execute(&mut a, "DELETE FROM readings WHERE value > 3", &[], 1000);
    assert!(refused.unwrap_err().to_string().contains("must be a range of ts"));
    assert_eq!(a.version_vector(), &before);
    let with_param =
        edgestore::sql::execute(&mut a, "DELETE FROM readings WHERE ts < ?", &[Value::Timestamp(30 * MINUTE)], 1000)
            .unwrap();
    assert_eq!(with_param.rows_affected, 30);
    let digest = a.state_digest().unwrap();
    drop(a);
    let mut a = open(&dir, 1);
    assert_eq!(a.state_digest().unwrap(), digest);
    assert_eq!(count(&mut a, "SELECT count(*) FROM readings"), 90);
    assert_eq!(tombstones_kept(&a), 1);
    assert_healthy(&a);
}

#[test]
fn a_transferred_tombstone_of_a_later_envelope_is_refused_whole() {
    use edgestore::append::RangeTombstone;
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut receiver) = (open(&dir, 1), open(&dir, 2));
    run(&mut a, READINGS);
    run(&mut a, &readings(1, 0, HOUR));
    run(&mut a, &format!("DELETE FROM readings WHERE ts < {}", 30 * MINUTE));
    let mut batch = a.export_transfer(&[], 1000, 1 << 20).unwrap();
    assert!(batch.done);
    let stored = batch.docs.iter_mut().find(|d| d.key[0] == 4).expect("the tombstone follows the blocks");
    // What the deleting node held cannot be more than the snapshot holds.
    let op_key = edgestore::append::op_key(edgestore::append::TOMBSTONE_KEY_KIND, "readings", 1);
    let mut tombstone = RangeTombstone::decode(&op_key, &stored.snapshot).expect("the donor's tombstone");
    tombstone.vector.set(common::node(9), 5);
    stored.snapshot = tombstone.payload();
    let digest = receiver.state_digest().unwrap();
    assert!(receiver.import_transfer(a.node_id(), batch).is_err());
    assert_eq!(receiver.state_digest().unwrap(), digest, "nothing of the batch was stored");
    assert!(receiver.transfer_progress().unwrap().is_none());
    assert_healthy(&receiver);
}
