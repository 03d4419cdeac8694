//! Retention and the disk budget of append-only tables on real replicas (docs/design.md
//! § "Retention, the budget and the floor"): whole buckets older than the retention go
//! in bounded steps, each node by its own clock; rows that arrive below a node's floor
//! are dropped and counted; `max_bytes` drops the oldest buckets but never the newest;
//! nodes that expired at different moments compare equal at the higher floor; floors
//! outlive a reopen and end with the table's incarnation.

use std::collections::BTreeMap;

use edgestore::{AppendTableStatus, Replica};

mod common;
use common::{assert_healthy, open, sql_count as count, sql_run as run, sync};

const HOUR: i64 = 3_600_000;
const MINUTE: i64 = 60_000;

const READINGS: &str = "CREATE TABLE readings (sensor INTEGER NOT NULL, ts TIMESTAMP NOT NULL, value REAL) \
     WITH (append_only = true, time_column = 'ts', bucket = '1 hour', retention = '3 hours')";

/// One reading of `sensor` a minute over `[from, to)`, in one statement.
fn readings(sensor: i64, from: i64, to: i64) -> String {
    let values: Vec<String> =
        (from / MINUTE..to / MINUTE).map(|m| format!("({sensor}, {}, {m}.5)", m * MINUTE)).collect();
    format!("INSERT INTO readings VALUES {}", values.join(", "))
}

fn status(replica: &Replica, table: &str) -> AppendTableStatus {
    let all = replica.append_tables_status().unwrap();
    all.into_iter().find(|s| s.name == table).unwrap_or_else(|| panic!("no status for {table}"))
}

/// Steps until nothing is left below the floors; returns the number of steps.
fn expire(replica: &mut Replica, now_ms: i64, blocks_max: usize) -> usize {
    for step in 1..=1000 {
        if replica.expire_append_step(now_ms, blocks_max).unwrap().complete {
            return step;
        }
    }
    panic!("expiry did not complete in 1000 steps");
}

fn oldest(replica: &mut Replica) -> i64 {
    count(replica, "SELECT min(ts) FROM readings")
}

#[test]
fn whole_buckets_older_than_the_retention_go_in_bounded_steps_on_each_node() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b) = (open(&dir, 1), open(&dir, 2));
    run(&mut a, READINGS);
    // Three statements over six hours: three blocks in each one-hour bucket.
    for sensor in 1..=3 {
        run(&mut a, &readings(sensor, 0, 6 * HOUR));
    }
    sync(&a, &mut b);
    assert_eq!(count(&mut a, "SELECT count(*) FROM readings"), 3 * 360);

    // At 6.5 h the bucket holding 3.5 h is the oldest kept: the first three go. Two blocks
    // a step, so buckets are removed partly and whole.
    let steps = expire(&mut a, 6 * HOUR + 30 * MINUTE, 2);
    assert!(steps >= 5, "9 blocks, 2 a step: {steps} steps");
    assert_eq!(count(&mut a, "SELECT count(*) FROM readings"), 3 * 180);
    assert_eq!(oldest(&mut a), 3 * HOUR);
    let seen = status(&a, "readings");
    assert_eq!((seen.floor, seen.expired_rows, seen.rows, seen.buckets), (Some(3 * HOUR), 540, 540, 3));
    assert_eq!(seen.retention, Some(3 * HOUR));
    assert_healthy(&a);
    // Nothing more to do at the same time; a step that finds nothing writes nothing.
    let again = a.expire_append_step(6 * HOUR + 30 * MINUTE, 2).unwrap();
    assert!(again.complete && again.blocks_removed == 0 && again.floors_raised == 0, "{again:?}");

    // b's clock is an hour later: it keeps one bucket fewer. The digests differ, and are
    // equal at the higher floor.
    expire(&mut b, 7 * HOUR + 30 * MINUTE, 256);
    assert_eq!(oldest(&mut b), 4 * HOUR);
    assert_ne!(a.state_digest().unwrap(), b.state_digest().unwrap());
    let higher: BTreeMap<String, i64> = b.append_floors().unwrap();
    assert_eq!(higher.get("readings"), Some(&(4 * HOUR)));
    assert_eq!(a.state_digest_at(&higher).unwrap(), b.state_digest_at(&higher).unwrap());
    // Once a catches up with the clock, the two are equal outright.
    expire(&mut a, 7 * HOUR + 30 * MINUTE, 256);
    assert_eq!(a.state_digest().unwrap(), b.state_digest().unwrap());
    assert_healthy(&b);
}

