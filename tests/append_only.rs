//! Append-only tables on real replicas (docs/design.md § Append-only tables and
//! retention): rows written concurrently on several nodes merge by union in every order
//! of arrival, a drop concurrent with appends removes them everywhere, concurrent
//! definitions that split rows into different buckets converge, and rows outlive a
//! reopen and a backup and are counted by the storage breakdown, and reach a new node by
//! state transfer once the log is compacted, also when a re-split moves them mid-way. Each case compares state digests, rows and `check_integrity`.

use edgestore::change::{ChangeError, Malformation, VerifiedChange, ENVELOPE_VERSION_APPEND};
use edgestore::{Replica, Value};

mod common;
use common::{assert_healthy, compact_all, log_of, node, open, sql_rows as rows, sql_run as run, sync, transfer};

const READINGS: &str = "CREATE TABLE readings (sensor INTEGER NOT NULL, ts TIMESTAMP NOT NULL, value REAL) \
     WITH (append_only = true, time_column = 'ts', bucket = '1 hour')";

/// `count` readings of `sensor`, one a minute from `start_ms`, in one statement.
fn readings(sensor: i64, start_ms: i64, count: i64) -> String {
    let values: Vec<String> =
        (0..count).map(|i| format!("({sensor}, {}, {}.5)", start_ms + i * 60_000, sensor * 1000 + i)).collect();
    format!("INSERT INTO readings VALUES {}", values.join(", "))
}

const ALL: &str = "SELECT sensor, ts, value FROM readings ORDER BY sensor, ts, value";

fn assert_same(a: &mut Replica, b: &mut Replica) {
    assert_eq!(a.state_digest().unwrap(), b.state_digest().unwrap(), "state digests differ");
    assert_eq!(rows(a, ALL), rows(b, ALL), "rows differ");
    assert_healthy(a);
    assert_healthy(b);
}

#[test]
fn concurrent_appends_merge_by_union_in_every_order() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b, mut c) = (open(&dir, 1), open(&dir, 2), open(&dir, 3));
    run(&mut a, READINGS);
    sync(&a, &mut b);
    // Three batches on a, two on b, across bucket boundaries (one hour = 60 readings).
    assert_eq!(run(&mut a, &readings(1, 0, 150)), 150);
    run(&mut a, &readings(1, 150 * 60_000, 10));
    run(&mut a, &readings(2, -30 * 60_000, 40));
    run(&mut b, &readings(3, 0, 90));
    run(&mut b, &readings(1, 0, 5)); // Same values as a's first rows: kept, as distinct rows.
    sync(&a, &mut b);
    sync(&b, &mut a);
    // c hears b first, then a.
    sync(&b, &mut c);
    sync(&a, &mut c);
    assert_same(&mut a, &mut b);
    assert_same(&mut a, &mut c);
    let total = rows(&mut c, "SELECT count(*), count(DISTINCT sensor) FROM readings");
    assert_eq!(total, vec![vec![Value::Integer(295), Value::Integer(3)]]);
    let first_hour = "SELECT count(*) FROM readings WHERE ts >= 0 AND ts < 3600000";
    assert_eq!(rows(&mut c, first_hour), vec![vec![Value::Integer(60 + 10 + 60 + 5)]]);

    // The rows travelled in version-2 envelopes, not as row documents.
    let appended = log_of(&a).into_iter().filter(|bytes| bytes[0] == ENVELOPE_VERSION_APPEND).count();
    assert_eq!(appended, 5, "one envelope per INSERT statement carries rows");
}

#[test]
fn an_envelope_whose_version_does_not_match_its_content_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = open(&dir, 1);
    run(&mut a, READINGS);
    run(&mut a, &readings(1, 0, 3));
    let mut envelope = log_of(&a).pop().expect("the insert's envelope");
    assert_eq!(VerifiedChange::decode(envelope.clone()).unwrap().appends[0].rows.len(), 3);
    envelope[0] = 1;
    assert_eq!(
        VerifiedChange::decode(envelope).unwrap_err(),
        ChangeError::Malformed(Malformation::VersionMismatch),
        "an append batch in a version-1 envelope"
    );
}

