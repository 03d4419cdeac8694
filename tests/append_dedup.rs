//! Deduplication keys of append-only tables on real replicas (docs/design.md § Identity
//! and merge): rows with one key written concurrently on two nodes are both kept, every
//! node shows the same one (the least identity) and lists the others as `duplicate`
//! conflicts, in every order of arrival; a range delete, retention, a state transfer and
//! a changed definition keep `append_keys_v1` exactly the stored rows (`check_integrity`
//! compares them, and debug builds after every transaction).

use edgestore::{Replica, Value};

mod common;
use common::{assert_healthy, compact_all, open, sql_rows as rows, sql_run as run, sync, transfer};

const MSGS: &str = "CREATE TABLE msgs (msg_id TEXT PRIMARY KEY, sensor INTEGER NOT NULL, ts TIMESTAMP NOT NULL, \
     v REAL) WITH (append_only = true, time_column = 'ts', bucket = '1 hour', retention = '1 day')";

const HOUR: i64 = 3_600_000;

const SHOWN: &str = "SELECT msg_id, sensor, ts, v FROM msgs ORDER BY msg_id";

const DUPLICATES: &str = "SELECT primary_key, column_name, winner, value, is_winner FROM edgestore_conflicts \
     WHERE kind = 'duplicate' ORDER BY primary_key, is_winner DESC, value";

fn insert(replica: &mut Replica, id: &str, sensor: i64, ts: i64, v: f64) -> u64 {
    run(replica, &format!("INSERT INTO msgs VALUES ('{id}', {sensor}, {ts}, {v})"))
}

fn assert_same(replicas: &mut [&mut Replica]) {
    let first_digest = replicas[0].state_digest().unwrap();
    let first_rows = rows(replicas[0], SHOWN);
    let first_duplicates = rows(replicas[0], DUPLICATES);
    for replica in replicas.iter_mut() {
        assert_eq!(replica.state_digest().unwrap(), first_digest, "state digests differ");
        assert_eq!(rows(replica, SHOWN), first_rows, "shown rows differ");
        assert_eq!(rows(replica, DUPLICATES), first_duplicates, "duplicates differ");
        assert_healthy(replica);
    }
}

fn text(s: &str) -> Value {
    Value::Text(s.into())
}

#[test]
fn concurrent_duplicates_are_both_kept_and_every_node_shows_the_least_identity() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b, mut c) = (open(&dir, 1), open(&dir, 2), open(&dir, 3));
    run(&mut a, MSGS);
    sync(&a, &mut b);
    // Apart, a and b both take m1 (a redelivered message reaching two gateways); m2 and
    // m3 are each one's own.
    assert_eq!(insert(&mut b, "m1", 1, 10 * HOUR, 2.0), 1);
    assert_eq!(insert(&mut a, "m1", 1, 10 * HOUR, 1.0), 1);
    insert(&mut a, "m2", 2, 11 * HOUR, 3.0);
    insert(&mut b, "m3", 3, 12 * HOUR, 4.0);
    // c hears b first, then a; a and b hear each other.
    sync(&b, &mut c);
    sync(&a, &mut c);
    sync(&a, &mut b);
    sync(&b, &mut a);
    assert_same(&mut [&mut a, &mut b, &mut c]);

    // Node 1's row has the least identity: shown everywhere, node 2's listed.
    let shown = rows(&mut c, SHOWN);
    assert_eq!(shown.len(), 3, "{shown:?}");
    assert_eq!(shown[0][0], text("m1"));
    assert_eq!(shown[0][3], Value::Real(1.0), "the row of the least identity is shown: {shown:?}");
    assert_eq!(rows(&mut c, "SELECT count(*) FROM msgs"), vec![vec![Value::Integer(3)]]);
    // A lookup by the whole key (append_keys_v1) finds the shown row on every node.
    for replica in [&mut a, &mut b, &mut c] {
        assert_eq!(rows(replica, "SELECT v FROM msgs WHERE msg_id = 'm1'"), vec![vec![Value::Real(1.0)]]);
    }
    let duplicates = rows(&mut c, DUPLICATES);
    assert_eq!(duplicates.len(), 2, "{duplicates:?}");
    assert_eq!(duplicates[0][..2], [text("('m1')"), text("msg_id")]);
    assert_eq!(duplicates[0][2], duplicates[0][3], "the winner's row names itself: {duplicates:?}");
    assert_eq!(duplicates[0][4], Value::Boolean(true));
    assert_eq!(duplicates[1][4], Value::Boolean(false));
    let winner = match &duplicates[0][2] {
        Value::Text(identity) => identity.clone(),
        other => panic!("an identity, got {other:?}"),
    };
    assert!(winner.starts_with(&a.node_id().to_string()), "{winner} is node 1's row");

    // Every node now refuses m1 locally; ON CONFLICT DO NOTHING skips it.
    let refused = edgestore::sql::execute(&mut c, "INSERT INTO msgs VALUES ('m1', 9, 0, 9.0)", &[], 1000);
    assert!(refused.is_err_and(|e| e.to_string().contains("duplicate primary key")));
    assert_eq!(run(&mut c, "INSERT INTO msgs VALUES ('m1', 9, 0, 9.0) ON CONFLICT DO NOTHING"), 0);
}

