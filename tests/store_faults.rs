//! Storage faults through a `ReplicaHandle`: a redb file whose storage runs out of space
//! (a `StorageBackend` over the real file that answers ENOSPC while "full"), and the
//! low-disk floor.
//!
//! What must hold: a write during the fault is refused with the typed
//! `StorageError::Unavailable`, never acknowledged; health says `Faulted`; reopen attempts
//! back off on the caller's clock; once the storage heals the handle reopens the store by
//! itself and writes succeed; every acknowledged write is there and the integrity check is
//! clean. Below the free-space floor local writes are refused and remote changes applied.

use std::fs::OpenOptions;
use std::io;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use edgestore::error::StoreFault;
use edgestore::handle::{DiskSpace, Reopen, StoreHealth, REOPEN_BACKOFF_MIN_MS};
use edgestore::sql::{self, SqlError};
use edgestore::{
    ApplyError, ColumnDef, ColumnType, NodeId, OpenError, Replica, ReplicaHandle, StorageError, TableSchema, Value,
    WriteBatch, WriteError,
};
use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};
use tempfile::TempDir;

const NODE: NodeId = NodeId([3; 16]);
const OTHER: NodeId = NodeId([4; 16]);
const ENOSPC: i32 = 28;

/// A file backend that fails every write with ENOSPC while `full` is set, as a full
/// filesystem does; reads keep working.
#[derive(Debug)]
struct Filling {
    inner: FileBackend,
    full: Arc<AtomicBool>,
}

impl Filling {
    fn check(&self) -> Result<(), io::Error> {
        if self.full.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(ENOSPC));
        }
        Ok(())
    }
}

impl StorageBackend for Filling {
    fn len(&self) -> Result<u64, io::Error> {
        self.inner.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.inner.read(offset, out)
    }
    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.check()?;
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> Result<(), io::Error> {
        self.check()?;
        self.inner.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.check()?;
        self.inner.write(offset, data)
    }
    fn close(&self) -> Result<(), io::Error> {
        self.inner.close()
    }
    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_range(start, end)
    }
    fn try_lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }
    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_range(start, end)
    }
    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_shared_range(start, end)
    }
    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.unlock_range(start, end)
    }
    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.query_lock_range(start, end)
    }
}

/// Opens the replica at `path` on a [`Filling`] backend sharing `full`.
fn open_filling(path: &Path, full: &Arc<AtomicBool>) -> Result<Replica, OpenError> {
    let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).map_err(io_error)?;
    let backend = Filling { inner: FileBackend::new(file).map_err(StorageError::from)?, full: Arc::clone(full) };
    let db = redb::Builder::new().create_with_backend(backend).map_err(StorageError::from)?;
    Replica::open_database(db, NODE)
}

fn io_error(e: io::Error) -> OpenError {
    OpenError::Storage(StorageError::Redb(redb::Error::Io(e)))
}

/// The daemon's reopen, in small: ready when the storage has space; opens `path` (which
/// the test can point elsewhere to make an attempt fail).
struct Reopener {
    path: Arc<Mutex<PathBuf>>,
    full: Arc<AtomicBool>,
}

impl Reopen for Reopener {
    fn ready(&mut self) -> bool {
        !self.full.load(Ordering::SeqCst)
    }
    fn reopen(&mut self) -> Result<Replica, OpenError> {
        let path = self.path.lock().expect("path lock").clone();
        open_filling(&path, &self.full)
    }
}

fn schema() -> TableSchema {
    TableSchema::new("t")
        .column(ColumnDef::new("id", ColumnType::Integer))
        .column(ColumnDef::new("v", ColumnType::Text))
        .primary_key(&["id"])
}

fn row(id: i64) -> WriteBatch {
    WriteBatch::new().insert("t", [("id", Value::from(id)), ("v", Value::from(format!("row {id}")))])
}

fn ids(handle: &ReplicaHandle) -> Vec<i64> {
    let snapshot = handle.snapshot().expect("snapshot");
    let rows = snapshot.scan("t").expect("scan").map(|r| r.expect("row"));
    rows.map(|r| if let Value::Integer(id) = r[0] { id } else { panic!("id is {:?}", r[0]) }).collect()
}