#[test]
fn a_drop_concurrent_with_appends_removes_them_on_every_node() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b) = (open(&dir, 1), open(&dir, 2));
    run(&mut a, READINGS);
    run(&mut a, &readings(1, 0, 20));
    sync(&a, &mut b);
    run(&mut a, &readings(2, 0, 20)); // Concurrent with b's drop.
    run(&mut b, "DROP TABLE readings");
    sync(&a, &mut b); // b holds the drop first: a's new rows are not stored.
    sync(&b, &mut a); // a stored them first: the drop removes them.
    assert_eq!(a.state_digest().unwrap(), b.state_digest().unwrap());
    assert!(a.snapshot().unwrap().catalog().table("readings").is_none());
    assert_healthy(&a);
    assert_healthy(&b);
    run(&mut b, READINGS);
    run(&mut b, &readings(3, 0, 2));
    sync(&b, &mut a);
    assert_eq!(rows(&mut a, "SELECT DISTINCT sensor FROM readings"), vec![vec![Value::Integer(3)]]);
    assert_same(&mut a, &mut b);
}

#[test]
fn concurrent_definitions_with_other_buckets_converge() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b) = (open(&dir, 1), open(&dir, 2));
    run(&mut a, READINGS);
    run(
        &mut b,
        "CREATE TABLE readings (sensor INTEGER NOT NULL, ts TIMESTAMP NOT NULL, value REAL) \
         WITH (append_only = true, time_column = 'ts', bucket = '1 minute')",
    );
    run(&mut a, &readings(1, 0, 100));
    run(&mut b, &readings(2, 0, 100));
    sync(&a, &mut b);
    sync(&b, &mut a);
    // One definition wins on both; each node split the rows it held under its own
    // definition and re-split them when the winner changed.
    let sql = "SELECT sql, conflicting_definitions FROM edgestore_tables";
    assert_eq!(rows(&mut a, sql), rows(&mut b, sql));
    assert_eq!(rows(&mut a, sql)[0][1], Value::Integer(2));
    assert_same(&mut a, &mut b);
    let range = "SELECT count(*) FROM readings WHERE ts >= 3000000 AND ts < 3600000";
    assert_eq!(rows(&mut a, range), vec![vec![Value::Integer(20)]]);
}

#[test]
fn rows_outlive_a_reopen_and_a_backup() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = open(&dir, 1);
    run(&mut a, READINGS);
    run(&mut a, &readings(1, 0, 500));
    let before = rows(&mut a, ALL);
    let digest = a.state_digest().unwrap();
    let stats = a.snapshot().unwrap().storage_stats().unwrap();
    let readings = stats.user_tables.iter().find(|t| t.name == "readings").expect("readings in the stats");
    assert_eq!((readings.rows, readings.documents), (500, 0), "rows in blocks, no row documents");
    let blocks = stats.redb_tables.iter().find(|t| t.name == "append_blocks_v1").expect("the blocks table");
    assert_eq!(blocks.entries, 9, "500 readings a minute apart span 9 one-hour buckets: one block each");
    assert!(readings.row_bytes > 500 * 10, "a block holds every row's values: {} bytes", readings.row_bytes);
    let backup = dir.path().join("backup.redb");
    a.snapshot().unwrap().backup_to(&backup).expect("backup");
    drop(a);
    let mut a = open(&dir, 1);
    assert_eq!(rows(&mut a, ALL), before);
    assert_eq!(a.state_digest().unwrap(), digest);
    assert_healthy(&a);
    let mut restored = Replica::open(&backup, node(1)).expect("open the backup");
    assert_eq!(rows(&mut restored, ALL), before);
    assert_healthy(&restored);
}

#[test]
fn a_new_node_gets_the_rows_by_state_transfer_once_the_log_is_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = open(&dir, 1);
    run(&mut a, READINGS);
    run(&mut a, "CREATE TABLE sites (id INTEGER PRIMARY KEY, name TEXT)");
    run(&mut a, "INSERT INTO sites VALUES (1, 'north'), (2, 'south')");
    for sensor in 1..=4 {
        run(&mut a, &readings(sensor, sensor * 40 * 60_000, 150));
    }
    // Nothing holds the log back any more: every envelope goes, the rows stay in blocks.
    assert_eq!(compact_all(&mut a), 7);
    assert_eq!(a.log_floor(), a.version_vector());
    let mut c = open(&dir, 3);
    let batches = transfer(&a, &mut c, 3);
    assert!(batches > 4, "documents and blocks, 3 a batch: {batches} batches");
    assert_eq!(c.version_vector(), a.version_vector());
    assert_same(&mut a, &mut c);
    let joined = "SELECT count(*) FROM readings JOIN sites ON readings.sensor = sites.id";
    assert_eq!(rows(&mut c, joined), vec![vec![Value::Integer(300)]]);
    // Delta sync continues above the installed vector.
    run(&mut a, &readings(5, 0, 10));
    sync(&a, &mut c);
    assert_same(&mut a, &mut c);
    // A block sent twice (a second transfer into a node that holds it) is not counted twice.
    let mut again = open(&dir, 4);
    transfer(&a, &mut again, 1000);
    transfer(&c, &mut again, 1000);
    assert_same(&mut a, &mut again);
}