#[test]
fn a_range_delete_of_the_shown_row_shows_the_concurrent_one() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b) = (open(&dir, 1), open(&dir, 2));
    run(&mut a, MSGS);
    sync(&a, &mut b);
    insert(&mut a, "m1", 1, 10 * HOUR, 1.0);
    insert(&mut b, "m1", 1, 20 * HOUR, 2.0);
    sync(&a, &mut b);
    sync(&b, &mut a);
    assert_eq!(rows(&mut b, SHOWN)[0][3], Value::Real(1.0));
    // a deletes the hour of its own row; b's row lies outside the range.
    assert_eq!(run(&mut a, &format!("DELETE FROM msgs WHERE ts >= {} AND ts < {}", 10 * HOUR, 11 * HOUR)), 1);
    sync(&a, &mut b);
    assert_same(&mut [&mut a, &mut b]);
    assert_eq!(
        rows(&mut a, SHOWN),
        vec![vec![text("m1"), Value::Integer(1), Value::Timestamp(20 * HOUR), Value::Real(2.0)]]
    );
    assert!(rows(&mut a, DUPLICATES).is_empty(), "one row left holds m1: no duplicate");
    // A range that removes both frees the key.
    run(&mut b, "DELETE FROM msgs");
    sync(&b, &mut a);
    assert_eq!(insert(&mut a, "m1", 1, 30 * HOUR, 3.0), 1);
    sync(&a, &mut b);
    assert_same(&mut [&mut a, &mut b]);
}

#[test]
fn retention_and_a_state_transfer_keep_the_keys_exactly_the_rows() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b) = (open(&dir, 1), open(&dir, 2));
    run(&mut a, MSGS);
    sync(&a, &mut b);
    for hour in 0..30 {
        insert(&mut a, &format!("a{hour}"), 1, hour * HOUR, hour as f64);
        insert(&mut b, &format!("b{hour}"), 2, hour * HOUR, hour as f64);
    }
    insert(&mut b, "a29", 2, 29 * HOUR, 0.5); // A duplicate that outlives retention.
    insert(&mut b, "a0", 2, 0, 0.5); // One that does not.
    sync(&a, &mut b);
    sync(&b, &mut a);
    assert_same(&mut [&mut a, &mut b]);
    assert_eq!(rows(&mut a, DUPLICATES).len(), 4);

    // At hour 30 the rows of hours 0..6 are older than a day (bucket 6 is the floor).
    let now = 30 * HOUR + 1;
    for replica in [&mut a, &mut b] {
        while !replica.expire_append_step(now, 3).unwrap().complete {}
    }
    assert_same(&mut [&mut a, &mut b]);
    assert_eq!(
        rows(&mut a, "SELECT count(*), min(ts) FROM msgs"),
        vec![vec![Value::Integer(2 * 24), Value::Timestamp(6 * HOUR)]]
    );
    assert_eq!(rows(&mut a, DUPLICATES).len(), 2, "only a29's duplicate is left");
    // The expired key can be written again.
    assert_eq!(insert(&mut a, "a0", 1, 29 * HOUR, 7.0), 1);
    sync(&a, &mut b);

    // A new node that catches up by state transfer once the log is compacted.
    compact_all(&mut a);
    let mut c = open(&dir, 3);
    transfer(&a, &mut c, 2);
    assert_same(&mut [&mut a, &mut b, &mut c]);
}

#[test]
fn a_definition_that_wins_later_rebuilds_the_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b) = (open(&dir, 1), open(&dir, 2));
    // Concurrent definitions of one table: keyed by msg_id on a, by sensor on b, each
    // with rows that are duplicates under the other's key.
    run(&mut a, MSGS);
    run(
        &mut b,
        &MSGS.replace("msg_id TEXT PRIMARY KEY, sensor INTEGER NOT NULL", "msg_id TEXT, sensor INTEGER PRIMARY KEY"),
    );
    insert(&mut a, "m1", 1, HOUR, 1.0);
    insert(&mut a, "m2", 1, HOUR, 2.0);
    insert(&mut b, "m1", 2, HOUR, 3.0);
    insert(&mut b, "m3", 3, HOUR, 4.0);
    sync(&a, &mut b);
    sync(&b, &mut a);
    assert_same(&mut [&mut a, &mut b]);
    let key = rows(&mut a, "SELECT primary_key FROM edgestore_tables WHERE name = 'msgs'");
    let duplicates = rows(&mut a, DUPLICATES);
    match key[0][0].clone() {
        // Under msg_id, m1 is held twice; under sensor, sensor 1 is.
        Value::Text(k) if k == "msg_id" => assert_eq!(duplicates[0][0], text("('m1')")),
        Value::Text(k) if k == "sensor" => assert_eq!(duplicates[0][0], text("(1)")),
        other => panic!("a key, got {other:?}"),
    }
    assert_eq!(duplicates.len(), 2, "{duplicates:?}");
    assert_eq!(rows(&mut a, "SELECT count(*) FROM msgs"), vec![vec![Value::Integer(3)]]);
}

#[test]
fn a_group_commit_refuses_a_key_an_earlier_batch_of_the_group_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = open(&dir, 1);
    run(&mut a, MSGS);
    let row = |v: f64| {
        edgestore::WriteBatch::new().insert(
            "msgs",
            [
                ("msg_id", Value::from("m1")),
                ("sensor", Value::from(1)),
                ("ts", Value::Timestamp(HOUR)),
                ("v", Value::Real(v)),
            ],
        )
    };
    let results = a.write_group(vec![row(1.0), row(2.0)], 1000);
    assert!(results[0].is_ok(), "{results:?}");
    assert!(
        matches!(&results[1], Err(edgestore::WriteError::DuplicateKey { table, .. }) if table == "msgs"),
        "{results:?}"
    );
    assert_eq!(
        rows(&mut a, SHOWN),
        vec![vec![text("m1"), Value::Integer(1), Value::Timestamp(HOUR), Value::Real(1.0)]]
    );
    assert_healthy(&a);
}