#[test]
fn rows_that_arrive_below_the_floor_are_dropped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b) = (open(&dir, 1), open(&dir, 2));
    run(&mut a, READINGS);
    sync(&a, &mut b);
    run(&mut a, &readings(1, 4 * HOUR, 5 * HOUR));
    expire(&mut a, 6 * HOUR + 30 * MINUTE, 256);
    assert_eq!(status(&a, "readings").floor, Some(3 * HOUR));

    // b was away: it wrote readings in hours 1 and 5. a keeps those of hour 5 only.
    run(&mut b, &readings(2, HOUR, 2 * HOUR));
    run(&mut b, &readings(2, 5 * HOUR, 6 * HOUR));
    sync(&b, &mut a);
    assert_eq!(count(&mut a, "SELECT count(*) FROM readings WHERE sensor = 2"), 60);
    assert_eq!(count(&mut a, "SELECT min(ts) FROM readings WHERE sensor = 2"), 5 * HOUR);
    let seen = status(&a, "readings");
    assert_eq!((seen.expired_on_arrival, seen.expired_rows), (60, 0));

    // A local insert below the floor is accepted (it is replicated to nodes that keep
    // it) and not stored here.
    run(&mut a, &readings(3, 2 * HOUR, 2 * HOUR + 10 * MINUTE));
    assert_eq!(count(&mut a, "SELECT count(*) FROM readings WHERE sensor = 3"), 0);
    assert_eq!(status(&a, "readings").expired_on_arrival, 70);
    assert_healthy(&a);

    // b, with no floor yet, holds everything it was sent.
    sync(&a, &mut b);
    assert_eq!(count(&mut b, "SELECT count(*) FROM readings"), 60 + 120 + 10);
    assert_eq!(status(&b, "readings").floor, None);
}

#[test]
fn the_budget_drops_the_oldest_buckets_but_never_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = open(&dir, 1);
    run(
        &mut a,
        "CREATE TABLE blobs (ts TIMESTAMP NOT NULL, payload TEXT) \
         WITH (append_only = true, time_column = 'ts', bucket = '1 hour', max_bytes = 1048576)",
    );
    // Ten buckets of about 200 KB each (200 rows of 1 KB).
    let payload = "x".repeat(1000);
    for hour in 0..10 {
        let values: Vec<String> = (0..200).map(|i| format!("({}, '{payload}')", hour * HOUR + i * 1000)).collect();
        run(&mut a, &format!("INSERT INTO blobs VALUES {}", values.join(", ")));
    }
    let before = status(&a, "blobs");
    assert!(before.bytes > 3 << 19, "{} bytes", before.bytes);
    // The budget does not depend on the clock.
    expire(&mut a, 0, 3);
    let after = status(&a, "blobs");
    assert!(after.bytes <= 1 << 20, "{} bytes kept over the 1 MiB budget", after.bytes);
    assert!(after.bytes > (1 << 20) - 250_000, "more than one bucket too many went: {} bytes", after.bytes);
    let floor = after.floor.expect("the budget raised the floor");
    assert_eq!(count(&mut a, "SELECT min(ts) FROM blobs"), floor);
    assert_eq!(count(&mut a, "SELECT max(ts) FROM blobs"), 9 * HOUR + 199_000);
    assert_eq!(after.expired_rows, before.rows - after.rows);
    assert_healthy(&a);

    // One bucket alone above the budget is kept: it is where rows arrive.
    for part in 0..3 {
        let values: Vec<String> = (0..500).map(|i| format!("({}, '{payload}')", 20 * HOUR + part * 500 + i)).collect();
        run(&mut a, &format!("INSERT INTO blobs VALUES {}", values.join(", ")));
    }
    expire(&mut a, 0, 256);
    assert_eq!(count(&mut a, "SELECT count(*) FROM blobs"), 1500);
    assert_eq!(status(&a, "blobs").floor, Some(20 * HOUR));
    assert_healthy(&a);
}

#[test]
fn an_integer_time_column_expires_behind_its_newest_bucket() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = open(&dir, 1);
    run(
        &mut a,
        "CREATE TABLE ticks (n INTEGER NOT NULL, v REAL) \
         WITH (append_only = true, time_column = 'n', bucket = 100, retention = 300)",
    );
    let values: Vec<String> = (0..1000).map(|n| format!("({n}, {n}.0)")).collect();
    run(&mut a, &format!("INSERT INTO ticks VALUES {}", values.join(", ")));
    // The wall clock does not matter: the newest bucket starts at 900, so the floor is
    // the bucket of 900 − 300.
    expire(&mut a, i64::MAX, 256);
    assert_eq!(status(&a, "ticks").floor, Some(600));
    assert_eq!(count(&mut a, "SELECT count(*) FROM ticks"), 400);
    assert_healthy(&a);
}

#[test]
fn the_floor_outlives_a_reopen_and_ends_with_its_incarnation() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = open(&dir, 1);
    run(&mut a, READINGS);
    run(&mut a, &readings(1, 0, 6 * HOUR));
    expire(&mut a, 6 * HOUR + 30 * MINUTE, 256);
    drop(a);
    let mut a = open(&dir, 1);
    let seen = status(&a, "readings");
    assert_eq!((seen.floor, seen.expired_rows), (Some(3 * HOUR), 180));
    run(&mut a, &readings(2, HOUR, 2 * HOUR));
    assert_eq!(count(&mut a, "SELECT count(*) FROM readings WHERE sensor = 2"), 0, "below the reopened floor");

    // A new incarnation starts without a floor.
    run(&mut a, "DROP TABLE readings");
    run(&mut a, READINGS);
    run(&mut a, &readings(3, HOUR, 2 * HOUR));
    let fresh = status(&a, "readings");
    assert_eq!((fresh.floor, fresh.expired_rows, fresh.expired_on_arrival, fresh.rows), (None, 0, 0, 60));
    assert_healthy(&a);
}