/// The donor re-splits its blocks mid-transfer (a concurrent definition with another
/// bucket width wins there), which moves rows between block keys, some behind the
/// receiver's cursor: the blocks start over under the new layout and nothing is missed.
/// Every assignment of the two widths to donor and other node is run, so whichever
/// definition wins, one run has the donor move rows backwards.
#[test]
fn a_re_split_during_a_transfer_starts_the_blocks_over() {
    let hourly = READINGS;
    let minutely = "CREATE TABLE readings (sensor INTEGER NOT NULL, ts TIMESTAMP NOT NULL, value REAL) \
                    WITH (append_only = true, time_column = 'ts', bucket = '1 minute')";
    for (donor_def, other_def) in [(hourly, minutely), (minutely, hourly)] {
        for donor_is_first in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let (n_donor, n_other) = if donor_is_first { (1, 2) } else { (2, 1) };
            let (mut donor, mut other) = (open(&dir, n_donor), open(&dir, n_other));
            run(&mut donor, donor_def);
            run(&mut other, other_def);
            for sensor in 0..3 {
                run(&mut donor, &readings(sensor, sensor * 30 * 60_000, 100));
                run(&mut other, &readings(10 + sensor, sensor * 30 * 60_000, 20));
            }
            compact_all(&mut donor);
            let mut c = open(&dir, 3);
            // Halfway through the donor's blocks, the other node's definition arrives.
            let in_blocks = |c: &Replica| c.transfer_progress().unwrap().is_some_and(|p| p.cursor.first() == Some(&3));
            let mut blocks_sent = 0;
            while blocks_sent < 3 {
                let cursor = c.transfer_progress().unwrap().map(|p| p.cursor_for(donor.node_id())).unwrap_or_default();
                let batch = donor.export_transfer(&cursor, 1, 1 << 20).unwrap();
                assert!(!batch.done, "the transfer ended before the re-split");
                c.import_transfer(donor.node_id(), batch).unwrap();
                blocks_sent += usize::from(in_blocks(&c));
            }
            sync(&other, &mut donor);
            transfer(&donor, &mut c, 4);
            sync(&donor, &mut c);
            sync(&other, &mut c);
            let label = format!("donor {donor_def:?} as node {n_donor}");
            assert_eq!(c.state_digest().unwrap(), donor.state_digest().unwrap(), "{label}");
            assert_eq!(rows(&mut c, ALL), rows(&mut donor, ALL), "{label}");
            assert_eq!(rows(&mut c, "SELECT count(*) FROM readings"), vec![vec![Value::Integer(360)]], "{label}");
            assert_healthy(&c);
            assert_healthy(&donor);
        }
    }
}

/// `ALTER TABLE` on an append-only table while another node appends under the old
/// definition, in both orders of arrival: rows written before an `ADD` read its default,
/// a renamed column keeps its values, and both nodes end with the same rows and digest.
#[test]
fn an_alter_concurrent_with_appends_converges() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b) = (open(&dir, 1), open(&dir, 2));
    run(&mut a, READINGS);
    run(&mut a, &readings(1, 0, 10));
    sync(&a, &mut b);
    run(&mut a, "ALTER TABLE readings ADD COLUMN unit TEXT DEFAULT 'C'");
    run(&mut a, "ALTER TABLE readings RENAME COLUMN value TO reading");
    run(&mut a, "INSERT INTO readings VALUES (1, 3600000, 99.5, 'F')");
    run(&mut b, &readings(2, 0, 5));
    let mut c = open(&dir, 3);
    sync(&a, &mut c);
    sync(&b, &mut c);
    sync(&b, &mut a);
    sync(&a, &mut b);
    let all = "SELECT sensor, ts, reading, unit FROM readings ORDER BY sensor, ts, reading";
    for node in [&mut a, &mut b, &mut c] {
        let seen = rows(node, all);
        assert_eq!(seen.len(), 16);
        assert_eq!(
            seen.iter().filter(|r| r[3] == Value::from("C")).count(),
            15,
            "rows before the ADD read its default"
        );
        assert_eq!(seen[10], vec![Value::Integer(1), Value::Timestamp(3_600_000), Value::Real(99.5), Value::from("F")]);
    }
    assert_eq!(rows(&mut a, all), rows(&mut b, all));
    assert_eq!(rows(&mut a, all), rows(&mut c, all));
    assert_eq!(a.state_digest().unwrap(), b.state_digest().unwrap());
    assert_eq!(a.state_digest().unwrap(), c.state_digest().unwrap());
    for node in [&a, &b, &c] {
        assert_healthy(node);
    }
}