fn unavailable(error: &WriteError) -> Option<&StoreFault> {
    match error {
        WriteError::Storage(StorageError::Unavailable(fault)) => Some(fault),
        _ => None,
    }
}

struct Fixture {
    _dir: TempDir,
    path: PathBuf,
    reopen_path: Arc<Mutex<PathBuf>>,
    full: Arc<AtomicBool>,
    handle: ReplicaHandle,
}

fn fixture() -> Fixture {
    let dir = TempDir::new().expect("temp dir");
    let path = dir.path().join("store.redb");
    let full = Arc::new(AtomicBool::new(false));
    let replica = open_filling(&path, &full).expect("open");
    let reopen_path = Arc::new(Mutex::new(path.clone()));
    let reopener = Reopener { path: Arc::clone(&reopen_path), full: Arc::clone(&full) };
    let (handle, _owner) = ReplicaHandle::spawn_with_reopen(replica, reopener);
    handle.write(WriteBatch::new().create_table(schema()), 0).expect("create table");
    Fixture { _dir: dir, path, reopen_path, full, handle }
}

#[test]
fn disk_full_refuses_writes_then_the_store_reopens_and_keeps_every_acknowledged_write() {
    let f = fixture();
    let handle = &f.handle;
    for id in 0..20 {
        handle.write(row(id), 0).expect("write before the fault");
    }
    println!("1. wrote rows 0..20 (acknowledged)");

    f.full.store(true, Ordering::SeqCst);
    let refused = handle.write(row(20), 0).expect_err("a write on a full disk");
    println!("2. storage full: write of row 20 -> {refused}");
    assert!(matches!(unavailable(&refused), Some(StoreFault::DiskFull { .. })), "{refused:?}");
    let health = handle.health();
    println!("   health: {health:?}");
    assert!(matches!(&health, StoreHealth::Faulted { reason, reopen_attempts: 0 } if reason.contains("No space")));
    assert_eq!(handle.counters().faults, 1);

    // Everything that writes is refused with the typed error while the store is faulted.
    let again = handle.write(row(21), 0).expect_err("a write while faulted");
    assert!(matches!(unavailable(&again), Some(StoreFault::DiskFull { .. })), "{again:?}");
    let mut sql_handle = handle.clone();
    let sql_error = sql::execute(&mut sql_handle, "INSERT INTO t VALUES (22, 'x')", &[], 0).expect_err("sql");
    assert!(matches!(&sql_error, SqlError::Write(e) if unavailable(e).is_some()), "{sql_error:?}");
    let applied = handle.apply_remote(vec![foreign_change()]).expect_err("apply while faulted");
    assert!(matches!(applied, ApplyError::Storage(StorageError::Unavailable(_))), "{applied:?}");
    assert!(matches!(handle.snapshot(), Err(StorageError::Unavailable(_))));
    assert!(handle.call(|_| ()).is_err(), "a call does not run on a faulted store");
    println!("   while faulted: writes, SQL writes, applies and snapshots refused with the typed error");

    // Not ready (still full): no attempt is made, whatever the time.
    assert!(matches!(handle.maintain(1_000, None), Ok(StoreHealth::Faulted { reopen_attempts: 0, .. })));

    // Space is back, but the first attempt fails (the path is wrong): backoff.
    f.full.store(false, Ordering::SeqCst);
    *f.reopen_path.lock().expect("lock") = f.path.with_file_name("missing").join("store.redb");
    let failed = handle.maintain(2_000, None).expect("maintain");
    println!("3. space freed, a reopen attempt that fails: {failed:?}");
    assert!(matches!(&failed, StoreHealth::Faulted { reopen_attempts: 1, reason } if reason.contains("reopen")));
    *f.reopen_path.lock().expect("lock") = f.path.clone();
    let early = handle.maintain(2_000 + REOPEN_BACKOFF_MIN_MS - 1, None).expect("maintain");
    assert!(matches!(early, StoreHealth::Faulted { reopen_attempts: 1, .. }), "no attempt before the backoff");
    let healed = handle.maintain(2_000 + REOPEN_BACKOFF_MIN_MS, None).expect("maintain");
    println!("4. after the backoff: {healed:?}, counters {:?}", handle.counters());
    assert_eq!(healed, StoreHealth::Ok);
    assert_eq!(handle.counters().reopens, 1);

    handle.write(row(23), 0).expect("a write after the reopen");
    let mut sql_handle = handle.clone();
    sql::execute(&mut sql_handle, "INSERT INTO t VALUES (24, 'y')", &[], 0).expect("sql after the reopen");
    let mut expected: Vec<i64> = (0..20).collect();
    expected.extend([23, 24]);
    assert_eq!(ids(handle), expected, "every acknowledged write, and nothing refused");
    let problems = handle.call(|r| r.check_integrity().expect("integrity check")).expect("call");
    assert!(problems.is_empty(), "{problems:?}");
    println!("5. writes resume: rows {expected:?}; integrity clean");
}

