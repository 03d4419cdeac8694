//! Fixtures shared by the root crate's integration tests: node ids, replicas on real redb
//! files in a temporary directory, the `sensors` table most tests write, moving changes
//! between replicas (by log replay and by state transfer), reading a replica's log,
//! integrity and seeds, running SQL on a replica; `sqlite` compares expressions with SQLite.

#![allow(dead_code)] // each test file uses part of the fixtures

use edgestore::{
    ColumnDef, ColumnType, NodeId, Replica, TableSchema, Value, VerifiedChange, VersionVector, WriteBatch,
};
use tempfile::TempDir;

pub mod sqlite;

/// `EDGESTORE_TEST_SEED` overrides a test's default seed (every randomized test prints it).
pub const TEST_SEED_ENV: &str = "EDGESTORE_TEST_SEED";

/// Node `n`'s id: every byte `n`.
pub fn node(n: u8) -> NodeId {
    NodeId([n; 16])
}

/// Node `n`'s replica, in `node{n}.redb` under `dir`.
pub fn open(dir: &TempDir, n: u8) -> Replica {
    open_as(dir, &format!("node{n}.redb"), node(n))
}

/// A replica in `file` under `dir`, as `node`.
pub fn open_as(dir: &TempDir, file: &str, node: NodeId) -> Replica {
    Replica::open(dir.path().join(file), node).unwrap_or_else(|e| panic!("open {file}: {e}"))
}

/// `sensors (id INTEGER PRIMARY KEY, name TEXT, hits COUNTER)`.
pub fn sensors() -> TableSchema {
    TableSchema::new("sensors")
        .column(ColumnDef::new("id", ColumnType::Integer))
        .column(ColumnDef::new("name", ColumnType::Text))
        .column(ColumnDef::new("hits", ColumnType::Counter))
        .primary_key(&["id"])
}

/// Inserts sensor `id` named `name`.
pub fn insert(id: i64, name: &str) -> WriteBatch {
    WriteBatch::new().insert("sensors", [("id", Value::from(id)), ("name", Value::from(name))])
}

/// Sends everything `from` holds that `to` lacks, in bounded batches.
pub fn sync(from: &Replica, to: &mut Replica) {
    loop {
        let batch = from.changes_since(to.version_vector(), 500, 1 << 20).expect("changes_since");
        if !batch.changes.is_empty() {
            to.apply_remote(batch.changes).expect("apply_remote");
        }
        if batch.complete {
            return;
        }
    }
}

/// Every envelope a replica holds, per origin in seq order.
pub fn log_of(replica: &Replica) -> Vec<Vec<u8>> {
    let batch = replica.changes_since(&VersionVector::new(), usize::MAX, usize::MAX).expect("changes_since");
    assert!(batch.complete, "an unbounded read of the log is complete");
    batch.changes
}

/// Every envelope a replica holds, decoded.
pub fn decoded_log_of(replica: &Replica) -> Vec<VerifiedChange> {
    log_of(replica).into_iter().map(|bytes| VerifiedChange::decode(bytes).expect("a logged envelope decodes")).collect()
}

/// `check_integrity` finds nothing wrong.
pub fn assert_healthy(replica: &Replica) {
    let problems = replica.check_integrity().expect("check_integrity");
    assert!(problems.is_empty(), "integrity problems in {replica:?}: {problems:#?}");
}

/// The seed of a randomized test: `EDGESTORE_TEST_SEED` if set, else `default`.
pub fn test_seed(default: u64) -> u64 {
    match std::env::var(TEST_SEED_ENV) {
        Ok(text) => text.trim().parse().unwrap_or_else(|_| panic!("{TEST_SEED_ENV}={text:?} is not a u64")),
        Err(_) => default,
    }
}

/// Moves every document of `from` into `to`, `docs_max` per batch.
pub fn transfer(from: &Replica, to: &mut Replica, docs_max: usize) -> usize {
    let mut batches = 0;
    loop {
        let cursor = to.transfer_progress().unwrap().map(|p| p.cursor_for(from.node_id())).unwrap_or_default();
        let batch = from.export_transfer(&cursor, docs_max, 1 << 20).unwrap();
        let done = batch.done;
        let report = to.import_transfer(from.node_id(), batch).unwrap();
        batches += 1;
        if done {
            assert_eq!(report.installed.as_ref(), Some(to.version_vector()));
            return batches;
        }
    }
}

/// Runs one SQL statement at time 1000 ms; panics naming it if it fails.
pub fn sql_run(replica: &mut Replica, statement: &str) -> u64 {
    edgestore::sql::execute(replica, statement, &[], 1000).unwrap_or_else(|e| panic!("{statement}: {e}")).rows_affected
}

/// The rows of one SQL query at time 1000 ms; panics naming it if it fails.
pub fn sql_rows(replica: &mut Replica, query: &str) -> Vec<Vec<Value>> {
    edgestore::sql::execute(replica, query, &[], 1000)
        .and_then(|r| r.collect_rows())
        .unwrap_or_else(|e| panic!("{query}: {e}"))
}

/// The one integer (or timestamp) a query returns; panics naming the query otherwise.
pub fn sql_count(replica: &mut Replica, query: &str) -> i64 {
    match sql_rows(replica, query).as_slice() {
        [row] => match row.as_slice() {
            [Value::Integer(n) | Value::Timestamp(n)] => *n,
            other => panic!("{query}: not one count: {other:?}"),
        },
        other => panic!("{query}: not one row: {other:?}"),
    }
}

/// Compacts `replica`'s whole log (a node alone holds everything stable); returns the
/// entries removed.
pub fn compact_all(replica: &mut Replica) -> u64 {
    let upto = replica.version_vector().clone();
    let mut removed = 0;
    loop {
        let report = replica.compact_log_step(&upto, 256).unwrap();
        removed += report.entries_removed;
        if report.complete {
            return removed;
        }
    }
}