#[test]
fn a_fault_in_a_group_of_sql_writes_answers_none_of_them() {
    let f = fixture();
    let handle = &f.handle;
    sql::execute(&mut handle.clone(), "INSERT INTO t VALUES (1, 'a')", &[], 0).expect("insert");
    f.full.store(true, Ordering::SeqCst);
    let error = sql::execute(&mut handle.clone(), "UPDATE t SET v = 'b' WHERE id = 1", &[], 0).expect_err("full");
    assert!(matches!(&error, SqlError::Write(e) if unavailable(e).is_some()), "{error:?}");
    f.full.store(false, Ordering::SeqCst);
    assert_eq!(handle.maintain(0, None).expect("maintain"), StoreHealth::Ok);
    let snapshot = handle.snapshot().expect("snapshot");
    let row = snapshot.get("t", &[Value::from(1)]).expect("get").expect("row 1");
    assert_eq!(row[1], Value::from("a"), "the refused update is not there");
}

/// A change made by another node (a new table), for the apply paths.
fn foreign_change() -> Vec<u8> {
    let dir = TempDir::new().expect("temp dir");
    let mut other = Replica::open(dir.path().join("other.redb"), OTHER).expect("open other");
    let schema = TableSchema::new("remote").column(ColumnDef::new("id", ColumnType::Integer)).primary_key(&["id"]);
    other.write(WriteBatch::new().create_table(schema), 0).expect("write on the other node");
    let batch = other.changes_since(&edgestore::VersionVector::new(), usize::MAX, usize::MAX).expect("changes");
    batch.changes.into_iter().next().expect("one change")
}

#[test]
fn below_the_floor_local_writes_are_refused_and_remote_changes_applied() {
    let f = fixture();
    let handle = &f.handle;
    handle.write(row(1), 0).expect("write");
    let low = handle.maintain(0, Some(DiskSpace { free_bytes: 10, floor_bytes: 100 })).expect("maintain");
    assert_eq!(low, StoreHealth::LowDisk { free_bytes: 10, floor_bytes: 100 });
    let refused = handle.write(row(2), 0).expect_err("below the floor");
    assert_eq!(unavailable(&refused), Some(&StoreFault::LowDisk { free_bytes: 10, floor_bytes: 100 }));
    let sql_error = sql::execute(&mut handle.clone(), "INSERT INTO t VALUES (3, 'x')", &[], 0).expect_err("sql");
    assert!(matches!(&sql_error, SqlError::Write(e) if e.to_string().contains("low disk")), "{sql_error}");
    let report = handle.apply_remote(vec![foreign_change()]).expect("remote changes keep the headroom");
    assert_eq!(report.applied, 1);

    let ok = handle.maintain(0, Some(DiskSpace { free_bytes: 1000, floor_bytes: 100 })).expect("maintain");
    assert_eq!(ok, StoreHealth::Ok);
    handle.write(row(4), 0).expect("above the floor again");
    assert_eq!(ids(handle), vec![1, 4]);
    assert_eq!(handle.counters().faults, 0, "a low disk is not a fault");
}
